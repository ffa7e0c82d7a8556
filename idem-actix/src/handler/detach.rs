//! Keeping a run going when its client goes away, and keeping count of such runs: a bound per
//! worker, and what a graceful shutdown waits for.

use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{LazyLock, Mutex, MutexGuard, PoisonError};

use actix_web::HttpResponse;
use futures_util::future::{select, Either};
use idem_core::{ErrorFormat, IdempotencyError};
use tokio::sync::Notify;

use super::{Reply, Work};
use crate::render::error_response;
use crate::{IdempotencyConfig, RequestId};

thread_local! {
    /// Runs on this worker whose clients went away and that have not finished yet.
    static ORPHANS: Cell<usize> = const { Cell::new(0) };
    /// Whether a run a drain cancelled while its client waits is being dropped on this
    /// worker, and the answer it handed over as it was (see [`Recording`]).
    static CANCELLING: Cell<bool> = const { Cell::new(false) };
    static HANDED_OVER: Cell<Option<HttpResponse>> = const { Cell::new(None) };
    /// Whether the run so dropped held no claim (see [`Unclaimed`]).
    static UNCLAIMED: Cell<bool> = const { Cell::new(false) };
}

/// A run's answer whose record is on its way to the store. Dropped with its run by a drain
/// that cancels the run while its client waits, it is handed over to that cancellation, which
/// answers the client with it: the operation ran, and its record is written in the background
/// (see `idem_core::Lease::finish`). Dropped otherwise (its client went away), it goes.
pub(crate) struct Recording(Option<HttpResponse>);

impl Recording {
    pub(crate) fn new(res: HttpResponse) -> Self {
        Self(Some(res))
    }

    /// The answer, once recorded.
    pub(crate) fn into_inner(mut self) -> HttpResponse {
        let Some(res) = self.0.take() else {
            unreachable!("a recording's answer is taken once")
        };
        res
    }
}

impl Drop for Recording {
    fn drop(&mut self) {
        if let Some(res) = self.0.take() {
            if CANCELLING.get() {
                HANDED_OVER.set(Some(res));
            }
        }
    }
}

/// Held by a run without a claim (its store failed and its endpoint fails open), so that a
/// drain that cancels it knows it released no key, and counts it as nothing more than the
/// `unprotected` run it was counted as when it started.
pub(crate) struct Unclaimed;

impl Drop for Unclaimed {
    fn drop(&mut self) {
        if CANCELLING.get() {
            UNCLAIMED.set(true);
        }
    }
}

/// What dropping a cancelled run found.
struct Cancelled {
    /// The answer it handed over as it went, if its handler had answered and its record was
    /// on its way (see [`Recording`]).
    handed_over: Option<HttpResponse>,
    /// Whether it held no claim ([`Unclaimed`]).
    unclaimed: bool,
}

impl Cancelled {
    /// Counts the run a drain cancelled: `cancelled`, unless it held no claim, counted
    /// `unprotected` as it started.
    fn count(&self) {
        if !self.unclaimed {
            crate::metrics::outcome("cancelled");
        }
    }
}

/// Drops `work`, cancelled by a drain.
fn cancel(work: Option<Work>) -> Cancelled {
    /// Ends the cancellation, however the drop ends.
    struct Cancelling;
    impl Drop for Cancelling {
        fn drop(&mut self) {
            CANCELLING.set(false);
        }
    }
    // Nothing from an earlier cancellation whose drop panicked (a handler's value that
    // panics as it is dropped), which left before taking what it found.
    HANDED_OVER.take();
    UNCLAIMED.set(false);
    CANCELLING.set(true);
    let cancelling = Cancelling;
    drop(work);
    drop(cancelling);
    Cancelled {
        handed_over: HANDED_OVER.take(),
        unclaimed: UNCLAIMED.replace(false),
    }
}

/// How many runs whose clients went away this worker thread is still finishing.
pub(crate) fn orphans() -> usize {
    ORPHANS.with(Cell::get)
}

/// The keyed runs of this process in progress, across its workers and applications: what
/// [`IdempotencyConfig::drain`](crate::IdempotencyConfig::drain) waits for, and cancels when
/// its time is up. A shutdown is the process's.
pub(crate) static TASKS: LazyLock<Tasks> = LazyLock::new(Tasks::default);

