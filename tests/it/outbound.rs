//! SPEC section 6 (issue 4): `send`, `lookup` and `upload-media` against the simulator. A send job sends
//! once and records once (`dm_send`, SPEC section 4), through repeats, a crash between the provider's
//! answer and the record, 202-then-poll answers, the legacy contract, refusals and rate-limit storms;
//! media is checked before anything is spent; no message text reaches stdout or stderr.

use std::path::Path;

use dm_handoff_simulator::{
    CursorStyle, Faults, SendStyle, SimConfig, SimConversation, SimWriteAction, Stats, WriteFault, WriteFaultKind,
};
use serde_json::Value;

use crate::support::*;

/// The route template of the send endpoint, as the simulator books it.
const SEND: &str = "POST /x/dm/{userId}";
const MEDIA: &str = "POST /x/media";
const POLL: &str = "GET /x/write-actions/{id}";
const USER: &str = "GET /x/users/{id}";
/// The test-only hook that aborts right after the provider answered a send.
const CRASH_ENV: &str = "DM_HANDOFF_TEST_CRASH_AFTER_SEND";

/// A 1×1 PNG.
const PNG: &[u8] = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR\0\0\0\x01\0\0\0\x01\x08\x06\0\0\0\x1f\x15\xc4\x89\0\0\0\rIDAT\x78\x9c\x63\0\x01\0\0\x05\0\x01\x0d\x0a\x2d\xb4\0\0\0\0IEND\xaeB`\x82";

fn routed(stats: &Stats, route: &str) -> u64 {
    stats.by_route.get(route).copied().unwrap_or(0)
}

/// A simulator with one conversation per peer (3 messages each) and the harness's key and account.
fn world(seed: u64, peers: &[&str]) -> SimConfig {
    sim_config(seed, peers.iter().map(|p| conv(p, 3, CursorStyle::MaxId)).collect())
}

/// The `dm_send` records in the files.
fn send_records(fx: &Fixture) -> Vec<Value> {
    fx.records().into_iter().filter(|r| str_field(r, "kind") == Some("dm_send")).collect()
}

/// The raw lines of the output files, for checks of field order.
fn raw_lines(fx: &Fixture) -> Vec<String> {
    handoff_files(&fx.out_dir())
        .iter()
        .flat_map(|f| String::from_utf8(f.bytes.clone()).unwrap().lines().map(str::to_string).collect::<Vec<_>>())
        .collect()
}

/// Checks a `dm_send` line field for field, in the SPEC's order, against the simulator's ground truth:
/// the newest message of `peer` must be the one sent, with this text and media.
fn assert_send_line(fx: &Fixture, line: &str, peer: &str, text: &str, media_id: Option<&str>) -> Value {
    let r: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
    let id = str_field(&r, "message_id").expect("message_id is a string").to_string();
    let key = str_field(&r, "idempotency_key").expect("idempotency_key").to_string();
    let sent_at = str_field(&r, "sent_at").expect("sent_at").to_string();
    assert!(is_millis_z(&sent_at), "sent_at {sent_at:?}");
    let media = media_id.map(|m| format!(r#","media_id":"{m}","media_ids":["{m}"]"#)).unwrap_or_default();
    let expected = format!(
        r#"{{"kind":"dm_send","provider":"xquik","pipeline":"{PIPELINE}","account":"{ACCOUNT}","conversation_user_id":"{peer}","message_id":"{id}","send_status":"sent","text":{}{media},"idempotency_key":{},"source_endpoint":"POST /x/dm/{{userId}}","sent_at":"{sent_at}"}}"#,
        serde_json::to_string(text).unwrap(),
        serde_json::to_string(&key).unwrap(),
    );
    assert_eq!(line, expected, "the dm_send record, field for field and in order");
    let sent = fx
        .sim
        .sim
        .messages(peer)
        .into_iter()
        .find(|m| m.id == id)
        .unwrap_or_else(|| panic!("the simulator has no message {id}"));
    assert_eq!(sent.text.as_deref(), Some(text), "the provider got the text unchanged");
    assert_eq!(sent.sender_id, dm_handoff_simulator::Simulator::account_id(ACCOUNT), "sent by the account");
    if fx.sim.sim.config().send_style == SendStyle::WriteAction {
        assert_eq!(sent.created_at, sent_at, "sent_at is the provider's completion time");
    } else {
        // The legacy answer has no time: sent_at is when the answer came.
        let at = humantime::parse_rfc3339(&sent_at).expect("RFC 3339");
        let age = std::time::SystemTime::now().duration_since(at).expect("not in the future");
        assert!(age < std::time::Duration::from_secs(600), "sent_at {sent_at} is now");
    }
    r
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_text_send_writes_one_spec_record_and_a_repeat_sends_nothing() {
    let peer = "4010001";
    let fx = Fixture::new(world(401, &[peer]), "").await;
    let text = "Thanks, fixed! \"quoted\" ✓ zqsend0001";
    let out = fx.cmd(&["send", "--pipeline", PIPELINE, "--to", peer, "--text", text]).run().await;
    out.expect_code(0);
    let lines = raw_lines(&fx);
    assert_eq!(lines.len(), 1, "one record\n{out}");
    let r = assert_send_line(&fx, &lines[0], peer, text, None);
    let id = str_field(&r, "message_id").unwrap();
    let key = str_field(&r, "idempotency_key").unwrap();
    assert!(key.starts_with("dmh-"), "a default key: {key}");
    assert_eq!(out.stdout.trim(), format!("sent {id} to {peer} (idempotency key {key})"));
    assert!(!out.all().contains("zqsend0001"), "no text in the output\n{out}");

    // The same job again: nothing is asked of the provider, nothing is written.
    let again = fx.cmd(&["send", "--to", peer, "--text", text]).run().await;
    again.expect_code(0);
    assert!(again.stdout.starts_with(&format!("already sent {id} to {peer}")), "{again}");
    let stats = fx.sim.sim.stats();
    assert_eq!((stats.sends, routed(&stats, SEND)), (1, 1), "one send, one request");
    assert_eq!(raw_lines(&fx).len(), 1);

    // History sync sees the same DM as an outbound message; the send stays one record.
    fx.sync().await.expect_code(0);
    let records = fx.records();
    let sends: Vec<_> = records.iter().filter(|r| str_field(r, "kind") == Some("dm_send")).collect();
    assert_eq!(sends.len(), 1);
    let as_message: Vec<_> = records
        .iter()
        .filter(|r| str_field(r, "kind") == Some("dm_message") && str_field(r, "message_id") == Some(id))
        .collect();
    assert_eq!(as_message.len(), 1);
    assert_eq!(str_field(as_message[0], "direction"), Some("outbound"));
    assert_eq!(records.len(), 1 + 4, "the send and the four messages of the conversation");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_media_send_from_a_file_uploads_once_and_records_the_media_id() {
    let peer = "4020001";
    let fx = Fixture::new(world(402, &[peer]), "").await;
    std::fs::create_dir_all(fx.cwd()).unwrap();
    std::fs::write(fx.cwd().join("pic.png"), PNG).unwrap();
    let text = "Here is the screenshot zqmedia001";
    // A relative path is taken from the working folder.
    let args = ["send", "--to", peer, "--text", text, "--media", "pic.png"];
    let out = fx.cmd(&args).run().await;
    out.expect_code(0);
    let stats = fx.sim.sim.stats();
    assert_eq!((stats.uploads, stats.sends, routed(&stats, MEDIA)), (1, 1, 1));
    let newest = fx.sim.sim.messages(peer).remove(0);
    let media_url = newest.media_url.clone().expect("the DM carries the upload");
    let media_id =
        media_url.rsplit('/').next().unwrap().strip_suffix(".png").expect("uploaded as a PNG file").to_string();
    let lines = raw_lines(&fx);
    assert_eq!(lines.len(), 1);
    assert_send_line(&fx, &lines[0], peer, text, Some(&media_id));
    assert!(out.stdout.contains(&format!("media {media_id}")), "{out}");

    let again = fx.cmd(&args).run().await;
    again.expect_code(0);
    assert!(again.stdout.starts_with("already sent"), "{again}");
    let stats = fx.sim.sim.stats();
    assert_eq!((stats.uploads, stats.sends, stats.requests), (1, 1, 2), "nothing more was asked");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_media_send_from_a_url_and_the_legacy_contract() {
    let peer = "4030001";
    for style in [SendStyle::WriteAction, SendStyle::Legacy] {
        let fx = Fixture::new(SimConfig { send_style: style, ..world(403, &[peer]) }, "").await;
        let text = "A picture by URL zqurlpic01";
        let out = fx
            .cmd(&["send", "--to", peer, "--text", text, "--media", "https://cdn.example.com/a/cat.webp?v=2"])
            .run()
            .await;
        out.expect_code(0);
        let newest = fx.sim.sim.messages(peer).remove(0);
        let media_url = newest.media_url.expect("the DM carries the upload");
        let media_id = media_url.rsplit('/').next().unwrap().strip_suffix(".webp").expect("the URL's type").to_string();
        let lines = raw_lines(&fx);
        assert_eq!(lines.len(), 1, "{style:?}");
        assert_send_line(&fx, &lines[0], peer, text, Some(&media_id));
        let stats = fx.sim.sim.stats();
        assert_eq!((stats.uploads, stats.sends), (1, 1), "{style:?}");

        let plain = "Text only, old contract or new zqurlpic02";
        fx.cmd(&["send", "--to", peer, "--text", plain]).run().await.expect_code(0);
        let lines = raw_lines(&fx);
        assert_send_line(&fx, &lines[1], peer, plain, None);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_username_recipient_is_looked_up_once_and_cached() {
    let peer = "4040001";
    let cfg = sim_config(
        404,
        vec![SimConversation {
            peer_id: peer.into(),
            username: Some("dana_ops".into()),
            messages: 2,
            can_dm: Some(true),
            ..SimConversation::default()
        }],
    );
    let fx = Fixture::new(cfg, "").await;
    fx.cmd(&["send", "--to", "@dana_ops", "--text", "first zquser0001"]).run().await.expect_code(0);
    fx.cmd(&["send", "--to", "@Dana_Ops", "--text", "second zquser0002"]).run().await.expect_code(0);
    let stats = fx.sim.sim.stats();
    assert_eq!((routed(&stats, USER), stats.sends), (1, 2), "one lookup, cached in state");
    let lines = raw_lines(&fx);
    assert_eq!(lines.len(), 2);
    assert_send_line(&fx, &lines[0], peer, "first zquser0001", None);
    assert_send_line(&fx, &lines[1], peer, "second zquser0002", None);

    // `lookup` prints what the provider says, canDm included, as text or JSON.
    let out = fx.cmd(&["lookup", "@dana_ops"]).run().await;
    out.expect_code(0);
    for want in
        [format!("id        {peer}"), "username  dana_ops".into(), "name      Dana Ops".into(), "canDm     true".into()]
    {
        assert!(out.stdout.contains(&want), "{want:?} in\n{out}");
    }
    let out = fx.cmd(&["lookup", peer, "--json"]).run().await;
    out.expect_code(0);
    let v: Value = serde_json::from_str(&out.stdout).expect("one JSON object");
    assert_eq!(v, serde_json::json!({ "id": peer, "username": "dana_ops", "name": "Dana Ops", "canDm": true }));
    let out = fx.cmd(&["lookup", "@nobody_here"]).run().await;
    out.expect_code(1);
    assert_eq!(out.error_lines().len(), 1, "{out}");
    assert!(out.stderr.contains("user_not_found"), "{out}");
    let out = fx.cmd(&["lookup", "nobody"]).run().await;
    out.expect_code(2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_between_the_answer_and_the_record_is_recovered_with_the_same_key() {
    let peer = "4050001";
    let fx = Fixture::new(world(405, &[peer]), "").await;
    std::fs::create_dir_all(fx.cwd()).unwrap();
    let pic = fx.cwd().join("crash.png");
    std::fs::write(&pic, PNG).unwrap();
    let text = "Sent exactly once zqcrash001";
    let args = ["send", "--to", peer, "--text", text, "--media", pic.to_str().unwrap()];
    let out = fx.cmd(&args).env(CRASH_ENV, "1").run().await;
    assert!(killed_by(&out.status, libc::SIGABRT), "the hook aborts the process\n{out}");
    let stats = fx.sim.sim.stats();
    assert_eq!((stats.uploads, stats.sends), (1, 1), "the provider sent it");
    assert!(raw_lines(&fx).is_empty(), "but nothing was recorded");

    let out = fx.cmd(&args).run().await;
    out.expect_code(0);
    assert!(out.stdout.contains("resumed with the same key"), "{out}");
    let stats = fx.sim.sim.stats();
    assert_eq!((stats.uploads, stats.sends), (1, 1), "asking again did not send again");
    assert_eq!(
        (routed(&stats, MEDIA), routed(&stats, SEND)),
        (1, 2),
        "the ledger kept the media ID; the send was asked twice"
    );
    let newest = fx.sim.sim.messages(peer).remove(0);
    let media_id = newest
        .media_url
        .as_deref()
        .and_then(|u| u.rsplit('/').next())
        .and_then(|n| n.strip_suffix(".png"))
        .unwrap()
        .to_string();
    let lines = raw_lines(&fx);
    assert_eq!(lines.len(), 1, "one record");
    let r = assert_send_line(&fx, &lines[0], peer, text, Some(&media_id));
    assert_eq!(str_field(&r, "message_id"), Some(newest.id.as_str()));

    // And once recorded, the job is done for good.
    let out = fx.cmd(&args).run().await;
    out.expect_code(0);
    assert!(out.stdout.starts_with("already sent"), "{out}");
    assert_eq!(fx.sim.sim.stats().sends, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_202_answer_is_polled_until_the_send_is_confirmed() {
    let peer = "4060001";
    let mut cfg = world(406, &[peer, "4060002"]);
    cfg.faults =
        Faults { pending_peers: vec![peer.into()], pending_polls: 3, pending_retry_after_secs: 0, ..Faults::default() };
    let fx = Fixture::new(cfg, "").await;
    let text = "Confirmed later zqpoll0001";
    let out = fx.cmd(&["send", "--to", peer, "--text", text]).run().await;
    out.expect_code(0);
    let stats = fx.sim.sim.stats();
    assert_eq!((stats.sends, routed(&stats, SEND), routed(&stats, POLL)), (1, 1, 3), "polled until confirmed");
    assert_eq!(stats.by_status.get(&202), Some(&3), "the POST and two polls were pending");
    let lines = raw_lines(&fx);
    assert_eq!(lines.len(), 1);
    let r = assert_send_line(&fx, &lines[0], peer, text, None);
    assert!(out.stdout.contains(str_field(&r, "message_id").unwrap()), "{out}");

    // A crash after a polled send: the rerun asks again with the same key and gets the confirmed write.
    let second = "Pending across a crash zqpoll0002";
    let out = fx.cmd(&["send", "--to", peer, "--text", second]).env(CRASH_ENV, "1").run().await;
    assert!(killed_by(&out.status, libc::SIGABRT), "{out}");
    fx.cmd(&["send", "--to", peer, "--text", second]).run().await.expect_code(0);
    assert_eq!(fx.sim.sim.stats().sends, 2);
    let lines = raw_lines(&fx);
    assert_eq!(lines.len(), 2);
    assert_send_line(&fx, &lines[1], peer, second, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn x_dm_not_allowed_is_explained_and_not_retried() {
    let peer = "4070001";
    let mut cfg = world(407, &[peer]);
    cfg.faults = Faults { dm_not_allowed_peers: vec![peer.into()], ..Faults::default() };
    let fx = Fixture::new(cfg, "").await;
    let out = fx.cmd(&["send", "--to", peer, "--text", "Not welcome zqnotallow"]).run().await;
    out.expect_code(1);
    let errors = out.error_lines();
    assert_eq!(errors.len(), 1, "{out}");
    for want in ["x_dm_not_allowed", "another permitted connected account", "allow messages"] {
        assert!(errors[0].contains(want), "{want:?} in {:?}", errors[0]);
    }
    assert!(!out.all().contains("zqnotallow"), "{out}");
    let stats = fx.sim.sim.stats();
    assert_eq!((routed(&stats, SEND), stats.sends), (1, 0), "asked once, never retried");
    assert!(raw_lines(&fx).is_empty());

    // Once the recipient allows messages, the same job goes through (same key; nothing was sent before).
    fx.sim.sim.set_faults(Faults::default());
    fx.cmd(&["send", "--to", peer, "--text", "Not welcome zqnotallow"]).run().await.expect_code(0);
    assert_eq!(fx.sim.sim.stats().sends, 1);
    assert_eq!(send_records(&fx).len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reused_idempotency_key_is_refused_and_explained() {
    let peer = "4080001";
    let fx = Fixture::new(world(408, &[peer]), "").await;
    fx.cmd(&["send", "--to", peer, "--text", "Original zqconflic1", "--idempotency-key", "ticket-77"])
        .run()
        .await
        .expect_code(0);
    let r = send_records(&fx).remove(0);
    assert_eq!(str_field(&r, "idempotency_key"), Some("ticket-77"));

    // Same key, other text, same state: refused from the ledger, before any request.
    let out =
        fx.cmd(&["send", "--to", peer, "--text", "Changed zqconflic2", "--idempotency-key", "ticket-77"]).run().await;
    out.expect_code(2);
    assert_eq!(out.error_lines().len(), 1, "{out}");
    assert!(out.stderr.contains("idempotency_conflict") && out.stderr.contains("new --idempotency-key"), "{out}");
    assert_eq!(routed(&fx.sim.sim.stats(), SEND), 1);

    // Same key, other text, another state directory: the provider answers 409, which is explained.
    let other = tempfile::tempdir().unwrap();
    let config = write_config(other.path(), &fx.sim.base_url(), &[peer], "");
    let out = Cmd::new(&["send", "--to", peer, "--text", "Changed zqconflic2", "--idempotency-key", "ticket-77"])
        .config(&config)
        .run()
        .await;
    out.expect_code(1);
    assert_eq!(out.error_lines().len(), 1, "{out}");
    for want in ["idempotency_conflict", "ticket-77", "original message", "new --idempotency-key"] {
        assert!(out.stderr.contains(want), "{want:?} in\n{out}");
    }
    assert!(!out.all().contains("zqconflic"), "{out}");
    let stats = fx.sim.sim.stats();
    assert_eq!((routed(&stats, SEND), stats.sends, stats.by_status.get(&409).copied()), (2, 1, Some(1)));
    assert!(read_records(&other.path().join("out").join(PIPELINE)).is_empty());

    // The original message under the same key, from that other state: the provider replays the first send.
    let out = Cmd::new(&["send", "--to", peer, "--text", "Original zqconflic1", "--idempotency-key", "ticket-77"])
        .config(&config)
        .run()
        .await;
    out.expect_code(0);
    assert!(out.stdout.contains(str_field(&r, "message_id").unwrap()), "{out}");
    assert_eq!(fx.sim.sim.stats().sends, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn media_is_checked_before_anything_is_spent() {
    let peer = "4090001";
    let fx = Fixture::new(world(409, &[peer]), "").await;
    let dir = fx.cwd();
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("notes.txt"), b"not a picture").unwrap();
    std::fs::write(dir.join("fake.png"), b"not a picture either").unwrap();
    std::fs::write(dir.join("photo.gif"), PNG).unwrap();
    std::fs::File::create(dir.join("huge.mp4")).unwrap().set_len(15_728_641).unwrap();
    for (media, code) in [
        ("notes.txt", "unsupported_media"),
        ("fake.png", "unsupported_media"),
        ("photo.gif", "media_type_mismatch"),
        ("huge.mp4", "media_too_large"),
        ("missing.png", "media_unreadable"),
        ("http://cdn.example.com/a.png", "https://"),
        ("https://cdn.example.com/a.bmp", "unsupported_media"),
    ] {
        let out = fx.cmd(&["send", "--to", peer, "--text", "with bad media", "--media", media]).run().await;
        out.expect_code(2);
        assert_eq!(out.error_lines().len(), 1, "{media}\n{out}");
        assert!(out.stderr.contains(code), "{code:?} for {media}\n{out}");
        let out = fx.cmd(&["upload-media", media]).run().await;
        out.expect_code(2);
        assert!(out.stderr.contains(code), "{code:?} for upload-media {media}\n{out}");
    }
    assert_eq!(fx.sim.sim.stats().requests, 0, "not one request, not one credit");
    assert!(!fx.state_dir().exists(), "a refused send touches no state");

    // A good one: uploaded once, however often it is asked for.
    std::fs::write(dir.join("ok.png"), PNG).unwrap();
    let out = fx.cmd(&["upload-media", "ok.png"]).run().await;
    out.expect_code(0);
    let media_id =
        out.stdout.lines().find_map(|l| l.strip_prefix("media_id")).map(str::trim).expect("media_id line").to_string();
    assert!(out.stdout.contains(&format!("https://media.xquik.com/uploads/{media_id}.png")), "{out}");
    fx.cmd(&["upload-media", "ok.png"]).run().await.expect_code(0);
    assert_eq!(fx.sim.sim.stats().uploads, 1, "the same upload again is replayed, not repeated");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_of_50_rides_out_a_rate_limit_storm_and_sends_each_job_once() {
    let peers = ["4100001", "4100002", "4100003", "4100004", "4100005"];
    let mut cfg = world(410, &peers);
    cfg.conversations[4].username = Some("batch_peer".into());
    // Slow enough that the storm lands in the middle of the batch.
    cfg.faults = Faults { slow_ms: 30, ..Faults::default() };
    let fx = Fixture::new(cfg, "").await;
    let jobs_dir = fx.dir.path().join("jobs");
    std::fs::create_dir_all(&jobs_dir).unwrap();
    std::fs::write(jobs_dir.join("pic.png"), PNG).unwrap();
    let mut lines = Vec::new();
    let mut expected = Vec::new();
    for i in 1..=50usize {
        let peer = peers[i % 5];
        let to = if i % 5 == 4 { "@batch_peer".to_string() } else { peer.to_string() };
        let text = format!("Batch message {i} zqb{i:07}");
        let mut job = serde_json::json!({ "to": to, "text": text });
        if i == 10 {
            job["media"] = "pic.png".into(); // relative to the jobs file
        }
        if i == 20 {
            job["media"] = "https://cdn.example.com/b/20.jpg".into();
        }
        if i % 7 == 0 {
            job["idempotency_key"] = format!("crm-{i}").into();
        }
        lines.push(job.to_string());
        expected.push((peer, text));
    }
    let jobs = jobs_dir.join("jobs.jsonl");
    std::fs::write(&jobs, lines.join("\n") + "\n").unwrap();

    let child = fx.cmd(&["send", "--jobs", jobs.to_str().unwrap()]).spawn();
    wait_until("20 jobs are sent", || fx.sim.sim.stats().sends >= 20).await;
    fx.sim.sim.set_faults(Faults { storm: 40, retry_after_secs: 0, slow_ms: 30, ..Faults::default() });
    let out = child.wait().await;
    out.expect_code(0);

    let stats = fx.sim.sim.stats();
    assert_eq!(stats.by_status.get(&429), Some(&40), "the storm was served in full");
    // All 40 landed on consecutive sends of one job: far more than `max_retries` (12), ridden out with the same key.
    assert_eq!(routed(&stats, SEND), 50 + 40, "the storm hit sends in the middle of the batch");
    assert_eq!((stats.sends, stats.uploads), (50, 2), "every job sent once");
    let result_lines: Vec<&str> = out.stdout.lines().filter(|l| l.starts_with("job ")).collect();
    assert_eq!(result_lines.len(), 50, "{out}");
    for (i, l) in result_lines.iter().enumerate() {
        assert!(l.starts_with(&format!("job {}: sent ", i + 1)), "{l}");
    }
    assert!(out.stdout.contains("summary: 50 jobs: 50 sent, 0 already sent, 0 failed; "), "{out}");
    assert!(!out.all().contains("zqb"), "no text in the output\n{out}");

    let records = send_records(&fx);
    assert_eq!(records.len(), 50, "one record per job");
    assert_no_duplicates(&records);
    for (i, (peer, text)) in expected.iter().enumerate() {
        let mine: Vec<_> = records.iter().filter(|r| str_field(r, "text") == Some(text.as_str())).collect();
        assert_eq!(mine.len(), 1, "job {}", i + 1);
        let r = mine[0];
        assert_eq!(str_field(r, "conversation_user_id"), Some(*peer), "job {}", i + 1);
        let n = i + 1;
        if n % 7 == 0 {
            assert_eq!(str_field(r, "idempotency_key"), Some(format!("crm-{n}").as_str()));
        }
        assert_eq!(r.get("media_id").is_some(), n == 10 || n == 20, "job {n}");
        let truth = fx.sim.sim.messages(peer);
        let sent =
            truth.iter().find(|m| Some(m.id.as_str()) == str_field(r, "message_id")).expect("the simulator has it");
        assert_eq!(sent.text.as_deref(), Some(text.as_str()));
    }

    // The same file again: all already sent, nothing asked of the provider but nothing at all.
    let before = fx.sim.sim.stats().requests;
    let out = fx.cmd(&["send", "--jobs", jobs.to_str().unwrap()]).run().await;
    out.expect_code(0);
    assert_eq!(out.stdout.lines().filter(|l| l.contains(": already sent ")).count(), 50, "{out}");
    assert!(out.stdout.contains("summary: 50 jobs: 0 sent, 50 already sent, 0 failed; 0 credits"), "{out}");
    assert_eq!(fx.sim.sim.stats().requests, before);
    assert_eq!(send_records(&fx).len(), 50);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_reports_failed_jobs_and_goes_on() {
    let peers = ["4110001", "4110002"];
    let mut cfg = world(411, &peers);
    cfg.faults = Faults { dm_not_allowed_peers: vec![peers[1].into()], ..Faults::default() };
    let fx = Fixture::new(cfg, "").await;
    let jobs = fx.dir.path().join("jobs.jsonl");
    let text = |n: u32| format!("Job text {n} zqfail{n:04}");
    std::fs::write(
        &jobs,
        [
            serde_json::json!({ "to": peers[0], "text": text(1) }),
            serde_json::json!({ "to": peers[1], "text": text(2) }),
            serde_json::json!({ "to": peers[0], "text": text(3), "media": "missing.png" }),
            serde_json::json!({ "to": peers[0], "text": text(4) }),
        ]
        .iter()
        .map(Value::to_string)
        .collect::<Vec<_>>()
        .join("\n"),
    )
    .unwrap();
    let out = fx.cmd(&["send", "--jobs", jobs.to_str().unwrap()]).run().await;
    out.expect_code(1);
    let l: Vec<&str> = out.stdout.lines().collect();
    assert!(l[0].starts_with("job 1: sent "), "{out}");
    assert!(l[1].starts_with("job 2: failed: x_dm_not_allowed: "), "{out}");
    assert!(l[2].starts_with("job 3: failed: media_unreadable: "), "{out}");
    assert!(l[3].starts_with("job 4: sent "), "{out}");
    assert!(l[4].starts_with("summary: 4 jobs: 2 sent, 0 already sent, 2 failed; "), "{out}");
    assert_eq!(out.error_lines().len(), 1, "{out}");
    assert_eq!(send_records(&fx).len(), 2);
    assert!(!out.all().contains("zqfail"), "{out}");

    // A malformed file is refused as a whole, before any job runs, naming the line but not its text.
    let bad = fx.dir.path().join("bad.jsonl");
    std::fs::write(
        &bad,
        format!(
            "{}\n{{\"to\":\"{}\",\"txt\":\"zqfail0009\"}}\n",
            serde_json::json!({ "to": peers[0], "text": text(8) }),
            peers[0]
        ),
    )
    .unwrap();
    let before = fx.sim.sim.stats().requests;
    let out = fx.cmd(&["send", "--jobs", bad.to_str().unwrap()]).run().await;
    out.expect_code(2);
    assert!(out.stderr.contains("line 2"), "{out}");
    assert!(!out.all().contains("zqfail"), "{out}");
    assert_eq!(fx.sim.sim.stats().requests, before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_message_text_in_any_output_at_trace_level() {
    let peers = ["4120001", "4120002"];
    let mut cfg = world(412, &peers);
    cfg.faults = Faults {
        dm_not_allowed_peers: vec![peers[1].into()],
        pending_peers: vec![peers[0].into()],
        pending_retry_after_secs: 0,
        rate_limit: 0.2,
        retry_after_secs: 0,
        // Lost answers (SPEC 8.8) take the read-back path and its `outcome unknown` line: privately too.
        write_faults: vec![
            WriteFault::new(WriteFaultKind::Garble).peer(peers[1]).times(1),
            WriteFault::new(WriteFaultKind::ServerError).peer(peers[0]).action(SimWriteAction::Send).times(1),
        ],
        ..Faults::default()
    };
    let fx = Fixture::new(cfg, "max_retries = 40").await;
    std::fs::create_dir_all(fx.cwd()).unwrap();
    std::fs::write(fx.cwd().join("p.png"), PNG).unwrap();
    let texts: Vec<String> = (1..=6).map(|i| format!("Private words number {i} zqpriv{i:04}")).collect();
    let jobs = fx.dir.path().join("jobs.jsonl");
    std::fs::write(
        &jobs,
        texts[2..5]
            .iter()
            .enumerate()
            .map(|(i, t)| serde_json::json!({ "to": peers[i % 2], "text": t }).to_string())
            .collect::<Vec<_>>()
            .join("\n"),
    )
    .unwrap();
    let runs = [
        fx.cmd(&["send", "--to", peers[0], "--text", &texts[0], "--media", "p.png", "--log-level", "trace"])
            .run()
            .await,
        fx.cmd(&["send", "--to", peers[1], "--text", &texts[1]]).env("RUST_LOG", "trace").run().await,
        fx.cmd(&["send", "--jobs", jobs.to_str().unwrap(), "--log-level", "trace", "--log-format", "json"]).run().await,
        fx.cmd(&["send", "--to", peers[0], "--text", &texts[0], "--media", "p.png"])
            .env("RUST_LOG", "trace")
            .env(CRASH_ENV, "1")
            .run()
            .await,
        fx.cmd(&["send", "--to", peers[0], "--text", &texts[5], "--idempotency-key", "dup"])
            .env("RUST_LOG", "trace")
            .run()
            .await,
        fx.cmd(&["send", "--to", peers[0], "--text", &texts[4], "--idempotency-key", "dup"])
            .env("RUST_LOG", "trace")
            .run()
            .await,
    ];
    assert_eq!(runs[0].code(), Some(0), "{}", runs[0]);
    assert!(runs[0].stdout.contains("confirmed by history"), "the lost answer was read back\n{}", runs[0]);
    assert_eq!(runs[1].code(), Some(1), "{}", runs[1]);
    assert_eq!(runs[2].code(), Some(1), "{}", runs[2]);
    assert!(
        runs[0].stderr.contains("DEBUG") && runs[1].stderr.contains("TRACE"),
        "trace logging is on\n{}\n{}",
        runs[0],
        runs[1]
    );
    assert!(send_records(&fx).len() >= 3, "texts reached the files");
    for out in &runs {
        for t in &texts {
            let json = serde_json::to_string(t).unwrap();
            for needle in [t.as_str(), &json[1..json.len() - 1], &t[t.len() - 10..]] {
                assert!(
                    !out.stdout.contains(needle) && !out.stderr.contains(needle),
                    "text leaked by `{}`\n{out}",
                    out.what
                );
            }
        }
    }
}

/// A jobs file in another folder than the working one: relative media is found beside it.
#[test]
fn job_media_paths_are_relative_to_the_jobs_file() {
    let dir = tempfile::tempdir().unwrap();
    let text = "{\"to\":\"1\",\"text\":\"t\",\"media\":\"pics/a.png\"}\n";
    let jobs = dm_handoff::commands::send::parse_jobs(text, dir.path()).unwrap();
    assert_eq!(
        jobs[0].job.media,
        Some(dm_handoff::engine::outbound::MediaSource::File(Path::new(dir.path()).join("pics/a.png")))
    );
}
