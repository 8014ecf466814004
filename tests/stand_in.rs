//! The Cartesia stand-in over real TLS on 127.0.0.1, driven by plain Rust clients: hyper with
//! hyper-rustls for HTTP/1.1 and HTTP/2, tokio-tungstenite over tokio-rustls for WebSockets.
#![cfg(feature = "stand-in")]

use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::{STANDARD as BASE64, URL_SAFE_NO_PAD};
use bytes::Bytes;
use cartesia_gateway::stand_in::StandIn;
use futures_util::{SinkExt, StreamExt};
use http::{Request, Response, StatusCode, Version};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio::sync::{Semaphore, oneshot};
use tokio::task::JoinHandle;
use tokio::time::timeout;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Error as WsError, Message, Utf8Bytes};

const API_KEY: &str = "sk_car_integration_test_key";
const VERSION: &str = "2026-08-14";
/// 12 characters at 60 ms each: 720 ms, 11 520 samples at 16 kHz, eight 100 ms chunks.
const TRANSCRIPT: &str = "Hello there.";
const SAMPLES: usize = 11_520;
const WAIT: Duration = Duration::from_secs(5);

type WebSocket = WebSocketStream<TlsStream<TcpStream>>;
type HttpClient = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

struct Harness {
    stand_in: StandIn,
    port: u16,
    roots: rustls::RootCertStore,
    http: HttpClient,
    stop: Option<oneshot::Sender<()>>,
    server: JoinHandle<std::io::Result<()>>,
}

/// Makes a CA and a leaf certificate for 127.0.0.1 and localhost, and returns the server config and
/// the client roots.
fn test_pki() -> (rustls::ServerConfig, rustls::RootCertStore) {
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "stand-in test CA");
    let ca =
        CertifiedIssuer::self_signed(ca_params, KeyPair::generate().expect("CA key")).expect("CA");

    let leaf_key = KeyPair::generate().expect("leaf key");
    let mut leaf_params =
        CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
            .expect("leaf params");
    leaf_params
        .distinguished_name
        .push(DnType::CommonName, "localhost");
    let leaf = leaf_params.signed_by(&leaf_key, &ca).expect("leaf");

    let server = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(
            vec![leaf.der().clone()],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der())),
        )
        .expect("server config");
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from(ca.der().to_vec()))
        .expect("CA root");
    (server, roots)
}

fn client_config(roots: &rustls::RootCertStore) -> rustls::ClientConfig {
    rustls::ClientConfig::builder()
        .with_root_certificates(roots.clone())
        .with_no_client_auth()
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Protocols {
    /// ALPN offers `h2` and `http/1.1`; the stand-in picks `h2`.
    Both,
    Http1Only,
    Http2Only,
}

fn http_client(roots: &rustls::RootCertStore, protocols: Protocols) -> HttpClient {
    let builder = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(client_config(roots))
        .https_only();
    let connector = match protocols {
        Protocols::Both => builder.enable_http1().enable_http2().build(),
        Protocols::Http1Only => builder.enable_http1().build(),
        Protocols::Http2Only => builder.enable_http2().build(),
    };
    Client::builder(TokioExecutor::new())
        .http2_only(protocols == Protocols::Http2Only)
        .build(connector)
}

async fn start() -> Harness {
    let (server_config, roots) = test_pki();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("local address").port();
    let stand_in = StandIn::new(API_KEY);
    let (stop, stopped) = oneshot::channel::<()>();
    let shutdown = async move {
        let _ = stopped.await;
    };
    let server = tokio::spawn(
        stand_in
            .clone()
            .serve(listener, Arc::new(server_config), shutdown),
    );
    let http = http_client(&roots, Protocols::Both);
    Harness {
        stand_in,
        port,
        roots,
        http,
        stop: Some(stop),
        server,
    }
}

impl Harness {
    fn url(&self, path_and_query: &str) -> String {
        format!("https://127.0.0.1:{}{path_and_query}", self.port)
    }

    async fn send(&self, request: Request<Full<Bytes>>) -> Response<Incoming> {
        timeout(WAIT, self.http.request(request))
            .await
            .expect("response in time")
            .expect("HTTP exchange")
    }

    /// POSTs a body with the given headers; `Cartesia-Version` is added unless `headers` names it.
    async fn post(
        &self,
        path: &str,
        headers: &[(&str, &str)],
        body: impl Into<Bytes>,
    ) -> Response<Incoming> {
        let mut builder = Request::post(self.url(path));
        if !headers
            .iter()
            .any(|(name, _)| name.eq_ignore_ascii_case("cartesia-version"))
        {
            builder = builder.header("cartesia-version", VERSION);
        }
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        let request = builder.body(Full::new(body.into())).expect("request");
        self.send(request).await
    }

    async fn post_json(&self, path: &str, credential: &str, body: &Value) -> Response<Incoming> {
        let bearer = format!("Bearer {credential}");
        let headers = [
            ("authorization", bearer.as_str()),
            ("content-type", "application/json"),
        ];
        self.post(path, &headers, body.to_string()).await
    }

    async fn mint(&self, grants: Value) -> String {
        let response = self
            .post_json(
                "/access-token",
                API_KEY,
                &json!({"grants": grants, "expires_in": 300}),
            )
            .await;
        assert_eq!(response.status(), StatusCode::OK);
        let body = body_json(response).await;
        body["token"].as_str().expect("token string").to_owned()
    }

    /// Sends a WebSocket handshake as a plain HTTP/1.1 request and returns
    /// the refusal's status and JSON body. tungstenite's error carries only
    /// the body bytes that arrived with the head, so it is not used here.
    async fn refused_handshake(
        &self,
        path_and_query: &str,
        headers: &[(&str, &str)],
    ) -> (StatusCode, Value) {
        let mut builder = Request::get(self.url(path_and_query))
            .header("connection", "Upgrade")
            .header("upgrade", "websocket")
            .header("sec-websocket-version", "13")
            .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==");
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        let request = builder.body(Full::new(Bytes::new())).expect("request");
        let client = http_client(&self.roots, Protocols::Http1Only);
        let response = timeout(WAIT, client.request(request))
            .await
            .expect("response in time")
            .expect("HTTP exchange");
        let status = response.status();
        (status, body_json(response).await)
    }

    /// Opens a WebSocket; `headers` are added to the handshake as given.
    async fn websocket(
        &self,
        path_and_query: &str,
        headers: &[(&str, &str)],
    ) -> Result<WebSocket, WsError> {
        let tcp = TcpStream::connect(("127.0.0.1", self.port))
            .await
            .expect("TCP connect");
        let connector = TlsConnector::from(Arc::new(client_config(&self.roots)));
        let server_name = ServerName::try_from("127.0.0.1").expect("server name");
        let tls = connector
            .connect(server_name, tcp)
            .await
            .expect("TLS handshake");
        let url = format!("wss://127.0.0.1:{}{path_and_query}", self.port);
        let mut request = url.into_client_request().expect("client request");
        for (name, value) in headers {
            let name = http::HeaderName::from_bytes(name.as_bytes()).expect("header name");
            request
                .headers_mut()
                .insert(name, value.parse().expect("header value"));
        }
        let (socket, _response) = timeout(WAIT, tokio_tungstenite::client_async(request, tls))
            .await
            .expect("handshake in time")?;
        Ok(socket)
    }

    async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let served = timeout(Duration::from_secs(10), self.server)
            .await
            .expect("serve returns after shutdown");
        served.expect("serve task").expect("serve result");
    }
}

