// An `impl Trait` return type that names the `impl` block's parameters, which the expansion
// cannot see, as a store generic over its backend's error would.
extern crate idem as idem_actix;

use std::marker::PhantomData;

use actix_web::{web, HttpResponse, Responder, ResponseError};
use idem_actix::idempotent;

trait Store: 'static {
    type Error: ResponseError + 'static;
    fn save(&self) -> Result<(), Self::Error>;
}

#[derive(Debug)]
struct Busy;

impl std::fmt::Display for Busy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("busy")
    }
}

impl ResponseError for Busy {}

#[derive(Debug)]
struct Mem;

impl Store for Mem {
    type Error = Busy;
    fn save(&self) -> Result<(), Busy> {
        Ok(())
    }
}

struct Api<S>(PhantomData<S>);

impl<S: Store> Api<S> {
    #[idempotent]
    async fn create(store: web::Data<S>) -> Result<impl Responder, S::Error> {
        store.save()?;
        Ok(HttpResponse::Created().finish())
    }
}

fn main() {
    let _ = actix_web::App::new().route("/a", web::post().to(Api::<Mem>::create));
}
