//! The engine against a reference model: random interleavings of claims, completions,
//! releases, lease renewals and the passing of time, over several keys and scopes, from two
//! processes (engines) sharing one store. After every step the engines must answer exactly as
//! the model does; so two holders never run at once, a response is never replayed for another
//! request, and no completed record is lost before its TTL. Each sequence runs twice: on the
//! store itself, and with each process's [`ReplayCache`] in front of it, which must not change
//! an answer (a copy kept past its record's expiry would replay where the store runs anew).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use idem_core::clock::{ManualClock, Timestamp};
use idem_core::store::ReplayCache;
use idem_core::{
    Begin, Engine, Fingerprint, IdempotencyError, Lease, MokaStore, Outcome, Policy, Response,
    StoreKey,
};
use proptest::prelude::*;

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

fn store_key((scope, key): (u8, u8)) -> StoreKey {
    let mut bytes = [0; 32];
    bytes[0] = scope;
    bytes[1] = key;
    StoreKey::from_bytes(bytes)
}

fn fingerprint(body: u8) -> Fingerprint {
    Fingerprint::new("POST", "/model", "", &[body])
}

async fn check(ops: Vec<Op>, cached: bool) {
    let start = 1_700_000_000;
    let clock = ManualClock::new(Timestamp::from_millis(start * 1000));
    let store = Arc::new(MokaStore::new());
    let engine = |store: &Arc<MokaStore>| {
        let store = Arc::clone(store);
        if cached {
            Engine::new(ReplayCache::new(store, 1 << 20))
        } else {
            Engine::new(store)
        }
        .with_clock(clock.clone())
    };
    let engines = [engine(&store), engine(&store)];
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
                    .begin(&policy, store_key(k), fingerprint(body))
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
                    model.insert(
                        k,
                        State::Done {
                            body,
                            response,
                            expires_at: now + TTL,
                        },
                    );
                    "recorded"
                } else {
                    // Released by its holder; a lapsed claim of another's stays, as free.
                    if holds {
                        model.remove(&k);
                    }
                    "released"
                };
                let got = match outcome {
                    Outcome::Recorded => "recorded",
                    Outcome::Released => "released",
                    Outcome::Lost => "lost",
                };
                assert_eq!(got, expect, "step {step}: finish of holder {holder}");
            }
            Op::Release { holder } => {
                let Some(h) = holders.get_mut(holder) else {
                    continue;
                };
                let Some(lease) = h.lease.take() else {
                    continue;
                };
                let holds = matches!(model.get(&h.key), Some(State::Held { holder: id, .. }) if *id == holder);
                if holds {
                    model.remove(&h.key);
                }
                assert_eq!(
                    lease.release().await.unwrap(),
                    holds,
                    "step {step}: release of holder {holder}"
                );
            }
            Op::Renew { holder } => {
                let Some(h) = holders.get(holder) else {
                    continue;
                };
                let Some(lease) = &h.lease else { continue };
                let held = match model.get_mut(&h.key) {
                    Some(State::Held {
                        holder: id,
                        lease_until,
                        ..
                    }) if *id == holder => {
                        *lease_until = now + LEASE;
                        true
                    }
                    _ => false,
                };
                assert_eq!(
                    lease.renew().await.unwrap(),
                    held,
                    "step {step}: renewal of holder {holder}"
                );
            }
            Op::Advance { secs } => {
                now += secs;
                clock.advance(Duration::from_secs(secs));
            }
        }
    }
    // Leases still held are released on drop, in the background; nothing to check there.
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn the_engine_answers_as_the_model(ops in proptest::collection::vec(op(), 1..80)) {
        for cached in [false, true] {
            tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .build()
                .unwrap()
                .block_on(check(ops.clone(), cached));
        }
    }
}
