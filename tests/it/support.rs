//! The harness: a simulator in the test process, the real binary run in a temporary folder with a
//! config written by the test, and readers for the handoff files it leaves behind.
//!
//! Children get a clean environment (only what a test passes), their output goes to anonymous temp
//! files (a pipe could fill up and stall a chatty child that nobody reads yet), and every wait is
//! bounded so a hung binary fails its test instead of the whole suite.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ffi::OsString;
use std::fmt;
use std::fs::{self, File};
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use dm_handoff_simulator::{CursorStyle, SimConfig, SimConversation, SimHandle, Simulator, Stats};
use serde_json::Value;

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_dm-handoff");
/// The variable the configs name in `api_key_env`.
pub const KEY_VAR: &str = "XQUIK_API_KEY";
/// The key the simulator accepts: `xq_` and 64 hex digits, shaped like a real Xquik key.
pub const KEY: &str = "xq_7f3a9c1e5b2d8f4a6c0e9b7d3f1a5c8e2b6d4f0a9c7e5b3d1f8a6c4e2b0d9f7a";
/// The connected account every test config names.
pub const ACCOUNT: &str = "acme_support";
/// The pipeline every test config defines.
pub const PIPELINE: &str = "support";
/// The default active file name.
pub const ACTIVE: &str = "xquik-dm-handoff.jsonl";
/// The stem closed segments are named from.
pub const STEM: &str = "xquik-dm-handoff";
/// The route template of the Xquik history endpoint, as records and the simulator's books name it.
pub const HISTORY: &str = "GET /x/dm/{userId}/history";
/// The variable GetXAPI configs name in `auth_token_env`, and the account `auth_token` the simulator wants.
pub const AUTH_TOKEN_VAR: &str = "GETXAPI_AUTH_TOKEN";
pub const AUTH_TOKEN: &str = "gx_auth_5d2c7a91e4b03f68a1c9d7e2b5f40a3c8e6d1b9f";
/// No single child may take longer than this; a hang fails the test with the child's output.
const CHILD_TIMEOUT: Duration = Duration::from_secs(150);

// ---------------------------------------------------------------------------------------------
// The simulator

/// One simulated conversation of `n` messages with `peer`.
pub fn conv(peer: &str, n: usize, style: CursorStyle) -> SimConversation {
    SimConversation { peer_id: peer.to_string(), messages: n, cursor_style: style, ..SimConversation::default() }
}

/// Several conversations at once: (peer, messages, cursor style) each.
pub fn convs(list: &[(&str, usize, CursorStyle)]) -> Vec<SimConversation> {
    list.iter().map(|(peer, n, style)| conv(peer, *n, *style)).collect()
}

/// A simulator world with these conversations only, requiring [`KEY`] and knowing only [`ACCOUNT`].
pub fn sim_config(seed: u64, conversations: Vec<SimConversation>) -> SimConfig {
    SimConfig {
        seed,
        conversations,
        api_key: Some(KEY.to_string()),
        account: Some(ACCOUNT.to_string()),
        // X API v2's real window (15 reads per 15 minutes) would stall the core tests; the provider
        // tests set a scaled-down one where pacing is the point.
        x_rate_limit: None,
        getxapi_auth_token: Some(AUTH_TOKEN.to_string()),
        ..SimConfig::default()
    }
}

/// Starts the simulator on loopback in this process.
pub async fn start_sim(cfg: SimConfig) -> SimHandle {
    Simulator::spawn(cfg).await.expect("the simulator starts on 127.0.0.1:0")
}

/// The history requests the simulator received for one peer, in the order they completed.
pub fn history_requests(stats: &Stats, peer: &str) -> usize {
    let path = format!("/api/v1/x/dm/{peer}/history");
    stats.log.iter().filter(|r| r.method == "GET" && r.path == path).count()
}

/// All history requests the simulator received, whichever provider's routes they went to.
pub fn all_history_requests(stats: &Stats) -> usize {
    stats
        .log
        .iter()
        .filter(|r| {
            let xquik = r.method == "GET" && r.path.starts_with("/api/v1/x/dm/") && r.path.ends_with("/history");
            let x_api_v2 =
                r.method == "GET" && r.path.starts_with("/2/dm_conversations/") && r.path.ends_with("/dm_events");
            let getxapi = r.method == "POST" && r.path == "/twitter/dm/conversation";
            xquik || x_api_v2 || getxapi
        })
        .count()
}

// ---------------------------------------------------------------------------------------------
// Providers

/// The provider APIs a pipeline can speak; the core tests run once per provider (`for_each_provider!`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Provider {
    Xquik,
    XApiV2,
    GetXApi,
}

impl Provider {
    /// The config's `provider` and every record's `provider`.
    pub fn name(self) -> &'static str {
        match self {
            Provider::Xquik => "xquik",
            Provider::XApiV2 => "x-api-v2",
            Provider::GetXApi => "getxapi",
        }
    }

    /// The config's `account`: the handle for Xquik, else the numeric ID the simulator derives for it.
    pub fn account(self) -> String {
        match self {
            Provider::Xquik => ACCOUNT.to_string(),
            Provider::XApiV2 | Provider::GetXApi => Simulator::account_id(ACCOUNT),
        }
    }

    /// The `base_url` of a simulator for this provider.
    pub fn base_url(self, sim: &SimHandle) -> String {
        match self {
            Provider::Xquik => sim.base_url(),
            Provider::XApiV2 | Provider::GetXApi => sim.root_url(),
        }
    }

    /// The route template 1:1 history records name in `source_endpoint`.
    pub fn history_endpoint(self) -> &'static str {
        match self {
            Provider::Xquik => HISTORY,
            Provider::XApiV2 => "GET /2/dm_conversations/with/{participant_id}/dm_events",
            Provider::GetXApi => "POST /twitter/dm/conversation",
        }
    }

    /// The error code a conversation the account may not read is reported with.
    pub fn forbidden_code(self) -> &'static str {
        match self {
            Provider::Xquik => "dm_not_permitted",
            Provider::XApiV2 => "not_authorized_for_resource",
            Provider::GetXApi => "http_403",
        }
    }

    /// The provider's 1:1 conversation ID with `peer`, which its records carry as `conversation_id`.
    pub fn conversation_id(self, peer: &str) -> Option<String> {
        let (a, b): (u64, u64) = (peer.parse().ok()?, self.account().parse().ok()?);
        (self != Provider::Xquik).then(|| format!("{}-{}", a.min(b), a.max(b)))
    }
}

