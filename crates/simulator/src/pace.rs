//! Speed realism (SPEC 8.7): a random delay on every provider answer, and Xquik's documented
//! fixed rate-limit windows per Xquik account.
//!
//! Xquik counts per Xquik account, i.e. per API key (a connected X handle belongs to an Xquik
//! account; it is not an account of its own), in aligned fixed windows: reads (GET/HEAD/OPTIONS)
//! 300 per 1 s, writes (POST/PUT/PATCH) 120 per 60 s. Windows are aligned to the simulator's
//! start on `tokio::time`'s clock, so tests with paused time see them move.
//!
//! Locks here are held for a map lookup or one random draw, never across an `.await`.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tokio::time::Instant;

use super::content::{hash_bytes, mix2};
use super::{lock, SimConfig};

/// Which Xquik window a request counts in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum XquikFamily {
    Read,
    Write,
}

impl XquikFamily {
    /// The family of a method, or `None` for methods no window counts (DELETE has its own
    /// documented window, but no Xquik DM route uses it).
    pub(crate) fn of(method: &axum::http::Method) -> Option<XquikFamily> {
        use axum::http::Method;
        match *method {
            Method::GET | Method::HEAD | Method::OPTIONS => Some(XquikFamily::Read),
            Method::POST | Method::PUT | Method::PATCH => Some(XquikFamily::Write),
            _ => None,
        }
    }

    /// The name [`Stats::rate_limited_by_family`](super::Stats::rate_limited_by_family) books it under.
    pub(crate) fn name(self) -> &'static str {
        match self {
            XquikFamily::Read => "xquik_read",
            XquikFamily::Write => "xquik_write",
        }
    }
}

pub(crate) struct Pace {
    /// Where every window is aligned from.
    start: Instant,
    latency: Option<(u64, u64)>,
    /// Latency draws: seeded, so a run's delays repeat for the same request order.
    rng: Mutex<SmallRng>,
    read: Option<(u32, u64)>,
    write: Option<(u32, u64)>,
    /// (hash of the API key, family) → (window index, requests counted in it).
    windows: Mutex<HashMap<(u64, XquikFamily), (u64, u32)>>,
}

impl Pace {
    pub(crate) fn new(cfg: &SimConfig) -> Pace {
        Pace {
            start: Instant::now(),
            latency: cfg.latency_ms,
            rng: Mutex::new(SmallRng::seed_from_u64(mix2(cfg.seed, 0x006c_6174_656e_6379))),
            read: cfg.xquik_rate_limit,
            write: cfg.xquik_write_limit,
            windows: Mutex::new(HashMap::new()),
        }
    }

    /// A uniform draw from `latency_ms` (bounds in either order), or `None` when it is off.
    pub(crate) fn latency(&self) -> Option<Duration> {
        let (a, b) = self.latency?;
        let (lo, hi) = (a.min(b), a.max(b));
        if hi == 0 {
            return None;
        }
        let ms = if lo == hi { lo } else { lock(&self.rng).gen_range(lo..=hi) };
        Some(Duration::from_millis(ms))
    }

    /// Counts one Xquik request of `family` for the account behind `api_key`. `Err(secs)`: the
    /// window is spent; `secs` until it resets, rounded up, at least 1.
    pub(crate) fn xquik_take(&self, api_key: &str, family: XquikFamily) -> Result<(), u64> {
        let limit = match family {
            XquikFamily::Read => self.read,
            XquikFamily::Write => self.write,
        };
        let Some((n, secs)) = limit else {
            return Ok(());
        };
        take_window(&self.windows, (hash_bytes(api_key.as_bytes()), family), n, secs, self.start.elapsed())
    }
}

/// One fixed window: `n` requests per `secs`, aligned to multiples of `secs` since the start.
fn take_window<K: std::hash::Hash + Eq>(
    windows: &Mutex<HashMap<K, (u64, u32)>>,
    key: K,
    n: u32,
    secs: u64,
    elapsed: Duration,
) -> Result<(), u64> {
    let window_ms = u128::from(secs.max(1)) * 1_000;
    let now_ms = elapsed.as_millis();
    let index = u64::try_from(now_ms / window_ms).unwrap_or(u64::MAX);
    let mut map = lock(windows);
    let w = map.entry(key).or_insert((index, 0));
    if w.0 != index {
        *w = (index, 0);
    }
    if w.1 < n {
        w.1 += 1;
        return Ok(());
    }
    let reset_ms = (u128::from(index) + 1) * window_ms;
    let wait_ms = reset_ms.saturating_sub(now_ms);
    Err(u64::try_from(wait_ms.div_ceil(1_000)).unwrap_or(u64::MAX).max(1))
}

#[cfg(test)]
mod http_tests;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_windows_are_aligned_and_say_when_they_reset() {
        let windows = Mutex::new(HashMap::new());
        let at = |ms: u64| Duration::from_millis(ms);
        // 3 per 10 s; the window [0, 10 s) fills at 9.2 s.
        for ms in [0, 5_000, 9_000] {
            assert_eq!(take_window(&windows, 1u8, 3, 10, at(ms)), Ok(()));
        }
        assert_eq!(take_window(&windows, 1u8, 3, 10, at(9_200)), Err(1), "0.8 s rounds up to 1");
        assert_eq!(take_window(&windows, 2u8, 3, 10, at(9_200)), Ok(()), "each key has its own");
        // Aligned, not sliding: a new window at 10 s admits three at once.
        for _ in 0..3 {
            assert_eq!(take_window(&windows, 1u8, 3, 10, at(10_001)), Ok(()));
        }
        assert_eq!(take_window(&windows, 1u8, 3, 10, at(10_001)), Err(10));
        assert_eq!(take_window(&windows, 1u8, 3, 10, at(15_500)), Err(5));
    }

    #[test]
    fn latency_is_drawn_within_bounds_and_off_by_default() {
        let pace = Pace::new(&SimConfig::default());
        assert_eq!(pace.latency(), None);
        let pace = Pace::new(&SimConfig { latency_ms: Some((30, 10)), ..SimConfig::default() });
        let draws: Vec<u128> = (0..500).map(|_| pace.latency().expect("on").as_millis()).collect();
        assert!(draws.iter().all(|d| (10..=30).contains(d)), "{draws:?}");
        assert!(draws.contains(&10) && draws.contains(&30), "both bounds are reachable");
    }

    // Paused time: the clock cannot cross a window boundary in the middle of the count.
    #[tokio::test(start_paused = true)]
    async fn xquik_defaults_are_the_documented_windows() {
        let pace = Pace::new(&SimConfig::default());
        assert!((0..300).all(|_| pace.xquik_take("k", XquikFamily::Read).is_ok()));
        assert!(pace.xquik_take("k", XquikFamily::Read).is_err());
        assert!((0..120).all(|_| pace.xquik_take("k", XquikFamily::Write).is_ok()));
        let wait = pace.xquik_take("k", XquikFamily::Write).expect_err("121st write");
        assert!((1..=60).contains(&wait), "{wait}");
        let off = Pace::new(&SimConfig { xquik_rate_limit: None, xquik_write_limit: None, ..SimConfig::default() });
        assert!((0..1000).all(|_| off.xquik_take("k", XquikFamily::Read).is_ok()));
    }
}
