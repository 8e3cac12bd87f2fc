//! SPEC 8.2: whole-inbox sync. X API v2 reads the account's whole stream (`GET /2/dm_events`); GetXAPI
//! discovers conversations (`POST /twitter/dm/list`) and syncs each like a listed one. 1:1 and group
//! conversations, a conversation that starts after the first run, one that is both listed and discovered,
//! and records identical to those the per-conversation route writes. Xquik has no inbox route.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use dm_handoff_simulator::{CursorStyle, SimConfig, SimGroup, Stats};
use serde_json::Value;

use crate::support::*;

const GROUP: &str = "1578398451921985538";

fn group(events: usize) -> SimGroup {
    SimGroup {
        conversation_id: GROUP.into(),
        participants: vec!["944480690".into(), "906948460078698496".into()],
        events,
        membership_every: 6,
    }
}

/// The exactly-once key of any record: (kind, conversation, ID).
fn key(r: &Value) -> (String, String, String) {
    let s = |k: &str| str_field(r, k).map(str::to_string);
    (
        s("kind").unwrap_or_default(),
        s("conversation_user_id").or(s("conversation_id")).unwrap_or_default(),
        s("message_id").or(s("event_id")).unwrap_or_default(),
    )
}

/// Asserts every key once, and per conversation exactly the simulator's messages (1:1) and events (the
/// group; `group_messages_only` for GetXAPI, which pages messages only).
fn assert_inbox_exactly_once(records: &[Value], fx: &Fixture, peers: &[&str], group_messages_only: bool) {
    let mut counts: BTreeMap<(String, String, String), usize> = BTreeMap::new();
    for r in records.iter().filter(|r| matches!(str_field(r, "kind"), Some("dm_message" | "dm_event"))) {
        *counts.entry(key(r)).or_default() += 1;
    }
    let dups: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).take(3).collect();
    assert!(dups.is_empty(), "written twice: {dups:?}");
    let mut want = BTreeSet::new();
    for p in peers {
        for m in fx.sim.sim.messages(p) {
            want.insert(("dm_message".to_string(), p.to_string(), m.id));
        }
    }
    for e in fx.sim.sim.group_events(GROUP) {
        match e.event_type.as_str() {
            "MessageCreate" => want.insert(("dm_message".to_string(), GROUP.to_string(), e.id)),
            _ if group_messages_only => false,
            _ => want.insert(("dm_event".to_string(), GROUP.to_string(), e.id)),
        };
    }
    let got: BTreeSet<_> = counts.into_keys().collect();
    let missing: Vec<_> = want.difference(&got).take(3).collect();
    let extra: Vec<_> = got.difference(&want).take(3).collect();
    assert!(missing.is_empty() && extra.is_empty(), "missing {missing:?}, extra {extra:?}");
}

/// Requests to one route in the simulator's log.
fn requests(stats: &Stats, method: &str, path: &str) -> usize {
    stats.log.iter().filter(|r| r.method == method && r.path == path).count()
}

/// Per-conversation history requests of any provider (not the inbox routes).
fn per_conversation_requests(stats: &Stats) -> usize {
    all_history_requests(stats)
}

/// Runs `dm-handoff sync` with a second config in `dir` against the same simulator, listing `conversations`
/// (the per-conversation route), and returns its records.
async fn listed_records(fx: &Fixture, dir: &Path, conversations: &[&str]) -> Vec<Value> {
    let config = write_config_for(fx.provider, dir, &fx.provider.base_url(&fx.sim), conversations, "");
    let mut cmd = Cmd::new(&["sync"]).config(&config).cwd(dir);
    if fx.provider == Provider::GetXApi {
        cmd = cmd.env(AUTH_TOKEN_VAR, AUTH_TOKEN);
    }
    cmd.run().await.expect_code(0);
    read_records(&dir.join("out").join(PIPELINE))
}

