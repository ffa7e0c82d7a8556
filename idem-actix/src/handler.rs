//! One request through the idempotency layer, shared by the attribute and the middleware:
//! [`admit`] decides what a request needs, [`keyed`] claims its key and runs it [`detached`].

use std::convert::Infallible;
use std::future::{ready, Future, Ready};
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::OnceLock;
use std::task::Poll;

use actix_web::body::{self, BoxBody, MessageBody as _};
use actix_web::dev::{self, ServiceResponse};
use actix_web::error::PayloadError;
use actix_web::http::header;
use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::http::StatusCode;
use actix_web::{FromRequest, HttpMessage, HttpRequest, HttpResponse};
use bytes::{Bytes, BytesMut};
use futures_util::{FutureExt as _, StreamExt as _};
use idem_core::{
    Begin, Completed, Fingerprint, IdempotencyError, IdempotencyKey, KeyError, Outcome, Overrides,
    Policy, Response, StoreKey,
};
use tracing::Instrument as _;

use crate::config::IdempotencyConfig;
use crate::metrics;
use crate::render::error_response;
use crate::request_id::RequestId;
use crate::scope::ScopeFunction;

/// One endpoint's (or one middleware's) overrides of the application's policy, and its parsed
/// header name, built in a `static` by the attribute.
#[derive(Debug)]
pub struct Endpoint {
    overrides: Overrides,
    header: OnceLock<HeaderName>,
}

impl Endpoint {
    /// An endpoint with `overrides` on top of the application's policy.
    pub const fn new(overrides: Overrides) -> Self {
        Self {
            overrides,
            header: OnceLock::new(),
        }
    }

    /// The key's header: the endpoint's own, else the application's.
    fn header<'a>(&'a self, config: &'a IdempotencyConfig) -> &'a HeaderName {
        match self.overrides.header {
            Some(name) => self.header.get_or_init(|| parse_header(name)),
            None => config.header(),
        }
    }
}

/// A header name from a policy; the attribute checks names at compile time, a hand-built
/// policy may not have.
pub(crate) fn parse_header(name: &str) -> HeaderName {
    HeaderName::from_bytes(name.as_bytes()).unwrap_or(HeaderName::from_static("idempotency-key"))
}

/// What the layer hands the handler of a keyed request it runs: the request's id and key
/// (for the [`RequestId`] and [`IdempotencyKey`](crate::IdempotencyKey) extractors). It also
/// marks the request as taken in charge, so that an inner layer steps aside.
pub(crate) struct Admitted {
    pub(crate) request_id: RequestId,
    pub(crate) key: crate::IdempotencyKey,
}

/// A function that finds the scope of a request: the tenant (or other owner) of its key, or
/// `None` when the request has none (the answer is then 400 `idempotency_scope_missing`).
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

/// What the layer makes of a request.
#[allow(
    clippy::large_enum_variant,
    reason = "lives in the one boxed future of a keyed request; boxing the keyed variant would cost a second allocation"
)]
pub(crate) enum Admission {
    /// No key, and none required: run the handler as if there were no layer.
    Pass(HttpRequest, dev::Payload),
    /// The layer answers itself; the handler does not run.
    Answer(HttpRequest, HttpResponse),
    /// A keyed request, ready to claim.
    Keyed(Keyed),
}

/// Work of a keyed request left to run, boxed: the caller's future holds only a pointer to it,
/// and it can move to a task of its own (see [`detached`]).
type Work = Pin<Box<dyn Future<Output = Reply>>>;

/// A keyed request: everything its claim ([`claim`], or [`execute`]) and its run need.
pub(crate) struct Keyed {
    config: IdempotencyConfig,
    policy: Policy,
    store_key: StoreKey,
    fingerprint: Fingerprint,
    span: tracing::Span,
    run: Run,
}

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

    pub(crate) fn orphan(res: HttpResponse) -> Self {
        Self { req: None, res }
    }

    pub(crate) fn from_service(res: ServiceResponse) -> Self {
        let (req, res) = res.into_parts();
        Self::new(req, res)
    }
}

