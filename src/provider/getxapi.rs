//! The GetXAPI adapter (PROVIDERS.md section 2): DM history of one conversation
//! (`POST /twitter/dm/conversation`), DM send (`POST /twitter/dm/send`) and user lookup.
//!
//! Every DM call is a POST whose JSON body carries the account's session `auth_token` next to the
//! request, with the API key as a bearer token. Both are secrets: the key header is marked sensitive,
//! the token lives in a [`Secret`] whose `Debug` is redacted, and no request body, response body or
//! `error` text is ever put into an error or a log line (GetXAPI's `error` is free text, which could
//! quote the request). Errors are classified by status alone.
//!
//! A 1:1 conversation's ID is `"<smaller>-<larger>"` of the two numeric user IDs (the account's and
//! the peer's); a configured `conv:<id>` is sent as given. Pages are newest first, `has_more` +
//! `next_cursor` (null at the end); `count` asks for the largest page. Messages may carry provider
//! extras (`shared_tweet`, `card`, `links`, `reactions`, `edit_count`, `reply_to_message_id`) and a page
//! may carry `events`; records keep what the shared schema has (README, "Providers").

use std::fmt;
use std::time::Duration;

use serde::Deserialize;
use serde_json::value::RawValue;

mod inbox;

pub use inbox::LIST;

use super::util::{http_client, parse_item, Http, Id, Request, TimeText};
use super::{ErrorClass, Page, ProviderError, Upload, User, WriteDone, WriteKind, WriteState};
use crate::config::Pipeline;
use crate::ids::{is_numeric_id, is_safe_id, one_to_one_id};
use crate::record::{Conversation, Item, Unparsed};

/// Route templates, as they appear in records and logs.
pub const HISTORY: &str = "POST /twitter/dm/conversation";
pub const SEND_DM: &str = "POST /twitter/dm/send";
/// Not in the DM docs we have (PROVIDERS.md section 2); the user-info route GetXAPI-style APIs share.
pub const USER: &str = "GET /twitter/user/info";

/// The page size asked for; the docs say "~50 per page" by default.
const PAGE_COUNT: u32 = 100;