/// Runs `async fn name(provider: Provider)` once per provider, as the tests `name::xquik`,
/// `name::x_api_v2` and `name::getxapi`: the same assertions, not copies.
macro_rules! for_each_provider {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn xquik() {
                super::$name(crate::support::Provider::Xquik).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn x_api_v2() {
                super::$name(crate::support::Provider::XApiV2).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn getxapi() {
                super::$name(crate::support::Provider::GetXApi).await
            }
        }
    )*};
}
pub(crate) use for_each_provider;

// ---------------------------------------------------------------------------------------------
// Configs

/// Whether a TOML snippet sets `key` (so the defaults below do not set it twice).
fn sets(extra: &str, key: &str) -> bool {
    extra.lines().any(|l| {
        let l = l.trim_start();
        l.strip_prefix(key).is_some_and(|rest| rest.trim_start().starts_with('='))
    })
}

/// Writes `pipelines.toml` into `dir`: SPEC section 3's minimal form with relative paths (`state`,
/// `out/support`), plus quick retries for tests, plus `extra` (keys of the pipeline table; any key in
/// `extra` replaces its default here). Returns the config's path.
pub fn write_config(dir: &Path, base_url: &str, conversations: &[&str], extra: &str) -> PathBuf {
    write_config_for(Provider::Xquik, dir, base_url, conversations, extra)
}

/// As [`write_config`], for `provider` (its account form; GetXAPI's `auth_token_env`).
pub fn write_config_for(
    provider: Provider,
    dir: &Path,
    base_url: &str,
    conversations: &[&str],
    extra: &str,
) -> PathBuf {
    let convs: Vec<String> = conversations.iter().map(|c| format!("\"{c}\"")).collect();
    let mut text = format!(
        "state_dir = \"state\"\n\n[[pipelines]]\nname = \"{PIPELINE}\"\nprovider = \"{}\"\nbase_url = \"{base_url}\"\n\
         api_key_env = \"{KEY_VAR}\"\naccount = \"{}\"\nconversations = [{}]\nschedule = \"*/30 * * * * *\"\n\
         output_dir = \"out/{PIPELINE}\"\n",
        provider.name(),
        provider.account(),
        convs.join(", ")
    );
    if provider == Provider::GetXApi {
        text.push_str(&format!("auth_token_env = \"{AUTH_TOKEN_VAR}\"\n"));
    }
    for (key, value) in [
        ("rotate_max_bytes", "67108864"),
        ("retry_base", "\"20ms\""),
        ("retry_max", "\"200ms\""),
        ("request_timeout", "\"5s\""),
        ("max_retries", "12"),
    ] {
        if !sets(extra, key) {
            text.push_str(&format!("{key} = {value}\n"));
        }
    }
    text.push_str(extra);
    text.push('\n');
    let path = dir.join("pipelines.toml");
    fs::write(&path, text).expect("write pipelines.toml");
    path
}

// ---------------------------------------------------------------------------------------------
// Running the binary

/// How a child ended and what it printed.
pub struct Output {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
    /// The command line, for messages.
    pub what: String,
}

impl Output {
    pub fn code(&self) -> Option<i32> {
        self.status.code()
    }

    /// Panics, showing everything the child printed, unless it exited with `code`.
    pub fn expect_code(&self, code: i32) -> &Output {
        assert_eq!(self.code(), Some(code), "exit status of `{}`\n{self}", self.what);
        self
    }

    /// The lines of stderr that report an error to the user (`error: …`).
    pub fn error_lines(&self) -> Vec<&str> {
        self.stderr.lines().filter(|l| l.starts_with("error:")).collect()
    }

    /// Both streams, for leak checks.
    pub fn all(&self) -> String {
        format!("{}\n{}", self.stdout, self.stderr)
    }
}

impl fmt::Display for Output {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let tail = |s: &str| -> String {
            let lines: Vec<&str> = s.lines().collect();
            let from = lines.len().saturating_sub(40);
            lines[from..].join("\n")
        };
        write!(
            f,
            "status: {:?}\n--- stdout (last 40 lines)\n{}\n--- stderr (last 40 lines)\n{}",
            self.status,
            tail(&self.stdout),
            tail(&self.stderr)
        )
    }
}

impl fmt::Debug for Output {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// A command line for the binary, run with a clean environment.
#[derive(Clone)]
pub struct Cmd {
    args: Vec<OsString>,
    envs: Vec<(String, String)>,
    key: Option<String>,
    cwd: Option<PathBuf>,
    file_size_limit: Option<u64>,
    /// A program (and its arguments) the binary runs under, like `strace … --`.
    wrapper: Vec<OsString>,
    /// Run as this user and group (the tests run as root in CI, where permissions do not bind root).
    user: Option<u32>,
}

impl Cmd {
    /// `dm-handoff <args>`, with [`KEY`] in [`KEY_VAR`].
    pub fn new(args: &[&str]) -> Cmd {
        Cmd {
            args: args.iter().map(OsString::from).collect(),
            envs: Vec::new(),
            key: Some(KEY.to_string()),
            cwd: None,
            file_size_limit: None,
            wrapper: Vec::new(),
            user: None,
        }
    }

