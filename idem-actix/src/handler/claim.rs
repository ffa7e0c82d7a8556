//! The claim of a keyed request's key, and what it settles on: a replay, a refusal, or the
//! handler's run under the claim.

use std::future::Future;
use std::panic::AssertUnwindSafe;

use actix_web::dev;
use actix_web::HttpRequest;
use futures_util::FutureExt as _;
use idem_core::{Begin, IdempotencyError};
use tracing::Instrument as _;

use super::admit::{admit, Admission, Keyed};
use super::detach::{detached, orphans, Answer, Unseen};
use super::record::{claimed, panicked, unprotected, Keep};
use super::replay::{replay, unaccepted_encoding, with_request_id};
use super::{keyless, passed, Endpoint, Reply, Work};
use crate::extract::Passed;
use crate::functions::Functions;
use crate::metrics;
use crate::outage::warn_when_due;
use crate::render::error_response;
use crate::request_id::RequestId;
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
    // The application's key, scope and fingerprint functions run in the admission: one that
    // panics is answered as a handler that panics is, with nothing claimed, and with the
    // request's id, read from a second handle on the request (the admission's goes down
    // with it), dropped before anything runs: a service behind the middleware must have the
    // request unshared.
    let held = req.clone();
    let admitted = AssertUnwindSafe(admit(endpoint, functions, req, payload)).catch_unwind();
    let (work, detach): (Work, Option<Answer>) = match admitted.await {
        // Boxed: `run` sends requests without a key straight to the handler, so this is
        // rare, and the handler's future would otherwise swell this one. A handler that
        // refuses the request for want of a key is answered as the endpoint answers that.
        Ok(Admission::Pass(req, payload, key_function)) => {
            passed(&req, Passed::Keyless);
            (
                passed_on(endpoint, key_function, req, payload, handler),
                None,
            )
        }
        Ok(Admission::Answer(req, res)) => return Reply::answered(req, res),
        // Past the bound of runs this worker finishes for clients that went away, nothing
        // new is claimed: a client that resets every request cannot pile them up.
        Ok(Admission::Keyed(keyed)) if orphans() >= keyed.config.detached_limit() => {
            return overloaded(keyed)
        }
        Ok(Admission::Keyed(keyed)) => {
            // For the answer to a run a shutdown cancels while its client waits.
            let answer = Answer {
                request_id: keyed.run.request_id.clone(),
                format: keyed.policy.error_format,
                config: keyed.config.clone(),
                _unseen: Unseen::of(&keyed.run.req),
            };
            match claim(keyed, handler) {
                Settled::Answer(reply) => return reply,
                Settled::Run(work) => (work, Some(answer)),
            }
        }
        Err(_) => return function_panicked(held),
    };
    drop(held);
    match detach {
        Some(answer) => detached(work, answer).await,
        None => work.await,
    }
}

/// The answer to a request whose key, scope or fingerprint function panicked: 500, as for a
/// handler that panics, with the request's id; nothing was claimed or run.
#[cold]
fn function_panicked(req: HttpRequest) -> Reply {
    let request_id = RequestId::peek(&req);
    tracing::error!(
        %request_id,
        outcome = "panicked",
        "a key, scope or fingerprint function of an idempotent endpoint panicked; answered 500, nothing claimed or run"
    );
    metrics::outcome("panicked");
    Reply::answered(req, with_request_id(panicked(), &request_id))
}

/// The run of a request without a key, boxed: the handler's, except that a refusal of the
/// request for want of a key is answered as the endpoint answers that.
fn passed_on<H, Fut>(
    endpoint: &Endpoint,
    key_function: bool,
    req: HttpRequest,
    payload: dev::Payload,
    handler: H,
) -> Work
where
    H: FnOnce(HttpRequest, dev::Payload) -> Fut + 'static,
    Fut: Future<Output = Reply> + 'static,
{
    let overrides = endpoint.overrides;
    Box::pin(async move {
        let mut reply = handler(req, payload).await;
        reply.res = keyless(overrides, reply.res, key_function);
        reply
    })
}

