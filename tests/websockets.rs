//! WebSocket routes through the real gateway to the stand-in, over real TLS.
//!
//! Most tests use the stand-in as the upstream. The relay tests that need an
//! upstream echoing messages, recording close frames or choosing a
//! subprotocol use the harness's `common::echo::EchoUpstream`, because the
//! stand-in does none of these.

// Helper functions unwrap like the tests do, because a failure there is a test failure.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use bytes::Bytes;
use cartesia_gateway::stand_in::RecordedRequest;
use common::echo::{ECHO_CLOSE_COMMAND, start_with_echo_upstream};
use common::*;
use futures_util::{SinkExt, StreamExt};
use http::Request;
use http_body_util::Full;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role};
use tokio_tungstenite::tungstenite::{Error as WsError, Utf8Bytes};

type ClientSocket = WebSocketStream<TlsStream<TcpStream>>;
/// A request header as name and value.
type Header<'a> = (&'a str, &'a str);

/// How long a test waits for one message or response before failing.
const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// The sample key of RFC 6455 section 1.3 and its `Sec-WebSocket-Accept`.
const SAMPLE_KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
const SAMPLE_ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";

/// The query every `/stt/websocket` handshake needs.
const STT_QUERY: &str = "model=ink-whisper&encoding=pcm_s16le&sample_rate=16000";
/// The query every `/stt/turns/websocket` handshake needs.
const TURNS_QUERY: &str = "model=ink-2&encoding=pcm_s16le&sample_rate=16000";

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

#[tokio::test]
async fn tts_websocket_flush_then_done_with_bearer() {
    let harness = Harness::start().await;
    let session = harness.session("alice", &["tts"]);
    let bearer = format!("Bearer {session}");
    let mut socket = harness
        .websocket("/tts/websocket", &[("authorization", &bearer)])
        .await
        .expect("handshake with a bearer session succeeds");

    let first = tts_request("ctx-flush", "First part.", true, true);
    let second = tts_request("ctx-flush", "Second part.", false, false);
    socket.send(Message::text(first.to_string())).await.unwrap();
    socket
        .send(Message::text(second.to_string()))
        .await
        .unwrap();

    let mut kinds: Vec<String> = Vec::new();
    for _ in 0..100 {
        let event = next_json(&mut socket).await;
        let kind = event["type"].as_str().unwrap_or("?").to_owned();
        if kind == "chunk" {
            assert!(
                event["data"].as_str().is_some_and(|data| !data.is_empty()),
                "chunk without audio: {event}"
            );
        }
        if kinds.last() != Some(&kind) {
            kinds.push(kind.clone());
        }
        if kind == "done" || kind == "error" {
            break;
        }
    }
    assert_eq!(
        kinds,
        ["chunk", "flush_done", "chunk", "done"],
        "audio, flush_done after the flushed request, more audio, then done"
    );

    let handshake = only_upstream_handshake(&harness, "/tts/websocket");
    assert_upstream_credentials_clean(&harness, &handshake, &[&session]);
    assert!(
        header_value(&handshake, "cartesia-version").is_some(),
        "the gateway sends its default Cartesia-Version when the client sends none: {handshake:?}"
    );
    socket.close(None).await.unwrap();
}

#[tokio::test]
async fn stt_websocket_transcribes_with_cookie() {
    let harness = Harness::start().await;
    let session = harness.session("alice", &["stt"]);
    let cookie = format!("theme=dark; session={session}");
    let mut socket = harness
        .websocket(
            &format!("/stt/websocket?{STT_QUERY}"),
            &[("cookie", &cookie), ("origin", APP_ORIGIN)],
        )
        .await
        .expect("handshake with a cookie session and an allowed origin succeeds");

    for _ in 0..10 {
        socket.send(Message::binary(silence_100ms())).await.unwrap();
    }
    socket.send(Message::text("finalize")).await.unwrap();
    let transcript = next_json(&mut socket).await;
    assert_eq!(transcript["type"], "transcript", "{transcript}");
    assert_eq!(
        transcript["text"], "received 32000 bytes, 1.00 seconds of audio",
        "every binary byte reached the stand-in"
    );
    assert_eq!(transcript["is_final"], true, "{transcript}");
    let flushed = next_json(&mut socket).await;
    assert_eq!(flushed["type"], "flush_done", "{flushed}");

    for _ in 0..5 {
        socket.send(Message::binary(silence_100ms())).await.unwrap();
    }
    socket.send(Message::text("close")).await.unwrap();
    let last = next_json(&mut socket).await;
    assert_eq!(
        last["text"], " received 16000 bytes, 0.50 seconds of audio",
        "close finalizes the remaining audio: {last}"
    );
    let done = next_json(&mut socket).await;
    assert_eq!(done["type"], "done", "{done}");
    let close = next_close_frame(&mut socket).await;
    assert_eq!(
        close.as_ref().map(|frame| u16::from(frame.code)),
        Some(1000),
        "the stand-in's close code reaches the client"
    );

    let handshake = only_upstream_handshake(&harness, "/stt/websocket");
    assert_upstream_credentials_clean(&harness, &handshake, &[&session, "theme=dark"]);
}

