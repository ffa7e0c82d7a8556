//! One request through the idempotency layer, shared by the attribute and the middleware.
//!
//! Each step has a file: [`admit`] decides what a request needs (key, scope, body,
//! fingerprint); [`claim`] claims its key and settles on a replay, a refusal or a run;
//! [`detach`] keeps a run going when its client goes away; [`record`] runs the handler under
//! its claim and records the response; [`replay`] answers from a record. This file holds what
//! the attribute's generated code calls.
//!
//! A test in [`claim`] holds the sizes of the futures a keyed request builds; why some of
//! them are `async` blocks is said once, under "Future sizes" in `idem_core`'s engine.

use std::convert::Infallible;
use std::future::{ready, Future, Ready};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;

use actix_web::dev::{self, ServiceResponse};
use actix_web::http::header::HeaderName;
use actix_web::{FromRequest, HttpRequest, HttpResponse};
use idem_core::{KeyOrigin, KeySource, Overrides, Policy, PolicyError};

use crate::config::{parse_header, IdempotencyConfig};
use crate::extract::NoIdempotencyKey;
use crate::functions::Functions;
use crate::request_id::RequestId;

mod admit;
mod claim;
mod detach;
mod record;
mod replay;

#[cfg(feature = "postgres")]
pub(crate) use self::admit::{admitted_format, admitted_lends, unprotected};
pub(crate) use self::admit::{bypasses, passed, taken};
pub(crate) use self::claim::keyed;
pub(crate) use self::detach::TASKS;

/// One endpoint's (or one middleware's) overrides of the application's policy, and its parsed
/// header name, built in a `static` by the attribute.
#[derive(Debug)]
pub struct Endpoint {
    overrides: Overrides,
    /// The endpoint's own key header, parsed on first use; `None` when it is not a header
    /// name (the attribute refuses such names at compile time, the middleware at start-up).
    header: OnceLock<Option<HeaderName>>,
    /// Whether its policy was checked against the store, on its first keyed request.
    checked: AtomicBool,
    /// Whether the configs registered where it is served were looked at, on its first
    /// request.
    registrations_checked: AtomicBool,
    /// Whether it was warned that an outer middleware's settings replace its own.
    overruled: AtomicBool,
    /// Whether its requests' route, where keys are per endpoint, is their method and path
    /// rather than their method and route pattern: the middleware's, which may run before
    /// the app routes a request. actix's `match_pattern` then gives the first pattern that
    /// fits the path, whatever its method or guards (`GET /items/{id}` for
    /// `POST /items/search`), so that two endpoints would share keys.
    by_path: bool,
}

impl Endpoint {
    /// An endpoint with `overrides` on top of the application's policy.
    pub const fn new(overrides: Overrides) -> Self {
        Self {
            overrides,
            header: OnceLock::new(),
            checked: AtomicBool::new(false),
            registrations_checked: AtomicBool::new(false),
            overruled: AtomicBool::new(false),
            by_path: false,
        }
    }

    /// An endpoint with `overrides`, checked and its key header parsed now, whose route is
    /// its requests' path: the middleware's.
    ///
    /// # Errors
    /// The [`PolicyError`] of a setting the overrides give that no application's defaults
    /// could make right ([`Overrides::check`]).
    pub(crate) fn parsed(overrides: Overrides) -> Result<Self, PolicyError> {
        overrides.check()?;
        let endpoint = Self {
            by_path: true,
            ..Self::new(overrides)
        };
        if let Some(name) = overrides.header {
            let _ = endpoint.header.set(Some(parse_header(name)?));
        }
        Ok(endpoint)
    }

    /// Warns, once, that an `Idempotency` middleware around this endpoint (an attributed
    /// handler, or another `Idempotency` middleware when `nested`) claims its keys with the
    /// outer middleware's settings, so that this endpoint's own do not apply. The key is still
    /// claimed once; only whose settings is in question.
    pub(crate) fn outer_layer_applies(&self, has_functions: bool, nested: bool) {
        let declares = self.overrides != Overrides::NONE || has_functions;
        if !declares || self.overruled.swap(true, Ordering::Relaxed) {
            return;
        }
        if nested {
            tracing::warn!(
                "an Idempotency middleware wraps another Idempotency middleware: the outer one's settings apply and the inner one's are ignored; remove one of the two, or give them the same settings"
            );
        } else {
            tracing::warn!(
                "an Idempotency middleware wraps an #[idempotent] handler: the middleware's settings apply and the attribute's arguments are ignored; remove one of the two, or give the middleware the same settings"
            );
        }
    }

