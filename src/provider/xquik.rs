//! The Xquik adapter: `GET /x/dm/{userId}/history` and `GET /x/users/{id}` (PROVIDERS.md section 1), and
//! the writes: `POST /x/dm/{userId}`, `POST /x/media` and `GET /x/write-actions/{id}`.
//!
//! Parsing is tolerant where the docs and the live API may differ (camelCase or snake_case fields, IDs as
//! strings or numbers, `error` as a string or an object, `next_cursor` as "" or null) and strict where
//! guessing would lose data (a page without `messages`, or `has_next_page` with no cursor, is malformed).
//! The cursor is sent back exactly as received; reqwest's query encoding handles `+`, `/` and `=`.

use std::time::Duration;

use reqwest::header::HeaderValue;
use serde::Deserialize;

use serde_json::value::RawValue;

use super::util::{http_client, parse_item, Http, Id, Request, TimeText};
use super::{
    Dm, ErrorClass, Page, ProviderError, ReadBudget, Upload, User, WriteDone, WriteKind, WriteLimit, WriteState,
};
use crate::config::Pipeline;
use crate::record::{Conversation, Item, Unparsed};

/// Route templates, as they appear in records and logs.
pub const HISTORY: &str = "GET /x/dm/{userId}/history";
/// Xquik's fixed window for reads (GET/HEAD/OPTIONS) per account: 300 in each second.
pub const READ_BUDGET: ReadBudget = ReadBudget { requests: 300, window: Duration::from_secs(1) };
pub const USER: &str = "GET /x/users/{id}";

/// A configured Xquik client for one pipeline.
pub struct Xquik {
    http: Http,
    /// Without a trailing slash, e.g. `https://xquik.com/api/v1`.
    base: String,
    /// The connected account's handle, sent as `account`.
    account: String,
    /// `max_response_bytes`: the largest body read.
    max_body: u64,
}

impl Xquik {
    pub fn new(p: &Pipeline, api_key: &str) -> Result<Xquik, crate::config::ConfigError> {
        let headers =
            super::util::secret_headers(p, reqwest::header::HeaderName::from_static("x-api-key"), api_key, "API key")?;
        Ok(Xquik {
            http: http_client(p, headers)?,
            base: p.base_url.clone(),
            account: p.account.clone(),
            max_body: p.max_response_bytes,
        })
    }

    pub async fn history(&self, conv: &Conversation, cursor: Option<&str>) -> Result<Page, ProviderError> {
        let peer = conv.key();
        let url = format!("{}/x/dm/{peer}/history", self.base);
        let mut req = self.http.get(url).query(&[("account", self.account.as_str())]);
        if let Some(c) = cursor {
            req = req.query(&[("cursor", c)]);
        }
        let body = send(req, HISTORY, self.max_body).await?;
        // The usual page is read in one pass; only a page with a bad item is read again, item by item.
        if let Some(page) = whole_page(&body) {
            return Ok(page);
        }
        let page: HistoryBody = serde_json::from_slice(&body).map_err(|e| ProviderError::bad_json(HISTORY, &e))?;
        let next_cursor = page.next_cursor.filter(|c| !c.is_empty());
        if page.has_next_page && next_cursor.is_none() {
            return Err(ProviderError::malformed(HISTORY, "has_next_page is true but next_cursor is empty"));
        }
        // The envelope is strict; each message is read on its own, and one that cannot be read is kept as
        // received (`dm_unparsed`) instead of failing the page.
        let mut items = Vec::with_capacity(page.messages.len());
        let mut unparsed = Vec::new();
        for raw in page.messages {
            match parse_item::<WireMessage>(raw).and_then(message_item) {
                Ok(item) => items.push(item),
                Err(reason) => unparsed.push(Unparsed { reason, raw: raw.to_owned() }),
            }
        }
        Ok(Page {
            credits: (items.len() + unparsed.len()) as u64,
            items,
            unparsed,
            next_cursor: if page.has_next_page { next_cursor } else { None },
        })
    }

