//! Soak: sustained mixed traffic against a `calls-api` process over loopback (new keys, replays,
//! conflicts, carrier 5xx, clients that reset mid-request), then an audit: every key created at
//! most one call, and every completed key replays its first answer byte for byte.
//!
//! Bounded in time: `IDEM_SOAK_SECS` (default 10); `IDEM_SOAK_SECS=300` for a long run.

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::CallsApi;
use idem_tests::fuzz::Rng;
use idem_tests::{RawRequest, RawResponse};
use serde_json::json;

const TENANTS: [&str; 2] = ["soak-a", "soak-b"];
const CLIENTS: usize = 12;

#[derive(Default)]
struct Ledger {
    /// The first answer of each completed key, by tenant and key.
    completed: HashMap<(usize, String), Vec<u8>>,
    /// Keys whose client went away mid-request, to settle at the audit.
    abandoned: Vec<(usize, String)>,
    requests: usize,
}

fn create(tenant: usize, key: &str, phone: &str) -> RawRequest {
    RawRequest::post("/v1/calls")
        .header("Authorization", &format!("Bearer {}", TENANTS[tenant]))
        .header("Idempotency-Key", key)
        .json(&json!({ "agent_id": key, "phone_number": phone }))
}

const PHONE: &str = "+15555550123";

