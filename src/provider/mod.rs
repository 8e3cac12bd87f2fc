//! Provider APIs behind one interface: the only code that speaks HTTP to a provider.
//!
//! Each provider module turns its wire format into [`Page`]s of [`Item`]s and its failures into a
//! [`ProviderError`] whose [`ErrorClass`] is all the sync engine branches on. Retrying is shared:
//! [`with_retry`] repeats what is transient, with capped jittered backoff that honours the provider's
//! `Retry-After`, and never repeats anything else. The engine holds a [`Client`], an enum over the
//! adapters, so adding a provider never touches the engine.

pub mod body;
mod error;
pub mod getxapi;
pub mod oauth;
mod retry;
pub mod util;
pub mod x_api_v2;
pub mod xquik;

#[cfg(test)]
mod sim_tests;

use std::time::Duration;

pub use error::{ErrorClass, ProviderError};
pub use retry::{backoff, with_retry, PACING};

use crate::config::{Pipeline, ProviderKind};
use crate::record::{Conversation, Item, Unparsed};

/// One page of history, newest page first; order within `items` is whatever the provider sent.
#[derive(Clone, Debug, Default)]
pub struct Page {
    pub items: Vec<Item>,
    /// Items of the page that could not be normalized, kept as received (one bad item never blocks a page).
    pub unparsed: Vec<Unparsed>,
    /// The cursor of the next (older) page, exactly as received; None at the end of history.
    pub next_cursor: Option<String>,
    /// Provider credits this page cost.
    pub credits: u64,
}

/// A user as user lookup returns it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct User {
    pub id: String,
    pub username: String,
    pub name: String,
    #[serde(rename = "canDm", skip_serializing_if = "Option::is_none")]
    pub can_dm: Option<bool>,
}

/// A digest of the pipeline's secrets as they read now. The daemon keeps it (never the secrets themselves
/// outside the client) and compares it on SIGHUP, so rewriting a key file and reloading rotates the key of a
/// pipeline whose config did not change.
pub fn secrets_digest(p: &Pipeline) -> Result<u64, crate::config::ConfigError> {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    if let Some(key) = &p.api_key {
        key.read(&p.name, "API key")?.hash(&mut h);
    }
    // OAuth tokens are not part of it: they change with every renewal, which must not restart the pipeline.
    if let Some(secret) = p.oauth.as_ref().and_then(|o| o.client_secret.as_ref()) {
        secret.read(&p.name, "OAuth client secret")?.hash(&mut h);
    }
    if let Some(token) = &p.auth_token {
        token.read(&p.name, "auth_token")?.hash(&mut h);
    }
    Ok(h.finish())
}

/// The provider adapters, as one type the engine can hold.
pub enum Client {
    Xquik(xquik::Xquik),
    XApiV2(x_api_v2::XApiV2),
    GetXApi(getxapi::GetXApi),
}

impl Client {
    /// Builds the adapter for a pipeline. Reads the pipeline's secrets; the error names where they should be.
    pub fn new(p: &Pipeline) -> Result<Client, crate::config::ConfigError> {
        match p.provider {
            ProviderKind::Xquik => {
                let key = p.key_source()?.read(&p.name, "API key")?;
                Ok(Client::Xquik(xquik::Xquik::new(p, &key)?))
            }
            ProviderKind::XApiV2 => match &p.oauth {
                Some(cfg) => {
                    let tokens = oauth::TokenSource::open(p, cfg)?;
                    Ok(Client::XApiV2(x_api_v2::XApiV2::with_tokens(p, tokens)?))
                }
                None => {
                    let token = p.key_source()?.read(&p.name, "access token")?;
                    Ok(Client::XApiV2(x_api_v2::XApiV2::new(p, &token)?))
                }
            },
            ProviderKind::GetXApi => {
                let key = p.key_source()?.read(&p.name, "API key")?;
                let source = p.auth_token.as_ref().ok_or_else(|| {
                    crate::config::ConfigError(format!("pipeline `{}`: provider getxapi needs auth_token_env", p.name))
                })?;
                let token = source.read(&p.name, "auth_token")?;
                Ok(Client::GetXApi(getxapi::GetXApi::new(p, &key, &token)?))
            }
        }
    }

