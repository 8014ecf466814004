//! Browser rules for WebSocket routes, through the real gateway over real
//! TLS: which `Origin` a handshake may carry for each credential, HSTS on
//! handshake responses, and WebSockets that the gateway closes by itself when
//! the session expires or the connection lifetime runs out.
//!
//! Origin tests use the stand-in as the upstream. The close tests use the
//! harness's [`EchoUpstream`], because the stand-in keeps no record of the
//! close frames it receives.

// Helper functions unwrap like the tests do, because a failure there is a test failure.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::echo::{EchoUpstream, start_with_echo_upstream};
use common::*;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_rustls::client::TlsStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role};

type ClientSocket = WebSocketStream<TlsStream<TcpStream>>;
/// A request header as name and value.
type Header<'a> = (&'a str, &'a str);

/// An origin the test gateway does not allow.
const EVIL_ORIGIN: &str = "https://evil.test";

/// The `Strict-Transport-Security` value of the default settings: one year.
const DEFAULT_HSTS: &str = "max-age=31536000";

/// How long a test waits for one message or response before failing.
const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a test waits for a close frame that the gateway sends after a
/// few seconds.
const CLOSE_WAIT: Duration = Duration::from_secs(8);

/// The sample key of RFC 6455 section 1.3 and its `Sec-WebSocket-Accept`.
const SAMPLE_KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
const SAMPLE_ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";

// ---------------------------------------------------------------------------
// Origin checks

#[tokio::test]
async fn cross_origin_cookie_websocket_is_rejected() {
    let harness = Harness::start().await;
    let session = harness.session("alice", &["tts"]);
    let cookie = format!("session={session}");
    let (response, socket) = raw_handshake(
        &harness,
        "/tts/websocket",
        &[("cookie", &cookie), ("origin", EVIL_ORIGIN)],
    )
    .await;

    assert!(socket.is_none(), "the handshake is not upgraded");
    assert_eq!(response.status, 403, "{response:?}");
    assert_eq!(
        response.json()["error"],
        "origin_not_allowed",
        "{response:?}"
    );
    assert_eq!(
        response.header("access-control-allow-origin"),
        None,
        "a rejected origin gets no CORS headers"
    );
    assert!(
        !response.text().contains(&session),
        "the rejection does not echo the session"
    );
    assert_no_upstream_contact(&harness);
}

#[tokio::test]
async fn cross_origin_rejected_whatever_credential() {
    let harness = Harness::start().await;
    let session = harness.session("alice", &["tts"]);
    let bearer = format!("Bearer {session}");
    let query_path = format!("/tts/websocket?access_token={session}");
    let cases: [(&str, &str, Vec<Header>); 3] = [
        (
            "bearer",
            "/tts/websocket",
            vec![("authorization", &bearer), ("origin", EVIL_ORIGIN)],
        ),
        (
            "access_token query",
            &query_path,
            vec![("origin", EVIL_ORIGIN)],
        ),
        (
            "no credential",
            "/tts/websocket",
            vec![("origin", EVIL_ORIGIN)],
        ),
    ];
    for (case, path, headers) in cases {
        let (response, socket) = raw_handshake(&harness, path, &headers).await;
        assert!(socket.is_none(), "{case}: the handshake is not upgraded");
        assert_eq!(response.status, 403, "{case}: {response:?}");
        assert_eq!(
            response.json()["error"],
            "origin_not_allowed",
            "{case}: the origin is checked before the credential: {response:?}"
        );
    }
    assert_no_upstream_contact(&harness);
}

