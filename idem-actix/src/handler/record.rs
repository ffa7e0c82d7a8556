//! The handler's run under its claim, and the record of its response.

use std::error::Error as StdError;
use std::future::{poll_fn, Future};
use std::panic::AssertUnwindSafe;
use std::pin::Pin;

use actix_web::body::{BodySize, BodyStream, BoxBody, MessageBody as _};
use actix_web::dev;
use actix_web::http::header;
use actix_web::http::header::HeaderName;
use actix_web::{HttpMessage, HttpRequest, HttpResponse};
use bytes::{Bytes, BytesMut};
use futures_util::future::{select, Either};
use futures_util::{FutureExt as _, StreamExt as _};
use idem_core::{CachePolicy, Outcome, Policy, Response};

use super::admit::Run;
use super::detach::{next_cancellation, spawn_recording, Finishing, Orphan, Recording, Unseen};
use super::replay::with_request_id;
use super::{Reply, Unrun};
use crate::extract::Admitted;
use crate::metrics;
use crate::request_id::RequestId;
use crate::transaction::{Loan, Offer};

impl Run {
    /// Hands the request's id and key to the handler, and calls it, under its key's claim or
    /// not (`claimed`): its reply, or `Err` if it panicked.
    pub(super) fn call<H, Fut>(
        self,
        handler: H,
        claimed: bool,
    ) -> (RequestId, impl Future<Output = std::thread::Result<Reply>>)
    where
        H: FnOnce(HttpRequest, dev::Payload) -> Fut,
        Fut: Future<Output = Reply>,
    {
        let Run {
            key,
            request_id,
            format,
            lends,
            req,
            body,
        } = self;
        req.extensions_mut().insert(Admitted {
            request_id: request_id.clone(),
            key: crate::IdempotencyKey(key),
            format,
            claimed,
            lends,
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
    let (request_id, ran) = run.call(handler, false);
    let unclaimed = super::detach::Unclaimed;
    let Reply { req, res } = ran.await.unwrap_or_else(|_| Reply::orphan(panicked()));
    drop(unclaimed);
    Reply {
        req,
        res: executed(res, &request_id),
    }
}

/// A response that ran, as it goes out: with the request's id, and never saying it is a
/// replay, whatever headers the handler set (one that forwards an upstream API's, say).
fn executed(mut res: HttpResponse, request_id: &RequestId) -> HttpResponse {
    res.headers_mut().remove(&crate::IDEMPOTENT_REPLAYED);
    with_request_id(res, request_id)
}

/// What the recording of a response needs of the endpoint's policy.
#[derive(Clone, Copy)]
pub(super) struct Keep {
    /// The largest body collected for the record ([`Policy::max_response`]).
    pub(super) max_response: usize,
    /// Whether `Set-Cookie` is recorded ([`Policy::replay_set_cookie`]).
    pub(super) set_cookie: bool,
    /// Which statuses are recorded ([`Policy::cache`]).
    pub(super) cache: CachePolicy,
}

impl Keep {
    pub(super) fn of(policy: &Policy) -> Self {
        Self {
            max_response: policy.max_response,
            set_cookie: policy.replay_set_cookie,
            cache: policy.cache,
        }
    }
}

/// Runs the handler under its claim, and records its response (or releases the claim).
///
/// The response's body is kept under the lease too: a streamed body is part of the
/// operation, so the claim is renewed until it has been read, and a duplicate meanwhile gets
/// 409. A body of unknown length is teed ([`tee`]): sent on as it comes, and recorded when it
/// ends. Others are collected, up to `max_response`: a longer body is sent on as it comes,
/// and recorded without its body (retries get 409 `idempotency_response_too_large`).
///
/// With an `offer` (a store that lends transactions), a handler that takes its
/// `Transaction` has its writes committed with the record, or rolled
/// back with the release.
///
/// An `async` block, for a smaller future (see "Future sizes" in `idem_core`'s engine). For
/// the same reason the release after a failure and a transaction's commit are boxed where they
/// are awaited: with the `postgres` feature each takes about 3 KB (a transaction's rollback or
/// commit), which every run would otherwise hold while in flight, though only runs that fail
/// or take a transaction get there. Boxed, a run's future is 1.8 KB instead of 4.6 KB (and
/// 490 fewer instructions per new key, a change within the noise of the in-process bench).
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
        let lent = loan.as_ref();
        let for_head = run.req.method() == actix_web::http::Method::HEAD;
        let (request_id, ran) = run.call(handler, true);
        let ran = lease
            .run(async move {
                let Reply { req, res } = ran.await?;
                // A stream is teed rather than collected, unless the handler's writes commit
                // with the record (the commit decides the answer) or nothing of it is kept
                // (recorded before it goes). Whether the handler took its transaction is known
                // only once it has run.
                let tees = keep.max_response > 0 && !lent.is_some_and(Loan::taken);
                let (head, body) = res.into_parts();
                let body = if tees { streamed(body) } else { Err(body) };
                let read = match body.map_err(|body| unsent(body, for_head)) {
                    Ok(stream) => Read::Stream(stream),
                    Err(Ok((body, size))) => Read::Unsent { body, size },
                    // A body that panics as it is read is the handler's panic, answered as one
                    // below (it cut the connection, unanswered, where it left the layer).
                    Err(Err(body)) => Read::Collected(
                        AssertUnwindSafe(collect(body, keep.max_response))
                            .catch_unwind()
                            .await
                            .unwrap_or_else(|_| Err("the response body panicked".into())),
                    ),
                };
                Ok::<_, Box<dyn std::any::Any + Send>>((req, head, read))
            })
            .await;
        let (req, mut head, read) = match ran {
            Ok(ran) => ran,
            Err(_) => {
                tracing::error!("idempotent handler panicked; releasing its key");
                Box::pin(release(lease, loan)).await;
                return Reply::orphan(with_request_id(panicked(), &request_id));
            }
        };
        let status = head.status().as_u16();
        // Of a body actix sends no byte of, its length alone, which actix sends; of a body
        // gathered whole for a HEAD, its length too, which actix sends whatever the handler's
        // header says (the replay sends the recorded one).
        match read {
            Read::Unsent { size, .. } => {
                (head.headers_mut()).insert(header::CONTENT_LENGTH, size.into());
            }
            Read::Collected(Ok(Collected::Whole(ref bytes))) if for_head && status != 304 => {
                (head.headers_mut()).insert(header::CONTENT_LENGTH, bytes.len().into());
            }
            _ => {}
        }
        let headers = Replayable {
            headers: head.headers(),
            set_cookie: keep.set_cookie,
            content_length: length_is_content(status, for_head),
        };
        // An extractor's refusal: boxed, as a rare path, so that its state stays out of this
        // future (as does its check, made here rather than before the body is read, where it
        // would swell the run's future by 200 bytes).
        if head.extensions().contains::<Unrun>() {
            let res = head.set_body(read.into_body());
            return Box::pin(unrun(lease, loan, req, res, &request_id)).await;
        }
        let (response, body) = match read {
            Read::Collected(Ok(Collected::Whole(bytes))) => {
                (Response::new(status, headers, &bytes), BoxBody::new(bytes))
            }
            // Not recorded, its key released once it has gone out, as a stream's is: a retry
            // meanwhile gets 409, rather than running beside it (a handler's transaction, if
            // taken, is rolled back before it goes, as for any answer not recorded).
            Read::Collected(Ok(Collected::Overflow { body, .. }))
                if !keep.cache.caches(status) && !loan.as_ref().is_some_and(Loan::taken) =>
            {
                if let Some(loan) = loan {
                    loan.close();
                }
                let unseen = req.as_ref().map_or(Unseen::NONE, Unseen::of);
                let kept = Kept::Nothing(keep.max_response);
                let body = tee(body, status, Vec::new(), lease, kept, unseen);
                return Reply {
                    req,
                    res: executed(head.set_body(body), &request_id),
                };
            }
            Read::Collected(Ok(Collected::Overflow { body, size })) => {
                (Response::omitted(status, size), body)
            }
            Read::Unsent { body, .. } => (Response::new(status, headers, b""), body),
            Read::Collected(Err(error)) => {
                tracing::error!(%error, "response body failed; releasing its key");
                Box::pin(release(lease, loan)).await;
                return Reply {
                    req,
                    res: with_request_id(panicked(), &request_id),
                };
            }
            Read::Stream(stream) => {
                // Not taken (a stream is teed only then): closed, so that nothing takes it now.
                if let Some(loan) = loan {
                    loan.close();
                }
                let headers = (headers.into_iter())
                    .map(|(name, value)| (name.to_owned(), value.to_vec()))
                    .collect();
                let unseen = req.as_ref().map_or(Unseen::NONE, Unseen::of);
                let body = tee(
                    stream,
                    status,
                    headers,
                    lease,
                    Kept::of(keep, status),
                    unseen,
                );
                return Reply {
                    req,
                    res: executed(head.set_body(body), &request_id),
                };
            }
        };
        // As it goes out (a transaction's commit may answer instead with an error of the
        // layer's, which is never a replay and carries the request's id too).
        let res = executed(head.set_body(body), &request_id);
        let (outcome, res) = match loan.and_then(Loan::close) {
            Some(taken) => Box::pin(taken.finish(lease, response, res, &request_id)).await,
            None => {
                // A drain that cancels the run meanwhile answers its client with it.
                let recording = Recording::new(res);
                let outcome = recorded(lease, response).await;
                (outcome, recording.into_inner())
            }
        };
        tracing::debug!(outcome, status);
        metrics::outcome(outcome);
        Reply { req, res }
    }
}

/// The answer `res` of an extractor that refused the request: the handler did not run, so
/// the claim is released (a lent transaction rolled back) and nothing is recorded.
async fn unrun(
    lease: idem_core::Lease,
    loan: Option<Loan>,
    req: Option<HttpRequest>,
    res: HttpResponse,
    request_id: &RequestId,
) -> Reply {
    tracing::debug!(
        status = res.status().as_u16(),
        "an extractor refused the request before the handler ran; releasing its key"
    );
    release(lease, loan).await;
    Reply {
        req,
        res: executed(res, request_id),
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

/// A handler's response body, as the run leaves it: collected for the record, or a stream to
/// send on as it comes and record as it goes ([`tee`]).
enum Read {
    Collected(Result<Collected, Box<dyn StdError>>),
    Stream(BoxBody),
    /// A body of which actix sends nothing but its size (see [`unsent`]).
    Unsent {
        body: BoxBody,
        size: u64,
    },
}

impl Read {
    /// The body to send as it is, recording none of it: the stream, or what was collected
    /// (nothing, if the body failed).
    fn into_body(self) -> BoxBody {
        match self {
            Read::Stream(body)
            | Read::Unsent { body, .. }
            | Read::Collected(Ok(Collected::Overflow { body, .. })) => body,
            Read::Collected(Ok(Collected::Whole(bytes))) => BoxBody::new(bytes),
            Read::Collected(Err(_)) => BoxBody::new(()),
        }
    }
}

/// `body` and its size, when it answers a HEAD (`for_head`) and is a stream of a declared
/// size: actix sends none of its bytes, only that size as the `Content-Length`, so a handler
/// may declare the length of the representation and send nothing (it answers HEAD cheaply, or
/// relays an upstream's answer to one). Read for the record, it would look short, a failed
/// body. So too a body of bytes the handler built (actix sends its length alone), which kept
/// for the record would take its room, or pass `max_response` and leave the record without
/// the answer that was sent. `Err` with the body otherwise (an empty one among them).
fn unsent(body: BoxBody, for_head: bool) -> Result<(BoxBody, u64), BoxBody> {
    if !for_head {
        return Err(body);
    }
    let body = match body.try_into_bytes() {
        Ok(bytes) if bytes.is_empty() => return Err(BoxBody::new(bytes)),
        Ok(bytes) => {
            let size = bytes.len() as u64;
            return Ok((BoxBody::new(bytes), size));
        }
        Err(body) => body,
    };
    match body.size() {
        BodySize::Sized(size) => Ok((body, size)),
        _ => Err(body),
    }
}

/// `body`, when it is a stream of unknown length (a stream of events, a response relayed as
/// it is made): `Err` with the body otherwise.
fn streamed(body: BoxBody) -> Result<BoxBody, BoxBody> {
    match body.size() {
        BodySize::Stream => Ok(body),
        _ => Err(body),
    }
}

/// Sends `stream` on as it comes, and records it as it goes: each piece goes out at once, and
/// a copy is kept, up to `limit` bytes. The claim stays held, renewed, until the stream ends,
/// so that a duplicate meanwhile gets 409 (or waits); then the whole body is recorded, and
/// retries get it in one piece. Its end goes out once the record is written (or given up),
/// as a collected body goes out only once recorded: a client that has the whole answer and
/// retries gets the replay, not a 409 for a run still in progress. A stream that passes `limit` is recorded without its body as
/// it does, and goes on unkept. One that fails first is released, so that a retry runs again;
/// its failure goes out once the key is released, so that the retry its client sends at once
/// runs rather than finding the key still held.
///
/// A client that goes away within the limit does not stop it: the rest is read without it, up
/// to the limit, and recorded, as a run whose client went away finishes (and cancelled, its
/// key released, as such a run is by a drain that runs out of time). A task holds the claim
/// meanwhile, counted among the runs in progress (see [`spawn_recording`]). Past the limit,
/// nothing of it is kept, and it is read no further once its client goes away: such a stream
/// may never end (an event stream's), and its record is written already.
///
/// A response whose status is not recorded ([`Kept::Nothing`]) keeps nothing, and its key is
/// released once it has ended (its client gone, once read on as a recorded one is): a retry
/// meanwhile gets 409 too.
fn tee(
    stream: BoxBody,
    status: u16,
    headers: Vec<(String, Vec<u8>)>,
    lease: idem_core::Lease,
    kept: Kept,
    unseen: Unseen,
) -> BoxBody {
    let (told, teed) = tokio::sync::oneshot::channel();
    // Dropped as the recording ends, however it does.
    let (done, written) = tokio::sync::oneshot::channel::<()>();
    spawn_recording(async move {
        let _done = done;
        // The orphan, if its client went away, is held until the recording ends.
        let (teed, _orphan) = lease
            .run(async move {
                match teed.await {
                    Ok(Teed::Dropped { read, rest, orphan }) => {
                        let drained = std::pin::pin!(drained(read, rest, kept.limit()));
                        let teed = match select(drained, std::pin::pin!(orphan.cancelled())).await {
                            Either::Left((teed, _)) => teed,
                            Either::Right(_) => Teed::Cancelled,
                        };
                        (teed, Some(orphan))
                    }
                    Ok(teed) => (teed, None),
                    // Dropped without a word: only outside a runtime, where nothing runs on.
                    Err(_) => (Teed::Failed, None),
                }
            })
            .await;
        let headers = headers.iter().map(|(n, v)| (n.as_str(), v.as_slice()));
        let response = match teed {
            Teed::Whole(body) => Response::new(status, headers, &body),
            Teed::Omitted(size) => Response::omitted(status, size),
            Teed::Cancelled => {
                tracing::warn!("a response stream whose client went away was cancelled at shutdown; its key is released");
                metrics::outcome("cancelled");
                // Released in the background, which the drain waits for; before the orphan's
                // count ends, which it waits for first.
                drop(lease);
                return;
            }
            Teed::Failed | Teed::Dropped { .. } => {
                tracing::error!("response stream failed; releasing its key");
                return release(lease, None).await;
            }
        };
        let outcome = recorded(lease, response).await;
        tracing::debug!(outcome, status);
        metrics::outcome(outcome);
    });
    BoxBody::new(Tee {
        size: stream.size(),
        stream: Some(stream),
        read: BytesMut::new(),
        kept,
        passed: 0,
        told: Some(told),
        written: Some(written),
        cancelled: None,
        finishing: None,
        failed: None,
        _unseen: unseen,
    })
}

/// How much of a teed stream is kept for its record.
#[derive(Clone, Copy)]
enum Kept {
    /// Up to this many bytes; past them, none, and the record is written without its body as
    /// the stream passes them.
    UpTo(usize),
    /// None: its status is not recorded. It is told [`Teed::Omitted`] when it ends. Its
    /// client gone, the rest is read on up to this many bytes, as a recorded stream's is.
    Nothing(usize),
}

impl Kept {
    /// For a response with `status`, under `keep`.
    fn of(keep: Keep, status: u16) -> Self {
        match keep.cache.caches(status) {
            true => Kept::UpTo(keep.max_response),
            false => Kept::Nothing(keep.max_response),
        }
    }

    /// How much of the stream is read on once its client has gone.
    fn limit(self) -> usize {
        match self {
            Kept::UpTo(limit) | Kept::Nothing(limit) => limit,
        }
    }
}

/// How a teed stream ended, as its body tells the task that records it.
enum Teed {
    /// It ended, within the limit: the whole body.
    Whole(Bytes),
    /// It passed the limit after this many bytes; it goes on, unkept.
    Omitted(u64),
    /// It failed before either.
    Failed,
    /// Its client went away before either: what was read, and the rest, to read without it;
    /// counted from then on as a run whose client went away, toward the worker's bound, and
    /// cancelled with them by a drain that runs out of time.
    Dropped {
        read: Bytes,
        rest: BoxBody,
        orphan: Orphan,
    },
    /// Its client went away, and a drain cancelled the reading of the rest.
    Cancelled,
}

/// The rest of a teed stream whose client went away, read to its end (or the limit).
async fn drained(read: Bytes, rest: BoxBody, limit: usize) -> Teed {
    let mut rest = rest;
    let rest = futures_util::stream::poll_fn(move |cx| Pin::new(&mut rest).poll_next(cx));
    let read = futures_util::stream::once(std::future::ready(Ok(read)));
    let body = BoxBody::new(BodyStream::new(read.chain(rest)));
    match collect(body, limit).await {
        Ok(Collected::Whole(body)) => Teed::Whole(body),
        Ok(Collected::Overflow { size, .. }) => Teed::Omitted(size),
        Err(_) => Teed::Failed,
    }
}

/// A stream on its way to the client, copied for its record (see [`tee`]).
struct Tee {
    /// `None` once given to the task that reads it without the client.
    stream: Option<BoxBody>,
    /// The stream's, which it passes on unchanged.
    size: BodySize,
    read: BytesMut,
    kept: Kept,
    /// Under [`Kept::Nothing`], the bytes passed on.
    passed: u64,
    /// `None` once told how the stream ended, or that it passed the limit.
    told: Option<tokio::sync::oneshot::Sender<Teed>>,
    /// Ends when the recording does: the stream's end waits for it.
    written: Option<tokio::sync::oneshot::Receiver<()>>,
    /// While the end waits: a drain that runs out of time lets it go.
    cancelled: Option<Pin<Box<dyn Future<Output = ()>>>>,
    /// While the end waits, and after, if let go, until the record is written.
    finishing: Option<Finishing>,
    /// The stream's failure, which goes out in place of its end.
    failed: Option<Box<dyn StdError>>,
    /// Over HTTP/2, its count toward the runs for clients gone while actix holds it (see
    /// [`Unseen`]).
    _unseen: Unseen,
}

impl Tee {
    fn tell(&mut self, teed: Teed) {
        if let Some(told) = self.told.take() {
            let _ = told.send(teed);
        }
    }
}

impl actix_web::body::MessageBody for Tee {
    type Error = Box<dyn StdError>;

    fn size(&self) -> BodySize {
        self.size
    }

    fn poll_next(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Bytes, Self::Error>>> {
        let this = self.get_mut();
        let Some(stream) = &mut this.stream else {
            // Ended: the end goes out once the record is written or given up (its task
            // dropped the sender), so that a client that has the whole answer finds it
            // recorded, and a failure once the key is released; or when a drain runs out of
            // time, which leaves the record to go on in the background, rather than to the
            // server's stop, which would cut the end.
            if let Some(written) = &mut this.written {
                if Pin::new(&mut *written).poll(cx).is_pending() {
                    // Counted before it can be cancelled, so that the drain that lets the end go
                    // finds its record counted.
                    this.finishing.get_or_insert_with(Finishing::new);
                    let cancelled = this.cancelled.get_or_insert_with(next_cancellation);
                    std::task::ready!(cancelled.as_mut().poll(cx));
                    tracing::warn!("a drain ran out of time while a response stream's record was being written; its end goes out, and the record is written on in the background");
                    if let (Some(finishing), Some(written)) =
                        (this.finishing.take(), this.written.take())
                    {
                        finishing.until(written);
                    }
                }
                this.written = None;
                this.cancelled = None;
                this.finishing = None;
            }
            return std::task::Poll::Ready(this.failed.take().map(Err));
        };
        // An empty piece is not passed on: on the wire it would end a chunked answer there,
        // and the client would get less than is recorded (actix's `BodyStream` skips them
        // too, but a body of the handler's own need not).
        let polled = loop {
            match std::task::ready!(Pin::new(&mut *stream).poll_next(cx)) {
                Some(Ok(piece)) if piece.is_empty() => continue,
                polled => break polled,
            }
        };
        match &polled {
            Some(Ok(piece)) if this.told.is_some() => match this.kept {
                Kept::UpTo(limit) => {
                    let size = this.read.len() + piece.len();
                    if size > limit {
                        this.read = BytesMut::new();
                        this.tell(Teed::Omitted(size as u64));
                    } else {
                        this.read.extend_from_slice(piece);
                    }
                }
                Kept::Nothing(_) => this.passed += piece.len() as u64,
            },
            Some(Ok(_)) => {}
            Some(Err(_)) => {
                this.tell(Teed::Failed);
                this.failed = polled.and_then(Result::err);
                this.stream = None;
                return Pin::new(this).poll_next(cx);
            }
            None => {
                let teed = match this.kept {
                    Kept::UpTo(_) => Teed::Whole(std::mem::take(&mut this.read).freeze()),
                    Kept::Nothing(_) => Teed::Omitted(this.passed),
                };
                this.tell(teed);
                this.stream = None;
                return Pin::new(this).poll_next(cx);
            }
        }
        std::task::Poll::Ready(polled)
    }
}

impl Drop for Tee {
    fn drop(&mut self) {
        // Dropped as its stream panicked: there is nothing sound to read on.
        if std::thread::panicking() {
            return self.tell(Teed::Failed);
        }
        if let (Some(told), Some(rest)) = (self.told.take(), self.stream.take()) {
            let read = std::mem::take(&mut self.read).freeze();
            // Counted now, not when the recording next runs: a drain that cancels in between
            // cancels it too, as it does a run whose client went away.
            let orphan = Orphan::new();
            let _ = told.send(Teed::Dropped { read, rest, orphan });
        }
    }
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
    let declared = body.size();
    match declared {
        BodySize::Sized(size) if size > limit as u64 => {
            return Ok(Collected::Overflow { body, size });
        }
        // Nothing of it is kept: sent on unread, so that its head does not wait for a piece
        // (a stream of events may be quiet at first).
        BodySize::Stream if limit == 0 => return Ok(Collected::Overflow { body, size: 0 }),
        _ => {}
    }
    let mut read = BytesMut::new();
    while let Some(chunk) = poll_fn(|cx| Pin::new(&mut body).poll_next(cx)).await {
        let chunk = chunk?;
        if matches!(declared, BodySize::Sized(size) if (read.len() + chunk.len()) as u64 > size) {
            return Err("the response body gave more bytes than it declared".into());
        }
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
    // A body that gave other than the size it declared failed, as actix would take it on the
    // wire (it cuts the connection, or the body): not an answer to keep.
    if let BodySize::Sized(size) = declared {
        if read.len() as u64 != size {
            return Err(format!(
                "the response body gave {} bytes of the {size} it declared",
                read.len()
            )
            .into());
        }
    }
    Ok(Collected::Whole(read.freeze()))
}

/// The payload the handler's extractors read: the body read before, in one chunk, or in
/// pieces of [`PIECE`] bytes when it is longer.
pub(super) fn rebuilt(body: Bytes) -> dev::Payload {
    if body.is_empty() {
        return dev::Payload::None;
    }
    if body.len() > PIECE {
        let pieces = std::iter::successors(Some(body), |rest| {
            (rest.len() > PIECE).then(|| rest.slice(PIECE..))
        })
        .map(|rest| Ok(rest.slice(..PIECE.min(rest.len()))));
        return dev::Payload::Stream {
            payload: Box::pin(futures_util::stream::iter(pieces)),
        };
    }
    // One small box, where `Payload::from(Bytes)` builds an h1 channel (two allocations).
    let chunk = futures_util::stream::once(std::future::ready(Ok(body)));
    dev::Payload::Stream {
        payload: Box::pin(chunk),
    }
}

/// The largest chunk of a body the handler's extractors are handed. actix's decoder inflates
/// each chunk of a compressed body whole before an extractor checks its limit: a body handed
/// on in one chunk would inflate whole (a decompression bomb of a few hundred KiB to as many
/// MiB), where the chunks a connection delivers are at most 128 KiB, and mostly far less.
const PIECE: usize = 16 * 1024;

/// Releases the claim of a handler that failed, after rolling back the transaction it took.
async fn release(lease: idem_core::Lease, loan: Option<Loan>) {
    let outcome = match loan.and_then(Loan::close) {
        Some(taken) => taken.abandon(lease).await,
        None => metrics::release_outcome(lease.release().await),
    };
    metrics::outcome(outcome);
}

/// The layer's 500 for a handler that panicked (or whose body failed before anything went
/// out): as its other answers, never to be kept by a cache.
pub(super) fn panicked() -> HttpResponse {
    HttpResponse::InternalServerError()
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .finish()
}

/// The headers of a response that its replays repeat: all but those of one transfer or one
/// request, and `Set-Cookie` only when the endpoint allows it. Copied, since a header map's
/// iterator cannot be cloned and [`Response::new`] reads the headers twice.
#[derive(Clone, Copy)]
struct Replayable<'a> {
    headers: &'a header::HeaderMap,
    set_cookie: bool,
    /// Whether its `Content-Length` says the length of the content, not of this transfer (see
    /// [`replayable`]).
    content_length: bool,
}

impl<'a> IntoIterator for Replayable<'a> {
    type Item = (&'a str, &'a [u8]);
    type IntoIter = ReplayableIter<'a>;

    fn into_iter(self) -> Self::IntoIter {
        ReplayableIter {
            headers: self.headers.iter(),
            set_cookie: self.set_cookie,
            content_length: self.content_length,
        }
    }
}

/// The headers of a [`Replayable`], one by one.
struct ReplayableIter<'a> {
    headers: header::map::Iter<'a>,
    set_cookie: bool,
    content_length: bool,
}

impl<'a> Iterator for ReplayableIter<'a> {
    type Item = (&'a str, &'a [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        self.headers
            .find(|(name, _)| {
                replayable(name, self.content_length)
                    && (self.set_cookie || *name != header::SET_COOKIE)
            })
            .map(|(name, value)| (name.as_str(), value.as_bytes()))
    }
}

/// Whether the `Content-Length` of a response of `status` (to a HEAD, `for_head`) says the
/// length of its content, not of the transfer (see [`replayable`]): on a 304, and on an answer
/// to HEAD.
pub(super) fn length_is_content(status: u16, for_head: bool) -> bool {
    status == 304 || for_head
}

/// Whether a header of a response is recorded, and replayed from a record written elsewhere
/// (another process, another version) that holds it: all but those that describe one transfer
/// or one request, those of `ReplayHeaders::NEVER`, matched here by their lowercase names (a
/// test holds the two alike). But `Content-Length` where it says the length of the content
/// (`content_length`), not of a transfer: on a 304, the representation's the 304 stands for
/// (RFC 9110, section 8.6), which actix sends as the handler set it; on an answer to HEAD, its
/// body's, which actix sends in place of the body.
pub(super) fn replayable(name: &HeaderName, content_length: bool) -> bool {
    match name.as_str() {
        "content-length" => content_length,
        "connection"
        | "keep-alive"
        | "proxy-connection"
        | "transfer-encoding"
        | "te"
        | "trailer"
        | "upgrade"
        | "date"
        | "x-request-id"
        | "idempotent-replayed" => false,
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use actix_web::http::header::{HeaderMap, HeaderValue};
    use actix_web::web::Bytes;
    use futures_util::FutureExt as _;
    use idem_core::ReplayHeaders;

    use super::*;

    fn map(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (name, value) in pairs {
            headers.append(
                HeaderName::from_static(name),
                HeaderValue::from_static(value),
            );
        }
        headers
    }

    fn recorded(headers: &HeaderMap, set_cookie: bool) -> Vec<(String, String)> {
        Replayable {
            headers,
            set_cookie,
            content_length: false,
        }
        .into_iter()
        .map(|(name, value)| (name.to_owned(), String::from_utf8_lossy(value).into_owned()))
        .collect()
    }

    /// A streamed body of `chunks`, of no declared size.
    fn streamed(chunks: &[&'static [u8]]) -> BoxBody {
        let chunks: Vec<Result<Bytes, std::io::Error>> =
            chunks.iter().map(|c| Ok(Bytes::from_static(c))).collect();
        BoxBody::new(BodyStream::new(futures_util::stream::iter(chunks)))
    }

    /// Everything a body yields, read to its end.
    fn drained(body: BoxBody) -> Vec<u8> {
        actix_web::body::to_bytes(body)
            .now_or_never()
            .expect("a ready body")
            .expect("a readable body")
            .to_vec()
    }

    #[test]
    fn headers_of_one_transfer_or_one_request_are_not_recorded() {
        let headers = map(&[
            ("connection", "keep-alive"),
            ("keep-alive", "timeout=5"),
            ("proxy-connection", "keep-alive"),
            ("transfer-encoding", "chunked"),
            ("te", "trailers"),
            ("trailer", "expires"),
            ("upgrade", "h2c"),
            ("date", "Tue, 01 Dec 2026 00:00:00 GMT"),
            ("content-length", "2"),
            ("x-request-id", "first"),
            ("idempotent-replayed", "true"),
            ("content-type", "application/json"),
            ("location", "/v1/calls/1"),
        ]);
        let mut kept = recorded(&headers, false);
        kept.sort();
        assert_eq!(
            kept,
            [
                ("content-type".to_owned(), "application/json".to_owned()),
                ("location".to_owned(), "/v1/calls/1".to_owned()),
            ]
        );
    }

    /// The headers never recorded are those the policy refuses in its lists, where they
    /// would do nothing: one list of them, matched here by lowercase name.
    #[test]
    fn the_headers_never_recorded_are_the_policy_s() {
        for &name in ReplayHeaders::NEVER {
            let name = HeaderName::from_bytes(name.as_bytes()).unwrap();
            assert!(!replayable(&name, false), "{name}");
        }
        let never = ReplayHeaders::NEVER.len();
        let refused = [
            "connection",
            "keep-alive",
            "proxy-connection",
            "transfer-encoding",
            "te",
        ]
        .into_iter()
        .chain([
            "trailer",
            "upgrade",
            "date",
            "content-length",
            "x-request-id",
        ])
        .chain([
            "idempotent-replayed",
            "content-type",
            "location",
            "set-cookie",
        ])
        .filter(|name| !replayable(&HeaderName::from_static(name), false))
        .count();
        assert_eq!(refused, never, "one list");
    }

    /// A `Content-Length` frames one transfer, but on a 304, or an answer to HEAD, it is the
    /// length of the content: recorded there alone.
    #[test]
    fn content_length_is_recorded_where_it_says_the_content_s_length() {
        let length = HeaderName::from_static("content-length");
        assert!(!replayable(&length, false));
        assert!(replayable(&length, true));
        let recorded: Vec<(u16, bool)> = [(200, false), (204, false), (304, false), (200, true)]
            .into_iter()
            .filter(|&(status, for_head)| length_is_content(status, for_head))
            .collect();
        assert_eq!(recorded, [(304, false), (200, true)]);
    }

    #[test]
    fn set_cookie_is_recorded_only_where_the_endpoint_replays_it() {
        let headers = map(&[
            ("set-cookie", "session=a"),
            ("set-cookie", "csrf=b"),
            ("x-custom", "kept"),
        ]);
        assert_eq!(
            recorded(&headers, false),
            [("x-custom".to_owned(), "kept".to_owned())]
        );
        let mut with_cookies = recorded(&headers, true);
        with_cookies.sort();
        assert_eq!(
            with_cookies,
            [
                ("set-cookie".to_owned(), "csrf=b".to_owned()),
                ("set-cookie".to_owned(), "session=a".to_owned()),
                ("x-custom".to_owned(), "kept".to_owned()),
            ]
        );
    }

    #[test]
    fn every_value_of_a_repeated_header_is_recorded_in_order() {
        let headers = map(&[("link", "</a>; rel=a"), ("link", "</b>; rel=b")]);
        let response = Response::new(
            201,
            Replayable {
                headers: &headers,
                set_cookie: false,
                content_length: false,
            },
            b"",
        );
        let links: Vec<_> = response.headers().map(|(_, v)| v.to_vec()).collect();
        assert_eq!(links, [b"</a>; rel=a".to_vec(), b"</b>; rel=b".to_vec()]);
    }

    #[test]
    fn a_body_of_bytes_is_kept_as_it_is_up_to_exactly_the_limit() {
        let bytes = Bytes::from_static(b"0123456789");
        let at = bytes.as_ptr();
        let Ok(Collected::Whole(whole)) = collect(BoxBody::new(bytes), 10).now_or_never().unwrap()
        else {
            panic!("a body of exactly the limit is whole");
        };
        assert_eq!(whole.as_ptr(), at, "not copied");

        let over = collect(BoxBody::new(Bytes::from_static(b"0123456789")), 9)
            .now_or_never()
            .unwrap();
        let Ok(Collected::Overflow { body, size }) = over else {
            panic!("one byte over the limit overflows");
        };
        assert_eq!(size, 10);
        assert_eq!(drained(body), b"0123456789", "and is sent whole");
    }

    /// A body that declares its size and ends short of it (its producer died), or runs past
    /// it, failed: actix would cut the connection or the body, so it is not recorded as the
    /// answer, where it was kept, and sent, as a whole answer of the bytes it gave.
    #[test]
    fn a_sized_body_that_gives_other_than_its_size_fails() {
        for (declared, pieces) in [(10, &[&b"abc"[..]][..]), (2, &[&b"ab"[..], &b"c"[..]][..])] {
            let pieces: Vec<Result<Bytes, std::io::Error>> = pieces
                .iter()
                .map(|p| Ok(Bytes::copy_from_slice(p)))
                .collect();
            let body =
                actix_web::body::SizedStream::new(declared, futures_util::stream::iter(pieces));
            let collected = collect(BoxBody::new(body), 1024).now_or_never().unwrap();
            assert!(collected.is_err(), "declared {declared}");
        }
        // Declared under the limit, and running past both.
        let long = actix_web::body::SizedStream::new(
            10,
            futures_util::stream::iter([Ok::<_, std::io::Error>(Bytes::from(vec![b'x'; 20]))]),
        );
        let collected = collect(BoxBody::new(long), 16).now_or_never().unwrap();
        assert!(
            collected.is_err(),
            "a body past its declared size and the limit"
        );
        let whole = actix_web::body::SizedStream::new(
            3,
            futures_util::stream::iter([Ok::<_, std::io::Error>(Bytes::from_static(b"abc"))]),
        );
        let collected = collect(BoxBody::new(whole), 1024).now_or_never().unwrap();
        assert!(matches!(collected, Ok(Collected::Whole(b)) if b == "abc"));
    }

    #[test]
    fn a_streamed_body_is_gathered_whole_up_to_exactly_the_limit() {
        let body = streamed(&[b"abc", b"def", b"ghij"]);
        let Ok(Collected::Whole(whole)) = collect(body, 10).now_or_never().unwrap() else {
            panic!("ten streamed bytes fit a limit of ten");
        };
        assert_eq!(&whole[..], b"abcdefghij");
        let Ok(Collected::Whole(empty)) = collect(streamed(&[]), 1).now_or_never().unwrap() else {
            panic!("an empty stream is an empty body");
        };
        assert!(empty.is_empty());
    }

    /// With nothing to keep (`max_response = 0`), a stream is not read before it is sent on,
    /// so that its head goes out at once, even if it is empty.
    #[test]
    fn a_stream_under_a_limit_of_nothing_is_sent_on_unread() {
        for pieces in [&[][..], &[&b"abc"[..]][..]] {
            let Ok(Collected::Overflow { body, size }) =
                collect(streamed(pieces), 0).now_or_never().unwrap()
            else {
                panic!("a limit of nothing keeps nothing of {pieces:?}");
            };
            assert_eq!(size, 0, "nothing read");
            assert_eq!(drained(body), pieces.concat());
        }
    }

    #[test]
    fn a_streamed_body_over_the_limit_is_sent_on_with_nothing_lost() {
        let body = streamed(&[b"abc", b"def", b"ghij", b"klm"]);
        let Ok(Collected::Overflow { body, size }) = collect(body, 5).now_or_never().unwrap()
        else {
            panic!("thirteen bytes overflow a limit of five");
        };
        assert_eq!(size, 6, "as far as it was read");
        assert_eq!(drained(body), b"abcdefghijklm");
    }

    #[test]
    fn a_body_that_declares_a_size_over_the_limit_is_not_read() {
        struct Declared;
        impl actix_web::body::MessageBody for Declared {
            type Error = std::io::Error;
            fn size(&self) -> BodySize {
                BodySize::Sized(1 << 20)
            }
            fn poll_next(
                self: Pin<&mut Self>,
                _: &mut std::task::Context<'_>,
            ) -> std::task::Poll<Option<Result<Bytes, Self::Error>>> {
                panic!("a body over the limit by its declared size is not read")
            }
        }
        let Ok(Collected::Overflow { size, .. }) = collect(BoxBody::new(Declared), 1024)
            .now_or_never()
            .unwrap()
        else {
            panic!("overflows by its declared size");
        };
        assert_eq!(size, 1 << 20);
    }

    #[test]
    fn a_failing_body_is_an_error() {
        let failing: Vec<Result<Bytes, std::io::Error>> = vec![
            Ok(Bytes::from_static(b"abc")),
            Err(std::io::Error::other("upstream gone")),
        ];
        let body = BoxBody::new(BodyStream::new(futures_util::stream::iter(failing)));
        assert!(collect(body, 1024).now_or_never().unwrap().is_err());
    }

    /// A stream whose client goes away counts as a run whose client went away from that moment,
    /// as such a run does: a drain that cancels before its recording runs again cancels it too,
    /// counts it, and releases its key.
    #[actix_web::test]
    async fn a_stream_whose_client_goes_away_just_before_a_drain_cancels_is_cancelled_with_the_rest(
    ) {
        use super::super::detach::TASKS;
        use idem_core::{Begin, Engine, Fingerprint, MokaStore, StoreKey};

        let engine = Engine::new(MokaStore::new());
        let policy = Policy::default();
        let key = StoreKey::from_bytes([7; 32]);
        let fingerprint = || Fingerprint::new("POST", "/stream", "", b"");
        let Ok(Begin::Execute(lease)) = engine.begin(&policy, key, fingerprint()).await else {
            panic!("a new key is claimed");
        };
        // One piece, then nothing more for as long as it is read.
        let first = futures_util::stream::once(std::future::ready(Ok::<_, std::io::Error>(
            Bytes::from_static(b"a"),
        )));
        let pieces = first.chain(futures_util::stream::pending());
        let stream = BoxBody::new(BodyStream::new(pieces));
        let mut body = tee(
            stream,
            200,
            Vec::new(),
            lease,
            Kept::UpTo(1024),
            Unseen::NONE,
        );
        let piece = poll_fn(|cx| Pin::new(&mut body).poll_next(cx)).await;
        assert_eq!(piece.unwrap().unwrap(), "a");
        // The recording waits to be told how the stream ends.
        tokio::task::yield_now().await;
        // Its client goes away, and a drain cancels before the recording runs again.
        drop(body);
        assert_eq!(TASKS.cancel(), 1, "the stream read without its client");
        let released = async {
            TASKS.orphans_idle().await;
            engine.abandoned_released().await;
        };
        tokio::time::timeout(std::time::Duration::from_secs(2), released)
            .await
            .expect("the stream's reading was cancelled and its key released");
        let again = engine.begin(&policy, key, fingerprint()).await;
        assert!(matches!(again, Ok(Begin::Execute(_))), "its key is free");
    }

    #[test]
    fn the_handler_reads_the_body_it_was_sent_in_one_chunk() {
        assert!(matches!(rebuilt(Bytes::new()), dev::Payload::None));
        let body = Bytes::from_static(b"{\"to\":\"+15550000001\"}");
        let dev::Payload::Stream { mut payload } = rebuilt(body.clone()) else {
            panic!("a body is a stream of one chunk");
        };
        let chunk = payload.next().now_or_never().unwrap().unwrap().unwrap();
        assert_eq!(chunk.as_ptr(), body.as_ptr(), "not copied");
        assert!(payload.next().now_or_never().unwrap().is_none());
    }

    #[test]
    fn a_longer_body_is_handed_on_whole_in_pieces_of_its_own_buffer() {
        let body = Bytes::from((0..PIECE * 2 + 1).map(|i| i as u8).collect::<Vec<_>>());
        let dev::Payload::Stream { mut payload } = rebuilt(body.clone()) else {
            panic!("a body is a stream");
        };
        let mut pieces = Vec::new();
        while let Some(piece) = payload.next().now_or_never().unwrap() {
            pieces.push(piece.unwrap());
        }
        let sizes: Vec<_> = pieces.iter().map(Bytes::len).collect();
        assert_eq!(sizes, [PIECE, PIECE, 1]);
        assert_eq!(pieces[0].as_ptr(), body.as_ptr(), "not copied");
        assert_eq!(pieces.concat(), body);
    }
}
