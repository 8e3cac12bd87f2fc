//! Tests of the `Sink` against real files in temporary directories: layout and modes,
//! rotation over many appends, recovery after crashes, and the error paths (through the
//! test-only fault hooks).

use super::*;
use std::os::unix::fs::PermissionsExt;
use std::time::UNIX_EPOCH;

const NAME: &str = "xquik-dm-handoff.jsonl";
const STEM: &str = "xquik-dm-handoff";
const T0: u64 = 1_700_000_000;

fn at(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(secs)
}

fn config(dir: &Path, max_bytes: u64) -> SinkConfig {
    SinkConfig {
        dir: dir.to_path_buf(),
        file_name: NAME.to_owned(),
        rotate_max_bytes: max_bytes,
        rotate_max_age: None,
        compress: Compression::None,
    }
}

/// A JSON object of `20 + pad` bytes (plus `\n` on disk), numbered so order is visible.
fn line(i: usize, pad: usize) -> String {
    format!(r#"{{"i":"{i:05}","p":"{}"}}"#, "x".repeat(pad))
}

/// `n` lines of 30 bytes on disk each, numbered from `first`.
fn lines(first: usize, n: usize) -> Vec<String> {
    (first..first + n).map(|i| line(i, 9)).collect()
}

/// Closed segments on disk as (seq, path, bytes), oldest first.
fn closed(dir: &Path) -> Vec<(u64, PathBuf, Vec<u8>)> {
    recovery::list_closed(dir, STEM)
        .unwrap()
        .into_iter()
        .map(|s| {
            let bytes = fs::read(&s.path).unwrap();
            (s.seq, s.path, bytes)
        })
        .collect()
}

fn split(bytes: &[u8]) -> Vec<String> {
    let text = std::str::from_utf8(bytes).unwrap();
    assert!(text.is_empty() || text.ends_with('\n'), "unterminated: {text:?}");
    text.lines().map(str::to_owned).collect()
}

/// Every line on disk: closed segments in seq order, then the active file.
fn lines_on_disk(dir: &Path) -> Vec<String> {
    let mut all: Vec<String> = closed(dir).iter().flat_map(|(_, _, b)| split(b)).collect();
    all.extend(split(&fs::read(dir.join(NAME)).unwrap()));
    all
}

fn mode(path: &Path) -> u32 {
    fs::metadata(path).unwrap().permissions().mode() & 0o777
}

/// A position without the active file's inode, which differs from run to run.
fn bare(p: CommitPoint) -> CommitPoint {
    CommitPoint { active_ino: None, ..p }
}

fn open(cfg: &SinkConfig, committed: CommitPoint) -> (Sink, Recovered) {
    Sink::open(cfg.clone(), committed).unwrap()
}

#[test]
fn open_creates_dir_0750_and_empty_active_file_0640() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("a/b/out");
    let cfg = config(&out, 1000);
    let (sink, recovered) = open(&cfg, CommitPoint::default());
    assert_eq!(recovered, Recovered::default());
    assert_eq!(mode(&out), 0o750);
    assert_eq!(sink.active_path(), out.join(NAME));
    assert_eq!(mode(&sink.active_path()), 0o640);
    assert_eq!(fs::metadata(sink.active_path()).unwrap().len(), 0);
    assert_eq!(bare(sink.position()), CommitPoint { seq: 1, offset: 0, active_since_ms: None, active_ino: None });
    sink.close().unwrap();
}

#[test]
fn existing_dir_keeps_its_mode() {
    let tmp = tempfile::tempdir().unwrap();
    fs::set_permissions(tmp.path(), Permissions::from_mode(0o700)).unwrap();
    let _ = open(&config(tmp.path(), 1000), CommitPoint::default());
    assert_eq!(mode(tmp.path()), 0o700);
}

#[test]
fn bad_file_names_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    for name in ["", ".jsonl", "a/b.jsonl", "..", "a\0.jsonl"] {
        let cfg = SinkConfig { file_name: name.to_owned(), ..config(tmp.path(), 1000) };
        let err = Sink::open(cfg, CommitPoint::default()).unwrap_err();
        assert!(matches!(err, SinkError::Io { .. }), "{name:?}: {err}");
    }
}

#[test]
fn io_error_names_operation_path_and_os_error() {
    let err =
        SinkError::Io { op: "writing", path: PathBuf::from("/x/y.jsonl"), source: io::Error::from_raw_os_error(28) };
    assert_eq!(err.to_string(), "writing /x/y.jsonl: No space left on device (os error 28)");
}

