// The user's names shadow the prelude and actix's: the expansion must not care.
extern crate idem as idem_actix;

mod api {
    #![allow(dead_code, non_camel_case_types)]

    pub struct Result;
    pub struct Option;
    pub struct Duration;
    pub struct String;
    pub struct HttpRequest;
    pub struct HttpResponse;
    pub struct Payload;
    pub struct FromRequest;
    pub mod web {}
    pub mod core {}
    pub mod std {}

    #[idem_actix::idempotent(ttl = "1h", lease = "30s", in_flight = "wait", wait_timeout = "2s")]
    pub async fn create(
        body: actix_web::web::Json<serde_json::Value>,
    ) -> ::core::result::Result<actix_web::HttpResponse, actix_web::Error> {
        ::core::result::Result::Ok(actix_web::HttpResponse::Created().json(body.into_inner()))
    }
}

fn main() {
    let _ = actix_web::App::new().route("/", actix_web::web::post().to(api::create));
}
