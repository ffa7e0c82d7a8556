//! Soak: sustained mixed traffic against `calls-api` processes over loopback (new keys,
//! replays, conflicts, carrier 5xx, clients that reset mid-request), then an audit: every key
//! placed at most one call, and every completed key replays its first answer byte for byte.
//!
//! Two processes sharing Redis are soaked through faults as well: Redis refuses writes now
//! and then (so claims answer 503, and completions fail and are retried while their claims are
//! kept), and one process is stopped gracefully (SIGTERM) and started again, again and again. A client that loses its connection cannot tell whether its request ran: it retries
//! with the same key, on either process, until it gets an answer.
//!
//! The audit counts the calls each process reports placing (one line on its standard output
//! per call), so that calls placed by a process that was since restarted still count.
//!
//! Bounded in time: `IDEM_SOAK_SECS` (default 10); `IDEM_SOAK_SECS=300` for a long run.

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{CallsApi, Log};
use idem_tests::fuzz::Rng;
use idem_tests::{RawRequest, RawResponse, TestRedis};
use serde_json::json;

const TENANTS: [&str; 2] = ["soak-a", "soak-b"];
const CLIENTS: usize = 12;
const PHONE: &str = "+15555550123";

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

/// An answer that says nothing of the operation: the store was unreachable or the server too
/// busy (nothing ran), or the first request with the key is still running.
fn transient(res: &RawResponse) -> bool {
    let code = || res.json()["error"]["code"].as_str().map(str::to_owned);
    match res.status {
        503 => matches!(
            code().as_deref(),
            Some("idempotency_store_unavailable" | "idempotency_overloaded")
        ),
        // In flight, as opposed to a mismatch: it says when to retry.
        409 => res.header("retry-after").is_some(),
        _ => false,
    }
}

/// The processes' addresses, and where each client sends first.
struct Fleet {
    addrs: Vec<SocketAddr>,
}

