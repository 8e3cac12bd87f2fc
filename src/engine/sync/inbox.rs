//! Whole-inbox sync (`inbox = true`, SPEC 8.2): every conversation of the account, including ones that
//! start after the config was written. It runs at the start of a pipeline's run, before and not beside the
//! listed conversations' passes, because it updates their per-conversation counters too.
//!
//! - **Stream** (X API v2, `GET /2/dm_events`): one pass over the account's whole event stream, with the
//!   same two frontiers a conversation has (a head pass from the newest page down to the stream's
//!   high-water mark, and a backfill toward the 30-day horizon), kept as a [`ConvState`] under
//!   [`INBOX_STREAM`]. Each event is routed to its conversation (1:1 by the peer, a group by its ID) and
//!   normalized by the same [`message_record`] as the per-conversation routes, with the stream's route as
//!   `source_endpoint`. Its exactly-once key is therefore the one the per-conversation route would give the
//!   same event, and the seen set is the same: a conversation that is also listed is never written twice.
//! - **Discovery** (GetXAPI, `POST /twitter/dm/list`): every page of each configured tab; each conversation
//!   found is remembered in the state and synced afterwards exactly like a listed `conv:<id>`.
//!
//! Exactly once, and the folded seen set: a stream page is a contiguous slice of the *account's* events, not
//! of one conversation's, so the stream never claims covered ranges for a conversation (it sets no
//! conversation's `hwm` or `covered_from`, the only inputs of a conversation's `Store::fold`). It keeps its
//! own `covered_from` (the first page and the backfill pages reach down from its `hwm` without a gap) and
//! asks for the stream's fold at the end of each run: one range for every conversation of the pipeline
//! (`state::inbox`), so discovered conversations no listed pass ever folds do not keep one exact key per
//! event. The stream updates a conversation's counters (`messages_written`, newest ID, last
//! sync) so `status` shows discovered conversations; nothing else writes those states while it runs.

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::Ordering;
use std::time::SystemTime;

use super::super::cursor_loop::LoopGuard;
use super::super::poll::Budget;
use super::{head_step, newest_of, ConvReport, RunShared, Stop};
use crate::config::ConversationRef;
use crate::engine::OpenPipeline;
use crate::handoff::Batch;
use crate::provider::{with_retry, ConversationList, ErrorClass, InboxPage, InboxRoute, ProviderError};
use crate::record::{id_cmp, message_record, unparsed_record, Context, Conversation};
use crate::state::{Commit, ConvState, Discovered, Store, INBOX_STREAM};
use crate::time::{now_string, unix_ms};

/// The name the inbox has in reports, adaptive polling (`RunOptions::quiet`) and `status`.
pub const INBOX_NAME: &str = "inbox";

/// What the inbox adds to a run: its report line, and (discovery) the conversations to sync like listed ones.
pub(super) struct InboxRun {
    pub(super) report: Option<ConvReport>,
    pub(super) extra: Vec<ConversationRef>,
}

/// The inbox part of a run. Skipped when the run names conversations (`--conversation`); the discovery or
/// stream request itself is skipped when adaptive polling finds the inbox quiet (previously discovered
/// conversations are still synced then).
pub(super) async fn run(pipe: &OpenPipeline, shared: &RunShared) -> InboxRun {
    if !shared.opts.only.is_empty() {
        return InboxRun { report: None, extra: Vec::new() };
    }
    let quiet = shared.opts.quiet.iter().any(|q| q == INBOX_NAME);
    let mut report = ConvReport {
        conversation: INBOX_NAME.to_string(),
        configured: INBOX_NAME.to_string(),
        ..ConvReport::default()
    };
    match pipe.client.inbox_route() {
        InboxRoute::None => InboxRun { report: None, extra: Vec::new() },
        InboxRoute::Stream => {
            if quiet {
                return InboxRun { report: None, extra: Vec::new() };
            }
            let outcome = stream(pipe, shared, &mut report).await;
            conclude(pipe, shared, &mut report, outcome);
            InboxRun { report: Some(report), extra: Vec::new() }
        }
        InboxRoute::Discovery => {
            let ran = !quiet;
            if ran {
                let outcome = discover(pipe, shared, &mut report).await;
                conclude(pipe, shared, &mut report, outcome);
            }
            let extra = match discovered_refs(pipe, shared).await {
                Ok(extra) => extra,
                Err(e) => {
                    tracing::error!(pipeline = %pipe.config.name, error = %e, "reading the discovered conversations failed");
                    report.error.get_or_insert(e);
                    Vec::new()
                }
            };
            InboxRun { report: ran.then_some(report), extra }
        }
    }
}

