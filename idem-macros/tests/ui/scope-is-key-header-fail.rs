extern crate idem as idem_actix;

use actix_web::HttpResponse;
use idem_actix::idempotent;

// The scope read from the key's own header: every key its own scope, reached by any caller
// who sends it.
#[idempotent(scope = "header:X-Idempotency-Key", header = "x-idempotency-key")]
async fn handler() -> HttpResponse {
    HttpResponse::Created().finish()
}

fn main() {}
