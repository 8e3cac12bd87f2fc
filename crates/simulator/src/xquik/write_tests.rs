//! Xquik writes that fail the ways Xquik's do (SPEC 8.8), over the wire: each write fault's status,
//! headers and body, whether the write really happened (ground truth and the write log), and what
//! a replay with the same `Idempotency-Key` returns.

use std::net::SocketAddr;

use super::super::testkit::{get, send, try_send, Raw};
use super::super::{
    Faults, SendStyle, SimConfig, SimHandle, SimProvider, SimWriteAction, Simulator, WriteFault, WriteFaultKind,
};
use super::*;

const PEER: &str = "44196397";
const SEND_TARGET: &str = "/api/v1/x/dm/44196397";

async fn spawn(cfg: SimConfig) -> SimHandle {
    Simulator::spawn(cfg).await.expect("spawn")
}

/// Queues write faults, leaving the other faults alone.
fn queue(h: &SimHandle, faults: Vec<WriteFault>) {
    h.sim.set_faults(Faults { write_faults: faults, ..Faults::default() });
}

async fn post(addr: SocketAddr, target: &str, key: &str, body: &Value, extra: &[(&str, &str)]) -> Option<Raw> {
    let body = serde_json::to_vec(body).expect("json");
    let mut headers = vec![("Content-Type", "application/json"), ("Idempotency-Key", key)];
    headers.extend_from_slice(extra);
    try_send(addr, "POST", target, &headers, &body).await
}

async fn send_text(addr: SocketAddr, key: &str, text: &str) -> Option<Raw> {
    post(addr, SEND_TARGET, key, &json!({ "account": "acme", "text": text }), &[]).await
}

/// How many messages with this text the conversation holds.
fn copies(h: &SimHandle, text: &str) -> usize {
    h.sim.messages(PEER).iter().filter(|m| m.text.as_deref() == Some(text)).count()
}

fn body_text(r: &Raw) -> String {
    String::from_utf8_lossy(&r.body).into_owned()
}

#[tokio::test]
async fn a_dropped_answer_still_sends_once_and_the_key_replays_it() {
    let h = spawn(SimConfig::default()).await;
    queue(&h, vec![WriteFault::new(WriteFaultKind::Drop).action(SimWriteAction::Send)]);
    assert!(send_text(h.addr, "k-drop", "lost answer").await.is_none(), "no byte of an answer comes back");
    assert_eq!(copies(&h, "lost answer"), 1, "the message was sent");
    let writes = h.sim.writes();
    assert_eq!(writes.len(), 1);
    let w = &writes[0];
    assert_eq!((w.provider, w.action, w.route.as_str()), (SimProvider::Xquik, SimWriteAction::Send, SEND));
    assert_eq!((w.target.as_deref(), w.account.as_deref()), (Some(PEER), Some("acme")));
    assert_eq!((w.idempotency_key.as_deref(), w.text.as_deref()), (Some("k-drop"), Some("lost answer")));
    assert_eq!(w.fault, Some(WriteFaultKind::Drop));
    assert_eq!(w.result_id.as_deref(), Some(h.sim.messages(PEER)[0].id.as_str()));

    // Xquik's contract: the same key returns the original action, and sends nothing again.
    let replay = send_text(h.addr, "k-drop", "lost answer").await.expect("answer");
    assert_eq!(replay.status, 200);
    let rec = replay.json();
    assert_eq!((rec["status"].clone(), rec["messageId"].clone()), (json!("success"), json!(w.result_id)));
    assert_eq!(copies(&h, "lost answer"), 1);
    // The fault was used up: the next send is answered.
    assert_eq!(send_text(h.addr, "k-next", "answered").await.map(|r| r.status), Some(200));
    let s = h.sim.stats();
    assert_eq!((s.sends, h.sim.writes().len()), (2, 2));
    assert_eq!(s.by_status.get(&0), Some(&1), "the lost answer is booked as status 0");
    assert_eq!(s.write_faults.get("drop"), Some(&1));
    assert_eq!(s.by_route.get(SEND), Some(&3));
    h.shutdown().await;
}

