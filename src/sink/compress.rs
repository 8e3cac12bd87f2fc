//! Codecs of closed segments (the pipeline's `compress` setting) and the streaming plumbing around
//! them: encoders and decoders that never hold a segment in memory, and readers and writers that
//! hash what passes through, so one pass over a file gives its manifest's size and SHA-256 too.
//!
//! What is compressed when, and how a crash is survived, is `super::finish`'s; this module only
//! turns bytes into bytes.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Write};

use sha2::{Digest, Sha256};

/// How closed segments are stored: the per-pipeline `compress` key.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    /// Closed segments stay `.jsonl`.
    #[default]
    None,
    /// `.jsonl.zst`, zstd level 3 with frame checksums.
    Zstd,
    /// `.jsonl.gz`, gzip (deflate level 6), readable by every loader that reads gzip.
    Gzip,
}

/// zstd's default level: at JSON lines it compresses several times faster than gzip at a
/// better ratio (measured in the README's loader section).
const ZSTD_LEVEL: i32 = 3;
/// gzip's usual default; loaders only care that it is gzip.
const GZIP_LEVEL: u32 = 6;
/// Buffer size for reading and writing segments: large enough that syscalls do not dominate.
pub(super) const IO_BUF: usize = 256 * 1024;

impl Compression {
    /// Every codec, for tests and messages.
    pub const ALL: [Compression; 3] = [Compression::None, Compression::Zstd, Compression::Gzip];

    /// The config value.
    pub const fn name(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Zstd => "zstd",
            Compression::Gzip => "gzip",
        }
    }

    /// What a segment stored this way has after `.jsonl`: the extension loaders detect it by.
    pub const fn suffix(self) -> &'static str {
        match self {
            Compression::None => "",
            Compression::Zstd => ".zst",
            Compression::Gzip => ".gz",
        }
    }
}

/// SHA-256 and length of the bytes that went through a `HashWriter` or `HashReader`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Digested {
    /// Bytes seen.
    pub bytes: u64,
    /// Lowercase hex SHA-256 of them.
    pub sha256: String,
}

fn finish_hash(hash: Sha256, bytes: u64) -> Digested {
    let sha256 = hash.finalize().iter().map(|b| format!("{b:02x}")).collect();
    Digested { bytes, sha256 }
}

/// A writer that hashes and counts what it passes on.
pub(super) struct HashWriter<W> {
    inner: W,
    hash: Sha256,
    bytes: u64,
}

impl<W: Write> HashWriter<W> {
    pub(super) fn new(inner: W) -> Self {
        HashWriter { inner, hash: Sha256::new(), bytes: 0 }
    }

    pub(super) fn finish(self) -> (W, Digested) {
        (self.inner, finish_hash(self.hash, self.bytes))
    }
}

impl<W: Write> Write for HashWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hash.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// A reader that hashes and counts what is read through it.
pub(super) struct HashReader<R> {
    inner: R,
    hash: Sha256,
    bytes: u64,
}

impl<R: Read> HashReader<R> {
    pub(super) fn new(inner: R) -> Self {
        HashReader { inner, hash: Sha256::new(), bytes: 0 }
    }

    /// Reads whatever is left (so the digest covers the whole input) and returns the digest.
    pub(super) fn finish(mut self) -> io::Result<Digested> {
        io::copy(&mut self, &mut io::sink())?;
        Ok(finish_hash(self.hash, self.bytes))
    }
}

impl<R: Read> Read for HashReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hash.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }
}

/// A streaming compressor for one codec.
pub(super) enum Encoder<W: Write> {
    Zstd(zstd::stream::write::Encoder<'static, W>),
    Gzip(flate2::write::GzEncoder<W>),
}

impl<W: Write> Encoder<W> {
    /// An encoder for `c`; `None` has no encoder (the caller keeps the segment as it is).
    pub(super) fn new(c: Compression, inner: W) -> io::Result<Option<Encoder<W>>> {
        Ok(match c {
            Compression::None => None,
            Compression::Zstd => {
                let mut e = zstd::stream::write::Encoder::new(inner, ZSTD_LEVEL)?;
                // A decoder (ours in `verify`, or a loader's) then detects a damaged file.
                e.include_checksum(true)?;
                Some(Encoder::Zstd(e))
            }
            Compression::Gzip => {
                Some(Encoder::Gzip(flate2::write::GzEncoder::new(inner, flate2::Compression::new(GZIP_LEVEL))))
            }
        })
    }

