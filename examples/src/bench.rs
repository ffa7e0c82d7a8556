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
pub fn configure(
    redis: Option<idem_actix::IdempotencyConfig>,
) -> impl Fn(&mut web::ServiceConfig) + Clone {
    move |cfg| {
        cfg.route("/bare/echo", web::post().to(bare))
            .route("/idem/echo", web::post().to(idem));
        if let Some(redis) = &redis {
            cfg.service(
                web::scope("/idem-redis")
                    .app_data(redis.clone())
                    .route("/echo", web::post().to(idem)),
            );
        }
    }
}
