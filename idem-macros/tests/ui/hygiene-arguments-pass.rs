// Arguments named as the expansion's own locals neither shadow nor swap them.
extern crate idem as idem_actix;

use std::collections::HashMap;

use actix_web::{web, HttpResponse};
use idem_actix::idempotent;

#[idempotent]
async fn swapped(
    __idem_arg1: web::Path<String>,
    query: web::Query<HashMap<String, String>>,
) -> HttpResponse {
    HttpResponse::Ok().body(format!("{} {}", __idem_arg1.into_inner(), query.len()))
}

#[idempotent]
async fn request(__idem_req: String, __idem_payload: web::Bytes) -> HttpResponse {
    HttpResponse::Ok().body(format!("{__idem_req} {}", __idem_payload.len()))
}

fn main() {
    let _ = actix_web::App::new()
        .route("/a/{x}", web::post().to(swapped))
        .route("/b", web::post().to(request));
}
