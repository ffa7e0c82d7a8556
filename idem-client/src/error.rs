//! What can go wrong in building a client and in sending an operation.

use std::fmt;
use std::time::Duration;

use reqwest::StatusCode;

/// Why [`ClientBuilder::build`](crate::ClientBuilder::build) refused its settings.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BuildError {
    /// The key header's name is not a valid HTTP header name.
    #[error("invalid key header name {name:?}: use a header name such as Idempotency-Key")]
    KeyHeader {
        /// The name given.
        name: String,
    },
    /// `max_attempts` was zero.
    #[error("max_attempts must be at least 1 (1 sends each operation once, without retries)")]
    NoAttempts,
    /// The first backoff is longer than the longest.
    #[error("initial_backoff ({initial:?}) exceeds max_backoff ({max:?}): lower the first or raise the second")]
    Backoff {
        /// The first backoff.
        initial: Duration,
        /// The cap.
        max: Duration,
    },
    /// A duration that must be above zero was zero.
    #[error("{setting} must be longer than zero")]
    ZeroDuration {
        /// The setting's name.
        setting: &'static str,
    },
    /// reqwest could not build its client.
    #[error("cannot build the HTTP client: {0}")]
    Http(#[source] reqwest::Error),
}

/// Why an operation did not get an answer it can use.
///
/// An answer of the server's own (a 2xx, or a 4xx of the application such as a validation
/// error) is not an error: it is a [`Response`](crate::Response). These are the cases where
/// the request was malformed before sending, the idempotency layer refused the key, the
/// operation ran but its answer cannot be replayed, or the retries ran out.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The idempotency key given is not a valid key.
    #[error("invalid idempotency key: {reason}; use visible ASCII characters, such as a UUID")]
    InvalidKey {
        /// The rule broken.
        reason: &'static str,
    },
    /// The request could not be built (its URL, a header, or its JSON body).
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// The key was already used with a different request (409 or 422
    /// `idempotency_conflict` without `Retry-After`). Retrying cannot help: a new operation
    /// needs a new key, and a retry of the old one needs its exact request.
    ///
    /// The same 409 also comes when the operation ran and its answer was recorded in a content
    /// coding (gzip, ...) negotiated for the first request that this one does not accept (a
    /// server that compresses inside its idempotency layer; its message then names the
    /// coding): send it again with the same key and the first request's `Accept-Encoding`,
    /// not under a new key, which would run it again.
    ///
    /// Given for an operation's first attempt only: a later attempt sends the same request,
    /// so a mismatch answered to it (by another instance of the server, fingerprinting
    /// otherwise) ends the operation as [`GaveUp`](Self::GaveUp), as the attempts before it
    /// may have run.
    #[error("idempotency key {key} was already used with a different request ({status}): send a new operation with a new key, or the retry with its first request's method, URL and body{}{}", .message.as_deref().map(|m| format!(": {m}")).unwrap_or_default(), RequestId(.request_id))]
    Mismatch {
        /// The key.
        key: String,
        /// 409 or 422, as the endpoint answers.
        status: StatusCode,
        /// The server's message, when its body had one.
        message: Option<String>,
        /// The server's id of the request (its `X-Request-ID`), when it sent one.
        request_id: Option<String>,
    },
    /// The operation ran and completed under this key, but its response was too large for the
    /// server to keep (409 `idempotency_response_too_large`), so it cannot be replayed. It
    /// will not run again under this key either: look its outcome up instead (a listing, the
    /// resource it created), and do not send it again under a new key, which would run it a
    /// second time.
    #[error("the operation with idempotency key {key} ran, but its response was too large for the server to keep ({status}), so it cannot be replayed; look its outcome up instead of sending it again{}{}", .message.as_deref().map(|m| format!(": {m}")).unwrap_or_default(), RequestId(.request_id))]
    ResponseNotKept {
        /// The key.
        key: String,
        /// The status of this answer (409), not the operation's.
        status: StatusCode,
        /// The server's message (which names the operation's status), when its body had one.
        message: Option<String>,
        /// The server's id of the request (its `X-Request-ID`), when it sent one.
        request_id: Option<String>,
    },
    /// The idempotency layer refused the request with one of its own codes: a 4xx (such as
    /// `idempotency_key_invalid` or `idempotency_body_too_large`) before running it, or a 500
    /// for a server it finds misconfigured (`idempotency_misconfigured`,
    /// `idempotency_layer_missing`, `idempotency_transaction_unavailable`). Nothing was
    /// recorded, and retrying the same request gets the same answer until the request, or the
    /// server, is mended. Given for an operation's first attempt only: a later attempt's
    /// refusal (by another instance of the server) ends the operation as
    /// [`GaveUp`](Self::GaveUp), as the attempts before it may have run.
    ///
    /// Nothing ran, except after `idempotency_transaction_unavailable`, which also comes after
    /// a handler ran and left nothing of its transaction to commit (it ended the transaction
    /// itself, or answered a success over a statement of it that failed): what it wrote in
    /// the transaction was rolled back (unless it committed it itself), what else it did (a
    /// call to another service) stands, and the key was released, so sending the request
    /// again, under this key or another, runs it again.
    #[error("the server refused idempotency key {key} with {status} {code}{}{}", .message.as_deref().map(|m| format!(": {m}")).unwrap_or_default(), RequestId(.request_id))]
    Refused {
        /// The key.
        key: String,
        /// The status.
        status: StatusCode,
        /// The stable code, such as `idempotency_key_invalid`.
        code: String,
        /// The server's message, when its body had one.
        message: Option<String>,
        /// The server's id of the request (its `X-Request-ID`), when it sent one: what a
        /// report of a server's fault names.
        request_id: Option<String>,
    },
    /// The answer is larger than [`max_response`](crate::ClientBuilder::max_response), so
    /// it was not read (nor retried; a 408, 429, 502, 503 or 504, or a 409 with `Retry-After`
    /// that is not a replay, is retried whatever its size). The operation may have run: send it again with the same
    /// key and a larger limit to get its answer (replayed, where the server kept it), not under
    /// a new key, which would run it again.
    #[error("the answer to the operation with idempotency key {key} ({status}) is larger than max_response ({limit} bytes), so it was not read; the operation may have run: send it again with the same key and a larger max_response to get its answer")]
    ResponseTooLarge {
        /// The key.
        key: String,
        /// The answer's status.
        status: StatusCode,
        /// The limit it passed, in bytes.
        limit: usize,
    },
    /// Every attempt allowed failed in a way a retry could mend (connection error, timeout,
    /// 408, 429, 502, 503, 504, 409 while in flight), or a later attempt was refused (its `last`
    /// says how) after earlier ones that may have run. The operation may have run. A run the
    /// server recorded is not run again under this key; a run that answered an application's
    /// own 502, 503 or 504 was not recorded (an endpoint keeps no 5xx unless told to), nor,
    /// on an endpoint that records only 2xx (`cache = "2xx"`), one that answered its own 408,
    /// 429, or 409 with `Retry-After`, and each retry that reached the handler ran it again. Send
    /// it again later with the same key to learn its outcome.
    #[error("gave up after {attempts} attempts in {} ms, the last {last}: send the operation again later with the same idempotency key ({key}) to get its outcome", .elapsed.as_millis())]
    GaveUp {
        /// The key, to send the operation again with.
        key: String,
        /// Attempts made.
        attempts: u32,
        /// Time since the first attempt started.
        elapsed: Duration,
        /// How the last attempt failed.
        last: Failure,
    },
    /// The request failed in a way no retry mends, before it was sent: a URL reqwest cannot
    /// send to, or a TLS handshake that rustls failed (the server refused it, or the client
    /// does not accept the server's certificate or protocol). That is told with the `rustls`
    /// feature, whichever reqwest client on rustls 0.23 made the connection (the builder's,
    /// or one given to [`http_client`](crate::ClientBuilder::http_client)); without the
    /// feature, a failed handshake is retried like a refused connection. Only on the first
    /// attempt: after an attempt that was sent, which may have run, such a failure ends the
    /// operation as [`GaveUp`](Self::GaveUp), with its key.
    #[error("cannot send the request: {}", Causes(.0))]
    Transport(#[source] reqwest::Error),
    /// What came back is not HTTP the client can read (a status line or a header no parser
    /// reads, or headers past hyper's limit). The request was sent, and the operation may
    /// have run; a retry would reach the same server and read alike, so it is not retried:
    /// send it again with the same key once the server answers in HTTP, not under a new key,
    /// which would run it again.
    #[error("the answer to the operation with idempotency key {key} is not HTTP the client can read ({}); the operation may have run: send it again with the same key once the server answers in HTTP", Causes(.source))]
    InvalidAnswer {
        /// The key.
        key: String,
        /// What reqwest reported.
        #[source]
        source: reqwest::Error,
    },
    /// The server's final status was a 1xx: a `101 Switching Protocols` (the interim 1xx,
    /// such as `100 Continue`, are read past to the final answer). After it the connection no
    /// longer speaks HTTP, and an operation is no upgrade (the client hands back no upgraded
    /// connection), so no answer of the operation came; the request was sent, and the
    /// operation may have run. As with
    /// [`InvalidAnswer`](Self::InvalidAnswer), a retry would reach the same server and be
    /// answered alike, so it is not retried: send it again with the same key once the server
    /// answers in HTTP, not under a new key, which would run it again.
    #[error("the server answered the operation with idempotency key {key} with {status}, which switches the connection out of HTTP and is no answer of an operation; the operation may have run: send it again with the same key once the server answers in HTTP")]
    Informational {
        /// The key.
        key: String,
        /// The 1xx status.
        status: StatusCode,
    },
    /// A redirect that the [`http_client`](crate::ClientBuilder::http_client) given follows
    /// went wrong (a loop, or too many): the request was sent, and the operation may have run.
    /// Send it again with the same key through a client that does not follow redirects to get
    /// its answer, not under a new key, which would run it again.
    #[error("a redirect followed after the operation with idempotency key {key} was sent went wrong ({source}); the operation may have run: send it again with the same key through a client that follows no redirects to get its answer")]
    Redirect {
        /// The key.
        key: String,
        /// What reqwest reported.
        #[source]
        source: reqwest::Error,
    },
    /// The response body is not the JSON asked for.
    #[error("the response body is not the JSON expected: {0}")]
    Decode(#[source] serde_json::Error),
}

impl Error {
    /// The idempotency key the operation was sent with, where it was sent: keep it to send
    /// the same operation again.
    pub fn key(&self) -> Option<&str> {
        match self {
            Self::Mismatch { key, .. }
            | Self::ResponseNotKept { key, .. }
            | Self::Refused { key, .. }
            | Self::ResponseTooLarge { key, .. }
            | Self::Redirect { key, .. }
            | Self::InvalidAnswer { key, .. }
            | Self::Informational { key, .. }
            | Self::GaveUp { key, .. } => Some(key),
            _ => None,
        }
    }

    /// The server's id of the request it refused (its `X-Request-ID`), where it answered with
    /// one: the id to give with a report of the server's fault.
    pub fn request_id(&self) -> Option<&str> {
        match self {
            Self::Mismatch { request_id, .. }
            | Self::ResponseNotKept { request_id, .. }
            | Self::Refused { request_id, .. } => request_id.as_deref(),
            _ => None,
        }
    }
}

/// A request id for an error's message: ` (request id ...)`, or nothing.
struct RequestId<'a>(&'a Option<String>);

