//! The layer's metrics, through the `metrics` facade, as an application's recorder sees them.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use actix_web::{post, web, HttpRequest, HttpResponse};
use futures_util::StreamExt as _;
use idem_actix::testing::{Fault, FaultyStore, UnavailableStore};
use idem_actix::{idempotent, IdempotencyConfig, MokaStore};
use idem_core::store::RECORD_OVERHEAD;
use idem_tests::{
    assert_error, buggy_mark, buggy_tenant, eventually, serve, until_orphaned, Counter, RawRequest,
    TestServer, Warnings,
};
use metrics::{
    Counter as MCounter, CounterFn, Histogram, HistogramFn, Key, KeyName, Metadata, Recorder,
    SharedString, Unit,
};

/// Keeps every counter's total and every histogram's sample count, by name and labels.
#[derive(Clone, Default)]
struct Captured {
    counters: Arc<Mutex<HashMap<String, Arc<AtomicU64>>>>,
    samples: Arc<Mutex<HashMap<String, Arc<AtomicU64>>>>,
}

fn name(key: &Key) -> String {
    let labels: Vec<String> = key
        .labels()
        .map(|l| format!("{}={}", l.key(), l.value()))
        .collect();
    format!("{}{{{}}}", key.name(), labels.join(","))
}

struct Cell(Arc<AtomicU64>);

impl CounterFn for Cell {
    fn increment(&self, value: u64) {
        self.0.fetch_add(value, Ordering::SeqCst);
    }
    fn absolute(&self, value: u64) {
        self.0.store(value, Ordering::SeqCst);
    }
}

impl HistogramFn for Cell {
    fn record(&self, _: f64) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

impl Recorder for Captured {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> MCounter {
        let cell = self
            .counters
            .lock()
            .unwrap()
            .entry(name(key))
            .or_default()
            .clone();
        MCounter::from_arc(Arc::new(Cell(cell)))
    }
    fn register_gauge(&self, _: &Key, _: &Metadata<'_>) -> metrics::Gauge {
        metrics::Gauge::noop()
    }
    fn register_histogram(&self, key: &Key, _: &Metadata<'_>) -> Histogram {
        let cell = self
            .samples
            .lock()
            .unwrap()
            .entry(name(key))
            .or_default()
            .clone();
        Histogram::from_arc(Arc::new(Cell(cell)))
    }
}

impl Captured {
    /// Forgets every count: the `metrics` macros register a metric again on each use, so the
    /// next one starts from zero.
    fn reset(&self) {
        self.counters.lock().unwrap().clear();
        self.samples.lock().unwrap().clear();
    }

