//! SPEC 8.1: X API v2 user tokens that renew themselves. `dm-handoff auth` played end to end with the test
//! as the browser; refresh-token import; a daemon running across many token lifetimes; SIGKILL around
//! renewals. The simulator runs with a token lifetime, so its `/2/` routes accept only live issued tokens.

use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine as _;
use dm_handoff_simulator::{CursorStyle, SimConfig};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde_json::Value;

use crate::support::*;

const CLIENT: &str = "dm-handoff-it-client";
const SCOPES: &str = "dm.read dm.write tweet.read users.read offline.access media.write";

/// A simulator whose access tokens live `lifetime` seconds.
fn token_sim(seed: u64, peers: &[(&str, usize)], lifetime: u64) -> SimConfig {
    let mut cfg = sim_config(seed, peers.iter().map(|(p, n)| conv(p, *n, CursorStyle::MaxId)).collect());
    cfg.x_token_lifetime_secs = Some(lifetime);
    cfg
}

/// A free loopback port for `auth`'s listener.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// An X API v2 fixture whose pipeline manages its own tokens (no api_key_env), with the simulator's OAuth
/// endpoints; `extra` adds keys.
async fn oauth_fixture(cfg: SimConfig, extra: &str) -> (Fixture, u16) {
    let fx = Fixture::new_for(Provider::XApiV2, cfg, "").await;
    let port = free_port();
    let root = fx.sim.root_url();
    let text = std::fs::read_to_string(&fx.config).unwrap().replace(&format!("api_key_env = \"{KEY_VAR}\"\n"), "");
    let text = format!(
        "{text}oauth_client_id = \"{CLIENT}\"\noauth_authorize_url = \"{root}/i/oauth2/authorize\"\n\
         oauth_token_url = \"{root}/2/oauth2/token\"\noauth_redirect_uri = \"http://127.0.0.1:{port}/callback\"\n{extra}\n"
    );
    std::fs::write(&fx.config, text).unwrap();
    (fx, port)
}

fn token_path(fx: &Fixture) -> PathBuf {
    fx.state_dir().join("tokens").join(format!("{PIPELINE}.json"))
}

/// The stored pair, as JSON.
fn stored(fx: &Fixture) -> Value {
    serde_json::from_slice(&std::fs::read(token_path(fx)).expect("a token file")).expect("the token file is JSON")
}

/// Imports a fresh refresh token the simulator issues, as a user with one from elsewhere would.
async fn import(fx: &Fixture) -> Output {
    let t = fx.sim.sim.issue_oauth_tokens(CLIENT, SCOPES);
    let path = fx.dir.path().join("refresh-token.txt");
    std::fs::write(&path, format!("{}\n", t.refresh_token.expect("offline.access brings one"))).unwrap();
    let out = fx.cmd(&["auth", "--refresh-token-file", path.to_str().unwrap()]).run().await;
    std::fs::remove_file(&path).unwrap();
    out
}

/// Every OAuth token an output might leak: the simulator mints them as base64 of
/// `<43 random>:<ms>:1:<flag>:<at|rt|ac>:1`, so any long base64 run that decodes to that shape is one, whichever
/// pair it was (the test cannot know every pair a daemon renewed to).
fn sim_tokens_in(text: &str) -> Vec<String> {
    let mut found = Vec::new();
    let is_b64 = |c: char| c.is_ascii_alphanumeric() || c == '+' || c == '/';
    for run in text.split(|c: char| !is_b64(c)).filter(|r| r.len() >= 40) {
        for start in 0..4.min(run.len()) {
            let part = &run[start..];
            let part = &part[..part.len() / 4 * 4];
            if let Ok(bytes) = base64::engine::general_purpose::STANDARD.decode(part) {
                let s = String::from_utf8_lossy(&bytes);
                if [":at:1", ":rt:1", ":ac:1"].iter().any(|k| s.contains(k)) {
                    found.push(run.to_string());
                }
            }
        }
    }
    found
}

/// No token (sampled ones, or any simulator-shaped one) in an output.
fn assert_no_tokens(what: &str, output: &str, known: &BTreeSet<String>) {
    let leaks: Vec<&String> = known.iter().filter(|t| output.contains(t.as_str())).take(2).collect();
    assert!(leaks.is_empty(), "{what} prints a token: {leaks:?}");
    let shaped = sim_tokens_in(output);
    assert!(shaped.is_empty(), "{what} prints something token-shaped: {:?}", &shaped[..shaped.len().min(2)]);
}

