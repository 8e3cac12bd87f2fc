//! `GET /2/dm_events`: the account's whole DM stream (SPEC 8.2), every conversation's events newest first,
//! 100 per request, each routed to its conversation by `dm_conversation_id` and normalized exactly as the
//! per-conversation routes normalize it (same fields, same 1:1-by-peer and group-by-ID conversations).

use super::wire::parse_events;
use super::{XApiV2, MAX_RESULTS};
use crate::ids::is_conversation_id;
use crate::provider::{InboxPage, ProviderError};
use crate::record::Conversation;

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
        for e in page.events {
            let Some(id) = e.dm_conversation_id.clone().filter(|c| is_conversation_id(c)) else {
                return Err(ProviderError::malformed(INBOX, "an event has no valid dm_conversation_id"));
            };
            let conv = Conversation::from_conversation_id(&id, Some(&self.account));
            let item = self.item(&conv, e, &page.media).map_err(|what| ProviderError::malformed(INBOX, what))?;
            items.push((conv, item));
        }
        Ok(InboxPage { items, next_cursor: page.next_token, credits: 1 })
    }
}
