//! Issue 27 part B against the real binary: `state check` and `state rebuild` (the offline audit of the
//! state against the files, and the rebuild of the state from them).

use std::fs;

use dm_handoff_simulator::CursorStyle;

use crate::support::*;

/// The last line of a command's output that starts with `prefix`.
fn summary<'a>(out: &'a Output, prefix: &str) -> &'a str {
    out.stdout.lines().rev().find(|l| l.starts_with(prefix)).unwrap_or_else(|| panic!("no `{prefix}` line\n{out}"))
}

/// Opens the state database directly, as an adversary (or a disk) would change it: no process holds it.
fn raw_db(fx: &Fixture) -> sled::Db {
    sled::open(fx.state_dir().join("db")).expect("open sled")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_check_finds_a_lost_key_and_a_bad_cursor_and_rebuild_repairs_without_writing_twice() {
    let cfg = sim_config(2701, convs(&[("5270001", 150, CursorStyle::Offset), ("5270002", 40, CursorStyle::MaxId)]));
    let fx = Fixture::new(cfg, "rotate_max_bytes = 8192").await;
    fx.sync().await.expect_code(0);
    let before = fx.assert_exactly_once().len();

    // After a normal sync the state agrees with the files.
    let out = fx.cmd(&["state", "check"]).run().await;
    out.expect_code(0);
    assert!(summary(&out, "state check: pipeline").ends_with(" 0 problems"), "{out}");
    assert!(!out.stdout.contains("problem:"), "{out}");
    let out = fx.cmd(&["state", "check", "--json"]).run().await;
    out.expect_code(0);
    let doc: serde_json::Value = serde_json::from_str(&out.stdout).expect("one JSON document");
    assert_eq!(doc["ok"], true, "{doc}");
    assert_eq!(doc["report"]["pipelines"][0]["records"].as_u64(), Some(before as u64), "{doc}");

    // Lose the seen set of one conversation (its folded range and exact keys) and corrupt the other's
    // high-water mark so it points past everything written.
    {
        let db = raw_db(&fx);
        let mut removed = 0;
        for prefix in [b's', b'r'] {
            let mut p = vec![prefix, 0];
            p.extend_from_slice(format!("{PIPELINE}\x005270001\x00").as_bytes());
            for kv in db.scan_prefix(&p) {
                db.remove(kv.unwrap().0).unwrap();
                removed += 1;
            }
            // A range's key ends at the conversation.
            let mut k = vec![prefix, 0];
            k.extend_from_slice(format!("{PIPELINE}\x005270001").as_bytes());
            if db.remove(&k).unwrap().is_some() {
                removed += 1;
            }
        }
        assert!(removed > 0);
        let ck = format!("c\x00{PIPELINE}\x005270002");
        let mut st: serde_json::Value = serde_json::from_slice(&db.get(ck.as_bytes()).unwrap().unwrap()).unwrap();
        st["hwm"] = "2993456789012345678".into();
        db.insert(ck.as_bytes(), serde_json::to_vec(&st).unwrap()).unwrap();
        db.flush().unwrap();
    }
    let out = fx.cmd(&["state", "check"]).run().await;
    out.expect_code(1);
    assert!(out.stdout.contains("of conversation 5270001 is in the files but not in the seen set"), "{out}");
    assert!(out.stdout.contains("hwm 2993456789012345678 is newer than anything"), "{out}");
    assert!(!summary(&out, "state check: pipeline").ends_with(" 0 problems"), "{out}");
    assert!(!out.all().contains("panicked"), "{out}");

    // Refused while another process owns the state directory (exit 3), and nothing was moved.
    {
        let _held = dm_handoff::state::Store::open(&fx.state_dir(), dm_handoff::state::StoreOptions::default())
            .expect("hold the state");
        fx.cmd(&["state", "rebuild"]).run().await.expect_code(3);
        fx.cmd(&["state", "check"]).run().await.expect_code(3);
    }
    assert!(fs::read_dir(fx.state_dir()).unwrap().all(|e| !e.unwrap().file_name().to_string_lossy().contains(".old-")));

    let out = fx.cmd(&["state", "rebuild"]).run().await;
    out.expect_code(0);
    assert!(out.stdout.contains("the old database is kept as"), "{out}");
    assert!(out.stdout.contains("conversation 5270002 reset"), "{out}");
    let aside: Vec<String> = fs::read_dir(fx.state_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("db.old-"))
        .collect();
    assert_eq!(aside.len(), 1, "{aside:?}");
    let out = fx.cmd(&["state", "check"]).run().await;
    out.expect_code(0);

    // A sync after the rebuild writes nothing twice, and new messages still land.
    let new = fx.sim.sim.add_messages("5270001", 3);
    let new2 = fx.sim.sim.add_messages("5270002", 2);
    fx.sync().await.expect_code(0);
    let records = fx.assert_exactly_once();
    assert_eq!(records.len(), before + new.len() + new2.len());
    let out = fx.cmd(&["verify"]).run().await;
    out.expect_code(0);
    assert!(summary(&out, "verify:").ends_with(" 0 problems"), "{out}");
    fx.cmd(&["state", "check"]).run().await.expect_code(0);
}

/// `state check` is clean after ordinary syncs of every provider and route: X API v2 by conversation (a
/// group included) and through its whole-inbox stream, GetXAPI discovering conversations, each with new
/// messages between two syncs; and `state rebuild` keeps every conversation state of such a pipeline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_check_is_clean_after_syncs_of_every_provider_and_route() {
    let group = dm_handoff_simulator::SimGroup {
        conversation_id: "1578398451921985538".into(),
        participants: vec!["944480690".into(), "906948460078698496".into()],
        events: 50,
        membership_every: 6,
    };
    let base = || {
        let mut cfg =
            sim_config(2702, convs(&[("5270101", 120, CursorStyle::MaxId), ("5270102", 30, CursorStyle::Offset)]));
        cfg.groups = vec![group.clone()];
        cfg
    };
    let listed = ["5270101".to_string(), "5270102".to_string(), "conv:1578398451921985538".to_string()];
    let cases = [
        (Provider::XApiV2, listed.to_vec(), ""),
        (Provider::XApiV2, Vec::new(), "inbox = true"),
        (Provider::GetXApi, vec!["5270102".to_string()], "inbox = true"),
    ];
    for (provider, peers, extra) in cases {
        let fx = Fixture::with_peers_for(provider, base(), &peers, &format!("rotate_max_bytes = 16384\n{extra}")).await;
        fx.sync().await.expect_code(0);
        fx.sim.sim.add_messages("5270101", 4);
        fx.sync().await.expect_code(0);
        let what = format!("{} {extra:?}", provider.name());
        let out = fx.cmd(&["state", "check"]).run().await;
        assert_eq!(out.code(), Some(0), "{what}\n{out}");
        assert!(summary(&out, "state check: pipeline").ends_with(" 0 problems"), "{what}\n{out}");
        let records = fx.records().len();
        let out = fx.cmd(&["state", "rebuild"]).run().await;
        assert_eq!(out.code(), Some(0), "{what}\n{out}");
        assert!(summary(&out, "state rebuild: pipeline").ends_with(" 0 reset"), "{what}\n{out}");
        fx.sync().await.expect_code(0);
        assert_eq!(fx.records().len(), records, "{what}: nothing written twice after the rebuild");
        fx.cmd(&["state", "check"]).run().await.expect_code(0);
    }
}

