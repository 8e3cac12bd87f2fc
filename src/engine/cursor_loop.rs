//! Loop detection for one pass over a conversation's history (SPEC 8.3): a provider that hands back a
//! cursor the pass already sent (A → B → A), or keeps handing out fresh cursors for pages that bring
//! nothing new (the same messages again, or empty pages), would otherwise keep a pass, and with it the
//! pipeline's run and the daemon's later ticks, going forever while credits burn. A pass stops with the
//! conversation error `cursor_loop` instead; the other conversations and later runs go on.
//!
//! Cheap by design: the cursors this pass sent (a pass is at most as long as the history it walks) and a
//! count of pages in a row that added nothing.

use std::collections::HashSet;

use crate::provider::{ErrorClass, ProviderError};

/// The error code a stopped pass reports, in the run report and in `status`.
pub const CURSOR_LOOP: &str = "cursor_loop";

/// What one pass has seen of its cursors.
#[derive(Debug)]
pub struct LoopGuard {
    sent: HashSet<String>,
    /// Pages in a row that added no record.
    idle: u32,
    /// `max_empty_pages`; 0 = no limit on idle pages (a repeated cursor still stops the pass).
    max_idle: u32,
}

impl LoopGuard {
    pub fn new(max_empty_pages: u32) -> LoopGuard {
        LoopGuard { sent: HashSet::new(), idle: 0, max_idle: max_empty_pages }
    }

    /// Notes a cursor the pass is about to send (None: the newest page, which needs none).
    pub fn sending(&mut self, cursor: Option<&str>) {
        if let Some(c) = cursor {
            self.sent.insert(c.to_string());
        }
    }

    /// After a page was written: `added` records were new, and the pass is about to follow `next`. Err with
    /// the `cursor_loop` error when it must not.
    pub fn follow(&mut self, endpoint: &'static str, added: u64, next: &str) -> Result<(), ProviderError> {
        self.idle = if added == 0 { self.idle.saturating_add(1) } else { 0 };
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
                    "{} pages in a row brought nothing new while the provider kept handing out cursors; this \
                     conversation stopped for this run (the others go on); raise max_empty_pages if the provider \
                     really sends that many empty pages",
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
        let mut g = LoopGuard::new(3);
        g.sending(None);
        assert!(g.follow(E, 5, "A").is_ok());
        g.sending(Some("A"));
        assert!(g.follow(E, 5, "B").is_ok());
        g.sending(Some("B"));
        let e = g.follow(E, 5, "A").unwrap_err();
        assert_eq!((e.code.as_str(), e.class), (CURSOR_LOOP, ErrorClass::Conversation));
    }

    #[test]
    fn pages_that_add_nothing_stop_the_pass_after_max_empty_pages() {
        let mut g = LoopGuard::new(3);
        for (i, c) in ["c1", "c2"].iter().enumerate() {
            g.sending(Some(c));
            assert!(g.follow(E, 0, &format!("n{i}")).is_ok());
        }
        g.sending(Some("c3"));
        let e = g.follow(E, 0, "n3").unwrap_err();
        assert!(e.hint.starts_with("3 pages in a row"), "{e}");
        // One page with something new resets the count.
        let mut g = LoopGuard::new(3);
        for (added, c) in [(0, "a"), (0, "b"), (1, "c"), (0, "d"), (0, "e")] {
            g.sending(Some(c));
            assert!(g.follow(E, added, &format!("{c}+")).is_ok());
        }
        // 0 turns the idle rule off, never the repeat rule.
        let mut g = LoopGuard::new(0);
        for i in 0..100 {
            g.sending(Some(&i.to_string()));
            assert!(g.follow(E, 0, &(i + 1).to_string()).is_ok());
        }
        assert!(g.follow(E, 0, "5").is_err());
    }
}
