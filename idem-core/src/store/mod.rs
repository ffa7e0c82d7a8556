//! Where records live, and everything a new backend needs: implement [`Store`] (its
//! operations return a [`StoreFuture`]; a claim answers a [`Claim`]) over records keyed by
//! [`StoreKey`]: a [`Record`] is an [`InFlight`] claim or a [`Completed`] response, fenced by
//! a [`Token`] and judged by [`Timestamp`]s the engine passes in. Check a backend with
//! `idem_core::testing::conformance` (feature `testing`). `idem-actix` re-exports this module
//! as `idem_actix::store`.
//!
//! The operations are small enough for any backend with an atomic compare-and-set. The
//! common case of each is one round trip; a claim that displaces a lapsed claim the backend
//! still keeps takes two (Redis checks the lapse in a second script), as does a claim that
//! races another on Postgres.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

pub use crate::clock::Timestamp;
pub use crate::digest::{Fingerprint, StoreKey};
pub use crate::record::{Completed, Headers, InFlight, Record, Response, Token};

#[cfg(any(feature = "redis", feature = "testing", test))]
#[cfg_attr(
    not(feature = "redis"),
    allow(dead_code, reason = "without Redis, only tests encode records")
)]
pub(crate) mod codec;
mod moka;
#[cfg(feature = "postgres")]
mod postgres;
#[cfg(feature = "redis")]
mod redis;
#[cfg(feature = "redis-tls")]
mod redis_tls;
mod replay_cache;

pub use self::moka::{MokaStore, MokaStoreBuilder, RECORD_OVERHEAD};
#[cfg(feature = "postgres")]
pub use self::postgres::{
    ClaimGone, ClaimTransaction, PostgresStore, PostgresStoreBuilder, TransactionEnded,
    TransactionalClaim,
};
#[cfg(feature = "redis")]
pub use self::redis::{RedisStore, RedisStoreBuilder};
pub use self::replay_cache::ReplayCache;

/// `url`, a store's, as a log line or a message may show it: its scheme, host, port and path,
/// without the user and password it may hold, nor its query (where sqlx takes a password
/// too). A password written unencoded may hold `/`, `?` or `#`, and a query's user name an `@`
/// (`?user=app@corp&password=...`): where that leaves it unclear which `@` ends the
/// credentials, what follows the last one is shown, cut at the first character a host, port
/// or path does not hold, so that no password shows whichever it was (the host shown may then
/// be wrong).
///
/// ```
/// use idem_core::store::redacted_url;
///
/// assert_eq!(redacted_url("redis://user:pw@cache:6379/0"), "redis://cache:6379/0");
/// assert_eq!(redacted_url("redis://user:Ab/c?d@cache:6379/0"), "redis://cache:6379/0");
/// assert_eq!(redacted_url("postgres://db/calls?password=pw"), "postgres://db/calls");
/// ```
pub fn redacted_url(url: &str) -> String {
    let (scheme, rest) = match url.split_once("://") {
        Some((scheme, rest)) => (Some(scheme), rest),
        None => (None, url),
    };
    let head = rest.split(['?', '#']).next().unwrap_or_default();
    let shown = match (head.rsplit_once('@'), rest.rsplit_once('@')) {
        // Credentials before the query, which is left out.
        (Some((_, host)), _) => host,
        // An `@` only past a `?` or `#`: in a password, or in the query.
        (None, Some((_, after))) => {
            let hosts = |c: char| c.is_ascii_alphanumeric() || ".-_:/[]~%".contains(c);
            &after[..after.find(|c: char| !hosts(c)).unwrap_or(after.len())]
        }
        (None, None) => head,
    };
    match scheme {
        Some(scheme) => format!("{scheme}://{shown}"),
        None => shown.to_owned(),
    }
}

