//! The embedded store: completed records in one `moka` cache (per-entry expiry, bounded in
//! bytes), and claims of running requests in small maps beside it.
//!
//! A claim lives only as long as its request runs, so claims are kept out of the cache: a new
//! key costs one cache write (its completion), not two, and the cache holds nothing but
//! records worth keeping. Operations on one key are made atomic by striped locks (the store
//! key is a SHA-256, so its first byte spreads keys evenly), each held for a map lookup and at
//! most one write, never across an `await`.
//!
//! Records are held under the first 128 bits of their store key: as unlikely to collide as a
//! random UUID, 16 bytes less per record, and a second preimage of SHA-256 truncated to 128
//! bits is still out of reach.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use moka::policy::EvictionPolicy;
use moka::sync::Cache;
use moka::Expiry;

use super::{Claim, Store, StoreError, StoreFuture, LAPSED_CLAIM_GRACE};
use crate::clock::Timestamp;
use crate::digest::StoreKey;
use crate::record::{Completed, InFlight, Record, Token};

/// What a completed record costs beyond its response bytes, for the capacity bound: the key,
/// the record, and moka's entry and bookkeeping (measured by the `memory` benchmark).
pub const RECORD_OVERHEAD: usize = 493;

/// The default capacity: 256 MiB of records.
pub const DEFAULT_MAX_BYTES: u64 = 256 * 1024 * 1024;

/// Claims per stripe from which lapsed ones (whose holder vanished without releasing them) are
/// swept out when a new claim finds no room left in the stripe's map: below it, a stripe keeps
/// them (at most 63, some hundred bytes each). Only a full map is looked through, and it is
/// then given room for as many claims again as it keeps, so that a stripe holding many running
/// claims (a client may aim its keys at one) costs each new claim a constant share of the
/// looks, as the map's growth does, rather than a look through them all. A stripe a burst grew
/// keeps its lapsed claims until its map fills again: up to the room the burst made.
const SWEEP_ABOVE: usize = 64;

/// After a warning that records are being evicted, how long before the next one.
const EVICTION_WARNING_EVERY: Duration = Duration::from_secs(60);

/// Evictions between two looks at the time for a due warning: a full store evicts on every
/// write, and reading the clock on each would cost the write path more than the warning is
/// worth. A warning comes at most this many evictions late.
const EVICTIONS_BETWEEN_LOOKS: u64 = 64;

/// A record evicted is counted as this many units, so that the records a write evicts, an
/// estimate (see [`Evictions`]), add up across writes without rounding each.
const EVICTED_UNIT: u64 = 1 << 10;

/// Records evicted to make room before their time to live, and the warnings of them.
///
/// An evicted record shortens the promise silently: a retry of its key runs the operation
/// again. So they are counted, reported to metrics through [`Store::take_evictions`], and
/// warned of when they start, then at most once every [`EVICTION_WARNING_EVERY`].
///
/// A write that finds the store full counts the records the cache then evicts to make room
/// for it, the least recently used, as the bytes it takes beyond the store's bound in records
/// of the average weight held: one for one among records of one weight, a thousand for a
/// record that takes the room of a thousand. The cache's own eviction listener would count
/// exactly, but moka then locks every key it writes, which made an insert into a full cache
/// half as slow again or more (the `store` bench); the cache's size and its number of records
/// are an atomic load each.
#[derive(Debug)]
struct Evictions {
    /// Records evicted, in [`EVICTED_UNIT`]s.
    count: AtomicU64,
    /// The records that [`Store::take_evictions`] has answered up to.
    taken: AtomicU64,
    /// The count at which a write next looks whether a warning is due.
    next_look: AtomicU64,
    /// The count at the last warning.
    warned: AtomicU64,
    /// Milliseconds from `since` before which no new warning is given.
    quiet_until: AtomicU64,
    since: Instant,
    max_bytes: u64,
}

impl Evictions {
    fn new(max_bytes: u64) -> Self {
        Self {
            count: AtomicU64::new(0),
            taken: AtomicU64::new(0),
            next_look: AtomicU64::new(1),
            warned: AtomicU64::new(0),
            quiet_until: AtomicU64::new(0),
            since: Instant::now(),
            max_bytes,
        }
    }

    /// Counts a write of `weight` bytes into a cache holding `held` bytes in `entries`
    /// records (both as its housekeeping last left it), and warns if a warning is due.
    fn write(&self, held: u64, weight: u32, entries: impl FnOnce() -> u64) {
        let over = held
            .saturating_add(u64::from(weight))
            .saturating_sub(self.max_bytes);
        if over == 0 {
            return;
        }
        // `held` is up to a record below the bound once the cache has made room (it evicts
        // whole records), and stays so until its next housekeeping, however many writes come
        // meanwhile: each of them takes its whole weight beyond the bound, less that room.
        let average = (held / entries().max(1)).max(1);
        let beyond = over.saturating_add(average).min(u64::from(weight));
        let units = beyond.saturating_mul(EVICTED_UNIT) / average;
        let count = (self.count.fetch_add(units, Relaxed) + units) / EVICTED_UNIT;
        if count >= self.next_look.load(Relaxed) {
            self.look(count);
        }
    }