/// Counts of runs in progress, a wake-up for whoever waits for none, and a cancellation.
#[derive(Debug, Default)]
pub(crate) struct Tasks {
    /// Runs that had to wait, whether their clients still wait for them or not.
    running: AtomicUsize,
    /// Of those, the runs moved to tasks of their own (their clients went away).
    orphaned: AtomicUsize,
    /// Of those, the runs a cancellation took that have not ended yet.
    taken: AtomicUsize,
    /// Streams' ends that wait for their records (or, failed, their keys' releases), then,
    /// once a cancellation let them go, those records on their way (see [`Finishing`]).
    finishing: AtomicUsize,
    idle: Notify,
    /// Bumped by each cancellation: a task cancels when it changes from what it saw at its
    /// start, so that tasks started after a drain run normally. Changed under `uncancelled`'s
    /// lock.
    generation: AtomicUsize,
    /// The runs that waited since the last cancellation (whether their clients still wait or
    /// went away) and that have not ended: those the next one cancels. Its lock orders them
    /// against cancellations, so that each run is counted by the one cancellation that
    /// cancels it.
    uncancelled: Mutex<usize>,
    cancel: Notify,
}

impl Tasks {
    /// Waits until no run is in progress.
    pub(crate) async fn idle(&self) {
        self.none(&self.running).await;
    }

    /// Waits until no run whose client went away is in progress.
    pub(crate) async fn orphans_idle(&self) {
        self.none(&self.orphaned).await;
    }

    /// Waits until every run a cancellation took has ended (and dropped its claim).
    pub(crate) async fn cancelled_idle(&self) {
        self.none(&self.taken).await;
    }

    /// Waits until no stream's record (or release) is on its way: none whose end waits for
    /// it, none let go by a cancellation and still being written.
    pub(crate) async fn finishing_idle(&self) {
        self.none(&self.finishing).await;
    }

    async fn none(&self, count: &AtomicUsize) {
        loop {
            let mut idle = std::pin::pin!(self.idle.notified());
            // Registered before the count is read, so a run ending in between wakes it.
            idle.as_mut().enable();
            if count.load(Ordering::Acquire) == 0 {
                return;
            }
            idle.await;
        }
    }

    /// Cancels every run in progress that waited: each drops, which releases its claim (a
    /// run whose client still waits answers it 503, or, if its handler had answered and its
    /// record was on its way, that answer, the record written in the background). The number cancelled. A run that never
    /// waited has nothing to cancel; a stream whose client still reads it is left to the
    /// server's own graceful stop, which sends it on.
    pub(crate) fn cancel(&self) -> usize {
        // Taken before they are woken: each run uncounts itself as it drops, on its own worker,
        // which can come before this thread reads on. Runs an earlier cancellation cancelled,
        // though they have not ended yet, are not this one's.
        let cancelled = {
            let mut uncancelled = self.uncancelled();
            self.generation.fetch_add(1, Ordering::AcqRel);
            let taken = std::mem::take(&mut *uncancelled);
            self.taken.fetch_add(taken, Ordering::AcqRel);
            taken
        };
        self.cancel.notify_waiters();
        cancelled
    }

    /// Counts a run among those the next cancellation cancels: the cancellations it has seen.
    fn enlist(&self) -> usize {
        let mut uncancelled = self.uncancelled();
        *uncancelled += 1;
        self.generation.load(Ordering::Acquire)
    }

    /// Uncounts a run that had seen `generation`: from those the next cancellation cancels,
    /// or, if one has taken it since, from those it took.
    fn delist(&self, generation: usize) {
        let mut uncancelled = self.uncancelled();
        if self.generation.load(Ordering::Acquire) == generation {
            *uncancelled -= 1;
        } else if self.taken.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.idle.notify_waiters();
        }
    }

    fn uncancelled(&self) -> MutexGuard<'_, usize> {
        self.uncancelled
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Resolves when a cancellation comes after `generation`.
    async fn cancelled(&self, generation: usize) {
        let mut cancel = std::pin::pin!(self.cancel.notified());
        cancel.as_mut().enable();
        if self.generation.load(Ordering::Acquire) == generation {
            cancel.await;
        }
    }
}

