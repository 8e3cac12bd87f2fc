//! The providers' documented cursor failures (issue 27): a busy cursor is waited for as long as the
//! provider asks and asked for again; a cursor that is gone or invalid restarts the pass once without it,
//! the seen set absorbing the overlap; a stored backfill cursor the provider stopped accepting never
//! wedges a conversation; a 5xx on a read is retried. Each on every provider's routes, its own wording.

use std::time::{Duration, Instant};

use dm_handoff_simulator::{CursorStyle, Faults, ReadFault, ReadFaultKind};

use crate::support::*;

for_each_provider!(
    a_busy_cursor_is_waited_for_and_asked_again,
    a_gone_or_invalid_cursor_restarts_the_pass_once_without_it,
    a_rejected_stored_backfill_cursor_never_wedges_the_conversation,
    server_errors_on_reads_are_retried,
);

fn fault(kind: ReadFaultKind, peer: &str) -> ReadFault {
    ReadFault { peer: Some(peer.to_string()), ..ReadFault::new(kind) }
}

fn with_faults(seed: u64, peer: &str, n: usize, read_faults: Vec<ReadFault>) -> dm_handoff_simulator::SimConfig {
    let mut cfg = sim_config(seed, vec![conv(peer, n, CursorStyle::Offset)]);
    cfg.faults = Faults { read_faults, ..Faults::default() };
    cfg
}

fn read_faults(fx: &Fixture, kind: ReadFaultKind) -> u64 {
    fx.sim.sim.stats().read_faults.get(&kind.name()).copied().unwrap_or(0)
}

async fn a_busy_cursor_is_waited_for_and_asked_again(provider: Provider) {
    let peer = "710001";
    let busy = ReadFault { retry_after_secs: 2, ..fault(ReadFaultKind::CursorBusy, peer) };
    let fx = Fixture::new_for(provider, with_faults(71, peer, 120, vec![busy]), "backfill = true").await;
    let started = Instant::now();
    let out = fx.sync().await;
    out.expect_code(0);
    assert!(started.elapsed() >= Duration::from_secs(2), "the Retry-After was honoured\n{out}");
    fx.assert_exactly_once();
    assert_eq!(read_faults(&fx, ReadFaultKind::CursorBusy), 1);
    if provider != Provider::GetXApi {
        // The request after the 409 carries the same cursor (GetXAPI's is in the body, not logged).
        let log = fx.sim.sim.stats().log;
        let i = log.iter().position(|r| r.status == 409).expect("a 409 was served");
        let again = log[i + 1..].iter().find(|r| r.path == log[i].path).expect("asked again");
        assert_eq!(again.query, log[i].query, "the same cursor is asked for again");
        assert_eq!(again.status, 200);
    }
}

async fn a_gone_or_invalid_cursor_restarts_the_pass_once_without_it(provider: Provider) {
    let peer = "720001";
    let faults = vec![fault(ReadFaultKind::CursorGone, peer)];
    let fx = Fixture::new_for(provider, with_faults(72, peer, 150, faults), "backfill = true").await;
    let out = fx.sync().await;
    out.expect_code(0);
    fx.assert_exactly_once();
    // New messages, and an invalid cursor in the next run's head pass.
    fx.sim.sim.add_messages(peer, 70);
    fx.sim.sim.set_faults(Faults { read_faults: vec![fault(ReadFaultKind::CursorInvalid, peer)], ..Faults::default() });
    let out = fx.sync().await;
    out.expect_code(0);
    let records = fx.assert_exactly_once();
    assert_no_duplicates(&records);
    assert_eq!(read_faults(&fx, ReadFaultKind::CursorGone), 1);
    assert_eq!(read_faults(&fx, ReadFaultKind::CursorInvalid), 1);
    let status = fx.status_json().await;
    assert!(conv_status(&status, peer)["last_error"].is_null(), "no error is left: {status}");
}

