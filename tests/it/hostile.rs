//! SPEC 8.3 and 8.4: hostile or broken providers and ordinary operator mistakes, tried against the real
//! binary the way a new user would meet them. The provider is [`crate::hostile_server`], scripted per test.
//! Each test fails against the code before these rules existed (the comment above it says how).

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::hostile_server::*;
use crate::support::*;

/// The account's own numeric ID in these tests' messages (Xquik names the account by handle).
const ME: &str = "987654321";

/// A config of Xquik pipelines against `base`: (name, conversations, extra keys) each, output in
/// `out/<name>`.
fn config(dir: &Path, base: &str, pipelines: &[(&str, &[&str], &str)]) -> PathBuf {
    let mut text = String::from("state_dir = \"state\"\n");
    for (name, convs, extra) in pipelines {
        let convs: Vec<String> = convs.iter().map(|c| format!("\"{c}\"")).collect();
        text.push_str(&format!(
            "\n[[pipelines]]\nname = \"{name}\"\nprovider = \"xquik\"\nbase_url = \"{base}/api/v1\"\n\
             api_key_env = \"{KEY_VAR}\"\naccount = \"{ACCOUNT}\"\nconversations = [{}]\nschedule = \"* * * * * *\"\n\
             output_dir = \"out/{name}\"\nretry_base = \"20ms\"\nretry_max = \"200ms\"\nrequest_timeout = \"20s\"\n{extra}\n",
            convs.join(", ")
        ));
    }
    let path = dir.join("pipelines.toml");
    fs::write(&path, text).unwrap();
    path
}

/// An X API v2 pipeline with `inbox = true` against the scripted provider at `root`.
fn inbox_config(dir: &Path, root: &str) -> PathBuf {
    let text = format!(
        "state_dir = \"state\"\n\n[[pipelines]]\nname = \"{PIPELINE}\"\nprovider = \"x-api-v2\"\n\
         base_url = \"{root}\"\napi_key_env = \"{KEY_VAR}\"\naccount = \"{ME}\"\ninbox = true\n\
         output_dir = \"out/{PIPELINE}\"\nretry_base = \"20ms\"\nretry_max = \"200ms\"\n"
    );
    let path = dir.join("pipelines.toml");
    fs::write(&path, text).unwrap();
    path
}

fn sync_cmd(dir: &Path, cfg: &Path) -> Cmd {
    Cmd::new(&["sync"]).config(cfg).cwd(dir)
}

/// The `message_id`s of the `dm_message` records of one conversation.
fn message_ids(records: &[Value], peer: &str) -> Vec<String> {
    records
        .iter()
        .filter(|r| str_field(r, "kind") == Some("dm_message") && str_field(r, "conversation_user_id") == Some(peer))
        .filter_map(|r| str_field(r, "message_id").map(str::to_string))
        .collect()
}

// ---------------------------------------------------------------------------------------------
// A key leaves its host

/// Before: reqwest followed the 302 (with `x-api-key`) and the 307 (re-sending GetXAPI's POST body with the
/// `auth_token`) to the other host, and the sync reported success.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirects_are_refused_and_no_key_token_or_body_reaches_another_host() {
    let thief =
        Hostile::start(|_| Reply::json(&json!({"messages": [], "has_next_page": false, "has_more": false}))).await;
    let elsewhere = format!("{}/collect?x=1", thief.root());
    let provider = Hostile::start(move |req| {
        let status = match req.method.as_str() {
            "POST" => 307,
            _ if req.path().starts_with("/2/") => 301,
            _ => 302,
        };
        Reply::status(status, &[("Location", &elsewhere)], &json!({}))
    })
    .await;
    for kind in [Provider::Xquik, Provider::GetXApi, Provider::XApiV2] {
        let dir = tempfile::tempdir().unwrap();
        let base = match kind {
            Provider::Xquik => format!("{}/api/v1", provider.root()),
            _ => provider.root(),
        };
        let cfg = write_config_for(kind, dir.path(), &base, &["44196397"], "");
        let out = sync_cmd(dir.path(), &cfg).env(AUTH_TOKEN_VAR, AUTH_TOKEN).run().await;
        out.expect_code(1);
        let errors = out.error_lines();
        assert_eq!(errors.len(), 1, "{kind:?}: one line\n{out}");
        let status = match kind {
            Provider::Xquik => "HTTP 302",
            Provider::GetXApi => "HTTP 307",
            Provider::XApiV2 => "HTTP 301",
        };
        assert!(errors[0].contains(status), "{kind:?}: names the status: {}", errors[0]);
        assert!(errors[0].contains(&format!("127.0.0.1:{}", thief.port)), "{kind:?}: names the host: {}", errors[0]);
        assert!(!errors[0].contains("collect"), "only the host, not the path: {}", errors[0]);
        assert!(!out.all().contains(KEY) && !out.all().contains(AUTH_TOKEN), "{out}");
    }
    assert_eq!(provider.requests().len(), 3, "one request each, never retried");
    let stolen: Vec<String> = thief.requests().iter().map(Req::all_text).collect();
    assert!(stolen.is_empty(), "requests reached the other host: {stolen:#?}");
}

