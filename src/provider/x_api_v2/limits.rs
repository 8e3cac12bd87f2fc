//! X API v2 rate-limit windows: what X last said about each endpoint family of a user token, and the
//! request that would exceed a spent window held back (failing fast with the wait as `retry_after`)
//! instead of drawing a 429. The window arithmetic is pure ([`Window`]); [`Limits::exchange`] is the one
//! place a request of this adapter goes over HTTP.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::errors::classify;
use crate::provider::{ErrorClass, ProviderError, PACING};

/// Waited past a window's reset before asking again: the reset is in whole seconds and clocks differ.
pub(super) const RESET_MARGIN: Duration = Duration::from_millis(250);
/// The longest wait a rate-limit reset is taken at (as for `Retry-After` elsewhere).
pub(super) const MAX_RESET_WAIT: Duration = Duration::from_secs(15 * 60);

/// The endpoint families X counts separately, per user (PROVIDERS.md section 3, rate limits).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Bucket {
    /// Every DM event read: 15 per 15 minutes.
    DmRead = 0,
    /// Message sends and group creation: 15 per 15 minutes (and 1,440 a day).
    DmWrite = 1,
    Delete = 2,
    Media = 3,
    Users = 4,
}

/// What X last said about one window, adjusted for the requests sent since.
#[derive(Debug, Default)]
pub(super) struct Window {
    /// Requests left before the reset; None until a response says.
    pub(super) remaining: Option<u32>,
    /// When the window resets, on our clock.
    pub(super) reset: Option<SystemTime>,
}

impl Window {
    /// How long to hold the next request, if it would exceed the window.
    pub(super) fn wait(&self, now: SystemTime) -> Option<Duration> {
        if self.remaining != Some(0) {
            return None;
        }
        let until = self.reset?.duration_since(now).ok()?;
        Some((until + RESET_MARGIN).min(MAX_RESET_WAIT))
    }

    /// Takes in a response's `x-rate-limit-remaining` and `x-rate-limit-reset` (Unix seconds).
    pub(super) fn observe(&mut self, headers: &reqwest::header::HeaderMap, now: SystemTime) {
        let num =
            |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).and_then(|v| v.trim().parse::<u64>().ok());
        if let Some(r) = num("x-rate-limit-remaining") {
            self.remaining = Some(u32::try_from(r).unwrap_or(u32::MAX));
        }
        if let Some(reset) = num("x-rate-limit-reset") {
            // A reset far in the future (a skewed clock, a daily cap) is held to the clamp, never beyond.
            let at = UNIX_EPOCH + Duration::from_secs(reset);
            self.reset = Some(at.min(now + MAX_RESET_WAIT));
        }
    }

    /// After a 429: how long until the window resets, never negative and at least a second (our clock
    /// may run ahead of X's), at most the clamp.
    pub(super) fn retry_after(&self, now: SystemTime) -> Option<Duration> {
        let reset = self.reset?;
        let until = reset.duration_since(now).unwrap_or(Duration::ZERO) + RESET_MARGIN;
        Some(until.clamp(Duration::from_secs(1), MAX_RESET_WAIT))
    }
}

/// One window per bucket. Each sits behind a tokio mutex that is held across its request, so requests
/// of one bucket go one at a time and every one sees what the previous answer said.
pub(super) struct Limits {
    pub(super) windows: [tokio::sync::Mutex<Window>; 5],
    /// `max_response_bytes`: the largest body [`Limits::exchange`] reads.
    pub(super) max_body: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { windows: Default::default(), max_body: 32 * 1024 * 1024 }
    }
}

impl Limits {
    /// Sends `req` unless the window is spent (then fails at once with the wait as `retry_after`), records
    /// what the response says about the window, and returns the body of a 2xx or the classified error.
    pub(super) async fn exchange(
        &self,
        bucket: Bucket,
        endpoint: &'static str,
        req: crate::provider::util::Request,
    ) -> Result<bytes::Bytes, ProviderError> {
        let mut w = self.windows[bucket as usize].lock().await;
        if let Some(wait) = w.wait(SystemTime::now()) {
            // One line per wait would flood a paced backfill's log; the run logs one summary at INFO.
            tracing::debug!(
                endpoint,
                wait_ms = wait.as_millis() as u64,
                "X API v2 rate limit: pacing until the window resets"
            );
            return Err(ProviderError {
                retry_after: Some(wait),
                ..ProviderError::new(
                    ErrorClass::Transient,
                    endpoint,
                    None,
                    PACING,
                    "waiting for the X API rate-limit window to reset",
                )
            });
        }
        if let Some(r) = w.remaining.as_mut() {
            *r = r.saturating_sub(1);
        }
        let resp = req.send().await.map_err(|e| ProviderError::transport(endpoint, &e))?;
        w.observe(resp.headers(), SystemTime::now());
        let crate::provider::body::Received { status, headers, body } =
            crate::provider::body::receive(resp, endpoint, self.max_body).await?;
        let retry_after_header = crate::provider::util::retry_after_header(&headers);
        if (200..300).contains(&status) {
            return Ok(body);
        }
        if status == 429 {
            w.remaining = Some(0);
        }
        let wait =
            if status == 429 { w.retry_after(SystemTime::now()).or(retry_after_header) } else { retry_after_header };
        Err(classify(endpoint, status, &body, wait))
    }
}
