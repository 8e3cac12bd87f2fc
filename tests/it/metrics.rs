//! SPEC section 8.5: the daemon's `/metrics` and `/healthz`. The counters must say exactly what the files,
//! the state (`status`) and the simulator's own books say, after a run with faults; the freshness gauges
//! survive a restart; `/healthz` turns 503 on an account-level error and back once it is fixed; a real
//! scrape passes `promtool check metrics`.

use std::collections::BTreeMap;
use std::time::{Duration, UNIX_EPOCH};

use dm_handoff_simulator::{CursorStyle, Faults};
use serde_json::Value;

use crate::support::*;

const RECORDS: &str = "dm_handoff_records_written_total";
const REQUESTS: &str = "dm_handoff_requests_total";
const RETRIES: &str = "dm_handoff_retries_total";
const LAST_SUCCESS: &str = "dm_handoff_last_run_success_timestamp_seconds";
const NEWEST: &str = "dm_handoff_newest_record_created_timestamp_seconds";

/// A daemon fixture whose schedule never fires during a test: runs happen when the test asks for them
/// (`sync` through the control socket), so the books can be compared while nothing moves.
async fn quiet_daemon(cfg: dm_handoff_simulator::SimConfig, extra: &str) -> (Fixture, std::net::SocketAddr) {
    let fx = Fixture::new(cfg, extra).await;
    let text = std::fs::read_to_string(&fx.config).unwrap().replace("*/30 * * * * *", "0 0 0 1 1 *");
    std::fs::write(&fx.config, text).unwrap();
    let addr = enable_metrics(&fx.config);
    (fx, addr)
}

