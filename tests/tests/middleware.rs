//! The `Idempotency` middleware is the attribute in another form: the same behaviour suite runs
//! against both; the middleware leaves reading methods alone and honours the methods it is
//! given; app-wide defaults, the middleware's overrides and an endpoint's own settings follow
//! the documented precedence. (Both forms on one route: `layering.rs`.)

use std::sync::Arc;
use std::time::Duration;

use actix_web::http::Method;
use actix_web::{web, HttpRequest, HttpResponse};
use idem_actix::clock::{ManualClock, Timestamp};
use idem_actix::{idempotent, Idempotency, IdempotencyConfig, MokaStore, Policy, Scope};
use idem_tests::{
    assert_error, eventually, until_orphaned, Counter, RawRequest, RawResponse, TestServer,
};
use tokio::sync::Semaphore;

#[derive(Clone)]
struct Probe {
    runs: Counter,
    gate: Arc<Semaphore>,
}

/// The handler's behaviour, chosen by headers (which are not part of the fingerprint).
async fn work(probe: &Probe, req: &HttpRequest, body: &str) -> HttpResponse {
    let n = probe.runs.bump();
    let has = |name| req.headers().contains_key(name);
    if has("x-block") {
        let _permit = probe.gate.acquire().await.unwrap();
    }
    if has("x-panic") {
        panic!("handler bug");
    }
    if has("x-fail") {
        return HttpResponse::ServiceUnavailable().body("carrier down");
    }
    HttpResponse::Created()
        .insert_header(("X-Custom", "kept"))
        .body(format!("run {n}: {body}"))
}

#[idempotent]
async fn annotated(probe: web::Data<Probe>, req: HttpRequest, body: String) -> HttpResponse {
    work(&probe, &req, &body).await
}

async fn plain(probe: web::Data<Probe>, req: HttpRequest, body: String) -> HttpResponse {
    work(&probe, &req, &body).await
}

struct App {
    server: TestServer,
    probe: Probe,
    clock: ManualClock,
}

fn app(
    register: impl Fn(&mut web::ServiceConfig) + Send + Clone + 'static,
    defaults: Policy,
) -> App {
    let probe = Probe {
        runs: Counter::default(),
        gate: Arc::new(Semaphore::new(0)),
    };
    let clock = ManualClock::new(Timestamp::from_millis(1_700_000_000_000));
    // One run at most is finished for clients that went away: the suite tells by a refusal
    // when its reset client's run goes on by itself.
    let idem = IdempotencyConfig::new(MokaStore::new())
        .with_max_detached(1)
        .with_clock(clock.clone())
        .with_defaults(defaults)
        .expect("the defaults fit the store");
    let data = web::Data::new(probe.clone());
    let server = TestServer::start(1, move |cfg| {
        cfg.app_data(idem.clone()).app_data(data.clone());
        register(cfg);
    });
    App {
        server,
        probe,
        clock,
    }
}

fn attribute_form() -> App {
    app(
        |cfg| {
            cfg.route("/v1/calls", web::post().to(annotated));
        },
        Policy::DEFAULT,
    )
}

fn middleware_form() -> App {
    app(
        |cfg| {
            cfg.service(
                web::scope("/v1")
                    .wrap(Idempotency::new())
                    .route("/calls", web::post().to(plain)),
            );
        },
        Policy::DEFAULT,
    )
}

/// `POST path` under key `k`, body `a`.
fn post(path: &str) -> RawRequest {
    RawRequest::post(path)
        .header("Authorization", "Bearer t")
        .header("Idempotency-Key", "k")
        .body("a")
}

fn call(key: &str, body: &str) -> RawRequest {
    RawRequest::post("/v1/calls")
        .header("Authorization", "Bearer t")
        .header("Idempotency-Key", key)
        .body(body)
}

impl App {
    async fn send(&self, request: RawRequest) -> RawResponse {
        request.send(self.server.addr).await
    }
}

