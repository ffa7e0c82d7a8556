//! The Postgres store against a real PostgreSQL: the shared conformance suite, one winner among
//! concurrent claims, replays that write nothing, transactions whose writes commit with their
//! record (or neither does), outages and recovery, and the purge of lapsed rows. Each test
//! skips when no PostgreSQL can be had, unless `IDEM_REQUIRE_POSTGRES=1`.

use std::time::{Duration, Instant};

use actix_web::{post, web, HttpResponse};
use futures_util::future::join_all;
use futures_util::FutureExt;
use idem_actix::clock::{Clock, SystemClock, Timestamp};
use idem_actix::{
    idempotent, ClaimGone, IdempotencyConfig, PostgresStore, TransactionEnded, TransactionalClaim,
};
use idem_core::store::{Claim, Store, LAPSED_CLAIM_GRACE};
use idem_core::{
    Begin, Completed, Engine, Fingerprint, IdempotencyError, InFlight, Policy, Record, Response,
    StoreError, StoreKey, Token,
};
use idem_tests::pg_proxy::LosingProxy;
use idem_tests::{assert_error, Counter, RawRequest, TestPgBouncer, TestPostgres, TestServer};
use sqlx::PgPool;

const LEASE: Duration = Duration::from_secs(10);
const TTL: Duration = Duration::from_secs(3600);

/// A store on its own table, created.
async fn store(pg: &TestPostgres, name: &str) -> PostgresStore {
    let store = PostgresStore::builder(pg.url())
        .table(pg.table(name))
        .build()
        .expect("valid settings");
    store.migrate().await.expect("create the table");
    store
}

/// Another store on the same table, as another server process would have.
fn sibling(pg: &TestPostgres, of: &PostgresStore) -> PostgresStore {
    PostgresStore::builder(pg.url())
        .table(of.table())
        .build()
        .expect("valid settings")
}

fn now() -> Timestamp {
    SystemClock.now()
}

fn fingerprint() -> Fingerprint {
    Fingerprint::new("POST", "/v1/calls", "", br#"{"to":"+15555550123"}"#)
}

fn key(n: u8) -> StoreKey {
    StoreKey::from_bytes([n; 32])
}

fn in_flight(at: Timestamp) -> InFlight {
    InFlight {
        fingerprint: fingerprint(),
        lease_until: at.saturating_add(LEASE),
        token: Token::random(),
    }
}

fn completed(at: Timestamp, body: &str) -> Completed {
    Completed {
        fingerprint: fingerprint(),
        response: Response::new(201, [("location", &b"/v1/calls/1"[..])], body.as_bytes()),
        completed_at: at,
        expires_at: at.saturating_add(TTL),
    }
}

/// A table for the operation's own writes, as an application has.
async fn calls_table(db: &PgPool, name: &str) -> String {
    let table = format!("{name}_calls");
    sqlx::raw_sql(&format!(
        "CREATE TABLE {table} (id text PRIMARY KEY, tenant text NOT NULL)"
    ))
    .execute(db)
    .await
    .expect("create the calls table");
    table
}

async fn calls(db: &PgPool, table: &str) -> i64 {
    sqlx::query_scalar(&format!("SELECT count(*) FROM {table}"))
        .fetch_one(db)
        .await
        .expect("count calls")
}

async fn rows(db: &PgPool, store: &PostgresStore) -> i64 {
    sqlx::query_scalar(&format!("SELECT count(*) FROM {}", store.table()))
        .fetch_one(db)
        .await
        .expect("count records")
}

async fn insert_call(tx: &mut idem_actix::ClaimTransaction, table: &str, id: &str) {
    sqlx::query(&format!(
        "INSERT INTO {table} (id, tenant) VALUES ($1, 't1')"
    ))
    .bind(id)
    .execute(tx.connection())
    .await
    .expect("the operation's write");
}

async fn claimed(
    store: &PostgresStore,
    k: StoreKey,
    at: Timestamp,
) -> idem_actix::ClaimTransaction {
    match store.claim_transaction(k, in_flight(at), at).await {
        Ok(TransactionalClaim::Claimed(tx)) => tx,
        other => panic!("expected a claim, got {other:?}"),
    }
}

/// A builder's `Debug` form shows no password, in the URL's user part (written unencoded, it
/// may hold `/`) or in its query (sqlx takes `password=` there too), where it showed the URL as
/// given.
#[test]
fn a_builder_s_debug_form_shows_no_password() {
    let secret = "S3cret";
    let shown: Vec<_> = [
        format!("postgres://idem:{secret}@127.0.0.1:5432/calls"),
        format!("postgres://idem:Ab/{secret}@127.0.0.1:5432/calls"),
        format!("postgres://idem@127.0.0.1:5432/calls?password={secret}"),
    ]
    .iter()
    .map(|url| format!("{:?}", PostgresStore::builder(url.as_str())))
    .collect();
    let leaks: Vec<_> = shown.iter().filter(|s| s.contains(secret)).collect();
    assert!(leaks.is_empty(), "{leaks:#?}");
    assert!(
        shown.iter().all(|s| s.contains("127.0.0.1:5432/calls")),
        "{shown:#?}"
    );
}

#[actix_web::test]
async fn postgres_store_conforms() {
    let Some(pg) = TestPostgres::start() else {
        return;
    };
    let store = store(&pg, "conformance").await;
    idem_core::testing::conformance(&store, 7).await;
}

/// Behind PgBouncer in session mode (each client connection keeps one server connection, so
/// the statements sqlx prepared on it are there), as the README says to run it behind a
/// pooler: the table migrated through it, and the whole suite.
#[actix_web::test]
async fn postgres_store_conforms_behind_pgbouncer_in_session_mode() {
    let Some(pg) = TestPostgres::start_owned() else {
        return;
    };
    let Some(bouncer) = TestPgBouncer::start(&pg) else {
        return;
    };
    let store = PostgresStore::builder(bouncer.url())
        .table(pg.table("behind_pgbouncer"))
        .build()
        .expect("valid settings");
    store
        .migrate()
        .await
        .expect("create the table through PgBouncer");
    idem_core::testing::conformance(&store, 7).await;
}

#[actix_web::test]
async fn a_missing_table_is_refused_and_says_to_migrate() {
    let Some(pg) = TestPostgres::start() else {
        return;
    };
    let store = PostgresStore::builder(pg.url())
        .table(pg.table("never_migrated"))
        .build()
        .unwrap();
    let err = store
        .claim(&key(1), in_flight(now()), now())
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Refused(_)), "{err:?}");
    assert!(err.to_string().contains("migrate()"), "{err}");
    store.migrate().await.unwrap();
    store.migrate().await.expect("migrating again is harmless");
    assert_eq!(
        store.claim(&key(1), in_flight(now()), now()).await.unwrap(),
        Claim::Claimed
    );
}

/// Failing open is for a Postgres that cannot be reached. One that answers and refuses (here
/// a table never migrated; a user without rights, or a full disk, alike) is a fault to fix,
/// and may hold the key: the request fails closed, rather than every request running
/// unprotected until someone reads the log.
#[actix_web::test]
async fn a_postgres_that_answers_but_refuses_fails_closed_even_when_failing_open() {
    let Some(pg) = TestPostgres::start() else {
        return;
    };
    let store = PostgresStore::builder(pg.url())
        .table(pg.table("never_migrated_open"))
        .fail_open(true)
        .build()
        .unwrap();
    let engine = Engine::new(store);
    let begun = engine.begin(&Policy::DEFAULT, key(1), fingerprint()).await;
    assert!(
        matches!(begun, Err(IdempotencyError::StoreUnavailable(_))),
        "{begun:?}"
    );
}

/// A store on `pg` (its table `table`) that fails open, on a pool of one connection, and its
/// engine, with key 1's first request running: its lease, which the caller keeps.
async fn one_connection_failing_open(
    pg: &TestPostgres,
    table: &str,
) -> (PostgresStore, Engine, idem_core::Lease) {
    let store = PostgresStore::builder(pg.url())
        .table(pg.table(table))
        .max_connections(1)
        .connect_timeout(Duration::from_millis(200))
        .fail_open(true)
        .build()
        .unwrap();
    store.migrate().await.expect("create the table");
    let engine = Engine::new(store.clone());
    let Ok(Begin::Execute(running)) = engine.begin(&Policy::DEFAULT, key(1), fingerprint()).await
    else {
        panic!("the first request runs")
    };
    (store, engine, running)
}

/// A pool whose every connection is in use (running `Transaction` handlers hold one each) has
/// reached Postgres, which may hold the key: a request that gets no connection in time fails
/// closed even when failing open, where it counted as a store that cannot be reached and ran
/// unprotected, a retry of the request still running included.
#[actix_web::test]
async fn a_pool_whose_every_connection_is_in_use_fails_closed_even_when_failing_open() {
    let Some(pg) = TestPostgres::start() else {
        return;
    };
    let (store, engine, _running) = one_connection_failing_open(&pg, "pool_in_use").await;
    // The pool's one connection, held as a running `Transaction` handler holds it.
    let held = store
        .transaction(key(1), Token::from_u128(7))
        .await
        .expect("the pool's one connection");
    let retry = engine.begin(&Policy::DEFAULT, key(1), fingerprint()).await;
    drop(held);
    match retry {
        Err(IdempotencyError::StoreUnavailable(StoreError::Refused(e))) => {
            assert!(
                e.to_string().contains("max_connections"),
                "says what to do: {e}"
            )
        }
        other => panic!("fails closed, not unprotected: {other:?}"),
    }
    let again = engine.begin(&Policy::DEFAULT, key(1), fingerprint()).await;
    assert!(
        matches!(again, Err(IdempotencyError::InFlight)),
        "with a connection free, the retry is told the first runs: {again:?}"
    );
}

