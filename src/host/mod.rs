//! The host: runs what a command asks for, in this process or by handing it to a running daemon. The only
//! place that opens and closes pipelines (their state, their writers) and owns process-level concerns:
//! signals, the control socket, the daemon, the demo and the simulator server.
//!
//! A command's [`Request`] goes to the daemon when one owns the state directory (so sled keeps one owner and
//! records land in the same files), else it is run here against pipelines opened for it. Either way the
//! text comes from the command layer's renderers, so the output is the same.

mod auth;
pub mod control;
pub mod daemon;
mod demo;
mod metrics;
mod upload;

use std::io::IsTerminal;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::cli::{Command, Opts};
use crate::commands::{self, Report, Request};
use crate::config::{self, Config, ConfigError, Pipeline};
use crate::engine::outbound::{self, JobEvent, SendContext};
use crate::engine::sync::{sync_pipeline, Progress, RunOptions};
use crate::engine::{manage, OpenPipeline};
use crate::exit::Exit;
use crate::handoff::Handoff;
use crate::provider::Client;
use crate::sink::SinkConfig;
use crate::state::{StateError, Store, StoreOptions};

/// Runs the command the user asked for and returns how the process should exit.
pub async fn run(opts: Opts) -> anyhow::Result<Exit> {
    let path = opts.config.clone();
    let cfg = || config::load(&path);
    let req = match opts.command {
        Command::Check => return Ok(commands::check::report(&cfg()?).print()),
        Command::Run => return daemon::run(path.clone(), cfg()?).await,
        Command::Demo(args) => return demo::demo(args).await,
        Command::Simulate(args) => return demo::simulate(args).await,
        Command::Lookup(args) => return lookup(&cfg()?, args).await,
        Command::UploadMedia(args) => return upload_media(&cfg()?, args).await,
        // Files only, no lock: it may run beside the daemon, so it is never forwarded.
        Command::Verify(args) if args.remote => return Ok(upload::verify(&cfg()?, &args.pipelines).await?.print()),
        Command::Verify(args) => return Ok(commands::verify::report(&cfg()?, &args.pipelines)?.print()),
        // Takes the state lock itself (exit 3 while the daemon runs), so it is never forwarded.
        Command::State(cmd) => return commands::state::run(&cfg()?, cmd),
        // Takes the state's lock like a one-shot sync: beside a running daemon it reports the owner.
        Command::Upload(args) => return Ok(upload::command(&cfg()?, &args.pipelines).await?.print()),
        Command::Schema => return Ok(Report { stdout: crate::schema::text(), ..Report::default() }.print()),
        Command::Auth(args) => return auth::run(&cfg()?, commands::auth::prepare(&args)?).await,
        Command::Completions(args) => return Ok(commands::docs::completions(args.shell).print()),
        Command::Man => return Ok(commands::docs::man().print()),
        Command::Sync(args) => commands::sync::sync_request(args),
        Command::Backfill(args) => commands::sync::backfill_request(args),
        Command::Status(_) => Request::Status { json: opts.json },
        Command::Send(args) => Request::Send { request: commands::send::prepare(&args)? },
        Command::Delete(args) => Request::Manage { request: commands::manage::prepare_delete(&cfg()?, args)? },
        Command::GroupSend(args) => Request::Manage { request: commands::manage::prepare_group_send(&cfg()?, args)? },
    };
    let cfg = cfg()?;
    let forwarded = match control::call::<Request, Report>(&cfg.state_dir, &req).await {
        Ok(f) => f,
        // The state directory is someone else's: say that, not a socket error.
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
            return Err(StateError::Denied {
                dir: cfg.state_dir.clone(),
                op: "connecting to the daemon's control socket",
            }
            .into())
        }
        Err(e) => {
            return Err(anyhow::Error::new(e)
                .context(format!("talking to the daemon on {}", control::socket_path(&cfg.state_dir).display())))
        }
    };
    if let Some(report) = forwarded {
        tracing::debug!("handled by the running daemon");
        return Ok(report.print());
    }
    local(&cfg, req).await
}

/// Maps an error that reached `main` to its exit code: a config problem (or a state directory that is a
/// file) is 2, another process holding the state directory or a pipeline's output 3, anything else 1.
pub fn exit_for(e: &anyhow::Error) -> Exit {
    for cause in e.chain() {
        if cause.downcast_ref::<ConfigError>().is_some() {
            return Exit::Config;
        }
        match cause.downcast_ref::<StateError>() {
            Some(StateError::Locked { .. }) => return Exit::Locked,
            Some(StateError::NotADirectory { .. }) => return Exit::Config,
            _ => {}
        }
        if let Some(crate::handoff::OpenError::Locked(_)) = cause.downcast_ref::<crate::handoff::OpenError>() {
            return Exit::Locked;
        }
    }
    Exit::Failed
}

