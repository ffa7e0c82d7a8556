//! Admission: what a request needs before its key can be claimed. The key and scope are
//! checked, the body read (bounded) and the request fingerprinted; a request without a key
//! goes straight to the handler.

use actix_web::dev;
use actix_web::error::PayloadError;
use actix_web::http::header;
use actix_web::{HttpMessage, HttpRequest, HttpResponse};
use bytes::{Bytes, BytesMut};
use futures_util::StreamExt as _;
use idem_core::{Fingerprint, IdempotencyError, IdempotencyKey, KeyError, Policy, StoreKey};

use super::replay::with_request_id;
use super::Endpoint;
use crate::config::IdempotencyConfig;
use crate::extract::Admitted;
use crate::metrics;
use crate::render::error_response;
use crate::request_id::RequestId;
use crate::scope::ScopeFunction;

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

/// A keyed request: everything its claim ([`claim`], or [`execute`]) and its run need.
pub(crate) struct Keyed {
    pub(super) config: IdempotencyConfig,
    pub(super) policy: Policy,
    pub(super) store_key: StoreKey,
    pub(super) fingerprint: Fingerprint,
    pub(super) span: tracing::Span,
    pub(super) run: Run,
}

/// What the handler of a keyed request needs, once its key is claimed.
pub(super) struct Run {
    pub(super) key: IdempotencyKey,
    pub(super) request_id: RequestId,
    pub(super) req: HttpRequest,
    pub(super) body: Bytes,
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
    endpoint.check(&policy, &config);
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
