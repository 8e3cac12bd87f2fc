//! One send job to its end: resolve the recipient, check the ledger, upload (once), send, poll, record.

use std::time::SystemTime;

use super::job::{check_job, parse_recipient, Job, Recipient};
use super::keys::{check_key, default_key, media_key, payload_hash};
use super::ledger::{commit_entry, LedgerEntry, Stage};
use super::limiter::SendContext;
use super::media::{check_media, CheckedMedia};
use super::write::write;
use super::{FailKind, JobError, Outcome, LOOKUP_CREDITS};
use crate::engine::{OpenPipeline, UserError};
use crate::handoff::Batch;
use crate::provider::{Dm, ProviderError, WriteDone, WriteKind};
use crate::record::{normalize_time, send_record, Conversation, Sent};
use crate::state::{Commit, Store};
use crate::time::{now_string, unix_ms};

/// Runs one send job to its end: resolve, check the ledger, upload, send, poll, record. `credits` grows by
/// what the provider charged (or may have: replays are counted too).
pub async fn send_job(
    pipe: &OpenPipeline,
    job: &Job,
    ctx: &SendContext,
    credits: &mut u64,
) -> Result<Outcome, JobError> {
    let p = &pipe.config;
    check_job(job)?;
    let media = job.media.as_ref().map(check_media).transpose()?;
    let recipient = resolve_recipient(pipe, &parse_recipient(&job.to)?, ctx, credits).await?;
    let identity = media.as_ref().map(|m| m.identity.as_str());
    let payload = payload_hash(&recipient, &job.text, identity);
    let key = match &job.idempotency_key {
        Some(k) => check_key(k)?.to_string(),
        None => default_key(&p.name, &recipient, &job.text, identity),
    };
    let ledger: Option<LedgerEntry> = pipe.store.ledger(&p.name, &key).map_err(|e| JobError::local(e.to_string()))?;
    // A key the provider refused for its payload (409) never sent anything here: another payload may take it.
    let ledger = ledger.filter(|e| {
        e.payload_hash == payload
            || e.stage == Stage::Recorded
            || e.last_error.as_deref() != Some("idempotency_conflict")
    });
    let (mut entry, resumed) = match ledger {
        Some(e) if e.payload_hash != payload => {
            return Err(JobError::input(
                "idempotency_conflict",
                format!(
                    "idempotency key `{key}` was already used in pipeline `{}` for a different message; resend the original message with it, or pass a new --idempotency-key",
                    p.name
                ),
            ))
        }
        Some(e) if e.stage == Stage::Recorded => {
            tracing::info!(pipeline = %p.name, idempotency_key = %key, message_id = ?e.message_id, "already sent and recorded; nothing to do");
            return Ok(Outcome::AlreadySent {
                message_id: e.message_id.unwrap_or_default(),
                recipient: e.recipient,
                key,
            });
        }
        Some(e) => {
            tracing::info!(pipeline = %p.name, idempotency_key = %key, attempts = e.attempts, last_error = ?e.last_error,
                "resuming a send job that did not finish; asking the provider again with the same idempotency key");
            (e, true)
        }
        None => {
            let now_ms = unix_ms(SystemTime::now());
            let e = LedgerEntry {
                stage: Stage::Prepared,
                payload_hash: payload,
                recipient: recipient.clone(),
                media_source: identity.map(str::to_string),
                media_id: None,
                media_url: None,
                message_id: None,
                sent_at: None,
                prepared_at_ms: now_ms,
                attempts: 0,
                last_error: None,
            };
            (e, false)
        }
    };
    entry.attempts += 1;
    // Durable before any write request: from here on a rerun knows this key may have reached the provider.
    commit_entry(pipe, &key, &entry).await?;
    match deliver(pipe, job, ctx, &recipient, &key, media.as_ref(), &mut entry, credits).await {
        Ok(done) => record(pipe, job, &recipient, &key, entry, done, resumed).await,
        Err(e) => {
            if e.kind != FailKind::Local {
                entry.last_error = Some(e.code.clone());
                if let Err(ce) = commit_entry(pipe, &key, &entry).await {
                    tracing::warn!(pipeline = %p.name, idempotency_key = %key, error = %ce, "could not note the failure in the ledger");
                }
            }
            Err(e)
        }
    }
}

