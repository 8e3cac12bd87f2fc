//! The X API v2 routes as they go over the wire (headers, 429s, tokens), spoken to with the raw client in
//! `testkit`. Tests that drive the product's adapter against these routes live in the product.

use super::super::testkit::{get, send};
use super::super::{SimConfig, SimConversation, SimHandle, Simulator};

const TOKEN: &str = "x-oauth2-user-token-for-tests";
const ACCOUNT: &str = "acme_support";

/// One conversation of `n` messages with `peer`, behind the token; no rate limit unless a test sets one.
fn cfg(peer: &str, n: usize) -> SimConfig {
    let conversation = SimConversation { peer_id: peer.into(), messages: n, ..SimConversation::default() };
    SimConfig {
        conversations: vec![conversation],
        api_key: Some(TOKEN.into()),
        account: Some(ACCOUNT.into()),
        x_rate_limit: None,
        ..SimConfig::default()
    }
}

async fn get_auth(h: &SimHandle, target: &str) -> super::super::testkit::Raw {
    send(h.addr, "GET", target, &[("Authorization", &format!("Bearer {TOKEN}"))], b"").await
}

#[tokio::test]
async fn windows_are_announced_and_enforced_with_a_429() {
    let h = Simulator::spawn(SimConfig { x_rate_limit: Some((3, 30)), ..cfg("44196397", 10) }).await.unwrap();
    let target = "/2/dm_conversations/with/44196397/dm_events";
    for left in [2, 1, 0] {
        let r = get_auth(&h, target).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.header("x-rate-limit-limit"), Some("3"));
        assert_eq!(r.header("x-rate-limit-remaining"), Some(left.to_string().as_str()));
        let reset: u64 = r.header("x-rate-limit-reset").unwrap().parse().unwrap();
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
        assert!((now..=now + 31).contains(&reset), "{reset} vs {now}");
    }
    let r = get_auth(&h, target).await;
    assert_eq!(r.status, 429);
    assert_eq!(r.header("content-type"), Some("application/problem+json"));
    assert_eq!(r.json()["type"], "https://api.x.com/2/problems/rate-limit-exceeded");
    let s = h.sim.stats();
    assert_eq!((s.rate_limited, s.rate_limited_by_family.get("x_api_v2_dm_read")), (1, Some(&1)));
    // Sends count in their own window.
    let body = br#"{"text":"hello"}"#;
    let r = send(
        h.addr,
        "POST",
        "/2/dm_conversations/with/44196397/messages",
        &[("Authorization", &format!("Bearer {TOKEN}")), ("Content-Type", "application/json")],
        body,
    )
    .await;
    assert_eq!(r.status, 201);
    let r = get(h.addr, target).await;
    assert_eq!(r.status, 401, "no token");
    h.shutdown().await;
}

#[test]
fn tokens_are_base32hex_and_round_trip() {
    for t in [super::Token::World("AAECAwQFBgcICQ+/=".into()), super::Token::Group(0), super::Token::Group(123_456)] {
        let text = super::encode_token(&t);
        assert!(text.len() >= 16 && text.bytes().all(|b| b.is_ascii_digit() || (b'A'..=b'V').contains(&b)), "{text}");
        assert_eq!(super::decode_token(&text), Some(t));
    }
    assert_eq!(super::decode_token("short"), None);
    assert_eq!(super::decode_token("ZZZZZZZZZZZZZZZZZZ"), None);
}
