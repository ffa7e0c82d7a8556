//! The embedded store: one `moka` cache, per-entry expiry, bounded in bytes.
//!
//! Operations on one key are made atomic by striped locks (the store key is a SHA-256, so its
//! first byte spreads keys evenly): each operation is a read and at most one write under its
//! stripe, with no lock held across an `await`. Reads of live records take no lock.

use std::future::ready;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use moka::sync::Cache;
use moka::Expiry;

use super::{Claim, Store, StoreFuture, LAPSED_CLAIM_GRACE};
use crate::clock::Timestamp;
use crate::digest::StoreKey;
use crate::record::{Completed, InFlight, Record, Token};

/// What a record costs beyond its response bytes, for the capacity bound: the key, the
/// record, moka's entry and its bookkeeping.
const ENTRY_OVERHEAD: usize = 256;

/// The default capacity: 256 MiB of records.
pub const DEFAULT_MAX_BYTES: u64 = 256 * 1024 * 1024;

#[derive(Clone)]
struct Entry {
    record: Record,
    /// How long the cache keeps the entry from its last write: until the record lapses.
    keep_for: Duration,
}

impl Entry {
    fn new(record: Record, now: Timestamp) -> Self {
        let mut keep_for = record.lapses_at().since(now);
        if let Record::InFlight(_) = record {
            keep_for += LAPSED_CLAIM_GRACE;
        }
        Self { record, keep_for }
    }

    fn weight(&self) -> u32 {
        let response = match &self.record {
            Record::InFlight(_) => 0,
            Record::Completed(c) => c.response_size() + c.headers.len() * 48,
        };
        u32::try_from(ENTRY_OVERHEAD + response).unwrap_or(u32::MAX)
    }
}

struct LapseExpiry;

impl Expiry<StoreKey, Entry> for LapseExpiry {
    fn expire_after_create(&self, _: &StoreKey, entry: &Entry, _: Instant) -> Option<Duration> {
        Some(entry.keep_for)
    }

    fn expire_after_update(
        &self,
        _: &StoreKey,
        entry: &Entry,
        _: Instant,
        _: Option<Duration>,
    ) -> Option<Duration> {
        Some(entry.keep_for)
    }
}

/// The embedded, per-process store.
///
/// Holds at most [`MokaStoreBuilder::max_bytes`] of records (least recently used go first)
/// and drops each record when it lapses. It is per process: several server processes behind
/// a load balancer need a shared store, or a duplicate can run once per process.
///
/// Clones share the same records.
#[derive(Clone)]
pub struct MokaStore {
    cache: Cache<StoreKey, Entry>,
    stripes: Arc<[Mutex<()>; 256]>,
}

/// What one write under a key's lock does.
enum Op {
    Put(Entry),
    Remove,
    Nop,
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

    /// The number of records held, counting ones not yet evicted. For tests and metrics.
    pub async fn entry_count(&self) -> u64 {
        self.cache.run_pending_tasks();
        self.cache.entry_count()
    }

    /// The weighted size of the records held, in bytes. For tests and metrics.
    pub async fn weighted_size(&self) -> u64 {
        self.cache.run_pending_tasks();
        self.cache.weighted_size()
    }

    /// Every record held, for tests and diagnostics (a full scan).
    pub fn snapshot(&self) -> Vec<(StoreKey, Record)> {
        self.cache
            .iter()
            .map(|(key, entry)| (*key, entry.record))
            .collect()
    }

    /// Applies `decide` to the record of `key` atomically: no other operation on the key runs
    /// between the read and the write. With `live_at`, a record lapsed by then is passed as
    /// absent.
    fn compute<T>(
        &self,
        key: &StoreKey,
        live_at: Option<Timestamp>,
        decide: impl FnOnce(Option<Record>) -> (Op, T),
    ) -> T {
        let stripe = &self.stripes[usize::from(key.as_bytes()[0])];
        let _guard = stripe.lock().unwrap_or_else(PoisonError::into_inner);
        let record = self
            .cache
            .get(key)
            .map(|e| e.record)
            .filter(|r| live_at.is_none_or(|now| r.is_live(now)));
        let (op, answer) = decide(record);
        match op {
            Op::Put(entry) => self.cache.insert(*key, entry),
            Op::Remove => self.cache.invalidate(key),
            Op::Nop => {}
        }
        answer
    }
}

impl Default for MokaStore {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for MokaStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MokaStore")
            .field("entries", &self.cache.entry_count())
            .field("weighted_size", &self.cache.weighted_size())
            .finish()
    }
}

/// Builds a [`MokaStore`].
#[derive(Clone, Debug)]
#[must_use]
pub struct MokaStoreBuilder {
    max_bytes: u64,
}

