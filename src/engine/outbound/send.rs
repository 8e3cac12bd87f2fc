//! One send job to its end, at most once (SPEC 8.8): resolve the recipient, check the ledger, upload (once),
//! send, poll, record; and when the provider's answer is lost, read the conversation back instead of sending
//! again.

use std::time::SystemTime;

use super::job::{check_job, parse_recipient, Job, Recipient};
use super::keys::{check_key, default_key, media_key, payload_hash};
use super::ledger::{commit_entry, LedgerEntry, Stage};
use super::limiter::SendContext;
use super::media::{check_media, CheckedMedia};
use super::write::{write, Written};
use super::{readback, FailKind, JobError, Outcome, LOOKUP_CREDITS};
use crate::engine::{OpenPipeline, UserError};
use crate::handoff::Batch;
use crate::provider::{Dm, WriteKind};
use crate::record::{normalize_time, send_record, Conversation, Sent};
use crate::state::{Commit, Store};
use crate::time::{now_string, unix_ms};

/// How a job may run beyond the defaults.
#[derive(Clone, Copy, Debug, Default)]
pub struct SendOptions {
    /// Send a job whose earlier outcome is unknown again (`--resend-unknown`) when the conversation does
    /// not show it.
    pub resend_unknown: bool,
}

/// Runs one send job to its end. `credits` grows by what the provider may have charged.
pub async fn send_job(
    pipe: &OpenPipeline,
    job: &Job,
    ctx: &SendContext,
    opts: SendOptions,
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
    let job = Attempt { pipe, job, recipient: &recipient, key: &key };
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
            return Ok(Outcome::AlreadySent { message_id: e.message_id.unwrap_or_default(), recipient, key });
        }
        // The last attempt may have sent it, and asking again could send it twice: look first. A provider
        // with idempotency keys (Xquik) answers a repeated key with the original write instead, so an
        // interrupted attempt there simply asks again with the same key.
        Some(e) if e.stage == Stage::Unknown || (e.stage == Stage::Prepared && !pipe.client.idempotent_writes()) => {
            let earlier = "an earlier run could not learn whether the provider sent it";
            match job.read_back(&e).await {
                Ok(Some(found)) => return job.record(e, found, History::Confirmed).await,
                Ok(None) if opts.resend_unknown => {}
                Ok(None) => {
                    return Err(JobError::unknown(&p.account, &format!("{earlier}, and the conversation does not show it")))
                }
                // Without a look at the conversation even --resend-unknown could send it twice.
                Err(cause) => {
                    return Err(JobError::unknown(
                        &p.account,
                        &format!("{earlier}, and the conversation could not be read ({cause})"),
                    ))
                }
            }
            tracing::warn!(pipeline = %p.name, idempotency_key = %key, "sending a job whose earlier outcome is unknown again, as --resend-unknown asks");
            (e, true)
        }
        Some(e) => {
            tracing::info!(pipeline = %p.name, idempotency_key = %key, attempts = e.attempts, last_error = ?e.last_error,
                "resuming a send job that did not finish; asking the provider again with the same idempotency key");
            (e, true)
        }
        None => {
            let e = LedgerEntry {
                stage: Stage::Prepared,
                payload_hash: payload,
                recipient: recipient.clone(),
                media_source: identity.map(str::to_string),
                media_id: None,
                media_url: None,
                message_id: None,
                sent_at: None,
                prepared_at_ms: unix_ms(SystemTime::now()),
                unknown_since_ms: None,
                attempt_started_ms: None,
                attempts: 0,
                last_error: None,
            };
            (e, false)
        }
    };
    entry.stage = Stage::Prepared;
    entry.attempts += 1;
    entry.attempt_started_ms = Some(unix_ms(SystemTime::now()));
    // Durable before any write request: from here on a rerun knows this attempt may have reached the provider.
    commit_entry(pipe, &key, &entry).await?;
    let written = job.deliver(ctx, media.as_ref(), &mut entry, credits).await?;
    match written {
        Written::Done(done) => {
            let found = Found { message_id: done.id, sent_at: done.at.as_deref().and_then(normalize_time) };
            job.record(entry, found, if resumed { History::Resumed } else { History::Sent }).await
        }
        Written::Refused(e) => {
            let err = if ctx.cancel.is_cancelled() {
                JobError::interrupted()
            } else {
                JobError::provider(&e, &p.account, &key)
            };
            if err.kind != FailKind::Local {
                entry.stage = Stage::Failed;
                entry.last_error = Some(err.code.clone());
                job.note(&entry).await;
            }
            Err(err)
        }
        Written::Unknown(e) => {
            tracing::warn!(pipeline = %p.name, idempotency_key = %key, endpoint = e.endpoint, status = e.status, code = %e.code,
                "the provider's answer to a send was lost; reading the conversation back instead of sending again");
            entry.stage = Stage::Unknown;
            entry.unknown_since_ms = entry.unknown_since_ms.or(entry.attempt_started_ms);
            entry.last_error = Some(e.code.clone());
            job.note(&entry).await;
            if entry.media_id.is_none() && media.is_some() {
                // The upload's answer was lost: no DM was sent, but the rule is the same.
                return Err(JobError::unknown(
                    &p.account,
                    &format!("the media upload's answer was lost ({}); no DM was sent", e.cause()),
                ));
            }
            match job.read_back(&entry).await {
                Ok(Some(found)) => job.record(entry, found, History::Confirmed).await,
                Ok(None) => Err(JobError::unknown(
                    &p.account,
                    &format!("the send's answer was lost ({}), and the conversation does not show it", e.cause()),
                )),
                Err(cause) => Err(JobError::unknown(
                    &p.account,
                    &format!(
                        "the send's answer was lost ({}), and the conversation could not be read ({cause})",
                        e.cause()
                    ),
                )),
            }
        }
    }
}

