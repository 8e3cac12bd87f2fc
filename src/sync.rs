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
use std::time::{SystemTime, UNIX_EPOCH};

use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::config::{ConversationRef, Pipeline};
use crate::handoff::{Batch, Handoff};
use crate::poll::{Budget, Spent};
use crate::provider::{with_retry, Client, ErrorClass, Page, ProviderError};
use crate::record::{id_cmp, message_record, now_string, Context, Conversation};
use crate::state::{numeric_id, Commit, ConvState, Store};

/// A conversation's seen set is folded after every this many records it writes, and at the end of its run.
const FOLD_EVERY: u64 = 64;

/// Everything one pipeline needs to sync; lives as long as the process (the daemon reuses it).
pub struct Runtime {
    pub pipeline: Pipeline,
    pub client: Client,
    pub handoff: Handoff,
    pub store: Arc<Store>,
}

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
    /// Only these conversations (as configured, or as resolved IDs); empty = all.
    pub only: Vec<String>,
    /// Set to the current Unix ms before every request and after every commit: the daemon's watchdog
    /// pings systemd only while runs keep making progress.
    pub heartbeat: Option<Arc<AtomicU64>>,
    /// Live totals for a progress display: pages fetched and records written by this run so far.
    pub progress: Option<Arc<Progress>>,
}

/// Counters a progress bar reads while a run goes on.
#[derive(Debug, Default)]
pub struct Progress {
    pub pages: AtomicU64,
    pub records: AtomicU64,
}

/// How one conversation's run went.
#[derive(Clone, Debug, Default, serde::Serialize)]
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
}

/// How one pipeline's run went.
#[derive(Clone, Debug, Default, serde::Serialize)]
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
}

/// State shared by the conversations of one pipeline run.
struct RunShared {
    opts: RunOptions,
    credits: AtomicU64,
    /// Cancelled on shutdown or on a fatal provider error; conversations stop at a page boundary.
    stop: CancellationToken,
    fatal: std::sync::Mutex<Option<String>>,
}

impl RunShared {
    fn beat(&self) {
        if let Some(h) = &self.opts.heartbeat {
            h.store(unix_ms(SystemTime::now()), Ordering::Relaxed);
        }
    }
}

/// Runs one pass over a pipeline's conversations. `global` bounds conversations across pipelines.
pub async fn sync_pipeline(
    rt: Arc<Runtime>,
    opts: RunOptions,
    global: Arc<Semaphore>,
    cancel: CancellationToken,
) -> PipelineReport {
    let shared =
        Arc::new(RunShared { opts, credits: AtomicU64::new(0), stop: cancel.child_token(), fatal: Default::default() });
    let local = Arc::new(Semaphore::new(rt.pipeline.concurrency));
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
    for conv in rt.pipeline.conversations.clone() {
        if !shared.opts.only.is_empty() && !shared.opts.only.iter().any(|o| o == &conv.to_string()) {
            continue;
        }
        // Take the permits before spawning, so a pipeline of 10,000 conversations holds `concurrency` tasks
        // in memory, not 10,000. Permits are only closed by dropping the semaphore, which we hold.
        let l = local.clone().acquire_owned().await.ok();
        let g = global.clone().acquire_owned().await.ok();
        while let Some(res) = set.try_join_next() {
            collect(res, &mut reports);
        }
        let (rt, shared) = (rt.clone(), shared.clone());
        set.spawn(async move {
            let _permits = (l, g);
            sync_conversation(&rt, &conv, &shared).await
        });
    }
    while let Some(res) = set.join_next().await {
        collect(res, &mut reports);
    }
    reports.sort_by(|a, b| a.conversation.cmp(&b.conversation));
    let fatal = shared.fatal.lock().map(|f| f.clone()).unwrap_or(None);
    PipelineReport { pipeline: rt.pipeline.name.clone(), conversations: reports, fatal }
}

