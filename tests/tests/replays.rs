//! What a replay returns: the recorded response's headers, less those the endpoint keeps out
//! of replays (an allow or a deny list on top of those never replayed, and `Set-Cookie`
//! unless allowed), and what a replay hook adds; in both forms, and as the application's
//! defaults.

use std::sync::atomic::{AtomicUsize, Ordering};

use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::{web, HttpRequest, HttpResponse};
use idem_actix::{idempotent, Idempotency, IdempotencyConfig, MokaStore, Policy, ReplayHeaders};
use idem_tests::{buggy_mark, serve, Counter, RawRequest, RawResponse, Served, TestServer};

fn call(path: &str, key: &str) -> RawRequest {
    RawRequest::post(path)
        .header("Authorization", "Bearer tenant-1")
        .header("Idempotency-Key", key)
        .body("{}")
}

/// The first response and its replay.
async fn replayed(served: &Served, path: &str, key: &str) -> (RawResponse, RawResponse) {
    let first = served.send(&call(path, key)).await;
    let replay = served.send(&call(path, key)).await;
    assert!(replay.replayed(), "{path}");
    (first, replay)
}

#[idempotent(replay_set_cookie)]
async fn sign_in(runs: web::Data<Counter>) -> HttpResponse {
    runs.bump();
    HttpResponse::Created()
        .insert_header(("Set-Cookie", "session=first-caller; HttpOnly"))
        .body("signed in")
}

#[actix_web::test]
async fn an_attributed_endpoint_that_allows_it_replays_set_cookie() {
    let served = serve(|cfg| {
        cfg.route("/v1/sessions", web::post().to(sign_in));
    });
    let first = served.send(&call("/v1/sessions", "k")).await;
    assert_eq!(
        first.header("set-cookie"),
        Some("session=first-caller; HttpOnly")
    );
    let replay = served.send(&call("/v1/sessions", "k")).await;
    assert!(replay.replayed());
    assert_eq!(
        replay.header("set-cookie"),
        Some("session=first-caller; HttpOnly")
    );
    assert_eq!(served.runs.get(), 1);
}

async fn created(runs: web::Data<Counter>) -> HttpResponse {
    runs.bump();
    HttpResponse::Created()
        .insert_header(("Location", "/v1/calls/1"))
        .insert_header(("X-Trace-Id", "trace-of-the-first"))
        .insert_header(("Set-Cookie", "session=first-caller"))
        .content_type("application/json")
        .body("{}")
}

#[idempotent(replay_headers = ["Location", "content-type"])]
async fn only(runs: web::Data<Counter>) -> HttpResponse {
    created(runs).await
}

#[idempotent(replay_drop_headers = ["x-trace-id"])]
async fn except(runs: web::Data<Counter>) -> HttpResponse {
    created(runs).await
}

#[idempotent(replay_headers = ["Location"], replay_set_cookie)]
async fn only_with_cookie(runs: web::Data<Counter>) -> HttpResponse {
    created(runs).await
}

/// Marks a replay, and counts replays.
fn mark(req: &HttpRequest, res: &mut HttpResponse) {
    MARKED.fetch_add(1, Ordering::SeqCst);
    let path = HeaderValue::from_str(req.path()).unwrap();
    res.headers_mut()
        .insert(HeaderName::from_static("x-replay-of"), path);
}

static MARKED: AtomicUsize = AtomicUsize::new(0);

#[idempotent(on_replay = mark)]
async fn hooked(runs: web::Data<Counter>) -> HttpResponse {
    created(runs).await
}

fn attributed() -> Served {
    serve(|cfg| {
        cfg.route("/only", web::post().to(only))
            .route("/except", web::post().to(except))
            .route("/cookie", web::post().to(only_with_cookie))
            .route("/hooked", web::post().to(hooked));
    })
}

fn middleware() -> Served {
    let wrapped = |path: &'static str, layer: Idempotency| {
        web::scope(path)
            .wrap(layer)
            .route("", web::post().to(created))
    };
    serve(move |cfg| {
        cfg.service(wrapped(
            "/only",
            Idempotency::new().with_overrides(|p| {
                p.replay_headers(ReplayHeaders::Only(&["Location", "content-type"]))
            }),
        ))
        .service(wrapped(
            "/except",
            Idempotency::new()
                .with_overrides(|p| p.replay_headers(ReplayHeaders::Except(&["x-trace-id"]))),
        ))
        .service(wrapped(
            "/cookie",
            Idempotency::new().with_overrides(|p| {
                p.replay_headers(ReplayHeaders::Only(&["Location"]))
                    .replay_set_cookie(true)
            }),
        ))
        .service(wrapped("/hooked", Idempotency::new().on_replay(mark)));
    })
}

