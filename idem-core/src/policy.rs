//! What an endpoint promises: everything `#[idempotent(...)]` can say.
//!
//! A [`Policy`] is `Copy` and can be built in a `const`, so the attribute turns its arguments
//! into a static value checked at compile time.

use std::time::Duration;

use crate::canonical::{check_pointer, BodyForm, PointerError};
use crate::key::DEFAULT_KEY_MAX_LEN;
use crate::record::Response;
use crate::scope::Scope;
use crate::store::{Store, RECORD_OVERHEAD};

/// What to answer when a key comes back with a different request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum OnMismatch {
    /// 409 `idempotency_conflict` (the default, as Stripe does).
    Conflict,
    /// 422 `idempotency_conflict` (the IETF draft).
    Unprocessable,
    /// Replay the first response and ignore the new request.
    Replay,
}

/// What to answer while the first request with a key is still running.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum OnInFlight {
    /// 409 `idempotency_conflict` with `Retry-After` (the default).
    Conflict,
    /// Wait up to this long for the first to finish and replay its response; 409 after that.
    Wait(Duration),
}

/// Which responses are recorded and replayed. Others release the key so a retry runs again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum CachePolicy {
    /// Every final status but 5xx (the default), those from 600 to 999 included: 1xx, a
    /// protocol switch such as a WebSocket's, is not an answer to replay either, nor a status
    /// past 999, which is no HTTP status.
    Non5xx,
    /// 2xx only.
    Success,
}

impl CachePolicy {
    /// Whether a response with `status` is recorded. Never one outside 200 to 999 (an
    /// interim answer, a protocol switch, or no HTTP status at all).
    pub const fn caches(self, status: u16) -> bool {
        match self {
            CachePolicy::Non5xx => matches!(status, 200..=499 | 600..=999),
            CachePolicy::Success => status >= 200 && status < 300,
        }
    }
}

/// What to do when the store cannot be reached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum OnStoreError {
    /// 503 `idempotency_store_unavailable` with `Retry-After`; the handler does not run
    /// (the default).
    FailClosed,
    /// Run the handler without protection and log the store error, when the store cannot be
    /// reached, does not answer in time, or cannot answer for its data for now
    /// ([`StoreError::Unavailable`](crate::StoreError::Unavailable): starting, loading, a node
    /// that takes no writes in a failover). A store that answered fails closed all the same:
    /// with a refusal of its own ([`StoreError::Refused`](crate::StoreError::Refused): out of
    /// memory, wrong credentials, a table never migrated), a record it cannot read, a claim
    /// given up for concurrent claims of the key, or a Redis claim fewer replicas acknowledged
    /// than `wait_for_replicas` asks. A
    /// request waiting for a running one (`OnInFlight::Wait`) whose look at it fails gets 409:
    /// the key was held when the store last answered.
    FailOpen,
}

/// The body shape of the errors the layer returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorFormat {
    /// `{"error":{"code":"...","message":"..."},"request_id":"..."}`.
    Envelope,
    /// The same envelope naming the code `type`: `{"error":{"type":"...","message":"..."}}`.
    EnvelopeType,
    /// RFC 9457 `application/problem+json`.
    Problem,
}

/// Where a request's key is read from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum KeySource {
    /// The request header [`Policy::header`] names (the default).
    #[default]
    Header,
    /// The string (or number) a JSON Pointer (RFC 6901) names in the JSON body, for APIs and
    /// webhooks that carry their key there: `KeySource::Json("/event_id")`. Every request's
    /// body is then read (up to [`Policy::max_body`]) to find its key; a body that is not
    /// JSON gets 400 `idempotency_body_invalid`.
    Json(&'static str),
}

/// Which of a recorded response's headers its replays repeat, on top of those never
/// replayed (those of one transfer or one request, such as `Date`, `Content-Length` or
/// `X-Request-ID`; and `Set-Cookie`, which [`Policy::replay_set_cookie`] alone decides).
/// A recorded `Content-Encoding` is always repeated, whatever the list: the body's bytes are
/// in that coding, and could not be decoded without it. So is a `Content-Length` where it is
/// recorded, on a 304 and on an answer to HEAD, where it is not the transfer's framing but
/// the length of the content: of the representation the 304 stands for (RFC 9110, section
/// 8.6), of the body a HEAD is answered without.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum ReplayHeaders {
    /// Every recorded header (the default).
    #[default]
    All,
    /// Only these, by name in any case: name every header the replay needs,
    /// `Content-Type` included.
    Only(&'static [&'static str]),
    /// Every recorded header but these, by name in any case.
    Except(&'static [&'static str]),
}

impl ReplayHeaders {
    /// The headers no replay repeats, listed or not: those of one transfer or one request.
    /// [`Policy::check`] refuses them in a list, where they would do nothing.
    pub const NEVER: &'static [&'static str] = &[
        "Connection",
        "Content-Length",
        "Date",
        "Idempotent-Replayed",
        "Keep-Alive",
        "Proxy-Connection",
        "TE",
        "Trailer",
        "Transfer-Encoding",
        "Upgrade",
        "X-Request-ID",
    ];

    /// Whether a recorded header called `name` is replayed.
    pub fn replays(&self, name: &str) -> bool {
        if name.eq_ignore_ascii_case("content-encoding") {
            return true;
        }
        match self {
            ReplayHeaders::All => true,
            ReplayHeaders::Only(names) => names.iter().any(|n| n.eq_ignore_ascii_case(name)),
            ReplayHeaders::Except(names) => !names.iter().any(|n| n.eq_ignore_ascii_case(name)),
        }
    }

    /// The names listed.
    fn names(&self) -> &'static [&'static str] {
        match self {
            ReplayHeaders::All => &[],
            ReplayHeaders::Only(names) | ReplayHeaders::Except(names) => names,
        }
    }
}

/// An endpoint's idempotency settings. [`Policy::DEFAULT`] is the behaviour of
/// `#[idempotent]` with no arguments.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Policy {
    /// How long a completed response is replayed, from completion.
    pub ttl: Duration,
    /// Whose key it is.
    pub scope: Scope,
    /// The request header carrying the key.
    pub header: &'static str,
    /// The longest key accepted, in bytes after unquoting.
    pub key_max_len: usize,
    /// Whether a request without a key is refused with 400 `idempotency_key_missing`.
    pub required: bool,
    /// The answer to a key reused with a different request.
    pub on_mismatch: OnMismatch,
    /// The answer while the first request is running.
    pub on_in_flight: OnInFlight,
    /// Which responses are recorded.
    pub cache: CachePolicy,
    /// Whether keys are per endpoint (method and route) rather than per scope. The
    /// attribute's route is the pattern it is routed by; the `Idempotency` middleware's is the
    /// request's path, as it may run before the request is routed.
    pub per_endpoint: bool,
    /// The name an endpoint's keys are kept under where keys are per endpoint, in place of
    /// its method and route: a route whose pattern changes while its paths stay (a parameter
    /// renamed, `{id}` to `{call_id}`, or given a pattern, `{id:\d+}`; the attribute replaced
    /// by the middleware, which keys by path) keeps its keys, so that a retry across the
    /// deploy replays instead of running again. Endpoints of one name share their keys: the
    /// same key on another of them is a mismatch (the request's method and path are part of
    /// its fingerprint), never a second run. Named as a route was (`"POST /v1/calls/{id}"`,
    /// the attribute's method and pattern), an endpoint keeps the keys it had under that
    /// route. A name spelled as another endpoint's method and route (or, under the
    /// middleware, method and path) shares that endpoint's keys: give such a name only to the
    /// endpoint that route was. Only with [`per_endpoint`](Self::per_endpoint) (overrides that name an endpoint turn
    /// it on); `None` by default, and never in the application's defaults, where it would
    /// name every endpoint alike.
    pub endpoint_name: Option<&'static str>,
    /// How long a claim holds without being extended; a running handler extends it.
    pub lease: Duration,
    /// The answer when the store is unreachable.
    pub on_store_error: OnStoreError,
    /// The largest request body accepted with a key, in bytes.
    pub max_body: usize,
    /// The largest response kept for replay, in bytes (body, and header names and values
    /// with 6 bytes for each header). A
    /// larger one is still sent, and recorded as completed without its body: retries get 409
    /// `idempotency_response_too_large` and never run the operation again.
    pub max_response: usize,
    /// The error body shape for this endpoint; `None` uses the application's renderer.
    pub error_format: Option<ErrorFormat>,
    /// Whether `Set-Cookie` headers are recorded and replayed. Off by default: a replay goes to
    /// whoever holds the key, and a cookie (a session, a CSRF token) is meant for the client
    /// the first response went to.
    pub replay_set_cookie: bool,
    /// How a request's body (and query) is compared with the first request of its key.
    pub fingerprint: BodyForm,
    /// JSON Pointers (RFC 6901) to members left out of the fingerprint, such as a client's
    /// timestamp; with [`BodyForm::Json`] only.
    pub fingerprint_ignore: &'static [&'static str],
    /// Request headers that are part of the fingerprint, by name: a retry must send them
    /// with the same values.
    pub fingerprint_headers: &'static [&'static str],
    /// Which recorded headers a replay repeats.
    pub replay_headers: ReplayHeaders,
    /// Where the key is read from.
    pub key_source: KeySource,
}

