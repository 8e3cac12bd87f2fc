//! The shared world every simulated provider serves: conversations, their messages, how they
//! grow, and who the peers are.
//!
//! Generated messages are never stored: message `i` of a conversation is a pure function of
//! `(seed, peer, i)` (see `content`), so a conversation of a million messages costs a few words
//! of memory and any page is built in O(page size + log n). Only what clients or tests add
//! (grown messages as a count, sent messages with their text) is kept. The wire shape of a page,
//! its error codes and credits belong to the provider modules.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use rand::rngs::SmallRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

use super::clock::EventClock;
use super::content::{self, account_id, mix2, normalize_handle, Timeline};
use super::cursor::{CursorCodec, InvalidCursor, Position};
use super::{lock, CursorStyle, Growth, SimConfig, SimMessage};

/// The account handle ground truth is rendered for when none is configured and no request has
/// named one yet.
const FALLBACK_ACCOUNT: &str = "me";

/// All conversations, keyed by the peer's numeric id.
pub(crate) struct World {
    seed: u64,
    page_size: (usize, usize),
    unknown_peer_size: Option<usize>,
    growth: Growth,
    /// How many messages growth has added so far, across the whole simulator (for `max_new`).
    grown: AtomicUsize,
    codec: CursorCodec,
    conversations: Mutex<HashMap<u64, Arc<Conversation>>>,
    /// Lower-cased username → peer id, for user lookups by name.
    usernames: HashMap<String, u64>,
    configured_account: Option<String>,
    /// The account the latest history or send request named; ground truth uses it when no
    /// account is configured, so its sender ids match what the client was served.
    last_account: Mutex<Option<String>>,
    /// Dates what is added after start, after everything else (shared with the groups).
    clock: Arc<EventClock>,
}

/// One two-party conversation between the account and `peer`.
pub(crate) struct Conversation {
    pub(crate) peer: u64,
    pub(crate) username: String,
    pub(crate) can_dm: Option<bool>,
    pub(crate) style: CursorStyle,
    /// Fixed per conversation and never told to clients, like the real API's.
    pub(crate) page_size: usize,
    key: u64,
    initial: usize,
    timeline: Timeline,
    /// Whether growth applies; implicit empty conversations of unknown peers stay empty.
    grows: bool,
    state: Mutex<ConversationState>,
}

struct ConversationState {
    /// Drives shuffling, growth draws and cursor nonces, so a conversation's answers depend only
    /// on the seed and on the requests made to that conversation.
    rng: SmallRng,
    /// Messages after the initial ones, oldest first.
    extra: Vec<Extra>,
}

/// A message added after start.
struct Extra {
    /// From the event clock, not the timeline.
    ms: u64,
    /// `None` for a generated one (grown or added by a test), `Some` for one sent through the API.
    sent: Option<Arc<Sent>>,
}

/// A message the account sent through a provider's send route.
pub(crate) struct Sent {
    pub(crate) text: String,
    pub(crate) media_url: Option<String>,
}

/// One message as the world knows it, before a provider shapes it for the wire.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Message {
    pub(crate) id: u64,
    pub(crate) ms: u64,
    pub(crate) from_peer: bool,
    pub(crate) text: Option<String>,
    pub(crate) media_url: Option<String>,
    pub(crate) created_at_omitted: bool,
}

/// Where a history request starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Start {
    /// The newest page.
    Newest,
    /// A position from a verified cursor or a legacy id bound.
    At(Position),
}

/// One page of history, newest-first content but shuffled order.
#[derive(Debug)]
pub(crate) struct Page {
    pub(crate) messages: Vec<Message>,
    /// The opaque cursor for the next (older) page, if any.
    pub(crate) next_cursor: Option<String>,
}

