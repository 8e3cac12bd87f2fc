//! Unit tests of the store: commits, the folded seen set, the layout upgrade, the lock.

use super::keys::*;
use super::*;

fn opts() -> StoreOptions {
    StoreOptions { cache_bytes: 1 << 20, seen_window: 2 }
}

fn k(conv: &str, id: &str) -> Key {
    Key { kind: Kind::DmMessage, conversation: conv.into(), id: id.into() }
}

#[test]
fn commit_is_visible_after_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let s = Store::open(dir.path(), opts()).unwrap();
        let st = ConvState { hwm: Some("10".into()), messages_written: 3, ..ConvState::default() };
        s.commit(&Commit {
            seen: vec![("p".into(), k("a", "1")), ("p".into(), k("a", "2"))],
            pages: vec![SeenPage {
                pipeline: "p".into(),
                conversation: "b".into(),
                keys: vec![(Kind::DmMessage, "7".into()), (Kind::DmSend, "job-1".into())],
            }],
            conversations: vec![("p".into(), "a".into(), st)],
            sink_points: vec![(
                "p".into(),
                CommitPoint { seq: 2, offset: 99, active_since_ms: Some(5), active_ino: None },
            )],
            raw: vec![Store::user_entry("xquik", "Dana", "42").unwrap()],
            credits: vec![("p".into(), 5), ("p".into(), 7)],
            folds: vec![],
            freshness: vec![
                ("p".into(), Freshness { last_success_ms: Some(9), newest_created_at: Some(at("25")) }),
                ("p".into(), Freshness { last_success_ms: None, newest_created_at: Some(at("24")) }),
            ],
        })
        .unwrap();
        // A later commit moves the newest record only forward; its run time replaces the stored one, even
        // an earlier one (the clock was set forward for the run before, and corrected since).
        let later = Freshness { last_success_ms: Some(8), newest_created_at: Some(at("26")) };
        s.commit(&Commit { freshness: vec![("p".into(), later)], ..Commit::default() }).unwrap();
    }
    let s = Store::open(dir.path(), opts()).unwrap();
    assert!(s.is_seen("p", &k("a", "1")).unwrap());
    assert!(!s.is_seen("p", &k("a", "3")).unwrap());
    assert!(!s.is_seen("other", &k("a", "1")).unwrap(), "seen sets are per pipeline");
    assert!(s.is_seen("p", &k("b", "7")).unwrap(), "a page's keys are seen like single ones");
    assert!(s.is_seen("p", &Key { kind: Kind::DmSend, conversation: "b".into(), id: "job-1".into() }).unwrap());
    assert!(!s.is_seen("p", &k("a", "7")).unwrap() && !s.is_seen("p", &k("b", "1")).unwrap());
    assert_eq!(s.conversation("p", "a").unwrap().hwm.as_deref(), Some("10"));
    assert_eq!(s.conversation("p", "b").unwrap(), ConvState::default());
    assert_eq!(s.commit_point("p").unwrap().offset, 99);
    assert_eq!(s.resolved_user("xquik", "dana").unwrap().as_deref(), Some("42"));
    assert_eq!(s.credits_today("p").unwrap(), 12);
    assert_eq!(s.credits_today("q").unwrap(), 0);
    assert_eq!(s.conversations("p").unwrap().len(), 1);
    assert_eq!(s.count_seen("p", Some(Kind::DmMessage)).unwrap(), 3, "a1, a2 and b7");
    assert_eq!(s.count_seen("p", Some(Kind::DmSend)).unwrap(), 1);
    let fresh = s.freshness("p").unwrap();
    assert_eq!(fresh, Freshness { last_success_ms: Some(8), newest_created_at: Some(at("26")) });
    assert_eq!(s.freshness("q").unwrap(), Freshness::default());
}

/// A `created_at` on day `dd` of February 2026.
fn at(dd: &str) -> String {
    format!("2026-02-{dd}T10:00:00.000Z")
}

/// A snowflake-like ID `hours` hours after an arbitrary start, with some low bits set.
fn sf(hours: u64) -> String {
    (((1_000_000_000_000 + hours * 3_600_000) << 22) | 0x1234).to_string()
}

fn conv_state(covered_from: &str, hwm: &str) -> ConvState {
    ConvState {
        covered_from: Some(covered_from.into()),
        hwm: Some(hwm.into()),
        backfill_started: true,
        ..ConvState::default()
    }
}

