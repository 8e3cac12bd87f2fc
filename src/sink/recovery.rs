//! Start-up recovery: finding the closed segments of a stem, working out the active
//! generation and where reading resumes from a commit point, cutting a torn last line off
//! the active file, and reading back complete lines.
//!
//! The generation arithmetic is pure; the file helpers take an open `File` or a reader so
//! `super::Sink::open` decides what is opened, locked and logged.

use std::fs::{self, File};
use std::io::{self, BufRead};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::compress::Compression;
use super::rotation;
use super::CommitPoint;

/// A closed segment found on disk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Segment {
    /// The generation it held; recovery reads segments in this order.
    pub seq: u64,
    /// Where it is, to read it.
    pub path: PathBuf,
    /// How it is stored: compressed segments count for the generation arithmetic, and are
    /// read only when the commit point is older than they are.
    pub compression: Compression,
}

/// The closed segments of `stem` in `dir`, compressed or not, oldest generation first. A
/// segment whose compression was interrupted (raw file and compressed twin both there) is
/// listed once, as its raw file. Files that do not parse as closed segments of this stem are
/// none of our business and are skipped.
pub(super) fn list_closed(dir: &Path, stem: &str) -> io::Result<Vec<Segment>> {
    let mut segments = Vec::new();
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(rotation::Entry::Segment { seq, compression, .. }) =
            name.to_str().and_then(|n| rotation::classify(stem, n))
        else {
            continue;
        };
        segments.push(Segment { seq, path: entry.path(), compression });
    }
    // Ties (same seq, two stamps) cannot come from us; sorting by path too keeps the
    // order stable if an operator ever makes one. A raw name is a prefix of its twins', so
    // it sorts first and the twins after it are dropped.
    segments.sort_by(|a, b| (a.seq, &a.path).cmp(&(b.seq, &b.path)));
    segments.dedup_by(|later, first| {
        let base = |p: &Path| p.to_str().map(|s| s.trim_end_matches(".zst").trim_end_matches(".gz").to_owned());
        later.seq == first.seq && base(&later.path) == base(&first.path)
    });
    Ok(segments)
}

/// The generation of the active file: one past the newest closed segment, but never
/// behind the commit point (loaders may have moved closed segments away).
pub(super) fn active_generation(committed: CommitPoint, newest_closed: Option<u64>) -> u64 {
    let next_after_closed = newest_closed.map_or(1, |seq| seq.saturating_add(1));
    committed.seq.max(1).max(next_after_closed)
}

/// Where reading resumes in generation `seq`: `None` when all of it is covered by the
/// commit point, else the first byte not covered.
pub(super) fn resume_offset(committed: CommitPoint, seq: u64) -> Option<u64> {
    // seq 0 means "nothing committed", i.e. generation 1 offset 0 whatever offset says.
    let committed_seq = committed.seq.max(1);
    if seq < committed_seq {
        None
    } else if seq == committed.seq {
        Some(committed.offset)
    } else {
        Some(0)
    }
}

/// The length of `file` up to and including its last `\n` (0 if it has none), scanning
/// back from `len` in chunks of `chunk` bytes so a long history is not read.
pub(super) fn complete_len(file: &File, len: u64, chunk: usize) -> io::Result<u64> {
    let mut buf = vec![0; chunk.max(1)];
    let mut end = len;
    while end > 0 {
        let start = end.saturating_sub(buf.len() as u64);
        // Fits in usize: it is at most buf.len().
        let piece = &mut buf[..(end - start) as usize];
        file.read_exact_at(piece, start)?;
        if let Some(i) = piece.iter().rposition(|&b| b == b'\n') {
            return Ok(start + i as u64 + 1);
        }
        end = start;
    }
    Ok(0)
}

/// Cuts a torn last line (bytes after the last `\n`) off `file` and makes the cut durable.
/// Returns how many bytes were removed.
pub(super) fn cut_torn_tail(file: &File) -> io::Result<u64> {
    const CHUNK: usize = 64 * 1024;
    let len = file.metadata()?.len();
    let keep = complete_len(file, len, CHUNK)?;
    if keep < len {
        file.set_len(keep)?;
        file.sync_data()?;
    }
    Ok(len - keep)
}

/// Complete lines read back from a file.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Lines {
    /// Each line without its `\n`, in file order.
    pub lines: Vec<String>,
    /// Bytes after the last `\n`: a closed segment should have none, so the caller warns.
    pub trailing: u64,
    /// Lines that were not UTF-8 and were replaced lossily, so the caller can warn rather
    /// than refuse to start over a corrupt byte.
    pub lossy: u64,
}

