//! Stores for tests (feature `testing`): one whose backend is always down, a wrapper that
//! counts operations (and can slow them), and a wrapper that fails the operations a test
//! chooses. They let an application's own tests check its fail-closed answers, its store
//! traffic, and what happens when a store fails in the middle of an operation. A new
//! [`Store`] checks itself with [`conformance`].

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::clock::Timestamp;
use crate::digest::StoreKey;
use crate::record::{Completed, InFlight, Record, Token};
use crate::store::{Claim, Store, StoreError, StoreFuture};

/// A store whose backend never answers: every operation fails with [`StoreError::Timeout`].
#[derive(Clone, Copy, Debug, Default)]
pub struct UnavailableStore;

fn timeout<'a, T: Send + 'a>() -> StoreFuture<'a, T> {
    StoreFuture::new(async { Err(StoreError::Timeout) })
}

impl Store for UnavailableStore {
    fn claim<'a>(&'a self, _: &'a StoreKey, _: InFlight, _: Timestamp) -> StoreFuture<'a, Claim> {
        timeout()
    }

    fn get<'a>(&'a self, _: &'a StoreKey, _: Timestamp) -> StoreFuture<'a, Option<Record>> {
        timeout()
    }

    fn extend<'a>(
        &'a self,
        _: &'a StoreKey,
        _: Token,
        _: Timestamp,
        _: Timestamp,
    ) -> StoreFuture<'a, bool> {
        timeout()
    }

    fn complete<'a>(
        &'a self,
        _: &'a StoreKey,
        _: Token,
        _: Completed,
        _: Timestamp,
    ) -> StoreFuture<'a, bool> {
        timeout()
    }

    fn release<'a>(&'a self, _: &'a StoreKey, _: Token) -> StoreFuture<'a, bool> {
        timeout()
    }
}

/// Wraps a store and counts calls per operation (`"claim"`, `"get"`, `"extend"`,
/// `"complete"`, `"release"`). Clones share the counts.
#[derive(Clone, Debug, Default)]
pub struct CountingStore<S> {
    inner: S,
    calls: Arc<Mutex<HashMap<&'static str, usize>>>,
    delay: Duration,
}

impl<S> CountingStore<S> {
    /// Counts the operations on `inner`.
    pub fn new(inner: S) -> Self {
        Self {
            inner,
            calls: Arc::default(),
            delay: Duration::ZERO,
        }
    }

    /// Makes every call block for `delay` before it reaches `inner`: slow work done in the call
    /// itself, as an in-memory store does its work, for tests of what is timed.
    #[must_use]
    pub fn slowed(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }

    /// The counts since the last call, resetting them.
    pub fn take(&self) -> HashMap<&'static str, usize> {
        std::mem::take(&mut *self.lock())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<&'static str, usize>> {
        self.calls
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn count(&self, operation: &'static str) -> &S {
        *self.lock().entry(operation).or_default() += 1;
        if !self.delay.is_zero() {
            std::thread::sleep(self.delay);
        }
        &self.inner
    }
}

impl<S: Store> Store for CountingStore<S> {
    fn claim<'a>(
        &'a self,
        key: &'a StoreKey,
        claim: InFlight,
        now: Timestamp,
    ) -> StoreFuture<'a, Claim> {
        self.count("claim").claim(key, claim, now)
    }

    fn reclaim<'a>(
        &'a self,
        key: &'a StoreKey,
        claim: InFlight,
        now: Timestamp,
    ) -> StoreFuture<'a, Claim> {
        self.count("claim").reclaim(key, claim, now)
    }

    fn claim_now(
        &self,
        key: &StoreKey,
        claim: InFlight,
        now: Timestamp,
    ) -> Option<Result<Claim, StoreError>> {
        // Counted only when answered: otherwise the caller's `claim` is the store call.
        let answer = self.inner.claim_now(key, claim, now)?;
        self.count("claim");
        Some(answer)
    }

    fn get<'a>(&'a self, key: &'a StoreKey, now: Timestamp) -> StoreFuture<'a, Option<Record>> {
        self.count("get").get(key, now)
    }

    fn kept_for<'a>(
        &'a self,
        key: &'a StoreKey,
        record: &'a Completed,
    ) -> StoreFuture<'a, Option<Duration>> {
        self.count("kept_for").kept_for(key, record)
    }

    fn extend<'a>(
        &'a self,
        key: &'a StoreKey,
        token: Token,
        lease_until: Timestamp,
        now: Timestamp,
    ) -> StoreFuture<'a, bool> {
        self.count("extend").extend(key, token, lease_until, now)
    }

    fn complete<'a>(
        &'a self,
        key: &'a StoreKey,
        token: Token,
        record: Completed,
        now: Timestamp,
    ) -> StoreFuture<'a, bool> {
        self.count("complete").complete(key, token, record, now)
    }

    fn release<'a>(&'a self, key: &'a StoreKey, token: Token) -> StoreFuture<'a, bool> {
        self.count("release").release(key, token)
    }
    fn fails_open(&self) -> bool {
        self.inner.fails_open()
    }

    fn max_record_bytes(&self) -> Option<usize> {
        self.inner.max_record_bytes()
    }

    fn in_process(&self) -> bool {
        self.inner.in_process()
    }

    fn take_evictions(&self) -> u64 {
        self.inner.take_evictions()
    }
}

