//! Durable state in sled: the only module that names sled.
//!
//! One sled tree holds everything, under typed prefixes, so a single [`Commit`] is one atomic
//! `apply_batch` followed by one `flush`:
//!
//! | prefix | key                                   | value |
//! |--------|---------------------------------------|-------|
//! | `s`    | pipeline, conversation, kind, ID       | empty: the seen set's exact part, the exactly-once memory |
//! | `r`    | pipeline, conversation                 | [`Covered`]: the seen set's folded part, one ID range |
//! | `c`    | pipeline, conversation                 | [`ConvState`] as JSON: cursors, high-water mark, counters |
//! | `k`    | pipeline                               | the sink's [`CommitPoint`]: where in the files this state ends |
//! | `u`    | provider, username                     | a resolved `@username` → user ID |
//! | `x`    | pipeline, idempotency key              | a send-ledger entry (outbound sends) |
//! | `d`    | pipeline                               | [`DayCredits`]: credits spent this UTC day, for the daily budget |
//! | `i`    | pipeline, conversation ID              | [`Discovered`]: a conversation the whole-inbox sync found |
//! | `f`    | pipeline                               | [`Freshness`]: last successful run, newest record's `created_at` |
//! | `v`    |                                        | the layout version, [`FORMAT`] |
//!
//! Key parts are joined with a NUL byte, which no part can contain (names and IDs are validated). A numeric
//! ID that fits a u64 is stored zero-padded to 20 digits, so a conversation's keys sort in ID order and a
//! range of them can be scanned and folded.
//!
//! ## The seen set stays small
//!
//! One key per record ever written would grow without end (and sled's memory with it: 34 MiB peak at 10^5
//! records, 90 MiB at 10^6). So the history part of the set (`dm_message`, `dm_event`) is *folded*: for each
//! conversation, every item with an ID in [`Covered`]'s range is known to be in the files, and only the
//! newest IDs stay as exact keys. [`Store::fold`] does it, under two rules:
//! - it folds only the ID range the sync engine has fetched without a gap, `[covered_from, hwm]` of
//!   [`ConvState`], because only there is every item the provider has shown already written;
//! - it never folds the newest [`StoreOptions::seen_window`] exact IDs nor anything within
//!   [`FOLD_MIN_AGE_MS`] of `hwm` (snowflake time), so an item that shows up late with an older ID (replication
//!   lag upstream) is still checked exactly.
//!
//! Sends and deletes stay exact: they are few, and their IDs are not part of any fetched history range.
//! The state directory is owned by one process at a time through an exclusive `flock` on `LOCK`, which also
//! records the holder's PID so a second process can say who has it.

