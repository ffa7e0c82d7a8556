// Handlers under an attribute a `macro_rules!` macro writes, around a handler written outside
// it, or around one of its own with settings passed in: the names the expansion binds resolve where it uses them,
// whichever macro the handler's own tokens come from.
extern crate idem as idem_actix;

use actix_web::{web, App, HttpRequest, HttpResponse};
use idem_actix::idempotent;

fn tenant(req: &HttpRequest) -> Option<String> {
    req.headers().get("x-tenant")?.to_str().ok().map(str::to_owned)
}

macro_rules! idempotent_item {
    ($handler:item) => {
        #[idempotent]
        $handler
    };
}

macro_rules! idempotent_handler {
    ($name:ident, $scope:path) => {
        #[idempotent(scope = $scope, ttl = "1h")]
        async fn $name(body: web::Json<serde_json::Value>) -> HttpResponse {
            HttpResponse::Created().json(body.into_inner())
        }
    };
}

idempotent_item! {
    async fn outside(body: web::Bytes) -> HttpResponse {
        HttpResponse::Created().body(body)
    }
}

idempotent_handler!(inside, tenant);

fn main() {
    let _ = App::new()
        .route("/outside", web::post().to(outside))
        .route("/inside", web::post().to(inside));
}
