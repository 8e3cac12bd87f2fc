//! The offline audit of a state directory against its pipelines' files (`dm-handoff state check`) and the
//! rebuild of the file-derived part of the state from those files (`dm-handoff state rebuild`).
//!
//! Both take the state directory's lock, so they never run beside the daemon (exit 3, as every other
//! owner of the lock). The check reads every database entry once (sled reports a damaged page only when it
//! reads it), then, per pipeline: every committed line's exactly-once key must be in the seen set (a key
//! missing there is a record the next fetch of that page would write twice), each conversation state
//! must be readable and agree with itself and with the files (cursors, `hwm`, the folded range), and the
//! commit point must lie inside the files. Lines after the commit point are not problems: the next open
//! of the pipeline reconciles them.
//!
//! The rebuild keeps the old database aside as `<state_dir>/db.old-<time>` and writes a new one: the seen
//! set from every line of the files, the commit point at their end, each conversation state carried over
//! when it passes the check's rules (else reset, so the next sync walks that conversation's history again
//! from its newest page and the seen set skips everything already written), and everything the files
//! cannot say (the send ledger, resolved usernames, credit counters, discovered conversations, pipelines
//! not in the config) copied as it was. Loaders may move loaded segments away; when generations are
//! missing, the old seen set is kept besides (a union), so a record moved away is not written again.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde::Serialize;

use super::keys::{key, numeric_id};
use super::{Commit, ConvState, Covered, Freshness, StateError, Store, StoreOptions, INBOX_STREAM};
use crate::record::{id_cmp, Key, Kind, Record};
use crate::sink::{self, CommitPoint};

/// Keys missing from the seen set shown per pipeline; the rest are counted in one more line.
const SHOWN: u64 = 20;
/// Seen keys per commit while a rebuild writes them: bounded memory and batches.
const CHUNK: usize = 10_000;

/// One pipeline's files, as the config names them.
#[derive(Clone, Debug)]
pub struct Target {
    pub pipeline: String,
    pub dir: PathBuf,
    pub file_name: String,
}

/// A problem (the state is wrong) or a note (worth knowing, not wrong). Names files, keys and IDs, never
/// message text.
#[derive(Clone, Debug, Serialize)]
pub struct Finding {
    pub problem: bool,
    pub at: String,
    pub what: String,
}

/// What `state check` found for one pipeline.
#[derive(Debug, Default, Serialize)]
pub struct PipelineCheck {
    pub pipeline: String,
    pub files: u64,
    pub records: u64,
    pub conversations: u64,
    pub problems: u64,
    pub findings: Vec<Finding>,
}

impl PipelineCheck {
    fn problem(&mut self, at: impl std::fmt::Display, what: impl Into<String>) {
        self.problems += 1;
        self.findings.push(Finding { problem: true, at: at.to_string(), what: what.into() });
    }

    fn note(&mut self, at: impl std::fmt::Display, what: impl Into<String>) {
        self.findings.push(Finding { problem: false, at: at.to_string(), what: what.into() });
    }
}

/// What `state check` found.
#[derive(Debug, Default, Serialize)]
pub struct CheckReport {
    pub state_dir: String,
    /// Entries in the database, each read once.
    pub entries: u64,
    /// Problems of the database itself (it does not open, a page cannot be read).
    pub database: Vec<Finding>,
    pub pipelines: Vec<PipelineCheck>,
    pub problems: u64,
}

/// What the files say about one conversation: the newest numeric history ID and the count of history
/// records (messages and events).
#[derive(Clone, Debug, Default)]
struct Seen {
    newest: Option<u64>,
    newest_id: Option<String>,
    records: u64,
}

#[derive(Debug, Default)]
struct FileFacts {
    convs: HashMap<String, Seen>,
    /// Over all conversations: what the inbox stream's state is held against.
    all: Seen,
    newest_created_at: Option<String>,
}

