//! The request id: one per request, shared by the layer and the handler.

use std::future::{ready, Ready};

use actix_web::dev::Payload;
use actix_web::http::header::HeaderValue;
use actix_web::{FromRequest, HttpMessage, HttpRequest, HttpResponse};

use crate::extract::Admitted;

/// The id of this request: a valid incoming `X-Request-ID` (one line of 1 to 128 of
/// `A-Z a-z 0-9 - _ . : / + =`), else a fresh 16-hex-digit id. The idempotency layer answers
/// with it in `X-Request-ID` and in its error bodies; handlers take it as an extractor to put
/// the same id in theirs.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct RequestId(HeaderValue);

impl RequestId {
    /// The id.
    pub fn as_str(&self) -> &str {
        // Only ASCII is ever held: checked for an incoming id, hex digits for a fresh one.
        self.0.to_str().unwrap_or_default()
    }

    /// The id as a header value.
    pub(crate) fn header_value(&self) -> &HeaderValue {
        &self.0
    }

    /// The id of `req`, made once per request and kept in its extensions.
    pub fn of(req: &HttpRequest) -> RequestId {
        let id = Self::peek(req);
        req.extensions_mut().insert(id.clone());
        id
    }

    /// Keeps the id the layer's own answer `res` gives `req` (its `X-Request-ID`), when the
    /// layer made it: a replay or a refusal [`peek`](Self::peek)s its id, and a middleware
    /// outside the layer that reads [`RequestId::of`] once the layer has answered (an access
    /// log) must read the same. The client's own id is read again alike, and costs nothing.
    pub(crate) fn keep_answered(req: &HttpRequest, res: &HttpResponse) {
        let Some(value) = res.headers().get(&crate::REQUEST_ID) else {
            return;
        };
        if req.headers().get(&crate::REQUEST_ID) == Some(value) {
            return;
        }
        let mut extensions = req.extensions_mut();
        if !extensions.contains::<RequestId>() && !extensions.contains::<Admitted>() {
            extensions.insert(RequestId(value.clone()));
        }
    }

    /// The id of `req` without keeping it: the one kept already, the incoming one, or a fresh
    /// one.
    pub(crate) fn peek(req: &HttpRequest) -> RequestId {
        let extensions = req.extensions();
        if let Some(id) = extensions.get::<RequestId>() {
            return id.clone();
        }
        if let Some(admitted) = extensions.get::<Admitted>() {
            return admitted.request_id.clone();
        }
        RequestId(incoming(req).unwrap_or_else(fresh))
    }
}

fn incoming(req: &HttpRequest) -> Option<HeaderValue> {
    let mut lines = req.headers().get_all(&crate::REQUEST_ID);
    let value = lines.next()?;
    // Sent twice (a proxy appended its own line): which is whose cannot be told.
    if lines.next().is_some() {
        return None;
    }
    let b = value.as_bytes();
    let valid = (1..=128).contains(&b.len())
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || b"-_.:/+=".contains(c));
    valid.then(|| value.clone())
}

/// A fresh id: 16 lowercase hex digits.
fn fresh() -> HeaderValue {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    // The low half of a token: unique, not secret, and no second generator to seed.
    let n = idem_core::Token::random().as_u128() as u64;
    let digits: [u8; 16] = std::array::from_fn(|i| HEX[((n >> (60 - 4 * i)) & 0xf) as usize]);
    // One allocation that clones share (a `Vec`-backed value would allocate again on its
    // first clone). Hex digits are always a valid value; the fallback is never taken.
    HeaderValue::from_maybe_shared(bytes::Bytes::from_owner(digits))
        .unwrap_or(HeaderValue::from_static("0"))
}

impl std::fmt::Display for RequestId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromRequest for RequestId {
    type Error = std::convert::Infallible;
    type Future = Ready<Result<Self, Self::Error>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        ready(Ok(RequestId::of(req)))
    }
}

#[cfg(test)]
mod tests {
    use actix_web::test::TestRequest;

    use super::*;

    #[test]
    fn a_valid_incoming_id_is_kept_and_an_invalid_one_replaced() {
        let req = TestRequest::default()
            .insert_header(("x-request-id", "req_abc-1.2:3/4+5="))
            .to_http_request();
        assert_eq!(RequestId::of(&req).as_str(), "req_abc-1.2:3/4+5=");

        let req = TestRequest::default()
            .insert_header(("x-request-id", "has space"))
            .to_http_request();
        let id = RequestId::of(&req);
        assert_eq!(id.as_str().len(), 16);
        assert!(id.as_str().bytes().all(|b| b.is_ascii_hexdigit()));
        assert_eq!(RequestId::of(&req), id, "one id per request");
    }

    #[test]
    fn fresh_ids_differ() {
        let a = RequestId::of(&TestRequest::default().to_http_request());
        let b = RequestId::of(&TestRequest::default().to_http_request());
        assert_ne!(a, b);
    }
}