impl Default for Policy {
    fn default() -> Self {
        Self::DEFAULT
    }
}

impl Policy {
    /// 24 h TTL, scope per API key, `Idempotency-Key` of up to 255 bytes, optional, 409 on
    /// mismatch and while in flight, every status but 5xx recorded, 60 s lease, fail closed,
    /// request bodies up to 2 MiB, responses kept up to 1 MiB, `Set-Cookie` not kept, bodies
    /// compared byte for byte and no header in the fingerprint, every other recorded header
    /// replayed, the key from its header.
    pub const DEFAULT: Policy = Policy {
        ttl: Duration::from_secs(24 * 60 * 60),
        scope: Scope::ApiKey,
        header: "Idempotency-Key",
        key_max_len: DEFAULT_KEY_MAX_LEN,
        required: false,
        on_mismatch: OnMismatch::Conflict,
        on_in_flight: OnInFlight::Conflict,
        cache: CachePolicy::Non5xx,
        per_endpoint: false,
        endpoint_name: None,
        lease: Duration::from_secs(60),
        on_store_error: OnStoreError::FailClosed,
        max_body: 2 * 1024 * 1024,
        max_response: 1024 * 1024,
        error_format: None,
        replay_set_cookie: false,
        fingerprint: BodyForm::Bytes,
        fingerprint_ignore: &[],
        fingerprint_headers: &[],
        replay_headers: ReplayHeaders::All,
        key_source: KeySource::Header,
    };
}

impl Policy {
    /// The shortest lease: a running request renews its claim every third of its lease, a store
    /// round trip each, and a shorter lease could lapse between renewals and let a duplicate
    /// run. [`Policy::check`] refuses a shorter one, and the engine holds it for this long.
    pub const MIN_LEASE: Duration = Duration::from_millis(100);

    /// The shortest TTL, a second: a record kept for less serves no retry (a client retries
    /// after a timeout, seconds later), and a duplicate that waits for the first request
    /// (`OnInFlight::Wait`, which looks at the store every 20 ms) could find its record lapsed
    /// and run the operation again. [`Policy::check`] refuses a shorter one, as the attribute
    /// does, and the engine keeps a record this long at least.
    pub const MIN_TTL: Duration = Duration::from_secs(1);

    /// Headers that are never a key's: clients send them for another purpose (a credential, a
    /// cookie, the body's type or size, the connection, the client, a condition or a range), the
    /// same value on many requests. [`Policy::check`] refuses keys read from one, as the
    /// attribute does.
    pub const NOT_KEYS: &'static [&'static str] = &[
        "Accept",
        "Accept-Encoding",
        "Accept-Language",
        "Authorization",
        "Cache-Control",
        "Connection",
        "Content-Encoding",
        "Content-Language",
        "Content-Length",
        "Content-Type",
        "Cookie",
        "Date",
        "Expect",
        "Forwarded",
        "Host",
        "If-Match",
        "If-Modified-Since",
        "If-None-Match",
        "If-Range",
        "If-Unmodified-Since",
        "Keep-Alive",
        "Origin",
        "Pragma",
        "Proxy-Authorization",
        "Proxy-Connection",
        "Range",
        "Referer",
        "TE",
        "Trailer",
        "Transfer-Encoding",
        "Upgrade",
        "User-Agent",
        "Via",
        "X-API-Key",
        "X-Forwarded-For",
        "X-Forwarded-Host",
        "X-Forwarded-Proto",
    ];

    /// Checks that this policy's settings agree with each other, and ask nothing of `store`
    /// that it cannot do.
    ///
    /// # Errors
    /// [`PolicyError::InvalidHeader`] when the key's header, the header a
    /// [`Scope::Header`] reads, or a header listed in `fingerprint_headers` or
    /// `replay_headers`, is not a valid header name;
    /// [`PolicyError::SetCookieListed`] when `replay_headers` lists `Set-Cookie`;
    /// [`PolicyError::CodingDropped`] when `replay_headers` drops `Content-Encoding`;
    /// [`PolicyError::LeaseTooShort`] when the lease is shorter than [`Policy::MIN_LEASE`];
    /// [`PolicyError::TtlTooShort`] when the TTL is shorter than [`Policy::MIN_TTL`];
    /// [`PolicyError::KeyMaxLenZero`] when `key_max_len` is 0, which no key fits;
    /// [`PolicyError::MaxBodyZero`] when `max_body` is 0, which no body fits;
    /// [`PolicyError::EndpointNameEmpty`] when `endpoint_name` is empty, and
    /// [`PolicyError::EndpointNameUnused`] when it is given with keys not per endpoint;
    /// [`PolicyError::WaitTooShort`] when [`OnInFlight::Wait`] waits under a millisecond;
    /// [`PolicyError::ScopeIsKey`] when a [`Scope::Header`] reads the key's own header;
    /// [`PolicyError::KeyIsCredential`] when the key's header is one the scope reads the
    /// caller's credential from; [`PolicyError::InvalidPointer`] when a pointer of `fingerprint_ignore` or
    /// `key_source` is not a JSON Pointer; [`PolicyError::IgnoreWithoutJson`] when members
    /// are ignored in a body not compared as JSON; [`PolicyError::JsonKeyInForm`] when the
    /// key is read from a JSON body the endpoint reads as a form;
    /// [`PolicyError::StoreTooSmall`] when the store cannot keep even a record without its
    /// response, whatever `max_response`, so that it could never record a request; and
    /// [`PolicyError::ResponseLargerThanStore`] when responses of up to `max_response` bytes
    /// are to be kept but the store refuses records that large: they would be kept without
    /// their bodies, so that retries get 409 `idempotency_response_too_large` instead of a
    /// replay.
    pub fn check(&self, store: &dyn Store) -> Result<(), PolicyError> {
        self.check_settings()?;
        keeps_records(store)?;
        // A response of `max_response` bytes (its headers' framing counted in them) holds them
        // and 8 bytes besides: status, body offset and header count.
        let framing = Response::new(0, [], b"").held_bytes();
        match store.max_record_bytes() {
            Some(store_max) if self.max_response.saturating_add(framing) > store_max => {
                Err(PolicyError::ResponseLargerThanStore {
                    max_response: self.max_response,
                    store_max,
                })
            }
            _ => Ok(()),
        }
    }
}

/// Checks that `store` keeps records at all: one without its response (what the engine
/// writes for a request whose response it cannot keep) is the least any record holds.
///
/// # Errors
/// [`PolicyError::StoreTooSmall`].
pub(crate) fn keeps_records(store: &dyn Store) -> Result<(), PolicyError> {
    let smallest = Response::omitted(0, 0).held_bytes();
    match store.max_record_bytes() {
        Some(store_max) if store_max < smallest => Err(PolicyError::StoreTooSmall {
            store_max,
            smallest,
            moka_min_bytes: RECORD_OVERHEAD + smallest,
        }),
        _ => Ok(()),
    }
}

impl Policy {
    /// Checks that the scope is not read from the header the key is read from: every key
    /// would be its own scope, or, for a scope read from the caller's credential
    /// ([`Scope::ApiKey`]: `Authorization`, `X-API-Key`; [`Scope::BasicAuthUser`]:
    /// `Authorization`), every request with that credential would carry one key.
    ///
    /// # Errors
    /// [`PolicyError::ScopeIsKey`], [`PolicyError::KeyIsCredential`].
    pub fn check_scope_header(&self) -> Result<(), PolicyError> {
        if !matches!(self.key_source, KeySource::Header) {
            return Ok(());
        }
        match self.scope {
            _ if !self.scope.reads(self.header) => Ok(()),
            Scope::Header(_) => Err(PolicyError::ScopeIsKey(self.header)),
            _ => Err(PolicyError::KeyIsCredential(self.header)),
        }
    }