/// Writes keys for `ids` in conversation `a` of pipeline `p` with the given state, then folds.
fn write_and_fold(s: &Store, ids: &[String], st: ConvState) -> u64 {
    s.commit(&Commit {
        seen: ids.iter().map(|i| ("p".to_string(), k("a", i))).collect(),
        conversations: vec![("p".into(), "a".into(), st)],
        ..Commit::default()
    })
    .unwrap();
    s.fold("p", "a").unwrap()
}

#[test]
fn fold_keeps_the_window_and_the_last_hour_exact_and_still_knows_every_id() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(dir.path(), opts()).unwrap();
    // Hourly messages 0..=10, and one more 10 minutes after message 10 (well within the last hour).
    let mut ids: Vec<String> = (0..=10).map(sf).collect();
    let late = (((1_000_000_000_000u64 + 10 * 3_600_000 + 600_000) << 22) | 7).to_string();
    ids.push(late.clone());
    let removed = write_and_fold(&s, &ids, conv_state(&sf(0), &late));
    // Window 2 keeps `late` and sf(10); the age rule keeps nothing more (sf(10) is 10 min older).
    assert_eq!(removed, 10);
    assert_eq!(s.count_seen("p", Some(Kind::DmMessage)).unwrap(), 2);
    let c = s.covered("p", "a").unwrap().unwrap();
    assert_eq!((c.lo.to_string(), c.hi.to_string()), (sf(0), sf(9)));
    for id in &ids {
        assert!(s.is_seen("p", &k("a", id)).unwrap(), "{id} must still be seen");
    }
    // An ID never written: inside the folded range it counts as seen (the range says it was fetched);
    // below it, and in the exact window, it does not.
    assert!(s.is_seen("p", &k("a", &(sf(5).parse::<u64>().unwrap() + 1).to_string())).unwrap());
    assert!(!s.is_seen("p", &k("a", &(sf(0).parse::<u64>().unwrap() - 1).to_string())).unwrap());
    assert!(!s.is_seen("p", &k("a", &(sf(10).parse::<u64>().unwrap() + 1).to_string())).unwrap());
    // Other conversations, kinds and pipelines are untouched by the range.
    assert!(!s.is_seen("p", &k("b", &sf(5))).unwrap());
    assert!(!s.is_seen("q", &k("a", &sf(5))).unwrap());
    let send = Key { kind: Kind::DmSend, conversation: "a".into(), id: sf(5) };
    assert!(!s.is_seen("p", &send).unwrap());
    // And it survives a reopen.
    drop(s);
    let s = Store::open(dir.path(), opts()).unwrap();
    assert!(ids.iter().all(|id| s.is_seen("p", &k("a", id)).unwrap()));
    assert_eq!(s.covered("p", "a").unwrap(), Some(c));
}

#[test]
fn fold_never_crosses_covered_from_and_skips_ids_it_cannot_order() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(dir.path(), opts()).unwrap();
    let mut ids: Vec<String> = (0..10).map(sf).collect();
    ids.push("abc".into());
    ids.push("0042".into());
    // Pages below sf(4) were written but not committed as gap-free: they must stay exact.
    let removed = write_and_fold(&s, &ids, conv_state(&sf(4), &sf(9)));
    assert_eq!(removed, 4, "sf(4)..=sf(7) folded; sf(8), sf(9) are the window");
    assert_eq!(s.count_seen("p", Some(Kind::DmMessage)).unwrap(), 8);
    assert!(ids.iter().all(|id| s.is_seen("p", &k("a", id)).unwrap()));
    assert!(!s.is_seen("p", &k("a", &(sf(2).parse::<u64>().unwrap() + 1).to_string())).unwrap());
    // A second fold after the backfill went lower extends the same range downwards.
    let more: Vec<String> = (10..14).map(sf).collect();
    let removed = write_and_fold(&s, &more, conv_state(&sf(0), &sf(13)));
    assert_eq!(removed, 8, "sf(0..4) and sf(8..12) folded; sf(12), sf(13) are the window");
    let c = s.covered("p", "a").unwrap().unwrap();
    assert_eq!((c.lo.to_string(), c.hi.to_string()), (sf(0), sf(11)));
    assert!(ids.iter().chain(&more).all(|id| s.is_seen("p", &k("a", id)).unwrap()));
}