async fn body_bytes(response: Response<Incoming>) -> Bytes {
    timeout(WAIT, response.into_body().collect())
        .await
        .expect("body in time")
        .expect("complete body")
        .to_bytes()
}

async fn body_json(response: Response<Incoming>) -> Value {
    serde_json::from_slice(&body_bytes(response).await).expect("JSON body")
}

/// Asserts a Cartesia-shaped JSON error and returns its body.
async fn expect_error(response: Response<Incoming>, status: StatusCode, code: &str) -> Value {
    assert_eq!(response.status(), status);
    assert_eq!(response.headers()["content-type"], "application/json");
    let body = body_json(response).await;
    assert_eq!(body["error_code"], code, "{body}");
    assert_eq!(body["title"], status.canonical_reason().unwrap_or_default());
    assert!(
        body["message"]
            .as_str()
            .is_some_and(|message| !message.is_empty())
    );
    assert_eq!(body["request_id"].as_str().map(str::len), Some(36));
    body
}

fn tts_body(format: Value) -> Value {
    json!({
        "model_id": "sonic-3",
        "transcript": TRANSCRIPT,
        "voice": {"mode": "id", "id": "a0e99841-438c-4a64-b679-ae501e7d6091"},
        "output_format": format,
    })
}

fn wav_s16() -> Value {
    json!({"container": "wav", "encoding": "pcm_s16le", "sample_rate": 16000})
}

fn raw(encoding: &str) -> Value {
    json!({"container": "raw", "encoding": encoding, "sample_rate": 16000})
}

fn le_u32(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(bytes[at..at + 4].try_into().expect("four bytes"))
}

/// Parses SSE text into `(event name, JSON data)` pairs.
fn parse_sse(text: &str) -> Vec<(String, Value)> {
    text.split("\n\n")
        .filter(|block| !block.trim().is_empty())
        .map(|block| {
            let mut name = String::new();
            let mut data = Value::Null;
            for line in block.lines() {
                if let Some(value) = line.strip_prefix("event: ") {
                    name = value.to_owned();
                } else if let Some(value) = line.strip_prefix("data: ") {
                    data = serde_json::from_str(value).expect("JSON data line");
                }
            }
            (name, data)
        })
        .collect()
}

async fn next_frame(body: &mut Incoming) -> Option<Result<Bytes, hyper::Error>> {
    loop {
        match body.frame().await? {
            Ok(frame) => {
                if let Ok(data) = frame.into_data() {
                    return Some(Ok(data));
                }
            }
            Err(error) => return Some(Err(error)),
        }
    }
}

/// Returns the next text message as JSON, skipping control frames.
async fn next_json(socket: &mut WebSocket) -> Value {
    loop {
        let message = timeout(WAIT, socket.next())
            .await
            .expect("message in time")
            .expect("open socket")
            .expect("valid message");
        match message {
            Message::Text(text) => return serde_json::from_str(&text).expect("JSON message"),
            Message::Close(frame) => panic!("socket closed early: {frame:?}"),
            _ => continue,
        }
    }
}

/// Returns the code of the close frame the server sends next, skipping other messages, then
/// finishes the closing handshake so the server does not wait for the client's close frame.
async fn close_code(socket: &mut WebSocket) -> u16 {
    let code = loop {
        let message = timeout(WAIT, socket.next()).await.expect("close in time");
        match message {
            Some(Ok(Message::Close(Some(frame)))) => break frame.code.into(),
            Some(Ok(_)) => continue,
            other => panic!("expected a close frame, got {other:?}"),
        }
    };
    // Reading further sends tungstenite's automatic close reply and then returns the end of the
    // stream.
    while let Ok(Some(Ok(_))) = timeout(WAIT, socket.next()).await {}
    code
}

fn tone_s16(millis: usize) -> Vec<u8> {
    (0..16 * millis)
        .flat_map(|index| {
            let phase = 2.0 * std::f64::consts::PI * 440.0 * index as f64 / 16_000.0;
            ((0.3 * phase.sin() * 32_767.0) as i16).to_le_bytes()
        })
        .collect()
}

