//! The layer beside others: an `Idempotency` middleware around an `#[idempotent]` handler, and
//! around or inside actix's `Compress` and a rate limiter.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::middleware::{from_fn, Compress, Next};
use actix_web::{web, HttpResponse};
use idem_actix::{
    idempotent, Idempotency, IdempotencyConfig, IdempotencyKey, MokaStore, Policy, ReplayHeaders,
};
use idem_tests::{
    assert_error, serve, unchunked, Counter, RawRequest, Served, TestServer, Warnings,
};

fn call(path: &str, key: &str) -> RawRequest {
    RawRequest::post(path)
        .header("Authorization", "Bearer tenant-1")
        .header("Idempotency-Key", key)
}

#[idempotent(ttl = "1h", mismatch = "unprocessable")]
async fn declared(runs: web::Data<Counter>) -> HttpResponse {
    runs.bump();
    HttpResponse::Created().body("declared")
}

/// Two keys on `path`, then the first again: each key runs once, and `text` is warned of once,
/// not per request.
async fn claims_once_and_warns_once(served: Served, path: &str, text: &str) {
    let warnings = Warnings::installed();
    served.send(&call(path, "one")).await;
    served.send(&call(path, "two")).await;
    assert!(served.send(&call(path, "one")).await.replayed());
    assert_eq!(served.runs.get(), 2, "each key ran once");
    assert_eq!(warnings.containing(text), 1, "warned once, not per request");
}

#[actix_web::test]
async fn a_middleware_around_an_attributed_handler_is_warned_about_once_and_claims_once() {
    let served = serve(|cfg| {
        cfg.service(
            web::scope("/wrapped")
                .wrap(Idempotency::new())
                .route("", web::post().to(declared)),
        );
    });
    let text = "the attribute's arguments are ignored";
    claims_once_and_warns_once(served, "/wrapped", text).await;
}

async fn plain(runs: web::Data<Counter>) -> HttpResponse {
    runs.bump();
    HttpResponse::Created().body("plain")
}

/// An `Idempotency` inside another claims nothing: the outer one has the key in charge, with
/// its own settings. The inner one's settings are ignored, and a warning says so once, as for
/// an attribute inside a middleware, where nothing said so.
#[actix_web::test]
async fn a_middleware_inside_another_is_warned_about_once_and_claims_once() {
    let served = serve(|cfg| {
        cfg.service(
            web::scope("/nested")
                .wrap(Idempotency::new().with_overrides(|p| p.max_body(16 << 20)))
                .wrap(Idempotency::new())
                .route("", web::post().to(plain)),
        );
    });
    let text = "the outer one's settings apply and the inner one's are ignored";
    claims_once_and_warns_once(served, "/nested", text).await;
}

/// An `IdempotencyConfig` registered on a scope or resource an `Idempotency` middleware
/// wraps is not the one it reads, which is registered at its own level or above: its requests
/// ran on other settings unsaid (here the default key header, so that keys in the app's own
/// header were never read, and each retry ran again). An error says so, once; the config
/// registered where the middleware is wrapped is read.
#[actix_web::test]
async fn a_config_registered_inside_the_middleware_is_reported_once() {
    let warnings = Warnings::installed();
    let own_header = || {
        IdempotencyConfig::new(MokaStore::new())
            .with_defaults(Policy::DEFAULT.header("X-Idempotency-Key"))
            .unwrap()
    };
    let (inside, beside) = (own_header(), own_header());
    let served = serve(move |cfg| {
        cfg.service(
            web::scope("/inside").wrap(Idempotency::new()).service(
                web::scope("/v1")
                    .app_data(inside.clone())
                    .route("/calls", web::post().to(plain)),
            ),
        )
        .service(
            web::scope("/beside")
                .app_data(beside.clone())
                .wrap(Idempotency::new())
                .route("/calls", web::post().to(plain)),
        );
    });
    let own = |path: &str| {
        RawRequest::post(path)
            .header("Authorization", "Bearer tenant-1")
            .header("X-Idempotency-Key", "k1")
    };
    let text = "registered inside an Idempotency middleware";
    for _ in 0..2 {
        served.send(&own("/beside/calls")).await;
    }
    assert_eq!(
        served.runs.get(),
        1,
        "beside the middleware, its config is read"
    );
    assert_eq!(warnings.containing(text), 0);
    for _ in 0..3 {
        served.send(&own("/inside/v1/calls")).await;
    }
    assert_eq!(warnings.containing(text), 1, "reported, once");
}

