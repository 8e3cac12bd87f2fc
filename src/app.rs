//! The commands: each takes validated settings, does its work, and says how the process should exit.
//!
//! This is the application edge: errors become `anyhow` here, typed errors that decide an exit code
//! ([`ConfigError`], [`StateError::Locked`]) are recovered in [`exit_code_for`]. Nothing below this
//! module prints to stdout; everything here prints only IDs, counts, paths and endpoints.

use std::io::{IsTerminal, Write};
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use anyhow::Context as _;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::cli::{BackfillArgs, Command, DemoArgs, Opts, SimulateArgs, SyncArgs};
use crate::config::{self, Config, ConfigError, ConversationRef, Pipeline};
use crate::control::{self, Request, Response};
use crate::handoff::Handoff;
use crate::provider::Client;
use crate::record::format_time;
use crate::sink::SinkConfig;
use crate::state::{StateError, Store};
use crate::sync::{sync_pipeline, PipelineReport, RunOptions, Runtime};

/// Process exit codes (documented in the README).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    /// Everything asked for was done.
    Ok = 0,
    /// At least one conversation failed (the others completed), or a runtime error.
    Failed = 1,
    /// Bad config, bad arguments, or a missing API key.
    Config = 2,
    /// Another process owns the state directory.
    Locked = 3,
    /// A pipeline stopped on an account-level provider error (401, 402, account not connected).
    Auth = 4,
    /// Stopped by a signal before finishing.
    Interrupted = 130,
}

/// Maps an error that reached `main` to its exit code.
pub fn exit_code_for(e: &anyhow::Error) -> Exit {
    for cause in e.chain() {
        if cause.downcast_ref::<ConfigError>().is_some() {
            return Exit::Config;
        }
        if let Some(StateError::Locked { .. }) = cause.downcast_ref::<StateError>() {
            return Exit::Locked;
        }
    }
    Exit::Failed
}

/// Runs the command the user asked for and returns the process exit code.
pub async fn run(opts: Opts) -> anyhow::Result<i32> {
    let exit = match opts.command {
        Command::Check => check(&config::load(&opts.config)?)?,
        Command::Run => crate::daemon::run(opts.config.clone(), config::load(&opts.config)?).await?,
        Command::Sync(args) => {
            let cfg = config::load(&opts.config)?;
            let req = Request::Sync { pipelines: args.pipelines.clone(), conversations: args.conversations.clone() };
            return Ok(match forward(&cfg, &req).await? {
                Some(resp) => emit(resp),
                None => emit(sync(&cfg, args).await?),
            });
        }
        Command::Backfill(args) => {
            let cfg = config::load(&opts.config)?;
            let req = Request::Backfill {
                pipelines: args.pipelines.clone(),
                conversations: args.conversations.clone(),
                since: args.since.clone(),
                max_pages: args.max_pages,
            };
            return Ok(match forward(&cfg, &req).await? {
                Some(resp) => emit(resp),
                None => emit(backfill(&cfg, args).await?),
            });
        }
        Command::Status(args) => {
            let cfg = config::load(&opts.config)?;
            return Ok(match forward(&cfg, &Request::Status { json: args.json }).await? {
                Some(resp) => emit(resp),
                None => {
                    let store = Store::open(&cfg.state_dir, cfg.store_options())?;
                    emit(status(&cfg, &store, args.json)?)
                }
            });
        }
        Command::Demo(args) => demo(args).await?,
        Command::Simulate(args) => simulate(args).await?,
        Command::Send(args) => {
            let cfg = config::load(&opts.config)?;
            let req = crate::outbound::prepare_send(&args)?;
            // The request carries the message text: it goes only through the owner-only socket, never a log.
            let forwarded = Request::Send { args: serde_json::to_value(&req)? };
            return Ok(match forward(&cfg, &forwarded).await? {
                Some(resp) => emit(resp),
                None => crate::outbound::send_prepared(&cfg, &req).await? as i32,
            });
        }
        Command::Lookup(args) => crate::outbound::lookup_command(&config::load(&opts.config)?, args).await?,
        Command::UploadMedia(args) => crate::outbound::upload_command(&config::load(&opts.config)?, args).await?,
        Command::Delete(args) => {
            let cfg = config::load(&opts.config)?;
            return manage(&cfg, crate::manage::prepare_delete(&cfg, args)?).await;
        }
        Command::GroupSend(args) => {
            let cfg = config::load(&opts.config)?;
            return manage(&cfg, crate::manage::prepare_group_send(&cfg, args)?).await;
        }
        Command::Verify(args) => {
            let (stdout, exit) = crate::verify::command(&config::load(&opts.config)?, &args.pipelines)?;
            return Ok(emit(Response { exit, stdout, stderr: String::new() }));
        }
        Command::Schema => {
            return Ok(emit(Response { exit: 0, stdout: crate::schema::text(), stderr: String::new() }));
        }
    };
    Ok(exit as i32)
}

