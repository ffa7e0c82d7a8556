//! Keeping a run going when its client goes away, and keeping count of such runs: a bound per
//! worker, and what a graceful shutdown waits for.

use std::cell::Cell;
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::LazyLock;
use std::task::Poll;

use actix_web::HttpResponse;
use futures_util::future::{select, Either};
use tokio::sync::Notify;

use super::record::panicked;
use super::{Reply, Work};

thread_local! {
    /// Runs on this worker whose clients went away and that have not finished yet.
    static ORPHANS: Cell<usize> = const { Cell::new(0) };
}

/// How many runs whose clients went away this worker thread is still finishing.
pub(crate) fn orphans() -> usize {
    ORPHANS.with(Cell::get)
}

/// The runs of this process moved to tasks of their own, across its workers and
/// applications: what [`IdempotencyConfig::drain`](crate::IdempotencyConfig::drain) waits for,
/// and cancels when its time is up. A shutdown is the process's.
pub(crate) static TASKS: LazyLock<Tasks> = LazyLock::new(Tasks::default);

/// A count of running tasks, a wake-up for whoever waits for none, and a cancellation.
#[derive(Debug, Default)]
pub(crate) struct Tasks {
    running: AtomicUsize,
    idle: Notify,
    /// Bumped by each cancellation: a task cancels when it changes from what it saw at its
    /// start, so that tasks started after a drain run normally.
    generation: AtomicUsize,
    cancel: Notify,
}

impl Tasks {
    /// Waits until no task runs.
    pub(crate) async fn idle(&self) {
        loop {
            let mut idle = std::pin::pin!(self.idle.notified());
            // Registered before the count is read, so a task ending in between wakes it.
            idle.as_mut().enable();
            if self.running.load(Ordering::Acquire) == 0 {
                return;
            }
            idle.await;
        }
    }

    /// Cancels every task still running: each drops its run, which releases its claim. The
    /// number cancelled.
    pub(crate) fn cancel(&self) -> usize {
        self.generation.fetch_add(1, Ordering::AcqRel);
        self.cancel.notify_waiters();
        self.running.load(Ordering::Acquire)
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

/// Where a run moved to a task stands, as its task and its client see it.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Its client still waits for it.
    Attached,
    /// Its client went away; it counts toward [`orphans`].
    Orphaned,
    /// It finished (or was cancelled).
    Done,
}

/// Held by a run's task: counts it while it runs, and uncounts it however it ends.
struct Running {
    phase: Rc<Cell<Phase>>,
}

impl Running {
    fn new(phase: Rc<Cell<Phase>>) -> Self {
        TASKS.running.fetch_add(1, Ordering::AcqRel);
        Self { phase }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if self.phase.replace(Phase::Done) == Phase::Orphaned {
            ORPHANS.with(|n| n.set(n.get() - 1));
        }
        if TASKS.running.fetch_sub(1, Ordering::AcqRel) == 1 {
            TASKS.idle.notify_waiters();
        }
    }
}

/// Held by the client's side: when it is dropped before the run finished (the client went
/// away), the run is counted as orphaned on this worker.
struct Waiting(Rc<Cell<Phase>>);

impl Drop for Waiting {
    fn drop(&mut self) {
        if self.0.get() == Phase::Attached {
            self.0.set(Phase::Orphaned);
            ORPHANS.with(|n| n.set(n.get() + 1));
        }
    }
}

/// Runs `work` detached from the connection: a client that goes away cancels nothing, so an
/// operation that started finishes, is recorded, and the retry gets the replay.
///
/// The work runs here until it first has to wait (a store round trip, a handler that awaits
/// I/O), and from then on as a task of its own that the connection cannot cancel, counted in
/// [`TASKS`] until it ends. A replay, or a quick handler on the embedded store, never waits, and
/// so costs no task.
///
/// `work` comes boxed, so that the caller's own future holds only a pointer to it.
pub(crate) async fn detached(mut work: Work) -> Reply {
    // Nothing awaits between this poll and the spawn, so the work cannot be cancelled
    // between.
    let first = std::future::poll_fn(|cx| Poll::Ready(work.as_mut().poll(cx))).await;
    if let Poll::Ready(reply) = first {
        return reply;
    }
    let phase = Rc::new(Cell::new(Phase::Attached));
    let running = Running::new(Rc::clone(&phase));
    let generation = TASKS.generation.load(Ordering::Acquire);
    let task = actix_web::rt::spawn(async move {
        // Uncounted when this block ends, before its client's side sees the reply.
        let _running = running;
        let cancelled = std::pin::pin!(TASKS.cancelled(generation));
        match select(work, cancelled).await {
            Either::Left((reply, _)) => reply,
            // Shutdown: the run is dropped here, which releases its claim.
            Either::Right(((), work)) => {
                drop(work);
                tracing::warn!("idempotent operation cancelled at shutdown; its key is released");
                Reply::orphan(HttpResponse::ServiceUnavailable().finish())
            }
        }
    });
    let _waiting = Waiting(phase);
    match task.await {
        Ok(reply) => reply,
        // The handler's panics are caught where it runs; only a bug of this crate lands here.
        Err(_) => Reply::orphan(panicked()),
    }
}
