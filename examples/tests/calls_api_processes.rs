//! The `calls-api` binary as users run it: flags, and several processes sharing a Redis.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use idem_tests::{RawRequest, TestRedis};
use serde_json::json;

/// A running `calls-api` process, stopped on drop.
struct CallsApi {
    child: Child,
    addr: SocketAddr,
}

impl CallsApi {
    async fn start(redis_url: Option<&str>) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .unwrap()
            .port();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let mut command = Command::new(env!("CARGO_BIN_EXE_calls-api"));
        command
            .args(["--addr", &addr.to_string(), "--workers", "1"])
            .env_remove("IDEM_REDIS_URL")
            .stderr(Stdio::null());
        if let Some(url) = redis_url {
            command.args(["--redis-url", url]);
        }
        let child = command.spawn().expect("start calls-api");
        let api = Self { child, addr };
        for _ in 0..200 {
            if tokio::net::TcpStream::connect(addr).await.is_ok() {
                return api;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("calls-api did not listen on {addr}");
    }

    async fn create(&self, key: &str) -> idem_tests::RawResponse {
        RawRequest::post("/v1/calls")
            .header("Authorization", "Bearer tenant-1")
            .header("Idempotency-Key", key)
            .json(&json!({ "agent_id": "agent_1", "phone_number": "+15555550123" }))
            .send(self.addr)
            .await
    }
}

impl Drop for CallsApi {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn processes_sharing_redis_run_each_key_once() {
    let Some(redis) = TestRedis::start() else {
        return;
    };
    let a = CallsApi::start(Some(redis.url())).await;
    let b = CallsApi::start(Some(redis.url())).await;
    let first = a.create("cross-process-1").await;
    assert_eq!(first.status, 201);
    let retry = b.create("cross-process-1").await;
    assert_eq!(retry.status, 201);
    assert!(
        retry.replayed(),
        "the other process replays the first answer"
    );
    assert_eq!(retry.body, first.body);
}

#[tokio::test]
async fn the_embedded_store_is_per_process() {
    // The stated limit: without a shared store, each process runs a duplicate once.
    let a = CallsApi::start(None).await;
    let b = CallsApi::start(None).await;
    let first = a.create("per-process").await;
    let other = b.create("per-process").await;
    assert_eq!((first.status, other.status), (201, 201));
    assert!(!other.replayed());
    assert!(a.create("per-process").await.replayed());
}

#[test]
fn bad_flags_are_refused_with_usage() {
    let out = Command::new(env!("CARGO_BIN_EXE_calls-api"))
        .arg("--wrokers")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("unknown argument `--wrokers`") && stderr.contains("usage:"));

    let out = Command::new(env!("CARGO_BIN_EXE_calls-api"))
        .args(["--workers", "0"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[tokio::test]
async fn metrics_are_exposed_in_prometheus_text() {
    let api = CallsApi::start(None).await;
    api.create("m-1").await;
    api.create("m-1").await;
    let res = RawRequest::get("/metrics").send(api.addr).await;
    assert_eq!(res.status, 200, "no token needed");
    let text = String::from_utf8_lossy(&res.body);
    assert!(
        text.contains(r#"idem_requests_total{outcome="executed"} 1"#),
        "{text}"
    );
    assert!(
        text.contains(r#"idem_requests_total{outcome="replayed"} 1"#),
        "{text}"
    );
    assert!(text.contains("idem_store_duration_seconds"), "{text}");
}
