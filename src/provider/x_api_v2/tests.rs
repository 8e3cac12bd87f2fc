//! Unit tests of the X API v2 adapter's pure parts: parsing, classification, windows.

use super::errors::classify;
use super::limits::{Window, MAX_RESET_WAIT, RESET_MARGIN};
use std::time::UNIX_EPOCH;

use super::*;
use crate::provider::PACING;
use reqwest::header::{HeaderMap, HeaderValue};

fn peer(id: &str) -> Conversation {
    Conversation::Peer { user_id: id.into(), conversation_id: None }
}

fn client() -> XApiV2 {
    let p = crate::config::from_str(
        "[[pipelines]]\nname = \"x\"\nprovider = \"x-api-v2\"\napi_key_env = \"X_TOKEN\"\naccount = \"100\"\nconversations = [\"44196397\"]\n",
        std::path::Path::new("/t/p.toml"),
        std::path::Path::new("/t"),
    )
    .unwrap()
    .pipelines
    .remove(0);
    XApiV2::new(&p, "secret-token").unwrap()
}

#[test]
fn a_page_becomes_items_with_media_direction_and_conversation() {
    let body = br#"{"data":[
        {"id":"1582838499983564806","event_type":"MessageCreate","text":"Hi","sender_id":"44196397",
         "created_at":"2022-10-19T20:58:00.000Z","attachments":{"media_keys":["3_9"],"card_ids":[]}},
        {"id":"1582838499983564807","event_type":"MessageCreate","text":"Yo","sender_id":"100","dm_conversation_id":"100-44196397"}],
        "includes":{"media":[{"media_key":"3_9","type":"photo","url":"https://pbs.twimg.com/dm_media/9.jpg"}]},
        "meta":{"result_count":2,"next_token":"18LAA581J5II7LA00C00ZZZZ"}}"#;
    let page = parse_events(HISTORY_WITH, body).unwrap();
    assert_eq!(page.next_token.as_deref(), Some("18LAA581J5II7LA00C00ZZZZ"));
    let c = client();
    let items: Vec<Item> = page.events.iter().map(|e| c.entry(&peer("44196397"), e, &page.media).unwrap()).collect();
    assert_eq!(items[0].receiver_id.as_deref(), Some("100"));
    assert_eq!(items[0].conversation_id.as_deref(), Some("100-44196397"), "computed when not returned");
    assert_eq!(items[0].media_url.as_deref(), Some("https://pbs.twimg.com/dm_media/9.jpg"));
    assert_eq!(items[1].receiver_id.as_deref(), Some("44196397"));
    assert_eq!(items[1].event_type.as_deref(), Some("MessageCreate"));
}

#[test]
fn join_and_leave_events_keep_their_participants() {
    let body = br#"{"data":[{"id":"5","event_type":"ParticipantsJoin","participant_ids":["7",8],"sender_id":"100"},
        {"id":"6","event_type":"ParticipantsLeave","participant_ids":["7"]}],"meta":{"result_count":2}}"#;
    let page = parse_events(HISTORY_CONV, body).unwrap();
    assert_eq!(page.next_token, None);
    let c = client();
    let conv = Conversation::Group { conversation_id: "1578398451921985538".into() };
    let items: Vec<Item> = page.events.iter().map(|e| c.entry(&conv, e, &[]).unwrap()).collect();
    assert_eq!(items[0].participant_ids, Some(vec!["7".to_string(), "8".to_string()]));
    assert_eq!(items[1].event_type.as_deref(), Some("ParticipantsLeave"));
    assert_eq!(items[1].conversation_id.as_deref(), Some("1578398451921985538"));
    assert_eq!(items[1].receiver_id, None);
}

