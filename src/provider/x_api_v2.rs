//! The official X API v2 adapter (PROVIDERS.md section 3): DM history of a 1:1 conversation
//! (`GET /2/dm_conversations/with/{participant_id}/dm_events`) or of any conversation by ID
//! (`GET /2/dm_conversations/{dm_conversation_id}/dm_events`), user lookup, sends to a peer, to a
//! conversation and to a new group, media upload for DMs, reading and deleting one event.
//!
//! What is particular to this provider, and handled here so the engine never knows:
//! - **Rate limits are tiny** (15 DM reads per 15 minutes per user). Every response's
//!   `x-rate-limit-remaining`/`x-rate-limit-reset` is remembered per endpoint family ([`Bucket`]), and a
//!   request that would exceed the window is not sent: it fails at once as a transient error whose
//!   `retry_after` is the time until the reset, so [`super::with_retry`] waits (cancellably) instead of
//!   X answering 429. The window state sits behind a tokio mutex held across the request, so the
//!   conversations of a pipeline, which share the token, share the window too.
//! - **Fields must be asked for**: `sender_id`, `created_at` and `dm_conversation_id` are not returned by
//!   default. Newer specs dropped `sender_id`/`participant_ids` from the `dm_event.fields` enum; if X
//!   rejects them, requests continue without them (and with the `sender_id`/`participant_ids`
//!   expansions instead), with one warning per process.
//! - **Media URLs** come from `includes.media`, joined on `attachments.media_keys`.
//! - **Only 30 days of history exist**; the end of history is wherever X stops giving a `next_token`.
//! - **Errors** come as problem+json (`type`, `title`, `detail`, `status`) or the legacy
//!   `{"errors":[{"code","message"}]}`; both map to the same [`ErrorClass`]es. Bodies are read to
//!   classify, never echoed.
//! - Credits: X API v2 bills by request tier, not by message; one credit is counted per request so run
//!   reports and budgets stay meaningful.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Once;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Deserialize;

use super::xquik::{http_client, Id};
use super::{ErrorClass, Page, ProviderError, Upload, User, WriteDone, WriteKind, WriteState, PACING};
use crate::config::Pipeline;
use crate::record::{Conversation, Item};

/// Route templates, as they appear in records and logs.
pub const HISTORY_WITH: &str = "GET /2/dm_conversations/with/{participant_id}/dm_events";
pub const HISTORY_CONV: &str = "GET /2/dm_conversations/{dm_conversation_id}/dm_events";
pub const EVENT: &str = "GET /2/dm_events/{event_id}";
pub const DELETE_EVENT: &str = "DELETE /2/dm_events/{event_id}";
pub const USER_BY_ID: &str = "GET /2/users/{id}";
pub const USER_BY_NAME: &str = "GET /2/users/by/username/{username}";
pub const SEND_WITH: &str = "POST /2/dm_conversations/with/{participant_id}/messages";
pub const SEND_CONV: &str = "POST /2/dm_conversations/{dm_conversation_id}/messages";
pub const CREATE_GROUP: &str = "POST /2/dm_conversations";
pub const UPLOAD_MEDIA: &str = "POST /2/media/upload";
pub const MEDIA_STATUS: &str = "GET /2/media/upload";

/// The largest page X serves.
const MAX_RESULTS: &str = "100";
/// Every field a record can use. `sender_id` and `participant_ids` are the ones newer specs dropped.
const FIELDS: &str = "id,text,event_type,created_at,sender_id,dm_conversation_id,attachments,participant_ids";
const EXPANSIONS: &str = "attachments.media_keys";
/// The fallback once X has rejected a field: the expansions bring the IDs back where the fields cannot.
const REDUCED_FIELDS: &str = "id,text,event_type,created_at,dm_conversation_id,attachments";
const REDUCED_EXPANSIONS: &str = "attachments.media_keys,sender_id,participant_ids";
const MEDIA_FIELDS: &str = "media_key,url,preview_image_url,type";
/// Waited past a window's reset before asking again: the reset is in whole seconds and clocks differ.
const RESET_MARGIN: Duration = Duration::from_millis(250);
/// The longest wait a rate-limit reset is taken at (as for `Retry-After` elsewhere).
const MAX_RESET_WAIT: Duration = Duration::from_secs(15 * 60);

/// Process-wide "said it once" flags: these facts are about the provider, not about a conversation.
static FIELDS_WARNING: Once = Once::new();
static RETENTION_NOTE: Once = Once::new();

/// A configured X API v2 client for one pipeline (one user token).
pub struct XApiV2 {
    http: reqwest::Client,
    /// Without a trailing slash, e.g. `https://api.x.com`.
    base: String,
    /// The authenticated user's numeric ID (config `account`): decides direction and the peer of a 1:1.
    account: String,
    /// Rate-limit windows of this token, shared by every conversation of the pipeline (boxed: five
    /// mutexes would make every [`super::Client`] as large as this one).
    limits: Box<Limits>,
    /// Set once X rejected `sender_id`/`participant_ids` in `dm_event.fields`.
    reduced_fields: AtomicBool,
}

/// A message sent into a conversation: X's event ID and the conversation it landed in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sent {
    pub event_id: String,
    pub conversation_id: String,
}

/// What `GET /2/dm_events/{event_id}` says about one event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EventInfo {
    pub event_type: Option<String>,
    pub conversation_id: Option<String>,
    pub sender_id: Option<String>,
}

impl XApiV2 {
    pub fn new(p: &Pipeline, token: &str) -> Result<XApiV2, crate::config::ConfigError> {
        let bearer = format!("Bearer {token}");
        let headers = super::secret_headers(p, reqwest::header::AUTHORIZATION, &bearer, "access token")?;
        Ok(XApiV2 {
            http: http_client(p, headers)?,
            base: p.base_url.clone(),
            account: p.account.clone(),
            limits: Box::default(),
            reduced_fields: AtomicBool::new(false),
        })
    }

