//! Each store against the engine's reference model (`idem_tests::model`): two processes
//! sharing the store, on it and behind their replay caches, over random interleavings of
//! claims, completions, releases, renewals and the passing of time; and the embedded store
//! through faults. The Redis and Postgres runs skip when no server can be had, unless
//! `IDEM_REQUIRE_REDIS=1` / `IDEM_REQUIRE_POSTGRES=1`.

use std::sync::Arc;
use std::time::Duration;

use idem_actix::{MokaStore, PostgresStore, RedisStore};
use idem_tests::model::{
    answers_as_the_model, answers_as_the_model_when_answers_are_lost, LosesAnswers,
};
use idem_tests::pg_proxy::LosingProxy;
use idem_tests::redis_proxy::{lose_answer_among, LosingRedisProxy};
use idem_tests::{TestPostgres, TestRedis, TestRedisCluster};

/// The stores' command timeout: long, so that a loaded machine's slow answer is not taken for
/// a failure the model did not plan (the timeouts' own handling has tests of its own).
const PATIENT: Duration = Duration::from_secs(10);

/// A key prefix no other run uses, on a Redis the tests may share (`IDEM_TEST_REDIS_URL`).
fn prefix(name: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.subsec_nanos());
    format!("{name}-{}-{nanos}:", std::process::id())
}

#[test]
fn the_embedded_store_answers_as_the_model() {
    answers_as_the_model(1024, async || {
        let store = Arc::new(MokaStore::new());
        [Arc::clone(&store), store]
    });
}

/// Two stores on one Redis, as two processes have: its scripts (claims, fenced completions,
/// renewals and releases) under the same interleavings.
#[test]
fn the_redis_store_answers_as_the_model() {
    let Some(redis) = TestRedis::start() else {
        return;
    };
    let prefix = prefix("model");
    let process = || {
        RedisStore::builder(redis.url())
            .prefix(prefix.clone())
            .command_timeout(PATIENT)
            .build()
            .expect("valid Redis URL")
    };
    answers_as_the_model(1024, async || [process(), process()]);
}

/// Two stores on one Redis Cluster: the same scripts, each key's sent to the master of its
/// slot.
#[test]
fn the_redis_cluster_store_answers_as_the_model() {
    let Some(cluster) = TestRedisCluster::start() else {
        return;
    };
    let process = || {
        RedisStore::cluster(cluster.urls())
            .prefix("model:")
            .command_timeout(PATIENT)
            .build()
            .expect("valid Redis URLs")
    };
    answers_as_the_model(256, async || [process(), process()]);
}

/// Two stores on one table, as two processes have: its queries under the same interleavings,
/// each store purging lapsed rows every 10 ms (by the time of the claim that sets it off), so
/// that claims past their grace are often gone, as the model allows.
#[test]
fn the_postgres_store_answers_as_the_model() {
    let Some(pg) = TestPostgres::start() else {
        return;
    };
    let table = pg.table("model");
    let process = || {
        PostgresStore::builder(pg.url())
            .table(table.clone())
            .purge_interval(Some(Duration::from_millis(10)))
            .command_timeout(PATIENT)
            .build()
            .expect("valid settings")
    };
    answers_as_the_model(512, async || {
        let first = process();
        first.migrate().await.expect("create the table");
        [first, process()]
    });
}

/// The embedded store, each operation's first call failed as the sequence says: the engine's
/// retries and releases must leave the store as the model does.
#[test]
fn the_engine_answers_as_the_model_through_store_faults() {
    idem_tests::model::answers_as_the_model_through_faults(512, async || {
        let store = Arc::new(MokaStore::new());
        [Arc::clone(&store), store]
    });
}

/// Postgres behind a proxy that loses answers: a statement runs to its end (committed), and
/// its connection breaks before the answer comes back. The store runs it again on another
/// connection (a claim finds its own, a completion the record it wrote, a release the claim
/// gone), and every request must get what it would have got.
#[test]
fn the_postgres_store_answers_as_the_model_when_answers_are_lost() {
    let Some(pg) = TestPostgres::start() else {
        return;
    };
    let (proxy, through) = LosingProxy::in_front_of(pg.url());
    let wire = Statements(proxy);
    let table = pg.table("model_lost");
    let process = || {
        PostgresStore::builder(&through)
            .table(table.clone())
            .command_timeout(PATIENT)
            .build()
            .expect("valid settings")
    };
    answers_as_the_model_when_answers_are_lost(32, &wire, async || {
        let first = process();
        first.migrate().await.expect("create the table");
        [first, process()]
    });
    assert!(wire.0.lost() > 0, "no answer was lost");
}

/// The store's statements, each told by text of its own alone.
struct Statements(LosingProxy);

