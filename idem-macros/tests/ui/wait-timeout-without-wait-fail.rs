use idem_macros::idempotent;

#[idempotent(wait_timeout = "5s")]
async fn handler() {}

fn main() {}
