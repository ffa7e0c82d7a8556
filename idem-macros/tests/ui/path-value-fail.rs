use idem_macros::idempotent;

const DAY: &str = "24h";

#[idempotent(ttl = DAY)]
async fn handler() {}

fn main() {}
