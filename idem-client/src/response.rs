//! The answer to an operation.

use std::borrow::Cow;

use bytes::Bytes;
use reqwest::header::HeaderMap;
use reqwest::StatusCode;
use serde::de::DeserializeOwned;

use crate::Error;

/// The server's answer to an operation, read in full, with what the client knows of how it
/// came: whether it is a replay, after how many attempts, and under which key.
#[derive(Clone, Debug)]
pub struct Response {
    pub(crate) status: StatusCode,
    pub(crate) headers: HeaderMap,
    pub(crate) body: Bytes,
    pub(crate) key: String,
    pub(crate) attempts: u32,
}

/// The header a server adds to a replayed answer.
const REPLAYED: &str = "idempotent-replayed";

/// Whether `headers` are a replayed answer's.
pub(crate) fn is_replay(headers: &HeaderMap) -> bool {
    headers
        .get(REPLAYED)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"true"))
}

impl Response {
    /// The status.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The headers.
    pub fn headers(&self) -> &HeaderMap {
        &self.headers
    }

    /// The body.
    pub fn body(&self) -> &Bytes {
        &self.body
    }

    /// The body, taken out.
    pub fn into_body(self) -> Bytes {
        self.body
    }

    /// The body as text; invalid UTF-8 is replaced with U+FFFD.
    pub fn text(&self) -> Cow<'_, str> {
        String::from_utf8_lossy(&self.body)
    }

    /// The body as JSON.
    ///
    /// # Errors
    /// [`Error::Decode`] when the body is not JSON of the shape of `T`.
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, Error> {
        serde_json::from_slice(&self.body).map_err(Error::Decode)
    }

    /// Whether this is the recorded answer of an earlier attempt (or an earlier send with
    /// the same key), replayed by the server (`Idempotent-Replayed: true`), rather than the
    /// answer of a run of the operation for this request. A replay says the operation ran
    /// and was recorded, and is not run again under this key; an answer that is not a replay
    /// is a run of this send's (an earlier attempt's run was not recorded, or never happened).
    pub fn replayed(&self) -> bool {
        is_replay(&self.headers)
    }

    /// The idempotency key the operation was sent with: send the same operation again with
    /// it to get this answer back instead of a second run, where the server recorded it (an
    /// endpoint keeps every status but the application's 5xx unless told otherwise, and runs
    /// an operation whose answer it did not keep again).
    pub fn key(&self) -> &str {
        &self.key
    }

    /// How many attempts it took, 1 when the first one answered.
    pub fn attempts(&self) -> u32 {
        self.attempts
    }
}
