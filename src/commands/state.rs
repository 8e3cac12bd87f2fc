//! `dm-handoff state check` and `state rebuild`: arguments to the pipelines' files, and the reports of
//! [`crate::state::audit`] (where the audit and the rebuild live) to text or JSON and an exit code. Both
//! take the state directory's lock, so they run here, never forwarded to a daemon (which owns the lock: they
//! exit 3 then, as any other second owner).

use std::fmt::Write as _;
use std::time::SystemTime;

use super::Report;
use crate::cli::{StateArgs, StateCommand};
use crate::config::Config;
use crate::exit::Exit;
use crate::state::audit::{self, CheckReport, Finding, RebuildReport, Target};
use crate::state::StoreOptions;

/// Runs the subcommand and prints its report; returns the exit code.
pub fn run(cfg: &Config, cmd: StateCommand) -> anyhow::Result<Exit> {
    let (StateCommand::Check(args) | StateCommand::Rebuild(args)) = &cmd;
    let targets = targets(cfg, args)?;
    let opts = StoreOptions::of(cfg);
    let report = match cmd {
        StateCommand::Check(_) => check_report(&audit::check(&cfg.state_dir, opts, &targets)?)?,
        StateCommand::Rebuild(_) => {
            rebuild_report(&audit::rebuild(&cfg.state_dir, opts, &targets, SystemTime::now())?)?
        }
    };
    Ok(report.print())
}

fn targets(cfg: &Config, args: &StateArgs) -> Result<Vec<Target>, crate::config::ConfigError> {
    Ok(cfg
        .select(&args.pipelines)?
        .into_iter()
        .map(|p| Target { pipeline: p.name.clone(), dir: p.output_dir.clone(), file_name: p.file_name.clone() })
        .collect())
}

fn line(out: &mut String, f: &Finding) {
    let _ = writeln!(out, "{}: {}: {}", if f.problem { "problem" } else { "note" }, f.at, f.what);
}

/// `state check`'s output: `problem:`/`note:` lines and a summary per pipeline, or one JSON document.
/// Exit 0 clean, 1 with problems.
/// Under the global `--json` the same outcome prints as one JSON object (`ok` and the report).
pub fn check_report(r: &CheckReport) -> anyhow::Result<Report> {
    let exit = if r.problems > 0 { Exit::Failed } else { Exit::Ok };
    let json = serde_json::json!({ "ok": r.problems == 0, "report": r });
    let mut out = String::new();
    for f in &r.database {
        line(&mut out, f);
    }
    for p in &r.pipelines {
        for f in &p.findings {
            line(&mut out, f);
        }
        let _ = writeln!(
            out,
            "state check: pipeline {}: {} files, {} records, {} conversations, {} problems",
            p.pipeline, p.files, p.records, p.conversations, p.problems
        );
    }
    let _ = writeln!(out, "state check: {}: {} entries read, {} problems", r.state_dir, r.entries, r.problems);
    Ok(Report { exit, stdout: out, stderr: String::new(), json: Some(json) })
}

/// `state rebuild`'s output: where the old database went, then per pipeline what was rebuilt and which
/// conversations were reset (and why).
pub fn rebuild_report(r: &RebuildReport) -> anyhow::Result<Report> {
    let json = serde_json::to_value(r)?;
    let mut out = String::new();
    match &r.old {
        Some(old) => {
            let _ = writeln!(out, "state rebuild: the old database is kept as {}", old.display());
        }
        None => {
            let _ = writeln!(out, "state rebuild: there was no database; a new one was made from the files");
        }
    }
    if let Some(why) = &r.old_unreadable {
        let _ = writeln!(out, "note: the old database could not be read in full ({why}); what was read is used");
    }
    let _ = writeln!(
        out,
        "state rebuild: {} entries the files cannot say (send ledger, usernames, credits, …) copied",
        r.carried
    );
    for p in &r.pipelines {
        for n in &p.notes {
            let _ = writeln!(out, "note: pipeline {}: {n}", p.pipeline);
        }
        for (conv, why) in &p.reset {
            let _ = writeln!(
                out,
                "note: pipeline {}: conversation {conv} reset ({why}): its history is read again from the newest page; nothing already in the files is written again",
                p.pipeline
            );
        }
        let _ = writeln!(
            out,
            "state rebuild: pipeline {}: {} files, {} records in the seen set, {} conversation states kept, {} reset",
            p.pipeline,
            p.files,
            p.records,
            p.kept,
            p.reset.len()
        );
    }
    Ok(Report { stdout: out, json: Some(json), ..Report::default() })
}
