//! The engine against a reference model: random interleavings of claims, completions,
//! releases, lease renewals and the passing of time, over several keys and scopes, from two
//! processes (engines) sharing one store. After every step the engines must answer exactly as
//! the model does; so two holders never run at once, a response is never replayed for another
//! request, and no completed record is lost before its TTL. Each sequence runs twice: on the
//! store itself, and with each process's [`ReplayCache`] in front of it, which must not change
//! an answer (a copy kept past its record's expiry would replay where the store runs anew).
//!
//! Time is the engines' (a [`ManualClock`]): a store judges claims and records by the time it
//! is given, so a remote store's scripts and queries are checked as the embedded store is.
//! (Redis also drops a key by its own clock, a record at its TTL and a claim a grace after its
//! lease, which a run here never reaches in real time.)

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use idem_core::clock::{ManualClock, Timestamp};
use idem_core::store::{ReplayCache, LAPSED_CLAIM_GRACE};
use idem_core::{
    Begin, Engine, Fingerprint, IdempotencyError, Lease, Outcome, Policy, Response, Store, StoreKey,
};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

const LEASE: u64 = 30;
const TTL: u64 = 100;

#[derive(Clone, Debug)]
enum Op {
    /// A request for key `key` of scope `scope`, with one of two bodies, to one of two
    /// processes (engines) sharing the store.
    Begin {
        scope: u8,
        key: u8,
        body: u8,
        process: usize,
    },
    /// The `holder`-th claim so far finishes with a status.
    Finish { holder: usize, status: u16 },
    /// The `holder`-th claim releases its key.
    Release { holder: usize },
    /// The `holder`-th claim renews its lease.
    Renew { holder: usize },
    /// Time passes.
    Advance { secs: u64 },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..2u8, 0..3u8, 0..2u8, 0..2usize).prop_map(|(scope, key, body, process)| Op::Begin {
            scope,
            key,
            body,
            process
        }),
        3 => (0..8usize, prop_oneof![Just(201u16), Just(409), Just(503)])
            .prop_map(|(holder, status)| Op::Finish { holder, status }),
        1 => (0..8usize).prop_map(|holder| Op::Release { holder }),
        1 => (0..8usize).prop_map(|holder| Op::Renew { holder }),
        2 => prop_oneof![Just(1u64), Just(10), Just(29), Just(30), Just(31), Just(99), Just(100)]
            .prop_map(|secs| Op::Advance { secs }),
    ]
}

/// What the model holds for one store key.
#[derive(Clone, Debug, PartialEq)]
enum State {
    Held {
        holder: usize,
        body: u8,
        lease_until: u64,
    },
    Done {
        body: u8,
        response: Bytes,
        expires_at: u64,
    },
}

/// What the model expects `begin` to answer.
#[derive(Debug, PartialEq)]
enum Expect {
    Execute,
    Replay(Bytes),
    InFlight,
    Mismatch,
}

struct Holder {
    lease: Option<Lease>,
    key: (u8, u8),
    body: u8,
}

/// Whether the claim holding `key` lapsed at least [`LAPSED_CLAIM_GRACE`] ago, so that the
/// store may have dropped it (Redis by its own clock, Postgres in a purge, the embedded store
/// in a sweep): a release or a renewal of it may then answer `false`. (Its completion records
/// all the same: the engine claims the key again by its token.) Until then, a lapsed claim
/// nobody displaced is still its holder's.
fn may_be_gone(model: &HashMap<(u8, u8), State>, key: (u8, u8), now: u64) -> bool {
    matches!(model.get(&key), Some(State::Held { lease_until, .. })
        if now >= lease_until + LAPSED_CLAIM_GRACE.as_secs())
}

/// The store key of `(scope, key)` in run `run`: each run's keys are its own, so that runs
/// can share a store.
fn store_key(run: u64, (scope, key): (u8, u8)) -> StoreKey {
    let mut bytes = [0; 32];
    bytes[0] = scope;
    bytes[1] = key;
    bytes[2..10].copy_from_slice(&run.to_be_bytes());
    StoreKey::from_bytes(bytes)
}

fn fingerprint(body: u8) -> Fingerprint {
    Fingerprint::new("POST", "/model", "", &[body])
}

/// Checks the engines on the stores `processes` makes (each process's own handle on one store)
/// against the model, over `cases` random sequences, each run on the store and behind replay
/// caches. Panics with the shortest failing sequence found.
pub fn answers_as_the_model<S: Store + Clone>(cases: u32, processes: impl AsyncFnOnce() -> [S; 2]) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let processes = runtime.block_on(processes());
    let config = Config {
        // `PROPTEST_CASES` sets it for a longer run.
        cases: std::env::var("PROPTEST_CASES")
            .ok()
            .and_then(|cases| cases.parse().ok())
            .unwrap_or(cases),
        // Sequences that failed are printed, not written beside the sources.
        failure_persistence: None,
        ..Config::default()
    };
    let runs = AtomicU64::new(0);
    let result = TestRunner::new(config).run(&proptest::collection::vec(op(), 1..80), |ops| {
        for cached in [false, true] {
            let run = runs.fetch_add(1, Ordering::Relaxed);
            runtime.block_on(check(&processes, cached, run, ops.clone()));
        }
        Ok(())
    });
    if let Err(failure) = result {
        panic!("{failure}");
    }
}

