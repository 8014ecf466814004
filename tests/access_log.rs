//! The access log, as JSON lines an operator's log pipeline would read:
//! one event per request or WebSocket session on the `access` target, with
//! the documented fields and none of the secrets.
//!
//! This binary installs the process's only tracing subscriber, so all its
//! cases run in one test.

#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::{API_KEY, APP_ORIGIN, CapturedLog, Harness, session_token, tts_bytes_body, unix_now};
use futures_util::{SinkExt, StreamExt};
use http::Request;
use http_body_util::{BodyExt, Full};
use serde_json::{Value, json};
use tokio::sync::Semaphore;
use tokio_tungstenite::tungstenite::Message;

impl CapturedLog {
    /// Returns the `fields` of every access event written so far.
    fn access_events(&self) -> Vec<Value> {
        self.text()
            .lines()
            .map(|line| serde_json::from_str::<Value>(line).unwrap())
            .filter(|event| event["target"] == "access")
            .map(|event| {
                assert_eq!(event["level"], "INFO", "access events are at info: {event}");
                assert!(event["timestamp"].is_string(), "every event has a time");
                assert!(
                    event.get("span").is_none() && event.get("spans").is_none(),
                    "access events carry no span fields: {event}"
                );
                event["fields"].clone()
            })
            .collect()
    }

    /// Waits for an access event that `matches`, and returns it.
    async fn wait_for(&self, matches: impl Fn(&Value) -> bool) -> Value {
        for _ in 0..200 {
            if let Some(event) = self
                .access_events()
                .into_iter()
                .find(|event| matches(event))
            {
                return event;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("no such access event in {:#?}", self.access_events());
    }
}

/// The access fields, and only those.
const FIELDS: [&str; 16] = [
    "message",
    "client_addr",
    "user_id",
    "method",
    "route",
    "query",
    "status",
    "upstream_status",
    "bytes_in",
    "bytes_out",
    "duration_ms",
    "ttfb_ms",
    "token_source",
    "ws_close_code",
    "ws_closed_by",
    "reason",
];

fn assert_allowed_fields(event: &Value) {
    for name in event.as_object().unwrap().keys() {
        assert!(
            FIELDS.contains(&name.as_str()),
            "field {name} is not on the allow-list: {event}"
        );
    }
}

async fn post_tts_bytes(harness: &Harness, path: &str, headers: &[(&str, &str)]) -> (u16, Bytes) {
    let mut request = Request::post(format!("{}{path}", harness.url()))
        .header("content-type", "application/json");
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let body = Bytes::from(tts_bytes_body("Access log test").to_string());
    let (response, body) = harness.send(request.body(Full::new(body)).unwrap()).await;
    (response.status().as_u16(), body)
}

#[tokio::test]
async fn access_events_have_the_fields_and_no_secrets() {
    let log = CapturedLog::default();
    tracing_subscriber::fmt()
        .json()
        .with_max_level(tracing::Level::DEBUG)
        .with_writer(log.clone())
        .try_init()
        .expect("this test binary installs the only subscriber");
    let harness = Harness::start().await;
    let request_bytes = tts_bytes_body("Access log test").to_string().len() as u64;

    // A cookie session with a credential-looking query: the token is minted.
    let session = harness.session("access-user", &["tts"]);
    let cookie = format!("session={session}");
    let path = format!("/tts/bytes?model_id=sonic&access_token={session}&flag");
    let (status, audio) = post_tts_bytes(
        &harness,
        &path,
        &[("cookie", &cookie), ("origin", APP_ORIGIN)],
    )
    .await;
    assert_eq!(status, 200);
    let first = log
        .wait_for(|event| event["token_source"] == "minted")
        .await;
    assert_allowed_fields(&first);
    assert_eq!(first["message"], "request");
    assert_eq!(first["client_addr"], "127.0.0.1");
    assert_eq!(first["user_id"], "access-user");
    assert_eq!(first["method"], "POST");
    assert_eq!(first["route"], "/tts/bytes");
    assert_eq!(
        first["query"],
        "model_id=<redacted>&access_token=<redacted>&flag"
    );
    assert_eq!(first["status"], 200);
    assert_eq!(first["upstream_status"], 200);
    assert_eq!(first["bytes_in"], request_bytes);
    assert_eq!(first["bytes_out"], audio.len() as u64);
    let duration = first["duration_ms"].as_f64().unwrap();
    let ttfb = first["ttfb_ms"].as_f64().unwrap();
    assert!(
        ttfb > 0.0 && ttfb <= duration,
        "time to first byte within the duration: {first}"
    );
    assert!(
        first.get("reason").is_none(),
        "a success has no reason: {first}"
    );

    // The same user again with a Bearer session over HTTP/2: the token comes
    // from the cache, and the stream's end is a normal end.
    let bearer = format!("Bearer {session}");
    let request = Request::post(format!("{}/tts/bytes", harness.url()))
        .header("authorization", &bearer)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(
            tts_bytes_body("Access log test").to_string(),
        )))
        .unwrap();
    let response = harness.h2_client().request(request).await.unwrap();
    assert_eq!(response.status(), 200);
    let audio = response.into_body().collect().await.unwrap().to_bytes();
    let cached = log.wait_for(|event| event["token_source"] == "cache").await;
    assert_eq!(cached["bytes_out"], audio.len() as u64);
    assert!(cached.get("reason").is_none(), "{cached}");
    assert!(
        cached.get("query").is_none(),
        "no query, no field: {cached}"
    );

