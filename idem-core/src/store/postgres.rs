//! The Postgres store: durable records, and records that commit in the same transaction as
//! the operation's own writes. Its design and guarantees are in [`PostgresStore`]'s docs.

use std::ops::{Deref, DerefMut};
use std::str::FromStr;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sqlx::pool::PoolConnection;
use sqlx::postgres::{PgArguments, PgConnectOptions, PgPool, PgPoolOptions, PgRow};
use sqlx::query::Query;
use sqlx::{PgConnection, Postgres, Row};

use super::{redacted_url, Claim, Store, StoreError, StoreFuture, LAPSED_CLAIM_GRACE};
use crate::clock::Timestamp;
use crate::digest::{Fingerprint, StoreKey};
use crate::engine::{released_until_known, Counted, MAX_UNCONFIRMED_RELEASES};
use crate::record::{Completed, InFlight, Record, Response, Token};

/// The table's SQL, for the default schema and table name: shown in [`PostgresStore`]'s docs
/// and run by [`PostgresStore::migrate`], so the two cannot differ.
macro_rules! schema {
    () => {
        "CREATE TABLE IF NOT EXISTS public.idem_records (
    key          bytea   PRIMARY KEY,  -- the store key: SHA-256 of scope, route and key
    kind         text    NOT NULL CHECK (kind IN ('F', 'C')),  -- F in flight, C completed
    token        bytea   NOT NULL,     -- fencing token of the claim that wrote the row
    fingerprint  bytea   NOT NULL,     -- SHA-256 of the request
    lapses_at    bigint  NOT NULL,     -- ms since the Unix epoch: end of lease (F), expiry (C)
    purge_at     bigint  NOT NULL,     -- when the row may be deleted
    status       integer,              -- completed: the response's status
    completed_at bigint,               -- completed: when, in ms since the Unix epoch
    headers      bytea,                -- completed: the headers, packed
    body         bytea,                -- completed: the body; NULL when too large to keep
    omitted_size bigint                -- completed, too large to keep: the response's size
);
CREATE INDEX IF NOT EXISTS idem_records_purge_at ON public.idem_records (purge_at);"
    };
}

/// The indexes (`i`) of a table with the column each leads with (`a`): where the purge index
/// is looked for, both by the layout's check and before one is made under another name.
macro_rules! index_leads {
    () => {
        "pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0]"
    };
}

/// The table name in [`schema!`], replaced by the configured one.
const DEFAULT_TABLE: &str = "idem_records";

/// The schema in [`schema!`], replaced by the configured one.
const DEFAULT_SCHEMA: &str = "public";

/// How many times a claim runs again when it raced a claim it could not see, and a renewal,
/// completion or release when it met the key's row changed after its snapshot (see
/// [`PostgresStore`]'s docs). Each run needs yet another concurrent change of the same key to
/// fail.
const ATTEMPTS: usize = 8;

/// The setting a claim's transaction marks itself with, `SET LOCAL` to its claim's token as it
/// begins: it ends with the transaction, so a completion that finds it gone (or another) runs
/// outside the transaction it was meant for.
const CLAIM_SETTING: &str = "idem.claim";

/// The largest [`PostgresStoreBuilder::max_record_bytes`]: Postgres takes no message, and no
/// value, over 1 GiB, and the completion's message carries the record and a few fields more.
const MAX_RECORD_BYTES: usize = (1 << 30) - (1 << 20);

/// The most batches one automatic purge deletes before it waits for its next turn: a claim's
/// after [`PURGE_AGAIN_AFTER`] when it stopped here, with rows likely left, else the next
/// interval's.
const PURGE_BATCHES_PER_RUN: usize = 64;

/// How soon a claim starts the next purge after one that stopped at its bound (or the
/// interval, if shorter): 64 batches a second at most, 64,000 rows by default.
const PURGE_AGAIN_AFTER: Duration = Duration::from_secs(1);

/// The table's columns as [`schema!`] writes them: name, type (as Postgres's `format_type`
/// names it), and whether the store leaves it NULL in some rows.
const LAYOUT: [(&str, &str, bool); 11] = [
    ("key", "bytea", false),
    ("kind", "text", false),
    ("token", "bytea", false),
    ("fingerprint", "bytea", false),
    ("lapses_at", "bigint", false),
    ("purge_at", "bigint", false),
    ("status", "integer", true),
    ("completed_at", "bigint", true),
    ("headers", "bytea", true),
    ("body", "bytea", true),
    ("omitted_size", "bigint", true),
];

/// The columns a record is read from, in this order.
const COLUMNS: &str =
    "kind, token, fingerprint, lapses_at, status, completed_at, headers, body, omitted_size";

/// The statements of one table, written once when the store is built: sqlx prepares each
/// once per connection, keyed by its text.
#[derive(Debug)]
struct Statements {
    table: String,
    schema: String,
    /// The table as every statement names it: with its schema, so that no `search_path` (a
    /// role's, or one a handler sets in its transaction or on its connection) can point the
    /// store's statements at another table of the same name.
    qualified: String,
    create: String,
    /// Run after `create`: the purge index under another name when its own was taken.
    index_fallback: String,
    claim: String,
    get: String,
    extend: String,
    complete: String,
    complete_in_transaction: String,
    /// Run in a claim's transaction after its completion wrote nothing: whether the
    /// transaction is still the claim's, and whether a live record holds the key.
    not_completed: String,
    release: String,
    purge: String,
}

impl Statements {
    fn new(schema: &str, table: &str) -> Self {
        // Quoted, as keywords (`order`, `user`) are allowed names too; quoting a lowercase
        // name does not change it.
        let qualified = format!("\"{schema}\".\"{table}\"");
        let index = format!("\"{table}_purge_at\"");
        Self {
            table: table.to_owned(),
            schema: schema.to_owned(),
            // The index first: its name holds no schema, so the table's replacement cannot
            // make one of it.
            create: schema!()
                .replace(&format!("{DEFAULT_TABLE}_purge_at"), &index)
                .replace(&format!("{DEFAULT_SCHEMA}.{DEFAULT_TABLE}"), &qualified),
            // Tables and indexes share names within a schema: the index's may be another
            // store's table (one named `<table>_purge_at`), and `create` then skips the index.
            // One of a name Postgres chooses is made instead.
            index_fallback: format!(
                concat!(
                    "DO $$ BEGIN
    IF NOT EXISTS (SELECT FROM ",
                    index_leads!(),
                    "
                   WHERE i.indrelid = '{qualified}'::regclass AND a.attname = 'purge_at') THEN
        CREATE INDEX ON {qualified} (purge_at);
    END IF;
END $$;"
                ),
                qualified = qualified
            ),
            // $1 key, $2 token, $3 fingerprint, $4 lease end, $5 purge at, $6 now, $7 the
            // lock timeout (see `claim_lock_timeout`), set for this statement only (its
            // implicit transaction), before it can wait on the key's row, and only where the
            // session has none of its own.
            claim: format!(
                "WITH seen AS (
                    SELECT {COLUMNS} FROM {qualified} WHERE key = $1
                ),
                claimed AS (
                    INSERT INTO {qualified} AS r (key, kind, token, fingerprint, lapses_at, purge_at)
                    SELECT $1, 'F', $2, $3, $4, $5
                    WHERE CASE current_setting('lock_timeout')
                            WHEN '0' THEN set_config('lock_timeout', $7, true)
                            ELSE 'kept'
                        END IS NOT NULL
                        AND NOT EXISTS (SELECT 1 FROM seen WHERE lapses_at > $6)
                    ON CONFLICT (key) DO UPDATE SET
                        kind = 'F', token = excluded.token, fingerprint = excluded.fingerprint,
                        lapses_at = excluded.lapses_at, purge_at = excluded.purge_at,
                        status = NULL, completed_at = NULL, headers = NULL, body = NULL,
                        omitted_size = NULL
                    WHERE r.lapses_at <= $6
                    RETURNING 1
                )
                SELECT EXISTS (SELECT 1 FROM claimed) AS claimed, seen.*
                FROM (VALUES (1)) AS one (x)
                LEFT JOIN seen ON NOT EXISTS (SELECT 1 FROM claimed)"
            ),
            // $1 key, $2 now.
            get: format!("SELECT {COLUMNS} FROM {qualified} WHERE key = $1 AND lapses_at > $2"),
            // $1 key, $2 token, $3 lease end, $4 purge at.
            extend: format!(
                "UPDATE {qualified} SET lapses_at = $3, purge_at = $4
                 WHERE key = $1 AND token = $2 AND kind = 'F'"
            ),
            // $1 key, $2 token, $3 fingerprint, $4 expiry, $5 status, $6 completed at,
            // $7 headers, $8 body, $9 omitted size. The record this token's completion wrote
            // counts as done again: a completion whose answer was lost with its connection
            // runs again (see `Reconnects`), and finds it. Any other record is final.
            complete: format!(
                "UPDATE {qualified} SET kind = 'C', fingerprint = $3, lapses_at = $4, purge_at = $4,
                     status = $5, completed_at = $6, headers = $7, body = $8, omitted_size = $9
                 WHERE key = $1 AND token = $2 AND (kind = 'F' OR (kind = 'C'
                     AND fingerprint = $3 AND lapses_at = $4 AND status = $5 AND completed_at = $6
                     AND headers IS NOT DISTINCT FROM $7 AND body IS NOT DISTINCT FROM $8
                     AND omitted_size IS NOT DISTINCT FROM $9))"
            ),
            // As `complete`, $10 the claim's mark: only in the transaction that set it.
            complete_in_transaction: format!(
                "UPDATE {qualified} SET kind = 'C', fingerprint = $3, lapses_at = $4, purge_at = $4,
                     status = $5, completed_at = $6, headers = $7, body = $8, omitted_size = $9
                 WHERE key = $1 AND token = $2 AND kind = 'F'
                     AND current_setting('{CLAIM_SETTING}', true) = $10"
            ),
            // $1 key, $2 now. The claim's own row is not live here: the completion above
            // would have written it.
            not_completed: format!(
                "SELECT current_setting('{CLAIM_SETTING}', true) AS mark,
                     EXISTS (SELECT 1 FROM {qualified} WHERE key = $1 AND lapses_at > $2) AS held"
            ),
            // $1 key, $2 token.
            release: format!("DELETE FROM {qualified} WHERE key = $1 AND token = $2 AND kind = 'F'"),
            // $1 now, $2 batch size.
            purge: format!(
                "DELETE FROM {qualified} WHERE purge_at <= $1 AND key IN (
                     SELECT key FROM {qualified} WHERE purge_at <= $1
                     ORDER BY purge_at LIMIT $2 FOR UPDATE SKIP LOCKED
                 )"
            ),
            qualified,
        }
    }
}