    /// Runs the binary under `program args… BIN`, e.g. strace.
    pub fn wrapped(mut self, program: &[&str]) -> Cmd {
        self.wrapper = program.iter().map(OsString::from).collect();
        self
    }

    /// Runs the child as this uid (and the same gid), with no supplementary groups.
    pub fn run_as(mut self, uid: u32) -> Cmd {
        self.user = Some(uid);
        self
    }

    pub fn arg(mut self, arg: impl Into<OsString>) -> Cmd {
        self.args.push(arg.into());
        self
    }

    pub fn config(self, path: &Path) -> Cmd {
        self.arg("--config").arg(path)
    }

    /// The API key the child sees in [`KEY_VAR`]; None leaves the variable unset.
    pub fn key(mut self, key: Option<&str>) -> Cmd {
        self.key = key.map(str::to_string);
        self
    }

    pub fn env(mut self, key: &str, value: &str) -> Cmd {
        self.envs.push((key.to_string(), value.to_string()));
        self
    }

    pub fn cwd(mut self, dir: &Path) -> Cmd {
        self.cwd = Some(dir.to_path_buf());
        self
    }

    /// Runs the child under `RLIMIT_FSIZE = bytes`: writes past it fail with EFBIG.
    pub fn file_size_limit(mut self, bytes: u64) -> Cmd {
        self.file_size_limit = Some(bytes);
        self
    }

    fn describe(&self) -> String {
        let args: Vec<String> = self.args.iter().map(|a| a.to_string_lossy().into_owned()).collect();
        format!("dm-handoff {}", args.join(" "))
    }

