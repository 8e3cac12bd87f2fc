//! The sink: the append-only JSONL writer of one pipeline's `output_dir`, its rotation and
//! its start-up recovery. It owns every byte in that directory that belongs to its stem and
//! nothing else; what the lines mean, and persisting the [`CommitPoint`], is the caller's.
//!
//! # On disk
//!
//! - The active file (`xquik-dm-handoff.jsonl` by default) is only ever appended to, so it
//!   is safe to `tail -F`. Every line is one JSON object and its `\n`.
//! - Closed segments `<stem>.<YYYYMMDDTHHMMSSZ>.<seq:06>.jsonl` are made by renaming the
//!   active file and never change again. No other file matching `<stem>.*.jsonl` is ever
//!   made.
//! - Once a closed segment is covered by committed state, [`Finisher`] (a thread per
//!   pipeline, see `finish`) compresses it to `.jsonl.zst` / `.jsonl.gz` when the pipeline's
//!   `compress` says so, and writes `<stem>.<stamp>.<seq>.manifest.json` beside it. Its only
//!   temporaries are hidden `.….tmp` files that no loader glob matches.
//! - Each active file is a *generation* numbered from 1; closing it names it with that
//!   number, so the generation of the active file is one past the newest closed segment.
//!
//! # Durability and the commit point
//!
//! [`Sink::append`] writes a generation's lines in one `write_all`, then `sync_data`s; a
//! rename or file creation is followed by an fsync of the directory. Only then does it
//! return the new [`CommitPoint`], which the caller stores atomically with the state that
//! covers the lines. On restart, [`Sink::open`] cuts a torn last line (the only time bytes
//! already in a file change) and hands back every line after the stored commit point, so
//! the caller can reconcile what it wrote but did not commit.
//!
//! # Errors never leave a partial record
//!
//! If writing or syncing fails (ENOSPC, EFBIG, EIO), the active file is truncated back to
//! its length before the append and synced, the error is returned and the position is
//! unchanged: the caller may retry later. Space for a write is reserved first
//! (`fallocate` with `FALLOC_FL_KEEP_SIZE`), so a full disk is usually reported before any
//! byte is visible to a tailing reader.
//!
//! The sink becomes *poisoned* when memory and disk may disagree and it cannot fix that:
//! the truncation itself failed, a rename happened but the new active file could not be
//! made, or an append had already written lines (now in a closed segment, or durable in
//! the active file) when a later step failed. A poisoned sink answers every call with
//! [`SinkError::Poisoned`]; the caller drops it and calls [`Sink::open`] again with its
//! last commit point, which returns those lines for reconciliation.
//!
//! # What it leaves to others
//!
//! The sink is blocking I/O: async callers run it on a blocking thread. It holds an
//! exclusive `flock` on the active file so a second sink on the same file fails to open,
//! but two pipelines whose stems nest (`a` and `a.b`) in one directory are the config's
//! to refuse.

mod compress;
mod finish;
mod identity;
mod manifest;
mod recovery;
mod rotation;
pub mod walk;

pub use self::compress::{scan, scan_limited, Compression, Digested, Scanned};
pub use self::finish::Finisher;
pub use self::manifest::{read as read_manifest, Manifest, Stats, SCHEMA_VERSION};
pub use self::rotation::{classify, manifest_name, segment_name, stem, Entry};

use std::fs::{self, DirBuilder, File, OpenOptions, Permissions};
use std::io::{self, BufReader, Seek, SeekFrom, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use self::identity::{AtPath, FileId};
use self::rotation::{Active, Limits};

/// Mode of every file the sink creates: the loader's group may read, nobody else.
const FILE_MODE: u32 = 0o640;
/// Mode of the output directory when the sink has to create it.
const DIR_MODE: u32 = 0o750;

/// Where the sink's output is covered by the caller's committed state.
///
/// Everything before `offset` in generation `seq`, and every older generation, is
/// reflected in committed state.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CommitPoint {
    /// Generation of the active file at commit time; 0 = nothing committed yet, treated as
    /// generation 1 offset 0.
    pub seq: u64,
    /// Bytes of generation `seq` covered by committed state; always at a line boundary.
    pub offset: u64,
    /// Unix ms when the first line went into the active generation (`None` while it is
    /// empty); stored so age rotation survives restarts.
    pub active_since_ms: Option<u64>,
    /// The inode of the active file `offset` counts bytes of, so a restart can tell that
    /// the file was replaced or recreated meanwhile (then all of it is read back).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active_ino: Option<u64>,
}

