//! Manifests of closed segments (SPEC section 8.6): what a loader needs to know about a final
//! segment without reading it, and the line statistics both the writer and `verify` compute.
//!
//! A manifest exists only once its segment is final (compressed if the pipeline compresses),
//! so "a segment with a manifest is complete" holds for loaders. Writing one is atomic: a
//! hidden temporary file, fsync, rename, directory fsync.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions, Permissions};
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use super::rotation;

/// The layout version of manifests and records this build writes.
pub const SCHEMA_VERSION: u32 = 1;

/// `<segment base>.manifest.json`. Field order and names are SPEC 8.6's.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// The segment's file name as stored (with `.zst` / `.gz` when compressed).
    pub segment: String,
    /// Lines in the segment; each is one record.
    pub records: u64,
    /// Size of the segment file as stored.
    pub bytes: u64,
    /// Lowercase hex SHA-256 of the segment file as stored.
    pub sha256: String,
    /// Records per `kind`.
    pub kinds: BTreeMap<String, u64>,
    /// Earliest record time in the segment (see [`Stats::add_line`]); null when no record has one.
    pub first_created_at: Option<String>,
    /// Latest record time in the segment; null when no record has one.
    pub last_created_at: Option<String>,
    /// [`SCHEMA_VERSION`].
    pub schema_version: u32,
}

/// Counts of a segment's lines, accumulated one line at a time.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Lines seen.
    pub records: u64,
    /// Lines per `kind` (lines without a readable `kind` are counted in `records` only).
    pub kinds: BTreeMap<String, u64>,
    /// Earliest and latest record time, parsed (to compare) and as written (to report).
    first: Option<(SystemTime, String)>,
    last: Option<(SystemTime, String)>,
}

/// The fields a manifest needs from a line; everything else (the text above all) is skipped
/// without being copied.
#[derive(Deserialize)]
struct Peek<'a> {
    #[serde(borrow)]
    kind: Option<Cow<'a, str>>,
    #[serde(borrow)]
    created_at: Option<Cow<'a, str>>,
    #[serde(borrow)]
    sent_at: Option<Cow<'a, str>>,
    #[serde(borrow)]
    deleted_at: Option<Cow<'a, str>>,
}

impl Stats {
    /// Counts one line (without its `\n`).
    ///
    /// A record's time is its `created_at`; a kind without one uses the time it stands for:
    /// `sent_at` (`dm_send`), `deleted_at` (`dm_delete`). A record with none of them
    /// (`dm_unparsed`) does not move `first_created_at` / `last_created_at`.
    pub fn add_line(&mut self, line: &[u8]) {
        self.records += 1;
        if line.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
            return;
        }
        let Ok(peek) = serde_json::from_slice::<Peek<'_>>(line) else {
            return;
        };
        if let Some(kind) = peek.kind {
            match self.kinds.get_mut(kind.as_ref()) {
                Some(n) => *n += 1,
                None => {
                    self.kinds.insert(kind.into_owned(), 1);
                }
            }
        }
        let Some(at) = peek.created_at.or(peek.sent_at).or(peek.deleted_at) else {
            return;
        };
        let Ok(t) = humantime::parse_rfc3339_weak(&at) else {
            return;
        };
        if self.first.as_ref().is_none_or(|(f, _)| t < *f) {
            self.first = Some((t, at.to_string()));
        }
        if self.last.as_ref().is_none_or(|(l, _)| t > *l) {
            self.last = Some((t, at.into_owned()));
        }
    }

    /// The manifest of a segment named `segment` whose stored bytes are `bytes` long with `sha256`.
    pub fn manifest(self, segment: String, bytes: u64, sha256: String) -> Manifest {
        Manifest {
            segment,
            records: self.records,
            bytes,
            sha256,
            kinds: self.kinds,
            first_created_at: self.first.map(|(_, s)| s),
            last_created_at: self.last.map(|(_, s)| s),
            schema_version: SCHEMA_VERSION,
        }
    }
}

