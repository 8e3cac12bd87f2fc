//! Issue 27, part C: what a local adversary could do to the daemon's listeners and secret files. Idle
//! connections to the metrics endpoint and the control socket are capped and closed (the daemon's open
//! files stay bounded, SIGTERM does not wait for them); a silent connection does not delay `auth`'s real
//! callback; a key or token file others can read, or one that is a FIFO, is refused; an `account` with a
//! control or bidi character is refused.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use dm_handoff_simulator::CursorStyle;

use crate::support::*;

/// The test builds' override of every listener's idle bound (`control::LISTENER_TIMEOUT_ENV`).
const TIMEOUT_ENV: &str = "DM_HANDOFF_TEST_LISTENER_TIMEOUT_MS";
/// More connections than either listener serves at once (64), fewer than this process may open.
const FLOOD: usize = 300;

/// Open file descriptors of a process.
fn fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count()).unwrap_or(0)
}

/// A daemon fixture whose schedule never fires during the test, with `top` prepended to the config
/// (top-level keys must come before the first table).
async fn quiet_daemon(seed: u64, top: &str) -> Fixture {
    let fx = Fixture::new(sim_config(seed, vec![conv(&format!("{seed}0001"), 20, CursorStyle::Offset)]), "").await;
    let text = std::fs::read_to_string(&fx.config).unwrap().replace("*/30 * * * * *", "0 0 0 1 1 *");
    std::fs::write(&fx.config, format!("{top}\n{text}")).unwrap();
    fx
}

/// Waits until the daemon answers on its control socket (`status` through it).
async fn wait_for_control(fx: &Fixture) {
    let sock = fx.state_dir().join("control.sock");
    wait_until("the daemon listens on its control socket", || sock.exists()).await;
}

