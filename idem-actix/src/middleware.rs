//! The middleware form: idempotency for every handler of an app or a scope.

use std::cell::Cell;
use std::future::{ready, Ready};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};

use actix_web::body::{BodySize, BoxBody, EitherBody, MessageBody};
use actix_web::dev::{forward_ready, Service, ServiceRequest, ServiceResponse, Transform};
use actix_web::error::InternalError;
use actix_web::http::header::{self, HeaderMap};
use actix_web::http::{Method, StatusCode};
use actix_web::HttpRequest;
use actix_web::{Error, HttpResponse};
use futures_util::future::LocalBoxFuture;
use idem_core::{Overrides, PolicyError};

use crate::config::IdempotencyConfig;
use crate::extract::Passed;
use crate::functions::Functions;
use crate::handler::{bypasses, keyed, passed, taken, Endpoint, Reply, Unrun};
use crate::scope::ScopeFunction;

/// Idempotency for every handler a `wrap` covers, with the same semantics and engine as
/// `#[idempotent]`.
///
/// By default it honours keys on every method but the safe ones, `GET`, `HEAD`, `OPTIONS` and
/// `TRACE`, on which a key is ignored: `POST`, `PUT`, `PATCH`, `DELETE`, and extension methods
/// an app routes (`PURGE`, WebDAV's `LOCK`), whose effects are the app's.
/// [`with_methods`](Idempotency::with_methods) names the methods instead. Settings come from the app's
/// [`IdempotencyConfig`](crate::IdempotencyConfig) (or the built-in defaults), registered where
/// the middleware is wrapped or above (it runs before routing, so it never reads one registered
/// on a scope or resource inside what it wraps, and logs an error when a request shows one), and
/// [`Idempotency::with_overrides`] overrides them for what this middleware wraps. A handler that is
/// also `#[idempotent]` is not claimed twice: the middleware, being outside, handles the key
/// and the attribute steps aside.
///
/// With keys per endpoint (`per_endpoint`), the middleware tells an endpoint by the request's
/// method and path (`POST /v1/items/42`), where the attribute tells it by its route's
/// pattern (`POST /v1/items/{id}`): around an app or a scope it runs before the request is
/// routed, when the pattern that will route it is not known yet (actix's
/// [`match_pattern`](HttpRequest::match_pattern) is then the first that fits the path,
/// whatever its method). So a key reused on another path is another operation there, not a
/// mismatch.
///
/// ```
/// use std::time::Duration;
/// use actix_web::{test, web, App, HttpResponse};
/// use idem_actix::Idempotency;
///
/// # actix_web::rt::System::new().block_on(async {
/// let app = test::init_service(
///     App::new().service(
///         web::scope("/v1")
///             .wrap(Idempotency::new().with_overrides(|p| p.ttl(Duration::from_secs(3600))))
///             .route("/calls", web::post().to(|| async { HttpResponse::Created().finish() })),
///     ),
/// )
/// .await;
/// let call = || {
///     test::TestRequest::post()
///         .uri("/v1/calls")
///         .insert_header(("Authorization", "Bearer t"))
///         .insert_header(("Idempotency-Key", "k"))
///         .to_request()
/// };
/// assert!(test::call_service(&app, call()).await.headers().get("idempotent-replayed").is_none());
/// assert!(test::call_service(&app, call()).await.headers().get("idempotent-replayed").is_some());
/// # });
/// ```
#[derive(Clone, Debug)]
#[must_use]
pub struct Idempotency {
    overrides: Overrides,
    functions: Functions,
    methods: Methods,
}

/// The methods whose keys a middleware honours.
#[derive(Clone, Debug)]
enum Methods {
    /// Every method but the safe ones (`GET`, `HEAD`, `OPTIONS`, `TRACE`), which change
    /// nothing.
    Unsafe,
    /// These.
    Only(Rc<[Method]>),
}

impl Methods {
    fn honours(&self, method: &Method) -> bool {
        match self {
            Methods::Unsafe => !method.is_safe(),
            Methods::Only(methods) => methods.contains(method),
        }
    }
}