    // Denials carry their reason and no user.
    let expired = session_token(json!({
        "sub": "access-user",
        "grants": ["tts"],
        "aud": "cartesia-gateway-tests",
        "exp": unix_now() - 3600,
    }));
    let expired_bearer = format!("Bearer {expired}");
    let (status, _) = post_tts_bytes(
        &harness,
        "/tts/bytes",
        &[("authorization", &expired_bearer)],
    )
    .await;
    assert_eq!(status, 401);
    let denied = log.wait_for(|event| event["reason"] == "expired").await;
    assert_eq!(denied["status"], 401);
    assert!(denied.get("user_id").is_none(), "{denied}");
    assert!(denied.get("upstream_status").is_none(), "{denied}");

    let stt_only = format!("Bearer {}", harness.session("access-user", &["stt"]));
    let (status, _) = post_tts_bytes(&harness, "/tts/bytes", &[("authorization", &stt_only)]).await;
    assert_eq!(status, 403);
    let no_grant = log
        .wait_for(|event| event["reason"] == "grant_missing" && event["status"] == 403)
        .await;
    assert_eq!(
        no_grant["user_id"], "access-user",
        "a verified session names its user"
    );

    // A client that goes away mid-stream.
    let gate = Arc::new(Semaphore::new(0));
    harness
        .stand_in
        .faults()
        .set_stream_gate(Some(Arc::clone(&gate)));
    let request = Request::post(format!("{}/tts/bytes", harness.url()))
        .header("authorization", &bearer)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(
            tts_bytes_body("Access log test").to_string(),
        )))
        .unwrap();
    let client = harness.client();
    let response = client.request(request).await.unwrap();
    assert_eq!(response.status(), 200);
    let mut body = response.into_body();
    let first_chunk = body.frame().await.unwrap().unwrap();
    assert!(first_chunk.is_data());
    drop(body);
    drop(client);
    let abandoned = log
        .wait_for(|event| event["reason"] == "client_closed")
        .await;
    assert_eq!(abandoned["status"], 200);
    assert!(abandoned["bytes_out"].as_u64().unwrap() > 0, "{abandoned}");
    harness.stand_in.faults().set_stream_gate(None);
    gate.add_permits(1000);

    // A client that goes away while the token is still being minted.
    harness
        .stand_in
        .faults()
        .delay_mints(Some(Duration::from_secs(2)));
    let slow = format!("Bearer {}", harness.session("access-slow-user", &["tts"]));
    let timed_out = tokio::time::timeout(
        Duration::from_millis(300),
        post_tts_bytes(&harness, "/tts/bytes", &[("authorization", &slow)]),
    )
    .await;
    assert!(timed_out.is_err(), "the client gave up before the response");
    let left = log
        .wait_for(|event| event["user_id"] == "access-slow-user")
        .await;
    assert_eq!(left["reason"], "client_closed", "{left}");
    assert!(
        left.get("status").is_none(),
        "no response head was sent: {left}"
    );
    harness.stand_in.faults().delay_mints(None);

    // A WebSocket session, written when it closes.
    let ws_session = harness.session("access-ws-user", &["tts"]);
    let path = format!("/tts/websocket?access_token={ws_session}");
    let mut socket = harness.websocket(&path, &[]).await.unwrap();
    let message = json!({
        "context_id": "ctx-access",
        "model_id": "sonic-3",
        "transcript": "Log this session",
        "voice": {"mode": "id", "id": "a0e99841-438c-4a64-b679-ae501e7d6091"},
        "output_format": {"container": "raw", "encoding": "pcm_s16le", "sample_rate": 16000},
        "continue": false,
    })
    .to_string();
    socket.send(Message::text(message.clone())).await.unwrap();
    let mut received = 0u64;
    loop {
        let next = tokio::time::timeout(Duration::from_secs(10), socket.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        if let Message::Text(text) = next {
            received += text.len() as u64;
            let event: Value = serde_json::from_str(text.as_str()).unwrap();
            if event["type"] == "done" {
                break;
            }
        }
    }
    socket.close(None).await.unwrap();
    while let Some(Ok(_)) = socket.next().await {}
    let websocket = log
        .wait_for(|event| event["message"] == "websocket session")
        .await;
    assert_allowed_fields(&websocket);
    assert_eq!(websocket["route"], "/tts/websocket");
    assert_eq!(websocket["user_id"], "access-ws-user");
    assert_eq!(websocket["query"], "access_token=<redacted>");
    assert_eq!(websocket["status"], 101);
    assert_eq!(websocket["upstream_status"], 101);
    assert_eq!(
        websocket["ws_close_code"], 1005,
        "a close frame without a code"
    );
    assert_eq!(websocket["ws_closed_by"], "client");
    assert_eq!(websocket["bytes_in"], message.len() as u64);
    assert!(
        websocket["bytes_out"].as_u64().unwrap() >= received,
        "{websocket}"
    );

    // None of the secrets appears in any line, access or not.
    let text = log.text();
    let mut secrets = vec![
        API_KEY.to_owned(),
        session.clone(),
        expired,
        ws_session,
        cookie,
    ];
    secrets.extend(harness.stand_in.issued_tokens());
    for secret in &secrets {
        assert!(
            !text.contains(secret.as_str()),
            "a secret of {} bytes is in the log",
            secret.len()
        );
    }
}