/// A store on PostgreSQL: durable records, shared by every server process that points at
/// the same table, and completions that commit with the operation's own writes (see
/// [`PostgresStore::transaction`] and the [store's docs](PostgresStore)).
///
/// Each statement has a timeout, past which the request answers 503
/// `idempotency_store_unavailable` (or runs unprotected, with
/// [`PostgresStoreBuilder::fail_open`]); so does a connection that cannot be had, and a
/// statement Postgres cancels (SQLSTATE 57014: a `statement_timeout` of the role or the
/// database, or `pg_cancel_backend`; 55P03: a `lock_timeout`), which it rolls back; but a claim
/// Postgres cancels is refused (it fails closed whatever the setting), as it may have been
/// waiting on another claim of its key. So that such a wait is cancelled before the command
/// timeout ends it, a claim sets a `lock_timeout` of half the command timeout for its own
/// statement, unless the session has one of its own (keep that below the command timeout). A statement that finds its connection closed
/// (Postgres restarted, or ended the session for idling) runs again on another connection.
///
/// Clones share the pool.
///
/// # The table
///
/// One row per record, under the store key. [`PostgresStore::migrate`] creates the table (and
/// its index) if it is missing; this is its SQL for the default names, `public.idem_records`
/// (other names replace `public` and `idem_records` throughout). Every statement names the
/// table with its schema ([`PostgresStoreBuilder::schema`]), so no `search_path`, a role's or
/// one a handler sets in its transaction, can point them at another table of the same name:
///
/// ```sql
#[doc = schema!()]
/// ```
///
/// Times are milliseconds since the Unix epoch, as the engine's clock gives them, so that the
/// rows judge leases by the same clock as the engine does (and as several processes sharing
/// the table do). The database's own clock plays no part: a process whose clock runs ahead
/// of the others' sees their claims lapse and their records expire early by the difference,
/// and one whose clock runs behind replays records after their TTL by as much, so keep the
/// clocks of the processes sharing a table in sync. A lapsed claim is kept for [`LAPSED_CLAIM_GRACE`] beyond its lease, so that a
/// slow holder nobody displaced can still record its response; every read treats it as
/// absent all the same.
///
/// # One statement per operation
///
/// Each [`Store`] operation is one statement on a pooled connection, one round trip once the
/// connection has prepared it:
/// - claim: a `SELECT` of the key's row and, only when that finds no live record, an
///   `INSERT ... ON CONFLICT (key) DO UPDATE ... WHERE <the row has lapsed>`, which claims a
///   free key or takes over a lapsed one in the same statement. A replay or a duplicate
///   reads only: it neither writes nor locks the row, so its commit does not wait for the
///   disk. An exception to one round trip: a claim racing another claim of the same key,
///   whose row was committed after this statement began, cannot see that row (the
///   statement reads the snapshot it started with; under a default isolation of REPEATABLE
///   READ or SERIALIZABLE, Postgres fails it instead), so it runs again, and then sees it;
/// - get: a `SELECT` of the row if it has not lapsed;
/// - extend, complete, release: an `UPDATE` or `DELETE` of the row only while it is a claim
///   held by the caller's token. The other exception: under a default isolation of
///   REPEATABLE READ or SERIALIZABLE, one that waited on the row while another statement
///   changed it (a takeover, the claim's own renewal) fails where READ COMMITTED reads the
///   row again, so it runs again, on a snapshot that holds the change, and answers as under
///   READ COMMITTED.
///
/// The pool does not test a connection before handing it out, which would cost a round trip
/// per operation; sqlx tests it when it comes back instead, off the request's path, and closes
/// it if it broke, so the pool recovers by itself when Postgres comes back.
///
/// Counted on the wire (the workspace's `round_trips` tests): a new key is two round trips
/// (the claim and the completion) and a replay one. Each operation's connection then costs
/// one more as it comes back to the pool (sqlx's test, a bare `Sync`), which a request waits
/// for only when no other connection of the pool is idle. A statement's first use on a
/// connection costs one more again (sqlx prepares it), once per connection. A transactional
/// run adds `BEGIN` and `COMMIT` to these: four round trips of the store's, besides the
/// handler's own statements.
///
/// # Purging
///
/// Lapsed rows are dead to every read at once and deleted later, in batches of at most
/// [`PostgresStoreBuilder::purge_batch`] rows per statement (each its own short transaction,
/// skipping rows that another statement holds). The store purges by itself: at most once per
/// [`PostgresStoreBuilder::purge_interval`], a claim starts a background purge judged by that
/// claim's `now`, so that the purge follows the same clock as the records. A purge deletes up
/// to 64 batches; after one that stops there, the next claim a second later starts another,
/// without waiting for the interval, so the purge keeps up with rows that lapse faster than
/// 64 batches an interval (up to 64 batches a second). Turn it off with
/// `purge_interval(None)` and call [`PostgresStore::purge_expired`] from a job of your own
/// instead.
///
/// # Transactions: the record commits with the operation's writes
///
/// A cache-backed record can never close the window between an operation's side effect and
/// its record: a process that dies in between lets the retry run again. Here the operation's
/// own writes and its completed record go into one Postgres transaction, so that both commit
/// or neither does:
///
/// 1. The claim is written and committed first, by its own statement ([`Store::claim`], or
///    [`PostgresStore::claim_transaction`]). Every other request sees it at once: a duplicate
///    gets its in-flight answer (409, or waits) without waiting on any lock.
/// 2. [`PostgresStore::transaction`] opens a transaction (`BEGIN`) on a connection of its
///    own, for the claim's key and fencing token. The caller does its writes in it through
///    the [`ClaimTransaction`], which dereferences to a [`PgConnection`]. The transaction
///    does not touch the record's row meanwhile, so it holds no lock a duplicate, the
///    lease's renewals ([`Store::extend`]) or a purge could wait on.
/// 3. [`ClaimTransaction::commit`] turns the claim into the completed record, by an `UPDATE`
///    fenced by the token, as the transaction's last statement, and commits. If the token no
///    longer holds the key (the lease lapsed and another request took it over), it rolls
///    back instead: this run leaves nothing, and the request holding the key now runs it.
///    If nobody holds it (the lease lapsed and the purge deleted the claim), it rolls back
///    and fails with [`ClaimGone`]: this run leaves nothing, and a retry runs it.
///    The `UPDATE` locks the row until the commit, so a takeover cannot slip in between. A
///    duplicate that arrives in that moment sees the claim, still live in its snapshot, and
///    is answered 409 at once, as any duplicate of a running request; its retry finds the
///    record.
/// 4. [`ClaimTransaction::rollback`] (for a response that is not recorded: in `idem-actix`, a
///    5xx, whether answered or returned as an error, or a non-2xx under `cache = "2xx"`; or a
///    panic), dropping the [`ClaimTransaction`], or a commit that fails, rolls back and
///    releases the claim, so that a retry runs the operation again at once. A process
///    killed mid-run leaves nothing either: Postgres aborts the transaction of a connection
///    that closed, and the claim, no longer renewed, lapses with its lease; the retry after
///    it runs once.
///
/// In an actix-web handler, take `idem_actix::Transaction`: the layer claims the key, opens the
/// transaction when the handler asks for it, and commits or rolls it back with the handler's
/// answer.
///
/// Guarantees: the operation's writes are committed exactly when its completed record is; a
/// committed run held the key's claim when it committed, so no two runs of one key both
/// commit while its record lives. A commit whose answer was lost (the connection broke
/// during `COMMIT`) may have committed or not, but never one half: a retry then finds the
/// record, or the claim until it is released or lapses.
///
/// Limits: a run holds one pooled connection for its whole length, besides the store's own
/// statements (claims, renewals, completions), so size the pool above the number of
/// operations that run at once. Do not touch the record table from the transaction, and do
/// not end the transaction yourself (`COMMIT`, `ROLLBACK`): [`ClaimTransaction::commit`]
/// does. The transaction is marked as the claim's as it begins (`SET LOCAL idem.claim`, in
/// the `BEGIN`'s round trip), and a commit that finds the mark gone (the caller ended it,
/// perhaps beginning another) writes no record, rolls back what is open, releases the claim
/// and fails with [`TransactionEnded`]; what the caller committed itself stands. A statement of yours that fails aborts the transaction, as Postgres does; the commit
/// then fails, rolls back and releases the claim. The transaction runs at the database's
/// default isolation level; set another with `SET TRANSACTION ISOLATION LEVEL` as its first
/// statement. At REPEATABLE READ or SERIALIZABLE, commit within a third of the lease: the
/// claim's row is renewed then, on another connection, and Postgres refuses (40001) to commit
/// the record over a row changed since the transaction's snapshot. At SERIALIZABLE, the record's
/// update takes part in the transaction's conflict checks, which Postgres tracks on the
/// table's index by page: a run that reads what another run writes, their keys on one page,
/// can be refused (40001) where the two would commit without the record. Change a setting for the
/// run with `SET LOCAL`, which ends with the transaction: a plain `SET` (or `SET ROLE`)
/// outlives it on the connection, which goes back to the pool and serves the store's own
/// statements next.
#[derive(Clone)]
pub struct PostgresStore {
    pool: PgPool,
    sql: Arc<Statements>,
    timeout: Duration,
    /// The `lock_timeout` of its claims: see [`claim_lock_timeout`].
    claim_lock_timeout: String,
    max_record_bytes: usize,
    fail_open: bool,
    /// The most rows one purge statement deletes, whether the store purges by itself or
    /// [`PostgresStore::purge_expired`] is called. A `u32`, as the builder takes it: an `i64`
    /// made the store 8 bytes larger, and a `ClaimTransaction`, which holds it, with it.
    purge_batch: u32,
    purge: Option<Arc<Purge>>,
    /// How many of the pool's connections the store's statements and transactions hold, and
    /// when they last held all of them.
    in_use: Arc<Occupancy>,
    /// How many releases of claims that failed unanswered are under way.
    unconfirmed: Arc<AtomicUsize>,
}

/// One of the pool's connections held by the store for a statement, counted in the store's
/// `in_use` until it goes back (a [`ClaimTransaction`] counts its own): a request that got no
/// connection in time is then told a pool whose connections are in use from one that cannot
/// connect, which the pool's own count does not (it counts its attempts to connect among its
/// connections).
struct Held<'a> {
    conn: PoolConnection<Postgres>,
    in_use: &'a Occupancy,
}

impl<'a> Held<'a> {
    /// `conn`, counted in `in_use` until this drops.
    fn new(conn: PoolConnection<Postgres>, in_use: &'a Occupancy) -> Self {
        in_use.take();
        Self { conn, in_use }
    }
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        self.in_use.give_back();
    }
}

/// A [`ClaimTransaction`]'s connection, counted in the store's `in_use` until this drops.
struct InUse(Arc<Occupancy>);

impl Drop for InUse {
    fn drop(&mut self) {
        self.0.give_back();
    }
}

/// How many of the pool's connections the store holds, and when it last held all of them.
///
/// A connection the store lets go of is not free at once: sqlx sends it back to the pool
/// only once it has pinged it, one more round trip, which waits for any statement still
/// running on it (one the command timeout gave up on). A request that got no connection
/// while the store held them all, or while the last it let go of were on their way back, was
/// kept from one by the store's own use of the pool, not by a Postgres that cannot be reached.
struct Occupancy {
    in_use: AtomicU32,
    /// The pool's size.
    max: u32,
    /// How long before a request asked for a connection the store's letting go of one still
    /// counts: the pool's acquire timeout.
    back_within: Duration,
    /// When the store last let go of a connection while it held all of them: milliseconds
    /// from `since`, plus one (0: never).
    full_until: AtomicU64,
    since: Instant,
}

impl Occupancy {
    fn new(max: u32, back_within: Duration) -> Self {
        Self {
            in_use: AtomicU32::new(0),
            max,
            back_within,
            full_until: AtomicU64::new(0),
            since: Instant::now(),
        }
    }

    fn take(&self) {
        self.in_use.fetch_add(1, Ordering::Relaxed);
    }

    fn give_back(&self) {
        if self.in_use.fetch_sub(1, Ordering::Relaxed) >= self.max {
            self.full_until.store(self.now(), Ordering::Relaxed);
        }
    }

    /// Whether the store holds every connection of the pool, or held them all at any time
    /// since `asked` (when a request asked the pool for one), or within `back_within` before
    /// it: a connection let go of just before the request asked may still be on its way back.
    fn full_since(&self, asked: Instant) -> bool {
        if self.in_use.load(Ordering::Relaxed) >= self.max {
            return true;
        }
        let from = asked.saturating_duration_since(self.since);
        let from = from.saturating_sub(self.back_within).as_millis();
        let until = self.full_until.load(Ordering::Relaxed);
        until != 0 && u128::from(until) > from
    }

