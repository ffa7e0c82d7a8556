extern crate idem as idem_actix;

use actix_web::HttpResponse;
use idem_actix::idempotent;

// Meant as ten minutes: humantime reads `M` as months.
#[idempotent(ttl = "10M")]
async fn create() -> HttpResponse {
    HttpResponse::Created().finish()
}

fn main() {}
