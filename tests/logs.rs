//! Captures every log line at TRACE level while sessions, minted tokens and
//! the API key are in use, and checks that no secret appears in the output.
//! The capture covers the gateway, the stand-in and every dependency that
//! logs: h2, hyper-util, and tungstenite through the `log` bridge.
//!
//! The subscriber is process-wide, so this file contains exactly one test.
//!
//! WebSocket handshakes here are written by hand instead of through
//! tungstenite's client: that client logs its whole request, query included,
//! at TRACE under the target `tungstenite::handshake::client`, which would
//! put the test's own `access_token` into the log. The gateway never uses
//! tungstenite's handshake code.

// Helper functions unwrap like the tests do, because a failure there is a test failure.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::*;
use futures_util::{SinkExt, StreamExt};
use http::Request;
use http_body_util::Full;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::Role;
use tracing_subscriber::fmt::format::FmtSpan;

type ClientSocket = WebSocketStream<TlsStream<TcpStream>>;

/// How long the test waits for one message or response before failing.
const READ_TIMEOUT: Duration = Duration::from_secs(5);

#[tokio::test]
async fn trace_log_contains_no_secret() {
    let log = CapturedLog::default();
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(log.clone())
        .with_ansi(false)
        .with_target(true)
        .with_span_events(FmtSpan::NEW | FmtSpan::CLOSE)
        .try_init()
        .expect("this test binary installs the only subscriber");

    let mut harness = Harness::start().await;
    let mut sessions: Vec<String> = Vec::new();

    // Cookie session: the first request of the user mints a token.
    let cookie_session = distinct_session("log-user", &["tts", "stt"], "cookie");
    sessions.push(cookie_session.clone());
    let cookie = format!("theme=dark; session={cookie_session}");
    let (status, body) = post_tts_bytes(
        &harness,
        false,
        &[("cookie", &cookie), ("origin", APP_ORIGIN)],
    )
    .await;
    assert_eq!(status, 200, "cookie session: {body:?}");

    // Bearer session over HTTP/2: the cached token is reused.
    let bearer_session = distinct_session("log-user", &["tts", "stt"], "bearer");
    sessions.push(bearer_session.clone());
    let bearer = format!("Bearer {bearer_session}");
    let (status, body) = post_tts_bytes(&harness, true, &[("authorization", &bearer)]).await;
    assert_eq!(status, 200, "bearer session: {body:?}");

    // Rejected sessions: expired, badly signed, missing, and without the grant.
    let expired = session_token(json!({
        "sub": "log-user",
        "grants": ["tts"],
        "aud": "cartesia-gateway-tests",
        "exp": unix_now() - 3600,
    }));
    sessions.push(expired.clone());
    let expired_bearer = format!("Bearer {expired}");
    let (status, body) =
        post_tts_bytes(&harness, false, &[("authorization", &expired_bearer)]).await;
    assert_eq!(status, 401, "expired session: {body:?}");

    let other = harness.session("someone-else", &["tts"]);
    sessions.push(other.clone());
    let forged = format!(
        "{}.{}",
        cookie_session.rsplit_once('.').unwrap().0,
        other.rsplit_once('.').unwrap().1
    );
    sessions.push(forged.clone());
    let forged_cookie = format!("session={forged}");
    let (status, body) = post_tts_bytes(
        &harness,
        false,
        &[("cookie", &forged_cookie), ("origin", APP_ORIGIN)],
    )
    .await;
    assert_eq!(status, 401, "badly signed session: {body:?}");

    let (status, body) = post_tts_bytes(&harness, false, &[]).await;
    assert_eq!(status, 401, "no session: {body:?}");

    let stt_only = harness.session("log-user-stt", &["stt"]);
    sessions.push(stt_only.clone());
    let stt_only_bearer = format!("Bearer {stt_only}");
    let (status, body) =
        post_tts_bytes(&harness, false, &[("authorization", &stt_only_bearer)]).await;
    assert_eq!(status, 403, "session without the tts grant: {body:?}");

    // WebSockets with the session in the query.
    let query_session = distinct_session("log-user", &["tts", "stt"], "query");
    sessions.push(query_session.clone());
    run_tts_websocket(&harness, &query_session).await;
    run_stt_websocket(&harness, &query_session).await;

    // Upstream errors: a refused upgrade, a failing route and a failing mint.
    let mut connection = harness.tls_connect().await;
    let refused_path =
        format!("/stt/websocket?encoding=pcm_s16le&sample_rate=16000&access_token={query_session}");
    let (status, _) = websocket_handshake(&mut connection, &refused_path).await;
    assert_eq!(
        status, 400,
        "the stand-in refuses an STT handshake without a model"
    );

    harness
        .stand_in
        .faults()
        .respond_with_status(Some((500, None)));
    let (status, body) = post_tts_bytes(&harness, false, &[("authorization", &bearer)]).await;
    assert_eq!(status, 500, "upstream 500 passes through: {body:?}");
    harness.stand_in.faults().respond_with_status(None);

    harness.stand_in.faults().fail_mints_with(Some(503));
    let new_user = harness.session("log-user-new", &["tts"]);
    sessions.push(new_user.clone());
    let new_user_bearer = format!("Bearer {new_user}");
    let (status, body) =
        post_tts_bytes(&harness, false, &[("authorization", &new_user_bearer)]).await;
    assert_eq!(
        status, 503,
        "a failing mint is a 503 after its retries: {body:?}"
    );
    harness.stand_in.faults().fail_mints_with(None);

    harness.stop().await;

    let text = log.text();
    assert!(!text.is_empty(), "the log captured something");

    let issued = harness.stand_in.issued_tokens();
    assert!(
        !issued.is_empty(),
        "the stand-in minted tokens, so there is something to look for"
    );
    let mut secrets: Vec<(String, String)> = vec![
        ("the Cartesia API key".to_owned(), API_KEY.to_owned()),
        ("the session secret".to_owned(), SESSION_SECRET.to_owned()),
    ];
    for (index, session) in sessions.iter().enumerate() {
        secrets.push((format!("session JWT #{index}"), session.clone()));
        secrets.push((
            format!("signature of session JWT #{index}"),
            signature_of(session).to_owned(),
        ));
    }
    secrets.push(("the cookie value".to_owned(), cookie_session.clone()));
    for (index, token) in issued.iter().enumerate() {
        secrets.push((format!("minted token #{index}"), token.clone()));
        secrets.push((
            format!("signature of minted token #{index}"),
            signature_of(token).to_owned(),
        ));
    }
    let leaks = find_leaks(&text, &secrets);
    assert!(
        leaks.is_empty(),
        "secrets in the TRACE log (secret values masked):\n{}",
        leaks.join("\n")
    );

    // The log contains the facts an operator needs, so an empty or filtered
    // log cannot pass the checks above by accident.
    assert!(text.contains("log-user"), "the user id is logged");
    assert!(
        text.lines()
            .any(|line| line.contains("session rejected") && line.contains("expired")),
        "the expired session is logged with its reason"
    );
    assert!(
        text.contains("minted a Cartesia access token"),
        "the mint is logged"
    );
    assert!(
        text.lines().any(|line| line.contains("upstream error")),
        "the failed mint is logged"
    );
    for target in ["h2::", "hyper_util::", "tungstenite::protocol"] {
        assert!(
            text.contains(target),
            "TRACE output of {target} was captured, so it was checked too"
        );
    }
}

