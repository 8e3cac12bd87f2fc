//! The Xquik API under `/api/v1`: DM history, DM send (legacy and write-action contracts, the
//! latter optionally answering 202 `pending_confirmation` until polled enough), user lookup,
//! media upload and write-action status, with Xquik's auth, error bodies, credits and quirks.
//!
//! Conversations come from `world`; which requests fail comes from `faults`. This module owns
//! only what is Xquik-specific: the wire shapes, the check order, and the idempotency records of
//! writes. Check order on every route: auth (401), then Xquik's fixed window for the Xquik account
//! (429, see `pace`), then storm / rate limit / server error, then the route's own validation,
//! account and permission checks, then (history only) malformed and dropped bodies. Write routes
//! then replay an `Idempotency-Key` they know, refuse forbidden peers, and take a write fault
//! (`write_faults`) before or after performing the write.

use std::collections::HashMap;
use std::sync::Mutex;

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, FromRequest, Multipart, Path, Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::{from_fn_with_state, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde::Serialize;
use serde_json::{json, Value};

use super::content::{self, account_id, hash_bytes, hex64, mix2, normalize_handle, snowflake};
use super::cursor::Position;
use super::faults::{self, Early, Malformed, Spoiled};
use super::http::{json, RouteTag};
use super::pace::XquikFamily;
use super::world::{parse_peer, Page, Sent, Start};
use super::{lock, SendStyle, SimConfig, SimProvider, SimWrite, SimWriteAction, Simulator, WriteFaultKind};

const HISTORY: &str = "GET /x/dm/{userId}/history";
const SEND: &str = "POST /x/dm/{userId}";
const USER: &str = "GET /x/users/{id}";
const MEDIA: &str = "POST /x/media";
const WRITE_ACTION: &str = "GET /x/write-actions/{id}";

const SEND_CREDITS: u64 = 10;
const UPLOAD_CREDITS: u64 = 10;
/// The documented upload limit (15,728,640 bytes) plus room for the multipart framing.
const UPLOAD_LIMIT: usize = 16 * 1024 * 1024;
const MAX_TEXT_CHARS: usize = 10_000;

const ACCOUNT_REQUIRED: &str =
    "Provide ?account=<x_handle> for a connected X account. DM history requires a connected participant account.";
const ACCOUNT_NOT_FOUND: &str = "X account not found. Connect it first at /dashboard/account?tab=x-accounts.";
const DM_NOT_PERMITTED: &str = "X rejected the DM read. The connected account is not a participant in this conversation, or it needs reauthentication. Reconnect the account on the dashboard and try again.";

/// Xquik-only state: write-action records and idempotency keys, and uploaded media.
pub(crate) struct XquikState {
    seed: u64,
    writes: Mutex<Writes>,
}

#[derive(Default)]
struct Writes {
    /// Numbers write actions and media ids.
    seq: u64,
    /// Idempotency-Key → the request hash and the answer it got.
    by_key: HashMap<String, (String, Value)>,
    /// Write-action id → record, for the status route.
    by_id: HashMap<String, Value>,
    /// Media id → public URL, so a DM that attaches an upload shows its URL in history.
    media: HashMap<String, String>,
    /// Write-action id → a send still `pending_confirmation`: `by_id` holds its pending record
    /// until enough polls have happened, then the completed one.
    pending: HashMap<String, PendingWrite>,
}

/// A write answered 202 and not yet confirmed.
struct PendingWrite {
    /// Status polls left before it reports `success`.
    polls_left: u32,
    /// `Retry-After` seconds of each pending answer.
    retry_after: u64,
    /// The record it becomes once confirmed.
    done: Value,
}

impl XquikState {
    pub(crate) fn new(seed: u64) -> XquikState {
        XquikState { seed, writes: Mutex::new(Writes::default()) }
    }
}

pub(crate) fn routes(sim: Simulator) -> Router {
    let guard = |route: &'static str| from_fn_with_state((sim.clone(), route), guard);
    Router::new()
        .route("/api/v1/x/dm/{userId}/history", get(history).route_layer(guard(HISTORY)))
        .route("/api/v1/x/dm/{userId}", post(send_dm).route_layer(guard(SEND)))
        .route("/api/v1/x/users/{id}", get(user).route_layer(guard(USER)))
        .route("/api/v1/x/media", post(upload).layer(DefaultBodyLimit::max(UPLOAD_LIMIT)).route_layer(guard(MEDIA)))
        .route("/api/v1/x/write-actions/{id}", get(write_action).route_layer(guard(WRITE_ACTION)))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(from_fn_with_state(sim.clone(), super::http::book))
        .with_state(sim)
}

// ---------------------------------------------------------------------------------------------
// Auth, faults, errors

fn key_ok(cfg: &SimConfig, headers: &HeaderMap) -> bool {
    let Some(key) = cfg.api_key.as_deref() else {
        return true;
    };
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    if header("x-api-key") == Some(key) || header("xquik-api-key") == Some(key) {
        return true;
    }
    header("authorization")
        .and_then(|v| v.split_once(' '))
        .is_some_and(|(scheme, token)| scheme.eq_ignore_ascii_case("bearer") && token.trim() == key)
}

/// Auth, then Xquik's fixed rate-limit window, then the early faults, then the route; tags the
/// answer for the books.
async fn guard(State((sim, route)): State<(Simulator, &'static str)>, req: Request, next: Next) -> Response {
    let key_ok = key_ok(&sim.inner.cfg, req.headers());
    let write_route = route == SEND || route == MEDIA;
    let contract = contract_opt_in(req.headers());
    let family = XquikFamily::of(req.method());
    let window = match family {
        Some(f) if key_ok => sim.inner.pace.xquik_take(&presented_key(req.headers()), f).err().map(|secs| (f, secs)),
        _ => None,
    };
    let mut resp = if !key_ok {
        unauthenticated()
    } else if let Some((family, secs)) = window {
        tracing::debug!(route, "simulator: Xquik rate-limit window spent");
        sim.inner.stats.rate_limited(family.name());
        rate_limit_exceeded(secs)
    } else if let Some(fault) = sim.inner.faults.early() {
        tracing::debug!(route, ?fault, "simulator: injecting a fault");
        early(fault, write_route, contract)
    } else {
        next.run(req).await
    };
    resp.extensions_mut().insert(RouteTag { route: route.to_string(), key_ok });
    resp
}

/// The key the caller presented, whichever header carried it: Xquik's windows count per Xquik
/// account, and the key is what names the account.
fn presented_key(headers: &HeaderMap) -> String {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).map(str::trim);
    header("x-api-key")
        .or_else(|| header("xquik-api-key"))
        .or_else(|| {
            header("authorization")
                .and_then(|v| v.split_once(' '))
                .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
                .map(|(_, token)| token.trim())
        })
        .unwrap_or_default()
        .to_string()
}

/// Whether the request opted in to the best-practice contract, under which dependency failures
/// are 424 with a structured `error` instead of 502.
fn contract_opt_in(headers: &HeaderMap) -> bool {
    headers.get("xquik-api-contract").and_then(|v| v.to_str().ok()).is_some_and(|v| v.trim() == "2026-04-29")
}

/// Xquik's own 429, from its windows or a storm: the wait in the header and the body.
fn rate_limit_exceeded(secs: u64) -> Response {
    let resp = json(
        429,
        &json!({
            "error": "rate_limit_exceeded",
            "message": "Too many requests. Try again later.",
            "retryAfter": secs,
        }),
    );
    let mut resp = resp;
    resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs));
    resp
}

