//! The state machine of one keyed request: claim, run, record or release, replay.
//!
//! # Future sizes
//! Every keyed request builds, moves and drops the futures of this module and of
//! `idem-actix`'s handler, so their size is part of the cost of a request. An `async fn`
//! keeps its arguments as passed and again as the locals they are moved into, for the whole
//! run; an `async move` block returned from a plain `fn` keeps them once. The few functions
//! written that way here (`Engine::observed`, `Lease::finish`) and in `idem-actix`
//! (`claimed`, `execute`) are the ones where it was measured to pay: the tests
//! `store_futures_stay_small` (here) and `keyed_request_futures_stay_small` (in `idem-actix`)
//! hold each future below what it would be as an `async fn`, and fail if it grows.

use std::future::{poll_fn, Future};
use std::pin::{pin, Pin};
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use futures_util::future::{select, Either};

use crate::clock::{Clock, MonotonicClock, SystemClock, Timestamp, FARTHEST};
use crate::digest::{Fingerprint, StoreKey};
use crate::error::IdempotencyError;
use crate::policy::{
    keeps_records, CachePolicy, OnInFlight, OnMismatch, OnStoreError, Policy, PolicyError,
};
use crate::record::{Completed, InFlight, Record, Response, Token};
use crate::store::{Claim, Store, StoreError};
use crate::warnings::Warnings;

/// How long a release of a claim whose write failed waits before it looks again.
pub(crate) const UNCONFIRMED_RELEASE_PAUSE: Duration = Duration::from_secs(1);

/// The longest pause between two tries of such a release that failed (see
/// [`released_until_known`]).
const UNCONFIRMED_RELEASE_MAX_PAUSE: Duration = Duration::from_secs(16);

/// The most releases of claims whose writes failed that one engine keeps going at once. Each
/// lives up to a lease, calling the store now and then ([`released_until_known`]): in an outage
/// under load, every request's claim fails, and unbounded they would pile up one task per
/// request. Past the bound, a claim that landed all the same lapses with its lease.
pub(crate) const MAX_UNCONFIRMED_RELEASES: usize = 1024;

/// How often a waiting request looks at the record it waits for.
const WAIT_POLL: Duration = Duration::from_millis(20);

/// How soon a renewal the store failed is tried again (a third of the lease, if sooner): a
/// store that is back must see the claim renewed before it lapses, not a whole renewal period
/// later. Two failures a period apart, each waiting out a command timeout, would otherwise
/// let the claim lapse after an outage of a third of the lease.
const RENEWAL_RETRY: Duration = Duration::from_secs(1);

/// Runs the protocol against a store. Cheap to clone: clones share one set of parts.
#[derive(Clone)]
pub struct Engine {
    parts: Arc<Parts>,
}

#[derive(Clone)]
struct Parts {
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    observer: Option<Arc<dyn StoreObserver>>,
    /// Releases of claims whose leases were dropped unfinished, still under way.
    releasing: Arc<Releasing>,
    /// Of those, the releases of claims whose writes failed (see
    /// [`MAX_UNCONFIRMED_RELEASES`]).
    unconfirmed: Arc<std::sync::atomic::AtomicUsize>,
    /// Why the store can keep no record, if it cannot (see [`keeps_records`]): it is then
    /// claimed nothing in, as no operation run on it could be recorded.
    keeps_none: Option<PolicyError>,
    /// Warnings of failures that repeat for every running request alike.
    repeated: Arc<Repeated>,
}

/// Warnings of failures that strike every running request alike while they last, each
/// warned of when it starts, then once a minute (see [`Warnings`]): a warning from each
/// run, and each of its retries a second apart, would bury the log.
#[derive(Debug, Default)]
struct Repeated {
    /// Renewals the store failed (or the claim again of a claim it had forgotten).
    renewals: Warnings,
    /// Renewals that came a whole period late: handlers that block their threads.
    late: Warnings,
    /// Completions the store failed, retried.
    records: Warnings,
    /// Releases the store failed, retried.
    releases: Warnings,
}

/// A count of work under way, and a wake-up for whoever waits for none.
#[derive(Debug, Default)]
struct Releasing {
    count: std::sync::atomic::AtomicUsize,
    idle: tokio::sync::Notify,
}

/// The releases under way in this process, whatever their engine: what a shutdown of the
/// whole process waits for (see [`Engine::every_abandoned_released`]).
static EVERY_RELEASING: Releasing = Releasing {
    count: std::sync::atomic::AtomicUsize::new(0),
    idle: tokio::sync::Notify::const_new(),
};

/// One release under way, counted by its engine and by the process.
struct ReleasingGuard(Arc<Releasing>);

impl Drop for ReleasingGuard {
    fn drop(&mut self) {
        self.0.end();
        EVERY_RELEASING.end();
    }
}

impl Releasing {
    /// Counts one more under way, here and in the process, until the guard is dropped (done,
    /// or dropped with its runtime).
    fn start(self: &Arc<Self>) -> ReleasingGuard {
        EVERY_RELEASING.begin();
        self.begin();
        ReleasingGuard(Arc::clone(self))
    }

    fn begin(&self) {
        self.count.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
    }

    fn end(&self) {
        if self.count.fetch_sub(1, std::sync::atomic::Ordering::AcqRel) == 1 {
            self.idle.notify_waiters();
        }
    }

    async fn none(&self) {
        loop {
            let mut idle = std::pin::pin!(self.idle.notified());
            // Registered before the count is read, so a release finishing in between wakes it.
            idle.as_mut().enable();
            if self.count.load(std::sync::atomic::Ordering::Acquire) == 0 {
                return;
            }
            idle.await;
        }
    }
}

/// Told of every store operation the engine makes: for metrics, without wrapping the store.
pub trait StoreObserver: Send + Sync + 'static {
    /// Operation `op` (`claim`, `get`, `extend`, `complete`, `release`) took `elapsed`, and
    /// failed with `error`, if any.
    fn store_op(&self, op: &'static str, elapsed: Duration, error: Option<&StoreError>);

    /// A `complete` or `release` made by the caller of [`Lease::finish_with`] or
    /// [`Lease::release_with`] (its settlement) took `elapsed`, and failed with `error`, if
    /// any: an error that may be the caller's own, such as the commit of a transaction that
    /// the caller's writes made fail. The default takes it as any
    /// [`store_op`](Self::store_op).
    fn settlement_op(&self, op: &'static str, elapsed: Duration, error: Option<&StoreError>) {
        self.store_op(op, elapsed, error);
    }
}

/// What to do with a keyed request.
#[derive(Debug)]
#[must_use]
pub enum Begin {
    /// The key is claimed: run the handler, then [`Lease::finish`].
    Execute(Lease),
    /// Answer with the recorded response.
    Replay(Completed),
    /// The store failed and the endpoint fails open: run the handler unprotected.
    Unprotected(StoreError),
}

/// What became of a finished operation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The response is recorded and will be replayed.
    Recorded,
    /// The response is not cacheable; the key is free again.
    Released,
    /// The lease lapsed and another request claimed the key; nothing was written.
    Lost,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine").finish_non_exhaustive()
    }
}

impl Engine {
    /// An engine on `store`, reading the system clock: as it is for a store that processes
    /// share, through a [`MonotonicClock`] for a store in this process only
    /// ([`Store::in_process`]).
    pub fn new(store: impl Store) -> Self {
        Self::from_arc(Arc::new(store))
    }

    /// An engine on a shared store.
    pub fn from_arc(store: Arc<dyn Store>) -> Self {
        let clock: Arc<dyn Clock> = if store.in_process() {
            Arc::new(MonotonicClock::new())
        } else {
            Arc::new(SystemClock)
        };
        Self {
            parts: Arc::new(Parts {
                keeps_none: keeps_records(&*store).err(),
                store,
                clock,
                observer: None,
                releasing: Arc::default(),
                unconfirmed: Arc::default(),
                repeated: Arc::default(),
            }),
        }
    }

    /// The same engine, telling `observer` of every store operation.
    #[must_use]
    pub fn with_observer(mut self, observer: impl StoreObserver) -> Self {
        Arc::make_mut(&mut self.parts).observer = Some(Arc::new(observer));
        self
    }

    /// Makes the store operation `call` and awaits it, telling the observer how it went. The
    /// time runs from the call, not the first poll: an in-memory store does its work in the
    /// call and answers a future that is ready.
    ///
    /// An `async` block: `call` captures a whole record for a completion (see "Future sizes"
    /// in the module note).
    #[allow(
        clippy::manual_async_fn,
        reason = "smaller future, see the module note"
    )]
    fn observed<'a, T, F, C>(
        &'a self,
        op: &'static str,
        call: C,
    ) -> impl Future<Output = Result<T, StoreError>> + 'a
    where
        C: FnOnce() -> F + 'a,
        F: Future<Output = Result<T, StoreError>> + 'a,
    {
        async move {
            let started = self.op_started();
            let result = call().await;
            self.op_done(op, started, &result);
            result
        }
    }

    /// Awaits `call`, a store operation made outside the engine (such as opening a Postgres
    /// transaction for a run's claim), and tells the observer how it went under the name
    /// `op`, as it is told of the engine's own.
    ///
    /// # Errors
    /// `call`'s.
    pub async fn observe<T, F>(&self, op: &'static str, call: F) -> Result<T, StoreError>
    where
        F: Future<Output = Result<T, StoreError>>,
    {
        self.observed(op, || call).await
    }

    /// Runs the settlement `call` of [`Lease::finish_with`] or [`Lease::release_with`], and
    /// tells the observer how it went (see [`StoreObserver::settlement_op`]).
    async fn settled<T, F>(&self, op: &'static str, call: F) -> Result<T, StoreError>
    where
        F: Future<Output = Result<T, StoreError>>,
    {
        let started = self.op_started();
        let result = call.await;
        if let (Some(observer), Some(started)) = (&self.parts.observer, started) {
            observer.settlement_op(op, started.elapsed(), result.as_ref().err());
        }
        result
    }

    /// When a store operation starts, if an observer wants its time.
    fn op_started(&self) -> Option<std::time::Instant> {
        self.parts
            .observer
            .as_ref()
            .map(|_| std::time::Instant::now())
    }

    /// Tells the observer, if any, how the store operation `op` started at `started` went.
    fn op_done<T>(
        &self,
        op: &'static str,
        started: Option<std::time::Instant>,
        result: &Result<T, StoreError>,
    ) {
        if let (Some(observer), Some(started)) = (&self.parts.observer, started) {
            observer.store_op(op, started.elapsed(), result.as_ref().err());
        }
    }

    /// The time now, and the claim a request with `fingerprint` writes under `policy`.
    fn new_claim(&self, policy: &Policy, fingerprint: Fingerprint) -> (Timestamp, InFlight) {
        let now = self.parts.clock.now();
        let claim = InFlight {
            fingerprint,
            lease_until: now.saturating_add(lease(policy)),
            token: Token::random(),
        };
        (now, claim)
    }

    /// The same engine with another clock, read as it is whatever the store (for tests that
    /// move time by hand).
    #[must_use]
    pub fn with_clock(mut self, clock: impl Clock) -> Self {
        Arc::make_mut(&mut self.parts).clock = Arc::new(clock);
        self
    }

    /// Waits until the claims of leases dropped unfinished (a cancelled or panicking
    /// operation) have been released in the store, or have failed to be, and the records of
    /// runs dropped as they recorded (see [`Lease::finish`]) written, or failed to be. For a
    /// graceful shutdown: both run as tasks, which a runtime that stops would drop.
    pub async fn abandoned_released(&self) {
        self.parts.releasing.none().await;
    }

    /// Waits until the claims of leases dropped unfinished have been released, and the
    /// records of runs dropped as they recorded written (or either has failed), by every
    /// engine of this process: as [`abandoned_released`](Self::abandoned_released)
    /// for each, for a shutdown that cancels runs of several engines at once.
    pub async fn every_abandoned_released() {
        EVERY_RELEASING.none().await;
    }

    /// The same engine, reading wall time from `wall` where [`Engine::new`] reads the
    /// system clock: as it is for a store that processes share, once and then moved on by
    /// monotonic time for a store in this process only.
    #[must_use]
    pub fn with_wall_clock(self, wall: impl Clock) -> Self {
        if self.parts.store.in_process() {
            self.with_clock(MonotonicClock::anchored(&wall))
        } else {
            self.with_clock(wall)
        }
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.parts.store
    }

    /// The clock.
    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.parts.clock
    }

    /// Claims `key` for a request with `fingerprint`, or says why not: one store round trip
    /// unless the endpoint waits for a running request, or the store answered a third of the
    /// lease or more after the claim was sent (the claim is then renewed before it runs, and
    /// answered by the record of another request that took it over meanwhile, as a claim that
    /// found that record would be: a replay, a mismatch, or 409, or a wait, while it runs).
    ///
    /// # Errors
    /// [`IdempotencyError::InFlight`], [`IdempotencyError::Mismatch`], or
    /// [`IdempotencyError::StoreUnavailable`] when the store fails and the endpoint fails closed;
    /// [`IdempotencyError::Misconfigured`] with [`PolicyError::StoreTooSmall`], before any
    /// claim, when the store cannot keep even a record without its response
    /// ([`Policy::check`] refuses such a store).
    pub async fn begin(
        &self,
        policy: &Policy,
        key: StoreKey,
        fingerprint: Fingerprint,
    ) -> Result<Begin, IdempotencyError> {
        self.keeps_records()?;
        let deadline = match policy.on_in_flight {
            OnInFlight::Wait(bound) => Some(deadline_after(bound)),
            OnInFlight::Conflict => None,
        };
        loop {
            let (now, claim) = self.new_claim(policy, fingerprint);
            let unanswered = Unanswered {
                engine: self,
                policy,
                key: &key,
                claim: &claim,
            };
            let answer = self
                .observed("claim", || self.parts.store.claim(&key, claim, now))
                .await;
            std::mem::forget(unanswered);
            let existing = match answer {
                Ok(Claim::Existing(record)) if !record.is_claim_of(claim.token) => record,
                Ok(_) => {
                    // An answer that took a third of the lease leaves too little of it before
                    // the first renewal, or none: the claim is renewed before it runs.
                    if self.parts.clock.now().since(now) < lease(policy) / 3 {
                        return Ok(self.claimed(policy, key, claim));
                    }
                    match Box::pin(self.renewed_late(policy, key, claim)).await {
                        Late::Answered(answer) => return answer,
                        // Judged, or waited for, as any record a claim finds.
                        Late::TakenOver(record) => record,
                    }
                }
                Err(e) => {
                    // The claim may have been written all the same (a command that timed
                    // out, then ran): nobody would hold it, and retries would get 409 until
                    // its lease lapsed. Its token releases it, if it is there. A store that
                    // answered with a refusal of its own did not write it, nor one that
                    // answered with the live record it holds (one this build cannot read).
                    if !matches!(
                        e,
                        StoreError::Refused(_)
                            | StoreError::Contended
                            | StoreError::TooLarge { .. }
                            | StoreError::Corrupt(_)
                    ) {
                        self.release_unconfirmed(key, claim.token, lease(policy));
                    }
                    return self.store_failed(policy, e);
                }
            };
            let Some(deadline) = deadline else {
                return judge(policy, fingerprint, existing);
            };
            // Wait for the running request; claim again if it is released.
            let mut record = Some(existing);
            while let Some(Record::InFlight(running)) = record {
                if let Err(e @ IdempotencyError::Mismatch { .. }) =
                    judge(policy, fingerprint, Record::InFlight(running))
                {
                    return Err(e);
                }
                if tokio::time::Instant::now() >= deadline {
                    return Err(IdempotencyError::InFlight);
                }
                tokio::time::sleep(WAIT_POLL).await;
                record = match self
                    .observed("get", || self.parts.store.get(&key, self.parts.clock.now()))
                    .await
                {
                    Ok(record) => record,
                    // The store has said the key is held: a look that fails does not free
                    // it, and failing open here would run the operation beside its holder.
                    Err(e) if self.fails_open(policy, &e) => {
                        return Err(IdempotencyError::InFlight)
                    }
                    Err(e) => return Err(IdempotencyError::StoreUnavailable(e)),
                };
            }
            if let Some(completed) = record {
                return judge(policy, fingerprint, completed);
            }
        }
    }

    /// Refuses a claim on a store that can keep no record: the operation would run, and its
    /// retries run again.
    fn keeps_records(&self) -> Result<(), IdempotencyError> {
        match &self.parts.keeps_none {
            Some(e) => Err(IdempotencyError::Misconfigured(e.clone())),
            None => Ok(()),
        }
    }

    /// [`begin`](Self::begin), answered in the call when the store answers claims in the call
    /// (see [`Store::claim_now`]) and the endpoint does not wait for running requests: no
    /// future, so nothing for a caller to box or to run as a task. `None` otherwise: nothing
    /// was written, and the caller calls `begin`.
    pub fn begin_now(
        &self,
        policy: &Policy,
        key: StoreKey,
        fingerprint: Fingerprint,
    ) -> Option<Result<Begin, IdempotencyError>> {
        if let OnInFlight::Wait(_) = policy.on_in_flight {
            return None;
        }
        if let Err(e) = self.keeps_records() {
            return Some(Err(e));
        }
        let (now, claim) = self.new_claim(policy, fingerprint);
        let started = self.op_started();
        let result = self.parts.store.claim_now(&key, claim, now)?;
        self.op_done("claim", started, &result);
        Some(match result {
            Ok(Claim::Claimed) => Ok(self.claimed(policy, key, claim)),
            Ok(Claim::Existing(record)) if record.is_claim_of(claim.token) => {
                Ok(self.claimed(policy, key, claim))
            }
            Ok(Claim::Existing(record)) => judge(policy, fingerprint, record),
            Err(e) => self.store_failed(policy, e),
        })
    }

    /// The lease of `claim`, written but answered a third of its lease or more after it was
    /// sent (a slow store, a process paused between the command and its answer): so late that
    /// the claim may have lapsed, and another request found it lapsed and took the key over.
    /// It is renewed, fenced by its token, before anything runs. Still held, it runs with a
    /// whole lease ahead. Taken over, it never runs beside the one that took it: its request
    /// is answered as one that found the record of that one (a replay of its response, a
    /// mismatch, or, while it runs, 409 or a wait for it where the endpoint waits), or found
    /// the key held (409) when the record is gone or cannot be read. A renewal the store
    /// failed is the store's failure, and fails closed whatever the policy: unlike a failed
    /// claim's, this request's claim was written, and may have lapsed and been taken over by a
    /// request that runs now. The claim is released in case it is still there (the lease
    /// dropped unfinished releases it, as it does if this request is cancelled meanwhile).
    async fn renewed_late(&self, policy: &Policy, key: StoreKey, claim: InFlight) -> Late {
        let mut lease = self.lease_of(policy, key, claim);
        match lease.renew().await {
            Ok(true) => Late::Answered(Ok(Begin::Execute(lease))),
            Ok(false) => {
                // Not this token's: nothing of it to release.
                lease.done = true;
                let now = self.parts.clock.now();
                match self
                    .observed("get", || self.parts.store.get(&key, now))
                    .await
                {
                    Ok(Some(record)) => Late::TakenOver(record),
                    Ok(None) | Err(_) => Late::Answered(Err(IdempotencyError::InFlight)),
                }
            }
            Err(e) => Late::Answered(Err(IdempotencyError::StoreUnavailable(e))),
        }
    }

    /// One release of the claim `token` holds on `key`, observed: `Ok(true)` when it was
    /// there, as [`Store::release`] answers.
    async fn released_once(&self, key: &StoreKey, token: Token) -> Result<bool, StoreError> {
        self.observed("release", || self.parts.store.release(key, token))
            .await
    }

    /// Releases, in a task of its own, a claim that may or may not have been written: its
    /// write failed, yet may still land, later than commands sent after it (a command that
    /// timed out on one connection and ran when the store came back, after a release sent on
    /// another). So the release is repeated until it finds the claim, or until the store has
    /// answered twice, a second apart, that it is not there; for at most `lease`, after which
    /// the claim lapses anyway.
    ///
    /// At most [`MAX_UNCONFIRMED_RELEASES`] at once: past them, the claim is left to lapse.
    fn release_unconfirmed(&self, key: StoreKey, token: Token, lease: Duration) {
        let engine = self.clone();
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let Some(counted) = Counted::within(&self.parts.unconfirmed, MAX_UNCONFIRMED_RELEASES)
        else {
            tracing::debug!(%key, "too many releases of failed claims under way; this one, if it landed, lapses with its lease");
            return;
        };
        let releasing = self.parts.releasing.start();
        runtime.spawn(async move {
            released_until_known(|| engine.released_once(&key, token), lease).await;
            drop(counted);
            drop(releasing);
        });
    }

    /// Releases the claim `token` holds on `key`, in a task of its own (counted for
    /// [`abandoned_released`](Self::abandoned_released)): for claims nobody will finish. A
    /// release the store fails is retried with backoff for up to `lease`, as
    /// [`Lease::finish`] retries its own, so that a store's blip does not leave the key to
    /// answer 409 until the claim lapses.
    fn release_in_background(&self, key: StoreKey, token: Token, lease: Duration) {
        let engine = self.clone();
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                let releasing = self.parts.releasing.start();
                runtime.spawn(async move {
                    let mut backoff = Backoff::new(lease);
                    while let Err(error) = engine.released_once(&key, token).await {
                        let Some(pause) = backoff.next() else {
                            tracing::warn!(%key, %error, "releasing an abandoned idempotency claim failed; it lapses with its lease");
                            break;
                        };
                        tokio::time::sleep(pause).await;
                    }
                    drop(releasing);
                });
            }
            Err(_) => {
                tracing::warn!(%key, "idempotency claim abandoned outside a runtime; it lapses with its lease")
            }
        }
    }

    /// The lease of a claim just written.
    fn claimed(&self, policy: &Policy, key: StoreKey, claim: InFlight) -> Begin {
        Begin::Execute(self.lease_of(policy, key, claim))
    }

    /// The lease `claim`, written, holds under `policy`.
    fn lease_of(&self, policy: &Policy, key: StoreKey, claim: InFlight) -> Lease {
        Lease {
            engine: self.clone(),
            lease: lease(policy),
            ttl: ttl(policy),
            cache: policy.cache,
            max_response: policy.max_response,
            key,
            token: claim.token,
            fingerprint: claim.fingerprint,
            done: false,
        }
    }

    fn store_failed(&self, policy: &Policy, error: StoreError) -> Result<Begin, IdempotencyError> {
        if self.fails_open(policy, &error) {
            Ok(Begin::Unprotected(error))
        } else {
            Err(IdempotencyError::StoreUnavailable(error))
        }
    }

    /// Whether `error` lets a request under `policy` run unprotected: the endpoint (or the
    /// store) fails open, and the store could not be reached. A store that answered, with a
    /// refusal, a record it cannot read, claims of the key by others, or a claim it released
    /// because fewer replicas than asked acknowledged it, may hold the key taken (or soon):
    /// that fails closed whatever the policy.
    fn fails_open(&self, policy: &Policy, error: &StoreError) -> bool {
        let unreachable = match error {
            StoreError::Unavailable(source) => !crate::store::answered(&**source),
            StoreError::Timeout => true,
            _ => false,
        };
        unreachable
            && (policy.on_store_error == OnStoreError::FailOpen || self.parts.store.fails_open())
    }
}