#[test]
fn empty_pages_other_shapes_and_error_only_answers() {
    assert!(parse_events(HISTORY_WITH, br#"{"meta":{"result_count":0}}"#).unwrap().events.is_empty());
    assert_eq!(parse_events(HISTORY_WITH, br#"{"messages":[]}"#).err().unwrap().class, ErrorClass::Malformed);
    assert_eq!(parse_events(HISTORY_WITH, b"<html>").err().unwrap().class, ErrorClass::Malformed);
    let e = parse_events(
        HISTORY_CONV,
        br#"{"errors":[{"type":"https://api.x.com/2/problems/resource-not-found","detail":"secret"}]}"#,
    )
    .err()
    .unwrap();
    assert_eq!((e.class, e.code.as_str()), (ErrorClass::Conversation, "resource_not_found"));
    assert!(!e.to_string().contains("secret"));
}

#[test]
fn both_error_shapes_map_to_the_same_classes() {
    let problem = |status: u16, kind: &str, detail: &str| {
        format!(r#"{{"title":"t","type":"https://api.x.com/2/problems/{kind}","status":{status},"detail":"{detail}"}}"#)
    };
    let e = classify(
        HISTORY_WITH,
        401,
        br#"{"title":"Unauthorized","type":"about:blank","status":401,"detail":"Unauthorized"}"#,
        None,
    );
    assert_eq!((e.class, e.code.as_str()), (ErrorClass::Fatal, "unauthenticated"));
    let e = classify(
        HISTORY_WITH,
        403,
        problem(403, "not-authorized-for-resource", "You cannot view this conversation").as_bytes(),
        None,
    );
    assert_eq!(e.class, ErrorClass::Conversation);
    let e = classify(HISTORY_WITH, 403, problem(403, "client-forbidden", "app not attached").as_bytes(), None);
    assert_eq!(e.class, ErrorClass::Fatal);
    let e = classify(
        SEND_WITH,
        403,
        br#"{"errors":[{"code":453,"message":"You currently have access to a subset"}]}"#,
        None,
    );
    assert_eq!((e.class, e.code.as_str()), (ErrorClass::Fatal, "x_453"));
    let e = classify(
        HISTORY_WITH,
        403,
        br#"{"title":"Forbidden","detail":"Missing scope dm.read","type":"about:blank","status":403}"#,
        None,
    );
    assert_eq!(e.class, ErrorClass::Fatal);
    let e = classify(HISTORY_WITH, 404, problem(404, "resource-not-found", "x").as_bytes(), None);
    assert_eq!((e.class, e.code.as_str()), (ErrorClass::Conversation, "resource_not_found"));
    let e = classify(
        HISTORY_WITH,
        429,
        br#"{"errors":[{"code":88,"message":"Rate limit exceeded"}]}"#,
        Some(Duration::from_secs(3)),
    );
    assert_eq!(
        (e.class, e.code.as_str(), e.retry_after),
        (ErrorClass::Transient, "x_88", Some(Duration::from_secs(3)))
    );
    let e = classify(HISTORY_WITH, 429, problem(429, "rate-limit-exceeded", "").as_bytes(), None);
    assert_eq!((e.class, e.code.as_str()), (ErrorClass::Transient, "rate_limit_exceeded"));
    for s in [502, 503, 504] {
        assert_eq!(classify(HISTORY_WITH, s, b"", None).class, ErrorClass::Transient);
    }
    for s in [400, 401, 402, 403, 404, 409, 422] {
        assert_ne!(classify(HISTORY_WITH, s, b"{}", None).class, ErrorClass::Transient, "{s}");
    }
    // A 5xx on a read is retried; on a write it is not (the write may have happened).
    assert_eq!(classify(HISTORY_WITH, 500, b"{}", None).class, ErrorClass::Transient);
    assert_ne!(classify(SEND_WITH, 500, b"{}", None).class, ErrorClass::Transient);
    // A pagination_token X does not accept restarts the pass without it.
    let e = classify(HISTORY_WITH, 400, br#"{"errors":[{"parameters":{"pagination_token":["x"]},"message":"The `pagination_token` query parameter value [x] is not valid"}],"title":"Invalid Request","detail":"One or more parameters to your request was invalid.","type":"https://api.x.com/2/problems/invalid-request"}"#, None);
    assert!(e.cursor_rejected && e.class == ErrorClass::Conversation, "{e}");
    assert!(!classify(HISTORY_WITH, 400, problem(400, "invalid-request", "x").as_bytes(), None).cursor_rejected);
    let e = classify(HISTORY_WITH, 400, br#"{"errors":[{"parameters":{},"message":"The `dm_event.fields` query parameter value [sender_id] is not one of [id,text]"}],"title":"Invalid Request","detail":"One or more parameters to your request was invalid.","type":"https://api.x.com/2/problems/invalid-request"}"#, None);
    assert_eq!(e.code, UNKNOWN_FIELD);
}

#[tokio::test(start_paused = true)]
async fn waiting_for_a_window_is_not_a_failed_attempt() {
    let policy = crate::config::RetryPolicy {
        pipeline: "pacing-test".into(),
        request_timeout: Duration::from_secs(5),
        max_retries: 2,
        base: Duration::from_millis(10),
        max: Duration::from_millis(100),
    };
    let cancel = tokio_util::sync::CancellationToken::new();
    let mut calls = 0;
    let r: Result<u32, _> = super::super::with_retry(&policy, &cancel, || {
        calls += 1;
        let c = calls;
        async move {
            match c {
                1..=5 => Err(ProviderError {
                    retry_after: Some(Duration::from_secs(60)),
                    ..ProviderError::new(ErrorClass::Transient, HISTORY_WITH, None, PACING, "h")
                }),
                6 => Err(ProviderError::new(ErrorClass::Transient, HISTORY_WITH, Some(503), "http_503", "h")),
                _ => Ok(c),
            }
        }
    })
    .await;
    assert_eq!(r.unwrap(), 7, "five window waits and one 503 within two retries");
    // Each wait and the retry are counted, by reason (the process registry; this pipeline is this test's).
    let text = crate::metrics::global().encode_text();
    for (reason, n) in [("pacing", 5), ("5xx", 1)] {
        let line = format!("dm_handoff_retries_total{{pipeline=\"pacing-test\",reason=\"{reason}\"}} {n}\n");
        assert!(text.contains(&line), "{line} in\n{text}");
    }
}

#[test]
fn windows_pace_before_the_limit_and_wait_at_least_a_second_after_a_429() {
    let now = UNIX_EPOCH + Duration::from_secs(1_000);
    let mut headers = HeaderMap::new();
    headers.insert("x-rate-limit-remaining", HeaderValue::from_static("0"));
    headers.insert("x-rate-limit-reset", HeaderValue::from_static("1003"));
    let mut w = Window::default();
    assert_eq!(w.wait(now), None, "nothing known yet");
    w.observe(&headers, now);
    assert_eq!(w.wait(now), Some(Duration::from_secs(3) + RESET_MARGIN));
    assert_eq!(w.wait(now + Duration::from_secs(4)), None, "the window has reset");
    // Our clock ahead of X's: the reset looks past; a 429 still waits a second.
    assert_eq!(w.retry_after(now + Duration::from_secs(10)), Some(Duration::from_secs(1)));
    // A reset a day away is held to the clamp.
    headers.insert("x-rate-limit-reset", HeaderValue::from_static("90000"));
    w.observe(&headers, now);
    assert_eq!(w.wait(now), Some(MAX_RESET_WAIT));
    assert_eq!(w.retry_after(now), Some(MAX_RESET_WAIT));
    headers.insert("x-rate-limit-remaining", HeaderValue::from_static("4"));
    w.observe(&headers, now);
    assert_eq!(w.wait(now), None);
}

#[test]
fn ids_categories_and_upload_answers() {
    assert_eq!(
        (media_category("image/png"), media_category("image/gif"), media_category("video/mp4")),
        ("dm_image", "dm_gif", "dm_video")
    );
    let done = media_state(
        UPLOAD_MEDIA,
        br#"{"data":{"id":"1583157113245011970","media_key":"3_1583157113245011970","size":10}}"#,
    );
    assert_eq!(done.unwrap(), WriteState::Done(WriteDone { id: "1583157113245011970".into(), url: None, at: None }));
    let pending = media_state(
        UPLOAD_MEDIA,
        br#"{"data":{"id":"7","processing_info":{"state":"in_progress","check_after_secs":2}}}"#,
    );
    assert_eq!(pending.unwrap(), WriteState::Pending { action: "7".into(), after: Duration::from_secs(2) });
    assert_eq!(media_state(UPLOAD_MEDIA, br#"{"data":{}}"#).unwrap_err().class, ErrorClass::Malformed);
}
