extern crate idem as idem_actix;

use actix_web::HttpResponse;
use idem_actix::idempotent;

// Headers of one transfer or one request differ between a request and its retry: a genuine
// retry is answered 409 for the rest of the TTL.
#[idempotent(fingerprint_headers = ["Connection", "Date"])]
async fn per_transfer() -> HttpResponse {
    HttpResponse::Created().finish()
}

fn main() {}