fn unauthenticated() -> Response {
    let mut resp = err(401, "unauthenticated", "Authentication required. Provide a valid API key or bearer token.");
    let h = resp.headers_mut();
    h.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer realm=\"xquik\""));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

fn early(fault: Early, write_route: bool, contract: bool) -> Response {
    match fault {
        Early::RateLimited { retry_after } => rate_limit_exceeded(retry_after),
        Early::Unavailable { status: 502, retry_after: _ } => dependency_failure(write_route, contract),
        // A write route's 503 is the write-tracking outage, in the write-error shape.
        Early::Unavailable { retry_after, .. } if write_route => write_tracking_unavailable(retry_after),
        Early::Unavailable { status, retry_after } => {
            let mut resp = err(status, "service_unavailable", "Service temporarily unavailable. Try again later.");
            resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(retry_after));
            resp
        }
    }
}

const X_API_UNAVAILABLE: &str = "X API is temporarily unavailable. Try again later.";

/// X is unavailable: 502 `x_api_unavailable`, or 424 with a structured `error` under the opt-in
/// contract. On a write route the body carries the write-error fields (nothing was sent).
fn dependency_failure(write_route: bool, contract: bool) -> Response {
    let mut resp = if write_route {
        write_err(502, "x_api_unavailable", X_API_UNAVAILABLE, Recovery::Retry { after_secs: None })
    } else {
        err(502, "x_api_unavailable", X_API_UNAVAILABLE)
    };
    if contract {
        let body = json!({ "message": X_API_UNAVAILABLE, "type": "dependency_error", "code": "x_api_unavailable" });
        resp = restructure(resp, 424, body);
    }
    resp
}

/// Re-issues a JSON error response with another status and a structured `error` object, as the
/// opt-in contract words errors.
fn restructure(resp: Response, status: u16, error: Value) -> Response {
    let mut body = resp.extensions().get::<ErrorBody>().map(|b| b.0.clone()).unwrap_or_else(|| json!({}));
    body["error"] = error;
    json(status, &body)
}

/// The JSON body of an error response, kept beside it so it can be re-shaped without parsing.
#[derive(Clone)]
struct ErrorBody(Value);

/// 503 `write_tracking_unavailable` with `Retry-After`: nothing was dispatched.
fn write_tracking_unavailable(retry_after: u64) -> Response {
    let mut resp = write_err(
        503,
        "write_tracking_unavailable",
        "Write tracking unavailable. Try again.",
        Recovery::Retry { after_secs: None },
    );
    resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(retry_after.max(1)));
    resp
}

/// `{"error": code, "message": message}`.
fn err(status: u16, code: &str, message: &str) -> Response {
    let body = json!({ "error": code, "message": message });
    let mut resp = json(status, &body);
    resp.extensions_mut().insert(ErrorBody(body));
    resp
}