/// A secret string: usable, never printed.
#[derive(Clone)]
pub struct Secret(String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// A configured GetXAPI client for one pipeline.
pub struct GetXApi {
    http: Http,
    /// Without a trailing slash, e.g. `https://api.getxapi.com`.
    base: String,
    /// The account's numeric user ID (config `account`): builds 1:1 conversation IDs.
    account: String,
    /// The account's session cookie, sent in every DM body.
    auth_token: Secret,
    /// `max_response_bytes`: the largest body read.
    max_body: u64,
}

impl GetXApi {
    pub fn new(p: &Pipeline, api_key: &str, auth_token: &str) -> Result<GetXApi, crate::config::ConfigError> {
        let bearer = format!("Bearer {api_key}");
        let headers = super::util::secret_headers(p, reqwest::header::AUTHORIZATION, &bearer, "API key")?;
        Ok(GetXApi {
            http: http_client(p, headers)?,
            base: p.base_url.clone(),
            account: p.account.clone(),
            auth_token: Secret(auth_token.to_string()),
            max_body: p.max_response_bytes,
        })
    }

    /// The account's numeric user ID.
    pub fn account(&self) -> &str {
        &self.account
    }

    /// The conversation ID GetXAPI knows a conversation by.
    pub fn conversation_id(&self, conv: &Conversation) -> Option<String> {
        match conv {
            Conversation::Peer { conversation_id: Some(id), .. } | Conversation::Group { conversation_id: id } => {
                Some(id.clone())
            }
            Conversation::Peer { user_id, conversation_id: None } => one_to_one_id(&self.account, user_id),
        }
    }

    pub async fn history(&self, conv: &Conversation, cursor: Option<&str>) -> Result<Page, ProviderError> {
        let Some(conversation_id) = self.conversation_id(conv) else {
            return Err(ProviderError::new(
                ErrorClass::Conversation,
                HISTORY,
                None,
                "invalid_conversation",
                "GetXAPI needs numeric user IDs to name a 1:1 conversation; check `account` and the conversation",
            ));
        };
        let mut body = serde_json::json!({
            "auth_token": self.auth_token.0,
            "conversation_id": conversation_id,
            "count": PAGE_COUNT,
        });
        if let Some(c) = cursor {
            body["cursor"] = serde_json::Value::String(c.to_string());
        }
        let url = format!("{}/twitter/dm/conversation", self.base);
        let answer = send(self.http.post(url).json(&body), HISTORY, self.max_body).await?;
        let page: HistoryBody = serde_json::from_slice(&answer).map_err(|e| ProviderError::bad_json(HISTORY, &e))?;
        let next_cursor = page.next_cursor.filter(|c| !c.is_empty());
        if page.has_more && next_cursor.is_none() {
            return Err(ProviderError::malformed(HISTORY, "has_more is true but next_cursor is empty"));
        }
        if !page.events.is_empty() {
            tracing::debug!(
                endpoint = HISTORY,
                events = page.events.len(),
                "GetXAPI conversation events are not recorded"
            );
        }
        let group = matches!(conv, Conversation::Group { .. });
        // The envelope is strict; each message is read on its own, and one that cannot be read is kept as
        // received (`dm_unparsed`) instead of failing the page.
        let mut items = Vec::with_capacity(page.messages.len());
        let mut unparsed = Vec::new();
        for raw in page.messages {
            match parse_item::<WireMessage>(raw).and_then(|m| message_item(m, group, &conversation_id)) {
                Ok(item) => items.push(item),
                Err(reason) => unparsed.push(Unparsed { reason, raw: raw.to_owned() }),
            }
        }
        // GetXAPI bills per call.
        Ok(Page { items, unparsed, next_cursor: if page.has_more { next_cursor } else { None }, credits: 1 })
    }

    /// A user by ID or username, through the user-info route (`userName=` or `userId=`).
    pub async fn lookup_user(&self, id_or_username: &str) -> Result<User, ProviderError> {
        let who = id_or_username.trim_start_matches('@');
        let param = if is_numeric_id(who) { "userId" } else { "userName" };
        let url = format!("{}/twitter/user/info", self.base);
        let answer = send(self.http.get(url).query(&[(param, who)]), USER, self.max_body).await?;
        let b: UserBody = serde_json::from_slice(&answer).map_err(|e| ProviderError::bad_json(USER, &e))?;
        let u = b.data.unwrap_or(b.flat);
        match u.id {
            Some(id) if is_safe_id(&id.0) => Ok(User {
                id: id.0,
                username: u.user_name.unwrap_or_default(),
                name: u.name.unwrap_or_default(),
                can_dm: u.can_dm,
            }),
            _ => Err(ProviderError::new(ErrorClass::Conversation, USER, Some(200), "user_not_found", "no such user")),
        }
    }

    /// `POST /twitter/dm/send {auth_token, recipient_id, text}`. Media is not documented for this route,
    /// so a send with media is refused before anything is sent; GetXAPI has no idempotency key either.
    pub async fn send_dm(&self, to: &str, text: &str, media_id: Option<&str>) -> Result<WriteState, ProviderError> {
        if media_id.is_some() {
            return Err(ProviderError::new(
                ErrorClass::Conversation,
                SEND_DM,
                None,
                "media_not_supported",
                "GetXAPI's DM send takes text only; send without media",
            ));
        }
        let body = serde_json::json!({ "auth_token": self.auth_token.0, "recipient_id": to, "text": text });
        let url = format!("{}/twitter/dm/send", self.base);
        let answer = send(self.http.post(url).json(&body), SEND_DM, self.max_body).await?;
        let b: SendBody = serde_json::from_slice(&answer).map_err(|e| ProviderError::bad_json(SEND_DM, &e))?;
        // The docs show `data.id`; the MCP server describes `message_id`. Either is the DM's ID.
        let d = b.data.unwrap_or_default();
        match d.id.or(d.message_id).or(b.message_id) {
            // `createdAt` is when X dated the message, not when we sent it: the record's `sent_at` is ours.
            Some(id) if is_safe_id(&id.0) => Ok(WriteState::Done(WriteDone { id: id.0, url: None, at: None })),
            _ => Err(ProviderError::malformed(SEND_DM, "a send answer without a message ID")),
        }
    }

    /// GetXAPI documents its upload for posts, not DMs; DM sends take no media.
    pub async fn upload_media(&self, _upload: &Upload) -> Result<WriteState, ProviderError> {
        Err(ProviderError::new(
            ErrorClass::Conversation,
            SEND_DM,
            None,
            "media_not_supported",
            "GetXAPI's DM send takes no media; send text only",
        ))
    }

    /// Sends are final when answered; there is nothing to poll.
    pub async fn write_action(&self, _action: &str, _kind: WriteKind) -> Result<WriteState, ProviderError> {
        Err(ProviderError::new(
            ErrorClass::Conversation,
            SEND_DM,
            None,
            "nothing_to_poll",
            "GetXAPI sends are final when answered",
        ))
    }
}

/// A history message as an [`Item`], or why it is not one.
fn message_item(m: WireMessage, group: bool, conversation_id: &str) -> Result<Item, String> {
    if !is_safe_id(&m.id.0) {
        return Err("id is not a usable ID".into());
    }
    for (field, id) in [("senderId", &m.sender_id), ("recipientId", &m.recipient_id)] {
        if id.as_ref().is_some_and(|i| !is_safe_id(&i.0)) {
            return Err(format!("{field} is not a usable ID"));
        }
    }
    Ok(Item {
        id: m.id.0,
        event_type: None,
        sender_id: m.sender_id.map(|s| s.0),
        receiver_id: if group { None } else { m.recipient_id.map(|r| r.0) },
        created_at: m.created_at.map(|t| t.0),
        text: m.text,
        media_url: m.media.as_ref().and_then(WireMedia::url),
        conversation_id: m.conversation_id.filter(|c| !c.is_empty()).or_else(|| Some(conversation_id.to_string())),
        participant_ids: None,
    })
}

/// Sends a request; returns the body of a 2xx or the error classified by status (the body's `error`
/// text is read for nothing but a `retry_after` number and whether it blames the `auth_token`).
async fn send(req: Request, endpoint: &'static str, max_body: u64) -> Result<bytes::Bytes, ProviderError> {
    super::util::send_classified(req, endpoint, max_body, classify).await
}

/// Maps a GetXAPI error to its class. There is no machine code, so the code is `http_<status>`, or
/// `invalid_auth_token` for a 401 that names the token (so the user knows which secret to fix).
pub(crate) fn classify(endpoint: &'static str, status: u16, body: &[u8], header: Option<Duration>) -> ProviderError {
    let parsed: ErrorBody = serde_json::from_slice(body).unwrap_or_default();
    let blames_token = parsed.error.as_deref().or(parsed.msg.as_deref()).is_some_and(|t| t.contains("auth_token"));
    let retry_after = header.or(parsed.retry_after.map(Duration::from_secs));
    // GetXAPI reads with POST; its read routes are these.
    let read = [HISTORY, USER, inbox::LIST].contains(&endpoint);
    let names_cursor =
        parsed.error.as_deref().or(parsed.msg.as_deref()).is_some_and(|t| t.to_ascii_lowercase().contains("cursor"));
    if read && (status == 410 || (status == 400 && names_cursor)) {
        return ProviderError::rejected_cursor(endpoint, status, format!("http_{status}"));
    }
    use ErrorClass::*;
    let (class, code, hint) = match status {
        409 if read && retry_after.is_some() => (Transient, format!("http_{status}"), "GetXAPI asked us to try again later"),
        500..=599 if read => (Transient, format!("http_{status}"), "GetXAPI failed to answer; will retry"),
        429 => (Transient, format!("http_{status}"), "rate limited by GetXAPI; waiting as it asks"),
        502..=504 => (Transient, format!("http_{status}"), "GetXAPI or X is unavailable; will retry"),
        401 if blames_token => (
            Fatal,
            "invalid_auth_token".to_string(),
            "GetXAPI rejected the account's auth_token; put a fresh one in the pipeline's auth_token_env / auth_token_file",
        ),
        401 => (
            Fatal,
            "unauthenticated".to_string(),
            "GetXAPI rejected the API key or the auth_token; check api_key_env and auth_token_env",
        ),
        402 => (Fatal, format!("http_{status}"), "GetXAPI billing: top up the account, then run again"),
        403 => (Conversation, format!("http_{status}"), "GetXAPI or X does not allow this conversation for this account"),
        404 => (Conversation, format!("http_{status}"), "GetXAPI does not know this conversation (check the conversation ID)"),
        400 => (Conversation, format!("http_{status}"), "GetXAPI rejected the request"),
        _ => (Conversation, format!("http_{status}"), "unexpected response from GetXAPI"),
    };
    ProviderError {
        retry_after: if class == Transient { retry_after } else { None },
        ..ProviderError::new(class, endpoint, Some(status), code, hint)
    }
}

#[derive(Default, Deserialize)]
struct ErrorBody {
    #[serde(default)]
    error: Option<String>,
    #[serde(default)]
    msg: Option<String>,
    #[serde(default, alias = "retryAfter")]
    retry_after: Option<u64>,
}

#[derive(Deserialize)]
struct HistoryBody<'a> {
    #[serde(borrow)]
    messages: Vec<&'a RawValue>,
    #[serde(alias = "hasMore")]
    has_more: bool,
    #[serde(default, alias = "nextCursor")]
    next_cursor: Option<String>,
    #[serde(default)]
    events: Vec<serde::de::IgnoredAny>,
}

