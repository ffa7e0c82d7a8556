extern crate idem as idem_actix;

use idem_actix::idempotent;

// One error, on the path, however often the expansion uses it.
#[idempotent(scope = no_such_function)]
async fn handler() -> &'static str {
    "created"
}

fn main() {}
