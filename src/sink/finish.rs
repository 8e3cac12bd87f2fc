//! Finishing closed segments: compressing them (when the pipeline's `compress` says so) and
//! writing their manifests, on a background thread per pipeline so the writer, and with it every
//! commit, never waits for a 64 MiB compression.
//!
//! # Which segments
//!
//! Only generations wholly before the committed [`super::CommitPoint`] (the caller reports it
//! with [`Finisher::committed`] after each commit that moved it to a new generation). Start-up
//! recovery reads closed segments only from the commit point on, so it never needs a segment
//! this thread has touched. Segments that already have a manifest are final and never touched
//! again, whatever `compress` says now.
//!
//! # Steps, and what a crash leaves
//!
//! For `<base>.jsonl` and codec `c` (extension `.zst` or `.gz`):
//!
//! 1. compress into `.<base>.jsonl.zst.tmp` (hidden, `.tmp`: no loader glob matches it), fsync;
//! 2. rename it to `<base>.jsonl.zst`, fsync the directory. A file under a final name was always
//!    fsynced before it got that name, so from here the compressed file is complete;
//! 3. remove `<base>.jsonl`, fsync the directory;
//! 4. write `<base>.manifest.json` atomically (temporary, fsync, rename, directory fsync).
//!
//! With `compress = "none"` only step 4 runs. Each start resumes from what is on disk: leftover
//! temporaries are removed (step 1 interrupted); a raw segment beside its compressed twin is
//! step 3 interrupted, and the raw file goes only after the twin has been decoded to its end and
//! its content's SHA-256 equals the raw file's (else the twin is removed and made again); a
//! segment without a manifest gets one (step 4 interrupted).

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, BufRead, BufReader, BufWriter, Write};
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::compress::{self, Compression, Digested, Encoder, HashWriter, IO_BUF};
use super::manifest::{self, Stats};
use super::rotation::{self, Entry};
use super::SinkConfig;

/// How long a failed segment (a full disk, say) waits before the next try when no new commit
/// brings one sooner.
const RETRY_AFTER: Duration = Duration::from_secs(30);

/// Handle to a pipeline's finishing thread. Dropping it (or [`Finisher::close`]) finishes every
/// segment already committed, then joins the thread.
#[derive(Debug)]
pub struct Finisher {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

#[derive(Debug, Default)]
struct Shared {
    signal: Mutex<Signal>,
    wake: Condvar,
    /// Finishing passes made, for the test that a failing segment waits between tries.
    attempts: std::sync::atomic::AtomicU64,
}

/// The wait after `failures` failed passes in a row: [`RETRY_AFTER`] doubled per failure, up to 16 times it.
fn retry_delay(failures: u32) -> Duration {
    RETRY_AFTER * (1u32 << failures.saturating_sub(1).min(4))
}

#[derive(Debug, Default)]
struct Signal {
    /// Every generation below this one is covered by committed state.
    committed_seq: u64,
    /// The owner is closing: do what is committed, then stop.
    closing: bool,
}

fn lock(m: &Mutex<Signal>) -> MutexGuard<'_, Signal> {
    // The signal is two plain values; a panic elsewhere cannot leave them inconsistent.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Finisher {
    /// Starts the thread. Its first act is removing temporaries an interrupted run left.
    pub fn start(cfg: &SinkConfig, pipeline: &str) -> io::Result<Finisher> {
        let shared = Arc::new(Shared::default());
        let job = Job::new(cfg);
        let theirs = shared.clone();
        let thread = std::thread::Builder::new().name(format!("finish-{pipeline}")).spawn(move || job.run(&theirs))?;
        Ok(Finisher { shared, thread: Some(thread) })
    }

    /// Says that every generation before `seq` is covered by committed state; wakes the thread
    /// when that is news.
    pub fn committed(&self, seq: u64) {
        let mut s = lock(&self.shared.signal);
        if seq > s.committed_seq {
            s.committed_seq = seq;
            self.shared.wake.notify_one();
        }
    }