/// Which error a [`FaultyStore`] answers with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Fault {
    /// [`StoreError::Unavailable`]: a dropped connection, a server not serving yet.
    Unavailable,
    /// [`StoreError::Timeout`].
    Timeout,
    /// [`StoreError::Timeout`] after this long, as a store that does not answer within the
    /// command timeout: the operation does not reach it.
    Unanswered(std::time::Duration),
    /// [`StoreError::TooLarge`] with this limit, as a store answers a record over its limit.
    TooLarge(usize),
    /// The operation reaches the store and is done there, but its answer is lost:
    /// [`StoreError::Timeout`], as a command that timed out and ran all the same.
    Lost,
    /// The operation reaches the store twice, as a command a client resends after a dropped
    /// connection: the first is done there, and the answer is the second's.
    Resent,
    /// [`StoreError::Refused`]: the store answered and refused the command.
    Refused,
    /// [`StoreError::Corrupt`]: the store answered with a record this build cannot read.
    Corrupt,
    /// [`StoreError::Contended`]: the key's record changed under every attempt.
    Contended,
    /// No error: the operation reaches the store after this long, and is answered as the
    /// store answers it, as over a slow network.
    Slow(std::time::Duration),
}

impl Fault {
    fn error(self) -> StoreError {
        match self {
            Fault::Unavailable => StoreError::Unavailable("injected store failure".into()),
            // A slow or resent operation is answered by the store; this is never its answer.
            Fault::Timeout | Fault::Unanswered(_) | Fault::Resent | Fault::Slow(_) => {
                StoreError::Timeout
            }
            Fault::TooLarge(max) => StoreError::TooLarge { size: max + 1, max },
            Fault::Lost => StoreError::Timeout,
            Fault::Refused => StoreError::Refused("injected refusal".into()),
            Fault::Corrupt => StoreError::Corrupt("injected unreadable record".into()),
            Fault::Contended => StoreError::Contended,
        }
    }
}

/// Wraps a store and fails the operations a test chooses: before they reach it (nothing is
/// written by a failed operation), or, with [`Fault::Lost`], after. Operations are named as in [`CountingStore`]. Clones share
/// the plan and the counts.
///
/// ```
/// use idem_core::testing::{Fault, FaultyStore};
/// use idem_core::MokaStore;
///
/// let store = FaultyStore::new(MokaStore::new());
/// // The next two completions fail as a dropped connection would; later ones reach the store.
/// store.fail("complete", 2, Fault::Unavailable);
/// ```
#[derive(Clone, Debug, Default)]
pub struct FaultyStore<S> {
    inner: S,
    plan: Arc<Mutex<Plan>>,
}

#[derive(Debug, Default)]
struct Plan {
    /// Per operation: how many more calls fail (`usize::MAX`: all), and how.
    faults: HashMap<&'static str, (usize, Fault)>,
    /// Per operation: calls made, failed or not.
    calls: HashMap<&'static str, usize>,
}

impl<S> FaultyStore<S> {
    /// `inner`, with no faults planned.
    pub fn new(inner: S) -> Self {
        Self {
            inner,
            plan: Arc::default(),
        }
    }