async fn text(runs: web::Data<Counter>) -> HttpResponse {
    runs.bump();
    HttpResponse::Created()
        .content_type("text/plain")
        .body("a body long enough to be worth compressing ".repeat(20))
}

fn compress_server(idempotency_outside: bool) -> (TestServer, Counter) {
    let runs = Counter::default();
    let data = web::Data::new(runs.clone());
    let idem = IdempotencyConfig::new(MokaStore::new());
    let server = TestServer::start(1, move |cfg| {
        cfg.app_data(data.clone()).app_data(idem.clone());
        // The last `wrap` is the outermost.
        if idempotency_outside {
            cfg.service(
                web::scope("/texts")
                    .wrap(Compress::default())
                    .wrap(Idempotency::new())
                    .route("", web::post().to(text)),
            );
        } else {
            cfg.service(
                web::scope("/texts")
                    .wrap(Idempotency::new())
                    .wrap(Compress::default())
                    .route("", web::post().to(text)),
            );
        }
    });
    (server, runs)
}

#[actix_web::test]
async fn inside_compress_the_middleware_records_plain_bodies_and_every_client_gets_its_coding() {
    let (server, runs) = compress_server(false);
    let first = call("/texts", "plain")
        .header("Accept-Encoding", "gzip")
        .send(server.addr)
        .await;
    assert_eq!(first.header("content-encoding"), Some("gzip"));
    let retry = call("/texts", "plain").send(server.addr).await;
    assert!(retry.replayed());
    assert_eq!(retry.header("content-encoding"), None);
    assert!(retry.body.starts_with(b"a body long enough"));
    let zipped = call("/texts", "plain")
        .header("Accept-Encoding", "gzip")
        .send(server.addr)
        .await;
    assert!(zipped.replayed());
    assert_eq!(zipped.header("content-encoding"), Some("gzip"));
    assert_eq!(runs.get(), 1);
}

#[actix_web::test]
async fn outside_compress_a_replay_never_sends_a_coding_the_client_did_not_accept() {
    let warnings = Warnings::installed();
    let (server, runs) = compress_server(true);
    let first = call("/texts", "zipped")
        .header("Accept-Encoding", "gzip")
        .send(server.addr)
        .await;
    assert_eq!(first.status, 201);
    assert_eq!(first.header("content-encoding"), Some("gzip"));
    assert_eq!(
        warnings.containing("register Compress after Idempotency"),
        1
    );
    // A client that accepts no coding cannot decode the recorded gzip: 409, not gzip bytes.
    let plain = call("/texts", "zipped").send(server.addr).await;
    let message = assert_error(&plain, 409, "idempotency_conflict");
    assert!(message.contains("Content-Encoding gzip"), "{message}");
    // The same client as the first gets its replay.
    let retry = call("/texts", "zipped")
        .header("Accept-Encoding", "gzip, br")
        .send(server.addr)
        .await;
    assert!(retry.replayed());
    // Compress's body is a stream: it went out chunked as it came, and replays whole.
    assert_eq!(retry.body, unchunked(&first.body));
    assert_eq!(runs.get(), 1, "the operation ran once");
}

/// The handler's own gzip, chosen whatever the request accepts (no `Vary: Accept-Encoding`).
#[idempotent]
async fn own_gzip(runs: web::Data<Counter>) -> HttpResponse {
    runs.bump();
    HttpResponse::Created()
        .insert_header(("Content-Encoding", "gzip"))
        .body(&b"\x1f\x8b relayed as the upstream sent it"[..])
}

