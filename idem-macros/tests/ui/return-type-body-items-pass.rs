// The body's own items (a `use`, a `type`) do not change what the return type names: the
// signature read `Error` and `Result` before them.
extern crate idem as idem_actix;

use actix_web::{web, Error, HttpResponse, Responder};
use idem_actix::idempotent;

#[idempotent]
async fn create(body: String) -> Result<HttpResponse, Error> {
    use std::fmt::Error;
    let _local: Result<(), Error> = Ok(());
    Ok(HttpResponse::Created().body(body))
}

#[idempotent]
async fn opaque(body: String) -> Result<impl Responder, Error> {
    type Result<T> = std::result::Result<T, std::fmt::Error>;
    let _local: Result<()> = Ok(());
    Ok(body)
}

fn main() {
    let _ = actix_web::App::new()
        .route("/a", web::post().to(create))
        .route("/b", web::post().to(opaque));
}
