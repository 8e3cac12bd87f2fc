//! `POST /twitter/dm/list`: the account's conversations, most recent activity first, in tabs
//! (`all`, `requests`, `hidden`), shaped as the newer GetXAPI docs and their third-party clients
//! show (PROVIDERS.md §2): `conversations` (ID, type, participants, last-message preview, unread,
//! `sort_timestamp`), the flat `messages` (each listed conversation's last message), `users`,
//! `has_more` and a `next_cursor` that is `null` on the last page.
//!
//! Ordering by last activity moves a conversation to the front whenever a message arrives, which
//! would make a plain offset or "after this conversation" cursor skip or repeat entries. So a walk
//! is pinned to the moment of its first page: the cursor carries that moment (an event-ID bound,
//! IDs growing across the account; see `clock`) and every page orders conversations by their last
//! activity *as of then*. Guarantee: paging one tab from its first page to `has_more: false` lists
//! every conversation that had an event when the first page was served exactly once, in one
//! consistent order, whatever arrives meanwhile; conversations that start mid-walk wait for the
//! next walk. Each entry shows the conversation as it is now (its current last message, unread
//! state and `sort_timestamp`), so those may be newer than the order suggests.
//!
//! A conversation is in `requests` or `hidden` when the scenario lists it
//! (`getxapi_request_conversations`, `getxapi_hidden_conversations`), else in `all`. `unread` means
//! the last message came from someone other than the account. A call costs one credit.

use std::collections::{BTreeMap, HashMap};

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::response::Response;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde_json::{json, Map, Value};

use super::super::content::{hash_bytes, mix2, snowflake, snowflake_ms};
use super::super::http::json;
use super::super::inbox::Thread;
use super::super::x_api_v2::groups::Kind;
use super::super::Simulator;
use super::{dm_body, err, me, Row};

pub(super) const LIST: &str = "POST /twitter/dm/list";

const TABS: [&str; 3] = ["all", "requests", "hidden"];
/// How far back a group's preview looks for a message among joins and leaves.
const PREVIEW_LOOKBACK: usize = 200;

/// Where a walk stands: its tab, the ID bound of the moment its first page was served, and the
/// sort position of the last conversation it was given.
#[derive(Debug, PartialEq, Eq)]
struct Cursor {
    tab: String,
    as_of: u64,
    after: SortKey,
}

/// Newest event ID (as of the walk's start), then groups after 1:1s, then the conversation's own
/// number: a total order, so ties cannot make a walk skip or repeat.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct SortKey {
    newest: u64,
    group: bool,
    id: u64,
}

impl Cursor {
    fn encode(&self, seed: u64) -> String {
        let k = &self.after;
        let text = format!("1.{}.{}.{}.{}.{}", self.tab, self.as_of, k.newest, u8::from(k.group), k.id);
        let tag = mix2(seed ^ 0x6c69_7374, hash_bytes(text.as_bytes()));
        URL_SAFE_NO_PAD.encode(format!("{text}.{tag:016x}"))
    }

    /// `None` for anything this simulator did not issue (or issued under another seed).
    fn decode(text: &str, seed: u64) -> Option<Cursor> {
        let raw = String::from_utf8(URL_SAFE_NO_PAD.decode(text).ok()?).ok()?;
        let (body, tag) = raw.rsplit_once('.')?;
        if format!("{:016x}", mix2(seed ^ 0x6c69_7374, hash_bytes(body.as_bytes()))) != tag {
            return None;
        }
        let parts: Vec<&str> = body.split('.').collect();
        let [ver, tab, as_of, newest, group, id] = parts.as_slice() else {
            return None;
        };
        if *ver != "1" || !TABS.contains(tab) {
            return None;
        }
        Some(Cursor {
            tab: (*tab).to_string(),
            as_of: as_of.parse().ok()?,
            after: SortKey { newest: newest.parse().ok()?, group: *group == "1", id: id.parse().ok()? },
        })
    }
}

/// One conversation on a page.
struct Listed<'a> {
    key: SortKey,
    thread: &'a Thread,
}

