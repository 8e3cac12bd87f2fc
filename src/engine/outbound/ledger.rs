//! The send ledger: where each send job is, by pipeline and idempotency key, durable in the state.

use serde::{Deserialize, Serialize};

use super::JobError;
use crate::engine::OpenPipeline;
use crate::handoff::Batch;
use crate::state::{Commit, Store};

/// Where a send job is. Stored as JSON under the state's `x` prefix, by pipeline and idempotency key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    /// Committed before each attempt's first write: the attempt may be in flight, or the process died
    /// during it.
    Prepared,
    /// The last attempt ended with an answer that proves nothing was sent; running the job again is safe.
    Failed,
    /// The last attempt may have reached the provider and its result is not known (SPEC 8.8): a rerun reads
    /// the conversation back, and sends again only when asked to (`--resend-unknown`).
    Unknown,
    /// The record is in the files (committed with it).
    Recorded,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LedgerEntry {
    pub stage: Stage,
    /// `payload_hash` of what this key was first used for; another payload under it is refused.
    pub payload_hash: String,
    /// The recipient's numeric ID.
    pub recipient: String,
    /// The media identity ([`super::media::CheckedMedia::identity`]), when the job has media.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_source: Option<String>,
    /// Set once uploaded, so a retried job does not upload again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sent_at: Option<String>,
    /// Unix ms of the first attempt.
    pub prepared_at_ms: u64,
    /// Unix ms when the first attempt whose outcome is not known began: a message found in the conversation
    /// that is older than this is not this job's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unknown_since_ms: Option<u64>,
    /// Unix ms when the current (or last) attempt began.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempt_started_ms: Option<u64>,
    /// Runs of this job that reached the write step.
    #[serde(default)]
    pub attempts: u32,
    /// The last failure's code (never text), cleared when it is recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

/// Makes a ledger entry durable (through the pipeline's writer, like every state change of a pipeline).
pub async fn commit_entry(pipe: &OpenPipeline, key: &str, entry: &LedgerEntry) -> Result<(), JobError> {
    let entry = Store::ledger_entry(&pipe.config.name, key, entry).map_err(|e| JobError::local(e.to_string()))?;
    let commit = Commit { raw: vec![entry], ..Commit::default() };
    pipe.handoff.write(Batch { lines: Vec::new(), commit }).await.map_err(|e| JobError::local(e.to_string()))
}