/// How the job learned that its message was sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum History {
    /// The provider answered this run's send.
    Sent,
    /// The provider answered a send asked again with the key of an interrupted run.
    Resumed,
    /// The answer was lost, and the conversation showed the message.
    Confirmed,
}

/// A message found in the conversation: the provider's ID and, when it says, when it was sent.
struct Found {
    message_id: String,
    sent_at: Option<String>,
}

/// One job's context through its attempt.
struct Attempt<'a> {
    pipe: &'a OpenPipeline,
    job: &'a Job,
    recipient: &'a str,
    key: &'a str,
}

impl Attempt<'_> {
    /// Upload (once) and send. `Ok` carries the send's outcome, or the upload's when that was not done.
    async fn deliver(
        &self,
        ctx: &SendContext,
        media: Option<&CheckedMedia>,
        entry: &mut LedgerEntry,
        credits: &mut u64,
    ) -> Result<Written, JobError> {
        let (pipe, p, key) = (self.pipe, &self.pipe.config, self.key);
        if let (Some(m), None) = (media, &entry.media_id) {
            let mkey = media_key(key);
            tracing::info!(pipeline = %p.name, idempotency_key = %mkey, "uploading media");
            let upload = |k: String| async move { pipe.client.upload_media(&m.upload, &k).await };
            match write(&pipe.client, p, ctx, WriteKind::Media, &mkey, credits, upload).await {
                Written::Done(done) => {
                    tracing::info!(pipeline = %p.name, media_id = %done.id, "media uploaded");
                    entry.media_id = Some(done.id);
                    entry.media_url = done.url;
                    commit_entry(pipe, key, entry).await?;
                }
                other => return Ok(other),
            }
        }
        tracing::info!(pipeline = %p.name, recipient = self.recipient, idempotency_key = %key, media_id = ?entry.media_id, "sending DM");
        let (text, media_id) = (&self.job.text, entry.media_id.as_deref());
        let send = |k: String| async move {
            let dm = Dm { to: self.recipient, text, media_id, idempotency_key: &k };
            pipe.client.send_dm(&dm).await
        };
        let written = write(&pipe.client, p, ctx, WriteKind::DirectMessage, key, credits, send).await;
        #[cfg(debug_assertions)]
        if matches!(written, Written::Done(_))
            && std::env::var_os(super::CRASH_AFTER_SEND_ENV).is_some_and(|v| v == "1")
        {
            // Test-only (see CRASH_AFTER_SEND_ENV): the provider has answered; nothing of it is written yet.
            tracing::warn!("test hook: aborting after the provider's answer, before the record");
            std::process::abort();
        }
        Ok(written)
    }

    /// Reads the conversation once for this job's message: from the account, the same text, created since the
    /// first attempt whose outcome is not known, and not already recorded for another job. `Err` says why the
    /// conversation could not be read.
    async fn read_back(&self, entry: &LedgerEntry) -> Result<Option<Found>, String> {
        let conv = Conversation::Peer { user_id: self.recipient.to_string(), conversation_id: None };
        let since_ms = entry.unknown_since_ms.or(entry.attempt_started_ms).unwrap_or(entry.prepared_at_ms);
        let found = readback::find_sent(self.pipe, &conv, &self.job.text, since_ms).await.map_err(|e| e.cause())?;
        Ok(found.map(|(message_id, sent_at)| Found { message_id, sent_at }))
    }

    /// Notes the ledger entry; a failure to note it is logged, not the job's error (the job's own is more
    /// useful to report).
    async fn note(&self, entry: &LedgerEntry) {
        if let Err(e) = commit_entry(self.pipe, self.key, entry).await {
            tracing::warn!(pipeline = %self.pipe.config.name, idempotency_key = %self.key, error = %e, "could not note the job's outcome in the ledger");
        }
    }

    /// Writes the `dm_send` record and marks the ledger `recorded`, in one commit after the line's fsync.
    async fn record(&self, mut entry: LedgerEntry, found: Found, how: History) -> Result<Outcome, JobError> {
        let (pipe, p, key) = (self.pipe, &self.pipe.config, self.key);
        let confirmed = how == History::Confirmed;
        let sent_at = found.sent_at.clone().unwrap_or_else(now_string);
        let conv = Conversation::Peer { user_id: self.recipient.to_string(), conversation_id: None };
        let sent = Sent {
            message_id: &found.message_id,
            text: &self.job.text,
            media_id: entry.media_id.as_deref(),
            idempotency_key: Some(key),
            participant_ids: None,
            status: if confirmed { "confirmed_by_history" } else { "sent" },
            sent_at: &sent_at,
        };
        let rec = send_record(p, &conv, pipe.client.send_endpoint(), sent);
        let Some(rkey) = rec.key() else {
            return Err(JobError::local("the send record has no key".into()));
        };
        entry.stage = Stage::Recorded;
        entry.message_id = Some(found.message_id.clone());
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
        tracing::info!(pipeline = %p.name, recipient = self.recipient, message_id = %found.message_id, idempotency_key = %key, how = ?how, "DM sent and recorded");
        Ok(Outcome::Sent {
            message_id: found.message_id,
            recipient: self.recipient.to_string(),
            key: key.to_string(),
            media_id: entry.media_id,
            resumed: how == History::Resumed,
            confirmed_by_history: confirmed,
        })
    }
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