    pub async fn lookup_user(&self, id_or_username: &str) -> Result<User, ProviderError> {
        let url = format!("{}/x/users/{}", self.base, id_or_username.trim_start_matches('@'));
        let body = send(self.http.get(url), USER, self.max_body).await?;
        let u: UserBody = serde_json::from_slice(&body).map_err(|e| ProviderError::bad_json(USER, &e))?;
        if !u.id.is_safe() {
            return Err(ProviderError::malformed(USER, "the user has an invalid id"));
        }
        Ok(User { id: u.id.0, username: u.username, name: u.name, can_dm: u.can_dm })
    }
}

/// A page whose every message reads and normalizes, in one pass over the body; None when anything does not
/// (then the caller reads it item by item, which gives the same items and keeps the bad ones as received).
fn whole_page(body: &[u8]) -> Option<Page> {
    #[derive(Deserialize)]
    struct WholeBody {
        messages: Vec<WireMessage>,
        #[serde(alias = "hasNextPage")]
        has_next_page: bool,
        #[serde(default, alias = "nextCursor")]
        next_cursor: Option<String>,
    }
    let page: WholeBody = serde_json::from_slice(body).ok()?;
    let next_cursor = page.next_cursor.filter(|c| !c.is_empty());
    if page.has_next_page && next_cursor.is_none() {
        return None;
    }
    let items = page.messages.into_iter().map(message_item).collect::<Result<Vec<Item>, String>>().ok()?;
    Some(Page {
        credits: items.len() as u64,
        items,
        unparsed: Vec::new(),
        next_cursor: if page.has_next_page { next_cursor } else { None },
    })
}

/// A history message as an [`Item`], or why it is not one.
fn message_item(m: WireMessage) -> Result<Item, String> {
    for (field, id) in [("id", &m.id), ("senderId", &m.sender_id), ("receiverId", &m.receiver_id)] {
        if !id.is_safe() {
            return Err(format!("{field} is not a usable ID"));
        }
    }
    Ok(Item {
        id: m.id.0,
        sender_id: Some(m.sender_id.0),
        receiver_id: Some(m.receiver_id.0),
        created_at: m.created_at.map(|t| t.0),
        text: m.text,
        media_url: m.media_url,
        ..Item::default()
    })
}

/// Sends a request and returns the body of a 2xx, or the error as Xquik's codes classify it.
pub(crate) async fn send(req: Request, endpoint: &'static str, max_body: u64) -> Result<bytes::Bytes, ProviderError> {
    super::util::send_classified(req, endpoint, max_body, classify).await
}

/// Maps an Xquik error response to its class and a hint, per PROVIDERS.md and SPEC section 5.
pub(crate) fn classify(
    endpoint: &'static str,
    status: u16,
    body: &[u8],
    retry_after_header: Option<Duration>,
) -> ProviderError {
    let parsed: ErrorBody = serde_json::from_slice(body).unwrap_or_default();
    let code = parsed.error.as_ref().map(ErrorField::code).unwrap_or_default();
    let code = if code.is_empty() { format!("http_{status}") } else { code };
    let retry_after = retry_after_header
        .or(parsed.retry_after.map(Duration::from_secs))
        .or(parsed.retry_after_ms.map(Duration::from_millis));
    let read = ProviderError::is_read(endpoint);
    if read && (status == 410 || (status, code.as_str()) == (400, "invalid_coverage_cursor")) {
        // Xquik's cursor rules: `410 coverage_cursor_gone` and `400 invalid_coverage_cursor` mean "restart
        // without the cursor".
        return ProviderError::rejected_cursor(endpoint, status, code);
    }
    use ErrorClass::*;
    let (class, hint) = match (status, code.as_str()) {
        (429, _) => (Transient, "rate limited; waiting as the provider asks"),
        // `409 coverage_cursor_unavailable` + `Retry-After`: wait exactly that long, then the same cursor.
        (409, "coverage_cursor_unavailable") => (Transient, "the cursor is busy; waiting as the provider asks"),
        (409, _) if read && retry_after.is_some() => (Transient, "the provider asked us to try again later"),
        (409, _) if read => (Conversation, "the provider reported a conflict"),
        (500..=599, _) if read => (Transient, "the provider failed to answer; will retry"),
        (502..=504, _) | (424, _) => (Transient, "the provider or X is unavailable; will retry"),
        (401, _) => (Fatal, "the API key was rejected; check the key in the pipeline's api_key_env / api_key_file"),
        (402, _) => (Fatal, "billing: subscribe or top up credits, then run again"),
        (403, "account_needs_reauth") => (Fatal, "reconnect the sender account in the Xquik dashboard"),
        (403, "account_restricted") => (Fatal, "the sender account is restricted by X; use another account"),
        (403, "dm_not_permitted") => {
            (Conversation, "the account is not a participant of this conversation or its session expired; use a participant account or reconnect it")
        }
        (403, _) => (Conversation, "forbidden for this conversation"),
        (404, "account_not_found") => (Fatal, "the `account` is not connected to this API key; fix `account` in the config"),
        (400, "account_required") => (Fatal, "set `account` to the connected sender handle"),
        (400, "invalid_user_id") => (Conversation, "the conversation must be a numeric user ID; fix the conversations list"),
        (404, "user_not_found") => (Conversation, "no such user"),
        (409, _) => (Conversation, "the idempotency key was used with a different payload; use a new key"),
        (422, "x_dm_not_allowed") => {
            (Conversation, "the recipient does not accept DMs from this account; use another permitted account or ask the recipient to allow messages")
        }
        (422, _) => (Conversation, "X rejected the request; check the recipient, account state and content"),
        (400, _) => (Conversation, "the provider rejected the request"),
        (404, _) => (Conversation, "not found"),
        _ => (Conversation, "unexpected response from the provider"),
    };
    ProviderError {
        retry_after: if class == Transient { retry_after } else { None },
        ..ProviderError::new(class, endpoint, Some(status), code, hint)
    }
}

