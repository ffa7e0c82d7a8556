use idem_macros::idempotent;

#[idempotent(ttl = "-1h")]
async fn handler() {}

fn main() {}
