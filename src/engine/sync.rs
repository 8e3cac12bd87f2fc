//! One sync pass: per conversation, fetch a page, write its new records, fsync, commit; repeat.
//!
//! A conversation has two frontiers (see [`ConvState`]):
//! - the **head**: a pass from the newest page down to the committed high-water mark (`hwm`). Its cursor is
//!   committed after every page, so an interrupted pass resumes; `hwm` moves only when a pass completes,
//!   so new messages that arrive during a pass are never skipped (guarantee 3, no gaps).
//! - the **backfill**: older pages from a stored cursor until the provider says there are none.
//!
//! The very first page ever fetched sets up both: its newest ID becomes `hwm` and its `next_cursor`
//! becomes the backfill cursor. Until some message has been seen (`hwm` is None), a head pass runs to the
//! end of history, so an empty conversation that later fills up loses nothing.
//!
//! Every item is checked against the pipeline's seen set before it is written, so overlapping and
//! shifting pages, retries and restarts never write a record twice (guarantee 1). Conversations run
//! concurrently within a pipeline limit and a global limit; one failing does not stop the others, except
//! that a [`ErrorClass::Fatal`] failure (bad key, billing) stops the rest of that pipeline's run.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::SystemTime;

use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

mod inbox;

pub use inbox::INBOX_NAME;

use super::cursor_loop::LoopGuard;
use super::pace::Answer;
use super::poll::{Budget, Spent};
use super::{OpenPipeline, UserError};
use crate::config::ConversationRef;
use crate::handoff::{Batch, Queued};
use crate::provider::{with_retry, ErrorClass, Page, ProviderError, PACING};
use crate::record::{
    id_cmp, item_kind, message_line, unparsed_record, Context, Conversation, Item, Kind, Line, Record,
};
use crate::state::{numeric_id, Commit, ConvState, Freshness, SeenPage};
use crate::time::{now_string, unix_ms};

/// A conversation's seen set is folded after every this many records it writes, and at the end of its run.
/// Until its first fold a conversation has no folded range, and every key it writes is an exact key; once
/// it has one, a backfill's pages go straight into the range (`Store::commit`). Measured on the 10^5 bench:
/// 24–32 cost least; every page (1) spends more on scans, 512 more on exact keys.
const FOLD_EVERY: u64 = 32;

/// What a run should do beyond fetching new messages.
#[derive(Clone, Debug, Default)]
pub struct RunOptions {
    /// Fetch new messages (the head pass). `backfill` alone turns this off.
    pub head: bool,
    /// Walk older history; None = the pipeline's `backfill` setting.
    pub backfill: Option<bool>,
    /// Backfill pages per conversation this run; None = the pipeline's setting.
    pub max_pages: Option<u64>,
    /// Stop backfill of a conversation once a page reaches messages older than this.
    pub since: Option<SystemTime>,
    /// Only these conversations (as configured, or as resolved IDs); empty = all. A run that names
    /// conversations leaves the inbox out.
    pub only: Vec<String>,
    /// Conversations (as configured, `conv:<id>` for discovered ones, [`INBOX_NAME`] for the inbox) that
    /// adaptive polling leaves out of this run; conversations not named here, new ones included, are polled.
    pub quiet: Vec<String>,
    /// Set to the current Unix ms before every request and after every commit: the daemon's watchdog
    /// pings systemd only while runs keep making progress.
    pub heartbeat: Option<Arc<AtomicU64>>,
    /// Live totals for a progress display: pages fetched and records written by this run so far.
    pub progress: Option<Arc<Progress>>,
    /// Leave out conversations another pass of this process holds (a backfill the daemon runs beside its
    /// ticks), instead of waiting for them: what a scheduled tick does ([`super::passes`]).
    pub skip_busy: bool,
}

impl RunOptions {
    /// What `sync` does: new messages, and backfill as each pipeline's own `backfill` setting says.
    pub fn sync(only: Vec<String>) -> RunOptions {
        RunOptions { head: true, backfill: None, only, ..Default::default() }
    }

    /// What `backfill` does: older history only, within the given limits.
    pub fn backfill(only: Vec<String>, since: Option<SystemTime>, max_pages: Option<u64>) -> RunOptions {
        RunOptions { head: false, backfill: Some(true), max_pages, since, only, ..Default::default() }
    }
}

/// Counters a progress bar reads while a run goes on.
#[derive(Debug, Default)]
pub struct Progress {
    pub pages: AtomicU64,
    pub records: AtomicU64,
}

/// How one conversation's run went.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct ConvReport {
    pub conversation: String,
    pub pages: u64,
    pub written: u64,
    /// Items the provider returned that were already in the files.
    pub duplicates: u64,
    pub credits: u64,
    pub backfill_done: bool,
    /// Why this run of the conversation stopped short, if it did. One line, no message text.
    pub error: Option<String>,
    /// Backfill stopped because of a page, credit or --since limit, not because history ended.
    pub limited: bool,
    /// The conversation as configured (`@name` stays `@name`; `conversation` is the resolved key).
    pub configured: String,
    /// Set when a credit budget stopped this conversation's run: the config key that did.
    pub budget: Option<String>,
    /// The run was stopped (a signal, or a fatal error of the pipeline) before this conversation finished:
    /// `error` says so, and a report says it once for all such conversations.
    #[serde(default)]
    pub cancelled: bool,
    /// Left out of this run because another pass (a backfill beside the ticks) holds the conversation.
    #[serde(default)]
    pub busy: bool,
}

