use idem_macros::idempotent;

#[idempotent(lease = "")]
async fn handler() {}

fn main() {}