#[test]
fn invalid_lines_are_refused_before_anything_is_written() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut sink, _) = open(&config(tmp.path(), 1000), CommitPoint::default());
    for (bad, index) in [(vec!["{}".to_owned(), "{\n}".to_owned()], 1), (vec![String::new()], 0)] {
        let err = sink.append(&bad, at(T0)).unwrap_err();
        assert!(matches!(err, SinkError::InvalidLine { index: i } if i == index), "{err}");
    }
    assert_eq!(fs::metadata(sink.active_path()).unwrap().len(), 0);
    assert_eq!(bare(sink.position()), CommitPoint { seq: 1, ..CommitPoint::default() });
    // An empty append is no error and writes nothing.
    assert_eq!(sink.append(&[], at(T0)).unwrap(), sink.position());
    // The sink is still usable.
    sink.append(&lines(0, 1), at(T0)).unwrap();
}

#[test]
fn appends_return_position_after_last_byte() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut sink, _) = open(&config(tmp.path(), 1000), CommitPoint::default());
    let p = sink.append(&lines(0, 2), at(T0)).unwrap();
    assert_eq!(bare(p), CommitPoint { seq: 1, offset: 60, active_since_ms: Some(T0 * 1000), active_ino: None });
    // The first line of a generation sets its age; later ones do not.
    let p = sink.append(&lines(2, 1), at(T0 + 5)).unwrap();
    assert_eq!((p.offset, p.active_since_ms), (90, Some(T0 * 1000)));
    assert_eq!(lines_on_disk(tmp.path()), lines(0, 3));
}

/// Deterministic pseudo-random numbers (xorshift), so a failure replays.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

#[test]
fn many_appends_rotate_into_immutable_segments_within_the_limit() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let limit = 200;
    let cfg = config(&out, limit);
    let (mut sink, _) = open(&cfg, CommitPoint::default());
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut expected = Vec::new();
    let mut frozen: Vec<(PathBuf, Vec<u8>)> = Vec::new();

    for round in 0..400 {
        let n = 1 + rng.below(5) as usize;
        let batch: Vec<String> = (0..n)
            .map(|k| {
                // Now and then a line bigger than the limit, which must go alone.
                let pad = if rng.below(40) == 0 { 250 } else { rng.below(70) };
                line(expected.len() + k, pad as usize)
            })
            .collect();
        let point = sink.append(&batch, at(T0 + round)).unwrap();
        assert_eq!(point, sink.position());
        expected.extend(batch);

        // Every segment closed so far is still there and byte-identical.
        let now = closed(&out);
        for (i, (path, bytes)) in frozen.iter().enumerate() {
            assert_eq!((&now[i].1, &now[i].2), (path, bytes), "segment changed");
        }
        frozen.extend(now[frozen.len()..].iter().map(|(_, p, b)| (p.clone(), b.clone())));
    }

    let segments = closed(&out);
    assert!(segments.len() > 20, "only {} rotations", segments.len());
    for (k, (seq, path, bytes)) in segments.iter().enumerate() {
        assert_eq!(*seq, k as u64 + 1, "generations are contiguous");
        let n = split(bytes).len();
        assert!(n > 0, "empty segment {}", path.display());
        assert!(bytes.len() as u64 <= limit || n == 1, "{} has {} bytes in {n} lines", path.display(), bytes.len());
        assert_eq!(mode(path), 0o640);
    }
    assert_eq!(sink.position().seq, segments.len() as u64 + 1);
    let active = fs::read(sink.active_path()).unwrap();
    assert_eq!(active.len() as u64, sink.position().offset);
    assert_eq!(mode(&sink.active_path()), 0o640);
    assert_eq!(lines_on_disk(&out), expected);

    // Nothing else was ever created in the directory.
    let names = fs::read_dir(&out).unwrap().count();
    assert_eq!(names, segments.len() + 1);

    // And a reopen from the last position has nothing to hand back.
    let point = sink.position();
    sink.close().unwrap();
    let (sink, recovered) = open(&cfg, point);
    assert_eq!(recovered, Recovered::default());
    assert_eq!(sink.position(), point);
}

