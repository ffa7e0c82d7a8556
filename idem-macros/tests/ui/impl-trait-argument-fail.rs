use idem_macros::idempotent;

#[idempotent]
async fn handler(body: impl std::fmt::Debug) {
    let _ = body;
}

fn main() {}
