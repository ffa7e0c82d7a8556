extern crate idem as idem_actix;

use actix_web::{web, HttpResponse, Responder, ResponseError};
use idem_actix::idempotent;

trait Calls: Send + Sync + 'static {
    type Error: ResponseError + 'static;
}

// The body's value lacks a bound the signature's `impl Trait` names (`Clone`): refused as
// without the attribute, also beside a generic parameter.
#[idempotent]
async fn create<C: Calls>(_calls: web::Data<C>) -> Result<impl Responder + Clone, C::Error> {
    Ok(HttpResponse::Created().finish())
}

fn main() {}
