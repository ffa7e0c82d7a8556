use idem_macros::idempotent;

// Arguments are `name = value`, separated by commas: each mistake is named where it is.
#[idempotent(ttl: "24h")]
async fn colon() {}

#[idempotent(ttl = "24h" scope = "global")]
async fn no_comma() {}

#[idempotent("24h")]
async fn no_name() {}

#[idempotent(ttl = , required)]
async fn no_value() {}

#[idempotent(ttl = concat!("1", "h"))]
async fn a_macro() {}

fn main() {}