    /// The route template of the history endpoint, for records and logs.
    pub fn history_endpoint(&self, conv: &Conversation) -> &'static str {
        match (self, conv) {
            (Client::Xquik(_), _) => xquik::HISTORY,
            (Client::XApiV2(_), Conversation::Peer { .. }) => x_api_v2::HISTORY_WITH,
            (Client::XApiV2(_), Conversation::Group { .. }) => x_api_v2::HISTORY_CONV,
            (Client::GetXApi(_), _) => getxapi::HISTORY,
        }
    }

    /// One history page (no retries; wrap in [`with_retry`]).
    pub async fn history(&self, conv: &Conversation, cursor: Option<&str>) -> Result<Page, ProviderError> {
        match self {
            Client::Xquik(c) => c.history(conv, cursor).await,
            Client::XApiV2(c) => c.history(conv, cursor).await,
            Client::GetXApi(c) => c.history(conv, cursor).await,
        }
    }

    /// The route template of a user lookup by username.
    pub fn lookup_endpoint(&self) -> &'static str {
        match self {
            Client::Xquik(_) => xquik::USER,
            Client::XApiV2(_) => x_api_v2::USER_BY_NAME,
            Client::GetXApi(_) => getxapi::USER,
        }
    }

    /// Looks a user up by ID or username (no `@`).
    pub async fn lookup_user(&self, id_or_username: &str) -> Result<User, ProviderError> {
        match self {
            Client::Xquik(c) => c.lookup_user(id_or_username).await,
            Client::XApiV2(c) => c.lookup_user(id_or_username).await,
            Client::GetXApi(c) => c.lookup_user(id_or_username).await,
        }
    }

    /// The account's own user ID, when the provider knows it without a lookup.
    pub fn account_user_id(&self) -> Option<&str> {
        match self {
            Client::Xquik(_) => None,
            // X API v2 and GetXAPI name the account by its numeric ID in the config.
            Client::XApiV2(c) => Some(c.account()),
            Client::GetXApi(c) => Some(c.account()),
        }
    }
}

/// How a provider reaches every conversation of the account (`inbox = true`, SPEC 8.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InboxRoute {
    /// One stream of every conversation's events, newest first ([`Client::inbox_stream`]; X API v2).
    Stream,
    /// A list of the account's conversations, each then read like a listed one
    /// ([`Client::list_conversations`]; GetXAPI).
    Discovery,
    /// No inbox route (Xquik; the config refuses `inbox = true` there).
    None,
}

/// One page of an inbox stream: each item with the conversation it belongs to, normalized as the
/// per-conversation route would normalize it.
#[derive(Clone, Debug, Default)]
pub struct InboxPage {
    pub items: Vec<(Conversation, Item)>,
    /// Events that could not be normalized, kept as received (`dm_unparsed`), with their conversation when
    /// the event names a valid one.
    pub unparsed: Vec<(Option<Conversation>, crate::record::Unparsed)>,
    /// The next (older) page's cursor, exactly as received; None at the end.
    pub next_cursor: Option<String>,
    pub credits: u64,
}

/// One page of the account's conversations, by provider conversation ID.
#[derive(Clone, Debug, Default)]
pub struct ConversationList {
    pub conversation_ids: Vec<String>,
    pub next_cursor: Option<String>,
    pub credits: u64,
}

/// The whole-inbox routes (no retries; wrap in [`with_retry`]).
impl Client {
    /// Which inbox route the provider has.
    pub fn inbox_route(&self) -> InboxRoute {
        match self {
            Client::Xquik(_) => InboxRoute::None,
            Client::XApiV2(_) => InboxRoute::Stream,
            Client::GetXApi(_) => InboxRoute::Discovery,
        }
    }

    /// The route template of the inbox route, for records (a stream's `source_endpoint`) and reports.
    pub fn inbox_endpoint(&self) -> &'static str {
        match self {
            Client::Xquik(_) => "(no inbox route)",
            Client::XApiV2(_) => x_api_v2::INBOX,
            Client::GetXApi(_) => getxapi::LIST,
        }
    }

    /// One page of the account's whole event stream, newest first.
    pub async fn inbox_stream(&self, cursor: Option<&str>) -> Result<InboxPage, ProviderError> {
        match self {
            Client::XApiV2(c) => c.inbox(cursor).await,
            _ => Err(no_inbox(self.inbox_endpoint())),
        }
    }

    /// One page of a tab (`all`, `requests`, `hidden`) of the account's conversations.
    pub async fn list_conversations(&self, tab: &str, cursor: Option<&str>) -> Result<ConversationList, ProviderError> {
        match self {
            Client::GetXApi(c) => c.list_conversations(tab, cursor).await,
            _ => Err(no_inbox(self.inbox_endpoint())),
        }
    }
}

