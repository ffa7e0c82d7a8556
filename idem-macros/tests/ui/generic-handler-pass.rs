extern crate idem as idem_actix;

use actix_web::{web, HttpResponse, Responder};
use idem_actix::idempotent;

trait Calls: Send + Sync + 'static {
    fn dial(&self, to: &str) -> String;
}

struct FakeCarrier;

impl Calls for FakeCarrier {
    fn dial(&self, to: &str) -> String {
        format!("dialled {to}")
    }
}

#[idempotent]
async fn create<C: Calls>(calls: web::Data<C>, to: web::Path<String>) -> impl Responder {
    HttpResponse::Created().body(calls.dial(&to))
}

#[idempotent]
async fn create_where<C>(calls: web::Data<C>) -> Result<HttpResponse, actix_web::Error>
where
    C: Calls,
{
    let answer = calls.dial("+15555550123");
    Ok(HttpResponse::Created().body(answer))
}

fn main() {
    let _ = actix_web::App::new()
        .app_data(web::Data::new(FakeCarrier))
        .route("/calls/{to}", web::post().to(create::<FakeCarrier>))
        .route("/calls", web::post().to(create_where::<FakeCarrier>));
}
