use idem_macros::idempotent;

#[idempotent(ttl = "1h", retries = 3)]
async fn handler() {}

fn main() {}
