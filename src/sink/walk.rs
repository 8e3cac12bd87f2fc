//! Reading every line of a pipeline's files, oldest generation first, for the offline state audit and
//! rebuild (`dm-handoff state check` / `state rebuild`): closed segments (one copy each, the raw file when
//! a compression left both), then the active file up to its last `\n`. Each line comes with whether the
//! committed state already covers it, by the same rules [`super::Sink::open`] uses to find the lines it
//! reconciles.

use std::fs::File;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use super::{recovery, rotation, scan_limited, CommitPoint, Compression};

/// One complete line (without its `\n`) and where it is.
pub struct Line<'a> {
    pub path: &'a Path,
    /// 1-based line number in the file's content.
    pub number: u64,
    /// Whether the stored commit point covers it; a line after it is reconciled when the pipeline next opens.
    pub committed: bool,
    pub bytes: &'a [u8],
}

/// What [`walk`] found, besides the lines.
#[derive(Debug, Default)]
pub struct Walked {
    /// Files read: closed segments and the active file.
    pub files: u64,
    /// Generations below the newest closed one with no segment left (loaders may move loaded segments away):
    /// the files then hold less than everything ever written.
    pub missing_generations: u64,
    /// Files that could not be read to their end, with why; their lines before the failure were handed over.
    pub unreadable: Vec<(PathBuf, String)>,
    /// Where the files end: the position a commit of everything in them would store.
    pub end: CommitPoint,
}

/// Calls `each` with every complete line of the pipeline's files in `dir`, oldest first, judging each
/// against `committed`. A missing folder holds no lines.
pub fn walk(
    dir: &Path,
    file_name: &str,
    committed: CommitPoint,
    each: &mut dyn FnMut(&Line<'_>),
) -> io::Result<Walked> {
    let stem = rotation::stem(file_name);
    let mut out = Walked::default();
    let closed = match recovery::list_closed(dir, stem) {
        Ok(c) => c,
        Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(e),
    };
    let newest_closed = closed.last().map(|s| s.seq);
    out.missing_generations = newest_closed.map_or(0, |n| n.saturating_sub(closed.len() as u64));
    for segment in &closed {
        let from = recovery::resume_offset(committed, segment.seq);
        read(&segment.path, segment.compression, None, from, &mut out, each);
    }
    let seq = recovery::active_generation(committed, newest_closed);
    let active = dir.join(file_name);
    let (len, ino, since) = match File::open(&active) {
        Ok(f) => {
            let meta = f.metadata()?;
            let len = recovery::complete_len(&f, meta.len(), 64 * 1024)?;
            let mut from = recovery::resume_offset(committed, seq);
            // Replaced or recreated since the commit: its offset counts bytes of another file.
            if committed.seq == seq && committed.active_ino.is_some_and(|i| i != meta.ino()) {
                from = Some(0);
            }
            read(&active, Compression::None, Some(len), from, &mut out, each);
            let since = if len == 0 {
                None
            } else if committed.seq == seq && committed.active_since_ms.is_some() {
                committed.active_since_ms
            } else {
                // As `Sink::open` does: the last write time errs towards rotating late rather than early.
                Some(super::rotation::unix_ms(meta.modified().unwrap_or_else(|_| SystemTime::now())))
            };
            (len, Some(meta.ino()), since)
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => (0, None, None),
        Err(e) => return Err(e),
    };
    out.end = CommitPoint { seq, offset: len, active_since_ms: since, active_ino: ino };
    Ok(out)
}

/// Reads one file's lines; `from` is the first content byte the commit point does not cover (None: all
/// covered). A failure is recorded, not returned: the other files are still read.
fn read(
    path: &Path,
    c: Compression,
    limit: Option<u64>,
    from: Option<u64>,
    out: &mut Walked,
    each: &mut dyn FnMut(&Line<'_>),
) {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) => {
            out.unreadable.push((path.to_path_buf(), e.to_string()));
            return;
        }
    };
    out.files += 1;
    let (mut at, mut number) = (0u64, 0u64);
    let scanned = scan_limited(file, c, limit, &mut |bytes| {
        number += 1;
        let committed = from.is_none_or(|from| at < from);
        at += bytes.len() as u64 + 1;
        each(&Line { path, number, committed, bytes });
    });
    if let Err(e) = scanned {
        out.unreadable.push((path.to_path_buf(), e.to_string()));
    }
}
