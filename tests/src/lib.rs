//! Helpers for the workspace's behaviour tests: a raw HTTP/1.1 client over loopback that can
//! also break a connection mid-request, and a real actix server on a free port.

#![forbid(unsafe_code)]
pub mod fuzz;
pub mod model;
pub mod pg_proxy;
mod proxy;
pub mod redis_proxy;
pub mod redis_tls;
pub mod round_trips;
pub mod shared_store;

pub use round_trips::{RoundTrips, Turn};

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use actix_web::dev::ServerHandle;
use idem_actix::clock::{ManualClock, Timestamp};
use idem_actix::{IdempotencyConfig, MokaStore};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A request to send over a raw connection.
#[derive(Clone, Debug, Default)]
pub struct RawRequest {
    method: String,
    path: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    chunk: Option<usize>,
}

impl RawRequest {
    /// A request with any method.
    pub fn new(method: &str, path: &str) -> Self {
        Self {
            method: method.into(),
            path: path.into(),
            ..Self::default()
        }
    }

    /// A `POST` to `path`.
    pub fn post(path: &str) -> Self {
        Self::new("POST", path)
    }

    /// A `GET` of `path`.
    pub fn get(path: &str) -> Self {
        Self::new("GET", path)
    }

    /// Sets a raw body.
    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = body.into();
        self
    }

    /// Sends the body with `Transfer-Encoding: chunked`, in chunks of `size` bytes, with no
    /// `Content-Length`.
    pub fn chunked(mut self, size: usize) -> Self {
        self.chunk = Some(size.max(1));
        self
    }

    /// Adds a header.
    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Sets a JSON body.
    pub fn json(mut self, body: &serde_json::Value) -> Self {
        self.body = body.to_string().into_bytes();
        self.header("Content-Type", "application/json")
    }

    /// The request as it goes on the wire (`Connection: close`), for a test that reads the
    /// answer as it comes.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = format!(
            "{} {} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n",
            self.method, self.path
        );
        for (name, value) in &self.headers {
            out.push_str(&format!("{name}: {value}\r\n"));
        }
        let Some(size) = self.chunk else {
            out.push_str(&format!("Content-Length: {}\r\n\r\n", self.body.len()));
            let mut bytes = out.into_bytes();
            bytes.extend_from_slice(&self.body);
            return bytes;
        };
        out.push_str("Transfer-Encoding: chunked\r\n\r\n");
        let mut bytes = out.into_bytes();
        for chunk in self.body.chunks(size) {
            bytes.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
            bytes.extend_from_slice(chunk);
            bytes.extend_from_slice(b"\r\n");
        }
        bytes.extend_from_slice(b"0\r\n\r\n");
        bytes
    }

    /// Sends the request and reads the whole response.
    pub async fn send(&self, addr: SocketAddr) -> RawResponse {
        self.try_send(addr)
            .await
            .expect("an answer from the test server")
    }

    /// Sends the request and reads the whole response, or says why there is none (the
    /// server refused or reset the connection, or took more than 30 s): for tests where a
    /// server may go away, whose clients cannot tell whether their request ran.
    pub async fn try_send(&self, addr: SocketAddr) -> std::io::Result<RawResponse> {
        let mut stream = TcpStream::connect(addr).await?;
        stream.write_all(&self.to_bytes()).await?;
        let mut buf = Vec::new();
        tokio::time::timeout(Duration::from_secs(30), stream.read_to_end(&mut buf))
            .await
            .map_err(|_| {
                std::io::Error::new(std::io::ErrorKind::TimedOut, "no answer in 30 s")
            })??;
        if !buf.windows(4).any(|w| w == b"\r\n\r\n") {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "the connection closed before a whole response head",
            ));
        }
        Ok(RawResponse::parse(&buf))
    }

    /// Sends the request, then resets the connection (RST, not a graceful close) once
    /// `wait_for` says the handler started: the client goes away mid-request.
    pub async fn send_and_reset(&self, addr: SocketAddr, wait_for: impl Fn() -> bool) {
        self.try_send_and_reset(addr, wait_for)
            .await
            .expect("connect to test server");
    }

    /// [`send_and_reset`](Self::send_and_reset), or why the request could not be sent.
    pub async fn try_send_and_reset(
        &self,
        addr: SocketAddr,
        wait_for: impl Fn() -> bool,
    ) -> std::io::Result<()> {
        let mut stream = TcpStream::connect(addr).await?;
        stream.write_all(&self.to_bytes()).await?;
        eventually(wait_for).await;
        stream.set_zero_linger()?;
        drop(stream);
        Ok(())
    }
}

/// A parsed response.
#[derive(Clone, Debug)]
pub struct RawResponse {
    /// Status code.
    pub status: u16,
    /// Headers by lowercase name; repeated headers keep every value.
    pub headers: HashMap<String, Vec<String>>,
    /// Body bytes.
    pub body: Vec<u8>,
}

impl RawResponse {
    /// The response whose bytes, head and body, are `buf`.
    pub fn parse(buf: &[u8]) -> Self {
        let split = buf
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .expect("a complete response head");
        let head = std::str::from_utf8(&buf[..split]).expect("ASCII head");
        let mut lines = head.split("\r\n");
        let status = lines
            .next()
            .and_then(|l| l.split(' ').nth(1))
            .and_then(|s| s.parse().ok())
            .expect("status line");
        let mut headers: HashMap<String, Vec<String>> = HashMap::new();
        for line in lines {
            if let Some((name, value)) = line.split_once(':') {
                headers
                    .entry(name.trim().to_ascii_lowercase())
                    .or_default()
                    .push(value.trim().to_owned());
            }
        }
        Self {
            status,
            headers,
            body: buf[split + 4..].to_vec(),
        }
    }

    /// The first value of a header.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(&name.to_ascii_lowercase())
            .and_then(|v| v.first())
            .map(String::as_str)
    }

    /// Whether this is a replay.
    pub fn replayed(&self) -> bool {
        self.header("idempotent-replayed") == Some("true")
    }

    /// The body as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("JSON body")
    }

    /// The body as text (invalid UTF-8 replaced).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// The body of a response sent with `Transfer-Encoding: chunked`, unframed.
pub fn unchunked(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut rest = body;
    loop {
        let line_end = rest
            .windows(2)
            .position(|w| w == b"\r\n")
            .expect("chunk size");
        let size = usize::from_str_radix(std::str::from_utf8(&rest[..line_end]).unwrap(), 16)
            .expect("hex chunk size");
        rest = &rest[line_end + 2..];
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&rest[..size]);
        rest = &rest[size + 2..];
    }
}

/// A connection to `addr` on which `request` was sent, and what it answered so far.
pub struct Open {
    /// The connection.
    pub conn: TcpStream,
    /// What it answered so far.
    pub got: Vec<u8>,
}

impl Open {
    /// Connects to `addr` and sends `request`.
    pub async fn send(addr: SocketAddr, request: &RawRequest) -> Self {
        let mut conn = TcpStream::connect(addr).await.unwrap();
        conn.write_all(&request.to_bytes()).await.unwrap();
        Self {
            conn,
            got: Vec::new(),
        }
    }

    /// Reads until the answer holds `wanted`, which must come within 10 s (`what` says what
    /// it is), while the rest of the answer may not have come yet.
    pub async fn read_until(&mut self, wanted: &[u8], what: &str) {
        let (conn, got) = (&mut self.conn, &mut self.got);
        tokio::time::timeout(Duration::from_secs(10), async {
            while !got.windows(wanted.len()).any(|w| w == wanted) {
                let mut buf = [0; 4096];
                let n = conn.read(&mut buf).await.unwrap();
                assert!(n > 0, "the connection closed early");
                got.extend_from_slice(&buf[..n]);
            }
        })
        .await
        .unwrap_or_else(|_| panic!("{what}"));
    }

    /// Asserts that the answer so far starts with `line`.
    pub fn assert_status_line(&self, line: &[u8]) {
        assert!(
            self.got.starts_with(line),
            "{:?}",
            String::from_utf8_lossy(&self.got)
        );
    }