/// Counted in `count` while held.
struct Counted(&'static AtomicUsize);

impl Counted {
    fn new(count: &'static AtomicUsize) -> Self {
        count.fetch_add(1, Ordering::AcqRel);
        Self(count)
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        if self.0.fetch_sub(1, Ordering::AcqRel) == 1 {
            TASKS.idle.notify_waiters();
        }
    }
}

/// Held by an orphaned run's task (or a teed stream's, read on without its client): counts
/// it while it runs, and uncounts it however it ends.
pub(crate) struct Orphan {
    /// Its counts as a run in progress, and its place among those a cancellation cancels.
    waiting: Waiting,
    _orphaned: Counted,
    _gone: Gone,
}

impl Orphan {
    pub(crate) fn new() -> Self {
        Self::counted_in(&TASKS)
    }

    fn counted_in(tasks: &'static Tasks) -> Self {
        Self::taking_over(Waiting::new(tasks))
    }

    /// The run that `waiting` counted, whose client went away: it keeps the place `waiting`
    /// had among the runs a cancellation cancels, so that one that took it while its client
    /// was still there, and that it has not seen yet, cancels it all the same. (Enlisted
    /// anew, it escaped such a cancellation, which counted it as cancelled.) Its count as a
    /// run in progress goes on unbroken, so that a drain waiting on it never reads 0 between.
    fn taking_over(waiting: Waiting) -> Self {
        Self {
            _orphaned: Counted::new(&waiting.tasks.orphaned),
            _gone: Gone::new(),
            waiting,
        }
    }

    /// Resolves when a drain cancels the runs whose clients went away (see [`Tasks::cancel`]),
    /// this one among them.
    pub(crate) async fn cancelled(&self) {
        let waiting = &self.waiting;
        waiting.tasks.cancelled(waiting.generation).await;
    }
}

/// Counted toward this worker's [`orphans`] while held: on the thread it was made on, which
/// drops it too (the futures and bodies that hold it are not `Send`).
struct Gone;

impl Gone {
    fn new() -> Self {
        ORPHANS.with(|n| n.set(n.get() + 1));
        Self
    }
}

impl Drop for Gone {
    fn drop(&mut self) {
        ORPHANS.with(|n| n.set(n.get() - 1));
    }
}

/// A keyed request over HTTP/2 (or later), counted toward [`orphans`] while its run is in
/// progress in its request's future: actix never drops an HTTP/2 request's future, whether
/// its client reset its stream or lost its connection, and sends nothing that tells, so the
/// layer cannot tell a run whose client went away from one whose client waits. Left
/// uncounted, one client could start any number of runs nobody waits for, opening and
/// resetting streams on one connection. Should actix drop the future after all, the run's
/// task counts it from there, as an [`Orphan`], and this count goes with the future. It is
/// counted from before its claim, so that a claim on a store that must be waited for counts
/// too; a replay or a refusal uncounts it at once. A streamed answer's body holds one of its
/// own while actix holds it: actix reads a stream's reset only when it sends, so a body
/// waiting for its next piece is not known to be gone until that piece comes (then it is
/// dropped, and read on without its client as an [`Orphan`]).
pub(crate) struct Unseen {
    _gone: Option<Gone>,
}

impl Unseen {
    /// Not counted.
    pub(crate) const NONE: Self = Self { _gone: None };

    /// Counted if `req` came over HTTP/2 (or later).
    pub(crate) fn of(req: &actix_web::HttpRequest) -> Self {
        let http2 = req.version() >= actix_web::http::Version::HTTP_2;
        Self {
            _gone: http2.then(Gone::new),
        }
    }
}

/// Runs `work` detached from the connection: a client that goes away cancels nothing, so an
/// operation that started finishes, is recorded, and the retry gets the replay.
///
/// The work runs in the request's own future while its client waits, and moves to a task of
/// its own only when the connection drops that future (actix does when the client resets the
/// connection), counted toward [`orphans`] until it ends. From its first wait on, it counts
/// in [`TASKS`] either way, so that a drain waits for it, and cancels it when its time is up:
/// a run whose client still waits then answers 503 with `Retry-After` (its key released; or
/// its handler's answer, if it had one and its record was on its way), rather than being left to the server's graceful stop, which drops what is still running as
/// each worker's runtime stops, too late for the release of its claim. A task for every
/// request whose store must be waited for cost each such request on Redis about 9 us of its
/// 110 (the `redis` bench's layer rows with and without, idle machine; see
/// docs/performance.md).
///
/// `work` comes boxed, so that the caller's own future holds only a pointer to it, and so
/// that it can move to a task as it stands.
pub(crate) async fn detached(work: Work, answer: Answer) -> Reply {
    detached_in(&TASKS, work, answer).await
}

/// What a run cancelled while its client waits answers with: the request's id, and how the
/// layer's errors are rendered for its endpoint; and, over HTTP/2, its count toward
/// [`orphans`] while its request's future holds it (see [`Unseen`]).
pub(crate) struct Answer {
    pub(crate) request_id: RequestId,
    pub(crate) format: Option<ErrorFormat>,
    pub(crate) config: IdempotencyConfig,
    pub(crate) _unseen: Unseen,
}

/// [`detached`], counted in `tasks`.
async fn detached_in(tasks: &'static Tasks, work: Work, answer: Answer) -> Reply {
    let mut attached = Attached {
        tasks,
        work: Some(work),
        waiting: None,
    };
    // The wait for the next cancellation, from the run's first wait: boxed, so that the
    // request's future, built for every keyed request, does not carry it.
    let mut cancelled: Option<Pin<Box<dyn Future<Output = ()>>>> = None;
    let reply = std::future::poll_fn(|cx| {
        let Some(work) = &mut attached.work else {
            unreachable!("a finished run is not polled again")
        };
        let poll = work.as_mut().poll(cx);
        if poll.is_ready() {
            return poll.map(Some);
        }
        // A run that answers at once (a replay, a quick handler on the embedded store) is
        // never counted: no drain can come between.
        let cancelled = cancelled.get_or_insert_with(|| {
            let waiting = Waiting::new(tasks);
            let next = Box::pin(tasks.cancelled(waiting.generation));
            attached.waiting = Some(waiting);
            next
        });
        cancelled.as_mut().poll(cx).map(|()| None)
    })
    .await;
    let waiting = attached.waiting.take();
    // Dropped here, while the worker runs: its lease's release goes out through the store.
    let work = attached.work.take();
    if let Some(reply) = reply {
        drop(work);
        drop(waiting);
        return reply;
    }
    let cancelled = cancel(work);
    cancelled.count();
    drop(waiting);
    let Answer {
        request_id,
        format,
        config,
        ..
    } = answer;
    if cancelled.unclaimed {
        // Counted `unprotected` when it started; it holds no key, so a retry runs it again.
        tracing::warn!(%request_id, "idempotent operation running unprotected (its store failed, failing open) cancelled at shutdown while its client waited; answered 503, it held no key");
    } else if let Some(res) = cancelled.handed_over {
        // The operation ran: its answer, while its record is written in the background
        // (not known to be written: counted as a run a drain cancelled, as when its client
        // went away).
        tracing::warn!(%request_id, "a drain ran out of time while the response of an idempotent operation was being recorded; answered with it, and its record is written in the background");
        return Reply { req: None, res };
    } else {
        tracing::warn!(%request_id, "idempotent operation cancelled at shutdown while its client waited; answered 503, its key released");
    }
    // To retry, elsewhere or once the server is back: its key was released (or, for a
    // handler whose writes were being committed with its record, that commit decides: the
    // retry replays what it recorded, or runs).
    let error = IdempotencyError::ShuttingDown;
    Reply {
        req: None,
        res: error_response(&error, &request_id, format, config.renderer()),
    }
}

/// A stream's end waiting for its record (or, failed, its key's release), counted from before
/// it can be cancelled until the record is written, even once a cancellation has let the end
/// go: the client then has its whole answer and closes its connection, and the worker's
/// runtime, stopping with its last connection, would drop the record's task, so the drain
/// waits for it within its grace.
pub(crate) struct Finishing {
    _counted: Counted,
}

impl Finishing {
    pub(crate) fn new() -> Self {
        Self {
            _counted: Counted::new(&TASKS.finishing),
        }
    }

    /// Keeps the count until `written` ends, in a task of its own: the end it held goes out
    /// now.
    pub(crate) fn until(self, written: tokio::sync::oneshot::Receiver<()>) {
        let _ = spawned(async move {
            let _counted = self;
            let _ = written.await;
        });
    }
}

/// The next cancellation of the runs in progress (a drain that runs out of time), for a wait
/// of a run's own: counted among the runs in progress, and among those it cancels, until it
/// resolves or is dropped.
pub(crate) fn next_cancellation() -> Pin<Box<dyn Future<Output = ()>>> {
    let waiting = Waiting::new(&TASKS);
    Box::pin(async move {
        waiting.tasks.cancelled(waiting.generation).await;
        drop(waiting);
    })
}

/// Held by a run from its first wait (whether its client waits, or, within an [`Orphan`],
/// went away): counts it among the runs in progress, and among those the next cancellation
/// cancels.
struct Waiting {
    tasks: &'static Tasks,
    _running: Counted,
    /// The cancellations it had seen when it first waited.
    generation: usize,
}

impl Waiting {
    fn new(tasks: &'static Tasks) -> Self {
        Self {
            tasks,
            _running: Counted::new(&tasks.running),
            generation: tasks.enlist(),
        }
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        self.tasks.delist(self.generation);
    }
}

/// A run its client waits for; dropped unfinished (the client went away), it moves the run
/// to a task of its own.
struct Attached {
    tasks: &'static Tasks,
    work: Option<Work>,
    /// Its counts in [`TASKS`], from its first wait; uncounted when the run's task counts it.
    waiting: Option<Waiting>,
}

impl Drop for Attached {
    fn drop(&mut self) {
        let Some(work) = self.work.take() else { return };
        // Dropped while the thread unwinds, or outside actix's runtime: there is no task to
        // move to, and dropping the run releases its claim.
        if std::thread::panicking() {
            return;
        }
        let orphan = match self.waiting.take() {
            Some(waiting) => Orphan::taking_over(waiting),
            None => Orphan::counted_in(self.tasks),
        };
        let run = async move {
            // `orphan` counts the run until this block ends.
            let cancelled = std::pin::pin!(orphan.cancelled());
            if let Either::Right(((), work)) = select(work, cancelled).await {
                // Shutdown: the run is dropped here, which releases its claim (or, its
                // handler having answered, lets its record be written in the background).
                let cancelled = cancel(Some(work));
                cancelled.count();
                if cancelled.unclaimed {
                    tracing::warn!("idempotent operation running unprotected (its store failed, failing open) cancelled at shutdown; it held no key");
                } else if cancelled.handed_over.is_some() {
                    tracing::warn!("a drain ran out of time while the response of an idempotent operation was being recorded; its record is written in the background");
                } else {
                    tracing::warn!(
                        "idempotent operation cancelled at shutdown; its key is released"
                    );
                }
            }
        };
        if !spawned(run) {
            tracing::error!("an idempotent operation whose client went away was dropped outside actix's runtime; its key is released");
        }
    }
}

/// Runs `recording` in a task of its own: the recording of a response that goes out as it is
/// made (a teed stream), which holds its claim until the response ends. It counts among the
/// runs in progress, so that a drain waits for it. A drain that runs out of time does not
/// cancel it while its client still reads the response, as it cancels no run whose client
/// waits: the server's graceful stop sends the response on, and it is recorded. Once its
/// client has gone away, the recording counts as an [`Orphan`], and is cancelled with them.
pub(crate) fn spawn_recording(recording: impl std::future::Future<Output = ()> + 'static) {
    let running = Counted::new(&TASKS.running);
    let task = async move {
        let _running = running;
        recording.await;
    };
    if !spawned(task) {
        tracing::error!("a response stream under an idempotency key was made outside actix's runtime; its key is released");
    }
}

/// Runs `task` on the current actix worker, detached: `false` outside actix's runtime, where
/// there is none to run it (it is dropped).
fn spawned(task: impl std::future::Future<Output = ()> + 'static) -> bool {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        drop(actix_web::rt::spawn(task));
    }))
    .is_ok()
}

