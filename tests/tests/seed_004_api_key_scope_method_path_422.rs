//! Seed document: `seeds/004_668b971d0812a05f.txt` (Salesly).
//!
//! Keys scoped to the `x-api-key`, matched on method and path; reusing a
//! key with another endpoint or method is 422 with `error.type = "idempotency_conflict"`;
//! replays carry `Idempotent-Replayed: true`; only 2xx responses are cached, for 24 hours.
//!
//! `#[idempotent(scope = "header:x-api-key", mismatch = "unprocessable", errors = "type", cache = "2xx")]`

use std::time::Duration;

use actix_web::{post, put, web, HttpRequest, HttpResponse};
use idem_actix::idempotent;
use idem_tests::{assert_error_in, counted, serve, Counter, RawRequest, RawResponse, Served};
use serde_json::json;

#[post("/api/v1/developers/contacts")]
#[idempotent(
    scope = "header:x-api-key",
    mismatch = "unprocessable",
    errors = "type",
    cache = "2xx"
)]
async fn create_contact(
    runs: web::Data<Counter>,
    req: HttpRequest,
    body: web::Json<serde_json::Value>,
) -> HttpResponse {
    let n = counted(&runs, &req).await;
    if body.get("name").is_none() {
        return HttpResponse::BadRequest().json(json!({"error": {"type": "validation_error"}}));
    }
    if body.get("fail").is_some() {
        return HttpResponse::InternalServerError().json(json!({"error": {"type": "api_error"}}));
    }
    HttpResponse::Created().json(json!({ "id": n, "name": body["name"] }))
}

#[put("/api/v1/developers/contacts")]
#[idempotent(
    scope = "header:x-api-key",
    mismatch = "unprocessable",
    errors = "type",
    cache = "2xx"
)]
async fn upsert_contact(runs: web::Data<Counter>) -> HttpResponse {
    HttpResponse::Ok().json(json!({ "id": runs.bump() }))
}

#[post("/api/v1/developers/companies")]
#[idempotent(
    scope = "header:x-api-key",
    mismatch = "unprocessable",
    errors = "type",
    cache = "2xx"
)]
async fn create_company(runs: web::Data<Counter>) -> HttpResponse {
    HttpResponse::Created().json(json!({ "id": runs.bump() }))
}

fn app() -> Served {
    serve(|cfg| {
        cfg.service(create_contact)
            .service(upsert_contact)
            .service(create_company);
    })
}

fn req(method: &str, path: &str, api_key: &str, key: &str, body: serde_json::Value) -> RawRequest {
    RawRequest::new(method, &format!("/api/v1/developers/{path}"))
        .header("x-api-key", api_key)
        .header("Idempotency-Key", key)
        .json(&body)
}

fn contact(key: &str) -> RawRequest {
    req(
        "POST",
        "contacts",
        "YOUR_API_KEY",
        key,
        json!({"name": "ACME Corp", "type": "client"}),
    )
}

fn assert_type_conflict(res: &RawResponse) {
    assert_type_error(res, 422, "idempotency_conflict");
}

/// The layer's own error in this profile's shape: the code in `error.type`, and otherwise as
/// every error of the layer (JSON, `request_id` the response's `X-Request-ID`, `no-store`).
fn assert_type_error(res: &RawResponse, status: u16, kind: &str) {
    assert_error_in(res, status, "type", kind);
    assert!(res.json()["error"].get("code").is_none());
}

#[actix_web::test]
async fn replays_are_identical_and_marked() {
    let s = app();
    let first = s
        .send(&contact("550e8400-e29b-41d4-a716-446655440000"))
        .await;
    let retry = s
        .send(&contact("550e8400-e29b-41d4-a716-446655440000"))
        .await;
    assert_eq!((first.status, retry.status), (201, 201));
    assert_eq!(retry.header("idempotent-replayed"), Some("true"));
    assert_eq!(retry.body, first.body);
    assert_eq!(s.runs.get(), 1);
}

#[actix_web::test]
async fn reuse_with_another_endpoint_or_method_is_422_with_a_type_field() {
    let s = app();
    s.send(&contact("k")).await;
    let company = req(
        "POST",
        "companies",
        "YOUR_API_KEY",
        "k",
        json!({"name": "ACME Corp", "type": "client"}),
    );
    assert_type_conflict(&s.send(&company).await);
    let put = req(
        "PUT",
        "contacts",
        "YOUR_API_KEY",
        "k",
        json!({"name": "ACME Corp", "type": "client"}),
    );
    assert_type_conflict(&s.send(&put).await);
    assert_eq!(s.runs.get(), 1);
}

#[actix_web::test]
async fn keys_are_scoped_to_the_api_key() {
    let s = app();
    s.send(&contact("k")).await;
    let other = req(
        "POST",
        "contacts",
        "OTHER_ACCOUNT",
        "k",
        json!({"name": "ACME Corp", "type": "client"}),
    );
    let res = s.send(&other).await;
    assert_eq!(res.status, 201);
    assert!(!res.replayed());
    assert_eq!(s.runs.get(), 2);
}

#[actix_web::test]
async fn failed_requests_are_not_cached() {
    let s = app();
    let bad = req(
        "POST",
        "contacts",
        "YOUR_API_KEY",
        "k",
        json!({"type": "client"}),
    );
    assert_eq!(s.send(&bad).await.status, 400);
    assert_eq!(s.send(&bad).await.status, 400);
    assert_eq!(s.runs.get(), 2, "a 400 is not stored");
    let failing = req(
        "POST",
        "contacts",
        "YOUR_API_KEY",
        "k",
        json!({"name": "x", "fail": true}),
    );
    assert_eq!(s.send(&failing).await.status, 500);
    assert_eq!(s.send(&failing).await.status, 500);
    assert_eq!(s.runs.get(), 4, "nor is a 500");
    // The key is still free for the corrected request.
    let ok = req(
        "POST",
        "contacts",
        "YOUR_API_KEY",
        "k",
        json!({"name": "x"}),
    );
    let created = s.send(&ok).await;
    assert_eq!(created.status, 201, "{}", created.text());
    assert!(!created.replayed());
    assert_eq!(s.runs.get(), 5);
}

#[actix_web::test]
async fn keys_expire_after_24_hours() {
    let s = app();
    let first = s.send(&contact("k")).await;
    s.clock.advance(Duration::from_secs(24 * 3600 - 1));
    let before = s.send(&contact("k")).await;
    assert!(
        before.replayed(),
        "the record is there until the 24 hours are over"
    );
    assert_eq!(before.body, first.body);
    s.clock.advance(Duration::from_secs(1));
    assert!(!s.send(&contact("k")).await.replayed());
    assert_eq!(s.runs.get(), 2);
}

#[actix_web::test]
async fn the_api_key_header_is_required_for_keyed_requests() {
    let s = app();
    let anonymous = RawRequest::post("/api/v1/developers/contacts")
        .header("Authorization", "Bearer not-the-api-key")
        .header("Idempotency-Key", "k")
        .json(&json!({"name": "x"}));
    let res = s.send(&anonymous).await;
    assert_type_error(&res, 400, "idempotency_scope_missing");
}

#[actix_web::test]
async fn a_duplicate_while_the_first_runs_is_a_409_with_a_type_field() {
    let res = app().conflicts_while_running(&contact("k1")).await;
    assert_type_error(&res, 409, "idempotency_conflict");
}

#[actix_web::test]
async fn keys_are_up_to_255_characters() {
    app().keys_up_to(255, contact).await;
}
