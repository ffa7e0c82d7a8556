extern crate idem as idem_actix;

use actix_web::HttpResponse;
use idem_actix::idempotent;

// A hop-by-hop header (RFC 9110 7.6.1): proxies drop it, so the key never reaches the
// server and the retry runs unprotected. `Connection`, `Keep-Alive`, `TE`, `Upgrade` ... are
// refused; `Proxy-Connection` is not.
#[idempotent(header = "Proxy-Connection")]
async fn hop_by_hop() -> HttpResponse {
    HttpResponse::Created().finish()
}

fn main() {}
