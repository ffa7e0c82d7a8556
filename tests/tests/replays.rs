//! What a replay returns: the recorded response's headers, less those the endpoint keeps out
//! of replays, in both forms.

use actix_web::{web, HttpResponse};
use idem_actix::idempotent;
use idem_tests::{serve, Counter, RawRequest};

fn call(path: &str, key: &str) -> RawRequest {
    RawRequest::post(path)
        .header("Authorization", "Bearer tenant-1")
        .header("Idempotency-Key", key)
        .body("{}")
}

#[idempotent(replay_set_cookie)]
async fn sign_in(runs: web::Data<Counter>) -> HttpResponse {
    runs.bump();
    HttpResponse::Created()
        .insert_header(("Set-Cookie", "session=first-caller; HttpOnly"))
        .body("signed in")
}

#[actix_web::test]
async fn an_attributed_endpoint_that_allows_it_replays_set_cookie() {
    let served = serve(|cfg| {
        cfg.route("/v1/sessions", web::post().to(sign_in));
    });
    let first = served.send(&call("/v1/sessions", "k")).await;
    assert_eq!(
        first.header("set-cookie"),
        Some("session=first-caller; HttpOnly")
    );
    let replay = served.send(&call("/v1/sessions", "k")).await;
    assert!(replay.replayed());
    assert_eq!(
        replay.header("set-cookie"),
        Some("session=first-caller; HttpOnly")
    );
    assert_eq!(served.runs.get(), 1);
}