/// What a client of a write route should do after an error.
#[derive(Clone, Copy)]
enum Recovery {
    /// Change the request, then retry (the key may be reused).
    FixRequest,
    /// Retry with a new Idempotency-Key.
    NewKey,
    /// Nothing was dispatched and the action is filed as failed: a new attempt can succeed, with
    /// a new Idempotency-Key.
    RetryNewKey,
    /// Do not retry unchanged.
    GiveUp,
    /// Nothing was dispatched and a later attempt can succeed: retry (after `after_secs`).
    Retry { after_secs: Option<u64> },
    /// Nothing was dispatched, but retrying will not help until the account or billing is fixed.
    Blocked,
    /// The write may have happened: check before doing anything else.
    Verify,
}

/// The write-route error body: the legacy pair plus the charge and recovery fields.
fn write_err(status: u16, code: &str, message: &str, recovery: Recovery) -> Response {
    let (retryable, safe, next) = match recovery {
        Recovery::FixRequest => (false, true, json!({ "type": "fix_request" })),
        Recovery::NewKey => (false, true, json!({ "type": "retry", "requiresNewIdempotencyKey": true })),
        Recovery::RetryNewKey => (true, true, json!({ "type": "retry", "requiresNewIdempotencyKey": true })),
        Recovery::GiveUp => (false, false, Value::Null),
        Recovery::Retry { after_secs: None } => (true, true, json!({ "type": "retry" })),
        Recovery::Retry { after_secs: Some(s) } => {
            (true, true, json!({ "type": "retry", "afterMs": s.saturating_mul(1_000) }))
        }
        Recovery::Blocked => (false, true, Value::Null),
        Recovery::Verify => (false, false, json!({ "type": "verify_result" })),
    };
    let body = json!({
        "error": code,
        "message": message,
        "charged": false,
        "chargedCredits": "0",
        "retryable": retryable,
        "safeToRetry": safe,
        "success": false,
        "nextAction": next,
    });
    let mut resp = json(status, &body);
    resp.extensions_mut().insert(ErrorBody(body));
    resp
}

fn invalid_input(message: &str) -> Response {
    write_err(400, "invalid_input", message, Recovery::FixRequest)
}

fn account_ok(cfg: &SimConfig, account: &str) -> bool {
    let Some(configured) = cfg.account.as_deref() else {
        return true;
    };
    let given = normalize_handle(account);
    given == normalize_handle(configured) || given == account_id(configured).to_string()
}

async fn not_found(State(sim): State<Simulator>, method: Method, headers: HeaderMap) -> Response {
    let mut resp = err(404, "not_found", "Resource not found.");
    resp.extensions_mut()
        .insert(RouteTag { route: format!("{method} (unmatched)"), key_ok: key_ok(&sim.inner.cfg, &headers) });
    resp
}

async fn method_not_allowed(State(sim): State<Simulator>, method: Method, headers: HeaderMap) -> Response {
    let mut resp = err(405, "method_not_allowed", "Method not allowed.");
    resp.extensions_mut()
        .insert(RouteTag { route: format!("{method} (unmatched)"), key_ok: key_ok(&sim.inner.cfg, &headers) });
    resp
}

// ---------------------------------------------------------------------------------------------
// GET /x/dm/{userId}/history

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct WireMessage {
    id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    text: Option<String>,
    sender_id: String,
    receiver_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    created_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    media_url: Option<String>,
}

#[derive(Serialize)]
struct HistoryBody {
    messages: Vec<WireMessage>,
    has_next_page: bool,
    next_cursor: String,
}