/// What both forms must do.
async fn behaviour_suite(a: App) {
    // Executed once, then replayed with its headers.
    let first = a.send(call("k1", "a")).await;
    assert_eq!(first.status, 201);
    assert!(!first.replayed());
    let retry = a.send(call("k1", "a")).await;
    assert!(retry.replayed());
    assert_eq!(
        (retry.body.clone(), retry.header("x-custom")),
        (first.body.clone(), Some("kept"))
    );

    // A different request with the same key.
    assert_error(&a.send(call("k1", "b")).await, 409, "idempotency_conflict");

    // In flight.
    let running = {
        let (request, addr) = (call("k2", "a").header("X-Block", "1"), a.server.addr);
        actix_web::rt::spawn(async move { request.send(addr).await })
    };
    eventually(|| a.probe.runs.get() == 2).await;
    let during = a.send(call("k2", "a")).await;
    assert_error(&during, 409, "idempotency_conflict");
    assert_eq!(during.header("retry-after"), Some("1"));
    a.probe.gate.add_permits(100);
    assert_eq!(running.await.unwrap().status, 201);

    // A 5xx and a panic release the key.
    assert_eq!(
        a.send(call("k3", "a").header("X-Fail", "1")).await.status,
        503
    );
    let crash = a.send(call("k3", "a").header("X-Panic", "1")).await;
    assert_eq!(crash.status, 500);
    assert!(crash.header("x-request-id").is_some());
    // The layer's answer for the handler, which no cache may keep.
    assert_eq!(crash.header("cache-control"), Some("no-store"));
    let fixed = a.send(call("k3", "a")).await;
    assert_eq!(fixed.status, 201);
    assert!(!fixed.replayed());

    // Bad keys and missing scopes are refused before anything runs.
    let runs = a.probe.runs.get();
    assert_error(
        &a.send(call("a b", "a")).await,
        400,
        "idempotency_key_invalid",
    );
    let anonymous = RawRequest::post("/v1/calls").header("Idempotency-Key", "k4");
    assert_error(&a.send(anonymous).await, 400, "idempotency_scope_missing");
    assert_eq!(a.probe.runs.get(), runs);

    // No key: runs every time.
    let plain = || RawRequest::post("/v1/calls").body("x");
    assert!(!a.send(plain()).await.replayed());
    assert!(!a.send(plain()).await.replayed());
    assert_eq!(a.probe.runs.get(), runs + 2);

    // A client that resets its connection mid-handler cancels nothing.
    a.probe
        .gate
        .forget_permits(a.probe.gate.available_permits());
    let runs = a.probe.runs.get();
    let probe = a.probe.clone();
    call("k5", "a")
        .header("X-Block", "1")
        .send_and_reset(a.server.addr, move || probe.runs.get() == runs + 1)
        .await;
    // Not let go until the server has seen the reset: only then is the run its own.
    until_orphaned(a.server.addr, &call("k3", "a")).await;
    a.probe.gate.add_permits(100);
    let mut retry = a.send(call("k5", "a")).await;
    for _ in 0..100 {
        // In flight (409), or refused while the run still counts as one left to finish (503).
        if retry.status != 409 && retry.status != 503 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
        retry = a.send(call("k5", "a")).await;
    }
    assert!(
        retry.replayed(),
        "the disconnected request still ran to completion"
    );
    assert_eq!(a.probe.runs.get(), runs + 1);

    // The TTL is the app's default, 24 hours.
    a.clock.advance(Duration::from_secs(24 * 3600));
    assert!(!a.send(call("k1", "a")).await.replayed());
}

#[actix_web::test]
async fn the_attribute_form_passes_the_behaviour_suite() {
    behaviour_suite(attribute_form()).await;
}

#[actix_web::test]
async fn the_middleware_form_passes_the_behaviour_suite() {
    behaviour_suite(middleware_form()).await;
}