use std::collections::{HashMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::mem::ManuallyDrop;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use fs4::fs_std::FileExt;
use serde::{Deserialize, Serialize};

use crate::record::{Key, Kind};
use crate::sink::CommitPoint;

pub mod audit;
mod inbox;
mod keys;
pub mod tokens;
mod upgrade;
mod uploads;

pub use inbox::{Discovered, INBOX_STREAM};

pub use keys::numeric_id;
use keys::{is_history, key, padded, padded_id, seen_key, seen_key_of, HISTORY_KINDS};
pub use uploads::Uploaded;

/// Why the state could not be used: one line that says what happened and what to do, and names its cause
/// once (no variant has a `source`, so an error chain does not print the cause twice). `Locked` is matched
/// by callers (exit 3), `NotADirectory` too (exit 2).
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error(
        "state directory {dir} is in use by another dm-handoff process{}; stop it, or let the running daemon do the work, or use another state_dir",
        holder.map(|p| format!(" (pid {p})")).unwrap_or_default()
    )]
    Locked { dir: PathBuf, holder: Option<u32> },
    #[error("state directory {dir} is not a folder (it is a file, or a path through one); point state_dir at a folder (it is created if missing)")]
    NotADirectory { dir: PathBuf },
    #[error("state directory {dir}: permission denied while {op}; make the folder and everything in it writable by this user (chown/chmod), or run dm-handoff as the user that owns it")]
    Denied { dir: PathBuf, op: &'static str },
    #[error("state directory {dir}: the disk is full or over quota while {op}; free space (or raise the quota) and run again: nothing committed was lost")]
    Full { dir: PathBuf, op: &'static str },
    #[error("state directory {dir}: {op}: {detail}")]
    Io { dir: PathBuf, op: &'static str, detail: String },
    #[error("the state database in {dir} is corrupted ({detail}); restore the state directory from a backup, or move it away to start over (every record would then be written again)")]
    Corrupted { dir: PathBuf, detail: String },
    #[error("state database in {dir}: {detail}")]
    Db { dir: PathBuf, detail: String },
    #[error("state database in {dir}: a stored value under {key} is unreadable: {detail}")]
    Corrupt { dir: PathBuf, key: String, detail: String },
    /// A value could not be serialized for the state; nothing was written.
    #[error("cannot encode {what} for the state: {detail}")]
    Encode { what: &'static str, detail: String },
}

impl StateError {
    /// An I/O failure on the state directory, by what it means for the user.
    fn io(dir: &Path, op: &'static str, e: &std::io::Error) -> StateError {
        let dir = dir.to_path_buf();
        // sled passes some OS errors on as text (`Os { code: 5, … }`): read the errno back from that too.
        let errno = e.raw_os_error().or_else(|| {
            let text = e.to_string();
            let code = text.split("code: ").nth(1)?;
            code.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()
        });
        match (e.kind(), errno) {
            (std::io::ErrorKind::PermissionDenied, _) | (_, Some(libc::EACCES | libc::EPERM | libc::EROFS)) => {
                StateError::Denied { dir, op }
            }
            (_, Some(libc::ENOSPC | libc::EDQUOT)) => StateError::Full { dir, op },
            (_, Some(libc::ENOTDIR)) => StateError::NotADirectory { dir },
            (_, Some(libc::EIO)) => StateError::Io {
                dir,
                op,
                detail: "input/output error (EIO): the disk or its file system failed; check the kernel log (dmesg) and the disk, then run again".into(),
            },
            (_, Some(n)) => StateError::Io { dir, op, detail: std::io::Error::from_raw_os_error(n).to_string() },
            _ => StateError::Io { dir, op, detail: crate::config::shown::short(&e.to_string()) },
        }
    }

    /// A sled failure, by what it means for the user: sled's own lock (someone removed `LOCK` while a
    /// dm-handoff runs), permission, a full disk, corruption. Never sled's Display, which can end in
    /// `backtrace ()`.
    fn sled(dir: &Path, op: &'static str, e: sled::Error) -> StateError {
        match e {
            sled::Error::Io(io) if io.to_string().starts_with("could not acquire lock") => {
                StateError::Locked { dir: dir.to_path_buf(), holder: crate::flock::holder(&dir.join("db").join("db")) }
            }
            sled::Error::Io(io)
                if io.kind() == std::io::ErrorKind::UnexpectedEof || io.kind() == std::io::ErrorKind::InvalidData =>
            {
                StateError::Corrupted { dir: dir.to_path_buf(), detail: format!("{op}: {}", io.kind()) }
            }
            sled::Error::Io(io) => StateError::io(dir, op, &io),
            sled::Error::Corruption { at, .. } => StateError::Corrupted {
                dir: dir.to_path_buf(),
                detail: match at {
                    Some(at) => format!("unreadable data at {at:?}"),
                    None => "unreadable data".into(),
                },
            },
            // sled says its files are not ones it can open (a garbled settings file, another sled version).
            sled::Error::Unsupported(_) => StateError::Corrupted {
                dir: dir.to_path_buf(),
                detail: "its settings or data files are unreadable, or from an incompatible version".into(),
            },
            other => StateError::Db { dir: dir.to_path_buf(), detail: crate::config::shown::short(&other.to_string()) },
        }
    }
}

/// A value as the state stores it (JSON). Failing here is a bug, but it must be an error, never an empty
/// value written in place of the real one.
fn encode<T: Serialize + ?Sized>(what: &'static str, v: &T) -> Result<Vec<u8>, StateError> {
    serde_json::to_vec(v).map_err(|e| StateError::Encode { what, detail: e.to_string() })
}

/// Everything the engine remembers about one conversation between runs.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ConvState {
    /// Newest ID covered by a *completed* head pass; a head pass stops once it reaches it.
    pub hwm: Option<String>,
    /// Cursor of the next page of a head pass in flight, so an interrupted pass resumes instead of restarting.
    pub head_cursor: Option<String>,
    /// Newest ID seen by the head pass in flight; becomes `hwm` when the pass completes.
    pub head_newest: Option<String>,
    /// Whether the first page ever fetched has set up the backfill frontier.
    pub backfill_started: bool,
    /// Cursor of the next older page for backfill.
    pub backfill_cursor: Option<String>,
    /// The provider said there is no older page.
    pub backfill_done: bool,
    /// Records of this conversation in the files (messages and events).
    pub messages_written: u64,
    /// Newest message ID written so far.
    pub newest_id: Option<String>,
    /// Unix ms of the last run that finished for this conversation, failed or not.
    pub last_sync_ms: Option<u64>,
    /// The last run's error, one line, no message text; None after a clean run.
    pub last_error: Option<String>,
    /// Provider credits spent on this conversation, all time.
    pub credits_total: u64,
    /// Lowest item ID on the committed pages that reach down from `hwm` without a gap: the first page, the
    /// backfill pages, and the pages of a head pass run while nothing had been seen. Every item the provider
    /// showed with an ID in `covered_from..=hwm` is in the files, which is what lets [`Store::fold`] replace
    /// their exact keys by one range. None until such a page held a numeric ID.
    pub covered_from: Option<String>,
}

/// The folded part of a conversation's seen set: every history item with an ID in `lo..=hi` is in the files.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Covered {
    pub lo: u64,
    pub hi: u64,
}

impl Covered {
    /// Whether a history key falls in the range (only numeric IDs of history kinds can).
    fn holds(&self, k: &Key) -> bool {
        is_history(k.kind) && numeric_id(&k.id).is_some_and(|n| self.lo <= n && n <= self.hi)
    }
}

/// The layout version stored under `v`. Version 1 (no `v` key) stored numeric IDs unpadded.
pub const FORMAT: u64 = 2;

/// Nothing newer than this (by snowflake time, relative to `hwm`) is folded: an item that appears upstream
/// up to an hour after newer ones is still deduplicated exactly, not assumed present.
pub const FOLD_MIN_AGE_MS: u64 = 60 * 60 * 1000;

/// How the state database is opened.
#[derive(Clone, Copy, Debug)]
pub struct StoreOptions {
    /// Cap on sled's page cache, in bytes.
    pub cache_bytes: u64,
    /// Newest history IDs per conversation kept as exact keys when folding; 0 turns folding off (the seen
    /// set then keeps one key per record, and grows with history).
    pub seen_window: u64,
}

impl StoreOptions {
    /// The options a config asks for.
    pub fn of(cfg: &crate::config::Config) -> StoreOptions {
        StoreOptions { cache_bytes: cfg.state_cache_bytes, seen_window: cfg.seen_window }
    }
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions { cache_bytes: 16 * 1024 * 1024, seen_window: 16 }
    }
}