impl World {
    pub(crate) fn new(cfg: &SimConfig) -> World {
        let lo = cfg.page_size.0.min(cfg.page_size.1).max(1);
        let hi = cfg.page_size.0.max(cfg.page_size.1).max(lo);
        let mut world = World {
            seed: cfg.seed,
            page_size: (lo, hi),
            unknown_peer_size: cfg.unknown_peer_size,
            growth: cfg.growth.clone(),
            grown: AtomicUsize::new(0),
            codec: CursorCodec::new(cfg.seed),
            conversations: Mutex::new(HashMap::new()),
            usernames: HashMap::new(),
            configured_account: cfg.account.as_deref().map(normalize_handle),
            last_account: Mutex::new(None),
            clock: Arc::new(EventClock::default()),
        };
        let mut conversations = HashMap::new();
        for c in &cfg.conversations {
            let Some(peer) = parse_peer(c.peer_id.trim()) else {
                tracing::warn!(peer_id = %c.peer_id, "simulator: ignoring a conversation whose peer_id is not a numeric X user id");
                continue;
            };
            if conversations.contains_key(&peer) {
                tracing::warn!(peer, "simulator: ignoring a duplicate conversation");
                continue;
            }
            let username = c.username.clone().unwrap_or_else(|| format!("user{peer}"));
            world.usernames.entry(username.to_ascii_lowercase()).or_insert(peer);
            let conv = world.make(peer, username, c.messages, c.cursor_style, c.can_dm, true);
            world.observe(&conv);
            conversations.insert(peer, Arc::new(conv));
        }
        world.conversations = Mutex::new(conversations);
        world
    }

    fn make(
        &self,
        peer: u64,
        username: String,
        initial: usize,
        style: CursorStyle,
        can_dm: Option<bool>,
        grows: bool,
    ) -> Conversation {
        let key = mix2(self.seed, mix2(peer, 0x636f_6e76));
        let mut rng = SmallRng::seed_from_u64(key);
        let page_size = rng.gen_range(self.page_size.0..=self.page_size.1);
        Conversation {
            peer,
            username,
            can_dm,
            style,
            page_size,
            key,
            initial,
            timeline: Timeline::new(key, initial),
            grows,
            state: Mutex::new(ConversationState { rng, extra: Vec::new() }),
        }
    }

    /// The conversation with `peer` as a reader sees it: configured ones, and for unknown peers a
    /// generated one when `unknown_peer_size` is set. `None` means "serve an empty history".
    pub(crate) fn find(&self, peer: u64) -> Option<Arc<Conversation>> {
        let mut map = lock(&self.conversations);
        if let Some(c) = map.get(&peer) {
            return Some(c.clone());
        }
        let n = self.unknown_peer_size?;
        let conv = Arc::new(self.make(peer, format!("user{peer}"), n, CursorStyle::Offset, None, true));
        self.observe(&conv);
        map.insert(peer, conv.clone());
        Some(conv)
    }

    /// The conversation with `peer`, created empty if needed, for writers (sends, tests adding
    /// messages).
    pub(crate) fn find_or_create(&self, peer: u64) -> Arc<Conversation> {
        if let Some(c) = self.find(peer) {
            return c;
        }
        let mut map = lock(&self.conversations);
        map.entry(peer)
            .or_insert_with(|| Arc::new(self.make(peer, format!("user{peer}"), 0, CursorStyle::Offset, None, false)))
            .clone()
    }

    pub(crate) fn peer_by_username(&self, username: &str) -> Option<Arc<Conversation>> {
        let peer = *self.usernames.get(&username.to_ascii_lowercase())?;
        self.find(peer)
    }

    /// Checks a cursor and that it belongs to this conversation.
    pub(crate) fn resolve_cursor(&self, peer: u64, text: &str) -> Result<Position, InvalidCursor> {
        match self.codec.decode(text)? {
            (p, pos) if p == peer => Ok(pos),
            _ => Err(InvalidCursor),
        }
    }

    /// Serves one page: first lets growth add a message, then slices, shuffles and issues the
    /// next cursor, all under the conversation's lock so concurrent readers see a consistent list.
    pub(crate) fn page(&self, conv: &Conversation, start: Start) -> Page {
        self.page_sized(conv, start, conv.page_size)
    }

