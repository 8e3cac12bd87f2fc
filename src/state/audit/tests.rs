use super::*;
use crate::record::Record;

fn target(dir: &Path) -> Target {
    Target { pipeline: "p".into(), dir: dir.join("out"), file_name: "xquik-dm-handoff.jsonl".into() }
}

fn line(id: u64) -> String {
    Record {
        kind: Some(Kind::DmMessage),
        pipeline: "p".into(),
        conversation_user_id: Some("44196397".into()),
        message_id: Some(id.to_string()),
        ..Record::default()
    }
    .to_line()
}

/// A folder with three committed records and the state a sync would leave.
fn synced(dir: &Path) -> Target {
    let t = target(dir);
    fs::create_dir_all(&t.dir).unwrap();
    let ids = [1893456789012345601u64, 1893456789012345602, 1893456789012345603];
    let text: String = ids.iter().map(|i| line(*i) + "\n").collect();
    let path = t.dir.join(&t.file_name);
    fs::write(&path, &text).unwrap();
    let ino = std::os::unix::fs::MetadataExt::ino(&fs::metadata(&path).unwrap());
    let store = Store::open(&dir.join("state"), StoreOptions::default()).unwrap();
    let mut c = Commit::default();
    for i in ids {
        c.seen.push(("p".into(), Key { kind: Kind::DmMessage, conversation: "44196397".into(), id: i.to_string() }));
    }
    let st = ConvState {
        hwm: Some(ids[2].to_string()),
        backfill_started: true,
        backfill_done: true,
        messages_written: 3,
        newest_id: Some(ids[2].to_string()),
        ..ConvState::default()
    };
    c.conversations.push(("p".into(), "44196397".into(), st));
    c.sink_points.push((
        "p".into(),
        CommitPoint { seq: 1, offset: text.len() as u64, active_since_ms: Some(1), active_ino: Some(ino) },
    ));
    store.commit(&c).unwrap();
    t
}

fn problems(r: &CheckReport) -> Vec<String> {
    r.pipelines
        .iter()
        .flat_map(|p| &p.findings)
        .filter(|f| f.problem)
        .map(|f| format!("{}: {}", f.at, f.what))
        .collect()
}

#[test]
fn a_synced_state_checks_clean_and_a_deleted_key_or_a_bad_cursor_is_reported() {
    let tmp = tempfile::tempdir().unwrap();
    let t = synced(tmp.path());
    let state = tmp.path().join("state");
    let r = check(&state, StoreOptions::default(), std::slice::from_ref(&t)).unwrap();
    assert_eq!(r.problems, 0, "{:?}", problems(&r));
    assert_eq!(r.pipelines[0].records, 3);

    {
        let store = Store::open(&state, StoreOptions::default()).unwrap();
        let k = Key { kind: Kind::DmMessage, conversation: "44196397".into(), id: "1893456789012345602".into() };
        store.db.remove(super::super::keys::seen_key("p", &k)).unwrap();
        let mut st = store.conversation("p", "44196397").unwrap();
        st.hwm = Some("1993456789012345603".into());
        st.backfill_cursor = Some(String::new());
        store.db.insert(key(b'c', &["p", "44196397"]), serde_json::to_vec(&st).unwrap()).unwrap();
        store.db.insert(key(b'c', &["p", "777"]), &b"{not json"[..]).unwrap();
        store.flush().unwrap();
    }
    let r = check(&state, StoreOptions::default(), std::slice::from_ref(&t)).unwrap();
    let p = problems(&r);
    assert!(
        p.iter().any(|l| l.contains("xquik-dm-handoff.jsonl:2")
            && l.contains("1893456789012345602")
            && l.contains("not in the seen set")),
        "{p:#?}"
    );
    assert!(p.iter().any(|l| l.contains("hwm 1993456789012345603 is newer")), "{p:#?}");
    assert!(p.iter().any(|l| l.contains("backfill is marked done yet has a cursor")), "{p:#?}");
    assert!(p.iter().any(|l| l.contains("p/777") && l.contains("unreadable")), "{p:#?}");
    assert_eq!(r.problems, p.len() as u64);

    // The rebuild keeps the old database aside, and then the check is clean again.
    let rb = rebuild(&state, StoreOptions::default(), std::slice::from_ref(&t), SystemTime::now()).unwrap();
    assert!(rb.old.as_ref().is_some_and(|o| o.exists() && o.starts_with(&state)), "{rb:?}");
    assert_eq!(rb.pipelines[0].records, 3);
    assert_eq!(rb.pipelines[0].reset.len(), 2, "{rb:?}");
    let r = check(&state, StoreOptions::default(), &[t]).unwrap();
    assert_eq!(r.problems, 0, "{:?}", problems(&r));
    let store = Store::open(&state, StoreOptions::default()).unwrap();
    let st = store.conversation("p", "44196397").unwrap();
    assert_eq!((st.hwm, st.messages_written), (None, 3), "a reset state walks history again, deduplicated");
    assert!(store
        .is_seen("p", &Key { kind: Kind::DmMessage, conversation: "44196397".into(), id: "1893456789012345602".into() })
        .unwrap());
}

#[test]
fn check_and_rebuild_refuse_a_held_state() {
    let tmp = tempfile::tempdir().unwrap();
    let t = synced(tmp.path());
    let state = tmp.path().join("state");
    let _held = Store::open(&state, StoreOptions::default()).unwrap();
    assert!(matches!(check(&state, StoreOptions::default(), std::slice::from_ref(&t)), Err(StateError::Locked { .. })));
    assert!(matches!(
        rebuild(&state, StoreOptions::default(), &[t], SystemTime::now()),
        Err(StateError::Locked { .. })
    ));
    assert!(state.join("db").exists());
}
