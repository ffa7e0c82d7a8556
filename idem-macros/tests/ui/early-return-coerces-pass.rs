// An early `return` coerces to the declared return type, as it does without the attribute.
extern crate idem as idem_actix;

use actix_web::{web, App, HttpResponse};
use idem_actix::idempotent;

#[derive(Debug)]
struct Invalid;

impl std::fmt::Display for Invalid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("invalid")
    }
}

impl std::error::Error for Invalid {}

#[idempotent]
async fn boxed(body: String) -> Result<HttpResponse, Box<dyn std::error::Error>> {
    if body.is_empty() {
        return Err(Box::new(Invalid));
    }
    let n: u32 = body.trim().parse()?;
    // A closure's and an async block's own returns are theirs.
    let twice = |n: u32| -> Option<u32> { return n.checked_mul(2) };
    let later = async move { return n };
    Ok(HttpResponse::Created().body(format!("{} {}", twice(n).unwrap_or(0), later.await)))
}

fn main() {
    let _ = App::new().route("/", web::post().to(boxed));
}