    /// As [`World::page`], with a page size the client chose (X API v2 `max_results`, GetXAPI `count`).
    pub(crate) fn page_sized(&self, conv: &Conversation, start: Start, size: usize) -> Page {
        let mut st = lock(&conv.state);
        if conv.grows && self.growth.per_request > 0.0 {
            let arrives = st.rng.gen::<f64>() < self.growth.per_request;
            if arrives && self.take_growth_budget() {
                st.extra.push(Extra { ms: self.clock.next(conv.timeline.gap_ms()), sent: None });
            }
        }
        let total = conv.initial + st.extra.len();
        let p = size.max(1);
        let start = match start {
            Start::Newest => match conv.style {
                CursorStyle::Offset => Position::Offset(0),
                CursorStyle::MaxId => Position::Below(u64::MAX),
            },
            Start::At(pos) => pos,
        };
        // Oldest-first indices of the page, and where the next page starts.
        let (indices, next): (Vec<usize>, Option<Position>) = match start {
            Position::Offset(k) => {
                let k = usize::try_from(k).unwrap_or(usize::MAX).min(total);
                let end = k.saturating_add(p).min(total);
                let idx = (k..end).map(|j| total - 1 - j).collect();
                (idx, (end < total).then_some(Position::Offset(end as u64)))
            }
            Position::Below(bound) => {
                let c = conv.count_below(&st, total, bound);
                let from = c.saturating_sub(p);
                let idx = (from..c).rev().collect();
                let next = (from > 0).then(|| Position::Below(conv.id(&st, from)));
                (idx, next)
            }
        };
        let mut messages: Vec<Message> = indices.iter().map(|&i| conv.message(&st, i)).collect();
        messages.shuffle(&mut st.rng);
        let next_cursor = next.map(|pos| {
            let rng = &mut st.rng;
            self.codec.encode(conv.peer, pos, || rng.gen::<u64>())
        });
        Page { messages, next_cursor }
    }

    /// Every conversation that exists so far (configured, written to, or read as an unknown
    /// peer under `unknown_peer_size`), in no particular order.
    pub(crate) fn conversations(&self) -> Vec<Arc<Conversation>> {
        lock(&self.conversations).values().cloned().collect()
    }

    /// The clock that dates additions; the groups share it.
    pub(crate) fn clock(&self) -> Arc<EventClock> {
        self.clock.clone()
    }

    /// Makes later additions come after this conversation's generated history.
    fn observe(&self, conv: &Conversation) {
        if let Some(last) = conv.initial.checked_sub(1) {
            self.clock.observe(conv.timeline.ms(last));
        }
    }