#[derive(Deserialize)]
struct HistoryBody<'a> {
    #[serde(borrow)]
    messages: Vec<&'a RawValue>,
    #[serde(alias = "hasNextPage")]
    has_next_page: bool,
    #[serde(default, alias = "nextCursor")]
    next_cursor: Option<String>,
}

#[derive(Deserialize)]
struct WireMessage {
    id: Id,
    #[serde(default)]
    text: Option<String>,
    #[serde(alias = "sender_id")]
    #[serde(rename = "senderId")]
    sender_id: Id,
    #[serde(alias = "receiver_id")]
    #[serde(rename = "receiverId")]
    receiver_id: Id,
    #[serde(default, rename = "createdAt", alias = "created_at")]
    created_at: Option<TimeText>,
    #[serde(default, rename = "mediaUrl", alias = "media_url")]
    media_url: Option<String>,
}

#[derive(Deserialize)]
struct UserBody {
    id: Id,
    #[serde(default)]
    username: String,
    #[serde(default)]
    name: String,
    #[serde(default, rename = "canDm", alias = "can_dm")]
    can_dm: Option<bool>,
}

#[derive(Default, Deserialize)]
pub(crate) struct ErrorBody {
    #[serde(default)]
    error: Option<ErrorField>,
    #[serde(default, rename = "retryAfter", alias = "retry_after")]
    retry_after: Option<u64>,
    #[serde(default, rename = "retryAfterMs", alias = "retry_after_ms")]
    retry_after_ms: Option<u64>,
}

/// `error` is a code string by default and an object with the `xquik-api-contract` header.
#[derive(Deserialize)]
#[serde(untagged)]
enum ErrorField {
    Code(String),
    Object {
        #[serde(default)]
        code: Option<String>,
        #[serde(default, rename = "type")]
        kind: Option<String>,
    },
}