    /// Writes the end of the stream and hands back the inner writer.
    pub(super) fn finish(self) -> io::Result<W> {
        match self {
            Encoder::Zstd(e) => e.finish(),
            Encoder::Gzip(e) => e.finish(),
        }
    }
}

impl<W: Write> Write for Encoder<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Encoder::Zstd(e) => e.write(buf),
            Encoder::Gzip(e) => e.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Encoder::Zstd(e) => e.flush(),
            Encoder::Gzip(e) => e.flush(),
        }
    }
}

/// What [`scan`] found in a stored file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Scanned {
    /// Size and SHA-256 of the file as stored (compressed or not).
    pub stored: Digested,
    /// Size and SHA-256 of its content once decompressed (equal to `stored` for `.jsonl`).
    pub content: Digested,
    /// Bytes after the last `\n` of the content: a torn last line.
    pub trailing: u64,
}

/// Reads `file` (stored with `c`) to its end, calling `line` with every complete line of its
/// content (without the `\n`), in order. Only a 256 KiB buffer and the longest line are held.
///
/// A content read error (a truncated or damaged compressed stream) is returned as it is, after
/// the lines before it were handed over; `stored` covers the whole file either way.
pub fn scan(file: File, c: Compression, line: &mut dyn FnMut(&[u8])) -> io::Result<Scanned> {
    scan_limited(file, c, None, line)
}

/// As [`scan`], reading at most `limit` bytes of an uncompressed file: a file still being
/// appended to is read as it was when the caller measured it.
pub fn scan_limited(
    file: File,
    c: Compression,
    limit: Option<u64>,
    line: &mut dyn FnMut(&[u8]),
) -> io::Result<Scanned> {
    let stored = HashReader::new(file.take(limit.unwrap_or(u64::MAX)));
    let stored = BufReader::with_capacity(IO_BUF, stored);
    match c {
        Compression::None => {
            let mut stored = stored;
            let trailing = each_line(&mut stored, line)?;
            let stored = drain(stored)?;
            Ok(Scanned { content: stored.clone(), stored, trailing })
        }
        Compression::Zstd => {
            let decoder = zstd::stream::read::Decoder::with_buffer(stored)?;
            let mut content = HashReader::new(decoder);
            let trailing = each_line(&mut BufReader::with_capacity(IO_BUF, &mut content), line)?;
            let stored_reader = content.inner.finish();
            let content = finish_hash(content.hash, content.bytes);
            Ok(Scanned { stored: drain(stored_reader)?, content, trailing })
        }
        Compression::Gzip => {
            let decoder = flate2::bufread::MultiGzDecoder::new(stored);
            let mut content = HashReader::new(decoder);
            let trailing = each_line(&mut BufReader::with_capacity(IO_BUF, &mut content), line)?;
            let stored_reader = content.inner.into_inner();
            let content = finish_hash(content.hash, content.bytes);
            Ok(Scanned { stored: drain(stored_reader)?, content, trailing })
        }
    }
}

/// Reads the rest of a stored file (bytes a decoder left in its buffer or never asked for) into
/// its digest.
fn drain<R: Read>(mut rest: BufReader<HashReader<R>>) -> io::Result<Digested> {
    io::copy(&mut rest, &mut io::sink())?;
    rest.into_inner().finish()
}

/// Calls `line` with each complete line of `r`; returns the length of a final unterminated one.
fn each_line(r: &mut impl BufRead, line: &mut dyn FnMut(&[u8])) -> io::Result<u64> {
    let mut buf = Vec::new();
    loop {
        buf.clear();
        let n = r.read_until(b'\n', &mut buf)?;
        if n == 0 {
            return Ok(0);
        }
        if buf.last() != Some(&b'\n') {
            return Ok(n as u64);
        }
        line(&buf[..n - 1]);
    }
}

