//! The Redis store on a real Redis Cluster of three masters that the tests start themselves:
//! the shared conformance suite, one key per record on the master of its slot, several app
//! instances sharing the cluster, and a master that goes down and comes back. Each test skips
//! when no cluster can be made, unless `IDEM_REQUIRE_REDIS=1`.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use futures_util::future::join_all;
use idem_actix::{RedisStore, RedisStoreBuilder};
use idem_core::store::ReplayCache;
use idem_core::{
    Begin, Engine, Fingerprint, IdempotencyError, Outcome, Policy, Response, Store, StoreError,
    StoreKey,
};
use idem_tests::redis_proxy::{lose_answer_among, LosingRedisProxy};
use idem_tests::shared_store::{
    self, call, duplicates_while_in_flight_get_409_then_replay, until_not_503, Probe,
};
use idem_tests::{
    answers_while_slots_migrate, assert_error, begin_until_up, keys_in, recorded,
    replays_and_runs_once_up, TestRedis, TestRedisCluster, TestServer,
};

/// The command timeout of the app instances: a master that is down answers 503 after it.
const TIMEOUT: Duration = Duration::from_millis(300);

/// An app instance with its own cluster connection (as a separate process would have).
fn instance(cluster: &TestRedisCluster, probe: &Probe) -> TestServer {
    let urls = cluster.urls();
    shared_store::instance(probe, move || {
        RedisStore::cluster(urls.clone())
            .command_timeout(TIMEOUT)
            .build()
            .expect("valid cluster URLs")
    })
}

/// Every record key of the store, by the master that holds it (of those running).
fn records(cluster: &TestRedisCluster) -> HashMap<String, usize> {
    (0..TestRedisCluster::MASTERS)
        .filter(|&node| cluster.running(node))
        .flat_map(|node| {
            cluster
                .keys(node, "idem:*")
                .into_iter()
                .map(move |key| (key, node))
        })
        .collect()
}

#[actix_web::test]
async fn redis_store_on_a_cluster_conforms() {
    let Some(cluster) = TestRedisCluster::start() else {
        return;
    };
    let store = RedisStore::cluster(cluster.urls())
        .prefix("conformance:")
        .build()
        .unwrap();
    idem_core::testing::conformance(&store, 7).await;
    let holders = (0..TestRedisCluster::MASTERS)
        .filter(|&node| !cluster.keys(node, "conformance:*").is_empty())
        .count();
    assert_eq!(
        holders,
        TestRedisCluster::MASTERS,
        "the suite's keys spread over every master"
    );
}

/// Behind a `ReplayCache` too: its one command of its own, `PTTL`, goes to the key's master.
#[actix_web::test]
async fn redis_store_on_a_cluster_behind_a_replay_cache_conforms() {
    let Some(cluster) = TestRedisCluster::start() else {
        return;
    };
    let store = RedisStore::cluster(cluster.urls())
        .prefix("cached-conformance:")
        .build()
        .unwrap();
    idem_core::testing::conformance(&ReplayCache::new(store, 1 << 20), 9).await;
}

#[actix_web::test]
async fn one_url_is_enough_to_find_every_master() {
    let Some(cluster) = TestRedisCluster::start() else {
        return;
    };
    let store = RedisStore::cluster([cluster.url(1)])
        .prefix("one-url:")
        .build()
        .unwrap();
    idem_core::testing::conformance(&store, 8).await;
}

