//! X API v2 writes that fail the ways X's do (SPEC 8.8), and the problem bodies X words refusals
//! in, over the wire: status, headers, body, and whether the write really happened.

use serde_json::{json, Value};

use super::super::testkit::{send, try_send, Raw};
use super::super::{
    Faults, SimConfig, SimConversation, SimGroup, SimHandle, SimProvider, SimWriteAction, Simulator, WriteFault,
    WriteFaultKind,
};

const TOKEN: &str = "x-oauth2-user-token-for-tests";
const GROUP: &str = "1578398451921985538";
const PEER: &str = "44196397";

async fn spawn() -> SimHandle {
    Simulator::spawn(SimConfig {
        conversations: vec![SimConversation { peer_id: PEER.into(), messages: 5, ..SimConversation::default() }],
        api_key: Some(TOKEN.into()),
        account: Some("acme_support".into()),
        x_rate_limit: None,
        groups: vec![SimGroup {
            conversation_id: GROUP.into(),
            participants: vec!["44196397".into(), "783214".into()],
            events: 10,
            membership_every: 0,
        }],
        ..SimConfig::default()
    })
    .await
    .expect("spawn")
}

async fn call(h: &SimHandle, method: &str, target: &str, body: &Value) -> Option<Raw> {
    let auth = format!("Bearer {TOKEN}");
    let body = if body.is_null() { Vec::new() } else { serde_json::to_vec(body).expect("json") };
    try_send(h.addr, method, target, &[("Authorization", &auth), ("Content-Type", "application/json")], &body).await
}

async fn dm(h: &SimHandle, text: &str) -> Option<Raw> {
    call(h, "POST", &format!("/2/dm_conversations/with/{PEER}/messages"), &json!({ "text": text })).await
}

fn queue(h: &SimHandle, faults: Vec<WriteFault>) {
    h.sim.set_faults(Faults { write_faults: faults, ..Faults::default() });
}

fn copies(h: &SimHandle, text: &str) -> usize {
    h.sim.messages(PEER).iter().filter(|m| m.text.as_deref() == Some(text)).count()
}

fn is_problem(r: &Raw, status: u16) -> Value {
    assert_eq!(r.status, status, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.header("content-type"), Some("application/problem+json"));
    let v = r.json();
    for k in ["title", "detail", "type"] {
        assert!(v[k].is_string(), "{k} in {v}");
    }
    assert_eq!(v["status"], status);
    v
}

#[tokio::test]
async fn performed_sends_lose_or_spoil_their_answers() {
    let h = spawn().await;
    use WriteFaultKind::*;
    queue(&h, [Drop, Cut, Garble, NoData, ServerError].into_iter().map(WriteFault::new).collect());
    assert!(dm(&h, "dropped").await.is_none());
    let r = dm(&h, "cut").await.expect("headers");
    assert_eq!(r.status, 201);
    assert!(!r.complete);
    let r = dm(&h, "garbled").await.expect("answer");
    assert_eq!(r.status, 201);
    assert!(serde_json::from_slice::<Value>(&r.body).is_err());
    let r = dm(&h, "no data").await.expect("answer");
    assert_eq!((r.status, r.json()), (201, json!({})));
    let r = dm(&h, "server error").await.expect("answer");
    let v = is_problem(&r, 503);
    assert_eq!(v["title"], "Service Unavailable");
    assert!(r.header("x-rate-limit-limit").is_none(), "no window configured");
    for t in ["dropped", "cut", "garbled", "no data", "server error"] {
        assert_eq!(copies(&h, t), 1, "{t} was sent once");
    }
    let writes = h.sim.writes();
    assert_eq!(writes.len(), 5);
    assert!(writes.iter().all(|w| w.provider == SimProvider::XApiV2 && w.target.as_deref() == Some(PEER)));
    assert_eq!(
        writes[0].result_id.as_deref(),
        h.sim.messages(PEER).iter().find(|m| m.text.as_deref() == Some("dropped")).map(|m| m.id.as_str())
    );
    assert_eq!(h.sim.stats().by_status.get(&0), Some(&1));
    h.shutdown().await;
}

