//! What the whole-inbox sync (SPEC 8.2) remembers besides conversation states: the conversations it has
//! discovered (`i` prefix), so `status` can list them and the next run can sync them even when the
//! discovery route is not asked again, and the name under which the X API v2 stream keeps its own cursors.
//!
//! ## The stream's folded seen set
//!
//! A stream page is a contiguous slice of the *account's* events, so the stream cannot claim a range for
//! one conversation; it claims one for all of them. Its state (under [`INBOX_STREAM`]) has `covered_from`
//! and `hwm` like a conversation's, and [`Store::fold`] of [`INBOX_STREAM`] (`fold_stream`) records
//! `Covered` under that name: every history event of *any* conversation of the pipeline with an ID in
//! `lo..=hi` is in the files. The per-conversation routes show the same events under the same keys (SPEC
//! 8.2), so the seen checks ([`Store::is_seen_with`], [`Store::seen_among`]) answer from that range too,
//! and the exact keys of every conversation inside it are removed. The same two rules as a conversation's
//! fold hold: nothing within `FOLD_MIN_AGE_MS` of the stream's `hwm`, and never the pipeline's newest
//! `seen_window` exact history IDs.

use serde::{Deserialize, Serialize};

use super::keys::{is_history, key, padded_id, HISTORY_KINDS};
use super::{encode, numeric_id, Covered, StateError, Store, FOLD_MIN_AGE_MS};

/// The conversation key under which an X API v2 inbox stream (`GET /2/dm_events`) keeps its cursors and
/// counters as a [`super::ConvState`]. No conversation has this key: peers and conversation IDs are
/// numeric.
pub const INBOX_STREAM: &str = "*inbox";

/// A conversation the whole-inbox sync found, under its provider conversation ID.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Discovered {
    /// The provider's conversation ID (1:1 `"<a>-<b>"`, or a group's ID).
    pub conversation_id: String,
    /// Unix ms of the run that first saw it.
    pub first_seen_ms: u64,
}

impl Store {
    /// The conversations the inbox of a pipeline has discovered, by conversation ID.
    pub fn discovered(&self, pipeline: &str) -> Result<Vec<Discovered>, StateError> {
        let prefix = key(b'i', &[pipeline, ""]);
        let mut out = Vec::new();
        for kv in self.db.scan_prefix(&prefix) {
            let (k, v) = kv.map_err(self.db_err())?;
            out.push(serde_json::from_slice(&v).map_err(|e| self.corrupt(&k, e))?);
        }
        Ok(out)
    }

    /// Whether the inbox of a pipeline has discovered this conversation already.
    pub fn is_discovered(&self, pipeline: &str, conversation_id: &str) -> Result<bool, StateError> {
        self.db.contains_key(key(b'i', &[pipeline, conversation_id])).map_err(self.db_err())
    }

    /// The raw entry that records a discovered conversation, to put in a [`super::Commit`].
    pub fn discovered_entry(pipeline: &str, d: &Discovered) -> Result<(Vec<u8>, Vec<u8>), StateError> {
        Ok((key(b'i', &[pipeline, &d.conversation_id]), encode("a discovered conversation", d)?))
    }
}

impl Store {
    /// The stream's folded range (see the module docs), if the pipeline's stream has folded anything.
    pub(super) fn stream_covered(&self, pipeline: &str) -> Result<Option<Covered>, StateError> {
        self.covered(pipeline, INBOX_STREAM)
    }

    /// Folds the exact history keys of every conversation of the pipeline that the stream's gap-free range
    /// `[covered_from, hwm]` answers into the stream's range, in one atomic batch. Returns how many keys it
    /// removed. It walks the pipeline's exact keys (what folding leaves small), so the engine asks for it
    /// once per stream run, not once per page.
    pub(super) fn fold_stream(&self, pipeline: &str) -> Result<u64, StateError> {
        if self.seen_window == 0 {
            return Ok(0);
        }
        let st = self.conversation(pipeline, INBOX_STREAM)?;
        let (Some(lo), Some(hwm)) =
            (st.covered_from.as_deref().and_then(numeric_id), st.hwm.as_deref().and_then(numeric_id))
        else {
            return Ok(0);
        };
        let Some(aged) = (hwm >> 22).checked_sub(FOLD_MIN_AGE_MS) else { return Ok(0) };
        let by_age = (aged << 22) | 0x3F_FFFF;
        let history: Vec<&[u8]> = HISTORY_KINDS.iter().map(|k| k.as_str().as_bytes()).collect();
        let mut exact = Vec::new();
        for kv in self.db.scan_prefix(key(b's', &[pipeline, ""])) {
            let (k, _) = kv.map_err(self.db_err())?;
            // Key layout: s, pipeline, conversation, kind, id, joined by NUL.
            let kind = k.split(|b| *b == 0).nth(3);
            if kind.is_some_and(|kind| history.contains(&kind)) {
                if let Some(n) = padded_id(&k).filter(|n| *n <= hwm) {
                    exact.push((k, n));
                }
            }
        }
        let mut newest: Vec<u64> = exact.iter().map(|(_, n)| *n).collect();
        newest.sort_unstable_by(|a, b| b.cmp(a));
        let Some(&by_count) = newest.get(self.seen_window as usize) else { return Ok(0) };
        let hi = by_age.min(by_count);
        if hi < lo {
            return Ok(0);
        }
        // [covered_from, hwm] only grows, as a conversation's does, so the union with the old range is one.
        let old = self.stream_covered(pipeline)?;
        let merged = Covered { lo: old.map_or(lo, |o| o.lo.min(lo)), hi: old.map_or(hi, |o| o.hi.max(hi)) };
        let mut batch = sled::Batch::default();
        let mut removed = 0;
        for (k, n) in exact {
            if merged.lo <= n && n <= merged.hi {
                batch.remove(k);
                removed += 1;
            }
        }
        if old == Some(merged) && removed == 0 {
            return Ok(0);
        }
        batch.insert(key(b'r', &[pipeline, INBOX_STREAM]), encode("a covered range", &merged)?);
        self.db.apply_batch(batch).map_err(self.db_err())?;
        Ok(removed)
    }

    /// Whether the stream's folded range answers for a key (history kinds with a numeric ID only).
    pub(super) fn stream_holds(stream: Option<Covered>, kind: crate::record::Kind, n: u64) -> bool {
        is_history(kind) && stream.is_some_and(|c| c.lo <= n && n <= c.hi)
    }
}

#[cfg(test)]
mod tests {
    use super::super::{Commit, StoreOptions};
    use super::*;

    #[test]
    fn discovered_conversations_are_remembered_per_pipeline() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), StoreOptions::default()).unwrap();
        let d = Discovered { conversation_id: "1-2".into(), first_seen_ms: 5 };
        let commit = Commit { raw: vec![Store::discovered_entry("p", &d).unwrap()], ..Commit::default() };
        store.commit(&commit).unwrap();
        assert_eq!(store.discovered("p").unwrap(), vec![d]);
        assert!(store.is_discovered("p", "1-2").unwrap());
        assert!(store.discovered("q").unwrap().is_empty() && !store.is_discovered("q", "1-2").unwrap());
    }
}
