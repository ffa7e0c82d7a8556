//! One logical operation: a request, its key, and its attempts.

use std::fmt::Display;
use std::time::{Duration, SystemTime};

use bytes::{Bytes, BytesMut};
use reqwest::header::{HeaderMap, HeaderName, HeaderValue, AUTHORIZATION, CONTENT_TYPE};
use reqwest::{Method, Url};
use serde::Serialize;

use crate::classify::{classify, Class};
use crate::retry::{self, Verdict};
use crate::{key, Client, Error, Failure, Response};

/// One logical operation, such as "create this call": built like a request, sent with
/// [`send`](Self::send), and attempted as often as the client's settings allow, always with
/// the same key and the same bytes.
///
/// Its key is made when the operation is made (see [`key`](Self::key)); give one with
/// [`idempotency_key`](Self::idempotency_key) to resume an operation sent before, such as one
/// whose retries ran out.
#[must_use = "an operation does nothing until it is sent"]
pub struct Operation<'c> {
    client: &'c Client,
    method: Method,
    url: Option<Url>,
    headers: HeaderMap,
    body: Option<Bytes>,
    key: String,
    /// The first mistake made while building, reported by `send`.
    error: Option<Error>,
}

/// Without the credentials it may carry: its URL's password, and its body (its size only);
/// the headers that carry credentials are marked sensitive as they are added (see
/// [`Operation::header`]), and shown so.
impl std::fmt::Debug for Operation<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let url = self.url.as_ref().map(|url| {
            let mut url = url.clone();
            let _ = url.set_password(None);
            url.to_string()
        });
        f.debug_struct("Operation")
            .field("method", &self.method)
            .field("url", &url)
            .field("headers", &self.headers)
            .field("body_bytes", &self.body.as_ref().map(Bytes::len))
            .field("key", &self.key)
            .field("error", &self.error)
            .finish_non_exhaustive()
    }
}

/// Headers that carry credentials: marked sensitive, so that a `Debug` form (the operation's,
/// reqwest's) shows none of their values.
const CREDENTIALS: [&str; 4] = [
    "authorization",
    "proxy-authorization",
    "cookie",
    "x-api-key",
];

impl<'c> Operation<'c> {
    pub(crate) fn new(client: &'c Client, method: Method, url: &str) -> Self {
        let mut operation = Self {
            client,
            method,
            url: None,
            headers: HeaderMap::new(),
            body: None,
            key: key::generate(),
            error: None,
        };
        match Url::parse(url) {
            Ok(url) => operation.url = Some(url),
            Err(e) => {
                // Not named where it may hold credentials (`user:password@`), which a URL that
                // does not parse cannot be told apart from.
                let named = if url.contains('@') {
                    String::new()
                } else {
                    format!(" {url:?}")
                };
                operation.fail(Error::InvalidRequest(format!(
                    "invalid URL{named}: {e}; give an absolute URL such as http://127.0.0.1:8080/v1/calls"
                )))
            }
        }
        operation
    }

    fn fail(&mut self, error: Error) {
        self.error.get_or_insert(error);
    }

    /// The key this operation is sent with, as it is sent: unquoted, unless it starts with
    /// `"` itself. Give it back to [`idempotency_key`](Self::idempotency_key) to resume the
    /// operation.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// Sends the operation under `key` instead of a new one: to send again an operation
    /// whose outcome is unknown (after [`Error::GaveUp`]), with the same request.
    ///
    /// `key` is read as the header carries it, as an idem server reads it: a bare token, or
    /// an RFC 8941 string (`"call-1"` is the key `call-1`, and [`key`](Self::key) gives
    /// `call-1`). One or more visible ASCII characters once unquoted; anything else is
    /// reported by `send` as [`Error::InvalidKey`], with nothing sent.
    pub fn idempotency_key(mut self, key: impl AsRef<str>) -> Self {
        match key::read(key.as_ref()) {
            Ok(key) => self.key = key,
            Err(e) => self.fail(e),
        }
        self
    }

