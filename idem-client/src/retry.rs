//! The attempts of one operation: when to try again, and when to stop.

use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

use crate::backoff::Backoff;
use crate::{Error, Failure};

/// The limits on one operation's attempts.
#[derive(Clone, Copy, Debug)]
pub(crate) struct RetryPolicy {
    /// Attempts in all, the first included; at least 1.
    pub(crate) max_attempts: u32,
    /// From the first attempt's start: no attempt runs, and no wait lasts, past it.
    pub(crate) max_elapsed: Duration,
    /// The longest an attempt may take (connecting, sending, the whole answer).
    pub(crate) attempt_timeout: Duration,
    pub(crate) backoff: Backoff,
}

/// What one attempt came to.
pub(crate) enum Verdict<T> {
    /// An answer to hand back.
    Done(T),
    /// A failure a later attempt can mend, with the server's `Retry-After` if it sent one.
    Retry {
        failure: Failure,
        retry_after: Option<Duration>,
    },
    /// A failure no retry mends.
    Stop(Error),
}

/// Runs `attempt` (given its number, from 1, and the time it may take) until it is done,
/// stops, or the policy's attempts or time run out. The waits between attempts use tokio's
/// clock, so that tests can run them on paused time.
pub(crate) async fn run<T, F, Fut>(
    policy: &RetryPolicy,
    key: &str,
    rng: &mut fastrand::Rng,
    mut attempt: F,
) -> Result<T, Error>
where
    F: FnMut(u32, Duration) -> Fut,
    Fut: Future<Output = Verdict<T>>,
{
    let start = Instant::now();
    // A limit too far off for the clock to add is no limit.
    let deadline = start.checked_add(policy.max_elapsed);
    let mut number = 1;
    loop {
        let left = deadline.map(|deadline| deadline.saturating_duration_since(Instant::now()));
        let timeout = left.map_or(policy.attempt_timeout, |left| {
            policy.attempt_timeout.min(left)
        });
        let give_up = |failure| Error::GaveUp {
            key: key.to_owned(),
            attempts: number,
            elapsed: start.elapsed(),
            last: failure,
        };
        let (failure, retry_after) = match attempt(number, timeout).await {
            Verdict::Done(answer) => return Ok(answer),
            // A refusal of a later attempt, before sending (a TLS handshake) or by the server
            // (another instance of it, misconfigured), says nothing of the earlier ones, which
            // may have run: the outcome is unknown, and the error keeps the key.
            Verdict::Stop(Error::Transport(error)) if number > 1 => {
                return Err(give_up(Failure::Transport(error)))
            }
            Verdict::Stop(Error::Refused { status, code, .. }) if number > 1 => {
                let code = Some(code);
                return Err(give_up(Failure::Status { status, code }));
            }
            // So is a mismatch of the same bytes (an instance that fingerprints otherwise):
            // its advice, a new key, would run the operation again if an earlier one ran.
            Verdict::Stop(Error::Mismatch { status, .. }) if number > 1 => {
                let code = Some("idempotency_conflict".to_owned());
                return Err(give_up(Failure::Status { status, code }));
            }
            Verdict::Stop(error) => return Err(error),
            Verdict::Retry {
                failure,
                retry_after,
            } => (failure, retry_after),
        };
        if number >= policy.max_attempts {
            return Err(give_up(failure));
        }
        let least = policy.backoff.least(number, retry_after);
        let wait = policy.backoff.delay(number, retry_after, rng.f64());
        // Waiting past the deadline would leave no time for the attempt it waits for; a wait
        // too long for the clock to add (an absurd `Retry-After`) is past any. Only the least
        // wait counts for that: the random part added to it, which only spreads clients out,
        // is cut to end halfway from the least wait's end to the deadline, rather than give
        // up an attempt there is time for.
        let now = Instant::now();
        let Some(least_until) = now.checked_add(least) else {
            return Err(give_up(failure));
        };
        let wait = match (deadline, now.checked_add(wait)) {
            (Some(deadline), _) if least_until >= deadline => return Err(give_up(failure)),
            (Some(deadline), until) if until.is_none_or(|until| until >= deadline) => {
                least + (deadline - least_until) / 2
            }
            (None, None) => return Err(give_up(failure)),
            _ => wait,
        };
        tokio::time::sleep(wait).await;
        number += 1;
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::sync::Mutex;

    use reqwest::StatusCode;

    use super::*;

    const POLICY: RetryPolicy = RetryPolicy {
        max_attempts: 5,
        max_elapsed: Duration::from_secs(60),
        attempt_timeout: Duration::from_secs(10),
        backoff: Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(5),
        },
    };

    fn unavailable(retry_after: Option<Duration>) -> Verdict<&'static str> {
        Verdict::Retry {
            failure: Failure::Status {
                status: StatusCode::SERVICE_UNAVAILABLE,
                code: None,
            },
            retry_after,
        }
    }

    /// Plays `verdicts` in order, noting when (since the start) each attempt began and the
    /// timeout it was given.
    struct Script {
        verdicts: Mutex<VecDeque<Verdict<&'static str>>>,
        seen: Mutex<Vec<(u32, Duration, Duration)>>,
        start: Instant,
    }

    impl Script {
        fn new(verdicts: impl IntoIterator<Item = Verdict<&'static str>>) -> Self {
            Self {
                verdicts: Mutex::new(verdicts.into_iter().collect()),
                seen: Mutex::new(Vec::new()),
                start: Instant::now(),
            }
        }

        async fn run(&self, policy: &RetryPolicy) -> Result<&'static str, Error> {
            let mut rng = fastrand::Rng::with_seed(1);
            run(policy, "key-1", &mut rng, |number, timeout| {
                self.seen
                    .lock()
                    .unwrap()
                    .push((number, self.start.elapsed(), timeout));
                let verdict = self.verdicts.lock().unwrap().pop_front();
                async move { verdict.unwrap_or_else(|| unavailable(None)) }
            })
            .await
        }

        fn seen(&self) -> Vec<(u32, Duration, Duration)> {
            self.seen.lock().unwrap().clone()
        }
    }

    #[tokio::test(start_paused = true)]
    async fn retries_wait_a_jittered_exponential_backoff() {
        let script = Script::new([unavailable(None), unavailable(None), Verdict::Done("ok")]);
        assert_eq!(script.run(&POLICY).await.unwrap(), "ok");
        let seen = script.seen();
        assert_eq!(seen.len(), 3);
        let first_wait = seen[1].1 - seen[0].1;
        let second_wait = seen[2].1 - seen[1].1;
        assert!(
            (Duration::from_millis(50)..Duration::from_millis(100)).contains(&first_wait),
            "{first_wait:?}"
        );
        assert!(
            (Duration::from_millis(100)..Duration::from_millis(200)).contains(&second_wait),
            "{second_wait:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_retry_waits_at_least_the_servers_retry_after() {
        let script = Script::new([
            unavailable(Some(Duration::from_secs(3))),
            Verdict::Done("ok"),
        ]);
        assert_eq!(script.run(&POLICY).await.unwrap(), "ok");
        let wait = script.seen()[1].1;
        assert!(
            (Duration::from_secs(3)..Duration::from_millis(3050)).contains(&wait),
            "{wait:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn attempts_stop_at_max_attempts_with_the_last_failure() {
        let script = Script::new([]);
        let err = script.run(&POLICY).await.unwrap_err();
        assert_eq!(script.seen().len(), 5);
        match err {
            Error::GaveUp {
                attempts,
                key,
                last: Failure::Status { status, .. },
                ..
            } => {
                assert_eq!(attempts, 5);
                assert_eq!(key, "key-1");
                assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
            }
            other => panic!("{other}"),
        }
    }

    /// A `Retry-After` too far off for the clock to add (`u64::MAX` seconds is valid
    /// delta-seconds) is past any time limit: the client gives up, it does not panic.
    #[tokio::test(start_paused = true)]
    async fn a_retry_after_beyond_the_clock_gives_up_instead_of_panicking() {
        let script = Script::new([unavailable(Some(Duration::from_secs(u64::MAX)))]);
        let err = script.run(&POLICY).await.unwrap_err();
        assert!(matches!(err, Error::GaveUp { attempts: 1, .. }), "{err}");
    }

    /// A time limit beyond the clock (`Duration::MAX`) means no limit, as do a backoff's.
    #[tokio::test(start_paused = true)]
    async fn limits_beyond_the_clock_mean_none() {
        let unbounded = RetryPolicy {
            max_elapsed: Duration::MAX,
            backoff: Backoff {
                initial: Duration::MAX,
                max: Duration::MAX,
            },
            ..POLICY
        };
        let script = Script::new([Verdict::Done("ok")]);
        assert_eq!(script.run(&unbounded).await.unwrap(), "ok");
        let script = Script::new([unavailable(None)]);
        let err = script.run(&unbounded).await.unwrap_err();
        assert!(matches!(err, Error::GaveUp { attempts: 1, .. }), "{err}");
    }

    /// A `Retry-After` that leaves time for another attempt gets one, however much of the
    /// random spread on top of it would not fit: the spread is cut to fit, where the client
    /// gave up at once.
    #[tokio::test(start_paused = true)]
    async fn the_spread_above_retry_after_never_makes_the_client_give_up_an_attempt_that_fits() {
        let policy = RetryPolicy {
            max_elapsed: Duration::from_secs(2),
            backoff: Backoff {
                initial: Duration::from_secs(8),
                max: Duration::from_secs(8),
            },
            ..POLICY
        };
        let script = Script::new([
            unavailable(Some(Duration::from_secs(1))),
            Verdict::Done("ok"),
        ]);
        assert_eq!(
            script.run(&policy).await.ok(),
            Some("ok"),
            "{:?}",
            script.seen()
        );
        let seen = script.seen();
        assert!(
            seen[1].1 >= Duration::from_secs(1) && seen[1].1 < Duration::from_secs(2),
            "the retry waits its Retry-After and comes before the limit: {seen:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_retry_after_beyond_the_time_limit_ends_at_once() {
        let policy = RetryPolicy {
            max_elapsed: Duration::from_secs(2),
            ..POLICY
        };
        let script = Script::new([unavailable(Some(Duration::from_secs(5)))]);
        let start = Instant::now();
        let err = script.run(&policy).await.unwrap_err();
        assert!(matches!(err, Error::GaveUp { attempts: 1, .. }), "{err}");
        assert_eq!(
            start.elapsed(),
            Duration::ZERO,
            "no wait that cannot pay off"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_time_limit_bounds_attempts_and_the_last_attempts_timeout() {
        let policy = RetryPolicy {
            max_attempts: 1000,
            max_elapsed: Duration::from_secs(10),
            attempt_timeout: Duration::from_secs(4),
            ..POLICY
        };
        let script = Script::new(
            std::iter::repeat_with(|| unavailable(Some(Duration::from_secs(3)))).take(10),
        );
        let start = Instant::now();
        let err = script.run(&policy).await.unwrap_err();
        assert!(start.elapsed() < Duration::from_secs(10));
        let seen = script.seen();
        // Attempts near 0 s, 3 s, 6 s and 9 s; then the next wait would pass 10 s.
        assert_eq!(seen.len(), 4, "{seen:?}");
        assert!(matches!(err, Error::GaveUp { attempts: 4, .. }), "{err}");
        // The first attempts get the whole timeout, the last only what is left.
        assert_eq!(seen[0].2, Duration::from_secs(4));
        assert!(seen[3].2 < Duration::from_secs(1) + Duration::from_millis(1));
    }

    fn refused() -> Verdict<&'static str> {
        Verdict::Stop(Error::Refused {
            key: "key-1".into(),
            status: StatusCode::INTERNAL_SERVER_ERROR,
            code: "idempotency_layer_missing".into(),
            message: None,
            request_id: None,
        })
    }

    /// The status and code `stop`, answered to the attempt after one that timed out (a
    /// proxy's 504), is given up with: the operation ends as given up after two attempts, with
    /// its key, as its first attempt may have run.
    async fn given_up_after_a_timeout(stop: Verdict<&'static str>) -> (StatusCode, Option<String>) {
        let timeout = Verdict::Retry {
            failure: Failure::Status {
                status: StatusCode::GATEWAY_TIMEOUT,
                code: None,
            },
            retry_after: None,
        };
        let err = Script::new([timeout, stop]).run(&POLICY).await.unwrap_err();
        let Error::GaveUp {
            key,
            attempts: 2,
            last: Failure::Status { status, code },
            ..
        } = err
        else {
            panic!("given up, the outcome unknown: {err:?}")
        };
        assert_eq!(key, "key-1");
        (status, code)
    }

    /// A refusal of a later attempt (another instance, misconfigured, in a rolling deploy) says
    /// nothing of the earlier ones, which may have run (a timeout after sending, a proxy's
    /// 504): the operation ends as given up, with its key and the refusal as its last failure,
    /// where it ended as `Refused`, which tells the caller that nothing ran. A first attempt's
    /// refusal is `Refused`, as before.
    #[tokio::test(start_paused = true)]
    async fn a_refusal_after_an_attempt_that_may_have_run_ends_as_given_up() {
        let (status, code) = given_up_after_a_timeout(refused()).await;
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(code.as_deref(), Some("idempotency_layer_missing"));
        let first = Script::new([refused()]).run(&POLICY).await.unwrap_err();
        assert!(matches!(first, Error::Refused { .. }), "{first:?}");
    }

    /// A mismatch answered to a later attempt that sent the same bytes (another instance,
    /// fingerprinting otherwise, in a rolling deploy) says nothing of the earlier ones either:
    /// given up with the key, where it ended as a mismatch, whose advice (a new key) would run
    /// the operation a second time if an earlier attempt ran.
    #[tokio::test(start_paused = true)]
    async fn a_mismatch_after_an_attempt_that_may_have_run_ends_as_given_up() {
        let mismatch = || {
            Verdict::Stop(Error::Mismatch {
                key: "key-1".into(),
                status: StatusCode::UNPROCESSABLE_ENTITY,
                message: None,
                request_id: None,
            })
        };
        let (status, code) = given_up_after_a_timeout(mismatch()).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(code.as_deref(), Some("idempotency_conflict"));
        // Answered to the first attempt, it is the client's own mismatch.
        let first = Script::new([mismatch()]).run(&POLICY).await.unwrap_err();
        assert!(matches!(first, Error::Mismatch { .. }), "{first:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_stop_is_not_retried() {
        let script = Script::new([Verdict::Stop(Error::InvalidRequest("bad".into()))]);
        let err = script.run(&POLICY).await.unwrap_err();
        assert!(matches!(err, Error::InvalidRequest(_)), "{err}");
        assert_eq!(script.seen().len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn one_attempt_allowed_means_no_retry() {
        let policy = RetryPolicy {
            max_attempts: 1,
            ..POLICY
        };
        let script = Script::new([]);
        let err = script.run(&policy).await.unwrap_err();
        assert!(matches!(err, Error::GaveUp { attempts: 1, .. }), "{err}");
    }
}
