//! `calls-api` stopped by SIGTERM: calls in progress finish and are recorded first, even when
//! their clients went away, so that a retry to another process gets the replay.

mod common;

use std::time::{Duration, Instant};

use common::CallsApi;
use idem_tests::{RawRequest, TestRedis};
use serde_json::json;

fn slow_call(key: &str) -> RawRequest {
    RawRequest::post("/v1/calls")
        .header("Authorization", "Bearer tenant-1")
        .header("Idempotency-Key", key)
        .header("X-Simulate-Delay-Ms", "1500")
        .json(&json!({ "agent_id": "agent_1", "phone_number": "+15555550123" }))
}

#[tokio::test]
async fn sigterm_lets_a_call_whose_client_went_away_finish_and_record_before_exit() {
    // A Redis of its own: its one key is the call's claim.
    let Some(redis) = TestRedis::start_owned() else {
        return;
    };
    let mut first = CallsApi::start(Some(redis.url())).await;
    // The client goes away while the call dials (its key claimed), then the process is told
    // to stop.
    slow_call("sigterm-1")
        .send_and_reset(first.addr, || {
            redis.query::<u64>(&mut redis::cmd("DBSIZE")) > 0
        })
        .await;
    let started_stop = Instant::now();
    assert!(first.terminate().await, "calls-api exits cleanly");
    assert!(
        started_stop.elapsed() >= Duration::from_millis(900),
        "it waited for the call in progress"
    );
    // A new process on the same Redis replays the call: it ran once, and was recorded.
    let next = CallsApi::start(Some(redis.url())).await;
    let retry = slow_call("sigterm-1").send(next.addr).await;
    assert_eq!(retry.status, 201, "{retry:?}");
    assert!(
        retry.replayed(),
        "the retry gets the first answer: {retry:?}"
    );
    let listed = RawRequest::get("/v1/calls")
        .header("Authorization", "Bearer tenant-1")
        .send(next.addr)
        .await;
    assert_eq!(
        listed.json()["data"].as_array().map(Vec::len),
        Some(0),
        "the new process dialled nothing"
    );
}
