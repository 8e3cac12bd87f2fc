//! Cost policies, pure: adaptive polling of quiet conversations and credit budgets.
//!
//! Every history page costs credits (Xquik: one per message returned), so polling a quiet conversation
//! on every tick burns a page of credits for nothing. [`PollPlan`] stretches a conversation's interval
//! while it stays quiet, doubling it per quiet poll up to a maximum, and snaps back to every tick as soon
//! as a poll finds something new. Intervals are measured in the daemon's own ticks (`tick` = the time
//! between two scheduled runs of the pipeline), so the policy needs no cron arithmetic. The plan lives in
//! memory: after a restart every conversation is polled once, which is the safe direction.
//!
//! [`Budget`] answers whether another page may be fetched given what this run and this UTC day have
//! spent. Both are sans-IO: the daemon and the sync engine feed them times and counts.

use std::collections::HashMap;
use std::time::Duration;

use tokio::time::Instant;

/// One conversation's place in the plan.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Entry {
    /// Polls in a row that found nothing new.
    quiet: u32,
    /// Not polled by a scheduled run before this instant.
    next: Instant,
}

/// Adaptive polling for one pipeline's conversations.
#[derive(Clone, Debug)]
pub struct PollPlan {
    /// The longest a quiet conversation goes unpolled. Zero turns adaptive polling off.
    max: Duration,
    entries: HashMap<String, Entry>,
}

impl PollPlan {
    pub fn new(max: Duration) -> PollPlan {
        PollPlan { max, entries: HashMap::new() }
    }

    /// Whether a scheduled run at `now` should poll `conv`. Unknown conversations are always due; half a
    /// tick of slack keeps a schedule's jitter from skipping a poll that is due "now".
    pub fn due(&self, conv: &str, now: Instant, tick: Duration) -> bool {
        match self.entries.get(conv) {
            None => true,
            Some(e) => now + tick / 2 >= e.next,
        }
    }

    /// The conversations a scheduled run at `now` leaves out: every known one that is not [`PollPlan::due`].
    pub fn quiet(&self, now: Instant, tick: Duration) -> Vec<String> {
        let mut quiet: Vec<String> = self.entries.keys().filter(|c| !self.due(c, now, tick)).cloned().collect();
        quiet.sort();
        quiet
    }

    /// Records a finished poll: `new_records` > 0 snaps the conversation back to every tick; otherwise its
    /// interval doubles: after k quiet polls in a row the next poll is 2^(k−1) ticks later, capped at `max`.
    pub fn record(&mut self, conv: &str, now: Instant, tick: Duration, new_records: u64) {
        if self.max.is_zero() {
            return;
        }
        let e = self.entries.entry(conv.to_string()).or_insert(Entry { quiet: 0, next: now });
        if new_records > 0 {
            *e = Entry { quiet: 0, next: now };
            return;
        }
        e.quiet = e.quiet.saturating_add(1);
        let ticks = 1u32 << (e.quiet - 1).min(20);
        e.next = now + tick.saturating_mul(ticks).min(self.max);
    }

    /// Forgets a conversation (its next scheduled run polls it).
    pub fn reset(&mut self, conv: &str) {
        self.entries.remove(conv);
    }
}

/// Credit limits of one pipeline; zero means no limit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Budget {
    pub per_run: u64,
    pub per_day: u64,
}

/// Why a page may not be fetched.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Spent {
    Run,
    Day,
}