// ---------------------------------------------------------------------------------------------
// Endless passes

const CYCLE: &str = "7200001";
const SAME: &str = "7200002";
const EMPTY: &str = "7200003";
const HEALTHY: &str = "7200004";

/// Three ways a provider keeps a pass going forever, beside a healthy conversation: a cursor that cycles
/// (A → B → A), fresh cursors with the same messages every time, empty pages with fresh cursors. Messages
/// of `HEALTHY` are in `healthy` (newest first), so a test can add some.
fn endless_provider(healthy: Arc<Mutex<Vec<Value>>>) -> impl Fn(&Req) -> Reply + Send + Sync + 'static {
    let fresh = AtomicUsize::new(0);
    move |req| {
        let Some(peer) = xquik_peer(req) else { return Reply::status(404, &[], &json!({"error": "user_not_found"})) };
        let cursor = req.query("cursor");
        let msg = |n: u64| xquik_msg(&snowflake(n), &peer, ME, &format!("message {n}"));
        let next = format!("fresh-{}", fresh.fetch_add(1, Ordering::SeqCst));
        let page = match (peer.as_str(), cursor.as_deref()) {
            (CYCLE, None) => xquik_page(vec![msg(30)], Some("A")),
            (CYCLE, Some("A")) => xquik_page(vec![msg(20)], Some("B")),
            (CYCLE, Some(_)) => xquik_page(vec![msg(10)], Some("A")),
            (SAME, _) => xquik_page((1..=10).map(msg).collect(), Some(&next)),
            (EMPTY, None) => xquik_page(vec![msg(5)], Some(&next)),
            (EMPTY, Some(_)) => xquik_page(vec![], Some(&next)),
            (HEALTHY, _) => xquik_page(healthy.lock().unwrap().clone(), None),
            _ => return Reply::status(404, &[], &json!({"error": "user_not_found"})),
        };
        Reply::json(&page)
    }
}

/// Before: `sync` never ended (the pass followed the provider's cursors forever). Now each looping
/// conversation stops after a few requests with `cursor_loop`, shown in the report and in `status`, and
/// the healthy one is synced; a second run is bounded the same way and writes nothing twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cursors_that_cycle_or_never_bring_anything_new_stop_with_cursor_loop() {
    let healthy = Arc::new(Mutex::new((1..=3).rev().map(|n| xquik_msg(&snowflake(n), HEALTHY, ME, "hi")).collect()));
    let provider = Hostile::start(endless_provider(healthy)).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), &provider.root(), &[(PIPELINE, &[CYCLE, SAME, EMPTY, HEALTHY], "")]);
    for run in 1..=2 {
        let before = provider.requests().len();
        let started = Instant::now();
        let out = sync_cmd(dir.path(), &cfg).run().await;
        out.expect_code(1);
        assert!(started.elapsed() < Duration::from_secs(30), "run {run} took {:?}", started.elapsed());
        let errors = out.error_lines();
        assert_eq!(errors.len(), 3, "run {run}: one line per looping conversation\n{out}");
        for peer in [CYCLE, SAME, EMPTY] {
            let line = errors.iter().find(|l| l.contains(peer)).unwrap_or_else(|| panic!("{peer}: {out}"));
            assert!(line.contains("cursor_loop"), "{line}");
        }
        // Cycle: A, B, then A again is refused once a round brought nothing new. Same/empty: the first pages,
        // then max_empty_pages (3) idle.
        let requests = provider.requests().len() - before;
        assert!(requests <= 20, "run {run}: {requests} requests");
        assert!(out.stdout.contains("pipeline support: 4 conversations"), "{out}");
    }
    let records = read_records(&dir.path().join("out").join(PIPELINE));
    assert_no_duplicates(&records);
    assert_eq!(message_ids(&records, HEALTHY).len(), 3);
    assert_eq!(message_ids(&records, CYCLE).len(), 3);
    assert_eq!(message_ids(&records, SAME).len(), 10);
    let status = Cmd::new(&["status", "--json"]).config(&cfg).cwd(dir.path()).run().await;
    status.expect_code(0);
    let status: Value = serde_json::from_str(&status.stdout).unwrap();
    for peer in [CYCLE, SAME, EMPTY] {
        let err = conv_status(&status, peer)["last_error"].as_str().unwrap_or_default().to_string();
        assert!(err.contains("cursor_loop"), "{peer}: {err}");
    }
    assert!(conv_status(&status, HEALTHY)["last_error"].is_null());
}