    /// Milliseconds from `since`, plus one.
    fn now(&self) -> u64 {
        u64::try_from(self.since.elapsed().as_millis()).map_or(u64::MAX, |ms| ms.saturating_add(1))
    }
}

impl Deref for Held<'_> {
    type Target = PgConnection;

    fn deref(&self) -> &PgConnection {
        &self.conn
    }
}

impl DerefMut for Held<'_> {
    fn deref_mut(&mut self) -> &mut PgConnection {
        &mut self.conn
    }
}

/// The automatic purge's schedule.
#[derive(Debug)]
struct Purge {
    every: Duration,
    next: Mutex<Option<Instant>>,
}

impl std::fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresStore")
            .field("table", &self.sql.qualified)
            .field("timeout", &self.timeout)
            .field("max_record_bytes", &self.max_record_bytes)
            .field("fail_open", &self.fail_open)
            .field("purge", &self.purge)
            .finish_non_exhaustive()
    }
}

/// Where a store's connections come from.
#[derive(Clone)]
enum Source {
    Url(String),
    Pool(PgPool),
}

/// Its URL without its credentials.
impl std::fmt::Debug for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::Url(url) => f.debug_tuple("Url").field(&redacted_url(url)).finish(),
            Source::Pool(pool) => f.debug_tuple("Pool").field(pool).finish(),
        }
    }
}

/// Builds a [`PostgresStore`].
#[derive(Clone, Debug)]
#[must_use]
pub struct PostgresStoreBuilder {
    source: Source,
    schema: String,
    table: String,
    timeout: Duration,
    connect_timeout: Duration,
    max_connections: u32,
    max_record_bytes: usize,
    fail_open: bool,
    purge_interval: Option<Duration>,
    purge_batch: u32,
}

/// The answer to [`PostgresStore::claim_transaction`].
#[derive(Debug)]
pub enum TransactionalClaim {
    /// The key was free or its record had lapsed: the claim is committed, and this is its
    /// transaction.
    Claimed(ClaimTransaction),
    /// A live record exists; nothing was written.
    Existing(Record),
}

impl PostgresStore {
    /// A store on the Postgres at `url` (`postgres://user:password@host:port/database`) with
    /// default settings.
    ///
    /// # Errors
    /// As [`PostgresStoreBuilder::build`].
    pub fn new(url: impl Into<String>) -> Result<Self, StoreError> {
        Self::builder(url).build()
    }

    /// A builder for a store on the Postgres at `url`.
    pub fn builder(url: impl Into<String>) -> PostgresStoreBuilder {
        PostgresStoreBuilder::new(Source::Url(url.into()))
    }

    /// A builder for a store on connections of `pool`, such as the pool the application
    /// writes its own tables with. The pool's own settings stand: the builder's
    /// [`max_connections`](PostgresStoreBuilder::max_connections) and
    /// [`connect_timeout`](PostgresStoreBuilder::connect_timeout) are not used, so a claim
    /// waits for a connection as long as the pool's acquire timeout (30 s with sqlx's
    /// defaults) before the store counts as unavailable: give the pool one of about a second
    /// (`PgPoolOptions::acquire_timeout`) for keyed requests to be answered 503 as promptly as
    /// the store's own pool answers them. A pool that tests each connection before handing it
    /// out costs a round trip per operation.
    pub fn with_pool(pool: PgPool) -> PostgresStoreBuilder {
        PostgresStoreBuilder::new(Source::Pool(pool))
    }

    /// The pool the store's statements and transactions run on.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Whether `error`, a statement's, says its connection was closed: Postgres ended the
    /// session (SQLSTATE 57P01, an administrator or a shutdown; 57P02, a crash; 57P05, idle),
    /// or the connection broke under it. The pool lends connections without testing them (one
    /// round trip per operation), so after a restart each connection it kept fails one
    /// statement this way: the store runs its own again on another connection, and an
    /// application's own queries on [`pool`](Self::pool) can do the same (a read, or a
    /// `BEGIN`; a statement that may have committed before its connection broke is another
    /// matter).
    pub fn connection_closed(error: &sqlx::Error) -> bool {
        match error {
            sqlx::Error::Io(_) => true,
            sqlx::Error::Database(db) => {
                matches!(db.code().as_deref(), Some("57P01" | "57P02" | "57P05"))
            }
            _ => false,
        }
    }

    /// The name of the table the records are in.
    pub fn table(&self) -> &str {
        &self.sql.table
    }

    /// The name of the schema the table is in.
    pub fn schema(&self) -> &str {
        &self.sql.schema
    }

    /// Creates the table and its index if the table does not exist (the SQL is in the
    /// [store's docs](PostgresStore); where the index's name is taken, by another store's table
    /// named `<table>_purge_at` for one, the index gets a name Postgres chooses). Safe to run
    /// at every start and from several processes at once. A table that exists is left as it
    /// is, so a user who may read and write it but not create tables (it was created by one
    /// who may) can run this too.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`] when Postgres cannot be reached, or takes no writes for now
    /// (a standby, or a primary a failover demoted) and the table is missing;
    /// [`StoreError::Refused`] when it refuses (the table is missing and the user may not
    /// create it, for one: then run the SQL as a user who may), when the table is not of
    /// the layout in the store's docs (the error names what differs), when its name is not a
    /// table's but an index's (another store's purge index, for one) or a view's, or when it
    /// is missing from its schema while the connection's `search_path` finds a table of its
    /// name in another (where a store that named no schema kept it: the error names that
    /// schema).
    pub async fn migrate(&self) -> Result<(), StoreError> {
        let asked = Instant::now();
        let mut conn = match self.pool.acquire().await {
            Ok(conn) => Held::new(conn, &self.in_use),
            Err(error) => return Err(self.unconnected(error, asked).await),
        };
        // `CREATE ... IF NOT EXISTS` needs the right to create even where the table exists.
        let exists = sqlx::query_scalar::<_, bool>("SELECT to_regclass($1) IS NOT NULL")
            .bind(&self.sql.qualified)
            .fetch_one(&mut *conn);
        if !self.timed(exists).await? {
            // A table of this name that the connection's `search_path` finds in another
            // schema: where a store that named no schema kept its records. A second, empty
            // one would leave them behind, and a retry of what they recorded would run again.
            let elsewhere = sqlx::query_scalar::<_, String>(
                "SELECT n.nspname::text FROM pg_class c
                 JOIN pg_namespace n ON n.oid = c.relnamespace
                 WHERE c.oid = to_regclass($1)",
            )
            .bind(format!("\"{}\"", self.sql.table))
            .fetch_optional(&mut *conn);
            // (Found in its own schema, it was made meanwhile by a process starting beside
            // this one.)
            let elsewhere = self.timed(elsewhere).await?;
            if let Some(schema) = elsewhere.filter(|schema| *schema != self.sql.schema) {
                return Err(StoreError::Refused(
                    format!(
                        "the table {} does not exist, but the connection's search_path finds \
                         one of its name in the schema {schema}: name that schema with \
                         PostgresStoreBuilder::schema(\"{schema}\") to keep its records, or \
                         drop or rename that table to start on a new one in {}",
                        self.sql.qualified, self.sql.schema
                    )
                    .into(),
                ));
            }
            // Concurrent `CREATE ... IF NOT EXISTS` can still collide: serialise them, per
            // schema, as one store's table may bear the name of another's purge index
            // (`<table>_purge_at`), made by that store's migration beside this one.
            let sql = format!(
                "SELECT pg_advisory_xact_lock(hashtext('idem-migrate:\"{}\"'));\n{}\n{}",
                self.sql.schema, self.sql.create, self.sql.index_fallback
            );
            self.timed(sqlx::raw_sql(&sql).execute(&mut *conn)).await?;
        }
        self.check_layout(&mut conn).await
    }

    /// Refuses a table whose layout the store's statements cannot use, naming what differs,
    /// so that the start fails rather than every keyed request; warns of a missing purge index.
    async fn check_layout(&self, conn: &mut PgConnection) -> Result<(), StoreError> {
        let table = &self.sql.qualified;
        // A relation of the table's name that is no table: another store's purge index (named
        // `<table>_purge_at`, as this table is), a view, a sequence.
        let relation = sqlx::query_as::<_, (String, Option<String>)>(
            "SELECT c.relkind::text,
                    (SELECT i.indrelid::regclass::text FROM pg_index i WHERE i.indexrelid = c.oid)
             FROM pg_class c
             WHERE c.oid = to_regclass($1)",
        )
        .bind(table)
        .fetch_optional(&mut *conn);
        if let Some((kind, indexed)) = self.timed(relation).await? {
            let what = match kind.as_str() {
                "r" | "p" => None,
                "i" | "I" => Some(match indexed {
                    Some(of) => format!("an index (of the table {of})"),
                    None => "an index".to_owned(),
                }),
                "v" => Some("a view".to_owned()),
                "m" => Some("a materialized view".to_owned()),
                "S" => Some("a sequence".to_owned()),
                "f" => Some("a foreign table".to_owned()),
                _ => Some("no table".to_owned()),
            };
            if let Some(what) = what {
                return Err(StoreError::Refused(
                    format!(
                        "{table} is {what}, not a table: name another table with \
                         PostgresStoreBuilder::table or ::schema"
                    )
                    .into(),
                ));
            }
        }
        // Name, type, NOT NULL, and whether a write that leaves it out fails.
        let columns = sqlx::query_as::<_, (String, String, bool, bool)>(
            "SELECT attname::text, format_type(atttypid, atttypmod), attnotnull,
                    attnotnull AND NOT atthasdef AND attidentity = '' AND attgenerated = ''
             FROM pg_attribute
             WHERE attrelid = to_regclass($1) AND attnum > 0 AND NOT attisdropped",
        )
        .bind(table)
        .fetch_all(&mut *conn);
        let columns = self.timed(columns).await?;
        // Whether `key` alone has a unique index that `ON CONFLICT (key)` can use, and whether
        // an index leads with `purge_at`.
        let indexes = sqlx::query_as::<_, (bool, bool)>(concat!(
            "SELECT
                 coalesce(bool_or(a.attname = 'key' AND i.indisunique AND i.indimmediate
                                  AND i.indnkeyatts = 1 AND i.indpred IS NULL), false),
                 coalesce(bool_or(a.attname = 'purge_at'), false)
             FROM ",
            index_leads!(),
            " WHERE i.indrelid = to_regclass($1)"
        ))
        .bind(table)
        .fetch_one(&mut *conn);
        let (key_unique, purge_indexed) = self.timed(indexes).await?;

        let mut wrong = Vec::new();
        for (name, ty, nullable) in LAYOUT {
            match columns.iter().find(|column| column.0 == name) {
                None => wrong.push(format!("it has no column {name} ({ty})")),
                Some((_, found, ..)) if found != ty => {
                    wrong.push(format!("{name} is {found}, not {ty}"));
                }
                Some((_, _, true, _)) if nullable => {
                    wrong.push(format!(
                        "{name} is NOT NULL, but is left NULL until completion"
                    ));
                }
                Some(_) => {}
            }
        }
        for (name, _, _, required) in &columns {
            if *required && !LAYOUT.iter().any(|column| column.0 == name) {
                wrong.push(format!(
                    "{name} is NOT NULL without a default, and the store does not write it"
                ));
            }
        }
        if !key_unique && columns.iter().any(|column| column.0 == "key") {
            wrong.push("key is not its primary key".into());
        }
        if !wrong.is_empty() {
            return Err(StoreError::Refused(
                format!(
                    "the table {table} is not the one this idem writes: {}; drop it, or name \
                     another table with PostgresStoreBuilder::table or ::schema",
                    wrong.join("; ")
                )
                .into(),
            ));
        }
        if !purge_indexed {
            tracing::warn!(%table, "the idempotency table has no index on purge_at, so each purge reads all of it; create the one in PostgresStore's docs");
        }
        Ok(())
    }

