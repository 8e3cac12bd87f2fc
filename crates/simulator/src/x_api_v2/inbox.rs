//! `GET /2/dm_events`: every event of the account across all its conversations (1:1 ones and
//! groups, joins and leaves included), newest first, as one stream (SPEC 8.2).
//!
//! Conversations are merged lazily by event ID: each contributes its newest event below the page's
//! bound to a heap, and only the events served (plus the few skipped by filters) are built, so a
//! page costs O(conversations · log n + page) whatever the history sizes. The `pagination_token`
//! says "events with an ID below X", X being the last event served, so pages stay put when new
//! events arrive: a walk sees every event that existed when it started exactly once (new ones have
//! higher IDs, see `clock`, and wait for the next walk's first page). Events rendered, fields,
//! expansions, includes, the 30-day horizon (counted back from the account's newest event), the
//! rate-limit window (the DM-read one the per-conversation reads share), credits and faults are
//! those of the per-conversation routes.

use std::collections::{BinaryHeap, HashMap};

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::response::Response;

use super::super::content::snowflake_ms;
use super::super::faults::{self, Spoiled};
use super::super::http::json;
use super::super::inbox::Thread;
use super::super::{SimProvider, Simulator};
use super::groups::Kind;
use super::{b32_decode, b32_encode, events_body, invalid, malformed, x_user, Ev, Shape, DAY_MS};

pub(super) const ROUTE: &str = "GET /2/dm_events";

/// The most events one request looks at, served or skipped by a filter: a filter that matches
/// nothing for a long stretch answers a short (even empty) page with a `next_token` rather than
/// reading the whole account in one request.
const MAX_SCAN: usize = 10_000;

/// Event `i` of a conversation, ready for the shared renderer.
fn event(t: &Thread, i: usize, me: u64) -> Ev {
    match t {
        Thread::Peer(c) => Ev::from_message(c.message_at(i), me, c.peer),
        Thread::Group(g) => Ev::from_group(g.event(i), me, g.id),
    }
}

/// A pagination token: "events with an ID below this one". The `i` sets it apart from the
/// per-conversation routes' tokens, which these routes refuse and vice versa.
fn encode_token(below: u64) -> String {
    b32_encode(format!("i{below:020}").as_bytes())
}

fn decode_token(text: &str) -> Option<u64> {
    if text.len() < 16 {
        return None;
    }
    let raw = String::from_utf8(b32_decode(text)?).ok()?;
    raw.strip_prefix('i').filter(|n| n.len() == 20).and_then(|n| n.parse().ok())
}

pub(super) async fn dm_events(
    State(sim): State<Simulator>,
    query: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> Response {
    let Ok(Query(q)) = query else {
        return invalid("The query string is invalid");
    };
    let cfg = &sim.inner.cfg;
    let max = match q.get("max_results").map(|v| v.parse::<usize>()) {
        None => 100,
        Some(Ok(n)) if (1..=100).contains(&n) => n,
        Some(_) => return invalid("The `max_results` query parameter value is not between 1 and 100"),
    };
    let shape = match Shape::parse(&q, cfg.x_strict_fields) {
        Ok(s) => Shape { epoch_ms: cfg.x_created_at_epoch_ms, ..s },
        Err(resp) => return resp,
    };
    let bound = match q.get("pagination_token") {
        None => u64::MAX,
        Some(t) => match decode_token(t) {
            Some(b) => b,
            None => return super::invalid_token(),
        },
    };
    if let Some(resp) = sim.take_read_fault(SimProvider::XApiV2, None, q.contains_key("pagination_token")) {
        return resp;
    }
    let spoiled = sim.inner.faults.spoil();
    if let Some(Spoiled::Malformed(kind)) = spoiled {
        tracing::debug!(?kind, "simulator: serving a malformed X API v2 inbox page");
        return malformed(kind);
    }
    let me = x_user(&sim);
    let world = &sim.inner.world;
    world.note_account(&me.to_string());
    let cutoff = cfg.x_history_days.map(|d| world.clock().newest().saturating_sub(d.saturating_mul(DAY_MS)));
    let wants = |t: &str| shape.event_types.as_ref().is_none_or(|types| types.contains(t));
    // 1:1 conversations hold only messages: leave them out when messages are filtered out.
    let messages_wanted = wants(Kind::Message.event_type());
    let sources: Vec<Thread> =
        Thread::all(&sim).into_iter().filter(|t| messages_wanted || matches!(t, Thread::Group(_))).collect();
    let (events, next) = merge(&sim, &sources, bound, max, cutoff, &wants, me);
    let body = events_body(&events, &shape, next.map(encode_token));
    if spoiled == Some(Spoiled::Dropped) {
        tracing::debug!("simulator: dropping an X API v2 inbox page mid-stream");
        return faults::dropped(serde_json::to_vec(&body).unwrap_or_default(), "application/json; charset=utf-8");
    }
    sim.inner.stats.served(events.len() as u64);
    json(200, &body)
}

/// Up to `max` visible events below `bound`, newest first, and the bound of the next page when a
/// visible event remains (or the scan limit stopped the look).
fn merge(
    sim: &Simulator,
    sources: &[Thread],
    bound: u64,
    max: usize,
    cutoff: Option<u64>,
    wants: &dyn Fn(&str) -> bool,
    me: u64,
) -> (Vec<Ev>, Option<u64>) {
    // (newest ID below the bound, source, its index); the heap yields the highest ID first.
    let mut heap: BinaryHeap<(u64, usize, usize)> = sources
        .iter()
        .enumerate()
        .filter_map(|(s, t)| t.count_below(bound).checked_sub(1).map(|i| (t.id(i), s, i)))
        .collect();
    let visible = |e: &Ev| !sim.inner.x_api.deleted(e.id) && wants(e.kind.event_type());
    let mut page: Vec<Ev> = Vec::with_capacity(max);
    let mut scanned = 0usize;
    while let Some((id, s, i)) = heap.pop() {
        // Past the horizon nothing exists; IDs only get older from here.
        if cutoff.is_some_and(|c| snowflake_ms(id) < c) {
            return (page, None);
        }
        let e = event(&sources[s], i, me);
        if visible(&e) {
            if page.len() == max {
                // One more visible event exists: the next page starts below the last one served.
                let last = page.last().map_or(bound, |l| l.id);
                return (page, Some(last));
            }
            page.push(e);
        }
        if let Some(prev) = i.checked_sub(1) {
            heap.push((sources[s].id(prev), s, prev));
        }
        scanned += 1;
        if scanned >= MAX_SCAN && !heap.is_empty() {
            return (page, Some(id));
        }
    }
    (page, None)
}

#[cfg(test)]
mod tests;