    /// Makes the next `times` calls of `operation` fail with `fault` (`usize::MAX`: every call
    /// until [`heal`](Self::heal)).
    pub fn fail(&self, operation: &'static str, times: usize, fault: Fault) {
        self.lock().faults.insert(operation, (times, fault));
    }

    /// Cancels every planned fault.
    pub fn heal(&self) {
        self.lock().faults.clear();
    }

    /// The calls of `operation` made so far, failed or not.
    pub fn calls(&self, operation: &'static str) -> usize {
        self.lock().calls.get(operation).copied().unwrap_or(0)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Plan> {
        self.plan
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Counts a call of `operation`, and the fault planned for it, if any.
    fn fault(&self, operation: &'static str) -> Option<Fault> {
        let mut plan = self.lock();
        *plan.calls.entry(operation).or_default() += 1;
        let (left, fault) = plan.faults.get_mut(operation)?;
        if *left == 0 {
            return None;
        }
        if *left != usize::MAX {
            *left -= 1;
        }
        Some(*fault)
    }

    fn call<'a, T: Send + 'a>(
        &'a self,
        operation: &'static str,
        call: impl Fn(&'a S) -> StoreFuture<'a, T> + Send + 'a,
    ) -> StoreFuture<'a, T>
    where
        S: Sync,
    {
        match self.fault(operation) {
            Some(Fault::Resent) => StoreFuture::new(async move {
                let _ = call(&self.inner).await;
                call(&self.inner).await
            }),
            Some(Fault::Lost) => {
                let done = call(&self.inner);
                StoreFuture::new(async move {
                    let _ = done.await;
                    Err(Fault::Lost.error())
                })
            }
            Some(Fault::Slow(after)) => StoreFuture::new(async move {
                tokio::time::sleep(after).await;
                call(&self.inner).await
            }),
            Some(Fault::Unanswered(after)) => StoreFuture::new(async move {
                tokio::time::sleep(after).await;
                Err(StoreError::Timeout)
            }),
            Some(fault) => StoreFuture::ready(Err(fault.error())),
            None => call(&self.inner),
        }
    }
}

impl<S: Store> Store for FaultyStore<S> {
    fn claim<'a>(
        &'a self,
        key: &'a StoreKey,
        claim: InFlight,
        now: Timestamp,
    ) -> StoreFuture<'a, Claim> {
        self.call("claim", move |s| s.claim(key, claim, now))
    }

    fn reclaim<'a>(
        &'a self,
        key: &'a StoreKey,
        claim: InFlight,
        now: Timestamp,
    ) -> StoreFuture<'a, Claim> {
        self.call("claim", move |s| s.reclaim(key, claim, now))
    }

    fn get<'a>(&'a self, key: &'a StoreKey, now: Timestamp) -> StoreFuture<'a, Option<Record>> {
        self.call("get", move |s| s.get(key, now))
    }

    fn kept_for<'a>(
        &'a self,
        key: &'a StoreKey,
        record: &'a Completed,
    ) -> StoreFuture<'a, Option<Duration>> {
        self.call("kept_for", move |s| s.kept_for(key, record))
    }

    fn extend<'a>(
        &'a self,
        key: &'a StoreKey,
        token: Token,
        lease_until: Timestamp,
        now: Timestamp,
    ) -> StoreFuture<'a, bool> {
        self.call("extend", move |s| s.extend(key, token, lease_until, now))
    }

    fn complete<'a>(
        &'a self,
        key: &'a StoreKey,
        token: Token,
        record: Completed,
        now: Timestamp,
    ) -> StoreFuture<'a, bool> {
        self.call("complete", move |s| {
            s.complete(key, token, record.clone(), now)
        })
    }

    fn release<'a>(&'a self, key: &'a StoreKey, token: Token) -> StoreFuture<'a, bool> {
        self.call("release", move |s| s.release(key, token))
    }

    fn fails_open(&self) -> bool {
        self.inner.fails_open()
    }

    fn max_record_bytes(&self) -> Option<usize> {
        self.inner.max_record_bytes()
    }

    fn in_process(&self) -> bool {
        self.inner.in_process()
    }

    fn take_evictions(&self) -> u64 {
        self.inner.take_evictions()
    }
}