    fn take_growth_budget(&self) -> bool {
        let max = self.growth.max_new;
        self.grown.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| (max == 0 || n < max).then_some(n + 1)).is_ok()
    }

    /// Appends a message the account sent; returns it as stored.
    pub(crate) fn append_sent(&self, conv: &Conversation, sent: Sent) -> Message {
        let mut st = lock(&conv.state);
        st.extra.push(Extra { ms: self.clock.written(crate::clock::wall_ms()), sent: Some(Arc::new(sent)) });
        let i = conv.initial + st.extra.len() - 1;
        conv.message(&st, i)
    }

    /// Appends `n` generated messages (newest); returns their ids, oldest first.
    pub(crate) fn append_generated(&self, conv: &Conversation, n: usize) -> Vec<u64> {
        let mut st = lock(&conv.state);
        let first = conv.initial + st.extra.len();
        st.extra.extend((0..n).map(|_| Extra { ms: self.clock.next(conv.timeline.gap_ms()), sent: None }));
        (first..first + n).map(|i| conv.id(&st, i)).collect()
    }

    /// When the newest message was sent (Unix ms); None for an empty conversation.
    pub(crate) fn newest_ms(&self, conv: &Conversation) -> Option<u64> {
        let st = lock(&conv.state);
        let total = conv.initial + st.extra.len();
        total.checked_sub(1).map(|i| conv.ms(&st, i))
    }

    /// Finds a message by ID in any conversation: its peer and the message.
    pub(crate) fn locate(&self, id: u64) -> Option<(u64, Message)> {
        let convs: Vec<Arc<Conversation>> = lock(&self.conversations).values().cloned().collect();
        convs.into_iter().find_map(|conv| {
            let st = lock(&conv.state);
            let total = conv.initial + st.extra.len();
            let i = conv.count_below(&st, total, id);
            (i < total && conv.id(&st, i) == id).then(|| (conv.peer, conv.message(&st, i)))
        })
    }

    /// Every message, newest first.
    pub(crate) fn all_newest_first(&self, conv: &Conversation) -> Vec<Message> {
        let st = lock(&conv.state);
        let total = conv.initial + st.extra.len();
        (0..total).rev().map(|i| conv.message(&st, i)).collect()
    }

    pub(crate) fn note_account(&self, handle: &str) {
        let norm = normalize_handle(handle);
        let mut last = lock(&self.last_account);
        if last.as_deref() != Some(norm.as_str()) {
            *last = Some(norm);
        }
    }

    /// The account ground truth is rendered for: the configured one, else the last one a client
    /// used, else a fixed placeholder.
    pub(crate) fn truth_account(&self) -> String {
        if let Some(a) = &self.configured_account {
            return a.clone();
        }
        lock(&self.last_account).clone().unwrap_or_else(|| FALLBACK_ACCOUNT.to_string())
    }

    /// Ground truth for tests, newest first, as seen by `account`.
    pub(crate) fn truth(&self, peer: u64, account: &str) -> Vec<SimMessage> {
        let Some(conv) = self.find(peer) else {
            return Vec::new();
        };
        let own = account_id(account).to_string();
        let peer_s = peer.to_string();
        self.all_newest_first(&conv)
            .into_iter()
            .map(|m| {
                let (sender_id, receiver_id) =
                    if m.from_peer { (peer_s.clone(), own.clone()) } else { (own.clone(), peer_s.clone()) };
                SimMessage {
                    id: m.id.to_string(),
                    sender_id,
                    receiver_id,
                    created_at: content::rfc3339_ms(m.ms),
                    text: m.text,
                    media_url: m.media_url,
                    created_at_omitted: m.created_at_omitted,
                }
            })
            .collect()
    }
}

impl Conversation {
    /// When message `i` was sent: the timeline for the initial ones, the event clock's date for
    /// later ones.
    fn ms(&self, st: &ConversationState, i: usize) -> u64 {
        match i.checked_sub(self.initial).and_then(|k| st.extra.get(k)) {
            Some(e) => e.ms,
            None => self.timeline.ms(i),
        }
    }

    fn id(&self, st: &ConversationState, i: usize) -> u64 {
        match i.checked_sub(self.initial).and_then(|k| st.extra.get(k)) {
            Some(e) => self.timeline.id_at_ms(e.ms, i),
            None => self.timeline.id(i),
        }
    }

    // What the whole-inbox routes read: they merge many conversations by ID, so they look at IDs
    // by index and build only the messages they serve. Each call takes the state lock briefly;
    // indices below a length read earlier stay valid, as messages are only ever appended.

    /// How many messages the conversation has now.
    pub(crate) fn len(&self) -> usize {
        self.initial + lock(&self.state).extra.len()
    }

    /// How many messages have an ID strictly below `bound` (they are indices `0..n`).
    pub(crate) fn count_below_id(&self, bound: u64) -> usize {
        let st = lock(&self.state);
        self.count_below(&st, self.initial + st.extra.len(), bound)
    }

    /// The ID of message `i` (0 = oldest); `i` must be below a length read earlier.
    pub(crate) fn id_at(&self, i: usize) -> u64 {
        self.id(&lock(&self.state), i)
    }

    /// Message `i` (0 = oldest); `i` must be below a length read earlier.
    pub(crate) fn message_at(&self, i: usize) -> Message {
        self.message(&lock(&self.state), i)
    }

