// Lifetime parameters, which actix makes `'static` where the handler is registered.
extern crate idem as idem_actix;

use actix_web::web;
use idem_actix::idempotent;

#[idempotent]
async fn label<'a>(_body: String) -> &'a str {
    "created"
}

#[idempotent]
async fn names<'a>(names: web::Data<Vec<&'a str>>) -> String {
    names.join(",")
}

#[idempotent]
async fn bounded<'a>(_body: String) -> impl actix_web::Responder + 'a {
    "created"
}

fn main() {
    let _ = actix_web::App::new()
        .route("/a", web::post().to(label))
        .route("/b", web::post().to(names))
        .route("/c", web::post().to(bounded));
}
