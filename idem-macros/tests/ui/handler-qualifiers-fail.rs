extern crate idem as idem_actix;

use actix_web::HttpResponse;
use idem_actix::idempotent;

// Qualifiers no actix-web handler has, which the generated handler would drop unseen.
#[idempotent]
async unsafe fn unsafe_handler() -> HttpResponse {
    HttpResponse::Created().finish()
}

#[idempotent]
async extern "C" fn extern_handler() -> HttpResponse {
    HttpResponse::Created().finish()
}

#[idempotent]
const async fn const_handler() -> HttpResponse {
    HttpResponse::Created().finish()
}

fn main() {}