/// How one pipeline's sink is laid out and rotated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SinkConfig {
    /// The pipeline's `output_dir`; created (0750) if missing.
    pub dir: PathBuf,
    /// Name of the active file; its stem (without `.jsonl`) names closed segments.
    pub file_name: String,
    /// The active file is closed before a line would push it past this many bytes.
    pub rotate_max_bytes: u64,
    /// A non-empty active file is closed once its first line is this old; `None` = never.
    pub rotate_max_age: Option<Duration>,
    /// How closed segments are stored once they are covered by committed state.
    pub compress: Compression,
}

/// What [`Sink::open`] found after the commit point.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Recovered {
    /// Complete lines (without `\n`) written after the commit point, in file order across
    /// generations; the caller parses them and marks them seen.
    pub lines: Vec<String>,
    /// Bytes removed from the end of the active file by the torn-line repair.
    pub torn_bytes_cut: u64,
    /// Closed segments whose generation is not fully behind the commit point.
    pub segments_closed_since_commit: u64,
}

/// Why a sink call failed.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// A file-system call failed; `op` is what we were doing, e.g. "writing".
    #[error("{op} {}: {source}", path.display())]
    Io {
        /// What the sink was doing, for the message.
        op: &'static str,
        /// The file or directory it was doing it to.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// A line was empty or contained `\n`: a caller bug. Nothing was written.
    #[error("line {index} of the append is empty or contains a newline; nothing was written")]
    InvalidLine {
        /// Index of the first offending line in the slice passed to `append`.
        index: usize,
    },
    /// Another process holds the lock on the active file: it writes this output folder.
    #[error(
        "{} is being written by another process{}: another dm-handoff (perhaps with another state_dir) writes this output folder; stop it, or give each pipeline its own output_dir",
        path.display(),
        holder.map(|p| format!(" (pid {p})")).unwrap_or_default()
    )]
    Locked {
        /// The active file.
        path: PathBuf,
        /// The holder's PID, when `/proc/locks` says.
        holder: Option<u32>,
    },
    /// An earlier failure left disk and memory possibly out of step; drop the sink and
    /// reopen it from the last commit point.
    #[error("sink for {} is poisoned by an earlier failure ({cause}); reopen it", path.display())]
    Poisoned {
        /// The active file of the poisoned sink.
        path: PathBuf,
        /// The failure that poisoned it.
        cause: String,
    },
}

/// Builds the `map_err` closure for an I/O call on `path`.
fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> SinkError + 'a {
    move |source| SinkError::Io { op, path: path.to_path_buf(), source }
}

/// The append-only writer of one pipeline's output directory. See the module doc.
#[derive(Debug)]
pub struct Sink {
    /// Directory, names and limits; fixed for the life of the sink.
    cfg: SinkConfig,
    /// `cfg.file_name` without `.jsonl`: the prefix of closed segment names.
    stem: String,
    /// The output directory, kept open to fsync it after a rename or a file creation.
    dir: File,
    /// The active file, opened for append (and read, for recovery); holds our `flock`.
    file: File,
    /// What `file` is, to notice when the active file's path names another one.
    id: FileId,
    /// Generation of the active file.
    seq: u64,
    /// Bytes in the active file, all durable and ending in `\n`; the file is cut back to
    /// this if a write fails.
    len: u64,
    /// Unix ms of the first line in the active file; age rotation counts from here.
    active_since_ms: Option<u64>,
    /// The same origin on the monotonic clock ([`crate::time::monotonic`]), so the age keeps growing when
    /// the wall clock is stepped (set forward and corrected, or set back).
    since_monotonic: Option<Duration>,
    /// The stamp of the newest closed segment: the next one is never stamped earlier, so names sort in
    /// generation order even after the wall clock was set back.
    last_stamp: Option<String>,
    /// Why the sink is poisoned, once it is; every call then fails.
    poisoned: Option<String>,
    /// Injected failures, so tests reach the error paths.
    #[cfg(test)]
    faults: Faults,
}

