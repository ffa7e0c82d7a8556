//! What an answer means for the operation: done, worth another attempt, done but not
//! replayable, refused, or no answer at all.
//!
//! The idempotency layer's own answers are told apart by their stable codes (`error.code`,
//! `error.type`, or `code` in problem JSON) and by `Retry-After`: a 409
//! `idempotency_conflict` with `Retry-After` is a key still in flight, and the same without
//! it is a key used with another request.

use std::time::{Duration, SystemTime};

use reqwest::header::{HeaderMap, RETRY_AFTER};
use reqwest::StatusCode;

use crate::backoff::parse_retry_after;

/// The code of a 409 or 422 about a key in flight or used with another request.
const CONFLICT: &str = "idempotency_conflict";
/// The code of a 409 about an operation that ran, whose response was too large to keep.
const RESPONSE_TOO_LARGE: &str = "idempotency_response_too_large";
/// The prefix of every code the idempotency layer answers with itself.
const LAYER_PREFIX: &str = "idempotency_";

/// What an answer means.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Class {
    /// The server's answer to the operation: hand it to the caller.
    Answer,
    /// Worth another attempt, after `Retry-After` if the server sent one.
    Retry {
        code: Option<String>,
        retry_after: Option<Duration>,
    },
    /// The key was used with a different request.
    Mismatch { message: Option<String> },
    /// The operation ran under the key, and its response was too large to keep for replay.
    NotKept { message: Option<String> },
    /// The idempotency layer refused the request with a 4xx or 500 of its own.
    Refused {
        code: String,
        message: Option<String>,
    },
    /// A 1xx as the final status: no answer of the operation.
    Informational,
}

/// Classifies an answer, reading `Retry-After` against `now`.
pub(crate) fn classify(
    status: StatusCode,
    headers: &HeaderMap,
    body: &[u8],
    now: SystemTime,
) -> Class {
    // hyper reads past the interim 1xx (100, 103) to the final answer, so a 1xx that comes
    // is a 101: the connection left HTTP, which an operation never asks for, and no answer
    // of the operation came on it, replayed or not (a 101 has no body to replay).
    if status.is_informational() {
        return Class::Informational;
    }
    // A replay is the answer the server recorded for the operation, whatever its status (an
    // application's 409 with `Retry-After`, a 5xx an endpoint keeps): sent again, it is
    // replayed again.
    if status.is_success() || status.is_redirection() || crate::response::is_replay(headers) {
        return Class::Answer;
    }
    let (code, message) = error_code(body);
    // Whether the header is there tells an in-flight conflict from a mismatch; a value that
    // cannot be read is waited out with the backoff.
    let waits = headers.contains_key(RETRY_AFTER);
    let retry_after = headers
        .get(RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| parse_retry_after(v, now));
    let is_conflict = code.as_deref() == Some(CONFLICT);
    match status {
        // A gateway's 502 or 504 says nothing of the operation: the server may still run it
        // (and record it), or never have seen it. Under the same key a retry gets the replay,
        // a 409 while it runs, or the run itself, as after a 503.
        // A 408 is the server's own: it stopped waiting for the request, and a retry sends
        // it whole (a replay of an application's 408 was taken as the answer above).
        // A 429 is a rate limiter's, in front of the layer where it belongs: nothing ran, and
        // the retry, after its `Retry-After`, runs the operation or gets its replay.
        StatusCode::SERVICE_UNAVAILABLE
        | StatusCode::BAD_GATEWAY
        | StatusCode::GATEWAY_TIMEOUT
        | StatusCode::REQUEST_TIMEOUT
        | StatusCode::TOO_MANY_REQUESTS => Class::Retry { code, retry_after },
        // In flight: the layer's 409 with Retry-After. A 409 with Retry-After whose body the
        // client cannot read (a custom error renderer) is taken as in flight too; one with
        // another code is the application's and is handed back.
        StatusCode::CONFLICT if waits && (is_conflict || code.is_none()) => {
            Class::Retry { code, retry_after }
        }
        StatusCode::CONFLICT | StatusCode::UNPROCESSABLE_ENTITY if is_conflict => {
            Class::Mismatch { message }
        }
        // It ran: not a refusal, which says nothing ran.
        _ if status.is_client_error() && code.as_deref() == Some(RESPONSE_TOO_LARGE) => {
            Class::NotKept { message }
        }
        // The layer's own 4xx, and its 500s (a server it finds misconfigured): nothing ran
        // or was kept, and a retry gets the same answer.
        _ if status.is_client_error() || status == StatusCode::INTERNAL_SERVER_ERROR => {
            match code {
                Some(code) if code.starts_with(LAYER_PREFIX) => Class::Refused { code, message },
                _ => Class::Answer,
            }
        }
        _ => Class::Answer,
    }
}