/// How one pipeline's run went.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct PipelineReport {
    pub pipeline: String,
    pub conversations: Vec<ConvReport>,
    /// Set when the whole pipeline stopped (401/402 and the like).
    pub fatal: Option<String>,
}

impl PipelineReport {
    pub fn failed(&self) -> usize {
        self.conversations.iter().filter(|c| c.error.is_some()).count()
    }

    pub fn written(&self) -> u64 {
        self.conversations.iter().map(|c| c.written).sum()
    }

    pub fn credits(&self) -> u64 {
        self.conversations.iter().map(|c| c.credits).sum()
    }

    /// The run in one line (`support: 3 conversations, 12 new records, 0 failed, 40 credits`): the summary
    /// a command prints, the daemon's `STATUS=` and its status line all use this.
    pub fn summary(&self) -> String {
        format!(
            "{}: {} conversations, {} new records, {} failed, {} credits",
            self.pipeline,
            self.conversations.len(),
            self.written(),
            self.failed(),
            self.credits()
        )
    }
}

/// State shared by the conversations of one pipeline run.
struct RunShared {
    opts: RunOptions,
    credits: AtomicU64,
    /// Cancelled on shutdown or on a fatal provider error; conversations stop at a page boundary.
    stop: CancellationToken,
    fatal: std::sync::Mutex<Option<String>>,
    /// Waits for a spent rate-limit window ([`PACING`]) and their total length, for the run's one summary.
    paced: AtomicU64,
    paced_ms: AtomicU64,
    /// Pages asked for and not yet counted in `credits`, and the most credits one page has cost this run:
    /// what [`RunShared::admit`] counts as good as spent.
    pages_in_flight: AtomicU64,
    largest_page: AtomicU64,
    /// Woken whenever a page asked for is counted (or failed).
    page_settled: tokio::sync::Notify,
}

/// Past a credit budget, at most this many pages are in flight: the documented overshoot, whatever
/// `concurrency` is (under `"auto"` many more pages may be in flight while the budget is far).
pub const PAGES_PAST_BUDGET: u64 = 4;

/// A page admitted by [`RunShared::admit`]; counts as in flight until dropped, which must come after its
/// credits were added.
struct Admitted<'a>(&'a RunShared);

impl Drop for Admitted<'_> {
    fn drop(&mut self) {
        self.0.pages_in_flight.fetch_sub(1, Ordering::Relaxed);
        self.0.page_settled.notify_waiters();
    }
}

impl RunShared {
    fn new(opts: RunOptions, stop: CancellationToken) -> RunShared {
        RunShared {
            opts,
            credits: AtomicU64::new(0),
            stop,
            fatal: Default::default(),
            paced: AtomicU64::new(0),
            paced_ms: AtomicU64::new(0),
            pages_in_flight: AtomicU64::new(0),
            largest_page: AtomicU64::new(0),
            page_settled: tokio::sync::Notify::new(),
        }
    }

    /// Lets one more page be asked for within the credit budgets: never once one is spent, and while the
    /// pages in flight (each counted as costing as much as the largest page so far) would reach it, only
    /// while fewer than [`PAGES_PAST_BUDGET`] are in flight; otherwise it waits for one of them. So a budget
    /// is overshot by at most that many pages, however many `concurrency = "auto"` keeps in flight.
    async fn admit(&self, budget: &Budget, today: u64) -> Result<Admitted<'_>, Stop> {
        loop {
            // Registered before the check, so a page settling in between is not missed.
            let settled = self.page_settled.notified();
            let spent = self.credits.load(Ordering::Relaxed);
            budget.check(spent, today).map_err(Stop::Budget)?;
            let in_flight = self.pages_in_flight.load(Ordering::Relaxed);
            let page = self.largest_page.load(Ordering::Relaxed);
            let ahead = in_flight.saturating_mul(page);
            let unbounded = budget.per_run == 0 && budget.per_day == 0;
            // Before the first page the price of one is unknown: count as near the budget.
            let fits =
                unbounded || page > 0 && budget.check(spent.saturating_add(ahead), today.saturating_add(ahead)).is_ok();
            if fits || in_flight < PAGES_PAST_BUDGET {
                self.pages_in_flight.fetch_add(1, Ordering::Relaxed);
                return Ok(Admitted(self));
            }
            tokio::select! {
                _ = settled => {}
                _ = self.stop.cancelled() => return Err(Stop::Cancelled),
            }
        }
    }

    /// A page's credits are in: counted this run, and its size known for [`RunShared::admit`].
    fn page_cost(&self, credits: u64) {
        self.credits.fetch_add(credits, Ordering::Relaxed);
        self.largest_page.fetch_max(credits, Ordering::Relaxed);
    }

    /// Counts an attempt that waits for a spent rate-limit window.
    fn note_pacing<T>(&self, result: &Result<T, ProviderError>) {
        if let Err(e) = result {
            if e.code == PACING && e.status.is_none() {
                self.paced.fetch_add(1, Ordering::Relaxed);
                let ms = e.retry_after.map_or(0, |d| d.as_millis() as u64);
                self.paced_ms.fetch_add(ms, Ordering::Relaxed);
            }
        }
    }

    /// The run's one pacing line (each wait is logged at DEBUG only).
    fn log_pacing(&self, pipeline: &str) {
        let waits = self.paced.load(Ordering::Relaxed);
        if waits > 0 {
            let waited_s = self.paced_ms.load(Ordering::Relaxed) / 1000;
            tracing::info!(pipeline = %pipeline, waits, waited_s, "the provider's rate-limit windows paced this run: {waits} waits, about {waited_s} s in all");
        }
    }

    fn beat(&self) {
        if let Some(h) = &self.opts.heartbeat {
            h.store(unix_ms(SystemTime::now()), Ordering::Relaxed);
        }
    }

    /// A page is committed: the heartbeat, the progress line and the pass's report count it.
    fn page_committed(&self, report: &mut ConvReport, written: u64, credits: u64) {
        self.beat();
        if let Some(progress) = &self.opts.progress {
            progress.pages.fetch_add(1, Ordering::Relaxed);
            progress.records.fetch_add(written, Ordering::Relaxed);
        }
        report.pages += 1;
        report.written += written;
        report.credits += credits;
    }
}

