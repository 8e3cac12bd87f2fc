//! X API v2 wire shapes: what a page of DM events, a user, a send, a delete and an upload look like, read
//! tolerantly (IDs as strings or numbers, optional fields omitted).

use serde::Deserialize;
use serde_json::value::RawValue;

use super::errors::{LegacyError, ProblemBody};
use crate::provider::util::{Id, TimeText};
use crate::provider::{ErrorClass, ProviderError};

/// A page of events, reduced to what [`XApiV2::entry`] needs. Each event is still its raw JSON: events
/// are read one by one, so one that cannot be read is kept as received instead of failing the page.
pub(super) struct EventsPage<'a> {
    pub(super) events: Vec<&'a RawValue>,
    pub(super) media: Vec<WireMedia>,
    pub(super) next_token: Option<String>,
}

/// Reads a dm_events page. `meta` is required (X always sends it on list endpoints, also when empty), so
/// a body of another shape is malformed rather than an empty last page. A 200 with only `errors` is X's
/// way to say the conversation cannot be read.
pub(super) fn parse_events<'a>(endpoint: &'static str, body: &'a [u8]) -> Result<EventsPage<'a>, ProviderError> {
    let b: EventsBody<'a> = serde_json::from_slice(body).map_err(|e| ProviderError::bad_json(endpoint, &e))?;
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
pub(super) struct EventsBody<'a> {
    #[serde(default, borrow)]
    pub(super) data: Option<Vec<&'a RawValue>>,
    #[serde(default)]
    pub(super) includes: Option<Includes>,
    #[serde(default)]
    pub(super) meta: Option<Meta>,
    #[serde(default)]
    pub(super) errors: Vec<LegacyError>,
}

#[derive(Deserialize)]
pub(super) struct WireEvent {
    pub(super) id: Id,
    #[serde(default)]
    pub(super) event_type: Option<String>,
    #[serde(default)]
    pub(super) text: Option<String>,
    #[serde(default)]
    pub(super) sender_id: Option<Id>,
    #[serde(default)]
    pub(super) created_at: Option<TimeText>,
    #[serde(default)]
    pub(super) dm_conversation_id: Option<String>,
    #[serde(default)]
    pub(super) participant_ids: Option<Vec<Id>>,
    #[serde(default)]
    pub(super) attachments: Option<Attachments>,
}

#[derive(Deserialize)]
pub(super) struct Attachments {
    #[serde(default)]
    pub(super) media_keys: Option<Vec<String>>,
}

#[derive(Deserialize)]
pub(super) struct Includes {
    #[serde(default)]
    pub(super) media: Option<Vec<WireMedia>>,
}

#[derive(Default, Deserialize)]
pub(super) struct WireMedia {
    /// Set in upload answers.
    #[serde(default)]
    pub(super) id: Option<Id>,
    #[serde(default)]
    pub(super) media_key: Option<String>,
    #[serde(default)]
    pub(super) url: Option<String>,
    #[serde(default)]
    pub(super) preview_image_url: Option<String>,
    #[serde(default)]
    pub(super) processing_info: Option<Processing>,
}

#[derive(Default, Deserialize)]
pub(super) struct Processing {
    #[serde(default)]
    pub(super) state: Option<String>,
    #[serde(default)]
    pub(super) check_after_secs: Option<u64>,
}

#[derive(Deserialize)]
pub(super) struct Meta {
    #[serde(default)]
    pub(super) next_token: Option<String>,
}

#[derive(Deserialize)]
pub(super) struct DataBody<T> {
    #[serde(default = "none")]
    pub(super) data: Option<T>,
    #[serde(default)]
    pub(super) errors: Vec<LegacyError>,
}

pub(super) fn none<T>() -> Option<T> {
    None
}

#[derive(Deserialize)]
pub(super) struct WireUser {
    pub(super) id: Id,
    #[serde(default)]
    pub(super) username: String,
    #[serde(default)]
    pub(super) name: String,
}

#[derive(Deserialize)]
pub(super) struct WireSent {
    pub(super) dm_event_id: Id,
    pub(super) dm_conversation_id: String,
}

#[derive(Deserialize)]
pub(super) struct Deleted {
    #[serde(default)]
    pub(super) deleted: bool,
}
