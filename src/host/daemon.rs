//! The daemon (`run`): schedules, single-flight runs, the control socket, reload, systemd, shutdown.
//!
//! Each pipeline is a `Slot`: its runtime, a cron job, and a run lock. A tick takes the lock with
//! `try_lock` and skips (logging it) when the previous run is still going, so one pipeline never runs
//! twice at once; a control-socket request waits for the lock instead. A `backfill` through the socket
//! takes its own lock (`backfilling`), so the ticks keep running while it walks: the pipeline's
//! `engine::passes` keep a tick off the conversations the backfill holds (a tick leaves them for a later
//! one). Runs live in one `JoinSet` and stop on the daemon's `CancellationToken` at a page boundary.
//! A SIGHUP's reload runs in a task too: removing a pipeline waits for its run, never the main loop.
//!
//! systemd: `READY=1` once the state is open and every pipeline's output recovered; `STATUS=` after each
//! run; `WATCHDOG=1` every half `WATCHDOG_USEC` *only while runs make progress* (a request started or a
//! page committed within the watchdog interval, or nothing running); `STOPPING=1` on shutdown.
//!
//! Metrics (`metrics_listen`): the endpoint is bound before `READY=1` and served until shutdown
//! (`host::metrics`). The daemon tells it which pipelines' last run stopped on an account-level error
//! (`/healthz`) and refreshes the conversation gauges from the state at each scrape.
//!
//! Shutdown (SIGTERM/SIGINT): stop the scheduler, cancel runs, wait up to `shutdown_timeout`, abort what
//! is left, close every writer (fsync), flush sled, exit 0. A second signal exits at once through
//! [`crate::handoff::exit_now`], which never interrupts an append.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use sd_notify::NotifyState;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_cron_scheduler::{Job, JobScheduler};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::{control, failure, metrics, open_pipeline};
use crate::commands::{self, Report, Request};
use crate::config::{self, Config, Pipeline};
use crate::engine::outbound::SendContext;
use crate::engine::poll::PollPlan;
use crate::engine::sync::{sync_pipeline, PipelineReport, RunOptions};
use crate::engine::OpenPipeline;
use crate::engine::{health, manage};
use crate::exit::Exit;
use crate::provider::Client;
use crate::state::{Store, StoreOptions};
use crate::time::unix_ms;

/// One pipeline as the daemon holds it.
struct Slot {
    pipe: Arc<OpenPipeline>,
    /// Held for the length of a run: the single-flight guarantee.
    running: Arc<tokio::sync::Mutex<()>>,
    /// Held for the length of a `backfill` asked for through the socket. A backfill does not hold
    /// `running`, so the ticks go on while it walks; the pipeline's `passes` keep the two off each
    /// other's conversations.
    backfilling: Arc<tokio::sync::Mutex<()>>,
    /// The scheduler's job, to remove it on reload.
    job: Uuid,
    /// One line about the last run, for `STATUS=` and `status`.
    last: Mutex<Option<String>>,
    /// Adaptive polling: which conversations a scheduled run skips because they have been quiet.
    plan: Mutex<PollPlan>,
    /// When the previous tick fired: the length of a tick, for the plan.
    last_tick: Mutex<Option<Instant>>,
    /// [`crate::provider::secrets_digest`] of the secrets the client was built with: a reload that reads different
    /// ones restarts the pipeline even when its config is unchanged (key rotation).
    secrets: Option<u64>,
    /// The last run stopped on an account-level provider error: `/healthz` answers 503 until a run does not.
    account_error: std::sync::atomic::AtomicBool,
}

/// The running daemon's shared parts.
struct Daemon {
    config_path: PathBuf,
    config: Mutex<Config>,
    store: Arc<Store>,
    /// Bounds conversations across all pipelines.
    global: Arc<Semaphore>,
    slots: Mutex<BTreeMap<String, Arc<Slot>>>,
    runs: Mutex<JoinSet<()>>,
    sched: JobScheduler,
    /// Cancelled on shutdown: runs stop at a page boundary, requests are refused.
    cancel: CancellationToken,
    /// Unix ms of the last sign of progress; see the module doc.
    heartbeat: Arc<AtomicU64>,
    in_flight: AtomicUsize,
    /// Shared by every forwarded `send`, so the per-account write limit holds across requests.
    send_ctx: SendContext,
    /// Held by the reload in progress (each SIGHUP's reload runs in a task).
    reloading: tokio::sync::Mutex<()>,
    /// Wakes the upload worker (`upload_url`) when a run ends, as segments may have closed.
    upload_wake: Arc<tokio::sync::Notify>,
}

