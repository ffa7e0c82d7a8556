use idem_macros::idempotent;

// A literal's suffix is no part of the argument: `300u8` is no `u8`, and `"24h"ms` no
// milliseconds.
#[idempotent(key_max_len = 300u8)]
async fn integer() {}

#[idempotent(ttl = "24h"ms)]
async fn string() {}

#[idempotent(fingerprint_headers = ["Content-Type"x])]
async fn listed() {}

// A duration or a size written as a number with its unit: the fix is a string, or a count of
// bytes, not the bare number.
#[idempotent(ttl = 24h)]
async fn unquoted_duration() {}

#[idempotent(max_body = 2MiB)]
async fn unit_of_size() {}

fn main() {}
