//! The normalized handoff records (SPEC section 4) and the few time rules they need.
//!
//! A provider adapter turns its wire format into [`Item`]s; [`message_record`] turns an item into the one
//! [`Record`] shape every provider shares. The exactly-once key of a record is [`Record::key`], and the
//! same key can be read back from a written line with [`key_of_line`], which is how start-up recovery
//! reconciles lines that reached the disk after the last state commit.

use std::time::{Duration, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::config::Pipeline;
use crate::time::format_time;

mod line;
mod times;
mod unparsed;

pub use line::{message_line, Line};
pub use times::{normalize_time, parse_time};
pub use unparsed::{unparsed_id, unparsed_record, RawJson, Unparsed, REDACTED};

/// X's snowflake epoch (2010-11-04T01:42:54.657Z), in Unix milliseconds.
const SNOWFLAKE_EPOCH_MS: u64 = 1_288_834_974_657;

/// One entry of a history page as a provider adapter hands it over, before normalization.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Item {
    /// Message or event ID, as the provider gave it (always a string).
    pub id: String,
    /// `MessageCreate` for messages; X API v2 also yields `ParticipantsJoin` / `ParticipantsLeave`.
    pub event_type: Option<String>,
    pub sender_id: Option<String>,
    pub receiver_id: Option<String>,
    /// The provider's timestamp, unnormalized; None when omitted.
    pub created_at: Option<String>,
    pub text: Option<String>,
    pub media_url: Option<String>,
    /// The provider's conversation ID, for providers that have one.
    pub conversation_id: Option<String>,
    pub participant_ids: Option<Vec<String>>,
}

/// What kind of line a record is; part of the exactly-once key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    DmMessage,
    DmEvent,
    DmSend,
    DmDelete,
    /// A history item that could not be normalized, kept as received (see [`unparsed_record`]).
    DmUnparsed,
}

impl Kind {
    pub const fn as_str(self) -> &'static str {
        match self {
            Kind::DmMessage => "dm_message",
            Kind::DmEvent => "dm_event",
            Kind::DmSend => "dm_send",
            Kind::DmDelete => "dm_delete",
            Kind::DmUnparsed => "dm_unparsed",
        }
    }
}

/// One line of a handoff file. Field order is the SPEC's; absent fields are left out, never null.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub kind: Option<Kind>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub event_type: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub event_id: Option<String>,
    pub provider: String,
    pub pipeline: String,
    pub account: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub conversation_user_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub conversation_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub participant_ids: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sender_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub receiver_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub direction: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub send_status: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub created_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub media_url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub media_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub media_ids: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
    /// `dm_unparsed`: why the item could not be normalized.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// `dm_unparsed`: the item as received.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub raw: Option<RawJson>,
    pub source_endpoint: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub synced_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sent_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deleted_at: Option<String>,
}

/// The exactly-once identity of a record within one pipeline: (kind, conversation, ID).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Key {
    pub kind: Kind,
    /// The peer's user ID for 1:1 conversations keyed by peer, else the provider's conversation ID.
    pub conversation: String,
    /// `message_id`, or `event_id` for `dm_event` records.
    pub id: String,
}

impl Record {
    /// The exactly-once key, or None for a line that is not one of ours.
    pub fn key(&self) -> Option<Key> {
        let kind = self.kind?;
        let conversation = self.conversation_user_id.clone().or_else(|| self.conversation_id.clone())?;
        let id = match kind {
            Kind::DmEvent => self.event_id.clone()?,
            Kind::DmUnparsed => unparsed_id(self.raw.as_ref()?.get()),
            _ => self.message_id.clone()?,
        };
        Some(Key { kind, conversation, id })
    }

