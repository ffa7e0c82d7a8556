//! The layer over HTTP/2 (cleartext, prior knowledge: `HttpServer::bind_auto_h2c`), with the
//! `h2` crate as the client, so that streams, resets and frames are the test's to make.
//!
//! Needs actix-web's `http2` feature and the dev-dependencies `h2 = "0.3"`, `http = "0.2"`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use actix_web::dev::ServerHandle;
use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use bytes::Bytes;
use futures_util::stream;
use idem_actix::{idempotent, IdempotencyConfig, MokaStore};
use idem_core::testing::{Fault, FaultyStore};
use idem_tests::{eventually, Counter};
use tokio::sync::Semaphore;

#[derive(Clone)]
struct Probe {
    runs: Counter,
    gate: Arc<Semaphore>,
}

fn probe() -> Probe {
    Probe {
        runs: Counter::default(),
        gate: Arc::new(Semaphore::new(0)),
    }
}

/// Counts its run; waits for the gate with `X-Wait: gate`; answers 201 with its body echoed
/// after the run's number, and a few headers of its own.
#[idempotent]
async fn create(probe: web::Data<Probe>, req: HttpRequest, body: Bytes) -> HttpResponse {
    let n = probe.runs.bump();
    if req.headers().get("x-wait").is_some_and(|v| v == "gate") {
        probe.gate.acquire().await.unwrap().forget();
    }
    let mut out = format!("call_{n}:").into_bytes();
    out.extend_from_slice(&body);
    HttpResponse::Created()
        .insert_header(("Location", format!("/calls/{n}")))
        .insert_header(("X-Custom", "kept"))
        .body(out)
}

/// A stream of unknown length: 100 `a`s, then (after the gate with `X-Wait: gate`) 100 `b`s.
#[idempotent]
async fn streamed(probe: web::Data<Probe>, req: HttpRequest) -> HttpResponse {
    probe.runs.bump();
    let gate = Arc::clone(&probe.gate);
    let wait = req.headers().get("x-wait").is_some_and(|v| v == "gate");
    let body = stream::unfold(0, move |i| {
        let gate = Arc::clone(&gate);
        async move {
            match i {
                0 => Some((Ok::<_, actix_web::Error>(Bytes::from(vec![b'a'; 100])), 1)),
                1 => {
                    if wait {
                        gate.acquire().await.unwrap().forget();
                    }
                    Some((Ok(Bytes::from(vec![b'b'; 100])), 2))
                }
                _ => None,
            }
        }
    });
    HttpResponse::Ok().streaming(body)
}

/// Answers with a hop-by-hop header of its own, as a handler relaying an upstream may.
#[idempotent]
async fn hop(probe: web::Data<Probe>) -> HttpResponse {
    let n = probe.runs.bump();
    HttpResponse::Ok()
        .insert_header(("Keep-Alive", "timeout=5"))
        .insert_header(("Proxy-Connection", "keep-alive"))
        .insert_header(("TE", "trailers"))
        .body(format!("hop_{n}"))
}

/// Strict: a key is required, a mismatch is 422, a duplicate in flight waits; answers with a
/// body of known length, also to HEAD.
#[idempotent(required, mismatch = "unprocessable", in_flight = "wait")]
async fn strict(probe: web::Data<Probe>, req: HttpRequest, body: Bytes) -> HttpResponse {
    let n = probe.runs.bump();
    if req.headers().get("x-wait").is_some_and(|v| v == "gate") {
        probe.gate.acquire().await.unwrap().forget();
    }
    HttpResponse::Ok().body(format!("strict_{n}:{}", body.len()))
}

/// Scoped by the session cookie, as an application behind a proxy may scope by one of its
/// headers.
#[idempotent(scope = "header:Cookie")]
async fn by_cookie(probe: web::Data<Probe>) -> HttpResponse {
    let n = probe.runs.bump();
    HttpResponse::Created().body(format!("cookie_{n}"))
}

