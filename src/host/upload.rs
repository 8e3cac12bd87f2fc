//! Closed segments to the bucket (SPEC 9.2) from this process: `dm-handoff upload`, and the drain a
//! one-shot `sync` or `backfill` does before it exits. The daemon's worker lives in `daemon.rs`.

use std::fmt::Write as _;

use crate::bucket::{self, Bucket};
use crate::commands::Report;
use crate::config::{Config, ConfigError, Pipeline};
use crate::exit::Exit;
use crate::state::{Store, StoreOptions};

/// While a one-shot sync runs: how often its uploader looks for segments closed meanwhile, so the
/// upload overlaps the sync instead of all of it waiting for the end.
pub(crate) const UPLOAD_DURING_SYNC: std::time::Duration = std::time::Duration::from_secs(1);

/// `dm-handoff upload [--pipeline P]…`: drains every selected pipeline's backlog and exits.
pub(crate) async fn command(cfg: &Config, names: &[String]) -> anyhow::Result<Report> {
    let selected = cfg.select(names)?;
    let pipelines: Vec<&Pipeline> = selected.iter().copied().filter(|p| p.upload.is_some()).collect();
    if pipelines.is_empty() {
        return Err(ConfigError(format!(
            "no selected pipeline has upload_url set in {}; set upload_url = \"s3://bucket/prefix\" first",
            cfg.path.display()
        ))
        .into());
    }
    let store = Store::open(&cfg.state_dir, StoreOptions::of(cfg))?;
    Ok(drain(&store, &pipelines).await)
}

/// Uploads the closed segments of every pipeline with `upload_url`: one line per pipeline on stdout, one
/// `error:` line per failed pipeline on stderr (the others still drain), exit 1 if any failed. What was
/// confirmed stays in the ledger; the rest is the backlog the next run picks up.
pub(crate) async fn drain(store: &Store, pipelines: &[&Pipeline]) -> Report {
    let mut report = Report::default();
    let mut json = Vec::new();
    for p in pipelines {
        let Some(u) = &p.upload else { continue };
        let result = match Bucket::open(u) {
            Ok(b) => b.drain(store, &p.name, &p.output_dir, &p.file_name, u.delete_local).await,
            Err(e) => Err(e),
        };
        let backlog = bucket::backlog(store, &p.name, &p.output_dir, &p.file_name).unwrap_or(0);
        crate::metrics::global().upload_backlog(&p.name, backlog);
        match result {
            Ok(d) => {
                let _ = store.set_upload_error(&p.name, None);
                crate::metrics::global().uploaded(&p.name, d.bytes_put);
                let _ = writeln!(
                    report.stdout,
                    "upload {}: {} segments in the bucket, {} objects put ({} bytes), {} found already there, backlog {backlog}",
                    p.name, d.segments_done, d.objects_put, d.bytes_put, d.already_there
                );
                json.push(serde_json::json!({
                    "pipeline": p.name, "ok": true, "segments_done": d.segments_done,
                    "objects_put": d.objects_put, "bytes_put": d.bytes_put, "already_there": d.already_there,
                    "backlog_segments": backlog,
                }));
            }
            Err(e) => {
                crate::metrics::global().upload_failed(&p.name);
                // Names keys and files only: BucketError never carries a segment's content.
                tracing::error!(pipeline = %p.name, "upload failed: {e}");
                let _ = store.set_upload_error(&p.name, Some(&e.to_string()));
                let _ = writeln!(
                    report.stderr,
                    "error: pipeline `{}` upload to {}: {e}; backlog {backlog} segments kept, run `dm-handoff upload` again",
                    p.name, u.url
                );
                report.exit = Exit::Failed;
                json.push(serde_json::json!({
                    "pipeline": p.name, "ok": false, "error": e.to_string(), "backlog_segments": backlog,
                }));
            }
        }
    }
    report.json = Some(serde_json::json!({
        "ok": report.exit == Exit::Ok, "exit": report.exit.code(), "pipelines": json,
    }));
    report
}

