//! Exactly once under concurrency and disconnects, over real loopback connections to a
//! server with several workers.

use std::sync::Arc;

use actix_web::{post, web, HttpResponse};
use futures_util::future::join_all;
use idem_actix::{idempotent, IdempotencyConfig, MokaStore};
use idem_tests::{eventually, until_orphaned, Counter, RawRequest, TestServer};
use serde_json::json;
use tokio::sync::Semaphore;

#[derive(Clone)]
struct Probe {
    started: Counter,
    finished: Counter,
    /// Handlers wait for a permit before they finish.
    gate: Arc<Semaphore>,
}

#[post("/v1/calls")]
#[idempotent]
async fn create_call(probe: web::Data<Probe>, body: web::Json<serde_json::Value>) -> HttpResponse {
    let n = probe.started.bump();
    let _permit = probe.gate.acquire().await.expect("gate open");
    probe.finished.bump();
    HttpResponse::Created().json(json!({ "call": n, "to": body["to"] }))
}

#[post("/v1/waiting")]
#[idempotent(in_flight = "wait", wait_timeout = "20s")]
async fn create_waiting(probe: web::Data<Probe>) -> HttpResponse {
    let n = probe.started.bump();
    let _permit = probe.gate.acquire().await.expect("gate open");
    probe.finished.bump();
    HttpResponse::Created().json(json!({ "call": n }))
}

impl Default for Probe {
    fn default() -> Self {
        Self {
            started: Counter::default(),
            finished: Counter::default(),
            gate: Arc::new(Semaphore::new(0)),
        }
    }
}

fn server(probe: &Probe) -> TestServer {
    server_with(probe, 2, IdempotencyConfig::new(MokaStore::new()))
}

fn server_with(probe: &Probe, workers: usize, idem: IdempotencyConfig) -> TestServer {
    let data = web::Data::new(probe.clone());
    TestServer::start(workers, move |cfg| {
        cfg.app_data(idem.clone())
            .app_data(data.clone())
            .service(create_call)
            .service(create_waiting);
    })
}

fn call(key: &str) -> RawRequest {
    RawRequest::post("/v1/calls")
        .header("Authorization", "Bearer tenant-1")
        .header("Idempotency-Key", key)
        .json(&json!({ "to": "+15555550123" }))
}

#[actix_web::test]
async fn a_hundred_concurrent_duplicates_execute_once() {
    let probe = Probe::default();
    let server = server(&probe);
    let request = call("burst-1");
    let first = {
        let (request, addr) = (request.clone(), server.addr);
        actix_web::rt::spawn(async move { request.send(addr).await })
    };
    eventually(|| probe.started.get() == 1).await;

    // 99 more arrive while the first runs: all are told it is in flight.
    let duplicates = join_all((0..99).map(|_| request.send(server.addr))).await;
    for res in &duplicates {
        assert_eq!(res.status, 409, "{:?}", String::from_utf8_lossy(&res.body));
        assert_eq!(res.json()["error"]["code"], "idempotency_conflict");
        assert_eq!(res.header("retry-after"), Some("1"));
    }

    probe.gate.add_permits(1000);
    let first = first.await.unwrap();
    assert_eq!(first.status, 201);
    assert!(!first.replayed());

    // Retries after completion replay the first answer byte for byte.
    let retries = join_all((0..20).map(|_| request.send(server.addr))).await;
    for res in &retries {
        assert_eq!(res.status, 201);
        assert!(res.replayed());
        assert_eq!(res.body, first.body);
    }
    assert_eq!(probe.started.get(), 1);
    assert_eq!(probe.finished.get(), 1);
}

#[actix_web::test]
async fn a_hundred_simultaneous_duplicates_execute_once() {
    // No ordering at all: every request races for the claim.
    let probe = Probe::default();
    probe.gate.add_permits(1000);
    let server = server(&probe);
    let request = call("burst-2");
    let responses = join_all((0..100).map(|_| request.send(server.addr))).await;
    assert_eq!(probe.started.get(), 1, "the handler ran more than once");
    let executed: Vec<_> = responses
        .iter()
        .filter(|r| r.status == 201 && !r.replayed())
        .collect();
    assert_eq!(executed.len(), 1);
    for res in &responses {
        match res.status {
            201 => assert_eq!(res.body, executed[0].body),
            409 => assert_eq!(res.json()["error"]["code"], "idempotency_conflict"),
            other => panic!("unexpected status {other}"),
        }
    }
}

#[actix_web::test]
async fn waiting_duplicates_all_get_the_first_response() {
    let probe = Probe::default();
    let server = server(&probe);
    let request = RawRequest::post("/v1/waiting")
        .header("X-API-Key", "k")
        .header("Idempotency-Key", "wait-1");
    let all = {
        let (request, addr) = (request.clone(), server.addr);
        actix_web::rt::spawn(async move { join_all((0..100).map(|_| request.send(addr))).await })
    };
    eventually(|| probe.started.get() == 1).await;
    probe.gate.add_permits(1000);
    let responses = all.await.unwrap();
    assert_eq!(probe.started.get(), 1);
    assert!(responses
        .iter()
        .all(|r| r.status == 201 && r.body == responses[0].body));
    assert_eq!(responses.iter().filter(|r| !r.replayed()).count(), 1);
}

#[actix_web::test]
async fn a_client_that_disconnects_mid_handler_does_not_cancel_the_operation() {
    let probe = Probe::default();
    // One worker, which finishes one run at most for clients that went away: a refusal tells
    // when the run goes on by itself.
    let idem = IdempotencyConfig::new(MokaStore::new()).with_max_detached(1);
    let server = server_with(&probe, 1, idem);
    let request = call("dropped-1");

    // The client resets its connection while the handler runs.
    request
        .send_and_reset(server.addr, || probe.started.get() == 1)
        .await;

    // While it still runs, a retry is told so, until the server has let go of the reset
    // connection (then, with its one run for clients gone taken, keys are refused).
    let during = request.send(server.addr).await;
    let code = during.json()["error"]["code"].clone();
    assert!(
        matches!(
            (during.status, code.as_str()),
            (409, Some("idempotency_conflict")) | (503, Some("idempotency_overloaded"))
        ),
        "{} {code}",
        during.status
    );
    until_orphaned(server.addr, &request).await;

    // The operation finishes anyway and is recorded.
    probe.gate.add_permits(1000);
    eventually(|| probe.finished.get() == 1).await;
    let mut retry = request.send(server.addr).await;
    for _ in 0..100 {
        // In flight (409), or refused while the run still counts as one left to finish (503).
        if retry.status != 409 && retry.status != 503 {
            break;
        }
        // Recording follows the handler's return by a moment.
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        retry = request.send(server.addr).await;
    }
    assert_eq!(retry.status, 201);
    assert!(retry.replayed());
    assert_eq!(retry.json()["call"], 1);
    assert_eq!(probe.started.get(), 1, "the operation ran twice");
}
