//! `calls-api --database-url`: calls are rows of Postgres written in the transaction that
//! records their key. Duplicates across processes create one row, a process killed mid-call
//! leaves nothing and its retry creates exactly one, and an outage of Postgres, or a table
//! locked, answers 503 until it is over, without restarting the server. Each test skips when
//! no PostgreSQL can be had, unless `IDEM_REQUIRE_POSTGRES=1`.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::CallsApi;
use futures_util::future::join_all;
use idem_tests::{assert_envelope, assert_error, RawRequest, RawResponse, TestPostgres};
use serde_json::json;
use sqlx::PgPool;

/// A database of its own on `pg`, so that tests sharing a server do not share tables: its URL
/// and a pool on it.
async fn fresh_database(pg: &TestPostgres, name: &str) -> (String, PgPool) {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let database = format!(
        "{name}_{}_{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    );
    let admin = PgPool::connect(pg.url())
        .await
        .expect("connect to Postgres");
    sqlx::raw_sql(&format!("CREATE DATABASE {database}"))
        .execute(&admin)
        .await
        .expect("create a database");
    admin.close().await;
    // postgres://user@host:port/<database>?options
    let url = pg.url();
    let (scheme, rest) = url.split_once("://").expect("a URL");
    let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
    let options = path.split_once('?').map_or("", |(_, o)| o);
    let url = match options {
        "" => format!("{scheme}://{authority}/{database}"),
        options => format!("{scheme}://{authority}/{database}?{options}"),
    };
    let pool = PgPool::connect(&url)
        .await
        .expect("connect to the new database");
    (url, pool)
}

fn create(key: &str) -> RawRequest {
    RawRequest::post("/v1/calls")
        .header("Authorization", "Bearer tenant-1")
        .header("Idempotency-Key", key)
        .json(&json!({ "agent_id": "agent_1", "phone_number": "+15555550123" }))
}

async fn list(api: &CallsApi) -> RawResponse {
    RawRequest::get("/v1/calls")
        .header("Authorization", "Bearer tenant-1")
        .send(api.addr)
        .await
}

/// The ids of the tenant's calls, as `GET /v1/calls` reads them from Postgres.
async fn listed(api: &CallsApi) -> Vec<String> {
    let res = list(api).await;
    assert_eq!(res.status, 200, "{}", String::from_utf8_lossy(&res.body));
    res.json()["data"]
        .as_array()
        .expect("a list")
        .iter()
        .map(|call| call["id"].as_str().expect("an id").to_owned())
        .collect()
}

async fn rows(db: &PgPool) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM calls")
        .fetch_one(db)
        .await
        .expect("count calls")
}

fn id_of(res: &RawResponse) -> String {
    res.json()["data"]["id"]
        .as_str()
        .expect("a call")
        .to_owned()
}

/// A carrier failure (`X-Simulate-Status: 503`) creates nothing on Postgres either, where the
/// call's row is written in the key's transaction before the carrier answers: the 503 rolls
/// it back with the key's claim, and the retry creates the one call.
#[tokio::test]
async fn a_simulated_carrier_failure_leaves_no_row_and_its_retry_creates_the_call() {
    let Some(pg) = TestPostgres::start() else {
        return;
    };
    let (url, db) = fresh_database(&pg, "carrier_failure").await;
    let api = CallsApi::start_on_database(&url, false).await;
    let failed = create("fails-once")
        .header("X-Simulate-Status", "503")
        .send(api.addr)
        .await;
    assert_eq!(failed.status, 503, "{failed:?}");
    assert_eq!(rows(&db).await, 0, "the failed call left a row");
    let retry = create("fails-once").send(api.addr).await;
    assert_eq!(retry.status, 201, "{retry:?}");
    assert!(!retry.replayed(), "the 503 was not recorded: {retry:?}");
    assert_eq!(rows(&db).await, 1);
    assert_eq!(listed(&api).await, vec![id_of(&retry)]);
}

/// The start-up line names the database, never its credentials, however the URL carries
/// them (`user:password@`, or `?password=` as sqlx also takes).
#[tokio::test]
async fn the_database_s_password_stays_out_of_the_log() {
    let Some(pg) = TestPostgres::start() else {
        return;
    };
    let (url, _db) = fresh_database(&pg, "shown").await;
    // The test server trusts its connections: a password is sent and not needed.
    let with_password = match url.split_once('?') {
        Some((base, options)) => format!("{base}?{options}&password=T0pS3cret"),
        None => format!("{url}?password=T0pS3cret"),
    };
    let api = CallsApi::start_args(&["--database-url", &with_password]).await;
    assert!(!api.store.contains("T0pS3cret"), "{}", api.store);
    assert!(api.store.starts_with("postgres at "), "{}", api.store);
}

