// A return type that says what it captures (`use<..>`).
extern crate idem as idem_actix;

use actix_web::{web, Responder};
use idem_actix::idempotent;

#[idempotent]
async fn create(body: String) -> impl Responder + use<> {
    body
}

fn main() {
    let _ = actix_web::App::new().route("/", web::post().to(create));
}
