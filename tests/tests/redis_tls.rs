//! The Redis store over TLS (`rediss://`, feature `redis-tls`) against a real `redis-server`
//! with a TLS port and certificates made for the test: the conformance suite, a server whose
//! certificate the store does not trust, client certificates, `#insecure`, and, on a Redis
//! Cluster over TLS, a slot migrating and a master failing over to its replica. Each test
//! skips when `redis-server` or `openssl` is missing, unless `IDEM_REQUIRE_REDIS=1`.

use std::collections::HashMap;
use std::time::Duration;

use idem_actix::RedisStore;
use idem_core::{
    Begin, Engine, Fingerprint, IdempotencyError, Outcome, Policy, Response, StoreError, StoreKey,
};
use idem_tests::redis_tls::{ClientCertificates, TlsRedis};
use idem_tests::shared_store::{self, call, Probe};
use idem_tests::{
    answers_while_slots_migrate, assert_error, keys_in, recorded, replays_and_runs_once_up,
};

/// What `engine` begins with a fresh key.
async fn begin(engine: &Engine, key: u8) -> Result<Begin, IdempotencyError> {
    let fp = Fingerprint::new("POST", "/x", "", b"");
    engine
        .begin(&Policy::DEFAULT, StoreKey::from_bytes([key; 32]), fp)
        .await
}

/// A command timeout long enough for a connection's attempts (it retries, each reading the
/// system's root certificates) to fail on a certificate before it passes, so that the error
/// names the certificate rather than a timeout.
const UNTIL_REFUSED: Duration = Duration::from_secs(5);

/// That a store's first claim was refused by the store, its error saying `said` (in lower
/// case): a certificate refused is a fault to fix, not an outage, so the claim fails closed
/// even where the store fails open.
fn refused(begun: Result<Begin, IdempotencyError>, said: &str) {
    match begun {
        Err(IdempotencyError::StoreUnavailable(StoreError::Refused(e))) => {
            let text = e.to_string();
            assert!(text.to_lowercase().contains(said), "{said}: {text}");
        }
        other => panic!("refused by the store, failing closed: {other:?}"),
    }
}

#[actix_web::test]
async fn the_store_conforms_over_tls_trusting_the_authority_it_is_given() {
    let Some(redis) = TlsRedis::start(ClientCertificates::Optional) else {
        return;
    };
    let store = RedisStore::builder(redis.url())
        .tls_root_certificates(redis.authority())
        .prefix("tls-conformance:")
        .build()
        .unwrap();
    idem_core::testing::conformance(&store, 11).await;
    let keys: Vec<String> = redis.query(redis::cmd("KEYS").arg("tls-conformance:*"));
    assert!(!keys.is_empty(), "the records went to this Redis, over TLS");
}

/// A Redis Cluster over TLS (`tls-cluster yes`): the cluster client, given the authority,
/// reaches the seed by name and the master it learns by IP address, both over TLS.
#[actix_web::test]
async fn the_cluster_store_conforms_over_tls_trusting_the_authority_it_is_given() {
    let Some(redis) = TlsRedis::start_cluster() else {
        return;
    };
    let store = RedisStore::cluster([redis.url()])
        .tls_root_certificates(redis.authority())
        .prefix("tls-cluster-conformance:")
        .build()
        .unwrap();
    idem_core::testing::conformance(&store, 12).await;
    let keys: Vec<String> = redis.query(redis::cmd("KEYS").arg("tls-cluster-conformance:*"));
    assert!(!keys.is_empty(), "the records went to this Redis, over TLS");
}

/// A Redis Cluster over TLS whose masters are known by host name (as a managed cluster's
/// are): the cluster client reaches each master by the name `CLUSTER SLOTS` gives, checks its
/// certificate against it, and the store conforms with its keys spread over three masters.
#[actix_web::test]
async fn the_cluster_store_conforms_over_tls_to_masters_known_by_host_name() {
    let Some(redis) = TlsRedis::start_cluster_named(3) else {
        return;
    };
    let slots: Vec<Vec<redis::Value>> = redis.query(redis::cmd("CLUSTER").arg("SLOTS"));
    let named = slots.iter().all(|range| {
        matches!(range.get(2), Some(redis::Value::Array(master))
            if matches!(master.first(), Some(redis::Value::BulkString(host)) if host == b"localhost"))
    });
    assert!(named, "the masters are known by host name: {slots:?}");
    let store = RedisStore::cluster([redis.url()])
        .tls_root_certificates(redis.authority())
        .prefix("tls-named-conformance:")
        .build()
        .unwrap();
    idem_core::testing::conformance(&store, 13).await;
    let held: usize = (0..3)
        .map(|node| {
            let keys: Vec<String> =
                redis.query_on(node, redis::cmd("KEYS").arg("tls-named-conformance:*"));
            usize::from(!keys.is_empty())
        })
        .sum();
    assert!(
        held > 1,
        "the records went to more than one master, over TLS"
    );
}

