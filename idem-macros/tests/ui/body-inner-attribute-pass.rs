// An inner attribute of the handler's body (`#![allow(..)]`) stays the body's, as it does
// without `#[idempotent]`, whatever attribute macros sit above or below it.
extern crate idem as idem_actix;

use actix_web::{post, web, App, HttpResponse};
use idem_actix::idempotent;

#[idempotent]
async fn create() -> HttpResponse {
    #![allow(unused_variables)]
    let unused = 1;
    HttpResponse::Created().finish()
}

#[post("/routed")]
#[idempotent]
async fn routed() -> HttpResponse {
    #![allow(unused_variables)]
    let unused = 1;
    HttpResponse::Created().finish()
}

#[idempotent]
#[post("/below")]
async fn below() -> HttpResponse {
    #![allow(unused_variables)]
    let unused = 1;
    HttpResponse::Created().finish()
}

#[idempotent]
#[tracing::instrument]
async fn instrumented() -> HttpResponse {
    #![allow(unused_variables)]
    let unused = 1;
    HttpResponse::Created().finish()
}

fn main() {
    let _ = App::new()
        .service(routed)
        .service(below)
        .route("/create", web::post().to(create))
        .route("/instrumented", web::post().to(instrumented));
}
