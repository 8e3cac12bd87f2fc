//! OAuth 2.0 over the wire, with the raw client: the PKCE round trip, single-use codes and refresh
//! tokens, expiry, confidential and public clients, scopes, errors, and the test hooks.

use std::collections::HashMap;
use std::time::Duration;

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::super::super::testkit::{encode, get, send, Raw};
use super::super::super::{OAuthStats, OAuthTokens, SimConfig, SimConversation, SimHandle, SimOAuthClient, Simulator};

const REDIRECT: &str = "http://127.0.0.1:8976/callback";
const PUBLIC: &str = "cHVibGljLWFwcA";
const CONFIDENTIAL: &str = "Y29uZmlkZW50aWFs";
const SECRET: &str = "s3cr3t-VALUE_with:colon";
const SCOPES: &str = "dm.read dm.write tweet.read users.read offline.access media.write";
const STATIC_KEY: &str = "static-bearer-token";
/// A verifier and its S256 challenge, the latter computed outside Rust (Python's hashlib and
/// base64), so the simulator and the test cannot share a mistake.
const VERIFIER: &str = "dBjftJeZ4CVP-mJ92K27uhbUJU2p1r_wW1gFWFOEjXk";
const CHALLENGE: &str = "eAB9IM1htk0uz5EiYHqJLoLwmbrJlW54-48uLFptnSg";
const READ: &str = "/2/dm_conversations/with/44196397/dm_events?max_results=1";

fn cfg(lifetime: Option<u64>) -> SimConfig {
    SimConfig {
        conversations: vec![SimConversation { peer_id: "44196397".into(), messages: 5, ..SimConversation::default() }],
        api_key: Some(STATIC_KEY.into()),
        account: Some("acme_support".into()),
        x_rate_limit: None,
        oauth_clients: vec![
            SimOAuthClient { client_id: PUBLIC.into(), client_secret: None, redirect_uris: vec![REDIRECT.into()] },
            SimOAuthClient {
                client_id: CONFIDENTIAL.into(),
                client_secret: Some(SECRET.into()),
                redirect_uris: vec![REDIRECT.into(), "https://app.example/cb?tenant=7".into()],
            },
        ],
        x_token_lifetime_secs: lifetime,
        ..SimConfig::default()
    }
}

fn authorize_target(params: &[(&str, &str)]) -> String {
    let q: Vec<String> = params.iter().map(|(k, v)| format!("{k}={}", encode(v))).collect();
    format!("/i/oauth2/authorize?{}", q.join("&"))
}

fn standard_params<'a>(client: &'a str, scope: &'a str, state: &'a str) -> Vec<(&'a str, &'a str)> {
    vec![
        ("response_type", "code"),
        ("client_id", client),
        ("redirect_uri", REDIRECT),
        ("scope", scope),
        ("state", state),
        ("code_challenge", CHALLENGE),
        ("code_challenge_method", "S256"),
    ]
}

/// The redirect's target and its query parameters, decoded.
fn location(r: &Raw) -> (String, HashMap<String, String>) {
    let loc = r.header("location").expect("a Location header");
    let (base, query) = loc.split_once('?').expect("a query");
    let params: Vec<(String, String)> = serde_urlencoded::from_str(query).expect("a form-encoded query");
    (base.to_string(), params.into_iter().collect())
}

async fn code_for(h: &SimHandle, client: &str, scope: &str) -> String {
    let r = get(h.addr, &authorize_target(&standard_params(client, scope, "s"))).await;
    assert_eq!(r.status, 302, "{}", String::from_utf8_lossy(&r.body));
    location(&r).1.remove("code").expect("a code")
}

async fn token_request(h: &SimHandle, form: &[(&str, &str)], basic: Option<(&str, &str)>) -> Raw {
    let body: Vec<String> = form.iter().map(|(k, v)| format!("{k}={}", encode(v))).collect();
    let auth = basic.map(|(id, secret)| format!("Basic {}", STANDARD.encode(format!("{id}:{secret}"))));
    let mut headers = vec![("Content-Type", "application/x-www-form-urlencoded")];
    if let Some(a) = &auth {
        headers.push(("Authorization", a));
    }
    send(h.addr, "POST", "/2/oauth2/token", &headers, body.join("&").as_bytes()).await
}

