//! How the layer's own errors look on the wire.

use std::panic::AssertUnwindSafe;

use actix_web::http::header::{self, HeaderValue};
use actix_web::http::StatusCode;
use actix_web::HttpResponse;
use idem_core::{ErrorFormat, IdempotencyError};
use serde_json::json;

use crate::RequestId;

/// Turns an error of the idempotency layer into a response.
///
/// The layer sets the status, `Retry-After`, `X-Request-ID` and `Cache-Control: no-store`
/// afterwards, and removes any `Idempotent-Replayed` (an error is never a replay), so a
/// renderer only chooses the body and its content type. A renderer that panics costs the client nothing: that
/// error is answered in the default envelope ([`JsonEnvelope`]), and the panic logged.
pub trait ErrorRenderer: Send + Sync + 'static {
    /// The response for `error` on the request `request_id`.
    fn render(&self, error: &IdempotencyError, request_id: &str) -> HttpResponse;
}

impl<F> ErrorRenderer for F
where
    F: Fn(&IdempotencyError, &str) -> HttpResponse + Send + Sync + 'static,
{
    fn render(&self, error: &IdempotencyError, request_id: &str) -> HttpResponse {
        self(error, request_id)
    }
}

/// `{"error":{"code":"idempotency_conflict","message":"..."},"request_id":"..."}`, the
/// default, with `Content-Type: application/json`. [`JsonEnvelope::TYPE`] names the code
/// field `type` instead.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct JsonEnvelope {
    field: &'static str,
}

impl JsonEnvelope {
    /// The code under `error.code`.
    pub const CODE: JsonEnvelope = JsonEnvelope { field: "code" };
    /// The code under `error.type`.
    pub const TYPE: JsonEnvelope = JsonEnvelope { field: "type" };
}

impl ErrorRenderer for JsonEnvelope {
    fn render(&self, error: &IdempotencyError, request_id: &str) -> HttpResponse {
        let mut inner = serde_json::Map::with_capacity(2);
        inner.insert(self.field.into(), error.code().into());
        inner.insert("message".into(), error.to_string().into());
        HttpResponse::build(status_of(error))
            .insert_header((header::CONTENT_TYPE, "application/json"))
            .body(json!({ "error": inner, "request_id": request_id }).to_string())
    }
}

/// RFC 9457 `application/problem+json`, with the stable code and the request id as
/// extension members. Its `title` is the code's, the same at every status the code is answered
/// with (RFC 9457's title does not change from occurrence to occurrence of a type).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProblemJson;

impl ErrorRenderer for ProblemJson {
    fn render(&self, error: &IdempotencyError, request_id: &str) -> HttpResponse {
        let status = status_of(error);
        let body = json!({
            "type": format!("urn:idem:error:{}", error.code()),
            "title": error.title(),
            "status": status.as_u16(),
            "detail": error.to_string(),
            "code": error.code(),
            "request_id": request_id,
        });
        HttpResponse::build(status)
            .insert_header((header::CONTENT_TYPE, "application/problem+json"))
            .body(body.to_string())
    }
}

fn status_of(error: &IdempotencyError) -> StatusCode {
    StatusCode::from_u16(error.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}

/// `error` rendered by the application's `renderer`, or in the default envelope when the
/// renderer panics: a bug there must not cost the client its answer (nor the worker its
/// connection), and the layer's refusal means the same in either body.
fn rendered_by(renderer: &dyn ErrorRenderer, error: &IdempotencyError, id: &str) -> HttpResponse {
    let rendered = std::panic::catch_unwind(AssertUnwindSafe(|| renderer.render(error, id)));
    rendered.unwrap_or_else(|_| {
        tracing::error!(
            request_id = id,
            code = error.code(),
            "the application's error renderer panicked; answered in the default envelope"
        );
        JsonEnvelope::CODE.render(error, id)
    })
}

/// The response for `error`: rendered by the endpoint's format when it names one, else by
/// `fallback`; then status, `Retry-After` and `X-Request-ID` set.
pub(crate) fn error_response(
    error: &IdempotencyError,
    request_id: &RequestId,
    format: Option<ErrorFormat>,
    fallback: &dyn ErrorRenderer,
) -> HttpResponse {
    let id = request_id.as_str();
    let mut res = match format {
        Some(ErrorFormat::EnvelopeType) => JsonEnvelope::TYPE.render(error, id),
        Some(ErrorFormat::Problem) => ProblemJson.render(error, id),
        Some(_) => JsonEnvelope::CODE.render(error, id),
        None => rendered_by(fallback, error, id),
    };
    *res.status_mut() = status_of(error);
    let headers = res.headers_mut();
    if let Some(after) = error.retry_after() {
        headers.insert(
            header::RETRY_AFTER,
            HeaderValue::from(after.as_secs().max(1)),
        );
    }
    headers.insert(crate::REQUEST_ID.clone(), request_id.header_value().clone());
    // Never a replay, whatever a renderer of the application's set.
    headers.remove(&crate::IDEMPOTENT_REPLAYED);
    // An answer about this moment (in flight, store down) or this request: no cache may keep
    // it for another.
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    fn title(error: &IdempotencyError) -> String {
        use actix_web::body::MessageBody as _;
        let body = ProblemJson.render(error, "id").into_body();
        let Ok(body) = body.try_into_bytes() else {
            panic!("a body of bytes")
        };
        let problem: serde_json::Value = serde_json::from_slice(&body).expect("JSON");
        problem["title"].as_str().expect("a title").to_owned()
    }

    /// RFC 9457: a problem type's title does not change from occurrence to occurrence. The
    /// conflict is answered 409 (a run in flight, a mismatch) and 422 (a mismatch, where the
    /// endpoint says so) under one type, and had the status's reason phrase for its title:
    /// "Conflict" and "Unprocessable Entity".
    #[test]
    fn a_problem_type_has_one_title_whatever_its_status() {
        let conflicts = [
            IdempotencyError::InFlight,
            IdempotencyError::Mismatch { status: 409 },
            IdempotencyError::Mismatch { status: 422 },
        ];
        let titles: Vec<String> = conflicts.iter().map(title).collect();
        assert!(titles.iter().all(|t| *t == titles[0]), "{titles:?}");
        // And types that share a status keep titles of their own.
        assert_ne!(
            title(&IdempotencyError::Overloaded),
            title(&IdempotencyError::ShuttingDown)
        );
    }

    /// An error is never a replay, whatever the application's renderer sets: the layer sets
    /// the status, the request id and the caching, and takes away an `Idempotent-Replayed` the
    /// renderer put on it, which it kept.
    #[test]
    fn an_error_never_says_it_is_a_replay_whatever_the_renderer_sets() {
        let renderer = |error: &IdempotencyError, _: &str| {
            HttpResponse::build(StatusCode::OK)
                .insert_header((crate::IDEMPOTENT_REPLAYED.clone(), "true"))
                .body(error.code())
        };
        let request_id = RequestId::of(&actix_web::test::TestRequest::default().to_http_request());
        let res = error_response(&IdempotencyError::InFlight, &request_id, None, &renderer);
        assert_eq!(res.status(), StatusCode::CONFLICT);
        assert!(
            !res.headers().contains_key(&crate::IDEMPOTENT_REPLAYED),
            "{:?}",
            res.headers()
        );
    }
}
