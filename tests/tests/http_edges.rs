//! The HTTP edges of the layer, probed over real connections: bodies that arrive oddly
//! (chunked, short, stalled, after `100 Continue`), keys and request ids sent oddly, and
//! responses (cookies, empty bodies, failing streams, hop-by-hop headers) as first sent and
//! as replayed.

use std::net::SocketAddr;
use std::time::Duration;

use actix_web::http::StatusCode;
use actix_web::{post, web, HttpResponse};
use bytes::Bytes;
use idem_actix::idempotent;
use idem_tests::{assert_error, serve, unchunked, Counter, RawRequest, RawResponse, Served};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[post("/plain")]
#[idempotent]
async fn plain(runs: web::Data<Counter>, body: Bytes) -> HttpResponse {
    HttpResponse::Created().body(format!("run {} {} bytes", runs.bump(), body.len()))
}

#[idempotent]
async fn any_method(runs: web::Data<Counter>) -> HttpResponse {
    HttpResponse::Ok().body(format!("run {}", runs.bump()))
}

#[post("/cookies")]
#[idempotent(replay_set_cookie = true)]
async fn cookies(runs: web::Data<Counter>) -> HttpResponse {
    HttpResponse::Created()
        .append_header(("Set-Cookie", "a=1; Path=/"))
        .append_header(("Set-Cookie", "b=2; HttpOnly"))
        .append_header(("Vary", "Origin"))
        .append_header(("Vary", "Accept"))
        .body(format!("run {}", runs.bump()))
}

#[post("/empty/{status}")]
#[idempotent]
async fn empty(runs: web::Data<Counter>, status: web::Path<u16>) -> HttpResponse {
    runs.bump();
    HttpResponse::build(StatusCode::from_u16(*status).unwrap()).finish()
}

#[post("/failing-stream")]
#[idempotent]
async fn failing_stream(runs: web::Data<Counter>) -> HttpResponse {
    runs.bump();
    let pieces: Vec<Result<Bytes, std::io::Error>> = vec![
        Ok(Bytes::from_static(b"first piece ")),
        Err(std::io::Error::other("upstream went away")),
    ];
    HttpResponse::Ok().streaming(futures_util::stream::iter(pieces))
}

#[post("/hop")]
#[idempotent]
async fn hop(runs: web::Data<Counter>) -> HttpResponse {
    let n = runs.bump();
    let pieces: Vec<Result<Bytes, std::io::Error>> = vec![
        Ok(Bytes::from(format!("run {n} "))),
        Ok(Bytes::from_static(b"streamed")),
    ];
    HttpResponse::Ok()
        .insert_header(("Transfer-Encoding", "chunked"))
        .insert_header(("Connection", "close"))
        .insert_header(("Keep-Alive", "timeout=5"))
        .streaming(futures_util::stream::iter(pieces))
}

/// A body of unknown length that yields an empty piece between two others: a `MessageBody`
/// of the handler's own (actix's `BodyStream` skips empty pieces; a body of its own need not).
struct WithEmptyPiece(std::collections::VecDeque<Bytes>);

impl actix_web::body::MessageBody for WithEmptyPiece {
    type Error = std::convert::Infallible;

    fn size(&self) -> actix_web::body::BodySize {
        actix_web::body::BodySize::Stream
    }

    fn poll_next(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Bytes, Self::Error>>> {
        std::task::Poll::Ready(self.get_mut().0.pop_front().map(Ok))
    }
}

#[post("/empty-piece")]
#[idempotent]
async fn empty_piece(runs: web::Data<Counter>) -> HttpResponse {
    let n = runs.bump();
    let pieces = [format!("run {n} "), String::new(), "streamed".to_owned()];
    HttpResponse::Ok().body(WithEmptyPiece(
        pieces.into_iter().map(Bytes::from).collect(),
    ))
}

/// A body of known size that panics when read: a handler's bug that shows only once its
/// answer is read.
struct Panicking;

impl actix_web::body::MessageBody for Panicking {
    type Error = std::convert::Infallible;

    fn size(&self) -> actix_web::body::BodySize {
        actix_web::body::BodySize::Sized(5)
    }