#[tokio::test]
async fn spoiled_answers_follow_a_performed_send() {
    let h = spawn(SimConfig::default()).await;
    let send_fault = |k: WriteFaultKind| WriteFault::new(k).action(SimWriteAction::Send);
    queue(
        &h,
        vec![
            send_fault(WriteFaultKind::Cut),
            send_fault(WriteFaultKind::Garble),
            send_fault(WriteFaultKind::NoData),
            send_fault(WriteFaultKind::Slow).delay_secs(1),
        ],
    );
    let r = send_text(h.addr, "k1", "cut short").await.expect("headers arrive");
    assert_eq!(r.status, 200);
    assert!(!r.complete && serde_json::from_slice::<Value>(&r.body).is_err());

    let r = send_text(h.addr, "k2", "garbled").await.expect("answer");
    assert_eq!(r.status, 200);
    assert!(r.complete && serde_json::from_slice::<Value>(&r.body).is_err(), "{}", body_text(&r));

    let r = send_text(h.addr, "k3", "no data").await.expect("answer");
    assert_eq!((r.status, r.json()), (200, json!({ "success": true })));

    let started = std::time::Instant::now();
    let r = send_text(h.addr, "k4", "slow").await.expect("answer");
    assert!(started.elapsed() >= std::time::Duration::from_millis(900), "the answer waited");
    assert_eq!((r.status, r.json()["status"].clone()), (200, json!("success")));

    for text in ["cut short", "garbled", "no data", "slow"] {
        assert_eq!(copies(&h, text), 1, "{text} was sent once");
    }
    let kinds: Vec<_> = h.sim.writes().iter().map(|w| w.fault).collect();
    use WriteFaultKind::*;
    assert_eq!(kinds, [Some(Cut), Some(Garble), Some(NoData), Some(Slow)]);
    let s = h.sim.stats();
    assert_eq!((s.sends, s.credits), (4, 40), "the sends succeeded, so they are charged");
    h.shutdown().await;
}

#[tokio::test]
async fn an_ambiguous_500_has_sent_and_its_action_says_verify() {
    let h = spawn(SimConfig::default()).await;
    queue(&h, vec![WriteFault::new(WriteFaultKind::ServerError)]);
    let r = send_text(h.addr, "k-amb", "maybe sent").await.expect("answer");
    assert_eq!(r.status, 500);
    let v = r.json();
    assert_eq!(v["error"], "x_write_ambiguous");
    for (k, want) in [
        ("charged", json!(false)),
        ("chargedCredits", json!("0")),
        ("retryable", json!(false)),
        ("safeToRetry", json!(false)),
        ("success", json!(false)),
        ("nextAction", json!({ "type": "verify_result" })),
    ] {
        assert_eq!(v[k], want, "{k}");
    }
    let status_url = v["statusUrl"].as_str().expect("statusUrl").to_string();
    assert_eq!(r.header("location"), Some(status_url.as_str()));
    assert_eq!(copies(&h, "maybe sent"), 1, "it was sent");

    let action = get(h.addr, &status_url).await.json();
    assert_eq!((action["status"].clone(), action["terminal"].clone()), (json!("failed"), json!(true)));
    assert_eq!((action["error"].clone(), action["sendDispatched"].clone()), (json!("x_write_ambiguous"), json!(true)));
    assert_eq!((action["result"].clone(), action.get("messageId")), (Value::Null, None));
    assert_eq!(action["id"], v["writeActionId"]);
    // The same key returns that action; nothing is sent again.
    let replay = send_text(h.addr, "k-amb", "maybe sent").await.expect("answer");
    assert_eq!((replay.status, replay.json()), (200, action));
    assert_eq!(copies(&h, "maybe sent"), 1);
    let s = h.sim.stats();
    assert_eq!((s.sends, s.credits), (1, 0), "a failed action is not charged");
    h.shutdown().await;
}

/// (kind, status, error code, retryable, `Retry-After`)
const REFUSALS: [(WriteFaultKind, u16, &str, bool, Option<&str>); 9] = [
    (WriteFaultKind::XRateLimited, 429, "x_rate_limited", true, Some("7")),
    (WriteFaultKind::XDailyLimit, 429, "x_daily_limit", true, Some("7")),
    (WriteFaultKind::NoSubscription, 402, "no_subscription", false, None),
    (WriteFaultKind::InsufficientCredits, 402, "insufficient_credits", false, None),
    (WriteFaultKind::AccountRestricted, 403, "account_restricted", false, None),
    (WriteFaultKind::AccountNeedsReauth, 403, "account_needs_reauth", false, None),
    (WriteFaultKind::DependencyError, 502, "x_api_unavailable", true, None),
    (WriteFaultKind::WriteTrackingUnavailable, 503, "write_tracking_unavailable", true, Some("7")),
    (WriteFaultKind::ServerErrorNotSent, 500, "x_write_failed", true, None),
];

