//! `POST /twitter/dm/list` over the wire: order, shape, tabs, paging that stays whole while
//! conversations move, and the usual GetXAPI refusals.

use std::collections::HashSet;

use serde_json::{json, Value};

use super::super::super::testkit::{send, Raw};
use super::super::super::{SimConfig, SimConversation, SimGroup, SimHandle, Simulator};

const KEY: &str = "get-x-api-test-key";
const AUTH: &str = "session-cookie";
const ACCOUNT: &str = "acme_support";
const GROUP: &str = "1578398451921985538";

fn cfg(peers: &[(&str, usize)]) -> SimConfig {
    SimConfig {
        conversations: peers
            .iter()
            .map(|(p, n)| SimConversation { peer_id: p.to_string(), messages: *n, ..SimConversation::default() })
            .collect(),
        api_key: Some(KEY.into()),
        account: Some(ACCOUNT.into()),
        getxapi_auth_token: Some(AUTH.into()),
        groups: vec![SimGroup {
            conversation_id: GROUP.into(),
            participants: vec!["44196397".into(), "2244994945".into()],
            events: 30,
            membership_every: 7,
        }],
        ..SimConfig::default()
    }
}

fn me() -> u64 {
    Simulator::account_id(ACCOUNT).parse().unwrap()
}

fn one_to_one(peer: &str) -> String {
    let p: u64 = peer.parse().unwrap();
    format!("{}-{}", me().min(p), me().max(p))
}

async fn list_raw(h: &SimHandle, body: &Value) -> Raw {
    send(
        h.addr,
        "POST",
        "/twitter/dm/list",
        &[("Authorization", &format!("Bearer {KEY}")), ("Content-Type", "application/json")],
        body.to_string().as_bytes(),
    )
    .await
}

async fn list(h: &SimHandle, body: Value) -> Value {
    let r = list_raw(h, &body).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    r.json()
}

/// Pages one tab to the end, calling `between` after each page; returns the conversation IDs.
async fn walk(h: &SimHandle, tab: &str, count: u64, mut between: impl AsyncFnMut(usize)) -> Vec<String> {
    let (mut ids, mut cursor) = (Vec::new(), Value::Null);
    for k in 0.. {
        let v = list(h, json!({ "auth_token": AUTH, "tab": tab, "count": count, "cursor": cursor })).await;
        let convs = v["conversations"].as_array().unwrap();
        assert!(convs.len() <= count as usize);
        ids.extend(convs.iter().map(|c| c["conversation_id"].as_str().unwrap().to_string()));
        assert_eq!(v["has_more"].as_bool(), Some(!v["next_cursor"].is_null()));
        if v["next_cursor"].is_null() {
            break;
        }
        cursor = v["next_cursor"].clone();
        between(k).await;
        assert!(k < 1_000, "the walk ends");
    }
    ids
}

/// The newest event ID of every non-empty conversation, most recent first, as ground truth has it.
fn truth(sim: &Simulator, peers: &[&str]) -> Vec<(String, u64)> {
    let mut all: Vec<(String, u64)> =
        peers.iter().filter_map(|p| sim.messages(p).first().map(|m| (one_to_one(p), m.id.parse().unwrap()))).collect();
    all.push((GROUP.to_string(), sim.group_events(GROUP)[0].id.parse().unwrap()));
    all.sort_unstable_by_key(|t| std::cmp::Reverse(t.1));
    all
}

