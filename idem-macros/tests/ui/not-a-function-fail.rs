use idem_macros::idempotent;

#[idempotent]
struct Handler;

fn main() {}
