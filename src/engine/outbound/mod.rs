//! Outbound DMs (SPEC section 6): send jobs (one, or a batch), user lookup, media upload, and the send
//! ledger that makes a send job idempotent.
//!
//! A send *job* is (recipient, text, optional media) under an idempotency key: the one given, or a stable
//! hash of (pipeline, recipient, text, media) ([`keys::default_key`]). The key is the job's identity everywhere:
//! in the state's send ledger, in the `Idempotency-Key` header of every write (the upload's key is derived
//! from it, [`keys::media_key`]) and in the `dm_send` record.
//!
//! The ledger entry of a key ([`ledger::LedgerEntry`]) goes `prepared` → `recorded`:
//! - `prepared` is committed before the first write request, with the payload's hash (so a key reused for
//!   another message is refused before anything is spent) and, once the upload is done, its media ID (so
//!   a retried job does not upload again);
//! - `recorded` is committed in the same atomic batch as the record's line and its seen key, through the
//!   pipeline's [`crate::handoff::Handoff`], after the line is fsynced: the exactly-once rule of the history records.
//!
//! A job found `recorded` sends nothing ("already sent"). A job found `prepared` was interrupted somewhere
//! between its first request and its record (a crash, a kill, a failure): it asks again with the *same*
//! key, and the provider answers with the original write instead of writing again. If the record's line
//! reached the disk but its commit did not, start-up reconciliation has put the line's key in the seen set,
//! and only the ledger is completed. A provider on the legacy contract ignores the key; against one of
//! those, a crash in that window can send twice, which the README says.
//!
//! Writes are held to the account's documented write limit ([`WriteLimiter`]; 120 per minute for Xquik), retried with
//! the same key when the provider says so (429, 503, …; a rate limit is ridden out for up to
//! [`write::RATE_LIMIT_BUDGET`]), and a write the provider accepts but has not confirmed (202) is polled until it
//! is final.
//!
//! Privacy: the message text goes to the provider and into the record, nowhere else: not into logs,
//! errors, reports or the ledger (which keeps a hash). [`Job`]'s `Debug` leaves it out.
//!
//! # Layout
//! - [`job`]: a job and what can be checked about it offline; [`keys`]: idempotency keys; [`media`]: media
//!   checks; [`limiter`]: the per-account write limit; [`ledger`]: the send ledger;
//! - [`send`]: one job to its end; [`mod@write`]: one write to its end (limit, retries, polling).

pub mod job;
pub mod keys;
pub mod ledger;
pub mod limiter;
pub mod media;
pub mod readback;
pub mod send;
pub mod write;

use std::fmt;

use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

pub use job::{Job, MediaSource};
pub use limiter::{SendContext, WriteLimiter};
pub use send::{send_job, SendOptions};

use crate::provider::{with_retry, Client, ErrorClass, ProviderError, User, WriteDone, WriteKind};

/// Credits of one user lookup.
const LOOKUP_CREDITS: u64 = 1;

/// **Test-only hook**, compiled into debug builds only (the integration tests run one). When this variable
/// is `1`, `send` aborts the process right after the provider has answered a send and before anything
/// about that answer is written (record or ledger), which is the window the ledger exists for. The
/// integration tests use it to prove a rerun sends once and records once.
#[cfg(debug_assertions)]
pub const CRASH_AFTER_SEND_ENV: &str = "DM_HANDOFF_TEST_CRASH_AFTER_SEND";

/// A `send` as the CLI resolved it: every file read and every path absolute, so whoever runs it (this
/// process, or a running daemon reached over the control socket) needs nothing from the caller.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SendRequest {
    /// The pipeline named with `--pipeline`; None: the only configured one.
    pub pipeline: Option<String>,
    /// The jobs with their number: 1 for a single send, the line number in a jobs file.
    pub jobs: Vec<NumberedJob>,
    /// From `--jobs`: report per job and with a summary.
    pub batch: bool,
    /// `--resend-unknown`: jobs whose earlier outcome is unknown are sent again when the conversation does
    /// not show them.
    #[serde(default)]
    pub resend_unknown: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct NumberedJob {
    pub n: u64,
    pub job: Job,
}