/// Calls `release` (a release of a claim whose write failed, yet may still land) until it
/// releases the claim, or the store has answered twice, [`UNCONFIRMED_RELEASE_PAUSE`] apart,
/// that it is not there; for at most `lease`, after which the claim lapses anyway. After a
/// failure the pause doubles, up to [`UNCONFIRMED_RELEASE_MAX_PAUSE`], and the last call
/// comes as the lease ends: an outage costs the store, and the count of its errors, eight
/// calls per failed claim over a lease of 60 s, where a call a second made 60.
pub(crate) async fn released_until_known<F, R>(mut release: F, lease: Duration)
where
    F: FnMut() -> R,
    R: Future<Output = Result<bool, StoreError>>,
{
    let deadline = deadline_after(lease);
    let mut absent = 0;
    let mut after_failure = UNCONFIRMED_RELEASE_PAUSE;
    loop {
        let pause = match release().await {
            Ok(true) => break,
            Ok(false) => {
                absent += 1;
                UNCONFIRMED_RELEASE_PAUSE
            }
            Err(_) => {
                let pause = after_failure;
                after_failure = (after_failure * 2).min(UNCONFIRMED_RELEASE_MAX_PAUSE);
                pause
            }
        };
        // Done once the store has twice said it is not there: no pause after that.
        let now = tokio::time::Instant::now();
        if absent == 2 || now >= deadline {
            break;
        }
        tokio::time::sleep_until((now + pause).min(deadline)).await;
    }
}

/// One of the releases under way that [`Engine::release_unconfirmed`] (or the Postgres
/// store's own) counts: counted down when dropped, so that a task a stopping runtime drops
/// (an engine can outlive its runtime) frees its place too.
pub(crate) struct Counted(Arc<std::sync::atomic::AtomicUsize>);

impl Counted {
    /// One more counted by `count`, unless `most` are already.
    pub(crate) fn within(count: &Arc<std::sync::atomic::AtomicUsize>, most: usize) -> Option<Self> {
        let counted = Counted(Arc::clone(count));
        let before = counted.0.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        (before < most).then_some(counted)
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    }
}

/// What a claim answered late came to (see [`Engine::begin`]).
enum Late {
    /// Its answer: it runs, or it cannot be told who holds its key, or the store failed.
    Answered(Result<Begin, IdempotencyError>),
    /// Another request took its key over: the record that did.
    TakenOver(Record),
}

/// The runtime's clock `after` from now, [`FARTHEST`] at most: a wait for the first request
/// of a key (ten years is the attribute's longest `wait_timeout`, which no request outlives),
/// or the retries of a store operation for a lease (which may be `Duration::MAX`, past what
/// the clock can count).
fn deadline_after(after: Duration) -> tokio::time::Instant {
    tokio::time::Instant::now() + after.min(FARTHEST)
}

/// A claim on its way to the store. Dropped before the store answers (its run was cancelled:
/// a shutdown that cancels what its clients left), the claim may land all the same, held by
/// nobody: it is released in the background, as one whose answer was lost. Forgotten once
/// the store has answered.
struct Unanswered<'a> {
    engine: &'a Engine,
    policy: &'a Policy,
    key: &'a StoreKey,
    claim: &'a InFlight,
}

impl Drop for Unanswered<'_> {
    fn drop(&mut self) {
        let (key, token) = (*self.key, self.claim.token);
        self.engine
            .release_unconfirmed(key, token, lease(self.policy));
    }
}

/// The lease a claim under `policy` holds: [`Policy::MIN_LEASE`] at least, whatever the
/// policy says (a policy can be built without [`Policy::check`]).
fn lease(policy: &Policy) -> Duration {
    policy.lease.max(Policy::MIN_LEASE)
}

/// How long a record under `policy` is kept: [`Policy::MIN_TTL`] at least, whatever the
/// policy says (a policy can be built without [`Policy::check`]).
fn ttl(policy: &Policy) -> Duration {
    policy.ttl.max(Policy::MIN_TTL)
}

fn mismatch(policy: &Policy) -> IdempotencyError {
    let status = match policy.on_mismatch {
        OnMismatch::Unprocessable => 422,
        _ => 409,
    };
    IdempotencyError::Mismatch { status }
}

/// The answer to a live record found at claim time.
fn judge(
    policy: &Policy,
    fingerprint: Fingerprint,
    record: Record,
) -> Result<Begin, IdempotencyError> {
    let same = record.fingerprint() == fingerprint;
    match record {
        Record::Completed(c) if same || policy.on_mismatch == OnMismatch::Replay => {
            match c.response.body_omitted() {
                // Completed, but its response was too large to keep: it cannot be replayed.
                Some(size) => Err(IdempotencyError::ResponseTooLarge {
                    status: c.response.status(),
                    size,
                }),
                None => Ok(Begin::Replay(c)),
            }
        }
        Record::InFlight(_) if same || policy.on_mismatch == OnMismatch::Replay => {
            Err(IdempotencyError::InFlight)
        }
        _ => Err(mismatch(policy)),
    }
}

/// The pauses between attempts at a completion: doubling from 20 ms up to 1 s, for as long
/// as `budget` lasts from the first failure.
struct Backoff {
    next: Duration,
    deadline: tokio::time::Instant,
}

impl Backoff {
    const FIRST: Duration = Duration::from_millis(20);
    const MOST: Duration = Duration::from_secs(1);

    fn new(budget: Duration) -> Self {
        Self {
            next: Self::FIRST,
            deadline: deadline_after(budget),
        }
    }

    /// The pause before the next attempt, or `None` once the budget is spent.
    fn next(&mut self) -> Option<Duration> {
        let left = self
            .deadline
            .checked_duration_since(tokio::time::Instant::now())?;
        if left.is_zero() {
            return None;
        }
        let pause = self.next.min(left);
        self.next = (self.next * 2).min(Self::MOST);
        Some(pause)
    }
}

/// What follows a completion the store refused ([`Lease::refused`]).
enum Refused {
    /// The record is there, written by an earlier attempt.
    Recorded,
    /// Another request holds the key.
    Lost,
    /// Write the record again: the key is this lease's again.
    Again,
    /// Nobody holds the key, though this lease claimed it again: the store forgot that claim
    /// too (another failover). Claim it again, after a pause.
    ForgottenAgain,
    /// The store could not say who holds the key, or take it again.
    Failed(StoreError),
}

/// Who holds a key whose claim a lease's token no longer holds.
enum Holder {
    /// The lease, by the record its completion wrote.
    This,
    /// The lease, by its claim: a claim again (a renewal's) that landed after its completion
    /// or its release found none.
    Claim,
    /// Nobody: the store has no live record of the key.
    Nobody,
    /// Another request.
    Another,
}

/// A held claim. Finish it with [`Lease::finish`]; dropped unfinished (a cancelled or
/// panicking handler), it releases the key in the background so a retry runs again.
#[must_use = "a lease is released when dropped; finish it with the handler's response"]
pub struct Lease {
    engine: Engine,
    lease: Duration,
    ttl: Duration,
    cache: CachePolicy,
    max_response: usize,
    key: StoreKey,
    token: Token,
    fingerprint: Fingerprint,
    done: bool,
}

impl std::fmt::Debug for Lease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lease")
            .field("key", &self.key)
            .field("token", &self.token)
            .finish_non_exhaustive()
    }
}

impl Lease {
    /// The fencing token of this claim.
    pub fn token(&self) -> Token {
        self.token
    }

    /// The store key claimed.
    pub fn key(&self) -> StoreKey {
        self.key
    }

    /// How often a running handler renews the lease: a third of its length (which is
    /// [`Policy::MIN_LEASE`] at least, so renewals come 33 ms apart at most often).
    pub fn renew_every(&self) -> Duration {
        self.lease / 3
    }

    /// Extends the lease by its full length from now. `false` when the claim was lost.
    ///
    /// # Errors
    /// The store's error.
    pub async fn renew(&self) -> Result<bool, StoreError> {
        let now = self.engine.parts.clock.now();
        let (engine, lease_until) = (&self.engine, now.saturating_add(self.lease));
        let extend = || {
            engine
                .parts
                .store
                .extend(&self.key, self.token, lease_until, now)
        };
        engine.observed("extend", extend).await
    }

    /// Drives `operation` to completion, renewing the lease while it runs.
    pub async fn run<F: Future>(&self, operation: F) -> F::Output {
        let mut operation = pin!(operation);
        // An operation that finishes at once needs no timer.
        if let Poll::Ready(output) = poll_fn(|cx| Poll::Ready(operation.as_mut().poll(cx))).await {
            return output;
        }
        // Boxed: the timer and the renewal would otherwise take room in every run's future,
        // where an operation that waits (for I/O, most often) can afford an allocation.
        let renewing = Box::pin(self.renewing(operation));
        renewing.await
    }

    /// Drives `operation`, which has started, to completion, renewing the lease meanwhile.
    /// The operation runs on while a renewal waits for the store.
    ///
    /// The renewal runs on the operation's own thread: an operation that blocks it (blocking
    /// I/O, long computation outside `spawn_blocking`) stalls its renewals, and one blocked
    /// for longer than the lease lets another process take the key over. A renewal that comes
    /// a whole period late is warned about, naming the limit.
    async fn renewing<F: Future>(&self, mut operation: Pin<&mut F>) -> F::Output {
        let every = self.renew_every();
        let mut pause = every;
        loop {
            let tick = tokio::time::sleep(pause);
            let due = tick.deadline();
            match select(operation.as_mut(), pin!(tick)).await {
                Either::Left((output, _)) => return output,
                Either::Right(((), _)) => {
                    let late = tokio::time::Instant::now().saturating_duration_since(due);
                    if late >= every {
                        crate::warn_when_due!(
                            self.engine.parts.repeated.late,
                            "idempotency lease renewal came late: the handler blocks its thread; blocked longer than the lease, its key can be taken over and the operation run again (move blocking work to web::block or spawn_blocking)",
                            key = %self.key,
                            late_ms = late.as_millis() as u64,
                            lease_ms = self.lease.as_millis() as u64
                        );
                    }
                    // The operation goes on while the store is asked: a renewal that waits
                    // (for a connection that the operation's own transaction holds, say)
                    // must not stop it. One that is left unanswered when it ends is dropped:
                    // fenced by the token, and a claim's only, an extension changes no record;
                    // a claim again (the store had forgotten the claim) may still land after
                    // the completion's release looked, a claim nobody holds, which lapses
                    // with its lease (see `freed`).
                    let renewed = match select(operation.as_mut(), pin!(self.renewed())).await {
                        Either::Left((output, _)) => return output,
                        Either::Right((renewed, _)) => renewed,
                    };
                    pause = match renewed {
                        true => every,
                        false => every.min(RENEWAL_RETRY),
                    };
                }
            }
        }
    }

    /// Renews the lease once, as [`renewing`](Self::renewing) does, warning when it fails:
    /// `false` when the store failed, so that the renewal is tried again soon.
    async fn renewed(&self) -> bool {
        match self.renew().await {
            Ok(true) => true,
            // Nobody holds the key (the store forgot the claim): this lease claims it again.
            // A claim the store failed may have landed, and is this running request's if it
            // did: it is left to the next renewal, soon, to find or to claim again.
            Ok(false) => match Box::pin(self.reclaimed()).await {
                Ok(true) => {
                    tracing::warn!(
                        key = %self.key,
                        "idempotency claim was gone from the store while the handler runs; claimed again (a retry in between may have run the operation)"
                    );
                    true
                }
                Ok(false) => {
                    tracing::warn!(
                        key = %self.key,
                        "idempotency lease lost while the handler runs; its response will not be recorded"
                    );
                    true
                }
                Err(error) => {
                    crate::warn_when_due!(
                        self.engine.parts.repeated.renewals,
                        "idempotency claim was gone from the store while the handler runs, and claiming it again failed; retrying soon",
                        key = %self.key,
                        %error
                    );
                    false
                }
            },
            Err(error) => {
                crate::warn_when_due!(
                    self.engine.parts.repeated.renewals,
                    "idempotency lease renewal failed; retrying soon",
                    key = %self.key,
                    %error
                );
                false
            }
        }
    }