#[actix_web::test]
async fn the_middleware_ignores_keys_on_reading_methods_and_honours_its_methods() {
    let a = app(
        |cfg| {
            cfg.service(
                web::scope("/v1")
                    .wrap(Idempotency::new())
                    .route("/calls", web::get().to(plain))
                    .route("/calls", web::post().to(plain)),
            )
            .service(
                web::scope("/v2")
                    .wrap(Idempotency::new().with_methods([Method::PUT]))
                    .route("/calls", web::route().to(plain)),
            )
            .service(
                web::scope("/v3/read")
                    .wrap(Idempotency::new())
                    .route("", web::route().to(plain)),
            );
        },
        Policy::DEFAULT,
    );
    let get = || RawRequest::get("/v1/calls").header("Idempotency-Key", "k");
    assert!(!a.send(get()).await.replayed());
    assert!(!a.send(get()).await.replayed());
    // HEAD and OPTIONS too, with no credentials (a key the layer read would need a scope).
    for method in ["HEAD", "OPTIONS"] {
        let reading = || RawRequest::new(method, "/v3/read").header("Idempotency-Key", "k");
        for _ in 0..2 {
            let res = a.send(reading()).await;
            assert_eq!((res.status, res.replayed()), (201, false), "{method}");
        }
    }
    let v2 = |method| {
        RawRequest::new(method, "/v2/calls")
            .header("Authorization", "Bearer t")
            .header("Idempotency-Key", "k")
    };
    assert!(!a.send(v2("POST")).await.replayed());
    assert!(
        !a.send(v2("POST")).await.replayed(),
        "POST is not among this middleware's methods"
    );
    assert!(!a.send(v2("PUT")).await.replayed());
    assert!(a.send(v2("PUT")).await.replayed());
    assert_eq!(a.probe.runs.get(), 9);
}

/// By default the middleware honours keys on every method but the safe ones (`GET`, `HEAD`,
/// `OPTIONS`, `TRACE`), which change nothing: an extension method (`PURGE`, WebDAV's `LOCK`)
/// has side effects the app gives it, and its retries ran again when only `POST`, `PUT`,
/// `PATCH` and `DELETE` were honoured.
#[actix_web::test]
async fn the_middleware_honours_keys_on_extension_methods_by_default() {
    let purge = Method::from_bytes(b"PURGE").unwrap();
    let a = app(
        move |cfg| {
            cfg.service(
                web::scope("/v1")
                    .wrap(Idempotency::new())
                    .route("/cache", web::route().method(purge.clone()).to(plain))
                    .route("/cache", web::route().method(Method::TRACE).to(plain)),
            );
        },
        Policy::DEFAULT,
    );
    let send = |method| {
        RawRequest::new(method, "/v1/cache")
            .header("Authorization", "Bearer t")
            .header("Idempotency-Key", "k")
    };
    assert!(!a.send(send("PURGE")).await.replayed());
    assert!(a.send(send("PURGE")).await.replayed());
    assert!(!a.send(send("TRACE")).await.replayed());
    assert!(!a.send(send("TRACE")).await.replayed());
    assert_eq!(a.probe.runs.get(), 3);
}

#[idempotent(ttl = "24h")]
async fn long_lived(probe: web::Data<Probe>, req: HttpRequest, body: String) -> HttpResponse {
    work(&probe, &req, &body).await
}

#[actix_web::test]
async fn endpoint_settings_override_app_defaults_which_override_built_in_ones() {
    let defaults = Policy::DEFAULT
        .header("X-Idempotency-Key")
        .ttl(Duration::from_secs(3600));
    let a = app(
        |cfg| {
            cfg.route("/short", web::post().to(annotated))
                .route("/long", web::post().to(long_lived))
                .service(
                    web::scope("/strict")
                        .wrap(Idempotency::new().with_overrides(|p| p.required(true)))
                        .route("", web::post().to(plain)),
                );
        },
        defaults,
    );
    let keyed = |path: &str| {
        RawRequest::post(path)
            .header("Authorization", "Bearer t")
            .header("X-Idempotency-Key", path)
    };
    // The app's header applies everywhere; the built-in one no longer does.
    assert_eq!(a.send(keyed("/short")).await.status, 201);
    assert_eq!(a.send(keyed("/long")).await.status, 201);
    assert!(a.send(keyed("/short")).await.replayed());
    let builtin = RawRequest::post("/short")
        .header("Authorization", "Bearer t")
        .header("Idempotency-Key", "/short");
    assert!(!a.send(builtin).await.replayed());

    // The app's TTL (1 h) applies where the endpoint says nothing; the endpoint's (24 h) wins.
    a.clock.advance(Duration::from_secs(2 * 3600));
    assert!(!a.send(keyed("/short")).await.replayed());
    assert!(a.send(keyed("/long")).await.replayed());

    // The middleware's own override: a key is required there.
    let no_key = RawRequest::post("/strict").header("Authorization", "Bearer t");
    let res = a.send(no_key).await;
    let message = assert_error(&res, 400, "idempotency_key_missing");
    assert!(message.contains("X-Idempotency-Key"), "{message}");
}