/// A checked `delete` or `group-send`: done by the running daemon if there is one, else here.
async fn manage(cfg: &Config, req: crate::manage::ManageRequest) -> anyhow::Result<i32> {
    let forwarded = Request::Manage { args: serde_json::to_value(&req)? };
    Ok(match forward(cfg, &forwarded).await? {
        Some(resp) => emit(resp),
        None => emit(crate::manage::run_local(cfg, &req).await?),
    })
}

/// Hands a request to the running daemon, if there is one.
async fn forward(cfg: &Config, req: &Request) -> anyhow::Result<Option<Response>> {
    let resp = control::call(&cfg.state_dir, req)
        .await
        .with_context(|| format!("talking to the daemon on {}", control::socket_path(&cfg.state_dir).display()))?;
    if resp.is_some() {
        tracing::debug!("handled by the running daemon");
    }
    Ok(resp)
}

/// Prints a command's output and returns its exit code.
fn emit(resp: Response) -> i32 {
    print!("{}", resp.stdout);
    eprint!("{}", resp.stderr);
    let _ = std::io::stdout().flush();
    resp.exit
}

pub(crate) fn select<'a>(cfg: &'a Config, names: &[String]) -> Result<Vec<&'a Pipeline>, ConfigError> {
    for n in names {
        if !cfg.pipelines.iter().any(|p| &p.name == n) {
            let known: Vec<_> = cfg.pipelines.iter().map(|p| p.name.as_str()).collect();
            return Err(ConfigError(format!(
                "no pipeline named `{n}` in {}; configured: {}",
                cfg.path.display(),
                known.join(", ")
            )));
        }
    }
    Ok(cfg.pipelines.iter().filter(|p| names.is_empty() || names.contains(&p.name)).collect())
}

pub(crate) fn check_conversations(pipelines: &[&Pipeline], only: &[String]) -> Result<(), ConfigError> {
    for c in only {
        if !pipelines.iter().any(|p| p.conversations.iter().any(|x| &x.to_string() == c)) {
            return Err(ConfigError(format!(
                "conversation `{c}` is not configured in the selected pipelines; list it under `conversations` first"
            )));
        }
    }
    Ok(())
}

/// Opens the state and each selected pipeline's client and writer (which recovers its files).
fn open_runtimes(cfg: &Config, pipelines: &[&Pipeline]) -> anyhow::Result<Vec<Arc<Runtime>>> {
    // Secrets first: a missing key should not leave a state directory behind.
    let clients = pipelines.iter().map(|p| Client::new(p)).collect::<Result<Vec<_>, _>>()?;
    let store = Arc::new(Store::open(&cfg.state_dir, cfg.store_options())?);
    pipelines.iter().zip(clients).map(|(p, client)| open_runtime(&store, p, client)).collect()
}

