//! A 409 `idempotency_conflict` without `Retry-After` is not always a key used with another
//! request: the server also answers it when the operation ran and its answer was recorded in a
//! content coding the retry does not accept, and its message then says what to do. The error a
//! caller logs carries that message, not only advice to use a new key, which runs the
//! operation again.

use std::sync::atomic::{AtomicU32, Ordering};

mod common;

use actix_web::{post, web, HttpResponse};
use idem_actix::idempotent;
use idem_client::{Client, Error};

/// Answers in gzip negotiated for the request (`Vary: Accept-Encoding`), as a `Compress`
/// inside the idempotency layer does.
#[post("/v1/reports")]
#[idempotent(scope = "global")]
async fn create_report(runs: web::Data<AtomicU32>) -> HttpResponse {
    runs.fetch_add(1, Ordering::SeqCst);
    HttpResponse::Created()
        .insert_header(("Content-Encoding", "gzip"))
        .insert_header(("Vary", "Accept-Encoding"))
        .body(&b"\x1f\x8b a compressed report"[..])
}

#[actix_web::test]
async fn a_mismatch_error_says_what_the_server_said() {
    let (base, runs, handle) = common::serve(|cfg| {
        cfg.service(create_report);
    });
    let url = format!("{base}/v1/reports");
    let client = Client::builder().build().unwrap();
    let first = client
        .post(&url)
        .header("Accept-Encoding", "gzip")
        .body("report")
        .send()
        .await
        .unwrap();
    assert_eq!(first.status(), 201);

    // The same operation resumed under its key, without the first request's Accept-Encoding.
    let err = client
        .post(&url)
        .idempotency_key(first.key())
        .body("report")
        .send()
        .await
        .unwrap_err();
    let Error::Mismatch { message, .. } = &err else {
        panic!("{err}");
    };
    let message = message.as_deref().unwrap_or_default();
    assert!(message.contains("Accept-Encoding"), "{message}");
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    // What a caller logs: the server's reason, not only "send a new operation with a new key".
    assert!(
        err.to_string().contains(message),
        "the error's message drops the server's: {err}"
    );
    handle.stop(true).await;
}
