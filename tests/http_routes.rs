//! HTTP routes through the real gateway to the stand-in, over real TLS.

mod common;

use bytes::Bytes;
use common::*;
use http::Request;
use http_body_util::Full;

#[tokio::test]
async fn tts_bytes_with_bearer_returns_wav() {
    let harness = Harness::start().await;
    let session = harness.session("alice", &["tts"]);
    let body = tts_bytes_body("Hello there").to_string();
    let request = Request::post(format!("{}/tts/bytes", harness.url()))
        .header("authorization", format!("Bearer {session}"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .unwrap();
    let (response, body) = harness.send(request).await;
    assert_eq!(response.status(), 200, "{body:?}");
    assert_eq!(&body[..4], b"RIFF");
}
