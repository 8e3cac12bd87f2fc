//! The simulator's books: requests by route and status, credits spent, and a bounded request
//! log. Providers report into it; tests and the admin API read snapshots of it.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use tokio::time::Instant;

use super::{lock, RequestLog, Stats};

/// How many requests the log keeps; older ones fall off.
pub(crate) const LOG_CAPACITY: usize = 10_000;

pub(crate) struct StatsBook {
    inner: Mutex<Book>,
    /// Where the per-second buckets of `peak_requests_per_second` are aligned from.
    start: Instant,
    in_flight: AtomicU64,
    peak_in_flight: AtomicU64,
}

impl Default for StatsBook {
    fn default() -> StatsBook {
        StatsBook {
            inner: Mutex::new(Book::default()),
            start: Instant::now(),
            in_flight: AtomicU64::new(0),
            peak_in_flight: AtomicU64::new(0),
        }
    }
}

#[derive(Default)]
struct Book {
    stats: Stats,
    log: VecDeque<RequestLog>,
    /// The current one-second bucket and how many requests were answered in it.
    second: (u64, u64),
}

/// A provider request in progress; counts down when dropped, so a request whose client went
/// away (its future dropped mid-way) leaves the count right.
pub(crate) struct InFlight<'a>(&'a StatsBook);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

impl StatsBook {
    pub(crate) fn enter(&self) -> InFlight<'_> {
        let now = self.in_flight.fetch_add(1, Ordering::Relaxed) + 1;
        self.peak_in_flight.fetch_max(now, Ordering::Relaxed);
        InFlight(self)
    }

    pub(crate) fn rate_limited(&self, family: &str) {
        let mut b = lock(&self.inner);
        b.stats.rate_limited += 1;
        *b.stats.rate_limited_by_family.entry(family.to_string()).or_default() += 1;
    }

    pub(crate) fn write_fault(&self, kind: &str) {
        *lock(&self.inner).stats.write_faults.entry(kind.to_string()).or_default() += 1;
    }

    pub(crate) fn read_fault(&self, kind: &str) {
        *lock(&self.inner).stats.read_faults.entry(kind.to_string()).or_default() += 1;
    }

    pub(crate) fn record(&self, route: String, entry: RequestLog) {
        let second = self.start.elapsed().as_secs();
        let mut b = lock(&self.inner);
        if b.second.0 == second {
            b.second.1 += 1;
        } else {
            b.second = (second, 1);
        }
        b.stats.peak_requests_per_second = b.stats.peak_requests_per_second.max(b.second.1);
        b.stats.requests += 1;
        *b.stats.by_route.entry(route).or_default() += 1;
        *b.stats.by_status.entry(entry.status).or_default() += 1;
        if b.log.len() == LOG_CAPACITY {
            b.log.pop_front();
        }
        b.log.push_back(entry);
    }

    pub(crate) fn credits(&self, n: u64) {
        lock(&self.inner).stats.credits += n;
    }

    pub(crate) fn served(&self, messages: u64) {
        let mut b = lock(&self.inner);
        b.stats.messages_served += messages;
        b.stats.credits += messages;
    }

    pub(crate) fn sent(&self, credits: u64) {
        let mut b = lock(&self.inner);
        b.stats.sends += 1;
        b.stats.credits += credits;
    }

    pub(crate) fn uploaded(&self, credits: u64) {
        let mut b = lock(&self.inner);
        b.stats.uploads += 1;
        b.stats.credits += credits;
    }

    pub(crate) fn snapshot(&self) -> Stats {
        let b = lock(&self.inner);
        let mut s = b.stats.clone();
        s.log = b.log.iter().cloned().collect();
        s.peak_in_flight = self.peak_in_flight.load(Ordering::Relaxed);
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_is_bounded_and_counts_are_not() {
        let book = StatsBook::default();
        for k in 0..LOG_CAPACITY + 5 {
            book.record(
                "GET /x".into(),
                RequestLog {
                    method: "GET".into(),
                    path: format!("/x/{k}"),
                    query: String::new(),
                    status: 200,
                    api_key_ok: true,
                },
            );
        }
        book.served(3);
        let s = book.snapshot();
        assert_eq!(s.requests, LOG_CAPACITY as u64 + 5);
        assert_eq!(s.log.len(), LOG_CAPACITY);
        assert_eq!(s.log[0].path, "/x/5");
        assert_eq!((s.credits, s.messages_served), (3, 3));
        assert_eq!(s.by_status.get(&200), Some(&(LOG_CAPACITY as u64 + 5)));
    }

    #[tokio::test(start_paused = true)]
    async fn peaks_and_rate_limit_books() {
        let book = StatsBook::default();
        let entry = || RequestLog {
            method: "GET".into(),
            path: "/".into(),
            query: String::new(),
            status: 200,
            api_key_ok: true,
        };
        {
            let _a = book.enter();
            let _b = book.enter();
            let _c = book.enter();
        }
        let _d = book.enter();
        for _ in 0..4 {
            book.record("GET /".into(), entry());
        }
        tokio::time::advance(std::time::Duration::from_millis(1_100)).await;
        for _ in 0..2 {
            book.record("GET /".into(), entry());
        }
        book.rate_limited("xquik_read");
        book.rate_limited("xquik_read");
        book.rate_limited("x_api_v2_dm_write");
        book.write_fault("drop");
        let s = book.snapshot();
        assert_eq!((s.peak_in_flight, s.peak_requests_per_second), (3, 4));
        assert_eq!(s.rate_limited, 3);
        assert_eq!(s.rate_limited_by_family.get("xquik_read"), Some(&2));
        assert_eq!(s.write_faults.get("drop"), Some(&1));
    }
}
