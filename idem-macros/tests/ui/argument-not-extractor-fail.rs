extern crate idem as idem_actix;

use actix_web::HttpResponse;
use idem_actix::idempotent;

#[derive(serde::Deserialize)]
struct NewCall {
    phone_number: String,
}

// `web::Json<NewCall>` was meant: the error names the argument.
#[idempotent]
async fn create(body: NewCall) -> HttpResponse {
    HttpResponse::Created().body(body.phone_number)
}

fn main() {}
