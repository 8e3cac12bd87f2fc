//! How fast to ask a provider for history (SPEC 8.7): as many reads in flight as fill the account's
//! documented request budget, without drawing 429s, backing off when the provider pushes back.
//!
//! One [`Pace`] per provider account (provider, base URL, account), shared by every pipeline and conversation
//! that reads with it, so two pipelines of one account never add up past its budget. It holds two gates:
//!
//! - **a rate gate** from the budget the adapter documents (`Client::read_budget`: Xquik 300 reads per second,
//!   X API v2 15 per 15 minutes; GetXAPI none): at most that many requests in any sliding window, less a small
//!   margin, since the provider counts arrivals in fixed windows whose phase we cannot see;
//! - **an in-flight limit** that adapts (additive increase, multiplicative decrease, with a slow start): it
//!   doubles per round trip while answers come back clean, grows by one per round trip once the provider has
//!   pushed back, and halves on a 429 or a 5xx/timeout. While requests wait at the rate gate, more in flight
//!   would only queue, so the limit does not grow then. A number in the config pins it instead.
//!
//! Pure bookkeeping plus tokio waits; it sends nothing itself.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use crate::provider::ReadBudget;

/// Where the adaptive in-flight limit starts.
const INITIAL_LIMIT: usize = 8;
/// The share of a documented budget we use: the provider's fixed windows and ours do not line up, and a
/// request's arrival lags its start by a jittery network delay.
const BUDGET_SHARE: f64 = 0.95;

/// How a paced request ended, as the limit needs to know it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Answer {
    /// An answer, good or a plain refusal: the provider kept up.
    Clean,
    /// A 429, a 5xx or a timeout: the provider (or the way to it) is overloaded.
    PushedBack,
}

#[derive(Debug)]
struct Gates {
    /// Requests in flight now.
    in_flight: usize,
    /// The in-flight limit now.
    limit: usize,
    /// Upper bound of the limit (`max_concurrency`), or the pinned value.
    max: usize,
    /// Pinned by the config: never adapts.
    pinned: bool,
    /// Slow start ends at the first pushback; then the limit grows by one per `limit` clean answers.
    slow_start: bool,
    /// Clean answers since the limit last grew (additive increase).
    clean: usize,
    /// Start times of the requests in the current budget window, oldest first.
    recent: VecDeque<Instant>,
    /// Whether the last request had to wait at the rate gate: then growing the limit would not help.
    rate_bound: bool,
}

/// The pacing of one provider account. See the module doc.
#[derive(Debug)]
pub struct Pace {
    budget: Option<ReadBudget>,
    gates: Mutex<Gates>,
    /// Woken when a request finishes or the limit grows.
    freed: Notify,
    /// Whose turn it is to wait at the gates: requests queue here in order (tokio's mutex is FIFO), and only
    /// the one at the head waits for `freed` or the rate window. Without it, every release woke every waiting
    /// conversation (up to `max_concurrency`, 256) and all but one went back to sleep.
    turn: tokio::sync::Mutex<()>,
}

/// A request's place in the pace; give the answer back with [`Permit::done`]. Dropping it without an answer
/// (the request was cancelled) frees the place as a clean answer would, without adapting.
#[derive(Debug)]
pub struct Permit {
    pace: Arc<Pace>,
    answered: bool,
}

impl Pace {
    /// A pace for a budget; `pinned` fixes the in-flight limit at `max`.
    pub fn new(budget: Option<ReadBudget>, max: usize, pinned: bool) -> Pace {
        let max = max.max(1);
        let limit = if pinned { max } else { INITIAL_LIMIT.min(max) };
        Pace {
            budget,
            gates: Mutex::new(Gates {
                in_flight: 0,
                limit,
                max,
                pinned,
                slow_start: true,
                clean: 0,
                recent: VecDeque::new(),
                rate_bound: false,
            }),
            freed: Notify::new(),
            turn: tokio::sync::Mutex::new(()),
        }
    }

