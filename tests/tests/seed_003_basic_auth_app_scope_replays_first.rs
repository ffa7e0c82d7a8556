//! Seed document: `seeds/003_96d07a1f3397ee50.txt` (EnableX).
//!
//! Keys scoped to the APP ID of Basic authentication, 24 hours; a retry
//! with the same key returns the cached response, and a different body is ignored: the first
//! response comes back and nothing runs again. The scope holds a digest of the APP KEY as
//! well, so that nobody without it reaches an app's records (the layer answers before the
//! handler checks the APP KEY). Keys are per endpoint too: `mismatch = "replay"` replays
//! whatever the fingerprint tells apart (method and path as well as the body), and the seed
//! ignores only a retry's body, never its endpoint.
//!
//! `#[idempotent(scope = "basic_auth_user", mismatch = "replay", per_endpoint)]`

use std::time::Duration;

use actix_web::{post, web, HttpRequest, HttpResponse};
use idem_actix::idempotent;
use idem_tests::{asked, assert_error, counted, serve, Counter, RawRequest, Served};
use serde_json::json;

#[post("/voice/v1/call")]
#[idempotent(scope = "basic_auth_user", mismatch = "replay", per_endpoint)]
async fn voice_call(
    runs: web::Data<Counter>,
    req: HttpRequest,
    body: web::Json<serde_json::Value>,
) -> HttpResponse {
    let n = counted(&runs, &req).await;
    if let Some(error) = asked(&req) {
        return error;
    }
    HttpResponse::Ok().json(json!({ "result": 0, "voice_id": format!("v{n}"), "to": body["to"] }))
}

fn app() -> Served {
    serve(|cfg| {
        cfg.service(voice_call);
    })
}

/// `Authorization: Basic base64(app_id:app_key)`.
fn call(basic: &str, key: &str, to: &str) -> RawRequest {
    RawRequest::post("/voice/v1/call")
        .header("Authorization", &format!("Basic {basic}"))
        .header("Idempotency-Key", key)
        .json(&json!({ "name": "Support Call", "from": "+6512345678", "to": [to] }))
}

/// base64("app_1:key_1"), base64("app_1:key_2"), base64("app_2:key_1").
const APP1_KEY1: &str = "YXBwXzE6a2V5XzE=";
const APP1_KEY2: &str = "YXBwXzE6a2V5XzI=";
const APP2_KEY1: &str = "YXBwXzI6a2V5XzE=";

#[actix_web::test]
async fn a_retry_returns_the_cached_response_without_re_executing() {
    let s = app();
    let key = "550e8400-e29b-41d4-a716-446655440000";
    let first = s.send(&call(APP1_KEY1, key, "+919876543210")).await;
    let retry = s.send(&call(APP1_KEY1, key, "+919876543210")).await;
    assert!(retry.replayed());
    assert_eq!(retry.body, first.body, "byte-for-byte identical");
    assert_eq!(s.runs.get(), 1);
}

#[actix_web::test]
async fn a_different_body_gets_the_first_response_and_is_never_run() {
    let s = app();
    let first = s.send(&call(APP1_KEY1, "abc-123", "+15550000001")).await;
    let reused = s.send(&call(APP1_KEY1, "abc-123", "+15550000002")).await;
    assert_eq!(reused.status, 200);
    assert!(reused.replayed());
    assert_eq!(
        reused.json()["to"][0],
        "+15550000001",
        "number B is never dialled"
    );
    assert_eq!(reused.body, first.body);
    assert_eq!(s.runs.get(), 1);
}

#[actix_web::test]
async fn keys_are_scoped_to_the_app_id_and_never_shared_by_two_apps() {
    let s = app();
    let first = s.send(&call(APP1_KEY1, "k", "+15550000001")).await;
    let retry = s.send(&call(APP1_KEY1, "k", "+15550000001")).await;
    assert!(retry.replayed());
    assert_eq!(retry.body, first.body);
    let other_app = s.send(&call(APP2_KEY1, "k", "+15550000001")).await;
    assert!(!other_app.replayed(), "two APP IDs never conflict");
    assert_eq!(s.runs.get(), 2);
}