#[cfg(test)]
mod tests {
    use std::future::Future as _;
    use std::sync::{Arc, Mutex};
    use std::task::{Context, Wake, Waker};

    use super::*;

    /// A waker that ends a run when woken, as a run's task on another worker can end before
    /// the drain that woke it goes on.
    struct Ends(Mutex<Option<Orphan>>);

    impl Wake for Ends {
        fn wake(self: Arc<Self>) {
            self.0.lock().unwrap().take();
        }
    }

    #[test]
    fn a_cancellation_counts_the_runs_it_cancels_though_they_end_as_soon_as_woken() {
        let tasks: &'static Tasks = Box::leak(Box::default());
        let run = Orphan::counted_in(tasks);
        let waker = Waker::from(Arc::new(Ends(Mutex::new(Some(run)))));
        let mut cancelled =
            std::pin::pin!(tasks.cancelled(tasks.generation.load(Ordering::Acquire)));
        assert!(cancelled
            .as_mut()
            .poll(&mut Context::from_waker(&waker))
            .is_pending());
        assert_eq!(tasks.cancel(), 1, "the one run it cancelled");
        assert_eq!(tasks.orphaned.load(Ordering::Acquire), 0, "which ended");
    }

    /// A run that a cancellation took while its client waited, and whose client then went
    /// away before the run saw the cancellation (actix drops the request's future on a reset
    /// without polling it again), is cancelled all the same, and its drop is what the drain
    /// waits for. Its task enlisted it anew, past that cancellation: it ran on, counted as
    /// cancelled, and its key was dropped with the stopping runtime.
    #[actix_web::test]
    async fn a_run_taken_while_its_client_waited_whose_client_then_leaves_is_cancelled() {
        use std::sync::atomic::AtomicBool;

        struct Dropped(Arc<AtomicBool>);
        impl Drop for Dropped {
            fn drop(&mut self) {
                self.0.store(true, Ordering::SeqCst);
            }
        }

        let tasks: &'static Tasks = Box::leak(Box::default());
        let dropped = Arc::new(AtomicBool::new(false));
        let flag = Dropped(Arc::clone(&dropped));
        let work: Work = Box::pin(async move {
            let _flag = flag;
            std::future::pending::<Reply>().await
        });
        let answer = Answer {
            request_id: RequestId::of(&actix_web::test::TestRequest::default().to_http_request()),
            format: None,
            config: IdempotencyConfig::new(crate::MokaStore::new()),
            _unseen: Unseen::NONE,
        };
        let mut run = Box::pin(detached_in(tasks, work, answer));
        let waker = Waker::noop();
        assert!(run
            .as_mut()
            .poll(&mut Context::from_waker(waker))
            .is_pending());
        assert_eq!(tasks.cancel(), 1, "the run, waiting");
        // The client goes away before the run is polled again.
        drop(run);
        for _ in 0..100 {
            if dropped.load(Ordering::SeqCst) {
                break;
            }
            tokio::task::yield_now().await;
        }
        assert!(dropped.load(Ordering::SeqCst), "the run was cancelled");
        assert_eq!(tasks.taken.load(Ordering::Acquire), 0, "and it ended");
        assert_eq!(*tasks.uncancelled(), 0);
    }

    /// Two drains that run out of time together (one per application of the process, or one
    /// called twice) cancel each run once: the second does not count those the first cancelled
    /// and that have not ended yet, only runs whose clients went away since.
    #[test]
    fn a_second_cancellation_counts_only_the_runs_the_first_left() {
        let tasks: &'static Tasks = Box::leak(Box::default());
        let first = Orphan::counted_in(tasks);
        assert_eq!(tasks.cancel(), 1, "the one run");
        assert_eq!(tasks.cancel(), 0, "cancelled already, though not ended yet");
        let _second = Orphan::counted_in(tasks);
        drop(first);
        assert_eq!(tasks.cancel(), 1, "the run whose client went away since");
    }
}