    /// Finishes what is committed and joins the thread.
    pub fn close(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        let Some(thread) = self.thread.take() else { return };
        lock(&self.shared.signal).closing = true;
        self.shared.wake.notify_one();
        if thread.join().is_err() {
            tracing::error!("the segment finishing thread panicked; the next start finishes its segments");
        }
    }
}

impl Drop for Finisher {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The files of one segment found in a listing.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Group {
    seq: u64,
    raw: bool,
    compressed: Vec<Compression>,
    manifest: bool,
}

/// What finishing works on: one pipeline's output directory.
pub(super) struct Job {
    dir: PathBuf,
    stem: String,
    compress: Compression,
}

impl Job {
    pub(super) fn new(cfg: &SinkConfig) -> Job {
        Job { dir: cfg.dir.clone(), stem: rotation::stem(&cfg.file_name).to_owned(), compress: cfg.compress }
    }

    fn run(&self, shared: &Shared) {
        let dir = match File::open(&self.dir) {
            Ok(d) => d,
            Err(e) => {
                tracing::error!(dir = %self.dir.display(), error = %e, "cannot open the output directory to finish segments; the next start tries again");
                return;
            }
        };
        self.remove_temporaries(&dir);
        // The committed generation the last pass was asked to reach, failed or not: waiting on "more than
        // this" (not on "more than what succeeded") is what lets a failure wait out its delay instead of
        // trying again at once, for ever (a directory named like a segment made this spin a core).
        let mut attempted = 0;
        let mut failures: u32 = 0;
        let mut failed_at: Option<Instant> = None;
        loop {
            let delay = retry_delay(failures);
            let (target, closing, retry) = {
                let mut s = lock(&shared.signal);
                loop {
                    let retry_due = failed_at.is_some_and(|t| t.elapsed() >= delay);
                    if s.closing || s.committed_seq > attempted || retry_due {
                        break (s.committed_seq, s.closing, retry_due);
                    }
                    let wait = failed_at.map_or(Duration::from_secs(3600), |t| delay.saturating_sub(t.elapsed()));
                    s = match shared.wake.wait_timeout(s, wait) {
                        Ok((s, _)) => s,
                        Err(p) => p.into_inner().0,
                    };
                }
            };
            shared.attempts.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            // A pass a new commit brought while a failure waits out its delay logs that failure quietly:
            // at most one warning per failing segment per backoff step.
            let loud = failed_at.is_none() || retry || closing;
            attempted = target;
            if self.finish_before_logged(&dir, target, loud) {
                failures = 0;
                failed_at = None;
            } else {
                if loud {
                    failures = failures.saturating_add(1);
                }
                failed_at = Some(failed_at.filter(|_| !loud).unwrap_or_else(Instant::now));
            }
            if closing {
                return;
            }
        }
    }

    /// Removes temporaries of ours: compressions and manifests a crash interrupted. Only this
    /// thread makes them and it is not running one now, so every one found is a leftover.
    fn remove_temporaries(&self, dir: &File) {
        let Ok(entries) = fs::read_dir(&self.dir) else { return };
        let mut removed = 0;
        for e in entries.flatten() {
            let name = e.file_name();
            let Some(name) = name.to_str() else { continue };
            if rotation::classify(&self.stem, name) == Some(Entry::Temp) {
                match fs::remove_file(e.path()) {
                    Ok(()) => removed += 1,
                    Err(err) => {
                        tracing::warn!(file = %e.path().display(), error = %err, "cannot remove a leftover temporary file")
                    }
                }
            }
        }
        if removed > 0 {
            let _ = dir.sync_all();
            tracing::info!(dir = %self.dir.display(), files = removed, "removed temporary files an interrupted run left");
        }
    }

