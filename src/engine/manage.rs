//! X API v2 conversation management beyond 1:1 sends: `delete` (a DM, for the account only) and
//! `group-send` (a message into an existing conversation, or a new group). Each is recorded once in the
//! pipeline's handoff files, through its writer, like every other record: the line is fsynced before the
//! seen key that covers it is committed.
//!
//! - `delete` writes `{"kind":"dm_delete","message_id","conversation_id","deleted_at",…}`, keyed
//!   (dm_delete, conversation, message ID): deleting again finds the key and asks X nothing. The
//!   conversation comes from `--conversation` or from `GET /2/dm_events/{event_id}`.
//! - `group-send` writes a `dm_send` record with the conversation's ID (and, for a new group, its
//!   participants), keyed by X's event ID. X API v2 has no idempotency key, so a send is retried only
//!   when X cannot have acted on it (rate limits); anything else is reported, never resent blindly.
//!
//! Privacy: the message text goes to X and into the record, nowhere else.

use tokio_util::sync::CancellationToken;

use super::OpenPipeline;
use crate::config::{ConfigError, Pipeline};
use crate::handoff::Batch;
use crate::ids::{is_conversation_id, is_numeric_id};
use crate::provider::{with_retry, ErrorClass, ProviderError, PACING};
use crate::record::{delete_record, send_record, Conversation, Kind, Sent};
use crate::state::{Commit, Store};
use crate::time::now_string;

/// A `delete` or `group-send` as the CLI checked it: everything a process holding the pipeline (this
/// one, or a running daemon reached over the control socket) needs to do it.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub enum ManageRequest {
    Delete { pipeline: String, message_id: String, conversation: Option<String> },
    GroupSend { pipeline: String, target: Target, text: String },
}

impl ManageRequest {
    /// The pipeline that does it.
    pub fn pipeline(&self) -> &str {
        match self {
            ManageRequest::Delete { pipeline, .. } | ManageRequest::GroupSend { pipeline, .. } => pipeline,
        }
    }
}

/// Where `group-send` goes.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub enum Target {
    Existing(String),
    NewGroup(Vec<String>),
}

/// What a request printed on success, or why it failed (already one line, no message text).
pub type Outcome = Result<String, (ErrorClass, String)>;

/// Does a checked request with an open pipeline.
pub async fn execute(pipe: &OpenPipeline, req: &ManageRequest) -> Outcome {
    match req {
        ManageRequest::Delete { message_id, conversation, .. } => {
            let given = conversation
                .as_deref()
                .map(|c| parse_conversation(c, &pipe.config))
                .transpose()
                .map_err(|e| (ErrorClass::Conversation, e.0))?;
            delete(pipe, message_id, given).await
        }
        ManageRequest::GroupSend { target, text, .. } => group_send(pipe, target, text).await,
    }
}

fn fail(e: ProviderError) -> (ErrorClass, String) {
    (e.class, e.to_string())
}

fn local(e: impl std::fmt::Display) -> (ErrorClass, String) {
    (ErrorClass::Conversation, e.to_string())
}