async fn history(
    State(sim): State<Simulator>,
    path: Result<Path<String>, PathRejection>,
    query: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> Response {
    let Some(peer) = path.ok().and_then(|Path(p)| parse_peer(&p)) else {
        return err(400, "invalid_user_id", "Invalid user ID.");
    };
    let Ok(Query(q)) = query else {
        return err(400, "invalid_input", "Invalid query string.");
    };
    let param = |name: &str| q.get(name).map(|v| v.trim()).filter(|v| !v.is_empty());
    let Some(account) = param("account") else {
        return err(400, "account_required", ACCOUNT_REQUIRED);
    };
    let cfg = &sim.inner.cfg;
    if !account_ok(cfg, account) {
        return err(404, "account_not_found", ACCOUNT_NOT_FOUND);
    }
    if sim.inner.faults.forbidden(&peer.to_string()) {
        return err(403, "dm_not_permitted", DM_NOT_PERMITTED);
    }
    let has_cursor = q.get("cursor").is_some_and(|c| !c.is_empty());
    if let Some(resp) = sim.take_read_fault(SimProvider::Xquik, Some(&peer.to_string()), has_cursor) {
        return resp;
    }
    let world = &sim.inner.world;
    // `cursor` wins over the legacy `maxId`, which is inclusive like X's max_id.
    let start = match (q.get("cursor").filter(|c| !c.is_empty()), param("maxId")) {
        (Some(c), _) => match world.resolve_cursor(peer, c) {
            Ok(pos) => Start::At(pos),
            Err(_) => return err(400, "invalid_input", "invalid cursor"),
        },
        (None, Some(max_id)) => match parse_peer(max_id) {
            Some(id) => Start::At(Position::Below(id.saturating_add(1))),
            None => return err(400, "invalid_input", "invalid maxId"),
        },
        (None, None) => Start::Newest,
    };
    let spoiled = sim.inner.faults.spoil();
    if let Some(Spoiled::Malformed(kind)) = spoiled {
        tracing::debug!(?kind, "simulator: serving a malformed history body");
        return malformed(kind);
    }
    world.note_account(account);
    let page = match world.find(peer) {
        Some(conv) => world.page(&conv, start),
        None => Page { messages: Vec::new(), next_cursor: None },
    };
    let own = account_id(account).to_string();
    let peer_s = peer.to_string();
    let served = page.messages.len() as u64;
    let body = HistoryBody {
        has_next_page: page.next_cursor.is_some(),
        next_cursor: page.next_cursor.unwrap_or_default(),
        messages: page
            .messages
            .into_iter()
            .map(|m| {
                let (sender_id, receiver_id) =
                    if m.from_peer { (peer_s.clone(), own.clone()) } else { (own.clone(), peer_s.clone()) };
                WireMessage {
                    id: m.id.to_string(),
                    text: m.text,
                    sender_id,
                    receiver_id,
                    created_at: (!m.created_at_omitted).then(|| content::rfc3339_ms(m.ms)),
                    media_url: m.media_url,
                }
            })
            .collect(),
    };
    if spoiled == Some(Spoiled::Dropped) {
        tracing::debug!("simulator: dropping a history body mid-stream");
        let bytes = serde_json::to_vec(&body).unwrap_or_default();
        return faults::dropped(bytes, "application/json; charset=utf-8");
    }
    sim.inner.stats.served(served);
    json(200, &body)
}

fn malformed(kind: Malformed) -> Response {
    match kind {
        Malformed::InvalidJson => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/json; charset=utf-8")],
            "{\"messages\":[{\"id\":\"1893456789012345678\",\"senderId\":\"44196397\",\"text\":\"Hey, gre",
        )
            .into_response(),
        Malformed::WrongShape => json(200, &json!({ "data": [] })),
        Malformed::Html => faults::html_page(),
    }
}

// ---------------------------------------------------------------------------------------------
// GET /x/users/{id}

async fn user(State(sim): State<Simulator>, path: Result<Path<String>, PathRejection>) -> Response {
    let Ok(Path(id)) = path else {
        return err(400, "invalid_username", "Invalid username.");
    };
    let world = &sim.inner.world;
    let cfg = &sim.inner.cfg;
    let configured = cfg.account.as_deref().map(normalize_handle);
    let body = if let Some(peer) = parse_peer(&id) {
        match world.find(peer) {
            Some(conv) => user_json(&peer.to_string(), &conv.username, conv.can_dm),
            None if configured.as_deref().is_some_and(|a| account_id(a) == peer) => {
                let handle = configured.clone().unwrap_or_default();
                user_json(&peer.to_string(), &handle, None)
            }
            None => user_json(&peer.to_string(), &format!("user{peer}"), None),
        }
    } else {
        let valid = !id.is_empty() && id.len() <= 50 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
        if !valid {
            return err(400, "invalid_username", "Invalid username.");
        }
        if let Some(conv) = world.peer_by_username(&id) {
            user_json(&conv.peer.to_string(), &conv.username, conv.can_dm)
        } else if configured.as_deref() == Some(id.to_ascii_lowercase().as_str()) {
            user_json(&account_id(&id).to_string(), &id, None)
        } else {
            return err(404, "user_not_found", "User not found.");
        }
    };
    sim.inner.stats.credits(1);
    json(200, &body)
}

fn user_json(id: &str, username: &str, can_dm: Option<bool>) -> Value {
    let name = username
        .split('_')
        .filter(|w| !w.is_empty())
        .map(|w| {
            let mut cs = w.chars();
            match cs.next() {
                Some(c) => c.to_uppercase().chain(cs).collect::<String>(),
                None => String::new(),
            }
        })
        .collect::<Vec<_>>()
        .join(" ");
    let mut v = json!({ "id": id, "username": username, "name": name });
    if let (Some(can), Some(obj)) = (can_dm, v.as_object_mut()) {
        obj.insert("canDm".into(), Value::Bool(can));
    }
    v
}

// ---------------------------------------------------------------------------------------------
// Writes: idempotency and records

/// Why an `Idempotency-Key` header was refused.
#[derive(Clone, Copy, Debug)]
enum KeyProblem {
    Missing,
    Invalid,
}

impl KeyProblem {
    fn response(self) -> Response {
        match self {
            KeyProblem::Missing => write_err(
                400,
                "missing_idempotency_key",
                "Idempotency-Key header is required for write actions.",
                Recovery::FixRequest,
            ),
            KeyProblem::Invalid => write_err(
                400,
                "invalid_idempotency_key",
                "Idempotency-Key must be 1-255 printable ASCII characters without spaces.",
                Recovery::FixRequest,
            ),
        }
    }
}

/// Reads `Idempotency-Key`. With the write-action contract it is required and must match
/// `^[!-~]{1,255}$`; the legacy contract never looked at it.
fn idempotency_key(style: SendStyle, headers: &HeaderMap) -> Result<Option<String>, KeyProblem> {
    if style == SendStyle::Legacy {
        return Ok(None);
    }
    let raw = headers.get("idempotency-key").ok_or(KeyProblem::Missing)?;
    let bytes = raw.as_bytes();
    if bytes.is_empty() || bytes.len() > 255 || !bytes.iter().all(|b| (0x21..=0x7e).contains(b)) {
        return Err(KeyProblem::Invalid);
    }
    Ok(Some(String::from_utf8_lossy(bytes).into_owned()))
}