    fn count(&self, name: &str) -> u64 {
        self.counters
            .lock()
            .unwrap()
            .get(name)
            .map_or(0, |c| c.load(Ordering::SeqCst))
    }
    fn samples(&self, name: &str) -> u64 {
        self.samples
            .lock()
            .unwrap()
            .get(name)
            .map_or(0, |c| c.load(Ordering::SeqCst))
    }
}

/// The process's recorder, from zero, for one test at a time: a process has one recorder, and
/// the tests here count the same metrics.
async fn counting() -> (tokio::sync::MutexGuard<'static, ()>, &'static Captured) {
    static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    static RECORDER: OnceLock<Captured> = OnceLock::new();
    let serial = SERIAL.lock().await;
    let captured = RECORDER.get_or_init(|| {
        let captured = Captured::default();
        metrics::set_global_recorder(captured.clone()).expect("the only recorder");
        captured
    });
    captured.reset();
    (serial, captured)
}

fn keyed(key: &str) -> RawRequest {
    keyed_to("/op", key)
}

fn keyed_to(path: &str, key: &str) -> RawRequest {
    RawRequest::post(path)
        .header("Authorization", "Bearer t")
        .header("Idempotency-Key", key)
}

/// A server of one worker on `idem`'s settings, its handlers counting their runs in `runs`,
/// with the services `routes` adds.
fn serving(
    idem: &IdempotencyConfig,
    runs: &Counter,
    routes: impl Fn(&mut web::ServiceConfig) + Send + Clone + 'static,
) -> TestServer {
    let (idem, runs) = (idem.clone(), web::Data::new(runs.clone()));
    TestServer::start(1, move |cfg| {
        cfg.app_data(idem.clone()).app_data(runs.clone());
        routes(cfg);
    })
}

#[post("/op")]
#[idempotent]
async fn op(runs: web::Data<Counter>, req: HttpRequest) -> HttpResponse {
    runs.bump();
    if req.headers().contains_key("x-fail") {
        return HttpResponse::BadGateway().finish();
    }
    HttpResponse::Created().finish()
}

/// A response in a coding its client asked for (a compressor's, as `Vary` says).
#[post("/zipped")]
#[idempotent]
async fn zipped(runs: web::Data<Counter>) -> HttpResponse {
    runs.bump();
    HttpResponse::Created()
        .insert_header(("Content-Encoding", "gzip"))
        .insert_header(("Vary", "Accept-Encoding"))
        .body(&b"\x1f\x8b"[..])
}

/// Every 409 the layer answers is counted as a conflict of its kind.
/// Never answers: a run that only a drain ends.
#[post("/stuck")]
#[idempotent]
async fn stuck(runs: web::Data<Counter>) -> HttpResponse {
    runs.bump();
    std::future::pending().await
}

/// A run a drain cancels is counted, as `cancelled`: it was counted as nothing, neither
/// executed nor released, though its key was released (or its record written, had its handler
/// answered).
#[actix_web::test]
async fn a_run_a_drain_cancels_is_counted_as_cancelled() {
    let (_serial, captured) = counting().await;
    let s = serve(|cfg| {
        cfg.service(stuck);
    });
    let addr = s.server.addr;
    let client = actix_web::rt::spawn(async move { keyed_to("/stuck", "stuck").send(addr).await });
    let runs = s.runs.clone();
    eventually(move || runs.get() == 1).await;
    // The drain is the process's, whichever application's settings it is called on.
    let drained = IdempotencyConfig::new(MokaStore::new())
        .drain(std::time::Duration::from_millis(100))
        .await;
    assert_eq!(drained, 1);
    assert_eq!(client.await.unwrap().status, 503);
    assert_eq!(captured.count("idem_requests_total{outcome=cancelled}"), 1);
}

/// Never answers, failing open: with its store down, a run without a claim that only a drain
/// ends.
#[post("/stuck-open")]
#[idempotent(fail_open)]
async fn stuck_open(runs: web::Data<Counter>) -> HttpResponse {
    runs.bump();
    std::future::pending().await
}

/// A run failing open (its store down) that a drain cancels is counted once, `unprotected`,
/// as it was when it started, and its log says it held no key: it was counted `cancelled` too,
/// one request under two outcomes, and its log said its key was released.
#[actix_web::test]
async fn a_run_failing_open_that_a_drain_cancels_is_counted_once_and_held_no_key() {
    let (_serial, captured) = counting().await;
    let warnings = Warnings::installed();
    let runs = Counter::default();
    let idem = IdempotencyConfig::new(UnavailableStore);
    let server = serving(&idem, &runs, |cfg| {
        cfg.service(stuck_open);
    });
    let addr = server.addr;
    let client =
        actix_web::rt::spawn(async move { keyed_to("/stuck-open", "open").send(addr).await });
    eventually(|| runs.get() == 1).await;
    let drained = idem.drain(std::time::Duration::from_millis(100)).await;
    assert_eq!(drained, 1);
    assert_error(&client.await.unwrap(), 503, "idempotency_shutting_down");
    assert_eq!(
        captured.count("idem_requests_total{outcome=unprotected}"),
        1
    );
    assert_eq!(captured.count("idem_requests_total{outcome=cancelled}"), 0);
    let threads = server.threads();
    assert_eq!(warnings.containing_from("key released", threads), 0);
    assert_eq!(warnings.containing_from("it held no key", threads), 1);
}

/// The same, its client gone: its run moved to a task of its own, which the drain cancels.
#[actix_web::test]
async fn a_run_failing_open_whose_client_went_away_is_counted_once_when_a_drain_cancels_it() {
    let (_serial, captured) = counting().await;
    let warnings = Warnings::installed();
    let runs = Counter::default();
    let idem = IdempotencyConfig::new(UnavailableStore).with_max_detached(1);
    let server = serving(&idem, &runs, |cfg| {
        cfg.service(stuck_open).service(op);
    });
    keyed_to("/stuck-open", "gone")
        .send_and_reset(server.addr, || runs.get() == 1)
        .await;
    // Refused (the store down, failing closed) until the worker counts the run whose client
    // went away, then refused for it.
    until_orphaned(server.addr, &keyed("probe")).await;
    assert_eq!(idem.drain(std::time::Duration::from_millis(100)).await, 1);
    let threads = server.threads().to_owned();
    eventually(|| warnings.containing_from("it held no key", &threads) == 1).await;
    assert_eq!(
        captured.count("idem_requests_total{outcome=unprotected}"),
        1
    );
    assert_eq!(captured.count("idem_requests_total{outcome=cancelled}"), 0);
    assert_eq!(warnings.containing_from("key is released", &threads), 0);
}

/// Dropped, it panics: a value of a handler's whose drop fails.
struct PanicsWhenDropped;

impl Drop for PanicsWhenDropped {
    fn drop(&mut self) {
        panic!("a handler's value panicked as it was dropped");
    }
}

/// Never answers, failing open, and holds a value whose drop panics.
#[post("/stuck-open-panicky")]
#[idempotent(fail_open)]
async fn stuck_open_panicky(runs: web::Data<Counter>) -> HttpResponse {
    let _held = PanicsWhenDropped;
    runs.bump();
    std::future::pending().await
}

/// A cancellation whose drop of a run panics leaves nothing of that run to the next: a run
/// failing open that a drain cancelled, whose drop panicked, left its mark that it held no
/// key on its worker, so that the next claimed run a drain cancelled there was logged as
/// holding none, and not counted.
#[actix_web::test]
async fn a_cancelled_run_whose_drop_panics_leaves_nothing_to_the_next_one_cancelled() {
    let (_serial, captured) = counting().await;
    let warnings = Warnings::installed();
    let runs = Counter::default();
    let idem = IdempotencyConfig::new(UnavailableStore);
    let server = serving(&idem, &runs, |cfg| {
        cfg.service(stuck_open_panicky).service(
            web::scope("/claimed")
                .app_data(IdempotencyConfig::new(MokaStore::new()))
                .service(stuck),
        );
    });
    let addr = server.addr;
    let panicky = keyed_to("/stuck-open-panicky", "panicky");
    let first = actix_web::rt::spawn(async move { panicky.try_send(addr).await });
    eventually(|| runs.get() == 1).await;
    assert_eq!(idem.drain(std::time::Duration::from_millis(100)).await, 1);
    let _ = first.await;

    let client =
        actix_web::rt::spawn(async move { keyed_to("/claimed/stuck", "claimed").send(addr).await });
    eventually(|| runs.get() == 2).await;
    assert_eq!(idem.drain(std::time::Duration::from_millis(100)).await, 1);
    assert_error(&client.await.unwrap(), 503, "idempotency_shutting_down");
    assert_eq!(captured.count("idem_requests_total{outcome=cancelled}"), 1);
    let threads = server.threads();
    assert_eq!(warnings.containing_from("its key released", threads), 1);
}

#[post("/answered")]
#[idempotent]
async fn answered(runs: web::Data<Counter>) -> HttpResponse {
    runs.bump();
    HttpResponse::Created().body("done")
}

/// A run whose handler answered, and whose record is still being written when a drain runs
/// out of time, is counted `cancelled` (its client gets the answer, and the record is written
/// in the background), as the same run whose client went away is: it was counted `executed`,
/// though its record was not known to be written.
#[actix_web::test]
async fn a_run_a_drain_cancels_while_its_record_is_written_is_counted_as_cancelled() {
    let (_serial, captured) = counting().await;
    let runs = Counter::default();
    let store = FaultyStore::new(MokaStore::new());
    let idem = IdempotencyConfig::new(store.clone());
    let server = serving(&idem, &runs, |cfg| {
        cfg.service(answered);
    });
    store.fail(
        "complete",
        1,
        Fault::Unanswered(std::time::Duration::from_millis(600)),
    );
    let addr = server.addr;
    let client =
        actix_web::rt::spawn(async move { keyed_to("/answered", "drained").send(addr).await });
    eventually(|| store.calls("complete") == 1).await;
    let drained = idem.drain(std::time::Duration::from_millis(100)).await;
    assert_eq!(drained, 1);
    assert_eq!(client.await.unwrap().status, 201, "the handler's answer");
    assert_eq!(captured.count("idem_requests_total{outcome=cancelled}"), 1);
    assert_eq!(captured.count("idem_requests_total{outcome=executed}"), 0);
}

/// A stream that sends its first piece and then never ends.
#[post("/endless")]
#[idempotent]
async fn endless(runs: web::Data<Counter>) -> HttpResponse {
    runs.bump();
    let first = futures_util::stream::once(async {
        Ok::<_, actix_web::Error>(web::Bytes::from_static(b"first"))
    });
    HttpResponse::Ok().streaming(first.chain(futures_util::stream::pending()))
}

/// A stream whose client went away, cancelled by a drain that ran out of time, is counted as
/// `cancelled`, as any run a drain cancels: it was counted as nothing.
#[actix_web::test]
async fn a_stream_a_drain_cancels_after_its_client_went_away_is_counted_as_cancelled() {
    let (_serial, captured) = counting().await;
    let runs = Counter::default();
    let idem = IdempotencyConfig::new(MokaStore::new()).with_max_detached(1);
    let server = serving(&idem, &runs, |cfg| {
        cfg.service(endless);
    });
    let request = RawRequest::post("/endless")
        .header("Authorization", "Bearer t")
        .header("Idempotency-Key", "endless");
    request
        .send_and_reset(server.addr, || runs.get() == 1)
        .await;
    until_orphaned(server.addr, &request).await;
    let drained = IdempotencyConfig::new(MokaStore::new())
        .drain(std::time::Duration::from_millis(100))
        .await;
    assert_eq!(drained, 1);
    eventually(|| captured.count("idem_requests_total{outcome=cancelled}") == 1).await;
}

#[actix_web::test]
async fn a_replay_refused_for_its_coding_is_counted_as_a_conflict() {
    let (_serial, captured) = counting().await;
    let s = serve(|cfg| {
        cfg.service(zipped);
    });
    let call = |key| {
        RawRequest::post("/zipped")
            .header("Authorization", "Bearer t")
            .header("Idempotency-Key", key)
    };
    s.send(&call("z").header("Accept-Encoding", "gzip")).await;
    let refused = s.send(&call("z")).await;
    assert_eq!(refused.status, 409, "{refused:?}");
    assert_eq!(
        captured.count("idem_conflicts_total{kind=encoding_not_accepted}"),
        1
    );
}

#[actix_web::test]
async fn outcomes_conflicts_rejections_and_store_calls_are_counted() {
    let (_serial, captured) = counting().await;
    let s = serve(|cfg| {
        cfg.service(op);
    });
    s.send(&keyed("a")).await;
    s.send(&keyed("a")).await;
    s.send(&keyed("a").body("other")).await;
    s.send(&keyed("b").header("X-Fail", "1")).await;
    s.send(&keyed("bad key")).await;

    assert_eq!(captured.count("idem_requests_total{outcome=executed}"), 1);
    assert_eq!(captured.count("idem_requests_total{outcome=replayed}"), 1);
    assert_eq!(captured.count("idem_requests_total{outcome=released}"), 1);
    assert_eq!(captured.count("idem_conflicts_total{kind=mismatch}"), 1);
    assert_eq!(
        captured.count("idem_rejections_total{code=idempotency_key_invalid}"),
        1
    );
    assert_eq!(captured.samples("idem_store_duration_seconds{op=claim}"), 4);
    assert_eq!(
        captured.samples("idem_store_duration_seconds{op=complete}"),
        1
    );
    assert_eq!(
        captured.samples("idem_store_duration_seconds{op=release}"),
        1
    );
    assert_eq!(
        captured.count("idem_store_evictions_total{}"),
        0,
        "a store with room evicts nothing"
    );

    // Store errors, from a store that is down.
    let idem = IdempotencyConfig::new(UnavailableStore);
    let runs = web::Data::new(Counter::default());
    let down = TestServer::start(1, move |cfg| {
        cfg.app_data(idem.clone())
            .app_data(runs.clone())
            .service(op);
    });
    keyed("c").send(down.addr).await;
    assert_eq!(captured.count("idem_store_errors_total{op=claim}"), 1);
}

#[actix_web::test]
async fn records_evicted_from_a_store_too_small_are_counted() {
    let (_serial, captured) = counting().await;
    // Room for five of the handler's records.
    let store = MokaStore::builder()
        .max_bytes(5 * (RECORD_OVERHEAD as u64 + 64))
        .build();
    let idem = IdempotencyConfig::new(store.clone());
    let runs = web::Data::new(Counter::default());
    let small = TestServer::start(1, move |cfg| {
        cfg.app_data(idem.clone())
            .app_data(runs.clone())
            .service(op);
    });
    for i in 0..200 {
        let res = keyed(&format!("key-{i}")).send(small.addr).await;
        assert_eq!(res.status, 201);
    }
    let evicted = store.evicted();
    assert!(evicted > 100, "{evicted} of 195 evictions counted");
    assert_eq!(captured.count("idem_store_evictions_total{}"), evicted);
}

/// A connection of the store's pool, taken by the handler's first extractor and kept through
/// its others: with a pool of one, the `Transaction` after it finds none.
struct Held(
    #[allow(dead_code, reason = "held, not used")] sqlx::pool::PoolConnection<sqlx::Postgres>,
);

impl actix_web::FromRequest for Held {
    type Error = actix_web::Error;
    type Future = std::pin::Pin<Box<dyn std::future::Future<Output = Result<Self, Self::Error>>>>;

