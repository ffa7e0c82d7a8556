use idem_macros::idempotent;

// A mismatch answered with the first response never reads the fingerprint: these settings
// would change no answer.
#[idempotent(mismatch = "replay", fingerprint_headers = ["X-Account"])]
async fn headers() {}

#[idempotent(mismatch = "replay", fingerprint = "json", fingerprint_ignore = ["/sent_at"])]
async fn ignored() {}

fn main() {}
