extern crate idem as idem_actix;

use actix_web::{web, HttpResponse};
use idem_actix::idempotent;

// actix-web extracts at most 16 arguments: one more is named on the arguments, not in the
// generated code.
#[idempotent]
#[allow(clippy::too_many_arguments)]
async fn many(
    _a: web::Data<u8>,
    _b: web::Data<u8>,
    _c: web::Data<u8>,
    _d: web::Data<u8>,
    _e: web::Data<u8>,
    _f: web::Data<u8>,
    _g: web::Data<u8>,
    _h: web::Data<u8>,
    _i: web::Data<u8>,
    _j: web::Data<u8>,
    _k: web::Data<u8>,
    _l: web::Data<u8>,
    _m: web::Data<u8>,
    _n: web::Data<u8>,
    _o: web::Data<u8>,
    _p: web::Data<u8>,
    _q: web::Data<u8>,
) -> HttpResponse {
    HttpResponse::Ok().finish()
}

fn main() {}
