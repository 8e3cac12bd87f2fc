//! The daemon (`run`): systemd notifications, clean stops, single-flight schedules, the control socket,
//! and SIGHUP reloads. Time-based parts use generous bounds and poll for outcomes instead of sleeping a
//! fixed time and asserting on timing.

use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::time::Duration;

use dm_handoff_simulator::{CursorStyle, Faults};

use crate::support::*;

/// Polls `f` every 100 ms until it holds or `limit` passes; returns whether it held.
async fn eventually(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let start = tokio::time::Instant::now();
    while start.elapsed() < limit {
        if f() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    f()
}

/// A fixture whose pipeline runs on `schedule` (the harness writes a default one).
async fn daemon_fixture(
    cfg: dm_handoff_simulator::SimConfig,
    peers: Option<&[String]>,
    schedule: &str,
    extra: &str,
) -> Fixture {
    let fx = match peers {
        Some(p) => Fixture::with_peers(cfg, p, extra).await,
        None => Fixture::new(cfg, extra).await,
    };
    let text = std::fs::read_to_string(&fx.config).expect("read config");
    let text = text.replace("schedule = \"*/30 * * * * *\"", &format!("schedule = \"{schedule}\""));
    std::fs::write(&fx.config, text).expect("write config");
    fx
}

/// A fake `NOTIFY_SOCKET`: a datagram socket the test reads.
struct Notify {
    sock: UnixDatagram,
    path: std::path::PathBuf,
    seen: Vec<String>,
    /// When each `WATCHDOG=1` arrived (as read by the test's polling).
    pings: Vec<tokio::time::Instant>,
}

impl Notify {
    fn new(dir: &Path) -> Notify {
        let path = dir.join("notify.sock");
        let sock = UnixDatagram::bind(&path).expect("bind the notify socket");
        sock.set_nonblocking(true).expect("nonblocking");
        Notify { sock, path, seen: Vec::new(), pings: Vec::new() }
    }

    /// Every notification line received so far.
    fn lines(&mut self) -> &[String] {
        let mut buf = [0u8; 4096];
        while let Ok(n) = self.sock.recv(&mut buf) {
            let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
            if msg.lines().any(|l| l == "WATCHDOG=1") {
                self.pings.push(tokio::time::Instant::now());
            }
            self.seen.extend(msg.lines().map(str::to_string));
        }
        &self.seen
    }

    fn count(&mut self, line: &str) -> usize {
        self.lines().iter().filter(|l| *l == line).count()
    }
}

fn every_file_ends_with_newline(dir: &Path) {
    for e in std::fs::read_dir(dir).expect("output dir") {
        let path = e.expect("dir entry").path();
        let bytes = std::fs::read(&path).expect("read handoff file");
        assert!(bytes.is_empty() || bytes.ends_with(b"\n"), "{} ends with a torn line", path.display());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn systemd_sees_ready_watchdog_status_and_stopping() {
    let fx =
        daemon_fixture(sim_config(31, vec![conv("700001", 120, CursorStyle::Offset)]), None, "* * * * * *", "").await;
    let mut notify = Notify::new(fx.dir.path());
    let daemon =
        fx.cmd(&["run"]).env("NOTIFY_SOCKET", notify.path.to_str().unwrap()).env("WATCHDOG_USEC", "400000").spawn();
    assert!(
        eventually(Duration::from_secs(20), || notify.count("READY=1") == 1).await,
        "no READY=1: {:?}",
        notify.lines()
    );
    assert!(
        eventually(Duration::from_secs(20), || notify.count("WATCHDOG=1") >= 3).await,
        "WATCHDOG=1 should come every 200 ms: {:?}",
        notify.lines()
    );
    assert!(
        eventually(Duration::from_secs(20), || notify
            .lines()
            .iter()
            .any(|l| l.starts_with("STATUS=support: 1 conversations")))
        .await,
        "a STATUS= line after a run: {:?}",
        notify.lines()
    );
    daemon.signal(libc::SIGTERM);
    let out = daemon.wait().await;
    out.expect_code(0);
    let lines = notify.lines().to_vec();
    let ready = lines.iter().position(|l| l == "READY=1").unwrap();
    assert_eq!(lines.iter().filter(|l| *l == "STOPPING=1").count(), 1, "{lines:?}");
    assert!(lines.iter().position(|l| l == "STOPPING=1").unwrap() > ready);
    fx.assert_exactly_once();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_run_stops_the_watchdog_pings() {
    // Every response takes 3 s and the watchdog is 1 s: a run in flight shows no progress for 3 s.
    let mut cfg = sim_config(32, vec![conv("700002", 200, CursorStyle::Offset)]);
    cfg.faults = Faults { slow_ms: 3000, ..Faults::default() };
    let fx = daemon_fixture(cfg, None, "* * * * * *", "request_timeout = \"20s\"\n").await;
    let mut notify = Notify::new(fx.dir.path());
    let daemon =
        fx.cmd(&["run"]).env("NOTIFY_SOCKET", notify.path.to_str().unwrap()).env("WATCHDOG_USEC", "1000000").spawn();
    assert!(eventually(Duration::from_secs(20), || notify.count("READY=1") == 1).await);
    // Pings come every 500 ms while healthy. Each request of the run takes 3 s, so after a request has
    // been in flight for 1 s the pings must stop until it finishes: a gap well over the period.
    let widest_gap = |n: &mut Notify| {
        n.lines();
        n.pings.windows(2).map(|w| w[1] - w[0]).max().unwrap_or_default()
    };
    let held = eventually(Duration::from_secs(20), || widest_gap(&mut notify) >= Duration::from_millis(1500)).await;
    let widest = widest_gap(&mut notify);
    assert!(held, "WATCHDOG=1 kept coming while a request hung (widest gap {widest:?})");
    daemon.signal(libc::SIGTERM);
    let out = daemon.wait().await;
    assert!(out.stderr.contains("withholding WATCHDOG=1"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_mid_run_exits_0_without_a_torn_line_and_a_later_sync_completes() {
    let mut cfg =
        sim_config(33, vec![conv("700003", 900, CursorStyle::Offset), conv("700004", 300, CursorStyle::MaxId)]);
    cfg.faults = Faults { slow_ms: 60, ..Faults::default() };
    let fx = daemon_fixture(cfg, None, "* * * * * *", "rotate_max_bytes = 8192\n").await;
    let daemon = fx.cmd(&["run"]).spawn();
    let out_dir = fx.out_dir();
    // Wait until the run has written something but is far from done (900 messages at 60 ms a page).
    assert!(
        eventually(Duration::from_secs(30), || std::fs::read_dir(&out_dir).map(|d| d.count() >= 3).unwrap_or(false))
            .await,
        "the daemon wrote nothing"
    );
    daemon.signal(libc::SIGTERM);
    let out = daemon.wait().await;
    out.expect_code(0);
    assert!(out.stderr.contains("stopping"), "{out}");
    every_file_ends_with_newline(&out_dir);
    let partial = fx.records().len();
    assert!(partial < 1200, "the run should have been stopped part way ({partial} records)");
    fx.sync().await.expect_code(0);
    fx.assert_exactly_once();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_run_never_overlaps_itself_and_ticks_keep_coming() {
    // A run takes about 2.5 s (10 pages at 250 ms), the schedule fires every second.
    let mut cfg = sim_config(34, vec![conv("700005", 250, CursorStyle::MaxId)]);
    cfg.page_size = (25, 25);
    cfg.faults = Faults { slow_ms: 250, ..Faults::default() };
    let fx = daemon_fixture(cfg, None, "* * * * * *", "").await;
    let daemon = fx.cmd(&["run"]).spawn();
    let sim = fx.sim.sim.clone();
    // Many runs: each later run fetches page 1 again, so count first-page requests.
    let first_pages = || {
        sim.stats().log.iter().filter(|r| r.path.ends_with("/700005/history") && !r.query.contains("cursor=")).count()
    };
    assert!(eventually(Duration::from_secs(60), || first_pages() >= 4).await, "ticks stopped coming");
    daemon.signal(libc::SIGTERM);
    let out = daemon.wait().await;
    out.expect_code(0);
    assert!(out.stderr.contains("previous run still going; skipping this tick"), "{out}");
    // No overlap: the first run pages through all 10 pages (cursor requests) for about 2.5 s while the
    // schedule fires every second. Had a second run started, its first-page request (no cursor) would
    // appear before the first run's last cursor request.
    let log: Vec<_> = sim.stats().log.into_iter().filter(|r| r.path.ends_with("/700005/history")).collect();
    let last_cursor = log.iter().rposition(|r| r.query.contains("cursor=")).expect("the first run paged");
    let starts = log[..last_cursor].iter().filter(|r| !r.query.contains("cursor=")).count();
    assert_eq!(starts, 1, "a run started while the first was still paging: {log:#?}");
    fx.assert_exactly_once();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_and_sync_go_through_the_daemon_and_a_second_daemon_is_refused() {
    let fx = daemon_fixture(
        sim_config(35, vec![conv("700006", 80, CursorStyle::Offset), conv("700007", 0, CursorStyle::MaxId)]),
        None,
        "0 0 0 1 1 *",
        "",
    )
    .await;
    let daemon = fx.cmd(&["run"]).spawn();
    let socket = fx.state_dir().join("control.sock");
    assert!(eventually(Duration::from_secs(20), || socket.exists()).await, "no control socket");
    // The daemon holds the state lock, so these can only succeed through the socket.
    let sync = fx.sync().await;
    sync.expect_code(0);
    assert!(sync.stdout.contains("80 new records"), "{sync}");
    let status = fx.status_json().await;
    let convs = status["pipelines"][0]["conversations"].as_array().expect("conversations");
    assert_eq!(convs.len(), 2);
    assert_eq!(convs.iter().find(|c| c["conversation"] == "700006").unwrap()["messages_written"], 80);
    let second = fx.cmd(&["run"]).run().await;
    second.expect_code(3);
    assert!(second.stderr.contains("in use by another dm-handoff process"), "{second}");
    assert_eq!(second.error_lines().len(), 1, "{second}");
    // A sync asked while idle is not repeated by the schedule: nothing is written twice.
    fx.sim.sim.add_messages("700006", 3);
    fx.sync().await.expect_code(0);
    // A send while the daemon runs goes through the socket too: one send, one record, twice asked.
    for _ in 0..2 {
        let send = fx
            .cmd(&["send", "--pipeline", PIPELINE, "--to", "700007", "--text", "through the daemon zqdaemon01"])
            .run()
            .await;
        send.expect_code(0);
        assert!(!send.all().contains("zqdaemon01"), "{send}");
    }
    assert_eq!(fx.sim.sim.stats().sends, 1);
    let sends: Vec<_> = fx.records().into_iter().filter(|r| r["kind"] == "dm_send").collect();
    assert_eq!(sends.len(), 1, "{sends:?}");
    assert_eq!(sends[0]["conversation_user_id"], "700007");
    // The sent DM is now in the conversation's history: the next sync writes it once, as a dm_message.
    fx.sync().await.expect_code(0);
    daemon.signal(libc::SIGTERM);
    daemon.wait().await.expect_code(0);
    assert!(!socket.exists(), "the socket is removed on a clean stop");
    fx.assert_exactly_once();
}

/// Key rotation: the config names a key file and does not change; rewriting the file and sending SIGHUP
/// restarts the pipeline with the new key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_after_rewriting_the_key_file_rotates_the_key() {
    let cfg = sim_config(37, vec![conv("700010", 30, CursorStyle::Offset)]);
    let fx = daemon_fixture(cfg, None, "* * * * * *", "").await;
    let text = std::fs::read_to_string(&fx.config).unwrap();
    std::fs::write(&fx.config, text.replace(&format!("api_key_env = \"{KEY_VAR}\""), "api_key_file = \"key.txt\""))
        .unwrap();
    let key_file = fx.config.parent().unwrap().join("key.txt");
    std::fs::write(&key_file, "xq_revoked_key_0000000000000000\n").unwrap();
    // Key files must be owner-only.
    std::fs::set_permissions(&key_file, <std::fs::Permissions as std::os::unix::fs::PermissionsExt>::from_mode(0o600))
        .unwrap();
    let daemon = fx.cmd(&["run"]).spawn();
    // The old key is refused at every tick.
    assert!(
        eventually(Duration::from_secs(20), || fx.sim.sim.stats().by_status.get(&401).copied().unwrap_or(0) >= 2).await
    );
    std::fs::write(&key_file, format!("{KEY}\n")).unwrap();
    daemon.signal(libc::SIGHUP);
    let out_dir = fx.out_dir();
    assert!(
        eventually(Duration::from_secs(20), || read_complete_records(&out_dir).len() == 30).await,
        "the new key was not used"
    );
    daemon.signal(libc::SIGTERM);
    let out = daemon.wait().await;
    out.expect_code(0);
    assert!(out.stderr.contains("its key changed"), "{out}");
    assert!(!out.all().contains("xq_revoked_key") && !out.all().contains(KEY), "a key reached the output\n{out}");
    fx.assert_exactly_once();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_applies_a_valid_config_and_rejects_an_invalid_one() {
    let cfg = sim_config(36, vec![conv("700008", 40, CursorStyle::Offset), conv("700009", 60, CursorStyle::MaxId)]);
    let fx = daemon_fixture(cfg, Some(&["700008".to_string()]), "* * * * * *", "").await;
    let daemon = fx.cmd(&["run"]).spawn();
    let out_dir = fx.out_dir();
    let count = |peer: &str| {
        let needle = format!("\"conversation_user_id\":\"{peer}\"");
        std::fs::read_dir(&out_dir)
            .map(|d| {
                d.filter_map(|e| std::fs::read_to_string(e.ok()?.path()).ok()).map(|t| t.matches(&needle).count()).sum()
            })
            .unwrap_or(0usize)
    };
    assert!(eventually(Duration::from_secs(20), || count("700008") == 40).await);
    // Invalid: rejected, the daemon keeps running the old config.
    let good = std::fs::read_to_string(&fx.config).unwrap();
    std::fs::write(&fx.config, format!("{good}\nnot_a_key = 1\n")).unwrap();
    daemon.signal(libc::SIGHUP);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    fx.sim.sim.add_messages("700008", 2);
    assert!(eventually(Duration::from_secs(20), || count("700008") == 42).await, "the old config stopped running");
    // Valid, with one more conversation: it starts being synced. A changed store setting is not applied
    // in place, and says so.
    std::fs::write(
        &fx.config,
        format!(
            "seen_window = 4\n{}",
            good.replace("conversations = [\"700008\"]", "conversations = [\"700008\", \"700009\"]")
        ),
    )
    .unwrap();
    daemon.signal(libc::SIGHUP);
    assert!(eventually(Duration::from_secs(20), || count("700009") == 60).await, "the new conversation was not synced");
    daemon.signal(libc::SIGTERM);
    let out = daemon.wait().await;
    out.expect_code(0);
    assert!(out.stderr.contains("reload rejected"), "{out}");
    assert!(out.stderr.contains("config reloaded"), "{out}");
    assert!(
        out.stderr.contains("takes effect when the daemon restarts") && out.stderr.contains("seen_window"),
        "{out}"
    );
    let fx = Fixture { peers: vec!["700008".into(), "700009".into()], ..fx };
    fx.assert_exactly_once();
}
