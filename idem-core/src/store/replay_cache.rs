//! Replays without a round trip: completed records kept in the process, in front of a store
//! that is a network away.
//!
//! A completed record never changes before it expires: completion is final, and a claim
//! cannot displace a record until it lapses (by the clock of the process that claims, which
//! may lead: copies stop answering [`ReplayCache::SKEW`] early). So a copy of it answers a
//! replay as well as the store would, until then. Claims are never kept: they change (extended, completed,
//! released, taken over) and only the store can say who holds a key.

use std::collections::HashSet;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use moka::policy::EvictionPolicy;
use moka::sync::Cache;
use moka::Expiry;

use super::{Claim, Store, StoreError, StoreFuture, RECORD_OVERHEAD};
use crate::clock::Timestamp;
use crate::digest::StoreKey;
use crate::record::{Completed, InFlight, Record, Token};

/// A store in front of which the completed records it returns or records are kept in the
/// process, so that a replay is answered without a round trip to it.
///
/// Wrap a remote store in it (`RedisStore`, on one server or a cluster). Every record that
/// `claim` or `get` returns as completed, and every record that `complete` writes, is kept
/// until [`SKEW`](Self::SKEW) (5 s) before the record's own expiry (judged on each read by the
/// engine's clock, as the stores judge it) or until the least recently used go first to stay
/// within `max_bytes`. A store judges a record's lapse by the clock of the process that claims
/// its key, so a process whose clock leads by up to that much may take the key over before the
/// expiry by this one's; no copy answers then, so that none replays the record the new run
/// replaces (a record of a TTL up to 5 s is not kept). A record
/// learned from the store is kept no longer than the store says it keeps it
/// ([`Store::kept_for`]; for Redis one more round trip, the first time a process replays
/// it), so that a process whose clock lags the writer's does not replay it after the store
/// dropped it. That question is asked in a task of its own, on the Tokio runtime the replay
/// runs on: the replay is answered in its claim's round trip, and the copy answers once the
/// store has said (replays of the key meanwhile go to the store, as without a cache). Each write
/// evicts what passes the bound before it returns, so the cache holds more than `max_bytes`
/// only while other threads are writing, by at most the record each is writing at that
/// instant. Anything else (a new key, a running request, a key whose copy was dropped) goes to
/// the store, so a key still runs once across every process that shares it.
///
/// The differences a user can see: a record the store no longer holds is still replayed by
/// the processes that kept a copy, until it expires or is dropped to make room. That is a
/// record deleted by hand (to let a key run again), or one the store lost (a Redis restarted
/// without persistence, a failover that lost writes, a Redis that evicts keys when full):
/// then a retry that reaches a process without the copy runs the operation again, while the
/// others replay the first answer. And while the store cannot be reached, a key with a copy
/// is still replayed (or refused as a mismatch), where every other keyed request is answered
/// 503 (or runs unprotected, failing open).
///
/// ```
/// use idem_core::store::{ReplayCache, Store};
///
/// /// Replays from up to 16 MiB of records kept in this process.
/// fn with_replays_in_process<S: Store>(remote: S) -> ReplayCache<S> {
///     ReplayCache::new(remote, 16 << 20)
/// }
/// ```
///
/// Clones share the kept records.
pub struct ReplayCache<S> {
    inner: Arc<S>,
    /// `None` when turned off (`max_bytes` 0): every operation goes to `inner`.
    kept: Option<Cache<StoreKey, Kept>>,
    /// The bound on what is kept, in bytes as [`weight`] counts them.
    max_bytes: u64,
    /// The keys whose records' copies are being learned, in tasks of their own.
    learning: Arc<Mutex<HashSet<StoreKey>>>,
}

impl<S> Clone for ReplayCache<S> {
    fn clone(&self) -> Self {
        Self {
            inner: Arc::clone(&self.inner),
            kept: self.kept.clone(),
            max_bytes: self.max_bytes,
            learning: Arc::clone(&self.learning),
        }
    }
}

