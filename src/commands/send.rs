//! `send`, `lookup` and `upload-media`: the arguments as a checked [`SendRequest`] (files read, paths made
//! absolute, every job checked offline), and the text of what the engine reports. Job lines and errors
//! carry IDs, keys and codes, never the message text.

use std::fmt::Write as _;
use std::path::Path;

use serde::Deserialize;

use super::{read_text, Report};
use crate::cli::SendArgs;
use crate::config::ConfigError;
use crate::engine::outbound::job::check_job;
use crate::engine::outbound::media::check_media;
use crate::engine::outbound::{
    BatchReport, FailKind, Job, JobError, JobEvent, MediaSource, NumberedJob, Outcome, SendRequest,
};
use crate::exit::Exit;
use crate::provider::{User, WriteDone};

/// Turns `send`'s arguments into a [`SendRequest`]: reads `--text-file` or `--jobs`, resolves paths, and
/// checks everything that can be checked without the network, so a bad batch is refused before any job runs.
pub fn prepare(args: &SendArgs) -> Result<SendRequest, ConfigError> {
    let cwd = std::env::current_dir().map_err(|e| ConfigError(format!("cannot read the current folder: {e}")))?;
    let jobs = if let Some(path) = &args.jobs {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError(format!("cannot read jobs file {}: {e}", path.display())))?;
        let base = path.parent().filter(|p| !p.as_os_str().is_empty()).map(|p| cwd.join(p)).unwrap_or(cwd);
        parse_jobs(&text, &base).map_err(|e| ConfigError(format!("jobs file {}: {e}", path.display())))?
    } else {
        let text = read_text(args.text.as_deref(), args.text_file.as_deref())?;
        let to = args.to.clone().ok_or_else(|| ConfigError("give the recipient with --to ID|@username".into()))?;
        let media = match &args.media {
            Some(m) => Some(MediaSource::parse(m, &cwd).map_err(|e| ConfigError(format!("--media: {e}")))?),
            None => None,
        };
        let job = Job { to, text, media, idempotency_key: args.idempotency_key.clone() };
        check_job(&job).map_err(|e| ConfigError(e.to_string()))?;
        // A bad file is the caller's to fix before anything is opened or spent (a batch checks per job).
        if let Some(m) = &job.media {
            check_media(m).map_err(|e| ConfigError(e.to_string()))?;
        }
        vec![NumberedJob { n: 1, job }]
    };
    Ok(SendRequest {
        pipeline: args.pipeline.clone(),
        jobs,
        batch: args.jobs.is_some(),
        resend_unknown: args.resend_unknown,
    })
}

/// A job line as written in a jobs file.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct JobLine {
    to: String,
    text: String,
    #[serde(default)]
    media: Option<String>,
    #[serde(default)]
    idempotency_key: Option<String>,
}

/// Parses a jobs file: one JSON object per line, blank lines skipped, jobs numbered by line. Relative media
/// paths are taken from `base` (the jobs file's folder). Errors name the line, never its text.
pub fn parse_jobs(text: &str, base: &Path) -> Result<Vec<NumberedJob>, String> {
    let mut jobs = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let n = i as u64 + 1;
        if line.trim().is_empty() {
            continue;
        }
        let raw: JobLine = serde_json::from_str(line).map_err(|e| {
            // serde's message can quote a value (the text); say only what kind of problem it is.
            let what = match e.classify() {
                serde_json::error::Category::Data => "wrong fields or types",
                _ => "not valid JSON",
            };
            format!(
                "line {n}: {what}; each line is one JSON object {{\"to\": \"ID or @username\", \"text\": \"…\", \"media\"?: \"path or https URL\", \"idempotency_key\"?: \"…\"}}"
            )
        })?;
        let media = match raw.media.as_deref() {
            Some(m) => Some(MediaSource::parse(m, base).map_err(|e| format!("line {n}: {e}"))?),
            None => None,
        };
        let job = Job { to: raw.to, text: raw.text, media, idempotency_key: raw.idempotency_key };
        check_job(&job).map_err(|e| format!("line {n}: {}: {}", e.code, e.detail))?;
        jobs.push(NumberedJob { n, job });
    }
    if jobs.is_empty() {
        return Err("no jobs in it".into());
    }
    Ok(jobs)
}

