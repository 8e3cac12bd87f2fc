//! Retrying what is transient, the one policy every adapter shares: capped, jittered exponential backoff
//! that honours the provider's `Retry-After`, a wait on a spent rate-limit window that is not counted as an
//! attempt ([`PACING`]), and nothing else retried.

use std::future::Future;
use std::time::Duration;

use rand::Rng;
use tokio_util::sync::CancellationToken;

use super::error::{ErrorClass, ProviderError};
use crate::config::RetryPolicy;
use crate::metrics::RetryReason;

/// Longest `Retry-After` we honour as given; beyond it a run would look hung. Clamped, not ignored.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(15 * 60);

/// The wait before retry number `attempt` (0-based). Pure; `jitter` in [0, 1) comes from the caller.
///
/// Exponential from `base`, capped at `max`, with "equal jitter" (half fixed, half random) so many
/// conversations retrying at once spread out. A provider's `Retry-After` is a floor, plus a little jitter.
pub fn backoff(policy: &RetryPolicy, attempt: u32, retry_after: Option<Duration>, jitter: f64) -> Duration {
    let exp = policy.base.saturating_mul(1u32.checked_shl(attempt.min(20)).unwrap_or(u32::MAX)).min(policy.max);
    let computed = exp / 2 + exp.mul_f64(jitter.clamp(0.0, 1.0) / 2.0);
    match retry_after {
        Some(ra) => ra.min(MAX_RETRY_AFTER) + Duration::from_millis(50).mul_f64(jitter),
        None => computed,
    }
}

/// A wait the provider asked for that is longer than this is logged at WARN with the time it resumes.
const LONG_WAIT: Duration = Duration::from_secs(10);

/// Malformed pages are retried at most this many times: a broken proxy can recover, a changed API cannot.
const MALFORMED_RETRIES: u32 = 2;

/// The code of a [`ErrorClass::Transient`] error an adapter returns *instead of* sending a request, because
/// the provider's rate-limit window is spent (X API v2): `retry_after` is the time until the window resets.
/// Waiting for a window is not a failure, so [`with_retry`] does not count it as an attempt.
pub const PACING: &str = "rate_limit_pacing";

/// Runs `op` until it succeeds, fails for good, or `cancel` fires (then the last error is returned).
pub async fn with_retry<T, F, Fut>(
    policy: &RetryPolicy,
    cancel: &CancellationToken,
    mut op: F,
) -> Result<T, ProviderError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, ProviderError>>,
{
    let mut attempt = 0u32;
    let mut malformed = 0u32;
    loop {
        let err = match op().await {
            Ok(v) => return Ok(v),
            Err(e) => e,
        };
        let paced = err.code == PACING && err.status.is_none();
        let retry = match err.class {
            ErrorClass::Transient => paced || attempt < policy.max_retries,
            ErrorClass::Malformed => {
                malformed += 1;
                malformed <= MALFORMED_RETRIES && attempt < policy.max_retries
            }
            ErrorClass::Conversation | ErrorClass::Fatal => false,
        };
        if !retry {
            return Err(err);
        }
        crate::metrics::global().retried(&policy.pipeline, reason(&err, paced));
        let wait = backoff(policy, attempt, err.retry_after, rand::thread_rng().gen());
        if err.retry_after.is_some() && wait > LONG_WAIT && !paced {
            // A long wait the provider asked for must not look like a hang: say so, and until when.
            let resumes = crate::time::format_time(std::time::SystemTime::now() + wait);
            tracing::warn!(endpoint = err.endpoint, status = err.status, code = %err.code, wait_s = wait.as_secs(), resumes_at = %resumes, "the provider asked us to wait (Retry-After) before the next request; waiting until {resumes}");
        } else {
            tracing::debug!(endpoint = err.endpoint, status = err.status, code = %err.code, attempt, wait_ms = wait.as_millis() as u64, "retrying");
        }
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = cancel.cancelled() => return Err(err),
        }
        if !paced {
            attempt += 1;
        }
    }
}