/// Both take the state directory's lock: while the daemon runs they refuse with exit 3 and its PID, and
/// touch nothing; once it stopped they run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_check_and_rebuild_refuse_while_the_daemon_runs() {
    let fx = Fixture::new(sim_config(2703, convs(&[("5270201", 20, CursorStyle::Offset)])), "").await;
    fx.sync().await.expect_code(0);
    let daemon = fx.cmd(&["run"]).spawn();
    let sock = fx.state_dir().join("control.sock");
    wait_until("the daemon listens", || sock.exists()).await;
    for sub in ["check", "rebuild"] {
        let out = fx.cmd(&["state", sub]).run().await;
        assert_eq!(out.code(), Some(3), "state {sub}\n{out}");
        assert!(out.stderr.contains(&format!("pid {}", daemon.pid())), "state {sub}\n{out}");
        assert!(!out.all().contains("panicked"), "{out}");
    }
    let names: Vec<String> =
        fs::read_dir(fx.state_dir()).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    assert!(names.iter().all(|n| !n.starts_with("db.old-")), "{names:?}");
    daemon.signal(libc::SIGTERM);
    daemon.wait().await.expect_code(0);
    fx.cmd(&["state", "check"]).run().await.expect_code(0);
    fx.cmd(&["state", "rebuild"]).run().await.expect_code(0);
    fx.sync().await.expect_code(0);
    fx.assert_exactly_once();
}

/// A database sled cannot open (a garbled settings file): `state check` reports it (exit 1, one problem
/// naming the rebuild, no backtrace); `state rebuild` makes a new one from the files alone, every
/// conversation reset; the next sync walks history again and writes only the new messages.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_database_is_reported_and_rebuilt_from_the_files_alone() {
    let cfg = sim_config(2704, convs(&[("5270301", 90, CursorStyle::Offset), ("5270302", 25, CursorStyle::MaxId)]));
    let fx = Fixture::new(cfg, "rotate_max_bytes = 8192").await;
    fx.sync().await.expect_code(0);
    let before = fx.assert_exactly_once().len();
    fs::write(fx.state_dir().join("db").join("conf"), b"\x00\x13garbage that is not a sled config\xff").unwrap();

    let out = fx.cmd(&["state", "check"]).run().await;
    out.expect_code(1);
    let problems: Vec<&str> = out.stdout.lines().filter(|l| l.starts_with("problem:")).collect();
    assert_eq!(problems.len(), 1, "{out}");
    assert!(problems[0].contains("corrupted") && problems[0].contains("state rebuild"), "{out}");
    for wrong in ["backtrace", "panicked", "Os {"] {
        assert!(!out.all().contains(wrong), "`{wrong}` in: {out}");
    }

    let out = fx.cmd(&["state", "rebuild"]).run().await;
    out.expect_code(0);
    assert!(out.stdout.contains("could not be read"), "{out}");
    assert!(summary(&out, "state rebuild: pipeline").ends_with("0 conversation states kept, 2 reset"), "{out}");
    fx.cmd(&["state", "check"]).run().await.expect_code(0);

    let new = fx.sim.sim.add_messages("5270302", 3);
    fx.sync().await.expect_code(0);
    assert_eq!(fx.assert_exactly_once().len(), before + new.len());
    fx.cmd(&["verify"]).run().await.expect_code(0);
    fx.cmd(&["state", "check"]).run().await.expect_code(0);
}
