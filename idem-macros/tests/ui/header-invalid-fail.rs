use idem_macros::idempotent;

#[idempotent(header = "Idempotency Key")]
async fn handler() {}

fn main() {}
