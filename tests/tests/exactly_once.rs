//! The promise under faults: a keyed operation runs once, and nobody but its caller gets its
//! answer, when the store fails while a response is recorded, when a response is too large to
//! keep, when its body streams, and when it carries a cookie.

use std::sync::Arc;
use std::time::Duration;

use actix_web::{web, HttpRequest, HttpResponse};
use bytes::Bytes;
use futures_util::stream;
use idem_actix::clock::{ManualClock, Timestamp};
use idem_actix::testing::{Fault, FaultyStore};
use idem_actix::{idempotent, Idempotency, IdempotencyConfig, MokaStore, Policy};
use idem_tests::{
    assert_error, eventually, serve, unchunked, Counter, Open, RawRequest, TestServer,
};
use tokio::sync::Semaphore;

fn call(path: &str, key: &str) -> RawRequest {
    RawRequest::post(path)
        .header("Authorization", "Bearer tenant-1")
        .header("Idempotency-Key", key)
        .body("{}")
}

#[idempotent]
async fn with_cookie(runs: web::Data<Counter>) -> HttpResponse {
    runs.bump();
    HttpResponse::Created()
        .insert_header(("Set-Cookie", "session=first-caller; HttpOnly"))
        .insert_header(("Location", "/v1/sessions/1"))
        .body("created")
}

async fn plain_with_cookie(runs: web::Data<Counter>) -> HttpResponse {
    runs.bump();
    HttpResponse::Created()
        .insert_header(("Set-Cookie", "session=first-caller; HttpOnly"))
        .body("created")
}

fn cookie_server() -> (TestServer, Counter) {
    let runs = Counter::default();
    let data = web::Data::new(runs.clone());
    let idem = IdempotencyConfig::new(MokaStore::new());
    let server = TestServer::start(1, move |cfg| {
        cfg.app_data(data.clone())
            .app_data(idem.clone())
            .route("/v1/sessions", web::post().to(with_cookie))
            .service(
                web::scope("/v1/allowed")
                    .wrap(Idempotency::new().with_overrides(|p| p.replay_set_cookie(true)))
                    .route("", web::post().to(plain_with_cookie)),
            );
    });
    (server, runs)
}

#[actix_web::test]
async fn set_cookie_is_neither_stored_nor_replayed_by_default() {
    let (server, runs) = cookie_server();
    let first = call("/v1/sessions", "cookie-1").send(server.addr).await;
    assert_eq!(first.status, 201);
    assert_eq!(
        first.header("set-cookie"),
        Some("session=first-caller; HttpOnly"),
        "the first caller gets its own cookie"
    );
    let replay = call("/v1/sessions", "cookie-1").send(server.addr).await;
    assert!(replay.replayed());
    assert_eq!(replay.header("location"), Some("/v1/sessions/1"));
    assert_eq!(
        replay.header("set-cookie"),
        None,
        "whoever holds the key must not get the first caller's cookie"
    );
    assert_eq!(runs.get(), 1);
}

#[actix_web::test]
async fn set_cookie_is_replayed_where_the_endpoint_allows_it() {
    let (server, runs) = cookie_server();
    call("/v1/allowed", "cookie-2").send(server.addr).await;
    let replay = call("/v1/allowed", "cookie-2").send(server.addr).await;
    assert!(replay.replayed());
    assert_eq!(
        replay.header("set-cookie"),
        Some("session=first-caller; HttpOnly")
    );
    assert_eq!(runs.get(), 1);
}

#[actix_web::test]
async fn the_layers_own_errors_tell_caches_not_to_store_them() {
    let (server, _) = cookie_server();
    let invalid = RawRequest::post("/v1/sessions")
        .header("Authorization", "Bearer tenant-1")
        .header("Idempotency-Key", "")
        .send(server.addr)
        .await;
    assert_error(&invalid, 400, "idempotency_key_invalid");
    assert_eq!(invalid.header("cache-control"), Some("no-store"));
    call("/v1/sessions", "k").send(server.addr).await;
    let mismatch = call("/v1/sessions", "k")
        .body("{\"other\":1}")
        .send(server.addr)
        .await;
    assert_error(&mismatch, 409, "idempotency_conflict");
    assert_eq!(mismatch.header("cache-control"), Some("no-store"));
}

