//! The official X API v2 DM routes under `/2/`, over the same world as the other providers:
//! conversation events (1:1 and group, with join and leave events), the account's whole event stream
//! (`GET /2/dm_events`, in `inbox`), user lookup, sends, new groups, one event's lookup and deletion,
//! media upload for DMs, and the OAuth 2.0 endpoints that issue the user tokens (in `oauth`).
//!
//! What makes it X rather than Xquik: a bearer token; pages of events newest first (at most `max_results`,
//! and at most the conversation's page size, so every provider pages alike in tests) with
//! base32hex `next_token`s (absent at the end); fields only when asked for (`dm_event.fields`,
//! `expansions`, `media.fields`), media through `includes.media`; problem+json errors (and the legacy
//! `errors[]` body for rate limits); `x-rate-limit-limit/remaining/reset` headers on every response and a
//! 429 once a window is spent ([`SimConfig::x_rate_limit`]); an optional 30-day horizon
//! ([`SimConfig::x_history_days`]); and an optional strict field list ([`SimConfig::x_strict_fields`]).
//! Check order: token (401, or 403 for an OAuth token without the route's scopes), rate-limit window
//! (429), injected faults, then the route; write routes then take a write fault (`write_faults`) before or
//! after performing the write. The OAuth endpoints themselves are never faulted or limited.

// Helpers answer early with the error response itself; boxing it would only add noise.
#![allow(clippy::result_large_err)]

pub(super) mod groups;
mod inbox;
pub(crate) mod oauth;
mod write_faults;

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, FromRequest, Multipart, Path, Query, Request, State};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::middleware::{from_fn_with_state, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use base64::Engine as _;
use serde_json::{json, Map, Value};

use groups::{Group, Groups, Kind};
pub use groups::{SimEvent, SimGroup};
pub use oauth::{OAuthStats, OAuthTokens, SimOAuthClient};

use super::clock::EventClock;
use super::content::{self, account_id, hash_bytes, mix2, snowflake, BASE_END_MS};
use super::faults::{self, Early, Malformed, Spoiled};
use super::http::{json, RouteTag};
use super::world::{parse_peer, Message, Sent, Start};
use super::{lock, SimConfig, SimProvider, SimWrite, SimWriteAction, Simulator, WriteFault};

const HISTORY_WITH: &str = "GET /2/dm_conversations/with/{participant_id}/dm_events";
const HISTORY_CONV: &str = "GET /2/dm_conversations/{dm_conversation_id}/dm_events";
const EVENT: &str = "GET /2/dm_events/{event_id}";
const DELETE: &str = "DELETE /2/dm_events/{event_id}";
const SEND_WITH: &str = "POST /2/dm_conversations/with/{participant_id}/messages";
const SEND_CONV: &str = "POST /2/dm_conversations/{dm_conversation_id}/messages";
const CREATE_GROUP: &str = "POST /2/dm_conversations";
const UPLOAD: &str = "POST /2/media/upload";
const UPLOAD_STATUS: &str = "GET /2/media/upload";
const USER_BY_ID: &str = "GET /2/users/{id}";
const USER_BY_NAME: &str = "GET /2/users/by/username/{username}";
const USER_ME: &str = "GET /2/users/me";

const PROBLEMS: &str = "https://api.x.com/2/problems/";
const DAY_MS: u64 = 86_400_000;
const UPLOAD_LIMIT: usize = 16 * 1024 * 1024;
/// `dm_event.fields` every version of the spec allows, and the two the v2.167 enum dropped.
const FIELDS: [&str; 9] = [
    "attachments",
    "created_at",
    "dm_conversation_id",
    "entities",
    "event_type",
    "id",
    "text",
    "referenced_tweets",
    "referenced_posts",
];
const DROPPED_FIELDS: [&str; 2] = ["sender_id", "participant_ids"];
const EXPANSIONS: [&str; 5] =
    ["attachments.media_keys", "sender_id", "participant_ids", "referenced_tweets.id", "referenced_posts"];
const MEDIA_CATEGORIES: [&str; 7] =
    ["tweet_image", "tweet_video", "tweet_gif", "dm_image", "dm_video", "dm_gif", "subtitles"];

/// The rate-limit families X counts separately per user.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Bucket {
    DmRead,
    DmWrite,
    Delete,
    Media,
    Users,
}

impl Bucket {
    /// The name [`Stats::rate_limited_by_family`](super::Stats::rate_limited_by_family) books it under.
    fn name(self) -> &'static str {
        match self {
            Bucket::DmRead => "x_api_v2_dm_read",
            Bucket::DmWrite => "x_api_v2_dm_write",
            Bucket::Delete => "x_api_v2_delete",
            Bucket::Media => "x_api_v2_media",
            Bucket::Users => "x_api_v2_users",
        }
    }
}

/// A route's template and family, per method (one path can carry two methods).
struct Spec {
    method: &'static str,
    route: &'static str,
    bucket: Bucket,
}

/// X-only state: rate-limit windows, group conversations, deletions, uploads.
pub(crate) struct XState {
    seed: u64,
    /// Group conversations; GetXAPI serves their messages too.
    pub(super) groups: Groups,
    /// (hash of the token, family) → the current window.
    windows: Mutex<HashMap<(u64, Bucket), Window>>,
    /// Events deleted for the account: gone from its history and lookups.
    deleted: Mutex<HashSet<u64>>,
    /// Uploaded media ID → the URL a DM that attaches it shows.
    media: Mutex<HashMap<String, String>>,
    uploads: AtomicU64,
    /// The authorization server: codes, tokens, their checks.
    oauth: oauth::OAuth,
}

struct Window {
    /// Unix ms at which the window resets: a whole second, which is what the header can say.
    end_ms: u64,
    used: u32,
}

/// What one request did to its window.
#[derive(Clone, Copy, Debug)]
struct Verdict {
    limit: u32,
    remaining: u32,
    reset_secs: u64,
    allowed: bool,
}

impl XState {
    pub(crate) fn new(cfg: &SimConfig, clock: Arc<EventClock>) -> XState {
        XState {
            seed: cfg.seed,
            groups: Groups::new(cfg.seed, &cfg.groups, clock),
            windows: Mutex::new(HashMap::new()),
            deleted: Mutex::new(HashSet::new()),
            media: Mutex::new(HashMap::new()),
            uploads: AtomicU64::new(0),
            oauth: oauth::OAuth::new(cfg),
        }
    }