    /// The segments in the directory, by (generation, base name).
    fn list(&self) -> io::Result<BTreeMap<(u64, String), Group>> {
        let mut groups: BTreeMap<(u64, String), Group> = BTreeMap::new();
        for e in fs::read_dir(&self.dir)? {
            let e = e?;
            let name = e.file_name();
            let Some(entry) = name.to_str().and_then(|n| rotation::classify(&self.stem, n)) else { continue };
            match entry {
                Entry::Segment { base, seq, compression } => {
                    let g = groups.entry((seq, base)).or_default();
                    g.seq = seq;
                    match compression {
                        Compression::None => g.raw = true,
                        c => g.compressed.push(c),
                    }
                }
                Entry::Manifest { base, seq } => {
                    let g = groups.entry((seq, base)).or_default();
                    g.seq = seq;
                    g.manifest = true;
                }
                Entry::Temp => {}
            }
        }
        Ok(groups)
    }

    /// Finishes every segment of a generation below `before` that has no manifest yet, oldest
    /// first. Returns false if any failed (each failure is logged; the others still run).
    #[cfg(test)]
    pub(super) fn finish_before(&self, dir: &File, before: u64) -> bool {
        self.finish_before_logged(dir, before, true)
    }

    /// Finishes every segment below `before` without a manifest (see `finish_before`); a failure is a warning when `loud`, else a debug line.
    fn finish_before_logged(&self, dir: &File, before: u64, loud: bool) -> bool {
        let groups = match self.list() {
            Ok(g) => g,
            Err(e) => {
                tracing::warn!(dir = %self.dir.display(), error = %e, "cannot list closed segments to finish them");
                return false;
            }
        };
        let mut ok = true;
        // Keys sort by generation first, so this is every generation below `before`.
        for ((_, base), g) in groups.range(..(before, String::new())) {
            if g.manifest {
                continue;
            }
            let started = Instant::now();
            match self.finish_one(dir, base, g) {
                Ok(Some((m, raw_bytes))) => tracing::info!(
                    segment = %m.segment,
                    records = m.records,
                    raw_bytes,
                    stored_bytes = m.bytes,
                    ms = started.elapsed().as_millis() as u64,
                    "segment finished"
                ),
                Ok(None) => {}
                Err(e) => {
                    ok = false;
                    if loud {
                        tracing::warn!(segment = %base, error = %e, "finishing a closed segment failed; it is tried again later");
                    } else {
                        tracing::debug!(segment = %base, error = %e, "finishing a closed segment failed again");
                    }
                }
            }
        }
        ok
    }

