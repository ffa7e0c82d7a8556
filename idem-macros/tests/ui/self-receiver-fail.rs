use idem_macros::idempotent;

struct Api;

impl Api {
    #[idempotent]
    async fn handler(&self) {}
}

fn main() {}