/// The stable code and message of an error body, in any of the layer's formats: the
/// envelope `{"error":{"code"|"type":..,"message":..}}` or RFC 9457 problem JSON
/// `{"code":..,"detail":..}`.
fn error_code(body: &[u8]) -> (Option<String>, Option<String>) {
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(body) else {
        return (None, None);
    };
    let text = |v: Option<&serde_json::Value>| v.and_then(|v| v.as_str()).map(str::to_owned);
    match value.get("error") {
        // The layer's code under either member, whatever the other holds (an application's
        // renderer may put a number, `null` or a code of its own beside it); else either's
        // text.
        Some(error) => {
            let (code, kind) = (text(error.get("code")), text(error.get("type")));
            let layer =
                |c: &Option<String>| c.as_deref().is_some_and(|c| c.starts_with(LAYER_PREFIX));
            let code = match (layer(&code), layer(&kind)) {
                (false, true) => kind,
                _ => code.or(kind),
            };
            (code, text(error.get("message")))
        }
        None => (text(value.get("code")), text(value.get("detail"))),
    }
}

#[cfg(test)]
mod tests {
    use reqwest::header::HeaderValue;

    use super::*;

    fn headers(retry_after: Option<&'static str>) -> HeaderMap {
        let mut headers = HeaderMap::new();
        if let Some(value) = retry_after {
            headers.insert(RETRY_AFTER, HeaderValue::from_static(value));
        }
        headers
    }

