//! Loop detection for one pass over a conversation's history (SPEC 8.3): a provider that hands back a
//! cursor the pass already sent (A → B → A), or keeps handing out fresh cursors for pages that bring
//! nothing new (the same messages again, or empty pages), would otherwise keep a pass, and with it the
//! pipeline's run and the daemon's later ticks, going forever while credits burn. A pass stops with the
//! conversation error `cursor_loop` instead; the other conversations and later runs go on.
//!
//! Cheap by design: the cursors sent since the pass last made progress, the lowest ID it has reached, and a
//! count of pages in a row that added nothing. Only cursors since the last progress are kept because a
//! circle makes no progress once it has gone round: its second round repeats a cursor of that same round, so
//! it is still caught, while a backfill that progresses on every page holds one cursor, not one per page
//! (every cursor of a 10^5-page pass kept memory growing with history: 72 MiB at 10^7 messages). A page adds something when it
//! writes a record, or when it reaches further back in history than the pass had: a backfill whose offset
//! cursor shifted because messages arrived meanwhile gets pages of records already in the files, but each
//! one goes further back, so it is progress; the same page handed out again under a fresh cursor, or an
//! empty page, is not.

use std::collections::HashSet;

use crate::provider::{ErrorClass, ProviderError};
use crate::record::id_cmp;

/// The error code a stopped pass reports, in the run report and in `status`.
pub const CURSOR_LOOP: &str = "cursor_loop";

/// What one pass has seen of its cursors.
#[derive(Debug)]
pub struct LoopGuard {
    /// Cursors sent since the last page that made progress.
    sent: HashSet<String>,
    /// The lowest item ID the pass has seen on a page.
    lowest: Option<String>,
    /// Pages in a row that added no record.
    idle: u32,
    /// `max_empty_pages`; 0 = no limit on idle pages (a repeated cursor still stops the pass).
    max_idle: u32,
}

impl LoopGuard {
    pub fn new(max_empty_pages: u32) -> LoopGuard {
        LoopGuard { sent: HashSet::new(), lowest: None, idle: 0, max_idle: max_empty_pages }
    }

    /// Notes a cursor the pass is about to send (None: the newest page, which needs none).
    pub fn sending(&mut self, cursor: Option<&str>) {
        if let Some(c) = cursor {
            self.sent.insert(c.to_string());
        }
    }

    /// After a page was written: `added` records were new, `lowest` is the page's lowest item ID, and the
    /// pass is about to follow `next`. Err with the `cursor_loop` error when it must not.
    pub fn follow(
        &mut self,
        endpoint: &'static str,
        added: u64,
        lowest: Option<&str>,
        next: &str,
    ) -> Result<(), ProviderError> {
        let deeper = lowest.filter(|l| self.lowest.as_deref().is_none_or(|m| id_cmp(l, m).is_lt()));
        if let Some(l) = deeper {
            self.lowest = Some(l.to_string());
        }
        let progress = added > 0 || deeper.is_some();
        self.idle = if progress { 0 } else { self.idle.saturating_add(1) };
        if progress {
            // A circle repeats within a round without progress; what came before can be forgotten.
            self.sent.clear();
        }
        if self.sent.contains(next) {
            return Err(ProviderError::new(
                ErrorClass::Conversation,
                endpoint,
                None,
                CURSOR_LOOP,
                "the provider handed back a cursor this pass had already sent, so its pages go round in a circle; \
                 this conversation stopped for this run (the others go on, and the next run tries again)",
            ));
        }
        if self.max_idle > 0 && self.idle >= self.max_idle {
            return Err(ProviderError::new(
                ErrorClass::Conversation,
                endpoint,
                None,
                CURSOR_LOOP,
                format!(
                    "{} pages in a row brought nothing new and reached no further back while the provider kept \
                     handing out cursors; this conversation stopped for this run (the others go on); raise \
                     max_empty_pages if the provider really sends that many empty pages",
                    self.idle
                ),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const E: &str = "GET /x";

    #[test]
    fn a_cursor_sent_twice_in_a_pass_is_a_loop() {
        // A → B → A: the second time round, pages A and B bring what the first round wrote.
        let mut g = LoopGuard::new(3);
        g.sending(None);
        assert!(g.follow(E, 5, Some("30"), "A").is_ok());
        g.sending(Some("A"));
        assert!(g.follow(E, 5, Some("20"), "B").is_ok());
        g.sending(Some("B"));
        assert!(g.follow(E, 5, Some("10"), "A").is_ok(), "page B made progress");
        g.sending(Some("A"));
        assert!(g.follow(E, 0, Some("20"), "B").is_ok());
        g.sending(Some("B"));
        let e = g.follow(E, 0, Some("10"), "A").unwrap_err();
        assert_eq!((e.code.as_str(), e.class), (CURSOR_LOOP, ErrorClass::Conversation));
        assert!(e.hint.contains("already sent"), "{e}");
        // A page that hands back its own cursor is caught at once.
        let mut g = LoopGuard::new(0);
        g.sending(Some("S"));
        assert!(g.follow(E, 0, None, "S").is_err());
    }

    #[test]
    fn a_long_pass_that_progresses_keeps_no_cursors() {
        let mut g = LoopGuard::new(3);
        for i in 0..10_000u64 {
            g.sending(Some(&format!("c{i}")));
            let low = (1_000_000 - i).to_string();
            assert!(g.follow(E, 1, Some(&low), &format!("c{}", i + 1)).is_ok());
        }
        assert!(g.sent.is_empty(), "{} cursors kept", g.sent.len());
    }

    #[test]
    fn pages_that_neither_add_nor_reach_further_back_stop_the_pass() {
        // The same page under fresh cursors: the first reaches back (its items are new to the pass).
        let mut g = LoopGuard::new(3);
        for i in 0..3 {
            g.sending(Some(&format!("c{i}")));
            assert!(g.follow(E, 0, Some("10"), &format!("c{}", i + 1)).is_ok(), "page {i}");
        }
        g.sending(Some("c3"));
        let e = g.follow(E, 0, Some("10"), "c4").unwrap_err();
        assert!(e.hint.starts_with("3 pages in a row"), "{e}");
        // Empty pages.
        let mut g = LoopGuard::new(3);
        assert!(g.follow(E, 1, Some("5"), "e0").is_ok());
        assert!(g.follow(E, 0, None, "e1").is_ok());
        assert!(g.follow(E, 0, None, "e2").is_ok());
        assert!(g.follow(E, 0, None, "e3").is_err());
    }

    #[test]
    fn pages_of_known_records_that_go_further_back_are_progress() {
        // A backfill over records already in the files (its offset cursor shifted): nothing is written,
        // but every page reaches older IDs.
        let mut g = LoopGuard::new(3);
        for (i, low) in ["90", "80", "70", "60", "50", "40"].iter().enumerate() {
            assert!(g.follow(E, 0, Some(low), &format!("o{i}")).is_ok(), "page {i}");
        }
        // One page with something new resets the count.
        let mut g = LoopGuard::new(3);
        for (added, c) in [(0, "a"), (0, "b"), (1, "c"), (0, "d"), (0, "e")] {
            g.sending(Some(c));
            assert!(g.follow(E, added, Some("5"), &format!("{c}+")).is_ok());
        }
        // 0 turns the idle rule off, never the repeat rule.
        let mut g = LoopGuard::new(0);
        for i in 0..100 {
            g.sending(Some(&i.to_string()));
            assert!(g.follow(E, 0, None, &(i + 1).to_string()).is_ok());
        }
        assert!(g.follow(E, 0, None, "5").is_err());
    }
}
