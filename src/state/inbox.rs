//! What the whole-inbox sync (SPEC 8.2) remembers besides conversation states: the conversations it has
//! discovered (`i` prefix), so `status` can list them and the next run can sync them even when the
//! discovery route is not asked again, and the name under which the X API v2 stream keeps its own cursors.

use serde::{Deserialize, Serialize};

use super::keys::key;
use super::{encode, StateError, Store};

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
