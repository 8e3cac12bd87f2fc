//! The world's event clock: anything added after start (a send, a grown message, a test's
//! `add_messages`, a new group and its events) is dated one second after the newest event the
//! simulator holds, across every conversation.
//!
//! Generated history is dated by each conversation's own timeline, which ends somewhere in a
//! thirty-day spread. Were additions dated by that timeline too, a message added to a quiet
//! conversation could get a lower ID than another conversation's newest one, which real snowflake
//! IDs never do; a client reading the whole inbox (`GET /2/dm_events`) down to the newest ID it has
//! already seen would then miss it. With this clock, event IDs grow across the whole account.

use std::sync::atomic::{AtomicU64, Ordering};

/// How far apart two additions are dated: a second, like messages typed in a row.
const STEP_MS: u64 = 1_000;

#[derive(Debug, Default)]
pub(crate) struct EventClock {
    newest_ms: AtomicU64,
}

impl EventClock {
    /// Notes an event that exists (generated history), so later additions come after it.
    pub(crate) fn observe(&self, ms: u64) {
        self.newest_ms.fetch_max(ms, Ordering::SeqCst);
    }

    /// The time of a new event: a step after the newest one so far, which it becomes.
    pub(crate) fn next(&self) -> u64 {
        let prev = self.newest_ms.fetch_add(STEP_MS, Ordering::SeqCst);
        prev.saturating_add(STEP_MS)
    }

    /// When the newest event of the account (any conversation) was sent, Unix ms; 0 before any.
    pub(crate) fn newest(&self) -> u64 {
        self.newest_ms.load(Ordering::SeqCst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn additions_come_after_everything_observed() {
        let c = EventClock::default();
        c.observe(5_000);
        c.observe(3_000);
        assert_eq!(c.newest(), 5_000);
        assert_eq!(c.next(), 6_000);
        c.observe(1_000);
        assert_eq!(c.next(), 7_000);
        assert_eq!(c.newest(), 7_000);
    }
}
