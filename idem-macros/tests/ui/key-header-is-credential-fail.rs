extern crate idem as idem_actix;

use actix_web::HttpResponse;
use idem_actix::idempotent;

// Keys read from the header the scope reads the caller's credential from: every request with
// that credential carries one key (or is refused, a credential with a space being no key).
#[idempotent(scope = "api_key", header = "authorization")]
async fn per_api_key() -> HttpResponse {
    HttpResponse::Created().finish()
}

#[idempotent(scope = "basic_auth_user", header = "Authorization")]
async fn per_basic_user() -> HttpResponse {
    HttpResponse::Created().finish()
}

// Not what the scope reads, or no scope of its own (the application's, not known here, is
// judged on keyed requests): taken.
#[idempotent(header = "X-API-Key")]
async fn the_application_s_scope() -> HttpResponse {
    HttpResponse::Created().finish()
}

#[idempotent(scope = "basic_auth_user", header = "X-API-Key")]
async fn other_header() -> HttpResponse {
    HttpResponse::Created().finish()
}

fn main() {}