#[idempotent(in_flight = "wait")]
async fn waiting(probe: web::Data<Probe>, req: HttpRequest, body: String) -> HttpResponse {
    work(&probe, &req, &body).await
}

#[idempotent(in_flight = "wait", wait_timeout = "30s")]
async fn waiting_30s(probe: web::Data<Probe>, req: HttpRequest, body: String) -> HttpResponse {
    work(&probe, &req, &body).await
}

/// `in_flight = "wait"` without `wait_timeout` waits as long as the application's defaults
/// wait, where those wait too (settings resolve field by field): the attribute gave every such
/// endpoint 10 s whatever the defaults said. Its own `wait_timeout` still wins.
#[actix_web::test]
async fn in_flight_wait_without_a_bound_keeps_the_app_s_bound() {
    use idem_actix::OnInFlight;
    let defaults = Policy::DEFAULT.on_in_flight(OnInFlight::Wait(Duration::from_millis(300)));
    let a = app(
        |cfg| {
            cfg.route("/wait", web::post().to(waiting))
                .route("/wait-30s", web::post().to(waiting_30s));
        },
        defaults,
    );
    let call = |path: &str| {
        RawRequest::post(path)
            .header("Authorization", "Bearer t")
            .header("Idempotency-Key", path)
            .header("X-Block", "1")
    };
    let addr = a.server.addr;
    let spawn = |req: RawRequest| tokio::spawn(async move { req.send(addr).await });
    let first = spawn(call("/wait"));
    eventually(|| a.probe.runs.get() == 1).await;
    // The app's 300 ms, not the attribute's 10 s: given up well within 5 s.
    let duplicate = tokio::time::timeout(Duration::from_secs(5), a.send(call("/wait"))).await;
    let duplicate = duplicate.expect("the duplicate waited past the app's bound");
    assert_error(&duplicate, 409, "idempotency_conflict");

    // The endpoint's own bound: still waiting after the app's.
    let other = spawn(call("/wait-30s"));
    eventually(|| a.probe.runs.get() == 2).await;
    let duplicate = spawn(call("/wait-30s"));
    tokio::time::sleep(Duration::from_millis(900)).await;
    assert!(
        !duplicate.is_finished(),
        "the endpoint's 30 s bound gave way to the app's"
    );
    a.probe.gate.add_permits(2);
    assert_eq!(first.await.unwrap().status, 201);
    assert_eq!(other.await.unwrap().status, 201);
    let duplicate = duplicate.await.unwrap();
    assert_eq!((duplicate.status, duplicate.replayed()), (201, true));
}

/// Under defaults whose key header is another, `Idempotency-Key` is a header like any other:
/// a middleware may scope keys by it (as a gateway's tenant header), where the app was refused
/// at start-up because the built-in key header was taken for the defaults'.
#[actix_web::test]
async fn a_middleware_may_scope_by_the_built_in_key_header_where_the_defaults_read_another() {
    let a = app(
        |cfg| {
            cfg.service(
                web::scope("/v1")
                    .wrap(
                        Idempotency::new()
                            .with_overrides(|o| o.scope(Scope::Header("Idempotency-Key"))),
                    )
                    .route("/calls", web::post().to(plain)),
            );
        },
        Policy::DEFAULT.header("X-Key"),
    );
    let keyed = |tenant: &str| {
        RawRequest::post("/v1/calls")
            .header("X-Key", "k1")
            .header("Idempotency-Key", tenant)
            .body("a")
    };
    assert_eq!(a.send(keyed("tenant-a")).await.status, 201);
    assert!(a.send(keyed("tenant-a")).await.replayed());
    let other = a.send(keyed("tenant-b")).await;
    assert_eq!((other.status, other.replayed()), (201, false));
    assert_eq!(a.probe.runs.get(), 2);
}

/// The handler of the parity suite: `work`, or a body over 16 bytes (`X-Big`), or a stream
/// of unknown length (`X-Stream`).
async fn parity_work(probe: &Probe, req: &HttpRequest, body: &str) -> HttpResponse {
    if req.headers().contains_key("x-big") {
        let n = probe.runs.bump();
        return HttpResponse::Created().body(format!("run {n}: a body longer than sixteen bytes"));
    }
    if req.headers().contains_key("x-stream") {
        let n = probe.runs.bump();
        let pieces = [format!("run {n}: "), "streamed".to_owned()]
            .map(|p| Ok::<_, actix_web::Error>(actix_web::web::Bytes::from(p)));
        return HttpResponse::Ok().streaming(futures_util::stream::iter(pieces));
    }
    work(probe, req, body).await
}