fn no_inbox(endpoint: &'static str) -> ProviderError {
    ProviderError::new(ErrorClass::Fatal, endpoint, None, "unsupported", "this provider has no such inbox route")
}

/// What a write (a DM send or a media upload) has come to, as far as the provider says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WriteState {
    /// Final: the DM or the media exists.
    Done(WriteDone),
    /// Accepted but not yet confirmed: ask again about `action` (the write-action ID) after `after`.
    Pending { action: String, after: Duration },
    /// Final failure. `safe_to_retry`: the provider says nothing was dispatched and the same request may be
    /// made again under a new idempotency key. `dispatched`: whether the provider says it sent anything to X
    /// (None when it does not say): `Some(false)` proves nothing was sent; anything else may have been.
    Failed { code: String, safe_to_retry: bool, dispatched: Option<bool> },
}

/// A confirmed write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WriteDone {
    /// The DM's message ID, or the upload's media ID.
    pub id: String,
    /// The public media URL of an upload, when the provider gives one.
    pub url: Option<String>,
    /// When the provider completed it, as the provider wrote it (unnormalized).
    pub at: Option<String>,
}

/// Which result a write-action status is read for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WriteKind {
    DirectMessage,
    Media,
}

/// A message sent into a conversation (X API v2): X's event ID, the conversation it landed in, and the
/// route that sent it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sent {
    pub event_id: String,
    pub conversation_id: String,
    pub endpoint: &'static str,
}

/// What the provider says about one DM event (X API v2 `GET /2/dm_events/{event_id}`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EventInfo {
    pub event_type: Option<String>,
    pub conversation_id: Option<String>,
    pub sender_id: Option<String>,
}

/// A DM to send: to a numeric user ID, text, at most one uploaded media ID, under the job's idempotency key.
#[derive(Clone, Copy, Debug)]
pub struct Dm<'a> {
    pub to: &'a str,
    pub text: &'a str,
    pub media_id: Option<&'a str>,
    pub idempotency_key: &'a str,
}

/// A provider's documented read budget per account: at most `requests` in any `window`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReadBudget {
    pub requests: u32,
    pub window: Duration,
}

/// At most `max` writes in any `window`, per account.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WriteLimit {
    pub max: usize,
    pub window: Duration,
}

/// Media to upload, already checked by the caller (type and size).
#[derive(Clone, Debug)]
pub enum Upload {
    /// A local file's bytes, sent as multipart.
    File { name: String, mime: &'static str, bytes: Vec<u8> },
    /// An HTTPS URL the provider fetches itself.
    Url(String),
}

/// Outbound writes: sends, uploads and write-action polls (no retries; wrap in [`with_retry`]).
/// Every write carries the caller's idempotency key, so repeating one never writes twice.
impl Client {
    /// The route template of the DM send endpoint, for records and logs.
    pub fn send_endpoint(&self) -> &'static str {
        match self {
            Client::Xquik(_) => xquik::SEND_DM,
            Client::XApiV2(_) => x_api_v2::SEND_WITH,
            Client::GetXApi(_) => getxapi::SEND_DM,
        }
    }