    /// Records `response` if the endpoint caches its status, else releases the key. A response
    /// larger than the endpoint's `max_response`, or than the store keeps, is recorded without
    /// its headers and body, so that retries learn it completed and never run it again.
    ///
    /// The operation ran, so a completion the store fails to take is not given up at once: it
    /// is retried with backoff for up to one lease, and the claim is renewed meanwhile, so
    /// that a retry of the request gets 409 (or 503), never a second run, while the store can
    /// still be told. A claim the store no longer has (it restarted without its records, or
    /// dropped the claim lapsed) is claimed again by its token, if nobody else has claimed
    /// the key since, and the response recorded: a later retry replays it.
    ///
    /// A future dropped before the store has taken the record (its run cancelled: a drain
    /// that ran out of time cancels the runs whose clients went away), even one never polled,
    /// leaves the completion to a task of its own, with the same retries, counted for
    /// [`Engine::abandoned_released`]: the operation ran, so the record is written rather than
    /// the key left in flight until its lease lapses and the operation run again.
    ///
    /// # Errors
    /// The store's last error, once retrying for a lease has not recorded the response; the
    /// claim then lapses with its lease.
    #[allow(
        clippy::manual_async_fn,
        reason = "smaller future, see the module note"
    )]
    pub fn finish(self, response: Response) -> impl Future<Output = Result<Outcome, StoreError>> {
        let size = response.size();
        let record = self.completion(response);
        // Dropped before the store has taken the record (its run cancelled: a drain that ran
        // out of time cancels the runs whose clients went away), even before its first poll,
        // the completion goes on in the background: the operation ran, and only its record is
        // left to write (see `Completing`).
        let mut completing = Completing {
            lease: self,
            record,
            size,
            armed: true,
        };
        async move {
            let Some(record) = completing.record.as_mut() else {
                // Released on drop until the store has answered: a run cancelled meanwhile
                // (a drain that ran out of time) leaves no claim in flight.
                let this = &mut completing.lease;
                let released = this.released().await;
                this.done = true;
                return Ok(match released? {
                    true => Outcome::Released,
                    false => Outcome::Lost,
                });
            };
            completing.lease.done = true;
            let outcome = completing.lease.completed(record, completing.size).await;
            #[allow(unused_assignments, reason = "read by the guard's drop")]
            {
                completing.armed = false;
            }
            outcome
        }
    }

    /// This lease, done (dropped, it releases nothing), for a completion that goes on without
    /// its run.
    fn detached(&self) -> Lease {
        Lease {
            engine: self.engine.clone(),
            done: true,
            ..*self
        }
    }

    /// Writes `record` in place of the claim, in a task of its own (counted for
    /// [`Engine::abandoned_released`], as a release in the background is): for a completion
    /// whose run was dropped as it recorded. It goes on as [`finish`](Self::finish) would
    /// have, the claim renewed between its attempts and claimed again if the store forgot it.
    fn complete_in_background(mut self, mut record: Completed, size: usize) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            tracing::warn!(key = %self.key, "an idempotency record was left unwritten outside a runtime; its claim lapses with its lease");
            return;
        };
        let completing = self.engine.parts.releasing.start();
        runtime.spawn(async move {
            match self.completed(&mut record, size).await {
                Ok(Outcome::Lost) => {
                    tracing::warn!(key = %self.key, "the response of a cancelled run was not recorded: another request holds its key");
                }
                Err(error) => {
                    tracing::warn!(key = %self.key, %error, "recording the response of a cancelled run failed; its claim lapses with its lease");
                }
                Ok(_) => {}
            }
            drop(completing);
        });
    }

    /// Writes `record`, whose response is `size` bytes, in place of the claim: the heart of
    /// [`finish`](Self::finish).
    #[allow(
        clippy::manual_async_fn,
        reason = "smaller future, see the module note"
    )]
    fn completed<'a>(
        &'a mut self,
        record: &'a mut Completed,
        size: usize,
    ) -> impl Future<Output = Result<Outcome, StoreError>> + 'a {
        async move {
            // Made at the first failure only: the common path reads no clock for it.
            let mut retry: Option<Backoff> = None;
            let mut reclaimed = false;
            // Whether this lease's own claim was found in place of the record once.
            let mut found_claim = false;
            loop {
                loop {
                    let attempt = record.clone();
                    let now = self.engine.parts.clock.now();
                    let complete =
                        || (self.engine.parts.store).complete(&self.key, self.token, attempt, now);
                    let error = match self.engine.observed("complete", complete).await {
                        Ok(true) => return Ok(Outcome::Recorded),
                        Ok(false) => break,
                        Err(error) => error,
                    };
                    if let StoreError::TooLarge { .. } = error {
                        if record.response.body_omitted().is_none() {
                            let status = record.response.status();
                            record.response = Response::omitted(status, size as u64);
                            continue;
                        }
                    }
                    let backoff = retry.get_or_insert_with(|| Backoff::new(self.lease));
                    let Some(pause) = backoff.next() else {
                        return Err(error);
                    };
                    crate::warn_when_due!(
                        self.engine.parts.repeated.records,
                        "recording the response failed; retrying while the claim is kept",
                        key = %self.key,
                        %error
                    );
                    tokio::time::sleep(pause).await;
                    // Keep the claim while the store can still be told; an error here is the
                    // store's failure again, and the next attempt retries both.
                    if let Ok(false) = self.renew().await {
                        break;
                    }
                }
                // The token no longer holds the key: another request claimed it once the
                // lease lapsed, or this completion landed already, by an attempt whose answer
                // was lost (after a failure, or one the store's client resent on its own), or
                // the store no longer has the claim (it forgot it, or dropped it lapsed).
                // Boxed: rare, and its futures would otherwise swell this one's.
                let refused = self.refused(record, &mut reclaimed, &mut found_claim);
                let failed = match Box::pin(refused).await {
                    Refused::Recorded => return Ok(Outcome::Recorded),
                    Refused::Lost => return Ok(Outcome::Lost),
                    Refused::Again => continue,
                    Refused::ForgottenAgain => {
                        // Claimed again after a pause, for as long as a failed completion is
                        // retried: the operation ran, and a store failing over again and
                        // again may still come to keep its record.
                        let backoff = retry.get_or_insert_with(|| Backoff::new(self.lease));
                        let Some(pause) = backoff.next() else {
                            return Ok(Outcome::Lost);
                        };
                        tracing::warn!(key = %self.key, "the store forgot the claim taken again to record the response; claiming it again");
                        tokio::time::sleep(pause).await;
                        reclaimed = false;
                        continue;
                    }
                    Refused::Failed(error) => error,
                };
                // The store failed to say who holds the key, or to take the claim again: as a
                // failed completion, tried again for as long as a lease, after a pause. The
                // claim is not renewed meanwhile: the store no longer has it.
                // The error is dropped before the pause, so that the future does not keep it.
                let pause = match retry.get_or_insert_with(|| Backoff::new(self.lease)).next() {
                    Some(pause) => pause,
                    None => return Err(failed),
                };
                crate::warn_when_due!(
                    self.engine.parts.repeated.records,
                    "recording the response of a claim the store forgot failed; retrying",
                    key = %self.key,
                    error = %failed
                );
                drop(failed);
                tokio::time::sleep(pause).await;
            }
        }
    }

    /// What to do once the store refused this lease's completion of `record`: it holds the
    /// record already, or this lease's claim again (`found_claim`, once); or nobody holds the
    /// key and it is claimed again (`reclaimed`) before another attempt, or, where it was
    /// already, the store forgot that claim too; or another request holds it. Or the store's
    /// error, when it could not say or take the claim.
    async fn refused(
        &self,
        record: &Completed,
        reclaimed: &mut bool,
        found_claim: &mut bool,
    ) -> Refused {
        match self.holder(Some(record)).await {
            Ok(Holder::This) => Refused::Recorded,
            // Its own claim, claimed again by a renewal whose write landed after the
            // completion found none: the record is written under it.
            Ok(Holder::Claim) if !*found_claim => {
                *found_claim = true;
                Refused::Again
            }
            Ok(Holder::Nobody) if *reclaimed => Refused::ForgottenAgain,
            // Nobody holds the key: the operation ran, so it is claimed again by this token,
            // and its record written as before.
            Ok(Holder::Nobody) => match self.reclaimed().await {
                Ok(true) => {
                    *reclaimed = true;
                    Refused::Again
                }
                Ok(false) => Refused::Lost,
                // It may have landed all the same: the next attempt finds out.
                Err(error) => Refused::Failed(error),
            },
            Ok(_) => Refused::Lost,
            Err(error) => Refused::Failed(error),
        }
    }

    /// Who holds the key once this lease's token no longer does: this lease, by `record`,
    /// written by an earlier attempt of [`finish`](Self::finish) whose answer was lost (the
    /// same record, response and times included: another request's could only be told from it
    /// by nothing a client sees); this lease by its claim (claimed again by a renewal whose
    /// write landed late); nobody (as after a release of this lease that landed); or another
    /// request. Or the store's error, when it cannot say.
    async fn holder(&self, record: Option<&Completed>) -> Result<Holder, StoreError> {
        let now = self.engine.parts.clock.now();
        let get = || self.engine.parts.store.get(&self.key, now);
        Ok(match self.engine.observed("get", get).await? {
            Some(Record::Completed(found)) if Some(&found) == record => Holder::This,
            Some(found) if found.is_claim_of(self.token) => Holder::Claim,
            None => Holder::Nobody,
            Some(_) => Holder::Another,
        })
    }

    /// Claims the key again by this lease's token, when the store no longer has its claim (a
    /// store that restarted without its records, a failover to a replica the claim had not
    /// reached, a lapsed claim dropped) and nobody else has claimed the key since: `Ok(true)`
    /// when this lease holds it again. Atomic as any claim, so a key another request holds
    /// stays theirs. A claim the store failed may have landed all the same, held by this
    /// lease's token: the caller releases it, or keeps it if its request still runs.
    async fn reclaimed(&self) -> Result<bool, StoreError> {
        let now = self.engine.parts.clock.now();
        let claim = InFlight {
            fingerprint: self.fingerprint,
            lease_until: now.saturating_add(self.lease),
            token: self.token,
        };
        let claim_it = || self.engine.parts.store.reclaim(&self.key, claim, now);
        match self.engine.observed("claim", claim_it).await? {
            Claim::Claimed => Ok(true),
            Claim::Existing(record) => Ok(record.is_claim_of(claim.token)),
        }
    }

    /// The record that completes this claim with `response`, as [`finish`](Self::finish)
    /// writes it: `None` when the endpoint does not cache its status.
    fn completion(&self, response: Response) -> Option<Completed> {
        if !self.cache.caches(response.status()) {
            return None;
        }
        let now = self.engine.parts.clock.now();
        let size = response.size();
        let response = if size > self.max_response {
            Response::omitted(response.status(), size as u64)
        } else {
            response
        };
        Some(Completed {
            fingerprint: self.fingerprint,
            response,
            completed_at: now,
            expires_at: now.saturating_add(self.ttl),
        })
    }

    /// Finishes the claim through `settle`, which writes the record or releases the claim
    /// itself: for a completion that must commit together with other writes, such as those
    /// of a transaction of the Postgres store.
    ///
    /// `settle` is given the record [`finish`](Self::finish) would write, or `None` when the
    /// endpoint does not cache the response's status and the claim is to be released. It
    /// writes or releases fenced by this lease's [`token`](Self::token), and answers as
    /// [`Store::complete`] or [`Store::release`] do: `Ok(true)` when done, `Ok(false)` when
    /// the token no longer holds the key. Once `settle` has answered, the lease leaves the
    /// claim to it: it no longer releases the key when dropped, so a committed transaction
    /// costs no stray release. Dropped before that (a run cancelled mid-commit, as a drain
    /// that runs out of time cancels it), the lease releases the claim in the background, as
    /// any lease dropped unfinished: a release only deletes a claim, so it waits for a commit
    /// under way on the claim's row and leaves the record that commit wrote.
    ///
    /// Unlike [`finish`](Self::finish), a failure is not retried: the writes that were to
    /// commit with the record are gone with it, so recording the response alone would
    /// record what did not happen. `settle` releases the claim when it fails, if it can; in
    /// case it could not (the store went away with the commit), the lease then releases it
    /// once more in the background, retried as [`release`](Self::release) is, so that a
    /// retry need not wait for the lease to lapse. A release only deletes a claim: a record
    /// whose commit landed though its answer was lost stays.
    ///
    /// # Errors
    /// `settle`'s error.
    pub async fn finish_with<F, Fut>(
        mut self,
        response: Response,
        settle: F,
    ) -> Result<Outcome, StoreError>
    where
        F: FnOnce(Option<Completed>) -> Fut,
        Fut: Future<Output = Result<bool, StoreError>>,
    {
        let record = self.completion(response);
        let (op, done) = match record {
            Some(_) => ("complete", Outcome::Recorded),
            None => ("release", Outcome::Released),
        };
        // Until `settle` answers, a drop releases the claim: a cancelled run's settlement
        // ends with it, and may have left the claim in flight.
        let settled = self.engine.settled(op, settle(record)).await;
        // An error leaves it to the drop, which releases it in the background, with retries.
        self.done = settled.is_ok();
        match settled {
            Ok(true) => Ok(done),
            // A release that found no claim: released if the key is free (see `freed`).
            // Boxed: rare, and its futures would otherwise swell this one's.
            Ok(false) if done == Outcome::Released && Box::pin(self.freed()).await => Ok(done),
            Ok(false) => Ok(Outcome::Lost),
            Err(error) => Err(error),
        }
    }

    /// Releases the claim through `release`, which releases it itself (fenced by this
    /// lease's [`token`](Self::token)) after undoing what was to commit with the record,
    /// such as by rolling a transaction back: for an operation that failed. Answers as
    /// [`release`](Self::release) does: `release`'s answer, but `true` when it found no claim
    /// and nobody holds the key (a release whose answer was lost, run again). Once it has
    /// answered, the lease no longer releases the key when dropped (dropped before, it
    /// does).
    ///
    /// # Errors
    /// `release`'s error; the lease then releases the claim in the background, retried as
    /// [`release`](Self::release) is, and it lapses with its lease if that fails too.
    pub async fn release_with(
        mut self,
        release: impl Future<Output = Result<bool, StoreError>>,
    ) -> Result<bool, StoreError> {
        let released = self.engine.settled("release", release).await;
        // Released in the background when dropped, with retries.
        self.done = released.is_ok();
        match released {
            // Boxed: rare, and its futures would otherwise swell this one's.
            Ok(false) => Ok(Box::pin(self.freed()).await),
            released => released,
        }
    }

    /// Releases the key without recording anything, so that a retry runs again. `true` when
    /// the key is free now (released by this call, or by an attempt whose answer was lost, or
    /// the claim lapsed and gone), `false` when another request holds it, or when the store,
    /// having found no claim to release, cannot say who holds the key.
    ///
    /// # Errors
    /// The store's last error, once retrying for a lease has not released the key; the claim
    /// then lapses with its lease.
    pub async fn release(mut self) -> Result<bool, StoreError> {
        // Dropped before the store answers (a cancelled run), the lease releases it still.
        let released = self.released().await;
        self.done = true;
        released
    }

    /// The store's release of this claim, observed. A release the store fails is retried
    /// with backoff for up to one lease, as a completion is: until the store is told, retries
    /// of the request get 409 instead of running it again. One the store says found no claim
    /// answers as [`freed`](Self::freed) tells.
    async fn released(&self) -> Result<bool, StoreError> {
        let mut retry: Option<Backoff> = None;
        loop {
            let error = match self.engine.released_once(&self.key, self.token).await {
                Ok(true) => return Ok(true),
                // Boxed: rare, and its futures would otherwise swell this one's.
                Ok(false) => return Ok(Box::pin(self.freed()).await),
                Err(error) => error,
            };
            let backoff = retry.get_or_insert_with(|| Backoff::new(self.lease));
            let Some(pause) = backoff.next() else {
                return Err(error);
            };
            crate::warn_when_due!(
                self.engine.parts.repeated.releases,
                "releasing the idempotency claim failed; retrying",
                key = %self.key,
                %error
            );
            tokio::time::sleep(pause).await;
        }
    }

    /// Whether the key is free after a release of this claim found none there: `true` when
    /// nobody holds it, as after an earlier attempt whose answer was lost (the engine retried
    /// it, the store's client resent it, or Postgres ran it again on a new connection), or
    /// after this lease's claim lapsed and was dropped, or taken over and released; when it
    /// holds this lease's claim again (a renewal's claim again whose write landed after the
    /// release), as the release of that claim answers (one the store fails, `false`, goes on
    /// in the background); `false` when another request holds
    /// it, or when the store cannot say after [`LOOKS`] tries a few tens of milliseconds
    /// apart: only the outcome's name (released or lost) hangs on it, not worth holding the
    /// answer to the client longer.
    async fn freed(&self) -> bool {
        let mut pause = Backoff::FIRST;
        for look in 1..=LOOKS {
            match self.holder(None).await {
                // Once: a claim that lands again after this release too lapses with its lease.
                // One the store fails to release is released in the background, with
                // retries, as a dropped lease's claim is.
                Ok(Holder::Claim) => {
                    return match self.engine.released_once(&self.key, self.token).await {
                        Ok(released) => released,
                        Err(_) => {
                            (self.engine).release_in_background(self.key, self.token, self.lease);
                            false
                        }
                    };
                }
                Ok(holder) => return matches!(holder, Holder::Nobody),
                Err(_) if look < LOOKS => {
                    tokio::time::sleep(pause).await;
                    pause *= 2;
                }
                Err(_) => {}
            }
        }
        false
    }
}

/// How many times a release that found no claim looks at who holds the key (see
/// [`Lease::freed`]).
const LOOKS: u32 = 3;

/// A [`Lease::finish`]'s lease and the record it writes (`None`: the claim is released).
/// Dropped while still `armed` (its future dropped before its first poll, or while the store
/// had not answered), the record is written in the background: the operation ran. A claim to
/// release is released by the lease's own drop.
struct Completing {
    lease: Lease,
    record: Option<Completed>,
    /// The response's size, for a record the store finds too large.
    size: usize,
    /// Until the completion has ended, however it ended.
    armed: bool,
}