/// Records how the inbox part ended, as a conversation's run is recorded.
fn conclude(pipe: &OpenPipeline, shared: &RunShared, report: &mut ConvReport, outcome: Result<(), Stop>) {
    let p = &pipe.config;
    match outcome {
        Ok(()) => {
            tracing::info!(pipeline = %p.name, pages = report.pages, records = report.written, duplicates = report.duplicates, credits = report.credits, "inbox synced");
        }
        Err(Stop::Budget(spent)) => {
            let which = match spent {
                super::Spent::Run => "max_credits_per_run",
                super::Spent::Day => "max_credits_per_day",
            };
            report.limited = true;
            report.budget = Some(which.to_string());
        }
        Err(Stop::Cancelled) => {
            report.error = Some("stopped before finishing (shutdown or a fatal error in this pipeline)".into());
        }
        // The stream holds the whole pipeline before it starts; it is never left out half-way.
        Err(Stop::Busy) => report.busy = true,
        Err(Stop::Provider(e)) => {
            if e.class == ErrorClass::Fatal {
                if let Ok(mut f) = shared.fatal.lock() {
                    f.get_or_insert_with(|| e.to_string());
                }
                shared.stop.cancel();
            }
            tracing::error!(pipeline = %p.name, status = e.status, code = %e.code, error = %e, "inbox failed");
            report.error = Some(e.to_string());
        }
        Err(Stop::Write(e)) => {
            tracing::error!(pipeline = %p.name, error = %e, "inbox failed");
            report.error = Some(e);
        }
    }
}

/// Asks the provider once, within the run's budgets, retrying what is transient.
async fn ask<T, F, Fut>(pipe: &OpenPipeline, shared: &RunShared, op: F) -> Result<T, Stop>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<T, ProviderError>>,
{
    if shared.stop.is_cancelled() {
        return Err(Stop::Cancelled);
    }
    let p = &pipe.config;
    let budget = Budget { per_run: p.max_credits_per_run, per_day: p.max_credits_per_day };
    let today = if budget.per_day > 0 { pipe.store.credits_today(&p.name)? } else { 0 };
    budget.check(shared.credits.load(Ordering::Relaxed), today).map_err(Stop::Budget)?;
    with_retry(&p.retry, &shared.stop, || {
        shared.beat();
        let attempt = op();
        async move {
            let result = attempt.await;
            shared.note_pacing(&result);
            result
        }
    })
    .await
    .map_err(|e| {
        if shared.stop.is_cancelled() && e.class == ErrorClass::Transient {
            Stop::Cancelled
        } else {
            Stop::Provider(e)
        }
    })
}

// ---------------------------------------------------------------------------------------------
// Discovery (GetXAPI)