/// Seconds since the epoch of a record timestamp.
fn seconds(at: &str) -> f64 {
    let t = humantime::parse_rfc3339(at).unwrap_or_else(|e| panic!("{at}: {e}"));
    t.duration_since(UNIX_EPOCH).unwrap().as_secs_f64()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_run_with_faults_the_counters_say_what_the_files_the_state_and_the_provider_say() {
    let mut cfg = sim_config(
        81,
        convs(&[
            ("8100001", 300, CursorStyle::Offset),
            ("8100002", 120, CursorStyle::MaxId),
            ("8100003", 0, CursorStyle::Offset),
            ("8100004", 40, CursorStyle::MaxId),
        ]),
    );
    // Small pages: about 90 requests, so every kind of fault is served.
    cfg.page_size = (5, 8);
    cfg.faults = Faults {
        rate_limit: 0.15,
        server_error: 0.15,
        drop: 0.08,
        malformed: 0.02,
        retry_after_secs: 0,
        forbidden_peers: vec!["8100004".into()],
        ..Faults::default()
    };
    let (fx, addr) = quiet_daemon(cfg, "max_retries = 40\nrotate_max_bytes = 8192").await;
    let daemon = fx.cmd(&["run"]).spawn();
    wait_for_metrics(addr).await;
    assert_eq!(http_get(addr, "/healthz", None).await.map(|r| (r.0, r.2)), Some((200, "ok\n".into())));

    // Three runs: the backfill, new messages, and a send through the daemon; the forbidden conversation
    // fails every one of them (a conversation error: /healthz stays 200).
    fx.sync().await.expect_code(1);
    fx.sim.sim.add_messages("8100001", 7);
    fx.sim.sim.add_messages("8100003", 3);
    fx.sync().await.expect_code(1);
    fx.cmd(&["send", "--pipeline", PIPELINE, "--to", "8100002", "--text", "metrics zqmetric01"])
        .run()
        .await
        .expect_code(0);
    let m = scrape(addr).await;
    let records = fx.records();
    let stats = fx.sim.sim.stats();
    let status = fx.status_json().await;

    // Records by kind = lines in the files by kind.
    let mut kinds: BTreeMap<String, u64> = BTreeMap::new();
    for r in &records {
        *kinds.entry(str_field(r, "kind").unwrap().to_string()).or_default() += 1;
    }
    assert_eq!(kinds.get("dm_message").copied(), Some(430), "{kinds:?}");
    assert_eq!(kinds.get("dm_send").copied(), Some(1), "{kinds:?}");
    for (kind, n) in &kinds {
        assert_eq!(m.count(RECORDS, &[("pipeline", PIPELINE), ("kind", kind)]), *n, "{kind}\n{}", m.text);
    }
    assert_eq!(m.count(RECORDS, &[]), records.len() as u64);

    // Requests by status = what the simulator answered, status by status.
    assert!(stats.by_status.len() >= 5, "faults were served: {:?}", stats.by_status);
    for (status, n) in &stats.by_status {
        let got = m.count(REQUESTS, &[("pipeline", PIPELINE), ("provider", "xquik"), ("status", &status.to_string())]);
        assert_eq!(got, *n, "requests with status {status}: {:?}\n{}", stats.by_status, m.text);
    }
    assert_eq!(m.count(REQUESTS, &[]), stats.requests, "no request the simulator did not see");
    assert_eq!(m.get(REQUESTS, &[("status", "error")]), None);

    // Every 429 and 5xx was retried (none ran out of retries), and only the forbidden 403s were not.
    let served = |s: u16| stats.by_status.get(&s).copied().unwrap_or(0);
    assert_eq!(m.count(RETRIES, &[("reason", "429")]), served(429));
    assert_eq!(m.count(RETRIES, &[("reason", "5xx")]), served(502) + served(503));
    assert!(m.count(RETRIES, &[("reason", "connection")]) > 0, "dropped bodies were retried\n{}", m.text);
    assert_eq!(served(403), 2, "the forbidden conversation was asked once per run, never again");

    // Credits = what the state committed (status), segments = closed files.
    let pipe = &status["pipelines"][0];
    let credits_total: u64 =
        pipe["conversations"].as_array().unwrap().iter().map(|c| c["credits_total"].as_u64().unwrap()).sum();
    assert_eq!(m.count("dm_handoff_credits_spent_total", &[("pipeline", PIPELINE)]), credits_total);
    assert_eq!(pipe["credits_today"].as_u64(), Some(credits_total));
    let closed = handoff_files(&fx.out_dir()).iter().filter(|f| f.closed.is_some()).count() as u64;
    assert!(closed >= 3, "rotation at 8 KiB closed segments");
    assert_eq!(m.count("dm_handoff_segments_closed_total", &[("pipeline", PIPELINE)]), closed);

    // Freshness: the newest created_at in the files, in the gauge and in status; no successful run yet.
    let newest = records.iter().filter_map(|r| str_field(r, "created_at")).max().unwrap().to_string();
    let gauge = m.get(NEWEST, &[("pipeline", PIPELINE)]).expect("the newest-record gauge");
    assert!((gauge - seconds(&newest)).abs() < 1e-3, "{gauge} vs {newest}");
    assert_eq!(pipe["newest_record_created_at"].as_str(), Some(newest.as_str()));
    assert_eq!(m.get(LAST_SUCCESS, &[]), None, "every run had a failed conversation\n{}", m.text);
    assert_eq!(pipe["last_successful_run"], Value::Null);

    // Conversations by state, each in one: three done, one failed.
    let state = |s: &str| m.count("dm_handoff_conversations", &[("pipeline", PIPELINE), ("state", s)]);
    assert_eq!([state("ok"), state("failed"), state("backfilling"), state("paused")], [3, 1, 0, 0], "{}", m.text);
    assert_eq!(conv_status(&status, "8100004")["state"], "failed");
    assert_eq!(conv_status(&status, "8100001")["state"], "ok");
    assert_eq!(m.count("dm_handoff_run_duration_seconds_count", &[("pipeline", PIPELINE)]), 2, "two runs");
    assert_eq!(m.count("dm_handoff_build_info", &[("version", env!("CARGO_PKG_VERSION"))]), 1);
    promtool_check_metrics(&m.text);

    // A run of the good conversations only succeeds: the gauge and status say when.
    let before = std::time::SystemTime::now();
    let good = fx.cmd(&["sync", "--conversation", "8100001", "--conversation", "8100002", "--conversation", "8100003"]);
    good.run().await.expect_code(0);
    let m = scrape(addr).await;
    let ok_at = m.get(LAST_SUCCESS, &[("pipeline", PIPELINE)]).expect("a successful run is recorded");
    assert!(ok_at >= before.duration_since(UNIX_EPOCH).unwrap().as_secs_f64() - 1.0, "{ok_at}");
    let shown = fx.status_json().await["pipelines"][0]["last_successful_run"].as_str().map(seconds);
    assert!(shown.is_some_and(|s| (s - ok_at).abs() < 1e-3), "status {shown:?} vs gauge {ok_at}");
    // That run wrote the sent DM back as a message: the newest record now.
    let newest = fx.records().iter().filter_map(|r| str_field(r, "created_at").map(str::to_string)).max().unwrap();
    let text_status = fx.cmd(&["status"]).run().await;
    assert!(text_status.stdout.contains(&format!("newest record created_at: {newest}")), "{text_status}");

    // OpenMetrics for a scraper that asks for it (Prometheus does).
    let om = http_get(addr, "/metrics", Some("application/openmetrics-text;version=1.0.0,text/plain;q=0.5")).await;
    let (code, ctype, body) = om.expect("an OpenMetrics scrape");
    assert_eq!(code, 200);
    assert!(ctype.starts_with("application/openmetrics-text"), "{ctype}");
    assert!(body.ends_with("# EOF\n") && body.contains("# TYPE dm_handoff_records_written counter"), "{body}");

    daemon.signal(libc::SIGTERM);
    daemon.wait().await.expect_code(0);

    // Restarted: the freshness gauges come back from the state before any run; counters start again.
    let daemon = fx.cmd(&["run"]).spawn();
    wait_for_metrics(addr).await;
    let m = scrape(addr).await;
    let restored = m.get(NEWEST, &[("pipeline", PIPELINE)]).expect("restored newest-record gauge");
    assert!((restored - seconds(&newest)).abs() < 1e-3, "{restored} vs {newest}");
    assert_eq!(m.get(LAST_SUCCESS, &[("pipeline", PIPELINE)]), Some(ok_at));
    assert_eq!(m.count(RECORDS, &[]), 0);
    daemon.signal(libc::SIGTERM);
    daemon.wait().await.expect_code(0);
    assert_exactly_once(&fx.records(), &fx.sim.sim, &fx.peers[..3]);
}

/// `/healthz` is 503 while the last run stopped on an account-level error (a rejected key), and 200 again
/// once a reload brings a good key and a run succeeds. The reason names the pipeline, never the key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_is_503_after_a_rejected_key_until_it_is_fixed() {
    let fx = Fixture::new(sim_config(82, vec![conv("8200001", 30, CursorStyle::Offset)]), "").await;
    let text = std::fs::read_to_string(&fx.config).unwrap();
    let text = text
        .replace("*/30 * * * * *", "* * * * * *")
        .replace(&format!("api_key_env = \"{KEY_VAR}\""), "api_key_file = \"key.txt\"");
    std::fs::write(&fx.config, text).unwrap();
    let addr = enable_metrics(&fx.config);
    let key_file = fx.config.parent().unwrap().join("key.txt");
    std::fs::write(&key_file, "xq_revoked_key_0000000000000000\n").unwrap();
    // Key files must be owner-only.
    std::fs::set_permissions(&key_file, <std::fs::Permissions as std::os::unix::fs::PermissionsExt>::from_mode(0o600))
        .unwrap();
    let daemon = fx.cmd(&["run"]).spawn();
    wait_for_metrics(addr).await;

    let health = || async { http_get(addr, "/healthz", None).await.expect("healthz answers") };
    let mut last = health().await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while last.0 != 503 {
        assert!(tokio::time::Instant::now() < deadline, "never 503 with a rejected key: {last:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
        last = health().await;
    }
    assert!(last.2.contains("pipeline support") && last.2.contains("account-level"), "{last:?}");
    assert!(!last.2.contains("xq_") && !last.2.contains("8200001"), "{last:?}");
    let m = scrape(addr).await;
    assert!(m.count(REQUESTS, &[("status", "401")]) >= 1, "{}", m.text);
    assert_eq!(m.count(RETRIES, &[]), 0, "a 401 is never retried");

    // Fixed: a reload restarts the pipeline with the new key, and its runs succeed.
    std::fs::write(&key_file, format!("{KEY}\n")).unwrap();
    daemon.signal(libc::SIGHUP);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        last = health().await;
        let succeeded = scrape(addr).await.get(LAST_SUCCESS, &[("pipeline", PIPELINE)]).is_some();
        if last.0 == 200 && succeeded {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "no healthy successful run after the fix: {last:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(last.2, "ok\n");
    daemon.signal(libc::SIGTERM);
    daemon.wait().await.expect_code(0);
    fx.assert_exactly_once();
}
