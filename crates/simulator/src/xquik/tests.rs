//! HTTP tests of the Xquik routes: a real server on loopback, spoken to with the raw client in
//! `testkit`, so what is asserted is what goes over the wire.

use std::collections::HashSet;
use std::net::SocketAddr;

use super::super::testkit::{self, encode, get, send, Raw};
use super::super::{CursorStyle, Faults, Growth, SimConfig, SimConversation, SimHandle, Simulator};
use super::*;

async fn spawn(cfg: SimConfig) -> SimHandle {
    Simulator::spawn(cfg).await.expect("spawn")
}

fn one(peer: &str, n: usize, style: CursorStyle) -> SimConfig {
    SimConfig {
        conversations: vec![SimConversation {
            peer_id: peer.into(),
            messages: n,
            cursor_style: style,
            ..SimConversation::default()
        }],
        ..SimConfig::default()
    }
}

async fn page(addr: SocketAddr, peer: &str, cursor: Option<&str>) -> Raw {
    let mut target = format!("/api/v1/x/dm/{peer}/history?account=acme");
    if let Some(c) = cursor {
        target.push_str(&format!("&cursor={}", encode(c)));
    }
    get(addr, &target).await
}

/// Walks a conversation to its end; returns each page's ids (sorted newest first).
async fn walk(addr: SocketAddr, peer: &str) -> Vec<Vec<u64>> {
    let mut pages = Vec::new();
    let mut cursor: Option<String> = None;
    for _ in 0..1000 {
        let r = page(addr, peer, cursor.as_deref()).await;
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        let v = r.json();
        let mut ids: Vec<u64> = v["messages"]
            .as_array()
            .expect("messages")
            .iter()
            .map(|m| m["id"].as_str().and_then(|s| s.parse().ok()).expect("id"))
            .collect();
        ids.sort_unstable_by(|a, b| b.cmp(a));
        pages.push(ids);
        let next = v["next_cursor"].as_str().expect("next_cursor").to_string();
        assert_eq!(v["has_next_page"].as_bool(), Some(!next.is_empty()));
        if next.is_empty() {
            break;
        }
        cursor = Some(next);
    }
    pages
}

async fn post_json(addr: SocketAddr, target: &str, key: Option<&str>, body: &Value) -> Raw {
    let body = serde_json::to_vec(body).expect("json");
    let mut headers = vec![("Content-Type", "application/json")];
    if let Some(k) = key {
        headers.push(("Idempotency-Key", k));
    }
    send(addr, "POST", target, &headers, &body).await
}

#[tokio::test]
async fn history_has_the_documented_shape_and_walks_max_id_exactly_once() {
    let h = spawn(SimConfig::default()).await;
    let pages = walk(h.addr, "1234567890").await;
    let truth: Vec<u64> = h.sim.messages("1234567890").iter().map(|m| m.id.parse().expect("numeric")).collect();
    assert_eq!(pages.concat(), truth);
    assert!(pages.len() >= 2, "35 messages need at least two pages");

    let r = page(h.addr, "1234567890", None).await;
    assert!(r.header("x-request-id").is_some());
    let v = r.json();
    let top: HashSet<&str> = v.as_object().expect("object").keys().map(|k| k.as_str()).collect();
    assert_eq!(top, HashSet::from(["messages", "has_next_page", "next_cursor"]));
    let own = Simulator::account_id("acme");
    for m in v["messages"].as_array().expect("array") {
        let obj = m.as_object().expect("message object");
        for (k, val) in obj {
            assert!(["id", "text", "senderId", "receiverId", "createdAt", "mediaUrl"].contains(&k.as_str()), "{k}");
            assert!(val.is_string(), "{k} must be a string, never null");
        }
        let ids = (m["senderId"].as_str(), m["receiverId"].as_str());
        assert!(ids == (Some("1234567890"), Some(own.as_str())) || ids == (Some(own.as_str()), Some("1234567890")));
        if let Some(t) = m["createdAt"].as_str() {
            let id: u64 = m["id"].as_str().and_then(|s| s.parse().ok()).expect("id");
            let ms = (id >> 22) + content::SNOWFLAKE_EPOCH_MS;
            assert_eq!(t, content::rfc3339_ms(ms));
            assert!(t.ends_with('Z') && t.len() == 24, "{t}");
        }
    }
    let s = h.sim.stats();
    assert_eq!(s.credits, 35 + v["messages"].as_array().map_or(0, |a| a.len() as u64));
    assert_eq!(s.messages_served, s.credits);
    assert_eq!(s.by_route.get(HISTORY), Some(&(pages.len() as u64 + 1)));
    h.shutdown().await;
}