/// The inbox's records are the per-conversation route's, field for field, but for the route it names.
fn assert_same_records_as_listed(inbox: &[Value], listed: &[Value], inbox_endpoint: Option<&str>) {
    let strip = |r: &Value| {
        let mut o = r.as_object().unwrap().clone();
        o.remove("synced_at");
        let endpoint = o.remove("source_endpoint");
        (Value::Object(o), endpoint)
    };
    let listed: BTreeMap<_, _> = listed.iter().map(|r| (key(r), strip(r))).collect();
    assert_eq!(listed.len(), inbox.len(), "as many records both ways");
    for r in inbox {
        let (fields, endpoint) = strip(r);
        let (want, listed_endpoint) = listed.get(&key(r)).unwrap_or_else(|| panic!("not written when listed: {r}"));
        assert_eq!(&fields, want, "the same record both ways");
        match inbox_endpoint {
            Some(e) => assert_eq!(endpoint.as_ref().and_then(Value::as_str), Some(e), "{r}"),
            None => assert_eq!(&endpoint, listed_endpoint, "{r}"),
        }
    }
}

fn x_cfg(seed: u64) -> SimConfig {
    let mut cfg = sim_config(
        seed,
        convs(&[
            ("8110001", 230, CursorStyle::MaxId),
            ("8110002", 45, CursorStyle::Offset),
            ("8110003", 0, CursorStyle::Offset),
        ]),
    );
    cfg.groups = vec![group(80)];
    cfg
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn x_api_v2_reads_the_whole_inbox_from_one_stream_including_new_conversations() {
    let fx = Fixture::with_peers_for(Provider::XApiV2, x_cfg(811), &[], "inbox = true").await;
    fx.sync().await.expect_code(0);
    let records = fx.records();
    let peers = ["8110001", "8110002", "8110003"];
    assert_inbox_exactly_once(&records, &fx, &peers, false);
    let events = records.len();
    let stats = fx.sim.sim.stats();
    assert_eq!(requests(&stats, "GET", "/2/dm_events"), events.div_ceil(100), "one request per 100 events");
    assert_eq!(per_conversation_requests(&stats), 0, "no conversation was asked on its own");

    // Records and keys are exactly those the per-conversation routes write, with the stream's route.
    let other = tempfile::tempdir().unwrap();
    let listed = listed_records(&fx, other.path(), &["8110001", "8110002", "8110003", &format!("conv:{GROUP}")]).await;
    assert_same_records_as_listed(&records, &listed, Some("GET /2/dm_events"));

    // A conversation that starts after the first run, and news in an old one: one request finds both.
    fx.sim.sim.add_messages("8110009", 6);
    fx.sim.sim.add_messages("8110002", 3);
    let before = requests(&fx.sim.sim.stats(), "GET", "/2/dm_events");
    let out = fx.sync().await;
    out.expect_code(0);
    assert!(out.stdout.contains("inbox"), "the inbox has a line in the report\n{out}");
    assert_eq!(requests(&fx.sim.sim.stats(), "GET", "/2/dm_events") - before, 1);
    let records = fx.records();
    assert_inbox_exactly_once(&records, &fx, &["8110001", "8110002", "8110003", "8110009"], false);
    assert_eq!(records.len(), events + 9);

    // Discovered conversations have their own state and appear in status.
    let status = fx.status_json().await;
    let new = conv_status(&status, "8110009");
    assert_eq!(new["messages_written"].as_u64(), Some(6), "{new}");
    assert_eq!(new["discovered"], Value::Bool(true));
    assert_eq!(
        new["configured"].as_str(),
        fx.provider.conversation_id("8110009").map(|c| format!("conv:{c}")).as_deref()
    );
    assert_eq!(
        conv_status(&status, GROUP)["messages_written"].as_u64(),
        Some(fx.sim.sim.group_events(GROUP).len() as u64)
    );
    let inbox = &status["pipelines"][0]["inbox"];
    assert_eq!(inbox["conversations_discovered"].as_u64(), Some(4), "{inbox}");
    assert_eq!(inbox["messages_written"].as_u64(), Some(records.len() as u64));
    let text = fx.cmd(&["status"]).run().await;
    assert!(text.stdout.contains("inbox: 4 conversations discovered"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_conversation_both_listed_and_in_the_x_inbox_is_written_once() {
    let listed = ["8110001", "conv:1578398451921985538"];
    let peers: Vec<String> = listed.iter().map(|s| s.to_string()).collect();
    let fx = Fixture::with_peers_for(Provider::XApiV2, x_cfg(812), &peers, "inbox = true").await;
    for round in 0..4 {
        fx.sync().await.expect_code(0);
        for p in ["8110001", "8110002", "8110007"] {
            fx.sim.sim.add_messages(p, 3 + round);
        }
    }
    fx.sync().await.expect_code(0);
    let records = fx.records();
    assert_inbox_exactly_once(&records, &fx, &["8110001", "8110002", "8110003", "8110007"], false);
    // Both routes ran for the listed ones; each record names the route that wrote it.
    let routes: BTreeSet<&str> = records.iter().filter_map(|r| str_field(r, "source_endpoint")).collect();
    assert!(routes.contains("GET /2/dm_events"), "{routes:?}");
    let stats = fx.sim.sim.stats();
    assert!(requests(&stats, "GET", "/2/dm_conversations/with/8110001/dm_events") >= 5, "the listed route ran too");
    // Counters agree with the files for a conversation written both ways.
    let status = fx.status_json().await;
    let n = records.iter().filter(|r| str_field(r, "conversation_user_id") == Some("8110001")).count();
    assert_eq!(conv_status(&status, "8110001")["messages_written"].as_u64(), Some(n as u64));
    let g = records.iter().filter(|r| str_field(r, "conversation_id") == Some(GROUP)).count();
    assert_eq!(conv_status(&status, GROUP)["messages_written"].as_u64(), Some(g as u64));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn getxapi_discovers_conversations_in_its_tabs_and_syncs_each_like_a_listed_one() {
    let mut cfg = sim_config(
        813,
        convs(&[
            ("8130001", 140, CursorStyle::MaxId),
            ("8130002", 30, CursorStyle::Offset),
            ("8130003", 12, CursorStyle::Offset),
            ("8130004", 9, CursorStyle::Offset),
        ]),
    );
    cfg.groups = vec![group(60)];
    cfg.page_size = (100, 100);
    cfg.getxapi_request_conversations = vec!["8130003".into()];
    cfg.getxapi_hidden_conversations = vec!["8130004".into()];
    // 8130002 is listed and discovered; the hidden tab is not walked.
    let fx = Fixture::with_peers_for(
        Provider::GetXApi,
        cfg,
        &["8130002".to_string()],
        "inbox = true\ninbox_tabs = [\"all\", \"requests\"]",
    )
    .await;
    fx.sync().await.expect_code(0);
    let records = fx.records();
    assert_inbox_exactly_once(&records, &fx, &["8130001", "8130002", "8130003"], true);
    assert!(
        records.iter().all(|r| str_field(r, "conversation_user_id") != Some("8130004")),
        "the hidden tab is not walked"
    );
    let stats = fx.sim.sim.stats();
    assert!(requests(&stats, "POST", "/twitter/dm/list") >= 2, "both tabs");
    assert_eq!(
        fx.sim.sim.getxapi_history_requests(&fx.provider.conversation_id("8130002").unwrap()),
        1,
        "listed and discovered, read once"
    );
    let other = tempfile::tempdir().unwrap();
    let listed = listed_records(&fx, other.path(), &["8130001", "8130002", "8130003", &format!("conv:{GROUP}")]).await;
    assert_same_records_as_listed(&records, &listed, None);

    // A new conversation after the first run, and news in a discovered one.
    fx.sim.sim.add_messages("8130008", 4);
    fx.sim.sim.add_messages("8130001", 2);
    fx.sync().await.expect_code(0);
    let records = fx.records();
    assert_inbox_exactly_once(&records, &fx, &["8130001", "8130002", "8130003", "8130008"], true);
    let status = fx.status_json().await;
    assert_eq!(conv_status(&status, "8130008")["messages_written"].as_u64(), Some(4));
    assert_eq!(conv_status(&status, "8130008")["discovered"], Value::Bool(true));
    assert_eq!(conv_status(&status, "8130002").get("discovered"), None, "a listed one stays listed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_refuses_an_inbox_for_xquik() {
    let fx = Fixture::new(sim_config(814, vec![conv("8140001", 3, CursorStyle::Offset)]), "inbox = true").await;
    let out = fx.cmd(&["check"]).run().await;
    out.expect_code(2);
    assert_eq!(out.error_lines().len(), 1, "{out}");
    assert!(out.stderr.contains("inbox = true") && out.stderr.contains("Xquik has no inbox route"), "{out}");
}