impl Sink {
    /// Creates the dir if needed, repairs a torn last line of the active file, works out
    /// the active generation, and returns the lines after `committed`.
    pub fn open(cfg: SinkConfig, committed: CommitPoint) -> Result<(Sink, Recovered), SinkError> {
        let stem = check_file_name(&cfg)?.to_owned();
        ensure_dir(&cfg.dir)?;
        let dir = File::open(&cfg.dir).map_err(io_err("opening directory", &cfg.dir))?;
        let active_path = cfg.dir.join(&cfg.file_name);
        // Lock before anything is read or cut: another writer's half-written line is not torn.
        let file = open_or_create_active(&dir, &cfg.dir, &active_path)?;
        let id = FileId::of(&file).map_err(io_err("inspecting", &active_path))?;

        let torn_bytes_cut =
            recovery::cut_torn_tail(&file).map_err(io_err("cutting a torn last line of", &active_path))?;
        if torn_bytes_cut > 0 {
            tracing::warn!(
                path = %active_path.display(),
                bytes = torn_bytes_cut,
                "cut a torn last line off the active file"
            );
        }

        let closed = recovery::list_closed(&cfg.dir, &stem).map_err(io_err("listing closed segments in", &cfg.dir))?;
        let seq = recovery::active_generation(committed, closed.last().map(|s| s.seq));

        let mut recovered = Recovered { torn_bytes_cut, ..Recovered::default() };
        for segment in &closed {
            let Some(offset) = recovery::resume_offset(committed, segment.seq) else {
                continue;
            };
            recovered.segments_closed_since_commit += 1;
            let f = File::open(&segment.path).map_err(io_err("opening", &segment.path))?;
            if segment.compression == Compression::None {
                read_after(&f, &segment.path, offset, &mut recovered.lines)?;
            } else {
                // Only segments wholly behind the commit point are compressed, so this needs a
                // commit point older than the files (a state restored from a backup, or lost).
                read_decoded_after(f, segment.compression, &segment.path, offset, &mut recovered.lines)?;
            }
        }
        // The active generation is never behind the commit point, so this is always Some.
        let mut offset = recovery::resume_offset(committed, seq).unwrap_or(0);
        if committed.seq == seq && committed.active_ino.is_some_and(|ino| ino != id.ino) && offset > 0 {
            // Deleted or replaced while we were stopped: the offset counts bytes of another file.
            tracing::warn!(path = %active_path.display(), "the active file is not the one the state last committed (replaced or recreated while dm-handoff was stopped); reading all of it back to reconcile");
            offset = 0;
        }
        let len = read_after(&file, &active_path, offset, &mut recovered.lines)?;

        let now_ms = rotation::unix_ms(SystemTime::now());
        let active_since_ms = if len == 0 {
            None
        } else if committed.seq == seq && committed.active_since_ms.is_some() {
            committed.active_since_ms
        } else {
            // Only uncommitted lines (written just before a crash) or a commit point
            // without the field: the last write time is the closest we know and errs
            // towards rotating late rather than early.
            let modified = file.metadata().and_then(|m| m.modified()).unwrap_or_else(|_| SystemTime::now());
            Some(rotation::unix_ms(modified))
        }
        // An origin in the future was stamped by a clock set forward since corrected: counting from now
        // rotates at most one `rotate_max_age` late, instead of when the clock catches up.
        .map(|since| since.min(now_ms));
        // The wall-clock age carries what came before this process; the monotonic one counts from now.
        let since_monotonic = active_since_ms.map(|_| crate::time::monotonic());
        let last_stamp = closed.last().and_then(|c| {
            let name = c.path.file_name()?.to_str()?;
            rotation::stamp_of(&stem, name).map(str::to_string)
        });

        tracing::debug!(
            path = %active_path.display(),
            seq,
            len,
            lines_after_commit = recovered.lines.len(),
            "sink opened"
        );
        let sink = Sink {
            cfg,
            stem,
            dir,
            file,
            id,
            seq,
            len,
            active_since_ms,
            since_monotonic,
            last_stamp,
            poisoned: None,
            #[cfg(test)]
            faults: Faults::default(),
        };
        Ok((sink, recovered))
    }