async fn exchange_public(h: &SimHandle, code: &str) -> Raw {
    token_request(
        h,
        &[
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", REDIRECT),
            ("code_verifier", VERIFIER),
            ("client_id", PUBLIC),
        ],
        None,
    )
    .await
}

async fn refresh_public(h: &SimHandle, refresh_token: &str) -> Raw {
    token_request(h, &[("grant_type", "refresh_token"), ("refresh_token", refresh_token), ("client_id", PUBLIC)], None)
        .await
}

fn tokens(r: &Raw) -> OAuthTokens {
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    serde_json::from_slice(&r.body).expect("a token answer")
}

fn oauth_error(r: &Raw) -> (u16, String) {
    let v = r.json();
    assert!(v["error_description"].as_str().is_some_and(|d| !d.is_empty()), "{v}");
    (r.status, v["error"].as_str().unwrap_or_default().to_string())
}

async fn read_with(h: &SimHandle, token: &str) -> Raw {
    send(h.addr, "GET", READ, &[("Authorization", &format!("Bearer {token}"))], b"").await
}

async fn flow(h: &SimHandle) -> OAuthTokens {
    let code = code_for(h, PUBLIC, SCOPES).await;
    tokens(&exchange_public(h, &code).await)
}

#[test]
fn s256_matches_an_independent_computation() {
    assert_eq!(super::s256(VERIFIER), CHALLENGE);
    // And the test's own computation agrees, so the round trips below check real PKCE.
    assert_eq!(URL_SAFE_NO_PAD.encode(Sha256::digest(VERIFIER.as_bytes())), CHALLENGE);
}

#[tokio::test]
async fn the_pkce_round_trip_issues_single_use_codes_and_refresh_tokens() {
    let h = Simulator::spawn(cfg(Some(60))).await.unwrap();
    // A state with characters that must be encoded comes back exactly.
    let state = "st/ate+=&x y%";
    let r = get(h.addr, &authorize_target(&standard_params(PUBLIC, SCOPES, state))).await;
    assert_eq!(r.status, 302);
    let (base, params) = location(&r);
    assert_eq!(base, REDIRECT);
    assert_eq!(params.get("state").map(String::as_str), Some(state));
    let loc = r.header("location").unwrap();
    assert!(loc.starts_with(&format!("{REDIRECT}?code=")), "{loc}");
    assert!(!loc.contains(' ') && !loc.contains("+=&"), "the state is percent-encoded: {loc}");
    let code = params["code"].clone();

    let r = exchange_public(&h, &code).await;
    assert_eq!(r.header("cache-control"), Some("no-store"));
    let first = tokens(&r);
    assert_eq!((first.token_type.as_str(), first.expires_in, first.scope.as_str()), ("bearer", 60, SCOPES));
    let v = r.json();
    assert_eq!(v.as_object().map(|o| o.len()), Some(5), "exactly X's five keys: {v}");
    let refresh = first.refresh_token.clone().expect("offline.access brings a refresh token");

    // The access token works; the static key does not once a lifetime is configured.
    assert_eq!(read_with(&h, &first.access_token).await.status, 200);
    let r = read_with(&h, STATIC_KEY).await;
    assert_eq!(r.status, 401);
    assert_eq!(r.header("content-type"), Some("application/problem+json"));

    // A code works once.
    assert_eq!(oauth_error(&exchange_public(&h, &code).await), (400, "invalid_grant".into()));

    // Each refresh gives a new pair and kills the old refresh token; old access tokens live on.
    let second = tokens(&refresh_public(&h, &refresh).await);
    let new_refresh = second.refresh_token.clone().expect("a new refresh token");
    assert_ne!(new_refresh, refresh);
    assert_ne!(second.access_token, first.access_token);
    assert_eq!(second.scope, SCOPES);
    assert_eq!(oauth_error(&refresh_public(&h, &refresh).await), (400, "invalid_grant".into()));
    assert_eq!(read_with(&h, &first.access_token).await.status, 200);
    assert_eq!(read_with(&h, &second.access_token).await.status, 200);
    let third = tokens(&refresh_public(&h, &new_refresh).await);
    assert!(third.refresh_token.is_some());

    let s = h.sim.oauth_stats();
    assert_eq!((s.authorize_requests, s.codes_issued, s.tokens_issued, s.refreshes), (1, 1, 3, 2));
    assert_eq!(s.token_requests.get("authorization_code"), Some(&2));
    assert_eq!(s.token_requests.get("refresh_token"), Some(&3));
    assert_eq!(s.token_errors.get("invalid_grant"), Some(&2));
    assert_eq!((s.unknown_token_401s, s.expired_token_401s), (1, 0));
    assert_eq!((s.live_access_tokens, s.live_refresh_tokens), (3, 1));
    let stats = h.sim.stats();
    assert_eq!(stats.by_route.get("POST /2/oauth2/token"), Some(&5));
    assert_eq!(stats.by_route.get("GET /i/oauth2/authorize"), Some(&1));
    h.shutdown().await;
}