/// How a job's failure ends the process: the caller's input (exit 2), a signal (130), the account (4), or
/// this job alone (1).
pub fn job_exit(e: &JobError) -> Exit {
    match e.kind {
        FailKind::Input => Exit::Config,
        FailKind::Interrupted => Exit::Interrupted,
        _ if e.fatal() => Exit::Auth,
        _ => Exit::Failed,
    }
}

/// What a job came to, in one line.
pub fn describe(o: &Outcome) -> String {
    match o {
        Outcome::Sent { message_id, recipient, key, media_id, resumed, confirmed_by_history } => format!(
            "sent {message_id} to {recipient} (idempotency key {key}{}{})",
            media_id.as_deref().map(|m| format!(", media {m}")).unwrap_or_default(),
            if *confirmed_by_history {
                "; the provider's answer was lost, and the conversation shows it was sent: confirmed by history"
            } else if *resumed {
                ", resumed with the same key"
            } else {
                ""
            }
        ),
        Outcome::AlreadySent { message_id, recipient, key } => {
            format!("already sent {message_id} to {recipient} (idempotency key {key}); nothing sent again")
        }
    }
}

/// What a job came to, as a JSON object (`status` `sent` or `already_sent`).
pub fn outcome_json(o: &Outcome) -> serde_json::Value {
    match o {
        Outcome::Sent { message_id, recipient, key, media_id, resumed, confirmed_by_history } => serde_json::json!({
            "ok": true, "status": "sent", "message_id": message_id, "recipient": recipient,
            "idempotency_key": key, "media_id": media_id, "resumed": resumed,
            "confirmed_by_history": confirmed_by_history,
        }),
        Outcome::AlreadySent { message_id, recipient, key } => serde_json::json!({
            "ok": true, "status": "already_sent", "message_id": message_id, "recipient": recipient,
            "idempotency_key": key,
        }),
    }
}

/// The line a job of a batch prints as it ends.
pub fn job_line(n: u64, event: &JobEvent<'_>) -> String {
    match event {
        JobEvent::Done(Ok(o)) => format!("job {n}: {}\n", describe(o)),
        JobEvent::Done(Err(e)) => format!("job {n}: failed: {e}\n"),
        JobEvent::Skipped(code) => format!("job {n}: not attempted ({code})\n"),
    }
}

/// The end of a send: for one job its line (or error) and exit; for a batch the summary and exit.
pub fn finish(req: &SendRequest, single: Option<&Result<Outcome, JobError>>, r: &BatchReport) -> Report {
    let mut report = Report::default();
    if !req.batch {
        let Some(result) = single else { return report };
        let to = req.jobs.first().map(|j| j.job.to.trim()).unwrap_or_default();
        match result {
            Ok(o) => {
                report.stdout = format!("{}\n", describe(o));
                report.json = Some(outcome_json(o));
            }
            Err(e) => {
                report = Report::error(job_exit(e), format!("send to {to}: {e}"));
            }
        }
        return report;
    }
    let total = req.jobs.len();
    let _ = writeln!(
        report.stdout,
        "summary: {total} jobs: {} sent, {} already sent, {} failed{}{}; {} credits",
        r.sent,
        r.already,
        r.failed,
        if r.unknown > 0 { format!(" ({} outcome unknown)", r.unknown) } else { String::new() },
        if r.skipped > 0 { format!(", {} not attempted", r.skipped) } else { String::new() },
        r.credits
    );
    report.exit = match &r.stopped {
        Some(e) if e.kind == FailKind::Interrupted => {
            report.stderr =
                "error: interrupted; run the same jobs file again to finish (sent jobs are not sent twice)\n".into();
            Exit::Interrupted
        }
        Some(e) => {
            report.stderr = format!("error: the batch stopped: {e}\n");
            Exit::Auth
        }
        None if r.failed > 0 => {
            report.stderr = format!(
                "error: {} of {total} jobs failed (see their lines); fix them and run the file again: sent jobs are not sent twice{}\n",
                r.failed,
                if r.unknown > 0 {
                    ", and jobs whose outcome is unknown are only looked for unless you pass --resend-unknown"
                } else {
                    ""
                }
            );
            Exit::Failed
        }
        None => Exit::Ok,
    };
    // Under --json a batch's job lines stay text; this summary is the object a program reads.
    report.json = Some(serde_json::json!({
        "ok": report.exit == Exit::Ok, "exit": report.exit.code(), "jobs": total, "sent": r.sent,
        "already_sent": r.already, "failed": r.failed, "unknown": r.unknown, "not_attempted": r.skipped,
        "credits": r.credits,
    }));
    report
}

