//! X API v2 conversation management beyond 1:1 sends: `delete` (a DM, for the account only) and
//! `group-send` (a message into an existing conversation, or a new group). Each is recorded once in the
//! pipeline's handoff files, through its writer, like every other record: the line is fsynced before the
//! seen key that covers it is committed.
//!
//! - `delete` writes `{"kind":"dm_delete","message_id","conversation_id","deleted_at",…}`, keyed
//!   (dm_delete, conversation, message ID): deleting again finds the key and asks X nothing. The
//!   conversation comes from `--conversation` or from `GET /2/dm_events/{event_id}`.
//! - `group-send` writes a `dm_send` record with the conversation's ID (and, for a new group, its
//!   participants), keyed by X's event ID. X API v2 has no idempotency key, so a send is made again only
//!   when X cannot have acted on it (SPEC 8.8, `outbound::write`); a lost answer is read back from the
//!   conversation, and a group send's ledger entry (by target and a hash of the text) keeps a rerun from
//!   sending it twice.
//!
//! Privacy: the message text goes to X and into the record, nowhere else.

use std::time::SystemTime;

use super::outbound::keys::fnv1a_128;
use super::outbound::ledger::Stage;
use super::outbound::readback;
use super::outbound::write::{attempt, Written};
use super::outbound::SendContext;
use super::OpenPipeline;
use crate::config::{ConfigError, Pipeline};
use crate::handoff::Batch;
use crate::ids::{is_conversation_id, is_numeric_id};
use crate::provider::{with_retry, ErrorClass, ProviderError};
use crate::record::{delete_record, send_record, Conversation, Kind, Sent};
use crate::state::{Commit, Store};
use crate::time::{now_string, unix_ms};

/// A `delete` or `group-send` as the CLI checked it: everything a process holding the pipeline (this
/// one, or a running daemon reached over the control socket) needs to do it.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub enum ManageRequest {
    Delete {
        pipeline: String,
        message_id: String,
        conversation: Option<String>,
    },
    GroupSend {
        pipeline: String,
        target: Target,
        text: String,
        /// Send again when an earlier run could not learn whether X sent it.
        #[serde(default)]
        resend_unknown: bool,
    },
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

/// Does a checked request with an open pipeline. `ctx` carries the stop signal and the write limits.
pub async fn execute(pipe: &OpenPipeline, req: &ManageRequest, ctx: &SendContext) -> Outcome {
    match req {
        ManageRequest::Delete { message_id, conversation, .. } => {
            let given = conversation
                .as_deref()
                .map(|c| parse_conversation(c, &pipe.config))
                .transpose()
                .map_err(|e| (ErrorClass::Conversation, e.0))?;
            delete(pipe, message_id, given, ctx).await
        }
        ManageRequest::GroupSend { target, text, resend_unknown, .. } => {
            group_send(pipe, target, text, *resend_unknown, ctx).await
        }
    }
}

fn fail(e: ProviderError) -> (ErrorClass, String) {
    (e.class, e.to_string())
}

fn local(e: impl std::fmt::Display) -> (ErrorClass, String) {
    (ErrorClass::Conversation, e.to_string())
}

/// An outcome that is not known (SPEC 8.8), as the one line the command prints.
fn unknown(why: String) -> (ErrorClass, String) {
    (ErrorClass::Conversation, format!("outcome unknown: {why}"))
}