/// The tokens in the token file now (to look for in outputs).
fn sample_tokens(fx: &Fixture, into: &mut BTreeSet<String>) {
    if let Ok(bytes) = std::fs::read(token_path(fx)) {
        if let Ok(v) = serde_json::from_slice::<Value>(&bytes) {
            for k in ["access_token", "refresh_token"] {
                if let Some(t) = v[k].as_str() {
                    into.insert(t.to_string());
                }
            }
        }
    }
}

/// Waits for `auth` to print the authorize URL on stdout.
async fn authorize_url(child: &Running) -> String {
    let mut url = None;
    wait_until("auth prints the authorize URL", || {
        url = child.stdout_so_far().lines().find(|l| l.starts_with("http")).map(str::to_string);
        url.is_some()
    })
    .await;
    url.unwrap()
}

fn no_redirects() -> reqwest::Client {
    reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_plays_the_browser_flow_stores_owner_only_tokens_and_sync_uses_them() {
    let (fx, port) = oauth_fixture(token_sim(801, &[("8010001", 120), ("8010002", 30)], 3_600), "").await;
    // Before auth, a sync says what to do (and touches no state).
    let out = fx.sync().await;
    out.expect_code(2);
    assert!(out.stderr.contains("dm-handoff auth --pipeline support"), "{out}");

    let child = fx.cmd(&["auth", "--pipeline", PIPELINE]).spawn();
    let url = authorize_url(&child).await;
    let stdout = child.stdout_so_far();
    assert_eq!(stdout.lines().filter(|l| !l.trim().is_empty()).count(), 1, "the URL alone on stdout: {stdout:?}");
    let parsed = reqwest::Url::parse(&url).expect("a URL");
    let q: std::collections::HashMap<String, String> = parsed.query_pairs().into_owned().collect();
    assert_eq!(q.get("code_challenge_method").map(String::as_str), Some("S256"));
    assert_eq!(q.get("response_type").map(String::as_str), Some("code"));
    assert_eq!(q.get("client_id").map(String::as_str), Some(CLIENT));
    assert_eq!(q.get("scope").map(String::as_str), Some(SCOPES));
    assert!(q.get("state").is_some_and(|s| s.len() >= 16), "a random state: {q:?}");
    assert_eq!(q.get("redirect_uri"), Some(&format!("http://127.0.0.1:{port}/callback")));

    // The browser: X answers the authorize request with a redirect to the loopback listener.
    let http = no_redirects();
    let resp = http.get(&url).send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 302);
    let location = resp.headers()["location"].to_str().unwrap().to_string();
    assert!(location.starts_with(&format!("http://127.0.0.1:{port}/callback?code=")), "{location}");

    // A callback with another state (a forged or stale link) is refused, and auth keeps waiting.
    let forged = location.replace("state=", "state=x");
    let resp = http.get(&forged).send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 400);
    assert!(resp.text().await.unwrap().contains("not from the dm-handoff auth"));

    let resp = http.get(&location).send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let page = resp.text().await.unwrap();
    assert!(page.contains("dm-handoff is authorized") && page.contains("close this tab"), "{page}");
    let out = child.wait().await;
    out.expect_code(0);
    assert!(out.stderr.contains("tokens stored") && out.stderr.contains("refresh token held"), "{out}");

    let stats = fx.sim.sim.oauth_stats();
    assert_eq!(stats.codes_issued, 1);
    assert_eq!(stats.token_requests.get("authorization_code"), Some(&1), "{stats:?}");
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&token_path(&fx)), 0o600, "the token file is owner-only");
    assert_eq!(mode(token_path(&fx).parent().unwrap()), 0o700);
    let mut tokens = BTreeSet::new();
    sample_tokens(&fx, &mut tokens);
    assert_eq!(tokens.len(), 2, "an access and a refresh token: {:?}", stored(&fx)["scope"]);

    // The pipeline now syncs with them; status says when they expire, never what they are.
    fx.sync().await.expect_code(0);
    fx.assert_exactly_once();
    let status = fx.cmd(&["status"]).run().await;
    status.expect_code(0);
    assert!(
        status.stdout.contains("token: access token expires") && status.stdout.contains("refresh token held"),
        "{status}"
    );
    let json = fx.status_json().await;
    let p = &json["pipelines"][0];
    assert_eq!(p["oauth"]["refresh_token_held"], Value::Bool(true), "{json:#}");
    assert!(p["oauth"]["access_token_expires_at"].as_str().is_some_and(is_millis_z), "{json:#}");
    let check = fx.cmd(&["check"]).run().await;
    check.expect_code(0);
    assert!(check.stdout.contains("public client dm-handoff-it-client"), "{check}");
    for (what, o) in [("auth", &out), ("status", &status), ("check", &check)] {
        assert_no_tokens(what, &o.all(), &tokens);
    }
    assert_no_tokens("status --json", &json.to_string(), &tokens);

    // Without a browser, auth gives up after --timeout with one line saying what to do.
    let out = fx.cmd(&["auth", "--timeout", "1s"]).run().await;
    out.expect_code(1);
    assert!(
        out.error_lines().len() == 1 && out.stderr.contains("run `dm-handoff auth --pipeline support` again"),
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refresh_token_from_elsewhere_is_imported_once_and_a_bad_one_fails_with_one_line() {
    let (fx, _) = oauth_fixture(token_sim(802, &[("8020001", 40)], 3_600), "").await;
    let bad = fx.dir.path().join("bad.txt");
    std::fs::write(&bad, "bm90LWEtcmVhbC10b2tlbi1hdC1hbGwtMDEyMzQ1Njc4OQ\n").unwrap();
    let out = fx.cmd(&["auth", "--refresh-token-file", bad.to_str().unwrap()]).run().await;
    out.expect_code(4);
    assert_eq!(out.error_lines().len(), 1, "{out}");
    assert!(out.stderr.contains("invalid_grant"), "{out}");
    assert!(!out.all().contains("bm90LWEtcmVhbC10b2tlbi"), "the token is not echoed\n{out}");
    assert!(!token_path(&fx).exists(), "nothing stored");

    // Everything at trace level, dependencies included: neither the imported token nor the pair it brings
    // reaches the output.
    let t = fx.sim.sim.issue_oauth_tokens(CLIENT, SCOPES);
    let imported = t.refresh_token.expect("offline.access brings one");
    let good = fx.dir.path().join("good.txt");
    std::fs::write(&good, &imported).unwrap();
    let out = fx.cmd(&["auth", "--refresh-token-file", good.to_str().unwrap()]).env("RUST_LOG", "trace").run().await;
    out.expect_code(0);
    assert_eq!(fx.sim.sim.oauth_stats().refreshes, 1, "exchanged once, at once");
    fx.sim.sim.expire_access_tokens();
    let synced = fx.cmd(&["sync"]).env("RUST_LOG", "trace").run().await;
    synced.expect_code(0);
    assert_eq!(fx.sim.sim.oauth_stats().refreshes, 2, "renewed after the 401");
    assert!(synced.stderr.contains("TRACE"), "trace logging was on");
    let mut tokens = BTreeSet::from([imported, t.access_token]);
    sample_tokens(&fx, &mut tokens);
    assert_no_tokens("auth --refresh-token-file at trace", &out.all(), &tokens);
    assert_no_tokens("sync at trace with a renewal", &synced.all(), &tokens);
    fx.assert_exactly_once();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemon_runs_across_many_token_lifetimes_with_a_send_and_every_message_once() {
    // Tokens live 3 s: renewed at 2.4 s. The daemon ticks every second for about 7 lifetimes.
    let peers = [("8030001", 400), ("8030002", 90), ("8030003", 0)];
    let (fx, _) = oauth_fixture(token_sim(803, &peers, 3), "adaptive_poll_max = \"0\"").await;
    let text = std::fs::read_to_string(&fx.config).unwrap().replace("*/30 * * * * *", "* * * * * *");
    std::fs::write(&fx.config, text).unwrap();
    import(&fx).await.expect_code(0);
    let mut tokens = BTreeSet::new();
    sample_tokens(&fx, &mut tokens);

    let daemon = fx.cmd(&["run", "--log-level", "trace"]).spawn();
    let started = tokio::time::Instant::now();
    let mut sent = false;
    let mut rng = SmallRng::seed_from_u64(803);
    while started.elapsed() < Duration::from_secs(21) {
        tokio::time::sleep(Duration::from_millis(700)).await;
        sample_tokens(&fx, &mut tokens);
        let peer = peers[rng.gen_range(0..peers.len())].0;
        fx.sim.sim.add_messages(peer, rng.gen_range(1..4));
        if !sent && started.elapsed() > Duration::from_secs(8) {
            // A send through the control socket, with the daemon's own token source.
            let out = fx.cmd(&["send", "--to", "8030003", "--text", "renewed tokens carry sends too"]).run().await;
            out.expect_code(0);
            assert_no_tokens("send", &out.all(), &tokens);
            sent = true;
        }
    }
    daemon.signal(libc::SIGTERM);
    let out = daemon.wait().await;
    out.expect_code(0);
    sample_tokens(&fx, &mut tokens);
    assert!(sent);
    // Whatever arrived in the last second: one more sync, then everything is there exactly once.
    fx.sync().await.expect_code(0);
    let records = fx.assert_exactly_once();
    assert_eq!(records.iter().filter(|r| str_field(r, "kind") == Some("dm_send")).count(), 1);
    let stats = fx.sim.sim.oauth_stats();
    eprintln!("{} records; {} pairs sampled; {stats:?}", records.len(), tokens.len() / 2);
    assert!(stats.refreshes >= 5, "renewed across the lifetimes: {stats:?}");
    assert!(
        stats.expired_token_401s + stats.unknown_token_401s <= 2,
        "renewed before expiry, not after 401s: {stats:?}"
    );
    assert_eq!(stats.token_errors.get("invalid_grant"), None, "no refresh token was spent twice: {stats:?}");
    assert!(tokens.len() >= 6, "sampled several pairs: {}", tokens.len());
    assert!(out.stderr.contains("TRACE") || out.stderr.contains("DEBUG"), "verbose logging was on");
    assert!(out.stderr.contains("access token renewed"), "renewals are logged\n{out}");
    assert_no_tokens("the daemon at trace level", &out.all(), &tokens);
}

/// Runs `sync` once and says whether the pipeline carried on (0) or stopped naming the fix (4).
async fn carries_on_or_names_the_fix(fx: &Fixture, after: &str) -> bool {
    let out = fx.sync().await;
    match out.code() {
        Some(0) => true,
        Some(4) => {
            let lines = out.error_lines();
            assert_eq!(lines.len(), 1, "{after}: one line\n{out}");
            assert!(lines[0].contains("dm-handoff auth --pipeline support"), "{after}: names the fix\n{out}");
            false
        }
        _ => panic!("{after}: neither carried on nor named the fix\n{out}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_around_renewals_either_carries_on_or_says_which_command_fixes_it() {
    let peers = [("8040001", 300), ("8040002", 60)];
    let (fx, _) = oauth_fixture(token_sim(804, &peers, 2), "adaptive_poll_max = \"0\"").await;
    let text = std::fs::read_to_string(&fx.config).unwrap().replace("*/30 * * * * *", "* * * * * *");
    std::fs::write(&fx.config, text).unwrap();
    import(&fx).await.expect_code(0);

    // The worst instant, made certain with the debug-build hook: killed after X answered a refresh (the old
    // refresh token is spent) and before the new pair was stored.
    fx.sim.sim.expire_access_tokens();
    let out = fx.cmd(&["sync"]).env("DM_HANDOFF_TEST_CRASH_AFTER_REFRESH", "1").run().await;
    assert!(killed_by(&out.status, libc::SIGABRT), "the hook aborted the run\n{out}");
    let _ = stored(&fx); // still the old pair, whole
    assert!(!carries_on_or_names_the_fix(&fx, "after a kill between refresh and store").await);
    assert!(fx.sim.sim.oauth_stats().token_errors.contains_key("invalid_grant"));
    import(&fx).await.expect_code(0);
    assert!(carries_on_or_names_the_fix(&fx, "after auth").await);

    // SIGKILL at random instants of a daemon renewing every 1.6 s.
    let mut rng = SmallRng::seed_from_u64(804);
    let (mut carried, mut fixed) = (0, 0);
    for round in 0..8 {
        fx.sim.sim.add_messages(peers[round % 2].0, rng.gen_range(5..40));
        let daemon = fx.cmd(&["run"]).spawn();
        tokio::time::sleep(Duration::from_millis(rng.gen_range(300..3_000))).await;
        daemon.signal(libc::SIGKILL);
        let out = daemon.wait().await;
        assert!(killed_by(&out.status, libc::SIGKILL) || out.code() == Some(0), "round {round}\n{out}");
        let t = stored(&fx);
        assert!(t["access_token"].as_str().is_some_and(|a| !a.is_empty()), "round {round}: a whole token file");
        if carries_on_or_names_the_fix(&fx, &format!("round {round}")).await {
            carried += 1;
        } else {
            fixed += 1;
            import(&fx).await.expect_code(0);
        }
        let records = read_complete_records(&fx.out_dir());
        assert_no_duplicates(&records);
    }
    eprintln!("{carried} rounds carried on, {fixed} named the fix; {:?}", fx.sim.sim.oauth_stats());
    assert!(fx.sim.sim.oauth_stats().refreshes >= 8, "the kills landed among renewals");
    fx.sync().await.expect_code(0);
    fx.assert_exactly_once();
}