/// The answer to a keyed request that comes while this worker is finishing as many runs for
/// clients that went away as it allows: 503 `idempotency_overloaded`, nothing claimed or run.
fn overloaded(keyed: Keyed) -> Reply {
    let error = IdempotencyError::Overloaded;
    let (outcome, code, limit) = ("overloaded", error.code(), keyed.config.detached_limit());
    let message =
        "too many idempotent operations run on for clients that went away; refusing new keys";
    // Warned of when it starts, then at most once a minute, each refusal at `debug`, in the
    // request's span, as a store's outage is (see `settle`).
    let span = keyed.span.clone();
    let _entered = (!span.is_disabled()).then(|| span.enter());
    warn_when_due!(
        keyed.config.outage().overloaded,
        message,
        outcome,
        code,
        limit
    );
    metrics::rejected(code);
    answer(keyed, &error)
}

/// The layer's answer `error` to a keyed request, in the endpoint's error format.
fn answer(keyed: Keyed, error: &IdempotencyError) -> Reply {
    let res = error_response(
        error,
        &keyed.run.request_id,
        keyed.policy.error_format,
        keyed.config.renderer(),
    );
    Reply::answered(keyed.run.req, res)
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
/// An `async` block, for a smaller future (see "Future sizes" in `idem_core`'s engine); the
/// handler's run is built in a `let` of its own, as a value bound in a `match` arm would keep
/// its room in this future across the await.
#[allow(
    clippy::manual_async_fn,
    reason = "smaller future, see idem_core's engine"
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
            // Its box made first, so that the compiler builds the run's future (about 1.8 KB)
            // in it, where `Box::pin` built it on the stack and copied it in: 192 instructions
            // less per new key (`scripts/bench-instructions`).
            let room = Box::new_uninit();
            let run = Box::write(room, claimed(lease, keyed.run, keep, offer, handler));
            Settled::Run(Box::into_pin(run))
        }
        Ok(Begin::Replay(record)) => match unaccepted_encoding(&record, &keyed.run.req) {
            // Recorded in a coding negotiated for the first request (see `Compress`).
            Some(coding) => refuse(keyed, IdempotencyError::EncodingNotAccepted { coding }),
            None => {
                let res = replay(&record, &keyed);
                Settled::Answer(Reply::answered(keyed.run.req, res))
            }
        },
        Ok(Begin::Unprotected(error)) => {
            let outcome = "unprotected";
            let message = "idempotency store failed; running without protection (fail open)";
            warn_when_due!(keyed.config.outage().unprotected, message, %error, outcome);
            metrics::outcome("unprotected");
            Settled::Run(Box::pin(unprotected(keyed.run, handler)))
        }
        Err(error) => refuse(keyed, error),
    }
}

/// The layer's refusal of a keyed request, counted and logged.
fn refuse(keyed: Keyed, error: IdempotencyError) -> Settled {
    match error {
        // An outage refuses every keyed request: the log says so, with the store's own error,
        // as failing open does; when it starts, then once a minute (with how many requests it
        // refused since), and at `debug` for each.
        IdempotencyError::StoreUnavailable(ref failed) => {
            let (outcome, code) = ("store_unavailable", error.code());
            let message =
                "the idempotency store failed; the request is refused with 503 and nothing runs";
            warn_when_due!(keyed.config.outage().refused, message, outcome, code, error = %failed);
        }
        // Refused before any claim, as the admission's refusals are (and counted so).
        IdempotencyError::Misconfigured(_) => {
            tracing::debug!(outcome = "rejected", code = error.code(), %error);
        }
        _ => tracing::debug!(outcome = "conflict", code = error.code(), %error),
    }
    metrics::refused(&error);
    Settled::Answer(answer(keyed, &error))
}

#[cfg(test)]
mod tests {
    use std::future::{ready, Ready};
    use std::mem::size_of_val;

    use actix_web::test::TestRequest;
    use actix_web::HttpResponse;
    use idem_core::Overrides;

    use super::*;
    use crate::handler::record::Keep;

    static ENDPOINT: Endpoint = Endpoint::new(Overrides::NONE);

    fn handler(req: HttpRequest, _: dev::Payload) -> Ready<Reply> {
        ready(Reply::new(req, HttpResponse::Created().finish()))
    }

    fn request(key: &str) -> (HttpRequest, dev::Payload) {
        TestRequest::post()
            .uri("/sizes")
            .insert_header(("Authorization", "Bearer sizes"))
            .insert_header(("Idempotency-Key", key))
            .to_http_parts()
    }

