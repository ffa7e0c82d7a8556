//! Warnings of failures that refuse keyed requests en masse (a store's outage, a worker past
//! its bound of runs): one when it starts, then at most one a minute; and of routes no layer
//! serves, or whose `Transaction` their layer cannot lend: one for each.

use std::collections::HashSet;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// After a warning of an outage, how long before the next.
pub(crate) const WARNING_EVERY: Duration = Duration::from_secs(60);

/// The warnings of an application's keyed requests failed en masse: refused (503) or run
/// unprotected (failing open) for its store's failure, or refused while a worker finishes as
/// many runs for clients that went away as it allows. Each fails every keyed request alike,
/// and a warning for each, a thousand lines a second under load, would bury the rest of the
/// log.
#[derive(Debug, Default)]
pub(crate) struct Outage {
    /// Of requests refused.
    pub(crate) refused: Warnings,
    /// Of requests run unprotected.
    pub(crate) unprotected: Warnings,
    /// Of requests refused past a worker's bound of runs for clients gone.
    pub(crate) overloaded: Warnings,
    /// Of `Transaction`s refused to handlers run unprotected.
    #[cfg(feature = "postgres")]
    pub(crate) unlent: Warnings,
    /// Of routes whose handlers take the key and that no layer serves.
    pub(crate) unserved: Named,
    /// Of routes whose handlers take a `Transaction` their layer cannot lend.
    #[cfg(feature = "postgres")]
    pub(crate) unlendable: Named,
}

/// The routes (method and pattern) a fault of the server's was named for: each in the log
/// once, as the fault repeats with every request to it (and a handler that takes
/// `Option<IdempotencyKey>` still answers, so that any client could add a line to the log with
/// each request). As many as the application has routes.
#[derive(Debug, Default)]
pub(crate) struct Named(Mutex<HashSet<String>>);

impl Named {
    /// Whether `route` is named now: the first time only.
    pub(crate) fn first(&self, route: String) -> bool {
        let mut named = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        named.insert(route)
    }
}

/// The warnings of one kind of failure: the first is warned of, then at most one every
/// [`WARNING_EVERY`], saying how many were held back since the last (each logged at `debug`
/// as it comes).
#[derive(Debug, Default)]
pub(crate) struct Warnings(Mutex<Option<Warned>>);

/// Logs one failure of a kind whose warnings are `$warnings` ([`Warnings`]): at `warn`, with
/// `since_last_warning` (how many were held back), when one is due, else at `debug`; with
/// `$fields` (as `tracing`'s macros take them) and `$message` either way.
macro_rules! warn_when_due {
    ($warnings:expr, $message:expr, $($fields:tt)+) => {
        match $warnings.due() {
            Some(held) => tracing::warn!($($fields)+, since_last_warning = held, "{}", $message),
            None => tracing::debug!($($fields)+, "{}", $message),
        }
    };
}
pub(crate) use warn_when_due;

#[derive(Debug, Clone, Copy)]
struct Warned {
    at: Instant,
    /// Failures held back since.
    held: u64,
}

impl Warnings {
    /// Whether a failure now is warned of: `Some` with how many were held back since the last
    /// warning, `None` when this one is held back too.
    pub(crate) fn due(&self) -> Option<u64> {
        self.due_at(Instant::now())
    }

    fn due_at(&self, now: Instant) -> Option<u64> {
        let mut last = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        match &mut *last {
            Some(warned) if now.saturating_duration_since(warned.at) < WARNING_EVERY => {
                warned.held += 1;
                None
            }
            _ => {
                let held = last.map_or(0, |warned| warned.held);
                *last = Some(Warned { at: now, held: 0 });
                Some(held)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_failure_is_warned_of_then_one_a_minute_with_those_held_back() {
        let warnings = Warnings::default();
        let start = Instant::now();
        assert_eq!(warnings.due_at(start), Some(0));
        for s in [1, 30, 59] {
            assert_eq!(warnings.due_at(start + Duration::from_secs(s)), None);
        }
        let next = start + WARNING_EVERY;
        assert_eq!(warnings.due_at(next), Some(3));
        assert_eq!(warnings.due_at(next + Duration::from_secs(1)), None);
        assert_eq!(warnings.due_at(next + WARNING_EVERY * 3), Some(1));
    }
}
