//! The loader contract (SPEC section 8.6), end to end with the real binary: closed segments stored as
//! `compress` says with a manifest each, `verify` passing real output and catching a duplicated line, a
//! changed segment and a missing manifest, every record validating against `schema`, `kill -9` during
//! compression leaving nothing half-written where a loader looks, and real engines (DuckDB, ClickHouse
//! via chDB) loading the segments of every codec.
//!
//! The engine test runs Python: `DM_HANDOFF_TEST_PYTHON` names an interpreter with `duckdb` (and
//! `chdb`); `.ci/run` makes one in a venv and sets it with `CI=1`. Without the variable, `python3` is
//! used if it can import duckdb; if not, the test fails under CI and is skipped with a loud message
//! elsewhere (a developer's plain `cargo test`).

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::path::Path;
use std::time::Duration;

use dm_handoff_simulator::{CursorStyle, Faults, SimGroup};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde_json::Value;
use sha2::Digest;

use crate::support::*;

/// The `compress` values and the extension each gives closed segments.
const CODECS: [(&str, &str); 3] = [("none", ""), ("zstd", ".zst"), ("gzip", ".gz")];

/// One closed segment's files in an output folder.
#[derive(Debug, Default)]
struct Segment {
    /// Stored files of it (`….jsonl`, `….jsonl.zst`, `….jsonl.gz`), by name.
    stored: Vec<String>,
    manifest: Option<String>,
}

/// Closed segments by sequence number, and every other name in the folder.
fn segments(dir: &Path) -> (BTreeMap<u64, Segment>, Vec<String>) {
    let mut segs: BTreeMap<u64, Segment> = BTreeMap::new();
    let mut others = Vec::new();
    for e in std::fs::read_dir(dir).expect("output dir") {
        let name = e.unwrap().file_name().into_string().unwrap();
        let parsed = name.strip_prefix(STEM).and_then(|r| r.strip_prefix('.')).and_then(|r| {
            let mut parts = r.splitn(3, '.');
            let (_stamp, seq, rest) = (parts.next()?, parts.next()?, parts.next()?);
            Some((seq.parse::<u64>().ok()?, rest.to_string()))
        });
        match parsed {
            Some((seq, rest)) if rest == "manifest.json" => segs.entry(seq).or_default().manifest = Some(name),
            Some((seq, rest)) if ["jsonl", "jsonl.zst", "jsonl.gz"].contains(&rest.as_str()) => {
                segs.entry(seq).or_default().stored.push(name)
            }
            _ => others.push(name),
        }
    }
    (segs, others)
}

/// A stored file's content, decompressed by its extension with the codec crates directly.
fn decode(path: &Path) -> Vec<u8> {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    let name = path.to_str().unwrap();
    if name.ends_with(".zst") {
        zstd::stream::decode_all(&bytes[..]).unwrap_or_else(|e| panic!("{name} does not decode: {e}"))
    } else if name.ends_with(".gz") {
        let mut out = Vec::new();
        flate2::read::MultiGzDecoder::new(&bytes[..])
            .read_to_end(&mut out)
            .unwrap_or_else(|e| panic!("{name} does not decode: {e}"));
        out
    } else {
        bytes
    }
}

fn encode(content: &[u8], ext: &str) -> Vec<u8> {
    match ext {
        ".zst" => zstd::stream::encode_all(content, 3).unwrap(),
        ".gz" => {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
            e.write_all(content).unwrap();
            e.finish().unwrap()
        }
        _ => content.to_vec(),
    }
}

fn sha256_hex(bytes: &[u8]) -> String {
    sha2::Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

/// Parses complete lines into records; panics on a torn line or a line that is not an object.
fn parse(content: &[u8], what: &str) -> Vec<Value> {
    assert!(content.is_empty() || content.ends_with(b"\n"), "{what} ends with a torn line");
    std::str::from_utf8(content)
        .unwrap()
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("{what}: not JSON ({e})"));
            assert!(v.is_object(), "{what}: not an object");
            v
        })
        .collect()
}

