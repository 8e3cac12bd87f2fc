//! A pipeline's single writer: appends records to its sink, then commits the state that covers them.
//!
//! Every change of durable state for a pipeline goes through [`Handoff::write`], which is what makes the
//! order of SPEC section 4 hold: lines written, fsync, then one atomic state commit that includes the
//! sink's new [`crate::sink::CommitPoint`]. Writes are *group-committed*: a dedicated thread takes whatever batches
//! queued up while the previous fsync ran (up to [`GROUP_MAX_BYTES`]) and makes them durable with one
//! write, one fsync and one sled flush, so many conversations cost one fsync, not one each. A caller is
//! answered only after its batch is durable.
//!
//! The metrics that say what was delivered move here too, and only here: after a group's state commit has
//! succeeded, the writer adds its records by kind, its credits and the segments it closed, and sets the
//! freshness gauges from the [`Freshness`] it committed. A failed group moves nothing, so a metric never
//! counts a record the files and the state do not both hold.
//!
//! Recovery lives here too: opening a sink hands back the lines that reached the disk after the last
//! commit, and [`reconcile`] folds their keys into the seen set before anything new is written. After
//! any write or commit error the sink is dropped and reopened on the next batch, so a partial failure
//! (lines on disk, state not committed) is reconciled before the pipeline writes again.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::SystemTime;

use tokio::sync::{mpsc, oneshot};

use crate::metrics::PipelineMetrics;
use crate::record::{id_cmp, kind_of_line, Key, Kind, Record};
use crate::sink::{CommitPoint, Finisher, Sink, SinkConfig};
use crate::state::{Commit, ConvState, Freshness, Store};

/// Held by a writer while it appends and commits, and by [`exit_now`]: an immediate exit (second
/// Ctrl-C) waits for the append in progress, so even then no line is left torn.
static WRITE_GATE: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Exits the process at once, but never in the middle of an append.
pub fn exit_now(code: i32) -> ! {
    let _gate = WRITE_GATE.lock();
    std::process::exit(code)
}

/// Upper bound on one group commit's new bytes: bounds memory and the latency of the batch that waits longest.
pub const GROUP_MAX_BYTES: usize = 8 * 1024 * 1024;

/// Lines to append and the state change they justify.
#[derive(Debug, Default)]
pub struct Batch {
    /// Complete JSON lines, without `\n`.
    pub lines: Vec<String>,
    /// Applied atomically with the sink's new position, after the lines are on disk.
    pub commit: Commit,
}

/// A write or commit failed; nothing of the batch was committed. Cloned to every batch of a failed group.
#[derive(Clone, Debug, thiserror::Error)]
#[error("{0}")]
pub struct HandoffError(pub String);

/// A batch in the writer's queue; await it for the outcome of its commit.
#[must_use = "a queued batch is only known durable once awaited"]
pub struct Queued {
    rx: Option<oneshot::Receiver<Result<(), HandoffError>>>,
}

impl std::future::Future for Queued {
    type Output = Result<(), HandoffError>;

    fn poll(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<Self::Output> {
        let stopped = || HandoffError("the pipeline writer has stopped".into());
        match self.rx.as_mut() {
            None => std::task::Poll::Ready(Err(stopped())),
            Some(rx) => std::pin::Pin::new(rx).poll(cx).map(|r| r.unwrap_or_else(|_| Err(stopped()))),
        }
    }
}

/// Why a pipeline's writer could not start. `Locked` is told apart so the caller can exit with the
/// "held by another process" code.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// Another process holds the lock on the pipeline's active file.
    #[error("opening output: {0}")]
    Locked(crate::sink::SinkError),
    #[error("{0}")]
    Failed(HandoffError),
}

impl From<OpenError> for HandoffError {
    fn from(e: OpenError) -> HandoffError {
        match e {
            OpenError::Failed(e) => e,
            locked => HandoffError(locked.to_string()),
        }
    }
}

impl From<HandoffError> for OpenError {
    fn from(e: HandoffError) -> OpenError {
        OpenError::Failed(e)
    }
}

/// What start-up recovery found and repaired.
#[derive(Clone, Debug, Default)]
pub struct Recovery {
    pub torn_bytes_cut: u64,
    /// Lines that were on disk but not in state, now reconciled into the seen set.
    pub lines_reconciled: u64,
}

