use idem_macros::idempotent;

#[idempotent(ttl = "11y")]
async fn create() {}

fn main() {}
