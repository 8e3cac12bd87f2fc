//! Which passes of a pipeline hold which of its conversations right now. The daemon runs a `backfill`
//! handed to it through the control socket beside the scheduled ticks, so a long backfill never holds up
//! the head passes of the other conversations; two passes of one conversation must still never write at
//! once (each checks its page against the seen set before the other's page is committed, and each commits
//! the whole conversation state it holds).
//!
//! - A conversation's pass holds its [`Lease`]: that conversation's lock, and a shared hold on the
//!   pipeline.
//! - The X API v2 inbox stream writes events of any conversation, so it holds the pipeline exclusively
//!   ([`Passes::stream`]).
//!
//! A scheduled tick only *tries* (a busy conversation, or a stream while anything else runs, is left for a
//! later tick); a run asked for through the socket waits.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::{OwnedMutexGuard, OwnedRwLockReadGuard, OwnedRwLockWriteGuard, RwLock};

/// The locks of one open pipeline.
#[derive(Default)]
pub struct Passes {
    pipeline: Arc<RwLock<()>>,
    /// One lock per conversation key that has had a pass in this process (bounded by the conversations).
    conversations: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

/// A conversation held by one pass; released when dropped.
pub struct Lease {
    _conversation: OwnedMutexGuard<()>,
    _pipeline: OwnedRwLockReadGuard<()>,
}

impl Passes {
    /// Holds conversation `key`: waits for it when `wait`, else None while another pass holds it.
    pub async fn conversation(&self, key: &str, wait: bool) -> Option<Lease> {
        let lock = {
            let mut map = self.conversations.lock().unwrap_or_else(|p| p.into_inner());
            map.entry(key.to_string()).or_default().clone()
        };
        let pipeline = if wait {
            self.pipeline.clone().read_owned().await
        } else {
            self.pipeline.clone().try_read_owned().ok()?
        };
        let conversation = if wait { lock.lock_owned().await } else { lock.try_lock_owned().ok()? };
        Some(Lease { _conversation: conversation, _pipeline: pipeline })
    }

    /// Holds the whole pipeline (the inbox stream): waits when `wait`, else None while any pass runs.
    pub async fn stream(&self, wait: bool) -> Option<OwnedRwLockWriteGuard<()>> {
        if wait {
            Some(self.pipeline.clone().write_owned().await)
        } else {
            self.pipeline.clone().try_write_owned().ok()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn one_pass_per_conversation_and_the_stream_alone() {
        let passes = Passes::default();
        let a = passes.conversation("a", false).await.expect("a is free");
        assert!(passes.conversation("a", false).await.is_none(), "a is held");
        let b = passes.conversation("b", false).await.expect("another conversation goes on");
        assert!(passes.stream(false).await.is_none(), "the stream waits for every pass");
        drop((a, b));
        let stream = passes.stream(false).await.expect("nothing runs");
        assert!(passes.conversation("a", false).await.is_none(), "no pass while the stream runs");
        drop(stream);
        assert!(passes.conversation("a", true).await.is_some());
    }
}