/// Runs one pass over a pipeline's conversations. `global` bounds conversations across pipelines.
pub async fn sync_pipeline(
    pipe: Arc<OpenPipeline>,
    opts: RunOptions,
    global: Arc<Semaphore>,
    cancel: CancellationToken,
) -> PipelineReport {
    let started = std::time::Instant::now();
    let shared = Arc::new(RunShared::new(opts, cancel.child_token()));
    let local = Arc::new(Semaphore::new(pipe.conversations_at_once));
    let mut set = JoinSet::new();
    let mut reports = Vec::new();
    let collect = |res: Result<ConvReport, tokio::task::JoinError>, reports: &mut Vec<ConvReport>| match res {
        Ok(r) => reports.push(r),
        Err(e) => reports.push(ConvReport {
            conversation: "?".into(),
            error: Some(format!("internal error: {e}")),
            ..Default::default()
        }),
    };
    let mut conversations = pipe.config.conversations.clone();
    if pipe.config.inbox {
        // First and alone: it also updates the counters of conversations the passes below write. The stream
        // writes any conversation, so it holds the whole pipeline; a tick leaves it out while a backfill runs.
        let stream = pipe.client.inbox_route() == crate::provider::InboxRoute::Stream;
        let held = if stream { pipe.passes.stream(!shared.opts.skip_busy).await } else { None };
        if stream && held.is_none() {
            tracing::debug!(pipeline = %pipe.config.name, "another pass holds the pipeline; the inbox stream waits for a later tick");
        } else {
            let g = global.clone().acquire_owned().await.ok();
            let run = inbox::run(&pipe, &shared).await;
            drop((g, held));
            reports.extend(run.report);
            conversations.extend(run.extra);
        }
    }
    let quiet: HashSet<&str> = shared.opts.quiet.iter().map(String::as_str).collect();
    for conv in conversations {
        let name = conv.to_string();
        if !shared.opts.only.is_empty() && !shared.opts.only.contains(&name) {
            continue;
        }
        if quiet.contains(name.as_str()) {
            continue;
        }
        // Take the permits before spawning, so a pipeline of 10,000 conversations holds as many tasks as may run
        // at once in memory, not 10,000. Permits are only closed by dropping the semaphore, which we hold.
        let l = local.clone().acquire_owned().await.ok();
        let g = global.clone().acquire_owned().await.ok();
        while let Some(res) = set.try_join_next() {
            collect(res, &mut reports);
        }
        let (pipe, shared) = (pipe.clone(), shared.clone());
        set.spawn(async move {
            let _permits = (l, g);
            sync_conversation(&pipe, &conv, &shared).await
        });
    }
    while let Some(res) = set.join_next().await {
        collect(res, &mut reports);
    }
    reports.sort_by(|a, b| a.conversation.cmp(&b.conversation));
    let fatal = shared.fatal.lock().map(|f| f.clone()).unwrap_or(None);
    let report = PipelineReport { pipeline: pipe.config.name.clone(), conversations: reports, fatal };
    shared.log_pacing(&pipe.config.name);
    end_of_run(&pipe, &report, started).await;
    report
}

/// Records a run's end: a successful one (no conversation failed or was stopped, the pipeline did not stop)
/// in the state's [`Freshness`], through the writer like every state change, and its duration in the metrics.
async fn end_of_run(pipe: &OpenPipeline, report: &PipelineReport, started: std::time::Instant) {
    let name = &pipe.config.name;
    if report.fatal.is_none() && report.failed() == 0 {
        let ok = Freshness { last_success_ms: Some(unix_ms(SystemTime::now())), ..Freshness::default() };
        let commit = Commit { freshness: vec![(name.clone(), ok)], ..Commit::default() };
        if let Err(e) = pipe.handoff.write(Batch { lines: vec![], commit }).await {
            tracing::warn!(pipeline = %name, error = %e, "could not record the successful run");
        }
    }
    crate::metrics::global().run_finished(name, started.elapsed());
}

