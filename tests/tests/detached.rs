//! Runs whose clients went away: bounded per worker, finished at a graceful shutdown, and
//! released when they cannot finish in time.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_web::dev::ServerHandle;
use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use bytes::Bytes;
use futures_util::stream;
use idem_actix::{idempotent, IdempotencyConfig, MokaStore, ProblemJson};
use idem_core::testing::{Fault, FaultyStore};
use idem_tests::{
    assert_error, eventually, unchunked, until_orphaned, Counter, RawRequest, RawResponse, Warnings,
};
use tokio::sync::Semaphore;

#[derive(Clone)]
struct Probe {
    runs: Counter,
    gate: Arc<Semaphore>,
}

/// Waits for the gate when asked to (`X-Wait: gate`), or sleeps `X-Wait` milliseconds.
#[idempotent]
async fn slow(probe: web::Data<Probe>, req: HttpRequest) -> HttpResponse {
    let n = probe.runs.bump();
    match req.headers().get("x-wait").and_then(|v| v.to_str().ok()) {
        Some("gate") => probe.gate.acquire().await.unwrap().forget(),
        Some(ms) => tokio::time::sleep(Duration::from_millis(ms.parse().unwrap())).await,
        None => {}
    }
    HttpResponse::Created().body(format!("call_{n}"))
}

/// Streams two pieces of 100 bytes (`a`s, then `b`s), the second once the gate opens: a
/// response of unknown length, teed for its record.
#[idempotent]
async fn streamed(probe: web::Data<Probe>) -> HttpResponse {
    probe.runs.bump();
    let gate = Arc::clone(&probe.gate);
    let body = stream::unfold(0, move |i| {
        let gate = Arc::clone(&gate);
        async move {
            match i {
                0 => Some((Ok::<_, actix_web::Error>(Bytes::from(vec![b'a'; 100])), 1)),
                1 => {
                    gate.acquire().await.unwrap().forget();
                    Some((Ok(Bytes::from(vec![b'b'; 100])), 2))
                }
                _ => None,
            }
        }
    });
    HttpResponse::Ok().streaming(body)
}

fn call(key: &str, wait: &str) -> RawRequest {
    RawRequest::post("/calls")
        .header("Authorization", "Bearer tenant-1")
        .header("Idempotency-Key", key)
        .header("X-Wait", wait)
}

/// A one-worker server on its own thread.
struct Server {
    addr: SocketAddr,
    handle: ServerHandle,
    thread: std::thread::JoinHandle<()>,
}

fn start(idem: IdempotencyConfig, probe: Probe) -> Server {
    start_stopped_by(idem, probe, None)
}

/// A server as [`start`] makes, stopped (gracefully) when `signal` ends, where one is given,
/// rather than only through its handle.
fn start_stopped_by(
    idem: IdempotencyConfig,
    probe: Probe,
    signal: Option<std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>>,
) -> Server {
    let (tx, rx) = std::sync::mpsc::channel();
    let thread = std::thread::spawn(move || {
        actix_web::rt::System::new().block_on(async move {
            let data = web::Data::new(probe);
            let server = HttpServer::new(move || {
                App::new()
                    .app_data(idem.clone())
                    .app_data(data.clone())
                    .route("/calls", web::post().to(slow))
                    .route("/stream", web::post().to(streamed))
                    .route("/failing", web::post().to(failing_stream))
            })
            .workers(1)
            .disable_signals()
            .shutdown_timeout(5);
            let server = match signal {
                Some(signal) => server.shutdown_signal(signal),
                None => server,
            };
            let server = server.bind(("127.0.0.1", 0)).expect("bind loopback");
            let addr = server.addrs()[0];
            let server = server.run();
            tx.send((addr, server.handle())).expect("report address");
            server.await.expect("server runs");
        });
    });
    let (addr, handle) = rx.recv().expect("server started");
    Server {
        addr,
        handle,
        thread,
    }
}

