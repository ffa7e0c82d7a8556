//! Seed document: `seeds/000_46d09d6a0533d492.txt` (Speechify).
//!
//! `Idempotency-Key` up to 255 characters, 24 h replay per API key, 409
//! `idempotency_conflict` on a different body and while running, server errors release the
//! claim, `Idempotent-Replayed: true`. All of it is `#[idempotent]` with no arguments.

use std::sync::Arc;
use std::time::Duration;

use actix_web::{post, web, HttpRequest, HttpResponse};
use idem_actix::clock::{ManualClock, Timestamp};
use idem_actix::{idempotent, IdempotencyConfig, MokaStore};
use idem_tests::{assert_error, eventually, Counter, RawRequest, TestServer};
use serde_json::json;
use tokio::sync::Semaphore;

#[derive(Clone)]
struct Probe {
    runs: Counter,
    gate: Arc<Semaphore>,
}

#[post("/v1/agents/outbound-calls")]
#[idempotent]
async fn outbound_call(
    probe: web::Data<Probe>,
    req: HttpRequest,
    body: web::Json<serde_json::Value>,
) -> HttpResponse {
    let n = probe.runs.bump();
    if req.headers().contains_key("x-block") {
        let _permit = probe.gate.acquire().await.unwrap();
    }
    if req.headers().contains_key("x-fail") {
        return HttpResponse::BadGateway().json(json!({"error": {"code": "carrier_down"}}));
    }
    if req.headers().contains_key("x-reject") {
        return HttpResponse::BadRequest().json(json!({"error": {"code": "invalid_agent"}}));
    }
    HttpResponse::Created().json(json!({ "data": { "call": n, "agent_id": body["agent_id"] } }))
}

struct Setup {
    server: TestServer,
    probe: Probe,
    clock: ManualClock,
}

fn setup() -> Setup {
    let probe = Probe {
        runs: Counter::default(),
        gate: Arc::new(Semaphore::new(0)),
    };
    let clock = ManualClock::new(Timestamp::from_millis(1_700_000_000_000));
    let idem = IdempotencyConfig::new(MokaStore::new()).with_clock(clock.clone());
    let data = web::Data::new(probe.clone());
    let server = TestServer::start(1, move |cfg| {
        cfg.app_data(idem.clone())
            .app_data(data.clone())
            .service(outbound_call);
    });
    Setup {
        server,
        probe,
        clock,
    }
}

fn call(key: &str, agent: &str) -> RawRequest {
    call_as("sk_test_1", key, agent)
}

fn call_as(api_key: &str, key: &str, agent: &str) -> RawRequest {
    RawRequest::post("/v1/agents/outbound-calls")
        .header("Authorization", &format!("Bearer {api_key}"))
        .header("Idempotency-Key", key)
        .json(&json!({ "agent_id": agent, "phone_number": "+15555550123" }))
}

#[actix_web::test]
async fn same_key_same_body_replays_the_first_response_for_24_hours() {
    let s = setup();
    let first = call("4c7f0a78-0a61-42b4-8b8a-60b307b18f0c", "agent_demo0001")
        .send(s.server.addr)
        .await;
    assert_eq!(first.status, 201);
    assert!(!first.replayed());
    s.clock.advance(Duration::from_secs(24 * 3600 - 1));
    let retry = call("4c7f0a78-0a61-42b4-8b8a-60b307b18f0c", "agent_demo0001")
        .send(s.server.addr)
        .await;
    assert_eq!(retry.status, 201);
    assert!(retry.replayed());
    assert_eq!(retry.body, first.body);
    assert_eq!(retry.header("content-type"), Some("application/json"));
    assert_eq!(s.probe.runs.get(), 1);

    s.clock.advance(Duration::from_secs(1));
    let after = call("4c7f0a78-0a61-42b4-8b8a-60b307b18f0c", "agent_demo0001")
        .send(s.server.addr)
        .await;
    assert!(!after.replayed(), "a key is new again after 24 hours");
    assert_eq!(s.probe.runs.get(), 2);
}