fn decode_jwt_part(token: &str, index: usize) -> Value {
    let part = token.split('.').nth(index).expect("JWT part");
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).expect("base64url")).expect("JSON part")
}

#[tokio::test]
async fn access_token_mints_cartesia_shaped_jwt() {
    let harness = start().await;
    let response = harness
        .post_json(
            "/access-token",
            API_KEY,
            &json!({"grants": {"tts": true}, "expires_in": 60}),
        )
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["content-type"], "application/json");
    let body = body_json(response).await;
    let token = body["token"].as_str().expect("token");
    assert_eq!(
        body.as_object().map(|object| object.len()),
        Some(1),
        "only the token field"
    );

    let header = decode_jwt_part(token, 0);
    assert_eq!(header["alg"], "HS256");
    assert!(
        header["kid"]
            .as_str()
            .is_some_and(|kid| kid.starts_with("ssid_"))
    );
    let payload = decode_jwt_part(token, 1);
    assert_eq!(payload["grants"], json!({"tts": true}));
    assert_eq!(payload["iss"], "https://api.cartesia.ai");
    let issued_at = payload["iat"].as_u64().expect("iat");
    assert_eq!(payload["exp"].as_u64(), Some(issued_at + 60));

    let by_header = harness
        .post(
            "/access-token",
            &[("x-api-key", API_KEY), ("content-type", "application/json")],
            "{}",
        )
        .await;
    assert_eq!(by_header.status(), StatusCode::OK);
    let default_token = body_json(by_header).await;
    let default_payload = decode_jwt_part(default_token["token"].as_str().expect("token"), 1);
    let lifetime = default_payload["exp"]
        .as_u64()
        .zip(default_payload["iat"].as_u64());
    assert_eq!(
        lifetime.map(|(exp, iat)| exp - iat),
        Some(300),
        "default lifetime"
    );

    assert_eq!(harness.stand_in.mint_count(), 2);
    assert_eq!(harness.stand_in.issued_tokens()[0], token);
    harness.stop().await;
}

#[tokio::test]
async fn access_token_rejects_bad_requests() {
    let harness = start().await;
    let token = harness.mint(json!({"tts": true, "stt": true})).await;
    let json_type = ("content-type", "application/json");

    let missing = harness.post("/access-token", &[json_type], "{}").await;
    expect_error(missing, StatusCode::UNAUTHORIZED, "missing_credentials").await;
    let wrong = harness
        .post_json("/access-token", "sk_car_wrong", &json!({}))
        .await;
    expect_error(wrong, StatusCode::UNAUTHORIZED, "invalid_credentials").await;
    let with_token = harness.post_json("/access-token", &token, &json!({})).await;
    expect_error(with_token, StatusCode::UNAUTHORIZED, "invalid_credentials").await;

    let too_long = harness
        .post_json("/access-token", API_KEY, &json!({"expires_in": 3601}))
        .await;
    expect_error(too_long, StatusCode::BAD_REQUEST, "invalid_request").await;
    let bearer = format!("Bearer {API_KEY}");
    let not_json = harness
        .post(
            "/access-token",
            &[("authorization", &bearer), json_type],
            "{grants",
        )
        .await;
    expect_error(not_json, StatusCode::BAD_REQUEST, "invalid_json").await;
    let empty_version = harness
        .post(
            "/access-token",
            &[("authorization", &bearer), ("cartesia-version", "")],
            "{}",
        )
        .await;
    expect_error(empty_version, StatusCode::BAD_REQUEST, "invalid_version").await;

    assert_eq!(
        harness.stand_in.mint_count(),
        1,
        "only the first mint succeeded"
    );
    harness.stop().await;
}

#[tokio::test]
async fn mint_fault_answers_status_without_minting() {
    let harness = start().await;
    harness.stand_in.faults().fail_mints_with(Some(503));
    let response = harness
        .post_json("/access-token", API_KEY, &json!({}))
        .await;
    assert_eq!(response.headers()["x-should-retry"], "false");
    expect_error(response, StatusCode::SERVICE_UNAVAILABLE, "injected_fault").await;
    assert_eq!(harness.stand_in.mint_count(), 0);

    harness.stand_in.faults().fail_mints_with(None);
    harness.mint(json!({"tts": true})).await;
    assert_eq!(harness.stand_in.mint_count(), 1);
    harness.stop().await;
}

#[tokio::test]
async fn tts_bytes_streams_valid_wav() {
    let harness = start().await;
    let token = harness.mint(json!({"tts": true})).await;
    let response = harness
        .post_json("/tts/bytes", &token, &tts_body(wav_s16()))
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["content-type"], "audio/wav");
    assert!(
        response.headers().get("content-length").is_none(),
        "streamed, length unknown"
    );

    let mut body = response.into_body();
    let mut frames = Vec::new();
    while let Some(frame) = timeout(WAIT, next_frame(&mut body))
        .await
        .expect("frame in time")
    {
        frames.push(frame.expect("body frame"));
    }
    assert!(
        frames.len() >= 8,
        "one frame per 100 ms chunk, got {}",
        frames.len()
    );
    let wav: Vec<u8> = frames.concat();
    assert_eq!(wav.len(), 44 + SAMPLES * 2);
    assert_eq!(&wav[0..4], b"RIFF");
    assert_eq!(le_u32(&wav, 4) as usize, wav.len() - 8);
    assert_eq!(&wav[8..16], b"WAVEfmt ");
    assert_eq!(le_u32(&wav, 24), 16_000);
    assert_eq!(&wav[36..40], b"data");
    assert_eq!(le_u32(&wav, 40) as usize, SAMPLES * 2);
    assert!(
        wav[44..].iter().any(|byte| *byte != 0),
        "a tone, not silence"
    );
    harness.stop().await;
}

