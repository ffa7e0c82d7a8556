//! What makes a retry the same request: bodies compared as JSON or as forms (any member or
//! pair order, any whitespace), query parameters in any order, members left out, headers
//! taken in, and an application's own fingerprint function; in both forms, and as the
//! application's defaults. A body that is not in its endpoint's form (JSON, a form) is
//! compared byte for byte, and the handler's extractors answer it.

use actix_web::{web, HttpRequest, HttpResponse};
use idem_actix::{idempotent, BodyForm, Idempotency, IdempotencyConfig, MokaStore, Policy};
use idem_actix::{PolicyError, ReplayHeaders};
use idem_tests::{assert_error, serve, Counter, RawRequest, Served, TestServer};

fn call(path: &str, key: &str, body: &str) -> RawRequest {
    RawRequest::post(path)
        .header("Authorization", "Bearer tenant-1")
        .header("Idempotency-Key", key)
        .header("Content-Type", "application/json")
        .body(body)
}

async fn created(runs: web::Data<Counter>) -> HttpResponse {
    HttpResponse::Created().body(format!("run {}", runs.bump()))
}

#[idempotent(fingerprint = "json")]
async fn as_json(runs: web::Data<Counter>) -> HttpResponse {
    created(runs).await
}

async fn created_from(_: web::Json<serde_json::Value>, runs: web::Data<Counter>) -> HttpResponse {
    created(runs).await
}

#[idempotent(fingerprint = "json")]
async fn typed(body: web::Json<serde_json::Value>, runs: web::Data<Counter>) -> HttpResponse {
    created_from(body, runs).await
}

/// A `JsonConfig` whose error handler answers a body `web::Json` refuses in the
/// application's own terms.
fn json_errors() -> web::JsonConfig {
    web::JsonConfig::default().error_handler(|err, _| {
        let res =
            HttpResponse::UnprocessableEntity().json(serde_json::json!({"error": "bad_json"}));
        actix_web::error::InternalError::from_response(err, res).into()
    })
}

#[idempotent(fingerprint = "json", fingerprint_ignore = ["/sent_at", "/meta/trace_id"])]
async fn ignoring(runs: web::Data<Counter>) -> HttpResponse {
    created(runs).await
}

#[idempotent(fingerprint = "form")]
async fn as_form(runs: web::Data<Counter>) -> HttpResponse {
    created(runs).await
}

#[idempotent(fingerprint_headers = ["Content-Type", "X-Account"])]
async fn with_headers(runs: web::Data<Counter>) -> HttpResponse {
    created(runs).await
}

#[idempotent]
async fn as_bytes(runs: web::Data<Counter>) -> HttpResponse {
    created(runs).await
}

/// What a line-based body means: its lines, in any order; nothing for a body that is not
/// text.
fn lines(_: &HttpRequest, body: &[u8]) -> Option<Vec<u8>> {
    let text = std::str::from_utf8(body).ok()?;
    let mut lines: Vec<&str> = text.lines().collect();
    lines.sort_unstable();
    Some(lines.join("\n").into_bytes())
}

#[idempotent(fingerprint = lines)]
async fn by_function(runs: web::Data<Counter>) -> HttpResponse {
    created(runs).await
}

fn attributed() -> Served {
    serve(|cfg| {
        cfg.app_data(json_errors())
            .route("/json", web::post().to(as_json))
            .route("/typed", web::post().to(typed))
            .route("/ignoring", web::post().to(ignoring))
            .route("/form", web::post().to(as_form))
            .route("/headers", web::post().to(with_headers))
            .route("/bytes", web::post().to(as_bytes))
            .route("/lines", web::post().to(by_function));
    })
}