/// Walks every page of each tab and remembers each conversation not seen before.
async fn discover(pipe: &OpenPipeline, shared: &RunShared, report: &mut ConvReport) -> Result<(), Stop> {
    let p = &pipe.config;
    let endpoint = pipe.client.inbox_endpoint();
    for tab in &p.inbox_tabs {
        let mut cursor: Option<String> = None;
        // Listing pages name conversations already known on every run, so only the repeat rule applies here.
        let mut guard = LoopGuard::new(0);
        loop {
            guard.sending(cursor.as_deref());
            let page: ConversationList =
                ask(pipe, shared, || pipe.client.list_conversations(tab, cursor.as_deref())).await?;
            shared.credits.fetch_add(page.credits, Ordering::Relaxed);
            let now = unix_ms(SystemTime::now());
            let mut raw = Vec::new();
            for id in &page.conversation_ids {
                if !pipe.store.is_discovered(&p.name, id)? {
                    tracing::info!(pipeline = %p.name, conversation_id = %id, tab = %tab, "new conversation in the inbox");
                    raw.push(Store::discovered_entry(
                        &p.name,
                        &Discovered { conversation_id: id.clone(), first_seen_ms: now },
                    )?);
                }
            }
            let commit = Commit {
                raw,
                credits: if page.credits > 0 { vec![(p.name.clone(), page.credits)] } else { Vec::new() },
                ..Commit::default()
            };
            pipe.handoff.write(Batch { lines: Vec::new(), commit }).await?;
            shared.beat();
            report.pages += 1;
            report.credits += page.credits;
            tracing::debug!(pipeline = %p.name, tab = %tab, conversations = page.conversation_ids.len(), more = page.next_cursor.is_some(), "inbox page");
            match page.next_cursor {
                Some(next) => {
                    guard.follow(endpoint, 0, None, &next).map_err(Stop::Provider)?;
                    cursor = Some(next);
                }
                None => break,
            }
        }
    }
    Ok(())
}

/// The discovered conversations to sync like listed ones: every one in the state that is not already
/// listed under another spelling (a peer's ID, `@username`, `conv:`), so no conversation is synced twice
/// at once.
async fn discovered_refs(pipe: &OpenPipeline, shared: &RunShared) -> Result<Vec<ConversationRef>, String> {
    let p = &pipe.config;
    let account = pipe.client.account_user_id();
    let mut listed = HashSet::new();
    for c in &p.conversations {
        let key = match c {
            ConversationRef::Peer(id) => Some(id.clone()),
            ConversationRef::ConversationId(id) => {
                Some(Conversation::from_conversation_id(id, account).key().to_string())
            }
            // Resolved once and cached; if it cannot be, the listed pass fails the same way and syncs nothing.
            ConversationRef::Username(name) => pipe.user_id(name, &shared.stop).await.ok().map(|(id, _)| id),
        };
        listed.extend(key);
    }
    let found = pipe.store.discovered(&p.name).map_err(|e| e.to_string())?;
    let mut extra = Vec::new();
    for d in found {
        let key = Conversation::from_conversation_id(&d.conversation_id, account).key().to_string();
        if listed.insert(key) {
            extra.push(ConversationRef::ConversationId(d.conversation_id));
        }
    }
    Ok(extra)
}

// ---------------------------------------------------------------------------------------------
// The stream (X API v2)

/// One run of the stream: the head pass (or the first page ever), then backfill, as for a conversation.
async fn stream(pipe: &OpenPipeline, shared: &RunShared, report: &mut ConvReport) -> Result<(), Stop> {
    let st = pipe.store.conversation(&pipe.config.name, INBOX_STREAM)?;
    let mut pass = StreamPass { pipe, shared, st, report };
    let outcome = pass.run().await;
    let mut st = pass.st;
    if matches!(outcome, Err(Stop::Write(_))) {
        if let Ok(fresh) = pipe.store.conversation(&pipe.config.name, INBOX_STREAM) {
            st = fresh;
        }
    }
    st.last_sync_ms = Some(unix_ms(SystemTime::now()));
    st.last_error = match &outcome {
        Err(Stop::Provider(e)) => Some(e.to_string()),
        Err(Stop::Write(e)) => Some(e.clone()),
        _ => None,
    };
    pass.report.backfill_done = st.backfill_done;
    // The fold walks the pipeline's exact keys: once per run, not per page.
    let commit = Commit {
        conversations: vec![(pipe.config.name.clone(), INBOX_STREAM.to_string(), st)],
        folds: vec![(pipe.config.name.clone(), INBOX_STREAM.to_string())],
        ..Commit::default()
    };
    let _ = pipe.handoff.write(Batch { lines: Vec::new(), commit }).await;
    outcome
}