/// Before: the daemon's first run never ended, so every later tick of the pipeline was skipped ("previous
/// run still going") and the healthy conversation's new message was never written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_keeps_ticking_past_a_looping_conversation() {
    let healthy = Arc::new(Mutex::new(vec![xquik_msg(&snowflake(1), HEALTHY, ME, "first")]));
    let provider = Hostile::start(endless_provider(healthy.clone())).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), &provider.root(), &[(PIPELINE, &[CYCLE, HEALTHY], "adaptive_poll_max = \"0\"")]);
    let daemon = Cmd::new(&["run"]).config(&cfg).cwd(dir.path()).spawn();
    let out_dir = dir.path().join("out").join(PIPELINE);
    let written = |id: &str| read_complete_records(&out_dir).iter().any(|r| str_field(r, "message_id") == Some(id));
    eventually(30, "the first message is written", || written(&snowflake(1))).await;
    healthy.lock().unwrap().insert(0, xquik_msg(&snowflake(2), HEALTHY, ME, "second"));
    eventually(30, "a later tick writes the new message", || written(&snowflake(2))).await;
    daemon.signal(libc::SIGTERM);
    let out = daemon.wait().await;
    out.expect_code(0);
    assert!(out.stderr.contains("cursor_loop"), "{out}");
    assert_no_duplicates(&read_records(&out_dir));
}

// ---------------------------------------------------------------------------------------------
// One item blocks a conversation forever; times

const BAD: &str = "7300001";

/// A page with every kind of item a provider may break, and an older page behind it.
pub(crate) fn bad_items_provider() -> impl Fn(&Req) -> Reply + Send + Sync + 'static {
    move |req| {
        let older = req.query("cursor").is_some();
        let page = if older {
            format!(
                r#"{{"messages":[{{"id":"{}","senderId":"{BAD}","receiverId":"{ME}","text":"older zqolder01"}}],"has_next_page":false,"next_cursor":""}}"#,
                snowflake(1)
            )
        } else {
            format!(
                r#"{{"messages":[
  {{"id":"{s5}","senderId":"{BAD}","receiverId":"{ME}","text":"lone \ud800 surrogate zqlone001","createdAt":"2026-02-24T10:00:00+05:30"}},
  {{"senderId":"{BAD}","receiverId":"{ME}","text":"no id zqnoid001"}},
  {{"id":"{s4}","senderId":{{"oops":1}},"receiverId":"{ME}","text":"wrong type zqtype001"}},
  {{"id":"{s3}","senderId":"{BAD}","receiverId":"{ME}","text":"twitter time","createdAt":"Tue Feb 24 10:00:00 +0000 2026"}},
  {{"id":"{s2}","senderId":"{ME}","receiverId":"{BAD}","text":"numeric time","createdAt":1771927200123}}
],"has_next_page":true,"next_cursor":"older"}}"#,
                s5 = snowflake(5),
                s4 = snowflake(4),
                s3 = snowflake(3),
                s2 = snowflake(2),
            )
        };
        Reply::raw_json(&page)
    }
}