    /// Deletes the rows that lapsed by `now` (claims after their grace), in batches of at
    /// most [`PostgresStoreBuilder::purge_batch`] rows, each its own statement, until a batch
    /// finds fewer; returns how many it deleted. The store runs this by itself (see
    /// [`PostgresStoreBuilder::purge_interval`]); call it yourself when that is turned off.
    ///
    /// # Errors
    /// The store's error; the rows deleted before it stay deleted.
    pub async fn purge_expired(&self, now: Timestamp) -> Result<u64, StoreError> {
        (self.purge_batches(now, i64::from(self.purge_batch), usize::MAX)).await
    }

    async fn purge_batches(
        &self,
        now: Timestamp,
        batch: i64,
        max_batches: usize,
    ) -> Result<u64, StoreError> {
        let mut deleted = 0;
        for _ in 0..max_batches {
            let mut conn = self.acquire().await?;
            let query = sqlx::query(&self.sql.purge).bind(millis(now)).bind(batch);
            let done = self.timed(query.execute(&mut *conn)).await?.rows_affected();
            deleted += done;
            if done < u64::try_from(batch).unwrap_or(u64::MAX) {
                break;
            }
        }
        Ok(deleted)
    }

    /// Starts a background purge judged by `now`, if one is due.
    fn purge_if_due(&self, now: Timestamp) {
        let Some(purge) = &self.purge else {
            return;
        };
        let started = Instant::now();
        {
            let mut next = purge.next.lock().unwrap_or_else(|e| e.into_inner());
            if next.is_some_and(|next| started < next) {
                return;
            }
            *next = Some(started + purge.every.min(crate::clock::FARTHEST));
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let batch = i64::from(self.purge_batch);
        let (store, purge) = (self.clone(), Arc::clone(purge));
        runtime.spawn(async move {
            match store
                .purge_batches(now, batch, PURGE_BATCHES_PER_RUN)
                .await
            {
                Ok(deleted) => {
                    tracing::debug!(deleted, table = %store.sql.qualified, "purged lapsed idempotency records");
                    // Stopped at its bound, rows likely left: a claim takes it up after a
                    // short pause rather than the interval, so that rows lapsing faster than
                    // a run an interval deletes do not pile up, while the purge leaves the
                    // pool's connections to claims between its runs.
                    let bound = u64::try_from(batch).unwrap_or(u64::MAX)
                        .saturating_mul(PURGE_BATCHES_PER_RUN as u64);
                    if deleted >= bound {
                        let soon = Instant::now() + purge.every.min(PURGE_AGAIN_AFTER);
                        *purge.next.lock().unwrap_or_else(|e| e.into_inner()) = Some(soon);
                    }
                }
                Err(error) => {
                    tracing::warn!(%error, table = %store.sql.qualified, "purging lapsed idempotency records failed; the next claim after the purge interval tries again")
                }
            }
        });
    }

    /// Opens a transaction for the claim that `token` holds on `key`: the caller does its
    /// own writes in it, then [`ClaimTransaction::commit`]s them together with the completed
    /// record (see [`PostgresStore`]). One round trip (`BEGIN`) on a connection the
    /// transaction holds until it ends. It does not check the claim: the commit does.
    /// Dropped before it is answered, it still opens the transaction, and rolls it back.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`] when no connection can be had, [`StoreError::Refused`]
    /// when every connection of the pool is in use, [`StoreError::Timeout`] when `BEGIN` is
    /// not answered in time. The claim is left as it was.
    pub async fn transaction(
        &self,
        key: StoreKey,
        token: Token,
    ) -> Result<ClaimTransaction, StoreError> {
        // The pool's own wait for a connection ends first, as unavailable; past it, the
        // `BEGIN` timed out.
        let limit = (self.pool.options().get_acquire_timeout()).saturating_add(self.timeout);
        // Marked as the claim's in the same round trip: its completion writes only there.
        let begin = format!("BEGIN; SET LOCAL {CLAIM_SETTING} = '{}'", mark(token));
        let mut reconnects = self.reconnects();
        let tx = loop {
            // Begun in a task of its own, which an opening abandoned (its caller went away,
            // or the wait below ran out) leaves to finish; the transaction it then opened
            // rolls back as it drops. sqlx 0.8 counts a transaction as open only once its
            // `BEGIN` is answered: a `begin_with` dropped before that sends its connection
            // back to the pool inside the transaction, where the statements run next
            // (claims, completions) are never committed.
            let (pool, begin) = (self.pool.clone(), begin.clone());
            let asked = Instant::now();
            let opening = tokio::spawn(async move { pool.begin_with(begin).await });
            let begun = match tokio::time::timeout(limit, opening).await {
                Ok(Ok(begun)) => begun.map_err(|e| self.unacquired(e, asked)),
                Ok(Err(failed)) => Err(StoreError::Unavailable(Box::new(failed))),
                Err(_) => return Err(StoreError::Timeout),
            };
            if !reconnects.again(&begun) {
                break begun?;
            }
        };
        // Counted until the transaction drops (see `Drop for ClaimTransaction`).
        self.in_use.take();
        Ok(ClaimTransaction {
            tx: Some(tx),
            store: self.clone(),
            key,
            token,
        })
    }

    /// Claims `key` as [`Store::claim`] does (the claim is committed at once, so that
    /// duplicates see it), and opens its [`transaction`](Self::transaction).
    ///
    /// A claim whose answer was lost and that runs again (see the store's reconnection) finds
    /// its own claim, and opens its transaction.
    ///
    /// # Errors
    /// The store's error. If the claim was written but its transaction could not be opened,
    /// the claim is released first; a claim that failed unanswered (it may have been written
    /// all the same, or land later) is released in the background, tried again until it is
    /// released or Postgres has twice said nothing is there.
    pub async fn claim_transaction(
        &self,
        key: StoreKey,
        claim: InFlight,
        now: Timestamp,
    ) -> Result<TransactionalClaim, StoreError> {
        let claimed = match self.claim(&key, claim, now).await {
            Ok(claimed) => claimed,
            Err(error) => {
                // The claim may have been written all the same (a statement that timed out,
                // then ran): nobody would hold it. Its token releases it, if it is there.
                if let StoreError::Unavailable(_) | StoreError::Timeout = error {
                    self.release_unconfirmed(key, claim.token, claim.lease_until.since(now));
                }
                return Err(error);
            }
        };
        match claimed {
            // Its own token's: a claim whose answer was lost, run again (see `Reconnects`),
            // finds the claim it wrote.
            Claim::Existing(record) if record.is_claim_of(claim.token) => {
                self.opened(key, claim.token).await
            }
            Claim::Existing(record) => Ok(TransactionalClaim::Existing(record)),
            Claim::Claimed => self.opened(key, claim.token).await,
        }
    }

    /// Releases, in a task of its own, the claim `token` may hold on `key`: its statement
    /// failed unanswered, and may still land, later than a release sent after it (a commit
    /// that waits on a slow disk or a lagging synchronous standby). Tried again as the
    /// engine's are ([`released_until_known`], for up to the claim's lease); at most
    /// [`MAX_UNCONFIRMED_RELEASES`] at once, past which a claim that landed lapses with its
    /// lease.
    fn release_unconfirmed(&self, key: StoreKey, token: Token, for_up_to: Duration) {
        let Some(counted) = Counted::within(&self.unconfirmed, MAX_UNCONFIRMED_RELEASES) else {
            return;
        };
        let store = self.clone();
        tokio::spawn(async move {
            released_until_known(|| store.release(&key, token), for_up_to).await;
            drop(counted);
        });
    }

    /// The transaction of the claim `token` holds on `key`, just written; or, if it cannot
    /// be opened, the claim released and the error.
    async fn opened(&self, key: StoreKey, token: Token) -> Result<TransactionalClaim, StoreError> {
        match self.transaction(key, token).await {
            Ok(tx) => Ok(TransactionalClaim::Claimed(tx)),
            Err(error) => {
                let _ = self.release(&key, token).await;
                Err(error)
            }
        }
    }

    /// A connection from the pool, or why none can be had.
    async fn acquire(&self) -> Result<Held<'_>, StoreError> {
        let asked = Instant::now();
        let conn = (self.pool.acquire().await).map_err(|e| self.unacquired(e, asked))?;
        Ok(Held::new(conn, &self.in_use))
    }

    /// The error of a pool that gave no connection to a request that asked for one at `asked`.
    ///
    /// Where none came free in time because the store held every one of the pool's (running
    /// `Transaction` handlers hold one each, other requests theirs), or had held them all
    /// since the request asked, or within the acquire timeout before (see [`Occupancy`]), Postgres was reached, and may hold the
    /// key, as for the request still running whose retry this may be: refused, even when
    /// failing open. Counted by the store: the pool counts its attempts to connect among its
    /// connections. Connections stuck in statements on a network that drops packets count
    /// as in use until the command timeout ends those statements. The application's own
    /// connections of a pool it shares with the store (`with_pool`) are not counted: they
    /// make the store unavailable.
    fn unacquired(&self, error: sqlx::Error, asked: Instant) -> StoreError {
        if !matches!(error, sqlx::Error::PoolTimedOut) || !self.in_use.full_since(asked) {
            return self.error(error);
        }
        StoreError::Refused(
            format!(
                "all {} connections of the store's pool were in use for its whole acquire \
                 timeout; size the pool above the keyed requests that run at once \
                 (PostgresStoreBuilder::max_connections) ({error})",
                self.in_use.max
            )
            .into(),
        )
    }

    /// The error of a pool that gave no connection to a request that asked for one at `asked`,
    /// as [`unacquired`](Self::unacquired) tells it; but where it timed out with its
    /// connections not the store's, the cause it hides (Postgres refused the connection, the
    /// password, the database), found by connecting once outside the pool. For the first
    /// statement at start-up, which an operator reads.
    async fn unconnected(&self, error: sqlx::Error, asked: Instant) -> StoreError {
        if !matches!(error, sqlx::Error::PoolTimedOut) || self.in_use.full_since(asked) {
            return self.unacquired(error, asked);
        }
        let options = self.pool.connect_options();
        let connect = <PgConnection as sqlx::Connection>::connect_with(&options);
        let connected = tokio::time::timeout(self.pool.options().get_acquire_timeout(), connect);
        match connected.await {
            Ok(Err(cause)) => self.error(cause),
            Ok(Ok(conn)) => {
                let _ = sqlx::Connection::close(conn).await;
                self.error(error)
            }
            Err(_) => self.error(error),
        }
    }