/// The answer stored under `key`, if any: a replay when the request is the same, a conflict
/// when it is not.
fn replay(writes: &Writes, key: Option<&str>, hash: &str) -> Option<Response> {
    let (stored_hash, body) = writes.by_key.get(key?)?;
    if stored_hash == hash {
        // The same write action as it is now: still pending (202), or confirmed since (200).
        let id = body.get("id").and_then(Value::as_str).unwrap_or_default();
        let current = writes.by_id.get(id).unwrap_or(body);
        Some(match writes.pending.get(id) {
            Some(p) => pending_response(current, p.retry_after),
            None => with_location(json(200, current), current),
        })
    } else {
        Some(write_err(
            409,
            "idempotency_conflict",
            "Idempotency-Key was already used with a different request.",
            Recovery::NewKey,
        ))
    }
}

/// 202 with `Location` and `Retry-After`, as a write that is still being confirmed answers.
fn pending_response(body: &Value, retry_after: u64) -> Response {
    let mut resp = with_location(json(202, body), body);
    resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(retry_after));
    resp
}

/// The `pending_confirmation` form of a completed write-action record: dispatched, not yet
/// confirmed, not charged, no result.
fn pending_record(done: &Value, retry_after: u64) -> Value {
    let mut v = done.clone();
    let after_ms = retry_after.saturating_mul(1_000);
    let status_url = done.get("statusUrl").cloned().unwrap_or(Value::Null);
    let planned = done.pointer("/billing/plannedCredits").cloned().unwrap_or(Value::Null);
    if let Some(obj) = v.as_object_mut() {
        for k in ["messageId", "mediaId", "mediaUrl", "completedAt", "confirmedAt"] {
            obj.remove(k);
        }
        for (k, val) in [
            ("status", json!("pending_confirmation")),
            ("terminal", json!(false)),
            ("success", json!(false)),
            ("result", Value::Null),
            ("charged", json!(false)),
            ("chargedCredits", json!("0")),
            (
                "billing",
                json!({ "status": "pending", "charged": false, "plannedCredits": planned, "chargedCredits": "0" }),
            ),
            ("pollAfterMs", json!(after_ms)),
            ("nextAction", json!({ "type": "poll", "url": status_url, "afterMs": after_ms })),
            ("error", json!("x_write_unconfirmed")),
            ("message", json!("X has not confirmed the write yet. Poll statusUrl after Retry-After.")),
        ] {
            obj.insert(k.to_string(), val);
        }
    }
    v
}

fn with_location(mut resp: Response, body: &Value) -> Response {
    if let Some(url) = body.get("statusUrl").and_then(Value::as_str) {
        if let Ok(v) = HeaderValue::from_str(url) {
            resp.headers_mut().insert(header::LOCATION, v);
        }
    }
    resp
}

/// What a completed write-action record needs beyond the common fields.
struct Completed<'a> {
    action: &'a str,
    hash: &'a str,
    payload: Value,
    account: &'a str,
    target: Option<&'a str>,
    result: Value,
    at_ms: u64,
    credits: u64,
    compat: Value,
}

fn record(id: &str, c: Completed<'_>) -> Value {
    let at = content::rfc3339_ms(c.at_ms);
    let credits = c.credits.to_string();
    let handle = normalize_handle(c.account);
    let mut v = json!({
        "object": "x_write_action",
        "id": id,
        "writeActionId": id,
        "action": c.action,
        "status": "success",
        "terminal": true,
        "retryable": false,
        "safeToRetry": false,
        "statusUrl": format!("/api/v1/x/write-actions/{id}"),
        "pollAfterMs": null,
        "charged": true,
        "chargedCredits": credits,
        "billing": {
            "status": "charged",
            "charged": true,
            "plannedCredits": credits,
            "chargedCredits": credits,
        },
        "request": { "hash": c.hash, "payload": c.payload },
        "requestHash": c.hash,
        "account": { "id": account_id(&handle).to_string(), "username": handle },
        "target": c.target.map(|t| json!({ "type": "user", "id": t })),
        "targetId": c.target,
        "result": c.result,
        "nextAction": null,
        "sendDispatched": true,
        "sendDispatchedAt": at,
        "createdAt": at,
        "updatedAt": at,
        "completedAt": at,
        "confirmedAt": at,
        "success": true,
    });
    if let (Some(obj), Value::Object(extra)) = (v.as_object_mut(), c.compat) {
        obj.extend(extra);
    }
    v
}

fn request_hash(parts: &[&str]) -> String {
    let mut h = 0u64;
    for p in parts {
        h = mix2(h, hash_bytes(p.as_bytes()));
    }
    hex64(h)
}

// ---------------------------------------------------------------------------------------------
// POST /x/dm/{userId}

