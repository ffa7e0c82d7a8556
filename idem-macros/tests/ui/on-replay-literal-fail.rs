use idem_macros::idempotent;

#[idempotent(on_replay = "log")]
async fn named() {}

#[idempotent(on_replay)]
async fn bare() {}

fn main() {}
