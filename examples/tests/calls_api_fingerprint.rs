//! `calls-api`'s `POST /v1/calls` compares bodies as JSON (`fingerprint = "json"`): the same
//! call sent again with its members in another order, or other whitespace, replays; another
//! phone number is still another request; a body that is not JSON is the API's to answer.

use actix_web::web;
use idem_examples::calls_api::{configure, CallsState};
use idem_tests::{assert_error, RawRequest, TestServer};

fn start() -> (TestServer, web::Data<CallsState>) {
    let state = web::Data::new(CallsState::default());
    let idem = idem_actix::IdempotencyConfig::new(idem_actix::MokaStore::new());
    let routes = configure(state.clone());
    let server = TestServer::start(1, move |cfg| {
        cfg.app_data(idem.clone());
        routes(cfg);
    });
    (server, state)
}

fn create(key: &str, body: &str) -> RawRequest {
    RawRequest::post("/v1/calls")
        .header("Authorization", "Bearer tenant-1")
        .header("Content-Type", "application/json")
        .header("Idempotency-Key", key)
        .body(body)
}

#[actix_web::test]
async fn the_same_call_in_another_key_order_or_whitespace_replays() {
    let (server, _) = start();
    let first = create(
        "call-1",
        r#"{"agent_id":"agent_demo0001","phone_number":"+15555550123"}"#,
    )
    .send(server.addr)
    .await;
    assert_eq!(first.status, 201);
    let retry = create(
        "call-1",
        "{\n  \"phone_number\": \"+15555550123\",\n  \"agent_id\": \"agent_demo0001\"\n}\n",
    )
    .send(server.addr)
    .await;
    assert_eq!(retry.status, 201);
    assert!(retry.replayed());
    assert_eq!(retry.body, first.body);
    assert_eq!(retry.header("location"), first.header("location"));

    let list = RawRequest::get("/v1/calls")
        .header("Authorization", "Bearer tenant-1")
        .send(server.addr)
        .await;
    assert_eq!(list.json()["data"].as_array().unwrap().len(), 1, "one call");
}

#[actix_web::test]
async fn another_phone_number_is_still_a_conflict() {
    let (server, _) = start();
    create(
        "call-2",
        r#"{"agent_id":"agent_demo0001","phone_number":"+15555550123"}"#,
    )
    .send(server.addr)
    .await;
    let other = create(
        "call-2",
        r#"{"phone_number":"+15555550199","agent_id":"agent_demo0001"}"#,
    )
    .send(server.addr)
    .await;
    assert_error(&other, 409, "idempotency_conflict");
}

/// A body that is not JSON is the API's to answer, with a key as without one (its
/// `invalid_json`), and creates nothing: the corrected call under that key is placed.
#[actix_web::test]
async fn a_body_that_is_not_json_is_answered_by_the_api_and_the_corrected_call_is_placed() {
    let (server, state) = start();
    let broken = create("call-3", r#"{"agent_id":"agent_demo0001","#)
        .send(server.addr)
        .await;
    assert_eq!(broken.status, 400);
    assert!(
        broken.text().contains(r#""code":"invalid_json""#),
        "{}",
        broken.text()
    );
    assert_eq!(state.call_count(), 0);
    let fixed = create(
        "call-3",
        r#"{"agent_id":"agent_demo0001","phone_number":"+15555550123"}"#,
    )
    .send(server.addr)
    .await;
    assert_eq!(fixed.status, 201, "{}", fixed.text());
    assert_eq!(state.call_count(), 1);
}
