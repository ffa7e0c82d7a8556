use idem_macros::idempotent;

#[idempotent(lease = "50ms")]
async fn create() {}

fn main() {}