/// Puts `extra` under `key` in a report's JSON object and makes its `ok`/`exit` agree with `exit`.
fn extend_json(report: &mut Report, key: &str, extra: serde_json::Value) {
    let exit = report.exit;
    if let Some(serde_json::Value::Object(o)) = &mut report.json {
        o.insert(key.to_string(), extra);
        o.insert("ok".into(), (exit == Exit::Ok).into());
        if o.contains_key("exit") {
            o.insert("exit".into(), exit.code().into());
        }
    }
}

/// Folds an upload's report into a sync's: lines appended, and a failed upload turns a clean exit into 1.
pub(crate) fn merge(mut sync: Report, upload: Report) -> Report {
    sync.stdout.push_str(&upload.stdout);
    sync.stderr.push_str(&upload.stderr);
    if sync.exit == Exit::Ok {
        sync.exit = upload.exit;
    }
    extend_json(&mut sync, "upload", upload.json.unwrap_or(serde_json::Value::Null));
    sync
}

/// `verify --remote`: the local audit, then each selected pipeline's bucket against its manifests.
pub(crate) async fn verify(cfg: &Config, names: &[String]) -> anyhow::Result<Report> {
    let mut report = crate::commands::verify::report(cfg, names)?;
    let mut json = Vec::new();
    for p in cfg.select(names)? {
        let Some(u) = &p.upload else {
            let _ = writeln!(report.stdout, "verify --remote: pipeline {}: no upload_url, nothing to check", p.name);
            json.push(serde_json::json!({ "pipeline": p.name, "upload_url": null }));
            continue;
        };
        let checked = match Bucket::open(u) {
            Ok(b) => b.verify_remote(&p.name, &p.output_dir, &p.file_name).await,
            Err(e) => Err(e),
        };
        match checked {
            Ok(r) => {
                for line in &r.problems {
                    let _ = writeln!(report.stdout, "{line}");
                }
                let _ = writeln!(
                    report.stdout,
                    "verify --remote: pipeline {}: {} objects under {}, {} problems",
                    p.name,
                    r.objects,
                    u.url,
                    r.problems.len()
                );
                if !r.problems.is_empty() {
                    report.exit = Exit::Failed;
                }
                json.push(serde_json::json!({
                    "pipeline": p.name, "upload_url": u.url, "objects": r.objects, "problems": r.problems,
                }));
            }
            Err(e) => {
                let _ = writeln!(report.stderr, "error: pipeline `{}`: cannot check {}: {e}", p.name, u.url);
                report.exit = Exit::Failed;
                json.push(serde_json::json!({ "pipeline": p.name, "upload_url": u.url, "error": e.to_string() }));
            }
        }
    }
    extend_json(&mut report, "remote", serde_json::Value::Array(json));
    Ok(report)
}

/// How often the daemon's upload worker looks for closed segments without being woken: it catches the
/// manifests a finisher wrote after the run that closed their segments ended, and retries a failed pass.
pub(crate) const UPLOAD_EVERY: std::time::Duration = std::time::Duration::from_secs(30);

/// The daemon's upload worker: one pass over every pipeline with `upload_url` when a run ends (`wake`,
/// the point where rotation by size or age has closed segments) and every [`UPLOAD_EVERY`]. It runs in
/// its own task, so a slow or unreachable bucket never holds a sync up; `pipelines` is read each pass, so
/// a reload's changes apply. On shutdown a pass in flight is dropped: puts are create-only and the ledger
/// is written after the bucket confirms, so the next start goes on from there.
pub(crate) async fn worker(
    store: std::sync::Arc<Store>,
    pipelines: impl Fn() -> Vec<Pipeline> + Send,
    wake: std::sync::Arc<tokio::sync::Notify>,
    cancel: tokio_util::sync::CancellationToken,
    every: std::time::Duration,
) {
    let mut timer = tokio::time::interval(every);
    timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = timer.tick() => {}
            _ = wake.notified() => {}
        }
        let current = pipelines();
        let uploading: Vec<&Pipeline> = current.iter().filter(|p| p.upload.is_some()).collect();
        if uploading.is_empty() {
            continue;
        }
        let report = tokio::select! {
            _ = cancel.cancelled() => return,
            r = drain(&store, &uploading) => r,
        };
        // Errors were logged by `drain`; the per-pipeline summary is debug detail.
        for line in report.stdout.lines() {
            tracing::debug!("{line}");
        }
    }
}
