// Attributes on a handler's arguments mean what they mean without the attribute: an argument
// configured out is not extracted (its type need not even exist), and a lint level holds for
// its binding.
#![deny(unused_variables)]

extern crate idem as idem_actix;

use actix_web::{web, App, HttpRequest, HttpResponse};
use idem_actix::idempotent;

#[idempotent]
async fn create(
    #[cfg(any())] audit: web::Data<AuditLogThatIsNotBuilt>,
    #[cfg(all())] body: String,
    #[cfg_attr(all(), allow(unused_variables))] req: HttpRequest,
    #[allow(unused_variables)] query: web::Query<std::collections::HashMap<String, String>>,
) -> HttpResponse {
    HttpResponse::Created().body(body)
}

fn main() {
    let _ = App::new().route("/calls", web::post().to(create));
}