    /// Logs, once, settings of this endpoint that the store contradicts. The application's
    /// defaults were refused at start-up already (`IdempotencyConfig::with_defaults`); an
    /// endpoint's overrides can only be seen with a request.
    fn check(&self, policy: &Policy, config: &IdempotencyConfig) {
        if self.checked.load(Ordering::Relaxed) {
            return;
        }
        self.checked.store(true, Ordering::Relaxed);
        if let Err(error) = policy.check(&**config.engine().store()) {
            tracing::error!(%error, "an idempotent endpoint's settings contradict the application's or the store");
        }
    }

    /// Logs, on this endpoint's first request, keyed or not, that it sees two configs, one
    /// registered as `web::Data<IdempotencyConfig>` and one as an `IdempotencyConfig` (here
    /// `config`), of which the second is read wherever each is registered: actix finds each
    /// type at the innermost level that has it, and does not say which of the two is inner.
    pub(crate) fn check_registered(&self, config: &IdempotencyConfig, req: &HttpRequest) {
        if self.registrations_checked.load(Ordering::Relaxed) {
            return;
        }
        self.registrations_checked.store(true, Ordering::Relaxed);
        let as_data = req.app_data::<actix_web::web::Data<IdempotencyConfig>>();
        if as_data.is_some_and(|data| data.identity() != config.identity()) {
            tracing::error!(
                path = req.path(),
                "two IdempotencyConfigs are registered where this endpoint is served, one as web::Data<IdempotencyConfig> and one as IdempotencyConfig: the IdempotencyConfig is read, wherever each is registered, and the other is never read; register one of them"
            );
        }
    }

    /// `res`, the answer to a request without a key, unless the handler refused it for want
    /// of one (it takes [`IdempotencyKey`](crate::IdempotencyKey), or a `Transaction`): then
    /// that refusal as this endpoint gives it, naming its own key header, in its own error
    /// format.
    pub(crate) fn keyless(&self, res: HttpResponse, key_function: bool) -> HttpResponse {
        keyless(self.overrides, res, key_function)
    }

    /// The name of the key's header, as written: the endpoint's own, else the application's.
    pub(crate) fn header_name(&self, config: &IdempotencyConfig) -> &'static str {
        self.overrides.header.unwrap_or(config.defaults().header)
    }

    /// The key's header: the endpoint's own, else the application's. `None` when the
    /// endpoint's own is not a header name: its keys cannot be read, and [`check`](Self::check)
    /// logs why.
    pub(crate) fn header<'a>(&'a self, config: &'a IdempotencyConfig) -> Option<&'a HeaderName> {
        match self.overrides.header {
            Some(name) => self.header.get_or_init(|| parse_header(name).ok()).as_ref(),
            None => Some(config.header()),
        }
    }
}

/// [`Endpoint::keyless`] for the endpoint of `overrides`, with a key function or not.
pub(crate) fn keyless(overrides: Overrides, res: HttpResponse, key_function: bool) -> HttpResponse {
    let missing = (res.error().and_then(|e| e.as_error::<NoIdempotencyKey>()))
        .filter(|missing| missing.missing());
    match missing {
        Some(missing) => {
            // The same refusal as a `required` endpoint's, counted as it is.
            crate::metrics::rejected(idem_core::codes::KEY_MISSING);
            missing.response_under(overrides, key_function)
        }
        None => res,
    }
}

/// Where an endpoint reads its keys from, when not from a header: its key function, if it has
/// one, else the member of the JSON body its policy names.
pub(crate) fn key_origin(key_function: bool, policy: &Policy) -> Option<KeyOrigin> {
    match (key_function, policy.key_source) {
        (true, _) => Some(KeyOrigin::Function),
        (false, KeySource::Json(pointer)) => Some(KeyOrigin::Json(pointer)),
        (false, _) => None,
    }
}

/// A function that finds the scope of a request: the tenant (or other owner) of its key, or
/// `None` when the request has none (the answer is then 400 `idempotency_scope_missing`). An
/// empty string is none too, as an empty header is for the built-in scopes: callers that
/// carry no tenant never share one.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be used as a scope function",
    label = "a scope function is `fn(&HttpRequest) -> Option<String>`",
    note = "return the owner of the request's keys (such as its tenant), or None when the request has none"
)]
pub trait ScopeFn {
    /// The scope of `req`.
    fn scope(&self, req: &HttpRequest) -> Option<String>;
}

impl<F: Fn(&HttpRequest) -> Option<String>> ScopeFn for F {
    fn scope(&self, req: &HttpRequest) -> Option<String> {
        self(req)
    }
}

