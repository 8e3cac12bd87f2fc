//! Group conversations: the account and two or more other users, with messages from any member and
//! `ParticipantsJoin` / `ParticipantsLeave` events, generated lazily like the 1:1 world (event `i` is a
//! pure function of the seed, the group and `i`), plus what clients add (sends, new groups).
//!
//! The account's own ID is not fixed here: events are rendered for the account the caller names, so
//! the same group reads right whichever account a scenario configures.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use super::super::clock::EventClock;
use super::super::content::{self, mix2, snowflake, Timeline, BASE_END_MS};
use super::super::lock;

/// One group conversation of a scenario.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SimGroup {
    /// The group's conversation ID: 15 to 19 digits, as X's pattern wants.
    pub conversation_id: String,
    /// The other members' numeric user IDs when the group was made (the account is always one).
    pub participants: Vec<String>,
    /// How many events exist before anything is sent: messages plus join and leave events.
    pub events: usize,
    /// Every `membership_every`-th event (after the first, which is the account creating the group)
    /// is a member leaving, the next such one the member being added back. 0: never.
    pub membership_every: usize,
}

/// One group event as ground truth, rendered for an account.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SimEvent {
    pub id: String,
    /// `MessageCreate`, `ParticipantsJoin` or `ParticipantsLeave`.
    pub event_type: String,
    /// The author of a message, the member who added others to the group; None for a leave.
    pub sender_id: Option<String>,
    /// Who joined or left (join and leave events only).
    pub participant_ids: Option<Vec<String>>,
    pub created_at: String,
    pub text: Option<String>,
    pub media_url: Option<String>,
}

/// Who did something: the account (whatever its ID) or another user.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Who {
    Account,
    User(u64),
}

impl Who {
    pub(crate) fn id(self, me: u64) -> u64 {
        match self {
            Who::Account => me,
            Who::User(u) => u,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    Message,
    Join,
    Leave,
}

impl Kind {
    pub(crate) fn event_type(self) -> &'static str {
        match self {
            Kind::Message => "MessageCreate",
            Kind::Join => "ParticipantsJoin",
            Kind::Leave => "ParticipantsLeave",
        }
    }
}

/// One event as the group knows it, before a provider shapes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Event {
    pub(crate) id: u64,
    pub(crate) ms: u64,
    pub(crate) kind: Kind,
    pub(crate) sender: Option<Who>,
    pub(crate) participants: Vec<u64>,
    pub(crate) text: Option<String>,
    pub(crate) media_url: Option<String>,
}

impl Event {
    pub(crate) fn truth(&self, me: u64) -> SimEvent {
        SimEvent {
            id: self.id.to_string(),
            event_type: self.kind.event_type().to_string(),
            sender_id: self.sender.map(|s| s.id(me).to_string()),
            participant_ids: (self.kind != Kind::Message)
                .then(|| self.participants.iter().map(u64::to_string).collect()),
            created_at: content::rfc3339_ms(self.ms),
            text: self.text.clone(),
            media_url: self.media_url.clone(),
        }
    }
}

/// What a client added to a group.
#[derive(Clone, Debug)]
enum Extra {
    Join { participants: Vec<u64> },
    Message { text: String, media_url: Option<String> },
}

pub(crate) struct Group {
    pub(crate) id: u64,
    key: u64,
    initial: usize,
    every: usize,
    /// The other members at creation.
    members: Vec<u64>,
    timeline: Timeline,
    /// What clients added, oldest first, each dated by the event clock.
    extra: Mutex<Vec<(u64, Extra)>>,
    clock: Arc<EventClock>,
}

impl Group {
    fn new(id: u64, seed: u64, members: Vec<u64>, initial: usize, every: usize, clock: Arc<EventClock>) -> Group {
        let key = mix2(seed, mix2(id, 0x0067_726f_7570));
        let timeline = Timeline::new(key, initial);
        if let Some(last) = initial.checked_sub(1) {
            clock.observe(timeline.ms(last));
        }
        Group { id, key, initial, every, members, timeline, extra: Mutex::new(Vec::new()), clock }
    }

    /// When event `i` happened and its ID.
    fn stamp(&self, i: usize) -> (u64, u64) {
        if i >= self.initial {
            if let Some((ms, _)) = lock(&self.extra).get(i - self.initial) {
                return (*ms, self.timeline.id_at_ms(*ms, i));
            }
        }
        (self.timeline.ms(i), self.timeline.id(i))
    }