#[tokio::test]
async fn null_origin_websocket_is_rejected() {
    let harness = Harness::start().await;
    let session = harness.session("alice", &["tts"]);
    let cookie = format!("session={session}");
    let bearer = format!("Bearer {session}");
    let cases: [(&str, Header); 2] = [
        ("cookie", ("cookie", &cookie)),
        ("bearer", ("authorization", &bearer)),
    ];
    for (case, credential) in cases {
        // Sandboxed frames and `file:` pages send the opaque origin `null`.
        let (response, socket) = raw_handshake(
            &harness,
            "/tts/websocket",
            &[credential, ("origin", "null")],
        )
        .await;
        assert!(socket.is_none(), "{case}: the handshake is not upgraded");
        assert_eq!(response.status, 403, "{case}: {response:?}");
        assert_eq!(response.json()["error"], "origin_not_allowed", "{case}");
    }
    assert_no_upstream_contact(&harness);
}

#[tokio::test]
async fn near_miss_origins_are_rejected() {
    let harness = Harness::start().await;
    let session = harness.session("alice", &["tts"]);
    let cookie = format!("session={session}");
    let cases: [(&str, Vec<Header>); 5] = [
        ("plain http", vec![("origin", "http://app.test")]),
        ("another port", vec![("origin", "https://app.test:8443")]),
        ("a subdomain", vec![("origin", "https://www.app.test")]),
        (
            "a longer name",
            vec![("origin", "https://app.test.evil.test")],
        ),
        (
            "two Origin headers",
            vec![("origin", APP_ORIGIN), ("origin", EVIL_ORIGIN)],
        ),
    ];
    for (case, origins) in cases {
        let mut headers = vec![("cookie", cookie.as_str())];
        headers.extend(origins);
        let (response, socket) = raw_handshake(&harness, "/tts/websocket", &headers).await;
        assert!(socket.is_none(), "{case}: the handshake is not upgraded");
        assert_eq!(response.status, 403, "{case}: {response:?}");
        assert_eq!(response.json()["error"], "origin_not_allowed", "{case}");
    }
    assert_no_upstream_contact(&harness);
}

#[tokio::test]
async fn allowed_origin_cookie_websocket_works() {
    let harness = Harness::start().await;
    let session = harness.session("alice", &["tts"]);
    let cookie = format!("session={session}");
    let mut socket = harness
        .websocket(
            "/tts/websocket",
            &[("cookie", &cookie), ("origin", APP_ORIGIN)],
        )
        .await
        .expect("a cookie handshake from the allowed origin succeeds");

    socket
        .send(Message::text(tts_request("Hello from the app").to_string()))
        .await
        .unwrap();
    let mut chunks = 0;
    for _ in 0..100 {
        let event = next_json(&mut socket).await;
        match event["type"].as_str() {
            Some("chunk") => chunks += 1,
            Some("done") => break,
            _ => panic!("unexpected event: {event}"),
        }
    }
    assert!(chunks > 0, "audio chunks arrived before done");
    socket.close(None).await.unwrap();

    let handshakes: Vec<_> = harness
        .stand_in
        .requests()
        .into_iter()
        .filter(|request| request.websocket)
        .collect();
    assert_eq!(
        handshakes.len(),
        1,
        "one handshake reached the stand-in: {handshakes:?}"
    );
    assert!(
        handshakes[0]
            .headers
            .iter()
            .all(|(_, value)| !value.contains(&session)),
        "the session cookie is not forwarded"
    );
}

#[tokio::test]
async fn cookie_websocket_without_origin_is_rejected() {
    let harness = Harness::start().await;
    let session = harness.session("alice", &["tts"]);
    let cookie = format!("session={session}");
    let (response, socket) =
        raw_handshake(&harness, "/tts/websocket", &[("cookie", &cookie)]).await;

    assert!(socket.is_none(), "the handshake is not upgraded");
    assert_eq!(response.status, 403, "{response:?}");
    assert_eq!(
        response.json()["error"],
        "origin_required",
        "every browser sends Origin on a WebSocket handshake: {response:?}"
    );
    assert!(
        !response.text().contains(&session),
        "the rejection does not echo the session"
    );
    assert_no_upstream_contact(&harness);
}

