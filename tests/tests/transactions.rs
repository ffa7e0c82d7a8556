//! Handlers that write in their key's Postgres transaction (`idem_actix::Transaction`), in both
//! forms: the write and its record commit together or not at all, whatever the handler
//! answers, however the commit goes. The Postgres tests skip when no PostgreSQL can be had,
//! unless `IDEM_REQUIRE_POSTGRES=1`; the refusals on other stores need none.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix_web::error::{ErrorInternalServerError, ErrorServiceUnavailable};
use actix_web::{web, HttpRequest, HttpResponse};
use bytes::Bytes;
use idem_actix::clock::{Clock, SystemClock};
use idem_actix::{
    idempotent, Idempotency, IdempotencyConfig, MokaStore, OnStoreError, Policy, PostgresStore,
    PostgresStoreBuilder, ProblemJson, Transaction,
};
use idem_tests::{
    assert_error, assert_problem, Open, RawRequest, RawResponse, TestPostgres, TestServer, Warnings,
};
use sqlx::PgPool;
use tokio::sync::Semaphore;

/// What the handlers need: where they write, where they tell the test their connection, and
/// the gate a stream's second piece waits behind.
#[derive(Clone)]
struct Calls {
    table: String,
    pids: Arc<Mutex<Vec<i32>>>,
    gate: Arc<Semaphore>,
}

/// Inserts a call in `tx`, then does what `X-Then` says: `fail` (500), `error` (an error of
/// status 503), `panic`, `bad-request` (400), `insert-twice` (the same id again, which fails,
/// then 409) or `insert-twice-ok` (the same, then 201 regardless), `pid` (report the
/// transaction's backend, then sleep 1 s), `keep` (send the transaction to another task),
/// `deferred-twice` (the same id twice into a table whose unique constraint is checked at the
/// commit, then 201), `checked:assert` or `checked:divide` (a row into a table whose deferred
/// constraint trigger fails at the commit with an `ASSERT`, or dividing by zero, then 201),
/// `sleep:N` (sleep N ms), `commit`, `rollback` or `commit-begin` (end the transaction with
/// that raw SQL, then insert another call, outside it or in the one begun); else 201 with the
/// call's id. `X-Isolation` sets the transaction's
/// isolation level first.
async fn operate(
    mut tx: Transaction,
    calls: &Calls,
    req: &HttpRequest,
) -> Result<HttpResponse, actix_web::Error> {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let then = req
        .headers()
        .get("x-then")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    if let Some(level) = req.headers().get("x-isolation") {
        let level = level.to_str().expect("an isolation level");
        sqlx::raw_sql(&format!("SET TRANSACTION ISOLATION LEVEL {level}"))
            .execute(&mut *tx)
            .await
            .map_err(ErrorInternalServerError)?;
    }
    let id = format!("call_{}", NEXT.fetch_add(1, Ordering::Relaxed));
    let insert = format!("INSERT INTO {} (id) VALUES ($1)", calls.table);
    sqlx::query(&insert)
        .bind(&id)
        .execute(&mut *tx)
        .await
        .map_err(ErrorInternalServerError)?;
    match then.as_str() {
        "fail" => return Ok(HttpResponse::InternalServerError().body("failed after writing")),
        "error" => return Err(ErrorServiceUnavailable("the carrier is down")),
        "panic" => panic!("the handler panicked after writing"),
        "bad-request" => return Ok(HttpResponse::BadRequest().body(id)),
        "insert-twice" | "insert-twice-ok" => {
            let again = sqlx::query(&insert).bind(&id).execute(&mut *tx).await;
            assert!(again.is_err(), "the same id twice violates the key");
            if then == "insert-twice" {
                return Ok(HttpResponse::Conflict().body("that call exists"));
            }
        }
        "deferred-twice" => {
            // Both go in; the constraint, deferred, refuses them at the commit.
            let deferred = format!("INSERT INTO {}_deferred (id) VALUES ($1)", calls.table);
            for _ in 0..2 {
                sqlx::query(&deferred)
                    .bind(&id)
                    .execute(&mut *tx)
                    .await
                    .map_err(ErrorInternalServerError)?;
            }
        }
        "pid" => {
            let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
                .fetch_one(tx.connection())
                .await
                .map_err(ErrorInternalServerError)?;
            calls.pids.lock().unwrap().push(pid);
            actix_web::rt::time::sleep(Duration::from_secs(1)).await;
        }
        "keep" => {
            actix_web::rt::spawn(async move {
                let _kept = tx;
                actix_web::rt::time::sleep(Duration::from_millis(300)).await;
            });
        }
        "take-later" => {
            let req = req.clone();
            actix_web::rt::spawn(async move {
                actix_web::rt::time::sleep(Duration::from_millis(100)).await;
                let late = <Transaction as actix_web::FromRequest>::extract(&req).await;
                assert!(late.is_err(), "a transaction taken after the run");
            });
        }
        "commit" | "rollback" | "commit-begin" => {
            let end = then.replace('-', "; ").to_uppercase();
            sqlx::raw_sql(&end)
                .execute(&mut *tx)
                .await
                .map_err(ErrorInternalServerError)?;
            sqlx::query(&insert)
                .bind(format!("{id}_after"))
                .execute(&mut *tx)
                .await
                .map_err(ErrorInternalServerError)?;
        }
        other if other.starts_with("checked:") => {
            let checked = format!("INSERT INTO {}_checked (id) VALUES ($1)", calls.table);
            sqlx::query(&checked)
                .bind(&other["checked:".len()..])
                .execute(&mut *tx)
                .await
                .map_err(ErrorInternalServerError)?;
        }
        other => {
            if let Some(ms) = other.strip_prefix("sleep:") {
                let ms = ms.parse().expect("sleep:<ms>");
                actix_web::rt::time::sleep(Duration::from_millis(ms)).await;
            }
        }
    }
    Ok(HttpResponse::Created().body(id))
}

#[idempotent]
async fn attributed(
    tx: Transaction,
    calls: web::Data<Calls>,
    req: HttpRequest,
) -> Result<HttpResponse, actix_web::Error> {
    operate(tx, &calls, &req).await
}

#[idempotent(lease = "300ms")]
async fn short_lease(
    tx: Transaction,
    calls: web::Data<Calls>,
    req: HttpRequest,
) -> Result<HttpResponse, actix_web::Error> {
    operate(tx, &calls, &req).await
}

#[idempotent(in_flight = "wait")]
async fn waiting(
    tx: Transaction,
    calls: web::Data<Calls>,
    req: HttpRequest,
) -> Result<HttpResponse, actix_web::Error> {
    operate(tx, &calls, &req).await
}

#[idempotent(cache = "2xx")]
async fn success_only(
    tx: Transaction,
    calls: web::Data<Calls>,
    req: HttpRequest,
) -> Result<HttpResponse, actix_web::Error> {
    operate(tx, &calls, &req).await
}

/// The same, for the middleware.
async fn plain(
    tx: Transaction,
    calls: web::Data<Calls>,
    req: HttpRequest,
) -> Result<HttpResponse, actix_web::Error> {
    operate(tx, &calls, &req).await
}