async fn client(apis: Arc<Vec<CallsApi>>, ledger: Arc<Mutex<Ledger>>, id: usize, until: Instant) {
    let api = &apis[id % apis.len()];
    let mut rng = Rng::new(0xc0ffee + id as u64);
    let tenant = id % TENANTS.len();
    let mut mine: Vec<String> = Vec::new();
    let mut n = 0;
    while Instant::now() < until {
        n += 1;
        let key = format!("soak-{id}-{n}");
        let roll = rng.next_u64() % 100;
        let expect_first = |res: &RawResponse| {
            assert_eq!(res.status, 201, "{}", String::from_utf8_lossy(&res.body));
            assert!(!res.replayed());
        };
        match roll {
            // A new operation, sometimes slow.
            0..=39 => {
                let delay = (rng.next_u64() % 20).to_string();
                let res = create(tenant, &key, PHONE)
                    .header("X-Simulate-Delay-Ms", &delay)
                    .send(api.addr)
                    .await;
                expect_first(&res);
                ledger
                    .lock()
                    .unwrap()
                    .completed
                    .insert((tenant, key.clone()), res.body);
                mine.push(key);
            }
            // A retry of a completed operation.
            40..=64 if !mine.is_empty() => {
                let old = &mine[rng.next_u64() as usize % mine.len()];
                let res = create(tenant, old, PHONE).send(api.addr).await;
                assert_eq!(res.status, 201);
                assert!(res.replayed(), "a retry replays");
                let first = ledger.lock().unwrap().completed[&(tenant, old.clone())].clone();
                assert_eq!(
                    res.body, first,
                    "a replay is byte for byte the first answer"
                );
            }
            // A reused key with another request.
            65..=74 if !mine.is_empty() => {
                let old = &mine[rng.next_u64() as usize % mine.len()];
                let res = create(tenant, old, "+15555550999").send(api.addr).await;
                assert_eq!(res.status, 409);
                assert_eq!(res.json()["error"]["code"], "idempotency_conflict");
            }
            // The carrier fails: nothing is created, and the retry runs.
            75..=84 => {
                let res = create(tenant, &key, PHONE)
                    .header("X-Simulate-Status", "503")
                    .send(api.addr)
                    .await;
                assert_eq!(res.status, 503);
                let retry = create(tenant, &key, PHONE).send(api.addr).await;
                expect_first(&retry);
                ledger
                    .lock()
                    .unwrap()
                    .completed
                    .insert((tenant, key.clone()), retry.body);
                mine.push(key);
            }
            // The client goes away while the call is being placed.
            85..=94 => {
                let request = create(tenant, &key, PHONE).header("X-Simulate-Delay-Ms", "50");
                let started = Instant::now();
                request
                    .send_and_reset(api.addr, move || {
                        started.elapsed() > Duration::from_millis(10)
                    })
                    .await;
                ledger.lock().unwrap().abandoned.push((tenant, key));
            }
            // A duplicate while the first is still running.
            _ => {
                let slow = create(tenant, &key, PHONE).header("X-Simulate-Delay-Ms", "100");
                let (first, second) = futures_util::join!(slow.send(api.addr), async {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    create(tenant, &key, PHONE).send(api.addr).await
                });
                // Usually the slow one is first; on a loaded machine the second can overtake it.
                let (ran, other) = match first.status == 409 || first.replayed() {
                    true => (second, first),
                    false => (first, second),
                };
                expect_first(&ran);
                assert!(
                    other.status == 409 || (other.replayed() && other.body == ran.body),
                    "{}",
                    other.status
                );
                ledger
                    .lock()
                    .unwrap()
                    .completed
                    .insert((tenant, key.clone()), ran.body);
                mine.push(key);
            }
        }
        ledger.lock().unwrap().requests += 1;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sustained_mixed_traffic_runs_every_key_at_most_once() {
    soak(vec![CallsApi::start(None).await]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_sharing_redis_run_every_key_at_most_once() {
    let Some(redis) = idem_tests::TestRedis::start() else {
        return;
    };
    let apis = vec![
        CallsApi::start(Some(redis.url())).await,
        CallsApi::start(Some(redis.url())).await,
    ];
    soak(apis).await;
}

/// Runs the clients against `apis` (spread over them), then audits.
async fn soak(apis: Vec<CallsApi>) {
    let secs = std::env::var("IDEM_SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10);
    let apis = Arc::new(apis);
    let api = &apis[0];
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let until = Instant::now() + Duration::from_secs(secs);
    let clients: Vec<_> = (0..CLIENTS)
        .map(|id| tokio::spawn(client(Arc::clone(&apis), Arc::clone(&ledger), id, until)))
        .collect();
    for c in clients {
        c.await.expect("a client's expectations held");
    }

    let mut ledger = std::mem::take(&mut *ledger.lock().unwrap());

    // Settle the abandoned keys: each either ran (and replays) or never started (and runs now).
    let abandoned = std::mem::take(&mut ledger.abandoned);
    for (tenant, key) in &abandoned {
        let mut res = create(*tenant, key, PHONE).send(api.addr).await;
        for _ in 0..100 {
            if res.status != 409 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
            res = create(*tenant, key, PHONE).send(api.addr).await;
        }
        assert_eq!(res.status, 201);
        ledger.completed.insert((*tenant, key.clone()), res.body);
    }

    // Audit: every key created at most one call across the processes (exactly one for the
    // completed ones)...
    for (tenant, name) in TENANTS.iter().enumerate() {
        let mut per_key: HashMap<String, usize> = HashMap::new();
        for process in apis.iter() {
            let list = RawRequest::get("/v1/calls")
                .header("Authorization", &format!("Bearer {name}"))
                .send(process.addr)
                .await
                .json();
            for call in list["data"].as_array().unwrap() {
                *per_key
                    .entry(call["agent_id"].as_str().unwrap().to_owned())
                    .or_default() += 1;
            }
        }
        for (key, count) in &per_key {
            assert_eq!(*count, 1, "key {key} of {name} ran {count} times");
        }
        for (t, key) in ledger.completed.keys() {
            if *t == tenant {
                assert_eq!(
                    per_key.get(key),
                    Some(&1),
                    "completed key {key} created no call"
                );
            }
        }
    }
    // ...and every completed key still replays its first answer.
    for ((tenant, key), first) in &ledger.completed {
        let res = create(*tenant, key, PHONE).send(api.addr).await;
        assert!(res.replayed(), "{key}");
        assert_eq!(&res.body, first, "{key} replays identically");
    }
    eprintln!(
        "soak: {} processes, {} requests over {secs} s, {} keys completed, {} abandoned mid-request",
        apis.len(),
        ledger.requests,
        ledger.completed.len(),
        abandoned.len()
    );
}