    /// Reads the rest of the answer.
    pub async fn read_to_end(&mut self) {
        self.conn.read_to_end(&mut self.got).await.unwrap();
    }
}

/// A server running on its own thread and actix system.
pub struct TestServer {
    /// Its address on loopback.
    pub addr: SocketAddr,
    threads: String,
    handle: ServerHandle,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl TestServer {
    /// Starts an app configured by `configure` on a free loopback port with `workers` workers.
    pub fn start<F>(workers: usize, configure: F) -> Self
    where
        F: Fn(&mut actix_web::web::ServiceConfig) + Send + Clone + 'static,
    {
        let factory = move || actix_web::App::new().configure(configure.clone());
        let (tx, rx) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            actix_web::rt::System::new().block_on(async move {
                let server = actix_web::HttpServer::new(factory)
                    .workers(workers)
                    .disable_signals()
                    .shutdown_timeout(1)
                    .bind(("127.0.0.1", 0))
                    .expect("bind loopback");
                let addr = server.addrs()[0];
                let server = server.run();
                // Its workers' threads are named after its system.
                let threads = format!("actix-rt|system:{}|", actix_web::rt::System::current().id());
                tx.send((addr, server.handle(), threads))
                    .expect("report address");
                server.await.expect("server runs");
            });
        });
        let (addr, handle, threads) = rx.recv().expect("server started");
        Self {
            addr,
            threads,
            handle,
            thread: Some(thread),
        }
    }

    /// The beginning of the names of its workers' threads, for
    /// [`Warnings::containing_from`]: what its handlers and the layer log there.
    pub fn threads(&self) -> &str {
        &self.threads
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        let handle = self.handle.clone();
        let stop = std::thread::spawn(move || {
            actix_web::rt::System::new().block_on(handle.stop(false));
        });
        let _ = stop.join();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The process's peak resident memory, in bytes: for tests of what a request makes the
/// process hold, each in a test binary of its own (the peak is the whole process's).
pub fn peak_memory() -> usize {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let kib = status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|rest| rest.trim().strip_suffix("kB"))
        .and_then(|kib| kib.trim().parse::<usize>().ok())
        .expect("VmHWM in kB");
    kib << 10
}

