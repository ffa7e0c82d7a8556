use idem_macros::idempotent;

// Each pointer is checked on its own token: no leading `/`, a bad `~` escape, the whole body,
// a repeat, and something that is not a string.
#[idempotent(
    fingerprint = "json",
    fingerprint_ignore = ["sent_at", "/meta/a~2", "", "/ts", "/ts", 3]
)]
async fn handler() {}

fn main() {}