    /// Adds a header. The key header given here is taken as
    /// [`idempotency_key`](Self::idempotency_key).
    pub fn header(mut self, name: impl AsRef<str>, value: impl AsRef<str>) -> Self {
        let (name, value) = (name.as_ref(), value.as_ref());
        let Ok(header) = HeaderName::from_bytes(name.as_bytes()) else {
            self.fail(Error::InvalidRequest(format!(
                "invalid header name {name:?}: use letters, digits and '-'"
            )));
            return self;
        };
        if header == self.client.key_header {
            return self.idempotency_key(value);
        }
        match HeaderValue::from_str(value) {
            Ok(mut value) => {
                value.set_sensitive(CREDENTIALS.contains(&header.as_str()));
                self.headers.append(header, value);
            }
            Err(_) => self.fail(Error::InvalidRequest(format!(
                "invalid value for header {name}: use visible ASCII, spaces and tabs"
            ))),
        }
        self
    }

    /// Sends `Authorization: Bearer <token>`.
    pub fn bearer_auth(mut self, token: impl Display) -> Self {
        match HeaderValue::try_from(format!("Bearer {token}")) {
            Ok(mut value) => {
                value.set_sensitive(true);
                self.headers.insert(AUTHORIZATION, value);
            }
            Err(_) => self.fail(Error::InvalidRequest(
                "invalid bearer token: use visible ASCII".into(),
            )),
        }
        self
    }

    /// The body, sent as these bytes on every attempt.
    pub fn body(mut self, body: impl Into<Bytes>) -> Self {
        self.body = Some(body.into());
        self
    }

    /// `value` as a JSON body, with `Content-Type: application/json` unless one was set.
    pub fn json<T: Serialize + ?Sized>(mut self, value: &T) -> Self {
        match serde_json::to_vec(value) {
            Ok(body) => {
                self.headers
                    .entry(CONTENT_TYPE)
                    .or_insert(HeaderValue::from_static("application/json"));
                self.body = Some(body.into());
            }
            Err(e) => self.fail(Error::InvalidRequest(format!(
                "cannot serialize the JSON body: {e}"
            ))),
        }
        self
    }

    /// Sends the operation, retrying with the same key and bytes what a retry can mend:
    /// connection errors and resets, timeouts, 408, 429, 502, 503 and 504, and 409 while the key
    /// is in flight, waiting a capped exponential backoff with jitter, and at least the server's
    /// `Retry-After`.
    ///
    /// # Errors
    /// - [`Error::InvalidKey`], [`Error::InvalidRequest`]: the operation was built wrong;
    ///   nothing was sent.
    /// - [`Error::Mismatch`]: the key was used with a different request; not retried (answered
    ///   to a later attempt, the operation ends as [`Error::GaveUp`]: an earlier one may have
    ///   run).
    /// - [`Error::ResponseNotKept`]: the operation ran under this key, but its response was
    ///   too large for the server to keep, so it cannot be replayed; not retried.
    /// - [`Error::ResponseTooLarge`]: the answer's body is larger than the client's
    ///   `max_response`; it was not read, and the operation may have run; not retried (a
    ///   status retried above is retried whatever its size).
    /// - [`Error::Refused`]: the idempotency layer refused the request with another 4xx of its
    ///   own, or a 500 of its own for a server it finds misconfigured; nothing was recorded,
    ///   and nothing ran but after `idempotency_transaction_unavailable` (see its docs); not
    ///   retried.
    /// - [`Error::GaveUp`]: the attempts or the time ran out; the operation may have run (a
    ///   run the server recorded is not run again; one that answered an application's own
    ///   5xx, or on a `cache = "2xx"` endpoint its own 408, 409 or 429, was not recorded, and a
    ///   retry ran it again), and sending it again with
    ///   [`Error::key`] tells its outcome.
    /// - [`Error::Transport`]: reqwest cannot send this request at all, or the server refused
    ///   the TLS handshake; nothing was sent.
    /// - [`Error::InvalidAnswer`]: what came back is not HTTP; the operation may have run;
    ///   not retried.
    /// - [`Error::Informational`]: the server switched protocols (101), so no answer of the
    ///   operation came; the operation may have run; not retried.
    /// - [`Error::Redirect`]: a redirect that a caller's own reqwest client followed went
    ///   wrong after the request was sent; the operation may have run; not retried.
    ///
    /// Any other answer, the application's 4xx and 5xx among them, is a [`Response`].
    pub async fn send(self) -> Result<Response, Error> {
        let url = match (self.error, self.url) {
            (Some(error), _) => return Err(error),
            (None, Some(url)) => url,
            // An operation without a URL carries the error saying why.
            (None, None) => return Err(Error::InvalidRequest("the operation has no URL".into())),
        };
        if url.scheme() == "https" && !self.client.tls {
            return Err(Error::InvalidRequest(
                "https URLs need TLS: enable idem-client's rustls feature, or give \
                 ClientBuilder::http_client a reqwest client with TLS"
                    .into(),
            ));
        }
        let mut headers = self.headers;
        let key_value = HeaderValue::from_str(&self.key).map_err(|_| Error::InvalidKey {
            reason: "it is not a valid header value",
        })?;
        headers.insert(self.client.key_header.clone(), key_value);
        let attempt = Attempt {
            client: self.client,
            method: &self.method,
            url: &url,
            headers: &headers,
            body: self.body.as_ref(),
            key: &self.key,
        };
        let mut rng = fastrand::Rng::new();
        retry::run(
            &self.client.policy,
            &self.key,
            &mut rng,
            |number, timeout| attempt.run(number, timeout),
        )
        .await
    }
}

