//! The layer's own answers: in the default envelope, as `problem+json` where the endpoint says
//! so, or through the application's renderer where the endpoint names none; and, when the
//! store cannot be reached, 503 before anything runs, or the handler unprotected where the
//! endpoint fails open.

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::middleware::{from_fn, Next};
use actix_web::{post, web, HttpResponse};
use idem_actix::{
    idempotent, ErrorFormat, Idempotency, IdempotencyConfig, IdempotencyError, MokaStore,
    OnStoreError, Policy, ProblemJson, RequestId,
};
use idem_core::testing::UnavailableStore;
use idem_tests::{
    assert_error, assert_problem, eventually, serve, Counter, RawRequest, TestServer, Warnings,
};
use tokio::sync::Semaphore;

#[post("/problem")]
#[idempotent(errors = "problem")]
async fn problem(runs: web::Data<Counter>) -> HttpResponse {
    HttpResponse::Created().body(format!("run {}", runs.bump()))
}

#[post("/default-format")]
#[idempotent]
async fn default_format(runs: web::Data<Counter>) -> HttpResponse {
    HttpResponse::Created().body(format!("run {}", runs.bump()))
}

#[post("/fail-open")]
#[idempotent(fail_open)]
async fn fail_open(runs: web::Data<Counter>) -> HttpResponse {
    HttpResponse::Created().body(format!("run {}", runs.bump()))
}

#[post("/fail-closed")]
#[idempotent(fail_open = false)]
async fn fail_closed(runs: web::Data<Counter>) -> HttpResponse {
    HttpResponse::Created().body(format!("run {}", runs.bump()))
}

fn keyed(path: &str, key: &str) -> RawRequest {
    RawRequest::post(path)
        .header("Authorization", "Bearer t")
        .header("Idempotency-Key", key)
}

fn down_app(config: IdempotencyConfig) -> (TestServer, Counter) {
    let runs = Counter::default();
    let data = web::Data::new(runs.clone());
    let server = TestServer::start(1, move |cfg| {
        cfg.app_data(config.clone())
            .app_data(data.clone())
            .service(default_format)
            .service(fail_open)
            .service(fail_closed);
    });
    (server, runs)
}

#[actix_web::test]
async fn errors_render_as_problem_json_when_the_endpoint_says_so() {
    let s = serve(|cfg| {
        cfg.service(problem);
    });
    s.send(&keyed("/problem", "k").body("a")).await;
    let res = s.send(&keyed("/problem", "k").body("b")).await;
    assert_problem(&res, 409, "idempotency_conflict");
}

#[actix_web::test]
async fn an_unreachable_store_fails_closed_with_503() {
    let warnings = Warnings::installed();
    let (server, runs) = down_app(IdempotencyConfig::new(UnavailableStore));
    let res = keyed("/default-format", "k").send(server.addr).await;
    assert_error(&res, 503, "idempotency_store_unavailable");
    assert_eq!(res.header("retry-after"), Some("1"));
    assert_eq!(runs.get(), 0, "no handler runs without a claim");
    // An outage that refuses every keyed request is in the log, not in the metrics alone.
    assert!(warnings.containing_from("the idempotency store failed", server.threads()) >= 1);
    // Requests without a key never touch the store.
    let plain = RawRequest::post("/default-format").send(server.addr).await;
    assert_eq!(plain.status, 201);
}

/// An outage refuses every keyed request (or runs each unprotected, failing open): the log
/// warns when it starts, then at most once a minute, with how many it held back, where it
/// warned of every request (a thousand lines a second under load, burying all else).
#[actix_web::test]
async fn a_store_outage_is_warned_of_when_it_starts_not_per_request() {
    let warnings = Warnings::installed();
    let (server, runs) = down_app(IdempotencyConfig::new(UnavailableStore));
    for n in 0..20 {
        let refused = keyed("/default-format", &format!("outage-{n}"));
        assert_eq!(refused.send(server.addr).await.status, 503);
        let unprotected = keyed("/fail-open", &format!("outage-{n}"));
        assert_eq!(unprotected.send(server.addr).await.status, 201);
    }
    assert_eq!(runs.get(), 20);
    let threads = server.threads();
    for warning in [
        "the idempotency store failed; the request is refused",
        "idempotency store failed; running without protection",
    ] {
        assert_eq!(warnings.containing_from(warning, threads), 1, "{warning}");
    }
}

