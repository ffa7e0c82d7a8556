extern crate idem as idem_actix;

use actix_web::{web, HttpResponse, Responder, ResponseError};
use idem_actix::idempotent;

trait Calls: Send + Sync + 'static {
    type Error: ResponseError + 'static;
    fn dial(&self, to: &str) -> Result<String, Self::Error>;
}

#[derive(Debug)]
struct Busy;

impl std::fmt::Display for Busy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("busy")
    }
}

impl ResponseError for Busy {}

struct FakeCarrier;

impl Calls for FakeCarrier {
    type Error = Busy;
    fn dial(&self, to: &str) -> Result<String, Busy> {
        Ok(format!("dialled {to}"))
    }
}

// An `impl Trait` beside the handler's generic parameter, in its bounds and where clause.
#[idempotent]
async fn create<C: Calls>(calls: web::Data<C>) -> Result<impl Responder, C::Error> {
    let dialled = calls.dial("+15555550123")?;
    Ok(HttpResponse::Created().body(dialled))
}

#[idempotent]
async fn create_where<C, const N: usize>(calls: web::Data<C>) -> Result<impl Responder, C::Error>
where
    C: Calls,
{
    Ok(HttpResponse::Created().body(calls.dial(&N.to_string())?))
}

struct CallsApi;

impl CallsApi {
    fn created() -> Result<HttpResponse, Busy> {
        Ok(HttpResponse::Created().finish())
    }

    // In an impl block, beside `Self`.
    #[idempotent]
    async fn create() -> Result<impl Responder, <Self as Failing>::Error> {
        Self::created()
    }
}

trait Failing {
    type Error;
}

impl Failing for CallsApi {
    type Error = Busy;
}

fn main() {
    let _ = actix_web::App::new()
        .app_data(web::Data::new(FakeCarrier))
        .route("/a", web::post().to(create::<FakeCarrier>))
        .route("/b", web::post().to(create_where::<FakeCarrier, 3>))
        .route("/c", web::post().to(CallsApi::create));
}
