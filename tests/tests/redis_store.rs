//! The Redis store against a real `redis-server`: the shared conformance suite, expiry in
//! Redis itself, one round trip per operation, several app instances sharing one Redis, and
//! outages. Each test skips when no Redis can be had, unless `IDEM_REQUIRE_REDIS=1`; the
//! outage tests always stop a `redis-server` of their own, whatever `IDEM_TEST_REDIS_URL` says.
//! A Redis older than 7.0 is a server of the test's own that answers as Redis 6.2 does.

use std::collections::HashMap;
use std::time::Duration;

use futures_util::future::join_all;
use idem_actix::clock::{Clock, ManualClock, SystemClock, Timestamp};
use idem_actix::RedisStore;
use idem_core::store::ReplayCache;
use idem_core::{
    Begin, Engine, Fingerprint, IdempotencyError, Outcome, Policy, Response, Store, StoreError,
    StoreKey,
};
use idem_tests::redis_proxy::LosingRedisProxy;
use idem_tests::shared_store::{
    self, call, duplicates_while_in_flight_get_409_then_replay, until_not_503, Probe,
};
use idem_tests::{assert_error, eventually, RawRequest, TestRedis, TestServer, Warnings};

/// An app instance with its own `RedisStore`, built by `store` from the URL of `redis`.
fn instance<S: Store>(redis: &TestRedis, probe: &Probe, store: fn(&str) -> S) -> TestServer {
    let url = redis.url().to_owned();
    shared_store::instance(probe, move || store(&url))
}

fn default_store(url: &str) -> RedisStore {
    RedisStore::new(url).expect("valid Redis URL")
}

#[actix_web::test]
async fn redis_store_conforms() {
    let Some(redis) = TestRedis::start() else {
        return;
    };
    let store = RedisStore::builder(redis.url())
        .prefix("conformance:")
        .build()
        .unwrap();
    idem_core::testing::conformance(&store, 7).await;
}

#[actix_web::test]
async fn redis_store_behind_a_replay_cache_conforms() {
    let Some(redis) = TestRedis::start() else {
        return;
    };
    let store = RedisStore::builder(redis.url())
        .prefix("cached-conformance:")
        .build()
        .unwrap();
    idem_core::testing::conformance(&ReplayCache::new(store, 1 << 20), 8).await;
}

/// A store whose URL asks for RESP3 (`?protocol=resp3`, which it takes) keeps the contract:
/// it reads its commands' and scripts' answers (a script's nil, as when it takes over a lapsed
/// claim, and `SET ... GET`'s) alike on either protocol.
#[actix_web::test]
async fn redis_store_conforms_on_a_resp3_connection() {
    let Some(redis) = TestRedis::start() else {
        return;
    };
    let store = RedisStore::builder(format!("{}?protocol=resp3", redis.url()))
        .prefix("resp3-conformance:")
        .build()
        .unwrap();
    idem_core::testing::conformance(&store, 9).await;
}

#[actix_web::test]
async fn records_expire_in_redis_itself_one_key_each_under_the_prefix() {
    let Some(redis) = TestRedis::start() else {
        return;
    };
    let store = RedisStore::builder(redis.url())
        .prefix("expiry:")
        .build()
        .unwrap();
    let engine = Engine::new(store.clone());
    let policy = Policy::DEFAULT
        .lease(Duration::from_secs(30))
        .ttl(Duration::from_secs(3600));
    let key = StoreKey::from_bytes([3; 32]);
    // One Redis key per record, `<prefix><hex of the store key>`, as the store documents.
    let redis_key = format!("expiry:{key}");
    let fp = Fingerprint::new("POST", "/x", "", b"");

    let Ok(Begin::Execute(lease)) = engine.begin(&policy, key, fp).await else {
        panic!("claimed")
    };
    let pttl: i64 = redis.query(redis::cmd("PTTL").arg(&redis_key));
    // The lease, plus the grace that lets a lapsed but undisplaced holder still finish.
    assert!((85_000..=90_000).contains(&pttl), "in-flight PTTL {pttl}");

    let outcome = lease.finish(Response::new(201, [], b"ok")).await.unwrap();
    assert!(matches!(outcome, Outcome::Recorded));
    let pttl: i64 = redis.query(redis::cmd("PTTL").arg(&redis_key));
    assert!(
        (3_595_000..=3_600_000).contains(&pttl),
        "completed PTTL {pttl}"
    );
    let keys: Vec<String> = redis.query(redis::cmd("KEYS").arg("expiry:*"));
    assert_eq!(keys, vec![redis_key]);
}

/// Calls per command since the last reset, less the test's own INFO, CONFIG and handshakes.
fn command_calls(redis: &TestRedis) -> HashMap<String, u64> {
    let calls = command_totals(redis);
    redis.query::<()>(redis::cmd("CONFIG").arg("RESETSTAT"));
    calls
}

/// The commands run so far, by name, as [`command_calls`] counts them, without resetting the
/// counts: commands run between a read and a reset would go uncounted.
fn command_totals(redis: &TestRedis) -> HashMap<String, u64> {
    let info: String = redis.query(redis::cmd("INFO").arg("commandstats"));
    let calls = info
        .lines()
        .filter_map(|line| {
            let (name, stats) = line.strip_prefix("cmdstat_")?.split_once(':')?;
            let calls = stats
                .strip_prefix("calls=")?
                .split(',')
                .next()?
                .parse()
                .ok()?;
            (!(matches!(name, "info" | "ping" | "hello") || name.contains('|')))
                .then(|| (name.to_owned(), calls))
        })
        .collect();
    calls
}

#[actix_web::test]
async fn an_execution_is_two_commands_and_a_replay_one() {
    let Some(redis) = TestRedis::start() else {
        return;
    };
    let probe = Probe::open();
    let server = instance(&redis, &probe, default_store);
    // Warm up: the scripts are loaded on first use.
    call("warm").send(server.addr).await;
    call("warm").send(server.addr).await;
    command_calls(&redis);

    // commandstats also counts the commands the scripts run inside Redis. The client's round
    // trips: a `SET NX GET` that claims and the completion's EVALSHA (a GET and a SET inside),
    // then a `SET NX GET` that finds the record and writes nothing.
    let counts = |pairs: &[(&str, u64)]| {
        pairs
            .iter()
            .map(|(name, n)| (name.to_string(), *n))
            .collect::<HashMap<_, _>>()
    };
    assert_eq!(call("k1").send(server.addr).await.status, 201);
    assert_eq!(
        command_calls(&redis),
        counts(&[("set", 2), ("evalsha", 1), ("get", 1)])
    );
    assert!(call("k1").send(server.addr).await.replayed());
    assert_eq!(command_calls(&redis), counts(&[("set", 1)]));
    RawRequest::post("/v1/calls").send(server.addr).await;
    assert!(command_calls(&redis).is_empty(), "no key, no command");
}

#[actix_web::test]
async fn a_server_without_the_scripts_gets_them_on_the_key_s_own_connection() {
    let Some(redis) = TestRedis::start() else {
        return;
    };
    let probe = Probe::open();
    let server = instance(&redis, &probe, default_store);
    call("warm").send(server.addr).await;
    // A restarted server, or a master new to a cluster, has no scripts.
    redis.query::<()>(redis::cmd("SCRIPT").arg("FLUSH"));
    command_calls(&redis);

    assert_eq!(call("k1").send(server.addr).await.status, 201);
    let info: String = redis.query(redis::cmd("INFO").arg("commandstats"));
    assert!(
        !info.contains("cmdstat_script|load"),
        "no SCRIPT LOAD, which a cluster sends to every master: {info}"
    );
    let calls = command_calls(&redis);
    assert_eq!(calls.get("eval"), Some(&1), "{calls:?}");
    assert!(call("k1").send(server.addr).await.replayed());

    // Loaded by that EVAL: the next completion runs by hash alone.
    assert_eq!(call("k2").send(server.addr).await.status, 201);
    let calls = command_calls(&redis);
    assert_eq!(
        (calls.get("evalsha"), calls.get("eval")),
        (Some(&1), None),
        "{calls:?}"
    );
}

#[actix_web::test]
async fn behind_a_replay_cache_a_replay_is_no_command_and_other_instances_still_see_the_key() {
    let Some(redis) = TestRedis::start() else {
        return;
    };
    let probe = Probe::open();
    let cached = |url: &str| ReplayCache::new(RedisStore::new(url).unwrap(), 1 << 20);
    let a = instance(&redis, &probe, cached);
    let b = instance(&redis, &probe, cached);
    call("warm").send(a.addr).await;
    command_calls(&redis);

    let first = call("k1").send(a.addr).await;
    assert_eq!(first.status, 201);
    command_calls(&redis);
    for _ in 0..3 {
        let replay = call("k1").send(a.addr).await;
        assert!(replay.replayed());
        assert_eq!(replay.body, first.body);
    }
    assert!(
        command_calls(&redis).is_empty(),
        "the instance that recorded it replays from its cache"
    );
    // Another instance asks Redis once (its claim finds the record), and once how long
    // Redis keeps it (a script reading its value and `PTTL`, loaded first if it is not), after
    // answering, then keeps its own copy.
    // Replays meanwhile go to Redis, as without a cache: each of them a claim. (Counted
    // without resets, which would lose the commands of the question, asked meanwhile.)
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let mut calls = command_totals(&redis);
    loop {
        assert_eq!(call("k1").send(b.addr).await.body, first.body);
        let now = command_totals(&redis);
        if now == calls {
            break;
        }
        calls = now;
        assert!(std::time::Instant::now() < deadline, "{calls:?}");
    }
    let count = |name: &str| calls.get(name).copied().unwrap_or(0);
    assert_eq!(
        (count("evalsha"), count("get"), count("pttl")),
        (1, 1, 1),
        "asked once how long Redis keeps it: {calls:?}"
    );
    let claims_only = calls
        .keys()
        .all(|name| ["set", "eval", "evalsha", "get", "pttl"].contains(&name.as_str()));
    assert!(claims_only && count("set") >= 1, "{calls:?}");
    assert_eq!(probe.runs.get(), 2, "warm and k1, once each");
}

/// A clock the given time behind the system's, as a process's whose clock lags another's.
struct Behind(Duration);

impl Clock for Behind {
    fn now(&self) -> Timestamp {
        Timestamp::from_millis(SystemClock.now().as_millis() - self.0.as_millis() as u64)
    }
}

/// A record a process learns from Redis, completed by another process whose clock runs ahead
/// of its own, is kept no longer than Redis keeps it: Redis expires records by its own clock,
/// and a copy judged by the lagging clock alone would replay for as long as the lag past the
/// record's expiry in Redis.
#[actix_web::test]
async fn a_copy_learned_from_redis_is_kept_no_longer_than_redis_keeps_the_record() {
    let Some(redis) = TestRedis::start() else {
        return;
    };
    let store = || {
        let redis = RedisStore::builder(redis.url()).prefix("skew:").build();
        ReplayCache::new(redis.unwrap(), 1 << 20)
    };
    let writer = Engine::new(store());
    // Further behind than `ReplayCache::SKEW`, so that its own clock would keep the copy
    // for long after Redis drops the record.
    let lagging = Engine::new(store()).with_clock(Behind(Duration::from_secs(30)));
    let policy = Policy::DEFAULT.ttl(Duration::from_secs(1));
    let key = StoreKey::from_bytes([7; 32]);
    let fingerprint = Fingerprint::new("POST", "/x", "", b"");
    let Ok(Begin::Execute(lease)) = writer.begin(&policy, key, fingerprint).await else {
        panic!("a new key runs");
    };
    let recorded = lease.finish(Response::new(201, [], b"once")).await;
    assert_eq!(recorded.unwrap(), Outcome::Recorded);
    let learned = lagging.begin(&policy, key, fingerprint).await;
    assert!(matches!(learned, Ok(Begin::Replay(_))), "{learned:?}");
    // The copy is kept once Redis has said how long it keeps the record (asked after the
    // answer): then a replay sends Redis nothing.
    let deadline = std::time::Instant::now() + Duration::from_millis(500);
    loop {
        let before = command_totals(&redis);
        let replayed = lagging.begin(&policy, key, fingerprint).await;
        assert!(matches!(replayed, Ok(Begin::Replay(_))), "{replayed:?}");
        if command_totals(&redis) == before {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "no copy kept");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }

    tokio::time::sleep(Duration::from_millis(1_300)).await;
    let exists: i64 = redis.query(redis::cmd("EXISTS").arg(format!("skew:{key}")));
    assert_eq!(exists, 0, "Redis dropped the record at its expiry");
    let after = lagging.begin(&policy, key, fingerprint).await;
    assert!(
        matches!(after, Ok(Begin::Execute(_))),
        "runs again once Redis dropped the record, as a process without the copy would"
    );
}