/// Before: the lone surrogate, the item without an `id` and the numeric `createdAt` each made the whole
/// page malformed on every run, so nothing of the conversation (newer or older) was written; the offset
/// and Twitter times were replaced by the snowflake's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_bad_item_never_blocks_its_page_and_times_are_read_in_every_documented_form() {
    let provider = Hostile::start(bad_items_provider()).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg =
        config(dir.path(), &provider.root(), &[(PIPELINE, &[BAD], ""), ("redacted", &[BAD], "redact_text = true")]);
    let out = sync_cmd(dir.path(), &cfg).run().await;
    out.expect_code(0);
    let records = read_records(&dir.path().join("out").join(PIPELINE));
    let by_id = |n: u64| {
        records
            .iter()
            .find(|r| str_field(r, "message_id") == Some(&snowflake(n)))
            .unwrap_or_else(|| panic!("message {n} missing: {records:#?}"))
    };
    assert_eq!(str_field(by_id(5), "text"), Some("lone \u{FFFD} surrogate zqlone001"));
    assert_eq!(str_field(by_id(5), "created_at"), Some("2026-02-24T04:30:00.000Z"), "offset converted to Z");
    assert_eq!(str_field(by_id(3), "created_at"), Some("2026-02-24T10:00:00.000Z"), "Twitter's form");
    assert_eq!(str_field(by_id(2), "created_at"), Some("2026-02-24T10:00:00.123Z"), "epoch milliseconds");
    assert_eq!(str_field(by_id(1), "text"), Some("older zqolder01"), "the older page is not blocked");
    let unparsed: Vec<&Value> = records.iter().filter(|r| str_field(r, "kind") == Some("dm_unparsed")).collect();
    assert_eq!(unparsed.len(), 2, "{unparsed:#?}");
    let no_id = unparsed.iter().find(|r| r["raw"].get("id").is_none()).unwrap();
    assert!(str_field(no_id, "reason").unwrap().contains("missing field `id`"), "{no_id}");
    assert_eq!(no_id["raw"], json!({"senderId": BAD, "receiverId": ME, "text": "no id zqnoid001"}));
    let wrong = unparsed.iter().find(|r| r["raw"].get("id").is_some()).unwrap();
    assert_eq!(wrong["raw"]["senderId"], json!({"oops": 1}), "kept as received");
    assert!(!str_field(wrong, "reason").unwrap().contains("zq"), "the reason quotes nothing: {wrong}");
    for u in &unparsed {
        assert_eq!(str_field(u, "conversation_user_id"), Some(BAD));
        assert_eq!(str_field(u, "source_endpoint"), Some(HISTORY));
        assert!(is_millis_z(str_field(u, "synced_at").unwrap()));
    }
    // The raw item's text is exactly what was sent.
    let files: String = handoff_files(&dir.path().join("out").join(PIPELINE))
        .iter()
        .map(|f| String::from_utf8_lossy(&f.bytes).into_owned())
        .collect();
    assert!(files.contains(&format!(r#""raw":{{"senderId":"{BAD}","receiverId":"{ME}","text":"no id zqnoid001"}}"#)));
    // A redacting pipeline writes no text, not even through `raw`.
    let redacted = read_records(&dir.path().join("out").join("redacted"));
    assert_eq!(redacted.len(), 6);
    let text = serde_json::to_string(&redacted).unwrap();
    assert!(!text.contains("zq") && !text.contains("\"text\""), "{text}");
    // Exactly once, dm_unparsed included.
    sync_cmd(dir.path(), &cfg).run().await.expect_code(0);
    let again = read_records(&dir.path().join("out").join(PIPELINE));
    assert_eq!(again.len(), records.len(), "a second run writes nothing again");
}

// ---------------------------------------------------------------------------------------------
// Unbounded memory

/// Before: the 100 MB body was read whole (310 MiB peak RSS) and written as one 100 MB line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_100_mb_body_is_refused_within_bounded_memory() {
    let provider = Hostile::start(|_| Reply::Stream {
        head: format!(r#"{{"messages":[{{"id":"{}","senderId":"1","receiverId":"2","text":""#, snowflake(1))
            .into_bytes(),
        filler: b"lots of text ".to_vec(),
        total: 100 * 1024 * 1024,
        tail: br#""}],"has_next_page":false,"next_cursor":""}"#.to_vec(),
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), &provider.root(), &[(PIPELINE, &["7400001"], "")]);
    let (out, peak_kib) = sync_cmd(dir.path(), &cfg).spawn().wait_with_peak_rss().await;
    out.expect_code(1);
    let errors = out.error_lines();
    assert_eq!(errors.len(), 1, "{out}");
    assert!(errors[0].contains("response_too_large") && errors[0].contains("max_response_bytes"), "{}", errors[0]);
    // Measured here: 78-79 MiB (32 MiB of body, the rest the process itself); before, 310 MiB. The bound
    // leaves room for a loaded machine's allocator without letting a whole-body read pass.
    assert!(peak_kib < 200 * 1024, "peak RSS {} MiB", peak_kib / 1024);
    assert!(largest_file(&dir.path().join("out")) < 1024 * 1024, "no huge line was written");
    eprintln!("peak RSS while refusing a 100 MB body: {} MiB", peak_kib / 1024);
}

// ---------------------------------------------------------------------------------------------
// Silence; wrong words on a signal

/// Before: a `Retry-After: 999999` waited 15 minutes per attempt with only a DEBUG line, and SIGTERM then
/// printed one `error: … stopped before finishing` per conversation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_retry_after_is_announced_at_warn_and_a_signal_is_one_line() {
    let provider =
        Hostile::start(|_| Reply::status(429, &[("Retry-After", "999999")], &json!({"error": "rate_limit_exceeded"})))
            .await;
    let dir = tempfile::tempdir().unwrap();
    let peers = ["7500001", "7500002", "7500003"];
    let cfg = config(dir.path(), &provider.root(), &[(PIPELINE, &peers, "")]);
    let running = sync_cmd(dir.path(), &cfg).spawn();
    let warned = || {
        let err = running.stderr_so_far();
        err.lines()
            .filter(|l| l.contains("WARN") && l.contains("Retry-After") && l.contains("waiting until 20"))
            .count()
    };
    eventually(20, "each conversation's wait is announced at WARN", || warned() == 3).await;
    let signalled = Instant::now();
    running.signal(libc::SIGTERM);
    let out = running.wait().await;
    assert!(signalled.elapsed() < Duration::from_secs(10), "stopping took {:?}", signalled.elapsed());
    out.expect_code(130);
    let errors = out.error_lines();
    assert_eq!(errors.len(), 1, "one line for the interruption, not one per conversation\n{out}");
    assert!(errors[0].contains("stopped by a signal") && errors[0].contains("3 conversations"), "{}", errors[0]);
    assert_eq!(provider.requests().len(), 3, "no request while waiting");
}

// ---------------------------------------------------------------------------------------------
// Lost records after a mistake

const PAGES: u64 = 5;
const PER_PAGE: u64 = 20;

/// A conversation of `PAGES` pages; the third waits for `gate`.
fn gated_provider(gate: Gate) -> impl Fn(&Req) -> Reply + Send + Sync + 'static {
    move |req| {
        let page: u64 = req.query("cursor").and_then(|c| c.strip_prefix('p').and_then(|n| n.parse().ok())).unwrap_or(1);
        let newest = (PAGES - page + 1) * PER_PAGE;
        let msgs = (0..PER_PAGE).map(|i| xquik_msg(&snowflake(newest - i), "7600001", ME, "hello")).collect();
        let next = (page < PAGES).then(|| format!("p{}", page + 1));
        let reply = Reply::json(&xquik_page(msgs, next.as_deref()));
        if page == 3 {
            Reply::Held(gate.clone(), Box::new(reply))
        } else {
            reply
        }
    }
}

