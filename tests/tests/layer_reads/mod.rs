//! A compressed body the layer decodes itself (to read it as JSON), for the tests of how far
//! a decompression bomb inflates, each in a test binary of its own (the measure is the
//! process's peak memory).

use actix_web::{post, web, HttpResponse};
use idem_actix::idempotent;
use idem_tests::{peak_memory, serve, RawRequest, RawResponse};

#[post("/events")]
#[idempotent(fingerprint = "json")]
async fn event(body: web::Bytes) -> HttpResponse {
    HttpResponse::Created().body(format!("{} bytes", body.len()))
}

/// The answer to `body`, sent keyed as JSON in `coding` to an endpoint that compares JSON
/// bodies (under the default `max_body`), and how far the process's peak memory grew
/// meanwhile, in bytes.
pub async fn sent(coding: &str, body: Vec<u8>) -> (RawResponse, usize) {
    let s = serve(|cfg| {
        cfg.service(event);
    });
    let before = peak_memory();
    let res = s
        .send(
            &RawRequest::post("/events")
                .header("Authorization", "Bearer t")
                .header("Idempotency-Key", "bomb-1")
                .header("Content-Type", "application/json")
                .header("Content-Encoding", coding)
                .body(body),
        )
        .await;
    (res, peak_memory().saturating_sub(before))
}
