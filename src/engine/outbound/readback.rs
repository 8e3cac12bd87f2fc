//! Reading a conversation back after a write whose answer was lost (SPEC 8.8): the one way a job whose
//! outcome is unknown learns that it was sent, without sending it again.

use crate::engine::OpenPipeline;
use crate::provider::{with_retry, ProviderError};
use crate::record::{normalize_time, snowflake_time, Conversation, Key, Kind};

/// How much earlier than our own clock's start of the attempt a provider's `created_at` may be and still
/// be this attempt's message: the provider's clock and ours differ by a little.
const CLOCK_SKEW_MS: u64 = 60_000;

/// The newest page of `conv`'s history, searched for a message the account sent with exactly `text`, created
/// no earlier than `since_ms` (Unix ms, less `CLOCK_SKEW_MS`), that no other job has recorded already.
/// Returns the oldest such message's ID and its `created_at` in record form. One read, retried like any
/// read (a read never sends anything).
pub async fn find_sent(
    pipe: &OpenPipeline,
    conv: &Conversation,
    text: &str,
    since_ms: u64,
) -> Result<Option<(String, Option<String>)>, ProviderError> {
    let p = &pipe.config;
    let cancel = tokio_util::sync::CancellationToken::new();
    let page = with_retry(&p.retry, &cancel, || pipe.client.history(conv, None)).await?;
    let account = pipe.client.account_user_id();
    let from_account = |sender: Option<&str>| match (conv, sender) {
        // In a 1:1 conversation whatever the peer did not send, the account did (Xquik names the account
        // by its handle, so its numeric ID is not known here).
        (Conversation::Peer { user_id, .. }, Some(s)) => s != user_id,
        (Conversation::Group { .. }, Some(s)) => Some(s) == account,
        (_, None) => false,
    };
    let mut found: Vec<(u64, String, Option<String>)> = Vec::new();
    for item in &page.items {
        let is_message = item.event_type.as_deref().is_none_or(|t| t == "MessageCreate");
        if !is_message || item.text.as_deref() != Some(text) || !from_account(item.sender_id.as_deref()) {
            continue;
        }
        let created = item.created_at.as_deref().and_then(normalize_time).or_else(|| snowflake_time(&item.id));
        let Some(at_ms) = created.as_deref().and_then(|c| humantime::parse_rfc3339(c).ok()).map(crate::time::unix_ms)
        else {
            continue;
        };
        if at_ms + CLOCK_SKEW_MS < since_ms {
            continue;
        }
        let key = Key { kind: Kind::DmSend, conversation: conv.key().to_string(), id: item.id.clone() };
        if pipe.store.is_seen(&p.name, &key).map_err(|e| {
            ProviderError::new(crate::provider::ErrorClass::Conversation, "(state)", None, "state_error", e.to_string())
        })? {
            continue;
        }
        found.push((at_ms, item.id.clone(), created));
    }
    found.sort();
    tracing::info!(pipeline = %p.name, conversation = %conv.key(), matches = found.len(), "read the conversation back for a send whose answer was lost");
    Ok(found.into_iter().next().map(|(_, id, created)| (id, created)))
}