#[tokio::test]
async fn expired_tokens_get_401_and_refreshing_keeps_the_users_rate_window() {
    let h = Simulator::spawn(SimConfig { x_rate_limit: Some((3, 900)), ..cfg(Some(5)) }).await.unwrap();
    let first = flow(&h).await;
    assert_eq!(first.expires_in, 5);
    let r = read_with(&h, &first.access_token).await;
    assert_eq!((r.status, r.header("x-rate-limit-remaining")), (200, Some("2")));

    h.sim.advance_oauth_clock(Duration::from_secs(6));
    let r = read_with(&h, &first.access_token).await;
    assert_eq!(r.status, 401);
    assert_eq!(r.header("content-type"), Some("application/problem+json"));
    let want: Value =
        serde_json::json!({"title":"Unauthorized","type":"about:blank","status":401,"detail":"Unauthorized"});
    assert_eq!(r.json(), want);
    assert_eq!(r.header("x-rate-limit-remaining"), None, "a refused token spends no window");
    assert_eq!(h.sim.oauth_stats().expired_token_401s, 1);

    // The refresh token outlives the access token; the new token counts in the same window.
    let second = tokens(&refresh_public(&h, first.refresh_token.as_deref().unwrap()).await);
    let r = read_with(&h, &second.access_token).await;
    assert_eq!((r.status, r.header("x-rate-limit-remaining")), (200, Some("1")));

    assert_eq!(h.sim.expire_access_tokens(), 1, "only the live one");
    assert_eq!(read_with(&h, &second.access_token).await.status, 401);
    let third = tokens(&refresh_public(&h, second.refresh_token.as_deref().unwrap()).await);
    assert_eq!(read_with(&h, &third.access_token).await.status, 200);
    let r = read_with(&h, &third.access_token).await;
    assert_eq!(r.status, 429, "three reads per window for the user, whichever token");
    let s = h.sim.oauth_stats();
    assert_eq!((s.expired_token_401s, s.live_access_tokens), (2, 1));
    h.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn tokio_paused_time_ages_tokens_too() {
    let sim = Simulator::new(cfg(Some(30)));
    let t = sim.issue_oauth_tokens(PUBLIC, "dm.read tweet.read users.read");
    assert_eq!((t.expires_in, t.refresh_token.is_none()), (30, true));
    assert_eq!(sim.oauth_stats().live_access_tokens, 1);
    tokio::time::advance(Duration::from_secs(31)).await;
    assert_eq!(sim.oauth_stats().live_access_tokens, 0);
}

/// An `authorization_code` grant form.
fn code_grant<'a>(
    code: &'a str,
    verifier: &'a str,
    redirect: &'a str,
    client: Option<&'a str>,
) -> Vec<(&'a str, &'a str)> {
    let mut form = vec![
        ("grant_type", "authorization_code"),
        ("code", code),
        ("redirect_uri", redirect),
        ("code_verifier", verifier),
    ];
    form.extend(client.map(|c| ("client_id", c)));
    form
}