/// A one-worker server speaking HTTP/1.1 and HTTP/2 with prior knowledge, on its own thread.
struct Server {
    addr: SocketAddr,
    handle: ServerHandle,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Server {
    fn drop(&mut self) {
        let handle = self.handle.clone();
        let _ = std::thread::spawn(move || {
            actix_web::rt::System::new().block_on(handle.stop(false));
        })
        .join();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn gzip(body: &[u8]) -> Vec<u8> {
    use std::io::Write as _;
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    encoder.write_all(body).unwrap();
    encoder.finish().unwrap()
}

fn start(idem: IdempotencyConfig, probe: Probe) -> Server {
    let (tx, rx) = std::sync::mpsc::channel();
    let thread = std::thread::spawn(move || {
        actix_web::rt::System::new().block_on(async move {
            let data = web::Data::new(probe);
            let server = HttpServer::new(move || {
                App::new()
                    .app_data(idem.clone())
                    .app_data(data.clone())
                    .route("/calls", web::post().to(create))
                    .route("/stream", web::post().to(streamed))
                    .route("/stream", web::head().to(streamed))
                    .route("/hop", web::post().to(hop))
                    .route("/strict", web::post().to(strict))
                    .route("/strict", web::head().to(strict))
                    .route("/cookie", web::post().to(by_cookie))
            })
            .workers(1)
            .disable_signals()
            .shutdown_timeout(1)
            .bind_auto_h2c(("127.0.0.1", 0))
            .expect("bind loopback");
            let addr = server.addrs()[0];
            let server = server.run();
            tx.send((addr, server.handle())).expect("report address");
            server.await.expect("server runs");
        });
    });
    let (addr, handle) = rx.recv().expect("server started");
    Server {
        addr,
        handle,
        thread: Some(thread),
    }
}

/// A server on the embedded store, its probe, and an HTTP/2 connection to it.
async fn served() -> (Probe, Server, H2) {
    let probe = probe();
    let server = start(IdempotencyConfig::new(MokaStore::new()), probe.clone());
    let h2 = H2::connect(server.addr).await;
    (probe, server, h2)
}

/// An HTTP/2 connection; its driver runs on the test's runtime until aborted.
struct H2 {
    send: h2::client::SendRequest<Bytes>,
    driver: tokio::task::JoinHandle<()>,
}

impl H2 {
    async fn connect(addr: SocketAddr) -> Self {
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (send, conn) = h2::client::handshake(tcp).await.expect("h2 handshake");
        let driver = actix_web::rt::spawn(async move {
            let _ = conn.await;
        });
        Self { send, driver }
    }

    /// Opens a stream with `req`'s head, and sends `body` in pieces of `piece` bytes.
    async fn start(
        &mut self,
        req: http::Request<()>,
        body: &[u8],
        piece: usize,
    ) -> (h2::client::ResponseFuture, h2::SendStream<Bytes>) {
        let send = self.send.clone();
        let mut send = send.ready().await.unwrap();
        let (response, mut stream) = send.send_request(req, body.is_empty()).unwrap();
        if !body.is_empty() {
            let pieces: Vec<&[u8]> = body.chunks(piece.max(1)).collect();
            let last = pieces.len() - 1;
            for (i, p) in pieces.into_iter().enumerate() {
                stream.reserve_capacity(p.len());
                let mut sent = 0;
                while sent < p.len() {
                    let cap = std::future::poll_fn(|cx| stream.poll_capacity(cx))
                        .await
                        .expect("capacity")
                        .expect("capacity");
                    let n = cap.min(p.len() - sent);
                    stream
                        .send_data(
                            Bytes::copy_from_slice(&p[sent..sent + n]),
                            i == last && sent + n == p.len(),
                        )
                        .unwrap();
                    sent += n;
                }
            }
        }
        (response, stream)
    }

    async fn send(&mut self, req: http::Request<()>, body: &[u8]) -> Answer {
        self.send_in(req, body, 16 * 1024).await
    }

    async fn send_in(&mut self, req: http::Request<()>, body: &[u8], piece: usize) -> Answer {
        let (response, _stream) = self.start(req, body, piece).await;
        Answer::read(response).await
    }

    /// Opens a stream with `req` and the body `x`, and waits until its handler runs (the
    /// probe counts one more run).
    async fn start_run(
        &mut self,
        req: http::Request<()>,
        probe: &Probe,
    ) -> (h2::client::ResponseFuture, h2::SendStream<Bytes>) {
        let before = probe.runs.get();
        let started = self.start(req, b"x", 1024).await;
        let runs = probe.runs.clone();
        eventually(move || runs.get() == before + 1).await;
        started
    }

    /// The request `head` builds, waiting at the gate, and once its handler runs, five
    /// duplicates on streams of their own: the first's stream, and the duplicates' answers to
    /// come (their streams' ends were sent).
    async fn run_and_duplicates(
        &mut self,
        head: http::request::Builder,
        probe: &Probe,
    ) -> (
        (h2::client::ResponseFuture, h2::SendStream<Bytes>),
        Vec<h2::client::ResponseFuture>,
    ) {
        let head = head.header("x-wait", "gate").body(()).unwrap();
        let req = || {
            let mut req = http::Request::new(());
            *req.method_mut() = head.method().clone();
            *req.uri_mut() = head.uri().clone();
            *req.headers_mut() = head.headers().clone();
            req
        };
        let first = self.start_run(req(), probe).await;
        let mut duplicates = Vec::new();
        for _ in 0..5 {
            duplicates.push(self.start(req(), b"x", 1024).await.0);
        }
        (first, duplicates)
    }

    /// Opens a stream with `req`, for a streamed answer (200, pieces of 100 `a`s), reads its
    /// first piece, then resets the stream, drops its body and gives the server 100 ms to
    /// read the reset.
    async fn reset_after_first_piece(&mut self, req: http::Request<()>) {
        let (response, mut stream) = self.start(req, b"", 1024).await;
        let res = response.await.unwrap();
        assert_eq!(res.status(), 200);
        let mut body = res.into_body();
        let first = body.data().await.unwrap().unwrap();
        assert_eq!(&first[..], &[b'a'; 100][..]);
        stream.send_reset(h2::Reason::CANCEL);
        drop(body);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    /// Sends the request `make` builds, with `body`, until it is answered other than `status`
    /// (a 409 while a run goes on, a 503 while the worker is at its bound), for up to 2 s.
    async fn send_until_not(
        &mut self,
        status: u16,
        make: impl Fn() -> http::Request<()>,
        body: &[u8],
    ) -> Answer {
        for _ in 0..200 {
            let res = self.send(make(), body).await;
            if res.status != status {
                return res;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("still answered {status} after 2 s")
    }
}

impl Drop for H2 {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

#[derive(Debug)]
struct Answer {
    status: u16,
    headers: http::HeaderMap,
    body: Vec<u8>,
}

impl Answer {
    async fn read(response: h2::client::ResponseFuture) -> Self {
        let res = response.await.expect("a response");
        let (parts, mut body) = res.into_parts();
        let mut bytes = Vec::new();
        while let Some(chunk) = body.data().await {
            // A server that answered before reading the whole request ends the stream with
            // RST_STREAM(NO_ERROR) after its answer (RFC 9113 8.1), which h2 reports as an
            // error: the answer stands, as hyper's client takes it.
            let chunk = match chunk {
                Err(e) if e.reason() == Some(h2::Reason::NO_ERROR) => break,
                chunk => chunk.expect("a body"),
            };
            let _ = body.flow_control().release_capacity(chunk.len());
            bytes.extend_from_slice(&chunk);
        }
        Self {
            status: parts.status.as_u16(),
            headers: parts.headers,
            body: bytes,
        }
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|v| v.to_str().unwrap())
    }

    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|_| {
            panic!("json body: {}", String::from_utf8_lossy(&self.body));
        })
    }
}

fn request(addr: SocketAddr, method: &str, path: &str, key: &str) -> http::request::Builder {
    http::Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"))
        .header("authorization", "Bearer tenant-1")
        .header("idempotency-key", key)
}

#[actix_web::test]
async fn a_keyed_post_is_replayed_over_http2() {
    let (probe, server, mut h2) = served().await;
    let req = || {
        request(server.addr, "POST", "/calls", "k-1")
            .body(())
            .unwrap()
    };
    let first = h2.send(req(), b"{\"a\":1}").await;
    let second = h2.send(req(), b"{\"a\":1}").await;
    assert_eq!(first.status, 201, "{first:?}");
    assert_eq!(second.status, 201, "{second:?}");
    assert_eq!(first.body, b"call_1:{\"a\":1}");
    assert_eq!(second.body, first.body);
    assert_eq!(second.header("location"), Some("/calls/1"));
    assert_eq!(second.header("x-custom"), Some("kept"));
    assert_eq!(first.header("idempotent-replayed"), None);
    assert_eq!(second.header("idempotent-replayed"), Some("true"));
    assert_eq!(probe.runs.get(), 1);
}

/// A stream reset while its handler runs (RST_STREAM, the connection kept): the run goes on,
/// is recorded, and the retry on a new stream gets the replay.
#[actix_web::test]
async fn a_reset_stream_s_run_finishes_and_its_retry_is_replayed() {
    let (probe, server, mut h2) = served().await;
    let req = |wait: &str| {
        request(server.addr, "POST", "/calls", "reset-1")
            .header("x-wait", wait)
            .body(())
            .unwrap()
    };
    let (response, mut stream) = h2.start_run(req("gate"), &probe).await;
    stream.send_reset(h2::Reason::CANCEL);
    drop(response);
    tokio::time::sleep(Duration::from_millis(100)).await;
    probe.gate.add_permits(1);
    let retry = h2.send_until_not(409, || req("no"), b"x").await;
    assert_eq!(retry.status, 201, "{retry:?}");
    assert_eq!(retry.header("idempotent-replayed"), Some("true"));
    assert_eq!(probe.runs.get(), 1);
}

/// With a bound of one run for clients that went away, a run whose stream was reset is such a
/// run: the next key is refused 503 `idempotency_overloaded` until it finishes (as over
/// HTTP/1.1, where `detached.rs` holds the bound). actix never tells that a stream was reset,
/// so every HTTP/2 run counts while it runs.
#[actix_web::test]
async fn a_reset_stream_s_run_counts_toward_the_bound_of_runs_for_clients_gone() {
    let probe = probe();
    let idem = IdempotencyConfig::new(MokaStore::new()).with_max_detached(1);
    let server = start(idem, probe.clone());
    let mut h2 = H2::connect(server.addr).await;
    let req = request(server.addr, "POST", "/calls", "gone")
        .header("x-wait", "gate")
        .body(())
        .unwrap();
    let (_response, mut stream) = h2.start_run(req, &probe).await;
    stream.send_reset(h2::Reason::CANCEL);
    for n in 1..=2 {
        let req = request(server.addr, "POST", "/calls", &format!("next-{n}"))
            .body(())
            .unwrap();
        let refused = h2.send(req, b"x").await;
        assert_eq!(refused.status, 503, "{refused:?}");
        assert_eq!(refused.json()["error"]["code"], "idempotency_overloaded");
        assert!(refused.header("retry-after").is_some());
    }
    assert_eq!(probe.runs.get(), 1, "nothing ran past the bound");
    // Once the run finished, the worker takes new keys again.
    probe.gate.add_permits(10);
    let addr = server.addr;
    let after = || request(addr, "POST", "/calls", "after").body(()).unwrap();
    let after = h2.send_until_not(503, after, b"x").await;
    assert_eq!(after.status, 201, "{after:?}");
    assert_eq!(probe.runs.get(), 2);
}

/// A streamed response whose client resets its stream after the first piece: read on without
/// it and recorded, so the retry is a replay of the whole body.
#[actix_web::test]
async fn a_streamed_response_whose_stream_is_reset_is_read_on_and_recorded() {
    let (probe, server, mut h2) = served().await;
    let req = |wait: &str| {
        request(server.addr, "POST", "/stream", "s-1")
            .header("x-wait", wait)
            .body(())
            .unwrap()
    };
    h2.reset_after_first_piece(req("gate")).await;
    probe.gate.add_permits(1);
    let retry = h2.send_until_not(409, || req("no"), b"").await;
    assert_eq!(retry.status, 200, "{retry:?}");
    assert_eq!(retry.body.len(), 200);
    assert_eq!(retry.header("idempotent-replayed"), Some("true"));
    assert_eq!(probe.runs.get(), 1);
}

/// A HEAD answered with a stream: HTTP/2 sends no body and actix never reads it; the record
/// must still be written and the retry replayed.
#[actix_web::test]
async fn a_streamed_answer_to_head_is_recorded() {
    let (probe, server, mut h2) = served().await;
    let req = || {
        request(server.addr, "HEAD", "/stream", "head-1")
            .body(())
            .unwrap()
    };
    let first = h2.send(req(), b"").await;
    assert_eq!(first.status, 200, "{first:?}");
    assert!(first.body.is_empty());
    let retry = h2.send_until_not(409, req, b"").await;
    assert_eq!(retry.status, 200, "{retry:?}");
    assert_eq!(retry.header("idempotent-replayed"), Some("true"));
    assert_eq!(probe.runs.get(), 1);
}

/// Duplicates on streams of one connection while the first runs: one run, the others 409
/// with `Retry-After`.
#[actix_web::test]
async fn concurrent_duplicates_on_one_connection_run_once() {
    let (probe, server, mut h2) = served().await;
    let (first, dups) = h2
        .run_and_duplicates(request(server.addr, "POST", "/calls", "dup-1"), &probe)
        .await;
    for response in dups {
        let res = Answer::read(response).await;
        assert_eq!(res.status, 409, "{res:?}");
        assert!(res.header("retry-after").is_some());
        assert_eq!(res.header("cache-control"), Some("no-store"));
        assert_eq!(res.json()["error"]["code"], "idempotency_conflict");
    }
    probe.gate.add_permits(1);
    let first = Answer::read(first.0).await;
    assert_eq!(first.status, 201);
    assert_eq!(probe.runs.get(), 1);
}

/// A body in many DATA frames, without Content-Length, larger than 16 KiB: the same body is a
/// replay, another is a mismatch.
#[actix_web::test]
async fn a_large_body_in_many_frames_is_fingerprinted_whole() {
    let (probe, server, mut h2) = served().await;
    let body: Vec<u8> = (0..100_000u32).map(|i| b'a' + (i % 26) as u8).collect();
    let req = || {
        request(server.addr, "POST", "/calls", "big-1")
            .body(())
            .unwrap()
    };
    let first = h2.send_in(req(), &body, 1000).await;
    let second = h2.send_in(req(), &body, 7).await;
    assert_eq!(first.status, 201);
    assert_eq!(first.body.len(), "call_1:".len() + body.len());
    assert_eq!(second.status, 201);
    assert_eq!(second.header("idempotent-replayed"), Some("true"));
    assert_eq!(second.body, first.body);
    let mut other = body.clone();
    other[99_999] = b'!';
    let third = h2.send_in(req(), &other, 4096).await;
    assert_eq!(third.status, 409, "{third:?}");
    assert_eq!(probe.runs.get(), 1);
}

/// A body over the limit (2 MiB by default): 413 `idempotency_body_too_large`, nothing run,
/// and the connection goes on serving.
#[actix_web::test]
async fn a_body_over_the_limit_is_413_and_the_connection_goes_on() {
    let (probe, server, mut h2) = served().await;
    let body = vec![b'x'; 3 << 20];
    let req = request(server.addr, "POST", "/calls", "huge-1")
        .body(())
        .unwrap();
    let (response, _stream) = {
        // The server may answer before the body is all sent; send what it takes.
        let send = h2.send.clone();
        let mut send = send.ready().await.unwrap();
        let (response, mut stream) = send.send_request(req, false).unwrap();
        let sending = actix_web::rt::spawn(async move {
            for piece in body.chunks(16 * 1024) {
                stream.reserve_capacity(piece.len());
                match std::future::poll_fn(|cx| stream.poll_capacity(cx)).await {
                    Some(Ok(_)) => {}
                    _ => return,
                }
                if stream
                    .send_data(Bytes::copy_from_slice(piece), false)
                    .is_err()
                {
                    return;
                }
            }
            let _ = stream.send_data(Bytes::new(), true);
        });
        (response, sending)
    };
    let res = Answer::read(response).await;
    assert_eq!(res.status, 413, "{res:?}");
    assert_eq!(res.json()["error"]["code"], "idempotency_body_too_large");
    assert_eq!(probe.runs.get(), 0);
    let after = h2
        .send(
            request(server.addr, "POST", "/calls", "after-1")
                .body(())
                .unwrap(),
            b"y",
        )
        .await;
    assert_eq!(after.status, 201);
}

/// A handler's hop-by-hop headers (which HTTP/2 forbids) are neither sent in the first answer
/// nor in its replay: the client (h2 checks it) would refuse either as malformed.
#[actix_web::test]
async fn hop_by_hop_headers_break_neither_answer() {
    let (_probe, server, mut h2) = served().await;
    let req = || {
        request(server.addr, "POST", "/hop", "hop-1")
            .body(())
            .unwrap()
    };
    let first = h2.send(req(), b"").await;
    let second = h2.send(req(), b"").await;
    assert_eq!(first.status, 200);
    assert_eq!(second.status, 200);
    assert_eq!(second.body, first.body);
    assert_eq!(second.header("idempotent-replayed"), Some("true"));
}

/// A client whose connection goes away (TCP closed, no GOAWAY) while its handler runs: the
/// run goes on, is recorded, and the retry on a new connection gets the replay.
#[actix_web::test]
async fn a_lost_connection_s_run_finishes_and_its_retry_is_replayed() {
    let probe = probe();
    let server = start(IdempotencyConfig::new(MokaStore::new()), probe.clone());
    let req = |wait: &str| {
        request(server.addr, "POST", "/calls", "conn-1")
            .header("x-wait", wait)
            .body(())
            .unwrap()
    };
    {
        let mut h2 = H2::connect(server.addr).await;
        let (_response, _stream) = h2.start_run(req("gate"), &probe).await;
    } // The connection's driver aborted: the socket closes.
    tokio::time::sleep(Duration::from_millis(100)).await;
    probe.gate.add_permits(1);
    let mut h2 = H2::connect(server.addr).await;
    let retry = h2.send_until_not(409, || req("no"), b"x").await;
    assert_eq!(retry.status, 201, "{retry:?}");
    assert_eq!(retry.body, b"call_1:x");
    assert_eq!(retry.header("idempotent-replayed"), Some("true"));
    assert_eq!(probe.runs.get(), 1);
}

/// As [`a_reset_stream_s_run_counts_toward_the_bound_of_runs_for_clients_gone`], for clients
/// whose connections are lost: each a run for a client gone.
#[actix_web::test]
async fn a_lost_connection_s_run_counts_toward_the_bound_of_runs_for_clients_gone() {
    let probe = probe();
    let idem = IdempotencyConfig::new(MokaStore::new()).with_max_detached(1);
    let server = start(idem, probe.clone());
    let mut answers = Vec::new();
    for n in 1..=3 {
        let mut h2 = H2::connect(server.addr).await;
        let req = request(server.addr, "POST", "/calls", &format!("lost-{n}"))
            .header("x-wait", "gate")
            .body(())
            .unwrap();
        let (response, _stream) = h2.start(req, b"x", 1024).await;
        // Give the server the time to start the run, or to refuse it.
        tokio::time::sleep(Duration::from_millis(200)).await;
        drop(h2);
        answers.push(response);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let runs = probe.runs.get();
    probe.gate.add_permits(10);
    assert_eq!(runs, 1, "{runs} runs for clients gone past a bound of 1");
}

/// A streamed answer whose client reset its stream while the body waits for its next piece:
/// actix reads the reset only when it sends that piece, so the body is not known to be gone,
/// and counted toward the bound of runs for clients gone while actix holds it; one connection
/// could otherwise pile up any number of such streams. Once the piece comes, the body is read
/// on without its client, recorded, and the worker takes new keys again.
#[actix_web::test]
async fn a_streamed_answer_whose_stream_was_reset_counts_toward_the_bound_of_runs_for_clients_gone()
{
    let probe = probe();
    let idem = IdempotencyConfig::new(MokaStore::new()).with_max_detached(1);
    let server = start(idem, probe.clone());
    let mut h2 = H2::connect(server.addr).await;
    let addr = server.addr;
    let streamed = |key: &str| {
        request(addr, "POST", "/stream", key)
            .header("x-wait", "gate")
            .body(())
            .unwrap()
    };
    h2.reset_after_first_piece(streamed("s-1")).await;
    for n in 2..=3 {
        // Bounded: a stream the bound let in would wait at the gate.
        let refused = h2.send(streamed(&format!("s-{n}")), b"");
        let refused = tokio::time::timeout(Duration::from_secs(2), refused)
            .await
            .expect("refused at once, not let in past the bound");
        assert_eq!(refused.status, 503, "{refused:?}");
        assert_eq!(refused.json()["error"]["code"], "idempotency_overloaded");
    }
    assert_eq!(probe.runs.get(), 1, "nothing ran past the bound");
    // The next piece: the body is dropped, read on without its client, and recorded.
    probe.gate.add_permits(10);
    let plain = || request(addr, "POST", "/stream", "s-1").body(()).unwrap();
    // Until that recording ends, the bound is still taken: the replay may be refused 503 too.
    let mut replay = h2.send_until_not(409, plain, b"").await;
    for _ in 0..200 {
        if replay.status != 503 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
        replay = h2.send_until_not(409, plain, b"").await;
    }
    assert_eq!(replay.status, 200, "{replay:?}");
    assert_eq!(replay.body.len(), 200);
    assert_eq!(replay.header("idempotent-replayed"), Some("true"));
    let next = || request(addr, "POST", "/stream", "s-4").body(()).unwrap();
    let next = h2.send_until_not(503, next, b"").await;
    assert_eq!(next.status, 200, "{next:?}");
    assert_eq!(probe.runs.get(), 2);
}

/// A gzip body over HTTP/2: decoded as over HTTP/1.1, replayed on the same, mismatched on
/// another.
#[actix_web::test]
async fn a_gzip_body_is_decoded_and_replayed() {
    let (probe, server, mut h2) = served().await;
    let plain: Vec<u8> = (0..50_000u32).map(|i| b'a' + (i % 7) as u8).collect();
    let req = || {
        request(server.addr, "POST", "/calls", "gz-1")
            .header("content-encoding", "gzip")
            .body(())
            .unwrap()
    };
    let first = h2.send_in(req(), &gzip(&plain), 100).await;
    assert_eq!(first.status, 201, "{first:?}");
    assert_eq!(&first.body["call_1:".len()..], &plain[..]);
    let second = h2.send_in(req(), &gzip(&plain), 3000).await;
    assert_eq!(second.status, 201);
    assert_eq!(second.header("idempotent-replayed"), Some("true"));
    assert_eq!(second.body, first.body);
    let third = h2.send(req(), &gzip(b"other")).await;
    assert_eq!(third.status, 409, "{third:?}");
    assert_eq!(probe.runs.get(), 1);
}

/// The layer's own errors over HTTP/2: 400 (missing, invalid key; no scope), 422 and 503,
/// each a well-formed answer in its envelope, with `Cache-Control: no-store`.
#[actix_web::test]
async fn the_layer_s_own_errors_are_well_formed() {
    let probe = probe();
    let store = FaultyStore::new(MokaStore::new());
    let server = start(IdempotencyConfig::new(store.clone()), probe.clone());
    let mut h2 = H2::connect(server.addr).await;
    let post = |key: Option<&str>| {
        let mut b = http::Request::builder()
            .method("POST")
            .uri(format!("http://{}/strict", server.addr))
            .header("authorization", "Bearer tenant-1")
            .header("x-request-id", "req-42");
        if let Some(key) = key {
            b = b.header("idempotency-key", key);
        }
        b.body(()).unwrap()
    };
    let check = |res: &Answer, status: u16, code: &str| {
        assert_eq!(res.status, status, "{res:?}");
        assert_eq!(res.header("content-type"), Some("application/json"));
        assert_eq!(res.header("cache-control"), Some("no-store"));
        assert_eq!(res.header("x-request-id"), Some("req-42"));
        let body = res.json();
        assert_eq!(body["error"]["code"], code, "{body}");
        assert_eq!(body["request_id"], "req-42");
    };
    check(
        &h2.send(post(None), b"a").await,
        400,
        "idempotency_key_missing",
    );
    check(
        &h2.send(post(Some("\"a b\"")), b"a").await,
        400,
        "idempotency_key_invalid",
    );
    let no_scope = http::Request::builder()
        .method("POST")
        .uri(format!("http://{}/strict", server.addr))
        .header("idempotency-key", "k")
        .header("x-request-id", "req-42")
        .body(())
        .unwrap();
    check(
        &h2.send(no_scope, b"a").await,
        400,
        "idempotency_scope_missing",
    );
    assert_eq!(h2.send(post(Some("e-1")), b"a").await.status, 200);
    check(
        &h2.send(post(Some("e-1")), b"bb").await,
        422,
        "idempotency_conflict",
    );
    store.fail("claim", 1, Fault::Unavailable);
    let down = h2.send(post(Some("e-2")), b"a").await;
    check(&down, 503, "idempotency_store_unavailable");
    assert!(down.header("retry-after").is_some());
    assert_eq!(probe.runs.get(), 1);
}

/// A HEAD answered with a body of known length: both answers carry its length, no body.
#[actix_web::test]
async fn a_head_s_length_is_replayed() {
    let (probe, server, mut h2) = served().await;
    let req = || {
        request(server.addr, "HEAD", "/strict", "h-1")
            .body(())
            .unwrap()
    };
    let first = h2.send(req(), b"").await;
    let second = h2.send(req(), b"").await;
    assert_eq!(first.status, 200);
    assert_eq!(second.status, 200);
    assert_eq!(first.header("content-length"), Some("10"), "{first:?}");
    assert_eq!(second.header("content-length"), Some("10"), "{second:?}");
    assert!(first.body.is_empty() && second.body.is_empty());
    assert_eq!(second.header("idempotent-replayed"), Some("true"));
    assert_eq!(probe.runs.get(), 1);
}

/// `in_flight = "wait"` over streams of one connection: every duplicate waits and replays.
#[actix_web::test]
async fn waiting_duplicates_on_one_connection_replay() {
    let (probe, server, mut h2) = served().await;
    let (first, dups) = h2
        .run_and_duplicates(request(server.addr, "POST", "/strict", "w-1"), &probe)
        .await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    probe.gate.add_permits(1);
    let first = Answer::read(first.0).await;
    assert_eq!(first.status, 200);
    for response in dups {
        let res = Answer::read(response).await;
        assert_eq!(res.status, 200, "{res:?}");
        assert_eq!(res.body, first.body);
        assert_eq!(res.header("idempotent-replayed"), Some("true"));
    }
    assert_eq!(probe.runs.get(), 1);
}

/// HTTP/2 clients may send the cookies of one request as several `cookie` fields (RFC 9113
/// 8.2.3, which says a server passes them on joined): a scope read from `Cookie` must take
/// them as the one header they are, as it does over HTTP/1.1.
#[actix_web::test]
async fn a_cookie_split_into_fields_is_one_scope() {
    let (probe, server, mut h2) = served().await;
    let req = http::Request::builder()
        .method("POST")
        .uri(format!("http://{}/cookie", server.addr))
        .header("idempotency-key", "c-1")
        .header("cookie", "session=s1")
        .header("cookie", "theme=dark")
        .body(())
        .unwrap();
    let res = h2.send(req, b"").await;
    assert_eq!(
        res.status,
        201,
        "{res:?} {}",
        String::from_utf8_lossy(&res.body)
    );
    // The same cookies in one field are the same scope: the key's replay.
    let one_field = |cookie: &str| {
        http::Request::builder()
            .method("POST")
            .uri(format!("http://{}/cookie", server.addr))
            .header("idempotency-key", "c-1")
            .header("cookie", cookie)
            .body(())
            .unwrap()
    };
    let replay = h2.send(one_field("session=s1; theme=dark"), b"").await;
    assert_eq!(replay.status, 201, "{replay:?}");
    assert_eq!(replay.body, res.body);
    assert_eq!(replay.header("idempotent-replayed"), Some("true"));
    // Another session's cookies are another scope: the key runs there anew.
    let other = h2.send(one_field("session=s2; theme=dark"), b"").await;
    assert_eq!(other.status, 201, "{other:?}");
    assert_eq!(other.header("idempotent-replayed"), None);
    assert_eq!(probe.runs.get(), 2);
}

/// HTTP/1's parser trims the spaces and tabs around a field value, so that a credential of
/// whitespace alone arrives empty; HTTP/2 hands it on as sent. Whitespace is no credential
/// either way: such a request is refused for want of a scope, never put in one that every
/// caller sending the same whitespace shares.
#[actix_web::test]
async fn a_credential_of_whitespace_alone_over_http2_is_no_scope() {
    let (probe, server, mut h2) = served().await;
    let blank = |path: &str, name: &str, value: &str| {
        http::Request::builder()
            .method("POST")
            .uri(format!("http://{}{path}", server.addr))
            .header("idempotency-key", "blank-1")
            .header(name, value)
            .body(())
            .unwrap()
    };
    for (path, name, value) in [
        ("/calls", "authorization", " "),
        ("/calls", "authorization", "\t \t"),
        ("/calls", "x-api-key", " "),
        ("/cookie", "cookie", " "),
    ] {
        let res = h2.send(blank(path, name, value), b"{}").await;
        assert_eq!(res.status, 400, "{name}: {value:?}: {res:?}");
        assert_eq!(res.json()["error"]["code"], "idempotency_scope_missing");
    }
    // A credential with whitespace around it is the credential within: the same scope as
    // HTTP/1 gives it.
    let padded = h2
        .send(blank("/calls", "authorization", " Bearer tenant-1 "), b"{}")
        .await;
    assert_eq!(padded.status, 201, "{padded:?}");
    let req = request(server.addr, "POST", "/calls", "blank-1")
        .body(())
        .unwrap();
    let same = h2.send(req, b"{}").await;
    assert_eq!(same.header("idempotent-replayed"), Some("true"), "{same:?}");
    assert_eq!(same.body, padded.body);
    assert_eq!(probe.runs.get(), 1);
}

/// Request trailers after the body: ignored by actix, the request answered as without them.
#[actix_web::test]
async fn request_trailers_change_nothing() {
    let (_probe, server, h2) = served().await;
    let mut answers = Vec::new();
    for _ in 0..2 {
        let req = request(server.addr, "POST", "/calls", "t-1")
            .body(())
            .unwrap();
        let mut send = h2.send.clone().ready().await.unwrap();
        let (response, mut stream) = send.send_request(req, false).unwrap();
        stream
            .send_data(Bytes::from_static(b"body"), false)
            .unwrap();
        let mut trailers = http::HeaderMap::new();
        trailers.insert("x-checksum", "abc".parse().unwrap());
        stream.send_trailers(trailers).unwrap();
        answers.push(
            tokio::time::timeout(Duration::from_secs(5), Answer::read(response))
                .await
                .expect("answered"),
        );
    }
    assert_eq!(answers[0].status, 201, "{:?}", answers[0]);
    assert_eq!(answers[0].body, b"call_1:body");
    assert_eq!(answers[1].body, answers[0].body);
    assert_eq!(answers[1].header("idempotent-replayed"), Some("true"));
}

/// A stream reset while its body is being sent: nothing ran, nothing is held, and the retry
/// runs.
#[actix_web::test]
async fn a_stream_reset_mid_body_claims_nothing() {
    let (probe, server, mut h2) = served().await;
    let req = || {
        request(server.addr, "POST", "/calls", "mid-1")
            .body(())
            .unwrap()
    };
    let mut send = h2.send.clone().ready().await.unwrap();
    let (response, mut stream) = send.send_request(req(), false).unwrap();
    stream
        .send_data(Bytes::from(vec![b'x'; 1000]), false)
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    stream.send_reset(h2::Reason::CANCEL);
    drop(response);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let retry = h2.send(req(), &vec![b'x'; 2000]).await;
    assert_eq!(retry.status, 201, "{retry:?}");
    assert_eq!(retry.header("idempotent-replayed"), None);
    assert_eq!(probe.runs.get(), 1);
}