/// At most this many records are learned at once, each a task holding a copy of its record:
/// past them, a replay the store answers is answered without keeping a copy (the next one
/// learns it).
const MAX_LEARNING: usize = 256;

/// A key's learning under way, counted in its cache's `learning` until dropped (its task
/// ended, or was dropped with its runtime).
struct Learning {
    learning: Arc<Mutex<HashSet<StoreKey>>>,
    key: StoreKey,
}

impl Learning {
    /// The learning of `key`, unless it is under way already or too many are.
    fn start(learning: &Arc<Mutex<HashSet<StoreKey>>>, key: StoreKey) -> Option<Self> {
        let mut keys = learning.lock().unwrap_or_else(PoisonError::into_inner);
        if keys.len() >= MAX_LEARNING || !keys.insert(key) {
            return None;
        }
        Some(Self {
            learning: Arc::clone(learning),
            key,
        })
    }
}

impl Drop for Learning {
    fn drop(&mut self) {
        let mut keys = self.learning.lock().unwrap_or_else(PoisonError::into_inner);
        keys.remove(&self.key);
    }
}

/// A completed record and how long to keep it from its insertion: until its expiry.
#[derive(Clone)]
struct Kept {
    record: Completed,
    keep_for: Duration,
}

struct UntilExpiry;

impl Expiry<StoreKey, Kept> for UntilExpiry {
    fn expire_after_create(&self, _: &StoreKey, kept: &Kept, _: Instant) -> Option<Duration> {
        Some(kept.keep_for)
    }

    fn expire_after_update(
        &self,
        _: &StoreKey,
        kept: &Kept,
        _: Instant,
        _: Option<Duration>,
    ) -> Option<Duration> {
        Some(kept.keep_for)
    }
}

impl<S: Store> ReplayCache<S> {
    /// How long before a record's expiry a copy stops answering for it (see
    /// [`ReplayCache`]): the most another process's clock may lead this one's.
    pub const SKEW: Duration = Duration::from_secs(5);

    /// A modest default for `max_bytes`: 16 MiB, some thirty thousand replays of 100-byte
    /// responses.
    pub const DEFAULT_MAX_BYTES: u64 = 16 * 1024 * 1024;

    /// Keeps at most `max_bytes` of completed records in front of `inner`: response bytes
    /// plus [`RECORD_OVERHEAD`] and 32 bytes per record (its full 32-byte store key, where the
    /// embedded store keeps 16, and how long it is kept). `0` turns the cache off.
    pub fn new(inner: S, max_bytes: u64) -> Self {
        let kept = (max_bytes > 0).then(|| {
            Cache::builder()
                .eviction_policy(EvictionPolicy::lru())
                .max_capacity(max_bytes)
                // Only records that have a weight are kept.
                .weigher(|_: &StoreKey, kept: &Kept| weight(&kept.record).unwrap_or(u32::MAX))
                .expire_after(UntilExpiry)
                .build()
        });
        Self {
            inner: Arc::new(inner),
            kept,
            max_bytes,
            learning: Arc::default(),
        }
    }

    /// The store behind the cache.
    pub fn inner(&self) -> &S {
        &self.inner
    }

    /// The live copy of `key`'s completed record, if one is kept.
    fn kept(&self, key: &StoreKey, now: Timestamp) -> Option<Completed> {
        let kept = self.kept.as_ref()?.get(key)?;
        (kept.record.expires_at > now.saturating_add(Self::SKEW)).then_some(kept.record)
    }

    /// Keeps `record` if it is live, for no longer than [`SKEW`](Self::SKEW) before its
    /// expiry, nor than `bound`.
    fn keep(&self, key: &StoreKey, record: &Completed, now: Timestamp, bound: Option<Duration>) {
        let Some(kept) = &self.kept else {
            return;
        };
        let keep_for = record
            .expires_at
            .since(now)
            .saturating_sub(Self::SKEW)
            .min(bound.unwrap_or(Duration::MAX));
        if !keep_for.is_zero() && weight(record).is_some() {
            kept.insert(
                *key,
                Kept {
                    record: record.clone(),
                    keep_for,
                },
            );
            // moka evicts in its housekeeping, which it runs by itself only every 64 writes:
            // until then the cache would hold up to 63 records beyond its bound. A write here
            // follows a round trip to the store, so housekeeping after each costs little.
            kept.run_pending_tasks();
        }
    }