/// Sends `POST /tts/bytes` with `headers` and returns the status and body.
async fn post_tts_bytes(harness: &Harness, http2: bool, headers: &[(&str, &str)]) -> (u16, Bytes) {
    let mut request = Request::post(format!("{}/tts/bytes", harness.url()))
        .header("content-type", "application/json");
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let body = tts_bytes_body("Logging test").to_string();
    let request = request.body(Full::new(Bytes::from(body))).unwrap();
    if http2 {
        let response = harness.h2_client().request(request).await.unwrap();
        let status = response.status().as_u16();
        let body = http_body_util::BodyExt::collect(response.into_body())
            .await
            .unwrap()
            .to_bytes();
        (status, body)
    } else {
        let (response, body) = harness.send(request).await;
        (response.status().as_u16(), body)
    }
}

/// Streams one TTS generation over `/tts/websocket` until `done`.
async fn run_tts_websocket(harness: &Harness, session: &str) {
    let mut connection = harness.tls_connect().await;
    let path = format!("/tts/websocket?access_token={session}");
    let (status, leftover) = websocket_handshake(&mut connection, &path).await;
    assert_eq!(status, 101, "TTS handshake with a query session");
    let mut socket =
        WebSocketStream::from_partially_read(connection, leftover, Role::Client, None).await;
    let request = json!({
        "context_id": "ctx-log",
        "model_id": "sonic-3",
        "transcript": "Log me",
        "voice": {"mode": "id", "id": "a0e99841-438c-4a64-b679-ae501e7d6091"},
        "output_format": {"container": "raw", "encoding": "pcm_s16le", "sample_rate": 16000},
        "continue": false,
    });
    socket
        .send(Message::text(request.to_string()))
        .await
        .unwrap();
    let mut kinds = Vec::new();
    for _ in 0..100 {
        let event = next_json(&mut socket).await;
        let kind = event["type"].as_str().unwrap_or("?").to_owned();
        kinds.push(kind.clone());
        if kind == "done" || kind == "error" {
            break;
        }
    }
    assert_eq!(
        kinds.last().map(String::as_str),
        Some("done"),
        "TTS WebSocket events: {kinds:?}"
    );
    socket.close(None).await.unwrap();
}

