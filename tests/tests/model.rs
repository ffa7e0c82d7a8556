//! Each store against the engine's reference model (`idem_tests::model`): two processes
//! sharing the store, on it and behind their replay caches, over random interleavings of
//! claims, completions, releases, renewals and the passing of time; and the embedded store
//! through faults. The Redis and Postgres runs skip when no server can be had, unless
//! `IDEM_REQUIRE_REDIS=1` / `IDEM_REQUIRE_POSTGRES=1`.

use std::sync::Arc;

use idem_actix::{MokaStore, PostgresStore, RedisStore};
use idem_tests::model::answers_as_the_model;
use idem_tests::{TestPostgres, TestRedis, TestRedisCluster};

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
    let process = || {
        RedisStore::builder(redis.url())
            .prefix("model:")
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
            .build()
            .expect("valid Redis URLs")
    };
    answers_as_the_model(256, async || [process(), process()]);
}

/// Two stores on one table, as two processes have: its queries under the same interleavings.
#[test]
fn the_postgres_store_answers_as_the_model() {
    let Some(pg) = TestPostgres::start() else {
        return;
    };
    let table = pg.table("model");
    let process = || {
        PostgresStore::builder(pg.url())
            .table(table.clone())
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