/// Checks that every closed segment of `dir` is final as `ext` says (one stored copy with that
/// extension, a manifest describing it exactly) and returns every record: closed segments in order,
/// then the active file.
fn assert_final_and_read(dir: &Path, ext: &str) -> Vec<Value> {
    let (segs, others) = segments(dir);
    assert_eq!(others, [ACTIVE], "nothing but segments, manifests and the active file in {}", dir.display());
    assert!(segs.len() >= 3, "only {} closed segments", segs.len());
    let mut records = Vec::new();
    for (seq, s) in &segs {
        assert_eq!(s.stored.len(), 1, "segment {seq}: {:?}", s.stored);
        let name = &s.stored[0];
        assert!(name.ends_with(&format!(".jsonl{ext}")), "segment {seq} stored as {name}");
        let manifest = s.manifest.as_ref().unwrap_or_else(|| panic!("segment {name} has no manifest"));
        let m: Value = serde_json::from_slice(&std::fs::read(dir.join(manifest)).unwrap()).unwrap();
        let stored = std::fs::read(dir.join(name)).unwrap();
        let content = decode(&dir.join(name));
        let lines = parse(&content, name);
        assert_eq!(m["segment"], name.as_str(), "{manifest}");
        assert_eq!(m["records"], lines.len(), "{manifest}");
        assert_eq!(m["bytes"], stored.len(), "{manifest}");
        assert_eq!(m["sha256"], sha256_hex(&stored), "{manifest}");
        assert_eq!(m["schema_version"], 1, "{manifest}");
        let mut kinds: BTreeMap<String, u64> = BTreeMap::new();
        for r in &lines {
            *kinds.entry(str_field(r, "kind").unwrap().to_string()).or_default() += 1;
        }
        assert_eq!(m["kinds"], serde_json::to_value(&kinds).unwrap(), "{manifest}");
        let times: BTreeSet<&str> = lines.iter().filter_map(|r| str_field(r, "created_at")).collect();
        assert_eq!(m["first_created_at"].as_str(), times.first().copied(), "{manifest}");
        assert_eq!(m["last_created_at"].as_str(), times.last().copied(), "{manifest}");
        let keys: BTreeSet<&str> = m.as_object().unwrap().keys().map(String::as_str).collect();
        let spec: BTreeSet<&str> =
            ["segment", "records", "bytes", "sha256", "kinds", "first_created_at", "last_created_at", "schema_version"]
                .into();
        assert_eq!(keys, spec, "{manifest}: exactly SPEC 8.6's fields");
        records.extend(lines);
    }
    records.extend(parse(&std::fs::read(dir.join(ACTIVE)).unwrap(), ACTIVE));
    records
}

/// The last line of `verify`'s output.
fn summary(out: &Output) -> &str {
    out.stdout.lines().last().unwrap_or_default()
}