/// A stream of two pieces, the second behind the gate, from a handler that takes no
/// `Transaction`.
fn events(calls: &Calls) -> HttpResponse {
    let gate = Arc::clone(&calls.gate);
    let body = futures_util::stream::unfold(0, move |i| {
        let gate = Arc::clone(&gate);
        async move {
            match i {
                0 => Some((
                    Ok::<_, actix_web::Error>(Bytes::from_static(b"first-piece;")),
                    1,
                )),
                1 => {
                    gate.acquire().await.unwrap().forget();
                    Some((Ok(Bytes::from_static(b"second-piece")), 2))
                }
                _ => None,
            }
        }
    });
    HttpResponse::Ok().streaming(body)
}

#[idempotent]
async fn attributed_events(calls: web::Data<Calls>) -> HttpResponse {
    events(&calls)
}

async fn plain_events(calls: web::Data<Calls>) -> HttpResponse {
    events(&calls)
}

#[idempotent]
async fn two_transactions(_a: Transaction, _b: Transaction) -> HttpResponse {
    HttpResponse::Created().finish()
}

#[idempotent]
async fn with_json(tx: Transaction, body: web::Json<serde_json::Value>) -> HttpResponse {
    drop(tx);
    HttpResponse::Created().json(body.into_inner())
}

/// The attribute's path and the middleware's: every behaviour holds in both forms.
const FORMS: [&str; 2] = ["/calls", "/wrapped/calls"];

/// An app on a PostgreSQL of its own: the server, and what the test looks at.
struct Fixture {
    _pg: TestPostgres,
    server: TestServer,
    db: PgPool,
    calls: Calls,
    records: String,
}

impl Fixture {
    async fn start(name: &str) -> Option<Self> {
        Self::start_with(name, |store| store).await
    }

    /// As [`start`](Self::start), on a server of its own, which the test may stop.
    async fn start_owned(name: &str) -> Option<Self> {
        Self::on(TestPostgres::start_owned()?, name, |store| store).await
    }

    /// An app whose store has the settings `settings` makes (the defaults, for the others).
    async fn start_with(
        name: &str,
        settings: fn(PostgresStoreBuilder) -> PostgresStoreBuilder,
    ) -> Option<Self> {
        Self::on(TestPostgres::start()?, name, settings).await
    }

    /// An app on `pg`, as [`start_with`](Self::start_with) makes it.
    async fn on(
        pg: TestPostgres,
        name: &str,
        settings: fn(PostgresStoreBuilder) -> PostgresStoreBuilder,
    ) -> Option<Self> {
        let store = PostgresStore::builder(pg.url())
            .table(pg.table(name))
            .build()
            .expect("valid settings");
        store.migrate().await.expect("create the record table");
        let db = PgPool::connect(pg.url()).await.expect("connect");
        let calls = Calls {
            table: format!("{}_calls", store.table()),
            pids: Arc::default(),
            gate: Arc::new(Semaphore::new(0)),
        };
        // The calls, a table whose unique constraint is checked at the commit, and one whose
        // deferred constraint trigger fails there for the rows its name says.
        sqlx::raw_sql(&format!(
            "CREATE TABLE {0} (id text PRIMARY KEY);
             CREATE TABLE {0}_deferred (id text UNIQUE DEFERRABLE INITIALLY DEFERRED);
             CREATE TABLE {0}_checked (id text);
             CREATE FUNCTION {0}_check() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN
                 IF NEW.id = 'assert' THEN
                     ASSERT false, 'refused by the check';
                 ELSIF NEW.id = 'divide' THEN
                     PERFORM 1 / 0;
                 END IF;
                 RETURN NULL;
             END $$;
             CREATE CONSTRAINT TRIGGER {0}_checked AFTER INSERT ON {0}_checked
                 DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION {0}_check();",
            calls.table
        ))
        .execute(&db)
        .await
        .expect("create the calls tables");
        let (url, records) = (pg.url().to_owned(), store.table().to_owned());
        let data = web::Data::new(calls.clone());
        let table = records.clone();
        let server = TestServer::start(1, move |cfg| {
            // Built on the server's runtime, which drives its connections.
            let store = settings(PostgresStore::builder(url.as_str()).table(table.as_str()))
                .build()
                .expect("valid settings");
            cfg.app_data(IdempotencyConfig::new(store))
                .app_data(data.clone())
                .route("/calls", web::post().to(attributed))
                .route("/waiting/calls", web::post().to(waiting))
                .route("/short-lease/calls", web::post().to(short_lease))
                .route("/success-only/calls", web::post().to(success_only))
                .route("/two", web::post().to(two_transactions))
                .route("/json", web::post().to(with_json))
                .route("/events", web::post().to(attributed_events))
                .service(
                    web::scope("/wrapped")
                        .wrap(Idempotency::new())
                        .route("/calls", web::post().to(plain))
                        .route("/events", web::post().to(plain_events)),
                );
        });
        Some(Self {
            _pg: pg,
            server,
            db,
            calls,
            records,
        })
    }

    async fn send(&self, request: RawRequest) -> RawResponse {
        request.send(self.server.addr).await
    }

    /// The calls written and committed.
    async fn written(&self) -> i64 {
        self.count(&self.calls.table, "true").await
    }

    /// The records: completed, and claims.
    async fn records(&self) -> (i64, i64) {
        (
            self.count(&self.records, "kind = 'C'").await,
            self.count(&self.records, "kind = 'F'").await,
        )
    }

    async fn count(&self, table: &str, filter: &str) -> i64 {
        sqlx::query_scalar(&format!("SELECT count(*) FROM {table} WHERE {filter}"))
            .fetch_one(&self.db)
            .await
            .expect("count rows")
    }

