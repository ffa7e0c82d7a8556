//! Request bodies under `#[idempotent]`: read whole whether chunked or sized, held to
//! `max_body` (413 before any claim), fingerprinted to the last byte, and rebuilt for the
//! handler's own body extractors (form, string, stream).

use actix_web::{post, web, HttpResponse};
use bytes::Bytes;
use futures_util::StreamExt as _;
use idem_actix::{idempotent, IdempotencyKey};
use idem_tests::{assert_error, serve, Counter, RawRequest, Served};
use serde::Deserialize;

#[derive(Deserialize)]
struct Signup {
    email: String,
}

#[post("/form")]
#[idempotent]
async fn form(runs: web::Data<Counter>, form: web::Form<Signup>) -> HttpResponse {
    HttpResponse::Created().body(format!("{} {}", runs.bump(), form.email))
}

#[post("/string")]
#[idempotent]
async fn string_body(
    runs: web::Data<Counter>,
    body: String,
    key: Option<IdempotencyKey>,
) -> HttpResponse {
    let key = key.map(|k| k.as_str().to_owned()).unwrap_or_default();
    HttpResponse::Created().body(format!("{} {body} key={key}", runs.bump()))
}

#[post("/stream")]
#[idempotent]
async fn streamed(runs: web::Data<Counter>, mut payload: web::Payload) -> HttpResponse {
    let mut len = 0;
    while let Some(chunk) = payload.next().await {
        len += chunk.map(|c| c.len()).unwrap_or(0);
    }
    HttpResponse::Created().body(format!("{} {len} bytes", runs.bump()))
}

#[post("/small")]
#[idempotent(max_body = 16)]
async fn small(runs: web::Data<Counter>, body: Bytes) -> HttpResponse {
    HttpResponse::Created().body(format!("run {} {}", runs.bump(), body.len()))
}

fn app() -> Served {
    serve(|cfg| {
        cfg.service(form)
            .service(string_body)
            .service(streamed)
            .service(small);
    })
}

fn keyed(path: &str, key: &str) -> RawRequest {
    RawRequest::post(path)
        .header("Authorization", "Bearer t")
        .header("Idempotency-Key", key)
}

#[actix_web::test]
async fn form_string_and_streaming_bodies_are_rebuilt_for_the_handler() {
    let s = app();
    let form_req = keyed("/form", "f")
        .header("Content-Type", "application/x-www-form-urlencoded")
        .body("email=a%40example.com");
    let (first, retry) = s.twice(&form_req).await;
    assert_eq!(first.text(), "1 a@example.com");
    assert!(retry.replayed());

    let (first, _) = s.twice(&keyed("/string", "s").body("hello")).await;
    assert_eq!(first.text(), "2 hello key=s");
    let unkeyed = RawRequest::post("/string").body("plain");
    assert_eq!(s.send(&unkeyed).await.text(), "3 plain key=");

    let big = vec![b'x'; 100_000];
    let (first, retry) = s.twice(&keyed("/stream", "p").body(big)).await;
    assert_eq!(first.text(), "4 100000 bytes");
    assert!(retry.replayed());
}

#[actix_web::test]
async fn chunked_bodies_are_read_whole_and_held_to_the_limit() {
    let s = app();
    // No Content-Length: the limit is enforced while the chunks arrive.
    let over = keyed("/small", "chunks").body(vec![b'x'; 17]).chunked(4);
    assert_error(&s.send(&over).await, 413, "idempotency_body_too_large");
    let fits = keyed("/small", "chunks").body(vec![b'x'; 16]).chunked(4);
    let (first, retry) = s.twice(&fits).await;
    assert_eq!(
        first.text(),
        "run 1 16",
        "the refused request claimed nothing"
    );
    assert!(retry.replayed());

    let big: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    let long = keyed("/stream", "long").body(big.clone()).chunked(1000);
    let (first, retry) = s.twice(&long).await;
    assert_eq!(first.text(), "2 100000 bytes");
    assert!(retry.replayed());
    // The fingerprint covers every chunk: the same key with one byte changed is a conflict.
    let mut changed = big;
    changed[99_999] ^= 1;
    let other = keyed("/stream", "long").body(changed).chunked(1000);
    assert_error(&s.send(&other).await, 409, "idempotency_conflict");
}

