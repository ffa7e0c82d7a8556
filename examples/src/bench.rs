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

/// The routes a bench server can serve.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    /// `POST /bare/echo`: the handler without the layer.
    Bare,
    /// `POST /idem/echo`: the handler under the layer, on the app's (embedded) store.
    Idem,
    /// `POST /idem-redis/echo`: the handler under the layer, on a Redis store.
    IdemRedis,
}

impl std::str::FromStr for Route {
    type Err = String;

    fn from_str(name: &str) -> Result<Self, String> {
        match name {
            "bare" => Ok(Route::Bare),
            "idem" => Ok(Route::Idem),
            "idem-redis" => Ok(Route::IdemRedis),
            other => Err(format!(
                "unknown route `{other}`: expected bare, idem or idem-redis"
            )),
        }
    }
}

/// Registers `routes` in their order; `Route::IdemRedis` only when `redis` is given.
///
/// actix matches routes in the order they were registered, so each route pays a failed path
/// match for every route before it: `scripts/bench-http` runs the bare handler and the
/// idempotent ones in two servers, so that each measured route is the first of its app (but
/// `/idem-redis/echo`, which comes after `/idem/echo`). The in-process bench serves each route
/// from an app of its own.
pub fn configure(
    routes: Vec<Route>,
    redis: Option<idem_actix::IdempotencyConfig>,
) -> impl Fn(&mut web::ServiceConfig) + Clone {
    move |cfg| {
        for route in &routes {
            match (route, &redis) {
                (Route::Bare, _) => bare_route(cfg),
                (Route::Idem, _) => idem_route(cfg),
                (Route::IdemRedis, Some(redis)) => redis_route(cfg, redis.clone()),
                (Route::IdemRedis, None) => {}
            }
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
