//! The X API v2 adapter against the simulator's `/2/` routes: does the client agree with what the provider
//! (as simulated) serves, page for page, error for error.

use std::collections::BTreeSet;
use std::time::Duration;

use dm_handoff_simulator::testkit::{send, Raw};
use dm_handoff_simulator::{Faults, SimConfig, SimConversation, SimGroup, SimHandle, Simulator};
use tokio_util::sync::CancellationToken;

use super::{peer, ACCOUNT};
use crate::config::Pipeline;
use crate::provider::x_api_v2::XApiV2;
use crate::provider::{with_retry, ErrorClass, Upload, WriteState};
use crate::record::{normalize_time, Conversation, Item};

const TOKEN: &str = "x-oauth2-user-token-for-tests";
const GROUP: &str = "1578398451921985538";

fn cfg(peers: &[(&str, usize)]) -> SimConfig {
    SimConfig {
        conversations: peers
            .iter()
            .map(|(p, n)| SimConversation { peer_id: p.to_string(), messages: *n, ..SimConversation::default() })
            .collect(),
        api_key: Some(TOKEN.into()),
        account: Some(ACCOUNT.into()),
        // Pages as large as max_results asks.
        page_size: (100, 100),
        x_rate_limit: None,
        groups: vec![SimGroup {
            conversation_id: GROUP.into(),
            participants: vec!["44196397".into(), "783214".into(), "2244994945".into()],
            events: 130,
            membership_every: 9,
        }],
        ..SimConfig::default()
    }
}

fn pipeline(h: &SimHandle) -> Pipeline {
    super::pipeline(h, "x-api-v2", "api_key_env = \"X_TOKEN\"")
}

async fn get_auth(h: &SimHandle, target: &str) -> Raw {
    send(h.addr, "GET", target, &[("Authorization", &format!("Bearer {TOKEN}"))], b"").await
}

/// Every item of a conversation, page by page, through the adapter with retries.
async fn walk(x: &XApiV2, p: &Pipeline, conv: &Conversation) -> (Vec<Item>, usize) {
    let cancel = CancellationToken::new();
    let (mut items, mut pages, mut cursor) = (Vec::new(), 0, None::<String>);
    loop {
        let page = with_retry(&p.retry, &cancel, || x.history(conv, cursor.as_deref())).await.expect("page");
        pages += 1;
        items.extend(page.items);
        match page.next_cursor {
            Some(c) => cursor = Some(c),
            None => return (items, pages),
        }
    }
}

#[tokio::test]
async fn one_to_one_history_is_the_same_world_xquik_serves() {
    let h = Simulator::spawn(cfg(&[("44196397", 240)])).await.unwrap();
    let p = pipeline(&h);
    let x = XApiV2::new(&p, TOKEN).unwrap();
    let (items, pages) = walk(&x, &p, &peer("44196397")).await;
    assert_eq!(pages, 3, "max_results=100");
    let truth = h.sim.messages("44196397");
    assert_eq!(items.len(), truth.len());
    let me = Simulator::account_id(ACCOUNT);
    for (item, t) in items.iter().zip(&truth) {
        assert_eq!(item.id, t.id, "newest first");
        assert_eq!(item.sender_id.as_deref(), Some(t.sender_id.as_str()));
        assert_eq!(item.receiver_id.as_deref(), Some(t.receiver_id.as_str()));
        assert_eq!(item.text, t.text);
        assert_eq!(item.media_url, t.media_url, "media joined from includes.media");
        assert_eq!(item.created_at.as_deref().and_then(normalize_time).as_deref(), Some(t.created_at.as_str()));
        assert_eq!(item.conversation_id.as_deref(), Some(format!("44196397-{me}").as_str()));
        assert_eq!(item.event_type.as_deref(), Some("MessageCreate"));
    }
    // The same conversation by its ID, as `conv:<a>-<b>` configures it.
    let by_id = Conversation::from_conversation_id(&format!("44196397-{me}"), Some(&me));
    assert_eq!(walk(&x, &p, &by_id).await.0.len(), 240);
    h.shutdown().await;
}