#[actix_web::test]
async fn two_instances_sharing_redis_run_a_hundred_duplicates_once() {
    let Some(redis) = TestRedis::start() else {
        return;
    };
    let probe = Probe::closed();
    let a = instance(&redis, &probe, default_store);
    let b = instance(&redis, &probe, default_store);

    let addrs = [a.addr, b.addr];
    duplicates_while_in_flight_get_409_then_replay(&probe, addrs).await;

    // And all at once, spread over both.
    let burst = call("shared-2");
    let all = join_all((0..100).map(|i| burst.send(addrs[i % 2]))).await;
    assert!(all.iter().all(|r| r.status == 201 || r.status == 409));
    assert_eq!(
        all.iter()
            .filter(|r| r.status == 201 && !r.replayed())
            .count(),
        1
    );
    assert_eq!(
        probe.runs.get(),
        2,
        "each key ran once across both instances"
    );
}

#[actix_web::test]
async fn an_outage_fails_closed_and_the_app_recovers_without_a_restart() {
    // A Redis of our own even when IDEM_TEST_REDIS_URL names one: this test stops it.
    let Some(mut redis) = TestRedis::start_owned() else {
        return;
    };
    let probe = Probe::open();
    let server = instance(&redis, &probe, default_store);
    assert_eq!(call("before").send(server.addr).await.status, 201);

    redis.stop();
    for key in ["during-1", "during-2", "before"] {
        let res = call(key).send(server.addr).await;
        assert_error(&res, 503, "idempotency_store_unavailable");
        assert_eq!(res.header("retry-after"), Some("1"));
    }
    assert_eq!(probe.runs.get(), 1, "no handler ran without a claim");

    redis.restart();
    let recovered = until_not_503(server.addr, &call("after"), Duration::from_secs(10)).await;
    assert_eq!(recovered.status, 201);
    assert!(call("after").send(server.addr).await.replayed());
    assert_eq!(probe.runs.get(), 2);
}

/// A Redis that restarted closed every connection to it, and each worker's store learns of it
/// only when it next sends a command: a claim or a read, which can be sent again as they were,
/// is sent again on a new connection, where it was answered 503 on every worker's first
/// keyed request after Redis came back.
#[actix_web::test]
async fn the_first_claim_and_read_after_redis_restarted_are_answered() {
    let Some(mut redis) = TestRedis::start_owned() else {
        return;
    };
    let store = default_store(redis.url());
    let now = SystemClock.now();
    let claim = |n: u8| {
        let claim = idem_core::InFlight {
            fingerprint: Fingerprint::new("POST", "/x", "", b""),
            lease_until: now.saturating_add(Duration::from_secs(30)),
            token: idem_core::Token::random(),
        };
        (StoreKey::from_bytes([n; 32]), claim)
    };
    let (key, first) = claim(5);
    assert!(matches!(
        store.claim(&key, first, now).await,
        Ok(idem_core::store::Claim::Claimed)
    ));
    redis.stop();
    redis.restart();
    let (key, second) = claim(6);
    let claimed = store.claim(&key, second, now).await;
    assert!(
        matches!(claimed, Ok(idem_core::store::Claim::Claimed)),
        "{claimed:?}"
    );
    redis.stop();
    redis.restart();
    let read = store.get(&key, now).await;
    assert!(matches!(read, Ok(None)), "{read:?}");
}

#[actix_web::test]
async fn fail_open_is_a_store_option() {
    let Some(mut redis) = TestRedis::start_owned() else {
        return;
    };
    let probe = Probe::open();
    let server = instance(&redis, &probe, |url| {
        RedisStore::builder(url).fail_open(true).build().unwrap()
    });
    redis.stop();
    let res = call("k").send(server.addr).await;
    assert_eq!(res.status, 201, "runs unprotected");
    assert_eq!(probe.runs.get(), 1);
}

/// A store kept across runtimes on one thread (tests that start a runtime each, a program
/// that runs one, then another) answers on the new runtime at once: a connection is made per
/// thread and runtime, where the thread's connection, whose driver went down with the first
/// runtime, failed the first command on the second (503) before it was made anew.
#[test]
fn a_store_used_on_a_thread_whose_runtime_was_replaced_answers_at_once() {
    let Some(redis) = TestRedis::start() else {
        return;
    };
    let runtime = || actix_web::rt::System::new();
    let store = runtime().block_on(async { default_store(redis.url()) });
    let key = StoreKey::from_bytes([3; 32]);
    for run in 1..=3 {
        let read = runtime().block_on(store.get(&key, SystemClock.now()));
        assert!(
            matches!(read, Ok(None)),
            "runtime {run} of the thread: {read:?}"
        );
    }
}

#[actix_web::test]
async fn a_holder_that_outlives_its_lease_cannot_clobber_the_new_claim() {
    let Some(redis) = TestRedis::start() else {
        return;
    };
    let clock = ManualClock::new(Timestamp::from_millis(1_900_000_000_000));
    let store = RedisStore::builder(redis.url())
        .prefix("fence:")
        .build()
        .unwrap();
    let engine = Engine::new(store).with_clock(clock.clone());
    let policy = Policy::DEFAULT.lease(Duration::from_secs(10));
    let (key, fp) = (
        StoreKey::from_bytes([9; 32]),
        Fingerprint::new("POST", "/x", "", b""),
    );
    let Ok(Begin::Execute(stale)) = engine.begin(&policy, key, fp).await else {
        panic!()
    };
    clock.advance(Duration::from_secs(11));
    let Ok(Begin::Execute(fresh)) = engine.begin(&policy, key, fp).await else {
        panic!("a lapsed lease is taken over")
    };
    let late = Response::new(201, [], b"stale");
    assert_eq!(stale.finish(late).await.unwrap(), Outcome::Lost);
    let done = Response::new(201, [], b"fresh");
    assert!(matches!(
        fresh.finish(done).await.unwrap(),
        Outcome::Recorded
    ));
    let Ok(Begin::Replay(record)) = engine.begin(&policy, key, fp).await else {
        panic!()
    };
    assert_eq!(&record.response.body()[..], b"fresh");
}

/// Redis loses a running request's key (a restart without persistence, a failover to a
/// replica the claim had not reached, an eviction) and nobody claims it meanwhile: the
/// operation ran, so the completion claims the key again by its token and records the
/// response, and the retry replays it instead of running it again.
#[actix_web::test]
async fn a_running_claim_redis_lost_is_claimed_again_and_its_response_recorded() {
    let Some(redis) = TestRedis::start() else {
        return;
    };
    let store = RedisStore::builder(redis.url())
        .prefix("forgotten:")
        .build()
        .unwrap();
    let engine = Engine::new(store);
    let policy = Policy::DEFAULT.lease(Duration::from_secs(30));
    let (key, fp) = (
        StoreKey::from_bytes([11; 32]),
        Fingerprint::new("POST", "/x", "", b""),
    );
    let Ok(Begin::Execute(lease)) = engine.begin(&policy, key, fp).await else {
        panic!("claimed")
    };
    let deleted: i64 = redis.query(redis::cmd("DEL").arg(format!("forgotten:{key}")));
    assert_eq!(deleted, 1, "the claim was in Redis");
    assert!(!lease.renew().await.unwrap(), "the claim is gone");
    assert_eq!(
        lease.finish(Response::new(201, [], b"once")).await.unwrap(),
        Outcome::Recorded
    );
    let Ok(Begin::Replay(replayed)) = engine.begin(&policy, key, fp).await else {
        panic!("the retry replays")
    };
    assert_eq!(&replayed.response.body()[..], b"once");
}

#[actix_web::test]
async fn records_hold_no_raw_key_or_credential() {
    let Some(redis) = TestRedis::start() else {
        return;
    };
    let probe = Probe::open();
    let server = instance(&redis, &probe, |url| {
        RedisStore::builder(url).prefix("secrets:").build().unwrap()
    });
    RawRequest::post("/v1/calls")
        .header("Authorization", "Bearer sk_live_SECRET")
        .header("Idempotency-Key", "order-RAWKEY")
        .send(server.addr)
        .await;
    let keys: Vec<String> = redis.query(redis::cmd("KEYS").arg("secrets:*"));
    assert_eq!(keys.len(), 1);
    let value: Vec<u8> = redis.query(redis::cmd("GET").arg(&keys[0]));
    let text = String::from_utf8_lossy(&value);
    for secret in ["SECRET", "RAWKEY", "Bearer"] {
        assert!(
            !keys[0].contains(secret) && !text.contains(secret),
            "{secret} leaked"
        );
    }
}

#[actix_web::test]
async fn records_over_the_size_bound_are_kept_without_their_body_and_never_run_again() {
    let Some(redis) = TestRedis::start() else {
        return;
    };
    let store = RedisStore::builder(redis.url())
        .prefix("bounded:")
        .max_record_bytes(1024)
        .build()
        .unwrap();
    let engine = Engine::new(store);
    let (key, fp) = (
        StoreKey::from_bytes([5; 32]),
        Fingerprint::new("POST", "/x", "", b""),
    );
    let Ok(Begin::Execute(lease)) = engine.begin(&Policy::DEFAULT, key, fp).await else {
        panic!()
    };
    let big = Response::new(201, [], &vec![b'x'; 2048]);
    assert_eq!(lease.finish(big).await.unwrap(), Outcome::Recorded);
    let retry = engine.begin(&Policy::DEFAULT, key, fp).await;
    assert!(
        matches!(
            retry,
            Err(IdempotencyError::ResponseTooLarge {
                status: 201,
                size: 2048..
            })
        ),
        "the retry learns it completed: {retry:?}"
    );
}

/// An engine on `redis` failing closed (the default), and one failing open.
/// A URL that is not a Redis URL, or a setting the store cannot take, is refused when the
/// store is built as the settings' fault (`StoreError::Config`), naming the URL without its
/// password and how to write one, where it read "store unavailable", as an outage does, and
/// named neither ("Redis URL did not parse - InvalidClientConfig").
#[tokio::test]
async fn settings_the_store_cannot_take_are_refused_as_settings_naming_them() {
    let err = RedisStore::new("http://user:hunter2@example:6379/0").unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, StoreError::Config(_)), "{err:?}");
    assert!(
        text.contains("http://example:6379/0") && text.contains("redis://"),
        "{text}"
    );
    assert!(!text.contains("hunter2"), "{text}");
    let zero = RedisStore::builder("redis://127.0.0.1:1")
        .command_timeout(Duration::ZERO)
        .build()
        .unwrap_err();
    assert!(matches!(zero, StoreError::Config(_)), "{zero:?}");
    let no_place = RedisStore::builder("redis://127.0.0.1:1")
        .max_waiting_writes(0)
        .build()
        .unwrap_err();
    let text = no_place.to_string();
    assert!(
        matches!(no_place, StoreError::Config(_)) && text.contains("max_waiting_writes"),
        "{text}"
    );
}

/// A password written into a URL unencoded may hold `/`, `?` or `#`, which end a URL's host
/// part: the message naming a URL the client refuses, and a builder's `Debug` form, show no
/// password whatever it holds, where the message showed the URL whole (its host part seemed to
/// hold no `@`) and the builder's `Debug` form showed every URL as given.
#[actix_web::test]
async fn no_password_is_shown_in_a_refusal_or_a_builder_s_debug_form() {
    let secret = "S3cret";
    let mut shown = Vec::new();
    for url in [
        format!("redis://default:Ab/{secret}@127.0.0.1:6379/0"),
        format!("redis://default:{secret}#x@127.0.0.1:6379/0"),
        format!("redis://default:{secret}?x@127.0.0.1:6379/0"),
    ] {
        if let Err(err) = RedisStore::new(url.as_str()) {
            shown.push(err.to_string());
        }
        shown.push(format!("{:?}", RedisStore::builder(url.as_str())));
        shown.push(format!("{:?}", RedisStore::cluster([url.as_str()])));
    }
    shown.push(format!(
        "{:?}",
        RedisStore::builder(format!("redis://:{secret}@127.0.0.1:6379/0"))
    ));
    let leaks: Vec<_> = shown.iter().filter(|s| s.contains(secret)).collect();
    assert!(leaks.is_empty(), "{leaks:#?}");
    assert!(
        shown.iter().all(|s| s.contains("127.0.0.1:6379")),
        "the host is named: {shown:#?}"
    );
}