/// Runs the daemon until SIGTERM/SIGINT. Returns the exit code of a clean stop.
pub async fn run(config_path: PathBuf, cfg: Config) -> anyhow::Result<Exit> {
    // Read every secret before touching state, so a missing key is one clear error and nothing else.
    let clients = cfg.pipelines.iter().map(Client::new).collect::<Result<Vec<_>, _>>()?;
    let store = Arc::new(Store::open(&cfg.state_dir, StoreOptions::of(&cfg))?);
    let sched = JobScheduler::new().await.context("starting the scheduler")?;
    let listener = control::bind(&cfg.state_dir)
        .with_context(|| format!("creating the control socket in {}", cfg.state_dir.display()))?;
    let metrics_listener = match cfg.metrics_listen {
        Some(addr) => Some(metrics::bind(addr).await?),
        None => None,
    };
    let cancel = CancellationToken::new();
    let daemon = Arc::new(Daemon {
        config_path,
        global: Arc::new(Semaphore::new(cfg.max_concurrency)),
        config: Mutex::new(cfg.clone()),
        store,
        slots: Mutex::new(BTreeMap::new()),
        runs: Mutex::new(JoinSet::new()),
        sched,
        heartbeat: Arc::new(AtomicU64::new(unix_ms(SystemTime::now()))),
        in_flight: AtomicUsize::new(0),
        send_ctx: SendContext::new(cancel.clone()),
        cancel,
        reloading: tokio::sync::Mutex::new(()),
        upload_wake: Arc::new(tokio::sync::Notify::new()),
    });
    for (p, client) in cfg.pipelines.iter().zip(clients) {
        daemon.add_pipeline(p, client).await?;
    }
    if let Some(l) = metrics_listener {
        let addr = l.local_addr().map(|a| a.to_string()).unwrap_or_default();
        let (source, stop) = (daemon.clone() as Arc<dyn metrics::Source>, daemon.cancel.clone());
        daemon.spawn(metrics::serve(l, source, stop));
        tracing::info!(listen = %addr, "serving /metrics and /healthz");
    }
    {
        let weak = Arc::downgrade(&daemon);
        let pipelines = move || {
            weak.upgrade()
                .map(|d| d.config.lock().unwrap_or_else(|e| e.into_inner()).pipelines.clone())
                .unwrap_or_default()
        };
        let worker = super::upload::worker(
            daemon.store.clone(),
            pipelines,
            daemon.upload_wake.clone(),
            daemon.cancel.clone(),
            super::upload::UPLOAD_EVERY,
        );
        daemon.spawn(worker);
    }
    daemon.sched.start().await.context("starting the scheduler")?;
    let names: Vec<String> = cfg.pipelines.iter().map(|p| p.name.clone()).collect();
    tracing::info!(pipelines = ?names, state_dir = %cfg.state_dir.display(), "daemon ready");
    notify(&[NotifyState::Ready, NotifyState::Status(&format!("ready: {} pipelines", names.len()))]);

    let result = daemon.clone().serve(listener).await;
    daemon.shutdown(cfg.shutdown_timeout).await;
    let _ = std::fs::remove_file(control::socket_path(&cfg.state_dir));
    result.map(|()| Exit::Ok)
}

fn notify(states: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::warn!(error = %e, "cannot notify systemd");
    }
}

