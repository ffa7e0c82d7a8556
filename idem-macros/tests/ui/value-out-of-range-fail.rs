use idem_macros::idempotent;

#[idempotent(key_max_len = 0)]
async fn handler() {}

fn main() {}
