extern crate idem as idem_actix;

use actix_web::{post, HttpRequest, HttpMessage, HttpResponse};
use idem_actix::idempotent;

/// What an authentication middleware left in the request's extensions.
#[derive(Clone)]
struct Claims {
    tenant: String,
}

fn tenant_from_claims(req: &HttpRequest) -> Option<String> {
    req.extensions().get::<Claims>().map(|c| c.tenant.clone())
}

mod auth {
    pub fn org(req: &actix_web::HttpRequest) -> Option<String> {
        req.headers().get("x-org")?.to_str().ok().map(str::to_owned)
    }
}

#[post("/a")]
#[idempotent(scope = tenant_from_claims, ttl = "1h")]
async fn a() -> HttpResponse {
    HttpResponse::Created().finish()
}

#[post("/b")]
#[idempotent(scope = auth::org)]
async fn b() -> HttpResponse {
    HttpResponse::Created().finish()
}

fn main() {
    let _ = actix_web::App::new().service(a).service(b);
}
