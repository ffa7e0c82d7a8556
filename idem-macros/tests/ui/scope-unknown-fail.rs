use idem_macros::idempotent;

#[idempotent(scope = "tenant")]
async fn handler() {}

fn main() {}