/// What every attempt of an operation sends.
#[derive(Clone, Copy)]
struct Attempt<'a> {
    client: &'a Client,
    method: &'a Method,
    url: &'a Url,
    headers: &'a HeaderMap,
    body: Option<&'a Bytes>,
    key: &'a str,
}

impl Attempt<'_> {
    /// Attempt number `number`, abandoned after `timeout`.
    async fn run(self, number: u32, timeout: Duration) -> Verdict<Response> {
        let mut request = self
            .client
            .http
            .request(self.method.clone(), self.url.clone())
            .headers(self.headers.clone())
            .timeout(timeout);
        if let Some(body) = self.body {
            request = request.body(body.clone());
        }
        let response = match request.send().await {
            Ok(response) => response,
            Err(e) => return transport(e, self.key),
        };
        let status = response.status();
        let headers = response.headers().clone();
        let key = self.key.to_owned();
        // The answer is read within the attempt: a connection that breaks mid-body is retried
        // like one that broke before the status line.
        let limit = self.client.max_response;
        let body = match read_body(response, limit).await {
            Ok(Some(body)) => body,
            // A status worth retrying says nothing of the operation however large its page
            // (a proxy's 503, the layer's 409 in flight rendered at length): it is judged
            // as a page the client cannot read. Any other answer may be the operation's.
            Ok(None) => match classify(status, &headers, b"", SystemTime::now()) {
                Class::Retry { retry_after, .. } => {
                    let failure = Failure::Status { status, code: None };
                    return Verdict::Retry {
                        failure,
                        retry_after,
                    };
                }
                _ => return Verdict::Stop(Error::ResponseTooLarge { key, status, limit }),
            },
            Err(e) => return transport(e, &key),
        };
        // The server's id of this request, for an error to name.
        let request_id = || {
            let id = headers.get("x-request-id")?.to_str().ok()?;
            Some(id.to_owned())
        };
        match classify(status, &headers, &body, SystemTime::now()) {
            Class::Answer => Verdict::Done(Response {
                status,
                headers,
                body,
                key,
                attempts: number,
            }),
            Class::Retry { code, retry_after } => Verdict::Retry {
                failure: Failure::Status { status, code },
                retry_after,
            },
            Class::Mismatch { message } => Verdict::Stop(Error::Mismatch {
                request_id: request_id(),
                key,
                status,
                message,
            }),
            Class::NotKept { message } => Verdict::Stop(Error::ResponseNotKept {
                request_id: request_id(),
                key,
                status,
                message,
            }),
            Class::Refused { code, message } => Verdict::Stop(Error::Refused {
                request_id: request_id(),
                key,
                status,
                code,
                message,
            }),
            Class::Informational => Verdict::Stop(Error::Informational { key, status }),
        }
    }
}

