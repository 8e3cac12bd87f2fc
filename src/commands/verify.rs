//! `dm-handoff verify`: an audit of each selected pipeline's output folder (SPEC section 8.6).
//!
//! It reads files only: no state lock, no sled, nothing written, so it may run while the daemon
//! writes. What it checks, per pipeline:
//!
//! - every line of every file (closed segments compressed or not, and the active file up to its
//!   last `\n` at the time it is read) is one JSON object, a dm-handoff record with an
//!   exactly-once key, ending in `\n`;
//! - no exactly-once key (kind, conversation, message or event ID) is in two lines;
//! - every manifest matches its segment (file name, bytes, SHA-256, records, kinds, time span,
//!   schema version) and names a file that exists;
//! - every closed segment has a manifest, and there is one copy of each segment.
//!
//! Each problem is one line `problem: <path>: <what>`; observations that are not failures are
//! `note: <path>: <what>`; then `verify: pipeline P: N files, M records, K problems`. Lines name
//! files, line numbers, counts and keys (IDs), never message text.
//!
//! # While a dm-handoff process runs
//!
//! Files change under a reader: a segment is compressed (its raw file vanishes), a manifest
//! appears, the active file grows and rotates. So the listing is taken first and the active file
//! opened last (a rotation in between can only make records missed, never read twice); a raw
//! segment that vanished is read from its compressed twin; a missing manifest is looked for again
//! before it is reported. When a process owns the state directory (its `LOCK` is held), a segment
//! closed less than [`PENDING_GRACE`] ago without a manifest, and a last line of the active file
//! without its `\n`, are notes (work in progress), not problems.
//!
//! # Memory
//!
//! Duplicates are found with one 64-bit keyed hash per record in a hash set (about 9 to 18 bytes
//! per record: 16 MiB for a million). A hash seen twice is only a suspect: a second pass reads
//! the files again, keeps the full keys of suspects only, and reports real duplicates with both
//! places, so a hash collision can never be reported as a duplicate.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write as _;
use std::fs::{self, File};
use std::hash::{BuildHasher, BuildHasherDefault, Hasher, RandomState};
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::Report as CommandReport;
use crate::config::{Config, ConfigError};
use crate::exit::Exit;
use crate::record::{Key, Record};
use crate::sink::{self, Compression, Entry, Stats};

/// How long after it was closed a segment may lack its manifest while a process owns the state.
/// Finishing a 64 MiB segment takes about a second; this covers a backlog after a restart.
pub const PENDING_GRACE: Duration = Duration::from_secs(600);

/// Line problems printed per file; the rest are counted in one more line.
const LINE_PROBLEMS_SHOWN: usize = 20;

/// Runs `verify` over the pipelines named (all when none): its output, and exit 0 when clean, 1 with problems.
/// An unknown pipeline is a [`ConfigError`] (exit 2).
pub fn report(cfg: &Config, names: &[String]) -> Result<CommandReport, ConfigError> {
    let pipelines = cfg.select(names)?;
    let owner_live = state_owner(&cfg.state_dir).is_some();
    let mut out = String::new();
    let mut failed = false;
    let mut json = Vec::new();
    for p in pipelines {
        let shipped = p.upload.as_ref().is_some_and(|u| u.delete_local);
        let report = verify_dir_shipped(&p.output_dir, &p.file_name, owner_live, SystemTime::now(), shipped);
        out.push_str(&report.render(&p.name));
        failed |= report.problems > 0;
        json.push(serde_json::json!({
            "pipeline": p.name,
            "files": report.files,
            "records": report.records,
            "problems": report.problems,
            "lines": report.lines,
        }));
    }
    let exit = if failed { Exit::Failed } else { Exit::Ok };
    let json = serde_json::json!({ "ok": !failed, "exit": exit.code(), "pipelines": json });
    Ok(CommandReport { exit, stdout: out, stderr: String::new(), json: Some(json) })
}