fn reject(
    req: HttpRequest,
    policy: &Policy,
    config: &IdempotencyConfig,
    request_id: &RequestId,
    error: IdempotencyError,
) -> Admission {
    tracing::debug!(outcome = "rejected", %request_id, code = error.code(), %error);
    metrics::rejected(error.code());
    let res = error_response(&error, request_id, policy.error_format, config.renderer());
    Admission::Answer(req, res)
}

/// Whether a request goes straight to the handler, with no store work at all: it has no key,
/// and the endpoint does not require one. The cheap test every request takes first.
pub(crate) fn bypasses(endpoint: &Endpoint, req: &HttpRequest) -> bool {
    let config = IdempotencyConfig::of(req);
    let required = endpoint
        .overrides
        .required
        .unwrap_or(config.policy().required);
    !required && !req.headers().contains_key(endpoint.header(config))
}

/// Whether an outer layer (the middleware around an attributed handler) has the request in
/// charge already: this one then steps aside.
pub(crate) fn taken(req: &HttpRequest) -> bool {
    req.extensions().contains::<Admitted>()
}

/// Validates the key and scope, reads the body and fingerprints the request.
pub(crate) async fn admit(
    endpoint: &Endpoint,
    scope_fn: Option<ScopeFunction>,
    req: HttpRequest,
    payload: dev::Payload,
) -> Admission {
    let config = IdempotencyConfig::of(&req).clone();
    let policy = endpoint.overrides.apply_to(*config.policy());
    let mut values = req.headers().get_all(endpoint.header(&config));
    let Some(raw) = values.next() else {
        if policy.required {
            let error = IdempotencyError::KeyMissing {
                header: policy.header,
            };
            let id = RequestId::of(&req);
            return reject(req, &policy, &config, &id, error);
        }
        return Admission::Pass(req, payload);
    };
    let parsed = match values.next() {
        Some(_) => Err(KeyError::Multiple),
        None => IdempotencyKey::parse(raw.as_bytes(), policy.key_max_len),
    };
    // Kept with the request only if the handler runs: a replay or a refusal needs it just
    // for its own response.
    let request_id = RequestId::peek(&req);
    let key = match parsed {
        Ok(key) => key,
        Err(reason) => {
            let error = IdempotencyError::KeyInvalid {
                header: policy.header,
                reason,
            };
            return reject(req, &policy, &config, &request_id, error);
        }
    };
    let scope = crate::scope::resolve(&req, policy.scope, scope_fn);
    let store_key = match scope {
        Ok(scope) => {
            let route = policy.per_endpoint.then(|| {
                let pattern = req.match_pattern();
                format!(
                    "{} {}",
                    req.method(),
                    pattern.as_deref().unwrap_or(req.path())
                )
            });
            StoreKey::new(&scope, route.as_deref(), &key)
        }
        Err(e) => return reject(req, &policy, &config, &request_id, e.into()),
    };

    let body = match read_body(&req, payload, policy.max_body).await {
        Ok(body) => body,
        Err(BodyError::Payload(e)) => {
            let res = with_request_id(HttpResponse::from_error(e), &request_id);
            return Admission::Answer(req, res);
        }
        Err(BodyError::TooLarge) => {
            let error = IdempotencyError::BodyTooLarge {
                limit: policy.max_body,
            };
            return reject(req, &policy, &config, &request_id, error);
        }
    };
    let fingerprint =
        Fingerprint::new(req.method().as_str(), req.path(), req.query_string(), &body);
    let span = tracing::debug_span!("idempotency", key = %key, request_id = %request_id);
    Admission::Keyed(Keyed {
        config,
        policy,
        store_key,
        fingerprint,
        span,
        run: Run {
            key,
            request_id,
            req,
            body,
        },
    })
}

/// Why a keyed request's body could not be read.
enum BodyError {
    /// It is longer than the policy's `max_body`.
    TooLarge,
    /// The payload failed (a malformed chunk, a client gone).
    Payload(PayloadError),
}