#[tokio::test]
async fn group_history_carries_join_and_leave_events() {
    let h = Simulator::spawn(cfg(&[])).await.unwrap();
    let p = pipeline(&h);
    let x = XApiV2::new(&p, TOKEN).unwrap();
    let conv = Conversation::Group { conversation_id: GROUP.into() };
    let (items, pages) = walk(&x, &p, &conv).await;
    assert_eq!(pages, 2);
    let truth = h.sim.group_events(GROUP);
    assert_eq!(items.iter().map(|i| &i.id).collect::<Vec<_>>(), truth.iter().map(|t| &t.id).collect::<Vec<_>>());
    let kinds: BTreeSet<&str> = items.iter().filter_map(|i| i.event_type.as_deref()).collect();
    assert_eq!(kinds, BTreeSet::from(["MessageCreate", "ParticipantsJoin", "ParticipantsLeave"]));
    for (i, t) in items.iter().zip(&truth) {
        assert_eq!((&i.sender_id, &i.participant_ids, &i.text), (&t.sender_id, &t.participant_ids, &t.text));
        assert_eq!(i.receiver_id, None);
        assert_eq!(i.conversation_id.as_deref(), Some(GROUP));
    }
    let oldest = items.last().unwrap();
    assert_eq!(oldest.event_type.as_deref(), Some("ParticipantsJoin"));
    assert_eq!(
        oldest.sender_id.as_deref(),
        Some(Simulator::account_id(ACCOUNT).as_str()),
        "the account made the group"
    );
    h.shutdown().await;
}

#[tokio::test]
async fn a_refused_field_is_dropped_once_and_ids_come_from_expansions() {
    let h = Simulator::spawn(SimConfig { x_strict_fields: true, ..cfg(&[("1234567890", 35)]) }).await.unwrap();
    let raw = get_auth(&h, "/2/dm_conversations/with/1234567890/dm_events?dm_event.fields=id,sender_id").await;
    assert_eq!(raw.status, 400);
    assert!(String::from_utf8_lossy(&raw.body).contains("dm_event.fields"));
    let p = pipeline(&h);
    let x = XApiV2::new(&p, TOKEN).unwrap();
    let (items, _) = walk(&x, &p, &peer("1234567890")).await;
    assert_eq!(items.len(), 35);
    assert!(items.iter().all(|i| i.sender_id.is_some()), "sender_id through expansions=sender_id");
    let bad = h.sim.stats().by_status.get(&400).copied().unwrap_or(0);
    assert_eq!(bad, 2, "the raw probe and the adapter's first try; later pages ask without the field");
    h.shutdown().await;
}

#[tokio::test]
async fn the_adapter_paces_itself_and_never_meets_a_429() {
    // 3 reads per second against 7 pages: the adapter must wait for two resets.
    let h = Simulator::spawn(SimConfig { x_rate_limit: Some((3, 1)), ..cfg(&[("783214", 300)]) }).await.unwrap();
    let p = pipeline(&h);
    let x = XApiV2::new(&p, TOKEN).unwrap();
    let started = std::time::Instant::now();
    let (items, pages) = walk(&x, &p, &peer("783214")).await;
    assert_eq!((items.len(), pages), (300, 3));
    let more = walk(&x, &p, &peer("783214")).await.1 + walk(&x, &p, &peer("783214")).await.1;
    assert_eq!(more, 6);
    let stats = h.sim.stats();
    assert_eq!(stats.by_status.get(&429), None, "{:?}", stats.by_status);
    assert!(started.elapsed() >= Duration::from_secs(2), "nine requests at three a second span two resets");
    h.shutdown().await;
}

#[tokio::test]
async fn a_429_is_waited_out_until_the_reset() {
    let h = Simulator::spawn(cfg(&[("44196397", 10)])).await.unwrap();
    h.sim.set_faults(Faults { storm: 1, retry_after_secs: 1, ..Faults::default() });
    let p = pipeline(&h);
    let x = XApiV2::new(&p, TOKEN).unwrap();
    let e = x.history(&peer("44196397"), None).await.unwrap_err();
    assert_eq!((e.class, e.status, e.code.as_str()), (ErrorClass::Transient, Some(429), "x_88"));
    let wait = e.retry_after.expect("the reset says how long");
    assert!(wait >= Duration::from_secs(1) && wait <= Duration::from_secs(3), "{wait:?}");
    // The window is spent until the reset: the next call paces instead of asking.
    let e = x.history(&peer("44196397"), None).await.unwrap_err();
    assert_eq!(e.code, "rate_limit_pacing");
    tokio::time::sleep(e.retry_after.unwrap()).await;
    assert_eq!(x.history(&peer("44196397"), None).await.unwrap().items.len(), 10);
    h.shutdown().await;
}