/// A failure as the one `error:` line a command prints, with its exit code.
pub fn failure(e: &anyhow::Error) -> Report {
    Report::error(exit_for(e), format!("{e:#}"))
}

/// Runs a request in this process: opens what it needs, runs it, closes.
async fn local(cfg: &Config, req: Request) -> anyhow::Result<Exit> {
    if let Some(options) = commands::sync::options(&req) {
        let (names, opts) = options?;
        return Ok(run_once(cfg, names, opts).await?.print());
    }
    match req {
        Request::Status { json } => {
            let store = Store::open(&cfg.state_dir, StoreOptions::of(cfg))?;
            Ok(commands::status::report(cfg, &store, json)?.print())
        }
        Request::Send { request } => {
            let p = cfg.pipeline(request.pipeline.as_deref())?;
            let opened = Opened::open(cfg, &[p])?;
            let cancel = CancellationToken::new();
            stop_on_signal(
                cancel.clone(),
                "stopping after the request in flight (an unfinished job resumes with the same key next time)",
            );
            let ctx = SendContext::new(cancel);
            // A batch prints each job's line as it ends, so a long one shows progress.
            let report = send(&opened.pipes[0], &request, &ctx, |line| {
                print!("{line}");
                use std::io::Write as _;
                let _ = std::io::stdout().flush();
            })
            .await;
            opened.close().await;
            Ok(report.print())
        }
        Request::Manage { request } => {
            let p = commands::manage::x_pipeline(cfg, Some(request.pipeline()), "this command")?;
            let opened = Opened::open(cfg, &[p])?;
            let cancel = CancellationToken::new();
            stop_on_signal(cancel.clone(), "stopping after the request in flight");
            let outcome = manage::execute(&opened.pipes[0], &request, &SendContext::new(cancel)).await;
            opened.close().await;
            Ok(commands::manage::report(&request, outcome).print())
        }
        Request::Sync { .. } | Request::Backfill { .. } => unreachable!("handled above"),
    }
}

/// Runs a send request with an open pipeline; each batch job's line goes to `line` as it ends, and the
/// returned report holds the rest (a single job's line, the summary, errors).
pub(crate) async fn send(
    pipe: &OpenPipeline,
    req: &outbound::SendRequest,
    ctx: &SendContext,
    mut line: impl FnMut(&str),
) -> Report {
    let mut single = None;
    let batch = outbound::send_batch(pipe, req, ctx, |n, event| {
        if req.batch {
            line(&commands::send::job_line(n, &event));
        } else if let JobEvent::Done(result) = event {
            single = Some(result.clone());
        }
    })
    .await;
    commands::send::finish(req, single.as_ref(), &batch)
}

/// Pipelines opened for one command: the state (holding its lock) and each pipeline's client and writer.
pub(crate) struct Opened {
    pub(crate) pipes: Vec<Arc<OpenPipeline>>,
}

impl Opened {
    /// Reads every secret first, so a missing key is one clear error and leaves no state directory
    /// behind; then opens the state and each writer (which recovers its files).
    pub(crate) fn open(cfg: &Config, pipelines: &[&Pipeline]) -> anyhow::Result<Opened> {
        let clients = pipelines.iter().map(|p| Client::new(p)).collect::<Result<Vec<_>, _>>()?;
        let store = Arc::new(Store::open(&cfg.state_dir, StoreOptions::of(cfg))?);
        let pipes = pipelines
            .iter()
            .zip(clients)
            .map(|(p, client)| open_pipeline(&store, p, client, cfg.max_concurrency))
            .collect::<anyhow::Result<_>>()?;
        Ok(Opened { pipes })
    }

    /// Closes every writer (joining its thread and fsyncing its active file).
    pub(crate) async fn close(self) {
        for pipe in self.pipes {
            pipe.handoff.close().await;
        }
    }
}

/// Opens one pipeline's writer (recovering its files) around a client and an open store.
pub(crate) fn open_pipeline(
    store: &Arc<Store>,
    p: &Pipeline,
    client: Client,
    max_concurrency: usize,
) -> anyhow::Result<Arc<OpenPipeline>> {
    let (handoff, _recovery) = Handoff::open(store.clone(), &p.name, sink_config(p))
        .map_err(|e| anyhow::Error::new(e).context(format!("pipeline `{}`", p.name)))?;
    Ok(Arc::new(OpenPipeline::new(p.clone(), client, handoff, store.clone(), max_concurrency)))
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
                crate::handoff::exit_now(Exit::Interrupted.code());
            }
        }
    });
}

