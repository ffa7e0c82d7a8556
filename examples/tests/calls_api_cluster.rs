//! `calls-api` processes sharing a Redis Cluster of three masters (`--redis-cluster`,
//! `IDEM_REDIS_CLUSTER`): each key runs once across them. Skipped when no cluster can be made,
//! unless `IDEM_REQUIRE_REDIS=1`.

#[allow(dead_code)] // each test binary uses part of it
mod common;

use common::CallsApi;
use futures_util::future::join_all;
use idem_tests::{RawRequest, TestRedisCluster};

/// The calls a process created, for tenant-1.
async fn calls(api: &CallsApi) -> usize {
    let res = RawRequest::get("/v1/calls")
        .header("Authorization", "Bearer tenant-1")
        .send(api.addr)
        .await;
    assert_eq!(res.status, 200);
    res.json()["data"].as_array().expect("a list").len()
}

#[tokio::test]
async fn processes_sharing_a_cluster_run_each_key_once() {
    let Some(cluster) = TestRedisCluster::start() else {
        return;
    };
    let a = CallsApi::start_on_cluster(&cluster.urls(), false).await;
    // The second process is told of one node only: it learns the others from it.
    let b = CallsApi::start_on_cluster(&[cluster.url(2)], false).await;
    let first = a.create("cross-process-1").await;
    assert_eq!(first.status, 201);
    let retry = b.create("cross-process-1").await;
    assert!(
        retry.replayed(),
        "the other process replays the first answer"
    );
    assert_eq!(retry.body, first.body);

    // Ten keys, each sent 64 times at once, half to each process.
    let keys: Vec<String> = (0..10).map(|n| format!("burst-{n}")).collect();
    let apis = [&a, &b];
    let all = join_all(
        keys.iter()
            .flat_map(|key| (0..64).map(move |i| (key, apis[i % 2])))
            .map(|(key, api)| api.create(key)),
    )
    .await;
    assert!(
        all.iter().all(|r| r.status == 201 || r.status == 409),
        "{:?}",
        all.iter().map(|r| r.status).collect::<Vec<_>>()
    );
    assert_eq!(
        calls(&a).await + calls(&b).await,
        1 + keys.len(),
        "one call per key across both processes"
    );
    for key in &keys {
        let (x, y) = (a.create(key).await, b.create(key).await);
        assert!(x.replayed() && y.replayed(), "{key}");
        assert_eq!(x.body, y.body);
    }
    let masters = (0..TestRedisCluster::MASTERS)
        .filter(|&node| !cluster.keys(node, "idem:*").is_empty())
        .count();
    assert_eq!(
        masters,
        TestRedisCluster::MASTERS,
        "records on every master"
    );
}

#[tokio::test]
async fn the_environment_names_the_cluster_as_the_flag_does() {
    let Some(cluster) = TestRedisCluster::start() else {
        return;
    };
    let by_flag = CallsApi::start_on_cluster(&cluster.urls(), false).await;
    let by_env = CallsApi::start_on_cluster(&cluster.urls(), true).await;
    let first = by_flag.create("env-1").await;
    assert_eq!(first.status, 201);
    let retry = by_env.create("env-1").await;
    assert!(
        retry.replayed(),
        "IDEM_REDIS_CLUSTER points the second process at the same cluster"
    );
    assert_eq!(retry.body, first.body);
}

#[test]
fn one_redis_store_at_a_time_and_no_empty_node() {
    for args in [
        &[
            "--redis-url",
            "redis://127.0.0.1:1",
            "--redis-cluster",
            "redis://127.0.0.1:2",
        ][..],
        &[
            "--redis-cluster",
            "redis://127.0.0.1:1,,redis://127.0.0.1:2",
        ],
        &["--redis-cluster", "not a url"],
    ] {
        let mut command = common::command();
        command.args(["--addr", "127.0.0.1:0"]).args(args);
        let (code, stderr) = common::refused(command);
        assert!(
            matches!(code, Some(1 | 2)) && stderr.contains("--redis-"),
            "{args:?}: {code:?} {stderr}"
        );
    }
}
