//! App instances sharing one store, as separate processes would share a Redis or a Redis
//! Cluster: a handler whose runs are counted and can be held back, each instance on its own
//! server with its own store, and the duplicates they must run once between them.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_web::{post, web, HttpResponse};
use futures_util::future::join_all;
use idem_actix::{idempotent, IdempotencyConfig};
use idem_core::Store;
use serde_json::json;
use tokio::sync::Semaphore;

use crate::{eventually, Counter, RawRequest, RawResponse, TestServer};

/// What the handler of [`create_call`] shares with the test: how often it ran, and a gate it
/// waits on after counting the run, so that a test can hold a request in flight.
#[derive(Clone)]
pub struct Probe {
    /// How often the handler ran, across every instance.
    pub runs: Counter,
    /// The handler takes a permit before it answers.
    pub gate: Arc<Semaphore>,
}

impl Probe {
    /// A probe whose handler answers at once.
    pub fn open() -> Self {
        Self::with_permits(10_000)
    }

    /// A probe whose handler waits until the test adds permits to [`gate`](Self::gate).
    pub fn closed() -> Self {
        Self::with_permits(0)
    }

    fn with_permits(permits: usize) -> Self {
        Self {
            runs: Counter::default(),
            gate: Arc::new(Semaphore::new(permits)),
        }
    }
}

/// `POST /v1/calls` under `#[idempotent]`: counts its run, waits for the gate, answers 201
/// with the run's number.
#[post("/v1/calls")]
#[idempotent]
pub async fn create_call(probe: web::Data<Probe>) -> HttpResponse {
    let n = probe.runs.bump();
    let _permit = probe.gate.acquire().await.expect("gate");
    HttpResponse::Created().json(json!({ "call": n }))
}

/// A call to [`create_call`] with `key`, by one tenant.
pub fn call(key: &str) -> RawRequest {
    RawRequest::post("/v1/calls")
        .header("Authorization", "Bearer tenant-1")
        .header("Idempotency-Key", key)
}

/// An app instance serving [`create_call`] with its own store (as a separate process would
/// have), built by `store` on the server's runtime, which drives the store's connection.
pub fn instance<S, F>(probe: &Probe, store: F) -> TestServer
where
    S: Store,
    F: Fn() -> S + Send + Clone + 'static,
{
    let data = web::Data::new(probe.clone());
    let (tx, rx) = std::sync::mpsc::channel();
    let server = TestServer::start(1, move |cfg| {
        let idem = IdempotencyConfig::new(store());
        let _ = tx.send(());
        cfg.app_data(idem)
            .app_data(data.clone())
            .service(create_call);
    });
    rx.recv().expect("store built");
    server
}

/// One call of key `shared-1` held in flight on the first instance while 99 duplicates go to
/// both: each duplicate gets 409, then both instances replay the first answer, which is
/// returned. `probe` must be [closed](Probe::closed); this opens it.
pub async fn duplicates_while_in_flight_get_409_then_replay(
    probe: &Probe,
    addrs: [SocketAddr; 2],
) -> RawResponse {
    let first = {
        let addr = addrs[0];
        actix_web::rt::spawn(async move { call("shared-1").send(addr).await })
    };
    eventually(|| probe.runs.get() == 1).await;
    let shared = call("shared-1");
    let during = join_all((0..99).map(|i| shared.send(addrs[i % 2]))).await;
    assert!(
        during.iter().all(|r| r.status == 409),
        "{:?}",
        during.iter().map(|r| r.status).collect::<Vec<_>>()
    );
    probe.gate.add_permits(10_000);
    let first = first.await.expect("the first call answers");
    assert_eq!(first.status, 201);
    for addr in addrs {
        let retry = call("shared-1").send(addr).await;
        assert!(retry.replayed());
        assert_eq!(retry.body, first.body);
    }
    first
}

/// Sends `request` until it answers something other than 503, for at most `within`: for a
/// store that comes back after an outage.
pub async fn until_not_503(
    addr: SocketAddr,
    request: &RawRequest,
    within: Duration,
) -> RawResponse {
    let deadline = Instant::now() + within;
    loop {
        let res = request.send(addr).await;
        if res.status != 503 || Instant::now() >= deadline {
            return res;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
