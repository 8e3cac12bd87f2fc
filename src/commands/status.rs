//! `status`: per pipeline and conversation, what the state says, as text or one JSON document. Reads the
//! state only, so the daemon answers it from its own open store. Per pipeline it also shows freshness
//! (SPEC 8.5): when the last successful run ended and the newest record's `created_at`, two separate
//! facts so an idle account is told apart from a dead pipeline; the metrics gauges say the same.

use std::fmt::Write as _;
use std::time::{Duration, UNIX_EPOCH};

use super::Report;
use crate::config::Config;
use crate::engine::health::{self, ConvHealth};
use crate::record::Conversation;
use crate::state::{Store, INBOX_STREAM};
use crate::time::format_time;

#[derive(serde::Serialize)]
struct StatusConv {
    conversation: String,
    configured: String,
    messages_written: u64,
    newest_message_id: Option<String>,
    backfill_done: bool,
    last_sync: Option<String>,
    last_error: Option<String>,
    credits_total: u64,
    /// Found by the whole-inbox sync rather than listed in `conversations`.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    discovered: bool,
    /// ok, failed, backfilling or paused: the state `dm_handoff_conversations` counts it in.
    state: &'static str,
}

/// The whole-inbox sync of a pipeline (`inbox = true`).
#[derive(serde::Serialize)]
struct StatusInbox {
    conversations_discovered: usize,
    /// Records the X API v2 stream wrote, across conversations.
    messages_written: u64,
    newest_message_id: Option<String>,
    backfill_done: bool,
    last_sync: Option<String>,
    last_error: Option<String>,
}

/// Uploads of closed segments to the bucket (`upload_url`, SPEC 9.2).
#[derive(serde::Serialize)]
struct StatusUpload {
    url: String,
    /// Closed segments whose segment or manifest is not confirmed in the bucket yet.
    backlog_segments: u64,
    /// The last upload pass's error (keys and files only), None after a clean pass.
    last_error: Option<String>,
}

#[derive(serde::Serialize)]
struct StatusPipeline {
    name: String,
    provider: &'static str,
    output_dir: String,
    /// Credits spent today (UTC), against `max_credits_per_day` (0 = no limit).
    credits_today: u64,
    max_credits_per_day: u64,
    /// Polling is paused until midnight UTC because the daily budget is spent.
    paused: bool,
    /// OAuth 2.0 pipelines: when the access token expires and whether a refresh token is held (never a token).
    #[serde(skip_serializing_if = "Option::is_none")]
    oauth: Option<super::auth::TokenStatus>,
    #[serde(skip_serializing_if = "Option::is_none")]
    inbox: Option<StatusInbox>,
    /// When the last run in which no conversation failed ended; None if none ever did.
    last_successful_run: Option<String>,
    /// The newest `created_at` of a message or event record in the files; None while there is none.
    newest_record_created_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    upload: Option<StatusUpload>,
    conversations: Vec<StatusConv>,
}