/// Why a conversation's run stopped early.
enum Stop {
    /// A credit budget is spent: not an error, the run just ends here (cursors are committed).
    Budget(Spent),
    Provider(ProviderError),
    Write(String),
    Cancelled,
    /// Another pass holds the conversation and this run does not wait for it (`RunOptions::skip_busy`).
    Busy,
}

impl From<crate::handoff::HandoffError> for Stop {
    fn from(e: crate::handoff::HandoffError) -> Self {
        Stop::Write(e.0)
    }
}

impl From<crate::state::StateError> for Stop {
    fn from(e: crate::state::StateError) -> Self {
        Stop::Write(e.to_string())
    }
}

impl From<UserError> for Stop {
    fn from(e: UserError) -> Self {
        match e {
            UserError::Provider(p) => Stop::Provider(p),
            UserError::Local(m) => Stop::Write(m),
        }
    }
}

async fn sync_conversation(pipe: &OpenPipeline, conv_ref: &ConversationRef, shared: &RunShared) -> ConvReport {
    let mut report =
        ConvReport { conversation: conv_ref.to_string(), configured: conv_ref.to_string(), ..Default::default() };
    let p = &pipe.config;
    let result = async {
        let conv = resolve(pipe, conv_ref, shared).await?;
        report.conversation = conv.key().to_string();
        // Held until the conversation's final commit below: no other pass writes it meanwhile.
        let Some(_lease) = pipe.passes.conversation(conv.key(), !shared.opts.skip_busy).await else {
            return Err(Stop::Busy);
        };
        let st = pipe.store.conversation(&p.name, conv.key())?;
        let mut pass = Pass { pipe, conv: &conv, st, shared, report: &mut report, duplicates: AtomicU64::new(0) };
        let outcome = pass.run().await;
        pass.report.duplicates += pass.duplicates.into_inner();
        let mut st = pass.st;
        if matches!(outcome, Err(Stop::Write(_))) {
            // A failed write may have been reconciled into the stored counters; start from those.
            if let Ok(fresh) = pipe.store.conversation(&p.name, conv.key()) {
                st = fresh;
            }
        }
        // Record how the run ended, whatever happened; the cursors in `st` are the committed ones.
        st.last_sync_ms = Some(unix_ms(SystemTime::now()));
        st.last_error = match &outcome {
            Ok(()) | Err(Stop::Cancelled) | Err(Stop::Budget(_)) | Err(Stop::Busy) => None,
            Err(Stop::Provider(e)) => Some(e.to_string()),
            Err(Stop::Write(e)) => Some(e.clone()),
        };
        report.backfill_done = st.backfill_done;
        let mut commit =
            Commit { conversations: vec![(p.name.clone(), conv.key().to_string(), st)], ..Default::default() };
        if report.written > 0 {
            // Whatever this run added since the last fold.
            commit.folds.push((p.name.clone(), conv.key().to_string()));
        }
        // Best effort: if even this fails, the run's error is the more useful one to report.
        let _ = pipe.handoff.write(Batch { lines: vec![], commit }).await;
        outcome
    }
    .await;
    match result {
        Ok(()) => {
            tracing::info!(pipeline = %p.name, conversation = %report.conversation, pages = report.pages, records = report.written, duplicates = report.duplicates, credits = report.credits, backfill_done = report.backfill_done, "conversation synced");
        }
        Err(Stop::Budget(spent)) => {
            let which = match spent {
                Spent::Run => "max_credits_per_run",
                Spent::Day => "max_credits_per_day",
            };
            report.limited = true;
            report.budget = Some(which.to_string());
            tracing::warn!(pipeline = %p.name, conversation = %report.conversation, budget = which, "credit budget spent; paused until the next run");
        }
        Err(Stop::Busy) => {
            report.busy = true;
            tracing::debug!(pipeline = %p.name, conversation = %report.conversation, "another pass (a backfill) holds this conversation; left for a later tick");
        }
        Err(Stop::Cancelled) => {
            report.cancelled = true;
            report.error = Some("stopped before finishing (shutdown or a fatal error in this pipeline)".into());
            tracing::info!(pipeline = %p.name, conversation = %report.conversation, pages = report.pages, records = report.written, "conversation stopped at a page boundary");
        }
        Err(Stop::Provider(e)) => {
            if e.class == ErrorClass::Fatal {
                if let Ok(mut f) = shared.fatal.lock() {
                    f.get_or_insert_with(|| e.to_string());
                }
                shared.stop.cancel();
            }
            tracing::error!(pipeline = %p.name, conversation = %report.conversation, status = e.status, code = %e.code, error = %e, "conversation failed");
            report.error = Some(e.to_string());
        }
        Err(Stop::Write(e)) => {
            tracing::error!(pipeline = %p.name, conversation = %report.conversation, error = %e, "conversation failed");
            report.error = Some(e);
        }
    }
    report
}

