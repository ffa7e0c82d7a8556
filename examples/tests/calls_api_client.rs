//! `idem-client` against the real `calls-api`, with faults injected between them: answers lost
//! to a reset after the server ran the call, connections reset before the request arrived,
//! 503s, a gateway's 504 while the call runs on, and calls slower than the client's timeout.
//! Every logical operation creates exactly one call (counted with `GET /v1/calls`), and what
//! must not be retried is sent once.

mod common;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::CallsApi;
use idem_client::{Client, ClientBuilder, Error, Failure, Response, StatusCode};
use idem_tests::RawRequest;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;

/// What the proxy does to one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Fault {
    /// Forwards it and relays the answer.
    Pass,
    /// Resets the client's connection before forwarding: the server never sees it.
    ResetBefore,
    /// Forwards it, waits for the server's whole answer, then resets the client's connection
    /// instead of relaying it: the call ran, and the client cannot know.
    ResetAfterAnswer,
    /// Forwards it with `X-Simulate-Status: 503`, so the carrier fails and nothing is
    /// created, and relays the 503.
    Unavailable,
    /// Forwards it and answers the client 504 at once, as a gateway whose read timeout is
    /// shorter than the call: the call runs on, and the client cannot know.
    GatewayTimeout,
    /// Answers 429 with `Retry-After: 1` without forwarding it, as a rate limiter in front
    /// of the server: nothing ran.
    RateLimited,
}

/// One request the proxy saw.
#[derive(Clone, Debug)]
struct Seen {
    fault: Fault,
    /// As in [`Attempt::operation`].
    operation: usize,
    arrived: Instant,
    /// The server's answer (status and `Retry-After`), once it came.
    answer: Option<(u16, Option<String>)>,
    answered: Option<Instant>,
}

/// Which request of which operation the proxy is deciding for.
#[derive(Clone, Copy, Debug)]
struct Attempt {
    /// The operation, numbered from 0 in the order the proxy first saw its `Idempotency-Key`.
    operation: usize,
    /// How many of the operation's requests came before this one.
    nth: usize,
}

impl Attempt {
    /// `fault` for each operation's first request, the rest passed.
    fn first(self, fault: Fault) -> Fault {
        if self.nth == 0 {
            fault
        } else {
            Fault::Pass
        }
    }
}

/// A loopback HTTP/1.1 proxy in front of `calls-api` that applies `schedule` to each request,
/// by its operation and attempt, and notes every request it saw.
///
/// The schedule follows each operation's own attempts, not the order of requests over all
/// connections: concurrent operations interleave differently from run to run, and a fault
/// picked by global order can fall on the same operation's every run.
struct Proxy {
    addr: SocketAddr,
    log: Arc<Mutex<Log>>,
    task: tokio::task::JoinHandle<()>,
}

/// What the proxy has seen: each request, and the keys of the operations in order.
#[derive(Default)]
struct Log {
    seen: Vec<Seen>,
    keys: Vec<String>,
}

impl Log {
    /// Notes `request` and decides its fault.
    fn admit(&mut self, request: &[u8], schedule: fn(Attempt) -> Fault) -> (usize, Fault) {
        let head_end = find(request, b"\r\n\r\n").expect("a whole head");
        let head = std::str::from_utf8(&request[..head_end]).expect("an ASCII head");
        let key = header(head, "idempotency-key").unwrap_or_default();
        let operation = match self.keys.iter().position(|k| k == key) {
            Some(operation) => operation,
            None => {
                self.keys.push(key.to_owned());
                self.keys.len() - 1
            }
        };
        let nth = self
            .seen
            .iter()
            .filter(|s| s.operation == operation)
            .count();
        let fault = schedule(Attempt { operation, nth });
        self.seen.push(Seen {
            fault,
            operation,
            arrived: Instant::now(),
            answer: None,
            answered: None,
        });
        (self.seen.len() - 1, fault)
    }
}