async fn delete(pipe: &OpenPipeline, id: &str, given: Option<Conversation>) -> Outcome {
    let p = &pipe.config;
    let x = &pipe.client;
    let cancel = CancellationToken::new();
    let lkey = ledger_key(id);
    let ledger: Option<DeleteEntry> = pipe.store.ledger(&p.name, &lkey).map_err(local)?;
    let conv = match (given, &ledger) {
        (Some(c), _) => c,
        // An earlier run got this far: it knows the conversation, which X may no longer show.
        (None, Some(entry)) => entry.conversation(),
        (None, None) => {
            let info = with_retry(&p.retry, &cancel, || x.event(id)).await.map_err(|e| {
                if e.code == "event_not_found" {
                    (e.class, format!("{e}; if it was deleted elsewhere, run again with --conversation to record it"))
                } else {
                    fail(e)
                }
            })?;
            let Some(cid) = info.conversation_id else {
                return Err((
                    ErrorClass::Conversation,
                    "X did not say which conversation the event is in; pass --conversation".into(),
                ));
            };
            Conversation::from_conversation_id(&cid, Some(&p.account))
        }
    };
    let key = crate::record::Key { kind: Kind::DmDelete, conversation: conv.key().to_string(), id: id.to_string() };
    if pipe.store.is_seen(&p.name, &key).map_err(local)? {
        return Ok(format!("already deleted and recorded: {id} in conversation {}; nothing asked of X", conv.key()));
    }
    // Durable before the request: a rerun after a crash knows the conversation and that X may have deleted it.
    let entry = DeleteEntry::of(&conv);
    if ledger.is_none() {
        let commit =
            Commit { raw: vec![Store::ledger_entry(&p.name, &lkey, &entry).map_err(local)?], ..Commit::default() };
        pipe.handoff.write(Batch { lines: vec![], commit }).await.map_err(|e| local(e.0))?;
    }
    tracing::info!(pipeline = %p.name, message_id = %id, conversation = %conv.key(), "deleting a DM");
    match with_retry(&p.retry, &cancel, || x.delete_event(id)).await {
        Ok(()) => {}
        // Asked before (the ledger says so) and now unknown to X: that earlier request deleted it.
        Err(e) if ledger.is_some() && e.status == Some(404) => {
            tracing::info!(pipeline = %p.name, message_id = %id, "X no longer knows the event; an earlier run deleted it");
        }
        Err(e) => return Err(fail(e)),
    }
    let rec = delete_record(p, &conv, x.delete_endpoint(), id, &now_string());
    let done = DeleteEntry { recorded: true, ..entry };
    let commit = Commit {
        seen: vec![(p.name.clone(), key)],
        raw: vec![Store::ledger_entry(&p.name, &lkey, &done).map_err(local)?],
        ..Commit::default()
    };
    pipe.handoff.write(Batch { lines: vec![rec.to_line()], commit }).await.map_err(|e| local(e.0))?;
    tracing::info!(pipeline = %p.name, message_id = %id, "DM deleted and recorded");
    Ok(format!("deleted {id} in conversation {}; recorded as dm_delete", conv.key()))
}

/// What the state remembers of a delete, under the send ledger's prefix with a key no send can have
/// (send keys hold no spaces): its conversation, and whether its record is written.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct DeleteEntry {
    #[serde(default)]
    peer: Option<String>,
    #[serde(default)]
    conversation_id: Option<String>,
    #[serde(default)]
    recorded: bool,
}

impl DeleteEntry {
    fn of(conv: &Conversation) -> DeleteEntry {
        match conv {
            Conversation::Peer { user_id, conversation_id } => {
                DeleteEntry { peer: Some(user_id.clone()), conversation_id: conversation_id.clone(), recorded: false }
            }
            Conversation::Group { conversation_id } => {
                DeleteEntry { peer: None, conversation_id: Some(conversation_id.clone()), recorded: false }
            }
        }
    }

    fn conversation(&self) -> Conversation {
        match (&self.peer, &self.conversation_id) {
            (Some(peer), cid) => Conversation::Peer { user_id: peer.clone(), conversation_id: cid.clone() },
            (None, cid) => Conversation::Group { conversation_id: cid.clone().unwrap_or_default() },
        }
    }
}

fn ledger_key(message_id: &str) -> String {
    format!("delete {message_id}")
}

async fn group_send(pipe: &OpenPipeline, target: &Target, text: &str) -> Outcome {
    let p = &pipe.config;
    let x = &pipe.client;
    let cancel = CancellationToken::new();
    let (sent, participants) = match target {
        Target::Existing(c) => {
            let sent = with_retry(&p.retry, &cancel, || async {
                x.send_to_conversation(c, text).await.map_err(no_blind_retry)
            })
            .await
            .map_err(fail)?;
            (sent, None)
        }
        Target::NewGroup(ids) => {
            let sent =
                with_retry(&p.retry, &cancel, || async { x.create_group(ids, text).await.map_err(no_blind_retry) })
                    .await
                    .map_err(fail)?;
            (sent, Some(ids.clone()))
        }
    };
    let conv = Conversation::from_conversation_id(&sent.conversation_id, Some(&p.account));
    let sent_at = now_string();
    let record = Sent {
        message_id: &sent.event_id,
        text,
        media_id: None,
        idempotency_key: None,
        participant_ids: participants,
        status: "sent",
        sent_at: &sent_at,
    };
    let rec = send_record(p, &conv, sent.endpoint, record);
    let Some(key) = rec.key() else {
        return Err(local("the send record has no key"));
    };
    let commit = Commit { seen: vec![(p.name.clone(), key)], ..Commit::default() };
    pipe.handoff.write(Batch { lines: vec![rec.to_line()], commit }).await.map_err(|e| local(e.0))?;
    tracing::info!(pipeline = %p.name, message_id = %sent.event_id, conversation = %sent.conversation_id, "group message sent and recorded");
    Ok(format!("sent {} to conversation {}; recorded as dm_send", sent.event_id, sent.conversation_id))
}