/// Turns a configured conversation into what the provider's history call needs.
async fn resolve(pipe: &OpenPipeline, conv: &ConversationRef, shared: &RunShared) -> Result<Conversation, Stop> {
    match conv {
        ConversationRef::Peer(id) => Ok(Conversation::Peer { user_id: id.clone(), conversation_id: None }),
        ConversationRef::ConversationId(id) => {
            Ok(Conversation::from_conversation_id(id, pipe.client.account_user_id()))
        }
        ConversationRef::Username(name) => {
            let (id, _) = pipe.user_id(name, &shared.stop).await?;
            Ok(Conversation::Peer { user_id: id, conversation_id: None })
        }
    }
}

/// One conversation's run: its passes over history, the state as last committed, and the report.
struct Pass<'a> {
    pipe: &'a OpenPipeline,
    conv: &'a Conversation,
    /// The conversation's state as committed; becomes each page's `next` once that page is durable.
    st: ConvState,
    shared: &'a RunShared,
    report: &'a mut ConvReport,
    /// Items already in the files, counted while a page is built (added to the report at the end).
    duplicates: AtomicU64,
}

/// A page whose batch is queued at the writer: the state it commits and what it adds to the report, applied
/// once the commit is known.
struct InFlight {
    queued: Queued,
    next: ConvState,
    written: u64,
    credits: u64,
}

/// Which frontier a walk moves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Walk {
    /// The very first page ever; it sets up both frontiers.
    First,
    /// From the newest page down to the high-water mark.
    Head,
    /// Older pages from the backfill cursor.
    Backfill,
}