#[tokio::test]
async fn optional_fields_are_omitted_never_null() {
    let h = spawn(one("77", 2000, CursorStyle::MaxId)).await;
    let (mut no_text, mut no_time, mut media, mut total) = (0, 0, 0, 0);
    let mut cursor: Option<String> = None;
    loop {
        let r = page(h.addr, "77", cursor.as_deref()).await;
        let text = String::from_utf8_lossy(&r.body).into_owned();
        assert!(!text.contains("null"), "{text}");
        let v = r.json();
        for m in v["messages"].as_array().expect("array") {
            total += 1;
            no_text += m.get("text").is_none() as usize;
            no_time += m.get("createdAt").is_none() as usize;
            media += m.get("mediaUrl").is_some() as usize;
        }
        match v["next_cursor"].as_str() {
            Some("") | None => break,
            Some(c) => cursor = Some(c.to_string()),
        }
    }
    assert_eq!(total, 2000);
    assert!((60..150).contains(&no_text), "{no_text}");
    assert!((70..180).contains(&no_time), "{no_time}");
    assert!((140..270).contains(&media), "{media}");
    h.shutdown().await;
}

#[tokio::test]
async fn offset_pages_shift_under_growth_but_the_union_is_complete() {
    let mut cfg = one("55", 400, CursorStyle::Offset);
    cfg.growth = Growth { per_request: 0.8, max_new: 0 };
    let h = spawn(cfg).await;
    let before: HashSet<String> = h.sim.messages("55").into_iter().map(|m| m.id).collect();
    let pages = walk(h.addr, "55").await;
    let flat: Vec<String> = pages.concat().iter().map(|id| id.to_string()).collect();
    let union: HashSet<String> = flat.iter().cloned().collect();
    assert!(flat.len() > union.len(), "pages overlap");
    assert!(before.is_subset(&union));
    h.shutdown().await;
}

#[tokio::test]
async fn bad_cursors_and_unencoded_plus_are_refused() {
    let h = spawn(SimConfig::default()).await;
    let v = page(h.addr, "44196397", None).await.json();
    let cursor = v["next_cursor"].as_str().expect("cursor").to_string();
    assert!(cursor.contains('+') && cursor.contains('/') && cursor.contains('='));
    // A careless client puts the cursor in the query as is: `+` arrives as a space.
    let raw = format!("/api/v1/x/dm/44196397/history?account=acme&cursor={cursor}");
    let r = get(h.addr, &raw).await;
    assert_eq!(r.status, 400);
    assert_eq!(r.json(), json!({ "error": "invalid_input", "message": "invalid cursor" }));
    // The cursor of another conversation, and garbage, are refused too.
    assert_eq!(page(h.addr, "2244994945", Some(&cursor)).await.status, 400);
    assert_eq!(page(h.addr, "44196397", Some("DAACCgACGRElMJcAAA")).await.status, 400);
    // Properly encoded, it works; a bad maxId is refused, a numeric one honoured.
    assert_eq!(page(h.addr, "44196397", Some(&cursor)).await.status, 200);
    let r = get(h.addr, "/api/v1/x/dm/44196397/history?account=acme&maxId=abc").await;
    assert_eq!(r.status, 400);
    let newest = &h.sim.messages("44196397")[0].id;
    let r = get(h.addr, &format!("/api/v1/x/dm/44196397/history?account=acme&maxId={newest}")).await;
    let ids: HashSet<String> = r.json()["messages"]
        .as_array()
        .expect("array")
        .iter()
        .filter_map(|m| m["id"].as_str().map(String::from))
        .collect();
    assert!(ids.contains(newest), "maxId is inclusive");
    h.shutdown().await;
}