/// Waits (up to 10 s) until `condition` holds.
pub async fn eventually(condition: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !condition() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "condition not met within 10s"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Sends `request` to `addr` until it is refused 503 `idempotency_overloaded`. On a server of
/// one worker that finishes at most one run for clients that went away
/// (`IdempotencyConfig::with_max_detached(1)`), that refusal is the sign that a run whose
/// client reset its connection has been let go by the connection and goes on by itself: a
/// test that then lets the run finish knows it finished detached, not because it was quicker
/// than the server's notice of the reset. `request`'s key must be claimed or recorded
/// already, so that sending it runs nothing.
pub async fn until_orphaned(addr: SocketAddr, request: &RawRequest) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let res = request.send(addr).await;
        if res.status == 503 && res.json()["error"]["code"] == "idempotency_overloaded" {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no run was left to finish for a client that went away within 10s (last answer {})",
            res.status
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Asserts that `res` is an error of the layer with `status` and `code` in the default
/// envelope, whose `request_id` is the response's `X-Request-ID`, and which no cache keeps
/// (`Cache-Control: no-store`), and returns its message.
pub fn assert_error(res: &RawResponse, status: u16, code: &str) -> String {
    assert_error_in(res, status, "code", code)
}

/// [`assert_error`] for an envelope that holds the code in `error.<field>` (`type` in the
/// shape of `errors = "type"`).
pub fn assert_error_in(res: &RawResponse, status: u16, field: &str, code: &str) -> String {
    let message = assert_envelope_in(res, status, field, code);
    assert_eq!(
        res.header("cache-control"),
        Some("no-store"),
        "{}",
        String::from_utf8_lossy(&res.body)
    );
    message
}

/// Asserts that `res` is an error with `status` and `code` in the default envelope, whose
/// `request_id` is the response's `X-Request-ID` (the layer's, or an application's that
/// answers in the same envelope), and returns its message.
pub fn assert_envelope(res: &RawResponse, status: u16, code: &str) -> String {
    assert_envelope_in(res, status, "code", code)
}

/// [`assert_envelope`] for an envelope that holds the code in `error.<field>`.
pub fn assert_envelope_in(res: &RawResponse, status: u16, field: &str, code: &str) -> String {
    assert_eq!(res.status, status, "{}", String::from_utf8_lossy(&res.body));
    assert_eq!(res.header("content-type"), Some("application/json"));
    let body = res.json();
    assert_eq!(body["error"][field], code, "{body}");
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(!message.is_empty(), "{body}");
    let id = res.header("x-request-id").expect("X-Request-ID");
    assert_eq!(body["request_id"], id);
    message.to_owned()
}

/// Asserts that `res` is an error of the layer with `status` and `code` as RFC 9457
/// `application/problem+json`, whose `request_id` is the response's `X-Request-ID`: its body,
/// for what else a test looks at.
pub fn assert_problem(res: &RawResponse, status: u16, code: &str) -> serde_json::Value {
    assert_eq!(res.status, status, "{}", String::from_utf8_lossy(&res.body));
    assert_eq!(res.header("content-type"), Some("application/problem+json"));
    let body = res.json();
    assert_eq!(body["code"], code, "{body}");
    assert_eq!(body["type"], format!("urn:idem:error:{code}"));
    assert_eq!(body["status"], status);
    assert!(body["detail"].as_str().is_some_and(|d| !d.is_empty()));
    assert_eq!(
        body["request_id"],
        res.header("x-request-id").expect("X-Request-ID")
    );
    assert_eq!(res.header("cache-control"), Some("no-store"), "{body}");
    body
}

/// A shared counter, for counting handler executions across workers.
#[derive(Clone, Debug, Default)]
pub struct Counter(Arc<AtomicUsize>);

impl Counter {
    /// Adds one; returns the new count.
    pub fn bump(&self) -> usize {
        self.0.fetch_add(1, Ordering::SeqCst) + 1
    }

    /// The count.
    pub fn get(&self) -> usize {
        self.0.load(Ordering::SeqCst)
    }
}

/// A one-worker server whose idempotency layer runs on a [`ManualClock`] and whose handlers
/// count their runs through `web::Data<Counter>`.
pub struct Served {
    /// The server.
    pub server: TestServer,
    /// The layer's clock.
    pub clock: ManualClock,
    /// How often handlers ran.
    pub runs: Counter,
}

/// Serves the services `register` adds, with a fresh embedded store.
pub fn serve<F>(register: F) -> Served
where
    F: Fn(&mut actix_web::web::ServiceConfig) + Send + Clone + 'static,
{
    served(|idem| idem, register)
}

/// As [`serve`], on the application's `defaults` (`IdempotencyConfig::with_defaults`, which
/// must take them).
pub fn serve_with_defaults<F>(defaults: idem_actix::Policy, register: F) -> Served
where
    F: Fn(&mut actix_web::web::ServiceConfig) + Send + Clone + 'static,
{
    served(
        |idem| idem.with_defaults(defaults).expect("the defaults"),
        register,
    )
}

/// Serves the services `register` adds, on the settings `settle` makes of a fresh embedded
/// store's on a manual clock.
fn served<F>(settle: impl FnOnce(IdempotencyConfig) -> IdempotencyConfig, register: F) -> Served
where
    F: Fn(&mut actix_web::web::ServiceConfig) + Send + Clone + 'static,
{
    let clock = ManualClock::new(Timestamp::from_millis(1_700_000_000_000));
    let runs = Counter::default();
    let idem = settle(IdempotencyConfig::new(MokaStore::new()).with_clock(clock.clone()));
    let data = actix_web::web::Data::new(runs.clone());
    let server = TestServer::start(1, move |cfg| {
        cfg.app_data(idem.clone()).app_data(data.clone());
        register(cfg);
    });
    Served {
        server,
        clock,
        runs,
    }
}

impl Served {
    /// Sends `request` to the server.
    pub async fn send(&self, request: &RawRequest) -> RawResponse {
        request.send(self.server.addr).await
    }

    /// Sends `request` twice, one after the other: a first request and its retry.
    pub async fn twice(&self, request: &RawRequest) -> (RawResponse, RawResponse) {
        let first = self.send(request).await;
        let second = self.send(request).await;
        (first, second)
    }

    /// Sends `request`, and the same again while the first runs: both answers, the first's
    /// and the duplicate's. The first names a hold in `X-Hold`, which [`held`] makes its
    /// handler wait on once it has counted its run; the duplicate goes once it has, and the
    /// hold is released once the duplicate is answered.
    pub async fn during(&self, request: &RawRequest) -> (RawResponse, RawResponse) {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let before = self.runs.get();
        let hold = format!("hold-{}", NEXT.fetch_add(1, Ordering::Relaxed));
        let first = request.clone().header(HOLD, &hold);
        let addr = self.server.addr;
        let running = actix_web::rt::spawn(async move { first.send(addr).await });
        eventually(|| self.runs.get() > before).await;
        let duplicate = self.send(request).await;
        release(&hold);
        (running.await.expect("the first request"), duplicate)
    }
}

impl Served {
    /// Asserts what a profile whose column says "all but 5xx" stores: a handler's 4xx is
    /// recorded and replayed, a 5xx releases the key and its retry runs. `request` makes the
    /// endpoint's request with a key; its handler answers as [`asked`] says.
    pub async fn stores_all_but_5xx(&self, request: impl Fn(&str) -> RawRequest) {
        let runs = self.runs.get();
        let rejected = self
            .send(&request("stored-4xx").header(ANSWER, "400"))
            .await;
        assert_eq!(rejected.status, 400);
        let retry = self.send(&request("stored-4xx")).await;
        assert!(retry.replayed(), "a 4xx is stored");
        assert_eq!((retry.status, &retry.body), (400, &rejected.body));
        let failed = self
            .send(&request("released-5xx").header(ANSWER, "503"))
            .await;
        assert_eq!(failed.status, 503);
        let retry = self.send(&request("released-5xx")).await;
        assert!(!retry.replayed(), "a 5xx is not stored");
        assert!(retry.status < 300, "the retry runs: {}", retry.status);
        assert_eq!(self.runs.get(), runs + 3);
    }
}

impl Served {
    /// Asserts a profile's longest key: one of `max` bytes runs, one of `max + 1` is refused
    /// (400 `idempotency_key_invalid`, in the endpoint's format) and runs nothing.
    pub async fn keys_up_to(&self, max: usize, request: impl Fn(&str) -> RawRequest) {
        let runs = self.runs.get();
        let longest = self.send(&request(&"k".repeat(max))).await;
        assert!(longest.status < 300, "{}", longest.text());
        let over = self.send(&request(&"k".repeat(max + 1))).await;
        assert_eq!(over.status, 400);
        assert!(
            over.text().contains("idempotency_key_invalid"),
            "{}",
            over.text()
        );
        assert_eq!(self.runs.get(), runs + 1);
    }

    /// Asserts that a duplicate of `request` sent while the first runs is answered 409 with
    /// `Retry-After` and runs nothing, while the first succeeds: the duplicate's answer, for
    /// the endpoint's format.
    pub async fn conflicts_while_running(&self, request: &RawRequest) -> RawResponse {
        let runs = self.runs.get();
        let (first, duplicate) = self.during(request).await;
        assert_eq!(duplicate.status, 409, "{}", duplicate.text());
        assert_eq!(duplicate.header("retry-after"), Some("1"));
        assert!(first.status < 300, "{}", first.text());
        assert_eq!(self.runs.get(), runs + 1);
        duplicate
    }
}

/// Counts a handler's run in `runs`, then holds it as its request asks ([`held`]): the
/// run's number.
pub async fn counted(runs: &Counter, req: &actix_web::HttpRequest) -> usize {
    let n = runs.bump();
    held(req).await;
    n
}

/// The header [`asked`] reads.
const ANSWER: &str = "X-Answer";

/// A scope function with a bug: it panics when `X-Tenant` is `boom`.
pub fn buggy_tenant(req: &actix_web::HttpRequest) -> Option<String> {
    let tenant = req.headers().get("x-tenant")?.to_str().ok()?;
    assert_ne!(tenant, "boom", "scope function bug");
    Some(tenant.to_owned())
}

/// A replay hook with a bug: it panics on a replay asked with `X-Boom`.
pub fn buggy_mark(req: &actix_web::HttpRequest, _: &mut actix_web::HttpResponse) {
    assert!(!req.headers().contains_key("x-boom"), "replay hook bug");
}

/// The error a request's `X-Answer: STATUS` asks its handler to answer, if it asks: for
/// tests of what an endpoint records.
pub fn asked(req: &actix_web::HttpRequest) -> Option<actix_web::HttpResponse> {
    let status = req.headers().get(ANSWER)?.to_str().ok()?.parse().ok()?;
    let status = actix_web::http::StatusCode::from_u16(status).ok()?;
    let body = serde_json::json!({"error": {"code": "asked", "status": status.as_u16()}});
    Some(actix_web::HttpResponse::build(status).json(body))
}

/// The header [`held`] reads: the name of a hold, which [`release`] ends.
pub const HOLD: &str = "X-Hold";

/// The holds of handlers [`Served::during`] keeps running, by name, until it releases them.
fn hold(name: &str) -> Arc<tokio::sync::Semaphore> {
    static HOLDS: OnceLock<Mutex<HashMap<String, Arc<tokio::sync::Semaphore>>>> = OnceLock::new();
    let mut holds = HOLDS.get_or_init(Default::default).lock().unwrap();
    let gate =
        (holds.entry(name.to_owned())).or_insert_with(|| Arc::new(tokio::sync::Semaphore::new(0)));
    Arc::clone(gate)
}

/// Lets the handler held under `name` (its request's [`HOLD`]) finish.
pub fn release(name: &str) {
    hold(name).add_permits(1);
}

/// Waits, if the request names a hold in `X-Hold`, until it is released: for handlers that
/// [`Served::during`] keeps running while it sends a duplicate, however long the duplicate
/// takes to be answered.
pub async fn held(req: &actix_web::HttpRequest) {
    let name = req.headers().get(HOLD).and_then(|v| v.to_str().ok());
    if let Some(name) = name {
        let gate = hold(name);
        let _released = gate.acquire().await;
    }
}

/// Whether a missing Redis must fail the test instead of skipping it (`IDEM_REQUIRE_REDIS=1`).
pub fn redis_required() -> bool {
    std::env::var("IDEM_REQUIRE_REDIS").as_deref() == Ok("1")
}

/// Skips a test that cannot have the Redis it needs: says why on stderr, or panics when
/// [`redis_required`], so that CI never counts a skipped test as passed.
pub fn skip_without_redis(why: &str) {
    if redis_required() {
        panic!("IDEM_REQUIRE_REDIS=1 but {why}");
    }
    eprintln!("skipped: {why}; install redis-server (or set IDEM_TEST_REDIS_URL)");
}

/// A loopback port free now (another process may take it before it is bound).
pub(crate) fn free_port() -> Result<u16, String> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|addr| addr.port())
        .map_err(|e| format!("a free port: {e}"))
}

/// A free port on loopback whose neighbour `offset` above is free too (a cluster node's bus
/// port is its port plus 10000), at most `max`. The listeners are held until all are picked,
/// so the ports differ.
pub(crate) fn free_ports(count: usize, offset: u16, max: u16) -> Vec<u16> {
    let mut held = Vec::new();
    let mut ports = Vec::new();
    for _ in 0..1000 {
        if ports.len() == count {
            break;
        }
        let Ok(listener) = std::net::TcpListener::bind("127.0.0.1:0") else {
            continue;
        };
        let port = listener.local_addr().expect("a bound address").port();
        if port > max {
            continue;
        }
        let Ok(neighbour) = std::net::TcpListener::bind(("127.0.0.1", port + offset)) else {
            continue;
        };
        held.push((listener, neighbour));
        ports.push(port);
    }
    assert_eq!(ports.len(), count, "free loopback ports");
    ports
}

