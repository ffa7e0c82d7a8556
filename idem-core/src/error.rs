//! The errors the idempotency layer answers with, each with a stable code.

use std::time::Duration;

use crate::canonical::BodyError;
use crate::key::KeyError;
use crate::policy::PolicyError;
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
    /// 400: the body of a request with a key cannot be read in the form its endpoint
    /// compares bodies in (JSON, for example), or its key read from it, or it did not arrive
    /// whole.
    pub const BODY_INVALID: &str = "idempotency_body_invalid";
    /// 413: the body of a request with a key is larger than the endpoint accepts.
    pub const BODY_TOO_LARGE: &str = "idempotency_body_too_large";
    /// 409: the operation completed, but its response was too large to keep for replay.
    pub const RESPONSE_TOO_LARGE: &str = "idempotency_response_too_large";
    /// 503: this server runs as much work for clients that went away as it allows; nothing ran.
    pub const OVERLOADED: &str = "idempotency_overloaded";
    /// 503: the server is shutting down, and stopped this request's run before its handler
    /// answered, at the end of its graceful stop's wait: its key is free again for a retry. (A
    /// run whose handler had answered is recorded instead, and its client gets that answer.)
    pub const SHUTTING_DOWN: &str = "idempotency_shutting_down";
    /// 500: a handler takes an `idem_actix::Transaction` that the app cannot lend (its store
    /// is not a Postgres store, the handler is under no idempotency layer, or it takes two),
    /// or whose writes cannot be committed (it kept it beyond its run, or answered a success
    /// over a statement of it that failed, or over writes a constraint checked at the
    /// commit refused); the server's log says which. Nothing ran, or
    /// nothing was committed.
    pub const TRANSACTION_UNAVAILABLE: &str = "idempotency_transaction_unavailable";
    /// 500: a handler takes the request's idempotency key, the request carries one, and no
    /// idempotency layer serves the handler; the server's log names the request. Nothing ran.
    pub const LAYER_MISSING: &str = "idempotency_layer_missing";
    /// 500: the endpoint's settings, with the application's defaults they override, break a
    /// rule that keeps its promise (its keys' scope is read from the key's own header), or the
    /// store can keep no record at all; the server's log says which. Nothing ran.
    pub const MISCONFIGURED: &str = "idempotency_misconfigured";
}

/// How long a client is told to wait before retrying a 409 in-flight or a 503.
pub const RETRY_AFTER: Duration = Duration::from_secs(1);

/// Where an endpoint that does not read its key from a header reads it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum KeyOrigin {
    /// The member a JSON Pointer names in the JSON body.
    Json(&'static str),
    /// The endpoint's key function.
    Function,
}