/// Before: lines written after the active file was deleted (or replaced) went to the old inode, were
/// committed as delivered and never written again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_or_replacing_the_active_file_mid_run_loses_nothing() {
    for replace in [false, true] {
        let gate = Gate::new();
        let provider = Hostile::start(gated_provider(gate.clone())).await;
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(dir.path(), &provider.root(), &[(PIPELINE, &["7600001"], "")]);
        let running = sync_cmd(dir.path(), &cfg).spawn();
        // Asking for page 3 means pages 1 and 2 are committed.
        eventually(30, "page 3 is asked for", || {
            provider.requests().iter().any(|r| r.query("cursor").as_deref() == Some("p3"))
        })
        .await;
        let out_dir = dir.path().join("out").join(PIPELINE);
        let active = out_dir.join(ACTIVE);
        let before = read_records(&out_dir);
        assert_eq!(before.len() as u64, 2 * PER_PAGE);
        if replace {
            // An editor's save: a copy renamed over the original.
            let copy = out_dir.join("copy.tmp");
            fs::copy(&active, &copy).unwrap();
            fs::rename(&copy, &active).unwrap();
        } else {
            fs::remove_file(&active).unwrap();
        }
        gate.open();
        let out = running.wait().await;
        out.expect_code(0);
        assert!(
            out.stderr.contains("lines written to the old file are not counted as delivered"),
            "a WARN says what happened\n{out}"
        );
        let after = read_records(&out_dir);
        let mut ids: Vec<String> = message_ids(&after, "7600001");
        if !replace {
            ids.extend(message_ids(&before, "7600001"));
        }
        ids.sort();
        let mut want: Vec<String> = (1..=PAGES * PER_PAGE).map(snowflake).collect();
        want.sort();
        assert_eq!(ids, want, "replace={replace}: every message once (the deleted file's own lines aside)");
    }
}

// ---------------------------------------------------------------------------------------------
// Accepted mistakes and wrong words

/// Before: `check` accepted all of these (and `sync` failed later, or wrote into the state directory).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_refuses_output_folders_that_are_root_the_state_or_one_folder_twice() {
    let dir = tempfile::tempdir().unwrap();
    fs::create_dir_all(dir.path().join("real")).unwrap();
    std::os::unix::fs::symlink(dir.path().join("real"), dir.path().join("alias")).unwrap();
    let base = "http://127.0.0.1:9";
    for (state, pipelines, says) in [
        ("state", vec![("a", "/")], "is the root folder"),
        ("state", vec![("a", "state")], "is the state_dir"),
        ("state", vec![("a", "./state/../state/")], "is the state_dir"),
        ("state", vec![("a", "state/out")], "is inside the state_dir"),
        ("out/a/state", vec![("a", "out/a")], "contains the state_dir"),
        ("state", vec![("a", "real"), ("b", "alias/")], "already used by another pipeline"),
    ] {
        let mut text = format!("state_dir = \"{state}\"\n");
        for (name, out) in &pipelines {
            text.push_str(&format!(
                "[[pipelines]]\nname = \"{name}\"\nprovider = \"xquik\"\nbase_url = \"{base}\"\napi_key_env = \"{KEY_VAR}\"\naccount = \"a\"\noutput_dir = \"{out}\"\n"
            ));
        }
        let cfg = dir.path().join("pipelines.toml");
        fs::write(&cfg, text).unwrap();
        let out = Cmd::new(&["check"]).config(&cfg).cwd(dir.path()).run().await;
        out.expect_code(2);
        assert_eq!(out.error_lines().len(), 1, "{out}");
        assert!(out.stderr.contains(says), "{says}: {out}");
    }
}