/// A coding the handler chose itself went to the first request whatever it accepted, and goes
/// to its retries alike: the first answer. Only a coding negotiated for the first request
/// (`Vary: Accept-Encoding`, as `Compress` marks it) is refused to a retry that does not
/// accept it; the retry of a client that sent no `Accept-Encoding` got 409, which a client
/// reads as a key used for another request, and a new key runs the operation again.
#[actix_web::test]
async fn a_coding_the_handler_chose_itself_is_replayed_as_it_went_to_the_first_request() {
    let runs = Counter::default();
    let data = web::Data::new(runs.clone());
    let idem = IdempotencyConfig::new(MokaStore::new());
    let server = TestServer::start(1, move |cfg| {
        (cfg.app_data(data.clone()).app_data(idem.clone()))
            .route("/relayed", web::post().to(own_gzip));
    });
    let first = call("/relayed", "k").send(server.addr).await;
    assert_eq!(first.status, 201);
    assert_eq!(first.header("content-encoding"), Some("gzip"));
    let retry = call("/relayed", "k").send(server.addr).await;
    assert!(retry.replayed(), "{}", retry.status);
    assert_eq!(retry.header("content-encoding"), Some("gzip"));
    assert_eq!(retry.body, first.body);
    assert_eq!(runs.get(), 1);
}

/// A list of the headers replays repeat that leaves `Content-Encoding` out still gets it on
/// a replay of a compressed body: without it the bytes could not be decoded.
#[actix_web::test]
async fn a_replay_header_list_never_strips_the_coding_of_a_recorded_body() {
    let runs = Counter::default();
    let data = web::Data::new(runs.clone());
    let idem = IdempotencyConfig::new(MokaStore::new());
    let server = TestServer::start(1, move |cfg| {
        let only_type = ReplayHeaders::Only(&["Content-Type"]);
        cfg.app_data(data.clone()).app_data(idem.clone()).service(
            web::scope("/texts")
                .wrap(Compress::default())
                .wrap(Idempotency::new().with_overrides(move |p| p.replay_headers(only_type)))
                .route("", web::post().to(text)),
        );
    });
    let zipped = || call("/texts", "zipped").header("Accept-Encoding", "gzip");
    let first = zipped().send(server.addr).await;
    assert_eq!(first.header("content-encoding"), Some("gzip"));
    let retry = zipped().send(server.addr).await;
    assert!(retry.replayed());
    // Compress's body is a stream: it went out chunked as it came, and replays whole.
    assert_eq!(retry.body, unchunked(&first.body));
    assert_eq!(retry.header("content-encoding"), Some("gzip"));
    assert_eq!(retry.header("content-type"), Some("text/plain"));
    assert_eq!(runs.get(), 1);
}

// --- the key's extractor without a layer --------------------------------------------------

async fn unserved(runs: web::Data<Counter>, key: IdempotencyKey) -> HttpResponse {
    runs.bump();
    HttpResponse::Created().body(key.as_str().to_owned())
}

async fn unserved_optional(runs: web::Data<Counter>, key: Option<IdempotencyKey>) -> HttpResponse {
    runs.bump();
    HttpResponse::Created().body(format!("{:?}", key.map(|k| k.as_str().to_owned())))
}

#[idempotent(header = "X-Own-Key")]
async fn own_key(runs: web::Data<Counter>, key: IdempotencyKey) -> HttpResponse {
    unserved(runs, key).await
}

#[idempotent(key = "json:/key")]
async fn body_key(runs: web::Data<Counter>, key: Option<IdempotencyKey>) -> HttpResponse {
    unserved_optional(runs, key).await
}

