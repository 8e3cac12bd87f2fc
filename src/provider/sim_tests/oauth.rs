//! OAuth 2.0 user tokens (SPEC 8.1) and the inbox stream (SPEC 8.2) of the X API v2 adapter, against the
//! simulator's token endpoint and `/2/` routes with a token lifetime set (so only live issued tokens pass).

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use dm_handoff_simulator::{SimConfig, SimConversation, SimGroup, SimHandle, SimOAuthClient, Simulator};
use tokio_util::sync::CancellationToken;

use super::{peer, ACCOUNT};
use crate::config::{Pipeline, DEFAULT_SCOPES};
use crate::provider::oauth::TokenSource;
use crate::provider::x_api_v2::XApiV2;
use crate::provider::{with_retry, ErrorClass};
use crate::record::Conversation;
use crate::state::tokens::{TokenFile, Tokens};

const CLIENT: &str = "dm-handoff-test-client";
const GROUP: &str = "1578398451921985538";

fn cfg(secret: Option<&str>) -> SimConfig {
    SimConfig {
        conversations: ["44196397", "783214"]
            .iter()
            .map(|p| SimConversation { peer_id: p.to_string(), messages: 150, ..SimConversation::default() })
            .collect(),
        account: Some(ACCOUNT.into()),
        page_size: (100, 100),
        x_rate_limit: None,
        x_token_lifetime_secs: Some(3_600),
        oauth_clients: vec![SimOAuthClient {
            client_id: CLIENT.into(),
            client_secret: secret.map(str::to_string),
            redirect_uris: vec!["http://127.0.0.1:8976/callback".into()],
        }],
        groups: vec![SimGroup {
            conversation_id: GROUP.into(),
            participants: vec!["44196397".into(), "2244994945".into()],
            events: 120,
            membership_every: 7,
        }],
        ..SimConfig::default()
    }
}

/// An OAuth pipeline against `h` whose state folder is `dir`; `extra` adds keys (a client secret).
fn pipeline(h: &SimHandle, dir: &Path, extra: &str) -> Pipeline {
    let text = format!(
        "state_dir = \"{}\"\n[[pipelines]]\nname = \"t\"\nprovider = \"x-api-v2\"\nbase_url = \"{root}\"\n\
         oauth_client_id = \"{CLIENT}\"\noauth_token_url = \"{root}/2/oauth2/token\"\n{extra}\naccount = \"{}\"\n\
         retry_base = \"10ms\"\nretry_max = \"100ms\"\nmax_retries = 20\n",
        dir.join("state").display(),
        Simulator::account_id(ACCOUNT),
        root = h.root_url(),
    );
    crate::config::from_str(&text, Path::new("/t/p.toml"), Path::new("/t"))
        .expect("a valid pipeline")
        .pipelines
        .remove(0)
}

/// Stores a pair the simulator issued as if `auth` had, with our clock's lifetime `issued_ago` old.
fn store(p: &Pipeline, h: &SimHandle, lifetime: Duration, issued_ago: Duration) -> Tokens {
    let issued = h.sim.issue_oauth_tokens(CLIENT, DEFAULT_SCOPES);
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as u64;
    let issued_at_ms = now - issued_ago.as_millis() as u64;
    let t = Tokens {
        issued_at_ms,
        expires_at_ms: issued_at_ms + lifetime.as_millis() as u64,
        ..Tokens::issued(CLIENT, issued.access_token, issued.refresh_token, lifetime, issued.scope)
    };
    let file = TokenFile::new(p.oauth.as_ref().unwrap().token_file.clone());
    let lock = file.lock().unwrap();
    file.save(&t, &lock).unwrap();
    t
}

fn client(p: &Pipeline) -> XApiV2 {
    XApiV2::with_tokens(p, TokenSource::open(p, p.oauth.as_ref().unwrap()).expect("tokens stored")).unwrap()
}

fn stored(p: &Pipeline) -> Tokens {
    TokenFile::new(p.oauth.as_ref().unwrap().token_file.clone()).load().unwrap()
}