#[tokio::test]
async fn history_validation_errors() {
    let h = spawn(SimConfig { account: Some("acme".into()), ..SimConfig::default() }).await;
    let r = get(h.addr, "/api/v1/x/dm/abc/history?account=acme").await;
    assert_eq!((r.status, r.json()["error"].clone()), (400, json!("invalid_user_id")));
    let r = get(h.addr, "/api/v1/x/dm/44196397/history").await;
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"], "account_required");
    assert_eq!(r.json()["message"], ACCOUNT_REQUIRED);
    let r = get(h.addr, "/api/v1/x/dm/44196397/history?account=someone_else").await;
    assert_eq!((r.status, r.json()["error"].clone()), (404, json!("account_not_found")));
    assert_eq!(get(h.addr, "/api/v1/x/dm/44196397/history?account=%40ACME").await.status, 200);
    let r = get(h.addr, "/api/v1/x/dm/999/history?account=acme").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json(), json!({ "messages": [], "has_next_page": false, "next_cursor": "" }));
    let r = get(h.addr, "/api/v1/nope").await;
    assert_eq!((r.status, r.json()["error"].clone()), (404, json!("not_found")));
    assert!(r.header("x-request-id").is_some());
    assert_eq!(h.sim.stats().by_route.get("GET (unmatched)"), Some(&1));
    h.shutdown().await;
}

#[tokio::test]
async fn wrong_or_missing_key_gets_401() {
    let h = spawn(SimConfig { api_key: Some("xq_secret".into()), ..SimConfig::default() }).await;
    let target = "/api/v1/x/dm/44196397/history?account=acme";
    let r = get(h.addr, target).await;
    assert_eq!(r.status, 401);
    assert_eq!(r.json()["error"], "unauthenticated");
    assert_eq!(r.header("www-authenticate"), Some("Bearer realm=\"xquik\""));
    assert_eq!(r.header("cache-control"), Some("no-store"));
    let wrong = send(h.addr, "GET", target, &[("x-api-key", "xq_wrong")], b"").await;
    assert_eq!(wrong.status, 401);
    for (name, value) in
        [("x-api-key", "xq_secret"), ("Xquik-Api-Key", "xq_secret"), ("Authorization", "Bearer xq_secret")]
    {
        let r = send(h.addr, "GET", target, &[(name, value)], b"").await;
        assert_eq!(r.status, 200, "{name}");
    }
    let s = h.sim.stats();
    assert_eq!(s.by_status.get(&401), Some(&2));
    assert_eq!(s.log.iter().filter(|l| !l.api_key_ok).count(), 2);
    assert_eq!(s.credits, s.messages_served);
    assert!(s.credits > 0);
    h.shutdown().await;
}

#[tokio::test]
async fn storm_and_rate_limit_answer_429_for_free() {
    let h = spawn(SimConfig::default()).await;
    h.sim.set_faults(Faults { storm: 3, retry_after_secs: 2, ..Faults::default() });
    for _ in 0..3 {
        let r = page(h.addr, "44196397", None).await;
        assert_eq!(r.status, 429);
        assert_eq!(r.header("retry-after"), Some("2"));
        assert_eq!(
            r.json(),
            json!({
                "error": "rate_limit_exceeded",
                "message": "Too many requests. Try again later.",
                "retryAfter": 2
            })
        );
    }
    assert_eq!(page(h.addr, "44196397", None).await.status, 200);
    let served_credits = h.sim.stats().credits;
    h.sim.set_faults(Faults { rate_limit: 0.5, ..Faults::default() });
    let mut limited = 0;
    for _ in 0..200 {
        let r = get(h.addr, "/api/v1/x/users/44196397").await;
        limited += (r.status == 429) as u64;
    }
    assert!((70..130).contains(&limited), "{limited}");
    let s = h.sim.stats();
    assert_eq!(s.credits - served_credits, 200 - limited);
    assert_eq!(s.by_status.get(&429), Some(&(3 + limited)));
    h.shutdown().await;
}

#[tokio::test]
async fn server_errors_alternate_502_and_503() {
    let h = spawn(SimConfig::default()).await;
    h.sim.set_faults(Faults { server_error: 1.0, ..Faults::default() });
    let a = page(h.addr, "44196397", None).await;
    let b = page(h.addr, "44196397", None).await;
    assert_eq!((a.status, b.status), (502, 503));
    assert_eq!(a.json()["error"], "x_api_unavailable");
    assert!(b.header("retry-after").is_some());
    assert_eq!(h.sim.stats().credits, 0);
    h.shutdown().await;
}

