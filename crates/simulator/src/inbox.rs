//! The account's conversations as the whole-inbox routes read them (X API v2 `GET /2/dm_events`,
//! GetXAPI `POST /twitter/dm/list`): every 1:1 conversation that exists so far and every group,
//! each seen as a list of event IDs that only grows at the new end.
//!
//! IDs grow across all conversations (see `clock`), so "events below ID X" is a position that
//! stays put while new events arrive, which is what both routes' cursors are made of.

use std::sync::Arc;

use super::world::Conversation;
use super::x_api_v2::groups::Group;
use super::Simulator;

pub(crate) enum Thread {
    Peer(Arc<Conversation>),
    Group(Arc<Group>),
}

impl Thread {
    /// Every conversation of the account: 1:1 ones that exist so far (configured, written to, or
    /// read under `unknown_peer_size`) and every group, in no particular order.
    pub(crate) fn all(sim: &Simulator) -> Vec<Thread> {
        let mut all: Vec<Thread> = sim.inner.world.conversations().into_iter().map(Thread::Peer).collect();
        all.extend(sim.inner.x_api.groups.all().into_iter().map(Thread::Group));
        all
    }

    /// How many events it has now.
    pub(crate) fn len(&self) -> usize {
        match self {
            Thread::Peer(c) => c.len(),
            Thread::Group(g) => g.len(),
        }
    }

    /// How many events have an ID strictly below `bound` (they are indices `0..n`, oldest first).
    pub(crate) fn count_below(&self, bound: u64) -> usize {
        match self {
            Thread::Peer(c) => c.count_below_id(bound),
            Thread::Group(g) => g.count_below_id(bound),
        }
    }

    /// The ID of event `i`; `i` must be below a length or count read earlier.
    pub(crate) fn id(&self, i: usize) -> u64 {
        match self {
            Thread::Peer(c) => c.id_at(i),
            Thread::Group(g) => g.id_at(i),
        }
    }

    /// The newest event ID below `bound`, if any.
    pub(crate) fn newest_below(&self, bound: u64) -> Option<u64> {
        self.count_below(bound).checked_sub(1).map(|i| self.id(i))
    }
}