    /// Waits until a handler's insert has run in its transaction (not committed yet): its
    /// session waits in it for the handler's next statement or its commit.
    async fn inserted(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        let waiting = format!(
            "SELECT count(*) FROM pg_stat_activity WHERE state = 'idle in transaction' \
             AND query LIKE 'INSERT INTO {}%'",
            self.calls.table
        );
        loop {
            let sessions: i64 = sqlx::query_scalar(&waiting)
                .fetch_one(&self.db)
                .await
                .expect("pg_stat_activity");
            if sessions > 0 {
                return;
            }
            assert!(Instant::now() < deadline, "no insert ran");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Waits (up to 10 s) until the store's completion (`complete`) or release (`release`)
    /// of a claim waits for a lock on its row: whether one did.
    async fn waits_for_the_row(&self, statement: &str) -> bool {
        let deadline = Instant::now() + Duration::from_secs(10);
        let start = match statement {
            // As the store names its table: quoted, with its schema.
            "complete" => format!(r#"UPDATE "public"."{}" SET kind = ''C''"#, self.records),
            "release" => format!(r#"DELETE FROM "public"."{}" WHERE key = $1"#, self.records),
            other => panic!("no statement {other}"),
        };
        let waiting = format!(
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' \
             AND query LIKE '{start}%'"
        );
        while Instant::now() < deadline {
            let sessions: i64 = sqlx::query_scalar(&waiting)
                .fetch_one(&self.db)
                .await
                .expect("pg_stat_activity");
            if sessions > 0 {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        false
    }

    /// Sends `request` in a task of its own.
    fn spawn(
        self: &Arc<Self>,
        request: RawRequest,
    ) -> actix_web::rt::task::JoinHandle<RawResponse> {
        let app = Arc::clone(self);
        actix_web::rt::spawn(async move { app.send(request).await })
    }

    /// A store on the app's record table whose purge the test runs itself.
    fn purge(&self) -> PostgresStore {
        PostgresStore::builder(self._pg.url())
            .table(self.records.as_str())
            .purge_interval(None)
            .build()
            .expect("valid settings")
    }

    /// Does to the running claim what an outage longer than its lease does: unrenewed, it
    /// lapses, and once its grace is over too the store's purge deletes its row.
    async fn lapse_and_purge(&self, purge: &PostgresStore) {
        sqlx::raw_sql(&format!(
            "UPDATE {} SET lapses_at = 0, purge_at = 0 WHERE kind = 'F'",
            self.records
        ))
        .execute(&self.db)
        .await
        .unwrap();
        let purged = purge.purge_expired(SystemClock.now()).await.unwrap();
        assert_eq!(purged, 1, "the lapsed claim was purged");
    }

    /// Waits until a claim is written: the first request runs.
    async fn claimed(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.records().await.1 == 0 {
            assert!(Instant::now() < deadline, "no claim was written");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

fn call(path: &str, key: &str) -> RawRequest {
    RawRequest::post(path)
        .header("Authorization", "Bearer tenant-1")
        .header("Idempotency-Key", key)
}

#[actix_web::test]
async fn a_handler_s_write_commits_with_its_record_and_retries_replay_it() {
    let Some(app) = Fixture::start("commit").await else {
        return;
    };
    for (n, path) in FORMS.into_iter().enumerate() {
        let key = format!("commit-{n}");
        let first = app.send(call(path, &key)).await;
        assert_eq!(first.status, 201, "{path}");
        assert!(!first.replayed());
        assert_eq!(
            app.written().await,
            n as i64 + 1,
            "{path}: the write committed"
        );
        assert_eq!(
            app.records().await,
            (n as i64 + 1, 0),
            "{path}: with its record"
        );
        let retry = app.send(call(path, &key)).await;
        assert!(retry.replayed(), "{path}");
        assert_eq!(retry.body, first.body);
        assert_eq!(
            app.written().await,
            n as i64 + 1,
            "{path}: the retry wrote nothing"
        );
    }
}

#[actix_web::test]
async fn a_5xx_an_error_or_a_panic_rolls_the_write_back_and_the_retry_runs() {
    let Some(app) = Fixture::start("rollback").await else {
        return;
    };
    let mut written = 0;
    for path in FORMS {
        for (then, status) in [("fail", 500), ("error", 503), ("panic", 500)] {
            let key = format!("{path}-{then}");
            let failed = app.send(call(path, &key).header("X-Then", then)).await;
            assert_eq!(failed.status, status, "{path} {then}");
            assert_eq!(app.written().await, written, "{path} {then}: rolled back");
            assert_eq!(
                app.records().await,
                (written, 0),
                "{path} {then}: key released"
            );
            let retry = app.send(call(path, &key)).await;
            assert_eq!(retry.status, 201, "{path} {then}: the retry runs");
            assert!(!retry.replayed());
            written += 1;
            assert_eq!(app.written().await, written);
        }
    }
}

#[actix_web::test]
async fn what_the_endpoint_does_not_record_it_does_not_write() {
    let Some(app) = Fixture::start("statuses").await else {
        return;
    };
    // A 400 is recorded by default: the write commits with it, and retries replay it.
    let first = app
        .send(call("/calls", "four-hundred").header("X-Then", "bad-request"))
        .await;
    assert_eq!(first.status, 400);
    assert_eq!(app.written().await, 1);
    let retry = app.send(call("/calls", "four-hundred")).await;
    assert!(retry.replayed());
    assert_eq!(retry.body, first.body);
    // Under `cache = "2xx"` it is not: nothing commits, and the retry runs.
    let path = "/success-only/calls";
    let refused = app
        .send(call(path, "four-hundred-again").header("X-Then", "bad-request"))
        .await;
    assert_eq!(refused.status, 400);
    assert_eq!(app.written().await, 1, "the 400's write rolled back");
    assert_eq!(app.records().await, (1, 0), "and its key released");
    let retry = app.send(call(path, "four-hundred-again")).await;
    assert_eq!(retry.status, 201);
    assert_eq!(app.written().await, 2);
}

#[actix_web::test]
async fn a_duplicate_while_the_handler_runs_gets_409_at_once_or_waits_for_the_replay() {
    let Some(app) = Fixture::start("duplicate").await else {
        return;
    };
    let app = Arc::new(app);
    for path in FORMS {
        let key = format!("{path}-slow");
        let first = {
            let (app, request) = (
                Arc::clone(&app),
                call(path, &key).header("X-Then", "sleep:1500"),
            );
            actix_web::rt::spawn(async move { app.send(request).await })
        };
        app.claimed().await;
        let started = Instant::now();
        let duplicate = app.send(call(path, &key)).await;
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "{path}: the duplicate waited {:?}",
            started.elapsed()
        );
        assert_error(&duplicate, 409, "idempotency_conflict");
        assert_eq!(duplicate.header("retry-after"), Some("1"));
        assert_eq!(app.written().await, 0, "{path}: nothing committed yet");
        let first = first.await.unwrap();
        assert_eq!(first.status, 201);
        assert_eq!(app.written().await, 1);
        sqlx::raw_sql(&format!("DELETE FROM {}", app.calls.table))
            .execute(&app.db)
            .await
            .unwrap();
    }

    let path = "/waiting/calls";
    let first = {
        let (app, request) = (
            Arc::clone(&app),
            call(path, "wait").header("X-Then", "sleep:500"),
        );
        actix_web::rt::spawn(async move { app.send(request).await })
    };
    app.claimed().await;
    let waited = app.send(call(path, "wait")).await;
    let first = first.await.unwrap();
    assert_eq!(first.status, 201);
    assert!(
        waited.replayed(),
        "the waiting duplicate replays: {}",
        waited.status
    );
    assert_eq!(waited.body, first.body);
    assert_eq!(app.written().await, 1);
}

#[actix_web::test]
async fn a_failed_commit_answers_503_and_leaves_nothing_behind() {
    let Some(app) = Fixture::start("broken").await else {
        return;
    };
    for (n, path) in FORMS.into_iter().enumerate() {
        let key = format!("{path}-broken");
        let request = call(path, &key).header("X-Then", "pid");
        let running = {
            let addr = app.server.addr;
            actix_web::rt::spawn(async move { request.send(addr).await })
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        let pid = loop {
            if let Some(pid) = app.calls.pids.lock().unwrap().get(n).copied() {
                break pid;
            }
            assert!(Instant::now() < deadline, "the handler did not start");
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        // The transaction's connection breaks while the handler runs.
        let ended: bool = sqlx::query_scalar("SELECT pg_terminate_backend($1)")
            .bind(pid)
            .fetch_one(&app.db)
            .await
            .unwrap();
        assert!(ended);
        let failed = running.await.unwrap();
        assert_error(&failed, 503, "idempotency_store_unavailable");
        assert_eq!(failed.header("retry-after"), Some("1"));
        assert_eq!(app.written().await, n as i64, "{path}: nothing was written");
        assert_eq!(
            app.records().await,
            (n as i64, 0),
            "{path}: the key was released"
        );
        let retry = app.send(call(path, &key)).await;
        assert_eq!(retry.status, 201, "{path}: the retry runs");
        assert_eq!(app.written().await, n as i64 + 1);
    }
}

/// A run's claim is renewed every third of its lease, on another connection. At REPEATABLE
/// READ or SERIALIZABLE, Postgres then refuses the record's commit (its row changed since the
/// transaction's snapshot): a run that ends before its first renewal commits, and one that
/// outlives it is rolled back, released and answered 503, and the log says why and what to do.
#[actix_web::test]
async fn a_repeatable_read_run_commits_within_a_third_of_its_lease_and_is_told_why_beyond() {
    let Some(app) = Fixture::start("isolation").await else {
        return;
    };
    let logged = Warnings::installed();
    let at = |key: &str, then: &str| {
        call("/short-lease/calls", key)
            .header("X-Isolation", "REPEATABLE READ")
            .header("X-Then", then)
    };
    let quick = app.send(at("quick", "sleep:10")).await;
    assert_eq!(quick.status, 201, "{}", quick.text());
    assert_eq!(app.written().await, 1);

    let slow = app.send(at("slow", "sleep:250")).await;
    assert_error(&slow, 503, "idempotency_store_unavailable");
    assert_eq!(
        app.written().await,
        1,
        "nothing of the slow run was committed"
    );
    assert_eq!(app.records().await, (1, 0), "its claim was released");
    assert_eq!(logged.containing("READ COMMITTED"), 1);
}

#[actix_web::test]
async fn a_claim_taken_over_before_the_commit_writes_nothing_and_answers_409() {
    // The test purges itself: a purge the app started could take the claim first.
    let Some(app) = Fixture::start_with("takeover", |store| store.purge_interval(None)).await
    else {
        return;
    };
    let app = Arc::new(app);
    let purge = app.purge();
    for path in FORMS {
        let running = app.spawn(call(path, &format!("{path}-taken")).header("X-Then", "sleep:800"));
        app.claimed().await;
        // Another holder's claim, as after the lease lapsed and a retry took the key over.
        sqlx::query(&format!(
            "UPDATE {} SET token = $1 WHERE kind = 'F'",
            app.records
        ))
        .bind([7u8; 16])
        .execute(&app.db)
        .await
        .unwrap();
        let answer = running.await.unwrap();
        assert_error(&answer, 409, "idempotency_conflict");
        assert_eq!(
            app.written().await,
            0,
            "{path}: the displaced run wrote nothing"
        );
        assert_eq!(
            app.records().await,
            (0, 1),
            "{path}: the new holder's claim stands"
        );
        sqlx::raw_sql(&format!("DELETE FROM {}", app.records))
            .execute(&app.db)
            .await
            .unwrap();
    }

    // The purge deleted the lapsed claim, and a retry claimed the key afresh and runs: the
    // first run's commit finds that request's claim, which runs the operation.
    for (n, path) in FORMS.into_iter().enumerate() {
        let key = format!("{path}-purged-then-taken");
        let first = app.spawn(call(path, &key).header("X-Then", "sleep:1500"));
        app.claimed().await;
        app.lapse_and_purge(&purge).await;
        // Longer than the first, so that its claim still stands when the first has answered,
        // however slowly the records are read then: both slept 1.5 s, started only the purge's
        // time apart, and a loaded machine saw the retry done before the read.
        let retry = app.spawn(call(path, &key).header("X-Then", "sleep:4000"));
        app.claimed().await;
        let answer = first.await.unwrap();
        assert_error(&answer, 409, "idempotency_conflict");
        assert_eq!(
            app.written().await,
            n as i64,
            "{path}: the first run wrote nothing"
        );
        assert_eq!(
            app.records().await,
            (n as i64, 1),
            "{path}: the retry's claim stands"
        );
        let retry = retry.await.unwrap();
        assert_eq!(retry.status, 201, "{path}: the retry ran");
        assert_eq!(app.written().await, n as i64 + 1);
    }
}

#[actix_web::test]
async fn a_claim_the_purge_deleted_before_the_commit_writes_nothing_and_answers_503_so_the_retry_runs(
) {
    // The test purges itself: a purge the app started could take the claim first.
    let Some(app) = Fixture::start_with("purged", |store| store.purge_interval(None)).await else {
        return;
    };
    let app = Arc::new(app);
    let purge = app.purge();
    for (n, path) in FORMS.into_iter().enumerate() {
        let key = format!("{path}-purged");
        let running = app.spawn(call(path, &key).header("X-Then", "sleep:1500"));
        app.claimed().await;
        app.lapse_and_purge(&purge).await;
        let answer = running.await.unwrap();
        // Nobody holds the key, so no 409 "still being processed": nothing was recorded,
        // and a retry runs.
        assert_error(&answer, 503, "idempotency_store_unavailable");
        assert_eq!(answer.header("retry-after"), Some("1"), "{path}");
        assert_eq!(
            app.written().await,
            n as i64,
            "{path}: the write rolled back"
        );
        assert_eq!(
            app.records().await,
            (n as i64, 0),
            "{path}: nothing recorded, and no claim left"
        );
        let retry = app.send(call(path, &key)).await;
        assert_eq!(retry.status, 201, "{path}: the retry runs");
        assert!(!retry.replayed(), "{path}");
        assert_eq!(app.written().await, n as i64 + 1, "{path}: once");
    }
}

#[actix_web::test]
async fn a_failed_statement_rolls_back_and_only_an_error_answer_goes_out() {
    let Some(app) = Fixture::start("aborted").await else {
        return;
    };
    for (done, path) in FORMS.into_iter().enumerate() {
        let done = done as i64;
        // The handler answers its statement's failure with an error: it goes out as it is,
        // unrecorded, and nothing was written.
        let key = format!("{path}-exists");
        let answer = app
            .send(call(path, &key).header("X-Then", "insert-twice"))
            .await;
        assert_eq!(answer.status, 409, "{path}");
        assert_eq!(answer.body, b"that call exists");
        assert_eq!(
            app.records().await,
            (done, 0),
            "{path}: released, not recorded"
        );
        // It answers a success regardless: the client must not believe it.
        let key = format!("{path}-ignored");
        let answer = app
            .send(call(path, &key).header("X-Then", "insert-twice-ok"))
            .await;
        assert_eq!(answer.status, 500, "{path}");
        assert_eq!(app.records().await, (done, 0), "{path}: released");
        assert_eq!(app.written().await, 0, "{path}");
        let retry = app.send(call(path, &key)).await;
        assert_eq!(retry.status, 201, "{path}: the retry runs");
        sqlx::raw_sql(&format!("DELETE FROM {}", app.calls.table))
            .execute(&app.db)
            .await
            .unwrap();
    }
}

/// A constraint checked at the commit (`DEFERRABLE INITIALLY DEFERRED`) that the handler's
/// writes break fails the commit: nothing is written, and the key is released, as for a failed
/// statement. The answer is the layer's 500, as there: the request is what fails, and a retry
/// fails alike, where 503 `idempotency_store_unavailable` told the client to retry a store
/// that was up.
#[actix_web::test]
async fn a_commit_a_deferred_constraint_refuses_answers_500_and_releases_the_key() {
    let Some(app) = Fixture::start("deferred").await else {
        return;
    };
    for (n, path) in FORMS.into_iter().enumerate() {
        let key = format!("{path}-deferred");
        let answer = app
            .send(call(path, &key).header("X-Then", "deferred-twice"))
            .await;
        assert_error(&answer, 500, "idempotency_transaction_unavailable");
        assert_eq!(app.written().await, 0, "{path}: nothing was written");
        assert_eq!(app.records().await, (n as i64, 0), "{path}: released");
        let retry = app.send(call(path, &key)).await;
        assert_eq!(retry.status, 201, "{path}: the retry runs");
        sqlx::raw_sql(&format!("DELETE FROM {}", app.calls.table))
            .execute(&app.db)
            .await
            .unwrap();
    }
}

/// As a deferred constraint, a deferred constraint trigger that fails at the commit, whatever
/// the SQLSTATE it fails with (an `ASSERT`'s P0004, a division's 22012): the layer's 500, where
/// only a constraint's (23xxx) and a `RAISE`'s (P0001) were, and every other was 503
/// `idempotency_store_unavailable` with `Retry-After`, counted as the store's error.
#[actix_web::test]
async fn a_commit_a_deferred_trigger_refuses_answers_500_whatever_its_sqlstate() {
    let Some(app) = Fixture::start("checked").await else {
        return;
    };
    for (n, path) in FORMS.into_iter().enumerate() {
        for check in ["assert", "divide"] {
            let key = format!("{path}-{check}");
            let then = format!("checked:{check}");
            let answer = app.send(call(path, &key).header("X-Then", &then)).await;
            assert_error(&answer, 500, "idempotency_transaction_unavailable");
            assert_eq!(answer.header("retry-after"), None, "{path} {check}");
            assert_eq!(
                app.written().await,
                0,
                "{path} {check}: nothing was written"
            );
            assert_eq!(
                app.records().await,
                (n as i64, 0),
                "{path} {check}: released"
            );
        }
        let retry = app.send(call(path, &format!("{path}-assert"))).await;
        assert_eq!(retry.status, 201, "{path}: the retry runs");
        sqlx::raw_sql(&format!("DELETE FROM {}", app.calls.table))
            .execute(&app.db)
            .await
            .unwrap();
    }
}

/// A handler that ends its transaction itself (`COMMIT`, `ROLLBACK`, or `COMMIT; BEGIN`) has
/// left the atomic record behind: its record would commit apart from its writes (or with only
/// those after its `BEGIN`). Nothing is recorded, the claim is released, and the layer answers
/// 500 and logs why (once a minute), where the record was written as if nothing had happened.
#[actix_web::test]
async fn a_handler_that_ends_its_transaction_itself_records_nothing_and_is_told_why() {
    let Some(app) = Fixture::start("ended").await else {
        return;
    };
    let logged = Warnings::installed();
    for path in FORMS {
        // What stands of each ending: the first insert and the one after it, committed by
        // the handler, by autocommit, or by nobody.
        for (then, written) in [("commit", 2), ("rollback", 1), ("commit-begin", 1)] {
            let key = format!("{path}-{then}");
            let answer = app.send(call(path, &key).header("X-Then", then)).await;
            assert_error(&answer, 500, idem_actix::codes::TRANSACTION_UNAVAILABLE);
            assert_eq!(
                app.records().await,
                (0, 0),
                "{path} {then}: released, not recorded"
            );
            assert_eq!(app.written().await, written, "{path} {then}");
            sqlx::raw_sql(&format!("DELETE FROM {}", app.calls.table))
                .execute(&app.db)
                .await
                .unwrap();
        }
    }
    // A fault of the handler's, the same for every request to it: warned of when it starts,
    // then once a minute, where each request's was logged.
    assert_eq!(logged.containing("ended its Transaction itself"), 1);
}

/// On an app whose store lends transactions, a handler that takes none streams its body as it
/// comes, as on any store, and its record is written once the stream ends: where every keyed
/// stream was held back until it ended (or passed `max_response`), since a transaction was
/// offered to every run, taken or not.
#[actix_web::test]
async fn a_handler_that_takes_no_transaction_streams_as_it_comes_and_is_recorded() {
    let Some(app) = Fixture::start("streams").await else {
        return;
    };
    for (n, path) in ["/events", "/wrapped/events"].into_iter().enumerate() {
        let key = format!("stream-{n}");
        let mut open = Open::send(app.server.addr, &call(path, &key)).await;
        open.read_until(b"first-piece;", "the first piece, while the second waits")
            .await;
        app.calls.gate.add_permits(1);
        open.read_to_end().await;
        let deadline = Instant::now() + Duration::from_secs(10);
        let replay = loop {
            let replay = app.send(call(path, &key)).await;
            if replay.replayed() || Instant::now() >= deadline {
                break replay;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        assert!(
            replay.replayed(),
            "{path}: recorded once it ended: {replay:?}"
        );
        assert_eq!(replay.body, b"first-piece;second-piece", "{path}");
    }
}

#[actix_web::test]
async fn a_transaction_kept_beyond_the_run_taken_twice_or_taken_after_it_is_refused_and_says_which()
{
    let Some(app) = Fixture::start("misused").await else {
        return;
    };
    let logged = Warnings::installed();
    let kept = app
        .send(call("/calls", "kept").header("X-Then", "keep"))
        .await;
    assert_error(&kept, 500, idem_actix::codes::TRANSACTION_UNAVAILABLE);
    assert_eq!(kept.header("cache-control"), Some("no-store"));
    assert!(logged.containing("kept its Transaction beyond its run") >= 1);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(app.written().await, 0, "the kept transaction rolled back");
    assert_eq!(app.records().await, (0, 0));

    let twice = app.send(call("/two", "twice")).await;
    assert_error(&twice, 500, idem_actix::codes::TRANSACTION_UNAVAILABLE);
    assert!(logged.containing("takes two Transactions") >= 1);
    assert_eq!(app.records().await, (0, 0), "released");

    // Taken from a request kept beyond the run: refused, and said so.
    let twos = logged.containing("takes two Transactions");
    let later = app
        .send(call("/calls", "later").header("X-Then", "take-later"))
        .await;
    assert_eq!(later.status, 201, "{later:?}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        logged.containing("after its handler's run") >= 1,
        "{:?}",
        logged.logged()
    );
    assert_eq!(logged.containing("takes two Transactions"), twos);
}

async fn untransacted(runs: web::Data<AtomicUsize>, _tx: Transaction) -> HttpResponse {
    runs.fetch_add(1, Ordering::SeqCst);
    HttpResponse::Created().finish()
}

#[idempotent]
async fn on_embedded(runs: web::Data<AtomicUsize>, tx: Transaction) -> HttpResponse {
    untransacted(runs, tx).await
}

/// A `Transaction` a misconfigured layer cannot lend is a fault of the server's, logged once
/// for its route, as a route no layer serves is (it was logged at `error` for each request).
#[actix_web::test]
async fn a_transaction_where_none_can_be_lent_is_refused_clearly_and_the_handler_does_not_run() {
    let logged = Warnings::installed();
    let runs = web::Data::new(AtomicUsize::new(0));
    let data = runs.clone();
    let server = TestServer::start(1, move |cfg| {
        cfg.app_data(IdempotencyConfig::new(MokaStore::new()))
            .app_data(data.clone())
            .route("/embedded", web::post().to(on_embedded))
            .route("/again", web::post().to(on_embedded))
            .route("/bare", web::post().to(untransacted));
    });
    // On a store that cannot lend one: a 500, and the log says what to do.
    let res = call("/embedded", "k1").send(server.addr).await;
    assert_eq!(res.status, 500);
    assert_eq!(
        res.json()["error"]["code"],
        "idempotency_transaction_unavailable"
    );
    assert_eq!(
        res.json()["request_id"],
        res.header("x-request-id").unwrap()
    );
    // Once for each route, however many requests.
    for n in 0..3 {
        for path in ["/embedded", "/again"] {
            let res = call(path, &format!("again-{n}")).send(server.addr).await;
            assert_error(&res, 500, idem_actix::codes::TRANSACTION_UNAVAILABLE);
        }
    }
    let reason = "IdempotencyConfig::new(PostgresStore)";
    assert_eq!(logged.containing_from(reason, server.threads()), 2);
    // Under no idempotency layer: the same.
    let res = call("/bare", "k2").send(server.addr).await;
    assert_eq!(res.status, 500);
    assert!(
        logged.containing_from("no idempotency layer serves this request", server.threads()) >= 1
    );
    // Without a key there is no record to commit with: the client is told to send one.
    let res = RawRequest::post("/embedded")
        .header("Authorization", "Bearer tenant-1")
        .send(server.addr)
        .await;
    assert_error(&res, 400, "idempotency_key_missing");
    assert_eq!(runs.load(Ordering::SeqCst), 0, "no handler ran");
}

#[idempotent(fail_open)]
async fn failing_open(runs: web::Data<AtomicUsize>, tx: Transaction) -> HttpResponse {
    untransacted(runs, tx).await
}

/// A Postgres store that cannot be reached, on an endpoint that fails open: the handler runs
/// without a claim, so no transaction can be lent, and its `Transaction` is refused as the
/// outage it is (503, `Retry-After`), not as a misconfiguration. Warned of when the outage
/// starts, as every outage is, not for each request: each request's refusal was warned of, a
/// thousand lines a second under load.
#[actix_web::test]
async fn a_transaction_while_the_store_fails_open_is_refused_as_an_outage_warned_of_once() {
    let logged = Warnings::installed();
    let runs = web::Data::new(AtomicUsize::new(0));
    let data = runs.clone();
    let server = TestServer::start(1, move |cfg| {
        // Nothing listens on port 1: every connection is refused at once.
        let postgres = PostgresStore::builder("postgres://idem@127.0.0.1:1/idem")
            .build()
            .expect("valid settings");
        cfg.app_data(IdempotencyConfig::new(postgres))
            .app_data(data.clone())
            .route("/calls", web::post().to(failing_open));
    });
    for n in 0..5 {
        let res = call("/calls", &format!("k{n}")).send(server.addr).await;
        assert_error(&res, 503, "idempotency_store_unavailable");
        assert!(res.header("retry-after").is_some(), "{res:?}");
    }
    // From the handler's extractor, the store having failed open; not the layer's refusal.
    let unlent = "no transaction to lend its handler";
    assert_eq!(
        logged.containing_from(unlent, server.threads()),
        1,
        "{:?}",
        logged.logged()
    );
}

#[actix_web::test]
async fn a_transaction_under_a_layer_on_another_store_is_refused_as_a_misconfiguration() {
    let logged = Warnings::installed();
    let runs = web::Data::new(AtomicUsize::new(0));
    let data = runs.clone();
    let server = TestServer::start(1, move |cfg| {
        // Never reached: the handler does not run, and the store connects when first used.
        let postgres = PostgresStore::builder("postgres://idem@127.0.0.1:1/idem")
            .build()
            .expect("valid settings");
        cfg.app_data(IdempotencyConfig::new(MokaStore::new()))
            .app_data(data.clone())
            .service(
                web::scope("/outer").wrap(Idempotency::new()).service(
                    web::scope("/postgres")
                        .app_data(IdempotencyConfig::new(postgres))
                        .route("/calls", web::post().to(untransacted)),
                ),
            );
    });
    let res = call("/outer/postgres/calls", "k1").send(server.addr).await;
    assert_error(&res, 500, idem_actix::codes::TRANSACTION_UNAVAILABLE);
    assert_eq!(res.header("retry-after"), None);
    assert!(
        logged.containing_from("another IdempotencyConfig", server.threads()) >= 1,
        "{:?}",
        logged.logged()
    );
    assert_eq!(runs.load(Ordering::SeqCst), 0, "no handler ran");
}

/// A middleware that claims keys on a Postgres store that cannot be reached, failing open,
/// over a handler whose scope registers another store: the layer that would lend the
/// `Transaction` is the middleware, so its refusal is the outage it is (503, `Retry-After`),
/// not a misconfiguration judged from the handler's own settings.
#[actix_web::test]
async fn a_transaction_under_a_failing_open_layer_on_postgres_is_an_outage_whatever_the_handler_s_scope_registers(
) {
    let runs = web::Data::new(AtomicUsize::new(0));
    let data = runs.clone();
    let server = TestServer::start(1, move |cfg| {
        // Nothing listens on port 1: every connection is refused at once.
        let postgres = PostgresStore::builder("postgres://idem@127.0.0.1:1/idem")
            .fail_open(true)
            .build()
            .expect("valid settings");
        cfg.app_data(IdempotencyConfig::new(postgres))
            .app_data(data.clone())
            .service(
                web::scope("/outer").wrap(Idempotency::new()).service(
                    web::scope("/embedded")
                        .app_data(IdempotencyConfig::new(MokaStore::new()))
                        .route("/calls", web::post().to(untransacted)),
                ),
            );
    });
    let res = call("/outer/embedded/calls", "k1").send(server.addr).await;
    assert_error(&res, 503, "idempotency_store_unavailable");
    assert!(res.header("retry-after").is_some(), "{res:?}");
    assert_eq!(runs.load(Ordering::SeqCst), 0, "no handler ran");
}

/// A middleware on a store that lends no transaction, failing open while it is down, over a
/// handler whose scope registers a Postgres store: no run of that middleware could lend the
/// handler a `Transaction`, outage or not, so it is refused as the misconfiguration it is
/// (500), not as an outage the client would retry for ever.
#[actix_web::test]
async fn a_transaction_under_a_failing_open_layer_on_another_store_is_a_misconfiguration() {
    let logged = Warnings::installed();
    let runs = web::Data::new(AtomicUsize::new(0));
    let data = runs.clone();
    let server = TestServer::start(1, move |cfg| {
        let postgres = PostgresStore::builder("postgres://idem@127.0.0.1:1/idem")
            .build()
            .expect("valid settings");
        let failing_open = Policy::DEFAULT.on_store_error(OnStoreError::FailOpen);
        let outer = IdempotencyConfig::new(idem_actix::testing::UnavailableStore)
            .with_defaults(failing_open)
            .expect("valid defaults");
        cfg.app_data(outer).app_data(data.clone()).service(
            web::scope("/outer").wrap(Idempotency::new()).service(
                web::scope("/postgres")
                    .app_data(IdempotencyConfig::new(postgres))
                    .route("/calls", web::post().to(untransacted)),
            ),
        );
    });
    let res = call("/outer/postgres/calls", "k1").send(server.addr).await;
    assert_error(&res, 500, idem_actix::codes::TRANSACTION_UNAVAILABLE);
    assert_eq!(res.header("retry-after"), None);
    assert!(
        logged.containing_from("another IdempotencyConfig", server.threads()) >= 1,
        "{:?}",
        logged.logged()
    );
    assert_eq!(runs.load(Ordering::SeqCst), 0, "no handler ran");
}

#[idempotent(header = "X-Idempotency-Key", errors = "problem")]
async fn own_header(runs: web::Data<AtomicUsize>, tx: Transaction) -> HttpResponse {
    untransacted(runs, tx).await
}

/// A request without the endpoint's key (one with the application's header instead, or
/// none) is told to send the endpoint's own, in the endpoint's format: the layer passed it on
/// for want of a key, whatever headers it carries.
#[actix_web::test]
async fn a_transaction_without_the_endpoints_key_is_refused_as_the_endpoint_refuses() {
    let runs = web::Data::new(AtomicUsize::new(0));
    let data = runs.clone();
    let server = TestServer::start(1, move |cfg| {
        cfg.app_data(IdempotencyConfig::new(MokaStore::new()))
            .app_data(data.clone())
            .route("/own-header", web::post().to(own_header));
    });
    let with_the_apps_header = call("/own-header", "k1").send(server.addr).await;
    let without_any = RawRequest::post("/own-header")
        .header("Authorization", "Bearer tenant-1")
        .send(server.addr)
        .await;
    for res in [with_the_apps_header, without_any] {
        let body = assert_problem(&res, 400, "idempotency_key_missing");
        let detail = body["detail"].as_str().unwrap_or_default();
        assert!(detail.contains("X-Idempotency-Key"), "{body}");
    }
    assert_eq!(runs.load(Ordering::SeqCst), 0, "no handler ran");
}

#[actix_web::test]
async fn an_app_without_settings_of_its_own_is_told_to_register_them() {
    let logged = Warnings::installed();
    let runs = web::Data::new(AtomicUsize::new(0));
    let data = runs.clone();
    let server = TestServer::start(1, move |cfg| {
        cfg.app_data(data.clone())
            .route("/embedded", web::post().to(on_embedded));
    });
    let res = call("/embedded", "k1").send(server.addr).await;
    assert_error(&res, 500, idem_actix::codes::TRANSACTION_UNAVAILABLE);
    assert_eq!(res.header("cache-control"), Some("no-store"));
    assert!(logged.containing("registered no IdempotencyConfig") >= 1);
    assert_eq!(runs.load(Ordering::SeqCst), 0, "the handler did not run");
}

#[idempotent(errors = "problem")]
async fn on_embedded_problem(runs: web::Data<AtomicUsize>, tx: Transaction) -> HttpResponse {
    untransacted(runs, tx).await
}

/// Asserts a 500 `idempotency_transaction_unavailable` rendered as problem JSON.
fn assert_unavailable_problem(res: &RawResponse) {
    assert_problem(res, 500, idem_actix::codes::TRANSACTION_UNAVAILABLE);
    assert_eq!(res.header("cache-control"), Some("no-store"));
}

#[actix_web::test]
async fn a_transaction_where_none_can_be_lent_is_refused_in_the_app_s_error_format() {
    let logged = Warnings::installed();
    let runs = web::Data::new(AtomicUsize::new(0));
    let data = runs.clone();
    let server = TestServer::start(1, move |cfg| {
        let config = IdempotencyConfig::new(MokaStore::new()).with_error_renderer(ProblemJson);
        cfg.app_data(config)
            .app_data(data.clone())
            .route("/embedded", web::post().to(on_embedded))
            .route("/bare", web::post().to(untransacted));
    });
    // The app's renderer: for a store that lends none, and for a handler under no layer.
    assert_unavailable_problem(&call("/embedded", "k1").send(server.addr).await);
    assert!(logged.containing_from("IdempotencyConfig::new(PostgresStore)", server.threads()) >= 1);
    assert_unavailable_problem(&call("/bare", "k2").send(server.addr).await);
    assert!(
        logged.containing_from("no idempotency layer serves this request", server.threads()) >= 1
    );

    // The endpoint's own format, on an app that renders the envelope.
    let data = runs.clone();
    let server = TestServer::start(1, move |cfg| {
        cfg.app_data(IdempotencyConfig::new(MokaStore::new()))
            .app_data(data.clone())
            .route("/problem", web::post().to(on_embedded_problem));
    });
    assert_unavailable_problem(&call("/problem", "k3").send(server.addr).await);
    assert_eq!(runs.load(Ordering::SeqCst), 0, "no handler ran");
}

#[actix_web::test]
async fn settings_that_lend_no_transaction_fail_the_start_up_check_with_what_to_do() {
    use idem_actix::{PolicyError, Store};

    // Building a store does not connect; nothing here needs a server.
    let url = "postgres://app@127.0.0.1:1/app";
    let postgres = || PostgresStore::new(url).expect("valid settings");
    assert!(IdempotencyConfig::new(postgres())
        .require_transactions()
        .is_ok());

    let embedded = IdempotencyConfig::new(MokaStore::new()).require_transactions();
    let shared: Arc<dyn Store> = Arc::new(postgres());
    let shared = IdempotencyConfig::from_shared(shared).require_transactions();
    for refused in [embedded, shared] {
        let err = refused.expect_err("a store that lends no transaction is refused");
        assert_eq!(err, PolicyError::NoTransactions);
        let message = err.to_string();
        assert!(
            message.contains("IdempotencyConfig::new on a PostgresStore"),
            "{message}"
        );
    }
}

#[test]
fn the_readme_shows_the_transactional_example_that_compiles() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    // Built with idem-actix's examples, so that the README's copy cannot rot.
    let example =
        std::fs::read_to_string(root.join("idem-actix/examples/transactional.rs")).unwrap();
    let code: String = example
        .lines()
        .filter(|line| !line.starts_with("//!"))
        .map(|line| format!("{line}\n"))
        .collect();
    assert!(
        readme.contains(&format!("```rust\n{code}```")),
        "README.md's transactional handler differs from idem-actix/examples/transactional.rs"
    );
}

#[actix_web::test]
async fn another_extractor_that_fails_while_the_transaction_opens_is_answered_as_it_is() {
    let Some(app) = Fixture::start("extractors").await else {
        return;
    };
    // The body is refused while the transaction is still being opened: the handler never
    // runs, and the body's 400 is the answer, not recorded: the transaction is rolled back
    // and the key released, so that a corrected retry under it runs.
    let refused = app.send(call("/json", "bad-json").body("{not json")).await;
    assert_eq!(
        refused.status,
        400,
        "{}",
        String::from_utf8_lossy(&refused.body)
    );
    assert_eq!(app.records().await, (0, 0));
    let corrected = app
        .send(call("/json", "bad-json").json(&serde_json::json!({"a": 1})))
        .await;
    assert_eq!(corrected.status, 201);
    let ok = app
        .send(call("/json", "good-json").json(&serde_json::json!({"a": 1})))
        .await;
    assert_eq!(ok.status, 201);
}

/// The 500 that replaces a success whose transaction was aborted by a failed statement is the
/// layer's own answer, not the handler's: like every error of the layer (SPEC, "Errors the
/// layer itself returns") it carries the error envelope with a stable code and
/// `Cache-Control: no-store`, in both forms.
#[actix_web::test]
async fn a_success_over_a_failed_statement_is_answered_with_the_layer_s_error_and_no_store() {
    let Some(app) = Fixture::start("aborted_envelope").await else {
        return;
    };
    for path in FORMS {
        let key = format!("{path}-ignored-failure");
        let answer = app
            .send(call(path, &key).header("X-Then", "insert-twice-ok"))
            .await;
        assert_error(&answer, 500, idem_actix::codes::TRANSACTION_UNAVAILABLE);
        assert_eq!(answer.header("cache-control"), Some("no-store"), "{path}");
        assert_eq!(app.written().await, 0, "{path}");
        assert_eq!(app.records().await, (0, 0), "{path}: released");
    }
}

/// A commit that fails because Postgres went away cannot release the key either while it is
/// away. The release is then retried in the background (as the layer does for every other
/// claim it gives up, for up to a lease), so that once Postgres is back the retry runs, instead
/// of answering 409 "still being processed" for the rest of a 60 s lease while nothing runs.
#[actix_web::test]
async fn a_commit_that_failed_in_an_outage_releases_its_key_once_postgres_is_back() {
    // A server of its own, which it stops.
    let Some(mut app) = Fixture::start_owned("outage").await else {
        return;
    };
    let running = {
        let (addr, request) = (
            app.server.addr,
            call("/calls", "outage").header("X-Then", "sleep:1500"),
        );
        actix_web::rt::spawn(async move { request.send(addr).await })
    };
    // Postgres goes away while the handler runs, after its insert (so that the handler's
    // own statements succeed), and is still away when it commits.
    app.inserted().await;
    app._pg.stop();
    let failed = running.await.unwrap();
    assert_error(&failed, 503, "idempotency_store_unavailable");
    app._pg.restart();

    let deadline = Instant::now() + Duration::from_secs(15);
    let retry = loop {
        let res = app.send(call("/calls", "outage")).await;
        if res.status == 201 || Instant::now() > deadline {
            break res;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(
        retry.status,
        201,
        "the retry still finds the failed run's claim: {}",
        String::from_utf8_lossy(&retry.body)
    );
    assert_eq!(app.written().await, 1, "the retry's write alone");
}

/// A drain that runs out of time cancels the runs whose clients went away, one of them as its
/// record commits (here its row is locked by another session, as a commit can wait on a slow
/// disk or on a lock). Its writes roll back, and its key is released before the drain returns,
/// so that the retry after the server's stop runs it at once, instead of finding it in flight
/// until its lease lapses.
#[actix_web::test]
async fn a_run_a_drain_cancels_as_it_commits_rolls_back_and_its_key_is_released_before_the_stop() {
    // Statements that wait long: the commit waits until the drain cancels it.
    let Some(app) = Fixture::start_with("drained", |store| {
        store.command_timeout(Duration::from_secs(30))
    })
    .await
    else {
        return;
    };
    let gone = Arc::new(AtomicBool::new(false));
    let client = {
        let (addr, gone) = (app.server.addr, Arc::clone(&gone));
        let request = call("/calls", "drained").header("X-Then", "sleep:1000");
        actix_web::rt::spawn(async move {
            request
                .send_and_reset(addr, move || gone.load(Ordering::Acquire))
                .await
        })
    };
    app.claimed().await;
    let mut holder = app.db.begin().await.unwrap();
    sqlx::query(&format!(
        "SELECT 1 FROM {} WHERE kind = 'F' FOR UPDATE",
        app.records
    ))
    .execute(&mut *holder)
    .await
    .unwrap();
    assert!(
        app.waits_for_the_row("complete").await,
        "the record's commit did not start"
    );
    // Its client goes away, and the drain runs out of time while the commit waits.
    gone.store(true, Ordering::Release);
    client.await.unwrap();
    let drained = actix_web::rt::spawn(async move {
        let drain = IdempotencyConfig::new(MokaStore::new());
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            // 0 until the server has seen the client go away.
            let cancelled = drain.drain(Duration::from_millis(100)).await;
            if cancelled > 0 || Instant::now() > deadline {
                break cancelled;
            }
        }
    });
    let released = app.waits_for_the_row("release").await;
    holder.rollback().await.unwrap();
    assert!(released, "the cancelled run's key was not released");
    assert_eq!(drained.await.unwrap(), 1, "the run was cancelled");
    assert_eq!(
        app.written().await,
        0,
        "the cancelled run's write rolled back"
    );
    assert_eq!(
        app.records().await,
        (0, 0),
        "its key was released before the drain returned"
    );
    let retry = app.send(call("/calls", "drained")).await;
    assert_eq!(
        retry.status,
        201,
        "the retry runs at once: {}",
        retry.text()
    );
    assert_eq!(app.written().await, 1);
}

/// A running handler's transaction holds a connection of the store's pool until its commit,
/// and its lease's renewals need another. When there is none (here the pool has one), each
/// renewal waits for one, up to the pool's acquire timeout, while the handler runs on and
/// commits; the handler stood still until its renewal gave up, so that a pool full of
/// running handlers stood still as a whole, none of them giving a connection back.
#[actix_web::test]
async fn a_handler_runs_on_while_its_renewal_waits_for_a_connection_of_a_full_pool() {
    let Some(app) = Fixture::start_with("full_pool", |store| {
        store
            .max_connections(1)
            .connect_timeout(Duration::from_secs(20))
    })
    .await
    else {
        return;
    };
    // Renewed every 100 ms while it runs for 1 s.
    let started = Instant::now();
    let res = app
        .send(call("/short-lease/calls", "full-pool").header("X-Then", "sleep:1000"))
        .await;
    let took = started.elapsed();
    assert_eq!(res.status, 201, "{}", res.text());
    assert!(took < Duration::from_secs(10), "a run of 1 s took {took:?}");
    assert_eq!(app.written().await, 1);
    assert_eq!(app.records().await, (1, 0), "recorded with its write");
}