#[tokio::test]
async fn malformed_bodies_rotate_and_consume_nothing() {
    let spoiled = spawn(SimConfig::default()).await;
    spoiled.sim.set_faults(Faults { malformed: 1.0, ..Faults::default() });
    let a = page(spoiled.addr, "44196397", None).await;
    let b = page(spoiled.addr, "44196397", None).await;
    let c = page(spoiled.addr, "44196397", None).await;
    assert!([a.status, b.status, c.status].iter().all(|s| *s == 200));
    assert!(serde_json::from_slice::<Value>(&a.body).is_err());
    assert_eq!(b.json(), json!({ "data": [] }));
    assert!(c.header("content-type").is_some_and(|t| t.starts_with("text/html")));
    assert_eq!(spoiled.sim.stats().credits, 0);
    spoiled.sim.set_faults(Faults::default());
    let after = page(spoiled.addr, "44196397", None).await.json();

    let clean = spawn(SimConfig::default()).await;
    let fresh = page(clean.addr, "44196397", None).await.json();
    assert_eq!(after, fresh, "malformed answers advanced nothing");
    spoiled.shutdown().await;
    clean.shutdown().await;
}

#[tokio::test]
async fn dropped_responses_are_cut_short_on_the_wire() {
    let h = spawn(SimConfig::default()).await;
    h.sim.set_faults(Faults { drop: 1.0, ..Faults::default() });
    let r = page(h.addr, "44196397", None).await;
    assert_eq!(r.status, 200);
    assert!(!r.complete, "the client must see an incomplete body");
    assert!(!r.body.is_empty());
    assert!(serde_json::from_slice::<Value>(&r.body).is_err());
    assert_eq!(h.sim.stats().credits, 0);
    h.sim.set_faults(Faults::default());
    let r = page(h.addr, "44196397", None).await;
    assert!(r.complete && r.status == 200);
    h.shutdown().await;
}

#[tokio::test]
async fn forbidden_and_dm_not_allowed_peers() {
    let h = spawn(SimConfig::default()).await;
    h.sim.set_faults(Faults {
        forbidden_peers: vec!["44196397".into()],
        dm_not_allowed_peers: vec!["1234567890".into()],
        ..Faults::default()
    });
    let r = page(h.addr, "44196397", None).await;
    assert_eq!((r.status, r.json()["error"].clone()), (403, json!("dm_not_permitted")));
    let body = json!({ "account": "acme", "text": "hi" });
    // The send route words both as Xquik's send contract does: 422 `x_dm_not_allowed`.
    for (peer, key) in [("44196397", "k1"), ("1234567890", "k2")] {
        let r = post_json(h.addr, &format!("/api/v1/x/dm/{peer}"), Some(key), &body).await;
        assert_eq!(r.status, 422, "{peer}");
        let v = r.json();
        assert_eq!(v["error"], "x_dm_not_allowed");
        assert_eq!((&v["retryable"], &v["safeToRetry"], &v["success"]), (&json!(false), &json!(false), &json!(false)));
        assert_eq!((&v["charged"], &v["chargedCredits"]), (&json!(false), &json!("0")));
    }
    assert_eq!(h.sim.stats().sends, 0);
    assert!(h.sim.writes().is_empty());
    h.shutdown().await;
}

#[tokio::test]
async fn write_action_sends_replay_and_conflict() {
    let h = spawn(SimConfig::default()).await;
    let target = "/api/v1/x/dm/44196397";
    let body = json!({ "account": "acme", "text": "Hello \"there\" 👋" });
    let r = post_json(h.addr, target, None, &body).await;
    assert_eq!((r.status, r.json()["error"].clone()), (400, json!("missing_idempotency_key")));
    let r = post_json(h.addr, target, Some("has space"), &body).await;
    assert_eq!((r.status, r.json()["error"].clone()), (400, json!("invalid_idempotency_key")));

    let first = post_json(h.addr, target, Some("send-1"), &body).await;
    assert_eq!(first.status, 200);
    let rec = first.json();
    for (k, v) in [
        ("object", json!("x_write_action")),
        ("action", json!("send_dm")),
        ("status", json!("success")),
        ("terminal", json!(true)),
        ("retryable", json!(false)),
        ("safeToRetry", json!(false)),
        ("charged", json!(true)),
        ("chargedCredits", json!("10")),
        ("nextAction", Value::Null),
        ("sendDispatched", json!(true)),
        ("success", json!(true)),
        ("targetId", json!("44196397")),
    ] {
        assert_eq!(rec[k], v, "{k}");
    }
    assert_eq!(rec["id"], rec["writeActionId"]);
    assert_eq!(rec["result"]["type"], "direct_message");
    assert_eq!(rec["result"]["id"], rec["messageId"]);
    assert_eq!(rec["billing"]["plannedCredits"], "10");
    assert_eq!(rec["request"]["hash"].as_str().map(str::len), Some(64));
    assert_eq!(rec["account"]["username"], "acme");
    let status_url = rec["statusUrl"].as_str().expect("statusUrl").to_string();
    assert_eq!(first.header("location"), Some(status_url.as_str()));

    let again = post_json(h.addr, target, Some("send-1"), &body).await;
    assert_eq!(again.status, 200);
    assert_eq!(again.json(), rec);
    let other = json!({ "account": "acme", "text": "something else" });
    let r = post_json(h.addr, target, Some("send-1"), &other).await;
    assert_eq!((r.status, r.json()["error"].clone()), (409, json!("idempotency_conflict")));

    let s = h.sim.stats();
    assert_eq!((s.sends, s.credits), (1, 10));
    let status = get(h.addr, &status_url).await;
    assert_eq!((status.status, status.json()), (200, rec.clone()));

    // The sent message is now the newest in history, from the account.
    let newest = &h.sim.messages("44196397")[0];
    assert_eq!(Some(newest.id.as_str()), rec["messageId"].as_str());
    assert_eq!(newest.text.as_deref(), Some("Hello \"there\" 👋"));
    assert_eq!(newest.sender_id, Simulator::account_id("acme"));
    h.shutdown().await;
}