/// What the writer thread is asked to do, in order.
// `Close` is sent once per writer and `Write` once per page: boxing the batch to shrink the rare variant would
// add an allocation to every page for nothing.
#[allow(clippy::large_enum_variant)]
enum Request {
    Write {
        batch: Batch,
        reply: oneshot::Sender<Result<(), HandoffError>>,
    },
    /// Finish what is queued before this, close the active file (fsync) and stop.
    Close,
}

/// Handle to a pipeline's writer thread. Shared (`Arc`) by every task of the pipeline; any holder may close
/// it, and closing waits for the thread, so no path can leave the writer running unjoined.
pub struct Handoff {
    tx: mpsc::UnboundedSender<Request>,
    thread: std::sync::Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl Handoff {
    /// Opens the pipeline's sink, reconciles what the last run left uncommitted, and starts the writer.
    pub fn open(store: Arc<Store>, pipeline: &str, cfg: SinkConfig) -> Result<(Handoff, Recovery), OpenError> {
        let freshness = store.freshness(pipeline).map_err(|e| HandoffError(e.to_string()))?;
        let metrics = crate::metrics::global().pipeline(pipeline);
        // The gauges start from what the state remembers, so a restarted daemon does not look stale.
        show_freshness(&metrics, &freshness);
        let mut writer = Writer {
            store,
            pipeline: pipeline.to_string(),
            cfg,
            sink: None,
            finisher: None,
            metrics,
            freshness,
            committed_seq: None,
            reconciled: HashSet::new(),
        };
        let recovery = writer.ensure_open()?;
        // Compression and manifests of closed segments run beside the writer, never in its way.
        let finisher = Finisher::start(&writer.cfg, pipeline)
            .map_err(|e| HandoffError(format!("cannot start the segment finishing thread: {e}")))?;
        if let Some(sink) = &writer.sink {
            finisher.committed(sink.position().seq);
        }
        writer.finisher = Some(finisher);
        let (tx, rx) = mpsc::unbounded_channel();
        let thread = std::thread::Builder::new()
            .name(format!("handoff-{pipeline}"))
            .spawn(move || writer.run(rx))
            .map_err(|e| HandoffError(format!("cannot start the writer thread: {e}")))?;
        Ok((Handoff { tx, thread: std::sync::Mutex::new(Some(thread)) }, recovery))
    }

    /// Makes a batch durable; returns once its lines are fsynced and its state committed.
    pub async fn write(&self, batch: Batch) -> Result<(), HandoffError> {
        self.enqueue(batch).await
    }

    /// Queues a batch and returns at once; the returned future resolves once its lines are fsynced and its state
    /// committed. Batches are committed in the order they are queued, so a caller may ask for its next page
    /// while this one is made durable, and still see its commits in order.
    pub fn enqueue(&self, batch: Batch) -> Queued {
        let (reply, rx) = oneshot::channel();
        let sent = self.tx.send(Request::Write { batch, reply }).is_ok();
        Queued { rx: sent.then_some(rx) }
    }

    /// Lets the writer close the active file by age even when nothing new arrives.
    pub async fn tick(&self) -> Result<(), HandoffError> {
        self.write(Batch::default()).await
    }

    /// Stops the writer after it has finished every batch queued before this call, fsyncs the active file
    /// and joins the thread. Later writes fail with "the pipeline writer has stopped". Idempotent.
    pub async fn close(&self) {
        let thread = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take();
        let Some(thread) = thread else { return };
        let _ = self.tx.send(Request::Close);
        let _ = tokio::task::spawn_blocking(move || thread.join()).await;
    }
}

impl Drop for Handoff {
    fn drop(&mut self) {
        // Dropping the last sender ends the writer loop after the queued batches; `close` also joins it, a
        // plain drop lets it finish alone.
        let _ = self.tx.send(Request::Close);
    }
}

struct Writer {
    store: Arc<Store>,
    pipeline: String,
    cfg: SinkConfig,
    /// None after a failure: the next batch reopens it, which reconciles anything left uncommitted.
    sink: Option<Sink>,
    /// Compresses and describes closed segments once a commit covers them; joined on close.
    finisher: Option<Finisher>,
    metrics: PipelineMetrics,
    /// The pipeline's freshness as committed (the gauges show it).
    freshness: Freshness,
    /// The sink generation of the last commit: a later commit's generation minus this is the number of
    /// segments it closed. None until the first commit of this writer.
    committed_seq: Option<u64>,
    /// Keys the last reopen folded into the seen set from lines it found on disk after the commit point.
    /// Batches checked against the seen set before that fold (queued while the sink could not be reopened:
    /// a rotation's new file failed with EMFILE, ENOSPC, EIO) may carry the same records; their lines are
    /// dropped here, so a record is written once whatever failed where. Cleared after the first group that
    /// needed no drop and came after the reopen's group: batches queued later were checked after the fold.
    reconciled: HashSet<Key>,
}

impl Writer {
    fn run(mut self, mut rx: mpsc::UnboundedReceiver<Request>) {
        let mut closing = false;
        while !closing {
            let Some(Request::Write { batch, reply }) = rx.blocking_recv() else { break };
            let mut bytes: usize = batch.lines.iter().map(|l| l.len() + 1).sum();
            let mut group = vec![(batch, reply)];
            while bytes < GROUP_MAX_BYTES {
                match rx.try_recv() {
                    Ok(Request::Write { batch, reply }) => {
                        bytes += batch.lines.iter().map(|l| l.len() + 1).sum::<usize>();
                        group.push((batch, reply));
                    }
                    Ok(Request::Close) => {
                        closing = true;
                        break;
                    }
                    Err(_) => break,
                }
            }
            // Sized once, and the first batch's commit is the group's: merging every batch into an empty
            // one regrew each vector once per page (2% of a backfill's CPU in allocation alone).
            let mut lines = Vec::with_capacity(group.iter().map(|(b, _)| b.lines.len()).sum());
            let mut commit: Option<Commit> = None;
            let mut replies = Vec::with_capacity(group.len());
            for (batch, reply) in group {
                lines.extend(batch.lines);
                match commit.as_mut() {
                    Some(c) => c.merge(batch.commit),
                    None => commit = Some(batch.commit),
                }
                replies.push(reply);
            }
            let commit = commit.unwrap_or_default();
            let result = self.commit_group(lines, commit);
            if let Err(e) = &result {
                tracing::error!(pipeline = %self.pipeline, error = %e, "write failed; nothing of this batch was committed");
            }
            for reply in replies {
                let _ = reply.send(result.clone());
            }
        }
        if let Some(sink) = self.sink.take() {
            if let Err(e) = sink.close() {
                tracing::error!(pipeline = %self.pipeline, error = %e, "closing the active file");
            }
        }
        if let Some(finisher) = self.finisher.take() {
            finisher.close();
        }
    }