/// Calls a scope function; the attribute checks its signature through this.
pub fn scope<F: ScopeFn>(f: F, req: &HttpRequest) -> Option<String> {
    f.scope(req)
}

/// Work of a keyed request left to run, boxed: the caller's future holds only a pointer to it,
/// and it can move to a task of its own (see [`detached`]).
type Work = Pin<Box<dyn Future<Output = Reply>>>;

/// A response, with its request when it still exists (a handler that panicked, or a service
/// that failed, took it down). Middleware needs the request to build its `ServiceResponse`,
/// and must not hold a clone meanwhile: actix's router needs the request unshared.
pub struct Reply {
    pub(crate) req: Option<HttpRequest>,
    pub(crate) res: HttpResponse,
}

impl Reply {
    pub(crate) fn new(req: HttpRequest, res: HttpResponse) -> Self {
        Self {
            req: Some(req),
            res,
        }
    }

    /// The layer's own answer `res` to `req` (a replay, a refusal): the id it answers with
    /// is kept with the request (see [`RequestId::keep_answered`]).
    pub(crate) fn answered(req: HttpRequest, res: HttpResponse) -> Self {
        RequestId::keep_answered(&req, &res);
        Self::new(req, res)
    }

    pub(crate) fn orphan(res: HttpResponse) -> Self {
        Self { req: None, res }
    }

    pub(crate) fn from_service(res: ServiceResponse) -> Self {
        let (req, res) = res.into_parts();
        Self::new(req, res)
    }
}

/// The generated handler's one argument: the request and its payload, untouched, for
/// [`run`] to hand on to the original handler's extractors.
///
/// One extractor whose future is ready, where `(HttpRequest, web::Payload)` would cost actix
/// a tuple of two extractions on every request, keyed or not.
pub struct Raw {
    req: HttpRequest,
    payload: dev::Payload,
}

impl FromRequest for Raw {
    type Error = Infallible;
    type Future = Ready<Result<Self, Infallible>>;

    #[inline]
    fn from_request(req: &HttpRequest, payload: &mut dev::Payload) -> Self::Future {
        ready(Ok(Raw {
            req: req.clone(),
            payload: payload.take(),
        }))
    }
}

/// Runs `handler` under the attribute's `endpoint`. `handler` extracts the original handler's
/// arguments from the request and payload it is given, calls it and responds. `functions`
/// are the endpoint's own: with a scope function, the key's scope is what it finds, instead
/// of the policy's scope; and so on.
pub async fn run<H, Fut>(
    endpoint: &Endpoint,
    functions: Functions,
    Raw { req, payload }: Raw,
    handler: H,
) -> HttpResponse
where
    H: FnOnce(HttpRequest, dev::Payload) -> Fut + 'static,
    Fut: Future<Output = Reply> + 'static,
{
    if bypasses(endpoint, &functions, &req) {
        let key_function = functions.key.is_some();
        return endpoint.keyless(handler(req, payload).await.res, key_function);
    }
    if taken(&req) {
        // An `Idempotency` middleware around this handler has its key in charge already.
        endpoint.outer_layer_applies(functions.any(), false);
        return handler(req, payload).await.res;
    }
    // Boxed, so that requests without a key do not carry the keyed path's state; the box
    // made first, so that the compiler builds the future in it, where `Box::pin` built it on
    // the stack and copied it in: 277 instructions less per new key
    // (`scripts/bench-instructions`).
    let room = Box::new_uninit();
    let keyed = Box::into_pin(Box::write(
        room,
        keyed(endpoint, functions, req, payload, handler),
    ));
    keyed.await.res
}

/// Lets the attribute's generated code respond with whatever the original handler returned.
pub fn respond<R: actix_web::Responder>(req: HttpRequest, value: R) -> Reply {
    let res = value.respond_to(&req).map_into_boxed_body();
    Reply::new(req, res)
}

/// Lets the attribute's generated code answer an extractor's error: the handler did not
/// run, so the answer is marked as such and its key released, not recorded.
pub fn fail(req: HttpRequest, error: impl Into<actix_web::Error>) -> Reply {
    let mut res = HttpResponse::from_error(error);
    res.extensions_mut().insert(Unrun);
    Reply::new(req, res)
}

/// Marks a response given without running the handler (one of its extractors refused the
/// request): nothing ran, so nothing is recorded, and a corrected retry under the same key
/// runs.
#[derive(Clone, Copy)]
pub(crate) struct Unrun;