    /// Runs one statement under the command timeout.
    async fn timed<T>(
        &self,
        statement: impl std::future::Future<Output = Result<T, sqlx::Error>>,
    ) -> Result<T, StoreError> {
        match tokio::time::timeout(self.timeout, statement).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => Err(self.error(e)),
            Err(_) => Err(StoreError::Timeout),
        }
    }

    fn error(&self, error: sqlx::Error) -> StoreError {
        let table = &self.sql.qualified;
        match &error {
            sqlx::Error::Database(db) => match db.code().as_deref() {
                // invalid_schema_name
                Some("3F000") => StoreError::Refused(
                    format!(
                        "the schema {} does not exist; create it, or name another with \
                         PostgresStoreBuilder::schema ({error})",
                        self.sql.schema
                    )
                    .into(),
                ),
                // undefined_table
                Some("42P01") => StoreError::Refused(
                    format!(
                        "the table {table} does not exist; create it with PostgresStore::migrate() \
                         or the SQL in the store's docs, in a schema that exists (see \
                         PostgresStoreBuilder::schema) ({error})"
                    )
                    .into(),
                ),
                // invalid_sql_statement_name, duplicate_prepared_statement: the statements
                // prepared on a connection, which sqlx keeps by name, are not there, or another
                // client's are, as behind a pooler that hands each transaction another server
                // connection.
                Some("26000" | "42P05") => StoreError::Refused(
                    format!(
                        "Postgres does not hold the statements the store prepared on this \
                         connection: a pooler in transaction mode without prepared-statement \
                         support (PgBouncer before 1.21, or without max_prepared_statements) \
                         stands between; use its session mode, or PgBouncer 1.21 or later with \
                         max_prepared_statements above 0 ({error})"
                    )
                    .into(),
                ),
                // protocol_violation, as PgBouncer refuses a start-up parameter (sqlx's
                // `extra_float_digits`, unless told to ignore it): a setting to change, never
                // an outage that passes. PgBouncer reports its server's outages with 08P01 too
                // ("server conn crashed?", a login that keeps failing): those are outages, below.
                Some("08P01") if db.message().starts_with("unsupported startup parameter") => {
                    StoreError::Refused(
                        format!(
                            "the server refused the connection's start-up: a pooler such as \
                         PgBouncer refuses start-up parameters it does not know (set \
                         ignore_startup_parameters = extra_float_digits there, and give other \
                         settings with ALTER ROLE rather than in the URL's options) ({error})"
                        )
                        .into(),
                    )
                }
                // undefined_column, datatype_mismatch
                Some("42703" | "42804") => StoreError::Refused(
                    format!(
                        "the table {table} is not the one this idem writes; drop it or choose \
                         another table name, then migrate ({error})"
                    )
                    .into(),
                ),
                // A connection lost, a server shutting down or starting up, out of
                // connections: not reached. A server that takes no writes (25006,
                // read_only_sql_transaction: a primary demoted by a failover, or a standby
                // reached before the new primary) cannot answer for its data for now, as
                // Redis's READONLY. A statement cancelled (57014, query_canceled: its
                // `statement_timeout`, or `pg_cancel_backend`; 55P03, lock_not_available: its
                // `lock_timeout`) was rolled back and changed nothing, as one past the store's
                // own command timeout (a claim's is refused: see `claim_error`). A session
                // Postgres ended for idling (57P05, idle_session_timeout; 25P03, in a
                // transaction) is a connection lost. Anything else, it answered and refused.
                Some(code)
                    if code.starts_with("08")
                        || matches!(
                            code,
                            "57P01"
                                | "57P02"
                                | "57P03"
                                | "57P05"
                                | "25P03"
                                | "53300"
                                | "25006"
                                | "57014"
                                | "55P03"
                        ) =>
                {
                    StoreError::Unavailable(Box::new(error))
                }
                _ => StoreError::Refused(Box::new(error)),
            },
            sqlx::Error::ColumnDecode { .. }
            | sqlx::Error::Decode(_)
            | sqlx::Error::ColumnNotFound(_)
            | sqlx::Error::TypeNotFound { .. }
            | sqlx::Error::ColumnIndexOutOfBounds { .. } => {
                StoreError::Corrupt(format!("unreadable record in {table}: {error}"))
            }
            _ => StoreError::Unavailable(Box::new(error)),
        }
    }

    /// A claim's error. A claim Postgres cancelled (57014, 55P03) changed nothing, as any
    /// statement cancelled, but it may have been waiting on the key's row, written by another
    /// claim of the key not yet committed: two first requests at the same moment. Postgres
    /// answered, and the key may be taken, so the claim is refused (it fails closed even when
    /// failing open) where other statements cancelled are unavailable.
    fn claim_error(&self, error: sqlx::Error) -> StoreError {
        let cancelled = matches!(
            &error,
            sqlx::Error::Database(db) if matches!(db.code().as_deref(), Some("57014" | "55P03"))
        );
        if cancelled {
            return StoreError::Refused(
                format!(
                    "Postgres cancelled the claim, which may have been waiting on another claim \
                     of its key; the key may be taken ({error})"
                )
                .into(),
            );
        }
        self.error(error)
    }

    fn check_size(&self, record: &Completed) -> Result<(), StoreError> {
        let size = record.response.held_bytes();
        if size > self.max_record_bytes {
            return Err(StoreError::TooLarge {
                size,
                max: self.max_record_bytes,
            });
        }
        Ok(())
    }

    /// The fenced completion of `key`'s claim by `token`, writing `record`, whose response's
    /// body is `body`, by `statement` (`complete`, or `complete_in_transaction` with its
    /// mark yet to bind).
    fn completion<'q>(
        &'q self,
        statement: &'q str,
        key: &StoreKey,
        token: Token,
        record: &'q Completed,
        body: &'q [u8],
    ) -> Query<'q, Postgres, PgArguments> {
        let response = &record.response;
        let omitted = response.body_omitted();
        sqlx::query(statement)
            .bind(*key.as_bytes())
            .bind(token.as_u128().to_be_bytes())
            .bind(*record.fingerprint.as_bytes())
            .bind(millis(record.expires_at))
            .bind(i32::from(response.status()))
            .bind(millis(record.completed_at))
            .bind(response.header_section())
            .bind(omitted.is_none().then_some(body))
            .bind(omitted.map(|size| i64::try_from(size).unwrap_or(i64::MAX)))
    }

    /// The fenced completion of `key`'s claim by `token`, on `conn`, once: in a claim's
    /// transaction, whose snapshot a second run could not renew. It writes only in the
    /// transaction that `transaction` began for the claim: one its caller ended (`COMMIT`,
    /// `ROLLBACK`) is refused with [`TransactionEnded`]. `Ok(false)` when another record
    /// holds the key; a claim gone with nobody holding the key fails with [`ClaimGone`].
    async fn complete_on(
        &self,
        conn: &mut PgConnection,
        key: &StoreKey,
        token: Token,
        record: &Completed,
    ) -> Result<bool, StoreError> {
        super::check_status(&record.response)?;
        let body = record.response.body();
        let sql = &self.sql.complete_in_transaction;
        let completion = self.completion(sql, key, token, record, &body);
        let done = self
            .timed(completion.bind(mark(token)).execute(&mut *conn))
            .await?;
        if done.rows_affected() == 1 {
            return Ok(true);
        }
        // Taken over, gone, or the transaction is not the claim's any more. Judged by the
        // completion's time, as a claim judges a record it finds.
        let query = sqlx::query(&self.sql.not_completed)
            .bind(*key.as_bytes())
            .bind(millis(record.completed_at));
        let row = self.timed(query.fetch_one(conn)).await?;
        let marked: Option<String> = row.try_get("mark").map_err(|e| self.error(e))?;
        let held: bool = row.try_get("held").map_err(|e| self.error(e))?;
        if marked.as_deref() != Some(mark(token).as_str()) {
            return Err(StoreError::Refused(Box::new(TransactionEnded)));
        }
        match held {
            true => Ok(false),
            // Nobody holds the key, so no other request runs the operation: the claim lapsed
            // unrenewed and was purged. Told apart from a takeover, so that the caller does
            // not answer that the key is in flight.
            false => Err(StoreError::Unavailable(Box::new(ClaimGone))),
        }
    }

    /// Runs the statement that `query` makes, a write of one row fenced by a claim's token,
    /// under the command timeout: `true` when it wrote the row. Under REPEATABLE READ or
    /// SERIALIZABLE (the database's default isolation), a write that waited on the row while
    /// another statement changed it fails where READ COMMITTED would read the row again and
    /// judge the fence on it; the next run's snapshot holds that row, and judges the fence
    /// as READ COMMITTED would. After [`ATTEMPTS`] runs, the last failure is the answer.
    async fn fenced<'q>(
        &self,
        query: impl Fn() -> Query<'q, Postgres, PgArguments>,
    ) -> Result<bool, StoreError> {
        let mut reconnects = self.reconnects();
        'connection: loop {
            let mut conn = self.acquire().await?;
            let mut attempts = 1;
            let answer = loop {
                match tokio::time::timeout(self.timeout, query().execute(&mut *conn)).await {
                    Err(_) => return Err(StoreError::Timeout),
                    Ok(Err(error)) if serialization_failure(&error) && attempts < ATTEMPTS => {
                        attempts += 1;
                    }
                    Ok(done) => break done.map_err(|e| self.error(e)),
                }
            };
            if !reconnects.again(&answer) {
                break 'connection answer.map(|done| done.rows_affected() == 1);
            }
        }
    }

    /// One claim of `key` on `conn`: the statement, run again when its snapshot met a record
    /// committed after it began.
    async fn claim_on(
        &self,
        conn: &mut PgConnection,
        key: &StoreKey,
        claim: InFlight,
        now: Timestamp,
    ) -> Result<Claim, StoreError> {
        let purge_at = claim.lease_until.saturating_add(LAPSED_CLAIM_GRACE);
        for _ in 0..ATTEMPTS {
            let query = sqlx::query(&self.sql.claim)
                .bind(*key.as_bytes())
                .bind(claim.token.as_u128().to_be_bytes())
                .bind(*claim.fingerprint.as_bytes())
                .bind(millis(claim.lease_until))
                .bind(millis(purge_at))
                .bind(millis(now))
                .bind(self.claim_lock_timeout.as_str());
            let row = match tokio::time::timeout(self.timeout, query.fetch_one(&mut *conn)).await {
                Err(_) => return Err(StoreError::Timeout),
                // Under REPEATABLE READ or SERIALIZABLE (the database's default isolation), a
                // claim that meets a row committed after its snapshot fails where READ
                // COMMITTED would wait for it; the next run's snapshot sees that row.
                Ok(Err(error)) if serialization_failure(&error) => continue,
                Ok(row) => row.map_err(|e| self.claim_error(e))?,
            };
            let claimed: bool = row.try_get("claimed").map_err(|e| self.error(e))?;
            if claimed {
                return Ok(Claim::Claimed);
            }
            // Not claimed, so a live record stood in the way; the row this statement saw is
            // it, unless that record was committed after the statement began.
            let seen: Option<String> = row.try_get("kind").map_err(|e| self.error(e))?;
            if seen.is_some() {
                let existing = record(&row).map_err(|e| self.error(e))?;
                if existing.is_live(now) {
                    return Ok(Claim::Existing(existing));
                }
            }
        }
        Err(StoreError::Contended)
    }

    /// How often an operation runs again on another connection: see [`Reconnects`].
    fn reconnects(&self) -> Reconnects {
        Reconnects(self.pool.options().get_max_connections())
    }
}

/// The `lock_timeout` the store sets for its claims (in milliseconds, as Postgres reads a
/// number for it) where the session has none: half the command timeout. A claim waits on the
/// key's row only while another statement holds it: another claim of the key, or its
/// completion, not yet committed (a commit held up by a slow disk or a synchronous standby).
/// Postgres then cancels the claim (55P03), which fails closed, as the key may be taken, well
/// before the command timeout would end it unanswered, which counts as a Postgres that cannot
/// be reached: under `fail_open`, the operation would run beside the other.
fn claim_lock_timeout(timeout: Duration) -> String {
    // At least 1 (0 turns it off), at most what Postgres takes.
    let millis = (timeout / 2).as_millis().clamp(1, i32::MAX as u128);
    millis.to_string()
}

/// What lets an operation run again on another connection. The pool lends a connection
/// without testing it (that would be a round trip more per operation), so one that Postgres
/// closed while it idled there (a restart, or the session's `idle_session_timeout`) is found
/// closed only when a statement fails on it: the operation then runs again on another, up to
/// once per connection the pool keeps, so that a restart costs no request an outage. A
/// statement failed so never ran, or was rolled back with its session; unless the
/// connection broke between a commit and its answer, when the operation runs twice to the
/// same end: a claim finds its own token's, a completion the record it wrote; a release
/// finds the claim it removed gone, and answers so.
struct Reconnects(u32);

