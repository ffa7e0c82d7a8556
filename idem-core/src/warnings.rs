//! Warnings of a failure that repeats with every request while it lasts (a store's outage,
//! replicas that fall behind): one when it starts, then at most one a minute. A warning for
//! each, a thousand lines a second under load, would bury the rest of the log.
//!
//! idem warns of its own such failures so; an application can warn of its own (a database
//! its handlers use, down) the same way:
//!
//! ```
//! use idem_core::warnings::Warnings;
//!
//! static DATABASE_FAILED: Warnings = Warnings::new();
//!
//! fn database_failed(error: &str) {
//!     if let Some(held) = DATABASE_FAILED.due() {
//!         eprintln!("the database failed: {error} ({held} more since the last such line)");
//!     }
//! }
//! # database_failed("connection refused");
//! ```

use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// After a warning of a failure, how long before the next.
pub const WARNING_EVERY: Duration = Duration::from_secs(60);

/// The warnings of one kind of failure: the first is warned of, then at most one every
/// [`WARNING_EVERY`], saying how many were held back since the last (each logged at `debug`
/// as it comes).
#[derive(Debug, Default)]
pub struct Warnings(Mutex<Option<Warned>>);

/// Logs one failure of a kind whose warnings are `$warnings`
/// ([`Warnings`](crate::warnings::Warnings)): at `warn`, with `since_last_warning` (how many
/// were held back), when one is due, else at `debug`; with `$fields` (as `tracing`'s macros
/// take them) and `$message` either way.
#[doc(hidden)]
#[macro_export]
macro_rules! warn_when_due {
    ($warnings:expr, $message:expr, $($fields:tt)+) => {
        match $warnings.due() {
            Some(held) => ::tracing::warn!($($fields)+, since_last_warning = held, "{}", $message),
            None => ::tracing::debug!($($fields)+, "{}", $message),
        }
    };
}

#[derive(Debug, Clone, Copy)]
struct Warned {
    at: Instant,
    /// Failures held back since.
    held: u64,
}

impl Warnings {
    /// None warned of yet: the first failure is.
    pub const fn new() -> Self {
        Self(Mutex::new(None))
    }

    /// Whether a failure now is warned of: `Some` with how many were held back since the last
    /// warning, `None` when this one is held back too.
    pub fn due(&self) -> Option<u64> {
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
