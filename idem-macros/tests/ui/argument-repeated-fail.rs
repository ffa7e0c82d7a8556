use idem_macros::idempotent;

#[idempotent(ttl = "1h", ttl = "2h")]
async fn handler() {}

fn main() {}