/// A `Transaction` handler abandoned mid-statement (its client reset the connection) holds its
/// connection until its rollback ends, which waits for the statement to finish: until then
/// the pool's one connection is in use, and a retry that gets none fails closed as above,
/// where the connection counted as free from the drop on and the retry ran unprotected beside
/// the rollback.
#[actix_web::test]
async fn a_retry_while_an_abandoned_transaction_rolls_back_fails_closed_even_when_failing_open() {
    let Some(pg) = TestPostgres::start() else {
        return;
    };
    let (store, engine, _running) = one_connection_failing_open(&pg, "pool_rolling_back").await;
    let mut held = store
        .transaction(key(1), Token::from_u128(7))
        .await
        .expect("the pool's one connection");
    // The handler's statement, abandoned with it: its rollback waits for the statement's end.
    let statement = sqlx::query("SELECT pg_sleep(0.7)").execute(&mut *held);
    let abandoned = tokio::time::timeout(Duration::from_millis(50), statement).await;
    assert!(abandoned.is_err(), "the statement is still running");
    drop(held);
    let retry = engine.begin(&Policy::DEFAULT, key(1), fingerprint()).await;
    // Once the rollback ends, the connection is free again.
    refused_until_the_connection_is_back(&engine, retry, Duration::from_millis(900)).await;
}

/// A retry of key 1, answered `retry` while the pool's one connection was not back: refused
/// (failing closed), not run unprotected; and, `back` later, with the connection back, told
/// that the first request runs.
async fn refused_until_the_connection_is_back(
    engine: &Engine,
    retry: Result<Begin, IdempotencyError>,
    back: Duration,
) {
    assert!(
        matches!(
            retry,
            Err(IdempotencyError::StoreUnavailable(StoreError::Refused(_)))
        ),
        "fails closed while the connection is not back, not unprotected: {retry:?}"
    );
    tokio::time::sleep(back).await;
    let again = engine.begin(&Policy::DEFAULT, key(1), fingerprint()).await;
    assert!(
        matches!(again, Err(IdempotencyError::InFlight)),
        "with the connection back, the retry is told the first runs: {again:?}"
    );
}

/// A connection goes back to the pool only once sqlx has pinged it, one more round trip that
/// waits for any statement still running on it (here a renewal the command timeout gave up on
/// while it waited for a lock): until then the pool's one connection is taken, and a retry
/// that gets none in time fails closed, where the connection counted as free from the moment
/// the store let it go, and the retry ran unprotected beside the request still running.
#[actix_web::test]
async fn a_retry_while_a_connection_goes_back_to_the_pool_fails_closed_even_when_failing_open() {
    let Some(pg) = TestPostgres::start() else {
        return;
    };
    let store = PostgresStore::builder(pg.url())
        .table(pg.table("pool_returning"))
        .max_connections(1)
        .connect_timeout(Duration::from_millis(200))
        .command_timeout(Duration::from_millis(300))
        .fail_open(true)
        .build()
        .unwrap();
    store.migrate().await.expect("create the table");
    let engine = Engine::new(store.clone());
    let t = now();
    let claim = in_flight(t);
    assert_eq!(
        store.claim(&key(1), claim, t).await.unwrap(),
        Claim::Claimed
    );
    // The renewal waits on the lock, past the command timeout, and its connection with it.
    let db = pg.inspect().await;
    let blocker = table_locked(&db, store.table()).await;
    let renewed = store
        .extend(&key(1), claim.token, t.saturating_add(LEASE), t)
        .await;
    assert!(matches!(renewed, Err(StoreError::Timeout)), "{renewed:?}");
    let retry = engine.begin(&Policy::DEFAULT, key(1), fingerprint()).await;
    blocker.rollback().await.unwrap();
    refused_until_the_connection_is_back(&engine, retry, Duration::from_millis(300)).await;
}

/// **Limit.** A lock on the whole table (`LOCK TABLE`, `ALTER TABLE`, a `CREATE INDEX` without
/// `CONCURRENTLY`, `VACUUM FULL`) is taken as a claim's statement starts, before the claim's
/// own `lock_timeout` is set: the claim waits for it up to the command timeout, and is then
/// taken as a store that did not answer, which under `fail_open` runs the request unprotected.
#[actix_web::test]
async fn a_claim_behind_a_lock_on_the_whole_table_waits_out_the_command_timeout() {
    let Some(pg) = TestPostgres::start() else {
        return;
    };
    let store = PostgresStore::builder(pg.url())
        .table(pg.table("table_locked_open"))
        .command_timeout(Duration::from_millis(300))
        .fail_open(true)
        .build()
        .unwrap();
    store.migrate().await.expect("create the table");
    let engine = Engine::new(store.clone());
    let db = pg.inspect().await;
    let blocker = table_locked(&db, store.table()).await;
    let started = Instant::now();
    let begun = engine.begin(&Policy::DEFAULT, key(1), fingerprint()).await;
    let waited = started.elapsed();
    blocker.rollback().await.unwrap();
    assert!(
        matches!(begun, Ok(Begin::Unprotected(StoreError::Timeout))),
        "{begun:?}"
    );
    assert!(waited >= Duration::from_millis(300), "{waited:?}");
}

/// A pool that cannot connect counts the connections it is trying to open among its own, so
/// that with more requests waiting than it may open, it is full of attempts; but each attempt
/// ends with its request's time, before the time of any request that waits behind it: those
/// requests are told Postgres cannot be reached, and run unprotected when failing open, rather
/// than being refused as by a pool whose connections are in use.
#[actix_web::test]
async fn requests_waiting_on_a_pool_that_cannot_connect_fail_open_when_asked() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let store = PostgresStore::builder(format!("postgres://idem@127.0.0.1:{port}/idem"))
        .max_connections(2)
        .connect_timeout(Duration::from_millis(300))
        .fail_open(true)
        .build()
        .unwrap();
    let engine = Engine::new(store);
    // Requests at once, then more that keep coming, as in an outage under load: each waits
    // while earlier ones hold the pool's two places with their attempts to connect.
    let requests = (0..30u8).map(|n| {
        let engine = engine.clone();
        // A task each, as requests are served.
        actix_web::rt::spawn(async move {
            tokio::time::sleep(Duration::from_millis(50) * u32::from(n.saturating_sub(19))).await;
            engine.begin(&Policy::DEFAULT, key(n), fingerprint()).await
        })
    });
    let begun = join_all(requests).await;
    for (n, begun) in begun.into_iter().map(Result::unwrap).enumerate() {
        assert!(
            matches!(begun, Ok(Begin::Unprotected(StoreError::Unavailable(_)))),
            "request {n} fails open: {begun:?}"
        );
    }
}

/// A primary demoted by a failover (or a hot standby the pool reached first) answers every
/// write with SQLSTATE 25006, `read_only_sql_transaction`, until the pool reaches the new
/// primary: a store that cannot answer for its data for now, as Redis's `READONLY` and
/// `MASTERDOWN` are, not a refusal to fix. It fails closed by default and open when asked,
/// and nothing is written either way.
#[actix_web::test]
async fn a_read_only_postgres_after_a_failover_is_unavailable_and_fails_open_only_when_asked() {
    let Some(pg) = TestPostgres::start() else {
        return;
    };
    let writable = store(&pg, "read_only").await;
    let db = pg.inspect().await;
    // Every connection of these stores is read-only from its start, as on a standby.
    let read_only_url = url_with(&pg, "default_transaction_read_only%3Don");
    let read_only = |fail_open: bool| {
        PostgresStore::builder(read_only_url.as_str())
            .table(writable.table())
            .fail_open(fail_open)
            .build()
            .expect("valid settings")
    };

    let err = read_only(false)
        .claim(&key(1), in_flight(now()), now())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("read-only"), "{err}");
    assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");

    let closed = Engine::new(read_only(false));
    let begun = closed.begin(&Policy::DEFAULT, key(1), fingerprint()).await;
    assert!(
        matches!(begun, Err(IdempotencyError::StoreUnavailable(_))),
        "fails closed by default: {begun:?}"
    );
    let open = Engine::new(read_only(true));
    let begun = open.begin(&Policy::DEFAULT, key(1), fingerprint()).await;
    assert!(
        matches!(begun, Ok(Begin::Unprotected(StoreError::Unavailable(_)))),
        "fails open when asked: {begun:?}"
    );
    assert_eq!(rows(&db, &writable).await, 0, "nothing was written");
}

/// `n` claims of `k` at once, spread over `stores`: the claims, and the store's answers to
/// each.
async fn race(
    stores: &[PostgresStore],
    k: &StoreKey,
    n: usize,
    at: Timestamp,
) -> (Vec<InFlight>, Vec<Result<Claim, StoreError>>) {
    let claims: Vec<_> = (0..n).map(|_| in_flight(at)).collect();
    let answers = join_all(
        claims
            .iter()
            .enumerate()
            .map(|(i, c)| stores[i % stores.len()].claim(k, *c, at)),
    )
    .await;
    (claims, answers)
}

#[actix_web::test]
async fn sixty_four_concurrent_claims_of_one_key_have_one_winner() {
    let Some(pg) = TestPostgres::start() else {
        return;
    };
    let first = store(&pg, "race").await;
    // Four processes' stores, sixteen claims each, all at once.
    let stores: Vec<_> = (0..4).map(|_| sibling(&pg, &first)).collect();
    for round in 0..5u8 {
        let t = now();
        // A free key, then (round 4) a key whose claim has lapsed.
        let k = key(100 + round.min(3));
        let at = if round == 4 {
            t.saturating_add(LEASE * 2)
        } else {
            t
        };
        let (claims, answers) = race(&stores, &k, 64, at).await;
        let winners: Vec<_> = answers
            .iter()
            .zip(&claims)
            .filter(|(a, _)| matches!(a, Ok(Claim::Claimed)))
            .map(|(_, c)| *c)
            .collect();
        assert_eq!(winners.len(), 1, "round {round}: {answers:?}");
        for answer in answers {
            match answer.expect("every claim is answered") {
                Claim::Claimed => {}
                Claim::Existing(record) => assert_eq!(
                    record,
                    Record::InFlight(winners[0]),
                    "round {round}: the losers see the winner's claim"
                ),
            }
        }
    }
}