    #[cold]
    fn look(&self, count: u64) {
        self.next_look
            .fetch_max(count + EVICTIONS_BETWEEN_LOOKS, Relaxed);
        if let Some(evicted) = self.warning_due(count, self.since.elapsed()) {
            tracing::warn!(
                evicted,
                total = count,
                max_bytes = self.max_bytes,
                "the embedded idempotency store is full and evicts records before their time to live, so their retries would run again; raise MokaStoreBuilder::max_bytes to about writes per second x TTL in seconds x ({RECORD_OVERHEAD} + response bytes)"
            );
        }
    }

    /// The evictions to warn of, counted up to `count`, when a warning is due at `at` from
    /// `since`; `None` when the last warning is too recent, nothing was evicted since, or
    /// another write took this one.
    fn warning_due(&self, count: u64, at: Duration) -> Option<u64> {
        let at = u64::try_from(at.as_millis()).unwrap_or(u64::MAX);
        let quiet_until = self.quiet_until.load(Relaxed);
        if at < quiet_until || count <= self.warned.load(Relaxed) {
            return None;
        }
        let next = at.saturating_add(EVICTION_WARNING_EVERY.as_millis() as u64);
        self.quiet_until
            .compare_exchange(quiet_until, next, Relaxed, Relaxed)
            .ok()?;
        Some(count.saturating_sub(self.warned.fetch_max(count, Relaxed))).filter(|n| *n > 0)
    }
}

/// What a record weighs in the cache: its response's bytes and what the cache spends on it.
/// Never saturates for a record the store takes ([`MokaStore::record_limit`]).
fn weight(record: &Completed) -> u32 {
    u32::try_from(RECORD_OVERHEAD + record.response.held_bytes()).unwrap_or(u32::MAX)
}

/// The heaviest record moka can weigh (in a `u32`), less what the cache spends on it: the
/// largest response any cache of records can count.
const WEIGHABLE: usize = u32::MAX as usize - RECORD_OVERHEAD;

struct LapseExpiry;

impl LapseExpiry {
    /// How long the cache keeps a record from its write: its time to live.
    fn keep_for(record: &Completed) -> Option<Duration> {
        Some(record.expires_at.since(record.completed_at))
    }
}

impl Expiry<Slot, Completed> for LapseExpiry {
    fn expire_after_create(&self, _: &Slot, record: &Completed, _: Instant) -> Option<Duration> {
        Self::keep_for(record)
    }

    fn expire_after_update(
        &self,
        _: &Slot,
        record: &Completed,
        _: Instant,
        _: Option<Duration>,
    ) -> Option<Duration> {
        Self::keep_for(record)
    }
}

/// Claims of running requests, by store key.
type Claims = HashMap<StoreKey, InFlight, SlotHashing>;

/// The claims whose store keys share a first byte.
type Stripe = Mutex<Claims>;

/// Where the cache holds a store key's record: its [`StoreKey::first_128`].
type Slot = u128;

/// Hashes slots (and store keys, which hash as their slot) for the store's maps.
///
/// Slots are digests already, so one multiply of their two halves spreads them, where the
/// default SipHash would cost a dozen rounds per lookup. The halves are mixed with a random
/// seed of the store's own: a client can grind keys until their slots share bits, but not
/// aim them at one bucket of a table whose seed it never sees.
#[derive(Clone, Copy)]
struct SlotHashing {
    seed: [u64; 2],
}

impl SlotHashing {
    fn random() -> Self {
        let (a, b) = uuid::Uuid::new_v4().as_u64_pair();
        Self { seed: [a, b] }
    }
}

impl BuildHasher for SlotHashing {
    type Hasher = SlotHasher;

    fn build_hasher(&self) -> SlotHasher {
        SlotHasher {
            seed: self.seed,
            state: 0,
        }
    }
}

struct SlotHasher {
    seed: [u64; 2],
    state: u64,
}

/// The high and low halves of the full product, folded.
fn folded_multiply(a: u64, b: u64) -> u64 {
    let product = u128::from(a) * u128::from(b);
    (product as u64) ^ ((product >> 64) as u64)
}

impl Hasher for SlotHasher {
    fn write_u128(&mut self, n: u128) {
        let (high, low) = ((n >> 64) as u64, n as u64);
        self.state = folded_multiply(low ^ self.seed[0] ^ self.state, high ^ self.seed[1]);
    }

    fn write_u64(&mut self, n: u64) {
        self.write_u128(u128::from(n));
    }

    fn write(&mut self, bytes: &[u8]) {
        // Not taken by slots or store keys; any other input still hashes whole.
        for chunk in bytes.chunks(16) {
            let mut word = [0; 16];
            word[..chunk.len()].copy_from_slice(chunk);
            self.write_u128(u128::from_le_bytes(word));
        }
    }

    fn finish(&self) -> u64 {
        self.state
    }
}

