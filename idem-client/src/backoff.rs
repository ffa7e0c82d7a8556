//! How long to wait before the next attempt.

use std::time::{Duration, SystemTime};

/// Capped exponential backoff with jitter.
///
/// The n-th retry waits between half and all of `min(max, initial * 2^(n-1))`, so that
/// clients that failed together do not come back together. When the server sent
/// `Retry-After`, the wait is that long plus up to half the backoff: never sooner than the
/// server asked, and still spread.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Backoff {
    pub(crate) initial: Duration,
    pub(crate) max: Duration,
}

impl Backoff {
    /// The backoff before jitter for retry `retry` (1 for the first retry).
    fn ceiling(&self, retry: u32) -> Duration {
        // 2^31 times any backoff worth configuring is past any cap; the shift saturates
        // instead of overflowing for the retries beyond.
        let factor = 1u32 << retry.saturating_sub(1).min(31);
        self.initial.saturating_mul(factor).min(self.max)
    }

    /// The least wait before retry `retry`, given the server's `Retry-After`: that, or half
    /// the backoff ([`delay`](Self::delay) with no jitter).
    pub(crate) fn least(&self, retry: u32, retry_after: Option<Duration>) -> Duration {
        self.delay(retry, retry_after, 0.0)
    }

    /// The wait before retry `retry`, given the server's `Retry-After` and `jitter`, a number
    /// in `[0, 1)` drawn at random.
    pub(crate) fn delay(&self, retry: u32, retry_after: Option<Duration>, jitter: f64) -> Duration {
        let ceiling = self.ceiling(retry);
        let jitter = jitter.clamp(0.0, 1.0);
        match retry_after {
            Some(after) => after.saturating_add(ceiling.mul_f64(jitter / 2.0)),
            None => ceiling.mul_f64(0.5 + jitter / 2.0),
        }
    }
}

/// `Retry-After` as a wait from `now`: delta-seconds (more than a `u64` counts are the
/// longest wait it does), or an HTTP-date (a date already past is no wait). `None` when the
/// value is neither.
pub(crate) fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        let seconds = value.parse::<u64>().unwrap_or(u64::MAX);
        return Some(Duration::from_secs(seconds));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;

    const BACKOFF: Backoff = Backoff {
        initial: Duration::from_millis(100),
        max: Duration::from_secs(5),
    };

    #[test]
    fn backoff_doubles_from_the_initial_wait_up_to_its_cap() {
        let highest = |retry| BACKOFF.delay(retry, None, 1.0);
        assert_eq!(highest(1), Duration::from_millis(100));
        assert_eq!(highest(2), Duration::from_millis(200));
        assert_eq!(highest(3), Duration::from_millis(400));
        assert_eq!(highest(6), Duration::from_millis(3200));
        assert_eq!(highest(7), Duration::from_secs(5));
        assert_eq!(highest(40), Duration::from_secs(5));
        assert_eq!(highest(u32::MAX), Duration::from_secs(5));
    }

    #[test]
    fn jitter_spreads_a_wait_between_half_and_all_of_its_backoff() {
        assert_eq!(BACKOFF.delay(3, None, 0.0), Duration::from_millis(200));
        assert_eq!(BACKOFF.delay(3, None, 0.5), Duration::from_millis(300));
        let mut rng = fastrand::Rng::with_seed(7);
        let waits: Vec<Duration> = (0..1000)
            .map(|_| BACKOFF.delay(3, None, rng.f64()))
            .collect();
        for wait in &waits {
            assert!(
                (Duration::from_millis(200)..Duration::from_millis(400)).contains(wait),
                "{wait:?}"
            );
        }
        // Spread over the range, not bunched at one end.
        let low = waits
            .iter()
            .filter(|w| **w < Duration::from_millis(300))
            .count();
        assert!((350..650).contains(&low), "{low} of 1000 in the lower half");
    }

    #[test]
    fn retry_after_is_a_floor_with_jitter_above_it() {
        let after = Some(Duration::from_secs(2));
        assert_eq!(BACKOFF.delay(1, after, 0.0), Duration::from_secs(2));
        let most = BACKOFF.delay(1, after, 0.999);
        assert!(most > Duration::from_secs(2) && most < Duration::from_millis(2050));
        // A Retry-After above the backoff's cap is still honoured.
        assert!(BACKOFF.delay(1, Some(Duration::from_secs(30)), 0.3) >= Duration::from_secs(30));
    }

    #[test]
    fn retry_after_reads_delta_seconds_and_http_dates() {
        let now = httpdate::parse_http_date("Wed, 21 Oct 2015 07:28:00 GMT").unwrap();
        assert_eq!(parse_retry_after("1", now), Some(Duration::from_secs(1)));
        assert_eq!(
            parse_retry_after(" 120 ", now),
            Some(Duration::from_secs(120))
        );
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:30 GMT", now),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:27:00 GMT", now),
            Some(Duration::ZERO)
        );
        for bad in ["", "-1", "1.5", "soon", "Wed, 21 Oct 2015"] {
            assert_eq!(parse_retry_after(bad, now), None, "{bad:?}");
        }
    }

    /// Delta-seconds past what a `u64` holds is a wait longer than any limit, as `u64::MAX`
    /// seconds is; it read as no `Retry-After` at all, so a larger wait asked for a sooner retry.
    #[test]
    fn a_retry_after_too_long_to_count_is_the_longest_wait() {
        let now = SystemTime::UNIX_EPOCH;
        let longest = Some(Duration::from_secs(u64::MAX));
        assert_eq!(parse_retry_after("18446744073709551615", now), longest);
        assert_eq!(parse_retry_after("18446744073709551616", now), longest);
        assert_eq!(parse_retry_after(&"9".repeat(100), now), longest);
        assert_eq!(
            parse_retry_after("0018", now),
            Some(Duration::from_secs(18))
        );
    }
}