    /// Tells the finisher that every generation before `seq` is now covered by committed state.
    fn committed(&self, seq: u64) {
        if let Some(f) = &self.finisher {
            f.committed(seq);
        }
    }

    fn commit_group(&mut self, mut lines: Vec<String>, mut commit: Commit) -> Result<(), HandoffError> {
        // A poisoned gate only means another writer panicked; the gate guards no data.
        let _gate = WRITE_GATE.lock().unwrap_or_else(|p| p.into_inner());
        let filter_was_armed = !self.reconciled.is_empty();
        self.ensure_open().map_err(HandoffError::from)?;
        if !self.reconciled.is_empty() {
            let before = lines.len();
            lines.retain(|line| {
                let key = serde_json::from_str::<Record>(line).ok().and_then(|r| r.key());
                !key.is_some_and(|k| self.reconciled.contains(&k))
            });
            let dropped = before - lines.len();
            if dropped > 0 {
                tracing::warn!(pipeline = %self.pipeline, lines = dropped, "records already in the files (found there when the output was reopened) are not written again");
            } else if filter_was_armed {
                self.reconciled.clear();
            }
        }
        let Some(sink) = self.sink.as_mut() else {
            return Err(HandoffError("the output is not open".into()));
        };
        let now = SystemTime::now();
        let point = if lines.is_empty() {
            sink.rotate_if_due(now).map(|p| p.unwrap_or_else(|| sink.position()))
        } else {
            sink.append(&lines, now)
        };
        let point = match point {
            Ok(p) => p,
            Err(e) => {
                self.reopen_after_failure();
                return Err(HandoffError(format!("output {}: {e}", self.cfg.dir.display())));
            }
        };
        commit.sink_points.push((self.pipeline.clone(), point));
        if let Err(e) = self.store.commit(&commit) {
            // The lines are on disk but the state does not know: reopen, which reconciles them.
            self.reopen_after_failure();
            return Err(HandoffError(e.to_string()));
        }
        self.committed(point.seq);
        self.delivered(&lines, &commit, point);
        Ok(())
    }