fn middleware() -> Served {
    serve(|cfg| {
        cfg.app_data(json_errors()).service(
            web::scope("/typed")
                .wrap(Idempotency::new().with_overrides(|p| p.fingerprint(BodyForm::Json)))
                .route("", web::post().to(created_from)),
        );
        cfg.service(
            web::scope("/json")
                .wrap(Idempotency::new().with_overrides(|p| p.fingerprint(BodyForm::Json)))
                .route("", web::post().to(created)),
        )
        .service(
            web::scope("/ignoring")
                .wrap(Idempotency::new().with_overrides(|p| {
                    p.fingerprint(BodyForm::Json)
                        .fingerprint_ignore(&["/sent_at", "/meta/trace_id"])
                }))
                .route("", web::post().to(created)),
        )
        .service(
            web::scope("/form")
                .wrap(Idempotency::new().with_overrides(|p| p.fingerprint(BodyForm::Form)))
                .route("", web::post().to(created)),
        )
        .service(
            web::scope("/headers")
                .wrap(
                    Idempotency::new()
                        .with_overrides(|p| p.fingerprint_headers(&["Content-Type", "X-Account"])),
                )
                .route("", web::post().to(created)),
        )
        .service(
            web::scope("/bytes")
                .wrap(Idempotency::new())
                .route("", web::post().to(created)),
        )
        .service(
            web::scope("/lines")
                .wrap(Idempotency::new().with_fingerprint_fn(lines))
                .route("", web::post().to(created)),
        );
    })
}

/// Sends `first`, then `retry` with the same key: whether the retry replayed the first
/// response (else the status it got), and how often the handler ran.
async fn retried(
    served: &Served,
    first: RawRequest,
    retry: RawRequest,
) -> (Result<(), u16>, usize) {
    let before = served.runs.get();
    let a = served.send(&first).await;
    assert_eq!(a.status, 201, "{}", String::from_utf8_lossy(&a.body));
    let b = served.send(&retry).await;
    let outcome = match b.replayed() {
        true => {
            assert_eq!(a.body, b.body);
            Ok(())
        }
        false => Err(b.status),
    };
    (outcome, served.runs.get() - before)
}

async fn json_bodies_compare_as_parsed(served: Served) {
    let first = call(
        "/json?a=1&b=2",
        "j1",
        r#"{"agent_id":"a1","phone_number":"+15555550123"}"#,
    );
    let reordered = call(
        "/json?b=2&a=1",
        "j1",
        "{\n  \"phone_number\" : \"+15555550123\",\n  \"agent_id\": \"a\\u0031\"\n}",
    );
    assert_eq!(retried(&served, first, reordered).await, (Ok(()), 1));
    let first = call(
        "/json",
        "j2",
        r#"{"agent_id":"a1","phone_number":"+15555550123"}"#,
    );
    let other = call(
        "/json",
        "j2",
        r#"{"phone_number":"+15555550199","agent_id":"a1"}"#,
    );
    assert_eq!(retried(&served, first, other).await, (Err(409), 1));
    let first = call("/json?a=1", "j3", "{}");
    let other_query = call("/json?a=2", "j3", "{}");
    assert_eq!(retried(&served, first, other_query).await, (Err(409), 1));
}

#[actix_web::test]
async fn json_bodies_compare_as_parsed_with_the_attribute() {
    json_bodies_compare_as_parsed(attributed()).await;
}

#[actix_web::test]
async fn json_bodies_compare_as_parsed_with_the_middleware() {
    json_bodies_compare_as_parsed(middleware()).await;
}