#[tokio::test]
async fn refusals_send_nothing_and_carry_the_write_error_fields() {
    let h = spawn(SimConfig::default()).await;
    for (i, (kind, status, code, retryable, retry_after)) in REFUSALS.into_iter().enumerate() {
        queue(&h, vec![WriteFault::new(kind).retry_after_secs(7)]);
        let key = format!("k-refused-{i}");
        let text = format!("refused {i}");
        let r = send_text(h.addr, &key, &text).await.expect("answer");
        assert_eq!(r.status, status, "{kind:?}: {}", body_text(&r));
        assert_eq!(r.header("retry-after"), retry_after, "{kind:?}");
        let v = r.json();
        for (k, want) in [
            ("error", json!(code)),
            ("charged", json!(false)),
            ("chargedCredits", json!("0")),
            ("retryable", json!(retryable)),
            ("safeToRetry", json!(true)),
            ("success", json!(false)),
        ] {
            assert_eq!(v[k], want, "{kind:?} {k}");
        }
        assert!(v["message"].as_str().is_some_and(|m| !m.is_empty()), "{kind:?}");
        assert!(v.get("nextAction").is_some(), "{kind:?}");
        if status == 429 {
            assert_eq!(v["retryAfter"], 7, "{kind:?}");
        }
        assert_eq!(copies(&h, &text), 0, "{kind:?} sent nothing");

        // Only a durable action is replayed: after any other refusal the same key sends.
        let again = send_text(h.addr, &key, &text).await.expect("answer");
        if kind == WriteFaultKind::ServerErrorNotSent {
            let rec = again.json();
            assert_eq!(again.status, 200);
            assert_eq!((rec["status"].clone(), rec["id"].clone()), (json!("failed"), v["writeActionId"].clone()));
            assert_eq!(rec["safeToRetry"], true);
            assert_eq!(rec["nextAction"], json!({ "type": "retry", "requiresNewIdempotencyKey": true }));
            assert_eq!(copies(&h, &text), 0, "the failed action is returned, not re-sent");
        } else {
            assert_eq!((again.status, again.json()["status"].clone()), (200, json!("success")), "{kind:?}");
            assert_eq!(copies(&h, &text), 1, "{kind:?}");
        }
    }
    assert_eq!(h.sim.writes().len(), REFUSALS.len() - 1, "only the retries were performed");
    assert!(h.sim.writes().iter().all(|w| w.fault.is_none()));
    h.shutdown().await;
}

#[tokio::test]
async fn xquik_429_from_the_fault_is_the_rate_limit_body() {
    let h = spawn(SimConfig::default()).await;
    queue(&h, vec![WriteFault::new(WriteFaultKind::RateLimited).retry_after_secs(3)]);
    let r = send_text(h.addr, "k", "throttled").await.expect("answer");
    assert_eq!((r.status, r.header("retry-after")), (429, Some("3")));
    assert_eq!(
        r.json(),
        json!({ "error": "rate_limit_exceeded", "message": "Too many requests. Try again later.", "retryAfter": 3 })
    );
    assert_eq!(copies(&h, "throttled"), 0);
    assert_eq!(send_text(h.addr, "k", "throttled").await.map(|r| r.status), Some(200), "the key is still free");
    h.shutdown().await;
}

#[tokio::test]
async fn dependency_errors_are_424_with_a_structured_error_under_the_contract() {
    let h = spawn(SimConfig::default()).await;
    queue(&h, vec![WriteFault::new(WriteFaultKind::DependencyError)]);
    let body = json!({ "account": "acme", "text": "via contract" });
    let r = post(h.addr, SEND_TARGET, "k", &body, &[("xquik-api-contract", "2026-04-29")]).await.expect("answer");
    assert_eq!(r.status, 424);
    let v = r.json();
    assert_eq!(
        v["error"],
        json!({ "message": "X API is temporarily unavailable. Try again later.", "type": "dependency_error", "code": "x_api_unavailable" })
    );
    assert_eq!((v["safeToRetry"].clone(), v["charged"].clone()), (json!(true), json!(false)));
    assert_eq!(copies(&h, "via contract"), 0);
    // The injected 502 of a read route follows the contract too.
    h.sim.set_faults(Faults { server_error: 1.0, ..Faults::default() });
    let r = send(h.addr, "GET", "/api/v1/x/users/783214", &[("xquik-api-contract", "2026-04-29")], b"").await;
    assert_eq!((r.status, r.json()["error"]["type"].clone()), (424, json!("dependency_error")));
    h.shutdown().await;
}

