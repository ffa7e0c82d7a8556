//! Keeping a run going when its client goes away.

use std::task::Poll;

use super::record::panicked;
use super::{Reply, Work};

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
