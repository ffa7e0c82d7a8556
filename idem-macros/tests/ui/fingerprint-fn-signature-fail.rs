extern crate idem as idem_actix;

use idem_actix::idempotent;

fn order_lines(body: &[u8]) -> Option<Vec<u8>> {
    Some(body.to_vec())
}

#[idempotent(fingerprint = order_lines)]
async fn handler() -> &'static str {
    "created"
}

fn main() {}
