//! Keys carried in the body (`key = "json:/event_id"`) or found by a key function, for APIs
//! and webhooks that send them there: the key rules and their 400s hold, keys stay per
//! scope, and a request without one runs as if the endpoint were not idempotent (unless
//! `required`). In both forms, and as the application's defaults.

use actix_web::{web, HttpRequest, HttpResponse};
use idem_actix::{idempotent, Idempotency, IdempotencyConfig, IdempotencyKey, KeySource};
use idem_actix::{ErrorFormat, MokaStore, Policy};
use idem_tests::{assert_error, assert_problem, serve, serve_with_defaults};
use idem_tests::{Counter, RawRequest, Served, TestServer};

fn event(path: &str, body: &str) -> RawRequest {
    event_of("tenant-1", path, body)
}

fn event_of(tenant: &str, path: &str, body: &str) -> RawRequest {
    RawRequest::post(path)
        .header("Authorization", &format!("Bearer {tenant}"))
        .header("Content-Type", "application/json")
        .body(body)
}

/// The handler sees the key the layer read, as it would a header's.
async fn received(runs: web::Data<Counter>, key: Option<IdempotencyKey>) -> HttpResponse {
    let key = key.map_or_else(|| "none".to_owned(), |k| k.as_str().to_owned());
    HttpResponse::Ok().body(format!("run {} for {key}", runs.bump()))
}

#[idempotent(key = "json:/event/id", fingerprint = "json", key_max_len = 16)]
async fn webhook(runs: web::Data<Counter>, key: Option<IdempotencyKey>) -> HttpResponse {
    received(runs, key).await
}

#[idempotent(key = "json:/event/id", required)]
async fn strict(runs: web::Data<Counter>, key: Option<IdempotencyKey>) -> HttpResponse {
    received(runs, key).await
}

/// A delivery id, as some webhooks send it: in a header of their own, else in the body's
/// first line.
fn delivery(req: &HttpRequest, body: &[u8]) -> Option<String> {
    if let Some(id) = req.headers().get("x-delivery") {
        return id.to_str().ok().map(str::to_owned);
    }
    let first = body.split(|&b| b == b'\n').next()?;
    let id = std::str::from_utf8(first)
        .ok()?
        .strip_prefix("delivery: ")?;
    Some(id.to_owned())
}

/// A handler that cannot run without a key: a request with none is refused for want of it.
async fn keyed_only(runs: web::Data<Counter>, key: IdempotencyKey) -> HttpResponse {
    received(runs, Some(key)).await
}

#[idempotent(key = "json:/event/id", errors = "problem")]
async fn needs_body_key(runs: web::Data<Counter>, key: IdempotencyKey) -> HttpResponse {
    keyed_only(runs, key).await
}

#[idempotent(key = delivery, errors = "problem")]
async fn needs_delivery(runs: web::Data<Counter>, key: IdempotencyKey) -> HttpResponse {
    keyed_only(runs, key).await
}

#[idempotent(key = delivery)]
async fn by_function(runs: web::Data<Counter>, key: Option<IdempotencyKey>) -> HttpResponse {
    received(runs, key).await
}

#[idempotent(key = delivery, fingerprint = "json")]
async fn by_function_as_json(
    runs: web::Data<Counter>,
    key: Option<IdempotencyKey>,
) -> HttpResponse {
    received(runs, key).await
}

fn attributed() -> Served {
    serve(|cfg| {
        cfg.route("/webhook", web::post().to(webhook))
            .route("/delivery-json", web::post().to(by_function_as_json))
            .route("/strict", web::post().to(strict))
            .route("/needs-body-key", web::post().to(needs_body_key))
            .route("/needs-delivery", web::post().to(needs_delivery))
            .route("/delivery", web::post().to(by_function));
    })
}

