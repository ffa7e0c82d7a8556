use idem_macros::idempotent;

// Durations count whole milliseconds: 1500500us would be cut to 1.5s.
#[idempotent(ttl = "1500500us")]
async fn create() {}

fn main() {}