/// A send that failed in a way X may still have acted on (a 5xx, a dropped connection) is not retried:
/// X API v2 has no idempotency key, so a retry could send twice. Rate limits are safe to wait out.
fn no_blind_retry(e: ProviderError) -> ProviderError {
    if e.class == ErrorClass::Transient && e.status != Some(429) && e.code != PACING {
        let hint = format!("{}; it may have been sent: check the conversation before sending again", e.hint);
        ProviderError { class: ErrorClass::Conversation, hint, ..e }
    } else {
        e
    }
}

/// `--conversation` for delete: a peer's user ID, or `conv:<id>` (or a bare `<id>-<id>`).
pub fn parse_conversation(c: &str, p: &Pipeline) -> Result<Conversation, ConfigError> {
    let c = c.trim();
    let id = c.strip_prefix("conv:").unwrap_or(c);
    if is_numeric_id(id) && !c.starts_with("conv:") {
        return Ok(Conversation::Peer { user_id: id.to_string(), conversation_id: None });
    }
    if is_conversation_id(id) {
        return Ok(Conversation::from_conversation_id(id, Some(&p.account)));
    }
    Err(ConfigError(format!("--conversation `{c}` is neither a numeric user ID nor conv:<conversation ID>")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pipeline() -> Pipeline {
        crate::config::from_str(
            "[[pipelines]]\nname = \"x\"\nprovider = \"x-api-v2\"\napi_key_env = \"X_TOKEN\"\naccount = \"987654321\"\nconversations = [\"44196397\"]\n",
            std::path::Path::new("/t/p.toml"),
            std::path::Path::new("/t"),
        )
        .unwrap()
        .pipelines
        .remove(0)
    }

    #[test]
    fn delete_records_name_the_conversation_both_ways_for_a_one_to_one() {
        let p = pipeline();
        let conv = parse_conversation("44196397", &p).unwrap();
        let r = delete_record(
            &p,
            &conv,
            "DELETE /2/dm_events/{event_id}",
            "1893456789012345678",
            "2026-11-23T13:00:00.000Z",
        );
        assert_eq!(
            r.to_line(),
            r#"{"kind":"dm_delete","provider":"x-api-v2","pipeline":"x","account":"987654321","conversation_user_id":"44196397","conversation_id":"44196397-987654321","message_id":"1893456789012345678","source_endpoint":"DELETE /2/dm_events/{event_id}","deleted_at":"2026-11-23T13:00:00.000Z"}"#
        );
        assert_eq!(r.key().unwrap().conversation, "44196397");
        let same = parse_conversation("conv:44196397-987654321", &p).unwrap();
        assert_eq!(
            delete_record(&p, &same, "DELETE /2/dm_events/{event_id}", "1", "t").key().unwrap().conversation,
            "44196397"
        );
        let group = parse_conversation("conv:1578398451921985538", &p).unwrap();
        let r = delete_record(&p, &group, "DELETE /2/dm_events/{event_id}", "1", "t");
        assert_eq!((r.conversation_user_id, r.conversation_id.as_deref()), (None, Some("1578398451921985538")));
        assert!(parse_conversation("conv:abc", &p).is_err());
    }

    #[test]
    fn group_send_records_carry_participants_and_no_peer() {
        let p = pipeline();
        let conv = Conversation::from_conversation_id("1578398451921985538", Some("987654321"));
        let sent = Sent {
            message_id: "77",
            text: "hi",
            media_id: None,
            idempotency_key: None,
            participant_ids: Some(vec!["1".into(), "2".into()]),
            status: "sent",
            sent_at: "t",
        };
        let r = send_record(&p, &conv, "POST /2/dm_conversations", sent);
        assert_eq!(r.kind, Some(Kind::DmSend));
        assert_eq!(r.key().unwrap().conversation, "1578398451921985538");
        assert_eq!(r.participant_ids.as_deref().map(<[String]>::len), Some(2));
        assert_eq!(r.conversation_user_id, None);
    }

    #[test]
    fn only_rate_limits_are_retried_for_sends() {
        let e = |status, code: &str| ProviderError::new(ErrorClass::Transient, "POST /x", status, code, "h");
        assert_eq!(no_blind_retry(e(Some(429), "x_88")).class, ErrorClass::Transient);
        assert_eq!(no_blind_retry(e(None, "rate_limit_pacing")).class, ErrorClass::Transient);
        assert_eq!(no_blind_retry(e(Some(503), "http_503")).class, ErrorClass::Conversation);
        assert_eq!(no_blind_retry(e(None, "timeout")).class, ErrorClass::Conversation);
    }
}