#[tokio::test]
async fn tts_bytes_raw_encodings_and_save() {
    let harness = start().await;
    for (encoding, bytes_per_sample) in [
        ("pcm_f32le", 4),
        ("pcm_s16le", 2),
        ("pcm_mulaw", 1),
        ("pcm_alaw", 1),
    ] {
        let response = harness
            .post_json("/tts/bytes", API_KEY, &tts_body(raw(encoding)))
            .await;
        assert_eq!(response.status(), StatusCode::OK, "{encoding}");
        assert_eq!(
            response.headers()["content-type"],
            "application/octet-stream"
        );
        assert!(response.headers().get("cartesia-file-id").is_none());
        assert_eq!(
            body_bytes(response).await.len(),
            SAMPLES * bytes_per_sample,
            "{encoding}"
        );
    }

    let mut saved = tts_body(raw("pcm_s16le"));
    saved["save"] = json!(true);
    let response = harness.post_json("/tts/bytes", API_KEY, &saved).await;
    let file_id = response.headers()["cartesia-file-id"]
        .to_str()
        .expect("ASCII id")
        .to_owned();
    assert!(file_id.starts_with("file_"), "{file_id}");
    body_bytes(response).await;
    harness.stop().await;
}

#[tokio::test]
async fn tts_routes_check_credentials_version_and_input() {
    let harness = start().await;
    let stt_only = harness.mint(json!({"stt": true})).await;
    let body = tts_body(wav_s16()).to_string();
    let json_type = ("content-type", "application/json");

    let none = harness.post("/tts/bytes", &[json_type], body.clone()).await;
    expect_error(none, StatusCode::UNAUTHORIZED, "missing_credentials").await;
    let bogus = harness
        .post_json("/tts/bytes", "not-a-token", &tts_body(wav_s16()))
        .await;
    expect_error(bogus, StatusCode::UNAUTHORIZED, "invalid_credentials").await;
    let wrong_grant = harness
        .post_json("/tts/sse", &stt_only, &tts_body(raw("pcm_s16le")))
        .await;
    expect_error(wrong_grant, StatusCode::FORBIDDEN, "missing_grant").await;
    let token_in_query = harness
        .post(
            &format!("/tts/bytes?access_token={stt_only}"),
            &[json_type],
            body.clone(),
        )
        .await;
    expect_error(
        token_in_query,
        StatusCode::UNAUTHORIZED,
        "missing_credentials",
    )
    .await;

    let api_key_header = harness
        .post(
            "/tts/bytes",
            &[("x-api-key", API_KEY), json_type],
            body.clone(),
        )
        .await;
    assert_eq!(api_key_header.status(), StatusCode::OK);
    body_bytes(api_key_header).await;

    let bearer = format!("Bearer {API_KEY}");
    let no_version = Request::post(harness.url("/tts/bytes"))
        .header("authorization", &bearer)
        .body(Full::new(Bytes::from(body.clone())))
        .expect("request");
    expect_error(
        harness.send(no_version).await,
        StatusCode::BAD_REQUEST,
        "missing_version",
    )
    .await;
    let version_in_query = harness
        .post(
            "/tts/bytes?cartesia_version=2024-06-10",
            &[("authorization", &bearer), ("cartesia-version", "x")],
            body,
        )
        .await;
    assert_eq!(
        version_in_query.status(),
        StatusCode::OK,
        "the query version wins"
    );
    body_bytes(version_in_query).await;

    let mp3 = json!({"container": "mp3", "sample_rate": 44100, "bit_rate": 128000});
    let response = harness
        .post_json("/tts/bytes", API_KEY, &tts_body(mp3))
        .await;
    let error = expect_error(
        response,
        StatusCode::BAD_REQUEST,
        "unsupported_output_format",
    )
    .await;
    assert!(
        error["message"]
            .as_str()
            .is_some_and(|message| message.contains("mp3"))
    );
    let mut no_transcript = tts_body(wav_s16());
    no_transcript
        .as_object_mut()
        .expect("object")
        .remove("transcript");
    let response = harness
        .post_json("/tts/bytes", API_KEY, &no_transcript)
        .await;
    expect_error(response, StatusCode::BAD_REQUEST, "invalid_request").await;
    harness.stop().await;
}

#[tokio::test]
async fn tts_sse_sends_chunks_timestamps_and_done() {
    let harness = start().await;
    let token = harness.mint(json!({"tts": true})).await;
    let mut request = tts_body(raw("pcm_s16le"));
    request["add_timestamps"] = json!(true);
    request["context_id"] = json!("sse-1");
    let response = harness.post_json("/tts/sse", &token, &request).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let text = String::from_utf8(body_bytes(response).await.to_vec()).expect("UTF-8 stream");
    assert!(!text.contains("[DONE]"));
    let events = parse_sse(&text);

    let (last_name, last) = events.last().expect("events");
    assert_eq!(last_name, "done");
    assert_eq!(last["done"], true);
    let mut audio = Vec::new();
    let mut words = Vec::new();
    for (name, event) in &events {
        assert_eq!(
            name,
            event["type"].as_str().expect("type"),
            "event name matches type"
        );
        assert_eq!(event["context_id"], "sse-1");
        match name.as_str() {
            "chunk" => {
                assert_eq!(event["done"], false);
                assert_eq!(event["status_code"], 206);
                assert!(event["step_time"].is_number());
                audio.extend(
                    BASE64
                        .decode(event["data"].as_str().expect("data"))
                        .expect("base64"),
                );
            }
            "timestamps" => words.extend(
                event["word_timestamps"]["words"]
                    .as_array()
                    .expect("words")
                    .iter()
                    .map(|word| word.as_str().unwrap_or_default().to_owned()),
            ),
            "done" => {}
            other => panic!("unexpected event {other}"),
        }
    }
    assert_eq!(audio.len(), SAMPLES * 2);
    assert_eq!(words, ["Hello", "there."]);

    let wav = harness
        .post_json("/tts/sse", &token, &tts_body(wav_s16()))
        .await;
    expect_error(wav, StatusCode::BAD_REQUEST, "invalid_request").await;
    harness.stop().await;
}