/// A set of changes applied atomically by [`Store::commit`].
#[derive(Debug, Default)]
pub struct Commit {
    /// Keys to add to a pipeline's seen set.
    pub seen: Vec<(String, Key)>,
    /// Keys to add, a page at a time: what a history page adds, naming its pipeline and conversation once
    /// instead of once per record (two strings a record fewer on the backfill's hot path).
    pub pages: Vec<SeenPage>,
    /// Conversation states to store, as (pipeline, conversation, state); later entries win.
    pub conversations: Vec<(String, String, ConvState)>,
    /// New sink positions, as (pipeline, point).
    pub sink_points: Vec<(String, CommitPoint)>,
    /// Raw values under the `u` and `x` prefixes, already encoded by [`Store`] helpers.
    pub raw: Vec<(Vec<u8>, Vec<u8>)>,
    /// Provider credits spent, as (pipeline, credits): added to the pipeline's counter for today.
    pub credits: Vec<(String, u64)>,
    /// Conversations, as (pipeline, conversation), whose seen set to [`Store::fold`] after this commit.
    pub folds: Vec<(String, String)>,
    /// Freshness facts, as (pipeline, facts): merged into the pipeline's stored [`Freshness`].
    pub freshness: Vec<(String, Freshness)>,
}

/// One page's new keys, all of one pipeline and conversation: as (kind, ID) pairs.
#[derive(Debug, Default)]
pub struct SeenPage {
    pub pipeline: String,
    pub conversation: String,
    pub keys: Vec<(Kind, String)>,
}

/// How fresh a pipeline's files are, as `status` and the metrics report it. Two separate facts, so an idle
/// account (old newest record, recent successful run) never looks like a dead pipeline (neither moves).
/// A commit's values are merged into the stored ones: the newest record by taking the later, the last
/// successful run by taking the commit's (see [`Freshness::merge`]).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Freshness {
    /// Unix ms when the last run ended in which no conversation failed and the pipeline did not stop.
    pub last_success_ms: Option<u64>,
    /// The newest `created_at` of a message or event record in the files (RFC 3339 UTC with milliseconds
    /// and `Z`, so the later of two is the greater string).
    pub newest_created_at: Option<String>,
}

impl Freshness {
    /// Takes the later record time, and `other`'s run time when it has one. The run time is replaced, not
    /// maxed: a run stamped by a wall clock set forward and then corrected would otherwise stay "the last
    /// successful run" until the clock caught up, and a staleness alert on it would see nothing. A pipeline's
    /// runs commit in the order they end, so the commit's value is the last run's.
    pub fn merge(&mut self, other: &Freshness) {
        if other.last_success_ms.is_some() {
            self.last_success_ms = other.last_success_ms;
        }
        if other.newest_created_at > self.newest_created_at {
            self.newest_created_at.clone_from(&other.newest_created_at);
        }
    }
}

/// A pipeline's credit spending on one UTC day.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DayCredits {
    /// `YYYY-MM-DD`, UTC.
    pub day: String,
    pub credits: u64,
}

impl Commit {
    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
            && self.pages.is_empty()
            && self.conversations.is_empty()
            && self.sink_points.is_empty()
            && self.raw.is_empty()
            && self.credits.is_empty()
            && self.folds.is_empty()
            && self.freshness.is_empty()
    }

    /// Appends another commit's changes after this one's.
    pub fn merge(&mut self, other: Commit) {
        self.seen.extend(other.seen);
        self.pages.extend(other.pages);
        self.conversations.extend(other.conversations);
        self.sink_points.extend(other.sink_points);
        self.raw.extend(other.raw);
        self.credits.extend(other.credits);
        self.folds.extend(other.folds);
        self.freshness.extend(other.freshness);
    }
}

