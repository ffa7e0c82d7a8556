use idem_macros::idempotent;

#[idempotent]
fn handler() {}

fn main() {}
