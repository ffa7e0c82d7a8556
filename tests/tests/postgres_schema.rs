//! The Postgres store's table against a real PostgreSQL: where its statements find it (never
//! where a handler's or a role's `search_path` points). Each test skips when no PostgreSQL can
//! be had, unless `IDEM_REQUIRE_POSTGRES=1`.

use std::time::Duration;

use idem_actix::clock::{Clock, SystemClock, Timestamp};
use idem_actix::{PostgresStore, TransactionalClaim};
use idem_core::store::{Claim, Store};
use idem_core::{Completed, Fingerprint, InFlight, Record, Response, StoreKey, Token};
use idem_tests::TestPostgres;
use sqlx::PgPool;

const LEASE: Duration = Duration::from_secs(10);
const TTL: Duration = Duration::from_secs(3600);

/// A plain pool for what the tests write and look at themselves.
async fn inspect(pg: &TestPostgres) -> PgPool {
    PgPool::connect(pg.url())
        .await
        .expect("connect to test Postgres")
}

fn now() -> Timestamp {
    SystemClock.now()
}

fn key(n: u8) -> StoreKey {
    StoreKey::from_bytes([n; 32])
}

fn in_flight(at: Timestamp) -> InFlight {
    InFlight {
        fingerprint: Fingerprint::new("POST", "/v1/calls", "", b"{}"),
        lease_until: at.saturating_add(LEASE),
        token: Token::random(),
    }
}

fn completed(claim: &InFlight, at: Timestamp, body: &str) -> Completed {
    Completed {
        fingerprint: claim.fingerprint,
        response: Response::new(201, [("location", &b"/v1/calls/1"[..])], body.as_bytes()),
        completed_at: at,
        expires_at: at.saturating_add(TTL),
    }
}

async fn run(db: &PgPool, sql: &str) {
    sqlx::raw_sql(sql)
        .execute(db)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
}

async fn count(db: &PgPool, table: &str) -> i64 {
    sqlx::query_scalar(&format!("SELECT count(*) FROM {table}"))
        .fetch_one(db)
        .await
        .expect("count rows")
}

/// A handler that moves its transaction's `search_path` (for the rest of the transaction, or,
/// with a plain `SET`, for the rest of the pooled connection's life) to a schema holding a
/// table of the same name must not move the store's own statements there: the completion in
/// its transaction, and the claims made later on the connection it gives back.
#[actix_web::test]
async fn a_handler_s_search_path_does_not_redirect_the_store_s_statements() {
    let Some(pg) = TestPostgres::start() else {
        return;
    };
    let db = inspect(&pg).await;
    // One connection, so that later statements run on the one the handler used.
    let store = PostgresStore::builder(pg.url())
        .table(pg.table("redirected"))
        .max_connections(1)
        .build()
        .expect("valid settings");
    store.migrate().await.expect("create the table");
    let decoy = pg.table("decoy");
    run(&db, &format!("CREATE SCHEMA {decoy}")).await;
    // The same table, of the same layout, in the other schema.
    run(
        &db,
        &format!(
            "CREATE TABLE {decoy}.{table} (LIKE public.{table} INCLUDING ALL)",
            table = store.table()
        ),
    )
    .await;

    for (k, set) in [(key(1), "SET LOCAL"), (key(2), "SET")] {
        let t = now();
        let claim = in_flight(t);
        let Ok(TransactionalClaim::Claimed(mut tx)) = store.claim_transaction(k, claim, t).await
        else {
            panic!("a free key is claimed");
        };
        sqlx::raw_sql(&format!("{set} search_path = {decoy}"))
            .execute(tx.connection())
            .await
            .expect("the handler's SET");
        let record = completed(&claim, t, "call_1");
        assert_eq!(
            tx.commit(record.clone()).await.ok(),
            Some(true),
            "{set}: the completion went to the store's own table"
        );
        assert_eq!(
            store.claim(&k, in_flight(t), t).await.unwrap(),
            Claim::Existing(Record::Completed(record)),
            "{set}: a retry on the same connection replays, rather than running again"
        );
    }
    assert_eq!(
        count(&db, &format!("{decoy}.{}", store.table())).await,
        0,
        "nothing was written to the other schema's table"
    );
}