/// Opens one pipeline's writer (recovering its files) and bundles it with its client.
pub(crate) fn open_runtime(store: &Arc<Store>, p: &Pipeline, client: Client) -> anyhow::Result<Arc<Runtime>> {
    let (handoff, _recovery) = Handoff::open(store.clone(), &p.name, sink_config(p))
        .map_err(|e| anyhow::anyhow!("pipeline `{}`: {e}", p.name))?;
    Ok(Arc::new(Runtime { pipeline: p.clone(), client, handoff, store: store.clone() }))
}

/// The sink settings of a pipeline.
pub fn sink_config(p: &Pipeline) -> SinkConfig {
    SinkConfig {
        dir: p.output_dir.clone(),
        file_name: p.file_name.clone(),
        rotate_max_bytes: p.rotate_max_bytes,
        rotate_max_age: p.rotate_max_age,
        compress: p.compress,
    }
}

/// Cancels `token` on the first SIGINT/SIGTERM (logging `first` to say what stopping means for this
/// command); a second one exits at once, through `exit_now`, which never tears a line.
pub(crate) fn stop_on_signal(token: CancellationToken, first: &'static str) {
    tokio::spawn(async move {
        let Ok(mut term) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) else {
            return;
        };
        let mut count = 0;
        loop {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            count += 1;
            if count == 1 {
                tracing::warn!("{first}; signal again to exit at once");
                token.cancel();
            } else {
                // Waits for an append in progress, so no line is torn; committed state is already durable.
                crate::handoff::exit_now(Exit::Interrupted as i32);
            }
        }
    });
}

async fn run_once(cfg: &Config, names: &[String], opts: RunOptions) -> anyhow::Result<Response> {
    let pipelines = select(cfg, names)?;
    check_conversations(&pipelines, &opts.only)?;
    let runtimes = open_runtimes(cfg, &pipelines)?;
    let cancel = CancellationToken::new();
    stop_on_signal(cancel.clone(), "stopping at the next page boundary");
    let global = Arc::new(Semaphore::new(cfg.max_concurrency));
    let mut set = JoinSet::new();
    for rt in &runtimes {
        set.spawn(sync_pipeline(rt.clone(), opts.clone(), global.clone(), cancel.clone()));
    }
    let mut reports = Vec::new();
    while let Some(r) = set.join_next().await {
        reports.push(r.context("a pipeline task failed")?);
    }
    for rt in runtimes {
        if let Ok(rt) = Arc::try_unwrap(rt) {
            rt.handoff.close().await;
        }
    }
    Ok(render_reports(reports, cancel.is_cancelled()))
}

/// The text and exit code of a sync or backfill run: the same for a local run and one the daemon did.
pub(crate) fn render_reports(mut reports: Vec<PipelineReport>, interrupted: bool) -> Response {
    use std::fmt::Write as _;
    reports.sort_by(|a, b| a.pipeline.cmp(&b.pipeline));
    let (mut out, mut err) = (String::new(), String::new());
    for r in &reports {
        let written: u64 = r.conversations.iter().map(|c| c.written).sum();
        let credits: u64 = r.conversations.iter().map(|c| c.credits).sum();
        let _ = writeln!(
            out,
            "pipeline {}: {} conversations, {} new records, {} failed, {} credits",
            r.pipeline,
            r.conversations.len(),
            written,
            r.failed(),
            credits
        );
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
            if let Some(e) = &c.error {
                let _ = writeln!(err, "error: pipeline `{}` conversation {}: {e}", r.pipeline, c.conversation);
            }
        }
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
    Response { exit: exit as i32, stdout: out, stderr: err }
}

async fn sync(cfg: &Config, args: SyncArgs) -> anyhow::Result<Response> {
    run_once(cfg, &args.pipelines, sync_options(args.conversations)).await
}

/// What `sync` does: new messages, and backfill as each pipeline's own `backfill` setting says.
pub(crate) fn sync_options(conversations: Vec<String>) -> RunOptions {
    RunOptions { head: true, backfill: None, only: conversations, ..Default::default() }
}

