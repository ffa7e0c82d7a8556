//! Round trips to the remote stores, counted on the wire: each store talks to its server
//! through a loopback proxy that counts request-and-answer turns ([`RoundTrips`]), and the
//! tests run one new key (a claim and its completion) and one replay (a claim that finds the
//! record) through the engine and through an actix app, and for Postgres also a transactional
//! new key. A pooled connection's setup (connecting, preparing each statement once) is done
//! before counting, or left out of it: these are the steady state's turns.
//!
//! Each test skips when no server can be had, unless `IDEM_REQUIRE_POSTGRES=1` or
//! `IDEM_REQUIRE_REDIS=1`.

use std::net::{SocketAddr, ToSocketAddrs};
use std::str::FromStr;
use std::time::Duration;

use actix_web::{post, test, App, HttpResponse};
use idem_actix::{idempotent, IdempotencyConfig, PostgresStore, RedisStore, Transaction};
use idem_core::{Begin, Engine, Fingerprint, Outcome, Policy, Response, StoreKey};
use idem_tests::{RoundTrips, TestPostgres, TestRedis, Turn};
use sqlx::postgres::PgConnectOptions;

const TTL: Duration = Duration::from_secs(3600);

/// How long the wire stays silent before the turns of an operation are taken as all seen:
/// sqlx tests a connection when it comes back to its pool, after the operation answered.
const QUIET: Duration = Duration::from_millis(200);

