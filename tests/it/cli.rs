//! The command line (SPEC sections 2-3): `check`, config and argument errors as one line with exit 2,
//! the state-directory owner (exit 3), `status --json`, `backfill` and its limits, `demo`, `simulate`,
//! and a signal mid-run (exit 130).

use std::collections::BTreeSet;

use dm_handoff_simulator::{default_scenario, CursorStyle, Faults, Simulator};

use crate::support::*;

/// The IDs of the newest `n` messages of a conversation.
fn newest_ids(fx: &Fixture, peer: &str, n: usize) -> BTreeSet<String> {
    fx.sim.sim.messages(peer).into_iter().take(n).map(|m| m.id).collect()
}

/// The IDs written for one conversation.
fn written_ids(records: &[serde_json::Value], peer: &str) -> BTreeSet<String> {
    records
        .iter()
        .filter(|r| str_field(r, "conversation_user_id") == Some(peer))
        .filter_map(|r| str_field(r, "message_id"))
        .map(str::to_string)
        .collect()
}

/// Asserts the run failed with exit `code` and exactly one line on stderr, an `error:` line.
fn assert_one_error_line(out: &Output, code: i32) -> String {
    out.expect_code(code);
    let lines: Vec<&str> = out.stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "exactly one line on stderr\n{out}");
    assert!(lines[0].starts_with("error: "), "it is an `error:` line\n{out}");
    lines[0].to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_validates_and_prints_the_pipeline_without_touching_anything() {
    let fx = Fixture::new(
        sim_config(81, vec![conv("8000001", 5, CursorStyle::Offset), conv("8000002", 5, CursorStyle::MaxId)]),
        "",
    )
    .await;
    let out = fx.cmd(&["check"]).run().await;
    out.expect_code(0);
    for needle in [PIPELINE, "8000001", "8000002", "xquik"] {
        assert!(out.stdout.contains(needle), "check prints {needle}\n{out}");
    }
    // Without the key too: check reads no secret.
    fx.cmd(&["check"]).key(None).run().await.expect_code(0);
    assert!(
        !fx.state_dir().exists() && !fx.dir.path().join("out").exists(),
        "check created the state or output folder"
    );
    assert_eq!(fx.sim.sim.stats().requests, 0, "check called the provider");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relative_paths_are_taken_from_the_config_folder() {
    let fx = Fixture::new(sim_config(82, vec![conv("8000003", 5, CursorStyle::Offset)]), "").await;
    fx.sync().await.expect_code(0);
    assert!(fx.state_dir().is_dir() && fx.active_path().is_file(), "state and output are next to the config");
    assert_eq!(std::fs::read_dir(fx.cwd()).unwrap().count(), 0, "nothing was created in the working folder");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_config_key_is_one_line_naming_it_with_exit_2() {
    let fx = Fixture::new(sim_config(83, vec![conv("8000004", 5, CursorStyle::Offset)]), "colour = \"blue\"").await;
    for args in [&["check"][..], &["sync"][..], &["status"][..]] {
        let line = assert_one_error_line(&fx.cmd(args).run().await, 2);
        assert!(line.contains("colour"), "the line names the key: {line}");
    }
    assert!(!fx.state_dir().exists(), "a bad config created the state folder");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_api_key_variable_is_named_with_exit_2_and_creates_nothing() {
    let fx = Fixture::new(sim_config(84, vec![conv("8000005", 5, CursorStyle::Offset)]), "").await;
    for args in [&["sync"][..], &["backfill"][..]] {
        let line = assert_one_error_line(&fx.cmd(args).key(None).run().await, 2);
        assert!(line.contains(KEY_VAR), "the line names the variable: {line}");
    }
    let line = assert_one_error_line(&fx.cmd(&["sync"]).key(Some("   ")).run().await, 2);
    assert!(line.contains(KEY_VAR), "an empty key is a missing key: {line}");
    assert!(!fx.state_dir().exists() && !fx.dir.path().join("out").exists(), "a missing key left folders behind");
    assert_eq!(fx.sim.sim.stats().requests, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_arguments_exit_2_with_one_line() {
    let fx = Fixture::new(sim_config(85, vec![conv("8000006", 5, CursorStyle::Offset)]), "").await;
    for (args, needle) in [
        (&["sync", "--pipeline", "nope"][..], "nope"),
        (&["sync", "--conversation", "999"][..], "999"),
        (&["backfill", "--max-pages", "0"][..], "max-pages"),
        (&["backfill", "--since", "yesterday"][..], "yesterday"),
    ] {
        let line = assert_one_error_line(&fx.cmd(args).run().await, 2);
        assert!(line.contains(needle), "`{}` names {needle}: {line}", args.join(" "));
    }
    // clap's own usage errors: exit 2 too.
    fx.cmd(&["sync", "--no-such-flag"]).run().await.expect_code(2);
    Cmd::new(&["no-such-command"]).cwd(&fx.cwd()).run().await.expect_code(2);
    let missing = fx.dir.path().join("missing.toml");
    let line = assert_one_error_line(&Cmd::new(&["sync"]).config(&missing).cwd(&fx.cwd()).run().await, 2);
    assert!(line.contains("missing.toml"), "{line}");
    assert_eq!(fx.sim.sim.stats().requests, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_owner_of_the_state_dir_gets_exit_3_naming_the_holder() {
    let mut cfg = sim_config(86, vec![conv("8000007", 30, CursorStyle::Offset)]);
    cfg.page_size = (10, 10);
    let fx = Fixture::new(cfg, "").await;

    // Held by this test process.
    {
        let _store = dm_handoff::state::Store::open(&fx.state_dir(), dm_handoff::state::StoreOptions::default())
            .expect("open the state");
        for args in [&["sync"][..], &["backfill"][..], &["status"][..]] {
            let line = assert_one_error_line(&fx.cmd(args).run().await, 3);
            assert!(line.contains(&format!("pid {}", std::process::id())), "names the holder's pid: {line}");
            assert!(line.contains("state"), "names the state dir: {line}");
        }
    }
    assert_eq!(fx.sim.sim.stats().requests, 0, "a refused process called the provider");

    // Held by a running sync.
    fx.sim.sim.set_faults(Faults { slow_ms: 2000, ..Faults::default() });
    let first = fx.cmd(&["sync"]).spawn();
    let lock = fx.state_dir().join("LOCK");
    let pid = first.pid().to_string();
    wait_until("the first sync holds the lock", || std::fs::read_to_string(&lock).is_ok_and(|s| s.trim() == pid)).await;
    let line = assert_one_error_line(&fx.cmd(&["sync"]).run().await, 3);
    assert!(line.contains(&format!("pid {pid}")), "names the running sync's pid: {line}");
    first.signal(libc::SIGKILL);
    first.wait().await;

    fx.sim.sim.set_faults(Faults::default());
    fx.sync().await.expect_code(0);
    fx.assert_exactly_once();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_json_names_every_configured_conversation() {
    let peers = ["8100001", "8100002", "8100003"];
    let fx =
        Fixture::new(sim_config(87, peers.iter().enumerate().map(|(i, p)| conv(p, 25 + i, style(i))).collect()), "")
            .await;

    // Before any sync: every conversation listed, nothing written.
    let status = fx.status_json().await;
    for p in peers {
        let st = conv_status(&status, p);
        assert_eq!(st["messages_written"].as_u64(), Some(0), "{st}");
    }

    let out = fx.cmd(&["sync", "--conversation", peers[0]]).run().await;
    out.expect_code(0);
    let stats = fx.sim.sim.stats();
    assert!(history_requests(&stats, peers[0]) > 0);
    assert_eq!(
        history_requests(&stats, peers[1]) + history_requests(&stats, peers[2]),
        0,
        "--conversation limits the run"
    );

    let status = fx.status_json().await;
    let synced = conv_status(&status, peers[0]);
    assert_eq!(synced["messages_written"].as_u64(), Some(25), "{synced}");
    assert_eq!(
        synced["newest_message_id"].as_str(),
        fx.sim.sim.messages(peers[0]).first().map(|m| m.id.as_str()),
        "{synced}"
    );
    assert_eq!(synced["backfill_done"].as_bool(), Some(true), "{synced}");
    assert!(synced["last_sync"].as_str().is_some_and(is_millis_z), "{synced}");
    assert!(synced.get("last_error").is_some_and(|e| e.is_null()), "{synced}");
    for p in &peers[1..] {
        let st = conv_status(&status, p);
        assert_eq!(st["messages_written"].as_u64(), Some(0), "{st}");
        assert!(st.get("newest_message_id").is_some_and(|v| v.is_null()), "{st}");
        assert_eq!(st["backfill_done"].as_bool(), Some(false), "{st}");
        assert!(st.get("last_sync").is_some_and(|v| v.is_null()), "{st}");
        assert!(st.get("last_error").is_some_and(|v| v.is_null()), "{st}");
    }

    let text = fx.cmd(&["status"]).run().await;
    text.expect_code(0);
    for p in peers {
        assert!(text.stdout.contains(p), "status lists {p}\n{text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backfill_max_pages_walks_older_history_one_page_per_run() {
    let sizes = [75, 33, 12, 0];
    let peers = ["8200001", "8200002", "8200003", "8200004"];
    let mut cfg = sim_config(88, peers.iter().zip(sizes).enumerate().map(|(i, (p, n))| conv(p, n, style(i))).collect());
    cfg.page_size = (20, 20);
    let fx = Fixture::new(cfg, "").await;

    fx.cmd(&["backfill", "--max-pages", "1"]).run().await.expect_code(0);
    let records = fx.records();
    assert_no_duplicates(&records);
    let stats = fx.sim.sim.stats();
    for (p, n) in peers.iter().zip(sizes) {
        assert_eq!(written_ids(&records, p), newest_ids(&fx, p, n.min(40)), "{p}: the first page and one older page");
        assert!(history_requests(&stats, p) <= 2, "{p}: at most the first page and one older page were fetched");
    }
    let status = fx.status_json().await;
    assert_eq!(conv_status(&status, peers[0])["backfill_done"].as_bool(), Some(false));
    assert_eq!(conv_status(&status, peers[1])["backfill_done"].as_bool(), Some(true));

    fx.cmd(&["backfill", "--max-pages", "1"]).run().await.expect_code(0);
    assert_eq!(written_ids(&fx.records(), peers[0]), newest_ids(&fx, peers[0], 60), "one more older page");

    fx.cmd(&["backfill"]).run().await.expect_code(0);
    let records = fx.assert_exactly_once();
    assert_status_matches(&fx.status_json().await, &records, &fx.sim.sim, &fx.peers);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_backfill_off_sync_keeps_to_new_pages_until_backfill_runs() {
    let peers = ["8300001", "8300002"];
    let mut cfg = sim_config(89, vec![conv(peers[0], 75, CursorStyle::Offset), conv(peers[1], 45, CursorStyle::MaxId)]);
    cfg.page_size = (20, 20);
    let fx = Fixture::new(cfg, "backfill = false").await;

    fx.sync().await.expect_code(0);
    let records = fx.records();
    for p in peers {
        assert_eq!(written_ids(&records, p), newest_ids(&fx, p, 20), "{p}: only the newest page");
    }
    let status = fx.status_json().await;
    for p in peers {
        assert_eq!(conv_status(&status, p)["backfill_done"].as_bool(), Some(false));
    }

    let added = fx.sim.sim.add_messages(peers[0], 5);
    fx.sync().await.expect_code(0);
    let records = fx.records();
    assert_no_duplicates(&records);
    assert_eq!(written_ids(&records, peers[0]), newest_ids(&fx, peers[0], 25), "the new messages and nothing older");
    assert!(added.iter().all(|id| written_ids(&records, peers[0]).contains(id)));
    assert_eq!(written_ids(&records, peers[1]), newest_ids(&fx, peers[1], 20));

    fx.cmd(&["backfill"]).run().await.expect_code(0);
    let records = fx.assert_exactly_once();
    assert_status_matches(&fx.status_json().await, &records, &fx.sim.sim, &fx.peers);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_runs_against_its_own_simulator_and_writes_records() {
    let dir = tempfile::tempdir().unwrap();
    let demo = dir.path().join("demo");
    let out = Cmd::new(&["demo", "--dir"]).arg(&demo).key(None).cwd(dir.path()).run().await;
    out.expect_code(0);
    let records = read_records(&demo.join("out").join("support"));
    assert_no_duplicates(&records);
    let scenario = default_scenario();
    let expected: usize = scenario.conversations.iter().map(|c| c.messages).sum::<usize>() + 5;
    assert_eq!(records.len(), expected, "every message of the demo scenario, plus the five that arrive\n{out}");

    // What the demo tells the user to do next works: a simulator on the printed address, then a sync
    // that writes nothing twice.
    let listen = out
        .stdout
        .lines()
        .find_map(|l| l.trim().strip_prefix("cargo run --release -- simulate --listen "))
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("the demo prints how to start a simulator\n{out}"))
        .to_string();
    assert!(out.stdout.contains("cargo run --release -- sync --config"), "{out}");
    let server = Cmd::new(&["simulate", "--listen", &listen]).key(None).cwd(dir.path()).spawn();
    wait_until("the simulator prints its address", || server.stdout_so_far().contains(&listen)).await;
    let again = Cmd::new(&["sync", "--config"]).arg(demo.join("pipelines.toml")).key(None).cwd(dir.path()).run().await;
    again.expect_code(0);
    assert_eq!(read_records(&demo.join("out").join("support")).len(), expected, "a rerun wrote something twice");
    server.signal(libc::SIGTERM);
    server.wait().await.expect_code(0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simulate_serves_a_sync_from_another_process_until_stopped() {
    let dir = tempfile::tempdir().unwrap();
    let server = Cmd::new(&["simulate", "--listen", "127.0.0.1:0"]).key(None).cwd(dir.path()).spawn();
    let mut base_url = String::new();
    wait_until("the simulator prints its address", || {
        let text = server.stdout_so_far();
        let url = text
            .split_whitespace()
            .map(|w| w.trim_end_matches(')'))
            .find(|w| w.starts_with("http://") && w.ends_with("/api/v1"));
        if let Some(url) = url {
            base_url = url.to_string();
        }
        url.is_some()
    })
    .await;
    let scenario = default_scenario();
    let peers: Vec<&str> = scenario.conversations.iter().map(|c| c.peer_id.as_str()).collect();
    let config = write_config(dir.path(), &base_url, &peers, "");
    Cmd::new(&["sync"]).config(&config).cwd(dir.path()).run().await.expect_code(0);

    // The same seed makes the same world: ground truth from an identical simulator in this process.
    let twin = Simulator::new(default_scenario());
    let records = read_records(&dir.path().join("out").join(PIPELINE));
    let peers: Vec<String> = peers.iter().map(|p| p.to_string()).collect();
    for p in &peers {
        let truth: BTreeSet<String> = twin.messages_for(p, ACCOUNT).into_iter().map(|m| m.id).collect();
        assert_eq!(written_ids(&records, p), truth, "conversation {p}");
    }
    assert_no_duplicates(&records);

    server.signal(libc::SIGTERM);
    let out = server.wait().await;
    out.expect_code(0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_at_a_page_boundary_with_exit_130_and_a_rerun_completes() {
    let mut cfg =
        sim_config(90, vec![conv("8400001", 300, CursorStyle::Offset), conv("8400002", 120, CursorStyle::MaxId)]);
    cfg.page_size = (20, 20);
    cfg.faults = Faults { slow_ms: 100, ..Faults::default() };
    let fx = Fixture::new(cfg, "").await;
    let child = fx.cmd(&["sync"]).spawn();
    let active = fx.active_path();
    wait_until("some pages are written", || std::fs::read(&active).map(|b| line_count(&b) >= 60).unwrap_or(false))
        .await;
    child.signal(libc::SIGTERM);
    let out = child.wait().await;
    out.expect_code(130);
    // A clean stop: complete lines only, nothing twice, and not everything yet.
    let records = fx.records();
    assert_no_duplicates(&records);
    assert!(records.len() < 420, "the run stopped early");

    fx.sim.sim.set_faults(Faults::default());
    fx.sync().await.expect_code(0);
    fx.assert_exactly_once();
}