    /// Brings one segment to its final form and writes its manifest. Returns the manifest and
    /// the segment's uncompressed size, or None when there was nothing to finish.
    fn finish_one(&self, dir: &File, base: &str, g: &Group) -> io::Result<Option<(manifest::Manifest, u64)>> {
        // A twin of the configured codec wins over another (left by an earlier setting).
        let twin = g.compressed.iter().copied().max_by_key(|c| *c == self.compress);
        let done = match (g.raw, twin) {
            (true, Some(c)) => match self.matching_twin(base, c)? {
                Some(done) => {
                    fs::remove_file(self.path(&rotation::segment_name(base, Compression::None)))?;
                    dir.sync_all()?;
                    done
                }
                None => {
                    tracing::warn!(segment = %base, compression = c.name(), "a compressed copy does not match its segment; making it again");
                    fs::remove_file(self.path(&rotation::segment_name(base, c)))?;
                    dir.sync_all()?;
                    self.final_form(dir, base)?
                }
            },
            (true, None) => self.final_form(dir, base)?,
            (false, Some(c)) => self.describe(base, c)?.0,
            (false, None) => return Ok(None),
        };
        let Finished { stats, name, stored, content_bytes } = done;
        let m = stats.manifest(name, stored.bytes, stored.sha256);
        manifest::write(dir, &self.dir, base, &m)?;
        Ok(Some((m, content_bytes)))
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Compresses the raw segment, or with `compress = "none"` only reads it for its manifest.
    fn final_form(&self, dir: &File, base: &str) -> io::Result<Finished> {
        match self.compress {
            Compression::None => Ok(self.describe(base, Compression::None)?.0),
            c => self.compress_raw(dir, base, c),
        }
    }

    /// Reads a stored segment for its manifest; also returns its content's digest.
    fn describe(&self, base: &str, c: Compression) -> io::Result<(Finished, Digested)> {
        let name = rotation::segment_name(base, c);
        let mut stats = Stats::default();
        let scanned = compress::scan(File::open(self.path(&name))?, c, &mut |l| stats.add_line(l))?;
        if scanned.trailing > 0 {
            tracing::warn!(segment = %name, bytes = scanned.trailing, "closed segment ends without a newline");
        }
        Ok((Finished { stats, name, stored: scanned.stored, content_bytes: scanned.content.bytes }, scanned.content))
    }

    /// Whether the compressed twin of a raw segment decodes to exactly the raw content; if so,
    /// what its manifest needs.
    fn matching_twin(&self, base: &str, c: Compression) -> io::Result<Option<Finished>> {
        let (twin, twin_content) = match self.describe(base, c) {
            Ok(t) => t,
            // Any failure to decode it means it is not a usable copy; the raw file is still here.
            Err(_) => return Ok(None),
        };
        let raw_path = self.path(&rotation::segment_name(base, Compression::None));
        let raw = compress::scan(File::open(raw_path)?, Compression::None, &mut |_| {})?;
        Ok((raw.content == twin_content).then_some(twin))
    }

    /// Steps 1–3: compress to a temporary, fsync, rename, fsync the directory, remove the raw file.
    fn compress_raw(&self, dir: &File, base: &str, c: Compression) -> io::Result<Finished> {
        let raw_path = self.path(&rotation::segment_name(base, Compression::None));
        let name = rotation::segment_name(base, c);
        let tmp = self.path(&rotation::temp_name(&name));
        let written = (|| {
            let out = HashWriter::new(BufWriter::with_capacity(IO_BUF, manifest::create_file(&tmp)?));
            let mut enc = Encoder::new(c, out)?.ok_or_else(|| io::Error::other("no encoder for compress = none"))?;
            let mut input = BufReader::with_capacity(IO_BUF, File::open(&raw_path)?);
            let (mut stats, mut content_bytes, mut line) = (Stats::default(), 0, Vec::new());
            loop {
                line.clear();
                let n = input.read_until(b'\n', &mut line)?;
                if n == 0 {
                    break;
                }
                content_bytes += n as u64;
                match line.strip_suffix(b"\n") {
                    Some(l) => stats.add_line(l),
                    None => tracing::warn!(segment = %base, bytes = n, "closed segment ends without a newline"),
                }
                enc.write_all(&line)?;
            }
            let (buffered, stored) = enc.finish()?.finish();
            let file = buffered.into_inner().map_err(io::IntoInnerError::into_error)?;
            file.sync_all()?;
            fs::rename(&tmp, self.path(&name))?;
            dir.sync_all()?;
            Ok((stats, stored, content_bytes))
        })();
        let (stats, stored, content_bytes) = match written {
            Ok(w) => w,
            Err(e) => {
                let _ = fs::remove_file(&tmp);
                return Err(e);
            }
        };
        fs::remove_file(&raw_path)?;
        dir.sync_all()?;
        Ok(Finished { stats, name, stored, content_bytes })
    }
}

/// A segment in its final form: what its manifest says.
struct Finished {
    stats: Stats,
    /// The file name as stored.
    name: String,
    stored: Digested,
    /// Its content's size (decompressed), for the log.
    content_bytes: u64,
}

/// Finishes everything below `before` at once, on the calling thread: for tests.
#[cfg(test)]
pub(super) fn finish_now(cfg: &SinkConfig, before: u64) -> bool {
    let job = Job::new(cfg);
    let dir = File::open(&job.dir).unwrap();
    job.remove_temporaries(&dir);
    job.finish_before(&dir, before)
}

#[cfg(test)]
mod tests {
    use std::io::Read;
    use std::time::{Duration, UNIX_EPOCH};

