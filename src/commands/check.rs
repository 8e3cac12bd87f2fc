//! `check`: what a valid config will do, without touching state, files or the network.

use std::fmt::Write as _;

use super::Report;
use crate::config::{Config, ConversationRef};

/// What `check` prints for a valid config.
pub fn report(cfg: &Config) -> Report {
    let mut out = String::new();
    let mut pipelines = Vec::new();
    let _ = writeln!(out, "config {}: valid", cfg.path.display());
    let _ = writeln!(
        out,
        "state_dir {} (max_concurrency {}, shutdown_timeout {:?})",
        cfg.state_dir.display(),
        cfg.max_concurrency,
        cfg.shutdown_timeout
    );
    let _ = match cfg.metrics_listen {
        Some(addr) => writeln!(out, "metrics: `run` serves http://{addr}/metrics and /healthz"),
        None => writeln!(out, "metrics: not served (set metrics_listen to serve them)"),
    };
    for p in &cfg.pipelines {
        let _ = writeln!(out, "pipeline {} ({}):", p.name, p.provider);
        let _ = writeln!(out, "  base_url      {}", crate::config::shown::url(&p.base_url));
        let _ = writeln!(out, "  account       {}", p.account);
        let mut key_present = None;
        if let Some(source) = &p.api_key {
            key_present = Some(source.read(&p.name, "API key").is_ok());
            let key = match key_present {
                Some(true) => "present".to_string(),
                _ => "MISSING: sync would fail until it is set".to_string(),
            };
            let _ = writeln!(out, "  api key       {} ({key})", source.describe());
        }
        if let Some(o) = &p.oauth {
            out.push_str(&super::auth::check_lines(p, o));
        }
        if p.inbox {
            let how = match p.provider {
                crate::config::ProviderKind::GetXApi => {
                    format!("conversations discovered from tabs {}", p.inbox_tabs.join(", "))
                }
                _ => "the account's whole event stream, every conversation".to_string(),
            };
            let _ = writeln!(out, "  inbox         {how}");
        }
        let convs: Vec<String> = p.conversations.iter().map(ConversationRef::to_string).collect();
        pipelines.push(serde_json::json!({
            "name": p.name,
            "provider": p.provider.to_string(),
            "base_url": crate::config::shown::url(&p.base_url).to_string(),
            "account": p.account,
            "api_key_present": key_present,
            "conversations": convs,
            "inbox": p.inbox,
            "schedule": p.schedule.to_string(),
            "output": p.output_dir.join(&p.file_name),
            "rotate_max_bytes": p.rotate_max_bytes,
            "rotate_max_age_secs": p.rotate_max_age.map(|a| a.as_secs()),
            "backfill": p.backfill,
            "redact_text": p.redact_text,
        }));
        let _ = writeln!(out, "  conversations {} [{}]", convs.len(), convs.join(", "));
        let _ = writeln!(out, "  schedule      {}", p.schedule);
        let _ = writeln!(out, "  output        {}", p.output_dir.join(&p.file_name).display());
        let _ = writeln!(
            out,
            "  rotation      at {} bytes{}",
            p.rotate_max_bytes,
            p.rotate_max_age.map(|a| format!(" or {}", humantime::format_duration(a))).unwrap_or_default()
        );
        let limits = match (p.backfill, p.backfill_max_pages_per_run, p.max_credits_per_run) {
            (false, _, _) => "off during sync (use the backfill command)".to_string(),
            (true, 0, 0) => "full history, no per-run limit".to_string(),
            (true, pages, credits) => {
                format!("up to {pages} pages / {credits} credits per run (0 = no limit)")
            }
        };
        let _ = writeln!(out, "  backfill      {limits}");
        if p.redact_text {
            let _ = writeln!(out, "  text          redacted from records");
        }
        if let Some(u) = &p.upload {
            let _ = writeln!(
                out,
                "  upload        closed segments to {}{}{}",
                u.url,
                u.endpoint.as_deref().map(|e| format!(" via {}", crate::config::shown::url(e))).unwrap_or_default(),
                if u.delete_local { ", local segments removed once uploaded" } else { "" }
            );
        }
    }
    let json = serde_json::json!({
        "ok": true,
        "valid": true,
        "config": cfg.path,
        "state_dir": cfg.state_dir,
        "metrics_listen": cfg.metrics_listen.map(|a| a.to_string()),
        "pipelines": pipelines,
    });
    Report { stdout: out, json: Some(json), ..Report::default() }
}