    /// Keeps `record`, learned from the store, for no longer than the store keeps it. Its
    /// expiry was written by the clock of the process that completed it, and a store that
    /// drops records by a clock of its own (Redis) drops it then by that clock: a copy judged
    /// by this process's clock alone, if it lags the writer's, would replay past the record.
    /// The store is asked how long it keeps the key (for Redis, one more round trip, made
    /// once per record and process); not kept when it cannot say.
    ///
    /// Asked in a task of its own on the current Tokio runtime, so that the replay that found
    /// the record is answered now; awaited here outside one, where no task can be spawned.
    async fn learn(&self, key: &StoreKey, record: &Completed, now: Timestamp) {
        // Nothing to ask for a copy that would not be kept: one within `SKEW` of its expiry
        // (kept for no time), or heavier than the whole cache (every replay of it would pay
        // the question's round trip).
        let fits = weight(record).is_some_and(|weight| u64::from(weight) <= self.max_bytes);
        let lasts = record.expires_at > now.saturating_add(Self::SKEW);
        if self.kept.is_none() || !lasts || !fits {
            return;
        }
        // Nor for a copy kept since this replay's claim was sent: a learning that ended
        // meanwhile kept it.
        if self.kept(key, now).is_some() {
            return;
        }
        let asked = Instant::now();
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return self.ask_and_keep(key, record, now, asked).await;
        };
        let Some(learning) = Learning::start(&self.learning, *key) else {
            return;
        };
        let (this, record) = (self.clone(), record.clone());
        runtime.spawn(async move {
            this.ask_and_keep(&learning.key, &record, now, asked).await;
            drop(learning);
        });
    }

    /// Asks the store how long it keeps `record`, and keeps it for no longer: `now` is when
    /// the replay that found it was claimed, `asked` when the question began.
    async fn ask_and_keep(
        &self,
        key: &StoreKey,
        record: &Completed,
        now: Timestamp,
        asked: Instant,
    ) {
        if let Ok(bound) = self.inner.kept_for(key, record).await {
            // Kept from now.
            let now = now.saturating_add(asked.elapsed());
            self.keep(key, record, now, bound);
        }
    }
}

/// What an entry costs the cache beyond its response: an embedded store's record
/// ([`RECORD_OVERHEAD`], measured with a 16-byte key), and what this cache keeps besides: the
/// rest of its 32-byte key, and how long the record is kept.
const ENTRY_OVERHEAD: usize =
    RECORD_OVERHEAD + size_of::<StoreKey>() - size_of::<u128>() + size_of::<Duration>();

/// What an entry of `record` weighs; `None` when that is more than moka can weigh (a `u32`),
/// which would count the entry lighter than it is: such a record is not kept.
fn weight(record: &Completed) -> Option<u32> {
    u32::try_from(ENTRY_OVERHEAD + record.response.held_bytes()).ok()
}

impl<S> std::fmt::Debug for ReplayCache<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplayCache")
            .field("on", &self.kept.is_some())
            .field("kept", &self.kept.as_ref().map(Cache::entry_count))
            .finish_non_exhaustive()
    }
}