impl std::fmt::Display for KeyOrigin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KeyOrigin::Json(pointer) => write!(f, "at {pointer} in the JSON body"),
            KeyOrigin::Function => f.write_str("from this endpoint's key function"),
        }
    }
}

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
    /// The endpoint reads its key from the request (not a header), requires one, and found
    /// none.
    #[error("this endpoint requires an idempotency key {origin}; send one, unique per operation")]
    BodyKeyMissing {
        /// Where the key is read from.
        origin: KeyOrigin,
    },
    /// The key the endpoint read from the request is malformed.
    #[error("invalid idempotency key {origin}: {reason}")]
    BodyKeyInvalid {
        /// Where the key is read from.
        origin: KeyOrigin,
        /// The rule broken.
        reason: KeyError,
    },
    /// The body cannot be read in the form the endpoint reads it in.
    #[error(transparent)]
    BodyInvalid(#[from] BodyError),
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
    #[error("the request with this idempotency key completed with status {status}, but {}, so it cannot be replayed; it will not run again, so look its result up instead of retrying", not_kept(.size))]
    ResponseTooLarge {
        /// The first response's status.
        status: u16,
        /// Its size in bytes: as `max_response` counts it (body, and header names and values
        /// with 6 bytes each) when the response was read whole; its body's alone when the
        /// body outgrew the bound as it was read; 0 for a streamed body an endpoint that
        /// keeps none (`max_response = 0`) sent on unread.
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
    /// The server is shutting down and stopped the request's run before its handler answered
    /// (see [`codes::SHUTTING_DOWN`]).
    #[error("the server is shutting down and stopped this request before it was answered; retry it, here once the server is back, or on another")]
    ShuttingDown,
    /// The request body is larger than the endpoint buffers for fingerprinting.
    #[error("the request body is larger than {limit} bytes, the most this endpoint accepts")]
    BodyTooLarge {
        /// The limit in bytes.
        limit: usize,
    },
    /// The handler takes a transaction to write in with its record, and the app cannot lend
    /// one (see [`codes::TRANSACTION_UNAVAILABLE`]). Nothing ran, or nothing was committed.
    ///
    /// The message the client reads does not say why: the reason is about the server's code
    /// and settings, for its log, and there is nothing in it for the client to change.
    #[error("this endpoint could not run its transaction with its idempotency record, a fault of the server's; report it with the request id")]
    TransactionUnavailable {
        /// Why, and what the app's author should change: for the server's log.
        reason: &'static str,
    },
    /// The handler takes the request's key (see [`codes::LAYER_MISSING`]), but no idempotency
    /// layer serves it, so none was taken. Nothing ran.
    ///
    /// As for [`TransactionUnavailable`](Self::TransactionUnavailable), the client is not told
    /// why: the fix is in the server's code, and its log says what it is.
    #[error("this endpoint cannot take its idempotency key, a fault of the server's; report it with the request id")]
    LayerMissing,
    /// The endpoint's settings, with the application's defaults they override, break a rule
    /// that keeps its promise, or the store can keep no record (see
    /// [`codes::MISCONFIGURED`]): known only once both are, at a request. Nothing ran.
    ///
    /// As for [`TransactionUnavailable`](Self::TransactionUnavailable), the client is not told
    /// why (the [`PolicyError`] is for the server's log).
    #[error("this endpoint's idempotency settings contradict each other, a fault of the server's; report it with the request id")]
    Misconfigured(PolicyError),
}

/// Why a completed response cannot be replayed, by its recorded `size`.
fn not_kept(size: &u64) -> String {
    match size {
        0 => "its response was not kept (this endpoint keeps no response body)".to_owned(),
        size => format!("its response of {size} bytes was larger than this endpoint keeps"),
    }
}

impl IdempotencyError {
    /// The stable code (see [`codes`]).
    pub fn code(&self) -> &'static str {
        match self {
            Self::KeyMissing { .. } | Self::BodyKeyMissing { .. } => codes::KEY_MISSING,
            Self::KeyInvalid { .. } | Self::BodyKeyInvalid { .. } => codes::KEY_INVALID,
            Self::BodyInvalid(_) => codes::BODY_INVALID,
            Self::ScopeMissing(_) => codes::SCOPE_MISSING,
            Self::InFlight | Self::Mismatch { .. } | Self::EncodingNotAccepted { .. } => {
                codes::CONFLICT
            }
            Self::StoreUnavailable(_) => codes::STORE_UNAVAILABLE,
            Self::BodyTooLarge { .. } => codes::BODY_TOO_LARGE,
            Self::ResponseTooLarge { .. } => codes::RESPONSE_TOO_LARGE,
            Self::Overloaded => codes::OVERLOADED,
            Self::ShuttingDown => codes::SHUTTING_DOWN,
            Self::TransactionUnavailable { .. } => codes::TRANSACTION_UNAVAILABLE,
            Self::LayerMissing => codes::LAYER_MISSING,
            Self::Misconfigured(_) => codes::MISCONFIGURED,
        }
    }

    /// A short summary of the code's problem, the same wherever the code is answered (RFC
    /// 9457's `title`).
    pub fn title(&self) -> &'static str {
        match self {
            Self::KeyMissing { .. } | Self::BodyKeyMissing { .. } => "Idempotency key missing",
            Self::KeyInvalid { .. } | Self::BodyKeyInvalid { .. } => "Invalid idempotency key",
            Self::BodyInvalid(_) => "Request body unreadable",
            Self::ScopeMissing(_) => "Idempotency key scope missing",
            Self::InFlight | Self::Mismatch { .. } | Self::EncodingNotAccepted { .. } => {
                "Idempotency key conflict"
            }
            Self::StoreUnavailable(_) => "Idempotency store unavailable",
            Self::BodyTooLarge { .. } => "Request body too large",
            Self::ResponseTooLarge { .. } => "Response too large to replay",
            Self::Overloaded => "Server overloaded",
            Self::ShuttingDown => "Server shutting down",
            Self::TransactionUnavailable { .. } => "Transaction unavailable",
            Self::LayerMissing => "Idempotency layer missing",
            Self::Misconfigured(_) => "Idempotency misconfigured",
        }
    }

    /// The HTTP status.
    pub fn status(&self) -> u16 {
        match self {
            Self::KeyMissing { .. }
            | Self::KeyInvalid { .. }
            | Self::BodyKeyMissing { .. }
            | Self::BodyKeyInvalid { .. }
            | Self::BodyInvalid(_)
            | Self::ScopeMissing(_) => 400,
            Self::InFlight | Self::ResponseTooLarge { .. } | Self::EncodingNotAccepted { .. } => {
                409
            }
            Self::Mismatch { status } => *status,
            Self::StoreUnavailable(_) | Self::Overloaded | Self::ShuttingDown => 503,
            Self::BodyTooLarge { .. } => 413,
            Self::TransactionUnavailable { .. } | Self::LayerMissing | Self::Misconfigured(_) => {
                500
            }
        }
    }

    /// The `Retry-After` to send, where retrying later can succeed.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::InFlight | Self::StoreUnavailable(_) | Self::Overloaded | Self::ShuttingDown => {
                Some(RETRY_AFTER)
            }
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
                IdempotencyError::ShuttingDown,
                503,
                "idempotency_shutting_down",
            ),
            (
                IdempotencyError::TransactionUnavailable {
                    reason: "the store lends none",
                },
                500,
                "idempotency_transaction_unavailable",
            ),
            (
                IdempotencyError::LayerMissing,
                500,
                "idempotency_layer_missing",
            ),
            (
                IdempotencyError::Misconfigured(PolicyError::ScopeIsKey("Idempotency-Key")),
                500,
                "idempotency_misconfigured",
            ),
            (
                BodyError::NotJson {
                    offset: 0,
                    reason: "expected a value",
                }
                .into(),
                400,
                "idempotency_body_invalid",
            ),
            (
                IdempotencyError::BodyKeyMissing {
                    origin: KeyOrigin::Json("/event_id"),
                },
                400,
                "idempotency_key_missing",
            ),
            (
                IdempotencyError::BodyKeyInvalid {
                    origin: KeyOrigin::Function,
                    reason: KeyError::Empty,
                },
                400,
                "idempotency_key_invalid",
            ),
            (
                IdempotencyError::EncodingNotAccepted {
                    coding: "gzip".into(),
                },
                409,
                "idempotency_conflict",
            ),
        ];
        // One title per code, whatever the status (RFC 9457), and each code its own.
        let mut titles = std::collections::HashMap::new();
        for (err, status, code) in cases {
            assert_eq!((err.status(), err.code()), (status, code), "{err}");
            assert_eq!(
                *titles.entry(code).or_insert(err.title()),
                err.title(),
                "{code}"
            );
        }
        let mut distinct: Vec<_> = titles.values().collect();
        distinct.sort();
        distinct.dedup();
        assert_eq!(distinct.len(), titles.len(), "{titles:?}");
    }

    #[test]
    fn keys_read_from_the_body_say_where() {
        let missing = IdempotencyError::BodyKeyMissing {
            origin: KeyOrigin::Json("/event_id"),
        };
        assert_eq!(
            missing.to_string(),
            "this endpoint requires an idempotency key at /event_id in the JSON body; send one, unique per operation"
        );
        let invalid = IdempotencyError::BodyKeyInvalid {
            origin: KeyOrigin::Function,
            reason: KeyError::Empty,
        };
        assert!(invalid
            .to_string()
            .starts_with("invalid idempotency key from this endpoint's key function: "));
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
        let unlent = IdempotencyError::TransactionUnavailable {
            reason: "the store lends none",
        };
        assert!(unlent.retry_after().is_none());
    }

    #[test]
    fn an_unavailable_transaction_keeps_its_reason_from_the_client() {
        let unlent = IdempotencyError::TransactionUnavailable {
            reason: "the store lends none",
        };
        let message = unlent.to_string();
        assert!(!message.contains("lends none"), "{message}");
        assert!(
            message.contains("report it with the request id"),
            "{message}"
        );
    }
}