/// The PID of the process that holds `<state_dir>/LOCK`, if one does. Read without taking the
/// lock: `/proc/locks` names the holder of a `flock` by inode, and the file holds its PID.
pub fn state_owner(state_dir: &Path) -> Option<u32> {
    let lock = state_dir.join("LOCK");
    let pid: u32 = fs::read_to_string(&lock).ok()?.trim().parse().ok()?;
    let inode = fs::metadata(&lock).ok()?.ino();
    match fs::read_to_string("/proc/locks") {
        // `1: FLOCK  ADVISORY  WRITE 4242 00:2f:1234567 0 EOF`; waiters (`->`) are not holders.
        Ok(locks) => locks
            .lines()
            .map(|l| l.split_whitespace().collect::<Vec<_>>())
            .any(|f| {
                f.get(1) == Some(&"FLOCK")
                    && f.get(4).and_then(|p| p.parse::<u32>().ok()) == Some(pid)
                    && f.get(5).and_then(|d| d.rsplit(':').next()).and_then(|i| i.parse::<u64>().ok()) == Some(inode)
            })
            .then_some(pid),
        // SAFETY: kill(2) with signal 0 only checks that the process exists.
        Err(_) => (unsafe { libc::kill(pid as libc::pid_t, 0) } == 0).then_some(pid),
    }
}

/// What `verify` found in one output folder.
#[derive(Debug, Default)]
pub struct Report {
    /// `problem: …` and `note: …` lines, in the order found.
    pub lines: Vec<String>,
    /// Data files read: closed segments and the active file.
    pub files: u64,
    /// Complete lines read.
    pub records: u64,
    /// Problems found (notes are not counted).
    pub problems: u64,
}

impl Report {
    fn problem(&mut self, path: &Path, what: impl std::fmt::Display) {
        self.problems += 1;
        self.lines.push(format!("problem: {}: {what}", path.display()));
    }

    fn note(&mut self, path: &Path, what: impl std::fmt::Display) {
        self.lines.push(format!("note: {}: {what}", path.display()));
    }

    /// The report as printed, ending with the summary line.
    pub fn render(&self, pipeline: &str) -> String {
        let mut out = String::new();
        for l in &self.lines {
            let _ = writeln!(out, "{l}");
        }
        let _ = writeln!(
            out,
            "verify: pipeline {pipeline}: {} files, {} records, {} problems",
            self.files, self.records, self.problems
        );
        out
    }
}

/// The files of one segment in the listing.
#[derive(Debug, Default)]
struct Group {
    stored: Vec<Compression>,
    manifest: bool,
}

/// A file read in the first pass, to read again in the second.
struct Read {
    /// Paths to try in order (a raw segment may have been replaced by its compressed twin).
    paths: Vec<(PathBuf, Compression)>,
    /// Bytes to read of an uncompressed file still being appended to.
    limit: Option<u64>,
}

/// Checks one output folder. `owner_live`: a dm-handoff process owns the state directory, so
/// work in progress is expected.
pub fn verify_dir(dir: &Path, file_name: &str, owner_live: bool, now: SystemTime) -> Report {
    verify_dir_shipped(dir, file_name, owner_live, now, false)
}