async fn header_lists_choose_what_a_replay_repeats(served: Served) {
    let (first, replay) = replayed(&served, "/only", "o").await;
    assert_eq!(first.header("x-trace-id"), Some("trace-of-the-first"));
    assert_eq!(replay.header("location"), Some("/v1/calls/1"));
    assert_eq!(replay.header("content-type"), Some("application/json"));
    assert_eq!(replay.header("x-trace-id"), None, "not on the list");
    assert_eq!(replay.header("set-cookie"), None);
    assert!(
        replay.header("x-request-id").is_some(),
        "the layer's own headers stay"
    );

    let (_, replay) = replayed(&served, "/except", "e").await;
    assert_eq!(replay.header("x-trace-id"), None, "dropped");
    assert_eq!(replay.header("location"), Some("/v1/calls/1"));
    assert_eq!(replay.header("content-type"), Some("application/json"));

    let (_, replay) = replayed(&served, "/cookie", "c").await;
    assert_eq!(replay.header("set-cookie"), Some("session=first-caller"));
    assert_eq!(replay.header("content-type"), None);
    assert_eq!(served.runs.get(), 3);
}

#[actix_web::test]
async fn header_lists_choose_what_a_replay_repeats_with_the_attribute() {
    header_lists_choose_what_a_replay_repeats(attributed()).await;
}

#[actix_web::test]
async fn header_lists_choose_what_a_replay_repeats_with_the_middleware() {
    header_lists_choose_what_a_replay_repeats(middleware()).await;
}

async fn a_replay_hook_sees_every_replay_and_only_replays(served: Served, key: &str) {
    let before = MARKED.load(Ordering::SeqCst);
    let first = served.send(&call("/hooked", key)).await;
    assert_eq!(
        first.header("x-replay-of"),
        None,
        "the first response is no replay"
    );
    for _ in 0..2 {
        let replay = served.send(&call("/hooked", key)).await;
        assert!(replay.replayed());
        assert_eq!(replay.header("x-replay-of"), Some("/hooked"));
    }
    // Counted by whoever else ran at the same time too: at least these two.
    assert!(MARKED.load(Ordering::SeqCst) >= before + 2);
}

#[actix_web::test]
async fn a_replay_hook_sees_every_replay_with_the_attribute() {
    a_replay_hook_sees_every_replay_and_only_replays(attributed(), "hook-a").await;
}

#[actix_web::test]
async fn a_replay_hook_sees_every_replay_with_the_middleware() {
    a_replay_hook_sees_every_replay_and_only_replays(middleware(), "hook-m").await;
}

fn app_mark(_: &HttpRequest, res: &mut HttpResponse) {
    res.headers_mut().insert(
        HeaderName::from_static("x-app-hook"),
        HeaderValue::from_static("1"),
    );
}

#[idempotent]
async fn plain(runs: web::Data<Counter>) -> HttpResponse {
    created(runs).await
}

#[actix_web::test]
async fn the_application_sets_the_replays_of_every_endpoint_that_says_nothing() {
    let runs = Counter::default();
    let data = web::Data::new(runs.clone());
    let idem = IdempotencyConfig::new(MokaStore::new())
        .on_replay(app_mark)
        .with_defaults(Policy::DEFAULT.replay_headers(ReplayHeaders::Except(&["X-Trace-Id"])))
        .unwrap();
    let server = TestServer::start(1, move |cfg| {
        cfg.app_data(idem.clone())
            .app_data(data.clone())
            .route("/plain", web::post().to(plain))
            .route("/hooked", web::post().to(hooked))
            .route("/only", web::post().to(only));
    });
    let addr = server.addr;
    // A key per path: keys are per tenant, not per endpoint.
    let send = |path: &'static str| async move { call(path, path).send(addr).await };
    send("/plain").await;
    let replay = send("/plain").await;
    assert_eq!(replay.header("x-app-hook"), Some("1"));
    assert_eq!(
        replay.header("x-trace-id"),
        None,
        "the application drops it"
    );
    assert_eq!(replay.header("location"), Some("/v1/calls/1"));

    // An endpoint's own hook and list replace the application's.
    send("/hooked").await;
    let replay = send("/hooked").await;
    assert_eq!(replay.header("x-replay-of"), Some("/hooked"));
    assert_eq!(replay.header("x-app-hook"), None);
    send("/only").await;
    let replay = send("/only").await;
    assert_eq!(replay.header("location"), Some("/v1/calls/1"));
    assert_eq!(replay.header("x-app-hook"), Some("1"));
}

async fn with_headers(runs: web::Data<Counter>) -> HttpResponse {
    HttpResponse::Created()
        .insert_header(("X-Custom", "kept"))
        .append_header(("Link", "</a>; rel=a"))
        .append_header(("Link", "</b>; rel=b"))
        .insert_header(("X-Request-ID", "from-the-handler"))
        .body(format!("run {}", runs.bump()))
}

#[idempotent]
async fn attributed_with_headers(runs: web::Data<Counter>) -> HttpResponse {
    with_headers(runs).await
}

#[actix_web::test]
async fn replays_carry_the_stored_headers_and_this_requests_id() {
    let s = serve(|cfg| {
        cfg.route("/headers", web::post().to(attributed_with_headers));
    });
    let request = call("/headers", "h");
    let first = s.send(&request).await;
    assert_eq!(first.header("x-request-id"), Some("from-the-handler"));
    let retry = s
        .send(&request.clone().header("X-Request-ID", "retry-7"))
        .await;
    assert!(retry.replayed());
    assert_eq!(retry.header("x-custom"), Some("kept"));
    assert_eq!(retry.headers["link"], vec!["</a>; rel=a", "</b>; rel=b"]);
    assert_eq!(retry.header("x-request-id"), Some("retry-7"));
    assert!(first.header("idempotent-replayed").is_none());
}