    /// The line as written (no trailing newline).
    pub fn to_line(&self) -> String {
        // Serializing a struct of strings cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// Reads the exactly-once key back from a written line.
pub fn key_of_line(line: &str) -> Option<Key> {
    serde_json::from_str::<Record>(line).ok()?.key()
}

/// The `kind` of a line this crate wrote, read from its first bytes instead of parsing the line: every
/// record serializes `kind` first ([`Record`]'s field order). This is what the pipeline writer counts
/// records by, once per line, so it must cost next to nothing. `unknown` for a line of another shape.
pub fn kind_of_line(line: &str) -> &str {
    line.strip_prefix(r#"{"kind":""#)
        .and_then(|rest| rest.split_once('"'))
        .map(|(kind, _)| kind)
        .filter(|k| !k.is_empty() && k.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'))
        .unwrap_or("unknown")
}

/// What a pipeline stamps on each of its records.
#[derive(Clone, Debug)]
pub struct Context<'a> {
    pub provider: &'a str,
    pub pipeline: &'a str,
    pub account: &'a str,
    /// The account's own user ID when known; decides `direction` for providers keyed by conversation.
    pub account_user_id: Option<&'a str>,
    pub redact_text: bool,
    pub source_endpoint: &'a str,
}

/// Where a history page came from: a peer (1:1 by user ID) or a provider conversation ID.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Conversation {
    Peer { user_id: String, conversation_id: Option<String> },
    Group { conversation_id: String },
}

impl Conversation {
    /// The conversation part of the exactly-once key.
    pub fn key(&self) -> &str {
        match self {
            Conversation::Peer { user_id, .. } => user_id,
            Conversation::Group { conversation_id } => conversation_id,
        }
    }

    /// A configured provider conversation ID (`conv:<id>`). A 1:1 ID `"<a>-<b>"` that names the account is
    /// the conversation with the other user, keyed by that peer like a listed peer (so the two spellings
    /// never write the same messages twice); any other ID is a group, keyed by its ID.
    pub fn from_conversation_id(id: &str, account_user_id: Option<&str>) -> Conversation {
        if let (Some((a, b)), Some(me)) = (id.split_once('-'), account_user_id) {
            let peer = match (a == me, b == me) {
                (true, false) => Some(b),
                (false, true) => Some(a),
                _ => None,
            };
            if let Some(peer) = peer.filter(|p| !p.is_empty()) {
                return Conversation::Peer { user_id: peer.to_string(), conversation_id: Some(id.to_string()) };
            }
        }
        Conversation::Group { conversation_id: id.to_string() }
    }
}

/// Normalizes one history item into its record.
pub fn message_record(ctx: &Context<'_>, conv: &Conversation, item: &Item, synced_at: &str) -> Record {
    let is_event = item_kind(item) == Kind::DmEvent;
    let created_at = item.created_at.as_deref().and_then(normalize_time).or_else(|| snowflake_time(&item.id));
    let (conversation_user_id, conversation_id) = match conv {
        Conversation::Peer { user_id, conversation_id } => {
            (Some(user_id.clone()), conversation_id.clone().or_else(|| item.conversation_id.clone()))
        }
        Conversation::Group { conversation_id } => (None, Some(conversation_id.clone())),
    };
    let direction = match (conv, item.sender_id.as_deref()) {
        (Conversation::Peer { user_id, .. }, Some(s)) => Some(if s == user_id { "inbound" } else { "outbound" }),
        (Conversation::Group { .. }, Some(s)) => {
            Some(if Some(s) == ctx.account_user_id { "outbound" } else { "inbound" })
        }
        (_, None) => None,
    };
    Record {
        kind: Some(if is_event { Kind::DmEvent } else { Kind::DmMessage }),
        event_type: if is_event { item.event_type.clone() } else { None },
        event_id: if is_event { Some(item.id.clone()) } else { None },
        provider: ctx.provider.to_string(),
        pipeline: ctx.pipeline.to_string(),
        account: ctx.account.to_string(),
        conversation_user_id,
        conversation_id,
        message_id: if is_event { None } else { Some(item.id.clone()) },
        participant_ids: if is_event { item.participant_ids.clone() } else { None },
        sender_id: item.sender_id.clone(),
        receiver_id: if matches!(conv, Conversation::Group { .. }) || is_event {
            None
        } else {
            item.receiver_id.clone()
        },
        direction: if is_event { None } else { direction.map(str::to_string) },
        created_at,
        text: if ctx.redact_text || is_event { None } else { item.text.clone() },
        media_url: if is_event { None } else { item.media_url.clone() },
        source_endpoint: ctx.source_endpoint.to_string(),
        synced_at: Some(synced_at.to_string()),
        ..Record::default()
    }
}

/// The fields every record of a pipeline starts with; the builders below fill in the rest.
fn header(p: &Pipeline, kind: Kind, conv: &Conversation, source_endpoint: &str) -> Record {
    let (conversation_user_id, conversation_id) = conversation_fields(p, conv);
    Record {
        kind: Some(kind),
        provider: p.provider.name().to_string(),
        pipeline: p.name.clone(),
        account: p.account.clone(),
        conversation_user_id,
        conversation_id,
        source_endpoint: source_endpoint.to_string(),
        ..Record::default()
    }
}

/// `conversation_user_id` (1:1 conversations only) and `conversation_id` (providers that have conversation
/// IDs: for a 1:1 conversation the one X and GetXAPI build from the two user IDs) as a record carries them.
pub fn conversation_fields(p: &Pipeline, conv: &Conversation) -> (Option<String>, Option<String>) {
    match conv {
        Conversation::Peer { user_id, conversation_id } => {
            let id = conversation_id.clone().or_else(|| {
                p.provider.has_conversation_ids().then(|| crate::ids::one_to_one_id(&p.account, user_id)).flatten()
            });
            (Some(user_id.clone()), id)
        }
        Conversation::Group { conversation_id } => (None, Some(conversation_id.clone())),
    }
}

/// What a `dm_send` record says about one sent message.
#[derive(Clone, Debug)]
pub struct Sent<'a> {
    /// The provider's ID of the new message (X: its event ID).
    pub message_id: &'a str,
    pub text: &'a str,
    pub media_id: Option<&'a str>,
    /// Set for sends that carry an idempotency key (1:1 `send` jobs).
    pub idempotency_key: Option<&'a str>,
    /// The participants of a group this send created.
    pub participant_ids: Option<Vec<String>>,
    /// `sent`, or `confirmed_by_history` when the provider's answer was lost and history showed the message.
    pub status: &'a str,
    pub sent_at: &'a str,
}

/// The `dm_send` record (SPEC section 4): `media_id`/`media_ids` only with media, `text` unless redacted.
pub fn send_record(p: &Pipeline, conv: &Conversation, endpoint: &str, sent: Sent<'_>) -> Record {
    Record {
        message_id: Some(sent.message_id.to_string()),
        participant_ids: sent.participant_ids,
        send_status: Some(sent.status.to_string()),
        text: (!p.redact_text).then(|| sent.text.to_string()),
        media_id: sent.media_id.map(str::to_string),
        media_ids: sent.media_id.map(|m| vec![m.to_string()]),
        idempotency_key: sent.idempotency_key.map(str::to_string),
        sent_at: Some(sent.sent_at.to_string()),
        ..header(p, Kind::DmSend, conv, endpoint)
    }
}

/// The `dm_delete` record (SPEC section 4, "Other providers' records").
pub fn delete_record(p: &Pipeline, conv: &Conversation, endpoint: &str, message_id: &str, deleted_at: &str) -> Record {
    Record {
        message_id: Some(message_id.to_string()),
        deleted_at: Some(deleted_at.to_string()),
        ..header(p, Kind::DmDelete, conv, endpoint)
    }
}

/// The kind of record a history item becomes: `dm_event` for X API v2's membership events, else
/// `dm_message`. Its key is (this kind, the conversation's key, the item's ID).
pub fn item_kind(item: &Item) -> Kind {
    match item.event_type.as_deref() {
        Some(t) if t != "MessageCreate" => Kind::DmEvent,
        _ => Kind::DmMessage,
    }
}

/// The creation time encoded in an X snowflake ID, for when the API omits `createdAt`.
pub fn snowflake_time(id: &str) -> Option<String> {
    let n: u64 = id.parse().ok()?;
    let ms = (n >> 22).checked_add(SNOWFLAKE_EPOCH_MS)?;
    Some(format_time(UNIX_EPOCH + Duration::from_millis(ms)))
}

/// Orders two provider IDs: numerically when both are numbers (snowflakes), else by length then bytes.
pub fn id_cmp(a: &str, b: &str) -> std::cmp::Ordering {
    // Fast path for the usual case, two canonical decimals (no sign, no leading zero): by length, then
    // bytes, which is their numeric order. Sorting every page compares IDs a lot.
    let canonical =
        |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) && (s.len() == 1 || !s.starts_with('0'));
    if canonical(a) && canonical(b) {
        return (a.len(), a).cmp(&(b.len(), b));
    }
    match (a.parse::<u128>(), b.parse::<u128>()) {
        (Ok(x), Ok(y)) => x.cmp(&y),
        _ => (a.len(), a).cmp(&(b.len(), b)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn id_order_is_numeric_for_numbers_and_by_length_then_bytes_otherwise() {
        let ids = ["0", "7", "10", "007", "99", "1893726451023847424", "18937264510238474240", "+5", "abc", "ab", ""];
        for a in ids {
            for b in ids {
                let want = match (a.parse::<u128>(), b.parse::<u128>()) {
                    (Ok(x), Ok(y)) => x.cmp(&y),
                    _ => (a.len(), a).cmp(&(b.len(), b)),
                };
                assert_eq!(id_cmp(a, b), want, "{a} vs {b}");
            }
        }
    }

    /// A context for record tests here and in `record`'s submodules.
    pub(super) fn ctx(redact: bool) -> Context<'static> {
        Context {
            provider: "xquik",
            pipeline: "support",
            account: "acme_support",
            account_user_id: None,
            redact_text: redact,
            source_endpoint: "GET /x/dm/{userId}/history",
        }
    }

    fn peer() -> Conversation {
        Conversation::Peer { user_id: "44196397".into(), conversation_id: None }
    }

    #[test]
    fn spec_example_round_trips_field_for_field() {
        let item = Item {
            id: "1893456789012345678".into(),
            sender_id: Some("44196397".into()),
            receiver_id: Some("987654321".into()),
            created_at: Some("2026-02-24T10:00:00.000Z".into()),
            text: Some("Hey, great tool!".into()),
            media_url: Some("https://pbs.twimg.com/dm_media/abc.jpg".into()),
            ..Item::default()
        };
        let line = message_record(&ctx(false), &peer(), &item, "2026-11-23T13:00:00.000Z").to_line();
        assert_eq!(
            line,
            r#"{"kind":"dm_message","provider":"xquik","pipeline":"support","account":"acme_support","conversation_user_id":"44196397","message_id":"1893456789012345678","sender_id":"44196397","receiver_id":"987654321","direction":"inbound","created_at":"2026-02-24T10:00:00.000Z","text":"Hey, great tool!","media_url":"https://pbs.twimg.com/dm_media/abc.jpg","source_endpoint":"GET /x/dm/{userId}/history","synced_at":"2026-11-23T13:00:00.000Z"}"#
        );
        let key = key_of_line(&line).unwrap();
        assert_eq!(
            key,
            Key { kind: Kind::DmMessage, conversation: "44196397".into(), id: "1893456789012345678".into() }
        );
    }

    #[test]
    fn the_kind_of_a_line_is_read_from_its_first_bytes() {
        let item = Item { id: "1893456789012345678".into(), ..Item::default() };
        let line = message_record(&ctx(false), &peer(), &item, "2026-11-23T13:00:00.000Z").to_line();
        assert_eq!(kind_of_line(&line), "dm_message");
        let send = Record { kind: Some(Kind::DmSend), ..Record::default() }.to_line();
        assert_eq!(kind_of_line(&send), "dm_send");
        for other in ["", "{}", r#"{"text":"{\"kind\":\"x\"}"}"#, r#"{"kind":"A\"b"}"#, r#"{"kind":""}"#] {
            assert_eq!(kind_of_line(other), "unknown", "{other}");
        }
    }

    #[test]
    fn omitted_fields_stay_omitted_and_created_at_comes_from_the_snowflake() {
        let item = Item {
            id: "1893456789012345678".into(),
            sender_id: Some("987654321".into()),
            receiver_id: Some("44196397".into()),
            ..Item::default()
        };
        let r = message_record(&ctx(false), &peer(), &item, "t");
        assert_eq!(r.direction.as_deref(), Some("outbound"));
        assert_eq!(r.created_at.as_deref(), Some("2025-02-23T00:24:11.883Z"));
        let line = r.to_line();
        assert!(!line.contains("text") && !line.contains("media_url") && !line.contains("null"), "{line}");
    }

    #[test]
    fn redaction_drops_text_only() {
        let item = Item { id: "5".into(), text: Some("secret".into()), media_url: Some("m".into()), ..Item::default() };
        let r = message_record(&ctx(true), &peer(), &item, "t");
        assert_eq!(r.text, None);
        assert_eq!(r.media_url.as_deref(), Some("m"));
    }

    #[test]
    fn ids_order_numerically() {
        use std::cmp::Ordering::*;
        assert_eq!(id_cmp("99", "100"), Less);
        assert_eq!(id_cmp("1893456789012345678", "1893456789012345677"), Greater);
        assert_eq!(id_cmp("abc", "abd"), Less);
    }

    #[test]
    fn one_to_one_conversation_ids_are_the_peer() {
        let c = Conversation::from_conversation_id("44196397-987654321", Some("987654321"));
        let peer =
            Conversation::Peer { user_id: "44196397".into(), conversation_id: Some("44196397-987654321".into()) };
        assert_eq!(c, peer);
        assert_eq!(c.key(), "44196397");
        let g = Conversation::from_conversation_id("1578398451921985538", Some("987654321"));
        assert_eq!(g.key(), "1578398451921985538");
        // A 1:1 ID without the account is not ours to read as a peer.
        assert!(matches!(Conversation::from_conversation_id("1-2", Some("3")), Conversation::Group { .. }));
        assert!(matches!(Conversation::from_conversation_id("1-2", None), Conversation::Group { .. }));
    }

    #[test]
    fn group_records_carry_conversation_id_and_no_receiver() {
        let c = Context { account_user_id: Some("1"), ..ctx(false) };
        let conv = Conversation::Group { conversation_id: "1578398451921985538".into() };
        let item =
            Item { id: "9".into(), sender_id: Some("1".into()), receiver_id: Some("2".into()), ..Item::default() };
        let r = message_record(&c, &conv, &item, "t");
        assert_eq!((r.conversation_user_id, r.receiver_id, r.direction.as_deref()), (None, None, Some("outbound")));
        let ev = Item {
            id: "10".into(),
            event_type: Some("ParticipantsJoin".into()),
            participant_ids: Some(vec!["3".into()]),
            sender_id: Some("1".into()),
            ..Item::default()
        };
        let r = message_record(&c, &conv, &ev, "t");
        assert_eq!(r.kind, Some(Kind::DmEvent));
        assert_eq!(r.key().unwrap().id, "10");
        assert_eq!(r.message_id, None);
    }
}
