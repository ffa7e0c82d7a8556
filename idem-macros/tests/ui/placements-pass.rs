extern crate idem as idem_actix;

use actix_web::{post, route, routes, web, HttpResponse, Responder};
use idem_actix::idempotent;

#[post("/below")]
#[idempotent]
async fn below() -> impl Responder {
    HttpResponse::Created()
}

#[idempotent]
#[post("/above")]
async fn above() -> impl Responder {
    "created"
}

#[route("/route", method = "POST", method = "PUT")]
#[idempotent(per_endpoint)]
async fn any_method() -> HttpResponse {
    HttpResponse::Ok().finish()
}

#[routes]
#[post("/one")]
#[post("/two")]
#[idempotent]
async fn two_paths() -> HttpResponse {
    HttpResponse::Ok().finish()
}

#[idempotent]
async fn plain(body: String) -> String {
    body
}

fn main() {
    let _ = actix_web::App::new()
        .service(below)
        .service(above)
        .service(any_method)
        .service(two_paths)
        .service(web::resource("/plain").route(web::post().to(plain)));
}