#[idempotent(required, max_body = 16, max_response = 16)]
async fn parity_annotated(probe: web::Data<Probe>, req: HttpRequest, body: String) -> HttpResponse {
    parity_work(&probe, &req, &body).await
}

async fn parity_plain(probe: web::Data<Probe>, req: HttpRequest, body: String) -> HttpResponse {
    parity_work(&probe, &req, &body).await
}

/// What a client sees of a response, with what differs between any two requests (their ids,
/// the date) taken out.
fn seen(res: &RawResponse) -> (u16, Vec<(String, Vec<String>)>, String) {
    let mut headers: Vec<_> = (res.headers.iter())
        .filter(|(name, _)| !matches!(name.as_str(), "date" | "x-request-id"))
        .map(|(name, values)| (name.clone(), values.clone()))
        .collect();
    headers.sort();
    let mut body = res.text();
    if let Some(id) = res.header("x-request-id") {
        body = body.replace(id, "<request id>");
    }
    (res.status, headers, body)
}

/// The parity suite's answers, in order, each named by its step.
async fn parity_answers(a: App) -> Vec<(&'static str, (u16, Vec<(String, Vec<String>)>, String))> {
    let mut seen_all = Vec::new();
    let mut step = |name, res: RawResponse| seen_all.push((name, seen(&res)));
    step(
        "no key, required",
        a.send(
            RawRequest::post("/v1/calls")
                .header("Authorization", "Bearer t")
                .body("a"),
        )
        .await,
    );
    step("bad key", a.send(call("a b", "a")).await);
    step(
        "body too large",
        a.send(call("k0", "a body over sixteen bytes")).await,
    );
    step("first run", a.send(call("k1", "a")).await);
    step("replay", a.send(call("k1", "a")).await);
    step("mismatch", a.send(call("k1", "b")).await);
    step("5xx", a.send(call("k2", "a").header("X-Fail", "1")).await);
    step(
        "panic",
        a.send(call("k2", "a").header("X-Panic", "1")).await,
    );
    step("run after a panic", a.send(call("k2", "a")).await);
    step(
        "response too large",
        a.send(call("k3", "a").header("X-Big", "1")).await,
    );
    step(
        "its retry",
        a.send(call("k3", "a").header("X-Big", "1")).await,
    );
    step(
        "stream",
        a.send(call("k4", "a").header("X-Stream", "1")).await,
    );
    let mut retry = a.send(call("k4", "a").header("X-Stream", "1")).await;
    for _ in 0..100 {
        if retry.status != 409 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
        retry = a.send(call("k4", "a").header("X-Stream", "1")).await;
    }
    step("stream replayed", retry);
    let runs = a.probe.runs.get();
    let running = {
        let (request, addr) = (call("k5", "a").header("X-Block", "1"), a.server.addr);
        actix_web::rt::spawn(async move { request.send(addr).await })
    };
    eventually(|| a.probe.runs.get() == runs + 1).await;
    step("in flight", a.send(call("k5", "a")).await);
    a.probe.gate.add_permits(100);
    step("the one in flight", running.await.unwrap());
    seen_all
}

/// The parity suite's answers under each form: the steps they differ on.
async fn differences() -> Vec<String> {
    let attribute = parity_answers(app(
        move |cfg| {
            cfg.service(web::scope("/v1").route("/calls", web::post().to(parity_annotated)));
        },
        Policy::DEFAULT,
    ))
    .await;
    let middleware = parity_answers(app(
        move |cfg| {
            cfg.service(
                web::scope("/v1")
                    .wrap(
                        Idempotency::new()
                            .with_overrides(|o| o.required(true).max_body(16).max_response(16)),
                    )
                    .route("/calls", web::post().to(parity_plain)),
            );
        },
        Policy::DEFAULT,
    ))
    .await;
    let mut differences = Vec::new();
    for ((step, by_attribute), (_, by_middleware)) in attribute.iter().zip(&middleware) {
        if by_attribute != by_middleware {
            differences.push(format!(
                "{step}:\n  attribute  {by_attribute:?}\n  middleware {by_middleware:?}"
            ));
        }
    }
    differences
}