/// Before: `check` printed a password written into `base_url`, and a 5 MB conversation ID was echoed whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_in_base_url_and_huge_values_are_never_echoed() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), "https://user:hunter2secret@127.0.0.1:9/api/v1", &["44196397"], "");
    let out = Cmd::new(&["check"]).config(&cfg).cwd(dir.path()).run().await;
    out.expect_code(0);
    assert!(out.stdout.contains("https://***@127.0.0.1:9/api/v1"), "{out}");
    for cmd in [&["check"][..], &["sync"]] {
        let out = Cmd::new(cmd).config(&cfg).cwd(dir.path()).run().await;
        assert!(!out.all().contains("hunter2secret"), "{cmd:?}: {out}");
    }
    let huge = "1".repeat(5 * 1024 * 1024);
    let cfg = write_config(dir.path(), "http://127.0.0.1:9/api/v1", &[&format!("x{huge}")], "");
    let out = Cmd::new(&["check"]).config(&cfg).cwd(dir.path()).run().await;
    out.expect_code(2);
    assert!(out.stderr.len() < 1024, "{} bytes of error", out.stderr.len());
    let cfg = write_config(dir.path(), "http://127.0.0.1:9/api/v1", &["44196397"], "");
    let out = Cmd::new(&["sync", "--conversation", &huge[..100 * 1024]]).config(&cfg).cwd(dir.path()).run().await;
    out.expect_code(2);
    assert!(out.stderr.len() < 1024, "{} bytes of error", out.stderr.len());
}

/// Before: a state_dir that is a file gave a socket error (exit 1); with `LOCK` removed under a running
/// daemon, a second process hit sled's own lock and printed a raw `WouldBlock` (exit 1); a garbled
/// `db/conf` printed `backtrace ()`; permission denied ended with the disk-full advice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_errors_say_what_happened_in_one_line() {
    let provider = Hostile::start(|_| Reply::json(&xquik_page(vec![], None))).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), &provider.root(), &[(PIPELINE, &["7700001"], "")]);
    let one_line = |out: &Output, code: i32, says: &str| {
        out.expect_code(code);
        let errors = out.error_lines();
        assert_eq!(errors.len(), 1, "{out}");
        assert!(errors[0].contains(says), "{says}: {}", errors[0]);
        for wrong in ["disk is full", "backtrace", "WouldBlock", "os error", "Os {"] {
            assert!(!out.stderr.contains(wrong), "`{wrong}` in: {out}");
        }
    };

    // A file where the state directory should be.
    fs::write(dir.path().join("state"), b"").unwrap();
    one_line(&sync_cmd(dir.path(), &cfg).run().await, 2, "is a file");
    fs::remove_file(dir.path().join("state")).unwrap();

    // LOCK (and the control socket) removed under a running daemon.
    let daemon = Cmd::new(&["run"]).config(&cfg).cwd(dir.path()).spawn();
    let sock = dir.path().join("state").join("control.sock");
    eventually(30, "the daemon is up", || sock.exists()).await;
    fs::remove_file(dir.path().join("state").join("LOCK")).unwrap();
    fs::remove_file(&sock).unwrap();
    let out = sync_cmd(dir.path(), &cfg).run().await;
    one_line(&out, 3, &format!("pid {}", daemon.pid()));
    daemon.signal(libc::SIGTERM);
    daemon.wait().await.expect_code(0);

    // A garbled database settings file.
    let conf = dir.path().join("state").join("db").join("conf");
    let good = fs::read(&conf).unwrap();
    fs::write(&conf, b"\x00\x13garbage that is not a sled config\xff").unwrap();
    one_line(&Cmd::new(&["status"]).config(&cfg).cwd(dir.path()).run().await, 1, "corrupted");
    fs::write(&conf, good).unwrap();
    Cmd::new(&["status"]).config(&cfg).cwd(dir.path()).run().await.expect_code(0);

    // Permission denied: a state directory this user may not use.
    let state = dir.path().join("state");
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let cmd = if root {
        // Root is never denied: run as nobody, who may read the config but not the state.
        use std::os::unix::fs::PermissionsExt;
        for p in [dir.path(), &cfg] {
            fs::set_permissions(p, fs::Permissions::from_mode(0o755)).unwrap();
        }
        fs::set_permissions(&state, fs::Permissions::from_mode(0o700)).unwrap();
        Cmd::new(&["status"]).config(&cfg).cwd(dir.path()).run_as(65534)
    } else {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(&state, fs::Permissions::from_mode(0o000)).unwrap();
        Cmd::new(&["status"]).config(&cfg).cwd(dir.path())
    };
    one_line(&cmd.run().await, 1, "permission denied");
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(&state, fs::Permissions::from_mode(0o750)).unwrap();
}

