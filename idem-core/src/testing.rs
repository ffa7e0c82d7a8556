//! Stores for tests: one whose backend is always down, and a wrapper that counts operations.
//! They let an application's own tests check its fail-closed answers and its store traffic.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::clock::Timestamp;
use crate::digest::StoreKey;
use crate::record::{Completed, InFlight, Record, Token};
use crate::store::{Claim, Store, StoreError, StoreFuture};

/// A store whose backend never answers: every operation fails with [`StoreError::Timeout`].
#[derive(Clone, Copy, Debug, Default)]
pub struct UnavailableStore;

fn timeout<'a, T: Send + 'a>() -> StoreFuture<'a, T> {
    Box::pin(async { Err(StoreError::Timeout) })
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
        _: Arc<Completed>,
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
}

impl<S> CountingStore<S> {
    /// Counts the operations on `inner`.
    pub fn new(inner: S) -> Self {
        Self {
            inner,
            calls: Arc::default(),
        }
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

    fn get<'a>(&'a self, key: &'a StoreKey, now: Timestamp) -> StoreFuture<'a, Option<Record>> {
        self.count("get").get(key, now)
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
        record: Arc<Completed>,
        now: Timestamp,
    ) -> StoreFuture<'a, bool> {
        self.count("complete").complete(key, token, record, now)
    }

    fn release<'a>(&'a self, key: &'a StoreKey, token: Token) -> StoreFuture<'a, bool> {
        self.count("release").release(key, token)
    }
}
