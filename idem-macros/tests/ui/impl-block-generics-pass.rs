extern crate idem as idem_actix;

use std::marker::PhantomData;

use actix_web::{web, HttpResponse, Responder};
use idem_actix::idempotent;

struct Api<T>(PhantomData<T>);

// The handler's bounds name the impl block's parameter, and its return type names neither.
impl<T: Send + Sync + 'static> Api<T> {
    #[idempotent]
    async fn create<C: Into<T> + Send + Sync + 'static>(_c: web::Data<C>) -> impl Responder {
        HttpResponse::Created().finish()
    }
}

struct Plain;

// A where clause that names `Self`.
impl Plain {
    #[idempotent]
    async fn create<C: Send + Sync + 'static>(_c: web::Data<C>) -> impl Responder
    where
        Self: Sized,
    {
        HttpResponse::Created().finish()
    }
}

fn main() {
    let _ = actix_web::App::new()
        .route("/a", web::post().to(Api::<u32>::create::<u32>))
        .route("/b", web::post().to(Plain::create::<u32>));
}
