use idem_macros::idempotent;

#[idempotent(mismatch)]
async fn handler() {}

fn main() {}