#[tokio::test]
async fn non_browser_websocket_without_origin_works() {
    let harness = Harness::start().await;
    let session = harness.session("alice", &["tts"]);
    let bearer = format!("Bearer {session}");
    let query_path = format!("/tts/websocket?access_token={session}");
    let cases: [(&str, &str, Vec<Header>); 2] = [
        ("bearer", "/tts/websocket", vec![("authorization", &bearer)]),
        ("access_token query", &query_path, Vec::new()),
    ];
    for (case, path, headers) in cases {
        // SDKs outside a browser, such as the Python SDK, send no Origin.
        let mut socket = harness
            .websocket(path, &headers)
            .await
            .unwrap_or_else(|error| panic!("{case}: the handshake failed: {error}"));
        socket
            .send(Message::text(tts_request("No origin here").to_string()))
            .await
            .unwrap();
        let event = next_json(&mut socket).await;
        assert_eq!(event["type"], "chunk", "{case}: audio arrives: {event}");
        socket.close(None).await.unwrap();
    }
}

#[tokio::test]
async fn handshake_responses_carry_hsts() {
    let harness = Harness::start().await;
    let session = harness.session("alice", &["tts"]);
    let bearer = format!("Bearer {session}");
    let cookie = format!("session={session}");

    let (upgraded, socket) =
        raw_handshake(&harness, "/tts/websocket", &[("authorization", &bearer)]).await;
    assert_eq!(upgraded.status, 101, "{upgraded:?}");
    assert!(socket.is_some(), "the 101 opens a WebSocket");
    assert_eq!(
        upgraded.header("sec-websocket-accept"),
        Some(SAMPLE_ACCEPT),
        "the 101 accepts the client's key"
    );
    assert_eq!(
        upgraded.header("strict-transport-security"),
        Some(DEFAULT_HSTS),
        "the 101 carries HSTS"
    );

    let cases: [(&str, Vec<Header>, &str); 2] = [
        (
            "cross-origin",
            vec![("cookie", &cookie), ("origin", EVIL_ORIGIN)],
            "origin_not_allowed",
        ),
        (
            "cookie without Origin",
            vec![("cookie", &cookie)],
            "origin_required",
        ),
    ];
    for (case, headers, code) in cases {
        let (refused, _) = raw_handshake(&harness, "/tts/websocket", &headers).await;
        assert_eq!(refused.status, 403, "{case}: {refused:?}");
        assert_eq!(refused.json()["error"], code, "{case}");
        assert_eq!(
            refused.header("strict-transport-security"),
            Some(DEFAULT_HSTS),
            "{case}: the 403 carries HSTS"
        );
    }
}

// ---------------------------------------------------------------------------
// Closes by the gateway

#[tokio::test]
async fn expiring_session_closes_websocket_with_1008() {
    let (harness, echo) = start_with_echo_upstream(Options {
        session: "leeway_secs = 0",
        ..Options::default()
    })
    .await;
    let user = "user-5c1e-expiring";
    let signed_at = Instant::now();
    let exp = unix_now() + 3;
    let session = session_token(json!({
        "sub": user,
        "grants": ["tts"],
        "aud": "cartesia-gateway-tests",
        "exp": exp,
    }));
    let cookie = format!("session={session}");
    let mut socket = harness
        .websocket(
            "/tts/websocket",
            &[("cookie", &cookie), ("origin", APP_ORIGIN)],
        )
        .await
        .expect("the session is valid for 3 more seconds");

    socket.send(Message::text("still valid")).await.unwrap();
    assert_eq!(
        next_data_message(&mut socket).await,
        Message::text("still valid"),
        "messages flow while the session is valid"
    );

    let close = wait_for_close_frame(&mut socket)
        .await
        .expect("the gateway's close frame carries a code");
    let elapsed = signed_at.elapsed();
    let closed_at = unix_now_secs_f64();
    assert_eq!(
        u16::from(close.code),
        1008,
        "a session expiry closes with 1008 (policy violation): {close:?}"
    );
    assert!(
        closed_at >= exp as f64 - 0.1,
        "the WebSocket stays open until the session's exp {exp}, closed at {closed_at:.3}"
    );
    assert!(
        elapsed >= Duration::from_millis(1900),
        "a session signed with exp = now + 3 s lives at least 2 s, closed after {elapsed:?}"
    );
    assert!(
        elapsed <= Duration::from_secs(6),
        "the gateway closes within a few seconds of exp, closed after {elapsed:?}"
    );

    let reason = close.reason.as_str();
    assert!(
        reason.to_ascii_lowercase().contains("session"),
        "the reason tells the client its session ended: {reason:?}"
    );
    assert_reason_reveals_nothing(reason, &session, &[user, &exp.to_string(), "tts"]);
    assert!(
        eventually(|| echo.closes().contains(&(1000, String::new()))).await,
        "the upstream gets a normal close (1000): {:?}",
        echo.closes()
    );
}

