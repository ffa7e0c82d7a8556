//! Warnings of failures that refuse keyed requests en masse (a store's outage, a worker past
//! its bound of runs): one when it starts, then at most one a minute; and of routes no layer
//! serves, or whose `Transaction` their layer cannot lend: one for each.

use std::collections::HashSet;
use std::sync::{Mutex, PoisonError};

pub(crate) use idem_core::warn_when_due;
pub(crate) use idem_core::warnings::Warnings;

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
    /// Of handlers' writes not committed for the handlers' own doing (a transaction they
    /// ended, a constraint their writes break, a failed statement behind a success).
    #[cfg(feature = "postgres")]
    pub(crate) faulted: Warnings,
    /// Of handlers' writes not committed for Postgres's failure, or a serialization failure.
    #[cfg(feature = "postgres")]
    pub(crate) uncommitted: Warnings,
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