/// Every record `store` holds, with its store key (a full scan): the claims, then the
/// completed records. The embedded store keeps only the first 16 bytes of a completed
/// record's store key; the rest is zero here.
pub fn records(store: &crate::MokaStore) -> Vec<(StoreKey, Record)> {
    store.snapshot()
}

/// The bytes a store outside the process (Redis) writes for `record`, held by `token`: what
/// a test reads to check what a record reveals.
///
/// # Errors
/// [`StoreError::TooLarge`] when a header or the body does not fit the format's length fields.
pub fn encoded(record: &Record, token: Token) -> Result<Vec<u8>, StoreError> {
    crate::store::codec::encode(record, token)
}

/// The behaviour every [`Store`] must have, as one suite: run [`conformance`] against a new
/// backend to check it by the same tests as the built-in ones.
///
/// It uses explicit times around the system clock's now, so a backend must judge lapse by the
/// `now` it is given. It writes keys derived from `seed`; use a fresh seed (or a fresh store)
/// per run.
///
/// # Panics
/// On the first behaviour the store gets wrong, naming it.
pub async fn conformance<S: Store>(store: &S, seed: u8) {
    let t0 = crate::clock::Clock::now(&crate::clock::SystemClock);
    let suite = Suite { store, seed, t0 };
    suite.claim_is_exclusive().await;
    suite.completion_is_replayed().await;
    suite.completion_is_fenced().await;
    suite.release_frees_the_key().await;
    suite.lapsed_leases_can_be_taken_over().await;
    suite.a_lapsed_holder_nobody_displaced_can_finish().await;
    suite.extension_keeps_the_claim().await;
    suite.completed_records_expire().await;
    suite.keys_are_independent().await;
    suite.a_status_that_is_no_http_status_is_refused().await;
    suite
        .a_completed_record_outlives_its_holder_s_release_and_extension()
        .await;
    suite.a_response_kept_without_its_body_is_read_back().await;
    suite.reclaim_takes_a_free_key_and_never_a_held_one().await;
}

struct Suite<'a, S> {
    store: &'a S,
    seed: u8,
    t0: Timestamp,
}

mod suite {
    use std::time::Duration;

    use crate::record::Response;

    use super::*;
    use crate::digest::Fingerprint;

    pub(super) const LEASE: Duration = Duration::from_secs(10);
    pub(super) const TTL: Duration = Duration::from_secs(100);

    impl<S: Store> Suite<'_, S> {
        fn key(&self, n: u8) -> StoreKey {
            let mut bytes = [self.seed; 32];
            bytes[0] = n;
            StoreKey::from_bytes(bytes)
        }

        fn at(&self, secs: u64) -> Timestamp {
            self.t0.saturating_add(Duration::from_secs(secs))
        }

        fn in_flight(&self, at: u64) -> InFlight {
            InFlight {
                fingerprint: Fingerprint::new("POST", "/conformance", "", b"body"),
                lease_until: self.at(at).saturating_add(LEASE),
                token: Token::random(),
            }
        }

        fn completed(&self, at: u64, body: &'static str) -> Completed {
            Completed {
                fingerprint: Fingerprint::new("POST", "/conformance", "", b"body"),
                response: Response::new(
                    201,
                    [
                        ("location", &b"/x/1"[..]),
                        ("set-cookie", b"a=1"),
                        ("set-cookie", b"b=2"),
                    ],
                    body.as_bytes(),
                ),
                completed_at: self.at(at),
                expires_at: self.at(at).saturating_add(TTL),
            }
        }

        async fn claim(&self, n: u8, claim: InFlight, at: u64) -> Claim {
            self.store
                .claim(&self.key(n), claim, self.at(at))
                .await
                .expect("claim")
        }

        async fn claimed(&self, n: u8, at: u64) -> InFlight {
            let claim = self.in_flight(at);
            assert_eq!(
                self.claim(n, claim, at).await,
                Claim::Claimed,
                "a free key is claimed"
            );
            claim
        }

        async fn complete(&self, n: u8, token: Token, record: Completed, at: u64) -> bool {
            self.store
                .complete(&self.key(n), token, record, self.at(at))
                .await
                .expect("complete")
        }

        async fn get(&self, n: u8, at: u64) -> Option<Record> {
            self.store
                .get(&self.key(n), self.at(at))
                .await
                .expect("get")
        }