#[actix_web::test]
async fn a_store_built_while_the_cluster_is_down_connects_once_it_is_up() {
    let Some(mut cluster) = TestRedisCluster::start() else {
        return;
    };
    for node in 0..TestRedisCluster::MASTERS {
        cluster.stop(node);
    }
    let store = RedisStore::cluster(cluster.urls())
        .prefix("late:")
        .command_timeout(TIMEOUT)
        .build()
        .expect("built without a connection");
    let engine = Engine::new(store.clone());
    let (key, fp) = (
        StoreKey::from_bytes([1; 32]),
        Fingerprint::new("POST", "/x", "", b""),
    );
    let down = engine.begin(&Policy::DEFAULT, key, fp).await;
    assert!(
        matches!(down, Err(idem_core::IdempotencyError::StoreUnavailable(_))),
        "{down:?}"
    );

    for node in 0..TestRedisCluster::MASTERS {
        cluster.restart(node);
    }
    let deadline = Instant::now() + Duration::from_secs(15);
    let lease = loop {
        match engine.begin(&Policy::DEFAULT, key, fp).await {
            Ok(Begin::Execute(lease)) => break lease,
            other => assert!(Instant::now() < deadline, "still {other:?}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let done = lease.finish(Response::new(201, [], b"ok")).await.unwrap();
    assert!(matches!(done, Outcome::Recorded));
}

#[actix_web::test]
async fn each_record_is_one_key_on_the_master_of_its_slot() {
    let Some(cluster) = TestRedisCluster::start() else {
        return;
    };
    let store = RedisStore::cluster(cluster.urls())
        .prefix("slots:")
        .build()
        .unwrap();
    let engine = Engine::new(store.clone());
    let policy = Policy::DEFAULT.ttl(Duration::from_secs(3600));
    let fp = Fingerprint::new("POST", "/x", "", b"");
    let mut masters = HashSet::new();
    for n in 0..12 {
        let key = StoreKey::from_bytes([n; 32]);
        let Ok(Begin::Execute(lease)) = engine.begin(&policy, key, fp).await else {
            panic!("claimed")
        };
        let done = lease.finish(Response::new(201, [], b"ok")).await.unwrap();
        assert!(matches!(done, Outcome::Recorded));
        // `<prefix><hex of the store key>`, as the store documents its keys.
        let redis_key = format!("slots:{key}");
        let master = cluster.node_of(&redis_key);
        assert_eq!(
            cluster.keys(master, &redis_key),
            vec![redis_key.clone()],
            "the record is on the master of its slot"
        );
        let pttl: i64 = cluster.query(master, redis::cmd("PTTL").arg(&redis_key));
        assert!((3_590_000..=3_600_000).contains(&pttl), "PTTL {pttl}");
        masters.insert(master);
    }
    let total: usize = (0..TestRedisCluster::MASTERS)
        .map(|node| cluster.keys(node, "slots:*").len())
        .sum();
    assert_eq!(total, 12, "one key per record");
    assert_eq!(masters.len(), TestRedisCluster::MASTERS);
}

#[actix_web::test]
async fn two_instances_sharing_a_cluster_run_a_hundred_duplicates_once() {
    let Some(cluster) = TestRedisCluster::start() else {
        return;
    };
    let probe = Probe::closed();
    let a = instance(&cluster, &probe);
    let b = instance(&cluster, &probe);

    let addrs = [a.addr, b.addr];
    duplicates_while_in_flight_get_409_then_replay(&probe, addrs).await;

    // Many keys at once, each sent twice to each instance: every key runs once.
    let keys: Vec<String> = (0..30).map(|n| format!("burst-{n}")).collect();
    let all = join_all(
        keys.iter()
            .flat_map(|key| (0..4).map(move |i| (key, addrs[i % 2])))
            .map(|(key, addr)| async move { call(key).send(addr).await }),
    )
    .await;
    assert!(all.iter().all(|r| r.status == 201 || r.status == 409));
    assert_eq!(
        all.iter()
            .filter(|r| r.status == 201 && !r.replayed())
            .count(),
        30
    );
    assert_eq!(
        probe.runs.get(),
        31,
        "each key ran once across both instances"
    );
    let masters: HashSet<usize> = records(&cluster).into_values().collect();
    assert_eq!(masters.len(), TestRedisCluster::MASTERS);
}

#[actix_web::test]
async fn a_master_down_fails_its_own_keys_the_others_keep_working_and_all_recover() {
    let Some(mut cluster) = TestRedisCluster::start() else {
        return;
    };
    let probe = Probe::open();
    let server = instance(&cluster, &probe);

    // Thirty records, each found on its master by the key it added.
    let mut before = HashMap::new();
    let mut seen: HashSet<String> = HashSet::new();
    for n in 0..30 {
        let key = format!("before-{n}");
        let res = call(&key).send(server.addr).await;
        assert_eq!(res.status, 201);
        let now = records(&cluster);
        let added: Vec<_> = now.iter().filter(|(k, _)| !seen.contains(*k)).collect();
        assert_eq!(added.len(), 1, "one key per record");
        before.insert(key, (*added[0].1, res.body));
        seen = now.into_keys().collect();
    }
    let victim = before["before-0"].0;
    let on_victim = before.values().filter(|(node, _)| *node == victim).count();
    assert!(on_victim > 0 && on_victim < before.len());

    cluster.stop(victim);
    for (key, (node, body)) in &before {
        let started = Instant::now();
        let res = call(key).send(server.addr).await;
        if *node == victim {
            assert_error(&res, 503, "idempotency_store_unavailable");
            assert_eq!(res.header("retry-after"), Some("1"));
        } else {
            assert!(res.replayed(), "{key} on a live master: {}", res.status);
            assert_eq!(&res.body, body);
            assert!(
                started.elapsed() < TIMEOUT,
                "a live master answers without waiting on the one that is down ({:?})",
                started.elapsed()
            );
        }
    }
    assert_eq!(
        probe.runs.get(),
        30,
        "nothing ran again, nothing ran unclaimed"
    );

    // New keys: those of the live masters run, those of the victim answer 503 and run nothing.
    let mut refused = Vec::new();
    for n in 0..30 {
        let key = format!("during-{n}");
        let res = call(&key).send(server.addr).await;
        match res.status {
            201 => assert!(!res.replayed()),
            _ => {
                assert_error(&res, 503, "idempotency_store_unavailable");
                refused.push(key);
            }
        }
    }
    assert!(!refused.is_empty() && refused.len() < 30, "{refused:?}");
    assert_eq!(probe.runs.get(), 30 + 30 - refused.len());
    assert!(
        records(&cluster).values().all(|node| *node != victim),
        "the live masters hold what was written meanwhile"
    );

    // Back on the same port with its nodes.conf and its data: its records replay again.
    cluster.restart(victim);
    let (probe_key, _) = before
        .iter()
        .find(|(_, (node, _))| *node == victim)
        .expect("a key on the victim");
    let back = until_not_503(server.addr, &call(probe_key), Duration::from_secs(15)).await;
    assert!(
        back.replayed(),
        "recovered without restarting the app: {}",
        back.status
    );
    for (key, (_, body)) in &before {
        let res = call(key).send(server.addr).await;
        assert!(res.replayed(), "{key}: {}", res.status);
        assert_eq!(&res.body, body);
    }
    let runs = probe.runs.get();
    for key in &refused {
        let res = call(key).send(server.addr).await;
        assert_eq!((res.status, res.replayed()), (201, false), "{key}");
    }
    assert_eq!(probe.runs.get(), runs + refused.len());
}

#[actix_web::test]
async fn a_cluster_named_by_no_node_or_a_bad_url_is_refused_when_built() {
    let none = RedisStore::cluster(Vec::<String>::new())
        .build()
        .unwrap_err();
    assert!(
        none.to_string().contains("name at least one node"),
        "{none}"
    );
    let bad = RedisStore::cluster(["redis://127.0.0.1:1", "http://example"])
        .build()
        .unwrap_err();
    // The settings' fault, naming the node's URL that is not one.
    assert!(matches!(bad, idem_actix::StoreError::Config(_)), "{bad}");
    assert!(bad.to_string().contains("http://example"), "{bad}");
}

/// `count` store keys whose records `prefix` puts on master `node`.
fn keys_on(cluster: &TestRedisCluster, prefix: &str, node: usize, count: usize) -> Vec<StoreKey> {
    (0..=255u8)
        .map(|n| StoreKey::from_bytes([n; 32]))
        .filter(|key| cluster.node_of(&format!("{prefix}{key}")) == node)
        .take(count)
        .collect()
}

/// The hash slot of `key`.
fn slot_of(cluster: &TestRedisCluster, key: &str) -> i64 {
    cluster.query(0, redis::cmd("CLUSTER").arg("KEYSLOT").arg(key))
}

/// A store on `cluster`, its keys under `prefix`, with the tests' command timeout.
fn store_on(cluster: &TestRedisCluster, prefix: &str) -> RedisStoreBuilder {
    RedisStore::cluster(cluster.urls())
        .prefix(prefix)
        .command_timeout(TIMEOUT)
}

/// An engine on [`store_on`]'s store.
fn engine_on(cluster: &TestRedisCluster, prefix: &str) -> Engine {
    Engine::new(store_on(cluster, prefix).build().unwrap())
}

/// As [`engine_on`], each claim waiting up to `wait` for a replica of its primary.
fn engine_waiting_on(cluster: &TestRedisCluster, prefix: &str, wait: Duration) -> Engine {
    let store = store_on(cluster, prefix).wait_for_replicas(1, wait);
    Engine::new(store.build().unwrap())
}

#[actix_web::test]
async fn a_failover_to_a_replica_keeps_every_record_and_a_running_claim_still_completes() {
    let Some(cluster) = TestRedisCluster::start() else {
        return;
    };
    let engine = engine_on(&cluster, "failover:");
    let fp = Fingerprint::new("POST", "/x", "", b"");
    let keys = keys_on(&cluster, "failover:", 0, 3);
    let (done, running, fresh) = (keys[0], keys[1], keys[2]);

    recorded(&engine, done, fp, b"first").await;
    let Ok(Begin::Execute(held)) = engine.begin(&Policy::DEFAULT, running, fp).await else {
        panic!("claimed")
    };

    let replica = cluster.add_replica(0);
    let synced: i64 = cluster.query(0, redis::cmd("WAIT").arg(1).arg(5000));
    assert_eq!(synced, 1, "the replica has every write");
    replica.query::<()>(redis::cmd("CLUSTER").arg("FAILOVER"));
    let slot = slot_of(&cluster, &format!("failover:{done}"));
    cluster.wait_for_slot_at(slot, replica.port(), &[&replica]);

    // The claim taken on the old master completes on the new one, which never ran a script.
    let finished = held
        .finish(Response::new(201, [], b"running"))
        .await
        .unwrap();
    assert_eq!(finished, Outcome::Recorded);
    for (key, body) in [(done, &b"first"[..]), (running, &b"running"[..])] {
        let Begin::Replay(record) = begin_until_up(&engine, key, fp).await else {
            panic!("{key} replays after the failover")
        };
        assert_eq!(record.response.body(), body);
    }
    let Begin::Execute(lease) = begin_until_up(&engine, fresh, fp).await else {
        panic!("a new key runs")
    };
    assert_eq!(
        lease.finish(Response::new(201, [], b"new")).await.unwrap(),
        Outcome::Recorded
    );
    let on_new_master: Vec<String> = replica.query(redis::cmd("KEYS").arg("failover:*"));
    assert_eq!(on_new_master.len(), 3, "{on_new_master:?}");
}

#[actix_web::test]
async fn a_store_that_fails_open_runs_the_keys_of_a_master_that_is_down_unprotected() {
    let Some(mut cluster) = TestRedisCluster::start() else {
        return;
    };
    let store = RedisStore::cluster(cluster.urls())
        .prefix("open:")
        .command_timeout(TIMEOUT)
        .fail_open(true)
        .build()
        .unwrap();
    let engine = Engine::new(store);
    let fp = Fingerprint::new("POST", "/x", "", b"");
    let up = keys_on(&cluster, "open:", 1, 1)[0];
    let Ok(Begin::Execute(lease)) = engine.begin(&Policy::DEFAULT, up, fp).await else {
        panic!("claimed")
    };
    lease.finish(Response::new(201, [], b"ok")).await.unwrap();

    cluster.stop(0);
    for (n, key) in keys_on(&cluster, "open:", 0, 5).into_iter().enumerate() {
        let begun = engine.begin(&Policy::DEFAULT, key, fp).await;
        assert!(
            matches!(begun, Ok(Begin::Unprotected(_))),
            "attempt {n}: {begun:?}"
        );
    }
}

#[actix_web::test]
async fn a_slot_that_moves_mid_run_keeps_its_records_and_its_running_claims() {
    let Some(cluster) = TestRedisCluster::start() else {
        return;
    };
    let engine = engine_on(&cluster, "moving:");
    let fp = Fingerprint::new("POST", "/x", "", b"");
    let key = keys_on(&cluster, "moving:", 0, 1)[0];
    let redis_key = format!("moving:{key}");
    let slot = slot_of(&cluster, &redis_key);
    let Ok(Begin::Execute(held)) = engine.begin(&Policy::DEFAULT, key, fp).await else {
        panic!("claimed")
    };

    // Mid-migration: the key is already on the target, the slot not yet handed over (ASK).
    let slot = u16::try_from(slot).unwrap();
    migrate(&cluster, &[slot]);
    move_key(&cluster, &redis_key);
    let finished = held.finish(Response::new(201, [], b"moved")).await.unwrap();
    assert_eq!(
        finished,
        Outcome::Recorded,
        "completed on the target by ASK"
    );
    let Ok(Begin::Replay(record)) = engine.begin(&Policy::DEFAULT, key, fp).await else {
        panic!("replays mid-migration")
    };
    assert_eq!(&record.response.body()[..], b"moved");

    // Handed over (MOVED): still one key, on its new master.
    hand_over(&cluster, &[slot]);
    let Ok(Begin::Replay(record)) = engine.begin(&Policy::DEFAULT, key, fp).await else {
        panic!("replays after the move")
    };
    assert_eq!(&record.response.body()[..], b"moved");
    assert_eq!(cluster.keys(1, &redis_key), vec![redis_key.clone()]);
    assert!(cluster.keys(0, &redis_key).is_empty());
}

/// Eight slots of master 0 (for [`migrate`]).
fn slots_of_master_0(cluster: &TestRedisCluster, prefix: &str) -> Vec<u16> {
    let first = slot_of(
        cluster,
        &format!("{prefix}{}", keys_on(cluster, prefix, 0, 1)[0]),
    );
    let slots: Vec<u16> = (0..8).map(|n| u16::try_from(first).unwrap() + n).collect();
    assert!(
        slots.iter().all(|&s| {
            let key = keys_in(prefix, &[s], 9, 1)[0];
            cluster.node_of(&format!("{prefix}{key}")) == 0
        }),
        "the slots are master 0's"
    );
    slots
}

/// `CLUSTER SETSLOT slot state id` on `node`.
fn setslot(cluster: &TestRedisCluster, node: usize, slot: u16, state: &str, id: &str) {
    cluster.query::<()>(
        node,
        redis::cmd("CLUSTER")
            .arg("SETSLOT")
            .arg(slot)
            .arg(state)
            .arg(id),
    );
}

/// Marks `slots` as migrating from master 0 to master 1 (`IMPORTING` on 1, `MIGRATING` on 0),
/// as a reshard does before it moves their keys ([`move_key`]) and hands them over
/// ([`hand_over`]).
fn migrate(cluster: &TestRedisCluster, slots: &[u16]) {
    let (from, to) = (cluster.node_id(0), cluster.node_id(1));
    for &slot in slots {
        setslot(cluster, 1, slot, "IMPORTING", &from);
        setslot(cluster, 0, slot, "MIGRATING", &to);
    }
}

/// Moves `redis_key` from master 0 to master 1 (`MIGRATE`), as a reshard does.
fn move_key(cluster: &TestRedisCluster, redis_key: &str) {
    cluster.query::<()>(
        0,
        redis::cmd("MIGRATE")
            .arg("127.0.0.1")
            .arg(cluster.port(1))
            .arg(redis_key)
            .arg(0)
            .arg(5000),
    );
}

/// Hands `slots` over to master 1, on every master (the importing one first).
fn hand_over(cluster: &TestRedisCluster, slots: &[u16]) {
    let to = cluster.node_id(1);
    for &slot in slots {
        let others = (0..TestRedisCluster::MASTERS).filter(|&node| node != 1);
        for node in std::iter::once(1).chain(others) {
            setslot(cluster, node, slot, "NODE", &to);
        }
    }
}

/// Claims and records each of `keys`, 16 at once: how each went, counted.
async fn run_fresh(engine: &Engine, keys: &[StoreKey]) -> HashMap<String, usize> {
    let fp = Fingerprint::new("POST", "/x", "", b"");
    let mut answers = HashMap::new();
    for chunk in keys.chunks(16) {
        let runs = join_all(chunk.iter().map(|key| async move {
            let lease = match engine.begin(&Policy::DEFAULT, *key, fp).await {
                Ok(Begin::Execute(lease)) => lease,
                Ok(other) => return format!("not run: {other:?}"),
                Err(e) => return format!("{}: {e:?}", e.status()),
            };
            match lease.finish(Response::new(201, [], b"new")).await {
                Ok(_) => "ran".to_owned(),
                Err(e) => format!("not recorded: {e}"),
            }
        }))
        .await;
        for answer in runs {
            *answers.entry(answer).or_default() += 1;
        }
    }
    answers
}

/// While slots migrate (`SETSLOT .. IMPORTING/MIGRATING`, some keys moved with `MIGRATE`),
/// every request on their keys is answered as if nothing moved: new keys run once and record,
/// recorded keys replay, wherever their record is. Many at once: the cluster client follows
/// an `ASK` by sending `ASKING`, waiting for its answer, then the command, on the connection
/// every request to that node shares, so that another request's command took the `ASKING`
/// flag, the importing node answered `MOVED` back to the source, the source `ASK` again, and
/// the client gave up after its retries: 503 for a request Redis never ran (a quarter of them,
/// and more, under load), and a slot map rebuilt, every request held up, for each `MOVED`.
/// A command answered `ASK` or `MOVED` was not run, so following the redirect again is safe;
/// none of these requests may answer 503 (nothing is down, and each redirect is one the
/// protocol resolves), and none may run twice.
#[actix_web::test]
async fn no_claim_answers_503_while_a_slot_migrates() {
    let Some(cluster) = TestRedisCluster::start() else {
        return;
    };
    let prefix = "migrating:";
    let engine = engine_on(&cluster, prefix);
    let fp = Fingerprint::new("POST", "/x", "", b"");
    let slots = slots_of_master_0(&cluster, prefix);
    // Records made before: half stay on the source, half are migrated to the target.
    let before = keys_in(prefix, &slots, 1, 16);
    for key in &before {
        recorded(&engine, *key, fp, b"before").await;
    }
    migrate(&cluster, &slots);
    for key in before.iter().step_by(2) {
        move_key(&cluster, &format!("{prefix}{key}"));
    }

    let fresh = keys_in(prefix, &slots, 2, 8 * 16);
    let answers = answers_while_slots_migrate(&engine, &before, &fresh).await;
    let expected = HashMap::from([
        ("replay".to_owned(), before.len() * 8),
        ("ran once, replays".to_owned(), fresh.len()),
    ]);
    assert_eq!(answers, expected, "while the slots migrate");

    // Handed over, the rest of the keys migrated first: every record replays from the target.
    for key in before.iter().skip(1).step_by(2) {
        move_key(&cluster, &format!("{prefix}{key}"));
    }
    hand_over(&cluster, &slots);
    for key in before.iter().chain(&fresh) {
        let Begin::Replay(_) = begin_until_up(&engine, *key, fp).await else {
            panic!("{key} replays once handed over")
        };
        assert_eq!(cluster.node_of(&format!("{prefix}{key}")), 1);
    }
}

/// The store's own connection to an importing node (the one it sends `ASKING` and a command
/// on) is kept for the next `ASK`; one the node closed meanwhile (a restart, its idle
/// `timeout`, here `CLIENT KILL`) is made anew and the command sent again, as the cluster
/// client does on its own connections, rather than answered 503 while nothing is down.
#[actix_web::test]
async fn a_connection_an_importing_node_closed_is_made_anew_while_its_slot_migrates() {
    let Some(cluster) = TestRedisCluster::start() else {
        return;
    };
    let prefix = "stale:";
    let engine = engine_on(&cluster, prefix);
    let slots = slots_of_master_0(&cluster, prefix);
    migrate(&cluster, &slots);
    // Many at once: some go through the store's own connection to master 1.
    let before = run_fresh(&engine, &keys_in(prefix, &slots, 2, 8 * 16)).await;
    assert_eq!(before, HashMap::from([("ran".to_owned(), 8 * 16)]));

    // Master 1 closes its clients' connections, and the cluster client's own is made anew
    // (by a key master 1 owns), so that only the store's is stale.
    cluster.query::<()>(
        1,
        redis::cmd("CLIENT").arg("KILL").arg("TYPE").arg("normal"),
    );
    let fp = Fingerprint::new("POST", "/x", "", b"");
    let own = keys_on(&cluster, prefix, 1, 1)[0];
    recorded(&engine, own, fp, b"own").await;

    let after = run_fresh(&engine, &keys_in(prefix, &slots, 3, 8 * 16)).await;
    assert_eq!(
        after,
        HashMap::from([("ran".to_owned(), 8 * 16)]),
        "after master 1 closed the store's connections, while the slots still migrate"
    );
}

/// With `wait_for_replicas`, a claim on a migrating slot is written on the importing node
/// (its `ASK` followed), while the slot's primary in the cluster client's map is the node
/// migrating it: the replicas counted are the importing node's, which holds the claim, not the
/// migrating node's, which acknowledged nothing of it. Master 0 has a replica, master 1
/// (importing) none: the claim is unavailable and released, as on a primary without replicas
/// (`on_a_cluster_a_claim_waits_for_the_replicas_of_its_own_primary`), where master 0's
/// replica was taken to acknowledge it. Once master 1 has a replica, a claim there is
/// acknowledged and runs.
#[actix_web::test]
async fn a_claim_on_a_migrating_slot_is_acknowledged_by_the_replicas_of_the_node_holding_it() {
    let Some(cluster) = TestRedisCluster::start() else {
        return;
    };
    let prefix = "waitmig:";
    let _replica = cluster.add_replica(0);
    let engine = engine_waiting_on(&cluster, prefix, Duration::from_millis(50));
    let fp = Fingerprint::new("POST", "/x", "", b"");
    // A claim on master 0 is acknowledged, once its new replica has caught up.
    let on_0 = keys_on(&cluster, prefix, 0, 1)[0];
    let Begin::Execute(lease) = begin_until_up(&engine, on_0, fp).await else {
        panic!("a claim on master 0 is acknowledged by its replica")
    };
    drop(lease);

    let slots = slots_of_master_0(&cluster, prefix);
    migrate(&cluster, &slots);
    let key = keys_in(prefix, &slots, 5, 1)[0];
    let begun = engine.begin(&Policy::DEFAULT, key, fp).await;
    assert!(
        matches!(
            begun,
            Err(IdempotencyError::StoreUnavailable(StoreError::Unavailable(
                _
            )))
        ),
        "a claim written on master 1, which has no replica, was taken as acknowledged: {begun:?}"
    );
    let redis_key = format!("{prefix}{key}");
    assert!(
        cluster.keys(1, &redis_key).is_empty() && cluster.keys(0, &redis_key).is_empty(),
        "the unacknowledged claim was released"
    );

    let _replica_of_1 = cluster.add_replica(1);
    let key = keys_in(prefix, &slots, 6, 1)[0];
    let begun = begin_until_up(&engine, key, fp).await;
    assert!(
        matches!(begun, Begin::Execute(_)),
        "a claim on master 1, acknowledged by its replica: {begun:?}"
    );
    assert_eq!(cluster.keys(1, &format!("{prefix}{key}")).len(), 1);
}

/// Many claims at once on migrating slots, with `wait_for_replicas`: each claim's `EXISTS`
/// and `WAIT` go to the node holding it as one pipeline, whose `ASK` the cluster client
/// follows on the connection every request shares, where another request's command can take
/// the `ASKING` (see `no_claim_answers_503_while_a_slot_migrates`). The store follows such a
/// redirect itself, as it does a single command's, where it answered 503 though nothing was
/// down.
#[actix_web::test]
async fn no_claim_waiting_for_replicas_answers_503_while_a_slot_migrates() {
    let Some(cluster) = TestRedisCluster::start() else {
        return;
    };
    let prefix = "waitmany:";
    let (_replica_of_0, _replica_of_1) = (cluster.add_replica(0), cluster.add_replica(1));
    let engine = engine_waiting_on(&cluster, prefix, Duration::from_millis(200));
    let fp = Fingerprint::new("POST", "/x", "", b"");
    for node in [0, 1] {
        let key = keys_on(&cluster, prefix, node, 1)[0];
        let Begin::Execute(lease) = begin_until_up(&engine, key, fp).await else {
            panic!("a claim on master {node} is acknowledged by its replica")
        };
        drop(lease);
    }

    let slots = slots_of_master_0(&cluster, prefix);
    migrate(&cluster, &slots);
    let answers = run_fresh(&engine, &keys_in(prefix, &slots, 7, 8 * 16)).await;
    assert_eq!(
        answers,
        HashMap::from([("ran".to_owned(), 8 * 16)]),
        "while the slots migrate, each claim waiting for a replica"
    );
}

#[actix_web::test]
async fn a_master_that_dies_is_replaced_by_its_replica_and_its_keys_work_again() {
    let Some(mut cluster) = TestRedisCluster::start() else {
        return;
    };
    let engine = engine_on(&cluster, "promoted:");
    let fp = Fingerprint::new("POST", "/x", "", b"");
    let keys = keys_on(&cluster, "promoted:", 0, 2);
    let (done, fresh) = (keys[0], keys[1]);
    recorded(&engine, done, fp, b"first").await;

    let replica = cluster.add_replica(0);
    let synced: i64 = cluster.query(0, redis::cmd("WAIT").arg(1).arg(5000));
    assert_eq!(synced, 1, "the replica has every write");
    let slot = slot_of(&cluster, &format!("promoted:{done}"));
    cluster.stop(0);
    // Meanwhile its keys answer 503.
    let down = engine.begin(&Policy::DEFAULT, fresh, fp).await;
    assert!(
        matches!(down, Err(idem_core::IdempotencyError::StoreUnavailable(_))),
        "{down:?}"
    );
    cluster.wait_for_slot_at(slot, replica.port(), &[&replica]);

    // Promoted: the app follows it without a restart, while the old master stays down.
    replays_and_runs_once_up(&engine, done, fresh, fp, b"first").await;
}

/// On a cluster, the store waits on the key's own primary (the cluster client would ask every
/// primary and take the least count): with no replicas there, a claim is released and
/// unavailable, whichever master holds it.
#[actix_web::test]
async fn on_a_cluster_a_claim_waits_for_the_replicas_of_its_own_primary() {
    let Some(cluster) = TestRedisCluster::start() else {
        return;
    };
    let store = RedisStore::cluster(cluster.urls())
        .wait_for_replicas(1, Duration::from_millis(50))
        .build()
        .unwrap();
    let engine = Engine::new(store);
    let fp = Fingerprint::new("POST", "/x", "", b"");
    for n in 0..6u8 {
        let begun = engine
            .begin(&Policy::DEFAULT, StoreKey::from_bytes([n; 32]), fp)
            .await;
        let Err(IdempotencyError::StoreUnavailable(StoreError::Unavailable(why))) = begun else {
            panic!("a claim no replica took is unavailable: {begun:?}")
        };
        assert!(why.to_string().contains("reached 0 of the 1"), "{why}");
    }
    let keys: usize = (0..TestRedisCluster::MASTERS)
        .map(|node| cluster.query::<usize>(node, &mut redis::cmd("DBSIZE")))
        .sum();
    assert_eq!(keys, 0, "every claim released");
}

/// `CONFIG SET requirepass password`: a node that wants `password` from then on.
fn requirepass(password: &str) -> redis::Cmd {
    let mut cmd = redis::cmd("CONFIG");
    cmd.arg("SET").arg("requirepass").arg(password);
    cmd
}

/// `urls`, each with `password`.
fn with_password(urls: &[String], password: &str) -> Vec<String> {
    let credentials = format!("redis://:{password}@");
    urls.iter()
        .map(|url| url.replace("redis://", &credentials))
        .collect()
}

/// Wrong credentials are a fault to fix, on a cluster as on one server: they fail closed even
/// when failing open, where the cluster client's "no connection" read as an outage and every
/// keyed request ran unprotected. Nodes that cannot be reached at all still fail open.
#[actix_web::test]
async fn a_cluster_refusing_the_store_s_credentials_fails_closed_even_when_failing_open() {
    let Some(mut cluster) = TestRedisCluster::start() else {
        return;
    };
    for node in 0..TestRedisCluster::MASTERS {
        cluster.query::<()>(node, &mut requirepass("secret"));
    }
    let urls = cluster.urls();
    let with_password = |password: &str| with_password(&urls, password);
    let fp = Fingerprint::new("POST", "/x", "", b"");
    let engine = |urls: Vec<String>| {
        let store = RedisStore::cluster(urls)
            .command_timeout(TIMEOUT)
            .fail_open(true)
            .build()
            .unwrap();
        Engine::new(store)
    };
    let wrong = engine(with_password("wrong"));
    for n in 0..3u8 {
        let begun = wrong
            .begin(&Policy::DEFAULT, StoreKey::from_bytes([n; 32]), fp)
            .await;
        let Err(IdempotencyError::StoreUnavailable(StoreError::Refused(why))) = begun else {
            panic!("wrong credentials fail closed: {begun:?}")
        };
        assert!(why.to_string().contains("refused"), "{why}");
    }
    let right = engine(with_password("secret"));
    let begun = right
        .begin(&Policy::DEFAULT, StoreKey::from_bytes([9; 32]), fp)
        .await;
    assert!(matches!(begun, Ok(Begin::Execute(_))), "{begun:?}");
    // Unreachable, not refused: an outage, which fails open as asked.
    for node in 0..TestRedisCluster::MASTERS {
        cluster.stop(node);
    }
    let gone = engine(with_password("secret"));
    let begun = gone
        .begin(&Policy::DEFAULT, StoreKey::from_bytes([10; 32]), fp)
        .await;
    assert!(matches!(begun, Ok(Begin::Unprotected(_))), "{begun:?}");
}

/// One seed that refuses the store's connection (a node since given a password, a decommissioned
/// address reused) is a fault of that seed, not of the cluster, whose nodes take the store's
/// connection: a master that is down is still an outage, which fails open as asked, where any
/// seed's refusal made every key fail closed.
#[actix_web::test]
async fn one_seed_refusing_the_store_leaves_an_outage_of_a_master_failing_open() {
    let (Some(mut cluster), Some(refusing)) = (TestRedisCluster::start(), TestRedis::start_owned())
    else {
        return;
    };
    // Found before the nodes want a password.
    let up = keys_on(&cluster, "seeds:", 1, 1)[0];
    let down = keys_on(&cluster, "seeds:", 0, 3);
    // The cluster's nodes take the store's password; the odd seed wants another.
    for node in 0..TestRedisCluster::MASTERS {
        cluster.query::<()>(node, &mut requirepass("secret"));
    }
    refusing.query::<()>(&mut requirepass("other"));
    let mut seeds = cluster.urls();
    seeds.push(refusing.url().to_owned());
    let seeds = with_password(&seeds, "secret");
    let store = RedisStore::cluster(seeds)
        .prefix("seeds:")
        .command_timeout(TIMEOUT)
        .fail_open(true)
        .build()
        .unwrap();
    let engine = Engine::new(store);
    let fp = Fingerprint::new("POST", "/x", "", b"");
    let begun = begin_until_up(&engine, up, fp).await;
    assert!(matches!(begun, Begin::Execute(_)), "{begun:?}");

    cluster.stop(0);
    for (n, key) in down.into_iter().enumerate() {
        let begun = engine.begin(&Policy::DEFAULT, key, fp).await;
        assert!(
            matches!(begun, Ok(Begin::Unprotected(_))),
            "attempt {n}: {begun:?}"
        );
    }
}

/// A store for one server whose URL leads to a node of a cluster is answered `MOVED` for the
/// keys of other nodes' slots: a fault of its settings, which fails closed even when failing
/// open and says to build the store on the cluster, where it read as an outage and ran those
/// keys unprotected.
#[actix_web::test]
async fn a_single_server_store_on_a_cluster_node_fails_closed_and_says_to_use_the_cluster() {
    let Some(cluster) = TestRedisCluster::start() else {
        return;
    };
    let store = RedisStore::builder(cluster.url(0))
        .fail_open(true)
        .build()
        .unwrap();
    let engine = Engine::new(store);
    let fp = Fingerprint::new("POST", "/x", "", b"");
    let elsewhere = (0..=255u8)
        .map(|b| StoreKey::from_bytes([b; 32]))
        .find(|key| cluster.node_of(&format!("idem:{key}")) != 0)
        .expect("a key of another node's slots");
    let begun = engine.begin(&Policy::DEFAULT, elsewhere, fp).await;
    let Err(IdempotencyError::StoreUnavailable(StoreError::Refused(why))) = begun else {
        panic!("MOVED fails closed: {begun:?}")
    };
    assert!(why.to_string().contains("RedisStore::cluster"), "{why}");
}

/// On a cluster, the master that holds the store's first claim is asked whether it may evict
/// keys, as one server is, and says so through the key's own route.
#[actix_web::test]
async fn a_cluster_master_that_may_evict_the_store_s_keys_is_reported_once() {
    let warnings = idem_tests::Warnings::installed();
    let Some(cluster) = TestRedisCluster::start() else {
        return;
    };
    for node in 0..TestRedisCluster::MASTERS {
        for (name, value) in [("maxmemory", "1gb"), ("maxmemory-policy", "allkeys-lru")] {
            cluster.query::<()>(node, redis::cmd("CONFIG").arg("SET").arg(name).arg(value));
        }
    }
    let engine = engine_on(&cluster, "evicting:");
    let fp = Fingerprint::new("POST", "/x", "", b"");
    for key in keys_on(&cluster, "evicting:", 1, 3) {
        assert!(matches!(
            begin_until_up(&engine, key, fp).await,
            Begin::Execute(_)
        ));
    }
    let reported = warnings
        .logged()
        .into_iter()
        .filter_map(|fields| fields.get("message").cloned())
        .filter(|m| m.contains("maxmemory-policy is allkeys-lru"))
        .count();
    assert_eq!(reported, 1);
}

/// A connection to a master that breaks with a claim or a read in flight on it (a network
/// that reset it, or another command's lost answer) fails that command; the cluster client
/// sends it again itself, on a new connection (or to another master first, which redirects
/// it), as the store relies on: each claim here is a `SET` whose answer is lost, which sent
/// again finds its own claim and holds the key, and each read a `GET`.
#[actix_web::test]
async fn a_claim_or_a_read_whose_answer_was_lost_on_a_cluster_is_sent_again_by_its_client() {
    let Some((cluster, proxies)) = TestRedisCluster::start_behind_proxies() else {
        return;
    };
    let store = RedisStore::cluster(cluster.urls_behind())
        .prefix("lost:")
        .command_timeout(Duration::from_secs(5))
        .build()
        .expect("valid cluster URLs");
    let now = idem_actix::clock::Clock::now(&idem_actix::clock::SystemClock);
    let lose = |name: &'static [u8]| {
        lose_answer_among(&proxies, move |arguments| arguments.first() == Some(&name));
    };
    for n in 0..16 {
        let key = StoreKey::from_bytes([n; 32]);
        let claim = idem_core::InFlight {
            fingerprint: Fingerprint::new("POST", "/x", "", b""),
            lease_until: now.saturating_add(Duration::from_secs(30)),
            token: idem_core::Token::random(),
        };
        lose(b"SET");
        let claimed = store.claim(&key, claim, now).await;
        proxies.iter().for_each(LosingRedisProxy::disarm);
        assert!(
            matches!(claimed, Ok(idem_core::store::Claim::Claimed)),
            "claim {n}: {claimed:?}"
        );
        lose(b"GET");
        let read = store.get(&key, now).await;
        proxies.iter().for_each(LosingRedisProxy::disarm);
        assert!(
            matches!(&read, Ok(Some(idem_core::Record::InFlight(held))) if held.token == claim.token),
            "read {n}: {read:?}"
        );
    }
    let lost: usize = proxies.iter().map(LosingRedisProxy::lost).sum();
    assert_eq!(lost, 32, "every claim's and read's answer was lost once");
}
