extern crate idem as idem_actix;

use actix_web::{web, HttpResponse};
use idem_actix::idempotent;

#[derive(serde::Deserialize)]
struct Call {
    to: String,
}

mod db {
    pub struct Call(pub String);
}

// An item of the body (here a `use` that names another `Call`) does not change what the
// arguments' types name.
#[idempotent]
async fn create(body: web::Json<Call>) -> HttpResponse {
    use db::Call;
    let stored = Call(body.into_inner().to);
    HttpResponse::Created().body(stored.0)
}

fn main() {
    let _ = actix_web::App::new().route("/calls", web::post().to(create));
}