impl From<PayloadError> for BodyError {
    fn from(error: PayloadError) -> Self {
        Self::Payload(error)
    }
}

/// Reads the whole body, up to `limit` bytes. A body that arrives in one chunk (most do) is
/// kept as it came, without a copy; a longer one is gathered in a buffer sized by its
/// `Content-Length`.
async fn read_body(
    req: &HttpRequest,
    mut payload: dev::Payload,
    limit: usize,
) -> Result<Bytes, BodyError> {
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<usize>().ok());
    if declared.is_some_and(|length| length > limit) {
        return Err(BodyError::TooLarge);
    }
    let Some(first) = payload.next().await.transpose()? else {
        return Ok(Bytes::new());
    };
    if first.len() > limit {
        return Err(BodyError::TooLarge);
    }
    let Some(mut chunk) = payload.next().await.transpose()? else {
        return Ok(first);
    };
    let mut body = BytesMut::with_capacity(declared.unwrap_or(0).max(first.len() + chunk.len()));
    body.extend_from_slice(&first);
    loop {
        if body.len() + chunk.len() > limit {
            return Err(BodyError::TooLarge);
        }
        body.extend_from_slice(&chunk);
        match payload.next().await.transpose()? {
            Some(next) => chunk = next,
            None => return Ok(body.freeze()),
        }
    }
}

/// Runs `work` detached from the connection: a client that goes away cancels nothing, so an
/// operation that started finishes, is recorded, and the retry gets the replay.
///
/// The work runs here until it first has to wait (a store round trip, a handler that awaits
/// I/O), and from then on as a task of its own that the connection cannot cancel. A replay,
/// or a quick handler on the embedded store, never waits, and so costs no task.
///
/// `work` comes boxed, so that the caller's own future holds only a pointer to it.
pub(crate) async fn detached(mut work: Work) -> Reply {
    // Nothing awaits between this poll and the spawn, so the work cannot be cancelled
    // between.
    let first = std::future::poll_fn(|cx| Poll::Ready(work.as_mut().poll(cx))).await;
    if let Poll::Ready(reply) = first {
        return reply;
    }
    match actix_web::rt::spawn(work).await {
        Ok(reply) => reply,
        // The handler's panics are caught where it runs; only a bug of this crate lands here.
        Err(_) => Reply::orphan(panicked()),
    }
}

/// A request with a key (or an endpoint that requires one): admits it, then claims the key
/// and runs `handler` [`detached`], or answers without it.
///
/// The admission (checks, reading the body) stays with the connection: a client that goes
/// away before its body has arrived leaves nothing behind, and a body still arriving costs no
/// task. Only the claim and what follows are detached: the claim and the handler's run when
/// the store must be waited for, the handler's run alone when the store answers the claim in
/// the call (the embedded one does: nothing can cancel a claim that never waits).
pub(crate) async fn keyed<H, Fut>(
    endpoint: &Endpoint,
    scope_fn: Option<ScopeFunction>,
    req: HttpRequest,
    payload: dev::Payload,
    handler: H,
) -> Reply
where
    H: FnOnce(HttpRequest, dev::Payload) -> Fut + 'static,
    Fut: Future<Output = Reply> + 'static,
{
    // Futures are built in `let` statements of their own throughout: a value bound in an
    // awaited expression, or in a `match` arm, keeps its room in this future across the await.
    let (work, detach): (Work, bool) = match admit(endpoint, scope_fn, req, payload).await {
        // Boxed: `run` sends requests without a key straight to the handler, so this is
        // rare, and the handler's future would otherwise swell this one.
        Admission::Pass(req, payload) => (Box::pin(handler(req, payload)), false),
        Admission::Answer(req, res) => return Reply::new(req, res),
        Admission::Keyed(keyed) => match claim(keyed, handler) {
            Settled::Answer(reply) => return reply,
            Settled::Run(work) => (work, true),
        },
    };
    if detach {
        detached(work).await
    } else {
        work.await
    }
}

