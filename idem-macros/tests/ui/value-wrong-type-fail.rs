use idem_macros::idempotent;

#[idempotent(ttl = 24, key_max_len = "255", required = "yes")]
async fn handler() {}

fn main() {}