    /// Counts a request against its window (fixed windows that start with their first request).
    fn take(&self, token: &str, bucket: Bucket, limit: Option<(u32, u64)>) -> Option<Verdict> {
        let (n, secs) = limit?;
        let limit = match bucket {
            Bucket::DmRead | Bucket::DmWrite => n,
            Bucket::Delete | Bucket::Media | Bucket::Users => n.saturating_mul(20),
        }
        .max(1);
        let now = now_ms();
        let mut windows = lock(&self.windows);
        let w = windows.entry((hash_bytes(token.as_bytes()), bucket)).or_insert(Window { end_ms: 0, used: 0 });
        if now >= w.end_ms {
            w.end_ms = (now + secs.max(1) * 1_000).div_ceil(1_000) * 1_000;
            w.used = 0;
        }
        let allowed = w.used < limit;
        if allowed {
            w.used += 1;
        }
        Some(Verdict { limit, remaining: limit - w.used, reset_secs: w.end_ms / 1_000, allowed })
    }

    fn deleted(&self, id: u64) -> bool {
        lock(&self.deleted).contains(&id)
    }

    fn media_url(&self, media_id: &str) -> String {
        lock(&self.media)
            .get(media_id)
            .cloned()
            .unwrap_or_else(|| format!("https://pbs.twimg.com/dm_media/{media_id}/upload.jpg"))
    }
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// Ground truth and helpers for tests.
impl Simulator {
    /// The numeric user ID X API v2 and GetXAPI requests act as: the configured account's, else the
    /// account ground truth is rendered for.
    pub fn x_user_id(&self) -> String {
        x_user(self).to_string()
    }

    /// A group's events, newest first, as the account sees them (deleted ones included).
    pub fn group_events(&self, conversation_id: &str) -> Vec<SimEvent> {
        let me = x_user(self);
        let Some(group) = conversation_id.trim().parse().ok().and_then(|id| self.inner.x_api.groups.get(id)) else {
            return Vec::new();
        };
        group.all_newest_first().iter().map(|e| e.truth(me)).collect()
    }

    /// Event IDs deleted through `DELETE /2/dm_events/{event_id}`, in ID order.
    pub fn deleted_events(&self) -> Vec<String> {
        let mut ids: Vec<u64> = lock(&self.inner.x_api.deleted).iter().copied().collect();
        ids.sort_unstable();
        ids.into_iter().map(|i| i.to_string()).collect()
    }
}

fn x_user(sim: &Simulator) -> u64 {
    account_id(&sim.inner.world.truth_account())
}

pub(crate) fn routes(sim: Simulator) -> Router {
    let guard = |specs: &'static [Spec]| from_fn_with_state((sim.clone(), specs), guard);
    const fn spec(method: &'static str, route: &'static str, bucket: Bucket) -> Spec {
        Spec { method, route, bucket }
    }
    static HISTORY_WITH_S: [Spec; 1] = [spec("GET", HISTORY_WITH, Bucket::DmRead)];
    static HISTORY_CONV_S: [Spec; 1] = [spec("GET", HISTORY_CONV, Bucket::DmRead)];
    static EVENT_S: [Spec; 2] = [spec("GET", EVENT, Bucket::DmRead), spec("DELETE", DELETE, Bucket::Delete)];
    static SEND_WITH_S: [Spec; 1] = [spec("POST", SEND_WITH, Bucket::DmWrite)];
    static SEND_CONV_S: [Spec; 1] = [spec("POST", SEND_CONV, Bucket::DmWrite)];
    static CREATE_S: [Spec; 1] = [spec("POST", CREATE_GROUP, Bucket::DmWrite)];
    static UPLOAD_S: [Spec; 2] = [spec("POST", UPLOAD, Bucket::Media), spec("GET", UPLOAD_STATUS, Bucket::Media)];
    static USER_ID_S: [Spec; 1] = [spec("GET", USER_BY_ID, Bucket::Users)];
    static USER_NAME_S: [Spec; 1] = [spec("GET", USER_BY_NAME, Bucket::Users)];
    static USER_ME_S: [Spec; 1] = [spec("GET", USER_ME, Bucket::Users)];
    static INBOX_S: [Spec; 1] = [spec("GET", inbox::ROUTE, Bucket::DmRead)];
    Router::new()
        .route("/2/dm_events", get(inbox::dm_events).route_layer(guard(&INBOX_S)))
        .route(
            "/2/dm_conversations/with/{participant_id}/dm_events",
            get(history_with).route_layer(guard(&HISTORY_WITH_S)),
        )
        .route("/2/dm_conversations/{id}/dm_events", get(history_conv).route_layer(guard(&HISTORY_CONV_S)))
        .route("/2/dm_conversations/with/{participant_id}/messages", post(send_with).route_layer(guard(&SEND_WITH_S)))
        .route("/2/dm_conversations/{id}/messages", post(send_conv).route_layer(guard(&SEND_CONV_S)))
        .route("/2/dm_conversations", post(create_group).route_layer(guard(&CREATE_S)))
        .route("/2/dm_events/{event_id}", get(event).delete(delete_event).route_layer(guard(&EVENT_S)))
        .route(
            "/2/media/upload",
            post(upload).get(upload_status).layer(DefaultBodyLimit::max(UPLOAD_LIMIT)).route_layer(guard(&UPLOAD_S)),
        )
        .route("/2/users/by/username/{username}", get(user_by_name).route_layer(guard(&USER_NAME_S)))
        .route("/2/users/me", get(user_me).route_layer(guard(&USER_ME_S)))
        .route("/2/users/{id}", get(user_by_id).route_layer(guard(&USER_ID_S)))
        .merge(oauth::routes())
        .layer(from_fn_with_state(sim.clone(), super::http::book))
        .with_state(sim)
}

// ---------------------------------------------------------------------------------------------
// Auth, rate limits, faults, errors

fn bearer(headers: &HeaderMap) -> Option<String> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim().to_string())
}

