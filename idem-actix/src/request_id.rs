//! The request id: one per request, shared by the layer and the handler.

use std::future::{ready, Ready};

use actix_web::dev::Payload;
use actix_web::http::header::HeaderValue;
use actix_web::{FromRequest, HttpMessage, HttpRequest};

/// The id of this request: a valid incoming `X-Request-ID` (1 to 128 of `A-Z a-z 0-9 - _ . : / + =`),
/// else a fresh 16-hex-digit id. The idempotency layer answers with it in `X-Request-ID` and
/// in its error bodies; handlers take it as an extractor to put the same id in theirs.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct RequestId(String);

impl RequestId {
    /// The id.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The id of `req`, made once per request and kept in its extensions.
    pub fn of(req: &HttpRequest) -> RequestId {
        if let Some(id) = req.extensions().get::<RequestId>() {
            return id.clone();
        }
        let id =
            RequestId(incoming(req).unwrap_or_else(|| format!("{:016x}", idem_core::random_u64())));
        req.extensions_mut().insert(id.clone());
        id
    }
}

fn incoming(req: &HttpRequest) -> Option<String> {
    let valid = |v: &&HeaderValue| {
        let b = v.as_bytes();
        (1..=128).contains(&b.len())
            && b.iter()
                .all(|c| c.is_ascii_alphanumeric() || b"-_.:/+=".contains(c))
    };
    let value = req.headers().get(&crate::REQUEST_ID).filter(valid)?;
    // Checked above: ASCII only.
    Some(String::from_utf8_lossy(value.as_bytes()).into_owned())
}

impl std::fmt::Display for RequestId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromRequest for RequestId {
    type Error = std::convert::Infallible;
    type Future = Ready<Result<Self, Self::Error>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        ready(Ok(RequestId::of(req)))
    }
}