impl Server {
    /// Shuts the server down gracefully, as an application's signal handler does: it stops
    /// accepting, drains the layer (when told to), then stops the workers.
    async fn shut_down(self, idem: &IdempotencyConfig, drain: Option<Duration>) -> Option<usize> {
        self.handle.pause().await;
        let cancelled = match drain {
            Some(timeout) => Some(idem.drain(timeout).await),
            None => None,
        };
        self.handle.stop(true).await;
        self.ended().await;
        cancelled
    }

    /// Waits for the server's thread to end, once the server stopped.
    async fn ended(self) {
        tokio::task::spawn_blocking(move || self.thread.join().expect("server thread ends"))
            .await
            .unwrap();
    }
}

/// Sends `request` to `server` and, once its run has begun (and `settle` later), shuts the
/// server down with a drain of 200 ms, which must cancel one run (`what`, said if it does not):
/// the answer its client, still waiting, gets.
async fn answered_past_a_drain(
    server: Server,
    idem: &IdempotencyConfig,
    probe: &Probe,
    request: RawRequest,
    settle: Duration,
    what: &str,
) -> RawResponse {
    let addr = server.addr;
    let client = actix_web::rt::spawn(async move { request.send(addr).await });
    let runs = probe.runs.clone();
    eventually(move || runs.get() == 1).await;
    tokio::time::sleep(settle).await;
    let drained = server
        .shut_down(idem, Some(Duration::from_millis(200)))
        .await;
    assert_eq!(drained, Some(1), "{what}");
    client.await.unwrap()
}

/// The drain is the process's: these tests take turns.
static TURN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn probe() -> Probe {
    Probe {
        runs: Counter::default(),
        gate: Arc::new(Semaphore::new(0)),
    }
}

