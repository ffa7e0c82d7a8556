//! The engine against a reference model: random interleavings of claims, completions,
//! releases, lease renewals and the passing of time, over several keys and scopes, from two
//! processes (engines) sharing one store, each sequence under settings of its own (the
//! statuses recorded, a replay or 409 for another body, failing open or closed). After every
//! step the engines must answer exactly as the model does; so two holders never run at once, a
//! response is never replayed for another request (unless the settings say to), and no
//! completed record is lost before its TTL. Each sequence runs twice: on the store itself, and
//! with each process's [`ReplayCache`] in front of it, which must not change an answer (a copy
//! kept past its record's expiry would replay where the store runs anew).
//! [`answers_as_the_model_through_faults`] runs them again, failing store calls on the way,
//! and [`answers_as_the_model_when_answers_are_lost`] on a wire that loses answers.
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
use idem_core::testing::{Fault, FaultyStore};
use idem_core::{
    Begin, CachePolicy, Engine, Fingerprint, IdempotencyError, Lease, OnInFlight, OnMismatch,
    OnStoreError, Outcome, Policy, Record, Response, Store, StoreKey,
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
        faults: Faults,
    },
    /// The `holder`-th claim so far finishes with a status.
    Finish {
        holder: usize,
        status: u16,
        faults: Faults,
    },
    /// The `holder`-th claim releases its key.
    Release { holder: usize, faults: Faults },
    /// The `holder`-th claim renews its lease.
    Renew { holder: usize, faults: Faults },
    /// Time passes.
    Advance { secs: u64 },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        // A claim, the release of one that may have been written, and the looks at a running
        // request a waiting one takes.
        4 => (0..2u8, 0..3u8, 0..2u8, 0..2usize, faults(&["claim", "release", "get"])).prop_map(
            |(scope, key, body, process, faults)| Op::Begin {
                scope,
                key,
                body,
                process,
                faults,
            }
        ),
        // A completion or release; renewals between retries; and where the store refused it,
        // the look at who holds the key and the claim taken again.
        3 => (
            0..8usize,
            prop_oneof![Just(201u16), Just(409), Just(503)],
            faults(&["complete", "release", "extend", "get", "claim"])
        )
            .prop_map(|(holder, status, faults)| Op::Finish {
                holder,
                status,
                faults
            }),
        1 => (0..8usize, faults(&["release", "get"]))
            .prop_map(|(holder, faults)| Op::Release { holder, faults }),
        1 => (0..8usize, faults(&["extend"]))
            .prop_map(|(holder, faults)| Op::Renew { holder, faults }),
        2 => prop_oneof![Just(1u64), Just(10), Just(29), Just(30), Just(31), Just(99), Just(100)]
            .prop_map(|secs| Op::Advance { secs }),
    ]
}

/// The faults of an operation's store calls, in a run through faults: for each call named,
/// its first one to three fail before they reach the store (the connection dropped, or timed
/// out), or reach it and their answer is lost, or reach it twice (a client that resends them).
/// On a lossy wire, the first call named loses its answer; other runs leave them out.
type Faults = Vec<(&'static str, Fault, usize)>;

/// No faults half the time; else one or two, of the store calls `calls`.
fn faults(calls: &'static [&'static str]) -> impl Strategy<Value = Faults> {
    let fault = prop_oneof![
        Just(Fault::Unavailable),
        Just(Fault::Timeout),
        Just(Fault::Lost),
        Just(Fault::Resent),
    ];
    let one = (proptest::sample::select(calls), fault, 1..=3usize);
    prop_oneof![
        1 => Just(Vec::new()),
        1 => proptest::collection::vec(one, 1..=2),
    ]
}

/// The endpoint's settings a sequence runs under: the statuses it records, what a request
/// with another body gets, whether it runs without protection when the store fails, and, if
/// `waits`, whether a request waits for a running one (in sequence, nothing finishes while it
/// waits: it waits its 2 s, looking at the key now and then, and gets 409).
fn policy(waits: bool) -> impl Strategy<Value = Policy> {
    let wait = OnInFlight::Wait(Duration::from_secs(2));
    (
        prop_oneof![Just(CachePolicy::Non5xx), Just(CachePolicy::Success)],
        prop_oneof![Just(OnMismatch::Conflict), Just(OnMismatch::Replay)],
        prop_oneof![Just(OnStoreError::FailClosed), Just(OnStoreError::FailOpen)],
        if waits {
            prop_oneof![Just(OnInFlight::Conflict), Just(wait)].boxed()
        } else {
            Just(OnInFlight::Conflict).boxed()
        },
    )
        .prop_map(|(cache, on_mismatch, on_store_error, on_in_flight)| {
            Policy::DEFAULT
                .lease(Duration::from_secs(LEASE))
                .ttl(Duration::from_secs(TTL))
                .cache(cache)
                .on_mismatch(on_mismatch)
                .on_store_error(on_store_error)
                .on_in_flight(on_in_flight)
        })
}