/// How a job that did not fail ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Sent (or, `resumed`, found sent by asking the provider again with the same key; or,
    /// `confirmed_by_history`, found in the conversation after the provider's answer was lost) and recorded
    /// now.
    Sent {
        message_id: String,
        recipient: String,
        key: String,
        media_id: Option<String>,
        resumed: bool,
        confirmed_by_history: bool,
    },
    /// The ledger says it was recorded before; nothing was asked of the provider.
    AlreadySent { message_id: String, recipient: String, key: String },
}

/// Why a job failed, as one line without message text.
#[derive(Clone, Debug)]
pub struct JobError {
    pub kind: FailKind,
    /// The provider's error code (`x_dm_not_allowed`) or ours (`media_too_large`).
    pub code: String,
    /// What it means and what to do.
    pub detail: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailKind {
    /// Something about the job itself (arguments, media file): nothing was sent.
    Input,
    /// The provider refused or failed; the class says whether the account can go on at all.
    Provider(ErrorClass),
    /// Our own state or files failed.
    Local,
    /// Stopped by a signal.
    Interrupted,
    /// The request may have reached the provider and its result is not known; the conversation does not show
    /// the message. Not sent again unless asked (`--resend-unknown`).
    Unknown,
}

impl JobError {
    pub fn input(code: &str, detail: String) -> JobError {
        JobError { kind: FailKind::Input, code: code.into(), detail }
    }

    pub fn local(detail: String) -> JobError {
        JobError { kind: FailKind::Local, code: "state_error".into(), detail }
    }

    pub fn interrupted() -> JobError {
        JobError {
            kind: FailKind::Interrupted,
            code: "interrupted".into(),
            detail: "stopped by a signal; run the job again: it continues with the same idempotency key".into(),
        }
    }

    /// A job whose outcome is not known (SPEC 8.8): `why` says what happened, never message text.
    pub fn unknown(account: &str, why: &str) -> JobError {
        JobError {
            kind: FailKind::Unknown,
            code: "outcome_unknown".into(),
            detail: format!(
                "outcome unknown: {why}; it may have been sent from account `{account}`: check the conversation, and run the job again with --resend-unknown to send it once more"
            ),
        }
    }

    /// A provider failure, explained for the codes the DM workflow names.
    pub fn provider(e: &ProviderError, account: &str, key: &str) -> JobError {
        let detail = match e.code.as_str() {
            "x_dm_not_allowed" => format!(
                "the recipient does not accept DMs from account `{account}`; not retried: send from another permitted connected account, or ask the recipient to allow messages"
            ),
            "idempotency_conflict" => format!(
                "the provider already used idempotency key `{key}` for a different message (recipient, text or media); resend the original message with it, or pass a new --idempotency-key"
            ),
            "account_needs_reauth" => format!(
                "account `{account}` must be reconnected in the Xquik dashboard; then run the job again (same key: nothing is sent twice)"
            ),
            "account_restricted" => format!("account `{account}` is restricted by X; send from another connected account"),
            "user_not_found" => "no such X user; check the username or ID".to_string(),
            _ => match e.status {
                Some(s) => format!("{} ({}, HTTP {s})", e.hint, e.endpoint),
                None => format!("{} ({})", e.hint, e.endpoint),
            },
        };
        JobError { kind: FailKind::Provider(e.class), code: e.code.clone(), detail }
    }

    pub fn fatal(&self) -> bool {
        self.kind == FailKind::Provider(ErrorClass::Fatal)
    }
}

impl fmt::Display for JobError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code, self.detail)
    }
}