#[tokio::test]
async fn stt_turns_websocket_reports_turns() {
    let harness = Harness::start().await;
    let session = harness.session("alice", &["stt"]);
    let mut socket = harness
        .websocket(
            &format!("/stt/turns/websocket?{TURNS_QUERY}&access_token={session}"),
            &[],
        )
        .await
        .expect("handshake with a query session succeeds");

    let connected = next_json(&mut socket).await;
    assert_eq!(
        connected["type"], "connected",
        "the first message is connected"
    );

    for _ in 0..5 {
        socket.send(Message::binary(tone_100ms())).await.unwrap();
    }
    for _ in 0..6 {
        socket.send(Message::binary(silence_100ms())).await.unwrap();
    }
    let mut kinds = Vec::new();
    let mut end = Value::Null;
    for _ in 0..10 {
        let event = next_json(&mut socket).await;
        kinds.push(event["type"].as_str().unwrap_or("?").to_owned());
        if event["type"] == "turn.end" {
            end = event;
            break;
        }
    }
    assert_eq!(
        kinds,
        ["turn.start", "turn.update", "turn.eager_end", "turn.end"],
        "half a second of speech then silence makes one turn"
    );
    assert_eq!(
        end["transcript"], "received 35200 bytes, 1.10 seconds of audio",
        "{end}"
    );

    socket
        .send(Message::text(r#"{"type":"close"}"#))
        .await
        .unwrap();
    let close = next_close_frame(&mut socket).await;
    assert_eq!(
        close.as_ref().map(|frame| u16::from(frame.code)),
        Some(1000),
        "the close command ends the socket with 1000"
    );

    let handshake = only_upstream_handshake(&harness, "/stt/turns/websocket");
    assert_upstream_credentials_clean(&harness, &handshake, &[&session]);
}

#[tokio::test]
async fn every_credential_kind_reaches_upstream_as_token() {
    let harness = Harness::start().await;
    let session = harness.session("alice", &["stt"]);
    let client_api_key = "client-api-key-value";
    let expected_query = format!("{STT_QUERY}&keyterm=a+b&keyterm=c&cartesia_version=2026-08-14");

    for kind in ["bearer", "cookie", "query"] {
        let bearer = format!("Bearer {session}");
        let cookie = format!("session={session}");
        let (headers, access_token): (Vec<(&str, &str)>, String) = match kind {
            "bearer" => (vec![("authorization", &bearer)], String::new()),
            // A browser sends its Origin with the cookie.
            "cookie" => (
                vec![("cookie", &cookie), ("origin", APP_ORIGIN)],
                String::new(),
            ),
            _ => (Vec::new(), format!("access_token={session}&")),
        };
        let path = format!(
            "/stt/websocket?model=ink-whisper&{access_token}encoding=pcm_s16le&sample_rate=16000\
             &keyterm=a+b&api_key={client_api_key}&keyterm=c&cartesia_version=2026-08-14"
        );
        let mut socket = harness
            .websocket(&path, &headers)
            .await
            .unwrap_or_else(|error| panic!("{kind} handshake failed: {error}"));
        socket.send(Message::binary(silence_100ms())).await.unwrap();
        socket.send(Message::text("finalize")).await.unwrap();
        let transcript = next_json(&mut socket).await;
        assert_eq!(
            transcript["type"], "transcript",
            "{kind}: the session works end to end: {transcript}"
        );
        socket.close(None).await.unwrap();

        let handshake = upstream_handshakes(&harness)
            .pop()
            .expect("the stand-in recorded the handshake");
        assert_eq!(
            handshake.query.as_deref(),
            Some(expected_query.as_str()),
            "{kind}: the query reaches the stand-in byte for byte, without access_token and api_key"
        );
        assert_upstream_credentials_clean(&harness, &handshake, &[&session, client_api_key]);
    }
    assert_eq!(
        upstream_handshakes(&harness).len(),
        3,
        "one upstream handshake per client handshake"
    );
}

#[tokio::test]
async fn handshake_errors_precede_session_check() {
    let harness = Harness::start().await;
    let cases: [(&str, Vec<Header>, u16, &str); 7] = [
        (
            "no Upgrade header",
            upgrade_headers_with("upgrade", None),
            400,
            "invalid_websocket_handshake",
        ),
        (
            "Upgrade is not websocket",
            upgrade_headers_with("upgrade", Some("h2c")),
            400,
            "invalid_websocket_handshake",
        ),
        (
            "Connection without upgrade",
            upgrade_headers_with("connection", Some("keep-alive")),
            400,
            "invalid_websocket_handshake",
        ),
        (
            "version 8",
            upgrade_headers_with("sec-websocket-version", Some("8")),
            426,
            "unsupported_websocket_version",
        ),
        (
            "no version",
            upgrade_headers_with("sec-websocket-version", None),
            426,
            "unsupported_websocket_version",
        ),
        (
            "key of 5 bytes",
            upgrade_headers_with("sec-websocket-key", Some("c2hvcnQ=")),
            400,
            "invalid_websocket_handshake",
        ),
        (
            "no key",
            upgrade_headers_with("sec-websocket-key", None),
            400,
            "invalid_websocket_handshake",
        ),
    ];
    for (case, headers, status, code) in cases {
        // No credential is sent, so a session check before the handshake
        // check would return 401 instead.
        let mut connection = RawConnection::open(&harness).await;
        connection
            .send(&handshake_request("/tts/websocket", &headers))
            .await;
        let response = connection.read_response().await;
        assert_eq!(response.status, status, "{case}: {response:?}");
        assert_eq!(
            response.header("content-type"),
            Some("application/json"),
            "{case}: the error is JSON"
        );
        assert_eq!(response.json()["error"], code, "{case}: {response:?}");
        if status == 426 {
            assert_eq!(
                response.header("sec-websocket-version"),
                Some("13"),
                "{case}: a 426 names the supported version"
            );
        }
    }
    assert!(
        harness.stand_in.requests().is_empty(),
        "no rejected handshake reaches the stand-in: {:?}",
        harness.stand_in.requests()
    );
}

#[tokio::test]
async fn connection_upgrade_token_any_case_or_position() {
    let harness = Harness::start().await;
    let session = harness.session("alice", &["tts"]);
    let bearer = format!("Bearer {session}");
    for connection_value in [
        "keep-alive, Upgrade",
        "UPGRADE, Keep-Alive",
        "keep-alive,upGrade",
    ] {
        let headers = [
            ("connection", connection_value),
            ("upgrade", "WebSocket"),
            ("sec-websocket-version", "13"),
            ("sec-websocket-key", SAMPLE_KEY),
            ("authorization", bearer.as_str()),
        ];

        let mut connection = RawConnection::open(&harness).await;
        connection
            .send(&handshake_request("/tts/websocket", &headers))
            .await;
        let response = connection.read_response().await;
        assert_eq!(
            response.status, 101,
            "Connection: {connection_value} is accepted: {response:?}"
        );
        assert_eq!(
            response.header("sec-websocket-accept"),
            Some(SAMPLE_ACCEPT),
            "the accept value answers the client's key"
        );

        let mut socket = connection.into_websocket().await;
        let request = tts_request("ctx-1", "Hi", false, false);
        socket
            .send(Message::text(request.to_string()))
            .await
            .unwrap();
        let event = next_json(&mut socket).await;
        assert_eq!(
            event["type"], "chunk",
            "Connection: {connection_value}: the socket carries audio: {event}"
        );
        socket.close(None).await.unwrap();
    }
}

#[tokio::test]
async fn post_to_websocket_route_is_405() {
    let harness = Harness::start().await;
    let session = harness.session("alice", &["tts", "stt"]);
    for path in ["/tts/websocket", "/stt/websocket", "/stt/turns/websocket"] {
        let request = Request::post(format!("{}{path}", harness.url()))
            .header("authorization", format!("Bearer {session}"))
            .body(Full::new(Bytes::from_static(b"{}")))
            .unwrap();
        let (response, body) = harness.send(request).await;
        assert_eq!(response.status(), 405, "{path}: {body:?}");
        assert_eq!(
            response
                .headers()
                .get("allow")
                .map(|value| value.as_bytes()),
            Some(&b"GET"[..]),
            "{path}: Allow names GET"
        );
    }
    assert!(
        harness.stand_in.requests().is_empty(),
        "a wrong method is never forwarded"
    );
}

#[tokio::test]
async fn offered_subprotocols_bound_the_answer() {
    let harness = Harness::start().await;
    let session = harness.session("alice", &["tts"]);
    let bearer = format!("Bearer {session}");
    let mut headers = upgrade_headers_with("authorization", Some(&bearer));
    headers.push(("sec-websocket-protocol", "chat, superchat"));

    let mut connection = RawConnection::open(&harness).await;
    connection
        .send(&handshake_request("/tts/websocket", &headers))
        .await;
    let response = connection.read_response().await;
    assert_eq!(response.status, 101, "{response:?}");
    if let Some(chosen) = response.header("sec-websocket-protocol") {
        assert!(
            ["chat", "superchat"].contains(&chosen),
            "the 101 names a subprotocol the client did not offer: {chosen}"
        );
    }

    let handshake = only_upstream_handshake(&harness, "/tts/websocket");
    assert_eq!(
        header_value(&handshake, "sec-websocket-protocol"),
        Some("chat, superchat"),
        "the client's offer reaches the stand-in"
    );
}

#[tokio::test]
async fn permessage_deflate_is_never_negotiated() {
    let harness = Harness::start().await;
    let session = harness.session("alice", &["tts"]);
    let bearer = format!("Bearer {session}");
    let mut headers = upgrade_headers_with("authorization", Some(&bearer));
    headers.push((
        "sec-websocket-extensions",
        "permessage-deflate; client_max_window_bits",
    ));

    let mut connection = RawConnection::open(&harness).await;
    connection
        .send(&handshake_request("/tts/websocket", &headers))
        .await;
    let response = connection.read_response().await;
    assert_eq!(response.status, 101, "{response:?}");
    assert_eq!(
        response.header("sec-websocket-extensions"),
        None,
        "the gateway accepts no extension"
    );
    let handshake = only_upstream_handshake(&harness, "/tts/websocket");
    assert_eq!(
        header_value(&handshake, "sec-websocket-extensions"),
        None,
        "the gateway offers no extension upstream"
    );

    // Uncompressed frames parse without the extension.
    let mut socket = connection.into_websocket().await;
    let request = tts_request("ctx-1", "Plain frames", false, false);
    socket
        .send(Message::text(request.to_string()))
        .await
        .unwrap();
    let event = next_json(&mut socket).await;
    assert_eq!(event["type"], "chunk", "{event}");
}

#[tokio::test]
async fn upstream_refusal_keeps_connection_plain_http() {
    let harness = Harness::start().await;
    let session = harness.session("alice", &["stt"]);
    let bearer = format!("Bearer {session}");
    let headers = upgrade_headers_with("authorization", Some(&bearer));
    let mut connection = RawConnection::open(&harness).await;

    // The stand-in rejects an STT handshake without `model` with 400.
    connection
        .send(&handshake_request(
            "/stt/websocket?encoding=pcm_s16le&sample_rate=16000",
            &headers,
        ))
        .await;
    let refused = connection.read_response().await;
    assert_eq!(refused.status, 400, "{refused:?}");
    let body = refused.json();
    assert_eq!(
        body["error_code"], "missing_parameter",
        "the stand-in's own body reaches the client: {body}"
    );
    assert!(
        body["message"]
            .as_str()
            .is_some_and(|text| text.contains("model")),
        "{body}"
    );
    assert_eq!(
        refused.header("sec-websocket-accept"),
        None,
        "a refused upgrade is not answered as an upgrade"
    );

    // The same connection still speaks HTTP and checks sessions.
    connection
        .send(&handshake_request(
            "/tts/websocket",
            &upgrade_headers_with("authorization", None),
        ))
        .await;
    let unauthenticated_upgrade = connection.read_response().await;
    assert_eq!(
        unauthenticated_upgrade.status, 401,
        "a handshake without a session on the same connection: {unauthenticated_upgrade:?}"
    );
    assert_eq!(unauthenticated_upgrade.json()["error"], "missing_session");

    let body = tts_bytes_body("Hello").to_string();
    connection
        .send(&format!(
            "POST /tts/bytes HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/json\r\n\
             content-length: {}\r\n\r\n{body}",
            body.len()
        ))
        .await;
    let unauthenticated_post = connection.read_response().await;
    assert_eq!(
        unauthenticated_post.status, 401,
        "a POST without a session on the same connection: {unauthenticated_post:?}"
    );
    assert_eq!(unauthenticated_post.json()["error"], "missing_session");

    let forwarded: Vec<RecordedRequest> = harness
        .stand_in
        .requests()
        .into_iter()
        .filter(|request| request.path != "/access-token")
        .collect();
    assert_eq!(
        forwarded.len(),
        1,
        "only the refused handshake reached the stand-in: {forwarded:?}"
    );
}

#[tokio::test]
async fn injected_upgrade_refusal_reaches_client() {
    let harness = Harness::start().await;
    harness.stand_in.faults().refuse_upgrades_with(Some(429));
    let session = harness.session("alice", &["tts"]);
    let bearer = format!("Bearer {session}");
    let mut connection = RawConnection::open(&harness).await;
    connection
        .send(&handshake_request(
            "/tts/websocket",
            &upgrade_headers_with("authorization", Some(&bearer)),
        ))
        .await;
    let response = connection.read_response().await;
    assert_eq!(response.status, 429, "{response:?}");
    assert_eq!(
        response.json()["error_code"],
        "injected_fault",
        "the stand-in's body reaches the client"
    );
}

#[tokio::test]
async fn relay_passes_text_binary_and_pings() {
    let (harness, _echo) = start_with_echo_upstream(Options::default()).await;
    let mut socket = open_echo_socket(&harness).await;

    let text = "héllo ✓ over the relay";
    socket.send(Message::text(text)).await.unwrap();
    assert_eq!(
        next_data_message(&mut socket).await,
        Message::text(text),
        "a text message comes back unchanged"
    );

    let small = vec![0u8, 1, 2, 254, 255];
    let large: Vec<u8> = (0..300_000u32).map(|n| (n % 251) as u8).collect();
    for payload in [small, large] {
        let length = payload.len();
        socket.send(Message::binary(payload.clone())).await.unwrap();
        assert_eq!(
            next_data_message(&mut socket).await,
            Message::binary(payload),
            "a binary message of {length} bytes comes back unchanged"
        );
    }

    let ping = Bytes::from_static(b"are you there");
    socket.send(Message::Ping(ping.clone())).await.unwrap();
    socket.send(Message::text("after the ping")).await.unwrap();
    let mut pongs = Vec::new();
    for _ in 0..10 {
        match next_message(&mut socket).await {
            Message::Pong(payload) => pongs.push(payload),
            Message::Text(text) if text.as_str() == "after the ping" => break,
            other => panic!("unexpected message {other:?}"),
        }
    }
    assert!(!pongs.is_empty(), "the ping got a pong");
    assert!(
        pongs.iter().all(|payload| *payload == ping),
        "pongs carry the ping's payload: {pongs:?}"
    );
    socket.close(None).await.unwrap();
}

#[tokio::test]
async fn client_close_code_reaches_upstream() {
    let (harness, echo) = start_with_echo_upstream(Options::default()).await;
    let mut socket = open_echo_socket(&harness).await;
    socket.send(Message::text("warm up")).await.unwrap();
    next_data_message(&mut socket).await;

    socket
        .send(Message::Close(Some(CloseFrame {
            code: CloseCode::from(4001),
            reason: Utf8Bytes::from_static("bye"),
        })))
        .await
        .unwrap();
    let answer = next_close_frame(&mut socket).await;
    assert_eq!(
        answer.as_ref().map(|frame| u16::from(frame.code)),
        Some(4001),
        "the client's close is answered with its code"
    );
    assert!(
        eventually(|| echo.closes().contains(&(4001, "bye".to_owned()))).await,
        "the upstream received code 4001 and reason bye: {:?}",
        echo.closes()
    );
}

#[tokio::test]
async fn upstream_close_code_reaches_client() {
    let (harness, echo) = start_with_echo_upstream(Options::default()).await;
    let mut socket = open_echo_socket(&harness).await;
    socket
        .send(Message::text(ECHO_CLOSE_COMMAND))
        .await
        .unwrap();
    let close = next_close_frame(&mut socket)
        .await
        .expect("the upstream's close frame carries a code");
    assert_eq!(u16::from(close.code), 4002, "the upstream's code arrives");
    assert_eq!(
        close.reason.as_str(),
        "upstream bye",
        "the upstream's reason arrives"
    );
    assert!(
        eventually(|| echo.closes().contains(&(4002, "upstream bye".to_owned()))).await,
        "the upstream's close frame is answered: {:?}",
        echo.closes()
    );
}

#[tokio::test]
async fn upstream_subprotocol_choice_is_checked() {
    let (harness, echo) = start_with_echo_upstream(Options::default()).await;
    let session = harness.session("alice", &["tts"]);
    let bearer = format!("Bearer {session}");
    let mut headers = upgrade_headers_with("authorization", Some(&bearer));
    headers.push(("sec-websocket-protocol", "chat, superchat"));

    let mut connection = RawConnection::open(&harness).await;
    connection
        .send(&handshake_request("/tts/websocket", &headers))
        .await;
    let response = connection.read_response().await;
    assert_eq!(response.status, 101, "{response:?}");
    assert_eq!(
        response.header("sec-websocket-protocol"),
        Some("superchat"),
        "the upstream's choice among the offered subprotocols reaches the client"
    );

    echo.force_protocol("not-offered");
    let mut connection = RawConnection::open(&harness).await;
    connection
        .send(&handshake_request("/tts/websocket", &headers))
        .await;
    let response = connection.read_response().await;
    assert_eq!(
        response.status, 502,
        "an upstream choosing a subprotocol nobody offered is an upstream error: {response:?}"
    );
    assert_eq!(response.json()["error"], "upstream_protocol_error");
}

#[tokio::test]
async fn shutdown_closes_websocket_with_1001() {
    let mut harness = Harness::start().await;
    let session = harness.session("alice", &["tts"]);
    let bearer = format!("Bearer {session}");
    let mut socket = harness
        .websocket("/tts/websocket", &[("authorization", &bearer)])
        .await
        .expect("handshake succeeds");
    let request = tts_request("ctx-1", "Hi", false, false);
    socket
        .send(Message::text(request.to_string()))
        .await
        .unwrap();
    assert_eq!(next_json(&mut socket).await["type"], "chunk");

    let reader = tokio::spawn(async move { next_close_frame(&mut socket).await });
    let started = tokio::time::Instant::now();
    let stopped = tokio::time::timeout(Duration::from_secs(4), harness.stop()).await;
    assert!(
        stopped.is_ok(),
        "stop() returns within 4 s with a WebSocket open"
    );
    let close = tokio::time::timeout(READ_TIMEOUT, reader)
        .await
        .expect("the client sees the close frame")
        .unwrap();
    assert_eq!(
        close.as_ref().map(|frame| u16::from(frame.code)),
        Some(1001),
        "shutdown closes with 1001 (going away) after {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn invalid_session_websocket_gets_401() {
    let harness = Harness::start().await;
    let expired = session_token(json!({
        "sub": "alice",
        "grants": ["tts"],
        "aud": "cartesia-gateway-tests",
        "exp": unix_now() - 3600,
    }));
    let valid = harness.session("alice", &["tts"]);
    let other = harness.session("mallory", &["tts"]);
    let forged = format!(
        "{}.{}",
        valid.rsplit_once('.').unwrap().0,
        other.rsplit_once('.').unwrap().1
    );
    let bearer_forged = format!("Bearer {forged}");
    let cases: [(&str, String, Option<Header>, &str); 4] = [
        ("no credential", String::new(), None, "missing_session"),
        (
            "expired query session",
            format!("?access_token={expired}"),
            None,
            "session_expired",
        ),
        (
            "bearer with another token's signature",
            String::new(),
            Some(("authorization", &bearer_forged)),
            "invalid_session",
        ),
        (
            "cookie that is not a JWT",
            String::new(),
            Some(("cookie", "session=not-a-jwt")),
            "invalid_session",
        ),
    ];
    for (case, query, credential, code) in cases {
        let mut headers = upgrade_headers_with("authorization", None);
        headers.extend(credential);
        let mut connection = RawConnection::open(&harness).await;
        connection
            .send(&handshake_request(
                &format!("/tts/websocket{query}"),
                &headers,
            ))
            .await;
        let response = connection.read_response().await;
        assert_eq!(response.status, 401, "{case}: {response:?}");
        assert_eq!(response.json()["error"], code, "{case}");
    }
    assert!(
        harness.stand_in.requests().is_empty(),
        "the stand-in saw no request: {:?}",
        harness.stand_in.requests()
    );
}

#[tokio::test]
async fn websocket_without_grant_gets_403() {
    let harness = Harness::start().await;
    let stt_only = harness.session("alice", &["stt"]);
    let tts_only = harness.session("bob", &["tts"]);
    let cases = [
        (format!("/tts/websocket?access_token={stt_only}"), "tts"),
        (
            format!("/stt/websocket?{STT_QUERY}&access_token={tts_only}"),
            "stt",
        ),
        (
            format!("/stt/turns/websocket?{TURNS_QUERY}&access_token={tts_only}"),
            "stt",
        ),
    ];
    for (path, grant) in cases {
        let mut connection = RawConnection::open(&harness).await;
        connection
            .send(&handshake_request(
                &path,
                &upgrade_headers_with("authorization", None),
            ))
            .await;
        let response = connection.read_response().await;
        assert_eq!(
            response.status, 403,
            "a session without {grant}: {response:?}"
        );
        assert_eq!(response.json()["error"], "grant_missing");
    }
    assert!(
        harness.stand_in.requests().is_empty(),
        "the stand-in saw no request and minted nothing: {:?}",
        harness.stand_in.requests()
    );
}

// ---------------------------------------------------------------------------
// Stand-in records

/// Returns the WebSocket handshakes the stand-in received, oldest first.
fn upstream_handshakes(harness: &Harness) -> Vec<RecordedRequest> {
    harness
        .stand_in
        .requests()
        .into_iter()
        .filter(|request| request.websocket)
        .collect()
}

/// Returns the only WebSocket handshake the stand-in received and checks
/// its path.
fn only_upstream_handshake(harness: &Harness, path: &str) -> RecordedRequest {
    let mut handshakes = upstream_handshakes(harness);
    assert_eq!(
        handshakes.len(),
        1,
        "one upstream handshake: {handshakes:?}"
    );
    let handshake = handshakes.remove(0);
    assert_eq!(handshake.path, path, "{handshake:?}");
    handshake
}

fn header_value<'a>(request: &'a RecordedRequest, name: &str) -> Option<&'a str> {
    request
        .headers
        .iter()
        .find(|(header, _)| header == name)
        .map(|(_, value)| value.as_str())
}

/// Checks that a forwarded handshake carries one of the stand-in's own
/// tokens as its only credential, no cookie, and none of `client_secrets`
/// in any header or in the query.
fn assert_upstream_credentials_clean(
    harness: &Harness,
    handshake: &RecordedRequest,
    client_secrets: &[&str],
) {
    let issued = harness.stand_in.issued_tokens();
    let credential = handshake
        .credential
        .as_deref()
        .expect("the handshake carries a credential");
    assert!(
        issued.iter().any(|token| token == credential),
        "the credential is a token the stand-in minted"
    );
    assert_eq!(
        header_value(handshake, "authorization").map(str::to_owned),
        Some(format!("Bearer {credential}")),
        "the minted token travels as a bearer header"
    );
    assert_eq!(
        header_value(handshake, "cookie"),
        None,
        "no cookie is forwarded"
    );
    for secret in client_secrets {
        let in_headers = handshake
            .headers
            .iter()
            .any(|(_, value)| value.contains(secret));
        assert!(
            !in_headers,
            "a client credential reached the stand-in's headers"
        );
        let in_query = handshake
            .query
            .as_deref()
            .is_some_and(|query| query.contains(secret));
        assert!(
            !in_query,
            "a client credential reached the stand-in's query"
        );
    }
}

// ---------------------------------------------------------------------------
// Messages and audio

/// Builds a TTS WebSocket generation request for 16 kHz raw PCM.
fn tts_request(context_id: &str, transcript: &str, flush: bool, continue_: bool) -> Value {
    json!({
        "context_id": context_id,
        "model_id": "sonic-3",
        "transcript": transcript,
        "voice": {"mode": "id", "id": "a0e99841-438c-4a64-b679-ae501e7d6091"},
        "output_format": {"container": "raw", "encoding": "pcm_s16le", "sample_rate": 16000},
        "flush": flush,
        "continue": continue_,
    })
}

/// Returns 100 ms of a 440 Hz tone at half of full scale, 16 kHz `pcm_s16le`.
fn tone_100ms() -> Vec<u8> {
    (0..1600u32)
        .flat_map(|n| {
            let phase = f64::from(n) * 2.0 * std::f64::consts::PI * 440.0 / 16_000.0;
            let sample = (phase.sin() * 0.5 * f64::from(i16::MAX)) as i16;
            sample.to_le_bytes()
        })
        .collect()
}

/// Returns 100 ms of silence, 16 kHz `pcm_s16le`.
fn silence_100ms() -> Vec<u8> {
    vec![0; 3200]
}

/// Reads the next message, failing the test after [`READ_TIMEOUT`] or when
/// the socket ends.
async fn next_message(socket: &mut ClientSocket) -> Message {
    match tokio::time::timeout(READ_TIMEOUT, socket.next()).await {
        Ok(Some(Ok(message))) => message,
        Ok(Some(Err(error))) => panic!("reading the WebSocket failed: {error}"),
        Ok(None) => panic!("the WebSocket ended"),
        Err(_) => panic!("no message within {READ_TIMEOUT:?}"),
    }
}

/// Reads the next text or binary message, skipping pings and pongs.
async fn next_data_message(socket: &mut ClientSocket) -> Message {
    for _ in 0..100 {
        let message = next_message(socket).await;
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

/// Reads until a close frame arrives and returns it, then keeps reading so
/// the close handshake completes. Data messages before it fail the test.
async fn next_close_frame(socket: &mut ClientSocket) -> Option<CloseFrame> {
    let frame = loop {
        match next_message(socket).await {
            Message::Close(frame) => break frame,
            Message::Ping(_) | Message::Pong(_) => {}
            other => panic!("expected a close frame, got {other:?}"),
        }
    };
    let _ = tokio::time::timeout(READ_TIMEOUT, async {
        while let Some(Ok(_)) = socket.next().await {}
    })
    .await;
    frame
}

// ---------------------------------------------------------------------------
// Raw HTTP/1.1

/// The client handshake headers with a valid sample key.
const UPGRADE_HEADERS: [(&str, &str); 4] = [
    ("connection", "Upgrade"),
    ("upgrade", "websocket"),
    ("sec-websocket-version", "13"),
    ("sec-websocket-key", SAMPLE_KEY),
];

/// Returns the valid handshake headers with `name` set to `value`, or removed when
/// `value` is `None`.
fn upgrade_headers_with<'a>(name: &'a str, value: Option<&'a str>) -> Vec<(&'a str, &'a str)> {
    let mut headers: Vec<(&str, &str)> = UPGRADE_HEADERS
        .iter()
        .copied()
        .filter(|(header, _)| *header != name)
        .collect();
    headers.extend(value.map(|value| (name, value)));
    headers
}

/// Formats a `GET` request with `headers` and no body.
fn handshake_request(path_and_query: &str, headers: &[(&str, &str)]) -> String {
    let mut request = format!("GET {path_and_query} HTTP/1.1\r\nhost: localhost\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    request
}

/// An HTTP/1.1 connection over TLS that sends requests as written and
/// parses responses by hand, so one connection can carry several requests
/// and handshakes can carry headers a WebSocket library would not send.
struct RawConnection {
    stream: TlsStream<TcpStream>,
    /// Bytes read but not yet parsed.
    buffer: Vec<u8>,
}

#[derive(Debug)]
struct RawResponse {
    status: u16,
    /// Header names in lower case.
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl RawResponse {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(header, _)| header == name)
            .map(|(_, value)| value.as_str())
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|error| {
            panic!(
                "the body is not JSON ({error}): {}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }
}

impl RawConnection {
    async fn open(harness: &Harness) -> RawConnection {
        RawConnection {
            stream: harness.tls_connect().await,
            buffer: Vec::new(),
        }
    }

    async fn send(&mut self, request: &str) {
        self.stream.write_all(request.as_bytes()).await.unwrap();
        self.stream.flush().await.unwrap();
    }

    /// Reads one response, its body framed by `content-length` or chunked
    /// transfer coding. A 101 has no body, and the bytes after its head stay in
    /// the buffer for [`RawConnection::into_websocket`].
    async fn read_response(&mut self) -> RawResponse {
        tokio::time::timeout(READ_TIMEOUT, self.read_response_inner())
            .await
            .expect("a complete response within the read timeout")
    }

    async fn read_response_inner(&mut self) -> RawResponse {
        let head_end = self.fill_until(b"\r\n\r\n").await;
        let head = String::from_utf8(self.buffer.drain(..head_end + 4).collect()).unwrap();
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
        let mut response = RawResponse {
            status,
            headers,
            body: Vec::new(),
        };
        if status == 101 || status == 204 || status == 304 {
            return response;
        }
        if response
            .header("transfer-encoding")
            .is_some_and(|coding| coding.eq_ignore_ascii_case("chunked"))
        {
            response.body = self.read_chunked_body().await;
        } else {
            let length: usize = response
                .header("content-length")
                .expect("a response on a kept-alive connection has a length")
                .parse()
                .unwrap();
            self.fill_to(length).await;
            response.body = self.buffer.drain(..length).collect();
        }
        response
    }

    async fn read_chunked_body(&mut self) -> Vec<u8> {
        let mut body = Vec::new();
        loop {
            let line_end = self.fill_until(b"\r\n").await;
            let line = String::from_utf8(self.buffer.drain(..line_end + 2).collect()).unwrap();
            let size_text = line.trim_end().split(';').next().unwrap_or_default();
            let size = usize::from_str_radix(size_text.trim(), 16).unwrap();
            if size == 0 {
                // Skip trailers up to the empty line.
                loop {
                    let end = self.fill_until(b"\r\n").await;
                    self.buffer.drain(..end + 2);
                    if end == 0 {
                        return body;
                    }
                }
            }
            self.fill_to(size + 2).await;
            body.extend(self.buffer.drain(..size));
            self.buffer.drain(..2);
        }
    }

    /// Reads until `needle` is in the buffer and returns its position.
    async fn fill_until(&mut self, needle: &[u8]) -> usize {
        loop {
            if let Some(position) = self
                .buffer
                .windows(needle.len())
                .position(|window| window == needle)
            {
                return position;
            }
            self.read_more().await;
        }
    }

    async fn fill_to(&mut self, length: usize) {
        while self.buffer.len() < length {
            self.read_more().await;
        }
    }

    async fn read_more(&mut self) {
        let mut chunk = [0u8; 8192];
        let read = self.stream.read(&mut chunk).await.unwrap();
        assert!(read > 0, "the gateway closed the connection");
        self.buffer.extend_from_slice(&chunk[..read]);
    }

    /// Turns the connection into a client WebSocket after a 101.
    async fn into_websocket(self) -> ClientSocket {
        WebSocketStream::from_partially_read(self.stream, self.buffer, Role::Client, None).await
    }
}

// ---------------------------------------------------------------------------
// Echo upstream

/// Opens a TTS WebSocket through the gateway to the echo upstream.
async fn open_echo_socket(harness: &Harness) -> ClientSocket {
    let session = harness.session("alice", &["tts"]);
    let bearer = format!("Bearer {session}");
    match harness
        .websocket("/tts/websocket", &[("authorization", &bearer)])
        .await
    {
        Ok(socket) => socket,
        Err(WsError::Http(response)) => panic!(
            "the handshake got {}: {:?}",
            response.status(),
            response.body().as_deref().map(String::from_utf8_lossy)
        ),
        Err(error) => panic!("the handshake failed: {error}"),
    }
}
