use idem_macros::idempotent;

#[idempotent(crate = "idem actix")]
async fn spaced() {}

#[idempotent(crate = "")]
async fn empty() {}

fn main() {}