    fn from_request(req: &HttpRequest, _: &mut actix_web::dev::Payload) -> Self::Future {
        let store = req
            .app_data::<web::Data<idem_actix::PostgresStore>>()
            .expect("the store")
            .clone();
        Box::pin(async move {
            let connection = store.pool().acquire().await;
            Ok(Held(connection.expect("the pool's connection")))
        })
    }
}

#[post("/held")]
#[idempotent]
async fn held(runs: web::Data<Counter>, _held: Held, _tx: idem_actix::Transaction) -> HttpResponse {
    runs.bump();
    HttpResponse::Created().finish()
}

/// Opening a handler's `Transaction` is a store operation like the others: timed, and its
/// failure counted (here the pool's one connection is taken, and the opening waits for it
/// until the pool's timeout, answered 503). It was neither, so a pool that ran out answered
/// 503s that no store metric showed.
#[actix_web::test]
async fn opening_a_transaction_is_timed_and_its_failure_counted() {
    let Some(pg) = idem_tests::TestPostgres::start() else {
        return;
    };
    let (_serial, captured) = counting().await;
    let store = idem_actix::PostgresStore::builder(pg.url())
        .table(pg.table("metrics_open"))
        .build()
        .unwrap();
    store.migrate().await.unwrap();
    let (url, table) = (pg.url().to_owned(), store.table().to_owned());
    let runs = web::Data::new(Counter::default());
    let ran = runs.clone();
    let server = TestServer::start(1, move |cfg| {
        let store = idem_actix::PostgresStore::builder(url.as_str())
            .table(table.as_str())
            .max_connections(1)
            .connect_timeout(std::time::Duration::from_millis(300))
            .build()
            .unwrap();
        cfg.app_data(web::Data::new(store.clone()))
            .app_data(IdempotencyConfig::new(store))
            .app_data(ran.clone())
            .service(held);
    });
    let warnings = Warnings::installed();
    for n in 0..3 {
        let res = RawRequest::post("/held")
            .header("Authorization", "Bearer t")
            .header("Idempotency-Key", &format!("open-{n}"))
            .send(server.addr)
            .await;
        assert_eq!(res.status, 503, "{}", res.text());
    }
    assert_eq!(runs.get(), 0);
    assert_eq!(
        captured.samples("idem_store_duration_seconds{op=transaction}"),
        3
    );
    assert_eq!(captured.count("idem_store_errors_total{op=transaction}"), 3);
    // An outage of the store, refusing every request alike: warned of as it starts, as every
    // outage is (see `Outage`), where each request's failure was warned of.
    let failed = "opening the idempotency transaction failed";
    assert_eq!(warnings.containing_from(failed, server.threads()), 1);
}

#[post("/takes-key")]
#[idempotent]
async fn takes_key(_key: idem_actix::IdempotencyKey) -> HttpResponse {
    HttpResponse::Created().finish()
}

#[post("/takes-transaction")]
#[idempotent]
async fn takes_transaction(_tx: idem_actix::Transaction) -> HttpResponse {
    HttpResponse::Created().finish()
}

/// A keyless request refused for want of the key its handler takes (an `IdempotencyKey`, a
/// `Transaction`), under the attribute or the middleware, is counted as `required`'s refusal
/// is: the client gets the same 400, where it went uncounted.
#[actix_web::test]
async fn a_keyless_request_refused_for_want_of_its_key_is_counted_as_a_rejection() {
    let (_serial, captured) = counting().await;
    let s = serve(|cfg| {
        cfg.service(takes_key).service(takes_transaction).service(
            web::scope("/m").wrap(idem_actix::Idempotency::new()).route(
                "/takes-key",
                web::post().to(|_key: idem_actix::IdempotencyKey| async {
                    HttpResponse::Created().finish()
                }),
            ),
        );
    });
    for path in ["/takes-key", "/takes-transaction", "/m/takes-key"] {
        let res = s
            .send(&RawRequest::post(path).header("Authorization", "Bearer t"))
            .await;
        assert_error(&res, 400, "idempotency_key_missing");
    }
    assert_eq!(
        captured.count("idem_rejections_total{code=idempotency_key_missing}"),
        3
    );
}

#[post("/fails")]
#[idempotent(lease = "200ms")]
async fn fails(req: HttpRequest) -> HttpResponse {
    if req.headers().contains_key("x-panic") {
        panic!("the handler fails");
    }
    HttpResponse::BadGateway().finish()
}

/// `released` says the key is free again: a release the store failed, after a 5xx or a
/// panic alike, is `unrecorded` (the claim holds until its lease lapses), where a panic's was
/// counted `released`.
#[actix_web::test]
async fn a_release_that_failed_is_unrecorded_whatever_failed_the_run() {
    let (_serial, captured) = counting().await;
    let store = FaultyStore::new(MokaStore::new());
    store.fail("release", usize::MAX, Fault::Unavailable);
    let idem = IdempotencyConfig::new(store.clone());
    let server = TestServer::start(1, move |cfg| {
        cfg.app_data(idem.clone()).service(fails);
    });
    let call = |key: &str| {
        RawRequest::post("/fails")
            .header("Authorization", "Bearer t")
            .header("Idempotency-Key", key)
    };
    assert_eq!(call("5xx").send(server.addr).await.status, 502);
    assert_eq!(captured.count("idem_requests_total{outcome=unrecorded}"), 1);
    let panicked = call("panic").header("X-Panic", "1").send(server.addr).await;
    assert_eq!(panicked.status, 500);
    assert!(
        store.calls("release") >= 2,
        "both releases were tried, and failed"
    );
    assert_eq!(
        captured.count("idem_requests_total{outcome=released}"),
        0,
        "no key was freed"
    );
    assert_eq!(captured.count("idem_requests_total{outcome=unrecorded}"), 2);
}

#[post("/anything")]
#[idempotent]
async fn anything() -> HttpResponse {
    HttpResponse::Created().finish()
}

/// A keyed request refused 500 `idempotency_misconfigured` because its store is too small for
/// any record is counted as a rejection, as the same code is when the admission finds it (a
/// scope read from the key's header), where it went uncounted.
#[actix_web::test]
async fn a_misconfigured_store_s_refusals_are_counted_as_rejections() {
    let (_serial, captured) = counting().await;
    let tiny = MokaStore::builder().max_bytes(200).build();
    let idem = IdempotencyConfig::new(tiny);
    let server = TestServer::start(1, move |cfg| {
        cfg.app_data(idem.clone()).service(anything);
    });
    for _ in 0..2 {
        let res = RawRequest::post("/anything")
            .header("Authorization", "Bearer t")
            .header("Idempotency-Key", "k")
            .send(server.addr)
            .await;
        assert_error(&res, 500, "idempotency_misconfigured");
    }
    assert_eq!(
        captured.count("idem_rejections_total{code=idempotency_misconfigured}"),
        2
    );
}

#[post("/taken-over")]
#[idempotent]
async fn taken_over(runs: web::Data<Counter>, _tx: idem_actix::Transaction) -> HttpResponse {
    runs.bump();
    tokio::time::sleep(std::time::Duration::from_millis(800)).await;
    HttpResponse::Created().finish()
}

/// A `Transaction` run whose claim another request took over before its commit is answered
/// 409 `idempotency_conflict`, as a request that finds its key running is, and counted as such
/// (besides its `lost` outcome), where no conflict was counted.
#[actix_web::test]
async fn a_transaction_run_taken_over_is_counted_as_a_conflict() {
    let Some(pg) = idem_tests::TestPostgres::start() else {
        return;
    };
    let (_serial, captured) = counting().await;
    let store = idem_actix::PostgresStore::builder(pg.url())
        .table(pg.table("metrics_taken_over"))
        .build()
        .unwrap();
    store.migrate().await.unwrap();
    let db = pg.inspect().await;
    let table = store.table().to_owned();
    let runs = web::Data::new(Counter::default());
    let ran = runs.clone();
    let server = TestServer::start(1, move |cfg| {
        cfg.app_data(IdempotencyConfig::new(store.clone()))
            .app_data(ran.clone())
            .service(taken_over);
    });
    let addr = server.addr;
    let running = tokio::spawn(async move {
        RawRequest::post("/taken-over")
            .header("Authorization", "Bearer t")
            .header("Idempotency-Key", "taken")
            .send(addr)
            .await
    });
    idem_tests::eventually(|| runs.get() == 1).await;
    // Another holder's claim, as after the lease lapsed and a retry took the key over.
    sqlx::query(&format!("UPDATE {table} SET token = $1"))
        .bind([7u8; 16])
        .execute(&db)
        .await
        .unwrap();
    let answer = running.await.unwrap();
    assert_error(&answer, 409, "idempotency_conflict");
    assert_eq!(captured.count("idem_requests_total{outcome=lost}"), 1);
    assert_eq!(captured.count("idem_conflicts_total{kind=in_flight}"), 1);
}

#[post("/buggy-scope")]
#[idempotent(scope = buggy_tenant)]
async fn buggy_scope() -> HttpResponse {
    HttpResponse::Created().finish()
}

#[post("/buggy-hook")]
#[idempotent(on_replay = buggy_mark)]
async fn buggy_hook() -> HttpResponse {
    HttpResponse::Created().finish()
}

/// A keyed request answered 500 because the application's scope function or replay hook
/// panicked is counted as `panicked`: it was counted in no series (the scope function's), or
/// as `replayed` though its client had no replay (the hook's).
#[actix_web::test]
async fn a_scope_function_or_replay_hook_that_panics_is_counted_panicked_not_replayed() {
    let (_serial, captured) = counting().await;
    let s = serve(|cfg| {
        cfg.service(buggy_scope).service(buggy_hook);
    });
    let boom = keyed_to("/buggy-scope", "s").header("X-Tenant", "boom");
    assert_eq!(s.send(&boom).await.status, 500);
    s.send(&keyed_to("/buggy-hook", "h")).await;
    let hooked = s
        .send(&keyed_to("/buggy-hook", "h").header("X-Boom", "1"))
        .await;
    assert_eq!(hooked.status, 500);

    assert_eq!(captured.count("idem_requests_total{outcome=panicked}"), 2);
    assert_eq!(captured.count("idem_requests_total{outcome=executed}"), 1);
    assert_eq!(captured.count("idem_requests_total{outcome=replayed}"), 0);
}
