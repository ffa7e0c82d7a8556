// An expectation of a lint on the handler's signature is met by the handler, not left
// unfulfilled on the generated one, whose signature is another.
#![deny(warnings)]
extern crate idem as idem_actix;

pub mod api {
    use actix_web::{web, HttpResponse};
    use idem_actix::idempotent;

    pub(crate) struct Call;

    impl actix_web::FromRequest for Call {
        type Error = actix_web::Error;
        type Future = std::future::Ready<Result<Self, actix_web::Error>>;
        fn from_request(_: &actix_web::HttpRequest, _: &mut actix_web::dev::Payload) -> Self::Future {
            std::future::ready(Ok(Call))
        }
    }

    #[idempotent]
    #[expect(private_interfaces)]
    pub async fn create(_call: Call) -> HttpResponse {
        HttpResponse::Created().finish()
    }

    pub fn register(cfg: &mut web::ServiceConfig) {
        cfg.route("/", web::post().to(create));
    }
}

fn main() {
    let _ = actix_web::App::new().configure(api::register);
}