/// Sends one second of audio over `/stt/websocket`, finalizes and closes.
async fn run_stt_websocket(harness: &Harness, session: &str) {
    let mut connection = harness.tls_connect().await;
    let path = format!(
        "/stt/websocket?model=ink-whisper&encoding=pcm_s16le&sample_rate=16000&access_token={session}"
    );
    let (status, leftover) = websocket_handshake(&mut connection, &path).await;
    assert_eq!(status, 101, "STT handshake with a query session");
    let mut socket =
        WebSocketStream::from_partially_read(connection, leftover, Role::Client, None).await;
    socket
        .send(Message::binary(vec![0u8; 32_000]))
        .await
        .unwrap();
    socket.send(Message::text("close")).await.unwrap();
    let transcript = next_json(&mut socket).await;
    assert_eq!(transcript["type"], "transcript", "{transcript}");
    let done = next_json(&mut socket).await;
    assert_eq!(done["type"], "done", "{done}");
    let _ = tokio::time::timeout(READ_TIMEOUT, async {
        while let Some(Ok(_)) = socket.next().await {}
    })
    .await;
}

/// Sends a WebSocket handshake for `path_and_query` and reads the response
/// head. Returns the status and the bytes read after the head, which are
/// WebSocket frames after a 101 and the body otherwise.
async fn websocket_handshake(
    connection: &mut TlsStream<TcpStream>,
    path_and_query: &str,
) -> (u16, Vec<u8>) {
    let request = format!(
        "GET {path_and_query} HTTP/1.1\r\nhost: localhost\r\nconnection: Upgrade\r\n\
         upgrade: websocket\r\nsec-websocket-version: 13\r\n\
         sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    );
    connection.write_all(request.as_bytes()).await.unwrap();
    connection.flush().await.unwrap();
    let mut buffer = Vec::new();
    let head_end = tokio::time::timeout(READ_TIMEOUT, async {
        loop {
            if let Some(end) = buffer.windows(4).position(|window| window == b"\r\n\r\n") {
                return end;
            }
            let mut chunk = [0u8; 4096];
            let read = connection.read(&mut chunk).await.unwrap();
            assert!(read > 0, "the gateway closed the connection");
            buffer.extend_from_slice(&chunk[..read]);
        }
    })
    .await
    .expect("a response head within the read timeout");
    let head = String::from_utf8_lossy(&buffer[..head_end]).into_owned();
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("bad response head {head:?}"));
    (status, buffer[head_end + 4..].to_vec())
}

/// Reads the next text message as JSON, skipping control frames.
async fn next_json(socket: &mut ClientSocket) -> Value {
    for _ in 0..100 {
        let message = match tokio::time::timeout(READ_TIMEOUT, socket.next()).await {
            Ok(Some(Ok(message))) => message,
            other => panic!("expected a message, got {other:?}"),
        };
        match message {
            Message::Text(text) => return serde_json::from_str(&text).unwrap(),
            Message::Ping(_) | Message::Pong(_) => {}
            other => panic!("expected a JSON text message, got {other:?}"),
        }
    }
    panic!("only control frames arrived");
}

/// Signs a session like `Harness::session` with a `jti` claim, so sessions
/// of one user made in the same second still differ and each is looked for
/// separately.
fn distinct_session(user: &str, grants: &[&str], jti: &str) -> String {
    session_token(json!({
        "sub": user,
        "grants": grants,
        "aud": "cartesia-gateway-tests",
        "exp": unix_now() + 600,
        "jti": jti,
    }))
}

/// Returns the signature part of a JWT.
fn signature_of(jwt: &str) -> &str {
    jwt.rsplit_once('.').map_or(jwt, |(_, signature)| signature)
}

/// Returns one entry per log line that contains a secret: the secret's name
/// and the line with every secret masked.
fn find_leaks(text: &str, secrets: &[(String, String)]) -> Vec<String> {
    let mut leaks = Vec::new();
    for line in text.lines() {
        for (name, value) in secrets {
            if !value.is_empty() && line.contains(value.as_str()) {
                let mut masked = line.to_owned();
                for (_, secret) in secrets {
                    if !secret.is_empty() {
                        masked = masked.replace(secret.as_str(), "<SECRET>");
                    }
                }
                leaks.push(format!("{name}: {masked}"));
            }
        }
    }
    leaks
}