#[tokio::test]
async fn twenty_requests_that_meet_an_expired_token_cause_one_refresh() {
    let h = Simulator::spawn(cfg(None)).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let p = pipeline(&h, dir.path(), "");
    let first = store(&p, &h, Duration::from_secs(3_600), Duration::ZERO);
    let x = Arc::new(client(&p));
    x.history(&peer("44196397"), None).await.expect("a live token passes");
    assert_eq!(h.sim.oauth_stats().refreshes, 0);

    // X expires the token early (our clock still thinks it lives): every request meets a 401.
    assert_eq!(h.sim.expire_access_tokens(), 1);
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..20 {
        let x = x.clone();
        let conv = if i % 2 == 0 { peer("44196397") } else { peer("783214") };
        tasks.spawn(async move { x.history(&conv, None).await.map(|p| p.items.len()) });
    }
    while let Some(r) = tasks.join_next().await {
        assert!(r.unwrap().expect("every request succeeds after the renewal") > 0);
    }
    let stats = h.sim.oauth_stats();
    assert_eq!(stats.refreshes, 1, "one refresh for all of them: {stats:?}");
    assert!(stats.expired_token_401s >= 1 && stats.expired_token_401s <= 20, "{stats:?}");
    let now = stored(&p);
    assert_ne!(now.access_token, first.access_token, "the renewed pair is in the file");
    assert_ne!(now.refresh_token, first.refresh_token, "with the rotated refresh token");
    h.shutdown().await;
}

#[tokio::test]
async fn a_token_with_a_fifth_of_its_lifetime_left_is_renewed_before_it_is_sent() {
    let h = Simulator::spawn(cfg(None)).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let p = pipeline(&h, dir.path(), "");
    // 100 s lifetime, 85 s gone: 15 s left, less than a fifth.
    store(&p, &h, Duration::from_secs(100), Duration::from_secs(85));
    let x = client(&p);
    x.history(&peer("44196397"), None).await.unwrap();
    let stats = h.sim.oauth_stats();
    assert_eq!((stats.refreshes, stats.expired_token_401s), (1, 0), "renewed first, no 401: {stats:?}");
    // Renewed for the simulator's full hour: nothing more to do for a while.
    x.history(&peer("783214"), None).await.unwrap();
    assert_eq!(h.sim.oauth_stats().refreshes, 1);
    h.shutdown().await;
}

#[tokio::test]
async fn a_refused_refresh_is_fatal_names_auth_and_a_new_token_file_revives_the_client() {
    let h = Simulator::spawn(cfg(None)).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let p = pipeline(&h, dir.path(), "");
    store(&p, &h, Duration::from_secs(3_600), Duration::ZERO);
    let x = client(&p);
    h.sim.revoke_refresh_tokens(None);
    h.sim.expire_access_tokens();
    let cancel = CancellationToken::new();
    let conv = peer("44196397");
    let e = with_retry(&p.retry, &cancel, || x.history(&conv, None)).await.unwrap_err();
    assert_eq!((e.class, e.code.as_str()), (ErrorClass::Fatal, "invalid_grant"), "{e}");
    assert!(e.to_string().contains("dm-handoff auth --pipeline t"), "names the fix: {e}");
    let asked = h.sim.oauth_stats().token_requests.values().sum::<u64>();
    let again = x.history(&peer("44196397"), None).await.unwrap_err();
    assert_eq!(again.code, "invalid_grant");
    assert_eq!(h.sim.oauth_stats().token_requests.values().sum::<u64>(), asked, "not asked again in vain");

    // `auth` stores a new pair (here: straight into the file); the same client carries on.
    store(&p, &h, Duration::from_secs(3_600), Duration::ZERO);
    x.history(&peer("44196397"), None).await.expect("revived by the new token file");
    h.shutdown().await;
}

