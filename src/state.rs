//! Durable state in sled: the only module that names sled.
//!
//! One sled tree holds everything, under typed prefixes, so a single [`Commit`] is one atomic
//! `apply_batch` followed by one `flush`:
//!
//! | prefix | key                                   | value |
//! |--------|---------------------------------------|-------|
//! | `s`    | pipeline, conversation, kind, ID       | empty: the seen set, the exactly-once memory |
//! | `c`    | pipeline, conversation                 | [`ConvState`] as JSON: cursors, high-water mark, counters |
//! | `k`    | pipeline                               | the sink's [`CommitPoint`]: where in the files this state ends |
//! | `u`    | provider, username                     | a resolved `@username` → user ID |
//! | `x`    | pipeline, idempotency key              | a send-ledger entry (outbound sends) |
//! | `d`    | pipeline                               | [`DayCredits`]: credits spent this UTC day, for the daily budget |
//!
//! Key parts are joined with a NUL byte, which no part can contain (names and IDs are validated).
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
    }

    /// Appends another commit's changes after this one's.
    pub fn merge(&mut self, other: Commit) {
        self.seen.extend(other.seen);
        self.conversations.extend(other.conversations);
        self.sink_points.extend(other.sink_points);
        self.raw.extend(other.raw);
        self.credits.extend(other.credits);
    }
}

/// The open state database plus the directory lock. Cheap to share behind an `Arc`.
pub struct Store {
    db: sled::Db,
    dir: PathBuf,
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

fn seen_key(pipeline: &str, k: &Key) -> Vec<u8> {
    key(b's', &[pipeline, &k.conversation, k.kind.as_str(), &k.id])
}

impl Store {
    /// Creates the directory (0750) if needed, takes the lock, and opens sled with a bounded cache.
    pub fn open(dir: &Path, cache_bytes: u64) -> Result<Store, StateError> {
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
            .cache_capacity(cache_bytes)
            .mode(sled::Mode::HighThroughput)
            // We flush explicitly after every commit; sled's timer flush would only add background writes.
            .flush_every_ms(None)
            .open()
            .map_err(|source| StateError::Db { dir: dir.to_path_buf(), source })?;
        Ok(Store { db, dir: dir.to_path_buf(), _lock: lock })
    }

    fn db_err(&self) -> impl Fn(sled::Error) -> StateError + '_ {
        move |source| StateError::Db { dir: self.dir.clone(), source }
    }

    /// Whether a record with this key was already written for this pipeline.
    pub fn is_seen(&self, pipeline: &str, k: &Key) -> Result<bool, StateError> {
        self.db.contains_key(seen_key(pipeline, k)).map_err(self.db_err())
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
        for (pipeline, k) in &c.seen {
            batch.insert(seen_key(pipeline, k), &[][..]);
        }
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
        self.db.flush().map_err(self.db_err())?;
        Ok(())
    }

    /// Makes everything durable (used at shutdown; commits already flush).
    pub fn flush(&self) -> Result<(), StateError> {
        self.db.flush().map(|_| ()).map_err(self.db_err())
    }

    /// Counts a pipeline's seen keys of one kind (for tests and diagnostics; walks the whole prefix).
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

    fn k(conv: &str, id: &str) -> Key {
        Key { kind: Kind::DmMessage, conversation: conv.into(), id: id.into() }
    }

    #[test]
    fn commit_is_visible_after_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = Store::open(dir.path(), 1 << 20).unwrap();
            let st = ConvState { hwm: Some("10".into()), messages_written: 3, ..ConvState::default() };
            s.commit(&Commit {
                seen: vec![("p".into(), k("a", "1")), ("p".into(), k("a", "2"))],
                conversations: vec![("p".into(), "a".into(), st)],
                sink_points: vec![("p".into(), CommitPoint { seq: 2, offset: 99, active_since_ms: Some(5) })],
                raw: vec![Store::user_entry("xquik", "Dana", "42")],
                credits: vec![("p".into(), 5), ("p".into(), 7)],
            })
            .unwrap();
        }
        let s = Store::open(dir.path(), 1 << 20).unwrap();
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

    #[test]
    fn a_second_owner_is_refused_with_the_holders_pid() {
        let dir = tempfile::tempdir().unwrap();
        let _first = Store::open(dir.path(), 1 << 20).unwrap();
        let err = Store::open(dir.path(), 1 << 20).err().expect("second open must fail");
        let msg = err.to_string();
        assert!(matches!(err, StateError::Locked { .. }), "{msg}");
        assert!(msg.contains(&format!("pid {}", std::process::id())), "{msg}");
    }

    #[test]
    fn state_dir_is_created_0750() {
        let dir = tempfile::tempdir().unwrap();
        let sd = dir.path().join("new/state");
        let _s = Store::open(&sd, 1 << 20).unwrap();
        assert_eq!(fs::metadata(&sd).unwrap().permissions().mode() & 0o777, 0o750);
    }
}
