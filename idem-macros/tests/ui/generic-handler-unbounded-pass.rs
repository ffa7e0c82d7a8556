// A generic handler whose parameter's trait does not say `'static` (actix asks it of the
// handler where it is registered, as it does without the attribute).
extern crate idem as idem_actix;

use actix_web::{web, HttpResponse};
use idem_actix::idempotent;

trait Calls: Send + Sync {
    fn dial(&self, to: &str) -> String;
}

struct FakeCarrier;

impl Calls for FakeCarrier {
    fn dial(&self, to: &str) -> String {
        format!("dialled {to}")
    }
}

#[idempotent]
async fn create<C: Calls>(calls: web::Data<C>) -> HttpResponse {
    HttpResponse::Created().body(calls.dial("+15555550123"))
}

fn main() {
    let _ = actix_web::App::new()
        .app_data(web::Data::new(FakeCarrier))
        .route("/calls", web::post().to(create::<FakeCarrier>));
}