/// Whether `error`, an unavailable store's, came from a store that answered: a Redis claim
/// that fewer replicas than asked acknowledged in time, released by the store (or kept,
/// where the store itself fails open, and then not an error). The store was reached, and the
/// key may be claimed again by another request by now, so such a request does not run
/// unprotected under an endpoint that fails open.
pub(crate) fn answered(error: &(dyn std::error::Error + Send + Sync + 'static)) -> bool {
    #[cfg(feature = "redis")]
    {
        self::redis::not_replicated(error)
    }
    #[cfg(not(feature = "redis"))]
    {
        let _ = error;
        false
    }
}

/// How long a store keeps a claim after its lease ends. Claims treat it as absent all the
/// same; the grace only lets a slow holder that nobody displaced still record its response.
pub const LAPSED_CLAIM_GRACE: std::time::Duration = std::time::Duration::from_secs(60);

/// The future a store operation returns: an answer known at once ([`StoreFuture::ready`],
/// for stores in memory, which then cost no allocation), or work still to do
/// ([`StoreFuture::new`], such as a network round trip).
#[must_use = "a store operation does nothing until awaited"]
pub struct StoreFuture<'a, T>(Op<'a, T>);

type Pending<'a, T> = Pin<Box<dyn Future<Output = Result<T, StoreError>> + Send + 'a>>;

enum Op<'a, T> {
    Ready(Option<Result<T, StoreError>>),
    Pending(Pending<'a, T>),
}

impl<'a, T> StoreFuture<'a, T> {
    /// An operation that is already done.
    pub fn ready(result: Result<T, StoreError>) -> Self {
        Self(Op::Ready(Some(result)))
    }

    /// An operation still to run: `future` is boxed.
    pub fn new(future: impl Future<Output = Result<T, StoreError>> + Send + 'a) -> Self {
        Self(Op::Pending(Box::pin(future)))
    }
}

// Nothing in it is pinned in place: the pending future is boxed.
impl<T> Unpin for StoreFuture<'_, T> {}

impl<T> Future for StoreFuture<'_, T> {
    type Output = Result<T, StoreError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match &mut self.0 {
            Op::Ready(result) => Poll::Ready(
                result
                    .take()
                    .expect("a store future polled after it finished"),
            ),
            Op::Pending(future) => future.as_mut().poll(cx),
        }
    }
}

impl<T> std::fmt::Debug for StoreFuture<'_, T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = match self.0 {
            Op::Ready(Some(_)) => "ready",
            Op::Ready(None) => "done",
            Op::Pending(_) => "pending",
        };
        f.debug_tuple("StoreFuture").field(&state).finish()
    }
}

/// The answer to a claim.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Claim {
    /// The key was free or its record had lapsed: the caller now holds it.
    Claimed,
    /// A live record exists; nothing was written.
    Existing(Record),
}

