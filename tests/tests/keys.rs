//! Every malformed key gets 400 `idempotency_key_invalid` with a message naming the rule it
//! breaks, and the handler does not run.

use actix_web::{post, web, HttpResponse};
use idem_actix::idempotent;
use idem_tests::{assert_error, serve, Counter, RawRequest, Served};

#[post("/optional")]
#[idempotent]
async fn optional(runs: web::Data<Counter>) -> HttpResponse {
    HttpResponse::Created().body(format!("run {}", runs.bump()))
}

#[post("/required")]
#[idempotent(required)]
async fn required(runs: web::Data<Counter>) -> HttpResponse {
    HttpResponse::Created().body(format!("run {}", runs.bump()))
}

fn app() -> Served {
    serve(|cfg| {
        cfg.service(optional).service(required);
    })
}

fn keyed(value: &str) -> RawRequest {
    RawRequest::post("/optional")
        .header("Authorization", "Bearer t")
        .header("Idempotency-Key", value)
}

#[actix_web::test]
async fn every_malformed_key_class_is_refused_with_the_rule_it_breaks() {
    let s = app();
    let long = "k".repeat(256);
    let long_quoted = format!("\"{long}\"");
    let cases: &[(&str, &RawRequest, &str)] = &[
        ("empty", &keyed(""), "empty"),
        ("empty quoted", &keyed("\"\""), "empty"),
        (
            "too long",
            &keyed(&long),
            "most this endpoint accepts is 255",
        ),
        ("too long once unquoted", &keyed(&long_quoted), "255"),
        ("space", &keyed("a b"), "not visible ASCII"),
        ("tab", &keyed("a\tb"), "not visible ASCII"),
        ("non-ASCII", &keyed("clé-1"), "not visible ASCII"),
        ("space in quotes", &keyed("\"a b\""), "not visible ASCII"),
        ("unterminated quote", &keyed("\"abc"), "no closing quote"),
        ("bad escape", &keyed("\"a\\nb\""), "invalid escape"),
        (
            "parameters",
            &keyed("\"abc\";p=1"),
            "after the closing quote",
        ),
        (
            "two header lines",
            &keyed("a").header("Idempotency-Key", "b"),
            "more than once",
        ),
    ];
    for (class, request, rule) in cases {
        let res = s.send(request).await;
        let message = assert_error(&res, 400, "idempotency_key_invalid");
        assert!(message.contains("Idempotency-Key"), "{class}: {message}");
        assert!(message.contains(rule), "{class}: {message}");
    }
    assert_eq!(s.runs.get(), 0, "no malformed key reaches the handler");
}

/// A control byte in a key (other than tab) never reaches the layer: actix-web's HTTP/1
/// parser refuses the request first, 400 with an empty body, as the README says. Whatever
/// answers, the handler does not run.
#[actix_web::test]
async fn a_key_with_a_control_byte_is_refused_before_the_layer_and_runs_nothing() {
    let s = app();
    for byte in ['\0', '\u{1}', '\u{1f}', '\u{7f}'] {
        let res = s.send(&keyed(&format!("a{byte}b"))).await;
        assert_eq!(res.status, 400, "{byte:?}: {res:?}");
        assert!(res.body.is_empty(), "actix's own refusal: {res:?}");
    }
    assert_eq!(s.runs.get(), 0);
}

#[actix_web::test]
async fn bare_and_quoted_forms_are_the_same_key() {
    let s = app();
    let bare = s.send(&keyed("4c7f0a78-0a61-42b4")).await;
    let quoted = s.send(&keyed("\"4c7f0a78-0a61-42b4\"")).await;
    assert_eq!(bare.status, 201);
    assert!(quoted.replayed());
    assert_eq!(quoted.body, bare.body);
    // Surrounding whitespace is not part of the value.
    assert!(s.send(&keyed("  4c7f0a78-0a61-42b4 ")).await.replayed());
}

#[actix_web::test]
async fn a_required_key_that_is_missing_is_a_400() {
    let s = app();
    let res = s
        .send(&RawRequest::post("/required").header("Authorization", "Bearer t"))
        .await;
    let message = assert_error(&res, 400, "idempotency_key_missing");
    assert!(message.contains("Idempotency-Key"), "{message}");
    assert_eq!(s.runs.get(), 0);
}

#[actix_web::test]
async fn a_key_without_credentials_to_scope_it_is_a_400() {
    let s = app();
    let res = s
        .send(&RawRequest::post("/optional").header("Idempotency-Key", "k"))
        .await;
    assert_error(&res, 400, "idempotency_scope_missing");
    assert_eq!(s.runs.get(), 0, "never falls back to a shared scope");
}

#[actix_web::test]
async fn a_valid_incoming_request_id_is_echoed_and_an_unsafe_one_replaced() {
    let s = app();
    let res = s
        .send(&keyed("").header("X-Request-ID", "req-abc_123"))
        .await;
    assert_eq!(res.header("x-request-id"), Some("req-abc_123"));
    assert_eq!(res.json()["request_id"], "req-abc_123");
    let res = s.send(&keyed("").header("X-Request-ID", "<script>")).await;
    let id = res.header("x-request-id").unwrap();
    assert_ne!(id, "<script>");
    assert_eq!(id.len(), 16);
}

/// An `X-Request-ID` sent on two lines (a client's, and one a proxy appended) is no valid
/// incoming id, as a key or a scope header sent twice is not: a fresh one is made, where the
/// first line was taken.
#[actix_web::test]
async fn a_request_id_sent_twice_is_replaced() {
    let s = app();
    for key in ["", "twice-1", "twice-1"] {
        let res = s
            .send(
                &keyed(key)
                    .header("X-Request-ID", "from-the-client")
                    .header("X-Request-ID", "from-the-proxy"),
            )
            .await;
        let id = res.header("x-request-id").unwrap();
        assert_ne!(id, "from-the-client", "key {key:?}: {res:?}");
        assert_ne!(id, "from-the-proxy", "key {key:?}: {res:?}");
        assert_eq!(id.len(), 16, "key {key:?}: {res:?}");
    }
}
