//! `GET /2/dm_events` over the wire: whole walks against ground truth, new events mid-walk,
//! filters, the horizon, strict fields and the shared read window.

use std::collections::HashSet;

use serde_json::Value;

use super::super::super::content::snowflake_ms;
use super::super::super::testkit::{encode, send, Raw};
use super::super::super::{SimConfig, SimConversation, SimGroup, SimHandle, Simulator};

const TOKEN: &str = "x-oauth2-user-token-for-tests";
const ACCOUNT: &str = "acme_support";
const GROUP: &str = "1578398451921985538";
const PEERS: [(&str, usize); 3] = [("44196397", 140), ("1234567890", 7), ("783214", 0)];
const ALL_FIELDS: &str = "dm_event.fields=id,event_type,text,created_at,dm_conversation_id,sender_id,participant_ids";

fn cfg() -> SimConfig {
    SimConfig {
        conversations: PEERS
            .iter()
            .map(|(p, n)| SimConversation { peer_id: p.to_string(), messages: *n, ..SimConversation::default() })
            .collect(),
        api_key: Some(TOKEN.into()),
        account: Some(ACCOUNT.into()),
        x_rate_limit: None,
        groups: vec![SimGroup {
            conversation_id: GROUP.into(),
            participants: vec!["44196397".into(), "783214".into(), "2244994945".into()],
            events: 60,
            membership_every: 9,
        }],
        ..SimConfig::default()
    }
}

async fn get_auth(h: &SimHandle, target: &str) -> Raw {
    send(h.addr, "GET", target, &[("Authorization", &format!("Bearer {TOKEN}"))], b"").await
}

/// One page: its events and its `next_token`.
async fn page(h: &SimHandle, query: &str, token: Option<&str>) -> (Vec<Value>, Option<String>) {
    let mut target = format!("/2/dm_events?{query}");
    if let Some(t) = token {
        target.push_str(&format!("&pagination_token={}", encode(t)));
    }
    let r = get_auth(h, &target).await;
    assert_eq!(r.status, 200, "{target}: {}", String::from_utf8_lossy(&r.body));
    let v = r.json();
    let data = v["data"].as_array().cloned().unwrap_or_default();
    assert_eq!(v["meta"]["result_count"].as_u64(), Some(data.len() as u64));
    let next = v["meta"].get("next_token").map(|t| t.as_str().expect("a string token").to_string());
    (data, next)
}

/// Walks from the newest page to the end, calling `between` after each page; returns every event.
async fn walk(h: &SimHandle, query: &str, mut between: impl AsyncFnMut(usize)) -> Vec<Value> {
    let (mut all, mut token) = (Vec::new(), None::<String>);
    for k in 0.. {
        let (data, next) = page(h, query, token.as_deref()).await;
        all.extend(data);
        match next {
            Some(t) => {
                assert!(t.len() >= 16 && t.bytes().all(|b| b.is_ascii_digit() || (b'A'..=b'V').contains(&b)), "{t}");
                token = Some(t);
            }
            None => break,
        }
        between(k).await;
        assert!(k < 10_000, "the walk ends");
    }
    all
}

fn ids(events: &[Value]) -> Vec<u64> {
    events.iter().map(|e| e["id"].as_str().and_then(|s| s.parse().ok()).expect("a numeric id")).collect()
}

/// The account's 1:1 conversation ID with `peer`.
fn one_to_one(peer: &str) -> String {
    let (me, p): (u64, u64) = (Simulator::account_id(ACCOUNT).parse().unwrap(), peer.parse().unwrap());
    format!("{}-{}", me.min(p), me.max(p))
}

/// Every event of the account, newest first, as ground truth has them.
fn truth(sim: &Simulator) -> Vec<(u64, String)> {
    let mut all: Vec<(u64, String)> = Vec::new();
    for (peer, _) in PEERS {
        let conv = one_to_one(peer);
        all.extend(sim.messages(peer).iter().map(|m| (m.id.parse().unwrap(), conv.clone())));
    }
    all.extend(sim.group_events(GROUP).iter().map(|e| (e.id.parse().unwrap(), GROUP.to_string())));
    all.sort_unstable_by_key(|t| std::cmp::Reverse(t.0));
    all
}