#[actix_web::test]
async fn bodies_over_the_limit_get_413_before_any_claim() {
    let s = app();
    let res = s.send(&keyed("/small", "big").body(vec![b'x'; 17])).await;
    assert_error(&res, 413, "idempotency_body_too_large");
    let fits = s.send(&keyed("/small", "big").body(vec![b'x'; 16])).await;
    assert_eq!(
        fits.text(),
        "run 1 16",
        "the refused request claimed nothing"
    );
}

#[derive(Deserialize)]
struct Event {
    id: String,
}

/// Where the layer reads the body (a JSON fingerprint, a key in the body), it reads it as
/// the handler's extractors do: decoded from its `Content-Encoding`.
#[post("/json-events")]
#[idempotent(fingerprint = "json", fingerprint_ignore = ["/sent_at"])]
async fn json_event(runs: web::Data<Counter>, event: web::Json<Event>) -> HttpResponse {
    HttpResponse::Created().body(format!("run {} {}", runs.bump(), event.id))
}

#[post("/keyed-events")]
#[idempotent(key = "json:/id", required)]
async fn keyed_event(runs: web::Data<Counter>, event: web::Json<Event>) -> HttpResponse {
    HttpResponse::Created().body(format!("run {} {}", runs.bump(), event.id))
}

fn gzip(body: &[u8]) -> Vec<u8> {
    use std::io::Write as _;
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    encoder.write_all(body).unwrap();
    encoder.finish().unwrap()
}

fn deflate(body: &[u8]) -> Vec<u8> {
    use std::io::Write as _;
    let mut encoder = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::fast());
    encoder.write_all(body).unwrap();
    encoder.finish().unwrap()
}

fn brotli(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let params = brotli::enc::BrotliEncoderParams::default();
    brotli::BrotliCompress(&mut &body[..], &mut out, &params).unwrap();
    out
}

fn encoded(path: &str, coding: &str, body: Vec<u8>) -> RawRequest {
    RawRequest::post(path)
        .header("Authorization", "Bearer t")
        .header("Content-Type", "application/json")
        .header("Content-Encoding", coding)
        .body(body)
}

fn events() -> Served {
    serve(|cfg| {
        cfg.service(json_event).service(keyed_event);
    })
}

