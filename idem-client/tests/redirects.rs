//! A 3xx is the operation's answer: the client hands it back as it came, with what it says
//! of a replay, rather than following it into another request.

use std::sync::atomic::{AtomicU32, Ordering};

mod common;

use actix_web::http::header::LOCATION;
use actix_web::{get, post, web, HttpResponse};
use idem_actix::idempotent;
use idem_client::Client;

#[post("/v1/orders")]
#[idempotent(scope = "global")]
async fn create_order(runs: web::Data<AtomicU32>) -> HttpResponse {
    let n = runs.fetch_add(1, Ordering::SeqCst) + 1;
    // Post/redirect/get: the new order is at its own URL.
    HttpResponse::SeeOther()
        .insert_header((LOCATION, format!("/v1/orders/{n}")))
        .finish()
}

#[get("/v1/orders/{id}")]
async fn order(id: web::Path<u32>) -> HttpResponse {
    HttpResponse::Ok().body(format!("order {id}"))
}

/// A 303 after a POST (post/redirect/get) is what the operation answered and what its retry
/// gets replayed: followed, the client would hand back the GET's answer, which is never a
/// replay, so a caller could not tell that its retry created nothing.
#[actix_web::test]
async fn a_redirect_is_handed_back_as_the_operations_answer_and_its_replay_is_told() {
    let (base, runs, handle) = common::serve(|cfg| {
        cfg.service(create_order).service(order);
    });
    let url = format!("{base}/v1/orders");

    let client = Client::builder().build().unwrap();
    let first = client.post(&url).body("order").send().await.unwrap();
    assert_eq!(first.status(), 303, "{}", first.text());
    assert_eq!(first.headers()[LOCATION.as_str()], "/v1/orders/1");
    assert!(!first.replayed());

    let again = client
        .post(&url)
        .body("order")
        .idempotency_key(first.key())
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 303, "{}", again.text());
    assert!(again.replayed(), "the retry's answer is the replay");
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    handle.stop(true).await;
}

#[post("/v1/loop")]
#[idempotent(scope = "global")]
async fn loops(runs: web::Data<AtomicU32>) -> HttpResponse {
    runs.fetch_add(1, Ordering::SeqCst);
    HttpResponse::TemporaryRedirect()
        .insert_header((LOCATION, "/v1/loop"))
        .finish()
}

/// A caller's own reqwest client that follows redirects (against `http_client`'s advice) and
/// meets a loop has sent the operation, which ran: the error carries its key, where it was a
/// `Transport` error ("cannot send the request") without one, and a caller that sent the
/// operation again under a new key ran it twice.
#[actix_web::test]
async fn a_redirect_that_went_wrong_after_the_operation_ran_keeps_its_key() {
    let (base, runs, handle) = common::serve(|cfg| {
        cfg.service(loops);
    });
    // With the `rustls` feature, a reqwest client of the caller's own needs the process's
    // crypto provider installed before it is built, as `http_client`'s docs say.
    #[cfg(feature = "rustls")]
    #[allow(deprecated)] // ring's provider: no post-quantum key exchange, none needed here
    let _ = rustls::crypto::ring::default_provider().install_default();
    let following = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::limited(3))
        .build()
        .unwrap();
    let client = Client::builder().http_client(following).build().unwrap();
    let err = client
        .post(format!("{base}/v1/loop"))
        .idempotency_key("order-7")
        .send()
        .await
        .unwrap_err();
    assert!(runs.load(Ordering::SeqCst) >= 1);
    assert_eq!(err.key(), Some("order-7"), "{err}");
    assert!(err.to_string().contains("may have run"), "{err}");
    handle.stop(true).await;
}