#[test]
fn once_folded_older_pages_go_straight_into_the_range() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(dir.path(), opts()).unwrap();
    let first: Vec<String> = (10..20).map(sf).collect();
    write_and_fold(&s, &first, conv_state(&sf(10), &sf(19)));
    let before = s.count_seen("p", None).unwrap();
    // A backfill page below the range, committed with the covered_from it establishes: no exact keys.
    // In the same commit, a key below that covered_from (not gap-free) and one above the range stay exact.
    let page: Vec<String> = (5..10).map(sf).collect();
    let mut seen: Vec<(String, Key)> = page.iter().map(|i| ("p".to_string(), k("a", i))).collect();
    seen.push(("p".into(), k("a", &sf(1))));
    seen.push(("p".into(), k("a", &sf(20))));
    s.commit(&Commit {
        seen,
        conversations: vec![("p".into(), "a".into(), conv_state(&sf(5), &sf(19)))],
        ..Commit::default()
    })
    .unwrap();
    assert_eq!(s.count_seen("p", None).unwrap(), before + 2);
    let c = s.covered("p", "a").unwrap().unwrap();
    assert_eq!((c.lo.to_string(), c.hi.to_string()), (sf(5), sf(17)));
    assert!(page.iter().chain(&first).all(|id| s.is_seen("p", &k("a", id)).unwrap()));
    assert!(s.is_seen("p", &k("a", &sf(1))).unwrap() && s.is_seen("p", &k("a", &sf(20))).unwrap());
    assert!(!s.is_seen("p", &k("a", &sf(2))).unwrap());
}

/// A commit's fold request is skipped while nothing can change, and honoured again as soon as an exact key
/// is added: the skip only saves scans, it never stops compaction.
#[test]
fn a_commit_folds_again_once_its_conversation_gains_an_exact_key() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(dir.path(), opts()).unwrap();
    let commit = |ids: Vec<String>, st: ConvState| {
        s.commit(&Commit {
            seen: ids.iter().map(|i| ("p".to_string(), k("a", i))).collect(),
            conversations: vec![("p".into(), "a".into(), st)],
            folds: vec![("p".into(), "a".into())],
            ..Commit::default()
        })
        .unwrap();
    };
    commit((10..20).map(sf).collect(), conv_state(&sf(10), &sf(19)));
    let first = s.covered("p", "a").unwrap().unwrap();
    assert_eq!(first.hi.to_string(), sf(17), "the commit folded: sf(18), sf(19) are the window");
    assert!(s.folded_clean.lock().unwrap().contains(&("p".to_string(), "a".to_string())));
    // An older page goes straight into the range: no exact key, so the fold is skipped and changes nothing.
    commit((5..10).map(sf).collect(), conv_state(&sf(5), &sf(19)));
    assert_eq!(s.count_seen("p", Some(Kind::DmMessage)).unwrap(), 2);
    // New messages above hwm are exact keys: the conversation is folded again, up to the new window.
    commit((20..24).map(sf).collect(), conv_state(&sf(5), &sf(23)));
    let c = s.covered("p", "a").unwrap().unwrap();
    assert_eq!((c.lo.to_string(), c.hi.to_string()), (sf(5), sf(21)));
    assert_eq!(s.count_seen("p", Some(Kind::DmMessage)).unwrap(), 2, "only sf(22), sf(23) stay exact");
    assert!((5..24).map(sf).all(|id| s.is_seen("p", &k("a", &id)).unwrap()));
}

#[test]
fn fold_does_nothing_without_a_gap_free_range_or_with_window_zero() {
    let dir = tempfile::tempdir().unwrap();
    let ids: Vec<String> = (0..10).map(sf).collect();
    {
        let s = Store::open(dir.path(), opts()).unwrap();
        let st = ConvState { hwm: Some(sf(9)), ..ConvState::default() };
        assert_eq!(write_and_fold(&s, &ids, st), 0, "no covered_from yet");
        assert_eq!(s.covered("p", "a").unwrap(), None);
    }
    let s = Store::open(dir.path(), StoreOptions { seen_window: 0, ..opts() }).unwrap();
    assert_eq!(write_and_fold(&s, &ids, conv_state(&sf(0), &sf(9))), 0, "folding is off");
    assert_eq!(s.count_seen("p", None).unwrap(), 10);
}

