//! A `calls-api` process for tests, on a free loopback port.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use idem_tests::{RawRequest, RawResponse};
use serde_json::json;

/// A running `calls-api` process, stopped on drop.
pub struct CallsApi {
    child: Child,
    /// Where it listens.
    pub addr: SocketAddr,
}

impl CallsApi {
    /// Starts one, on the embedded store or the Redis at `redis_url`, configured by flags.
    #[allow(dead_code)]
    pub async fn start(redis_url: Option<&str>) -> Self {
        Self::start_with(redis_url, false).await
    }

    /// Starts one configured by flags, or with `by_env` by `IDEM_ADDR`, `IDEM_WORKERS` and
    /// `IDEM_REDIS_URL`.
    #[allow(dead_code)]
    pub async fn start_with(redis_url: Option<&str>, by_env: bool) -> Self {
        let addr = free_addr();
        let mut command = command();
        if by_env {
            command
                .env("IDEM_ADDR", addr.to_string())
                .env("IDEM_WORKERS", "2");
            if let Some(url) = redis_url {
                command.env("IDEM_REDIS_URL", url);
            }
        } else {
            command.args(["--addr", &addr.to_string(), "--workers", "2"]);
            if let Some(url) = redis_url {
                command.args(["--redis-url", url]);
            }
        }
        Self::launch(command, addr).await
    }

    /// Starts one on the Redis Cluster reached through `urls`, configured by flags, or with
    /// `by_env` by `IDEM_REDIS_CLUSTER`.
    #[allow(dead_code)]
    pub async fn start_on_cluster(urls: &[String], by_env: bool) -> Self {
        let urls = urls.join(",");
        if !by_env {
            return Self::start_args(&["--redis-cluster", &urls]).await;
        }
        let addr = free_addr();
        let mut command = command();
        command
            .args(["--addr", &addr.to_string(), "--workers", "2"])
            .env("IDEM_REDIS_CLUSTER", urls);
        Self::launch(command, addr).await
    }

    /// Starts one on the Postgres at `url`, configured by `--database-url`, or with `by_env`
    /// by `IDEM_DATABASE_URL`.
    #[allow(dead_code)]
    pub async fn start_on_database(url: &str, by_env: bool) -> Self {
        if !by_env {
            return Self::start_args(&["--database-url", url]).await;
        }
        let addr = free_addr();
        let mut command = command();
        command
            .args(["--addr", &addr.to_string(), "--workers", "2"])
            .env("IDEM_DATABASE_URL", url);
        Self::launch(command, addr).await
    }

    /// Starts one with `args` after its address and `--workers 2`.
    #[allow(dead_code)]
    pub async fn start_args(args: &[&str]) -> Self {
        let addr = free_addr();
        let mut command = command();
        command
            .args(["--addr", &addr.to_string(), "--workers", "2"])
            .args(args);
        Self::launch(command, addr).await
    }

    /// Starts one with `vars` in its environment and `args` after its address and
    /// `--workers 2`.
    #[allow(dead_code)]
    pub async fn start_env_args(vars: &[(&str, &str)], args: &[&str]) -> Self {
        let addr = free_addr();
        let mut command = command();
        command
            .envs(vars.iter().copied())
            .args(["--addr", &addr.to_string(), "--workers", "2"])
            .args(args);
        Self::launch(command, addr).await
    }

    /// Starts one listening on `addr` with `args` after its address and `--workers 2`, each
    /// line it prints (one per call it places) appended to `log`.
    #[allow(dead_code)]
    pub async fn start_logged(addr: SocketAddr, args: &[&str], log: &Log) -> Self {
        let mut command = command();
        command
            .args(["--addr", &addr.to_string(), "--workers", "2"])
            .args(args)
            .stdout(Stdio::piped());
        let mut child = command.spawn().expect("start calls-api");
        let stdout = child.stdout.take().expect("piped standard output");
        let log = Arc::clone(log);
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                log.lock().unwrap().push(line);
            }
        });
        Self::listening(child, addr).await
    }

    /// Runs `command` and waits until it listens on `addr`.
    async fn launch(mut command: Command, addr: SocketAddr) -> Self {
        let child = command.spawn().expect("start calls-api");
        Self::listening(child, addr).await
    }

    /// `child`, once it listens on `addr`.
    async fn listening(child: Child, addr: SocketAddr) -> Self {
        let api = Self { child, addr };
        for _ in 0..200 {
            if tokio::net::TcpStream::connect(addr).await.is_ok() {
                return api;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("calls-api did not listen on {addr}");
    }

    /// Creates a call with `key`.
    #[allow(dead_code)]
    pub async fn create(&self, key: &str) -> RawResponse {
        RawRequest::post("/v1/calls")
            .header("Authorization", "Bearer tenant-1")
            .header("Idempotency-Key", key)
            .json(&json!({ "agent_id": "agent_1", "phone_number": "+15555550123" }))
            .send(self.addr)
            .await
    }
}

impl CallsApi {
    /// Kills the process with SIGKILL, as a crash or an OOM kill would: nothing of it runs
    /// on, nothing is finished or released.
    #[allow(dead_code)]
    pub fn kill(&mut self) {
        self.child.kill().expect("SIGKILL calls-api");
        self.child.wait().expect("reap calls-api");
    }

    /// Sends SIGTERM, as a process manager stopping it does, and waits up to 30 s for the
    /// process to exit: whether it exited cleanly.
    #[allow(dead_code)]
    pub async fn terminate(&mut self) -> bool {
        let sent = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(sent.success(), "SIGTERM delivered");
        for _ in 0..600 {
            if let Some(status) = self.child.try_wait().expect("poll calls-api") {
                return status.success();
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("calls-api did not exit within 30 s of SIGTERM");
    }
}

/// What a process printed, line by line, shared with the thread that reads it.
#[allow(dead_code)]
pub type Log = Arc<Mutex<Vec<String>>>;

/// A free address on loopback.
pub fn free_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap()
}

/// The `calls-api` binary, with none of its settings from this environment.
fn command() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_calls-api"));
    for name in [
        "IDEM_ADDR",
        "IDEM_WORKERS",
        "IDEM_REDIS_URL",
        "IDEM_REDIS_CLUSTER",
        "IDEM_REPLAY_CACHE_BYTES",
        "IDEM_DATABASE_URL",
    ] {
        command.env_remove(name);
    }
    command.stdout(Stdio::null()).stderr(Stdio::null());
    command
}

impl Drop for CallsApi {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