/// A store too small to keep even a record without its response (refused by
/// `with_defaults`, but taken by `IdempotencyConfig::new` alone) could never record a
/// request: the first one ran and then held its client while the completion was tried for a
/// lease, its retries got 409 meanwhile, and after the lease the operation ran again. A keyed
/// request is refused with 500 `idempotency_misconfigured` before anything is claimed or run.
#[actix_web::test]
async fn a_store_too_small_for_any_record_refuses_keyed_requests_and_runs_nothing() {
    let tiny = MokaStore::builder().max_bytes(200).build();
    let (server, runs) = down_app(IdempotencyConfig::new(tiny));
    for _ in 0..2 {
        let res = keyed("/default-format", "k").send(server.addr).await;
        assert_error(&res, 500, "idempotency_misconfigured");
    }
    assert_eq!(runs.get(), 0);
    let plain = RawRequest::post("/default-format").send(server.addr).await;
    assert_eq!(plain.status, 201);
}

#[actix_web::test]
async fn fail_open_runs_the_handler_unprotected() {
    let (server, runs) = down_app(IdempotencyConfig::new(UnavailableStore));
    let res = keyed("/fail-open", "k").send(server.addr).await;
    assert_eq!(res.status, 201);
    assert_eq!(runs.get(), 1);
}

/// The endpoint's own argument comes before the application's defaults, `false` as `true`:
/// an endpoint that must never run unprotected says so, whatever the rest of the app does.
#[actix_web::test]
async fn fail_open_false_fails_closed_where_the_app_fails_open() {
    let fails_open = Policy::DEFAULT.on_store_error(OnStoreError::FailOpen);
    let config = IdempotencyConfig::new(UnavailableStore)
        .with_defaults(fails_open)
        .unwrap();
    let (server, runs) = down_app(config);
    let res = keyed("/fail-closed", "k").send(server.addr).await;
    assert_error(&res, 503, "idempotency_store_unavailable");
    assert_eq!(runs.get(), 0, "no handler runs without a claim");
    let res = keyed("/default-format", "k").send(server.addr).await;
    assert_eq!(res.status, 201, "the app's default applies elsewhere");
}

#[actix_web::test]
async fn the_apps_renderer_applies_where_the_endpoint_names_none() {
    let (server, _) =
        down_app(IdempotencyConfig::new(UnavailableStore).with_error_renderer(ProblemJson));
    let res = keyed("/default-format", "k").send(server.addr).await;
    assert_problem(&res, 503, "idempotency_store_unavailable");

    let custom = IdempotencyConfig::new(UnavailableStore).with_error_renderer(
        |e: &idem_actix::IdempotencyError, id: &str| {
            HttpResponse::Ok().body(format!("{}|{id}", e.code()))
        },
    );
    let (server, _) = down_app(custom);
    let res = keyed("/default-format", "k")
        .header("X-Request-ID", "r1")
        .send(server.addr)
        .await;
    assert_eq!(res.status, 503, "the layer keeps the status");
    assert_eq!(
        String::from_utf8_lossy(&res.body),
        "idempotency_store_unavailable|r1"
    );
}

/// An application whose defaults name an error format renders every endpoint's errors in it
/// (unless the endpoint names its own), so a renderer it also registers renders nothing: that
/// is logged when the application is configured, whichever of the two comes first, rather than
/// found out from the answers.
#[actix_web::test]
async fn a_renderer_the_defaults_error_format_leaves_unused_is_warned_of_in_either_order() {
    let warnings = Warnings::installed();
    let text = "renders no endpoint's errors";
    let custom =
        |e: &IdempotencyError, id: &str| HttpResponse::Ok().body(format!("{}|{id}", e.code()));
    let as_problems = Policy::DEFAULT.error_format(ErrorFormat::Problem);

    let before = warnings.containing(text);
    let _renderer_first = IdempotencyConfig::new(UnavailableStore)
        .with_error_renderer(custom)
        .with_defaults(as_problems)
        .unwrap();
    assert_eq!(
        warnings.containing(text),
        before + 1,
        "renderer, then defaults"
    );
    let config = IdempotencyConfig::new(UnavailableStore)
        .with_defaults(as_problems)
        .unwrap()
        .with_error_renderer(custom);
    assert_eq!(
        warnings.containing(text),
        before + 2,
        "defaults, then renderer"
    );
    let (server, _) = down_app(config);
    let res = keyed("/default-format", "k").send(server.addr).await;
    assert_problem(&res, 503, "idempotency_store_unavailable");

    let _without_format = IdempotencyConfig::new(UnavailableStore)
        .with_defaults(Policy::DEFAULT)
        .unwrap()
        .with_error_renderer(custom);
    assert_eq!(
        warnings.containing(text),
        before + 2,
        "no format named: no warning"
    );
}

