extern crate idem as idem_actix;

use actix_web::HttpResponse;
use idem_actix::idempotent;

#[idempotent]
#[idempotent(mismatch = "replay")]
async fn create() -> HttpResponse {
    HttpResponse::Created().finish()
}

fn main() {}