#[actix_web::test]
async fn past_its_bound_of_runs_for_clients_gone_a_worker_refuses_new_keys_and_runs_nothing() {
    let _turn = TURN.lock().await;
    let probe = probe();
    let idem = IdempotencyConfig::new(MokaStore::new()).with_max_detached(2);
    let server = start(idem.clone(), probe.clone());
    for n in 1..=2 {
        call(&format!("gone-{n}"), "gate")
            .send_and_reset(server.addr, || probe.runs.get() == n)
            .await;
    }
    // The two runs go on without their clients (once the server has seen both resets, a key
    // of theirs is refused); the next key is refused, and not run.
    until_orphaned(server.addr, &call("gone-2", "0")).await;
    let refused = call("new", "0").send(server.addr).await;
    assert_error(&refused, 503, "idempotency_overloaded");
    assert_eq!(refused.header("retry-after"), Some("1"));
    assert_eq!(refused.header("cache-control"), Some("no-store"));
    assert_eq!(probe.runs.get(), 2);
    // A request without a key is not the layer's to refuse.
    let unkeyed = RawRequest::post("/calls").send(server.addr).await;
    assert_eq!(unkeyed.status, 201);
    // Once they finish, keys are taken again, and the orphaned runs were recorded.
    probe.gate.add_permits(2);
    let runs = probe.runs.clone();
    eventually(move || runs.get() == 3).await;
    let mut accepted = None;
    for _ in 0..200 {
        let res = call("new", "0").send(server.addr).await;
        if res.status != 503 {
            accepted = Some(res);
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(accepted.expect("keys are taken again").status, 201);
    let replay = call("gone-1", "gate").send(server.addr).await;
    assert!(replay.replayed(), "{replay:?}");
    server.shut_down(&idem, None).await;
}

/// A worker past its bound refuses every new key until its runs end: that is warned of when
/// it starts, then at most once a minute, and each refusal is logged at `debug`, where each
/// logged a warning of its own (a thousand lines a second under load).
#[actix_web::test]
async fn refusals_past_the_bound_of_runs_for_clients_gone_are_warned_of_once_not_per_request() {
    let _turn = TURN.lock().await;
    let warnings = Warnings::installed();
    let text = "too many idempotent operations run on for clients that went away";
    let before = warnings.containing(text);
    let probe = probe();
    let idem = IdempotencyConfig::new(MokaStore::new()).with_max_detached(1);
    let server = start(idem.clone(), probe.clone());
    call("gone", "gate")
        .send_and_reset(server.addr, || probe.runs.get() == 1)
        .await;
    until_orphaned(server.addr, &call("gone", "0")).await;
    for n in 0..5 {
        let refused = call(&format!("new-{n}"), "0").send(server.addr).await;
        assert_error(&refused, 503, "idempotency_overloaded");
    }
    assert_eq!(warnings.containing(text) - before, 1);
    probe.gate.add_permits(1);
    server.shut_down(&idem, Some(Duration::from_secs(5))).await;
}

#[actix_web::test]
async fn a_graceful_shutdown_that_drains_lets_a_run_whose_client_went_away_finish_and_record() {
    let _turn = TURN.lock().await;
    let probe = probe();
    let idem = IdempotencyConfig::new(MokaStore::new());
    let server = start(idem.clone(), probe.clone());
    call("shutdown-1", "400")
        .send_and_reset(server.addr, || probe.runs.get() == 1)
        .await;
    // Shut down while the run goes on without its client.
    let drained = server.shut_down(&idem, Some(Duration::from_secs(5))).await;
    assert_eq!(drained, Some(0), "nothing was cancelled");
    // A new server on the same store replays it: the run finished and was recorded.
    let next = start(idem.clone(), probe.clone());
    let retry = call("shutdown-1", "400").send(next.addr).await;
    assert!(retry.replayed(), "{retry:?}");
    assert_eq!(retry.body, b"call_1");
    assert_eq!(probe.runs.get(), 1);
    next.shut_down(&idem, None).await;
}

/// The shorter form the README shows: the drain in the server's own shutdown signal
/// (`HttpServer::shutdown_signal`), which actix's graceful stop follows.
#[actix_web::test]
async fn a_drain_in_the_server_s_shutdown_signal_lets_a_run_whose_client_went_away_record() {
    let _turn = TURN.lock().await;
    let probe = probe();
    let idem = IdempotencyConfig::new(MokaStore::new());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let draining = idem.clone();
    let signal = async move {
        let _ = stopped.await;
        draining.drain(Duration::from_secs(5)).await;
    };
    let server = start_stopped_by(idem.clone(), probe.clone(), Some(Box::pin(signal)));
    call("signalled-1", "400")
        .send_and_reset(server.addr, || probe.runs.get() == 1)
        .await;
    stop.send(()).unwrap();
    server.ended().await;
    let next = start(idem.clone(), probe.clone());
    let retry = call("signalled-1", "400").send(next.addr).await;
    assert!(retry.replayed(), "{retry:?}");
    assert_eq!(probe.runs.get(), 1);
    next.shut_down(&idem, None).await;
}

#[actix_web::test]
async fn a_shutdown_that_does_not_drain_loses_the_record_of_a_run_whose_client_went_away() {
    // The limit the drain closes: actix stops the runtime of work whose client went away.
    // The run would finish in 3 s: far longer than a stop takes, even on a loaded machine.
    let _turn = TURN.lock().await;
    let probe = probe();
    let idem = IdempotencyConfig::new(MokaStore::new());
    let server = start(idem.clone(), probe.clone());
    call("undrained", "3000")
        .send_and_reset(server.addr, || probe.runs.get() == 1)
        .await;
    server.shut_down(&idem, None).await;
    let next = start(idem.clone(), probe.clone());
    let retry = call("undrained", "0").send(next.addr).await;
    assert!(
        !retry.replayed(),
        "without a drain, the half-done run is not recorded: {retry:?}"
    );
    next.shut_down(&idem, None).await;
}

#[actix_web::test]
async fn a_run_that_cannot_finish_within_the_drain_is_cancelled_and_its_key_released() {
    let _turn = TURN.lock().await;
    let probe = probe();
    let idem = IdempotencyConfig::new(MokaStore::new()).with_max_detached(1);
    let server = start(idem.clone(), probe.clone());
    call("stuck", "gate")
        .send_and_reset(server.addr, || probe.runs.get() == 1)
        .await;
    until_orphaned(server.addr, &call("stuck", "0")).await;
    let drained = server
        .shut_down(&idem, Some(Duration::from_millis(200)))
        .await;
    assert_eq!(drained, Some(1), "one run was cancelled");
    // Its key is free at once, not in flight until the lease lapses.
    let next = start(idem.clone(), probe.clone());
    let retry = call("stuck", "0").send(next.addr).await;
    assert_eq!(retry.status, 201, "{retry:?}");
    assert!(!retry.replayed());
    assert_eq!(probe.runs.get(), 2);
    next.shut_down(&idem, None).await;
}

/// A run whose client still waits, and that cannot finish within the drain, is cancelled
/// with those whose clients went away: its client gets 503 with `Retry-After`, and its key
/// is released while the worker still runs. Left to the server's graceful stop, it was
/// dropped as the worker's runtime stopped, too late for its release: the key stayed in
/// flight until its lease lapsed, and the retry got 409.
#[actix_web::test]
async fn a_run_whose_client_waits_and_that_outlasts_the_drain_is_cancelled_and_its_key_released() {
    let _turn = TURN.lock().await;
    let probe = probe();
    let idem = IdempotencyConfig::new(MokaStore::new());
    let server = start(idem.clone(), probe.clone());
    let request = call("waited", "gate");
    let what = "the run was cancelled";
    let first = answered_past_a_drain(server, &idem, &probe, request, Duration::ZERO, what).await;
    // The layer's error, in its envelope (its request id the response's X-Request-ID).
    assert_error(&first, 503, "idempotency_shutting_down");
    assert!(first.header("retry-after").is_some(), "{first:?}");
    // Its key is free at once, not in flight until the lease lapses.
    let next = start(idem.clone(), probe.clone());
    let retry = call("waited", "0").send(next.addr).await;
    assert_eq!(retry.status, 201, "{retry:?}");
    assert!(!retry.replayed());
    assert_eq!(probe.runs.get(), 2);
    next.shut_down(&idem, None).await;
}

/// The 503 of a run the drain cancels while its client waits is one of the layer's errors, and
/// rendered as the application renders them (here RFC 9457), where it was a bare 503 with no
/// body in any application.
#[actix_web::test]
async fn a_run_the_drain_cancels_is_answered_in_the_applications_error_format() {
    let _turn = TURN.lock().await;
    let probe = probe();
    let idem = IdempotencyConfig::new(MokaStore::new()).with_error_renderer(ProblemJson);
    let server = start(idem.clone(), probe.clone());
    let request = call("rendered", "gate");
    let what = "the run was cancelled";
    let first = answered_past_a_drain(server, &idem, &probe, request, Duration::ZERO, what).await;
    assert_eq!(first.status, 503, "{first:?}");
    assert_eq!(
        first.header("content-type"),
        Some("application/problem+json"),
        "{first:?}"
    );
    let problem = first.json();
    assert_eq!(problem["code"], "idempotency_shutting_down", "{first:?}");
    assert_eq!(problem["status"], 503, "{first:?}");
    assert_eq!(
        problem["request_id"].as_str(),
        first.header("x-request-id"),
        "{first:?}"
    );
    assert!(first.header("retry-after").is_some(), "{first:?}");
}

/// A run whose handler is done and whose record is on its way to the store when the drain
/// runs out of time ran its operation: only the record is left, so it is written in the
/// background (the drain waits for it as for a release), and the retry replays it, where the
/// cancelled completion left the key in flight until its lease lapsed, and the retry after
/// that ran the operation again.
#[actix_web::test]
async fn a_run_whose_record_is_on_its_way_when_the_drain_cancels_is_recorded_not_run_again() {
    let _turn = TURN.lock().await;
    let probe = probe();
    let store = FaultyStore::new(MokaStore::new());
    let idem = IdempotencyConfig::new(store.clone()).with_max_detached(1);
    let server = start(idem.clone(), probe.clone());
    // Its first completion goes unanswered for longer than the drain waits.
    store.fail("complete", 1, Fault::Unanswered(Duration::from_millis(600)));
    call("recording", "0")
        .send_and_reset(server.addr, || probe.runs.get() == 1)
        .await;
    until_orphaned(server.addr, &call("recording", "0")).await;
    let drained = server
        .shut_down(&idem, Some(Duration::from_millis(200)))
        .await;
    assert_eq!(drained, Some(1), "the run was cancelled as it recorded");
    let next = start(idem.clone(), probe.clone());
    let retry = call("recording", "0").send(next.addr).await;
    assert_eq!(retry.status, 201, "{retry:?}");
    assert!(retry.replayed(), "recorded in the background: {retry:?}");
    assert_eq!(probe.runs.get(), 1, "the operation ran once");
    next.shut_down(&idem, None).await;
}

/// A run whose client still waits, whose handler has answered and whose record is on its way
/// to the store when the drain runs out of time, ran its operation: its client gets the
/// handler's answer, and the record is written in the background (the retry replays it),
/// where the client got 503 `idempotency_shutting_down`, telling it that its request had been
/// stopped before it was recorded: a retry once the record was lost ran it again.
#[actix_web::test]
async fn a_run_whose_client_waits_and_whose_record_is_on_its_way_when_the_drain_cancels_gets_its_answer(
) {
    let _turn = TURN.lock().await;
    let probe = probe();
    let store = FaultyStore::new(MokaStore::new());
    let idem = IdempotencyConfig::new(store.clone());
    let server = start(idem.clone(), probe.clone());
    // Its first completion goes unanswered for longer than the drain waits.
    store.fail("complete", 1, Fault::Unanswered(Duration::from_millis(600)));
    let request = call("answered", "0");
    let what = "the run was cancelled as it recorded";
    let first = answered_past_a_drain(server, &idem, &probe, request, Duration::ZERO, what).await;
    assert_eq!(first.status, 201, "the handler's answer: {first:?}");
    assert!(!first.replayed(), "{first:?}");
    assert!(first.header("x-request-id").is_some(), "{first:?}");
    let next = start(idem.clone(), probe.clone());
    let retry = call("answered", "0").send(next.addr).await;
    assert_eq!(retry.status, 201, "{retry:?}");
    assert!(retry.replayed(), "recorded in the background: {retry:?}");
    assert_eq!(retry.body, first.body);
    assert_eq!(probe.runs.get(), 1, "the operation ran once");
    next.shut_down(&idem, None).await;
}

/// The drain is the process's: one application's cancels the runs of every application whose
/// clients went away, and waits until their keys are released, not only its own application's
/// (the server stops right after, and a release still on its way would be dropped with it).
#[actix_web::test]
async fn a_drain_that_cancels_another_applications_run_waits_for_its_key_to_be_released() {
    let _turn = TURN.lock().await;
    let probe = probe();
    let store = FaultyStore::new(MokaStore::new());
    let other = IdempotencyConfig::new(store.clone()).with_max_detached(1);
    let server = start(other.clone(), probe.clone());
    call("elsewhere", "gate")
        .send_and_reset(server.addr, || probe.runs.get() == 1)
        .await;
    until_orphaned(server.addr, &call("elsewhere", "0")).await;
    // Its store is slow to release it.
    store.fail("release", 1, Fault::Unanswered(Duration::from_millis(500)));
    // Drained from an application of the process with nothing of its own in progress.
    let idem = IdempotencyConfig::new(MokaStore::new());
    let drained = server
        .shut_down(&idem, Some(Duration::from_millis(200)))
        .await;
    assert_eq!(
        drained,
        Some(1),
        "the other application's run was cancelled"
    );
    let next = start(other.clone(), probe.clone());
    let retry = call("elsewhere", "0").send(next.addr).await;
    assert_eq!(retry.status, 201, "its key was released: {retry:?}");
    assert_eq!(probe.runs.get(), 2);
    next.shut_down(&other, None).await;
}

#[actix_web::test]
async fn a_drain_waits_for_a_run_whose_client_still_waits() {
    let _turn = TURN.lock().await;
    let probe = probe();
    let idem = IdempotencyConfig::new(MokaStore::new());
    let server = start(idem.clone(), probe.clone());
    let addr = server.addr;
    let client = actix_web::rt::spawn(async move { call("waiting-1", "gate").send(addr).await });
    let runs = probe.runs.clone();
    eventually(move || runs.get() == 1).await;
    // Its client could still go away before the server stops: the drain covers the run.
    let drain = idem.clone();
    let drained = actix_web::rt::spawn(async move { drain.drain(Duration::from_secs(5)).await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        !drained.is_finished(),
        "the drain returned while a run was in progress"
    );
    probe.gate.add_permits(1);
    assert_eq!(drained.await.unwrap(), 0, "nothing was cancelled");
    let res = client.await.unwrap();
    assert_eq!(res.status, 201);
    server.shut_down(&idem, None).await;
}

/// A keyed request to the stream of two pieces, the second behind the gate.
fn streaming(key: &str) -> RawRequest {
    RawRequest::post("/stream")
        .header("Authorization", "Bearer tenant-1")
        .header("Idempotency-Key", key)
}

/// A keyed stream whose client still reads it is a run whose client waits: a drain that runs
/// out of time leaves it to the server's graceful stop, which sends it to its end, and its
/// record is kept, so that its retry replays it rather than running it again.
#[actix_web::test]
async fn a_drain_that_runs_out_of_time_leaves_a_stream_whose_client_still_reads_it_recorded() {
    let _turn = TURN.lock().await;
    let probe = probe();
    let idem = IdempotencyConfig::new(MokaStore::new());
    let server = start(idem.clone(), probe.clone());
    let request = || streaming("streaming-1");
    let addr = server.addr;
    let client = actix_web::rt::spawn(async move { request().send(addr).await });
    let runs = probe.runs.clone();
    eventually(move || runs.get() == 1).await;
    // The first piece is out; the second waits behind the gate, past the drain's time.
    tokio::time::sleep(Duration::from_millis(100)).await;
    server.handle.pause().await;
    let started = Instant::now();
    let cancelled = idem.drain(Duration::from_millis(200)).await;
    assert_eq!(cancelled, 0, "no run whose client went away");
    // Its grace is for what it cancelled or let go, of which there is nothing here.
    let took = started.elapsed();
    assert!(took < Duration::from_secs(1), "the drain took {took:?}");
    // The server's graceful stop lets the stream go on: its client gets it whole.
    probe.gate.add_permits(1);
    let first = client.await.unwrap();
    assert_eq!(first.status, 200);
    let mut whole = vec![b'a'; 100];
    whole.extend_from_slice(&[b'b'; 100]);
    assert_eq!(unchunked(&first.body), whole);
    server.handle.stop(true).await;
    tokio::task::spawn_blocking(move || server.thread.join().expect("server thread ends"))
        .await
        .unwrap();
    // The client got the operation's answer: its retry replays it, and it ran once (a
    // second run would not wait at the gate).
    probe.gate.add_permits(1);
    let next = start(idem.clone(), probe.clone());
    let retry = request().send(next.addr).await;
    assert!(retry.replayed(), "{retry:?}");
    assert_eq!(retry.body, whole);
    assert_eq!(probe.runs.get(), 1, "the operation ran once");
    next.shut_down(&idem, None).await;
}

/// A keyed stream under `key` that has ended, its end held until its record is written, on a
/// store whose first completion has `fault`, past a drain of 200 ms that lets its end go: the
/// app's settings, the probe, and the answer its client got (checked to be the whole stream).
async fn a_stream_s_end_let_go(key: &str, fault: Fault) -> (IdempotencyConfig, Probe, RawResponse) {
    let probe = probe();
    let store = FaultyStore::new(MokaStore::new());
    let idem = IdempotencyConfig::new(store.clone());
    let server = start(idem.clone(), probe.clone());
    store.fail("complete", 1, fault);
    probe.gate.add_permits(1);
    // Past its pieces, its end waiting for the record.
    let settle = Duration::from_millis(100);
    let what = "the end's wait for the record, let go";
    let first = answered_past_a_drain(server, &idem, &probe, streaming(key), settle, what).await;
    assert_eq!(first.status, 200, "{first:?}");
    (idem, probe, first)
}

/// A keyed stream that has ended, whose client has all of it but its end, held until its record
/// is written, is let go by a drain that runs out of time while the store does not answer: its
/// client gets the end, and the record goes on in the background, where the end waited for the
/// store until the server stopped and cut the connection, its client's answer with it.
#[actix_web::test]
async fn a_drain_that_runs_out_of_time_sends_the_end_of_a_stream_whose_record_is_on_its_way() {
    let _turn = TURN.lock().await;
    // Its completion goes unanswered for longer than the drain and the server's stop wait.
    let unanswered = Fault::Unanswered(Duration::from_secs(8));
    let (_, _, first) = a_stream_s_end_let_go("stream-end", unanswered).await;
    let mut whole = vec![b'a'; 100];
    whole.extend_from_slice(&[b'b'; 100]);
    assert_eq!(
        unchunked(&first.body),
        whole,
        "the whole answer, its end included"
    );
}

/// The same, with a store that takes the record within the 2 s the drain gives what it leaves
/// to the background: the drain waits for it, and the retry after the restart replays it,
/// where the drain returned at once, the server's stop dropped the recording with its worker
/// (the client, which had the whole answer, had closed its connection), and the retry found the
/// key in flight, then ran the operation again once its lease lapsed.
#[actix_web::test]
async fn a_stream_whose_end_a_drain_lets_go_is_recorded_before_the_stop_and_replayed() {
    let _turn = TURN.lock().await;
    let slow = Fault::Slow(Duration::from_secs(1));
    let (idem, probe, first) = a_stream_s_end_let_go("stream-end-slow", slow).await;
    let next = start(idem.clone(), probe.clone());
    let retry = streaming("stream-end-slow").send(next.addr).await;
    next.shut_down(&idem, None).await;
    assert!(retry.replayed(), "recorded before the stop: {retry:?}");
    assert_eq!(retry.body, unchunked(&first.body));
    assert_eq!(probe.runs.get(), 1, "the operation ran once");
}

/// A stream that fails after its first piece: its key is released before its failure goes out.
#[idempotent]
async fn failing_stream(probe: web::Data<Probe>) -> HttpResponse {
    probe.runs.bump();
    let body = stream::iter([
        Ok::<_, actix_web::Error>(Bytes::from(vec![b'a'; 100])),
        Err(actix_web::error::ErrorInternalServerError(
            "the upstream broke",
        )),
    ]);
    HttpResponse::Ok().streaming(body)
}

/// A stream that fails is released before its failure goes out, so that a retry sent at once
/// runs: a drain that runs out of time lets the failure go, and waits for the release, within
/// the same 2 s, where the server's stop dropped it and the retry found the key in flight for
/// the rest of its lease.
#[actix_web::test]
async fn a_failed_stream_s_release_a_drain_lets_go_is_made_before_the_stop() {
    let _turn = TURN.lock().await;
    let probe = probe();
    let store = FaultyStore::new(MokaStore::new());
    let idem = IdempotencyConfig::new(store.clone());
    let server = start(idem.clone(), probe.clone());
    store.fail("release", 1, Fault::Slow(Duration::from_secs(1)));
    let request = || {
        RawRequest::post("/failing")
            .header("Authorization", "Bearer tenant-1")
            .header("Idempotency-Key", "failing-slow-release")
    };
    let addr = server.addr;
    let client = actix_web::rt::spawn(async move { request().try_send(addr).await });
    let runs = probe.runs.clone();
    eventually(move || runs.get() == 1).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    server
        .shut_down(&idem, Some(Duration::from_millis(200)))
        .await;
    let _ = client.await.unwrap();
    let next = start(idem.clone(), probe.clone());
    let retry = request().try_send(next.addr).await;
    next.shut_down(&idem, None).await;
    let retry = retry.expect("an answer");
    assert_eq!(retry.status, 200, "released before the stop: {retry:?}");
    assert_eq!(probe.runs.get(), 2, "the retry ran");
}

/// A keyed stream whose client went away is read on without it, as a run whose client went
/// away finishes: a drain that runs out of time cancels it, as it cancels such runs, and
/// releases its key, so that its retry runs it rather than finding it in flight.
#[actix_web::test]
async fn a_drain_that_runs_out_of_time_cancels_a_stream_whose_client_went_away_and_releases_its_key(
) {
    let _turn = TURN.lock().await;
    let probe = probe();
    let idem = IdempotencyConfig::new(MokaStore::new()).with_max_detached(1);
    let server = start(idem.clone(), probe.clone());
    let request = || streaming("streaming-gone");
    request()
        .send_and_reset(server.addr, || probe.runs.get() == 1)
        .await;
    until_orphaned(server.addr, &request()).await;
    // Its second piece waits behind the gate, past the drain's time.
    let drained = server
        .shut_down(&idem, Some(Duration::from_millis(200)))
        .await;
    assert_eq!(drained, Some(1), "the stream read without its client");
    // Its key is free at once: the retry runs it again, and gets it whole.
    probe.gate.add_permits(1);
    let next = start(idem.clone(), probe.clone());
    let retry = request().send(next.addr).await;
    assert_eq!(retry.status, 200, "{retry:?}");
    assert!(!retry.replayed());
    let mut whole = vec![b'a'; 100];
    whole.extend_from_slice(&[b'b'; 100]);
    assert_eq!(unchunked(&retry.body), whole);
    assert_eq!(probe.runs.get(), 2);
    next.shut_down(&idem, None).await;
}

/// A claim whose write failed but landed (its answer lost) is released in the background,
/// and a release the store fails is retried: a drain with nothing running waits for that
/// release too, as it waits for those of the runs it cancels, where it returned at once and
/// the server's stop dropped the retried release, leaving the key in flight until its lease
/// lapsed, every retry answered 409 though nothing ran.
#[actix_web::test]
async fn a_drain_with_nothing_running_waits_for_the_release_of_a_failed_claim() {
    let _turn = TURN.lock().await;
    let probe = probe();
    let store = FaultyStore::new(MokaStore::new());
    let idem = IdempotencyConfig::new(store.clone());
    let server = start(idem.clone(), probe.clone());
    store.fail("claim", 1, Fault::Lost);
    store.fail("release", 1, Fault::Unavailable);
    let first = call("lost-claim", "0").send(server.addr).await;
    assert_eq!(first.status, 503, "{first:?}");
    let drained = server.shut_down(&idem, Some(Duration::from_secs(1))).await;
    assert_eq!(drained, Some(0), "nothing ran");
    let next = start(idem.clone(), probe.clone());
    let retry = call("lost-claim", "0").send(next.addr).await;
    assert_eq!(
        retry.status, 201,
        "the failed claim was released: {retry:?}"
    );
    assert_eq!(probe.runs.get(), 1, "the operation ran once, on the retry");
    next.shut_down(&idem, None).await;
}