impl Reconnects {
    /// Whether the operation that gave `answer` runs again, on another connection (the pool
    /// closes the one it ran on as it comes back, failing its test there).
    fn again<T>(&mut self, answer: &Result<T, StoreError>) -> bool {
        match answer {
            Err(StoreError::Unavailable(error)) if self.0 > 0 && closed(&**error) => {
                self.0 -= 1;
                true
            }
            _ => false,
        }
    }
}

/// Whether `error`, a store error's source, is a statement's that found its connection closed
/// (see [`PostgresStore::connection_closed`]).
fn closed(error: &(dyn std::error::Error + 'static)) -> bool {
    error
        .downcast_ref::<sqlx::Error>()
        .is_some_and(PostgresStore::connection_closed)
}

/// The mark of `token`'s transaction: the token in hex.
fn mark(token: Token) -> String {
    format!("{:032x}", token.as_u128())
}

/// A [`ClaimTransaction`] committed after its caller ended the transaction itself (`COMMIT`
/// or `ROLLBACK` run on its connection, perhaps followed by a `BEGIN` of its own), or reset
/// its settings (`RESET ALL`), which clears the mark that tells the claim's transaction from
/// another: what the caller committed stands, and the record cannot commit with it. Nothing
/// was recorded; what was left open was rolled back and the claim released. The commit's
/// error, as [`StoreError::Refused`]: a fault in the caller to fix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the operation ended its claim's transaction itself (COMMIT or ROLLBACK) or reset its settings (RESET ALL), so its record could not commit with its writes; let the claim transaction's commit end it, and reset no settings in it")]
#[non_exhaustive]
pub struct TransactionEnded;

/// A [`ClaimTransaction`] committed after its claim was gone from the table, with no other
/// request holding the key: its lease lapsed unrenewed (renewals that failed for longer than
/// the lease, in an outage, or a thread blocked as long) and the purge deleted the row after
/// its grace. Nothing was written: the transaction was rolled back, so a retry under the key
/// runs the operation again. The commit's error, as [`StoreError::Unavailable`]: the outage
/// that let the claim lapse, not a fault in the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the claim was gone at the commit (its lease lapsed unrenewed and the row was purged), and no other request holds the key; nothing was written, so retry the operation")]
#[non_exhaustive]
pub struct ClaimGone;

/// Whether `error` is Postgres's `serialization_failure` (40001): a statement that met a row
/// changed after its snapshot, under REPEATABLE READ or SERIALIZABLE.
fn serialization_failure(error: &sqlx::Error) -> bool {
    matches!(error, sqlx::Error::Database(db) if db.code().as_deref() == Some("40001"))
}

/// A time as the table holds it.
fn millis(at: Timestamp) -> i64 {
    i64::try_from(at.as_millis()).unwrap_or(i64::MAX)
}

/// A column of bytes, borrowed from `row`.
fn bytes<'r>(row: &'r PgRow, column: &str) -> Result<&'r [u8], sqlx::Error> {
    row.try_get(column)
}

/// The record in `row` (the [`COLUMNS`]).
fn record(row: &PgRow) -> Result<Record, sqlx::Error> {
    let timestamp = |column: &str| -> Result<Timestamp, sqlx::Error> {
        let millis: i64 = row.try_get(column)?;
        u64::try_from(millis)
            .map(Timestamp::from_millis)
            .map_err(|e| sqlx::Error::Decode(e.into()))
    };
    let token = <[u8; 16]>::try_from(bytes(row, "token")?)
        .map(|b| Token::from_u128(u128::from_be_bytes(b)))
        .map_err(|_| sqlx::Error::Decode("a token is 16 bytes".into()))?;
    let fingerprint = <[u8; 32]>::try_from(bytes(row, "fingerprint")?)
        .map(Fingerprint::from_bytes)
        .map_err(|_| sqlx::Error::Decode("a fingerprint is 32 bytes".into()))?;
    let lapses_at = timestamp("lapses_at")?;
    let kind: &str = row.try_get("kind")?;
    match kind {
        "F" => Ok(Record::InFlight(InFlight {
            fingerprint,
            lease_until: lapses_at,
            token,
        })),
        "C" => {
            let status: i32 = row.try_get("status")?;
            let status = u16::try_from(status)
                .ok()
                .filter(|&status| super::is_http_status(status))
                .ok_or_else(|| {
                    sqlx::Error::Decode(format!("status {status} is no HTTP status").into())
                })?;
            let response = match row.try_get::<Option<i64>, _>("omitted_size")? {
                // Kept without its response, as the store writes one: a size, no body, and
                // no headers (an empty section), as the Redis store's format requires too.
                Some(size) => {
                    let size = u64::try_from(size).map_err(|_| {
                        sqlx::Error::Decode(format!("a negative response size {size}").into())
                    })?;
                    let headers: Option<&[u8]> = row.try_get("headers")?;
                    let body: Option<&[u8]> = row.try_get("body")?;
                    if body.is_some() || headers.is_some_and(|h| h != [0, 0]) {
                        return Err(sqlx::Error::Decode(
                            "a response kept without its body holds a body or headers".into(),
                        ));
                    }
                    Response::omitted(status, size)
                }
                None => {
                    let headers = bytes(row, "headers")?;
                    let body = bytes(row, "body")?;
                    Response::from_parts(status, headers, body)
                        .map_err(|what| sqlx::Error::Decode(what.into()))?
                }
            };
            Ok(Record::Completed(Completed {
                fingerprint,
                response,
                completed_at: timestamp("completed_at")?,
                expires_at: lapses_at,
            }))
        }
        other => Err(sqlx::Error::Decode(
            format!("unknown record kind {other:?}").into(),
        )),
    }
}

impl PostgresStoreBuilder {
    fn new(source: Source) -> Self {
        Self {
            source,
            schema: DEFAULT_SCHEMA.into(),
            table: DEFAULT_TABLE.into(),
            timeout: Duration::from_secs(1),
            connect_timeout: Duration::from_secs(1),
            max_connections: 16,
            max_record_bytes: 8 * 1024 * 1024,
            fail_open: false,
            purge_interval: Some(Duration::from_secs(60)),
            purge_batch: 1000,
        }
    }

    /// The table the records are in: lowercase ASCII letters, digits and `_`, starting with
    /// a letter or `_`, at most 54 characters (its index adds `_purge_at`). Default
    /// `idem_records`.
    pub fn table(mut self, table: impl Into<String>) -> Self {
        self.table = table.into();
        self
    }

    /// The schema the table is in: lowercase ASCII letters, digits and `_`, starting with a
    /// letter or `_`, at most 63 characters, and none of Postgres's own (`pg_` followed by
    /// anything, such as each connection's `pg_temp`, or `information_schema`). Default
    /// `public`. Every statement names the
    /// table with its schema, so the connection's `search_path` (a role's default, or one a
    /// handler sets) never decides which table holds the records: every process sharing the
    /// records must name the same schema and table.
    pub fn schema(mut self, schema: impl Into<String>) -> Self {
        self.schema = schema.into();
        self
    }

    /// How long one statement may take before the store counts as unavailable. Default 1 s
    /// (a statement that writes waits for its commit to reach the disk); [`build`](Self::build)
    /// refuses zero.
    pub fn command_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// How long to wait for a connection from the pool, including connecting one, before the
    /// store counts as unavailable (or, when every connection of the pool is in use, refuses:
    /// see [`fail_open`](Self::fail_open)). Default 1 s; [`build`](Self::build) refuses zero.
    /// `Duration::MAX` waits as long as it takes (a hundred years).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// The most connections the store opens. Default 16. Each running
    /// [`ClaimTransaction`] holds one.
    pub fn max_connections(mut self, max: u32) -> Self {
        self.max_connections = max;
        self
    }

    /// The largest response kept, in bytes (headers and body, with their framing). Default
    /// 8 MiB, at most 1 GiB less 1 MiB (Postgres takes no value over 1 GiB). A larger response
    /// is recorded without its body.
    pub fn max_record_bytes(mut self, max: usize) -> Self {
        self.max_record_bytes = max;
        self
    }

    /// Runs requests unprotected when Postgres cannot be reached, does not answer in time
    /// (within the command timeout, or before it cancels the statement: SQLSTATE 57014, its
    /// `statement_timeout` or `pg_cancel_backend`, and 55P03, its `lock_timeout`), or takes
    /// no writes for now (SQLSTATE 25006: a primary a failover demoted, or a standby),
    /// instead of answering 503 (see [`StoreError`]). Default off. A claim Postgres cancels
    /// fails closed all the same: it may have been waiting on another claim of its key, not
    /// yet committed (claims cancel such a wait themselves at half the command timeout; see
    /// [`PostgresStore`]).
    ///
    /// A pool that cannot connect within the connect timeout counts as a Postgres that
    /// cannot be reached. One whose every connection the store holds (running
    /// [`ClaimTransaction`]s each hold one), or held within the connect timeout before the request
    /// asked or while it waited (a connection let go of goes back to the pool only after one more round trip), does not:
    /// it has reached Postgres, which may hold
    /// the key of the request that waits, as for a retry of a request still running, so that
    /// request fails closed ([`StoreError::Refused`]) whatever this setting. Size the pool
    /// above the transactions that run at once. Connections whose statements hang on a
    /// network that drops packets are held too, until the command timeout ends the
    /// statements: requests fail closed until then, and open after. In a pool shared with
    /// the application ([`PostgresStore::with_pool`]), connections the application holds
    /// count as none of the store's.
    pub fn fail_open(mut self, fail_open: bool) -> Self {
        self.fail_open = fail_open;
        self
    }

    /// How often the store deletes lapsed rows by itself, or `None` to leave that to
    /// [`PostgresStore::purge_expired`]. Default every 60 s.
    pub fn purge_interval(mut self, every: Option<Duration>) -> Self {
        self.purge_interval = every;
        self
    }

    /// The most rows one purge statement deletes. Default 1000.
    pub fn purge_batch(mut self, rows: u32) -> Self {
        self.purge_batch = rows;
        self
    }