async fn delete(pipe: &OpenPipeline, id: &str, given: Option<Conversation>, ctx: &SendContext) -> Outcome {
    let p = &pipe.config;
    let x = &pipe.client;
    let lkey = ledger_key(id);
    let ledger: Option<DeleteEntry> = pipe.store.ledger(&p.name, &lkey).map_err(local)?;
    let conv = match (given, &ledger) {
        (Some(c), _) => c,
        // An earlier run got this far: it knows the conversation, which X may no longer show.
        (None, Some(entry)) => entry.conversation(),
        (None, None) => {
            let info = with_retry(&p.retry, &ctx.cancel, || x.event(id)).await.map_err(|e| {
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
    let post = |_key: String| x.delete_event(id);
    // A delete whose answer was lost is looked up: gone means it was done; still there proves it was not, and
    // only then is it asked once more.
    let mut asked_again = false;
    loop {
        match attempt(x, p, ctx, x.delete_endpoint(), "", &post).await {
            Written::Done(()) => break,
            // Asked before (the ledger says so) and now unknown to X: that earlier request deleted it.
            Written::Refused(e) if (ledger.is_some() || asked_again) && e.status == Some(404) => {
                tracing::info!(pipeline = %p.name, message_id = %id, "X no longer knows the event; an earlier request deleted it");
                break;
            }
            Written::Refused(e) => return Err(fail(e)),
            Written::Unknown(e) => match with_retry(&p.retry, &ctx.cancel, || x.event(id)).await {
                Err(gone) if gone.code == "event_not_found" || gone.status == Some(404) => {
                    tracing::info!(pipeline = %p.name, message_id = %id, "the delete's answer was lost; X no longer shows the event: it was deleted");
                    break;
                }
                Ok(_) if !asked_again => {
                    tracing::warn!(pipeline = %p.name, message_id = %id, "the delete's answer was lost and X still shows the event: it was not deleted; asking once more");
                    asked_again = true;
                }
                _ => return Err(unknown(format!("the delete's answer was lost ({}) and X cannot say whether the event is gone; run the delete again later", e.cause()))),
            },
        }
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

/// What the state remembers of a group send, under the send ledger's prefix with a key no send can have:
/// where it stands, so the same group send run again is never sent twice on its own.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct GroupEntry {
    stage: Stage,
    /// Unix ms when the current (or last) attempt began.
    attempt_started_ms: u64,
    /// Unix ms when the first attempt whose outcome is not known began.
    #[serde(default)]
    unknown_since_ms: Option<u64>,
    #[serde(default)]
    message_id: Option<String>,
    #[serde(default)]
    conversation_id: Option<String>,
    #[serde(default)]
    last_error: Option<String>,
}

/// A group send's identity: its target and text (a hash; the ledger never holds message text).
fn group_key(target: &Target, text: &str) -> String {
    let target = match target {
        Target::Existing(c) => format!("conv:{c}"),
        Target::NewGroup(ids) => format!("new:{}", ids.join(",")),
    };
    format!("group {:032x}", fnv1a_128(&[b"group1", target.as_bytes(), text.as_bytes()]))
}

async fn group_send(
    pipe: &OpenPipeline,
    target: &Target,
    text: &str,
    resend_unknown: bool,
    ctx: &SendContext,
) -> Outcome {
    let p = &pipe.config;
    let x = &pipe.client;
    let lkey = group_key(target, text);
    let note = |entry: &GroupEntry| {
        let entry = Store::ledger_entry(&p.name, &lkey, entry);
        async move {
            let commit = Commit { raw: vec![entry.map_err(local)?], ..Commit::default() };
            pipe.handoff.write(Batch { lines: vec![], commit }).await.map_err(|e| local(e.0))
        }
    };
    let existing = match target {
        Target::Existing(c) => Some(Conversation::from_conversation_id(c, Some(&p.account))),
        Target::NewGroup(_) => None,
    };
    let ledger: Option<GroupEntry> = pipe.store.ledger(&p.name, &lkey).map_err(local)?;
    match &ledger {
        Some(e) if e.stage == Stage::Recorded => {
            return Ok(format!(
                "already sent {} to conversation {}; nothing asked of X",
                e.message_id.as_deref().unwrap_or("?"),
                e.conversation_id.as_deref().unwrap_or("?")
            ))
        }
        // X API v2 has no idempotency key: an attempt that may have reached X (its answer lost, or the process
        // died during it) is looked for, and made again only when asked.
        Some(e) if matches!(e.stage, Stage::Unknown | Stage::Prepared) => {
            let since = e.unknown_since_ms.unwrap_or(e.attempt_started_ms);
            if let Some(conv) = &existing {
                if let Some(found) = readback::find_sent(pipe, conv, text, since).await.map_err(fail)? {
                    return record_group(pipe, conv, text, found, None, e.clone(), &lkey, "confirmed_by_history").await;
                }
            }
            if !resend_unknown {
                return Err(unknown(format!(
                    "an earlier run could not learn whether X sent it{}; check, then run again with --resend-unknown to send it once more",
                    if existing.is_some() { ", and the conversation does not show it" } else { " (it may have created the group)" }
                )));
            }
        }
        _ => {}
    }
    let now = unix_ms(SystemTime::now());
    let mut entry = GroupEntry {
        stage: Stage::Prepared,
        attempt_started_ms: now,
        unknown_since_ms: ledger.as_ref().and_then(|e| e.unknown_since_ms),
        message_id: None,
        conversation_id: existing.as_ref().map(|c| match c {
            Conversation::Peer { conversation_id, .. } => conversation_id.clone().unwrap_or_default(),
            Conversation::Group { conversation_id } => conversation_id.clone(),
        }),
        last_error: None,
    };
    // Durable before the request: a rerun after a crash knows this attempt may have reached X.
    note(&entry).await?;
    let (written, participants, endpoint) = match target {
        Target::Existing(c) => {
            let post = |_key: String| x.send_to_conversation(c, text);
            (attempt(x, p, ctx, x.send_conversation_endpoint(), "", &post).await, None, x.send_conversation_endpoint())
        }
        Target::NewGroup(ids) => {
            let post = |_key: String| x.create_group(ids, text);
            (
                attempt(x, p, ctx, x.create_group_endpoint(), "", &post).await,
                Some(ids.clone()),
                x.create_group_endpoint(),
            )
        }
    };
    match written {
        Written::Done(sent) => {
            let conv = Conversation::from_conversation_id(&sent.conversation_id, Some(&p.account));
            let found = (sent.event_id, None);
            entry.conversation_id = Some(sent.conversation_id);
            record_group(pipe, &conv, text, found, participants, entry, &lkey, "sent").await
        }
        Written::Refused(e) => {
            entry.stage = Stage::Failed;
            entry.last_error = Some(e.code.clone());
            note(&entry).await?;
            Err(fail(e))
        }
        Written::Unknown(e) => {
            tracing::warn!(pipeline = %p.name, endpoint, status = e.status, code = %e.code, "the answer to a group send was lost; reading the conversation back instead of sending again");
            entry.stage = Stage::Unknown;
            entry.unknown_since_ms = entry.unknown_since_ms.or(Some(entry.attempt_started_ms));
            entry.last_error = Some(e.code.clone());
            note(&entry).await?;
            if let Some(conv) = &existing {
                let since = entry.unknown_since_ms.unwrap_or(now);
                if let Some(found) = readback::find_sent(pipe, conv, text, since).await.map_err(fail)? {
                    return record_group(pipe, conv, text, found, None, entry, &lkey, "confirmed_by_history").await;
                }
            }
            Err(unknown(format!(
                "the answer was lost ({}){}; check, then run again with --resend-unknown to send it once more",
                e.cause(),
                if existing.is_some() {
                    " and the conversation does not show the message"
                } else {
                    "; X may have created the group"
                }
            )))
        }
    }
}

/// Writes a group send's `dm_send` record and marks its ledger entry recorded, in one commit.
#[allow(clippy::too_many_arguments)]
async fn record_group(
    pipe: &OpenPipeline,
    conv: &Conversation,
    text: &str,
    (message_id, sent_at): (String, Option<String>),
    participants: Option<Vec<String>>,
    mut entry: GroupEntry,
    lkey: &str,
    status: &str,
) -> Outcome {
    let p = &pipe.config;
    let endpoint = if participants.is_some() {
        pipe.client.create_group_endpoint()
    } else {
        pipe.client.send_conversation_endpoint()
    };
    let sent_at = sent_at.unwrap_or_else(now_string);
    let record = Sent {
        message_id: &message_id,
        text,
        media_id: None,
        idempotency_key: None,
        participant_ids: participants,
        status,
        sent_at: &sent_at,
    };
    let rec = send_record(p, conv, endpoint, record);
    let Some(key) = rec.key() else {
        return Err(local("the send record has no key"));
    };
    let (_, conversation_id) = crate::record::conversation_fields(p, conv);
    entry.stage = Stage::Recorded;
    entry.message_id = Some(message_id.clone());
    entry.conversation_id = conversation_id.clone();
    entry.last_error = None;
    let on_disk = pipe.store.is_seen(&p.name, &key).map_err(local)?;
    let mut commit =
        Commit { raw: vec![Store::ledger_entry(&p.name, lkey, &entry).map_err(local)?], ..Commit::default() };
    let lines = if on_disk {
        Vec::new()
    } else {
        commit.seen.push((p.name.clone(), key));
        vec![rec.to_line()]
    };
    pipe.handoff.write(Batch { lines, commit }).await.map_err(|e| local(e.0))?;
    let cid = conversation_id.unwrap_or_default();
    tracing::info!(pipeline = %p.name, message_id = %message_id, conversation = %cid, status, "group message sent and recorded");
    Ok(if status == "sent" {
        format!("sent {message_id} to conversation {cid}; recorded as dm_send")
    } else {
        format!("sent {message_id} to conversation {cid}; the answer was lost, and the conversation shows it was sent: recorded as dm_send (confirmed by history)")
    })
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
}