    /// The account's numeric user ID.
    pub fn account(&self) -> &str {
        &self.account
    }

    /// One page of a conversation's events, newest first; `cursor` is the previous page's `next_token`.
    pub async fn history(&self, conv: &Conversation, cursor: Option<&str>) -> Result<Page, ProviderError> {
        let (url, endpoint) = match conv {
            Conversation::Peer { user_id, .. } => {
                (format!("{}/2/dm_conversations/with/{user_id}/dm_events", self.base), HISTORY_WITH)
            }
            Conversation::Group { conversation_id } => {
                (format!("{}/2/dm_conversations/{conversation_id}/dm_events", self.base), HISTORY_CONV)
            }
        };
        let body = loop {
            let reduced = self.reduced_fields.load(Ordering::Relaxed);
            let (fields, expansions) =
                if reduced { (REDUCED_FIELDS, REDUCED_EXPANSIONS) } else { (FIELDS, EXPANSIONS) };
            let mut req = self.http.get(&url).query(&[
                ("max_results", MAX_RESULTS),
                ("dm_event.fields", fields),
                ("expansions", expansions),
                ("media.fields", MEDIA_FIELDS),
            ]);
            if let Some(c) = cursor {
                req = req.query(&[("pagination_token", c)]);
            }
            match self.limits.exchange(Bucket::DmRead, endpoint, req).await {
                Err(e) if e.code == UNKNOWN_FIELD && !reduced => {
                    self.reduced_fields.store(true, Ordering::Relaxed);
                    FIELDS_WARNING.call_once(|| {
                        tracing::warn!(endpoint, "X API v2 rejected dm_event.fields sender_id/participant_ids; continuing without them (sender and participants come from expansions instead)");
                    });
                }
                other => break other?,
            }
        };
        let page = parse_events(endpoint, &body)?;
        let items = page
            .events
            .into_iter()
            .map(|e| self.item(conv, e, &page.media))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|what| ProviderError::malformed(endpoint, what))?;
        if page.next_token.is_none() {
            RETENTION_NOTE.call_once(|| {
                tracing::info!("X API v2 keeps 30 days of DM history: a conversation's backfill ends there");
            });
        }
        Ok(Page { items, next_cursor: page.next_token, credits: 1 })
    }

    /// Normalizes one event into an [`Item`]; the error names what is wrong, never a value.
    fn item(&self, conv: &Conversation, e: WireEvent, media: &[WireMedia]) -> Result<Item, &'static str> {
        if !valid_id(&e.id.0) || e.sender_id.as_ref().is_some_and(|s| !valid_id(&s.0)) {
            return Err("an event has an invalid id");
        }
        let sender_id = e.sender_id.map(|s| s.0);
        let event_type = e.event_type.filter(|t| !t.is_empty()).unwrap_or_else(|| "MessageCreate".to_string());
        let (receiver_id, conversation_id) = match conv {
            Conversation::Peer { user_id, conversation_id } => {
                let receiver =
                    sender_id.as_deref().map(|s| if s == user_id { self.account.clone() } else { user_id.clone() });
                let id = e
                    .dm_conversation_id
                    .or_else(|| conversation_id.clone())
                    .or_else(|| one_to_one_id(&self.account, user_id));
                (receiver, id)
            }
            Conversation::Group { conversation_id } => {
                (None, Some(e.dm_conversation_id.unwrap_or_else(|| conversation_id.clone())))
            }
        };
        let media_url = e
            .attachments
            .and_then(|a| a.media_keys)
            .and_then(|keys| {
                keys.into_iter().find_map(|k| media.iter().find(|m| m.media_key.as_deref() == Some(k.as_str())))
            })
            .and_then(|m| m.url.clone().or_else(|| m.preview_image_url.clone()));
        Ok(Item {
            id: e.id.0,
            event_type: Some(event_type),
            sender_id,
            receiver_id,
            created_at: e.created_at,
            text: e.text,
            media_url,
            conversation_id,
            participant_ids: e.participant_ids.map(|ids| ids.into_iter().map(|i| i.0).collect()),
        })
    }

    /// `GET /2/users/{id}` for a numeric ID, else `GET /2/users/by/username/{username}`.
    pub async fn lookup_user(&self, id_or_username: &str) -> Result<User, ProviderError> {
        let who = id_or_username.trim_start_matches('@');
        let (url, endpoint) = if who.bytes().all(|b| b.is_ascii_digit()) && !who.is_empty() {
            (format!("{}/2/users/{who}", self.base), USER_BY_ID)
        } else if !who.is_empty() && who.len() <= 15 && who.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            (format!("{}/2/users/by/username/{who}", self.base), USER_BY_NAME)
        } else {
            return Err(ProviderError::new(
                ErrorClass::Conversation,
                USER_BY_NAME,
                None,
                "invalid_username",
                "not a valid username",
            ));
        };
        let body = self.limits.exchange(Bucket::Users, endpoint, self.http.get(url)).await?;
        let b: DataBody<WireUser> = serde_json::from_slice(&body).map_err(|e| malformed(endpoint, &e))?;
        match b.data {
            Some(u) if valid_id(&u.id.0) => Ok(User { id: u.id.0, username: u.username, name: u.name, can_dm: None }),
            Some(_) => Err(ProviderError::malformed(endpoint, "the user has an invalid id")),
            // X answers a missing user with 200 and a resource-not-found problem.
            None if !b.errors.is_empty() => {
                Err(ProviderError::new(ErrorClass::Conversation, endpoint, Some(200), "user_not_found", "no such user"))
            }
            None => Err(ProviderError::malformed(endpoint, "neither data nor errors")),
        }
    }

    /// `GET /2/dm_events/{event_id}`: which conversation an event belongs to (for `delete`).
    pub async fn event(&self, event_id: &str) -> Result<EventInfo, ProviderError> {
        check_numeric(EVENT, event_id)?;
        let url = format!("{}/2/dm_events/{event_id}", self.base);
        let req =
            self.http.get(url).query(&[("dm_event.fields", "id,event_type,dm_conversation_id,sender_id,created_at")]);
        let body = self.limits.exchange(Bucket::DmRead, EVENT, req).await?;
        let b: DataBody<WireEvent> = serde_json::from_slice(&body).map_err(|e| malformed(EVENT, &e))?;
        match b.data {
            Some(e) => Ok(EventInfo {
                event_type: e.event_type,
                conversation_id: e.dm_conversation_id.filter(|c| valid_conversation_id(c)),
                sender_id: e.sender_id.map(|s| s.0).filter(|s| valid_id(s)),
            }),
            None => Err(ProviderError::new(
                ErrorClass::Conversation,
                EVENT,
                Some(200),
                "event_not_found",
                "no such event for this account (deleted, or older than 30 days)",
            )),
        }
    }

    /// `DELETE /2/dm_events/{event_id}`: deletes the event for the authenticated user only.
    pub async fn delete_event(&self, event_id: &str) -> Result<(), ProviderError> {
        check_numeric(DELETE_EVENT, event_id)?;
        let url = format!("{}/2/dm_events/{event_id}", self.base);
        let body = self.limits.exchange(Bucket::Delete, DELETE_EVENT, self.http.delete(url)).await?;
        // The spec says 200 `{"data":{"deleted":true}}`; generic docs say 204 with no body. Both are success.
        if body.iter().all(u8::is_ascii_whitespace) {
            return Ok(());
        }
        let b: DataBody<Deleted> = serde_json::from_slice(&body).map_err(|e| malformed(DELETE_EVENT, &e))?;
        match b.data {
            Some(Deleted { deleted: true }) => Ok(()),
            _ => Err(ProviderError::new(
                ErrorClass::Conversation,
                DELETE_EVENT,
                Some(200),
                "not_deleted",
                "X did not confirm the deletion; check the event ID",
            )),
        }
    }

    /// `POST /2/dm_conversations/with/{participant_id}/messages` (creates the 1:1 conversation if needed).
    pub async fn send_to_user(&self, to: &str, text: &str, media_id: Option<&str>) -> Result<Sent, ProviderError> {
        check_numeric(SEND_WITH, to)?;
        let url = format!("{}/2/dm_conversations/with/{to}/messages", self.base);
        self.post_message(SEND_WITH, url, message_body(text, media_id)?).await
    }

    /// `POST /2/dm_conversations/{dm_conversation_id}/messages`: an existing 1:1 or group conversation.
    pub async fn send_to_conversation(
        &self,
        conversation_id: &str,
        text: &str,
        media_id: Option<&str>,
    ) -> Result<Sent, ProviderError> {
        if !valid_conversation_id(conversation_id) {
            return Err(ProviderError::new(
                ErrorClass::Conversation,
                SEND_CONV,
                None,
                "invalid_conversation_id",
                "a conversation ID is `<id>-<id>` or a group's numeric ID",
            ));
        }
        let url = format!("{}/2/dm_conversations/{conversation_id}/messages", self.base);
        self.post_message(SEND_CONV, url, message_body(text, media_id)?).await
    }

    /// `POST /2/dm_conversations`: a new group with these participants (2 to 49) and a first message.
    pub async fn create_group(
        &self,
        participants: &[String],
        text: &str,
        media_id: Option<&str>,
    ) -> Result<Sent, ProviderError> {
        if !(2..=49).contains(&participants.len())
            || participants.iter().any(|p| check_numeric(CREATE_GROUP, p).is_err())
        {
            return Err(ProviderError::new(
                ErrorClass::Conversation,
                CREATE_GROUP,
                None,
                "invalid_participants",
                "a group needs 2 to 49 numeric participant IDs",
            ));
        }
        let body = serde_json::json!({
            "conversation_type": "Group",
            "participant_ids": participants,
            "message": message_body(text, media_id)?,
        });
        let url = format!("{}/2/dm_conversations", self.base);
        self.post_message(CREATE_GROUP, url, body).await
    }

    async fn post_message(
        &self,
        endpoint: &'static str,
        url: String,
        body: serde_json::Value,
    ) -> Result<Sent, ProviderError> {
        let answer = self.limits.exchange(Bucket::DmWrite, endpoint, self.http.post(url).json(&body)).await?;
        let b: DataBody<WireSent> = serde_json::from_slice(&answer).map_err(|e| malformed(endpoint, &e))?;
        match b.data {
            Some(s) if valid_id(&s.dm_event_id.0) && valid_conversation_id(&s.dm_conversation_id) => {
                Ok(Sent { event_id: s.dm_event_id.0, conversation_id: s.dm_conversation_id })
            }
            _ => Err(ProviderError::new(
                ErrorClass::Malformed,
                endpoint,
                Some(201),
                "malformed_response",
                "a send without a valid dm_event_id and dm_conversation_id",
            )),
        }
    }

    /// A DM to a user, in the shape outbound sends use. X API v2 has no idempotency key: the key is not sent.
    pub async fn send_dm(&self, to: &str, text: &str, media_id: Option<&str>) -> Result<WriteState, ProviderError> {
        let sent = self.send_to_user(to, text, media_id).await?;
        Ok(WriteState::Done(WriteDone { id: sent.event_id, url: None, at: None }))
    }

    /// `POST /2/media/upload` (multipart, one request) with a `dm_*` category from the file's type.
    pub async fn upload_media(&self, upload: &Upload) -> Result<WriteState, ProviderError> {
        let Upload::File { name, mime, bytes } = upload else {
            return Err(ProviderError::new(
                ErrorClass::Conversation,
                UPLOAD_MEDIA,
                None,
                "url_upload_unsupported",
                "X API v2 uploads the file itself; download the media and give its path",
            ));
        };
        let part = super::file_part(UPLOAD_MEDIA, name, mime, bytes)?;
        let form = reqwest::multipart::Form::new().text("media_category", media_category(mime)).part("media", part);
        let url = format!("{}/2/media/upload", self.base);
        let body = self.limits.exchange(Bucket::Media, UPLOAD_MEDIA, self.http.post(url).multipart(form)).await?;
        media_state(UPLOAD_MEDIA, &body)
    }

    /// A write the provider has not finished: only media processing (videos) can be, polled with
    /// `GET /2/media/upload?command=STATUS&media_id=`. Sends are final when answered.
    pub async fn write_action(&self, action: &str, kind: WriteKind) -> Result<WriteState, ProviderError> {
        if kind == WriteKind::DirectMessage {
            return Err(ProviderError::new(
                ErrorClass::Conversation,
                SEND_WITH,
                None,
                "nothing_to_poll",
                "X API v2 sends are final when answered",
            ));
        }
        check_numeric(MEDIA_STATUS, action)?;
        let url = format!("{}/2/media/upload", self.base);
        let req = self.http.get(url).query(&[("command", "STATUS"), ("media_id", action)]);
        let body = self.limits.exchange(Bucket::Media, MEDIA_STATUS, req).await?;
        media_state(MEDIA_STATUS, &body)
    }
}

