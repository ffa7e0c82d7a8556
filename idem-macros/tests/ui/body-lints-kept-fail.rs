#![deny(unused_braces)]

extern crate idem as idem_actix;

use actix_web::HttpResponse;
use idem_actix::idempotent;

fn identity(n: u32) -> u32 {
    n
}

// The handler's own needless braces are still linted under the attribute.
#[idempotent]
async fn create() -> HttpResponse {
    let n = identity({ 7 });
    HttpResponse::Created().body(n.to_string())
}

fn main() {}