    /// Starts the child; its output goes to anonymous files read by [`Running::wait`].
    pub fn spawn(&self) -> Running {
        let stdout = tempfile::tempfile().expect("temp file for stdout");
        let stderr = tempfile::tempfile().expect("temp file for stderr");
        let mut cmd = match self.wrapper.split_first() {
            Some((program, args)) => {
                let mut c = std::process::Command::new(program);
                c.args(args).arg(BIN);
                c
            }
            None => std::process::Command::new(BIN),
        };
        cmd.args(&self.args)
            .env_clear()
            .stdin(Stdio::null())
            .stdout(Stdio::from(stdout.try_clone().expect("clone stdout file")))
            .stderr(Stdio::from(stderr.try_clone().expect("clone stderr file")));
        if let Some(key) = &self.key {
            cmd.env(KEY_VAR, key);
        }
        for (k, v) in &self.envs {
            cmd.env(k, v);
        }
        if let Some(dir) = &self.cwd {
            cmd.current_dir(dir);
        }
        if let Some(limit) = self.file_size_limit {
            // SAFETY: runs in the forked child before exec and only calls setrlimit, which is
            // async-signal-safe; it touches no memory shared with the parent.
            unsafe {
                cmd.pre_exec(move || {
                    let rl = libc::rlimit { rlim_cur: limit as libc::rlim_t, rlim_max: limit as libc::rlim_t };
                    if libc::setrlimit(libc::RLIMIT_FSIZE, &rl) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        if let Some(uid) = self.user {
            // std drops the supplementary groups too when it changes the uid from root.
            cmd.uid(uid).gid(uid);
        }
        let child = cmd.spawn().unwrap_or_else(|e| panic!("cannot start {BIN}: {e}"));
        Running { child: Some(child), stdout, stderr, what: self.describe() }
    }

    /// Runs the child to completion (bounded by a generous timeout).
    pub async fn run(&self) -> Output {
        self.spawn().wait().await
    }
}

/// A child that is running.
pub struct Running {
    child: Option<std::process::Child>,
    stdout: File,
    stderr: File,
    what: String,
}

impl Running {
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or_default()
    }

    /// Sends a signal. The child is only reaped by [`Running::wait`], so its pid cannot be reused
    /// before that, even if it has already exited.
    pub fn signal(&self, sig: i32) {
        let pid = self.pid() as libc::pid_t;
        // SAFETY: kill(2) with the pid of our own, not yet reaped child.
        unsafe {
            libc::kill(pid, sig);
        }
    }

    /// Waits for the child (killing it after [`CHILD_TIMEOUT`]) and collects its output.
    pub async fn wait(mut self) -> Output {
        let mut child = self.child.take().expect("a child to wait for");
        let pid = child.id() as libc::pid_t;
        let waiter = tokio::task::spawn_blocking(move || child.wait());
        let status = match tokio::time::timeout(CHILD_TIMEOUT, waiter).await {
            Ok(joined) => joined.expect("waiter task").expect("wait for the child"),
            Err(_) => {
                // SAFETY: our own child, still unreaped (the waiter has not returned).
                unsafe {
                    libc::kill(pid, libc::SIGKILL);
                }
                let out = self.read_output();
                panic!(
                    "`{}` did not finish within {CHILD_TIMEOUT:?}; killed it\n--- stdout\n{}\n--- stderr\n{}",
                    self.what, out.0, out.1
                );
            }
        };
        let (stdout, stderr) = self.read_output();
        Output { status, stdout, stderr, what: self.what.clone() }
    }

    /// As [`Running::wait`], and the child's peak resident set size in KiB (`ru_maxrss` from `wait4`, this
    /// child's alone).
    pub async fn wait_with_peak_rss(mut self) -> (Output, u64) {
        let child = self.child.take().expect("a child to wait for");
        let pid = child.id() as libc::pid_t;
        let waiter = tokio::task::spawn_blocking(move || {
            let mut status = 0;
            // SAFETY: rusage is plain data; wait4 on our own unreaped child writes both out-parameters.
            let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
            let rc = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
            // Reaped: dropping the handle neither waits nor kills.
            drop(child);
            (rc, status, usage.ru_maxrss)
        });
        let (rc, status, max_rss) = match tokio::time::timeout(CHILD_TIMEOUT, waiter).await {
            Ok(joined) => joined.expect("waiter task"),
            Err(_) => {
                // SAFETY: our own child, still unreaped.
                unsafe {
                    libc::kill(pid, libc::SIGKILL);
                }
                panic!("`{}` did not finish within {CHILD_TIMEOUT:?}; killed it", self.what);
            }
        };
        assert_eq!(rc, pid, "wait4 failed: {}", std::io::Error::last_os_error());
        let (stdout, stderr) = self.read_output();
        let output = Output { status: ExitStatus::from_raw(status), stdout, stderr, what: self.what.clone() };
        (output, u64::try_from(max_rss).unwrap_or(0))
    }

    /// What the child has written to stderr so far.
    pub fn stderr_so_far(&self) -> String {
        use std::os::unix::fs::FileExt;
        let mut buf = vec![0; 256 * 1024];
        let n = self.stderr.read_at(&mut buf, 0).expect("read the child's stderr");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    }

    /// What the child has written to stdout so far (read without moving the file offset it shares).
    pub fn stdout_so_far(&self) -> String {
        use std::os::unix::fs::FileExt;
        let mut buf = vec![0; 64 * 1024];
        let n = self.stdout.read_at(&mut buf, 0).expect("read the child's stdout");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    }

    fn read_output(&mut self) -> (String, String) {
        let read = |f: &mut File| {
            let mut buf = Vec::new();
            f.seek(SeekFrom::Start(0)).expect("seek output file");
            f.read_to_end(&mut buf).expect("read output file");
            String::from_utf8_lossy(&buf).into_owned()
        };
        (read(&mut self.stdout), read(&mut self.stderr))
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        // A test that panics with a child still running must not leave it behind.
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Whether a child was ended by this signal.
pub fn killed_by(status: &ExitStatus, sig: i32) -> bool {
    status.signal() == Some(sig)
}

// ---------------------------------------------------------------------------------------------
// A test's world: simulator + folder + config

/// A simulator, a temporary folder and a config pointing the binary at the simulator.
pub struct Fixture {
    pub sim: SimHandle,
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    /// The configured conversations (peer IDs), in config order.
    pub peers: Vec<String>,
    /// Which provider's routes the config points at.
    pub provider: Provider,
}

impl Fixture {
    /// A simulator of `cfg` and a config listing every one of its conversations, plus `extra`.
    pub async fn new(cfg: SimConfig, extra: &str) -> Fixture {
        let peers: Vec<String> = cfg.conversations.iter().map(|c| c.peer_id.clone()).collect();
        Fixture::with_peers(cfg, &peers, extra).await
    }

    /// As [`Fixture::new`], configuring exactly `peers`.
    pub async fn with_peers(cfg: SimConfig, peers: &[String], extra: &str) -> Fixture {
        Fixture::with_peers_for(Provider::Xquik, cfg, peers, extra).await
    }

    /// As [`Fixture::new`], with a pipeline of `provider`.
    pub async fn new_for(provider: Provider, cfg: SimConfig, extra: &str) -> Fixture {
        let peers: Vec<String> = cfg.conversations.iter().map(|c| c.peer_id.clone()).collect();
        Fixture::with_peers_for(provider, cfg, &peers, extra).await
    }

    /// As [`Fixture::with_peers`], with a pipeline of `provider`.
    pub async fn with_peers_for(provider: Provider, cfg: SimConfig, peers: &[String], extra: &str) -> Fixture {
        let sim = start_sim(cfg).await;
        let dir = tempfile::tempdir().expect("temp dir");
        let refs: Vec<&str> = peers.iter().map(String::as_str).collect();
        let config = write_config_for(provider, dir.path(), &provider.base_url(&sim), &refs, extra);
        fs::create_dir(dir.path().join("elsewhere")).expect("create the working folder");
        Fixture { sim, dir, config, peers: peers.to_vec(), provider }
    }

    /// The config's `account`.
    pub fn account(&self) -> String {
        self.provider.account()
    }

    /// History requests the simulator received for the 1:1 conversation with `peer`.
    pub fn history_requests(&self, peer: &str) -> usize {
        let stats = self.sim.sim.stats();
        match self.provider {
            Provider::Xquik => history_requests(&stats, peer),
            Provider::XApiV2 => {
                let path = format!("/2/dm_conversations/with/{peer}/dm_events");
                stats.log.iter().filter(|r| r.method == "GET" && r.path == path).count()
            }
            Provider::GetXApi => {
                let id = self.provider.conversation_id(peer).unwrap_or_default();
                self.sim.sim.getxapi_history_requests(&id) as usize
            }
        }
    }

    /// [`assert_spec_fields_for`] this fixture's provider.
    pub fn assert_spec_fields(&self, records: &[Value]) {
        assert_spec_fields_for(self.provider, records, &self.sim.sim);
    }

    pub fn out_dir(&self) -> PathBuf {
        self.dir.path().join("out").join(PIPELINE)
    }

    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    pub fn active_path(&self) -> PathBuf {
        self.out_dir().join(ACTIVE)
    }

    /// The child's working folder: not the config's, so relative paths in the config are only
    /// right if they are taken from the config's folder (SPEC section 2).
    pub fn cwd(&self) -> PathBuf {
        self.dir.path().join("elsewhere")
    }

    /// `dm-handoff <args> --config <ours>`, run from [`Fixture::cwd`] (with the `auth_token` for GetXAPI).
    pub fn cmd(&self, args: &[&str]) -> Cmd {
        let cmd = Cmd::new(args).config(&self.config).cwd(&self.cwd());
        if self.provider == Provider::GetXApi {
            cmd.env(AUTH_TOKEN_VAR, AUTH_TOKEN)
        } else {
            cmd
        }
    }

    pub async fn sync(&self) -> Output {
        self.cmd(&["sync"]).run().await
    }

    /// Every record in the output folder (strict: see [`read_records`]).
    pub fn records(&self) -> Vec<Value> {
        read_records(&self.out_dir())
    }

    /// Reads the records and checks exactly-once against the simulator's ground truth, and that every
    /// record names this fixture's provider and every history record, for X API v2 and GetXAPI, its
    /// conversation ID.
    pub fn assert_exactly_once(&self) -> Vec<Value> {
        let records = self.records();
        assert_exactly_once(&records, &self.sim.sim, &self.peers);
        for r in &records {
            assert_eq!(str_field(r, "provider"), Some(self.provider.name()), "{r}");
            if !matches!(str_field(r, "kind"), Some("dm_message" | "dm_event")) {
                continue;
            }
            if let Some(peer) = str_field(r, "conversation_user_id") {
                let want = self.provider.conversation_id(peer);
                assert_eq!(str_field(r, "conversation_id").map(str::to_string), want, "conversation_id: {r}");
            } else if self.provider != Provider::Xquik {
                assert!(str_field(r, "conversation_id").is_some(), "a record without any conversation: {r}");
            }
        }
        records
    }

    /// Opens the state (no process may hold it) and checks that the seen set was folded: most history
    /// records are covered by ranges rather than exact keys, so exactly-once was checked with folding on.
    /// Returns (exact history keys, conversations with a range).
    pub fn assert_seen_set_folded(&self, records: &[Value]) -> (u64, usize) {
        use dm_handoff::state::{Store, StoreOptions};
        let store = Store::open(&self.state_dir(), StoreOptions::default()).expect("open the state");
        let exact = store.count_seen(PIPELINE, Some(dm_handoff::record::Kind::DmMessage)).expect("count")
            + store.count_seen(PIPELINE, Some(dm_handoff::record::Kind::DmEvent)).expect("count");
        let convs = store.conversations(PIPELINE).expect("conversations");
        let ranged = convs.iter().filter(|(c, _)| store.covered(PIPELINE, c).expect("covered").is_some()).count();
        let history =
            records.iter().filter(|r| matches!(str_field(r, "kind"), Some("dm_message" | "dm_event"))).count();
        assert!(ranged > 0, "no conversation was folded");
        assert!((exact as usize) * 2 < history, "{exact} exact keys for {history} history records: not folded");
        (exact, ranged)
    }

    /// `status --json`, parsed.
    pub async fn status_json(&self) -> Value {
        let out = self.cmd(&["status", "--json"]).run().await;
        out.expect_code(0);
        serde_json::from_str(&out.stdout)
            .unwrap_or_else(|e| panic!("status --json is not one JSON document ({e})\n{out}"))
    }
}

// ---------------------------------------------------------------------------------------------
// Reading the handoff files

/// One handoff file.
#[derive(Clone, Debug)]
pub struct HandoffFile {
    pub name: String,
    /// Closed segments: (`YYYYMMDDTHHMMSSZ`, seq). None for the active file.
    pub closed: Option<(String, u64)>,
    pub bytes: Vec<u8>,
    pub mode: u32,
}

/// Parses `xquik-dm-handoff.<YYYYMMDDTHHMMSSZ>.<seq, 6+ digits>.jsonl` into (stamp, seq).
pub fn parse_closed_name(name: &str) -> Option<(String, u64)> {
    let rest = name.strip_prefix(STEM)?.strip_prefix('.')?.strip_suffix(".jsonl")?;
    let (stamp, seq) = rest.split_once('.')?;
    let b = stamp.as_bytes();
    let stamp_ok = b.len() == 16
        && b[..8].iter().all(u8::is_ascii_digit)
        && b[8] == b'T'
        && b[9..15].iter().all(u8::is_ascii_digit)
        && b[15] == b'Z';
    let seq_ok = seq.len() >= 6 && seq.bytes().all(|c| c.is_ascii_digit());
    if !(stamp_ok && seq_ok) {
        return None;
    }
    Some((stamp.to_string(), seq.parse().ok()?))
}

/// The handoff files of an output folder: uncompressed closed segments in seq order, then the active
/// file. Manifests (`<stem>.*.manifest.json`) and the hidden `.….tmp` files of a finishing step are
/// skipped (`loader.rs` checks those); any other file panics. Empty if the folder is missing.
pub fn handoff_files(dir: &Path) -> Vec<HandoffFile> {
    let Ok(entries) = fs::read_dir(dir) else { return Vec::new() };
    let mut closed = Vec::new();
    let mut active = None;
    for e in entries {
        let e = e.expect("read output dir");
        let name = e.file_name().to_string_lossy().into_owned();
        let meta = e.metadata().expect("stat handoff file");
        let file = |closed| HandoffFile {
            name: name.clone(),
            closed,
            bytes: fs::read(e.path()).expect("read handoff file"),
            mode: meta.permissions().mode() & 0o777,
        };
        let manifest = name.starts_with(STEM) && name.ends_with(".manifest.json");
        if manifest || (name.starts_with('.') && name.ends_with(".tmp")) {
            continue;
        }
        if name == ACTIVE {
            active = Some(file(None));
        } else if let Some(c) = parse_closed_name(&name) {
            closed.push(file(Some(c)));
        } else {
            panic!("unexpected file {name} in {}", dir.display());
        }
    }
    closed.sort_by_key(|f| f.closed.as_ref().map(|c| c.1));
    closed.extend(active);
    closed
}

/// Splits a file into its lines; every line must end with `\n` and parse as a JSON object.
fn parse_lines(f: &HandoffFile, tolerate_torn_tail: bool) -> Vec<Value> {
    let text = std::str::from_utf8(&f.bytes).unwrap_or_else(|e| panic!("{} is not UTF-8: {e}", f.name));
    let complete = match text.rfind('\n') {
        Some(i) => &text[..=i],
        None => "",
    };
    if complete.len() != text.len() {
        assert!(
            tolerate_torn_tail,
            "{} ends with a torn line (no trailing \\n): {:?}",
            f.name,
            &text[complete.len()..].chars().take(80).collect::<String>()
        );
    }
    complete
        .lines()
        .enumerate()
        .map(|(i, line)| {
            let v: Value = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("{} line {}: not JSON ({e}): {line:?}", f.name, i + 1));
            assert!(v.is_object(), "{} line {}: not a JSON object: {line}", f.name, i + 1);
            v
        })
        .collect()
}

/// Every record of an output folder, closed segments in seq order then the active file. Asserts that
/// every file ends with `\n` and every line parses as a JSON object.
pub fn read_records(dir: &Path) -> Vec<Value> {
    handoff_files(dir).iter().flat_map(|f| parse_lines(f, false)).collect()
}

/// As [`read_records`], but a torn last line of the active file (left by `kill -9`, repaired at the
/// next start) is ignored. Closed segments must still be complete.
pub fn read_complete_records(dir: &Path) -> Vec<Value> {
    handoff_files(dir).iter().flat_map(|f| parse_lines(f, f.closed.is_none())).collect()
}

/// Lines (without `\n`) of one file's bytes.
pub fn line_count(bytes: &[u8]) -> usize {
    bytes.iter().filter(|b| **b == b'\n').count()
}

pub fn str_field<'a>(r: &'a Value, key: &str) -> Option<&'a str> {
    r.get(key).and_then(Value::as_str)
}

/// `(kind, conversation, message_id)`: a message record's exactly-once key.
pub fn key_of(r: &Value) -> (String, String, String) {
    let s = |k: &str| str_field(r, k).unwrap_or("<missing>").to_string();
    (s("kind"), s("conversation_user_id"), s("message_id"))
}

/// Panics if any exactly-once key appears more than once.
pub fn assert_no_duplicates(records: &[Value]) {
    let mut counts: HashMap<(String, String, String), usize> = HashMap::new();
    for r in records {
        *counts.entry(key_of(r)).or_default() += 1;
    }
    let dups: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).take(5).collect();
    assert!(dups.is_empty(), "records written more than once (showing up to 5): {dups:?}");
}

/// For each configured peer, the multiset of `message_id`s of `dm_message` records equals the
/// simulator's ground truth: every message once, none missing, none extra. Every `dm_message` record
/// must belong to a configured conversation; records of other kinds are not looked at here.
pub fn assert_exactly_once(records: &[Value], sim: &Simulator, peers: &[String]) {
    let mut got: BTreeMap<&str, BTreeMap<&str, usize>> = BTreeMap::new();
    // Group records (X API v2, GetXAPI) have a `conversation_id` and no peer; tests check those themselves.
    let one_to_one = |r: &&Value| r.get("conversation_user_id").is_some() || r.get("conversation_id").is_none();
    for r in records.iter().filter(|r| str_field(r, "kind") == Some("dm_message")).filter(one_to_one) {
        let peer =
            str_field(r, "conversation_user_id").unwrap_or_else(|| panic!("record without conversation_user_id: {r}"));
        assert!(peers.iter().any(|p| p == peer), "record of a conversation that is not configured: {r}");
        let id = str_field(r, "message_id").unwrap_or_else(|| panic!("record without a string message_id: {r}"));
        *got.entry(peer).or_default().entry(id).or_default() += 1;
    }
    let mut problems = Vec::new();
    for peer in peers {
        let truth: BTreeSet<String> = sim.messages(peer).into_iter().map(|m| m.id).collect();
        let empty = BTreeMap::new();
        let mine = got.get(peer.as_str()).unwrap_or(&empty);
        let dups: Vec<_> = mine.iter().filter(|(_, n)| **n > 1).map(|(id, n)| format!("{id}×{n}")).collect();
        let missing: Vec<_> = truth.iter().filter(|id| !mine.contains_key(id.as_str())).collect();
        let extra: Vec<_> = mine.keys().filter(|id| !truth.contains(**id)).collect();
        if !dups.is_empty() || !missing.is_empty() || !extra.is_empty() {
            problems.push(format!(
                "conversation {peer}: {} in truth, {} distinct written; {} duplicated {:?}; {} missing {:?}; {} extra {:?}",
                truth.len(),
                mine.len(),
                dups.len(),
                &dups[..dups.len().min(5)],
                missing.len(),
                &missing[..missing.len().min(5)],
                extra.len(),
                &extra[..extra.len().min(5)],
            ));
        }
    }
    assert!(problems.is_empty(), "exactly-once violated:\n{}", problems.join("\n"));
}

/// `2026-02-24T10:00:00.000Z`: RFC 3339 UTC with milliseconds and `Z`.
pub fn is_millis_z(s: &str) -> bool {
    let b = s.as_bytes();
    let digits = |r: std::ops::Range<usize>| b[r].iter().all(u8::is_ascii_digit);
    b.len() == 24
        && digits(0..4)
        && b[4] == b'-'
        && digits(5..7)
        && b[7] == b'-'
        && digits(8..10)
        && b[10] == b'T'
        && digits(11..13)
        && b[13] == b':'
        && digits(14..16)
        && b[16] == b':'
        && digits(17..19)
        && b[19] == b'.'
        && digits(20..23)
        && b[23] == b'Z'
}

/// Checks every field of every record against SPEC section 4 (and "Other providers' records" for X API v2
/// and GetXAPI) and the simulator's ground truth.
pub fn assert_spec_fields_for(provider: Provider, records: &[Value], sim: &Simulator) {
    let mut truth: HashMap<String, HashMap<String, dm_handoff_simulator::SimMessage>> = HashMap::new();
    for r in records {
        let peer = str_field(r, "conversation_user_id").expect("conversation_user_id").to_string();
        let msgs = truth
            .entry(peer.clone())
            .or_insert_with(|| sim.messages(&peer).into_iter().map(|m| (m.id.clone(), m)).collect());
        let id = str_field(r, "message_id").expect("message_id is a string");
        let m = msgs.get(id).unwrap_or_else(|| panic!("record of a message the simulator does not have: {r}"));
        let obj = r.as_object().expect("object");
        for (k, v) in obj {
            assert!(!v.is_null(), "field {k} is null (absent fields are left out, never null): {r}");
        }
        for k in ["conversation_user_id", "message_id", "sender_id", "receiver_id"] {
            assert!(r[k].is_string(), "{k} must be a JSON string: {r}");
        }
        assert_eq!(str_field(r, "kind"), Some("dm_message"), "{r}");
        assert_eq!(str_field(r, "provider"), Some(provider.name()), "{r}");
        assert_eq!(str_field(r, "pipeline"), Some(PIPELINE), "{r}");
        assert_eq!(str_field(r, "account"), Some(provider.account().as_str()), "{r}");
        assert_eq!(str_field(r, "conversation_id").map(str::to_string), provider.conversation_id(&peer), "{r}");
        assert_eq!(str_field(r, "sender_id"), Some(m.sender_id.as_str()), "{r}");
        assert_eq!(str_field(r, "receiver_id"), Some(m.receiver_id.as_str()), "{r}");
        let direction = if m.sender_id == peer { "inbound" } else { "outbound" };
        assert_eq!(str_field(r, "direction"), Some(direction), "{r}");
        let created = str_field(r, "created_at")
            .unwrap_or_else(|| panic!("created_at missing (omitted by the API: {}): {r}", m.created_at_omitted));
        assert!(is_millis_z(created), "created_at {created:?} is not RFC 3339 millis Z: {r}");
        assert_eq!(created, m.created_at, "created_at (omitted by the API: {}): {r}", m.created_at_omitted);
        assert_eq!(str_field(r, "text"), m.text.as_deref(), "text present iff the API had it, and unchanged: {r}");
        assert_eq!(str_field(r, "media_url"), m.media_url.as_deref(), "media_url present iff the API had it: {r}");
        assert_eq!(str_field(r, "source_endpoint"), Some(provider.history_endpoint()), "{r}");
        let synced = str_field(r, "synced_at").unwrap_or_else(|| panic!("synced_at missing: {r}"));
        assert!(is_millis_z(synced), "synced_at {synced:?}: {r}");
    }
}

// ---------------------------------------------------------------------------------------------
// status --json

/// The status entry of one conversation: the object naming `peer` that carries `messages_written`.
pub fn conv_status<'a>(status: &'a Value, peer: &str) -> &'a Value {
    fn find<'a>(v: &'a Value, peer: &str) -> Option<&'a Value> {
        match v {
            Value::Object(o) => {
                let names_peer = ["conversation", "configured", "conversation_user_id", "id"]
                    .iter()
                    .any(|k| o.get(*k).and_then(Value::as_str) == Some(peer));
                if names_peer && o.contains_key("messages_written") {
                    return Some(v);
                }
                o.values().find_map(|c| find(c, peer))
            }
            Value::Array(a) => a.iter().find_map(|c| find(c, peer)),
            _ => None,
        }
    }
    find(status, peer).unwrap_or_else(|| panic!("status --json does not list conversation {peer}:\n{status:#}"))
}

