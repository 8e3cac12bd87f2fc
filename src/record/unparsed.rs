//! `dm_unparsed`: a history item that could not be normalized (no ID, a field of the wrong type, not an
//! object at all) is not allowed to block its page. It becomes one record that keeps the item as the
//! provider sent it, so nothing the provider sent is lost and a loader can see what went wrong:
//!
//! ```json
//! {"kind":"dm_unparsed","provider":"xquik","pipeline":"support","account":"acme_support",
//!  "conversation_user_id":"44196397","reason":"the item does not match the documented shape: missing field `id`",
//!  "raw":{"text":"…","senderId":"44196397"},"source_endpoint":"GET /x/dm/{userId}/history",
//!  "synced_at":"2026-11-23T13:00:00.000Z"}
//! ```
//!
//! - `raw` is the item's JSON text exactly as received, except that line breaks between tokens become
//!   spaces (a record is one line) and the body-level repairs of `provider::body` (U+FFFD for bytes that
//!   are not UTF-8 and for unpaired surrogate escapes) have been applied.
//! - Exactly once: the key is (`dm_unparsed`, conversation, the item's `id` when it has a usable one, else
//!   the SHA-256 of `raw` as written, in hex). It is computed from the record itself, so start-up recovery
//!   finds the same key in a written line.
//! - `reason` says what is wrong in words that quote nothing from the item.
//! - With `redact_text`, `raw` is the item re-serialized without any member named in [`REDACTED`], at any
//!   depth (and a bare string item becomes `null`): a redacting pipeline writes no message text, not even
//!   through `raw`.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::value::RawValue;
use sha2::{Digest, Sha256};

use super::{Context, Conversation, Kind, Record};

/// Members dropped from `raw` when the pipeline redacts text: the message text itself and the fields that
/// quote or preview it (X's `entities`, GetXAPI's `links`, `card`, `shared_tweet`).
pub const REDACTED: [&str; 9] =
    ["text", "full_text", "entities", "links", "card", "shared_tweet", "quoted_tweet", "message", "last_message"];

/// A history item an adapter could not normalize, as the provider sent it.
#[derive(Clone)]
pub struct Unparsed {
    /// What is wrong, quoting nothing from the item.
    pub reason: String,
    /// The item's JSON.
    pub raw: Box<RawValue>,
}

impl fmt::Debug for Unparsed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The item holds message text: never in a Debug print.
        write!(f, "Unparsed {{ reason: {:?}, raw: <{} bytes> }}", self.reason, self.raw.get().len())
    }
}

/// JSON held as text and written as JSON (not as a string), as `raw` is.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct RawJson(String);

impl RawJson {
    /// The JSON text.
    pub fn get(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for RawJson {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "<raw JSON, {} bytes>", self.0.len())
    }
}

impl Serialize for RawJson {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let raw = RawValue::from_string(self.0.clone()).map_err(serde::ser::Error::custom)?;
        raw.serialize(s)
    }
}

impl<'de> Deserialize<'de> for RawJson {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = Box::<RawValue>::deserialize(d)?;
        Ok(RawJson(raw.get().to_string()))
    }
}

/// The `dm_unparsed` record of an item (see the module doc).
pub fn unparsed_record(ctx: &Context<'_>, conv: &Conversation, u: &Unparsed, synced_at: &str) -> Record {
    let (conversation_user_id, conversation_id) = match conv {
        Conversation::Peer { user_id, conversation_id } => {
            let id = conversation_id
                .clone()
                .or_else(|| ctx.account_user_id.and_then(|me| crate::ids::one_to_one_id(me, user_id)));
            (Some(user_id.clone()), id)
        }
        Conversation::Group { conversation_id } => (None, Some(conversation_id.clone())),
    };
    Record {
        kind: Some(Kind::DmUnparsed),
        provider: ctx.provider.to_string(),
        pipeline: ctx.pipeline.to_string(),
        account: ctx.account.to_string(),
        conversation_user_id,
        conversation_id,
        reason: Some(u.reason.clone()),
        raw: Some(RawJson(written_raw(&u.raw, ctx.redact_text))),
        source_endpoint: ctx.source_endpoint.to_string(),
        synced_at: Some(synced_at.to_string()),
        ..Record::default()
    }
}

/// `raw` as the record holds it: one line, and without text when the pipeline redacts it.
fn written_raw(raw: &RawValue, redact: bool) -> String {
    if redact {
        let mut v: serde_json::Value = serde_json::from_str(raw.get()).unwrap_or(serde_json::Value::Null);
        if v.is_string() {
            v = serde_json::Value::Null;
        }
        strip(&mut v);
        return v.to_string();
    }
    // Between JSON tokens only; inside a string a line break is always escaped.
    raw.get().replace(['\n', '\r'], " ")
}

