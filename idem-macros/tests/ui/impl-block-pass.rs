extern crate idem as idem_actix;

use actix_web::{web, HttpResponse};
use idem_actix::idempotent;

struct CallsApi;

impl CallsApi {
    fn created(id: u32) -> HttpResponse {
        HttpResponse::Created().body(format!("call_{id}"))
    }

    fn tenant(req: &actix_web::HttpRequest) -> Option<String> {
        req.headers().get("x-tenant")?.to_str().ok().map(str::to_owned)
    }

    #[idempotent(scope = Self::tenant)]
    async fn create(id: web::Path<u32>) -> HttpResponse {
        Self::created(id.into_inner())
    }

    fn register(cfg: &mut web::ServiceConfig) {
        cfg.service(web::resource("/calls/{id}").route(web::post().to(Self::create)));
    }
}

fn main() {
    let _ = actix_web::App::new().configure(CallsApi::register);
}