#[test]
fn line_exactly_at_the_limit_fits_and_one_byte_more_rotates() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut sink, _) = open(&config(tmp.path(), 60), CommitPoint::default());
    sink.append(&lines(0, 1), at(T0)).unwrap();
    let p = sink.append(&lines(1, 1), at(T0)).unwrap();
    assert_eq!((p.seq, p.offset), (1, 60));
    let p = sink.append(&[line(2, 0)], at(T0)).unwrap();
    assert_eq!((p.seq, p.offset), (2, 21));
    let segments = closed(tmp.path());
    assert_eq!(segments.len(), 1);
    assert_eq!(segments[0].2.len(), 60);
}

#[test]
fn oversize_line_goes_alone_into_an_empty_active_file() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut sink, _) = open(&config(tmp.path(), 50), CommitPoint::default());
    let big = line(1, 100);
    let p = sink.append(&[line(0, 0), big.clone(), line(2, 0)], at(T0)).unwrap();
    assert_eq!((p.seq, p.offset), (3, 21));
    let segments = closed(tmp.path());
    assert_eq!(split(&segments[1].2), [big]);
}

#[test]
fn closed_segment_is_named_by_stem_closing_time_and_seq() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = SinkConfig { rotate_max_age: Some(Duration::from_secs(60)), ..config(tmp.path(), 1000) };
    let (mut sink, _) = open(&cfg, CommitPoint::default());
    // Nothing to close while the active file is empty, however old the limit says.
    assert_eq!(sink.rotate_if_due(at(T0 + 10_000)).unwrap(), None);
    sink.append(&lines(0, 1), at(T0)).unwrap();
    assert_eq!(sink.rotate_if_due(at(T0 + 59)).unwrap(), None);
    let p = sink.rotate_if_due(at(T0 + 60)).unwrap();
    assert_eq!(p.map(bare), Some(CommitPoint { seq: 2, offset: 0, active_since_ms: None, active_ino: None }));
    // 1700000060 = 2023-11-14T22:14:20Z
    let expected = tmp.path().join(format!("{STEM}.20231114T221420Z.000001.jsonl"));
    assert_eq!(fs::read(&expected).unwrap().len(), 30);
    assert_eq!(mode(&expected), 0o640);
    assert_eq!(mode(&sink.active_path()), 0o640);
}

#[test]
fn append_rotates_first_when_the_age_limit_is_reached() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = SinkConfig { rotate_max_age: Some(Duration::from_secs(10)), ..config(tmp.path(), 1000) };
    let (mut sink, _) = open(&cfg, CommitPoint::default());
    sink.append(&lines(0, 1), at(T0)).unwrap();
    let p = sink.append(&lines(1, 1), at(T0 + 9)).unwrap();
    assert_eq!(p.seq, 1);
    let p = sink.append(&lines(2, 2), at(T0 + 10)).unwrap();
    assert_eq!(bare(p), CommitPoint { seq: 2, offset: 60, active_since_ms: Some((T0 + 10) * 1000), active_ino: None });
    assert_eq!(split(&closed(tmp.path())[0].2), lines(0, 2));
}

#[test]
fn active_since_survives_a_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = SinkConfig { rotate_max_age: Some(Duration::from_secs(3600)), ..config(tmp.path(), 1000) };
    let (mut sink, _) = open(&cfg, CommitPoint::default());
    let point = sink.append(&lines(0, 1), at(T0)).unwrap();
    drop(sink);

    let (mut sink, recovered) = open(&cfg, point);
    assert!(recovered.lines.is_empty());
    assert_eq!(sink.position(), point);
    assert_eq!(sink.rotate_if_due(at(T0 + 3599)).unwrap(), None);
    let p = sink.rotate_if_due(at(T0 + 3600)).unwrap().unwrap();
    assert_eq!((p.seq, p.offset), (2, 0));
}

#[test]
fn uncommitted_active_file_ages_from_its_last_write() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = config(tmp.path(), 1000);
    let (mut sink, _) = open(&cfg, CommitPoint::default());
    sink.append(&lines(0, 1), at(T0)).unwrap();
    drop(sink);
    // Crash before the caller committed anything.
    let (sink, recovered) = open(&cfg, CommitPoint::default());
    assert_eq!(recovered.lines, lines(0, 1));
    let since = sink.position().active_since_ms.unwrap();
    let now = rotation::unix_ms(SystemTime::now());
    assert!(since <= now && now - since < 60_000, "since={since} now={now}");
}