async fn guard(State((sim, specs)): State<(Simulator, &'static [Spec])>, req: Request, next: Next) -> Response {
    let spec = specs.iter().find(|s| s.method == req.method().as_str()).unwrap_or(&specs[0]);
    let cfg = &sim.inner.cfg;
    let token = bearer(req.headers()).unwrap_or_default();
    // The window a request counts against: the user's for an issued OAuth token, else the token's.
    let (window, refusal) = match oauth::admit(&sim, &token, spec.bucket) {
        Ok(window) => (window, None),
        Err(resp) => (String::new(), Some(resp)),
    };
    let key_ok = refusal.is_none();
    let resp = if let Some(refusal) = refusal {
        refusal
    } else {
        let verdict = sim.inner.x_api.take(&window, spec.bucket, cfg.x_rate_limit);
        let mut resp = match verdict {
            Some(v) if !v.allowed => {
                tracing::debug!(route = spec.route, "simulator: X rate-limit window spent");
                sim.inner.stats.rate_limited(spec.bucket.name());
                problem(429, &format!("{PROBLEMS}rate-limit-exceeded"), "Too Many Requests", "Too Many Requests")
            }
            _ => match sim.inner.faults.early() {
                Some(fault) => {
                    tracing::debug!(route = spec.route, ?fault, "simulator: injecting a fault");
                    early(fault, verdict.map(|v| v.limit))
                }
                None => next.run(req).await,
            },
        };
        if let Some(v) = verdict {
            let h = resp.headers_mut();
            for (name, value) in [
                ("x-rate-limit-limit", u64::from(v.limit)),
                ("x-rate-limit-remaining", u64::from(v.remaining)),
                ("x-rate-limit-reset", v.reset_secs),
            ] {
                h.entry(HeaderName::from_static(name)).or_insert(HeaderValue::from(value));
            }
        }
        resp
    };
    let mut resp = resp;
    resp.extensions_mut().insert(RouteTag { route: spec.route.to_string(), key_ok });
    resp
}

/// An injected fault, worded as X words it: the documented legacy 429 body with its headers, or a
/// problem for a 502/503.
fn early(fault: Early, limit: Option<u32>) -> Response {
    match fault {
        Early::RateLimited { retry_after } => {
            let mut resp = json(429, &json!({ "errors": [{ "code": 88, "message": "Rate limit exceeded" }] }));
            let h = resp.headers_mut();
            h.insert("x-rate-limit-limit", HeaderValue::from(limit.unwrap_or(15)));
            h.insert("x-rate-limit-remaining", HeaderValue::from(0));
            h.insert("x-rate-limit-reset", HeaderValue::from((now_ms() / 1_000).saturating_add(retry_after.max(1))));
            resp
        }
        Early::Unavailable { status, .. } => {
            let title = if status == 502 { "Bad Gateway" } else { "Service Unavailable" };
            problem(status, "about:blank", title, title)
        }
    }
}

/// An RFC 7807 problem with X's field order.
fn problem(status: u16, kind: &str, title: &str, detail: &str) -> Response {
    problem_about(status, kind, title, detail, None)
}

/// A problem about one resource: `resource_type` (required by the spec's resource-not-found and
/// not-authorized-for-resource problems), `resource_id`, and the `parameter` and `value` that
/// named it.
struct About<'a> {
    resource_type: &'a str,
    parameter: &'a str,
    id: &'a str,
}

fn problem_about(status: u16, kind: &str, title: &str, detail: &str, about: Option<About<'_>>) -> Response {
    let code = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut body = json!({ "title": title, "detail": detail, "type": kind, "status": status });
    if let (Some(a), Some(obj)) = (about, body.as_object_mut()) {
        obj.insert("resource_type".into(), json!(a.resource_type));
        obj.insert("resource_id".into(), json!(a.id));
        obj.insert("parameter".into(), json!(a.parameter));
        obj.insert("value".into(), json!(a.id));
    }
    (code, [(header::CONTENT_TYPE, "application/problem+json")], body.to_string()).into_response()
}

/// X's answer to a `pagination_token` it does not accept: an invalid-request problem whose `errors[]`
/// names the parameter.
pub(crate) fn invalid_token() -> Response {
    let body = json!({
        "errors": [{
            "parameters": {"pagination_token": ["(rejected)"]},
            "message": "The `pagination_token` query parameter value [(rejected)] is not valid"
        }],
        "title": "Invalid Request",
        "detail": "One or more parameters to your request was invalid.",
        "type": format!("{PROBLEMS}invalid-request")
    });
    (StatusCode::BAD_REQUEST, [(header::CONTENT_TYPE, "application/problem+json")], body.to_string()).into_response()
}

fn invalid(detail: &str) -> Response {
    problem(400, &format!("{PROBLEMS}invalid-request"), "Invalid Request", detail)
}

/// 403 not-authorized-for-resource about the resource `parameter` named.
fn forbidden(resource_type: &str, parameter: &str, id: &str, detail: &str) -> Response {
    problem_about(
        403,
        &format!("{PROBLEMS}not-authorized-for-resource"),
        "Forbidden",
        detail,
        Some(About { resource_type, parameter, id }),
    )
}

/// 404 resource-not-found with every field the spec's problem schema lists.
fn not_found(resource_type: &str, parameter: &str, id: &str) -> Response {
    problem_about(
        404,
        &format!("{PROBLEMS}resource-not-found"),
        "Not Found Error",
        &format!("Could not find {resource_type} with {parameter}: [{id}]."),
        Some(About { resource_type, parameter, id }),
    )
}

/// A 200 that carries only a resource-not-found problem, as X answers lookups of missing things.
fn missing(kind: &str, parameter: &str, id: &str) -> Response {
    json(
        200,
        &json!({ "errors": [{
            "value": id, "detail": format!("Could not find {kind} with {parameter}: [{id}]."),
            "title": "Not Found Error", "resource_type": kind, "parameter": parameter, "resource_id": id,
            "type": format!("{PROBLEMS}resource-not-found"),
        }] }),
    )
}

/// The 400 X gives for a query parameter value outside its enum.
fn bad_value(parameter: &str, value: &str, allowed: &[&str]) -> Response {
    json(
        400,
        &json!({
            "errors": [{
                "parameters": { parameter: [value] },
                "message": format!("The `{parameter}` query parameter value [{value}] is not one of [{}]", allowed.join(",")),
            }],
            "title": "Invalid Request",
            "detail": "One or more parameters to your request was invalid.",
            "type": format!("{PROBLEMS}invalid-request"),
        }),
    )
}