// ---------------------------------------------------------------------------------------------
// A panic

/// strace's path; in CI (`CI` set) it must be there. The children run with a clean environment, so the
/// program is named by its full path.
fn strace() -> Option<String> {
    let found = std::env::var("PATH")
        .unwrap_or_default()
        .split(':')
        .map(|d| Path::new(d).join("strace"))
        .find(|p| p.is_file())
        .map(|p| p.to_string_lossy().into_owned());
    if found.is_none() {
        assert!(std::env::var_os("CI").is_none(), "CI must have strace (.ci/run installs it)");
        eprintln!("SKIPPED: strace is not installed; this fault-injection test needs it (apt-get install strace)");
    }
    found
}

/// Before: when the state database's final fsync failed, sled's `Drop` panicked (exit 101) after every
/// record was written and committed. strace makes every fsync of the database file fail with each errno.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_final_fsync_of_the_state_database_is_reported_never_a_panic() {
    let Some(strace) = strace() else { return };
    for errno in ["EIO", "ENOSPC", "EDQUOT"] {
        let fx =
            Fixture::new(sim_config(77, convs(&[("7800001", 120, dm_handoff_simulator::CursorStyle::Offset)])), "")
                .await;
        let db = fx.state_dir().join("db").join("db");
        let wrapper = [
            strace.as_str(),
            "-f",
            "-qq",
            "-o",
            "/dev/null",
            "-P",
            db.to_str().unwrap(),
            "-e",
            "trace=fsync",
            "-e",
            &format!("inject=fsync:error={errno}"),
        ];
        let out = fx.cmd(&["sync"]).wrapped(&wrapper).run().await;
        assert!(!out.stderr.contains("panicked"), "{errno}: {out}");
        out.expect_code(0);
        assert!(out.stderr.contains("final sync on close failed"), "{errno}: said once, at ERROR\n{out}");
        fx.assert_exactly_once();
        // The state is usable: a second run writes nothing again.
        fx.sync().await.expect_code(0);
        fx.assert_exactly_once();
    }
}

/// Before: a second dm-handoff (with its own state_dir) on an output folder another one writes failed with
/// "another sink is already writing this file" and exit 1, without saying who.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_output_folder_another_process_writes_is_exit_3_with_its_pid() {
    let provider = Hostile::start(|_| Reply::json(&xquik_page(vec![], None))).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), &provider.root(), &[(PIPELINE, &["7900001"], "")]);
    let other = dir.path().join("other");
    fs::create_dir(&other).unwrap();
    // The same output folder, another state directory.
    let text = fs::read_to_string(&cfg).unwrap().replace("state_dir = \"state\"", "state_dir = \"../state2\"");
    let text = text.replace("output_dir = \"out/", "output_dir = \"../out/");
    let other_cfg = other.join("pipelines.toml");
    fs::write(&other_cfg, text).unwrap();
    let daemon = Cmd::new(&["run"]).config(&cfg).cwd(dir.path()).spawn();
    let sock = dir.path().join("state").join("control.sock");
    eventually(30, "the daemon is up", || sock.exists()).await;
    let out = sync_cmd(&other, &other_cfg).run().await;
    out.expect_code(3);
    let errors = out.error_lines();
    assert_eq!(errors.len(), 1, "{out}");
    assert!(
        errors[0].contains(&format!("pid {}", daemon.pid())) && errors[0].contains("another process"),
        "{}",
        errors[0]
    );
    daemon.signal(libc::SIGTERM);
    daemon.wait().await.expect_code(0);
}