impl FileFacts {
    fn add(&mut self, key: &Key, created_at: Option<&str>) {
        if !matches!(key.kind, Kind::DmMessage | Kind::DmEvent | Kind::DmUnparsed) {
            return;
        }
        let numeric = numeric_id(&key.id);
        for s in [self.convs.entry(key.conversation.clone()).or_default(), &mut self.all] {
            if key.kind != Kind::DmUnparsed {
                s.records += 1;
                if s.newest_id.as_deref().is_none_or(|n| id_cmp(&key.id, n).is_gt()) {
                    s.newest_id = Some(key.id.clone());
                }
            }
            s.newest = s.newest.max(numeric);
        }
        if key.kind != Kind::DmUnparsed && created_at.map(str::to_string) > self.newest_created_at {
            self.newest_created_at = created_at.map(str::to_string);
        }
    }

    fn of(&self, conv: &str) -> Option<&Seen> {
        if conv == INBOX_STREAM {
            Some(&self.all)
        } else {
            self.convs.get(conv)
        }
    }
}

/// What is wrong with a conversation state, by itself and (when the files hold everything ever written,
/// `complete`) against the files. Empty when it is sane.
fn conv_problems(st: &ConvState, files: Option<&Seen>, complete: bool) -> Vec<String> {
    let mut out = Vec::new();
    let is_id =
        |s: &str| !s.is_empty() && s.len() <= 64 && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_:".contains(&b));
    for (name, v) in [
        ("hwm", &st.hwm),
        ("head_newest", &st.head_newest),
        ("newest_id", &st.newest_id),
        ("covered_from", &st.covered_from),
    ] {
        if let Some(v) = v.as_deref().filter(|v| !is_id(v)) {
            out.push(format!("{name} {:?} is not a message ID", crate::config::shown::short(v)));
        }
    }
    for (name, v) in [("head_cursor", &st.head_cursor), ("backfill_cursor", &st.backfill_cursor)] {
        if v.as_deref().is_some_and(|c| c.is_empty() || c.len() > 4096 || c.chars().any(char::is_control)) {
            out.push(format!(
                "{name} is not a cursor a provider gives (empty, over 4,096 bytes, or control characters)"
            ));
        }
    }
    if st.backfill_done && st.backfill_cursor.is_some() {
        out.push("backfill is marked done yet has a cursor".into());
    }
    if st.backfill_cursor.is_some() && !st.backfill_started {
        out.push("has a backfill cursor but its backfill never started".into());
    }
    let num = |v: &Option<String>| v.as_deref().and_then(numeric_id);
    if let (Some(from), Some(hwm)) = (num(&st.covered_from), num(&st.hwm)) {
        if from > hwm {
            out.push(format!("covered_from {from} is above hwm {hwm}"));
        }
    }
    if let (true, Some(hwm)) = (complete, num(&st.hwm)) {
        match files.and_then(|f| f.newest) {
            Some(newest) if newest < hwm => out.push(format!(
                "hwm {hwm} is newer than anything of it in the files (newest {newest}): a head pass stops there and skips what lies between"
            )),
            None => out.push(format!("hwm {hwm} names a message, but the files hold nothing of this conversation")),
            Some(_) => {}
        }
    }
    out
}

impl Store {
    /// Reads every entry once; the count, or the first failure.
    fn read_all(&self) -> Result<u64, StateError> {
        let mut n = 0;
        for kv in self.db.iter() {
            let (_, v) = kv.map_err(self.db_err())?;
            std::hint::black_box(v.len());
            n += 1;
        }
        Ok(n)
    }

    /// A pipeline's entries under `prefix`, as (rest of the key after the pipeline, value).
    fn entries(&self, prefix: u8, pipeline: &str) -> Result<Vec<(String, sled::IVec)>, StateError> {
        let start = key(prefix, &[pipeline, ""]);
        let mut out = Vec::new();
        for kv in self.db.scan_prefix(&start) {
            let (k, v) = kv.map_err(self.db_err())?;
            out.push((String::from_utf8_lossy(&k[start.len()..]).into_owned(), v));
        }
        Ok(out)
    }
}