#[idempotent]
async fn create(runs: web::Data<Counter>) -> HttpResponse {
    let n = runs.bump();
    HttpResponse::Created().body(format!("call_{n}"))
}

async fn plain_create(runs: web::Data<Counter>) -> HttpResponse {
    let n = runs.bump();
    HttpResponse::Created().body(format!("call_{n}"))
}

struct Faulty {
    server: TestServer,
    store: FaultyStore<MokaStore>,
    clock: ManualClock,
    runs: Counter,
}

fn faulty_server() -> Faulty {
    let runs = Counter::default();
    let data = web::Data::new(runs.clone());
    let store = FaultyStore::new(MokaStore::new());
    let clock = ManualClock::new(Timestamp::from_millis(1_700_000_000_000));
    let idem = IdempotencyConfig::new(store.clone()).with_clock(clock.clone());
    let server = TestServer::start(1, move |cfg| {
        cfg.app_data(data.clone())
            .app_data(idem.clone())
            .route("/attribute", web::post().to(create))
            .service(
                web::scope("/middleware")
                    .wrap(Idempotency::new())
                    .route("", web::post().to(plain_create)),
            );
    });
    Faulty {
        server,
        store,
        clock,
        runs,
    }
}

#[actix_web::test]
async fn a_completion_the_store_failed_is_retried_so_the_operation_never_runs_twice() {
    let f = faulty_server();
    for (n, path) in ["/attribute", "/middleware"].into_iter().enumerate() {
        let key = format!("completion-{n}");
        // The store drops the first two attempts to record the response.
        f.store.fail("complete", 2, Fault::Unavailable);
        let first = call(path, &key).send(f.server.addr).await;
        assert_eq!(first.status, 201, "{path}: the caller gets its answer");
        // Long past the lease, a retry still gets the first answer.
        f.clock.advance(Duration::from_secs(600));
        let retry = call(path, &key).send(f.server.addr).await;
        assert!(retry.replayed(), "{path}: {retry:?}");
        assert_eq!(retry.body, first.body, "{path}");
        assert_eq!(f.runs.get(), n + 1, "{path}: the operation ran once");
    }
}

#[actix_web::test]
async fn a_record_the_store_refuses_as_too_large_is_kept_and_the_retry_is_told_so() {
    let f = faulty_server();
    f.store.fail("complete", 1, Fault::TooLarge(16));
    let first = call("/attribute", "too-large").send(f.server.addr).await;
    assert_eq!(first.status, 201);
    f.clock.advance(Duration::from_secs(600));
    let retry = call("/attribute", "too-large").send(f.server.addr).await;
    assert_error(&retry, 409, "idempotency_response_too_large");
    assert_eq!(f.runs.get(), 1, "the operation did not run again");
}

#[idempotent(max_response = 1024)]
async fn huge_response(runs: web::Data<Counter>) -> HttpResponse {
    runs.bump();
    HttpResponse::Created()
        .insert_header(("X-Custom", "kept"))
        .body(vec![b'x'; 4096])
}

#[actix_web::test]
async fn a_response_too_large_to_keep_is_sent_once_and_never_rerun() {
    let s = serve(|cfg| {
        cfg.route("/huge", web::post().to(huge_response));
    });
    let first = s.send(&call("/huge", "k")).await;
    assert_eq!(first.status, 201);
    assert_eq!(
        first.body.len(),
        4096,
        "the first client gets the whole response"
    );
    let retry = s.send(&call("/huge", "k")).await;
    let message = assert_error(&retry, 409, "idempotency_response_too_large");
    assert!(
        message.contains("201") && message.contains("will not run again"),
        "{message}"
    );
    assert_eq!(s.runs.get(), 1, "never silently re-executed");
}

#[derive(Clone)]
struct Stream {
    runs: Counter,
    gate: Arc<Semaphore>,
}

