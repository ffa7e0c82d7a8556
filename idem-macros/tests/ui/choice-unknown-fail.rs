use idem_macros::idempotent;

#[idempotent(mismatch = "ignore", cache = "all", in_flight = "queue", errors = "xml")]
async fn handler() {}

fn main() {}
