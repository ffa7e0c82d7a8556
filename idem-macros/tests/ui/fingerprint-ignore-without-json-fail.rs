use idem_macros::idempotent;

#[idempotent(fingerprint_ignore = ["/sent_at"])]
async fn implicit_bytes() {}

#[idempotent(fingerprint = "form", fingerprint_ignore = ["/sent_at"])]
async fn form() {}

fn main() {}