/// Claims the key in place when the store answers in the call (the embedded one does): the
/// answer, if the handler does not run, else the handler's run, left to detach. On a store
/// that must be waited for, the claim is left to detach with the run.
fn claim<H, Fut>(keyed: Keyed, handler: H) -> Settled
where
    H: FnOnce(HttpRequest, dev::Payload) -> Fut + 'static,
    Fut: Future<Output = Reply> + 'static,
{
    let span = keyed.span.clone();
    let engine = keyed.config.engine();
    let Some(begun) = engine.begin_now(&keyed.policy, keyed.store_key, keyed.fingerprint) else {
        return Settled::Run(in_span(Box::pin(execute(keyed, handler)), span));
    };
    let settled = {
        let _entered = (!span.is_disabled()).then(|| span.enter());
        settle(keyed, begun, handler)
    };
    match settled {
        Settled::Run(work) => Settled::Run(in_span(work, span)),
        answer => answer,
    }
}

/// `work` in the request's span when a subscriber wants it: a span no subscriber wants would
/// still cost an enter and an exit on every poll.
fn in_span(work: Work, span: tracing::Span) -> Work {
    if span.is_disabled() {
        work
    } else {
        Box::pin(work.instrument(span))
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
/// arguments from the request and payload it is given, calls it and responds. With
/// `scope_fn`, the key's scope is what that function finds, instead of the policy's scope.
pub async fn run<H, Fut>(
    endpoint: &Endpoint,
    scope_fn: Option<ScopeFunction>,
    Raw { req, payload }: Raw,
    handler: H,
) -> HttpResponse
where
    H: FnOnce(HttpRequest, dev::Payload) -> Fut + 'static,
    Fut: Future<Output = Reply> + 'static,
{
    if bypasses(endpoint, &req) || taken(&req) {
        return handler(req, payload).await.res;
    }
    // Boxed, so that requests without a key do not carry the keyed path's state.
    let keyed = Box::pin(keyed(endpoint, scope_fn, req, payload, handler));
    keyed.await.res
}

/// Claims the key, then answers with the replay, the refusal, or what `handler` answers.
///
/// An `async` block rather than an `async fn`, whose future would hold its argument twice (as
/// passed, and moved into the body); the handler's run is built in a `let` of its own, as a
/// value bound in a `match` arm would keep its room in this future across the await.
#[allow(
    clippy::manual_async_fn,
    reason = "an `async fn` would hold its argument twice"
)]
fn execute<H, Fut>(keyed: Keyed, handler: H) -> impl Future<Output = Reply>
where
    H: FnOnce(HttpRequest, dev::Payload) -> Fut + 'static,
    Fut: Future<Output = Reply> + 'static,
{
    async move {
        let begun = keyed
            .config
            .engine()
            .begin(&keyed.policy, keyed.store_key, keyed.fingerprint)
            .await;
        let ran = match settle(keyed, begun, handler) {
            Settled::Answer(reply) => return reply,
            Settled::Run(ran) => ran,
        };
        ran.await
    }
}

/// What a keyed request comes to once its claim is decided.
enum Settled {
    /// The answer, without the handler: a replay or a refusal.
    Answer(Reply),
    /// Work left to run: the handler's run under the claim (or unprotected, when the store
    /// failed open), or, from [`claim`], the claim on a store that must be waited for and what
    /// follows.
    ///
    /// A future of its own, boxed only when the handler runs: a replay does not build (nor
    /// move about) the handler's future, often the largest part of a request's state.
    Run(Work),
}

