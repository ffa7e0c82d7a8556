//! Seed document: `seeds/002_ba410be61a807489.txt` (Txtly).
//!
//! `Idempotency-Key` of at most 256 characters; the same key within 24 hours
//! gets the cached response, after 24 hours it is a new operation.
//!
//! `#[idempotent(key_max_len = 256)]`

use std::time::Duration;

use actix_web::{post, web, HttpRequest, HttpResponse};
use idem_actix::idempotent;
use idem_tests::{asked, assert_error, counted, serve, Counter, RawRequest, Served};
use serde_json::json;

#[post("/emails")]
#[idempotent(key_max_len = 256)]
async fn send_email(
    runs: web::Data<Counter>,
    req: HttpRequest,
    body: web::Json<serde_json::Value>,
) -> HttpResponse {
    let n = counted(&runs, &req).await;
    if let Some(error) = asked(&req) {
        return error;
    }
    HttpResponse::Ok().json(json!({ "id": format!("email_{n}"), "to": body["to"] }))
}

fn app() -> Served {
    serve(|cfg| {
        cfg.service(send_email);
    })
}

fn email(key: &str) -> RawRequest {
    email_as("tx_live_your_api_key_here", key)
}

fn email_as(api_key: &str, key: &str) -> RawRequest {
    RawRequest::post("/emails")
        .header("Authorization", &format!("Bearer {api_key}"))
        .header("Idempotency-Key", key)
        .json(&json!({ "to": "user@example.com", "subject": "Welcome to Txtly" }))
}

#[actix_web::test]
async fn the_same_key_within_24_hours_gets_the_cached_response() {
    let s = app();
    let first = s.send(&email("email_send_2024_03_21_12345")).await;
    s.clock.advance(Duration::from_secs(23 * 3600));
    let retry = s.send(&email("email_send_2024_03_21_12345")).await;
    assert_eq!(retry.status, 200);
    assert!(retry.replayed());
    assert_eq!(retry.body, first.body);
    assert_eq!(s.runs.get(), 1, "the email is sent once");
}

#[actix_web::test]
async fn after_24_hours_the_key_is_a_new_operation() {
    let s = app();
    s.send(&email("k")).await;
    s.clock.advance(Duration::from_secs(24 * 3600 - 1));
    assert!(
        s.send(&email("k")).await.replayed(),
        "still there within 24 hours"
    );
    s.clock.advance(Duration::from_secs(1));
    let later = s.send(&email("k")).await;
    assert!(!later.replayed());
    assert_eq!(later.json()["id"], "email_2");
}

#[actix_web::test]
async fn keys_are_at_most_256_characters() {
    let s = app();
    assert_eq!(s.send(&email(&"x".repeat(256))).await.status, 200);
    let res = s.send(&email(&"x".repeat(257))).await;
    let message = assert_error(&res, 400, "idempotency_key_invalid");
    assert!(message.contains("256"), "{message}");
    assert_eq!(s.runs.get(), 1);
}

#[actix_web::test]
async fn a_reused_key_with_another_body_is_refused() {
    let s = app();
    s.send(&email("k")).await;
    let other = RawRequest::post("/emails")
        .header("Authorization", "Bearer tx_live_your_api_key_here")
        .header("Idempotency-Key", "k")
        .json(&json!({ "to": "someone@example.com" }));
    assert_error(&s.send(&other).await, 409, "idempotency_conflict");
    assert_eq!(s.runs.get(), 1);
}

#[actix_web::test]
async fn keys_are_scoped_per_api_key() {
    let s = app();
    s.send(&email("k1")).await;
    let other = s.send(&email_as("tx_live_another_key", "k1")).await;
    assert!(
        !other.replayed(),
        "another API key never sees this one's records"
    );
    assert!(s.send(&email("k1")).await.replayed());
    assert_eq!(s.runs.get(), 2);
}

#[actix_web::test]
async fn a_duplicate_while_the_first_runs_is_a_409() {
    let res = app().conflicts_while_running(&email("k1")).await;
    assert_error(&res, 409, "idempotency_conflict");
}

#[actix_web::test]
async fn every_response_but_a_5xx_is_stored() {
    app().stores_all_but_5xx(email).await;
}
