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
    /// The store it uses, as its start-up line names it (`embedded moka`, `redis at URL`,
    /// ...).
    #[allow(dead_code)]
    pub store: String,
    /// What it printed to standard error after the line that says where it listens.
    #[allow(dead_code)]
    pub stderr: Log,
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
        let mut command = command();
        if by_env {
            command.env("IDEM_ADDR", ANY_PORT).env("IDEM_WORKERS", "2");
            if let Some(url) = redis_url {
                command.env("IDEM_REDIS_URL", url);
            }
        } else {
            command.args(["--addr", ANY_PORT, "--workers", "2"]);
            if let Some(url) = redis_url {
                command.args(["--redis-url", url]);
            }
        }
        Self::launch(command).await
    }

    /// Starts one on the Redis Cluster reached through `urls`, configured by flags, or with
    /// `by_env` by `IDEM_REDIS_CLUSTER`.
    #[allow(dead_code)]
    pub async fn start_on_cluster(urls: &[String], by_env: bool) -> Self {
        let urls = urls.join(",");
        if by_env {
            Self::start_env_args(&[("IDEM_REDIS_CLUSTER", &urls)], &[]).await
        } else {
            Self::start_args(&["--redis-cluster", &urls]).await
        }
    }

    /// Starts one on the Postgres at `url`, configured by `--database-url`, or with `by_env`
    /// by `IDEM_DATABASE_URL`.
    #[allow(dead_code)]
    pub async fn start_on_database(url: &str, by_env: bool) -> Self {
        if by_env {
            Self::start_env_args(&[("IDEM_DATABASE_URL", url)], &[]).await
        } else {
            Self::start_args(&["--database-url", url]).await
        }
    }

    /// Starts one with `args` after its address and `--workers 2`.
    #[allow(dead_code)]
    pub async fn start_args(args: &[&str]) -> Self {
        Self::start_env_args(&[], args).await
    }

    /// Starts one with `vars` in its environment and `args` after its address and
    /// `--workers 2`.
    #[allow(dead_code)]
    pub async fn start_env_args(vars: &[(&str, &str)], args: &[&str]) -> Self {
        Self::start_at(None, vars, args).await
    }

    /// Starts one listening on `addr`, or on a port the system picks, with `vars` in its
    /// environment and `args` after its address and `--workers 2`.
    #[allow(dead_code)]
    pub async fn start_at(addr: Option<SocketAddr>, vars: &[(&str, &str)], args: &[&str]) -> Self {
        let addr = addr.map_or(ANY_PORT.to_owned(), |addr| addr.to_string());
        let mut command = command();
        command
            .envs(vars.iter().copied())
            .args(["--addr", &addr, "--workers", "2"])
            .args(args);
        Self::launch(command).await
    }

    /// Starts one listening on `addr`, or on a port the system picks, with `args` after its
    /// address and `--workers 2`, each line it prints (one per call it places) appended to
    /// `log`.
    #[allow(dead_code)]
    pub async fn start_logged(addr: Option<SocketAddr>, args: &[&str], log: &Log) -> Self {
        let addr = addr.map_or(ANY_PORT.to_owned(), |addr| addr.to_string());
        let mut command = command();
        command
            .args(["--addr", &addr, "--workers", "2"])
            .args(args)
            .stdout(Stdio::piped());
        let mut api = Self::launch(command).await;
        let stdout = api.child.stdout.take().expect("piped standard output");
        let log = Arc::clone(log);
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                log.lock().unwrap().push(line);
            }
        });
        api
    }

    /// Starts `command` (from [`command`], with its flags), as [`CallsApi::start_at`] does
    /// with its own.
    #[allow(dead_code)]
    pub async fn start_command(command: Command) -> Self {
        Self::launch(command).await
    }

    /// The process's id.
    #[allow(dead_code)]
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Runs `command` and waits for the line it prints once it listens, which names where.
    ///
    /// The line, not a connection to the port: a port chosen ahead and given to the process
    /// may be taken by another in between, and a probe of a port nobody listens on can
    /// connect to itself; either way a test would talk to what is not this process.
    async fn launch(mut command: Command) -> Self {
        let mut child = command
            .stderr(Stdio::piped())
            .spawn()
            .expect("start calls-api");
        let stderr = child.stderr.take().expect("piped standard error");
        let (listening, heard) = tokio::sync::oneshot::channel();
        let after = Log::default();
        let log = Arc::clone(&after);
        // Reads to the end, so the process never blocks on a full pipe.
        std::thread::spawn(move || {
            let mut listening = Some(listening);
            let mut before = Vec::new();
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                match listening.take_if(|_| line.contains("listening on http://")) {
                    Some(tx) => drop(tx.send(Ok(line))),
                    None if listening.is_some() => before.push(line),
                    None => log.lock().unwrap().push(line),
                }
            }
            if let Some(tx) = listening {
                drop(tx.send(Err(before.join("\n"))));
            }
        });
        let heard = tokio::time::timeout(Duration::from_secs(10), heard).await;
        if let Ok(Ok(Ok(line))) = heard {
            let store = line
                .split_once("(store: ")
                .and_then(|(_, rest)| rest.strip_suffix(')'))
                .unwrap_or_else(|| panic!("no store in {line:?}"))
                .to_owned();
            return Self {
                child,
                addr: listened_on(&line),
                store,
                stderr: after,
            };
        }
        let _ = child.kill();
        let status = child.wait().expect("reap calls-api");
        match heard {
            Ok(Ok(Err(before))) => {
                panic!("calls-api exited with {status} before it listened:\n{before}")
            }
            Ok(_) => panic!("calls-api's standard error could not be read"),
            Err(_) => panic!("calls-api did not listen within 10 s"),
        }
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

    /// Sends `call` (one whose carrier takes 3 s), goes away a second into it (its key
    /// claimed long before), and stops the process with SIGTERM: asserts that it exits
    /// cleanly, once the call in progress has had its time.
    #[allow(dead_code)]
    pub async fn terminate_during(&mut self, call: RawRequest) {
        let sent = std::time::Instant::now();
        call.send_and_reset(self.addr, || sent.elapsed() >= Duration::from_secs(1))
            .await;
        let started_stop = std::time::Instant::now();
        assert!(self.terminate().await, "calls-api exits cleanly");
        assert!(
            started_stop.elapsed() >= Duration::from_millis(1500),
            "it waited for the call in progress"
        );
    }

    /// Sends SIGTERM, as a process manager stopping it does, and waits up to 30 s for the
    /// process to exit: whether it exited cleanly.
    #[allow(dead_code)]
    pub async fn terminate(&mut self) -> bool {
        sigterm(&self.child);
        for _ in 0..600 {
            if let Some(status) = self.child.try_wait().expect("poll calls-api") {
                return status.success();
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("calls-api did not exit within 30 s of SIGTERM");
    }
}

/// Sends `child` SIGTERM, as a process manager stopping it does.
pub fn sigterm(child: &Child) {
    let sent = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("run kill");
    assert!(sent.success(), "SIGTERM delivered");
}

/// What a process printed, line by line, shared with the thread that reads it.
#[allow(dead_code)]
pub type Log = Arc<Mutex<Vec<String>>>;

/// Loopback, on a port the system picks when the process binds it.
const ANY_PORT: &str = "127.0.0.1:0";

/// A free address on loopback, for a process that is told it before it starts.
#[allow(dead_code)]
pub fn free_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap()
}

