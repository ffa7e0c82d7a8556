// An `impl Trait` return type beside a const argument written as a name (a module's constant,
// the handler's own const parameter), which reads as a type.
extern crate idem as idem_actix;

use actix_web::body::BoxBody;
use actix_web::{web, HttpRequest, HttpResponse, Responder};
use idem_actix::idempotent;

pub struct Wrap<R, const N: usize>(R);

impl<R: Responder, const N: usize> Responder for Wrap<R, N> {
    type Body = BoxBody;

    fn respond_to(self, req: &HttpRequest) -> HttpResponse {
        self.0.respond_to(req).map_into_boxed_body()
    }
}

const MAX: usize = 3;

#[idempotent]
async fn named(body: String) -> Wrap<impl Responder, MAX> {
    Wrap(body)
}

#[idempotent]
async fn generic<const N: usize>(body: String) -> Wrap<impl Responder, N> {
    Wrap(body)
}

fn main() {
    let _ = actix_web::App::new()
        .route("/a", web::post().to(named))
        .route("/b", web::post().to(generic::<2>));
}
