use idem_macros::idempotent;

// 1.001 hours is 3603.6 s: a fraction of an hour (or a day, week or year) is read only where
// it comes to whole seconds, and humantime's own error blamed the number's size.
#[idempotent(ttl = "1.001h")]
async fn create() {}

fn main() {}