#[tokio::test]
async fn only_thirty_days_are_served() {
    let h = Simulator::spawn(SimConfig { x_history_days: Some(30), ..cfg(&[("2244994945", 640)]) }).await.unwrap();
    let p = pipeline(&h);
    let x = XApiV2::new(&p, TOKEN).unwrap();
    let (items, _) = walk(&x, &p, &peer("2244994945")).await;
    let truth = h.sim.messages("2244994945");
    let newest = humantime::parse_rfc3339_weak(&truth[0].created_at).unwrap();
    let horizon = newest - Duration::from_secs(30 * 86_400);
    let expected: Vec<&str> = truth
        .iter()
        .filter(|m| humantime::parse_rfc3339_weak(&m.created_at).unwrap() >= horizon)
        .map(|m| m.id.as_str())
        .collect();
    assert!(!expected.is_empty() && expected.len() < truth.len());
    assert_eq!(items.iter().map(|i| i.id.as_str()).collect::<Vec<_>>(), expected);
    h.shutdown().await;
}

#[tokio::test]
async fn sends_groups_uploads_and_deletes_show_in_history() {
    let h = Simulator::spawn(cfg(&[("44196397", 3)])).await.unwrap();
    let p = pipeline(&h);
    let x = XApiV2::new(&p, TOKEN).unwrap();
    let me = Simulator::account_id(ACCOUNT);
    let upload = Upload::File { name: "a.png".into(), mime: "image/png", bytes: b"\x89PNG\r\n\x1a\nrest".to_vec() };
    let WriteState::Done(media) = x.upload_media(&upload).await.unwrap() else { panic!("an image is ready at once") };
    let sent = x.send_to_user("44196397", "with a picture", Some(&media.id)).await.unwrap();
    assert_eq!(sent.conversation_id, format!("44196397-{me}"));
    let items = x.history(&peer("44196397"), None).await.unwrap().items;
    let mine = items.iter().find(|i| i.id == sent.event_id).expect("the sent DM is in history");
    assert_eq!(mine.sender_id.as_deref(), Some(me.as_str()));
    assert_eq!(mine.text.as_deref(), Some("with a picture"));
    assert_eq!(mine.media_url, Some(format!("https://pbs.twimg.com/dm_media/{}/upload.jpg", media.id)));

    let group = x.create_group(&["783214".into(), "2244994945".into()], "welcome", None).await.unwrap();
    let events = h.sim.group_events(&group.conversation_id);
    assert_eq!(events.len(), 2);
    assert_eq!(events[0].id, group.event_id);
    assert_eq!(events[1].event_type, "ParticipantsJoin");
    let again = x.send_to_conversation(&group.conversation_id, "second", None).await.unwrap();
    assert_eq!(again.conversation_id, group.conversation_id);
    let info = x.event(&again.event_id).await.unwrap();
    assert_eq!(info.conversation_id.as_deref(), Some(group.conversation_id.as_str()));

    let info = x.event(&sent.event_id).await.unwrap();
    assert_eq!(info.conversation_id.as_deref(), Some(sent.conversation_id.as_str()));
    x.delete_event(&sent.event_id).await.unwrap();
    x.delete_event(&sent.event_id).await.unwrap();
    assert_eq!(h.sim.deleted_events(), vec![sent.event_id.clone()]);
    assert!(x.history(&peer("44196397"), None).await.unwrap().items.iter().all(|i| i.id != sent.event_id));
    assert_eq!(x.event(&sent.event_id).await.unwrap_err().code, "event_not_found");
    assert_eq!(x.delete_event("1").await.unwrap_err().class, ErrorClass::Conversation);

    let user = x.lookup_user("783214").await.unwrap();
    assert_eq!(user.id, "783214");
    assert_eq!(x.lookup_user("nobody_here").await.unwrap_err().code, "user_not_found");
    h.shutdown().await;
}

#[tokio::test]
async fn refusals_keep_their_classes() {
    let h = Simulator::spawn(cfg(&[("44196397", 3)])).await.unwrap();
    h.sim.set_faults(Faults { forbidden_peers: vec!["44196397".into()], ..Faults::default() });
    let p = pipeline(&h);
    let x = XApiV2::new(&p, TOKEN).unwrap();
    let e = x.history(&peer("44196397"), None).await.unwrap_err();
    assert_eq!((e.class, e.status), (ErrorClass::Conversation, Some(403)));
    let e = x.send_to_user("44196397", "hi", None).await.unwrap_err();
    assert_eq!((e.class, e.status), (ErrorClass::Conversation, Some(403)));
    let e = x.history(&Conversation::Group { conversation_id: "999999999999999999".into() }, None).await.unwrap_err();
    assert_eq!((e.class, e.code.as_str()), (ErrorClass::Conversation, "resource_not_found"));
    let wrong = XApiV2::new(&p, "not-the-token").unwrap();
    assert_eq!(wrong.history(&peer("44196397"), None).await.unwrap_err().class, ErrorClass::Fatal);
    h.shutdown().await;
}