/// Writes `manifest` as `<base>.manifest.json` in `dir` atomically: a hidden temporary file
/// (mode 0640), fsync, rename, fsync of the directory.
pub(super) fn write(dir: &File, dir_path: &Path, base: &str, manifest: &Manifest) -> io::Result<()> {
    let name = rotation::manifest_name(base);
    let mut text = serde_json::to_vec_pretty(manifest).map_err(io::Error::other)?;
    text.push(b'\n');
    write_atomically(dir, dir_path, &name, &text)
}

/// Writes `bytes` to `dir_path/name` through a hidden temporary name, so readers see the old
/// state or the whole new file, never part of it, and a crash leaves at most the temporary.
fn write_atomically(dir: &File, dir_path: &Path, name: &str, bytes: &[u8]) -> io::Result<()> {
    let tmp = dir_path.join(rotation::temp_name(name));
    let result = (|| {
        let mut f = create_file(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        fs::rename(&tmp, dir_path.join(name))?;
        dir.sync_all()
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Creates (or truncates) a file with mode 0640 whatever the umask, like every file the sink makes.
pub(super) fn create_file(path: &Path) -> io::Result<File> {
    let f = OpenOptions::new().write(true).create(true).truncate(true).mode(super::FILE_MODE).open(path)?;
    f.set_permissions(Permissions::from_mode(super::FILE_MODE))?;
    Ok(f)
}

/// Reads a manifest; `None` (with the reason) when it is not one.
pub fn read(path: &Path) -> Result<Manifest, String> {
    let bytes = fs::read(path).map_err(|e| format!("cannot be read: {e}"))?;
    // serde's message can quote the bad value; the position is enough and never leaks content.
    serde_json::from_slice(&bytes).map_err(|e| format!("is not a manifest (line {} column {})", e.line(), e.column()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_kinds_and_the_time_span_of_every_kind() {
        let mut s = Stats::default();
        for line in [
            r#"{"kind":"dm_message","created_at":"2026-02-24T10:00:00.000Z","text":"a \"quoted\" text"}"#,
            r#"{"kind":"dm_send","sent_at":"2026-02-25T10:00:00.000Z"}"#,
            r#"{"kind":"dm_delete","deleted_at":"2026-02-23T10:00:00.000Z"}"#,
            r#"{"kind":"dm_unparsed","reason":"no id","raw":{"created_at":"1999-01-01T00:00:00Z"}}"#,
            r#"{"kind":"dm_message","created_at":"2026-02-24T09:00:00.000Z"}"#,
            r#"not json"#,
        ] {
            s.add_line(line.as_bytes());
        }
        let m = s.manifest("seg.jsonl".into(), 10, "ab".into());
        assert_eq!(m.records, 6);
        let kinds: Vec<(&str, u64)> = m.kinds.iter().map(|(k, n)| (k.as_str(), *n)).collect();
        assert_eq!(kinds, [("dm_delete", 1), ("dm_message", 2), ("dm_send", 1), ("dm_unparsed", 1)]);
        assert_eq!(m.first_created_at.as_deref(), Some("2026-02-23T10:00:00.000Z"));
        assert_eq!(m.last_created_at.as_deref(), Some("2026-02-25T10:00:00.000Z"));
        assert_eq!(m.schema_version, 1);
    }

    #[test]
    fn manifest_json_has_the_spec_fields_in_order_and_round_trips() {
        let m = Stats::default().manifest("s.20260101T000000Z.000001.jsonl.zst".into(), 3, "00".into());
        let text = serde_json::to_string(&m).unwrap();
        assert_eq!(
            text,
            r#"{"segment":"s.20260101T000000Z.000001.jsonl.zst","records":0,"bytes":3,"sha256":"00","kinds":{},"first_created_at":null,"last_created_at":null,"schema_version":1}"#
        );
        let dir = tempfile::tempdir().unwrap();
        let d = File::open(dir.path()).unwrap();
        write(&d, dir.path(), "s.20260101T000000Z.000001", &m).unwrap();
        let path = dir.path().join("s.20260101T000000Z.000001.manifest.json");
        assert_eq!(read(&path).unwrap(), m);
        let names: Vec<_> = fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names.len(), 1, "no temporary file left: {names:?}");
        assert_eq!(fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o640);
        fs::write(&path, b"{\"segment\": 7}").unwrap();
        assert!(read(&path).unwrap_err().contains("not a manifest"));
    }
}