impl Pass<'_> {
    async fn run(&mut self) -> Result<(), Stop> {
        let opts = &self.shared.opts;
        let do_backfill = opts.backfill.unwrap_or(self.pipe.config.backfill);
        if opts.head || (do_backfill && !self.st.backfill_started) {
            if !self.st.backfill_started {
                self.walk(Walk::First).await?;
            } else {
                // A pass resumed from a stored cursor only covers what was newest when it began; once it
                // completes, one more pass from the newest page picks up what arrived since, so one sync
                // after a crash is enough to bring the files up to date.
                let resumed = self.st.head_cursor.is_some();
                self.walk(Walk::Head).await?;
                if resumed {
                    self.walk(Walk::Head).await?;
                }
            }
        }
        if do_backfill && !self.st.backfill_done {
            self.walk(Walk::Backfill).await?;
        }
        Ok(())
    }

    /// Walks one frontier page by page. Each page is asked for as soon as its cursor is known, while the
    /// previous page's lines are written, fsynced and committed (SPEC 8.7); a page's records are checked
    /// against the seen set only once the previous page is committed, and commits happen in page order, so
    /// overlapping pages still never write a record twice, and a failed commit stops the walk before anything
    /// after it is committed.
    async fn walk(&mut self, walk: Walk) -> Result<(), Stop> {
        let p = &self.pipe.config;
        let max_pages =
            self.shared.opts.max_pages.or((p.backfill_max_pages_per_run > 0).then_some(p.backfill_max_pages_per_run));
        let mut pages = 0u64;
        let mut in_flight: Option<InFlight> = None;
        // A pass that is handed a cursor it already sent, or pages that bring nothing new, stops (SPEC 8.3).
        let mut guard = LoopGuard::new(p.max_empty_pages);
        // A cursor the provider no longer accepts restarts the pass once without it (`restart`).
        let mut restarted = false;
        loop {
            // The state as it will be once the queued page is committed: what the next request depends on.
            let ahead = in_flight.as_ref().map_or(&self.st, |f| &f.next);
            let cursor = match walk {
                Walk::First => None,
                Walk::Head => ahead.head_cursor.clone(),
                Walk::Backfill => {
                    if ahead.backfill_done {
                        break;
                    }
                    if max_pages.is_some_and(|m| pages >= m) {
                        self.report.limited = true;
                        tracing::info!(pipeline = %p.name, conversation = %self.conv.key(), pages, "backfill paused at this run's limit");
                        break;
                    }
                    ahead.backfill_cursor.clone()
                }
            };
            if self.shared.stop.is_cancelled() {
                self.settle(in_flight.take()).await?;
                return Err(Stop::Cancelled);
            }
            guard.sending(cursor.as_deref());
            let page = match in_flight.take() {
                Some(InFlight { queued, next, written, credits }) => {
                    let (page, committed) = tokio::join!(self.fetch(cursor.as_deref()), queued);
                    committed?;
                    self.apply(next, written, credits);
                    page
                }
                None => self.fetch(cursor.as_deref()).await,
            };
            let page = match page {
                Err(Stop::Provider(e)) if e.cursor_rejected && cursor.is_some() && !restarted => {
                    // Nothing is in flight now: `self.st` is the committed state, the one to restart from.
                    restarted = true;
                    self.restart(walk, &e);
                    guard = LoopGuard::new(p.max_empty_pages);
                    continue;
                }
                page => page?,
            };
            pages += 1;
            let (next, done) = self.advance(walk, &page);
            let reached_since = walk == Walk::Backfill
                && self.shared.opts.since.is_some_and(|since| oldest_time(&page).is_some_and(|t| t < since));
            let queued = self.queue_page(&page, next)?;
            let added = queued.written;
            in_flight = Some(queued);
            if done {
                break;
            }
            if let Some(c) = page.next_cursor.as_deref() {
                if let Err(e) = guard.follow(self.endpoint(), added, lowest_id(&page).as_deref(), c) {
                    self.settle(in_flight.take()).await?;
                    return Err(Stop::Provider(e));
                }
            }
            if reached_since && in_flight.as_ref().is_some_and(|f| !f.next.backfill_done) {
                self.report.limited = true;
                tracing::info!(pipeline = %p.name, conversation = %self.conv.key(), "backfill reached --since");
                break;
            }
        }
        self.settle(in_flight).await
    }

    /// The provider refused the walk's cursor: the walk starts again from the newest page. A head pass keeps
    /// what it has seen (`head_newest`) and ends at `hwm` as before; a backfill walks down from the newest
    /// page to where it was and on, its pages below `covered_from` still contiguous with what is covered.
    /// Every item is checked against the seen set, so the overlap writes nothing twice; the restarted
    /// cursor is committed with the next page (or with the run's end), so a cursor that expired while the
    /// daemon was down never wedges the conversation.
    fn restart(&mut self, walk: Walk, e: &ProviderError) {
        let p = &self.pipe.config;
        tracing::warn!(pipeline = %p.name, conversation = %self.conv.key(), walk = ?walk, status = e.status, code = %e.code, "the provider no longer accepts this pass's cursor; restarting the pass from the newest page");
        match walk {
            Walk::First => {}
            Walk::Head => self.st.head_cursor = None,
            Walk::Backfill => self.st.backfill_cursor = None,
        }
    }

    /// The state after `page` (given the committed state before it), and whether the walk ends with it.
    fn advance(&self, walk: Walk, page: &Page) -> (ConvState, bool) {
        let st = &self.st;
        let mut next = st.clone();
        match walk {
            Walk::First => {
                next.hwm = newest(page, None);
                next.backfill_started = true;
                next.backfill_done = page.next_cursor.is_none();
                next.backfill_cursor = page.next_cursor.clone();
                next.covered_from = lowest(page, st.covered_from.as_deref());
                (next, true)
            }
            Walk::Head => {
                next.head_newest = newest(page, st.head_newest.as_deref());
                if st.hwm.is_none() {
                    // Nothing seen yet, so this pass runs to the end of history: its pages reach down without a
                    // gap from what will become hwm.
                    next.covered_from = lowest(page, st.covered_from.as_deref());
                }
                let reached = match &st.hwm {
                    Some(hwm) => page_ids(page).any(|id| id_cmp(&id, hwm).is_le()),
                    None => false,
                };
                let done = head_step(&mut next, reached, page.next_cursor.as_deref());
                (next, done)
            }
            Walk::Backfill => {
                next.backfill_done = page.next_cursor.is_none();
                next.backfill_cursor = page.next_cursor.clone();
                next.covered_from = lowest(page, st.covered_from.as_deref());
                let done = next.backfill_done;
                (next, done)
            }
        }
    }

    fn endpoint(&self) -> &'static str {
        self.pipe.client.history_endpoint(self.conv)
    }

    async fn fetch(&self, cursor: Option<&str>) -> Result<Page, Stop> {
        let (pipe, shared) = (self.pipe, self.shared);
        // Checked before every request: after a fatal error (a rejected key) or a stop signal, conversations
        // still waiting for a permit must not send one more request.
        if shared.stop.is_cancelled() {
            return Err(Stop::Cancelled);
        }
        let p = &pipe.config;
        let budget = Budget { per_run: p.max_credits_per_run, per_day: p.max_credits_per_day };
        let today = if budget.per_day > 0 { pipe.store.credits_today(&p.name)? } else { 0 };
        let admitted = shared.admit(&budget, today).await?;
        let page = with_retry(&p.retry, &shared.stop, || async {
            // Every attempt waits for its place in the account's pace, and tells it how the provider answered.
            let permit = pipe.pace.acquire().await;
            shared.beat();
            let result = pipe.client.history(self.conv, cursor).await;
            shared.note_pacing(&result);
            permit.done(match &result {
                Err(e) if e.status == Some(429) || e.class == ErrorClass::Transient && e.code != PACING => {
                    Answer::PushedBack
                }
                _ => Answer::Clean,
            });
            result
        })
        .await
        .map_err(|e| {
            if shared.stop.is_cancelled() && e.class == ErrorClass::Transient {
                Stop::Cancelled
            } else {
                Stop::Provider(e)
            }
        })?;
        shared.page_cost(page.credits);
        drop(admitted);
        tracing::debug!(pipeline = %p.name, conversation = %self.conv.key(), cursor = cursor.unwrap_or(""), items = page.items.len(), next_cursor = page.next_cursor.as_deref().unwrap_or(""), "page");
        Ok(page)
    }

    /// Builds a page's unseen records and queues them, with `next`, at the writer; the commit is only known
    /// when [`Pass::settle`] awaits it. Call only once the previous page is settled: the seen set must hold its
    /// keys.
    fn queue_page(&self, page: &Page, mut next: ConvState) -> Result<InFlight, Stop> {
        let (pipe, conv) = (self.pipe, self.conv);
        let p = &pipe.config;
        let ctx = Context {
            provider: p.provider.name(),
            pipeline: &p.name,
            account: &p.account,
            account_user_id: pipe.client.account_user_id(),
            redact_text: p.redact_text,
            source_endpoint: pipe.client.history_endpoint(conv),
        };
        let synced_at = now_string();
        let covered = pipe.store.covered(&p.name, conv.key())?;
        // Keys first, checked against the seen set for the whole page at once; only new items become lines.
        let kinds: Vec<(Kind, &str)> = page.items.iter().map(|i| (item_kind(i), i.id.as_str())).collect();
        let seen = pipe.store.seen_among(&p.name, conv.key(), &kinds, covered)?;
        let mut duplicates = 0;
        // Each new entry: its kind, its ID, and the item (or the unparsed item's finished record).
        let mut new: Vec<(Kind, std::borrow::Cow<'_, str>, Entry<'_>)> = Vec::with_capacity(kinds.len());
        for ((kind, id), (item, seen)) in kinds.iter().zip(page.items.iter().zip(seen)) {
            if seen {
                duplicates += 1;
                continue;
            }
            new.push((*kind, (*id).into(), Entry::Item(item)));
        }
        // Order within a page is undefined upstream; oldest first makes each file read chronologically per
        // page. The sort is stable, so an item the page repeats keeps its first copy, and the repeats (now
        // next to it) are dropped: no hash set per page.
        new.sort_by(|a, b| id_cmp(&a.1, &b.1).then(a.0.cmp(&b.0)));
        let before = new.len();
        new.dedup_by(|later, first| later.0 == first.0 && later.1 == first.1);
        duplicates += (before - new.len()) as u64;
        // Items the adapter could not normalize: kept as received, once each, never blocking the page.
        let mut unparsed_keys = HashSet::new();
        for u in &page.unparsed {
            let record = unparsed_record(&ctx, conv, u, &synced_at);
            let Some(key) = record.key() else { continue };
            if unparsed_keys.contains(&key) || pipe.store.is_seen_with(&p.name, &key, covered)? {
                duplicates += 1;
                continue;
            }
            tracing::warn!(pipeline = %p.name, conversation = %conv.key(), reason = %u.reason, "an item could not be normalized; written as dm_unparsed");
            unparsed_keys.insert(key.clone());
            new.push((key.kind, key.id.into(), Entry::Unparsed(Box::new(record))));
        }
        // Unparsed entries (their own kind, so never equal to an item's key) join the same order.
        if !unparsed_keys.is_empty() {
            new.sort_by(|a, b| id_cmp(&a.1, &b.1));
        }
        next.messages_written += new.len() as u64;
        next.credits_total += page.credits;
        if let Some((_, id, _)) = new.last() {
            next.newest_id = newest_of(next.newest_id.as_deref(), Some(id));
        }
        let written = new.len() as u64;
        // Fold the seen set every FOLD_EVERY records, so a long backfill keeps it small as it goes.
        let fold = (self.report.written + written) / FOLD_EVERY > self.report.written / FOLD_EVERY;
        let mut commit = Commit {
            conversations: vec![(p.name.clone(), conv.key().to_string(), next.clone())],
            credits: if page.credits > 0 { vec![(p.name.clone(), page.credits)] } else { Vec::new() },
            folds: if fold { vec![(p.name.clone(), conv.key().to_string())] } else { Vec::new() },
            ..Default::default()
        };
        // Timestamps in record form compare as strings; the newest goes into the pipeline's freshness.
        let mut newest_created: Option<String> = None;
        let mut lines = Vec::with_capacity(new.len());
        let mut keys = Vec::with_capacity(new.len());
        for (kind, id, entry) in new {
            let (line, created_at) = match entry {
                Entry::Item(item) => {
                    let Line { line, created_at } = message_line(&ctx, conv, item, &synced_at);
                    (line, created_at)
                }
                Entry::Unparsed(record) => (record.to_line(), None),
            };
            if created_at > newest_created {
                newest_created = created_at;
            }
            lines.push(line);
            keys.push((kind, id.into_owned()));
        }
        if !keys.is_empty() {
            commit.pages.push(SeenPage { pipeline: p.name.clone(), conversation: conv.key().to_string(), keys });
        }
        if let Some(at) = newest_created {
            commit.freshness =
                vec![(p.name.clone(), Freshness { newest_created_at: Some(at), ..Freshness::default() })];
        }
        // Counted now: the page was fetched and checked, whatever becomes of its commit.
        self.count_duplicates(duplicates);
        let queued = pipe.handoff.enqueue(Batch { lines, commit });
        Ok(InFlight { queued, next, written, credits: page.credits })
    }

    fn count_duplicates(&self, n: u64) {
        // `report` is behind `&mut self` elsewhere; duplicates are only counted here.
        self.duplicates.fetch_add(n, Ordering::Relaxed);
    }

    /// Awaits a queued page's commit; on success the conversation's state becomes what it committed.
    async fn settle(&mut self, in_flight: Option<InFlight>) -> Result<(), Stop> {
        let Some(f) = in_flight else { return Ok(()) };
        f.queued.await?;
        self.apply(f.next, f.written, f.credits);
        Ok(())
    }

    /// A page is committed: its state is the conversation's now, and the report counts it.
    fn apply(&mut self, next: ConvState, written: u64, credits: u64) {
        self.shared.page_committed(self.report, written, credits);
        self.st = next;
    }
}

