//! SPEC section 7: DM text and API keys never appear on stdout or stderr, at any log level, on error
//! paths included, nor in `status`, nor in the daemon's `/metrics` and `/healthz` (which do not even name
//! a conversation).

use std::collections::BTreeSet;

use dm_handoff_simulator::{CursorStyle, Faults};

use crate::support::*;

/// Everything secret a run could leak: the key (and pieces of it), every text, every marker.
struct Secrets {
    needles: BTreeSet<String>,
}

impl Secrets {
    fn new(fx: &Fixture, records: &[serde_json::Value]) -> Secrets {
        let mut needles = BTreeSet::new();
        needles.insert(KEY.to_string());
        // A key printed in part (masked, truncated) is still a leak: any 16 characters of it.
        for i in 0..=KEY.len() - 16 {
            needles.insert(KEY[i..i + 16].to_string());
        }
        for r in records {
            if let Some(t) = str_field(r, "text") {
                if t.chars().count() >= 6 {
                    needles.insert(t.to_string());
                    // Escaped the way a JSON log would print it.
                    let json = serde_json::to_string(t).unwrap();
                    needles.insert(json[1..json.len() - 1].to_string());
                }
            }
        }
        // Markers of every message the simulator has, written or not (a run may log a page it did
        // not write).
        for p in &fx.peers {
            for m in fx.sim.sim.messages(p) {
                needles.extend(m.text.as_deref().map(markers).unwrap_or_default());
            }
        }
        Secrets { needles }
    }