/// Records per conversation.
pub fn count_by_peer(records: &[Value]) -> BTreeMap<String, u64> {
    let mut m = BTreeMap::new();
    for r in records {
        *m.entry(str_field(r, "conversation_user_id").unwrap_or_default().to_string()).or_default() += 1;
    }
    m
}

/// Checks `status --json` agrees with the files and the simulator: per conversation, messages
/// written = records in the files, newest message ID = the simulator's newest, backfill done.
pub fn assert_status_matches(status: &Value, records: &[Value], sim: &Simulator, peers: &[String]) {
    let counts = count_by_peer(records);
    for peer in peers {
        let st = conv_status(status, peer);
        let written = counts.get(peer).copied().unwrap_or(0);
        assert_eq!(
            st["messages_written"].as_u64(),
            Some(written),
            "messages_written of {peer} vs lines in the files: {st}"
        );
        let newest = sim.messages(peer).first().map(|m| m.id.clone());
        assert_eq!(st["newest_message_id"].as_str().map(str::to_string), newest, "newest_message_id of {peer}: {st}");
        assert_eq!(st["backfill_done"].as_bool(), Some(true), "backfill_done of {peer}: {st}");
    }
}

/// Polls until `cond` holds (every 20 ms), panicking with `what` after 60 s.
pub async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while !cond() {
        assert!(tokio::time::Instant::now() < deadline, "gave up waiting until {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Total bytes of every regular file under `dir`, and the largest one.
pub fn largest_file(dir: &Path) -> u64 {
    let mut max = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).into_iter().flatten().flatten() {
            let meta = e.metadata().expect("stat");
            if meta.is_dir() {
                stack.push(e.path());
            } else {
                max = max.max(meta.len());
            }
        }
    }
    max
}

