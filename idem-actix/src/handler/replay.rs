//! Answers from a record.

use std::convert::Infallible;
use std::panic::AssertUnwindSafe;

use actix_web::body::{BoxBody, SizedStream};
use actix_web::http::header::{self, HeaderName, HeaderValue};
use actix_web::http::{Method, StatusCode};
use actix_web::web::Bytes;
use actix_web::{HttpRequest, HttpResponse};
use idem_core::Completed;

use super::admit::Keyed;
use super::record::{length_is_content, panicked, replayable};
use crate::metrics;
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
/// while it still does. Counted `replayed`, or `panicked` (answered 500) if the hook panics.
pub(super) fn replay(record: &Completed, keyed: &Keyed) -> HttpResponse {
    let (policy, request_id) = (&keyed.policy, &keyed.run.request_id);
    let recorded = &record.response;
    let status =
        StatusCode::from_u16(recorded.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let for_head = keyed.run.req.method() == Method::HEAD;
    let content_length = length_is_content(status.as_u16(), for_head);
    let mut res = HttpResponse::with_body(status, BoxBody::new(recorded.body()));
    let headers = res.headers_mut();
    // Sized once for the stored headers and the two added below, rather than grown twice.
    headers.reserve(recorded.header_count() + 2);
    for (name, value) in recorded.shared_headers() {
        let kept = if name.eq_ignore_ascii_case("set-cookie") {
            policy.replay_set_cookie
        } else if name.eq_ignore_ascii_case("content-length") {
            // Recorded only where it says the content's length (see `replayable`).
            true
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
            if replayable(&name, content_length) {
                headers.append(name, value);
            }
        }
    }
    // The length of a HEAD's body, of which actix sends nothing but the size: a body of that
    // size, as the first answer's (actix writes the header from the body's size).
    if for_head && status != StatusCode::NOT_MODIFIED {
        let length = headers.remove(header::CONTENT_LENGTH).next();
        let size = length.and_then(|value| value.to_str().ok()?.parse::<u64>().ok());
        if let Some(size) = size {
            let nothing = futures_util::stream::empty::<Result<Bytes, Infallible>>();
            res = res.set_body(BoxBody::new(SizedStream::new(size, nothing)));
        }
    }
    let headers = res.headers_mut();
    headers.insert(
        crate::IDEMPOTENT_REPLAYED.clone(),
        HeaderValue::from_static("true"),
    );
    // Stored headers never hold an `X-Request-ID` (see `replayable`): the replay carries this
    // request's.
    headers.insert(crate::REQUEST_ID.clone(), request_id.header_value().clone());
    if let Some(hook) = keyed.on_replay {
        // A hook that panics is answered as a handler that panics is; the record stays.
        let hooked = std::panic::catch_unwind(AssertUnwindSafe(|| hook(&keyed.run.req, &mut res)));
        if hooked.is_err() {
            tracing::error!(
                outcome = "panicked",
                "an idempotent endpoint's replay hook panicked; answered 500"
            );
            metrics::outcome("panicked");
            return with_request_id(panicked(), request_id);
        }
    }
    tracing::debug!(outcome = "replayed", status = recorded.status());
    metrics::outcome("replayed");
    res
}

/// The content coding of a recorded response that `req` does not accept, if any, when that
/// coding was negotiated for the first request: its bytes would be undecodable to this one.
/// A response encoded by a layer between the idempotency middleware and the handler (such as
/// `Compress`) says so with `Vary: Accept-Encoding`. A coding without it is the handler's own
/// choice, made whatever the request accepted, and is replayed as it went to the first.
pub(super) fn unaccepted_encoding(record: &Completed, req: &HttpRequest) -> Option<String> {
    let headers = record.response.headers();
    let (_, coding) = headers
        .clone()
        .find(|(name, _)| name.eq_ignore_ascii_case("content-encoding"))?;
    let negotiated = headers
        .filter(|(name, _)| name.eq_ignore_ascii_case("vary"))
        .filter_map(|(_, value)| std::str::from_utf8(value).ok())
        .flat_map(|value| value.split(','))
        .map(str::trim)
        .any(|field| field == "*" || field.eq_ignore_ascii_case("accept-encoding"));
    if !negotiated {
        return None;
    }
    let coding = std::str::from_utf8(coding).ok()?;
    let accepted = || req.headers().get_all(header::ACCEPT_ENCODING);
    coding
        .split(',')
        .map(str::trim)
        .filter(|c| !c.is_empty() && !c.eq_ignore_ascii_case("identity"))
        .find(|c| !accepts(accepted(), c))
        .map(str::to_owned)
}

/// Whether `Accept-Encoding`, given as its lines, accepts `coding`: the lines are one list,
/// as `Compress` reads them. No header accepts none but `identity`: clients that do not ask
/// for a coding often cannot decode one.
fn accepts<'a>(accept_encoding: impl IntoIterator<Item = &'a HeaderValue>, coding: &str) -> bool {
    let lines = accept_encoding.into_iter().filter_map(|v| v.to_str().ok());
    let mut any = false;
    for item in lines.flat_map(|line| line.split(',')) {
        let mut parts = item.split(';');
        let name = parts.next().unwrap_or_default().trim();
        // The weight's name is case-insensitive, as every parameter name is.
        let weight = parts
            .map(|p| p.trim().split_once('=').unwrap_or_default())
            .find(|(name, _)| name.trim().eq_ignore_ascii_case("q"))
            .and_then(|(_, q)| q.trim().parse::<f32>().ok())
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
    use actix_web::test::TestRequest;
    use idem_core::{Fingerprint, MokaStore, Policy, ReplayHeaders, Response, StoreKey};

    use super::super::admit::Run;
    use super::*;
    use crate::config::IdempotencyConfig;
    use crate::functions::ReplayFunction;

    fn completed(response: Response) -> Completed {
        Completed {
            fingerprint: Fingerprint::new("POST", "/", "", b""),
            response,
            completed_at: idem_core::clock::Timestamp::from_millis(0),
            expires_at: idem_core::clock::Timestamp::from_millis(1),
        }
    }

    /// A retry, with `X-Request-ID: retry-7`, under `policy`.
    fn retry(policy: Policy, on_replay: Option<ReplayFunction>) -> Keyed {
        let req = TestRequest::post()
            .insert_header(("X-Request-ID", "retry-7"))
            .to_http_request();
        let key = idem_core::ClientKey::parse(b"k", 255).unwrap();
        Keyed {
            config: IdempotencyConfig::new(MokaStore::new()),
            policy,
            store_key: StoreKey::from_bytes([1; 32]),
            fingerprint: Fingerprint::new("POST", "/", "", b""),
            on_replay,
            span: tracing::Span::none(),
            run: Run {
                key,
                request_id: RequestId::peek(&req),
                format: None,
                lends: false,
                req,
                body: bytes::Bytes::new(),
            },
        }
    }

    fn values(res: &HttpResponse, name: &str) -> Vec<String> {
        res.headers()
            .get_all(name)
            .map(|v| v.to_str().unwrap().to_owned())
            .collect()
    }

    fn record() -> Completed {
        completed(Response::new(
            201,
            [
                ("content-type", b"application/json".as_slice()),
                ("location", b"/v1/calls/1"),
                ("link", b"</a>; rel=a"),
                ("link", b"</b>; rel=b"),
                ("set-cookie", b"session=first-caller"),
                ("x-trace-id", b"trace-of-the-first"),
            ],
            b"{\"id\":1}",
        ))
    }

    #[test]
    fn a_replay_is_the_record_marked_as_a_replay_with_this_requests_id() {
        let res = replay(&record(), &retry(Policy::DEFAULT, None));
        assert_eq!(res.status(), StatusCode::CREATED);
        assert_eq!(values(&res, "idempotent-replayed"), ["true"]);
        assert_eq!(values(&res, "x-request-id"), ["retry-7"]);
        assert_eq!(values(&res, "content-type"), ["application/json"]);
        assert_eq!(values(&res, "location"), ["/v1/calls/1"]);
        assert_eq!(values(&res, "link"), ["</a>; rel=a", "</b>; rel=b"]);
        assert_eq!(values(&res, "x-trace-id"), ["trace-of-the-first"]);
        // The server writes this transfer's own `Date` and `Content-Length`.
        assert!(values(&res, "date").is_empty());
        assert!(values(&res, "content-length").is_empty());
        let body = actix_web::body::to_bytes(res.into_body());
        let body = futures_util::FutureExt::now_or_never(body)
            .unwrap()
            .unwrap();
        assert_eq!(&body[..], b"{\"id\":1}");
    }

    #[test]
    fn a_recorded_set_cookie_is_replayed_only_while_the_endpoint_allows_it() {
        let res = replay(&record(), &retry(Policy::DEFAULT, None));
        assert!(values(&res, "set-cookie").is_empty());
        let allowed = Policy::DEFAULT.replay_set_cookie(true);
        let res = replay(&record(), &retry(allowed, None));
        assert_eq!(values(&res, "set-cookie"), ["session=first-caller"]);
        // Set-Cookie is the cookie setting's alone: a header list does not bring it back.
        let listed = Policy::DEFAULT.replay_headers(ReplayHeaders::Only(&["Set-Cookie"]));
        let res = replay(&record(), &retry(listed, None));
        assert!(values(&res, "set-cookie").is_empty());
    }

    #[test]
    fn header_lists_choose_what_a_replay_repeats_but_never_its_marks() {
        let only = Policy::DEFAULT.replay_headers(ReplayHeaders::Only(&["Location"]));
        let res = replay(&record(), &retry(only, None));
        let mut names: Vec<_> = res.headers().keys().map(|n| n.as_str()).collect();
        names.sort_unstable();
        assert_eq!(names, ["idempotent-replayed", "location", "x-request-id"]);

        let except = Policy::DEFAULT.replay_headers(ReplayHeaders::Except(&["X-Trace-Id", "link"]));
        let res = replay(&record(), &retry(except, None));
        assert!(values(&res, "x-trace-id").is_empty() && values(&res, "link").is_empty());
        assert_eq!(values(&res, "location"), ["/v1/calls/1"]);
    }

    #[test]
    fn the_replay_hook_sees_the_replay_last() {
        fn hook(req: &HttpRequest, res: &mut HttpResponse) {
            let id = res.headers().get("x-request-id").cloned().unwrap();
            assert_eq!(req.headers().get("x-request-id"), Some(&id));
            res.headers_mut()
                .insert(HeaderName::from_static("x-replayed-for"), id);
        }
        let res = replay(&record(), &retry(Policy::DEFAULT, Some(hook)));
        assert_eq!(values(&res, "x-replayed-for"), ["retry-7"]);
    }

    #[test]
    fn a_handlers_own_request_id_is_kept_and_one_is_added_where_it_set_none() {
        let req = TestRequest::post()
            .insert_header(("X-Request-ID", "incoming"))
            .to_http_request();
        let id = RequestId::peek(&req);
        let own = HttpResponse::Created()
            .insert_header(("X-Request-ID", "from-the-handler"))
            .finish();
        assert_eq!(
            values(&with_request_id(own, &id), "x-request-id"),
            ["from-the-handler"]
        );
        let none = with_request_id(HttpResponse::Created().finish(), &id);
        assert_eq!(values(&none, "x-request-id"), ["incoming"]);
    }

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
    fn a_weight_is_read_whatever_the_case_of_its_name() {
        assert!(
            !accepts_str("gzip;Q=0", "gzip"),
            "a refusal in capitals is a refusal"
        );
        assert!(!accepts_str("*; Q=0", "br"));
        assert!(accepts_str("gzip; Q=0.5", "gzip"));
    }

    #[test]
    fn accept_encoding_on_two_lines_is_read_as_one_list() {
        let gzip = completed(Response::new(
            200,
            [
                ("content-encoding", &b"gzip"[..]),
                ("vary", b"accept-encoding"),
            ],
            b"x",
        ));
        let two_lines = TestRequest::default()
            .append_header(("Accept-Encoding", "deflate;q=0.5"))
            .append_header(("Accept-Encoding", "gzip"))
            .to_http_request();
        assert_eq!(
            unaccepted_encoding(&gzip, &two_lines),
            None,
            "the second line accepts gzip, as the `Compress` that chose it read it"
        );
        let refused = TestRequest::default()
            .append_header(("Accept-Encoding", "br"))
            .append_header(("Accept-Encoding", "gzip;q=0"))
            .to_http_request();
        assert_eq!(
            unaccepted_encoding(&gzip, &refused).as_deref(),
            Some("gzip")
        );
    }

    #[test]
    fn a_recorded_coding_the_retry_does_not_accept_is_named() {
        let record = |headers: &[(&str, &[u8])]| Completed {
            fingerprint: idem_core::Fingerprint::new("POST", "/", "", b""),
            response: idem_core::Response::new(200, headers.iter().copied(), b"x"),
            completed_at: idem_core::clock::Timestamp::from_millis(0),
            expires_at: idem_core::clock::Timestamp::from_millis(1),
        };
        let gzip = record(&[
            ("content-encoding", b"gzip"),
            ("vary", b"Origin, Accept-Encoding"),
        ]);
        let plain = record(&[("content-type", b"text/plain")]);
        let own = record(&[("content-encoding", b"gzip")]);
        let bare = actix_web::test::TestRequest::default().to_http_request();
        let asks = actix_web::test::TestRequest::default()
            .insert_header(("Accept-Encoding", "gzip"))
            .to_http_request();
        assert_eq!(unaccepted_encoding(&gzip, &bare).as_deref(), Some("gzip"));
        assert_eq!(unaccepted_encoding(&gzip, &asks), None);
        assert_eq!(unaccepted_encoding(&plain, &bare), None);
        assert_eq!(
            unaccepted_encoding(&own, &bare),
            None,
            "not negotiated: the handler's own coding, replayed as it went to the first request"
        );
        let identity = record(&[("content-encoding", b"identity")]);
        assert_eq!(unaccepted_encoding(&identity, &bare), None);
    }
}