impl MokaStoreBuilder {
    /// The most bytes of records to hold (response bytes plus a fixed overhead per record).
    /// Default 256 MiB.
    pub fn max_bytes(mut self, max_bytes: u64) -> Self {
        self.max_bytes = max_bytes;
        self
    }

    /// The store.
    pub fn build(self) -> MokaStore {
        let cache = Cache::builder()
            .max_capacity(self.max_bytes)
            .weigher(|_: &StoreKey, e: &Entry| e.weight())
            .expire_after(LapseExpiry)
            .build();
        MokaStore {
            cache,
            stripes: Arc::new(std::array::from_fn(|_| Mutex::new(()))),
        }
    }
}

fn holds(record: &Option<Record>, token: Token) -> bool {
    matches!(record, Some(Record::InFlight(f)) if f.token == token)
}

impl Store for MokaStore {
    fn claim<'a>(
        &'a self,
        key: &'a StoreKey,
        claim: InFlight,
        now: Timestamp,
    ) -> StoreFuture<'a, Claim> {
        // A live record answers without the key's lock: replays and conflicts are reads.
        if let Some(entry) = self.cache.get(key) {
            if entry.record.is_live(now) {
                return Box::pin(ready(Ok(Claim::Existing(entry.record))));
            }
        }
        let answer = self.compute(key, Some(now), |live| match live {
            Some(record) => (Op::Nop, Claim::Existing(record)),
            None => (
                Op::Put(Entry::new(Record::InFlight(claim), now)),
                Claim::Claimed,
            ),
        });
        Box::pin(ready(Ok(answer)))
    }

    fn get<'a>(&'a self, key: &'a StoreKey, now: Timestamp) -> StoreFuture<'a, Option<Record>> {
        let record = self
            .cache
            .get(key)
            .map(|e| e.record)
            .filter(|r| r.is_live(now));
        Box::pin(ready(Ok(record)))
    }

    fn extend<'a>(
        &'a self,
        key: &'a StoreKey,
        token: Token,
        lease_until: Timestamp,
        now: Timestamp,
    ) -> StoreFuture<'a, bool> {
        let held = self.compute(key, None, |record| match record {
            Some(Record::InFlight(mut f)) if f.token == token => {
                f.lease_until = lease_until;
                (Op::Put(Entry::new(Record::InFlight(f), now)), true)
            }
            _ => (Op::Nop, false),
        });
        Box::pin(ready(Ok(held)))
    }

    fn complete<'a>(
        &'a self,
        key: &'a StoreKey,
        token: Token,
        record: Arc<Completed>,
        now: Timestamp,
    ) -> StoreFuture<'a, bool> {
        let held = self.compute(key, None, |current| {
            if holds(&current, token) {
                (Op::Put(Entry::new(Record::Completed(record), now)), true)
            } else {
                (Op::Nop, false)
            }
        });
        Box::pin(ready(Ok(held)))
    }

    fn release<'a>(&'a self, key: &'a StoreKey, token: Token) -> StoreFuture<'a, bool> {
        let held = self.compute(key, None, |record| {
            if holds(&record, token) {
                (Op::Remove, true)
            } else {
                (Op::Nop, false)
            }
        });
        Box::pin(ready(Ok(held)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::digest::Fingerprint;
    use crate::engine::{Begin, Engine, Response};
    use crate::policy::Policy;

    #[tokio::test]
    async fn moka_store_conforms() {
        crate::testing::conformance(&MokaStore::new(), 1).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_flood_of_a_million_keys_stays_within_capacity() {
        const MAX_BYTES: u64 = 8 << 20;
        let store = MokaStore::builder().max_bytes(MAX_BYTES).build();
        let engine = Engine::new(store.clone());
        let policy = Policy::DEFAULT;
        let fp = Fingerprint::new("POST", "/v1/calls", "", b"{}");
        let body = bytes::Bytes::from(vec![b'x'; 200]);
        for i in 0u32..1_000_000 {
            let mut key = [0; 32];
            key[..4].copy_from_slice(&i.to_be_bytes());
            let Ok(Begin::Execute(lease)) =
                engine.begin(&policy, StoreKey::from_bytes(key), fp).await
            else {
                panic!("a new key is claimed");
            };
            let response = Response {
                status: 201,
                body: body.clone(),
                ..Response::default()
            };
            lease.finish(response).await.unwrap();
        }
        let (bytes, entries) = (store.weighted_size().await, store.entry_count().await);
        assert!(
            bytes <= MAX_BYTES,
            "{bytes} bytes held over a {MAX_BYTES} bound"
        );
        // Each record weighs its overhead plus 200 bytes of body.
        assert!(entries <= MAX_BYTES / 456 + 1, "{entries} records held");
        assert!(
            entries > 1000,
            "the store still holds recent records: {entries}"
        );
    }
}