    /// The store. It connects on first use, so it can be built while Postgres is down; it
    /// reconnects by itself when Postgres comes back. Create its table with
    /// [`PostgresStore::migrate`].
    ///
    /// # Errors
    /// [`StoreError::Config`] for a URL that is not a Postgres URL, a schema or table
    /// name that is not a plain identifier, a schema Postgres reserves, a pool of no
    /// connections, a purge batch of no rows or a record limit above what Postgres takes,
    /// or when called outside a Tokio runtime (the pool's upkeep runs on the runtime that
    /// builds the store).
    pub fn build(self) -> Result<PostgresStore, StoreError> {
        let invalid = |reason: String| Err(StoreError::Config(reason));
        if tokio::runtime::Handle::try_current().is_err() {
            return invalid(
                "build the Postgres store inside a Tokio runtime (for example in actix's main)"
                    .into(),
            );
        }
        if !valid_name(&self.table, MAX_TABLE_NAME) {
            return invalid(format!(
                "the table name {:?} is not allowed; use lowercase ASCII letters, digits and _, \
                 starting with a letter or _, at most {MAX_TABLE_NAME} characters",
                self.table
            ));
        }
        if !valid_name(&self.schema, MAX_NAME) {
            return invalid(format!(
                "the schema name {:?} is not allowed; use lowercase ASCII letters, digits and _, \
                 starting with a letter or _, at most {MAX_NAME} characters",
                self.schema
            ));
        }
        if self.schema.starts_with("pg_") || self.schema == "information_schema" {
            return invalid(format!(
                "the schema name {:?} is reserved for Postgres's own schemas (pg_temp is each \
                 connection's own, so every connection would keep records of its own); name \
                 one of the application's",
                self.schema
            ));
        }
        if self.purge_batch == 0 {
            return invalid("the purge batch must be at least one row".into());
        }
        for (setting, timeout) in [
            ("command_timeout", self.timeout),
            ("connect_timeout", self.connect_timeout),
        ] {
            if timeout.is_zero() {
                return invalid(format!(
                    "{setting} must be longer than zero: zero would time every statement out \
                     (it is no limit to Postgres, not to the store)"
                ));
            }
        }
        if self.max_record_bytes > MAX_RECORD_BYTES {
            return invalid(format!(
                "the largest record kept must be at most {MAX_RECORD_BYTES} bytes, as Postgres \
                 takes no value over 1 GiB; larger responses are recorded without their body"
            ));
        }
        let pool = match self.source {
            Source::Pool(pool) => pool,
            Source::Url(url) => {
                if self.max_connections == 0 {
                    return invalid("the store needs at least one connection".into());
                }
                let invalid_url = |reason: &dyn std::fmt::Display| {
                    StoreError::Config(format!(
                        "invalid Postgres URL ({reason}); write it as \
                         postgres://user:password@host:port/database"
                    ))
                };
                // sqlx reads any scheme as Postgres's; another one is a mistake.
                if !["postgres://", "postgresql://"]
                    .iter()
                    .any(|scheme| url.starts_with(scheme))
                {
                    return Err(invalid_url(&"it does not start with postgres://"));
                }
                let options = PgConnectOptions::from_str(&url).map_err(|e| invalid_url(&e))?;
                PgPoolOptions::new()
                    .max_connections(self.max_connections)
                    // sqlx adds it to the time it starts waiting: a longer one (a way to say
                    // "no limit") overflowed, and every statement panicked.
                    .acquire_timeout(self.connect_timeout.min(LONGEST_CONNECT_TIMEOUT))
                    // One round trip per operation: a broken connection is found when it
                    // comes back to the pool, not by a test before each use.
                    .test_before_acquire(false)
                    .connect_lazy_with(options.application_name("idem"))
            }
        };
        let options = pool.options();
        let max = options.get_max_connections();
        let in_use = Arc::new(Occupancy::new(max, options.get_acquire_timeout()));
        Ok(PostgresStore {
            pool,
            sql: Arc::new(Statements::new(&self.schema, &self.table)),
            timeout: self.timeout,
            claim_lock_timeout: claim_lock_timeout(self.timeout),
            max_record_bytes: self.max_record_bytes,
            fail_open: self.fail_open,
            purge_batch: self.purge_batch,
            purge: self.purge_interval.map(|every| {
                Arc::new(Purge {
                    every,
                    next: Mutex::new(None),
                })
            }),
            in_use,
            unconfirmed: Arc::default(),
        })
    }
}

/// The longest a pool the store makes waits for a connection: a hundred years, a connect
/// timeout without a limit.
const LONGEST_CONNECT_TIMEOUT: Duration = Duration::from_secs(100 * 365 * 24 * 60 * 60);

/// The longest name Postgres keeps whole, in bytes.
const MAX_NAME: usize = 63;

/// The longest table name, which leaves room for its index's (`_purge_at`) within [`MAX_NAME`].
const MAX_TABLE_NAME: usize = MAX_NAME - "_purge_at".len();

/// Whether `name` is an identifier that needs no quoting, of at most `max` bytes.
fn valid_name(name: &str, max: usize) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        && name.len() <= max
}

impl Store for PostgresStore {
    fn claim<'a>(
        &'a self,
        key: &'a StoreKey,
        claim: InFlight,
        now: Timestamp,
    ) -> StoreFuture<'a, Claim> {
        StoreFuture::new(async move {
            let mut reconnects = self.reconnects();
            let answer = loop {
                let mut conn = self.acquire().await?;
                let answer = self.claim_on(&mut conn, key, claim, now).await;
                if !reconnects.again(&answer) {
                    break answer;
                }
            };
            if matches!(answer, Ok(Claim::Claimed)) {
                self.purge_if_due(now);
            }
            answer
        })
    }

    fn get<'a>(&'a self, key: &'a StoreKey, now: Timestamp) -> StoreFuture<'a, Option<Record>> {
        StoreFuture::new(async move {
            let mut reconnects = self.reconnects();
            loop {
                let mut conn = self.acquire().await?;
                let query = sqlx::query(&self.sql.get)
                    .bind(*key.as_bytes())
                    .bind(millis(now));
                let answer = match self.timed(query.fetch_optional(&mut *conn)).await {
                    Ok(None) => Ok(None),
                    Ok(Some(row)) => record(&row).map(Some).map_err(|e| self.error(e)),
                    Err(error) => Err(error),
                };
                if !reconnects.again(&answer) {
                    return answer;
                }
            }
        })
    }

    fn extend<'a>(
        &'a self,
        key: &'a StoreKey,
        token: Token,
        lease_until: Timestamp,
        _now: Timestamp,
    ) -> StoreFuture<'a, bool> {
        StoreFuture::new(async move {
            let query = || {
                sqlx::query(&self.sql.extend)
                    .bind(*key.as_bytes())
                    .bind(token.as_u128().to_be_bytes())
                    .bind(millis(lease_until))
                    .bind(millis(lease_until.saturating_add(LAPSED_CLAIM_GRACE)))
            };
            self.fenced(query).await
        })
    }

    fn complete<'a>(
        &'a self,
        key: &'a StoreKey,
        token: Token,
        record: Completed,
        _now: Timestamp,
    ) -> StoreFuture<'a, bool> {
        StoreFuture::new(async move {
            super::check_status(&record.response)?;
            self.check_size(&record)?;
            let (record, body) = (&record, record.response.body());
            self.fenced(|| self.completion(&self.sql.complete, key, token, record, &body))
                .await
        })
    }

    fn release<'a>(&'a self, key: &'a StoreKey, token: Token) -> StoreFuture<'a, bool> {
        StoreFuture::new(async move {
            let query = || {
                sqlx::query(&self.sql.release)
                    .bind(*key.as_bytes())
                    .bind(token.as_u128().to_be_bytes())
            };
            self.fenced(query).await
        })
    }

    fn max_record_bytes(&self) -> Option<usize> {
        // Compared with a response's held bytes, as a completion checks them.
        Some(self.max_record_bytes)
    }

    fn fails_open(&self) -> bool {
        self.fail_open
    }
}

/// An open transaction for a claim: do the operation's writes in it (it dereferences to a
/// [`PgConnection`]), then [`commit`](Self::commit) them with the completed record, or
/// [`rollback`](Self::rollback). Dropped unfinished (a cancelled or panicking operation), it
/// rolls back and releases the claim in the background. See the [store's docs](PostgresStore).
///
/// ```no_run
/// # async fn run(store: idem_core::store::PostgresStore, key: idem_core::StoreKey,
/// #     claim: idem_core::InFlight, record: idem_core::Completed) -> Result<(), idem_core::StoreError> {
/// use idem_core::store::TransactionalClaim;
///
/// let now = record.completed_at;
/// if let TransactionalClaim::Claimed(mut tx) = store.claim_transaction(key, claim, now).await? {
///     sqlx::query("INSERT INTO calls (id) VALUES ('call_1')")
///         .execute(&mut *tx)
///         .await
///         .map_err(|e| idem_core::StoreError::Unavailable(Box::new(e)))?;
///     // The call and its record commit together, or neither does.
///     let recorded = tx.commit(record).await?;
/// }
/// # Ok(()) }
/// ```
#[must_use = "a claim transaction rolls back when dropped; commit it with the completed record"]
pub struct ClaimTransaction {
    tx: Option<sqlx::Transaction<'static, Postgres>>,
    store: PostgresStore,
    key: StoreKey,
    token: Token,
}

impl std::fmt::Debug for ClaimTransaction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClaimTransaction")
            .field("key", &self.key)
            .field("token", &self.token)
            .finish_non_exhaustive()
    }
}

impl ClaimTransaction {
    /// The store key claimed.
    pub fn key(&self) -> StoreKey {
        self.key
    }

    /// The fencing token of the claim.
    pub fn token(&self) -> Token {
        self.token
    }

    /// The open transaction's connection: the operation's writes go here.
    pub fn connection(&mut self) -> &mut PgConnection {
        self
    }

    /// Writes `record` in place of the claim, if the claim's token still holds the key, as
    /// the transaction's last statement, and commits: the operation's writes and the record
    /// are both there, or neither.
    ///
    /// `Ok(true)`: committed. `Ok(false)`: another request holds the key now (this claim's
    /// lease lapsed and it was taken over); everything was rolled back, and that request
    /// runs the operation. A claim whose lease lapsed and whose row was purged, with no other
    /// request holding the key, is no takeover: the commit fails with [`ClaimGone`] (see
    /// below). A record whose response is larger than
    /// [`PostgresStoreBuilder::max_record_bytes`] is committed without its headers and body,
    /// since the operation's writes commit with it: retries learn that it completed, and it
    /// never runs again.
    ///
    /// # Errors
    /// The store's error ([`StoreError::Refused`] for a status outside 100 to 999, which is
    /// never recorded; [`StoreError::Unavailable`] with [`ClaimGone`] for a claim gone that
    /// nobody else took). Everything was then rolled back and the claim released (when the
    /// store could still be told), so that a retry runs the operation again; except that a
    /// `COMMIT` whose answer was lost may have committed, the writes and the record
    /// together, and a retry then finds the record.
    pub async fn commit(mut self, mut record: Completed) -> Result<bool, StoreError> {
        if self.store.check_size(&record).is_err() {
            let size = record.response.size() as u64;
            record.response = Response::omitted(record.response.status(), size);
        }
        let Some(mut tx) = self.tx.take() else {
            return Ok(false);
        };
        let store = self.store.clone();
        match store
            .complete_on(&mut tx, &self.key, self.token, &record)
            .await
        {
            Ok(true) => {}
            Ok(false) => {
                let _ = store.timed(tx.rollback()).await;
                return Ok(false);
            }
            Err(error) => {
                // The claim is released, or lapses with its lease if that fails too.
                let _ = self.rolled_back(tx).await;
                return Err(error);
            }
        }
        match store.timed(tx.commit()).await {
            Ok(()) => Ok(true),
            Err(error) => {
                // The row lock taken by the completion makes this wait for the outcome of a
                // commit still under way; a committed record is no claim, and stays.
                let _ = store.release(&self.key, self.token).await;
                Err(error)
            }
        }
    }

    /// Rolls the transaction back and releases the claim, so that a retry runs the
    /// operation again: for a response that is not recorded (a 5xx, or a panic). `Ok(true)`
    /// when the claim was released, `Ok(false)` when this token no longer held the key.
    ///
    /// # Errors
    /// The store's error when the release failed; the claim then lapses with its lease. The
    /// transaction is rolled back all the same.
    pub async fn rollback(mut self) -> Result<bool, StoreError> {
        match self.tx.take() {
            Some(tx) => self.rolled_back(tx).await,
            None => Ok(false),
        }
    }

    async fn rolled_back(
        &self,
        tx: sqlx::Transaction<'static, Postgres>,
    ) -> Result<bool, StoreError> {
        // A rollback that fails leaves a broken connection, which sqlx closes; Postgres then
        // aborts the transaction itself.
        let _ = self.store.timed(tx.rollback()).await;
        self.store.release(&self.key, self.token).await
    }
}

impl Deref for ClaimTransaction {
    type Target = PgConnection;

    fn deref(&self) -> &PgConnection {
        self.tx
            .as_ref()
            .expect("a claim transaction is open until commit or rollback consumes it")
    }
}

impl DerefMut for ClaimTransaction {
    fn deref_mut(&mut self) -> &mut PgConnection {
        self.tx
            .as_mut()
            .expect("a claim transaction is open until commit or rollback consumes it")
    }
}