/// The 1:1 conversation ID X (and GetXAPI) use: `"<smaller>-<larger>"` of the two numeric user IDs.
pub fn one_to_one_id(a: &str, b: &str) -> Option<String> {
    let (x, y) = (a.parse::<u64>().ok()?, b.parse::<u64>().ok()?);
    Some(format!("{}-{}", x.min(y), x.max(y)))
}

/// `dm_image`, `dm_gif` or `dm_video`, the categories a DM attachment must be uploaded with.
pub fn media_category(mime: &str) -> &'static str {
    match mime {
        "image/gif" => "dm_gif",
        m if m.starts_with("video/") => "dm_video",
        _ => "dm_image",
    }
}

fn message_body(text: &str, media_id: Option<&str>) -> Result<serde_json::Value, ProviderError> {
    let mut body = serde_json::json!({ "text": text });
    if let Some(m) = media_id {
        check_numeric(SEND_WITH, m)?;
        body["attachments"] = serde_json::json!([{ "media_id": m }]);
    }
    Ok(body)
}

/// An upload answer: done, still processing (poll again), or failed.
fn media_state(endpoint: &'static str, body: &[u8]) -> Result<WriteState, ProviderError> {
    let b: DataBody<WireMedia> = serde_json::from_slice(body).map_err(|e| malformed(endpoint, &e))?;
    let Some(m) = b.data else {
        return Err(ProviderError::malformed(endpoint, "an upload answer without data"));
    };
    let Some(id) = m.id.filter(|i| valid_id(&i.0)) else {
        return Err(ProviderError::malformed(endpoint, "an upload answer without a valid media id"));
    };
    let processing = m.processing_info.unwrap_or_default();
    match processing.state.as_deref() {
        Some("pending" | "in_progress") => {
            let after = Duration::from_secs(processing.check_after_secs.unwrap_or(1).min(60));
            Ok(WriteState::Pending { action: id.0, after })
        }
        Some("failed") => Ok(WriteState::Failed { code: "media_processing_failed".into(), safe_to_retry: true }),
        _ => Ok(WriteState::Done(WriteDone { id: id.0, url: None, at: None })),
    }
}