    async fn admitted(key: &str) -> Keyed {
        let (req, payload) = request(key);
        match admit(&ENDPOINT, Functions::NONE, req, payload).await {
            Admission::Keyed(keyed) => keyed,
            _ => panic!("a keyed request is admitted"),
        }
    }

    /// The futures every keyed request builds, moves and drops: their sizes, in bytes on a
    /// 64-bit target, are held a little above what they are, so that growth fails here. The
    /// bounds of `execute` and `claimed` are below what each would be as an `async fn` (1376
    /// and 2032 bytes when last measured, with every feature), the gain their `async` blocks
    /// are for (see "Future sizes" in `idem_core`'s engine). `claimed` was 4576 bytes with the
    /// `postgres` feature before its rare paths were boxed, and grew by 96 when `Lease::finish`
    /// came to hold a guard of its completion (71 instructions more per new key, measured).
    /// `keyed` grew past 800 bytes, to 832, when it came to keep the request's id for the answer
    /// to a run a shutdown cancels while its client waits, and to 864 when the policy it
    /// keeps came to hold an endpoint's name.
    #[actix_web::test]
    async fn keyed_request_futures_stay_small() {
        let (req, payload) = request("sizes-keyed");
        let keyed = keyed(&ENDPOINT, Functions::NONE, req, payload, handler);
        let (req, payload) = request("sizes-admit");
        let admission = admit(&ENDPOINT, Functions::NONE, req, payload);
        let execute = execute(admitted("sizes-execute").await, handler);

        let run = admitted("sizes-claimed").await;
        let engine = run.config.engine().clone();
        let begun = engine.begin(&run.policy, run.store_key, run.fingerprint);
        let Ok(Begin::Execute(lease)) = begun.await else {
            panic!("a new key is claimed")
        };
        let claimed = claimed(lease, run.run, Keep::of(&run.policy), None, handler);

        let sizes = [
            ("keyed", size_of_val(&keyed)),
            ("admit", size_of_val(&admission)),
            ("execute", size_of_val(&execute)),
            ("claimed", size_of_val(&claimed)),
        ];
        let bounds = [880, 700, 1120, 1900];
        for ((future, size), bound) in sizes.into_iter().zip(bounds) {
            assert!(
                size <= bound,
                "the {future} future is {size} bytes, over {bound}"
            );
        }
        assert_eq!(claimed.await.res.status(), 201);
    }

    /// The `outcome` of each event logged while it is installed.
    #[derive(Clone, Default)]
    struct Outcomes(std::sync::Arc<std::sync::Mutex<Vec<String>>>);

    impl tracing::field::Visit for Outcomes {
        fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
            if field.name() == "outcome" {
                self.0.lock().unwrap().push(format!("{value:?}"));
            }
        }
    }

    impl tracing::Subscriber for Outcomes {
        fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
            true
        }
        fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
            tracing::span::Id::from_u64(1)
        }
        fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
        fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
        fn event(&self, event: &tracing::Event<'_>) {
            event.record(&mut self.clone());
        }
        fn enter(&self, _: &tracing::span::Id) {}
        fn exit(&self, _: &tracing::span::Id) {}
    }

    /// A keyed request refused for settings the store cannot keep a record under is logged as
    /// a refusal, as its metric counts it, where it was logged as a conflict.
    #[actix_web::test]
    async fn a_refusal_for_a_store_too_small_is_logged_as_one() {
        let tiny = crate::MokaStore::builder().max_bytes(200).build();
        let (req, payload) = TestRequest::post()
            .uri("/tiny")
            .app_data(crate::IdempotencyConfig::new(tiny))
            .insert_header(("Authorization", "Bearer tiny"))
            .insert_header(("Idempotency-Key", "tiny"))
            .to_http_parts();
        let Admission::Keyed(keyed) = admit(&ENDPOINT, Functions::NONE, req, payload).await else {
            panic!("a keyed request is admitted")
        };
        let outcomes = Outcomes::default();
        let settled = tracing::subscriber::with_default(outcomes.clone(), || claim(keyed, handler));
        let Settled::Answer(reply) = settled else {
            panic!("refused")
        };
        assert_eq!(reply.res.status(), 500);
        assert_eq!(*outcomes.0.lock().unwrap(), ["\"rejected\""]);
    }
}