/// A new entry of a page, before it becomes a line.
enum Entry<'a> {
    Item(&'a Item),
    /// A `dm_unparsed` record, already built (its key is computed from it).
    Unparsed(Box<Record>),
}

/// The IDs a page shows: its items', and those of unparsed items that have a usable one. A pass moves its
/// high-water mark over both (an unparsed item is written too), but never folds an unparsed ID into a
/// covered range ([`lowest`] looks at items only).
fn page_ids(page: &Page) -> impl Iterator<Item = std::borrow::Cow<'_, str>> {
    let items = page.items.iter().map(|i| std::borrow::Cow::Borrowed(i.id.as_str()));
    let unparsed = page.unparsed.iter().filter_map(|u| {
        let id = crate::record::unparsed_id(u.raw.get());
        // A hash is no position in history; only a provider ID is.
        numeric_id(&id).is_some().then_some(std::borrow::Cow::Owned(id))
    });
    items.chain(unparsed)
}

/// The page's lowest ID (items and unparsed items with one), for loop detection.
fn lowest_id(page: &Page) -> Option<std::borrow::Cow<'_, str>> {
    page_ids(page).min_by(|a, b| id_cmp(a, b))
}

fn newest(page: &Page, current: Option<&str>) -> Option<String> {
    page_ids(page).fold(current.map(str::to_string), |acc, id| newest_of(acc.as_deref(), Some(&id)))
}