fn check_numeric(endpoint: &'static str, id: &str) -> Result<(), ProviderError> {
    if !id.is_empty() && id.len() <= 19 && id.bytes().all(|b| b.is_ascii_digit()) {
        Ok(())
    } else {
        Err(ProviderError::new(
            ErrorClass::Conversation,
            endpoint,
            None,
            "invalid_id",
            "IDs are numeric (1 to 19 digits)",
        ))
    }
}

/// X's pattern for a conversation ID: `^([0-9]{1,19}-[0-9]{1,19}|[0-9]{15,19})$`.
pub fn valid_conversation_id(id: &str) -> bool {
    let digits = |s: &str, min: usize| (min..=19).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_digit());
    match id.split_once('-') {
        Some((a, b)) => digits(a, 1) && digits(b, 1),
        None => digits(id, 15),
    }
}

/// IDs become sled key parts: keep them to a safe alphabet.
pub(super) fn valid_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

pub(super) fn malformed(endpoint: &'static str, e: &serde_json::Error) -> ProviderError {
    // serde's category, never its message: that can quote a value.
    let what = match e.classify() {
        serde_json::error::Category::Io => "I/O",
        serde_json::error::Category::Syntax => "invalid JSON",
        serde_json::error::Category::Data => "wrong shape",
        serde_json::error::Category::Eof => "truncated",
    };
    ProviderError::malformed(endpoint, format!("the body is not the documented JSON ({what})"))
}

// ---------------------------------------------------------------------------------------------
// Rate limits

/// The endpoint families X counts separately, per user (PROVIDERS.md section 3, rate limits).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Bucket {
    /// Every DM event read: 15 per 15 minutes.
    DmRead = 0,
    /// Message sends and group creation: 15 per 15 minutes (and 1,440 a day).
    DmWrite = 1,
    Delete = 2,
    Media = 3,
    Users = 4,
}

/// What X last said about one window, adjusted for the requests sent since.
#[derive(Debug, Default)]
struct Window {
    /// Requests left before the reset; None until a response says.
    remaining: Option<u32>,
    /// When the window resets, on our clock.
    reset: Option<SystemTime>,
}