/// Streams `X-Pieces` chunks of `X-Chunk` bytes (1 KiB by default), the one numbered
/// `X-Gate-At` (from 0; the second by default) after the gate opens, and fails instead of
/// sending the one numbered `X-Fail-At`, if given; with status `X-Status` (200 by default),
/// and, given `X-Sized`, the body's length declared.
#[idempotent(max_response = 1536, lease = "300ms")]
async fn streamed(probe: web::Data<Stream>, req: HttpRequest) -> HttpResponse {
    streamed_body(probe, req)
}

fn streamed_body(probe: web::Data<Stream>, req: HttpRequest) -> HttpResponse {
    probe.runs.bump();
    let number = |name| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok()?.parse::<usize>().ok())
    };
    let (pieces, chunk, gate_at, fail_at) = (
        number("x-pieces").unwrap_or(1),
        number("x-chunk").unwrap_or(1024),
        number("x-gate-at").unwrap_or(1),
        number("x-fail-at"),
    );
    let gate = Arc::clone(&probe.gate);
    let body = stream::unfold(0, move |i| {
        let gate = Arc::clone(&gate);
        async move {
            if i == pieces {
                return None;
            }
            if i == gate_at {
                gate.acquire().await.unwrap().forget();
            }
            if Some(i) == fail_at {
                let failed = actix_web::error::ErrorInternalServerError("the stream failed");
                return Some((Err(failed), pieces));
            }
            Some((
                Ok::<_, actix_web::Error>(Bytes::from(vec![b'a' + i as u8; chunk])),
                i + 1,
            ))
        }
    });
    let status = number("x-status").map_or(200, |s| s as u16);
    let mut res = HttpResponse::build(actix_web::http::StatusCode::from_u16(status).unwrap());
    if req.headers().contains_key("x-sized") {
        let body = stream::StreamExt::map(body, |piece| {
            piece.map_err(|e| std::io::Error::other(e.to_string()))
        });
        let size = (pieces * chunk) as u64;
        return res.body(actix_web::body::SizedStream::new(size, body));
    }
    res.streaming(body)
}

/// [`streamed`] with nothing kept of its body, as for a stream of events: each piece goes
/// out as it comes.
#[idempotent(max_response = 0, lease = "300ms")]
async fn events(probe: web::Data<Stream>, req: HttpRequest) -> HttpResponse {
    streamed_body(probe, req)
}

fn stream_server() -> (TestServer, Stream) {
    stream_server_on(None)
}

/// [`stream_server`], on `idem`'s settings where given.
fn stream_server_on(idem: Option<IdempotencyConfig>) -> (TestServer, Stream) {
    let probe = Stream {
        runs: Counter::default(),
        gate: Arc::new(Semaphore::new(0)),
    };
    let data = web::Data::new(probe.clone());
    let server = TestServer::start(1, move |cfg| {
        if let Some(idem) = &idem {
            cfg.app_data(idem.clone());
        }
        cfg.app_data(data.clone())
            .route("/stream", web::post().to(streamed))
            .route("/events", web::post().to(events));
    });
    (server, probe)
}

#[actix_web::test]
async fn a_duplicate_while_the_body_streams_conflicts_instead_of_running() {
    let (server, probe) = stream_server();
    let addr = server.addr;
    let request = || {
        call("/stream", "streamed-dup")
            .header("X-Pieces", "2")
            .header("X-Chunk", "512")
    };
    let first = tokio::spawn(async move { request().send(addr).await });
    eventually(|| probe.runs.get() == 1).await;
    // The body is still streaming, three leases of 300 ms later.
    tokio::time::sleep(Duration::from_millis(900)).await;
    let duplicate = request().send(addr).await;
    assert_error(&duplicate, 409, "idempotency_conflict");
    probe.gate.add_permits(1);
    let first = first.await.unwrap();
    assert_eq!(first.status, 200);
    assert_eq!(probe.runs.get(), 1, "the duplicate did not run");
    let retry = request().send(addr).await;
    assert!(retry.replayed());
    // The body went out as it came, and replays byte for byte, in one piece.
    assert_eq!(
        unchunked(&first.body),
        retry.body,
        "the streamed body replays"
    );
    assert_eq!(retry.body.len(), 1024);
}