impl ErrorField {
    fn code(&self) -> String {
        let raw = match self {
            ErrorField::Code(c) => c.clone(),
            ErrorField::Object { code, kind } => code.clone().or_else(|| kind.clone()).unwrap_or_default(),
        };
        // Codes are snake_case identifiers; anything else (a sentence) is not echoed, to keep errors one short line.
        if raw.len() <= 64 && raw.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            raw
        } else {
            String::new()
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Writes: DM send, media upload, write-action status

/// Route templates of the write endpoints.
pub const SEND_DM: &str = "POST /x/dm/{userId}";
/// Xquik's fixed window for writes (POST/PUT/PATCH) per account: 120 in 60 s.
pub const WRITE_LIMIT: WriteLimit = WriteLimit { max: 120, window: Duration::from_secs(60) };
/// Xquik charges 10 credits per send or upload.
pub const WRITE_CREDITS: u64 = 10;
pub const UPLOAD_MEDIA: &str = "POST /x/media";
pub const WRITE_ACTION: &str = "GET /x/write-actions/{id}";

/// The longest wait a pending write's hints (`Retry-After`, `pollAfterMs`) are taken at; beyond it
/// we ask again anyway, which is harmless.
const MAX_POLL_HINT: Duration = Duration::from_secs(60);

impl Xquik {
    /// `POST /x/dm/{userId}` with `Idempotency-Key`; reads both the legacy and the write-action answer.
    pub async fn send_dm(&self, dm: &Dm<'_>) -> Result<WriteState, ProviderError> {
        let Dm { to, text, media_id, idempotency_key } = *dm;
        let url = format!("{}/x/dm/{to}", self.base);
        let mut body = serde_json::json!({ "account": self.account, "text": text });
        if let Some(m) = media_id {
            body["media_ids"] = serde_json::json!([m]);
        }
        let req = self.http.post(url).header("Idempotency-Key", idempotency_key).json(&body);
        let answer = send_write(req, SEND_DM, self.max_body).await?;
        write_state(SEND_DM, &answer, WriteKind::DirectMessage)
    }

    /// `POST /x/media`: multipart (`account`, `file`) for a file, JSON (`account`, `url`) for a URL.
    pub async fn upload_media(&self, upload: &Upload, idempotency_key: &str) -> Result<WriteState, ProviderError> {
        let url = format!("{}/x/media", self.base);
        let req = self.http.post(url).header("Idempotency-Key", idempotency_key);
        let req = match upload {
            Upload::File { name, mime, bytes } => {
                let part = super::util::file_part(UPLOAD_MEDIA, name, mime, bytes)?;
                let form = reqwest::multipart::Form::new().text("account", self.account.clone()).part("file", part);
                req.multipart(form)
            }
            Upload::Url(u) => req.json(&serde_json::json!({ "account": self.account, "url": u })),
        };
        let answer = send_write(req, UPLOAD_MEDIA, self.max_body).await?;
        write_state(UPLOAD_MEDIA, &answer, WriteKind::Media)
    }

    /// `GET /x/write-actions/{id}`: where a pending write stands now.
    pub async fn write_action(&self, action: &str, kind: WriteKind) -> Result<WriteState, ProviderError> {
        let url = format!("{}/x/write-actions/{action}", self.base);
        let answer = send_write(self.http.get(url), WRITE_ACTION, self.max_body).await?;
        write_state(WRITE_ACTION, &answer, kind)
    }
}

/// A 2xx answer of a write route, with the headers the write-action contract uses.
struct WriteAnswer {
    status: u16,
    retry_after: Option<Duration>,
    location: Option<String>,
    body: bytes::Bytes,
}

/// As [`send`], keeping the status, `Retry-After` and `Location` of a 2xx (a 202 means "poll").
async fn send_write(req: Request, endpoint: &'static str, max_body: u64) -> Result<WriteAnswer, ProviderError> {
    let resp = req.send().await.map_err(|e| ProviderError::transport(endpoint, &e))?;
    let super::body::Received { status, headers, body } = super::body::receive(resp, endpoint, max_body).await?;
    let header = |name| headers.get(name).and_then(|v: &HeaderValue| v.to_str().ok()).map(str::to_string);
    let retry_after =
        header(reqwest::header::RETRY_AFTER).and_then(|v| v.trim().parse::<u64>().ok()).map(Duration::from_secs);
    let location = header(reqwest::header::LOCATION);
    if (200..300).contains(&status) {
        return Ok(WriteAnswer { status, retry_after, location, body });
    }
    // A write error that says it is safe to retry (`500 x_write_failed`) is a failed write action in all but
    // status: nothing was dispatched, and the same request may be made again under a new key.
    if status >= 500 {
        if let Ok(b) = serde_json::from_slice::<WriteBody>(&body) {
            if b.safe_to_retry == Some(true) {
                let code = b.error.as_ref().map(ErrorField::code).filter(|c| !c.is_empty());
                let body = serde_json::json!({
                    "status": "failed",
                    "safeToRetry": true,
                    "sendDispatched": b.send_dispatched,
                    "error": code.unwrap_or_else(|| format!("http_{status}")),
                });
                return Ok(WriteAnswer { status, retry_after, location, body: body.to_string().into() });
            }
        }
    }
    Err(classify(endpoint, status, &body, retry_after))
}

/// Reads a write answer: legacy `{messageId|mediaId, success}`, or a write-action record that is final
/// (`success`, `failed`, `expired`) or still in progress. The ID is the compatibility field
/// (`messageId` / `mediaId`), else `result.id` when `result.type` is the expected one.
fn write_state(endpoint: &'static str, a: &WriteAnswer, kind: WriteKind) -> Result<WriteState, ProviderError> {
    let b: WriteBody = serde_json::from_slice(&a.body).map_err(|e| ProviderError::bad_json(endpoint, &e))?;
    let bad = |what: &'static str| {
        ProviderError::new(ErrorClass::Malformed, endpoint, Some(a.status), "malformed_response", what)
    };
    let (compat, want) = match kind {
        WriteKind::DirectMessage => (b.message_id, "direct_message"),
        WriteKind::Media => (b.media_id, "media"),
    };
    let from_result = b.result.filter(|r| r.kind.as_deref() == Some(want)).and_then(|r| r.id);
    let id = compat.or(from_result);
    let error_code = b.error.as_ref().map(ErrorField::code).filter(|c| !c.is_empty());
    let at = b.completed_at.or(b.confirmed_at);
    let url = if kind == WriteKind::Media { b.media_url } else { None };
    let done = |id: Option<Id>| match id {
        Some(id) if id.is_safe() => Ok(WriteState::Done(WriteDone { id: id.0, url, at })),
        Some(_) => Err(bad("the result ID is invalid")),
        None => Err(bad("a successful write without its result ID")),
    };
    let status = b.status.map(|s| s.to_ascii_lowercase());
    match status.as_deref() {
        // The legacy contract: no lifecycle, just the result.
        None if b.success == Some(false) => Ok(WriteState::Failed {
            code: error_code.unwrap_or_else(|| "write_failed".into()),
            safe_to_retry: b.safe_to_retry.unwrap_or(false),
            dispatched: b.send_dispatched,
        }),
        None => done(id),
        Some("success") => done(id),
        Some(st @ ("failed" | "expired")) => Ok(WriteState::Failed {
            code: error_code.unwrap_or_else(|| st.to_string()),
            safe_to_retry: b.safe_to_retry.unwrap_or(false),
            dispatched: b.send_dispatched,
        }),
        Some(_) if b.terminal == Some(true) => Ok(WriteState::Failed {
            code: error_code.unwrap_or_else(|| "write_failed".into()),
            safe_to_retry: b.safe_to_retry.unwrap_or(false),
            dispatched: b.send_dispatched,
        }),
        // accepted, dispatching, pending_confirmation: ask again later about the same action.
        Some(_) => {
            let action = b
                .write_action_id
                .or(b.id)
                .or_else(|| {
                    a.location
                        .as_deref()
                        .and_then(|l| l.split(['?', '#']).next())
                        .and_then(|l| l.trim_end_matches('/').rsplit('/').next())
                        .map(|s| Id(s.to_string()))
                })
                .filter(Id::is_safe)
                .ok_or_else(|| bad("a pending write without its write-action ID"))?;
            let after = a
                .retry_after
                .or(b.poll_after_ms.map(Duration::from_millis))
                .or(b.next_action.and_then(|n| n.after_ms).map(Duration::from_millis))
                .unwrap_or(Duration::from_secs(1))
                .min(MAX_POLL_HINT);
            Ok(WriteState::Pending { action: action.0, after })
        }
    }
}

/// The parts of a write answer we read; everything is optional because the two contracts share
/// nothing but the result ID, and the ID may arrive as a string or a number.
#[derive(Deserialize)]
struct WriteBody {
    #[serde(default)]
    id: Option<Id>,
    #[serde(default, rename = "writeActionId", alias = "write_action_id")]
    write_action_id: Option<Id>,
    #[serde(default)]
    status: Option<String>,
    #[serde(default)]
    terminal: Option<bool>,
    #[serde(default, rename = "safeToRetry", alias = "safe_to_retry")]
    safe_to_retry: Option<bool>,
    #[serde(default)]
    success: Option<bool>,
    #[serde(default, rename = "sendDispatched", alias = "send_dispatched")]
    send_dispatched: Option<bool>,
    #[serde(default, rename = "messageId", alias = "message_id")]
    message_id: Option<Id>,
    #[serde(default, rename = "mediaId", alias = "media_id")]
    media_id: Option<Id>,
    #[serde(default, rename = "mediaUrl", alias = "media_url")]
    media_url: Option<String>,
    #[serde(default)]
    result: Option<WireResult>,
    #[serde(default, rename = "pollAfterMs", alias = "poll_after_ms")]
    poll_after_ms: Option<u64>,
    #[serde(default, rename = "nextAction", alias = "next_action")]
    next_action: Option<NextAction>,
    #[serde(default)]
    error: Option<ErrorField>,
    #[serde(default, rename = "completedAt", alias = "completed_at")]
    completed_at: Option<String>,
    #[serde(default, rename = "confirmedAt", alias = "confirmed_at")]
    confirmed_at: Option<String>,
}

#[derive(Deserialize)]
struct WireResult {
    #[serde(default, rename = "type")]
    kind: Option<String>,
    #[serde(default)]
    id: Option<Id>,
}

#[derive(Deserialize)]
struct NextAction {
    #[serde(default, rename = "afterMs", alias = "after_ms")]
    after_ms: Option<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_error_shapes_are_read() {
        let e = classify(HISTORY, 403, br#"{"error":"dm_not_permitted","message":"m"}"#, None);
        assert_eq!((e.class, e.code.as_str()), (ErrorClass::Conversation, "dm_not_permitted"));
        let e = classify(
            HISTORY,
            401,
            br#"{"error":{"message":"m","type":"authentication_error","code":"unauthenticated"}}"#,
            None,
        );
        assert_eq!((e.class, e.code.as_str()), (ErrorClass::Fatal, "unauthenticated"));
        let e = classify(HISTORY, 503, b"<html>oops</html>", None);
        assert_eq!((e.class, e.code.as_str()), (ErrorClass::Transient, "http_503"));
    }

    #[test]
    fn retry_after_comes_from_header_or_body() {
        let e = classify(HISTORY, 429, br#"{"error":"rate_limit_exceeded","retryAfter":7}"#, None);
        assert_eq!(e.retry_after, Some(Duration::from_secs(7)));
        let e =
            classify(HISTORY, 429, br#"{"error":"rate_limit_exceeded","retryAfter":7}"#, Some(Duration::from_secs(2)));
        assert_eq!(e.retry_after, Some(Duration::from_secs(2)));
        let e = classify(HISTORY, 429, br#"{"error":"x","retryAfterMs":1500}"#, None);
        assert_eq!(e.retry_after, Some(Duration::from_millis(1500)));
    }

    #[test]
    fn never_retried_codes_are_not_transient() {
        for s in [400, 401, 402, 403, 404, 409, 422] {
            assert_ne!(classify(HISTORY, s, b"{}", None).class, ErrorClass::Transient, "{s}");
        }
        for s in [429, 502, 503, 504] {
            assert_eq!(classify(HISTORY, s, b"{}", None).class, ErrorClass::Transient, "{s}");
        }
    }

    #[test]
    fn history_body_variants_parse() {
        let b: HistoryBody = serde_json::from_str(
            r#"{"messages":[{"id":1,"senderId":"2","receiverId":3,"createdAt":1771927200000}],"has_next_page":false,"next_cursor":null}"#,
        )
        .unwrap();
        let item = parse_item::<WireMessage>(b.messages[0]).and_then(message_item).unwrap();
        assert_eq!((item.id.as_str(), item.receiver_id.as_deref()), ("1", Some("3")));
        assert_eq!(item.created_at.as_deref(), Some("1771927200000"), "a numeric time is kept, not a failed page");
        let b: HistoryBody = serde_json::from_str(r#"{"messages":[{"id":"1","sender_id":"2","receiver_id":"3","created_at":"x"}],"has_next_page":true,"next_cursor":"a+b/c="}"#).unwrap();
        assert_eq!(b.next_cursor.as_deref(), Some("a+b/c="));
        assert!(serde_json::from_str::<HistoryBody>(r#"{"data":[]}"#).is_err());
    }

    #[test]
    fn a_bad_message_is_its_own_problem_not_the_page_s() {
        let b: HistoryBody = serde_json::from_str(
            r#"{"messages":[{"senderId":"2","receiverId":"3","text":"no id"},{"id":"../x","senderId":"2","receiverId":"3"},7,{"id":"5","senderId":"2","receiverId":"3"}],"has_next_page":false}"#,
        )
        .unwrap();
        let results: Vec<Result<Item, String>> =
            b.messages.iter().map(|raw| parse_item::<WireMessage>(raw).and_then(message_item)).collect();
        assert!(results[0].as_ref().unwrap_err().ends_with("missing field `id`"), "{results:?}");
        assert_eq!(results[1].as_ref().unwrap_err(), "id is not a usable ID");
        assert_eq!(results[2].as_ref().unwrap_err(), "the item is not a JSON object");
        assert_eq!(results[3].as_ref().unwrap().id, "5");
    }

    fn answer(status: u16, retry_after: Option<u64>, location: Option<&str>, body: &str) -> WriteAnswer {
        WriteAnswer {
            status,
            retry_after: retry_after.map(Duration::from_secs),
            location: location.map(str::to_string),
            body: bytes::Bytes::from(body.to_string()),
        }
    }

    fn done(id: &str) -> WriteState {
        WriteState::Done(WriteDone { id: id.into(), url: None, at: None })
    }

    #[test]
    fn legacy_and_final_write_action_answers_give_the_message_id() {
        let legacy = answer(200, None, None, r#"{"messageId":"1893726451029384192","success":true}"#);
        assert_eq!(write_state(SEND_DM, &legacy, WriteKind::DirectMessage).unwrap(), done("1893726451029384192"));
        let numeric = answer(200, None, None, r#"{"messageId":1893726451029384192,"success":true}"#);
        assert_eq!(write_state(SEND_DM, &numeric, WriteKind::DirectMessage).unwrap(), done("1893726451029384192"));
        // No compatibility field: result.id of the right type.
        let record = answer(
            200,
            None,
            Some("/api/v1/x/write-actions/9"),
            r#"{"object":"x_write_action","id":"9","status":"success","terminal":true,"result":{"type":"direct_message","id":"77"},"completedAt":"2026-08-01T00:00:00Z"}"#,
        );
        assert_eq!(
            write_state(SEND_DM, &record, WriteKind::DirectMessage).unwrap(),
            WriteState::Done(WriteDone { id: "77".into(), url: None, at: Some("2026-08-01T00:00:00Z".into()) })
        );
        // A result of another type is not a message ID.
        let other = answer(200, None, None, r#"{"status":"success","result":{"type":"tweet","id":"5"}}"#);
        assert_eq!(write_state(SEND_DM, &other, WriteKind::DirectMessage).unwrap_err().class, ErrorClass::Malformed);
        let upload =
            answer(200, None, None, r#"{"mediaId":"42","mediaUrl":"https://media.xquik.com/u/42.png","success":true}"#);
        assert_eq!(
            write_state(UPLOAD_MEDIA, &upload, WriteKind::Media).unwrap(),
            WriteState::Done(WriteDone {
                id: "42".into(),
                url: Some("https://media.xquik.com/u/42.png".into()),
                at: None
            })
        );
        let nothing = answer(200, None, None, r#"{"success":true}"#);
        assert_eq!(write_state(SEND_DM, &nothing, WriteKind::DirectMessage).unwrap_err().class, ErrorClass::Malformed);
        let html = answer(200, None, None, "<html></html>");
        assert_eq!(write_state(SEND_DM, &html, WriteKind::DirectMessage).unwrap_err().class, ErrorClass::Malformed);
    }

    #[test]
    fn pending_answers_say_which_action_to_poll_and_when() {
        let a = answer(
            202,
            Some(0),
            Some("/api/v1/x/write-actions/100001"),
            r#"{"object":"x_write_action","id":"100001","writeActionId":"100001","status":"pending_confirmation","terminal":false,"result":null,"pollAfterMs":2000,"success":false,"error":"x_write_unconfirmed"}"#,
        );
        assert_eq!(
            write_state(SEND_DM, &a, WriteKind::DirectMessage).unwrap(),
            WriteState::Pending { action: "100001".into(), after: Duration::ZERO }
        );
        // No Retry-After: pollAfterMs, then nextAction.afterMs, else a second; the ID may come from Location.
        let a =
            answer(202, None, Some("/api/v1/x/write-actions/abc"), r#"{"status":"dispatching","pollAfterMs":1500}"#);
        assert_eq!(
            write_state(SEND_DM, &a, WriteKind::DirectMessage).unwrap(),
            WriteState::Pending { action: "abc".into(), after: Duration::from_millis(1500) }
        );
        let a = answer(202, Some(86_400), None, r#"{"id":"7","status":"accepted"}"#);
        assert_eq!(
            write_state(SEND_DM, &a, WriteKind::DirectMessage).unwrap(),
            WriteState::Pending { action: "7".into(), after: MAX_POLL_HINT }
        );
        let a = answer(202, None, None, r#"{"status":"accepted"}"#);
        assert_eq!(write_state(SEND_DM, &a, WriteKind::DirectMessage).unwrap_err().class, ErrorClass::Malformed);
        let a = answer(202, None, None, r#"{"id":"../../users/1","status":"accepted"}"#);
        assert_eq!(write_state(SEND_DM, &a, WriteKind::DirectMessage).unwrap_err().class, ErrorClass::Malformed);
    }

    #[test]
    fn failed_and_expired_writes_carry_code_and_safety() {
        let a = answer(
            200,
            None,
            None,
            r#"{"id":"3","status":"failed","terminal":true,"safeToRetry":true,"error":"x_write_failed"}"#,
        );
        assert_eq!(
            write_state(WRITE_ACTION, &a, WriteKind::DirectMessage).unwrap(),
            WriteState::Failed { code: "x_write_failed".into(), safe_to_retry: true, dispatched: None }
        );
        let a = answer(200, None, None, r#"{"id":"3","status":"expired","terminal":true}"#);
        assert_eq!(
            write_state(WRITE_ACTION, &a, WriteKind::DirectMessage).unwrap(),
            WriteState::Failed { code: "expired".into(), safe_to_retry: false, dispatched: None }
        );
        let a = answer(200, None, None, r#"{"success":false,"error":{"code":"x_rejected","message":"secret words"}}"#);
        assert_eq!(
            write_state(SEND_DM, &a, WriteKind::DirectMessage).unwrap(),
            WriteState::Failed { code: "x_rejected".into(), safe_to_retry: false, dispatched: None }
        );
    }

    #[test]
    fn write_errors_are_classified_like_reads() {
        let e = classify(SEND_DM, 422, br#"{"error":"x_dm_not_allowed","safeToRetry":false}"#, None);
        assert_eq!((e.class, e.code.as_str()), (ErrorClass::Conversation, "x_dm_not_allowed"));
        let e = classify(SEND_DM, 409, br#"{"error":"idempotency_conflict"}"#, None);
        assert_eq!((e.class, e.code.as_str()), (ErrorClass::Conversation, "idempotency_conflict"));
        // On reads, the cursor rules: 409 busy waits, 410 and 400 invalid_coverage_cursor restart, 5xx retries.
        let ra = Some(Duration::from_secs(3));
        let e = classify(HISTORY, 409, br#"{"error":"coverage_cursor_unavailable"}"#, ra);
        assert_eq!((e.class, e.retry_after, e.cursor_rejected), (ErrorClass::Transient, ra, false));
        for (status, body) in
            [(410, r#"{"error":"coverage_cursor_gone"}"#), (400, r#"{"error":"invalid_coverage_cursor"}"#)]
        {
            let e = classify(HISTORY, status, body.as_bytes(), None);
            assert!(e.cursor_rejected && e.class == ErrorClass::Conversation, "{e}");
            assert!(!classify(SEND_DM, status, body.as_bytes(), None).cursor_rejected, "a write has no cursor");
        }
        assert_eq!(classify(HISTORY, 500, b"{}", None).class, ErrorClass::Transient);
        assert_ne!(classify(SEND_DM, 500, b"{}", None).class, ErrorClass::Transient);
        let e = classify(SEND_DM, 403, br#"{"error":"account_needs_reauth"}"#, None);
        assert_eq!((e.class, e.code.as_str()), (ErrorClass::Fatal, "account_needs_reauth"));
        let e = classify(SEND_DM, 503, br#"{"error":"write_tracking_unavailable"}"#, Some(Duration::from_secs(2)));
        assert_eq!((e.class, e.retry_after), (ErrorClass::Transient, Some(Duration::from_secs(2))));
    }
}