fn loader_fixture_convs() -> Vec<dm_handoff_simulator::SimConversation> {
    vec![conv("6100001", 300, CursorStyle::Offset), conv("6100002", 120, CursorStyle::MaxId)]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_compress_value_gives_final_segments_and_verify_catches_tampering() {
    for (i, (codec, ext)) in CODECS.into_iter().enumerate() {
        let fx = Fixture::new(
            sim_config(610 + i as u64, loader_fixture_convs()),
            &format!("rotate_max_bytes = 8192\ncompress = \"{codec}\"\n"),
        )
        .await;
        fx.sync().await.expect_code(0);
        let dir = fx.out_dir();
        let records = assert_final_and_read(&dir, ext);
        assert_exactly_once(&records, &fx.sim.sim, &fx.peers);

        let out = fx.cmd(&["verify"]).run().await;
        out.expect_code(0);
        let (segs, _) = segments(&dir);
        let want =
            format!("verify: pipeline {PIPELINE}: {} files, {} records, 0 problems", segs.len() + 1, records.len());
        assert_eq!(summary(&out), want, "{codec}: {out}");
        assert!(!out.stdout.contains("problem:"), "{codec}: {out}");

        // A duplicated line: the first record of segment 1 written again into the active file.
        let active = dir.join(ACTIVE);
        let active_bytes = std::fs::read(&active).unwrap();
        let first = &segs[&1].stored[0];
        let content = decode(&dir.join(first));
        let first_line = &content[..=content.iter().position(|b| *b == b'\n').unwrap()];
        let mut doubled = active_bytes.clone();
        doubled.extend_from_slice(first_line);
        std::fs::write(&active, &doubled).unwrap();
        let out = fx.cmd(&["verify", "--pipeline", PIPELINE]).run().await;
        out.expect_code(1);
        let problems: Vec<&str> = out.stdout.lines().filter(|l| l.starts_with("problem: ")).collect();
        assert_eq!(problems.len(), 1, "{codec}: {out}");
        assert!(
            problems[0].contains(ACTIVE) && problems[0].contains(&format!("also at {}", dir.join(first).display())),
            "{codec}: {out}"
        );
        assert!(summary(&out).ends_with(", 1 problems"), "{codec}: {out}");
        let text = str_field(&parse(first_line, "line")[0], "text").unwrap_or("no text").to_string();
        assert!(!out.all().contains(&text), "{codec}: verify printed message text");
        std::fs::write(&active, &active_bytes).unwrap();

        // A changed segment: two of its lines swapped, stored again the same way.
        let second = dir.join(&segs[&2].stored[0]);
        let original = std::fs::read(&second).unwrap();
        let content = decode(&second);
        let mut lines: Vec<&[u8]> = content.split_inclusive(|b| *b == b'\n').collect();
        lines.swap(0, 1);
        std::fs::write(&second, encode(&lines.concat(), ext)).unwrap();
        let out = fx.cmd(&["verify"]).run().await;
        out.expect_code(1);
        assert!(out.stdout.contains("manifest.json: sha256"), "{codec}: {out}");
        std::fs::write(&second, &original).unwrap();

        // A missing manifest: a problem now (no process owns the state); the next start writes it again.
        let manifest = dir.join(segs[&3].manifest.as_ref().unwrap());
        std::fs::remove_file(&manifest).unwrap();
        let out = fx.cmd(&["verify"]).run().await;
        out.expect_code(1);
        let missing =
            format!("problem: {}: closed segment without a manifest", dir.join(&segs[&3].stored[0]).display());
        assert!(out.stdout.lines().any(|l| l == missing), "{codec}: {out}");
        fx.sync().await.expect_code(0);
        assert!(manifest.exists(), "{codec}: the next run did not write the manifest again");
        fx.cmd(&["verify"]).run().await.expect_code(0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_and_schema_are_plain_commands() {
    let out = Cmd::new(&["schema"]).key(None).run().await;
    out.expect_code(0);
    let doc: Value = serde_json::from_str(&out.stdout).expect("schema prints one JSON document");
    assert_eq!(doc["$schema"], "https://json-schema.org/draft/2020-12/schema");
    let fx = Fixture::new(sim_config(620, vec![conv("6200001", 5, CursorStyle::Offset)]), "").await;
    // Nothing synced yet: the folder does not exist, which is clean.
    let out = fx.cmd(&["verify"]).key(None).run().await;
    out.expect_code(0);
    assert_eq!(summary(&out), format!("verify: pipeline {PIPELINE}: 0 files, 0 records, 0 problems"));
    let out = fx.cmd(&["verify", "--pipeline", "nope"]).run().await;
    out.expect_code(2);
    assert_eq!(out.error_lines().len(), 1, "{out}");
}

/// A validator of `dm-handoff schema`'s output.
async fn schema_validator() -> jsonschema::Validator {
    let out = Cmd::new(&["schema"]).key(None).run().await;
    out.expect_code(0);
    let doc: Value = serde_json::from_str(&out.stdout).unwrap();
    jsonschema::options().should_validate_formats(true).build(&doc).expect("schema output compiles")
}

fn assert_valid(v: &jsonschema::Validator, records: &[Value]) -> BTreeSet<String> {
    let mut kinds = BTreeSet::new();
    for r in records {
        let errors: Vec<String> = v.iter_errors(r).map(|e| format!("{e} at {}", e.instance_path())).collect();
        assert!(errors.is_empty(), "{r}\n{errors:#?}");
        kinds.insert(str_field(r, "kind").unwrap().to_string());
    }
    kinds
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_record_the_binary_writes_validates_against_schema() {
    let v = schema_validator().await;
    let mut kinds = BTreeSet::new();
    // X API v2: 1:1 and group history (messages, join and leave events), a send, a new group, a delete.
    let mut cfg = sim_config(630, vec![conv("6300001", 40, CursorStyle::Offset)]);
    cfg.groups = vec![SimGroup {
        conversation_id: "1578398451921985538".into(),
        participants: vec!["944480690".into(), "906948460078698496".into()],
        events: 40,
        membership_every: 6,
    }];
    let peers = vec!["6300001".to_string(), "conv:1578398451921985538".to_string()];
    let fx = Fixture::with_peers_for(Provider::XApiV2, cfg, &peers, "").await;
    fx.sync().await.expect_code(0);
    fx.cmd(&["send", "--to", "6300001", "--text", "fixed"]).run().await.expect_code(0);
    let sent = fx.sim.sim.messages("6300001")[0].id.clone();
    fx.cmd(&["group-send", "--participant", "944480690", "--participant", "906948460078698496", "--text", "hi"])
        .run()
        .await
        .expect_code(0);
    fx.cmd(&["delete", "--message-id", &sent]).run().await.expect_code(0);
    kinds.extend(assert_valid(&v, &fx.records()));
    // The other providers' history and a send, with redaction on for one of them.
    for (provider, extra) in [(Provider::Xquik, ""), (Provider::GetXApi, "redact_text = true\n")] {
        let fx =
            Fixture::new_for(provider, sim_config(631, vec![conv("6310001", 30, CursorStyle::MaxId)]), extra).await;
        fx.sync().await.expect_code(0);
        fx.cmd(&["send", "--to", "6310001", "--text", "thanks"]).run().await.expect_code(0);
        kinds.extend(assert_valid(&v, &fx.records()));
    }
    let want: BTreeSet<String> = ["dm_delete", "dm_event", "dm_message", "dm_send"].map(String::from).into();
    assert_eq!(kinds, want, "every kind the product writes today was checked");
}

// ---------------------------------------------------------------------------------------------
// Real engines

/// The Python the engine test runs, or None (after saying so) when it is to be skipped.
fn engine_python() -> Option<String> {
    let in_ci = std::env::var_os("CI").is_some_and(|v| !v.is_empty() && v != "0" && v != "false");
    let imports = |python: &str, module: &str| {
        std::process::Command::new(python)
            .args(["-c", &format!("import {module}")])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if let Ok(python) = std::env::var("DM_HANDOFF_TEST_PYTHON") {
        assert!(imports(&python, "duckdb"), "DM_HANDOFF_TEST_PYTHON={python} cannot import duckdb");
        return Some(python);
    }
    if imports("python3", "duckdb") {
        return Some("python3".into());
    }
    assert!(
        !in_ci,
        "CI is set but no Python with duckdb: set DM_HANDOFF_TEST_PYTHON (.ci/run makes a venv and sets it)"
    );
    eprintln!(
        "\n*** SKIPPED loader::real_engines_load_closed_segments_of_every_codec: no Python with duckdb.\n\
         *** Run it with: python3 -m venv /tmp/dmh-venv && /tmp/dmh-venv/bin/pip install duckdb chdb &&\n\
         ***   DM_HANDOFF_TEST_PYTHON=/tmp/dmh-venv/bin/python cargo test --test it loader::\n"
    );
    None
}

/// Loads the closed segments of `ext` plus the active file with DuckDB's `read_json` (and chDB's
/// `file(…, JSONEachRow)` when available), as the README's recipes do; prints counts as JSON.
const ENGINE_SCRIPT: &str = r#"
import json, sys
closed, active, need_chdb = sys.argv[1], sys.argv[2], sys.argv[3] == "1"
out = {}
import duckdb
cols = ("{kind:'VARCHAR', conversation_user_id:'VARCHAR', conversation_id:'VARCHAR', "
        "message_id:'VARCHAR', event_id:'VARCHAR', created_at:'TIMESTAMPTZ', text:'VARCHAR'}")
row = duckdb.connect().execute(f"""
  SELECT count(*),
         count(DISTINCT (kind, coalesce(conversation_user_id, conversation_id), coalesce(message_id, event_id))),
         count(created_at)
  FROM read_json(['{closed}', '{active}'], format = 'newline_delimited', columns = {cols})""").fetchone()
out["duckdb"] = {"rows": row[0], "distinct_keys": row[1], "with_time": row[2]}
try:
    import chdb
except ImportError:
    if need_chdb:
        raise
    chdb = None
if chdb is not None:
    s = ("kind String, conversation_user_id Nullable(String), conversation_id Nullable(String), "
         "message_id Nullable(String), event_id Nullable(String), created_at Nullable(DateTime64(3))")
    q = f"""
      SELECT count(), uniqExact(kind, ifNull(conversation_user_id, conversation_id), ifNull(message_id, event_id)),
             count(created_at)
      FROM (SELECT * FROM file('{closed}', JSONEachRow, '{s}') UNION ALL SELECT * FROM file('{active}', JSONEachRow, '{s}'))"""
    rows, distinct, timed = str(chdb.query(q, "CSV")).strip().split(",")
    out["chdb"] = {"rows": int(rows), "distinct_keys": int(distinct), "with_time": int(timed)}
print(json.dumps(out))
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_engines_load_closed_segments_of_every_codec() {
    let Some(python) = engine_python() else { return };
    let need_chdb = std::env::var_os("DM_HANDOFF_TEST_PYTHON").is_some()
        && std::env::var_os("CI").is_some_and(|v| !v.is_empty() && v != "0" && v != "false");
    for (i, (codec, ext)) in CODECS.into_iter().enumerate() {
        let fx = Fixture::new(
            sim_config(640 + i as u64, loader_fixture_convs()),
            &format!("rotate_max_bytes = 8192\ncompress = \"{codec}\"\n"),
        )
        .await;
        fx.sync().await.expect_code(0);
        let dir = fx.out_dir();
        let (segs, _) = segments(&dir);
        assert!(segs.len() >= 3, "{codec}: several closed segments");
        let truth: usize = fx.peers.iter().map(|p| fx.sim.sim.messages(p).len()).sum();
        let closed = format!("{}/{STEM}.*.jsonl{ext}", dir.display());
        let active = dir.join(ACTIVE).display().to_string();
        let out = std::process::Command::new(&python)
            .args(["-c", ENGINE_SCRIPT, &closed, &active, if need_chdb { "1" } else { "0" }])
            .output()
            .expect("run python");
        assert!(out.status.success(), "{codec}: {}", String::from_utf8_lossy(&out.stderr));
        let got: Value = serde_json::from_slice(&out.stdout).expect("the script prints JSON");
        for engine in ["duckdb", "chdb"] {
            let Some(r) = got.get(engine) else {
                eprintln!("{codec}: {engine} not installed; only DuckDB checked");
                continue;
            };
            assert_eq!(r["rows"], truth, "{codec} {engine}: every message once: {got}");
            assert_eq!(r["distinct_keys"], truth, "{codec} {engine}: no key twice: {got}");
            assert_eq!(r["with_time"], truth, "{codec} {engine}: created_at parsed as a time: {got}");
        }
        eprintln!("{codec}: {} closed segments + active file, {truth} records: {got}", segs.len());
    }
}

// ---------------------------------------------------------------------------------------------
// kill -9 during compression

/// After a kill: whatever a loader's glob can see is whole. Returns what was left unfinished
/// (temporaries, raw-and-compressed pairs, segments without a manifest), to prove kills landed
/// while segments were being finished.
fn check_visible_files(dir: &Path, after: &str) -> (usize, usize, usize) {
    let (segs, others) = segments(dir);
    let temps: Vec<&String> = others.iter().filter(|n| n.as_str() != ACTIVE).collect();
    for t in &temps {
        assert!(t.starts_with('.') && t.ends_with(".tmp"), "{after}: unexpected file {t}");
    }
    let (mut pairs, mut unfinished) = (0, 0);
    let mut keys = BTreeSet::new();
    for (seq, s) in &segs {
        for name in &s.stored {
            // Every file under a final name decodes to its end and holds whole lines only.
            parse(&decode(&dir.join(name)), &format!("{after}: {name}"));
        }
        if s.stored.len() > 1 {
            pairs += 1;
        }
        if s.manifest.is_none() {
            unfinished += 1;
        }
        if let Some(m) = &s.manifest {
            let m: Value = serde_json::from_slice(&std::fs::read(dir.join(m)).unwrap())
                .unwrap_or_else(|e| panic!("{after}: manifest of {seq} is not whole: {e}"));
            let stored =
                std::fs::read(dir.join(m["segment"].as_str().unwrap())).expect("the manifest's segment exists");
            assert_eq!(m["sha256"], sha256_hex(&stored), "{after}: manifest of {seq}");
            assert_eq!(s.stored.len(), 1, "{after}: a final segment has one copy: {:?}", s.stored);
        }
        // One copy of each segment counts (a raw file and its twin hold the same lines).
        let name = s.stored.first().unwrap_or_else(|| panic!("{after}: segment {seq} has a manifest only"));
        for r in parse(&decode(&dir.join(name)), name) {
            assert!(keys.insert(key_of(&r)), "{after}: {:?} twice", key_of(&r));
        }
    }
    (temps.len(), pairs, unfinished)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_while_compressing_leaves_nothing_half_visible_and_no_duplicate() {
    for (codec, ext, seed) in [("zstd", ".zst", 0x5eed_0650u64), ("gzip", ".gz", 0x5eed_0651)] {
        let mut cfg = sim_config(
            seed,
            vec![
                conv("6500001", 1500, CursorStyle::Offset),
                conv("6500002", 300, CursorStyle::MaxId),
                conv("6500003", 80, CursorStyle::Offset),
            ],
        );
        cfg.page_size = (10, 15);
        cfg.faults = Faults { slow_ms: 10, ..Faults::default() };
        // One request at a time keeps a run long enough (about two seconds) for the kills to land inside it.
        let extra = format!("rotate_max_bytes = 2048\ncompress = \"{codec}\"\nconcurrency = 1\n");
        let fx = Fixture::new(cfg, &extra).await;
        let mut rng = SmallRng::seed_from_u64(seed);
        let (mut temps, mut pairs, mut unfinished, mut killed) = (0, 0, 0, 0);
        for round in 0..12 {
            if round > 0 {
                fx.sim.sim.add_messages(&fx.peers[0], rng.gen_range(0..=120));
            }
            let child = fx.cmd(&["sync"]).spawn();
            tokio::time::sleep(Duration::from_millis(rng.gen_range(100..=1200))).await;
            child.signal(libc::SIGKILL);
            let out = child.wait().await;
            if killed_by(&out.status, libc::SIGKILL) {
                killed += 1;
            } else {
                out.expect_code(0);
            }
            let (t, p, u) = check_visible_files(&fx.out_dir(), &format!("{codec} round {round}"));
            temps += t;
            pairs += p;
            unfinished += u;
        }
        assert!(killed >= 3, "{codec}: only {killed} rounds were killed mid-run");
        assert!(temps + pairs + unfinished > 0, "{codec}: no kill left a segment unfinished: nothing was tested");
        fx.sync().await.expect_code(0);
        fx.sync().await.expect_code(0);
        let records = assert_final_and_read(&fx.out_dir(), ext);
        assert_exactly_once(&records, &fx.sim.sim, &fx.peers);
        let out = fx.cmd(&["verify"]).run().await;
        out.expect_code(0);
        assert!(summary(&out).ends_with(" 0 problems"), "{out}");
        eprintln!(
            "{codec}: {killed} of 12 rounds killed mid-run; after the kills {temps} temporaries, {pairs} raw+compressed \
             pairs, {unfinished} segments without a manifest were found and finished; {} records",
            records.len()
        );
    }
}

// ---------------------------------------------------------------------------------------------
// verify beside a running daemon

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_while_the_daemon_writes_finds_no_problem() {
    let mut cfg =
        sim_config(660, vec![conv("6600001", 1200, CursorStyle::Offset), conv("6600002", 400, CursorStyle::MaxId)]);
    cfg.faults = Faults { slow_ms: 20, ..Faults::default() };
    let fx = Fixture::new(cfg, "rotate_max_bytes = 4096\ncompress = \"zstd\"\n").await;
    let text = std::fs::read_to_string(&fx.config).unwrap().replace("*/30 * * * * *", "* * * * * *");
    std::fs::write(&fx.config, text).unwrap();
    let daemon = fx.cmd(&["run"]).spawn();
    let mut runs = 0;
    let mut seen_records = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let truth: usize = fx.peers.iter().map(|p| fx.sim.sim.messages(p).len()).sum();
    // At least three verifies whatever the machine's speed (the first starts while the daemon's first run
    // writes), then on while records are still coming, within the deadline. Nothing here depends on how
    // fast the daemon is: on a loaded machine it may finish before the third verify, or be stopped before
    // it finishes (the sync below completes it).
    while runs < 3 || (seen_records < truth && tokio::time::Instant::now() < deadline) {
        let out = fx.cmd(&["verify"]).run().await;
        assert_eq!(out.code(), Some(0), "verify beside a running daemon: {out}");
        runs += 1;
        seen_records = summary(&out)
            .split(", ")
            .find_map(|p| p.strip_suffix(" records"))
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    daemon.signal(libc::SIGTERM);
    daemon.wait().await.expect_code(0);
    fx.sync().await.expect_code(0);
    let out = fx.cmd(&["verify"]).run().await;
    out.expect_code(0);
    assert!(!out.stdout.contains("note:"), "after a clean stop nothing is pending: {out}");
    let records = assert_final_and_read(&fx.out_dir(), ".zst");
    assert_exactly_once(&records, &fx.sim.sim, &fx.peers);
    eprintln!("verify ran {runs} times beside the daemon, all clean");
}
