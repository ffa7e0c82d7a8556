//! The `calls-api` binary as users run it: flags, and several processes sharing a Redis.

mod common;

use std::process::Command;

use common::CallsApi;
use idem_tests::{assert_error, RawRequest, TestRedis};

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
async fn the_environment_configures_what_the_flags_do() {
    let Some(redis) = TestRedis::start() else {
        return;
    };
    let by_flags = CallsApi::start_with(Some(redis.url()), false).await;
    let by_env = CallsApi::start_with(Some(redis.url()), true).await;
    let first = by_flags.create("env-1").await;
    assert_eq!(first.status, 201);
    let retry = by_env.create("env-1").await;
    assert!(
        retry.replayed(),
        "IDEM_REDIS_URL points the second process at the same Redis"
    );
    assert_eq!(retry.body, first.body);
}

#[tokio::test]
async fn a_store_given_by_flag_wins_over_another_store_in_the_environment() {
    // Neither store is there: a Redis store connects on first use, so the process starts and
    // a keyed request answers 503, where the store in the environment would have been used
    // (a Postgres that refuses fails the start-up) or the start-up refused as "both".
    let nowhere = format!("redis://{}", common::free_addr());
    for (var, value, flag) in [
        (
            "IDEM_DATABASE_URL",
            "postgres://nobody@127.0.0.1:1/none",
            "--redis-url",
        ),
        ("IDEM_REDIS_URL", "redis://127.0.0.1:1", "--redis-cluster"),
        ("IDEM_REDIS_CLUSTER", "redis://127.0.0.1:1", "--redis-url"),
    ] {
        let api = CallsApi::start_env_args(&[(var, value)], &[flag, &nowhere]).await;
        let named = match flag {
            "--redis-url" => format!("redis at {nowhere}"),
            _ => format!("redis cluster at {nowhere}"),
        };
        assert!(
            api.store.starts_with(&named),
            "{var} with {flag}: {}",
            api.store
        );
        let res = RawRequest::get("/healthz").send(api.addr).await;
        assert_eq!(res.status, 200, "{var} with {flag}");
        let keyed = api.create("flag-store-1").await;
        assert_error(&keyed, 503, "idempotency_store_unavailable");
    }
}

/// The start-up line names the store, never its credentials: a Redis URL's user name and
/// password stay out of the log, for one server and for each node of a cluster.
#[tokio::test]
async fn the_store_s_password_stays_out_of_the_log() {
    let at = common::free_addr();
    for flag in ["--redis-url", "--redis-cluster"] {
        let url = format!("redis://operator:S3cr3tPw@{at}/0");
        let api = CallsApi::start_args(&[flag, &url]).await;
        assert!(
            !api.store.contains("S3cr3tPw") && !api.store.contains("operator"),
            "{flag}: {}",
            api.store
        );
        assert!(api.store.contains(&at.to_string()), "{flag}: {}", api.store);
    }
}

#[tokio::test]
async fn a_process_replays_what_it_cached_without_redis_unless_the_cache_is_off() {
    // A Redis of our own even when IDEM_TEST_REDIS_URL names one: this test stops it.
    let Some(mut redis) = TestRedis::start_owned() else {
        return;
    };
    let cached = CallsApi::start(Some(redis.url())).await;
    let uncached =
        CallsApi::start_args(&["--redis-url", redis.url(), "--replay-cache-bytes", "0"]).await;
    let first = cached.create("cached-1").await;
    assert_eq!(first.status, 201);
    assert!(uncached.create("cached-1").await.replayed());

    redis.stop();
    let replay = cached.create("cached-1").await;
    assert!(
        replay.replayed(),
        "a replay needs no Redis: {}",
        replay.status
    );
    assert_eq!(replay.body, first.body);
    assert_eq!(uncached.create("cached-1").await.status, 503);
    assert_eq!(
        cached.create("cached-2").await.status,
        503,
        "a new key still needs Redis"
    );
}

