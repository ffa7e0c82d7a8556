//! The application's functions an endpoint calls: what identifies a body only the
//! application understands, where a key is when it is not in a header, and what to do on
//! every replay. Each is a plain function (or a closure that captures nothing), so that the
//! attribute can check its signature at compile time and keep it in a `static`.

use actix_web::{HttpRequest, HttpResponse};
use idem_core::{Overrides, PolicyError};

use crate::scope::ScopeFunction;

/// A function that reads a request's body as only the application can (a multipart body, a
/// binary format) and returns what identifies it: equal bytes for bodies that mean the same,
/// or `None` when it cannot read it (the answer is then 400 `idempotency_body_invalid`).
///
/// `#[idempotent(fingerprint = my_fn)]` checks the signature at compile time; the
/// middleware takes one with [`Idempotency::with_fingerprint_fn`](crate::Idempotency::with_fingerprint_fn).
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be used as a fingerprint function",
    label = "a fingerprint function is `fn(&HttpRequest, &[u8]) -> Option<Vec<u8>>`",
    note = "return bytes that are equal for bodies that mean the same, or None when the body cannot be read"
)]
pub trait FingerprintFn {
    /// What identifies `body`, the body of `req`.
    fn fingerprint(&self, req: &HttpRequest, body: &[u8]) -> Option<Vec<u8>>;
}

impl<F: Fn(&HttpRequest, &[u8]) -> Option<Vec<u8>>> FingerprintFn for F {
    fn fingerprint(&self, req: &HttpRequest, body: &[u8]) -> Option<Vec<u8>> {
        self(req, body)
    }
}

/// A function that finds a request's idempotency key, for APIs and webhooks that carry it
/// somewhere else than a header of its own: `None` when the request has none. The key then
/// follows the key rules (1 to `key_max_len` bytes of visible ASCII), and its 400s.
///
/// `#[idempotent(key = my_fn)]` checks the signature at compile time; the middleware takes
/// one with [`Idempotency::with_key_fn`](crate::Idempotency::with_key_fn).
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be used as a key function",
    label = "a key function is `fn(&HttpRequest, &[u8]) -> Option<String>`",
    note = "return the request's idempotency key, read from its body (the second argument) or elsewhere, or None when it has none"
)]
pub trait KeyFn {
    /// The key of `req`, whose body is `body`.
    fn key(&self, req: &HttpRequest, body: &[u8]) -> Option<String>;
}

impl<F: Fn(&HttpRequest, &[u8]) -> Option<String>> KeyFn for F {
    fn key(&self, req: &HttpRequest, body: &[u8]) -> Option<String> {
        self(req, body)
    }
}

/// A function called on every replay, with the request and the replayed response, to log
/// or count replays, or to add a header to them.
///
/// `#[idempotent(on_replay = my_fn)]` checks the signature at compile time; the middleware
/// takes one with [`Idempotency::on_replay`](crate::Idempotency::on_replay), and an
/// application with [`IdempotencyConfig::on_replay`](crate::IdempotencyConfig::on_replay).
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be used as a replay hook",
    label = "a replay hook is `fn(&HttpRequest, &mut HttpResponse)`",
    note = "it is called with each replayed response, which it may change"
)]
pub trait ReplayHook {
    /// Called with `req` and its replayed response `res`.
    fn on_replay(&self, req: &HttpRequest, res: &mut HttpResponse);
}

impl<F: Fn(&HttpRequest, &mut HttpResponse)> ReplayHook for F {
    fn on_replay(&self, req: &HttpRequest, res: &mut HttpResponse) {
        self(req, res)
    }
}

/// A fingerprint function as the layer keeps it.
pub(crate) type FingerprintFunction = fn(&HttpRequest, &[u8]) -> Option<Vec<u8>>;
/// A key function as the layer keeps it.
pub(crate) type KeyFunction = fn(&HttpRequest, &[u8]) -> Option<String>;
/// A replay hook as the layer keeps it.
pub(crate) type ReplayFunction = fn(&HttpRequest, &mut HttpResponse);

/// The functions of one endpoint (or one middleware), each `None` when it has none.
#[doc(hidden)]
#[derive(Clone, Copy, Debug, Default)]
pub struct Functions {
    pub(crate) scope: Option<ScopeFunction>,
    pub(crate) fingerprint: Option<FingerprintFunction>,
    pub(crate) key: Option<KeyFunction>,
    pub(crate) on_replay: Option<ReplayFunction>,
}

impl Functions {
    /// No function.
    pub const NONE: Functions = Functions {
        scope: None,
        fingerprint: None,
        key: None,
        on_replay: None,
    };

    /// With the scope function `f`.
    #[must_use]
    pub const fn scope(mut self, f: ScopeFunction) -> Self {
        self.scope = Some(f);
        self
    }

    /// With the fingerprint function `f`.
    #[must_use]
    pub const fn fingerprint(mut self, f: FingerprintFunction) -> Self {
        self.fingerprint = Some(f);
        self
    }

    /// With the key function `f`.
    #[must_use]
    pub const fn key(mut self, f: KeyFunction) -> Self {
        self.key = Some(f);
        self
    }

    /// With the replay hook `f`.
    #[must_use]
    pub const fn on_replay(mut self, f: ReplayFunction) -> Self {
        self.on_replay = Some(f);
        self
    }

    /// The refusal of an override that one of these functions would replace unseen (the
    /// attribute cannot express both, or refuses them at compile time).
    pub(crate) fn overridden(&self, overrides: &Overrides) -> Option<PolicyError> {
        let refused = |function, what, setting| PolicyError::FunctionOverridesSetting {
            function,
            what,
            setting,
        };
        if self.key.is_some() && overrides.key_source.is_some() {
            return Some(refused("with_key_fn", "where the key is", "key_source"));
        }
        if self.scope.is_some() && overrides.scope.is_some() {
            return Some(refused("with_scope_fn", "the key's scope", "scope"));
        }
        if self.fingerprint.is_some() {
            let read = |setting| refused("with_fingerprint_fn", "how bodies compare", setting);
            if overrides.fingerprint.is_some() {
                return Some(read("fingerprint"));
            }
            if overrides.fingerprint_ignore.is_some() {
                return Some(read("fingerprint_ignore"));
            }
        }
        None
    }

    /// Whether there is any.
    pub(crate) fn any(&self) -> bool {
        self.scope.is_some()
            || self.fingerprint.is_some()
            || self.key.is_some()
            || self.on_replay.is_some()
    }
}

/// Calls a fingerprint function; the attribute checks its signature through this.
pub fn fingerprint<F: FingerprintFn>(f: F, req: &HttpRequest, body: &[u8]) -> Option<Vec<u8>> {
    f.fingerprint(req, body)
}

/// Calls a key function; the attribute checks its signature through this.
pub fn key<F: KeyFn>(f: F, req: &HttpRequest, body: &[u8]) -> Option<String> {
    f.key(req, body)
}

/// Calls a replay hook; the attribute checks its signature through this.
pub fn on_replay<F: ReplayHook>(f: F, req: &HttpRequest, res: &mut HttpResponse) {
    f.on_replay(req, res);
}