#[tokio::test]
async fn stream_gate_holds_back_later_chunks() {
    for path in ["/tts/bytes", "/tts/sse"] {
        let harness = start().await;
        let gate = Arc::new(Semaphore::new(0));
        harness
            .stand_in
            .faults()
            .set_stream_gate(Some(gate.clone()));
        let response = harness
            .post_json(path, API_KEY, &tts_body(raw("pcm_s16le")))
            .await;
        assert_eq!(response.status(), StatusCode::OK);
        let mut body = response.into_body();

        let first = timeout(WAIT, next_frame(&mut body))
            .await
            .expect("first chunk in time");
        assert!(
            first.is_some_and(|frame| frame.is_ok()),
            "{path}: first chunk"
        );
        let held = timeout(Duration::from_millis(300), next_frame(&mut body)).await;
        assert!(held.is_err(), "{path}: the second chunk waits for the gate");

        gate.add_permits(100);
        let mut rest = 0;
        while let Some(frame) = timeout(WAIT, next_frame(&mut body))
            .await
            .expect("frame in time")
        {
            rest += frame.expect("body frame").len();
        }
        assert!(rest > 0, "{path}: the rest arrives once the gate opens");
        harness.stop().await;
    }
}

#[tokio::test]
async fn break_stream_after_ends_body_with_error() {
    for path in ["/tts/bytes", "/tts/sse"] {
        let harness = start().await;
        harness.stand_in.faults().break_stream_after(Some(2));
        let response = harness
            .post_json(path, API_KEY, &tts_body(raw("pcm_s16le")))
            .await;
        assert_eq!(response.status(), StatusCode::OK);
        let mut body = response.into_body();
        let mut received = 0;
        let outcome = loop {
            match timeout(WAIT, next_frame(&mut body))
                .await
                .expect("frame in time")
            {
                Some(Ok(frame)) => received += frame.len(),
                Some(Err(error)) => break Err(error),
                None => break Ok(()),
            }
        };
        assert!(outcome.is_err(), "{path}: the body must not end cleanly");
        assert!(received > 0, "{path}: some audio arrived before the break");
        if path == "/tts/bytes" {
            assert_eq!(received, 2 * 1600 * 2, "two 100 ms chunks of 16 kHz s16le");
        }
        harness.stop().await;
    }
}

#[tokio::test]
async fn status_faults_answer_http_and_handshakes() {
    let harness = start().await;
    let faults = harness.stand_in.faults();
    faults.respond_with_status(Some((429, Some(7))));
    let response = harness
        .post_json("/tts/bytes", API_KEY, &tts_body(wav_s16()))
        .await;
    assert_eq!(response.headers()["retry-after"], "7");
    assert_eq!(response.headers()["x-should-retry"], "false");
    expect_error(response, StatusCode::TOO_MANY_REQUESTS, "injected_fault").await;

    let bearer = format!("Bearer {API_KEY}");
    let auth = [
        ("authorization", bearer.as_str()),
        ("cartesia-version", VERSION),
    ];
    let refused = harness.websocket("/tts/websocket", &auth).await;
    let Err(WsError::Http(response)) = refused else {
        panic!("expected an HTTP answer to the handshake");
    };
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);

    faults.respond_with_status(None);
    faults.refuse_upgrades_with(Some(503));
    let refused = harness.websocket("/tts/websocket", &auth).await;
    let Err(WsError::Http(response)) = refused else {
        panic!("expected an HTTP answer to the handshake");
    };
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    let (status, body) = harness.refused_handshake("/tts/websocket", &auth).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(body["error_code"], "injected_fault");
    let still_http = harness
        .post_json("/tts/bytes", API_KEY, &tts_body(wav_s16()))
        .await;
    assert_eq!(
        still_http.status(),
        StatusCode::OK,
        "upgrade refusal leaves HTTP routes alone"
    );
    body_bytes(still_http).await;

    faults.refuse_upgrades_with(None);
    let mut socket = harness
        .websocket("/tts/websocket", &auth)
        .await
        .expect("upgrade");
    socket.close(None).await.expect("close");
    harness.stop().await;
}

