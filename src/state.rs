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

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use fs4::fs_std::FileExt;
use serde::{Deserialize, Serialize};

use crate::record::{Key, Kind};
use crate::sink::CommitPoint;

/// Why the state could not be used. `Locked` is matched by callers (it has its own exit code).
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error(
        "state directory {dir} is in use by another dm-handoff process{}; stop it, or let the running daemon do the work, or use another state_dir",
        holder.map(|p| format!(" (pid {p})")).unwrap_or_default()
    )]
    Locked { dir: PathBuf, holder: Option<u32> },
    #[error("state directory {dir}: {op}: {source}")]
    Io { dir: PathBuf, op: &'static str, source: std::io::Error },
    #[error("state database in {dir}: {source}; if the disk is full, free space and run again")]
    Db { dir: PathBuf, source: sled::Error },
    #[error("state database in {dir}: a stored value under {key} is unreadable: {detail}")]
    Corrupt { dir: PathBuf, key: String, detail: String },
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
            && self.conversations.is_empty()
            && self.sink_points.is_empty()
            && self.raw.is_empty()
            && self.credits.is_empty()
            && self.folds.is_empty()
    }

    /// Appends another commit's changes after this one's.
    pub fn merge(&mut self, other: Commit) {
        self.seen.extend(other.seen);
        self.conversations.extend(other.conversations);
        self.sink_points.extend(other.sink_points);
        self.raw.extend(other.raw);
        self.credits.extend(other.credits);
        self.folds.extend(other.folds);
    }
}

/// The open state database plus the directory lock. Cheap to share behind an `Arc`.
pub struct Store {
    db: sled::Db,
    dir: PathBuf,
    seen_window: u64,
    /// Held for the life of the store: the flock is what makes us the one owner.
    _lock: File,
}

fn key(prefix: u8, parts: &[&str]) -> Vec<u8> {
    let mut k = vec![prefix];
    for p in parts {
        k.push(0);
        k.extend_from_slice(p.as_bytes());
    }
    k
}

/// The ID as a number, if it is one in canonical form (no sign, no leading zero) that fits a u64.
pub fn numeric_id(id: &str) -> Option<u64> {
    if id.is_empty()
        || id.len() > 20
        || (id.len() > 1 && id.starts_with('0'))
        || !id.bytes().all(|b| b.is_ascii_digit())
    {
        return None;
    }
    id.parse().ok()
}

/// A numeric ID as keys store it: zero-padded to 20 digits, so keys sort numerically.
fn padded(n: u64) -> String {
    format!("{n:020}")
}

/// The form an ID takes in a key: numbers padded, anything else as it is.
fn stored_id(id: &str) -> std::borrow::Cow<'_, str> {
    match numeric_id(id) {
        Some(n) => padded(n).into(),
        None => id.into(),
    }
}

/// Reads a padded ID back from a whole seen key; None for an ID stored as it is.
fn padded_id(k: &[u8]) -> Option<u64> {
    let at = k.len().checked_sub(21)?;
    let part = &k[at + 1..];
    if k[at] != 0 || !part.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(part).ok()?.parse().ok()
}

fn seen_key(pipeline: &str, k: &Key) -> Vec<u8> {
    key(b's', &[pipeline, &k.conversation, k.kind.as_str(), &stored_id(&k.id)])
}

/// Kinds whose IDs come from a conversation's history, and so can be folded into its covered range.
const HISTORY_KINDS: [Kind; 2] = [Kind::DmMessage, Kind::DmEvent];

fn is_history(kind: Kind) -> bool {
    HISTORY_KINDS.contains(&kind)
}