/// `lookup`'s output: a few aligned lines, or one JSON object.
pub fn lookup_report(who: &str, result: Result<User, JobError>, json: bool) -> Report {
    let user = match result {
        Ok(u) => u,
        Err(e) => return Report::error(job_exit(&e), format!("lookup {who}: {e}")),
    };
    let mut out = String::new();
    if json {
        out = serde_json::to_string(&user).unwrap_or_default();
        out.push('\n');
    } else {
        let _ = writeln!(out, "id        {}", user.id);
        let _ = writeln!(out, "username  {}", user.username);
        let _ = writeln!(out, "name      {}", user.name);
        if let Some(can) = user.can_dm {
            let _ = writeln!(out, "canDm     {can}");
        }
    }
    Report { stdout: out, ..Report::default() }
}

/// `upload-media`'s output: the media ID (and URL) and the key it was uploaded under.
pub fn upload_report(result: Result<(WriteDone, String), JobError>) -> Report {
    match result {
        Ok((done, key)) => {
            let mut out = format!("media_id         {}\n", done.id);
            if let Some(url) = &done.url {
                let _ = writeln!(out, "media_url        {url}");
            }
            let _ = writeln!(out, "idempotency_key  {key}");
            let json =
                serde_json::json!({ "ok": true, "media_id": done.id, "media_url": done.url, "idempotency_key": key });
            Report { stdout: out, json: Some(json), ..Report::default() }
        }
        Err(e) => Report::error(job_exit(&e), format!("upload-media: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_files_parse_by_line_and_never_echo_text() {
        let text = "{\"to\":\"44196397\",\"text\":\"hello\"}\n\n{\"to\":\"@dana_ops\",\"text\":\"with pic\",\"media\":\"p.png\",\"idempotency_key\":\"k-2\"}\n";
        let jobs = parse_jobs(text, Path::new("/in")).unwrap();
        assert_eq!(jobs.iter().map(|j| j.n).collect::<Vec<_>>(), [1, 3]);
        assert_eq!(jobs[1].job.media, Some(MediaSource::File("/in/p.png".into())));
        assert_eq!(jobs[1].job.idempotency_key.as_deref(), Some("k-2"));
        for (bad, what) in [
            ("{\"to\":\"1\",\"text\":\"secret words\",\"extra\":1}", "line 1"),
            ("{\"to\":1,\"text\":\"secret words\"}", "line 1"),
            ("{\"to\":\"1\",\"text\":\"secret words\"", "line 1"),
            ("{\"to\":\"nobody\",\"text\":\"secret words\"}", "invalid_recipient"),
            ("{\"to\":\"1\",\"text\":\"  \"}", "empty_text"),
            ("{\"to\":\"1\",\"text\":\"secret words\",\"idempotency_key\":\"a b\"}", "invalid_idempotency_key"),
            ("\n\n", "no jobs"),
        ] {
            let e = parse_jobs(bad, Path::new("/in")).unwrap_err();
            assert!(e.contains(what), "{e}");
            assert!(!e.contains("secret"), "the text leaked into: {e}");
        }
        let dbg = format!("{:?}", jobs[0].job);
        assert!(!dbg.contains("hello"), "{dbg}");
    }
}