async fn check<S: Store + Clone>(processes: &[S; 2], cached: bool, run: u64, ops: Vec<Op>) {
    // Each run's time starts where the last one's may have ended (80 steps of at most 100 s),
    // as processes sharing a store have one time: a Postgres store purges by the time of the
    // claim that sets it off, and a run that started before another had ended would find its
    // live rows purged by the time the other reached.
    let start = 1_700_000_000 + run * 10_000;
    let clock = ManualClock::new(Timestamp::from_millis(start * 1000));
    let engine = |store: &S| {
        if cached {
            Engine::new(ReplayCache::new(store.clone(), 1 << 20))
        } else {
            Engine::new(store.clone())
        }
        .with_clock(clock.clone())
    };
    let engines = [engine(&processes[0]), engine(&processes[1])];
    let policy = Policy::DEFAULT
        .lease(Duration::from_secs(LEASE))
        .ttl(Duration::from_secs(TTL));
    let mut now = start;
    let mut model: HashMap<(u8, u8), State> = HashMap::new();
    let mut holders: Vec<Holder> = Vec::new();

    for (step, op) in ops.into_iter().enumerate() {
        match op {
            Op::Begin {
                scope,
                key,
                body,
                process,
            } => {
                let k = (scope, key);
                let expect = match model.get(&k) {
                    Some(State::Held {
                        body: b,
                        lease_until,
                        ..
                    }) if *lease_until > now => {
                        if *b == body {
                            Expect::InFlight
                        } else {
                            Expect::Mismatch
                        }
                    }
                    Some(State::Done {
                        body: b,
                        response,
                        expires_at,
                    }) if *expires_at > now => {
                        if *b == body {
                            Expect::Replay(response.clone())
                        } else {
                            Expect::Mismatch
                        }
                    }
                    _ => Expect::Execute,
                };
                let got = match engines[process]
                    .begin(&policy, store_key(run, k), fingerprint(body))
                    .await
                {
                    Ok(Begin::Execute(lease)) => {
                        holders.push(Holder {
                            lease: Some(lease),
                            key: k,
                            body,
                        });
                        model.insert(
                            k,
                            State::Held {
                                holder: holders.len() - 1,
                                body,
                                lease_until: now + LEASE,
                            },
                        );
                        Expect::Execute
                    }
                    Ok(Begin::Replay(record)) => {
                        assert_eq!(
                            record.fingerprint,
                            fingerprint(body),
                            "step {step}: replayed another request's response"
                        );
                        Expect::Replay(record.response.body())
                    }
                    Ok(Begin::Unprotected(e)) => panic!("step {step}: store failed: {e}"),
                    Err(IdempotencyError::InFlight) => Expect::InFlight,
                    Err(IdempotencyError::Mismatch { .. }) => Expect::Mismatch,
                    Err(e) => panic!("step {step}: {e}"),
                };
                assert_eq!(got, expect, "step {step}: begin {k:?} body {body}");
            }
            Op::Finish { holder, status } => {
                let Some(h) = holders.get_mut(holder) else {
                    continue;
                };
                let Some(lease) = h.lease.take() else {
                    continue;
                };
                let (k, body) = (h.key, h.body);
                let holds =
                    matches!(model.get(&k), Some(State::Held { holder: id, .. }) if *id == holder);
                let response = Bytes::from(format!("{holder}:{status}"));
                let outcome = lease
                    .finish(Response::new(status, [], &response))
                    .await
                    .unwrap();
                // A holder another claim displaced still records its response if the key is
                // free again when it finishes (that claim lapsed, or the record it left
                // expired): the operation ran, and nobody holds the key. A server error then
                // leaves the key free, as a release does.
                let free = match model.get(&k) {
                    None => true,
                    Some(State::Held { lease_until, .. }) => *lease_until <= now,
                    Some(State::Done { expires_at, .. }) => *expires_at <= now,
                };
                let kept = holds || free;
                let expect = if !kept {
                    "lost"
                } else if status < 500 {
                    "recorded"
                } else {
                    "released"
                };
                let got = match outcome {
                    Outcome::Recorded => "recorded",
                    Outcome::Released => "released",
                    Outcome::Lost => "lost",
                };
                assert_eq!(got, expect, "step {step}: finish of holder {holder}");
                match got {
                    "recorded" => {
                        model.insert(
                            k,
                            State::Done {
                                body,
                                response,
                                expires_at: now + TTL,
                            },
                        );
                    }
                    // Released by its holder; a lapsed claim of another's stays, as free.
                    _ if holds => {
                        model.remove(&k);
                    }
                    _ => {}
                }
            }
            Op::Release { holder } => {
                let Some(h) = holders.get_mut(holder) else {
                    continue;
                };
                let Some(lease) = h.lease.take() else {
                    continue;
                };
                let holds = matches!(model.get(&h.key), Some(State::Held { holder: id, .. }) if *id == holder);
                let released = lease.release().await.unwrap();
                if !(holds && may_be_gone(&model, h.key, now)) {
                    assert_eq!(released, holds, "step {step}: release of holder {holder}");
                }
                if holds {
                    model.remove(&h.key);
                }
            }
            Op::Renew { holder } => {
                let Some(h) = holders.get(holder) else {
                    continue;
                };
                let Some(lease) = &h.lease else { continue };
                let holds = matches!(model.get(&h.key), Some(State::Held { holder: id, .. }) if *id == holder);
                let renewed = lease.renew().await.unwrap();
                if !(holds && may_be_gone(&model, h.key, now)) {
                    assert_eq!(renewed, holds, "step {step}: renewal of holder {holder}");
                }
                if let Some(State::Held { lease_until, .. }) = model.get_mut(&h.key) {
                    if renewed {
                        *lease_until = now + LEASE;
                    } else if holds {
                        // Gone from the store (see `may_be_gone`).
                        model.remove(&h.key);
                    }
                }
            }
            Op::Advance { secs } => {
                now += secs;
                clock.advance(Duration::from_secs(secs));
            }
        }
    }
    // Leases still held are released on drop, in the background; nothing to check there.
}