#[tokio::test]
async fn a_walk_serves_every_event_of_every_conversation_once_newest_first() {
    let h = Simulator::spawn(cfg()).await.unwrap();
    let query = format!("max_results=25&{ALL_FIELDS}&expansions=sender_id,participant_ids");
    let events = walk(&h, &query, async |_| {}).await;
    let want = truth(&h.sim);
    assert_eq!(want.len(), 140 + 7 + 60);
    assert_eq!(ids(&events), want.iter().map(|w| w.0).collect::<Vec<_>>());
    for (e, (_, conv)) in events.iter().zip(&want) {
        assert_eq!(e["dm_conversation_id"].as_str(), Some(conv.as_str()), "{e}");
        assert!(e["created_at"].as_str().is_some_and(|c| c.ends_with('Z')));
    }
    let kinds: HashSet<&str> = events.iter().filter_map(|e| e["event_type"].as_str()).collect();
    assert_eq!(kinds, HashSet::from(["MessageCreate", "ParticipantsJoin", "ParticipantsLeave"]));
    assert!(events.iter().filter(|e| e["event_type"] != "MessageCreate").all(|e| e["participant_ids"].is_array()));
    let s = h.sim.stats();
    assert_eq!(s.messages_served, 207);
    assert_eq!(s.by_route.get("GET /2/dm_events"), Some(&9));

    // Fields and expansions are the per-conversation routes': nothing but the defaults unless asked.
    let (data, _) = page(&h, "max_results=5", None).await;
    let e = data.iter().find(|e| e["event_type"] == "MessageCreate").expect("messages first");
    assert!(e.get("dm_conversation_id").is_none() && e.get("sender_id").is_none() && e.get("created_at").is_none());
    let r = get_auth(&h, "/2/dm_events?max_results=100&expansions=sender_id").await;
    let v = r.json();
    assert!(v["includes"]["users"].as_array().is_some_and(|u| !u.is_empty()));
    assert!(v.get("meta").and_then(|m| m.get("next_token")).is_some(), "207 events do not fit in 100");
    h.shutdown().await;
}

#[tokio::test]
async fn events_arriving_mid_walk_wait_for_the_next_walk_and_nothing_is_skipped() {
    let h = Simulator::spawn(cfg()).await.unwrap();
    let before = truth(&h.sim).into_iter().map(|t| t.0).collect::<Vec<_>>();
    let auth = format!("Bearer {TOKEN}");
    let addr = h.addr;
    let sim = h.sim.clone();
    let events = walk(&h, &format!("max_results=10&{ALL_FIELDS}"), async |k| {
        match k {
            // New messages in an old conversation, in a new one, a send and a new group.
            0 => {
                sim.add_messages("1234567890", 3);
            }
            1 => {
                sim.add_messages("5550001", 2);
            }
            2 => {
                let r = send(
                    addr,
                    "POST",
                    "/2/dm_conversations/with/5550002/messages",
                    &[("Authorization", &auth), ("Content-Type", "application/json")],
                    br#"{"text":"hello there"}"#,
                )
                .await;
                assert_eq!(r.status, 201);
            }
            3 => {
                let r = send(
                    addr,
                    "POST",
                    "/2/dm_conversations",
                    &[("Authorization", &auth), ("Content-Type", "application/json")],
                    br#"{"conversation_type":"Group","participant_ids":["44196397","5550003"],"message":{"text":"welcome"}}"#,
                )
                .await;
                assert_eq!(r.status, 201);
            }
            _ => {}
        }
    })
    .await;
    assert_eq!(ids(&events), before, "exactly the events that existed when the walk started");

    // The next walk starts with the new ones, newest first, each in its conversation.
    let (data, _) = page(&h, &format!("max_results=9&{ALL_FIELDS}"), None).await;
    let convs: Vec<&str> = data.iter().map(|e| e["dm_conversation_id"].as_str().unwrap()).collect();
    let group = convs[0].to_string();
    assert!(!group.contains('-') && group != GROUP, "the new group is newest: {convs:?}");
    assert_eq!(data[0]["text"], "welcome");
    assert_eq!(data[1]["event_type"], "ParticipantsJoin");
    assert_eq!(convs[2], one_to_one("5550002"));
    assert_eq!(data[2]["text"], "hello there");
    assert!(convs[3..5].iter().all(|c| *c == one_to_one("5550001")), "{convs:?}");
    assert!(convs[5..8].iter().all(|c| *c == one_to_one("1234567890")), "{convs:?}");
    assert_eq!(ids(&data[8..]), before[..1].to_vec(), "then what was there before");
    let all = ids(&data);
    assert!(all.windows(2).all(|w| w[0] > w[1]));
    h.shutdown().await;
}

#[tokio::test]
async fn filters_deletions_and_the_thirty_day_horizon() {
    let h = Simulator::spawn(cfg()).await.unwrap();
    // Only membership events: the group's, all of them, and no 1:1 messages looked at.
    let events = walk(&h, "max_results=3&event_types=ParticipantsJoin,ParticipantsLeave", async |_| {}).await;
    let want: Vec<u64> = h
        .sim
        .group_events(GROUP)
        .iter()
        .filter(|e| e.event_type != "MessageCreate")
        .map(|e| e.id.parse().unwrap())
        .collect();
    assert!(want.len() > 3);
    assert_eq!(ids(&events), want);

    // A deleted event is gone from the stream; pages around it stay full.
    let newest = truth(&h.sim)[1].0.to_string();
    let r = send(
        h.addr,
        "DELETE",
        &format!("/2/dm_events/{newest}"),
        &[("Authorization", &format!("Bearer {TOKEN}"))],
        b"",
    )
    .await;
    assert_eq!(r.status, 200);
    let (data, _) = page(&h, "max_results=4", None).await;
    assert_eq!(data.len(), 4);
    assert!(ids(&data).iter().all(|i| i.to_string() != newest));
    h.shutdown().await;

    // The horizon counts back from the account's newest event, across conversations.
    let h = Simulator::spawn(SimConfig { x_history_days: Some(30), ..cfg() }).await.unwrap();
    let events = walk(&h, "max_results=100", async |_| {}).await;
    let all = truth(&h.sim);
    let horizon = snowflake_ms(all[0].0) - 30 * 86_400_000;
    let within: Vec<u64> = all.iter().map(|t| t.0).filter(|id| snowflake_ms(*id) >= horizon).collect();
    assert!(!within.is_empty() && within.len() < all.len(), "{} of {}", within.len(), all.len());
    assert_eq!(ids(&events), within);
    h.shutdown().await;
}