    fn poll_next(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Bytes, Self::Error>>> {
        panic!("the body's bug")
    }
}

#[post("/panicking-body")]
#[idempotent]
async fn panicking_body(runs: web::Data<Counter>) -> HttpResponse {
    runs.bump();
    HttpResponse::Created().body(Panicking)
}

fn app() -> Served {
    serve(|cfg| {
        cfg.service(plain)
            .service(cookies)
            .service(empty)
            .service(failing_stream)
            .service(hop)
            .service(empty_piece)
            .service(panicking_body)
            .service(web::resource("/any").route(web::route().to(any_method)));
    })
}

fn keyed(path: &str, key: &str) -> RawRequest {
    RawRequest::post(path)
        .header("Authorization", "Bearer t")
        .header("Idempotency-Key", key)
}

/// Asserts a layer error: the envelope with `code`, its request id, and `no-store`.
fn assert_layer_error(res: &RawResponse, status: u16, code: &str) {
    assert_error(res, status, code);
    assert_eq!(res.header("cache-control"), Some("no-store"), "{res:?}");
}

/// Writes `bytes`, closes the writing half, and reads everything the server sends back.
async fn exchange(addr: SocketAddr, bytes: &[u8]) -> Vec<u8> {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(bytes).await.unwrap();
    stream.shutdown().await.unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut buf))
        .await
        .expect("an answer within 10 s")
        .unwrap();
    buf
}

/// The responses in `buf`, one after the other, each sized by its `Content-Length` (or to
/// the end when it has none): with each, its raw head.
fn responses(mut buf: &[u8]) -> Vec<(String, RawResponse)> {
    let mut out = Vec::new();
    while let Some(split) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
        let head = String::from_utf8_lossy(&buf[..split]).into_owned();
        let length = head
            .lines()
            .find_map(|l| {
                let (name, value) = l.split_once(':')?;
                name.eq_ignore_ascii_case("content-length")
                    .then(|| value.trim().parse::<usize>().ok())?
            })
            .unwrap_or(buf.len() - split - 4);
        let end = (split + 4 + length).min(buf.len());
        let (one, rest) = buf.split_at(end);
        out.push((head, RawResponse::parse(one)));
        buf = rest;
    }
    out
}

/// A body that ends before its declared length (the client half-closed, or a proxy cut it
/// off) is refused as the layer refuses every request it does not run: its envelope, a
/// stable code, `no-store`; nothing is claimed, so the whole request then runs.
#[actix_web::test]
async fn a_body_that_ends_early_is_refused_in_the_envelope_and_claims_nothing() {
    let s = app();
    let head = "POST /plain HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer t\r\n\
                Idempotency-Key: short\r\nX-Request-ID: req-short\r\n\
                Content-Length: 100\r\n\r\nonly ten b";
    let buf = exchange(s.server.addr, head.as_bytes()).await;
    let answers = responses(&buf);
    assert_eq!(answers.len(), 1, "{}", String::from_utf8_lossy(&buf));
    let (_, short) = &answers[0];
    assert_layer_error(short, 400, "idempotency_body_invalid");
    assert_eq!(short.header("x-request-id"), Some("req-short"));
    assert_eq!(s.runs.get(), 0);

    let whole = s
        .send(&keyed("/plain", "short").body("x".repeat(100)))
        .await;
    assert_eq!(
        (whole.status, whole.text()),
        (201, "run 1 100 bytes".to_owned())
    );
}

