//! A refusal carries the server's request id (its `X-Request-ID`): the server's own 500s ask
//! for it to be reported ("report it with the request id"), and a caller can only do so if the
//! error keeps it.

mod common;

use actix_web::{post, HttpResponse};
use idem_actix::{idempotent, IdempotencyKey};
use idem_client::{Client, Error};

/// Takes the key under no idempotency layer: the server answers 500
/// `idempotency_layer_missing`, a fault of its own to report.
#[post("/v1/charges")]
async fn charge(_key: IdempotencyKey) -> HttpResponse {
    HttpResponse::Created().finish()
}

#[post("/v1/reports")]
#[idempotent(scope = "global")]
async fn report(body: String) -> HttpResponse {
    HttpResponse::Created().body(body)
}

#[actix_web::test]
async fn a_refusal_and_a_mismatch_carry_the_server_s_request_id() {
    let (base, _runs, handle) = common::serve(|cfg| {
        cfg.service(charge).service(report);
    });
    let client = Client::builder().build().unwrap();

    let refused = client
        .post(format!("{base}/v1/charges"))
        .header("X-Request-ID", "req-refused-1")
        .body("{}")
        .send()
        .await
        .unwrap_err();
    assert!(matches!(refused, Error::Refused { .. }), "{refused}");
    assert_eq!(refused.request_id(), Some("req-refused-1"));
    assert!(refused.to_string().contains("req-refused-1"), "{refused}");
    // One the server made, when the request sent none.
    let made = client
        .post(format!("{base}/v1/charges"))
        .body("{}")
        .send()
        .await
        .unwrap_err();
    assert!(made.request_id().is_some_and(|id| !id.is_empty()), "{made}");

    let first = client
        .post(format!("{base}/v1/reports"))
        .body("a")
        .send()
        .await
        .unwrap();
    let mismatch = client
        .post(format!("{base}/v1/reports"))
        .idempotency_key(first.key())
        .header("X-Request-ID", "req-mismatch-1")
        .body("b")
        .send()
        .await
        .unwrap_err();
    assert!(matches!(mismatch, Error::Mismatch { .. }), "{mismatch}");
    assert_eq!(mismatch.request_id(), Some("req-mismatch-1"));
    handle.stop(true).await;
}
