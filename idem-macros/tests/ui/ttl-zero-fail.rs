use idem_macros::idempotent;

#[idempotent(ttl = "0s")]
async fn handler() {}

fn main() {}