#[tokio::test]
async fn legacy_sends_and_input_validation() {
    let h = spawn(SimConfig { send_style: SendStyle::Legacy, ..SimConfig::default() }).await;
    let target = "/api/v1/x/dm/783214";
    let r = post_json(h.addr, target, None, &json!({ "account": "acme", "text": "hi" })).await;
    assert_eq!(r.status, 200);
    let v = r.json();
    assert_eq!(v.as_object().map(|o| o.len()), Some(2));
    assert_eq!(v["success"], true);
    let id = v["messageId"].as_str().expect("messageId").to_string();
    assert_eq!(h.sim.messages("783214")[0].id, id);
    for bad in [
        json!({ "account": "acme" }),
        json!({ "account": "acme", "text": "" }),
        json!({ "account": "acme", "text": "x", "media_ids": [] }),
        json!({ "account": "acme", "text": "x", "media_ids": ["1", "2"] }),
        json!({ "account": "acme", "text": "x", "reply_to_message_id": "5" }),
        json!({ "text": "x" }),
        json!(["not", "an", "object"]),
    ] {
        let r = post_json(h.addr, target, None, &bad).await;
        assert_eq!((r.status, r.json()["error"].clone()), (400, json!("invalid_input")), "{bad}");
    }
    let r = send(h.addr, "POST", target, &[], b"{oops").await;
    assert_eq!(r.status, 400);
    let r = post_json(h.addr, "/api/v1/x/dm/abc", None, &json!({ "account": "a", "text": "x" })).await;
    assert_eq!(r.status, 400);
    assert_eq!(h.sim.stats().sends, 1);
    h.shutdown().await;
}

#[tokio::test]
async fn user_lookup() {
    let h = spawn(SimConfig { account: Some("acme".into()), ..SimConfig::default() }).await;
    let r = get(h.addr, "/api/v1/x/users/1234567890").await;
    assert_eq!(r.json(), json!({ "id": "1234567890", "username": "dana_ops", "name": "Dana Ops", "canDm": true }));
    let r = get(h.addr, "/api/v1/x/users/Acme_Customer").await;
    assert_eq!(r.json()["id"], "44196397");
    assert!(r.json().get("canDm").is_none());
    let r = get(h.addr, "/api/v1/x/users/5550001").await;
    assert_eq!((r.status, r.json()["username"].clone()), (200, json!("user5550001")));
    let r = get(h.addr, "/api/v1/x/users/nobody_here").await;
    assert_eq!((r.status, r.json()["error"].clone()), (404, json!("user_not_found")));
    let r = get(h.addr, "/api/v1/x/users/acme").await;
    assert_eq!(r.json()["id"], json!(Simulator::account_id("acme")));
    let r = get(h.addr, "/api/v1/x/users/%40acme").await;
    assert_eq!(r.status, 400);
    assert_eq!(h.sim.stats().credits, 4);
    h.shutdown().await;
}