async fn send_dm(
    State(sim): State<Simulator>,
    path: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let cfg = &sim.inner.cfg;
    let Some(peer) = path.ok().and_then(|Path(p)| parse_peer(&p)) else {
        return invalid_input("userId must be a numeric X user ID.");
    };
    let key = match idempotency_key(cfg.send_style, &headers) {
        Ok(k) => k,
        Err(problem) => return problem.response(),
    };
    let Ok(body) = body else {
        return invalid_input("Request body could not be read.");
    };
    let Ok(Value::Object(obj)) = serde_json::from_slice::<Value>(&body) else {
        return invalid_input("Request body must be a JSON object.");
    };
    if obj.contains_key("reply_to_message_id") {
        return invalid_input("reply_to_message_id is not supported for direct messages.");
    }
    let Some(account) =
        obj.get("account").and_then(Value::as_str).map(str::trim).filter(|a| !a.trim_start_matches('@').is_empty())
    else {
        return invalid_input("account is required.");
    };
    let Some(text) = obj.get("text").and_then(Value::as_str).filter(|t| !t.trim().is_empty()) else {
        return invalid_input("text is required and must not be empty.");
    };
    let media_id = match obj.get("media_ids") {
        None | Some(Value::Null) => None,
        Some(Value::Array(items)) if items.len() == 1 => match items[0].as_str().filter(|m| !m.is_empty()) {
            Some(m) => Some(m.to_string()),
            None => return invalid_input("media_ids must contain exactly 1 media ID."),
        },
        Some(_) => return invalid_input("media_ids must contain exactly 1 media ID."),
    };
    if text.chars().count() > MAX_TEXT_CHARS {
        return write_err(422, "x_content_too_long", "Message text is too long for X.", Recovery::FixRequest);
    }
    if !account_ok(cfg, account) {
        return err(404, "account_not_found", ACCOUNT_NOT_FOUND);
    }
    let peer_s = peer.to_string();
    let hash = request_hash(&["send_dm", &normalize_handle(account), &peer_s, text, media_id.as_deref().unwrap_or("")]);
    let mut payload = json!({ "text": text });
    if let (Some(m), Some(obj)) = (&media_id, payload.as_object_mut()) {
        obj.insert("media_ids".into(), json!([m]));
    }
    let ctx = write_faults::Ctx {
        style: cfg.send_style,
        contract: contract_opt_in(&headers),
        action: "send_dm",
        hash: &hash,
        payload,
        account,
        target: Some(&peer_s),
        credits: SEND_CREDITS,
        key: key.as_deref(),
    };

    // The lock is scoped to this block: nothing below may hold it across the await.
    let world = &sim.inner.world;
    let (status, body, normal, message_id, fault) = {
        let mut writes = lock(&sim.inner.xquik.writes);
        if let Some(resp) = replay(&writes, key.as_deref(), &hash) {
            return resp;
        }
        // Xquik's send contract words every refusal by X of a DM this way; `dm_not_permitted` (403)
        // is the history route's.
        if sim.inner.faults.forbidden(&peer_s) || sim.inner.faults.dm_not_allowed(&peer_s) {
            return write_err(
                422,
                "x_dm_not_allowed",
                "This user does not accept direct messages from this account.",
                Recovery::GiveUp,
            );
        }
        let fault = sim.take_write_fault(SimProvider::Xquik, SimWriteAction::Send, Some(&peer_s));
        if let Some(f) = fault.as_ref().filter(|f| !f.kind.performs()) {
            tracing::debug!(kind = ?f.kind, "simulator: refusing an Xquik send");
            return write_faults::refuse(&mut writes, f, ctx);
        }
        let media_url = media_id.as_ref().map(|m| {
            writes.media.get(m).cloned().unwrap_or_else(|| format!("https://pbs.twimg.com/dm_media/{m}/upload.jpg"))
        });
        let conv = world.find_or_create(peer);
        let msg = world.append_sent(&conv, Sent { text: text.to_string(), media_url });
        let message_id = msg.id.to_string();
        writes.seq += 1;
        let (status, body, normal) = match cfg.send_style {
            SendStyle::Legacy => {
                let body = json!({ "messageId": message_id, "success": true });
                let normal = write_faults::legacy_performed(fault.as_ref()).unwrap_or_else(|| json(200, &body));
                (normal.status().as_u16(), body, normal)
            }
            SendStyle::WriteAction => {
                let id = (100_000 + writes.seq).to_string();
                let rec = record(
                    &id,
                    Completed {
                        action: "send_dm",
                        hash: &hash,
                        payload: ctx.payload.clone(),
                        account,
                        target: Some(&peer_s),
                        result: json!({ "type": "direct_message", "id": message_id }),
                        at_ms: msg.ms,
                        credits: SEND_CREDITS,
                        compat: json!({ "messageId": message_id }),
                    },
                );
                // Dispatched either way (the message is in the world); a pending one is confirmed
                // only after enough status polls.
                let filed = write_faults::file_performed(
                    &mut writes,
                    &id,
                    rec,
                    fault.as_ref(),
                    || sim.inner.faults.pending(&peer_s),
                    &ctx,
                );
                let (status, body) = write_faults::status_and_body(&filed);
                let body = body.clone();
                (status, body, write_faults::answer(filed))
            }
        };
        (status, body, normal, message_id, fault)
    };
    world.note_account(account);
    sim.inner.stats.sent(if write_faults::charged(fault.as_ref()) { SEND_CREDITS } else { 0 });
    sim.log_write(SimWrite {
        route: SEND.to_string(),
        target: Some(peer_s.clone()),
        account: Some(normalize_handle(account)),
        idempotency_key: key.clone(),
        text: Some(text.to_string()),
        result_id: Some(message_id),
        fault: fault.as_ref().map(|f| f.kind),
        ..SimWrite::performed(SimProvider::Xquik, SimWriteAction::Send)
    });
    super::writes::answer(fault.as_ref(), status, &body, normal, |kind| {
        (kind == WriteFaultKind::NoData).then(write_faults::no_data)
    })
    .await
}