/// Answers the replay or the refusal `begun` calls for, or says to run the handler.
fn settle<H, Fut>(keyed: Keyed, begun: Result<Begin, IdempotencyError>, handler: H) -> Settled
where
    H: FnOnce(HttpRequest, dev::Payload) -> Fut + 'static,
    Fut: Future<Output = Reply> + 'static,
{
    match begun {
        Ok(Begin::Execute(lease)) => Settled::Run(Box::pin(claimed(lease, keyed.run, handler))),
        Ok(Begin::Replay(record)) => {
            tracing::debug!(outcome = "replayed", status = record.response.status());
            metrics::outcome("replayed");
            let run = keyed.run;
            Settled::Answer(Reply::new(run.req, replay(&record, &run.request_id)))
        }
        Ok(Begin::Unprotected(error)) => {
            tracing::warn!(%error, outcome = "unprotected", "idempotency store failed; running without protection (fail open)");
            metrics::outcome("unprotected");
            Settled::Run(Box::pin(unprotected(keyed.run, handler)))
        }
        Err(error) => {
            let outcome = match error {
                IdempotencyError::StoreUnavailable(_) => "store_unavailable",
                _ => "conflict",
            };
            tracing::debug!(outcome, code = error.code(), %error);
            metrics::refused(&error);
            let res = error_response(
                &error,
                &keyed.run.request_id,
                keyed.policy.error_format,
                keyed.config.renderer(),
            );
            Settled::Answer(Reply::new(keyed.run.req, res))
        }
    }
}

/// What the handler of a keyed request needs, once its key is claimed.
struct Run {
    key: IdempotencyKey,
    request_id: RequestId,
    req: HttpRequest,
    body: Bytes,
}

impl Run {
    /// Hands the request's id and key to the handler, and calls it: its reply, or `Err` if it
    /// panicked.
    fn call<H, Fut>(
        self,
        handler: H,
    ) -> (RequestId, impl Future<Output = std::thread::Result<Reply>>)
    where
        H: FnOnce(HttpRequest, dev::Payload) -> Fut,
        Fut: Future<Output = Reply>,
    {
        let Run {
            key,
            request_id,
            req,
            body,
        } = self;
        req.extensions_mut().insert(Admitted {
            request_id: request_id.clone(),
            key: crate::IdempotencyKey(key),
        });
        let ran = AssertUnwindSafe(handler(req, rebuilt(body))).catch_unwind();
        (request_id, ran)
    }
}

/// Runs the handler without a claim: the store failed and the policy fails open.
async fn unprotected<H, Fut>(run: Run, handler: H) -> Reply
where
    H: FnOnce(HttpRequest, dev::Payload) -> Fut,
    Fut: Future<Output = Reply>,
{
    let (request_id, ran) = run.call(handler);
    let Reply { req, res } = ran.await.unwrap_or_else(|_| Reply::orphan(panicked()));
    Reply {
        req,
        res: with_request_id(res, &request_id),
    }
}

/// Runs the handler under its claim, and records its response (or releases the claim).
///
/// An `async` block rather than an `async fn`, whose future would hold its arguments twice.
#[allow(
    clippy::manual_async_fn,
    reason = "an `async fn` would hold its arguments twice"
)]
fn claimed<H, Fut>(lease: idem_core::Lease, run: Run, handler: H) -> impl Future<Output = Reply>
where
    H: FnOnce(HttpRequest, dev::Payload) -> Fut,
    Fut: Future<Output = Reply>,
{
    async move {
        let (request_id, ran) = run.call(handler);
        let ran = lease.run(ran).await;
        let Reply { req, res } = match ran {
            Ok(reply) => reply,
            Err(_) => {
                tracing::error!(
                    outcome = "released",
                    "idempotent handler panicked; key released"
                );
                metrics::outcome("released");
                release(lease).await;
                return Reply::orphan(with_request_id(panicked(), &request_id));
            }
        };
        let (head, res_body) = res.into_parts();
        // A body that is bytes already (most are) is taken as it is, without a copy.
        let collected = match res_body.try_into_bytes() {
            Ok(bytes) => Ok(bytes),
            Err(res_body) => body::to_bytes(res_body).await,
        };
        let bytes = match collected {
            Ok(bytes) => bytes,
            Err(_) => {
                tracing::error!(outcome = "released", "response body failed; key released");
                metrics::outcome("released");
                release(lease).await;
                return Reply {
                    req,
                    res: with_request_id(panicked(), &request_id),
                };
            }
        };
        let status = head.status().as_u16();
        let response = Response::new(status, Replayable(head.headers()), &bytes);
        let outcome = match lease.finish(response).await {
            Ok(Outcome::Recorded) => "executed",
            Ok(Outcome::Released) => "released",
            Ok(Outcome::Lost) => {
                tracing::warn!(
                    status,
                    "idempotency claim was lost before completion; response not recorded"
                );
                "lost"
            }
            Err(error) => {
                tracing::error!(status, %error, "recording the response failed; the claim lapses with its lease");
                "unrecorded"
            }
        };
        tracing::debug!(outcome, status);
        metrics::outcome(outcome);
        Reply {
            req,
            res: with_request_id(head.set_body(BoxBody::new(bytes)), &request_id),
        }
    }
}

