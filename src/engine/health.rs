//! How each configured conversation of a pipeline stands, read from the state alone: what `status --json`
//! shows per conversation and what `dm_handoff_conversations{state}` counts, so the two always agree.
//!
//! Every configured conversation is in exactly one state, the first of these that holds:
//! 1. `failed`: its last run ended with an error (`last_error` is set; a clean run clears it);
//! 2. `paused`: the pipeline's `max_credits_per_day` is spent, so nothing is polled until 00:00 UTC;
//! 3. `backfilling`: the pipeline backfills during sync (`backfill = true`) and the provider has not yet
//!    said there is no older page (a conversation never synced counts here too);
//! 4. `ok`: otherwise.

use crate::config::{ConversationRef, Pipeline};
use crate::metrics::ConversationCounts;
use crate::record::Conversation;
use crate::state::{ConvState, StateError, Store};

/// A conversation's state, as the metrics label and `status --json` name it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConvHealth {
    Ok,
    Failed,
    Backfilling,
    Paused,
}

impl ConvHealth {
    /// The state of a conversation whose stored state is `st`, in a pipeline that `backfills` during sync
    /// and is `paused` (or not) by its daily budget.
    pub fn of(st: &ConvState, backfills: bool, paused: bool) -> ConvHealth {
        if st.last_error.is_some() {
            ConvHealth::Failed
        } else if paused {
            ConvHealth::Paused
        } else if backfills && !st.backfill_done {
            ConvHealth::Backfilling
        } else {
            ConvHealth::Ok
        }
    }

    pub const fn as_str(self) -> &'static str {
        match self {
            ConvHealth::Ok => "ok",
            ConvHealth::Failed => "failed",
            ConvHealth::Backfilling => "backfilling",
            ConvHealth::Paused => "paused",
        }
    }
}

/// The key the state stores a configured conversation under: the peer's ID, the key of a `conv:` ID, or the
/// ID a `@username` resolved to (None while it never was).
pub fn conversation_key(p: &Pipeline, c: &ConversationRef, store: &Store) -> Result<Option<String>, StateError> {
    Ok(match c {
        ConversationRef::Peer(id) => Some(id.clone()),
        ConversationRef::ConversationId(id) => {
            Some(Conversation::from_conversation_id(id, Some(&p.account)).key().to_string())
        }
        ConversationRef::Username(u) => store.resolved_user(p.provider.name(), u)?,
    })
}

/// Whether the pipeline's daily credit budget is spent (polling pauses until 00:00 UTC).
pub fn paused(p: &Pipeline, store: &Store) -> Result<bool, StateError> {
    Ok(p.max_credits_per_day > 0 && store.credits_today(&p.name)? >= p.max_credits_per_day)
}

/// The pipeline's configured conversations by state. One state read per conversation.
pub fn count(p: &Pipeline, store: &Store) -> Result<ConversationCounts, StateError> {
    let paused = paused(p, store)?;
    let mut counts = ConversationCounts::default();
    for c in &p.conversations {
        let st = match conversation_key(p, c, store)? {
            Some(k) => store.conversation(&p.name, &k)?,
            None => ConvState::default(),
        };
        let n = match ConvHealth::of(&st, p.backfill, paused) {
            ConvHealth::Ok => &mut counts.ok,
            ConvHealth::Failed => &mut counts.failed,
            ConvHealth::Backfilling => &mut counts.backfilling,
            ConvHealth::Paused => &mut counts.paused,
        };
        *n += 1;
    }
    Ok(counts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_conversation_is_in_exactly_one_state_failed_first() {
        let done = ConvState { backfill_done: true, ..ConvState::default() };
        let pending = ConvState::default();
        let failed = ConvState { last_error: Some("HTTP 403 dm_not_permitted".into()), ..ConvState::default() };
        use ConvHealth::*;
        for (st, backfills, paused, want) in [
            (&done, true, false, Ok),
            (&pending, true, false, Backfilling),
            (&pending, false, false, Ok),
            (&pending, true, true, Paused),
            (&done, true, true, Paused),
            (&failed, true, true, Failed),
            (&failed, false, false, Failed),
        ] {
            assert_eq!(ConvHealth::of(st, backfills, paused), want, "{st:?} backfills={backfills} paused={paused}");
        }
    }
}