#[tokio::test]
async fn tts_websocket_streams_contexts() {
    let harness = start().await;
    let token = harness.mint(json!({"tts": true})).await;
    let bearer = format!("Bearer {token}");
    let mut socket = harness
        .websocket(
            "/tts/websocket",
            &[("authorization", &bearer), ("cartesia-version", VERSION)],
        )
        .await
        .expect("upgrade");

    let mut request = tts_body(raw("pcm_s16le"));
    request["context_id"] = json!("ctx-1");
    request["continue"] = json!(true);
    request["flush"] = json!(true);
    request["add_timestamps"] = json!(true);
    socket
        .send(Message::text(request.to_string()))
        .await
        .expect("send");
    request["transcript"] = json!("");
    request["continue"] = json!(false);
    request["flush"] = json!(false);
    socket
        .send(Message::text(request.to_string()))
        .await
        .expect("send");

    let mut kinds = Vec::new();
    let mut audio = Vec::new();
    loop {
        let message = next_json(&mut socket).await;
        assert_eq!(message["context_id"], "ctx-1");
        let kind = message["type"].as_str().expect("type").to_owned();
        if kind == "chunk" {
            assert_eq!(message["flush_id"], 1);
            audio.extend(
                BASE64
                    .decode(message["data"].as_str().expect("data"))
                    .expect("base64"),
            );
        }
        if kind == "flush_done" {
            assert_eq!(message["flush_id"], 1);
            assert_eq!(message["flush_done"], true);
        }
        kinds.push(kind);
        if kinds.last().is_some_and(|kind| kind == "done") {
            break;
        }
    }
    assert_eq!(audio.len(), SAMPLES * 2);
    assert!(kinds.contains(&"timestamps".to_owned()));
    let tail: Vec<&str> = kinds.iter().rev().take(2).map(String::as_str).collect();
    assert_eq!(tail, ["done", "flush_done"]);

    socket.send(Message::text("{not json")).await.expect("send");
    let error = next_json(&mut socket).await;
    assert_eq!(error["type"], "error");
    assert_eq!(error["done"], true);
    assert_eq!(error["status_code"], 400);
    assert!(error["request_id"].is_string());

    socket
        .send(Message::Ping(Bytes::from_static(b"are you there")))
        .await
        .expect("ping");
    let pong = timeout(WAIT, socket.next()).await.expect("pong in time");
    assert!(
        matches!(pong, Some(Ok(Message::Pong(payload))) if payload.as_ref() == b"are you there")
    );

    let frame = CloseFrame {
        code: CloseCode::Library(4001),
        reason: Utf8Bytes::from_static("client done"),
    };
    socket
        .send(Message::Close(Some(frame)))
        .await
        .expect("close");
    assert_eq!(
        close_code(&mut socket).await,
        4001,
        "the close code is echoed"
    );
    harness.stop().await;
}

#[tokio::test]
async fn tts_websocket_accepts_query_credentials() {
    let harness = start().await;
    let token = harness.mint(json!({"tts": true})).await;
    let query = format!("/tts/websocket?cartesia_version={VERSION}&access_token={token}");
    let mut socket = harness
        .websocket(&query, &[])
        .await
        .expect("upgrade with access_token");
    let mut request = tts_body(raw("pcm_f32le"));
    request["context_id"] = json!("browser");
    socket
        .send(Message::text(request.to_string()))
        .await
        .expect("send");
    let first = next_json(&mut socket).await;
    assert_eq!(first["type"], "chunk");
    socket.close(None).await.expect("close");

    let query = format!("/tts/websocket?cartesia_version={VERSION}&api_key={API_KEY}");
    let mut socket = harness
        .websocket(&query, &[])
        .await
        .expect("legacy api_key query parameter");
    socket.close(None).await.expect("close");

    let recorded = harness.stand_in.requests();
    let handshake = recorded
        .iter()
        .find(|request| {
            request
                .query
                .as_deref()
                .is_some_and(|query| query.contains("access_token"))
        })
        .expect("recorded handshake");
    assert!(handshake.websocket);
    assert_eq!(handshake.credential.as_deref(), Some(token.as_str()));
    assert_eq!(handshake.body_len, 0);
    harness.stop().await;
}

#[tokio::test]
async fn websocket_handshake_failures_are_http_errors() {
    let harness = start().await;
    let tts_only = harness.mint(json!({"tts": true})).await;
    let tts_bearer = format!("Bearer {tts_only}");
    let stt_query = "/stt/websocket?model=ink-whisper&encoding=pcm_s16le&sample_rate=16000";
    let turns_whisper =
        "/stt/turns/websocket?model=ink-whisper&encoding=pcm_s16le&sample_rate=16000";
    let version = ("cartesia-version", VERSION);
    let api_key = ("x-api-key", API_KEY);

    // (path and query, handshake headers, expected status, expected error_code)
    let cases = [
        (
            "/tts/websocket",
            vec![version],
            StatusCode::UNAUTHORIZED,
            "missing_credentials",
        ),
        (
            stt_query,
            vec![("authorization", tts_bearer.as_str()), version],
            StatusCode::FORBIDDEN,
            "missing_grant",
        ),
        (
            "/stt/websocket?model=ink-whisper",
            vec![api_key, version],
            StatusCode::BAD_REQUEST,
            "missing_parameter",
        ),
        (
            turns_whisper,
            vec![api_key, version],
            StatusCode::BAD_REQUEST,
            "model_not_found",
        ),
        (
            stt_query,
            vec![api_key],
            StatusCode::BAD_REQUEST,
            "missing_version",
        ),
    ];
    for (path, headers, status, code) in cases {
        let Err(WsError::Http(response)) = harness.websocket(path, &headers).await else {
            panic!("{path}: expected an HTTP answer");
        };
        assert_eq!(response.status(), status, "{path}");
        let (refused_status, body) = harness.refused_handshake(path, &headers).await;
        assert_eq!(refused_status, status, "{path}");
        assert_eq!(body["error_code"], code, "{path}");
    }

    for protocols in [Protocols::Http1Only, Protocols::Http2Only] {
        let client = http_client(&harness.roots, protocols);
        let plain_get = Request::get(harness.url("/tts/websocket"))
            .header("x-api-key", API_KEY)
            .header("cartesia-version", VERSION)
            .body(Full::new(Bytes::new()))
            .expect("request");
        let response = timeout(WAIT, client.request(plain_get))
            .await
            .expect("in time")
            .expect("exchange");
        if protocols == Protocols::Http1Only {
            assert_eq!(response.headers()["upgrade"], "websocket");
        }
        expect_error(response, StatusCode::UPGRADE_REQUIRED, "upgrade_required").await;
    }
    harness.stop().await;
}