/// How a run's engines reach the store.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Mode {
    Direct,
    /// Behind each process's replay cache.
    Cached,
    /// Through the faults the operations name.
    Faulty,
    /// Through the faults, behind each process's replay cache.
    CachedFaulty,
    /// On a wire that loses the answers the faults name (see [`LosesAnswers`]).
    LossyWire,
}

/// A wire between the stores and their server that loses answers: the statement or command
/// runs to its end, and the connection breaks before its answer comes back.
pub trait LosesAnswers {
    /// Loses the answer to the next call of `call` (`claim`, `complete`, `release`, `extend`
    /// or `get`), if it can tell that call: whether it will.
    fn lose_answer_to(&self, call: &'static str) -> bool;
    /// Cancels a loss that no call has met.
    fn heal(&self);
    /// Whether the store runs `call` again once its answer was lost, on a new connection, and
    /// answers as if nothing had been lost (every call on Postgres, a claim or a read on
    /// Redis); else the call fails, as one whose answer [`Fault::Lost`] loses.
    fn reruns(&self, call: &str) -> bool;
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
#[derive(Clone, Debug, PartialEq)]
enum Expect {
    Execute,
    Replay(Bytes),
    InFlight,
    Mismatch,
    /// The store failed the claim (the endpoint fails closed).
    Unavailable,
    /// The store failed the claim, and the request runs without one (it fails open).
    Unprotected,
}

struct Holder {
    lease: Option<Lease>,
    key: (u8, u8),
    body: u8,
    process: usize,
}

/// Whether nobody holds `key`: no record of it, or only a lapsed claim or an expired record.
fn free(model: &HashMap<(u8, u8), State>, key: (u8, u8), now: u64) -> bool {
    match model.get(&key) {
        None => true,
        Some(State::Held { lease_until, .. }) => *lease_until <= now,
        Some(State::Done { expires_at, .. }) => *expires_at <= now,
    }
}

/// Whether the claim holding `key` lapsed at least [`LAPSED_CLAIM_GRACE`] ago, so that the
/// store may have dropped it (Redis by its own clock, Postgres in a purge, the embedded store
/// in a sweep): a renewal of it may then answer `false`. (Its release answers `true` all the
/// same, the key being free, and its completion records: the engine claims the key again by
/// its token.) Until then, a lapsed claim nobody displaced is still its holder's.
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
    run_model(cases, processes, &[Mode::Direct, Mode::Cached], None);
}

/// As [`answers_as_the_model`], on stores whose server is reached through `wire`, which loses
/// the answer to one call of an operation when the sequence plans a fault for it: a store
/// that runs such a call again must answer as if nothing had been lost, and the engine on
/// another as through a [`Fault::Lost`].
pub fn answers_as_the_model_when_answers_are_lost<S: Store + Clone>(
    cases: u32,
    wire: &dyn LosesAnswers,
    processes: impl AsyncFnOnce() -> [S; 2],
) {
    run_model(cases, processes, &[Mode::LossyWire], Some(wire));
}

/// As [`answers_as_the_model`], with the first store calls (one to three) of an operation
/// failed as the sequence says (before the call reaches the store, after it, or a call made
/// twice): the engine's retries and releases of claims that may have been written must leave
/// the store as the model does, and answer the same, but for a claim that failed (503) and a
/// renewal that failed (the store's error), or a replay cache's copy answering without the
/// store. Each sequence runs on the store and behind replay caches. Its retries wait
/// in tokio's paused time, which moves on whenever the runtime is idle, so a store that does
/// I/O would see its own timeouts expire at once: for the embedded store.
pub fn answers_as_the_model_through_faults<S: Store + Clone>(
    cases: u32,
    processes: impl AsyncFnOnce() -> [S; 2],
) {
    run_model(cases, processes, &[Mode::Faulty, Mode::CachedFaulty], None);
}

/// Runs `cases` sequences in each of `modes`. Runs through faults wait in tokio's paused time,
/// and also wait for running requests (nothing finishes meanwhile, so real time would pass).
fn run_model<S: Store + Clone>(
    cases: u32,
    processes: impl AsyncFnOnce() -> [S; 2],
    modes: &[Mode],
    wire: Option<&dyn LosesAnswers>,
) {
    let faulty = modes.contains(&Mode::Faulty);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(faulty)
        .build()
        .expect("a runtime");
    let processes = runtime.block_on(processes());
    let config = Config {
        // `PROPTEST_CASES` sets it for a longer run.
        cases: std::env::var("PROPTEST_CASES")
            .ok()
            .and_then(|cases| cases.parse().ok())
            .unwrap_or(cases),
        // Sequences that failed are printed, not written beside the sources; shrinking one
        // stops after a minute, as a store on real time may not fail the same way twice.
        failure_persistence: None,
        max_shrink_time: 60_000,
        ..Config::default()
    };
    let runs = AtomicU64::new(0);
    let sequences = (policy(faulty), proptest::collection::vec(op(), 1..80));
    let result = TestRunner::new(config).run(&sequences, |(policy, ops)| {
        for &mode in modes {
            let run = runs.fetch_add(1, Ordering::Relaxed);
            runtime.block_on(check(&processes, mode, &policy, wire, run, ops.clone()));
        }
        Ok(())
    });
    if let Err(failure) = result {
        panic!("{failure}");
    }
}

async fn check<S: Store + Clone>(
    processes: &[S; 2],
    mode: Mode,
    policy: &Policy,
    wire: Option<&dyn LosesAnswers>,
    run: u64,
    ops: Vec<Op>,
) {
    // Each run's time starts where the last one's may have ended (80 steps of at most 100 s),
    // as processes sharing a store have one time: a Postgres store purges by the time of the
    // claim that sets it off, and a run that started before another had ended would find its
    // live rows purged by the time the other reached.
    let start = 1_700_000_000 + run * 10_000;
    let clock = ManualClock::new(Timestamp::from_millis(start * 1000));
    let faults = processes.clone().map(FaultyStore::new);
    let engine = |process: usize| {
        let store = processes[process].clone();
        match mode {
            Mode::Direct | Mode::LossyWire => Engine::new(store),
            Mode::Cached => Engine::new(ReplayCache::new(store, 1 << 20)),
            Mode::Faulty => Engine::new(faults[process].clone()),
            Mode::CachedFaulty => Engine::new(ReplayCache::new(faults[process].clone(), 1 << 20)),
        }
        .with_clock(clock.clone())
    };
    let engines = [engine(0), engine(1)];
    let faulty = matches!(mode, Mode::Faulty | Mode::CachedFaulty);
    // Plans the faults of `process`'s store calls, in a run through faults, or arms the wire
    // with the first of them; answers the call whose answer the wire will lose, if any.
    let plan = |process: usize, planned: &Faults| {
        for &(operation, fault, times) in planned.iter().filter(|_| faulty) {
            faults[process].fail(operation, times, fault);
        }
        // The wire loses one answer at a time, the first planned: the call it will lose.
        match (wire, planned.first()) {
            (Some(wire), Some(&(operation, ..))) if wire.lose_answer_to(operation) => {
                Some(operation)
            }
            _ => None,
        }
    };
    // Whether the faults planned keep every look at who holds the key from answering (three
    // looks, after a release that found no claim).
    let cannot_tell = |planned: &Faults| {
        planned.iter().any(|&(operation, fault, times)| {
            faulty && operation == "get" && fault != Fault::Resent && times >= 3
        })
    };
    // The fault planned for `call`, if any: the last one planned for it is the one it meets;
    // on a wire, the call whose answer it loses (`lost`), as `Fault::Lost` where the store
    // does not run it again.
    let fault_of = |planned: &Faults, lost: Option<&str>, call: &str| match wire {
        Some(wire) => (lost == Some(call) && !wire.reruns(call)).then_some(Fault::Lost),
        None => (planned.iter().rev())
            .find(|(operation, ..)| faulty && *operation == call)
            .map(|&(_, fault, _)| fault),
    };
    // Whether a request with another body gets the key's first response (or 409 while it
    // runs).
    let any_body = policy.on_mismatch == OnMismatch::Replay;
    let mut now = start;
    let mut model: HashMap<(u8, u8), State> = HashMap::new();
    let mut holders: Vec<Holder> = Vec::new();

    for (step, op) in ops.into_iter().enumerate() {
        settle(&engines, &faults, wire).await;
        match op {
            Op::Begin {
                scope,
                key,
                body,
                process,
                faults,
            } => {
                let k = (scope, key);
                let lost = plan(process, &faults);
                let fault = fault_of(&faults, lost, "claim");
                let expect = expected(&model, k, body, now, any_body);
                // A replay cache that kept a copy of a live record answers by it, without the
                // store.
                let cached = match model.get(&k) {
                    Some(State::Done { expires_at, .. })
                        if *expires_at > now && mode == Mode::CachedFaulty =>
                    {
                        Some(expect.clone())
                    }
                    _ => None,
                };
                let expect = match fault {
                    // Failed before the store, or done there and then released by its token
                    // (a free key stays free, a lapsed claim it displaced or a record past its
                    // expiry are gone); done twice, the second call finds the first's claim,
                    // which is this request's own.
                    Some(Fault::Unavailable | Fault::Timeout | Fault::Lost) => {
                        if fault == Some(Fault::Lost) && expect == Expect::Execute {
                            model.remove(&k);
                        }
                        match policy.on_store_error {
                            OnStoreError::FailOpen => Expect::Unprotected,
                            _ => Expect::Unavailable,
                        }
                    }
                    _ => expect,
                };
                // A request that waits for a running one looks at the key until its wait ends:
                // a look that fails ends it, with 503 (failing closed: the store failed), or
                // 409 (failing open: the key was held when the store last answered).
                let looked = fault_of(&faults, lost, "get");
                let waits = matches!(policy.on_in_flight, OnInFlight::Wait(_));
                let expect = match looked {
                    Some(Fault::Unavailable | Fault::Timeout | Fault::Lost)
                        if waits
                            && expect == Expect::InFlight
                            && policy.on_store_error == OnStoreError::FailClosed =>
                    {
                        Expect::Unavailable
                    }
                    _ => expect,
                };
                let got = match engines[process]
                    .begin(policy, store_key(run, k), fingerprint(body))
                    .await
                {
                    Ok(Begin::Execute(lease)) => {
                        holders.push(Holder {
                            lease: Some(lease),
                            key: k,
                            body,
                            process,
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
                        if !any_body {
                            assert_eq!(
                                record.fingerprint,
                                fingerprint(body),
                                "step {step}: replayed another request's response"
                            );
                        }
                        Expect::Replay(record.response.body())
                    }
                    Ok(Begin::Unprotected(_)) if fault.is_some() => Expect::Unprotected,
                    Ok(Begin::Unprotected(e)) => panic!("step {step}: store failed: {e}"),
                    Err(IdempotencyError::InFlight) => Expect::InFlight,
                    Err(IdempotencyError::Mismatch { .. }) => Expect::Mismatch,
                    Err(IdempotencyError::StoreUnavailable(_)) if fault.or(looked).is_some() => {
                        Expect::Unavailable
                    }
                    Err(e) => panic!("step {step}: {e}"),
                };
                if cached.as_ref() != Some(&got) {
                    assert_eq!(got, expect, "step {step}: begin {k:?} body {body}");
                }
            }
            Op::Finish {
                holder,
                status,
                faults,
            } => {
                let Some(h) = holders.get_mut(holder) else {
                    continue;
                };
                let Some(lease) = h.lease.take() else {
                    continue;
                };
                let (k, body) = (h.key, h.body);
                // Retried, or found done: the outcome is the same as without the faults.
                plan(h.process, &faults);
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
                let kept = holds || free(&model, k, now);
                let expect = if !kept {
                    "lost"
                } else if policy.cache.caches(status) {
                    "recorded"
                } else {
                    "released"
                };
                let got = match outcome {
                    Outcome::Recorded => "recorded",
                    Outcome::Released => "released",
                    Outcome::Lost => "lost",
                };
                // A release that found no claim, and could not look at the key, says "lost".
                if !(got == "lost" && expect == "released" && cannot_tell(&faults)) {
                    assert_eq!(got, expect, "step {step}: finish of holder {holder}");
                }
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
            Op::Release { holder, faults } => {
                let Some(h) = holders.get_mut(holder) else {
                    continue;
                };
                let Some(lease) = h.lease.take() else {
                    continue;
                };
                plan(h.process, &faults);
                let holds = matches!(model.get(&h.key), Some(State::Held { holder: id, .. }) if *id == holder);
                // `true` when the key is free after it (a claim the store dropped past its
                // grace included), as a release in a finish answers.
                let expect = holds || free(&model, h.key, now);
                let released = lease.release().await.unwrap();
                if !(!released && expect && cannot_tell(&faults)) {
                    assert_eq!(released, expect, "step {step}: release of holder {holder}");
                }
                if holds {
                    model.remove(&h.key);
                }
            }
            Op::Renew { holder, faults } => {
                let Some(h) = holders.get(holder) else {
                    continue;
                };
                let Some(lease) = &h.lease else { continue };
                let holds = matches!(model.get(&h.key), Some(State::Held { holder: id, .. }) if *id == holder);
                let lost = plan(h.process, &faults);
                let fault = fault_of(&faults, lost, "extend");
                let answer = lease.renew().await;
                if let Some(Fault::Unavailable | Fault::Timeout | Fault::Lost) = fault {
                    // The store's error, whether or not the renewal reached it (it did when
                    // only its answer was lost, and moved the lease on if the claim held).
                    assert!(
                        answer.is_err(),
                        "step {step}: renewal of holder {holder} through {fault:?}: {answer:?}"
                    );
                    if fault == Some(Fault::Lost) && holds && may_be_gone(&model, h.key, now) {
                        // The store may have dropped the claim before the renewal came: what
                        // it holds now tells.
                        let at = Timestamp::from_millis(now * 1000);
                        let key = store_key(run, h.key);
                        match processes[h.process].get(&key, at).await {
                            Ok(Some(Record::InFlight(claim))) if claim.token == lease.token() => {}
                            Ok(_) => {
                                model.remove(&h.key);
                                continue;
                            }
                            Err(error) => panic!("step {step}: reading {key}: {error}"),
                        }
                    }
                    if let (Some(Fault::Lost), Some(State::Held { lease_until, .. }), true) =
                        (fault, model.get_mut(&h.key), holds)
                    {
                        *lease_until = now + LEASE;
                    }
                    continue;
                }
                let renewed = answer.unwrap_or_else(|error| {
                    panic!("step {step}: renewal of holder {holder}: {error}")
                });
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
    // What the sequence left in the store: every key it touched, asked for once more, must
    // answer as the model says (a claim left behind would answer 409 where it is free).
    settle(&engines, &faults, wire).await;
    let mut keys: Vec<(u8, u8)> = (holders.iter().map(|h| h.key))
        .chain(model.keys().copied())
        .collect();
    keys.sort_unstable();
    keys.dedup();
    for k in keys {
        let expect = expected(&model, k, 0, now, any_body);
        let got = match engines[0]
            .begin(policy, store_key(run, k), fingerprint(0))
            .await
        {
            Ok(Begin::Execute(_)) => Expect::Execute,
            Ok(Begin::Replay(record)) => Expect::Replay(record.response.body()),
            Err(IdempotencyError::InFlight) => Expect::InFlight,
            Err(IdempotencyError::Mismatch { .. }) => Expect::Mismatch,
            other => panic!("after the sequence, {k:?}: {other:?}"),
        };
        assert_eq!(got, expect, "after the sequence: {k:?}");
    }
    // Leases still held are released on drop, in the background: within this run, whose
    // engines wait for them, so that none goes on beside the next run's operations (on a
    // wire, the next run's loss could otherwise meet such a release, and break the
    // connection under another request).
    drop(holders);
    settle(&engines, &faults, wire).await;
}

/// Lets what the last operation left in the background (the release of a claim that may have
/// been written, a retried release) finish, under the faults it planned, then cancels those.
async fn settle<S>(
    engines: &[Engine; 2],
    faults: &[FaultyStore<S>; 2],
    wire: Option<&dyn LosesAnswers>,
) {
    for (engine, faults) in engines.iter().zip(faults) {
        engine.abandoned_released().await;
        faults.heal();
    }
    if let Some(wire) = wire {
        wire.heal();
    }
}

/// What a request for `key` with `body` must get now, by the model.
fn expected(
    model: &HashMap<(u8, u8), State>,
    key: (u8, u8),
    body: u8,
    now: u64,
    any_body: bool,
) -> Expect {
    match model.get(&key) {
        Some(State::Held {
            body: b,
            lease_until,
            ..
        }) if *lease_until > now => {
            if *b == body || any_body {
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
            if *b == body || any_body {
                Expect::Replay(response.clone())
            } else {
                Expect::Mismatch
            }
        }
        _ => Expect::Execute,
    }
}
