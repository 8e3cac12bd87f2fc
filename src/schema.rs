//! `dm-handoff schema`: the JSON Schema (draft 2020-12) of every record kind the handoff files hold.
//!
//! The schema is written here, beside [`crate::record::Record`], rather than derived from it:
//! `Record` is one struct for every kind (so the writer has one shape), while loaders need each
//! kind's own required and optional fields. Tests keep the two from drifting: every field `Record`
//! can write is in the schema and nothing else is, and records built by the real builders
//! (`record::message_record`, `outbound::send_record`, `manage::delete_record`,
//! `manage::group_send_record`) and lines of a real sync validate against it.

use serde_json::{json, Map, Value};

/// The schema's `$id`; its last part is the manifests' `schema_version`.
pub const ID: &str = "urn:dm-handoff:record:1";

/// What a record's key fields look like: IDs are JSON strings, never numbers.
fn id() -> Value {
    json!({"type": "string", "minLength": 1})
}

fn ids() -> Value {
    json!({"type": "array", "items": {"$ref": "#/$defs/id"}})
}

fn string() -> Value {
    json!({"type": "string"})
}

fn timestamp() -> Value {
    json!({"$ref": "#/$defs/timestamp"})
}

/// The fields every kind starts with.
fn header(kind: &str) -> Vec<(&'static str, Value)> {
    vec![
        ("kind", json!({"const": kind})),
        ("provider", json!({"enum": ["xquik", "x-api-v2", "getxapi"]})),
        ("pipeline", json!({"type": "string", "pattern": "^[A-Za-z0-9_-]{1,64}$"})),
        ("account", json!({"type": "string", "minLength": 1})),
        (
            "conversation_user_id",
            json!({"$ref": "#/$defs/id", "description": "The peer of a 1:1 conversation (absent for groups)."}),
        ),
        (
            "conversation_id",
            json!({"$ref": "#/$defs/id", "description": "The provider's conversation ID (x-api-v2, getxapi; groups)."}),
        ),
    ]
}

/// One kind's schema: `fields` in record order, `required` among them.
fn kind(description: &str, fields: Vec<(&'static str, Value)>, required: &[&str], keyed: bool) -> Value {
    let mut properties = Map::new();
    for (name, schema) in fields {
        properties.insert(name.to_string(), schema);
    }
    let mut schema = json!({
        "type": "object",
        "description": description,
        "properties": properties,
        "required": required,
        "additionalProperties": false,
    });
    if keyed {
        // The exactly-once key needs a conversation: the peer, or the provider's conversation ID.
        schema["anyOf"] = json!([{"required": ["conversation_user_id"]}, {"required": ["conversation_id"]}]);
    }
    schema
}

/// The schema document.
pub fn document() -> Value {
    let mut message = header("dm_message");
    message.extend([
        ("message_id", id()),
        ("sender_id", id()),
        ("receiver_id", json!({"$ref": "#/$defs/id", "description": "1:1 only."})),
        ("direction", json!({"enum": ["inbound", "outbound"]})),
        (
            "created_at",
            json!({"$ref": "#/$defs/timestamp", "description": "The provider's time, else the snowflake ID's."}),
        ),
        (
            "text",
            json!({"type": "string", "description": "Absent when the API omits it or the pipeline redacts text."}),
        ),
        ("media_url", string()),
        ("source_endpoint", string()),
        ("synced_at", timestamp()),
    ]);
    let mut event = header("dm_event");
    event.extend([
        ("event_type", json!({"type": "string", "minLength": 1, "description": "ParticipantsJoin or ParticipantsLeave (X API v2)."})),
        ("event_id", id()),
        ("participant_ids", ids()),
        ("sender_id", json!({"$ref": "#/$defs/id", "description": "Who added the participants (joins only)."})),
        ("created_at", timestamp()),
        ("source_endpoint", string()),
        ("synced_at", timestamp()),
    ]);
    let mut send = header("dm_send");
    send.extend([
        ("message_id", id()),
        (
            "participant_ids",
            json!({"type": "array", "items": {"$ref": "#/$defs/id"}, "description": "A new group's participants."}),
        ),
        ("send_status", json!({"enum": ["sent", "confirmed_by_history"]})),
        ("text", string()),
        ("media_id", id()),
        ("media_ids", json!({"type": "array", "items": {"$ref": "#/$defs/id"}, "minItems": 1})),
        ("idempotency_key", json!({"type": "string", "minLength": 1, "maxLength": 255})),
        ("source_endpoint", string()),
        ("sent_at", timestamp()),
    ]);
    let mut delete = header("dm_delete");
    delete.extend([("message_id", id()), ("source_endpoint", string()), ("deleted_at", timestamp())]);
    let mut unparsed = header("dm_unparsed");
    unparsed.extend([
        ("reason", json!({"type": "string", "minLength": 1, "description": "Why the item could not be normalized."})),
        (
            "raw",
            json!({"description": "The item exactly as received: any JSON value, or a string when it was not JSON."}),
        ),
        ("source_endpoint", string()),
        ("synced_at", timestamp()),
    ]);
    let common = ["kind", "provider", "pipeline", "account", "source_endpoint"];
    let req = |extra: &[&'static str]| -> Vec<&'static str> { common.iter().chain(extra).copied().collect() };
    json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": ID,
        "title": "dm-handoff record",
        "description": "One line of a dm-handoff handoff file (SPEC section 4). Absent fields are left out, never null.",
        "oneOf": [
            {"$ref": "#/$defs/dm_message"},
            {"$ref": "#/$defs/dm_event"},
            {"$ref": "#/$defs/dm_send"},
            {"$ref": "#/$defs/dm_delete"},
            {"$ref": "#/$defs/dm_unparsed"},
        ],
        "$defs": {
            "dm_message": kind(
                "A message from a history endpoint. Key: (dm_message, conversation, message_id).",
                message,
                &req(&["message_id", "synced_at"]),
                true,
            ),
            "dm_event": kind(
                "A group membership event (X API v2). Key: (dm_event, conversation, event_id).",
                event,
                &req(&["event_type", "event_id", "synced_at"]),
                true,
            ),
            "dm_send": kind(
                "A DM this pipeline sent. Key: (dm_send, conversation, message_id).",
                send,
                &req(&["message_id", "send_status", "sent_at"]),
                true,
            ),
            "dm_delete": kind(
                "A DM this pipeline deleted (X API v2). Key: (dm_delete, conversation, message_id).",
                delete,
                &req(&["message_id", "deleted_at"]),
                true,
            ),
            "dm_unparsed": kind(
                "A history item that could not be normalized, kept as received.",
                unparsed,
                &req(&["reason", "raw", "synced_at"]),
                false,
            ),
            "id": id(),
            "timestamp": {
                "type": "string",
                "format": "date-time",
                "pattern": "^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\\.[0-9]{3}Z$",
                "description": "RFC 3339 UTC with milliseconds and Z.",
            },
        },
    })
}

