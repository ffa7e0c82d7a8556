// "At most 10 years" takes a year as humantime writes one ("10y" is 3652.5 days).
extern crate idem as idem_actix;

use actix_web::HttpResponse;
use idem_actix::idempotent;

#[idempotent(ttl = "10y")]
async fn create() -> HttpResponse {
    HttpResponse::Created().finish()
}

fn main() {
    let _ = actix_web::App::new().route("/", actix_web::web::post().to(create));
}