#[actix_web::test]
async fn same_key_different_body_is_a_409_conflict_in_the_error_envelope() {
    let s = setup();
    call("k1", "agent_a").send(s.server.addr).await;
    let res = call("k1", "agent_b").send(s.server.addr).await;
    let message = assert_error(&res, 409, "idempotency_conflict");
    assert!(message.contains("different request"), "{message}");
    assert_eq!(s.probe.runs.get(), 1);
}

#[actix_web::test]
async fn same_key_while_running_is_a_409_conflict() {
    let s = setup();
    let first = {
        let addr = s.server.addr;
        actix_web::rt::spawn(async move { call("k1", "a").header("X-Block", "1").send(addr).await })
    };
    eventually(|| s.probe.runs.get() == 1).await;
    let res = call("k1", "a").send(s.server.addr).await;
    let message = assert_error(&res, 409, "idempotency_conflict");
    assert!(message.contains("still being processed"), "{message}");
    assert!(res.header("retry-after").is_some());
    s.probe.gate.add_permits(1);
    assert_eq!(first.await.unwrap().status, 201);
}

#[actix_web::test]
async fn a_server_error_releases_the_claim_so_a_retry_runs() {
    let s = setup();
    let failed = call("k1", "a")
        .header("X-Fail", "1")
        .send(s.server.addr)
        .await;
    assert_eq!(failed.status, 502);
    let retry = call("k1", "a").send(s.server.addr).await;
    assert_eq!(retry.status, 201);
    assert!(!retry.replayed());
    assert_eq!(s.probe.runs.get(), 2);
}

#[actix_web::test]
async fn keys_are_up_to_255_characters() {
    let s = setup();
    let longest = "k".repeat(255);
    assert_eq!(call(&longest, "a").send(s.server.addr).await.status, 201);
    let res = call(&"k".repeat(256), "a").send(s.server.addr).await;
    assert_error(&res, 400, "idempotency_key_invalid");
    assert_eq!(s.probe.runs.get(), 1);
}

#[actix_web::test]
async fn keys_are_scoped_per_api_key() {
    let s = setup();
    let a = call_as("sk_test_1", "shared", "a")
        .send(s.server.addr)
        .await;
    let other = call_as("sk_test_2", "shared", "a")
        .send(s.server.addr)
        .await;
    assert_eq!(other.status, 201);
    assert!(!other.replayed());
    assert_ne!(other.body, a.body);
    assert_eq!(s.probe.runs.get(), 2);
    let again = call_as("sk_test_1", "shared", "a")
        .send(s.server.addr)
        .await;
    assert!(again.replayed());
    assert_eq!(again.body, a.body);
}

#[actix_web::test]
async fn requests_without_a_key_run_every_time() {
    let s = setup();
    let plain = || {
        RawRequest::post("/v1/agents/outbound-calls")
            .header("Authorization", "Bearer sk_test_1")
            .json(&json!({ "agent_id": "a" }))
    };
    let one = plain().send(s.server.addr).await;
    let two = plain().send(s.server.addr).await;
    assert_eq!((one.status, two.status), (201, 201));
    assert!(!one.replayed() && !two.replayed());
    assert_eq!(s.probe.runs.get(), 2);
}

#[actix_web::test]
async fn a_client_error_is_stored_and_replayed() {
    let s = setup();
    let first = call("k-4xx", "agent_1")
        .header("X-Reject", "1")
        .send(s.server.addr)
        .await;
    assert_eq!(first.status, 400);
    let retry = call("k-4xx", "agent_1").send(s.server.addr).await;
    assert!(retry.replayed(), "every status but a 5xx is stored");
    assert_eq!((retry.status, retry.body), (400, first.body));
    assert_eq!(s.probe.runs.get(), 1);
}