#[actix_web::test]
async fn both_forms_answer_every_step_alike() {
    let differences = differences().await;
    assert!(differences.is_empty(), "{}", differences.join("\n"));
}

/// A middleware around a scope runs before the scope routes the request, where actix's
/// `match_pattern` is the first pattern that fits the path, whatever its method: here
/// `GET /v1/items/{id}` for `POST /v1/items/search`, the pattern of `POST /v1/items/42` too.
/// With keys per endpoint, the two endpoints shared one store key, and the second got 409 (or,
/// answering mismatches with the first's answer, the other endpoint's response). The
/// middleware tells an endpoint by its method and path.
#[actix_web::test]
async fn a_middleware_s_keys_per_endpoint_are_not_shared_by_endpoints_one_pattern_fits() {
    let a = app(
        |cfg| {
            cfg.service(
                web::scope("/v1")
                    .wrap(Idempotency::new().with_overrides(|o| o.per_endpoint(true)))
                    .route("/items/{id}", web::get().to(plain))
                    .route("/items/search", web::post().to(plain))
                    .route("/items/{id}", web::post().to(plain)),
            );
        },
        Policy::DEFAULT,
    );
    let update = a.send(post("/v1/items/42")).await;
    assert_eq!((update.status, update.replayed()), (201, false));
    let search = a.send(post("/v1/items/search")).await;
    assert_eq!((search.status, search.replayed()), (201, false));
    assert!(a.send(post("/v1/items/search")).await.replayed());
    assert!(a.send(post("/v1/items/42")).await.replayed());
    // Another path is another endpoint to the middleware, which cannot see the pattern the
    // app will route it by.
    let other = a.send(post("/v1/items/43")).await;
    assert_eq!((other.status, other.replayed()), (201, false));
    assert_eq!(a.probe.runs.get(), 3);
}

/// A middleware given an endpoint name keeps the keys of every path it wraps under that one
/// name: the same key on another path is the same key with another request, a mismatch, where
/// unnamed it is another endpoint's (above). A name alone makes keys per endpoint, over
/// defaults that keep them per scope: two middlewares of two names keep one key apart.
#[actix_web::test]
async fn a_named_middleware_keeps_the_keys_of_every_path_it_wraps_under_its_name() {
    let a = app(
        |cfg| {
            let named = |name| Idempotency::new().with_overrides(move |o| o.endpoint_name(name));
            cfg.service(
                web::scope("/v1/items")
                    .wrap(named("items.update"))
                    .route("/{id}", web::post().to(plain)),
            )
            .service(
                web::scope("/v1/calls")
                    .wrap(named("calls.create"))
                    .route("", web::post().to(plain)),
            );
        },
        Policy::DEFAULT,
    );
    let update = a.send(post("/v1/items/42")).await;
    assert_eq!((update.status, update.replayed()), (201, false));
    assert!(a.send(post("/v1/items/42")).await.replayed());
    assert_error(
        &a.send(post("/v1/items/43")).await,
        409,
        "idempotency_conflict",
    );
    // Per scope, as the defaults keep keys, this would be the same key with another request.
    let call = a.send(post("/v1/calls")).await;
    assert_eq!((call.status, call.replayed()), (201, false));
    assert_eq!(a.probe.runs.get(), 2);
}

/// A handler that ran (its charge went out) and then failed with an error of a type actix-web's
/// extractors also give (a `PayloadError`, as reading an upstream's body does) answered as the
/// handler: recorded, and replayed to its retry. The layer does not take such an error for an
/// extractor's refusal, which would release the key and charge again.
async fn charged(probe: web::Data<Probe>) -> Result<HttpResponse, actix_web::Error> {
    probe.runs.bump();
    Err(actix_web::error::PayloadError::Incomplete(None).into())
}

#[actix_web::test]
async fn a_handler_that_ran_and_failed_with_an_extractor_s_error_type_is_not_run_again() {
    let a = app(
        |cfg| {
            cfg.service(
                web::scope("/v1")
                    .wrap(Idempotency::new())
                    .route("/charges", web::post().to(charged)),
            );
        },
        Policy::DEFAULT,
    );
    let post = || {
        RawRequest::post("/v1/charges")
            .header("Authorization", "Bearer t")
            .header("Idempotency-Key", "charge")
    };
    assert_eq!(a.send(post()).await.status, 400);
    let again = a.send(post()).await;
    assert_eq!((again.status, again.replayed()), (400, true));
    assert_eq!(a.probe.runs.get(), 1, "charged once");
}