async fn backfill(cfg: &Config, args: BackfillArgs) -> anyhow::Result<Response> {
    let mut opts = backfill_options(args.conversations, args.since.as_deref(), args.max_pages)?;
    // A progress line on a terminal only: logs and pipes get the summary alone.
    if !std::io::stderr().is_terminal() {
        return run_once(cfg, &args.pipelines, opts).await;
    }
    let progress = Arc::new(crate::sync::Progress::default());
    opts.progress = Some(progress.clone());
    let bar = indicatif::ProgressBar::new_spinner();
    bar.set_style(
        indicatif::ProgressStyle::with_template("{spinner} backfill: {msg} [{elapsed}]")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
    );
    let ticker = {
        let (bar, progress) = (bar.clone(), progress.clone());
        tokio::spawn(async move {
            loop {
                let (pages, records) =
                    (progress.pages.load(Ordering::Relaxed), progress.records.load(Ordering::Relaxed));
                bar.set_message(format!("{pages} pages, {records} records written"));
                bar.tick();
                tokio::time::sleep(Duration::from_millis(120)).await;
            }
        })
    };
    let result = run_once(cfg, &args.pipelines, opts).await;
    ticker.abort();
    let _ = ticker.await;
    bar.finish_and_clear();
    result
}

/// What `backfill` does, from its arguments.
pub(crate) fn backfill_options(
    conversations: Vec<String>,
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
    Ok(RunOptions { head: false, backfill: Some(true), max_pages, since, only: conversations, ..Default::default() })
}

fn check(cfg: &Config) -> anyhow::Result<Exit> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "config {}: valid", cfg.path.display())?;
    writeln!(
        out,
        "state_dir {} (max_concurrency {}, shutdown_timeout {:?})",
        cfg.state_dir.display(),
        cfg.max_concurrency,
        cfg.shutdown_timeout
    )?;
    for p in &cfg.pipelines {
        let key = match p.api_key.read(&p.name, "API key") {
            Ok(_) => "present".to_string(),
            Err(_) => "MISSING: sync would fail until it is set".to_string(),
        };
        writeln!(out, "pipeline {} ({}):", p.name, p.provider)?;
        writeln!(out, "  base_url      {}", p.base_url)?;
        writeln!(out, "  account       {}", p.account)?;
        writeln!(out, "  api key       {} ({key})", p.api_key.describe())?;
        let convs: Vec<String> = p.conversations.iter().map(ConversationRef::to_string).collect();
        writeln!(out, "  conversations {} [{}]", convs.len(), convs.join(", "))?;
        writeln!(out, "  schedule      {}", p.schedule)?;
        writeln!(out, "  output        {}", p.output_dir.join(&p.file_name).display())?;
        writeln!(
            out,
            "  rotation      at {} bytes{}",
            p.rotate_max_bytes,
            p.rotate_max_age.map(|a| format!(" or {}", humantime::format_duration(a))).unwrap_or_default()
        )?;
        let limits = match (p.backfill, p.backfill_max_pages_per_run, p.max_credits_per_run) {
            (false, _, _) => "off during sync (use the backfill command)".to_string(),
            (true, 0, 0) => "full history, no per-run limit".to_string(),
            (true, pages, credits) => {
                format!("up to {pages} pages / {credits} credits per run (0 = no limit)")
            }
        };
        writeln!(out, "  backfill      {limits}")?;
        if p.redact_text {
            writeln!(out, "  text          redacted from records")?;
        }
    }
    Ok(Exit::Ok)
}

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
    conversations: Vec<StatusConv>,
}