/// `dm-handoff state check`: the audit described in the module docs.
pub fn check(dir: &Path, opts: StoreOptions, targets: &[Target]) -> Result<CheckReport, StateError> {
    let mut report = CheckReport { state_dir: dir.display().to_string(), ..CheckReport::default() };
    let db_problem = |report: &mut CheckReport, e: &StateError| {
        report.database.push(Finding {
            problem: true,
            at: dir.join("db").display().to_string(),
            what: format!("{e}; `dm-handoff state rebuild` makes a new database from the files"),
        });
        report.problems += 1;
    };
    let store = match Store::open(dir, opts) {
        Ok(s) => s,
        Err(e @ (StateError::Corrupted { .. } | StateError::Corrupt { .. } | StateError::Db { .. })) => {
            db_problem(&mut report, &e);
            return Ok(report);
        }
        Err(e) => return Err(e),
    };
    match store.read_all() {
        Ok(n) => report.entries = n,
        Err(e) => db_problem(&mut report, &e),
    }
    for t in targets {
        let pc = check_pipeline(&store, t);
        report.problems += pc.problems;
        report.pipelines.push(pc);
    }
    Ok(report)
}

fn check_pipeline(store: &Store, t: &Target) -> PipelineCheck {
    let mut pc = PipelineCheck { pipeline: t.pipeline.clone(), ..PipelineCheck::default() };
    let state_at = format!("state {}", t.pipeline);
    let committed = store.commit_point(&t.pipeline).unwrap_or_else(|e| {
        pc.problem(&state_at, format!("the commit point is unreadable: {e}"));
        CommitPoint::default()
    });
    let mut facts = FileFacts::default();
    let (mut missing, mut after, mut foreign, mut records) = (0u64, 0u64, 0u64, 0u64);
    let mut shown: Vec<(String, String)> = Vec::new();
    let mut lookup_error: Option<String> = None;
    let mut ranges: HashMap<String, Option<Covered>> = HashMap::new();
    let walked = sink::walk::walk(&t.dir, &t.file_name, committed, &mut |line| {
        records += 1;
        let record = std::str::from_utf8(line.bytes).ok().and_then(|l| serde_json::from_str::<Record>(l).ok());
        let Some(key) = record.as_ref().and_then(Record::key) else {
            foreign += 1;
            return;
        };
        facts.add(&key, None);
        if !line.committed {
            after += 1;
            return;
        }
        // One read of a conversation's folded range, not one per line.
        let covered = match ranges.get(&key.conversation) {
            Some(c) => Ok(*c),
            None => store.covered(&t.pipeline, &key.conversation).inspect(|c| {
                ranges.insert(key.conversation.clone(), *c);
            }),
        };
        match covered.and_then(|c| store.is_seen_with(&t.pipeline, &key, c)) {
            Ok(true) => {}
            Ok(false) => {
                missing += 1;
                if missing <= SHOWN {
                    shown.push((
                        format!("{}:{}", line.path.display(), line.number),
                        format!(
                            "{} {} of conversation {} is in the files but not in the seen set: fetched again, it would be written twice",
                            key.kind.as_str(),
                            key.id,
                            key.conversation
                        ),
                    ));
                }
            }
            Err(e) => {
                lookup_error.get_or_insert_with(|| e.to_string());
            }
        }
    });
    pc.records = records;
    let walked = match walked {
        Ok(w) => w,
        Err(e) => {
            pc.problem(t.dir.display(), format!("cannot read the output folder: {e}"));
            return pc;
        }
    };
    pc.files = walked.files;
    for (at, what) in shown {
        pc.problem(at, what);
    }
    if missing > SHOWN {
        pc.problems += missing - SHOWN;
        pc.findings.push(Finding {
            problem: true,
            at: t.dir.display().to_string(),
            what: format!("{} more keys in the files are not in the seen set", missing - SHOWN),
        });
    }
    if missing > 0 {
        pc.note(&state_at, "`dm-handoff state rebuild` makes the seen set from the files again");
    }
    if let Some(e) = lookup_error {
        pc.problem(&state_at, format!("the seen set could not be read: {e}"));
    }
    for (path, e) in &walked.unreadable {
        pc.problem(path.display(), format!("cannot be read to its end ({e}); its keys were checked up to there"));
    }
    if after > 0 {
        pc.note(
            t.dir.display(),
            format!("{after} lines after the commit point: the next run reconciles them into the seen set"),
        );
    }
    if foreign > 0 {
        pc.note(
            t.dir.display(),
            format!("{foreign} lines are not dm-handoff records (`dm-handoff verify` says where)"),
        );
    }
    let complete = walked.missing_generations == 0;
    if !complete {
        pc.note(
            t.dir.display(),
            format!(
                "{} older segments are not here (moved away after loading?): high-water marks are not held against the files",
                walked.missing_generations
            ),
        );
    }
    let end = walked.end;
    if committed.seq == end.seq
        && committed.offset > end.offset
        && committed.active_ino.is_none_or(|i| Some(i) == end.active_ino)
    {
        pc.problem(
            &state_at,
            format!(
                "the commit point (generation {}, byte {}) is past the end of the active file ({} bytes): committed lines are gone, or the state is not this folder's",
                committed.seq, committed.offset, end.offset
            ),
        );
    }

    let mut hwms: HashMap<String, Option<u64>> = HashMap::new();
    match store.entries(b'c', &t.pipeline) {
        Ok(entries) => {
            for (conv, v) in entries {
                pc.conversations += 1;
                let at = format!("state {}/{conv}", t.pipeline);
                match serde_json::from_slice::<ConvState>(&v) {
                    Ok(st) => {
                        for p in conv_problems(&st, facts.of(&conv), complete) {
                            pc.problem(&at, p);
                        }
                        hwms.insert(conv, st.hwm.as_deref().and_then(numeric_id));
                    }
                    Err(e) => pc.problem(&at, format!("the conversation state is unreadable ({e})")),
                }
            }
        }
        Err(e) => pc.problem(&state_at, format!("the conversation states cannot be read: {e}")),
    }
    match store.entries(b'r', &t.pipeline) {
        Ok(entries) => {
            for (conv, v) in entries {
                let at = format!("state {}/{conv}", t.pipeline);
                match serde_json::from_slice::<Covered>(&v) {
                    Ok(r) if r.lo > r.hi => pc.problem(&at, format!("the folded range {}..={} is empty", r.lo, r.hi)),
                    Ok(r) if hwms.get(&conv).copied().flatten().is_none_or(|hwm| r.hi > hwm) => pc.problem(
                        &at,
                        format!("the folded range reaches {}, above the conversation's hwm (or it has none)", r.hi),
                    ),
                    Ok(_) => {}
                    Err(e) => pc.problem(&at, format!("the folded range is unreadable ({e})")),
                }
            }
        }
        Err(e) => pc.problem(&state_at, format!("the folded ranges cannot be read: {e}")),
    }
    pc
}