/// A handler that sets `Idempotent-Replayed` itself (one that forwards an upstream API's
/// headers, say).
async fn says_replayed(runs: web::Data<Counter>) -> HttpResponse {
    HttpResponse::Created()
        .insert_header(("Idempotent-Replayed", "true"))
        .body(format!("run {}", runs.bump()))
}

#[idempotent]
async fn attributed_says_replayed(runs: web::Data<Counter>) -> HttpResponse {
    says_replayed(runs).await
}

#[actix_web::test]
async fn a_first_response_never_says_it_was_replayed() {
    let s = serve(|cfg| {
        cfg.route("/says", web::post().to(attributed_says_replayed))
            .service(
                web::scope("/says-wrapped")
                    .wrap(Idempotency::new())
                    .route("", web::post().to(says_replayed)),
            );
    });
    for path in ["/says", "/says-wrapped"] {
        let (first, replay) = replayed(&s, path, path).await;
        assert_eq!(first.status, 201);
        assert!(first.header("idempotent-replayed").is_none(), "{path}");
        assert_eq!(replay.header("idempotent-replayed"), Some("true"), "{path}");
        assert_eq!(replay.body, first.body, "{path}");
    }
}

#[idempotent(on_replay = buggy_mark)]
async fn buggy_hooked(runs: web::Data<Counter>) -> HttpResponse {
    created(runs).await
}

/// A replay hook that panics is answered as a handler that panics is: 500, never kept by a
/// cache, where the connection closed unanswered; the record stays, and the next retry
/// replays it.
#[actix_web::test]
async fn a_replay_hook_that_panics_is_answered_500_and_the_record_stays() {
    let s = serve(|cfg| {
        cfg.route("/buggy", web::post().to(buggy_hooked)).service(
            web::scope("/buggy-wrapped")
                .wrap(Idempotency::new().on_replay(buggy_mark))
                .route("", web::post().to(created)),
        );
    });
    for path in ["/buggy", "/buggy-wrapped"] {
        let first = s.send(&call(path, path)).await;
        assert_eq!(first.status, 201, "{path}");
        let res = call(path, path)
            .header("X-Boom", "1")
            .try_send(s.server.addr)
            .await
            .expect("an answer, not a closed connection");
        assert_eq!(res.status, 500, "{path}: {res:?}");
        let replay = s.send(&call(path, path)).await;
        assert!(replay.replayed(), "{path}");
        assert_eq!(replay.body, first.body, "{path}");
    }
}

#[actix_web::post("/v1/made")]
#[idempotent]
async fn made() -> HttpResponse {
    HttpResponse::Created()
        .insert_header(("X-Kept", "first"))
        .body("made")
}

/// A record written elsewhere (another process on a shared store, another version) may hold
/// headers this one never stores, which describe one transfer: a replay drops them as the
/// recording does, where it sent them on (a stale `Date`, a `Keep-Alive` of another
/// connection).
#[actix_web::test]
async fn a_replay_drops_per_transfer_headers_that_a_record_from_elsewhere_holds() {
    use idem_core::store::Store;
    use idem_core::{InFlight, Record, Response, Token};

    let first_store = MokaStore::new();
    let idem = IdempotencyConfig::new(first_store.clone());
    let first = TestServer::start(1, move |cfg| {
        cfg.app_data(idem.clone()).service(made);
    });
    assert_eq!(call("/v1/made", "k").send(first.addr).await.status, 201);
    let Some((key, Record::Completed(mut record))) =
        idem_core::testing::records(&first_store).pop()
    else {
        panic!("the first request was recorded")
    };
    let stale: [(&str, &[u8]); 2] = [
        ("date", b"Sat, 01 Jan 2000 00:00:00 GMT"),
        ("keep-alive", b"timeout=5"),
    ];
    let headers = record.response.headers().chain(stale);
    record.response = Response::new(201, headers, &record.response.body());

    // The same record in another process's store.
    let elsewhere = MokaStore::new();
    let token = Token::random();
    let now = record.completed_at;
    let claim = InFlight {
        fingerprint: record.fingerprint,
        lease_until: record.expires_at,
        token,
    };
    elsewhere.claim(&key, claim, now).await.unwrap();
    assert!(elsewhere.complete(&key, token, record, now).await.unwrap());
    let idem = IdempotencyConfig::new(elsewhere);
    let second = TestServer::start(1, move |cfg| {
        cfg.app_data(idem.clone()).service(made);
    });
    let replay = call("/v1/made", "k").send(second.addr).await;
    assert!(replay.replayed());
    assert_eq!(replay.header("x-kept"), Some("first"));
    assert_ne!(replay.header("date"), Some("Sat, 01 Jan 2000 00:00:00 GMT"));
    assert_eq!(replay.header("keep-alive"), None);
}