impl Window {
    /// How long to hold the next request, if it would exceed the window.
    fn wait(&self, now: SystemTime) -> Option<Duration> {
        if self.remaining != Some(0) {
            return None;
        }
        let until = self.reset?.duration_since(now).ok()?;
        Some((until + RESET_MARGIN).min(MAX_RESET_WAIT))
    }

    /// Takes in a response's `x-rate-limit-remaining` and `x-rate-limit-reset` (Unix seconds).
    fn observe(&mut self, headers: &reqwest::header::HeaderMap, now: SystemTime) {
        let num =
            |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).and_then(|v| v.trim().parse::<u64>().ok());
        if let Some(r) = num("x-rate-limit-remaining") {
            self.remaining = Some(u32::try_from(r).unwrap_or(u32::MAX));
        }
        if let Some(reset) = num("x-rate-limit-reset") {
            // A reset far in the future (a skewed clock, a daily cap) is held to the clamp, never beyond.
            let at = UNIX_EPOCH + Duration::from_secs(reset);
            self.reset = Some(at.min(now + MAX_RESET_WAIT));
        }
    }

    /// After a 429: how long until the window resets, never negative and at least a second (our clock
    /// may run ahead of X's), at most the clamp.
    fn retry_after(&self, now: SystemTime) -> Option<Duration> {
        let reset = self.reset?;
        let until = reset.duration_since(now).unwrap_or(Duration::ZERO) + RESET_MARGIN;
        Some(until.clamp(Duration::from_secs(1), MAX_RESET_WAIT))
    }
}

/// One window per bucket. Each sits behind a tokio mutex that is held across its request, so requests
/// of one bucket go one at a time and every one sees what the previous answer said.
#[derive(Default)]
struct Limits {
    windows: [tokio::sync::Mutex<Window>; 5],
}

const UNKNOWN_FIELD: &str = "unknown_field";

impl Limits {
    /// Sends `req` unless the window is spent (then fails at once with the wait as `retry_after`), records
    /// what the response says about the window, and returns the body of a 2xx or the classified error.
    async fn exchange(
        &self,
        bucket: Bucket,
        endpoint: &'static str,
        req: reqwest::RequestBuilder,
    ) -> Result<bytes::Bytes, ProviderError> {
        let mut w = self.windows[bucket as usize].lock().await;
        if let Some(wait) = w.wait(SystemTime::now()) {
            tracing::info!(
                endpoint,
                wait_ms = wait.as_millis() as u64,
                "X API v2 rate limit: pacing until the window resets"
            );
            return Err(ProviderError {
                retry_after: Some(wait),
                ..ProviderError::new(
                    ErrorClass::Transient,
                    endpoint,
                    None,
                    PACING,
                    "waiting for the X API rate-limit window to reset",
                )
            });
        }
        if let Some(r) = w.remaining.as_mut() {
            *r = r.saturating_sub(1);
        }
        let resp = req.send().await.map_err(|e| ProviderError::transport(endpoint, &e))?;
        let status = resp.status().as_u16();
        w.observe(resp.headers(), SystemTime::now());
        let retry_after_header = super::retry_after_header(resp.headers());
        let body = resp.bytes().await.map_err(|e| ProviderError::transport(endpoint, &e))?;
        if (200..300).contains(&status) {
            return Ok(body);
        }
        if status == 429 {
            w.remaining = Some(0);
        }
        let wait =
            if status == 429 { w.retry_after(SystemTime::now()).or(retry_after_header) } else { retry_after_header };
        Err(classify(endpoint, status, &body, wait))
    }
}

// ---------------------------------------------------------------------------------------------
// Errors

/// Maps an X API v2 error (problem+json or legacy `errors[]`) to its class, per SPEC section 5.
pub(crate) fn classify(
    endpoint: &'static str,
    status: u16,
    body: &[u8],
    retry_after: Option<Duration>,
) -> ProviderError {
    let p = ProblemBody::parse(body);
    // X's 401 is a bare `about:blank` problem; name it like the other providers' code for it.
    let fallback = if status == 401 { "unauthenticated".to_string() } else { format!("http_{status}") };
    let code = p.code().unwrap_or(fallback);
    use ErrorClass::*;
    let (class, code, hint) = match status {
        429 => (Transient, code, "rate limited by X; waiting until the window resets"),
        502..=504 => (Transient, code, "X is unavailable; will retry"),
        401 => (Fatal, code, "X rejected the access token (expired or revoked); put a fresh OAuth 2.0 user token in the pipeline's api_key_env / api_key_file"),
        403 if p.about_credentials() => (Fatal, code, "the token or app may not do this: it needs the dm.read, dm.write, tweet.read and users.read scopes (media.write to upload) and DM access for the app"),
        403 => (Conversation, code, "X does not let this account read or message this conversation"),
        404 => (Conversation, code, "not found: the conversation or event does not exist for this account, or is older than 30 days"),
        400 if p.names_a_field() => (Conversation, UNKNOWN_FIELD.to_string(), "X rejected a requested field"),
        400 => (Conversation, code, "X rejected the request"),
        _ => (Conversation, code, "unexpected response from X"),
    };
    ProviderError {
        retry_after: if class == Transient { retry_after } else { None },
        ..ProviderError::new(class, endpoint, Some(status), code, hint)
    }
}

/// The parts of either error shape we read. `detail`, `title` and `message` are only searched for a few
/// words to classify; they never reach an error message or a log.
#[derive(Default, Deserialize)]
struct ProblemBody {
    #[serde(default, rename = "type")]
    kind: Option<String>,
    #[serde(default)]
    title: Option<String>,
    #[serde(default)]
    detail: Option<String>,
    #[serde(default)]
    errors: Vec<LegacyError>,
}

#[derive(Default, Deserialize)]
struct LegacyError {
    #[serde(default)]
    code: Option<i64>,
    #[serde(default)]
    message: Option<String>,
    #[serde(default, rename = "type")]
    kind: Option<String>,
    #[serde(default)]
    detail: Option<String>,
    #[serde(default)]
    parameter: Option<String>,
}

