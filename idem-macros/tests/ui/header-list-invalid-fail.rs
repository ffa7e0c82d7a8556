use idem_macros::idempotent;

#[idempotent(fingerprint_headers = ["Content Type", "X-Tenant", "x-tenant"])]
async fn fingerprinted() {}

#[idempotent(replay_drop_headers = ["Set-Cookie", "X:Trace"])]
async fn replayed() {}

#[idempotent(replay_drop_headers = ["X-Trace", "Content-Encoding"])]
async fn decodable() {}

fn main() {}