    /// Appends lines (each without `\n`; the sink adds it), rotating before any line that
    /// would push the active file past `rotate_max_bytes`, and first of all if the active
    /// file has reached `rotate_max_age`; each generation's lines go in one write followed
    /// by `sync_data`. Returns the position after the last byte written.
    ///
    /// An empty or `\n`-containing line is rejected with [`SinkError::InvalidLine`] before
    /// anything is written. An empty slice writes nothing and returns the position.
    pub fn append(&mut self, lines: &[String], now: SystemTime) -> Result<CommitPoint, SinkError> {
        self.check_poisoned()?;
        if let Some(index) = lines.iter().position(|l| l.is_empty() || l.contains('\n')) {
            return Err(SinkError::InvalidLine { index });
        }
        // Deleted or replaced since the last commit: nothing uncommitted is in the old file.
        self.follow_active(0)?;
        let mut pending = lines;
        let mut wrote = false;
        // Before the commit the caller makes: lines that went to a file the path no longer names are
        // not delivered; they go again to whatever is the active file now. Bounded, so an operator
        // racing us cannot keep the writer here.
        for _ in 0..3 {
            let in_active = self.append_planned(pending, now, &mut wrote)?;
            match identity::at_path(&self.active_path(), self.id) {
                Ok(AtPath::Ours) => return Ok(self.position()),
                Ok(_) => {}
                Err(e) => return Err(self.poison(io_err("inspecting", &self.active_path())(e))),
            }
            pending = &pending[in_active..];
            if let Err(e) = self.follow_active(pending.len()) {
                return Err(self.poison(e));
            }
        }
        let e = SinkError::Io {
            op: "writing (the active file keeps being deleted or replaced)",
            path: self.active_path(),
            source: io::ErrorKind::Other.into(),
        };
        Err(self.poison(e))
    }

    /// [`Sink::append`]'s writing: the lines in generations as the rotation plan says. Returns the
    /// index of the first line that went to the active file as it is now (the lines before it are in
    /// closed segments). `wrote` is set once anything was written.
    fn append_planned(&mut self, lines: &[String], now: SystemTime, wrote: &mut bool) -> Result<usize, SinkError> {
        let now_ms = rotation::unix_ms(now);
        let plan =
            rotation::plan_append(self.active(), lines.iter().map(|l| l.len() as u64 + 1), &self.limits(), now_ms);
        let mut in_active = 0;
        for batch in plan {
            if batch.rotate_first {
                if let Err(e) = self.rotate(now) {
                    return Err(if *wrote { self.poison(e) } else { e });
                }
                in_active = batch.lines.start;
            }
            let batch_lines = &lines[batch.lines];
            let size = batch_lines.iter().map(|l| l.len() + 1).sum();
            let mut buf = Vec::with_capacity(size);
            for line in batch_lines {
                buf.extend_from_slice(line.as_bytes());
                buf.push(b'\n');
            }
            if let Err(e) = self.write_durably(&buf) {
                // Lines already written by this append are durable but the caller will
                // not commit them: only a reopen can hand them back.
                return Err(if *wrote { self.poison(e) } else { e });
            }
            *wrote = true;
            if self.len == 0 {
                self.active_since_ms = Some(now_ms);
                self.since_monotonic = Some(crate::time::monotonic());
            }
            self.len += buf.len() as u64;
        }
        #[cfg(test)]
        if let Some(f) = self.faults.after_write.take() {
            f(&self.active_path());
        }
        Ok(in_active)
    }

