//! The Postgres store's table against a real PostgreSQL: where its statements find it (never
//! where a handler's or a role's `search_path` points), how it is created (by processes
//! starting together, by a user without the right to create, under any name allowed) and what
//! it refuses (a table of another layout). Each test skips when no PostgreSQL can be had,
//! unless `IDEM_REQUIRE_POSTGRES=1`.

use std::time::Duration;

use futures_util::future::join_all;
use idem_actix::clock::{Clock, SystemClock, Timestamp};
use idem_actix::{PostgresStore, TransactionalClaim};
use idem_core::store::{Claim, Store};
use idem_core::{Completed, Fingerprint, InFlight, Record, Response, StoreError, StoreKey, Token};
use idem_tests::TestPostgres;
use sqlx::PgPool;

const LEASE: Duration = Duration::from_secs(10);
const TTL: Duration = Duration::from_secs(3600);

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
    let db = pg.inspect().await;
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

/// Two processes starting together against an empty database both create the table: Postgres's
/// own `IF NOT EXISTS` can fail one of them on the catalog's unique indexes.
#[actix_web::test]
async fn processes_starting_together_on_an_empty_database_all_create_the_table() {
    let Some(pg) = TestPostgres::start() else {
        return;
    };
    let db = pg.inspect().await;
    for _ in 0..4 {
        let table = pg.table("together");
        let stores: Vec<_> = (0..8)
            .map(|_| {
                PostgresStore::builder(pg.url())
                    .table(table.as_str())
                    .build()
                    .expect("valid settings")
            })
            .collect();
        for started in join_all(stores.iter().map(PostgresStore::migrate)).await {
            started.expect("every process starts");
        }
        assert_eq!(count(&db, &table).await, 0);
    }
}

/// An application whose user may read and write the table, created beforehand by someone who
/// may create it, but may not create tables itself, starts: the table is there.
#[actix_web::test]
async fn a_user_who_may_not_create_tables_starts_on_the_table_that_exists() {
    // A server of its own, on which it creates a role.
    let Some(pg) = TestPostgres::start_owned() else {
        return;
    };
    let db = pg.inspect().await;
    let owner = PostgresStore::builder(pg.url())
        .table(pg.table("granted"))
        .build()
        .expect("valid settings");
    owner.migrate().await.expect("the owner creates the table");
    let role = pg.table("app");
    run(
        &db,
        &format!(
            "CREATE ROLE {role} LOGIN;
             REVOKE CREATE ON SCHEMA public FROM PUBLIC;
             GRANT USAGE ON SCHEMA public TO {role};
             GRANT SELECT, INSERT, UPDATE, DELETE ON {} TO {role};",
            owner.table()
        ),
    )
    .await;
    let url = pg
        .url()
        .replacen("postgres://postgres@", &format!("postgres://{role}@"), 1);
    let app = PostgresStore::builder(url.as_str())
        .table(owner.table())
        .build()
        .expect("valid settings");
    app.migrate()
        .await
        .expect("a table that exists needs no right to create one");
    let t = now();
    let claim = in_flight(t);
    assert_eq!(app.claim(&key(1), claim, t).await.unwrap(), Claim::Claimed);
    let record = completed(&claim, t, "call_1");
    assert!(app
        .complete(&key(1), claim.token, record.clone(), t)
        .await
        .unwrap());
    assert_eq!(
        app.get(&key(1), t).await.unwrap(),
        Some(Record::Completed(record))
    );

    // Where the table is missing, the refusal says so.
    let missing = PostgresStore::builder(url.as_str())
        .table(pg.table("missing"))
        .build()
        .expect("valid settings");
    let err = missing.migrate().await.unwrap_err();
    assert!(matches!(err, StoreError::Refused(_)), "{err:?}");
    assert!(err.to_string().contains("permission denied"), "{err}");
}