#[actix_web::test]
async fn encoded_bodies_are_read_decoded_where_the_layer_reads_them() {
    let s = events();
    let first = br#"{"id":"ev_1","sent_at":1}"#;
    let retry = br#"{ "sent_at": 2, "id": "ev_1" }"#;
    let keyed =
        |coding, body| encoded("/json-events", coding, body).header("Idempotency-Key", "k1");
    let res = s.send(&keyed("gzip", gzip(first))).await;
    assert_eq!((res.status, res.text()), (201, "run 1 ev_1".to_owned()));
    // The same JSON, in another coding and order: the same request, replayed.
    let res = s.send(&keyed("deflate", deflate(retry))).await;
    assert!(res.replayed(), "{}", res.text());
    let res = s.send(&keyed("identity", retry.to_vec())).await;
    assert!(res.replayed(), "{}", res.text());
    // Any coding actix-web's extractors decode (`br` and `zstd` here, with its
    // `compress-brotli` and `compress-zstd`).
    let res = s.send(&keyed("br", brotli(retry))).await;
    assert!(res.replayed(), "{}", res.text());
    let res = s
        .send(&keyed("zstd", zstd::bulk::compress(retry, 3).unwrap()))
        .await;
    assert!(res.replayed(), "{}", res.text());

    // The key is read from the decoded body.
    let res = s
        .send(&encoded("/keyed-events", "gzip", gzip(br#"{"id":"ev_2"}"#)))
        .await;
    assert_eq!((res.status, res.text()), (201, "run 2 ev_2".to_owned()));
    let res = s
        .send(&encoded("/keyed-events", "gzip", gzip(br#"{"id":"ev_2"}"#)))
        .await;
    assert!(res.replayed());
    assert_eq!(s.runs.get(), 2);
}

#[actix_web::test]
async fn encoded_bodies_the_layer_cannot_read_are_refused_with_the_reason() {
    let s = events();
    let keyed =
        |coding, body| encoded("/json-events", coding, body).header("Idempotency-Key", "k2");
    // A coding actix-web never decodes.
    let res = s.send(&keyed("compress", b"\x1f\x9d".to_vec())).await;
    assert_error(&res, 400, "idempotency_body_invalid");
    assert!(
        res.text().contains("Content-Encoding compress"),
        "{}",
        res.text()
    );
    let res = s.send(&keyed("gzip", b"not gzip".to_vec())).await;
    assert_error(&res, 400, "idempotency_body_invalid");
    assert!(res.text().contains("not valid gzip"), "{}", res.text());
    // Decoded, a body is held to max_body too (2 MiB by default): a small body that
    // inflates past it is refused before any claim.
    let bomb = gzip(&vec![b' '; 3 << 20]);
    assert!(bomb.len() < 64 << 10);
    let res = s.send(&keyed("gzip", bomb)).await;
    assert_error(&res, 413, "idempotency_body_too_large");
    assert_eq!(s.runs.get(), 0);
}

/// A coding named at length is named in the refusal by its first 32 bytes, where the whole
/// header came back in the error's message (and in the log): any client could have the server
/// answer, and write, as much text of its choosing as a header holds.
#[actix_web::test]
async fn a_coding_named_at_length_is_not_echoed_whole() {
    let s = events();
    let coding = format!("x-{}", "a".repeat(10_000));
    let res = s
        .send(&encoded("/json-events", &coding, b"{}".to_vec()).header("Idempotency-Key", "k6"))
        .await;
    assert_error(&res, 400, "idempotency_body_invalid");
    let text = res.text();
    assert!(text.len() < 1_000, "{} bytes: {}", text.len(), &text[..200]);
    assert!(text.contains(&coding[..32]), "named by its start: {text}");
    assert_eq!(s.runs.get(), 0);
}

/// A body actix's own decoder refuses (gzip of two members, deflate with bytes after its
/// end) is refused by the layer too, before any claim, so that its retry, sent whole, runs:
/// where the layer decoded it by its own rules, the handler's extractor failed on it and its
/// 400 was recorded, and replayed to the retry.
#[actix_web::test]
async fn a_body_the_handler_s_extractors_cannot_decode_is_refused_before_it_is_recorded() {
    let s = events();
    let keyed =
        |coding, body, key| encoded("/json-events", coding, body).header("Idempotency-Key", key);
    let mut members = gzip(br#"{"id":"ev_4","#);
    members.extend(gzip(br#""sent_at":1}"#));
    let mut trailing = deflate(br#"{"id":"ev_5"}"#);
    trailing.extend_from_slice(b"\x00\x01");
    for (coding, body, key, id) in [
        ("gzip", members, "k4", "ev_4"),
        ("deflate", trailing, "k5", "ev_5"),
    ] {
        let res = s.send(&keyed(coding, body, key)).await;
        assert_error(&res, 400, "idempotency_body_invalid");
        let whole = format!(r#"{{"id":"{id}","sent_at":1}}"#);
        let res = s
            .send(&keyed(
                coding,
                match coding {
                    "gzip" => gzip(whole.as_bytes()),
                    _ => deflate(whole.as_bytes()),
                },
                key,
            ))
            .await;
        assert_eq!(res.status, 201, "{}", res.text());
        assert!(!res.replayed());
    }
    assert_eq!(s.runs.get(), 2);
}
