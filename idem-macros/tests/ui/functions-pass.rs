extern crate idem as idem_actix;

use std::marker::PhantomData;

use actix_web::{web, HttpRequest, HttpResponse};
use idem_actix::idempotent;

// Fingerprint functions, key functions and replay hooks, as free functions, associated
// functions of generic items (through `Self`), and generic functions.
fn lines(_: &HttpRequest, body: &[u8]) -> Option<Vec<u8>> {
    Some(body.to_vec())
}

fn event_id(req: &HttpRequest, _: &[u8]) -> Option<String> {
    req.headers().get("x-event")?.to_str().ok().map(str::to_owned)
}

fn log(_: &HttpRequest, res: &mut HttpResponse) {
    let _ = res.status();
}

struct Hooks<T>(PhantomData<T>);

impl<T> Hooks<T> {
    fn lines(_: &HttpRequest, body: &[u8]) -> Option<Vec<u8>> {
        Some(body.to_vec())
    }

    #[idempotent(fingerprint = Self::lines, key = event_id, on_replay = log)]
    async fn create() -> HttpResponse {
        HttpResponse::Created().finish()
    }
}

fn tagged<C>(_: &HttpRequest, res: &mut HttpResponse) {
    let _ = std::any::type_name::<C>();
    let _ = res.status();
}

#[idempotent(
    fingerprint = "json",
    fingerprint_ignore = ["/sent_at", "/meta/trace~1id", "/items/0"],
    fingerprint_headers = ["Content-Type"],
    replay_drop_headers = ["X-Trace-Id"],
    key = "json:/event_id",
    on_replay = tagged::<C>,
)]
async fn webhook<C>() -> HttpResponse {
    HttpResponse::Ok().finish()
}

#[idempotent(fingerprint = lines, replay_headers = ["Location", "Content-Type"])]
async fn upload() -> HttpResponse {
    HttpResponse::Created().finish()
}

fn main() {
    let _ = actix_web::App::new()
        .route("/a", web::post().to(Hooks::<u8>::create))
        .route("/b", web::post().to(webhook::<u8>))
        .route("/c", web::post().to(upload));
}