/// A response the endpoint does not keep (here a 503) whose body passes `max_response` holds
/// its key until the body ends, as any response does while it goes out: a retry meanwhile gets
/// 409, and runs once the body has ended. Its key was released as the body passed the bound
/// (a body of declared length before any of it went out), and a retry ran beside it.
#[actix_web::test]
async fn an_unkept_response_past_max_response_holds_its_key_until_its_body_ends() {
    for sized in [false, true] {
        let (server, probe) = stream_server();
        let addr = server.addr;
        let key = format!("unkept-{sized}");
        // 2 KiB before the gate, past the endpoint's 1.5 KiB.
        let request = move || {
            let request = call("/stream", &key)
                .header("X-Pieces", "3")
                .header("X-Gate-At", "2")
                .header("X-Status", "503");
            if sized {
                request.header("X-Sized", "1")
            } else {
                request
            }
        };
        let sent = request.clone();
        let first = tokio::spawn(async move { sent().send(addr).await });
        eventually(|| probe.runs.get() == 1).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        // Sent aside: a duplicate that runs waits at the gate too.
        let sent = request.clone();
        let duplicate = tokio::spawn(async move { sent().send(addr).await });
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(
            probe.runs.get(),
            1,
            "sized {sized}: the duplicate did not run"
        );
        assert_error(&duplicate.await.unwrap(), 409, "idempotency_conflict");
        // The first's last piece, then the retry's.
        probe.gate.add_permits(2);
        let first = first.await.unwrap();
        assert_eq!(first.status, 503);
        // Sent as it was declared: with its length, or in chunks.
        let body = match sized {
            true => first.body.clone(),
            false => unchunked(&first.body),
        };
        assert_eq!(body.len(), 3 * 1024, "sized {sized}");
        let retry = request().send(addr).await;
        assert_eq!(retry.status, 503);
        assert!(!retry.replayed());
        assert_eq!(
            probe.runs.get(),
            2,
            "sized {sized}: released once its body ended"
        );
    }
}

#[actix_web::test]
async fn a_keyed_stream_goes_out_as_it_comes_and_its_retry_gets_it_whole() {
    let (server, probe) = stream_server();
    let request = || {
        call("/stream", "teed")
            .header("X-Pieces", "2")
            .header("X-Chunk", "700")
    };
    let mut open = Open::send(server.addr, &request()).await;
    // The first piece arrives while the second waits behind the gate: not held back until
    // the stream ends.
    open.read_until(&[b'a'; 700], "the first piece before the stream ends")
        .await;
    open.assert_status_line(b"HTTP/1.1 200");
    // Meanwhile the operation is in flight: a retry neither runs it nor replays a part.
    let retry = request().send(server.addr).await;
    assert_error(&retry, 409, "idempotency_conflict");
    probe.gate.add_permits(1);
    open.read_to_end().await;
    let head_end = open.got.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    let first = unchunked(&open.got[head_end..]);
    assert_eq!(first.len(), 1400, "within max_response, so kept whole");
    // Its end went out once it was recorded: the retry right after is its replay.
    let retry = request().send(server.addr).await;
    assert!(retry.replayed(), "{retry:?}");
    assert_eq!(retry.body, first, "the replay is the whole stream");
    assert_eq!(probe.runs.get(), 1);
}

