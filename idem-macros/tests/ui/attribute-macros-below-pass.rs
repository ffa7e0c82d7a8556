// An attribute macro below `#[idempotent]` that reads the handler's signature sees the
// handler as written, as it does without `#[idempotent]`: `#[tracing::instrument]` records
// and skips the handler's own arguments.
extern crate idem as idem_actix;

use actix_web::{post, web, App, HttpResponse, Responder};
use idem_actix::idempotent;

#[idempotent]
#[tracing::instrument]
async fn recorded(body: String) -> impl Responder {
    body
}

#[idempotent(ttl = "1h")]
#[tracing::instrument(skip(body), fields(len = body.len()))]
async fn skipped(body: web::Bytes) -> HttpResponse {
    HttpResponse::Created().body(body)
}

#[post("/calls")]
#[idempotent]
#[tracing::instrument(skip_all, err)]
async fn routed(body: String) -> Result<HttpResponse, actix_web::Error> {
    Ok(HttpResponse::Created().body(body))
}

fn main() {
    let _ = App::new()
        .service(routed)
        .route("/recorded", web::post().to(recorded))
        .route("/skipped", web::post().to(skipped));
}