/// A path no route fits is answered 404 by the app's routing, not by a handler: nothing ran,
/// so nothing is recorded, and the key stays free for the request the client meant (a path it
/// got wrong, or a route an instance of an older release, sharing the store, does not have).
#[actix_web::test]
async fn a_404_of_routing_under_the_middleware_is_not_recorded() {
    let a = middleware_form();
    assert_eq!(a.send(post("/v1/callz")).await.status, 404);
    let meant = a.send(call("k", "a")).await;
    assert_eq!((meant.status, meant.replayed()), (201, false));
    assert!(a.send(call("k", "a")).await.replayed());
    assert_eq!(a.probe.runs.get(), 1);
}

#[actix_web::post("/calls")]
async fn posted_call(probe: web::Data<Probe>) -> HttpResponse {
    probe.runs.bump();
    HttpResponse::Created().body("called")
}

/// A service declared with `#[post]` guards its method: actix answers another method on its
/// path with its own empty 404 (not a 405), the routing's as for a path no route fits. Nothing
/// ran, so nothing is recorded, where that 404 was recorded and replayed, and the call the
/// client meant under the same key was refused as a mismatch for the key's lifetime.
#[actix_web::test]
async fn a_404_of_routing_for_a_method_no_service_of_the_path_takes_is_not_recorded() {
    let a = app(
        |cfg| {
            cfg.service(
                web::scope("/v1")
                    .wrap(Idempotency::new())
                    .service(posted_call),
            );
        },
        Policy::DEFAULT,
    );
    let wrong = RawRequest::new("DELETE", "/v1/calls")
        .header("Authorization", "Bearer t")
        .header("Idempotency-Key", "k")
        .body("a");
    let first = a.send(wrong.clone()).await;
    assert_eq!((first.status, first.replayed()), (404, false));
    let meant = a.send(call("k", "a")).await;
    assert_eq!((meant.status, meant.replayed()), (201, false));
    assert!(a.send(call("k", "a")).await.replayed());
    assert_eq!(a.probe.runs.get(), 1);
}

/// A resource whose routes all refuse a request (none takes its method, or a guard of the
/// route refuses it) is answered by the resource's own empty 405: the routing's, as its empty
/// 404 is. Nothing ran, so nothing is recorded, where that 405 was recorded: the call the
/// client meant under the same key was refused as a mismatch (another method), or got the
/// 405 replayed (the same method, path and body, a header the guard wants now sent).
#[actix_web::test]
async fn a_405_of_routing_under_the_middleware_is_not_recorded() {
    let a = app(
        |cfg| {
            cfg.service(
                web::scope("/v1")
                    .wrap(Idempotency::new())
                    .service(web::resource("/calls").route(web::post().to(plain)))
                    .service(
                        web::resource("/guarded").route(
                            web::post()
                                .guard(actix_web::guard::Header("x-carrier", "a"))
                                .to(plain),
                        ),
                    ),
            );
        },
        Policy::DEFAULT,
    );
    let wrong = RawRequest::new("DELETE", "/v1/calls")
        .header("Authorization", "Bearer t")
        .header("Idempotency-Key", "k")
        .body("a");
    let first = a.send(wrong).await;
    assert_eq!((first.status, first.replayed()), (405, false));
    let meant = a.send(call("k", "a")).await;
    assert_eq!((meant.status, meant.replayed()), (201, false));

    let guarded = || {
        RawRequest::post("/v1/guarded")
            .header("Authorization", "Bearer t")
            .header("Idempotency-Key", "g")
            .body("a")
    };
    let unguarded = a.send(guarded()).await;
    assert_eq!((unguarded.status, unguarded.replayed()), (405, false));
    let guarded = a.send(guarded().header("X-Carrier", "a")).await;
    assert_eq!((guarded.status, guarded.replayed()), (201, false));
    assert_eq!(a.probe.runs.get(), 2);
}