#[actix_web::test]
async fn another_app_key_of_the_same_app_id_never_reaches_its_records() {
    let s = app();
    s.send(&call(APP1_KEY1, "k", "+15550000001")).await;
    // A wrong APP KEY, or a rotated one, is a scope of its own: it cannot fetch the app's
    // response, and a rotated key starts afresh.
    let other_key = s.send(&call(APP1_KEY2, "k", "+15550000001")).await;
    assert!(!other_key.replayed());
    assert_eq!(s.runs.get(), 2);
}

#[actix_web::test]
async fn a_key_expires_after_24_hours() {
    let s = app();
    s.send(&call(APP1_KEY1, "k", "+15550000001")).await;
    s.clock.advance(Duration::from_secs(24 * 3600 - 1));
    assert!(
        s.send(&call(APP1_KEY1, "k", "+15550000001"))
            .await
            .replayed(),
        "still there within 24 hours"
    );
    s.clock.advance(Duration::from_secs(1));
    assert!(!s
        .send(&call(APP1_KEY1, "k", "+15550000001"))
        .await
        .replayed());
    assert_eq!(s.runs.get(), 2);
}

#[actix_web::test]
async fn without_basic_credentials_the_scope_is_missing() {
    let s = app();
    let bearer = RawRequest::post("/voice/v1/call")
        .header("Authorization", "Bearer token")
        .header("Idempotency-Key", "k")
        .json(&json!({}));
    assert_error(&s.send(&bearer).await, 400, "idempotency_scope_missing");
    assert_eq!(s.runs.get(), 0);
}

#[actix_web::test]
async fn requests_without_a_key_execute_independently() {
    let s = app();
    let plain = RawRequest::post("/voice/v1/call")
        .header("Authorization", &format!("Basic {APP1_KEY1}"))
        .json(&json!({}));
    s.send(&plain).await;
    s.send(&plain).await;
    assert_eq!(s.runs.get(), 2);
}

#[actix_web::test]
async fn keys_are_up_to_255_characters() {
    app()
        .keys_up_to(255, |key| call(APP1_KEY1, key, "+6500000001"))
        .await;
}

#[actix_web::test]
async fn a_duplicate_while_the_first_runs_is_a_409() {
    let res = app()
        .conflicts_while_running(&call(APP1_KEY1, "k1", "+6500000001"))
        .await;
    assert_error(&res, 409, "idempotency_conflict");
}

#[actix_web::test]
async fn every_response_but_a_5xx_is_stored() {
    app()
        .stores_all_but_5xx(|key| call(APP1_KEY1, key, "+6500000001"))
        .await;
}

#[post("/sms/v1/messages/")]
#[idempotent(scope = "basic_auth_user", mismatch = "replay", per_endpoint)]
async fn send_sms(runs: web::Data<Counter>, body: web::Json<serde_json::Value>) -> HttpResponse {
    let n = runs.bump();
    HttpResponse::Ok().json(json!({ "result": 0, "job_id": format!("sms{n}"), "to": body["to"] }))
}

/// What the seed ignores is the body of a retry, not its endpoint ("Do not share keys across
/// different operations or different API endpoints"): a key reused on another endpoint is not
/// answered with the first endpoint's response, which would say an SMS went out as a call.
#[actix_web::test]
async fn a_key_reused_on_another_endpoint_is_not_answered_with_that_endpoint_s_response() {
    let s = serve(|cfg| {
        cfg.service(voice_call).service(send_sms);
    });
    let voice = s.send(&call(APP1_KEY1, "k", "+15550000001")).await;
    assert_eq!(voice.status, 200);
    let sms = RawRequest::post("/sms/v1/messages/")
        .header("Authorization", &format!("Basic {APP1_KEY1}"))
        .header("Idempotency-Key", "k")
        .json(&json!({ "to": ["+15550000009"], "body": "hi" }));
    let sent = s.send(&sms).await;
    assert_eq!(
        (sent.status, sent.replayed()),
        (200, false),
        "{}",
        sent.text()
    );
    assert!(sent.text().contains("sms"), "{}", sent.text());
    assert!(s.send(&sms).await.replayed());
}
