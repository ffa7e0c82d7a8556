//! Time as the engine sees it.
//!
//! Records carry absolute times (lease ends, expiry) so that several server processes sharing
//! one store agree on them: for a shared store the engine reads the wall clock. A store in this
//! process only has nobody to agree with, and there the engine reads a [`MonotonicClock`],
//! which a step of the wall clock does not move. The clock is injectable so that tests can
//! move time by hand.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(u64);

impl Timestamp {
    /// A timestamp from milliseconds since the Unix epoch.
    pub const fn from_millis(millis: u64) -> Self {
        Self(millis)
    }

    /// Milliseconds since the Unix epoch.
    pub const fn as_millis(self) -> u64 {
        self.0
    }

    /// This time plus `duration`, saturating at the far future.
    pub fn saturating_add(self, duration: Duration) -> Self {
        let millis = u64::try_from(duration.as_millis()).unwrap_or(u64::MAX);
        Self(self.0.saturating_add(millis))
    }

    /// How long from `earlier` to this time; zero when `earlier` is later.
    pub fn since(self, earlier: Timestamp) -> Duration {
        Duration::from_millis(self.0.saturating_sub(earlier.0))
    }
}

/// The farthest ahead the runtime's clock is asked to count, ten years of 365.25 days: a
/// longer time (such as `Duration::MAX`) would overflow it, and no wait, retry or interval
/// of the layer's outlives ten years anyway.
pub(crate) const FARTHEST: Duration = Duration::from_secs(10 * 36_525 * 24 * 36);

/// A source of the current time.
pub trait Clock: Send + Sync + 'static {
    /// The current time.
    fn now(&self) -> Timestamp;
}

/// The system's wall clock.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        let since_epoch = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or(Duration::ZERO);
        Timestamp(u64::try_from(since_epoch.as_millis()).unwrap_or(u64::MAX))
    }
}

/// Wall-clock time read once, then moved on by the monotonic clock.
///
/// Its times start as the wall clock's and keep its pace (both are slewed alike by time
/// synchronisation), but a step of the wall clock (set by an operator or by NTP at boot, a VM
/// resumed) does not move them: a running claim does not lapse, nor a record end, because the
/// wall clock jumped. This is the clock the engine reads for a store in this process only
/// (see [`Store::in_process`](crate::Store::in_process)). A store shared by several processes
/// needs the wall clock instead: each process anchors its own monotonic clock, and only wall
/// time is common to them.
///
/// ```
/// use idem_core::clock::{Clock, ManualClock, MonotonicClock, Timestamp};
/// use std::time::Duration;
///
/// let wall = ManualClock::new(Timestamp::from_millis(1_000_000));
/// let clock = MonotonicClock::anchored(&wall);
/// wall.advance(Duration::from_secs(3600));
/// assert!(clock.now() < Timestamp::from_millis(1_000_000 + 3_600_000));
/// ```
#[derive(Clone, Copy, Debug)]
pub struct MonotonicClock {
    anchor: Timestamp,
    started: Instant,
}

impl MonotonicClock {
    /// The process's clock, anchored on the system clock when it is first asked for: every
    /// engine of the process then agrees on times, even one built after a step of the wall
    /// clock.
    pub fn new() -> Self {
        static PROCESS: OnceLock<MonotonicClock> = OnceLock::new();
        *PROCESS.get_or_init(|| Self::anchored(&SystemClock))
    }

    /// A clock anchored on `wall`'s time now (for tests that step a fake wall clock).
    pub fn anchored(wall: &(impl Clock + ?Sized)) -> Self {
        Self {
            anchor: wall.now(),
            started: Instant::now(),
        }
    }
}

impl Default for MonotonicClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for MonotonicClock {
    fn now(&self) -> Timestamp {
        self.anchor.saturating_add(self.started.elapsed())
    }
}

/// A clock that only moves when told to, for tests of TTLs and leases.
///
/// Clones share the same time.
///
/// ```
/// use idem_core::clock::{Clock, ManualClock, Timestamp};
/// use std::time::Duration;
///
/// let clock = ManualClock::new(Timestamp::from_millis(1_000));
/// clock.advance(Duration::from_secs(2));
/// assert_eq!(clock.now(), Timestamp::from_millis(3_000));
/// ```
#[derive(Clone, Debug, Default)]
pub struct ManualClock(Arc<AtomicU64>);

impl ManualClock {
    /// A clock standing at `start`.
    pub fn new(start: Timestamp) -> Self {
        Self(Arc::new(AtomicU64::new(start.0)))
    }

    /// Moves the clock forward.
    pub fn advance(&self, by: Duration) {
        let millis = u64::try_from(by.as_millis()).unwrap_or(u64::MAX);
        self.0.fetch_add(millis, Ordering::SeqCst);
    }

    /// Sets the clock to `to`.
    pub fn set(&self, to: Timestamp) {
        self.0.store(to.0, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Timestamp {
        Timestamp(self.0.load(Ordering::SeqCst))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_saturate_instead_of_overflowing() {
        let late = Timestamp::from_millis(u64::MAX - 1);
        assert_eq!(
            late.saturating_add(Duration::from_secs(10)).as_millis(),
            u64::MAX
        );
        assert_eq!(Timestamp::from_millis(5).since(late), Duration::ZERO);
    }

    #[test]
    fn a_monotonic_clock_keeps_time_from_its_anchor_but_not_the_wall_clocks_steps() {
        let start = Timestamp::from_millis(1_700_000_000_000);
        let wall = ManualClock::new(start);
        let clock = MonotonicClock::anchored(&wall);
        wall.advance(Duration::from_secs(3600));
        std::thread::sleep(Duration::from_millis(20));
        let now = clock.now();
        assert!(
            now >= start.saturating_add(Duration::from_millis(20)),
            "{now:?}"
        );
        assert!(
            now < start.saturating_add(Duration::from_secs(60)),
            "{now:?}"
        );
    }

    #[test]
    fn the_process_monotonic_clock_is_one_and_near_the_wall_clock() {
        let (a, b) = (MonotonicClock::new(), MonotonicClock::new());
        assert_eq!(a.anchor, b.anchor, "every engine of the process agrees");
        let drift = SystemClock.now().as_millis().abs_diff(a.now().as_millis());
        assert!(drift < 1_000, "{drift} ms from the wall clock");
    }

    #[test]
    fn system_clock_is_after_2020() {
        assert!(SystemClock.now().as_millis() > 1_577_836_800_000);
    }
}