/// A backend for records.
///
/// Times are passed in by the engine, so that every backend judges leases and expiry by the
/// same clock. For `claim` and `get`, a record whose [`Record::lapses_at`] is not after `now`
/// counts as absent. `extend`, `complete` and `release` are fenced by the token alone: a
/// claim whose lease lapsed but which nobody displaced may still finish, since its operation
/// ran. A backend drops records itself some time after they lapse, never keeping them
/// without bound (the embedded store drops a lapsed claim when its key is claimed again, or when
/// a new claim finds its claim map, one of 256, full and holding 64 claims or more, and the
/// lapsed one a minute past its lease: claims whose holders vanished wait for the map to fill
/// again, so a map a burst grew keeps up to the room the burst made).
pub trait Store: Send + Sync + 'static {
    /// Atomically writes `claim` unless a live record exists; returns that record if it does.
    /// [`StoreError::Corrupt`] when that record cannot be read: the claim was not written
    /// (the engine releases nothing after it, as after a refusal).
    fn claim<'a>(
        &'a self,
        key: &'a StoreKey,
        claim: InFlight,
        now: Timestamp,
    ) -> StoreFuture<'a, Claim>;

    /// [`claim`](Self::claim), for a lease whose claim the store no longer has (dropped as it
    /// lapsed, lost to a restart or a failover): made to record the response of an operation
    /// that ran, or by the renewal of one that runs. The same atomic write; but a store that
    /// waits for something before a claim may run (replicas to acknowledge it) should not wait
    /// here, nor refuse a claim for want of it: nothing starts on this claim (its operation
    /// ran, or runs already, and a refusal would leave it without its claim), and a
    /// completion written next is kept whatever it waits for. The default is `claim`.
    fn reclaim<'a>(
        &'a self,
        key: &'a StoreKey,
        claim: InFlight,
        now: Timestamp,
    ) -> StoreFuture<'a, Claim> {
        self.claim(key, claim, now)
    }

    /// [`claim`](Self::claim), answered in the call by a store that needs no I/O for it (the
    /// embedded one), which spares the caller the future and the task that might run it.
    /// `None`, the default, when the store cannot: nothing is written then, and the caller
    /// calls `claim`.
    fn claim_now(
        &self,
        key: &StoreKey,
        claim: InFlight,
        now: Timestamp,
    ) -> Option<Result<Claim, StoreError>> {
        let _ = (key, claim, now);
        None
    }

    /// Reads the live record of `key`, if any.
    fn get<'a>(&'a self, key: &'a StoreKey, now: Timestamp) -> StoreFuture<'a, Option<Record>>;

    /// How much longer the store keeps `record` under `key` by a clock of its own, for a store
    /// that expires records by one and can tell (Redis: the key's `PTTL`, read in one step
    /// with its value); `Some(ZERO)` when it holds another record there, or none. `None`, the
    /// default, when a record's own expiry is all there is to go by.
    ///
    /// A record's expiry is a time written by the clock of the process that completed it;
    /// Redis drops the record by its own clock. [`ReplayCache`] asks this of a record it
    /// learns from the store, so that its copy is not kept past the record when this
    /// process's clock lags the writer's.
    fn kept_for<'a>(
        &'a self,
        key: &'a StoreKey,
        record: &'a Completed,
    ) -> StoreFuture<'a, Option<Duration>> {
        let _ = (key, record);
        StoreFuture::ready(Ok(None))
    }

    /// Moves the lease of the claim holding `token` to `lease_until`. `false` when `token` no
    /// longer holds the key.
    fn extend<'a>(
        &'a self,
        key: &'a StoreKey,
        token: Token,
        lease_until: Timestamp,
        now: Timestamp,
    ) -> StoreFuture<'a, bool>;

    /// Replaces the claim holding `token` by `record`, kept until `record.expires_at`.
    /// `false`, and nothing written, when `token` no longer holds the key.
    ///
    /// A store refuses ([`StoreError::Refused`], the claim left as it was) a response whose
    /// status is no HTTP status (outside 100 to 999): [`Response`] takes any `u16`, and a
    /// record of one could not be read back.
    fn complete<'a>(
        &'a self,
        key: &'a StoreKey,
        token: Token,
        record: Completed,
        now: Timestamp,
    ) -> StoreFuture<'a, bool>;

    /// Deletes the claim holding `token`, so that a retry runs the operation again. `false`
    /// when `token` no longer holds the key.
    fn release<'a>(&'a self, key: &'a StoreKey, token: Token) -> StoreFuture<'a, bool>;

    /// Whether requests run unprotected when this store cannot be reached, whatever their
    /// endpoint says. `false` (fail closed) unless the store was configured otherwise. Only
    /// [`StoreError::Unavailable`] and [`StoreError::Timeout`] fail open: a store that answered
    /// ([`StoreError::Refused`], [`StoreError::Corrupt`], [`StoreError::Contended`]) may hold
    /// the key taken.
    fn fails_open(&self) -> bool {
        false
    }

    /// The largest response this store keeps in a record, in bytes as
    /// [`Response::held_bytes`] counts them (headers and body, with their framing), if it has
    /// a limit. A completion over it fails with [`StoreError::TooLarge`], and the engine then
    /// records the operation without its response, so that it is still never run again.
    fn max_record_bytes(&self) -> Option<usize> {
        None
    }

    /// Whether this store's records live in this process only, so that no other process
    /// reads the times written in them. The engine then judges leases and expiry by a
    /// [`MonotonicClock`](crate::clock::MonotonicClock), which a step of the wall clock does
    /// not move. `false`, the default, for a store that processes share: the engine reads the
    /// wall clock, the time they all understand.
    fn in_process(&self) -> bool {
        false
    }

    /// The records this store evicted to make room before their time to live (their keys'
    /// retries would run again), since the last call: each eviction is answered by one call
    /// only, so that callers can add the answers into one count. The metrics of `idem-actix`
    /// do. 0, the default, for a store that does not evict live records or cannot tell.
    fn take_evictions(&self) -> u64 {
        0
    }
}