/// The open state database plus the directory lock. Cheap to share behind an `Arc`.
///
/// Dropping it flushes the database one last time, and cannot panic: sled 0.34's own `Drop` panics when its
/// final fsync fails (EIO, ENOSPC, EDQUOT), after everything was committed. See [`Store`]'s `Drop`.
pub struct Store {
    /// Dropped only through `Drop for Store`, never by sled's glue directly.
    db: ManuallyDrop<sled::Db>,
    dir: PathBuf,
    seen_window: u64,
    /// Conversations (pipeline, conversation) whose seen set this process has folded and which have gained
    /// no exact history key since: a fold of one would find nothing to do, so a commit skips it. Skipping a
    /// fold can never lose or repeat a record (a fold only restates what the exact keys already say), it
    /// only leaves the set less compact; so this memory needs no persistence, and a conversation it does not
    /// know (every one after a restart) is folded as before. During a backfill the pages go straight into
    /// the folded range (`add_seen`), so most folds were such no-ops: 7% of the 10^5 bench's CPU.
    folded_clean: std::sync::Mutex<HashSet<(String, String)>>,
    /// Held for the life of the store: the flock is what makes us the one owner.
    _lock: File,
}

impl Store {
    /// Creates the directory (0750) if needed, takes the lock, opens sled with a bounded cache, and brings
    /// a state written by an earlier version to the current layout.
    pub fn open(dir: &Path, opts: StoreOptions) -> Result<Store, StateError> {
        let lock = Self::lock_dir(dir)?;
        Self::open_locked(dir, opts, lock)
    }

