extern crate idem as idem_actix;

use idem_actix::idempotent;

fn tenant(req: &actix_web::HttpRequest) -> String {
    format!("{:?}", req.headers().get("x-tenant"))
}

#[idempotent(scope = tenant)]
async fn handler() -> &'static str {
    "created"
}

fn main() {}
