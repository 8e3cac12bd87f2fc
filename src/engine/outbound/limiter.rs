//! Holding writes to the provider's documented write limit per account, before the provider has to refuse.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::Pipeline;
use crate::provider::WriteLimit;

/// Holds writes to at most `max` in any `window` (a sliding window, so the provider's fixed window is never
/// exceeded either). Waiters go in turn. Uses tokio time, so tests can pause the clock.
pub struct WriteLimiter {
    max: usize,
    window: Duration,
    /// Start times of the writes in the current window, oldest first. The async lock is held while waiting,
    /// which is what queues waiters fairly.
    recent: tokio::sync::Mutex<VecDeque<Instant>>,
}

impl WriteLimiter {
    pub fn new(max: usize, window: Duration) -> WriteLimiter {
        WriteLimiter { max: max.max(1), window, recent: tokio::sync::Mutex::new(VecDeque::new()) }
    }

    /// Waits until one more write fits, and counts it.
    pub async fn acquire(&self) {
        let mut recent = self.recent.lock().await;
        loop {
            let now = Instant::now();
            while recent.front().is_some_and(|t| now.duration_since(*t) >= self.window) {
                recent.pop_front();
            }
            if recent.len() < self.max {
                recent.push_back(now);
                return;
            }
            if let Some(oldest) = recent.front().copied() {
                tracing::debug!(wait_ms = (oldest + self.window - now).as_millis() as u64, "write rate limit: waiting");
                tokio::time::sleep_until(oldest + self.window).await;
            }
        }
    }
}

/// What outbound commands share across jobs (and, in a daemon, across requests): one write limiter per
/// provider account, and the token that stops them.
pub struct SendContext {
    limiters: std::sync::Mutex<HashMap<String, Arc<WriteLimiter>>>,
    pub cancel: CancellationToken,
}

impl SendContext {
    pub fn new(cancel: CancellationToken) -> SendContext {
        SendContext { limiters: std::sync::Mutex::new(HashMap::new()), cancel }
    }

    /// The limiter of the pipeline's account (pipelines sharing an account share it), held to the provider's
    /// documented write limit; None when the provider documents none.
    pub fn limiter(&self, p: &Pipeline, limit: Option<WriteLimit>) -> Option<Arc<WriteLimiter>> {
        let limit = limit?;
        let key = format!("{}\u{0}{}", p.base_url, p.account.trim_start_matches('@').to_ascii_lowercase());
        let mut map = self.limiters.lock().unwrap_or_else(|e| e.into_inner());
        Some(map.entry(key).or_insert_with(|| Arc::new(WriteLimiter::new(limit.max, limit.window))).clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WRITE_WINDOW: Duration = Duration::from_secs(60);

    #[tokio::test(start_paused = true)]
    async fn the_limiter_never_lets_more_than_max_writes_into_a_window() {
        let limiter = WriteLimiter::new(120, WRITE_WINDOW);
        let start = Instant::now();
        let mut times = Vec::new();
        for _ in 0..300 {
            limiter.acquire().await;
            times.push(Instant::now() - start);
        }
        // The first 120 go at once; the next 120 a window later; the rest a window after that.
        assert_eq!(times[119], Duration::ZERO);
        assert_eq!(times[120], WRITE_WINDOW);
        assert_eq!(times[240], 2 * WRITE_WINDOW);
        for (i, t) in times.iter().enumerate() {
            let in_window = times[i..].iter().take_while(|u| **u < *t + WRITE_WINDOW).count();
            assert!(in_window <= 120, "{in_window} writes in the window starting at {t:?}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_limiter_frees_slots_as_the_window_slides() {
        let limiter = WriteLimiter::new(2, Duration::from_secs(10));
        let start = Instant::now();
        limiter.acquire().await;
        tokio::time::sleep(Duration::from_secs(4)).await;
        limiter.acquire().await;
        limiter.acquire().await;
        assert_eq!(Instant::now() - start, Duration::from_secs(10), "waits for the first write to leave the window");
        limiter.acquire().await;
        assert_eq!(Instant::now() - start, Duration::from_secs(14));
    }
}