impl Budget {
    /// Whether one more page may be fetched after spending `run` this run and `day` this UTC day.
    pub fn check(&self, run: u64, day: u64) -> Result<(), Spent> {
        if self.per_day > 0 && day >= self.per_day {
            return Err(Spent::Day);
        }
        if self.per_run > 0 && run >= self.per_run {
            return Err(Spent::Run);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TICK: Duration = Duration::from_secs(30);

    /// Which of `convs` a scheduled run polls at each of `ticks` ticks, given which have news.
    async fn simulate(plan: &mut PollPlan, ticks: u32, mut news: impl FnMut(u32, &str) -> u64) -> Vec<Vec<String>> {
        let mut polled = Vec::new();
        for t in 0..ticks {
            let now = Instant::now();
            let mut this = Vec::new();
            for conv in ["busy", "quiet"] {
                if plan.due(conv, now, TICK) {
                    plan.record(conv, now, TICK, news(t, conv));
                    this.push(conv.to_string());
                }
            }
            polled.push(this);
            tokio::time::advance(TICK).await;
        }
        polled
    }

    #[tokio::test(start_paused = true)]
    async fn a_quiet_conversation_backs_off_exponentially_and_a_busy_one_is_polled_every_tick() {
        let mut plan = PollPlan::new(Duration::from_secs(3600));
        let polled = simulate(&mut plan, 32, |_, c| u64::from(c == "busy")).await;
        let quiet_ticks: Vec<u32> = polled
            .iter()
            .enumerate()
            .filter(|(_, p)| p.contains(&"quiet".to_string()))
            .map(|(t, _)| t as u32)
            .collect();
        // Intervals of 1, 2, 4, 8, 16 ticks: polled at 0, 1, 3, 7, 15, 31.
        assert_eq!(quiet_ticks, vec![0, 1, 3, 7, 15, 31]);
        assert!(polled.iter().all(|p| p.contains(&"busy".to_string())));
    }

    #[tokio::test(start_paused = true)]
    async fn the_interval_is_capped_and_snaps_back_on_activity() {
        let mut plan = PollPlan::new(TICK * 4);
        // Quiet until one message arrives at tick 20; the first poll at or after it finds it.
        let mut delivered = false;
        let polled = simulate(&mut plan, 40, |t, c| {
            let news = c == "quiet" && t >= 20 && !delivered;
            delivered |= news;
            u64::from(news)
        })
        .await;
        let quiet_ticks: Vec<usize> =
            polled.iter().enumerate().filter(|(_, p)| p.contains(&"quiet".to_string())).map(|(t, _)| t).collect();
        let gaps: Vec<usize> = quiet_ticks.windows(2).map(|w| w[1] - w[0]).collect();
        assert!(gaps.iter().all(|g| *g <= 4), "capped at 4 ticks: {gaps:?}");
        let at = quiet_ticks.iter().position(|t| *t >= 20).unwrap();
        // The poll that finds news is followed by a poll on the very next tick.
        assert_eq!(quiet_ticks[at + 1], quiet_ticks[at] + 1, "{quiet_ticks:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn off_means_every_tick() {
        let mut plan = PollPlan::new(Duration::ZERO);
        let polled = simulate(&mut plan, 10, |_, _| 0).await;
        assert!(polled.iter().all(|p| p.len() == 2));
    }

    #[tokio::test(start_paused = true)]
    async fn quiet_lists_the_known_conversations_that_are_not_due_sorted() {
        let mut plan = PollPlan::new(Duration::from_secs(3600));
        let now = Instant::now();
        for c in ["inbox", "conv:1-2", "busy"] {
            plan.record(c, now, TICK, u64::from(c == "busy"));
        }
        plan.record("inbox", now, TICK, 0);
        // One tick later: "conv:1-2" (one quiet poll) is due again, "inbox" (two) is not; "busy" is due.
        let later = now + TICK;
        assert_eq!(plan.quiet(later, TICK), vec!["inbox".to_string()]);
        assert!(plan.quiet(later, TICK).iter().all(|c| !plan.due(c, later, TICK)));
        assert!(plan.due("never-seen", later, TICK), "unknown conversations are never quiet");
    }

    #[test]
    fn budgets() {
        let b = Budget { per_run: 100, per_day: 1000 };
        assert_eq!(b.check(99, 999), Ok(()));
        assert_eq!(b.check(100, 5), Err(Spent::Run));
        assert_eq!(b.check(0, 1000), Err(Spent::Day));
        assert_eq!(Budget::default().check(u64::MAX, u64::MAX), Ok(()));
    }
}
