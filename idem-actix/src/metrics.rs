//! Metrics through the `metrics` facade. The names, kinds and labels users see are listed once,
//! in the crate docs (`# Metrics`); a change here changes that table too.

use std::sync::Arc;
use std::time::Duration;

use idem_core::{IdempotencyError, Store, StoreError, StoreObserver};

use crate::transaction::handlers_fault;

/// A counter with one label, whose usual values are listed once: `$series(value)` is its
/// series for `value` (the `metrics` macros keep the key of a literal label in a `static`,
/// where a variable one costs an allocation per use; a value not listed still counts, at that
/// cost), and `$values` the list, whose series [`describe_metrics`] starts at zero.
macro_rules! labelled {
    ($series:ident, $values:ident, $name:literal, $label:literal, [$($known:literal),* $(,)?]) => {
        const $values: &[&'static str] = &[$($known),*];

        fn $series(value: &'static str) -> metrics::Counter {
            match value {
                $($known => metrics::counter!($name, $label => $known),)*
                other => metrics::counter!($name, $label => other),
            }
        }
    };
}

labelled!(
    requests,
    OUTCOMES,
    "idem_requests_total",
    "outcome",
    [
        "executed",
        "replayed",
        "released",
        "lost",
        "unrecorded",
        "unprotected",
        "cancelled",
        "panicked",
    ]
);
labelled!(
    conflicts,
    KINDS,
    "idem_conflicts_total",
    "kind",
    [
        "in_flight",
        "mismatch",
        "response_too_large",
        "encoding_not_accepted",
    ]
);
labelled!(
    rejections,
    CODES,
    "idem_rejections_total",
    "code",
    [
        "idempotency_key_missing",
        "idempotency_key_invalid",
        "idempotency_scope_missing",
        "idempotency_body_invalid",
        "idempotency_body_too_large",
        "idempotency_overloaded",
        "idempotency_misconfigured",
    ]
);
labelled!(
    store_errors,
    OPS,
    "idem_store_errors_total",
    "op",
    [
        "claim",
        "get",
        "extend",
        "complete",
        "release",
        "transaction",
    ]
);

/// The series of the times of store operation `op`, one of [`OPS`] (each a literal, as in
/// [`labelled`]).
fn store_timings(op: &'static str) -> metrics::Histogram {
    match op {
        "claim" => metrics::histogram!("idem_store_duration_seconds", "op" => "claim"),
        "get" => metrics::histogram!("idem_store_duration_seconds", "op" => "get"),
        "extend" => metrics::histogram!("idem_store_duration_seconds", "op" => "extend"),
        "complete" => metrics::histogram!("idem_store_duration_seconds", "op" => "complete"),
        "release" => metrics::histogram!("idem_store_duration_seconds", "op" => "release"),
        "transaction" => {
            metrics::histogram!("idem_store_duration_seconds", "op" => "transaction")
        }
        other => metrics::histogram!("idem_store_duration_seconds", "op" => other),
    }
}

/// Describes each metric the layer records to the recorder installed now (Prometheus's
/// `# HELP` lines), and starts each of its counters' series at zero for the labels the crate
/// docs' table lists, so that a series is there before its first count (a rate or an alert
/// over it reads 0, not nothing).
pub fn describe_metrics() {
    for (series, values) in [
        (requests as fn(&'static str) -> metrics::Counter, OUTCOMES),
        (conflicts, KINDS),
        (rejections, CODES),
        (store_errors, OPS),
    ] {
        for value in values {
            series(value).increment(0);
        }
    }
    metrics::counter!("idem_store_evictions_total").increment(0);
    metrics::describe_counter!(
        "idem_requests_total",
        "Keyed requests by outcome: executed, replayed, released, lost, unrecorded, unprotected, cancelled, panicked"
    );
    metrics::describe_counter!(
        "idem_conflicts_total",
        "Keyed requests refused for their key's record, by kind: in_flight, response_too_large, encoding_not_accepted (409), mismatch (the policy's mismatch status, 409 or 422)"
    );
    metrics::describe_counter!(
        "idem_rejections_total",
        "Requests refused before any claim, by error code"
    );
    metrics::describe_counter!(
        "idem_store_errors_total",
        "Idempotency store operations that failed, by operation"
    );
    metrics::describe_histogram!(
        "idem_store_duration_seconds",
        metrics::Unit::Seconds,
        "Time taken by idempotency store operations, by operation"
    );
    metrics::describe_counter!(
        "idem_store_evictions_total",
        "Records the idempotency store evicted to make room before their time to live"
    );
}

/// Counts a keyed request's outcome.
pub(crate) fn outcome(outcome: &'static str) {
    requests(outcome).increment(1);
}

/// The outcome of a run whose claim was released (`result` is the release's), logged:
/// `released` when the key is free again, `lost` when another request holds it now,
/// `unrecorded` when the store failed (the claim is released in the background, or lapses
/// with its lease).
pub(crate) fn release_outcome(result: Result<bool, idem_core::StoreError>) -> &'static str {
    match result {
        Ok(true) => {
            tracing::debug!(outcome = "released", "idempotency key released");
            "released"
        }
        Ok(false) => {
            tracing::warn!(
                outcome = "lost",
                "idempotency claim was lost before its release"
            );
            "lost"
        }
        Err(error) => {
            tracing::error!(outcome = "unrecorded", %error, "releasing the idempotency claim failed; it is released in the background, or lapses with its lease");
            "unrecorded"
        }
    }
}

/// Counts a request refused before any claim.
pub(crate) fn rejected(code: &'static str) {
    rejections(code).increment(1);
}

/// Counts an answer of the engine that is not an execution or a replay.
pub(crate) fn refused(error: &IdempotencyError) {
    match error {
        IdempotencyError::InFlight => conflicts("in_flight").increment(1),
        IdempotencyError::Mismatch { .. } => conflicts("mismatch").increment(1),
        IdempotencyError::ResponseTooLarge { .. } => conflicts("response_too_large").increment(1),
        IdempotencyError::EncodingNotAccepted { .. } => {
            conflicts("encoding_not_accepted").increment(1);
        }
        // Refused before any claim, as the admission's refusals are.
        IdempotencyError::Misconfigured(_) => rejected(error.code()),
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
    fn store_op(&self, op: &'static str, elapsed: Duration, error: Option<&StoreError>) {
        store_timings(op).record(elapsed.as_secs_f64());
        if error.is_some() {
            store_errors(op).increment(1);
        }
        // After every operation, whichever a store counts evictions in; none costs one load.
        let evicted = self.store.take_evictions();
        if evicted > 0 {
            metrics::counter!("idem_store_evictions_total").increment(evicted);
        }
    }

    fn settlement_op(&self, op: &'static str, elapsed: Duration, error: Option<&StoreError>) {
        // A commit Postgres refused for the handler's own writes is the handler's fault,
        // answered as such: an application's bug does not count against the store.
        let error = error.filter(|error| !handlers_fault(error));
        self.store_op(op, elapsed, error);
    }
}

#[cfg(all(test, feature = "postgres"))]
mod tests {
    use std::collections::HashMap;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Mutex;

    use idem_core::{codes, Begin, Engine, Fingerprint, MokaStore, Policy, Response, StoreKey};
    use metrics::{
        Counter, CounterFn, Gauge, Histogram, Key, KeyName, Metadata, SharedString, Unit,
    };

    use super::*;

    /// Counts every counter's increments, by name and labels.
    #[derive(Default)]
    struct Counts(Mutex<HashMap<String, Arc<Count>>>);

    #[derive(Default)]
    struct Count(AtomicU64);

    impl CounterFn for Count {
        fn increment(&self, value: u64) {
            self.0.fetch_add(value, Ordering::SeqCst);
        }
        fn absolute(&self, value: u64) {
            self.0.store(value, Ordering::SeqCst);
        }
    }

    impl metrics::Recorder for Counts {
        fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
        fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
        fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
        fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
            let labels: Vec<_> = key
                .labels()
                .map(|l| format!("{}={}", l.key(), l.value()))
                .collect();
            let name = format!("{}{{{}}}", key.name(), labels.join(","));
            let count = self.0.lock().unwrap().entry(name).or_default().clone();
            Counter::from_arc(count)
        }
        fn register_gauge(&self, _: &Key, _: &Metadata<'_>) -> Gauge {
            Gauge::noop()
        }
        fn register_histogram(&self, _: &Key, _: &Metadata<'_>) -> Histogram {
            Histogram::noop()
        }
    }

    impl Counts {
        fn of(&self, name: &str) -> u64 {
            let counts = self.0.lock().unwrap();
            counts
                .get(name)
                .map_or(0, |count| count.0.load(Ordering::SeqCst))
        }
    }

    /// `describe_metrics` starts at zero the series of every code a request is refused with
    /// before any claim, so that a rate or an alert over one reads 0 rather than no data until
    /// the first such refusal.
    #[test]
    fn every_code_a_request_is_refused_with_before_a_claim_starts_at_zero() {
        let counts = Counts::default();
        metrics::with_local_recorder(&counts, describe_metrics);
        let started = counts.0.lock().unwrap();
        for code in [
            codes::KEY_MISSING,
            codes::KEY_INVALID,
            codes::SCOPE_MISSING,
            codes::BODY_INVALID,
            codes::BODY_TOO_LARGE,
            codes::OVERLOADED,
            codes::MISCONFIGURED,
        ] {
            let series = format!("idem_rejections_total{{code={code}}}");
            assert!(started.contains_key(&series), "{series} is not started");
        }
    }

    /// A Postgres error with an SQLSTATE, as sqlx reports one.
    #[derive(Debug)]
    struct Sqlstate(&'static str);

    impl std::fmt::Display for Sqlstate {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "SQLSTATE {}", self.0)
        }
    }

    impl std::error::Error for Sqlstate {}

    impl sqlx::error::DatabaseError for Sqlstate {
        fn message(&self) -> &str {
            "refused"
        }
        fn code(&self) -> Option<std::borrow::Cow<'_, str>> {
            Some(self.0.into())
        }
        fn as_error(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
            self
        }
        fn as_error_mut(&mut self) -> &mut (dyn std::error::Error + Send + Sync + 'static) {
            self
        }
        fn into_error(self: Box<Self>) -> Box<dyn std::error::Error + Send + Sync + 'static> {
            self
        }
        fn kind(&self) -> sqlx::error::ErrorKind {
            sqlx::error::ErrorKind::Other
        }
    }

    /// The `idem_store_errors_total{op=complete}` a commit refused with `error` counts.
    fn counted_for_a_commit_refused_with(error: fn() -> StoreError) -> u64 {
        let counts = Counts::default();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        metrics::with_local_recorder(&counts, || {
            runtime.block_on(async {
                let store: Arc<dyn Store> = Arc::new(MokaStore::new());
                let engine =
                    Engine::from_arc(Arc::clone(&store)).with_observer(StoreMetrics::new(store));
                let (key, fingerprint) = (
                    StoreKey::from_bytes([1; 32]),
                    Fingerprint::from_bytes([2; 32]),
                );
                let Ok(Begin::Execute(lease)) =
                    engine.begin(&Policy::DEFAULT, key, fingerprint).await
                else {
                    panic!("a new key is claimed")
                };
                let response = Response::new(201, [("content-type", &b"text/plain"[..])], b"ok");
                let settled = lease
                    .finish_with(response, |_| async { Err(error()) })
                    .await;
                assert!(settled.is_err());
            });
        });
        counts.of("idem_store_errors_total{op=complete}")
    }

    fn refused(code: &'static str) -> StoreError {
        StoreError::Refused(Box::new(sqlx::Error::Database(Box::new(Sqlstate(code)))))
    }

    /// A commit Postgres refuses for the handler's own doing (a statement of its transaction
    /// that failed, a deferred constraint its writes break or a trigger at the commit raised) is
    /// answered as the handler's fault, and is not counted as the store's error: an
    /// application's bug must not page whoever runs the store. The store's own failures are.
    #[test]
    fn a_commit_refused_for_the_handler_s_writes_is_not_a_store_error() {
        assert_eq!(counted_for_a_commit_refused_with(|| refused("25P02")), 0);
        assert_eq!(counted_for_a_commit_refused_with(|| refused("23505")), 0);
        assert_eq!(counted_for_a_commit_refused_with(|| refused("P0001")), 0);
        // A trigger's ASSERT, a division by zero in one.
        assert_eq!(counted_for_a_commit_refused_with(|| refused("P0004")), 0);
        assert_eq!(counted_for_a_commit_refused_with(|| refused("22012")), 0);
        // The store's own: a disk full, a serialization failure, a connection lost.
        assert_eq!(counted_for_a_commit_refused_with(|| refused("53100")), 1);
        assert_eq!(counted_for_a_commit_refused_with(|| refused("40001")), 1);
        let lost = || StoreError::Unavailable("connection reset".into());
        assert_eq!(counted_for_a_commit_refused_with(lost), 1);
    }

    /// Only a commit can be refused for a handler's writes: the same SQLSTATEs from one of the
    /// store's own operations (a claim a constraint or trigger added to the store's table
    /// refuses, a statement of a transaction of the store's that failed) are the store's
    /// errors, and counted. They were taken as a handler's fault on every operation.
    #[test]
    fn a_store_s_own_operation_refused_with_a_handler_s_sqlstate_is_a_store_error() {
        for code in ["23505", "23514", "P0001", "25P02"] {
            let counts = Counts::default();
            metrics::with_local_recorder(&counts, || {
                let metrics = StoreMetrics::new(Arc::new(MokaStore::new()));
                for op in ["claim", "get", "extend", "complete", "release"] {
                    metrics.store_op(op, Duration::ZERO, Some(&refused(code)));
                }
            });
            for op in ["claim", "get", "extend", "complete", "release"] {
                let name = format!("idem_store_errors_total{{op={op}}}");
                assert_eq!(counts.of(&name), 1, "{code} on {op}");
            }
        }
    }
}
