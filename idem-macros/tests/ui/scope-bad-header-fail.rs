use idem_macros::idempotent;

#[idempotent(scope = "header:X Tenant")]
async fn handler() {}

fn main() {}