    /// A closed segment that cannot be finished (here a directory named like one) is tried once, then waits
    /// out its delay: before, the wait condition stayed true after the failure and the thread spun a core,
    /// logging a warning per try (35,000 a second).
    #[test]
    fn a_segment_that_cannot_be_finished_waits_between_tries() {
        let tmp = tempfile::tempdir().unwrap();
        let cfg = super::SinkConfig {
            dir: tmp.path().to_path_buf(),
            file_name: "xquik-dm-handoff.jsonl".into(),
            rotate_max_bytes: 1024,
            rotate_max_age: None,
            compress: Compression::None,
        };
        fs::create_dir(tmp.path().join("xquik-dm-handoff.20260101T000000Z.000001.jsonl")).unwrap();
        let f = Finisher::start(&cfg, "spin").unwrap();
        f.committed(2);
        let attempts = || f.shared.attempts.load(std::sync::atomic::Ordering::Relaxed);
        // The first pass, however loaded the machine (no lower bound on speed is asserted)...
        let start = std::time::Instant::now();
        while attempts() == 0 && start.elapsed() < Duration::from_secs(30) {
            std::thread::sleep(Duration::from_millis(10));
        }
        // ...then half a second in which the failure waits out its delay: before, thousands of passes.
        std::thread::sleep(Duration::from_millis(500));
        let attempts = attempts();
        f.close();
        assert!((1..=2).contains(&attempts), "{attempts} finishing passes in half a second after the first");
        assert_eq!(super::retry_delay(1), super::RETRY_AFTER);
        assert_eq!(super::retry_delay(3), super::RETRY_AFTER * 4);
        assert_eq!(super::retry_delay(99), super::RETRY_AFTER * 16);
    }

    use sha2::{Digest, Sha256};

    use super::super::{recovery, CommitPoint, Sink};
    use super::*;

    const NAME: &str = "xquik-dm-handoff.jsonl";

    fn cfg(dir: &std::path::Path, compress: Compression) -> SinkConfig {
        SinkConfig {
            dir: dir.to_path_buf(),
            file_name: NAME.into(),
            rotate_max_bytes: 400,
            rotate_max_age: None,
            compress,
        }
    }

    fn line(i: usize) -> String {
        let kind = if i % 5 == 0 { "dm_send" } else { "dm_message" };
        let time = if kind == "dm_send" { "sent_at" } else { "created_at" };
        format!(
            r#"{{"kind":"{kind}","message_id":"{i}","{time}":"2026-01-01T00:00:{:02}.000Z","text":"t{i}"}}"#,
            i % 60
        )
    }

    /// A sink with `n` lines written in appends of 3: several closed segments. Returns the raw
    /// bytes of each closed segment by base name, and the position after the writes.
    fn write_segments(cfg: &SinkConfig, n: usize) -> (BTreeMap<String, Vec<u8>>, CommitPoint) {
        let (mut sink, _) = Sink::open(cfg.clone(), CommitPoint::default()).unwrap();
        let t = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let lines: Vec<String> = (0..n).map(line).collect();
        for chunk in lines.chunks(3) {
            sink.append(chunk, t).unwrap();
        }
        let point = sink.position();
        sink.close().unwrap();
        let raw = recovery::list_closed(&cfg.dir, "xquik-dm-handoff")
            .unwrap()
            .into_iter()
            .map(|s| {
                let name = s.path.file_name().unwrap().to_str().unwrap().to_string();
                (name.trim_end_matches(".jsonl").to_string(), fs::read(&s.path).unwrap())
            })
            .collect();
        (raw, point)
    }

    fn names(dir: &std::path::Path) -> Vec<String> {
        let mut v: Vec<String> =
            fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        v.sort();
        v
    }

    fn decoded(path: &std::path::Path, c: Compression) -> Vec<u8> {
        let mut out = Vec::new();
        compress::decoder(File::open(path).unwrap(), c).unwrap().read_to_end(&mut out).unwrap();
        out
    }