impl Daemon {
    /// The main loop: signals, control connections and the watchdog, until a stop signal.
    async fn serve(self: Arc<Self>, listener: tokio::net::UnixListener) -> anyhow::Result<()> {
        let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
        let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
        let mut hup = signal(SignalKind::hangup()).context("installing the SIGHUP handler")?;
        let watchdog = sd_notify::watchdog_enabled();
        // Half the interval, as systemd recommends; a daemon without a watchdog still wakes up rarely.
        let mut tick = tokio::time::interval(watchdog.map(|w| w / 2).unwrap_or(Duration::from_secs(3600)));
        // Bounds the control connections served at once (see control::MAX_CONNECTIONS); `full` rate-limits
        // the warning a flood would otherwise print per connection.
        let permits = Arc::new(Semaphore::new(control::MAX_CONNECTIONS));
        let mut full: Option<Instant> = None;
        loop {
            tokio::select! {
                _ = term.recv() => break,
                _ = int.recv() => break,
                // In a task: removing a pipeline waits for its run to end, which must not stop this loop
                // (the control socket, signals and the watchdog) for the length of a run.
                _ = hup.recv() => {
                    let d = self.clone();
                    self.spawn(async move { d.reload().await });
                }
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => match permits.clone().try_acquire_owned() {
                        Ok(permit) => {
                            let d = self.clone();
                            self.spawn(async move {
                                d.handle(stream).await;
                                drop(permit);
                            });
                        }
                        Err(_) => {
                            drop(stream);
                            if full.is_none_or(|at| at.elapsed() > Duration::from_secs(60)) {
                                full = Some(Instant::now());
                                tracing::warn!(limit = control::MAX_CONNECTIONS, "too many open control connections; closing new ones until some end");
                            }
                        }
                    },
                    Err(e) => tracing::warn!(error = %e, "control socket accept failed"),
                },
                _ = tick.tick() => {
                    if let Some(w) = watchdog {
                        if self.healthy(w) {
                            notify(&[NotifyState::Watchdog]);
                        } else {
                            tracing::error!(watchdog_ms = w.as_millis() as u64, "no progress within the watchdog interval; withholding WATCHDOG=1");
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// Progress means: nothing is running, or a running pass did something within the interval.
    fn healthy(&self, watchdog: Duration) -> bool {
        let idle = self.in_flight.load(Ordering::SeqCst) == 0;
        let since = unix_ms(SystemTime::now()).saturating_sub(self.heartbeat.load(Ordering::Relaxed));
        idle || since < watchdog.as_millis() as u64
    }

    fn spawn(&self, fut: impl std::future::Future<Output = ()> + Send + 'static) {
        // A poisoned lock only means a task panicked while reaping; the set itself is still sound, and
        // dropping the run instead would silently skip work.
        let mut runs = self.runs.lock().unwrap_or_else(|p| p.into_inner());
        // Reap finished tasks so the set does not grow over months of uptime.
        while runs.try_join_next().is_some() {}
        runs.spawn(fut);
    }

    /// Builds a pipeline's slot and schedules it.
    async fn add_pipeline(self: &Arc<Self>, p: &Pipeline, client: Client) -> anyhow::Result<()> {
        // Read right after the client: a rotation in between is caught by the next reload.
        let secrets = crate::provider::secrets_digest(p).ok();
        let max_concurrency = self.config.lock().unwrap_or_else(|e| e.into_inner()).max_concurrency;
        let pipe = open_pipeline(&self.store, p, client, max_concurrency)?;
        let name = p.name.clone();
        let weak = Arc::downgrade(self);
        let job = Job::new_async(p.schedule.as_str(), move |_, _| {
            let (weak, name) = (weak.clone(), name.clone());
            Box::pin(async move {
                if let Some(d) = weak.upgrade() {
                    d.tick(&name);
                }
            })
        })
        .map_err(|e| anyhow::anyhow!("pipeline `{}`: schedule `{}`: {e:?}", p.name, p.schedule))?;
        let job = self.sched.add(job).await.map_err(|e| anyhow::anyhow!("pipeline `{}`: scheduling: {e:?}", p.name))?;
        let slot = Arc::new(Slot {
            pipe,
            running: Arc::new(tokio::sync::Mutex::new(())),
            backfilling: Arc::new(tokio::sync::Mutex::new(())),
            job,
            last: Mutex::new(None),
            plan: Mutex::new(PollPlan::new(p.adaptive_poll_max)),
            last_tick: Mutex::new(None),
            secrets,
            account_error: Default::default(),
        });
        if let Ok(mut slots) = self.slots.lock() {
            slots.insert(p.name.clone(), slot);
        }
        Ok(())
    }

    fn slot(&self, name: &str) -> Option<Arc<Slot>> {
        self.slots.lock().ok()?.get(name).cloned()
    }

    /// A schedule tick: start a run unless the previous one is still going.
    fn tick(self: &Arc<Self>, name: &str) {
        if self.cancel.is_cancelled() {
            return;
        }
        let Some(slot) = self.slot(name) else { return };
        let Ok(guard) = slot.running.clone().try_lock_owned() else {
            tracing::warn!(pipeline = %name, "previous run still going; skipping this tick");
            return;
        };
        let now = Instant::now();
        let tick = slot.last_tick.lock().ok().and_then(|mut t| t.replace(now)).map(|t| now - t).unwrap_or_default();
        let all: Vec<String> = slot.pipe.config.conversations.iter().map(|c| c.to_string()).collect();
        let quiet: Vec<String> = slot.plan.lock().map(|plan| plan.quiet(now, tick)).unwrap_or_default();
        // `quiet` is sorted.
        let due = all.iter().filter(|c| quiet.binary_search(c).is_err()).count();
        // An inbox pipeline runs every tick: its inbox and the conversations it found are polled (or left out
        // as quiet) inside the run.
        if due == 0 && !slot.pipe.config.inbox {
            tracing::debug!(pipeline = %name, "every conversation is quiet; nothing due this tick");
            return;
        }
        tracing::debug!(pipeline = %name, due, of = all.len(), quiet = quiet.len(), "tick");
        let d = self.clone();
        self.spawn(async move {
            // A conversation a backfill holds is left for a later tick rather than waited for.
            let opts = RunOptions { quiet, skip_busy: true, ..RunOptions::sync(Vec::new()) };
            let report = d.run_slot(&slot, opts).await;
            if let Ok(mut plan) = slot.plan.lock() {
                for c in &report.conversations {
                    match (&c.error, &c.budget) {
                        (None, None) if !c.busy => plan.record(&c.configured, now, tick, c.written),
                        // A failed or budget-stopped poll proves nothing about quietness: try again next tick.
                        _ => plan.reset(&c.configured),
                    }
                }
            }
            drop(guard);
        });
    }

    /// One run of a pipeline; the caller holds its run lock.
    async fn run_slot(&self, slot: &Slot, mut opts: RunOptions) -> PipelineReport {
        opts.heartbeat = Some(self.heartbeat.clone());
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        self.heartbeat.store(unix_ms(SystemTime::now()), Ordering::Relaxed);
        let report = sync_pipeline(slot.pipe.clone(), opts, self.global.clone(), self.cancel.clone()).await;
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
        // Lets the active file close by age even when a run wrote nothing.
        if let Err(e) = slot.pipe.handoff.tick().await {
            tracing::error!(pipeline = %report.pipeline, error = %e, "age rotation failed");
        }
        tracing::info!(pipeline = %report.pipeline, conversations = report.conversations.len(), records = report.written(), failed = report.failed(), credits = report.credits(), "run finished");
        slot.account_error.store(report.fatal.is_some(), Ordering::Relaxed);
        if let Ok(mut last) = slot.last.lock() {
            *last = Some(report.summary());
        }
        notify(&[NotifyState::Status(&self.status_line())]);
        self.upload_wake.notify_one();
        report
    }

    /// `STATUS=`: the last run of every pipeline on one line.
    fn status_line(&self) -> String {
        let Ok(slots) = self.slots.lock() else { return String::new() };
        let parts: Vec<String> = slots.values().filter_map(|s| s.last.lock().ok().and_then(|l| l.clone())).collect();
        if parts.is_empty() {
            format!("ready: {} pipelines", slots.len())
        } else {
            parts.join("; ")
        }
    }

    /// Answers one control connection.
    async fn handle(self: Arc<Self>, mut stream: tokio::net::UnixStream) {
        let resp = match control::read_request::<Request>(&mut stream, &self.cancel).await {
            Ok(req) => self.answer(req).await,
            Err(e) => Report::error(Exit::Config, e),
        };
        if let Err(e) = control::write_response(&mut stream, &resp).await {
            tracing::warn!(error = %e, "could not answer a control request");
        }
    }

    async fn answer(&self, req: Request) -> Report {
        if self.cancel.is_cancelled() {
            return Report::error(Exit::Failed, "the daemon is stopping; try again once it has restarted");
        }
        let cfg = self.config.lock().unwrap_or_else(|p| p.into_inner()).clone();
        if let Some(options) = commands::sync::options(&req) {
            return match options {
                Ok((names, opts)) => self.run_now(&cfg, names, opts).await.unwrap_or_else(|e| failure(&e)),
                Err(e) => failure(&e.into()),
            };
        }
        match req {
            Request::Status { json } => {
                commands::status::report(&cfg, &self.store, json).unwrap_or_else(|e| failure(&e))
            }
            Request::Manage { request } => match self.slot(request.pipeline()) {
                Some(slot) => {
                    commands::manage::report(&request, manage::execute(&slot.pipe, &request, &self.send_ctx).await)
                }
                None => failure(&anyhow::anyhow!("pipeline `{}` is not running in the daemon", request.pipeline())),
            },
            Request::Send { request } => {
                let slot = cfg.pipeline(request.pipeline.as_deref()).map_err(anyhow::Error::from).and_then(|p| {
                    self.slot(&p.name).ok_or_else(|| anyhow::anyhow!("pipeline `{}` is not running", p.name))
                });
                match slot {
                    Ok(slot) => {
                        // The caller prints everything at the end: batch lines go before the summary.
                        let mut lines = String::new();
                        let mut report = super::send(&slot.pipe, &request, &self.send_ctx, |l| lines.push_str(l)).await;
                        report.stdout.insert_str(0, &lines);
                        report
                    }
                    Err(e) => failure(&e),
                }
            }
            Request::Sync { .. } | Request::Backfill { .. } => unreachable!("handled above"),
        }
    }

    /// A run asked for through the socket: waits for any run in progress, then runs the pipelines.
    async fn run_now(&self, cfg: &Config, names: &[String], opts: RunOptions) -> anyhow::Result<Report> {
        let selected = cfg.select(names)?;
        commands::sync::check_conversations(&selected, &opts.only)?;
        let mut reports = Vec::new();
        for p in selected {
            let Some(slot) = self.slot(&p.name) else { continue };
            // A backfill only excludes other backfills: the ticks keep running beside it.
            let lock = if opts.head { &slot.running } else { &slot.backfilling };
            let _guard = lock.lock().await;
            reports.push(self.run_slot(&slot, opts.clone()).await);
        }
        Ok(commands::sync::report(reports, self.cancel.is_cancelled()))
    }

    /// SIGHUP: a valid new config replaces the old one; pipelines that changed are restarted. Reloads run
    /// one at a time, in the order of their signals.
    async fn reload(self: Arc<Self>) {
        let _one_at_a_time = self.reloading.lock().await;
        let new = match config::load(&self.config_path) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, "reload rejected; the running config stays");
                return;
            }
        };
        let old = match self.config.lock() {
            Ok(c) => c.clone(),
            Err(_) => return,
        };
        if new.state_dir != old.state_dir {
            tracing::error!("reload rejected: state_dir cannot change while running; restart the daemon");
            return;
        }
        // The store and the global limit are opened once; say so rather than ignore a change silently.
        for (key, differs) in [
            ("state_cache_bytes", new.state_cache_bytes != old.state_cache_bytes),
            ("seen_window", new.seen_window != old.seen_window),
            ("max_concurrency", new.max_concurrency != old.max_concurrency),
            ("metrics_listen", new.metrics_listen != old.metrics_listen),
        ] {
            if differs {
                tracing::warn!(key, "this key changed; it takes effect when the daemon restarts");
            }
        }
        // Pipelines to (re)start: new or changed config, or unchanged config whose secrets now read
        // differently (a rotated key file or variable). An unchanged pipeline whose secret cannot be read
        // keeps running with the key it has.
        let mut changed: Vec<&Pipeline> = Vec::new();
        for p in &new.pipelines {
            if old.pipelines.iter().find(|o| o.name == p.name) != Some(p) {
                changed.push(p);
                continue;
            }
            let running = self.slot(&p.name).and_then(|s| s.secrets);
            match crate::provider::secrets_digest(p) {
                Ok(now) if Some(now) != running => {
                    tracing::info!(pipeline = %p.name, "its key changed; restarting the pipeline with the new one");
                    changed.push(p);
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(pipeline = %p.name, error = %e, "key not re-read; the pipeline keeps its current one")
                }
            }
        }
        // Secrets of new and changed pipelines first, so a missing key rejects the reload as a whole.
        let clients = match changed.iter().map(|p| Client::new(p)).collect::<Result<Vec<_>, _>>() {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, "reload rejected; the running config stays");
                return;
            }
        };
        let gone: Vec<String> = old
            .pipelines
            .iter()
            .filter(|o| !new.pipelines.iter().any(|p| p.name == o.name) || changed.iter().any(|p| p.name == o.name))
            .map(|o| o.name.clone())
            .collect();
        for name in &gone {
            self.remove_pipeline(name).await;
        }
        for (p, client) in changed.into_iter().zip(clients) {
            if self.cancel.is_cancelled() {
                // Stopping while this reload waited for a run: nothing new is started.
                return;
            }
            if let Err(e) = self.add_pipeline(p, client).await {
                tracing::error!(pipeline = %p.name, error = %e, "could not start the pipeline after reload");
            }
        }
        if let Ok(mut c) = self.config.lock() {
            *c = new;
        }
        tracing::info!(restarted_or_removed = gone.len(), "config reloaded");
        notify(&[NotifyState::Status(&self.status_line())]);
    }

