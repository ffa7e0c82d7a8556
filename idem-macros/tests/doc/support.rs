// What the examples in `#[idempotent]`'s documentation share, out of sight: each one includes
// this file at its top, among its items, and runs its requests in `fn main`.

use actix_web::test::TestRequest;
use actix_web::{test, App};

/// A keyed `POST` of tenant `t`.
fn req(key: &str) -> TestRequest {
    TestRequest::post()
        .insert_header(("Authorization", "Bearer t"))
        .insert_header(("Idempotency-Key", key))
}

/// Sends `r`: its status, whether it was replayed, and its body.
async fn send(
    app: &impl actix_web::dev::Service<
        actix_http::Request,
        Response = actix_web::dev::ServiceResponse<impl actix_web::body::MessageBody>,
        Error = actix_web::Error,
    >,
    r: TestRequest,
) -> (u16, bool, String) {
    let res = test::call_service(app, r.to_request()).await;
    let replayed = res.headers().contains_key("idempotent-replayed");
    let status = res.status().as_u16();
    let body = String::from_utf8(test::read_body(res).await.to_vec()).unwrap();
    (status, replayed, body)
}

/// Runs an example's requests on an actix runtime.
fn block_on(example: impl std::future::Future<Output = ()>) {
    actix_web::rt::System::new().block_on(example)
}
