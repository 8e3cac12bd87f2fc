//! The simulator's books: requests by route and status, credits spent, and a bounded request
//! log. Providers report into it; tests and the admin API read snapshots of it.

use std::collections::VecDeque;
use std::sync::Mutex;

use super::{lock, RequestLog, Stats};

/// How many requests the log keeps; older ones fall off.
pub(crate) const LOG_CAPACITY: usize = 10_000;

#[derive(Default)]
pub(crate) struct StatsBook {
    inner: Mutex<Book>,
}

#[derive(Default)]
struct Book {
    stats: Stats,
    log: VecDeque<RequestLog>,
}

impl StatsBook {
    pub(crate) fn record(&self, route: String, entry: RequestLog) {
        let mut b = lock(&self.inner);
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
}
