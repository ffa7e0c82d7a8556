//! Answers from a record.

use actix_web::body::BoxBody;
use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::http::StatusCode;
use actix_web::HttpResponse;
use idem_core::Completed;

use crate::request_id::RequestId;

pub(super) fn with_request_id(mut res: HttpResponse, request_id: &RequestId) -> HttpResponse {
    if !res.headers().contains_key(&crate::REQUEST_ID) {
        res.headers_mut()
            .insert(crate::REQUEST_ID.clone(), request_id.header_value().clone());
    }
    res
}

/// The recorded response, with `Idempotent-Replayed: true` and this request's id. A recorded
/// `Set-Cookie` (kept while the endpoint allowed it) is repeated only while it still does.
pub(super) fn replay(record: &Completed, request_id: &RequestId, set_cookie: bool) -> HttpResponse {
    let recorded = &record.response;
    let status =
        StatusCode::from_u16(recorded.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut res = HttpResponse::with_body(status, BoxBody::new(recorded.body()));
    let headers = res.headers_mut();
    // Sized once for the stored headers and the two added below, rather than grown twice.
    headers.reserve(recorded.header_count() + 2);
    for (name, value) in recorded.shared_headers() {
        if !set_cookie && name.eq_ignore_ascii_case("set-cookie") {
            continue;
        }
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_maybe_shared(value),
        ) {
            headers.append(name, value);
        }
    }
    headers.insert(
        crate::IDEMPOTENT_REPLAYED.clone(),
        HeaderValue::from_static("true"),
    );
    // Stored headers never hold an `X-Request-ID` (see `replayable`): the replay carries this
    // request's.
    headers.insert(crate::REQUEST_ID.clone(), request_id.header_value().clone());
    res
}