/// An application's renderer with a bug: it panics on every error it is given.
fn buggy_renderer(_: &IdempotencyError, _: &str) -> HttpResponse {
    panic!("error renderer bug")
}

async fn wrapped(runs: web::Data<Counter>) -> HttpResponse {
    HttpResponse::Created().body(format!("run {}", runs.bump()))
}

/// A renderer that panics costs the client neither its answer nor its record, under the
/// attribute and the middleware: the layer's error goes out in the default envelope, with its
/// status, request id and `Cache-Control: no-store`, where the connection closed unanswered
/// (or a refused key was answered 500); the record the refusal was about stays, and the same
/// request replays it. The panic is logged.
#[actix_web::test]
async fn a_renderer_that_panics_is_answered_in_the_default_envelope_and_the_record_stays() {
    let warnings = Warnings::installed();
    let runs = Counter::default();
    let data = web::Data::new(runs.clone());
    let config = IdempotencyConfig::new(MokaStore::new()).with_error_renderer(buggy_renderer);
    let server = TestServer::start(1, move |cfg| {
        cfg.app_data(config.clone())
            .app_data(data.clone())
            .service(default_format)
            .service(
                web::scope("/wrapped")
                    .wrap(Idempotency::new())
                    .route("", web::post().to(wrapped)),
            );
    });
    for path in ["/default-format", "/wrapped"] {
        let answered = |req: RawRequest| async move {
            req.try_send(server.addr)
                .await
                .expect("an answer, not a closed connection")
        };
        let invalid = answered(keyed(path, &"x".repeat(256)).header("X-Request-ID", "r-1")).await;
        assert_error(&invalid, 400, "idempotency_key_invalid");
        assert_eq!(invalid.header("x-request-id"), Some("r-1"), "{path}");

        let first = answered(keyed(path, path).body("a")).await;
        assert_eq!(first.status, 201, "{path}");
        let mismatch = answered(keyed(path, path).body("b")).await;
        assert_error(&mismatch, 409, "idempotency_conflict");
        let replay = answered(keyed(path, path).body("a")).await;
        assert!(replay.replayed(), "{path}: {replay:?}");
        assert_eq!(replay.body, first.body, "{path}");
    }
    assert_eq!(runs.get(), 2);
    assert!(warnings.containing_from("error renderer panicked", server.threads()) >= 4);
}

/// The `request_id` of an error is its `X-Request-ID`: the client's own when it is a valid
/// one (up to 128 characters), else a fresh one, never an echo of a value that is too long or
/// holds other characters; in the envelope and in `problem+json`, under the attribute and
/// the middleware.
#[actix_web::test]
async fn an_errors_request_id_is_a_valid_incoming_one_or_a_fresh_one() {
    let s = serve(|cfg| {
        cfg.service(default_format)
            .service(problem)
            .service(
                web::scope("/wrapped")
                    .wrap(Idempotency::new())
                    .route("", web::post().to(wrapped)),
            )
            .service(
                web::scope("/wrapped-problem")
                    .wrap(
                        Idempotency::new().with_overrides(|o| o.error_format(ErrorFormat::Problem)),
                    )
                    .route("", web::post().to(wrapped)),
            );
    });
    let longest = "r".repeat(128);
    let too_long = "r".repeat(129);
    for (path, as_problem) in [
        ("/default-format", false),
        ("/problem", true),
        ("/wrapped", false),
        ("/wrapped-problem", true),
    ] {
        for (incoming, kept) in [
            ("req_1-a.b:c/d+e=", true),
            (longest.as_str(), true),
            (too_long.as_str(), false),
            ("has space", false),
            ("r\u{e9}sum\u{e9}", false),
        ] {
            let res = s
                .send(&keyed(path, &"x".repeat(256)).header("X-Request-ID", incoming))
                .await;
            if as_problem {
                assert_problem(&res, 400, "idempotency_key_invalid");
            } else {
                assert_error(&res, 400, "idempotency_key_invalid");
            }
            let id = res.header("x-request-id").expect("X-Request-ID");
            if kept {
                assert_eq!(id, incoming, "{path}");
            } else {
                assert_eq!(id.len(), 16, "{path}: {incoming:?} gave {id:?}");
                assert!(id.bytes().all(|b| b.is_ascii_hexdigit()), "{path}: {id}");
            }
        }
    }
}

