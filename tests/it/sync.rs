//! `sync` end to end: every message once with every field per SPEC section 4, incremental syncs that
//! only append, and pages that shift under the client while messages arrive.

use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt;

use dm_handoff_simulator::{CursorStyle, Growth};

use crate::support::*;

for_each_provider!(
    sync_writes_every_message_once_with_every_field_and_then_only_appends,
    pages_that_shift_while_messages_arrive_lose_nothing_and_repeat_nothing,
);

async fn sync_writes_every_message_once_with_every_field_and_then_only_appends(provider: Provider) {
    let peers = ["783214", "1234567890", "44196397", "2244994945"];
    let sizes = [0, 7, 60, 450];
    let convs = peers.iter().zip(sizes).enumerate().map(|(i, (p, n))| conv(p, n, style(i))).collect();
    let fx = Fixture::new_for(provider, sim_config(11, convs), "").await;

    let out = fx.sync().await;
    out.expect_code(0);
    assert!(out.stdout.contains(PIPELINE), "the summary names the pipeline on stdout\n{out}");
    let records = fx.assert_exactly_once();
    assert_eq!(records.len(), 517);
    fx.assert_spec_fields(&records);
    // The check above ran with the seen set folded into ranges (the 450-message conversation at least).
    fx.assert_seen_set_folded(&records);

    // The scenario must have exercised the optional fields, or the field checks prove little.
    let truth: Vec<_> = peers.iter().flat_map(|p| fx.sim.sim.messages(p)).collect();
    assert!(truth.iter().any(|m| m.created_at_omitted), "some messages come without createdAt");
    assert!(truth.iter().any(|m| m.text.is_none()), "some messages have no text");
    assert!(truth.iter().any(|m| m.media_url.is_some()), "some messages have media");
    assert!(
        truth.iter().any(|m| m.text.as_deref().is_some_and(|t| t.contains('\n') || t.contains('"'))),
        "some texts need escaping"
    );

    // Every page went out with the key and came back 200: cursors were sent back intact (the
    // simulator answers a mangled `+/=` cursor with 400).
    let stats = fx.sim.sim.stats();
    assert_eq!(
        stats.by_status.keys().copied().collect::<Vec<_>>(),
        vec![200],
        "statuses served: {:?}",
        stats.by_status
    );
    assert!(stats.log.iter().all(|r| r.api_key_ok));

    // Files 0640, state directory 0700 or 0750.
    for f in handoff_files(&fx.out_dir()) {
        assert_eq!(f.mode, 0o640, "mode of {}", f.name);
    }
    let state_mode = std::fs::metadata(fx.state_dir()).unwrap().permissions().mode() & 0o777;
    assert!(state_mode == 0o700 || state_mode == 0o750, "state dir mode {state_mode:o}");

    // New messages in two conversations (one of them the empty one): only their lines are appended.
    let before = std::fs::read(fx.active_path()).unwrap();
    let mut added: BTreeSet<String> = fx.sim.sim.add_messages(peers[2], 5).into_iter().collect();
    added.extend(fx.sim.sim.add_messages(peers[0], 3));
    fx.sync().await.expect_code(0);
    let after = std::fs::read(fx.active_path()).unwrap();
    assert!(after.starts_with(&before), "bytes already in the active file changed");
    assert_eq!(line_count(&after) - line_count(&before), added.len(), "lines appended by the second sync");
    let appended: BTreeSet<String> = std::str::from_utf8(&after[before.len()..])
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["message_id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(appended, added, "the appended lines are exactly the new messages");
    let records = fx.assert_exactly_once();
    fx.assert_spec_fields(&records);

    // Nothing new: nothing written, and one request per conversation (the head pass stops at the
    // high-water mark instead of paging through history again).
    let requests_before = all_history_requests(&fx.sim.sim.stats());
    let out = fx.sync().await;
    out.expect_code(0);
    assert_eq!(std::fs::read(fx.active_path()).unwrap(), after, "a sync with nothing new wrote something");
    let requests = all_history_requests(&fx.sim.sim.stats()) - requests_before;
    assert_eq!(requests, peers.len(), "history requests of a sync with nothing new");

    let status = fx.status_json().await;
    let peers: Vec<String> = peers.iter().map(|p| p.to_string()).collect();
    assert_status_matches(&status, &records, &fx.sim.sim, &peers);
    for p in &peers {
        let st = conv_status(&status, p);
        assert!(st["last_error"].is_null(), "last_error after clean syncs: {st}");
        assert!(st["last_sync"].as_str().is_some_and(is_millis_z), "last_sync: {st}");
    }
}

async fn pages_that_shift_while_messages_arrive_lose_nothing_and_repeat_nothing(provider: Provider) {
    const MAX_NEW: usize = 12;
    let mut cfg = sim_config(
        23,
        convs(&[
            ("31000001", 900, CursorStyle::Offset),
            ("31000002", 300, CursorStyle::Offset),
            ("31000003", 40, CursorStyle::MaxId),
        ]),
    );
    cfg.growth = Growth { per_request: 0.3, max_new: MAX_NEW };
    let initial: usize = cfg.conversations.iter().map(|c| c.messages).sum();
    let fx = Fixture::new_for(provider, cfg, "").await;
    let total = |fx: &Fixture| fx.peers.iter().map(|p| fx.sim.sim.messages(p).len()).sum::<usize>();

    fx.sync().await.expect_code(0);
    let first = fx.records();
    assert_no_duplicates(&first);
    // Within that first pass every page was fetched once and no fault was injected, so the
    // simulator serving more messages than were written means pages overlapped as they shifted.
    let served = fx.sim.sim.stats().messages_served;
    assert!(served > first.len() as u64, "pages overlapped: {served} served, {} written", first.len());
    // Syncs until the simulator has no growth left, then one more: by then every message is old
    // enough that one pass must have seen it.
    for _ in 0..15 {
        if total(&fx) == initial + MAX_NEW {
            break;
        }
        fx.sync().await.expect_code(0);
        assert_no_duplicates(&fx.records());
    }
    assert_eq!(total(&fx), initial + MAX_NEW, "messages arrived during the syncs");
    fx.sync().await.expect_code(0);
    fx.assert_exactly_once();
}
