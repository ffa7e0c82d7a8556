extern crate idem as idem_actix;

use actix_web::HttpRequest;
use idem_actix::idempotent;

fn delivery(req: &HttpRequest) -> Option<String> {
    req.headers().get("x-delivery")?.to_str().ok().map(str::to_owned)
}

#[idempotent(key = delivery)]
async fn handler() -> &'static str {
    "created"
}

fn main() {}