/// A handler that runs until its gate lets it finish.
#[derive(Clone)]
struct Gated {
    started: Counter,
    gate: std::sync::Arc<Semaphore>,
}

async fn gated(probe: web::Data<Gated>) -> HttpResponse {
    let n = probe.started.bump();
    // Each permit lets one run finish.
    probe.gate.acquire().await.expect("gate open").forget();
    HttpResponse::Created().body(format!("run {n}"))
}

#[post("/gated")]
#[idempotent]
async fn attributed_gated(probe: web::Data<Gated>) -> HttpResponse {
    gated(probe).await
}

/// A renderer that panics while a request's key is held by its first run: the duplicate is
/// answered 409 in the default envelope with `Retry-After`, and the claim stays the run's, whose
/// response the retry then replays; under the attribute and the middleware.
#[actix_web::test]
async fn a_renderer_that_panics_on_a_request_in_flight_leaves_the_claim_to_its_run() {
    let probe = Gated {
        started: Counter::default(),
        gate: std::sync::Arc::new(Semaphore::new(0)),
    };
    let data = web::Data::new(probe.clone());
    let config = IdempotencyConfig::new(MokaStore::new()).with_error_renderer(buggy_renderer);
    let server = TestServer::start(1, move |cfg| {
        cfg.app_data(config.clone())
            .app_data(data.clone())
            .service(attributed_gated)
            .service(
                web::scope("/gated-wrapped")
                    .wrap(Idempotency::new())
                    .route("", web::post().to(gated)),
            );
    });
    for (i, path) in ["/gated", "/gated-wrapped"].into_iter().enumerate() {
        let request = keyed(path, path);
        let first = {
            let (request, addr) = (request.clone(), server.addr);
            actix_web::rt::spawn(async move { request.send(addr).await })
        };
        eventually(|| probe.started.get() == i + 1).await;
        let duplicate = request
            .try_send(server.addr)
            .await
            .expect("an answer, not a closed connection");
        assert_error(&duplicate, 409, "idempotency_conflict");
        assert_eq!(duplicate.header("retry-after"), Some("1"), "{path}");
        probe.gate.add_permits(1);
        let first = first.await.unwrap();
        assert_eq!(first.status, 201, "{path}");
        let retry = request.send(server.addr).await;
        assert!(retry.replayed(), "{path}: {retry:?}");
        assert_eq!(retry.body, first.body, "{path}");
    }
    assert_eq!(probe.started.get(), 2);
}

/// Sets `X-Seen-ID` to the request id a middleware outside the layer reads once the layer has
/// answered, as an access log does.
async fn seen_id(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let mut res = next.call(req).await?;
    let id = RequestId::of(res.request());
    let value = HeaderValue::from_str(id.as_str()).unwrap();
    res.headers_mut()
        .insert(HeaderName::from_static("x-seen-id"), value);
    Ok(res)
}

/// A middleware outside the layer that reads the request id after the layer answered reads
/// the id the layer answered with, for a run, a replay and the layer's refusals, in both
/// forms; where a replay's or a refusal's fresh id was not kept, and it read another one.
#[actix_web::test]
async fn a_middleware_outside_reads_the_request_id_the_layer_answered_with() {
    let s = serve(|cfg| {
        cfg.service(
            web::scope("/logged")
                .wrap(from_fn(seen_id))
                .service(default_format),
        )
        .service(
            web::scope("/logged-wrapped")
                .wrap(Idempotency::new())
                .wrap(from_fn(seen_id))
                .route("", web::post().to(wrapped)),
        );
    });
    for path in ["/logged/default-format", "/logged-wrapped"] {
        let run = s.send(&keyed(path, path).body("a")).await;
        let replay = s.send(&keyed(path, path).body("a")).await;
        let mismatch = s.send(&keyed(path, path).body("b")).await;
        let invalid = s.send(&keyed(path, "a b")).await;
        assert!(replay.replayed(), "{path}: {replay:?}");
        assert_eq!((mismatch.status, invalid.status), (409, 400), "{path}");
        for res in [run, replay, mismatch, invalid] {
            let sent = res.header("x-request-id");
            assert!(sent.is_some(), "{path}: {res:?}");
            assert_eq!(res.header("x-seen-id"), sent, "{path}: {res:?}");
        }
    }
}