impl<S: Store> Store for ReplayCache<S> {
    fn claim<'a>(
        &'a self,
        key: &'a StoreKey,
        claim: InFlight,
        now: Timestamp,
    ) -> StoreFuture<'a, Claim> {
        if self.kept.is_none() {
            return self.inner.claim(key, claim, now);
        }
        if let Some(record) = self.kept(key, now) {
            return StoreFuture::ready(Ok(Claim::Existing(Record::Completed(record))));
        }
        let asked = self.inner.claim(key, claim, now);
        StoreFuture::new(async move {
            let answer = asked.await;
            if let Ok(Claim::Existing(Record::Completed(record))) = &answer {
                self.learn(key, record, now).await;
            }
            answer
        })
    }

    fn reclaim<'a>(
        &'a self,
        key: &'a StoreKey,
        claim: InFlight,
        now: Timestamp,
    ) -> StoreFuture<'a, Claim> {
        // Asked only once the store had no record of the key: none is kept here to answer.
        self.inner.reclaim(key, claim, now)
    }

    fn claim_now(
        &self,
        key: &StoreKey,
        claim: InFlight,
        now: Timestamp,
    ) -> Option<Result<Claim, StoreError>> {
        // A kept record needs no I/O, so it is answered here, sparing the caller a future.
        if let Some(record) = self.kept(key, now) {
            return Some(Ok(Claim::Existing(Record::Completed(record))));
        }
        // A store that answers in the call keeps its records in this process, by its clock.
        let answer = self.inner.claim_now(key, claim, now)?;
        if let Ok(Claim::Existing(Record::Completed(record))) = &answer {
            self.keep(key, record, now, None);
        }
        Some(answer)
    }

    fn get<'a>(&'a self, key: &'a StoreKey, now: Timestamp) -> StoreFuture<'a, Option<Record>> {
        if self.kept.is_none() {
            return self.inner.get(key, now);
        }
        if let Some(record) = self.kept(key, now) {
            return StoreFuture::ready(Ok(Some(Record::Completed(record))));
        }
        let asked = self.inner.get(key, now);
        StoreFuture::new(async move {
            let answer = asked.await;
            if let Ok(Some(Record::Completed(record))) = &answer {
                self.learn(key, record, now).await;
            }
            answer
        })
    }

    fn kept_for<'a>(
        &'a self,
        key: &'a StoreKey,
        record: &'a Completed,
    ) -> StoreFuture<'a, Option<Duration>> {
        self.inner.kept_for(key, record)
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
        if self.kept.is_none() {
            return self.inner.complete(key, token, record, now);
        }
        let written = self.inner.complete(key, token, record.clone(), now);
        StoreFuture::new(async move {
            let answer = written.await;
            // Only what the store took: a holder fenced out recorded nothing.
            // Its expiry, and the store's own (Redis's `PX`), were both reckoned from `now`.
            if let Ok(true) = answer {
                self.keep(key, &record, now, None);
            }
            answer
        })
    }

    fn release<'a>(&'a self, key: &'a StoreKey, token: Token) -> StoreFuture<'a, bool> {
        self.inner.release(key, token)
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::digest::Fingerprint;
    use crate::record::Response;
    use crate::store::MokaStore;
    use crate::store::SharedMoka;
    use crate::testing::{CountingStore, Fault, FaultyStore};

    const T0: Timestamp = Timestamp::from_millis(1_700_000_000_000);
    const TTL: Duration = Duration::from_secs(100);

    fn at(secs: u64) -> Timestamp {
        T0.saturating_add(Duration::from_secs(secs))
    }

    fn key(n: u8) -> StoreKey {
        StoreKey::from_bytes([n; 32])
    }

    fn fingerprint() -> Fingerprint {
        Fingerprint::new("POST", "/x", "", b"")
    }

    fn claim(secs: u64) -> InFlight {
        InFlight {
            fingerprint: fingerprint(),
            lease_until: at(secs + 10),
            token: Token::random(),
        }
    }

    fn completed(secs: u64, body: &[u8]) -> Completed {
        Completed {
            fingerprint: fingerprint(),
            response: Response::new(201, [], body),
            completed_at: at(secs),
            expires_at: at(secs).saturating_add(TTL),
        }
    }

    type Counted = ReplayCache<CountingStore<SharedMoka>>;

    fn counted(max_bytes: u64) -> Counted {
        ReplayCache::new(CountingStore::new(SharedMoka::default()), max_bytes)
    }

    /// A record of `body` for key 1, completed at 0 s behind the cache's back, as by another
    /// process sharing the store.
    async fn written_elsewhere<S: Store>(store: &ReplayCache<S>, body: &[u8]) -> Completed {
        let (held, remote) = (claim(0), store.inner());
        assert_eq!(
            remote.claim(&key(1), held, at(0)).await.unwrap(),
            Claim::Claimed
        );
        let record = completed(0, body);
        assert!(remote
            .complete(&key(1), held.token, record.clone(), at(0))
            .await
            .unwrap());
        record
    }

    /// The same, the calls that made it forgotten.
    async fn completed_elsewhere(store: &Counted, body: &[u8]) -> Completed {
        let record = written_elsewhere(store, body).await;
        store.inner().take();
        record
    }

    /// Claims and completes `key` through `store`; returns the record.
    async fn record(store: &Counted, n: u8, secs: u64) -> Completed {
        let held = claim(secs);
        assert_eq!(
            store.claim(&key(n), held, at(secs)).await.unwrap(),
            Claim::Claimed
        );
        let record = completed(secs, b"done");
        assert!(store
            .complete(&key(n), held.token, record.clone(), at(secs))
            .await
            .unwrap());
        record
    }

    fn replay(record: &Completed) -> Claim {
        Claim::Existing(Record::Completed(record.clone()))
    }

    /// Once the copies being learned in tasks of their own are kept (or not).
    async fn learned<S>(store: &ReplayCache<S>) {
        while !store.learning.lock().unwrap().is_empty() {
            // A sleep, not a yield: a runtime whose time is paused moves it on only when idle.
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    #[tokio::test]
    async fn the_replay_cache_conforms() {
        crate::testing::conformance(&ReplayCache::new(SharedMoka::default(), 1 << 20), 1).await;
        crate::testing::conformance(&ReplayCache::new(MokaStore::new(), 1 << 20), 2).await;
        crate::testing::conformance(&ReplayCache::new(SharedMoka::default(), 0), 3).await;
    }

    #[tokio::test]
    async fn what_complete_wrote_is_replayed_without_the_store() {
        let store = counted(1 << 20);
        let record = record(&store, 1, 0).await;
        store.inner().take();

        assert_eq!(
            store.claim(&key(1), claim(1), at(1)).await.unwrap(),
            replay(&record)
        );
        assert_eq!(
            store.claim_now(&key(1), claim(1), at(1)).unwrap().unwrap(),
            replay(&record),
            "answered in the call"
        );
        assert_eq!(
            store.get(&key(1), at(1)).await.unwrap(),
            Some(Record::Completed(record))
        );
        assert!(store.inner().take().is_empty(), "no store operation");
    }

    #[tokio::test]
    async fn a_record_another_process_completed_is_asked_for_once() {
        let store = counted(1 << 20);
        let record = completed_elsewhere(&store, b"elsewhere").await;

        assert_eq!(
            store.claim(&key(1), claim(1), at(1)).await.unwrap(),
            replay(&record)
        );
        learned(&store).await;
        assert_eq!(
            store.claim(&key(1), claim(2), at(2)).await.unwrap(),
            replay(&record)
        );
        assert_eq!(store.inner().take().get("claim"), Some(&1));
    }

    /// How long the store keeps a record bounds a copy learned from it; a store that cannot
    /// say leaves the record uncached (answered, and asked again next time), as a copy kept by
    /// this process's clock alone could outlive the store's record.
    #[tokio::test]
    async fn a_record_the_store_cannot_say_it_keeps_is_answered_but_not_kept() {
        let store = ReplayCache::new(FaultyStore::new(SharedMoka::default()), 1 << 20);
        let record = written_elsewhere(&store, b"elsewhere").await;
        let remote = store.inner();
        remote.fail("kept_for", 1, Fault::Unavailable);

        for secs in 1..4 {
            assert_eq!(
                store.claim(&key(1), claim(secs), at(secs)).await.unwrap(),
                replay(&record)
            );
            learned(&store).await;
        }
        assert_eq!(
            (remote.calls("claim"), remote.calls("kept_for")),
            (1 + 2, 2),
            "asked again after the store could not say, then kept"
        );
    }

    /// A replay the store answers is answered in that round trip: how long the store keeps
    /// the record (for Redis, one more round trip) is asked in a task of its own. The replay
    /// waited for it, so that a retry reaching a process without the copy (the usual retry
    /// behind a load balancer) took two round trips, where the store alone takes one.
    #[tokio::test(start_paused = true)]
    async fn a_first_replay_is_answered_without_waiting_for_how_long_the_store_keeps_it() {
        let store = ReplayCache::new(FaultyStore::new(SharedMoka::default()), 1 << 20);
        let record = written_elsewhere(&store, b"elsewhere").await;
        let remote = store.inner();
        let question = Duration::from_secs(10);
        remote.fail("kept_for", 1, Fault::Slow(question));

        let first = key(1);
        let replayed = tokio::time::timeout(question / 2, store.claim(&first, claim(1), at(1)));
        assert_eq!(replayed.await.expect("answered").unwrap(), replay(&record));
        // Once the store has said, the copy answers.
        learned(&store).await;
        assert_eq!(
            store.claim(&key(1), claim(2), at(2)).await.unwrap(),
            replay(&record)
        );
        assert_eq!((remote.calls("claim"), remote.calls("kept_for")), (2, 1));
    }

    /// A record the cache cannot keep (heavier than its bound) is not worth asking the store
    /// how long it keeps it: every replay of it would pay that round trip for nothing.
    #[tokio::test]
    async fn a_record_too_heavy_to_keep_costs_no_question_to_the_store() {
        let store = counted(4096);
        let record = completed_elsewhere(&store, &[b'x'; 8192]).await;
        for secs in 1..4 {
            assert_eq!(
                store.claim(&key(1), claim(secs), at(secs)).await.unwrap(),
                replay(&record)
            );
        }
        let calls = store.inner().take();
        assert_eq!(calls.get("kept_for"), None, "{calls:?}");
    }

    /// Nor does a record whose copy would be kept for no time, within [`ReplayCache::SKEW`] of
    /// its expiry (every record in its last seconds, a record of a short TTL all its life):
    /// every replay of it asked the store how long it keeps it, a second round trip to Redis.
    #[tokio::test]
    async fn a_record_too_near_its_expiry_to_keep_costs_no_question_to_the_store() {
        let store = counted(1 << 20);
        let record = completed_elsewhere(&store, b"ends soon").await;
        let skew = ReplayCache::<SharedMoka>::SKEW.as_secs();
        let last = TTL.as_secs() - skew;
        for secs in last..last + skew - 1 {
            assert_eq!(
                store.claim(&key(1), claim(secs), at(secs)).await.unwrap(),
                replay(&record)
            );
        }
        let calls = store.inner().take();
        assert_eq!(calls.get("kept_for"), None, "{calls:?}");
    }

    #[tokio::test]
    async fn a_running_request_is_always_asked_of_the_store() {
        let store = counted(1 << 20);
        let first = claim(0);
        assert_eq!(
            store.claim(&key(1), first, at(0)).await.unwrap(),
            Claim::Claimed
        );
        for secs in 1..4 {
            assert_eq!(
                store.claim(&key(1), claim(secs), at(secs)).await.unwrap(),
                Claim::Existing(Record::InFlight(first))
            );
        }
        assert_eq!(store.inner().take().get("claim"), Some(&4));
        // Released, the key is free again: nothing kept answers for it.
        assert!(store.release(&key(1), first.token).await.unwrap());
        assert_eq!(
            store.claim(&key(1), claim(5), at(5)).await.unwrap(),
            Claim::Claimed
        );
    }

    #[tokio::test]
    async fn a_fenced_out_completion_is_not_kept() {
        let store = counted(1 << 20);
        let held = claim(0);
        assert_eq!(
            store.claim(&key(1), held, at(0)).await.unwrap(),
            Claim::Claimed
        );
        let intruder = completed(0, b"intruder");
        assert!(!store
            .complete(&key(1), Token::random(), intruder, at(0))
            .await
            .unwrap());
        assert_eq!(
            store.claim(&key(1), claim(1), at(1)).await.unwrap(),
            Claim::Existing(Record::InFlight(held))
        );
    }

    /// A process whose clock leads the writer's by up to [`ReplayCache::SKEW`] may take a key
    /// over that early, before the record's expiry by this process's clock: copies stop
    /// answering that long before it, so that none replays the record it replaced. They
    /// answered up to the expiry itself, and went on replaying the first answer while
    /// processes without a copy replayed the second run's.
    #[tokio::test]
    async fn a_copy_stops_answering_before_its_expiry_by_the_skew_a_clock_may_lead_by() {
        let store = counted(1 << 20);
        let record = record(&store, 1, 0).await;
        store.inner().take();
        let last = (TTL - ReplayCache::<SharedMoka>::SKEW).as_secs() - 1;
        assert_eq!(
            store.claim(&key(1), claim(last), at(last)).await.unwrap(),
            replay(&record)
        );
        assert!(store.inner().take().is_empty(), "answered by the copy");

        let first = last + 1;
        assert_eq!(
            store.claim(&key(1), claim(first), at(first)).await.unwrap(),
            replay(&record),
            "the store answers, while it keeps the record"
        );
        assert_eq!(store.inner().take().get("claim"), Some(&1));
    }

    #[tokio::test]
    async fn a_kept_record_never_outlives_its_expiry() {
        let store = counted(1 << 20);
        record(&store, 1, 0).await;
        store.inner().take();
        let expiry = TTL.as_secs();
        assert_eq!(store.get(&key(1), at(expiry)).await.unwrap(), None);
        assert_eq!(
            store
                .claim(&key(1), claim(expiry), at(expiry))
                .await
                .unwrap(),
            Claim::Claimed,
            "the store decides once the record lapsed"
        );
        assert_eq!(store.inner().take().get("claim"), Some(&1));
    }

    /// Bounded after every write: in the records it holds (and answers from), not only in the
    /// size moka has counted so far, which lags behind its writes until its housekeeping.
    #[tokio::test]
    async fn the_cache_is_bounded_in_bytes() {
        let body = vec![b'x'; 1000];
        let weight = (ENTRY_OVERHEAD + Response::new(201, [], &body).held_bytes()) as u64;
        let store = counted(10 * weight);
        let kept = store.kept.as_ref().unwrap();
        for n in 0..100 {
            let held = claim(0);
            store.claim(&key(n), held, at(0)).await.unwrap();
            let record = completed(0, &body);
            assert!(store
                .complete(&key(n), held.token, record, at(0))
                .await
                .unwrap());
            let holds: u64 = kept
                .iter()
                .map(|(_, k)| u64::from(super::weight(&k.record).unwrap()))
                .sum();
            assert!(
                holds <= 10 * weight,
                "after {} writes the cache holds {} records, {holds} bytes, over its {}",
                n + 1,
                kept.iter().count(),
                10 * weight
            );
        }
        assert!(
            kept.weighted_size() <= 10 * weight,
            "{}",
            kept.weighted_size()
        );
        assert!(kept.entry_count() > 0);
        // What was dropped is asked of the store, which still has it.
        store.inner().take();
        let Claim::Existing(Record::Completed(first)) =
            store.claim(&key(0), claim(1), at(1)).await.unwrap()
        else {
            panic!("the store keeps what the cache dropped")
        };
        assert_eq!(first.response.body(), &body[..]);
        assert_eq!(store.inner().take().get("claim"), Some(&1));
    }

    #[tokio::test]
    async fn a_cache_of_zero_bytes_is_off() {
        let store = counted(0);
        let record = record(&store, 1, 0).await;
        store.inner().take();
        assert_eq!(
            store.claim(&key(1), claim(1), at(1)).await.unwrap(),
            replay(&record)
        );
        assert_eq!(
            store.claim(&key(1), claim(2), at(2)).await.unwrap(),
            replay(&record)
        );
        assert_eq!(store.inner().take().get("claim"), Some(&2));
    }
}