#[tokio::test]
async fn media_uploads_by_url_and_multipart() {
    let h = spawn(SimConfig::default()).await;
    let r = post_json(
        h.addr,
        "/api/v1/x/media",
        Some("m1"),
        &json!({ "account": "acme", "url": "https://example.com/cat.png" }),
    )
    .await;
    assert_eq!(r.status, 200);
    let v = r.json();
    let media_id = v["mediaId"].as_str().expect("mediaId").to_string();
    assert!(media_id.bytes().all(|b| b.is_ascii_digit()));
    assert_eq!(v["mediaUrl"], json!(format!("https://media.xquik.com/uploads/{media_id}.png")));
    assert_eq!((&v["success"], &v["action"]), (&json!(true), &json!("upload_media")));
    let again = post_json(
        h.addr,
        "/api/v1/x/media",
        Some("m1"),
        &json!({ "account": "acme", "url": "https://example.com/cat.png" }),
    )
    .await;
    assert_eq!(again.json(), v);
    let r = post_json(
        h.addr,
        "/api/v1/x/media",
        Some("m2"),
        &json!({ "account": "acme", "url": "http://example.com/cat.png" }),
    )
    .await;
    assert_eq!(r.status, 400);

    let boundary = "XBOUNDARYx";
    let mut form = Vec::new();
    form.extend_from_slice(
        format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"account\"\r\n\r\nacme\r\n\
             --{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"pic\"\r\n\
             Content-Type: application/octet-stream\r\n\r\n"
        )
        .as_bytes(),
    );
    form.extend_from_slice(b"GIF89a-not-really");
    form.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    let ct = format!("multipart/form-data; boundary={boundary}");
    let r = send(h.addr, "POST", "/api/v1/x/media", &[("Content-Type", &ct), ("Idempotency-Key", "m3")], &form).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let gif = r.json();
    assert!(gif["mediaUrl"].as_str().is_some_and(|u| u.ends_with(".gif")));

    // A DM attaching the upload shows its URL in history.
    let sent = post_json(
        h.addr,
        "/api/v1/x/dm/783214",
        Some("s1"),
        &json!({ "account": "acme", "text": "see pic", "media_ids": [gif["mediaId"]] }),
    )
    .await;
    assert_eq!(sent.status, 200);
    assert_eq!(h.sim.messages("783214")[0].media_url.as_deref(), gif["mediaUrl"].as_str());
    let s = h.sim.stats();
    assert_eq!((s.uploads, s.sends, s.credits), (2, 1, 30));
    h.shutdown().await;
}

#[tokio::test]
async fn same_seed_same_answers() {
    async fn run() -> Vec<(u16, Vec<u8>, Option<String>)> {
        let h = spawn(SimConfig {
            growth: Growth { per_request: 0.5, max_new: 10 },
            faults: Faults { rate_limit: 0.2, ..Faults::default() },
            ..SimConfig::default()
        })
        .await;
        let mut out = Vec::new();
        let mut cursor: Option<String> = None;
        for _ in 0..20 {
            let r = page(h.addr, "2244994945", cursor.as_deref()).await;
            if r.status == 200 {
                cursor = r.json()["next_cursor"].as_str().map(String::from);
            }
            let request_id = r.header("x-request-id").map(String::from);
            out.push((r.status, r.body, request_id));
        }
        h.shutdown().await;
        out
    }
    assert_eq!(run().await, run().await);
}

#[tokio::test]
async fn slow_responses_take_their_time() {
    let h = spawn(SimConfig::default()).await;
    h.sim.set_faults(Faults { slow_ms: 150, ..Faults::default() });
    let started = std::time::Instant::now();
    assert_eq!(page(h.addr, "44196397", None).await.status, 200);
    assert!(started.elapsed() >= std::time::Duration::from_millis(150));
    h.shutdown().await;
}

#[tokio::test]
async fn shutdown_stops_serving() {
    let h = spawn(SimConfig::default()).await;
    let addr = h.addr;
    assert!(h.base_url().ends_with("/api/v1"));
    h.shutdown().await;
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
    let _ = testkit::encode("");
}

#[tokio::test]
async fn wrong_method_gets_a_json_405() {
    let h = spawn(SimConfig::default()).await;
    let r = get(h.addr, "/api/v1/x/dm/44196397").await;
    assert_eq!((r.status, r.json()["error"].clone()), (405, json!("method_not_allowed")));
    assert_eq!(h.sim.stats().by_route.get("GET (unmatched)"), Some(&1));
    h.shutdown().await;
}

