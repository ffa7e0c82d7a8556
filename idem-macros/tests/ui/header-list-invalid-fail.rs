use idem_macros::idempotent;

#[idempotent(fingerprint_headers = ["Content Type", "X-Tenant", "x-tenant"])]
async fn fingerprinted() {}

#[idempotent(replay_drop_headers = ["Set-Cookie", "X:Trace"])]
async fn replayed() {}

#[idempotent(replay_drop_headers = ["X-Trace", "Content-Encoding"])]
async fn decodable() {}

// Headers of one transfer or one request are never replayed: listing them does nothing.
#[idempotent(replay_headers = ["Content-Type", "Date", "x-request-id"])]
async fn never_replayed() {}

fn main() {}
