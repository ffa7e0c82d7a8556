//! The client and its builder.

use std::time::Duration;

use reqwest::header::HeaderName;
use reqwest::Method;

use crate::backoff::Backoff;
use crate::retry::RetryPolicy;
use crate::{BuildError, Operation};

/// The header an idempotency key is sent in unless [`ClientBuilder::key_header`] names
/// another.
pub const DEFAULT_KEY_HEADER: &str = "Idempotency-Key";

/// Sends operations with an idempotency key, retrying those that failed in a way a retry can
/// mend.
///
/// Cheap to clone: clones share reqwest's connection pool. Build one with
/// [`Client::builder`].
#[derive(Clone, Debug)]
pub struct Client {
    pub(crate) http: reqwest::Client,
    pub(crate) key_header: HeaderName,
    pub(crate) policy: RetryPolicy,
    /// The largest answer read, in bytes.
    pub(crate) max_response: usize,
    /// Whether `https://` URLs can be reached: with the `rustls` feature, or a reqwest client
    /// of the caller's (which may have TLS of its own).
    pub(crate) tls: bool,
}

impl Client {
    /// A builder with the defaults listed on [`ClientBuilder`].
    pub fn builder() -> ClientBuilder {
        ClientBuilder::default()
    }

    /// A new operation: `method` on `url`, under a freshly made key.
    pub fn request(&self, method: Method, url: impl AsRef<str>) -> Operation<'_> {
        Operation::new(self, method, url.as_ref())
    }

    /// A new `POST` operation on `url`.
    pub fn post(&self, url: impl AsRef<str>) -> Operation<'_> {
        self.request(Method::POST, url)
    }

    /// A new `PUT` operation on `url`.
    pub fn put(&self, url: impl AsRef<str>) -> Operation<'_> {
        self.request(Method::PUT, url)
    }

    /// A new `PATCH` operation on `url`.
    pub fn patch(&self, url: impl AsRef<str>) -> Operation<'_> {
        self.request(Method::PATCH, url)
    }

    /// A new `DELETE` operation on `url`.
    pub fn delete(&self, url: impl AsRef<str>) -> Operation<'_> {
        self.request(Method::DELETE, url)
    }
}

/// Settings of a [`Client`].
///
/// | setting | default |
/// |---|---|
/// | [`key_header`](Self::key_header) | `Idempotency-Key` |
/// | [`timeout`](Self::timeout) (each attempt) | 10 s |
/// | [`connect_timeout`](Self::connect_timeout) | 5 s |
/// | [`max_attempts`](Self::max_attempts) | 5 |
/// | [`max_elapsed`](Self::max_elapsed) (all attempts and waits) | 60 s |
/// | [`initial_backoff`](Self::initial_backoff) | 100 ms |
/// | [`max_backoff`](Self::max_backoff) | 5 s |
/// | [`max_response`](Self::max_response) | 16 MiB |
#[derive(Debug)]
#[must_use]
pub struct ClientBuilder {
    key_header: String,
    timeout: Duration,
    connect_timeout: Duration,
    max_attempts: u32,
    max_elapsed: Duration,
    initial_backoff: Duration,
    max_backoff: Duration,
    max_response: usize,
    http: Option<reqwest::Client>,
}

impl Default for ClientBuilder {
    fn default() -> Self {
        Self {
            key_header: DEFAULT_KEY_HEADER.to_owned(),
            timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(5),
            max_attempts: 5,
            max_elapsed: Duration::from_secs(60),
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
            max_response: 16 * 1024 * 1024,
            http: None,
        }
    }
}

impl ClientBuilder {
    /// The header the key is sent in, such as `X-Idempotency-Key`.
    pub fn key_header(mut self, name: impl Into<String>) -> Self {
        self.key_header = name.into();
        self
    }