pub(super) async fn list(State(sim): State<Simulator>, body: Result<Bytes, BytesRejection>) -> Response {
    let obj = match dm_body(&sim, body) {
        Ok(o) => o,
        Err(resp) => return resp,
    };
    let tab = match obj.get("tab") {
        None | Some(Value::Null) => "all",
        Some(Value::String(t)) if TABS.contains(&t.as_str()) => t.as_str(),
        Some(_) => return err(400, "Invalid tab: must be one of all, requests, hidden"),
    };
    let count = match obj.get("count") {
        None | Some(Value::Null) => 50,
        Some(v) => match v.as_u64().or_else(|| v.as_str().and_then(|s| s.parse().ok())) {
            Some(n) => n.clamp(1, 100) as usize,
            None => return err(400, "count must be a number"),
        },
    };
    let seed = sim.inner.cfg.seed;
    let cursor = match obj.get("cursor") {
        None | Some(Value::Null) => None,
        Some(Value::String(c)) if c.is_empty() => None,
        Some(Value::String(c)) => match Cursor::decode(c, seed).filter(|c| c.tab == tab) {
            Some(c) => Some(c),
            None => return err(400, "Invalid cursor"),
        },
        Some(_) => return err(400, "Invalid cursor"),
    };
    let me = me(&sim);
    let world = &sim.inner.world;
    world.note_account(&me.to_string());
    // Every event dated up to the newest one so far has an ID below this; later ones do not.
    let as_of = cursor.as_ref().map_or_else(|| snowflake(world.clock().newest().saturating_add(1), 0), |c| c.as_of);

    let threads = Thread::all(&sim);
    let cfg = &sim.inner.cfg;
    let in_tab = |t: &Thread| {
        let listed = |list: &[String]| list.iter().any(|e| names(t, me, e.trim()));
        let home = if listed(&cfg.getxapi_request_conversations) {
            "requests"
        } else if listed(&cfg.getxapi_hidden_conversations) {
            "hidden"
        } else {
            "all"
        };
        home == tab
    };
    let mut listed: Vec<Listed> = threads
        .iter()
        .filter(|t| in_tab(t))
        .filter_map(|t| {
            let newest = t.newest_below(as_of)?;
            let (group, id) = match t {
                Thread::Peer(c) => (false, c.peer),
                Thread::Group(g) => (true, g.id),
            };
            Some(Listed { key: SortKey { newest, group, id }, thread: t })
        })
        .filter(|l| cursor.as_ref().is_none_or(|c| l.key < c.after))
        .collect();
    listed.sort_unstable_by_key(|l| std::cmp::Reverse(l.key));
    let has_more = listed.len() > count;
    listed.truncate(count);
    let next_cursor =
        listed.last().filter(|_| has_more).map(|l| Cursor { tab: tab.to_string(), as_of, after: l.key }.encode(seed));

    // Names for the users map, from the conversations already in hand: looking peers up in the
    // world could create conversations (under `unknown_peer_size`) in the middle of a walk.
    let usernames: HashMap<u64, String> = threads
        .iter()
        .filter_map(|t| match t {
            Thread::Peer(c) => Some((c.peer, c.username.clone())),
            Thread::Group(_) => None,
        })
        .collect();
    let account = world.truth_account();
    let name = |id: u64| {
        if id == me {
            account.clone()
        } else {
            usernames.get(&id).cloned().unwrap_or_else(|| format!("user{id}"))
        }
    };
    let mut users = BTreeMap::new();
    let mut conversations = Vec::new();
    let mut messages = Vec::new();
    for l in &listed {
        let (conversation_id, kind, participants) = match l.thread {
            Thread::Peer(c) => {
                let (a, b) = (me.min(c.peer), me.max(c.peer));
                (format!("{a}-{b}"), "ONE_TO_ONE", vec![me, c.peer])
            }
            Thread::Group(g) => {
                let mut p = vec![me];
                p.extend(g.members().iter().copied().filter(|m| *m != me));
                (g.id.to_string(), "GROUP_DM", p)
            }
        };
        for p in &participants {
            users.entry(p.to_string()).or_insert_with(|| user_json(*p, &name(*p)));
        }
        let last = last_message(l.thread, me);
        let newest_ms = l.thread.len().checked_sub(1).map(|i| snowflake_ms(l.thread.id(i))).unwrap_or(0);
        conversations.push(json!({
            "conversation_id": conversation_id,
            "type": kind,
            "participants": participants.iter().map(|p| json!({ "id": p.to_string(), "screen_name": name(*p) })).collect::<Vec<_>>(),
            "last_message": last.as_ref().map(|r| json!({ "id": r.id.to_string(), "senderId": r.sender.to_string(), "text": r.text })),
            "unread": last.as_ref().is_some_and(|r| r.sender != me),
            "sort_timestamp": newest_ms.to_string(),
        }));
        if let Some(r) = last {
            messages.push(r.to_json(&conversation_id));
        }
    }
    sim.inner.stats.credits(1);
    json(
        200,
        &json!({
            "userId": me.to_string(),
            "message_count": messages.len(),
            "has_more": has_more,
            "next_cursor": next_cursor,
            "conversations": conversations,
            "messages": messages,
            "events": [],
            "users": Value::Object(users.into_iter().collect::<Map<String, Value>>()),
        }),
    )
}

/// Whether a scenario's tab entry names this conversation: a 1:1 by the peer's ID or the
/// conversation ID (either order), a group by its ID.
fn names(t: &Thread, me: u64, entry: &str) -> bool {
    match t {
        Thread::Peer(c) => {
            let peer = c.peer.to_string();
            entry == peer
                || entry
                    .split_once('-')
                    .is_some_and(|(a, b)| (a == peer && b == me.to_string()) || (b == peer && a == me.to_string()))
        }
        Thread::Group(g) => entry == g.id.to_string(),
    }
}

/// The conversation's newest message as it is now (for a group, the newest among recent events
/// that is a message).
fn last_message(t: &Thread, me: u64) -> Option<Row> {
    match t {
        Thread::Peer(c) => {
            let m = c.message_at(c.len().checked_sub(1)?);
            let (sender, recipient) = if m.from_peer { (c.peer, me) } else { (me, c.peer) };
            Some(Row { id: m.id, ms: m.ms, sender, recipient: Some(recipient), text: m.text, media_url: m.media_url })
        }
        Thread::Group(g) => {
            let len = g.len();
            (len.saturating_sub(PREVIEW_LOOKBACK)..len).rev().map(|i| g.event(i)).find(|e| e.kind == Kind::Message).map(
                |e| Row {
                    id: e.id,
                    ms: e.ms,
                    sender: e.sender.map(|s| s.id(me)).unwrap_or(me),
                    recipient: None,
                    text: e.text,
                    media_url: e.media_url,
                },
            )
        }
    }
}

fn user_json(id: u64, screen_name: &str) -> Value {
    json!({
        "id": id.to_string(), "screen_name": screen_name, "name": format!("User {screen_name}"),
        "profile_image_url": format!("https://pbs.twimg.com/profile_images/{id}/photo_normal.jpg"),
        "verified": false, "is_blue_verified": false, "protected": false,
    })
}

#[cfg(test)]
mod tests;