    /// Creates the directory (0750) if needed and takes its lock: the first half of [`Store::open`], for a
    /// caller that must keep the directory while it swaps the database (`state rebuild`).
    pub(crate) fn lock_dir(dir: &Path) -> Result<File, StateError> {
        let io = |op: &'static str| move |e: std::io::Error| StateError::io(dir, op, &e);
        // Only a folder we create gets our mode: an operator's folder keeps theirs (a shared 1777 one such as
        // /var/tmp must never lose its sticky or world bits for every other user). A folder that others
        // may write into is warned about, not refused: it is the operator's choice.
        let created = match fs::metadata(dir) {
            Ok(m) if !m.is_dir() => return Err(StateError::NotADirectory { dir: dir.to_path_buf() }),
            Ok(m) => {
                if m.permissions().mode() & 0o022 != 0 {
                    tracing::warn!(dir = %dir.display(), mode = format!("{:o}", m.permissions().mode() & 0o7777), "the state_dir is writable by other users; give dm-handoff a folder of its own (0700 or 0750)");
                }
                false
            }
            Err(_) => {
                fs::DirBuilder::new().recursive(true).mode(0o750).create(dir).map_err(io("creating it"))?;
                true
            }
        };
        let mut lock = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o640)
            .open(dir.join("LOCK"))
            .map_err(io("opening LOCK"))?;
        let held = |lock: &mut File| {
            let holder = read_pid(lock).or_else(|| crate::flock::holder(&dir.join("LOCK")));
            StateError::Locked { dir: dir.to_path_buf(), holder }
        };
        match FileExt::try_lock_exclusive(&lock) {
            Ok(true) => {}
            Ok(false) => return Err(held(&mut lock)),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Err(held(&mut lock)),
            Err(e) => return Err(io("locking LOCK")(e)),
        }
        // Record who holds it, for the next process's error message.
        lock.set_len(0).map_err(io("writing LOCK"))?;
        lock.rewind().map_err(io("writing LOCK"))?;
        writeln!(lock, "{}", std::process::id()).map_err(io("writing LOCK"))?;
        if created {
            // The umask may have taken bits off the mode asked for.
            let _ = fs::set_permissions(dir, fs::Permissions::from_mode(0o750));
        }
        Ok(lock)
    }

    /// Opens the database of a directory whose lock `lock` holds (from [`Store::lock_dir`]); the store keeps
    /// it. A clone of the lock's file keeps the directory locked after the store is dropped.
    pub(crate) fn open_locked(dir: &Path, opts: StoreOptions, lock: File) -> Result<Store, StateError> {
        let db = sled::Config::new()
            .path(dir.join("db"))
            .cache_capacity(opts.cache_bytes)
            .mode(sled::Mode::HighThroughput)
            // We flush explicitly after every commit; sled's timer flush would only add background writes.
            .flush_every_ms(None)
            .open()
            .map_err(|e| {
                // Not ours after all (sled's own lock is held, or the database is unusable): leave no PID of
                // ours behind for the next process's message.
                let _ = lock.set_len(0);
                StateError::sled(dir, "opening the database", e)
            })?;
        let store = Store {
            db: ManuallyDrop::new(db),
            dir: dir.to_path_buf(),
            seen_window: opts.seen_window,
            folded_clean: std::sync::Mutex::default(),
            _lock: lock,
        };
        store.upgrade()?;
        Ok(store)
    }

    fn db_err(&self) -> impl Fn(sled::Error) -> StateError + '_ {
        move |e| StateError::sled(&self.dir, "using the database", e)
    }

    /// Whether a record with this key was already written for this pipeline: inside the conversation's
    /// covered range (history kinds), or one of the exact keys.
    pub fn is_seen(&self, pipeline: &str, k: &Key) -> Result<bool, StateError> {
        let covered = if is_history(k.kind) { self.covered(pipeline, &k.conversation)? } else { None };
        self.is_seen_with(pipeline, k, covered)
    }

    /// [`Store::is_seen`] with `covered` already read for `k.conversation`: the sync engine reads it once per
    /// page, not once per record. Only folds change a range, and a conversation's folds run inside its own
    /// commits, which its sync task awaits before it reads the next page.
    pub fn is_seen_with(&self, pipeline: &str, k: &Key, covered: Option<Covered>) -> Result<bool, StateError> {
        if covered.is_some_and(|c| c.holds(k)) {
            return Ok(true);
        }
        if let (true, Some(n)) = (is_history(k.kind), numeric_id(&k.id)) {
            if Store::stream_holds(self.stream_covered(pipeline)?, k.kind, n) {
                return Ok(true);
            }
        }
        self.db.contains_key(seen_key(pipeline, k)).map_err(self.db_err())
    }

    /// Which of a page's IDs (all of one conversation) the seen set holds, in the order given. A page's numeric
    /// history IDs cost one range read per kind, not one lookup each: a backfill page of new messages reads
    /// an empty range once. Same answers as [`Store::is_seen_with`] for each.
    pub fn seen_among(
        &self,
        pipeline: &str,
        conversation: &str,
        ids: &[(Kind, &str)],
        covered: Option<Covered>,
    ) -> Result<Vec<bool>, StateError> {
        let mut seen = vec![false; ids.len()];
        // Per history kind: the span of numeric IDs the folded range does not answer.
        let mut spans: Vec<(Kind, u64, u64)> = Vec::new();
        let mut numeric: Vec<Option<u64>> = vec![None; ids.len()];
        // The inbox stream's range answers for every conversation of the pipeline (see `inbox`).
        let stream = self.stream_covered(pipeline)?;
        for (i, (kind, id)) in ids.iter().enumerate() {
            match (is_history(*kind), numeric_id(id)) {
                (true, Some(n)) if covered.is_some_and(|c| c.lo <= n && n <= c.hi) => seen[i] = true,
                (true, Some(n)) if Store::stream_holds(stream, *kind, n) => seen[i] = true,
                (true, Some(n)) => {
                    numeric[i] = Some(n);
                    match spans.iter_mut().find(|(k, _, _)| k == kind) {
                        Some((_, lo, hi)) => (*lo, *hi) = ((*lo).min(n), (*hi).max(n)),
                        None => spans.push((*kind, n, n)),
                    }
                }
                _ => {
                    let k = seen_key_of(pipeline, conversation, *kind, id);
                    seen[i] = self.db.contains_key(k).map_err(self.db_err())?;
                }
            }
        }
        for (kind, lo, hi) in spans {
            let bound = |n: u64| key(b's', &[pipeline, conversation, kind.as_str(), &padded(n)]);
            let mut held = HashSet::new();
            for kv in self.db.range(bound(lo)..=bound(hi)) {
                let (k, _) = kv.map_err(self.db_err())?;
                if let Some(n) = padded_id(&k) {
                    held.insert(n);
                }
            }
            if held.is_empty() {
                continue;
            }
            for (i, (k, _)) in ids.iter().enumerate() {
                if *k == kind && numeric[i].is_some_and(|n| held.contains(&n)) {
                    seen[i] = true;
                }
            }
        }
        Ok(seen)
    }

    /// The folded part of a conversation's seen set, if anything was folded yet.
    pub fn covered(&self, pipeline: &str, conversation: &str) -> Result<Option<Covered>, StateError> {
        self.get_json(&key(b'r', &[pipeline, conversation]))
    }

    /// The stored state of a conversation, or the empty state for one never synced.
    pub fn conversation(&self, pipeline: &str, conversation: &str) -> Result<ConvState, StateError> {
        self.get_json(&key(b'c', &[pipeline, conversation])).map(Option::unwrap_or_default)
    }

    /// All stored conversation states of a pipeline, by conversation key.
    pub fn conversations(&self, pipeline: &str) -> Result<Vec<(String, ConvState)>, StateError> {
        let prefix = key(b'c', &[pipeline, ""]);
        let mut out = Vec::new();
        for kv in self.db.scan_prefix(&prefix) {
            let (k, v) = kv.map_err(self.db_err())?;
            let conv = String::from_utf8_lossy(&k[prefix.len()..]).into_owned();
            let st = serde_json::from_slice(&v).map_err(|e| self.corrupt(&k, e))?;
            out.push((conv, st));
        }
        Ok(out)
    }

    /// Where the pipeline's files end as far as this state knows.
    pub fn commit_point(&self, pipeline: &str) -> Result<CommitPoint, StateError> {
        self.get_json(&key(b'k', &[pipeline])).map(Option::unwrap_or_default)
    }

    /// The pipeline's stored day counter (possibly of an earlier day).
    pub fn day_credits(&self, pipeline: &str) -> Result<DayCredits, StateError> {
        self.get_json(&key(b'd', &[pipeline])).map(Option::unwrap_or_default)
    }

    /// Credits the pipeline spent today (UTC).
    pub fn credits_today(&self, pipeline: &str) -> Result<u64, StateError> {
        let d = self.day_credits(pipeline)?;
        Ok(if d.day == crate::time::utc_day(std::time::SystemTime::now()) { d.credits } else { 0 })
    }

    /// The pipeline's stored freshness (empty for a pipeline that never wrote or succeeded).
    pub fn freshness(&self, pipeline: &str) -> Result<Freshness, StateError> {
        self.get_json(&key(b'f', &[pipeline])).map(Option::unwrap_or_default)
    }

    /// A cached `@username` resolution.
    pub fn resolved_user(&self, provider: &str, username: &str) -> Result<Option<String>, StateError> {
        self.get_json(&Self::user_key(provider, username))
    }

    /// The raw entry for caching a username resolution, to put in a [`Commit`].
    pub fn user_entry(provider: &str, username: &str, user_id: &str) -> Result<(Vec<u8>, Vec<u8>), StateError> {
        Ok((Self::user_key(provider, username), encode("a username", user_id)?))
    }

    fn user_key(provider: &str, username: &str) -> Vec<u8> {
        key(b'u', &[provider, &username.to_ascii_lowercase()])
    }

    /// A send-ledger entry of a pipeline, by idempotency key.
    pub fn ledger<T: for<'de> Deserialize<'de>>(&self, pipeline: &str, idem: &str) -> Result<Option<T>, StateError> {
        self.get_json(&key(b'x', &[pipeline, idem]))
    }

    /// The raw entry for a send-ledger value, to put in a [`Commit`].
    pub fn ledger_entry<T: Serialize>(pipeline: &str, idem: &str, value: &T) -> Result<(Vec<u8>, Vec<u8>), StateError> {
        Ok((key(b'x', &[pipeline, idem]), encode("a ledger entry", value)?))
    }

    /// Applies a commit atomically and makes it durable before returning.
    pub fn commit(&self, c: &Commit) -> Result<(), StateError> {
        if c.is_empty() {
            return Ok(());
        }
        let mut batch = sled::Batch::default();
        self.add_seen(c, &mut batch)?;
        for (pipeline, conv, st) in &c.conversations {
            batch.insert(key(b'c', &[pipeline, conv]), encode("a conversation", st)?);
        }
        for (pipeline, point) in &c.sink_points {
            batch.insert(key(b'k', &[pipeline]), encode("a commit point", point)?);
        }
        for (k, v) in &c.raw {
            batch.insert(k.clone(), v.clone());
        }
        // Read-modify-write is safe: a pipeline's commits all come from its one writer thread.
        let today = crate::time::utc_day(std::time::SystemTime::now());
        let mut spent: std::collections::BTreeMap<&str, u64> = std::collections::BTreeMap::new();
        for (pipeline, n) in &c.credits {
            *spent.entry(pipeline.as_str()).or_default() += n;
        }
        for (pipeline, n) in spent {
            let mut day = self.day_credits(pipeline)?;
            if day.day != today {
                day = DayCredits { day: today.clone(), credits: 0 };
            }
            day.credits += n;
            batch.insert(key(b'd', &[pipeline]), encode("the credit counter", &day)?);
        }
        // Read-modify-write, as for credits: one writer thread per pipeline.
        let mut fresh: std::collections::BTreeMap<&str, Freshness> = std::collections::BTreeMap::new();
        for (pipeline, f) in &c.freshness {
            let stored = match fresh.entry(pipeline.as_str()) {
                std::collections::btree_map::Entry::Occupied(e) => e.into_mut(),
                std::collections::btree_map::Entry::Vacant(e) => e.insert(self.freshness(pipeline)?),
            };
            stored.merge(f);
        }
        for (pipeline, f) in fresh {
            batch.insert(key(b'f', &[pipeline]), encode("the freshness", &f)?);
        }
        self.db.apply_batch(batch).map_err(self.db_err())?;
        // After the batch, so the fold sees this commit's keys and conversation states. A fold only
        // restates what the seen set already says, so it needs no atomicity with the commit, only its own.
        for (pipeline, conv) in &c.folds {
            if conv == INBOX_STREAM {
                // Its keys are under other conversations, so no clean mark would ever be cleared for it.
                self.fold(pipeline, conv)?;
                continue;
            }
            let key = (pipeline.clone(), conv.clone());
            if self.clean_marks().contains(&key) {
                continue;
            }
            self.fold(pipeline, conv)?;
            self.clean_marks().insert(key);
        }
        self.db.flush().map_err(self.db_err())?;
        Ok(())
    }

    /// The folded-and-unchanged conversations; a poisoned lock only means a panic elsewhere, and the set
    /// is advisory (see `folded_clean`), so it is used as it is.
    fn clean_marks(&self) -> std::sync::MutexGuard<'_, HashSet<(String, String)>> {
        self.folded_clean.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Puts a commit's seen keys in the batch. A history ID that falls between the conversation's
    /// covered_from (as of this commit) and the top of its folded range goes straight into the range instead
    /// of becoming an exact key: the same batch commits the page that makes `covered_from..=hwm` gap-free, so
    /// it is folded the moment it is written. This is what keeps a long backfill from writing (and later
    /// deleting) one key per record.
    fn add_seen(&self, c: &Commit, batch: &mut sled::Batch) -> Result<(), StateError> {
        let mut adding = Adding { store: self, commit: c, batch, slots: HashMap::new(), dirty: HashSet::new() };
        for (pipeline, k) in &c.seen {
            adding.keys(pipeline, &k.conversation, [(k.kind, k.id.as_str())])?;
        }
        // A page's keys are all of one conversation: one slot lookup for the lot.
        for pg in &c.pages {
            adding.keys(&pg.pipeline, &pg.conversation, pg.keys.iter().map(|(kind, id)| (*kind, id.as_str())))?;
        }
        let Adding { batch, slots, dirty, .. } = adding;
        // Conversations that gained an exact history key: their next fold may have work again.
        if !dirty.is_empty() {
            let mut marks = self.clean_marks();
            for (pipeline, conv) in dirty {
                marks.remove(&(pipeline.to_string(), conv.to_string()));
            }
        }
        for ((pipeline, conv), slot) in slots {
            if let (true, Some(range)) = (slot.grown, slot.range) {
                batch.insert(key(b'r', &[pipeline, conv]), encode("a covered range", &range)?);
            }
        }
        Ok(())
    }

    /// Folds a conversation's older exact history keys into its covered range (see the module docs), in one
    /// atomic batch. Returns how many keys it removed. Not flushed: the next commit's flush makes it durable,
    /// and losing it in a crash loses nothing but the compaction.
    pub fn fold(&self, pipeline: &str, conversation: &str) -> Result<u64, StateError> {
        if conversation == INBOX_STREAM {
            return self.fold_stream(pipeline);
        }
        if self.seen_window == 0 {
            return Ok(0);
        }
        let st = self.conversation(pipeline, conversation)?;
        let (Some(lo), Some(hwm)) =
            (st.covered_from.as_deref().and_then(numeric_id), st.hwm.as_deref().and_then(numeric_id))
        else {
            return Ok(0);
        };
        // Nothing within FOLD_MIN_AGE_MS of hwm: the largest ID whose snowflake time is that much older.
        let Some(aged) = (hwm >> 22).checked_sub(FOLD_MIN_AGE_MS) else { return Ok(0) };
        let by_age = (aged << 22) | 0x3F_FFFF;
        // And never the newest `seen_window` exact IDs at or below hwm.
        let mut newest = Vec::new();
        for kind in HISTORY_KINDS {
            let (from, to) = self.history_bounds(pipeline, conversation, kind, 0, hwm);
            for kv in self.db.range(from..=to).rev().take(self.seen_window as usize + 1) {
                let (k, _) = kv.map_err(self.db_err())?;
                newest.extend(padded_id(&k));
            }
        }
        newest.sort_unstable_by(|a, b| b.cmp(a));
        let Some(&by_count) = newest.get(self.seen_window as usize) else { return Ok(0) };
        let hi = by_age.min(by_count);
        if hi < lo {
            return Ok(0);
        }
        let mut batch = sled::Batch::default();
        let mut removed = 0;
        for kind in HISTORY_KINDS {
            let (from, to) = self.history_bounds(pipeline, conversation, kind, lo, hi);
            for kv in self.db.range(from..=to) {
                let (k, _) = kv.map_err(self.db_err())?;
                // Only padded numeric IDs: an ID stored as it is never counts as inside a numeric range.
                if padded_id(&k).is_some() {
                    batch.remove(k);
                    removed += 1;
                }
            }
        }
        // [covered_from, hwm] only grows (covered_from only falls, hwm only rises), so the old range lies
        // inside it and the union is one range.
        let old = self.covered(pipeline, conversation)?;
        let merged = Covered { lo: old.map_or(lo, |o| o.lo.min(lo)), hi: old.map_or(hi, |o| o.hi.max(hi)) };
        if old == Some(merged) && removed == 0 {
            return Ok(0);
        }
        batch.insert(key(b'r', &[pipeline, conversation]), encode("a covered range", &merged)?);
        self.db.apply_batch(batch).map_err(self.db_err())?;
        Ok(removed)
    }

    /// The first and last possible exact keys of one kind of a conversation with padded IDs in `lo..=hi`.
    fn history_bounds(&self, pipeline: &str, conversation: &str, kind: Kind, lo: u64, hi: u64) -> (Vec<u8>, Vec<u8>) {
        let at = |n: u64| key(b's', &[pipeline, conversation, kind.as_str(), &padded(n)]);
        (at(lo), at(hi))
    }

    /// Makes everything durable (used at shutdown; commits already flush).
    pub fn flush(&self) -> Result<(), StateError> {
        self.db.flush().map(|_| ()).map_err(self.db_err())
    }

    /// Counts a pipeline's exact seen keys of one kind (for tests and diagnostics; walks the whole prefix).
    /// Folded history IDs are not counted: they live in [`Covered`] ranges.
    pub fn count_seen(&self, pipeline: &str, kind: Option<Kind>) -> Result<u64, StateError> {
        let mut n = 0;
        for kv in self.db.scan_prefix(key(b's', &[pipeline, ""])) {
            let (k, _) = kv.map_err(self.db_err())?;
            // Key layout: s, pipeline, conversation, kind, id, joined by NUL.
            if kind.is_none_or(|kind| k.split(|b| *b == 0).nth(3) == Some(kind.as_str().as_bytes())) {
                n += 1;
            }
        }
        Ok(n)
    }

    fn get_json<T: for<'de> Deserialize<'de>>(&self, k: &[u8]) -> Result<Option<T>, StateError> {
        match self.db.get(k).map_err(self.db_err())? {
            None => Ok(None),
            Some(v) => serde_json::from_slice(&v).map(Some).map_err(|e| self.corrupt(k, e)),
        }
    }

    fn corrupt(&self, k: &[u8], e: serde_json::Error) -> StateError {
        StateError::Corrupt {
            dir: self.dir.clone(),
            key: String::from_utf8_lossy(k).replace('\0', "/"),
            detail: e.to_string(),
        }
    }
}