/// A database whose default isolation is REPEATABLE READ or SERIALIZABLE fails a statement
/// that meets a row committed after its snapshot (40001) rather than waiting on it: a claim
/// that lost such a race runs again on a new snapshot, and finds the winner's claim, as under
/// READ COMMITTED; it is neither refused nor answered as an outage.
#[actix_web::test]
async fn concurrent_claims_under_a_stricter_default_isolation_still_have_one_winner() {
    let Some(pg) = TestPostgres::start() else {
        return;
    };
    let first = store(&pg, "race_isolated").await;
    for (n, level, option) in [
        (110, "REPEATABLE READ", "repeatable%5C%20read"),
        (111, "SERIALIZABLE", "serializable"),
    ] {
        let url = url_with(&pg, &format!("default_transaction_isolation%3D{option}"));
        let stores: Vec<_> = (0..4)
            .map(|_| {
                PostgresStore::builder(url.as_str())
                    .table(first.table())
                    .build()
                    .expect("valid settings")
            })
            .collect();
        for round in 0..2u8 {
            let t = now();
            // A free key, then a key whose claim has lapsed.
            let k = key(n);
            let at = t.saturating_add(LEASE * 2 * u32::from(round));
            let (_, answers) = race(&stores, &k, 32, at).await;
            let winners = answers
                .iter()
                .filter(|a| matches!(a, Ok(Claim::Claimed)))
                .count();
            assert_eq!(winners, 1, "{level}, round {round}: {answers:?}");
            assert!(
                answers.iter().all(Result::is_ok),
                "{level}, round {round}: every claim is answered: {answers:?}"
            );
        }
    }
}

/// Under a default isolation of REPEATABLE READ or SERIALIZABLE, a renewal, a completion or
/// a release that waited on the key's row while another session changed it fails (40001)
/// where READ COMMITTED reads the row again: each runs again on a new snapshot and answers as
/// under READ COMMITTED, its own when the row was only touched, `false` when another token
/// took the key over; neither refused nor answered as an outage.
#[actix_web::test]
async fn renewals_completions_and_releases_under_a_stricter_default_isolation_answer_as_under_read_committed(
) {
    let Some(pg) = TestPostgres::start() else {
        return;
    };
    let first = store(&pg, "fenced_isolated").await;
    let db = pg.inspect().await;
    let mut n = 120;
    for (level, option) in [
        ("REPEATABLE READ", "repeatable%5C%20read"),
        ("SERIALIZABLE", "serializable"),
    ] {
        let store = PostgresStore::builder(
            url_with(&pg, &format!("default_transaction_isolation%3D{option}")).as_str(),
        )
        .table(first.table())
        .build()
        .expect("valid settings");
        for operation in ["extend", "complete", "release"] {
            for taken_over in [false, true] {
                n += 1;
                let (k, t) = (key(n), now());
                let claim = in_flight(t);
                assert_eq!(first.claim(&k, claim, t).await.unwrap(), Claim::Claimed);
                // Another session changes the row and holds it until it commits: the
                // token of a request that took the key over, or only the row's version.
                let mut writer = db.begin().await.unwrap();
                let token = if taken_over {
                    Token::random()
                } else {
                    claim.token
                };
                sqlx::query(&format!(
                    "UPDATE {} SET token = $2 WHERE key = $1",
                    first.table()
                ))
                .bind(k.as_bytes().to_vec())
                .bind(token.as_u128().to_be_bytes().to_vec())
                .execute(&mut *writer)
                .await
                .unwrap();
                let answer = {
                    let store = store.clone();
                    tokio::spawn(async move {
                        let t = now();
                        match operation {
                            "extend" => {
                                store
                                    .extend(&k, claim.token, t.saturating_add(LEASE), t)
                                    .await
                            }
                            "complete" => {
                                store
                                    .complete(&k, claim.token, completed(t, "call_1"), t)
                                    .await
                            }
                            _ => store.release(&k, claim.token).await,
                        }
                    })
                };
                waiting_on_a_lock(&db, first.table()).await;
                writer.commit().await.unwrap();
                let answer = answer.await.unwrap();
                assert!(
                    matches!(answer, Ok(done) if done != taken_over),
                    "{level}, {operation}, taken over: {taken_over}: {answer:?}"
                );
            }
        }
    }
}

#[actix_web::test]
async fn a_replay_is_one_statement_that_writes_nothing() {
    let Some(pg) = TestPostgres::start() else {
        return;
    };
    let store = store(&pg, "replay").await;
    let db = pg.inspect().await;
    let t = now();
    let claim = in_flight(t);
    assert_eq!(
        store.claim(&key(1), claim, t).await.unwrap(),
        Claim::Claimed
    );
    let record = completed(t, "first");
    assert!(store
        .complete(&key(1), claim.token, record.clone(), t)
        .await
        .unwrap());
    // xmin names the transaction that wrote the row's current version, xmax the last one
    // that locked it: a replay that locked the row would make its commit wait for the disk.
    let sql = format!(
        "SELECT xmin::text || ' ' || xmax::text FROM {} WHERE key = $1",
        store.table()
    );
    let version = || {
        sqlx::query_scalar::<_, String>(&sql)
            .bind(*key(1).as_bytes())
            .fetch_one(&db)
    };
    let before = version().await.unwrap();
    for _ in 0..3 {
        assert_eq!(
            store.claim(&key(1), in_flight(t), t).await.unwrap(),
            Claim::Existing(Record::Completed(record.clone()))
        );
    }
    assert_eq!(
        version().await.unwrap(),
        before,
        "a replay wrote or locked the row"
    );
}

/// A store named after `name` holding one completed record, under `key(1)`, recorded at the
/// time it returns; and a pool to change its rows by hand.
async fn one_record(pg: &TestPostgres, name: &str) -> (PostgresStore, PgPool, Timestamp) {
    let store = store(pg, name).await;
    let db = pg.inspect().await;
    let t = now();
    let claim = in_flight(t);
    store.claim(&key(1), claim, t).await.unwrap();
    let record = completed(t, "first");
    assert!(store
        .complete(&key(1), claim.token, record, t)
        .await
        .unwrap());
    (store, db, t)
}

/// A row whose status is no HTTP status (a foreign writer's) is a corrupt record, refused as
/// one, where it was replayed, and actix answered the replay 500.
#[actix_web::test]
async fn a_row_whose_status_is_no_http_status_is_corrupt() {
    let Some(pg) = TestPostgres::start() else {
        return;
    };
    let (store, db, t) = one_record(&pg, "status").await;
    for status in [42, 1000, 70_000, -1] {
        sqlx::query(&format!("UPDATE {} SET status = $1", store.table()))
            .bind(status)
            .execute(&db)
            .await
            .unwrap();
        let read = store.get(&key(1), t).await;
        assert!(
            matches!(&read, Err(StoreError::Corrupt(what)) if what.contains("status")),
            "{status}: {read:?}"
        );
    }
}

/// A row kept without its response (`omitted_size` set) that gives a negative size, or keeps
/// a body or headers all the same (a foreign writer's, or a damaged row), is a corrupt record,
/// refused as one, as the Redis store refuses those shapes; before, it was read as a record
/// kept without its body, its size taken as 0, and its retries told the endpoint keeps no
/// response.
#[actix_web::test]
async fn a_row_kept_without_its_response_that_holds_one_or_a_negative_size_is_corrupt() {
    let Some(pg) = TestPostgres::start() else {
        return;
    };
    let (store, db, t) = one_record(&pg, "omitted").await;
    let table = store.table();
    // In turn: its headers kept, then a negative size, then its body kept.
    for damage in [
        format!("UPDATE {table} SET omitted_size = 5, body = NULL"),
        format!("UPDATE {table} SET headers = '\\x0000'::bytea, omitted_size = -5"),
        format!("UPDATE {table} SET omitted_size = 5, body = 'kept'::bytea"),
    ] {
        sqlx::query(&damage).execute(&db).await.unwrap();
        let read = store.get(&key(1), t).await;
        assert!(
            matches!(&read, Err(StoreError::Corrupt(_))),
            "{damage}: {read:?}"
        );
    }
    // Kept without its response as the store writes one: read as such.
    let sound = format!("UPDATE {table} SET body = NULL");
    sqlx::query(&sound).execute(&db).await.unwrap();
    let read = store.get(&key(1), t).await.unwrap();
    let Some(Record::Completed(kept)) = read else {
        panic!("a record kept without its response: {read:?}")
    };
    assert_eq!(kept.response.body_omitted(), Some(5));
}

#[actix_web::test]
async fn a_committed_transaction_keeps_both_the_write_and_the_record() {
    let Some(pg) = TestPostgres::start() else {
        return;
    };
    let store = store(&pg, "commit").await;
    let db = pg.inspect().await;
    let table = calls_table(&db, store.table()).await;
    let t = now();
    let mut tx = claimed(&store, key(1), t).await;
    insert_call(&mut tx, &table, "call_1").await;
    assert_eq!(
        calls(&db, &table).await,
        0,
        "nothing is seen before the commit"
    );
    assert!(tx.commit(completed(t, "call_1")).await.unwrap());

    assert_eq!(calls(&db, &table).await, 1);
    let expected = Record::Completed(completed(t, "call_1"));
    assert_eq!(store.get(&key(1), t).await.unwrap(), Some(expected.clone()));
    // A retry, through another process's store, replays.
    let other = sibling(&pg, &store);
    match other
        .claim_transaction(key(1), in_flight(t), t)
        .await
        .unwrap()
    {
        TransactionalClaim::Existing(record) => assert_eq!(record, expected),
        TransactionalClaim::Claimed(_) => panic!("a completed key was claimed again"),
    }
}

#[actix_web::test]
async fn a_response_too_large_to_keep_commits_without_its_body() {
    let Some(pg) = TestPostgres::start() else {
        return;
    };
    let store = PostgresStore::builder(pg.url())
        .table(pg.table("too_large"))
        .max_record_bytes(1024)
        .build()
        .unwrap();
    store.migrate().await.unwrap();
    let t = now();
    // Through the store alone, the record is refused, as by every store.
    let claim = in_flight(t);
    store.claim(&key(1), claim, t).await.unwrap();
    let mut big = completed(t, "x");
    big.response = Response::new(201, [], &[b'x'; 2048]);
    let err = store
        .complete(&key(1), claim.token, big.clone(), t)
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::TooLarge { max: 1024, .. }),
        "{err}"
    );
    // In a transaction, the operation's writes commit, so the record is kept without its
    // body: retries learn it completed and never run it again.
    let tx = claimed(&store, key(2), t).await;
    assert!(tx.commit(big).await.unwrap());
    let Some(Record::Completed(kept)) = store.get(&key(2), t).await.unwrap() else {
        panic!("the record is kept");
    };
    assert_eq!(kept.response.status(), 201);
    assert_eq!(kept.response.body_omitted(), Some(2048));
    let engine = Engine::new(store.clone());
    let err = engine
        .begin(&Policy::DEFAULT, key(2), fingerprint())
        .await
        .unwrap_err();
    assert_eq!(err.code(), "idempotency_response_too_large");
}