    /// Moves the metrics by what a successful commit made durable: per group, not per line, apart from
    /// reading each line's kind from its first bytes.
    fn delivered(&mut self, lines: &[String], commit: &Commit, point: CommitPoint) {
        // A group holds a kind or two; a short list beats a map.
        let mut kinds: Vec<(&str, u64)> = Vec::new();
        for line in lines {
            let kind = kind_of_line(line);
            match kinds.iter_mut().find(|(k, _)| *k == kind) {
                Some((_, n)) => *n += 1,
                None => kinds.push((kind, 1)),
            }
        }
        for (kind, n) in kinds {
            self.metrics.records(kind, n);
        }
        let mine = |p: &String| *p == self.pipeline;
        self.metrics.credits(commit.credits.iter().filter(|(p, _)| mine(p)).map(|(_, n)| n).sum());
        self.metrics_committed(commit, point);
    }

    /// What every successful commit of this writer, recovery's included, moves: segments closed since the
    /// previous commit, and the freshness gauges.
    fn metrics_committed(&mut self, commit: &Commit, point: CommitPoint) {
        if let Some(before) = self.committed_seq.replace(point.seq) {
            self.metrics.segments_closed(point.seq.saturating_sub(before));
        }
        let before = self.freshness.clone();
        for (_, f) in commit.freshness.iter().filter(|(p, _)| *p == self.pipeline) {
            self.freshness.merge(f);
        }
        if self.freshness != before {
            show_freshness(&self.metrics, &self.freshness);
        }
    }

    /// Drops the sink and reopens it at once, reconciling whatever the failed group left on disk, so the
    /// callers (answered after this) see reconciled state. If reopening fails too (the disk is still full),
    /// the next batch tries again before it writes anything.
    fn reopen_after_failure(&mut self) {
        self.sink = None;
        if let Err(e) = self.ensure_open() {
            tracing::warn!(pipeline = %self.pipeline, error = %e, "output not reopened yet; will retry before the next write");
        }
    }

    fn ensure_open(&mut self) -> Result<Recovery, OpenError> {
        if self.sink.is_some() {
            return Ok(Recovery::default());
        }
        let committed = self.store.commit_point(&self.pipeline).map_err(|e| HandoffError(e.to_string()))?;
        let (sink, recovered) = Sink::open(self.cfg.clone(), committed).map_err(|e| match e {
            locked @ crate::sink::SinkError::Locked { .. } => OpenError::Locked(locked),
            e => OpenError::Failed(HandoffError(format!("opening output {}: {e}", self.cfg.dir.display()))),
        })?;
        let mut commit =
            reconcile(&self.store, &self.pipeline, &recovered.lines).map_err(|e| HandoffError(e.to_string()))?;
        // Replaced, not added to: older keys were folded before any batch of the groups since was checked.
        self.reconciled = commit.seen.iter().filter(|(p, _)| *p == self.pipeline).map(|(_, k)| k.clone()).collect();
        let recovery =
            Recovery { torn_bytes_cut: recovered.torn_bytes_cut, lines_reconciled: recovered.lines.len() as u64 };
        if recovery.torn_bytes_cut > 0 || recovery.lines_reconciled > 0 {
            tracing::warn!(
                pipeline = %self.pipeline,
                torn_bytes_cut = recovery.torn_bytes_cut,
                lines_reconciled = recovery.lines_reconciled,
                "recovered output left by an interrupted run"
            );
        }
        let point = sink.position();
        commit.sink_points.push((self.pipeline.clone(), point));
        self.store.commit(&commit).map_err(|e| HandoffError(e.to_string()))?;
        self.committed(point.seq);
        self.metrics_committed(&commit, point);
        self.sink = Some(sink);
        Ok(recovery)
    }
}

/// Sets the freshness gauges from the state's facts (a fact not known yet leaves its gauge absent).
fn show_freshness(metrics: &PipelineMetrics, f: &Freshness) {
    if let Some(ms) = f.last_success_ms {
        metrics.last_run_success(std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms));
    }
    if let Some(at) = f.newest_created_at.as_deref().and_then(|t| humantime::parse_rfc3339(t).ok()) {
        metrics.newest_record_created(at);
    }
}

