extern crate idem as idem_actix;

use actix_web::HttpResponse;
use idem_actix::idempotent;

// A header of one transfer or one request differs between a request and its retry: each
// retry would be in a scope of its own, never replayed, and would run the operation again.
#[idempotent(scope = "header:X-Request-ID")]
async fn per_request() -> HttpResponse {
    HttpResponse::Created().finish()
}

fn main() {}
