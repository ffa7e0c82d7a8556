//! Metrics through the `metrics` facade. The names, kinds and labels users see are listed once,
//! in the crate docs (`# Metrics`); a change here changes that table too.

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
        IdempotencyError::EncodingNotAccepted { .. } => {
            metrics::counter!("idem_conflicts_total", "kind" => "encoding_not_accepted")
                .increment(1);
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