/// Upload (once) and send; returns the provider's confirmed send.
#[allow(clippy::too_many_arguments)]
async fn deliver(
    pipe: &OpenPipeline,
    job: &Job,
    ctx: &SendContext,
    recipient: &str,
    key: &str,
    media: Option<&CheckedMedia>,
    entry: &mut LedgerEntry,
    credits: &mut u64,
) -> Result<WriteDone, JobError> {
    let p = &pipe.config;
    let fail = |e: ProviderError| {
        if ctx.cancel.is_cancelled() {
            JobError::interrupted()
        } else {
            JobError::provider(&e, &p.account, key)
        }
    };
    if let (Some(m), None) = (media, &entry.media_id) {
        let mkey = media_key(key);
        tracing::info!(pipeline = %p.name, idempotency_key = %mkey, "uploading media");
        let done =
            write(&pipe.client, p, ctx, WriteKind::Media, credits, || pipe.client.upload_media(&m.upload, &mkey))
                .await
                .map_err(fail)?;
        tracing::info!(pipeline = %p.name, media_id = %done.id, "media uploaded");
        entry.media_id = Some(done.id);
        entry.media_url = done.url;
        commit_entry(pipe, key, entry).await?;
    }
    tracing::info!(pipeline = %p.name, recipient, idempotency_key = %key, media_id = ?entry.media_id, "sending DM");
    let dm = Dm { to: recipient, text: &job.text, media_id: entry.media_id.as_deref(), idempotency_key: key };
    let done = write(&pipe.client, p, ctx, WriteKind::DirectMessage, credits, || pipe.client.send_dm(&dm))
        .await
        .map_err(fail)?;
    #[cfg(debug_assertions)]
    if std::env::var_os(super::CRASH_AFTER_SEND_ENV).is_some_and(|v| v == "1") {
        // Test-only (see CRASH_AFTER_SEND_ENV): the provider has answered; nothing of it is written yet.
        tracing::warn!("test hook: aborting after the provider's answer, before the record");
        std::process::abort();
    }
    Ok(done)
}

/// Writes the `dm_send` record and marks the ledger `recorded`, in one commit after the line's fsync.
async fn record(
    pipe: &OpenPipeline,
    job: &Job,
    recipient: &str,
    key: &str,
    mut entry: LedgerEntry,
    done: WriteDone,
    resumed: bool,
) -> Result<Outcome, JobError> {
    let p = &pipe.config;
    let sent_at = done.at.as_deref().and_then(normalize_time).unwrap_or_else(now_string);
    let conv = Conversation::Peer { user_id: recipient.to_string(), conversation_id: None };
    let sent = Sent {
        message_id: &done.id,
        text: &job.text,
        media_id: entry.media_id.as_deref(),
        idempotency_key: Some(key),
        participant_ids: None,
        status: "sent",
        sent_at: &sent_at,
    };
    let rec = send_record(p, &conv, pipe.client.send_endpoint(), sent);
    let Some(rkey) = rec.key() else {
        return Err(JobError::local("the send record has no key".into()));
    };
    entry.stage = Stage::Recorded;
    entry.message_id = Some(done.id.clone());
    entry.sent_at = Some(sent_at);
    entry.last_error = None;
    // A line that reached the disk before a crash (reconciled into the seen set at start-up) is not written
    // again; only the ledger catches up.
    let on_disk = pipe.store.is_seen(&p.name, &rkey).map_err(|e| JobError::local(e.to_string()))?;
    let ledger = Store::ledger_entry(&p.name, key, &entry).map_err(|e| JobError::local(e.to_string()))?;
    let mut commit = Commit { raw: vec![ledger], ..Commit::default() };
    let lines = if on_disk {
        Vec::new()
    } else {
        commit.seen.push((p.name.clone(), rkey));
        vec![rec.to_line()]
    };
    pipe.handoff.write(Batch { lines, commit }).await.map_err(|e| JobError::local(e.to_string()))?;
    tracing::info!(pipeline = %p.name, recipient, message_id = %done.id, idempotency_key = %key, resumed, "DM sent and recorded");
    Ok(Outcome::Sent {
        message_id: done.id,
        recipient: recipient.to_string(),
        key: key.to_string(),
        media_id: entry.media_id,
        resumed,
    })
}

/// A recipient's numeric ID; `@username`s through the state's cache or a lookup (then cached).
async fn resolve_recipient(
    pipe: &OpenPipeline,
    to: &Recipient,
    ctx: &SendContext,
    credits: &mut u64,
) -> Result<String, JobError> {
    let name = match to {
        Recipient::Id(id) => return Ok(id.clone()),
        Recipient::Username(name) => name,
    };
    match pipe.user_id(name, &ctx.cancel).await {
        Ok((id, looked_up)) => {
            if looked_up {
                *credits += LOOKUP_CREDITS;
            }
            Ok(id)
        }
        Err(_) if ctx.cancel.is_cancelled() => Err(JobError::interrupted()),
        Err(UserError::Provider(e)) => Err(JobError::provider(&e, &pipe.config.account, "")),
        Err(UserError::Local(e)) => Err(JobError::local(e)),
    }
}