    /// If the active file's path no longer names the file we write, takes what it names now as the
    /// active file (a new, empty one if nothing), as a restart would: its torn last line cut, its length
    /// the position. `rewrite` lines written to the old file are about to be written again; the warning
    /// says so. The generation stays: the stored inode tells a restart to read the new file from its start.
    fn follow_active(&mut self, rewrite: usize) -> Result<(), SinkError> {
        let path = self.active_path();
        let what = identity::at_path(&path, self.id).map_err(io_err("inspecting", &path))?;
        if what == AtPath::Ours {
            return Ok(());
        }
        let file = open_or_create_active(&self.dir, &self.cfg.dir, &path)?;
        let cut = recovery::cut_torn_tail(&file).map_err(io_err("cutting a torn last line of", &path))?;
        let len = file.metadata().map_err(io_err("inspecting", &path))?.len();
        self.id = FileId::of(&file).map_err(io_err("inspecting", &path))?;
        self.file = file;
        self.len = len;
        self.active_since_ms = (len > 0).then(|| rotation::unix_ms(SystemTime::now()));
        self.since_monotonic = (len > 0).then(crate::time::monotonic);
        tracing::warn!(
            path = %path.display(),
            lines_written_again = rewrite,
            torn_bytes_cut = cut,
            "the active file {} while dm-handoff was writing it; lines written to the old file are not counted as delivered: writing them again to {} (a {} file)",
            what.what(),
            path.display(),
            if len == 0 { "new" } else { "found" },
        );
        Ok(())
    }

    /// Rotates if the active file is non-empty and has reached `rotate_max_age`; returns
    /// the new position if it rotated.
    pub fn rotate_if_due(&mut self, now: SystemTime) -> Result<Option<CommitPoint>, SinkError> {
        self.check_poisoned()?;
        // A deleted or replaced active file is not renamed into a closed segment.
        self.follow_active(0)?;
        if !rotation::age_due(self.active(), &self.limits(), rotation::unix_ms(now)) {
            return Ok(None);
        }
        self.rotate(now)?;
        Ok(Some(self.position()))
    }

    /// Where the next line will go: generation, bytes written to it, and its age origin.
    pub fn position(&self) -> CommitPoint {
        CommitPoint {
            seq: self.seq,
            offset: self.len,
            active_since_ms: self.active_since_ms,
            active_ino: Some(self.id.ino),
        }
    }

    /// Fsyncs the active file (data and metadata) and releases it; used on shutdown.
    pub fn close(self) -> Result<(), SinkError> {
        self.check_poisoned()?;
        self.file.sync_all().map_err(io_err("syncing", &self.active_path()))
    }

    /// The active file's path.
    pub fn active_path(&self) -> PathBuf {
        self.cfg.dir.join(&self.cfg.file_name)
    }

    fn active(&self) -> Active {
        Active {
            len: self.len,
            since_ms: self.active_since_ms,
            age: self.since_monotonic.map(|t| crate::time::monotonic().saturating_sub(t)),
        }
    }

    fn limits(&self) -> Limits {
        Limits { max_bytes: self.cfg.rotate_max_bytes, max_age: self.cfg.rotate_max_age }
    }

    fn check_poisoned(&self) -> Result<(), SinkError> {
        match &self.poisoned {
            None => Ok(()),
            Some(cause) => Err(SinkError::Poisoned { path: self.active_path(), cause: cause.clone() }),
        }
    }

    /// Marks the sink poisoned by `e` (the first cause wins) and gives `e` back to return.
    fn poison(&mut self, e: SinkError) -> SinkError {
        if self.poisoned.is_none() {
            tracing::error!(path = %self.active_path().display(), error = %e, "sink poisoned; it must be reopened");
            self.poisoned = Some(e.to_string());
        }
        e
    }

