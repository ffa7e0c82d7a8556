//! The handler's run under its claim, and the record of its response.

use std::error::Error as StdError;
use std::future::{poll_fn, Future};
use std::panic::AssertUnwindSafe;
use std::pin::Pin;

use actix_web::body::{BodySize, BodyStream, BoxBody, MessageBody as _};
use actix_web::dev;
use actix_web::http::header;
use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::{HttpMessage, HttpRequest, HttpResponse};
use bytes::{Bytes, BytesMut};
use futures_util::{FutureExt as _, StreamExt as _};
use idem_core::{Outcome, Policy, Response};

use super::admit::Run;
use super::replay::with_request_id;
use super::Reply;
use crate::extract::Admitted;
use crate::metrics;
use crate::request_id::RequestId;
use crate::transaction::{Loan, Offer};

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

/// What the recording of a response needs of the endpoint's policy.
#[derive(Clone, Copy)]
pub(super) struct Keep {
    /// The largest body collected for the record ([`Policy::max_response`]).
    pub(super) max_response: usize,
    /// Whether `Set-Cookie` is recorded ([`Policy::replay_set_cookie`]).
    pub(super) set_cookie: bool,
}

impl Keep {
    pub(super) fn of(policy: &Policy) -> Self {
        Self {
            max_response: policy.max_response,
            set_cookie: policy.replay_set_cookie,
        }
    }
}

/// Runs the handler under its claim, and records its response (or releases the claim).
///
/// The response's body is collected under the lease too: a streamed body is part of the
/// operation, so the claim is renewed until it has been read, and a duplicate meanwhile gets
/// 409. Collection stops at `max_response`: a longer body is sent on as it comes, and
/// recorded without its body (retries get 409 `idempotency_response_too_large`).
///
/// With an `offer` (a store that lends transactions), a handler that takes its
/// `Transaction` has its writes committed with the record, or rolled
/// back with the release.
///
/// An `async` block, for a smaller future (see "Future sizes" in `idem_core`'s engine).
#[allow(
    clippy::manual_async_fn,
    reason = "smaller future, see idem_core's engine"
)]
pub(super) fn claimed<H, Fut>(
    lease: idem_core::Lease,
    run: Run,
    keep: Keep,
    offer: Option<Offer>,
    handler: H,
) -> impl Future<Output = Reply>
where
    H: FnOnce(HttpRequest, dev::Payload) -> Fut,
    Fut: Future<Output = Reply>,
{
    async move {
        let loan = offer.map(|offer| offer.lend(&run.req, &lease));
        let (request_id, ran) = run.call(handler);
        let ran = lease
            .run(async move {
                let Reply { req, res } = ran.await?;
                let (head, body) = res.into_parts();
                Ok::<_, Box<dyn std::any::Any + Send>>((
                    req,
                    head,
                    collect(body, keep.max_response).await,
                ))
            })
            .await;
        let (req, head, collected) = match ran {
            Ok(ran) => ran,
            Err(_) => {
                tracing::error!(
                    outcome = "released",
                    "idempotent handler panicked; key released"
                );
                metrics::outcome("released");
                release(lease, loan).await;
                return Reply::orphan(with_request_id(panicked(), &request_id));
            }
        };
        let status = head.status().as_u16();
        let headers = Replayable {
            headers: head.headers(),
            set_cookie: keep.set_cookie,
        };
        let (response, body) = match collected {
            Ok(Collected::Whole(bytes)) => {
                (Response::new(status, headers, &bytes), BoxBody::new(bytes))
            }
            Ok(Collected::Overflow { body, size }) => (Response::omitted(status, size), body),
            Err(_) => {
                tracing::error!(outcome = "released", "response body failed; key released");
                metrics::outcome("released");
                release(lease, loan).await;
                return Reply {
                    req,
                    res: with_request_id(panicked(), &request_id),
                };
            }
        };
        let res = head.set_body(body);
        let (outcome, res) = match loan.and_then(Loan::close) {
            Some(taken) => taken.finish(lease, response, res, &request_id).await,
            None => (recorded(lease, response).await, res),
        };
        tracing::debug!(outcome, status);
        metrics::outcome(outcome);
        Reply {
            req,
            res: with_request_id(res, &request_id),
        }
    }
}