fn closed_and_open(redis: &TestRedis) -> (Engine, Engine) {
    let closed = Engine::new(RedisStore::new(redis.url()).unwrap());
    let open = Engine::new(
        RedisStore::builder(redis.url())
            .fail_open(true)
            .build()
            .unwrap(),
    );
    (closed, open)
}

/// What the two engines of [`closed_and_open`] began with a Redis that cannot answer for now
/// (its error saying `said`): 503 unavailable, and an unprotected run.
fn unavailable_and_unprotected(
    begun: Result<Begin, IdempotencyError>,
    unprotected: Result<Begin, IdempotencyError>,
    said: &str,
) {
    match begun {
        Err(IdempotencyError::StoreUnavailable(StoreError::Unavailable(e))) => {
            assert!(e.to_string().contains(said), "{e}")
        }
        other => panic!("fails closed by default, as unavailable: {other:?}"),
    }
    assert!(
        matches!(
            unprotected,
            Ok(Begin::Unprotected(StoreError::Unavailable(_)))
        ),
        "fails open when asked: {unprotected:?}"
    );
}

/// A Redis that a failover made a replica answers every write with `READONLY` until the
/// connection reaches the new master: unavailable for now, as a Postgres that takes no writes
/// is (see `postgres_store.rs`), and a refusal of its own would not be. Nothing runs unless
/// the store fails open.
#[actix_web::test]
async fn a_redis_demoted_to_a_replica_is_unavailable_and_fails_open_only_when_asked() {
    let Some(redis) = TestRedis::start_owned() else {
        return;
    };
    let fp = Fingerprint::new("POST", "/v1/calls", "", b"{}");
    let key = StoreKey::from_bytes([7; 32]);
    // A replica of a master that is not there: it keeps its data and takes no writes.
    redis.query::<()>(redis::cmd("REPLICAOF").arg("127.0.0.1").arg(1));
    let (closed, open) = closed_and_open(&redis);
    let begun = closed.begin(&Policy::DEFAULT, key, fp).await;
    let unprotected = open.begin(&Policy::DEFAULT, key, fp).await;
    redis.query::<()>(redis::cmd("REPLICAOF").arg("NO").arg("ONE"));
    unavailable_and_unprotected(begun, unprotected, "read only");
}