#[tokio::test]
async fn max_lifetime_closes_websocket_with_1008() {
    let (harness, echo) = start_with_echo_upstream(Options {
        websocket: "max_lifetime_secs = 2",
        ..Options::default()
    })
    .await;
    let user = "user-9b2d-lifetime";
    let session = harness.session(user, &["tts"]);
    let bearer = format!("Bearer {session}");
    let started = Instant::now();
    let mut socket = harness
        .websocket("/tts/websocket", &[("authorization", &bearer)])
        .await
        .expect("handshake with a valid session succeeds");

    socket.send(Message::binary(vec![1u8, 2, 3])).await.unwrap();
    assert_eq!(
        next_data_message(&mut socket).await,
        Message::binary(vec![1u8, 2, 3]),
        "messages flow before the lifetime ends"
    );

    let close = wait_for_close_frame(&mut socket)
        .await
        .expect("the gateway's close frame carries a code");
    let elapsed = started.elapsed();
    assert_eq!(
        u16::from(close.code),
        1008,
        "the lifetime limit closes with 1008: {close:?}"
    );
    assert!(
        elapsed >= Duration::from_millis(1900),
        "the WebSocket stays open for the 2 s lifetime, closed after {elapsed:?}"
    );
    assert!(
        elapsed <= Duration::from_secs(6),
        "the gateway closes soon after the 2 s lifetime, closed after {elapsed:?}"
    );

    let reason = close.reason.as_str();
    assert!(!reason.is_empty(), "the close frame gives a reason");
    assert!(
        !reason.to_ascii_lowercase().contains("session"),
        "the session is still valid, so the reason does not blame it: {reason:?}"
    );
    assert_reason_reveals_nothing(reason, &session, &[user, "tts"]);
    assert!(
        eventually(|| echo.closes().contains(&(1000, String::new()))).await,
        "the upstream gets a normal close (1000): {:?}",
        echo.closes()
    );
}

#[tokio::test]
async fn far_future_exp_keeps_websocket_open() {
    let (harness, echo) = start_with_echo_upstream(Options::default()).await;
    // The largest `exp` JSON can carry as an unsigned integer: a session
    // that in practice never expires. Adding the leeway to it must not
    // overflow.
    let session = session_token(json!({
        "sub": "alice",
        "grants": ["tts"],
        "aud": "cartesia-gateway-tests",
        "exp": u64::MAX,
    }));
    let bearer = format!("Bearer {session}");
    let socket = harness
        .websocket("/tts/websocket", &[("authorization", &bearer)])
        .await
        .expect("a session with a far-future exp opens a WebSocket");
    assert_echoes_then_closes(socket, &echo).await;
}

#[tokio::test]
async fn huge_max_lifetime_keeps_websocket_open() {
    // The largest integer TOML allows; no clock reaches that deadline.
    let (harness, echo) = start_with_echo_upstream(Options {
        websocket: "max_lifetime_secs = 9223372036854775807",
        ..Options::default()
    })
    .await;
    let session = harness.session("alice", &["tts"]);
    let bearer = format!("Bearer {session}");
    let socket = harness
        .websocket("/tts/websocket", &[("authorization", &bearer)])
        .await
        .expect("handshake with a valid session succeeds");
    assert_echoes_then_closes(socket, &echo).await;
}