fn fingerprint() -> Fingerprint {
    Fingerprint::new("POST", "/v1/calls", "", br#"{"to":"+15555550123"}"#)
}

fn key(n: u8) -> StoreKey {
    StoreKey::from_bytes([n; 32])
}

/// A new key through `engine`: the claim, then the completion.
async fn new_key(engine: &Engine, key: StoreKey) {
    let policy = Policy::DEFAULT.ttl(TTL);
    let Ok(Begin::Execute(lease)) = engine.begin(&policy, key, fingerprint()).await else {
        panic!("a new key is claimed");
    };
    let response = Response::new(201, [("location", &b"/v1/calls/1"[..])], &b"call_1"[..]);
    assert!(matches!(
        lease.finish(response).await,
        Ok(Outcome::Recorded)
    ));
}

/// A replay through `engine`: a claim that finds the completed record.
async fn replay(engine: &Engine, key: StoreKey) {
    let policy = Policy::DEFAULT.ttl(TTL);
    let Ok(Begin::Replay(record)) = engine.begin(&policy, key, fingerprint()).await else {
        panic!("the completed record is replayed");
    };
    assert_eq!(&record.response.body()[..], b"call_1");
}

/// The turns of `operation`, once the wire is quiet again.
async fn counted<F: std::future::Future>(proxy: &RoundTrips, operation: F) -> Vec<Turn> {
    proxy.settle(QUIET).await;
    proxy.reset();
    operation.await;
    proxy.settle(QUIET).await;
    proxy.turns()
}

/// A Postgres turn that is a bare `Sync` (`S`, length 4): sqlx's test of a connection that
/// comes back to its pool, which asks for nothing but the server's readiness.
fn is_release_test(turn: &Turn) -> bool {
    turn.sent == b"S\0\0\0\x04"
}

/// The first byte of each Postgres message the client sent in `turn`: `P`arse, `B`ind,
/// `D`escribe, `E`xecute, `S`ync, `Q`uery.
fn messages(turn: &Turn) -> String {
    let mut kinds = String::new();
    let mut rest = &turn.sent[..];
    while rest.len() >= 5 {
        kinds.push(char::from(rest[0]));
        let len = u32::from_be_bytes([rest[1], rest[2], rest[3], rest[4]]) as usize;
        rest = &rest[(1 + len).min(rest.len())..];
    }
    kinds
}

/// `pg`'s URL with its server behind a new proxy, and the proxy.
fn behind_proxy(pg: &TestPostgres) -> (String, RoundTrips) {
    let options = PgConnectOptions::from_str(pg.url()).expect("the test URL parses");
    let authority = format!("{}:{}", options.get_host(), options.get_port());
    let upstream: SocketAddr = authority
        .to_socket_addrs()
        .ok()
        .and_then(|mut addrs| addrs.next())
        .expect("the test Postgres resolves");
    let proxy = RoundTrips::start(upstream);
    assert!(
        pg.url().contains(&authority),
        "the test Postgres URL names its host and port as host:port"
    );
    let url = pg.url().replace(&authority, &proxy.addr().to_string());
    (url, proxy)
}

/// A store of one pooled connection (so that every turn is on it, and its statements are
/// prepared once for all) without the background purge, which would add statements of its
/// own once per interval.
async fn postgres(pg: &TestPostgres, url: &str, name: &str) -> PostgresStore {
    let store = PostgresStore::builder(url)
        .table(pg.table(name))
        .max_connections(1)
        .purge_interval(None)
        .build()
        .expect("valid settings");
    store.migrate().await.expect("create the table");
    store
}

#[actix_web::test]
async fn postgres_new_key_is_two_statements_and_a_replay_one() {
    let Some(pg) = TestPostgres::start() else {
        return;
    };
    let (url, proxy) = behind_proxy(&pg);
    let store = postgres(&pg, &url, "round_trips").await;
    let engine = Engine::new(store.clone());

    // Setup, not counted: the connection, and each statement prepared on it once.
    let cold = counted(&proxy, async {
        new_key(&engine, key(0)).await;
        replay(&engine, key(0)).await;
    })
    .await;

    let new = counted(&proxy, new_key(&engine, key(1))).await;
    let statements: Vec<_> = new.iter().filter(|t| !is_release_test(t)).collect();
    let kinds: Vec<_> = statements.iter().map(|t| messages(t)).collect();
    assert_eq!(
        kinds,
        ["BECS", "BECS"],
        "a new key: the claim and the completion, one round trip each (Bind, Execute, Close, Sync \
         of a prepared statement); all turns: {new:?}"
    );
    assert_eq!(
        new.len() - statements.len(),
        2,
        "sqlx tests each connection as it comes back to the pool, after the statement \
         answered: one turn per operation off the request's path; all turns: {new:?}"
    );

    let again = counted(&proxy, replay(&engine, key(1))).await;
    let statements: Vec<_> = again.iter().filter(|t| !is_release_test(t)).collect();
    let kinds: Vec<_> = statements.iter().map(|t| messages(t)).collect();
    assert_eq!(
        kinds,
        ["BECS"],
        "a replay: the claim reads the record; all turns: {again:?}"
    );
    assert_eq!(again.len() - statements.len(), 1, "{again:?}");
    assert_eq!(proxy.connections(), 1, "one connection served it all");

    // Through the actix layer, which adds none.
    let (new_app, again_app) = through_app(&proxy, IdempotencyConfig::new(store)).await;
    let statements = |turns: &[Turn]| turns.iter().filter(|t| !is_release_test(t)).count();
    assert_eq!(statements(&new_app), 2, "{new_app:?}");
    assert_eq!(statements(&again_app), 1, "{again_app:?}");

    eprintln!(
        "postgres round trips, with the pool's release tests: new key {}, replay {}; the \
         first use of a connection {}",
        new.len(),
        again.len(),
        cold.len()
    );
}

/// An operation whose writes commit with its record.
#[post("/v1/calls")]
#[idempotent(required)]
async fn create_call(mut tx: Transaction) -> HttpResponse {
    sqlx::query("SELECT 1")
        .execute(&mut *tx)
        .await
        .expect("the handler's statement");
    HttpResponse::Created().body("call_1")
}

#[actix_web::test]
async fn postgres_transactional_new_key_adds_begin_and_commit_to_the_handler_s_statements() {
    let Some(pg) = TestPostgres::start() else {
        return;
    };
    let (url, proxy) = behind_proxy(&pg);
    // Two connections: the transaction holds one while the claim's comes back to the pool.
    let store = PostgresStore::builder(&url)
        .table(pg.table("round_trips_tx"))
        .max_connections(2)
        .purge_interval(None)
        .build()
        .expect("valid settings");
    store.migrate().await.expect("create the table");
    let app = test::init_service(
        App::new()
            .app_data(IdempotencyConfig::new(store))
            .service(create_call),
    )
    .await;
    let call = |key: &str| {
        test::TestRequest::post()
            .uri("/v1/calls")
            .insert_header(("Idempotency-Key", key))
            .insert_header(("Authorization", "Bearer tenant-1"))
            .to_request()
    };
    // Warm both connections. Which connection a statement lands on is the pool's choice, so
    // a connection may still prepare a statement below, once: that turn (Parse, Describe,
    // Sync) is setup, and left out of the count.
    for n in 0..4 {
        let res = test::call_service(&app, call(&format!("warm-{n}"))).await;
        let status = res.status();
        let body = test::read_body(res).await;
        assert_eq!(status, 201, "{body:?}");
    }
    let new = counted(&proxy, async {
        let res = test::call_service(&app, call("call-0001")).await;
        assert_eq!(res.status(), 201);
    })
    .await;
    let prepared = new.iter().filter(|t| messages(t) == "PDS").count();
    let statements: Vec<_> = new
        .iter()
        .filter(|t| !is_release_test(t) && messages(t) != "PDS")
        .map(|turn| match messages(turn).as_str() {
            // A simple query: its text, less the claim's mark that `BEGIN` sets with it.
            "Q" => {
                let text = String::from_utf8_lossy(&turn.sent[5..turn.sent.len() - 1]);
                let mark = text.strip_prefix("BEGIN; SET LOCAL idem.claim = '");
                let marked = mark.and_then(|rest| rest.strip_suffix('\''));
                match marked {
                    Some(token) if token.len() == 32 => "BEGIN, marked".to_owned(),
                    _ => text.into_owned(),
                }
            }
            kinds => kinds.to_owned(),
        })
        .collect();
    // The claim, BEGIN (marking the transaction as the claim's in the same round trip), the
    // handler's statement, the completion, COMMIT: five round trips, four of them the layer's
    // (sqlx sends the completion and COMMIT one after the other).
    assert_eq!(
        statements,
        ["BECS", "BEGIN, marked", "BECS", "BECS", "COMMIT"],
        "all turns: {new:?}"
    );
    assert_eq!(
        new.len() - statements.len() - prepared,
        2,
        "the claim's connection and the transaction's are tested as they come back to the \
         pool: {new:?}"
    );
    eprintln!(
        "postgres round trips of a transactional new key: {} statements (one the \
         handler's), {} with the pool's release tests and {prepared} statements prepared",
        statements.len(),
        new.len()
    );

    let again = counted(&proxy, async {
        let res = test::call_service(&app, call("call-0001")).await;
        assert_eq!(res.status(), 201);
        assert_eq!(res.headers().get("idempotent-replayed").unwrap(), "true");
    })
    .await;
    let statements = again
        .iter()
        .filter(|t| !is_release_test(t) && messages(t) != "PDS")
        .count();
    assert_eq!(statements, 1, "a replay reads the record only: {again:?}");
}

#[actix_web::test]
async fn redis_new_key_and_replay_round_trips() {
    let Some(redis) = TestRedis::start() else {
        return;
    };
    let upstream = redis
        .url()
        .trim_start_matches("redis://")
        .trim_end_matches('/')
        .to_socket_addrs()
        .ok()
        .and_then(|mut addrs| addrs.next())
        .expect("the test Redis URL is redis://host:port");
    let proxy = RoundTrips::start(upstream);
    let store = RedisStore::builder(format!("redis://{}/", proxy.addr()))
        .build()
        .expect("valid settings");
    let engine = Engine::new(store.clone());

    // Setup, not counted: the connection (its handshake), and each script loaded once.
    let cold = counted(&proxy, async {
        new_key(&engine, key(0)).await;
        replay(&engine, key(0)).await;
    })
    .await;

    let new = counted(&proxy, new_key(&engine, key(1))).await;
    let again = counted(&proxy, replay(&engine, key(1))).await;
    eprintln!(
        "redis round trips: new key {}, replay {}; first use {}",
        new.len(),
        again.len(),
        cold.len()
    );
    let commands = |turns: &[Turn]| -> Vec<String> {
        turns
            .iter()
            .map(|t| String::from_utf8_lossy(&t.sent).into_owned())
            .collect()
    };
    assert_eq!(
        new.len(),
        2,
        "a new key: the claim (SET NX PX GET) and the completion (a script): {:?}",
        commands(&new)
    );
    assert_eq!(
        again.len(),
        1,
        "a replay: the claim finds the record: {:?}",
        commands(&again)
    );

    // Through the actix layer, which adds none.
    let (new, again) = through_app(&proxy, IdempotencyConfig::new(store)).await;
    assert_eq!(new.len(), 2, "{:?}", commands(&new));
    assert_eq!(again.len(), 1, "{:?}", commands(&again));
}

/// A keyed endpoint without a transaction.
#[post("/v1/messages")]
#[idempotent]
async fn create_message() -> HttpResponse {
    HttpResponse::Created().body("message_1")
}

/// The turns of a new key and of its replay through an app on `config`, once a first key
/// has set its connections up.
async fn through_app(proxy: &RoundTrips, config: IdempotencyConfig) -> (Vec<Turn>, Vec<Turn>) {
    let app = test::init_service(App::new().app_data(config).service(create_message)).await;
    let send = |key: &'static str| {
        let req = test::TestRequest::post()
            .uri("/v1/messages")
            .insert_header(("Idempotency-Key", key))
            .insert_header(("Authorization", "Bearer tenant-1"))
            .to_request();
        test::call_service(&app, req)
    };
    assert_eq!(send("warm").await.status(), 201);
    let new = counted(proxy, async {
        assert_eq!(send("message-1").await.status(), 201)
    })
    .await;
    let again = counted(proxy, async {
        let res = send("message-1").await;
        assert_eq!(res.headers().get("idempotent-replayed").unwrap(), "true");
    })
    .await;
    (new, again)
}
