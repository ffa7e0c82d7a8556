//! The layer beside others: an `Idempotency` middleware around an `#[idempotent]` handler, and
//! around or inside actix's `Compress`.

use actix_web::middleware::Compress;
use actix_web::{web, HttpResponse};
use idem_actix::{idempotent, Idempotency, IdempotencyConfig, MokaStore, ReplayHeaders};
use idem_tests::{assert_error, Counter, RawRequest, TestServer, Warnings};

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

#[actix_web::test]
async fn a_middleware_around_an_attributed_handler_is_warned_about_once_and_claims_once() {
    let warnings = Warnings::installed();
    let runs = Counter::default();
    let data = web::Data::new(runs.clone());
    let idem = IdempotencyConfig::new(MokaStore::new());
    let server = TestServer::start(1, move |cfg| {
        cfg.app_data(data.clone()).app_data(idem.clone()).service(
            web::scope("/wrapped")
                .wrap(Idempotency::new())
                .route("", web::post().to(declared)),
        );
    });
    let text = "the attribute's arguments are ignored";
    call("/wrapped", "one").send(server.addr).await;
    call("/wrapped", "two").send(server.addr).await;
    assert!(call("/wrapped", "one").send(server.addr).await.replayed());
    assert_eq!(runs.get(), 2, "each key ran once");
    assert_eq!(warnings.containing(text), 1, "warned once, not per request");
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
    assert_eq!(retry.body, first.body);
    assert_eq!(runs.get(), 1, "the operation ran once");
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
    assert_eq!(retry.body, first.body);
    assert_eq!(retry.header("content-encoding"), Some("gzip"));
    assert_eq!(retry.header("content-type"), Some("text/plain"));
    assert_eq!(runs.get(), 1);
}
