//! A pipeline's single writer: appends records to its sink, then commits the state that covers them.
//!
//! Every change of durable state for a pipeline goes through [`Handoff::write`], which is what makes the
//! order of SPEC section 4 hold: lines written, fsync, then one atomic state commit that includes the
//! sink's new [`crate::sink::CommitPoint`]. Writes are *group-committed*: a dedicated thread takes whatever batches
//! queued up while the previous fsync ran (up to [`GROUP_MAX_BYTES`]) and makes them durable with one
//! write, one fsync and one sled flush, so many conversations cost one fsync, not one each. A caller is
//! answered only after its batch is durable.
//!
//! Recovery lives here too: opening a sink hands back the lines that reached the disk after the last
//! commit, and [`reconcile`] folds their keys into the seen set before anything new is written. After
//! any write or commit error the sink is dropped and reopened on the next batch, so a partial failure
//! (lines on disk, state not committed) is reconciled before the pipeline writes again.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::SystemTime;

use tokio::sync::{mpsc, oneshot};

use crate::record::{id_cmp, key_of_line, Kind};
use crate::sink::{Finisher, Sink, SinkConfig};
use crate::state::{Commit, ConvState, Store};

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
        let mut writer = Writer { store, pipeline: pipeline.to_string(), cfg, sink: None, finisher: None };
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
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Request::Write { batch, reply })
            .map_err(|_| HandoffError("the pipeline writer has stopped".into()))?;
        rx.await.map_err(|_| HandoffError("the pipeline writer has stopped".into()))?
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
            let mut lines = Vec::new();
            let mut commit = Commit::default();
            let mut replies = Vec::with_capacity(group.len());
            for (batch, reply) in group {
                lines.extend(batch.lines);
                commit.merge(batch.commit);
                replies.push(reply);
            }
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

    fn commit_group(&mut self, lines: Vec<String>, mut commit: Commit) -> Result<(), HandoffError> {
        // A poisoned gate only means another writer panicked; the gate guards no data.
        let _gate = WRITE_GATE.lock().unwrap_or_else(|p| p.into_inner());
        self.ensure_open().map_err(HandoffError::from)?;
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
        Ok(())
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
        commit.sink_points.push((self.pipeline.clone(), sink.position()));
        self.store.commit(&commit).map_err(|e| HandoffError(e.to_string()))?;
        self.committed(sink.position().seq);
        self.sink = Some(sink);
        Ok(recovery)
    }
}

/// Folds lines that are on disk but not in state into the seen set and the per-conversation counters.
pub fn reconcile(store: &Store, pipeline: &str, lines: &[String]) -> Result<Commit, crate::state::StateError> {
    let mut commit = Commit::default();
    let mut fresh = HashSet::new();
    let mut convs: BTreeMap<String, ConvState> = BTreeMap::new();
    for line in lines {
        let Some(key) = key_of_line(line) else {
            tracing::warn!(pipeline, "a recovered line is not a dm-handoff record; left as it is");
            continue;
        };
        if store.is_seen(pipeline, &key)? || !fresh.insert(key.clone()) {
            continue;
        }
        if matches!(key.kind, Kind::DmMessage | Kind::DmEvent) {
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
    Ok(commit)
}
