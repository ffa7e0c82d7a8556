//! Metrics through the `metrics` facade: nothing is exported unless the application installs a
//! recorder (for example `metrics-exporter-prometheus`).
//!
//! | name | kind | labels |
//! |---|---|---|
//! | `idem_requests_total` | counter | `outcome`: `executed`, `replayed`, `released`, `lost`, `unrecorded`, `unprotected` |
//! | `idem_conflicts_total` | counter | `kind`: `in_flight`, `mismatch`, `response_too_large` |
//! | `idem_rejections_total` | counter | `code`: the error code (invalid or missing keys and scopes, bodies too large) |
//! | `idem_store_errors_total` | counter | `op`: `claim`, `get`, `extend`, `complete`, `release` |
//! | `idem_store_duration_seconds` | histogram | `op` |

use std::sync::Arc;
use std::time::Instant;

use idem_core::clock::Timestamp;
use idem_core::store::{Claim, StoreFuture};
use idem_core::{Completed, IdempotencyError, InFlight, Record, Store, StoreKey, Token};

/// Counts a keyed request's outcome.
pub(crate) fn outcome(outcome: &'static str) {
    metrics::counter!("idem_requests_total", "outcome" => outcome).increment(1);
}

/// Counts a request refused before any claim.
pub(crate) fn rejected(code: &'static str) {
    metrics::counter!("idem_rejections_total", "code" => code).increment(1);
}

/// Counts an answer of the engine that is not an execution or a replay.
pub(crate) fn refused(error: &IdempotencyError) {
    match error {
        IdempotencyError::InFlight => {
            metrics::counter!("idem_conflicts_total", "kind" => "in_flight").increment(1);
        }
        IdempotencyError::Mismatch { .. } => {
            metrics::counter!("idem_conflicts_total", "kind" => "mismatch").increment(1);
        }
        IdempotencyError::ResponseTooLarge { .. } => {
            metrics::counter!("idem_conflicts_total", "kind" => "response_too_large").increment(1);
        }
        // Store errors are counted by the store wrapper.
        _ => {}
    }
}

/// Times every operation of a store and counts its errors.
pub(crate) struct Metered(pub(crate) Arc<dyn Store>);

fn timed<'a, T: Send + 'a>(op: &'static str, call: StoreFuture<'a, T>) -> StoreFuture<'a, T> {
    Box::pin(async move {
        let start = Instant::now();
        let result = call.await;
        metrics::histogram!("idem_store_duration_seconds", "op" => op)
            .record(start.elapsed().as_secs_f64());
        if result.is_err() {
            metrics::counter!("idem_store_errors_total", "op" => op).increment(1);
        }
        result
    })
}

impl Store for Metered {
    fn claim<'a>(
        &'a self,
        key: &'a StoreKey,
        claim: InFlight,
        now: Timestamp,
    ) -> StoreFuture<'a, Claim> {
        timed("claim", self.0.claim(key, claim, now))
    }

    fn get<'a>(&'a self, key: &'a StoreKey, now: Timestamp) -> StoreFuture<'a, Option<Record>> {
        timed("get", self.0.get(key, now))
    }

    fn extend<'a>(
        &'a self,
        key: &'a StoreKey,
        token: Token,
        lease_until: Timestamp,
        now: Timestamp,
    ) -> StoreFuture<'a, bool> {
        timed("extend", self.0.extend(key, token, lease_until, now))
    }

    fn complete<'a>(
        &'a self,
        key: &'a StoreKey,
        token: Token,
        record: Arc<Completed>,
        now: Timestamp,
    ) -> StoreFuture<'a, bool> {
        timed("complete", self.0.complete(key, token, record, now))
    }

    fn release<'a>(&'a self, key: &'a StoreKey, token: Token) -> StoreFuture<'a, bool> {
        timed("release", self.0.release(key, token))
    }

    fn fails_open(&self) -> bool {
        self.0.fails_open()
    }
}