/// The embedded, per-process store.
///
/// Holds at most [`MokaStoreBuilder::max_bytes`] of completed records (least recently used go
/// first) and drops each when it lapses. The cache evicts in its housekeeping, which runs
/// every 64 writes: in between it can hold up to 63 records beyond the bound (an eviction on
/// each write would cost every new key that housekeeping). Writes from several threads at once
/// do not wait for a housekeeping one of them runs: until it ends, they can take the cache a
/// few hundred records beyond the bound (moka's log holds 384 writes before a writer waits;
/// measured, 387 beyond with two writing threads, 438 with sixteen). Claims of running requests are held beside them,
/// one per request in flight, and do not count toward the bound. It is per process: several
/// server processes behind a load balancer need a shared store, or a duplicate can run once
/// per process.
///
/// Clones share the same records.
#[derive(Clone)]
pub struct MokaStore {
    completed: Cache<Slot, Completed, SlotHashing>,
    claims: Arc<[Stripe; 256]>,
    max_bytes: u64,
    evictions: Arc<Evictions>,
    /// How many times a stripe's claims were looked through for lapsed ones.
    #[cfg(test)]
    sweeps: Arc<std::sync::atomic::AtomicUsize>,
}

impl MokaStore {
    /// A store with the default capacity.
    pub fn new() -> Self {
        Self::builder().build()
    }

    /// A builder to set the capacity.
    pub fn builder() -> MokaStoreBuilder {
        MokaStoreBuilder {
            max_bytes: DEFAULT_MAX_BYTES,
        }
    }

    /// The most bytes a record's response may hold: what the capacity leaves beyond the
    /// cache's own cost of a record, and no more than moka can weigh.
    fn record_limit(&self) -> usize {
        let max = usize::try_from(self.max_bytes).unwrap_or(usize::MAX);
        max.saturating_sub(RECORD_OVERHEAD).min(WEIGHABLE)
    }

    /// The number of records held, claims included, counting records not yet evicted. For
    /// tests and metrics.
    pub async fn entry_count(&self) -> u64 {
        self.completed.run_pending_tasks();
        let claims: usize = self.claims.iter().map(|s| lock(s).len()).sum();
        self.completed.entry_count() + claims as u64
    }

    /// The weighted size of the completed records held, in bytes. For tests and metrics.
    pub async fn weighted_size(&self) -> u64 {
        self.completed.run_pending_tasks();
        self.completed.weighted_size()
    }

    /// The records evicted so far to make room before their time to live: each is a key
    /// whose retry would run its operation again. Records that lapse are not counted.
    ///
    /// An estimate: each write that finds the store full counts the bytes it takes beyond
    /// the store's bound in records of the average weight held, as many as the cache evicts
    /// to make room for it, the least recently used (one for one among records of one
    /// weight, many for a heavy record). Fullness is the cache's size as its housekeeping
    /// (every 64 writes or so) last left it: the writes that fill a store go uncounted until
    /// its housekeeping sees it full, and records that lapsed make room only once it has
    /// removed them (a write meanwhile counts the room it takes, though lapsed records made
    /// it: a heavy one as many as it weighs in records).
    ///
    /// `idem-actix` exports the same count as `idem_store_evictions_total`.
    pub fn evicted(&self) -> u64 {
        self.evictions.count.load(Relaxed) / EVICTED_UNIT
    }

    /// Every record held (a full scan): the claims, then the completed records (the cache
    /// keeps only the first 16 bytes of their store keys; the rest is zero here).
    #[cfg(any(test, feature = "testing"))]
    pub(crate) fn snapshot(&self) -> Vec<(StoreKey, Record)> {
        let mut records = Vec::new();
        for stripe in self.claims.iter() {
            let claims = lock(stripe);
            records.extend(claims.iter().map(|(key, c)| (*key, Record::InFlight(*c))));
        }
        records.extend(self.completed.iter().map(|(slot, record)| {
            let mut key = [0; 32];
            key[..16].copy_from_slice(&slot.to_be_bytes());
            (StoreKey::from_bytes(key), Record::Completed(record))
        }));
        records
    }

    fn claim_in_memory(&self, key: &StoreKey, claim: InFlight, now: Timestamp) -> Claim {
        // Under the lock, a completion (record in, then claim out) is seen whole, so one read
        // of each map decides.
        let mut claims = self.stripe(key);
        if let Some(running) = claims.get(key).filter(|c| c.lease_until > now) {
            return Claim::Existing(Record::InFlight(*running));
        }
        if let Some(record) = self.live_completed(key, now) {
            return Claim::Existing(Record::Completed(record));
        }
        if claims.len() >= SWEEP_ABOVE && claims.len() >= claims.capacity() {
            #[cfg(test)]
            self.sweeps.fetch_add(1, Relaxed);
            claims.retain(|_, c| c.lease_until.saturating_add(LAPSED_CLAIM_GRACE) > now);
            let kept = claims.len();
            claims.reserve(kept);
        }
        // A lapsed claim, if any, is displaced: its holder can no longer finish.
        claims.insert(*key, claim);
        Claim::Claimed
    }

