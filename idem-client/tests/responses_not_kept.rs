//! A 409 `idempotency_response_too_large` says the operation ran and completed, but its
//! response was too large for the server to keep: the client must not hand it back as a
//! refusal, which a caller reads as "nothing ran" and answers by sending the operation again
//! under a new key.

use std::sync::atomic::{AtomicU32, Ordering};

mod common;

use actix_web::{post, web, HttpResponse};
use idem_actix::idempotent;
use idem_client::{Client, Error};

#[post("/v1/reports")]
#[idempotent(scope = "global", max_response = 16)]
async fn create_report(runs: web::Data<AtomicU32>) -> HttpResponse {
    runs.fetch_add(1, Ordering::SeqCst);
    HttpResponse::Created().body("a report longer than the sixteen bytes the endpoint keeps")
}

#[actix_web::test]
async fn a_response_too_large_to_keep_is_told_as_an_operation_that_ran() {
    let (base, runs, handle) = common::serve(|cfg| {
        cfg.service(create_report);
    });
    let url = format!("{base}/v1/reports");

    let client = Client::builder().build().unwrap();
    let first = client.post(&url).body("report").send().await.unwrap();
    assert_eq!(first.status(), 201, "{}", first.text());

    let err = client
        .post(&url)
        .body("report")
        .idempotency_key(first.key())
        .send()
        .await
        .unwrap_err();
    match &err {
        Error::ResponseNotKept {
            key,
            status,
            message,
            ..
        } => {
            assert_eq!(key, first.key());
            assert_eq!(*status, 409);
            let message = message.as_deref().unwrap_or_default();
            assert!(message.contains("status 201"), "{message}");
        }
        other => panic!("not told that the operation ran: {other}"),
    }
    assert_eq!(err.key(), Some(first.key()));
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    handle.stop(true).await;
}