impl LosesAnswers for Statements {
    fn lose_answer_to(&self, call: &'static str) -> bool {
        self.0.lose_answer_to(match call {
            "claim" => "WITH seen AS",
            "complete" => "OR (kind = 'C'",
            "extend" => "SET lapses_at = $3",
            // After the table's quoted name, as `DELETE FROM` and `SELECT ... FROM` leave it.
            "release" => "\" WHERE key = $1 AND token = $2",
            "get" => "\" WHERE key = $1 AND lapses_at > $2",
            other => panic!("no statement for {other}"),
        });
        true
    }

    fn heal(&self) {
        self.0.disarm();
    }

    fn reruns(&self, _: &str) -> bool {
        true
    }
}

/// Redis behind a proxy that loses answers: a command runs, and its connection breaks
/// before the answer comes back. The store sends a claim or a read again, on a new
/// connection, and must answer as if nothing had been lost (a claim that finds its own first
/// send's claim holds the key); a completion, a release or a renewal fails as through a lost
/// answer (the first two retried by the engine, the third answered with the store's error),
/// and the next command goes out on a new connection.
#[test]
fn the_redis_store_answers_as_the_model_when_answers_are_lost() {
    let Some(redis) = TestRedis::start_owned() else {
        return;
    };
    let wire = Commands(LosingRedisProxy::in_front_of(redis.url()));
    let url = wire.0.url();
    let process = || {
        RedisStore::builder(&url)
            .prefix("model-lost:")
            .command_timeout(PATIENT)
            .build()
            .expect("valid Redis URL")
    };
    answers_as_the_model_when_answers_are_lost(128, &wire, async || [process(), process()]);
    assert!(wire.0.lost() > 0, "no answer was lost");
}

/// The store's commands (told by [`command_of`]) on one server's proxy.
struct Commands(LosingRedisProxy);

/// Whether a command, by its arguments (its name first), is the one sought.
type Marker = Box<dyn Fn(&[&[u8]]) -> bool + Send + Sync>;

/// What tells the store's command for `call`.
fn command_of(call: &'static str) -> Marker {
    let named = |name: &'static [u8]| {
        move |arguments: &[&[u8]]| (arguments.first()).is_some_and(|n| n.eq_ignore_ascii_case(name))
    };
    match call {
        // Its first step, `SET key value NX PX ms GET` (on a key that holds a lapsed claim, a
        // script follows, which no argument of its own tells; the store's tests lose that
        // one's answer).
        "claim" => {
            let set = named(b"SET");
            Box::new(move |arguments| set(arguments) && arguments.contains(&&b"NX"[..]))
        }
        "get" => Box::new(named(b"GET")),
        // The fenced script's operation.
        "complete" | "release" | "extend" => {
            Box::new(move |arguments| arguments.contains(&call.as_bytes()))
        }
        other => panic!("no command for {other}"),
    }
}

impl LosesAnswers for Commands {
    fn lose_answer_to(&self, call: &'static str) -> bool {
        self.0.lose_answer_to(command_of(call));
        true
    }

    fn heal(&self) {
        self.0.disarm();
    }

    /// A claim and a read are sent again on a connection found dropped, the rest not.
    fn reruns(&self, call: &str) -> bool {
        matches!(call, "claim" | "get")
    }
}

/// A Redis Cluster whose masters each sit behind a proxy that loses answers (each announces
/// its proxy's port, so that the cluster client reaches every master through it). The cluster
/// client sends a command whose connection broke again itself, on a new connection, so every
/// call must answer as if nothing had been lost: a claim sent twice finds its own claim, a
/// completion sent twice its own record, a release sent twice a free key.
#[test]
fn the_redis_cluster_store_answers_as_the_model_when_answers_are_lost() {
    let Some((cluster, proxies)) = TestRedisCluster::start_behind_proxies() else {
        return;
    };
    let wire = ClusterCommands(proxies);
    let urls = cluster.urls_behind();
    let process = || {
        RedisStore::cluster(urls.clone())
            .prefix("model-lost:")
            .command_timeout(PATIENT)
            .build()
            .expect("valid Redis URLs")
    };
    answers_as_the_model_when_answers_are_lost(128, &wire, async || [process(), process()]);
    let lost: usize = wire.0.iter().map(LosingRedisProxy::lost).sum();
    assert!(lost > 0, "no answer was lost");
}

/// The store's commands (told by [`command_of`]) on the proxies of every master, one answer
/// lost among them all.
struct ClusterCommands(Vec<LosingRedisProxy>);

impl LosesAnswers for ClusterCommands {
    fn lose_answer_to(&self, call: &'static str) -> bool {
        lose_answer_among(&self.0, command_of(call));
        true
    }

    fn heal(&self) {
        self.0.iter().for_each(LosingRedisProxy::disarm);
    }

    fn reruns(&self, _: &str) -> bool {
        true
    }
}