/// Folds lines that are on disk but not in state into the seen set and the per-conversation counters.
pub fn reconcile(store: &Store, pipeline: &str, lines: &[String]) -> Result<Commit, crate::state::StateError> {
    let mut commit = Commit::default();
    let mut fresh = HashSet::new();
    let mut convs: BTreeMap<String, ConvState> = BTreeMap::new();
    let mut newest_created: Option<String> = None;
    for line in lines {
        let record = serde_json::from_str::<Record>(line).ok();
        let Some(key) = record.as_ref().and_then(Record::key) else {
            tracing::warn!(pipeline, "a recovered line is not a dm-handoff record; left as it is");
            continue;
        };
        if store.is_seen(pipeline, &key)? || !fresh.insert(key.clone()) {
            continue;
        }
        if matches!(key.kind, Kind::DmMessage | Kind::DmEvent) {
            // The line is in the files now, so it counts for the freshness `status` and the metrics show.
            let created = record.and_then(|r| r.created_at);
            if created > newest_created {
                newest_created = created;
            }
            let st = match convs.get_mut(&key.conversation) {
                Some(st) => st,
                None => {
                    let st = store.conversation(pipeline, &key.conversation)?;
                    convs.entry(key.conversation.clone()).or_insert(st)
                }
            };
            st.messages_written += 1;
            if st.newest_id.as_deref().is_none_or(|n| id_cmp(&key.id, n).is_gt()) {
                st.newest_id = Some(key.id.clone());
            }
        }
        commit.seen.push((pipeline.to_string(), key));
    }
    commit.conversations = convs.into_iter().map(|(c, st)| (pipeline.to_string(), c, st)).collect();
    if newest_created.is_some() {
        commit
            .freshness
            .push((pipeline.to_string(), Freshness { newest_created_at: newest_created, ..Freshness::default() }));
    }
    Ok(commit)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::StoreOptions;

    fn sample(text: &str, series: &str) -> Option<f64> {
        text.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
    }

    /// A rotation renames the active file, then the new one cannot be made (EMFILE) and the reopen right after
    /// fails too. The callers, told the write failed, check the seen set (which does not know the lines in the
    /// closed segment yet) and send the same records again: the reopen folds those lines in and the writer
    /// must not append them a second time. Then a new record still lands.
    #[test]
    fn records_resent_after_a_failed_rotation_are_written_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(&dir.path().join("state"), StoreOptions::default()).unwrap());
        let pipeline = "handoff-emfile-test";
        let cfg = SinkConfig {
            dir: dir.path().join("out"),
            file_name: "xquik-dm-handoff.jsonl".into(),
            rotate_max_bytes: 1024,
            rotate_max_age: None,
            compress: crate::sink::Compression::None,
        };
        let line = |id: u32| {
            Record {
                kind: Some(Kind::DmMessage),
                pipeline: pipeline.into(),
                conversation_user_id: Some("44196397".into()),
                message_id: Some(format!("1893456789012{id:06}")),
                text: Some("x".repeat(300)),
                ..Record::default()
            }
            .to_line()
        };
        let mut w = Writer {
            store: store.clone(),
            pipeline: pipeline.into(),
            cfg: cfg.clone(),
            sink: None,
            finisher: None,
            metrics: crate::metrics::global().pipeline(pipeline),
            freshness: Freshness::default(),
            committed_seq: None,
            reconciled: HashSet::new(),
        };
        w.ensure_open().unwrap();
        // About 400 bytes a line under 1,024: two lines go in, then the rotation before the third.
        let batch: Vec<String> = (0..4).map(line).collect();
        crate::sink::open_fault::arm(2);
        assert!(w.commit_group(batch.clone(), Commit::default()).is_err(), "the rotation's new file must fail");
        assert!(w.sink.is_none(), "the reopen after the failure failed too");
        w.commit_group(batch.clone(), Commit::default()).unwrap();
        w.commit_group(vec![line(9)], Commit::default()).unwrap();

        let mut ids: Vec<String> = Vec::new();
        for e in std::fs::read_dir(&cfg.dir).unwrap() {
            let path = e.unwrap().path();
            if path.extension().is_some_and(|x| x == "jsonl") {
                for l in std::fs::read_to_string(&path).unwrap().lines() {
                    ids.push(serde_json::from_str::<Record>(l).unwrap().message_id.unwrap());
                }
            }
        }
        ids.sort();
        let want: Vec<String> = [0, 1, 2, 3, 9].into_iter().map(|i| format!("1893456789012{i:06}")).collect();
        assert_eq!(ids, want, "every record once, the new one included");
    }

    /// The metrics move by what a commit delivered, and the freshness gauges come back from the state when
    /// the pipeline is opened again (a restarted daemon).
    #[tokio::test]
    async fn a_commit_moves_the_metrics_and_a_reopen_restores_the_freshness_gauges() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(&dir.path().join("state"), StoreOptions::default()).unwrap());
        let pipeline = "handoff-metrics-test";
        let cfg = SinkConfig {
            dir: dir.path().join("out"),
            file_name: "xquik-dm-handoff.jsonl".into(),
            rotate_max_bytes: 1024,
            rotate_max_age: None,
            compress: crate::sink::Compression::None,
        };
        let line = |kind: Kind, id: u32| {
            let r = Record {
                kind: Some(kind),
                pipeline: pipeline.into(),
                conversation_user_id: Some("44196397".into()),
                message_id: Some(format!("1893456789012{id:06}")),
                text: Some("x".repeat(300)),
                ..Record::default()
            };
            r.to_line()
        };
        let (handoff, _) = Handoff::open(store.clone(), pipeline, cfg.clone()).unwrap();
        let fresh = |at: &str, ok: Option<u64>| {
            vec![(pipeline.to_string(), Freshness { newest_created_at: Some(at.into()), last_success_ms: ok })]
        };
        let batch = Batch {
            lines: (0..6).map(|i| line(Kind::DmMessage, i)).chain([line(Kind::DmSend, 99)]).collect(),
            commit: Commit {
                credits: vec![(pipeline.to_string(), 6)],
                freshness: fresh("2026-02-24T10:00:00.500Z", Some(1_771_927_300_000)),
                ..Commit::default()
            },
        };
        handoff.write(batch).await.unwrap();
        // An older created_at never moves the gauge back.
        let commit = Commit { freshness: fresh("2020-01-01T00:00:00.000Z", None), ..Commit::default() };
        handoff.write(Batch { lines: vec![], commit }).await.unwrap();
        handoff.close().await;
        // Closed segments: `<stem>.<ts>.<seq>.jsonl` (manifests beside them end in `.manifest.json`).
        let names: Vec<String> = std::fs::read_dir(&cfg.dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        let segments = names.iter().filter(|n| n.ends_with(".jsonl") && *n != &cfg.file_name).count() as f64;
        assert!(segments >= 2.0, "7 lines of about 400 bytes under a 1,024-byte limit rotate");

        let text = crate::metrics::global().encode_text();
        let at = |s: &str| sample(&text, &s.replace("P", pipeline)).unwrap_or_else(|| panic!("no {s}:\n{text}"));
        assert_eq!(at(r#"dm_handoff_records_written_total{pipeline="P",kind="dm_message"}"#), 6.0);
        assert_eq!(at(r#"dm_handoff_records_written_total{pipeline="P",kind="dm_send"}"#), 1.0);
        assert_eq!(at(r#"dm_handoff_credits_spent_total{pipeline="P"}"#), 6.0);
        assert_eq!(at(r#"dm_handoff_segments_closed_total{pipeline="P"}"#), segments);
        assert_eq!(at(r#"dm_handoff_newest_record_created_timestamp_seconds{pipeline="P"}"#), 1_771_927_200.5);
        assert_eq!(at(r#"dm_handoff_last_run_success_timestamp_seconds{pipeline="P"}"#), 1_771_927_300.0);

        // Gone (a reload removed it), then opened again: the gauges come back from the state.
        crate::metrics::global().forget_pipeline(pipeline);
        assert!(!crate::metrics::global()
            .encode_text()
            .contains("newest_record_created_timestamp_seconds{pipeline=\"handoff-metrics-test\"}"));
        let (handoff, _) = Handoff::open(store, pipeline, cfg).unwrap();
        handoff.close().await;
        let text = crate::metrics::global().encode_text();
        let at = |s: &str| sample(&text, &s.replace("P", pipeline));
        assert_eq!(at(r#"dm_handoff_newest_record_created_timestamp_seconds{pipeline="P"}"#), Some(1_771_927_200.5));
        assert_eq!(at(r#"dm_handoff_last_run_success_timestamp_seconds{pipeline="P"}"#), Some(1_771_927_300.0));
        assert_eq!(at(r#"dm_handoff_records_written_total{pipeline="P",kind="dm_message"}"#), Some(6.0));
    }
}
