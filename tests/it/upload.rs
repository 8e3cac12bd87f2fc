//! Closed segments to object storage (SPEC 9.2) against a real S3 implementation: moto's server, started
//! by each test on a free loopback port. The bucket is read with plain HTTP requests (moto checks no
//! signatures), not with the client the binary uses.
//!
//! moto comes from `DM_HANDOFF_TEST_MOTO` (the `moto_server` program; `.ci/run` installs it, pinned, in
//! a venv under target/), else `target/moto-venv/bin/moto_server`. Without it the tests skip, except
//! under `CI`, where they fail.

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::time::Duration;

use dm_handoff_simulator::CursorStyle;
use sha2::{Digest, Sha256};

use crate::support::*;

const BUCKET: &str = "handoff";
const PREFIX: &str = "fleet/host-a";

fn moto_program() -> Option<PathBuf> {
    if let Ok(p) = std::env::var("DM_HANDOFF_TEST_MOTO") {
        assert!(Path::new(&p).exists(), "DM_HANDOFF_TEST_MOTO={p} does not exist");
        return Some(p.into());
    }
    let local = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/moto-venv/bin/moto_server");
    if local.exists() {
        return Some(local);
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "CI is set but moto is missing: set DM_HANDOFF_TEST_MOTO to moto_server (.ci/run makes a venv and sets it)"
    );
    eprintln!(
        "\n*** SKIPPED upload:: tests: no moto. Run them with: python3 -m venv target/moto-venv &&\n\
         ***   target/moto-venv/bin/pip install 'moto[server]==5.1.18' && cargo test --test it upload::\n"
    );
    None
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A moto S3 server of our own, stopped on drop.
struct Moto {
    child: std::process::Child,
    port: u16,
    http: reqwest::Client,
}

impl Moto {
    /// Starts moto on `port` and creates the bucket.
    async fn start(program: &Path, port: u16) -> Moto {
        let child = std::process::Command::new(program)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start moto_server");
        let moto = Moto { child, port, http: reqwest::Client::new() };
        for _ in 0..300 {
            if let Ok(r) = moto.http.put(moto.url(BUCKET)).send().await {
                assert!(r.status().is_success(), "create bucket: {}", r.status());
                return moto;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("moto did not answer on port {port} within 30 s");
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}/{path}", self.port)
    }

    /// Every object in the bucket: key → size.
    async fn list(&self) -> BTreeMap<String, u64> {
        let body = self.http.get(self.url(&format!("{BUCKET}?list-type=2&max-keys=1000"))).send().await.unwrap();
        let xml = body.text().await.unwrap();
        assert!(!xml.contains("<IsTruncated>true"), "more than 1000 objects");
        let mut out = BTreeMap::new();
        for part in xml.split("<Contents>").skip(1) {
            let field = |name: &str| {
                let start = part.find(&format!("<{name}>")).unwrap() + name.len() + 2;
                let end = part.find(&format!("</{name}>")).unwrap();
                part[start..end].to_string()
            };
            out.insert(field("Key"), field("Size").parse().unwrap());
        }
        out
    }

    /// An object's bytes. Objects are private, so this one request is signed (object_store, as a
    /// reader of the bucket would).
    async fn get(&self, key: &str) -> Vec<u8> {
        use object_store::ObjectStoreExt as _;
        let store = object_store::aws::AmazonS3Builder::new()
            .with_bucket_name(BUCKET)
            .with_endpoint(format!("http://127.0.0.1:{}", self.port))
            .with_allow_http(true)
            .with_region("us-east-1")
            .with_access_key_id("test")
            .with_secret_access_key("test")
            .build()
            .unwrap();
        let got = store.get(&object_store::path::Path::from(key)).await.unwrap_or_else(|e| panic!("GET {key}: {e}"));
        got.bytes().await.unwrap().to_vec()
    }

    async fn put(&self, key: &str, body: &'static [u8]) {
        let r = self.http.put(self.url(&format!("{BUCKET}/{key}"))).body(body).send().await.unwrap();
        assert!(r.status().is_success(), "PUT {key}: {}", r.status());
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn upload_keys(port: u16) -> String {
    format!(
        "rotate_max_bytes = 4096\nupload_url = \"s3://{BUCKET}/{PREFIX}\"\nupload_endpoint = \"http://127.0.0.1:{port}\"\n\
         upload_region = \"us-east-1\"\nupload_allow_http = true"
    )
}

/// A fixture whose pipeline uploads to moto on `port`; enough messages for a dozen closed segments.
async fn fixture(seed: u64, port: u16) -> Fixture {
    let cfg =
        sim_config(seed, vec![conv("5200001", 120, CursorStyle::Offset), conv("5200002", 60, CursorStyle::MaxId)]);
    Fixture::new(cfg, &upload_keys(port)).await
}

fn aws(cmd: Cmd) -> Cmd {
    cmd.env("AWS_ACCESS_KEY_ID", "test").env("AWS_SECRET_ACCESS_KEY", "test")
}

fn hex(b: &[u8]) -> String {
    Sha256::digest(b).iter().map(|x| format!("{x:02x}")).collect()
}

/// The key a local file of the pipeline has: `<prefix>/<pipeline>/dt=<close day>/<file>`.
fn key_of(file: &str) -> String {
    let stamp = file.strip_prefix(&format!("{STEM}.")).unwrap();
    let d = &stamp[..8];
    format!("{PREFIX}/{PIPELINE}/dt={}-{}-{}/{file}", &d[..4], &d[4..6], &d[6..8])
}

/// The local manifests: file name → (segment name, segment bytes, segment SHA-256).
fn manifests(out: &Path) -> BTreeMap<String, (String, u64, String)> {
    let mut m = BTreeMap::new();
    let Ok(dir) = std::fs::read_dir(out) else { return m };
    for e in dir {
        let name = e.unwrap().file_name().into_string().unwrap();
        if name.ends_with(".manifest.json") {
            let v: serde_json::Value = serde_json::from_slice(&std::fs::read(out.join(&name)).unwrap()).unwrap();
            let seg = v["segment"].as_str().unwrap().to_string();
            m.insert(name, (seg, v["bytes"].as_u64().unwrap(), v["sha256"].as_str().unwrap().to_string()));
        }
    }
    m
}

/// Every closed segment and manifest is in the bucket exactly once, under its key, with the manifest's
/// size and SHA-256 (the manifest with the local file's), and nothing else is there.
async fn assert_bucket_exact(fx: &Fixture, moto: &Moto) {
    let listed = moto.list().await;
    let local = manifests(&fx.out_dir());
    assert!(local.len() >= 3, "the fixture closes several segments, got {}", local.len());
    let mut want = std::collections::BTreeSet::new();
    for (manifest, (segment, bytes, sha)) in &local {
        let key = key_of(segment);
        assert_eq!(listed.get(&key), Some(bytes), "{key} in the bucket with the manifest's size");
        assert_eq!(hex(&moto.get(&key).await), *sha, "{key} has the manifest's SHA-256");
        let mkey = key_of(manifest);
        assert_eq!(moto.get(&mkey).await, std::fs::read(fx.out_dir().join(manifest)).unwrap(), "{mkey}");
        want.insert(key);
        want.insert(mkey);
    }
    let got: std::collections::BTreeSet<String> = listed.keys().cloned().collect();
    assert_eq!(got, want, "the bucket holds exactly the closed segments and their manifests");
    // The active file never goes up.
    assert!(!listed.keys().any(|k| k.ends_with(ACTIVE)));
}

async fn verify_remote_clean(fx: &Fixture) {
    let out = aws(fx.cmd(&["verify", "--remote"])).run().await;
    out.expect_code(0);
    assert!(out.stdout.contains("verify --remote: pipeline support:") && out.stdout.contains(", 0 problems"), "{out}");
    // The same check for a program: one JSON object with the bucket's side under `remote`.
    let out = aws(fx.cmd(&["verify", "--remote", "--json"])).run().await;
    out.expect_code(0);
    let v: serde_json::Value = serde_json::from_str(out.stdout.trim()).expect("one JSON object");
    assert_eq!(v["ok"], true, "{v}");
    assert_eq!(v["remote"][0]["pipeline"], "support", "{v}");
    assert!(v["remote"][0]["objects"].as_u64().unwrap() >= 2, "{v}");
    assert_eq!(v["remote"][0]["problems"].as_array().map(Vec::len), Some(0), "{v}");
}

async fn backlog(fx: &Fixture) -> u64 {
    let out = fx.cmd(&["status", "--json"]).run().await;
    out.expect_code(0);
    let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    v["pipelines"][0]["upload"]["backlog_segments"].as_u64().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_uploads_every_closed_segment_once_and_verify_remote_agrees() {
    let Some(program) = moto_program() else { return };
    let moto = Moto::start(&program, free_port()).await;
    let fx = fixture(61, moto.port).await;
    let out = aws(fx.cmd(&["sync"])).run().await;
    out.expect_code(0);
    assert!(out.stdout.contains("upload support:") && out.stdout.contains("backlog 0"), "{out}");
    fx.assert_exactly_once();
    assert_bucket_exact(&fx, &moto).await;
    assert_eq!(backlog(&fx).await, 0);
    verify_remote_clean(&fx).await;
    // A second pass finds everything in the ledger and puts nothing.
    let again = aws(fx.cmd(&["upload"])).run().await;
    again.expect_code(0);
    assert!(again.stdout.contains(" 0 objects put"), "{again}");
    assert_bucket_exact(&fx, &moto).await;
    let json = aws(fx.cmd(&["upload", "--json"])).run().await;
    json.expect_code(0);
    let v: serde_json::Value = serde_json::from_str(json.stdout.trim()).expect("one JSON object");
    assert_eq!((v["ok"].as_bool(), v["pipelines"][0]["objects_put"].as_u64()), (Some(true), Some(0)), "{v}");
    assert_eq!(v["pipelines"][0]["backlog_segments"], 0, "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_at_every_step_then_a_rerun_leaves_each_object_once() {
    let Some(program) = moto_program() else { return };
    for (i, step) in ["before_put", "after_segment_put", "after_segment", "after_manifest_put", "after_manifest"]
        .into_iter()
        .enumerate()
    {
        let moto = Moto::start(&program, free_port()).await;
        let fx = fixture(70 + i as u64, moto.port).await;
        // The sync dies at `step` of its first upload (which may come while it still syncs: segments go
        // up as they close); an `upload` dies at the same step of the next object; a plain `sync` then
        // finishes the history and the uploads.
        let first = aws(fx.cmd(&["sync"])).env("DM_HANDOFF_TEST_KILL_AT", step).run().await;
        assert!(killed_by(&first.status, libc::SIGKILL), "{step}: {first}");
        let second = aws(fx.cmd(&["upload"])).env("DM_HANDOFF_TEST_KILL_AT", step).run().await;
        assert!(killed_by(&second.status, libc::SIGKILL), "{step}: {second}");
        let last = aws(fx.cmd(&["sync"])).run().await;
        last.expect_code(0);
        assert!(last.stdout.contains("backlog 0"), "{step}: {last}");
        fx.assert_exactly_once();
        assert_bucket_exact(&fx, &moto).await;
        verify_remote_clean(&fx).await;
        assert_eq!(backlog(&fx).await, 0, "{step}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_content_under_a_key_is_refused_reported_and_kept() {
    let Some(program) = moto_program() else { return };
    let moto = Moto::start(&program, free_port()).await;
    let fx = fixture(81, moto.port).await;
    // Segments closed, none uploaded yet.
    let first = aws(fx.cmd(&["sync"])).env("DM_HANDOFF_TEST_KILL_AT", "before_put").run().await;
    assert!(killed_by(&first.status, libc::SIGKILL), "{first}");
    let local = manifests(&fx.out_dir());
    let (segment, _, _) = local.values().next().unwrap().clone();
    let key = key_of(&segment);
    moto.put(&key, b"someone else's object\n").await;

    let out = aws(fx.cmd(&["upload"])).run().await;
    out.expect_code(1);
    assert!(out.stderr.contains(&key) && out.stderr.contains("different object"), "{out}");
    assert!(out.stderr.contains("backlog"), "{out}");
    for r in fx.records() {
        if let Some(text) = str_field(&r, "text") {
            assert!(!out.all().contains(text), "DM text in the output: {out}");
        }
    }
    assert_eq!(moto.get(&key).await, b"someone else's object\n", "never overwritten");
    let manifest_key = key_of(local.keys().next().unwrap());
    assert!(!moto.list().await.contains_key(&manifest_key), "no manifest for a segment that is not ours");
    assert_eq!(backlog(&fx).await, local.len() as u64);
    let status = fx.cmd(&["status"]).run().await;
    assert!(status.stdout.contains("last error:") && status.stdout.contains(&key), "{status}");
    let verify = aws(fx.cmd(&["verify", "--remote"])).run().await;
    verify.expect_code(1);
    assert!(verify.stdout.contains(&key), "{verify}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_down_keeps_the_backlog_then_it_drains() {
    let Some(program) = moto_program() else { return };
    let port = free_port();
    let fx = fixture(91, port).await;
    // Nothing listens yet: the sync itself succeeds, its upload fails, exit 1, backlog kept.
    let out = aws(fx.cmd(&["sync"])).run().await;
    out.expect_code(1);
    assert!(out.stderr.contains("upload to s3://") && out.stderr.contains("run `dm-handoff upload` again"), "{out}");
    fx.assert_exactly_once();
    let segments = manifests(&fx.out_dir()).len() as u64;
    assert_eq!(backlog(&fx).await, segments);
    let down = aws(fx.cmd(&["upload"])).run().await;
    down.expect_code(1);
    assert_eq!(backlog(&fx).await, segments, "still down: the backlog stays");

    let moto = Moto::start(&program, port).await;
    let up = aws(fx.cmd(&["upload"])).run().await;
    up.expect_code(0);
    assert!(up.stdout.contains("backlog 0"), "{up}");
    assert_eq!(backlog(&fx).await, 0);
    assert_bucket_exact(&fx, &moto).await;
    verify_remote_clean(&fx).await;
}

/// Complete lines in the pipeline's JSONL files (a line being appended is not counted).
fn lines_written(out: &Path) -> usize {
    let Ok(dir) = std::fs::read_dir(out) else { return 0 };
    dir.filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".jsonl"))
        .map(|e| std::fs::read(e.path()).map(|b| b.iter().filter(|&&c| c == b'\n').count()).unwrap_or(0))
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_uploads_segments_as_they_close() {
    let Some(program) = moto_program() else { return };
    let moto = Moto::start(&program, free_port()).await;
    let fx = fixture(101, moto.port).await;
    let text = std::fs::read_to_string(&fx.config).unwrap();
    std::fs::write(&fx.config, text.replace("schedule = \"*/30 * * * * *\"", "schedule = \"* * * * * *\"")).unwrap();
    let daemon = aws(fx.cmd(&["run"])).spawn();
    // Done when every closed segment and manifest on disk is in the bucket (the run writes them all).
    let mut done = false;
    for _ in 0..600 {
        let local = manifests(&fx.out_dir());
        let listed = moto.list().await;
        if local.len() >= 3
            && lines_written(&fx.out_dir()) >= 180
            && local.iter().all(|(m, (s, _, _))| listed.contains_key(&key_of(m)) && listed.contains_key(&key_of(s)))
        {
            done = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(done, "the daemon did not upload the closed segments within 60 s: {}", daemon.stderr_so_far());
    assert_eq!(backlog(&fx).await, 0, "status, answered by the daemon, shows no backlog");
    daemon.signal(libc::SIGTERM);
    daemon.wait().await.expect_code(0);
    fx.assert_exactly_once();
    assert_bucket_exact(&fx, &moto).await;
    verify_remote_clean(&fx).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_local_removes_segments_only_once_uploaded_and_verify_accepts_it() {
    let Some(program) = moto_program() else { return };
    let moto = Moto::start(&program, free_port()).await;
    let cfg = sim_config(111, vec![conv("5200001", 120, CursorStyle::Offset), conv("5200002", 60, CursorStyle::MaxId)]);
    let fx = Fixture::new(cfg, &format!("{}\nupload_delete_local = true", upload_keys(moto.port))).await;
    // Killed after the first segment's put: nothing may be removed yet.
    let first = aws(fx.cmd(&["sync"])).env("DM_HANDOFF_TEST_KILL_AT", "after_segment").run().await;
    assert!(killed_by(&first.status, libc::SIGKILL), "{first}");
    let local = manifests(&fx.out_dir());
    for (segment, _, _) in local.values() {
        assert!(fx.out_dir().join(segment).exists(), "{segment} removed before its manifest was uploaded");
    }
    aws(fx.cmd(&["upload"])).run().await.expect_code(0);
    let listed = moto.list().await;
    for (manifest, (segment, bytes, _)) in &local {
        assert!(!fx.out_dir().join(segment).exists(), "{segment} kept after its upload");
        assert!(fx.out_dir().join(manifest).exists(), "the manifest stays as the record of what was shipped");
        assert_eq!(listed.get(&key_of(segment)), Some(bytes));
    }
    // A later sync recovers (it writes the manifests of segments the kill left without one, which
    // `upload` does not: it ships finished segments only) and goes on with the segments gone.
    aws(fx.cmd(&["sync"])).run().await.expect_code(0);
    let verify = aws(fx.cmd(&["verify", "--remote"])).run().await;
    verify.expect_code(0);
    assert!(verify.stdout.contains("removed after its upload"), "{verify}");
}

/// A Python with chDB: `DM_HANDOFF_TEST_PYTHON` (`.ci/run` sets it to its venv's), else target/ci-venv's.
fn chdb_python() -> Option<String> {
    let imports = |python: &str| {
        std::process::Command::new(python)
            .args(["-c", "import chdb"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    let local = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/ci-venv/bin/python");
    let python = std::env::var("DM_HANDOFF_TEST_PYTHON").unwrap_or_else(|_| local.display().to_string());
    if imports(&python) {
        return Some(python);
    }
    assert!(std::env::var_os("CI").is_none(), "CI is set but {python} cannot import chdb (.ci/run makes the venv)");
    eprintln!("\n*** SKIPPED upload::chdb_s3_counts_every_uploaded_message_once: no Python with chdb\n");
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chdb_s3_counts_every_uploaded_message_once() {
    let Some(program) = moto_program() else { return };
    let Some(python) = chdb_python() else { return };
    let moto = Moto::start(&program, free_port()).await;
    let fx = fixture(121, moto.port).await;
    aws(fx.cmd(&["sync"])).run().await.expect_code(0);
    // What the bucket should hold: the messages of the closed segments (the active file stays local).
    let mut want = 0;
    for f in handoff_files(&fx.out_dir()).iter().filter(|f| f.closed.is_some()) {
        let lines = f.bytes.split(|&b| b == b'\n').filter(|l| !l.is_empty());
        let records: Vec<serde_json::Value> = lines.map(|l| serde_json::from_slice(l).unwrap()).collect();
        want += records.iter().filter(|r| str_field(r, "kind") == Some("dm_message")).count();
    }
    assert!(want > 0);
    let url = format!("http://127.0.0.1:{}/{BUCKET}/{PREFIX}/{PIPELINE}/dt=*/{STEM}.*.jsonl", moto.port);
    let script = format!(
        "import chdb\nprint(chdb.query(\"SELECT count(), uniqExact(message_id) FROM s3('{url}', 'test', 'test', \
         'JSONEachRow') WHERE kind = 'dm_message'\", 'CSV'))"
    );
    let out = std::process::Command::new(&python).args(["-c", &script]).output().unwrap();
    assert!(out.status.success(), "chdb: {}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(text.trim(), format!("{want},{want}"), "chDB's s3() over the bucket sees every message once");
}