// ---------------------------------------------------------------------------------------------
// Pagination tokens: base32hex (0-9, A-V) of our own position, like X's opaque tokens.

const B32: &[u8; 32] = b"0123456789ABCDEFGHIJKLMNOPQRSTUV";

fn b32_encode(bytes: &[u8]) -> String {
    let (mut out, mut acc, mut bits) = (String::new(), 0u32, 0u32);
    for b in bytes {
        acc = (acc << 8) | u32::from(*b);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(B32[((acc >> bits) & 31) as usize] as char);
        }
    }
    if bits > 0 {
        out.push(B32[((acc << (5 - bits)) & 31) as usize] as char);
    }
    out
}

fn b32_decode(text: &str) -> Option<Vec<u8>> {
    let (mut out, mut acc, mut bits) = (Vec::new(), 0u32, 0u32);
    for c in text.bytes() {
        let v = B32.iter().position(|&b| b == c.to_ascii_uppercase())? as u32;
        acc = (acc << 5) | v;
        bits += 5;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
        acc &= (1 << bits) - 1;
    }
    Some(out)
}

/// Where a page starts.
#[derive(Debug, PartialEq, Eq)]
enum Token {
    /// A world cursor of a 1:1 conversation.
    World(String),
    /// An offset into a group's newest-first events.
    Group(usize),
}

fn encode_token(t: &Token) -> String {
    let raw = match t {
        Token::World(c) => format!("w{c}"),
        Token::Group(off) => format!("g{off:015}"),
    };
    b32_encode(raw.as_bytes())
}

fn decode_token(text: &str) -> Option<Token> {
    if text.len() < 16 {
        return None;
    }
    let raw = String::from_utf8(b32_decode(text)?).ok()?;
    match raw.split_at_checked(1)? {
        ("w", c) if !c.is_empty() => Some(Token::World(c.to_string())),
        ("g", n) => n.parse().ok().map(Token::Group),
        _ => None,
    }
}

// ---------------------------------------------------------------------------------------------
// Event lists

/// The fields, expansions and media fields a request asked for.
struct Shape {
    fields: BTreeSet<String>,
    expansions: BTreeSet<String>,
    media_fields: BTreeSet<String>,
    event_types: Option<BTreeSet<String>>,
    /// `created_at` as Unix ms (`x_created_at_epoch_ms`).
    epoch_ms: bool,
}

impl Shape {
    fn parse(q: &HashMap<String, String>, strict: bool) -> Result<Shape, Response> {
        let list = |name: &str| -> BTreeSet<String> {
            q.get(name)
                .map(|v| v.split(',').map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect())
                .unwrap_or_default()
        };
        let mut allowed: Vec<&str> = FIELDS.to_vec();
        if !strict {
            allowed.extend(DROPPED_FIELDS);
        }
        allowed.sort_unstable();
        let fields = list("dm_event.fields");
        if let Some(bad) = fields.iter().find(|f| !allowed.contains(&f.as_str())) {
            return Err(bad_value("dm_event.fields", bad, &allowed));
        }
        let expansions = list("expansions");
        if let Some(bad) = expansions.iter().find(|e| !EXPANSIONS.contains(&e.as_str())) {
            return Err(bad_value("expansions", bad, &EXPANSIONS));
        }
        let event_types = q.contains_key("event_types").then(|| list("event_types"));
        Ok(Shape { fields, expansions, media_fields: list("media.fields"), event_types, epoch_ms: false })
    }

    fn has(&self, field: &str) -> bool {
        self.fields.contains(field)
    }
}

/// An event ready to be shaped: from a 1:1 conversation or a group.
struct Ev {
    id: u64,
    ms: u64,
    kind: Kind,
    sender: Option<u64>,
    participants: Vec<u64>,
    text: Option<String>,
    media_url: Option<String>,
    conversation_id: String,
}

impl Ev {
    fn from_message(m: Message, me: u64, peer: u64) -> Ev {
        Ev {
            id: m.id,
            ms: m.ms,
            kind: Kind::Message,
            sender: Some(if m.from_peer { peer } else { me }),
            participants: Vec::new(),
            text: m.text,
            media_url: m.media_url,
            conversation_id: one_to_one(me, peer),
        }
    }

    fn from_group(e: groups::Event, me: u64, group: u64) -> Ev {
        Ev {
            id: e.id,
            ms: e.ms,
            kind: e.kind,
            sender: e.sender.map(|s| s.id(me)),
            participants: e.participants,
            text: e.text,
            media_url: e.media_url,
            conversation_id: group.to_string(),
        }
    }

    /// The media key and type X would give this event's media, from its URL's shape.
    fn media(&self) -> Option<(String, &'static str)> {
        let url = self.media_url.as_deref()?;
        let mut parts = url.trim_start_matches("https://").split('/').skip(1);
        let kind = parts.next().unwrap_or_default();
        let id = parts.next().filter(|s| s.bytes().all(|b| b.is_ascii_digit()) && !s.is_empty());
        let id = id.map(str::to_string).unwrap_or_else(|| (hash_bytes(url.as_bytes()) >> 4).to_string());
        Some(match kind {
            "dm_gif" => (format!("16_{id}"), "animated_gif"),
            "dm_video" => (format!("13_{id}"), "video"),
            _ => (format!("3_{id}"), "photo"),
        })
    }

    fn to_json(&self, shape: &Shape) -> Value {
        let mut o = Map::new();
        o.insert("id".into(), json!(self.id.to_string()));
        o.insert("event_type".into(), json!(self.kind.event_type()));
        if self.kind == Kind::Message {
            if let Some(t) = &self.text {
                o.insert("text".into(), json!(t));
            }
        } else {
            // Join and leave events carry their participants by default.
            o.insert("participant_ids".into(), json!(self.participants.iter().map(u64::to_string).collect::<Vec<_>>()));
        }
        if shape.has("created_at") {
            let at = if shape.epoch_ms { json!(self.ms) } else { json!(content::rfc3339_ms(self.ms)) };
            o.insert("created_at".into(), at);
        }
        if shape.has("dm_conversation_id") {
            o.insert("dm_conversation_id".into(), json!(self.conversation_id));
        }
        if let Some(s) = self.sender.filter(|_| shape.has("sender_id") || shape.expansions.contains("sender_id")) {
            o.insert("sender_id".into(), json!(s.to_string()));
        }
        if let Some((key, _)) = self.media() {
            if shape.has("attachments") || shape.expansions.contains("attachments.media_keys") {
                o.insert("attachments".into(), json!({ "media_keys": [key], "card_ids": [] }));
            }
        }
        Value::Object(o)
    }