// ---------------------------------------------------------------------------------------------
// POST /x/media

enum Source {
    File { name: String, content_type: String, bytes: Bytes },
    Url(String),
}

async fn upload(State(sim): State<Simulator>, req: Request) -> Response {
    let cfg = &sim.inner.cfg;
    let key = match idempotency_key(cfg.send_style, req.headers()) {
        Ok(k) => k,
        Err(problem) => return problem.response(),
    };
    let contract = contract_opt_in(req.headers());
    let (account, source) = match read_upload(&sim, req).await {
        Ok(input) => input,
        Err(resp) => return resp,
    };
    if !account_ok(cfg, &account) {
        return err(404, "account_not_found", ACCOUNT_NOT_FOUND);
    }
    let (hash, ext, payload) = match &source {
        Source::File { name, content_type, bytes } => (
            request_hash(&["upload_media", &normalize_handle(&account), "file", name, &hash_bytes(bytes).to_string()]),
            media_ext(name, content_type, bytes),
            json!({ "file": { "name": name, "size": bytes.len(), "contentType": content_type } }),
        ),
        Source::Url(url) => (
            request_hash(&["upload_media", &normalize_handle(&account), "url", url]),
            media_ext(url, "", &[]),
            json!({ "url": url }),
        ),
    };

    let ctx = write_faults::Ctx {
        style: cfg.send_style,
        contract,
        action: "upload_media",
        hash: &hash,
        payload,
        account: &account,
        target: None,
        credits: UPLOAD_CREDITS,
        key: key.as_deref(),
    };

    // The lock is scoped to this block: nothing below may hold it across the await.
    let (status, body, normal, media_id, fault) = {
        let mut writes = lock(&sim.inner.xquik.writes);
        if let Some(resp) = replay(&writes, key.as_deref(), &hash) {
            return resp;
        }
        let fault = sim.take_write_fault(SimProvider::Xquik, SimWriteAction::Upload, None);
        if let Some(f) = fault.as_ref().filter(|f| !f.kind.performs()) {
            tracing::debug!(kind = ?f.kind, "simulator: refusing an Xquik upload");
            return write_faults::refuse(&mut writes, f, ctx);
        }
        writes.seq += 1;
        let seq = writes.seq;
        let at_ms = content::BASE_END_MS + 40 * 86_400_000 + seq * 1_000;
        let media_id = snowflake(at_ms, mix2(sim.inner.xquik.seed, seq)).to_string();
        let media_url = format!("https://media.xquik.com/uploads/{media_id}.{ext}");
        writes.media.insert(media_id.clone(), media_url.clone());
        let (status, body, normal) = match cfg.send_style {
            SendStyle::Legacy => {
                let body = json!({ "mediaId": media_id, "mediaUrl": media_url, "success": true });
                let normal = write_faults::legacy_performed(fault.as_ref()).unwrap_or_else(|| json(200, &body));
                (normal.status().as_u16(), body, normal)
            }
            SendStyle::WriteAction => {
                let id = (100_000 + seq).to_string();
                let rec = record(
                    &id,
                    Completed {
                        action: "upload_media",
                        hash: &hash,
                        payload: ctx.payload.clone(),
                        account: &account,
                        target: None,
                        result: json!({ "type": "media", "id": media_id }),
                        at_ms,
                        credits: UPLOAD_CREDITS,
                        compat: json!({ "mediaId": media_id, "mediaUrl": media_url }),
                    },
                );
                let filed = write_faults::file_performed(&mut writes, &id, rec, fault.as_ref(), || None, &ctx);
                let (status, body) = write_faults::status_and_body(&filed);
                let body = body.clone();
                (status, body, write_faults::answer(filed))
            }
        };
        (status, body, normal, media_id, fault)
    };
    sim.inner.stats.uploaded(if write_faults::charged(fault.as_ref()) { UPLOAD_CREDITS } else { 0 });
    sim.log_write(SimWrite {
        route: MEDIA.to_string(),
        account: Some(normalize_handle(&account)),
        idempotency_key: key.clone(),
        result_id: Some(media_id),
        fault: fault.as_ref().map(|f| f.kind),
        ..SimWrite::performed(SimProvider::Xquik, SimWriteAction::Upload)
    });
    super::writes::answer(fault.as_ref(), status, &body, normal, |kind| {
        (kind == WriteFaultKind::NoData).then(write_faults::no_data)
    })
    .await
}