/// An empty `IDEM_WORKERS` or `IDEM_ADDR` (a compose file passing `${IDEM_WORKERS}` through
/// unset) counts as unset, as every other variable does: the defaults apply, where the process
/// refused to start, blaming a `--workers` flag nobody gave, or tried to listen on "".
#[test]
fn empty_variables_count_as_unset() {
    // The first line calls-api prints: where it listens, or why it cannot.
    let first_line = |args: &[&str]| {
        let mut command = common::command();
        command
            .env("IDEM_WORKERS", "")
            .env("IDEM_ADDR", "")
            .args(args);
        let (mut child, line) = common::first_line(command);
        let _ = child.kill();
        let _ = child.wait();
        line
    };
    // The default address, 127.0.0.1:8080: served, or named as taken.
    let default = first_line(&[]);
    assert!(
        default.contains("listening on http://127.0.0.1:8080 ")
            || default.contains("cannot listen on 127.0.0.1:8080:"),
        "{default}"
    );
    let given = first_line(&["--addr", "127.0.0.1:0"]);
    assert!(given.contains("listening on http://127.0.0.1:"), "{given}");
}

#[test]
fn the_replay_cache_size_is_a_whole_number_of_bytes() {
    let mut command = common::command();
    command.args(["--replay-cache-bytes", "16MiB"]);
    let (code, stderr) = common::refused(command);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("--replay-cache-bytes takes a whole number of bytes"),
        "{stderr}"
    );
}

/// A bad value from the environment is refused naming the variable it came from, where the
/// message named a flag that nobody gave.
#[test]
fn a_bad_variable_is_refused_naming_the_variable() {
    for (name, value, says) in [
        ("IDEM_WORKERS", "abc", "takes a whole number from 1 to 512"),
        (
            "IDEM_REPLAY_CACHE_BYTES",
            "16MiB",
            "takes a whole number of bytes",
        ),
        (
            "IDEM_REDIS_CLUSTER",
            "redis://127.0.0.1:1,,",
            "takes node URLs",
        ),
        ("IDEM_ADDR", "nowhere", "takes HOST:PORT"),
        (
            "IDEM_LOG",
            "loud",
            "takes off, error, warn, info, debug or trace",
        ),
    ] {
        let mut command = common::command();
        command.env(name, value);
        let (code, stderr) = common::refused(command);
        assert_eq!(code, Some(2), "{name}: {stderr}");
        assert!(
            stderr.contains(&format!("{name} {says}")) && !stderr.contains("calls-api: --"),
            "{name}: {stderr}"
        );
    }
}

/// An address that is not HOST:PORT is a usage error (exit 2, with the usage), as every other
/// bad flag is, where it was found only by binding and exited 1 without the usage.
#[test]
fn an_address_that_is_not_host_and_port_is_a_usage_error() {
    for addr in ["nope", "127.0.0.1:99999", "127.0.0.1:"] {
        let mut command = common::command();
        command.args(["--addr", addr]);
        let (code, stderr) = common::refused(command);
        assert_eq!(code, Some(2), "{addr}: {stderr}");
        assert!(
            stderr.contains("--addr takes HOST:PORT") && stderr.contains("usage:"),
            "{addr}: {stderr}"
        );
    }
}

/// An argument or a variable that is not UTF-8 is refused, naming it, where an argument made
/// the process panic and a variable was taken as unset (a store in `IDEM_DATABASE_URL` left
/// the process on the embedded store).
#[cfg(unix)]
#[test]
fn settings_that_are_not_utf8_are_refused() {
    use std::ffi::OsStr;
    use std::os::unix::ffi::OsStrExt;
    let bad = OsStr::from_bytes(b"postgres://idem@127.0.0.1:1/calls\xff");

    let mut command = common::command();
    command.arg("--database-url").arg(bad);
    let (code, stderr) = common::refused(command);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("is not valid UTF-8") && !stderr.contains("panicked"),
        "{stderr}"
    );

    let mut command = common::command();
    command
        .args(["--addr", "127.0.0.1:0"])
        .env("IDEM_DATABASE_URL", bad);
    let (code, stderr) = common::refused(command);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("IDEM_DATABASE_URL is not valid UTF-8"),
        "{stderr}"
    );
}