/// An answer that says what became of the operation: `request` is sent (to `first`, then to
/// any process) until the answer is neither a lost connection nor a transient refusal. Whether
/// an earlier attempt may have run it (a lost connection) is returned with it.
async fn settled(fleet: &Fleet, first: usize, request: &RawRequest) -> (RawResponse, bool) {
    let mut ambiguous = false;
    let mut last = String::new();
    for attempt in 0..1000 {
        let addr = fleet.addrs[(first + attempt) % fleet.addrs.len()];
        match request.try_send(addr).await {
            Ok(res) if !transient(&res) => return (res, ambiguous),
            Ok(res) => last = format!("{} {}", res.status, String::from_utf8_lossy(&res.body)),
            Err(error) => {
                ambiguous = true;
                last = error.to_string();
            }
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("no answer for a request after 1000 attempts; the last: {last}");
}

async fn client(fleet: Arc<Fleet>, ledger: Arc<Mutex<Ledger>>, id: usize, until: Instant) {
    let home = id % fleet.addrs.len();
    let addr = || fleet.addrs[home];
    let mut rng = Rng::new(0xc0ffee + id as u64);
    let tenant = id % TENANTS.len();
    let mut mine: Vec<String> = Vec::new();
    let mut n = 0;
    // The first answer to a new key: not a replay, unless an earlier attempt may have run it.
    let first_answer = |res: &RawResponse, ambiguous: bool| {
        assert_eq!(res.status, 201, "{}", String::from_utf8_lossy(&res.body));
        assert!(
            ambiguous || !res.replayed(),
            "a new key's first answer is not a replay"
        );
    };
    while Instant::now() < until {
        n += 1;
        let key = format!("soak-{id}-{n}");
        let roll = rng.next_u64() % 100;
        match roll {
            // A new operation, sometimes slow.
            0..=39 => {
                let delay = (rng.next_u64() % 20).to_string();
                let request = create(tenant, &key, PHONE).header("X-Simulate-Delay-Ms", &delay);
                let (res, ambiguous) = settled(&fleet, home, &request).await;
                first_answer(&res, ambiguous);
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
                let (res, _) = settled(&fleet, home, &create(tenant, old, PHONE)).await;
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
                let (res, _) = settled(&fleet, home, &create(tenant, old, "+15555550999")).await;
                assert_eq!(res.status, 409);
                assert_eq!(res.json()["error"]["code"], "idempotency_conflict");
            }
            // The carrier fails: nothing is created, and the retry runs.
            75..=84 => {
                let failing = create(tenant, &key, PHONE).header("X-Simulate-Status", "503");
                let (res, _) = settled(&fleet, home, &failing).await;
                assert_eq!(res.status, 503);
                assert_eq!(res.json()["error"]["code"], "carrier_unavailable");
                let (retry, ambiguous) = settled(&fleet, home, &create(tenant, &key, PHONE)).await;
                first_answer(&retry, ambiguous);
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
                let sent = request
                    .try_send_and_reset(addr(), move || {
                        started.elapsed() > Duration::from_millis(10)
                    })
                    .await;
                // Sent or not (its process restarting), the key is settled at the audit.
                let _ = sent;
                ledger.lock().unwrap().abandoned.push((tenant, key));
            }
            // A duplicate while the first is still running.
            _ => {
                let slow = create(tenant, &key, PHONE).header("X-Simulate-Delay-Ms", "100");
                let ((first, ambiguous), second) =
                    futures_util::join!(settled(&fleet, home, &slow), async {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        create(tenant, &key, PHONE).try_send(addr()).await
                    });
                // Usually the slow one is first; on a loaded machine, or when the store
                // refused it for a while, the second can overtake it.
                let overtaken = first.replayed();
                first_answer(&first, ambiguous || overtaken);
                if let Ok(second) = second {
                    assert!(
                        second.status == 409
                            || second.status == 503
                            || (second.status == 201 && (overtaken || second.replayed())),
                        "{}",
                        second.status
                    );
                }
                ledger
                    .lock()
                    .unwrap()
                    .completed
                    .insert((tenant, key.clone()), first.body);
                mine.push(key);
            }
        }
        ledger.lock().unwrap().requests += 1;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sustained_mixed_traffic_runs_every_key_at_most_once() {
    let log = Log::default();
    let api = CallsApi::start_logged(None, &[], &log).await;
    let fleet = Fleet {
        addrs: vec![api.addr],
    };
    soak(fleet, &log, None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn processes_sharing_redis_through_store_faults_and_restarts_run_every_key_at_most_once() {
    soak_on_redis().await;
}

/// Soaks two processes sharing a Redis of their own, through its faults.
async fn soak_on_redis() {
    let Some(redis) = TestRedis::start_owned() else {
        return;
    };
    let redis = Arc::new(redis);
    let log = Log::default();
    let url = redis.url().to_owned();
    let args = ["--redis-url", url.as_str()];
    let a = CallsApi::start_logged(None, &args, &log).await;
    let b = CallsApi::start_logged(None, &args, &log).await;
    let fleet = Fleet {
        addrs: vec![a.addr, b.addr],
    };
    let faults = Faults {
        redis: Arc::clone(&redis),
        restart: b,
        args: vec!["--redis-url".to_owned(), url.clone()],
    };
    soak(fleet, &log, Some(faults)).await;
    drop(a);
}

/// What the Redis soak does to the fleet while its clients run.
struct Faults {
    redis: Arc<TestRedis>,
    /// The process restarted again and again.
    restart: CallsApi,
    args: Vec<String>,
}

impl Faults {
    /// Until `until`: Redis refuses writes for 300 ms every 1.5 s, and the restarted process
    /// is stopped with SIGTERM and started again every 2.5 s. The number of each.
    /// The restarted process is handed back, to live until the audit is done.
    async fn run(mut self, log: Log, until: Instant) -> (usize, usize, CallsApi) {
        let redis = Arc::clone(&self.redis);
        let pauses = tokio::spawn(async move {
            let mut pauses = 0;
            while Instant::now() + Duration::from_millis(1500) < until {
                tokio::time::sleep(Duration::from_millis(1500)).await;
                let redis = Arc::clone(&redis);
                tokio::task::spawn_blocking(move || {
                    redis.refuse_writes(Duration::from_millis(300))
                })
                .await
                .unwrap();
                pauses += 1;
            }
            pauses
        });
        let mut restarts = 0;
        while Instant::now() + Duration::from_millis(2500) < until {
            tokio::time::sleep(Duration::from_millis(2500)).await;
            assert!(
                self.restart.terminate().await,
                "a graceful stop exits cleanly"
            );
            let args: Vec<&str> = self.args.iter().map(String::as_str).collect();
            self.restart = CallsApi::start_logged(Some(self.restart.addr), &args, &log).await;
            restarts += 1;
        }
        (pauses.await.unwrap(), restarts, self.restart)
    }
}

/// Runs the clients against the fleet (spread over it), with `faults` if any, then audits.
async fn soak(fleet: Fleet, log: &Log, faults: Option<Faults>) {
    let secs = std::env::var("IDEM_SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10);
    let fleet = Arc::new(fleet);
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let until = Instant::now() + Duration::from_secs(secs);
    let faults = faults.map(|f| tokio::spawn(f.run(Arc::clone(log), until)));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|id| tokio::spawn(client(Arc::clone(&fleet), Arc::clone(&ledger), id, until)))
        .collect();
    for c in clients {
        c.await.expect("a client's expectations held");
    }
    let (pauses, restarts, _restarted) = match faults {
        Some(faults) => {
            let (pauses, restarts, process) = faults.await.expect("the faults ran");
            (pauses, restarts, Some(process))
        }
        None => (0, 0, None),
    };

    let mut ledger = std::mem::take(&mut *ledger.lock().unwrap());

    // Settle the abandoned keys: each either ran (and replays) or never started (and runs now).
    let abandoned = std::mem::take(&mut ledger.abandoned);
    for (tenant, key) in &abandoned {
        let (res, _) = settled(&fleet, 0, &create(*tenant, key, PHONE)).await;
        assert_eq!(res.status, 201);
        ledger.completed.insert((*tenant, key.clone()), res.body);
    }

    // Audit: every key placed at most one call across the processes and their restarts
    // (exactly one for the completed ones)...
    let mut placed: HashMap<String, usize> = HashMap::new();
    for line in log.lock().unwrap().iter() {
        if let Some((_, agent)) = line.split_once(" for agent ") {
            *placed.entry(agent.to_owned()).or_default() += 1;
        }
    }
    for (key, count) in &placed {
        assert_eq!(*count, 1, "key {key} placed {count} calls");
    }
    for (_, key) in ledger.completed.keys() {
        assert_eq!(
            placed.get(key),
            Some(&1),
            "completed key {key} placed no call"
        );
    }
    // ...and every completed key still replays its first answer.
    for ((tenant, key), first) in &ledger.completed {
        let (res, _) = settled(&fleet, 0, &create(*tenant, key, PHONE)).await;
        assert!(res.replayed(), "{key}");
        assert_eq!(&res.body, first, "{key} replays identically");
    }
    eprintln!(
        "soak: {} processes, {} requests over {secs} s, {} keys completed, {} abandoned mid-request, {pauses} store outages, {restarts} graceful restarts",
        fleet.addrs.len(),
        ledger.requests,
        ledger.completed.len(),
        abandoned.len()
    );
}
