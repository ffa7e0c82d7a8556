use idem_macros::idempotent;

// The crate's path is written as a string, as serde's `crate` is.
#[idempotent(crate = idem)]
async fn unquoted() {}

#[idempotent(required = True)]
async fn flag() {}

fn main() {}