/// [`verify_dir`] for a pipeline with `upload_delete_local` when `shipped`: a segment its manifest names
/// may be gone (removed once uploaded), which is a note, not a problem.
pub fn verify_dir_shipped(dir: &Path, file_name: &str, owner_live: bool, now: SystemTime, shipped: bool) -> Report {
    let mut v =
        Verifier { report: Report::default(), keys: KeySet::default(), reads: Vec::new(), owner_live, now, shipped };
    let stem = sink::stem(file_name);
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            v.report.note(dir, "does not exist yet: nothing to check");
            return v.report;
        }
        Err(e) => {
            v.report.problem(dir, format_args!("cannot be listed: {e}"));
            return v.report;
        }
    };
    let mut groups: BTreeMap<(u64, String), Group> = BTreeMap::new();
    let mut temps = Vec::new();
    for e in entries {
        let e = match e {
            Ok(e) => e,
            Err(err) => {
                v.report.problem(dir, format_args!("cannot be listed: {err}"));
                continue;
            }
        };
        let name = e.file_name();
        let Some(name) = name.to_str() else { continue };
        if name == file_name {
            continue;
        }
        match sink::classify(stem, name) {
            Some(Entry::Segment { base, seq, compression }) => {
                groups.entry((seq, base)).or_default().stored.push(compression);
            }
            Some(Entry::Manifest { base, seq }) => groups.entry((seq, base)).or_default().manifest = true,
            Some(Entry::Temp) => temps.push(e.path()),
            None if matches_a_loader_glob(stem, name) => v.report.problem(
                &e.path(),
                "matches this pipeline's loader globs but is not one of its segment or manifest names",
            ),
            None => {}
        }
    }
    for ((_, base), g) in &mut groups {
        g.stored.sort_by_key(|c| Compression::ALL.iter().position(|x| x == c));
        v.segment(dir, base, g);
    }
    for t in temps {
        if owner_live {
            v.report.note(&t, "being written by the running dm-handoff (no loader glob matches it)");
        } else {
            v.report.note(&t, "left by an interrupted run, removed at its next start (no loader glob matches it)");
        }
    }
    // Opened last: a rotation since the listing then makes records missed, never read twice.
    let active = dir.join(file_name);
    match File::open(&active) {
        Ok(f) => {
            let limit = f.metadata().map(|m| m.len()).ok();
            v.read(&active, vec![(active.clone(), Compression::None)], f, Compression::None, limit, true);
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            v.report.note(&active, "no active file (nothing was written yet, or it is being rotated)")
        }
        Err(e) => v.report.problem(&active, format_args!("cannot be opened: {e}")),
    }
    v.report_duplicates();
    v.report
}

/// Whether a name that is not ours would still be picked up by `<stem>.*.jsonl` and friends.
fn matches_a_loader_glob(stem: &str, name: &str) -> bool {
    name.strip_prefix(stem).is_some_and(|r| r.starts_with('.'))
        && [".jsonl", ".jsonl.zst", ".jsonl.gz", ".manifest.json"].iter().any(|ext| name.ends_with(ext))
}

struct Verifier {
    report: Report,
    keys: KeySet,
    reads: Vec<Read>,
    owner_live: bool,
    now: SystemTime,
    /// `upload_delete_local`: a manifest whose segment was removed after its upload is no problem
    /// (`verify --remote` checks the bucket's copy).
    shipped: bool,
}