/// A handler that takes the key, under no idempotency layer, is a fault of the server's: a
/// client that sent a key is not told to send one, and the log names the request and the fix.
#[actix_web::test]
async fn a_key_sent_to_a_handler_that_no_layer_serves_is_a_server_fault_named_in_the_log() {
    let warnings = Warnings::installed();
    let runs = Counter::default();
    let data = web::Data::new(runs.clone());
    let server = TestServer::start(1, move |cfg| {
        cfg.app_data(data.clone())
            .route("/unserved", web::post().to(unserved))
            .route("/unserved-optional", web::post().to(unserved_optional));
    });
    let res = call("/unserved", "k1").send(server.addr).await;
    let message = assert_error(&res, 500, idem_actix::codes::LAYER_MISSING);
    assert!(
        !message.contains("send"),
        "the client has nothing to change: {message}"
    );
    assert_eq!(warnings.containing("POST /unserved carries"), 1);
    assert!(warnings.containing("#[idempotent]") >= 1);
    assert_eq!(runs.get(), 0, "the handler did not run");

    // Without a key the handler's own refusal stands: it needs one.
    let res = RawRequest::post("/unserved")
        .header("Authorization", "Bearer tenant-1")
        .send(server.addr)
        .await;
    assert_error(&res, 400, "idempotency_key_missing");

    // An optional key is left out, as actix leaves out any optional argument that fails, and
    // the log says why.
    let res = call("/unserved-optional", "k2").send(server.addr).await;
    assert_eq!(res.status, 201);
    assert_eq!(warnings.containing("POST /unserved-optional carries"), 1);
    assert_eq!(runs.get(), 1);
}

/// The log names each route no layer serves once (then at `debug`), not once per request: a
/// handler that takes `Option<IdempotencyKey>` still answers, so that any client sending a key
/// could add an error line to the log with each request.
#[actix_web::test]
async fn a_route_that_no_layer_serves_is_named_in_the_log_once_not_per_request() {
    let warnings = Warnings::installed();
    let runs = Counter::default();
    let data = web::Data::new(runs.clone());
    let server = TestServer::start(1, move |cfg| {
        cfg.app_data(data.clone())
            .route("/unserved-once", web::post().to(unserved))
            .route("/unserved-optional-once", web::post().to(unserved_optional))
            .service(
                web::scope("/wrapped-get-once")
                    .wrap(Idempotency::new())
                    .route("", web::get().to(unserved)),
            );
    });
    for n in 0..5 {
        let res = call("/unserved-once", &format!("k{n}"))
            .send(server.addr)
            .await;
        assert_error(&res, 500, idem_actix::codes::LAYER_MISSING);
        let res = call("/unserved-optional-once", &format!("k{n}"))
            .send(server.addr)
            .await;
        assert_eq!(res.status, 201);
        let res = RawRequest::get("/wrapped-get-once")
            .header("Authorization", "Bearer tenant-1")
            .header("Idempotency-Key", "k1")
            .send(server.addr)
            .await;
        assert_error(&res, 500, idem_actix::codes::LAYER_MISSING);
    }
    for logged in [
        "POST /unserved-once carries",
        "POST /unserved-optional-once carries",
        "GET /wrapped-get-once carries",
    ] {
        assert_eq!(warnings.containing(logged), 1, "{logged}");
    }
}

/// A method a client makes up names such a route once in all, not once for each: a route that
/// answers any method was named once per new method, each kept in the set of routes named.
#[actix_web::test]
async fn a_route_no_layer_serves_is_named_once_whatever_method_a_client_makes_up() {
    let warnings = Warnings::installed();
    let runs = Counter::default();
    let data = web::Data::new(runs.clone());
    let server = TestServer::start(1, move |cfg| {
        cfg.app_data(data.clone())
            .service(web::resource("/unserved-any-method").to(unserved_optional));
    });
    for n in 0..20 {
        let res = RawRequest::new(&format!("X{n:04}"), "/unserved-any-method")
            .header("Authorization", "Bearer tenant-1")
            .header("Idempotency-Key", "k1")
            .send(server.addr)
            .await;
        assert_eq!(res.status, 201);
    }
    assert_eq!(runs.get(), 20);
    assert_eq!(warnings.containing("/unserved-any-method carries"), 1);
}