/// What `state rebuild` did for one pipeline.
#[derive(Debug, Default, Serialize)]
pub struct PipelineRebuild {
    pub pipeline: String,
    pub files: u64,
    /// Lines that are records, whose keys the new seen set holds.
    pub records: u64,
    /// Conversation states carried over from the old database.
    pub kept: u64,
    /// Conversations whose state was reset, with why: their history is walked again from the newest page.
    pub reset: Vec<(String, String)>,
    /// Older segments missing from the folder; the old seen set was kept besides when this is not 0.
    pub missing_generations: u64,
    pub notes: Vec<String>,
}

/// What `state rebuild` did.
#[derive(Debug, Default, Serialize)]
pub struct RebuildReport {
    /// Where the old database now is; None when there was none.
    pub old: Option<PathBuf>,
    /// Why the old database could not be read (all of it or from some point); what was read is used.
    pub old_unreadable: Option<String>,
    /// Entries copied as they were (ledger, usernames, credits, discovered conversations, other pipelines).
    pub carried: u64,
    pub pipelines: Vec<PipelineRebuild>,
}

/// Raw database entries, as (key, value).
type Entries = Vec<(Vec<u8>, Vec<u8>)>;

/// What the old database still says.
#[derive(Default)]
struct Old {
    /// Copied as they are.
    raw: Entries,
    /// Per configured pipeline: its seen set's entries (`s` and `r`), used when files are missing.
    seen: HashMap<String, Entries>,
    convs: HashMap<String, BTreeMap<String, Result<ConvState, String>>>,
    points: HashMap<String, CommitPoint>,
    fresh: HashMap<String, Freshness>,
    error: Option<String>,
}