#[tokio::test]
async fn conversations_come_most_recent_first_with_previews_and_users() {
    let peers = [("44196397", 40), ("1234567890", 7), ("783214", 0), ("2244994945", 12)];
    let h = Simulator::spawn(cfg(&peers)).await.unwrap();
    let names: Vec<&str> = peers.iter().map(|p| p.0).collect();
    let want = truth(&h.sim, &names);
    assert_eq!(want.len(), 4, "the empty conversation is not in the inbox");
    let got = walk(&h, "all", 2, async |_| {}).await;
    assert_eq!(got, want.iter().map(|w| w.0.clone()).collect::<Vec<_>>());

    let v = list(&h, json!({ "auth_token": AUTH })).await;
    assert_eq!((v["has_more"].as_bool(), v["next_cursor"].is_null()), (Some(false), true), "count defaults to 50");
    assert_eq!(v["userId"], me().to_string());
    let convs = v["conversations"].as_array().unwrap();
    let messages = v["messages"].as_array().unwrap();
    assert_eq!((convs.len(), messages.len(), v["message_count"].as_u64()), (4, 4, Some(4)));
    for c in convs {
        let id = c["conversation_id"].as_str().unwrap();
        let last = &c["last_message"];
        let participants: Vec<&str> =
            c["participants"].as_array().unwrap().iter().map(|p| p["id"].as_str().unwrap()).collect();
        assert!(participants.contains(&me().to_string().as_str()));
        for p in &participants {
            assert_eq!(v["users"][p]["id"].as_str(), Some(*p), "{p} is in users");
        }
        if id == GROUP {
            assert_eq!(c["type"], "GROUP_DM");
            assert_eq!(participants.len(), 3);
            let newest_msg = h.sim.group_events(GROUP).into_iter().find(|e| e.event_type == "MessageCreate").unwrap();
            assert_eq!(last["id"].as_str(), Some(newest_msg.id.as_str()));
        } else {
            assert_eq!(c["type"], "ONE_TO_ONE");
            let peer = participants.iter().find(|p| **p != me().to_string()).unwrap();
            let newest = &h.sim.messages(peer)[0];
            assert_eq!(last["id"].as_str(), Some(newest.id.as_str()));
            assert_eq!(last["senderId"].as_str(), Some(newest.sender_id.as_str()));
            assert_eq!(last["text"].as_str(), newest.text.as_deref());
            assert_eq!(c["unread"].as_bool(), Some(newest.sender_id != me().to_string()));
            let ms =
                humantime::parse_rfc3339(&newest.created_at).unwrap().duration_since(std::time::UNIX_EPOCH).unwrap();
            assert_eq!(c["sort_timestamp"].as_str(), Some(ms.as_millis().to_string().as_str()));
        }
        let m = messages.iter().find(|m| m["id"] == last["id"]).expect("the preview is in messages");
        assert_eq!(m["conversationId"].as_str(), Some(id));
    }
    let s = h.sim.stats();
    assert_eq!(s.by_route.get("POST /twitter/dm/list"), Some(&3));
    assert_eq!(s.credits, 3, "one per call");
    h.shutdown().await;
}

#[tokio::test]
async fn tabs_split_the_inbox_and_cursors_stay_in_their_tab() {
    let peers = [("44196397", 5), ("1234567890", 5), ("2244994945", 5), ("783214", 5), ("5550001", 5)];
    let h = Simulator::spawn(SimConfig {
        getxapi_request_conversations: vec!["1234567890".into(), GROUP.into()],
        getxapi_hidden_conversations: vec![one_to_one("783214"), "1234567890".into()],
        ..cfg(&peers)
    })
    .await
    .unwrap();
    let set = |v: Vec<String>| v.into_iter().collect::<HashSet<_>>();
    let all = set(walk(&h, "all", 1, async |_| {}).await);
    let requests = set(walk(&h, "requests", 1, async |_| {}).await);
    let hidden = set(walk(&h, "hidden", 1, async |_| {}).await);
    assert_eq!(all, set(vec![one_to_one("44196397"), one_to_one("2244994945"), one_to_one("5550001")]));
    assert_eq!(requests, set(vec![one_to_one("1234567890"), GROUP.to_string()]), "requests wins over hidden");
    assert_eq!(hidden, set(vec![one_to_one("783214")]));

    let v = list(&h, json!({ "auth_token": AUTH, "tab": "requests", "count": 1 })).await;
    let cursor = v["next_cursor"].clone();
    assert!(cursor.is_string());
    let r = list_raw(&h, &json!({ "auth_token": AUTH, "tab": "all", "cursor": cursor })).await;
    assert_eq!((r.status, r.json()["error"].as_str()), (400, Some("Invalid cursor")));
    let r = list_raw(&h, &json!({ "auth_token": AUTH, "tab": "archived" })).await;
    assert_eq!(r.status, 400);
    h.shutdown().await;
}