/// A handler inside an `Idempotency` middleware that takes the key, on a method the middleware
/// leaves alone, can never get one: a client that sent a key is not told to send one (it did),
/// and the log names the request, the method and the fix.
#[actix_web::test]
async fn an_ignored_key_on_a_method_the_middleware_leaves_alone_is_a_server_fault() {
    let warnings = Warnings::installed();
    let runs = Counter::default();
    let data = web::Data::new(runs.clone());
    let server = TestServer::start(1, move |cfg| {
        cfg.app_data(data.clone())
            .service(
                web::scope("/wrapped-get-key")
                    .wrap(Idempotency::new())
                    .route("", web::get().to(unserved)),
            )
            .service(
                web::scope("/wrapped-get-own-key")
                    .wrap(Idempotency::new().with_overrides(|o| o.header("X-Own-Key")))
                    .route("", web::get().to(unserved)),
            );
    });
    // The application's key header, and a middleware's own.
    for (path, header) in [
        ("/wrapped-get-key", "Idempotency-Key"),
        ("/wrapped-get-own-key", "X-Own-Key"),
    ] {
        let res = RawRequest::get(path)
            .header("Authorization", "Bearer tenant-1")
            .header(header, "k1")
            .send(server.addr)
            .await;
        let message = assert_error(&res, 500, idem_actix::codes::LAYER_MISSING);
        assert!(
            !message.contains("send"),
            "the client sent its key and has nothing to change: {message}"
        );
        let logged = format!("GET {path} carries an {header} header");
        assert_eq!(warnings.containing(&logged), 1, "{logged}");
    }
    assert!(warnings.containing("with_methods") >= 1);
    assert_eq!(runs.get(), 0, "the handler did not run");
}

/// A layer that passed a request on for want of its endpoint's key (read from another header,
/// or from the body), or for its method, serves it all the same: the application's header on
/// it is not taken for a handler no layer serves.
#[actix_web::test]
async fn a_request_a_layer_passed_on_without_a_key_is_not_taken_for_an_unserved_one() {
    let warnings = Warnings::installed();
    let runs = Counter::default();
    let data = web::Data::new(runs.clone());
    let server = TestServer::start(1, move |cfg| {
        cfg.app_data(data.clone())
            .route("/own-key", web::post().to(own_key))
            .route("/body-key", web::post().to(body_key))
            .service(
                web::scope("/wrapped-own-key")
                    .wrap(Idempotency::new().with_overrides(|o| o.header("X-Own-Key")))
                    .route("", web::post().to(unserved)),
            )
            .service(
                web::scope("/wrapped-get")
                    .wrap(Idempotency::new())
                    .route("", web::get().to(unserved_optional)),
            );
    });
    for path in ["/own-key", "/wrapped-own-key"] {
        let res = call(path, "k1").send(server.addr).await;
        let message = assert_error(&res, 400, "idempotency_key_missing");
        assert!(message.contains("X-Own-Key"), "{message}");
    }
    let res = call("/body-key", "k1")
        .header("Content-Type", "application/json")
        .body("{}")
        .send(server.addr)
        .await;
    assert_eq!((res.status, &res.body[..]), (201, &b"None"[..]));
    // A key on a method the middleware leaves alone is ignored, as SPEC.md says.
    let res = RawRequest::get("/wrapped-get")
        .header("Idempotency-Key", "k1")
        .send(server.addr)
        .await;
    assert_eq!((res.status, &res.body[..]), (201, &b"None"[..]));
    assert_eq!(warnings.containing("GET /wrapped-get carries"), 0);
    for path in ["/own-key", "/wrapped-own-key", "/body-key"] {
        let logged = format!("POST {path} carries");
        assert_eq!(
            warnings.containing(&logged),
            0,
            "{path} is served by a layer"
        );
    }
}

// --- a rate limiter ------------------------------------------------------------------------