    /// Closes the active file as generation `self.seq` and starts the next one.
    fn rotate(&mut self, now: SystemTime) -> Result<(), SinkError> {
        let active_path = self.active_path();
        let closed_name = rotation::closed_name_after(&self.stem, now, self.seq, self.last_stamp.as_deref());
        let closed_path = self.cfg.dir.join(&closed_name);
        // rename(2) would silently replace it; a segment with our seq can only be someone
        // else's, and its lines must not vanish.
        if closed_path.symlink_metadata().is_ok() {
            return Err(SinkError::Io {
                op: "closing segment (target exists)",
                path: closed_path,
                source: io::ErrorKind::AlreadyExists.into(),
            });
        }
        // The active file was synced by the append that wrote its last line.
        fs::rename(&active_path, &closed_path).map_err(io_err("closing segment", &closed_path))?;
        // From here until the new file is ours, disk and memory disagree: failures poison.
        let next = self
            .dir
            .sync_all()
            .map_err(io_err("syncing directory", &self.cfg.dir))
            .and_then(|()| create_active(&self.dir, &self.cfg.dir, &active_path))
            .and_then(|file| lock(&file, &active_path).map(|()| file));
        let file = next.map_err(|e| self.poison(e))?;
        let id = FileId::of(&file).map_err(io_err("inspecting", &active_path)).map_err(|e| self.poison(e))?;
        tracing::info!(segment = %closed_path.display(), seq = self.seq, bytes = self.len, "closed segment");
        self.file = file;
        self.id = id;
        self.seq += 1;
        self.len = 0;
        self.active_since_ms = None;
        self.since_monotonic = None;
        self.last_stamp = rotation::stamp_of(&self.stem, &closed_name).map(str::to_string);
        Ok(())
    }

    /// Appends `buf` to the active file and syncs it, or leaves the file as it was.
    fn write_durably(&mut self, buf: &[u8]) -> Result<(), SinkError> {
        let path = self.active_path();
        reserve(&self.file, self.len, buf.len() as u64).map_err(io_err("reserving space in", &path))?;
        let Err((op, source)) = self.write_and_sync(buf) else {
            return Ok(());
        };
        let err = SinkError::Io { op, path, source };
        if let Err(repair) = self.truncate_to(self.len) {
            let repair =
                SinkError::Io { op: "cutting back a failed write in", path: self.active_path(), source: repair };
            tracing::error!(error = %err, "append failed and could not be undone");
            self.poison(repair);
        } else {
            tracing::warn!(error = %err, "append failed; active file cut back to its last line");
        }
        Err(err)
    }

    fn write_and_sync(&mut self, buf: &[u8]) -> Result<(), (&'static str, io::Error)> {
        #[cfg(test)]
        if let Some(n) = self.faults.take_write_fault() {
            (&self.file).write_all(&buf[..n.min(buf.len())]).map_err(|e| ("writing", e))?;
            return Err(("writing", Faults::enospc()));
        }
        (&self.file).write_all(buf).map_err(|e| ("writing", e))?;
        #[cfg(test)]
        if std::mem::take(&mut self.faults.fail_sync) {
            return Err(("syncing", io::Error::from_raw_os_error(5)));
        }
        self.file.sync_data().map_err(|e| ("syncing", e))
    }

    fn truncate_to(&mut self, len: u64) -> io::Result<()> {
        #[cfg(test)]
        if std::mem::take(&mut self.faults.fail_truncate) {
            return Err(io::Error::from_raw_os_error(5));
        }
        self.file.set_len(len)?;
        self.file.sync_data()
    }
}

/// Checks the active file name and returns its stem. A name that could escape the
/// directory, or whose stem is empty (closed segments would be hidden dot-files), is
/// refused here rather than trusted.
fn check_file_name(cfg: &SinkConfig) -> Result<&str, SinkError> {
    let name = cfg.file_name.as_str();
    let stem = rotation::stem(name);
    let bad = stem.is_empty() || name == ".." || name.contains(['/', '\0']);
    if bad {
        return Err(SinkError::Io {
            op: "checking the active file name",
            path: cfg.dir.join(name),
            source: io::Error::new(io::ErrorKind::InvalidInput, "must be a plain file name with a non-empty stem"),
        });
    }
    Ok(stem)
}

/// Creates the output directory (0750) if it is missing and makes its entry durable. An
/// existing directory keeps the mode the operator gave it.
fn ensure_dir(dir: &Path) -> Result<(), SinkError> {
    match fs::metadata(dir) {
        Ok(m) if m.is_dir() => return Ok(()),
        Ok(_) => {
            return Err(SinkError::Io {
                op: "using as output directory",
                path: dir.to_path_buf(),
                source: io::Error::new(io::ErrorKind::InvalidInput, "not a directory"),
            })
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err("inspecting", dir)(e)),
    }
    DirBuilder::new().recursive(true).mode(DIR_MODE).create(dir).map_err(io_err("creating directory", dir))?;
    // The umask may have taken bits off (or a loose one left them on): set it explicitly.
    fs::set_permissions(dir, Permissions::from_mode(DIR_MODE)).map_err(io_err("setting permissions of", dir))?;
    let parent = match dir.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    File::open(parent).and_then(|p| p.sync_all()).map_err(io_err("syncing directory", parent))
}