        async fn release(&self, n: u8, token: Token) -> bool {
            self.store
                .release(&self.key(n), token)
                .await
                .expect("release")
        }

        pub(super) async fn claim_is_exclusive(&self) {
            let first = self.claimed(1, 0).await;
            let second = self.in_flight(1);
            assert_eq!(
                self.claim(1, second, 1).await,
                Claim::Existing(Record::InFlight(first)),
                "a second claim sees the first"
            );
        }

        pub(super) async fn completion_is_replayed(&self) {
            let claim = self.claimed(2, 0).await;
            let record = self.completed(1, "first");
            assert!(
                self.complete(2, claim.token, record.clone(), 1).await,
                "the holder completes"
            );
            let expected = Record::Completed(record);
            assert_eq!(
                self.get(2, 2).await,
                Some(expected.clone()),
                "get reads the completed record as written"
            );
            assert_eq!(
                self.claim(2, self.in_flight(2), 2).await,
                Claim::Existing(expected),
                "a claim on a completed key returns the record"
            );
        }

        pub(super) async fn completion_is_fenced(&self) {
            let claim = self.claimed(3, 0).await;
            assert!(
                !self
                    .complete(3, Token::random(), self.completed(1, "intruder"), 1)
                    .await,
                "another token cannot complete"
            );
            assert!(
                !self.release(3, Token::random()).await,
                "another token cannot release"
            );
            assert_eq!(self.get(3, 1).await, Some(Record::InFlight(claim)));
            assert!(
                self.complete(3, claim.token, self.completed(1, "ok"), 1)
                    .await
            );
            assert!(
                !self
                    .complete(3, claim.token, self.completed(2, "again"), 2)
                    .await,
                "a completed record is final"
            );
            assert!(!self.release(3, claim.token).await);
        }

        pub(super) async fn release_frees_the_key(&self) {
            let claim = self.claimed(4, 0).await;
            assert!(self.release(4, claim.token).await);
            assert_eq!(self.get(4, 1).await, None);
            self.claimed(4, 1).await;
        }

        pub(super) async fn lapsed_leases_can_be_taken_over(&self) {
            let stale = self.claimed(5, 0).await;
            let lapse = LEASE.as_secs();
            let fresh = self.claimed(5, lapse).await;
            assert!(
                !self
                    .store
                    .extend(
                        &self.key(5),
                        stale.token,
                        self.at(lapse + 20),
                        self.at(lapse)
                    )
                    .await
                    .expect("extend"),
                "a displaced holder cannot extend"
            );
            assert!(
                !self
                    .complete(5, stale.token, self.completed(lapse, "stale"), lapse)
                    .await,
                "a displaced holder cannot complete"
            );
            assert!(!self.release(5, stale.token).await);
            assert_eq!(
                self.get(5, lapse).await,
                Some(Record::InFlight(fresh)),
                "the new claim stands"
            );
        }

        pub(super) async fn a_lapsed_holder_nobody_displaced_can_finish(&self) {
            let claim = self.claimed(6, 0).await;
            let late = LEASE.as_secs() + 5;
            assert_eq!(self.get(6, late).await, None);
            assert!(
                self.complete(6, claim.token, self.completed(late, "late"), late)
                    .await,
                "the operation ran, so its response is recorded"
            );
        }

        pub(super) async fn extension_keeps_the_claim(&self) {
            let claim = self.claimed(7, 0).await;
            assert!(self
                .store
                .extend(&self.key(7), claim.token, self.at(30), self.at(5))
                .await
                .expect("extend"));
            let extended = InFlight {
                lease_until: self.at(30),
                ..claim
            };
            assert_eq!(
                self.claim(7, self.in_flight(20), 20).await,
                Claim::Existing(Record::InFlight(extended)),
                "the extended claim holds past its first lease"
            );
            assert_eq!(self.claim(7, self.in_flight(30), 30).await, Claim::Claimed);
        }

        pub(super) async fn completed_records_expire(&self) {
            let claim = self.claimed(8, 0).await;
            assert!(
                self.complete(8, claim.token, self.completed(0, "ttl"), 0)
                    .await
            );
            let ttl = TTL.as_secs();
            assert!(self.get(8, ttl - 1).await.is_some());
            assert_eq!(self.get(8, ttl).await, None);
            self.claimed(8, ttl).await;
        }