/// A Redis for tests: our own `redis-server` on a free loopback port, or the one named by
/// `IDEM_TEST_REDIS_URL`.
pub struct TestRedis {
    url: String,
    port: Option<u16>,
    /// Our own server's directory (a replica writes its copy of the primary there).
    dir: Option<std::path::PathBuf>,
    child: Option<std::process::Child>,
}

impl TestRedis {
    /// Starts one, or `None` (the test should skip) when there is no `redis-server` and no
    /// `IDEM_TEST_REDIS_URL`. With `IDEM_REQUIRE_REDIS=1`, a missing Redis panics instead.
    pub fn start() -> Option<Self> {
        if let Ok(url) = std::env::var("IDEM_TEST_REDIS_URL") {
            if !url.is_empty() {
                return Some(Self {
                    url,
                    port: None,
                    dir: None,
                    child: None,
                });
            }
        }
        Self::start_owned()
    }

    /// Starts our own `redis-server` even when `IDEM_TEST_REDIS_URL` names one, for tests that
    /// stop and restart it; `None` (the test should skip) when there is no `redis-server`,
    /// and a panic instead with `IDEM_REQUIRE_REDIS=1`.
    pub fn start_owned() -> Option<Self> {
        // A port picked free may be taken before the server binds it: another is tried.
        let mut failed = String::new();
        for _ in 0..3 {
            let port = free_port().expect("a free port");
            let dir =
                std::env::temp_dir().join(format!("idem-redis-{}-{port}", std::process::id()));
            if let Err(e) = std::fs::create_dir_all(&dir) {
                skip_without_redis(&format!("{}: {e}", dir.display()));
                return None;
            }
            let mut redis = Self {
                url: format!("redis://127.0.0.1:{port}/"),
                port: Some(port),
                dir: Some(dir),
                child: None,
            };
            match redis.spawn() {
                Ok(()) => return Some(redis),
                Err(e) => failed = e,
            }
        }
        skip_without_redis(&format!("redis-server could not start ({failed})"));
        None
    }

    fn spawn(&mut self) -> Result<(), String> {
        let port = self.port.ok_or("an external Redis cannot be started")?;
        let dir = self
            .dir
            .as_ref()
            .ok_or("an external Redis cannot be started")?;
        let child = std::process::Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .arg("--dir")
            .arg(dir)
            .stdout(std::process::Stdio::null())
            .spawn()
            .map_err(|e| format!("redis-server: {e}"))?;
        let child = self.child.insert(child);
        wait_for_own(&self.url, child, Duration::from_secs(10))
    }

    /// Its URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// A plain connection, for looking at what the store wrote.
    pub fn connection(&self) -> redis::RedisResult<redis::Connection> {
        node_connection(&self.url)
    }

    /// Runs one command.
    pub fn query<T: redis::FromRedisValue>(&self, cmd: &mut redis::Cmd) -> T {
        cmd.query(&mut self.connection().expect("connect to test Redis"))
            .expect("Redis command")
    }

    /// Makes the server refuse every write for `outage` (an out-of-memory refusal, answered at
    /// once; reads are still served), then take them again: a store that fails what it is
    /// asked, claims and completions alike, for a while. Blocks for `outage`.
    pub fn refuse_writes(&self, outage: Duration) {
        self.query::<()>(redis::cmd("CONFIG").arg("SET").arg("maxmemory").arg(1));
        std::thread::sleep(outage);
        self.query::<()>(redis::cmd("CONFIG").arg("SET").arg("maxmemory").arg(0));
    }

    /// Suspends the server's process (`SIGSTOP`) until [`resume`](Self::resume): it keeps its
    /// connections, and answers nothing meanwhile (a replica then acknowledges no write).
    ///
    /// # Panics
    /// On a Redis this test did not start.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// Resumes a server [`pause`](Self::pause) suspended.
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, signal: &str) {
        let child = self.child.as_ref().expect("a Redis of this test's own");
        let sent = std::process::Command::new("kill")
            .args([signal, &child.id().to_string()])
            .status()
            .expect("kill");
        assert!(sent.success(), "kill {signal}");
    }

    /// Stops the server (an outage).
    ///
    /// # Panics
    /// On a Redis this test did not start ([`TestRedis::start_owned`] starts one).
    pub fn stop(&mut self) {
        assert!(self.port.is_some(), "an external Redis cannot be stopped");
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port, empty.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn().expect("restart redis-server");
    }
}