/// A reader of a stored file's content, for start-up recovery (which reads lines after a
/// commit point) and tests.
pub(super) fn decoder<'a>(file: File, c: Compression) -> io::Result<Box<dyn BufRead + Send + 'a>> {
    let file = BufReader::with_capacity(IO_BUF, file);
    Ok(match c {
        Compression::None => Box::new(file),
        Compression::Zstd => {
            Box::new(BufReader::with_capacity(IO_BUF, zstd::stream::read::Decoder::with_buffer(file)?))
        }
        Compression::Gzip => Box::new(BufReader::with_capacity(IO_BUF, flate2::bufread::MultiGzDecoder::new(file))),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn compress(c: Compression, data: &[u8]) -> Vec<u8> {
        let mut e = Encoder::new(c, Vec::new()).unwrap().unwrap();
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    fn file_with(bytes: &[u8]) -> (tempfile::TempDir, File) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, bytes).unwrap();
        (dir, File::open(&path).unwrap())
    }

    fn scan_bytes(c: Compression, bytes: &[u8]) -> (io::Result<Scanned>, Vec<String>) {
        let (_d, f) = file_with(bytes);
        let mut lines = Vec::new();
        let r = scan(f, c, &mut |l| lines.push(String::from_utf8(l.to_vec()).unwrap()));
        (r, lines)
    }

    const DATA: &[u8] = b"{\"a\":1}\n{\"b\":2}\n{\"c\":3}\n";

    #[test]
    fn every_codec_round_trips_and_hashes_stored_and_content() {
        let content = scan_bytes(Compression::None, DATA).0.unwrap().content;
        assert_eq!(content.bytes, DATA.len() as u64);
        // sha256 of DATA, from coreutils' sha256sum.
        assert_eq!(content.sha256, "ef1c3cd9cd7c0cf0b0b7b745afbc853d1c7eebe134f3ab5b89650ff06c431e37");
        for c in Compression::ALL {
            let stored = if c == Compression::None { DATA.to_vec() } else { compress(c, DATA) };
            let (r, lines) = scan_bytes(c, &stored);
            let s = r.unwrap();
            assert_eq!(lines, ["{\"a\":1}", "{\"b\":2}", "{\"c\":3}"], "{c:?}");
            assert_eq!(s.content, content, "{c:?}");
            assert_eq!(s.stored.bytes, stored.len() as u64, "{c:?}");
            assert_eq!(s.trailing, 0);
            let mut back = String::new();
            decoder(file_with(&stored).1, c).unwrap().read_to_string(&mut back).unwrap();
            assert_eq!(back.as_bytes(), DATA);
        }
    }

    #[test]
    fn a_truncated_stream_is_an_error_after_the_lines_before_it() {
        let big: Vec<u8> = (0..5000).flat_map(|i| format!("{{\"i\":{i}}}\n").into_bytes()).collect();
        for c in [Compression::Zstd, Compression::Gzip] {
            let stored = compress(c, &big);
            // Cut into the end of the stream (gzip's CRC and size trailer, zstd's checksum): every line
            // may have come out, but the file must not read as complete.
            let (r, _) = scan_bytes(c, &stored[..stored.len() - 10]);
            assert!(r.is_err(), "{c:?}: a cut stream must not read as complete");
            let (r, lines) = scan_bytes(c, &stored[..stored.len() / 2]);
            assert!(r.is_err(), "{c:?}: a cut stream must not read as complete");
            assert!(lines.len() < 5000, "{c:?}");
            let (r, _) = scan_bytes(c, b"not compressed at all\n");
            assert!(r.is_err(), "{c:?}: garbage must not decode");
        }
    }

    #[test]
    fn a_torn_last_line_is_reported_not_returned() {
        let (r, lines) = scan_bytes(Compression::None, b"{}\n{\"x");
        assert_eq!(lines, ["{}"]);
        assert_eq!(r.unwrap().trailing, 3);
    }

    #[test]
    fn names_and_suffixes() {
        let names: Vec<_> = Compression::ALL.iter().map(|c| (c.name(), c.suffix())).collect();
        assert_eq!(names, [("none", ""), ("zstd", ".zst"), ("gzip", ".gz")]);
    }
}