    /// The longest one attempt may take, from connecting to the last byte of the answer.
    /// An attempt that takes longer is abandoned and retried with the same key: the server
    /// either finishes the first run and replays it, or answers 409 while it runs.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The longest connecting may take. Applies to the reqwest client this builder makes,
    /// not to one given with [`http_client`](Self::http_client).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Attempts per operation, the first included: 1 sends each operation once.
    pub fn max_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = attempts;
        self
    }

    /// The longest an operation may take over all its attempts and the waits between them.
    /// No wait is started that would end past it, and the last attempt's timeout is cut to
    /// what is left.
    pub fn max_elapsed(mut self, limit: Duration) -> Self {
        self.max_elapsed = limit;
        self
    }

    /// The wait before the first retry, doubled for each retry after it; the actual wait is
    /// between half and all of it, at random.
    pub fn initial_backoff(mut self, wait: Duration) -> Self {
        self.initial_backoff = wait;
        self
    }

    /// The cap on the doubled wait. A server's `Retry-After` is honoured even above it (the
    /// time limit still applies).
    pub fn max_backoff(mut self, wait: Duration) -> Self {
        self.max_backoff = wait;
        self
    }

    /// The largest answer body read, in bytes (after reqwest's decompression, where its
    /// client decompresses). A larger one is not read into memory: the operation stops with
    /// [`Error::ResponseTooLarge`](crate::Error::ResponseTooLarge), which carries its key.
    /// `usize::MAX` sets no limit.
    pub fn max_response(mut self, bytes: usize) -> Self {
        self.max_response = bytes;
        self
    }

    /// Sends through this reqwest client (with its TLS, proxies, pool and default headers)
    /// instead of one the builder makes. Each attempt's [`timeout`](Self::timeout) replaces
    /// its total timeout (reqwest's `ClientBuilder::timeout`); its `connect_timeout` and
    /// `read_timeout` still apply. Build it with
    /// `.redirect(reqwest::redirect::Policy::none())`, as the builder's own client is: one
    /// that follows redirects hands back the answer of the request redirected to, which is
    /// never a replay, instead of the operation's.
    ///
    /// With the `rustls` feature, reqwest has no crypto provider of its own: install one for
    /// the process before building this client (reqwest panics otherwise), for example
    /// `rustls::crypto::ring::default_provider().install_default()`. The builder's own client
    /// installs ring when the process has none. Ring's provider has no post-quantum key
    /// exchange (rustls deprecates it for that from 0.23.48): an application that wants one
    /// installs aws-lc-rs's (`rustls::crypto::aws_lc_rs::default_provider()`, rustls's
    /// `aws_lc_rs` feature) before building any client.
    pub fn http_client(mut self, client: reqwest::Client) -> Self {
        self.http = Some(client);
        self
    }

    /// The client.
    ///
    /// # Errors
    /// A [`BuildError`] naming the setting to change: an invalid key header name, zero
    /// attempts, a zero timeout or time limit, an initial backoff above its cap, or a
    /// reqwest client that cannot be built.
    pub fn build(self) -> Result<Client, BuildError> {
        let key_header = HeaderName::from_bytes(self.key_header.as_bytes()).map_err(|_| {
            BuildError::KeyHeader {
                name: self.key_header.clone(),
            }
        })?;
        if self.max_attempts == 0 {
            return Err(BuildError::NoAttempts);
        }
        for (setting, value) in [
            ("timeout", self.timeout),
            ("connect_timeout", self.connect_timeout),
            ("max_elapsed", self.max_elapsed),
        ] {
            if value.is_zero() {
                return Err(BuildError::ZeroDuration { setting });
            }
        }
        if self.initial_backoff > self.max_backoff {
            return Err(BuildError::Backoff {
                initial: self.initial_backoff,
                max: self.max_backoff,
            });
        }
        let (http, tls) = match self.http {
            Some(http) => (http, true),
            None => (http_client(self.connect_timeout)?, cfg!(feature = "rustls")),
        };
        Ok(Client {
            http,
            key_header,
            policy: RetryPolicy {
                max_attempts: self.max_attempts,
                max_elapsed: self.max_elapsed,
                attempt_timeout: self.timeout,
                backoff: Backoff {
                    initial: self.initial_backoff,
                    max: self.max_backoff,
                },
            },
            max_response: self.max_response,
            tls,
        })
    }
}

/// A reqwest client of the builder's own.
fn http_client(connect_timeout: Duration) -> Result<reqwest::Client, BuildError> {
    #[cfg(feature = "rustls")]
    {
        // reqwest takes the process's default crypto provider, and has none of its own under
        // `rustls-no-provider`: ring becomes the default unless the application chose one.
        // Losing the race to another thread installing one is fine: there is one then.
        // rustls deprecates ring's provider (from 0.23.48) for its lack of post-quantum key
        // exchange; it is kept for its small build, and an application that wants
        // post-quantum key exchange installs aws-lc-rs's provider first (see `http_client`).
        if rustls::crypto::CryptoProvider::get_default().is_none() {
            #[allow(deprecated)]
            let provider = rustls::crypto::ring::default_provider();
            let _ = provider.install_default();
        }
    }
    // A 3xx is the operation's answer, handed back as it came: followed, the client would
    // return another request's answer (never a replay), resend the body and the key to
    // wherever `Location` points, and lose the key of an operation that ran when the
    // redirects went wrong.
    reqwest::Client::builder()
        .connect_timeout(connect_timeout)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(BuildError::Http)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_defaults_build() {
        let client = Client::builder().build().unwrap();
        assert_eq!(client.key_header, "idempotency-key");
        assert_eq!(client.policy.max_attempts, 5);
    }

    #[cfg(feature = "rustls")]
    #[test]
    fn with_rustls_the_client_builds_and_a_crypto_provider_is_installed() {
        let client = Client::builder().build().unwrap();
        assert!(client.tls);
        assert!(rustls::crypto::CryptoProvider::get_default().is_some());
    }

    #[test]
    fn each_bad_setting_is_refused_by_name() {
        let cases: [(ClientBuilder, &str); 6] = [
            (
                Client::builder().key_header("Idempotency Key"),
                "key header",
            ),
            (Client::builder().key_header(""), "key header"),
            (Client::builder().max_attempts(0), "max_attempts"),
            (Client::builder().timeout(Duration::ZERO), "timeout"),
            (Client::builder().max_elapsed(Duration::ZERO), "max_elapsed"),
            (
                Client::builder()
                    .initial_backoff(Duration::from_secs(10))
                    .max_backoff(Duration::from_secs(1)),
                "initial_backoff",
            ),
        ];
        for (builder, names) in cases {
            let err = builder.build().unwrap_err();
            assert!(err.to_string().contains(names), "{err}");
        }
    }
}