/// What each worker's service shares.
#[derive(Debug)]
struct Inner {
    endpoint: Endpoint,
    functions: Functions,
    methods: Methods,
    /// Whether a config registered inside the middleware was reported.
    reported: Cell<bool>,
}

impl Inner {
    /// Logs, once, that the config of the app serving `req` once it is routed is not `read`,
    /// the one the middleware read before routing: one registered on a scope or resource
    /// the middleware wraps, which it never reads.
    fn registered_inside(&self, req: &HttpRequest, read: *const ()) {
        if self.reported.get() || IdempotencyConfig::of(req).identity() == read {
            return;
        }
        self.reported.set(true);
        tracing::error!(
            path = req.path(),
            "an IdempotencyConfig is registered inside an Idempotency middleware (on a scope or resource it wraps), where the middleware never reads it: it runs before routing, and reads the config registered where it is wrapped or above (else the process-wide default), so its requests ran on other settings; register the config at the middleware's level or above"
        );
    }
}

impl Idempotency {
    /// The middleware for every method but `GET`, `HEAD`, `OPTIONS` and `TRACE`, with the
    /// app's settings.
    pub fn new() -> Self {
        Self {
            overrides: Overrides::NONE,
            functions: Functions::NONE,
            methods: Methods::Unsafe,
        }
    }

    /// The methods whose keys are honoured; keys on other methods are ignored. An empty list
    /// would honour no key, and makes the app fail to start, as a refused
    /// [`with_overrides`](Idempotency::with_overrides) setting does.
    pub fn with_methods(mut self, methods: impl IntoIterator<Item = Method>) -> Self {
        self.methods = Methods::Only(methods.into_iter().collect());
        self
    }

    /// Overrides the app's settings for what this middleware wraps, as
    /// `#[idempotent(...)]` arguments do for one handler.
    ///
    /// A setting that no application's defaults could make right makes the app fail to
    /// start ([`Overrides::check`]): a key (or scope) header that is not a header name
    /// (`p.header("Idempotency Key")`), a TTL under [`Policy::MIN_TTL`](crate::Policy::MIN_TTL),
    /// a lease under [`Policy::MIN_LEASE`](crate::Policy::MIN_LEASE), a `key_max_len` or
    /// `max_body` of 0, an [`OnInFlight::Wait`](crate::OnInFlight::Wait) under 1 ms, a
    /// listed header that is not a header name, `Set-Cookie` listed or `Content-Encoding`
    /// dropped in `replay_headers`, a pointer that is not a JSON Pointer, a fingerprint that
    /// contradicts the overrides' `fingerprint_ignore` or JSON `key_source`, a key header
    /// clients send for another purpose ([`Policy::NOT_KEYS`](crate::Policy::NOT_KEYS)), a key
    /// header named where the key is read from the JSON body or by a
    /// [key function](Self::with_key_fn), or a setting one of the middleware's functions
    /// decides in its place (`key_source` beside [`with_key_fn`](Self::with_key_fn), `scope`
    /// beside [`with_scope_fn`](Self::with_scope_fn), `fingerprint` or `fingerprint_ignore`
    /// beside [`with_fingerprint_fn`](Self::with_fingerprint_fn)), an empty
    /// `endpoint_name` or one beside `per_endpoint(false)`, or `fingerprint_headers` or
    /// `fingerprint_ignore` beside [`OnMismatch::Replay`](crate::OnMismatch::Replay), which
    /// never reads them. Actix then reports `service initialization failed`,
    /// and the reason is logged as a `tracing` error.
    /// The attribute refuses all of them at compile time. Settings that contradict only with
    /// the application's defaults are logged on the first keyed request.
    pub fn with_overrides(mut self, configure: impl FnOnce(Overrides) -> Overrides) -> Self {
        self.overrides = configure(self.overrides);
        self
    }

    /// Compares bodies by what `f` makes of them, for bodies only the application can read
    /// (see [`FingerprintFn`](crate::FingerprintFn)), as `#[idempotent(fingerprint = f)]`
    /// does.
    pub fn with_fingerprint_fn(mut self, f: fn(&HttpRequest, &[u8]) -> Option<Vec<u8>>) -> Self {
        self.functions.fingerprint = Some(f);
        self
    }