/// A rate limiter's budget of requests, refilled by the test where a real one's window would
/// pass.
#[derive(Clone, Default)]
struct Budget(Arc<AtomicUsize>);

impl Budget {
    fn refill(&self, requests: usize) {
        self.0.store(requests, Ordering::SeqCst);
    }

    fn take(&self) -> bool {
        let take = |left: usize| left.checked_sub(1);
        self.0
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, take)
            .is_ok()
    }
}

/// A rate limiter as `actix-governor` is one: past its budget, 429 with `Retry-After`, and the
/// request goes no further.
async fn limit(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let budget = req.app_data::<web::Data<Budget>>().expect("a budget");
    if !budget.take() {
        let res = HttpResponse::TooManyRequests()
            .insert_header(("Retry-After", "1"))
            .finish();
        return Ok(req.into_response(res).map_into_right_body());
    }
    next.call(req)
        .await
        .map(ServiceResponse::map_into_left_body)
}

fn limited_server(limiter_outside: bool) -> (TestServer, Counter, Budget) {
    let (runs, budget) = (Counter::default(), Budget::default());
    let data = web::Data::new(runs.clone());
    let limits = web::Data::new(budget.clone());
    let idem = IdempotencyConfig::new(MokaStore::new());
    let server = TestServer::start(1, move |cfg| {
        cfg.app_data(data.clone())
            .app_data(limits.clone())
            .app_data(idem.clone());
        // The last `wrap` is the outermost.
        if limiter_outside {
            cfg.service(
                web::scope("/limited")
                    .wrap(Idempotency::new())
                    .wrap(from_fn(limit))
                    .route("", web::post().to(text)),
            );
        } else {
            cfg.service(
                web::scope("/limited")
                    .wrap(from_fn(limit))
                    .wrap(Idempotency::new())
                    .route("", web::post().to(text)),
            );
        }
    });
    (server, runs, budget)
}

/// Outside the layer, a rate limiter's 429 is never the key's answer: the retry after its
/// window runs the operation. Every request counts against the limit, replays and conflicts
/// included: the limiter answers before the layer knows what a request is.
#[actix_web::test]
async fn outside_the_layer_a_rate_limiters_429_is_not_recorded_and_replays_count() {
    let (server, runs, budget) = limited_server(true);
    budget.refill(1);
    assert_eq!(call("/limited", "k1").send(server.addr).await.status, 201);
    let limited = call("/limited", "k1").send(server.addr).await;
    assert_eq!((limited.status, limited.replayed()), (429, false));
    assert_eq!(limited.header("retry-after"), Some("1"));
    budget.refill(1);
    assert!(call("/limited", "k1").send(server.addr).await.replayed());
    assert_eq!(budget.0.load(Ordering::SeqCst), 0, "the replay counted");

    assert_eq!(call("/limited", "k2").send(server.addr).await.status, 429);
    budget.refill(1);
    let retry = call("/limited", "k2").send(server.addr).await;
    assert_eq!((retry.status, retry.replayed()), (201, false));
    assert_eq!(runs.get(), 2, "each key ran once, after its 429 too");
}

/// Inside the layer, a rate limiter's 429 is an answer under the key like any 4xx (SPEC.md:
/// every status but 5xx is recorded): it is replayed for the TTL, after the limit has passed.
/// Hence the README's advice to register a rate limiter outside the layer.
#[actix_web::test]
async fn inside_the_layer_a_rate_limiters_429_is_recorded_as_the_keys_answer() {
    let (server, runs, budget) = limited_server(false);
    let limited = call("/limited", "k1").send(server.addr).await;
    assert_eq!((limited.status, limited.replayed()), (429, false));
    budget.refill(10);
    let retry = call("/limited", "k1").send(server.addr).await;
    assert_eq!((retry.status, retry.replayed()), (429, true));
    assert_eq!(runs.get(), 0);
    // Another key, within the budget, runs.
    assert_eq!(call("/limited", "k2").send(server.addr).await.status, 201);
}