#[tokio::test]
async fn confidential_clients_use_basic_and_public_ones_the_form() {
    let h = Simulator::spawn(cfg(Some(60))).await.unwrap();
    let grant = |code| code_grant(code, VERIFIER, REDIRECT, None);
    let with_id = |code, id| code_grant(code, VERIFIER, REDIRECT, Some(id));

    // No Basic: refused, saying how to authenticate (and the code is not spent by that).
    let code = code_for(&h, CONFIDENTIAL, SCOPES).await;
    let r = token_request(&h, &with_id(&code, CONFIDENTIAL), None).await;
    assert_eq!(oauth_error(&r), (401, "unauthorized_client".into()));
    assert!(r.header("www-authenticate").is_some_and(|v| v.starts_with("Basic")));
    let r = token_request(&h, &grant(&code), Some((CONFIDENTIAL, "wrong"))).await;
    assert_eq!(oauth_error(&r), (401, "invalid_client".into()));
    let r = token_request(&h, &with_id(&code, PUBLIC), Some((CONFIDENTIAL, SECRET))).await;
    assert_eq!(oauth_error(&r), (400, "invalid_request".into()), "Basic and form name different clients");
    // Right: Basic with the secret (a colon in it, form-encoded as RFC 6749 2.3.1 asks), client_id
    // in the form as well.
    let r = token_request(&h, &with_id(&code, CONFIDENTIAL), Some((CONFIDENTIAL, &encode(SECRET)))).await;
    let t = tokens(&r);
    let refresh = t.refresh_token.unwrap();

    // Refreshing needs the secret too, and a refresh token is bound to its client.
    let r = token_request(
        &h,
        &[("grant_type", "refresh_token"), ("refresh_token", &refresh), ("client_id", CONFIDENTIAL)],
        None,
    )
    .await;
    assert_eq!(oauth_error(&r), (401, "unauthorized_client".into()));
    assert_eq!(oauth_error(&refresh_public(&h, &refresh).await), (400, "invalid_grant".into()));
    let r = token_request(
        &h,
        &[("grant_type", "refresh_token"), ("refresh_token", &refresh)],
        Some((CONFIDENTIAL, SECRET)),
    )
    .await;
    assert!(tokens(&r).refresh_token.is_some());

    // A public client has no secret to send; an empty one over Basic is tolerated.
    let code = code_for(&h, PUBLIC, SCOPES).await;
    let r = token_request(&h, &grant(&code), Some((PUBLIC, "something"))).await;
    assert_eq!(oauth_error(&r), (401, "invalid_client".into()));
    let code = code_for(&h, PUBLIC, SCOPES).await;
    tokens(&token_request(&h, &grant(&code), Some((PUBLIC, ""))).await);
    // One client's code cannot be exchanged by another.
    let code = code_for(&h, PUBLIC, SCOPES).await;
    let r = token_request(&h, &grant(&code), Some((CONFIDENTIAL, SECRET))).await;
    assert_eq!(oauth_error(&r), (400, "invalid_grant".into()));
    let r = token_request(&h, &with_id("whatever", "nobody"), None).await;
    assert_eq!(oauth_error(&r), (401, "invalid_client".into()));
    h.shutdown().await;
}

#[tokio::test]
async fn bad_authorize_requests_get_a_400_page_and_no_redirect() {
    let h = Simulator::spawn(cfg(Some(60))).await.unwrap();
    let base = standard_params(PUBLIC, SCOPES, "s");
    let with = |k: &'static str, v: Option<&'static str>| {
        let mut p: Vec<(&str, &str)> = base.iter().copied().filter(|(n, _)| *n != k).collect();
        if let Some(v) = v {
            p.push((k, v));
        }
        authorize_target(&p)
    };
    for (name, target) in [
        ("unknown client", with("client_id", Some("nobody"))),
        ("no client", with("client_id", None)),
        ("unregistered redirect", with("redirect_uri", Some("http://127.0.0.1:9999/callback"))),
        ("no redirect", with("redirect_uri", None)),
        ("no PKCE", with("code_challenge", None)),
        ("short challenge", with("code_challenge", Some("abc"))),
        ("plain", with("code_challenge_method", Some("plain"))),
        ("no method", with("code_challenge_method", None)),
        ("token flow", with("response_type", Some("token"))),
        ("unknown scope", with("scope", Some("dm.read everything"))),
        ("no scope", with("scope", None)),
        ("no state", with("state", None)),
        ("a parameter twice", format!("{}&state=again", with("state", Some("s")))),
        ("not a query", "/i/oauth2/authorize?client_id=%ZZ".to_string()),
    ] {
        let r = get(h.addr, &target).await;
        assert_eq!(r.status, 400, "{name}: {target}");
        assert_eq!(r.header("location"), None, "{name}");
        assert!(r.header("content-type").is_some_and(|c| c.starts_with("text/html")), "{name}");
    }
    // A registered redirect URI with its own query gets the code appended with `&`.
    let mut p = standard_params(CONFIDENTIAL, "dm.read", "s");
    p.retain(|(k, _)| *k != "redirect_uri");
    p.push(("redirect_uri", "https://app.example/cb?tenant=7"));
    let r = get(h.addr, &authorize_target(&p)).await;
    assert_eq!(r.status, 302);
    assert!(r.header("location").unwrap().starts_with("https://app.example/cb?tenant=7&code="));
    let s = h.sim.oauth_stats();
    assert_eq!((s.authorize_requests, s.codes_issued), (15, 1));
    h.shutdown().await;
}