    /// The ID of event `i` (0 = oldest).
    pub(crate) fn id_at(&self, i: usize) -> u64 {
        self.stamp(i).1
    }

    /// Appends what a client added, dated now (the wall clock, or just after the newest event when history
    /// runs ahead of it); returns its index.
    fn push(&self, extra: Extra) -> usize {
        let mut list = lock(&self.extra);
        list.push((self.clock.written(crate::clock::wall_ms()), extra));
        self.initial + list.len() - 1
    }

    pub(crate) fn len(&self) -> usize {
        self.initial + lock(&self.extra).len()
    }

    /// The other members when the group was made.
    pub(crate) fn members(&self) -> &[u64] {
        &self.members
    }

    /// Event `i` (0 = oldest).
    pub(crate) fn event(&self, i: usize) -> Event {
        let (ms, id) = self.stamp(i);
        let base =
            Event { id, ms, kind: Kind::Message, sender: None, participants: Vec::new(), text: None, media_url: None };
        if i >= self.initial {
            return match lock(&self.extra).get(i - self.initial).map(|(_, e)| e.clone()) {
                Some(Extra::Join { participants }) => {
                    Event { kind: Kind::Join, sender: Some(Who::Account), participants, ..base }
                }
                Some(Extra::Message { text, media_url }) => {
                    Event { sender: Some(Who::Account), text: Some(text), media_url, ..base }
                }
                None => base,
            };
        }
        if i == 0 {
            return Event { kind: Kind::Join, sender: Some(Who::Account), participants: self.members.clone(), ..base };
        }
        let n = self.members.len().max(1);
        let k = i.checked_div(self.every).unwrap_or(0);
        // The member out of the group between the k-th (odd) and the next membership event.
        let floating = |k: usize| self.members.get(((k.saturating_sub(1)) / 2) % n).copied();
        if self.every > 0 && i % self.every == 0 {
            let p = floating(k).into_iter().collect();
            return if k % 2 == 1 {
                Event { kind: Kind::Leave, participants: p, ..base }
            } else {
                Event { kind: Kind::Join, sender: Some(Who::Account), participants: p, ..base }
            };
        }
        let g = content::generate(self.key, i, id);
        let absent = if k % 2 == 1 { floating(k) } else { None };
        let sender = if g.from_peer && !self.members.is_empty() {
            let mut at = (mix2(self.key ^ 0x0077_686f, i as u64) % n as u64) as usize;
            if Some(self.members[at]) == absent && n > 1 {
                at = (at + 1) % n;
            }
            Who::User(self.members[at])
        } else {
            Who::Account
        };
        Event { sender: Some(sender), text: g.text, media_url: g.media_url, ..base }
    }

    /// Newest-first events from `offset`, at most `size`, and the next offset if more remain.
    pub(crate) fn page(&self, offset: usize, size: usize) -> (Vec<Event>, Option<usize>) {
        let total = self.len();
        let start = offset.min(total);
        let end = start.saturating_add(size.max(1)).min(total);
        let events = (start..end).map(|j| self.event(total - 1 - j)).collect();
        (events, (end < total).then_some(end))
    }

    pub(crate) fn newest_ms(&self) -> Option<u64> {
        self.len().checked_sub(1).map(|i| self.stamp(i).0)
    }

    /// How many events have an ID strictly below `bound` (they are indices `0..n`), by binary
    /// search over increasing IDs.
    pub(crate) fn count_below_id(&self, bound: u64) -> usize {
        let (mut lo, mut hi) = (0usize, self.len());
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            if self.id_at(mid) < bound {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        lo
    }

    /// The index of the event with this ID.
    fn find(&self, id: u64) -> Option<usize> {
        let i = self.count_below_id(id);
        (i < self.len() && self.id_at(i) == id).then_some(i)
    }

    /// Appends a message the account sent; returns its event.
    pub(crate) fn append_message(&self, text: String, media_url: Option<String>) -> Event {
        let i = self.push(Extra::Message { text, media_url });
        self.event(i)
    }

    pub(crate) fn all_newest_first(&self) -> Vec<Event> {
        (0..self.len()).rev().map(|i| self.event(i)).collect()
    }
}

/// Every group, by conversation ID.
pub(crate) struct Groups {
    seed: u64,
    map: Mutex<HashMap<u64, Arc<Group>>>,
    created: AtomicU64,
    clock: Arc<EventClock>,
}

impl Groups {
    pub(crate) fn new(seed: u64, configured: &[SimGroup], clock: Arc<EventClock>) -> Groups {
        let mut map = HashMap::new();
        for g in configured {
            let id = match g.conversation_id.trim().parse::<u64>() {
                Ok(id) if (15..=19).contains(&g.conversation_id.trim().len()) => id,
                _ => {
                    tracing::warn!(conversation_id = %g.conversation_id, "simulator: ignoring a group whose ID is not 15 to 19 digits");
                    continue;
                }
            };
            let members: Vec<u64> = g.participants.iter().filter_map(|p| p.trim().parse().ok()).collect();
            let group = Group::new(id, seed, members, g.events.max(1), g.membership_every, clock.clone());
            map.insert(id, Arc::new(group));
        }
        Groups { seed, map: Mutex::new(map), created: AtomicU64::new(0), clock }
    }