#[tokio::test]
async fn the_library_s_warnings_reach_the_log() {
    // A Redis nobody listens on: calls-api starts (a store connects when first used), and
    // every keyed request is refused; the log must say why, as the library warns it.
    let api = CallsApi::start(Some("redis://127.0.0.1:1")).await;
    let refused = api.create("unheard-1").await;
    assert_error(&refused, 503, "idempotency_store_unavailable");
    let warned = || {
        let log = api.stderr.lock().unwrap();
        log.iter()
            .any(|line| line.contains("WARN") && line.contains("the idempotency store failed"))
    };
    for _ in 0..100 {
        if warned() {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!(
        "no warning of the store's failure in the log: {:?}",
        api.stderr.lock().unwrap()
    );
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

/// `calls-api --help | head -1` must not panic when `head` has gone before the usage is out.
#[test]
fn help_into_a_closed_pipe_exits_quietly() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_calls-api"))
        .arg("--help")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(out.status.code(), Some(0), "{stderr}");
}

#[test]
fn bad_flags_are_refused_with_usage() {
    let mut command = common::command();
    command.arg("--wrokers");
    let (code, stderr) = common::refused(command);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("unknown argument `--wrokers`") && stderr.contains("usage:"));

    let mut command = common::command();
    command.args(["--workers", "0"]);
    let (code, stderr) = common::refused(command);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("--workers takes a whole number from 1 to 512"));

    // actix-web refuses more than 512 workers with a panic; calls-api says so before.
    let mut command = common::command();
    command.args(["--workers", "513"]);
    let (code, stderr) = common::refused(command);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("--workers takes a whole number from 1 to 512"),
        "{stderr}"
    );
}