/// The `zq…` marker tokens the simulator puts in every generated text.
pub fn markers(text: &str) -> Vec<String> {
    let b = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i + 10 <= b.len() {
        if &b[i..i + 2] == b"zq" && b[i + 2..i + 10].iter().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit()) {
            out.push(text[i..i + 10].to_string());
            i += 10;
        } else {
            i += 1;
        }
    }
    out
}

/// The cursor style of conversation `i` in a mixed set.
pub fn style(i: usize) -> CursorStyle {
    if i % 2 == 0 {
        CursorStyle::Offset
    } else {
        CursorStyle::MaxId
    }
}

pub fn records_of_kind<'a>(records: &'a [Value], kind: &str) -> Vec<&'a Value> {
    records.iter().filter(|r| str_field(r, "kind") == Some(kind)).collect()
}

// ---------------------------------------------------------------------------------------------
// Metrics (`metrics_listen`)

/// Turns on `metrics_listen` in a written config, on a loopback port that was free a moment ago, and
/// returns the address to scrape.
pub fn enable_metrics(config: &Path) -> std::net::SocketAddr {
    let addr = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free port");
    let text = fs::read_to_string(config).expect("read config");
    // A top-level key: before the first table.
    fs::write(config, format!("metrics_listen = \"{addr}\"\n{text}")).expect("write config");
    addr
}