    /// Refuses, for a policy that is one level of settings (an application's defaults), the
    /// settings of the fingerprint it gives while it answers mismatches with the first
    /// response ([`OnMismatch::Replay`]), which never reads them: they would change no
    /// answer. Not a rule of [`Policy::check`]: across levels they are no mistake, as an
    /// endpoint that replays mismatches may be served under defaults that list fingerprint
    /// headers. [`Overrides::check`] applies it to an endpoint's own settings.
    ///
    /// # Errors
    /// [`PolicyError::UnreadUnderReplay`] naming the first such setting.
    pub fn check_fingerprint_read(&self) -> Result<(), PolicyError> {
        if self.on_mismatch != OnMismatch::Replay {
            return Ok(());
        }
        if !self.fingerprint_headers.is_empty() {
            return Err(PolicyError::UnreadUnderReplay("fingerprint_headers"));
        }
        if !self.fingerprint_ignore.is_empty() {
            return Err(PolicyError::UnreadUnderReplay("fingerprint_ignore"));
        }
        Ok(())
    }

    /// The checks of [`Policy::check`] that need no store: those of its settings with one
    /// another, for a policy no store is known for yet (an OpenAPI contract's).
    ///
    /// # Errors
    /// [`Policy::check`]'s, but [`PolicyError::StoreTooSmall`] and
    /// [`PolicyError::ResponseLargerThanStore`].
    pub fn check_settings(&self) -> Result<(), PolicyError> {
        self.check_settings_with(true)
    }

    /// [`Policy::check_settings`], judging a scope header against the key's header only when
    /// `key_header_known`: the overrides' check leaves that to the defaults' key header when
    /// they do not name one.
    fn check_settings_with(&self, key_header_known: bool) -> Result<(), PolicyError> {
        let scope = match self.scope {
            Scope::Header(name) => Some(name),
            _ => None,
        };
        let headers = [self.header].into_iter().chain(scope);
        let listed = self
            .fingerprint_headers
            .iter()
            .chain(self.replay_headers.names());
        if let Some(bad) = headers.chain(listed.copied()).find(|h| !is_token(h)) {
            return Err(PolicyError::InvalidHeader(bad));
        }
        if self
            .replay_headers
            .names()
            .iter()
            .any(|h| h.eq_ignore_ascii_case("set-cookie"))
        {
            return Err(PolicyError::SetCookieListed);
        }
        if let Some(never) = per_request(self.replay_headers.names()) {
            return Err(PolicyError::NeverReplayedListed(never));
        }
        if let Some(listed) = per_request(self.fingerprint_headers) {
            return Err(PolicyError::PerRequestFingerprinted(listed));
        }
        if let Some(header) = scope.and_then(|name| per_request(&[name])) {
            return Err(PolicyError::PerRequestScope(header));
        }
        if self.lease < Self::MIN_LEASE {
            return Err(PolicyError::LeaseTooShort { lease: self.lease });
        }
        if self.ttl < Self::MIN_TTL {
            return Err(PolicyError::TtlTooShort { ttl: self.ttl });
        }
        if self.key_max_len == 0 {
            return Err(PolicyError::KeyMaxLenZero);
        }
        if self.max_body == 0 {
            return Err(PolicyError::MaxBodyZero);
        }
        match self.endpoint_name {
            Some("") => return Err(PolicyError::EndpointNameEmpty),
            Some(name) if !self.per_endpoint => return Err(PolicyError::EndpointNameUnused(name)),
            _ => {}
        }
        if let OnInFlight::Wait(wait) = self.on_in_flight {
            // The attribute's shortest `wait_timeout`, as its shortest duration of any kind.
            if wait < Duration::from_millis(1) {
                return Err(PolicyError::WaitTooShort { wait });
            }
        }
        if key_header_known {
            self.check_scope_header()?;
        }
        if matches!(self.key_source, KeySource::Header)
            && Self::NOT_KEYS
                .iter()
                .any(|h| h.eq_ignore_ascii_case(self.header))
        {
            return Err(PolicyError::KeyHeaderNotKey(self.header));
        }
        if let ReplayHeaders::Except(names) = self.replay_headers {
            if names
                .iter()
                .any(|h| h.eq_ignore_ascii_case("content-encoding"))
            {
                return Err(PolicyError::CodingDropped);
            }
        }
        let key = match self.key_source {
            KeySource::Json(pointer) => Some(pointer),
            KeySource::Header => None,
        };
        for &pointer in self.fingerprint_ignore.iter().chain(&key) {
            check_pointer(pointer)
                .map_err(|reason| PolicyError::InvalidPointer { pointer, reason })?;
        }
        if !self.fingerprint_ignore.is_empty() && self.fingerprint != BodyForm::Json {
            return Err(PolicyError::IgnoreWithoutJson);
        }
        if key.is_some() && self.fingerprint == BodyForm::Form {
            return Err(PolicyError::JsonKeyInForm);
        }
        Ok(())
    }
}

