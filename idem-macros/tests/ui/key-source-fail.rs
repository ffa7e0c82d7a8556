use idem_macros::idempotent;

#[idempotent(key = "body:/event_id")]
async fn unknown_source() {}

#[idempotent(key = "json:event_id")]
async fn bad_pointer() {}

#[idempotent(key = "json:")]
async fn whole_body() {}

#[idempotent(key = "json:/event_id", header = "X-Event-Id")]
async fn with_header() {}

#[idempotent(key = "json:/event_id", fingerprint = "form")]
async fn in_a_form() {}

fn main() {}