/// A table of the configured name but of another layout (another application's, or one
/// written by hand) is refused when the store starts, naming what differs, rather than
/// refusing every keyed request later.
#[actix_web::test]
async fn a_table_of_another_layout_is_refused_at_start_up_naming_what_differs() {
    let Some(pg) = TestPostgres::start() else {
        return;
    };
    let db = pg.inspect().await;
    let columns = [
        ("key", "bytea PRIMARY KEY"),
        ("kind", "text NOT NULL"),
        ("token", "bytea NOT NULL"),
        ("fingerprint", "bytea NOT NULL"),
        ("lapses_at", "bigint NOT NULL"),
        ("purge_at", "bigint NOT NULL"),
        ("status", "integer"),
        ("completed_at", "bigint"),
        ("headers", "bytea"),
        ("body", "bytea"),
        ("omitted_size", "bigint"),
    ];
    let layout = |replace: (&str, &str)| {
        columns
            .iter()
            .filter_map(|&(name, ty)| match name == replace.0 {
                true if replace.1.is_empty() => None,
                true => Some(format!("{name} {}", replace.1)),
                false => Some(format!("{name} {ty}")),
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    for (change, named) in [
        (("omitted_size", ""), "omitted_size"),
        (("lapses_at", "timestamptz NOT NULL"), "lapses_at"),
        (("key", "bytea NOT NULL"), "primary key"),
        (("tenant", "text NOT NULL"), "tenant"),
    ] {
        let table = pg.table("other_layout");
        let mut sql = layout(change);
        if !columns.iter().any(|(name, _)| *name == change.0) {
            sql = format!("{sql}, {} {}", change.0, change.1);
        }
        run(&db, &format!("CREATE TABLE {table} ({sql})")).await;
        let store = PostgresStore::builder(pg.url())
            .table(table.as_str())
            .build()
            .expect("valid settings");
        let err = store.migrate().await.unwrap_err();
        assert!(matches!(err, StoreError::Refused(_)), "{named}: {err:?}");
        let message = err.to_string();
        assert!(
            message.contains(&table) && message.contains(named),
            "{named}: {message}"
        );
    }
    // The table as the store's docs write it passes.
    let table = pg.table("same_layout");
    run(&db, &format!("CREATE TABLE {table} ({})", layout(("", "")))).await;
    PostgresStore::builder(pg.url())
        .table(table.as_str())
        .build()
        .expect("valid settings")
        .migrate()
        .await
        .expect("the documented layout is the store's");
}

/// Whether `table` has an index led by `purge_at`, as the purge's reads need.
async fn purge_indexed(db: &PgPool, table: &str) -> bool {
    sqlx::query_scalar(
        "SELECT EXISTS (SELECT FROM pg_index i
                        JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0]
                        WHERE i.indrelid = to_regclass($1) AND a.attname = 'purge_at')",
    )
    .bind(table)
    .fetch_one(db)
    .await
    .expect("look up the indexes")
}

/// Tables and indexes share their names within a schema. A store's table named as another
/// store's would name its purge index (`<table>_purge_at`) does not leave that other store
/// without its index, whichever is created first: made first, it takes the name and the other's
/// index gets one of Postgres's choosing; made second, it finds the name an index's, and is
/// refused saying so, not as a table of another layout.
#[actix_web::test]
async fn a_table_named_like_another_store_s_index_leaves_no_store_without_its_purge_index() {
    let Some(pg) = TestPostgres::start() else {
        return;
    };
    let db = pg.inspect().await;
    let builder = |table: &str| {
        PostgresStore::builder(pg.url())
            .table(table)
            .build()
            .expect("valid settings")
    };

    // The table first: both start, and both are indexed.
    let table = pg.table("named");
    let like_its_index = format!("{table}_purge_at");
    builder(&like_its_index).migrate().await.expect("starts");
    builder(&table).migrate().await.expect("starts");
    assert!(purge_indexed(&db, &like_its_index).await);
    assert!(
        purge_indexed(&db, &table).await,
        "{table} was left without an index on purge_at"
    );
    let store = builder(&table);
    let t = now();
    let claim = in_flight(t);
    assert_eq!(
        store.claim(&key(1), claim, t).await.unwrap(),
        Claim::Claimed
    );
    assert!(store
        .complete(&key(1), claim.token, completed(&claim, t, "call_1"), t)
        .await
        .unwrap());
    assert_eq!(store.purge_expired(t.saturating_add(TTL)).await.unwrap(), 1);

    // The index first: the table cannot have its name, and the refusal says why.
    let table = pg.table("named");
    let like_its_index = format!("{table}_purge_at");
    builder(&table).migrate().await.expect("starts");
    let err = builder(&like_its_index).migrate().await.unwrap_err();
    assert!(matches!(err, StoreError::Refused(_)), "{err:?}");
    let message = err.to_string();
    assert!(
        message.contains(&like_its_index)
            && message.contains("an index")
            && message.contains(&table),
        "{message}"
    );
    assert!(purge_indexed(&db, &table).await);
}

/// Every name the builder accepts works, SQL's keywords included (`order`, `user`): the
/// statements quote the names they are given.
#[actix_web::test]
async fn a_table_and_schema_named_by_keywords_are_created_and_used() {
    let Some(pg) = TestPostgres::start() else {
        return;
    };
    let db = pg.inspect().await;
    let unique = pg.table("keywords");
    run(&db, &format!("CREATE SCHEMA {unique}")).await;
    let mut places = vec![(unique.clone(), "order")];
    // A schema of a fixed name, on a server no other run shares.
    if pg.owned() {
        run(&db, "CREATE SCHEMA \"user\"").await;
        places.push(("user".to_owned(), "select"));
    }
    for (schema, table) in places {
        let store = PostgresStore::builder(pg.url())
            .schema(schema.as_str())
            .table(table)
            .build()
            .expect("valid settings");
        store
            .migrate()
            .await
            .unwrap_or_else(|e| panic!("{schema}.{table}: {e}"));
        let t = now();
        let claim = in_flight(t);
        assert_eq!(
            store.claim(&key(1), claim, t).await.unwrap(),
            Claim::Claimed,
            "{schema}.{table}"
        );
        assert!(store
            .complete(&key(1), claim.token, completed(&claim, t, "call_1"), t)
            .await
            .unwrap());
        assert_eq!(store.purge_expired(t.saturating_add(TTL)).await.unwrap(), 1);
        assert_eq!(count(&db, &format!("\"{schema}\".\"{table}\"")).await, 0);
    }
}

/// A schema that does not exist is refused, by name, with what to do: the store creates its
/// table, not the schema.
#[actix_web::test]
async fn a_schema_that_does_not_exist_is_refused_by_name() {
    let Some(pg) = TestPostgres::start() else {
        return;
    };
    let schema = pg.table("absent");
    let store = PostgresStore::builder(pg.url())
        .schema(schema.as_str())
        .build()
        .expect("valid settings");
    let t = now();
    for err in [
        store.migrate().await.unwrap_err(),
        store.claim(&key(1), in_flight(t), t).await.unwrap_err(),
    ] {
        assert!(matches!(err, StoreError::Refused(_)), "{err:?}");
        let message = err.to_string();
        assert!(
            message.contains(&schema) && message.contains("PostgresStoreBuilder::schema"),
            "{message}"
        );
    }
}

/// A store that named no schema once kept its table wherever the connection's `search_path`
/// led; now its statements name `public` unless told otherwise. Such a table is not left
/// behind unseen, its records with it (a retry of an operation it recorded would run again):
/// `migrate` refuses to create another, naming the schema it is in.
#[tokio::test]
async fn a_table_the_search_path_finds_in_another_schema_is_named_rather_than_made_anew() {
    let Some(pg) = TestPostgres::start() else {
        return;
    };
    let db = pg.inspect().await;
    let elsewhere = pg.table("elsewhere");
    let table = pg.table("moved");
    run(&db, &format!("CREATE SCHEMA {elsewhere}")).await;
    let kept = PostgresStore::builder(pg.url())
        .schema(elsewhere.as_str())
        .table(table.as_str())
        .build()
        .expect("valid settings");
    kept.migrate().await.expect("the table in its schema");

    let separator = if pg.url().contains('?') { '&' } else { '?' };
    let url = format!(
        "{}{separator}options=-c%20search_path%3D{elsewhere}%2Cpublic",
        pg.url()
    );
    let store = PostgresStore::builder(&url)
        .table(table.as_str())
        .build()
        .expect("valid settings");
    let err = store.migrate().await.unwrap_err();
    assert!(matches!(err, StoreError::Refused(_)), "{err:?}");
    let message = err.to_string();
    assert!(
        message.contains(&elsewhere) && message.contains("PostgresStoreBuilder::schema"),
        "{message}"
    );
    let public: bool = sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL")
        .bind(format!("public.{table}"))
        .fetch_one(&db)
        .await
        .unwrap();
    assert!(!public, "a second, empty table was made in public");
}

/// The same two stores, a table and one named like its purge index (`<table>_purge_at`),
/// starting at the same moment (two services deployed together on one database): the store
/// of `<table>` starts, as it does whichever of the two is made first one after the other,
/// and the other either starts too or is refused saying that its name is an index's.
#[actix_web::test]
async fn a_table_and_one_named_like_its_index_starting_together_both_start_or_say_why() {
    let Some(pg) = TestPostgres::start() else {
        return;
    };
    let db = pg.inspect().await;
    for _ in 0..4 {
        let table = pg.table("together_named");
        let like_its_index = format!("{table}_purge_at");
        let store = |name: &str| {
            PostgresStore::builder(pg.url())
                .table(name)
                .build()
                .expect("valid settings")
        };
        let (of_table, of_like) = (store(&table), store(&like_its_index));
        let (started, other) = futures_util::join!(of_table.migrate(), of_like.migrate());
        if let Err(err) = &started {
            panic!("{table} did not start: {err}");
        }
        if let Err(err) = &other {
            let message = err.to_string();
            assert!(
                matches!(err, StoreError::Refused(_)) && message.contains("an index"),
                "{like_its_index}: {message}"
            );
        }
        assert!(
            purge_indexed(&db, &table).await,
            "{table} has its purge index"
        );
    }
}