/// A server whose certificate no authority the store trusts signed (the system's roots, or
/// another authority given) is refused: its claims are refused by the store, with the
/// certificate's fault in the error, even where the store fails open (Redis answers, and a
/// retry of the request would meet the same certificate), and requests 503
/// `idempotency_store_unavailable`, their handler not run.
#[actix_web::test]
async fn a_server_whose_certificate_is_not_trusted_is_refused_failing_closed_with_503() {
    let Some(redis) = TlsRedis::start(ClientCertificates::Optional) else {
        return;
    };
    let url = redis.url();
    let system_roots = RedisStore::builder(url.as_str())
        .fail_open(true)
        .command_timeout(UNTIL_REFUSED)
        .build()
        .unwrap();
    let other = RedisStore::builder(url.as_str())
        .tls_root_certificates(redis.other_authority())
        .fail_open(true)
        .command_timeout(UNTIL_REFUSED)
        .build()
        .unwrap();
    for store in [system_roots, other] {
        refused(begin(&Engine::new(store), 1).await, "certificate");
    }

    let probe = Probe::open();
    let other = redis.other_authority();
    let server = shared_store::instance(&probe, move || {
        RedisStore::builder(url.as_str())
            .tls_root_certificates(other.clone())
            .fail_open(true)
            .command_timeout(UNTIL_REFUSED)
            .build()
            .unwrap()
    });
    let res = call("untrusted").send(server.addr).await;
    assert_error(&res, 503, "idempotency_store_unavailable");
    assert!(res.header("retry-after").is_some(), "{res:?}");
    assert_eq!(probe.runs.get(), 0, "no handler ran without a claim");
    let keys: Vec<String> = redis.query(redis::cmd("KEYS").arg("*"));
    assert!(keys.is_empty(), "nothing was written: {keys:?}");
}

/// A Redis Cluster whose certificate is not trusted is refused as one server is: its claims
/// are refused, failing closed, with the certificate's fault in the error, where the cluster
/// client says only that it found no connection.
#[actix_web::test]
async fn a_cluster_whose_certificate_is_not_trusted_is_refused_naming_the_certificate() {
    let Some(redis) = TlsRedis::start_cluster() else {
        return;
    };
    let store = RedisStore::cluster([redis.url()])
        .tls_root_certificates(redis.other_authority())
        .fail_open(true)
        .command_timeout(UNTIL_REFUSED)
        .build()
        .unwrap();
    refused(begin(&Engine::new(store), 6).await, "certificate");
}

/// A Redis that asks clients for a certificate (`tls-auth-clients yes`) takes a store that
/// presents one its authority signed, and refuses one that presents none: a credential
/// refused, so the store fails closed even where it fails open.
#[actix_web::test]
async fn a_redis_requiring_client_certificates_takes_the_store_s_and_refuses_a_store_without() {
    let Some(redis) = TlsRedis::start(ClientCertificates::Required) else {
        return;
    };
    let (chain, key) = redis.client_certificate();
    let with = RedisStore::builder(redis.url())
        .tls_root_certificates(redis.authority())
        .tls_client_certificate(chain, key)
        .build()
        .unwrap();
    let Ok(Begin::Execute(_lease)) = begin(&Engine::new(with), 2).await else {
        panic!("claimed with the client's certificate")
    };
    let without = RedisStore::builder(redis.url())
        .tls_root_certificates(redis.authority())
        .fail_open(true)
        .command_timeout(UNTIL_REFUSED)
        .build()
        .unwrap();
    // The server's alert: `CertificateRequired` under TLS 1.3.
    refused(begin(&Engine::new(without), 3).await, "certificate");
}

/// A client certificate given with a private key that is not its own is refused when the
/// store is built, naming the setting, where the store was built and each connection then
/// failed, every claim refused.
#[actix_web::test]
async fn a_client_certificate_with_another_s_private_key_is_refused_when_built() {
    let Some(redis) = TlsRedis::start(ClientCertificates::Required) else {
        return;
    };
    let (chain, _) = redis.client_certificate();
    let (_, servers_key) = redis.server_certificate();
    let single =
        RedisStore::builder(redis.url()).tls_client_certificate(chain.clone(), servers_key.clone());
    let cluster = RedisStore::cluster([redis.url()]).tls_client_certificate(chain, servers_key);
    for built in [single.build(), cluster.build()] {
        match built {
            Err(StoreError::Config(e)) => assert!(e.contains("tls_client_certificate"), "{e}"),
            other => panic!("refused when built: {other:?}"),
        }
    }
}