impl Verifier {
    /// Checks one closed segment: its manifest, its copies, and its lines.
    fn segment(&mut self, dir: &Path, base: &str, g: &Group) {
        let manifest_path = dir.join(sink::manifest_name(base));
        let path_of = |c: Compression| dir.join(sink::segment_name(base, c));
        let manifest = if g.manifest {
            match sink::read_manifest(&manifest_path) {
                Ok(m) => Some(m),
                Err(why) => {
                    self.report.problem(&manifest_path, why);
                    None
                }
            }
        } else {
            None
        };
        // The copy the manifest names, if it names one of this segment's.
        let named = manifest.as_ref().and_then(|m| {
            let c = Compression::ALL.into_iter().find(|c| sink::segment_name(base, *c) == m.segment);
            if c.is_none() {
                self.report.problem(
                    &manifest_path,
                    format_args!("names {:?}, which is not a file name of this segment", m.segment),
                );
            }
            c
        });
        let candidates: Vec<Compression> = match named {
            Some(c) => vec![c],
            // Raw first: while both exist, the raw file is the original and its twin a copy.
            None => g.stored.clone(),
        };
        let mut opened = None;
        let mut scanned = None;
        for c in &candidates {
            let (c, f) = match File::open(path_of(*c)) {
                Ok(f) => (*c, f),
                // Compressed (and the raw file removed) since the listing: read the twin.
                Err(e) if e.kind() == io::ErrorKind::NotFound && *c == Compression::None => {
                    let twin = [Compression::Zstd, Compression::Gzip]
                        .into_iter()
                        .find_map(|t| File::open(path_of(t)).ok().map(|f| (t, f)));
                    match twin {
                        Some(t) => t,
                        // Gone with no copy left: removed after its upload (upload_delete_local), or deleted
                        // under its manifest (or since the listing).
                        None if named.is_some() && self.shipped => {
                            self.report.note(&path_of(*c), "removed after its upload (upload_delete_local)");
                            continue;
                        }
                        None => {
                            let (at, what) =
                                if named.is_some() { (manifest_path.clone(), "names") } else { (path_of(*c), "is") };
                            self.report.problem(
                                &at,
                                format_args!(
                                    "{what} {}, which does not exist (and no compressed copy does): deleted",
                                    sink::segment_name(base, *c)
                                ),
                            );
                            continue;
                        }
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    if named.is_some() && self.shipped {
                        self.report.note(&path_of(*c), "removed after its upload (upload_delete_local)");
                    } else if named.is_some() {
                        self.report.problem(
                            &manifest_path,
                            format_args!("names {}, which does not exist", sink::segment_name(base, *c)),
                        );
                    }
                    continue;
                }
                Err(e) => {
                    self.report.problem(&path_of(*c), format_args!("cannot be opened: {e}"));
                    break;
                }
            };
            let ctime = f.metadata().ok().map(|m| UNIX_EPOCH + Duration::from_secs(m.ctime().max(0) as u64));
            // For the second pass: this file, else (compressed and removed meanwhile) its twins.
            let mut paths = vec![(path_of(c), c)];
            paths.extend(Compression::ALL.into_iter().filter(|x| *x != c).map(|x| (path_of(x), x)));
            scanned = self.read(&path_of(c), paths, f, c, None, false);
            opened = Some((c, ctime));
            break;
        }
        let read_as = opened.map(|(c, _)| c);
        // Other copies still there: loaders that glob both extensions would load them twice.
        for c in g.stored.iter().filter(|c| Some(**c) != read_as) {
            let path = path_of(*c);
            // Raw file and compressed twin, no manifest yet: a compression in progress (or
            // interrupted), which the missing manifest already accounts for.
            let in_window = named.is_none() && read_as == Some(Compression::None) && *c != Compression::None;
            if path.exists() && !in_window {
                self.report.problem(&path, "a second copy of this segment; loaders that glob both would load it twice");
            }
        }
        if let (Some(m), Some(_), Some((scanned, stats)), Some((c, _))) = (&manifest, named, scanned, opened) {
            let expected = stats.manifest(sink::segment_name(base, c), scanned.stored.bytes, scanned.stored.sha256);
            self.compare(&manifest_path, m, &expected);
        }
        if let (false, Some((c, ctime))) = (g.manifest, opened) {
            if manifest_path.exists() {
                // Finished while we read it.
                return;
            }
            match ctime.and_then(|t| self.now.duration_since(t).ok()) {
                Some(age) if self.owner_live && age < PENDING_GRACE => self.report.note(
                    &path_of(c),
                    format_args!(
                        "no manifest yet (closed {}s ago; the running dm-handoff writes it once the segment is final)",
                        age.as_secs()
                    ),
                ),
                _ => self.report.problem(&path_of(c), "closed segment without a manifest"),
            }
        }
    }

    /// Compares a manifest with what the segment holds; one problem per field that differs.
    fn compare(&mut self, path: &Path, m: &sink::Manifest, want: &sink::Manifest) {
        if m.schema_version != sink::SCHEMA_VERSION {
            self.report.problem(
                path,
                format_args!("schema_version {} (this dm-handoff writes {})", m.schema_version, sink::SCHEMA_VERSION),
            );
        }
        if m.bytes != want.bytes {
            self.report.problem(path, format_args!("says {} bytes, {} has {}", m.bytes, want.segment, want.bytes));
        }
        if m.sha256 != want.sha256 {
            self.report
                .problem(path, format_args!("sha256 {} does not match {} ({})", m.sha256, want.segment, want.sha256));
        }
        if m.records != want.records {
            self.report
                .problem(path, format_args!("says {} records, {} has {}", m.records, want.segment, want.records));
        }
        if m.kinds != want.kinds {
            self.report
                .problem(path, format_args!("kinds {:?} do not match {} ({:?})", m.kinds, want.segment, want.kinds));
        }
        if (&m.first_created_at, &m.last_created_at) != (&want.first_created_at, &want.last_created_at) {
            self.report.problem(
                path,
                format_args!(
                    "time span {:?}..{:?} does not match {} ({:?}..{:?})",
                    m.first_created_at, m.last_created_at, want.segment, want.first_created_at, want.last_created_at
                ),
            );
        }
    }

    /// Reads one data file, checking every line and collecting keys. Returns what the manifest
    /// comparison needs, or None when the file could not be read to its end.
    fn read(
        &mut self,
        shown: &Path,
        paths: Vec<(PathBuf, Compression)>,
        file: File,
        c: Compression,
        limit: Option<u64>,
        active: bool,
    ) -> Option<(sink::Scanned, Stats)> {
        self.reads.push(Read { paths, limit });
        let mut stats = Stats::default();
        let (mut n, mut shown_problems, mut more) = (0u64, Vec::new(), 0u64);
        let keys = &mut self.keys;
        let result = sink::scan_limited(file, c, limit, &mut |line| {
            n += 1;
            stats.add_line(line);
            match check_line(line) {
                Ok(key) => keys.insert(&key),
                Err(what) if shown_problems.len() < LINE_PROBLEMS_SHOWN => shown_problems.push((n, what)),
                Err(_) => more += 1,
            }
        });
        self.report.files += 1;
        self.report.records += n;
        for (line, what) in &shown_problems {
            self.report.problem(shown, format_args!("line {line}: {what}"));
        }
        if more > 0 {
            self.report.problems += more - 1;
            self.report.problem(shown, format_args!("{more} more bad lines"));
        }
        match result {
            Ok(scanned) if scanned.trailing > 0 => {
                if active && self.owner_live {
                    self.report.note(
                        shown,
                        format_args!(
                            "last line is still being written ({} bytes so far), not checked",
                            scanned.trailing
                        ),
                    );
                } else if active {
                    self.report.problem(
                        shown,
                        format_args!(
                            "torn last line ({} bytes without a final \\n); the next start cuts it",
                            scanned.trailing
                        ),
                    );
                } else {
                    self.report.problem(
                        shown,
                        format_args!("torn last line ({} bytes without a final \\n)", scanned.trailing),
                    );
                }
                Some((scanned, stats))
            }
            Ok(scanned) => Some((scanned, stats)),
            Err(e) => {
                self.report.problem(shown, format_args!("cannot be read to its end (after line {n}): {e}"));
                None
            }
        }
    }

    /// The second pass: reads the files again for the keys whose hash was seen twice, and reports
    /// each real duplicate with the place of its first line.
    fn report_duplicates(&mut self) {
        if self.keys.suspects.is_empty() {
            return;
        }
        let mut places: HashMap<Key, Vec<(usize, u64)>> = HashMap::new();
        for (index, read) in self.reads.iter().enumerate() {
            let Some((file, c)) = read.paths.iter().find_map(|(p, c)| File::open(p).ok().map(|f| (f, *c))) else {
                continue;
            };
            let mut n = 0u64;
            let keys = &self.keys;
            let _ = sink::scan_limited(file, c, read.limit, &mut |line| {
                n += 1;
                if let Ok(key) = check_line(line) {
                    if keys.is_suspect(&key) {
                        places.entry(key).or_default().push((index, n));
                    }
                }
            });
        }
        let mut dups: Vec<(Key, Vec<(usize, u64)>)> = places.into_iter().filter(|(_, p)| p.len() > 1).collect();
        dups.sort();
        for (key, at) in dups {
            let (first_file, first_line) = at[0];
            let first = self.reads[first_file].paths[0].0.clone();
            for &(file, line) in &at[1..] {
                let path = self.reads[file].paths[0].0.clone();
                self.report.problem(
                    &path,
                    format_args!(
                        "line {line}: key ({}, {}, {}) is also at {} line {first_line}",
                        key.kind.as_str(),
                        key.conversation,
                        key.id,
                        first.display()
                    ),
                );
            }
        }
    }
}

/// One line's exactly-once key, or what is wrong with it (never quoting the line).
fn check_line(line: &[u8]) -> Result<Key, String> {
    if line.is_empty() {
        return Err("empty line".into());
    }
    let Ok(text) = std::str::from_utf8(line) else {
        return Err("not UTF-8".into());
    };
    if !text.trim_start().starts_with('{') {
        return Err("not a JSON object".into());
    }
    match serde_json::from_str::<Record>(text) {
        Ok(record) => {
            record.key().ok_or_else(|| "a record without an exactly-once key (kind, conversation, ID)".into())
        }
        // serde's own message can quote a value from the line; the category and column cannot.
        Err(e) if e.is_data() => {
            Err("a JSON object that is not a dm-handoff record (a field missing or of the wrong type)".into())
        }
        Err(e) => Err(format!("not valid JSON (column {})", e.column())),
    }
}

/// The hash set of keys seen, and the hashes seen twice.
#[derive(Default)]
struct KeySet {
    hasher: RandomState,
    /// The values are already uniform hashes: hashing them again would only cost time.
    seen: HashSet<u64, BuildHasherDefault<Identity>>,
    suspects: HashSet<u64>,
}

impl KeySet {
    fn hash(&self, key: &Key) -> u64 {
        self.hasher.hash_one(key)
    }