impl ProblemBody {
    fn parse(body: &[u8]) -> ProblemBody {
        serde_json::from_slice(body).unwrap_or_default()
    }

    /// `not_authorized_for_resource` from a problem type URI, or `x_88` from a legacy code.
    fn code(&self) -> Option<String> {
        let from_type = |t: &str| {
            let last = t.trim_end_matches('/').rsplit('/').next().unwrap_or_default();
            (last != "about:blank"
                && !last.is_empty()
                && last.len() <= 64
                && last.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'))
            .then(|| last.replace('-', "_"))
        };
        self.kind
            .as_deref()
            .and_then(from_type)
            .or_else(|| self.errors.iter().find_map(|e| e.kind.as_deref().and_then(from_type)))
            .or_else(|| self.errors.iter().find_map(|e| e.code).map(|c| format!("x_{c}")))
    }

    fn texts(&self) -> impl Iterator<Item = String> + '_ {
        [self.title.as_deref(), self.detail.as_deref(), self.kind.as_deref()]
            .into_iter()
            .chain(
                self.errors.iter().flat_map(|e| {
                    [e.message.as_deref(), e.detail.as_deref(), e.kind.as_deref(), e.parameter.as_deref()]
                }),
            )
            .flatten()
            .map(str::to_ascii_lowercase)
    }

    /// A 403 about the token, its scopes or the app's access, rather than about this conversation.
    fn about_credentials(&self) -> bool {
        const CODES: [i64; 5] = [32, 89, 220, 261, 453];
        self.errors.iter().any(|e| e.code.is_some_and(|c| CODES.contains(&c)))
            || self.texts().any(|t| {
                [
                    "scope",
                    "token",
                    "oauth",
                    "authenticat",
                    "client-forbidden",
                    "unsupported-authentication",
                    "access level",
                    "client application",
                ]
                .iter()
                .any(|w| t.contains(w))
            })
    }

    /// A 400 that names one of the fields or expansions we asked for.
    fn names_a_field(&self) -> bool {
        self.texts().any(|t| {
            t.contains("dm_event.fields")
                || t.contains("sender_id")
                || t.contains("participant_ids")
                || t.contains("expansions")
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Wire shapes

/// A page of events, reduced to what [`XApiV2::item`] needs.
struct EventsPage {
    events: Vec<WireEvent>,
    media: Vec<WireMedia>,
    next_token: Option<String>,
}

/// Reads a dm_events page. `meta` is required (X always sends it on list endpoints, also when empty), so
/// a body of another shape is malformed rather than an empty last page. A 200 with only `errors` is X's
/// way to say the conversation cannot be read.
fn parse_events(endpoint: &'static str, body: &[u8]) -> Result<EventsPage, ProviderError> {
    let b: EventsBody = serde_json::from_slice(body).map_err(|e| malformed(endpoint, &e))?;
    let Some(meta) = b.meta else {
        if b.data.is_none() && !b.errors.is_empty() {
            let p = ProblemBody { errors: b.errors, ..ProblemBody::default() };
            let code = p.code().unwrap_or_else(|| "partial_error".into());
            return Err(ProviderError::new(
                ErrorClass::Conversation,
                endpoint,
                Some(200),
                code,
                "X returned no events, only errors, for this conversation",
            ));
        }
        return Err(ProviderError::malformed(endpoint, "the body has no meta"));
    };
    if !b.errors.is_empty() {
        tracing::debug!(endpoint, partial_errors = b.errors.len(), "X returned events with partial errors");
    }
    Ok(EventsPage {
        events: b.data.unwrap_or_default(),
        media: b.includes.and_then(|i| i.media).unwrap_or_default(),
        next_token: meta.next_token.filter(|t| !t.is_empty()),
    })
}

#[derive(Deserialize)]
struct EventsBody {
    #[serde(default)]
    data: Option<Vec<WireEvent>>,
    #[serde(default)]
    includes: Option<Includes>,
    #[serde(default)]
    meta: Option<Meta>,
    #[serde(default)]
    errors: Vec<LegacyError>,
}

#[derive(Deserialize)]
struct WireEvent {
    id: Id,
    #[serde(default)]
    event_type: Option<String>,
    #[serde(default)]
    text: Option<String>,
    #[serde(default)]
    sender_id: Option<Id>,
    #[serde(default)]
    created_at: Option<String>,
    #[serde(default)]
    dm_conversation_id: Option<String>,
    #[serde(default)]
    participant_ids: Option<Vec<Id>>,
    #[serde(default)]
    attachments: Option<Attachments>,
}

#[derive(Deserialize)]
struct Attachments {
    #[serde(default)]
    media_keys: Option<Vec<String>>,
}

#[derive(Deserialize)]
struct Includes {
    #[serde(default)]
    media: Option<Vec<WireMedia>>,
}

#[derive(Default, Deserialize)]
struct WireMedia {
    /// Set in upload answers.
    #[serde(default)]
    id: Option<Id>,
    #[serde(default)]
    media_key: Option<String>,
    #[serde(default)]
    url: Option<String>,
    #[serde(default)]
    preview_image_url: Option<String>,
    #[serde(default)]
    processing_info: Option<Processing>,
}

#[derive(Default, Deserialize)]
struct Processing {
    #[serde(default)]
    state: Option<String>,
    #[serde(default)]
    check_after_secs: Option<u64>,
}

#[derive(Deserialize)]
struct Meta {
    #[serde(default)]
    next_token: Option<String>,
}

#[derive(Deserialize)]
struct DataBody<T> {
    #[serde(default = "none")]
    data: Option<T>,
    #[serde(default)]
    errors: Vec<LegacyError>,
}

fn none<T>() -> Option<T> {
    None
}

#[derive(Deserialize)]
struct WireUser {
    id: Id,
    #[serde(default)]
    username: String,
    #[serde(default)]
    name: String,
}

#[derive(Deserialize)]
struct WireSent {
    dm_event_id: Id,
    dm_conversation_id: String,
}

#[derive(Deserialize)]
struct Deleted {
    #[serde(default)]
    deleted: bool,
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::{HeaderMap, HeaderValue};

    fn peer(id: &str) -> Conversation {
        Conversation::Peer { user_id: id.into(), conversation_id: None }
    }

    fn client() -> XApiV2 {
        let p = crate::config::from_str(
            "[[pipelines]]\nname = \"x\"\nprovider = \"x-api-v2\"\napi_key_env = \"X_TOKEN\"\naccount = \"100\"\nconversations = [\"44196397\"]\n",
            std::path::Path::new("/t/p.toml"),
            std::path::Path::new("/t"),
        )
        .unwrap()
        .pipelines
        .remove(0);
        XApiV2::new(&p, "secret-token").unwrap()
    }

    #[test]
    fn a_page_becomes_items_with_media_direction_and_conversation() {
        let body = br#"{"data":[
            {"id":"1582838499983564806","event_type":"MessageCreate","text":"Hi","sender_id":"44196397",
             "created_at":"2022-10-19T20:58:00.000Z","attachments":{"media_keys":["3_9"],"card_ids":[]}},
            {"id":"1582838499983564807","event_type":"MessageCreate","text":"Yo","sender_id":"100","dm_conversation_id":"100-44196397"}],
            "includes":{"media":[{"media_key":"3_9","type":"photo","url":"https://pbs.twimg.com/dm_media/9.jpg"}]},
            "meta":{"result_count":2,"next_token":"18LAA581J5II7LA00C00ZZZZ"}}"#;
        let page = parse_events(HISTORY_WITH, body).unwrap();
        assert_eq!(page.next_token.as_deref(), Some("18LAA581J5II7LA00C00ZZZZ"));
        let c = client();
        let items: Vec<Item> =
            page.events.into_iter().map(|e| c.item(&peer("44196397"), e, &page.media).unwrap()).collect();
        assert_eq!(items[0].receiver_id.as_deref(), Some("100"));
        assert_eq!(items[0].conversation_id.as_deref(), Some("100-44196397"), "computed when not returned");
        assert_eq!(items[0].media_url.as_deref(), Some("https://pbs.twimg.com/dm_media/9.jpg"));
        assert_eq!(items[1].receiver_id.as_deref(), Some("44196397"));
        assert_eq!(items[1].event_type.as_deref(), Some("MessageCreate"));
    }

    #[test]
    fn join_and_leave_events_keep_their_participants() {
        let body = br#"{"data":[{"id":"5","event_type":"ParticipantsJoin","participant_ids":["7",8],"sender_id":"100"},
            {"id":"6","event_type":"ParticipantsLeave","participant_ids":["7"]}],"meta":{"result_count":2}}"#;
        let page = parse_events(HISTORY_CONV, body).unwrap();
        assert_eq!(page.next_token, None);
        let c = client();
        let conv = Conversation::Group { conversation_id: "1578398451921985538".into() };
        let items: Vec<Item> = page.events.into_iter().map(|e| c.item(&conv, e, &[]).unwrap()).collect();
        assert_eq!(items[0].participant_ids, Some(vec!["7".to_string(), "8".to_string()]));
        assert_eq!(items[1].event_type.as_deref(), Some("ParticipantsLeave"));
        assert_eq!(items[1].conversation_id.as_deref(), Some("1578398451921985538"));
        assert_eq!(items[1].receiver_id, None);
    }

