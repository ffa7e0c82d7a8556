// Built-in attributes below `#[idempotent]` stay on the handler: the `unsafe(..)` forms
// edition 2024 requires, and one it does not list (`ignore`, which it takes for an attribute
// macro, and moves above itself once, and never again).
extern crate idem as idem_actix;

use actix_web::{web, App};
use idem_actix::idempotent;

#[idempotent]
#[doc(hidden)]
#[unsafe(export_name = "idem_ui_exported_handler")]
async fn exported(body: String) -> String {
    body
}

#[idempotent(ttl = "1h")]
#[tracing::instrument(skip_all)]
#[ignore = "a built-in attribute #[idempotent] does not list"]
async fn derived(body: String) -> String {
    body
}

fn main() {
    let _ = App::new()
        .route("/exported", web::post().to(exported))
        .route("/derived", web::post().to(derived));
}