#[tokio::test]
async fn a_confidential_client_renews_with_http_basic_and_a_wrong_secret_is_fatal() {
    let h = Simulator::spawn(cfg(Some("s3cret-of-the-app"))).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("secret"), "s3cret-of-the-app\n").unwrap();
    // Secret files must be owner-only.
    std::fs::set_permissions(
        dir.path().join("secret"),
        <std::fs::Permissions as std::os::unix::fs::PermissionsExt>::from_mode(0o600),
    )
    .unwrap();
    let extra = format!("oauth_client_secret_file = \"{}\"", dir.path().join("secret").display());
    let p = pipeline(&h, dir.path(), &extra);
    store(&p, &h, Duration::from_secs(3_600), Duration::ZERO);
    let x = client(&p);
    h.sim.expire_access_tokens();
    x.history(&peer("44196397"), None).await.expect("renewed as a confidential client");
    assert_eq!(h.sim.oauth_stats().refreshes, 1);

    std::fs::write(dir.path().join("secret"), "not-the-secret").unwrap();
    let x = client(&p);
    h.sim.expire_access_tokens();
    let e = x.history(&peer("44196397"), None).await.unwrap_err();
    assert_eq!((e.class, e.code.as_str()), (ErrorClass::Fatal, "invalid_client"), "{e}");
    assert!(!e.to_string().contains("not-the-secret"));
    h.shutdown().await;
}

#[tokio::test]
async fn the_inbox_stream_routes_every_event_to_its_conversation() {
    let h = Simulator::spawn(cfg(None)).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let p = pipeline(&h, dir.path(), "");
    store(&p, &h, Duration::from_secs(3_600), Duration::ZERO);
    let x = client(&p);
    let (mut cursor, mut seen, mut pages) = (None::<String>, BTreeSet::new(), 0);
    let mut by_conv: std::collections::BTreeMap<String, usize> = Default::default();
    loop {
        let page = x.inbox(cursor.as_deref()).await.unwrap();
        pages += 1;
        for (conv, item) in &page.items {
            assert!(seen.insert(item.id.clone()), "event {} twice", item.id);
            match conv {
                Conversation::Peer { user_id, conversation_id } => {
                    assert_eq!(conversation_id.as_deref(), item.conversation_id.as_deref());
                    assert!(item.receiver_id.is_some(), "a 1:1 message has its receiver");
                    *by_conv.entry(user_id.clone()).or_default() += 1;
                }
                Conversation::Group { conversation_id } => *by_conv.entry(conversation_id.clone()).or_default() += 1,
            }
        }
        match page.next_cursor {
            Some(c) => cursor = Some(c),
            None => break,
        }
    }
    assert_eq!(by_conv.get("44196397"), Some(&h.sim.messages("44196397").len()));
    assert_eq!(by_conv.get("783214"), Some(&h.sim.messages("783214").len()));
    assert_eq!(by_conv.get(GROUP), Some(&h.sim.group_events(GROUP).len()));
    assert_eq!(pages, seen.len().div_ceil(100), "100 events per request across conversations");
    h.shutdown().await;
}

#[tokio::test]
async fn an_unavailable_token_endpoint_is_ridden_out() {
    let h = Simulator::spawn(cfg(None)).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let p = pipeline(&h, dir.path(), "");
    // Due for renewal but still valid: a failing token endpoint does not stop requests, nor is it asked
    // before every one of them.
    store(&p, &h, Duration::from_secs(100), Duration::from_secs(85));
    let x = client(&p);
    h.sim.fail_token_requests(100, 503);
    for _ in 0..5 {
        x.history(&peer("44196397"), None).await.expect("the current token still works");
    }
    assert_eq!(h.sim.oauth_stats().token_requests.get("refresh_token"), Some(&1), "asked once, then backed off");
    // Expired at X: the request fails transiently until the endpoint answers, then goes through.
    h.sim.fail_token_requests(2, 503);
    h.sim.expire_access_tokens();
    let cancel = CancellationToken::new();
    let conv = peer("44196397");
    with_retry(&p.retry, &cancel, || x.history(&conv, None)).await.expect("renewed once the endpoint is back");
    assert_eq!(h.sim.oauth_stats().refreshes, 1);
    h.shutdown().await;
}