    fn message(&self, st: &ConversationState, i: usize) -> Message {
        let id = self.id(st, i);
        let ms = self.ms(st, i);
        let sent = i.checked_sub(self.initial).and_then(|k| st.extra.get(k)).and_then(|e| e.sent.clone());
        match sent {
            Some(s) => Message {
                id,
                ms,
                from_peer: false,
                text: Some(s.text.clone()),
                media_url: s.media_url.clone(),
                created_at_omitted: false,
            },
            None => {
                let g = content::generate(self.key, i, id);
                Message {
                    id,
                    ms,
                    from_peer: g.from_peer,
                    text: g.text,
                    media_url: g.media_url,
                    created_at_omitted: g.created_at_omitted,
                }
            }
        }
    }

    /// How many messages have an id strictly below `bound`: a binary search over lazily computed,
    /// strictly increasing ids.
    fn count_below(&self, st: &ConversationState, total: usize, bound: u64) -> usize {
        let (mut lo, mut hi) = (0usize, total);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            if self.id(st, mid) < bound {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        lo
    }
}

/// Parses a numeric X user id in canonical form (digits only, fits in u64).
pub(crate) fn parse_peer(t: &str) -> Option<u64> {
    if t.is_empty() || t.len() > 20 || !t.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    t.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{SimConfig, SimConversation};
    use std::collections::HashSet;

    fn world(style: CursorStyle, n: usize, growth: Growth) -> World {
        World::new(&SimConfig {
            conversations: vec![SimConversation {
                peer_id: "42".into(),
                messages: n,
                cursor_style: style,
                ..SimConversation::default()
            }],
            growth,
            ..SimConfig::default()
        })
    }

    fn walk(w: &World, conv: &Conversation, between: impl Fn(usize)) -> Vec<Vec<u64>> {
        let mut pages = Vec::new();
        let mut start = Start::Newest;
        for k in 0..100_000 {
            let page = w.page(conv, start);
            let mut ids: Vec<u64> = page.messages.iter().map(|m| m.id).collect();
            ids.sort_unstable_by(|a, b| b.cmp(a));
            pages.push(ids);
            match page.next_cursor {
                Some(c) => start = Start::At(w.resolve_cursor(conv.peer, &c).expect("own cursor")),
                None => break,
            }
            between(k);
        }
        pages
    }

    #[test]
    fn max_id_walk_visits_every_message_once_newest_to_oldest() {
        let w = world(CursorStyle::MaxId, 1000, Growth::default());
        let conv = w.find(42).expect("configured");
        let pages = walk(&w, &conv, |_| {});
        let flat: Vec<u64> = pages.concat();
        let truth: Vec<u64> = w.all_newest_first(&conv).iter().map(|m| m.id).collect();
        assert_eq!(flat, truth);
        assert!(pages.iter().all(|p| p.len() == conv.page_size || p == pages.last().unwrap()));
    }

    #[test]
    fn max_id_walk_is_stable_under_growth() {
        let w = world(CursorStyle::MaxId, 300, Growth::default());
        let conv = w.find(42).expect("configured");
        let before: Vec<u64> = w.all_newest_first(&conv).iter().map(|m| m.id).collect();
        let pages = walk(&w, &conv, |_| {
            w.append_generated(&conv, 3);
        });
        assert_eq!(pages.concat(), before);
    }

    #[test]
    fn offset_pages_overlap_under_growth_but_lose_nothing() {
        let w = world(CursorStyle::Offset, 500, Growth { per_request: 0.7, max_new: 0 });
        let conv = w.find(42).expect("configured");
        let initial: HashSet<u64> = w.all_newest_first(&conv).iter().map(|m| m.id).collect();
        let pages = walk(&w, &conv, |_| {});
        let flat = pages.concat();
        let seen: HashSet<u64> = flat.iter().copied().collect();
        assert!(flat.len() > seen.len(), "offset pages must overlap when messages arrive");
        assert!(initial.is_subset(&seen), "nothing that existed at the start is lost");
        assert!(w.all_newest_first(&conv).len() > 500);
    }

    #[test]
    fn growth_respects_the_global_budget() {
        let w = world(CursorStyle::Offset, 10, Growth { per_request: 1.0, max_new: 4 });
        let conv = w.find(42).expect("configured");
        for _ in 0..20 {
            w.page(&conv, Start::Newest);
        }
        assert_eq!(w.all_newest_first(&conv).len(), 14);
    }

    #[test]
    fn pages_are_shuffled_and_deterministic() {
        let run = || {
            let w = world(CursorStyle::Offset, 240, Growth::default());
            let conv = w.find(42).expect("configured");
            let page = w.page(&conv, Start::Newest);
            (page.messages.iter().map(|m| m.id).collect::<Vec<_>>(), page.next_cursor)
        };
        let (a, ca) = run();
        let (b, cb) = run();
        assert_eq!((a.clone(), ca), (b, cb));
        let mut sorted = a.clone();
        sorted.sort_unstable_by(|x, y| y.cmp(x));
        assert_ne!(a, sorted, "within-page order is shuffled");
    }

    #[test]
    fn a_million_messages_are_cheap() {
        let started = std::time::Instant::now();
        let w = world(CursorStyle::MaxId, 1_000_000, Growth::default());
        let conv = w.find(42).expect("configured");
        let mut start = Start::Newest;
        for _ in 0..200 {
            let page = w.page(&conv, start);
            let c = page.next_cursor.expect("more pages");
            start = Start::At(w.resolve_cursor(42, &c).expect("valid"));
        }
        assert!(started.elapsed() < std::time::Duration::from_secs(5));
    }

    #[test]
    fn cursors_of_other_conversations_are_refused() {
        let w = World::new(&SimConfig::default());
        let conv = w.find(44196397).expect("default scenario");
        let next = w.page(&conv, Start::Newest).next_cursor.expect("240 messages");
        assert!(w.resolve_cursor(44196397, &next).is_ok());
        assert_eq!(w.resolve_cursor(2244994945, &next), Err(InvalidCursor));
    }

    #[test]
    fn unknown_peers_are_empty_or_generated() {
        let w = World::new(&SimConfig::default());
        assert!(w.find(5).is_none());
        let w = World::new(&SimConfig { unknown_peer_size: Some(12), ..SimConfig::default() });
        let conv = w.find(5).expect("generated");
        assert_eq!(w.all_newest_first(&conv).len(), 12);
    }

    #[test]
    fn additions_get_ids_above_every_existing_message() {
        let w = World::new(&SimConfig::default());
        let newest_before = w
            .conversations()
            .iter()
            .flat_map(|c| w.all_newest_first(c).first().map(|m| m.id))
            .max()
            .expect("the default scenario has messages");
        // A quiet conversation and a brand-new one: both land above everything, in order.
        let quiet = w.find(1234567890).expect("configured");
        let a = w.append_generated(&quiet, 2);
        let fresh = w.find_or_create(99);
        let b = w.append_sent(&fresh, Sent { text: "hi".into(), media_url: None });
        assert!(a[0] > newest_before && a[1] > a[0] && b.id > a[1], "{newest_before} {a:?} {}", b.id);
        assert_eq!((fresh.len(), fresh.count_below_id(b.id), fresh.id_at(0)), (1, 0, b.id));
        assert_eq!(quiet.message_at(quiet.len() - 1).id, a[1]);
        assert_eq!(w.clock().newest(), b.ms);
    }

    #[test]
    fn many_conversations_build_quickly() {
        let started = std::time::Instant::now();
        for (count, size) in [(1_000usize, 1_000usize), (10_000, 10)] {
            let w = World::new(&SimConfig {
                conversations: (0..count)
                    .map(|k| SimConversation {
                        peer_id: (1_000 + k).to_string(),
                        messages: size,
                        ..SimConversation::default()
                    })
                    .collect(),
                ..SimConfig::default()
            });
            let conv = w.find(1_000 + count as u64 - 1).expect("last one");
            assert_eq!(w.all_newest_first(&conv).len(), size);
        }
        assert!(started.elapsed() < std::time::Duration::from_secs(5));
    }
}