    fn media_json(&self, shape: &Shape) -> Option<Value> {
        let (key, kind) = self.media()?;
        let url = self.media_url.clone()?;
        let mut o = Map::new();
        o.insert("media_key".into(), json!(key));
        o.insert("type".into(), json!(kind));
        // Photos have a `url`; videos and GIFs only a preview image.
        let field = if kind == "photo" { "url" } else { "preview_image_url" };
        if shape.media_fields.contains(field) {
            o.insert(field.into(), json!(url));
        }
        Some(Value::Object(o))
    }
}

fn one_to_one(a: u64, b: u64) -> String {
    format!("{}-{}", a.min(b), a.max(b))
}

/// A page of events as X shapes it: `data` (left out when empty), `includes`, `meta`.
fn events_body(events: &[Ev], shape: &Shape, next: Option<String>) -> Value {
    let mut body = Map::new();
    if !events.is_empty() {
        body.insert("data".into(), Value::Array(events.iter().map(|e| e.to_json(shape)).collect()));
    }
    let mut includes = Map::new();
    if shape.expansions.contains("attachments.media_keys") {
        let media: Vec<Value> = events.iter().filter_map(|e| e.media_json(shape)).collect();
        if !media.is_empty() {
            includes.insert("media".into(), Value::Array(media));
        }
    }
    if shape.expansions.contains("sender_id") || shape.expansions.contains("participant_ids") {
        let ids: BTreeSet<u64> =
            events.iter().flat_map(|e| e.sender.into_iter().chain(e.participants.iter().copied())).collect();
        if !ids.is_empty() {
            let users: Vec<Value> = ids
                .iter()
                .map(
                    |id| json!({ "id": id.to_string(), "name": format!("User {id}"), "username": format!("user{id}") }),
                )
                .collect();
            includes.insert("users".into(), Value::Array(users));
        }
    }
    if !includes.is_empty() {
        body.insert("includes".into(), Value::Object(includes));
    }
    let mut meta = Map::new();
    meta.insert("result_count".into(), json!(events.len()));
    if let Some(t) = next {
        meta.insert("next_token".into(), json!(t));
    }
    body.insert("meta".into(), Value::Object(meta));
    Value::Object(body)
}

fn malformed(kind: Malformed) -> Response {
    match kind {
        Malformed::InvalidJson => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/json; charset=utf-8")],
            "{\"data\":[{\"id\":\"1893456789012345678\",\"event_type\":\"MessageCreate\",\"text\":\"Hey, gre",
        )
            .into_response(),
        Malformed::WrongShape => json(200, &json!({ "messages": [] })),
        Malformed::Html => faults::html_page(),
    }
}

// ---------------------------------------------------------------------------------------------
// GET /2/dm_conversations/with/{participant_id}/dm_events and /2/dm_conversations/{id}/dm_events

enum Target {
    Peer(u64),
    Group(Arc<Group>),
}