/// The `status` output, from an open store (the daemon's or our own).
pub(crate) fn status(cfg: &Config, store: &Store, json: bool) -> anyhow::Result<Response> {
    use std::fmt::Write as _;
    let mut doc = Vec::new();
    for p in &cfg.pipelines {
        let mut convs = Vec::new();
        for c in &p.conversations {
            let key = match c {
                ConversationRef::Peer(id) => Some(id.clone()),
                ConversationRef::ConversationId(id) => {
                    Some(crate::record::Conversation::from_conversation_id(id, Some(&p.account)).key().to_string())
                }
                ConversationRef::Username(u) => store.resolved_user(p.provider.name(), u)?,
            };
            let st = match &key {
                Some(k) => store.conversation(&p.name, k)?,
                None => Default::default(),
            };
            convs.push(StatusConv {
                conversation: key.unwrap_or_else(|| c.to_string()),
                configured: c.to_string(),
                messages_written: st.messages_written,
                newest_message_id: st.newest_id,
                backfill_done: st.backfill_done,
                last_sync: st.last_sync_ms.map(|ms| format_time(UNIX_EPOCH + Duration::from_millis(ms))),
                last_error: st.last_error,
                credits_total: st.credits_total,
            });
        }
        let credits_today = store.credits_today(&p.name)?;
        doc.push(StatusPipeline {
            name: p.name.clone(),
            provider: p.provider.name(),
            output_dir: p.output_dir.display().to_string(),
            credits_today,
            max_credits_per_day: p.max_credits_per_day,
            paused: p.max_credits_per_day > 0 && credits_today >= p.max_credits_per_day,
            conversations: convs,
        });
    }
    let mut out = String::new();
    if json {
        out = serde_json::to_string_pretty(&serde_json::json!({ "pipelines": doc }))?;
        out.push('\n');
        return Ok(Response { exit: 0, stdout: out, stderr: String::new() });
    }
    for p in &doc {
        writeln!(out, "pipeline {} ({}) -> {}", p.name, p.provider, p.output_dir)?;
        let limit = if p.max_credits_per_day > 0 { format!(" of {}", p.max_credits_per_day) } else { String::new() };
        let paused = if p.paused { "  PAUSED: daily credit budget spent, resumes at 00:00 UTC" } else { "" };
        writeln!(out, "  credits today: {}{limit}{paused}", p.credits_today)?;
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
    Ok(Response { exit: 0, stdout: out, stderr: String::new() })
}

async fn simulate(args: SimulateArgs) -> anyhow::Result<Exit> {
    let mut sim_cfg = match &args.scenario {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| ConfigError(format!("cannot read scenario {}: {e}", path.display())))?;
            serde_json::from_str(&text).map_err(|e| {
                ConfigError(format!("scenario {}: {e}; see the simulator section of the README", path.display()))
            })?
        }
        None => dm_handoff_simulator::default_scenario(),
    };
    if let Some(seed) = args.seed {
        sim_cfg.seed = seed;
    }
    let listener = tokio::net::TcpListener::bind(&args.listen)
        .await
        .map_err(|e| ConfigError(format!("cannot listen on {}: {e}; pick another --listen address", args.listen)))?;
    let addr = listener.local_addr()?;
    println!(
        "dm-handoff simulator listening on http://{addr}  (x-api-v2 and getxapi base_url http://{addr}; xquik base_url http://{addr}/api/v1)"
    );
    std::io::stdout().flush()?;
    let cancel = CancellationToken::new();
    stop_on_signal(cancel.clone(), "stopping the simulator");
    dm_handoff_simulator::Simulator::new(sim_cfg).serve(listener, async move { cancel.cancelled().await }).await?;
    Ok(Exit::Ok)
}

/// The first line of a config `demo` wrote; marks a folder the demo may clear.
const DEMO_HEADER: &str = "# Written by `dm-handoff demo`";

