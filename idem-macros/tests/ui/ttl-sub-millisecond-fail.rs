use idem_macros::idempotent;

// Durations count whole milliseconds: 1500us would be cut to 1ms.
#[idempotent(ttl = "1500us")]
async fn create() {}

fn main() {}
