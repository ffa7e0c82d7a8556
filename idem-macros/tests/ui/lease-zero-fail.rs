use idem_macros::idempotent;

// Under the lease's own minimum: the error names it, not the 1ms every duration needs.
#[idempotent(lease = "0s")]
async fn create() {}

fn main() {}