fn middleware() -> Served {
    serve(|cfg| {
        cfg.service(
            web::scope("/webhook")
                .wrap(Idempotency::new().with_overrides(|p| {
                    p.key_source(KeySource::Json("/event/id"))
                        .fingerprint(idem_actix::BodyForm::Json)
                        .key_max_len(16)
                }))
                .route("", web::post().to(received)),
        )
        .service(
            web::scope("/strict")
                .wrap(
                    Idempotency::new().with_overrides(|p| {
                        p.key_source(KeySource::Json("/event/id")).required(true)
                    }),
                )
                .route("", web::post().to(received)),
        )
        .service(
            web::scope("/delivery")
                .wrap(Idempotency::new().with_key_fn(delivery))
                .route("", web::post().to(received)),
        )
        .service(
            web::scope("/needs-body-key")
                .wrap(Idempotency::new().with_overrides(|p| {
                    p.key_source(KeySource::Json("/event/id"))
                        .error_format(ErrorFormat::Problem)
                }))
                .route("", web::post().to(keyed_only)),
        )
        .service(
            web::scope("/needs-delivery")
                .wrap(
                    Idempotency::new()
                        .with_key_fn(delivery)
                        .with_overrides(|p| p.error_format(ErrorFormat::Problem)),
                )
                .route("", web::post().to(keyed_only)),
        )
        .service(
            web::scope("/delivery-json")
                .wrap(
                    Idempotency::new()
                        .with_key_fn(delivery)
                        .with_overrides(|p| p.fingerprint(idem_actix::BodyForm::Json)),
                )
                .route("", web::post().to(received)),
        );
    })
}

