use idem_macros::idempotent;

// Lists take brackets; single values take none.
#[idempotent(fingerprint_headers = "Content-Type", replay_headers, ttl = ["24h"])]
async fn handler() {}

fn main() {}