async fn history_with(
    State(sim): State<Simulator>,
    path: Result<Path<String>, PathRejection>,
    query: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> Response {
    let Some(peer) = path.ok().and_then(|Path(p)| parse_id(&p)) else {
        return invalid("The `participant_id` path parameter value does not match ^[0-9]{1,19}$");
    };
    history(&sim, Target::Peer(peer), query)
}

async fn history_conv(
    State(sim): State<Simulator>,
    path: Result<Path<String>, PathRejection>,
    query: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> Response {
    let Ok(Path(id)) = path else {
        return invalid("The `id` path parameter is invalid");
    };
    match conversation(&sim, &id) {
        Ok(target) => history(&sim, target, query),
        Err(resp) => resp,
    }
}

/// A conversation ID: a 1:1 `"<a>-<b>"` that names the account, or a group.
fn conversation(sim: &Simulator, id: &str) -> Result<Target, Response> {
    let me = x_user(sim);
    match id.split_once('-') {
        Some((a, b)) => match (parse_id(a), parse_id(b)) {
            (Some(a), Some(b)) if a == me && b != me => Ok(Target::Peer(b)),
            (Some(a), Some(b)) if b == me && a != me => Ok(Target::Peer(a)),
            (Some(_), Some(_)) => Err(forbidden(
                "dm_conversation",
                "dm_conversation_id",
                id,
                "You are not a participant of this conversation.",
            )),
            _ => Err(invalid("The `id` path parameter value does not match the conversation ID pattern")),
        },
        None if (15..=19).contains(&id.len()) => match parse_id(id).and_then(|g| sim.inner.x_api.groups.get(g)) {
            Some(g) => Ok(Target::Group(g)),
            None => Err(missing("dm_conversation", "id", id)),
        },
        None => Err(invalid("The `id` path parameter value does not match the conversation ID pattern")),
    }
}

fn history(sim: &Simulator, target: Target, query: Result<Query<HashMap<String, String>>, QueryRejection>) -> Response {
    let Ok(Query(q)) = query else {
        return invalid("The query string is invalid");
    };
    let cfg = &sim.inner.cfg;
    let x = &sim.inner.x_api;
    let world = &sim.inner.world;
    let max = match q.get("max_results").map(|v| v.parse::<usize>()) {
        None => 100,
        Some(Ok(n)) if (1..=100).contains(&n) => n,
        Some(_) => return invalid("The `max_results` query parameter value is not between 1 and 100"),
    };
    let shape = match Shape::parse(&q, cfg.x_strict_fields) {
        Ok(s) => Shape { epoch_ms: cfg.x_created_at_epoch_ms, ..s },
        Err(resp) => return resp,
    };
    let token = match q.get("pagination_token") {
        None => None,
        Some(t) => match decode_token(t) {
            Some(tok) => Some(tok),
            None => return invalid_token(),
        },
    };
    if let Target::Peer(peer) = &target {
        if sim.inner.faults.forbidden(&peer.to_string()) {
            return forbidden(
                "user",
                "participant_id",
                &peer.to_string(),
                "You are not permitted to view this conversation.",
            );
        }
    }
    let peer_s = match &target {
        Target::Peer(peer) => Some(peer.to_string()),
        _ => None,
    };
    if let Some(resp) = sim.take_read_fault(SimProvider::XApiV2, peer_s.as_deref(), token.is_some()) {
        return resp;
    }
    let spoiled = sim.inner.faults.spoil();
    if let Some(Spoiled::Malformed(kind)) = spoiled {
        tracing::debug!(?kind, "simulator: serving a malformed X API v2 page");
        return malformed(kind);
    }
    let me = x_user(sim);
    world.note_account(&me.to_string());
    let horizon = |newest: Option<u64>| cfg.x_history_days.and_then(|d| newest.map(|n| n.saturating_sub(d * DAY_MS)));
    let (events, next, cutoff) = match &target {
        Target::Peer(peer) => {
            let start = match token {
                None => Start::Newest,
                Some(Token::World(c)) => match world.resolve_cursor(*peer, &c) {
                    Ok(pos) => Start::At(pos),
                    Err(_) => return invalid_token(),
                },
                Some(Token::Group(_)) => return invalid_token(),
            };
            match world.find(*peer) {
                Some(conv) => {
                    // At most what was asked, and at most the conversation's own page size: X
                    // may return fewer than `max_results`, and tests page alike on every provider.
                    let page = world.page_sized(&conv, start, max.min(conv.page_size));
                    let events: Vec<Ev> = page.messages.into_iter().map(|m| Ev::from_message(m, me, *peer)).collect();
                    (events, page.next_cursor.map(Token::World), horizon(world.newest_ms(&conv)))
                }
                None => (Vec::new(), None, None),
            }
        }
        Target::Group(g) => {
            let offset = match token {
                None => 0,
                Some(Token::Group(o)) => o,
                Some(Token::World(_)) => return invalid_token(),
            };
            let (events, next) = g.page(offset, max);
            let events = events.into_iter().map(|e| Ev::from_group(e, me, g.id)).collect();
            (events, next.map(Token::Group), horizon(g.newest_ms()))
        }
    };
    // Past the horizon nothing exists: the page stops there and so does history.
    let crossed = cutoff.is_some_and(|c| events.iter().any(|e| e.ms < c));
    let mut events: Vec<Ev> = events
        .into_iter()
        .filter(|e| cutoff.is_none_or(|c| e.ms >= c))
        .filter(|e| !x.deleted(e.id))
        .filter(|e| shape.event_types.as_ref().is_none_or(|t| t.contains(e.kind.event_type())))
        .collect();
    // X documents newest first.
    events.sort_unstable_by_key(|e| std::cmp::Reverse(e.id));
    let next = if crossed { None } else { next.map(|t| encode_token(&t)) };
    let body = events_body(&events, &shape, next);
    if spoiled == Some(Spoiled::Dropped) {
        tracing::debug!("simulator: dropping an X API v2 page mid-stream");
        return faults::dropped(serde_json::to_vec(&body).unwrap_or_default(), "application/json; charset=utf-8");
    }
    sim.inner.stats.served(events.len() as u64);
    json(200, &body)
}

fn parse_id(s: &str) -> Option<u64> {
    (s.len() <= 19).then(|| parse_peer(s)).flatten()
}

// ---------------------------------------------------------------------------------------------
// GET / DELETE /2/dm_events/{event_id}

/// Finds an event the account can see (or could, before deleting it).
fn locate(sim: &Simulator, id: u64) -> Option<Ev> {
    let me = x_user(sim);
    if let Some((peer, m)) = sim.inner.world.locate(id) {
        return Some(Ev::from_message(m, me, peer));
    }
    sim.inner.x_api.groups.locate(id).map(|(g, e)| Ev::from_group(e, me, g.id))
}

async fn event(
    State(sim): State<Simulator>,
    path: Result<Path<String>, PathRejection>,
    query: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> Response {
    let Some((raw, id)) = path.ok().and_then(|Path(p)| parse_id(&p).map(|id| (p, id))) else {
        return invalid("The `event_id` path parameter value does not match ^[0-9]{1,19}$");
    };
    let Ok(Query(q)) = query else {
        return invalid("The query string is invalid");
    };
    let shape = match Shape::parse(&q, sim.inner.cfg.x_strict_fields) {
        Ok(s) => s,
        Err(resp) => return resp,
    };
    match locate(&sim, id).filter(|_| !sim.inner.x_api.deleted(id)) {
        Some(e) => json(200, &json!({ "data": e.to_json(&shape) })),
        None => missing("dm_event", "event_id", &raw),
    }
}

async fn delete_event(State(sim): State<Simulator>, path: Result<Path<String>, PathRejection>) -> Response {
    let Some((raw, id)) = path.ok().and_then(|Path(p)| parse_id(&p).map(|id| (p, id))) else {
        return invalid("The `event_id` path parameter value does not match ^[0-9]{1,19}$");
    };
    if locate(&sim, id).is_none() {
        return not_found("dm_event", "event_id", &raw);
    }
    let fault = match write_faults::take(&sim, SimWriteAction::Delete, Some(&raw)) {
        Ok(f) => f,
        Err(refusal) => return refusal,
    };
    // Deleting again answers the same: the event is gone for the account either way.
    lock(&sim.inner.x_api.deleted).insert(id);
    log_write(&sim, DELETE, SimWriteAction::Delete, Some(raw.clone()), None, raw, fault.as_ref());
    write_faults::answer(fault, 200, json!({ "data": { "deleted": true } })).await
}

// ---------------------------------------------------------------------------------------------
// Sends: POST /2/dm_conversations/with/{participant_id}/messages, /2/dm_conversations/{id}/messages,
// /2/dm_conversations

/// Reads a message body: `{text?, attachments?: [{media_id}]}`, at least one, nothing else.
fn read_message(v: &Value) -> Result<(String, Option<String>), Response> {
    let Some(obj) = v.as_object() else {
        return Err(invalid("The message must be a JSON object"));
    };
    if let Some(k) = obj.keys().find(|k| !matches!(k.as_str(), "text" | "attachments")) {
        return Err(invalid(&format!("[{k}] is not a valid property of the message")));
    }
    let text = match obj.get("text") {
        None => None,
        Some(Value::String(t)) if !t.is_empty() => Some(t.clone()),
        Some(_) => return Err(invalid("`text` must be a non-empty string")),
    };
    let media = match obj.get("attachments") {
        None => None,
        Some(Value::Array(items)) if items.len() == 1 => {
            match items[0].get("media_id").and_then(Value::as_str).filter(|m| parse_id(m).is_some()) {
                Some(m) => Some(m.to_string()),
                None => return Err(invalid("`attachments[0].media_id` must match ^[0-9]{1,19}$")),
            }
        }
        Some(_) => return Err(invalid("`attachments` must hold exactly one item")),
    };
    if text.is_none() && media.is_none() {
        return Err(invalid("One of `text` or `attachments` is required"));
    }
    Ok((text.unwrap_or_default(), media))
}

fn body_json(body: Result<Bytes, BytesRejection>) -> Result<Value, Response> {
    let body = body.map_err(|_| invalid("The request body could not be read"))?;
    serde_json::from_slice::<Value>(&body).map_err(|_| invalid("The request body is not valid JSON"))
}

/// The 201 body of a send or a new group.
fn created(conversation_id: &str, event_id: u64) -> Value {
    json!({ "data": { "dm_conversation_id": conversation_id, "dm_event_id": event_id.to_string() } })
}

/// Books a performed write in the write log.
fn log_write(
    sim: &Simulator,
    route: &str,
    action: SimWriteAction,
    target: Option<String>,
    text: Option<String>,
    result: String,
    fault: Option<&WriteFault>,
) {
    sim.log_write(SimWrite {
        route: route.to_string(),
        target,
        text,
        result_id: Some(result),
        fault: fault.map(|f| f.kind),
        ..SimWrite::performed(SimProvider::XApiV2, action)
    });
}

/// Sends into the 1:1 conversation with `peer` (through `route`).
async fn send_to_peer(sim: &Simulator, route: &str, peer: u64, text: String, media: Option<String>) -> Response {
    let peer_s = peer.to_string();
    let me = x_user(sim);
    if peer == me {
        return invalid("You cannot send a Direct Message to yourself");
    }
    if sim.inner.faults.forbidden(&peer_s) || sim.inner.faults.dm_not_allowed(&peer_s) {
        return forbidden(
            "user",
            "participant_id",
            &peer_s,
            "You are not permitted to send Direct Messages to this user.",
        );
    }
    let fault = match write_faults::take(sim, SimWriteAction::Send, Some(&peer_s)) {
        Ok(f) => f,
        Err(refusal) => return refusal,
    };
    let world = &sim.inner.world;
    let conv = world.find_or_create(peer);
    let media_url = media.map(|m| sim.inner.x_api.media_url(&m));
    let msg = world.append_sent(&conv, Sent { text: text.clone(), media_url });
    world.note_account(&me.to_string());
    sim.inner.stats.sent(1);
    log_write(sim, route, SimWriteAction::Send, Some(peer_s), Some(text), msg.id.to_string(), fault.as_ref());
    write_faults::answer(fault, 201, created(&one_to_one(me, peer), msg.id)).await
}

async fn send_with(
    State(sim): State<Simulator>,
    path: Result<Path<String>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let Some(peer) = path.ok().and_then(|Path(p)| parse_id(&p)) else {
        return invalid("The `participant_id` path parameter value does not match ^[0-9]{1,19}$");
    };
    match body_json(body).and_then(|v| read_message(&v)) {
        Ok((text, media)) => send_to_peer(&sim, SEND_WITH, peer, text, media).await,
        Err(resp) => resp,
    }
}

async fn send_conv(
    State(sim): State<Simulator>,
    path: Result<Path<String>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let Ok(Path(id)) = path else {
        return invalid("The `dm_conversation_id` path parameter is invalid");
    };
    let (text, media) = match body_json(body).and_then(|v| read_message(&v)) {
        Ok(m) => m,
        Err(resp) => return resp,
    };
    match conversation(&sim, &id) {
        Ok(Target::Peer(peer)) => send_to_peer(&sim, SEND_CONV, peer, text, media).await,
        Ok(Target::Group(g)) => {
            let gid = g.id.to_string();
            let fault = match write_faults::take(&sim, SimWriteAction::Send, Some(&gid)) {
                Ok(f) => f,
                Err(refusal) => return refusal,
            };
            let media_url = media.map(|m| sim.inner.x_api.media_url(&m));
            let e = g.append_message(text.clone(), media_url);
            sim.inner.stats.sent(1);
            log_write(
                &sim,
                SEND_CONV,
                SimWriteAction::Send,
                Some(gid.clone()),
                Some(text),
                e.id.to_string(),
                fault.as_ref(),
            );
            write_faults::answer(fault, 201, created(&gid, e.id)).await
        }
        // A lookup answers a missing group with a 200 that carries the problem; a send cannot.
        Err(resp) if resp.status() == StatusCode::OK => not_found("dm_conversation", "dm_conversation_id", &id),
        Err(resp) => resp,
    }
}

async fn create_group(State(sim): State<Simulator>, body: Result<Bytes, BytesRejection>) -> Response {
    let v = match body_json(body) {
        Ok(v) => v,
        Err(resp) => return resp,
    };
    if v.get("conversation_type").and_then(Value::as_str) != Some("Group") {
        return invalid("`conversation_type` must be \"Group\"");
    }
    let ids: Option<Vec<u64>> = v
        .get("participant_ids")
        .and_then(Value::as_array)
        .map(|a| a.iter().map(|p| p.as_str().and_then(parse_id)).collect::<Option<Vec<u64>>>())
        .unwrap_or(None);
    let Some(ids) =
        ids.filter(|ids| (2..=49).contains(&ids.len()) && ids.iter().collect::<HashSet<_>>().len() == ids.len())
    else {
        return invalid("`participant_ids` must hold 2 to 49 distinct user IDs");
    };
    let (text, media) = match v.get("message").ok_or_else(|| invalid("`message` is required")).and_then(read_message) {
        Ok(m) => m,
        Err(resp) => return resp,
    };
    if let Some(p) = ids.iter().find(|p| sim.inner.faults.dm_not_allowed(&p.to_string())) {
        return forbidden(
            "user",
            "participant_ids",
            &p.to_string(),
            &format!("User {p} cannot be added to a group by you."),
        );
    }
    let fault = match write_faults::take(&sim, SimWriteAction::CreateGroup, None) {
        Ok(f) => f,
        Err(refusal) => return refusal,
    };
    let media_url = media.map(|m| sim.inner.x_api.media_url(&m));
    let (g, e) = sim.inner.x_api.groups.create(ids, text.clone(), media_url);
    sim.inner.stats.sent(1);
    let gid = g.id.to_string();
    log_write(&sim, CREATE_GROUP, SimWriteAction::CreateGroup, None, Some(text), gid.clone(), fault.as_ref());
    write_faults::answer(fault, 201, created(&gid, e.id)).await
}

// ---------------------------------------------------------------------------------------------
// POST /2/media/upload, GET /2/media/upload?command=STATUS

async fn upload(State(sim): State<Simulator>, req: Request) -> Response {
    let content_type =
        req.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or_default().to_ascii_lowercase();
    let (media, category) = if content_type.starts_with("multipart/form-data") {
        let Ok(mut form) = Multipart::from_request(req, &sim).await else {
            return invalid("Malformed multipart body");
        };
        let (mut media, mut category) = (None, None);
        loop {
            match form.next_field().await {
                Ok(Some(field)) => match field.name().unwrap_or_default() {
                    "media" => media = field.bytes().await.ok(),
                    "media_category" => category = field.text().await.ok(),
                    _ => {}
                },
                Ok(None) => break,
                Err(_) => return invalid("Malformed multipart body"),
            }
        }
        (media, category)
    } else {
        let Ok(body) = axum::body::to_bytes(req.into_body(), UPLOAD_LIMIT).await else {
            return invalid("The request body could not be read");
        };
        let Ok(v) = serde_json::from_slice::<Value>(&body) else {
            return invalid("The request body is not valid JSON");
        };
        let media = v
            .get("media")
            .and_then(Value::as_str)
            .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
            .map(Bytes::from);
        (media, v.get("media_category").and_then(Value::as_str).map(str::to_string))
    };
    let Some(category) = category.filter(|c| MEDIA_CATEGORIES.contains(&c.as_str())) else {
        return invalid("`media_category` must be one of tweet_image, tweet_video, tweet_gif, dm_image, dm_video, dm_gif, subtitles");
    };
    let Some(media) = media.filter(|m| !m.is_empty()) else {
        return invalid("`media` is required");
    };
    let fault = match write_faults::take(&sim, SimWriteAction::Upload, None) {
        Ok(f) => f,
        Err(refusal) => return refusal,
    };
    let x = &sim.inner.x_api;
    let n = x.uploads.fetch_add(1, Ordering::Relaxed) + 1;
    let id = snowflake(BASE_END_MS + 50 * DAY_MS + n * 1_000, mix2(x.seed ^ 0x006d_6564_6961, n)).to_string();
    let (dir, ext, prefix) = match category.as_str() {
        "dm_gif" | "tweet_gif" => ("dm_gif", "mp4", "16"),
        "dm_video" | "tweet_video" => ("dm_video", "mp4", "13"),
        _ => ("dm_media", "jpg", "3"),
    };
    lock(&x.media).insert(id.clone(), format!("https://pbs.twimg.com/{dir}/{id}/upload.{ext}"));
    sim.inner.stats.uploaded(1);
    let mut data =
        json!({ "id": id, "media_key": format!("{prefix}_{id}"), "size": media.len(), "expires_after_secs": 86_400 });
    if dir == "dm_video" {
        data["processing_info"] = json!({ "state": "succeeded", "progress_percent": 100 });
    }
    log_write(&sim, UPLOAD, SimWriteAction::Upload, None, None, id, fault.as_ref());
    write_faults::answer(fault, 200, json!({ "data": data })).await
}

async fn upload_status(
    State(sim): State<Simulator>,
    query: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> Response {
    let Ok(Query(q)) = query else {
        return invalid("The query string is invalid");
    };
    let Some(id) = q.get("media_id").filter(|_| q.get("command").map(String::as_str) == Some("STATUS")) else {
        return invalid("`command=STATUS` and `media_id` are required");
    };
    if !lock(&sim.inner.x_api.media).contains_key(id) {
        return not_found("media", "media_id", id);
    }
    json(200, &json!({ "data": { "id": id, "processing_info": { "state": "succeeded", "progress_percent": 100 } } }))
}

// ---------------------------------------------------------------------------------------------
// Users

fn user_json(id: u64, username: &str) -> Response {
    json(200, &json!({ "data": { "id": id.to_string(), "name": format!("User {username}"), "username": username } }))
}

async fn user_by_name(State(sim): State<Simulator>, path: Result<Path<String>, PathRejection>) -> Response {
    let Ok(Path(name)) = path else {
        return invalid("The `username` path parameter is invalid");
    };
    if name.is_empty() || name.len() > 15 || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
        return invalid("The `username` path parameter value does not match ^[A-Za-z0-9_]{1,15}$");
    }
    if let Some(conv) = sim.inner.world.peer_by_username(&name) {
        return user_json(conv.peer, &conv.username);
    }
    if sim.inner.cfg.account.as_deref().is_some_and(|a| content::normalize_handle(a) == name.to_ascii_lowercase()) {
        return user_json(x_user(&sim), &name);
    }
    missing("user", "username", &name)
}

async fn user_by_id(State(sim): State<Simulator>, path: Result<Path<String>, PathRejection>) -> Response {
    let Some(id) = path.ok().and_then(|Path(p)| parse_id(&p)) else {
        return invalid("The `id` path parameter value does not match ^[0-9]{1,19}$");
    };
    match sim.inner.world.find(id) {
        Some(conv) => user_json(id, &conv.username),
        None => user_json(id, &format!("user{id}")),
    }
}

async fn user_me(State(sim): State<Simulator>) -> Response {
    let handle = sim.inner.world.truth_account();
    user_json(x_user(&sim), &handle)
}

#[cfg(test)]
mod tests;
#[cfg(test)]
mod write_tests;