// ---------------------------------------------------------------------------
// Checks

/// Checks that `socket` echoes a few messages through `echo`, then that
/// the client's normal close reaches the upstream.
async fn assert_echoes_then_closes(mut socket: ClientSocket, echo: &EchoUpstream) {
    for round in 0..3 {
        let text = format!("round {round}");
        socket.send(Message::text(text.clone())).await.unwrap();
        assert_eq!(
            next_data_message(&mut socket).await,
            Message::text(text),
            "round {round}: the WebSocket stays open and echoes"
        );
    }
    socket
        .close(Some(CloseFrame {
            code: CloseCode::Normal,
            reason: "done".into(),
        }))
        .await
        .unwrap();
    assert!(
        eventually(|| echo.closes().contains(&(1000, "done".to_owned()))).await,
        "the client's normal close reaches the upstream: {:?}",
        echo.closes()
    );
}

/// Checks that neither the stand-in nor its token endpoint saw a request.
#[track_caller]
fn assert_no_upstream_contact(harness: &Harness) {
    assert!(
        harness.stand_in.requests().is_empty(),
        "the stand-in saw no request: {:?}",
        harness.stand_in.requests()
    );
    assert_eq!(harness.stand_in.mint_count(), 0, "no token was minted");
}

/// Checks that a close reason is short and contains neither the session
/// token nor any of its parts, nor any of `claims`.
#[track_caller]
fn assert_reason_reveals_nothing(reason: &str, session: &str, claims: &[&str]) {
    assert!(
        reason.len() <= 40,
        "the close reason is short: {} bytes",
        reason.len()
    );
    assert!(
        !reason.contains(session),
        "the close reason contains the session token"
    );
    for part in session.split('.') {
        assert!(
            !reason.contains(part),
            "the close reason contains a part of the session token"
        );
    }
    for claim in claims {
        assert!(
            !reason.contains(claim),
            "the close reason contains the claim value {claim:?}: {reason:?}"
        );
    }
}

// ---------------------------------------------------------------------------
// Messages

/// Builds a TTS WebSocket generation request for 16 kHz raw PCM.
fn tts_request(transcript: &str) -> Value {
    json!({
        "context_id": "ctx-1",
        "model_id": "sonic-3",
        "transcript": transcript,
        "voice": {"mode": "id", "id": "a0e99841-438c-4a64-b679-ae501e7d6091"},
        "output_format": {"container": "raw", "encoding": "pcm_s16le", "sample_rate": 16000},
        "continue": false,
    })
}

/// Returns the wall-clock time as fractional Unix seconds.
fn unix_now_secs_f64() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// Reads the next text or binary message, skipping pings and pongs.
async fn next_data_message(socket: &mut ClientSocket) -> Message {
    for _ in 0..100 {
        let message = match tokio::time::timeout(READ_TIMEOUT, socket.next()).await {
            Ok(Some(Ok(message))) => message,
            Ok(Some(Err(error))) => panic!("reading the WebSocket failed: {error}"),
            Ok(None) => panic!("the WebSocket ended"),
            Err(_) => panic!("no message within {READ_TIMEOUT:?}"),
        };
        if !matches!(message, Message::Ping(_) | Message::Pong(_)) {
            return message;
        }
    }
    panic!("only control frames arrived");
}

/// Reads the next text message as JSON.
async fn next_json(socket: &mut ClientSocket) -> Value {
    match next_data_message(socket).await {
        Message::Text(text) => serde_json::from_str(&text)
            .unwrap_or_else(|error| panic!("invalid JSON message {text}: {error}")),
        other => panic!("expected a JSON text message, got {other:?}"),
    }
}