#[tokio::test]
async fn bad_parameters_strict_fields_and_foreign_tokens_are_refused() {
    let h = Simulator::spawn(SimConfig { x_strict_fields: true, ..cfg() }).await.unwrap();
    let (_, next) = page(&h, "max_results=5", None).await;
    let next = next.unwrap();
    let per_conv = get_auth(&h, "/2/dm_conversations/with/44196397/dm_events?max_results=5").await.json()["meta"]
        ["next_token"]
        .as_str()
        .unwrap()
        .to_string();
    for target in [
        "/2/dm_events?dm_event.fields=sender_id".to_string(),
        "/2/dm_events?dm_event.fields=participant_ids".to_string(),
        "/2/dm_events?max_results=0".to_string(),
        "/2/dm_events?max_results=101".to_string(),
        "/2/dm_events?max_results=ten".to_string(),
        "/2/dm_events?expansions=everything".to_string(),
        "/2/dm_events?pagination_token=short".to_string(),
        "/2/dm_events?pagination_token=ZZZZZZZZZZZZZZZZZZZZ".to_string(),
        format!("/2/dm_events?pagination_token={per_conv}"),
        format!("/2/dm_conversations/with/44196397/dm_events?pagination_token={next}"),
    ] {
        let r = get_auth(&h, &target).await;
        assert_eq!(r.status, 400, "{target}: {}", String::from_utf8_lossy(&r.body));
    }
    // The expansion still gives the sender under strict fields.
    let (data, _) = page(&h, "max_results=5&expansions=sender_id", None).await;
    assert!(data.iter().filter(|e| e["event_type"] == "MessageCreate").all(|e| e["sender_id"].is_string()));
    assert_eq!(send(h.addr, "GET", "/2/dm_events", &[], b"").await.status, 401);
    h.shutdown().await;
}

#[tokio::test]
async fn inbox_reads_share_the_dm_read_window_with_conversation_reads() {
    let h = Simulator::spawn(SimConfig { x_rate_limit: Some((3, 900)), ..cfg() }).await.unwrap();
    let r = get_auth(&h, "/2/dm_conversations/with/44196397/dm_events").await;
    assert_eq!((r.status, r.header("x-rate-limit-remaining")), (200, Some("2")));
    for left in ["1", "0"] {
        let r = get_auth(&h, "/2/dm_events").await;
        assert_eq!(
            (r.status, r.header("x-rate-limit-limit"), r.header("x-rate-limit-remaining")),
            (200, Some("3"), Some(left))
        );
        assert!(r.header("x-rate-limit-reset").is_some());
    }
    let r = get_auth(&h, "/2/dm_events").await;
    assert_eq!(r.status, 429);
    assert_eq!(r.json()["type"], "https://api.x.com/2/problems/rate-limit-exceeded");
    h.shutdown().await;
}

#[tokio::test]
async fn only_live_oauth_tokens_read_the_inbox_when_a_lifetime_is_set() {
    let h = Simulator::spawn(SimConfig { x_token_lifetime_secs: Some(60), ..cfg() }).await.unwrap();
    assert_eq!(get_auth(&h, "/2/dm_events").await.status, 401, "the static key no longer works");
    let t = h.sim.issue_oauth_tokens("app", "dm.read tweet.read users.read").access_token;
    let r = send(h.addr, "GET", "/2/dm_events?max_results=2", &[("Authorization", &format!("Bearer {t}"))], b"").await;
    assert_eq!(r.status, 200);
    h.sim.expire_access_tokens();
    let r = send(h.addr, "GET", "/2/dm_events?max_results=2", &[("Authorization", &format!("Bearer {t}"))], b"").await;
    assert_eq!(r.status, 401);
    h.shutdown().await;
}

#[test]
fn inbox_tokens_are_base32hex_and_round_trip() {
    for id in [0u64, 1, 1_893_456_789_012_345_678, u64::MAX] {
        let t = super::encode_token(id);
        assert!(t.len() >= 16 && t.bytes().all(|b| b.is_ascii_digit() || (b'A'..=b'V').contains(&b)), "{t}");
        assert_eq!(super::decode_token(&t), Some(id));
    }
    assert_eq!(super::decode_token("0123456789ABCDEF"), None);
}