    fn stripe(&self, key: &StoreKey) -> MutexGuard<'_, Claims> {
        lock(&self.claims[usize::from(key.as_bytes()[0])])
    }

    fn live_completed(&self, key: &StoreKey, now: Timestamp) -> Option<Completed> {
        self.completed
            .get(&key.first_128())
            .filter(|c| c.expires_at > now)
    }
}

fn lock(stripe: &Stripe) -> MutexGuard<'_, Claims> {
    // A panic cannot leave a map half-written: each operation is one insert or remove.
    stripe.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Default for MokaStore {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for MokaStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MokaStore")
            .field("completed", &self.completed.entry_count())
            .field("weighted_size", &self.completed.weighted_size())
            .finish_non_exhaustive()
    }
}

/// Builds a [`MokaStore`].
#[derive(Clone, Debug)]
#[must_use]
pub struct MokaStoreBuilder {
    max_bytes: u64,
}

impl MokaStoreBuilder {
    /// The most bytes of completed records to hold: response bytes plus a fixed overhead of
    /// [`RECORD_OVERHEAD`] (493 bytes) per record, what each costs the cache beyond its
    /// response. Default 256 MiB.
    ///
    /// Size it for the records one time to live brings in:
    ///
    /// > bytes ≈ writes per second × TTL in seconds × (`RECORD_OVERHEAD` + average response
    /// > bytes)
    ///
    /// where a write is a keyed request that ran and was recorded (replays write nothing), and
    /// a response's bytes are its body and recorded headers. For example, 20 writes per second
    /// of 1 KiB responses kept 24 h need 20 × 86,400 × (493 + 1,024) ≈ 2.6 GB; the default
    /// 256 MiB keeps a day of about 2 such writes per second. A store too small evicts the
    /// least recently used records before their time to live, and a retry of an evicted key
    /// runs its operation again: evictions are counted ([`MokaStore::evicted`], the metric
    /// `idem_store_evictions_total` in `idem-actix`) and warned of in the log when they start,
    /// then at most once a minute. A store below 507 bytes cannot keep even a record without
    /// its response, so it could never record a request: [`Policy::check`](crate::Policy::check)
    /// (and `IdempotencyConfig::with_defaults` in `idem-actix`) refuses it.
    pub fn max_bytes(mut self, max_bytes: u64) -> Self {
        self.max_bytes = max_bytes;
        self
    }

    /// The store.
    pub fn build(self) -> MokaStore {
        let hashing = SlotHashing::random();
        let completed = Cache::builder()
            // Plain LRU: every record completed is admitted and the least recently used go
            // first. moka's default (TinyLFU) may refuse a new record when the cache is full,
            // and the retry of the newest operation would then run it again.
            .eviction_policy(EvictionPolicy::lru())
            .max_capacity(self.max_bytes)
            .weigher(|_: &Slot, record: &Completed| weight(record))
            .expire_after(LapseExpiry)
            .build_with_hasher(hashing);
        MokaStore {
            completed,
            claims: Arc::new(std::array::from_fn(|_| {
                Mutex::new(HashMap::with_hasher(hashing))
            })),
            max_bytes: self.max_bytes,
            evictions: Arc::new(Evictions::new(self.max_bytes)),
            #[cfg(test)]
            sweeps: Arc::default(),
        }
    }
}

