//! An answer larger than the client's `max_response` is not read into memory: the client
//! stops with the operation's key, since the operation may have run, and a send with the same
//! key and a larger limit gets its answer (replayed) instead of a second run.

use std::sync::atomic::{AtomicU32, Ordering};

mod common;

use actix_web::web::Bytes;
use actix_web::{post, web, HttpResponse};
use futures_util::stream;
use idem_actix::idempotent;
use idem_client::{Client, Error};

const REPORT: usize = 64 * 1024;

#[post("/v1/reports")]
#[idempotent(scope = "global")]
async fn create_report(runs: web::Data<AtomicU32>) -> HttpResponse {
    runs.fetch_add(1, Ordering::SeqCst);
    HttpResponse::Created().body(vec![b'r'; REPORT])
}

/// The same report without a declared size: sent in chunks, as a stream.
#[post("/v1/streamed-reports")]
#[idempotent(scope = "global")]
async fn create_streamed_report(runs: web::Data<AtomicU32>) -> HttpResponse {
    runs.fetch_add(1, Ordering::SeqCst);
    let chunks = (0..REPORT / 1024)
        .map(|_| Ok::<_, std::convert::Infallible>(Bytes::from(vec![b'r'; 1024])));
    HttpResponse::Created().streaming(stream::iter(chunks))
}

#[actix_web::test]
async fn an_answer_over_max_response_stops_with_its_key_and_a_larger_limit_gets_it_replayed() {
    let (base, runs, handle) = common::serve(|cfg| {
        cfg.service(create_report).service(create_streamed_report);
    });

    let small = Client::builder().max_response(1024).build().unwrap();
    let large = Client::builder().build().unwrap();
    for (n, path) in [(1, "/v1/reports"), (2, "/v1/streamed-reports")] {
        let url = format!("{base}{path}");
        let err = small.post(&url).body("report").send().await.unwrap_err();
        let key = match &err {
            Error::ResponseTooLarge { key, status, limit } => {
                assert_eq!(*status, 201, "{path}");
                assert_eq!(*limit, 1024, "{path}");
                key.clone()
            }
            other => panic!("{path}: not told the answer was too large: {other}"),
        };
        assert_eq!(err.key(), Some(key.as_str()));
        assert!(err.to_string().contains("max_response"), "{err}");
        assert_eq!(
            runs.load(Ordering::SeqCst),
            n,
            "{path}: retried into a second run"
        );

        let again = large
            .post(&url)
            .body("report")
            .idempotency_key(&key)
            .send()
            .await
            .unwrap();
        assert_eq!(again.status(), 201, "{path}");
        assert!(again.replayed(), "{path}");
        assert_eq!(again.body().len(), REPORT, "{path}");
        assert_eq!(runs.load(Ordering::SeqCst), n, "{path}");
    }
    handle.stop(true).await;
}

/// A proxy's 503 (or 502, 504) page larger than `max_response`, before an answer.
#[post("/v1/behind-a-proxy/{status}")]
async fn behind_a_proxy(runs: web::Data<AtomicU32>, status: web::Path<u16>) -> HttpResponse {
    if runs.fetch_add(1, Ordering::SeqCst) > 0 {
        return HttpResponse::Created().body("done");
    }
    let status = actix_web::http::StatusCode::from_u16(*status).unwrap();
    HttpResponse::build(status)
        .insert_header(("Retry-After", "0"))
        .body(vec![b'p'; REPORT])
}

/// A 502, 503 or 504 says nothing of the operation however large its page, and neither does
/// a 409 of a key still in flight: each is retried as it would be with a small page, where it
/// was stopped as an answer too large to read.
#[actix_web::test]
async fn a_retryable_status_with_a_page_over_max_response_is_retried() {
    let (base, runs, handle) = common::serve(|cfg| {
        cfg.service(behind_a_proxy);
    });
    let client = Client::builder()
        .max_response(1024)
        .initial_backoff(std::time::Duration::from_millis(1))
        .build()
        .unwrap();
    for status in [502, 503, 504, 409] {
        runs.store(0, Ordering::SeqCst);
        let url = format!("{base}/v1/behind-a-proxy/{status}");
        let answer = match client.post(&url).body("report").send().await {
            Ok(answer) => answer,
            Err(err) => panic!("{status}: not retried: {err}"),
        };
        assert_eq!(answer.status(), 201, "{status}");
        assert_eq!(answer.attempts(), 2, "{status}");
    }
    handle.stop(true).await;
}