    /// Unschedules a pipeline, waits for its run to end, and closes its writer.
    async fn remove_pipeline(&self, name: &str) {
        let slot = self.slots.lock().ok().and_then(|mut s| s.remove(name));
        let Some(slot) = slot else { return };
        if let Err(e) = self.sched.remove(&slot.job).await {
            tracing::warn!(pipeline = %name, error = ?e, "unscheduling");
        }
        let (running, backfilling) = (slot.running.clone(), slot.backfilling.clone());
        let guards = (running.lock().await, backfilling.lock().await);
        close_slot(slot).await;
        drop(guards);
        // Its gauges go with it (a restarted one gets them back from the state): a pipeline that is no
        // longer run must not look stale or failing to the alert rules.
        crate::metrics::global().forget_pipeline(name);
        tracing::info!(pipeline = %name, "pipeline stopped");
    }

    async fn shutdown(&self, bound: Duration) {
        notify(&[NotifyState::Stopping]);
        tracing::info!(bound_ms = bound.as_millis() as u64, "stopping: finishing at page boundaries");
        // A second signal means: now. exit_now waits for an append in progress, so no line is torn.
        tokio::spawn(async {
            let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
                return;
            };
            tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
            crate::handoff::exit_now(Exit::Interrupted.code());
        });
        self.cancel.cancel();
        let mut sched = self.sched.clone();
        if let Err(e) = sched.shutdown().await {
            tracing::warn!(error = ?e, "stopping the scheduler");
        }
        let mut runs = self.runs.lock().map(|mut r| std::mem::take(&mut *r)).unwrap_or_default();
        let drained = tokio::time::timeout(bound, async { while runs.join_next().await.is_some() {} }).await;
        if drained.is_err() {
            tracing::warn!("runs did not stop within shutdown_timeout; aborting them (committed data is safe)");
            runs.abort_all();
            while runs.join_next().await.is_some() {}
        }
        let slots = self.slots.lock().map(|mut s| std::mem::take(&mut *s)).unwrap_or_default();
        for slot in slots.into_values() {
            close_slot(slot).await;
        }
        if let Err(e) = self.store.flush() {
            tracing::error!(error = %e, "flushing state");
        }
        tracing::info!("stopped");
    }
}