    /// Checks that segment `base` is final: stored with `c` only, content unchanged, and a
    /// manifest that describes the stored file.
    fn assert_final(dir: &std::path::Path, base: &str, raw: &[u8], c: Compression) {
        for other in Compression::ALL.into_iter().filter(|x| *x != c) {
            assert!(!dir.join(rotation::segment_name(base, other)).exists(), "{base}: a {other:?} copy remains");
        }
        let stored_path = dir.join(rotation::segment_name(base, c));
        assert_eq!(decoded(&stored_path, c), raw, "{base}: content changed");
        let stored = fs::read(&stored_path).unwrap();
        let m = manifest::read(&dir.join(rotation::manifest_name(base))).unwrap();
        assert_eq!(m.segment, rotation::segment_name(base, c));
        assert_eq!(m.bytes, stored.len() as u64);
        let sha: String = Sha256::digest(&stored).iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(m.sha256, sha);
        let lines = raw.split(|b| *b == b'\n').filter(|l| !l.is_empty()).count() as u64;
        assert_eq!(m.records, lines);
        assert_eq!(m.kinds.values().sum::<u64>(), lines);
        assert!(m.first_created_at.is_some() && m.first_created_at <= m.last_created_at);
        let mode = fs::metadata(&stored_path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o640, "{base}");
    }

    use std::os::unix::fs::PermissionsExt;

    /// Writes a file as the sink would have made it (mode 0640).
    fn put(path: impl AsRef<std::path::Path>, bytes: impl AsRef<[u8]>) {
        manifest::create_file(path.as_ref()).unwrap().write_all(bytes.as_ref()).unwrap();
    }

    #[test]
    fn every_codec_finishes_segments_before_the_commit_point_only() {
        for c in Compression::ALL {
            let tmp = tempfile::tempdir().unwrap();
            let cfg = cfg(tmp.path(), c);
            let (raw, point) = write_segments(&cfg, 40);
            assert!(raw.len() >= 4, "{c:?}: {} segments", raw.len());
            // Only the first two generations are covered by the commit point here.
            assert!(finish_now(&cfg, 3));
            let bases: Vec<&String> = raw.keys().collect();
            for base in &bases[..2] {
                assert_final(tmp.path(), base, &raw[*base], c);
            }
            for base in &bases[2..] {
                assert!(tmp.path().join(rotation::segment_name(base, Compression::None)).exists());
                assert!(!tmp.path().join(rotation::manifest_name(base)).exists());
            }
            assert!(finish_now(&cfg, point.seq));
            for (base, bytes) in &raw {
                assert_final(tmp.path(), base, bytes, c);
            }
            assert!(!names(tmp.path()).iter().any(|n| n.starts_with('.')), "{c:?}: {:?}", names(tmp.path()));
            // Finished segments are final: a second pass, even under another setting, changes nothing.
            let before: Vec<(String, Vec<u8>)> =
                names(tmp.path()).into_iter().map(|n| (n.clone(), fs::read(tmp.path().join(&n)).unwrap())).collect();
            let other = if c == Compression::Zstd { Compression::Gzip } else { Compression::Zstd };
            assert!(finish_now(&SinkConfig { compress: other, ..cfg.clone() }, point.seq));
            let after: Vec<(String, Vec<u8>)> =
                names(tmp.path()).into_iter().map(|n| (n.clone(), fs::read(tmp.path().join(&n)).unwrap())).collect();
            assert_eq!(before, after, "{c:?}");
        }
    }

