//! The handler's run under its claim, and the record of its response.

use std::future::Future;
use std::panic::AssertUnwindSafe;

use actix_web::body::{self, BoxBody, MessageBody as _};
use actix_web::dev;
use actix_web::http::header;
use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::{HttpMessage, HttpRequest, HttpResponse};
use bytes::Bytes;
use futures_util::FutureExt as _;
use idem_core::{Outcome, Response};

use super::admit::Run;
use super::replay::with_request_id;
use super::Reply;
use crate::extract::Admitted;
use crate::metrics;
use crate::request_id::RequestId;

impl Run {
    /// Hands the request's id and key to the handler, and calls it: its reply, or `Err` if it
    /// panicked.
    pub(super) fn call<H, Fut>(
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
pub(super) async fn unprotected<H, Fut>(run: Run, handler: H) -> Reply
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
pub(super) fn claimed<H, Fut>(
    lease: idem_core::Lease,
    run: Run,
    handler: H,
) -> impl Future<Output = Reply>
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
pub(super) fn rebuilt(body: Bytes) -> dev::Payload {
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

pub(super) fn panicked() -> HttpResponse {
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