#[tokio::test]
async fn token_errors_come_in_xs_shape() {
    let h = Simulator::spawn(cfg(Some(60))).await.unwrap();
    type Form<'a> = &'a [(&'a str, &'a str)];
    let cases: [(Form, u16, &str); 5] = [
        (&[("client_id", PUBLIC)], 400, "invalid_request"),
        (&[("grant_type", "password"), ("client_id", PUBLIC)], 400, "unsupported_grant_type"),
        (&[("grant_type", "authorization_code"), ("client_id", PUBLIC)], 400, "invalid_request"),
        (&[("grant_type", "refresh_token"), ("client_id", PUBLIC)], 400, "invalid_request"),
        (&[("grant_type", "refresh_token"), ("refresh_token", "bm9wZQ"), ("client_id", PUBLIC)], 400, "invalid_grant"),
    ];
    for (form, status, error) in cases {
        let r = token_request(&h, form, None).await;
        assert_eq!(oauth_error(&r), (status, error.to_string()), "{form:?}");
        assert!(r.header("content-type").is_some_and(|c| c.starts_with("application/json")));
    }
    // Not a form.
    let r = send(
        h.addr,
        "POST",
        "/2/oauth2/token",
        &[("Content-Type", "application/json")],
        br#"{"grant_type":"refresh_token"}"#,
    )
    .await;
    assert_eq!(oauth_error(&r), (400, "invalid_request".into()));
    // A parameter twice.
    let r = token_request(&h, &[("grant_type", "refresh_token"), ("grant_type", "refresh_token")], None).await;
    assert_eq!(oauth_error(&r), (400, "invalid_request".into()));

    // A wrong verifier spends the code: the right one cannot follow.
    let post = |form: Vec<(&str, &str)>| {
        let form: Vec<(String, String)> = form.into_iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let h = &h;
        async move {
            let pairs: Vec<(&str, &str)> = form.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            token_request(h, &pairs, None).await
        }
    };
    let grant = |code, verifier, redirect| code_grant(code, verifier, redirect, Some(PUBLIC));
    let code = code_for(&h, PUBLIC, SCOPES).await;
    let other = "x".repeat(43);
    assert_eq!(oauth_error(&post(grant(&code, &other, REDIRECT)).await), (400, "invalid_grant".into()));
    assert_eq!(oauth_error(&post(grant(&code, VERIFIER, REDIRECT)).await), (400, "invalid_grant".into()));
    // A malformed verifier is a bad request.
    let code = code_for(&h, PUBLIC, SCOPES).await;
    assert_eq!(oauth_error(&post(grant(&code, "short", REDIRECT)).await), (400, "invalid_request".into()));
    // Another redirect URI than the authorize request's.
    let code = code_for(&h, PUBLIC, SCOPES).await;
    let r = post(grant(&code, VERIFIER, "http://127.0.0.1:8976/other")).await;
    assert_eq!(oauth_error(&r), (400, "invalid_grant".into()));
    // An expired code (30 s by default).
    let code = code_for(&h, PUBLIC, SCOPES).await;
    h.sim.advance_oauth_clock(Duration::from_secs(31));
    assert_eq!(oauth_error(&post(grant(&code, VERIFIER, REDIRECT)).await), (400, "invalid_grant".into()));

    // Without offline.access there is no refresh token; a refresh cannot widen the scope.
    let code = code_for(&h, PUBLIC, "dm.read tweet.read users.read").await;
    assert_eq!(tokens(&post(grant(&code, VERIFIER, REDIRECT)).await).refresh_token, None);
    let refresh = flow(&h).await.refresh_token.unwrap();
    let widen = [
        ("grant_type", "refresh_token"),
        ("refresh_token", &refresh),
        ("client_id", PUBLIC),
        ("scope", "dm.read users.email"),
    ];
    assert_eq!(oauth_error(&token_request(&h, &widen, None).await), (400, "invalid_scope".into()));
    let narrow = [
        ("grant_type", "refresh_token"),
        ("refresh_token", &refresh),
        ("client_id", PUBLIC),
        ("scope", "dm.read tweet.read users.read offline.access"),
    ];
    assert_eq!(tokens(&token_request(&h, &narrow, None).await).scope, "dm.read tweet.read users.read offline.access");

    // Injected failures come first, then the endpoint works again.
    h.sim.fail_token_requests(1, 503);
    let t = h.sim.issue_oauth_tokens(PUBLIC, SCOPES).refresh_token.unwrap();
    let r = refresh_public(&h, &t).await;
    assert_eq!(oauth_error(&r), (503, "temporarily_unavailable".into()));
    assert_eq!(r.header("retry-after"), Some("1"));
    tokens(&refresh_public(&h, &t).await);
    let s = h.sim.oauth_stats();
    assert_eq!(s.token_errors.get("temporarily_unavailable"), Some(&1));
    assert_eq!(s.token_requests.get("(none)"), Some(&3), "no grant_type, a JSON body, grant_type twice");
    assert_eq!(s.token_requests.get("password"), Some(&1));
    h.shutdown().await;
}