#[tokio::test]
async fn stt_websocket_transcribes_finalized_audio() {
    let harness = start().await;
    let token = harness.mint(json!({"stt": true})).await;
    let bearer = format!("Bearer {token}");
    let mut socket = harness
        .websocket(
            "/stt/websocket?model=ink-whisper&encoding=pcm_s16le&sample_rate=16000&language=en",
            &[("authorization", &bearer), ("cartesia-version", VERSION)],
        )
        .await
        .expect("upgrade");

    let audio = tone_s16(1000);
    for piece in audio.chunks(3200) {
        socket
            .send(Message::binary(piece.to_vec()))
            .await
            .expect("audio");
    }
    socket
        .send(Message::text("finalize"))
        .await
        .expect("finalize");
    let transcript = next_json(&mut socket).await;
    assert_eq!(transcript["type"], "transcript");
    assert_eq!(transcript["is_final"], true);
    assert_eq!(
        transcript["text"],
        "received 32000 bytes, 1.00 seconds of audio"
    );
    assert_eq!(transcript["duration"], 1.0);
    assert_eq!(transcript["language"], "en");
    assert_eq!(
        transcript["words"][0],
        json!({"word": "received", "start": 0.0, "end": 0.186})
    );
    let request_id = transcript["request_id"]
        .as_str()
        .expect("request_id")
        .to_owned();
    assert_eq!(
        next_json(&mut socket).await,
        json!({"type": "flush_done", "request_id": request_id})
    );

    socket.send(Message::text("bogus")).await.expect("command");
    let error = next_json(&mut socket).await;
    assert_eq!(error["type"], "error");
    assert_eq!(error["error_code"], "invalid_command");

    socket
        .send(Message::binary(audio[..16_000].to_vec()))
        .await
        .expect("audio");
    socket
        .send(Message::text("close"))
        .await
        .expect("close command");
    let last = next_json(&mut socket).await;
    assert_eq!(last["text"], " received 16000 bytes, 0.50 seconds of audio");
    assert_eq!(
        next_json(&mut socket).await,
        json!({"type": "done", "request_id": request_id})
    );
    assert_eq!(close_code(&mut socket).await, 1000);
    harness.stop().await;
}