/// Opens the existing active file, or creates it, and takes our lock on it.
fn open_or_create_active(dir: &File, dir_path: &Path, path: &Path) -> Result<File, SinkError> {
    #[cfg(test)]
    open_fault::check(path)?;
    let file = match OpenOptions::new().read(true).append(true).open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => create_active(dir, dir_path, path)?,
        Err(e) => return Err(io_err("opening", path)(e)),
    };
    let meta = file.metadata().map_err(io_err("inspecting", path))?;
    if !meta.is_file() {
        return Err(SinkError::Io {
            op: "opening",
            path: path.to_path_buf(),
            source: io::Error::new(io::ErrorKind::InvalidInput, "not a regular file"),
        });
    }
    lock(&file, path)?;
    Ok(file)
}

/// Creates a new, empty active file with mode 0640 and makes its directory entry durable.
fn create_active(dir: &File, dir_path: &Path, path: &Path) -> Result<File, SinkError> {
    #[cfg(test)]
    open_fault::check(path)?;
    let file = OpenOptions::new()
        .read(true)
        .append(true)
        .create_new(true)
        .mode(FILE_MODE)
        .open(path)
        .map_err(io_err("creating", path))?;
    // The umask applies to `mode` above; the spec'd mode must not depend on it.
    file.set_permissions(Permissions::from_mode(FILE_MODE)).map_err(io_err("setting permissions of", path))?;
    dir.sync_all().map_err(io_err("syncing directory", dir_path))?;
    Ok(file)
}

/// Takes an exclusive `flock` on the active file so a second sink (another daemon, or a
/// second pipeline configured onto the same file) fails instead of interleaving lines.
fn lock(file: &File, path: &Path) -> Result<(), SinkError> {
    match fs4::fs_std::FileExt::try_lock_exclusive(file) {
        Ok(true) => Ok(()),
        Ok(false) => Err(SinkError::Locked { path: path.to_path_buf(), holder: crate::flock::holder(path) }),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
            Err(SinkError::Locked { path: path.to_path_buf(), holder: crate::flock::holder(path) })
        }
        Err(e) => Err(io_err("locking", path)(e)),
    }
}

/// Reads the complete lines of `file` from `offset` to its current end into `out`;
/// returns the file's length. A file shorter than `offset` was cut by someone else: warn
/// and return all of it, since handing back a line twice is safe and losing one is not.
fn read_after(file: &File, path: &Path, offset: u64, out: &mut Vec<String>) -> Result<u64, SinkError> {
    let len = file.metadata().map_err(io_err("inspecting", path))?.len();
    let start = if len < offset {
        tracing::warn!(
            path = %path.display(),
            len,
            expected_at_least = offset,
            "file is shorter than the commit point; returning all of it"
        );
        0
    } else {
        offset
    };
    let mut reader = file;
    reader.seek(SeekFrom::Start(start)).map_err(io_err("reading", path))?;
    let read =
        recovery::read_lines(BufReader::new(io::Read::take(reader, len - start))).map_err(io_err("reading", path))?;
    if read.trailing > 0 {
        tracing::warn!(path = %path.display(), bytes = read.trailing, "ignoring an incomplete last line");
    }
    if read.lossy > 0 {
        tracing::warn!(path = %path.display(), lines = read.lossy, "lines that are not UTF-8 returned lossily");
    }
    out.extend(read.lines);
    Ok(len)
}