/// Closes a pipeline's writer (joining its thread, fsyncing the active file). Callers hold its run lock or
/// have drained every run, so nothing writes after this; a task that still holds the pipeline gets "the
/// pipeline writer has stopped" instead of leaving the writer unjoined.
async fn close_slot(slot: Arc<Slot>) {
    slot.pipe.handoff.close().await;
}

impl metrics::Source for Daemon {
    fn refresh(&self) {
        let slots: Vec<Arc<Slot>> = match self.slots.lock() {
            Ok(s) => s.values().cloned().collect(),
            Err(_) => return,
        };
        for slot in slots {
            let p = &slot.pipe.config;
            match health::count(p, &self.store) {
                Ok(counts) => {
                    // Only for a slot still running, checked under the lock a removal takes first: a pipeline
                    // removed meanwhile has its gauges dropped after that, and must not get them back here.
                    let Ok(current) = self.slots.lock() else { return };
                    if current.get(&p.name).is_some_and(|s| Arc::ptr_eq(s, &slot)) {
                        crate::metrics::global().set_conversations(&p.name, counts);
                    }
                }
                Err(e) => {
                    tracing::warn!(pipeline = %p.name, error = %e, "cannot read the conversations' state for the metrics")
                }
            }
        }
    }

    fn unhealthy(&self) -> Option<String> {
        if self.cancel.is_cancelled() {
            return Some("stopping".into());
        }
        let slots = self.slots.lock().ok()?;
        let failed: Vec<&str> =
            slots.iter().filter(|(_, s)| s.account_error.load(Ordering::Relaxed)).map(|(n, _)| n.as_str()).collect();
        (!failed.is_empty()).then(|| {
            format!(
                "the last run of pipeline {} stopped on an account-level provider error (key, billing or account); see the log",
                failed.join(", ")
            )
        })
    }
}
