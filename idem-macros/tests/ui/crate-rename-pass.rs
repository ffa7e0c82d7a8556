// The user depends on idem-actix as `idem` (see Cargo.toml), and says so.
use idem::idempotent;

#[idempotent(crate = "idem")]
async fn create() -> &'static str {
    "created"
}

#[idempotent(crate = "::idem", required)]
async fn create_required() -> &'static str {
    "created"
}

fn main() {
    let _ = actix_web::App::new()
        .route("/a", actix_web::web::post().to(create))
        .route("/b", actix_web::web::post().to(create_required));
}