/// Reads either form of upload: multipart `account` + `file`, or JSON `{account, url}`.
async fn read_upload(sim: &Simulator, req: Request) -> Result<(String, Source), Response> {
    let content_type =
        req.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or_default().to_ascii_lowercase();
    if content_type.starts_with("multipart/form-data") {
        let mut form =
            Multipart::from_request(req, sim).await.map_err(|_| invalid_input("Malformed multipart body."))?;
        let (mut account, mut file) = (None, None);
        loop {
            let field = match form.next_field().await {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(_) => return Err(invalid_input("Malformed multipart body.")),
            };
            match field.name().unwrap_or_default() {
                "account" => {
                    let text = field.text().await.map_err(|_| invalid_input("Malformed multipart body."))?;
                    account = Some(text.trim().to_string());
                }
                "file" => {
                    let name = field.file_name().unwrap_or("upload").to_string();
                    let ct = field.content_type().unwrap_or_default().to_string();
                    let bytes = field
                        .bytes()
                        .await
                        .map_err(|_| invalid_input("Malformed multipart body or file too large."))?;
                    file = Some(Source::File { name, content_type: ct, bytes });
                }
                _ => {}
            }
        }
        let account = account
            .filter(|a| !a.trim_start_matches('@').is_empty())
            .ok_or_else(|| invalid_input("account is required."))?;
        match file {
            Some(Source::File { bytes, .. }) if bytes.is_empty() => Err(invalid_input("file must not be empty.")),
            Some(f) => Ok((account, f)),
            None => Err(invalid_input("file is required.")),
        }
    } else if content_type.starts_with("application/json") || content_type.is_empty() {
        let body = axum::body::to_bytes(req.into_body(), UPLOAD_LIMIT)
            .await
            .map_err(|_| invalid_input("Request body could not be read."))?;
        let Ok(Value::Object(obj)) = serde_json::from_slice::<Value>(&body) else {
            return Err(invalid_input("Request body must be a JSON object."));
        };
        let account = obj
            .get("account")
            .and_then(Value::as_str)
            .map(str::trim)
            .filter(|a| !a.trim_start_matches('@').is_empty())
            .ok_or_else(|| invalid_input("account is required."))?;
        let url = obj
            .get("url")
            .and_then(Value::as_str)
            .map(str::trim)
            .filter(|u| {
                // `get` rather than slicing: a multibyte character at byte 8 must not panic.
                u.get(..8).is_some_and(|s| s.eq_ignore_ascii_case("https://"))
                    && u.get(8..).is_some_and(|h| !h.is_empty() && !h.starts_with('/'))
                    && !u.contains(char::is_whitespace)
            })
            .ok_or_else(|| invalid_input("url must be a public HTTPS URL."))?;
        Ok((account.to_string(), Source::Url(url.to_string())))
    } else {
        Err(invalid_input("Send multipart/form-data with account and file, or JSON with account and url."))
    }
}

/// Picks the public URL's extension from the name, the declared type, or the magic bytes;
/// unknown content is treated as JPEG, which is what most clients upload.
fn media_ext(name: &str, content_type: &str, bytes: &[u8]) -> &'static str {
    let by_ext = |e: &str| match e {
        "png" => Some("png"),
        "jpg" | "jpeg" => Some("jpg"),
        "gif" => Some("gif"),
        "webp" => Some("webp"),
        "mp4" => Some("mp4"),
        "avif" => Some("avif"),
        _ => None,
    };
    let path = name.split(['?', '#']).next().unwrap_or_default();
    if let Some(ext) = path.rsplit_once('.').and_then(|(_, e)| by_ext(&e.to_ascii_lowercase())) {
        return ext;
    }
    if let Some(ext) = content_type.split_once('/').and_then(|(_, sub)| by_ext(&sub.to_ascii_lowercase())) {
        return ext;
    }
    match bytes {
        [0x89, b'P', b'N', b'G', ..] => "png",
        [b'G', b'I', b'F', b'8', ..] => "gif",
        [b'R', b'I', b'F', b'F', _, _, _, _, b'W', b'E', b'B', b'P', ..] => "webp",
        [_, _, _, _, b'f', b't', b'y', b'p', b'a', b'v', b'i', b'f', ..] => "avif",
        [_, _, _, _, b'f', b't', b'y', b'p', ..] => "mp4",
        _ => "jpg",
    }
}

// ---------------------------------------------------------------------------------------------
// GET /x/write-actions/{id}

async fn write_action(State(sim): State<Simulator>, path: Result<Path<String>, PathRejection>) -> Response {
    let Ok(Path(id)) = path else {
        return err(404, "not_found", "Resource not found.");
    };
    let mut writes = lock(&sim.inner.xquik.writes);
    // Each poll of a pending write brings it closer to confirmation.
    if let Some(p) = writes.pending.get_mut(&id) {
        p.polls_left = p.polls_left.saturating_sub(1);
        if p.polls_left > 0 {
            let retry_after = p.retry_after;
            let current = writes.by_id.get(&id).cloned().unwrap_or(Value::Null);
            return pending_response(&current, retry_after);
        }
        if let Some(done) = writes.pending.remove(&id) {
            writes.by_id.insert(id.clone(), done.done);
        }
    }
    match writes.by_id.get(&id).cloned() {
        Some(rec) => with_location(json(200, &rec), &rec),
        None => err(404, "not_found", "Resource not found."),
    }
}

mod write_faults;

#[cfg(test)]
mod tests;
#[cfg(test)]
mod write_tests;