#[tokio::test]
async fn a_walk_lists_each_conversation_once_while_conversations_move() {
    let peers: Vec<(String, usize)> = (0..12).map(|k| ((7_000_000 + k).to_string(), 3 + k as usize)).collect();
    let peer_refs: Vec<(&str, usize)> = peers.iter().map(|(p, n)| (p.as_str(), *n)).collect();
    let h = Simulator::spawn(cfg(&peer_refs)).await.unwrap();
    let names: Vec<&str> = peers.iter().map(|p| p.0.as_str()).collect();
    let before: Vec<String> = truth(&h.sim, &names).into_iter().map(|t| t.0).collect();
    let sim = h.sim.clone();
    let addr = h.addr;
    let got = walk(&h, "all", 3, async |k| match k {
        // One already listed and one not yet listed jump to the front; a new one starts.
        0 => {
            let listed = &before[0];
            let unlisted = &before[8];
            for id in [listed, unlisted] {
                let peer = id.split('-').find(|p| *p != me().to_string()).unwrap().to_string();
                sim.add_messages(&peer, 1);
            }
            sim.add_messages("7999999", 2);
        }
        1 => {
            let r = send(
                addr,
                "POST",
                "/twitter/dm/send",
                &[("Authorization", &format!("Bearer {KEY}")), ("Content-Type", "application/json")],
                json!({ "auth_token": AUTH, "recipient_id": "7999998", "text": "hi" }).to_string().as_bytes(),
            )
            .await;
            assert_eq!(r.status, 200);
        }
        _ => {}
    })
    .await;
    assert_eq!(got, before, "every conversation that existed at the first page, once, in that page's order");

    // The next walk sees the moves and the new conversations first.
    let again = walk(&h, "all", 50, async |_| {}).await;
    assert_eq!(again.len(), before.len() + 2);
    assert_eq!(again[0], one_to_one("7999998"));
    assert_eq!(again[1], one_to_one("7999999"));
    assert_eq!(set_of(&again[2..4]), set_of(&[before[0].clone(), before[8].clone()]));
    h.shutdown().await;
}

fn set_of(ids: &[String]) -> HashSet<String> {
    ids.iter().cloned().collect()
}

#[tokio::test]
async fn conversations_started_through_x_show_up_and_refusals_are_getxapi_shaped() {
    let h = Simulator::spawn(cfg(&[("44196397", 3)])).await.unwrap();
    let r = send(
        h.addr,
        "POST",
        "/2/dm_conversations",
        &[("Authorization", &format!("Bearer {KEY}")), ("Content-Type", "application/json")],
        br#"{"conversation_type":"Group","participant_ids":["44196397","5550003"],"message":{"text":"welcome"}}"#,
    )
    .await;
    assert_eq!(r.status, 201);
    let group = r.json()["data"]["dm_conversation_id"].as_str().unwrap().to_string();
    let v = list(&h, json!({ "auth_token": AUTH, "count": 1 })).await;
    let c = &v["conversations"][0];
    assert_eq!((c["conversation_id"].as_str(), c["type"].as_str()), (Some(group.as_str()), Some("GROUP_DM")));
    assert_eq!((c["last_message"]["text"].as_str(), c["unread"].as_bool()), (Some("welcome"), Some(false)));

    for (body, status, error) in [
        (json!({}), 400, "Missing required field: auth_token"),
        (json!({ "auth_token": "other" }), 401, "Invalid auth_token - could not extract userId"),
        (json!({ "auth_token": AUTH, "cursor": "bm9wZQ" }), 400, "Invalid cursor"),
        (json!({ "auth_token": AUTH, "cursor": 5 }), 400, "Invalid cursor"),
        (json!({ "auth_token": AUTH, "count": "many" }), 400, "count must be a number"),
        (json!({ "auth_token": AUTH, "tab": 1 }), 400, "Invalid tab: must be one of all, requests, hidden"),
    ] {
        let r = list_raw(&h, &body).await;
        assert_eq!((r.status, r.json()["error"].as_str()), (status, Some(error)), "{body}");
    }
    let r = send(h.addr, "POST", "/twitter/dm/list", &[("Content-Type", "application/json")], b"{}").await;
    assert_eq!(r.status, 401, "the API key is checked first");
    h.shutdown().await;
}