/// `GET http://addr/path`: the status, the `Content-Type` and the body; None while nothing listens.
pub async fn http_get(addr: std::net::SocketAddr, path: &str, accept: Option<&str>) -> Option<(u16, String, String)> {
    let mut req = reqwest::Client::new().get(format!("http://{addr}{path}")).timeout(Duration::from_secs(10));
    if let Some(a) = accept {
        req = req.header(reqwest::header::ACCEPT, a);
    }
    let resp = req.send().await.ok()?;
    let status = resp.status().as_u16();
    let ctype =
        resp.headers().get(reqwest::header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
    Some((status, ctype, resp.text().await.ok()?))
}

/// The daemon's `/metrics`, as a plain client (and `promtool`) reads it: the Prometheus text format.
pub async fn scrape(addr: std::net::SocketAddr) -> Metrics {
    let (status, ctype, body) = http_get(addr, "/metrics", None).await.expect("the daemon serves /metrics");
    assert_eq!(status, 200, "{body}");
    assert!(ctype.starts_with("text/plain; version=0.0.4"), "content type {ctype}");
    Metrics::parse(&body)
}

/// Waits until the daemon answers `/healthz` (it binds before READY, so this is "started").
pub async fn wait_for_metrics(addr: std::net::SocketAddr) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while http_get(addr, "/healthz", None).await.is_none() {
        assert!(tokio::time::Instant::now() < deadline, "nothing answers on {addr}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// One scrape in the text format: every sample line as (name, labels, value).
pub struct Metrics {
    pub text: String,
    pub samples: Vec<(String, BTreeMap<String, String>, f64)>,
}

impl Metrics {
    /// Parses sample lines `name{k="v",…} value`. Label values here never hold `,` or `"` (pipeline names,
    /// kinds, statuses), so a simple split is exact.
    pub fn parse(text: &str) -> Metrics {
        let mut samples = Vec::new();
        for line in text.lines().filter(|l| !l.starts_with('#') && !l.is_empty()) {
            let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("not a sample: {line}"));
            let value: f64 = value.parse().unwrap_or_else(|_| panic!("not a value: {line}"));
            let (name, labels) = match series.split_once('{') {
                Some((n, rest)) => (n, rest.strip_suffix('}').unwrap_or_else(|| panic!("labels: {line}"))),
                None => (series, ""),
            };
            let labels = labels
                .split(',')
                .filter(|l| !l.is_empty())
                .map(|kv| {
                    let (k, v) = kv.split_once('=').unwrap_or_else(|| panic!("label: {line}"));
                    (k.to_string(), v.trim_matches('"').to_string())
                })
                .collect();
            samples.push((name.to_string(), labels, value));
        }
        Metrics { text: text.to_string(), samples }
    }

    /// The sum of `name`'s samples whose labels include every one of `labels`; None if there is none.
    pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let matching: Vec<f64> = self
            .samples
            .iter()
            .filter(|(n, l, _)| n == name && labels.iter().all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v)))
            .map(|(_, _, v)| *v)
            .collect();
        (!matching.is_empty()).then(|| matching.iter().sum())
    }

    /// As [`Metrics::get`], 0 when absent (a counter nothing moved yet).
    pub fn count(&self, name: &str, labels: &[(&str, &str)]) -> u64 {
        self.get(name, labels).unwrap_or(0.0) as u64
    }
}

/// `promtool check metrics` on a scrape. In CI (`CI` set) promtool must be there; elsewhere a missing one
/// skips the check, loudly.
pub fn promtool_check_metrics(text: &str) {
    use std::io::Write as _;
    let spawned = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match spawned {
        Ok(c) => c,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && std::env::var_os("CI").is_none() => {
            eprintln!("\n*** promtool is not installed: `promtool check metrics` SKIPPED (CI requires it; apt-get install prometheus) ***\n");
            return;
        }
        Err(e) => panic!("cannot run promtool (CI needs it: apt-get install prometheus): {e}"),
    };
    child.stdin.take().expect("stdin").write_all(text.as_bytes()).expect("feed promtool");
    let out = child.wait_with_output().expect("promtool ran");
    assert!(
        out.status.success() && out.stdout.is_empty() && out.stderr.is_empty(),
        "promtool check metrics found problems:\n{}{}\n--- the scrape\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