/// A body that is not JSON, or not sent as JSON, is compared byte for byte and reaches the
/// handler, whose extractors answer it as they would without the layer: the layer refused a
/// body that is not JSON 400 `idempotency_body_invalid` on keyed requests alone (an
/// application's own JSON errors replaced, and, under a JSON default, its form endpoints
/// refused), and read a form that parses as JSON (`1.0`) as the JSON it is not.
async fn a_body_that_is_not_json_is_compared_as_sent(served: Served) {
    let broken = || call("/json", "nj", r#"{"agent_id": "a1",}"#);
    assert_eq!(retried(&served, broken(), broken()).await, (Ok(()), 1));
    // The corrected body is another request under that key.
    let fixed = call("/json", "nj", r#"{"agent_id":"a1"}"#);
    assert_eq!(served.send(&fixed).await.status, 409);
    // Sent as a form, bodies that JSON reads alike are two requests.
    let form = |body: &str| {
        RawRequest::post("/json")
            .header("Authorization", "Bearer tenant-1")
            .header("Idempotency-Key", "nf")
            .header("Content-Type", "application/x-www-form-urlencoded")
            .body(body)
    };
    assert_eq!(
        retried(&served, form("1.0"), form("1")).await,
        (Err(409), 1)
    );
    // No body at all is no document, not an error.
    let empty = served.send(&call("/json", "empty", "")).await;
    assert_eq!((empty.status, empty.replayed()), (201, false));
    let again = served.send(&call("/json", "empty", "")).await;
    assert!(again.replayed());
    // Whatever its type: its query still compares in any order.
    let bodiless = |query: &str| {
        RawRequest::post(&format!("/json?{query}"))
            .header("Authorization", "Bearer tenant-1")
            .header("Idempotency-Key", "nb")
    };
    let (first, reordered) = (bodiless("a=1&b=2"), bodiless("b=2&a=1"));
    assert_eq!(retried(&served, first, reordered).await, (Ok(()), 1));
}

#[actix_web::test]
async fn a_body_that_is_not_json_is_compared_as_sent_with_the_attribute() {
    a_body_that_is_not_json_is_compared_as_sent(attributed()).await;
}

#[actix_web::test]
async fn a_body_that_is_not_json_is_compared_as_sent_with_the_middleware() {
    a_body_that_is_not_json_is_compared_as_sent(middleware()).await;
}

/// The application's own answer to a body its `web::Json` refuses (a `JsonConfig` error
/// handler's), the same with a key as without one. Under the attribute nothing is recorded,
/// so the corrected request under that key runs; under the middleware alone the refusal is
/// the handler's 4xx to the layer, recorded (the README says so), and that request is another
/// under the key.
async fn a_body_the_handler_s_json_refuses_is_answered_by_the_application(
    served: Served,
    corrected: u16,
) {
    let broken = call("/typed", "t1", r#"{"agent_id": "a1",}"#);
    let keyless = RawRequest::post("/typed")
        .header("Authorization", "Bearer tenant-1")
        .header("Content-Type", "application/json")
        .body(r#"{"agent_id": "a1",}"#);
    for request in [&broken, &keyless] {
        let res = served.send(request).await;
        assert_eq!(
            (res.status, res.text()),
            (422, r#"{"error":"bad_json"}"#.to_owned())
        );
    }
    assert_eq!(served.runs.get(), 0, "the handler did not run");
    let fixed = served
        .send(&call("/typed", "t1", r#"{"agent_id":"a1"}"#))
        .await;
    assert_eq!((fixed.status, fixed.replayed()), (corrected, false));
}

#[actix_web::test]
async fn a_body_the_handler_s_json_refuses_is_answered_by_the_application_with_the_attribute() {
    a_body_the_handler_s_json_refuses_is_answered_by_the_application(attributed(), 201).await;
}

#[actix_web::test]
async fn a_body_the_handler_s_json_refuses_is_answered_by_the_application_with_the_middleware() {
    a_body_the_handler_s_json_refuses_is_answered_by_the_application(middleware(), 409).await;
}

async fn ignored_members_do_not_count(served: Served) {
    let first = call(
        "/ignoring",
        "i1",
        r#"{"to":"+15555550123","sent_at":"10:00:00","meta":{"trace_id":"t1","v":1}}"#,
    );
    let later = call(
        "/ignoring",
        "i1",
        r#"{"meta":{"v":1,"trace_id":"t2"},"to":"+15555550123","sent_at":"10:00:05"}"#,
    );
    assert_eq!(retried(&served, first, later).await, (Ok(()), 1));
    let first = call("/ignoring", "i2", r#"{"to":"+15555550123","meta":{"v":1}}"#);
    let other = call("/ignoring", "i2", r#"{"to":"+15555550123","meta":{"v":2}}"#);
    assert_eq!(retried(&served, first, other).await, (Err(409), 1));
}

#[actix_web::test]
async fn ignored_members_do_not_count_with_the_attribute() {
    ignored_members_do_not_count(attributed()).await;
}

#[actix_web::test]
async fn ignored_members_do_not_count_with_the_middleware() {
    ignored_members_do_not_count(middleware()).await;
}

async fn form_pairs_compare_in_any_order(served: Served) {
    let form = |key: &str, body: &str| {
        RawRequest::post("/form")
            .header("Authorization", "Bearer tenant-1")
            .header("Idempotency-Key", key)
            .header("Content-Type", "application/x-www-form-urlencoded")
            .body(body)
    };
    let first = form("f1", "to=%2B15555550123&text=hello+there");
    let reordered = form("f1", "text=hello%20there&to=%2B15555550123");
    assert_eq!(retried(&served, first, reordered).await, (Ok(()), 1));
    let first = form("f2", "to=1&text=a");
    let other = form("f2", "to=1&text=b");
    assert_eq!(retried(&served, first, other).await, (Err(409), 1));
}

/// A body sent as another type than a form (JSON, to an endpoint that compares bodies as
/// forms) is no form: it is compared byte for byte, so that two JSON bodies that a form's
/// decoding reads alike (`+` is a space in a form, not in JSON) are two requests, where the
/// second was answered with the first's replay.
async fn a_body_that_is_no_form_is_compared_as_sent(served: Served) {
    let first = call("/form", "j1", r#"{"text":"1+1"}"#);
    let other = call("/form", "j1", r#"{"text":"1 1"}"#);
    assert_eq!(retried(&served, first, other).await, (Err(409), 1));
}

/// A form in another charset than UTF-8 is decoded from that charset by actix's `web::Form`
/// before its percent-escapes are, so that a raw byte and its escape are two values there
/// (`%C3%A9` is "é" in windows-1252's reading of it, `\xC3\xA9` is "Ã©"): it is compared byte
/// for byte, where the form's canonical reading took the two alike and the second request got
/// the first's answer.
async fn a_form_in_another_charset_is_compared_as_sent(served: Served) {
    let form = |body: &[u8]| {
        RawRequest::post("/form")
            .header("Authorization", "Bearer tenant-1")
            .header("Idempotency-Key", "cs1")
            .header(
                "Content-Type",
                "application/x-www-form-urlencoded; charset=windows-1252",
            )
            .body(body)
    };
    let first = form(b"name=%C3%A9");
    let other = form(b"name=\xC3\xA9");
    assert_eq!(retried(&served, first, other).await, (Err(409), 1));
}

#[actix_web::test]
async fn a_form_in_another_charset_is_compared_as_sent_with_the_attribute() {
    a_form_in_another_charset_is_compared_as_sent(attributed()).await;
}

#[actix_web::test]
async fn a_form_in_another_charset_is_compared_as_sent_with_the_middleware() {
    a_form_in_another_charset_is_compared_as_sent(middleware()).await;
}

#[actix_web::test]
async fn a_body_that_is_no_form_is_compared_as_sent_with_the_attribute() {
    a_body_that_is_no_form_is_compared_as_sent(attributed()).await;
}

#[actix_web::test]
async fn a_body_that_is_no_form_is_compared_as_sent_with_the_middleware() {
    a_body_that_is_no_form_is_compared_as_sent(middleware()).await;
}

#[actix_web::test]
async fn form_pairs_compare_in_any_order_with_the_attribute() {
    form_pairs_compare_in_any_order(attributed()).await;
}

#[actix_web::test]
async fn form_pairs_compare_in_any_order_with_the_middleware() {
    form_pairs_compare_in_any_order(middleware()).await;
}

async fn listed_headers_are_part_of_the_request(served: Served) {
    let first = call("/headers", "h1", "{}").header("X-Account", "acct_1");
    let same = call("/headers", "h1", "{}").header("x-account", "acct_1");
    assert_eq!(retried(&served, first, same).await, (Ok(()), 1));
    let first = call("/headers", "h2", "{}").header("X-Account", "acct_1");
    let other = call("/headers", "h2", "{}").header("X-Account", "acct_2");
    assert_eq!(retried(&served, first, other).await, (Err(409), 1));
    let first = call("/headers", "h3", "{}").header("X-Account", "acct_1");
    let without = call("/headers", "h3", "{}");
    assert_eq!(retried(&served, first, without).await, (Err(409), 1));
}

#[actix_web::test]
async fn listed_headers_are_part_of_the_request_with_the_attribute() {
    listed_headers_are_part_of_the_request(attributed()).await;
}

#[actix_web::test]
async fn listed_headers_are_part_of_the_request_with_the_middleware() {
    listed_headers_are_part_of_the_request(middleware()).await;
}

async fn bytes_stay_the_default(served: Served) {
    let first = call("/bytes?a=1&b=2", "b1", r#"{"a":1,"b":2}"#);
    let reordered = call("/bytes?a=1&b=2", "b1", r#"{"b":2,"a":1}"#);
    assert_eq!(retried(&served, first, reordered).await, (Err(409), 1));
    let first = call("/bytes?a=1&b=2", "b2", "{}");
    let query = call("/bytes?b=2&a=1", "b2", "{}");
    assert_eq!(retried(&served, first, query).await, (Err(409), 1));
}

#[actix_web::test]
async fn bytes_stay_the_default_with_the_attribute() {
    bytes_stay_the_default(attributed()).await;
}

#[actix_web::test]
async fn bytes_stay_the_default_with_the_middleware() {
    bytes_stay_the_default(middleware()).await;
}

async fn a_fingerprint_function_decides_what_is_the_same(served: Served) {
    let first = call("/lines", "l1", "apples\npears");
    let reordered = call("/lines", "l1", "pears\napples");
    assert_eq!(retried(&served, first, reordered).await, (Ok(()), 1));
    let first = call("/lines", "l2", "apples");
    let other = call("/lines", "l2", "plums");
    assert_eq!(retried(&served, first, other).await, (Err(409), 1));
    let before = served.runs.get();
    let unreadable = served
        .send(&call("/lines", "l3", "").body(vec![0xff, 0xfe]))
        .await;
    assert_error(&unreadable, 400, "idempotency_body_invalid");
    assert_eq!(served.runs.get(), before);
}

#[actix_web::test]
async fn a_fingerprint_function_decides_what_is_the_same_with_the_attribute() {
    a_fingerprint_function_decides_what_is_the_same(attributed()).await;
}

#[actix_web::test]
async fn a_fingerprint_function_decides_what_is_the_same_with_the_middleware() {
    a_fingerprint_function_decides_what_is_the_same(middleware()).await;
}

#[idempotent]
async fn plain(runs: web::Data<Counter>) -> HttpResponse {
    created(runs).await
}

#[idempotent(fingerprint = "bytes")]
async fn insists_on_bytes(runs: web::Data<Counter>) -> HttpResponse {
    created(runs).await
}

#[actix_web::test]
async fn the_applications_defaults_set_the_fingerprint_and_endpoints_override_them() {
    let runs = Counter::default();
    let data = web::Data::new(runs.clone());
    let idem = IdempotencyConfig::new(MokaStore::new())
        .with_defaults(
            Policy::DEFAULT
                .fingerprint(BodyForm::Json)
                .fingerprint_ignore(&["/sent_at"]),
        )
        .unwrap();
    let server = TestServer::start(1, move |cfg| {
        cfg.app_data(idem.clone())
            .app_data(data.clone())
            .route("/plain", web::post().to(plain))
            .route("/bytes", web::post().to(insists_on_bytes));
    });
    let first = call("/plain", "d1", r#"{"a":1,"sent_at":1}"#)
        .send(server.addr)
        .await;
    assert_eq!(first.status, 201);
    let retry = call("/plain", "d1", r#"{"sent_at":2, "a":1}"#)
        .send(server.addr)
        .await;
    assert!(
        retry.replayed(),
        "the application compares JSON, less /sent_at"
    );
    // An endpoint that says `bytes` compares bytes, and leaves nothing out.
    call("/bytes", "d2", r#"{"a":1}"#).send(server.addr).await;
    let retry = call("/bytes", "d2", r#"{ "a":1}"#).send(server.addr).await;
    assert_eq!(retry.status, 409);
    assert_eq!(runs.get(), 2);
}

#[test]
fn contradicting_defaults_are_refused_at_start_up() {
    let config = || IdempotencyConfig::new(MokaStore::new());
    assert!(matches!(
        config().with_defaults(Policy::DEFAULT.fingerprint_ignore(&["/sent_at"])),
        Err(PolicyError::IgnoreWithoutJson)
    ));
    assert!(matches!(
        config().with_defaults(
            Policy::DEFAULT
                .fingerprint(BodyForm::Json)
                .fingerprint_ignore(&["sent_at"])
        ),
        Err(PolicyError::InvalidPointer {
            pointer: "sent_at",
            ..
        })
    ));
    assert!(matches!(
        config().with_defaults(Policy::DEFAULT.fingerprint_headers(&["Content Type"])),
        Err(PolicyError::InvalidHeader("Content Type"))
    ));
    assert!(matches!(
        config()
            .with_defaults(Policy::DEFAULT.replay_headers(ReplayHeaders::Only(&["Set-Cookie"]))),
        Err(PolicyError::SetCookieListed)
    ));
    assert!(matches!(
        config().with_defaults(
            Policy::DEFAULT.replay_headers(ReplayHeaders::Except(&["content-encoding"]))
        ),
        Err(PolicyError::CodingDropped)
    ));
}