#[test]
fn torn_last_line_is_cut_and_reported() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = config(tmp.path(), 1000);
    let (mut sink, _) = open(&cfg, CommitPoint::default());
    let committed = sink.append(&lines(0, 2), at(T0)).unwrap();
    let active = sink.active_path();
    drop(sink);
    // Power loss mid-append: one complete but uncommitted line and half of another.
    let mut f = OpenOptions::new().append(true).open(&active).unwrap();
    f.write_all(format!("{}\n{{\"i\":\"000", line(2, 9)).as_bytes()).unwrap();
    drop(f);

    let (mut sink, recovered) = open(&cfg, committed);
    assert_eq!(recovered, Recovered { lines: lines(2, 1), torn_bytes_cut: 9, segments_closed_since_commit: 0 });
    assert_eq!(fs::read(&active).unwrap().len(), 90);
    assert_eq!(sink.position().offset, 90);
    sink.append(&lines(3, 1), at(T0)).unwrap();
    assert_eq!(lines_on_disk(tmp.path()), lines(0, 4));
}

#[test]
fn torn_only_line_is_cut_to_zero() {
    let tmp = tempfile::tempdir().unwrap();
    fs::write(tmp.path().join(NAME), b"{\"half\":").unwrap();
    let (sink, recovered) = open(&config(tmp.path(), 1000), CommitPoint::default());
    assert_eq!(recovered.torn_bytes_cut, 8);
    assert!(recovered.lines.is_empty());
    assert_eq!(sink.position().offset, 0);
    assert_eq!(sink.position().active_since_ms, None);
}

/// Generation 1 full, commit in generation 2, then two rotations and a crash.
#[test]
fn lines_after_the_commit_point_come_back_across_rotations() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = config(tmp.path(), 90); // three 30-byte lines per segment
    let (mut sink, _) = open(&cfg, CommitPoint::default());
    sink.append(&lines(0, 3), at(T0)).unwrap();
    let committed = sink.append(&lines(3, 2), at(T0 + 1)).unwrap();
    assert_eq!((committed.seq, committed.offset), (2, 60));
    sink.append(&lines(5, 1), at(T0 + 2)).unwrap();
    sink.append(&lines(6, 3), at(T0 + 3)).unwrap();
    let last = sink.append(&lines(9, 2), at(T0 + 4)).unwrap();
    assert_eq!((last.seq, last.offset), (4, 60));
    drop(sink); // crash: the caller never committed past `committed`

    let (sink, recovered) = open(&cfg, committed);
    assert_eq!(recovered.lines, lines(5, 6));
    assert_eq!(recovered.segments_closed_since_commit, 2);
    assert_eq!(recovered.torn_bytes_cut, 0);
    // The commit point knew nothing of generation 4, so its age comes from the file.
    let p = sink.position();
    assert_eq!((p.seq, p.offset), (last.seq, last.offset));
    drop(sink);

    // Nothing committed: everything comes back.
    let (sink, recovered) = open(&cfg, CommitPoint::default());
    assert_eq!(recovered.lines, lines(0, 11));
    assert_eq!(recovered.segments_closed_since_commit, 3);
    drop(sink);

    // Up to date: nothing.
    let (_sink, recovered) = open(&cfg, last);
    assert_eq!(recovered, Recovered::default());
}

#[test]
fn commit_at_a_rotation_point_skips_the_closed_generation() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = SinkConfig { rotate_max_age: Some(Duration::ZERO), ..config(tmp.path(), 1000) };
    let (mut sink, _) = open(&cfg, CommitPoint::default());
    sink.append(&lines(0, 2), at(T0)).unwrap();
    let committed = sink.rotate_if_due(at(T0)).unwrap().unwrap();
    drop(sink);
    let (sink, recovered) = open(&cfg, committed);
    assert_eq!(recovered, Recovered::default());
    assert_eq!(sink.position(), committed);
}

#[test]
fn active_file_shorter_than_the_commit_point_is_returned_whole() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = config(tmp.path(), 1000);
    let (mut sink, _) = open(&cfg, CommitPoint::default());
    let committed = sink.append(&lines(0, 3), at(T0)).unwrap();
    let active = sink.active_path();
    drop(sink);
    fs::write(&active, format!("{}\n", line(7, 0))).unwrap();

    let (sink, recovered) = open(&cfg, committed);
    assert_eq!(recovered.lines, [line(7, 0)]);
    assert_eq!(sink.position().offset, 21);
}