/// As [`read_after`] for a compressed segment: `offset` counts decompressed bytes.
fn read_decoded_after(
    file: File,
    c: Compression,
    path: &Path,
    offset: u64,
    out: &mut Vec<String>,
) -> Result<(), SinkError> {
    let mut reader = compress::decoder(file, c).map_err(io_err("decompressing", path))?;
    let skipped =
        io::copy(&mut io::Read::take(&mut reader, offset), &mut io::sink()).map_err(io_err("decompressing", path))?;
    if skipped < offset {
        tracing::warn!(path = %path.display(), "segment is shorter than the commit point; returning all of it");
        return read_decoded_after(File::open(path).map_err(io_err("opening", path))?, c, path, 0, out);
    }
    let read = recovery::read_lines(reader).map_err(io_err("decompressing", path))?;
    if read.trailing > 0 {
        tracing::warn!(path = %path.display(), bytes = read.trailing, "ignoring an incomplete last line");
    }
    out.extend(read.lines);
    Ok(())
}

/// Reserves disk blocks for `len` bytes at `offset` without changing the file size, so a
/// full disk or quota fails here, before a partial line is visible to a tailing reader.
/// File systems without `fallocate` just skip the reservation; the write path still
/// repairs itself.
fn reserve(file: &File, offset: u64, len: u64) -> io::Result<()> {
    let (Ok(offset), Ok(len)) = (libc::off_t::try_from(offset), libc::off_t::try_from(len)) else {
        return Ok(());
    };
    if len == 0 {
        return Ok(());
    }
    loop {
        // SAFETY: the fd is open for as long as `file` is borrowed; fallocate touches no
        // memory of ours.
        let rc = unsafe { libc::fallocate(file.as_raw_fd(), libc::FALLOC_FL_KEEP_SIZE, offset, len) };
        if rc == 0 {
            return Ok(());
        }
        let err = io::Error::last_os_error();
        match err.raw_os_error() {
            Some(libc::EINTR) => continue,
            Some(libc::EOPNOTSUPP | libc::ENOSYS | libc::EINVAL) => return Ok(()),
            _ => return Err(err),
        }
    }
}

/// Opening or creating the active file fails with EMFILE on this thread, as many times as armed: the
/// file-handle exhaustion that hits a rotation between its rename and the new active file, and the
/// reopen after it. Thread-local, so tests running beside each other do not see it.
#[cfg(test)]
pub(crate) mod open_fault {
    use std::cell::Cell;

    thread_local!(static LEFT: Cell<u32> = const { Cell::new(0) });

    /// The next `n` opens of an active file on this thread fail.
    pub(crate) fn arm(n: u32) {
        LEFT.with(|l| l.set(n));
    }

    pub(super) fn check(path: &std::path::Path) -> Result<(), super::SinkError> {
        let fire = LEFT.with(|l| {
            let n = l.get();
            l.set(n.saturating_sub(1));
            n > 0
        });
        if fire {
            let source = std::io::Error::from_raw_os_error(libc::EMFILE);
            return Err(super::SinkError::Io { op: "opening", path: path.to_path_buf(), source });
        }
        Ok(())
    }
}

/// Failures a test arms on a `Sink`; each fires once.
#[cfg(test)]
#[derive(Debug, Default)]
struct Faults {
    /// Writes to let through before `fail_write_after` fires, to fail a later batch.
    skip_writes: usize,
    /// The next write (after `skip_writes`) writes this many bytes, then fails with ENOSPC.
    fail_write_after: Option<usize>,
    /// The next `sync_data` after a write fails with EIO.
    fail_sync: bool,
    /// The truncation that undoes a failed write fails with EIO.
    fail_truncate: bool,
    /// Runs on the active file's path once an append's lines are written, before the
    /// identity check: an operator deleting or replacing the file at the worst moment.
    after_write: Option<fn(&Path)>,
}

#[cfg(test)]
impl Faults {
    fn take_write_fault(&mut self) -> Option<usize> {
        self.fail_write_after?;
        if self.skip_writes > 0 {
            self.skip_writes -= 1;
            return None;
        }
        self.fail_write_after.take()
    }

    fn enospc() -> io::Error {
        // ENOSPC on Linux; `ErrorKind::StorageFull` is newer than our MSRV.
        io::Error::from_raw_os_error(28)
    }
}

#[cfg(test)]
mod tests;