    fn assert_absent(&self, what: &str, output: &str) {
        let leaks: Vec<&String> = self.needles.iter().filter(|n| output.contains(n.as_str())).take(3).collect();
        assert!(leaks.is_empty(), "{what} leaks secrets (showing up to 3): {leaks:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_text_or_key_in_any_output_at_trace_level_even_on_error_paths() {
    assert_eq!(KEY.len(), 3 + 64, "the key is shaped like a real one");
    let mut cfg = sim_config(
        71,
        convs(&[
            ("7100001", 300, CursorStyle::Offset),
            ("7100002", 120, CursorStyle::MaxId),
            ("7100003", 20, CursorStyle::Offset),
        ]),
    );
    cfg.faults = Faults {
        rate_limit: 0.2,
        server_error: 0.2,
        drop: 0.05,
        malformed: 0.02,
        retry_after_secs: 0,
        forbidden_peers: vec!["7100003".into()],
        ..Faults::default()
    };
    let fx = Fixture::new(cfg, "max_retries = 40").await;

    let mut outputs = Vec::new();
    let out = fx.cmd(&["sync", "--log-level", "trace"]).run().await;
    out.expect_code(1);
    assert!(out.stderr.contains("DEBUG"), "verbose logging is on\n{out}");
    outputs.push(("sync --log-level trace", out));

    for p in &fx.peers {
        fx.sim.sim.add_messages(p, 12);
    }
    let out = fx.cmd(&["sync"]).env("RUST_LOG", "trace").run().await;
    out.expect_code(1);
    outputs.push(("sync with RUST_LOG=trace", out));

    for p in &fx.peers {
        fx.sim.sim.add_messages(p, 12);
    }
    let out = fx.cmd(&["sync", "--log-level", "trace", "--log-format", "json"]).run().await;
    out.expect_code(1);
    outputs.push(("sync --log-format json at trace", out));

    // A run whose requests are all rejected: the error path around the key itself.
    let mut wrong_key = KEY.to_string();
    wrong_key.replace_range(10..14, "0000");
    let out = fx.cmd(&["sync", "--log-level", "trace"]).key(Some(&wrong_key)).run().await;
    assert!(!out.all().contains(&wrong_key), "the rejected key is printed\n{out}");
    outputs.push(("sync with a rejected key", out));

    for (what, args) in
        [("status", &["status"][..]), ("status --json", &["status", "--json"][..]), ("check", &["check"][..])]
    {
        let out = fx.cmd(args).env("RUST_LOG", "trace").run().await;
        out.expect_code(0);
        outputs.push((what, out));
    }

    // The daemon, with metrics on: a run through it (faults, a forbidden conversation, sends), then every
    // endpoint is read. Its labels may name the pipeline, never a conversation, a username or text.
    let addr = enable_metrics(&fx.config);
    let daemon = fx.cmd(&["run", "--log-level", "trace"]).spawn();
    wait_for_metrics(addr).await;
    let send = fx.cmd(&["send", "--pipeline", PIPELINE, "--to", "7100002", "--text", "private zqprivat01"]).run().await;
    for p in &fx.peers {
        fx.sim.sim.add_messages(p, 5);
    }
    // Also writes the sent DM back as a message (when the send got through the faults).
    fx.cmd(&["sync"]).run().await.expect_code(1);
    let mut scrapes = Vec::new();
    for (path, accept) in [("/metrics", None), ("/metrics", Some("application/openmetrics-text")), ("/healthz", None)] {
        let (_, _, body) = http_get(addr, path, accept).await.expect("the daemon answers");
        scrapes.push((format!("GET {path} {accept:?}"), body));
    }
    daemon.signal(libc::SIGTERM);
    let out = daemon.wait().await;
    out.expect_code(0);
    outputs.push(("run with metrics", out));
    outputs.push(("send through the daemon", send));
    assert!(scrapes[0].1.contains("dm_handoff_records_written_total{pipeline=\"support\""), "{}", scrapes[0].1);

    // The faults were served, so error paths ran, and there is text in the files to leak.
    let stats = fx.sim.sim.stats();
    for s in [429, 502, 403] {
        assert!(stats.by_status.contains_key(&s), "no {s} was served: {:?}", stats.by_status);
    }
    let records = fx.records();
    assert_exactly_once(&records, &fx.sim.sim, &fx.peers[..2]);
    let secrets = Secrets::new(&fx, &records);
    assert!(secrets.needles.len() > 300, "texts and markers to look for: {}", secrets.needles.len());
    for (what, out) in &outputs {
        secrets.assert_absent(&format!("stdout of `{what}`"), &out.stdout);
        secrets.assert_absent(&format!("stderr of `{what}`"), &out.stderr);
    }
    for (what, body) in &scrapes {
        secrets.assert_absent(what, body);
        for id in fx.peers.iter().map(String::as_str).chain(["zqprivat01", ACCOUNT]) {
            assert!(!body.contains(id), "{what} names `{id}`:\n{body}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redact_text_leaves_text_out_of_records_and_keeps_the_rest() {
    let fx = Fixture::new(sim_config(73, vec![conv("7200001", 80, CursorStyle::Offset)]), "redact_text = true").await;
    fx.sync().await.expect_code(0);
    let records = fx.assert_exactly_once();
    assert!(records.iter().all(|r| r.get("text").is_none()), "no record carries text");
    let truth = fx.sim.sim.messages(&fx.peers[0]);
    let with_media = truth.iter().filter(|m| m.media_url.is_some()).count();
    assert!(with_media > 0);
    assert_eq!(records.iter().filter(|r| r.get("media_url").is_some()).count(), with_media, "media_url is kept");
    let bytes = std::fs::read(fx.active_path()).unwrap();
    let content = String::from_utf8(bytes).unwrap();
    for m in truth {
        for mark in m.text.as_deref().map(markers).unwrap_or_default() {
            assert!(!content.contains(&mark), "text marker {mark} is in the files");
        }
    }
}

/// SPEC 8.3 and 8.4's error paths: items kept as `dm_unparsed` (their reason and the WARN about them), a
/// redirect, a body over `max_response_bytes`, a cursor loop, and credentials in `base_url`, all at trace
/// level. No text of the items, no key, no `auth_token`, no password comes out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_answers_and_operator_mistakes_leak_no_text_or_key_at_trace_level() {
    use crate::hostile_server::*;
    let bad_items = crate::hostile::bad_items_provider();
    let provider = Hostile::start(move |req| match xquik_peer(req).as_deref() {
        Some("7300001") => bad_items(req),
        Some("7300002") => Reply::status(302, &[("Location", "http://127.0.0.1:9/zqredir01")], &serde_json::json!({})),
        Some("7300003") => Reply::Stream {
            head: br#"{"messages":[{"id":"1","senderId":"1","receiverId":"2","text":""#.to_vec(),
            filler: b"zqhuge001 ".to_vec(),
            total: 40 * 1024 * 1024,
            tail: br#""}],"has_next_page":false}"#.to_vec(),
        },
        _ => Reply::json(&xquik_page(
            vec![xquik_msg(&snowflake(9), "7300004", "1", "loop text zqloop0001")],
            Some(if req.query("cursor").is_some() { "A" } else { "B" }),
        )),
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let base = format!("http://user:zqpassword@127.0.0.1:{}/api/v1", provider.port);
    let cfg = write_config(dir.path(), &base, &["7300001", "7300002", "7300003", "7300004"], "");
    let mut outputs = Vec::new();
    for args in [&["sync", "--log-level", "trace"][..], &["status", "--json"], &["check"]] {
        outputs.push(Cmd::new(args).config(&cfg).cwd(dir.path()).run().await);
    }
    outputs[0].expect_code(1);
    let errors = outputs[0].error_lines().join("\n");
    for code in ["redirect", "response_too_large", "cursor_loop"] {
        assert!(errors.contains(code), "{code} is reported: {errors}");
    }
    let records = read_records(&dir.path().join("out").join(PIPELINE));
    assert!(records.iter().any(|r| str_field(r, "kind") == Some("dm_unparsed")), "the bad items were kept");
    for out in &outputs {
        let all = out.all();
        for needle in ["zq", KEY, &KEY[10..26], "password"] {
            assert!(!all.contains(needle), "`{needle}` in the output of `{}`:\n{out}", out.what);
        }
    }
}