#[tokio::test]
async fn concurrent_refreshes_with_one_token_succeed_once() {
    let h = Simulator::spawn(cfg(Some(60))).await.unwrap();
    let refresh = h.sim.issue_oauth_tokens(PUBLIC, SCOPES).refresh_token.unwrap();
    let (a, b, c) =
        tokio::join!(refresh_public(&h, &refresh), refresh_public(&h, &refresh), refresh_public(&h, &refresh));
    let ok = [&a, &b, &c].iter().filter(|r| r.status == 200).count();
    assert_eq!(ok, 1);
    assert_eq!(h.sim.oauth_stats().refreshes, 1);
    h.shutdown().await;
}

#[tokio::test]
async fn scopes_guard_each_route_family() {
    let h = Simulator::spawn(cfg(Some(60))).await.unwrap();
    let read_only = h.sim.issue_oauth_tokens(PUBLIC, "dm.read tweet.read users.read").access_token;
    assert_eq!(read_with(&h, &read_only).await.status, 200);
    let auth = format!("Bearer {read_only}");
    let r = send(
        h.addr,
        "POST",
        "/2/dm_conversations/with/44196397/messages",
        &[("Authorization", &auth), ("Content-Type", "application/json")],
        br#"{"text":"hi"}"#,
    )
    .await;
    assert_eq!(r.status, 403);
    assert!(r.json()["detail"].as_str().unwrap().contains("dm.write"));
    let r = send(h.addr, "GET", "/2/users/me", &[("Authorization", &auth)], b"").await;
    assert_eq!(r.status, 200);
    assert_eq!(h.sim.oauth_stats().missing_scope_403s, 1);
    assert!(h.sim.messages("44196397").iter().all(|m| m.text.as_deref() != Some("hi")), "nothing was sent");
    h.shutdown().await;
}

