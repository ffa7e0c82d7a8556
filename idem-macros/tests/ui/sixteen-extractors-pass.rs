extern crate idem as idem_actix;

use actix_web::{web, HttpRequest, HttpResponse};
use idem_actix::{idempotent, IdempotencyKey, RequestId};

#[idempotent]
#[allow(clippy::too_many_arguments)]
async fn many(
    _a: HttpRequest,
    _b: web::Data<u8>,
    _c: web::Data<u16>,
    _d: web::Data<u32>,
    _e: web::Data<u64>,
    _f: web::Data<i8>,
    _g: web::Data<i16>,
    _h: web::Data<i32>,
    _i: web::Data<i64>,
    _j: web::Query<std::collections::HashMap<String, String>>,
    _k: web::Path<(u32,)>,
    _l: Option<IdempotencyKey>,
    _m: RequestId,
    _n: web::Header<actix_web::http::header::ContentType>,
    _o: actix_web::dev::ConnectionInfo,
    _p: web::Bytes,
) -> HttpResponse {
    HttpResponse::Ok().finish()
}

fn main() {
    let _ = actix_web::App::new().route("/many/{id}", web::post().to(many));
}