#[tokio::test]
async fn injected_5xx_on_write_routes_have_the_write_shapes() {
    let h = spawn(SimConfig::default()).await;
    h.sim.set_faults(Faults { server_error: 1.0, retry_after_secs: 4, ..Faults::default() });
    let a = send_text(h.addr, "k1", "never").await.expect("answer");
    let b = send_text(h.addr, "k2", "never").await.expect("answer");
    assert_eq!((a.status, a.json()["error"].clone()), (502, json!("x_api_unavailable")));
    assert_eq!((a.json()["safeToRetry"].clone(), a.json()["retryable"].clone()), (json!(true), json!(true)));
    assert_eq!(b.status, 503);
    assert_eq!(b.header("retry-after"), Some("4"));
    assert_eq!(
        b.json(),
        json!({
            "error": "write_tracking_unavailable",
            "message": "Write tracking unavailable. Try again.",
            "charged": false,
            "chargedCredits": "0",
            "retryable": true,
            "safeToRetry": true,
            "success": false,
            "nextAction": { "type": "retry" },
        })
    );
    assert_eq!(copies(&h, "never"), 0);
    h.shutdown().await;
}

#[tokio::test]
async fn failed_and_expired_actions_as_final_answers() {
    let h = spawn(SimConfig::default()).await;
    queue(
        &h,
        vec![
            WriteFault::new(WriteFaultKind::FailedSafe),
            WriteFault::new(WriteFaultKind::FailedUnsafe),
            WriteFault::new(WriteFaultKind::Expired),
        ],
    );
    // failed, safeToRetry: nothing dispatched; the same key gets the same failure back.
    let r = send_text(h.addr, "k-safe", "safe failure").await.expect("answer");
    assert_eq!(r.status, 200);
    let safe = r.json();
    for (k, want) in [
        ("object", json!("x_write_action")),
        ("status", json!("failed")),
        ("terminal", json!(true)),
        ("success", json!(false)),
        ("safeToRetry", json!(true)),
        ("retryable", json!(true)),
        ("sendDispatched", json!(false)),
        ("charged", json!(false)),
        ("result", Value::Null),
        ("error", json!("x_write_failed")),
        ("nextAction", json!({ "type": "retry", "requiresNewIdempotencyKey": true })),
    ] {
        assert_eq!(safe[k], want, "{k}");
    }
    assert_eq!(r.header("location"), safe["statusUrl"].as_str());
    assert_eq!(copies(&h, "safe failure"), 0);
    let replay = send_text(h.addr, "k-safe", "safe failure").await.expect("answer");
    assert_eq!((replay.status, replay.json()), (200, safe.clone()));
    let other = send_text(h.addr, "k-safe", "a different text").await.expect("answer");
    assert_eq!((other.status, other.json()["error"].clone()), (409, json!("idempotency_conflict")));
    assert_eq!(copies(&h, "safe failure"), 0);

    // failed, not safe to retry: it was dispatched, and it is in the conversation.
    let unsafe_ = send_text(h.addr, "k-unsafe", "unsafe failure").await.expect("answer").json();
    assert_eq!((unsafe_["status"].clone(), unsafe_["error"].clone()), (json!("failed"), json!("x_write_ambiguous")));
    assert_eq!((unsafe_["safeToRetry"].clone(), unsafe_["sendDispatched"].clone()), (json!(false), json!(true)));
    assert_eq!(unsafe_["nextAction"], json!({ "type": "verify_result" }));
    assert_eq!(copies(&h, "unsafe failure"), 1);

    let expired = send_text(h.addr, "k-exp", "expired one").await.expect("answer").json();
    assert_eq!((expired["status"].clone(), expired["terminal"].clone()), (json!("expired"), json!(true)));
    assert_eq!((expired["safeToRetry"].clone(), expired["success"].clone()), (json!(false), json!(false)));
    assert!(expired.get("messageId").is_none());
    assert_eq!(copies(&h, "expired one"), 1);

    // A new key is a new write.
    let fresh = send_text(h.addr, "k-safe-2", "safe failure").await.expect("answer").json();
    assert_eq!(fresh["status"], "success");
    assert_eq!(copies(&h, "safe failure"), 1);
    let s = h.sim.stats();
    assert_eq!((s.sends, s.credits), (3, 10), "failed and expired actions are not charged");
    h.shutdown().await;
}