    /// Every group, in no particular order.
    pub(crate) fn all(&self) -> Vec<Arc<Group>> {
        lock(&self.map).values().cloned().collect()
    }

    pub(crate) fn get(&self, id: u64) -> Option<Arc<Group>> {
        lock(&self.map).get(&id).cloned()
    }

    /// A new group made by the account with `members` and a first message; returns the group and
    /// the message's event.
    pub(crate) fn create(&self, members: Vec<u64>, text: String, media_url: Option<String>) -> (Arc<Group>, Event) {
        let n = self.created.fetch_add(1, Ordering::Relaxed) + 1;
        let id = snowflake(BASE_END_MS + 60 * 86_400_000 + n * 1_000, mix2(self.seed, n));
        let group = Arc::new(Group::new(id, self.seed, members.clone(), 0, 0, self.clock.clone()));
        group.push(Extra::Join { participants: members });
        let event = group.append_message(text, media_url);
        lock(&self.map).insert(id, group.clone());
        (group, event)
    }

    /// Finds an event by ID in any group.
    pub(crate) fn locate(&self, id: u64) -> Option<(Arc<Group>, Event)> {
        let groups: Vec<Arc<Group>> = lock(&self.map).values().cloned().collect();
        groups.into_iter().find_map(|g| {
            g.find(id).map(|i| {
                let e = g.event(i);
                (g, e)
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn group(events: usize, every: usize) -> Group {
        Group::new(1_578_398_451_921_985_538, 7, vec![11, 12, 13], events, every, Arc::default())
    }

    #[test]
    fn a_group_starts_with_its_creation_and_alternates_leave_and_join() {
        let g = group(40, 5);
        let e0 = g.event(0);
        assert_eq!((e0.kind, e0.sender, e0.participants.clone()), (Kind::Join, Some(Who::Account), vec![11, 12, 13]));
        assert_eq!(g.event(5).kind, Kind::Leave);
        assert_eq!(g.event(5).sender, None);
        assert_eq!(g.event(10).kind, Kind::Join);
        assert_eq!(g.event(5).participants, g.event(10).participants, "the one who left comes back");
        // While member 11 is out (events 6..=9), it sends nothing.
        assert!((6..10).all(|i| g.event(i).sender != Some(Who::User(11))));
        let all = g.all_newest_first();
        assert!(all.windows(2).all(|w| w[0].id > w[1].id));
        assert!(all.iter().any(|e| e.kind == Kind::Message && e.sender == Some(Who::Account)));
        assert!(all.iter().any(|e| matches!(e.sender, Some(Who::User(_)))));
    }

    #[test]
    fn pages_cover_everything_once_and_ids_are_found() {
        let g = group(57, 6);
        let (mut offset, mut seen) = (Some(0), Vec::new());
        while let Some(o) = offset {
            let (events, next) = g.page(o, 10);
            seen.extend(events.iter().map(|e| e.id));
            offset = next;
        }
        assert_eq!(seen, g.all_newest_first().iter().map(|e| e.id).collect::<Vec<_>>());
        assert_eq!(g.find(g.event(17).id), Some(17));
        assert_eq!(g.find(1), None);
    }

    #[test]
    fn created_groups_hold_a_join_and_the_first_message() {
        let groups = Groups::new(7, &[], Arc::default());
        let (g, e) = groups.create(vec![21, 22], "hello".into(), None);
        assert!((15..=19).contains(&g.id.to_string().len()));
        let all = g.all_newest_first();
        assert_eq!(all.len(), 2);
        assert_eq!((all[1].kind, all[0].kind), (Kind::Join, Kind::Message));
        assert_eq!(all[0].id, e.id);
        assert_eq!(groups.locate(e.id).map(|(g2, _)| g2.id), Some(g.id));
    }
}