/// `#insecure` after the URL checks no certificate (for a test Redis only): the store reaches
/// a server whose certificate it does not trust, which it refuses without it.
#[actix_web::test]
async fn an_insecure_url_reaches_a_server_whose_certificate_is_not_trusted() {
    let Some(redis) = TlsRedis::start(ClientCertificates::Optional) else {
        return;
    };
    let insecure = RedisStore::new(format!("{}#insecure", redis.url())).unwrap();
    let Ok(Begin::Execute(_lease)) = begin(&Engine::new(insecure), 4).await else {
        panic!("claimed over TLS without checking the certificate")
    };
    let checked = RedisStore::builder(redis.url())
        .fail_open(true)
        .command_timeout(UNTIL_REFUSED)
        .build()
        .unwrap();
    refused(begin(&Engine::new(checked), 5).await, "certificate");
}

/// `#insecure` checks no certificate on a Redis Cluster as on one server, also with a client
/// certificate for a cluster that asks for one (mutual TLS with a test cluster's certificate
/// unchecked): the cluster client's connections, the ones it learns the masters by, and the
/// store's own take the URL's mode, where the cluster client checked the certificate anyway
/// once the store was given one of its own.
#[actix_web::test]
async fn an_insecure_url_with_a_client_certificate_reaches_a_cluster_whose_certificate_is_not_trusted(
) {
    let Some(redis) = TlsRedis::start_cluster_asking(2, ClientCertificates::Required) else {
        return;
    };
    let (chain, key) = redis.client_certificate();
    let cluster = RedisStore::cluster([format!("{}#insecure", redis.url())])
        .tls_client_certificate(chain, key)
        .fail_open(true)
        .command_timeout(UNTIL_REFUSED)
        .build()
        .unwrap();
    let engine = Engine::new(cluster);
    // Keys on both masters: the seed's and the one the cluster client learns.
    for key in [8, 9, 10, 11] {
        match begin(&engine, key).await {
            Ok(Begin::Execute(_lease)) => {}
            other => panic!("claimed on the cluster, its certificate unchecked: {other:?}"),
        }
    }
}

/// With `wait_for_replicas`, each claim and completion goes out with its `WAIT` on a
/// connection of its own, which must speak TLS and trust the authority given as the store's
/// other connections do: a claim acknowledged by the replica (which syncs over TLS) runs and
/// its record reaches the replica; a store asking for two replicas of the one there is has
/// its claim answered as an unavailable store.
#[actix_web::test]
async fn writes_that_wait_for_replicas_go_over_tls_and_are_acknowledged() {
    let Some(mut redis) = TlsRedis::start(ClientCertificates::Optional) else {
        return;
    };
    let replica = redis.add_replica();
    let waiting = |replicas| {
        RedisStore::builder(redis.url())
            .tls_root_certificates(redis.authority())
            .prefix("tls-waiting:")
            .command_timeout(Duration::from_secs(5))
            .wait_for_replicas(replicas, Duration::from_secs(2))
            .build()
            .unwrap()
    };
    let engine = Engine::new(waiting(1));
    let Ok(Begin::Execute(lease)) = begin(&engine, 12).await else {
        panic!("claimed, the replica acknowledging it")
    };
    let recorded = lease.finish(Response::new(201, [], b"kept")).await;
    assert_eq!(recorded.unwrap(), Outcome::Recorded);
    let kept: Vec<String> = redis.query_on(replica, redis::cmd("KEYS").arg("tls-waiting:*"));
    assert_eq!(kept.len(), 1, "the record reached the replica");
    match begin(&Engine::new(waiting(2)), 13).await {
        Err(IdempotencyError::StoreUnavailable(_)) => {}
        other => panic!("unavailable with one replica of two: {other:?}"),
    }
}

/// An engine on a store on `redis`, a cluster, reached from `seeds` over TLS, trusting its
/// authority, with keys under `prefix` and commands that time out after a second.
fn cluster_engine(
    redis: &TlsRedis,
    seeds: impl IntoIterator<Item = String>,
    prefix: &str,
) -> Engine {
    let store = RedisStore::cluster(seeds)
        .tls_root_certificates(redis.authority())
        .prefix(prefix)
        .command_timeout(Duration::from_secs(1))
        .build()
        .unwrap();
    Engine::new(store)
}