    fn insert(&mut self, key: &Key) {
        let h = self.hash(key);
        if !self.seen.insert(h) {
            self.suspects.insert(h);
        }
    }

    fn is_suspect(&self, key: &Key) -> bool {
        self.suspects.contains(&self.hash(key))
    }
}

/// A hasher for values that are hashes already.
#[derive(Default)]
struct Identity(u64);

impl Hasher for Identity {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::time::UNIX_EPOCH;

    use super::*;
    use crate::sink::{CommitPoint, Finisher, Sink, SinkConfig};

    const NAME: &str = "xquik-dm-handoff.jsonl";

    fn line(i: usize) -> String {
        format!(
            r#"{{"kind":"dm_message","provider":"xquik","pipeline":"support","account":"a","conversation_user_id":"44","message_id":"{i}","created_at":"2026-01-01T00:00:00.000Z","text":"secret text {i}","source_endpoint":"GET /x","synced_at":"2026-01-01T00:00:00.000Z"}}"#
        )
    }

    /// An output folder with `n` records over several closed segments, finished with `c`.
    fn folder(c: Compression, n: usize) -> (tempfile::TempDir, PathBuf) {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("out");
        let cfg = SinkConfig {
            dir: dir.clone(),
            file_name: NAME.into(),
            rotate_max_bytes: 1500,
            rotate_max_age: None,
            compress: c,
        };
        let (mut sink, _) = Sink::open(cfg.clone(), CommitPoint::default()).unwrap();
        let lines: Vec<String> = (0..n).map(line).collect();
        for chunk in lines.chunks(4) {
            sink.append(chunk, UNIX_EPOCH + Duration::from_secs(1_700_000_000)).unwrap();
        }
        let seq = sink.position().seq;
        sink.close().unwrap();
        let f = Finisher::start(&cfg, "support").unwrap();
        f.committed(seq);
        f.close();
        (tmp, dir)
    }