impl<S: Store + ?Sized> Store for Arc<S> {
    fn claim<'a>(
        &'a self,
        key: &'a StoreKey,
        claim: InFlight,
        now: Timestamp,
    ) -> StoreFuture<'a, Claim> {
        (**self).claim(key, claim, now)
    }

    fn reclaim<'a>(
        &'a self,
        key: &'a StoreKey,
        claim: InFlight,
        now: Timestamp,
    ) -> StoreFuture<'a, Claim> {
        (**self).reclaim(key, claim, now)
    }

    fn claim_now(
        &self,
        key: &StoreKey,
        claim: InFlight,
        now: Timestamp,
    ) -> Option<Result<Claim, StoreError>> {
        (**self).claim_now(key, claim, now)
    }

    fn get<'a>(&'a self, key: &'a StoreKey, now: Timestamp) -> StoreFuture<'a, Option<Record>> {
        (**self).get(key, now)
    }

    fn kept_for<'a>(
        &'a self,
        key: &'a StoreKey,
        record: &'a Completed,
    ) -> StoreFuture<'a, Option<Duration>> {
        (**self).kept_for(key, record)
    }

    fn extend<'a>(
        &'a self,
        key: &'a StoreKey,
        token: Token,
        lease_until: Timestamp,
        now: Timestamp,
    ) -> StoreFuture<'a, bool> {
        (**self).extend(key, token, lease_until, now)
    }

    fn complete<'a>(
        &'a self,
        key: &'a StoreKey,
        token: Token,
        record: Completed,
        now: Timestamp,
    ) -> StoreFuture<'a, bool> {
        (**self).complete(key, token, record, now)
    }

    fn release<'a>(&'a self, key: &'a StoreKey, token: Token) -> StoreFuture<'a, bool> {
        (**self).release(key, token)
    }

    fn fails_open(&self) -> bool {
        (**self).fails_open()
    }

    fn max_record_bytes(&self) -> Option<usize> {
        (**self).max_record_bytes()
    }

    fn in_process(&self) -> bool {
        (**self).in_process()
    }

    fn take_evictions(&self) -> u64 {
        (**self).take_evictions()
    }
}

