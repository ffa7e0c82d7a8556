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
