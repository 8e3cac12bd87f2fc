//! `POST /twitter/dm/list`: the account's conversations, one tab at a time (`all`, `requests`, `hidden`),
//! most recent first, `has_more` + `next_cursor` (SPEC 8.2). Only conversation IDs are kept: the previews,
//! participants' profiles and last messages it also carries are read past (the text never reaches a log).

use serde::Deserialize;

use super::{send, GetXApi};
use crate::ids::{is_conversation_id, one_to_one_id};
use crate::provider::util::Id;
use crate::provider::{ConversationList, ProviderError};

/// The route template, for logs and reports.
pub const LIST: &str = "POST /twitter/dm/list";

/// Conversations asked per page (the documented default is 50).
const LIST_COUNT: u32 = 100;

#[derive(Deserialize)]
struct ListBody {
    #[serde(default)]
    conversations: Option<Vec<WireConversation>>,
    /// The older documented shape lists messages only; their conversations are taken from them.
    #[serde(default)]
    messages: Vec<WireMessage>,
    #[serde(default, alias = "hasMore")]
    has_more: bool,
    #[serde(default, alias = "nextCursor")]
    next_cursor: Option<String>,
}

#[derive(Deserialize)]
struct WireConversation {
    #[serde(default, alias = "conversationId", alias = "id")]
    conversation_id: Option<String>,
}

#[derive(Deserialize)]
struct WireMessage {
    #[serde(default, rename = "conversationId", alias = "conversation_id")]
    conversation_id: Option<String>,
    #[serde(default, rename = "senderId", alias = "sender_id")]
    sender_id: Option<Id>,
    #[serde(default, rename = "recipientId", alias = "recipient_id")]
    recipient_id: Option<Id>,
}

impl GetXApi {
    /// One page of a tab of the account's conversations.
    pub async fn list_conversations(&self, tab: &str, cursor: Option<&str>) -> Result<ConversationList, ProviderError> {
        let mut body = serde_json::json!({ "auth_token": self.auth_token.0, "tab": tab, "count": LIST_COUNT });
        if let Some(c) = cursor {
            body["cursor"] = serde_json::Value::String(c.to_string());
        }
        let url = format!("{}/twitter/dm/list", self.base);
        let answer = send(self.http.post(url).json(&body), LIST, self.max_body).await?;
        let page: ListBody = serde_json::from_slice(&answer).map_err(|e| ProviderError::bad_json(LIST, &e))?;
        let next_cursor = page.next_cursor.filter(|c| !c.is_empty());
        if page.has_more && next_cursor.is_none() {
            return Err(ProviderError::malformed(LIST, "has_more is true but next_cursor is empty"));
        }
        let ids: Vec<Option<String>> = match page.conversations {
            Some(convs) => convs.into_iter().map(|c| c.conversation_id).collect(),
            None => page
                .messages
                .into_iter()
                .map(|m| m.conversation_id.or_else(|| one_to_one_id(&m.sender_id?.0, &m.recipient_id?.0)))
                .collect(),
        };
        let mut conversation_ids = Vec::with_capacity(ids.len());
        let mut skipped = 0;
        for id in ids {
            match id.filter(|i| is_conversation_id(i)) {
                Some(i) if !conversation_ids.contains(&i) => conversation_ids.push(i),
                Some(_) => {}
                None => skipped += 1,
            }
        }
        if skipped > 0 {
            tracing::warn!(endpoint = LIST, skipped, "conversations without a valid conversation ID were left out");
        }
        Ok(ConversationList {
            conversation_ids,
            next_cursor: if page.has_more { next_cursor } else { None },
            credits: 1,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_documented_shapes_give_conversation_ids() {
        let b: ListBody = serde_json::from_str(
            r#"{"userId":"1","has_more":true,"next_cursor":"c2","conversations":[
                {"conversation_id":"1-2","type":"ONE_TO_ONE","participants":[{"id":"1"},{"id":"2"}],
                 "last_message":{"id":"9","senderId":"2","text":"hello"}},
                {"conversation_id":"1578398451921985538","type":"GROUP_DM"}],"messages":[]}"#,
        )
        .unwrap();
        let ids: Vec<_> = b.conversations.unwrap().into_iter().map(|c| c.conversation_id.unwrap()).collect();
        assert_eq!(ids, ["1-2", "1578398451921985538"]);
        let old: ListBody = serde_json::from_str(
            r#"{"userId":"1","message_count":1,"has_more":false,"next_cursor":null,
                "messages":[{"id":"5","createdAt":"x","senderId":"30","recipientId":"1","text":"t","media":null}]}"#,
        )
        .unwrap();
        assert!(old.conversations.is_none() && !old.has_more);
        let m = &old.messages[0];
        let id = one_to_one_id(&m.sender_id.as_ref().unwrap().0, &m.recipient_id.as_ref().unwrap().0);
        assert_eq!(id.as_deref(), Some("1-30"));
    }
}
