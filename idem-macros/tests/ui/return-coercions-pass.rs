// Every way a handler's body hands back its value coerces to the declared return type, as it
// does without the attribute: a `return` written by a `macro_rules!` macro, a tail expression,
// and a `return` in a handler whose return type holds an `impl Trait`.
extern crate idem as idem_actix;

use std::error::Error;

use actix_web::{web, App, HttpResponse, Responder};
use idem_actix::idempotent;

macro_rules! bail {
    ($e:expr) => {
        return Err(Box::new($e))
    };
}

#[idempotent]
async fn returns_in_a_macro(body: String) -> Result<HttpResponse, Box<dyn Error>> {
    if body.is_empty() {
        bail!(std::fmt::Error);
    }
    Ok(HttpResponse::Created().body(body))
}

#[idempotent]
async fn tail(body: String) -> Result<HttpResponse, Box<dyn Error>> {
    if body.is_empty() {
        Err(Box::new(std::fmt::Error))
    } else {
        Ok(HttpResponse::Created().body(body))
    }
}

#[idempotent]
async fn opaque(body: String) -> Result<impl Responder, Box<dyn Error>> {
    if body.is_empty() {
        return Err(Box::new(std::fmt::Error));
    }
    Ok(body)
}

#[idempotent]
async fn opaque_tail(body: String) -> Result<impl Responder, Box<dyn Error>> {
    match body.parse::<u32>() {
        Ok(n) => Ok(n.to_string()),
        Err(e) => Err(Box::new(e)),
    }
}

fn main() {
    let _ = App::new()
        .route("/a", web::post().to(returns_in_a_macro))
        .route("/b", web::post().to(tail))
        .route("/c", web::post().to(opaque))
        .route("/d", web::post().to(opaque_tail));
}