/// The whole-inbox stream (SPEC 8.2) keeps a bad event too: one whose fields are wrong becomes
/// `dm_unparsed` under its own conversation, one that names no conversation becomes `dm_unparsed` under the
/// stream, and the good events of the same page are written. Before: the first bad event failed the page,
/// and the stream stopped there on every run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_event_in_the_inbox_stream_is_kept_and_blocks_nothing() {
    const PEER: &str = "44196397";
    let conv = format!("{PEER}-{ME}");
    let page = json!({
        "data": [
            {"id": snowflake(3), "event_type": "MessageCreate", "text": "good zqgood0001",
             "sender_id": PEER, "dm_conversation_id": conv, "created_at": "2026-02-24T10:00:00.000Z"},
            {"id": {"oops": 1}, "event_type": "MessageCreate", "text": "wrong zqwrong001",
             "sender_id": PEER, "dm_conversation_id": conv},
            {"id": snowflake(1), "event_type": "MessageCreate", "text": "lost zqlost0001", "sender_id": PEER},
        ],
        "meta": {"result_count": 3}
    });
    let provider = Hostile::start(move |req: &Req| {
        if req.path() == "/2/dm_events" {
            Reply::json(&page)
        } else {
            Reply::status(404, &[], &json!({"title": "Not Found Error", "type": "about:blank", "status": 404}))
        }
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = inbox_config(dir.path(), &provider.root());
    let out = sync_cmd(dir.path(), &cfg).run().await;
    out.expect_code(0);
    assert!(!out.all().contains("zq"), "no text in the output: {}", out.all());
    let records = read_records(&dir.path().join("out").join(PIPELINE));
    let good: Vec<&Value> = records.iter().filter(|r| str_field(r, "kind") == Some("dm_message")).collect();
    assert_eq!(good.len(), 1, "{records:#?}");
    assert_eq!(str_field(good[0], "message_id"), Some(snowflake(3).as_str()));
    let unparsed: Vec<&Value> = records.iter().filter(|r| str_field(r, "kind") == Some("dm_unparsed")).collect();
    assert_eq!(unparsed.len(), 2, "{records:#?}");
    let wrong = unparsed.iter().find(|r| r["raw"]["id"].is_object()).expect("the event with a bad id");
    assert_eq!(str_field(wrong, "conversation_user_id"), Some(PEER), "kept under its conversation");
    let lost = unparsed.iter().find(|r| r["raw"].get("dm_conversation_id").is_none()).unwrap();
    assert_eq!(str_field(lost, "conversation_id"), Some("*inbox"), "kept under the stream");
    assert!(str_field(lost, "reason").unwrap().contains("dm_conversation_id"));
    assert_eq!(str_field(lost, "source_endpoint"), Some("GET /2/dm_events"));
    // Exactly once, dm_unparsed included.
    sync_cmd(dir.path(), &cfg).run().await.expect_code(0);
    assert_eq!(read_records(&dir.path().join("out").join(PIPELINE)).len(), records.len());
}

/// The inbox stream follows the same loop rules as a conversation's pass (SPEC 8.3): a provider that keeps
/// handing out fresh `next_token`s for pages of events already written stops the stream with `cursor_loop`
/// after `max_empty_pages`. Before: the stream only refused a token it had sent before, so fresh tokens kept
/// `sync` going for ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_inbox_stream_that_never_brings_anything_new_stops_with_cursor_loop() {
    const PEER: &str = "44196397";
    let conv = format!("{PEER}-{ME}");
    let provider = Hostile::start(move |req: &Req| {
        if req.path() != "/2/dm_events" {
            return Reply::status(404, &[], &json!({"title": "Not Found Error", "type": "about:blank", "status": 404}));
        }
        let n: u64 = req.query("pagination_token").and_then(|t| t.trim_start_matches('t').parse().ok()).unwrap_or(0);
        Reply::json(&json!({
            "data": [{"id": snowflake(3), "event_type": "MessageCreate", "text": "same zqsame0001",
                      "sender_id": PEER, "dm_conversation_id": conv, "created_at": "2026-02-24T10:00:00.000Z"}],
            "meta": {"result_count": 1, "next_token": format!("t{}", n + 1)}
        }))
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = inbox_config(dir.path(), &provider.root());
    for run in 1..=2 {
        let before = provider.requests().len();
        let started = Instant::now();
        let out = sync_cmd(dir.path(), &cfg).run().await;
        out.expect_code(1);
        assert!(started.elapsed() < Duration::from_secs(30), "run {run} took {:?}", started.elapsed());
        assert!(out.stderr.contains("cursor_loop"), "run {run}: {out}");
        assert!(!out.all().contains("zq"), "no text in the output: {}", out.all());
        let requests = provider.requests().len() - before;
        assert!(requests <= 10, "run {run}: {requests} requests");
    }
    let records = read_records(&dir.path().join("out").join(PIPELINE));
    assert_eq!(records.iter().filter(|r| str_field(r, "kind") == Some("dm_message")).count(), 1, "{records:#?}");
}
