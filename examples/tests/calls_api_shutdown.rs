//! `calls-api` stopped by SIGTERM: calls in progress finish and are recorded first, even when
//! their clients went away, so that a retry to another process gets the replay.

mod common;

use std::time::{Duration, Instant};

use common::CallsApi;
use idem_tests::{RawRequest, TestRedis};
use serde_json::json;

fn slow_call(key: &str) -> RawRequest {
    call_taking(key, "1500")
}

/// A call whose carrier takes `ms` milliseconds.
fn call_taking(key: &str, ms: &str) -> RawRequest {
    RawRequest::post("/v1/calls")
        .header("Authorization", "Bearer tenant-1")
        .header("Idempotency-Key", key)
        .header("X-Simulate-Delay-Ms", ms)
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

/// Asserts that the process whose standard output is `log` placed one call (printed its one
/// line).
async fn assert_one_call_placed(log: &common::Log) {
    // Its standard output is read to its end by a thread of the test.
    idem_tests::eventually(|| !log.lock().unwrap().is_empty()).await;
    let placed = log.lock().unwrap().clone();
    assert_eq!(placed.len(), 1, "{placed:?}");
    assert!(placed[0].starts_with("placed call_"), "{placed:?}");
}

/// The same on the embedded store, the default: the call whose client went away is placed
/// (its one line printed) before the process exits, not dropped with the worker.
#[tokio::test]
async fn sigterm_on_the_embedded_store_lets_a_call_whose_client_went_away_finish_before_exit() {
    let log = common::Log::default();
    let mut api = CallsApi::start_logged(None, &[], &log).await;
    api.terminate_during(call_taking("sigterm-embedded-1", "3000"))
        .await;
    assert_one_call_placed(&log).await;
}

/// A call may take as long as its carrier is told to (`X-Simulate-Delay-Ms`, up to 30 s), and
/// a stop lets it finish: one of 17 s, past the drain's old 15 s, was cancelled and its key
/// released, so that the retry of a call that had dialled ran again.
#[tokio::test]
async fn sigterm_lets_a_call_as_long_as_its_carrier_may_take_finish_before_exit() {
    let log = common::Log::default();
    let mut api = CallsApi::start_logged(None, &[], &log).await;
    let sent = Instant::now();
    call_taking("sigterm-long-1", "17000")
        .send_and_reset(api.addr, || sent.elapsed() >= Duration::from_millis(500))
        .await;
    assert!(api.terminate().await, "calls-api exits cleanly");
    assert!(
        sent.elapsed() >= Duration::from_secs(17),
        "it waited for the call"
    );
    assert_one_call_placed(&log).await;
}

/// A SIGTERM sent as soon as calls-api says it listens stops it as any other does, cleanly,
/// saying so: the handler was installed only once the server ran, after that line, so a
/// process manager that stopped it at once killed it with no drain.
#[test]
fn sigterm_right_after_the_listening_line_stops_calls_api_cleanly() {
    use std::io::{BufRead as _, BufReader, Read as _};
    use std::process::Stdio;

    for attempt in 0..5 {
        let mut child = common::command()
            .args(["--addr", "127.0.0.1:0"])
            .stderr(Stdio::piped())
            .spawn()
            .expect("start calls-api");
        let mut stderr = BufReader::new(child.stderr.take().expect("piped standard error"));
        let mut line = String::new();
        stderr.read_line(&mut line).expect("read standard error");
        assert!(line.contains("listening on http://"), "{line}");
        common::sigterm(&child);
        // Read to its end, so that calls-api can write what it says as it stops.
        let mut rest = String::new();
        let _ = stderr.read_to_string(&mut rest);
        let status = child.wait().expect("reap calls-api");
        assert!(status.success(), "attempt {attempt}: {status}: {rest}");
        assert!(
            rest.contains("SIGTERM; finishing calls in progress"),
            "{rest}"
        );
    }
}

/// Standard output closed (a log pipe whose reader died): the line a placed call prints
/// cannot be written, and that is no failure of the call. Printed with `println!`, it panicked
/// after the call was placed; the layer answered the panic with 500 and released the key, so
/// every retry placed the call again.
#[tokio::test]
async fn a_closed_standard_output_fails_no_call_and_places_none_twice() {
    let (reader, writer) = std::io::pipe().expect("a pipe");
    drop(reader);
    let mut command = common::command();
    command
        .args(["--addr", "127.0.0.1:0", "--workers", "1"])
        .stdout(writer);
    let api = CallsApi::start_command(command).await;
    let first = api.create("closed-stdout").await;
    let retry = api.create("closed-stdout").await;
    assert_eq!(first.status, 201, "{first:?}");
    assert!(retry.replayed(), "{retry:?}");
    let calls = RawRequest::get("/v1/calls")
        .header("Authorization", "Bearer tenant-1")
        .send(api.addr)
        .await;
    assert_eq!(calls.json()["data"].as_array().map(Vec::len), Some(1));
}

/// Standard error closed once calls-api listens: what it says as it stops cannot be written,
/// and it stops all the same. Said with `eprintln!`, the panic ended the task that waits for
/// signals, and SIGTERM (whose handler was installed) then did nothing at all.
#[test]
fn a_closed_standard_error_does_not_keep_calls_api_from_stopping() {
    let (mut child, line) = common::first_line({
        let mut command = common::command();
        command.args(["--addr", "127.0.0.1:0"]);
        command
    });
    // `first_line` read the line and closed its end of the pipe.
    assert!(line.contains("listening on http://"), "{line}");
    common::sigterm(&child);
    for _ in 0..200 {
        if let Some(status) = child.try_wait().expect("poll calls-api") {
            assert!(status.success(), "{status}");
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("calls-api did not stop within 10 s of SIGTERM");
}

/// A refused flag exits 2, saying why, whether or not anyone reads standard error: with it
/// closed, printing the usage panicked, and the exit code was 101.
#[test]
fn a_refused_flag_exits_2_with_standard_error_closed() {
    let (reader, writer) = std::io::pipe().expect("a pipe");
    drop(reader);
    let status = common::command()
        .arg("--no-such-flag")
        .stderr(writer)
        .status()
        .expect("run calls-api");
    assert_eq!(status.code(), Some(2), "{status}");
}