/// The address in the line `calls-api` prints once it listens
/// (`calls-api listening on http://ADDR[, http://ADDR...] (store: ...)`): the first it names.
#[allow(dead_code)]
pub fn listened_on(line: &str) -> SocketAddr {
    line.split_once("listening on http://")
        .and_then(|(_, rest)| rest.split([',', ' ']).next())
        .and_then(|addr| addr.trim().parse().ok())
        .unwrap_or_else(|| panic!("no address in {line:?}"))
}

/// Starts `command` and reads the first line it prints to standard error (where it listens,
/// or why it cannot): the running process, and the line.
#[allow(dead_code)]
pub fn first_line(mut command: Command) -> (Child, String) {
    let mut child = command
        .stderr(Stdio::piped())
        .spawn()
        .expect("start calls-api");
    let mut line = String::new();
    let read =
        BufReader::new(child.stderr.take().expect("piped standard error")).read_line(&mut line);
    if let Err(e) = read {
        let _ = child.kill();
        let _ = child.wait();
        panic!("calls-api's standard error: {e}");
    }
    (child, line)
}

/// The `calls-api` binary, with none of its settings from this environment.
pub fn command() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_calls-api"));
    for name in [
        "IDEM_ADDR",
        "IDEM_WORKERS",
        "IDEM_REDIS_URL",
        "IDEM_REDIS_CLUSTER",
        "IDEM_REPLAY_CACHE_BYTES",
        "IDEM_DATABASE_URL",
        "IDEM_CORS_ORIGINS",
        "IDEM_LOG",
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

/// Runs `command`, which must refuse to start: its exit code and what it printed to standard
/// error. One that starts serving instead fails the test within a minute, where waiting for it
/// to exit would hang the test run.
#[allow(dead_code)]
pub fn refused(mut command: Command) -> (Option<i32>, String) {
    let mut child = command
        .stderr(Stdio::piped())
        .spawn()
        .expect("start calls-api");
    let mut stderr = child.stderr.take().expect("piped standard error");
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = std::io::Read::read_to_string(&mut stderr, &mut text);
        text
    });
    for _ in 0..1200 {
        if let Some(status) = child.try_wait().expect("poll calls-api") {
            return (status.code(), reader.join().expect("stderr reader"));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    let stderr = reader.join().expect("stderr reader");
    panic!("calls-api was to refuse to start, and ran for a minute:\n{stderr}");
}
