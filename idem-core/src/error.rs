//! The errors the idempotency layer answers with, each with a stable code.

use std::time::Duration;

use crate::key::KeyError;
use crate::scope::ScopeError;
use crate::store::StoreError;

/// The stable error codes, as they appear in error bodies.
pub mod codes {
    /// 400: the endpoint requires a key and none was sent.
    pub const KEY_MISSING: &str = "idempotency_key_missing";
    /// 400: the key breaks a rule of the header's syntax.
    pub const KEY_INVALID: &str = "idempotency_key_invalid";
    /// 400: the request lacks what the key's scope is taken from.
    pub const SCOPE_MISSING: &str = "idempotency_scope_missing";
    /// 409 (or 422 on mismatch): the key is in use by a running request or another request.
    pub const CONFLICT: &str = "idempotency_conflict";
    /// 503: the store cannot be reached; nothing ran.
    pub const STORE_UNAVAILABLE: &str = "idempotency_store_unavailable";
    /// 413: the body of a request with a key is larger than the endpoint accepts.
    pub const BODY_TOO_LARGE: &str = "idempotency_body_too_large";
    /// 409: the operation completed, but its response was too large to keep for replay.
    pub const RESPONSE_TOO_LARGE: &str = "idempotency_response_too_large";
    /// 503: this server runs as much work for clients that went away as it allows; nothing ran.
    pub const OVERLOADED: &str = "idempotency_overloaded";
}

/// How long a client is told to wait before retrying a 409 in-flight or a 503.
pub const RETRY_AFTER: Duration = Duration::from_secs(1);

/// A request the idempotency layer answers itself, without running the handler.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IdempotencyError {
    /// The endpoint requires a key and none was sent.
    #[error("this endpoint requires an {header} header; send a unique key per operation")]
    KeyMissing {
        /// The header name.
        header: &'static str,
    },
    /// The key is malformed.
    #[error("invalid {header} header: {reason}")]
    KeyInvalid {
        /// The header name.
        header: &'static str,
        /// The rule broken.
        reason: KeyError,
    },
    /// The scope of the key cannot be determined.
    #[error("cannot tell whose key this is: {0}")]
    ScopeMissing(#[from] ScopeError),
    /// The first request with this key is still being processed.
    #[error("a request with this idempotency key is still being processed; retry later")]
    InFlight,
    /// The key was already used with a different request.
    #[error("this idempotency key was already used with a different request; use a new key for a new operation")]
    Mismatch {
        /// 409 or 422, as the endpoint says.
        status: u16,
    },
    /// The store cannot be reached.
    #[error("the idempotency store is unavailable; retry later")]
    StoreUnavailable(#[source] StoreError),
    /// The operation completed, but its response was too large to keep, so it cannot be
    /// replayed; it does not run again either.
    #[error("the request with this idempotency key completed with status {status}, but its response of {size} bytes was larger than this endpoint keeps, so it cannot be replayed; it will not run again, so look its result up instead of retrying")]
    ResponseTooLarge {
        /// The first response's status.
        status: u16,
        /// Its size in bytes.
        size: u64,
    },
    /// The first response was sent in a content coding (such as gzip) that this request does
    /// not accept, so it cannot be replayed to it.
    #[error("the request with this idempotency key was answered with Content-Encoding {coding}, which this request does not accept; retry with the Accept-Encoding of the first request")]
    EncodingNotAccepted {
        /// The first response's content coding.
        coding: String,
    },
    /// The server already runs as many operations whose clients went away as it allows, so it
    /// takes no new one for now.
    #[error("the server is finishing too many operations whose clients went away; retry later")]
    Overloaded,
    /// The request body is larger than the endpoint buffers for fingerprinting.
    #[error("the request body is larger than {limit} bytes, the most this endpoint accepts")]
    BodyTooLarge {
        /// The limit in bytes.
        limit: usize,
    },
}

impl IdempotencyError {
    /// The stable code (see [`codes`]).
    pub fn code(&self) -> &'static str {
        match self {
            Self::KeyMissing { .. } => codes::KEY_MISSING,
            Self::KeyInvalid { .. } => codes::KEY_INVALID,
            Self::ScopeMissing(_) => codes::SCOPE_MISSING,
            Self::InFlight | Self::Mismatch { .. } | Self::EncodingNotAccepted { .. } => {
                codes::CONFLICT
            }
            Self::StoreUnavailable(_) => codes::STORE_UNAVAILABLE,
            Self::BodyTooLarge { .. } => codes::BODY_TOO_LARGE,
            Self::ResponseTooLarge { .. } => codes::RESPONSE_TOO_LARGE,
            Self::Overloaded => codes::OVERLOADED,
        }
    }

    /// The HTTP status.
    pub fn status(&self) -> u16 {
        match self {
            Self::KeyMissing { .. } | Self::KeyInvalid { .. } | Self::ScopeMissing(_) => 400,
            Self::InFlight | Self::ResponseTooLarge { .. } | Self::EncodingNotAccepted { .. } => {
                409
            }
            Self::Mismatch { status } => *status,
            Self::StoreUnavailable(_) | Self::Overloaded => 503,
            Self::BodyTooLarge { .. } => 413,
        }
    }

    /// The `Retry-After` to send, where retrying later can succeed.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::InFlight | Self::StoreUnavailable(_) | Self::Overloaded => Some(RETRY_AFTER),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_and_statuses_are_stable() {
        let cases = [
            (
                IdempotencyError::KeyMissing {
                    header: "Idempotency-Key",
                },
                400,
                "idempotency_key_missing",
            ),
            (
                IdempotencyError::KeyInvalid {
                    header: "Idempotency-Key",
                    reason: KeyError::Empty,
                },
                400,
                "idempotency_key_invalid",
            ),
            (
                ScopeError::NoCredentials.into(),
                400,
                "idempotency_scope_missing",
            ),
            (IdempotencyError::InFlight, 409, "idempotency_conflict"),
            (
                IdempotencyError::Mismatch { status: 422 },
                422,
                "idempotency_conflict",
            ),
            (
                IdempotencyError::StoreUnavailable(StoreError::Timeout),
                503,
                "idempotency_store_unavailable",
            ),
            (
                IdempotencyError::BodyTooLarge { limit: 10 },
                413,
                "idempotency_body_too_large",
            ),
            (
                IdempotencyError::ResponseTooLarge {
                    status: 201,
                    size: 10,
                },
                409,
                "idempotency_response_too_large",
            ),
            (IdempotencyError::Overloaded, 503, "idempotency_overloaded"),
            (
                IdempotencyError::EncodingNotAccepted {
                    coding: "gzip".into(),
                },
                409,
                "idempotency_conflict",
            ),
        ];
        for (err, status, code) in cases {
            assert_eq!((err.status(), err.code()), (status, code), "{err}");
        }
    }

    #[test]
    fn only_retryable_errors_carry_retry_after() {
        assert!(IdempotencyError::InFlight.retry_after().is_some());
        assert!(IdempotencyError::StoreUnavailable(StoreError::Timeout)
            .retry_after()
            .is_some());
        assert!(IdempotencyError::Overloaded.retry_after().is_some());
        assert!(IdempotencyError::Mismatch { status: 409 }
            .retry_after()
            .is_none());
    }
}
