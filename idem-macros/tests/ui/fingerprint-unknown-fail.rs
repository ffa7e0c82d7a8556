use idem_macros::idempotent;

#[idempotent(fingerprint = "xml")]
async fn handler() {}

fn main() {}