#[tokio::test]
async fn failed_and_expired_actions_after_polling() {
    let h = spawn(SimConfig::default()).await;
    queue(
        &h,
        vec![
            WriteFault::new(WriteFaultKind::Expired).polls(2).retry_after_secs(0),
            WriteFault::new(WriteFaultKind::FailedSafe).polls(1).retry_after_secs(0),
        ],
    );
    let first = send_text(h.addr, "k-exp", "expires later").await.expect("answer");
    assert_eq!((first.status, first.header("retry-after")), (202, Some("0")));
    let pending = first.json();
    assert_eq!((pending["status"].clone(), pending["terminal"].clone()), (json!("pending_confirmation"), json!(false)));
    assert_eq!(pending["nextAction"]["type"], "poll");
    let location = first.header("location").expect("Location").to_string();
    assert_eq!(copies(&h, "expires later"), 1, "dispatched before it expired");
    // A replay while pending is the same pending action.
    let again = send_text(h.addr, "k-exp", "expires later").await.expect("answer");
    assert_eq!((again.status, again.json()["id"].clone()), (202, pending["id"].clone()));
    assert_eq!(get(h.addr, &location).await.status, 202);
    let done = get(h.addr, &location).await;
    assert_eq!((done.status, done.json()["status"].clone()), (200, json!("expired")));
    assert_eq!(send_text(h.addr, "k-exp", "expires later").await.map(|r| r.json()), Some(done.json()));

    let first = send_text(h.addr, "k-fail", "fails later").await.expect("answer");
    assert_eq!(first.status, 202);
    let pending = first.json();
    assert_eq!((pending["status"].clone(), pending["sendDispatched"].clone()), (json!("accepted"), json!(false)));
    let location = first.header("location").expect("Location").to_string();
    let done = get(h.addr, &location).await;
    assert_eq!((done.status, done.json()["status"].clone()), (200, json!("failed")));
    assert_eq!(done.json()["safeToRetry"], true);
    assert_eq!(copies(&h, "fails later"), 0);
    h.shutdown().await;
}

#[tokio::test]
async fn faults_match_by_peer_and_action_and_count_down() {
    let h = spawn(SimConfig::default()).await;
    queue(&h, vec![WriteFault::new(WriteFaultKind::NoData).action(SimWriteAction::Send).peer(PEER).times(2)]);
    let to = |peer: &str| format!("/api/v1/x/dm/{peer}");
    let msg = json!({ "account": "acme", "text": "hello" });
    let other = post(h.addr, &to("783214"), "a", &msg, &[]).await.expect("answer");
    assert_eq!(other.json()["status"], "success", "another peer");
    let upload = post(h.addr, "/api/v1/x/media", "u", &json!({ "account": "acme", "url": "https://e.com/a.png" }), &[])
        .await
        .expect("answer");
    assert_eq!(upload.json()["status"], "success", "an upload");
    assert_eq!(h.sim.faults().write_faults[0].times, 2);
    for key in ["b", "c"] {
        let r = post(h.addr, &to(PEER), key, &msg, &[]).await.expect("answer");
        assert_eq!(r.json(), json!({ "success": true }));
    }
    assert!(h.sim.faults().write_faults.is_empty(), "used up");
    let r = post(h.addr, &to(PEER), "d", &msg, &[]).await.expect("answer");
    assert_eq!(r.json()["status"], "success");
    h.shutdown().await;
}

#[tokio::test]
async fn a_dropped_upload_is_stored_and_usable() {
    let h = spawn(SimConfig::default()).await;
    queue(&h, vec![WriteFault::new(WriteFaultKind::Drop).action(SimWriteAction::Upload)]);
    let body = json!({ "account": "acme", "url": "https://example.com/cat.png" });
    assert!(post(h.addr, "/api/v1/x/media", "m1", &body, &[]).await.is_none());
    let w = h.sim.writes().pop().expect("the upload was performed");
    assert_eq!((w.action, w.route.as_str(), w.fault), (SimWriteAction::Upload, MEDIA, Some(WriteFaultKind::Drop)));
    let media_id = w.result_id.expect("media id");
    // The replay tells the client the id it never heard.
    let replay = post(h.addr, "/api/v1/x/media", "m1", &body, &[]).await.expect("answer").json();
    assert_eq!(replay["mediaId"].as_str(), Some(media_id.as_str()));
    let sent = json!({ "account": "acme", "text": "with the lost upload", "media_ids": [media_id] });
    assert_eq!(post(h.addr, SEND_TARGET, "s1", &sent, &[]).await.map(|r| r.status), Some(200));
    assert!(h.sim.messages(PEER)[0].media_url.as_deref().is_some_and(|u| u.contains(&media_id)));
    assert_eq!(h.sim.stats().uploads, 1);
    h.shutdown().await;
}