struct StreamPass<'a> {
    pipe: &'a OpenPipeline,
    shared: &'a RunShared,
    /// The stream's state as committed.
    st: ConvState,
    report: &'a mut ConvReport,
}

impl StreamPass<'_> {
    async fn run(&mut self) -> Result<(), Stop> {
        let opts = &self.shared.opts;
        let do_backfill = opts.backfill.unwrap_or(self.pipe.config.backfill);
        if opts.head || (do_backfill && !self.st.backfill_started) {
            if !self.st.backfill_started {
                let page = self.fetch(None).await?;
                let mut next = self.st.clone();
                next.hwm = newest_item(&page, None);
                next.backfill_started = true;
                next.backfill_done = page.next_cursor.is_none();
                next.backfill_cursor = page.next_cursor.clone();
                next.covered_from = lowest_item(&page, self.st.covered_from.as_deref());
                self.write_page(&page, next).await?;
            } else {
                let resumed = self.st.head_cursor.is_some();
                self.head_pass().await?;
                if resumed {
                    self.head_pass().await?;
                }
            }
        }
        if do_backfill && !self.st.backfill_done {
            self.backfill().await?;
        }
        Ok(())
    }

    /// From the newest page down to the stream's high-water mark (or to the end while nothing was seen).
    async fn head_pass(&mut self) -> Result<(), Stop> {
        let mut guard = LoopGuard::new(self.pipe.config.max_empty_pages);
        let mut restarted = false;
        loop {
            if self.shared.stop.is_cancelled() {
                return Err(Stop::Cancelled);
            }
            let cursor = self.st.head_cursor.clone();
            guard.sending(cursor.as_deref());
            let page = match self.fetch(cursor.as_deref()).await {
                Err(Stop::Provider(e)) if e.cursor_rejected && cursor.is_some() && !restarted => {
                    // The same rule as a conversation's pass: once, from the newest page.
                    restarted = true;
                    self.restarting(&e);
                    self.st.head_cursor = None;
                    guard = LoopGuard::new(self.pipe.config.max_empty_pages);
                    continue;
                }
                page => page?,
            };
            let mut next = self.st.clone();
            next.head_newest = newest_item(&page, self.st.head_newest.as_deref());
            let reached = match &self.st.hwm {
                Some(hwm) => page.items.iter().any(|(_, i)| id_cmp(&i.id, hwm).is_le()),
                None => false,
            };
            let done = head_step(&mut next, reached, page.next_cursor.as_deref());
            let written = self.write_page(&page, next).await?;
            if done {
                return Ok(());
            }
            self.follow(&mut guard, &page, written)?;
        }
    }

    /// Older pages toward the provider's horizon, within the run's page, credit and `--since` limits.
    async fn backfill(&mut self) -> Result<(), Stop> {
        let p = &self.pipe.config;
        let max_pages =
            self.shared.opts.max_pages.or((p.backfill_max_pages_per_run > 0).then_some(p.backfill_max_pages_per_run));
        let mut pages = 0u64;
        let mut guard = LoopGuard::new(p.max_empty_pages);
        let mut restarted = false;
        while !self.st.backfill_done {
            if self.shared.stop.is_cancelled() {
                return Err(Stop::Cancelled);
            }
            if max_pages.is_some_and(|m| pages >= m) {
                self.report.limited = true;
                return Ok(());
            }
            let cursor = self.st.backfill_cursor.clone();
            guard.sending(cursor.as_deref());
            let page = match self.fetch(cursor.as_deref()).await {
                Err(Stop::Provider(e)) if e.cursor_rejected && cursor.is_some() && !restarted => {
                    // From the newest page down to where it was and on; the seen set skips the overlap.
                    restarted = true;
                    self.restarting(&e);
                    self.st.backfill_cursor = None;
                    guard = LoopGuard::new(p.max_empty_pages);
                    continue;
                }
                page => page?,
            };
            pages += 1;
            let mut next = self.st.clone();
            next.backfill_done = page.next_cursor.is_none();
            next.backfill_cursor = page.next_cursor.clone();
            // Backfill pages reach down from what is covered without a gap (a restarted walk re-reads from
            // the newest page, and lowers nothing until it passes below).
            next.covered_from = lowest_item(&page, self.st.covered_from.as_deref());
            let reached_since =
                self.shared.opts.since.is_some_and(|since| oldest_item_time(&page).is_some_and(|t| t < since));
            let written = self.write_page(&page, next).await?;
            if reached_since && !self.st.backfill_done {
                self.report.limited = true;
                return Ok(());
            }
            self.follow(&mut guard, &page, written)?;
        }
        Ok(())
    }

    fn restarting(&self, e: &ProviderError) {
        tracing::warn!(pipeline = %self.pipe.config.name, status = e.status, code = %e.code, "the provider no longer accepts the inbox stream's cursor; restarting the pass from the newest page");
    }

    /// Whether the pass may follow the page's cursor: the same loop rules as a conversation's pass.
    fn follow(&self, guard: &mut LoopGuard, page: &InboxPage, written: u64) -> Result<(), Stop> {
        let Some(next) = page.next_cursor.as_deref() else { return Ok(()) };
        let lowest = page.items.iter().map(|(_, i)| i.id.as_str()).min_by(|a, b| id_cmp(a, b));
        guard.follow(self.pipe.client.inbox_endpoint(), written, lowest, next).map_err(Stop::Provider)
    }

    async fn fetch(&mut self, cursor: Option<&str>) -> Result<InboxPage, Stop> {
        let pipe = self.pipe;
        let page = ask(pipe, self.shared, || pipe.client.inbox_stream(cursor)).await?;
        self.shared.credits.fetch_add(page.credits, Ordering::Relaxed);
        tracing::debug!(pipeline = %pipe.config.name, cursor = cursor.unwrap_or(""), items = page.items.len(), next_cursor = page.next_cursor.as_deref().unwrap_or(""), "inbox page");
        Ok(page)
    }

    /// Writes a page's unseen records, each under its own conversation, and commits the stream's `next`
    /// state, the touched conversations' counters and the newly discovered conversations with them.
    /// Returns how many records it wrote.
    async fn write_page(&mut self, page: &InboxPage, mut next: ConvState) -> Result<u64, Stop> {
        let pipe = self.pipe;
        let p = &pipe.config;
        let ctx = Context {
            provider: p.provider.name(),
            pipeline: &p.name,
            account: &p.account,
            account_user_id: pipe.client.account_user_id(),
            redact_text: p.redact_text,
            source_endpoint: pipe.client.inbox_endpoint(),
        };
        let synced_at = now_string();
        let mut fresh = HashSet::new();
        let mut records = Vec::new();
        for (conv, item) in &page.items {
            let record = message_record(&ctx, conv, item, &synced_at);
            let Some(key) = record.key() else { continue };
            if fresh.contains(&key) || pipe.store.is_seen(&p.name, &key)? {
                self.report.duplicates += 1;
                continue;
            }
            fresh.insert(key.clone());
            records.push((key, record, conv));
        }
        records.sort_by(|a, b| id_cmp(&a.0.id, &b.0.id));
        // Per conversation: how many records, the newest ID, and its provider conversation ID.
        let mut touched: BTreeMap<&str, (u64, Option<String>, Option<&str>)> = BTreeMap::new();
        for (key, _, conv) in &records {
            let e = touched.entry(conv.key()).or_insert((0, None, conversation_id(conv)));
            e.0 += 1;
            e.1 = newest_of(e.1.as_deref(), Some(&key.id));
        }
        let written = records.len() as u64;
        next.messages_written += written;
        next.credits_total += page.credits;
        if let Some((k, _, _)) = records.last() {
            next.newest_id = newest_of(next.newest_id.as_deref(), Some(&k.id));
        }
        let now = unix_ms(SystemTime::now());
        let mut commit = Commit {
            conversations: vec![(p.name.clone(), INBOX_STREAM.to_string(), next.clone())],
            credits: if page.credits > 0 { vec![(p.name.clone(), page.credits)] } else { Vec::new() },
            ..Commit::default()
        };
        for (key, (n, newest_id, conversation_id)) in touched {
            // Counters only: `hwm`, cursors and `covered_from` belong to the conversation's own pass.
            let mut st = pipe.store.conversation(&p.name, key)?;
            st.messages_written += n;
            st.newest_id = newest_of(st.newest_id.as_deref(), newest_id.as_deref());
            st.last_sync_ms = Some(now);
            commit.conversations.push((p.name.clone(), key.to_string(), st));
            if let Some(id) = conversation_id {
                if !pipe.store.is_discovered(&p.name, id)? {
                    tracing::info!(pipeline = %p.name, conversation_id = %id, "new conversation in the inbox");
                    let d = Discovered { conversation_id: id.to_string(), first_seen_ms: now };
                    commit.raw.push(Store::discovered_entry(&p.name, &d)?);
                }
            }
        }
        let mut lines = Vec::with_capacity(records.len() + page.unparsed.len());
        for (key, record, _) in records {
            lines.push(record.to_line());
            commit.seen.push((p.name.clone(), key));
        }
        // Events that could not be normalized are kept as `dm_unparsed` under their conversation, or under
        // the stream itself when they name none; they move no conversation's counters or high-water mark.
        let stream = Conversation::Group { conversation_id: INBOX_STREAM.to_string() };
        let mut unparsed_written = 0;
        for (conv, u) in &page.unparsed {
            let conv = conv.as_ref().unwrap_or(&stream);
            let record = unparsed_record(&ctx, conv, u, &synced_at);
            let Some(key) = record.key() else { continue };
            if fresh.contains(&key) || pipe.store.is_seen(&p.name, &key)? {
                self.report.duplicates += 1;
                continue;
            }
            tracing::warn!(pipeline = %p.name, conversation = %conv.key(), reason = %u.reason, "an event could not be normalized; written as dm_unparsed");
            fresh.insert(key.clone());
            lines.push(record.to_line());
            commit.seen.push((p.name.clone(), key));
            unparsed_written += 1;
        }
        let written = written + unparsed_written;
        pipe.handoff.write(Batch { lines, commit }).await?;
        self.shared.page_committed(self.report, written, page.credits);
        self.st = next;
        Ok(written)
    }
}