#[tokio::test]
async fn metrics_are_exposed_in_prometheus_text() {
    let api = CallsApi::start(None).await;
    api.create("m-1").await;
    api.create("m-1").await;
    let res = RawRequest::get("/metrics").send(api.addr).await;
    assert_eq!(res.status, 200, "no token needed");
    let head = RawRequest::new("HEAD", "/metrics").send(api.addr).await;
    assert_eq!(head.status, 200, "HEAD as GET, no token needed: {head:?}");
    let text = String::from_utf8_lossy(&res.body);
    assert!(
        text.contains(r#"idem_requests_total{outcome="executed"} 1"#),
        "{text}"
    );
    assert!(
        text.contains(r#"idem_requests_total{outcome="replayed"} 1"#),
        "{text}"
    );
    // Each described, so that Prometheus and its users see what it counts.
    for name in ["idem_requests_total", "idem_store_duration_seconds"] {
        assert!(text.contains(&format!("# HELP {name} ")), "{name}: {text}");
    }
    // And its series there before their first count.
    for series in [
        r#"idem_store_errors_total{op="claim"} 0"#,
        r#"idem_conflicts_total{kind="mismatch"} 0"#,
        "idem_store_evictions_total 0",
    ] {
        assert!(text.contains(series), "{series}: {text}");
    }
    // A histogram, as the docs say, which Prometheus can sum over instances; not a summary.
    assert!(
        text.contains("# TYPE idem_store_duration_seconds histogram")
            && text.contains(r#"idem_store_duration_seconds_bucket{op="claim",le="0.001"}"#),
        "{text}"
    );
}

/// `--workers` and `IDEM_WORKERS` set how many workers serve: actix runs each on a thread of
/// its own, named `actix-rt|system:0|arbiter:N`, counted here in `/proc`. Two counts, so
/// that neither can be met by the default (one worker per core) alone.
#[cfg(target_os = "linux")]
#[tokio::test]
async fn workers_sets_how_many_worker_threads_serve() {
    for (by_env, workers) in [(false, 3), (true, 1)] {
        let mut command = common::command();
        command.args(["--addr", "127.0.0.1:0"]);
        if by_env {
            command.env("IDEM_WORKERS", workers.to_string());
        } else {
            command.args(["--workers", &workers.to_string()]);
        }
        let api = CallsApi::start_command(command).await;
        let health = RawRequest::get("/healthz").send(api.addr).await;
        assert_eq!(health.status, 200);
        // The workers start as the server binds; they may still be coming up.
        let mut counted = 0;
        for _ in 0..100 {
            counted = worker_threads(api.pid());
            if counted == workers {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        assert_eq!(counted, workers, "worker threads (by_env: {by_env})");
    }
}

/// How many of process `pid`'s threads are actix workers (a thread's name is cut to 15 bytes
/// in `comm`: `actix-rt|system`; the accept loop's is `actix-server ac`).
#[cfg(target_os = "linux")]
fn worker_threads(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .expect("the process's threads")
        .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("comm")).ok())
        .filter(|name| name.starts_with("actix-rt|system"))
        .count()
}

/// `--addr 127.0.0.1:0` lets the system pick a free port, and the line calls-api prints once
/// it listens names that port, where it named port 0 and left nobody able to reach it.
#[tokio::test]
async fn a_port_of_zero_is_reported_as_the_port_it_listens_on() {
    let mut command = common::command();
    command.args(["--addr", "127.0.0.1:0", "--workers", "1"]);
    let (mut child, line) = common::first_line(command);
    let addr = common::listened_on(&line);
    let health = RawRequest::get("/healthz").try_send(addr).await;
    let _ = child.kill();
    let _ = child.wait();
    assert_ne!(addr.port(), 0, "{line}");
    assert_eq!(health.expect("served where it said").status, 200, "{line}");
}

/// A store URL that is not one (a Redis URL, a cluster's node, a Postgres URL) is a usage
/// error, exit 2 with the usage and the flag or variable that gave it, as every other bad
/// setting is, where it exited 1 without the usage and named the flag for a variable.
#[test]
fn a_store_url_that_is_not_one_is_a_usage_error() {
    for (args, env, names) in [
        (&["--redis-url", "not-a-url"][..], None, "--redis-url"),
        (
            &["--redis-cluster", "http://127.0.0.1:1"][..],
            None,
            "--redis-cluster",
        ),
        (
            &["--database-url", "mysql://127.0.0.1:1/calls"][..],
            None,
            "--database-url",
        ),
        (
            &[][..],
            Some(("IDEM_REDIS_URL", "not-a-url")),
            "IDEM_REDIS_URL",
        ),
        (
            &[][..],
            Some(("IDEM_DATABASE_URL", "postgres://[::1/calls")),
            "IDEM_DATABASE_URL",
        ),
    ] {
        let mut command = common::command();
        command.args(["--addr", "127.0.0.1:0"]).args(args);
        if let Some((name, value)) = env {
            command.env(name, value);
        }
        let (code, stderr) = common::refused(command);
        assert_eq!(code, Some(2), "{args:?} {env:?}: {stderr}");
        assert!(
            stderr.contains(&format!("calls-api: {names}: ")) && stderr.contains("usage:"),
            "{args:?} {env:?}: {stderr}"
        );
    }
}

/// The line printed for each call placed, which operators count, shows the client's agent id
/// escaped: one holding a line break cannot print a second line that reads as another call
/// placed, for another agent.
#[tokio::test]
async fn an_agent_id_cannot_print_a_line_of_a_call_placed() {
    let log = common::Log::default();
    let mut api = CallsApi::start_logged(None, &[], &log).await;
    let agent = "agent_1\nplaced call_forged for agent victim\r";
    let placed = RawRequest::post("/v1/calls")
        .header("Authorization", "Bearer tenant-1")
        .header("Idempotency-Key", "forging-1")
        .json(&serde_json::json!({ "agent_id": agent, "phone_number": "+15555550123" }))
        .send(api.addr)
        .await;
    assert_eq!(placed.status, 201, "{placed:?}");
    assert!(api.terminate().await, "calls-api exits cleanly");
    // Its standard output is read to its end by a thread of the test.
    idem_tests::eventually(|| !log.lock().unwrap().is_empty()).await;
    std::thread::sleep(std::time::Duration::from_millis(200));
    let lines = log.lock().unwrap().clone();
    assert_eq!(lines.len(), 1, "{lines:?}");
    let escaped = r"for agent agent_1\nplaced call_forged for agent victim\r";
    assert!(
        lines[0].starts_with("placed call_") && lines[0].ends_with(escaped),
        "{lines:?}"
    );
}