#[derive(Deserialize)]
struct WireMessage {
    id: Id,
    #[serde(default, rename = "conversationId", alias = "conversation_id")]
    conversation_id: Option<String>,
    #[serde(default, rename = "createdAt", alias = "created_at")]
    created_at: Option<TimeText>,
    #[serde(default, rename = "senderId", alias = "sender_id")]
    sender_id: Option<Id>,
    #[serde(default, rename = "recipientId", alias = "recipient_id")]
    recipient_id: Option<Id>,
    #[serde(default)]
    text: Option<String>,
    #[serde(default)]
    media: Option<WireMedia>,
}

/// `media` is undocumented beyond `null`: accept a URL string, an object with a URL, or a list of those.
#[derive(Deserialize)]
#[serde(untagged)]
enum WireMedia {
    Url(String),
    Object {
        #[serde(default, alias = "media_url_https", alias = "media_url", alias = "mediaUrl")]
        url: Option<String>,
        #[serde(default, alias = "previewImageUrl")]
        preview_image_url: Option<String>,
    },
    List(Vec<WireMedia>),
    Other(serde::de::IgnoredAny),
}

impl WireMedia {
    fn url(&self) -> Option<String> {
        match self {
            WireMedia::Url(u) => Some(u.clone()).filter(|u| !u.is_empty()),
            WireMedia::Object { url, preview_image_url } => url.clone().or_else(|| preview_image_url.clone()),
            WireMedia::List(items) => items.iter().find_map(WireMedia::url),
            WireMedia::Other(_) => None,
        }
    }
}