/// The `status` output, from an open store (the daemon's or our own).
pub fn report(cfg: &Config, store: &Store, json: bool) -> anyhow::Result<Report> {
    let mut doc = Vec::new();
    for p in &cfg.pipelines {
        let paused = health::paused(p, store)?;
        let mut convs = Vec::new();
        for c in &p.conversations {
            let key = health::conversation_key(p, c, store)?;
            let st = match &key {
                Some(k) => store.conversation(&p.name, k)?,
                None => Default::default(),
            };
            let state = ConvHealth::of(&st, p.backfill, paused).as_str();
            convs.push(StatusConv {
                conversation: key.unwrap_or_else(|| c.to_string()),
                configured: c.to_string(),
                messages_written: st.messages_written,
                newest_message_id: st.newest_id,
                backfill_done: st.backfill_done,
                last_sync: st.last_sync_ms.map(|ms| format_time(UNIX_EPOCH + Duration::from_millis(ms))),
                last_error: st.last_error,
                credits_total: st.credits_total,
                discovered: false,
                state,
            });
        }
        let inbox = if p.inbox {
            let discovered = store.discovered(&p.name)?;
            let stream = store.conversation(&p.name, INBOX_STREAM)?;
            for d in &discovered {
                let key = Conversation::from_conversation_id(&d.conversation_id, Some(&p.account)).key().to_string();
                if convs.iter().any(|c| c.conversation == key) {
                    continue;
                }
                let st = store.conversation(&p.name, &key)?;
                let state = ConvHealth::of(&st, p.backfill, paused).as_str();
                convs.push(StatusConv {
                    conversation: key,
                    configured: format!("conv:{}", d.conversation_id),
                    messages_written: st.messages_written,
                    newest_message_id: st.newest_id,
                    // A conversation only the stream reaches has the stream's backfill.
                    backfill_done: if st.backfill_started { st.backfill_done } else { stream.backfill_done },
                    last_sync: st.last_sync_ms.map(|ms| format_time(UNIX_EPOCH + Duration::from_millis(ms))),
                    last_error: st.last_error,
                    credits_total: st.credits_total,
                    discovered: true,
                    state,
                });
            }
            let st = stream;
            Some(StatusInbox {
                conversations_discovered: discovered.len(),
                messages_written: st.messages_written,
                newest_message_id: st.newest_id,
                backfill_done: st.backfill_done,
                last_sync: st.last_sync_ms.map(|ms| format_time(UNIX_EPOCH + Duration::from_millis(ms))),
                last_error: st.last_error,
            })
        } else {
            None
        };
        let credits_today = store.credits_today(&p.name)?;
        let fresh = store.freshness(&p.name)?;
        let upload = match &p.upload {
            Some(u) => Some(StatusUpload {
                url: u.url.clone(),
                backlog_segments: crate::bucket::backlog(store, &p.name, &p.output_dir, &p.file_name)?,
                last_error: store.upload_error(&p.name)?,
            }),
            None => None,
        };
        doc.push(StatusPipeline {
            upload,
            name: p.name.clone(),
            provider: p.provider.name(),
            output_dir: p.output_dir.display().to_string(),
            credits_today,
            max_credits_per_day: p.max_credits_per_day,
            paused,
            oauth: p.oauth.as_ref().map(super::auth::token_status),
            inbox,
            last_successful_run: fresh.last_success_ms.map(|ms| format_time(UNIX_EPOCH + Duration::from_millis(ms))),
            newest_record_created_at: fresh.newest_created_at,
            conversations: convs,
        });
    }
    let mut out = String::new();
    if json {
        out = serde_json::to_string_pretty(&serde_json::json!({ "pipelines": doc }))?;
        out.push('\n');
        return Ok(Report { stdout: out, ..Report::default() });
    }
    for p in &doc {
        writeln!(out, "pipeline {} ({}) -> {}", p.name, p.provider, p.output_dir)?;
        let limit = if p.max_credits_per_day > 0 { format!(" of {}", p.max_credits_per_day) } else { String::new() };
        let paused = if p.paused { "  PAUSED: daily credit budget spent, resumes at 00:00 UTC" } else { "" };
        writeln!(out, "  credits today: {}{limit}{paused}", p.credits_today)?;
        writeln!(
            out,
            "  last successful run: {}; newest record created_at: {}",
            p.last_successful_run.as_deref().unwrap_or("never"),
            p.newest_record_created_at.as_deref().unwrap_or("none yet"),
        )?;
        if let (Some(t), Some(pipe)) = (&p.oauth, cfg.pipelines.iter().find(|c| c.name == p.name)) {
            writeln!(out, "  token: {}", super::auth::describe(pipe, t))?;
        }
        if let Some(u) = &p.upload {
            writeln!(
                out,
                "  upload to {}: backlog {} segments{}",
                u.url,
                u.backlog_segments,
                u.last_error.as_deref().map(|e| format!(", last error: {e}")).unwrap_or_default()
            )?;
        }
        if let Some(i) = &p.inbox {
            writeln!(
                out,
                "  inbox: {} conversations discovered; stream {} records, last sync {}{}",
                i.conversations_discovered,
                i.messages_written,
                i.last_sync.as_deref().unwrap_or("never"),
                i.last_error.as_deref().map(|e| format!(", last error: {e}")).unwrap_or_default()
            )?;
        }
        writeln!(
            out,
            "  {:<22} {:>9} {:<20} {:<9} {:<24} {:>8}  last error",
            "conversation", "messages", "newest id", "backfill", "last sync", "credits"
        )?;
        for c in &p.conversations {
            writeln!(
                out,
                "  {:<22} {:>9} {:<20} {:<9} {:<24} {:>8}  {}",
                c.configured,
                c.messages_written,
                c.newest_message_id.as_deref().unwrap_or("-"),
                if c.backfill_done { "done" } else { "pending" },
                c.last_sync.as_deref().unwrap_or("never"),
                c.credits_total,
                c.last_error.as_deref().unwrap_or("-"),
            )?;
        }
    }
    Ok(Report { stdout: out, ..Report::default() })
}