#[actix_web::test]
async fn a_rolled_back_or_dropped_transaction_keeps_neither_and_the_retry_claims() {
    let Some(pg) = TestPostgres::start() else {
        return;
    };
    let store = store(&pg, "rollback").await;
    let db = pg.inspect().await;
    let table = calls_table(&db, store.table()).await;
    let t = now();

    let mut tx = claimed(&store, key(1), t).await;
    insert_call(&mut tx, &table, "call_1").await;
    assert!(tx.rollback().await.unwrap(), "the claim is released");
    assert_eq!(calls(&db, &table).await, 0);
    assert_eq!(store.get(&key(1), t).await.unwrap(), None);
    let tx = claimed(&store, key(1), t).await;
    drop(tx.rollback().await);

    // Dropped mid-run (a cancelled or panicking operation): rolled back and released in the
    // background.
    let mut tx = claimed(&store, key(2), t).await;
    insert_call(&mut tx, &table, "call_2").await;
    drop(tx);
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut retry = loop {
        match store
            .claim_transaction(key(2), in_flight(t), t)
            .await
            .unwrap()
        {
            TransactionalClaim::Claimed(tx) => break tx,
            TransactionalClaim::Existing(_) => {
                assert!(
                    Instant::now() < deadline,
                    "the dropped claim was not released"
                );
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    };
    assert_eq!(calls(&db, &table).await, 0);
    // The retry runs once, and its write is the only one.
    insert_call(&mut retry, &table, "call_2").await;
    assert!(retry.commit(completed(t, "call_2")).await.unwrap());
    assert_eq!(calls(&db, &table).await, 1);
}

/// A transaction whose opening is abandoned while its `BEGIN` awaits the answer (its request
/// went away, or the `BEGIN` timed out) leaves its connection in no transaction: the claim
/// that next runs there is committed, and other processes see it. The connection went back to
/// the pool inside the `BEGIN`, where the statements it ran next (claims, completions) were
/// never committed: a duplicate ran beside the claim, and the completion found no claim.
#[actix_web::test]
async fn a_transaction_abandoned_while_it_opens_leaves_no_transaction_to_swallow_the_next_claim() {
    let Some(pg) = TestPostgres::start() else {
        return;
    };
    let table = store(&pg, "abandoned").await.table().to_owned();
    // One connection, so that the next statement runs on the one the opening had.
    let store = PostgresStore::builder(pg.url())
        .table(table.as_str())
        .max_connections(1)
        .build()
        .unwrap();
    let other = sibling(&pg, &store);
    let t = now();
    assert_eq!(store.get(&key(1), t).await.unwrap(), None, "connected");
    for n in 1..=3 {
        let opening = store.transaction(key(n), Token::random());
        assert!(
            opening.now_or_never().is_none(),
            "the BEGIN awaits its answer"
        );
        let claim = in_flight(t);
        let claimed = store.claim(&key(n), claim, t).await.unwrap();
        assert!(matches!(claimed, Claim::Claimed), "{claimed:?}");
        match other.get(&key(n), t).await.unwrap() {
            Some(Record::InFlight(seen)) => assert_eq!(seen.token, claim.token),
            seen => panic!("claim {n}, committed, seen elsewhere as {seen:?}"),
        }
    }
}

#[actix_web::test]
async fn a_failed_write_fails_the_commit_and_leaves_nothing_behind() {
    let Some(pg) = TestPostgres::start() else {
        return;
    };
    let store = store(&pg, "failed").await;
    let db = pg.inspect().await;
    let table = calls_table(&db, store.table()).await;
    let t = now();
    let mut tx = claimed(&store, key(1), t).await;
    insert_call(&mut tx, &table, "call_1").await;
    // The same id again: Postgres aborts the transaction.
    let dup = sqlx::query(&format!(
        "INSERT INTO {table} (id, tenant) VALUES ('call_1', 't1')"
    ))
    .execute(tx.connection())
    .await;
    assert!(dup.is_err());
    let err = tx.commit(completed(t, "call_1")).await.unwrap_err();
    assert!(matches!(err, StoreError::Refused(_)), "{err:?}");
    assert_eq!(calls(&db, &table).await, 0);
    assert_eq!(store.get(&key(1), t).await.unwrap(), None, "claim released");
    let retry = claimed(&store, key(1), t).await;
    assert!(retry.rollback().await.unwrap());
}

/// A transaction's commit of a response whose status is no HTTP status (past 999: idem-core's
/// `Response` takes any `u16`) is refused: its write rolled back and the claim released, where
/// it committed a record that every retry then read as corrupt (503 until it expired).
#[actix_web::test]
async fn a_commit_of_a_status_that_is_no_http_status_is_refused_and_leaves_nothing_behind() {
    let Some(pg) = TestPostgres::start() else {
        return;
    };
    let store = store(&pg, "no_status").await;
    let db = pg.inspect().await;
    let table = calls_table(&db, store.table()).await;
    let t = now();
    let mut tx = claimed(&store, key(1), t).await;
    insert_call(&mut tx, &table, "call_1").await;
    let mut record = completed(t, "call_1");
    record.response = Response::new(1000, [], b"call_1");
    let err = tx.commit(record).await.unwrap_err();
    assert!(matches!(err, StoreError::Refused(_)), "{err:?}");
    assert!(err.to_string().contains("no HTTP status"), "{err}");
    assert_eq!(calls(&db, &table).await, 0);
    assert_eq!(store.get(&key(1), t).await.unwrap(), None, "claim released");
}

/// A caller that ends the claim's transaction itself (`COMMIT`, then a `BEGIN` of its own)
/// has committed its write apart: the commit records nothing in the transaction left open,
/// rolls that back and releases the claim, and says why, where it recorded the response as
/// if the transaction had been the claim's.
#[actix_web::test]
async fn a_commit_after_the_caller_ended_the_transaction_records_nothing_and_says_why() {
    let Some(pg) = TestPostgres::start() else {
        return;
    };
    let store = store(&pg, "ended").await;
    let db = pg.inspect().await;
    let table = calls_table(&db, store.table()).await;
    let t = now();
    let mut tx = claimed(&store, key(1), t).await;
    insert_call(&mut tx, &table, "call_1").await;
    sqlx::raw_sql("COMMIT; BEGIN")
        .execute(tx.connection())
        .await
        .unwrap();
    insert_call(&mut tx, &table, "call_2").await;
    let err = tx.commit(completed(t, "call_1")).await.unwrap_err();
    assert!(
        matches!(&err, StoreError::Refused(source) if source.is::<TransactionEnded>()),
        "{err:?}"
    );
    assert_eq!(
        calls(&db, &table).await,
        1,
        "what the caller committed stands"
    );
    assert_eq!(store.get(&key(1), t).await.unwrap(), None, "claim released");
    assert_eq!(rows(&db, &store).await, 0);
}

/// `RESET ALL` in the claim's transaction clears the mark its `BEGIN` set, as a transaction
/// ended and begun anew would have none: the commit cannot tell the two apart, so it records
/// nothing, rolls back what the transaction holds, releases the key, and its error names
/// both causes.
#[actix_web::test]
async fn a_commit_after_the_caller_reset_the_transaction_s_settings_records_nothing_and_says_why() {
    let Some(pg) = TestPostgres::start() else {
        return;
    };
    let store = store(&pg, "reset").await;
    let db = pg.inspect().await;
    let table = calls_table(&db, store.table()).await;
    let t = now();
    let mut tx = claimed(&store, key(1), t).await;
    insert_call(&mut tx, &table, "call_1").await;
    sqlx::raw_sql("RESET ALL")
        .execute(tx.connection())
        .await
        .unwrap();
    let err = tx.commit(completed(t, "call_1")).await.unwrap_err();
    assert!(
        matches!(&err, StoreError::Refused(source) if source.is::<TransactionEnded>()),
        "{err:?}"
    );
    assert!(err.to_string().contains("RESET ALL"), "{err}");
    assert_eq!(calls(&db, &table).await, 0, "the write was rolled back");
    assert_eq!(store.get(&key(1), t).await.unwrap(), None, "claim released");
}

#[actix_web::test]
async fn a_duplicate_during_the_transaction_gets_in_flight_at_once() {
    let Some(pg) = TestPostgres::start() else {
        return;
    };
    let store = store(&pg, "duplicate").await;
    let db = pg.inspect().await;
    let table = calls_table(&db, store.table()).await;
    // Generous timeouts: a duplicate blocked on a lock would show as a slow answer, not as
    // a timeout.
    let other = PostgresStore::builder(pg.url())
        .table(store.table())
        .command_timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let t = now();
    let claim = in_flight(t);
    let mut tx = match store.claim_transaction(key(1), claim, t).await.unwrap() {
        TransactionalClaim::Claimed(tx) => tx,
        TransactionalClaim::Existing(r) => panic!("{r:?}"),
    };
    insert_call(&mut tx, &table, "call_1").await;

    for _ in 0..3 {
        let started = Instant::now();
        let answer = other.claim(&key(1), in_flight(t), t).await.unwrap();
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "the duplicate waited {:?}",
            started.elapsed()
        );
        assert_eq!(answer, Claim::Existing(Record::InFlight(claim)));
    }
    // Through the engine, that is the layer's 409.
    let err = Engine::new(other.clone())
        .begin(&Policy::DEFAULT, key(1), fingerprint())
        .await
        .unwrap_err();
    assert!(matches!(err, IdempotencyError::InFlight), "{err:?}");
    // The lease's renewals are not held up either.
    let started = Instant::now();
    let renewed = t.saturating_add(LEASE * 2);
    assert!(other
        .extend(&key(1), claim.token, renewed, t)
        .await
        .unwrap());
    assert!(started.elapsed() < Duration::from_secs(1));

    assert!(tx.commit(completed(t, "call_1")).await.unwrap());
    assert!(matches!(
        other.claim(&key(1), in_flight(t), t).await.unwrap(),
        Claim::Existing(Record::Completed(_))
    ));
}

#[actix_web::test]
async fn a_commit_after_a_takeover_is_rolled_back_and_the_new_holder_runs() {
    let Some(pg) = TestPostgres::start() else {
        return;
    };
    let store = store(&pg, "takeover").await;
    let db = pg.inspect().await;
    let table = calls_table(&db, store.table()).await;
    let t = now();
    let mut stale = claimed(&store, key(1), t).await;
    insert_call(&mut stale, &table, "call_stale").await;
    // The stale holder's lease lapsed without renewal, and a retry took the key over.
    let later = t.saturating_add(LEASE + Duration::from_secs(1));
    let mut fresh = claimed(&store, key(1), later).await;
    assert!(!stale.commit(completed(later, "stale")).await.unwrap());
    assert_eq!(calls(&db, &table).await, 0, "the stale run left nothing");
    assert!(matches!(
        store.get(&key(1), later).await.unwrap(),
        Some(Record::InFlight(f)) if f.token == fresh.token()
    ));
    insert_call(&mut fresh, &table, "call_fresh").await;
    assert!(fresh.commit(completed(later, "fresh")).await.unwrap());
    assert_eq!(calls(&db, &table).await, 1);
}

#[actix_web::test]
async fn a_commit_after_the_purge_deleted_its_lapsed_claim_writes_nothing_and_says_nobody_holds_the_key(
) {
    let Some(pg) = TestPostgres::start() else {
        return;
    };
    let store = store(&pg, "purged").await;
    let db = pg.inspect().await;
    let table = calls_table(&db, store.table()).await;
    let t = now();
    let mut stale = claimed(&store, key(1), t).await;
    insert_call(&mut stale, &table, "call_stale").await;
    // Unrenewed through an outage, the lease and its grace went by, and the purge deleted it.
    let later = t.saturating_add(LEASE + LAPSED_CLAIM_GRACE);
    assert_eq!(store.purge_expired(later).await.unwrap(), 1);
    let err = stale.commit(completed(later, "stale")).await.unwrap_err();
    assert!(
        matches!(&err, StoreError::Unavailable(source) if source.is::<ClaimGone>()),
        "no takeover, so not Ok(false): {err:?}"
    );
    assert_eq!(calls(&db, &table).await, 0, "the stale run left nothing");
    assert_eq!(rows(&db, &store).await, 0, "and nothing holds the key");
    let mut retry = claimed(&store, key(1), later).await;
    insert_call(&mut retry, &table, "call_retry").await;
    assert!(retry.commit(completed(later, "retry")).await.unwrap());
    assert_eq!(calls(&db, &table).await, 1, "the retry ran once");
}

#[actix_web::test]
async fn a_run_whose_connection_dies_leaves_nothing_and_the_key_is_taken_over_after_its_lease() {
    let Some(pg) = TestPostgres::start() else {
        return;
    };
    let store = store(&pg, "killed").await;
    let db = pg.inspect().await;
    let table = calls_table(&db, store.table()).await;
    let t = now();
    let mut tx = claimed(&store, key(1), t).await;
    insert_call(&mut tx, &table, "call_1").await;
    let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(tx.connection())
        .await
        .unwrap();
    // The process is gone: nothing rolls back or releases on its side, and Postgres sees
    // its connection end.
    std::mem::forget(tx);
    let ended: bool = sqlx::query_scalar("SELECT pg_terminate_backend($1)")
        .bind(pid)
        .fetch_one(&db)
        .await
        .unwrap();
    assert!(ended);
    assert_eq!(
        calls(&db, &table).await,
        0,
        "Postgres aborted the transaction"
    );
    assert!(
        matches!(
            store.claim(&key(1), in_flight(t), t).await.unwrap(),
            Claim::Existing(Record::InFlight(_))
        ),
        "the claim holds until its lease lapses"
    );
    let later = t.saturating_add(LEASE);
    let mut retry = claimed(&store, key(1), later).await;
    insert_call(&mut retry, &table, "call_1").await;
    assert!(retry.commit(completed(later, "call_1")).await.unwrap());
    assert_eq!(calls(&db, &table).await, 1, "the retry ran once");
}

#[actix_web::test]
async fn the_engine_s_lease_and_a_transaction_record_the_operation_together() {
    let Some(pg) = TestPostgres::start() else {
        return;
    };
    let store = store(&pg, "engine").await;
    let db = pg.inspect().await;
    let table = calls_table(&db, store.table()).await;
    let engine = Engine::new(store.clone());
    let policy = Policy::DEFAULT.ttl(TTL);
    let Ok(Begin::Execute(lease)) = engine.begin(&policy, key(1), fingerprint()).await else {
        panic!("a new key is claimed");
    };
    let mut tx = store.transaction(lease.key(), lease.token()).await.unwrap();
    insert_call(&mut tx, &table, "call_1").await;
    let at = engine.clock().now();
    assert!(tx.commit(completed(at, "call_1")).await.unwrap());
    // The lease, dropped after the commit, finds no claim to release.
    drop(lease);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let Ok(Begin::Replay(first)) = engine.begin(&policy, key(1), fingerprint()).await else {
        panic!("the committed record is replayed");
    };
    assert_eq!(&first.response.body()[..], b"call_1");
    assert_eq!(calls(&db, &table).await, 1);
}

#[actix_web::test]
async fn lapsed_rows_are_purged_in_bounded_batches() {
    let Some(pg) = TestPostgres::start() else {
        return;
    };
    let store = PostgresStore::builder(pg.url())
        .table(pg.table("purge"))
        .purge_interval(None)
        .purge_batch(10)
        .build()
        .unwrap();
    store.migrate().await.unwrap();
    let db = pg.inspect().await;
    let t = now();
    // 25 records that expire at t + TTL, 5 claims whose lease ends at t + LEASE, 5 records
    // that live on.
    for n in 0..25 {
        let claim = in_flight(t);
        store.claim(&key(n), claim, t).await.unwrap();
        assert!(store
            .complete(&key(n), claim.token, completed(t, "old"), t)
            .await
            .unwrap());
    }
    for n in 25..30 {
        store.claim(&key(n), in_flight(t), t).await.unwrap();
    }
    let far = t.saturating_add(TTL * 10);
    for n in 30..35 {
        let claim = in_flight(far);
        store.claim(&key(n), claim, far).await.unwrap();
        assert!(store
            .complete(&key(n), claim.token, completed(far, "new"), far)
            .await
            .unwrap());
    }
    assert_eq!(rows(&db, &store).await, 35);

    // Lapsed claims stay through their grace, so that a slow holder can still finish.
    let lapsed = t.saturating_add(LEASE);
    assert_eq!(store.purge_expired(lapsed).await.unwrap(), 0);
    assert_eq!(
        store.get(&key(25), lapsed).await.unwrap(),
        None,
        "lapsed is absent"
    );
    // Each purge statement counted, by a trigger that runs once per statement.
    let counter = pg.table("purge_statements");
    sqlx::raw_sql(&format!(
        "CREATE TABLE {counter} (n int NOT NULL);
         INSERT INTO {counter} VALUES (0);
         CREATE FUNCTION {counter}() RETURNS trigger LANGUAGE plpgsql AS
           $$ BEGIN UPDATE {counter} SET n = n + 1; RETURN NULL; END $$;
         CREATE TRIGGER counted AFTER DELETE ON {} FOR EACH STATEMENT
           EXECUTE FUNCTION {counter}();",
        store.table()
    ))
    .execute(&db)
    .await
    .expect("count the purge's statements");
    let after_ttl = t.saturating_add(TTL);
    assert_eq!(store.purge_expired(after_ttl).await.unwrap(), 30);
    assert_eq!(rows(&db, &store).await, 5);
    let statements: i32 = sqlx::query_scalar(&format!("SELECT n FROM {counter}"))
        .fetch_one(&db)
        .await
        .unwrap();
    assert_eq!(
        statements, 4,
        "30 rows in batches of 10: three full statements and one that found none"
    );
    assert!(store.get(&key(30), after_ttl).await.unwrap().is_some());

    // On its own: a claim starts a purge judged by its time.
    let auto = PostgresStore::builder(pg.url())
        .table(store.table())
        .purge_interval(Some(Duration::from_millis(1)))
        .purge_batch(2)
        .build()
        .unwrap();
    let end = far.saturating_add(TTL);
    auto.claim(&key(200), in_flight(end), end).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while rows(&db, &store).await != 1 {
        assert!(
            Instant::now() < deadline,
            "the store did not purge by itself"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The store's own purge keeps up with rows that lapse faster than one run deletes (64
/// batches): after a run that stopped at that bound, a claim a second later starts another,
/// where it waited a whole `purge_interval`, so that past 64 batches an interval (64,000 rows
/// a minute by default) the table grew without bound.
#[actix_web::test]
async fn a_purge_that_stops_at_its_bound_is_taken_up_a_second_later() {
    let Some(pg) = TestPostgres::start() else {
        return;
    };
    let table = pg.table("purge_bound");
    let store = PostgresStore::builder(pg.url())
        .table(table.clone())
        .purge_interval(None)
        .build()
        .unwrap();
    store.migrate().await.unwrap();
    let db = pg.inspect().await;
    let t = now();
    for n in 0..1000u32 {
        let mut bytes = [0; 32];
        bytes[..4].copy_from_slice(&n.to_be_bytes());
        let key = StoreKey::from_bytes(bytes);
        store.claim(&key, in_flight(t), t).await.unwrap();
    }
    // An hour on, long past their grace: 640 rows a run, and the interval an hour.
    let later = t.saturating_add(TTL);
    let auto = PostgresStore::builder(pg.url())
        .table(table)
        .purge_interval(Some(Duration::from_secs(3600)))
        .purge_batch(10)
        .build()
        .unwrap();
    let mut claims = 0;
    let deadline = Instant::now() + Duration::from_secs(10);
    while rows(&db, &store).await != claims {
        assert!(
            Instant::now() < deadline,
            "lapsed rows left for the next interval: {}",
            rows(&db, &store).await - claims
        );
        // Keys of their own, none of the lapsed ones'.
        let mut bytes = [0xAB; 32];
        bytes[0] = claims as u8;
        let fresh = StoreKey::from_bytes(bytes);
        auto.claim(&fresh, in_flight(later), later).await.unwrap();
        claims += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[actix_web::test]
async fn a_statement_past_the_command_timeout_is_a_timeout_and_the_store_goes_on() {
    let Some(pg) = TestPostgres::start() else {
        return;
    };
    let store = PostgresStore::builder(pg.url())
        .table(pg.table("slow"))
        .command_timeout(Duration::from_millis(200))
        .build()
        .unwrap();
    store.migrate().await.unwrap();
    let db = pg.inspect().await;
    // Another session holds the table, so that the store's statements wait on it.
    let blocker = table_locked(&db, store.table()).await;
    let started = Instant::now();
    let err = store
        .claim(&key(1), in_flight(now()), now())
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Timeout), "{err:?}");
    assert!(started.elapsed() < Duration::from_secs(2));
    // Through the engine, that is the layer's 503.
    let err = Engine::new(store.clone())
        .begin(&Policy::DEFAULT, key(2), fingerprint())
        .await
        .unwrap_err();
    assert_eq!(
        (err.status(), err.code()),
        (503, "idempotency_store_unavailable")
    );

    blocker.rollback().await.unwrap();
    let t = now();
    assert_eq!(
        store.claim(&key(3), in_flight(t), t).await.unwrap(),
        Claim::Claimed
    );
}

/// A store on a table of its own named `table` (reached directly), a [`LosingProxy`] in front
/// of `pg`, and a store on the same table through it.
async fn behind_a_losing_proxy(
    pg: &TestPostgres,
    table: &str,
) -> (PostgresStore, LosingProxy, PostgresStore) {
    let direct = store(pg, table).await;
    let (proxy, through) = LosingProxy::in_front_of(pg.url());
    let store = PostgresStore::builder(through)
        .table(direct.table())
        .build()
        .expect("valid settings");
    (direct, proxy, store)
}

/// A completion whose answer was lost (Postgres committed it, and the connection broke before
/// its answer came back) runs again on another connection, as a statement on a closed
/// connection does, and answers that it completed: it finds the record it wrote, where it
/// answered that the claim was not found (the engine then read the record back to tell). A
/// different record is still refused: a completed record is final.
#[actix_web::test]
async fn a_completion_whose_answer_was_lost_runs_again_and_finds_the_record_it_wrote() {
    let Some(pg) = TestPostgres::start() else {
        return;
    };
    let (direct, proxy, store) = behind_a_losing_proxy(&pg, "lost_answer").await;
    let t = now();
    let claim = in_flight(t);
    assert_eq!(
        store.claim(&key(1), claim, t).await.unwrap(),
        Claim::Claimed
    );

    proxy.lose_answer_to("SET kind = 'C'");
    let record = completed(t, "call_1");
    let done = store
        .complete(&key(1), claim.token, record.clone(), t)
        .await;
    assert_eq!(proxy.lost(), 1, "the completion's answer was lost");
    assert!(done.unwrap(), "the completion found the record it wrote");
    assert_eq!(
        direct.get(&key(1), t).await.unwrap(),
        Some(Record::Completed(record))
    );
    assert!(
        !store
            .complete(&key(1), claim.token, completed(t, "another"), t)
            .await
            .unwrap(),
        "a completed record is final"
    );
}

/// A transactional claim whose answer was lost (Postgres committed it) runs again on another
/// connection and finds the claim it wrote, its own token's: that is its claim, and its
/// transaction opens. It answered that another request held the key (409), and the claim,
/// held by nobody, kept the key from every retry until its lease lapsed.
#[actix_web::test]
async fn a_transactional_claim_whose_answer_was_lost_opens_its_transaction() {
    let Some(pg) = TestPostgres::start() else {
        return;
    };
    let (direct, proxy, store) = behind_a_losing_proxy(&pg, "lost_claim").await;
    let t = now();
    let claim = in_flight(t);
    proxy.lose_answer_to("WITH seen AS");
    let claimed = store.claim_transaction(key(1), claim, t).await;
    assert_eq!(proxy.lost(), 1, "the claim's answer was lost");
    let Ok(TransactionalClaim::Claimed(tx)) = claimed else {
        panic!("the claim is this request's: {:?}", claimed.err())
    };
    let record = completed(t, "call_1");
    tx.commit(record.clone()).await.unwrap();
    assert_eq!(
        direct.get(&key(1), t).await.unwrap(),
        Some(Record::Completed(record))
    );
}

/// A transactional claim that timed out may still land, once its commit, slow, ends: nobody
/// would hold it, and the key would answer 409 until its lease lapsed. Its release is tried
/// again until it finds the claim or the store has twice said nothing is there, as the
/// engine's is; tried once, as the commit was still under way, it found nothing and the claim
/// stayed.
#[actix_web::test]
async fn a_transactional_claim_that_timed_out_and_landed_later_is_released() {
    let Some(pg) = TestPostgres::start() else {
        return;
    };
    let created = store(&pg, "late_claim").await;
    let db = pg.inspect().await;
    // Commits that take a second, as behind a synchronous standby that lags.
    let table = created.table();
    sqlx::raw_sql(&format!(
        "CREATE FUNCTION {table}_slow() RETURNS trigger LANGUAGE plpgsql AS
           $$ BEGIN PERFORM pg_sleep(1); RETURN NULL; END $$;
         CREATE CONSTRAINT TRIGGER slow AFTER INSERT ON {table}
           DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION {table}_slow();"
    ))
    .execute(&db)
    .await
    .unwrap();
    let store = PostgresStore::builder(pg.url())
        .table(table)
        .command_timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let t = now();
    let claimed = store.claim_transaction(key(1), in_flight(t), t).await;
    assert!(
        matches!(
            claimed,
            Err(StoreError::Timeout | StoreError::Unavailable(_))
        ),
        "{:?}",
        claimed.err()
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    while rows(&db, &store).await != 0 {
        assert!(
            Instant::now() < deadline,
            "the claim that landed was never released"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `claim` of `key(1)` written into `store`'s table in a transaction left open: a first
/// request's claim whose commit has not come yet.
async fn uncommitted_claim(
    db: &PgPool,
    store: &PostgresStore,
    claim: InFlight,
) -> sqlx::Transaction<'static, sqlx::Postgres> {
    let mut uncommitted = db.begin().await.unwrap();
    sqlx::query(&format!(
        "INSERT INTO {} (key, kind, token, fingerprint, lapses_at, purge_at)
         VALUES ($1, 'F', $2, $3, $4, $4)",
        store.table()
    ))
    .bind(key(1).as_bytes().as_slice())
    .bind(claim.token.as_u128().to_be_bytes().as_slice())
    .bind(fingerprint().as_bytes().as_slice())
    .bind(i64::try_from(claim.lease_until.as_millis()).unwrap())
    .execute(&mut *uncommitted)
    .await
    .unwrap();
    uncommitted
}

/// `pg`'s URL with a setting for every connection made with it, as a role's or a database's
/// defaults (`ALTER ROLE ... SET`) would give it: `setting` is URL-encoded.
fn url_with(pg: &TestPostgres, setting: &str) -> String {
    let sep = if pg.url().contains('?') { '&' } else { '?' };
    format!("{}{sep}options=-c%20{setting}", pg.url())
}

/// A transaction of `db` that holds `table` locked, so that every statement on it waits until
/// the transaction ends.
async fn table_locked(db: &PgPool, table: &str) -> sqlx::Transaction<'static, sqlx::Postgres> {
    let mut blocker = db.begin().await.unwrap();
    sqlx::raw_sql(&format!("LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE"))
        .execute(&mut *blocker)
        .await
        .unwrap();
    blocker
}

/// The backend of the store's statement on `table` that waits on a lock (another session's
/// row or table), once it does.
async fn waiting_on_a_lock(db: &PgPool, table: &str) -> i32 {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let pid: Option<i32> = sqlx::query_scalar(
            "SELECT pid FROM pg_stat_activity
             WHERE application_name = 'idem' AND wait_event_type = 'Lock'
               AND query LIKE '%' || $1 || '%'",
        )
        .bind(table)
        .fetch_optional(db)
        .await
        .expect("look at the sessions");
        if let Some(pid) = pid {
            return pid;
        }
        assert!(
            Instant::now() < deadline,
            "the store's statement never waited on the lock"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A statement that Postgres cancels (SQLSTATE 57014, `query_canceled`: its
/// `statement_timeout` fired, or an administrator ran `pg_cancel_backend`) is rolled back and
/// changed nothing, as one past the store's own command timeout: an outage to ride out, not a
/// refusal to fix, and the claim it left alone is still held afterwards. Every operation but
/// the claim answers it as unavailable. A cancelled claim may have been waiting on another
/// claim of its key, not yet committed (see the next test): Postgres answered, and the key
/// may be taken, so it fails closed even when failing open.
#[actix_web::test]
async fn a_statement_postgres_cancels_is_unavailable_and_a_cancelled_claim_fails_closed() {
    let Some(pg) = TestPostgres::start() else {
        return;
    };
    let held = store(&pg, "cancelled").await;
    let db = pg.inspect().await;
    let t = now();
    let claim = in_flight(t);
    assert_eq!(held.claim(&key(1), claim, t).await.unwrap(), Claim::Claimed);
    // Postgres's timeout ends each statement long before the store's own would.
    let url = url_with(&pg, "statement_timeout%3D100");
    let cancelling = |fail_open: bool| {
        PostgresStore::builder(url.as_str())
            .table(held.table())
            .command_timeout(Duration::from_secs(30))
            .fail_open(fail_open)
            .build()
            .expect("valid settings")
    };
    let store = cancelling(false);
    // Another session holds the table, so that every statement of the store's waits on it.
    let blocker = table_locked(&db, held.table()).await;

    let t = now();
    let err = store.claim(&key(2), in_flight(t), t).await.unwrap_err();
    assert!(matches!(err, StoreError::Refused(_)), "claim: {err:?}");
    assert!(err.to_string().contains("statement timeout"), "{err}");
    let answers = [
        ("get", store.get(&key(1), t).await.err()),
        (
            "extend",
            store
                .extend(&key(1), claim.token, t.saturating_add(LEASE), t)
                .await
                .err(),
        ),
        (
            "complete",
            store
                .complete(&key(1), claim.token, completed(t, "call_1"), t)
                .await
                .err(),
        ),
        ("release", store.release(&key(1), claim.token).await.err()),
    ];
    for (operation, err) in answers {
        let err = err.unwrap_or_else(|| panic!("{operation} was answered"));
        assert!(
            matches!(err, StoreError::Unavailable(_)),
            "{operation}: {err:?}"
        );
        assert!(err.to_string().contains("statement timeout"), "{err}");
    }

    let err = Engine::new(cancelling(false))
        .begin(&Policy::DEFAULT, key(3), fingerprint())
        .await
        .unwrap_err();
    assert_eq!(
        (err.status(), err.code()),
        (503, "idempotency_store_unavailable"),
        "fails closed by default"
    );
    assert!(err.retry_after().is_some(), "{err:?}");
    let begun = Engine::new(cancelling(true))
        .begin(&Policy::DEFAULT, key(3), fingerprint())
        .await;
    assert!(
        matches!(
            begun,
            Err(IdempotencyError::StoreUnavailable(StoreError::Refused(_)))
        ),
        "a cancelled claim fails closed even when failing open: {begun:?}"
    );

    blocker.rollback().await.unwrap();
    assert_eq!(
        held.get(&key(1), now()).await.unwrap(),
        Some(Record::InFlight(claim)),
        "the cancelled renewal, completion and release left the claim as it was"
    );
    assert_eq!(
        rows(&db, &held).await,
        1,
        "the cancelled claims wrote nothing"
    );
}

/// A statement that waited for a lock longer than the session's `lock_timeout` (SQLSTATE
/// 55P03) is rolled back as a cancelled one is, and answered alike: unavailable, and a claim
/// refused.
#[actix_web::test]
async fn a_statement_past_its_lock_timeout_is_unavailable_and_a_claim_refused() {
    let Some(pg) = TestPostgres::start() else {
        return;
    };
    let store = store(&pg, "lock_timed_out").await;
    let db = pg.inspect().await;
    let url = url_with(&pg, "lock_timeout%3D100");
    let waiting = PostgresStore::builder(url.as_str())
        .table(store.table())
        .command_timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let blocker = table_locked(&db, store.table()).await;
    let t = now();
    let err = waiting.claim(&key(1), in_flight(t), t).await.unwrap_err();
    assert!(matches!(err, StoreError::Refused(_)), "{err:?}");
    assert!(err.to_string().contains("lock timeout"), "{err}");
    let err = waiting.get(&key(1), t).await.unwrap_err();
    assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");
    assert!(err.to_string().contains("lock timeout"), "{err}");
    blocker.rollback().await.unwrap();
    assert_eq!(rows(&db, &store).await, 0, "the claim wrote nothing");
}

/// An administrator's `pg_cancel_backend` of a claim of the store's that waits on a lock is
/// answered as a `statement_timeout` is: the claim is refused.
#[actix_web::test]
async fn a_claim_an_administrator_cancels_is_refused() {
    let Some(pg) = TestPostgres::start() else {
        return;
    };
    let store = store(&pg, "cancelled_by_hand").await;
    let db = pg.inspect().await;
    let blocker = table_locked(&db, store.table()).await;
    let slow = PostgresStore::builder(pg.url())
        .table(store.table())
        .command_timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let t = now();
    let claim = tokio::spawn(async move { slow.claim(&key(1), in_flight(t), t).await });
    let pid = waiting_on_a_lock(&db, store.table()).await;
    let cancelled: bool = sqlx::query_scalar("SELECT pg_cancel_backend($1)")
        .bind(pid)
        .fetch_one(&db)
        .await
        .unwrap();
    assert!(cancelled);
    let err = claim.await.unwrap().unwrap_err();
    assert!(matches!(err, StoreError::Refused(_)), "{err:?}");
    assert!(err.to_string().contains("user request"), "{err}");
    blocker.rollback().await.unwrap();
    assert_eq!(
        rows(&db, &store).await,
        0,
        "the cancelled claim wrote nothing"
    );
}

/// Two first requests of one key at the same moment: the second's claim waits on the first's
/// row, written but not yet committed, and Postgres cancels it there (its `lock_timeout`).
/// Failing open would run the operation beside the first; the request fails closed instead,
/// and once the first commits, the key is the first's.
#[actix_web::test]
async fn a_claim_cancelled_while_waiting_on_another_claim_of_its_key_fails_closed_even_when_failing_open(
) {
    let Some(pg) = TestPostgres::start() else {
        return;
    };
    let first = store(&pg, "claim_waits").await;
    let db = pg.inspect().await;
    let url = url_with(&pg, "lock_timeout%3D100");
    let second = Engine::new(
        PostgresStore::builder(url.as_str())
            .table(first.table())
            .command_timeout(Duration::from_secs(30))
            .fail_open(true)
            .build()
            .unwrap(),
    );
    // The first request's claim, written and not yet committed.
    let t = now();
    let claim = in_flight(t);
    let uncommitted = uncommitted_claim(&db, &first, claim).await;

    let begun = second.begin(&Policy::DEFAULT, key(1), fingerprint()).await;
    let Err(err) = begun else {
        panic!("the second request ran beside the first: {begun:?}");
    };
    assert_eq!(
        (err.status(), err.code()),
        (503, "idempotency_store_unavailable")
    );
    assert!(
        matches!(
            &err,
            IdempotencyError::StoreUnavailable(StoreError::Refused(why))
                if why.to_string().contains("lock timeout")
        ),
        "{err:?}"
    );

    uncommitted.commit().await.unwrap();
    assert_eq!(
        first.get(&key(1), now()).await.unwrap(),
        Some(Record::InFlight(claim)),
        "the key is the first request's"
    );
}

/// The same two first requests, on a Postgres with no `lock_timeout` of its own, the first's
/// commit stalled past the store's command timeout (a disk or a synchronous standby that
/// does not answer). The second's claim waits on the first's row: the store's own lock
/// timeout, set for its claims below the command timeout, has Postgres cancel it, and it
/// fails closed, where the command timeout ended it unanswered, as an unreachable store, and
/// failing open ran the operation beside the first.
#[actix_web::test]
async fn a_claim_waiting_on_another_claim_of_its_key_past_the_command_timeout_fails_closed_even_when_failing_open(
) {
    let Some(pg) = TestPostgres::start() else {
        return;
    };
    let first = store(&pg, "claim_waits_long").await;
    let db = pg.inspect().await;
    let second = Engine::new(
        PostgresStore::builder(pg.url())
            .table(first.table())
            .command_timeout(Duration::from_millis(500))
            .fail_open(true)
            .build()
            .unwrap(),
    );
    let t = now();
    let claim = in_flight(t);
    let uncommitted = uncommitted_claim(&db, &first, claim).await;

    let begun = second.begin(&Policy::DEFAULT, key(1), fingerprint()).await;
    let Err(err) = begun else {
        panic!("the second request ran beside the first: {begun:?}");
    };
    assert!(
        matches!(
            &err,
            IdempotencyError::StoreUnavailable(StoreError::Refused(why))
                if why.to_string().contains("lock timeout")
        ),
        "{err:?}"
    );
    // Another key's claim is not held up by the setting, nor left with it.
    let other = second.begin(&Policy::DEFAULT, key(2), fingerprint()).await;
    assert!(other.is_ok(), "{other:?}");
    uncommitted.commit().await.unwrap();
    assert_eq!(
        first.get(&key(1), now()).await.unwrap(),
        Some(Record::InFlight(claim)),
        "the key is the first request's"
    );
}

/// A store on its own table (created), on an application's pool of one connection
/// (`with_pool`), failing open or not; and the pool.
async fn on_a_pool_of_one(
    pg: &TestPostgres,
    name: &str,
    fail_open: bool,
) -> (PostgresStore, PgPool) {
    let table = store(pg, name).await.table().to_owned();
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect(pg.url())
        .await
        .unwrap();
    let store = PostgresStore::with_pool(pool.clone())
        .table(table.as_str())
        .fail_open(fail_open)
        .build()
        .unwrap();
    (store, pool)
}

/// The lock timeout a claim sets is its statement's alone: the connection goes back to the
/// pool (an application's, shared with the store) with the session's own setting, so that
/// the application's transactions wait on locks as they did.
#[actix_web::test]
async fn a_claim_s_lock_timeout_ends_with_its_statement() {
    let Some(pg) = TestPostgres::start() else {
        return;
    };
    let (store, pool) = on_a_pool_of_one(&pg, "claim_lock_setting", false).await;
    let t = now();
    assert!(matches!(
        store.claim(&key(1), in_flight(t), t).await,
        Ok(Claim::Claimed)
    ));
    let setting: String = sqlx::query_scalar("SHOW lock_timeout")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(setting, "0");
}

/// A pooler in transaction mode without prepared-statement support (PgBouncer before 1.21, or
/// without `max_prepared_statements`) hands each transaction another server connection, where
/// the statements the store prepared on its connection do not exist (SQLSTATE 26000) or exist
/// already (42P05). Here a connection of the store's pool loses them (`DEALLOCATE ALL`), as
/// behind such a pooler: the store refuses (it fails closed even when failing open, as
/// Postgres answered) and names the likely cause, where it said only what Postgres said.
#[actix_web::test]
async fn a_prepared_statement_lost_as_behind_a_transaction_pooler_is_refused_naming_the_pooler() {
    let Some(pg) = TestPostgres::start() else {
        return;
    };
    let (store, pool) = on_a_pool_of_one(&pg, "statements_lost", true).await;
    let t = now();
    assert!(matches!(store.get(&key(1), t).await, Ok(None)));
    // The pool's one connection forgets the statements it prepared.
    sqlx::raw_sql("DEALLOCATE ALL")
        .execute(&pool)
        .await
        .unwrap();
    let Err(error) = store.get(&key(1), t).await else {
        panic!("the store's statement ran though its connection lost it")
    };
    assert!(matches!(error, StoreError::Refused(_)), "{error:?}");
    let message = error.to_string();
    assert!(
        message.contains("pooler") && message.contains("session"),
        "{message}"
    );
}

/// PgBouncer refuses a start-up parameter it was not told to ignore (sqlx sends
/// `extra_float_digits` on every connection) with SQLSTATE 08P01, `protocol_violation`: a
/// configuration to fix, not an outage that passes, so the store refuses (it fails closed even
/// when failing open, where it took the refusal for a server it could not reach and ran the
/// request unprotected) and says what to set. A server that answers every start-up so stands
/// in for it.
#[actix_web::test]
async fn a_pooler_refusing_sqlx_s_start_up_parameters_is_refused_naming_the_setting() {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for mut stream in listener.incoming().flatten() {
            // The start-up message: its length, then the rest.
            let mut length = [0u8; 4];
            if stream.read_exact(&mut length).is_err() {
                continue;
            }
            let mut rest = vec![0u8; (u32::from_be_bytes(length) as usize).saturating_sub(4)];
            let _ = stream.read_exact(&mut rest);
            let mut fields = Vec::new();
            for (tag, value) in [
                (b'S', "FATAL"),
                (b'V', "FATAL"),
                (b'C', "08P01"),
                (b'M', "unsupported startup parameter: extra_float_digits"),
            ] {
                fields.push(tag);
                fields.extend_from_slice(value.as_bytes());
                fields.push(0);
            }
            fields.push(0);
            let mut message = vec![b'E'];
            message.extend_from_slice(&(fields.len() as u32 + 4).to_be_bytes());
            message.extend_from_slice(&fields);
            let _ = stream.write_all(&message);
        }
    });
    let store = PostgresStore::builder(format!(
        "postgres://idem@127.0.0.1:{port}/idem?sslmode=disable"
    ))
    .fail_open(true)
    .build()
    .unwrap();
    let Err(error) = store.get(&key(1), now()).await else {
        panic!("a server that refuses every start-up answered")
    };
    assert!(matches!(error, StoreError::Refused(_)), "{error:?}");
    assert!(
        error.to_string().contains("ignore_startup_parameters"),
        "{error}"
    );
}

/// Behind PgBouncer, Postgres going down is an outage, which a store failing open runs through,
/// though PgBouncer reports it with SQLSTATE 08P01 ("server conn crashed?", a server login
/// that keeps failing), the code it refuses a start-up parameter with: only that refusal is a
/// setting to change.
#[actix_web::test]
async fn postgres_down_behind_pgbouncer_is_an_outage_not_a_refused_start_up_parameter() {
    let Some(mut pg) = TestPostgres::start_owned() else {
        return;
    };
    let Some(bouncer) = TestPgBouncer::start(&pg) else {
        return;
    };
    let store = PostgresStore::builder(bouncer.url())
        .table(pg.table("outage_behind_pgbouncer"))
        .fail_open(true)
        .command_timeout(Duration::from_secs(5))
        .build()
        .expect("valid settings");
    store.migrate().await.expect("migrate through PgBouncer");
    assert!(matches!(store.get(&key(1), now()).await, Ok(None)));
    pg.stop();
    let mut seen = Vec::new();
    for _ in 0..3 {
        let error = store
            .get(&key(1), now())
            .await
            .expect_err("Postgres is down");
        seen.push((matches!(error, StoreError::Refused(_)), format!("{error}")));
    }
    assert!(
        seen.iter().all(|(refused, _)| !refused),
        "Postgres down behind PgBouncer was taken for a refusal: {seen:#?}"
    );
}

/// A restart of Postgres closes every connection the pool keeps idle; the pool finds a closed
/// one only when a statement fails on it. That statement runs again on another connection:
/// after a restart, a completed key replays, where it failed as an outage (and ran again
/// when failing open) once per connection the pool kept.
#[actix_web::test]
async fn after_a_restart_the_pool_s_closed_connections_are_replaced_and_a_completed_key_replays() {
    // A server of its own, which it stops.
    let Some(mut pg) = TestPostgres::start_owned() else {
        return;
    };
    let table = store(&pg, "restarted").await.table().to_owned();
    let engine = Engine::new(
        PostgresStore::builder(pg.url())
            .table(table.as_str())
            .fail_open(true)
            .build()
            .unwrap(),
    );
    let policy = Policy::DEFAULT;
    // Several connections in the pool, each used and returned.
    let leases = join_all((1..=4).map(|n| engine.begin(&policy, key(n), fingerprint()))).await;
    for (n, begun) in (1..=4).zip(leases) {
        let Ok(Begin::Execute(lease)) = begun else {
            panic!("claimed: {begun:?}")
        };
        let recorded = lease
            .finish(Response::new(201, [], format!("call_{n}").as_bytes()))
            .await;
        assert!(recorded.is_ok(), "{recorded:?}");
    }

    pg.restart();
    let replays = join_all((1..=4).map(|n| engine.begin(&policy, key(n), fingerprint()))).await;
    for (n, begun) in (1..=4).zip(replays) {
        match begun {
            Ok(Begin::Replay(record)) => {
                assert_eq!(record.response.body(), format!("call_{n}").as_bytes())
            }
            other => panic!("key {n} after the restart: {other:?}"),
        }
    }
}

/// A session Postgres ends while it idles in the pool (its `idle_session_timeout`, SQLSTATE
/// 57P05) is a closed connection as a restart's are: the statement runs on another.
#[actix_web::test]
async fn a_connection_postgres_ended_for_idling_is_replaced() {
    let Some(pg) = TestPostgres::start() else {
        return;
    };
    let table = store(&pg, "idled").await.table().to_owned();
    let url = url_with(&pg, "idle_session_timeout%3D100");
    let store = PostgresStore::builder(url.as_str())
        .table(table.as_str())
        .build()
        .unwrap();
    let t = now();
    let claim = in_flight(t);
    assert_eq!(
        store.claim(&key(1), claim, t).await.unwrap(),
        Claim::Claimed
    );
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(
        store.get(&key(1), now()).await.unwrap(),
        Some(Record::InFlight(claim))
    );
    tokio::time::sleep(Duration::from_millis(400)).await;
    let t = now();
    assert!(store
        .complete(&key(1), claim.token, completed(t, "call_1"), t)
        .await
        .unwrap());
}

/// A transaction Postgres ends for idling in it (its `idle_in_transaction_session_timeout`,
/// SQLSTATE 25P03) is rolled back with its connection: the commit fails as unavailable (the
/// store was lost, not wrong), records nothing, and the retry claims.
#[actix_web::test]
async fn a_transaction_postgres_ended_for_idling_fails_its_commit_as_unavailable() {
    let Some(pg) = TestPostgres::start() else {
        return;
    };
    let table = store(&pg, "idled_in_transaction").await.table().to_owned();
    let url = url_with(&pg, "idle_in_transaction_session_timeout%3D100");
    let store = PostgresStore::builder(url.as_str())
        .table(table.as_str())
        .build()
        .unwrap();
    let t = now();
    let claim = in_flight(t);
    let Ok(TransactionalClaim::Claimed(tx)) = store.claim_transaction(key(1), claim, t).await
    else {
        panic!("claimed")
    };
    tokio::time::sleep(Duration::from_millis(400)).await;
    let err = tx.commit(completed(now(), "call_1")).await.unwrap_err();
    assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");
    let t = now();
    assert_eq!(
        store.claim(&key(1), in_flight(t), t).await.unwrap(),
        Claim::Claimed,
        "the claim was released"
    );
}

#[derive(Clone)]
struct Runs(Counter);

#[post("/v1/calls")]
#[idempotent]
async fn create_call(runs: web::Data<Runs>) -> HttpResponse {
    let n = runs.0.bump();
    HttpResponse::Created().body(format!("call_{n}"))
}

fn call(key: &str) -> RawRequest {
    RawRequest::post("/v1/calls")
        .header("Authorization", "Bearer tenant-1")
        .header("Idempotency-Key", key)
}

#[actix_web::test]
async fn an_outage_fails_closed_and_the_store_recovers_without_being_rebuilt() {
    // A server of its own, which it stops.
    let Some(mut pg) = TestPostgres::start_owned() else {
        return;
    };
    let table = store(&pg, "outage").await.table().to_owned();
    let (url, runs) = (pg.url().to_owned(), Runs(Counter::default()));
    let data = web::Data::new(runs.clone());
    let (tx, rx) = std::sync::mpsc::channel();
    let server = TestServer::start(1, move |cfg| {
        let store = PostgresStore::builder(url.as_str())
            .table(table.as_str())
            .connect_timeout(Duration::from_millis(300))
            .command_timeout(Duration::from_millis(500))
            .build()
            .unwrap();
        let _ = tx.send(store.clone());
        cfg.app_data(IdempotencyConfig::new(store))
            .app_data(data.clone())
            .service(create_call);
    });
    let store = rx.recv().expect("store built");
    let before = call("before").send(server.addr).await;
    assert_eq!(before.status, 201);

    pg.stop();
    for key in ["during-1", "during-2", "before"] {
        let res = call(key).send(server.addr).await;
        assert_error(&res, 503, "idempotency_store_unavailable");
    }
    let err = store.get(&key(1), now()).await.unwrap_err();
    assert!(
        matches!(err, StoreError::Unavailable(_) | StoreError::Timeout),
        "{err:?}"
    );
    assert_eq!(runs.0.get(), 1, "no handler ran without a claim");

    pg.restart();
    let deadline = Instant::now() + Duration::from_secs(20);
    let recovered = loop {
        let res = call("after").send(server.addr).await;
        if res.status != 503 {
            break res;
        }
        assert!(
            Instant::now() < deadline,
            "still 503 after Postgres came back"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(recovered.status, 201);
    assert!(call("after").send(server.addr).await.replayed());
    // Durable: the record written before the outage is still replayed.
    let replay = call("before").send(server.addr).await;
    assert!(replay.replayed());
    assert_eq!(replay.body, before.body);
    assert_eq!(runs.0.get(), 2);
}