#[derive(Deserialize)]
struct UserBody {
    #[serde(default)]
    data: Option<WireUser>,
    #[serde(flatten)]
    flat: WireUser,
}

#[derive(Default, Deserialize)]
struct WireUser {
    #[serde(default, alias = "userId", alias = "rest_id")]
    id: Option<Id>,
    #[serde(default, rename = "userName", alias = "username", alias = "screen_name")]
    user_name: Option<String>,
    #[serde(default)]
    name: Option<String>,
    #[serde(default, rename = "canDm", alias = "can_dm")]
    can_dm: Option<bool>,
}

#[derive(Deserialize)]
struct SendBody {
    #[serde(default)]
    data: Option<SendData>,
    #[serde(default, alias = "messageId")]
    message_id: Option<Id>,
}

#[derive(Default, Deserialize)]
struct SendData {
    #[serde(default)]
    id: Option<Id>,
    #[serde(default, alias = "messageId")]
    message_id: Option<Id>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documented_page_parses_with_nulls_and_extras() {
        let b: HistoryBody = serde_json::from_str(
            r#"{"userId":"1345154135381794816","conversation_id":"3012852462-1345154135381794816",
            "message_count":14,"has_more":false,"next_cursor":null,
            "messages":[{"id":"2059239475419779072","conversationId":"3012852462-1345154135381794816",
              "createdAt":"2026-05-26T10:11:00.000Z","senderId":"3012852462","recipientId":"1345154135381794816",
              "text":"see you then","media":null,"shared_tweet":null,"card":null,"links":[],"reactions":[],
              "reply_to_message_id":null,"edit_count":0},
              {"id":2059239475419779073,"senderId":null,"recipientId":null,"text":null,"media":{"url":"https://pbs.twimg.com/dm_media/1.jpg"}}],
            "events":[{"type":"join"}],"users":{}}"#,
        )
        .unwrap();
        assert!(!b.has_more && b.next_cursor.is_none());
        let items: Vec<Item> = b
            .messages
            .iter()
            .map(|raw| parse_item::<WireMessage>(raw).and_then(|m| message_item(m, false, "1-2")).unwrap())
            .collect();
        assert_eq!(items[1].id, "2059239475419779073");
        assert_eq!(items[1].media_url.as_deref(), Some("https://pbs.twimg.com/dm_media/1.jpg"));
        assert_eq!(items[1].conversation_id.as_deref(), Some("1-2"));
        assert_eq!(items[0].media_url, None);
        assert!(serde_json::from_str::<HistoryBody>(r#"{"status":"success"}"#).is_err());
        for m in [
            r#""https://a/b.png""#,
            r#"[{"media_url_https":"https://a/b.png"}]"#,
            r#"{"preview_image_url":"https://a/b.png"}"#,
        ] {
            let w: WireMedia = serde_json::from_str(m).unwrap();
            assert_eq!(w.url().as_deref(), Some("https://a/b.png"), "{m}");
        }
        let w: WireMedia = serde_json::from_str("42").unwrap();
        assert_eq!(w.url(), None);
    }

    #[test]
    fn errors_are_classified_by_status_and_never_quote_the_body() {
        let e =
            classify(HISTORY, 401, br#"{"error":"Invalid auth_token - could not extract userId tok_SECRET"}"#, None);
        assert_eq!((e.class, e.code.as_str()), (ErrorClass::Fatal, "invalid_auth_token"));
        assert!(!e.to_string().contains("SECRET"));
        let e = classify(HISTORY, 401, br#"{"error":"Invalid API key"}"#, None);
        assert_eq!((e.class, e.code.as_str()), (ErrorClass::Fatal, "unauthenticated"));
        let e = classify(
            HISTORY,
            429,
            br#"{"error":"Too Many Requests","twitter_error_code":88,"retry_after":86400}"#,
            None,
        );
        assert_eq!((e.class, e.retry_after), (ErrorClass::Transient, Some(Duration::from_secs(86_400))));
        let e = classify(
            HISTORY,
            400,
            br#"{"error":"Missing required field: conversation_id (get it from /dm/list)"}"#,
            None,
        );
        assert_eq!((e.class, e.code.as_str()), (ErrorClass::Conversation, "http_400"));
        for s in [502, 503, 504] {
            assert_eq!(classify(HISTORY, s, b"<html>", None).class, ErrorClass::Transient);
        }
        for s in [400, 401, 402, 403, 404, 409, 422] {
            assert_ne!(classify(HISTORY, s, b"{}", None).class, ErrorClass::Transient, "{s}");
        }
        // Reads: a 5xx and a 409 with Retry-After are retried, a rejected cursor restarts the pass.
        assert_eq!(classify(HISTORY, 500, b"{}", None).class, ErrorClass::Transient);
        assert_ne!(classify(SEND_DM, 500, b"{}", None).class, ErrorClass::Transient);
        assert_eq!(classify(HISTORY, 409, b"{}", Some(Duration::from_secs(1))).class, ErrorClass::Transient);
        assert!(classify(HISTORY, 400, br#"{"error":"Invalid cursor"}"#, None).cursor_rejected);
        assert!(classify(HISTORY, 410, b"{}", None).cursor_rejected);
        assert!(!classify(HISTORY, 400, br#"{"error":"Missing required field"}"#, None).cursor_rejected);
    }

    #[test]
    fn send_answers_in_both_shapes_and_user_bodies() {
        let b: SendBody = serde_json::from_str(r#"{"status":"success","msg":"DM sent successfully","data":{"id":"2019384131067818211","createdAt":"2026-02-05T12:14:29.846Z"}}"#).unwrap();
        assert_eq!(b.data.unwrap().id.unwrap().0, "2019384131067818211");
        let b: SendBody = serde_json::from_str(r#"{"message_id":"5","conversation_id":"1-2"}"#).unwrap();
        assert_eq!(b.message_id.unwrap().0, "5");
        let u: UserBody =
            serde_json::from_str(r#"{"status":"success","data":{"id":"44196397","userName":"a","name":"A"}}"#).unwrap();
        assert_eq!(u.data.unwrap().id.unwrap().0, "44196397");
        let u: UserBody = serde_json::from_str(r#"{"id":"44196397","screen_name":"a"}"#).unwrap();
        assert_eq!(u.flat.user_name.as_deref(), Some("a"));
    }

    #[test]
    fn the_secret_is_not_debug_printed() {
        assert_eq!(format!("{:?}", Secret("tok".into())), "<redacted>");
    }
}