/// A sync or backfill in this process: every selected pipeline at once, within `max_concurrency`.
async fn run_once(cfg: &Config, names: &[String], mut opts: RunOptions) -> anyhow::Result<Report> {
    let pipelines = cfg.select(names)?;
    commands::sync::check_conversations(&pipelines, &opts.only)?;
    let opened = Opened::open(cfg, &pipelines)?;
    let cancel = CancellationToken::new();
    stop_on_signal(cancel.clone(), "stopping at the next page boundary");
    // A backfill shows a progress line on a terminal; logs and pipes get the summary alone.
    let bar = (!opts.head && std::io::stderr().is_terminal()).then(|| {
        let progress = Arc::new(Progress::default());
        opts.progress = Some(progress.clone());
        progress_bar(progress)
    });
    let global = Arc::new(Semaphore::new(cfg.max_concurrency));
    // Segments that close during the run go up while it goes on; the drain after the run does the rest.
    let uploading: Vec<Pipeline> = pipelines.iter().filter(|p| p.upload.is_some()).map(|p| (*p).clone()).collect();
    let uploader_stop = CancellationToken::new();
    let uploader = match opened.pipes.first() {
        Some(pipe) if !uploading.is_empty() => Some(tokio::spawn(upload::worker(
            pipe.store.clone(),
            move || uploading.clone(),
            Arc::new(tokio::sync::Notify::new()),
            uploader_stop.clone(),
            upload::UPLOAD_DURING_SYNC,
        ))),
        _ => None,
    };
    let mut set = JoinSet::new();
    for pipe in &opened.pipes {
        set.spawn(sync_pipeline(pipe.clone(), opts.clone(), global.clone(), cancel.clone()));
    }
    let mut reports = Vec::new();
    let mut joined = Ok(());
    while let Some(r) = set.join_next().await {
        match r {
            Ok(r) => reports.push(r),
            Err(e) => joined = Err(e),
        }
    }
    if let Some((bar, ticker)) = bar {
        ticker.abort();
        let _ = ticker.await;
        bar.finish_and_clear();
    }
    // A pass in flight is dropped: puts are create-only and recorded after the bucket confirmed them.
    uploader_stop.cancel();
    if let Some(u) = uploader {
        let _ = u.await;
    }
    let store = opened.pipes.first().map(|p| p.store.clone());
    // Closing joins each writer's finisher, so every closed segment has its manifest before the upload.
    opened.close().await;
    joined.context("a pipeline task failed")?;
    let report = commands::sync::report(reports, cancel.is_cancelled());
    let uploading: Vec<&Pipeline> = pipelines.iter().copied().filter(|p| p.upload.is_some()).collect();
    match store {
        // A signal asked to stop: the backlog stays for the next run instead of holding the exit up.
        Some(store) if !uploading.is_empty() && !cancel.is_cancelled() => {
            Ok(upload::merge(report, upload::drain(&store, &uploading).await))
        }
        _ => Ok(report),
    }
}

/// A spinner with the run's pages and records, redrawn every 120 ms until the ticker is aborted.
fn progress_bar(progress: Arc<Progress>) -> (indicatif::ProgressBar, tokio::task::JoinHandle<()>) {
    let bar = indicatif::ProgressBar::new_spinner();
    bar.set_style(
        indicatif::ProgressStyle::with_template("{spinner} backfill: {msg} [{elapsed}]")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
    );
    let ticker = {
        let bar = bar.clone();
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
    (bar, ticker)
}

/// `lookup`: a user by ID or @username. Reads no state, so it works beside a running daemon.
async fn lookup(cfg: &Config, args: crate::cli::LookupArgs) -> anyhow::Result<Exit> {
    let p = cfg.pipeline(args.pipeline.as_deref())?;
    let who = args.user.trim();
    let name = match outbound::job::parse_recipient(who) {
        Ok(outbound::job::Recipient::Id(id)) => id,
        Ok(outbound::job::Recipient::Username(u)) => u,
        Err(e) => return Err(ConfigError(e.detail).into()),
    };
    let client = Client::new(p)?;
    Ok(commands::send::lookup_report(who, outbound::lookup(&client, p, &name).await, commands::json_output()).print())
}

/// `upload-media`: checks, uploads and prints the media ID. Reads no state.
async fn upload_media(cfg: &Config, args: crate::cli::UploadMediaArgs) -> anyhow::Result<Exit> {
    let p = cfg.pipeline(args.pipeline.as_deref())?;
    let cwd = std::env::current_dir()?;
    let src = outbound::MediaSource::parse(&args.source, &cwd).map_err(ConfigError)?;
    let client = Client::new(p)?;
    let cancel = CancellationToken::new();
    stop_on_signal(
        cancel.clone(),
        "stopping after the request in flight (an unfinished job resumes with the same key next time)",
    );
    let ctx = SendContext::new(cancel);
    let result = outbound::upload(&client, p, &src, args.idempotency_key.as_deref(), &ctx).await;
    Ok(commands::send::upload_report(result).print())
}