impl Drop for TestRedis {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if let Some(dir) = &self.dir {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// Waits up to `within` for the `redis-server` run by `child` to answer at `url`; an error
/// when it exited, or another server answers there (another test's, which took the port
/// first).
pub(crate) fn wait_for_own(
    url: &str,
    child: &mut std::process::Child,
    within: Duration,
) -> Result<(), String> {
    let id = child.id();
    let deadline = std::time::Instant::now() + within;
    while std::time::Instant::now() < deadline {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!("redis-server for {url} exited with {status}"));
        }
        if let Ok(mut conn) = node_connection(url) {
            let info: String = redis::cmd("INFO")
                .arg("server")
                .query(&mut conn)
                .unwrap_or_default();
            return match info.contains(&format!("process_id:{id}\r")) {
                true => Ok(()),
                false => Err(format!("{url} is another server's")),
            };
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Err(format!(
        "redis-server at {url} did not answer within {within:?}"
    ))
}

/// A plain connection to one server, checked with a `PING`.
fn node_connection(url: &str) -> redis::RedisResult<redis::Connection> {
    let client = redis::Client::open(url)?;
    let mut conn = client.get_connection_with_timeout(Duration::from_secs(1))?;
    redis::cmd("PING").query::<String>(&mut conn)?;
    Ok(conn)
}

/// The hash slot of `key` (CRC16/XMODEM modulo 16384; the store's keys have no hash tag),
/// computed here so that many keys of a few slots can be found without asking Redis each time.
pub fn crc16_slot(key: &str) -> u16 {
    let mut crc: u16 = 0;
    for &byte in key.as_bytes() {
        crc ^= u16::from(byte) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc % 16384
}

/// `count` store keys, from `seed`, whose records `prefix` puts in one of `slots`.
pub fn keys_in(prefix: &str, slots: &[u16], seed: u8, count: usize) -> Vec<idem_core::StoreKey> {
    (0u64..)
        .map(|n| {
            let mut bytes = [seed; 32];
            bytes[..8].copy_from_slice(&n.to_be_bytes());
            idem_core::StoreKey::from_bytes(bytes)
        })
        .filter(|key| slots.contains(&crc16_slot(&format!("{prefix}{key}"))))
        .take(count)
        .collect()
}

/// What `engine` begins with `key` once it answers other than as an unavailable store (a
/// store coming back, or a cluster failing over), trying for up to 20 s.
///
/// # Panics
/// When it is still unavailable then, or answers another error.
pub async fn begin_until_up(
    engine: &idem_core::Engine,
    key: idem_core::StoreKey,
    fp: idem_core::Fingerprint,
) -> idem_core::Begin {
    use idem_core::{IdempotencyError, Policy};
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        match engine.begin(&Policy::DEFAULT, key, fp).await {
            Err(IdempotencyError::StoreUnavailable(e)) => {
                assert!(
                    std::time::Instant::now() < deadline,
                    "still unavailable: {e}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("{e}"),
            Ok(begun) => return begun,
        }
    }
}

/// That `engine`, once its store answers again (a failover to a replica, say), replays `done`,
/// which [`recorded`] recorded with `body`, and runs `fresh`, a key it never saw, recording
/// its response.
///
/// # Panics
/// When it does either otherwise, or its store stays unavailable (see [`begin_until_up`]).
pub async fn replays_and_runs_once_up(
    engine: &idem_core::Engine,
    done: idem_core::StoreKey,
    fresh: idem_core::StoreKey,
    fp: idem_core::Fingerprint,
    body: &[u8],
) {
    use idem_core::{Begin, Outcome, Response};
    let Begin::Replay(record) = begin_until_up(engine, done, fp).await else {
        panic!("replays what was recorded before")
    };
    assert_eq!(&record.response.body()[..], body);
    let Begin::Execute(lease) = begin_until_up(engine, fresh, fp).await else {
        panic!("a new key runs")
    };
    assert_eq!(
        lease.finish(Response::new(201, [], b"new")).await.unwrap(),
        Outcome::Recorded
    );
}

/// Runs `key` on `engine` and records a 201 with `body`.
pub async fn recorded(
    engine: &idem_core::Engine,
    key: idem_core::StoreKey,
    fp: idem_core::Fingerprint,
    body: &[u8],
) {
    use idem_core::{Begin, Outcome, Policy, Response};
    let Ok(Begin::Execute(lease)) = engine.begin(&Policy::DEFAULT, key, fp).await else {
        panic!("claimed")
    };
    let recorded = lease.finish(Response::new(201, [], body)).await.unwrap();
    assert_eq!(recorded, Outcome::Recorded);
}

/// What requests on keys of migrating slots get, counted by answer: eight rounds, each asking
/// again for every key of `before` (recorded with the body `before`: "replay") and running
/// 16 keys of `fresh` at once with them, each recorded and asked again ("ran once,
/// replays"). Any other answer (a 503, a second run) is counted under what it was.
pub async fn answers_while_slots_migrate(
    engine: &idem_core::Engine,
    before: &[idem_core::StoreKey],
    fresh: &[idem_core::StoreKey],
) -> HashMap<String, usize> {
    use futures_util::future::join_all;
    use idem_core::{Begin, Fingerprint, Outcome, Policy, Response};
    let fp = Fingerprint::new("POST", "/x", "", b"");
    let mut answers: HashMap<String, usize> = HashMap::new();
    for keys in fresh.chunks(16) {
        let replays = join_all(before.iter().map(|key| async move {
            match engine.begin(&Policy::DEFAULT, *key, fp).await {
                Ok(Begin::Replay(record)) if &record.response.body()[..] == b"before" => {
                    "replay".to_owned()
                }
                Ok(Begin::Replay(_)) => "replay of another body".to_owned(),
                Ok(Begin::Execute(_) | Begin::Unprotected(_)) => "ran again".to_owned(),
                Err(e) => format!("{}: {e}", e.status()),
            }
        }))
        .await;
        let runs = join_all(keys.iter().map(|key| async move {
            let lease = match engine.begin(&Policy::DEFAULT, *key, fp).await {
                Ok(Begin::Execute(lease)) => lease,
                Ok(other) => return format!("not run: {other:?}"),
                Err(e) => return format!("{}: {e}", e.status()),
            };
            match lease.finish(Response::new(201, [], b"new")).await {
                Ok(Outcome::Recorded) => {}
                other => return format!("not recorded: {other:?}"),
            }
            match engine.begin(&Policy::DEFAULT, *key, fp).await {
                Ok(Begin::Replay(_)) => "ran once, replays".to_owned(),
                Ok(Begin::Execute(_) | Begin::Unprotected(_)) => "ran again".to_owned(),
                Err(e) => format!("replay {}: {e}", e.status()),
            }
        }))
        .await;
        for answer in replays.into_iter().chain(runs) {
            *answers.entry(answer).or_default() += 1;
        }
    }
    answers
}

/// Waits up to 30 s until each master of a Redis Cluster, at `urls`, sees the cluster whole:
/// state ok, as many nodes as `urls`, none flagged as failing nor still in its handshake.
pub(crate) fn wait_until_whole(urls: &[String]) -> Result<(), String> {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let mut last = String::new();
    while std::time::Instant::now() < deadline {
        let whole = urls.iter().all(|url| {
            let Ok(mut conn) = node_connection(url) else {
                last = format!("{url} does not answer");
                return false;
            };
            let info: String = redis::cmd("CLUSTER")
                .arg("INFO")
                .query(&mut conn)
                .unwrap_or_default();
            let nodes: String = redis::cmd("CLUSTER")
                .arg("NODES")
                .query(&mut conn)
                .unwrap_or_default();
            last = format!("{url}: {info}\n{nodes}");
            info.contains("cluster_state:ok")
                && nodes.lines().count() == urls.len()
                && !nodes.contains("fail")
                && !nodes.contains("handshake")
        });
        if whole {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Err(format!("the cluster did not become ok within 30s: {last}"))
}

/// A Redis Cluster for tests: three masters (no replicas) of our own on free loopback ports,
/// each writing its data to a temporary directory with every write synced, so that a master
/// killed and restarted ([`stop`](Self::stop), [`restart`](Self::restart)) comes back with
/// its records and its slots. A master that is down takes only its own slots with it
/// (`cluster-require-full-coverage no`).
pub struct TestRedisCluster {
    dir: std::path::PathBuf,
    ports: Vec<u16>,
    /// The port each master tells clients to reach it on: its own, or that of a proxy in
    /// front of it ([`start_announcing`](Self::start_announcing)).
    announced: Vec<u16>,
    children: Vec<Option<std::process::Child>>,
}

impl TestRedisCluster {
    /// How many masters it has.
    pub const MASTERS: usize = 3;

    /// Starts one, or `None` (the test should skip) when `redis-server` and `redis-cli` cannot
    /// make one. With `IDEM_REQUIRE_REDIS=1`, that panics instead.
    pub fn start() -> Option<Self> {
        Self::start_announcing(&|port| port)
    }

    /// As [`start`](Self::start), each master telling clients (in `CLUSTER SLOTS`, `MOVED`)
    /// to reach it on the port `announce` gives for its own (a proxy's in front of it), and
    /// its peers on its own bus port.
    pub fn start_announcing(announce: &dyn Fn(u16) -> u16) -> Option<Self> {
        // Another test may take a port between its choice and its node's start: try anew.
        let mut error = String::new();
        for _ in 0..3 {
            match Self::create(announce) {
                Ok(cluster) => return Some(cluster),
                Err(e) => error = e,
            }
        }
        skip_without_redis(&format!("no Redis Cluster could be made ({error})"));
        None
    }

    fn create(announce: &dyn Fn(u16) -> u16) -> Result<Self, String> {
        // A node's cluster bus listens on its port plus 10000.
        let ports = free_ports(Self::MASTERS, 10_000, 55_535);
        let announced = ports.iter().map(|&port| announce(port)).collect();
        let dir = std::env::temp_dir().join(format!(
            "idem-redis-cluster-{}-{}",
            std::process::id(),
            ports[0]
        ));
        let mut cluster = Self {
            dir,
            ports,
            announced,
            children: (0..Self::MASTERS).map(|_| None).collect(),
        };
        for node in 0..Self::MASTERS {
            let dir = cluster.node_dir(node);
            std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
            cluster.spawn(node)?;
        }
        // `redis-cli --cluster create` waits for the nodes to join for as long as it takes:
        // bounded here, so that a node that went away fails the attempt instead of hanging it.
        let mut create = std::process::Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(cluster.ports.iter().map(|p| format!("127.0.0.1:{p}")))
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdout(std::process::Stdio::null())
            .spawn()
            .map_err(|e| format!("redis-cli: {e}"))?;
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        let created = loop {
            match create.try_wait() {
                Ok(Some(status)) => break status.success(),
                Ok(None) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(50));
                }
                _ => {
                    let _ = create.kill();
                    let _ = create.wait();
                    break false;
                }
            }
        };
        if !created {
            return Err("redis-cli --cluster create failed or did not finish in 30s".into());
        }
        cluster.wait_until_ok()?;
        Ok(cluster)
    }

    fn node_dir(&self, node: usize) -> std::path::PathBuf {
        self.dir.join(self.ports[node].to_string())
    }

    fn spawn(&mut self, node: usize) -> Result<(), String> {
        let port = self.ports[node].to_string();
        let child = std::process::Command::new("redis-server")
            .args(["--port", &port, "--bind", "127.0.0.1", "--daemonize", "no"])
            .args(["--cluster-enabled", "yes"])
            .args(["--cluster-config-file", "nodes.conf"])
            .args(["--cluster-node-timeout", "1000"])
            .args(["--cluster-require-full-coverage", "no"])
            .args(self.announcing(node))
            .args([
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
            ])
            .arg("--dir")
            .arg(self.node_dir(node))
            .stdout(std::process::Stdio::null())
            .spawn()
            .map_err(|e| format!("redis-server: {e}"))?;
        let url = self.url(node);
        let child = self.children[node].insert(child);
        wait_for_own(&url, child, Duration::from_secs(10))
    }

    /// The settings that make master `node` announce another port than its own, if it does.
    fn announcing(&self, node: usize) -> Vec<String> {
        let (port, announced) = (self.ports[node], self.announced[node]);
        if port == announced {
            return Vec::new();
        }
        let bus = (u32::from(port) + 10_000).to_string();
        [
            "--cluster-announce-ip",
            "127.0.0.1",
            "--cluster-announce-port",
            &announced.to_string(),
            "--cluster-announce-bus-port",
            &bus,
        ]
        .map(str::to_owned)
        .to_vec()
    }

    /// As [`start`](Self::start), each master behind a proxy that can lose answers, which it
    /// tells clients to reach it through: a client that connects by [`urls_behind`] reaches
    /// every master through its proxy. The proxies are in the order of the masters.
    ///
    /// [`urls_behind`]: Self::urls_behind
    pub fn start_behind_proxies() -> Option<(Self, Vec<redis_proxy::LosingRedisProxy>)> {
        let proxies = std::cell::RefCell::new(Vec::new());
        let cluster = Self::start_announcing(&|port| {
            let proxy = redis_proxy::LosingRedisProxy::start(([127, 0, 0, 1], port).into());
            let at = proxy.port();
            proxies.borrow_mut().push(proxy);
            at
        })?;
        // The last attempt's, when a port was taken from under an earlier one.
        let mut proxies = proxies.into_inner();
        let proxies = proxies.split_off(proxies.len() - Self::MASTERS);
        Some((cluster, proxies))
    }

    /// The URLs of every master's proxy, when it [announces](Self::start_announcing) one.
    pub fn urls_behind(&self) -> Vec<String> {
        (self.announced.iter())
            .map(|port| format!("redis://127.0.0.1:{port}/"))
            .collect()
    }

    /// Waits until every master sees the cluster whole ([`wait_until_whole`]).
    fn wait_until_ok(&self) -> Result<(), String> {
        wait_until_whole(&self.urls())
    }

    /// The URL of master `node`.
    pub fn url(&self, node: usize) -> String {
        format!("redis://127.0.0.1:{}/", self.ports[node])
    }

    /// The URLs of every master.
    pub fn urls(&self) -> Vec<String> {
        (0..Self::MASTERS).map(|node| self.url(node)).collect()
    }

    /// Runs one command on master `node`.
    pub fn query<T: redis::FromRedisValue>(&self, node: usize, cmd: &mut redis::Cmd) -> T {
        let mut conn = node_connection(&self.url(node)).expect("connect to a cluster node");
        cmd.query(&mut conn).expect("Redis command")
    }

    /// Whether master `node` runs (it is not [stopped](Self::stop)).
    pub fn running(&self, node: usize) -> bool {
        self.children[node].is_some()
    }

    /// The keys master `node` holds that match `pattern`.
    pub fn keys(&self, node: usize, pattern: &str) -> Vec<String> {
        self.query(node, redis::cmd("KEYS").arg(pattern))
    }

    /// The master that serves `key`, by its hash slot.
    pub fn node_of(&self, key: &str) -> usize {
        let live = (0..Self::MASTERS)
            .find(|&node| self.running(node))
            .expect("a running master");
        let slot: i64 = self.query(live, redis::cmd("CLUSTER").arg("KEYSLOT").arg(key));
        // Each range: its first and last slot, then its master as [ip, port, id, ...].
        let ranges: Vec<Vec<redis::Value>> = self.query(live, redis::cmd("CLUSTER").arg("SLOTS"));
        let port = ranges
            .into_iter()
            .find_map(|range| {
                let mut range = range.into_iter();
                let first: i64 = redis::from_redis_value(range.next()?).ok()?;
                let last: i64 = redis::from_redis_value(range.next()?).ok()?;
                let master: Vec<redis::Value> = redis::from_redis_value(range.next()?).ok()?;
                let port: i64 = redis::from_redis_value(master.into_iter().nth(1)?).ok()?;
                (first..=last).contains(&slot).then_some(port)
            })
            .expect("every slot is served");
        self.announced
            .iter()
            .position(|p| i64::from(*p) == port)
            .expect("a master of this cluster")
    }

    /// Kills master `node` (a crash: no shutdown, so nothing but the synced writes is kept).
    pub fn stop(&mut self, node: usize) {
        if let Some(mut child) = self.children[node].take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts master `node` again on its port, from its `nodes.conf` and its data; once every
    /// master runs again, waits until each sees the cluster whole.
    ///
    /// # Panics
    /// When it does not answer within 10 s, or the cluster does not heal within 30 s.
    pub fn restart(&mut self, node: usize) {
        self.stop(node);
        self.spawn(node).expect("restart a cluster node");
        if (0..Self::MASTERS).all(|node| self.running(node)) {
            self.wait_until_ok().expect("the cluster heals");
        }
    }
}

/// A replica of one master of a [`TestRedisCluster`], on a port of its own, for failovers.
/// Its cluster may no longer be [restarted](TestRedisCluster::restart), which waits for three
/// nodes.
pub struct TestRedisReplica {
    port: u16,
    child: Option<std::process::Child>,
}

impl TestRedisReplica {
    /// Its URL.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// Runs one command on it.
    pub fn query<T: redis::FromRedisValue>(&self, cmd: &mut redis::Cmd) -> T {
        let mut conn = node_connection(&self.url()).expect("connect to the replica");
        cmd.query(&mut conn).expect("Redis command")
    }
}

impl Drop for TestRedisReplica {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl TestRedisCluster {
    /// The node id of master `node`.
    pub fn node_id(&self, node: usize) -> String {
        self.query(node, redis::cmd("CLUSTER").arg("MYID"))
    }

    /// Starts a replica of master `master`, and waits until it holds the master's data and
    /// every master knows it as a replica (so that it can be voted in by a failover).
    ///
    /// # Panics
    /// When the replica does not start or sync within 30 s.
    pub fn add_replica(&self, master: usize) -> TestRedisReplica {
        let port = free_ports(1, 10_000, 55_535)[0];
        let dir = self.dir.join(port.to_string());
        std::fs::create_dir_all(&dir).expect("replica dir");
        let child = std::process::Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--daemonize", "no", "--cluster-enabled", "yes"])
            .args(["--cluster-config-file", "nodes.conf"])
            .args(["--cluster-node-timeout", "1000"])
            .args(["--cluster-require-full-coverage", "no"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(&dir)
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("redis-server");
        let mut replica = TestRedisReplica {
            port,
            child: Some(child),
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        let url = replica.url();
        let child = replica.child.as_mut().expect("just started");
        if let Err(e) = wait_for_own(&url, child, Duration::from_secs(30)) {
            panic!("replica starts: {e}");
        }
        replica.query::<()>(
            redis::cmd("CLUSTER")
                .arg("MEET")
                .arg("127.0.0.1")
                .arg(self.ports[master]),
        );
        let master_id = self.node_id(master);
        loop {
            let nodes: String = replica.query(redis::cmd("CLUSTER").arg("NODES"));
            if nodes.contains(&master_id) {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "replica meets: {nodes}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        replica.query::<()>(redis::cmd("CLUSTER").arg("REPLICATE").arg(&master_id));
        let replica_id: String = replica.query(redis::cmd("CLUSTER").arg("MYID"));
        loop {
            let info: String = replica.query(redis::cmd("INFO").arg("replication"));
            let known = (0..Self::MASTERS).all(|node| {
                let nodes: String = self.query(node, redis::cmd("CLUSTER").arg("NODES"));
                nodes
                    .lines()
                    .any(|l| l.starts_with(&replica_id) && l.contains(&master_id))
            });
            if known && info.contains("master_link_status:up") {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "replica syncs: {info}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        replica
    }

    /// Waits until every running master and `replica` serve `slot` from `port`.
    ///
    /// # Panics
    /// When they do not agree within 30 s.
    pub fn wait_for_slot_at(&self, slot: i64, port: u16, others: &[&TestRedisReplica]) {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        let urls: Vec<String> = (0..Self::MASTERS)
            .filter(|&node| self.running(node))
            .map(|node| self.url(node))
            .chain(others.iter().map(|r| r.url()))
            .collect();
        loop {
            let agreed = urls.iter().all(|url| {
                let Ok(mut conn) = node_connection(url) else {
                    return false;
                };
                let ranges: Vec<Vec<redis::Value>> = redis::cmd("CLUSTER")
                    .arg("SLOTS")
                    .query(&mut conn)
                    .unwrap_or_default();
                ranges.into_iter().any(|range| {
                    let mut range = range.into_iter();
                    let (Some(first), Some(last), Some(master)) =
                        (range.next(), range.next(), range.next())
                    else {
                        return false;
                    };
                    let first: i64 = redis::from_redis_value(first).unwrap_or(-1);
                    let last: i64 = redis::from_redis_value(last).unwrap_or(-1);
                    let master: Vec<redis::Value> =
                        redis::from_redis_value(master).unwrap_or_default();
                    let at: i64 = master
                        .into_iter()
                        .nth(1)
                        .and_then(|p| redis::from_redis_value(p).ok())
                        .unwrap_or(-1);
                    (first..=last).contains(&slot) && at == i64::from(port)
                })
            });
            if agreed {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "slot {slot} moves to {port}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The port of master `node`.
    pub fn port(&self, node: usize) -> u16 {
        self.ports[node]
    }
}

impl TestRedisReplica {
    /// Its port.
    pub fn port(&self) -> u16 {
        self.port
    }
}

impl Drop for TestRedisCluster {
    fn drop(&mut self) {
        for node in 0..Self::MASTERS {
            self.stop(node);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A PostgreSQL for tests: our own server (`initdb` and `pg_ctl` of Debian's `postgresql`, as
/// the `postgres` user when the tests run as root, since Postgres refuses root) in a temporary
/// directory on a free loopback port, or the one named by `IDEM_TEST_DATABASE_URL`.
pub struct TestPostgres {
    url: String,
    server: Option<PgServer>,
}

/// A server this test started: its binaries, directory and port.
struct PgServer {
    bin: std::path::PathBuf,
    dir: std::path::PathBuf,
    port: u16,
    as_postgres_user: bool,
    running: bool,
}

impl TestPostgres {
    /// Starts one, or `None` (the test should skip) when there is no PostgreSQL to start and
    /// no `IDEM_TEST_DATABASE_URL`. With `IDEM_REQUIRE_POSTGRES=1`, a missing PostgreSQL
    /// panics instead.
    pub fn start() -> Option<Self> {
        if let Ok(url) = std::env::var("IDEM_TEST_DATABASE_URL") {
            if !url.is_empty() {
                return Some(Self { url, server: None });
            }
        }
        Self::start_owned()
    }

    /// Starts a server of this test's own even when `IDEM_TEST_DATABASE_URL` names one, for
    /// tests that stop and restart it, or create roles on it; `None` (the test should skip)
    /// when there is no PostgreSQL to start, and a panic instead with
    /// `IDEM_REQUIRE_POSTGRES=1`.
    pub fn start_owned() -> Option<Self> {
        match PgServer::init() {
            Ok(server) => Some(Self {
                url: format!(
                    "postgres://postgres@127.0.0.1:{}/postgres?sslmode=disable",
                    server.port
                ),
                server: Some(server),
            }),
            Err(e) if std::env::var("IDEM_REQUIRE_POSTGRES").as_deref() == Ok("1") => {
                panic!("IDEM_REQUIRE_POSTGRES=1 but PostgreSQL could not start: {e}")
            }
            Err(e) => {
                eprintln!("skipped: no PostgreSQL for this test to start ({e}); install postgresql (a test that needs no server of its own also takes IDEM_TEST_DATABASE_URL)");
                None
            }
        }
    }

    /// Its URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// A plain pool, for what a test writes and looks at itself.
    pub async fn inspect(&self) -> sqlx::PgPool {
        sqlx::PgPool::connect(&self.url)
            .await
            .expect("connect to test Postgres")
    }

    /// Whether this test started the server (and so can stop and restart it).
    pub fn owned(&self) -> bool {
        self.server.is_some()
    }

    /// A table name no other test run uses, for a server the tests may share.
    pub fn table(&self, name: &str) -> String {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        format!(
            "{name}_{}_{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        )
    }

    /// Stops the server at once, as a crash would (an outage); its data stays.
    pub fn stop(&mut self) {
        if let Some(server) = &mut self.server {
            server.stop();
        }
    }

    /// Starts it again on the same port, with the data it had.
    pub fn restart(&mut self) {
        let server = self
            .server
            .as_mut()
            .expect("an external server cannot be restarted");
        server.stop();
        server.start().expect("restart PostgreSQL");
    }
}

impl Drop for TestPostgres {
    fn drop(&mut self) {
        if let Some(server) = &mut self.server {
            server.stop();
            let _ = std::fs::remove_dir_all(&server.dir);
        }
    }
}

impl PgServer {
    /// The newest `initdb` and `pg_ctl` installed (Debian keeps them off the PATH).
    fn bin() -> Result<std::path::PathBuf, String> {
        let mut versions: Vec<(u32, std::path::PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
            .map_err(|e| format!("/usr/lib/postgresql: {e}"))?
            .filter_map(|entry| {
                let entry = entry.ok()?;
                let version = entry.file_name().to_str()?.parse().ok()?;
                let bin = entry.path().join("bin");
                bin.join("initdb").exists().then_some((version, bin))
            })
            .collect();
        versions.sort();
        versions
            .pop()
            .map(|(_, bin)| bin)
            .ok_or_else(|| "no initdb under /usr/lib/postgresql/*/bin".into())
    }

    fn init() -> Result<Self, String> {
        let bin = Self::bin()?;
        let as_postgres_user = std::process::Command::new("id")
            .arg("-u")
            .output()
            .map(|out| out.stdout.starts_with(b"0\n"))
            .unwrap_or(false);
        let port = free_port()?;
        let dir = std::env::temp_dir().join(format!("idem-pg-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let mut server = Self {
            bin,
            dir,
            port,
            as_postgres_user,
            running: false,
        };
        if as_postgres_user {
            server.run("chown", |cmd| {
                cmd.arg("postgres:").arg(&server.dir);
            })?;
        }
        let data = server.dir.join("data");
        server.run(server.bin.join("initdb"), |cmd| {
            cmd.arg("-D")
                .arg(&data)
                .args(["-A", "trust", "-U", "postgres", "-E", "UTF8"])
                .args(["--locale=C", "--no-sync"]);
        })?;
        server.start()?;
        Ok(server)
    }

    /// Runs `program` (through `runuser -u postgres` when we are root) and waits for it.
    fn run(
        &self,
        program: impl AsRef<std::ffi::OsStr>,
        args: impl FnOnce(&mut std::process::Command),
    ) -> Result<(), String> {
        let program = program.as_ref();
        let mut cmd = if program == "chown" {
            std::process::Command::new(program)
        } else {
            self.command(program)
        };
        args(&mut cmd);
        let out = cmd
            .stdin(std::process::Stdio::null())
            .output()
            .map_err(|e| format!("{}: {e}", program.to_string_lossy()))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "{} failed: {}{}",
                program.to_string_lossy(),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    }

    /// A command running `program` as the `postgres` user when we are root (PostgreSQL and
    /// PgBouncer refuse to run as root), through `runuser`.
    fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> std::process::Command {
        if self.as_postgres_user {
            let mut cmd = std::process::Command::new("runuser");
            cmd.args(["-u", "postgres", "--"]).arg(program);
            cmd
        } else {
            std::process::Command::new(program)
        }
    }

    fn start(&mut self) -> Result<(), String> {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200",
            self.port,
            self.dir.display()
        );
        let (data, log) = (self.dir.join("data"), self.dir.join("log"));
        self.run(self.bin.join("pg_ctl"), |cmd| {
            cmd.arg("-D").arg(&data).arg("-l").arg(&log);
            cmd.args(["-w", "-t", "30", "-o", &options, "start"]);
        })?;
        self.running = true;
        Ok(())
    }

    fn stop(&mut self) {
        if std::mem::take(&mut self.running) {
            let data = self.dir.join("data");
            let _ = self.run(self.bin.join("pg_ctl"), |cmd| {
                cmd.arg("-D").arg(&data);
                cmd.args(["-m", "immediate", "-w", "stop"]);
            });
        }
    }
}

/// A PgBouncer in session mode in front of a [`TestPostgres`] this test started, on a free
/// loopback port, as the `postgres` user when the test runs as root (PgBouncer refuses root).
/// Stopped when dropped.
pub struct TestPgBouncer {
    url: String,
    child: std::process::Child,
    dir: std::path::PathBuf,
}

impl TestPgBouncer {
    /// Starts one in front of `pg`, or `None` (the test should skip) when `pgbouncer` is not
    /// installed; with `IDEM_REQUIRE_PGBOUNCER=1`, a missing one panics instead.
    pub fn start(pg: &TestPostgres) -> Option<Self> {
        let server = pg.server.as_ref().expect("a server the test started");
        match Self::spawn(server) {
            Ok(bouncer) => Some(bouncer),
            Err(e) if std::env::var("IDEM_REQUIRE_PGBOUNCER").as_deref() == Ok("1") => {
                panic!("IDEM_REQUIRE_PGBOUNCER=1 but PgBouncer could not start: {e}")
            }
            Err(e) => {
                eprintln!("skipped: no PgBouncer for this test to start ({e}); install pgbouncer");
                None
            }
        }
    }

    fn spawn(server: &PgServer) -> Result<Self, String> {
        let program = ["/usr/sbin/pgbouncer", "/usr/bin/pgbouncer"]
            .into_iter()
            .find(|path| std::path::Path::new(path).exists())
            .ok_or("no pgbouncer in /usr/sbin or /usr/bin")?;
        let port = free_port()?;
        let dir = server.dir.join(format!("pgbouncer-{port}"));
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let ini = dir.join("pgbouncer.ini");
        let users = dir.join("users.txt");
        // sqlx sends `extra_float_digits` on every connection, which PgBouncer refuses unless
        // told to ignore it.
        let config = format!(
            "[databases]\nidem = host=127.0.0.1 port={} dbname=postgres pool_mode=session\n\
             [pgbouncer]\nlisten_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\n\
             auth_type = trust\nauth_file = {}\npidfile = {}\nmax_client_conn = 400\n\
             default_pool_size = 100\nignore_startup_parameters = extra_float_digits\n",
            server.port,
            users.display(),
            dir.join("pgbouncer.pid").display(),
        );
        std::fs::write(&ini, config).map_err(|e| format!("{}: {e}", ini.display()))?;
        std::fs::write(&users, "\"postgres\" \"\"\n")
            .map_err(|e| format!("{}: {e}", users.display()))?;
        if server.as_postgres_user {
            for path in [&dir, &ini, &users] {
                server.run("chown", |cmd| {
                    cmd.arg("postgres:").arg(path);
                })?;
            }
        }
        let child = (server.command(program))
            .arg(&ini)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .map_err(|e| format!("{program}: {e}"))?;
        let mut bouncer = Self {
            url: format!("postgres://postgres@127.0.0.1:{port}/idem?sslmode=disable"),
            child,
            dir,
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Ok(Some(status)) = bouncer.child.try_wait() {
                return Err(format!("pgbouncer exited: {status}"));
            }
            if std::time::Instant::now() > deadline {
                return Err("pgbouncer did not listen within 10 s".into());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(bouncer)
    }

    /// The URL of the database behind it.
    pub fn url(&self) -> &str {
        &self.url
    }
}

impl Drop for TestPgBouncer {
    fn drop(&mut self) {
        // PgBouncer itself, by its pid file, killed at once (a SIGTERM makes PgBouncer 1.23
        // and later wait for its clients): `runuser`, the child when the test runs as root,
        // cannot pass a SIGKILL on, and would leave it running.
        // `runuser` then reaps it and ends.
        match std::fs::read_to_string(self.dir.join("pgbouncer.pid")) {
            Ok(pid) => {
                let _ = std::process::Command::new("kill")
                    .args(["-KILL", pid.trim()])
                    .status();
            }
            Err(_) => {
                let _ = self.child.kill();
            }
        }
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The field of a logged event that names the thread it was logged on.
const THREAD: &str = "thread";

/// The warnings and errors logged by any thread of a test binary, once
/// [`installed`](Self::installed) as its global subscriber: each one's fields, by name (its
/// message under `message`), their values as text.
#[derive(Clone, Default)]
pub struct Warnings(Arc<Mutex<Vec<HashMap<String, String>>>>);

impl Warnings {
    /// The binary's collector, installed as the global subscriber on first use.
    pub fn installed() -> &'static Warnings {
        static WARNINGS: OnceLock<Warnings> = OnceLock::new();
        WARNINGS.get_or_init(|| {
            let warnings = Warnings::default();
            tracing::subscriber::set_global_default(warnings.clone())
                .expect("the test binary's first subscriber");
            warnings
        })
    }

    /// How many messages logged so far contain `text`.
    pub fn containing(&self, text: &str) -> usize {
        self.containing_from(text, "")
    }

    /// How many messages logged so far on threads whose names begin with `threads` contain
    /// `text`: tests of one binary run at once, and another test may log the same message.
    /// A [`TestServer`]'s threads are [`TestServer::threads`]; a test's own thread (where
    /// `#[actix_web::test]` and `#[tokio::test]` poll what they await) is named after it,
    /// [`Warnings::this_thread`].
    pub fn containing_from(&self, text: &str, threads: &str) -> usize {
        let seen = self.0.lock().unwrap();
        seen.iter()
            .filter(|fields| fields.get(THREAD).is_some_and(|t| t.starts_with(threads)))
            .filter(|fields| fields.get("message").is_some_and(|m| m.contains(text)))
            .count()
    }

    /// The name of the calling thread, for [`containing_from`](Self::containing_from).
    pub fn this_thread() -> String {
        std::thread::current().name().unwrap_or_default().to_owned()
    }

    /// The fields of each warning and error logged so far.
    pub fn logged(&self) -> Vec<HashMap<String, String>> {
        self.0.lock().unwrap().clone()
    }
}

thread_local! {
    /// The spans the tests' own subscribers saw entered on this thread, innermost last.
    static ENTERED: std::cell::RefCell<Vec<u64>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// The spans entered on this thread, for the tests' own subscribers: their `enter` and `exit`
/// call [`Entered::enter`] and [`Entered::exit`], and [`Entered::current`] says which span an
/// event or a new span is in.
pub struct Entered;

impl Entered {
    /// `id` entered.
    pub fn enter(id: &tracing::span::Id) {
        ENTERED.with(|entered| entered.borrow_mut().push(id.into_u64()));
    }

    /// `id` left: its innermost entry is removed.
    pub fn exit(id: &tracing::span::Id) {
        ENTERED.with(|entered| {
            let mut entered = entered.borrow_mut();
            if let Some(at) = entered.iter().rposition(|&e| e == id.into_u64()) {
                entered.remove(at);
            }
        });
    }

    /// The innermost span entered on this thread.
    pub fn current() -> Option<u64> {
        ENTERED.with(|entered| entered.borrow().last().copied())
    }
}

/// Records the fields of a span or an event into a map, by name, their values as text: for
/// the tests' own subscribers.
pub struct Fields<'a>(pub &'a mut HashMap<String, String>);

impl tracing::field::Visit for Fields<'_> {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        self.0.insert(field.name().to_owned(), format!("{value:?}"));
    }
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.to_owned());
    }
}

impl tracing::Subscriber for Warnings {
    fn enabled(&self, meta: &tracing::Metadata<'_>) -> bool {
        *meta.level() <= tracing::Level::WARN
    }
    fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        tracing::span::Id::from_u64(1)
    }
    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, event: &tracing::Event<'_>) {
        let mut fields = HashMap::new();
        event.record(&mut Fields(&mut fields));
        fields.insert(THREAD.to_owned(), Warnings::this_thread());
        self.0.lock().unwrap().push(fields);
    }
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}
