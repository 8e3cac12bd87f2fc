//! `GET /2/dm_events`: the account's whole DM stream (SPEC 8.2), every conversation's events newest first,
//! 100 per request, each routed to its conversation by `dm_conversation_id` and normalized exactly as the
//! per-conversation routes normalize it (same fields, same 1:1-by-peer and group-by-ID conversations).

use serde::Deserialize;

use super::wire::parse_events;
use super::{XApiV2, MAX_RESULTS};
use crate::ids::is_conversation_id;
use crate::provider::util::parse_item;
use crate::provider::{InboxPage, ProviderError};
use crate::record::{Conversation, Unparsed};

/// The one member an event needs to be routed.
#[derive(Deserialize)]
struct Route {
    #[serde(default)]
    dm_conversation_id: Option<String>,
}

/// The route template, as records of the inbox stream name it in `source_endpoint`.
pub const INBOX: &str = "GET /2/dm_events";

impl XApiV2 {
    /// One page of the account's events across all conversations, newest first; `cursor` is the previous
    /// page's `next_token`.
    pub async fn inbox(&self, cursor: Option<&str>) -> Result<InboxPage, ProviderError> {
        let url = format!("{}/2/dm_events", self.base);
        let cursor = cursor.map(|c| ("pagination_token", c));
        let body = self.read_events(INBOX, &url, &[("max_results", MAX_RESULTS)], cursor).await?;
        let page = parse_events(INBOX, &body)?;
        let mut items = Vec::with_capacity(page.events.len());
        let mut unparsed = Vec::new();
        for raw in page.events {
            // Routing first: an event that names no valid conversation cannot be normalized, but is still
            // kept (the engine writes it under the stream); one that does is normalized like history.
            let conv = parse_item::<Route>(raw)
                .ok()
                .and_then(|r| r.dm_conversation_id)
                .filter(|c| is_conversation_id(c))
                .map(|id| Conversation::from_conversation_id(&id, Some(&self.account)));
            let Some(conv) = conv else {
                let reason = "the event has no valid dm_conversation_id".to_string();
                unparsed.push((None, Unparsed { reason, raw: raw.to_owned() }));
                continue;
            };
            match self.entry(&conv, raw, &page.media) {
                Ok(item) => items.push((conv, item)),
                Err(reason) => unparsed.push((Some(conv), Unparsed { reason, raw: raw.to_owned() })),
            }
        }
        Ok(InboxPage { items, unparsed, next_cursor: page.next_token, credits: 1 })
    }
}