    fn envelope(code: &str) -> Vec<u8> {
        format!(r#"{{"error":{{"code":"{code}","message":"m"}},"request_id":"r"}}"#).into_bytes()
    }

    fn of(status: u16, retry_after: Option<&'static str>, body: &[u8]) -> Class {
        classify(
            StatusCode::from_u16(status).unwrap(),
            &headers(retry_after),
            body,
            SystemTime::now(),
        )
    }

    #[test]
    fn success_and_the_applications_own_errors_are_answers() {
        assert_eq!(of(201, None, b"{}"), Class::Answer);
        assert_eq!(
            of(400, None, &envelope("invalid_phone_number")),
            Class::Answer
        );
        assert_eq!(of(404, None, b"not found"), Class::Answer);
        assert_eq!(
            of(500, None, &envelope("carrier_unavailable")),
            Class::Answer
        );
        assert_eq!(of(409, None, &envelope("already_exists")), Class::Answer);
        assert_eq!(
            of(409, Some("1"), &envelope("already_exists")),
            Class::Answer
        );
    }

    #[test]
    fn in_flight_and_unavailable_are_retried_after_their_retry_after() {
        let in_flight = of(409, Some("1"), &envelope(CONFLICT));
        assert_eq!(
            in_flight,
            Class::Retry {
                code: Some(CONFLICT.into()),
                retry_after: Some(Duration::from_secs(1)),
            }
        );
        assert!(matches!(of(409, Some("2"), b"<html>"), Class::Retry { .. }));
        assert_eq!(
            of(503, None, &envelope("carrier_unavailable")),
            Class::Retry {
                code: Some("carrier_unavailable".into()),
                retry_after: None,
            }
        );
        assert!(matches!(
            of(503, Some("1"), &envelope("idempotency_store_unavailable")),
            Class::Retry {
                retry_after: Some(_),
                ..
            }
        ));
    }

    #[test]
    fn a_rate_limiters_429_is_retried_and_a_replayed_429_is_the_answer() {
        assert_eq!(
            of(429, Some("1"), b""),
            Class::Retry {
                code: None,
                retry_after: Some(Duration::from_secs(1)),
            }
        );
        assert!(matches!(of(429, None, b""), Class::Retry { .. }));
        // An application's own 429, recorded (against the README's advice) and replayed.
        let mut replayed = headers(Some("1"));
        replayed.insert("idempotent-replayed", HeaderValue::from_static("true"));
        let class = classify(
            StatusCode::TOO_MANY_REQUESTS,
            &replayed,
            b"",
            SystemTime::now(),
        );
        assert_eq!(class, Class::Answer);
    }

    /// The application's own 409 with `Retry-After` and a body the client cannot read, once
    /// recorded, is replayed as it is to every retry: a replay is the operation's answer,
    /// where it was taken for the layer's in-flight 409 and retried until the client gave up.
    #[test]
    fn a_replayed_409_with_retry_after_is_the_answer() {
        let mut replayed = headers(Some("2"));
        replayed.insert(
            "idempotent-replayed",
            reqwest::header::HeaderValue::from_static("true"),
        );
        let class = classify(
            StatusCode::CONFLICT,
            &replayed,
            b"locked",
            SystemTime::now(),
        );
        assert_eq!(class, Class::Answer);
    }

    #[test]
    fn a_gateways_502_and_504_are_retried() {
        for status in [502, 504] {
            assert_eq!(
                of(status, None, b"<html>Gateway Timeout</html>"),
                Class::Retry {
                    code: None,
                    retry_after: None,
                },
                "{status}"
            );
        }
        assert!(matches!(
            of(504, Some("2"), b""),
            Class::Retry {
                retry_after: Some(_),
                ..
            }
        ));
    }

    /// A 408 says the server stopped waiting for the request (a slow upload, an idle kept
    /// connection it closed): under the same key a retry is the request whole. It was handed
    /// back as the operation's answer.
    #[test]
    fn a_request_timeout_is_retried() {
        assert_eq!(
            of(408, None, b"<html>Request Timeout</html>"),
            Class::Retry {
                code: None,
                retry_after: None,
            }
        );
        assert!(matches!(
            of(408, Some("1"), b""),
            Class::Retry {
                retry_after: Some(_),
                ..
            }
        ));
    }

    /// What tells an in-flight conflict from a mismatch is that `Retry-After` is there; a
    /// value the client cannot read is waited out with the backoff instead.
    #[test]
    fn an_in_flight_conflict_with_an_unreadable_retry_after_is_retried() {
        assert_eq!(
            of(409, Some("1.5"), &envelope(CONFLICT)),
            Class::Retry {
                code: Some(CONFLICT.into()),
                retry_after: None,
            }
        );
    }

    #[test]
    fn a_conflict_without_retry_after_is_a_mismatch_in_every_format() {
        let mismatch = Class::Mismatch {
            message: Some("m".into()),
        };
        assert_eq!(of(409, None, &envelope(CONFLICT)), mismatch);
        assert_eq!(of(422, None, &envelope(CONFLICT)), mismatch);
        let typed = br#"{"error":{"type":"idempotency_conflict","message":"m"}}"#;
        assert_eq!(of(422, None, typed), mismatch);
        let problem = br#"{"type":"urn:idem:error:idempotency_conflict","title":"Idempotency key conflict","status":409,"detail":"m","code":"idempotency_conflict"}"#;
        assert_eq!(of(409, None, problem), mismatch);
        // A 422 of the application's own is its answer.
        assert_eq!(of(422, None, &envelope("invalid_body")), Class::Answer);
    }

    /// An application's renderer may put the layer's code under `type` beside a `code` that
    /// is a number, `null`, or a code of its own: the layer's is read all the same, where
    /// `type` was read only when `code` was absent, and a mismatch, or an operation that ran
    /// and whose answer was not kept, was handed back as the operation's answer.
    #[test]
    fn the_layers_code_under_type_is_read_whatever_code_holds() {
        let mismatch = Class::Mismatch {
            message: Some("m".into()),
        };
        for body in [
            &br#"{"error":{"type":"idempotency_conflict","code":409,"message":"m"}}"#[..],
            br#"{"error":{"type":"idempotency_conflict","code":null,"message":"m"}}"#,
            br#"{"error":{"type":"idempotency_conflict","code":"CONFLICT","message":"m"}}"#,
            br#"{"error":{"code":"idempotency_conflict","type":"conflict","message":"m"}}"#,
        ] {
            assert_eq!(
                of(409, None, body),
                mismatch,
                "{}",
                String::from_utf8_lossy(body)
            );
        }
        let own = br#"{"error":{"type":"conflict","code":"CONFLICT","message":"m"}}"#;
        assert_eq!(of(409, None, own), Class::Answer);
    }

    #[test]
    fn the_layers_other_refusals_are_not_retried() {
        for (status, code) in [
            (400, "idempotency_key_invalid"),
            (400, "idempotency_key_missing"),
            (400, "idempotency_scope_missing"),
            (413, "idempotency_body_too_large"),
        ] {
            assert_eq!(
                of(status, None, &envelope(code)),
                Class::Refused {
                    code: code.into(),
                    message: Some("m".into()),
                },
                "{status} {code}"
            );
        }
    }

    /// The layer's own 500s (a store too small to keep any record, a handler under no
    /// layer, a transaction it cannot lend or commit) say nothing ran or was kept, and a
    /// retry gets the same until the server is mended: they were handed back as the
    /// operation's answer, as an application's 500 is.
    #[test]
    fn the_layers_own_500s_are_refusals() {
        for code in [
            "idempotency_misconfigured",
            "idempotency_layer_missing",
            "idempotency_transaction_unavailable",
        ] {
            assert_eq!(
                of(500, None, &envelope(code)),
                Class::Refused {
                    code: code.into(),
                    message: Some("m".into()),
                },
                "{code}"
            );
        }
        let problem = br#"{"type":"urn:idem:error:idempotency_misconfigured","title":"Idempotency misconfigured","status":500,"detail":"m","code":"idempotency_misconfigured"}"#;
        assert!(matches!(of(500, None, problem), Class::Refused { .. }));
    }

    /// A 101, even one that says it is a replay, is no answer of the operation: the
    /// connection left HTTP. It was handed back as the operation's answer.
    #[test]
    fn switching_protocols_is_no_answer() {
        assert_eq!(of(101, None, b""), Class::Informational);
        let mut replayed = headers(None);
        replayed.insert("idempotent-replayed", HeaderValue::from_static("true"));
        let class = classify(
            StatusCode::SWITCHING_PROTOCOLS,
            &replayed,
            b"",
            SystemTime::now(),
        );
        assert_eq!(class, Class::Informational);
    }

    #[test]
    fn a_response_too_large_to_keep_is_an_operation_that_ran_in_every_format() {
        let not_kept = Class::NotKept {
            message: Some("m".into()),
        };
        assert_eq!(of(409, None, &envelope(RESPONSE_TOO_LARGE)), not_kept);
        let problem = br#"{"type":"urn:idem:error:idempotency_response_too_large","title":"Response too large to replay","status":409,"detail":"m","code":"idempotency_response_too_large"}"#;
        assert_eq!(of(409, None, problem), not_kept);
    }
}