fn strip(v: &mut serde_json::Value) {
    match v {
        serde_json::Value::Object(m) => {
            m.retain(|k, _| !REDACTED.iter().any(|r| r.eq_ignore_ascii_case(k)));
            m.values_mut().for_each(strip);
        }
        serde_json::Value::Array(a) => a.iter_mut().for_each(strip),
        _ => {}
    }
}

/// The ID part of a `dm_unparsed` key: the item's own `id` (a string or a number) when it is a usable ID,
/// else the SHA-256 of `raw`'s text in hex.
pub fn unparsed_id(raw: &str) -> String {
    #[derive(Deserialize)]
    struct WithId {
        #[serde(default)]
        id: Option<serde_json::Value>,
    }
    let own = serde_json::from_str::<WithId>(raw).ok().and_then(|w| match w.id? {
        serde_json::Value::String(s) => Some(s),
        serde_json::Value::Number(n) if n.is_u64() => Some(n.to_string()),
        _ => None,
    });
    match own {
        Some(id) if crate::ids::is_safe_id(&id) => id,
        _ => Sha256::digest(raw.as_bytes()).iter().map(|b| format!("{b:02x}")).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::tests::ctx;

    fn item(json: &str, reason: &str) -> Unparsed {
        Unparsed { reason: reason.into(), raw: RawValue::from_string(json.to_string()).unwrap() }
    }

    fn peer() -> Conversation {
        Conversation::Peer { user_id: "44196397".into(), conversation_id: None }
    }

    #[test]
    fn raw_is_kept_as_received_and_keyed_by_id_or_hash() {
        let u = item(r#"{"id":"123","text":"hi","senderId":{"oops":true}}"#, "wrong type");
        let r = unparsed_record(&ctx(false), &peer(), &u, "t");
        let line = r.to_line();
        assert_eq!(
            line,
            r#"{"kind":"dm_unparsed","provider":"xquik","pipeline":"support","account":"acme_support","conversation_user_id":"44196397","reason":"wrong type","raw":{"id":"123","text":"hi","senderId":{"oops":true}},"source_endpoint":"GET /x/dm/{userId}/history","synced_at":"t"}"#
        );
        let key = crate::record::key_of_line(&line).unwrap();
        assert_eq!((key.kind, key.conversation.as_str(), key.id.as_str()), (Kind::DmUnparsed, "44196397", "123"));

        let no_id = item("{\"text\":\"hi\",\n \"x\": 1}", "no id");
        let r = unparsed_record(&ctx(false), &peer(), &no_id, "t");
        assert_eq!(r.raw.as_ref().unwrap().get(), "{\"text\":\"hi\",  \"x\": 1}", "one line");
        let key = r.key().unwrap();
        assert_eq!(key.id.len(), 64);
        assert_eq!(crate::record::key_of_line(&r.to_line()).unwrap(), key, "recovery finds the same key");
        let unsafe_id = item(r#"{"id":"../../x"}"#, "bad id");
        assert_eq!(unparsed_record(&ctx(false), &peer(), &unsafe_id, "t").key().unwrap().id.len(), 64);
        let numeric = item(r#"{"id":42}"#, "x");
        assert_eq!(unparsed_record(&ctx(false), &peer(), &numeric, "t").key().unwrap().id, "42");
    }

    #[test]
    fn redaction_reaches_into_raw() {
        let u = item(
            r#"{"id":"1","text":"secret","nested":{"Text":"secret2","ok":1},"entities":{"urls":["secret3"]}}"#,
            "x",
        );
        let line = unparsed_record(&ctx(true), &peer(), &u, "t").to_line();
        assert!(!line.contains("secret"), "{line}");
        assert!(line.contains(r#""nested":{"ok":1}"#), "{line}");
        let bare = item(r#""just a secret string""#, "not an object");
        let line = unparsed_record(&ctx(true), &peer(), &bare, "t").to_line();
        assert!(line.contains(r#""raw":null"#) && !line.contains("secret"), "{line}");
    }

    #[test]
    fn debug_never_shows_the_item() {
        let u = item(r#"{"text":"secret"}"#, "x");
        assert!(!format!("{u:?}").contains("secret"));
        let r = unparsed_record(&ctx(false), &peer(), &u, "t");
        assert!(!format!("{r:?}").contains("secret"));
    }
}