        pub(super) async fn keys_are_independent(&self) {
            self.claimed(9, 0).await;
            self.claimed(10, 0).await;
        }

        /// A record's status is an HTTP one (100 to 999): `Response` takes any `u16`, and a
        /// store that wrote one outside them would read its record back as corrupt, so that
        /// the key answered 503 until it expired. The claim stays, for a completion that is.
        pub(super) async fn a_status_that_is_no_http_status_is_refused(&self) {
            let claim = self.claimed(11, 0).await;
            for status in [0, 99, 1000, u16::MAX] {
                let mut record = self.completed(1, "no status");
                record.response = Response::new(status, [], b"");
                let outcome = self
                    .store
                    .complete(&self.key(11), claim.token, record, self.at(1))
                    .await;
                assert!(
                    matches!(outcome, Err(StoreError::Refused(_))),
                    "status {status}: {outcome:?}"
                );
            }
            assert_eq!(
                self.get(11, 1).await,
                Some(Record::InFlight(claim)),
                "the claim stays"
            );
            assert!(
                self.complete(11, claim.token, self.completed(2, "ok"), 2)
                    .await
            );
        }

        /// The token that completed a record holds it no more: its release and its renewal
        /// (a late one, as of a renewal racing the completion) change nothing, and the record
        /// is replayed as written.
        pub(super) async fn a_completed_record_outlives_its_holder_s_release_and_extension(&self) {
            let claim = self.claimed(12, 0).await;
            let record = self.completed(1, "kept");
            assert!(self.complete(12, claim.token, record.clone(), 1).await);
            let extended = self
                .store
                .extend(&self.key(12), claim.token, self.at(60), self.at(2))
                .await
                .expect("extend");
            assert!(!extended, "a completed record's token cannot extend it");
            let released = self.release(12, claim.token).await;
            assert!(!released, "a completed record's token cannot release it");
            assert_eq!(
                self.get(12, 3).await,
                Some(Record::Completed(record)),
                "the record stays as written"
            );
        }

        /// A response too large to keep is recorded without its body, its size kept: a retry
        /// is then told so (409 `idempotency_response_too_large`), never given an empty body.
        pub(super) async fn a_response_kept_without_its_body_is_read_back(&self) {
            let claim = self.claimed(13, 0).await;
            let mut record = self.completed(1, "");
            record.response = Response::omitted(201, 3 << 30);
            assert!(self.complete(13, claim.token, record.clone(), 1).await);
            let read = self.store.get(&self.key(13), self.at(2)).await;
            let Some(Record::Completed(read)) = read.expect("get") else {
                panic!("the record without its body is kept");
            };
            assert_eq!(read, record, "read back as written");
            assert_eq!(read.response.body_omitted(), Some(3 << 30));
        }