#[test]
fn closed_segments_moved_away_do_not_rewind_the_generation() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = config(tmp.path(), 60);
    let (mut sink, _) = open(&cfg, CommitPoint::default());
    let committed = sink.append(&lines(0, 5), at(T0)).unwrap();
    assert_eq!((committed.seq, committed.offset), (3, 30));
    drop(sink);
    for (_, path, _) in closed(tmp.path()) {
        fs::remove_file(path).unwrap(); // a loader archived them
    }
    let (mut sink, recovered) = open(&cfg, committed);
    assert_eq!(recovered, Recovered::default());
    assert_eq!(sink.position(), committed);
    sink.append(&lines(5, 2), at(T0)).unwrap();
    let seqs: Vec<u64> = closed(tmp.path()).iter().map(|s| s.0).collect();
    assert_eq!(seqs, [3]);
}

#[test]
fn second_sink_on_the_same_file_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = config(tmp.path(), 1000);
    let (first, _) = open(&cfg, CommitPoint::default());
    let err = Sink::open(cfg.clone(), CommitPoint::default()).unwrap_err();
    assert!(matches!(&err, SinkError::Locked { holder: None, .. }), "{err}");
    assert!(err.to_string().contains("is being written by another process"), "{err}");
    drop(first);
    let _ = open(&cfg, CommitPoint::default());
}

#[test]
fn failed_write_is_cut_back_and_the_sink_carries_on() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = config(tmp.path(), 1000);
    let (mut sink, _) = open(&cfg, CommitPoint::default());
    let before = sink.append(&lines(0, 2), at(T0)).unwrap();

    // 37 bytes: one whole line and part of the next reach the file before ENOSPC.
    sink.faults.fail_write_after = Some(37);
    let err = sink.append(&lines(2, 3), at(T0)).unwrap_err();
    let want = format!("writing {}: No space left on device (os error 28)", sink.active_path().display());
    assert_eq!(err.to_string(), want);
    assert_eq!(fs::metadata(sink.active_path()).unwrap().len(), before.offset);
    assert_eq!(sink.position(), before);

    sink.faults.fail_sync = true;
    let err = sink.append(&lines(2, 3), at(T0)).unwrap_err();
    assert!(matches!(err, SinkError::Io { op: "syncing", .. }), "{err}");
    assert_eq!(fs::metadata(sink.active_path()).unwrap().len(), before.offset);
    assert_eq!(sink.position(), before);

    let after = sink.append(&lines(2, 3), at(T0)).unwrap();
    assert_eq!(after.offset, 150);
    assert_eq!(lines_on_disk(tmp.path()), lines(0, 5));
    drop(sink);
    let (_sink, recovered) = open(&cfg, after);
    assert_eq!(recovered, Recovered::default());
}

#[test]
fn failed_write_after_a_rotation_leaves_an_empty_new_generation() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = config(tmp.path(), 60);
    let (mut sink, _) = open(&cfg, CommitPoint::default());
    let committed = sink.append(&lines(0, 2), at(T0)).unwrap();

    sink.faults.fail_write_after = Some(3);
    sink.append(&lines(2, 1), at(T0)).unwrap_err();
    // The rotation closed only committed lines, so the sink is not poisoned.
    let p = sink.position();
    assert_eq!((p.seq, p.offset, p.active_since_ms), (2, 0, None));
    assert_eq!(fs::metadata(sink.active_path()).unwrap().len(), 0);
    assert_eq!(split(&closed(tmp.path())[0].2), lines(0, 2));

    sink.append(&lines(2, 1), at(T0)).unwrap();
    drop(sink);
    let (_sink, recovered) = open(&cfg, committed);
    assert_eq!(recovered.lines, lines(2, 1));
}

#[test]
fn failure_after_lines_went_into_a_closed_segment_poisons() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = config(tmp.path(), 90);
    let (mut sink, _) = open(&cfg, CommitPoint::default());
    let committed = sink.append(&lines(0, 1), at(T0)).unwrap();

    // Lines 1-2 fill generation 1, which is then closed; the write of 3-4 into
    // generation 2 fails.
    sink.faults.skip_writes = 1;
    sink.faults.fail_write_after = Some(5);
    let err = sink.append(&lines(1, 4), at(T0)).unwrap_err();
    assert!(matches!(err, SinkError::Io { op: "writing", .. }), "{err}");

    let poisoned = |r: Result<(), SinkError>| match r {
        Err(SinkError::Poisoned { cause, .. }) => assert!(cause.contains("No space")),
        other => panic!("not poisoned: {other:?}"),
    };
    poisoned(sink.append(&lines(9, 1), at(T0)).map(drop));
    poisoned(sink.rotate_if_due(at(T0)).map(drop));
    poisoned(sink.close());

    let (sink, recovered) = open(&cfg, committed);
    assert_eq!(recovered.lines, lines(1, 2));
    assert_eq!(recovered.segments_closed_since_commit, 1);
    assert_eq!(recovered.torn_bytes_cut, 0);
    assert_eq!((sink.position().seq, sink.position().offset), (2, 0));
}