/// Records `response` (or releases the claim): the outcome, for the log and the metrics.
async fn recorded(lease: idem_core::Lease, response: Response) -> &'static str {
    let status = response.status();
    match lease.finish(response).await {
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
            tracing::error!(status, %error, "recording the response failed while retried for a lease; the claim lapses with its lease");
            "unrecorded"
        }
    }
}

/// A response body, as far as the record needs it.
enum Collected {
    /// The whole body, no longer than the limit.
    Whole(Bytes),
    /// A body longer than the limit: what was read and the rest, to send on as they come, and
    /// its size (as declared, or as far as it was read).
    Overflow { body: BoxBody, size: u64 },
}

/// Reads `body` whole, up to `limit` bytes. A body that is bytes already (most are) is taken
/// as it is, without a copy; one that declares a size over the limit is not read at all.
async fn collect(body: BoxBody, limit: usize) -> Result<Collected, Box<dyn StdError>> {
    let mut body = match body.try_into_bytes() {
        Ok(bytes) if bytes.len() <= limit => return Ok(Collected::Whole(bytes)),
        Ok(bytes) => {
            let size = bytes.len() as u64;
            return Ok(Collected::Overflow {
                body: BoxBody::new(bytes),
                size,
            });
        }
        Err(body) => body,
    };
    if let BodySize::Sized(size) = body.size() {
        if size > limit as u64 {
            return Ok(Collected::Overflow { body, size });
        }
    }
    let mut read = BytesMut::new();
    while let Some(chunk) = poll_fn(|cx| Pin::new(&mut body).poll_next(cx)).await {
        let chunk = chunk?;
        if read.len() + chunk.len() > limit {
            let size = (read.len() + chunk.len()) as u64;
            let head = futures_util::stream::iter([Ok(read.freeze()), Ok(chunk)]);
            let rest = futures_util::stream::poll_fn(move |cx| Pin::new(&mut body).poll_next(cx));
            return Ok(Collected::Overflow {
                body: BoxBody::new(BodyStream::new(head.chain(rest))),
                size,
            });
        }
        read.extend_from_slice(&chunk);
    }
    Ok(Collected::Whole(read.freeze()))
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

/// Releases the claim of a handler that failed, after rolling back the transaction it took.
async fn release(lease: idem_core::Lease, loan: Option<Loan>) {
    if let Some(taken) = loan.and_then(Loan::close) {
        return taken.abandon(lease).await;
    }
    if let Err(error) = lease.release().await {
        tracing::error!(%error, "releasing the idempotency claim failed; it lapses with its lease");
    }
}

pub(super) fn panicked() -> HttpResponse {
    HttpResponse::InternalServerError().finish()
}

/// The headers of a response that its replays repeat: all but those of one transfer or one
/// request, and `Set-Cookie` only when the endpoint allows it. Copied, since a header map's
/// iterator cannot be cloned and [`Response::new`] reads the headers twice.
#[derive(Clone, Copy)]
struct Replayable<'a> {
    headers: &'a header::HeaderMap,
    set_cookie: bool,
}

type Header<'a> = (&'a HeaderName, &'a HeaderValue);

impl<'a> IntoIterator for Replayable<'a> {
    type Item = (&'a str, &'a [u8]);
    type IntoIter = std::iter::Map<
        std::iter::Filter<header::map::Iter<'a>, fn(&Header<'a>) -> bool>,
        fn(Header<'a>) -> Self::Item,
    >;

    fn into_iter(self) -> Self::IntoIter {
        let keep: fn(&Header<'a>) -> bool = match self.set_cookie {
            true => |(name, _)| replayable(name),
            false => |(name, _)| replayable(name) && *name != header::SET_COOKIE,
        };
        self.headers
            .iter()
            .filter(keep)
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