/// A master of a Redis Cluster over TLS that dies is replaced by its replica (which joined and
/// synced over TLS): the store reaches the promoted replica over TLS, trusting the authority it
/// was given, without a restart while the old master stays down; a record made before replays
/// there, and a new key runs and is recorded.
#[actix_web::test]
async fn a_master_that_dies_is_replaced_by_its_replica_over_tls_and_its_keys_work_again() {
    let Some(mut redis) = TlsRedis::start_cluster_of(3) else {
        return;
    };
    let prefix = "tls-promoted:";
    let engine = cluster_engine(&redis, (0..3).map(|node| redis.url_of(node)), prefix);
    let fp = Fingerprint::new("POST", "/x", "", b"");
    // Master 0 holds the first third of the slots (see `TlsRedis::join`).
    let slots: Vec<u16> = (0..16384 / 3).collect();
    let keys = keys_in(prefix, &slots, 14, 2);
    let (done, fresh) = (keys[0], keys[1]);
    recorded(&engine, done, fp, b"first").await;

    let replica = redis.add_cluster_replica(0);
    let synced: i64 = redis.query_on(0, redis::cmd("WAIT").arg(1).arg(5000));
    assert_eq!(synced, 1, "the replica has every write");
    redis.stop(0);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let info: String = redis.query_on(replica, redis::cmd("INFO").arg("replication"));
        if info.contains("role:master") {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "promoted: {info}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    replays_and_runs_once_up(&engine, done, fresh, fp, b"first").await;
    let held: Vec<String> = redis.query_on(replica, redis::cmd("KEYS").arg(format!("{prefix}*")));
    assert_eq!(
        held.len(),
        2,
        "both records on the promoted replica: {held:?}"
    );
}

/// Marks `slots` as migrating from master 0 to master 1 of `redis` (`IMPORTING` on 1,
/// `MIGRATING` on 0), as a reshard does before it moves their keys.
fn migrate(redis: &TlsRedis, slots: &[u16]) {
    let (from, to) = (redis.node_id(0), redis.node_id(1));
    for &slot in slots {
        for (node, state, id) in [(1, "IMPORTING", &from), (0, "MIGRATING", &to)] {
            let mut setslot = redis::cmd("CLUSTER");
            setslot.arg("SETSLOT").arg(slot).arg(state).arg(id);
            redis.query_on::<()>(node, &mut setslot);
        }
    }
}

/// Moves `redis_key` from master 0 to master 1 (`MIGRATE`, over TLS to its TLS port, as
/// `tls-cluster yes` has it), as a reshard does.
fn move_key(redis: &TlsRedis, redis_key: &str) {
    redis.query_on::<()>(
        0,
        redis::cmd("MIGRATE")
            .arg("127.0.0.1")
            .arg(redis.tls_port(1))
            .arg(redis_key)
            .arg(0)
            .arg(5000),
    );
}

/// A slot migrating on a Redis Cluster over TLS (`tls-cluster yes`, two masters): the
/// importing node takes a command on a key of that slot only behind `ASKING`, and the store
/// sends the two in one write on a connection of its own to that node when the cluster
/// client gave up on the `ASK` (many claims at once, so that it does), a connection that must
/// reach the node over TLS and trust the authority the store was given, as the cluster
/// client's do. New keys run once and replay, records made before replay wherever they are:
/// none answers 503, as nothing is down.
#[actix_web::test]
async fn no_claim_answers_503_while_a_slot_migrates_on_a_cluster_over_tls() {
    let Some(redis) = TlsRedis::start_cluster_of(2) else {
        return;
    };
    let prefix = "tls-migrating:";
    let engine = cluster_engine(&redis, [redis.url()], prefix);
    let fp = Fingerprint::new("POST", "/x", "", b"");
    // Master 0 holds the first half of the slots.
    let slots: Vec<u16> = (100..108).collect();
    let before = keys_in(prefix, &slots, 1, 16);
    for key in &before {
        recorded(&engine, *key, fp, b"before").await;
    }
    migrate(&redis, &slots);
    for key in before.iter().step_by(2) {
        move_key(&redis, &format!("{prefix}{key}"));
    }

    let fresh = keys_in(prefix, &slots, 2, 8 * 16);
    let answers = answers_while_slots_migrate(&engine, &before, &fresh).await;
    let expected = HashMap::from([
        ("replay".to_owned(), before.len() * 8),
        ("ran once, replays".to_owned(), fresh.len()),
    ]);
    assert_eq!(answers, expected, "while the slots migrate, over TLS");
    let moved: Vec<String> = redis.query_on(1, redis::cmd("KEYS").arg(format!("{prefix}*")));
    assert!(
        moved.len() >= fresh.len(),
        "the new keys were written on the importing master: {}",
        moved.len()
    );
}