/// Whether `name` is an HTTP header name (an RFC 9110 token).
fn is_token(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// The first of `names` that describes one transfer or one request (one of
/// [`ReplayHeaders::NEVER`]): never replayed, and different between a request and its retry.
fn per_request(names: &[&'static str]) -> Option<&'static str> {
    names.iter().copied().find(|name| {
        ReplayHeaders::NEVER
            .iter()
            .any(|never| never.eq_ignore_ascii_case(name))
    })
}

/// Settings that contradict each other, refused when an application is configured.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PolicyError {
    /// The key's header, the scope's, or a listed one is not a valid header name.
    #[error("\"{0}\" is not a valid header name; use letters, digits and `-`, such as \"X-Idempotency-Key\"")]
    InvalidHeader(&'static str),
    /// `replay_headers` lists `Set-Cookie`, which `replay_set_cookie` alone governs.
    #[error("replay_headers lists Set-Cookie, which is replayed only with replay_set_cookie; remove it from the list")]
    SetCookieListed,
    /// `replay_headers` drops `Content-Encoding`, which a replay always repeats.
    #[error("replay_headers drops Content-Encoding, which a replay always repeats: a recorded body is in its coding; remove it from the list")]
    CodingDropped,
    /// The lease is shorter than [`Policy::MIN_LEASE`].
    #[error("a lease of {lease:?} is shorter than 100ms: a running request renews its claim every third of its lease, and a shorter one could lapse between renewals and let a duplicate run")]
    LeaseTooShort {
        /// The lease.
        lease: Duration,
    },
    /// The TTL is shorter than [`Policy::MIN_TTL`].
    #[error("a TTL of {ttl:?} is under a second, which serves no retry (and a duplicate waiting for the first request could find its record gone and run again); give the time a retry may come in, such as 24h")]
    TtlTooShort {
        /// The TTL.
        ttl: Duration,
    },
    /// The scope is read from the key's own header: every key would be its own scope.
    #[error("the scope is read from {0}, the key's own header, so that every key is its own scope and any caller who sends a key reaches its record; scope keys by who sends them (such as Scope::ApiKey), or use Scope::Global if callers share keys")]
    ScopeIsKey(&'static str),
    /// The key is read from a header the scope reads the caller's credential from: every
    /// request with that credential would carry the same key.
    #[error("the key is read from {0}, the header the scope reads the caller's credential from, so that every request with that credential would carry the same key (and one whose credential holds a space, as `Bearer <token>` does, would be refused); read keys from a header of their own, such as Idempotency-Key")]
    KeyIsCredential(&'static str),
    /// The key is read from a header clients send for another purpose than a key (a
    /// credential, a cookie, a description of the request or of the connection): requests
    /// that carry the same value would share one key.
    #[error("the key is read from {0}, which clients send for another purpose (a credential, a cookie, or a description of the request), so that every request carrying the same value would share one key; read keys from a header of their own, such as Idempotency-Key")]
    KeyHeaderNotKey(&'static str),
    /// The longest key is 0 bytes: every key would be refused.
    #[error("key_max_len is 0, so every key would be refused with 400 idempotency_key_invalid; give the longest key clients send, such as 255")]
    KeyMaxLenZero,
    /// An endpoint's name is empty.
    #[error("endpoint_name is empty; name the endpoint as its keys should be known across deploys, such as \"calls.create\"")]
    EndpointNameEmpty,
    /// An endpoint is named, but its keys are not per endpoint, so the name is never read.
    #[error("endpoint_name is \"{0}\", but keys are not per endpoint, so the name is never read; turn per_endpoint on, or remove the name")]
    EndpointNameUnused(&'static str),
    /// The application's defaults name an endpoint, which every endpoint would share.
    #[error("the application's defaults name an endpoint, \"{0}\", which every endpoint would share, so that a key is one operation across them all, as without per_endpoint; name each endpoint on its own, as the attribute's per_endpoint = \"{0}\" does")]
    EndpointNameInDefaults(&'static str),
    /// The largest keyed body is 0 bytes: every keyed request with a body would be refused.
    #[error("max_body is 0, so every keyed request with a body would be refused with 413 idempotency_body_too_large; give the largest body clients send, such as 2 MiB")]
    MaxBodyZero,
    /// `OnInFlight::Wait` waits under a millisecond: for nothing.
    #[error("OnInFlight::Wait({wait:?}) waits under a millisecond, so a duplicate gets 409 at once, as under OnInFlight::Conflict; give the time a request may take, such as 30s, or use OnInFlight::Conflict")]
    WaitTooShort {
        /// The wait.
        wait: Duration,
    },
    /// The key's header is named, but the key is read elsewhere.
    #[error("the key's header is named {0}, but the key is read from the JSON body or with a key function, so the header is never read; remove the header, or read the key from it")]
    HeaderUnread(&'static str),
    /// The application's defaults scope keys globally, sharing them between callers on every
    /// endpoint that names no scope of its own.
    #[error("the application's defaults scope keys globally (Scope::Global), so that every endpoint without a scope of its own would share keys between all its callers, unseen where the endpoint is written; keep a per-caller scope in the defaults, and write scope = \"global\" (Scope::Global in a middleware's overrides) on each endpoint whose callers share keys")]
    GlobalScopeInDefaults,
    /// Mismatches are answered with the first response, so a setting of the fingerprint
    /// given with it would change no answer.
    #[error("mismatches are answered with the first response (OnMismatch::Replay), whatever the request, so {0} would change no answer; remove {0}, or answer mismatches with OnMismatch::Conflict (409) or OnMismatch::Unprocessable (422)")]
    UnreadUnderReplay(&'static str),
    /// A function of the middleware decides what one of its overrides sets too, which it
    /// would replace unseen.
    #[error("{function} decides {what} its own way, so the overrides' {setting} would be ignored; keep one of the two")]
    FunctionOverridesSetting {
        /// The function (`with_key_fn`, `with_scope_fn`, `with_fingerprint_fn`).
        function: &'static str,
        /// What it decides.
        what: &'static str,
        /// The override it would replace.
        setting: &'static str,
    },
    /// `replay_headers` lists a header no replay repeats (one of [`ReplayHeaders::NEVER`]).
    #[error("replay_headers lists {0}, which describes one transfer or one request and is never replayed, listed or not; remove it from the list")]
    NeverReplayedListed(&'static str),
    /// `fingerprint_headers` lists a header of one transfer or one request (one of
    /// [`ReplayHeaders::NEVER`]), which differs between a request and its retry.
    #[error("fingerprint_headers lists {0}, which describes one transfer or one request and differs between a request and its retry, so that every retry would be a mismatch; remove it from the list")]
    PerRequestFingerprinted(&'static str),
    /// Keys are scoped by a header of one transfer or one request (one of
    /// [`ReplayHeaders::NEVER`]), which differs between a request and its retry.
    #[error("keys are scoped by {0}, which describes one transfer or one request and differs between a request and its retry, so that each retry would be in a scope of its own and run again; scope keys by a header that names their owner, such as Scope::Header(\"X-Tenant-Id\")")]
    PerRequestScope(&'static str),
    /// A JSON Pointer is not one.
    #[error("\"{pointer}\" is not a JSON Pointer: {reason}")]
    InvalidPointer {
        /// The pointer.
        pointer: &'static str,
        /// The rule it breaks.
        reason: PointerError,
    },
    /// Members of a body are ignored, but the body is not compared as JSON.
    #[error("fingerprint_ignore leaves members of a JSON body out, but bodies are not compared as JSON; set the fingerprint to BodyForm::Json, or ignore nothing")]
    IgnoreWithoutJson,
    /// The key is read from a JSON body, but bodies are read as forms.
    #[error("the key is read from a JSON body, but the fingerprint reads bodies as forms; read bodies as JSON, or take the key from a header")]
    JsonKeyInForm,
    /// The store cannot keep even a record without its response (the least the engine writes
    /// for a request that ran), so it could never record one.
    #[error("the store keeps records of at most {store_max} bytes, fewer than the {smallest} of a record kept without its response, so it could never record a request and every retry would run again; raise the store's limit (for MokaStore, max_bytes to at least {moka_min_bytes})")]
    StoreTooSmall {
        /// The store's [`Store::max_record_bytes`].
        store_max: usize,
        /// What a record without its response holds, in the same bytes.
        smallest: usize,
        /// The least [`MokaStoreBuilder::max_bytes`](crate::store::MokaStoreBuilder::max_bytes)
        /// that keeps such a record.
        moka_min_bytes: usize,
    },
    /// Responses are kept up to a size the store does not take.
    #[error("max_response is {max_response} bytes, but the store keeps responses of at most {store_max} bytes with their framing (8 bytes); lower max_response or raise the store's limit")]
    ResponseLargerThanStore {
        /// The policy's `max_response`.
        max_response: usize,
        /// The store's [`Store::max_record_bytes`].
        store_max: usize,
    },
    /// The application's handlers take a transaction (`idem_actix::Transaction`), but its
    /// store lends none.
    #[error("the app's handlers take a Transaction, but its idempotency store lends none; build the IdempotencyConfig with IdempotencyConfig::new on a PostgresStore (a store given to from_shared, or wrapped in another store, lends none)")]
    NoTransactions,
}

/// Settings one endpoint (or one middleware) overrides on top of the application's
/// [`Policy`]; the rest come from it. Built in a `const` by `#[idempotent(...)]`.
///
/// Precedence: the endpoint's overrides, then the application's defaults
/// (`IdempotencyConfig::with_defaults` in `idem-actix`), then [`Policy::DEFAULT`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Overrides {
    /// Overrides [`Policy::ttl`].
    pub ttl: Option<Duration>,
    /// Overrides [`Policy::scope`].
    pub scope: Option<Scope>,
    /// Overrides [`Policy::header`].
    pub header: Option<&'static str>,
    /// Overrides [`Policy::key_max_len`].
    pub key_max_len: Option<usize>,
    /// Overrides [`Policy::required`].
    pub required: Option<bool>,
    /// Overrides [`Policy::on_mismatch`].
    pub on_mismatch: Option<OnMismatch>,
    /// Overrides [`Policy::on_in_flight`].
    pub on_in_flight: Option<OnInFlight>,
    /// Overrides [`Policy::cache`].
    pub cache: Option<CachePolicy>,
    /// Overrides [`Policy::per_endpoint`].
    pub per_endpoint: Option<bool>,
    /// Overrides [`Policy::endpoint_name`].
    pub endpoint_name: Option<&'static str>,
    /// Overrides [`Policy::lease`].
    pub lease: Option<Duration>,
    /// Overrides [`Policy::on_store_error`].
    pub on_store_error: Option<OnStoreError>,
    /// Overrides [`Policy::max_body`].
    pub max_body: Option<usize>,
    /// Overrides [`Policy::max_response`].
    pub max_response: Option<usize>,
    /// Overrides [`Policy::error_format`].
    pub error_format: Option<ErrorFormat>,
    /// Overrides [`Policy::replay_set_cookie`].
    pub replay_set_cookie: Option<bool>,
    /// Overrides [`Policy::fingerprint`].
    pub fingerprint: Option<BodyForm>,
    /// Overrides [`Policy::fingerprint_ignore`].
    pub fingerprint_ignore: Option<&'static [&'static str]>,
    /// Overrides [`Policy::fingerprint_headers`].
    pub fingerprint_headers: Option<&'static [&'static str]>,
    /// Overrides [`Policy::replay_headers`].
    pub replay_headers: Option<ReplayHeaders>,
    /// Overrides [`Policy::key_source`].
    pub key_source: Option<KeySource>,
    /// Where [`on_in_flight`](Self::on_in_flight) waits: whether the base policy's bound
    /// stands where the base waits too, the bound given there applying only where the base
    /// answers 409. Set by [`wait_in_flight`](Self::wait_in_flight), cleared by
    /// [`on_in_flight`](Self::on_in_flight).
    wait_as_base: bool,
}

impl Overrides {
    /// How long [`wait_in_flight`](Self::wait_in_flight) waits where the base policy does not
    /// wait: 10 s.
    pub const DEFAULT_WAIT: Duration = Duration::from_secs(10);

    /// Waits for a running request with the same key and replays its answer
    /// ([`OnInFlight::Wait`]), for as long as the base policy waits (the application's
    /// defaults), or [`DEFAULT_WAIT`](Self::DEFAULT_WAIT) where the base answers 409:
    /// `#[idempotent(in_flight = "wait")]` without `wait_timeout`. A later
    /// [`on_in_flight`](Self::on_in_flight) call replaces it (a write to the field does not:
    /// its bound then applies only where the base answers 409).
    #[must_use]
    pub const fn wait_in_flight(mut self) -> Self {
        self.on_in_flight = Some(OnInFlight::Wait(Self::DEFAULT_WAIT));
        self.wait_as_base = true;
        self
    }

    /// Checks the settings these overrides give that no application's defaults could make
    /// right: each of [`Policy::check`]'s rules on what they set themselves (a lease, a TTL,
    /// a longest key, header names, pointers), and its rules on settings that must agree
    /// when they set both; and that they do not name the key's header while reading the key
    /// from the JSON body ([`PolicyError::HeaderUnread`]), nor give fingerprint headers or
    /// members ignored beside [`OnMismatch::Replay`] ([`PolicyError::UnreadUnderReplay`]),
    /// which the attribute refuses too.
    /// What the defaults may make right (members ignored, or a key read from JSON bodies,
    /// where the defaults compare bodies as JSON; a scope read from a header, where the
    /// defaults' key header is another) is left to the check of the policy they make
    /// together.
    ///
    /// # Errors
    /// The [`PolicyError`] of the first rule broken, as [`Policy::check`] names it.
    pub fn check(&self) -> Result<(), PolicyError> {
        // A base that breaks no rule with anything the overrides may set: bodies compared
        // as JSON, which both members ignored and a key read from JSON bodies agree with.
        let mut base = Policy::DEFAULT;
        if self.fingerprint.is_none() {
            base.fingerprint = BodyForm::Json;
        }
        // And a scope that reads no header: the application's scope, which a key header of
        // the overrides is judged with where they name none, is not known here.
        if self.scope.is_none() {
            base.scope = Scope::Global;
        }
        // The key's header is the defaults' unless the overrides name it, and they may name
        // another than `Policy::DEFAULT`'s: a scope read from it is judged with them.
        let policy = self.apply_to(base);
        policy.check_settings_with(self.header.is_some())?;
        // Only overrides tell a header named on purpose from the one every policy has.
        if let (Some(header), Some(KeySource::Json(_))) = (self.header, self.key_source) {
            return Err(PolicyError::HeaderUnread(header));
        }
        // The base replays no mismatch and gives no fingerprint headers or members ignored:
        // what this finds is the overrides' own.
        policy.check_fingerprint_read()
    }
}

/// One list of the policy's fields makes both `Policy`'s setters and `Overrides`, so that the
/// two cannot drift apart.
macro_rules! policy_fields {
    ($($name:ident: $ty:ty),* $(,)?) => {
        impl Policy {
            $(
                #[doc = concat!("Sets [`Policy::", stringify!($name), "`].")]
                #[must_use]
                pub const fn $name(mut self, $name: $ty) -> Self {
                    self.$name = policy_fields!(@wrap $name $name);
                    self
                }
            )*
        }

        impl Overrides {
            /// Nothing overridden.
            pub const NONE: Overrides = Overrides { $($name: None,)* wait_as_base: false };

            $(
                #[doc = concat!("Overrides [`Policy::", stringify!($name), "`].")]
                #[must_use]
                pub const fn $name(mut self, $name: $ty) -> Self {
                    self.$name = Some($name);
                    policy_fields!(@set self $name);
                    self
                }
            )*

            /// `base` with these overrides applied. Bodies compared otherwise than as JSON
            /// leave behind the members `base` ignores in JSON bodies, unless these overrides
            /// name their own, as the attribute's `fingerprint` does; a wait without a
            /// bound ([`wait_in_flight`](Overrides::wait_in_flight)) keeps `base`'s where
            /// `base` waits; a key [`header`](Overrides::header) named without a
            /// [`key_source`](Overrides::key_source) reads the key from that header, where
            /// `base` reads it from bodies; and an
            /// [`endpoint_name`](Overrides::endpoint_name) given without
            /// [`per_endpoint`](Overrides::per_endpoint) makes keys per endpoint, where `base`
            /// keeps them per scope.
            pub fn apply_to(&self, mut base: Policy) -> Policy {
                let base_wait = match base.on_in_flight {
                    OnInFlight::Wait(bound) => Some(bound),
                    OnInFlight::Conflict => None,
                };
                $(
                    if let Some(value) = self.$name {
                        base.$name = policy_fields!(@wrap $name value);
                    }
                )*
                if let (true, Some(OnInFlight::Wait(_)), Some(bound)) =
                    (self.wait_as_base, self.on_in_flight, base_wait)
                {
                    base.on_in_flight = OnInFlight::Wait(bound);
                }
                if let (Some(form), None) = (self.fingerprint, self.fingerprint_ignore) {
                    if form != BodyForm::Json {
                        base.fingerprint_ignore = &[];
                    }
                }
                // A key header named without a key source is where the key is read: over
                // defaults that read keys from bodies, naming it could mean nothing else, and
                // left unread it protected nothing.
                if let (Some(_), None) = (self.header, self.key_source) {
                    base.key_source = KeySource::Header;
                }
                // So is an endpoint's name, given without `per_endpoint`: its keys are per
                // endpoint, under the name, whatever the defaults say.
                if let (Some(_), None) = (self.endpoint_name, self.per_endpoint) {
                    base.per_endpoint = true;
                }
                base
            }
        }
    };
    // An answer to a running duplicate given whole, bound included.
    (@set $self:ident on_in_flight) => { $self.wait_as_base = false; };
    (@set $self:ident $name:ident) => {};
    // The error format is optional in a policy: unset, the application's renderer applies.
    (@wrap error_format $value:ident) => { Some($value) };
    // So is an endpoint's name: unnamed, an endpoint is known by its method and route.
    (@wrap endpoint_name $value:ident) => { Some($value) };
    (@wrap $name:ident $value:ident) => { $value };
}

policy_fields! {
    ttl: Duration,
    scope: Scope,
    header: &'static str,
    key_max_len: usize,
    required: bool,
    on_mismatch: OnMismatch,
    on_in_flight: OnInFlight,
    cache: CachePolicy,
    per_endpoint: bool,
    endpoint_name: &'static str,
    lease: Duration,
    on_store_error: OnStoreError,
    max_body: usize,
    max_response: usize,
    error_format: ErrorFormat,
    replay_set_cookie: bool,
    fingerprint: BodyForm,
    fingerprint_ignore: &'static [&'static str],
    fingerprint_headers: &'static [&'static str],
    replay_headers: ReplayHeaders,
    key_source: KeySource,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_policies_split_statuses() {
        assert!(CachePolicy::Non5xx.caches(201) && CachePolicy::Non5xx.caches(409));
        assert!(!CachePolicy::Non5xx.caches(500) && !CachePolicy::Non5xx.caches(503));
        assert!(CachePolicy::Success.caches(200) && CachePolicy::Success.caches(299));
        assert!(!CachePolicy::Success.caches(400) && !CachePolicy::Success.caches(302));
    }

    /// The statuses past 599 that actix lets a handler answer (600 to 999, outside HTTP's
    /// classes) are not 5xx: the operation ran, and released, its key let a retry run it again.
    #[test]
    fn statuses_past_5xx_are_recorded_by_default() {
        assert!(CachePolicy::Non5xx.caches(600) && CachePolicy::Non5xx.caches(999));
        assert!(!CachePolicy::Success.caches(600));
    }

    /// A status past 999 is no HTTP status (idem-core's `Response` takes any `u16`; actix's
    /// statuses stop at 999): the Redis and Postgres stores read such a record as corrupt, so
    /// that, recorded, every retry for the key's time to live was answered 503. It is never
    /// recorded, as a status under 200 is not.
    #[test]
    fn a_status_past_999_is_never_recorded() {
        for status in [1000, 4242, u16::MAX] {
            assert!(!CachePolicy::Non5xx.caches(status), "{status}");
            assert!(!CachePolicy::Success.caches(status), "{status}");
        }
    }

    /// A protocol switch (101, a WebSocket's handshake) is the start of a connection of
    /// another protocol, not an answer a retry can be given: replayed, it came without its
    /// `Upgrade` and with the frames the server sent as its body.
    #[test]
    fn a_protocol_switch_is_never_recorded() {
        assert!(!CachePolicy::Non5xx.caches(101) && !CachePolicy::Success.caches(101));
    }

    /// `wait_in_flight` waits as long as a base that waits, the built-in bound otherwise; a
    /// bound given by `on_in_flight` is the endpoint's own.
    #[test]
    fn waiting_without_a_bound_keeps_the_base_s_bound() {
        let waits = Policy::DEFAULT.on_in_flight(OnInFlight::Wait(Duration::from_secs(60)));
        let endpoint = Overrides::NONE.wait_in_flight();
        assert_eq!(
            endpoint.apply_to(waits).on_in_flight,
            OnInFlight::Wait(Duration::from_secs(60))
        );
        assert_eq!(
            endpoint.apply_to(Policy::DEFAULT).on_in_flight,
            OnInFlight::Wait(Overrides::DEFAULT_WAIT)
        );
        let own = Overrides::NONE.on_in_flight(OnInFlight::Wait(Duration::from_secs(5)));
        assert_eq!(
            own.apply_to(waits).on_in_flight,
            OnInFlight::Wait(Duration::from_secs(5))
        );
        let conflict = Overrides::NONE.on_in_flight(OnInFlight::Conflict);
        assert_eq!(conflict.apply_to(waits).on_in_flight, OnInFlight::Conflict);
        // The later setting wins, whole.
        let replaced = endpoint.on_in_flight(OnInFlight::Wait(Duration::from_secs(5)));
        assert_eq!(
            replaced.apply_to(waits).on_in_flight,
            OnInFlight::Wait(Duration::from_secs(5))
        );
    }

    #[test]
    fn overrides_win_over_the_base_and_leave_the_rest() {
        const APP: Policy = Policy::DEFAULT
            .ttl(Duration::from_secs(3600))
            .header("X-Idempotency-Key");
        const ENDPOINT: Overrides = Overrides::NONE
            .ttl(Duration::from_secs(60))
            .error_format(ErrorFormat::Problem);
        let merged = ENDPOINT.apply_to(APP);
        assert_eq!(merged.ttl, Duration::from_secs(60));
        assert_eq!(merged.header, "X-Idempotency-Key");
        assert_eq!(merged.error_format, Some(ErrorFormat::Problem));
        assert_eq!(merged.lease, Policy::DEFAULT.lease);
        assert_eq!(Overrides::NONE.apply_to(APP), APP);
    }

    /// An endpoint that compares its bodies otherwise than as JSON leaves the members the
    /// application's defaults ignore in JSON bodies behind, as the attribute does, rather than
    /// contradicting them; one that names its own ignored members keeps them.
    #[test]
    fn an_override_to_compare_bodies_otherwise_leaves_the_defaults_ignored_members_behind() {
        const APP: Policy = Policy::DEFAULT
            .fingerprint(BodyForm::Json)
            .fingerprint_ignore(&["/sent_at"]);
        for form in [BodyForm::Bytes, BodyForm::Form] {
            let merged = Overrides::NONE.fingerprint(form).apply_to(APP);
            assert_eq!(merged.fingerprint, form);
            assert!(merged.fingerprint_ignore.is_empty(), "{form:?}");
            assert_eq!(merged.check_settings(), Ok(()), "{form:?}");
        }
        let json = Overrides::NONE.fingerprint(BodyForm::Json).apply_to(APP);
        assert_eq!(json.fingerprint_ignore, ["/sent_at"]);
        let own = (Overrides::NONE.fingerprint(BodyForm::Bytes))
            .fingerprint_ignore(&["/x"])
            .apply_to(APP);
        assert_eq!(own.check_settings(), Err(PolicyError::IgnoreWithoutJson));
    }

    #[test]
    fn a_response_limit_the_store_cannot_hold_is_refused() {
        let store = crate::MokaStore::builder().max_bytes(64 * 1024).build();
        let err = Policy::DEFAULT.check(&store).unwrap_err();
        assert!(matches!(
            err,
            PolicyError::ResponseLargerThanStore {
                max_response: 1_048_576,
                ..
            }
        ));
        assert!(err.to_string().contains("lower max_response"));
        assert_eq!(
            Policy::DEFAULT.max_response(16 * 1024).check(&store),
            Ok(())
        );
        assert_eq!(Policy::DEFAULT.check(&crate::MokaStore::new()), Ok(()));
        // A response holds its bytes and 8 of framing (status, body offset, header count).
        let store = crate::MokaStore::builder()
            .max_bytes(crate::store::RECORD_OVERHEAD as u64 + 1008)
            .build();
        assert_eq!(Policy::DEFAULT.max_response(1000).check(&store), Ok(()));
        let err = Policy::DEFAULT
            .max_response(1001)
            .check(&store)
            .unwrap_err();
        assert!(
            err.to_string().contains("with their framing (8 bytes)"),
            "{err}"
        );
        assert_eq!(
            Policy::DEFAULT
                .header("Idempotency Key")
                .check(&crate::MokaStore::new()),
            Err(PolicyError::InvalidHeader("Idempotency Key"))
        );
    }

    /// The smallest record the engine writes is a completion kept without its response (an
    /// endpoint with `max_response = 0`, or a response too large): a store bounded below it
    /// could never record a request, and every retry would run the operation again.
    #[test]
    fn a_store_too_small_for_a_record_without_its_response_is_refused_whatever_max_response() {
        let smallest = crate::store::RECORD_OVERHEAD + Response::omitted(201, 0).held_bytes();
        assert_eq!(smallest, 507, "as MokaStoreBuilder::max_bytes says");
        let tiny = crate::MokaStore::builder()
            .max_bytes(smallest as u64 - 1)
            .build();
        for policy in [Policy::DEFAULT.max_response(0), Policy::DEFAULT] {
            let err = policy.check(&tiny).unwrap_err();
            assert!(
                matches!(err, PolicyError::StoreTooSmall { .. }),
                "{:?}: {err:?}",
                policy.max_response
            );
            assert!(err.to_string().contains(&smallest.to_string()), "{err}");
        }
        let enough = crate::MokaStore::builder()
            .max_bytes(smallest as u64)
            .build();
        assert_eq!(Policy::DEFAULT.max_response(0).check(&enough), Ok(()));
    }

    /// The bound [`Policy::check`] holds a store to is the one that lets it record: at it, an
    /// endpoint that keeps no response records its requests, and their retries are not run.
    #[tokio::test]
    async fn a_store_of_exactly_the_smallest_record_records_a_request_without_its_response() {
        let smallest = crate::store::RECORD_OVERHEAD + Response::omitted(201, 0).held_bytes();
        let store = crate::MokaStore::builder()
            .max_bytes(smallest as u64)
            .build();
        let engine = crate::Engine::new(store);
        let policy = Policy::DEFAULT.max_response(0);
        let (key, fp) = (
            crate::StoreKey::from_bytes([1; 32]),
            crate::Fingerprint::new("POST", "/x", "", b""),
        );
        let crate::Begin::Execute(lease) = engine.begin(&policy, key, fp).await.unwrap() else {
            panic!("a new key runs")
        };
        let outcome = lease.finish(Response::new(201, [], b"done")).await;
        assert_eq!(outcome.unwrap(), crate::Outcome::Recorded);
        let retry = engine.begin(&policy, key, fp).await;
        assert!(
            matches!(
                retry,
                Err(crate::IdempotencyError::ResponseTooLarge { status: 201, .. })
            ),
            "{retry:?}"
        );
    }

    /// What [`Policy::check`] lets through is replayed whole: a response of `max_response`
    /// bytes fits the store with its headers' framing, where one with headers was refused by
    /// the store and kept without its body (its retries answered 409).
    #[tokio::test]
    async fn a_max_response_the_check_passes_is_replayed_whole_with_its_headers() {
        let store = crate::MokaStore::builder()
            .max_bytes(crate::store::RECORD_OVERHEAD as u64 + 1008)
            .build();
        let policy = Policy::DEFAULT.max_response(1000);
        assert_eq!(policy.check(&store), Ok(()));
        let engine = crate::Engine::new(store);
        let (key, fp) = (
            crate::StoreKey::from_bytes([2; 32]),
            crate::Fingerprint::new("POST", "/x", "", b""),
        );
        let crate::Begin::Execute(lease) = engine.begin(&policy, key, fp).await.unwrap() else {
            panic!("a new key runs")
        };
        let location = ("location", &b"/v1/calls/1"[..]);
        // As large as max_response allows.
        let headers = Response::new(201, [location], b"").size();
        let body = vec![b'x'; policy.max_response - headers];
        let response = Response::new(201, [location], &body[..]);
        assert_eq!(response.size(), policy.max_response);
        let outcome = lease.finish(response).await;
        assert_eq!(outcome.unwrap(), crate::Outcome::Recorded);
        match engine.begin(&policy, key, fp).await {
            Ok(crate::Begin::Replay(done)) => assert_eq!(done.response.body().len(), body.len()),
            other => panic!("a response within max_response is replayed: {other:?}"),
        }
    }

    /// A key is 1 byte at least, so a longest key of 0 bytes would refuse every key sent:
    /// refused when the application is configured, as the attribute refuses it at compile
    /// time, rather than answered 400 on every keyed request.
    #[test]
    fn a_longest_key_of_zero_bytes_is_refused() {
        let store = crate::MokaStore::new();
        assert_eq!(
            Policy::DEFAULT.key_max_len(0).check(&store),
            Err(PolicyError::KeyMaxLenZero)
        );
        assert_eq!(Policy::DEFAULT.key_max_len(1).check(&store), Ok(()));
    }

    /// A scope read from a header that is not a header name is refused when the application
    /// is configured, as the attribute refuses `scope = "header:X Tenant"`: no request could
    /// carry it, so every keyed request would be refused 400 `idempotency_scope_missing`, as
    /// if the client had left it out.
    #[test]
    fn a_scope_header_that_is_not_a_header_name_is_refused() {
        let store = crate::MokaStore::new();
        for bad in ["X Tenant", "", "X-Tenant:"] {
            assert_eq!(
                Policy::DEFAULT.scope(Scope::Header(bad)).check(&store),
                Err(PolicyError::InvalidHeader(bad))
            );
        }
        let tenant = Policy::DEFAULT.scope(Scope::Header("X-Tenant"));
        assert_eq!(tenant.check(&store), Ok(()));
    }

    /// A scope read from the key's own header makes every key its own scope, which any
    /// caller who sends the key reaches: refused, as the attribute refuses it, unless the key
    /// is read from the body.
    #[test]
    fn a_scope_read_from_the_keys_own_header_is_refused() {
        let store = crate::MokaStore::new();
        let own = Policy::DEFAULT.scope(Scope::Header("idempotency-key"));
        assert_eq!(
            own.check(&store),
            Err(PolicyError::ScopeIsKey("Idempotency-Key"))
        );
        let other = Policy::DEFAULT.scope(Scope::Header("X-Tenant"));
        assert_eq!(other.check(&store), Ok(()));
        let from_body = own.key_source(KeySource::Json("/event_id"));
        assert_eq!(from_body.fingerprint(BodyForm::Json).check(&store), Ok(()));
    }

    /// An endpoint's name is read only where keys are per endpoint, and must name something:
    /// either mistake is refused when the application (or a middleware) is configured, as
    /// the attribute refuses `per_endpoint = ""` at compile time. Overrides that name an
    /// endpoint and say nothing of `per_endpoint` make keys per endpoint, as the attribute's
    /// `per_endpoint = "<name>"` does.
    #[test]
    fn an_empty_endpoint_name_or_one_keys_never_read_is_refused() {
        let store = crate::MokaStore::new();
        let named = Policy::DEFAULT.endpoint_name("calls.create");
        assert_eq!(
            named.check(&store),
            Err(PolicyError::EndpointNameUnused("calls.create"))
        );
        assert_eq!(named.per_endpoint(true).check(&store), Ok(()));
        assert_eq!(
            Policy::DEFAULT
                .per_endpoint(true)
                .endpoint_name("")
                .check(&store),
            Err(PolicyError::EndpointNameEmpty)
        );
        assert_eq!(
            Overrides::NONE.endpoint_name("").check(),
            Err(PolicyError::EndpointNameEmpty)
        );
        assert_eq!(
            Overrides::NONE.endpoint_name("calls.create").check(),
            Ok(())
        );
        assert_eq!(
            Overrides::NONE
                .per_endpoint(false)
                .endpoint_name("calls.create")
                .check(),
            Err(PolicyError::EndpointNameUnused("calls.create"))
        );
        // A name alone makes keys per endpoint, whatever the defaults say.
        let applied = Overrides::NONE
            .endpoint_name("calls.create")
            .apply_to(Policy::DEFAULT);
        assert_eq!(
            (applied.per_endpoint, applied.endpoint_name),
            (true, Some("calls.create"))
        );
    }

    /// A `max_body` of 0 would refuse every keyed request with a body (413
    /// `idempotency_body_too_large`), and a wait of under a millisecond waits for nothing:
    /// both are refused when the application (or a middleware) is configured, as the
    /// attribute refuses `max_body = 0` and `wait_timeout = "0s"` at compile time.
    #[test]
    fn a_zero_max_body_or_a_wait_for_nothing_is_refused_as_the_attribute_refuses_it() {
        let store = crate::MokaStore::new();
        assert_eq!(
            Policy::DEFAULT.max_body(0).check(&store),
            Err(PolicyError::MaxBodyZero)
        );
        assert_eq!(
            Overrides::NONE.max_body(0).check(),
            Err(PolicyError::MaxBodyZero)
        );
        assert_eq!(Policy::DEFAULT.max_body(1).check(&store), Ok(()));
        for wait in [Duration::ZERO, Duration::from_micros(999)] {
            let waits = OnInFlight::Wait(wait);
            assert_eq!(
                Policy::DEFAULT.on_in_flight(waits).check(&store),
                Err(PolicyError::WaitTooShort { wait })
            );
            assert_eq!(
                Overrides::NONE.on_in_flight(waits).check(),
                Err(PolicyError::WaitTooShort { wait })
            );
        }
        let waits = OnInFlight::Wait(Duration::from_millis(1));
        assert_eq!(Policy::DEFAULT.on_in_flight(waits).check(&store), Ok(()));
    }

    /// Overrides that name the key's header but read the key from the JSON body never read
    /// the header: refused, as the attribute refuses `header` with `key = "json:..."`, where
    /// the header was silently ignored. The application's defaults name a header in every
    /// policy, so a policy alone cannot say that its header was meant.
    #[test]
    fn overrides_naming_the_key_header_and_reading_the_key_from_the_body_are_refused() {
        let both = Overrides::NONE
            .header("X-Event-Id")
            .key_source(KeySource::Json("/event_id"));
        assert_eq!(both.check(), Err(PolicyError::HeaderUnread("X-Event-Id")));
        let from_header = both.key_source(KeySource::Header);
        assert_eq!(from_header.check(), Ok(()));
    }

    /// Overrides that answer mismatches with the first response never read the fingerprint:
    /// fingerprint headers or members ignored that they give too are refused, as the
    /// attribute refuses them, where they were accepted and changed no answer. Under
    /// defaults that give them, an endpoint that replays mismatches is no mistake: its policy
    /// passes.
    #[test]
    fn overrides_that_replay_mismatches_refuse_fingerprint_settings_they_never_read() {
        let replays = Overrides::NONE.on_mismatch(OnMismatch::Replay);
        let headers = replays.fingerprint_headers(&["X-Account"]);
        let unread = PolicyError::UnreadUnderReplay;
        assert_eq!(headers.check(), Err(unread("fingerprint_headers")));
        let ignored = (replays.fingerprint(BodyForm::Json)).fingerprint_ignore(&["/sent_at"]);
        assert_eq!(ignored.check(), Err(unread("fingerprint_ignore")));
        assert_eq!(replays.check(), Ok(()));
        let defaults = Policy::DEFAULT.fingerprint_headers(&["X-Account"]);
        assert_eq!(defaults.check_fingerprint_read(), Ok(()));
        let endpoint = replays.apply_to(defaults);
        assert_eq!(endpoint.check_settings(), Ok(()));
        let replaying = defaults.on_mismatch(OnMismatch::Replay);
        assert_eq!(
            replaying.check_fingerprint_read(),
            Err(unread("fingerprint_headers"))
        );
    }

    /// Overrides are refused for what they set themselves, and left to the policy they make
    /// with the application's defaults for what those may make right.
    #[test]
    fn overrides_are_refused_only_for_what_no_default_can_make_right() {
        let short = Duration::from_millis(10);
        assert_eq!(
            Overrides::NONE.lease(short).check(),
            Err(PolicyError::LeaseTooShort { lease: short })
        );
        assert_eq!(
            Overrides::NONE
                .fingerprint(BodyForm::Bytes)
                .fingerprint_ignore(&["/sent_at"])
                .check(),
            Err(PolicyError::IgnoreWithoutJson)
        );
        assert_eq!(
            Overrides::NONE.fingerprint_ignore(&["/sent_at"]).check(),
            Ok(())
        );
        assert_eq!(
            Overrides::NONE
                .key_source(KeySource::Json("/event_id"))
                .check(),
            Ok(())
        );
        assert_eq!(Overrides::NONE.check(), Ok(()));
    }

    /// A scope read from `Idempotency-Key` is the key's own header only where the key is read
    /// from it: overrides that leave the key's header to the application's defaults (which
    /// may name another) are left to the policy they make with them, and refused when they
    /// name that header themselves.
    #[test]
    fn overrides_scoping_by_the_built_in_key_header_are_judged_against_the_defaults_key_header() {
        let scoped = Overrides::NONE.scope(Scope::Header("Idempotency-Key"));
        assert_eq!(scoped.check(), Ok(()));
        let store = crate::MokaStore::new();
        let other_key = Policy::DEFAULT.header("X-Key");
        assert_eq!(scoped.apply_to(other_key).check(&store), Ok(()));
        assert_eq!(
            scoped.apply_to(Policy::DEFAULT).check(&store),
            Err(PolicyError::ScopeIsKey("Idempotency-Key"))
        );
        assert_eq!(
            scoped.header("idempotency-key").check(),
            Err(PolicyError::ScopeIsKey("idempotency-key"))
        );
    }

    /// Keys read from a header the scope reads the caller's credential from would be that
    /// credential: one key for every request that carries it (or none, a credential with a
    /// space being no key). Refused by the policy, by overrides that set both, and by the
    /// middleware through them; overrides that set no scope are judged once applied.
    #[test]
    fn a_key_header_the_scope_reads_a_credential_from_is_refused() {
        let refused = |scope: Scope, header: &'static str| {
            Policy::DEFAULT.scope(scope).header(header).check_settings()
        };
        for (scope, header) in [
            (Scope::ApiKey, "X-API-Key"),
            (Scope::ApiKey, "authorization"),
            (Scope::BasicAuthUser, "Authorization"),
        ] {
            assert_eq!(
                refused(scope, header),
                Err(PolicyError::KeyIsCredential(header)),
                "{scope:?}"
            );
            let overrides = Overrides::NONE.scope(scope).header(header);
            assert_eq!(overrides.check(), Err(PolicyError::KeyIsCredential(header)));
        }
        // A credential no scope reads is still no key: every request with it would share one.
        for (scope, header) in [
            (Scope::BasicAuthUser, "X-API-Key"),
            (Scope::Global, "X-API-Key"),
            (Scope::Header("X-Tenant"), "Authorization"),
        ] {
            assert_eq!(
                refused(scope, header),
                Err(PolicyError::KeyHeaderNotKey(header)),
                "{scope:?} {header}"
            );
        }
        assert_eq!(refused(Scope::ApiKey, "X-Idempotency-Key"), Ok(()));
        let unscoped = Overrides::NONE.header("X-API-Key");
        assert_eq!(
            unscoped.check(),
            Err(PolicyError::KeyHeaderNotKey("X-API-Key"))
        );
    }

    /// A header clients send for another purpose than a key (a cookie, the body's type, the
    /// client) carries one value on many requests: keys read from it are refused, in any case
    /// of its name, whatever the scope; where the key is read from the body, the header is
    /// not read, and nothing is refused.
    #[test]
    fn a_key_header_clients_send_for_another_purpose_is_refused() {
        for header in [
            "Cookie",
            "content-type",
            "User-Agent",
            "Host",
            "X-Forwarded-For",
        ] {
            let policy = Policy::DEFAULT.scope(Scope::Global).header(header);
            assert_eq!(
                policy.check_settings(),
                Err(PolicyError::KeyHeaderNotKey(header))
            );
            let overrides = Overrides::NONE.header(header);
            assert_eq!(overrides.check(), Err(PolicyError::KeyHeaderNotKey(header)));
        }
        let from_body = Policy::DEFAULT
            .header("Cookie")
            .key_source(KeySource::Json("/event_id"))
            .fingerprint(BodyForm::Json);
        assert_eq!(from_body.check_settings(), Ok(()));
    }

    #[test]
    fn settings_that_contradict_each_other_are_refused() {
        let store = crate::MokaStore::new();
        let check = |p: Policy| p.check(&store);
        let short = Duration::from_millis(99);
        assert_eq!(
            check(Policy::DEFAULT.lease(short)),
            Err(PolicyError::LeaseTooShort { lease: short })
        );
        assert_eq!(check(Policy::DEFAULT.lease(Policy::MIN_LEASE)), Ok(()));
        // A record kept for no time replays nothing: every retry would run again. One kept
        // under a second serves no retry, and a waiting duplicate could find it gone.
        for ttl in [
            Duration::ZERO,
            Duration::from_micros(999),
            Duration::from_millis(999),
        ] {
            assert_eq!(
                check(Policy::DEFAULT.ttl(ttl)),
                Err(PolicyError::TtlTooShort { ttl })
            );
        }
        assert_eq!(check(Policy::DEFAULT.ttl(Policy::MIN_TTL)), Ok(()));
        assert_eq!(
            check(Policy::DEFAULT.fingerprint_headers(&["Content-Type", "X Bad"])),
            Err(PolicyError::InvalidHeader("X Bad"))
        );
        assert_eq!(
            check(Policy::DEFAULT.replay_headers(ReplayHeaders::Except(&["Set-Cookie"]))),
            Err(PolicyError::SetCookieListed)
        );
        // A header no replay repeats would do nothing in either list.
        assert_eq!(
            check(Policy::DEFAULT.replay_headers(ReplayHeaders::Only(&["Content-Type", "date"]))),
            Err(PolicyError::NeverReplayedListed("date"))
        );
        // A header of one transfer or one request differs between a request and its retry:
        // fingerprinted, it made every retry a mismatch.
        let lists: [&'static [&'static str]; 3] = [
            &["Content-Type", "Connection"],
            &["Content-Type", "date"],
            &["Content-Type", "X-Request-ID"],
        ];
        for list in lists {
            assert_eq!(
                check(Policy::DEFAULT.fingerprint_headers(list)),
                Err(PolicyError::PerRequestFingerprinted(list[1]))
            );
        }
        // Nor can it scope keys: each retry would be in a scope of its own, and run again.
        for header in ["X-Request-ID", "date"] {
            assert_eq!(
                check(Policy::DEFAULT.scope(Scope::Header(header))),
                Err(PolicyError::PerRequestScope(header))
            );
            let overrides = Overrides {
                scope: Some(Scope::Header(header)),
                ..Overrides::NONE
            };
            assert_eq!(overrides.check(), Err(PolicyError::PerRequestScope(header)));
        }
        // A hop-by-hop header never reaches the server through a proxy: no key's.
        assert_eq!(
            check(Policy::DEFAULT.header("Proxy-Connection")),
            Err(PolicyError::KeyHeaderNotKey("Proxy-Connection"))
        );
        assert_eq!(
            check(Policy::DEFAULT.replay_headers(ReplayHeaders::Except(&["X-Request-ID"]))),
            Err(PolicyError::NeverReplayedListed("X-Request-ID"))
        );
        assert_eq!(
            check(
                Policy::DEFAULT
                    .fingerprint(BodyForm::Json)
                    .fingerprint_ignore(&["/ok", "bad"])
            ),
            Err(PolicyError::InvalidPointer {
                pointer: "bad",
                reason: PointerError::NoLeadingSlash
            })
        );
        assert_eq!(
            check(Policy::DEFAULT.fingerprint_ignore(&["/sent_at"])),
            Err(PolicyError::IgnoreWithoutJson)
        );
        assert_eq!(
            check(Policy::DEFAULT.key_source(KeySource::Json("event_id"))),
            Err(PolicyError::InvalidPointer {
                pointer: "event_id",
                reason: PointerError::NoLeadingSlash
            })
        );
        assert_eq!(
            check(
                Policy::DEFAULT
                    .key_source(KeySource::Json("/event_id"))
                    .fingerprint(BodyForm::Form)
            ),
            Err(PolicyError::JsonKeyInForm)
        );
        assert_eq!(
            check(
                Policy::DEFAULT
                    .fingerprint(BodyForm::Json)
                    .fingerprint_ignore(&["/sent_at"])
                    .fingerprint_headers(&["Content-Type"])
                    .replay_headers(ReplayHeaders::Only(&["Location"]))
                    .key_source(KeySource::Json("/event_id"))
            ),
            Ok(())
        );
    }

    #[test]
    fn replay_header_lists_name_headers_in_any_case() {
        assert!(ReplayHeaders::All.replays("x-anything"));
        let only = ReplayHeaders::Only(&["Location", "Content-Type"]);
        assert!(only.replays("location") && only.replays("content-type"));
        assert!(!only.replays("x-trace-id"));
        let except = ReplayHeaders::Except(&["X-Trace-Id"]);
        assert!(!except.replays("x-trace-id") && except.replays("location"));
    }

    #[test]
    fn policies_build_in_const_context() {
        const P: Policy = Policy::DEFAULT
            .ttl(Duration::from_secs(60))
            .header("X-Idempotency-Key")
            .required(true);
        assert_eq!(P.ttl, Duration::from_secs(60));
        assert_eq!(P.header, "X-Idempotency-Key");
        const { assert!(P.required) };
        assert_eq!(P.scope, Scope::ApiKey);
    }
}