#[tokio::test]
async fn refusals_send_nothing() {
    let h = spawn().await;
    queue(
        &h,
        vec![
            WriteFault::new(WriteFaultKind::RateLimited).retry_after_secs(30),
            WriteFault::new(WriteFaultKind::ServerErrorNotSent),
            // Xquik's own failures are not X's: the entry waits for an Xquik write.
            WriteFault::new(WriteFaultKind::NoSubscription),
        ],
    );
    let r = dm(&h, "throttled").await.expect("answer");
    assert_eq!(r.status, 429);
    assert_eq!(r.json(), json!({ "errors": [{ "code": 88, "message": "Rate limit exceeded" }] }));
    assert_eq!(r.header("x-rate-limit-remaining"), Some("0"));
    let reset: u64 = r.header("x-rate-limit-reset").and_then(|v| v.parse().ok()).expect("reset");
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_secs();
    assert!((now + 1..=now + 31).contains(&reset), "{reset} vs {now}");
    let r = dm(&h, "internal").await.expect("answer");
    let v = is_problem(&r, 500);
    assert_eq!(v["type"], "https://api.x.com/2/problems/internal-error");
    assert_eq!((copies(&h, "throttled"), copies(&h, "internal")), (0, 0));
    let r = dm(&h, "fine").await.expect("answer");
    assert_eq!(r.status, 201);
    assert_eq!(h.sim.faults().write_faults, vec![WriteFault::new(WriteFaultKind::NoSubscription)]);
    assert_eq!(h.sim.writes().len(), 1);
    h.shutdown().await;
}

#[tokio::test]
async fn group_sends_new_groups_deletes_and_uploads_are_performed_under_faults() {
    let h = spawn().await;
    queue(
        &h,
        vec![
            WriteFault::new(WriteFaultKind::Drop).action(SimWriteAction::Send).peer(GROUP),
            WriteFault::new(WriteFaultKind::NoData).action(SimWriteAction::CreateGroup),
            WriteFault::new(WriteFaultKind::Garble).action(SimWriteAction::Delete),
            WriteFault::new(WriteFaultKind::Cut).action(SimWriteAction::Upload),
        ],
    );
    let before = h.sim.group_events(GROUP).len();
    let r =
        call(&h, "POST", &format!("/2/dm_conversations/{GROUP}/messages"), &json!({ "text": "to the group" })).await;
    assert!(r.is_none());
    let events = h.sim.group_events(GROUP);
    assert_eq!(events.len(), before + 1);
    assert_eq!(events[0].text.as_deref(), Some("to the group"));

    let group = json!({ "conversation_type": "Group", "participant_ids": ["783214", "2244994945"], "message": { "text": "new group" } });
    let r = call(&h, "POST", "/2/dm_conversations", &group).await.expect("answer");
    assert_eq!((r.status, r.json()), (201, json!({})));
    let created = h.sim.writes().pop().expect("the group was made");
    assert_eq!((created.action, created.fault), (SimWriteAction::CreateGroup, Some(WriteFaultKind::NoData)));
    let gid = created.result_id.expect("group id");
    assert_eq!(h.sim.group_events(&gid).iter().filter(|e| e.text.as_deref() == Some("new group")).count(), 1);

    let victim = h.sim.messages(PEER)[0].id.clone();
    let r = call(&h, "DELETE", &format!("/2/dm_events/{victim}"), &Value::Null).await.expect("answer");
    assert_eq!(r.status, 200);
    assert!(serde_json::from_slice::<Value>(&r.body).is_err());
    assert_eq!(h.sim.deleted_events(), vec![victim.clone()]);

    let upload = json!({ "media": "aGVsbG8=", "media_category": "dm_image" });
    let r = call(&h, "POST", "/2/media/upload", &upload).await.expect("headers");
    assert!(r.status == 200 && !r.complete);
    let media_id = h.sim.writes().pop().and_then(|w| w.result_id).expect("stored");
    let r = call(&h, "GET", &format!("/2/media/upload?command=STATUS&media_id={media_id}"), &Value::Null).await;
    assert_eq!(r.map(|r| r.status), Some(200), "the upload exists");

    let actions: Vec<_> = h.sim.writes().iter().map(|w| (w.action, w.target.clone())).collect();
    assert_eq!(
        actions,
        [
            (SimWriteAction::Send, Some(GROUP.to_string())),
            (SimWriteAction::CreateGroup, None),
            (SimWriteAction::Delete, Some(victim)),
            (SimWriteAction::Upload, None),
        ]
    );
    h.shutdown().await;
}

