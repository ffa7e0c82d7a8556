//! One request through an `#[idempotent]` handler.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::OnceLock;

use actix_web::body::{self, BoxBody};
use actix_web::http::header::{HeaderMap, HeaderName, HeaderValue};
use actix_web::http::StatusCode;
use actix_web::{dev, web, HttpMessage, HttpRequest, HttpResponse};
use bytes::Bytes;
use futures_util::FutureExt as _;
use idem_core::{
    Begin, Completed, Fingerprint, IdempotencyError, IdempotencyKey, KeyError, Outcome, Policy,
    Response, ScopeError, ScopeValue, StoreKey,
};
use tracing::Instrument as _;

use crate::config::IdempotencyConfig;
use crate::render::error_response;

/// A handler's policy and its parsed header name, built in a `static` by the attribute.
#[derive(Debug)]
pub struct Endpoint {
    policy: Policy,
    header: OnceLock<HeaderName>,
}

impl Endpoint {
    /// An endpoint with `policy`.
    pub const fn new(policy: Policy) -> Self {
        Self {
            policy,
            header: OnceLock::new(),
        }
    }

    /// The endpoint's policy.
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    fn header(&self) -> &HeaderName {
        self.header.get_or_init(|| {
            // The attribute checks the name at compile time; a hand-built policy may not.
            HeaderName::from_bytes(self.policy.header.as_bytes())
                .unwrap_or(HeaderName::from_static("idempotency-key"))
        })
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

fn request_id(req: &HttpRequest) -> String {
    crate::RequestId::of(req).as_str().to_owned()
}

fn reject(
    req: &HttpRequest,
    endpoint: &Endpoint,
    request_id: &str,
    error: IdempotencyError,
) -> HttpResponse {
    tracing::debug!(outcome = "rejected", request_id, code = error.code(), %error);
    let config = IdempotencyConfig::of(req);
    error_response(
        &error,
        request_id,
        endpoint.policy.error_format,
        config.renderer(),
    )
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

/// Runs `handler` under `endpoint`'s policy. `handler` extracts the original handler's
/// arguments from the request and payload it is given, calls it and responds. With
/// `scope_fn`, the key's scope is what that function finds, instead of the policy's scope.
pub async fn run<H, Fut>(
    endpoint: &'static Endpoint,
    scope_fn: Option<fn(&HttpRequest) -> Option<String>>,
    req: HttpRequest,
    payload: web::Payload,
    handler: H,
) -> HttpResponse
where
    H: FnOnce(HttpRequest, dev::Payload) -> Fut + 'static,
    Fut: Future<Output = HttpResponse> + 'static,
{
    let policy = &endpoint.policy;
    let mut values = req.headers().get_all(endpoint.header());
    let Some(raw) = values.next() else {
        if policy.required {
            let error = IdempotencyError::KeyMissing {
                header: policy.header,
            };
            return reject(&req, endpoint, &request_id(&req), error);
        }
        // No key: the handler runs as if it were not annotated.
        return handler(req, payload.into_inner()).await;
    };
    let parsed = match values.next() {
        Some(_) => Err(KeyError::Multiple),
        None => IdempotencyKey::parse(raw.as_bytes(), policy.key_max_len),
    };
    let request_id = request_id(&req);
    let key = match parsed {
        Ok(key) => key,
        Err(reason) => {
            let error = IdempotencyError::KeyInvalid {
                header: policy.header,
                reason,
            };
            return reject(&req, endpoint, &request_id, error);
        }
    };
    let headers = req.headers();
    let scope = match scope_fn {
        Some(find) => find(&req)
            .map(|scope| ScopeValue::new("custom", scope.into_bytes()))
            .ok_or_else(|| {
                ScopeError::Custom(
                    "this endpoint's scope function found none for this request; send the credentials it reads".into(),
                )
            }),
        None => policy
            .scope
            .resolve(|name| headers.get(name).map(HeaderValue::as_bytes)),
    };
    let scope = match scope {
        Ok(scope) => scope,
        Err(e) => return reject(&req, endpoint, &request_id, e.into()),
    };
    let route = policy.per_endpoint.then(|| {
        let pattern = req.match_pattern();
        format!(
            "{} {}",
            req.method(),
            pattern.as_deref().unwrap_or(req.path())
        )
    });
    let store_key = StoreKey::new(&scope, route.as_deref(), &key);
    drop(scope);

    let body = match payload.to_bytes_limited(policy.max_body).await {
        Ok(Ok(body)) => body,
        Ok(Err(e)) => return with_request_id(HttpResponse::from_error(e), &request_id),
        Err(_) => {
            let error = IdempotencyError::BodyTooLarge {
                limit: policy.max_body,
            };
            return reject(&req, endpoint, &request_id, error);
        }
    };
    let fingerprint =
        Fingerprint::new(req.method().as_str(), req.path(), req.query_string(), &body);
    let span = tracing::debug_span!("idempotency", key = %key, request_id = %request_id);
    req.extensions_mut().insert(crate::IdempotencyKey(key));

    // From the claim on, the work runs detached from the connection: a client that goes away
    // cancels nothing, so the operation finishes, is recorded, and the retry gets the replay.
    let config = IdempotencyConfig::of(&req).clone();
    let task = execute(
        config,
        *policy,
        store_key,
        fingerprint,
        request_id.clone(),
        req,
        body,
        handler,
    );
    match actix_web::rt::spawn(task.instrument(span)).await {
        Ok(res) => res,
        Err(_) => with_request_id(HttpResponse::InternalServerError().finish(), &request_id),
    }
}

#[allow(clippy::too_many_arguments)]
async fn execute<H, Fut>(
    config: IdempotencyConfig,
    policy: Policy,
    store_key: StoreKey,
    fingerprint: Fingerprint,
    request_id: String,
    req: HttpRequest,
    body: Bytes,
    handler: H,
) -> HttpResponse
where
    H: FnOnce(HttpRequest, dev::Payload) -> Fut,
    Fut: Future<Output = HttpResponse>,
{
    let lease = match config.engine().begin(&policy, store_key, fingerprint).await {
        Ok(Begin::Execute(lease)) => lease,
        Ok(Begin::Replay(record)) => {
            tracing::debug!(outcome = "replayed", status = record.status);
            return replay(&record, &request_id);
        }
        Ok(Begin::Unprotected(error)) => {
            tracing::warn!(%error, outcome = "unprotected", "idempotency store failed; running without protection (fail open)");
            let res = AssertUnwindSafe(handler(req, body.into()))
                .catch_unwind()
                .await;
            return with_request_id(res.unwrap_or_else(|_| panicked()), &request_id);
        }
        Err(error) => {
            let outcome = match error {
                IdempotencyError::StoreUnavailable(_) => "store_unavailable",
                _ => "conflict",
            };
            tracing::debug!(outcome, code = error.code(), %error);
            return error_response(&error, &request_id, policy.error_format, config.renderer());
        }
    };

    let ran = lease
        .run(AssertUnwindSafe(handler(req, body.into())).catch_unwind())
        .await;
    let res = match ran {
        Ok(res) => res,
        Err(_) => {
            tracing::error!(
                outcome = "released",
                "idempotent handler panicked; key released"
            );
            release(lease).await;
            return with_request_id(panicked(), &request_id);
        }
    };
    let (head, res_body) = res.into_parts();
    let bytes = match body::to_bytes(res_body).await {
        Ok(bytes) => bytes,
        Err(_) => {
            tracing::error!(outcome = "released", "response body failed; key released");
            release(lease).await;
            return with_request_id(panicked(), &request_id);
        }
    };
    let status = head.status().as_u16();
    let response = Response {
        status,
        headers: stored_headers(head.headers()),
        body: bytes.clone(),
    };
    match lease.finish(response).await {
        Ok(Outcome::Recorded(_)) => tracing::debug!(outcome = "executed", status),
        Ok(Outcome::Released) => tracing::debug!(outcome = "released", status),
        Ok(Outcome::Lost) => tracing::warn!(
            outcome = "lost",
            status,
            "idempotency claim was lost before completion; response not recorded"
        ),
        Err(error) => tracing::error!(
            outcome = "unrecorded",
            status,
            %error,
            "recording the response failed; the claim lapses with its lease"
        ),
    }
    with_request_id(head.set_body(BoxBody::new(bytes)), &request_id)
}

async fn release(lease: idem_core::Lease) {
    if let Err(error) = lease.release().await {
        tracing::error!(%error, "releasing the idempotency claim failed; it lapses with its lease");
    }
}

fn panicked() -> HttpResponse {
    HttpResponse::InternalServerError().finish()
}

fn stored_headers(headers: &HeaderMap) -> Vec<(String, Bytes)> {
    headers
        .iter()
        .filter(|(name, _)| replayable(name))
        .map(|(name, value)| {
            (
                name.as_str().to_owned(),
                Bytes::copy_from_slice(value.as_bytes()),
            )
        })
        .collect()
}

fn with_request_id(mut res: HttpResponse, request_id: &str) -> HttpResponse {
    if !res.headers().contains_key(&crate::REQUEST_ID) {
        if let Ok(value) = HeaderValue::from_str(request_id) {
            res.headers_mut().insert(crate::REQUEST_ID.clone(), value);
        }
    }
    res
}

fn replay(record: &Completed, request_id: &str) -> HttpResponse {
    let status = StatusCode::from_u16(record.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut res = HttpResponse::with_body(status, BoxBody::new(record.body.clone()));
    let headers = res.headers_mut();
    for (name, value) in &record.headers {
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_maybe_shared(value.clone()),
        ) {
            headers.append(name, value);
        }
    }
    headers.insert(
        crate::IDEMPOTENT_REPLAYED.clone(),
        HeaderValue::from_static("true"),
    );
    if let Ok(value) = HeaderValue::from_str(request_id) {
        headers.insert(crate::REQUEST_ID.clone(), value);
    }
    res
}

/// Lets the attribute's generated code respond with whatever the original handler returned.
pub fn respond<R: actix_web::Responder>(req: &HttpRequest, value: R) -> HttpResponse {
    value.respond_to(req).map_into_boxed_body()
}