impl Old {
    fn read(&mut self, store: &Store, configured: &HashSet<&str>) -> Result<(), StateError> {
        for kv in store.db.iter() {
            let (k, v) = kv.map_err(store.db_err())?;
            let mut parts = k.split(|b| *b == 0);
            let prefix = parts.next().unwrap_or_default();
            let pipeline = parts.next().map(|p| String::from_utf8_lossy(p).into_owned());
            let ours = pipeline.as_deref().filter(|p| configured.contains(p));
            match (prefix, ours) {
                (b"v", _) => {}
                (b"s" | b"r", Some(p)) => self.seen.entry(p.to_string()).or_default().push((k.to_vec(), v.to_vec())),
                (b"c", Some(p)) => {
                    let conv = String::from_utf8_lossy(&k[p.len() + 3..]).into_owned();
                    let st = serde_json::from_slice::<ConvState>(&v).map_err(|e| format!("unreadable ({e})"));
                    self.convs.entry(p.to_string()).or_default().insert(conv, st);
                }
                (b"k", Some(p)) => {
                    if let Ok(point) = serde_json::from_slice(&v) {
                        self.points.insert(p.to_string(), point);
                    }
                }
                (b"f", Some(p)) => {
                    if let Ok(f) = serde_json::from_slice(&v) {
                        self.fresh.insert(p.to_string(), f);
                    }
                }
                // Everything else: what the files cannot say. An unreadable value would fail the next
                // commit that reads it; every value but a seen key's (empty) is JSON.
                _ if v.is_empty() || serde_json::from_slice::<serde::de::IgnoredAny>(&v).is_ok() => {
                    self.raw.push((k.to_vec(), v.to_vec()));
                }
                _ => {}
            }
        }
        Ok(())
    }
}

/// `dm-handoff state rebuild`: described in the module docs. `now` names the old database's folder.
pub fn rebuild(
    dir: &Path,
    opts: StoreOptions,
    targets: &[Target],
    now: SystemTime,
) -> Result<RebuildReport, StateError> {
    let io = |op: &'static str| move |e: std::io::Error| StateError::io(dir, op, &e);
    // Held to the end: the daemon cannot start while the database is swapped.
    let lock = Store::lock_dir(dir)?;
    let mut report = RebuildReport::default();
    let configured: HashSet<&str> = targets.iter().map(|t| t.pipeline.as_str()).collect();
    let mut old = Old::default();
    let db_path = dir.join("db");
    if db_path.exists() {
        match Store::open_locked(dir, opts, lock.try_clone().map_err(io("opening LOCK"))?) {
            Ok(store) => {
                if let Err(e) = old.read(&store, &configured) {
                    old.error = Some(why(&e));
                }
            }
            Err(e) => old.error = Some(why(&e)),
        }
        let stamp: String = crate::time::format_time(now).chars().filter(char::is_ascii_alphanumeric).collect();
        let mut aside = dir.join(format!("db.old-{stamp}"));
        let mut n = 1;
        while aside.exists() {
            n += 1;
            aside = dir.join(format!("db.old-{stamp}-{n}"));
        }
        fs::rename(&db_path, &aside).map_err(io("moving the old database aside"))?;
        fs::File::open(dir).and_then(|d| d.sync_all()).map_err(io("syncing the folder"))?;
        report.old = Some(aside);
    }
    report.old_unreadable = old.error.clone();
    let store = Store::open_locked(dir, opts, lock.try_clone().map_err(io("opening LOCK"))?)?;
    // A failed open of the old database cleared our PID from LOCK; a second process's message names it.
    {
        use std::io::{Seek, Write};
        let mut l = &lock;
        let _ = l.set_len(0).and_then(|()| l.rewind()).and_then(|()| writeln!(l, "{}", std::process::id()));
    }
    for chunk in old.raw.chunks(CHUNK) {
        let mut batch = sled::Batch::default();
        for (k, v) in chunk {
            batch.insert(k.as_slice(), v.as_slice());
        }
        store.db.apply_batch(batch).map_err(store.db_err())?;
        report.carried += chunk.len() as u64;
    }
    for t in targets {
        report.pipelines.push(rebuild_pipeline(&store, t, &mut old)?);
    }
    store.flush()?;
    drop(store);
    drop(lock);
    Ok(report)
}

/// Why the old database could not be read, for the rebuild's note: the error without its advice (to
/// restore or move the state away), which the rebuild is already following.
fn why(e: &StateError) -> String {
    match e {
        StateError::Corrupted { detail, .. } => format!("it is corrupted: {detail}"),
        e => e.to_string(),
    }
}

