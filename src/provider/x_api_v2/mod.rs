//! The official X API v2 adapter (PROVIDERS.md section 3): DM history of a 1:1 conversation
//! (`GET /2/dm_conversations/with/{participant_id}/dm_events`) or of any conversation by ID
//! (`GET /2/dm_conversations/{dm_conversation_id}/dm_events`), user lookup, sends to a peer, to a
//! conversation and to a new group, media upload for DMs, reading and deleting one event.
//!
//! What is particular to this provider, and handled here so the engine never knows:
//! - **Rate limits are tiny** (15 DM reads per 15 minutes per user). Every response's
//!   `x-rate-limit-remaining`/`x-rate-limit-reset` is remembered per endpoint family (`Bucket`), and a
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
use std::time::Duration;

mod auth;
mod errors;
mod inbox;
mod limits;
mod wire;

use auth::Auth;
pub use inbox::INBOX;

use errors::UNKNOWN_FIELD;
use limits::{Bucket, Limits};
use wire::{parse_events, DataBody, Deleted, WireEvent, WireMedia, WireSent, WireUser};

use crate::config::Pipeline;
use crate::ids::{is_conversation_id, is_numeric_id, is_safe_id, one_to_one_id};
use crate::provider::util::{http_client, parse_item, Http};
use crate::provider::{
    ErrorClass, EventInfo, Page, ProviderError, Sent, Upload, User, WriteDone, WriteKind, WriteState,
};
use crate::record::{Conversation, Item, Unparsed};

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
/// Process-wide "said it once" flags: these facts are about the provider, not about a conversation.
static FIELDS_WARNING: Once = Once::new();
static RETENTION_NOTE: Once = Once::new();

/// A configured X API v2 client for one pipeline (one user token).
pub struct XApiV2 {
    http: Http,
    /// Where each request's bearer token comes from: a fixed key, or OAuth tokens that renew themselves.
    auth: Auth,
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

impl XApiV2 {
    /// A client that sends a fixed access token (`api_key_env` / `api_key_file`).
    pub fn new(p: &Pipeline, token: &str) -> Result<XApiV2, crate::config::ConfigError> {
        let bearer = format!("Bearer {token}");
        let headers =
            crate::provider::util::secret_headers(p, reqwest::header::AUTHORIZATION, &bearer, "access token")?;
        let header = headers.get(reqwest::header::AUTHORIZATION).cloned();
        XApiV2::build(p, Auth::Static(header))
    }

    /// A client whose access token comes from `tokens` and renews itself (`oauth_client_id`, SPEC 8.1).
    pub fn with_tokens(
        p: &Pipeline,
        tokens: crate::provider::oauth::TokenSource,
    ) -> Result<XApiV2, crate::config::ConfigError> {
        XApiV2::build(p, Auth::OAuth(Box::new(tokens)))
    }

