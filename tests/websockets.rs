//! WebSocket routes through the real gateway to the stand-in, over real TLS.

mod common;

use common::*;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};

#[tokio::test]
async fn tts_websocket_with_query_token_streams_audio() {
    let harness = Harness::start().await;
    let session = harness.session("alice", &["tts"]);
    let mut socket = harness
        .websocket(
            &format!("/tts/websocket?cartesia_version=2026-08-14&access_token={session}"),
            &[],
        )
        .await
        .unwrap();
    let request = json!({
        "context_id": "ctx-1",
        "model_id": "sonic-3",
        "transcript": "Hello over a WebSocket",
        "voice": {"mode": "id", "id": "a0e99841-438c-4a64-b679-ae501e7d6091"},
        "output_format": {"container": "raw", "encoding": "pcm_s16le", "sample_rate": 16000},
        "continue": false,
    });
    socket
        .send(Message::text(request.to_string()))
        .await
        .unwrap();
    let mut chunks = 0;
    loop {
        let message = socket.next().await.unwrap().unwrap();
        let event: Value = serde_json::from_str(message.to_text().unwrap()).unwrap();
        match event["type"].as_str().unwrap() {
            "chunk" => chunks += 1,
            "done" => break,
            other => panic!("unexpected event {other}: {event}"),
        }
    }
    assert!(chunks > 0);
    socket.close(None).await.unwrap();
}