/// Why a store operation failed. The engine answers 503 `idempotency_store_unavailable`
/// (fail closed), or, for an endpoint or store that fails open, runs the request unprotected
/// when the store was not reached or did not answer ([`Unavailable`](Self::Unavailable),
/// [`Timeout`](Self::Timeout)) and the store had not said the key was held. A store returns
/// those two only then: a refusal it answered is [`Refused`](Self::Refused), and an answer
/// it cannot use is [`Corrupt`](Self::Corrupt) or [`Contended`](Self::Contended), which
/// fail closed whatever the setting.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The backend cannot be reached, or cannot answer for its data for now (it is starting,
    /// loading its data, or failing over to another node; or it is a node that takes no
    /// writes, as a replica or a primary a failover demoted answers: Redis `READONLY`,
    /// Postgres SQLSTATE 25006).
    #[error("store unavailable: {0}")]
    Unavailable(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The backend answered, and refused the command: out of memory or disk, without the
    /// rights it needs, with a table or script that is not there, or with any other error of
    /// its own; or every connection of a pool to it is in use. It was reached, and may hold
    /// the key, so this fails closed whatever the setting: it is a fault to fix, not an
    /// outage to ride out.
    #[error("store refused the command: {0}")]
    Refused(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The backend did not answer in time.
    #[error("store timed out")]
    Timeout,
    /// A stored record could not be read.
    #[error("{0}")]
    Corrupt(String),
    /// The key's record changed under every attempt of a claim: other requests with the same
    /// key were being claimed at the same moment. Retry later.
    #[error("the key's record changed under every claim attempt; retry later")]
    Contended,
    /// The store's settings, refused when it is built: a URL that is not one of its kind, a
    /// name or limit it cannot take. A fault of the settings, never of the backend, and never
    /// answered to a request: a store that was built has none.
    #[error("invalid store settings: {0}")]
    Config(String),
    /// A record is larger than the store accepts.
    #[error("record of {size} bytes is larger than the store's limit of {max} bytes")]
    TooLarge {
        /// The record's size.
        size: usize,
        /// The limit.
        max: usize,
    },
}

/// A status outside 100 to 999, which a store refuses to record.
#[derive(Debug, thiserror::Error)]
#[error("status {0} is no HTTP status (100 to 999), and is not recorded")]
pub struct NoHttpStatus(pub u16);

/// [`StoreError::Refused`] (with [`NoHttpStatus`]) for a response whose status is no HTTP
/// status, as [`Store::complete`] refuses it: for a store of your own, before it writes a
/// record (the conformance suite, `idem_core::testing::conformance` with the feature `testing`,
/// checks that it does).
pub fn check_status(response: &Response) -> Result<(), StoreError> {
    match response.status() {
        status if is_http_status(status) => Ok(()),
        status => Err(StoreError::Refused(Box::new(NoHttpStatus(status)))),
    }
}

/// Whether `status` is an HTTP status (100 to 999), which a record holds: stores write no
/// other, and read a record with another as corrupt.
pub(crate) fn is_http_status(status: u16) -> bool {
    (100..=999).contains(&status)
}

/// The embedded store as the engine and a cache in front of it see a store that processes
/// share: the five operations forwarded, and the defaults for the rest (nothing answered in
/// the call, leases and expiry judged by the wall clock, no evictions reported).
#[cfg(test)]
#[derive(Clone, Default)]
pub(crate) struct SharedMoka(pub(crate) MokaStore);

#[cfg(test)]
impl Store for SharedMoka {
    fn claim<'a>(
        &'a self,
        key: &'a StoreKey,
        claim: InFlight,
        now: Timestamp,
    ) -> StoreFuture<'a, Claim> {
        self.0.claim(key, claim, now)
    }

    fn get<'a>(&'a self, key: &'a StoreKey, now: Timestamp) -> StoreFuture<'a, Option<Record>> {
        self.0.get(key, now)
    }

    fn extend<'a>(
        &'a self,
        key: &'a StoreKey,
        token: Token,
        lease_until: Timestamp,
        now: Timestamp,
    ) -> StoreFuture<'a, bool> {
        self.0.extend(key, token, lease_until, now)
    }

    fn complete<'a>(
        &'a self,
        key: &'a StoreKey,
        token: Token,
        record: Completed,
        now: Timestamp,
    ) -> StoreFuture<'a, bool> {
        self.0.complete(key, token, record, now)
    }

    fn release<'a>(&'a self, key: &'a StoreKey, token: Token) -> StoreFuture<'a, bool> {
        self.0.release(key, token)
    }
}

#[cfg(test)]
mod tests {
    use super::redacted_url;

    /// No password shows, whatever it holds, nor one in the query, even where a query's user
    /// name holds an `@`, which the first version took for the end of the credentials and
    /// showed the rest of the query.
    #[test]
    fn no_password_shows_in_a_redacted_url() {
        for url in [
            "redis://default:Ab/hunter2@127.0.0.1:6379/0",
            "redis://default:hunter2#x@127.0.0.1:6379/0",
            "redis://default:hunter2?x@127.0.0.1:6379/0",
            "postgres://db.example.com/calls?user=app@corp&password=hunter2",
            "postgres://db:5432/calls?user=me@example.com&password=hunter2&sslmode=require",
            "redis://cache:6379/0?username=ops@corp&password=hunter2",
            "postgres://app@db/calls?password=hunter2",
            "user:hunter2@db:5432",
        ] {
            let shown = redacted_url(url);
            assert!(!shown.contains("hunter2"), "{url} shown as {shown}");
        }
        assert_eq!(
            redacted_url("rediss://u:p@[::1]:6380/2?protocol=resp3"),
            "rediss://[::1]:6380/2"
        );
        assert_eq!(
            redacted_url("redis+unix:///run/redis.sock"),
            "redis+unix:///run/redis.sock"
        );
    }
}