/// A conversation's folded range as [`Store::add_seen`] grows it within one commit.
struct Slot {
    range: Option<Covered>,
    /// The conversation's `covered_from` as of this commit.
    from: Option<u64>,
    grown: bool,
}

/// [`Store::add_seen`]'s work in progress: the batch, each conversation's [`Slot`], and the conversations
/// that gained an exact history key.
struct Adding<'a> {
    store: &'a Store,
    commit: &'a Commit,
    batch: &'a mut sled::Batch,
    slots: HashMap<(&'a str, &'a str), Slot>,
    dirty: HashSet<(&'a str, &'a str)>,
}

impl<'a> Adding<'a> {
    /// Adds keys of one conversation: a history ID between its `covered_from` and the top of its folded
    /// range grows the range, anything else becomes an exact key.
    fn keys(
        &mut self,
        pipeline: &'a str,
        conv: &'a str,
        keys: impl IntoIterator<Item = (Kind, &'a str)>,
    ) -> Result<(), StateError> {
        let (store, commit) = (self.store, self.commit);
        let mut slot: Option<&mut Slot> = None;
        for (kind, id) in keys {
            if let (true, Some(n)) = (is_history(kind) && store.seen_window > 0, numeric_id(id)) {
                if slot.is_none() {
                    let found = match self.slots.entry((pipeline, conv)) {
                        std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
                        std::collections::hash_map::Entry::Vacant(e) => {
                            let from = match commit
                                .conversations
                                .iter()
                                .rev()
                                .find(|(p, cv, _)| p == pipeline && cv == conv)
                            {
                                Some((_, _, st)) => st.covered_from.clone(),
                                None => store.conversation(pipeline, conv)?.covered_from,
                            };
                            let from = from.as_deref().and_then(numeric_id);
                            e.insert(Slot { range: store.covered(pipeline, conv)?, from, grown: false })
                        }
                    };
                    slot = Some(found);
                }
                if let Some(s) = slot.as_deref_mut() {
                    if let (Some(range), Some(from)) = (s.range.as_mut(), s.from) {
                        if from <= n && n <= range.hi {
                            range.lo = range.lo.min(from);
                            s.grown = true;
                            continue;
                        }
                    }
                }
            }
            if is_history(kind) {
                self.dirty.insert((pipeline, conv));
            }
            self.batch.insert(seen_key_of(pipeline, conv, kind, id), &[][..]);
        }
        Ok(())
    }
}

impl Drop for Store {
    /// Every commit was flushed when it was made; this last flush only catches a fold that was not. If it
    /// fails, sled's own drop would do more I/O and panic on its `sync_all().unwrap()`, so the database is
    /// left to the process's exit (the kernel closes its files; nothing committed depends on it). If it
    /// succeeds, sled's drop runs, and a panic from its second fsync is caught and logged, not printed as
    /// a crash.
    fn drop(&mut self) {
        // SAFETY: `db` is taken exactly once, here, and never used after.
        let db = unsafe { ManuallyDrop::take(&mut self.db) };
        if std::thread::panicking() {
            // Unwinding already: a second panic would abort. Leave it to the exit.
            std::mem::forget(db);
            return;
        }
        if let Err(e) = db.flush() {
            let e = StateError::sled(&self.dir, "flushing it on close", e);
            tracing::error!(error = %e, "the state database's final flush failed; everything committed before was already flushed");
            std::mem::forget(db);
            return;
        }
        if !quiet::drop_catching_panics(db) {
            tracing::error!(dir = %self.dir.display(), "the state database's final sync on close failed; everything committed was already flushed, nothing is lost");
        }
    }
}

/// Running a drop that may panic without the panic reaching the terminal as a crash report.
mod quiet {
    use std::cell::Cell;
    use std::sync::Once;

    thread_local! {
        static QUIET: Cell<bool> = const { Cell::new(false) };
    }
    static HOOK: Once = Once::new();

    /// Drops `v`; false if its drop panicked (the panic is swallowed, and its message not printed).
    pub(super) fn drop_catching_panics<T>(v: T) -> bool {
        HOOK.call_once(|| {
            let previous = std::panic::take_hook();
            std::panic::set_hook(Box::new(move |info| {
                if !QUIET.with(Cell::get) {
                    previous(info);
                }
            }));
        });
        QUIET.with(|q| q.set(true));
        let ok = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || drop(v))).is_ok();
        QUIET.with(|q| q.set(false));
        ok
    }
}

fn read_pid(f: &mut File) -> Option<u32> {
    let mut s = String::new();
    f.rewind().ok()?;
    f.read_to_string(&mut s).ok()?;
    s.trim().parse().ok()
}

#[cfg(test)]
mod tests;