#[test]
fn failed_repair_poisons_and_reopen_cuts_the_partial_line() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = config(tmp.path(), 1000);
    let (mut sink, _) = open(&cfg, CommitPoint::default());
    let committed = sink.append(&lines(0, 1), at(T0)).unwrap();

    sink.faults.fail_write_after = Some(5);
    sink.faults.fail_truncate = true;
    let err = sink.append(&lines(1, 1), at(T0)).unwrap_err();
    assert!(matches!(err, SinkError::Io { op: "writing", .. }), "{err}");
    let err = sink.append(&lines(1, 1), at(T0)).unwrap_err();
    assert!(matches!(&err, SinkError::Poisoned { .. }), "{err}");
    assert!(err.to_string().contains("cutting back a failed write"), "{err}");
    drop(sink);

    let (sink, recovered) = open(&cfg, committed);
    assert_eq!(recovered, Recovered { torn_bytes_cut: 5, ..Recovered::default() });
    assert_eq!(sink.position(), committed);
}

#[test]
fn an_active_file_deleted_between_appends_is_made_again_and_the_append_goes_there() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut sink, _) = open(&config(tmp.path(), 10_000), CommitPoint::default());
    let before = sink.append(&lines(0, 2), at(T0)).unwrap();
    fs::remove_file(sink.active_path()).unwrap();
    let p = sink.append(&lines(2, 2), at(T0 + 1)).unwrap();
    assert_eq!((p.seq, p.offset), (1, 60), "a new file, from its start");
    assert_ne!(p.active_ino, before.active_ino);
    assert_eq!(lines_on_disk(tmp.path()), lines(2, 2));
    assert_eq!(mode(&sink.active_path()), 0o640);
}

#[test]
fn lines_written_to_a_file_deleted_before_the_commit_are_written_again() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut sink, _) = open(&config(tmp.path(), 10_000), CommitPoint::default());
    sink.append(&lines(0, 1), at(T0)).unwrap();
    sink.faults.after_write = Some(|path| fs::remove_file(path).unwrap());
    let p = sink.append(&lines(1, 3), at(T0 + 1)).unwrap();
    // The three lines went to the old inode, which nobody can read any more; they are in the new file.
    assert_eq!(lines_on_disk(tmp.path()), lines(1, 3));
    assert_eq!((p.seq, p.offset), (1, 90));
    assert!(sink.poisoned.is_none());
}

#[test]
fn a_replaced_active_file_is_appended_to_from_its_end() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut sink, _) = open(&config(tmp.path(), 10_000), CommitPoint::default());
    sink.append(&lines(0, 2), at(T0)).unwrap();
    sink.faults.after_write = Some(|path| {
        // An editor's save: a new file (with a torn last line) renamed over the old one.
        let tmp = path.with_extension("swp");
        fs::write(&tmp, format!("{}\n{{\"torn", line(0, 0))).unwrap();
        fs::rename(&tmp, path).unwrap();
    });
    let p = sink.append(&lines(2, 1), at(T0 + 1)).unwrap();
    let mut want = vec![line(0, 0)];
    want.extend(lines(2, 1));
    assert_eq!(lines_on_disk(tmp.path()), want, "the torn tail cut, the uncommitted line written again");
    assert_eq!(p.offset, fs::metadata(sink.active_path()).unwrap().len());
}