/// The `reason` label of a retry: a short, fixed word for what went wrong, never the provider's own code.
fn reason(err: &ProviderError, paced: bool) -> RetryReason {
    if paced {
        return RetryReason::Pacing;
    }
    if err.class == ErrorClass::Malformed {
        return RetryReason::Malformed;
    }
    match err.status {
        Some(429) => RetryReason::RateLimited,
        Some(500..=599) => RetryReason::ServerError,
        Some(_) => RetryReason::Other,
        None if err.code == "timeout" => RetryReason::Timeout,
        None => RetryReason::Connection,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> RetryPolicy {
        RetryPolicy {
            pipeline: "retry-tests".into(),
            request_timeout: Duration::from_secs(5),
            max_retries: 3,
            base: Duration::from_millis(100),
            max: Duration::from_secs(2),
        }
    }

    #[test]
    fn backoff_grows_caps_and_jitters_within_bounds() {
        let p = policy();
        assert_eq!(backoff(&p, 0, None, 0.0), Duration::from_millis(50));
        assert_eq!(backoff(&p, 0, None, 0.999_999).as_millis(), 99);
        assert_eq!(backoff(&p, 3, None, 0.0), Duration::from_millis(400));
        assert_eq!(backoff(&p, 30, None, 0.0), Duration::from_secs(1), "capped at max, halved by jitter floor");
        assert!(backoff(&p, 30, None, 0.99) <= Duration::from_secs(2));
    }

    #[test]
    fn retry_after_is_a_floor_and_is_clamped() {
        let p = policy();
        assert!(backoff(&p, 0, Some(Duration::from_secs(7)), 0.5) >= Duration::from_secs(7));
        assert!(backoff(&p, 0, Some(Duration::from_secs(86_400)), 0.0) <= MAX_RETRY_AFTER);
    }

    fn fail(class: ErrorClass) -> ProviderError {
        ProviderError {
            retry_after: Some(Duration::from_millis(1)),
            ..ProviderError::new(class, "GET /t", Some(503), "x", "y")
        }
    }

    #[tokio::test(start_paused = true)]
    async fn transient_is_retried_until_success_but_fatal_is_not() {
        let cancel = CancellationToken::new();
        let mut calls = 0;
        let r: Result<u32, _> = with_retry(&policy(), &cancel, || {
            calls += 1;
            let c = calls;
            async move {
                if c < 3 {
                    Err(fail(ErrorClass::Transient))
                } else {
                    Ok(c)
                }
            }
        })
        .await;
        assert_eq!(r.unwrap(), 3);
        for class in [ErrorClass::Fatal, ErrorClass::Conversation] {
            let mut calls = 0;
            let r: Result<(), _> = with_retry(&policy(), &cancel, || {
                calls += 1;
                async move { Err(fail(class)) }
            })
            .await;
            assert!(r.is_err());
            assert_eq!(calls, 1, "{class:?} must never be retried");
        }
    }

    #[test]
    fn retry_reasons_are_a_few_fixed_words() {
        let e = |class, status, code| ProviderError::new(class, "GET /t", status, code, "h");
        use ErrorClass::*;
        for (err, paced, want) in [
            (e(Transient, Some(429), "rate_limit_exceeded"), false, "429"),
            (e(Transient, Some(503), "http_503"), false, "5xx"),
            (e(Transient, Some(424), "x_unavailable"), false, "other"),
            (e(Transient, None, "timeout"), false, "timeout"),
            (e(Transient, None, "connection_dropped"), false, "connection"),
            (e(Transient, None, "connect_failed"), false, "connection"),
            (e(Malformed, Some(200), "malformed_response"), false, "malformed"),
            (e(Transient, None, PACING), true, "pacing"),
        ] {
            assert_eq!(reason(&err, paced).as_str(), want, "{err}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn retries_are_bounded() {
        let cancel = CancellationToken::new();
        let mut calls = 0;
        let _ = with_retry::<(), _, _>(&policy(), &cancel, || {
            calls += 1;
            async { Err(fail(ErrorClass::Transient)) }
        })
        .await;
        assert_eq!(calls, 4, "one try plus max_retries");
        let mut calls = 0;
        let _ = with_retry::<(), _, _>(&policy(), &cancel, || {
            calls += 1;
            async { Err(fail(ErrorClass::Malformed)) }
        })
        .await;
        assert_eq!(calls, 1 + MALFORMED_RETRIES);
    }
}