/// The payload the handler's extractors read: the body read before, in one chunk.
fn rebuilt(body: Bytes) -> dev::Payload {
    if body.is_empty() {
        return dev::Payload::None;
    }
    // One small box, where `Payload::from(Bytes)` builds an h1 channel (two allocations).
    let chunk = futures_util::stream::once(std::future::ready(Ok(body)));
    dev::Payload::Stream {
        payload: Box::pin(chunk),
    }
}

async fn release(lease: idem_core::Lease) {
    if let Err(error) = lease.release().await {
        tracing::error!(%error, "releasing the idempotency claim failed; it lapses with its lease");
    }
}

fn panicked() -> HttpResponse {
    HttpResponse::InternalServerError().finish()
}

/// The headers of a response that its replays repeat.
#[derive(Clone, Copy)]
struct Replayable<'a>(&'a header::HeaderMap);

type Header<'a> = (&'a HeaderName, &'a HeaderValue);

impl<'a> IntoIterator for Replayable<'a> {
    type Item = (&'a str, &'a [u8]);
    type IntoIter = std::iter::Map<
        std::iter::Filter<header::map::Iter<'a>, fn(&Header<'a>) -> bool>,
        fn(Header<'a>) -> Self::Item,
    >;

    fn into_iter(self) -> Self::IntoIter {
        self.0
            .iter()
            .filter((|(name, _)| replayable(name)) as fn(&Header<'a>) -> bool)
            .map(|(name, value)| (name.as_str(), value.as_bytes()))
    }
}

/// Headers that describe one transfer or one request, never replayed.
fn replayable(name: &HeaderName) -> bool {
    !matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "transfer-encoding"
            | "te"
            | "trailer"
            | "upgrade"
            | "date"
            | "content-length"
            | "x-request-id"
            | "idempotent-replayed"
    )
}

fn with_request_id(mut res: HttpResponse, request_id: &RequestId) -> HttpResponse {
    if !res.headers().contains_key(&crate::REQUEST_ID) {
        res.headers_mut()
            .insert(crate::REQUEST_ID.clone(), request_id.header_value().clone());
    }
    res
}

fn replay(record: &Completed, request_id: &RequestId) -> HttpResponse {
    let recorded = &record.response;
    let status =
        StatusCode::from_u16(recorded.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut res = HttpResponse::with_body(status, BoxBody::new(recorded.body()));
    let headers = res.headers_mut();
    // Sized once for the stored headers and the two added below, rather than grown twice.
    headers.reserve(recorded.header_count() + 2);
    for (name, value) in recorded.shared_headers() {
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_maybe_shared(value),
        ) {
            headers.append(name, value);
        }
    }
    headers.insert(
        crate::IDEMPOTENT_REPLAYED.clone(),
        HeaderValue::from_static("true"),
    );
    // Stored headers never hold an `X-Request-ID` (see `replayable`): the replay carries this
    // request's.
    headers.insert(crate::REQUEST_ID.clone(), request_id.header_value().clone());
    res
}

/// Lets the attribute's generated code respond with whatever the original handler returned.
pub fn respond<R: actix_web::Responder>(req: HttpRequest, value: R) -> Reply {
    let res = value.respond_to(&req).map_into_boxed_body();
    Reply::new(req, res)
}

/// Lets the attribute's generated code answer an extractor's error.
pub fn fail(req: HttpRequest, error: impl Into<actix_web::Error>) -> Reply {
    Reply::new(req, HttpResponse::from_error(error))
}