    fn build(p: &Pipeline, auth: Auth) -> Result<XApiV2, crate::config::ConfigError> {
        Ok(XApiV2 {
            http: http_client(p, reqwest::header::HeaderMap::new())?,
            auth,
            base: p.base_url.clone(),
            account: p.account.clone(),
            limits: Box::new(Limits { max_body: p.max_response_bytes, ..Limits::default() }),
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
        let cursor = cursor.map(|c| ("pagination_token", c));
        let body = self.read_events(endpoint, &url, &[("max_results", MAX_RESULTS)], cursor).await?;
        let page = parse_events(endpoint, &body)?;
        let mut items = Vec::with_capacity(page.events.len());
        let mut unparsed = Vec::new();
        for raw in page.events {
            match self.entry(conv, raw, &page.media) {
                Ok(item) => items.push(item),
                Err(reason) => unparsed.push(Unparsed { reason, raw: raw.to_owned() }),
            }
        }
        if page.next_token.is_none() {
            RETENTION_NOTE.call_once(|| {
                tracing::info!("X API v2 keeps 30 days of DM history: a conversation's backfill ends there");
            });
        }
        Ok(Page { items, unparsed, next_cursor: page.next_token, credits: 1 })
    }

    /// One event of a page as an [`Item`], or why it cannot be one (the caller keeps it as received).
    fn entry(
        &self,
        conv: &Conversation,
        raw: &serde_json::value::RawValue,
        media: &[WireMedia],
    ) -> Result<Item, String> {
        let e: WireEvent = parse_item(raw)?;
        self.item(conv, e, media).map_err(str::to_string)
    }

    /// A GET of DM events with every field a record can use. If X rejects `sender_id`/`participant_ids` in
    /// `dm_event.fields` (newer specs dropped them from the enum), this and every later request of the
    /// pipeline asks without them and with the `sender_id`/`participant_ids` expansions instead; one warning
    /// per process says so. History, the event lookup and the inbox stream all read through here.
    async fn read_events(
        &self,
        endpoint: &'static str,
        url: &str,
        query: &[(&str, &str)],
        cursor: Option<(&str, &str)>,
    ) -> Result<bytes::Bytes, ProviderError> {
        loop {
            let reduced = self.reduced_fields.load(Ordering::Relaxed);
            let (fields, expansions) =
                if reduced { (REDUCED_FIELDS, REDUCED_EXPANSIONS) } else { (FIELDS, EXPANSIONS) };
            let build = || {
                let req = self.http.get(url).query(query).query(&[
                    ("dm_event.fields", fields),
                    ("expansions", expansions),
                    ("media.fields", MEDIA_FIELDS),
                ]);
                match cursor {
                    Some(c) => req.query(&[c]),
                    None => req,
                }
            };
            match self.call(Bucket::DmRead, endpoint, build).await {
                Err(e) if e.code == UNKNOWN_FIELD && !reduced => {
                    self.reduced_fields.store(true, Ordering::Relaxed);
                    FIELDS_WARNING.call_once(|| {
                        tracing::warn!(endpoint, "X API v2 rejected dm_event.fields sender_id/participant_ids; continuing without them (sender and participants come from expansions instead)");
                    });
                }
                other => return other,
            }
        }
    }

    /// Normalizes one event into an [`Item`]; the error names what is wrong, never a value.
    fn item(&self, conv: &Conversation, e: WireEvent, media: &[WireMedia]) -> Result<Item, &'static str> {
        if !is_safe_id(&e.id.0) || e.sender_id.as_ref().is_some_and(|s| !is_safe_id(&s.0)) {
            return Err("id or sender_id is not a usable ID");
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
            created_at: e.created_at.map(|t| t.0),
            text: e.text,
            media_url,
            conversation_id,
            participant_ids: e.participant_ids.map(|ids| ids.into_iter().map(|i| i.0).collect()),
        })
    }