impl Proxy {
    async fn start(upstream: SocketAddr, schedule: fn(Attempt) -> Fault) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let log = Arc::new(Mutex::new(Log::default()));
        let shared = Arc::clone(&log);
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                tokio::spawn(relay(client, upstream, schedule, Arc::clone(&shared)));
            }
        });
        Self { addr, log, task }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn seen(&self) -> Vec<Seen> {
        self.log.lock().unwrap().seen.clone()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Serves one client connection, request by request.
async fn relay(
    mut client: TcpStream,
    upstream_addr: SocketAddr,
    schedule: fn(Attempt) -> Fault,
    log: Arc<Mutex<Log>>,
) {
    let mut from_client = Vec::new();
    let mut from_upstream = Vec::new();
    let mut upstream: Option<TcpStream> = None;
    while let Some(mut request) = read_message(&mut client, &mut from_client).await {
        let (index, fault) = log.lock().unwrap().admit(&request, schedule);
        if fault == Fault::ResetBefore {
            return reset(client);
        }
        if fault == Fault::RateLimited {
            let limited =
                b"HTTP/1.1 429 Too Many Requests\r\nretry-after: 1\r\ncontent-length: 0\r\n\r\n";
            log.lock().unwrap().seen[index].answer = Some(status_and_retry_after(limited));
            if client.write_all(limited).await.is_err() {
                return;
            }
            continue;
        }
        if fault == Fault::Unavailable {
            let line_end = find(&request, b"\r\n").expect("a request line") + 2;
            request.splice(line_end..line_end, *b"X-Simulate-Status: 503\r\n");
        }
        if upstream.is_none() {
            upstream = Some(TcpStream::connect(upstream_addr).await.unwrap());
        }
        let server = upstream.as_mut().unwrap();
        server.write_all(&request).await.unwrap();
        if fault == Fault::GatewayTimeout {
            let timeout = b"HTTP/1.1 504 Gateway Timeout\r\ncontent-length: 0\r\n\r\n";
            if client.write_all(timeout).await.is_err() {
                return;
            }
        }
        let Some(answer) = read_message(server, &mut from_upstream).await else {
            return reset(client);
        };
        {
            let seen = &mut log.lock().unwrap().seen[index];
            seen.answer = Some(status_and_retry_after(&answer));
            seen.answered = Some(Instant::now());
        }
        if fault == Fault::ResetAfterAnswer {
            return reset(client);
        }
        if fault == Fault::GatewayTimeout {
            // Answered already.
            continue;
        }
        if client.write_all(&answer).await.is_err() {
            // The client gave up waiting (its timeout): nothing left to relay to.
            return;
        }
    }
}

/// Ends the connection with RST, as a crashed peer or a middlebox does.
fn reset(stream: TcpStream) {
    stream.set_zero_linger().unwrap();
    drop(stream);
}

/// Reads one whole HTTP/1.1 message (head, and a body of `Content-Length` bytes) into a
/// buffer of its own, keeping what follows in `buf`; `None` when the peer closed first.
async fn read_message(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Option<Vec<u8>> {
    loop {
        if let Some(head_end) = find(buf, b"\r\n\r\n").map(|at| at + 4) {
            let head = std::str::from_utf8(&buf[..head_end]).expect("an ASCII head");
            assert!(
                header(head, "transfer-encoding").is_none(),
                "the test proxy handles Content-Length bodies only: {head}"
            );
            let length = header(head, "content-length").map_or(0, |v| v.parse().unwrap());
            if buf.len() >= head_end + length {
                return Some(buf.drain(..head_end + length).collect());
            }
        }
        match stream.read_buf(buf).await {
            Ok(0) | Err(_) => return None,
            Ok(_) => {}
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.split("\r\n").skip(1).find_map(|line| {
        let (n, v) = line.split_once(':')?;
        n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

fn status_and_retry_after(answer: &[u8]) -> (u16, Option<String>) {
    let head_end = find(answer, b"\r\n\r\n").unwrap();
    let head = std::str::from_utf8(&answer[..head_end]).unwrap();
    let status = head[9..12].parse().unwrap();
    (status, header(head, "retry-after").map(str::to_owned))
}

/// Quick retries, so that the tests spend their time where the server makes them wait.
fn quick() -> ClientBuilder {
    Client::builder()
        .timeout(Duration::from_secs(5))
        .initial_backoff(Duration::from_millis(20))
        .max_backoff(Duration::from_millis(200))
}

fn new_call() -> Value {
    json!({ "agent_id": "agent_1", "phone_number": "+15555550123" })
}

async fn create(client: &Client, url: &str, tenant: &str) -> Result<Response, Error> {
    client
        .post(url)
        .bearer_auth(tenant)
        .json(&new_call())
        .send()
        .await
}

/// [`create`], with the carrier taking `delay_ms` to place the call.
async fn create_slowly(
    client: &Client,
    url: &str,
    tenant: &str,
    delay_ms: &str,
) -> Result<Response, Error> {
    client
        .post(url)
        .bearer_auth(tenant)
        .header("X-Simulate-Delay-Ms", delay_ms)
        .json(&new_call())
        .send()
        .await
}

/// Asserts that `call` is the replay of the one call `tenant` created.
async fn assert_the_one_call_replayed(api: &CallsApi, tenant: &str, call: &Response) {
    assert_eq!(call.status(), StatusCode::CREATED);
    assert!(call.replayed(), "the first run's answer, not a second run");
    assert_eq!(calls_of(api, tenant).await, vec![call_id(call)]);
}

/// The ids of the calls `tenant` created, asked of the server directly.
async fn calls_of(api: &CallsApi, tenant: &str) -> Vec<String> {
    let listed = RawRequest::get("/v1/calls")
        .header("Authorization", &format!("Bearer {tenant}"))
        .send(api.addr)
        .await;
    assert_eq!(listed.status, 200);
    listed.json()["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|call| call["id"].as_str().unwrap().to_owned())
        .collect()
}

fn call_id(response: &Response) -> String {
    let body: Value = response.json().unwrap();
    body["data"]["id"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn an_answer_lost_to_a_reset_after_the_call_ran_is_replayed_to_the_retry() {
    let api = CallsApi::start(None).await;
    // The first attempt of each operation is lost after the server ran it.
    let proxy = Proxy::start(api.addr, |attempt| attempt.first(Fault::ResetAfterAnswer)).await;
    let client = quick().build().unwrap();
    let mut ids = BTreeSet::new();
    for _ in 0..5 {
        let call = create(&client, &proxy.url("/v1/calls"), "lost-answers")
            .await
            .unwrap();
        assert_eq!(call.status(), StatusCode::CREATED);
        assert!(call.replayed(), "the retry gets the first run's answer");
        assert_eq!(call.attempts(), 2);
        ids.insert(call_id(&call));
    }
    let listed = calls_of(&api, "lost-answers").await;
    assert_eq!(listed.len(), 5, "one call per operation: {listed:?}");
    assert_eq!(listed.into_iter().collect::<BTreeSet<_>>(), ids);
    assert_eq!(proxy.seen().len(), 10);
}

#[tokio::test]
async fn a_connection_reset_before_the_request_arrived_is_retried_into_one_run() {
    let api = CallsApi::start(None).await;
    let proxy = Proxy::start(api.addr, |attempt| attempt.first(Fault::ResetBefore)).await;
    let client = quick().build().unwrap();
    for _ in 0..3 {
        let call = create(&client, &proxy.url("/v1/calls"), "resets")
            .await
            .unwrap();
        assert_eq!(call.status(), StatusCode::CREATED);
        assert!(!call.replayed(), "the server ran the call on the retry");
        assert_eq!(call.attempts(), 2);
    }
    assert_eq!(calls_of(&api, "resets").await.len(), 3);
}

#[tokio::test]
async fn a_call_slower_than_the_timeout_runs_once_and_the_retry_waits_out_its_retry_after() {
    let api = CallsApi::start(None).await;
    let proxy = Proxy::start(api.addr, |_| Fault::Pass).await;
    let client = quick().timeout(Duration::from_millis(300)).build().unwrap();
    let call = create_slowly(&client, &proxy.url("/v1/calls"), "slow", "1200")
        .await
        .unwrap();
    assert_the_one_call_replayed(&api, "slow", &call).await;

    let seen = proxy.seen();
    assert_eq!(seen.len(), call.attempts() as usize);
    // The first attempt timed out while the call ran; a retry came while it still ran and
    // was told to come back later; the next came no sooner than that.
    let in_flight = seen
        .iter()
        .position(|s| matches!(&s.answer, Some((409, Some(_)))))
        .expect("a 409 while the first attempt ran");
    let Some((_, Some(after))) = &seen[in_flight].answer else {
        unreachable!("found above")
    };
    let after = Duration::from_secs(after.parse().unwrap());
    let next = &seen[in_flight + 1];
    assert!(
        next.arrived >= seen[in_flight].answered.unwrap() + after,
        "the retry after the 409 waited its Retry-After ({after:?})"
    );
    assert_eq!(next.answer.as_ref().unwrap().0, 201);
}

#[tokio::test]
async fn a_gateway_timeout_while_the_call_runs_on_is_retried_into_its_replay() {
    let api = CallsApi::start(None).await;
    let proxy = Proxy::start(api.addr, |attempt| attempt.first(Fault::GatewayTimeout)).await;
    let client = quick().build().unwrap();
    let call = create_slowly(&client, &proxy.url("/v1/calls"), "gateway", "300")
        .await
        .unwrap();
    assert_the_one_call_replayed(&api, "gateway", &call).await;
}

#[tokio::test]
async fn unavailable_answers_are_retried_until_the_call_is_created_once() {
    let api = CallsApi::start(None).await;
    // Two 503s, then the call, for each operation.
    let proxy = Proxy::start(api.addr, |attempt| {
        if attempt.nth < 2 {
            Fault::Unavailable
        } else {
            Fault::Pass
        }
    })
    .await;
    let client = quick().build().unwrap();
    for _ in 0..3 {
        let call = create(&client, &proxy.url("/v1/calls"), "flaky-carrier")
            .await
            .unwrap();
        assert_eq!(call.status(), StatusCode::CREATED);
        assert!(!call.replayed(), "a 503 released the key, so the retry ran");
        assert_eq!(call.attempts(), 3);
    }
    assert_eq!(calls_of(&api, "flaky-carrier").await.len(), 3);
    let statuses: Vec<u16> = proxy
        .seen()
        .iter()
        .map(|s| s.answer.as_ref().unwrap().0)
        .collect();
    assert_eq!(statuses, [503, 503, 201, 503, 503, 201, 503, 503, 201]);
}

#[tokio::test]
async fn a_rate_limiters_429_is_retried_after_its_retry_after_into_one_call() {
    let api = CallsApi::start(None).await;
    let proxy = Proxy::start(api.addr, |attempt| attempt.first(Fault::RateLimited)).await;
    let client = quick().build().unwrap();
    let started = Instant::now();
    let call = create(&client, &proxy.url("/v1/calls"), "limited")
        .await
        .unwrap();
    assert_eq!(call.status(), StatusCode::CREATED);
    assert!(
        !call.replayed(),
        "the limiter ran nothing, so the retry ran"
    );
    assert_eq!(call.attempts(), 2);
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "the retry waited out the limiter's Retry-After"
    );
    assert_eq!(calls_of(&api, "limited").await.len(), 1);
    let statuses: Vec<u16> = proxy
        .seen()
        .iter()
        .map(|s| s.answer.as_ref().unwrap().0)
        .collect();
    assert_eq!(statuses, [429, 201]);
}

#[tokio::test]
async fn retries_of_a_call_that_stays_unavailable_stop_at_max_attempts_and_create_nothing() {
    let api = CallsApi::start(None).await;
    let proxy = Proxy::start(api.addr, |_| Fault::Pass).await;
    let client = quick().max_attempts(3).build().unwrap();
    let err = client
        .post(proxy.url("/v1/calls"))
        .bearer_auth("down")
        .header("X-Simulate-Status", "503")
        .json(&new_call())
        .send()
        .await
        .unwrap_err();
    let Error::GaveUp {
        attempts,
        ref key,
        last: Failure::Status { status, .. },
        ..
    } = err
    else {
        panic!("{err}");
    };
    assert_eq!(attempts, 3);
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(err.key(), Some(key.as_str()));
    assert!(err.to_string().contains(key.as_str()), "{err}");
    assert_eq!(proxy.seen().len(), 3);
    assert!(calls_of(&api, "down").await.is_empty());
}

#[tokio::test]
async fn a_mismatch_is_not_retried() {
    let api = CallsApi::start(None).await;
    let proxy = Proxy::start(api.addr, |_| Fault::Pass).await;
    let client = quick().build().unwrap();
    let first = create(&client, &proxy.url("/v1/calls"), "reuse")
        .await
        .unwrap();
    let err = client
        .post(proxy.url("/v1/calls"))
        .bearer_auth("reuse")
        .json(&json!({ "agent_id": "agent_1", "phone_number": "+15555550199" }))
        .idempotency_key(first.key())
        .send()
        .await
        .unwrap_err();
    match &err {
        Error::Mismatch { status, key, .. } => {
            assert_eq!(*status, StatusCode::CONFLICT);
            assert_eq!(key, first.key());
        }
        other => panic!("{other}"),
    }
    assert_eq!(proxy.seen().len(), 2, "one request each");
    assert_eq!(calls_of(&api, "reuse").await.len(), 1);

    // The messages endpoint answers a mismatch with 422, under X-Idempotency-Key.
    let messages = quick().key_header("X-Idempotency-Key").build().unwrap();
    let url = proxy.url("/v1/messages");
    let sent = messages
        .post(&url)
        .bearer_auth("reuse")
        .json(&json!({ "to": "+15555550123", "text": "hello" }))
        .send()
        .await
        .unwrap();
    assert_eq!(sent.status(), StatusCode::CREATED);
    let err = messages
        .post(&url)
        .bearer_auth("reuse")
        .json(&json!({ "to": "+15555550123", "text": "goodbye" }))
        .idempotency_key(sent.key())
        .send()
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::Mismatch {
                status: StatusCode::UNPROCESSABLE_ENTITY,
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(proxy.seen().len(), 4);
}

#[tokio::test]
async fn other_4xx_answers_are_not_retried() {
    let api = CallsApi::start(None).await;
    let proxy = Proxy::start(api.addr, |_| Fault::Pass).await;
    let client = quick().build().unwrap();

    // The application's own 400 is its answer to the operation.
    let invalid = client
        .post(proxy.url("/v1/calls"))
        .bearer_auth("fourxx")
        .json(&json!({ "agent_id": "agent_1", "phone_number": "555" }))
        .send()
        .await
        .unwrap();
    assert_eq!(invalid.status(), StatusCode::BAD_REQUEST);
    assert_eq!(invalid.attempts(), 1);
    assert_eq!(proxy.seen().len(), 1);

    // The layer refusing the key (longer than its 255 bytes) is an error naming its code.
    let err = client
        .post(proxy.url("/v1/calls"))
        .bearer_auth("fourxx")
        .json(&new_call())
        .idempotency_key("k".repeat(256))
        .send()
        .await
        .unwrap_err();
    match &err {
        Error::Refused { status, code, .. } => {
            assert_eq!(*status, StatusCode::BAD_REQUEST);
            assert_eq!(code, "idempotency_key_invalid");
        }
        other => panic!("{other}"),
    }
    assert_eq!(proxy.seen().len(), 2);

    // No credentials: the application's 401, handed back once.
    let unauthorized = client
        .post(proxy.url("/v1/calls"))
        .json(&new_call())
        .send()
        .await
        .unwrap();
    assert_eq!(unauthorized.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(unauthorized.attempts(), 1);
    assert_eq!(proxy.seen().len(), 3);
    assert!(calls_of(&api, "fourxx").await.is_empty());
}

#[tokio::test]
async fn concurrent_operations_through_every_fault_each_create_exactly_one_call() {
    let api = CallsApi::start(None).await;
    // Each operation meets the faults in turn, from a point of its own. Between two runs that
    // fail (Unavailable) come at least two that record, so even an operation whose every run
    // outlasts the timeout, and whose every other attempt is a 409, ends well within its
    // attempts.
    let proxy = Proxy::start(api.addr, |attempt| {
        match (attempt.operation + attempt.nth) % 5 {
            0 => Fault::ResetAfterAnswer,
            1 => Fault::Pass,
            2 => Fault::ResetBefore,
            3 => Fault::Unavailable,
            _ => Fault::Pass,
        }
    })
    .await;
    let client = quick()
        .timeout(Duration::from_millis(400))
        .max_attempts(12)
        .build()
        .unwrap();
    let url = proxy.url("/v1/calls");
    let operations: Vec<_> = (0..12)
        .map(|i| {
            let client = client.clone();
            let url = url.clone();
            tokio::spawn(async move {
                // A third of the calls outlast an attempt's timeout.
                let delay = if i % 3 == 0 { "700" } else { "0" };
                client
                    .post(&url)
                    .bearer_auth("mixed")
                    .header("X-Simulate-Delay-Ms", delay)
                    .json(&json!({ "agent_id": format!("agent_{i}"), "phone_number": "+15555550123" }))
                    .send()
                    .await
            })
        })
        .collect();
    let mut ids = BTreeSet::new();
    for operation in operations {
        let call = operation.await.unwrap().unwrap();
        assert_eq!(call.status(), StatusCode::CREATED);
        ids.insert(call_id(&call));
    }
    assert_eq!(ids.len(), 12);
    let listed = calls_of(&api, "mixed").await;
    assert_eq!(listed.len(), 12, "one call per operation: {listed:?}");
    assert_eq!(listed.into_iter().collect::<BTreeSet<_>>(), ids);
    let faults: BTreeSet<Fault> = proxy.seen().iter().map(|s| s.fault).collect();
    assert_eq!(faults.len(), 4, "every fault was met: {faults:?}");
}
