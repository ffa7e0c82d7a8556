//! The validated key, for handlers that want it.

use std::future::{ready, Ready};
use std::ops::Deref;

use actix_web::dev::Payload;
use actix_web::http::StatusCode;
use actix_web::{FromRequest, HttpMessage, HttpRequest, HttpResponse, ResponseError};

use crate::request_id::RequestId;

/// What the layer hands the handler of a keyed request it runs: the request's id and key
/// (for the [`RequestId`] and [`IdempotencyKey`](IdempotencyKey) extractors). It also
/// marks the request as taken in charge, so that an inner layer steps aside.
pub(crate) struct Admitted {
    pub(crate) request_id: RequestId,
    pub(crate) key: IdempotencyKey,
}

/// The request's validated idempotency key, as an extractor.
///
/// Available in `#[idempotent]` handlers on requests that carry a key; take
/// `Option<IdempotencyKey>` where the key is optional.
///
/// ```
/// use actix_web::{post, HttpResponse};
/// use idem_actix::{idempotent, IdempotencyKey};
///
/// #[post("/v1/charges")]
/// #[idempotent(required)]
/// async fn charge(key: IdempotencyKey) -> HttpResponse {
///     // Pass the key on to a downstream API that deduplicates too.
///     HttpResponse::Created().body(format!("charged once for {}", key.as_str()))
/// }
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct IdempotencyKey(pub(crate) idem_core::IdempotencyKey);

impl IdempotencyKey {
    /// The key, unquoted.
    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }
}

impl Deref for IdempotencyKey {
    type Target = idem_core::IdempotencyKey;

    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl std::fmt::Display for IdempotencyKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// The request has no idempotency key (or the handler is not `#[idempotent]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NoIdempotencyKey;

impl std::fmt::Display for NoIdempotencyKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("this request has no idempotency key; send one, or take Option<IdempotencyKey>")
    }
}

impl ResponseError for NoIdempotencyKey {
    fn status_code(&self) -> StatusCode {
        StatusCode::BAD_REQUEST
    }

    fn error_response(&self) -> HttpResponse {
        HttpResponse::BadRequest().json(serde_json::json!({
            "error": {"code": idem_core::codes::KEY_MISSING, "message": self.to_string()}
        }))
    }
}

impl FromRequest for IdempotencyKey {
    type Error = NoIdempotencyKey;
    type Future = Ready<Result<Self, Self::Error>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        ready(
            req.extensions()
                .get::<Admitted>()
                .map(|admitted| admitted.key.clone())
                .ok_or(NoIdempotencyKey),
        )
    }
}

#[cfg(test)]
mod tests {
    use actix_web::body::MessageBody as _;
    use actix_web::test::TestRequest;
    use futures_util::FutureExt as _;

    use super::*;

    fn extracted(req: &HttpRequest) -> Result<IdempotencyKey, NoIdempotencyKey> {
        IdempotencyKey::from_request(req, &mut Payload::None)
            .now_or_never()
            .expect("ready at once")
    }

    #[test]
    fn the_key_is_there_for_a_request_the_layer_admitted() {
        let req = TestRequest::post().to_http_request();
        let key = idem_core::IdempotencyKey::parse(b"\"order-1\"", 255).unwrap();
        let request_id = RequestId::peek(&req);
        req.extensions_mut().insert(Admitted {
            request_id,
            key: IdempotencyKey(key),
        });
        assert_eq!(extracted(&req).unwrap().as_str(), "order-1");
    }

    #[test]
    fn without_one_the_handler_gets_a_400_that_says_what_to_do() {
        let req = TestRequest::post()
            .insert_header(("Idempotency-Key", "sent-but-not-admitted"))
            .to_http_request();
        let missing = extracted(&req).unwrap_err();
        assert_eq!(missing.status_code(), StatusCode::BAD_REQUEST);
        let body = missing
            .error_response()
            .into_body()
            .try_into_bytes()
            .unwrap();
        let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(body["error"]["code"], idem_core::codes::KEY_MISSING);
        assert!(body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("Option<IdempotencyKey>"));
    }
}
