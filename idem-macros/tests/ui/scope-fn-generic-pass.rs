extern crate idem as idem_actix;

use std::marker::PhantomData;

use actix_web::{web, HttpRequest, HttpResponse};
use idem_actix::idempotent;

// Scope functions of generic items need no `'static` bound of their own.
struct Api<T>(PhantomData<T>);

impl<T> Api<T> {
    fn tenant(req: &HttpRequest) -> Option<String> {
        req.headers().get("x-tenant")?.to_str().ok().map(str::to_owned)
    }

    #[idempotent(scope = Self::tenant)]
    async fn create(id: web::Path<u32>) -> HttpResponse {
        HttpResponse::Created().body(format!("call_{id}"))
    }
}

fn tenant_of<C>(req: &HttpRequest) -> Option<String> {
    req.headers().get("x-tenant")?.to_str().ok().map(str::to_owned)
}

#[idempotent(scope = tenant_of::<C>)]
async fn create<C>() -> HttpResponse {
    HttpResponse::Created().finish()
}

fn main() {
    let _ = actix_web::App::new()
        .route("/a/{id}", web::post().to(Api::<u8>::create))
        .route("/b", web::post().to(create::<u8>));
}