/// Connections the pool kept that Postgres closed since (a restart, an administrator's
/// `pg_terminate_backend`) fail the API's own statements no more than the store's: a list,
/// or a call without a key, runs again on another connection. Each dead connection answered
/// one request 503 `database_unavailable` first.
#[tokio::test]
async fn connections_postgres_closed_fail_no_list_and_no_keyless_call() {
    let Some(pg) = TestPostgres::start() else {
        return;
    };
    let (url, db) = fresh_database(&pg, "closed_connections").await;
    let api = CallsApi::start_on_database(&url, false).await;
    for round in ["list", "keyless call"] {
        // The pool keeps as many connections as requests at once made it open.
        let lists = (0..16).map(|_| list(&api));
        for res in join_all(lists).await {
            assert_eq!(res.status, 200, "{res:?}");
        }
        let closed: Vec<bool> = sqlx::query_scalar(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'idem'",
        )
        .fetch_all(&db)
        .await
        .expect("close calls-api's connections");
        assert!(!closed.is_empty(), "calls-api kept connections");
        for n in 0..20 {
            let res = match round {
                "list" => list(&api).await,
                _ => {
                    RawRequest::post("/v1/calls")
                        .header("Authorization", "Bearer tenant-1")
                        .json(&json!({ "agent_id": "agent_1", "phone_number": "+15555550123" }))
                        .send(api.addr)
                        .await
                }
            };
            assert!(
                matches!(res.status, 200 | 201),
                "{round} {n} after its connections were closed: {res:?}"
            );
        }
    }
    assert_eq!(rows(&db).await, 20);
}

#[tokio::test]
async fn sixty_four_duplicates_across_two_processes_on_one_database_create_one_row() {
    let Some(pg) = TestPostgres::start() else {
        return;
    };
    let (url, db) = fresh_database(&pg, "duplicates").await;
    let apis = Arc::new([
        CallsApi::start_on_database(&url, false).await,
        CallsApi::start_on_database(&url, true).await,
    ]);
    // Slow enough that the duplicates come while the first runs.
    let request = create("sixty-four").header("X-Simulate-Delay-Ms", "300");
    let answers = join_all((0..64).map(|i| {
        let (apis, request) = (Arc::clone(&apis), request.clone());
        tokio::spawn(async move { request.send(apis[i % 2].addr).await })
    }))
    .await;
    let answers: Vec<RawResponse> = answers.into_iter().map(Result::unwrap).collect();
    let executed: Vec<_> = answers
        .iter()
        .filter(|a| a.status == 201 && !a.replayed())
        .collect();
    assert_eq!(executed.len(), 1, "one request created the call");
    for answer in &answers {
        match answer.status {
            201 => assert_eq!(answer.body, executed[0].body),
            409 => assert_eq!(answer.header("retry-after"), Some("1")),
            other => panic!("{other}: {}", String::from_utf8_lossy(&answer.body)),
        }
    }
    assert_eq!(rows(&db).await, 1, "one row");
    let id = id_of(executed[0]);
    for api in apis.iter() {
        let retry = create("sixty-four").send(api.addr).await;
        assert!(retry.replayed());
        assert_eq!(retry.body, executed[0].body);
        assert_eq!(
            listed(api).await,
            std::slice::from_ref(&id),
            "both processes read the row"
        );
    }

    // Messages are rows too, under their own header and settings.
    let message = || {
        RawRequest::post("/v1/messages")
            .header("Authorization", "Bearer tenant-1")
            .header("X-Idempotency-Key", "message-1")
            .json(&json!({ "to": "+15555550123", "text": "hello" }))
    };
    let sent = message().send(apis[0].addr).await;
    assert_eq!(sent.status, 201);
    assert!(message().send(apis[1].addr).await.replayed());
    let messages: i64 = sqlx::query_scalar("SELECT count(*) FROM messages")
        .fetch_one(&db)
        .await
        .unwrap();
    assert_eq!(messages, 1);
    let listing = RawRequest::get("/v1/messages")
        .header("Authorization", "Bearer tenant-1")
        .send(apis[1].addr)
        .await;
    assert_eq!(listing.json()["data"][0], sent.json()["data"]);
}

