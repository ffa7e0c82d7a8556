use idem_macros::idempotent;

#[idempotent(ttl = "24x")]
async fn handler() {}

fn main() {}
