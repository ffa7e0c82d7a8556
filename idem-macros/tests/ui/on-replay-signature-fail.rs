extern crate idem as idem_actix;

use actix_web::HttpRequest;
use idem_actix::idempotent;

fn count(_: &HttpRequest) {}

#[idempotent(on_replay = count)]
async fn handler() -> &'static str {
    "created"
}

fn main() {}
