use idem_macros::idempotent;

#[idempotent(per_endpoint = "")]
async fn unnamed() {}

#[idempotent(per_endpoint = 3)]
async fn numbered() {}

fn main() {}