impl Drop for Completing {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        if let Some(record) = self.record.take() {
            self.lease.done = true;
            self.lease
                .detached()
                .complete_in_background(record, self.size);
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if !self.done {
            (self.engine).release_in_background(self.key, self.token, self.lease);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::{ManualClock, Timestamp};
    use crate::store::{MokaStore, StoreFuture};
    use crate::testing::{CountingStore, Fault, FaultyStore, UnavailableStore};
    use std::collections::HashMap;

    const START: Timestamp = Timestamp::from_millis(1_700_000_000_000);

    fn setup() -> (Engine, ManualClock) {
        let clock = ManualClock::new(START);
        (
            Engine::new(MokaStore::new()).with_clock(clock.clone()),
            clock,
        )
    }

    fn key(n: u8) -> StoreKey {
        StoreKey::from_bytes([n; 32])
    }

    fn fp(body: &str) -> Fingerprint {
        Fingerprint::new("POST", "/v1/calls", "", body.as_bytes())
    }

    fn response(status: u16, body: &'static str) -> Response {
        Response::new(status, [("location", &b"/v1/calls/1"[..])], body.as_bytes())
    }

    async fn execute(engine: &Engine, policy: &Policy, k: StoreKey, f: Fingerprint) -> Lease {
        match engine.begin(policy, k, f).await {
            Ok(Begin::Execute(lease)) => lease,
            other => panic!("expected a claim, got {other:?}"),
        }
    }

    /// The futures a request holds while it waits on the store, in bytes on a 64-bit target,
    /// held a little above what they are so that growth fails here; each bound is below what
    /// the future would be with `observed` and `finish` as `async fn`s (704 bytes each when
    /// last measured; `begin` holds a guard of its claim since, and `finish` one of its
    /// completion, which writes the record in the background if the run is dropped). See
    /// "Future sizes" in the module note.
    #[tokio::test]
    async fn store_futures_stay_small() {
        let (engine, _) = setup();
        let policy = Policy::DEFAULT;
        let begin = engine.begin(&policy, key(1), fp("a"));
        let begin_size = std::mem::size_of_val(&begin);
        let lease = match begin.await {
            Ok(Begin::Execute(lease)) => lease,
            other => panic!("expected a claim, got {other:?}"),
        };
        let finish = lease.finish(response(201, "ok"));
        let finish_size = std::mem::size_of_val(&finish);
        assert!(
            begin_size <= 690,
            "Engine::begin's future is {begin_size} bytes"
        );
        assert!(
            finish_size <= 600,
            "Lease::finish's future is {finish_size} bytes"
        );
        assert!(matches!(finish.await, Ok(Outcome::Recorded)));
    }

    /// The body a retry of `k` (as `fp("a")`) is answered with, from its record.
    async fn replayed_body(engine: &Engine, policy: &Policy, k: StoreKey) -> Vec<u8> {
        replay(engine, policy, k, fp("a"))
            .await
            .response
            .body()
            .to_vec()
    }

    async fn replay(engine: &Engine, policy: &Policy, k: StoreKey, f: Fingerprint) -> Completed {
        match engine.begin(policy, k, f).await {
            Ok(Begin::Replay(c)) => c,
            other => panic!("expected a replay, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn first_request_runs_and_retries_replay_it() {
        let (engine, _) = setup();
        let policy = Policy::DEFAULT;
        let lease = execute(&engine, &policy, key(1), fp("a")).await;
        let outcome = lease.finish(response(201, "call_1")).await.unwrap();
        assert_eq!(outcome, Outcome::Recorded, "201 is recorded");
        let replayed = replay(&engine, &policy, key(1), fp("a")).await;
        assert_eq!(replayed.response, response(201, "call_1"));
        assert_eq!(replayed.fingerprint, fp("a"));
        assert_eq!(replayed.expires_at, START.saturating_add(policy.ttl));
        let headers: Vec<_> = replayed.response.headers().collect();
        assert_eq!(headers, [("location", &b"/v1/calls/1"[..])]);
        assert_eq!(&replayed.response.body()[..], b"call_1");
    }

    /// A store that can keep no record (not even one without its response) is claimed
    /// nothing in: the operation would run, its completion fail for a lease, and a retry run it
    /// again. Both ways of beginning refuse, and nothing is written.
    #[tokio::test]
    async fn a_store_that_keeps_no_record_is_claimed_nothing_in() {
        let store = Arc::new(MokaStore::builder().max_bytes(200).build());
        let engine = Engine::from_arc(Arc::clone(&store) as Arc<dyn Store>);
        let policy = Policy::DEFAULT;
        let too_small = |result: Result<Begin, IdempotencyError>| {
            matches!(
                result,
                Err(IdempotencyError::Misconfigured(
                    PolicyError::StoreTooSmall { .. }
                ))
            )
        };
        assert!(too_small(engine.begin(&policy, key(1), fp("a")).await));
        let now = engine.begin_now(&policy, key(1), fp("a"));
        assert!(too_small(now.expect("answered in the call")));
        assert_eq!(store.get(&key(1), START).await.unwrap(), None);
        let roomy = Engine::new(MokaStore::builder().max_bytes(4096).build());
        let _claimed = execute(&roomy, &policy, key(1), fp("a")).await;
    }

    #[tokio::test]
    async fn begin_now_answers_as_begin_does_on_a_store_that_claims_in_the_call() {
        let (engine, _) = setup();
        let policy = Policy::DEFAULT;
        let Some(Ok(Begin::Execute(lease))) = engine.begin_now(&policy, key(1), fp("a")) else {
            panic!("the first request claims the key");
        };
        assert!(
            matches!(
                engine.begin_now(&policy, key(1), fp("a")),
                Some(Err(IdempotencyError::InFlight))
            ),
            "a duplicate of a running request conflicts"
        );
        lease.finish(response(201, "call_1")).await.unwrap();
        let Some(Ok(Begin::Replay(replayed))) = engine.begin_now(&policy, key(1), fp("a")) else {
            panic!("a retry replays");
        };
        assert_eq!(replayed.response, response(201, "call_1"));
        assert!(matches!(
            engine.begin_now(&policy, key(1), fp("b")),
            Some(Err(IdempotencyError::Mismatch { status: 409 }))
        ));
    }

    #[tokio::test]
    async fn begin_now_declines_without_writing_where_begin_must_wait() {
        // A store that answers only through futures.
        let engine = Engine::new(CountingStore::new(UnavailableStore));
        assert!(engine
            .begin_now(&Policy::DEFAULT, key(1), fp("a"))
            .is_none());

        // An endpoint that waits for running requests.
        let store = CountingStore::new(MokaStore::new());
        let engine = Engine::new(store.clone());
        let waits = Policy::DEFAULT.on_in_flight(OnInFlight::Wait(Duration::from_secs(1)));
        assert!(engine.begin_now(&waits, key(1), fp("a")).is_none());
        assert!(store.take().is_empty(), "nothing was asked of the store");
        assert!(matches!(
            engine.begin(&waits, key(1), fp("a")).await,
            Ok(Begin::Execute(_))
        ));

        // Answered in the call, and counted as the one claim it is.
        assert!(engine
            .begin_now(&Policy::DEFAULT, key(2), fp("a"))
            .is_some());
        assert_eq!(store.take(), HashMap::from([("claim", 2)]));
    }

    #[tokio::test]
    async fn a_response_too_large_to_keep_is_recorded_as_completed_without_its_body() {
        let (engine, _) = setup();
        let policy = Policy::DEFAULT.max_response(16);
        let lease = execute(&engine, &policy, key(1), fp("a")).await;
        let big = Response::new(201, [("location", &b"/x"[..])], &[b'x'; 100]);
        lease.finish(big).await.unwrap();
        let Ok(Some(Record::Completed(record))) = engine.store().get(&key(1), START).await else {
            panic!("the key is recorded as completed");
        };
        assert_eq!(record.response.status(), 201);
        assert_eq!(record.response.body_omitted(), Some(100 + 8 + 2 + 6));
        assert!(record.response.body().is_empty());
        assert_eq!(record.response.headers().count(), 0);
        // Retries learn it completed, and it never runs again.
        let err = engine.begin(&policy, key(1), fp("a")).await.unwrap_err();
        assert!(matches!(
            err,
            IdempotencyError::ResponseTooLarge {
                status: 201,
                size: 116
            }
        ));
        assert_eq!(err.code(), "idempotency_response_too_large");
    }

    #[tokio::test(start_paused = true)]
    async fn a_completion_the_store_failed_is_retried_and_the_operation_never_runs_again() {
        let clock = ManualClock::new(START);
        let store = FaultyStore::new(MokaStore::new());
        let engine = Engine::new(store.clone()).with_clock(clock.clone());
        let policy = Policy::DEFAULT;
        let lease = execute(&engine, &policy, key(1), fp("a")).await;
        // The first two attempts fail as a dropped connection would.
        store.fail("complete", 2, Fault::Unavailable);
        assert_eq!(
            lease.finish(response(201, "once")).await.unwrap(),
            Outcome::Recorded
        );
        assert_eq!(store.calls("complete"), 3);
        // Long after the lease would have lapsed, the retry still replays.
        clock.advance(policy.lease * 3);
        assert_eq!(replayed_body(&engine, &policy, key(1)).await, b"once");
    }

    /// An engine outlives the runtime it served on (an app's settings reused by a server
    /// started again): a release of a failed claim that the stopping runtime dropped frees its
    /// place among the releases under way, where each such place was lost, until no failed
    /// claim was released at all.
    #[test]
    fn a_release_a_stopping_runtime_drops_frees_its_place() {
        let store = FaultyStore::new(MokaStore::new());
        let engine = Engine::new(store.clone());
        let under_way = || (engine.parts.unconfirmed).load(std::sync::atomic::Ordering::Acquire);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        runtime.block_on(async {
            store.fail("claim", 1, Fault::Timeout);
            store.fail("release", usize::MAX, Fault::Unavailable);
            let begun = engine.begin(&Policy::DEFAULT, key(1), fp("a")).await;
            assert!(begun.is_err());
            tokio::task::yield_now().await;
            assert_eq!(under_way(), 1, "its release retries");
        });
        drop(runtime);
        assert_eq!(under_way(), 0);
    }

    /// A lease as long as a policy may say (`Duration::MAX`, past what the runtime's clock can
    /// count): the retries of a completion the store failed, and of a release, are timed by
    /// it, and panicked adding it to the clock, so that a run's record was never written and
    /// a dropped claim never released (its key answered 409 for good).
    #[tokio::test(start_paused = true)]
    async fn a_lease_longer_than_the_clock_counts_still_retries_completions_and_releases() {
        let store = FaultyStore::new(MokaStore::new());
        let engine = Engine::new(store.clone());
        let policy = Policy::DEFAULT.lease(Duration::MAX);
        let lease = execute(&engine, &policy, key(1), fp("a")).await;
        store.fail("complete", 1, Fault::Unavailable);
        let finished = std::panic::AssertUnwindSafe(lease.finish(response(201, "once")));
        let outcome = futures_util::FutureExt::catch_unwind(finished).await;
        assert!(
            matches!(outcome, Ok(Ok(Outcome::Recorded))),
            "the completion is retried"
        );
        assert_eq!(replayed_body(&engine, &policy, key(1)).await, b"once");

        let lease = execute(&engine, &policy, key(2), fp("a")).await;
        store.fail("release", 1, Fault::Unavailable);
        drop(lease);
        engine.abandoned_released().await;
        drop(execute(&engine, &policy, key(2), fp("a")).await);
    }

    #[tokio::test(start_paused = true)]
    async fn a_completion_that_landed_but_whose_answer_was_lost_counts_as_recorded() {
        let store = FaultyStore::new(MokaStore::new());
        let engine = Engine::new(store.clone());
        let policy = Policy::DEFAULT;
        // The record is written, but the answer times out, and the engine's retry finds the
        // key completed; or the store's client resends it (a dropped connection), and the
        // second, finding the key completed, is the answer the engine gets.
        for (n, fault) in [(1, Fault::Lost), (2, Fault::Resent)] {
            let lease = execute(&engine, &policy, key(n), fp("a")).await;
            store.fail("complete", 1, fault);
            assert_eq!(
                lease.finish(response(201, "once")).await.unwrap(),
                Outcome::Recorded,
                "{fault:?}"
            );
            assert_eq!(replayed_body(&engine, &policy, key(n)).await, b"once");
        }
    }

    /// A server error releases the key. The release lands, but its answer is lost (the engine
    /// retries it) or the store's client resends it: the key is free all the same, so the
    /// outcome is a release, not a response lost to another request.
    #[tokio::test(start_paused = true)]
    async fn a_release_that_landed_but_whose_answer_was_lost_counts_as_released() {
        let store = FaultyStore::new(MokaStore::new());
        let engine = Engine::new(store.clone());
        let policy = Policy::DEFAULT;
        for (n, fault) in [(1, Fault::Lost), (2, Fault::Resent)] {
            let lease = execute(&engine, &policy, key(n), fp("a")).await;
            store.fail("release", 1, fault);
            assert_eq!(
                lease.finish(response(503, "later")).await.unwrap(),
                Outcome::Released,
                "{fault:?}"
            );
            // Free: the retry runs.
            drop(execute(&engine, &policy, key(n), fp("a")).await);
        }
    }

    /// The same for a release without a response (a handler that panicked, an extractor that
    /// refused the request): it answers that the claim was released, where it said the claim
    /// had been lost before (and the layer warned of it).
    #[tokio::test(start_paused = true)]
    async fn a_plain_release_that_landed_but_whose_answer_was_lost_answers_released() {
        let store = FaultyStore::new(MokaStore::new());
        let engine = Engine::new(store.clone());
        let policy = Policy::DEFAULT;
        for (n, fault) in [(1, Fault::Lost), (2, Fault::Resent)] {
            let lease = execute(&engine, &policy, key(n), fp("a")).await;
            store.fail("release", 1, fault);
            assert!(lease.release().await.unwrap(), "{fault:?}");
            drop(execute(&engine, &policy, key(n), fp("a")).await);
        }
        // The look at who holds the key, which tells, fails too: asked again.
        for (n, status) in [(4, None), (5, Some(503))] {
            let lease = execute(&engine, &policy, key(n), fp("a")).await;
            store.fail("release", 1, Fault::Lost);
            store.fail("get", 1, Fault::Unavailable);
            match status {
                None => assert!(lease.release().await.unwrap()),
                Some(status) => assert_eq!(
                    lease.finish(response(status, "later")).await.unwrap(),
                    Outcome::Released
                ),
            }
            drop(execute(&engine, &policy, key(n), fp("a")).await);
        }
        // Another request's claim on the key: not this lease's to release.
        let clock = ManualClock::new(START);
        let engine = Engine::new(store.clone()).with_clock(clock.clone());
        let policy = Policy::DEFAULT.lease(Duration::from_secs(30));
        let lease = execute(&engine, &policy, key(3), fp("a")).await;
        clock.advance(Duration::from_secs(31));
        let other = execute(&engine, &policy, key(3), fp("a")).await;
        store.fail("release", 1, Fault::Lost);
        assert!(!lease.release().await.unwrap());
        drop(other);
    }

    #[tokio::test(start_paused = true)]
    async fn a_completion_retried_after_another_request_took_the_key_over_is_lost() {
        let clock = ManualClock::new(START);
        let store = FaultyStore::new(MokaStore::new());
        let engine = Engine::new(store.clone()).with_clock(clock.clone());
        let policy = Policy::DEFAULT.lease(Duration::from_secs(30));
        let lease = execute(&engine, &policy, key(1), fp("a")).await;
        // Cut off for longer than a lease: neither the record nor a renewal gets through.
        store.fail("complete", 1, Fault::Unavailable);
        store.fail("extend", usize::MAX, Fault::Unavailable);
        let finishing = tokio::spawn(lease.finish(response(201, "ours")));
        while store.calls("complete") == 0 {
            tokio::task::yield_now().await;
        }
        clock.advance(Duration::from_secs(31));
        let other = execute(&engine, &policy, key(1), fp("a")).await;
        other.finish(response(201, "theirs")).await.unwrap();
        store.heal();
        assert_eq!(finishing.await.unwrap().unwrap(), Outcome::Lost);
        let kept = replay(&engine, &policy, key(1), fp("a")).await;
        assert_eq!(&kept.response.body()[..], b"theirs");
    }

    #[tokio::test(start_paused = true)]
    async fn a_completion_being_retried_keeps_its_claim_so_a_duplicate_never_runs() {
        let clock = ManualClock::new(START);
        let store = FaultyStore::new(MokaStore::new());
        let engine = Engine::new(store.clone()).with_clock(clock.clone());
        let policy = Policy::DEFAULT.lease(Duration::from_secs(30));
        let lease = execute(&engine, &policy, key(1), fp("a")).await;
        store.fail("complete", usize::MAX, Fault::Timeout);
        let finishing = tokio::spawn(lease.finish(response(201, "once")));
        // Twice the lease passes on the clock while the store refuses the record.
        for _ in 0..6 {
            tokio::time::sleep(Duration::from_secs(2)).await;
            clock.advance(Duration::from_secs(10));
            let duplicate = engine.begin(&policy, key(1), fp("a")).await;
            assert!(
                matches!(duplicate, Err(IdempotencyError::InFlight)),
                "a duplicate must not run while the completion is retried: {duplicate:?}"
            );
        }
        store.heal();
        assert_eq!(finishing.await.unwrap().unwrap(), Outcome::Recorded);
        replay(&engine, &policy, key(1), fp("a")).await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_completion_the_store_keeps_refusing_gives_up_after_one_lease() {
        let store = FaultyStore::new(MokaStore::new());
        let engine = Engine::new(store.clone());
        let policy = Policy::DEFAULT.lease(Duration::from_secs(30));
        let lease = execute(&engine, &policy, key(1), fp("a")).await;
        store.fail("complete", usize::MAX, Fault::Unavailable);
        let started = tokio::time::Instant::now();
        let error = lease.finish(response(201, "once")).await.unwrap_err();
        assert!(matches!(error, StoreError::Unavailable(_)), "{error:?}");
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_secs(30) && waited < Duration::from_secs(35),
            "retried for {waited:?}"
        );
    }

    #[tokio::test]
    async fn a_claim_whose_answer_was_lost_does_not_hold_the_key_for_a_lease() {
        // The store timed out, but wrote the claim: nobody holds it, and retries would get 409
        // until its lease lapsed.
        let store = FaultyStore::new(MokaStore::new());
        let engine = Engine::new(store.clone());
        let policy = Policy::DEFAULT;
        store.fail("claim", 1, Fault::Lost);
        let err = engine.begin(&policy, key(1), fp("a")).await.unwrap_err();
        assert!(matches!(err, IdempotencyError::StoreUnavailable(_)));
        retry_runs_at_once(&engine, &engine).await;
    }

    /// During an outage every claim fails, and each may have landed (a command that timed out
    /// may run later): each is released in the background, retried for up to a lease. Those
    /// tasks are bounded, so that an outage under load does not pile up one task per request
    /// for a whole lease, all of them calling the store every second (and at once when it is
    /// back); past the bound, a claim that landed lapses with its lease.
    #[tokio::test(start_paused = true)]
    async fn background_releases_of_failed_claims_are_bounded_during_an_outage() {
        let store = CountingStore::new(UnavailableStore);
        let engine = Engine::new(store.clone());
        let failed = 3 * MAX_UNCONFIRMED_RELEASES;
        for n in 0..failed {
            let mut bytes = [0; 32];
            bytes[..8].copy_from_slice(&(n as u64).to_be_bytes());
            let k = StoreKey::from_bytes(bytes);
            let begun = engine.begin(&Policy::DEFAULT, k, fp("a")).await;
            assert!(matches!(begun, Err(IdempotencyError::StoreUnavailable(_))));
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
        let releasing = (engine.parts.releasing.count).load(std::sync::atomic::Ordering::Acquire);
        assert!(
            releasing <= MAX_UNCONFIRMED_RELEASES,
            "{releasing} background releases after {failed} failed claims"
        );
    }

    /// A claim whose write failed is released in the background in case it landed, retried
    /// with a pause that grows, so that an outage costs the store (and the count of its errors)
    /// a few calls per failed claim over its lease, where it was called once a second for the
    /// whole lease: 60 calls, each counted as a store error, per request refused.
    #[tokio::test(start_paused = true)]
    async fn a_failed_claim_s_release_backs_off_over_its_lease() {
        let store = CountingStore::new(UnavailableStore);
        let engine = Engine::new(store.clone());
        let begun = engine.begin(&Policy::DEFAULT, key(1), fp("a")).await;
        assert!(matches!(begun, Err(IdempotencyError::StoreUnavailable(_))));
        tokio::time::sleep(Policy::DEFAULT.lease * 2).await;
        let releases = store.take().get("release").copied().unwrap_or(0);
        // At 0, 1, 3, 7, 15, 31 and 47 s, and as the lease ends.
        assert_eq!(releases, 8, "releases over a lease");
    }

    /// A claim the store answered with a refusal of its own (out of memory, no rights), or
    /// with a record it holds that this build cannot read, was not written: nothing is left
    /// to release, where each such answer left a release retrying in the background for a
    /// lease (taking a place among those of claims that may really have landed).
    #[tokio::test]
    async fn a_claim_the_store_refused_leaves_no_release_behind() {
        let store = FaultyStore::new(MokaStore::new());
        let engine = Engine::new(store.clone());
        let faults = [
            Fault::Refused,
            Fault::Contended,
            Fault::TooLarge(10),
            Fault::Corrupt,
        ];
        for fault in faults {
            store.fail("claim", 1, fault);
            let begun = engine.begin(&Policy::DEFAULT, key(1), fp("a")).await;
            assert!(begun.is_err(), "{fault:?}: {begun:?}");
            let releasing =
                (engine.parts.releasing.count).load(std::sync::atomic::Ordering::Acquire);
            assert_eq!(releasing, 0, "{fault:?}");
        }
    }

    /// Once `engine`'s background releases are done, a retry of key 1 through `retry` (the
    /// same store, without its faults) is claimed at once: no claim of the key lingers.
    async fn retry_runs_at_once(engine: &Engine, retry: &Engine) {
        engine.abandoned_released().await;
        let begun = retry.begin(&Policy::DEFAULT, key(1), fp("a")).await;
        assert!(
            matches!(begun, Ok(Begin::Execute(_))),
            "the retry runs at once: {begun:?}"
        );
    }

    /// A store over `moka` whose claims are made by `claim`: a store's answer failed, late,
    /// or sent twice, as a real store's can be. Every other operation goes straight to `moka`.
    struct Claims(Arc<MokaStore>, ClaimFn);

    type ClaimFn = fn(Arc<MokaStore>, StoreKey, InFlight, Timestamp) -> StoreFuture<'static, Claim>;

    impl Store for Claims {
        fn claim<'a>(
            &'a self,
            key: &'a StoreKey,
            claim: InFlight,
            now: Timestamp,
        ) -> StoreFuture<'a, Claim> {
            (self.1)(Arc::clone(&self.0), *key, claim, now)
        }
        fn get<'a>(&'a self, key: &'a StoreKey, now: Timestamp) -> StoreFuture<'a, Option<Record>> {
            self.0.get(key, now)
        }
        fn extend<'a>(
            &'a self,
            key: &'a StoreKey,
            token: Token,
            lease_until: Timestamp,
            now: Timestamp,
        ) -> StoreFuture<'a, bool> {
            self.0.extend(key, token, lease_until, now)
        }
        fn complete<'a>(
            &'a self,
            key: &'a StoreKey,
            token: Token,
            record: Completed,
            now: Timestamp,
        ) -> StoreFuture<'a, bool> {
            self.0.complete(key, token, record, now)
        }
        fn release<'a>(&'a self, key: &'a StoreKey, token: Token) -> StoreFuture<'a, bool> {
            self.0.release(key, token)
        }
    }

    /// Claims that fail at once and are written 100 ms later, after commands sent since: a
    /// claim that timed out on a connection and ran when the store came back.
    fn late_claims(moka: &Arc<MokaStore>) -> Claims {
        Claims(Arc::clone(moka), |store, key, claim, now| {
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(100)).await;
                let _ = store.claim(&key, claim, now).await;
            });
            StoreFuture::ready(Err(StoreError::Timeout))
        })
    }

    /// Claims sent twice, as a client that resends a command whose answer was lost does (the
    /// `redis` crate's cluster client does): the second finds the first's claim.
    fn resent_claims(moka: &Arc<MokaStore>) -> Claims {
        Claims(Arc::clone(moka), |store, key, claim, now| {
            StoreFuture::new(async move {
                let _lost = store.claim(&key, claim, now).await;
                store.claim(&key, claim, now).await
            })
        })
    }

    /// The claim found carries this attempt's token, which no other attempt has: the key is
    /// this request's, not another's still running (which would answer 409 for a lease).
    #[tokio::test]
    async fn a_claim_sent_twice_that_finds_itself_holds_the_key() {
        let moka = Arc::new(MokaStore::new());
        let engine = Engine::new(resent_claims(&moka));
        let policy = Policy::DEFAULT;
        let begun = engine.begin(&policy, key(1), fp("a")).await;
        let Ok(Begin::Execute(lease)) = begun else {
            panic!("the first request runs: {begun:?}")
        };
        lease.finish(response(201, "call_1")).await.unwrap();
        let retry = engine.begin(&policy, key(1), fp("a")).await;
        assert!(matches!(retry, Ok(Begin::Replay(_))), "{retry:?}");
    }

    /// Claims written at once and answered a second later: a slow store.
    fn slow_answers(moka: &Arc<MokaStore>) -> Claims {
        Claims(Arc::clone(moka), |store, key, claim, now| {
            StoreFuture::new(async move {
                let answer = store.claim(&key, claim, now).await;
                tokio::time::sleep(Duration::from_secs(1)).await;
                answer
            })
        })
    }

    /// A run cancelled while its claim is on its way (a shutdown that cancels what its
    /// clients left) may leave the claim written, held by nobody: it is released in the
    /// background, as a claim whose answer was lost is.
    #[tokio::test(start_paused = true)]
    async fn a_claim_cancelled_before_its_answer_does_not_hold_the_key_for_a_lease() {
        let moka = Arc::new(MokaStore::new());
        let engine = Engine::new(slow_answers(&moka));
        let policy = Policy::DEFAULT;
        let begun = engine.begin(&policy, key(1), fp("a"));
        let cancelled = tokio::time::timeout(Duration::from_millis(100), begun).await;
        assert!(cancelled.is_err(), "cancelled before the store answered");
        retry_runs_at_once(&engine, &Engine::new(moka)).await;
    }

    /// Two engines on one store, on one clock: the first's answers take a second
    /// ([`slow_answers`]), the second's none.
    fn slow_and_prompt() -> (Engine, Engine) {
        let moka = Arc::new(MokaStore::new());
        let started = tokio::time::Instant::now();
        let slow = Engine::new(slow_answers(&moka)).with_clock(TokioClock(started));
        let prompt = Engine::from_arc(moka as Arc<dyn Store>).with_clock(TokioClock(started));
        (slow, prompt)
    }

    /// A claim written at once but answered only after its lease would have lapsed (a slow
    /// store, a process paused between the command and its answer): meanwhile another request
    /// may have found the claim lapsed and taken the key over. The late answer must not run
    /// the operation beside it; a late answer nobody overtook still runs, its lease renewed.
    #[tokio::test(start_paused = true)]
    async fn a_claim_answered_after_its_lease_lapsed_never_runs_beside_a_takeover() {
        let (slow, other) = slow_and_prompt();
        // Answers take a second; the lease is 300 ms.
        let policy = Policy::DEFAULT.lease(Duration::from_millis(300));

        let late = tokio::spawn({
            let slow = slow.clone();
            async move { slow.begin(&policy, key(1), fp("a")).await }
        });
        tokio::time::sleep(Duration::from_millis(500)).await;
        let Ok(Begin::Execute(taken_over)) = other.begin(&policy, key(1), fp("a")).await else {
            panic!("the lapsed claim is taken over");
        };
        let late = late.await.unwrap();
        assert!(
            matches!(late, Err(IdempotencyError::InFlight)),
            "a claim answered after its lease lapsed ran beside the request that took the key over: {late:?}"
        );
        taken_over.finish(response(201, "once")).await.unwrap();

        // Nobody took the key over: the late answer runs, and holds the key for a lease from
        // its answer, not from its sending.
        let Ok(Begin::Execute(running)) = slow.begin(&policy, key(2), fp("a")).await else {
            panic!("a late answer nobody overtook runs");
        };
        tokio::time::sleep(Duration::from_millis(200)).await;
        let duplicate = other.begin(&policy, key(2), fp("a")).await;
        assert!(
            matches!(duplicate, Err(IdempotencyError::InFlight)),
            "{duplicate:?}"
        );
        running.finish(response(201, "once")).await.unwrap();
    }

    /// A late claim whose renewal the store fails may have lapsed and been taken over: the
    /// store has had it, so a request that fails open does not run beside the request that
    /// may hold the key now, as a failed claim's would. It fails closed.
    #[tokio::test(start_paused = true)]
    async fn a_late_claim_whose_renewal_fails_never_runs_unprotected_beside_a_takeover() {
        let moka = Arc::new(MokaStore::new());
        // Claims answered a second late, whose renewals time out: a store that went away
        // after writing a late claim.
        let late = FaultyStore::new(slow_answers(&moka));
        late.fail("extend", usize::MAX, Fault::Timeout);
        let started = tokio::time::Instant::now();
        let slow = Engine::new(late).with_clock(TokioClock(started));
        let other = Engine::from_arc(moka as Arc<dyn Store>).with_clock(TokioClock(started));
        let policy = Policy::DEFAULT
            .lease(Duration::from_millis(300))
            .on_store_error(OnStoreError::FailOpen);

        let late = tokio::spawn({
            let slow = slow.clone();
            async move { slow.begin(&policy, key(1), fp("a")).await }
        });
        tokio::time::sleep(Duration::from_millis(500)).await;
        let Ok(Begin::Execute(taken_over)) = other.begin(&policy, key(1), fp("a")).await else {
            panic!("the lapsed claim is taken over");
        };
        let late = late.await.unwrap();
        assert!(
            matches!(
                late,
                Err(IdempotencyError::StoreUnavailable(StoreError::Timeout))
            ),
            "a late claim whose renewal failed ran unprotected beside the takeover: {late:?}"
        );
        taken_over.finish(response(201, "once")).await.unwrap();
    }

    /// A late claim overtaken is answered as any request that finds its key taken: by the
    /// record of the request that took it, not by a bare "in flight" whatever that record is.
    #[tokio::test(start_paused = true)]
    async fn a_claim_answered_after_a_takeover_is_judged_by_the_record_that_took_its_key() {
        let (slow, other) = slow_and_prompt();
        // Answers take a second; the lease is 300 ms, the takeover's long enough to outlast
        // the late answer.
        let policy = Policy::DEFAULT.lease(Duration::from_millis(300));
        let long = Policy::DEFAULT.lease(Duration::from_secs(10));
        let overtaken = |key, fingerprint| {
            let slow = slow.clone();
            tokio::spawn(async move { slow.begin(&policy, key, fingerprint).await })
        };

        // Taken over by a request with another body: the late one is a mismatch.
        let late = overtaken(key(1), fp("a"));
        tokio::time::sleep(Duration::from_millis(500)).await;
        let Ok(Begin::Execute(running)) = other.begin(&long, key(1), fp("b")).await else {
            panic!("the lapsed claim is taken over");
        };
        let late = late.await.unwrap();
        assert!(
            matches!(late, Err(IdempotencyError::Mismatch { .. })),
            "a late claim overtaken by another body is answered as a mismatch: {late:?}"
        );
        running.finish(response(201, "b")).await.unwrap();

        // Taken over by the same request, which finished first: the late one replays it.
        let late = overtaken(key(2), fp("a"));
        tokio::time::sleep(Duration::from_millis(500)).await;
        let Ok(Begin::Execute(running)) = other.begin(&long, key(2), fp("a")).await else {
            panic!("the lapsed claim is taken over");
        };
        running.finish(response(201, "once")).await.unwrap();
        match late.await.unwrap() {
            Ok(Begin::Replay(record)) => assert_eq!(&record.response.body()[..], b"once"),
            other => panic!("a late claim overtaken by a finished twin replays it: {other:?}"),
        }
    }

    /// On an endpoint that waits for the first request of its key, a late claim overtaken by
    /// the same request still running waits for it and replays its answer, as any request
    /// that finds its key running there does; it was answered 409 at once.
    #[tokio::test(start_paused = true)]
    async fn a_late_claim_overtaken_on_a_waiting_endpoint_waits_and_replays() {
        let (slow, other) = slow_and_prompt();
        let policy = Policy::DEFAULT
            .lease(Duration::from_millis(300))
            .on_in_flight(OnInFlight::Wait(Duration::from_secs(30)));
        let long = Policy::DEFAULT.lease(Duration::from_secs(10));
        let late = tokio::spawn({
            let slow = slow.clone();
            async move { slow.begin(&policy, key(1), fp("a")).await }
        });
        tokio::time::sleep(Duration::from_millis(500)).await;
        let Ok(Begin::Execute(running)) = other.begin(&long, key(1), fp("a")).await else {
            panic!("the lapsed claim is taken over");
        };
        // The late claim's answer, renewal and look at the key come meanwhile.
        tokio::time::sleep(Duration::from_secs(4)).await;
        running.finish(response(201, "once")).await.unwrap();
        match late.await.unwrap() {
            Ok(Begin::Replay(record)) => assert_eq!(&record.response.body()[..], b"once"),
            other => panic!("a late claim on a waiting endpoint waits and replays: {other:?}"),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_claim_that_lands_after_its_release_is_released_again() {
        let moka = Arc::new(MokaStore::new());
        let engine = Engine::new(late_claims(&moka));
        let policy = Policy::DEFAULT;
        let err = engine.begin(&policy, key(1), fp("a")).await.unwrap_err();
        assert!(matches!(err, IdempotencyError::StoreUnavailable(_)));
        // The late claim is released too.
        retry_runs_at_once(&engine, &Engine::new(moka)).await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_release_the_store_failed_is_retried_so_the_retry_need_not_wait_a_lease() {
        let store = FaultyStore::new(MokaStore::new());
        let engine = Engine::new(store.clone());
        let policy = Policy::DEFAULT;
        let lease = execute(&engine, &policy, key(1), fp("a")).await;
        store.fail("release", 2, Fault::Unavailable);
        assert_eq!(
            lease.finish(response(503, "carrier down")).await.unwrap(),
            Outcome::Released
        );
        assert_eq!(store.calls("release"), 3);
        assert!(
            matches!(
                engine.begin(&policy, key(1), fp("a")).await,
                Ok(Begin::Execute(_))
            ),
            "the retry runs the operation again at once"
        );
    }

    #[tokio::test]
    async fn a_record_the_store_refuses_as_too_large_is_kept_without_its_body() {
        let store = FaultyStore::new(MokaStore::new());
        let engine = Engine::new(store.clone());
        let policy = Policy::DEFAULT;
        let lease = execute(&engine, &policy, key(1), fp("a")).await;
        store.fail("complete", 1, Fault::TooLarge(64));
        assert_eq!(
            lease.finish(response(201, "a large body")).await.unwrap(),
            Outcome::Recorded
        );
        let err = engine.begin(&policy, key(1), fp("a")).await.unwrap_err();
        assert!(
            matches!(err, IdempotencyError::ResponseTooLarge { status: 201, .. }),
            "the retry learns the operation completed, and it does not run again: {err:?}"
        );
    }

    /// Collects the messages of warnings, for the thread it is the default on.
    #[derive(Clone, Default)]
    struct Warnings(Arc<std::sync::Mutex<Vec<String>>>);

    impl tracing::Subscriber for Warnings {
        fn enabled(&self, meta: &tracing::Metadata<'_>) -> bool {
            *meta.level() <= tracing::Level::WARN
        }
        fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
            tracing::span::Id::from_u64(1)
        }
        fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
        fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
        fn event(&self, event: &tracing::Event<'_>) {
            struct Message<'a>(&'a mut String);
            impl tracing::field::Visit for Message<'_> {
                fn record_debug(
                    &mut self,
                    field: &tracing::field::Field,
                    value: &dyn std::fmt::Debug,
                ) {
                    if field.name() == "message" {
                        *self.0 = format!("{value:?}");
                    }
                }
            }
            let mut message = String::new();
            event.record(&mut Message(&mut message));
            self.0.lock().unwrap().push(message);
        }
        fn enter(&self, _: &tracing::span::Id) {}
        fn exit(&self, _: &tracing::span::Id) {}
    }

    #[test]
    fn a_renewal_a_blocked_thread_delays_is_warned_about() {
        let warnings = Warnings::default();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        tracing::subscriber::with_default(warnings.clone(), || {
            runtime.block_on(async {
                let (engine, _) = setup();
                let policy = Policy::DEFAULT.lease(Duration::from_millis(300));
                let lease = execute(&engine, &policy, key(1), fp("a")).await;
                lease
                    .run(async {
                        tokio::task::yield_now().await;
                        // Blocks the thread for more than a renewal period (100 ms).
                        std::thread::sleep(Duration::from_millis(250));
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    })
                    .await;
                lease.finish(response(201, "done")).await.unwrap();
            });
        });
        let seen = warnings.0.lock().unwrap();
        assert!(
            seen.iter().any(|m| m.contains("renewal came late")),
            "{seen:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn renewals_on_time_are_not_warned_about() {
        let (warnings, _default) = warnings_here();
        let (engine, _) = setup();
        let policy = Policy::DEFAULT.lease(Duration::from_secs(3));
        let lease = execute(&engine, &policy, key(1), fp("a")).await;
        lease.run(tokio::time::sleep(Duration::from_secs(10))).await;
        lease.finish(response(201, "done")).await.unwrap();
        assert!(warnings.0.lock().unwrap().is_empty());
    }

    /// The warnings logged on this thread from now, until the guard is dropped.
    fn warnings_here() -> (Warnings, tracing::subscriber::DefaultGuard) {
        let warnings = Warnings::default();
        let guard = tracing::subscriber::set_default(warnings.clone());
        (warnings, guard)
    }

    /// An engine on a store whose operations can be made to fail, and that store.
    fn on_a_faulty_store() -> (Engine, FaultyStore<MokaStore>) {
        let store = FaultyStore::new(MokaStore::new());
        let engine = Engine::new(store.clone()).with_clock(ManualClock::new(START));
        (engine, store)
    }

    /// A store that fails every renewal fails them for every running request alike: warned of
    /// when it starts, then once a minute, where each run warned of each retry, a second apart
    /// (a hundred lines a second with a hundred requests running).
    #[tokio::test(start_paused = true)]
    async fn renewals_a_store_fails_are_warned_of_once_a_minute_not_per_run_and_retry() {
        let (warnings, _default) = warnings_here();
        let (engine, store) = on_a_faulty_store();
        let policy = Policy::DEFAULT.lease(Duration::from_secs(3));
        store.fail("extend", usize::MAX, Fault::Unavailable);
        let runs = (1..=3).map(|n| {
            let (engine, policy) = (&engine, &policy);
            async move {
                let lease = execute(engine, policy, key(n), fp("a")).await;
                lease.run(tokio::time::sleep(Duration::from_secs(10))).await;
            }
        });
        futures_util::future::join_all(runs).await;
        assert!(store.calls("extend") >= 3 * 5, "each run retried");
        let seen = warnings.0.lock().unwrap();
        let failed = seen.iter().filter(|m| m.contains("renewal failed"));
        assert_eq!(failed.count(), 1, "{seen:?}");
    }

    /// The same for completions and releases the store fails: each run retried each with
    /// a warning of its own.
    #[tokio::test(start_paused = true)]
    async fn completions_and_releases_a_store_fails_are_warned_of_once_a_minute() {
        let (warnings, _default) = warnings_here();
        let (engine, store) = on_a_faulty_store();
        let policy = Policy::DEFAULT;
        store.fail("complete", 6, Fault::Unavailable);
        store.fail("release", 6, Fault::Unavailable);
        let runs = (1..=3).map(|n| {
            let (engine, policy) = (&engine, &policy);
            async move {
                let recorded = execute(engine, policy, key(n), fp("a")).await;
                let released = execute(engine, policy, key(n + 10), fp("a")).await;
                let recorded = recorded.finish(response(201, "done")).await;
                let released = released.finish(response(503, "failed")).await;
                (recorded.unwrap(), released.unwrap())
            }
        });
        for outcomes in futures_util::future::join_all(runs).await {
            assert_eq!(outcomes, (Outcome::Recorded, Outcome::Released));
        }
        let seen = warnings.0.lock().unwrap();
        for failed in [
            "recording the response failed",
            "releasing the idempotency claim failed",
        ] {
            let count = seen.iter().filter(|m| m.contains(failed)).count();
            assert_eq!(count, 1, "{failed}: {seen:?}");
        }
    }

    #[test]
    fn tokens_do_not_repeat() {
        let mut seen = std::collections::HashSet::new();
        assert!((0..100_000).all(|_| seen.insert(Token::random())));
        let other_thread =
            std::thread::spawn(|| (0..1000).map(|_| Token::random()).collect::<Vec<_>>());
        assert!(other_thread
            .join()
            .unwrap()
            .iter()
            .all(|t| !seen.contains(t)));
    }

    #[tokio::test]
    async fn clock_skew_smaller_than_the_lease_is_harmless() {
        // Two processes share one store; the second's clock runs 20 s ahead.
        let store: Arc<dyn Store> = Arc::new(MokaStore::new());
        let behind = ManualClock::new(START);
        let ahead = ManualClock::new(START.saturating_add(Duration::from_secs(20)));
        let a = Engine::from_arc(Arc::clone(&store)).with_clock(behind.clone());
        let b = Engine::from_arc(store).with_clock(ahead.clone());
        let policy = Policy::DEFAULT.lease(Duration::from_secs(60));
        let lease = execute(&a, &policy, key(1), fp("a")).await;
        let err = b.begin(&policy, key(1), fp("a")).await.unwrap_err();
        assert!(
            matches!(err, IdempotencyError::InFlight),
            "a live claim is not taken over"
        );
        lease.finish(response(201, "once")).await.unwrap();
        assert_eq!(
            &replay(&b, &policy, key(1), fp("a")).await.response.body()[..],
            b"once"
        );

        // Past the lease, the skewed process sees it lapse 20 s early: the documented limit.
        let _stale = execute(&a, &policy, key(2), fp("a")).await;
        ahead.advance(Duration::from_secs(40));
        assert!(matches!(
            b.begin(&policy, key(2), fp("a")).await,
            Ok(Begin::Execute(_))
        ));
    }

    #[tokio::test]
    async fn a_running_request_conflicts() {
        let (engine, _) = setup();
        let policy = Policy::DEFAULT;
        let _lease = execute(&engine, &policy, key(1), fp("a")).await;
        let err = engine.begin(&policy, key(1), fp("a")).await.unwrap_err();
        assert!(matches!(err, IdempotencyError::InFlight), "{err:?}");
        assert_eq!(err.status(), 409);
        assert!(err.retry_after().is_some());
        // A different request while the first runs is a mismatch, not a wait.
        let err = engine.begin(&policy, key(1), fp("b")).await.unwrap_err();
        assert!(matches!(err, IdempotencyError::Mismatch { status: 409 }));
    }

    #[tokio::test]
    async fn mismatch_answers_as_the_policy_says() {
        let (engine, _) = setup();
        let lease = execute(&engine, &Policy::DEFAULT, key(1), fp("a")).await;
        lease.finish(response(201, "first")).await.unwrap();

        let err = engine
            .begin(&Policy::DEFAULT, key(1), fp("b"))
            .await
            .unwrap_err();
        assert!(matches!(err, IdempotencyError::Mismatch { status: 409 }));

        let ietf = Policy::DEFAULT.on_mismatch(OnMismatch::Unprocessable);
        let err = engine.begin(&ietf, key(1), fp("b")).await.unwrap_err();
        assert_eq!(err.status(), 422);

        let replay_anyway = Policy::DEFAULT.on_mismatch(OnMismatch::Replay);
        let first = replay(&engine, &replay_anyway, key(1), fp("b")).await;
        assert_eq!(&first.response.body()[..], b"first");
    }

    #[tokio::test]
    async fn uncacheable_responses_release_the_key() {
        let (engine, _) = setup();
        let policy = Policy::DEFAULT;
        let lease = execute(&engine, &policy, key(1), fp("a")).await;
        assert_eq!(
            lease.finish(response(503, "down")).await.unwrap(),
            Outcome::Released
        );
        let lease = execute(&engine, &policy, key(1), fp("a")).await;
        assert!(matches!(
            lease.finish(response(201, "ok")).await.unwrap(),
            Outcome::Recorded
        ));

        let success_only = Policy::DEFAULT.cache(CachePolicy::Success);
        let lease = execute(&engine, &success_only, key(2), fp("a")).await;
        assert_eq!(
            lease.finish(response(400, "bad")).await.unwrap(),
            Outcome::Released
        );
        let lease = execute(&engine, &Policy::DEFAULT, key(3), fp("a")).await;
        assert!(matches!(
            lease.finish(response(400, "bad")).await.unwrap(),
            Outcome::Recorded
        ));
    }

    #[tokio::test]
    async fn completed_records_expire_after_their_ttl_from_completion() {
        let (engine, clock) = setup();
        let policy = Policy::DEFAULT.ttl(Duration::from_secs(3600));
        let lease = execute(&engine, &policy, key(1), fp("a")).await;
        clock.advance(Duration::from_secs(30));
        lease.finish(response(201, "one")).await.unwrap();
        clock.advance(Duration::from_secs(3599));
        replay(&engine, &policy, key(1), fp("a")).await;
        clock.advance(Duration::from_secs(1));
        let lease = execute(&engine, &policy, key(1), fp("a")).await;
        lease.finish(response(201, "two")).await.unwrap();
        assert_eq!(replayed_body(&engine, &policy, key(1)).await, b"two");
    }

    #[tokio::test]
    async fn a_stale_holder_cannot_overwrite_or_release_a_newer_claim() {
        let (engine, clock) = setup();
        let policy = Policy::DEFAULT.lease(Duration::from_secs(10));
        let stale = execute(&engine, &policy, key(1), fp("a")).await;
        clock.advance(Duration::from_secs(10));
        // The lease lapsed: a retry claims the key again with a new token.
        let fresh = execute(&engine, &policy, key(1), fp("a")).await;
        assert_ne!(stale.token(), fresh.token());
        assert!(!stale.renew().await.unwrap());
        assert_eq!(
            stale.finish(response(201, "stale")).await.unwrap(),
            Outcome::Lost
        );
        let err = engine.begin(&policy, key(1), fp("a")).await.unwrap_err();
        assert!(
            matches!(err, IdempotencyError::InFlight),
            "fresh claim kept"
        );

        let stale = execute(&engine, &policy, key(2), fp("a")).await;
        clock.advance(Duration::from_secs(11));
        let fresh2 = execute(&engine, &policy, key(2), fp("a")).await;
        assert!(!stale.release().await.unwrap());
        assert!(matches!(
            fresh2.finish(response(201, "fresh")).await.unwrap(),
            Outcome::Recorded
        ));
        assert!(matches!(
            fresh.finish(response(201, "fresh")).await.unwrap(),
            Outcome::Recorded
        ));
        assert_eq!(replayed_body(&engine, &policy, key(2)).await, b"fresh");
    }

    #[tokio::test(start_paused = true)]
    async fn a_running_handler_keeps_its_lease() {
        let (engine, clock) = setup();
        let policy = Policy::DEFAULT.lease(Duration::from_secs(30));
        let lease = execute(&engine, &policy, key(1), fp("a")).await;
        let (engine2, clock2) = (engine.clone(), clock.clone());
        let body = lease
            .run(async move {
                // Two full leases pass while the handler runs.
                for _ in 0..12 {
                    tokio::time::sleep(Duration::from_secs(5)).await;
                    clock2.advance(Duration::from_secs(5));
                }
                engine2.begin(&policy, key(1), fp("a")).await
            })
            .await;
        assert!(
            matches!(body, Err(IdempotencyError::InFlight)),
            "the claim must still hold: {body:?}"
        );
        assert!(matches!(
            lease.finish(response(201, "done")).await.unwrap(),
            Outcome::Recorded
        ));
    }

    /// A renewal that waits on the store (a Postgres pool whose connections are all held by
    /// the transactions of running handlers, this one's among them, waits for one up to the
    /// pool's acquire timeout) does not hold up the handler: the operation goes on meanwhile,
    /// and its end ends the wait. Held up, every handler of a full pool stopped until its
    /// renewal gave up, and none gave back a connection meanwhile.
    #[tokio::test(start_paused = true)]
    async fn a_renewal_waiting_on_the_store_does_not_hold_up_the_handler() {
        let store = FaultyStore::new(MokaStore::new());
        let engine = Engine::new(store.clone());
        let policy = Policy::DEFAULT.lease(Duration::from_secs(3));
        let lease = execute(&engine, &policy, key(1), fp("a")).await;
        store.fail(
            "extend",
            usize::MAX,
            Fault::Unanswered(Duration::from_secs(30)),
        );
        let started = tokio::time::Instant::now();
        // Renewed after 1 s, a renewal the store does not answer for 30 s.
        lease
            .run(tokio::time::sleep(Duration::from_millis(1500)))
            .await;
        assert_eq!(store.calls("extend"), 1, "one renewal was under way");
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "the handler of 1.5 s took {:?}",
            started.elapsed()
        );
        assert!(matches!(
            lease.finish(response(201, "done")).await,
            Ok(Outcome::Recorded)
        ));
    }

    /// Wall time that follows tokio's clock, which a paused test moves on by itself.
    struct TokioClock(tokio::time::Instant);

    impl Clock for TokioClock {
        fn now(&self) -> Timestamp {
            START.saturating_add(self.0.elapsed())
        }
    }

    /// A completion whose run is dropped as it retries (a drain that ran out of time) goes on
    /// in the background as it would have: renewing the claim between attempts, so that a
    /// retry meanwhile waits (409) rather than finding the claim lapsed and running the
    /// operation again. It retried for a lease without renewing, and the claim lapsed under it.
    #[tokio::test(start_paused = true)]
    async fn a_completion_left_to_the_background_keeps_its_claim_while_it_retries() {
        let store = FaultyStore::new(MokaStore::new());
        let engine = Engine::new(store.clone()).with_clock(TokioClock(tokio::time::Instant::now()));
        let policy = Policy::DEFAULT.lease(Duration::from_secs(30));
        let lease = execute(&engine, &policy, key(1), fp("a")).await;
        // Renewed last when claimed: the handler ran for 9 s.
        tokio::time::sleep(Duration::from_secs(9)).await;
        store.fail("complete", usize::MAX, Fault::Timeout);
        let finishing = lease.finish(response(201, "once"));
        // Dropped in its first pause, before it renewed the claim.
        let cut = tokio::time::timeout(Duration::from_millis(5), finishing).await;
        assert!(cut.is_err(), "dropped while it retries");
        // Past the lease from the last renewal: a claim nobody renewed has lapsed.
        tokio::time::sleep(Duration::from_secs(22)).await;
        let retry = engine.begin(&policy, key(1), fp("a")).await;
        assert!(
            matches!(retry, Err(IdempotencyError::InFlight)),
            "the claim is kept while its record is retried: {retry:?}"
        );
        store.heal();
        engine.abandoned_released().await;
        assert_eq!(replayed_body(&engine, &policy, key(1)).await, b"once");
    }

    /// A store that stops answering for less than a lease, and answers again well before the
    /// lease ends, must not let a running claim lapse: a renewal that failed is tried again
    /// once the store answers, not a whole renewal period later.
    #[tokio::test(start_paused = true)]
    async fn an_outage_shorter_than_the_lease_does_not_let_a_running_claim_lapse() {
        let store = FaultyStore::new(MokaStore::new());
        let engine = Engine::new(store.clone()).with_clock(TokioClock(tokio::time::Instant::now()));
        let policy = Policy::DEFAULT.lease(Duration::from_secs(30));
        let lease = execute(&engine, &policy, key(1), fp("a")).await;
        let engine2 = engine.clone();
        let duplicates = lease
            .run(async move {
                // The store does not answer from 5 s to 25 s: two renewals (every 10 s) fail.
                // Each renewal meanwhile waits out a command timeout of 500 ms, then fails.
                tokio::time::sleep(Duration::from_secs(5)).await;
                let unanswered = Fault::Unanswered(Duration::from_millis(500));
                store.fail("extend", usize::MAX, unanswered);
                tokio::time::sleep(Duration::from_secs(20)).await;
                store.heal();
                // Back 5 s before the lease would end; the client retries every second.
                let mut duplicates = Vec::new();
                for _ in 0..15 {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    duplicates.push(engine2.begin(&policy, key(1), fp("a")).await);
                }
                duplicates
            })
            .await;
        for (n, duplicate) in duplicates.iter().enumerate() {
            assert!(
                matches!(duplicate, Err(IdempotencyError::InFlight)),
                "a duplicate {}s after the store came back ran beside the first: {duplicate:?}",
                n + 1
            );
        }
        lease.finish(response(201, "done")).await.unwrap();
    }

    /// A store that can forget every record at once, as a Redis restarted without persistence
    /// (or failed over to a replica the latest writes had not reached) does.
    #[derive(Clone, Default)]
    struct Forgetful(
        Arc<std::sync::Mutex<Arc<MokaStore>>>,
        Arc<std::sync::Mutex<Option<(StoreKey, InFlight)>>>,
        /// How many claims to come the store forgets as soon as it took them.
        Arc<std::sync::atomic::AtomicUsize>,
        /// Whether the first release after a late claim lands fails (and then whether the
        /// next release does).
        Arc<[std::sync::atomic::AtomicBool; 2]>,
    );

    impl Forgetful {
        fn forget(&self) {
            *self.0.lock().unwrap() = Arc::default();
        }

        /// Forgets everything again right after each of the next `claims` claims.
        fn forget_after_claims(&self, claims: usize) {
            self.2.store(claims, std::sync::atomic::Ordering::SeqCst);
        }

        /// Writes `claim` of `key` just before the next read: a claim sent earlier whose
        /// write reaches the store late.
        fn land_before_next_get(&self, key: StoreKey, claim: InFlight) {
            *self.1.lock().unwrap() = Some((key, claim));
        }

        /// Fails the first release after the claim [`land_before_next_get`] wrote lands,
        /// once.
        ///
        /// [`land_before_next_get`]: Self::land_before_next_get
        fn fail_the_release_after_landing(&self) {
            self.3[0].store(true, std::sync::atomic::Ordering::SeqCst);
        }

        fn current(&self) -> Arc<MokaStore> {
            Arc::clone(&self.0.lock().unwrap())
        }
    }

    impl Store for Forgetful {
        fn claim<'a>(
            &'a self,
            key: &'a StoreKey,
            claim: InFlight,
            now: Timestamp,
        ) -> StoreFuture<'a, Claim> {
            StoreFuture::new(async move {
                let claimed = self.current().claim(key, claim, now).await;
                let forgets = self.2.fetch_update(
                    std::sync::atomic::Ordering::SeqCst,
                    std::sync::atomic::Ordering::SeqCst,
                    |left| left.checked_sub(1),
                );
                if forgets.is_ok() {
                    self.forget();
                }
                claimed
            })
        }
        fn get<'a>(&'a self, key: &'a StoreKey, now: Timestamp) -> StoreFuture<'a, Option<Record>> {
            StoreFuture::new(async move {
                let late = self.1.lock().unwrap().take();
                if let Some((landing, claim)) = late {
                    self.current().claim(&landing, claim, now).await?;
                    let fails = self.3[0].swap(false, std::sync::atomic::Ordering::SeqCst);
                    self.3[1].store(fails, std::sync::atomic::Ordering::SeqCst);
                }
                self.current().get(key, now).await
            })
        }
        fn extend<'a>(
            &'a self,
            key: &'a StoreKey,
            token: Token,
            lease_until: Timestamp,
            now: Timestamp,
        ) -> StoreFuture<'a, bool> {
            StoreFuture::new(
                async move { self.current().extend(key, token, lease_until, now).await },
            )
        }
        fn complete<'a>(
            &'a self,
            key: &'a StoreKey,
            token: Token,
            record: Completed,
            now: Timestamp,
        ) -> StoreFuture<'a, bool> {
            StoreFuture::new(async move { self.current().complete(key, token, record, now).await })
        }
        fn release<'a>(&'a self, key: &'a StoreKey, token: Token) -> StoreFuture<'a, bool> {
            if self.3[1].swap(false, std::sync::atomic::Ordering::SeqCst) {
                return StoreFuture::ready(Err(StoreError::Unavailable("a blip".into())));
            }
            StoreFuture::new(async move { self.current().release(key, token).await })
        }
    }

    /// The store forgets a running request's claim. Nobody else has claimed the key: the
    /// operation ran, so its response is still recorded (claimed again by its token), and a
    /// later retry replays it instead of running it a second time; a renewal claims it again
    /// too, so that a retry after it gets 409. A retry that comes while the key is forgotten
    /// runs beside it (the layer cannot tell a forgotten key from a new one): then that
    /// retry's claim stands, fenced, and the first run's record is refused.
    #[tokio::test(start_paused = true)]
    async fn a_claim_the_store_forgot_while_its_request_ran_is_still_recorded() {
        let store = Forgetful::default();
        let engine = Engine::new(store.clone()).with_clock(TokioClock(tokio::time::Instant::now()));
        let policy = Policy::DEFAULT.lease(Duration::from_secs(30));

        let lease = execute(&engine, &policy, key(1), fp("a")).await;
        store.forget();
        assert_eq!(
            lease.finish(response(201, "once")).await.unwrap(),
            Outcome::Recorded
        );
        assert_eq!(replayed_body(&engine, &policy, key(1)).await, b"once");

        let store2 = store.clone();
        forgotten_while_it_runs(
            &engine,
            &policy,
            key(2),
            Duration::from_secs(11),
            move || {
                store2.forget();
            },
        )
        .await;

        // The limit: a retry while the key is forgotten runs; its claim stands.
        let first = execute(&engine, &policy, key(3), fp("a")).await;
        store.forget();
        let second = execute(&engine, &policy, key(3), fp("a")).await;
        assert_eq!(
            first.finish(response(201, "first")).await.unwrap(),
            Outcome::Lost
        );
        second.finish(response(201, "second")).await.unwrap();
        assert_eq!(replayed_body(&engine, &policy, key(3)).await, b"second");
    }

    /// A renewal that finds the claim forgotten claims the key again; when that claim lands
    /// but its answer is lost, the claim is the running request's all the same: nothing
    /// releases it while the request runs, so a retry meanwhile gets 409, and the response is
    /// recorded.
    #[tokio::test(start_paused = true)]
    async fn a_claim_again_whose_answer_was_lost_is_kept_while_its_request_runs() {
        let forgetful = Forgetful::default();
        let store = FaultyStore::new(forgetful.clone());
        let engine = Engine::new(store.clone()).with_clock(TokioClock(tokio::time::Instant::now()));
        let policy = Policy::DEFAULT.lease(Duration::from_secs(30));

        // Past the renewal that claims again, and the seconds a release of a claim that may
        // have landed takes to find it.
        forgotten_while_it_runs(
            &engine,
            &policy,
            key(1),
            Duration::from_secs(15),
            move || {
                forgetful.forget();
                store.fail("claim", 1, Fault::Lost);
            },
        )
        .await;
    }

    /// A completion whose claim the store forgot (a failover) looks up who holds the key and
    /// claims it again. A failure of either, as a failover's reconnection gives, is retried
    /// as a failed completion is, and the record written: where one failure gave the record
    /// up (and a claim again that landed was released), and a retry ran the operation again.
    #[tokio::test(start_paused = true)]
    async fn a_completion_whose_claim_was_forgotten_survives_one_failed_look_or_claim() {
        let faults = [
            ("get", Fault::Timeout),
            ("claim", Fault::Timeout),
            ("claim", Fault::Lost),
        ];
        for (op, fault) in faults {
            let forgetful = Forgetful::default();
            let store = FaultyStore::new(forgetful.clone());
            let engine =
                Engine::new(store.clone()).with_clock(TokioClock(tokio::time::Instant::now()));
            let policy = Policy::DEFAULT.lease(Duration::from_secs(30));
            let lease = execute(&engine, &policy, key(1), fp("a")).await;
            forgetful.forget();
            store.fail(op, 1, fault);
            let outcome = lease.finish(response(201, "once")).await;
            assert_eq!(outcome.unwrap(), Outcome::Recorded, "{op}");
            assert_eq!(replayed_body(&engine, &policy, key(1)).await, b"once");
        }
    }

    /// A completion whose claim the store forgot, then forgot again once claimed again (two
    /// failovers in a row), claims it again after a pause, for as long as a failed completion
    /// is retried, and records the response: it gave the record up (`Lost`) after one claim
    /// again, and a retry ran the operation again.
    #[tokio::test(start_paused = true)]
    async fn a_completion_whose_claim_was_forgotten_twice_is_still_recorded() {
        let forgetful = Forgetful::default();
        let engine =
            Engine::new(forgetful.clone()).with_clock(TokioClock(tokio::time::Instant::now()));
        let policy = Policy::DEFAULT.lease(Duration::from_secs(30));
        let lease = execute(&engine, &policy, key(1), fp("a")).await;
        forgetful.forget();
        forgetful.forget_after_claims(2);
        let outcome = lease.finish(response(201, "once")).await;
        assert_eq!(outcome.unwrap(), Outcome::Recorded);
        assert_eq!(replayed_body(&engine, &policy, key(1)).await, b"once");
    }

    /// An engine on a [`Forgetful`] store, with a 30 s lease.
    fn forgetful_engine() -> (Forgetful, Engine, Policy) {
        let forgetful = Forgetful::default();
        let engine =
            Engine::new(forgetful.clone()).with_clock(TokioClock(tokio::time::Instant::now()));
        (
            forgetful,
            engine,
            Policy::DEFAULT.lease(Duration::from_secs(30)),
        )
    }

    /// A lease on `key` whose claim the store then forgets, and whose claim again (a
    /// renewal's, sent earlier) lands just before the store's next read.
    async fn forgotten_and_landing_again(
        forgetful: &Forgetful,
        engine: &Engine,
        policy: &Policy,
        key: StoreKey,
    ) -> Lease {
        let lease = execute(engine, policy, key, fp("a")).await;
        forgetful.forget();
        let again = InFlight {
            fingerprint: fp("a"),
            lease_until: engine.clock().now().saturating_add(Duration::from_secs(30)),
            token: lease.token,
        };
        forgetful.land_before_next_get(key, again);
        lease
    }

    /// A renewal's claim again that lands after the completion looked (the completion found
    /// no claim, then the look finds this lease's own) is this lease's: the record is written
    /// under it, where the completion took it for another request's and gave up, leaving a
    /// claim nobody held to answer 409 for a lease, then let a retry run again.
    #[tokio::test(start_paused = true)]
    async fn a_claim_again_that_lands_after_the_completion_looked_is_recorded_not_lost() {
        let (forgetful, engine, policy) = forgetful_engine();
        // The claim again lands between the refused completion and the look: the store holds
        // this lease's claim when the completion asks who holds the key.
        let lease = forgotten_and_landing_again(&forgetful, &engine, &policy, key(1)).await;
        let outcome = lease.finish(response(201, "once")).await;
        assert_eq!(outcome.unwrap(), Outcome::Recorded);
        assert_eq!(replayed_body(&engine, &policy, key(1)).await, b"once");
    }

    /// The same for a release: a renewal's claim again that lands after the release found no
    /// claim is this lease's, and released too, where the release answered that the claim
    /// was lost and left it to answer 409 for a lease. Through each way a claim is released:
    /// a plain release, a finish whose status is not recorded, a rollback.
    #[tokio::test(start_paused = true)]
    async fn a_claim_again_that_lands_after_the_release_looked_is_released_too() {
        let (forgetful, engine, policy) = forgetful_engine();
        for (n, how) in [(1, "release"), (2, "finish"), (3, "rollback")] {
            let lease = forgotten_and_landing_again(&forgetful, &engine, &policy, key(n)).await;
            let released = match how {
                "release" => lease.release().await.unwrap(),
                "finish" => {
                    lease.finish(response(503, "later")).await.unwrap() == Outcome::Released
                }
                // A rollback that found no claim (its statement ran after the claim was forgotten).
                _ => lease
                    .release_with(async { Ok::<_, StoreError>(false) })
                    .await
                    .unwrap(),
            };
            assert!(released, "{how}");
            let retry = engine.begin(&policy, key(n), fp("a")).await;
            assert!(matches!(retry, Ok(Begin::Execute(_))), "{how}: {retry:?}");
        }
    }

    /// When the release of that claim fails, the claim is released in the background, with
    /// retries, as a dropped lease's is, where it was left to answer 409 until it lapsed; the
    /// release answers that it cannot say the key is free.
    #[tokio::test(start_paused = true)]
    async fn a_claim_again_whose_release_fails_is_released_in_the_background() {
        let (forgetful, engine, policy) = forgetful_engine();
        let lease = forgotten_and_landing_again(&forgetful, &engine, &policy, key(1)).await;
        forgetful.fail_the_release_after_landing();
        assert!(!lease.release().await.unwrap());
        engine.abandoned_released().await;
        let retry = engine.begin(&policy, key(1), fp("a")).await;
        assert!(matches!(retry, Ok(Begin::Execute(_))), "{retry:?}");
    }

    /// Runs a request on `key` whose claim the store forgets (by `forget`) a second into its
    /// run; `after` that, past its renewal (every 10 s under a 30 s lease), a retry must get
    /// 409, and the run's response must be recorded and replayed.
    async fn forgotten_while_it_runs(
        engine: &Engine,
        policy: &Policy,
        key: StoreKey,
        after: Duration,
        forget: impl FnOnce() + 'static,
    ) {
        let lease = execute(engine, policy, key, fp("a")).await;
        let (engine2, policy2) = (engine.clone(), *policy);
        let duplicate = lease
            .run(async move {
                tokio::time::sleep(Duration::from_secs(1)).await;
                forget();
                tokio::time::sleep(after).await;
                engine2.begin(&policy2, key, fp("a")).await
            })
            .await;
        assert!(
            matches!(duplicate, Err(IdempotencyError::InFlight)),
            "a retry ran beside the request whose claim the store forgot: {duplicate:?}"
        );
        assert_eq!(
            lease.finish(response(201, "once")).await.unwrap(),
            Outcome::Recorded
        );
        assert_eq!(replayed_body(engine, policy, key).await, b"once");
    }

    /// A lease shorter than a running request can keep renewed would lapse under it and let a
    /// duplicate run: the engine holds it for `Policy::MIN_LEASE` at least.
    #[tokio::test]
    async fn a_lease_below_the_minimum_is_held_for_the_minimum() {
        let (engine, clock) = setup();
        let policy = Policy::DEFAULT.lease(Duration::from_millis(5));
        let _running = execute(&engine, &policy, key(1), fp("a")).await;
        clock.advance(Duration::from_millis(50));
        let duplicate = engine.begin(&policy, key(1), fp("a")).await;
        assert!(
            matches!(duplicate, Err(IdempotencyError::InFlight)),
            "{duplicate:?}"
        );
        clock.advance(Policy::MIN_LEASE);
        let after = engine.begin(&policy, key(1), fp("a")).await;
        assert!(matches!(after, Ok(Begin::Execute(_))), "{after:?}");
    }

    /// A TTL under a millisecond would record nothing (records are kept by the millisecond),
    /// so that every retry ran the operation again: the engine keeps a record for
    /// `Policy::MIN_TTL` (a second) at least, as it holds a lease for `Policy::MIN_LEASE`, for
    /// a policy built without `Policy::check`.
    #[tokio::test]
    async fn a_ttl_below_the_minimum_keeps_the_record_for_the_minimum() {
        let (engine, _clock) = setup();
        let policy = Policy::DEFAULT.ttl(Duration::from_micros(500));
        let lease = execute(&engine, &policy, key(1), fp("a")).await;
        assert_eq!(
            lease.finish(response(201, "once")).await.unwrap(),
            Outcome::Recorded
        );
        assert_eq!(replayed_body(&engine, &policy, key(1)).await, b"once");
    }

    /// A duplicate that waits for the first request (looking at the store every 20 ms)
    /// replays its answer whatever the policy's TTL: the engine keeps a record for
    /// `Policy::MIN_TTL` at least, a second, where a TTL shorter than a look's interval let
    /// the record lapse before the waiter looked, and the waiter ran the operation again.
    #[tokio::test(start_paused = true)]
    async fn a_waiter_replays_the_first_response_whatever_the_ttl() {
        let engine =
            Engine::new(MokaStore::new()).with_clock(TokioClock(tokio::time::Instant::now()));
        let policy = Policy::DEFAULT
            .ttl(Duration::from_millis(1))
            .on_in_flight(OnInFlight::Wait(Duration::from_secs(5)));
        let lease = execute(&engine, &policy, key(1), fp("a")).await;
        let waiter = {
            let engine = engine.clone();
            tokio::spawn(async move { engine.begin(&policy, key(1), fp("a")).await })
        };
        tokio::time::sleep(Duration::from_millis(30)).await;
        lease.finish(response(201, "first")).await.unwrap();
        match waiter.await.unwrap() {
            Ok(Begin::Replay(c)) => assert_eq!(&c.response.body()[..], b"first"),
            other => panic!("expected a replay, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_dropped_lease_releases_the_key() {
        let (engine, _) = setup();
        let policy = Policy::DEFAULT;
        drop(execute(&engine, &policy, key(1), fp("a")).await);
        for _ in 0..100 {
            tokio::task::yield_now().await;
            if let Ok(Begin::Execute(lease)) = engine.begin(&policy, key(1), fp("a")).await {
                drop(lease);
                return;
            }
        }
        panic!("the abandoned claim was not released");
    }

    #[tokio::test(start_paused = true)]
    async fn a_dropped_lease_whose_release_failed_retries_it_so_the_retry_need_not_wait_a_lease() {
        let store = FaultyStore::new(MokaStore::new());
        let engine = Engine::new(store.clone());
        let policy = Policy::DEFAULT;
        let lease = execute(&engine, &policy, key(1), fp("a")).await;
        store.fail("release", 2, Fault::Unavailable);
        // A handler that panicked, or a run cancelled at shutdown, drops its lease.
        drop(lease);
        tokio::time::timeout(Duration::from_secs(5), engine.abandoned_released())
            .await
            .expect("the release is retried, well within a lease");
        assert_eq!(store.calls("release"), 3);
        assert!(
            matches!(
                engine.begin(&policy, key(1), fp("a")).await,
                Ok(Begin::Execute(_))
            ),
            "the retry runs the operation again at once"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn waiting_requests_replay_the_first_response() {
        let (engine, _) = setup();
        let policy = Policy::DEFAULT.on_in_flight(OnInFlight::Wait(Duration::from_secs(5)));
        let lease = execute(&engine, &policy, key(1), fp("a")).await;
        let waiter = {
            let engine = engine.clone();
            tokio::spawn(async move { engine.begin(&policy, key(1), fp("a")).await })
        };
        tokio::time::sleep(Duration::from_secs(1)).await;
        lease.finish(response(201, "first")).await.unwrap();
        match waiter.await.unwrap() {
            Ok(Begin::Replay(c)) => assert_eq!(&c.response.body()[..], b"first"),
            other => panic!("expected a replay, got {other:?}"),
        }

        // Past the bound, the waiter gives up with 409.
        let _running = execute(&engine, &policy, key(2), fp("a")).await;
        let started = tokio::time::Instant::now();
        let err = engine.begin(&policy, key(2), fp("a")).await.unwrap_err();
        assert!(matches!(err, IdempotencyError::InFlight));
        assert!(started.elapsed() >= Duration::from_secs(5));
    }

    /// A wait as long as a `Duration` holds (set in code, where the attribute caps it at ten
    /// years) waits for the first request, as any wait does, where its deadline overflowed
    /// the clock and the request panicked.
    #[tokio::test(start_paused = true)]
    async fn a_wait_longer_than_the_clock_can_count_waits_for_the_first_response() {
        let (engine, _) = setup();
        let policy = Policy::DEFAULT.on_in_flight(OnInFlight::Wait(Duration::MAX));
        let lease = execute(&engine, &policy, key(1), fp("a")).await;
        let waiter = {
            let engine = engine.clone();
            tokio::spawn(async move { engine.begin(&policy, key(1), fp("a")).await })
        };
        tokio::time::sleep(Duration::from_secs(1)).await;
        lease.finish(response(201, "first")).await.unwrap();
        match waiter.await.unwrap() {
            Ok(Begin::Replay(c)) => assert_eq!(&c.response.body()[..], b"first"),
            other => panic!("expected a replay, got {other:?}"),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiter_claims_a_released_key() {
        let (engine, _) = setup();
        let policy = Policy::DEFAULT.on_in_flight(OnInFlight::Wait(Duration::from_secs(5)));
        let lease = execute(&engine, &policy, key(1), fp("a")).await;
        let waiter = {
            let engine = engine.clone();
            tokio::spawn(async move { engine.begin(&policy, key(1), fp("a")).await })
        };
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(
            lease.finish(response(500, "boom")).await.unwrap(),
            Outcome::Released
        );
        assert!(matches!(waiter.await.unwrap(), Ok(Begin::Execute(_))));
    }

    #[tokio::test]
    async fn an_unreachable_store_fails_closed_unless_told_otherwise() {
        let engine = Engine::new(UnavailableStore);
        let err = engine
            .begin(&Policy::DEFAULT, key(1), fp("a"))
            .await
            .unwrap_err();
        assert_eq!(
            (err.status(), err.code()),
            (503, "idempotency_store_unavailable")
        );
        let open = Policy::DEFAULT.on_store_error(OnStoreError::FailOpen);
        assert!(matches!(
            engine.begin(&open, key(1), fp("a")).await,
            Ok(Begin::Unprotected(StoreError::Timeout))
        ));
    }

    /// Failing open is for a store that cannot say whether the key is taken. One that said
    /// it is (a request waits for its holder) has answered that.
    #[tokio::test(start_paused = true)]
    async fn a_waiter_whose_look_at_the_holder_fails_never_runs_beside_it_when_failing_open() {
        let store = FaultyStore::new(MokaStore::new());
        let engine = Engine::new(store.clone()).with_clock(ManualClock::new(START));
        let policy = Policy::DEFAULT
            .on_in_flight(OnInFlight::Wait(Duration::from_secs(5)))
            .on_store_error(OnStoreError::FailOpen);
        let _holder = execute(&engine, &policy, key(1), fp("a")).await;
        for fault in [Fault::Timeout, Fault::Unavailable] {
            store.fail("get", 1, fault);
            let waiter = engine.begin(&policy, key(1), fp("a")).await;
            assert!(
                matches!(waiter, Err(IdempotencyError::InFlight)),
                "{fault:?}: {waiter:?}"
            );
        }
        // Failing closed, the failed look is the store's failure, as before.
        store.fail("get", 1, Fault::Timeout);
        let closed = policy.on_store_error(OnStoreError::FailClosed);
        let err = engine.begin(&closed, key(1), fp("a")).await.unwrap_err();
        assert_eq!(err.code(), "idempotency_store_unavailable");
    }

    /// A store that answered with a record it cannot read, or that could not claim for the
    /// claims of others, was reached: the key may be taken, so nothing runs unprotected.
    #[tokio::test]
    async fn a_store_that_answered_with_a_refusal_or_unusably_fails_closed_even_when_open() {
        let store = FaultyStore::new(MokaStore::new());
        let engine = Engine::new(store.clone()).with_clock(ManualClock::new(START));
        let open = Policy::DEFAULT.on_store_error(OnStoreError::FailOpen);
        for fault in [Fault::Refused, Fault::Corrupt, Fault::Contended] {
            store.fail("claim", 1, fault);
            let err = engine.begin(&open, key(1), fp("a")).await.unwrap_err();
            assert_eq!(err.code(), "idempotency_store_unavailable", "{fault:?}");
        }
        // Unreachable, it still fails open.
        store.fail("claim", 1, Fault::Timeout);
        assert!(matches!(
            engine.begin(&open, key(1), fp("a")).await,
            Ok(Begin::Unprotected(StoreError::Timeout))
        ));
    }

    #[tokio::test]
    async fn finishing_with_a_settlement_hands_it_the_record_and_leaves_it_the_claim() {
        let (engine, clock) = setup();
        let policy = Policy::DEFAULT.ttl(Duration::from_secs(60));
        let lease = execute(&engine, &policy, key(1), fp("a")).await;
        let (store, token) = (Arc::clone(engine.store()), lease.token());
        let outcome = lease
            .finish_with(response(201, "call_1"), |record| async move {
                let record = record.expect("a 201 is recorded");
                assert_eq!(record.expires_at, START.saturating_add(policy.ttl));
                store.complete(&key(1), token, record, clock.now()).await
            })
            .await;
        assert_eq!(outcome.unwrap(), Outcome::Recorded);
        let replayed = replay(&engine, &policy, key(1), fp("a")).await;
        assert_eq!(&replayed.response.body()[..], b"call_1");

        // Not cached: no record, and the lease does not release the key behind the
        // settlement's back, on finishing or on drop.
        let lease = execute(&engine, &policy, key(2), fp("a")).await;
        let outcome = lease
            .finish_with(response(503, "down"), |record| {
                assert!(record.is_none());
                std::future::ready(Ok(true))
            })
            .await;
        assert_eq!(outcome.unwrap(), Outcome::Released);
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        let err = engine.begin(&policy, key(2), fp("a")).await.unwrap_err();
        assert!(matches!(err, IdempotencyError::InFlight), "{err:?}");
    }

    #[tokio::test]
    async fn a_settlement_that_fails_is_not_retried_and_a_lost_token_is_lost() {
        let (engine, _) = setup();
        let policy = Policy::DEFAULT;
        let lease = execute(&engine, &policy, key(1), fp("a")).await;
        let attempts = std::cell::Cell::new(0);
        let outcome = lease
            .finish_with(response(201, "x"), |_| {
                attempts.set(attempts.get() + 1);
                std::future::ready(Err(StoreError::Timeout))
            })
            .await;
        assert!(matches!(outcome, Err(StoreError::Timeout)));
        assert_eq!(attempts.get(), 1);

        let lease = execute(&engine, &policy, key(2), fp("a")).await;
        let outcome = lease
            .finish_with(response(201, "x"), |_| std::future::ready(Ok(false)))
            .await;
        assert_eq!(outcome.unwrap(), Outcome::Lost);
    }

    #[tokio::test]
    async fn releasing_with_a_rollback_leaves_the_release_to_it() {
        let timings = Timings::default();
        let engine = Engine::new(MokaStore::new()).with_observer(timings.clone());
        let lease = execute(&engine, &Policy::DEFAULT, key(1), fp("a")).await;
        let (store, token) = (Arc::clone(engine.store()), lease.token());
        let released = lease
            .release_with(async move { store.release(&key(1), token).await })
            .await;
        assert!(released.unwrap());
        engine.abandoned_released().await;
        assert_eq!(timings.ops(), ["claim", "release"], "one release, observed");
    }

    /// The look that tells is tried three times at most, a few tens of milliseconds apart,
    /// where it was retried for a whole lease and held the client's answer that long, only to
    /// choose between two words for the outcome: a store that cannot say by then is taken at
    /// its word (the release found no claim).
    #[tokio::test(start_paused = true)]
    async fn a_release_that_cannot_tell_whether_the_key_is_free_answers_promptly() {
        let store = FaultyStore::new(MokaStore::new());
        let engine = Engine::new(store.clone());
        let policy = Policy::DEFAULT;
        for (n, looks, released) in [(1, 2, true), (2, 3, false)] {
            let lease = execute(&engine, &policy, key(n), fp("a")).await;
            store.fail("release", 1, Fault::Lost);
            store.fail("get", looks, Fault::Unavailable);
            let started = tokio::time::Instant::now();
            assert_eq!(
                lease.release().await.unwrap(),
                released,
                "{looks} looks failed"
            );
            assert!(
                started.elapsed() < Duration::from_secs(1),
                "{:?}",
                started.elapsed()
            );
            store.heal();
        }
    }

    /// A `Transaction` handler's status that is not recorded releases through `settle` (its
    /// rollback): one that found no claim answers released if nobody holds the key, as a
    /// rollback after a failure does, where it answered that the claim had been lost.
    #[tokio::test]
    async fn a_settlement_s_release_that_found_no_claim_answers_released_if_the_key_is_free() {
        let engine = Engine::new(MokaStore::new());
        let lease = execute(&engine, &Policy::DEFAULT, key(1), fp("a")).await;
        let (store, token) = (Arc::clone(engine.store()), lease.token());
        let outcome = lease
            .finish_with(response(503, "later"), |record| async move {
                assert!(record.is_none());
                assert!(store.release(&key(1), token).await.unwrap());
                store.release(&key(1), token).await
            })
            .await;
        assert_eq!(outcome.unwrap(), Outcome::Released);
    }

    /// A rollback's release that landed but answered that it found no claim (Postgres runs a
    /// statement again on a new connection when the one it ran on broke before its answer,
    /// and the second finds the claim the first removed gone): released, as the key is free,
    /// where the layer warned that the claim had been lost. A key another request holds is
    /// not.
    #[tokio::test]
    async fn a_rollback_s_release_that_landed_but_answered_none_answers_released() {
        let clock = ManualClock::new(START);
        let engine = Engine::new(MokaStore::new()).with_clock(clock.clone());
        let policy = Policy::DEFAULT.lease(Duration::from_secs(30));
        let lease = execute(&engine, &policy, key(1), fp("a")).await;
        let (store, token) = (Arc::clone(engine.store()), lease.token());
        let released = lease.release_with(async move {
            assert!(store.release(&key(1), token).await.unwrap());
            store.release(&key(1), token).await
        });
        assert!(released.await.unwrap());

        let lease = execute(&engine, &policy, key(2), fp("a")).await;
        clock.advance(Duration::from_secs(31));
        let other = execute(&engine, &policy, key(2), fp("a")).await;
        let (store, token) = (Arc::clone(engine.store()), lease.token());
        let released = lease.release_with(async move { store.release(&key(2), token).await });
        assert!(!released.await.unwrap());
        drop(other);
    }

    /// Its look at the key is tried three times, as a release's is: told on the third, or
    /// taken at the store's word after it.
    #[tokio::test(start_paused = true)]
    async fn a_rollback_s_release_looks_at_the_key_three_times_at_most() {
        let store = FaultyStore::new(MokaStore::new());
        let engine = Engine::new(store.clone());
        for (n, looks, released) in [(1, 2, true), (2, 3, false)] {
            let lease = execute(&engine, &Policy::DEFAULT, key(n), fp("a")).await;
            let token = lease.token();
            let inner = store.clone();
            store.fail("get", looks, Fault::Unavailable);
            let answer = lease.release_with(async move {
                assert!(inner.release(&key(n), token).await.unwrap());
                inner.release(&key(n), token).await
            });
            assert_eq!(answer.await.unwrap(), released, "{looks} looks failed");
            store.heal();
        }
    }

    /// The operation ran once its response is handed to `finish`: the future it returns,
    /// dropped before it was ever polled, still records the response (in the background, as
    /// one dropped while it records), where the lease it had taken released the key and a
    /// retry ran the operation again.
    #[tokio::test(start_paused = true)]
    async fn a_finish_dropped_before_it_was_polled_still_records() {
        let (engine, _) = setup();
        let policy = Policy::DEFAULT;
        let lease = execute(&engine, &policy, key(1), fp("a")).await;
        drop(lease.finish(response(201, "ran")));
        // A response the endpoint does not record releases the key, as before.
        let lease = execute(&engine, &policy, key(2), fp("a")).await;
        drop(lease.finish(response(503, "failed")));
        engine.abandoned_released().await;
        assert_eq!(replayed_body(&engine, &policy, key(1)).await, b"ran");
        let again = engine.begin(&policy, key(2), fp("a")).await;
        assert!(matches!(again, Ok(Begin::Execute(_))), "{again:?}");
    }

    /// Polls `run` as far as its first wait, and drops it there, as a cancelled run is.
    async fn cancelled(run: impl Future) {
        let mut run = pin!(run);
        let waits = poll_fn(|cx| Poll::Ready(run.as_mut().poll(cx).is_pending())).await;
        assert!(waits, "the run waits on the store");
    }

    /// A drain that runs out of time cancels the runs whose clients went away, some while
    /// their record commits or their claim is released: each drops its lease there, and the
    /// claim is released in the background all the same (what the drain waits for), instead
    /// of staying in flight until the lease lapses. A record that did commit stays: a release
    /// only deletes a claim.
    #[tokio::test(start_paused = true)]
    async fn a_lease_dropped_while_it_settles_or_releases_releases_the_key() {
        let store = FaultyStore::new(MokaStore::new());
        let engine = Engine::new(store.clone());
        let policy = Policy::DEFAULT;
        let unanswered = || std::future::pending::<Result<bool, StoreError>>();
        let lease = execute(&engine, &policy, key(1), fp("a")).await;
        cancelled(lease.finish_with(response(201, "x"), |_| unanswered())).await;
        let lease = execute(&engine, &policy, key(2), fp("a")).await;
        cancelled(lease.finish_with(response(503, "x"), |_| unanswered())).await;
        let lease = execute(&engine, &policy, key(3), fp("a")).await;
        cancelled(lease.release_with(unanswered())).await;
        // The store has not answered these two releases when their runs are cancelled.
        let lease = execute(&engine, &policy, key(4), fp("a")).await;
        let other = execute(&engine, &policy, key(5), fp("a")).await;
        store.fail("release", 2, Fault::Unanswered(Duration::from_secs(1)));
        cancelled(lease.release()).await;
        cancelled(other.finish(response(503, "x"))).await;
        engine.abandoned_released().await;
        for n in 1..=5 {
            assert!(
                matches!(
                    engine.begin(&policy, key(n), fp("a")).await,
                    Ok(Begin::Execute(_))
                ),
                "the claim on key {n} was released"
            );
        }

        // Cancelled after its commit landed, while its answer was on its way: the record stays.
        let lease = execute(&engine, &policy, key(6), fp("a")).await;
        let (inner, token, now) = (
            Arc::clone(engine.store()),
            lease.token(),
            engine.clock().now(),
        );
        cancelled(
            lease.finish_with(response(201, "kept"), |record| async move {
                let record = record.expect("a 201 is recorded");
                assert!(inner.complete(&key(6), token, record, now).await.unwrap());
                std::future::pending().await
            }),
        )
        .await;
        engine.abandoned_released().await;
        assert_eq!(replayed_body(&engine, &policy, key(6)).await, b"kept");
    }

    /// What an observer is told: each operation, its time, and whether it failed.
    #[derive(Clone, Default)]
    struct Timings(Arc<std::sync::Mutex<Vec<Observed>>>);

    type Observed = (&'static str, Duration, bool);

    impl StoreObserver for Timings {
        fn store_op(&self, op: &'static str, elapsed: Duration, error: Option<&StoreError>) {
            self.0.lock().unwrap().push((op, elapsed, error.is_some()));
        }
    }

    impl Timings {
        /// The operations observed, in order.
        fn ops(&self) -> Vec<&'static str> {
            self.0.lock().unwrap().iter().map(|(op, ..)| *op).collect()
        }

        /// The operations observed to fail, in order.
        fn failed(&self) -> Vec<&'static str> {
            let seen = self.0.lock().unwrap();
            seen.iter()
                .filter(|(.., failed)| *failed)
                .map(|(op, ..)| *op)
                .collect()
        }
    }

    /// Releases made in the background (an abandoned lease's, a claim's whose answer was
    /// lost) reach the store when it may be failing: the observer, and so the metrics of
    /// store errors, sees them as it sees the others, failures included.
    #[tokio::test(start_paused = true)]
    async fn background_releases_are_observed() {
        let timings = Timings::default();
        let store = FaultyStore::new(MokaStore::new());
        let engine = Engine::new(store.clone()).with_observer(timings.clone());
        drop(execute(&engine, &Policy::DEFAULT, key(1), fp("a")).await);
        engine.abandoned_released().await;
        assert_eq!(timings.ops(), ["claim", "release"], "an abandoned lease");

        timings.0.lock().unwrap().clear();
        store.fail("claim", 1, Fault::Lost);
        store.fail("release", 1, Fault::Unavailable);
        let begun = engine.begin(&Policy::DEFAULT, key(2), fp("a")).await;
        assert!(matches!(begun, Err(IdempotencyError::StoreUnavailable(_))));
        engine.abandoned_released().await;
        assert_eq!(
            timings.ops(),
            ["claim", "release", "release"],
            "a lost claim's release, failed once, then made"
        );
        assert_eq!(timings.failed(), ["claim", "release"]);
    }

    #[tokio::test]
    async fn store_timings_include_work_done_in_the_call() {
        let timings = Timings::default();
        let slow = CountingStore::new(MokaStore::new()).slowed(Duration::from_millis(20));
        let engine = Engine::new(slow).with_observer(timings.clone());
        let lease = execute(&engine, &Policy::DEFAULT, key(1), fp("a")).await;
        lease.finish(response(201, "call_1")).await.unwrap();
        assert_eq!(timings.ops(), ["claim", "complete"]);
        let seen = timings.0.lock().unwrap().clone();
        for (op, elapsed, _) in seen {
            assert!(
                elapsed >= Duration::from_millis(20),
                "{op} timed at {elapsed:?}"
            );
        }
    }
}