/// What a batch of send jobs came to.
#[derive(Clone, Debug, Default)]
pub struct BatchReport {
    pub sent: u64,
    pub already: u64,
    /// Failed jobs, including those whose outcome is unknown.
    pub failed: u64,
    /// Of the failed jobs, those whose outcome is unknown.
    pub unknown: u64,
    /// Jobs never tried because the batch stopped (a signal, an account-level failure).
    pub skipped: u64,
    pub credits: u64,
    /// What stopped the batch early, if anything.
    pub stopped: Option<JobError>,
}

/// What happened to one job of a batch, as it happens.
pub enum JobEvent<'a> {
    Done(&'a Result<Outcome, JobError>),
    /// Not tried: the batch had stopped for this reason (its code).
    Skipped(&'a str),
}

/// Runs a request's jobs in order, telling `on_job` about each as it ends (so a terminal sees progress).
/// An account-level failure or a signal stops the batch; the other failures are counted and it goes on.
pub async fn send_batch(
    pipe: &crate::engine::OpenPipeline,
    req: &SendRequest,
    ctx: &SendContext,
    mut on_job: impl FnMut(u64, JobEvent<'_>),
) -> BatchReport {
    let mut r = BatchReport::default();
    for NumberedJob { n, job } in &req.jobs {
        if r.stopped.is_none() && ctx.cancel.is_cancelled() {
            r.stopped = Some(JobError::interrupted());
        }
        if let Some(why) = &r.stopped {
            r.skipped += 1;
            on_job(*n, JobEvent::Skipped(&why.code));
            continue;
        }
        let opts = SendOptions { resend_unknown: req.resend_unknown };
        let result = send_job(pipe, job, ctx, opts, &mut r.credits).await;
        match &result {
            Ok(Outcome::Sent { .. }) => r.sent += 1,
            Ok(Outcome::AlreadySent { .. }) => r.already += 1,
            Err(e) => {
                r.failed += 1;
                r.unknown += u64::from(e.kind == FailKind::Unknown);
                if e.fatal() || e.kind == FailKind::Interrupted {
                    r.stopped = Some(e.clone());
                }
            }
        }
        on_job(*n, JobEvent::Done(&result));
    }
    r
}

/// `lookup`: a user by numeric ID or username (no `@`). Needs no state, so it works beside a daemon.
pub async fn lookup(client: &Client, p: &crate::config::Pipeline, who: &str) -> Result<User, JobError> {
    let cancel = CancellationToken::new();
    with_retry(&p.retry, &cancel, || client.lookup_user(who)).await.map_err(|e| JobError::provider(&e, &p.account, ""))
}

/// `upload-media`: checks and uploads one media item under `key` (or a key derived from the pipeline and
/// the media), through the same write path as a send. Needs no state.
pub async fn upload(
    client: &Client,
    p: &crate::config::Pipeline,
    src: &MediaSource,
    key: Option<&str>,
    ctx: &SendContext,
) -> Result<(WriteDone, String), JobError> {
    let media = media::check_media(src)?;
    let key = match key {
        Some(k) => keys::check_key(k)?.to_string(),
        None => keys::upload_key(&p.name, &media.identity),
    };
    let mut credits = 0;
    let media = &media;
    let upload = |k: String| async move { client.upload_media(&media.upload, &k).await };
    let done = match write::write(client, p, ctx, WriteKind::Media, &key, &mut credits, upload).await {
        write::Written::Done(done) => done,
        write::Written::Refused(_) if ctx.cancel.is_cancelled() => return Err(JobError::interrupted()),
        write::Written::Refused(e) => return Err(JobError::provider(&e, &p.account, &key)),
        write::Written::Unknown(e) => {
            return Err(JobError::unknown(
                &p.account,
                &format!(
                    "the upload's answer was lost ({}); no DM was sent, and uploading again is harmless",
                    e.cause()
                ),
            ))
        }
    };
    Ok((done, key))
}
