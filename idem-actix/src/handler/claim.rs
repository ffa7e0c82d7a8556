//! The claim of a keyed request's key, and what it settles on: a replay, a refusal, or the
//! handler's run under the claim.

use std::future::Future;

use actix_web::dev;
use actix_web::HttpRequest;
use idem_core::{Begin, IdempotencyError};
use tracing::Instrument as _;

use super::admit::{admit, Admission, Keyed};
use super::detach::{detached, orphans};
use super::record::{claimed, unprotected, Keep};
use super::replay::{replay, unaccepted_encoding};
use super::{Endpoint, Reply, Work};
use crate::functions::Functions;
use crate::metrics;
use crate::render::error_response;
use crate::transaction::Offer;

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
    functions: Functions,
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
    let (work, detach): (Work, bool) = match admit(endpoint, functions, req, payload).await {
        // Boxed: `run` sends requests without a key straight to the handler, so this is
        // rare, and the handler's future would otherwise swell this one.
        Admission::Pass(req, payload) => (Box::pin(handler(req, payload)), false),
        Admission::Answer(req, res) => return Reply::new(req, res),
        // Past the bound of runs this worker finishes for clients that went away, nothing
        // new is claimed: a client that resets every request cannot pile them up.
        Admission::Keyed(keyed) if orphans() >= keyed.config.detached_limit() => {
            return overloaded(keyed)
        }
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

/// The answer to a keyed request that comes while this worker is finishing as many runs for
/// clients that went away as it allows: 503 `idempotency_overloaded`, nothing claimed or run.
fn overloaded(keyed: Keyed) -> Reply {
    let error = IdempotencyError::Overloaded;
    tracing::warn!(
        outcome = "overloaded",
        limit = keyed.config.detached_limit(),
        "too many idempotent operations run on for clients that went away; refusing new keys"
    );
    metrics::rejected(error.code());
    let res = error_response(
        &error,
        &keyed.run.request_id,
        keyed.policy.error_format,
        keyed.config.renderer(),
    );
    Reply::new(keyed.run.req, res)
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
        Ok(Begin::Execute(lease)) => {
            let keep = Keep::of(&keyed.policy);
            let offer = Offer::of(keyed.config, &keyed.policy);
            Settled::Run(Box::pin(claimed(lease, keyed.run, keep, offer, handler)))
        }
        Ok(Begin::Replay(record)) => match unaccepted_encoding(&record, &keyed.run.req) {
            // Recorded in a coding negotiated for the first request (see `Compress`).
            Some(coding) => refuse(keyed, IdempotencyError::EncodingNotAccepted { coding }),
            None => {
                tracing::debug!(outcome = "replayed", status = record.response.status());
                metrics::outcome("replayed");
                let res = replay(&record, &keyed);
                Settled::Answer(Reply::new(keyed.run.req, res))
            }
        },
        Ok(Begin::Unprotected(error)) => {
            tracing::warn!(%error, outcome = "unprotected", "idempotency store failed; running without protection (fail open)");
            metrics::outcome("unprotected");
            Settled::Run(Box::pin(unprotected(keyed.run, handler)))
        }
        Err(error) => refuse(keyed, error),
    }
}

/// The layer's refusal of a keyed request, counted and logged.
fn refuse(keyed: Keyed, error: IdempotencyError) -> Settled {
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
