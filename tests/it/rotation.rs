//! Rotation (SPEC section 4): closed segments are named `<stem>.<YYYYMMDDTHHMMSSZ>.<seq6>.jsonl` with
//! sequence numbers from 000001, stay under `rotate_max_bytes`, never change again, and no record is
//! lost, repeated or split across a boundary.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use dm_handoff_simulator::CursorStyle;

use crate::support::*;

fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).unwrap().as_secs()
}

/// `YYYYMMDDTHHMMSSZ` for a Unix time, via humantime's RFC 3339 rendering.
fn stamp(secs: u64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(secs)).to_string().replace(['-', ':'], "")
}

/// Checks the layout of an output folder and returns its closed segments by name.
fn check_layout(fx: &Fixture, max: u64, from: u64, to: u64) -> BTreeMap<String, Vec<u8>> {
    let files = handoff_files(&fx.out_dir());
    let closed: Vec<&HandoffFile> = files.iter().filter(|f| f.closed.is_some()).collect();
    let seqs: Vec<u64> = closed.iter().map(|f| f.closed.as_ref().unwrap().1).collect();
    assert_eq!(seqs, (1..=closed.len() as u64).collect::<Vec<_>>(), "closed segments are numbered 1, 2, 3, …");
    for f in &closed {
        let (st, seq) = f.closed.as_ref().unwrap();
        assert_eq!(f.name, format!("{STEM}.{st}.{seq:06}.jsonl"), "six-digit sequence");
        assert!(
            st.as_str() >= stamp(from).as_str() && st.as_str() <= stamp(to).as_str(),
            "{} is stamped outside the run ({}..{})",
            f.name,
            stamp(from),
            stamp(to)
        );
        assert!(
            !f.bytes.is_empty() && f.bytes.len() as u64 <= max,
            "{} has {} bytes (limit {max})",
            f.name,
            f.bytes.len()
        );
        assert_eq!(f.mode, 0o640, "mode of {}", f.name);
    }
    let active = files.iter().find(|f| f.closed.is_none()).expect("the active file exists");
    assert!(active.bytes.len() as u64 <= max, "the active file has {} bytes", active.bytes.len());
    // Every file ends in `\n` and every line parses: no record is split across two files.
    read_records(&fx.out_dir());
    closed.iter().map(|f| (f.name.clone(), f.bytes.clone())).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn size_rotation_makes_numbered_segments_that_never_change() {
    let cfg = sim_config(
        41,
        vec![
            conv("5100001", 300, CursorStyle::Offset),
            conv("5100002", 120, CursorStyle::MaxId),
            conv("5100003", 9, CursorStyle::Offset),
        ],
    );
    let fx = Fixture::new(cfg, "rotate_max_bytes = 4096").await;

    let t0 = unix_secs(SystemTime::now());
    fx.sync().await.expect_code(0);
    let t1 = unix_secs(SystemTime::now());
    let first = check_layout(&fx, 4096, t0, t1);
    assert!(first.len() >= 20, "429 records of ~450 bytes make many 4 KiB segments; got {}", first.len());
    fx.assert_exactly_once();

    for (peer, n) in fx.peers.iter().zip([50, 30, 4]) {
        fx.sim.sim.add_messages(peer, n);
    }
    fx.sync().await.expect_code(0);
    let t2 = unix_secs(SystemTime::now());
    let second = check_layout(&fx, 4096, t0, t2);
    assert!(second.len() > first.len(), "the second sync rotated further");
    for (name, bytes) in &first {
        assert!(second.get(name) == Some(bytes), "closed segment {name} changed or disappeared");
    }
    fx.assert_exactly_once();

    // A run with nothing to write closes nothing and changes nothing.
    fx.sync().await.expect_code(0);
    let third = check_layout(&fx, 4096, t0, unix_secs(SystemTime::now()));
    assert_eq!(third, second);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn age_rotation_closes_the_active_file_once_it_is_old_enough() {
    let cfg = sim_config(43, vec![conv("5200001", 40, CursorStyle::Offset)]);
    let fx = Fixture::new(cfg, "rotate_max_age = \"1s\"").await;
    fx.sync().await.expect_code(0);
    let first = std::fs::read(fx.active_path()).unwrap();
    assert_eq!(line_count(&first), 40);
    assert!(handoff_files(&fx.out_dir()).iter().all(|f| f.closed.is_none()), "nothing is old enough to close yet");

    // The active file's first line is now older than rotate_max_age: the next write closes it first.
    tokio::time::sleep(Duration::from_millis(1300)).await;
    let added = fx.sim.sim.add_messages(&fx.peers[0], 2);
    fx.sync().await.expect_code(0);
    let files = handoff_files(&fx.out_dir());
    assert_eq!(
        files.len(),
        2,
        "one closed segment and the active file: {:?}",
        files.iter().map(|f| &f.name).collect::<Vec<_>>()
    );
    assert_eq!(files[0].closed.as_ref().map(|c| c.1), Some(1));
    assert_eq!(files[0].bytes, first, "the closed segment is the old active file, unchanged");
    let active = read_records(&fx.out_dir()).split_off(40);
    let mut ids: Vec<&str> = active.iter().filter_map(|r| str_field(r, "message_id")).collect();
    ids.sort_unstable();
    let mut want: Vec<&str> = added.iter().map(String::as_str).collect();
    want.sort_unstable();
    assert_eq!(ids, want, "the new active file holds the new messages");
    fx.assert_exactly_once();
}