fn rebuild_pipeline(store: &Store, t: &Target, old: &mut Old) -> Result<PipelineRebuild, StateError> {
    let p = t.pipeline.as_str();
    let mut out = PipelineRebuild { pipeline: p.to_string(), ..PipelineRebuild::default() };
    let point = old.points.get(p).copied().unwrap_or_default();
    let mut facts = FileFacts::default();
    let mut pending = Commit::default();
    let mut failed: Option<StateError> = None;
    let mut records = 0;
    let walked = sink::walk::walk(&t.dir, &t.file_name, point, &mut |line| {
        let record = std::str::from_utf8(line.bytes).ok().and_then(|l| serde_json::from_str::<Record>(l).ok());
        let Some(key) = record.as_ref().and_then(Record::key) else { return };
        records += 1;
        facts.add(&key, record.as_ref().and_then(|r| r.created_at.as_deref()));
        pending.seen.push((p.to_string(), key));
        if pending.seen.len() >= CHUNK && failed.is_none() {
            if let Err(e) = store.commit(&std::mem::take(&mut pending)) {
                failed = Some(e);
            }
        }
    });
    if let Some(e) = failed {
        return Err(e);
    }
    let walked = walked.map_err(|e| StateError::io(&t.dir, "reading the output folder", &e))?;
    out.files = walked.files;
    out.records = records;
    out.missing_generations = walked.missing_generations;
    for (path, e) in &walked.unreadable {
        out.notes
            .push(format!("{}: read up to a failure ({e}); the keys after it are not in the seen set", path.display()));
    }
    let complete = walked.missing_generations == 0;
    if !complete {
        match old.seen.remove(p) {
            Some(entries) => {
                let mut batch = sled::Batch::default();
                for (k, v) in entries {
                    batch.insert(k, v);
                }
                store.db.apply_batch(batch).map_err(store.db_err())?;
                out.notes.push(format!(
                    "{} older segments are not here: the old seen set is kept besides, so their records are not written again",
                    walked.missing_generations
                ));
            }
            None => out.notes.push(format!(
                "{} older segments are not here and the old seen set is unreadable: records only they held may be written again",
                walked.missing_generations
            )),
        }
    }
    // Every conversation the old state or the files know.
    let mut convs: BTreeMap<String, Result<ConvState, String>> = old.convs.remove(p).unwrap_or_default();
    for conv in facts.convs.keys() {
        convs.entry(conv.clone()).or_insert_with(|| Err("no stored state".into()));
    }
    for (conv, st) in convs {
        let files = facts.of(&conv).cloned().unwrap_or_default();
        let mut st = match st.map(|st| {
            let problems = conv_problems(&st, Some(&files), complete);
            (st, problems)
        }) {
            Ok((st, problems)) if problems.is_empty() => {
                out.kept += 1;
                pending.folds.push((p.to_string(), conv.clone()));
                st
            }
            Ok((st, problems)) => {
                out.reset.push((conv.clone(), problems.join("; ")));
                // What the files cannot say is kept: spending, the last run.
                ConvState {
                    credits_total: st.credits_total,
                    last_sync_ms: st.last_sync_ms,
                    last_error: st.last_error,
                    ..ConvState::default()
                }
            }
            Err(why) => {
                out.reset.push((conv.clone(), why));
                ConvState::default()
            }
        };
        if conv != INBOX_STREAM {
            st.messages_written = if complete { files.records } else { st.messages_written.max(files.records) };
            if files.newest_id.as_deref().is_some_and(|n| st.newest_id.as_deref().is_none_or(|o| id_cmp(n, o).is_gt()))
            {
                st.newest_id = files.newest_id.clone();
            }
        }
        pending.conversations.push((p.to_string(), conv, st));
    }
    pending.sink_points.push((p.to_string(), walked.end));
    let mut fresh = old.fresh.remove(p).unwrap_or_default();
    fresh.merge(&Freshness { newest_created_at: facts.newest_created_at.clone(), ..Freshness::default() });
    pending.freshness.push((p.to_string(), fresh));
    // The kept states' folds run after this commit's batch (see `Store::commit`): the seen set is as compact
    // as the old one was, instead of one exact key per record until the next sync writes something. A reset
    // state has no `covered_from`, so nothing of it is folded.
    store.commit(&pending)?;
    Ok(out)
}

#[cfg(test)]
mod tests;