    #[test]
    fn whatever_a_crash_left_is_finished_at_the_next_start() {
        let tmp = tempfile::tempdir().unwrap();
        let cfg = cfg(tmp.path(), Compression::Zstd);
        let (raw, point) = write_segments(&cfg, 60);
        let bases: Vec<String> = raw.keys().cloned().collect();
        assert!(bases.len() >= 6);
        let dir = tmp.path();
        let zst = |b: &str| dir.join(rotation::segment_name(b, Compression::Zstd));
        let compressed = |b: &str| {
            let mut e = Encoder::new(Compression::Zstd, Vec::new()).unwrap().unwrap();
            e.write_all(&raw[b]).unwrap();
            e.finish().unwrap()
        };
        // 0: step 1 interrupted: a half-written temporary beside the raw segment.
        put(dir.join(rotation::temp_name(&rotation::segment_name(&bases[0], Compression::Zstd))), b"\x28\xb5");
        // 1: step 3 interrupted: raw segment and a complete twin.
        put(zst(&bases[1]), compressed(&bases[1]));
        // 2: a twin that does not decode to the raw content (cut short) is made again.
        let whole = compressed(&bases[2]);
        put(zst(&bases[2]), &whole[..whole.len() / 2]);
        // 3: step 4 not reached: only the compressed file, no manifest.
        put(zst(&bases[3]), compressed(&bases[3]));
        fs::remove_file(dir.join(rotation::segment_name(&bases[3], Compression::None))).unwrap();
        // 4: the manifest's temporary left behind.
        put(dir.join(rotation::temp_name(&rotation::manifest_name(&bases[4]))), b"{\"segm");
        // 5: a twin in another codec (left by an earlier setting) is kept rather than redone.
        let mut e = Encoder::new(Compression::Gzip, Vec::new()).unwrap().unwrap();
        e.write_all(&raw[&bases[5]]).unwrap();
        put(dir.join(rotation::segment_name(&bases[5], Compression::Gzip)), e.finish().unwrap());

        // Recovery with a lost commit point reads each segment once, twins or not.
        let (_, recovered) = Sink::open(cfg.clone(), CommitPoint::default()).unwrap();
        let want: Vec<String> = (0..60).map(line).collect();
        assert_eq!(recovered.lines, want);

        assert!(finish_now(&cfg, point.seq));
        for (i, base) in bases.iter().enumerate() {
            let c = if i == 5 { Compression::Gzip } else { Compression::Zstd };
            assert_final(dir, base, &raw[base], c);
        }
        assert!(!names(dir).iter().any(|n| n.starts_with('.')), "{:?}", names(dir));
    }

    #[test]
    fn recovery_reads_compressed_segments_when_the_state_is_older_than_them() {
        for c in [Compression::Zstd, Compression::Gzip] {
            let tmp = tempfile::tempdir().unwrap();
            let cfg = cfg(tmp.path(), c);
            let (_, point) = write_segments(&cfg, 30);
            assert!(finish_now(&cfg, point.seq));
            // An old commit point in the middle of generation 2: its rest and everything after.
            let first = recovery::list_closed(tmp.path(), "xquik-dm-handoff").unwrap();
            assert!(first.iter().all(|s| s.compression == c));
            let gen1 = decoded(&first[0].path, c);
            let gen2 = decoded(&first[1].path, c);
            let cut = gen2.iter().position(|b| *b == b'\n').unwrap() as u64 + 1;
            let old = CommitPoint { seq: 2, offset: cut, ..CommitPoint::default() };
            let (sink, recovered) = Sink::open(cfg.clone(), old).unwrap();
            let skipped = (gen1.iter().filter(|b| **b == b'\n').count() + 1) as usize;
            let want: Vec<String> = (skipped..30).map(line).collect();
            assert_eq!(recovered.lines, want, "{c:?}");
            assert_eq!(sink.position().seq, point.seq, "{c:?}: the active generation counts compressed segments");
        }
    }

    #[test]
    fn the_thread_finishes_what_is_committed_and_close_drains_it() {
        let tmp = tempfile::tempdir().unwrap();
        let cfg = cfg(tmp.path(), Compression::Gzip);
        let (raw, point) = write_segments(&cfg, 30);
        fs::write(tmp.path().join(".xquik-dm-handoff.20000101T000000Z.000099.jsonl.gz.tmp"), b"x").unwrap();
        let f = Finisher::start(&cfg, "p").unwrap();
        f.committed(point.seq);
        f.committed(1); // an older point is no news
        f.close();
        for (base, bytes) in &raw {
            assert_final(tmp.path(), base, bytes, Compression::Gzip);
        }
        assert!(!names(tmp.path()).iter().any(|n| n.starts_with('.')));
    }
}