impl Drop for ClaimTransaction {
    fn drop(&mut self) {
        // Its connection is counted until it goes back to the pool: at once after a commit or
        // a rollback, else at the end of the rollback below, which waits for any statement
        // the handler left running. Counted as free from the drop on, it would let a request
        // that got no connection meanwhile take the pool for one that cannot connect, and run
        // unprotected where failing open.
        let counted = InUse(Arc::clone(&self.store.in_use));
        let Some(tx) = self.tx.take() else {
            return;
        };
        let (store, key, token) = (self.store.clone(), self.key, self.token);
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(async move {
                    let _ = store.timed(tx.rollback()).await;
                    drop(counted);
                    if let Err(error) = store.release(&key, token).await {
                        tracing::warn!(%key, %error, "releasing an abandoned idempotency claim failed; it lapses with its lease");
                    }
                });
            }
            // sqlx rolls the dropped transaction back when its connection is next used.
            Err(_) => {
                tracing::warn!(%key, "idempotency claim transaction abandoned outside a runtime; its claim lapses with its lease")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_names_are_plain_identifiers_with_room_for_the_index() {
        for ok in ["idem_records", "_t", "t2", &"a".repeat(54)] {
            assert!(valid_name(ok, MAX_TABLE_NAME), "{ok}");
        }
        assert!(valid_name(&"a".repeat(63), MAX_NAME), "a schema name");
        assert!(!valid_name(&"a".repeat(64), MAX_NAME), "a schema name");
        for bad in [
            "",
            "Idem",
            "2t",
            "idem-records",
            "app.idem",
            "t; DROP TABLE x",
            "\"t\"",
            &"a".repeat(55),
        ] {
            assert!(!valid_name(bad, MAX_TABLE_NAME), "{bad}");
        }
    }

    #[test]
    fn the_schema_in_the_docs_is_the_one_migrate_runs_for_any_schema_and_table_name() {
        let default = Statements::new(DEFAULT_SCHEMA, DEFAULT_TABLE);
        assert_eq!(
            default.create.replace('"', ""),
            schema!(),
            "quoted, the same"
        );
        let other = Statements::new("app", "app_keys");
        assert!(!other.create.contains(DEFAULT_TABLE));
        assert!(!other.create.contains(DEFAULT_SCHEMA));
        assert!(other
            .create
            .contains(r#"CREATE TABLE IF NOT EXISTS "app"."app_keys" ("#));
        assert!(other.create.contains(
            r#"CREATE INDEX IF NOT EXISTS "app_keys_purge_at" ON "app"."app_keys" (purge_at)"#
        ));
        for statement in [
            &other.claim,
            &other.get,
            &other.extend,
            &other.complete,
            &other.release,
            &other.purge,
        ] {
            assert!(statement.contains(r#""app"."app_keys""#), "{statement}");
            assert_eq!(
                statement.matches("app_keys").count(),
                statement.matches(r#""app"."app_keys""#).count(),
                "the table is named with its schema wherever it is named: {statement}"
            );
            assert!(!statement.contains(DEFAULT_TABLE), "{statement}");
        }
    }

    #[test]
    fn the_layout_migrate_checks_is_the_table_s_sql() {
        let lines: Vec<&str> = schema!()
            .lines()
            .filter(|line| line.starts_with("    "))
            .collect();
        assert_eq!(lines.len(), LAYOUT.len(), "one column per line");
        for ((name, ty, nullable), line) in LAYOUT.iter().zip(lines) {
            let words: Vec<&str> = line.split_whitespace().collect();
            assert_eq!((words[0], words[1].trim_end_matches(',')), (*name, *ty));
            let not_null = line.contains("NOT NULL") || line.contains("PRIMARY KEY");
            assert_eq!(not_null, !nullable, "{line}");
        }
    }

    #[test]
    fn every_column_read_is_a_column_of_the_table() {
        for column in COLUMNS.split(", ") {
            assert!(
                schema!().contains(&format!("\n    {column} ")),
                "{column} is not in the schema"
            );
        }
    }

    #[test]
    fn times_beyond_the_column_saturate() {
        assert_eq!(millis(Timestamp::from_millis(42)), 42);
        assert_eq!(millis(Timestamp::from_millis(u64::MAX)), i64::MAX);
    }

    #[tokio::test]
    async fn bad_settings_are_refused_with_the_rule() {
        let err = |builder: PostgresStoreBuilder| builder.build().unwrap_err().to_string();
        let url = "postgres://idem@127.0.0.1:1/idem";
        assert!(err(PostgresStore::builder(url).table("Bad-Name")).contains("lowercase ASCII"));
        assert!(err(PostgresStore::builder(url).schema("app.x")).contains("schema name"));
        assert!(err(PostgresStore::builder("redis://127.0.0.1/")).contains("invalid Postgres URL"));
        assert!(err(PostgresStore::builder(url).max_connections(0)).contains("at least one"));
        assert!(err(PostgresStore::builder(url).purge_batch(0)).contains("at least one row"));
        // Zero would time every statement out (each an outage, run unprotected when failing
        // open); Postgres's own timeouts read 0 as no limit, an easy slip.
        let zero = Duration::ZERO;
        assert!(err(PostgresStore::builder(url).command_timeout(zero)).contains("command_timeout"));
        assert!(err(PostgresStore::builder(url).connect_timeout(zero)).contains("connect_timeout"));
        assert!(PostgresStore::new(url).is_ok(), "built without connecting");
    }

    /// Postgres keeps the names starting `pg_` for its own schemas: `pg_temp` is each
    /// connection's own temporary schema, so a table there would be one per connection, and
    /// every process, every connection even, would keep records of its own; `pg_catalog`,
    /// `pg_toast` and `information_schema` are the system's.
    #[tokio::test]
    async fn a_schema_postgres_reserves_is_refused() {
        let url = "postgres://idem@127.0.0.1:1/idem";
        for reserved in [
            "pg_temp",
            "pg_temp_3",
            "pg_catalog",
            "pg_toast",
            "information_schema",
        ] {
            let err = PostgresStore::builder(url)
                .schema(reserved)
                .build()
                .unwrap_err()
                .to_string();
            assert!(err.contains("reserved"), "{reserved}: {err}");
        }
        assert!(PostgresStore::builder(url).schema("pgx").build().is_ok());
    }

    /// Postgres takes no message over 1 GiB: a completion above it would fail on every
    /// attempt, and the operation that ran would go unrecorded, where a record over the
    /// store's limit is kept without its body.
    #[tokio::test]
    async fn a_record_limit_beyond_what_postgres_takes_is_refused() {
        let url = "postgres://idem@127.0.0.1:1/idem";
        let limit = |max| PostgresStore::builder(url).max_record_bytes(max).build();
        let err = limit(1 << 30).unwrap_err().to_string();
        assert!(err.contains("at most 1072693248 bytes"), "{err}");
        assert!(limit(usize::MAX).is_err());
        assert!(limit(1072693248).is_ok());
    }

    /// The store says how large a record it keeps, so that an endpoint keeping larger
    /// responses is refused at start-up, as on Redis: unsaid, responses between the two were
    /// recorded without their bodies, and their retries got 409 where they expected a replay.
    #[tokio::test]
    async fn the_record_limit_is_told_to_the_start_up_check() {
        let url = "postgres://idem@127.0.0.1:1/idem";
        let store = PostgresStore::builder(url)
            .max_record_bytes(1024)
            .build()
            .unwrap();
        assert_eq!(store.max_record_bytes(), Some(1024));
        let checked = crate::Policy::DEFAULT.check(&store);
        assert!(
            matches!(
                checked,
                Err(crate::PolicyError::ResponseLargerThanStore { .. })
            ),
            "{checked:?}"
        );
    }

    /// Timeouts as long as a `Duration` holds (a way to say "no limit") open transactions and
    /// purge as any other: the sums they take part in saturate, where they panicked, and
    /// every `Transaction` was answered 500 without a code.
    #[tokio::test]
    async fn unbounded_timeouts_open_transactions_without_panicking() {
        let store = PostgresStore::builder("postgres://idem@127.0.0.1:1/idem")
            .command_timeout(Duration::MAX)
            .connect_timeout(Duration::from_millis(200))
            .build()
            .unwrap();
        let claim = InFlight {
            fingerprint: crate::Fingerprint::new("POST", "/", "", b""),
            lease_until: Timestamp::from_millis(60_000),
            token: Token::from_u128(1),
        };
        let opened = store.transaction(StoreKey::from_bytes([1; 32]), claim.token);
        let opened = std::panic::AssertUnwindSafe(opened);
        let opened = futures_util::FutureExt::catch_unwind(opened).await;
        let Ok(opened) = opened else {
            panic!("opening a transaction panicked")
        };
        assert!(
            matches!(opened, Err(StoreError::Unavailable(_))),
            "{:?}",
            opened.err()
        );
    }

    /// A connect timeout as long as a `Duration` holds waits for a connection as long as it
    /// takes, where the pool's deadline overflowed and every statement panicked (the keyed
    /// request's connection cut, unanswered).
    #[tokio::test]
    async fn an_unbounded_connect_timeout_waits_for_a_connection_without_panicking() {
        let store = PostgresStore::builder("postgres://idem@127.0.0.1:1/idem")
            .connect_timeout(Duration::MAX)
            .build()
            .unwrap();
        let key = StoreKey::from_bytes([1; 32]);
        let read = std::panic::AssertUnwindSafe(store.get(&key, Timestamp::from_millis(0)));
        let read = futures_util::FutureExt::catch_unwind(read);
        match tokio::time::timeout(Duration::from_millis(300), read).await {
            Err(_) => {}
            Ok(Ok(read)) => panic!("answered at once: {read:?}"),
            Ok(Err(_)) => panic!("reading a record panicked"),
        }
    }

    /// A URL or a setting the store cannot take is the settings' fault, refused as such, where
    /// it read "store unavailable", as an outage does.
    #[tokio::test]
    async fn settings_the_store_cannot_take_are_refused_as_settings() {
        for built in [
            PostgresStore::new("mysql://idem@127.0.0.1:1/idem"),
            PostgresStore::builder("postgres://idem@127.0.0.1:1/idem")
                .table("Not A Name")
                .build(),
        ] {
            let err = built.unwrap_err();
            assert!(matches!(err, StoreError::Config(_)), "{err:?}");
        }
    }

    /// A migration (the store's first statement at start-up) that cannot connect says why,
    /// where the pool's timeout hid it ("pool timed out while waiting for an open
    /// connection", for a Postgres that refused the connection or the password alike).
    #[tokio::test]
    async fn a_migration_that_cannot_connect_says_why() {
        let store = PostgresStore::builder("postgres://idem@127.0.0.1:1/idem")
            .connect_timeout(Duration::from_millis(300))
            .build()
            .unwrap();
        let err = store.migrate().await.unwrap_err();
        let text = err.to_string();
        assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");
        assert!(text.contains("refused"), "{text}");
    }

    #[test]
    fn building_outside_a_runtime_says_where_to_build() {
        let err = PostgresStore::new("postgres://idem@127.0.0.1:1/idem").unwrap_err();
        assert!(err.to_string().contains("inside a Tokio runtime"), "{err}");
    }

    #[tokio::test]
    async fn a_postgres_that_cannot_be_reached_is_unavailable_not_a_hang() {
        // Port 1 on loopback: nothing listens there, so connecting is refused.
        let store = PostgresStore::builder("postgres://idem@127.0.0.1:1/idem")
            .connect_timeout(Duration::from_millis(200))
            .build()
            .unwrap();
        let started = Instant::now();
        let err = store
            .get(&StoreKey::from_bytes([1; 32]), Timestamp::from_millis(0))
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");
        assert!(started.elapsed() < Duration::from_secs(5));
    }
}