/// The answer's body, or `None` when it is larger than `limit` (left unread past it).
async fn read_body(
    mut response: reqwest::Response,
    limit: usize,
) -> Result<Option<Bytes>, reqwest::Error> {
    let declared = response.content_length().unwrap_or(0);
    if declared > u64::try_from(limit).unwrap_or(u64::MAX) {
        return Ok(None);
    }
    // Room for the size declared, up to a mebibyte: a size is only what the server says
    // until the bytes come.
    let room = usize::try_from(declared.min(1 << 20)).unwrap_or(0);
    let mut body = BytesMut::with_capacity(room);
    while let Some(chunk) = response.chunk().await? {
        if chunk.len() > limit - body.len() {
            return Ok(None);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(Some(body.freeze()))
}

/// A request that failed without an answer: retried, unless no retry mends it. Before the
/// request was sent: a URL reqwest cannot send to, a TLS handshake the server refused. After
/// (the error keeps the key): a redirect that went wrong, an answer that is not HTTP.
fn transport(error: reqwest::Error, key: &str) -> Verdict<Response> {
    if error.is_redirect() {
        let key = key.to_owned();
        return Verdict::Stop(Error::Redirect { key, source: error });
    }
    if error.is_builder() || handshake_refused(&error) || unsendable_url(&error) {
        return Verdict::Stop(Error::Transport(error));
    }
    let unreadable = causes(&error).any(|cause| {
        cause
            .downcast_ref::<hyper::Error>()
            .is_some_and(hyper::Error::is_parse)
    });
    if unreadable {
        let key = key.to_owned();
        return Verdict::Stop(Error::InvalidAnswer { key, source: error });
    }
    Verdict::Retry {
        failure: Failure::Transport(error),
        retry_after: None,
    }
}

/// Whether the connector refused the URL before connecting (hyper-util's "invalid URL, scheme
/// is not http", as a reqwest client without TLS answers an `https://` URL): nothing was sent.
fn unsendable_url(error: &reqwest::Error) -> bool {
    error.is_connect() && causes(error).any(|cause| cause.to_string().starts_with("invalid URL, "))
}

/// Whether rustls failed the connection: the server refused the handshake (an alert), or
/// its certificate or protocol is not one the client accepts. A failure of an established
/// connection is not one: the request may be under way, and a new connection may mend it.
#[cfg(feature = "rustls")]
fn handshake_refused(error: &reqwest::Error) -> bool {
    error.is_connect() && causes(error).any(|cause| cause.is::<rustls::Error>())
}

#[cfg(not(feature = "rustls"))]
fn handshake_refused(_: &reqwest::Error) -> bool {
    false
}

/// `error` and its causes, with the error an `io::Error` wraps (which its `source` skips).
fn causes<'a>(
    error: &'a (dyn std::error::Error + 'static),
) -> impl Iterator<Item = &'a (dyn std::error::Error + 'static)> {
    std::iter::successors(Some(error), |error| {
        let wrapped = error
            .downcast_ref::<std::io::Error>()
            .and_then(std::io::Error::get_ref);
        match wrapped {
            Some(inner) => Some(inner as &(dyn std::error::Error + 'static)),
            None => error.source(),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An operation's `Debug` form shows no credential: a header that carries one (given
    /// through `header` as well as `bearer_auth`), or a URL's password, where only
    /// `bearer_auth`'s was hidden.
    #[test]
    fn an_operation_s_debug_form_shows_no_credential() {
        let client = Client::builder().build().unwrap();
        let secret = "S3cret";
        let url = "http://127.0.0.1:1/x";
        let shown = [
            format!("{:?}", client.post(url).bearer_auth(secret)),
            format!(
                "{:?}",
                client
                    .post(url)
                    .header("Authorization", format!("Bearer {secret}"))
            ),
            format!("{:?}", client.post(url).header("X-API-Key", secret)),
            format!(
                "{:?}",
                client
                    .post(url)
                    .header("Cookie", format!("session={secret}"))
            ),
            format!(
                "{:?}",
                client.post(url).header("Proxy-Authorization", secret)
            ),
            format!(
                "{:?}",
                client.post(format!("http://user:{secret}@127.0.0.1:1/x"))
            ),
            format!(
                "{:?}",
                client
                    .post(url)
                    .body(format!("{{\"password\":\"{secret}\"}}"))
            ),
        ];
        let leaks: Vec<_> = shown.iter().filter(|s| s.contains(secret)).collect();
        assert!(leaks.is_empty(), "{leaks:#?}");
        assert!(shown.iter().all(|s| s.contains("127.0.0.1")), "{shown:#?}");
        // A URL that does not parse, in the error kept for `send`.
        let unparsed = client.post(format!("http://user:{secret}@127.0.0.1:99999/x"));
        let shown = format!("{unparsed:?}");
        assert!(
            shown.contains("invalid URL") && !shown.contains(secret),
            "{shown}"
        );
    }

    fn client() -> Client {
        Client::builder().build().unwrap()
    }

    #[tokio::test]
    async fn a_mistake_in_building_is_reported_by_send_and_nothing_is_sent() {
        let client = client();
        let cases = [
            (client.post("not a url"), "invalid URL"),
            (
                client.post("http://127.0.0.1:9/").idempotency_key("a key"),
                "invalid idempotency key",
            ),
            (
                client.post("http://127.0.0.1:9/").header("bad name", "v"),
                "invalid header name",
            ),
            (
                client
                    .post("http://127.0.0.1:9/")
                    .header("X-Note", "line\nbreak"),
                "invalid value for header X-Note",
            ),
        ];
        for (operation, expected) in cases {
            let err = operation.send().await.unwrap_err();
            assert!(err.to_string().contains(expected), "{err}");
            assert!(err.key().is_none(), "nothing was sent: {err}");
        }
    }

    #[cfg(not(feature = "rustls"))]
    #[tokio::test]
    async fn https_without_tls_is_refused_before_sending() {
        let err = client()
            .post("https://127.0.0.1:9/v1/calls")
            .send()
            .await
            .unwrap_err();
        assert!(err.to_string().contains("rustls feature"), "{err}");
    }

    /// A server reads `"call-1"` (an RFC 8941 string) as the key `call-1`: the two are one
    /// key, and the operation is known by one form, the bare one wherever it can be. They
    /// were two keys to the client, and a quoted key the server refuses was sent.
    #[tokio::test]
    async fn a_quoted_key_is_the_key_it_quotes() {
        let client = client();
        let url = "http://127.0.0.1:9/";
        for (given, key) in [
            ("call-1", "call-1"),
            (r#""call-1""#, "call-1"),
            (r#""a\\b""#, r"a\b"),
            (r#"a"b"#, r#"a"b"#),
            // A key that starts with a quote can only be sent quoted.
            (r#""\"x""#, r#""\"x""#),
        ] {
            let operation = client.post(url).idempotency_key(given);
            assert_eq!(operation.key(), key, "{given}");
            let again = client.post(url).idempotency_key(operation.key());
            assert_eq!(again.key(), key, "{given}: its own key is another");
            let header = client.post(url).header("Idempotency-Key", given);
            assert_eq!(header.key(), key, "{given}");
        }
        for given in [r#""call-1"#, r#""a"b"#, r#""a\x""#, r#""""#, r#""a b""#] {
            let err = client.post(url).idempotency_key(given).send().await;
            assert!(
                matches!(err, Err(Error::InvalidKey { .. })),
                "{given}: {err:?}"
            );
        }
    }

    #[test]
    fn the_key_header_given_as_a_header_is_the_operations_key() {
        let client = client();
        let operation = client
            .post("http://127.0.0.1:9/")
            .header("idempotency-key", "call-0001");
        assert_eq!(operation.key(), "call-0001");
        assert!(operation.headers.is_empty());
        let fresh = client.post("http://127.0.0.1:9/");
        assert_ne!(fresh.key(), client.post("http://127.0.0.1:9/").key());
    }
}