/// A path that ends where a scope does, with nothing inside it fitting (the scope's own path,
/// or a nested scope's), is routed to its end and still no service took it: actix's empty 404
/// is the routing's there too, unrecorded, where the first check of a path routed to its end
/// took it for a handler's and replayed it.
#[actix_web::test]
async fn a_404_of_routing_for_a_scope_s_own_path_is_not_recorded() {
    let a = middleware_form();
    let first = a.send(post("/v1")).await;
    assert_eq!((first.status, first.replayed()), (404, false));
    let again = a.send(post("/v1")).await;
    assert_eq!((again.status, again.replayed()), (404, false));
    let meant = a.send(call("k", "a")).await;
    assert_eq!((meant.status, meant.replayed()), (201, false));

    let nested = app(
        |cfg| {
            cfg.service(
                web::scope("/v1")
                    .wrap(Idempotency::new())
                    .service(web::scope("/calls").route("/{id}/cancel", web::post().to(plain))),
            );
        },
        Policy::DEFAULT,
    );
    assert_eq!(nested.send(post("/v1/calls")).await.status, 404);
    let again = nested.send(post("/v1/calls")).await;
    assert_eq!((again.status, again.replayed()), (404, false));
    assert_eq!(nested.probe.runs.get(), 0);
}

/// actix routes a path by its spelling with percent-escapes decoded (`/v1/%63alls` is
/// `/v1/calls`): keyed per endpoint under the middleware, the layer tells the endpoint so too,
/// so that one key on one route spelled two ways runs once. The fingerprint keeps the path as
/// sent (actix's decoding is lossy: an escape that is no UTF-8 becomes U+FFFD), so the other
/// spelling is a mismatch, never a second run; and two paths actix decodes alike but were sent
/// apart (`%FF`, `%FE`) never share an answer.
#[actix_web::test]
async fn a_path_spelled_with_percent_escapes_is_the_endpoint_actix_routes() {
    let a = app(
        |cfg| {
            cfg.service(
                web::scope("/v1")
                    .wrap(Idempotency::new().with_overrides(|o| o.per_endpoint(true)))
                    .route("/calls", web::post().to(plain)),
            );
        },
        Policy::DEFAULT,
    );
    let first = a.send(post("/v1/calls")).await;
    assert_eq!((first.status, first.replayed()), (201, false));
    let escaped = a.send(post("/v1/%63alls")).await;
    assert_error(&escaped, 409, "idempotency_conflict");
    assert_eq!(a.probe.runs.get(), 1);
}

#[idempotent]
async fn raw_path(req: HttpRequest) -> HttpResponse {
    HttpResponse::Created().body(req.path().to_owned())
}

/// Two paths that differ only in escapes that are no UTF-8, which actix decodes alike (both to
/// U+FFFD), are two requests to the fingerprint: the second is not the first's replay.
#[actix_web::test]
async fn paths_actix_decodes_alike_but_sent_apart_never_share_an_answer() {
    let a = app(
        |cfg| {
            cfg.route("/bytes/{name}", web::post().to(raw_path));
        },
        Policy::DEFAULT,
    );
    assert_eq!(a.send(post("/bytes/%FF")).await.status, 201);
    let other = a.send(post("/bytes/%FE")).await;
    assert!(!other.replayed(), "{other:?}");
    assert_error(&other, 409, "idempotency_conflict");
}

/// A default service that does real work (a catch-all that forwards) and answers 404 with a
/// page of its own ran: a retry under the same key must not run it again. Only actix's own
/// not-found, which has no body, is taken for the routing's.
async fn catch_all(probe: web::Data<Probe>) -> HttpResponse {
    probe.runs.bump();
    HttpResponse::NotFound().body("forwarded; upstream said 404")
}

#[actix_web::test]
async fn a_404_of_a_default_service_that_answers_its_own_page_is_recorded() {
    let a = app(
        |cfg| {
            cfg.service(
                web::scope("/v1")
                    .wrap(Idempotency::new())
                    .route("/calls", web::post().to(plain))
                    .default_service(web::to(catch_all)),
            );
        },
        Policy::DEFAULT,
    );
    assert_eq!(a.send(post("/v1/forward")).await.status, 404);
    let again = a.send(post("/v1/forward")).await;
    assert_eq!((again.status, again.replayed()), (404, true));
    assert_eq!(
        a.probe.runs.get(),
        1,
        "the default service ran twice under one key"
    );
}
