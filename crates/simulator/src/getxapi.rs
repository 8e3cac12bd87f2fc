//! The GetXAPI routes under `/twitter/`, over the same world as the other providers:
//! `POST /twitter/dm/conversation` (history of one conversation), `POST /twitter/dm/list` (the
//! inbox, in `getxapi/inbox`), `POST /twitter/dm/send` and `GET /twitter/user/info`.
//!
//! What makes it GetXAPI: a bearer API key plus the account's `auth_token` in every DM body; 1:1
//! conversations named `"<smaller>-<larger>"`; `count`-sized pages newest first with `has_more` and a
//! `next_cursor` that is `null` at the end; explicit `null`s for absent fields; provider extras on each
//! message; and free-text errors `{"error": "…"}` with no machine code (a 429 says `retry_after` in the
//! body only). Check order: API key (401), injected faults, then the route; a send then takes a
//! write fault (`write_faults`) before or after performing the write.

// Helpers answer early with the error response itself; boxing it would only add noise.
#![allow(clippy::result_large_err)]

use std::collections::HashMap;
use std::sync::Mutex;

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{Query, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::{from_fn_with_state, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde_json::{json, Value};

use super::content::{self, account_id};
use super::faults::{self, Early, Malformed, Spoiled};
use super::http::{json, RouteTag};
use super::world::{parse_peer, Page, Sent, Start};
use super::x_api_v2::groups::Kind;
use super::{lock, SimProvider, SimWrite, SimWriteAction, Simulator};

mod write_faults;
#[cfg(test)]
mod write_tests;

mod inbox;

const HISTORY: &str = "POST /twitter/dm/conversation";
const SEND: &str = "POST /twitter/dm/send";
const USER: &str = "GET /twitter/user/info";

/// Group cursors are ours: `grp:` and an offset into the newest-first messages.
const GROUP_CURSOR: &str = "grp:";

/// GetXAPI-only books: history requests by the conversation their body named (the request log has
/// paths and queries, and GetXAPI puts the conversation in the body).
#[derive(Default)]
pub(crate) struct GetXState {
    history_requests: Mutex<HashMap<String, u64>>,
}

impl Simulator {
    /// History requests that named this `conversation_id`, faulted ones included.
    pub fn getxapi_history_requests(&self, conversation_id: &str) -> u64 {
        lock(&self.inner.getxapi.history_requests).get(conversation_id).copied().unwrap_or(0)
    }
}

pub(crate) fn routes(sim: Simulator) -> Router {
    let guard = |route: &'static str| from_fn_with_state((sim.clone(), route), guard);
    Router::new()
        .route("/twitter/dm/conversation", post(history).route_layer(guard(HISTORY)))
        .route("/twitter/dm/send", post(send_dm).route_layer(guard(SEND)))
        .route("/twitter/dm/list", post(inbox::list).route_layer(guard(inbox::LIST)))
        .route("/twitter/user/info", get(user).route_layer(guard(USER)))
        .layer(from_fn_with_state(sim.clone(), super::http::book))
        .with_state(sim)
}

fn err(status: u16, message: &str) -> Response {
    json(status, &json!({ "error": message }))
}

fn key_ok(sim: &Simulator, headers: &HeaderMap) -> bool {
    let Some(key) = sim.inner.cfg.api_key.as_deref() else {
        return true;
    };
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .is_some_and(|(scheme, token)| scheme.eq_ignore_ascii_case("bearer") && token.trim() == key)
}

async fn guard(State((sim, route)): State<(Simulator, &'static str)>, req: Request, next: Next) -> Response {
    let key_ok = key_ok(&sim, req.headers());
    let req = if route == HISTORY { count_history(&sim, req).await } else { req };
    let mut resp = if !key_ok {
        err(401, "Invalid API key")
    } else if let Some(fault) = sim.inner.faults.early() {
        tracing::debug!(route, ?fault, "simulator: injecting a fault");
        match fault {
            // The daily-limit shape seen in the wild: the wait is in the body only.
            Early::RateLimited { retry_after } => json(
                429,
                &json!({ "error": "Too Many Requests", "twitter_error_code": 88, "retry_after": retry_after }),
            ),
            Early::Unavailable { status, .. } => {
                err(status, if status == 502 { "Bad Gateway" } else { "Service Unavailable" })
            }
        }
    } else {
        next.run(req).await
    };
    resp.extensions_mut().insert(RouteTag { route: route.to_string(), key_ok });
    resp
}

/// Books a history request under the conversation its body names, and hands the request on intact.
async fn count_history(sim: &Simulator, req: Request) -> Request {
    let (parts, body) = req.into_parts();
    let bytes = axum::body::to_bytes(body, 1024 * 1024).await.unwrap_or_default();
    let conversation = serde_json::from_slice::<Value>(&bytes)
        .ok()
        .and_then(|v| v.get("conversation_id").and_then(Value::as_str).map(str::to_string));
    if let Some(c) = conversation {
        *lock(&sim.inner.getxapi.history_requests).entry(c).or_default() += 1;
    }
    Request::from_parts(parts, axum::body::Body::from(bytes))
}

/// The JSON body of a DM request with its `auth_token` checked, or the error to answer.
fn dm_body(sim: &Simulator, body: Result<Bytes, BytesRejection>) -> Result<serde_json::Map<String, Value>, Response> {
    let body = body.map_err(|_| err(400, "Could not read the request body"))?;
    let Ok(Value::Object(obj)) = serde_json::from_slice::<Value>(&body) else {
        return Err(err(400, "Request body must be a JSON object"));
    };
    let Some(token) = obj.get("auth_token").and_then(Value::as_str).filter(|t| !t.is_empty()) else {
        return Err(err(400, "Missing required field: auth_token"));
    };
    if sim.inner.cfg.getxapi_auth_token.as_deref().is_some_and(|t| t != token) {
        return Err(err(401, "Invalid auth_token - could not extract userId"));
    }
    Ok(obj)
}

fn me(sim: &Simulator) -> u64 {
    account_id(&sim.inner.world.truth_account())
}

// ---------------------------------------------------------------------------------------------
// POST /twitter/dm/conversation

async fn history(State(sim): State<Simulator>, body: Result<Bytes, BytesRejection>) -> Response {
    let obj = match dm_body(&sim, body) {
        Ok(o) => o,
        Err(resp) => return resp,
    };
    let Some(conversation_id) = obj.get("conversation_id").and_then(Value::as_str).map(str::to_string) else {
        return err(400, "Missing required field: conversation_id (get it from /dm/list)");
    };
    let count = match obj.get("count") {
        None | Some(Value::Null) => 50,
        Some(v) => match v.as_u64().or_else(|| v.as_str().and_then(|s| s.parse().ok())) {
            Some(n) => n.clamp(1, 100) as usize,
            None => return err(400, "count must be a number"),
        },
    };
    let cursor = obj.get("cursor").and_then(Value::as_str).filter(|c| !c.is_empty()).map(str::to_string);
    let me = me(&sim);
    let world = &sim.inner.world;
    let mut rows: Vec<Row> = Vec::new();
    let next_cursor;
    let spoiled;
    match conversation_id.split_once('-') {
        Some((a, b)) => {
            let peer = match (parse_peer(a), parse_peer(b)) {
                (Some(a), Some(b)) if a == me && b != me => b,
                (Some(a), Some(b)) if b == me && a != me => a,
                _ => return err(404, "Conversation not found"),
            };
            if sim.inner.faults.forbidden(&peer.to_string()) {
                return err(403, "Not authorized to view this conversation");
            }
            if let Some(resp) = sim.take_read_fault(SimProvider::GetXApi, Some(&peer.to_string()), cursor.is_some()) {
                return resp;
            }
            let start = match &cursor {
                None => Start::Newest,
                Some(c) => match world.resolve_cursor(peer, c) {
                    Ok(pos) => Start::At(pos),
                    Err(_) => return err(400, "Invalid cursor"),
                },
            };
            spoiled = sim.inner.faults.spoil();
            if let Some(Spoiled::Malformed(kind)) = spoiled {
                return malformed(kind);
            }
            world.note_account(&me.to_string());
            let page = match world.find(peer) {
                // At most `count`, and at most the conversation's own page size ("~50 per page").
                Some(conv) => world.page_sized(&conv, start, count.min(conv.page_size)),
                None => Page { messages: Vec::new(), next_cursor: None },
            };
            next_cursor = page.next_cursor;
            for m in page.messages {
                let (s, r) = if m.from_peer { (peer, me) } else { (me, peer) };
                rows.push(Row {
                    id: m.id,
                    ms: m.ms,
                    sender: s,
                    recipient: Some(r),
                    text: m.text,
                    media_url: m.media_url,
                });
            }
        }
        None => {
            let Some(group) = parse_peer(&conversation_id).and_then(|g| sim.inner.x_api.groups.get(g)) else {
                return err(404, "Conversation not found");
            };
            let offset = match &cursor {
                None => 0,
                Some(c) => match c.strip_prefix(GROUP_CURSOR).and_then(|n| n.parse().ok()) {
                    Some(o) => o,
                    None => return err(400, "Invalid cursor"),
                },
            };
            spoiled = sim.inner.faults.spoil();
            if let Some(Spoiled::Malformed(kind)) = spoiled {
                return malformed(kind);
            }
            // GetXAPI pages messages; joins and leaves are not messages.
            let (events, next) = group.page(offset, count);
            next_cursor = next.map(|o| format!("{GROUP_CURSOR}{o}"));
            for e in events.into_iter().filter(|e| e.kind == Kind::Message) {
                let sender = e.sender.map(|s| s.id(me)).unwrap_or(me);
                rows.push(Row { id: e.id, ms: e.ms, sender, recipient: None, text: e.text, media_url: e.media_url });
            }
        }
    }
    let served = rows.len() as u64;
    let body = json!({
        "userId": me.to_string(),
        "conversation_id": conversation_id,
        "message_count": rows.len(),
        "has_more": next_cursor.is_some(),
        "next_cursor": next_cursor,
        "messages": rows.iter().map(|r| r.to_json(&conversation_id)).collect::<Vec<_>>(),
        "events": [],
        "users": {},
    });
    if spoiled == Some(Spoiled::Dropped) {
        tracing::debug!("simulator: dropping a GetXAPI page mid-stream");
        return faults::dropped(serde_json::to_vec(&body).unwrap_or_default(), "application/json; charset=utf-8");
    }
    sim.inner.stats.served(served);
    json(200, &body)
}

/// One message as GetXAPI shapes it, before serialization.
struct Row {
    id: u64,
    ms: u64,
    sender: u64,
    recipient: Option<u64>,
    text: Option<String>,
    media_url: Option<String>,
}

impl Row {
    fn to_json(&self, conversation_id: &str) -> Value {
        json!({
            "id": self.id.to_string(),
            "conversationId": conversation_id,
            "createdAt": content::rfc3339_ms(self.ms),
            "senderId": self.sender.to_string(),
            "recipientId": self.recipient.map(|r| r.to_string()),
            "text": self.text,
            "media": self.media_url.as_ref().map(|u| json!({ "type": "photo", "url": u })),
            "shared_tweet": null,
            "card": null,
            "links": [],
            "reactions": [],
            "reply_to_message_id": null,
            "edit_count": 0,
        })
    }
}

fn malformed(kind: Malformed) -> Response {
    tracing::debug!(?kind, "simulator: serving a malformed GetXAPI page");
    match kind {
        Malformed::InvalidJson => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/json; charset=utf-8")],
            "{\"userId\":\"1345154135381794816\",\"has_more\":true,\"messages\":[{\"id\":\"2059239475419779072\",\"text\":\"see y",
        )
            .into_response(),
        Malformed::WrongShape => json(200, &json!({ "status": "success", "msg": "ok" })),
        Malformed::Html => faults::html_page(),
    }
}

// ---------------------------------------------------------------------------------------------
// POST /twitter/dm/send

async fn send_dm(State(sim): State<Simulator>, body: Result<Bytes, BytesRejection>) -> Response {
    let obj = match dm_body(&sim, body) {
        Ok(o) => o,
        Err(resp) => return resp,
    };
    let world = &sim.inner.world;
    let peer = match (
        obj.get("recipient_id").and_then(Value::as_str),
        obj.get("recipient_username").and_then(Value::as_str),
    ) {
        (Some(id), _) => match parse_peer(id) {
            Some(p) => p,
            None => return err(400, "Invalid recipient_id"),
        },
        (None, Some(name)) => match world.peer_by_username(name.trim_start_matches('@')) {
            Some(conv) => conv.peer,
            None => return err(404, "User not found"),
        },
        (None, None) => return err(400, "Missing required field: recipient_id or recipient_username"),
    };
    let Some(text) = obj.get("text").and_then(Value::as_str).filter(|t| !t.trim().is_empty()) else {
        return err(400, "Missing required field: text");
    };
    let peer_s = peer.to_string();
    if sim.inner.faults.forbidden(&peer_s) || sim.inner.faults.dm_not_allowed(&peer_s) {
        return err(403, "You cannot send messages to this user");
    }
    let fault = match write_faults::take(&sim, Some(&peer_s)) {
        Ok(f) => f,
        Err(refusal) => return refusal,
    };
    let me = me(&sim);
    let conv = world.find_or_create(peer);
    let msg = world.append_sent(&conv, Sent { text: text.to_string(), media_url: None });
    world.note_account(&me.to_string());
    sim.inner.stats.sent(1);
    sim.log_write(SimWrite {
        route: SEND.to_string(),
        target: Some(peer_s.clone()),
        text: Some(text.to_string()),
        result_id: Some(msg.id.to_string()),
        fault: fault.as_ref().map(|f| f.kind),
        ..SimWrite::performed(SimProvider::GetXApi, SimWriteAction::Send)
    });
    write_faults::answer(
        fault,
        json!({
            "status": "success",
            "msg": "DM sent successfully",
            "data": {
                "id": msg.id.to_string(),
                "createdAt": content::rfc3339_ms(msg.ms),
                "senderId": me.to_string(),
                "recipientId": peer_s,
                "text": text,
                "recipient_username": conv.username,
            },
        }),
    )
    .await
}

// ---------------------------------------------------------------------------------------------
// GET /twitter/user/info?userName= | userId=

async fn user(State(sim): State<Simulator>, query: Result<Query<HashMap<String, String>>, QueryRejection>) -> Response {
    let Ok(Query(q)) = query else {
        return err(400, "Invalid query string");
    };
    let world = &sim.inner.world;
    let found = if let Some(id) = q.get("userId") {
        parse_peer(id).map(|p| (p, world.find(p).map(|c| c.username.clone()).unwrap_or_else(|| format!("user{p}"))))
    } else if let Some(name) = q.get("userName") {
        world.peer_by_username(name.trim_start_matches('@')).map(|c| (c.peer, c.username.clone()))
    } else {
        return err(400, "Missing required parameter: userName");
    };
    match found {
        Some((id, name)) => {
            json(200, &json!({ "status": "success", "data": { "id": id.to_string(), "userName": name, "name": name } }))
        }
        None => err(404, "User not found"),
    }
}