#[tokio::test]
async fn without_a_lifetime_the_static_key_and_issued_tokens_both_work() {
    let h = Simulator::spawn(SimConfig { oauth_clients: Vec::new(), ..cfg(None) }).await.unwrap();
    assert_eq!(read_with(&h, STATIC_KEY).await.status, 200);
    assert_eq!(read_with(&h, "something-else").await.status, 401);
    // With no registered clients any client ID and any http(s) redirect URI work, public or Basic.
    let mut p = standard_params("any-client", SCOPES, "s");
    p.retain(|(k, _)| *k != "redirect_uri");
    p.push(("redirect_uri", "http://localhost:1234/cb"));
    let r = get(h.addr, &authorize_target(&p)).await;
    assert_eq!(r.status, 302);
    let code = location(&r).1.remove("code").unwrap();
    let r = token_request(
        &h,
        &[
            ("grant_type", "authorization_code"),
            ("code", &code),
            ("redirect_uri", "http://localhost:1234/cb"),
            ("code_verifier", VERIFIER),
        ],
        Some(("any-client", "any-secret")),
    )
    .await;
    let t = tokens(&r);
    assert_eq!(t.expires_in, 7_200, "X's two hours");
    assert_eq!(read_with(&h, &t.access_token).await.status, 200);
    let mut p = standard_params("any-client", SCOPES, "s");
    p.retain(|(k, _)| *k != "redirect_uri");
    p.push(("redirect_uri", "ftp://nowhere/cb"));
    assert_eq!(get(h.addr, &authorize_target(&p)).await.status, 400);
    h.shutdown().await;
}

#[tokio::test]
async fn admin_hooks_revoke_expire_advance_fail_and_issue() {
    let h = Simulator::spawn(cfg(Some(60))).await.unwrap();
    let post = |target: &'static str, body: String| {
        let addr = h.addr;
        async move { send(addr, "POST", target, &[("Content-Type", "application/json")], body.as_bytes()).await }
    };
    let r = post("/_sim/oauth/issue", format!(r#"{{"client_id":"{PUBLIC}","scope":"{SCOPES}"}}"#)).await;
    let t: OAuthTokens = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(read_with(&h, &t.access_token).await.status, 200);

    let r = post("/_sim/oauth/expire", "".into()).await;
    assert_eq!(r.json()["expired"], 1);
    assert_eq!(read_with(&h, &t.access_token).await.status, 401);

    // Revoking another client's tokens leaves these alone; revoking this client's kills them.
    let r = post("/_sim/oauth/revoke", format!(r#"{{"client_id":"{CONFIDENTIAL}"}}"#)).await;
    assert_eq!(r.json()["revoked"], 0);
    let t2 = tokens(&refresh_public(&h, t.refresh_token.as_deref().unwrap()).await);
    let r = post("/_sim/oauth/revoke", format!(r#"{{"client_id":"{PUBLIC}"}}"#)).await;
    assert_eq!(r.json()["revoked"], 1);
    assert_eq!(
        oauth_error(&refresh_public(&h, t2.refresh_token.as_deref().unwrap()).await),
        (400, "invalid_grant".into())
    );
    assert_eq!(read_with(&h, &t2.access_token).await.status, 200, "access tokens live until they expire");
    // `{}` (or no body) revokes every client's.
    h.sim.issue_oauth_tokens(CONFIDENTIAL, SCOPES);
    assert_eq!(post("/_sim/oauth/revoke", "".into()).await.json()["revoked"], 1);

    assert_eq!(post("/_sim/oauth/advance", r#"{"secs":61}"#.into()).await.status, 204);
    assert_eq!(read_with(&h, &t2.access_token).await.status, 401);

    assert_eq!(post("/_sim/oauth/fail", r#"{"count":2,"status":429}"#.into()).await.status, 204);
    let fresh = h.sim.issue_oauth_tokens(PUBLIC, SCOPES).refresh_token.unwrap();
    assert_eq!(refresh_public(&h, &fresh).await.status, 429);
    assert_eq!(refresh_public(&h, &fresh).await.status, 429);
    assert_eq!(refresh_public(&h, &fresh).await.status, 200);

    assert_eq!(post("/_sim/oauth/advance", r#"{"sec":1}"#.into()).await.status, 400);
    assert_eq!(post("/_sim/oauth/issue", "{}".into()).await.status, 400);
    let stats: OAuthStats = serde_json::from_slice(&get(h.addr, "/_sim/oauth/stats").await.body).unwrap();
    assert_eq!(stats, h.sim.oauth_stats());
    assert_eq!((stats.refreshes, stats.expired_token_401s), (2, 2));
    assert_eq!(h.sim.stats().by_route.keys().filter(|k| k.contains("_sim")).count(), 0, "admin calls are not booked");
    h.shutdown().await;
}
