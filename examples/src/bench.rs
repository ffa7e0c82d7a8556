//! The handlers `bench-server` and the in-process benchmarks measure: one trivial JSON
//! handler, bare and under `#[idempotent(scope = "global")]`.

use actix_web::{web, HttpResponse};
use idem_actix::idempotent;
use serde::Deserialize;
use serde_json::json;

/// The echo body.
#[derive(Deserialize)]
pub struct Echo {
    agent_id: String,
    phone_number: String,
}

/// Parses the body and answers 201 with a small JSON body.
pub async fn bare(body: web::Json<Echo>) -> HttpResponse {
    HttpResponse::Created().json(json!({
        "id": "call_1",
        "agent_id": body.agent_id,
        "phone_number": body.phone_number,
    }))
}

/// The same handler, idempotent.
#[idempotent(scope = "global")]
pub async fn idem(body: web::Json<Echo>) -> HttpResponse {
    bare(body).await
}

/// Registers `POST /bare/echo` and `POST /idem/echo`, and `POST /idem-redis/echo` when
/// `redis` is given: the same handler on a Redis store.
///
/// actix matches routes in the order they were registered, so `/idem/echo` pays one failed
/// path match more than `/bare/echo` (and `/idem-redis/echo` two): a bias against the layer,
/// small beside the harness's noise over loopback. The in-process bench serves each route from
/// an app of its own instead.
pub fn configure(
    redis: Option<idem_actix::IdempotencyConfig>,
) -> impl Fn(&mut web::ServiceConfig) + Clone {
    move |cfg| {
        bare_route(cfg);
        idem_route(cfg);
        if let Some(redis) = &redis {
            redis_route(cfg, redis.clone());
        }
    }
}

/// `POST /bare/echo`: the handler without the layer.
pub fn bare_route(cfg: &mut web::ServiceConfig) {
    cfg.route("/bare/echo", web::post().to(bare));
}

/// `POST /idem/echo`: the handler under the layer, on the app's store.
pub fn idem_route(cfg: &mut web::ServiceConfig) {
    cfg.route("/idem/echo", web::post().to(idem));
}

/// `POST /idem-redis/echo`: the handler under the layer, on `redis`.
pub fn redis_route(cfg: &mut web::ServiceConfig, redis: idem_actix::IdempotencyConfig) {
    cfg.service(
        web::scope("/idem-redis")
            .app_data(redis)
            .route("/echo", web::post().to(idem)),
    );
}