/// Waits up to [`CLOSE_WAIT`] for a close frame and returns it, then reads
/// on so the close handshake completes. Data messages fail the test.
async fn wait_for_close_frame(socket: &mut ClientSocket) -> Option<CloseFrame> {
    let frame = tokio::time::timeout(CLOSE_WAIT, async {
        loop {
            match socket.next().await {
                Some(Ok(Message::Close(frame))) => break frame,
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                Some(Ok(other)) => panic!("expected a close frame, got {other:?}"),
                Some(Err(error)) => panic!("reading the WebSocket failed: {error}"),
                None => panic!("the WebSocket ended without a close frame"),
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no close frame within {CLOSE_WAIT:?}"));
    let _ = tokio::time::timeout(READ_TIMEOUT, async {
        while let Some(Ok(_)) = socket.next().await {}
    })
    .await;
    frame
}

// ---------------------------------------------------------------------------
// Raw handshakes

/// The gateway's response to a handshake, read by hand so a rejection keeps
/// its headers and whole body.
#[derive(Debug)]
struct HandshakeResponse {
    status: u16,
    /// Header names in lower case.
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl HandshakeResponse {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(header, _)| header == name)
            .map(|(_, value)| value.as_str())
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|error| panic!("the body is not JSON ({error}): {}", self.text()))
    }
}

/// Sends a WebSocket handshake for `path_and_query` with the sample key and
/// `headers`, written as given (so a header may repeat). Returns the response
/// and, after a 101, the client WebSocket.
async fn raw_handshake(
    harness: &Harness,
    path_and_query: &str,
    headers: &[Header<'_>],
) -> (HandshakeResponse, Option<ClientSocket>) {
    let mut request = format!(
        "GET {path_and_query} HTTP/1.1\r\nhost: localhost\r\nconnection: Upgrade\r\n\
         upgrade: websocket\r\nsec-websocket-version: 13\r\nsec-websocket-key: {SAMPLE_KEY}\r\n"
    );
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");

    let mut stream = harness.tls_connect().await;
    stream.write_all(request.as_bytes()).await.unwrap();
    stream.flush().await.unwrap();
    tokio::time::timeout(READ_TIMEOUT, read_handshake_response(stream))
        .await
        .expect("a complete response within the read timeout")
}

/// Reads a response head and, unless it is a 101, its `content-length`
/// body.
async fn read_handshake_response(
    mut stream: TlsStream<TcpStream>,
) -> (HandshakeResponse, Option<ClientSocket>) {
    let mut buffer = Vec::new();
    let head_end = loop {
        if let Some(position) = buffer.windows(4).position(|window| window == b"\r\n\r\n") {
            break position;
        }
        read_more(&mut stream, &mut buffer).await;
    };

    let head = String::from_utf8(buffer.drain(..head_end + 4).collect()).unwrap();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap();
    let status: u16 = status_line
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
    let headers: Vec<(String, String)> = lines
        .filter(|line| !line.is_empty())
        .map(|line| {
            let (name, value) = line.split_once(':').unwrap();
            (name.trim().to_ascii_lowercase(), value.trim().to_owned())
        })
        .collect();

    let mut response = HandshakeResponse {
        status,
        headers,
        body: Vec::new(),
    };
    if status == 101 {
        let socket = WebSocketStream::from_partially_read(stream, buffer, Role::Client, None).await;
        return (response, Some(socket));
    }

    let length: usize = response
        .header("content-length")
        .expect("the response has a content-length")
        .parse()
        .unwrap();
    while buffer.len() < length {
        read_more(&mut stream, &mut buffer).await;
    }
    response.body = buffer[..length].to_vec();
    (response, None)
}

async fn read_more(stream: &mut TlsStream<TcpStream>, buffer: &mut Vec<u8>) {
    let mut chunk = [0u8; 8192];
    let read = stream.read(&mut chunk).await.unwrap();
    assert!(read > 0, "the gateway closed the connection");
    buffer.extend_from_slice(&chunk[..read]);
}