    #[test]
    fn empty_pages_other_shapes_and_error_only_answers() {
        assert!(parse_events(HISTORY_WITH, br#"{"meta":{"result_count":0}}"#).unwrap().events.is_empty());
        assert_eq!(parse_events(HISTORY_WITH, br#"{"messages":[]}"#).err().unwrap().class, ErrorClass::Malformed);
        assert_eq!(parse_events(HISTORY_WITH, b"<html>").err().unwrap().class, ErrorClass::Malformed);
        let e = parse_events(
            HISTORY_CONV,
            br#"{"errors":[{"type":"https://api.x.com/2/problems/resource-not-found","detail":"secret"}]}"#,
        )
        .err()
        .unwrap();
        assert_eq!((e.class, e.code.as_str()), (ErrorClass::Conversation, "resource_not_found"));
        assert!(!e.to_string().contains("secret"));
    }

    #[test]
    fn both_error_shapes_map_to_the_same_classes() {
        let problem = |status: u16, kind: &str, detail: &str| {
            format!(
                r#"{{"title":"t","type":"https://api.x.com/2/problems/{kind}","status":{status},"detail":"{detail}"}}"#
            )
        };
        let e = classify(
            HISTORY_WITH,
            401,
            br#"{"title":"Unauthorized","type":"about:blank","status":401,"detail":"Unauthorized"}"#,
            None,
        );
        assert_eq!((e.class, e.code.as_str()), (ErrorClass::Fatal, "unauthenticated"));
        let e = classify(
            HISTORY_WITH,
            403,
            problem(403, "not-authorized-for-resource", "You cannot view this conversation").as_bytes(),
            None,
        );
        assert_eq!(e.class, ErrorClass::Conversation);
        let e = classify(HISTORY_WITH, 403, problem(403, "client-forbidden", "app not attached").as_bytes(), None);
        assert_eq!(e.class, ErrorClass::Fatal);
        let e = classify(
            SEND_WITH,
            403,
            br#"{"errors":[{"code":453,"message":"You currently have access to a subset"}]}"#,
            None,
        );
        assert_eq!((e.class, e.code.as_str()), (ErrorClass::Fatal, "x_453"));
        let e = classify(
            HISTORY_WITH,
            403,
            br#"{"title":"Forbidden","detail":"Missing scope dm.read","type":"about:blank","status":403}"#,
            None,
        );
        assert_eq!(e.class, ErrorClass::Fatal);
        let e = classify(HISTORY_WITH, 404, problem(404, "resource-not-found", "x").as_bytes(), None);
        assert_eq!((e.class, e.code.as_str()), (ErrorClass::Conversation, "resource_not_found"));
        let e = classify(
            HISTORY_WITH,
            429,
            br#"{"errors":[{"code":88,"message":"Rate limit exceeded"}]}"#,
            Some(Duration::from_secs(3)),
        );
        assert_eq!(
            (e.class, e.code.as_str(), e.retry_after),
            (ErrorClass::Transient, "x_88", Some(Duration::from_secs(3)))
        );
        let e = classify(HISTORY_WITH, 429, problem(429, "rate-limit-exceeded", "").as_bytes(), None);
        assert_eq!((e.class, e.code.as_str()), (ErrorClass::Transient, "rate_limit_exceeded"));
        for s in [502, 503, 504] {
            assert_eq!(classify(HISTORY_WITH, s, b"", None).class, ErrorClass::Transient);
        }
        for s in [400, 401, 402, 403, 404, 409, 422, 500] {
            assert_ne!(classify(HISTORY_WITH, s, b"{}", None).class, ErrorClass::Transient, "{s}");
        }
        let e = classify(HISTORY_WITH, 400, br#"{"errors":[{"parameters":{},"message":"The `dm_event.fields` query parameter value [sender_id] is not one of [id,text]"}],"title":"Invalid Request","detail":"One or more parameters to your request was invalid.","type":"https://api.x.com/2/problems/invalid-request"}"#, None);
        assert_eq!(e.code, UNKNOWN_FIELD);
    }

    #[tokio::test(start_paused = true)]
    async fn waiting_for_a_window_is_not_a_failed_attempt() {
        let policy = crate::config::RetryPolicy {
            request_timeout: Duration::from_secs(5),
            max_retries: 2,
            base: Duration::from_millis(10),
            max: Duration::from_millis(100),
        };
        let cancel = tokio_util::sync::CancellationToken::new();
        let mut calls = 0;
        let r: Result<u32, _> = super::super::with_retry(&policy, &cancel, || {
            calls += 1;
            let c = calls;
            async move {
                match c {
                    1..=5 => Err(ProviderError {
                        retry_after: Some(Duration::from_secs(60)),
                        ..ProviderError::new(ErrorClass::Transient, HISTORY_WITH, None, PACING, "h")
                    }),
                    6 => Err(ProviderError::new(ErrorClass::Transient, HISTORY_WITH, Some(503), "http_503", "h")),
                    _ => Ok(c),
                }
            }
        })
        .await;
        assert_eq!(r.unwrap(), 7, "five window waits and one 503 within two retries");
    }

    #[test]
    fn windows_pace_before_the_limit_and_wait_at_least_a_second_after_a_429() {
        let now = UNIX_EPOCH + Duration::from_secs(1_000);
        let mut headers = HeaderMap::new();
        headers.insert("x-rate-limit-remaining", HeaderValue::from_static("0"));
        headers.insert("x-rate-limit-reset", HeaderValue::from_static("1003"));
        let mut w = Window::default();
        assert_eq!(w.wait(now), None, "nothing known yet");
        w.observe(&headers, now);
        assert_eq!(w.wait(now), Some(Duration::from_secs(3) + RESET_MARGIN));
        assert_eq!(w.wait(now + Duration::from_secs(4)), None, "the window has reset");
        // Our clock ahead of X's: the reset looks past; a 429 still waits a second.
        assert_eq!(w.retry_after(now + Duration::from_secs(10)), Some(Duration::from_secs(1)));
        // A reset a day away is held to the clamp.
        headers.insert("x-rate-limit-reset", HeaderValue::from_static("90000"));
        w.observe(&headers, now);
        assert_eq!(w.wait(now), Some(MAX_RESET_WAIT));
        assert_eq!(w.retry_after(now), Some(MAX_RESET_WAIT));
        headers.insert("x-rate-limit-remaining", HeaderValue::from_static("4"));
        w.observe(&headers, now);
        assert_eq!(w.wait(now), None);
    }

    #[test]
    fn ids_categories_and_upload_answers() {
        assert_eq!(one_to_one_id("987654321", "44196397").as_deref(), Some("44196397-987654321"));
        assert_eq!(one_to_one_id("9", "10").as_deref(), Some("9-10"), "numeric, not lexicographic");
        assert!(valid_conversation_id("44196397-987654321") && valid_conversation_id("1578398451921985538"));
        assert!(!valid_conversation_id("12") && !valid_conversation_id("1-2-3") && !valid_conversation_id("a-1"));
        assert_eq!(
            (media_category("image/png"), media_category("image/gif"), media_category("video/mp4")),
            ("dm_image", "dm_gif", "dm_video")
        );
        let done = media_state(
            UPLOAD_MEDIA,
            br#"{"data":{"id":"1583157113245011970","media_key":"3_1583157113245011970","size":10}}"#,
        );
        assert_eq!(
            done.unwrap(),
            WriteState::Done(WriteDone { id: "1583157113245011970".into(), url: None, at: None })
        );
        let pending = media_state(
            UPLOAD_MEDIA,
            br#"{"data":{"id":"7","processing_info":{"state":"in_progress","check_after_secs":2}}}"#,
        );
        assert_eq!(pending.unwrap(), WriteState::Pending { action: "7".into(), after: Duration::from_secs(2) });
        assert_eq!(media_state(UPLOAD_MEDIA, br#"{"data":{}}"#).unwrap_err().class, ErrorClass::Malformed);
    }
}