    /// `GET /2/users/{id}` for a numeric ID, else `GET /2/users/by/username/{username}`.
    pub async fn lookup_user(&self, id_or_username: &str) -> Result<User, ProviderError> {
        let who = id_or_username.trim_start_matches('@');
        let (url, endpoint) = if is_numeric_id(who) {
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
        let body = self.call(Bucket::Users, endpoint, || self.http.get(&url)).await?;
        let b: DataBody<WireUser> = serde_json::from_slice(&body).map_err(|e| ProviderError::bad_json(endpoint, &e))?;
        match b.data {
            Some(u) if is_safe_id(&u.id.0) => Ok(User { id: u.id.0, username: u.username, name: u.name, can_dm: None }),
            Some(_) => Err(ProviderError::malformed(endpoint, "the user has an invalid id")),
            // X answers a missing user with 200 and a resource-not-found problem.
            None if !b.errors.is_empty() => {
                Err(ProviderError::new(ErrorClass::Conversation, endpoint, Some(200), "user_not_found", "no such user"))
            }
            None => Err(ProviderError::malformed(endpoint, "neither data nor errors")),
        }
    }

    /// `GET /2/dm_events/{event_id}`: which conversation an event belongs to (for `delete`), with the same
    /// field fallback as history.
    pub async fn event(&self, event_id: &str) -> Result<EventInfo, ProviderError> {
        check_numeric(EVENT, event_id)?;
        let url = format!("{}/2/dm_events/{event_id}", self.base);
        let body = self.read_events(EVENT, &url, &[], None).await?;
        let b: DataBody<WireEvent> = serde_json::from_slice(&body).map_err(|e| ProviderError::bad_json(EVENT, &e))?;
        match b.data {
            Some(e) => Ok(EventInfo {
                event_type: e.event_type,
                conversation_id: e.dm_conversation_id.filter(|c| is_conversation_id(c)),
                sender_id: e.sender_id.map(|s| s.0).filter(|s| is_safe_id(s)),
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
        let body = self.call(Bucket::Delete, DELETE_EVENT, || self.http.delete(&url)).await?;
        // The spec says 200 `{"data":{"deleted":true}}`; generic docs say 204 with no body. Both are success.
        if body.iter().all(u8::is_ascii_whitespace) {
            return Ok(());
        }
        let b: DataBody<Deleted> =
            serde_json::from_slice(&body).map_err(|e| ProviderError::bad_json(DELETE_EVENT, &e))?;
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
        if !is_conversation_id(conversation_id) {
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
        let answer = self.call(Bucket::DmWrite, endpoint, || self.http.post(&url).json(&body)).await?;
        let b: DataBody<WireSent> =
            serde_json::from_slice(&answer).map_err(|e| ProviderError::bad_json(endpoint, &e))?;
        match b.data {
            Some(s) if is_safe_id(&s.dm_event_id.0) && is_conversation_id(&s.dm_conversation_id) => {
                Ok(Sent { event_id: s.dm_event_id.0, conversation_id: s.dm_conversation_id, endpoint })
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
        // Checked once up front; the form is built again for a request sent once more after a 401.
        crate::provider::util::file_part(UPLOAD_MEDIA, name, mime, &[])?;
        let url = format!("{}/2/media/upload", self.base);
        let build = || {
            let form = reqwest::multipart::Form::new().text("media_category", media_category(mime));
            match crate::provider::util::file_part(UPLOAD_MEDIA, name, mime, bytes) {
                Ok(part) => self.http.post(&url).multipart(form.part("media", part)),
                // Not reached (checked above); an empty request would be refused by X, not sent wrong.
                Err(_) => self.http.post(&url),
            }
        };
        let body = self.call(Bucket::Media, UPLOAD_MEDIA, build).await?;
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
        let build = || self.http.get(&url).query(&[("command", "STATUS"), ("media_id", action)]);
        let body = self.call(Bucket::Media, MEDIA_STATUS, build).await?;
        media_state(MEDIA_STATUS, &body)
    }
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
    let b: DataBody<WireMedia> = serde_json::from_slice(body).map_err(|e| ProviderError::bad_json(endpoint, &e))?;
    let Some(m) = b.data else {
        return Err(ProviderError::malformed(endpoint, "an upload answer without data"));
    };
    let Some(id) = m.id.filter(|i| is_safe_id(&i.0)) else {
        return Err(ProviderError::malformed(endpoint, "an upload answer without a valid media id"));
    };
    let processing = m.processing_info.unwrap_or_default();
    match processing.state.as_deref() {
        Some("pending" | "in_progress") => {
            let after = Duration::from_secs(processing.check_after_secs.unwrap_or(1).min(60));
            Ok(WriteState::Pending { action: id.0, after })
        }
        // X could not process the media: no DM carries it, so nothing was sent; uploading again is safe.
        Some("failed") => Ok(WriteState::Failed {
            code: "media_processing_failed".into(),
            safe_to_retry: true,
            dispatched: Some(false),
        }),
        _ => Ok(WriteState::Done(WriteDone { id: id.0, url: None, at: None })),
    }
}

fn check_numeric(endpoint: &'static str, id: &str) -> Result<(), ProviderError> {
    if is_numeric_id(id) {
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

#[cfg(test)]
mod tests;