#[test]
fn a_database_is_one_store_and_must_be_reachable_at_start_up() {
    let run = |args: &[&str]| {
        let mut command = common::command();
        command.args(["--addr", "127.0.0.1:0"]).args(args);
        common::refused(command)
    };
    let (code, stderr) = run(&[
        "--database-url",
        "postgres://idem@127.0.0.1:1/calls",
        "--redis-url",
        "redis://127.0.0.1:1/",
    ]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("not both"), "{stderr}");
    // Nothing listens on port 1: the tables cannot be created, and it says so.
    let (code, stderr) = run(&["--database-url", "postgres://idem:secret@127.0.0.1:1/calls"]);
    assert_ne!(code, Some(0));
    assert!(
        stderr.contains("cannot create the idempotency table"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("secret"),
        "the password stays out of the log"
    );
}

#[tokio::test]
async fn a_process_killed_mid_call_leaves_nothing_and_the_retry_creates_exactly_one_call() {
    let Some(pg) = TestPostgres::start() else {
        return;
    };
    let (url, db) = fresh_database(&pg, "killed").await;
    let mut api = CallsApi::start_on_database(&url, false).await;
    let slow = create("killed").header("X-Simulate-Delay-Ms", "10000");
    let addr = api.addr;
    let running = tokio::spawn(async move {
        // The connection dies with the process; no answer is expected.
        let _ = tokio::time::timeout(Duration::from_secs(30), slow.send(addr)).await;
    });
    // The call's row is written, uncommitted, and its transaction waits for the carrier.
    let writing = "SELECT count(*) FROM pg_stat_activity \
                   WHERE state = 'idle in transaction' AND query LIKE 'INSERT INTO calls%'";
    let deadline = Instant::now() + Duration::from_secs(10);
    while sqlx::query_scalar::<_, i64>(writing)
        .fetch_one(&db)
        .await
        .unwrap()
        != 1
    {
        assert!(Instant::now() < deadline, "the call's write did not happen");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    api.kill();
    drop(running);
    let deadline = Instant::now() + Duration::from_secs(10);
    while sqlx::query_scalar::<_, i64>(writing)
        .fetch_one(&db)
        .await
        .unwrap()
        != 0
    {
        assert!(
            Instant::now() < deadline,
            "Postgres kept the dead transaction"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        rows(&db).await,
        0,
        "Postgres aborted the dead process's write"
    );

    let api = CallsApi::start_on_database(&url, false).await;
    // The key's claim holds until its lease lapses: the retry is told to come back.
    let early = create("killed").send(api.addr).await;
    assert_error(&early, 409, "idempotency_conflict");
    assert_eq!(early.header("retry-after"), Some("1"));
    assert_eq!(rows(&db).await, 0);
    // The lease's 60 s pass: no one renews a dead process's claim.
    sqlx::raw_sql(
        "UPDATE idem_records SET lapses_at = (extract(epoch FROM clock_timestamp()) * 1000)::bigint - 1 \
         WHERE kind = 'F'",
    )
    .execute(&db)
    .await
    .unwrap();

    let retry = create("killed").send(api.addr).await;
    assert_eq!(
        retry.status,
        201,
        "{}",
        String::from_utf8_lossy(&retry.body)
    );
    assert!(!retry.replayed(), "the retry runs the call");
    let again = create("killed").send(api.addr).await;
    assert!(again.replayed());
    assert_eq!(again.body, retry.body);
    assert_eq!(rows(&db).await, 1, "exactly one call");
    assert_eq!(listed(&api).await, [id_of(&retry)]);
}

/// Stopped by SIGTERM, calls-api on Postgres lets a call whose client went away finish, its
/// row and its record committed together, before it exits: a new process replays it, and the
/// call is one row.
#[tokio::test]
async fn sigterm_lets_a_call_whose_client_went_away_commit_with_its_record_before_exit() {
    let Some(pg) = TestPostgres::start() else {
        return;
    };
    let (url, db) = fresh_database(&pg, "sigterm").await;
    let mut api = CallsApi::start_on_database(&url, false).await;
    let slow = || create("sigterm").header("X-Simulate-Delay-Ms", "3000");
    // Its row written (uncommitted) when its client goes away.
    api.terminate_during(slow()).await;
    assert_eq!(rows(&db).await, 1, "the call committed");

    let next = CallsApi::start_on_database(&url, false).await;
    let retry = slow().send(next.addr).await;
    assert_eq!(
        retry.status,
        201,
        "{}",
        String::from_utf8_lossy(&retry.body)
    );
    assert!(retry.replayed(), "the retry gets the first answer");
    assert_eq!(rows(&db).await, 1, "exactly one call");
    assert_eq!(listed(&next).await, [id_of(&retry)]);
}

#[tokio::test]
async fn postgres_restarted_mid_run_answers_503_then_recovers_without_restarting_the_server() {
    // A server of its own, which it stops.
    let Some(mut pg) = TestPostgres::start_owned() else {
        return;
    };
    let (url, db) = fresh_database(&pg, "outage").await;
    db.close().await;
    let api = CallsApi::start_on_database(&url, false).await;
    let before = create("before").send(api.addr).await;
    assert_eq!(before.status, 201);

    pg.stop();
    let during = create("during").send(api.addr).await;
    assert_error(&during, 503, "idempotency_store_unavailable");
    assert_eq!(during.header("retry-after"), Some("1"));
    let listing = list(&api).await;
    assert_eq!(listing.status, 503);
    assert_eq!(listing.json()["error"]["code"], "database_unavailable");
    // The database's own words are for the server's log, not for the client.
    assert_eq!(
        listing.json()["error"]["message"],
        "the database is unavailable; nothing was created, retry later"
    );
    assert_eq!(listing.header("retry-after"), Some("1"));
    // In the log when the outage starts, not for every request it refuses (then once a
    // minute, with how many were held back).
    for _ in 0..3 {
        assert_eq!(list(&api).await.status, 503);
    }
    let failed = || {
        let lines = api.stderr.lock().unwrap();
        lines
            .iter()
            .filter(|line| line.contains("the database failed"))
            .count()
    };
    idem_tests::eventually(|| failed() >= 1).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(failed(), 1, "{:?}", api.stderr.lock().unwrap());

    pg.restart();
    let deadline = Instant::now() + Duration::from_secs(20);
    let after = loop {
        let res = create("during").send(api.addr).await;
        if res.status != 503 {
            break res;
        }
        assert!(
            Instant::now() < deadline,
            "still 503 after Postgres came back"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(
        after.status,
        201,
        "{}",
        String::from_utf8_lossy(&after.body)
    );
    assert!(
        !after.replayed(),
        "the call refused during the outage runs now"
    );
    let replay = create("before").send(api.addr).await;
    assert!(
        replay.replayed(),
        "the record from before the outage is durable"
    );
    assert_eq!(replay.body, before.body);
    assert_eq!(listed(&api).await, [id_of(&before), id_of(&after)]);
}

/// A table an administrator locks (`LOCK TABLE calls IN ACCESS EXCLUSIVE MODE`) holds the
/// API's own statements no longer than their timeout: a keyed call, a keyless one and a list
/// are answered 503 `database_unavailable` with `Retry-After` within seconds, where each waited
/// for the lock to go. Nothing was created or recorded: the keyed call's retry, once the lock
/// is gone, runs it. A call that ran before the lock still replays meanwhile.
#[tokio::test]
async fn a_locked_table_answers_503_database_unavailable_promptly_and_records_nothing() {
    let Some(pg) = TestPostgres::start() else {
        return;
    };
    let (url, db) = fresh_database(&pg, "locked").await;
    let api = CallsApi::start_on_database(&url, false).await;
    let before = create("before-the-lock").send(api.addr).await;
    assert_eq!(before.status, 201, "{before:?}");

    let mut admin = db.begin().await.expect("begin");
    sqlx::raw_sql("LOCK TABLE calls IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *admin)
        .await
        .expect("lock the calls");
    let keyless = RawRequest::post("/v1/calls")
        .header("Authorization", "Bearer tenant-1")
        .json(&json!({ "agent_id": "agent_1", "phone_number": "+15555550123" }));
    let keyed = create("during-the-lock");
    // The lock lasts until the test lets it go: an answer must come while it holds.
    let answered = |request: RawRequest, what: &'static str| async move {
        tokio::time::timeout(Duration::from_secs(10), request.send(api.addr))
            .await
            .unwrap_or_else(|_| panic!("{what}: no answer within 10 s of a table locked"))
    };
    let list = RawRequest::get("/v1/calls").header("Authorization", "Bearer tenant-1");
    let (keyed, keyless, listing, replay) = tokio::join!(
        answered(keyed, "a keyed call"),
        answered(keyless, "a keyless call"),
        answered(list, "a list"),
        answered(create("before-the-lock"), "a replay"),
    );
    for (what, res) in [("keyed", &keyed), ("keyless", &keyless), ("list", &listing)] {
        let message = assert_envelope(res, 503, "database_unavailable");
        assert!(message.contains("nothing was created"), "{what}: {message}");
        assert_eq!(res.header("retry-after"), Some("1"), "{what}: {res:?}");
    }
    assert!(replay.replayed(), "{replay:?}");
    assert_eq!(replay.body, before.body);
    admin.rollback().await.expect("unlock the calls");

    assert_eq!(rows(&db).await, 1, "only the call from before the lock");
    let retry = create("during-the-lock").send(api.addr).await;
    assert_eq!(retry.status, 201, "{retry:?}");
    assert!(!retry.replayed(), "the 503 was recorded: {retry:?}");
    assert_eq!(listed(&api).await, [id_of(&before), id_of(&retry)]);
}

/// A JSON string may hold U+0000 (`"\u0000"`), and SPEC.md's `POST /v1/messages` and
/// `POST /v1/calls` take any string for `text` and `agent_id`: in memory such a request is
/// created (201). On a database it must be answered the same, not 503
/// `database_unavailable` ("retry later", `Retry-After`), which is not recorded, so that
/// every retry of a request that can never succeed runs again and is told to retry again.
#[tokio::test]
async fn a_string_holding_a_nul_is_answered_as_in_memory_not_503_retry_later() {
    let Some(pg) = TestPostgres::start() else {
        return;
    };
    let (url, _db) = fresh_database(&pg, "nul").await;
    let on_database = CallsApi::start_on_database(&url, false).await;
    let in_memory = CallsApi::start(None).await;
    let message = |key: &str| {
        RawRequest::post("/v1/messages")
            .header("Authorization", "Bearer tenant-1")
            .header("X-Idempotency-Key", key)
            .json(&json!({ "to": "+15555550123", "text": "a\u{0}b" }))
    };
    let call = |key: &str| {
        RawRequest::post("/v1/calls")
            .header("Authorization", "Bearer tenant-1")
            .header("Idempotency-Key", key)
            .json(&json!({ "agent_id": "agent\u{0}1", "phone_number": "+15555550123" }))
    };
    // A key of its own for each: keys are not per endpoint, so the call under the message's
    // key would be answered 409 by the layer and never reach its handler.
    for (what, request) in [("message", message("nul-1")), ("call", call("nul-2"))] {
        let expected = request.send(in_memory.addr).await;
        let answer = request.send(on_database.addr).await;
        assert_eq!(expected.status, 201, "{what} in memory: {expected:?}");
        assert_eq!(
            answer.status,
            expected.status,
            "{what}: in memory {}, on a database {}",
            String::from_utf8_lossy(&expected.body),
            String::from_utf8_lossy(&answer.body)
        );
        assert_ne!(
            answer.status, 503,
            "{what}: a request that can never succeed is told to retry"
        );
    }
}

/// A tenant's token, however long RFC 6750 lets it be, is a tenant on a database as in
/// memory, and its rows keep a digest of it, never the credential itself: they kept the
/// token, and an index entry of one over Postgres's limit (about 2.7 kB) was refused, so
/// that every call of such a tenant was answered 503 `database_unavailable`, "retry later",
/// for ever.
#[tokio::test]
async fn a_long_token_is_a_tenant_and_its_rows_keep_no_token() {
    let Some(pg) = TestPostgres::start() else {
        return;
    };
    let (url, db) = fresh_database(&pg, "long_token").await;
    let api = CallsApi::start_on_database(&url, false).await;
    // 3,000 of RFC 6750's characters, in no order Postgres could compress.
    let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~+/";
    let mut state = 0x2545_f491_4f6c_dd1d_u64;
    let token: String = (0..3000)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            char::from(alphabet[(state % alphabet.len() as u64) as usize])
        })
        .collect();
    let authorization = format!("Bearer {token}");
    let created = RawRequest::post("/v1/calls")
        .header("Authorization", &authorization)
        .header("Idempotency-Key", "long-token")
        .json(&json!({ "agent_id": "agent_1", "phone_number": "+15555550123" }))
        .send(api.addr)
        .await;
    assert_eq!(
        created.status,
        201,
        "{}",
        String::from_utf8_lossy(&created.body)
    );
    let listed = RawRequest::get("/v1/calls")
        .header("Authorization", &authorization)
        .send(api.addr)
        .await;
    assert_eq!(listed.json()["data"][0]["id"], created.json()["data"]["id"]);
    let kept: Vec<String> = sqlx::query_scalar("SELECT tenant FROM calls")
        .fetch_all(&db)
        .await
        .expect("read the tenants");
    assert_eq!(kept.len(), 1);
    assert!(
        !kept[0].contains("a1-._~"),
        "the token is kept: {}",
        kept[0]
    );
}