#[tokio::test]
async fn unknown_peers_get_generated_conversations_when_sized() {
    let h = spawn(SimConfig { unknown_peer_size: Some(50), page_size: (10, 10), ..SimConfig::default() }).await;
    let pages = walk(h.addr, "31337").await;
    assert_eq!(pages.len(), 5);
    assert!(pages.iter().all(|p| p.len() == 10));
    assert_eq!(h.sim.messages("31337").len(), 50);
    h.shutdown().await;
}

#[tokio::test]
async fn serve_embeds_with_a_caller_owned_listener_and_shutdown() {
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let sim = Simulator::new(SimConfig::default());
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(sim.clone().serve(listener, async move {
        let _ = rx.await;
    }));
    let r = get(addr, "/api/v1/x/users/dana_ops").await;
    assert_eq!(r.status, 200);
    assert_eq!(sim.stats().requests, 1);
    let _ = tx.send(());
    let served = task.await.expect("join");
    assert!(served.is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_readers_and_writers_do_not_deadlock() {
    let h = spawn(SimConfig { growth: Growth { per_request: 0.3, max_new: 0 }, ..SimConfig::default() }).await;
    let addr = h.addr;
    let mut tasks = tokio::task::JoinSet::new();
    for k in 0..60 {
        tasks.spawn(async move {
            if k % 3 == 0 {
                let key = format!("key-{k}");
                let body = json!({ "account": "acme", "text": format!("msg {k}") });
                post_json(addr, "/api/v1/x/dm/44196397", Some(&key), &body).await.status
            } else {
                page(addr, "44196397", None).await.status
            }
        });
    }
    while let Some(status) = tasks.join_next().await {
        assert_eq!(status.expect("task"), 200);
    }
    let s = h.sim.stats();
    assert_eq!((s.requests, s.sends), (60, 20));
    h.shutdown().await;
}

#[tokio::test]
async fn pending_sends_are_confirmed_after_polls_and_replay_the_same_action() {
    let h = spawn(SimConfig::default()).await;
    h.sim.set_faults(Faults {
        pending_peers: vec!["44196397".into()],
        pending_polls: 2,
        pending_retry_after_secs: 0,
        ..Faults::default()
    });
    let target = "/api/v1/x/dm/44196397";
    let body = json!({ "account": "acme", "text": "wait for it" });
    let first = post_json(h.addr, target, Some("p-1"), &body).await;
    assert_eq!(first.status, 202, "{}", String::from_utf8_lossy(&first.body));
    assert_eq!(first.header("retry-after"), Some("0"));
    let rec = first.json();
    assert_eq!(rec["status"], "pending_confirmation");
    assert_eq!(rec["terminal"], false);
    assert_eq!(rec["result"], Value::Null);
    assert!(rec.get("messageId").is_none());
    assert_eq!(rec["nextAction"]["type"], "poll");
    let location = first.header("location").expect("Location").to_string();
    assert_eq!(Some(location.as_str()), rec["statusUrl"].as_str());
    // The message was dispatched: it is in the world already.
    let newest = h.sim.messages("44196397")[0].clone();
    assert_eq!(newest.text.as_deref(), Some("wait for it"));

    // A replay while pending is the same pending action, and does not send again.
    let again = post_json(h.addr, target, Some("p-1"), &body).await;
    assert_eq!((again.status, again.json()["id"].clone()), (202, rec["id"].clone()));

    let poll = get(h.addr, &location).await;
    assert_eq!((poll.status, poll.json()["status"].clone()), (202, json!("pending_confirmation")));
    let poll = get(h.addr, &location).await;
    assert_eq!(poll.status, 200);
    let done = poll.json();
    assert_eq!((done["status"].clone(), done["terminal"].clone()), (json!("success"), json!(true)));
    assert_eq!(done["messageId"].as_str(), Some(newest.id.as_str()));
    assert_eq!(done["result"]["type"], "direct_message");
    assert_eq!(done["id"], rec["id"]);

    // Once confirmed, a replay answers 200 with the completed action.
    let replay = post_json(h.addr, target, Some("p-1"), &body).await;
    assert_eq!((replay.status, replay.json()), (200, done));
    assert_eq!(h.sim.stats().sends, 1);

    // Other peers are not pending.
    let r = post_json(h.addr, "/api/v1/x/dm/783214", Some("p-2"), &body).await;
    assert_eq!(r.status, 200);
    h.shutdown().await;
}