    /// The route template of the media upload endpoint.
    pub fn upload_endpoint(&self) -> &'static str {
        match self {
            Client::Xquik(_) => xquik::UPLOAD_MEDIA,
            Client::XApiV2(_) => x_api_v2::UPLOAD_MEDIA,
            // GetXAPI's DM send takes no media; the refusal names the send route.
            Client::GetXApi(_) => getxapi::SEND_DM,
        }
    }

    /// The route template a pending write is polled at.
    pub fn write_status_endpoint(&self, kind: WriteKind) -> &'static str {
        match (self, kind) {
            (Client::Xquik(_), _) => xquik::WRITE_ACTION,
            (Client::XApiV2(_), WriteKind::Media) => x_api_v2::MEDIA_STATUS,
            (Client::XApiV2(_), WriteKind::DirectMessage) => x_api_v2::SEND_WITH,
            (Client::GetXApi(_), _) => getxapi::SEND_DM,
        }
    }

    /// The provider's documented budget for history reads per account, which the engine paces itself to. None
    /// for X API v2, whose adapter paces every request by the `x-rate-limit-*` windows X announces (so a
    /// changed limit is followed without a release), and for GetXAPI, which documents none: the engine then
    /// goes by how the provider answers.
    pub fn read_budget(&self) -> Option<ReadBudget> {
        match self {
            Client::Xquik(_) => Some(xquik::READ_BUDGET),
            Client::XApiV2(_) | Client::GetXApi(_) => None,
        }
    }

    /// The provider's documented limit on writes (sends and uploads) per account, which outbound holds
    /// itself to before the provider has to refuse. None for X API v2, whose adapter paces every request by
    /// the `x-rate-limit-*` headers X sends (see `x_api_v2::limits`), and for GetXAPI, which documents none.
    pub fn write_limit(&self) -> Option<WriteLimit> {
        match self {
            Client::Xquik(_) => Some(xquik::WRITE_LIMIT),
            Client::XApiV2(_) | Client::GetXApi(_) => None,
        }
    }

    /// Whether a write repeated with the same idempotency key is answered with the original write instead of
    /// being done again (Xquik's write-action contract). Without it, an interrupted send can only be checked
    /// by reading the conversation back.
    pub fn idempotent_writes(&self) -> bool {
        matches!(self, Client::Xquik(_))
    }

    /// Credits one send or upload costs (Xquik bills 10 per write; the others bill per request, counted
    /// as 1 so reports and budgets stay meaningful).
    pub fn write_credits(&self) -> u64 {
        match self {
            Client::Xquik(_) => xquik::WRITE_CREDITS,
            Client::XApiV2(_) | Client::GetXApi(_) => 1,
        }
    }

    /// Sends a DM to a numeric user ID, with at most one uploaded media ID.
    pub async fn send_dm(&self, dm: &Dm<'_>) -> Result<WriteState, ProviderError> {
        match self {
            Client::Xquik(c) => c.send_dm(dm).await,
            // Neither takes an idempotency key: a send interrupted before its record can be sent twice.
            Client::XApiV2(c) => c.send_dm(dm.to, dm.text, dm.media_id).await,
            Client::GetXApi(c) => c.send_dm(dm.to, dm.text, dm.media_id).await,
        }
    }

    /// Uploads media for a DM attachment.
    pub async fn upload_media(&self, upload: &Upload, idempotency_key: &str) -> Result<WriteState, ProviderError> {
        match self {
            Client::Xquik(c) => c.upload_media(upload, idempotency_key).await,
            Client::XApiV2(c) => c.upload_media(upload).await,
            Client::GetXApi(c) => c.upload_media(upload).await,
        }
    }

    /// Asks where a pending write stands.
    pub async fn write_action(&self, action: &str, kind: WriteKind) -> Result<WriteState, ProviderError> {
        match self {
            Client::Xquik(c) => c.write_action(action, kind).await,
            Client::XApiV2(c) => c.write_action(action, kind).await,
            Client::GetXApi(c) => c.write_action(action, kind).await,
        }
    }
}

/// Conversation management: deleting a DM and sending to a conversation or a new group, which only X API v2
/// offers. The other providers answer with a fatal `unsupported` error (the command layer refuses them
/// before that).
impl Client {
    fn manager(&self) -> Result<&x_api_v2::XApiV2, ProviderError> {
        match self {
            Client::XApiV2(x) => Ok(x),
            _ => Err(ProviderError::new(
                ErrorClass::Fatal,
                "(conversation management)",
                None,
                "unsupported",
                "deletes and group conversations need provider x-api-v2",
            )),
        }
    }

    /// The route template of a send into an existing conversation.
    pub fn send_conversation_endpoint(&self) -> &'static str {
        x_api_v2::SEND_CONV
    }

    /// The route template of creating a group with a first message.
    pub fn create_group_endpoint(&self) -> &'static str {
        x_api_v2::CREATE_GROUP
    }

    /// The route template of a delete, for its record.
    pub fn delete_endpoint(&self) -> &'static str {
        x_api_v2::DELETE_EVENT
    }

    /// Which conversation an event is in.
    pub async fn event(&self, event_id: &str) -> Result<EventInfo, ProviderError> {
        self.manager()?.event(event_id).await
    }

    /// Deletes a DM for the account.
    pub async fn delete_event(&self, event_id: &str) -> Result<(), ProviderError> {
        self.manager()?.delete_event(event_id).await
    }

    /// Sends into an existing 1:1 or group conversation.
    pub async fn send_to_conversation(&self, conversation_id: &str, text: &str) -> Result<Sent, ProviderError> {
        self.manager()?.send_to_conversation(conversation_id, text, None).await
    }

    /// Creates a group with these participants and a first message.
    pub async fn create_group(&self, participants: &[String], text: &str) -> Result<Sent, ProviderError> {
        self.manager()?.create_group(participants, text, None).await
    }
}