#[tokio::test]
async fn not_found_and_forbidden_problems_name_the_resource() {
    let h = spawn().await;
    let r = call(&h, "DELETE", "/2/dm_events/12345", &Value::Null).await.expect("answer");
    let v = is_problem(&r, 404);
    assert_eq!(v["type"], "https://api.x.com/2/problems/resource-not-found");
    assert_eq!(
        (&v["resource_type"], &v["resource_id"], &v["parameter"], &v["value"]),
        (&json!("dm_event"), &json!("12345"), &json!("event_id"), &json!("12345"))
    );
    let r = call(&h, "POST", "/2/dm_conversations/1-2/messages", &json!({ "text": "x" })).await.expect("answer");
    let v = is_problem(&r, 403);
    assert_eq!(v["type"], "https://api.x.com/2/problems/not-authorized-for-resource");
    assert_eq!((&v["resource_type"], &v["resource_id"]), (&json!("dm_conversation"), &json!("1-2")));

    h.sim.set_faults(Faults { forbidden_peers: vec![PEER.into()], ..Faults::default() });
    let r = dm(&h, "refused").await.expect("answer");
    let v = is_problem(&r, 403);
    assert_eq!(v["type"], "https://api.x.com/2/problems/not-authorized-for-resource");
    assert_eq!(
        (&v["resource_type"], &v["resource_id"], &v["parameter"], &v["value"]),
        (&json!("user"), &json!(PEER), &json!("participant_id"), &json!(PEER))
    );
    let r = call(&h, "GET", &format!("/2/dm_conversations/with/{PEER}/dm_events"), &Value::Null).await.expect("answer");
    assert_eq!(is_problem(&r, 403)["resource_type"], "user");
    assert_eq!(copies(&h, "refused"), 0);
    let r = call(&h, "GET", "/2/media/upload?command=STATUS&media_id=999", &Value::Null).await.expect("answer");
    assert_eq!(is_problem(&r, 404)["resource_type"], "media");
    h.shutdown().await;
}

#[tokio::test]
async fn strict_fields_refuse_sender_id_on_the_single_event_lookup_too() {
    let h = Simulator::spawn(SimConfig {
        api_key: Some(TOKEN.into()),
        x_rate_limit: None,
        x_strict_fields: true,
        ..SimConfig::default()
    })
    .await
    .expect("spawn");
    let id = h.sim.messages(PEER)[0].id.clone();
    let history = call(
        &h,
        "GET",
        &format!("/2/dm_conversations/with/{PEER}/dm_events?dm_event.fields=id,sender_id"),
        &Value::Null,
    )
    .await
    .expect("answer");
    let event = call(&h, "GET", &format!("/2/dm_events/{id}?dm_event.fields=id,sender_id"), &Value::Null)
        .await
        .expect("answer");
    assert_eq!(history.status, 400);
    assert_eq!((event.status, event.json()), (400, history.json()));
    assert!(event.json()["errors"][0]["message"].as_str().is_some_and(|m| m.contains("[sender_id]")));
    // The expansion is how a strict client gets the sender.
    let ok = call(&h, "GET", &format!("/2/dm_events/{id}?dm_event.fields=id&expansions=sender_id"), &Value::Null)
        .await
        .expect("answer");
    assert_eq!(ok.status, 200);
    assert!(ok.json()["data"]["sender_id"].is_string());
    let _ = send;
    h.shutdown().await;
}