#[tokio::test]
async fn the_legacy_contract_words_failures_as_errors() {
    let h = spawn(SimConfig { send_style: SendStyle::Legacy, ..SimConfig::default() }).await;
    queue(
        &h,
        vec![
            WriteFault::new(WriteFaultKind::FailedSafe),
            WriteFault::new(WriteFaultKind::FailedUnsafe),
            WriteFault::new(WriteFaultKind::NoData),
        ],
    );
    let msg = |t: &str| json!({ "account": "acme", "text": t });
    let r = send(h.addr, "POST", SEND_TARGET, &[], &serde_json::to_vec(&msg("one")).unwrap()).await;
    assert_eq!((r.status, r.json()["error"].clone()), (500, json!("x_write_failed")));
    assert_eq!(copies(&h, "one"), 0);
    let r = send(h.addr, "POST", SEND_TARGET, &[], &serde_json::to_vec(&msg("two")).unwrap()).await;
    assert_eq!((r.status, r.json()["error"].clone()), (500, json!("x_write_ambiguous")));
    assert_eq!(copies(&h, "two"), 1);
    let r = send(h.addr, "POST", SEND_TARGET, &[], &serde_json::to_vec(&msg("three")).unwrap()).await;
    assert_eq!((r.status, r.json()), (200, json!({ "success": true })));
    assert_eq!(copies(&h, "three"), 1);
    h.shutdown().await;
}

#[tokio::test]
async fn write_faults_and_writes_through_the_admin_api() {
    let h = spawn(SimConfig::default()).await;
    let faults = br#"{"write_faults":[{"kind":"drop","provider":"xquik","action":"send","peer":"44196397"},
        {"kind":"x_daily_limit","retry_after_secs":86400,"times":0}]}"#;
    let r = send(h.addr, "PUT", "/_sim/faults", &[("Content-Type", "application/json")], faults).await;
    assert_eq!(r.status, 204, "{}", body_text(&r));
    assert!(send_text(h.addr, "k1", "dropped").await.is_none());
    let r = send_text(h.addr, "k2", "limited").await.expect("answer");
    assert_eq!((r.status, r.header("retry-after")), (429, Some("86400")));
    let left: Faults = serde_json::from_slice(&get(h.addr, "/_sim/faults").await.body).expect("faults");
    assert_eq!(left.write_faults, vec![WriteFault::new(WriteFaultKind::XDailyLimit).retry_after_secs(86400).times(0)]);
    let writes: Vec<super::super::SimWrite> =
        serde_json::from_slice(&get(h.addr, "/_sim/writes").await.body).expect("writes");
    assert_eq!(writes.len(), 1);
    assert_eq!((writes[0].seq, writes[0].text.as_deref()), (1, Some("dropped")));
    let raw = get(h.addr, "/_sim/writes").await.json();
    assert_eq!(raw[0]["provider"], "xquik");
    assert_eq!(raw[0]["fault"], "drop");
    let r = send(h.addr, "PUT", "/_sim/faults", &[], br#"{"write_faults":[{"kind":"sideways"}]}"#).await;
    assert_eq!(r.status, 400);
    h.shutdown().await;
}

#[tokio::test]
async fn extreme_fault_values_do_not_panic() {
    let h = spawn(SimConfig::default()).await;
    let max = u64::MAX;
    queue(
        &h,
        vec![
            WriteFault::new(WriteFaultKind::Expired).polls(1).retry_after_secs(max),
            WriteFault::new(WriteFaultKind::XDailyLimit).retry_after_secs(max),
            WriteFault::new(WriteFaultKind::RateLimited).retry_after_secs(max).provider(SimProvider::XApiV2),
        ],
    );
    let r = send_text(h.addr, "k1", "one").await.expect("answer");
    assert_eq!((r.status, r.header("retry-after")), (202, Some(max.to_string().as_str())));
    let r = send_text(h.addr, "k2", "two").await.expect("answer");
    assert_eq!(r.status, 429);
    let x = send(
        h.addr,
        "POST",
        "/2/dm_conversations/with/783214/messages",
        &[("Content-Type", "application/json")],
        br#"{"text":"three"}"#,
    )
    .await;
    assert_eq!(x.status, 429);
    h.shutdown().await;
}
