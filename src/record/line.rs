//! The hot path's record writer: a message record serialized straight from the borrowed [`Item`] and
//! [`Context`] into its line, without first building an owned [`Record`] (a dozen `String`s per message).
//! The line is byte for byte what `message_record(..).to_line()` writes: the same fields, in the same order,
//! left out under the same rules. A test holds the two together for every shape of item.

use serde::Serialize;

use super::{item_kind, snowflake_time, Context, Conversation, Item, Kind};
use crate::record::normalize_time;

/// [`super::Record`]'s fields a history record can carry, borrowed. Field order and skip rules are Record's.
#[derive(Serialize)]
struct MessageLine<'a> {
    kind: Kind,
    #[serde(skip_serializing_if = "Option::is_none")]
    event_type: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    event_id: Option<&'a str>,
    provider: &'a str,
    pipeline: &'a str,
    account: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    conversation_user_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    conversation_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    message_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    participant_ids: Option<&'a [String]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    sender_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    receiver_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    direction: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    created_at: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    text: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    media_url: Option<&'a str>,
    source_endpoint: &'a str,
    synced_at: &'a str,
}

/// A history item's line, and its `created_at` as written (RFC 3339 millis `Z`, which compare as strings).
pub struct Line {
    pub line: String,
    pub created_at: Option<String>,
}

/// Serializes a history item's record (`dm_message` or `dm_event`) into its line. Same result as
/// `message_record(ctx, conv, item, synced_at).to_line()`.
pub fn message_line(ctx: &Context<'_>, conv: &Conversation, item: &Item, synced_at: &str) -> Line {
    let kind = item_kind(item);
    let is_event = kind == Kind::DmEvent;
    let created_at = item.created_at.as_deref().and_then(normalize_time).or_else(|| snowflake_time(&item.id));
    let one_to_one_id;
    let (conversation_user_id, conversation_id) = match conv {
        Conversation::Peer { user_id, conversation_id } => {
            one_to_one_id = conversation_id.as_deref().or(item.conversation_id.as_deref());
            (Some(user_id.as_str()), one_to_one_id)
        }
        Conversation::Group { conversation_id } => (None, Some(conversation_id.as_str())),
    };
    let direction = match (conv, item.sender_id.as_deref()) {
        (Conversation::Peer { user_id, .. }, Some(s)) => Some(if s == user_id { "inbound" } else { "outbound" }),
        (Conversation::Group { .. }, Some(s)) => {
            Some(if Some(s) == ctx.account_user_id { "outbound" } else { "inbound" })
        }
        (_, None) => None,
    };
    let record = MessageLine {
        kind,
        event_type: if is_event { item.event_type.as_deref() } else { None },
        event_id: is_event.then_some(item.id.as_str()),
        provider: ctx.provider,
        pipeline: ctx.pipeline,
        account: ctx.account,
        conversation_user_id,
        conversation_id,
        message_id: (!is_event).then_some(item.id.as_str()),
        participant_ids: if is_event { item.participant_ids.as_deref() } else { None },
        sender_id: item.sender_id.as_deref(),
        receiver_id: if matches!(conv, Conversation::Group { .. }) || is_event {
            None
        } else {
            item.receiver_id.as_deref()
        },
        direction: if is_event { None } else { direction },
        created_at: created_at.as_deref(),
        text: if ctx.redact_text || is_event { None } else { item.text.as_deref() },
        media_url: if is_event { None } else { item.media_url.as_deref() },
        source_endpoint: ctx.source_endpoint,
        synced_at,
    };
    // Sized once: the fixed fields take about 300 bytes, the text (escaped) a little more than its length.
    let text_len = record.text.map_or(0, str::len) + record.media_url.map_or(0, str::len);
    let mut buf = Vec::with_capacity(384 + text_len + text_len / 8);
    // Serializing borrowed strings into a Vec cannot fail, and serde_json writes UTF-8 only.
    let _ = serde_json::to_writer(&mut buf, &record);
    // SAFETY: serde_json's serializer writes only valid UTF-8 (it copies `&str`s and escapes, and emits
    // ASCII for everything else), and nothing else wrote into `buf`. Checking it again was 1% of a backfill.
    let line = unsafe { String::from_utf8_unchecked(buf) };
    Line { line, created_at }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::message_record;

    #[test]
    fn the_line_is_exactly_what_the_owned_record_writes() {
        let base = Item {
            id: "1893726451023847424".into(),
            sender_id: Some("44196397".into()),
            receiver_id: Some("987654321".into()),
            created_at: Some("2026-02-24T10:00:00+05:30".into()),
            text: Some("quote \" backslash \\ newline \n tab \t emoji 😀 nul \u{0}".into()),
            media_url: Some("https://ton.twimg.com/dm/1/a.jpg".into()),
            ..Item::default()
        };
        let event = Item {
            event_type: Some("ParticipantsJoin".into()),
            participant_ids: Some(vec!["1".into(), "2".into()]),
            created_at: None,
            conversation_id: Some("1578398451921985538".into()),
            ..base.clone()
        };
        let sparse = Item { id: "17".into(), ..Item::default() };
        let explicit_create = Item { event_type: Some("MessageCreate".into()), ..base.clone() };
        let convs = [
            Conversation::Peer { user_id: "44196397".into(), conversation_id: None },
            Conversation::Peer { user_id: "44196397".into(), conversation_id: Some("44196397-987654321".into()) },
            Conversation::Group { conversation_id: "1578398451921985538".into() },
        ];
        for redact_text in [false, true] {
            for account_user_id in [None, Some("987654321")] {
                let ctx = Context {
                    provider: "x-api-v2",
                    pipeline: "support",
                    account: "acme_support",
                    account_user_id,
                    redact_text,
                    source_endpoint: "GET /2/dm_conversations/with/{participant_id}/dm_events",
                };
                for conv in &convs {
                    for item in [&base, &event, &sparse, &explicit_create] {
                        let owned = message_record(&ctx, conv, item, "2026-11-23T13:00:00.000Z");
                        let line = message_line(&ctx, conv, item, "2026-11-23T13:00:00.000Z");
                        assert_eq!(line.line, owned.to_line(), "{item:?} in {conv:?}");
                        assert_eq!(line.created_at, owned.created_at);
                    }
                }
            }
        }
    }
}