async fn a_rejected_stored_backfill_cursor_never_wedges_the_conversation(provider: Provider) {
    let peer = "730001";
    let extra = "backfill = true\nbackfill_max_pages_per_run = 3";
    let fx = Fixture::new_for(provider, with_faults(73, peer, 260, Vec::new()), extra).await;
    fx.sync().await.expect_code(0);
    // Weeks later: the stored cursor has expired, on every provider's own terms.
    fx.sim.sim.set_faults(Faults { read_faults: vec![fault(ReadFaultKind::CursorGone, peer)], ..Faults::default() });
    let mut runs = 0;
    loop {
        runs += 1;
        let out = fx.sync().await;
        out.expect_code(0);
        let status = fx.status_json().await;
        if conv_status(&status, peer)["backfill_done"].as_bool() == Some(true) {
            break;
        }
        assert!(runs < 20, "the backfill does not get anywhere: {status}");
    }
    assert_eq!(read_faults(&fx, ReadFaultKind::CursorGone), 1);
    let records = fx.assert_exactly_once();
    assert_no_duplicates(&records);
}

async fn server_errors_on_reads_are_retried(provider: Provider) {
    let peer = "740001";
    let errors = ReadFault { times: 3, ..fault(ReadFaultKind::ServerError, peer) };
    let fx = Fixture::new_for(provider, with_faults(74, peer, 90, vec![errors]), "backfill = true").await;
    fx.sync().await.expect_code(0);
    fx.assert_exactly_once();
    assert_eq!(read_faults(&fx, ReadFaultKind::ServerError), 3);
    assert_eq!(fx.sim.sim.stats().by_status.get(&500).copied(), Some(3));
}

/// Two pipelines of one account share its read pace: `check` refuses them when they disagree on
/// `read_rate_limit` (before, the first one opened won silently), and accepts them when they agree.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_refuses_two_pipelines_of_one_account_with_different_read_rate_limits() {
    let fx =
        Fixture::new(sim_config(75, convs(&[("750001", 5, CursorStyle::Offset)])), "read_rate_limit = [100, 1]").await;
    let text = std::fs::read_to_string(&fx.config).expect("read the config");
    let second = |rate: &str| {
        let table = &text[text.find("[[pipelines]]").expect("a pipeline table")..];
        let copy = table
            .replace(&format!("name = \"{PIPELINE}\""), "name = \"second\"")
            .replace(&format!("out/{PIPELINE}"), "out/second")
            .replace("read_rate_limit = [100, 1]", &format!("read_rate_limit = {rate}"));
        format!("{text}\n{copy}")
    };
    std::fs::write(&fx.config, second("\"off\"")).expect("write the config");
    let out = fx.cmd(&["check"]).run().await;
    out.expect_code(2);
    let e = out.all();
    assert!(e.contains(&format!("`{PIPELINE}`")) && e.contains("`second`") && e.contains("read_rate_limit"), "{out}");
    assert!(e.contains("[100, 1]") && e.contains("\"off\""), "both values are named\n{out}");
    std::fs::write(&fx.config, second("[100, 1]")).expect("write the config");
    fx.cmd(&["check"]).run().await.expect_code(0);
}

// ---------------------------------------------------------------------------------------------
// A long backfill in the daemon (issue 27)

/// Polls `f` every 100 ms until it holds or `limit` passes; returns whether it held.
async fn eventually(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if f() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    f()
}

/// Records of the 1:1 conversation with `peer` in the files so far (complete lines only).
fn written(fx: &Fixture, peer: &str) -> usize {
    read_complete_records(&fx.out_dir()).iter().filter(|r| str_field(r, "conversation_user_id") == Some(peer)).count()
}