async fn the_key_is_read_from_the_json_body(served: Served) {
    let first = served
        .send(&event(
            "/webhook",
            r#"{"event":{"id":"evt_1","type":"paid"}}"#,
        ))
        .await;
    assert_eq!(first.status, 200);
    assert_eq!(first.body, b"run 1 for evt_1");
    let again = served
        .send(&event(
            "/webhook",
            r#"{ "event": { "type": "paid", "id": "evt_1" } }"#,
        ))
        .await;
    assert!(again.replayed());
    assert_eq!(again.body, b"run 1 for evt_1");
    let other = served
        .send(&event(
            "/webhook",
            r#"{"event":{"id":"evt_1","type":"refunded"}}"#,
        ))
        .await;
    assert_error(&other, 409, "idempotency_conflict");
    // A header key means nothing here: the body's key is the key.
    let numbered = served
        .send(&event("/webhook", r#"{"event":{"id":42}}"#).header("Idempotency-Key", "evt_1"))
        .await;
    assert_eq!(numbered.body, b"run 2 for 42", "a number is a key too");
    // Keys stay per scope.
    let elsewhere = served
        .send(&event_of(
            "tenant-2",
            "/webhook",
            r#"{"event":{"id":"evt_1","type":"paid"}}"#,
        ))
        .await;
    assert_eq!(
        elsewhere.body, b"run 3 for evt_1",
        "another tenant's evt_1 is another key"
    );
}

#[actix_web::test]
async fn the_key_is_read_from_the_json_body_with_the_attribute() {
    the_key_is_read_from_the_json_body(attributed()).await;
}

#[actix_web::test]
async fn the_key_is_read_from_the_json_body_with_the_middleware() {
    the_key_is_read_from_the_json_body(middleware()).await;
}

async fn a_body_key_follows_the_key_rules(served: Served) {
    for (body, what) in [
        (r#"{"event":{"id":""}}"#, "empty"),
        (r#"{"event":{"id":"evt 1"}}"#, "not visible ASCII"),
        (
            r#"{"event":{"id":"evt_0123456789abcdef"}}"#,
            "longer than key_max_len",
        ),
        (r#"{"event":{"id":{"n":1}}}"#, "an object"),
        (r#"{"event":{"id":true}}"#, "a boolean"),
    ] {
        let res = served.send(&event("/webhook", body)).await;
        let message = assert_error(&res, 400, "idempotency_key_invalid");
        assert!(
            message.contains("at /event/id in the JSON body"),
            "{what}: {message}"
        );
    }
    let quoted = served
        .send(&event("/webhook", r#"{"event":{"id":"\"q\""}}"#))
        .await;
    assert_eq!(
        quoted.body, b"run 1 for \"q\"",
        "a body's key is not unquoted"
    );
    let not_json = served.send(&event("/webhook", "event=evt_1")).await;
    assert_error(&not_json, 400, "idempotency_body_invalid");
    assert_eq!(served.runs.get(), 1);
}

#[actix_web::test]
async fn a_body_key_follows_the_key_rules_with_the_attribute() {
    a_body_key_follows_the_key_rules(attributed()).await;
}

#[actix_web::test]
async fn a_body_key_follows_the_key_rules_with_the_middleware() {
    a_body_key_follows_the_key_rules(middleware()).await;
}

async fn without_a_key_the_request_runs_unless_one_is_required(served: Served) {
    for body in [
        r#"{"event":{"type":"ping"}}"#,
        r#"{"event":{"id":null}}"#,
        "",
    ] {
        let res = served.send(&event("/webhook", body)).await;
        assert_eq!((res.status, res.replayed()), (200, false), "{body:?}");
    }
    assert_eq!(served.runs.get(), 3, "each ran, unprotected");
    let missing = served.send(&event("/strict", r#"{"event":{}}"#)).await;
    let message = assert_error(&missing, 400, "idempotency_key_missing");
    assert!(message.contains("/event/id"), "{message}");
    assert_eq!(served.runs.get(), 3);
}

#[actix_web::test]
async fn without_a_key_the_request_runs_unless_one_is_required_with_the_attribute() {
    without_a_key_the_request_runs_unless_one_is_required(attributed()).await;
}

#[actix_web::test]
async fn without_a_key_the_request_runs_unless_one_is_required_with_the_middleware() {
    without_a_key_the_request_runs_unless_one_is_required(middleware()).await;
}

/// A handler that takes the key refuses a request without one as its endpoint would: naming
/// where the endpoint reads keys (not a header it never reads), in the endpoint's error
/// format, whether or not the request also carries the application's key header.
async fn a_handler_without_its_body_key_is_told_where_the_key_goes(served: Served) {
    for (path, place) in [
        ("/needs-body-key", "/event/id"),
        ("/needs-delivery", "key function"),
    ] {
        for with_header in [false, true] {
            let mut request = event(path, r#"{"event":{}}"#);
            if with_header {
                request = request.header("Idempotency-Key", "k-1");
            }
            let res = served.send(&request).await;
            let body = assert_problem(&res, 400, "idempotency_key_missing");
            let detail = body["detail"].as_str().unwrap_or_default();
            assert!(detail.contains(place), "{path}: {detail}");
            assert!(!detail.contains("header"), "{path}: {detail}");
        }
    }
    assert_eq!(served.runs.get(), 0, "nothing ran");
}

#[actix_web::test]
async fn a_handler_without_its_body_key_is_told_where_the_key_goes_with_the_attribute() {
    a_handler_without_its_body_key_is_told_where_the_key_goes(attributed()).await;
}

#[actix_web::test]
async fn a_handler_without_its_body_key_is_told_where_the_key_goes_with_the_middleware() {
    a_handler_without_its_body_key_is_told_where_the_key_goes(middleware()).await;
}

async fn a_key_function_finds_the_key(served: Served) {
    let first = served
        .send(&event("/delivery", "delivery: d-1\npayload"))
        .await;
    assert_eq!(first.body, b"run 1 for d-1");
    let by_header = served
        .send(&event("/delivery", "something else").header("X-Delivery", "d-1"))
        .await;
    assert_error(&by_header, 409, "idempotency_conflict");
    let again = served
        .send(&event("/delivery", "delivery: d-1\npayload"))
        .await;
    assert!(again.replayed());
    let none = served.send(&event("/delivery", "no delivery line")).await;
    assert_eq!(none.body, b"run 2 for none");
    let invalid = served.send(&event("/delivery", "delivery: d 1")).await;
    let message = assert_error(&invalid, 400, "idempotency_key_invalid");
    assert!(message.contains("key function"), "{message}");
}

async fn a_body_is_read_as_json_only_once_a_key_function_found_a_key(served: Served) {
    let keyless = served.send(&event("/delivery-json", "not json")).await;
    assert_eq!(
        keyless.body, b"run 1 for none",
        "no key: the handler has the request"
    );
    // Keyed, a body that is not JSON is compared as sent, as under "json" without a key
    // function: the handler has it, under its key.
    let keyed = served
        .send(&event("/delivery-json", "not json").header("X-Delivery", "d-8"))
        .await;
    assert_eq!(keyed.body, b"run 2 for d-8");
    let json = served
        .send(&event("/delivery-json", r#"{"a":1,"b":2}"#).header("X-Delivery", "d-9"))
        .await;
    assert_eq!(json.body, b"run 3 for d-9");
    let reordered = served
        .send(&event("/delivery-json", r#"{"b":2,"a":1}"#).header("X-Delivery", "d-9"))
        .await;
    assert!(reordered.replayed());
}

#[actix_web::test]
async fn a_body_is_read_as_json_once_a_key_function_found_a_key_with_the_attribute() {
    a_body_is_read_as_json_only_once_a_key_function_found_a_key(attributed()).await;
}

#[actix_web::test]
async fn a_body_is_read_as_json_once_a_key_function_found_a_key_with_the_middleware() {
    a_body_is_read_as_json_only_once_a_key_function_found_a_key(middleware()).await;
}

#[actix_web::test]
async fn a_key_function_finds_the_key_with_the_attribute() {
    a_key_function_finds_the_key(attributed()).await;
}

#[actix_web::test]
async fn a_key_function_finds_the_key_with_the_middleware() {
    a_key_function_finds_the_key(middleware()).await;
}

#[idempotent]
async fn plain(runs: web::Data<Counter>, key: Option<IdempotencyKey>) -> HttpResponse {
    received(runs, key).await
}

#[actix_web::test]
async fn the_application_can_read_every_key_from_the_body() {
    let runs = Counter::default();
    let data = web::Data::new(runs.clone());
    let idem = IdempotencyConfig::new(MokaStore::new())
        .with_defaults(Policy::DEFAULT.key_source(KeySource::Json("/request_id")))
        .unwrap();
    let server = TestServer::start(1, move |cfg| {
        cfg.app_data(idem.clone())
            .app_data(data.clone())
            .route("/plain", web::post().to(plain));
    });
    let first = event("/plain", r#"{"request_id":"r1"}"#)
        .send(server.addr)
        .await;
    assert_eq!(first.body, b"run 1 for r1");
    let again = event("/plain", r#"{"request_id":"r1"}"#)
        .send(server.addr)
        .await;
    assert!(again.replayed());
    assert_eq!(runs.get(), 1);
}

#[idempotent(header = "X-Key")]
async fn own_header(runs: web::Data<Counter>, key: Option<IdempotencyKey>) -> HttpResponse {
    received(runs, key).await
}

/// An endpoint that names its key's header, in an application that reads keys from bodies,
/// reads its keys from that header: naming it means nothing else. Its duplicates replay, in
/// both forms, where the header was never read and each ran again, unprotected and unwarned.
#[actix_web::test]
async fn an_endpoint_that_names_its_key_header_reads_it_where_the_application_reads_bodies() {
    let defaults = Policy::DEFAULT.key_source(KeySource::Json("/request_id"));
    let s = serve_with_defaults(defaults, |cfg| {
        cfg.route("/own-header", web::post().to(own_header))
            .service(
                web::scope("/wrapped")
                    .wrap(Idempotency::new().with_overrides(|p| p.header("X-Key")))
                    .route("", web::post().to(received)),
            );
    });
    for path in ["/own-header", "/wrapped"] {
        let sent = || event(path, r#"{"text":"hello"}"#).header("X-Key", path);
        let first = s.send(&sent()).await;
        assert_eq!((first.status, first.replayed()), (200, false), "{path}");
        let again = s.send(&sent()).await;
        assert!(again.replayed(), "{path}: {again:?}");
    }
    assert_eq!(s.runs.get(), 2, "once per endpoint");
}
