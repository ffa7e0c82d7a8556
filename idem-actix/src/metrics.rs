//! Metrics through the `metrics` facade: nothing is exported unless the application installs a
//! recorder (for example `metrics-exporter-prometheus`).
//!
//! | name | kind | labels |
//! |---|---|---|
//! | `idem_requests_total` | counter | `outcome`: `executed`, `replayed`, `released`, `lost`, `unrecorded`, `unprotected` |
//! | `idem_conflicts_total` | counter | `kind`: `in_flight`, `mismatch`, `response_too_large` |
//! | `idem_rejections_total` | counter | `code`: the error code (invalid or missing keys and scopes, bodies too large, `idempotency_overloaded`) |
//! | `idem_store_errors_total` | counter | `op`: `claim`, `get`, `extend`, `complete`, `release` |
//! | `idem_store_duration_seconds` | histogram | `op` |
//! | `idem_store_evictions_total` | counter | none: records the store evicted to make room before their time to live |
//!
//! A rising `idem_store_evictions_total` means the store is too small for its traffic: a retry
//! of an evicted key runs its operation again. The embedded store counts them; size it as
//! [`MokaStoreBuilder::max_bytes`](idem_core::store::MokaStoreBuilder::max_bytes) says.

use std::sync::Arc;
use std::time::Duration;

use idem_core::{IdempotencyError, Store, StoreObserver};

/// A metric with one label, whose usual values are listed: the `metrics` macros keep the key
/// of a literal label in a `static`, where a variable one costs an allocation per use. A value
/// not listed still counts, at that cost.
macro_rules! labelled {
    ($kind:ident, $name:literal, $label:literal, $value:expr, [$($known:literal),* $(,)?]) => {
        match $value {
            $($known => metrics::$kind!($name, $label => $known),)*
            other => metrics::$kind!($name, $label => other),
        }
    };
}

/// Counts a keyed request's outcome.
pub(crate) fn outcome(outcome: &'static str) {
    labelled!(
        counter,
        "idem_requests_total",
        "outcome",
        outcome,
        [
            "executed",
            "replayed",
            "released",
            "lost",
            "unrecorded",
            "unprotected",
        ]
    )
    .increment(1);
}

/// Counts a request refused before any claim.
pub(crate) fn rejected(code: &'static str) {
    labelled!(
        counter,
        "idem_rejections_total",
        "code",
        code,
        [
            "idempotency_key_missing",
            "idempotency_key_invalid",
            "idempotency_scope_missing",
            "idempotency_body_too_large",
            "idempotency_overloaded",
        ]
    )
    .increment(1);
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
        // Store errors are counted by `StoreMetrics`, with the operation that failed.
        _ => {}
    }
}

/// The engine's observer of store operations (it wraps no store): times each one, counts its
/// errors, and counts the records the store evicted.
pub(crate) struct StoreMetrics {
    store: Arc<dyn Store>,
}

impl StoreMetrics {
    /// The metrics of `store`'s operations.
    pub(crate) fn new(store: Arc<dyn Store>) -> Self {
        Self { store }
    }
}

impl StoreObserver for StoreMetrics {
    fn store_op(&self, op: &'static str, elapsed: Duration, failed: bool) {
        labelled!(
            histogram,
            "idem_store_duration_seconds",
            "op",
            op,
            ["claim", "get", "extend", "complete", "release",]
        )
        .record(elapsed.as_secs_f64());
        if failed {
            metrics::counter!("idem_store_errors_total", "op" => op).increment(1);
        }
        // After every operation, whichever a store counts evictions in; none costs one load.
        let evicted = self.store.take_evictions();
        if evicted > 0 {
            metrics::counter!("idem_store_evictions_total").increment(evicted);
        }
    }
}