impl Store for MokaStore {
    fn claim<'a>(
        &'a self,
        key: &'a StoreKey,
        claim: InFlight,
        now: Timestamp,
    ) -> StoreFuture<'a, Claim> {
        StoreFuture::ready(Ok(self.claim_in_memory(key, claim, now)))
    }

    fn claim_now(
        &self,
        key: &StoreKey,
        claim: InFlight,
        now: Timestamp,
    ) -> Option<Result<Claim, StoreError>> {
        Some(Ok(self.claim_in_memory(key, claim, now)))
    }

    fn get<'a>(&'a self, key: &'a StoreKey, now: Timestamp) -> StoreFuture<'a, Option<Record>> {
        // Under the lock, so that a completion (claim out, record in) is seen whole.
        let claims = self.stripe(key);
        let record = match claims.get(key).filter(|c| c.lease_until > now) {
            Some(running) => Some(Record::InFlight(*running)),
            None => self.live_completed(key, now).map(Record::Completed),
        };
        StoreFuture::ready(Ok(record))
    }

    fn extend<'a>(
        &'a self,
        key: &'a StoreKey,
        token: Token,
        lease_until: Timestamp,
        _now: Timestamp,
    ) -> StoreFuture<'a, bool> {
        let mut claims = self.stripe(key);
        let held = match claims.get_mut(key).filter(|c| c.token == token) {
            Some(claim) => {
                claim.lease_until = lease_until;
                true
            }
            None => false,
        };
        StoreFuture::ready(Ok(held))
    }

    fn complete<'a>(
        &'a self,
        key: &'a StoreKey,
        token: Token,
        record: Completed,
        _now: Timestamp,
    ) -> StoreFuture<'a, bool> {
        if let Err(error) = super::check_status(&record.response) {
            return StoreFuture::ready(Err(error));
        }
        // The cache would drop at once a record heavier than its whole capacity.
        let (size, max) = (record.response.held_bytes(), self.record_limit());
        if size > max {
            return StoreFuture::ready(Err(StoreError::TooLarge { size, max }));
        }
        let weight = weight(&record);
        let mut claims = self.stripe(key);
        let held = claims.get(key).is_some_and(|c| c.token == token);
        if held {
            let filled = self.completed.weighted_size();
            // Record first, then drop the claim, both under the lock: no reader sees neither.
            self.completed.insert(key.first_128(), record);
            claims.remove(key);
            drop(claims);
            self.evictions
                .write(filled, weight, || self.completed.entry_count());
        }
        StoreFuture::ready(Ok(held))
    }

    fn max_record_bytes(&self) -> Option<usize> {
        Some(self.record_limit())
    }

    fn release<'a>(&'a self, key: &'a StoreKey, token: Token) -> StoreFuture<'a, bool> {
        let mut claims = self.stripe(key);
        let held = claims.get(key).is_some_and(|c| c.token == token);
        if held {
            claims.remove(key);
        }
        StoreFuture::ready(Ok(held))
    }

    fn in_process(&self) -> bool {
        true
    }

    fn take_evictions(&self) -> u64 {
        let count = self.evicted();
        // A load first: the common answer, none, writes nothing another thread must see.
        if count == self.evictions.taken.load(Relaxed) {
            return 0;
        }
        count.saturating_sub(self.evictions.taken.fetch_max(count, Relaxed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use crate::digest::Fingerprint;
    use crate::engine::{Begin, Engine, Outcome};
    use crate::error::IdempotencyError;
    use crate::policy::Policy;
    use crate::record::Response;
    use crate::store::SharedMoka;
    use futures_util::FutureExt;

    #[tokio::test]
    async fn moka_store_conforms() {
        crate::testing::conformance(&MokaStore::new(), 1).await;
    }

    #[test]
    fn racing_claims_of_one_key_are_won_once_and_a_release_never_undoes_a_completion() {
        let store = MokaStore::new();
        let now = Timestamp::from_millis(1_000_000);
        let fingerprint = Fingerprint::new("POST", "/", "", b"");
        for n in 0u8..200 {
            let key = StoreKey::from_bytes([n; 32]);
            let won: Vec<Option<Token>> = std::thread::scope(|s| {
                let racers: Vec<_> = (0..4)
                    .map(|_| {
                        s.spawn(|| {
                            let claim = InFlight {
                                fingerprint,
                                lease_until: now.saturating_add(Duration::from_secs(30)),
                                token: Token::random(),
                            };
                            let answer = store.claim_now(&key, claim, now).unwrap().unwrap();
                            (answer == Claim::Claimed).then_some(claim.token)
                        })
                    })
                    .collect();
                racers.into_iter().map(|r| r.join().unwrap()).collect()
            });
            let winners: Vec<Token> = won.into_iter().flatten().collect();
            assert_eq!(winners.len(), 1, "key {n} won {} times", winners.len());
            let token = winners[0];
            let record = Completed {
                fingerprint,
                response: Response::new(201, [], b"x"),
                completed_at: now,
                expires_at: now.saturating_add(Duration::from_secs(60)),
            };
            let (completed, released) = std::thread::scope(|s| {
                let complete = s.spawn(|| store.complete(&key, token, record, now).now_or_never());
                let release = s.spawn(|| store.release(&key, token).now_or_never());
                (complete.join().unwrap(), release.join().unwrap())
            });
            let (completed, released) = (completed.unwrap().unwrap(), released.unwrap().unwrap());
            assert!(
                completed != released,
                "exactly one of the two takes the claim"
            );
            let held = store.get(&key, now).now_or_never().unwrap().unwrap();
            assert_eq!(held.is_some(), completed, "key {n}");
        }
        assert_eq!(
            store.claims.iter().map(|s| lock(s).len()).sum::<usize>(),
            0,
            "no claim is left behind"
        );
    }

    #[tokio::test]
    async fn claims_abandoned_past_the_grace_are_swept_and_others_kept() {
        let store = MokaStore::new();
        let t0 = Timestamp::from_millis(1_000_000);
        let lease = Duration::from_secs(10);
        let claim_at = |n: u8, at: Timestamp| {
            let mut key = [7; 32]; // one stripe: the first byte picks it
            key[1] = n;
            let claim = InFlight {
                fingerprint: Fingerprint::new("POST", "/", "", b""),
                lease_until: at.saturating_add(lease),
                token: Token::random(),
            };
            (StoreKey::from_bytes(key), claim)
        };
        for n in 0..100 {
            let (key, claim) = claim_at(n, t0);
            assert_eq!(store.claim(&key, claim, t0).await.unwrap(), Claim::Claimed);
        }
        // Lapsed, but within the grace: a late holder may still finish, so nothing goes.
        let within = t0.saturating_add(lease + LAPSED_CLAIM_GRACE / 2);
        let (key, claim) = claim_at(200, within);
        store.claim(&key, claim, within).await.unwrap();
        assert_eq!(store.entry_count().await, 101);
        // Past the grace, the abandoned claims are swept once the stripe needs room for a new
        // one: within as many new claims as the stripe held.
        let past = t0.saturating_add(lease + LAPSED_CLAIM_GRACE + Duration::from_secs(1));
        let mut recent = 1;
        while store.entry_count().await > recent {
            assert!(recent <= 64, "the abandoned claims are swept");
            let (key, claim) = claim_at(120 + recent as u8, past);
            store.claim(&key, claim, past).await.unwrap();
            recent += 1;
        }
        assert_eq!(store.entry_count().await, recent, "the recent claims stay");
    }

    /// A client that aims its keys at one stripe (the store key's first byte picks it) and
    /// holds many of them running at once must not make every new claim in that stripe look
    /// through all the others: the claims are looked through for lapsed ones only when the
    /// stripe has no room left for the new one, so that its cost is that of the map's growth.
    #[tokio::test]
    async fn a_stripe_of_many_running_claims_is_not_looked_through_on_every_new_claim() {
        let store = MokaStore::new();
        let now = Timestamp::from_millis(1_000_000);
        let claims = 2_000u16;
        for n in 0..claims {
            let mut key = [9; 32]; // one stripe
            key[1..3].copy_from_slice(&n.to_be_bytes());
            let claim = InFlight {
                fingerprint: Fingerprint::new("POST", "/", "", b""),
                lease_until: now.saturating_add(Duration::from_secs(30)),
                token: Token::random(),
            };
            let key = StoreKey::from_bytes(key);
            assert_eq!(store.claim(&key, claim, now).await.unwrap(), Claim::Claimed);
        }
        let sweeps = store.sweeps.load(Relaxed);
        assert!(
            sweeps <= 8,
            "{sweeps} looks through the stripe for {claims} claims"
        );
    }

    #[tokio::test]
    async fn a_record_completed_into_a_full_store_is_kept() {
        // Room for about 40 records: a store that is full when a key completes must still
        // replay it, or the retry of the newest operation would run it again.
        let store = MokaStore::builder()
            .max_bytes(40 * (RECORD_OVERHEAD as u64 + 64))
            .build();
        let engine = Engine::new(store.clone());
        let policy = Policy::DEFAULT;
        let fp = Fingerprint::new("POST", "/v1/calls", "", b"{}");
        for i in 0u32..2_000 {
            let mut key = [0; 32];
            key[..4].copy_from_slice(&i.to_be_bytes());
            let key = StoreKey::from_bytes(key);
            let Ok(Begin::Execute(lease)) = engine.begin(&policy, key, fp).await else {
                panic!("key {i} is new");
            };
            lease
                .finish(Response::new(201, [], &[b'x'; 62]))
                .await
                .unwrap();
            store.completed.run_pending_tasks();
            let replay = engine.begin(&policy, key, fp).await;
            assert!(
                matches!(replay, Ok(Begin::Replay(_))),
                "key {i}, just completed, is not replayed"
            );
        }
    }

    #[tokio::test]
    async fn a_record_heavier_than_the_whole_store_is_kept_without_its_body() {
        // moka would drop an entry heavier than its capacity at once, and the retry would run
        // the operation again.
        let store = MokaStore::builder().max_bytes(4096).build();
        assert_eq!(store.max_record_bytes(), Some(4096 - RECORD_OVERHEAD));
        let engine = Engine::new(store.clone());
        let policy = Policy::DEFAULT;
        let fp = Fingerprint::new("POST", "/v1/reports", "", b"{}");
        let key = StoreKey::from_bytes([3; 32]);
        let Ok(Begin::Execute(lease)) = engine.begin(&policy, key, fp).await else {
            panic!("a new key is claimed");
        };
        lease
            .finish(Response::new(201, [], &[b'x'; 8192]))
            .await
            .unwrap();
        store.completed.run_pending_tasks();
        let retry = engine.begin(&policy, key, fp).await;
        assert!(
            matches!(
                retry,
                Err(crate::IdempotencyError::ResponseTooLarge { status: 201, .. })
            ),
            "the retry must learn that the operation completed: {retry:?}"
        );
    }

    /// A refusal for size gives the record's size in the bytes the store's limit counts.
    #[tokio::test]
    async fn a_record_too_large_is_told_in_the_units_of_the_limit() {
        let store = MokaStore::builder().max_bytes(4096).build();
        let response = Response::new(201, [("location", &b"/r/1"[..])], &[b'x'; 3700]);
        let held = response.held_bytes();
        let record = Completed {
            fingerprint: Fingerprint::new("POST", "/r", "", b""),
            response,
            completed_at: Timestamp::from_millis(1),
            expires_at: Timestamp::from_millis(2),
        };
        let key = StoreKey::from_bytes([4; 32]);
        let refused = store.complete(&key, Token::random(), record, Timestamp::from_millis(1));
        match refused.await {
            Err(StoreError::TooLarge { size, max }) => {
                assert_eq!((size, Some(max)), (held, store.max_record_bytes()));
            }
            other => panic!("{other:?}"),
        }
    }

    /// moka weighs a record in a `u32`: no record the store takes may weigh more, or the
    /// cache would count it lighter than it is and hold more than its bound.
    #[test]
    fn no_record_the_store_takes_weighs_more_than_moka_counts() {
        let store = MokaStore::builder().max_bytes(16 << 30).build();
        let max = store.max_record_bytes().unwrap();
        assert!(RECORD_OVERHEAD + max <= u32::MAX as usize, "{max}");
    }

    #[tokio::test]
    async fn a_step_of_the_wall_clock_neither_lapses_a_running_claim_nor_ends_a_record_early() {
        let wall = ManualClock::new(Timestamp::from_millis(1_700_000_000_000));
        let engine = Engine::new(MokaStore::new()).with_wall_clock(wall.clone());
        let policy = Policy::DEFAULT;
        let (key, fp) = (
            StoreKey::from_bytes([3; 32]),
            Fingerprint::new("POST", "/", "", b""),
        );
        let Ok(Begin::Execute(lease)) = engine.begin(&policy, key, fp).await else {
            panic!("a new key is claimed");
        };
        // The wall clock steps past the lease (NTP, an operator, a VM resumed).
        wall.advance(policy.lease + Duration::from_secs(3600));
        assert!(
            matches!(
                engine.begin(&policy, key, fp).await,
                Err(IdempotencyError::InFlight)
            ),
            "a duplicate of the running request conflicts instead of running again"
        );
        let outcome = lease.finish(Response::new(201, [], b"x")).await.unwrap();
        assert_eq!(outcome, Outcome::Recorded);
        // And past the record's time to live.
        wall.advance(policy.ttl + Duration::from_secs(3600));
        assert!(
            matches!(engine.begin(&policy, key, fp).await, Ok(Begin::Replay(_))),
            "the record is replayed for its whole time to live"
        );
    }

    #[tokio::test]
    async fn a_shared_store_follows_the_wall_clock_so_a_step_past_the_lease_lapses_a_claim() {
        // The limit: processes sharing a store agree on times through the wall clock alone.
        let wall = ManualClock::new(Timestamp::from_millis(1_700_000_000_000));
        let engine = Engine::new(SharedMoka(MokaStore::new())).with_wall_clock(wall.clone());
        let policy = Policy::DEFAULT;
        let (key, fp) = (
            StoreKey::from_bytes([4; 32]),
            Fingerprint::new("POST", "/", "", b""),
        );
        let Ok(Begin::Execute(_running)) = engine.begin(&policy, key, fp).await else {
            panic!("a new key is claimed");
        };
        wall.advance(policy.lease + Duration::from_secs(1));
        assert!(
            matches!(engine.begin(&policy, key, fp).await, Ok(Begin::Execute(_))),
            "past the lease by the wall clock, the claim has lapsed"
        );
    }

    /// Claims and completes `n` new keys, from `first`, each kept for `ttl`.
    fn write(store: &MokaStore, first: u32, n: u32, ttl: Duration) {
        write_of(store, first, n, ttl, 64);
    }

    /// As [`write`], with responses of `body` bytes.
    fn write_of(store: &MokaStore, first: u32, n: u32, ttl: Duration, body: usize) {
        let now = Timestamp::from_millis(1_700_000_000_000);
        for i in first..first + n {
            let mut key = [0; 32];
            key[..4].copy_from_slice(&i.to_be_bytes());
            let key = StoreKey::from_bytes(key);
            let fingerprint = Fingerprint::new("POST", "/", "", b"");
            let claim = InFlight {
                fingerprint,
                lease_until: now.saturating_add(Duration::from_secs(60)),
                token: Token::random(),
            };
            let record = Completed {
                fingerprint,
                response: Response::new(201, [], &vec![b'x'; body]),
                completed_at: now,
                expires_at: now.saturating_add(ttl),
            };
            let claimed = store.claim(&key, claim, now).now_or_never();
            assert_eq!(claimed.unwrap().unwrap(), Claim::Claimed);
            let completed = store
                .complete(&key, claim.token, record, now)
                .now_or_never();
            assert!(completed.unwrap().unwrap(), "key {i} is recorded");
        }
    }

    /// A store with room for about `records` of those [`write`] writes.
    fn room_for(records: u64) -> MokaStore {
        let weight = RECORD_OVERHEAD + Response::new(201, [], &[b'x'; 64]).held_bytes();
        MokaStore::builder()
            .max_bytes(records * weight as u64)
            .build()
    }

    #[tokio::test]
    async fn records_evicted_to_make_room_are_counted_and_taken_once() {
        let store = room_for(40);
        write(&store, 0, 40, Duration::from_secs(86_400));
        assert_eq!(store.entry_count().await, 40);
        assert_eq!(store.evicted(), 0, "a store just full has evicted nothing");
        write(&store, 40, 200, Duration::from_secs(86_400));
        let held = store.entry_count().await;
        assert!((39..=40).contains(&held), "{held} records held");
        assert_eq!(
            store.evicted(),
            200,
            "each write into the full store evicts one"
        );
        assert_eq!(store.take_evictions(), 200);
        assert_eq!(store.take_evictions(), 0, "each eviction is taken once");
        write(&store, 240, 10, Duration::from_secs(86_400));
        assert_eq!(store.take_evictions(), 10, "then only the new ones");
    }

    #[tokio::test]
    async fn records_of_a_weight_that_does_not_divide_the_room_count_one_each() {
        // Room for forty and a half: the cache makes room by whole records and keeps some
        // bytes below its bound, which each write then takes before the bound.
        let weight = RECORD_OVERHEAD + Response::new(201, [], &[b'x'; 64]).held_bytes();
        let store = MokaStore::builder()
            .max_bytes(40 * weight as u64 + weight as u64 / 2)
            .build();
        write(&store, 0, 40, Duration::from_secs(86_400));
        assert_eq!(store.entry_count().await, 40);
        write(&store, 40, 640, Duration::from_secs(86_400));
        assert_eq!(store.entry_count().await, 40);
        let counted = store.evicted();
        assert!((576..=640).contains(&counted), "{counted} counted of 640");
    }

    #[tokio::test]
    async fn every_record_a_heavy_one_evicts_is_counted() {
        // A full store of small records takes one of half its room: a thousand of them go
        // before their time to live, each a key whose retry would run again.
        let (store, day) = (room_for(2_000), Duration::from_secs(86_400));
        write(&store, 0, 2_100, day);
        let (held, counted) = (store.entry_count().await, store.evicted());
        let half = usize::try_from(store.max_bytes / 2).unwrap();
        write_of(&store, 2_100, 1, day, half);
        let lost = held + 1 - store.entry_count().await;
        let counted = store.evicted() - counted;
        assert!(lost > 900, "the heavy record evicted {lost}");
        assert!(
            counted.abs_diff(lost) * 50 <= lost,
            "{counted} counted of {lost} evicted"
        );
    }

    #[tokio::test]
    async fn evictions_of_a_store_filling_up_are_counted_once_its_housekeeping_sees_it_full() {
        // The writes that fill it past its room before its housekeeping runs go uncounted.
        let store = room_for(40);
        write(&store, 0, 240, Duration::from_secs(86_400));
        let evicted = 240 - store.entry_count().await;
        assert!(
            (evicted - 64..=evicted).contains(&store.evicted()),
            "{} counted of {evicted} evicted",
            store.evicted()
        );
    }

    #[tokio::test]
    async fn records_that_lapse_are_not_counted_as_evicted() {
        // Full of records that lapse; then as many again, in the room they left.
        let store = room_for(50);
        write(&store, 0, 50, Duration::from_millis(1));
        assert_eq!(store.entry_count().await, 50, "all are held at first");
        // The cache's own clock, which cannot be faked from here, ends them, and its timer
        // wheel removes them at its next tick (about a second).
        let deadline = Instant::now() + Duration::from_secs(10);
        while store.entry_count().await > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(store.entry_count().await, 0, "all have lapsed");
        write(&store, 50, 50, Duration::from_secs(86_400));
        assert_eq!(store.entry_count().await, 50);
        assert_eq!(store.evicted(), 0);
        assert_eq!(store.take_evictions(), 0);
    }

    #[test]
    fn evictions_are_warned_of_when_they_start_then_at_most_once_a_minute() {
        let evictions = Evictions::new(1 << 20);
        let secs = Duration::from_secs;
        assert_eq!(
            evictions.warning_due(5, secs(0)),
            Some(5),
            "the first, at once"
        );
        assert_eq!(
            evictions.warning_due(90, secs(30)),
            None,
            "not within the minute"
        );
        assert_eq!(
            evictions.warning_due(100, secs(61)),
            Some(95),
            "then those since"
        );
        assert_eq!(
            evictions.warning_due(100, secs(200)),
            None,
            "none new, no warning"
        );
        assert_eq!(
            evictions.warning_due(101, secs(201)),
            Some(1),
            "a new one, at once"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_flood_of_a_million_keys_stays_within_capacity() {
        const MAX_BYTES: u64 = 8 << 20;
        let store = MokaStore::builder().max_bytes(MAX_BYTES).build();
        let engine = Engine::new(store.clone());
        let policy = Policy::DEFAULT;
        let fp = Fingerprint::new("POST", "/v1/calls", "", b"{}");
        let body = [b'x'; 200];
        for i in 0u32..1_000_000 {
            let mut key = [0; 32];
            key[..4].copy_from_slice(&i.to_be_bytes());
            let Ok(Begin::Execute(lease)) =
                engine.begin(&policy, StoreKey::from_bytes(key), fp).await
            else {
                panic!("a new key is claimed");
            };
            lease.finish(Response::new(201, [], &body)).await.unwrap();
        }
        let (bytes, entries) = (store.weighted_size().await, store.entry_count().await);
        assert!(
            bytes <= MAX_BYTES,
            "{bytes} bytes held over a {MAX_BYTES} bound"
        );
        // Each record weighs its overhead plus what it holds of the response.
        let weight = (RECORD_OVERHEAD + Response::new(201, [], &body).held_bytes()) as u64;
        assert!(entries <= MAX_BYTES / weight + 1, "{entries} records held");
        assert!(
            entries > 1000,
            "the store still holds recent records: {entries}"
        );
    }
}