/// Why a conversation's run stopped early.
enum Stop {
    /// A credit budget is spent: not an error, the run just ends here (cursors are committed).
    Budget(Spent),
    Provider(ProviderError),
    Write(String),
    Cancelled,
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

async fn sync_conversation(rt: &Runtime, conv_ref: &ConversationRef, shared: &RunShared) -> ConvReport {
    let mut report =
        ConvReport { conversation: conv_ref.to_string(), configured: conv_ref.to_string(), ..Default::default() };
    let p = &rt.pipeline;
    let result = async {
        let conv = resolve(rt, conv_ref, shared).await?;
        report.conversation = conv.key().to_string();
        let mut st = rt.store.conversation(&p.name, conv.key())?;
        let outcome = run_passes(rt, &conv, &mut st, shared, &mut report).await;
        if matches!(outcome, Err(Stop::Write(_))) {
            // A failed write may have been reconciled into the stored counters; start from those.
            if let Ok(fresh) = rt.store.conversation(&p.name, conv.key()) {
                st = fresh;
            }
        }
        // Record how the run ended, whatever happened; the cursors in `st` are the committed ones.
        st.last_sync_ms = Some(unix_ms(SystemTime::now()));
        st.last_error = match &outcome {
            Ok(()) | Err(Stop::Cancelled) | Err(Stop::Budget(_)) => None,
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
        let _ = rt.handoff.write(Batch { lines: vec![], commit }).await;
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
        Err(Stop::Cancelled) => {
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

/// Turns a configured conversation into what the provider's history call needs, caching usernames.
async fn resolve(rt: &Runtime, conv: &ConversationRef, shared: &RunShared) -> Result<Conversation, Stop> {
    match conv {
        ConversationRef::Peer(id) => Ok(Conversation::Peer { user_id: id.clone(), conversation_id: None }),
        ConversationRef::ConversationId(id) => Ok(Conversation::from_conversation_id(id, rt.client.account_user_id())),
        ConversationRef::Username(name) => {
            let provider = rt.pipeline.provider.name();
            if let Some(id) = rt.store.resolved_user(provider, name)? {
                return Ok(Conversation::Peer { user_id: id, conversation_id: None });
            }
            let user = with_retry(&rt.pipeline.retry, &shared.stop, || rt.client.lookup_user(name))
                .await
                .map_err(Stop::Provider)?;
            tracing::info!(pipeline = %rt.pipeline.name, username = %name, user_id = %user.id, "resolved @username");
            let commit = Commit { raw: vec![Store::user_entry(provider, name, &user.id)], ..Default::default() };
            rt.handoff.write(Batch { lines: vec![], commit }).await?;
            Ok(Conversation::Peer { user_id: user.id, conversation_id: None })
        }
    }
}

async fn run_passes(
    rt: &Runtime,
    conv: &Conversation,
    st: &mut ConvState,
    shared: &RunShared,
    report: &mut ConvReport,
) -> Result<(), Stop> {
    let opts = &shared.opts;
    let do_backfill = opts.backfill.unwrap_or(rt.pipeline.backfill);
    if opts.head || (do_backfill && !st.backfill_started) {
        if !st.backfill_started {
            first_page(rt, conv, st, shared, report).await?;
        } else {
            // A pass resumed from a stored cursor only covers what was newest when it began; once it
            // completes, one more pass from the newest page picks up what arrived since, so one sync
            // after a crash is enough to bring the files up to date.
            let resumed = st.head_cursor.is_some();
            head_pass(rt, conv, st, shared, report).await?;
            if resumed {
                head_pass(rt, conv, st, shared, report).await?;
            }
        }
    }
    if do_backfill && !st.backfill_done {
        backfill(rt, conv, st, shared, report).await?;
    }
    Ok(())
}

/// The first page ever: sets the high-water mark and the backfill frontier in one commit.
async fn first_page(
    rt: &Runtime,
    conv: &Conversation,
    st: &mut ConvState,
    shared: &RunShared,
    report: &mut ConvReport,
) -> Result<(), Stop> {
    let page = fetch(rt, conv, None, shared).await?;
    let mut next = st.clone();
    next.hwm = newest(&page, None);
    next.backfill_started = true;
    next.backfill_done = page.next_cursor.is_none();
    next.backfill_cursor = page.next_cursor.clone();
    next.covered_from = lowest(&page, st.covered_from.as_deref());
    write_page(rt, conv, &page, st, next, shared, report).await
}

/// From the newest page down to the high-water mark (or to the end while nothing was ever seen).
async fn head_pass(
    rt: &Runtime,
    conv: &Conversation,
    st: &mut ConvState,
    shared: &RunShared,
    report: &mut ConvReport,
) -> Result<(), Stop> {
    loop {
        if shared.stop.is_cancelled() {
            return Err(Stop::Cancelled);
        }
        let cursor = st.head_cursor.clone();
        let page = fetch(rt, conv, cursor.as_deref(), shared).await?;
        let mut next = st.clone();
        next.head_newest = newest(&page, st.head_newest.as_deref());
        if st.hwm.is_none() {
            // Nothing seen yet, so this pass runs to the end of history: its pages reach down without a
            // gap from what will become hwm.
            next.covered_from = lowest(&page, st.covered_from.as_deref());
        }
        let reached = match &st.hwm {
            Some(hwm) => page.items.iter().any(|i| id_cmp(&i.id, hwm).is_le()),
            None => false,
        };
        let done = reached || page.next_cursor.is_none();
        if done {
            next.hwm = newest_of(next.hwm.as_deref(), next.head_newest.as_deref());
            next.head_cursor = None;
            next.head_newest = None;
        } else {
            next.head_cursor = page.next_cursor.clone();
        }
        write_page(rt, conv, &page, st, next, shared, report).await?;
        if done {
            return Ok(());
        }
    }
}

/// Older pages from the stored cursor, within this run's page, credit and --since limits.
async fn backfill(
    rt: &Runtime,
    conv: &Conversation,
    st: &mut ConvState,
    shared: &RunShared,
    report: &mut ConvReport,
) -> Result<(), Stop> {
    let p = &rt.pipeline;
    let max_pages =
        shared.opts.max_pages.or((p.backfill_max_pages_per_run > 0).then_some(p.backfill_max_pages_per_run));
    let mut pages = 0u64;
    while !st.backfill_done {
        if shared.stop.is_cancelled() {
            return Err(Stop::Cancelled);
        }
        if max_pages.is_some_and(|m| pages >= m) {
            report.limited = true;
            tracing::info!(pipeline = %p.name, conversation = %conv.key(), pages, "backfill paused at this run's limit");
            return Ok(());
        }
        let cursor = st.backfill_cursor.clone();
        let page = fetch(rt, conv, cursor.as_deref(), shared).await?;
        pages += 1;
        let mut next = st.clone();
        next.backfill_done = page.next_cursor.is_none();
        next.backfill_cursor = page.next_cursor.clone();
        next.covered_from = lowest(&page, st.covered_from.as_deref());
        let reached_since = shared.opts.since.is_some_and(|since| oldest_time(&page).is_some_and(|t| t < since));
        write_page(rt, conv, &page, st, next, shared, report).await?;
        if reached_since && !st.backfill_done {
            report.limited = true;
            tracing::info!(pipeline = %p.name, conversation = %conv.key(), "backfill reached --since");
            return Ok(());
        }
    }
    Ok(())
}

async fn fetch(rt: &Runtime, conv: &Conversation, cursor: Option<&str>, shared: &RunShared) -> Result<Page, Stop> {
    // Checked before every request: after a fatal error (a rejected key) or a stop signal, conversations
    // still waiting for a permit must not send one more request.
    if shared.stop.is_cancelled() {
        return Err(Stop::Cancelled);
    }
    let p = &rt.pipeline;
    let budget = Budget { per_run: p.max_credits_per_run, per_day: p.max_credits_per_day };
    let today = if budget.per_day > 0 { rt.store.credits_today(&p.name)? } else { 0 };
    budget.check(shared.credits.load(Ordering::Relaxed), today).map_err(Stop::Budget)?;
    let page = with_retry(&rt.pipeline.retry, &shared.stop, || {
        shared.beat();
        rt.client.history(conv, cursor)
    })
    .await
    .map_err(|e| {
        if shared.stop.is_cancelled() && e.class == ErrorClass::Transient {
            Stop::Cancelled
        } else {
            Stop::Provider(e)
        }
    })?;
    shared.credits.fetch_add(page.credits, Ordering::Relaxed);
    tracing::debug!(pipeline = %rt.pipeline.name, conversation = %conv.key(), cursor = cursor.unwrap_or(""), items = page.items.len(), next_cursor = page.next_cursor.as_deref().unwrap_or(""), "page");
    Ok(page)
}

/// Writes a page's unseen records and commits `next` with them; on success `st` becomes `next`.
async fn write_page(
    rt: &Runtime,
    conv: &Conversation,
    page: &Page,
    st: &mut ConvState,
    mut next: ConvState,
    shared: &RunShared,
    report: &mut ConvReport,
) -> Result<(), Stop> {
    let p = &rt.pipeline;
    let ctx = Context {
        provider: p.provider.name(),
        pipeline: &p.name,
        account: &p.account,
        account_user_id: rt.client.account_user_id(),
        redact_text: p.redact_text,
        source_endpoint: rt.client.history_endpoint(conv),
    };
    let synced_at = now_string();
    let covered = rt.store.covered(&p.name, conv.key())?;
    let mut fresh = HashSet::new();
    let mut records = Vec::new();
    for item in &page.items {
        let record = message_record(&ctx, conv, item, &synced_at);
        let Some(key) = record.key() else { continue };
        if fresh.contains(&key) || rt.store.is_seen_with(&p.name, &key, covered)? {
            report.duplicates += 1;
            continue;
        }
        fresh.insert(key.clone());
        records.push((key, record));
    }
    // Order within a page is undefined upstream; oldest first makes each file read chronologically per page.
    records.sort_by(|a, b| id_cmp(&a.0.id, &b.0.id));
    next.messages_written += records.len() as u64;
    next.credits_total += page.credits;
    if let Some((k, _)) = records.last() {
        next.newest_id = newest_of(next.newest_id.as_deref(), Some(&k.id));
    }
    let written = records.len() as u64;
    // Fold the seen set every FOLD_EVERY records, so a long backfill keeps it small as it goes.
    let fold = (report.written + written) / FOLD_EVERY > report.written / FOLD_EVERY;
    let mut commit = Commit {
        conversations: vec![(p.name.clone(), conv.key().to_string(), next.clone())],
        credits: if page.credits > 0 { vec![(p.name.clone(), page.credits)] } else { Vec::new() },
        folds: if fold { vec![(p.name.clone(), conv.key().to_string())] } else { Vec::new() },
        ..Default::default()
    };
    let mut lines = Vec::with_capacity(records.len());
    for (key, record) in records {
        lines.push(record.to_line());
        commit.seen.push((p.name.clone(), key));
    }
    rt.handoff.write(Batch { lines, commit }).await?;
    shared.beat();
    if let Some(progress) = &shared.opts.progress {
        progress.pages.fetch_add(1, Ordering::Relaxed);
        progress.records.fetch_add(written, Ordering::Relaxed);
    }
    *st = next;
    report.pages += 1;
    report.written += written;
    report.credits += page.credits;
    Ok(())
}

fn newest(page: &Page, current: Option<&str>) -> Option<String> {
    page.items
        .iter()
        .map(|i| i.id.as_str())
        .fold(current.map(str::to_string), |acc, id| newest_of(acc.as_deref(), Some(id)))
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

fn newest_of(a: Option<&str>, b: Option<&str>) -> Option<String> {
    match (a, b) {
        (Some(a), Some(b)) => Some(if id_cmp(a, b).is_ge() { a } else { b }.to_string()),
        (a, b) => a.or(b).map(str::to_string),
    }
}

fn oldest_time(page: &Page) -> Option<SystemTime> {
    page.items.iter().filter_map(|i| i.created_at.as_deref().and_then(|t| humantime::parse_rfc3339_weak(t).ok())).min()
}

/// Milliseconds since the Unix epoch (0 for times before it).
pub fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
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