/// A Redis busy with another client's long script answers every command `BUSY` without running
/// it, as one loading its data answers `LOADING`: unavailable for now, and nothing runs
/// unless the store fails open. It serves again once the script ends (here `SCRIPT KILL`).
#[actix_web::test]
async fn a_redis_busy_with_a_long_script_is_unavailable_and_fails_open_only_when_asked() {
    let Some(redis) = TestRedis::start_owned() else {
        return;
    };
    let fp = Fingerprint::new("POST", "/v1/calls", "", b"{}");
    let key = StoreKey::from_bytes([7; 32]);
    let (closed, open) = closed_and_open(&redis);
    // Connected before Redis is busy, so that only the claims meet it.
    let warm = StoreKey::from_bytes([8; 32]);
    assert!(closed
        .store()
        .get(&warm, Timestamp::from_millis(0))
        .await
        .is_ok());
    assert!(open
        .store()
        .get(&warm, Timestamp::from_millis(0))
        .await
        .is_ok());

    redis.query::<()>(
        redis::cmd("CONFIG")
            .arg("SET")
            .arg("busy-reply-threshold")
            .arg(10),
    );
    // Made now: a connection made while Redis is busy gets `BUSY` for its handshake.
    let mut admin = redis::Client::open(redis.url())
        .unwrap()
        .get_connection()
        .unwrap();
    let url = redis.url().to_owned();
    let script = std::thread::spawn(move || {
        let mut conn = redis::Client::open(url).unwrap().get_connection().unwrap();
        // Runs until killed; the kill answers this client with an error.
        let _: redis::RedisResult<()> = redis::cmd("EVAL")
            .arg("while true do end")
            .arg(0)
            .query(&mut conn);
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let begun = closed.begin(&Policy::DEFAULT, key, fp).await;
    let unprotected = open.begin(&Policy::DEFAULT, key, fp).await;
    redis::cmd("SCRIPT")
        .arg("KILL")
        .query::<()>(&mut admin)
        .unwrap();
    script.join().unwrap();
    unavailable_and_unprotected(begun, unprotected, "BUSY");
    let after = closed.begin(&Policy::DEFAULT, key, fp).await;
    assert!(
        matches!(after, Ok(Begin::Execute(_))),
        "serves again: {after:?}"
    );
}

/// Failing open is for a Redis that cannot be reached, or cannot answer for its data for now
/// (loading it, or a replica or demoted primary answering `READONLY` in a failover): a Redis
/// that answers, but refuses the claim's write (out of memory here; wrong credentials or no
/// permission alike), may still hold the key, and a retry of a recorded key must not run its
/// operation again beside the record.
#[actix_web::test]
async fn failing_open_never_reruns_a_recorded_key_while_redis_answers_but_refuses_writes() {
    let Some(redis) = TestRedis::start_owned() else {
        return;
    };
    let probe = Probe::open();
    let server = instance(&redis, &probe, |url| {
        RedisStore::builder(url).fail_open(true).build().unwrap()
    });
    let first = call("recorded").send(server.addr).await;
    assert_eq!(first.status, 201);
    assert!(call("recorded").send(server.addr).await.replayed());

    redis.query::<()>(redis::cmd("CONFIG").arg("SET").arg("maxmemory").arg(1));
    let retry = call("recorded").send(server.addr).await;
    redis.query::<()>(redis::cmd("CONFIG").arg("SET").arg("maxmemory").arg(0));
    let stored: Option<Vec<u8>> = redis.query(
        redis::cmd("GET").arg(
            redis
                .query::<Vec<String>>(redis::cmd("KEYS").arg("idem:*"))
                .first()
                .expect("the record is still in Redis"),
        ),
    );
    assert!(stored.is_some(), "Redis kept the record throughout");
    assert_eq!(
        probe.runs.get(),
        1,
        "the retry ran the operation again (status {}, replayed {}) though Redis held its record",
        retry.status,
        retry.replayed()
    );
}

/// A Redis at its `maxmemory` (under `noeviction`, as the store asks) refuses new claims,
/// failing closed, but an operation already running still renews its claim and records its
/// response: a completion refused for want of memory would leave the operation that ran
/// without its record, and a retry, once the claim lapsed, would run it again.
#[actix_web::test]
async fn a_full_redis_refuses_new_claims_but_a_running_operation_renews_and_records() {
    let Some(redis) = TestRedis::start_owned() else {
        return;
    };
    let store = RedisStore::builder(redis.url())
        .prefix("full:")
        .build()
        .unwrap();
    let engine = Engine::new(store);
    let policy = Policy::DEFAULT.lease(Duration::from_secs(2));
    let fp = Fingerprint::new("POST", "/x", "", b"");
    let (running, new) = (
        StoreKey::from_bytes([21; 32]),
        StoreKey::from_bytes([22; 32]),
    );
    let Ok(Begin::Execute(lease)) = engine.begin(&policy, running, fp).await else {
        panic!("claimed")
    };

    redis.query::<()>(redis::cmd("CONFIG").arg("SET").arg("maxmemory").arg(1));
    let refused = engine.begin(&policy, new, fp).await;
    assert!(
        matches!(refused, Err(IdempotencyError::StoreUnavailable(_))),
        "a full Redis takes a new claim: {refused:?}"
    );
    let renewed = lease.renew().await;
    assert!(
        matches!(renewed, Ok(true)),
        "a full Redis refused the running claim's renewal: {renewed:?}"
    );
    let finished = lease.finish(Response::new(201, [], b"once")).await;
    assert!(
        matches!(finished, Ok(Outcome::Recorded)),
        "a full Redis refused the operation's record: {finished:?}"
    );
    redis.query::<()>(redis::cmd("CONFIG").arg("SET").arg("maxmemory").arg(0));

    let Ok(Begin::Replay(replayed)) = engine.begin(&policy, running, fp).await else {
        panic!("the retry replays")
    };
    assert_eq!(&replayed.response.body()[..], b"once");
}

/// Redis bounds a record by its encoded bytes, which a record kept without its response
/// already takes a hundred of: a bound below that would record no request (claims refused,
/// or completions refused until their claims lapse and retries run the operation again), so
/// the store refuses it when built, and the least bound it takes records a request.
#[actix_web::test]
async fn a_max_record_bytes_that_holds_no_record_is_refused_when_the_store_is_built() {
    let Some(redis) = TestRedis::start() else {
        return;
    };
    let store = |max: usize| {
        RedisStore::builder(redis.url())
            .prefix("least:")
            .max_record_bytes(max)
            .build()
    };
    for max in [14, 64, 100] {
        let Err(error) = store(max) else {
            panic!("max_record_bytes {max} is taken though no record fits it")
        };
        let message = error.to_string();
        assert!(
            message.contains("max_record_bytes") && message.contains(&max.to_string()),
            "{message}"
        );
    }
    let least = (14..1024)
        .find(|&max| store(max).is_ok())
        .expect("a bound of 1 KiB is taken");
    let store = store(least).unwrap();
    let policy = Policy::DEFAULT
        .max_response(0)
        .lease(Duration::from_millis(200));
    policy.check(&store).expect("the policy suits the store");
    let engine = Engine::new(store);
    let (key, fp) = (
        StoreKey::from_bytes([13; 32]),
        Fingerprint::new("POST", "/x", "", b""),
    );
    let Ok(Begin::Execute(lease)) = engine.begin(&policy, key, fp).await else {
        panic!("claimed under a bound of {least}")
    };
    let outcome = lease.finish(Response::new(201, [], b"done")).await;
    assert_eq!(
        outcome.unwrap(),
        Outcome::Recorded,
        "recorded under a bound of {least}"
    );
    let retry = engine.begin(&policy, key, fp).await;
    assert!(
        matches!(
            retry,
            Err(IdempotencyError::ResponseTooLarge { status: 201, .. })
        ),
        "the retry learns it ran: {retry:?}"
    );
}

/// The address of a Redis of our own.
fn addr_of(redis: &TestRedis) -> std::net::SocketAddr {
    let host = redis
        .url()
        .trim_start_matches("redis://")
        .trim_end_matches('/');
    host.parse().expect("a loopback address")
}

/// A failover behind the store's one address (a DNS name or a virtual IP that moves to the
/// new primary, as managed Redis services do): the connection open before it still reaches
/// the old primary, now a replica that answers every write `READONLY` for as long as the
/// connection lives. The store connects anew, so it reaches the new primary through the
/// address, and its records replay there without a restart.
#[actix_web::test]
async fn after_a_failover_behind_its_address_the_store_reaches_the_new_primary() {
    let (Some(old), Some(new)) = (TestRedis::start_owned(), TestRedis::start_owned()) else {
        return;
    };
    let (old_addr, new_addr) = (addr_of(&old), addr_of(&new));
    let replicaof = |redis: &TestRedis, of: Option<std::net::SocketAddr>| match of {
        Some(at) => redis.query::<()>(
            redis::cmd("REPLICAOF")
                .arg(at.ip().to_string())
                .arg(at.port()),
        ),
        None => redis.query::<()>(redis::cmd("REPLICAOF").arg("NO").arg("ONE")),
    };
    let synced = |replica: &TestRedis| {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let info: String = replica.query(redis::cmd("INFO").arg("replication"));
            if info.contains("master_link_status:up") {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "replica syncs: {info}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    // Synced over the socket alone, so that no server writes its data to the working directory.
    for redis in [&old, &new] {
        for (name, value) in [
            ("repl-diskless-sync", "yes"),
            ("repl-diskless-sync-delay", "0"),
            ("repl-diskless-load", "swapdb"),
        ] {
            redis.query::<()>(redis::cmd("CONFIG").arg("SET").arg(name).arg(value));
        }
    }
    replicaof(&new, Some(old_addr));
    synced(&new);
    let address = idem_tests::RoundTrips::start(old_addr);
    let store = RedisStore::builder(format!("redis://{}/", address.addr()))
        .prefix("moved:")
        .build()
        .unwrap();
    let engine = Engine::new(store);
    let policy = Policy::DEFAULT;
    let fp = Fingerprint::new("POST", "/x", "", b"");
    let (done, fresh) = (
        StoreKey::from_bytes([21; 32]),
        StoreKey::from_bytes([22; 32]),
    );
    let Ok(Begin::Execute(lease)) = engine.begin(&policy, done, fp).await else {
        panic!("claimed")
    };
    let recorded = lease.finish(Response::new(201, [], b"first")).await;
    assert_eq!(recorded.unwrap(), Outcome::Recorded);
    let acked: i64 = old.query(redis::cmd("WAIT").arg(1).arg(5000));
    assert_eq!(acked, 1, "the replica has the record");

    // The failover: the replica is promoted, the old primary follows it, the address moves.
    replicaof(&new, None);
    replicaof(&old, Some(new_addr));
    synced(&old);
    address.retarget(new_addr);
    let refused = engine.begin(&policy, fresh, fp).await;
    assert!(
        matches!(
            refused,
            Err(IdempotencyError::StoreUnavailable(StoreError::Unavailable(
                _
            )))
        ),
        "the old primary takes no writes: {refused:?}"
    );

    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let replayed = loop {
        match engine.begin(&policy, done, fp).await {
            Ok(Begin::Replay(record)) => break record,
            Err(IdempotencyError::StoreUnavailable(e)) => assert!(
                std::time::Instant::now() < deadline,
                "still answered by the old primary: {e}"
            ),
            other => panic!("{other:?}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(&replayed.response.body()[..], b"first");
    let Ok(Begin::Execute(lease)) = engine.begin(&policy, fresh, fp).await else {
        panic!("a new key runs on the new primary")
    };
    let recorded = lease.finish(Response::new(201, [], b"new")).await;
    assert_eq!(recorded.unwrap(), Outcome::Recorded);
    let on_new: Option<Vec<u8>> = new.query(redis::cmd("GET").arg(format!("moved:{fresh}")));
    assert!(on_new.is_some(), "written on the new primary");
}

/// How many connections `redis` has accepted since it started, the one that asks included.
fn connections_received(redis: &TestRedis) -> u64 {
    let info: String = redis.query(redis::cmd("INFO").arg("stats"));
    info.lines()
        .find_map(|line| line.strip_prefix("total_connections_received:"))
        .and_then(|count| count.trim().parse().ok())
        .expect("INFO stats counts the connections received")
}

/// While the store's address still leads to a node that takes no writes (a failover under
/// way, its DNS name not moved yet), every write answers `READONLY`, on every new connection
/// as on the old one. The store connects anew at most once per half second, not once per
/// batch of commands: under load, a failover does not become a storm of connections against
/// the replica. Every command still answers unavailable meanwhile.
#[actix_web::test]
async fn a_replica_answering_read_only_gets_at_most_one_new_connection_per_half_second() {
    let Some(replica) = TestRedis::start_owned() else {
        return;
    };
    // A replica of a master that is not there: it takes no writes.
    replica.query::<()>(redis::cmd("REPLICAOF").arg("127.0.0.1").arg(1));
    let engine = Engine::new(RedisStore::new(replica.url()).unwrap());
    let fp = Fingerprint::new("POST", "/x", "", b"");
    let before = connections_received(&replica);
    let started = std::time::Instant::now();
    join_all((0..8u8).map(|task| {
        let engine = &engine;
        async move {
            for n in 0..60u8 {
                let mut key = [0; 32];
                key[..2].copy_from_slice(&[task, n]);
                let key = StoreKey::from_bytes(key);
                let begun = engine.begin(&Policy::DEFAULT, key, fp).await;
                assert!(
                    matches!(
                        begun,
                        Err(IdempotencyError::StoreUnavailable(StoreError::Unavailable(
                            _
                        )))
                    ),
                    "a replica takes no claim: {begun:?}"
                );
            }
        }
    }))
    .await;
    let elapsed = started.elapsed();
    // Less the connection that asks now.
    let made = connections_received(&replica) - before - 1;
    // The first connection, the one that replaces it at the first `READONLY`, then one per
    // half second of the run.
    let bound = 2 + u64::try_from(elapsed.as_millis() / 500).unwrap();
    assert!(
        made <= bound,
        "{made} connections in {elapsed:?} of 480 commands answered READONLY, over {bound}"
    );
}

/// Held back from connecting anew by a replica that answered `READONLY` a moment ago, the
/// store still follows its address once it leads to the new primary: half a second on, the
/// next write goes out on a new connection, and reaches the new primary at its first try,
/// sooner than the `Retry-After` (1 s) that the 503s meanwhile tell clients to wait.
#[actix_web::test]
async fn a_store_held_back_from_connecting_anew_reaches_the_new_primary_half_a_second_on() {
    let (Some(replica), Some(primary)) = (TestRedis::start_owned(), TestRedis::start_owned())
    else {
        return;
    };
    replica.query::<()>(redis::cmd("REPLICAOF").arg("127.0.0.1").arg(1));
    let address = idem_tests::RoundTrips::start(addr_of(&replica));
    let engine = Engine::new(RedisStore::new(format!("redis://{}/", address.addr())).unwrap());
    let fp = Fingerprint::new("POST", "/x", "", b"");
    let key = |n: u8| {
        let mut key = [0; 32];
        key[0] = n;
        StoreKey::from_bytes(key)
    };
    // Writes answered READONLY, on the first connection and on the one that replaced it.
    for n in 0..20 {
        let begun = engine.begin(&Policy::DEFAULT, key(n), fp).await;
        assert!(
            matches!(
                begun,
                Err(IdempotencyError::StoreUnavailable(StoreError::Unavailable(
                    _
                )))
            ),
            "a replica takes no claim: {begun:?}"
        );
    }
    let connections = address.connections();
    assert!(connections >= 2, "the store connected anew");

    address.retarget(addr_of(&primary));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let begun = engine.begin(&Policy::DEFAULT, key(20), fp).await;
    assert!(
        matches!(begun, Ok(Begin::Execute(_))),
        "the first write reaches the new primary: {begun:?}"
    );
    assert_eq!(
        address.connections(),
        connections + 1,
        "on one new connection"
    );
}

/// A TTL or lease set in code can be longer than Redis takes as an expiry (`PX` over about
/// 292 million years, less the present, is out of range): the key is kept as long as Redis
/// allows, and the record's own times still say when it lapses.
#[actix_web::test]
async fn a_ttl_or_lease_longer_than_redis_takes_as_an_expiry_still_claims_and_records() {
    let Some(redis) = TestRedis::start() else {
        return;
    };
    let store = RedisStore::builder(redis.url())
        .prefix("forever:")
        .build()
        .unwrap();
    let engine = Engine::new(store);
    let forever = Duration::from_secs(u64::MAX);
    let fp = Fingerprint::new("POST", "/x", "", b"");
    for (n, policy) in [
        Policy::DEFAULT.lease(forever),
        Policy::DEFAULT
            .ttl(forever)
            .lease(Duration::from_millis(200)),
    ]
    .into_iter()
    .enumerate()
    {
        policy
            .check(engine.store().as_ref())
            .expect("a valid policy");
        let key = StoreKey::from_bytes([30 + n as u8; 32]);
        let begun = engine.begin(&policy, key, fp).await;
        let Ok(Begin::Execute(lease)) = begun else {
            panic!("policy {n}: claimed: {begun:?}")
        };
        let recorded = lease.finish(Response::new(201, [], b"kept")).await;
        assert_eq!(recorded.unwrap(), Outcome::Recorded, "policy {n}");
        let Ok(Begin::Replay(record)) = engine.begin(&policy, key, fp).await else {
            panic!("policy {n}: the retry replays")
        };
        assert_eq!(&record.response.body()[..], b"kept");
        let pttl: i64 = redis.query(redis::cmd("PTTL").arg(format!("forever:{key}")));
        assert!(pttl > 0, "policy {n}: kept with an expiry, {pttl}");
    }
}

/// What `Policy::check` lets through, Redis keeps: under the largest `max_response` the check
/// passes for a store's `max_record_bytes`, a response of `max_response` bytes is replayed
/// whole, never kept without its body.
#[actix_web::test]
async fn a_response_of_the_largest_max_response_the_check_passes_is_replayed_whole() {
    let Some(redis) = TestRedis::start() else {
        return;
    };
    let store = RedisStore::builder(redis.url())
        .prefix("largest:")
        .max_record_bytes(4096)
        .build()
        .unwrap();
    let largest = (0..=4096)
        .rev()
        .find(|&max| Policy::DEFAULT.max_response(max).check(&store).is_ok())
        .expect("some max_response suits the store");
    let policy = Policy::DEFAULT.max_response(largest);
    let engine = Engine::new(store);
    let (key, fp) = (
        StoreKey::from_bytes([40; 32]),
        Fingerprint::new("POST", "/x", "", b""),
    );
    let Ok(Begin::Execute(lease)) = engine.begin(&policy, key, fp).await else {
        panic!("claimed")
    };
    let body = vec![b'x'; largest];
    let recorded = lease.finish(Response::new(201, [], &body)).await;
    assert_eq!(recorded.unwrap(), Outcome::Recorded);
    match engine.begin(&policy, key, fp).await {
        Ok(Begin::Replay(record)) => assert_eq!(record.response.body(), &body[..]),
        other => panic!("a response of max_response {largest} bytes is replayed: {other:?}"),
    }
}

/// A server on a free port of 127.0.0.1 that answers what the store sends as Redis 6.2 does:
/// it has no `CLIENT SETINFO` (Redis 7.2 added it; the client sends it on connecting and
/// takes a refusal) and refuses `SET` with `NX` beside `GET` (Redis 7.0 took them together)
/// as a syntax error.
async fn redis_6_2() -> std::net::SocketAddr {
    fake_redis(|args| {
        let has = |word: &str| args.iter().skip(3).any(|arg| arg == word);
        match args.first().map_or("", String::as_str) {
            "SET" if has("NX") && has("GET") => Some("-ERR syntax error\r\n".into()),
            "PING" => Some("+PONG\r\n".into()),
            _ => None,
        }
    })
    .await
}

/// A server on a free port of 127.0.0.1 that answers each command (its words upper-cased)
/// with `answer`'s reply, or, where that has none, as Redis 6.2 answers a command it does not
/// have; `CLIENT SETINFO` (Redis 7.2 added it; the client sends it on connecting and takes a
/// refusal) always so. A reply of `""` is none at all: the client waits for it.
async fn fake_redis(answer: fn(&[String]) -> Option<String>) -> std::net::SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// The first whole command in `buf` (an array of bulk strings, upper-cased), and the
    /// bytes it takes.
    fn command(buf: &[u8]) -> Option<(Vec<String>, usize)> {
        let line = |at: usize| {
            let end = at + buf.get(at..)?.windows(2).position(|w| w == b"\r\n")?;
            let text = std::str::from_utf8(buf.get(at + 1..end)?).ok()?;
            Some((text.parse::<usize>().ok()?, end + 2))
        };
        let (count, mut at) = line(0)?;
        let mut args = Vec::with_capacity(count);
        for _ in 0..count {
            let (len, start) = line(at)?;
            let arg = buf.get(start..start + len)?;
            args.push(String::from_utf8_lossy(arg).to_ascii_uppercase());
            at = start + len + 2;
        }
        (buf.len() >= at).then_some((args, at))
    }

    let reply = move |args: &[String]| {
        match args.first().map_or("", String::as_str) {
        "CLIENT" if args.get(1).is_some_and(|sub| sub == "SETINFO") => {
            "-ERR Unknown subcommand or wrong number of arguments for 'SETINFO'. Try CLIENT HELP.\r\n".into()
        }
        name => answer(args).unwrap_or_else(|| format!("-ERR unknown command `{name}`\r\n")),
    }
    };

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut buf, mut read) = (Vec::new(), [0; 4096]);
                while let Ok(n @ 1..) = socket.read(&mut read).await {
                    buf.extend_from_slice(&read[..n]);
                    let mut answers = String::new();
                    while let Some((args, used)) = command(&buf) {
                        buf.drain(..used);
                        answers.push_str(&reply(&args));
                    }
                    if socket.write_all(answers.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

/// A claim is one `SET key value NX PX ms GET`, which Redis takes from 7.0 on: an older one
/// answers a syntax error (6.2 refuses NX beside GET, older ones GET altogether). The error
/// says that the store needs Redis 7.0 or later, with the server's own answer, where it said
/// only `syntax error`; and as any refusal of a server that answered, it fails closed even
/// under fail-open.
#[actix_web::test]
async fn a_redis_older_than_7_that_refuses_set_nx_get_is_named_in_the_error() {
    let addr = redis_6_2().await;
    let fp = Fingerprint::new("POST", "/x", "", b"");
    for fail_open in [false, true] {
        let store = RedisStore::builder(format!("redis://{addr}/"))
            .fail_open(fail_open)
            .build()
            .unwrap();
        let begun = Engine::new(store)
            .begin(&Policy::DEFAULT, StoreKey::from_bytes([50; 32]), fp)
            .await;
        let Err(IdempotencyError::StoreUnavailable(error @ StoreError::Refused(_))) = begun else {
            panic!("fail_open {fail_open}: refused, and fails closed: {begun:?}")
        };
        let message = error.to_string();
        for said in ["NX", "GET", "Redis 7.0 or later", "syntax error"] {
            assert!(
                message.contains(said),
                "fail_open {fail_open}: {said:?} in {message}"
            );
        }
    }
}

/// A keyed request that a Redis older than 7.0 refuses is answered 503, and its warning in
/// the log says why and what to do: the store's own error, where it said only that the store
/// is unavailable.
#[actix_web::test]
async fn a_request_a_redis_older_than_7_refuses_is_logged_with_the_version_the_store_needs() {
    let warnings = Warnings::installed();
    let addr = redis_6_2().await;
    let probe = Probe::open();
    let server = shared_store::instance(&probe, move || {
        RedisStore::new(format!("redis://{addr}/")).unwrap()
    });
    let res = call("old-redis").send(server.addr).await;
    assert_error(&res, 503, "idempotency_store_unavailable");
    assert_eq!(probe.runs.get(), 0, "nothing runs");
    // Other tests of this binary log refusals of their own meanwhile.
    let refusals: Vec<_> = warnings
        .logged()
        .into_iter()
        .filter(|fields| {
            fields
                .get("message")
                .is_some_and(|m| m.contains("refused with 503"))
        })
        .collect();
    let named = refusals.iter().any(|fields| {
        fields
            .get("error")
            .is_some_and(|e| e.contains("Redis 7.0 or later") && e.contains("syntax error"))
    });
    assert!(named, "{refusals:?}");
}

/// Polls `redis`'s `INFO replication` until `line` is among its lines (10 s at most).
fn replication_shows(redis: &TestRedis, line: &str) {
    replication_shows_where(redis, line, |l| l == line);
}

/// Polls `redis`'s `INFO replication` until one of its lines passes `shows` (10 s at most).
fn replication_shows_where(redis: &TestRedis, line: &str, shows: impl Fn(&str) -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let info: String = redis.query(redis::cmd("INFO").arg("replication"));
        if info.lines().any(|l| shows(l.trim())) {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no `{line}` in {info}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Two servers of our own, the second a replica of the first, linked and caught up; `None`
/// (the test should skip) as for [`TestRedis::start_owned`].
fn primary_and_replica() -> Option<(TestRedis, TestRedis)> {
    let (primary, replica) = (TestRedis::start_owned()?, TestRedis::start_owned()?);
    let port = addr_of(&primary).port();
    replica.query::<()>(redis::cmd("REPLICAOF").arg("127.0.0.1").arg(port));
    replication_shows(&replica, "master_link_status:up");
    replication_shows(&primary, "connected_slaves:1");
    // Online, so that `WAIT` counts it: after a diskless sync, the primary takes a replica as
    // online at its first acknowledgement, up to a second after the link is up.
    replication_shows_where(&primary, "slave0:...,state=online,...", |l| {
        l.starts_with("slave0:") && l.contains(",state=online,")
    });
    Some((primary, replica))
}

/// With writes that wait for replicas, a claim goes out on a connection lent from the
/// thread's own: after a restart of the primary, the claim that finds its lent connection
/// closed is sent again on a new one, as a claim on the shared connection is, where it was sent
/// again on the same closed connection and answered 503 (and, under `fail_open`, ran
/// unprotected while Redis answered, leaving no record, so that its retry ran again).
#[actix_web::test]
async fn the_first_claim_after_the_primary_restarted_is_answered_when_writes_wait_for_replicas() {
    let Some((mut primary, replica)) = primary_and_replica() else {
        return;
    };
    let store = RedisStore::builder(primary.url())
        .wait_for_replicas(1, Duration::from_millis(200))
        .fail_open(true)
        .build()
        .unwrap();
    let engine = Engine::new(store);
    let fp = Fingerprint::new("POST", "/x", "", b"");
    let key = |n: u8| StoreKey::from_bytes([n; 32]);
    let Ok(Begin::Execute(lease)) = engine.begin(&Policy::DEFAULT, key(1), fp).await else {
        panic!("claimed")
    };
    lease
        .finish(Response::new(201, [], b"first"))
        .await
        .unwrap();

    primary.restart();
    replication_shows(&replica, "master_link_status:up");
    replication_shows_where(&primary, "slave0:...,state=online,...", |l| {
        l.starts_with("slave0:") && l.contains(",state=online,")
    });
    let begun = engine.begin(&Policy::DEFAULT, key(2), fp).await;
    assert!(matches!(begun, Ok(Begin::Execute(_))), "{begun:?}");
}

/// Asked to wait for a replica, a claim is on the replica before its handler may run; a claim
/// that no replica acknowledged in time is released and answers unavailable (a failover could
/// have lost it, and a duplicate run beside it), where it ran on the primary's word alone. A
/// completion that no replica acknowledged is kept, and logged.
#[actix_web::test]
async fn claims_wait_for_their_replicas_when_asked_and_one_no_replica_took_is_released() {
    let Some((primary, replica)) = primary_and_replica() else {
        return;
    };
    let logged = Warnings::installed();
    let store = RedisStore::builder(primary.url())
        .prefix("replicated:")
        .wait_for_replicas(1, Duration::from_millis(200))
        .build()
        .unwrap();
    let engine = Engine::new(store);
    let fp = Fingerprint::new("POST", "/x", "", b"");
    let key = |n: u8| StoreKey::from_bytes([n; 32]);

    let Ok(Begin::Execute(lease)) = engine.begin(&Policy::DEFAULT, key(1), fp).await else {
        panic!("claimed")
    };
    // Acknowledged: the replica holds the claim before the handler runs.
    let held: Option<Vec<u8>> =
        replica.query(redis::cmd("GET").arg(format!("replicated:{}", key(1))));
    assert!(held.is_some(), "the claim is on the replica");
    // Each claim waits on a connection of its own, lent and given back: not one per claim.
    let connections = || {
        let stats: String = primary.query(redis::cmd("INFO").arg("stats"));
        let line = stats
            .lines()
            .find_map(|l| l.strip_prefix("total_connections_received:"));
        line.and_then(|n| n.trim().parse::<u64>().ok()).unwrap()
    };
    let before = connections();
    for n in 10..40 {
        let begun = engine.begin(&Policy::DEFAULT, key(n), fp).await;
        assert!(matches!(begun, Ok(Begin::Execute(_))), "{begun:?}");
    }
    // The count's own queries connect too, one each.
    let made = connections() - before - 1;
    assert!(made <= 1, "{made} connections made for 30 claims");

    // The replica leaves: nothing acknowledges a write any more.
    replica.query::<()>(redis::cmd("REPLICAOF").arg("NO").arg("ONE"));
    replication_shows(&primary, "connected_slaves:0");
    let begun = engine.begin(&Policy::DEFAULT, key(2), fp).await;
    let Err(IdempotencyError::StoreUnavailable(StoreError::Unavailable(why))) = begun else {
        panic!("a claim no replica took is unavailable: {begun:?}")
    };
    assert!(
        why.to_string()
            .contains("reached 0 of the 1 Redis replicas"),
        "{why}"
    );
    let left: Option<Vec<u8>> =
        primary.query(redis::cmd("GET").arg(format!("replicated:{}", key(2))));
    assert_eq!(left, None, "released");

    // The first run's record is kept all the same, and logged.
    let outcome = lease.finish(Response::new(201, [], b"ok")).await.unwrap();
    assert!(matches!(outcome, Outcome::Recorded));
    assert!(matches!(
        engine.begin(&Policy::DEFAULT, key(1), fp).await,
        Ok(Begin::Replay(_))
    ));
    assert!(
        logged.containing_from(
            "reached fewer Redis replicas than asked",
            &Warnings::this_thread()
        ) >= 1
    );
}

/// A run whose claim Redis dropped (a lapsed claim, a restart, a failover that lost it) claims
/// its key again to record its response. With replicas asked for and none acknowledging, that
/// claim again was released as a claim no replica took, and the operation, which ran, left no
/// record: its retry ran it again. It is recorded, as a completion no replica acknowledged is
/// (kept, and logged).
#[actix_web::test]
async fn a_run_whose_claim_redis_dropped_is_recorded_even_when_no_replica_acknowledges() {
    let Some((primary, replica)) = primary_and_replica() else {
        return;
    };
    let store = RedisStore::builder(primary.url())
        .prefix("dropped:")
        .wait_for_replicas(1, Duration::from_millis(200))
        .build()
        .unwrap();
    let engine = Engine::new(store);
    let fp = Fingerprint::new("POST", "/x", "", b"");
    let key = StoreKey::from_bytes([5; 32]);
    let Ok(Begin::Execute(lease)) = engine.begin(&Policy::DEFAULT, key, fp).await else {
        panic!("claimed")
    };
    replica.query::<()>(redis::cmd("REPLICAOF").arg("NO").arg("ONE"));
    replication_shows(&primary, "connected_slaves:0");
    primary.query::<()>(redis::cmd("DEL").arg(format!("dropped:{key}")));

    let outcome = lease.finish(Response::new(201, [], b"ran")).await.unwrap();
    assert!(matches!(outcome, Outcome::Recorded), "{outcome:?}");
    let Ok(Begin::Replay(replayed)) = engine.begin(&Policy::DEFAULT, key, fp).await else {
        panic!("the retry replays what ran")
    };
    assert_eq!(&replayed.response.body()[..], b"ran");
}

/// A claim waiting for its replicas (`WAIT` blocks the connection it is sent on until they
/// acknowledge, or its timeout) holds up no other request's command: each waits on a
/// connection of its own, where all of them queued behind it on the store's shared one, and
/// one WAIT after another timed the others out while a replica was down. Waiting on the
/// connection that carried the claim also means the count is of that claim's write, never
/// of a connection that carried none.
#[actix_web::test]
async fn a_claim_waiting_for_replicas_holds_up_no_other_key() {
    let Some(primary) = TestRedis::start_owned() else {
        return;
    };
    // No replica: every WAIT runs to its timeout.
    let store = RedisStore::builder(primary.url())
        .prefix("held-up:")
        .command_timeout(Duration::from_secs(5))
        .wait_for_replicas(1, Duration::from_secs(2))
        .build()
        .unwrap();
    let engine = Engine::new(store.clone());
    let fp = Fingerprint::new("POST", "/x", "", b"");
    let key = |n: u8| StoreKey::from_bytes([n; 32]);
    // Connected first, so that the claim below goes out at once.
    assert!(store
        .get(&key(9), engine.clock().now())
        .await
        .unwrap()
        .is_none());

    let waiting = engine.begin(&Policy::DEFAULT, key(1), fp);
    let other = async {
        // Once the claim's WAIT blocks its connection at the server, a read, which Redis
        // answers at once unless it queues behind that WAIT.
        eventually(|| {
            let info: String = primary.query(redis::cmd("INFO").arg("clients"));
            info.lines().any(|line| line.trim() == "blocked_clients:1")
        })
        .await;
        tokio::time::timeout(
            Duration::from_secs(1),
            store.get(&key(2), engine.clock().now()),
        )
        .await
    };
    let (begun, read) = futures_util::join!(waiting, other);
    let Ok(read) = read else {
        panic!("the other key's read waited for the claim's WAIT")
    };
    assert!(matches!(read, Ok(None)), "{read:?}");
    assert!(
        matches!(
            begun,
            Err(IdempotencyError::StoreUnavailable(StoreError::Unavailable(
                _
            )))
        ),
        "no replica acknowledged the claim: {begun:?}"
    );
}

/// The connections writes wait on are kept for the next writes; when one turns out dead (a
/// server restarted, a proxy that closed idle connections), those kept beside it are dead
/// too, and go with it: one write answers 503, not one per connection kept.
#[actix_web::test]
async fn a_dead_connection_kept_for_waits_takes_the_others_with_it() {
    let Some(primary) = TestRedis::start_owned() else {
        return;
    };
    let store = RedisStore::builder(primary.url())
        .prefix("dead:")
        .wait_for_replicas(1, Duration::from_millis(50))
        .build()
        .unwrap();
    let engine = Engine::new(store);
    let fp = Fingerprint::new("POST", "/x", "", b"");
    let key = |n: u8| StoreKey::from_bytes([n; 32]);
    let unreplicated = |begun: &Result<Begin, IdempotencyError>| {
        matches!(begun, Err(IdempotencyError::StoreUnavailable(StoreError::Unavailable(why)))
            if why.to_string().contains("reached 0 of the 1"))
    };
    // Four at once: four connections, kept once their claims are refused (no replica).
    let begun = join_all((0..4).map(|n| engine.begin(&Policy::DEFAULT, key(n), fp))).await;
    assert!(begun.iter().all(unreplicated), "{begun:?}");
    primary.query::<()>(redis::cmd("CLIENT").arg("KILL").arg("TYPE").arg("normal"));
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut failed = 0;
    for n in 10..14 {
        let begun = engine.begin(&Policy::DEFAULT, key(n), fp).await;
        if !unreplicated(&begun) {
            failed += 1;
        }
    }
    assert!(failed <= 1, "{failed} writes failed on dead connections");
}

#[actix_web::test]
async fn a_wait_for_replicas_that_cannot_work_is_refused_with_the_rule() {
    let refused = |replicas: u32, ms: u64| {
        RedisStore::builder("redis://127.0.0.1:1/")
            .command_timeout(Duration::from_millis(500))
            .wait_for_replicas(replicas, Duration::from_millis(ms))
            .build()
            .err()
            .map(|e| e.to_string())
    };
    assert!(refused(0, 100).unwrap().contains("waits for no replica"));
    assert!(refused(1, 0).unwrap().contains("at least 1 ms"));
    assert!(refused(1, 500).unwrap().contains("command timeout"));
    assert_eq!(refused(1, 499), None);
}

/// A Redis the tests start writes whatever it saves (a replica's copy of its primary, above)
/// to a directory of its own, never to the working directory, the package's source folder.
#[test]
fn a_test_redis_keeps_its_files_out_of_the_working_directory() {
    let Some(redis) = TestRedis::start_owned() else {
        return;
    };
    let dir: Vec<String> = redis.query(redis::cmd("CONFIG").arg("GET").arg("dir"));
    let dir = std::path::PathBuf::from(&dir[1]);
    let cwd = std::env::current_dir().unwrap();
    assert!(
        !cwd.starts_with(&dir) && !dir.starts_with(&cwd),
        "{} is outside {}",
        dir.display(),
        cwd.display()
    );
}

/// Under `fail_open`, a claim that fewer replicas than asked acknowledged is kept, not
/// released: Redis answered and holds it, so the request runs as it would without waiting for
/// replicas, and a duplicate meanwhile is turned away as in flight. Released, the duplicate ran
/// beside the first run, unprotected, while Redis was up.
#[actix_web::test]
async fn failing_open_a_claim_its_replicas_did_not_acknowledge_still_holds_its_key() {
    // No replica: every wait falls short.
    let Some(redis) = TestRedis::start_owned() else {
        return;
    };
    let store = RedisStore::builder(redis.url())
        .wait_for_replicas(1, Duration::from_millis(10))
        .fail_open(true)
        .build()
        .unwrap();
    let engine = Engine::new(store);
    let fp = Fingerprint::new("POST", "/x", "", b"");
    let key = StoreKey::from_bytes([4; 32]);
    let first = engine.begin(&Policy::DEFAULT, key, fp).await;
    let Ok(Begin::Execute(lease)) = first else {
        panic!("the first request runs under its claim: {first:?}")
    };
    let duplicate = engine.begin(&Policy::DEFAULT, key, fp).await;
    assert!(
        matches!(duplicate, Err(IdempotencyError::InFlight)),
        "a duplicate while it runs: {duplicate:?}"
    );
    let outcome = lease.finish(Response::new(201, [], b"ok")).await;
    assert!(matches!(outcome, Ok(Outcome::Recorded)), "{outcome:?}");
    let retry = engine.begin(&Policy::DEFAULT, key, fp).await;
    assert!(matches!(retry, Ok(Begin::Replay(_))), "{retry:?}");
}

/// Replicas that fall short fall short for every claim and record alike, while they lag or
/// are missing: warned of when it starts, then once a minute, as an outage is, where each
/// claim kept failing open, and each record, was warned of (a line or two per request).
#[tokio::test]
async fn replicas_that_fall_short_are_warned_of_once_a_minute_not_per_request() {
    // No replica: every wait falls short.
    let Some(redis) = TestRedis::start_owned() else {
        return;
    };
    let warnings = Warnings::installed();
    let store = RedisStore::builder(redis.url())
        .prefix("short:")
        .wait_for_replicas(1, Duration::from_millis(10))
        .fail_open(true)
        .build()
        .unwrap();
    let engine = Engine::new(store);
    let fp = Fingerprint::new("POST", "/x", "", b"");
    for n in 0..4 {
        let key = StoreKey::from_bytes([40 + n; 32]);
        let Ok(Begin::Execute(lease)) = engine.begin(&Policy::DEFAULT, key, fp).await else {
            panic!("a claim failing open runs");
        };
        let outcome = lease.finish(Response::new(201, [], b"ok")).await;
        assert!(matches!(outcome, Ok(Outcome::Recorded)), "{outcome:?}");
    }
    let here = Warnings::this_thread();
    assert_eq!(
        warnings.containing_from("Redis replicas", &here),
        1,
        "{:?}",
        warnings.logged()
    );
}

/// An endpoint that fails open, on a store that does not: a claim its replicas did not
/// acknowledge is released, and Redis, which answered, may hold the key again for another
/// request by then, so the request is refused (503), never run unprotected; had it run, each
/// retry would have run the operation again, as none leaves a record while replicas lag.
#[tokio::test]
async fn a_claim_its_replicas_did_not_acknowledge_is_refused_even_where_the_endpoint_fails_open() {
    // No replica: every wait falls short.
    let Some(redis) = TestRedis::start_owned() else {
        return;
    };
    let store = RedisStore::builder(redis.url())
        .wait_for_replicas(1, Duration::from_millis(10))
        .build()
        .unwrap();
    let engine = Engine::new(store);
    let fails_open = Policy::DEFAULT.on_store_error(idem_core::OnStoreError::FailOpen);
    let fp = Fingerprint::new("POST", "/x", "", b"");
    let key = StoreKey::from_bytes([5; 32]);
    for attempt in ["the request", "its retry"] {
        let begun = engine.begin(&fails_open, key, fp).await;
        assert!(
            matches!(begun, Err(IdempotencyError::StoreUnavailable(_))),
            "{attempt}: {begun:?}"
        );
    }
}

/// A claim whose command was sent twice (a client that resends a command whose answer was
/// lost; the `redis` crate's cluster client does) finds its own first write. That write is
/// this request's claim, and it holds the key only once the replicas acknowledge it, as the
/// first send's answer would have. Taken as held with no `WAIT`, or with a `WAIT` on a
/// connection that wrote nothing (which Redis answers at once, counting every replica
/// connected), the request ran on a claim a failover could lose, and a retry on the new
/// primary ran the operation again.
#[tokio::test]
async fn a_claim_that_finds_its_own_resent_write_still_waits_for_its_replicas() {
    let Some((primary, replica)) = primary_and_replica() else {
        return;
    };
    let replicated = RedisStore::builder(primary.url())
        .wait_for_replicas(1, Duration::from_millis(100))
        .build()
        .unwrap();
    let plain = default_store(primary.url());
    let now = Timestamp::from_millis(1_900_000_000_000);
    let claim = idem_core::InFlight {
        fingerprint: Fingerprint::new("POST", "/x", "", b""),
        lease_until: now.saturating_add(Duration::from_secs(60)),
        token: idem_core::Token::random(),
    };
    let key = StoreKey::from_bytes([6; 32]);
    // The replica stays connected but acknowledges nothing from here on.
    replica.pause();
    // The first send, written on the primary alone.
    let first = plain.claim(&key, claim, now).await;
    // The resent command finds it.
    let resent = replicated.claim(&key, claim, now).await;
    let after = plain.get(&key, now).await;
    replica.resume();
    assert!(matches!(first, Ok(idem_core::Claim::Claimed)), "{first:?}");
    let Err(StoreError::Unavailable(why)) = resent else {
        panic!("no replica acknowledged the claim: {resent:?}")
    };
    assert!(
        why.to_string()
            .contains("reached 0 of the 1 Redis replicas"),
        "{why}"
    );
    // Unacknowledged, it was released: the key is free again.
    assert!(matches!(after, Ok(None)), "{after:?}");
}

/// A Redis where a claim's resent command finds the claim's own first write, which another
/// claim then replaced before the next command: a `PEXPIRE` finds the key there (another's
/// claim), a fenced script does not find this claim's token; `WAIT` is answered.
async fn redis_where_a_resent_claim_is_taken_over() -> std::net::SocketAddr {
    fake_redis(|args| match args.first().map_or("", String::as_str) {
        "SET" => {
            // This request's claim, as the codec writes it: lapsing at 1,900,000,060,000 ms,
            // token 1, a fingerprint of 32 `f`s.
            let record = format!("1:F:1900000060000:{:032x}:{}", 1, "f".repeat(32));
            Some(format!("${}\r\n{record}\r\n", record.len()))
        }
        "PEXPIRE" => Some(":1\r\n".into()),
        "EVALSHA" => Some(":0\r\n".into()),
        "WAIT" => Some(":1\r\n".into()),
        _ => None,
    })
    .await
}

/// A claim whose resent command finds its own first write holds the key only while that
/// write is still its own when it waits for its replicas. Its expiry was written again by a
/// plain `PEXPIRE`, which kept whatever held the key by then (another request's claim, after
/// this one was released or lapsed), and the request ran beside that one. It is refused now,
/// and under a store that fails open too: Redis answered, and another request holds the key.
#[tokio::test]
async fn a_resent_claim_taken_over_before_its_replicas_acknowledged_it_is_refused() {
    let addr = redis_where_a_resent_claim_is_taken_over().await;
    let store = RedisStore::builder(format!("redis://{addr}/"))
        .wait_for_replicas(1, Duration::from_millis(100))
        .fail_open(true)
        .build()
        .unwrap();
    let now = Timestamp::from_millis(1_900_000_000_000);
    let claim = idem_core::InFlight {
        fingerprint: Fingerprint::from_bytes([b'f'; 32]),
        lease_until: Timestamp::from_millis(1_900_000_060_000),
        token: idem_core::Token::from_u128(1),
    };
    let claimed = store
        .claim(&StoreKey::from_bytes([9; 32]), claim, now)
        .await;
    assert!(
        matches!(claimed, Err(StoreError::Contended)),
        "another request holds the key: {claimed:?}"
    );
}

/// A Redis that takes every claim and never answers `WAIT`: as a `WAIT` queued behind other
/// commands past the command timeout (on Redis Cluster, the process's commands to a node share
/// one connection), or a connection lost between the two. The `SET` was answered, so Redis
/// holds the claim, replicated or not.
async fn redis_whose_waits_never_answer() -> std::net::SocketAddr {
    fake_redis(|args| match args.first().map_or("", String::as_str) {
        "SET" => Some("$-1\r\n".into()),
        "WAIT" => Some(String::new()),
        "EVALSHA" => Some(":1\r\n".into()),
        _ => None,
    })
    .await
}

/// A `WAIT` that fails after Redis took the claim is a claim its replicas did not
/// acknowledge, as one that fell short: Redis answered, and may hold the key for another
/// request once this one is released, so an endpoint that fails open refuses the request
/// (503) rather than run it unprotected, where each retry ran the operation again.
#[tokio::test]
async fn a_claim_whose_wait_fails_is_refused_even_where_the_endpoint_fails_open() {
    let addr = redis_whose_waits_never_answer().await;
    let store = RedisStore::builder(format!("redis://{addr}/"))
        .command_timeout(Duration::from_millis(200))
        .wait_for_replicas(1, Duration::from_millis(100))
        .build()
        .unwrap();
    let engine = Engine::new(store);
    let fails_open = Policy::DEFAULT.on_store_error(idem_core::OnStoreError::FailOpen);
    let fp = Fingerprint::new("POST", "/x", "", b"");
    let begun = engine
        .begin(&fails_open, StoreKey::from_bytes([7; 32]), fp)
        .await;
    let Err(IdempotencyError::StoreUnavailable(StoreError::Unavailable(why))) = begun else {
        panic!("refused, not run unprotected: {begun:?}")
    };
    assert!(why.to_string().contains("it was released"), "{why}");
}

/// Under the store's own `fail_open`, a claim whose `WAIT` failed is kept, as one its replicas
/// fell short of: the request runs under it, and a duplicate meanwhile is turned away, where
/// a released claim left the duplicate to run beside it.
#[tokio::test]
async fn failing_open_a_claim_whose_wait_fails_still_runs_under_its_claim() {
    let addr = redis_whose_waits_never_answer().await;
    let store = RedisStore::builder(format!("redis://{addr}/"))
        .command_timeout(Duration::from_millis(200))
        .wait_for_replicas(1, Duration::from_millis(100))
        .fail_open(true)
        .build()
        .unwrap();
    let fp = Fingerprint::new("POST", "/x", "", b"");
    let begun = Engine::new(store)
        .begin(&Policy::DEFAULT, StoreKey::from_bytes([8; 32]), fp)
        .await;
    assert!(
        matches!(begun, Ok(Begin::Execute(_))),
        "runs under the claim Redis holds: {begun:?}"
    );
}

/// A current-thread runtime, such as each actix worker runs.
fn worker_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Whether a keyed request reaches Redis through `store` (built on a runtime of its own, as an
/// app builds it in its main) on one thread while another thread that used the store first
/// is blocked.
fn claims_while_another_thread_is_blocked(store: impl FnOnce() -> RedisStore, timeout: Duration) {
    let store = worker_runtime().block_on(async { store() });
    let engine = Engine::new(store);
    let fp = Fingerprint::new("POST", "/x", "", b"");
    let (used, blocked) = std::sync::mpsc::channel();
    let first = engine.clone();
    let blocking = std::thread::spawn(move || {
        worker_runtime().block_on(async move {
            let begun = first
                .begin(&Policy::DEFAULT, StoreKey::from_bytes([1; 32]), fp)
                .await;
            assert!(matches!(begun, Ok(Begin::Execute(_))), "{begun:?}");
            used.send(()).unwrap();
            // A handler's blocking call, holding its worker's thread.
            std::thread::sleep(timeout * 4);
        });
    });
    blocked.recv().unwrap();
    let begun = worker_runtime().block_on(engine.begin(
        &Policy::DEFAULT,
        StoreKey::from_bytes([2; 32]),
        fp,
    ));
    assert!(
        matches!(begun, Ok(Begin::Execute(_))),
        "held up by the blocked worker: {begun:?}"
    );
    blocking.join().unwrap();
}

/// actix runs each worker on a runtime of its own thread. A handler that blocks its thread
/// (blocking I/O, a long computation) holds up that worker; it must not hold up the commands
/// of the others, their claims and their leases' renewals, as it did while the one connection
/// they shared had its driver on the runtime of the worker that first used it.
#[test]
fn a_worker_that_blocks_its_thread_holds_up_no_other_worker_s_commands() {
    let Some(redis) = TestRedis::start() else {
        return;
    };
    let timeout = Duration::from_millis(500);
    claims_while_another_thread_is_blocked(
        || {
            RedisStore::builder(redis.url())
                .command_timeout(timeout)
                .build()
                .unwrap()
        },
        timeout,
    );
}

/// The same for writes that wait for their replicas, on connections lent to one at a time:
/// one made by a worker that is now blocked is not lent to another.
#[test]
fn a_worker_that_blocks_its_thread_holds_up_no_other_worker_s_replicated_writes() {
    let Some((primary, _replica)) = primary_and_replica() else {
        return;
    };
    let timeout = Duration::from_millis(500);
    claims_while_another_thread_is_blocked(
        || {
            RedisStore::builder(primary.url())
                .command_timeout(timeout)
                .wait_for_replicas(1, Duration::from_millis(200))
                .build()
                .unwrap()
        },
        timeout,
    );
}

/// The interleaving of a claim that found a completed record and the look at how long Redis
/// keeps it: in between, the record lapsed in Redis and another process claimed the key anew.
mod replaced_between {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    use futures_util::future::BoxFuture;
    use idem_core::store::{Claim, StoreFuture};
    use idem_core::{Completed, InFlight, Record, Token};

    use super::*;

    /// A Redis store that runs `between` before its first `kept_for`, and says when a
    /// `kept_for` was answered.
    struct Racing {
        inner: RedisStore,
        between: Arc<dyn Fn() -> BoxFuture<'static, ()> + Send + Sync>,
        answered: Arc<AtomicBool>,
    }

    impl Store for Racing {
        fn claim<'a>(
            &'a self,
            key: &'a StoreKey,
            claim: InFlight,
            now: Timestamp,
        ) -> StoreFuture<'a, Claim> {
            self.inner.claim(key, claim, now)
        }

        fn get<'a>(&'a self, key: &'a StoreKey, now: Timestamp) -> StoreFuture<'a, Option<Record>> {
            self.inner.get(key, now)
        }

        fn kept_for<'a>(
            &'a self,
            key: &'a StoreKey,
            record: &'a Completed,
        ) -> StoreFuture<'a, Option<Duration>> {
            let between = (self.between)();
            StoreFuture::new(async move {
                between.await;
                let answer = self.inner.kept_for(key, record).await;
                self.answered.store(true, Ordering::SeqCst);
                answer
            })
        }

        fn extend<'a>(
            &'a self,
            key: &'a StoreKey,
            token: Token,
            until: Timestamp,
            now: Timestamp,
        ) -> StoreFuture<'a, bool> {
            self.inner.extend(key, token, until, now)
        }

        fn complete<'a>(
            &'a self,
            key: &'a StoreKey,
            token: Token,
            record: Completed,
            now: Timestamp,
        ) -> StoreFuture<'a, bool> {
            self.inner.complete(key, token, record, now)
        }

        fn release<'a>(&'a self, key: &'a StoreKey, token: Token) -> StoreFuture<'a, bool> {
            self.inner.release(key, token)
        }
    }

    /// Redis's time left for the key is another record's then (the new claim's lease): the
    /// copy is not kept by it, and the next request meets the running claim, not the old
    /// answer.
    #[actix_web::test]
    async fn a_key_claimed_anew_before_its_time_left_is_read_is_not_replayed_from_a_copy() {
        let Some(redis) = TestRedis::start() else {
            return;
        };
        let url = redis.url().to_owned();
        let raw = || {
            RedisStore::builder(&url)
                .prefix("replaced:")
                .build()
                .unwrap()
        };
        let writer = Arc::new(Engine::new(raw()));
        let policy = Policy::DEFAULT.ttl(Duration::from_secs(1));
        let key = StoreKey::from_bytes([9; 32]);
        let fingerprint = Fingerprint::new("POST", "/x", "", b"");
        let Ok(Begin::Execute(lease)) = writer.begin(&policy, key, fingerprint).await else {
            panic!("a new key runs");
        };
        let recorded = lease.finish(Response::new(201, [], b"old")).await;
        assert_eq!(recorded.unwrap(), Outcome::Recorded);

        let (w, u, done) = (
            writer.clone(),
            url.clone(),
            Arc::new(AtomicBool::new(false)),
        );
        let between = move || {
            let (w, u, done) = (w.clone(), u.clone(), done.clone());
            Box::pin(async move {
                if done.swap(true, Ordering::SeqCst) {
                    return;
                }
                // The record lapses in Redis, and another process claims the key anew.
                let client = redis::Client::open(u).unwrap();
                let mut conn = client.get_multiplexed_async_connection().await.unwrap();
                let _: i64 = redis::cmd("DEL")
                    .arg(format!("replaced:{key}"))
                    .query_async(&mut conn)
                    .await
                    .unwrap();
                let begun = w.begin(&Policy::DEFAULT, key, fingerprint).await;
                let Ok(Begin::Execute(lease)) = begun else {
                    panic!("{begun:?}")
                };
                // Still running when the lagging process asks again.
                std::mem::forget(lease);
            }) as BoxFuture<'static, ()>
        };
        let answered = Arc::new(AtomicBool::new(false));
        let racing = Racing {
            inner: raw(),
            between: Arc::new(between),
            answered: answered.clone(),
        };
        let lagging = Engine::new(ReplayCache::new(racing, 1 << 20))
            .with_clock(Behind(Duration::from_secs(5)));
        let learned = lagging.begin(&policy, key, fingerprint).await;
        assert!(matches!(learned, Ok(Begin::Replay(_))), "{learned:?}");
        // The time left is asked after the replay is answered, in a task of its own (whose
        // copy, if any, is kept in the same poll as the answer comes).
        eventually(|| answered.load(Ordering::SeqCst)).await;
        let again = lagging.begin(&policy, key, fingerprint).await;
        assert!(
            matches!(again, Err(IdempotencyError::InFlight)),
            "the copy of a record Redis no longer holds is replayed over the new claim: {again:?}"
        );
    }
}

/// The URL of `redis` as a user `name` of its own, allowed `commands` (`+get`, ...) on every
/// key, and the connection's own commands.
fn user_allowed(redis: &TestRedis, name: &str, commands: &[&str]) -> String {
    redis.query::<()>(
        redis::cmd("ACL")
            .arg("SETUSER")
            .arg(name)
            .arg(&["on", ">secret", "~*", "+@connection"][..])
            .arg(commands),
    );
    redis
        .url()
        .replace("redis://", &format!("redis://{name}:secret@"))
}

/// A Redis whose ACL lets the store's user claim (`SET`) but not run scripts, by which every
/// completion, renewal and release is made: the first claim is withdrawn and refused before
/// its handler runs (503, even failing open), with what the store needs, where the handler ran,
/// its response could not be recorded, and the retry after the claim lapsed ran it again.
#[actix_web::test]
async fn a_redis_that_refuses_the_store_s_scripts_runs_no_handler_and_says_what_it_needs() {
    let Some(redis) = TestRedis::start_owned() else {
        return;
    };
    let url = user_allowed(&redis, "app", &["+get", "+set", "+del", "+pttl"]);
    let fp = Fingerprint::new("POST", "/v1/charges", "", b"{}");
    for (n, fail_open) in [false, true].into_iter().enumerate() {
        let store = RedisStore::builder(&url)
            .fail_open(fail_open)
            .build()
            .unwrap();
        let key = StoreKey::from_bytes([60 + n as u8; 32]);
        let begun = Engine::new(store).begin(&Policy::DEFAULT, key, fp).await;
        let Err(IdempotencyError::StoreUnavailable(error @ StoreError::Refused(_))) = begun else {
            panic!("fail_open {fail_open}: refused before the handler runs: {begun:?}")
        };
        let message = error.to_string();
        for said in ["EVALSHA", "no permissions", "before its handler ran"] {
            assert!(message.contains(said), "{said:?} in {message}");
        }
        let held: Option<Vec<u8>> = redis.query(redis::cmd("GET").arg(format!("idem:{key}")));
        assert_eq!(held, None, "the claim is withdrawn");
    }
}

/// A Redis that deletes keys before they expire once it is full (a `maxmemory-policy` other
/// than `noeviction`) can delete a running claim or a record, and an operation then runs
/// twice: the store says so in the log, once, on its first claim, where nothing said it.
#[actix_web::test]
async fn a_redis_that_may_evict_the_store_s_keys_is_reported_once_on_the_first_claim() {
    let warnings = Warnings::installed();
    let Some(redis) = TestRedis::start_owned() else {
        return;
    };
    let fp = Fingerprint::new("POST", "/v1/charges", "", b"{}");
    let said = |text: &str| warnings.containing_from(text, &Warnings::this_thread());
    // Redis's default, `noeviction`: nothing to say.
    let engine = Engine::new(RedisStore::new(redis.url()).unwrap());
    let _ = engine
        .begin(&Policy::DEFAULT, StoreKey::from_bytes([70; 32]), fp)
        .await;
    assert_eq!(said("maxmemory-policy"), 0);

    redis.query::<()>(redis::cmd("CONFIG").arg("SET").arg("maxmemory").arg("1gb"));
    redis.query::<()>(
        redis::cmd("CONFIG")
            .arg("SET")
            .arg("maxmemory-policy")
            .arg("volatile-ttl"),
    );
    let engine = Engine::new(RedisStore::new(redis.url()).unwrap());
    for n in 71..75 {
        let begun = engine
            .begin(&Policy::DEFAULT, StoreKey::from_bytes([n; 32]), fp)
            .await;
        assert!(matches!(begun, Ok(Begin::Execute(_))), "{begun:?}");
    }
    let logged = warnings.logged();
    let reported: Vec<_> = logged
        .iter()
        .filter_map(|fields| fields.get("message"))
        .filter(|m| m.contains("maxmemory-policy") && m.contains("volatile-ttl"))
        .collect();
    assert_eq!(reported.len(), 1, "{reported:?}");
    assert!(
        reported[0].contains("noeviction") && reported[0].contains("twice"),
        "{}",
        reported[0]
    );
}

/// A Redis whose ACL refuses the store's user `INFO` cannot say whether it may evict: the
/// store says so, once, and claims as before.
#[actix_web::test]
async fn a_redis_that_does_not_say_its_eviction_policy_is_reported_once() {
    let warnings = Warnings::installed();
    let Some(redis) = TestRedis::start_owned() else {
        return;
    };
    let commands = ["+get", "+set", "+del", "+pttl", "+evalsha", "+eval"];
    let url = user_allowed(&redis, "scripts", &commands);
    let engine = Engine::new(RedisStore::new(url).unwrap());
    let fp = Fingerprint::new("POST", "/v1/charges", "", b"{}");
    for n in 80..83 {
        let begun = engine
            .begin(&Policy::DEFAULT, StoreKey::from_bytes([n; 32]), fp)
            .await;
        assert!(matches!(begun, Ok(Begin::Execute(_))), "{begun:?}");
    }
    let said =
        warnings.containing_from("did not say its maxmemory-policy", &Warnings::this_thread());
    assert_eq!(said, 1);
}

/// A store on `redis` through a proxy that can lose answers, and the proxy.
fn through_a_losing_wire(redis: &TestRedis) -> (LosingRedisProxy, RedisStore) {
    let wire = LosingRedisProxy::in_front_of(redis.url());
    let store = default_store(&wire.url());
    (wire, store)
}

/// A request's claim (a token of its own) until `lease_until`.
fn claim_until(lease_until: Timestamp) -> idem_core::InFlight {
    idem_core::InFlight {
        fingerprint: Fingerprint::new("POST", "/x", "", b""),
        lease_until,
        token: idem_core::Token::random(),
    }
}

/// A claim that finds a lapsed claim Redis still keeps displaces it by a script, its second
/// command. When the connection breaks before that script's answer comes back (a network
/// that reset it, or any command in flight beside it whose connection broke), the script is
/// sent again on a new connection, as the claim's first command is: its claim, written by the
/// first send, is this request's own, where the request was answered 503.
#[actix_web::test]
async fn a_claim_whose_displacing_script_lost_its_answer_is_sent_again_and_holds_the_key() {
    let Some(redis) = TestRedis::start_owned() else {
        return;
    };
    let (wire, store) = through_a_losing_wire(&redis);
    let now = SystemClock.now();
    let key = StoreKey::from_bytes([7; 32]);
    let lapsed = claim_until(Timestamp::from_millis(now.as_millis() - 1_000));
    let earlier = Timestamp::from_millis(now.as_millis() - 2_000);
    assert!(matches!(
        store.claim(&key, lapsed, earlier).await,
        Ok(idem_core::store::Claim::Claimed)
    ));
    // The script's first argument is the time the claim is made at.
    let at = now.as_millis().to_string();
    wire.lose_answer_to(move |arguments| arguments.contains(&at.as_bytes()));
    let ours = claim_until(now.saturating_add(Duration::from_secs(30)));
    let claimed = store.claim(&key, ours, now).await;
    assert_eq!(wire.lost(), 1, "the script's answer was not lost");
    assert!(
        matches!(claimed, Ok(idem_core::store::Claim::Claimed)),
        "{claimed:?}"
    );
    let held = store.get(&key, now).await;
    assert!(
        matches!(&held, Ok(Some(idem_core::Record::InFlight(held))) if held.token == ours.token),
        "{held:?}"
    );
}

/// Many requests share a worker's connection: when one command's answer is lost and the
/// connection breaks, every command in flight on it fails with it. Claims in flight then,
/// at either of their two commands, are sent again on a new connection and hold their keys:
/// none is answered 503 for another request's lost answer.
#[actix_web::test]
async fn claims_in_flight_beside_a_lost_answer_are_sent_again_and_hold_their_keys() {
    let Some(redis) = TestRedis::start_owned() else {
        return;
    };
    let (wire, store) = through_a_losing_wire(&redis);
    let now = SystemClock.now();
    let key = |n: u8| StoreKey::from_bytes([n; 32]);
    // Keys 0 to 31 hold lapsed claims (displaced by the script), 32 to 63 nothing; key 64
    // the claim whose release's answer is lost.
    let earlier = Timestamp::from_millis(now.as_millis() - 2_000);
    for n in 0..32 {
        let lapsed = claim_until(Timestamp::from_millis(now.as_millis() - 1_000));
        store.claim(&key(n), lapsed, earlier).await.unwrap();
    }
    let held = claim_until(now.saturating_add(Duration::from_secs(30)));
    store.claim(&key(64), held, now).await.unwrap();
    wire.lose_answer_to(|arguments| arguments.contains(&&b"release"[..]));
    let claims = (0..64).map(|n| {
        let store = &store;
        let ours = claim_until(now.saturating_add(Duration::from_secs(30)));
        async move {
            let key = key(n);
            (n, ours.token, store.claim(&key, ours, now).await)
        }
    });
    let released_key = key(64);
    let release = store.release(&released_key, held.token);
    let (claimed, released) = futures_util::join!(join_all(claims), release);
    assert_eq!(wire.lost(), 1, "the release's answer was not lost");
    assert!(released.is_err(), "{released:?}");
    for (n, token, claimed) in claimed {
        assert!(
            matches!(claimed, Ok(idem_core::store::Claim::Claimed)),
            "key {n}: {claimed:?}"
        );
        let record = store.get(&key(n), now).await;
        assert!(
            matches!(&record, Ok(Some(idem_core::Record::InFlight(held))) if held.token == token),
            "key {n}: {record:?}"
        );
    }
}

/// A record this build cannot read (a later release's, met in a rolling deploy or after a
/// rollback, or one whose binary part is damaged) is taken over once it has lapsed, as any
/// lapsed record is: Redis's own script judges a record by its header alone, and so does the
/// store now. Before, the store decoded it first, and every retry of its key was answered
/// `Corrupt` (503) until Redis dropped the value, up to a minute after the claim lapsed.
/// While it has not lapsed, it is still refused as unreadable.
#[actix_web::test]
async fn an_unreadable_record_that_lapsed_is_taken_over_and_a_live_one_refused() {
    let Some(redis) = TestRedis::start() else {
        return;
    };
    let store = RedisStore::builder(redis.url())
        .prefix("unreadable:")
        .build()
        .unwrap();
    let now = SystemClock.now();
    let (lapsed, live) = (
        StoreKey::from_bytes([40; 32]),
        StoreKey::from_bytes([41; 32]),
    );
    for (key, lapses_at) in [
        (lapsed, now.as_millis() - 1_000),
        (live, now.as_millis() + 60_000),
    ] {
        let value = format!("2:F:{lapses_at}:{:032x}:a later format", 7);
        let mut set = redis::cmd("SET");
        set.arg(format!("unreadable:{key}"))
            .arg(value)
            .arg("PX")
            .arg(120_000);
        redis.query::<()>(&mut set);
    }

    assert_eq!(store.get(&lapsed, now).await.unwrap(), None);
    let claim = idem_core::InFlight {
        fingerprint: Fingerprint::new("POST", "/x", "", b""),
        lease_until: now.saturating_add(Duration::from_secs(30)),
        token: idem_core::Token::from_u128(8),
    };
    let claimed = store.claim(&lapsed, claim, now).await;
    assert!(
        matches!(claimed, Ok(idem_core::Claim::Claimed)),
        "{claimed:?}"
    );

    assert!(matches!(
        store.get(&live, now).await,
        Err(StoreError::Corrupt(_))
    ));
    assert!(matches!(
        store.claim(&live, claim, now).await,
        Err(StoreError::Corrupt(_))
    ));
}

/// Writes that wait for replicas each hold a connection of their own until their `WAIT`
/// ends: so many new keys at once, with replicas behind, opened as many connections, up to
/// Redis's `maxclients`, past which every process sharing that Redis was refused. A store
/// lends 64 at once by default; the writes past them wait for a place, and are answered as
/// the first were once one frees.
#[actix_web::test]
async fn writes_waiting_for_replicas_hold_a_bounded_number_of_connections() {
    let Some(primary) = TestRedis::start_owned() else {
        return;
    };
    // No replica: every WAIT runs to its timeout.
    let store = RedisStore::builder(primary.url())
        .prefix("bounded:")
        .command_timeout(Duration::from_secs(3))
        .wait_for_replicas(1, Duration::from_millis(500))
        .build()
        .unwrap();
    let engine = Engine::new(store.clone());
    let fp = Fingerprint::new("POST", "/x", "", b"");
    // The store's own connection made first, so that only lent ones are counted below.
    let unused = StoreKey::from_bytes([255; 32]);
    assert!(store
        .get(&unused, engine.clock().now())
        .await
        .unwrap()
        .is_none());
    let clients = || -> u64 {
        let info: String = primary.query(redis::cmd("INFO").arg("clients"));
        let line = info
            .lines()
            .find_map(|l| l.trim().strip_prefix("connected_clients:"));
        line.and_then(|n| n.parse().ok())
            .expect("INFO clients gives connected_clients")
    };
    let before = clients();
    let most = std::sync::atomic::AtomicU64::new(0);
    let watch = async {
        for _ in 0..40 {
            most.fetch_max(clients(), std::sync::atomic::Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    };
    let claims = join_all((0..150u8).map(|n| {
        let key = StoreKey::from_bytes([n; 32]);
        engine.begin(&Policy::DEFAULT, key, fp)
    }));
    let (begun, ()) = futures_util::join!(claims, watch);
    // Each waited for its place, then for its replica, which never came.
    for answer in &begun {
        assert!(
            matches!(
                answer,
                Err(IdempotencyError::StoreUnavailable(StoreError::Unavailable(
                    _
                )))
            ),
            "{answer:?}"
        );
    }
    // The lent ones, and the test's own connection of each INFO, which may still be closing.
    let opened = most.into_inner().saturating_sub(before);
    assert!(
        opened <= 64 + 2,
        "{opened} connections opened for 150 waiting writes"
    );
    assert!(
        opened >= 32,
        "the writes waited on connections of their own"
    );
}

/// A write resent on a new connection, its lent one found dropped (a Redis that restarted, a
/// server `timeout` that closed idle connections), gives its place back first: it held its
/// place while it waited for another, so that with every place taken by such writes, each
/// waited for a place none would give, and all timed out.
#[actix_web::test]
async fn a_write_resent_after_its_lent_connection_dropped_does_not_wait_for_its_own_place() {
    let Some(primary) = TestRedis::start_owned() else {
        return;
    };
    let store = RedisStore::builder(primary.url())
        .prefix("resent-place:")
        .command_timeout(Duration::from_millis(800))
        .wait_for_replicas(1, Duration::from_millis(50))
        .max_waiting_writes(1)
        .build()
        .unwrap();
    let engine = Engine::new(store.clone());
    let fp = Fingerprint::new("POST", "/x", "", b"");
    // A first write leaves its connection idle, kept for the next.
    let first = engine
        .begin(&Policy::DEFAULT, StoreKey::from_bytes([50; 32]), fp)
        .await;
    assert!(
        matches!(&first, Err(IdempotencyError::StoreUnavailable(_))),
        "no replica: {first:?}"
    );
    // Every client's connection closed, the kept one among them.
    primary.query::<()>(redis::cmd("CLIENT").arg("KILL").arg("TYPE").arg("normal"));
    let second = engine
        .begin(&Policy::DEFAULT, StoreKey::from_bytes([51; 32]), fp)
        .await;
    assert!(
        matches!(
            &second,
            Err(IdempotencyError::StoreUnavailable(StoreError::Unavailable(
                _
            )))
        ),
        "resent, then refused for want of a replica, not timed out: {second:?}"
    );
}

/// A write that finds every place for writes waiting on their replicas taken, and none freed
/// within the command timeout, is refused: Redis answers, and may hold its key, so that it
/// must not run unprotected where the endpoint fails open, as a store that cannot be reached
/// would let it (a wait for a place that timed out was taken for a store that did not answer).
#[actix_web::test]
async fn a_write_that_finds_no_place_to_wait_for_replicas_is_refused_not_run_unprotected() {
    let Some(primary) = TestRedis::start_owned() else {
        return;
    };
    let store = RedisStore::builder(primary.url())
        .prefix("no-place:")
        .command_timeout(Duration::from_millis(300))
        .wait_for_replicas(1, Duration::from_millis(250))
        .max_waiting_writes(1)
        .fail_open(true)
        .build()
        .unwrap();
    let engine = Engine::new(store.clone());
    let fp = Fingerprint::new("POST", "/x", "", b"");
    let fails_open = Policy::DEFAULT.on_store_error(idem_core::OnStoreError::FailOpen);
    let begun = join_all((60..64u8).map(|n| {
        let key = StoreKey::from_bytes([n; 32]);
        engine.begin(&fails_open, key, fp)
    }))
    .await;
    assert!(
        begun
            .iter()
            .all(|b| !matches!(b, Ok(Begin::Unprotected(_)))),
        "{begun:?}"
    );
    assert!(
        begun.iter().any(|b| matches!(
            b,
            Err(IdempotencyError::StoreUnavailable(StoreError::Refused(_)))
        )),
        "{begun:?}"
    );
}
