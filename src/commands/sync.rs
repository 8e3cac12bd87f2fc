//! `sync` and `backfill`: the arguments as a [`Request`], the request as the engine's [`RunOptions`], and
//! the run's reports as text (the same for a local run and one the daemon did).

use std::fmt::Write as _;

use super::{Report, Request};
use crate::cli::{BackfillArgs, SyncArgs};
use crate::config::{ConfigError, Pipeline};
use crate::engine::sync::{PipelineReport, RunOptions};
use crate::exit::Exit;

pub fn sync_request(args: SyncArgs) -> Request {
    Request::Sync { pipelines: args.pipelines, conversations: args.conversations }
}

pub fn backfill_request(args: BackfillArgs) -> Request {
    Request::Backfill {
        pipelines: args.pipelines,
        conversations: args.conversations,
        since: args.since,
        max_pages: args.max_pages,
    }
}

/// What a sync or backfill request asks the engine to do: the pipelines named and the run options.
/// None for other requests.
pub fn options(req: &Request) -> Option<Result<(&[String], RunOptions), ConfigError>> {
    match req {
        Request::Sync { pipelines, conversations } => Some(Ok((pipelines, RunOptions::sync(conversations.clone())))),
        Request::Backfill { pipelines, conversations, since, max_pages } => {
            Some(backfill_options(conversations, since.as_deref(), *max_pages).map(|o| (pipelines.as_slice(), o)))
        }
        _ => None,
    }
}

fn backfill_options(
    conversations: &[String],
    since: Option<&str>,
    max_pages: Option<u64>,
) -> Result<RunOptions, ConfigError> {
    let since = match since {
        Some(s) => Some(
            humantime::parse_rfc3339_weak(s)
                .map_err(|_| ConfigError(format!("--since `{s}` is not an RFC 3339 time like 2026-01-31T00:00:00Z")))?,
        ),
        None => None,
    };
    if max_pages == Some(0) {
        return Err(ConfigError("--max-pages must be at least 1".into()));
    }
    Ok(RunOptions::backfill(conversations.to_vec(), since, max_pages))
}

/// Every `--conversation` must be configured in one of the selected pipelines.
pub fn check_conversations(pipelines: &[&Pipeline], only: &[String]) -> Result<(), ConfigError> {
    for c in only {
        if !pipelines.iter().any(|p| p.conversations.iter().any(|x| &x.to_string() == c)) {
            return Err(ConfigError(format!(
                "conversation `{}` is not configured in the selected pipelines; list it under `conversations` first",
                crate::config::shown::short(c)
            )));
        }
    }
    Ok(())
}

/// The text and exit code of a sync or backfill run: the same for a local run and one the daemon did.
pub fn report(mut reports: Vec<PipelineReport>, interrupted: bool) -> Report {
    reports.sort_by(|a, b| a.pipeline.cmp(&b.pipeline));
    let (mut out, mut err) = (String::new(), String::new());
    // Conversations a stop signal cut short are said once, at the end, not once each.
    let mut stopped = 0;
    for r in &reports {
        let _ = writeln!(out, "pipeline {}", r.summary());
        for c in &r.conversations {
            let budget;
            let backfill = if let Some(key) = &c.budget {
                budget = format!("paused: {key} spent");
                budget.as_str()
            } else if c.backfill_done {
                "backfill done"
            } else if c.limited {
                "backfill paused (limit)"
            } else {
                "backfill pending"
            };
            let _ = writeln!(
                out,
                "  {:<22} pages {:>5}  new {:>7}  dup {:>6}  credits {:>7}  {}",
                c.conversation, c.pages, c.written, c.duplicates, c.credits, backfill
            );
        }
        if let Some(f) = &r.fatal {
            // One account-level cause: one line, not the same error once per conversation.
            let _ = writeln!(
                err,
                "error: pipeline `{}` stopped: {f} ({} of {} conversations not synced)",
                r.pipeline,
                r.failed(),
                r.conversations.len()
            );
            continue;
        }
        for c in &r.conversations {
            if c.cancelled {
                stopped += 1;
                continue;
            }
            if let Some(e) = &c.error {
                let _ = writeln!(err, "error: pipeline `{}` conversation {}: {e}", r.pipeline, c.conversation);
            }
        }
    }
    if stopped > 0 {
        let _ = writeln!(
            err,
            "error: stopped by a signal before finishing: {stopped} conversation{} stopped at a page boundary \
             (everything written is committed); run the same command again to continue",
            if stopped == 1 { "" } else { "s" }
        );
    }
    let exit = if interrupted {
        Exit::Interrupted
    } else if reports.iter().any(|r| r.fatal.is_some()) {
        Exit::Auth
    } else if reports.iter().any(|r| r.failed() > 0) {
        Exit::Failed
    } else {
        Exit::Ok
    };
    let json = serde_json::json!({
        "ok": exit == Exit::Ok,
        "exit": exit.code(),
        "interrupted": interrupted,
        "pipelines": reports.iter().map(|r| serde_json::json!({
            "pipeline": r.pipeline,
            "written": r.written(),
            "failed": r.failed(),
            "credits": r.credits(),
            "fatal": r.fatal,
            "conversations": r.conversations,
        })).collect::<Vec<_>>(),
    });
    Report { exit, stdout: out, stderr: err, json: Some(json) }
}