/// Reads complete lines from `reader` until its end.
pub(super) fn read_lines(mut reader: impl BufRead) -> io::Result<Lines> {
    let mut out = Lines::default();
    let mut buf = Vec::new();
    loop {
        buf.clear();
        let n = reader.read_until(b'\n', &mut buf)?;
        if n == 0 {
            return Ok(out);
        }
        if buf.pop() != Some(b'\n') {
            out.trailing = n as u64;
            return Ok(out);
        }
        let line = match String::from_utf8(std::mem::take(&mut buf)) {
            Ok(line) => line,
            Err(e) => {
                out.lossy += 1;
                String::from_utf8_lossy(e.as_bytes()).into_owned()
            }
        };
        out.lines.push(line);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn point(seq: u64, offset: u64) -> CommitPoint {
        CommitPoint { seq, offset, ..CommitPoint::default() }
    }

    fn file_with(bytes: &[u8]) -> (tempfile::TempDir, File) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.jsonl");
        fs::write(&path, bytes).unwrap();
        let file = File::options().read(true).write(true).open(&path).unwrap();
        (dir, file)
    }

    #[test]
    fn active_generation_follows_closed_segments_and_commit() {
        assert_eq!(active_generation(CommitPoint::default(), None), 1);
        assert_eq!(active_generation(point(1, 10), None), 1);
        assert_eq!(active_generation(point(0, 0), Some(3)), 4);
        assert_eq!(active_generation(point(2, 5), Some(3)), 4);
        // Closed segments moved away by a loader: the commit point still knows.
        assert_eq!(active_generation(point(7, 5), Some(3)), 7);
        assert_eq!(active_generation(point(7, 5), None), 7);
    }

    #[test]
    fn resume_offsets() {
        let p = point(3, 40);
        assert_eq!(resume_offset(p, 2), None);
        assert_eq!(resume_offset(p, 3), Some(40));
        assert_eq!(resume_offset(p, 4), Some(0));
        // Nothing committed: everything from the start, a stray offset ignored.
        assert_eq!(resume_offset(point(0, 99), 1), Some(0));
        assert_eq!(resume_offset(point(0, 99), 2), Some(0));
    }

    #[test]
    fn complete_len_finds_last_newline_across_chunks() {
        let (_d, f) = file_with(b"{\"a\":1}\n{\"b\":2}\n{\"c\":");
        for chunk in [1, 2, 3, 5, 7, 64 * 1024] {
            assert_eq!(complete_len(&f, 21, chunk).unwrap(), 16, "chunk={chunk}");
            assert_eq!(complete_len(&f, 16, chunk).unwrap(), 16, "chunk={chunk}");
            assert_eq!(complete_len(&f, 15, chunk).unwrap(), 8, "chunk={chunk}");
            assert_eq!(complete_len(&f, 7, chunk).unwrap(), 0, "chunk={chunk}");
        }
    }

    #[test]
    fn cut_torn_tail_cuts_to_last_newline_or_zero() {
        let (_d, f) = file_with(b"{\"a\":1}\n{\"b\"");
        assert_eq!(cut_torn_tail(&f).unwrap(), 4);
        assert_eq!(f.metadata().unwrap().len(), 8);
        assert_eq!(cut_torn_tail(&f).unwrap(), 0);

        let (_d, f) = file_with(b"{\"only\": tor");
        assert_eq!(cut_torn_tail(&f).unwrap(), 12);
        assert_eq!(f.metadata().unwrap().len(), 0);

        let (_d, f) = file_with(b"");
        assert_eq!(cut_torn_tail(&f).unwrap(), 0);
    }

    #[test]
    fn read_lines_keeps_complete_lines_only() {
        let got = read_lines(&b"{\"a\":1}\n{}\n{\"x"[..]).unwrap();
        assert_eq!(got.lines, ["{\"a\":1}", "{}"]);
        assert_eq!(got.trailing, 3);
        assert_eq!(got.lossy, 0);

        let got = read_lines(&b"\xff{}\n"[..]).unwrap();
        assert_eq!(got.lines, ["\u{fffd}{}"]);
        assert_eq!(got.lossy, 1);

        assert_eq!(read_lines(&b""[..]).unwrap(), Lines::default());
    }

    #[test]
    fn list_closed_sorts_by_seq_and_skips_strangers() {
        let dir = tempfile::tempdir().unwrap();
        let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_000);
        for (stem, seq) in [("s", 1_000_000), ("s", 2), ("s", 999_999), ("other", 1)] {
            fs::write(dir.path().join(rotation::closed_name(stem, t, seq)), b"").unwrap();
        }
        for stranger in ["s.jsonl", "s.notes.txt", "s.x.jsonl", "README"] {
            let mut f = File::create(dir.path().join(stranger)).unwrap();
            f.write_all(b"x").unwrap();
        }
        let seqs: Vec<u64> = list_closed(dir.path(), "s").unwrap().into_iter().map(|s| s.seq).collect();
        assert_eq!(seqs, [2, 999_999, 1_000_000]);
    }
}
