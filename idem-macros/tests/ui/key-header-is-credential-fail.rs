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

// A credential the scope does not read, and other headers clients send for another purpose
// (a cookie, the body's type), carry one value on many requests: refused too, whatever the
// scope.
#[idempotent(header = "X-API-Key")]
async fn the_application_s_scope() -> HttpResponse {
    HttpResponse::Created().finish()
}

#[idempotent(scope = "basic_auth_user", header = "X-API-Key")]
async fn other_header() -> HttpResponse {
    HttpResponse::Created().finish()
}

#[idempotent(scope = "global", header = "Cookie")]
async fn a_cookie() -> HttpResponse {
    HttpResponse::Created().finish()
}

#[idempotent(header = "content-type")]
async fn the_body_s_type() -> HttpResponse {
    HttpResponse::Created().finish()
}

// A header of its own: taken.
#[idempotent(scope = "basic_auth_user", header = "X-Idempotency-Key")]
async fn its_own() -> HttpResponse {
    HttpResponse::Created().finish()
}

fn main() {}