    /// The shared pace of an account: one per (provider, base URL, account) in the process. A later caller
    /// with other settings (a pinned concurrency, another maximum) changes the bounds of the shared one.
    pub fn of(account_key: &str, budget: Option<ReadBudget>, max: usize, pinned: bool) -> Arc<Pace> {
        static REGISTRY: OnceLock<Mutex<HashMap<String, Arc<Pace>>>> = OnceLock::new();
        let mut map = REGISTRY.get_or_init(Default::default).lock().unwrap_or_else(|p| p.into_inner());
        let pace = map.entry(account_key.to_string()).or_insert_with(|| Arc::new(Pace::new(budget, max, pinned)));
        {
            let mut g = pace.lock();
            g.max = max.max(1);
            g.pinned = pinned;
            g.limit = if pinned { g.max } else { g.limit.min(g.max) };
        }
        pace.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Gates> {
        self.gates.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The in-flight limit now (for logs and tests).
    pub fn limit(&self) -> usize {
        self.lock().limit
    }

    /// Waits for a place: under the in-flight limit, and within the budget's window.
    pub async fn acquire(self: &Arc<Self>) -> Permit {
        let _turn = self.turn.lock().await;
        loop {
            // Register for a wake-up before looking, so a release between the look and the wait is not missed.
            let freed = self.freed.notified();
            let wait = {
                let mut g = self.lock();
                let now = Instant::now();
                match self.rate_wait(&mut g, now) {
                    Some(until) => {
                        g.rate_bound = true;
                        Some(until)
                    }
                    None if g.in_flight < g.limit => {
                        g.in_flight += 1;
                        if self.budget.is_some() {
                            g.recent.push_back(now);
                        }
                        return Permit { pace: self.clone(), answered: false };
                    }
                    None => None,
                }
            };
            match wait {
                Some(until) => tokio::time::sleep_until(until).await,
                None => freed.await,
            }
        }
    }

    /// When the next request fits the budget's window, if it does not now.
    fn rate_wait(&self, g: &mut Gates, now: Instant) -> Option<Instant> {
        let budget = self.budget?;
        while g.recent.front().is_some_and(|t| now.duration_since(*t) >= budget.window) {
            g.recent.pop_front();
        }
        let allowed = ((budget.requests as f64 * BUDGET_SHARE).floor() as usize).max(1);
        if g.recent.len() < allowed {
            return None;
        }
        g.recent.front().map(|oldest| *oldest + budget.window)
    }

    fn release(&self, answer: Option<Answer>) {
        {
            let mut g = self.lock();
            // A limit only grows while it is used: with fewer than half its places taken, more would not help.
            let used = g.in_flight * 2 >= g.limit;
            g.in_flight = g.in_flight.saturating_sub(1);
            if !g.pinned {
                match answer {
                    Some(Answer::Clean) if !g.rate_bound && used => {
                        g.clean += 1;
                        let grow = if g.slow_start { 1 } else { g.limit };
                        if g.clean >= grow && g.limit < g.max {
                            g.limit += 1;
                            g.clean = 0;
                        }
                    }
                    Some(Answer::PushedBack) => {
                        g.slow_start = false;
                        g.clean = 0;
                        g.limit = (g.limit / 2).max(1);
                        tracing::debug!(limit = g.limit, "the provider pushed back; fewer requests in flight");
                    }
                    _ => {}
                }
                g.rate_bound = false;
            }
        }
        self.freed.notify_waiters();
    }
}

impl Permit {
    /// Gives the request's answer back, which frees its place and adapts the limit.
    pub fn done(mut self, answer: Answer) {
        self.answered = true;
        self.pace.release(Some(answer));
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if !self.answered {
            self.pace.release(None);
        }
    }
}

/// A budget the tests and docs can name: `n` requests per `window`.
pub fn budget(requests: u32, window: Duration) -> ReadBudget {
    ReadBudget { requests, window }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Takes every place, then gives them back with `answer`: one round trip at the current limit.
    async fn round(pace: &Arc<Pace>, answer: Answer) {
        let n = pace.limit();
        let mut permits = Vec::new();
        for _ in 0..n {
            permits.push(pace.acquire().await);
        }
        for p in permits {
            p.done(answer);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_limit_slow_starts_then_halves_on_pushback_and_grows_slowly() {
        let pace = Arc::new(Pace::new(None, 64, false));
        assert_eq!(pace.limit(), INITIAL_LIMIT);
        round(&pace, Answer::Clean).await;
        let after_one = pace.limit();
        assert!(after_one > INITIAL_LIMIT + 1, "grows by more than one per round trip in slow start: {after_one}");
        round(&pace, Answer::Clean).await;
        assert!(pace.limit() > after_one);
        let before = pace.limit();
        pace.acquire().await.done(Answer::PushedBack);
        assert_eq!(pace.limit(), before / 2);
        let halved = pace.limit();
        round(&pace, Answer::Clean).await;
        round(&pace, Answer::Clean).await;
        assert_eq!(pace.limit(), halved + 1, "after a pushback: one more per limit's worth of answers");
        for _ in 0..10 {
            pace.acquire().await.done(Answer::PushedBack);
        }
        assert_eq!(pace.limit(), 1, "never below one");
        // Used sparingly (one at a time), the limit has no reason to grow.
        let idle = Arc::new(Pace::new(None, 64, false));
        for _ in 0..50 {
            idle.acquire().await.done(Answer::Clean);
        }
        assert_eq!(idle.limit(), INITIAL_LIMIT);
    }

    #[tokio::test(start_paused = true)]
    async fn the_limit_holds_requests_in_flight() {
        let pace = Arc::new(Pace::new(None, 2, true));
        let a = pace.acquire().await;
        let _b = pace.acquire().await;
        let third = tokio::spawn({
            let pace = pace.clone();
            async move { pace.acquire().await }
        });
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert!(!third.is_finished(), "a third waits while two are in flight");
        a.done(Answer::Clean);
        let c = third.await.unwrap();
        drop(c);
        assert_eq!(pace.limit(), 2, "pinned: never adapts");
    }

    #[tokio::test(start_paused = true)]
    async fn a_budget_is_never_exceeded_in_any_window() {
        let pace = Arc::new(Pace::new(Some(budget(100, Duration::from_secs(1))), 1000, false));
        let start = Instant::now();
        let mut starts = Vec::new();
        for _ in 0..400 {
            let p = pace.acquire().await;
            starts.push(Instant::now() - start);
            p.done(Answer::Clean);
        }
        let allowed = (100.0 * BUDGET_SHARE) as usize;
        for (i, t) in starts.iter().enumerate() {
            let in_window = starts[i..].iter().take_while(|u| **u < *t + Duration::from_secs(1)).count();
            assert!(in_window <= allowed, "{in_window} requests in the second after {t:?}");
        }
        // And it uses the budget: 400 requests in a little over four windows.
        assert!(starts[399] < Duration::from_millis(4300), "{:?}", starts[399]);
    }
}
