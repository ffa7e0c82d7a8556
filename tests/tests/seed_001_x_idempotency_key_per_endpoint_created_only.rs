//! Seed document: `seeds/001_2e9b4167026b322e.txt` (Truedy).
//!
//! `X-Idempotency-Key`, keys per API key and per endpoint, a duplicate with
//! the same endpoint and body gets the stored 201, short-lived records, only created
//! responses stored.
//!
//! `#[idempotent(header = "X-Idempotency-Key", per_endpoint, ttl = "1h", cache = "2xx")]`

use std::time::Duration;

use actix_web::{post, web, HttpRequest, HttpResponse};
use idem_actix::idempotent;
use idem_tests::{assert_error, counted, serve, Counter, RawRequest, Served};
use serde_json::json;

#[post("/api/public/v1/calls")]
#[idempotent(header = "X-Idempotency-Key", per_endpoint, ttl = "1h", cache = "2xx")]
async fn create_call(
    runs: web::Data<Counter>,
    req: HttpRequest,
    body: web::Json<serde_json::Value>,
) -> HttpResponse {
    create("call", counted(&runs, &req).await, &body)
}

#[post("/api/public/v1/agents")]
#[idempotent(header = "X-Idempotency-Key", per_endpoint, ttl = "1h", cache = "2xx")]
async fn create_agent(
    runs: web::Data<Counter>,
    body: web::Json<serde_json::Value>,
) -> HttpResponse {
    create("agent", runs.bump(), &body)
}

fn create(kind: &str, n: usize, body: &serde_json::Value) -> HttpResponse {
    if body.get("agent_id").is_none() {
        return HttpResponse::BadRequest().json(json!({"error": "agent_id is required"}));
    }
    HttpResponse::Created().json(json!({ "data": { "id": format!("{kind}_{n}") } }))
}

fn app() -> Served {
    serve(|cfg| {
        cfg.service(create_call).service(create_agent);
    })
}

fn req(path: &str, key: &str, body: serde_json::Value) -> RawRequest {
    RawRequest::post(&format!("/api/public/v1/{path}"))
        .header("Authorization", "Bearer YOUR_API_KEY")
        .header("X-Idempotency-Key", key)
        .json(&body)
}

fn call_body() -> serde_json::Value {
    json!({"agent_id": "a1", "phone_number": "+15551234567", "direction": "outbound"})
}

#[actix_web::test]
async fn duplicate_with_same_endpoint_and_body_returns_the_stored_201() {
    let s = app();
    let key = "550e8400-e29b-41d4-a716-446655440000";
    let first = s.send(&req("calls", key, call_body())).await;
    let retry = s.send(&req("calls", key, call_body())).await;
    assert_eq!((first.status, retry.status), (201, 201));
    assert!(retry.replayed());
    assert_eq!(retry.json()["data"]["id"], first.json()["data"]["id"]);
    assert_eq!(s.runs.get(), 1);
}

#[actix_web::test]
async fn the_same_key_on_another_endpoint_is_another_operation() {
    let s = app();
    let call = s.send(&req("calls", "k1", call_body())).await;
    let agent = s.send(&req("agents", "k1", call_body())).await;
    assert_eq!((call.status, agent.status), (201, 201));
    assert!(!agent.replayed());
    assert_eq!(agent.json()["data"]["id"], "agent_2");
    assert_eq!(s.runs.get(), 2);
}

#[actix_web::test]
async fn the_key_header_is_x_idempotency_key() {
    let s = app();
    let other_header = || {
        RawRequest::post("/api/public/v1/calls")
            .header("Authorization", "Bearer YOUR_API_KEY")
            .header("Idempotency-Key", "k1")
            .json(&call_body())
    };
    s.send(&other_header()).await;
    let second = s.send(&other_header()).await;
    assert!(
        !second.replayed(),
        "Idempotency-Key is not this API's header"
    );
    assert_eq!(s.runs.get(), 2);
}

#[actix_web::test]
async fn only_created_responses_are_stored() {
    let s = app();
    let bad = s.send(&req("calls", "k1", json!({}))).await;
    assert_eq!(bad.status, 400);
    let fixed = s.send(&req("calls", "k1", call_body())).await;
    assert_eq!(fixed.status, 201, "a failed request does not burn its key");
    assert!(!fixed.replayed());
    assert_eq!(s.runs.get(), 2);
}

#[actix_web::test]
async fn stored_responses_are_short_lived() {
    let s = app();
    s.send(&req("calls", "k1", call_body())).await;
    s.clock.advance(Duration::from_secs(59 * 60));
    assert!(s.send(&req("calls", "k1", call_body())).await.replayed());
    s.clock.advance(Duration::from_secs(60));
    let later = s.send(&req("calls", "k1", call_body())).await;
    assert!(!later.replayed());
    assert_eq!(s.runs.get(), 2);
}

#[actix_web::test]
async fn keys_are_scoped_per_api_key() {
    let s = app();
    s.send(&req("calls", "k1", call_body())).await;
    let other = RawRequest::post("/api/public/v1/calls")
        .header("Authorization", "Bearer OTHER_KEY")
        .header("X-Idempotency-Key", "k1")
        .json(&call_body());
    assert!(!s.send(&other).await.replayed());
    assert_eq!(s.runs.get(), 2);
}

#[actix_web::test]
async fn the_same_key_and_endpoint_with_another_body_is_refused() {
    let s = app();
    s.send(&req("calls", "k1", call_body())).await;
    let other = json!({"agent_id": "a2", "phone_number": "+15551234567"});
    let res = s.send(&req("calls", "k1", other)).await;
    assert_error(&res, 409, "idempotency_conflict");
    assert_eq!(
        s.runs.get(),
        1,
        "only the same body gets the stored response"
    );
}

#[actix_web::test]
async fn a_duplicate_while_the_first_runs_is_a_409() {
    let res = app()
        .conflicts_while_running(&req("calls", "k1", call_body()))
        .await;
    assert_error(&res, 409, "idempotency_conflict");
}

#[actix_web::test]
async fn keys_are_up_to_255_characters() {
    app()
        .keys_up_to(255, |key| req("calls", key, call_body()))
        .await;
}