/// The document as `dm-handoff schema` prints it.
pub fn text() -> String {
    let mut s = serde_json::to_string_pretty(&document()).unwrap_or_default();
    s.push('\n');
    s
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;
    use crate::config::Pipeline;
    use crate::record::{
        delete_record, message_record, send_record, unparsed_record, Context, Conversation, Item, Kind, Record, Sent,
        Unparsed,
    };

    fn validator() -> jsonschema::Validator {
        jsonschema::options().should_validate_formats(true).build(&document()).expect("the schema compiles")
    }

    fn errors(v: &jsonschema::Validator, record: &Value) -> Vec<String> {
        v.iter_errors(record).map(|e| format!("{} at {}", e, e.instance_path())).collect()
    }

    fn assert_valid(v: &jsonschema::Validator, record: &Record) {
        let value: Value = serde_json::from_str(&record.to_line()).unwrap();
        let errs = errors(v, &value);
        assert!(errs.is_empty(), "{value}\n{errs:#?}");
    }

    fn pipeline(provider: &str, account: &str, redact: bool) -> Pipeline {
        let text = format!(
            "[[pipelines]]\nname = \"support\"\nprovider = \"{provider}\"\napi_key_env = \"K\"\naccount = \"{account}\"\n\
             redact_text = {redact}\n{}",
            if provider == "getxapi" { "auth_token_env = \"T\"\n" } else { "" }
        );
        let cfg = crate::config::from_str(&text, std::path::Path::new("p.toml"), std::path::Path::new(".")).unwrap();
        cfg.pipelines.into_iter().next().unwrap()
    }

    /// Records of every kind, built by the functions the product writes them with.
    fn every_record() -> Vec<Record> {
        let ctx = |provider, account_user_id, redact_text| Context {
            provider,
            pipeline: "support",
            account: "987654321",
            account_user_id,
            redact_text,
            source_endpoint: "GET /2/dm_conversations/{dm_conversation_id}/dm_events",
        };
        let full = Item {
            id: "1893456789012345678".into(),
            event_type: Some("MessageCreate".into()),
            sender_id: Some("44196397".into()),
            receiver_id: Some("987654321".into()),
            created_at: Some("2026-02-24T10:00:00+00:00".into()),
            text: Some("Hey".into()),
            media_url: Some("https://pbs.twimg.com/dm_media/abc.jpg".into()),
            conversation_id: Some("44196397-987654321".into()),
            participant_ids: None,
        };
        let bare = Item { id: "1893456789012345679".into(), ..Item::default() };
        let join = Item {
            id: "1582838499983564806".into(),
            event_type: Some("ParticipantsJoin".into()),
            participant_ids: Some(vec!["944480690".into()]),
            sender_id: Some("987654321".into()),
            ..Item::default()
        };
        let leave = Item { event_type: Some("ParticipantsLeave".into()), sender_id: None, ..join.clone() };
        let peer = Conversation::Peer { user_id: "44196397".into(), conversation_id: None };
        let group = Conversation::Group { conversation_id: "1578398451921985538".into() };
        let t = "2026-11-23T13:00:00.000Z";
        let mut out = vec![
            message_record(&ctx("xquik", None, false), &peer, &full, t),
            message_record(&ctx("xquik", None, true), &peer, &bare, t),
            message_record(&ctx("x-api-v2", Some("987654321"), false), &group, &full, t),
            message_record(&ctx("x-api-v2", Some("987654321"), false), &group, &join, t),
            message_record(&ctx("x-api-v2", Some("987654321"), false), &group, &leave, t),
        ];
        let sent = |id: &'static str, media: Option<&'static str>, key: Option<&'static str>, participants| Sent {
            message_id: id,
            text: "Hi",
            media_id: media,
            idempotency_key: key,
            participant_ids: participants,
            status: "sent",
            sent_at: t,
        };
        let to = Conversation::Peer { user_id: "44196397".into(), conversation_id: None };
        for (provider, account) in [("xquik", "acme_support"), ("x-api-v2", "987654321"), ("getxapi", "987654321")] {
            let p = pipeline(provider, account, false);
            out.push(send_record(&p, &to, "POST /x/dm/{userId}", sent("1", None, Some("k"), None)));
            out.push(send_record(&p, &to, "POST /x/dm/{userId}", sent("2", Some("9"), Some("k"), None)));
            let confirmed = Sent { status: "confirmed_by_history", ..sent("4", None, Some("k"), None) };
            out.push(send_record(&p, &to, "POST /x/dm/{userId}", confirmed));
            let redacted = pipeline(provider, account, true);
            out.push(send_record(&redacted, &to, "POST /x/dm/{userId}", sent("3", None, Some("k"), None)));
        }
        let p = pipeline("x-api-v2", "987654321", false);
        out.push(delete_record(&p, &peer, "DELETE /2/dm_events/{event_id}", "1893456789012345678", t));
        out.push(delete_record(&p, &group, "DELETE /2/dm_events/{event_id}", "1893456789012345678", t));
        let endpoint = "POST /2/dm_conversations";
        out.push(send_record(&p, &group, endpoint, sent("5", None, None, Some(vec!["1".into(), "2".into()]))));
        out.push(send_record(&p, &peer, endpoint, sent("6", None, None, None)));
        for (raw, redact, conv) in [
            (r#"{"id":"7","senderId":{"x":1},"text":"Hey"}"#, false, &peer),
            ("[1,2]", false, &group),
            (r#"{"text":"Hey"}"#, true, &peer),
        ] {
            let u = Unparsed {
                reason: "the item does not match the documented shape".into(),
                raw: serde_json::value::RawValue::from_string(raw.into()).unwrap(),
            };
            out.push(unparsed_record(&ctx("xquik", None, redact), conv, &u, t));
        }
        out
    }

    #[test]
    fn the_document_is_a_valid_draft_2020_12_schema() {
        let doc = document();
        assert!(jsonschema::draft202012::meta::is_valid(&doc), "{doc:#}");
        assert_eq!(doc["$schema"], "https://json-schema.org/draft/2020-12/schema");
        let kinds: Vec<&String> = doc["$defs"].as_object().unwrap().keys().filter(|k| k.starts_with("dm_")).collect();
        assert_eq!(kinds, ["dm_delete", "dm_event", "dm_message", "dm_send", "dm_unparsed"]);
        assert!(text().ends_with("}\n"));
    }

    #[test]
    fn every_record_the_product_builds_validates() {
        let v = validator();
        let records = every_record();
        let kinds: BTreeSet<Kind> = records.iter().filter_map(|r| r.kind).collect();
        assert_eq!(kinds.len(), 5, "every kind Record has is built here: {kinds:?}");
        for r in &records {
            assert_valid(&v, r);
        }
    }

    #[test]
    fn the_schema_names_exactly_the_fields_record_can_write() {
        // Every optional field set: a field added to Record shows up here.
        let all = Record {
            kind: Some(Kind::DmMessage),
            event_type: Some("x".into()),
            event_id: Some("1".into()),
            provider: "xquik".into(),
            pipeline: "p".into(),
            account: "a".into(),
            conversation_user_id: Some("1".into()),
            conversation_id: Some("1".into()),
            message_id: Some("1".into()),
            participant_ids: Some(vec![]),
            sender_id: Some("1".into()),
            receiver_id: Some("1".into()),
            direction: Some("inbound".into()),
            send_status: Some("sent".into()),
            created_at: Some("t".into()),
            text: Some("t".into()),
            media_url: Some("u".into()),
            media_id: Some("1".into()),
            media_ids: Some(vec![]),
            idempotency_key: Some("k".into()),
            reason: None,
            raw: None,
            source_endpoint: "e".into(),
            synced_at: Some("t".into()),
            sent_at: Some("t".into()),
            deleted_at: Some("t".into()),
        };
        let written: BTreeSet<String> =
            serde_json::from_str::<Map<String, Value>>(&all.to_line()).unwrap().keys().cloned().collect();
        let doc = document();
        let mut in_schema = BTreeSet::new();
        for kind in ["dm_message", "dm_event", "dm_send", "dm_delete"] {
            in_schema.extend(doc["$defs"][kind]["properties"].as_object().unwrap().keys().cloned());
        }
        assert_eq!(written, in_schema, "Record's fields and the schema's differ");
        // The two fields only dm_unparsed has, set on a record of that kind.
        let u = Unparsed { reason: "r".into(), raw: serde_json::value::RawValue::from_string("{}".into()).unwrap() };
        let ctx = Context {
            provider: "xquik",
            pipeline: "p",
            account: "a",
            account_user_id: None,
            redact_text: false,
            source_endpoint: "e",
        };
        let conv = Conversation::Peer { user_id: "1".into(), conversation_id: Some("1-2".into()) };
        let line = unparsed_record(&ctx, &conv, &u, "t").to_line();
        let written: BTreeSet<String> =
            serde_json::from_str::<Map<String, Value>>(&line).unwrap().keys().cloned().collect();
        let in_schema: BTreeSet<String> =
            doc["$defs"]["dm_unparsed"]["properties"].as_object().unwrap().keys().cloned().collect();
        assert_eq!(written, in_schema, "dm_unparsed's fields and the schema's differ");
        // dm_unparsed adds exactly `reason` and `raw` to the common header.
        let unparsed: BTreeSet<&str> =
            doc["$defs"]["dm_unparsed"]["properties"].as_object().unwrap().keys().map(String::as_str).collect();
        let want = ["kind", "provider", "pipeline", "account", "conversation_user_id", "conversation_id"]
            .into_iter()
            .chain(["reason", "raw", "source_endpoint", "synced_at"])
            .collect();
        assert_eq!(unparsed, want);
    }

    #[test]
    fn records_that_break_the_contract_do_not_validate() {
        let v = validator();
        let good: Value = serde_json::from_str(&every_record()[0].to_line()).unwrap();
        let broken = |f: &dyn Fn(&mut Map<String, Value>)| {
            let mut r = good.as_object().unwrap().clone();
            f(&mut r);
            Value::Object(r)
        };
        for (what, bad) in [
            ("missing message_id", broken(&|r| drop(r.remove("message_id")))),
            ("numeric ID", broken(&|r| drop(r.insert("message_id".into(), json!(1893456789012345678u64))))),
            ("null field", broken(&|r| drop(r.insert("text".into(), Value::Null)))),
            ("unknown field", broken(&|r| drop(r.insert("extra".into(), json!("x"))))),
            ("no conversation", broken(&|r| drop((r.remove("conversation_user_id"), r.remove("conversation_id"))))),
            ("time without millis", broken(&|r| drop(r.insert("created_at".into(), json!("2026-02-24T10:00:00Z"))))),
            ("unknown kind", broken(&|r| drop(r.insert("kind".into(), json!("dm_other"))))),
        ] {
            assert!(!v.is_valid(&bad), "{what} validated: {bad}");
        }
        let unparsed = json!({"kind": "dm_unparsed", "provider": "xquik", "pipeline": "support", "account": "a",
            "conversation_user_id": "44196397", "reason": "item has no id", "raw": {"text": 5},
            "source_endpoint": "GET /x/dm/{userId}/history", "synced_at": "2026-11-23T13:00:00.000Z"});
        assert!(errors(&v, &unparsed).is_empty(), "{:?}", errors(&v, &unparsed));
        let raw_string = json!({"kind": "dm_unparsed", "provider": "getxapi", "pipeline": "p", "account": "1",
            "reason": "not JSON", "raw": "{oops", "source_endpoint": "POST /twitter/dm/conversation",
            "synced_at": "2026-11-23T13:00:00.000Z"});
        assert!(v.is_valid(&raw_string));
    }
}
