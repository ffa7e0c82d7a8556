// Sixteen extractors and a seventeenth configured out: sixteen, as actix counts them.
extern crate idem as idem_actix;

use actix_web::{web, HttpRequest, HttpResponse};
use idem_actix::idempotent;

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
    _j: web::Data<u128>,
    _k: web::Data<i128>,
    _l: web::Data<usize>,
    _m: web::Data<isize>,
    _n: web::Data<f32>,
    _o: web::Data<f64>,
    _p: web::Bytes,
    #[cfg(any())] _q: web::Data<char>,
) -> HttpResponse {
    HttpResponse::Ok().finish()
}

fn main() {
    let _ = actix_web::App::new().route("/many", web::post().to(many));
}
