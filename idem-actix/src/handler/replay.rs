//! Answers from a record.

use actix_web::body::BoxBody;
use actix_web::http::header::{self, HeaderName, HeaderValue};
use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse};
use idem_core::Completed;

use super::admit::Keyed;
use crate::request_id::RequestId;

pub(super) fn with_request_id(mut res: HttpResponse, request_id: &RequestId) -> HttpResponse {
    if !res.headers().contains_key(&crate::REQUEST_ID) {
        res.headers_mut()
            .insert(crate::REQUEST_ID.clone(), request_id.header_value().clone());
    }
    res
}

/// The recorded response for `keyed`, with `Idempotent-Replayed: true` and this request's
/// id, less the headers the endpoint keeps out of replays; then the replay hook, if any, has
/// its say. A recorded `Set-Cookie` (kept while the endpoint allowed it) is repeated only
/// while it still does.
pub(super) fn replay(record: &Completed, keyed: &Keyed) -> HttpResponse {
    let (policy, request_id) = (&keyed.policy, &keyed.run.request_id);
    let recorded = &record.response;
    let status =
        StatusCode::from_u16(recorded.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut res = HttpResponse::with_body(status, BoxBody::new(recorded.body()));
    let headers = res.headers_mut();
    // Sized once for the stored headers and the two added below, rather than grown twice.
    headers.reserve(recorded.header_count() + 2);
    for (name, value) in recorded.shared_headers() {
        let kept = if name.eq_ignore_ascii_case("set-cookie") {
            policy.replay_set_cookie
        } else {
            policy.replay_headers.replays(name)
        };
        if !kept {
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
    if let Some(hook) = keyed.on_replay {
        hook(&keyed.run.req, &mut res);
    }
    res
}

/// The content coding of a recorded response that `req` does not accept, if any: its bytes
/// would be undecodable to it. A response encoded by a layer between the idempotency
/// middleware and the handler (such as `Compress`) was negotiated for the first request.
pub(super) fn unaccepted_encoding(record: &Completed, req: &HttpRequest) -> Option<String> {
    let (_, coding) = record
        .response
        .headers()
        .find(|(name, _)| name.eq_ignore_ascii_case("content-encoding"))?;
    let coding = std::str::from_utf8(coding).ok()?;
    let accepted = req.headers().get(header::ACCEPT_ENCODING);
    coding
        .split(',')
        .map(str::trim)
        .filter(|c| !c.is_empty() && !c.eq_ignore_ascii_case("identity"))
        .find(|c| !accepts(accepted, c))
        .map(str::to_owned)
}

/// Whether an `Accept-Encoding` value accepts `coding`. No header accepts none but
/// `identity`: clients that do not ask for a coding often cannot decode one.
fn accepts(accept_encoding: Option<&HeaderValue>, coding: &str) -> bool {
    let Some(value) = accept_encoding.and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let mut any = false;
    for item in value.split(',') {
        let mut parts = item.split(';');
        let name = parts.next().unwrap_or_default().trim();
        let weight = parts
            .find_map(|p| p.trim().strip_prefix("q="))
            .and_then(|q| q.trim().parse::<f32>().ok())
            .unwrap_or(1.0);
        if name.eq_ignore_ascii_case(coding) {
            return weight > 0.0;
        }
        if name == "*" {
            any = weight > 0.0;
        }
    }
    any
}

#[cfg(test)]
mod tests {
    use super::*;

    fn accepts_str(value: &str, coding: &str) -> bool {
        accepts(Some(&HeaderValue::from_str(value).unwrap()), coding)
    }

    #[test]
    fn accept_encoding_is_read_with_its_weights() {
        assert!(accepts_str("gzip, deflate, br", "gzip"));
        assert!(accepts_str("br;q=1.0, GZIP;q=0.5", "gzip"));
        assert!(!accepts_str("gzip;q=0, *", "gzip"));
        assert!(accepts_str("*", "br"));
        assert!(!accepts_str("*;q=0", "br"));
        assert!(!accepts_str("deflate", "gzip"));
        assert!(!accepts(None, "gzip"), "no header: identity only");
    }

    #[test]
    fn a_recorded_coding_the_retry_does_not_accept_is_named() {
        let record = |headers: &[(&str, &[u8])]| Completed {
            fingerprint: idem_core::Fingerprint::new("POST", "/", "", b""),
            response: idem_core::Response::new(200, headers.iter().copied(), b"x"),
            completed_at: idem_core::clock::Timestamp::from_millis(0),
            expires_at: idem_core::clock::Timestamp::from_millis(1),
        };
        let gzip = record(&[("content-encoding", b"gzip")]);
        let plain = record(&[("content-type", b"text/plain")]);
        let bare = actix_web::test::TestRequest::default().to_http_request();
        let asks = actix_web::test::TestRequest::default()
            .insert_header(("Accept-Encoding", "gzip"))
            .to_http_request();
        assert_eq!(unaccepted_encoding(&gzip, &bare).as_deref(), Some("gzip"));
        assert_eq!(unaccepted_encoding(&gzip, &asks), None);
        assert_eq!(unaccepted_encoding(&plain, &bare), None);
        let identity = record(&[("content-encoding", b"identity")]);
        assert_eq!(unaccepted_encoding(&identity, &bare), None);
    }
}