/// A daemon on a 2-second schedule over a 3,000-message conversation (`long`) and a small one (`other`),
/// both set up by one local sync first, every page then answered after 250 ms; and a `backfill` of `long`
/// handed to it through the control socket, which walks for about 30 s (120 pages). With `second`, the
/// config has a second pipeline (`second`, same account, its own files). Returns once the backfill is under
/// way.
async fn a_daemon_backfilling(seed: u64, long: &str, other: &str, second: bool) -> (Fixture, Running, Running) {
    let mut cfg = sim_config(seed, vec![conv(long, 3000, CursorStyle::MaxId), conv(other, 20, CursorStyle::Offset)]);
    cfg.page_size = (25, 25);
    // Scheduled runs fetch new messages only; older history comes from the `backfill` below.
    let fx = Fixture::new(cfg, "backfill = false").await;
    let mut text = std::fs::read_to_string(&fx.config).expect("read the config");
    text = text.replace("schedule = \"*/30 * * * * *\"", "schedule = \"*/2 * * * * *\"");
    if second {
        let table = &text[text.find("[[pipelines]]").expect("a pipeline table")..];
        let copy = table
            .replace(&format!("name = \"{PIPELINE}\""), "name = \"second\"")
            .replace(&format!("out/{PIPELINE}"), "out/second");
        text = format!("{text}\n{copy}");
    }
    std::fs::write(&fx.config, text).expect("write the config");
    fx.sync().await.expect_code(0);
    fx.sim.sim.set_faults(Faults { slow_ms: 250, ..Faults::default() });
    let daemon = fx.cmd(&["run"]).spawn();
    let socket = fx.state_dir().join("control.sock");
    assert!(eventually(Duration::from_secs(20), || socket.exists()).await, "no control socket");
    let backfill = fx.cmd(&["backfill", "--conversation", long]).spawn();
    assert!(eventually(Duration::from_secs(30), || written(&fx, long) >= 100).await, "the backfill does not walk");
    (fx, daemon, backfill)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_backfill_through_the_socket_does_not_hold_up_the_ticks() {
    let (long, other) = ("760001", "760002");
    let (fx, daemon, backfill) = a_daemon_backfilling(76, long, other, false).await;
    fx.sim.sim.add_messages(other, 5);
    // Three ticks are 6 s; the bound is generous, the point is that they land while the backfill walks.
    assert!(eventually(Duration::from_secs(20), || written(&fx, other) == 25).await, "the new messages did not land");
    let long_so_far = written(&fx, long);
    assert!(long_so_far < 3000, "they landed only after the backfill ({long_so_far} of 3000 written)");
    backfill.wait().await.expect_code(0);
    daemon.signal(libc::SIGTERM);
    daemon.wait().await.expect_code(0);
    let records = fx.assert_exactly_once();
    assert_no_duplicates(&records);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sighup_that_changes_a_backfilling_pipeline_leaves_the_daemon_answering() {
    let (long, other) = ("770001", "770002");
    let (fx, daemon, backfill) = a_daemon_backfilling(77, long, other, false).await;
    // Changed config of the pipeline that is walking: it restarts once its backfill ends.
    let text = std::fs::read_to_string(&fx.config).expect("read the config");
    std::fs::write(&fx.config, text.replace("rotate_max_bytes = 67108864", "rotate_max_bytes = 33554432"))
        .expect("write the config");
    daemon.signal(libc::SIGHUP);
    tokio::time::sleep(Duration::from_millis(500)).await;
    for _ in 0..3 {
        let asked = Instant::now();
        fx.cmd(&["status"]).run().await.expect_code(0);
        // The backfill has about 25 s to go; before, `status` waited for all of it.
        assert!(asked.elapsed() < Duration::from_secs(5), "status took {:?} during the reload", asked.elapsed());
    }
    assert!(written(&fx, long) < 3000, "the backfill ended before the daemon was asked");
    backfill.wait().await.expect_code(0);
    // The reload ends once the backfill has: the pipeline is back on its schedule.
    fx.sim.sim.add_messages(other, 5);
    assert!(eventually(Duration::from_secs(30), || written(&fx, other) == 25).await, "the pipeline did not come back");
    daemon.signal(libc::SIGTERM);
    let out = daemon.wait().await;
    out.expect_code(0);
    assert!(out.stderr.contains("config reloaded"), "{out}");
    fx.assert_exactly_once();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sighup_that_removes_a_backfilling_pipeline_leaves_the_daemon_answering() {
    let (long, other) = ("820001", "820002");
    let (fx, daemon, backfill) = a_daemon_backfilling(82, long, other, true).await;
    // The pipeline that is walking leaves the config; `second` stays.
    let text = std::fs::read_to_string(&fx.config).expect("read the config");
    let at = text.find("[[pipelines]]").expect("a pipeline table");
    let second = at + 1 + text[at + 1..].find("[[pipelines]]").expect("the second pipeline");
    std::fs::write(&fx.config, format!("{}{}", &text[..at], &text[second..])).expect("write the config");
    daemon.signal(libc::SIGHUP);
    tokio::time::sleep(Duration::from_millis(500)).await;
    for _ in 0..3 {
        let asked = Instant::now();
        fx.cmd(&["status"]).run().await.expect_code(0);
        // The backfill has about 25 s to go; before, `status` waited for all of it.
        assert!(asked.elapsed() < Duration::from_secs(5), "status took {:?} during the reload", asked.elapsed());
    }
    assert!(written(&fx, long) < 3000, "the backfill ended before the daemon was asked");
    // Removing a pipeline lets its run end (nothing is cut short), then it is gone.
    backfill.wait().await.expect_code(0);
    let mut gone = false;
    for _ in 0..60 {
        let status = fx.status_json().await;
        let names: Vec<&str> = status["pipelines"]
            .as_array()
            .map(|a| a.iter().filter_map(|p| p["name"].as_str()).collect())
            .unwrap_or_default();
        assert!(names.contains(&"second"), "the other pipeline stays: {status}");
        if !names.contains(&PIPELINE) {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(gone, "the removed pipeline is still listed after its run ended");
    daemon.signal(libc::SIGTERM);
    let out = daemon.wait().await;
    out.expect_code(0);
    assert!(out.stderr.contains("config reloaded"), "{out}");
    assert_eq!(written(&fx, long), 3000, "the backfill of the removed pipeline completed");
    fx.assert_exactly_once();
}

/// `concurrency = "auto"` may keep many pages in flight; a run's credit budget is still overshot by at
/// most the documented four pages (as when `concurrency` is pinned at 4). Before, the AIMD limit let ~17
/// pages past a 5,000-credit budget.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_auto_concurrency_run_overshoots_its_credit_budget_by_at_most_four_pages() {
    let peers: Vec<String> = (0..40).map(|i| format!("78{i:04}")).collect();
    let mut cfg = sim_config(78, peers.iter().map(|p| conv(p, 400, CursorStyle::MaxId)).collect());
    cfg.page_size = (25, 25);
    cfg.latency_ms = Some((40, 60));
    let extra = "concurrency = \"auto\"\nbackfill = true\nmax_credits_per_run = 5000";
    let fx = Fixture::new(cfg, extra).await;
    let out = fx.sync().await;
    let spent = fx.sim.sim.stats().credits;
    assert!(spent >= 5000, "the budget was reached: {spent}\n{out}");
    assert!(spent <= 5000 + 4 * 25, "{spent} credits for a 5,000 budget: more than four pages past it\n{out}");
    assert!(out.stdout.contains("max_credits_per_run"), "the report says which budget stopped the run\n{out}");
    let records = fx.records();
    assert_no_duplicates(&records);
}

/// `backfill --since` stops at the same boundary on X's inbox stream as on the per-conversation route,
/// whatever time form the provider sends (here Unix ms): the stream read RFC 3339 only and walked past it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backfill_since_stops_at_the_same_boundary_on_the_inbox_stream_with_epoch_ms_times() {
    let peer = "790001";
    let world = || {
        let mut cfg = sim_config(79, vec![conv(peer, 600, CursorStyle::MaxId)]);
        cfg.x_created_at_epoch_ms = true;
        cfg
    };
    let stream = Fixture::with_peers_for(Provider::XApiV2, world(), &[], "inbox = true\nbackfill = false").await;
    let listed = Fixture::new_for(Provider::XApiV2, world(), "backfill = false").await;
    let mut truth = stream.sim.sim.messages(peer);
    truth.sort_by_key(|m| m.id.parse::<u64>().unwrap_or(0));
    let since = truth[300].created_at.clone();
    for fx in [&stream, &listed] {
        fx.cmd(&["backfill", "--since", &since]).run().await.expect_code(0);
        let ids: std::collections::BTreeSet<String> =
            fx.records().iter().filter_map(|r| str_field(r, "message_id").map(str::to_string)).collect();
        let newer = truth[300..].iter().filter(|m| !ids.contains(&m.id)).count();
        assert_eq!(newer, 0, "everything since {since} is written");
        // A page reaches past --since and the walk stops there: at most one page (100) older than it.
        let older = truth[..300].iter().filter(|m| ids.contains(&m.id)).count();
        assert!(older <= 100, "{older} messages older than {since} were written: the walk went past --since");
        assert!(!ids.contains(&truth[0].id), "the oldest message was reached");
    }
}

/// X's inbox stream follows the same rule: a `pagination_token` X no longer accepts (in the head pass or
/// the backfill) restarts that pass once from the newest page, and nothing is written twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_x_inbox_stream_restarts_once_on_a_rejected_pagination_token() {
    let peer = "800001";
    let mut cfg = sim_config(80, vec![conv(peer, 450, CursorStyle::MaxId)]);
    let invalid = ReadFault {
        provider: Some(dm_handoff_simulator::SimProvider::XApiV2),
        ..ReadFault::new(ReadFaultKind::CursorInvalid)
    };
    cfg.faults = Faults { read_faults: vec![invalid.clone()], ..Faults::default() };
    let fx = Fixture::with_peers_for(Provider::XApiV2, cfg, &[], "inbox = true\nbackfill = true").await;
    fx.sync().await.expect_code(0);
    fx.sim.sim.add_messages(peer, 250);
    fx.sim.sim.set_faults(Faults { read_faults: vec![invalid], ..Faults::default() });
    fx.sync().await.expect_code(0);
    assert_eq!(read_faults(&fx, ReadFaultKind::CursorInvalid), 2);
    let records = fx.records();
    assert_no_duplicates(&records);
    let messages = records.iter().filter(|r| str_field(r, "kind") == Some("dm_message")).count();
    assert_eq!(messages, fx.sim.sim.messages(peer).len(), "every message once");
}

/// X's inbox stream folds its seen keys as the page route does: after a run, the exact keys of the
/// conversations it wrote (discovered ones no listed pass ever folds included) are replaced by the stream's
/// range; and a listed conversation's own pass over the same history, answered by that range, writes
/// nothing twice. Before, every stream event kept an exact key for ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_x_inbox_streams_seen_keys_are_folded_like_the_page_routes() {
    let (listed, found) = ("810001", ["810002", "810003"]);
    let cfg = sim_config(
        81,
        vec![
            conv(listed, 250, CursorStyle::MaxId),
            conv(found[0], 300, CursorStyle::MaxId),
            conv(found[1], 200, CursorStyle::Offset),
        ],
    );
    let fx =
        Fixture::with_peers_for(Provider::XApiV2, cfg, &[listed.to_string()], "inbox = true\nbackfill = true").await;
    fx.sync().await.expect_code(0);
    fx.sim.sim.add_messages(found[0], 40);
    fx.sim.sim.add_messages(listed, 30);
    fx.sync().await.expect_code(0);
    let records = fx.records();
    assert_no_duplicates(&records);
    for peer in [listed, found[0], found[1]] {
        let n = records.iter().filter(|r| str_field(r, "conversation_user_id") == Some(peer)).count();
        assert_eq!(n, fx.sim.sim.messages(peer).len(), "every message of {peer} once");
    }
    let (exact, _) = fx.assert_seen_set_folded(&records);
    let store = dm_handoff::state::Store::open(&fx.state_dir(), dm_handoff::state::StoreOptions::default())
        .expect("open the state");
    assert!(store.covered(PIPELINE, dm_handoff::state::INBOX_STREAM).expect("covered").is_some(), "no stream range");
    for peer in found {
        assert!(store.covered(PIPELINE, peer).expect("covered").is_none(), "the stream claims no range for {peer}");
    }
    assert!(exact < 100, "{exact} exact history keys left for {} records", records.len());
}