#[test]
fn a_restart_reads_all_of_an_active_file_that_is_not_the_committed_one() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = config(tmp.path(), 10_000);
    let (mut sink, _) = open(&cfg, CommitPoint::default());
    let committed = sink.append(&lines(0, 2), at(T0)).unwrap();
    sink.close().unwrap();
    // Replaced while stopped by a longer file: the committed offset counts bytes of another file.
    let path = tmp.path().join(NAME);
    fs::remove_file(&path).unwrap();
    let keep = fs::File::create(tmp.path().join("keep")).unwrap(); // so the inode is not reused at once
    fs::write(&path, lines(5, 3).iter().map(|l| format!("{l}\n")).collect::<String>()).unwrap();
    let (_sink, recovered) = open(&cfg, committed);
    assert_eq!(recovered.lines, lines(5, 3));
    drop(keep);
}

/// A wall clock set forward when the first line came, then corrected: the wall-clock age stays 0 until the
/// clock catches up (a year here), so `rotate_max_age` never fired. The monotonic age still counts.
#[test]
fn age_rotation_survives_a_clock_set_forward_and_corrected() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = SinkConfig { rotate_max_age: Some(Duration::from_secs(3600)), ..config(tmp.path(), 1_000_000) };
    let (mut sink, _) = open(&cfg, CommitPoint::default());
    let year = 365 * 86_400;
    sink.append(&lines(0, 1), at(T0 + year)).unwrap();
    // Corrected: ten minutes of real time later.
    crate::time::advance_monotonic(Duration::from_secs(600));
    assert_eq!(sink.rotate_if_due(at(T0 + 600)).unwrap(), None);
    crate::time::advance_monotonic(Duration::from_secs(3000));
    let p = sink.rotate_if_due(at(T0 + 3600)).unwrap().expect("an hour old on the monotonic clock: rotated");
    assert_eq!(p.seq, 2);
    assert_eq!(closed(tmp.path()).len(), 1);
    // A line appended once the file is an hour old rotates first, by the same rule.
    sink.append(&lines(1, 1), at(T0 + 3600)).unwrap();
    crate::time::advance_monotonic(Duration::from_secs(3600));
    assert_eq!(sink.append(&lines(2, 1), at(T0 + 3600)).unwrap().seq, 3);
}

/// A stored age origin in the future (stamped by a clock set forward, corrected while stopped) counts
/// from start-up instead: rotation comes at most one `rotate_max_age` late, not when the clock catches up.
#[test]
fn a_future_age_origin_found_at_start_up_counts_from_then() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = SinkConfig { rotate_max_age: Some(Duration::from_secs(3600)), ..config(tmp.path(), 1_000_000) };
    let (mut sink, _) = open(&cfg, CommitPoint::default());
    let future = SystemTime::now() + Duration::from_secs(365 * 86_400);
    let committed = sink.append(&lines(0, 1), future).unwrap();
    drop(sink);
    let (mut sink, _) = open(&cfg, committed);
    let now = SystemTime::now();
    assert!(sink.position().active_since_ms.unwrap() <= rotation::unix_ms(now) + 1000, "clamped to now");
    assert_eq!(sink.rotate_if_due(now).unwrap(), None);
    crate::time::advance_monotonic(Duration::from_secs(3600));
    assert!(sink.rotate_if_due(now).unwrap().is_some(), "an hour after start-up");
}

/// A wall clock set back between two rotations must not name the newer segment so that it sorts before
/// the older one: names sort in generation order whatever the clock did, across a restart too.
#[test]
fn segment_names_sort_in_generation_order_when_the_clock_goes_back() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = config(tmp.path(), 60);
    let (mut sink, _) = open(&cfg, CommitPoint::default());
    sink.append(&lines(0, 3), at(T0)).unwrap();
    sink.append(&lines(3, 2), at(T0 - 86_400)).unwrap();
    let committed = sink.append(&lines(5, 2), at(T0 - 2 * 86_400)).unwrap();
    drop(sink);
    let (mut sink, _) = open(&cfg, committed);
    sink.append(&lines(7, 2), at(T0 - 3 * 86_400)).unwrap();
    let mut names: Vec<String> =
        closed(tmp.path()).iter().map(|(_, p, _)| p.file_name().unwrap().to_string_lossy().into_owned()).collect();
    assert_eq!(names.len(), 4, "{names:?}");
    let in_generation_order = names.clone();
    names.sort();
    assert_eq!(names, in_generation_order, "sorted by name = sorted by generation");
    let stamp = rotation::stamp_of(STEM, &names[3]).unwrap().to_string();
    assert_eq!(stamp, rotation::stamp_of(STEM, &names[0]).unwrap(), "held at the newest stamp so far");
    assert_eq!(lines_on_disk(tmp.path()), lines(0, 9));
}