#[test]
fn a_version_1_state_is_upgraded_and_folded_on_open() {
    let dir = tempfile::tempdir().unwrap();
    let ids: Vec<String> = (0..10).map(sf).collect();
    {
        // Write the old layout by hand: unpadded IDs, no `v`, no covered_from.
        let db = sled::open(dir.path().join("db")).unwrap();
        for id in ids.iter().map(String::as_str).chain(["42", "x1"]) {
            db.insert(key(b's', &["p", "a", "dm_message", id]), &[][..]).unwrap();
        }
        db.insert(key(b's', &["p", "a", "dm_send", "43"]), &[][..]).unwrap();
        db.insert(key(b's', &["p", "b", "dm_message", "7"]), &[][..]).unwrap();
        let done = ConvState { hwm: Some(sf(9)), backfill_started: true, backfill_done: true, ..ConvState::default() };
        db.insert(key(b'c', &["p", "a"]), serde_json::to_vec(&done).unwrap()).unwrap();
        let midway = ConvState { hwm: Some("7".into()), backfill_started: true, ..ConvState::default() };
        db.insert(key(b'c', &["p", "b"]), serde_json::to_vec(&midway).unwrap()).unwrap();
        db.flush().unwrap();
    }
    let s = Store::open(dir.path(), opts()).unwrap();
    for id in ids.iter().map(String::as_str).chain(["42", "x1"]) {
        assert!(s.is_seen("p", &k("a", id)).unwrap(), "{id}");
    }
    assert!(s.is_seen("p", &Key { kind: Kind::DmSend, conversation: "a".into(), id: "43".into() }).unwrap());
    assert!(s.is_seen("p", &k("b", "7")).unwrap());
    assert_eq!(s.conversation("p", "a").unwrap().covered_from.as_deref(), Some("42"));
    assert_eq!(s.conversation("p", "b").unwrap().covered_from, None, "backfill not done: left alone");
    // a: 42, sf(0)..=sf(7) folded; sf(8), sf(9), x1 exact. Plus the send and b's message.
    assert_eq!(s.count_seen("p", None).unwrap(), 5);
    drop(s);
    // Opening again finds version 2 and changes nothing.
    let s = Store::open(dir.path(), opts()).unwrap();
    assert_eq!(s.count_seen("p", None).unwrap(), 5);
}

#[test]
fn numeric_ids_are_canonical_u64s_only() {
    assert_eq!(numeric_id("0"), Some(0));
    assert_eq!(numeric_id("18446744073709551615"), Some(u64::MAX));
    for bad in ["", "007", "18446744073709551616", "1e5", "-1", " 1", "x"] {
        assert_eq!(numeric_id(bad), None, "{bad:?}");
    }
    assert_eq!(stored_id("42"), "00000000000000000042");
    assert_eq!(stored_id("042"), "042");
}

#[test]
fn a_second_owner_is_refused_with_the_holders_pid() {
    let dir = tempfile::tempdir().unwrap();
    let _first = Store::open(dir.path(), opts()).unwrap();
    let err = Store::open(dir.path(), opts()).err().expect("second open must fail");
    let msg = err.to_string();
    assert!(matches!(err, StateError::Locked { .. }), "{msg}");
    assert!(msg.contains(&format!("pid {}", std::process::id())), "{msg}");
}

#[test]
fn state_dir_is_created_0750() {
    let dir = tempfile::tempdir().unwrap();
    let sd = dir.path().join("new/state");
    let _s = Store::open(&sd, opts()).unwrap();
    assert_eq!(fs::metadata(&sd).unwrap().permissions().mode() & 0o777, 0o750);
}

/// An existing folder keeps its mode: a shared 1777 one (`state_dir = "/var/tmp"`) and an operator's 0700.
#[test]
fn an_existing_state_dir_keeps_its_mode() {
    for mode in [0o1777, 0o700] {
        let dir = tempfile::tempdir().unwrap();
        let sd = dir.path().join("state");
        fs::create_dir(&sd).unwrap();
        fs::set_permissions(&sd, fs::Permissions::from_mode(mode)).unwrap();
        let _s = Store::open(&sd, opts()).unwrap();
        assert_eq!(fs::metadata(&sd).unwrap().permissions().mode() & 0o7777, mode);
    }
}

