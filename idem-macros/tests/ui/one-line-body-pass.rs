#![deny(warnings)]

extern crate idem as idem_actix;

use actix_web::{post, HttpResponse};
use idem_actix::idempotent;

// No extractors, and the body on one line: no warning that the expansion's braces are
// unnecessary (cargo fix would then break the handler).
#[post("/b")]
#[idempotent]
async fn b() -> HttpResponse { HttpResponse::Ok().finish() }

fn main() {
    let _ = actix_web::App::new().service(b);
}
