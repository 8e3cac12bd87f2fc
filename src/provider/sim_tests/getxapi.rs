//! The GetXAPI adapter against the simulator's `/twitter/` routes: same world, its own shapes.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::{peer, ACCOUNT};
use crate::config::Pipeline;
use crate::provider::getxapi::GetXApi;
use crate::provider::{with_retry, ErrorClass, WriteDone, WriteState};
use crate::record::{normalize_time, Conversation};
use dm_handoff_simulator::testkit::send;
use dm_handoff_simulator::{Faults, SimConfig, SimConversation, SimGroup, SimHandle, Simulator};

const KEY: &str = "get-x-api-test-key";
const AUTH: &str = "auth-token-of-the-account";

fn cfg() -> SimConfig {
    SimConfig {
        conversations: vec![SimConversation {
            peer_id: "44196397".into(),
            messages: 240,
            ..SimConversation::default()
        }],
        api_key: Some(KEY.into()),
        account: Some(ACCOUNT.into()),
        page_size: (100, 100),
        getxapi_auth_token: Some(AUTH.into()),
        groups: vec![SimGroup {
            conversation_id: "1578398451921985538".into(),
            participants: vec!["1".into(), "2".into()],
            events: 30,
            membership_every: 7,
        }],
        ..SimConfig::default()
    }
}

fn pipeline(h: &SimHandle) -> Pipeline {
    super::pipeline(h, "getxapi", "api_key_env = \"GETXAPI_KEY\"\nauth_token_env = \"GETXAPI_AUTH\"")
}

#[tokio::test]
async fn history_is_the_same_world_in_getxapi_shapes() {
    let h = Simulator::spawn(cfg()).await.unwrap();
    let p = pipeline(&h);
    let g = GetXApi::new(&p, KEY, AUTH).unwrap();
    let cancel = CancellationToken::new();
    let conv = peer("44196397");
    let (mut items, mut cursor, mut pages) = (Vec::new(), None::<String>, 0);
    loop {
        let page = with_retry(&p.retry, &cancel, || g.history(&conv, cursor.as_deref())).await.unwrap();
        pages += 1;
        assert_eq!(page.credits, 1);
        items.extend(page.items);
        match page.next_cursor {
            Some(c) => cursor = Some(c),
            None => break,
        }
    }
    assert_eq!(pages, 3, "count=100");
    assert_eq!(h.sim.getxapi_history_requests(&format!("44196397-{}", Simulator::account_id(ACCOUNT))), 3);
    let truth = h.sim.messages("44196397");
    assert_eq!(items.len(), truth.len());
    let me = Simulator::account_id(ACCOUNT);
    for t in &truth {
        let i = items.iter().find(|i| i.id == t.id).expect("every message once");
        assert_eq!(
            (i.sender_id.as_deref(), i.receiver_id.as_deref()),
            (Some(t.sender_id.as_str()), Some(t.receiver_id.as_str()))
        );
        assert_eq!((&i.text, &i.media_url), (&t.text, &t.media_url));
        assert_eq!(i.created_at.as_deref().and_then(normalize_time).as_deref(), Some(t.created_at.as_str()));
        assert_eq!(i.conversation_id.as_deref(), Some(format!("44196397-{me}").as_str()));
    }
    // A group's messages, joins and leaves left out (GetXAPI lists them as events).
    let group = Conversation::Group { conversation_id: "1578398451921985538".into() };
    let page = g.history(&group, None).await.unwrap();
    let messages =
        h.sim.group_events("1578398451921985538").into_iter().filter(|e| e.event_type == "MessageCreate").count();
    assert_eq!(page.items.len(), messages);
    assert!(page.items.iter().all(|i| i.receiver_id.is_none()));
    h.shutdown().await;
}

#[tokio::test]
async fn send_round_trips_into_history() {
    let h = Simulator::spawn(cfg()).await.unwrap();
    let p = pipeline(&h);
    let g = GetXApi::new(&p, KEY, AUTH).unwrap();
    let WriteState::Done(WriteDone { id, at, .. }) = g.send_dm("44196397", "thanks, fixed", None).await.unwrap() else {
        panic!("GetXAPI sends are final");
    };
    assert!(at.is_none(), "the record's sent_at is the time of our send, not GetXAPI's createdAt");
    let newest = &h.sim.messages("44196397")[0];
    assert_eq!((newest.id.as_str(), newest.text.as_deref()), (id.as_str(), Some("thanks, fixed")));
    let page = g.history(&peer("44196397"), None).await.unwrap();
    assert!(page.items.iter().any(|i| i.id == id));
    assert_eq!(g.send_dm("44196397", "x", Some("5")).await.unwrap_err().code, "media_not_supported");
    assert_eq!(g.lookup_user("783214").await.unwrap().id, "783214");
    h.shutdown().await;
}

#[tokio::test]
async fn secrets_and_errors() {
    let h = Simulator::spawn(cfg()).await.unwrap();
    let p = pipeline(&h);
    let e = GetXApi::new(&p, KEY, "stale-token").unwrap().history(&peer("44196397"), None).await.unwrap_err();
    assert_eq!((e.class, e.code.as_str()), (ErrorClass::Fatal, "invalid_auth_token"));
    assert!(!e.to_string().contains("stale-token") && !e.to_string().contains("extract"));
    let e = GetXApi::new(&p, "wrong-key", AUTH).unwrap().history(&peer("44196397"), None).await.unwrap_err();
    assert_eq!((e.class, e.code.as_str()), (ErrorClass::Fatal, "unauthenticated"));
    let g = GetXApi::new(&p, KEY, AUTH).unwrap();
    h.sim.set_faults(Faults { storm: 1, retry_after_secs: 7, ..Faults::default() });
    let e = g.history(&peer("44196397"), None).await.unwrap_err();
    assert_eq!(
        (e.class, e.retry_after),
        (ErrorClass::Transient, Some(Duration::from_secs(7))),
        "retry_after from the body"
    );
    h.sim.set_faults(Faults { forbidden_peers: vec!["44196397".into()], ..Faults::default() });
    assert_eq!(g.history(&peer("44196397"), None).await.unwrap_err().class, ErrorClass::Conversation);
    // What goes over the wire: the token in the body, the key as a bearer.
    let r = send(
        h.addr,
        "POST",
        "/twitter/dm/conversation",
        &[("Authorization", &format!("Bearer {KEY}")), ("Content-Type", "application/json")],
        br#"{"auth_token":"auth-token-of-the-account"}"#,
    )
    .await;
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"], "Missing required field: conversation_id (get it from /dm/list)");
    h.shutdown().await;
}