    fn check(dir: &Path, owner_live: bool) -> Report {
        verify_dir(dir, NAME, owner_live, SystemTime::now())
    }

    fn problems(r: &Report) -> Vec<&String> {
        r.lines.iter().filter(|l| l.starts_with("problem: ")).collect()
    }

    fn files_ending(dir: &Path, suffix: &str) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.to_str().unwrap().ends_with(suffix))
            .collect();
        v.sort();
        v
    }

    #[test]
    fn clean_output_of_every_codec_passes() {
        for c in Compression::ALL {
            let (_t, dir) = folder(c, 50);
            let r = check(&dir, false);
            assert_eq!(r.problems, 0, "{c:?}: {:#?}", r.lines);
            assert_eq!(r.records, 50);
            let stored = files_ending(&dir, &format!(".jsonl{}", c.suffix()));
            let segments = stored.iter().filter(|p| !p.ends_with(NAME)).count() as u64;
            assert!(segments >= 3, "{c:?}");
            assert_eq!(r.files, segments + 1, "{c:?}: segments and the active file");
            assert!(r
                .render("support")
                .ends_with(&format!("verify: pipeline support: {} files, 50 records, 0 problems\n", segments + 1)));
        }
    }

    /// An uncompressed closed segment deleted under its manifest is a problem, not "0 problems".
    #[test]
    fn a_raw_segment_deleted_under_its_manifest_is_a_problem() {
        let (_t, dir) = folder(Compression::None, 30);
        let segs: Vec<PathBuf> = files_ending(&dir, ".jsonl").into_iter().filter(|p| !p.ends_with(NAME)).collect();
        fs::remove_file(&segs[0]).unwrap();
        let r = check(&dir, false);
        let p = problems(&r);
        assert_eq!(p.len(), 1, "{:#?}", r.lines);
        assert!(p[0].contains("manifest.json") && p[0].contains("which does not exist"), "{}", p[0]);
    }

    #[test]
    fn a_duplicated_line_is_reported_with_both_places_and_no_text() {
        let (_t, dir) = folder(Compression::Zstd, 30);
        let mut active = fs::OpenOptions::new().append(true).open(dir.join(NAME)).unwrap();
        writeln!(active, "{}", line(3)).unwrap();
        let r = check(&dir, false);
        let p = problems(&r);
        assert_eq!(p.len(), 1, "{:#?}", r.lines);
        assert!(p[0].contains(NAME) && p[0].contains("key (dm_message, 44, 3) is also at"), "{}", p[0]);
        assert!(p[0].contains(".000001.jsonl.zst line 4"), "{}", p[0]);
        assert!(!r.render("s").contains("secret"), "text leaked");
    }

    #[test]
    fn a_changed_segment_and_a_missing_manifest_are_problems() {
        let (_t, dir) = folder(Compression::Gzip, 40);
        let segs = files_ending(&dir, ".jsonl.gz");
        // Changed: the same records, one text edited, recompressed.
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        let mut content = String::new();
        sink::scan(File::open(&segs[0]).unwrap(), Compression::Gzip, &mut |l| {
            content.push_str(&String::from_utf8_lossy(l).replace("secret", "SECRET"));
            content.push('\n');
        })
        .unwrap();
        e.write_all(content.as_bytes()).unwrap();
        fs::write(&segs[0], e.finish().unwrap()).unwrap();
        fs::remove_file(files_ending(&dir, ".manifest.json")[1].clone()).unwrap();
        let r = check(&dir, false);
        let p = problems(&r);
        assert!(p.iter().any(|l| l.contains("000001.manifest.json: sha256")), "{p:#?}");
        assert!(p.iter().any(|l| l.contains("000001.manifest.json: says") && l.contains("bytes")), "{p:#?}");
        assert!(p.iter().any(|l| l.ends_with("000002.jsonl.gz: closed segment without a manifest")), "{p:#?}");
        assert_eq!(p.len(), 3, "{p:#?}");
        // While a process owns the state, a segment closed moments ago may still be waiting for it.
        let r = check(&dir, true);
        assert_eq!(problems(&r).len(), 2, "{:#?}", r.lines);
        assert!(r.lines.iter().any(|l| l.starts_with("note: ") && l.contains("no manifest yet")), "{:#?}", r.lines);
        let later = verify_dir(&dir, NAME, true, SystemTime::now() + PENDING_GRACE);
        assert_eq!(problems(&later).len(), 3, "{:#?}", later.lines);
    }

    #[test]
    fn bad_files_are_problems_not_panics() {
        let (_t, dir) = folder(Compression::Zstd, 40);
        let segs = files_ending(&dir, ".jsonl.zst");
        let cut = fs::read(&segs[0]).unwrap();
        fs::write(&segs[0], &cut[..cut.len() / 2]).unwrap();
        fs::write(&segs[1], b"garbage, not zstd").unwrap();
        let mut active = fs::OpenOptions::new().append(true).open(dir.join(NAME)).unwrap();
        active.write_all(b"\n[1,2]\n{\"kind\":\"dm_message\"}\n{\"no\": \n\xff\xfe\n{\"kind\":\"dm_messa").unwrap();
        fs::write(dir.join("xquik-dm-handoff.notes.jsonl"), b"{}\n").unwrap();
        fs::write(dir.join("README"), b"not ours").unwrap();
        fs::write(dir.join(".xquik-dm-handoff.20000101T000000Z.000009.jsonl.zst.tmp"), b"x").unwrap();
        let r = check(&dir, false);
        let text = r.render("support");
        for want in [
            "000001.jsonl.zst: cannot be read to its end",
            "000002.jsonl.zst: cannot be read to its end (after line 0): Unknown frame descriptor",
            "xquik-dm-handoff.jsonl: line 5: empty line",
            "xquik-dm-handoff.jsonl: line 6: not a JSON object",
            "xquik-dm-handoff.jsonl: line 7: a JSON object that is not a dm-handoff record",
            "xquik-dm-handoff.jsonl: line 8: not valid JSON",
            "xquik-dm-handoff.jsonl: line 9: not UTF-8",
            "xquik-dm-handoff.jsonl: torn last line (17 bytes without a final \\n); the next start cuts it",
            "xquik-dm-handoff.notes.jsonl: matches this pipeline's loader globs",
            "note: ",
        ] {
            assert!(text.contains(want), "missing {want:?} in\n{text}");
        }
        assert!(!text.contains("README"));
        // A process writing: the last line is in progress, not torn.
        let live = check(&dir, true).render("support");
        assert!(live.contains("last line is still being written (17 bytes so far)"), "{live}");
    }

    #[test]
    fn a_segment_mid_compression_is_read_once() {
        let (_t, dir) = folder(Compression::None, 30);
        let raw = files_ending(&dir, ".jsonl").into_iter().find(|p| !p.ends_with(NAME)).unwrap();
        // A compressed twin beside its raw segment, no manifest: step 3 was interrupted.
        let mut e = zstd::stream::write::Encoder::new(Vec::new(), 3).unwrap();
        e.write_all(&fs::read(&raw).unwrap()).unwrap();
        fs::write(format!("{}.zst", raw.display()), e.finish().unwrap()).unwrap();
        fs::remove_file(raw.to_str().unwrap().replace(".jsonl", ".manifest.json")).unwrap();
        let r = check(&dir, true);
        assert_eq!(r.problems, 0, "{:#?}", r.lines);
        assert_eq!(r.records, 30);
        let r = check(&dir, false);
        assert_eq!(problems(&r).len(), 1, "{:#?}", r.lines);
        assert!(problems(&r)[0].ends_with("closed segment without a manifest"));
    }

    #[test]
    fn a_missing_folder_is_clean_and_an_unknown_pipeline_is_a_config_error() {
        let tmp = tempfile::tempdir().unwrap();
        let r = check(&tmp.path().join("nope"), false);
        assert_eq!((r.problems, r.files), (0, 0));
        let text = "[[pipelines]]\nname = \"support\"\nprovider = \"xquik\"\napi_key_env = \"K\"\naccount = \"a\"\n";
        let cfg = crate::config::from_str(text, Path::new("p.toml"), tmp.path()).unwrap();
        assert!(report(&cfg, &["other".into()]).unwrap_err().0.contains("no pipeline named `other`"));
        assert_eq!(report(&cfg, &[]).unwrap().exit, Exit::Ok);
        assert!(state_owner(&tmp.path().join("state")).is_none());
    }

    #[test]
    fn the_state_owner_is_found_without_taking_its_lock() {
        let tmp = tempfile::tempdir().unwrap();
        let store = crate::state::Store::open(tmp.path(), crate::state::StoreOptions::default()).unwrap();
        assert_eq!(state_owner(tmp.path()), Some(std::process::id()));
        drop(store);
        assert_eq!(state_owner(tmp.path()), None, "a LOCK file nobody holds is not an owner");
    }
}