impl Store {
    /// Creates the directory (0750) if needed, takes the lock, opens sled with a bounded cache, and brings
    /// a state written by an earlier version to the current layout.
    pub fn open(dir: &Path, opts: StoreOptions) -> Result<Store, StateError> {
        let io = |op: &'static str| move |source| StateError::Io { dir: dir.to_path_buf(), op, source };
        if !dir.exists() {
            fs::DirBuilder::new().recursive(true).mode(0o750).create(dir).map_err(io("creating it"))?;
        }
        let mut lock = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o640)
            .open(dir.join("LOCK"))
            .map_err(io("opening LOCK"))?;
        match FileExt::try_lock_exclusive(&lock) {
            Ok(true) => {}
            Ok(false) => return Err(StateError::Locked { dir: dir.to_path_buf(), holder: read_pid(&mut lock) }),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                return Err(StateError::Locked { dir: dir.to_path_buf(), holder: read_pid(&mut lock) })
            }
            Err(e) => return Err(io("locking LOCK")(e)),
        }
        // Record who holds it, for the next process's error message.
        lock.set_len(0).map_err(io("writing LOCK"))?;
        lock.rewind().map_err(io("writing LOCK"))?;
        writeln!(lock, "{}", std::process::id()).map_err(io("writing LOCK"))?;
        let _ = fs::set_permissions(dir, fs::Permissions::from_mode(0o750));
        let db = sled::Config::new()
            .path(dir.join("db"))
            .cache_capacity(opts.cache_bytes)
            .mode(sled::Mode::HighThroughput)
            // We flush explicitly after every commit; sled's timer flush would only add background writes.
            .flush_every_ms(None)
            .open()
            .map_err(|source| StateError::Db { dir: dir.to_path_buf(), source })?;
        let store = Store { db, dir: dir.to_path_buf(), seen_window: opts.seen_window, _lock: lock };
        store.upgrade()?;
        Ok(store)
    }

    /// Rewrites a version-1 state (numeric IDs unpadded) to the current layout. Each chunk is one atomic
    /// batch and already-padded keys are left alone, so an interrupted upgrade simply continues next time.
    fn upgrade(&self) -> Result<(), StateError> {
        match self.get_json::<u64>(b"v")? {
            Some(FORMAT) => return Ok(()),
            Some(v) => {
                return Err(StateError::Corrupt {
                    dir: self.dir.clone(),
                    key: "v".into(),
                    detail: format!("layout version {v} is from a newer dm-handoff; upgrade this one"),
                })
            }
            None => {}
        }
        let mut batch = sled::Batch::default();
        let mut pending = 0usize;
        let mut upgraded = 0u64;
        for kv in self.db.scan_prefix([b's']) {
            let (k, _) = kv.map_err(self.db_err())?;
            let id_start = k.iter().rposition(|b| *b == 0).map_or(k.len(), |i| i + 1);
            let Ok(id) = std::str::from_utf8(&k[id_start..]) else { continue };
            let stored = stored_id(id);
            if stored == id {
                continue;
            }
            let mut new_key = k[..id_start].to_vec();
            new_key.extend_from_slice(stored.as_bytes());
            batch.remove(k);
            batch.insert(new_key, &[][..]);
            pending += 1;
            upgraded += 1;
            if pending == 10_000 {
                self.db.apply_batch(std::mem::take(&mut batch)).map_err(self.db_err())?;
                pending = 0;
            }
        }
        self.db.apply_batch(batch).map_err(self.db_err())?;
        // Version 1 had no covered_from. For a conversation whose backfill is done, every page at or below
        // hwm was committed, so its oldest exact history key starts a gap-free range; then fold it at once.
        let mut folded = 0;
        for kv in self.db.scan_prefix([b'c']) {
            let (k, v) = kv.map_err(self.db_err())?;
            let mut st: ConvState = serde_json::from_slice(&v).map_err(|e| self.corrupt(&k, e))?;
            let mut parts = k[2..].splitn(2, |b| *b == 0).map(|p| String::from_utf8_lossy(p).into_owned());
            let (Some(pipeline), Some(conv)) = (parts.next(), parts.next()) else { continue };
            if !st.backfill_done || st.hwm.is_none() || st.covered_from.is_some() {
                continue;
            }
            let mut oldest = Vec::new();
            for kind in HISTORY_KINDS {
                let (from, to) = self.history_bounds(&pipeline, &conv, kind, 0, u64::MAX);
                if let Some(kv) = self.db.range(from..=to).next() {
                    oldest.extend(padded_id(&kv.map_err(self.db_err())?.0));
                }
            }
            let Some(oldest) = oldest.into_iter().min() else { continue };
            st.covered_from = Some(oldest.to_string());
            self.db.insert(&k, serde_json::to_vec(&st).unwrap_or_default()).map_err(self.db_err())?;
            folded += self.fold(&pipeline, &conv)?;
        }
        self.db.insert(b"v", serde_json::to_vec(&FORMAT).unwrap_or_default()).map_err(self.db_err())?;
        self.db.flush().map_err(self.db_err())?;
        if upgraded > 0 || folded > 0 {
            tracing::info!(dir = %self.dir.display(), keys = upgraded, folded, "state upgraded to layout {FORMAT}");
        }
        Ok(())
    }

    fn db_err(&self) -> impl Fn(sled::Error) -> StateError + '_ {
        move |source| StateError::Db { dir: self.dir.clone(), source }
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
        self.db.contains_key(seen_key(pipeline, k)).map_err(self.db_err())
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
        Ok(if d.day == crate::poll::utc_day(std::time::SystemTime::now()) { d.credits } else { 0 })
    }

    /// A cached `@username` resolution.
    pub fn resolved_user(&self, provider: &str, username: &str) -> Result<Option<String>, StateError> {
        self.get_json(&Self::user_key(provider, username))
    }

    /// The raw entry for caching a username resolution, to put in a [`Commit`].
    pub fn user_entry(provider: &str, username: &str, user_id: &str) -> (Vec<u8>, Vec<u8>) {
        (Self::user_key(provider, username), serde_json::to_vec(user_id).unwrap_or_default())
    }

    fn user_key(provider: &str, username: &str) -> Vec<u8> {
        key(b'u', &[provider, &username.to_ascii_lowercase()])
    }

    /// A send-ledger entry of a pipeline, by idempotency key.
    pub fn ledger<T: for<'de> Deserialize<'de>>(&self, pipeline: &str, idem: &str) -> Result<Option<T>, StateError> {
        self.get_json(&key(b'x', &[pipeline, idem]))
    }

    /// The raw entry for a send-ledger value, to put in a [`Commit`].
    pub fn ledger_entry<T: Serialize>(pipeline: &str, idem: &str, value: &T) -> (Vec<u8>, Vec<u8>) {
        (key(b'x', &[pipeline, idem]), serde_json::to_vec(value).unwrap_or_default())
    }

    /// Applies a commit atomically and makes it durable before returning.
    pub fn commit(&self, c: &Commit) -> Result<(), StateError> {
        if c.is_empty() {
            return Ok(());
        }
        let mut batch = sled::Batch::default();
        self.add_seen(c, &mut batch)?;
        for (pipeline, conv, st) in &c.conversations {
            batch.insert(key(b'c', &[pipeline, conv]), serde_json::to_vec(st).unwrap_or_default());
        }
        for (pipeline, point) in &c.sink_points {
            batch.insert(key(b'k', &[pipeline]), serde_json::to_vec(point).unwrap_or_default());
        }
        for (k, v) in &c.raw {
            batch.insert(k.clone(), v.clone());
        }
        // Read-modify-write is safe: a pipeline's commits all come from its one writer thread.
        let today = crate::poll::utc_day(std::time::SystemTime::now());
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
            batch.insert(key(b'd', &[pipeline]), serde_json::to_vec(&day).unwrap_or_default());
        }
        self.db.apply_batch(batch).map_err(self.db_err())?;
        // After the batch, so the fold sees this commit's keys and conversation states. A fold only
        // restates what the seen set already says, so it needs no atomicity with the commit, only its own.
        for (pipeline, conv) in &c.folds {
            self.fold(pipeline, conv)?;
        }
        self.db.flush().map_err(self.db_err())?;
        Ok(())
    }

    /// Puts a commit's seen keys in the batch. A history ID that falls between the conversation's
    /// covered_from (as of this commit) and the top of its folded range goes straight into the range instead
    /// of becoming an exact key: the same batch commits the page that makes `covered_from..=hwm` gap-free, so
    /// it is folded the moment it is written. This is what keeps a long backfill from writing (and later
    /// deleting) one key per record.
    fn add_seen(&self, c: &Commit, batch: &mut sled::Batch) -> Result<(), StateError> {
        struct Slot {
            range: Option<Covered>,
            from: Option<u64>,
            grown: bool,
        }
        let mut slots: std::collections::HashMap<(&str, &str), Slot> = std::collections::HashMap::new();
        for (pipeline, k) in &c.seen {
            if let (true, Some(n)) = (is_history(k.kind) && self.seen_window > 0, numeric_id(&k.id)) {
                let slot = match slots.entry((pipeline.as_str(), k.conversation.as_str())) {
                    std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
                    std::collections::hash_map::Entry::Vacant(e) => {
                        let conv = k.conversation.as_str();
                        let from = match c.conversations.iter().rev().find(|(p, cv, _)| p == pipeline && cv == conv) {
                            Some((_, _, st)) => st.covered_from.clone(),
                            None => self.conversation(pipeline, conv)?.covered_from,
                        };
                        let from = from.as_deref().and_then(numeric_id);
                        e.insert(Slot { range: self.covered(pipeline, conv)?, from, grown: false })
                    }
                };
                if let (Some(range), Some(from)) = (slot.range.as_mut(), slot.from) {
                    if from <= n && n <= range.hi {
                        range.lo = range.lo.min(from);
                        slot.grown = true;
                        continue;
                    }
                }
            }
            batch.insert(seen_key(pipeline, k), &[][..]);
        }
        for ((pipeline, conv), slot) in slots {
            if let (true, Some(range)) = (slot.grown, slot.range) {
                batch.insert(key(b'r', &[pipeline, conv]), serde_json::to_vec(&range).unwrap_or_default());
            }
        }
        Ok(())
    }

    /// Folds a conversation's older exact history keys into its covered range (see the module docs), in one
    /// atomic batch. Returns how many keys it removed. Not flushed: the next commit's flush makes it durable,
    /// and losing it in a crash loses nothing but the compaction.
    pub fn fold(&self, pipeline: &str, conversation: &str) -> Result<u64, StateError> {
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
        batch.insert(key(b'r', &[pipeline, conversation]), serde_json::to_vec(&merged).unwrap_or_default());
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

fn read_pid(f: &mut File) -> Option<u32> {
    let mut s = String::new();
    f.rewind().ok()?;
    f.read_to_string(&mut s).ok()?;
    s.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts() -> StoreOptions {
        StoreOptions { cache_bytes: 1 << 20, seen_window: 2 }
    }

    fn k(conv: &str, id: &str) -> Key {
        Key { kind: Kind::DmMessage, conversation: conv.into(), id: id.into() }
    }

    #[test]
    fn commit_is_visible_after_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = Store::open(dir.path(), opts()).unwrap();
            let st = ConvState { hwm: Some("10".into()), messages_written: 3, ..ConvState::default() };
            s.commit(&Commit {
                seen: vec![("p".into(), k("a", "1")), ("p".into(), k("a", "2"))],
                conversations: vec![("p".into(), "a".into(), st)],
                sink_points: vec![("p".into(), CommitPoint { seq: 2, offset: 99, active_since_ms: Some(5) })],
                raw: vec![Store::user_entry("xquik", "Dana", "42")],
                credits: vec![("p".into(), 5), ("p".into(), 7)],
                folds: vec![],
            })
            .unwrap();
        }
        let s = Store::open(dir.path(), opts()).unwrap();
        assert!(s.is_seen("p", &k("a", "1")).unwrap());
        assert!(!s.is_seen("p", &k("a", "3")).unwrap());
        assert!(!s.is_seen("other", &k("a", "1")).unwrap(), "seen sets are per pipeline");
        assert_eq!(s.conversation("p", "a").unwrap().hwm.as_deref(), Some("10"));
        assert_eq!(s.conversation("p", "b").unwrap(), ConvState::default());
        assert_eq!(s.commit_point("p").unwrap().offset, 99);
        assert_eq!(s.resolved_user("xquik", "dana").unwrap().as_deref(), Some("42"));
        assert_eq!(s.credits_today("p").unwrap(), 12);
        assert_eq!(s.credits_today("q").unwrap(), 0);
        assert_eq!(s.conversations("p").unwrap().len(), 1);
        assert_eq!(s.count_seen("p", Some(Kind::DmMessage)).unwrap(), 2);
        assert_eq!(s.count_seen("p", Some(Kind::DmSend)).unwrap(), 0);
    }

    /// A snowflake-like ID `hours` hours after an arbitrary start, with some low bits set.
    fn sf(hours: u64) -> String {
        (((1_000_000_000_000 + hours * 3_600_000) << 22) | 0x1234).to_string()
    }

    fn conv_state(covered_from: &str, hwm: &str) -> ConvState {
        ConvState {
            covered_from: Some(covered_from.into()),
            hwm: Some(hwm.into()),
            backfill_started: true,
            ..ConvState::default()
        }
    }

    /// Writes keys for `ids` in conversation `a` of pipeline `p` with the given state, then folds.
    fn write_and_fold(s: &Store, ids: &[String], st: ConvState) -> u64 {
        s.commit(&Commit {
            seen: ids.iter().map(|i| ("p".to_string(), k("a", i))).collect(),
            conversations: vec![("p".into(), "a".into(), st)],
            ..Commit::default()
        })
        .unwrap();
        s.fold("p", "a").unwrap()
    }

    #[test]
    fn fold_keeps_the_window_and_the_last_hour_exact_and_still_knows_every_id() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path(), opts()).unwrap();
        // Hourly messages 0..=10, and one more 10 minutes after message 10 (well within the last hour).
        let mut ids: Vec<String> = (0..=10).map(sf).collect();
        let late = (((1_000_000_000_000u64 + 10 * 3_600_000 + 600_000) << 22) | 7).to_string();
        ids.push(late.clone());
        let removed = write_and_fold(&s, &ids, conv_state(&sf(0), &late));
        // Window 2 keeps `late` and sf(10); the age rule keeps nothing more (sf(10) is 10 min older).
        assert_eq!(removed, 10);
        assert_eq!(s.count_seen("p", Some(Kind::DmMessage)).unwrap(), 2);
        let c = s.covered("p", "a").unwrap().unwrap();
        assert_eq!((c.lo.to_string(), c.hi.to_string()), (sf(0), sf(9)));
        for id in &ids {
            assert!(s.is_seen("p", &k("a", id)).unwrap(), "{id} must still be seen");
        }
        // An ID never written: inside the folded range it counts as seen (the range says it was fetched);
        // below it, and in the exact window, it does not.
        assert!(s.is_seen("p", &k("a", &(sf(5).parse::<u64>().unwrap() + 1).to_string())).unwrap());
        assert!(!s.is_seen("p", &k("a", &(sf(0).parse::<u64>().unwrap() - 1).to_string())).unwrap());
        assert!(!s.is_seen("p", &k("a", &(sf(10).parse::<u64>().unwrap() + 1).to_string())).unwrap());
        // Other conversations, kinds and pipelines are untouched by the range.
        assert!(!s.is_seen("p", &k("b", &sf(5))).unwrap());
        assert!(!s.is_seen("q", &k("a", &sf(5))).unwrap());
        let send = Key { kind: Kind::DmSend, conversation: "a".into(), id: sf(5) };
        assert!(!s.is_seen("p", &send).unwrap());
        // And it survives a reopen.
        drop(s);
        let s = Store::open(dir.path(), opts()).unwrap();
        assert!(ids.iter().all(|id| s.is_seen("p", &k("a", id)).unwrap()));
        assert_eq!(s.covered("p", "a").unwrap(), Some(c));
    }

    #[test]
    fn fold_never_crosses_covered_from_and_skips_ids_it_cannot_order() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path(), opts()).unwrap();
        let mut ids: Vec<String> = (0..10).map(sf).collect();
        ids.push("abc".into());
        ids.push("0042".into());
        // Pages below sf(4) were written but not committed as gap-free: they must stay exact.
        let removed = write_and_fold(&s, &ids, conv_state(&sf(4), &sf(9)));
        assert_eq!(removed, 4, "sf(4)..=sf(7) folded; sf(8), sf(9) are the window");
        assert_eq!(s.count_seen("p", Some(Kind::DmMessage)).unwrap(), 8);
        assert!(ids.iter().all(|id| s.is_seen("p", &k("a", id)).unwrap()));
        assert!(!s.is_seen("p", &k("a", &(sf(2).parse::<u64>().unwrap() + 1).to_string())).unwrap());
        // A second fold after the backfill went lower extends the same range downwards.
        let more: Vec<String> = (10..14).map(sf).collect();
        let removed = write_and_fold(&s, &more, conv_state(&sf(0), &sf(13)));
        assert_eq!(removed, 8, "sf(0..4) and sf(8..12) folded; sf(12), sf(13) are the window");
        let c = s.covered("p", "a").unwrap().unwrap();
        assert_eq!((c.lo.to_string(), c.hi.to_string()), (sf(0), sf(11)));
        assert!(ids.iter().chain(&more).all(|id| s.is_seen("p", &k("a", id)).unwrap()));
    }

    #[test]
    fn once_folded_older_pages_go_straight_into_the_range() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path(), opts()).unwrap();
        let first: Vec<String> = (10..20).map(sf).collect();
        write_and_fold(&s, &first, conv_state(&sf(10), &sf(19)));
        let before = s.count_seen("p", None).unwrap();
        // A backfill page below the range, committed with the covered_from it establishes: no exact keys.
        // In the same commit, a key below that covered_from (not gap-free) and one above the range stay exact.
        let page: Vec<String> = (5..10).map(sf).collect();
        let mut seen: Vec<(String, Key)> = page.iter().map(|i| ("p".to_string(), k("a", i))).collect();
        seen.push(("p".into(), k("a", &sf(1))));
        seen.push(("p".into(), k("a", &sf(20))));
        s.commit(&Commit {
            seen,
            conversations: vec![("p".into(), "a".into(), conv_state(&sf(5), &sf(19)))],
            ..Commit::default()
        })
        .unwrap();
        assert_eq!(s.count_seen("p", None).unwrap(), before + 2);
        let c = s.covered("p", "a").unwrap().unwrap();
        assert_eq!((c.lo.to_string(), c.hi.to_string()), (sf(5), sf(17)));
        assert!(page.iter().chain(&first).all(|id| s.is_seen("p", &k("a", id)).unwrap()));
        assert!(s.is_seen("p", &k("a", &sf(1))).unwrap() && s.is_seen("p", &k("a", &sf(20))).unwrap());
        assert!(!s.is_seen("p", &k("a", &sf(2))).unwrap());
    }

    #[test]
    fn fold_does_nothing_without_a_gap_free_range_or_with_window_zero() {
        let dir = tempfile::tempdir().unwrap();
        let ids: Vec<String> = (0..10).map(sf).collect();
        {
            let s = Store::open(dir.path(), opts()).unwrap();
            let st = ConvState { hwm: Some(sf(9)), ..ConvState::default() };
            assert_eq!(write_and_fold(&s, &ids, st), 0, "no covered_from yet");
            assert_eq!(s.covered("p", "a").unwrap(), None);
        }
        let s = Store::open(dir.path(), StoreOptions { seen_window: 0, ..opts() }).unwrap();
        assert_eq!(write_and_fold(&s, &ids, conv_state(&sf(0), &sf(9))), 0, "folding is off");
        assert_eq!(s.count_seen("p", None).unwrap(), 10);
    }

    #[test]
    fn a_version_1_state_is_upgraded_and_folded_on_open() {
        let dir = tempfile::tempdir().unwrap();
        let ids: Vec<String> = (0..10).map(sf).collect();
        {
            // Write the old layout by hand: unpadded IDs, no `v`, no covered_from.
            let db = sled::open(dir.path().join("db")).unwrap();
            for id in ids.iter().map(String::as_str).chain(["42", "x1"]) {
                db.insert(key(b's', &["p", "a", "dm_message", id]), &[][..]).unwrap();
            }
            db.insert(key(b's', &["p", "a", "dm_send", "43"]), &[][..]).unwrap();
            db.insert(key(b's', &["p", "b", "dm_message", "7"]), &[][..]).unwrap();
            let done =
                ConvState { hwm: Some(sf(9)), backfill_started: true, backfill_done: true, ..ConvState::default() };
            db.insert(key(b'c', &["p", "a"]), serde_json::to_vec(&done).unwrap()).unwrap();
            let midway = ConvState { hwm: Some("7".into()), backfill_started: true, ..ConvState::default() };
            db.insert(key(b'c', &["p", "b"]), serde_json::to_vec(&midway).unwrap()).unwrap();
            db.flush().unwrap();
        }
        let s = Store::open(dir.path(), opts()).unwrap();
        for id in ids.iter().map(String::as_str).chain(["42", "x1"]) {
            assert!(s.is_seen("p", &k("a", id)).unwrap(), "{id}");
        }
        assert!(s.is_seen("p", &Key { kind: Kind::DmSend, conversation: "a".into(), id: "43".into() }).unwrap());
        assert!(s.is_seen("p", &k("b", "7")).unwrap());
        assert_eq!(s.conversation("p", "a").unwrap().covered_from.as_deref(), Some("42"));
        assert_eq!(s.conversation("p", "b").unwrap().covered_from, None, "backfill not done: left alone");
        // a: 42, sf(0)..=sf(7) folded; sf(8), sf(9), x1 exact. Plus the send and b's message.
        assert_eq!(s.count_seen("p", None).unwrap(), 5);
        drop(s);
        // Opening again finds version 2 and changes nothing.
        let s = Store::open(dir.path(), opts()).unwrap();
        assert_eq!(s.count_seen("p", None).unwrap(), 5);
    }

    #[test]
    fn numeric_ids_are_canonical_u64s_only() {
        assert_eq!(numeric_id("0"), Some(0));
        assert_eq!(numeric_id("18446744073709551615"), Some(u64::MAX));
        for bad in ["", "007", "18446744073709551616", "1e5", "-1", " 1", "x"] {
            assert_eq!(numeric_id(bad), None, "{bad:?}");
        }
        assert_eq!(stored_id("42"), "00000000000000000042");
        assert_eq!(stored_id("042"), "042");
    }

    #[test]
    fn a_second_owner_is_refused_with_the_holders_pid() {
        let dir = tempfile::tempdir().unwrap();
        let _first = Store::open(dir.path(), opts()).unwrap();
        let err = Store::open(dir.path(), opts()).err().expect("second open must fail");
        let msg = err.to_string();
        assert!(matches!(err, StateError::Locked { .. }), "{msg}");
        assert!(msg.contains(&format!("pid {}", std::process::id())), "{msg}");
    }

    #[test]
    fn state_dir_is_created_0750() {
        let dir = tempfile::tempdir().unwrap();
        let sd = dir.path().join("new/state");
        let _s = Store::open(&sd, opts()).unwrap();
        assert_eq!(fs::metadata(&sd).unwrap().permissions().mode() & 0o777, 0o750);
    }
}