/// The lowest numeric item ID of a page, or `current` if that is lower. Non-numeric IDs are never folded,
/// so they do not count.
fn lowest(page: &Page, current: Option<&str>) -> Option<String> {
    current
        .into_iter()
        .chain(page.items.iter().map(|i| i.id.as_str()))
        .filter_map(|id| numeric_id(id).map(|n| (n, id)))
        .min_by_key(|(n, _)| *n)
        .map(|(_, id)| id.to_string())
}

/// A head pass's state after a page: done when the page reached `hwm` or history ended, and then `hwm`
/// moves up to the newest ID the pass saw; otherwise the pass resumes from the page's cursor. The one rule
/// for the per-conversation head pass and the inbox stream's.
fn head_step(next: &mut ConvState, reached: bool, next_cursor: Option<&str>) -> bool {
    let done = reached || next_cursor.is_none();
    if done {
        next.hwm = newest_of(next.hwm.as_deref(), next.head_newest.as_deref());
        next.head_cursor = None;
        next.head_newest = None;
    } else {
        next.head_cursor = next_cursor.map(str::to_string);
    }
    done
}

fn newest_of(a: Option<&str>, b: Option<&str>) -> Option<String> {
    match (a, b) {
        (Some(a), Some(b)) => Some(if id_cmp(a, b).is_ge() { a } else { b }.to_string()),
        (a, b) => a.or(b).map(str::to_string),
    }
}

fn oldest_time(page: &Page) -> Option<SystemTime> {
    page.items.iter().filter_map(|i| i.created_at.as_deref().and_then(crate::record::parse_time)).min()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::Item;

    fn page(ids: &[&str], next: Option<&str>) -> Page {
        Page {
            items: ids.iter().map(|i| Item { id: i.to_string(), ..Item::default() }).collect(),
            next_cursor: next.map(str::to_string),
            credits: ids.len() as u64,
            ..Page::default()
        }
    }

    #[test]
    fn newest_is_numeric_and_keeps_current() {
        assert_eq!(newest(&page(&["9", "100", "11"], None), None).as_deref(), Some("100"));
        assert_eq!(newest(&page(&["9"], None), Some("50")).as_deref(), Some("50"));
        assert_eq!(newest(&page(&[], None), None), None);
        assert_eq!(newest_of(None, Some("3")).as_deref(), Some("3"));
    }

    #[test]
    fn lowest_is_numeric_ignores_other_ids_and_keeps_current() {
        assert_eq!(lowest(&page(&["9", "100", "abc", "11"], None), None).as_deref(), Some("9"));
        assert_eq!(lowest(&page(&["9"], None), Some("5")).as_deref(), Some("5"));
        assert_eq!(lowest(&page(&["9"], None), Some("50")).as_deref(), Some("9"));
        assert_eq!(lowest(&page(&["x", "007"], None), None), None);
        assert_eq!(lowest(&page(&[], None), Some("4")).as_deref(), Some("4"));
    }
}