/// Retries `request` until it is replayed (the recording of a stream whose client went away
/// may still be on its way), and
/// asserts the replay's body is `body`.
async fn eventually_replayed(addr: std::net::SocketAddr, request: &RawRequest, body: &[u8]) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let retry = request.send(addr).await;
        if retry.replayed() {
            assert_eq!(retry.body, body, "the replay is the whole stream");
            return;
        }
        assert_error(&retry, 409, "idempotency_conflict");
        assert!(tokio::time::Instant::now() < deadline, "never replayed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[actix_web::test]
async fn a_keyed_stream_whose_client_goes_away_is_read_on_and_recorded() {
    let (server, probe) = stream_server();
    let request = || {
        call("/stream", "teed-away")
            .header("X-Pieces", "2")
            .header("X-Chunk", "700")
    };
    let mut open = Open::send(server.addr, &request()).await;
    open.read_until(&[b'a'; 700], "the first piece").await;
    // The client resets the connection halfway.
    open.conn.set_zero_linger().unwrap();
    drop(open);
    probe.gate.add_permits(1);
    let mut whole = vec![b'a'; 700];
    whole.extend_from_slice(&[b'b'; 700]);
    eventually_replayed(server.addr, &request(), &whole).await;
    assert_eq!(probe.runs.get(), 1, "the operation ran once");
}

/// A stream that fails breaks off once its key is released, as a stream that ends ends once
/// it is recorded: the retry its client sends on the broken answer runs, where the failure
/// went out at once and the release followed, so that a prompt retry got 409 "still being
/// processed" for a run that was over (here, a release that takes 300 ms).
#[actix_web::test]
async fn a_stream_that_fails_breaks_off_once_its_key_is_released_so_a_prompt_retry_runs() {
    let store = FaultyStore::new(MokaStore::new());
    store.fail("release", 1, Fault::Slow(Duration::from_millis(300)));
    let (server, probe) = stream_server_on(Some(IdempotencyConfig::new(store.clone())));
    let failing = call("/stream", "fails-then-retried")
        .header("X-Pieces", "3")
        .header("X-Gate-At", "9")
        .header("X-Fail-At", "1");
    let mut open = Open::send(server.addr, &failing).await;
    open.read_to_end().await;
    let retry = call("/stream", "fails-then-retried")
        .header("X-Pieces", "1")
        .send(server.addr)
        .await;
    assert_eq!(
        (retry.status, retry.replayed()),
        (200, false),
        "{}",
        retry.text()
    );
    assert_eq!(probe.runs.get(), 2);
    assert_eq!(store.calls("release"), 1);
}

#[actix_web::test]
async fn a_keyed_stream_that_fails_releases_its_key_so_the_retry_runs_again() {
    let (server, probe) = stream_server();
    let failing = call("/stream", "teed-failing")
        .header("X-Pieces", "3")
        .header("X-Gate-At", "9")
        .header("X-Fail-At", "1");
    let mut open = Open::send(server.addr, &failing).await;
    // The connection is closed on the failure (actix may not flush the first piece).
    open.read_to_end().await;
    // The stream broke off: nothing was recorded, and a retry runs the operation again.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let retry = loop {
        let retry = call("/stream", "teed-failing")
            .header("X-Pieces", "1")
            .send(server.addr)
            .await;
        if retry.status != 409 {
            break retry;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the key stayed held"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(retry.status, 200);
    assert!(!retry.replayed());
    assert_eq!(probe.runs.get(), 2);
}

#[actix_web::test]
async fn a_stream_that_keeps_nothing_goes_out_as_it_comes_and_is_never_run_twice() {
    let (server, probe) = stream_server();
    let request = || call("/events", "events").header("X-Pieces", "2");
    let mut open = Open::send(server.addr, &request()).await;
    // The head and the first piece arrive while the second waits behind the gate.
    open.read_until(&[b'a'; 1024], "the first piece before the stream ends")
        .await;
    open.assert_status_line(b"HTTP/1.1 200");
    // A retry meanwhile does not run it again.
    let retry = request().send(server.addr).await;
    assert_error(&retry, 409, "idempotency_response_too_large");
    probe.gate.add_permits(1);
    open.read_until(&[b'b'; 1024], "the rest follows").await;
    open.read_to_end().await;
    assert_eq!(probe.runs.get(), 1);
}

#[actix_web::test]
async fn a_stream_that_keeps_nothing_sends_its_head_before_its_first_piece() {
    let (server, probe) = stream_server();
    let request = || {
        call("/events", "quiet-first")
            .header("X-Pieces", "1")
            .header("X-Gate-At", "0")
    };
    let mut open = Open::send(server.addr, &request()).await;
    // A stream of events that is quiet at first: its head is not held back for a piece.
    open.read_until(b"\r\n\r\n", "the head before the first piece")
        .await;
    open.assert_status_line(b"HTTP/1.1 200");
    let retry = request().send(server.addr).await;
    let message = assert_error(&retry, 409, "idempotency_response_too_large");
    assert!(message.contains("not kept"), "{message}");
    probe.gate.add_permits(1);
    open.read_until(&[b'a'; 1024], "the piece follows").await;
    open.read_to_end().await;
    assert_eq!(probe.runs.get(), 1);
}

#[actix_web::test]
async fn a_stream_longer_than_max_response_is_sent_whole_and_recorded_without_its_body() {
    let (server, probe) = stream_server();
    let addr = server.addr;
    let first = tokio::spawn(async move {
        call("/stream", "long")
            .header("X-Pieces", "3")
            .send(addr)
            .await
    });
    eventually(|| probe.runs.get() == 1).await;
    // The stream waits after its first KiB; the record is written as soon as the body
    // passes the bound, not when it ends: nothing is buffered past the bound.
    tokio::time::sleep(Duration::from_millis(100)).await;
    probe.gate.add_permits(1);
    let first = first.await.unwrap();
    assert_eq!(first.status, 200);
    let body = unchunked(&first.body);
    assert_eq!(body.len(), 3 * 1024, "the client gets the whole stream");
    assert_eq!(&body[2048..2050], b"cc");
    let retry = call("/stream", "long")
        .header("X-Pieces", "3")
        .send(addr)
        .await;
    assert_error(&retry, 409, "idempotency_response_too_large");
    assert_eq!(probe.runs.get(), 1);
}

#[test]
fn defaults_that_contradict_the_store_are_refused_when_the_app_is_configured() {
    let store = MokaStore::builder().max_bytes(64 * 1024).build();
    let refused = IdempotencyConfig::new(store).with_defaults(Policy::DEFAULT);
    assert!(refused
        .unwrap_err()
        .to_string()
        .contains("lower max_response"));
}

#[idempotent]
async fn two_pieces(runs: web::Data<Counter>) -> HttpResponse {
    two_pieces_unmarked(runs).await
}

/// A streamed body's end goes out once its record is written, as a collected body goes out
/// only once recorded: a client that has read the whole answer and retries at once gets the
/// replay, through the attribute and the middleware, where it got 409 "still being
/// processed" until the recording's task ran.
#[actix_web::test]
async fn a_retry_made_as_soon_as_a_streamed_answer_was_read_whole_is_its_replay() {
    use actix_web::test::{call_service, init_service, read_body, TestRequest};

    let runs = web::Data::new(Counter::default());
    let app = init_service(
        actix_web::App::new()
            .app_data(IdempotencyConfig::new(MokaStore::new()))
            .app_data(runs.clone())
            .route("/attribute", web::post().to(two_pieces))
            .service(
                web::scope("/middleware")
                    .wrap(Idempotency::new())
                    .route("", web::post().to(two_pieces_unmarked)),
            ),
    )
    .await;
    for path in ["/attribute", "/middleware"] {
        let request = || {
            TestRequest::post()
                .uri(path)
                .insert_header(("Authorization", "Bearer tenant-1"))
                .insert_header(("Idempotency-Key", format!("read-whole{path}")))
                .to_request()
        };
        let first = call_service(&app, request()).await;
        assert_eq!(first.status(), 201, "{path}");
        let body = read_body(first).await;
        let retry = call_service(&app, request()).await;
        assert_eq!(
            retry.status(),
            201,
            "{path}: the retry is not refused as in flight"
        );
        assert_eq!(
            retry
                .headers()
                .get("idempotent-replayed")
                .map(|v| v.as_bytes()),
            Some(&b"true"[..]),
            "{path}"
        );
        assert_eq!(read_body(retry).await, body, "{path}");
    }
    assert_eq!(runs.get(), 2, "each endpoint ran once");
}

/// A body of two pieces, streamed (of unknown length).
async fn two_pieces_unmarked(runs: web::Data<Counter>) -> HttpResponse {
    let run = runs.bump();
    let pieces = [format!("run {run}, "), "second piece".to_owned()];
    let body = stream::iter(pieces.map(|p| Ok::<_, actix_web::Error>(Bytes::from(p))));
    HttpResponse::Created().streaming(body)
}