/// Whether the peer closed the connection within `within` (a read returns EOF or an error).
async fn closed_within(stream: &mut (impl tokio::io::AsyncRead + Unpin), within: Duration) -> bool {
    use tokio::io::AsyncReadExt;
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            // An answer (the control socket's timeout error, a 408): keep reading to the close.
            Ok(Ok(_)) => continue,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_metrics_connections_are_capped_and_closed_and_scrapes_answer_again() {
    let fx = quiet_daemon(9101, "").await;
    let addr = enable_metrics(&fx.config);
    let daemon = fx.cmd(&["run"]).env(TIMEOUT_ENV, "3000").spawn();
    wait_for_metrics(addr).await;
    let before = fds(daemon.pid());

    let mut idle = Vec::new();
    for _ in 0..FLOOD {
        idle.push(tokio::net::TcpStream::connect(addr).await.expect("connect"));
    }
    // Give the daemon time to accept every one of them (the backlog holds what it has not).
    tokio::time::sleep(Duration::from_millis(500)).await;
    let during = fds(daemon.pid());
    assert!(during <= before + 64 + 8, "{FLOOD} idle connections took the daemon from {before} to {during} open files");

    // Every idle one is closed: the ones over the cap at once, the others after the header-read timeout.
    for (i, s) in idle.iter_mut().enumerate() {
        assert!(closed_within(s, Duration::from_secs(60)).await, "idle connection {i} is still open");
    }
    drop(idle);
    let (status, _, body) = http_get(addr, "/healthz", None).await.expect("a scrape answers after the flood");
    assert_eq!((status, body.as_str()), (200, "ok\n"));
    scrape(addr).await;
    let after = fds(daemon.pid());
    assert!(after <= before + 4, "open files {before} before the flood, {after} after it");

    daemon.signal(libc::SIGTERM);
    daemon.wait().await.expect_code(0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_control_connections_are_capped_and_time_out_and_status_answers_again() {
    let fx = quiet_daemon(9102, "").await;
    let daemon = fx.cmd(&["run"]).env(TIMEOUT_ENV, "3000").spawn();
    wait_for_control(&fx).await;
    fx.cmd(&["status"]).run().await.expect_code(0);
    let before = fds(daemon.pid());

    let sock = fx.state_dir().join("control.sock");
    let mut idle = Vec::new();
    for _ in 0..FLOOD {
        idle.push(tokio::net::UnixStream::connect(&sock).await.expect("connect"));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let during = fds(daemon.pid());
    assert!(during <= before + 64 + 8, "{FLOOD} idle connections took the daemon from {before} to {during} open files");
    for (i, s) in idle.iter_mut().enumerate() {
        assert!(closed_within(s, Duration::from_secs(60)).await, "idle control connection {i} is still open");
    }
    drop(idle);
    let status = fx.cmd(&["status"]).run().await;
    status.expect_code(0);
    assert!(status.stdout.contains(PIPELINE), "{status}");
    let after = fds(daemon.pid());
    assert!(after <= before + 4, "open files {before} before the flood, {after} after it");
    daemon.signal(libc::SIGTERM);
    daemon.wait().await.expect_code(0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_does_not_wait_for_idle_control_connections() {
    // A shutdown_timeout and a request timeout far longer than the bound below: only ending the idle
    // connections at the stop itself lets the daemon exit within it.
    let fx = quiet_daemon(9103, "shutdown_timeout = \"90s\"").await;
    let daemon = fx.cmd(&["run"]).env(TIMEOUT_ENV, "600000").spawn();
    wait_for_control(&fx).await;
    fx.cmd(&["status"]).run().await.expect_code(0);
    let sock = fx.state_dir().join("control.sock");
    let mut idle = Vec::new();
    for _ in 0..20 {
        idle.push(tokio::net::UnixStream::connect(&sock).await.expect("connect"));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let start = tokio::time::Instant::now();
    daemon.signal(libc::SIGTERM);
    let out = daemon.wait().await;
    out.expect_code(0);
    let took = start.elapsed();
    assert!(took < Duration::from_secs(45), "SIGTERM with idle control connections took {took:?}\n{out}");
    drop(idle);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_connections_do_not_delay_the_oauth_callback() {
    const CLIENT: &str = "dm-handoff-it-client";
    let mut cfg = sim_config(9104, vec![conv("91040001", 5, CursorStyle::MaxId)]);
    cfg.x_token_lifetime_secs = Some(3_600);
    let fx = Fixture::new_for(Provider::XApiV2, cfg, "").await;
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let root = fx.sim.root_url();
    let text = std::fs::read_to_string(&fx.config).unwrap().replace(&format!("api_key_env = \"{KEY_VAR}\"\n"), "");
    std::fs::write(
        &fx.config,
        format!(
            "{text}oauth_client_id = \"{CLIENT}\"\noauth_authorize_url = \"{root}/i/oauth2/authorize\"\n\
             oauth_token_url = \"{root}/2/oauth2/token\"\noauth_redirect_uri = \"http://127.0.0.1:{port}/callback\"\n"
        ),
    )
    .unwrap();
    // The per-connection read bound is left long: only reading connections side by side lets the real
    // callback through while the silent ones are held.
    let child = fx.cmd(&["auth", "--pipeline", PIPELINE]).env(TIMEOUT_ENV, "600000").spawn();
    let mut url = None;
    wait_until("auth prints the authorize URL", || {
        url = child.stdout_so_far().lines().find(|l| l.starts_with("http")).map(str::to_string);
        url.is_some()
    })
    .await;
    let mut silent = Vec::new();
    for _ in 0..3 {
        silent.push(tokio::net::TcpStream::connect(("127.0.0.1", port)).await.expect("connect to the callback"));
    }
    let http = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let resp = http.get(url.unwrap()).send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 302);
    let location = resp.headers()["location"].to_str().unwrap().to_string();
    // Served one at a time, the three silent connections would hold this one behind their 10 s reads.
    let resp = http.get(&location).timeout(Duration::from_secs(8)).send().await.expect("the callback answers");
    assert_eq!(resp.status().as_u16(), 200);
    let out = child.wait().await;
    out.expect_code(0);
    assert!(out.stderr.contains("tokens stored"), "{out}");
    drop(silent);
}

/// A fixture whose pipeline reads its key from `key.txt` beside the config, written with `mode`.
async fn key_file_fixture(seed: u64, mode: u32) -> (Fixture, std::path::PathBuf) {
    let fx = Fixture::new(sim_config(seed, vec![conv(&format!("{seed}0001"), 10, CursorStyle::Offset)]), "").await;
    let text = std::fs::read_to_string(&fx.config).unwrap();
    std::fs::write(&fx.config, text.replace(&format!("api_key_env = \"{KEY_VAR}\""), "api_key_file = \"key.txt\""))
        .unwrap();
    let key_file = fx.config.parent().unwrap().join("key.txt");
    std::fs::write(&key_file, format!("{KEY}\n")).unwrap();
    std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(mode)).unwrap();
    (fx, key_file)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_file_others_can_read_is_refused_with_the_chmod_fix() {
    let (fx, key_file) = key_file_fixture(9105, 0o644).await;
    let out = fx.cmd(&["sync"]).key(None).run().await;
    out.expect_code(2);
    let fix = format!("chmod 600 {}", key_file.display());
    assert!(out.stderr.contains(&fix) && out.stderr.contains("readable by other users"), "{out}");
    assert!(!out.all().contains(KEY), "the key is echoed: {out}");
    assert!(!fx.out_dir().exists(), "nothing is written before the key is usable");
    std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o640)).unwrap();
    fx.cmd(&["sync"]).key(None).run().await.expect_code(2);

    std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    fx.cmd(&["sync"]).key(None).run().await.expect_code(0);
    fx.assert_exactly_once();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_systemd_credential_is_read_although_stat_shows_its_acl_mask_as_group_read() {
    // systemd writes a `User=` service's credential 0400 with a read ACL for that user: `stat` shows 0440.
    // The file in $CREDENTIALS_DIRECTORY is the unit's private mount, so it is read; the same mode
    // outside it is refused.
    let (fx, key_file) = key_file_fixture(9108, 0o440).await;
    fx.cmd(&["sync"]).key(None).run().await.expect_code(2);
    let creds = key_file.parent().unwrap().to_str().unwrap().to_string();
    fx.cmd(&["sync"]).key(None).env("CREDENTIALS_DIRECTORY", &creds).run().await.expect_code(0);
    fx.assert_exactly_once();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fifo_as_the_key_file_is_refused_instead_of_hanging() {
    let (fx, key_file) = key_file_fixture(9106, 0o600).await;
    std::fs::remove_file(&key_file).unwrap();
    let c = std::ffi::CString::new(key_file.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0, "mkfifo");
    // Nobody ever writes the FIFO: a blocking open would hang the child until the harness kills it.
    let out = fx.cmd(&["sync"]).key(None).run().await;
    out.expect_code(2);
    assert!(out.stderr.contains("a FIFO, not a regular file") && out.stderr.contains("key.txt"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_store_others_can_read_is_refused_with_the_chmod_fix() {
    let mut cfg = sim_config(9107, vec![conv("91070001", 5, CursorStyle::MaxId)]);
    cfg.x_token_lifetime_secs = Some(3_600);
    let fx = Fixture::new_for(Provider::XApiV2, cfg, "").await;
    let root = fx.sim.root_url();
    let text = std::fs::read_to_string(&fx.config).unwrap().replace(&format!("api_key_env = \"{KEY_VAR}\"\n"), "");
    std::fs::write(
        &fx.config,
        format!(
            "{text}oauth_client_id = \"dm-handoff-it-client\"\noauth_authorize_url = \"{root}/i/oauth2/authorize\"\n\
             oauth_token_url = \"{root}/2/oauth2/token\"\noauth_redirect_uri = \"http://127.0.0.1:9/callback\"\n"
        ),
    )
    .unwrap();
    let tokens = fx.state_dir().join("tokens");
    std::fs::create_dir_all(&tokens).unwrap();
    std::fs::set_permissions(&tokens, std::fs::Permissions::from_mode(0o700)).unwrap();
    let file = tokens.join(format!("{PIPELINE}.json"));
    std::fs::write(&file, "{\"access_token\": \"would-be-a-token\"}").unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = fx.sync().await;
    out.expect_code(2);
    assert!(out.stderr.contains(&format!("chmod 600 {}", file.display())), "{out}");
    assert!(!out.all().contains("would-be-a-token"), "{out}");
}

/// `check` on a config whose `account` is `account` (a TOML basic string's content).
async fn check_account(dir: &Path, account: &str) -> Output {
    let config = write_config(dir, "http://127.0.0.1:9/api/v1", &["44196397"], "");
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace(&format!("account = \"{ACCOUNT}\""), &format!("account = \"{account}\""));
    std::fs::write(&config, text).unwrap();
    Cmd::new(&["check"]).config(&config).run().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_account_with_a_control_or_bidi_character_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    for (written, shown) in [
        ("acme\\u202Esupport", "U+202E"),
        ("acme\\u0000support", "U+0000"),
        ("acme\\u200Bsupport", "U+200B"),
        ("\\u2066acme_support", "U+2066"),
        ("acme\\u001B[31msupport", "U+001B"),
    ] {
        let out = check_account(dir.path(), written).await;
        out.expect_code(2);
        assert!(out.stderr.contains(shown) && out.stderr.contains("`account`"), "{written}: {out}");
        for c in ['\u{202E}', '\u{0}', '\u{200B}', '\u{2066}', '\u{1B}'] {
            assert!(!out.all().contains(c), "{written}: the message carries the character itself: {out:?}");
        }
    }
    check_account(dir.path(), ACCOUNT).await.expect_code(0);

    // The file name is in every segment's name and every loader's listing: the same rule.
    let config = write_config(dir.path(), "http://127.0.0.1:9/api/v1", &["44196397"], "");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, format!("{text}file_name = \"dms\\u202Elpsj.jsonl\"\n")).unwrap();
    let out = Cmd::new(&["check"]).config(&config).run().await;
    out.expect_code(2);
    assert!(out.stderr.contains("U+202E") && out.stderr.contains("`file_name`"), "{out}");
}
