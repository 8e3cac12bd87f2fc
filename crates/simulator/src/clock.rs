//! The world's event clock: anything added after start (a send, a grown message, a test's
//! `add_messages`, a new group and its events) is dated after the newest event the simulator holds,
//! across every conversation, by the gap its own conversation's timeline puts between messages.
//!
//! Generated history is dated by each conversation's own timeline, which ends somewhere in a
//! thirty-day spread. Were additions dated by that timeline too, a message added to a quiet
//! conversation could get a lower ID than another conversation's newest one, which real snowflake
//! IDs never do; a client reading the whole inbox (`GET /2/dm_events`) down to the newest ID it has
//! already seen would then miss it. With this clock, event IDs grow across the whole account.
//!
//! The step is the conversation's own gap (up to a day) rather than a realistic second so that
//! additions stay as far apart in snowflake time as generated history is: clients that treat
//! recent IDs specially (dm-handoff keeps the last hour of IDs as exact keys) see the same spread
//! whether a test's messages were generated or added.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

#[derive(Debug, Default)]
pub(crate) struct EventClock {
    newest_ms: AtomicU64,
}

impl EventClock {
    /// Notes an event that exists (generated history), so later additions come after it.
    pub(crate) fn observe(&self, ms: u64) {
        self.newest_ms.fetch_max(ms, Ordering::SeqCst);
    }

    /// The time of a new event: `step_ms` (at least 1) after the newest one so far, which it becomes.
    pub(crate) fn next(&self, step_ms: u64) -> u64 {
        let step = step_ms.max(1);
        let prev = self.newest_ms.fetch_add(step, Ordering::SeqCst);
        prev.saturating_add(step)
    }

    /// The time of something a client wrote just now (a send, a new group): the wall clock, like the real
    /// providers date it, unless the newest event so far is later (generated history can run ahead); at
    /// least 1 ms after the newest, which it becomes. Clients that read a conversation back after a lost
    /// answer look for a message created after they sent it, so a send must not be dated in the past.
    pub(crate) fn written(&self, now_ms: u64) -> u64 {
        let prev = self
            .newest_ms
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |prev| Some(prev.saturating_add(1).max(now_ms)))
            .unwrap_or_else(|p| p);
        prev.saturating_add(1).max(now_ms)
    }

    /// When the newest event of the account (any conversation) was sent, Unix ms; 0 before any.
    pub(crate) fn newest(&self) -> u64 {
        self.newest_ms.load(Ordering::SeqCst)
    }
}

/// The wall clock, Unix ms.
pub(crate) fn wall_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
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
        assert_eq!(c.next(1_000), 6_000);
        c.observe(1_000);
        assert_eq!(c.next(86_400_000), 86_406_000);
        assert_eq!(c.next(0), 86_406_001);
        assert_eq!(c.newest(), 86_406_001);
        // A write is dated by the wall clock when that is later, else just after the newest.
        assert_eq!(c.written(90_000_000), 90_000_000);
        assert_eq!(c.written(10), 90_000_001);
        assert_eq!(c.newest(), 90_000_001);
    }
}