    /// Reads each request's key with `f` instead of from a header (see
    /// [`KeyFn`](crate::KeyFn)), as `#[idempotent(key = f)]` does. Overrides that name a key
    /// header beside it make the app fail to start, as the attribute refuses `header` beside
    /// `key`: that header would never be read. Every request's body is read whole for `f`,
    /// keyed or not: one over `max_body` is refused 413 `idempotency_body_too_large`,
    /// whatever the app's own limits.
    pub fn with_key_fn(mut self, f: fn(&HttpRequest, &[u8]) -> Option<String>) -> Self {
        self.functions.key = Some(f);
        self
    }

    /// Scopes each request's key by what `f` finds in it (the caller's tenant, say), as
    /// `#[idempotent(scope = f)]` does; a request in which it finds nothing (or an empty
    /// string) gets 400
    /// `idempotency_scope_missing`. `name` stands for the function in store keys, where the
    /// attribute uses the function's path: give each function a name of its own (two under
    /// one name, returning the same string, share keys), and keep it when the function
    /// moves, or keys recorded before no longer match. To keep the keys an attribute's
    /// `scope = tenant` recorded, name it as the attribute does:
    /// `std::any::type_name_of_val(&tenant)`. See [`ScopeFn`](crate::ScopeFn) for what a scope
    /// function may safely read.
    pub fn with_scope_fn(
        mut self,
        name: &'static str,
        f: fn(&HttpRequest) -> Option<String>,
    ) -> Self {
        self.functions.scope = Some(ScopeFunction::named(name, f));
        self
    }

    /// Calls `hook` on every replay, instead of the application's hook (see
    /// [`ReplayHook`](crate::ReplayHook)), as `#[idempotent(on_replay = hook)]` does.
    pub fn on_replay(mut self, hook: fn(&HttpRequest, &mut HttpResponse)) -> Self {
        self.functions.on_replay = Some(hook);
        self
    }
}

impl Default for Idempotency {
    fn default() -> Self {
        Self::new()
    }
}

impl<S, B> Transform<S, ServiceRequest> for Idempotency
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = Error> + 'static,
    B: MessageBody + 'static,
{
    type Response = ServiceResponse<EitherBody<B, BoxBody>>;
    type Error = Error;
    type Transform = IdempotencyService<S>;
    type InitError = ();
    type Future = Ready<Result<Self::Transform, Self::InitError>>;

    /// Refuses to start (as actix-cors does with a bad setting) when the overrides give a
    /// setting no application's defaults could make right (see
    /// [`with_overrides`](Idempotency::with_overrides)), or no method's keys are honoured:
    /// the app fails to build, instead of serving requests under settings that were only
    /// logged as wrong.
    fn new_transform(&self, service: S) -> Self::Future {
        if matches!(&self.methods, Methods::Only(methods) if methods.is_empty()) {
            tracing::error!(
                "the Idempotency middleware cannot start: with_methods names no method, so it \
                 would honour no key and protect nothing; name the methods whose keys it honours, \
                 or leave the middleware out"
            );
            return ready(Err(()));
        }
        // A key function reads the key in place of any header, as a JSON `key_source` does.
        let endpoint = match (self.functions.key, self.overrides.header) {
            (Some(_), Some(header)) => Err(PolicyError::HeaderUnread(header)),
            _ => match self.functions.overridden(&self.overrides) {
                Some(error) => Err(error),
                None => Endpoint::parsed(self.overrides),
            },
        };
        let endpoint = match endpoint {
            Ok(endpoint) => endpoint,
            Err(error) => {
                tracing::error!(%error, "the Idempotency middleware cannot start");
                return ready(Err(()));
            }
        };
        ready(Ok(IdempotencyService {
            service: Rc::new(service),
            inner: Rc::new(Inner {
                endpoint,
                functions: self.functions,
                methods: self.methods.clone(),
                reported: Cell::new(false),
            }),
        }))
    }
}