/// What a replay repeats of a response, on the wire: several `Set-Cookie` (where allowed) and
/// `Vary` lines in order, empty 204 and 304 answers framed as the first was, a handler's
/// hop-by-hop headers left out; a stream that fails midway releases the key.
#[actix_web::test]
async fn replays_frame_their_bodies_as_the_first_answer_was() {
    let s = app();
    let addr = s.server.addr;
    let first_and_retry = |path: &str| {
        let bytes = keyed(path, &format!("k{path}")).to_bytes();
        async move {
            let first = responses(&exchange(addr, &bytes).await).remove(0);
            let retry = responses(&exchange(addr, &bytes).await).remove(0);
            (first, retry)
        }
    };
    let ((_, first), (_, retry)) = first_and_retry("/cookies").await;
    assert!(retry.replayed());
    assert_eq!(
        retry.headers["set-cookie"],
        ["a=1; Path=/", "b=2; HttpOnly"]
    );
    assert_eq!(retry.headers["vary"], ["Origin", "Accept"]);
    assert_eq!(
        (first.headers["set-cookie"].len(), &first.body),
        (2, &retry.body)
    );

    for path in ["/empty/204", "/empty/304", "/empty/200"] {
        let ((first_head, first), (retry_head, retry)) = first_and_retry(path).await;
        assert!(retry.replayed() && !first.replayed(), "{path}");
        assert!(first.body.is_empty() && retry.body.is_empty(), "{path}");
        let framing = |head: &str| {
            let head = head.to_ascii_lowercase();
            (
                head.contains("content-length"),
                head.contains("transfer-encoding"),
            )
        };
        assert_eq!(framing(&first_head), framing(&retry_head), "{path}");
    }

    let ((first_head, first), (retry_head, retry)) = first_and_retry("/hop").await;
    // The stream went out as it came; its replay, in one piece.
    assert!(first_head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked"));
    assert_eq!(
        (unchunked(&first.body), retry.text()),
        (b"run 5 streamed".to_vec(), "run 5 streamed".into())
    );
    assert!(retry.replayed());
    let retry_head = retry_head.to_ascii_lowercase();
    assert!(!retry_head.contains("keep-alive") && !retry_head.contains("transfer-encoding"));

    // A stream goes out as it comes: one that fails breaks off (here before anything was
    // flushed), is not recorded, and its key is released before it breaks off, so that the
    // retry its client sends at once runs it again.
    let failing = keyed("/failing-stream", "k/failing-stream").to_bytes();
    let first = exchange(addr, &failing).await;
    assert!(!first.ends_with(b"0\r\n\r\n"), "never a whole answer");
    exchange(addr, &failing).await;
    assert_eq!(s.runs.get(), 7, "a failed stream is not recorded");
}

/// A stream that yields an empty piece goes out whole, as it is recorded: an empty chunk on
/// the wire would end a chunked answer there, and the first client would get less than its
/// retries are replayed.
#[actix_web::test]
async fn a_stream_with_an_empty_piece_goes_out_whole_as_it_is_replayed() {
    let s = app();
    let bytes = keyed("/empty-piece", "k/empty-piece").to_bytes();
    let (_, first) = responses(&exchange(s.server.addr, &bytes).await).remove(0);
    assert_eq!(first.status, 200);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let retry = loop {
        let (_, retry) = responses(&exchange(s.server.addr, &bytes).await).remove(0);
        if retry.replayed() {
            break retry;
        }
        assert!(std::time::Instant::now() < deadline, "never replayed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(retry.text(), "run 1 streamed");
    assert_eq!(
        String::from_utf8_lossy(&unchunked(&first.body)),
        retry.text(),
        "the first client got what its retries get"
    );
    assert_eq!(s.runs.get(), 1);
}

/// Keyed requests on one connection: `Expect: 100-continue` is answered before the body,
/// and pipelined duplicates of one key are answered in order, the first run and the rest
/// replayed.
#[actix_web::test]
async fn expect_continue_and_pipelined_duplicates_are_answered_in_order() {
    let s = app();
    let one = "POST /plain HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer t\r\n\
               Idempotency-Key: pipe\r\nContent-Length: 3\r\n";
    let mut c = TcpStream::connect(s.server.addr).await.unwrap();
    c.write_all(format!("{one}Expect: 100-continue\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut cont = [0u8; 25];
    c.read_exact(&mut cont).await.unwrap();
    assert_eq!(&cont, b"HTTP/1.1 100 Continue\r\n\r\n");
    let mut rest = b"abc".to_vec();
    rest.extend_from_slice(format!("{one}\r\nabc").as_bytes());
    rest.extend_from_slice(format!("{one}Connection: close\r\n\r\nabc").as_bytes());
    c.write_all(&rest).await.unwrap();
    let mut buf = Vec::new();
    c.read_to_end(&mut buf).await.unwrap();
    let answers = responses(&buf);
    assert_eq!(answers.len(), 3, "{}", String::from_utf8_lossy(&buf));
    for (n, (_, res)) in answers.iter().enumerate() {
        assert_eq!((res.status, res.text()), (201, "run 1 3 bytes".to_owned()));
        assert_eq!(res.replayed(), n > 0);
    }
    assert_eq!(s.runs.get(), 1);
}

/// Under the attribute, a key is honoured whatever the method: HEAD and OPTIONS replay too, a
/// HEAD replay framed as its first answer (the length of the body it does not send).
#[actix_web::test]
async fn head_and_options_with_a_key_run_once_and_replay() {
    let s = app();
    for method in ["HEAD", "OPTIONS"] {
        let req = RawRequest::new(method, "/any")
            .header("Authorization", "Bearer t")
            .header("Idempotency-Key", method);
        let (first_head, first) =
            responses(&exchange(s.server.addr, &req.to_bytes()).await).remove(0);
        let (retry_head, retry) =
            responses(&exchange(s.server.addr, &req.to_bytes()).await).remove(0);
        assert_eq!((first.status, retry.status), (200, 200), "{method}");
        assert!(retry.replayed() && !first.replayed(), "{method}");
        assert_eq!(
            first.header("content-length"),
            retry.header("content-length")
        );
        assert_eq!(first.body, retry.body, "{method}");
        assert!(!first_head.is_empty() && !retry_head.is_empty());
    }
    assert_eq!(s.runs.get(), 2);
}

/// A body that panics as the layer reads it (to record it) is answered as a handler that
/// panics is: 500 with the request's id and `no-store`, the key released so that the retry
/// runs again. The panic cut the connection, with no answer, when it left the layer.
#[actix_web::test]
async fn a_body_that_panics_as_it_is_read_is_answered_500_and_releases_the_key() {
    let s = app();
    for run in 1..=2 {
        let res = keyed("/panicking-body", "panicking")
            .try_send(s.server.addr)
            .await;
        let res = res.unwrap_or_else(|e| panic!("run {run}: no answer: {e}"));
        assert_eq!(res.status, 500, "run {run}");
        assert!(res.header("x-request-id").is_some(), "{res:?}");
        assert_eq!(res.header("cache-control"), Some("no-store"), "{res:?}");
        assert!(!res.replayed());
        assert_eq!(s.runs.get(), run);
    }
}

/// A 304 keeps a `Content-Length` its handler set (RFC 9110 section 8.6: the length of the
/// representation it stands for, which actix sends on a 304), and so must its replay, where
/// the replay dropped it as a header of one transfer.
#[post("/not-modified")]
#[idempotent]
async fn not_modified(runs: web::Data<Counter>) -> HttpResponse {
    runs.bump();
    HttpResponse::NotModified()
        .insert_header(("ETag", "\"v1\""))
        .insert_header(("Content-Length", "1234"))
        .finish()
}

#[actix_web::test]
async fn a_304_replay_keeps_the_content_length_its_first_answer_sent() {
    let s = serve(|cfg| {
        cfg.service(not_modified);
    });
    let req = keyed("/not-modified", "nm").to_bytes();
    let (_, first) = responses(&exchange(s.server.addr, &req).await).remove(0);
    let (_, retry) = responses(&exchange(s.server.addr, &req).await).remove(0);
    assert_eq!((first.status, retry.status), (304, 304));
    assert!(retry.replayed(), "{retry:?}");
    assert_eq!(
        first.header("content-length"),
        Some("1234"),
        "actix sends it"
    );
    assert_eq!(retry.header("content-length"), Some("1234"), "{retry:?}");
    assert_eq!(retry.header("etag"), Some("\"v1\""), "{retry:?}");
    assert_eq!(s.runs.get(), 1);
}

/// A HEAD answered without making its body: the handler declares the representation's
/// length and sends nothing (it answers HEAD cheaply, or relays an upstream's HEAD answer),
/// which actix sends as 200 with that `Content-Length`. Under the layer it is recorded and
/// replayed so, where the layer read the body to record it, found it short, and answered
/// 500, releasing the key, so that every retry ran the handler again.
async fn head_only(runs: web::Data<Counter>) -> HttpResponse {
    runs.bump();
    HttpResponse::Ok()
        .insert_header(("ETag", "\"v1\""))
        .insert_header(("Content-Length", "1234"))
        .streaming(futures_util::stream::empty::<Result<Bytes, std::io::Error>>())
}

#[idempotent]
async fn head_only_keyed(runs: web::Data<Counter>) -> HttpResponse {
    head_only(runs).await
}

/// A HEAD of `path` under the key `key`, sent twice, each on a connection of its own: the
/// first answer, and its retry's.
async fn head_twice(addr: SocketAddr, path: &str, key: &str) -> (RawResponse, RawResponse) {
    let head = RawRequest::new("HEAD", path)
        .header("Authorization", "Bearer t")
        .header("Idempotency-Key", key)
        .to_bytes();
    let (_, first) = responses(&exchange(addr, &head).await).remove(0);
    let (_, retry) = responses(&exchange(addr, &head).await).remove(0);
    (first, retry)
}

#[actix_web::test]
async fn a_head_answer_that_declares_its_length_runs_once_and_replays_as_sent() {
    let s = serve(|cfg| {
        cfg.route("/head-plain", web::head().to(head_only))
            .route("/head-keyed", web::head().to(head_only_keyed));
    });
    let head = |path: &str| {
        RawRequest::new("HEAD", path)
            .header("Authorization", "Bearer t")
            .header("Idempotency-Key", "head")
            .to_bytes()
    };
    let (_, unlayered) = responses(&exchange(s.server.addr, &head("/head-plain")).await).remove(0);
    let sent = (unlayered.status, unlayered.header("content-length"));
    assert_eq!(sent, (200, Some("1234")), "as actix sends it");

    let (first, retry) = head_twice(s.server.addr, "/head-keyed", "head").await;
    let what = format!("{first:?} / {retry:?}");
    assert_eq!((first.status, retry.status), (200, 200), "{what}");
    assert!(retry.replayed(), "{what}");
    assert_eq!(s.runs.get(), 2, "{what}: the keyed handler ran once");
    assert_eq!(first.header("content-length"), Some("1234"), "{what}");
    assert_eq!(retry.header("content-length"), Some("1234"), "{what}");
    assert_eq!(retry.header("etag"), Some("\"v1\""), "{what}");
    assert!(first.body.is_empty() && retry.body.is_empty(), "{what}");
}

/// A HEAD answered with a body of its own, whatever `Content-Length` the handler set: actix
/// sends the length of that body (none with `finish()`), and so must the replay, where it sent
/// the handler's header, a length the first answer never had.
#[idempotent]
async fn head_declared(runs: web::Data<Counter>, path: web::Path<String>) -> HttpResponse {
    runs.bump();
    let mut res = HttpResponse::Ok();
    res.insert_header(("Content-Length", "1234"));
    match path.as_str() {
        "finished" => res.finish(),
        _ => res.body("hello"),
    }
}

#[actix_web::test]
async fn a_head_replay_sends_the_length_its_first_answer_sent_not_the_handler_s_header() {
    let s = serve(|cfg| {
        cfg.route("/head/{body}", web::head().to(head_declared));
    });
    for (path, sent) in [("/head/finished", "0"), ("/head/body", "5")] {
        let (first, retry) = head_twice(s.server.addr, path, path).await;
        let what = format!("{path}: {first:?} / {retry:?}");
        assert_eq!((first.status, retry.status), (200, 200), "{what}");
        assert!(!first.replayed() && retry.replayed(), "{what}");
        assert_eq!(
            first.header("content-length"),
            Some(sent),
            "{what}: as actix sends it"
        );
        assert_eq!(retry.header("content-length"), Some(sent), "{what}");
    }
    assert_eq!(s.runs.get(), 2, "each ran once");
}

/// A HEAD answered with a body the handler built, larger than the endpoint keeps: actix sends
/// none of it, only its length, so the answer is recorded as sent (its length, no body) and
/// replayed, where the body was kept for the record, found too large, and every retry was
/// answered 409 `idempotency_response_too_large`.
#[idempotent(max_response = 256)]
async fn head_built(runs: web::Data<Counter>) -> HttpResponse {
    runs.bump();
    HttpResponse::Ok().body(vec![b'x'; 1024])
}

#[actix_web::test]
async fn a_head_answer_with_a_body_larger_than_kept_replays_as_sent() {
    let s = serve(|cfg| {
        cfg.route("/head-built", web::head().to(head_built));
    });
    let (first, retry) = head_twice(s.server.addr, "/head-built", "built").await;
    let what = format!("{first:?} / {retry:?}");
    assert_eq!((first.status, retry.status), (200, 200), "{what}");
    assert!(!first.replayed() && retry.replayed(), "{what}");
    assert_eq!(first.header("content-length"), Some("1024"), "{what}");
    assert_eq!(retry.header("content-length"), Some("1024"), "{what}");
    assert!(first.body.is_empty() && retry.body.is_empty(), "{what}");
    assert_eq!(s.runs.get(), 1, "{what}");
}

/// An upgrade that echoes what the client sends after it: the shape of a WebSocket handler
/// (`actix_ws::handle(&req, body)`), which answers 101 and reads the connection as its payload.
async fn upgraded_plain(body: web::Payload) -> HttpResponse {
    HttpResponse::SwitchingProtocols()
        .upgrade("websocket")
        .streaming(body)
}

#[idempotent(scope = "global")]
async fn upgraded(body: web::Payload) -> HttpResponse {
    upgraded_plain(body).await
}

/// Sends an upgrade request to `path` (with `extra` headers, then `Upgrade: websocket`), then
/// `ping`: what the server answered within 5 s.
async fn upgrade(addr: SocketAddr, path: &str, extra: &str) -> String {
    let head = format!(
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: Upgrade\r\n{extra}Upgrade: websocket\r\n\r\nping"
    );
    answered_until(addr, head.as_bytes(), b"ping").await
}

/// Sends `bytes` on a connection of its own, leaving it open: what the server answered within
/// 5 s, read until it holds `until` or the server closes the connection.
async fn answered_until(addr: SocketAddr, bytes: &[u8], until: &[u8]) -> String {
    let mut conn = TcpStream::connect(addr).await.unwrap();
    conn.write_all(bytes).await.unwrap();
    let mut got = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        while !got.windows(until.len()).any(|w| w == until) {
            let mut buf = [0; 4096];
            match conn.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    String::from_utf8_lossy(&got).into_owned()
}

/// A request that upgrades its connection (a WebSocket handshake) has the rest of the
/// connection for its payload, which ends only when the client closes it: the layer hands it
/// to the handler as it is, unclaimed (its answer, a protocol switch, is never recorded), so
/// that it is answered as without the layer, where the layer read the payload to its end
/// before anything else, and no answer ever came.
#[actix_web::test]
async fn a_keyed_upgrade_is_answered_as_without_the_layer() {
    let s = serve(|cfg| {
        cfg.route("/upgrade-plain", web::get().to(upgraded_plain))
            .route("/upgrade", web::get().to(upgraded));
    });
    let unlayered = upgrade(s.server.addr, "/upgrade-plain", "").await;
    assert!(unlayered.starts_with("HTTP/1.1 101"), "{unlayered:?}");
    assert!(unlayered.ends_with("ping"), "{unlayered:?}");
    let keyed = upgrade(s.server.addr, "/upgrade", "Idempotency-Key: u-1\r\n").await;
    assert!(keyed.starts_with("HTTP/1.1 101"), "keyed: {keyed:?}");
    assert!(keyed.ends_with("ping"), "keyed: {keyed:?}");
    // Its `Upgrade: websocket` on a second line, as actix reads it too.
    let second = "Idempotency-Key: u-2\r\nUpgrade: h2c\r\n";
    let keyed = upgrade(s.server.addr, "/upgrade", second).await;
    assert!(keyed.starts_with("HTTP/1.1 101"), "second line: {keyed:?}");
}

#[idempotent(scope = "global")]
async fn tunnel(runs: web::Data<Counter>) -> HttpResponse {
    runs.bump();
    HttpResponse::Ok().finish()
}

/// A `CONNECT` has the rest of its connection for its payload, as a handshake has, when it
/// declares no length of its own or a length of 0, however written (`0`, `00`: actix reads the
/// number, and drops a 0): answered as without the layer, where the layer read its payload to
/// the end and never answered.
#[actix_web::test]
async fn a_keyed_connect_is_answered_as_without_the_layer() {
    let s = serve(|cfg| {
        cfg.route(
            "/tunnel",
            web::route()
                .method(actix_web::http::Method::CONNECT)
                .to(tunnel),
        );
    });
    for length in ["", "Content-Length: 0\r\n", "Content-Length: 00\r\n"] {
        let head = format!(
            "CONNECT /tunnel HTTP/1.1\r\nHost: localhost\r\nIdempotency-Key: t-1\r\n{length}\r\n"
        );
        let got = answered_until(s.server.addr, head.as_bytes(), b"\r\n\r\n").await;
        assert!(got.starts_with("HTTP/1.1 200"), "{length:?}: {got:?}");
    }
}

#[idempotent(required)]
async fn required(runs: web::Data<Counter>) -> HttpResponse {
    runs.bump();
    HttpResponse::Created().finish()
}

/// A header cannot take a request past the layer: only a GET is a WebSocket handshake (RFC
/// 6455), so a POST that says `Upgrade: websocket` is admitted as any other, and a handshake's
/// key is checked as any key is (here on an endpoint that requires one, refused 400 before
/// anything runs), where either went to the handler.
#[actix_web::test]
async fn a_request_that_asks_to_upgrade_is_refused_as_any_without_a_key() {
    let s = serve(|cfg| {
        cfg.route("/required", web::post().to(required))
            .route("/required", web::get().to(required));
    });
    for method in ["POST", "GET"] {
        let res = RawRequest::new(method, "/required")
            .header("Authorization", "Bearer t")
            .header("Connection", "Upgrade")
            .header("Upgrade", "websocket")
            .send(s.server.addr)
            .await;
        assert_layer_error(&res, 400, "idempotency_key_missing");
    }
    assert_eq!(s.runs.get(), 0);
}