async fn demo(args: DemoArgs) -> anyhow::Result<Exit> {
    let dir = &args.dir;
    let config_path = dir.join("pipelines.toml");
    // Each demo starts fresh, but only a folder an earlier demo wrote is cleared (its config says so).
    if std::fs::read_to_string(&config_path).is_ok_and(|t| t.starts_with(DEMO_HEADER)) {
        for sub in ["state", "out"] {
            let _ = std::fs::remove_dir_all(dir.join(sub));
        }
    } else if dir.exists() && std::fs::read_dir(dir)?.next().is_some() {
        return Err(ConfigError(format!(
            "{} exists and was not written by `dm-handoff demo`; pass --dir with a new folder",
            dir.display()
        ))
        .into());
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let handle = dm_handoff_simulator::Simulator::spawn(dm_handoff_simulator::default_scenario())
        .await
        .context("starting the simulator")?;
    std::fs::write(dir.join("demo-api-key"), "xq_demo_key_not_secret\n")?;
    let scenario = dm_handoff_simulator::default_scenario();
    let convs: Vec<String> = scenario.conversations.iter().map(|c| format!("\"{}\"", c.peer_id)).collect();
    std::fs::write(
        &config_path,
        format!(
            "{DEMO_HEADER}: a pipeline against the built-in simulator on loopback.\n\
             state_dir = \"state\"\n\n[[pipelines]]\nname = \"support\"\nprovider = \"xquik\"\n\
             base_url = \"{}\"\napi_key_file = \"demo-api-key\"\naccount = \"acme_support\"\n\
             conversations = [{}]\nschedule = \"*/30 * * * * *\"\noutput_dir = \"out/support\"\n\
             rotate_max_bytes = 131072\n",
            handle.base_url(),
            convs.join(", ")
        ),
    )?;
    let cfg = config::load(&config_path)?;
    println!(
        "demo: simulator on {} serving {} conversations; config {}",
        handle.base_url(),
        scenario.conversations.len(),
        config_path.display()
    );
    println!("\n== first sync: everything the simulator has");
    let first = emit(run_once(&cfg, &[], RunOptions { head: true, backfill: Some(true), ..Default::default() }).await?);
    let ids = handle.sim.add_messages(&scenario.conversations[0].peer_id, 5);
    println!(
        "\n== {} new messages arrive in {}; second sync writes only those",
        ids.len(),
        scenario.conversations[0].peer_id
    );
    let second =
        emit(run_once(&cfg, &[], RunOptions { head: true, backfill: Some(true), ..Default::default() }).await?);
    let stats = handle.sim.stats();
    // The demo's simulator stops with the demo, so a rerun needs one on the address the config names.
    let addr = handle.addr;
    handle.shutdown().await;
    let out_dir = &cfg.pipelines[0].output_dir;
    println!("\n== files in {}", out_dir.display());
    let (files, records) = describe_files(out_dir)?;
    for (name, lines, bytes) in &files {
        println!("  {name:<52} {lines:>6} records {bytes:>9} bytes");
    }
    println!("  total {records} records; simulator served {} requests, {} credits", stats.requests, stats.credits);
    let active = out_dir.join(&cfg.pipelines[0].file_name);
    println!("\nLook at it:");
    println!("  tail -n 3 {}", active.display());
    println!("  cargo run --release -- status --config {}", config_path.display());
    println!("  cargo run --release -- simulate --listen {addr} &   # the demo's simulator has stopped; start one");
    println!(
        "  cargo run --release -- sync --config {}   # run again: nothing is written twice",
        config_path.display()
    );
    Ok(if first != 0 || second != 0 { Exit::Failed } else { Exit::Ok })
}

/// A handoff file as the demo reports it: (file name, lines, bytes).
type FileSummary = (String, u64, u64);

/// Each handoff file in a folder, closed segments first, and the line total.
fn describe_files(dir: &Path) -> anyhow::Result<(Vec<FileSummary>, u64)> {
    let mut files = Vec::new();
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        let name = e.file_name().to_string_lossy().into_owned();
        if name.ends_with(".jsonl") {
            let data = std::fs::read(e.path())?;
            files.push((name, data.iter().filter(|b| **b == b'\n').count() as u64, data.len() as u64));
        }
    }
    // Closed segments sort by their timestamp and sequence; the active file (no sequence) goes last.
    files.sort_by_key(|(n, _, _)| (n.matches('.').count() < 2, n.clone()));
    let total = files.iter().map(|f| f.1).sum();
    Ok((files, total))
}