impl std::fmt::Display for RequestId<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(id) => write!(f, " (request id {id})"),
            None => Ok(()),
        }
    }
}

/// How an attempt that may be retried failed.
#[derive(Debug)]
#[non_exhaustive]
pub enum Failure {
    /// The server answered with a status worth retrying (408, 429, 502, 503, 504, or 409 while
    /// in flight), or refused a later attempt of an operation whose earlier ones may have run
    /// (its code says why: another instance of the server, misconfigured, or with other
    /// limits).
    Status {
        /// The status.
        status: StatusCode,
        /// The stable code of its body, when it had one.
        code: Option<String>,
    },
    /// The connection failed, was reset, or the attempt timed out.
    Transport(reqwest::Error),
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Status { status, code } => {
                write!(f, "answered {status}")?;
                match code {
                    Some(code) => write!(f, " ({code})"),
                    None => Ok(()),
                }
            }
            Self::Transport(error) if error.is_timeout() => {
                f.write_str("timed out before the answer came")
            }
            Self::Transport(error) => write!(f, "failed: {}", Causes(error)),
        }
    }
}

/// An error and its causes, each after a colon: reqwest's own message names only the request.
pub(crate) struct Causes<'a>(pub(crate) &'a reqwest::Error);

impl fmt::Display for Causes<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = std::error::Error::source(self.0);
        while let Some(cause) = source {
            write!(f, ": {cause}")?;
            source = cause.source();
        }
        Ok(())
    }
}