/// Warns, once, that a response this middleware records was encoded for its request by a
/// layer inside it (actix's `Compress`, wrapped before `Idempotency`): replays then go only to
/// requests that accept the same coding, others get 409.
fn warn_if_negotiated(headers: &HeaderMap) {
    static WARNED: AtomicBool = AtomicBool::new(false);
    let encoded = headers
        .get(header::CONTENT_ENCODING)
        .is_some_and(|coding| coding != "identity");
    let negotiated = || {
        headers.get_all(header::VARY).any(|vary| {
            vary.to_str()
                .is_ok_and(|v| v.to_ascii_lowercase().contains("accept-encoding"))
        })
    };
    if encoded && negotiated() && !WARNED.swap(true, Ordering::Relaxed) {
        tracing::warn!(
            "Idempotency records a response compressed inside it: replays go only to requests that accept its encoding; register Compress after Idempotency (`.wrap(Idempotency::new()).wrap(Compress::default())`) so that it compresses replays too"
        );
    }
}

/// The service [`Idempotency`] wraps around the inner one.
pub struct IdempotencyService<S> {
    service: Rc<S>,
    inner: Rc<Inner>,
}

impl<S, B> Service<ServiceRequest> for IdempotencyService<S>
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = Error> + 'static,
    B: MessageBody + 'static,
{
    type Response = ServiceResponse<EitherBody<B, BoxBody>>;
    type Error = Error;
    type Future = LocalBoxFuture<'static, Result<Self::Response, Self::Error>>;

    forward_ready!(service);

    fn call(&self, req: ServiceRequest) -> Self::Future {
        let service = Rc::clone(&self.service);
        let config = IdempotencyConfig::of(req.request());
        let read = config.identity();
        let skipped = !self.inner.methods.honours(req.method());
        // A key on a method the layer leaves alone is ignored: the request is served, keyless.
        if skipped {
            let endpoint = &self.inner.endpoint;
            let header = endpoint.header(config);
            if header.is_some_and(|header| req.headers().contains_key(header)) {
                passed(req.request(), Passed::Method(endpoint.header_name(config)));
            }
        }
        let bypassed =
            skipped || bypasses(&self.inner.endpoint, &self.inner.functions, req.request());
        let outer = !bypassed && taken(req.request());
        if outer {
            // Another `Idempotency` around this one has the key in charge already.
            let inner = &self.inner;
            inner
                .endpoint
                .outer_layer_applies(inner.functions.any(), true);
        }
        if bypassed || outer {
            let inner = Rc::clone(&self.inner);
            return Box::pin(async move {
                let res = service.call(req).await?;
                inner.registered_inside(res.request(), read);
                if res.response().error().is_none() {
                    return Ok(res.map_into_left_body());
                }
                let (req, res) = res.into_parts();
                let res = (inner.endpoint)
                    .keyless(res.map_into_boxed_body(), inner.functions.key.is_some());
                Ok(ServiceResponse::new(req, res).map_into_right_body())
            });
        }
        let inner = Rc::clone(&self.inner);
        Box::pin(async move {
            let (req, payload) = req.into_parts();
            let routed = Rc::clone(&inner);
            let handler = move |req, payload| async move {
                let req = ServiceRequest::from_parts(req, payload);
                match service.call(req).await {
                    Ok(res) => {
                        routed.registered_inside(res.request(), read);
                        warn_if_negotiated(res.headers());
                        // A 404 for a request no service of the app took, without a body
                        // (actix's own not-found), is the routing's: no handler ran, so it is
                        // not recorded, as an extractor's refusal is not. No service took it
                        // when no route pattern fits its path (a scope's own path, routed to
                        // its end by the scope), or when its path was not routed to its end:
                        // none of the services that fit takes its method (`#[post]` guards
                        // its service's), where a pattern that fits says nothing of the
                        // guards. So is an empty 405 (actix's own): a resource whose routes
                        // all refused the request (none takes its method, or a route's guard
                        // refused it) answers it by its default service; a handler's own empty
                        // 405, which the layer cannot tell from it, is taken for it too (a
                        // retry runs that handler again). A default service that answers a
                        // page of its own may have done work first: recorded.
                        let request = res.request();
                        let unrouted =
                            match res.status() {
                                StatusCode::NOT_FOUND => {
                                    request.match_pattern().is_none()
                                        || !request.match_info().unprocessed().is_empty()
                                }
                                StatusCode::METHOD_NOT_ALLOWED => true,
                                _ => false,
                            } && matches!(res.response().body().size(), BodySize::Sized(0));
                        let mut reply = Reply::from_service(res.map_into_boxed_body());
                        if unrouted {
                            reply.res.extensions_mut().insert(Unrun);
                        }
                        reply
                    }
                    Err(error) => Reply::orphan(HttpResponse::from_error(error)),
                }
            };
            let reply = keyed(&inner.endpoint, inner.functions, req, payload, handler).await;
            match reply.req {
                Some(req) => Ok(ServiceResponse::new(req, reply.res).map_into_right_body()),
                // The request went down with the service; the response still goes out.
                None => {
                    Err(InternalError::from_response("idempotent request failed", reply.res).into())
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use actix_web::dev::fn_service;
    use idem_core::{BodyForm, KeySource, Policy, ReplayHeaders, Scope};

    use super::*;

    /// Whether an app wrapped in `idempotency` starts.
    async fn starts(idempotency: Idempotency) -> bool {
        let inner = fn_service(|req: ServiceRequest| async {
            Ok::<_, Error>(req.into_response(HttpResponse::Created()))
        });
        idempotency.new_transform(inner).await.is_ok()
    }

    #[actix_web::test]
    async fn a_key_header_that_is_not_a_header_name_stops_the_app_from_starting() {
        let starts =
            |header: &'static str| starts(Idempotency::new().with_overrides(|o| o.header(header)));
        assert!(starts("X-Key").await);
        assert!(!starts("X Key").await);
    }

    /// Keys read from the header its scope reads the caller's credential from would be that
    /// credential, one key for every request that carries it: refused; and so are keys read
    /// from a credential no scope reads, or another header clients send for another purpose.
    #[actix_web::test]
    async fn a_key_header_that_carries_the_scope_s_credential_stops_the_app_from_starting() {
        let starts = |configure: fn(Overrides) -> Overrides| {
            starts(Idempotency::new().with_overrides(configure))
        };
        assert!(!starts(|o| o.scope(Scope::ApiKey).header("X-API-Key")).await);
        assert!(!starts(|o| o.scope(Scope::BasicAuthUser).header("Authorization")).await);
        assert!(!starts(|o| o.scope(Scope::BasicAuthUser).header("X-API-Key")).await);
        assert!(!starts(|o| o.header("X-API-Key")).await);
        assert!(!starts(|o| o.header("Cookie")).await);
        assert!(starts(|o| o.scope(Scope::BasicAuthUser).header("X-Idempotency-Key")).await);
    }

    /// A function and an override that decide the same thing (where the key is, its scope,
    /// how bodies compare) stop the app from starting, where the function won and the
    /// override was ignored unseen (a `fingerprint_ignore` beside a fingerprint function made
    /// retries that differ only in an ignored member conflicts).
    #[actix_web::test]
    async fn a_function_and_an_override_that_decide_the_same_stop_the_app_from_starting() {
        fn key(_: &HttpRequest, _: &[u8]) -> Option<String> {
            None
        }
        fn scope(_: &HttpRequest) -> Option<String> {
            None
        }
        fn fingerprint(_: &HttpRequest, body: &[u8]) -> Option<Vec<u8>> {
            Some(body.to_vec())
        }
        let json = KeySource::Json("/id");
        assert!(
            !starts(
                Idempotency::new()
                    .with_key_fn(key)
                    .with_overrides(|p| p.key_source(json))
            )
            .await
        );
        let tenant = Scope::Header("X-Tenant");
        let scoped = Idempotency::new().with_scope_fn("t", scope);
        assert!(!starts(scoped.with_overrides(|p| p.scope(tenant))).await);
        let compared = || Idempotency::new().with_fingerprint_fn(fingerprint);
        assert!(!starts(compared().with_overrides(|p| p.fingerprint(BodyForm::Form))).await);
        assert!(!starts(compared().with_overrides(|p| p.fingerprint_ignore(&["/sent_at"]))).await);
        // Settings the functions leave alone are taken beside them.
        assert!(
            starts(
                compared()
                    .with_key_fn(key)
                    .with_overrides(|p| p.scope(tenant))
            )
            .await
        );
    }

    /// A middleware that honours keys on no method protects nothing, while its handlers look
    /// protected: it stops the app from starting, as a refused override does.
    #[actix_web::test]
    async fn a_middleware_that_honours_keys_on_no_method_stops_the_app_from_starting() {
        let starts = |methods: Vec<Method>| starts(Idempotency::new().with_methods(methods));
        assert!(starts(vec![Method::PUT]).await);
        assert!(!starts(vec![]).await);
    }

    /// A key header named beside a key function is never read: refused when the app starts,
    /// as the attribute refuses `header` with `key = f`.
    #[actix_web::test]
    async fn a_key_header_beside_a_key_function_stops_the_app_from_starting() {
        fn delivery(req: &HttpRequest, _: &[u8]) -> Option<String> {
            let id = req.headers().get("X-Delivery")?;
            id.to_str().ok().map(str::to_owned)
        }
        assert!(starts(Idempotency::new().with_key_fn(delivery)).await);
        let both = Idempotency::new()
            .with_key_fn(delivery)
            .with_overrides(|o| o.header("X-Key"));
        assert!(!starts(both).await);
    }

    #[actix_web::test]
    async fn a_ttl_that_keeps_no_record_stops_the_app_from_starting() {
        let starts = |ttl: Duration| starts(Idempotency::new().with_overrides(|o| o.ttl(ttl)));
        assert!(starts(Duration::from_secs(60)).await);
        assert!(!starts(Duration::ZERO).await);
        assert!(!starts(Duration::from_micros(500)).await);
    }

    /// Every setting the overrides give that no application default could make right is
    /// refused when the app starts, as the attribute refuses it at compile time, where it was
    /// only logged on the first keyed request and the requests served meanwhile.
    #[actix_web::test]
    async fn overrides_that_no_default_can_make_right_stop_the_app_from_starting() {
        let starts = |configure: fn(Overrides) -> Overrides| {
            starts(Idempotency::new().with_overrides(configure))
        };
        let refused: [fn(Overrides) -> Overrides; 16] = [
            |o| o.header("X-Key").key_source(KeySource::Json("/event_id")),
            |o| o.lease(Duration::from_millis(10)),
            |o| o.max_body(0),
            |o| o.on_in_flight(idem_core::OnInFlight::Wait(Duration::ZERO)),
            |o| o.scope(Scope::Header("X Tenant")),
            |o| o.header("X-Key").scope(Scope::Header("x-key")),
            |o| o.key_max_len(0),
            |o| o.per_endpoint(true).endpoint_name(""),
            |o| o.per_endpoint(false).endpoint_name("calls.create"),
            |o| o.fingerprint_headers(&["X Tenant"]),
            |o| o.replay_headers(ReplayHeaders::Only(&["Location", "Set-Cookie"])),
            |o| o.replay_headers(ReplayHeaders::Except(&["Content-Encoding"])),
            |o| o.fingerprint_ignore(&["sent_at"]),
            |o| o.key_source(KeySource::Json("event_id")),
            |o| {
                o.fingerprint(BodyForm::Bytes)
                    .fingerprint_ignore(&["/sent_at"])
            },
            |o| {
                o.fingerprint(BodyForm::Form)
                    .key_source(KeySource::Json("/event_id"))
            },
        ];
        for (i, configure) in refused.into_iter().enumerate() {
            assert!(!starts(configure).await, "refused setting {i} started");
        }
        // What the application's defaults may make right is left to them: its members
        // ignored where its bodies are compared as JSON, its key read from JSON bodies.
        let accepted: [fn(Overrides) -> Overrides; 5] = [
            |o| o.lease(Policy::MIN_LEASE).key_max_len(1),
            // Keys per endpoint, under the name.
            |o| o.endpoint_name("calls.create"),
            |o| o.fingerprint_ignore(&["/sent_at"]),
            |o| o.key_source(KeySource::Json("/event_id")),
            |o| {
                o.fingerprint(BodyForm::Json)
                    .fingerprint_ignore(&["/sent_at"])
            },
        ];
        for (i, configure) in accepted.into_iter().enumerate() {
            assert!(starts(configure).await, "accepted setting {i} refused");
        }
    }
}