/// `seen_among` answers exactly as `is_seen_with` does, key by key: folded range, exact keys of both history
/// kinds, other conversations and pipelines, non-numeric IDs and non-history kinds.
#[test]
fn seen_among_a_page_agrees_with_one_lookup_per_key() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(dir.path(), opts()).unwrap();
    let ids: Vec<String> = (0..=10).map(sf).collect();
    write_and_fold(&s, &ids, conv_state(&sf(0), &sf(10)));
    let event = |id: &str| Key { kind: Kind::DmEvent, conversation: "a".into(), id: id.into() };
    let between = (sf(10).parse::<u64>().unwrap() + 5).to_string();
    s.commit(&Commit {
        seen: vec![
            ("p".into(), event(&sf(3))),
            ("p".into(), k("a", "not-a-number")),
            ("p".into(), k("a", &between)),
            ("p".into(), k("b", &sf(12))),
            ("q".into(), k("a", &sf(12))),
            ("p".into(), Key { kind: Kind::DmSend, conversation: "a".into(), id: sf(12) }),
        ],
        ..Commit::default()
    })
    .unwrap();
    let covered = s.covered("p", "a").unwrap();
    assert!(covered.is_some(), "the test needs a folded range");
    let mut asked: Vec<(Kind, String)> = Vec::new();
    for id in ids.iter().chain([&between, &sf(12), &sf(13), &"not-a-number".to_string(), &"other".to_string()]) {
        for kind in [Kind::DmMessage, Kind::DmEvent, Kind::DmSend] {
            asked.push((kind, id.clone()));
        }
    }
    asked.push((Kind::DmMessage, (sf(0).parse::<u64>().unwrap() - 1).to_string()));
    let borrowed: Vec<(Kind, &str)> = asked.iter().map(|(k, id)| (*k, id.as_str())).collect();
    let got = s.seen_among("p", "a", &borrowed, covered).unwrap();
    let mut held = 0;
    for ((kind, id), got) in asked.iter().zip(got) {
        let key = Key { kind: *kind, conversation: "a".into(), id: id.clone() };
        assert_eq!(got, s.is_seen_with("p", &key, covered).unwrap(), "{kind:?} {id}");
        held += usize::from(got);
    }
    assert!(held > 12, "the page mixes seen and unseen keys: {held} seen");
}

/// The inbox stream's fold: one range for every conversation of the pipeline, from the stream's own
/// `covered_from`/`hwm`; the exact keys inside it go, every ID stays seen (lookup and page check), and a
/// conversation's own pass may still fold into its own range beside it.
#[test]
fn the_inbox_stream_folds_the_keys_of_every_conversation_it_wrote() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(dir.path(), opts()).unwrap();
    // Events of conversations a and b interleaved on the stream, hours apart.
    let seen: Vec<(String, Key)> =
        (0..10).map(|h| ("p".to_string(), k(if h % 2 == 0 { "a" } else { "b" }, &sf(h)))).collect();
    let st = conv_state(&sf(0), &sf(9));
    s.commit(&Commit {
        seen,
        conversations: vec![("p".into(), INBOX_STREAM.into(), st)],
        folds: vec![("p".into(), INBOX_STREAM.into())],
        ..Commit::default()
    })
    .unwrap();
    let c = s.covered("p", INBOX_STREAM).unwrap().expect("the stream has a range");
    assert_eq!(c.lo.to_string(), sf(0));
    // sf(8), sf(9) are the window (seen_window = 2), and within the hour of hwm nothing folds.
    assert_eq!(s.count_seen("p", Some(Kind::DmMessage)).unwrap(), 2, "only the newest two stay exact");
    for h in 0..10 {
        let conv = if h % 2 == 0 { "a" } else { "b" };
        assert!(s.is_seen("p", &k(conv, &sf(h))).unwrap(), "sf({h}) of {conv} is still seen");
        let id = sf(h);
        let among = s.seen_among("p", conv, &[(Kind::DmMessage, id.as_str())], None).unwrap();
        assert_eq!(among, vec![true], "seen_among agrees for sf({h})");
    }
    assert!(!s.is_seen("p", &k("a", &sf(20))).unwrap(), "an ID above the range is not seen");
    assert!(!s.is_seen("q", &k("a", &sf(2))).unwrap(), "another pipeline's stream answers nothing here");
    assert_eq!(s.covered("p", "a").unwrap(), None, "no conversation's own range was claimed");
}