        /// `reclaim` is a claim's atomic write: it takes a key nobody holds (a lapsed claim,
        /// or none), and never one another request holds, nor a completed record.
        pub(super) async fn reclaim_takes_a_free_key_and_never_a_held_one(&self) {
            let reclaim = |n: u8, claim: InFlight, at: u64| async move {
                (self.store)
                    .reclaim(&self.key(n), claim, self.at(at))
                    .await
                    .expect("reclaim")
            };
            let free = self.in_flight(0);
            assert_eq!(reclaim(14, free, 0).await, Claim::Claimed, "a free key");
            let held = self.in_flight(1);
            assert_eq!(
                reclaim(14, held, 1).await,
                Claim::Existing(Record::InFlight(free)),
                "a key another request holds stays theirs"
            );
            let lapse = LEASE.as_secs();
            let after = self.in_flight(lapse);
            assert_eq!(
                reclaim(14, after, lapse).await,
                Claim::Claimed,
                "a lapsed claim is taken over"
            );
            let record = self.completed(lapse + 1, "done");
            assert!(
                self.complete(14, after.token, record.clone(), lapse + 1)
                    .await
            );
            assert_eq!(
                reclaim(14, self.in_flight(lapse + 2), lapse + 2).await,
                Claim::Existing(Record::Completed(record)),
                "a completed record stays"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use futures_util::FutureExt as _;

    use super::*;
    use crate::record::Response;
    use crate::MokaStore;

    /// What a faulty store gets wrong, for the suite to catch.
    #[derive(Clone, Copy, Debug)]
    enum Fault {
        /// A release by the token that completed a record deletes the record (while it
        /// answers `false`), as a release that checked the token but not the record's kind.
        ReleaseDeletesRecords,
        /// `reclaim` answers `Claimed` whatever holds the key.
        ReclaimOverwrites,
        /// A record kept without its body reads back with an empty one.
        OmittedBodyReadsEmpty,
    }

    /// The embedded store with one `fault`.
    struct Faulty {
        inner: MokaStore,
        fault: Fault,
        /// The keys and the tokens that completed them.
        completed: Mutex<Vec<(StoreKey, Token)>>,
        /// The keys it lost.
        deleted: Mutex<Vec<StoreKey>>,
    }

    impl Store for Faulty {
        fn claim<'a>(
            &'a self,
            key: &'a StoreKey,
            claim: InFlight,
            now: Timestamp,
        ) -> StoreFuture<'a, Claim> {
            self.inner.claim(key, claim, now)
        }

        fn reclaim<'a>(
            &'a self,
            key: &'a StoreKey,
            claim: InFlight,
            now: Timestamp,
        ) -> StoreFuture<'a, Claim> {
            match self.fault {
                Fault::ReclaimOverwrites => StoreFuture::new(async { Ok(Claim::Claimed) }),
                _ => self.inner.reclaim(key, claim, now),
            }
        }

        fn get<'a>(&'a self, key: &'a StoreKey, now: Timestamp) -> StoreFuture<'a, Option<Record>> {
            StoreFuture::new(async move {
                if self.deleted.lock().unwrap().contains(key) {
                    return Ok(None);
                }
                Ok(match self.inner.get(key, now).await? {
                    Some(Record::Completed(mut record))
                        if matches!(self.fault, Fault::OmittedBodyReadsEmpty)
                            && record.response.body_omitted().is_some() =>
                    {
                        record.response = Response::new(record.response.status(), [], b"");
                        Some(Record::Completed(record))
                    }
                    record => record,
                })
            })
        }

        fn extend<'a>(
            &'a self,
            key: &'a StoreKey,
            token: Token,
            lease_until: Timestamp,
            now: Timestamp,
        ) -> StoreFuture<'a, bool> {
            self.inner.extend(key, token, lease_until, now)
        }

        fn complete<'a>(
            &'a self,
            key: &'a StoreKey,
            token: Token,
            record: Completed,
            now: Timestamp,
        ) -> StoreFuture<'a, bool> {
            StoreFuture::new(async move {
                let completed = self.inner.complete(key, token, record, now).await?;
                if completed {
                    self.completed.lock().unwrap().push((*key, token));
                }
                Ok(completed)
            })
        }

        fn release<'a>(&'a self, key: &'a StoreKey, token: Token) -> StoreFuture<'a, bool> {
            StoreFuture::new(async move {
                let released = self.inner.release(key, token).await?;
                let by_completer = self.completed.lock().unwrap().contains(&(*key, token));
                if by_completer && matches!(self.fault, Fault::ReleaseDeletesRecords) {
                    self.deleted.lock().unwrap().push(*key);
                }
                Ok(released)
            })
        }
    }

    /// Each fault fails the suite, at the step that checks for it: the suite can tell such a
    /// store from a right one.
    #[tokio::test]
    async fn the_suite_catches_a_store_that_breaks_its_contract() {
        for (fault, step) in [
            (Fault::ReleaseDeletesRecords, "the record stays as written"),
            (
                Fault::ReclaimOverwrites,
                "a key another request holds stays theirs",
            ),
            (Fault::OmittedBodyReadsEmpty, "read back as written"),
        ] {
            let store = Faulty {
                inner: MokaStore::new(),
                fault,
                completed: Mutex::new(Vec::new()),
                deleted: Mutex::new(Vec::new()),
            };
            let run = std::panic::AssertUnwindSafe(conformance(&store, 1));
            let Err(panic) = run.catch_unwind().await else {
                panic!("{fault:?} passed the suite");
            };
            let message = (panic.downcast_ref::<String>().cloned())
                .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                .unwrap_or_default();
            assert!(message.contains(step), "{fault:?}: {message}");
        }
    }
}