#[tokio::test]
async fn stt_turns_websocket_reports_turns() {
    let harness = start().await;
    let mut socket = harness
        .websocket(
            &format!("/stt/turns/websocket?model=ink-2&encoding=pcm_s16le&sample_rate=16000&cartesia_version={VERSION}"),
            &[("x-api-key", API_KEY)],
        )
        .await
        .expect("upgrade");
    let connected = next_json(&mut socket).await;
    assert_eq!(connected["type"], "connected");

    for piece in tone_s16(500).chunks(3200) {
        socket
            .send(Message::binary(piece.to_vec()))
            .await
            .expect("speech");
    }
    for _ in 0..6 {
        socket
            .send(Message::binary(vec![0u8; 3200]))
            .await
            .expect("silence");
    }
    let mut kinds = Vec::new();
    let mut end = Value::Null;
    while end.is_null() {
        let event = next_json(&mut socket).await;
        assert_eq!(event["request_id"], connected["request_id"]);
        if event["type"] == "turn.end" {
            end = event.clone();
        }
        kinds.push(event["type"].as_str().expect("type").to_owned());
    }
    assert_eq!(
        kinds,
        ["turn.start", "turn.update", "turn.eager_end", "turn.end"]
    );
    assert_eq!(
        end["transcript"],
        "received 35200 bytes, 1.10 seconds of audio"
    );

    let bad_config = json!({"type": "config", "turn": {"end_threshold": 0.9}});
    socket
        .send(Message::text(bad_config.to_string()))
        .await
        .expect("config");
    assert_eq!(next_json(&mut socket).await["type"], "error");
    socket
        .send(Message::text(r#"{"type":"close"}"#))
        .await
        .expect("close command");
    assert_eq!(close_code(&mut socket).await, 1000);
    harness.stop().await;
}

fn multipart(boundary: &str, fields: &[(&str, &str)], file: Option<&[u8]>) -> Vec<u8> {
    let mut body = Vec::new();
    for (name, value) in fields {
        body.extend(
            format!(
                "--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n"
            )
            .bytes(),
        );
    }
    if let Some(file) = file {
        body.extend(
            format!(
                "--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"speech.wav\"\r\nContent-Type: audio/wav\r\n\r\n"
            )
            .bytes(),
        );
        body.extend_from_slice(file);
        body.extend(b"\r\n");
    }
    body.extend(format!("--{boundary}--\r\n").bytes());
    body
}

#[tokio::test]
async fn stt_batch_transcribes_multipart_uploads() {
    let harness = start().await;
    let token = harness.mint(json!({"tts": true, "stt": true})).await;
    let wav = body_bytes(
        harness
            .post_json("/tts/bytes", &token, &tts_body(wav_s16()))
            .await,
    )
    .await;
    let boundary = "stand-in-boundary";
    let content_type = format!("multipart/form-data; boundary={boundary}");
    let bearer = format!("Bearer {token}");
    let fields = [
        ("model", "ink-whisper"),
        ("language", "en"),
        ("timestamp_granularities[]", "word"),
    ];
    let upload = multipart(boundary, &fields, Some(&wav));

    let headers = [
        ("authorization", bearer.as_str()),
        ("content-type", content_type.as_str()),
    ];
    let response = harness.post("/stt", &headers, upload.clone()).await;
    assert_eq!(response.status(), StatusCode::OK);
    let body = body_json(response).await;
    assert_eq!(body["type"], "transcript");
    assert_eq!(
        body["text"],
        format!("received {} bytes, 0.72 seconds of audio", wav.len())
    );
    assert_eq!(body["duration"], 0.72);
    assert_eq!(body["language"], "en");
    assert_eq!(body["words"][0]["word"], "received");
    assert_eq!(body["request_id"].as_str().map(str::len), Some(36));
    let recorded = harness.stand_in.requests();
    let stt = recorded
        .iter()
        .find(|request| request.path == "/stt")
        .expect("recorded /stt");
    assert_eq!(
        stt.body_len,
        upload.len() as u64,
        "the whole upload was read"
    );

    let no_version = Request::post(harness.url("/audio/transcriptions"))
        .header("authorization", &bearer)
        .header("content-type", &content_type)
        .body(Full::new(Bytes::from(multipart(
            boundary,
            &[("model", "ink-whisper")],
            Some(&wav),
        ))))
        .expect("request");
    let response = harness.send(no_version).await;
    assert_eq!(
        response.status(),
        StatusCode::OK,
        "OpenAI clients send no version"
    );
    assert!(
        body_json(response).await.get("words").is_none(),
        "no words unless asked"
    );

    let no_version = Request::post(harness.url("/stt"))
        .header("authorization", &bearer)
        .header("content-type", &content_type)
        .body(Full::new(Bytes::from(upload)))
        .expect("request");
    expect_error(
        harness.send(no_version).await,
        StatusCode::BAD_REQUEST,
        "missing_version",
    )
    .await;

    let no_file = multipart(boundary, &[("model", "ink-whisper")], None);
    let response = harness.post("/stt", &headers, no_file).await;
    expect_error(response, StatusCode::BAD_REQUEST, "invalid_request").await;
    let not_multipart = [
        ("authorization", bearer.as_str()),
        ("content-type", "application/json"),
    ];
    let response = harness.post("/stt", &not_multipart, "{}").await;
    expect_error(response, StatusCode::BAD_REQUEST, "invalid_request").await;
    harness.stop().await;
}

#[tokio::test]
async fn unknown_paths_and_methods_get_json_errors() {
    let harness = start().await;
    let response = harness.post_json("/voices", API_KEY, &json!({})).await;
    expect_error(response, StatusCode::NOT_FOUND, "not_found").await;
    let response = harness.post_json("/tts/bytes/", API_KEY, &json!({})).await;
    expect_error(response, StatusCode::NOT_FOUND, "not_found").await;

    let get = Request::get(harness.url("/tts/bytes"))
        .body(Full::new(Bytes::new()))
        .expect("request");
    let response = harness.send(get).await;
    assert_eq!(response.headers()["allow"], "POST");
    expect_error(
        response,
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
    )
    .await;
    let post = harness
        .post_json("/stt/websocket", API_KEY, &json!({}))
        .await;
    assert_eq!(post.headers()["allow"], "GET");
    expect_error(post, StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed").await;
    harness.stop().await;
}

#[tokio::test]
async fn requests_are_recorded_in_order() {
    let harness = start().await;
    let token = harness.mint(json!({"tts": true})).await;
    let request = Request::post(harness.url("/tts/bytes?x=1&y=a%20b"))
        .header("Authorization", format!("Bearer {token}"))
        .header("Cartesia-Version", VERSION)
        .header("X-Trace", "first")
        .header("Cookie", "session=abc")
        .body(Full::new(Bytes::from(tts_body(wav_s16()).to_string())))
        .expect("request");
    let response = harness.send(request).await;
    let sent_len = tts_body(wav_s16()).to_string().len() as u64;
    body_bytes(response).await;

    let recorded = harness.stand_in.requests();
    assert_eq!(recorded.len(), 2);
    assert_eq!(recorded[0].path, "/access-token");
    assert_eq!(recorded[0].credential.as_deref(), Some(API_KEY));
    let tts = &recorded[1];
    assert_eq!(tts.method, "POST");
    assert_eq!(tts.path, "/tts/bytes");
    assert_eq!(tts.query.as_deref(), Some("x=1&y=a%20b"));
    assert_eq!(tts.credential.as_deref(), Some(token.as_str()));
    assert!(!tts.websocket);
    assert_eq!(tts.body_len, sent_len);
    let header = |name: &str| {
        tts.headers
            .iter()
            .find(|(header, _)| header == name)
            .map(|(_, value)| value.as_str())
    };
    assert_eq!(header("x-trace"), Some("first"));
    assert_eq!(header("cookie"), Some("session=abc"));
    assert_eq!(header("cartesia-version"), Some(VERSION));
    let shown = format!("{tts:?}");
    assert!(
        !shown.contains(&token) && !shown.contains("abc"),
        "Debug masks secrets"
    );
    harness.stop().await;
}

#[tokio::test]
async fn http2_is_served() {
    let harness = start().await;
    let client = http_client(&harness.roots, Protocols::Http2Only);
    let request = Request::post(harness.url("/tts/bytes"))
        .header("authorization", format!("Bearer {API_KEY}"))
        .header("cartesia-version", VERSION)
        .body(Full::new(Bytes::from(tts_body(wav_s16()).to_string())))
        .expect("request");
    let response = timeout(WAIT, client.request(request))
        .await
        .expect("in time")
        .expect("HTTP/2 exchange");
    assert_eq!(response.version(), Version::HTTP_2);
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(body_bytes(response).await.len(), 44 + SAMPLES * 2);
    harness.stop().await;
}

#[tokio::test]
async fn shutdown_closes_websockets_and_returns() {
    let harness = start().await;
    let mut socket = harness
        .websocket(
            "/stt/websocket?model=ink-2&encoding=pcm_s16le&sample_rate=16000",
            &[("x-api-key", API_KEY), ("cartesia-version", VERSION)],
        )
        .await
        .expect("upgrade");
    let stop = tokio::spawn(harness.stop());
    assert_eq!(close_code(&mut socket).await, 1001);
    drop(socket);
    timeout(Duration::from_secs(10), stop)
        .await
        .expect("stopped in time")
        .expect("stop task");
}