/// The provider conversation ID of a conversation reached through the inbox.
fn conversation_id(conv: &Conversation) -> Option<&str> {
    match conv {
        Conversation::Peer { conversation_id, .. } => conversation_id.as_deref(),
        Conversation::Group { conversation_id } => Some(conversation_id),
    }
}

/// The newest item ID of a stream page, or `current` if that is newer.
fn newest_item(page: &InboxPage, current: Option<&str>) -> Option<String> {
    page.items.iter().fold(current.map(str::to_string), |acc, (_, i)| newest_of(acc.as_deref(), Some(&i.id)))
}

/// The lowest numeric item ID of a stream page, or `current` if that is lower (non-numeric IDs are never
/// folded, so they do not count).
fn lowest_item(page: &InboxPage, current: Option<&str>) -> Option<String> {
    current
        .into_iter()
        .chain(page.items.iter().map(|(_, i)| i.id.as_str()))
        .filter_map(|id| crate::state::numeric_id(id).map(|n| (n, id)))
        .min_by_key(|(n, _)| *n)
        .map(|(_, id)| id.to_string())
}

/// The oldest `created_at` on a stream page.
fn oldest_item_time(page: &InboxPage) -> Option<SystemTime> {
    page.items.iter().filter_map(|(_, i)| i.created_at.as_deref().and_then(crate::record::parse_time)).min()
}
