//! HTTP routes through the real gateway to the stand-in, over real TLS.
//!
//! Covers `POST /tts/bytes`, `/tts/sse`, `/stt` and `/audio/transcriptions`:
//! success for each credential and protocol, what the upstream receives,
//! streaming in both directions, upstream errors passing through, and the
//! gateway's own error responses.

mod common;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;
use cartesia_gateway::stand_in::RecordedRequest;
use common::*;
use futures_util::StreamExt;
use futures_util::stream::{self, BoxStream};
use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode, Version};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;

/// A Cartesia voice ID from the API reference's examples.
const VOICE_ID: &str = "a0e99841-438c-4a64-b679-ae501e7d6091";
/// The version the gateway sends when the client names none.
const DEFAULT_VERSION: &str = "2026-08-14";
/// Milliseconds of stand-in audio per transcript character.
const MS_PER_CHARACTER: usize = 60;
/// Milliseconds of audio in each stand-in chunk.
const CHUNK_MS: usize = 100;
/// Bytes per millisecond of 16 kHz, 16-bit mono audio.
const BYTES_PER_MS: usize = 32;
/// Size of the stand-in's WAV header for `pcm_s16le`.
const WAV_HEADER_LEN: usize = 44;
const BOUNDARY: &str = "cartesia-gateway-test-boundary-7f3a9c";
/// Maximum wait for a response or body part that should arrive promptly.
const PROMPT: Duration = Duration::from_secs(5);
/// Time for which a body held back by the stand-in's gate must stay quiet.
const QUIET: Duration = Duration::from_millis(300);

/// The client protocols every route must work over.
const PROTOCOLS: [Version; 2] = [Version::HTTP_11, Version::HTTP_2];

/// Where the client puts its session JWT.
#[derive(Clone, Copy, Debug)]
enum Credential {
    Cookie,
    Bearer,
}

impl Credential {
    const ALL: [Credential; 2] = [Credential::Cookie, Credential::Bearer];

    fn apply(self, builder: http::request::Builder, session: &str) -> http::request::Builder {
        match self {
            // Browsers attach the cookie by themselves and send `Origin`
            // with every cross-origin POST, which the gateway requires.
            Credential::Cookie => builder
                .header("cookie", format!("theme=dark; session={session}"))
                .header("origin", APP_ORIGIN),
            Credential::Bearer => builder.header("authorization", format!("Bearer {session}")),
        }
    }
}

/// The four HTTP routes, each with a valid request body.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Route {
    TtsBytes,
    TtsSse,
    Stt,
    AudioTranscriptions,
}

impl Route {
    const ALL: [Route; 4] = [
        Route::TtsBytes,
        Route::TtsSse,
        Route::Stt,
        Route::AudioTranscriptions,
    ];

    fn path(self) -> &'static str {
        match self {
            Route::TtsBytes => "/tts/bytes",
            Route::TtsSse => "/tts/sse",
            Route::Stt => "/stt",
            Route::AudioTranscriptions => "/audio/transcriptions",
        }
    }

    fn content_type(self) -> String {
        match self {
            Route::TtsBytes | Route::TtsSse => "application/json".to_owned(),
            Route::Stt | Route::AudioTranscriptions => multipart_type(),
        }
    }

    /// Returns the body of a valid request.
    fn valid_body(self) -> Bytes {
        match self {
            Route::TtsBytes => json_body(&tts_bytes_body("Hello from the gateway tests")),
            Route::TtsSse => json_body(&tts_sse_body("Hello from the gateway tests")),
            Route::Stt | Route::AudioTranscriptions => multipart_body(&wav_file(3)),
        }
    }
}

/// Starts a POST to the gateway carrying `session` as `credential`.
fn post(
    harness: &Harness,
    path_and_query: &str,
    credential: Credential,
    session: &str,
) -> http::request::Builder {
    let builder = Request::post(format!("{}{path_and_query}", harness.url()));
    credential.apply(builder, session)
}

/// Builds a valid request for `route`, with `query` appended to its path.
fn route_request(
    harness: &Harness,
    route: Route,
    query: &str,
    credential: Credential,
    session: &str,
) -> http::request::Builder {
    post(
        harness,
        &format!("{}{query}", route.path()),
        credential,
        session,
    )
    .header("content-type", route.content_type())
}

fn full(builder: http::request::Builder, body: Bytes) -> Request<Full<Bytes>> {
    builder.body(Full::new(body)).expect("valid test request")
}

fn json_body(value: &Value) -> Bytes {
    Bytes::from(value.to_string())
}

/// Builds a `/tts/sse` request body for raw audio, the only kind SSE accepts.
fn tts_sse_body(transcript: &str) -> Value {
    json!({
        "model_id": "sonic-3",
        "transcript": transcript,
        "voice": {"id": VOICE_ID},
        "language": "en",
        "output_format": {"container": "raw", "encoding": "pcm_s16le", "sample_rate": 16000},
    })
}

/// Builds a 16 kHz, 16-bit mono WAV file of a 220 Hz tone lasting `seconds`.
fn wav_file(seconds: u32) -> Vec<u8> {
    let sample_rate: u32 = 16_000;
    let samples = sample_rate * seconds;
    let data_len = samples * 2;
    let mut wav = Vec::with_capacity(WAV_HEADER_LEN + data_len as usize);
    wav.extend_from_slice(b"RIFF");
    wav.extend_from_slice(&(36 + data_len).to_le_bytes());
    wav.extend_from_slice(b"WAVEfmt ");
    wav.extend_from_slice(&16u32.to_le_bytes());
    // Format tag 1 (PCM), one channel.
    wav.extend_from_slice(&1u16.to_le_bytes());
    wav.extend_from_slice(&1u16.to_le_bytes());
    wav.extend_from_slice(&sample_rate.to_le_bytes());
    wav.extend_from_slice(&(sample_rate * 2).to_le_bytes());
    // Block align 2 bytes, 16 bits per sample.
    wav.extend_from_slice(&2u16.to_le_bytes());
    wav.extend_from_slice(&16u16.to_le_bytes());
    wav.extend_from_slice(b"data");
    wav.extend_from_slice(&data_len.to_le_bytes());
    for index in 0..samples {
        let phase = 2.0 * std::f64::consts::PI * 220.0 * f64::from(index) / f64::from(sample_rate);
        let sample = (phase.sin() * 8000.0) as i16;
        wav.extend_from_slice(&sample.to_le_bytes());
    }
    wav
}

/// Builds a `multipart/form-data` upload as the Cartesia SDKs send it: the
/// text fields, then the WAV file.
fn multipart_body(wav: &[u8]) -> Bytes {
    let mut body = Vec::new();
    let fields = [
        ("model", "ink-whisper"),
        ("language", "en"),
        ("timestamp_granularities[]", "word"),
    ];
    for (name, value) in fields {
        body.extend_from_slice(
            format!(
                "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n"
            )
            .as_bytes(),
        );
    }
    body.extend_from_slice(
        format!(
            "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"speech.wav\"\r\nContent-Type: audio/wav\r\n\r\n"
        )
        .as_bytes(),
    );
    body.extend_from_slice(wav);
    body.extend_from_slice(format!("\r\n--{BOUNDARY}--\r\n").as_bytes());
    Bytes::from(body)
}

fn multipart_type() -> String {
    format!("multipart/form-data; boundary={BOUNDARY}")
}

/// Bytes of 16 kHz `pcm_s16le` audio the stand-in makes for `transcript`.
fn expected_audio_len(transcript: &str) -> usize {
    transcript.chars().count() * MS_PER_CHARACTER * BYTES_PER_MS
}

/// Number of audio chunks the stand-in streams for `transcript`.
fn expected_chunks(transcript: &str) -> usize {
    (transcript.chars().count() * MS_PER_CHARACTER).div_ceil(CHUNK_MS)
}

/// Sends `request` with `client` and returns the response with its whole body.
async fn send_with(client: &TestClient, request: Request<Full<Bytes>>) -> (Response<()>, Bytes) {
    let response = tokio::time::timeout(PROMPT, client.request(request))
        .await
        .expect("the gateway answers in time")
        .expect("the gateway answers");
    let (parts, body) = response.into_parts();
    let body = tokio::time::timeout(PROMPT, body.collect())
        .await
        .expect("the body arrives in time")
        .expect("the body arrives whole")
        .to_bytes();
    (Response::from_parts(parts, ()), body)
}

fn client_for(harness: &Harness, version: Version) -> TestClient {
    client(&harness.certs.ca_file, version == Version::HTTP_2)
}

/// Shows the start of a body in failure messages.
fn preview(body: &[u8]) -> String {
    String::from_utf8_lossy(&body[..body.len().min(300)]).into_owned()
}

fn header<'a>(response: &'a Response<()>, name: &str) -> Option<&'a str> {
    response
        .headers()
        .get(name)
        .map(|value| value.to_str().expect("ASCII header value"))
}

/// Requests the stand-in received on the forwarded routes, without token mints.
fn forwarded(harness: &Harness) -> Vec<RecordedRequest> {
    harness
        .stand_in
        .requests()
        .into_iter()
        .filter(|request| request.path != "/access-token")
        .collect()
}

fn recorded_header<'a>(request: &'a RecordedRequest, name: &str) -> Vec<&'a str> {
    request
        .headers
        .iter()
        .filter(|(header, _)| header == name)
        .map(|(_, value)| value.as_str())
        .collect()
}

/// Checks that `body` is a complete WAV file whose audio matches `transcript`.
fn assert_complete_wav(body: &[u8], transcript: &str, case: &str) {
    assert!(
        body.len() >= WAV_HEADER_LEN,
        "{case}: body too short for WAV"
    );
    assert_eq!(&body[..4], b"RIFF", "{case}: RIFF magic");
    assert_eq!(&body[8..12], b"WAVE", "{case}: WAVE form type");
    assert_eq!(&body[36..40], b"data", "{case}: data chunk after fmt");
    let data_len = u32::from_le_bytes(body[40..44].try_into().expect("four bytes")) as usize;
    assert_eq!(
        data_len,
        expected_audio_len(transcript),
        "{case}: the header announces the transcript's audio length"
    );
    assert_eq!(
        body.len() - WAV_HEADER_LEN,
        data_len,
        "{case}: every announced audio byte arrived"
    );
}

/// One server-sent event: its `event:` name and its JSON `data:`.
struct SseEvent {
    name: String,
    data: Value,
}

/// Splits a `text/event-stream` body into events.
fn sse_events(body: &[u8]) -> Vec<SseEvent> {
    let text = std::str::from_utf8(body).expect("SSE is UTF-8");
    assert!(text.ends_with("\n\n"), "the stream ends with a whole event");
    text.split_terminator("\n\n")
        .map(|block| {
            let mut name = None;
            let mut data = None;
            for line in block.lines() {
                if let Some(value) = line.strip_prefix("event: ") {
                    name = Some(value.to_owned());
                } else if let Some(value) = line.strip_prefix("data: ") {
                    data = Some(serde_json::from_str(value).expect("event data is JSON"));
                } else {
                    panic!("unexpected SSE line {line:?}");
                }
            }
            SseEvent {
                name: name.expect("every event is named"),
                data: data.expect("every event has data"),
            }
        })
        .collect()
}

/// Checks that `body` contains `chunk` events with all of `transcript`'s audio,
/// then one `done` event.
fn assert_complete_sse(body: &[u8], transcript: &str, case: &str) {
    let events = sse_events(body);
    let (done, chunks) = events.split_last().expect("at least one event");
    assert_eq!(done.name, "done", "{case}: the last event is done");
    assert_eq!(done.data["type"], "done", "{case}: done payload type");
    assert_eq!(
        done.data["done"], true,
        "{case}: done flag on the last event"
    );
    assert_eq!(
        chunks.len(),
        expected_chunks(transcript),
        "{case}: one chunk event per 100 ms of audio"
    );
    let mut audio_len = 0;
    for chunk in chunks {
        assert_eq!(chunk.name, "chunk", "{case}: events before done are chunks");
        assert_eq!(chunk.data["type"], "chunk", "{case}: chunk payload type");
        assert_eq!(chunk.data["done"], false, "{case}: chunk is not done");
        let data = chunk.data["data"].as_str().expect("chunk data is a string");
        audio_len += BASE64.decode(data).expect("chunk data is base64").len();
    }
    assert_eq!(
        audio_len,
        expected_audio_len(transcript),
        "{case}: the chunks carry all the audio"
    );
}

/// Checks a batch STT transcript of the three-second file from [`wav_file`].
fn assert_transcript(response: &Response<()>, body: &[u8], case: &str) {
    assert_eq!(response.status(), 200, "{case}: {}", preview(body));
    assert_eq!(
        header(response, "content-type"),
        Some("application/json"),
        "{case}: content type"
    );
    let transcript: Value = serde_json::from_slice(body).expect("transcript is JSON");
    assert_eq!(transcript["type"], "transcript", "{case}: type");
    assert_eq!(
        transcript["text"], "received 96044 bytes, 3.00 seconds of audio",
        "{case}: the stand-in read the whole file"
    );
    assert_eq!(transcript["duration"], 3.0, "{case}: duration");
    assert_eq!(transcript["language"], "en", "{case}: language");
    let words = transcript["words"].as_array().expect("word timestamps");
    assert_eq!(words[0]["word"], "received", "{case}: first word");
}

/// Checks a gateway-made error: status, JSON content type and a body of
/// exactly `{"error": code, "message": text}`.
fn assert_gateway_error(
    status: StatusCode,
    headers: &HeaderMap,
    body: &[u8],
    expected: (u16, &str),
    case: &str,
) {
    let (expected_status, expected_code) = expected;
    assert_eq!(status, expected_status, "{case}: {}", preview(body));
    assert_eq!(
        headers.get("content-type").map(HeaderValue::as_bytes),
        Some(&b"application/json"[..]),
        "{case}: content type"
    );
    let json: Value = serde_json::from_slice(body).expect("error body is JSON");
    let object = json.as_object().expect("error body is an object");
    assert_eq!(object.len(), 2, "{case}: only error and message in {json}");
    assert_eq!(json["error"], expected_code, "{case}: error code");
    let message = json["message"].as_str().expect("message is a string");
    assert!(!message.is_empty(), "{case}: message is not empty");
}

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

#[tokio::test]
async fn tts_bytes_works_for_each_credential() {
    let harness = Harness::start().await;
    let session = harness.session("alice", &["tts"]);
    let transcript = "Hello from the gateway tests";
    for version in PROTOCOLS {
        let client = client_for(&harness, version);
        for credential in Credential::ALL {
            let case = format!("{version:?} with {credential:?}");
            let request = post(&harness, "/tts/bytes", credential, &session)
                .header("content-type", "application/json")
                .header("accept", "audio/wav")
                .header("cartesia-version", DEFAULT_VERSION);
            let request = full(request, json_body(&tts_bytes_body(transcript)));
            let (response, body) = send_with(&client, request).await;
            assert_eq!(response.status(), 200, "{case}: {}", preview(&body));
            assert_eq!(response.version(), version, "{case}: negotiated protocol");
            assert_eq!(
                header(&response, "content-type"),
                Some("audio/wav"),
                "{case}: content type"
            );
            assert_complete_wav(&body, transcript, &case);
        }
    }
    assert_eq!(
        forwarded(&harness).len(),
        4,
        "each request reached the stand-in exactly once"
    );
}

#[tokio::test]
async fn tts_sse_streams_chunks_then_done() {
    let harness = Harness::start().await;
    let session = harness.session("alice", &["tts"]);
    let transcript = "Hello from the gateway tests";
    for version in PROTOCOLS {
        let client = client_for(&harness, version);
        for credential in Credential::ALL {
            let case = format!("{version:?} with {credential:?}");
            let request = post(&harness, "/tts/sse", credential, &session)
                .header("content-type", "application/json")
                .header("accept", "text/event-stream");
            let request = full(request, json_body(&tts_sse_body(transcript)));
            let (response, body) = send_with(&client, request).await;
            assert_eq!(response.status(), 200, "{case}: {}", preview(&body));
            assert_eq!(response.version(), version, "{case}: negotiated protocol");
            assert_eq!(
                header(&response, "content-type"),
                Some("text/event-stream"),
                "{case}: content type"
            );
            assert_complete_sse(&body, transcript, &case);
        }
    }
}

/// Uploads a WAV file to `route` for each protocol and credential and checks
/// the transcript.
async fn check_batch_transcription(route: Route) {
    let harness = Harness::start().await;
    let session = harness.session("bob", &["stt"]);
    let content_type = multipart_type();
    let body = multipart_body(&wav_file(3));
    for version in PROTOCOLS {
        let client = client_for(&harness, version);
        for credential in Credential::ALL {
            let case = format!("{} over {version:?} with {credential:?}", route.path());
            let request = post(&harness, route.path(), credential, &session)
                .header("content-type", content_type.as_str());
            let (response, transcript) = send_with(&client, full(request, body.clone())).await;
            assert_eq!(response.version(), version, "{case}: negotiated protocol");
            assert_transcript(&response, &transcript, &case);
        }
    }
    let uploads = forwarded(&harness);
    assert_eq!(uploads.len(), 4, "each upload reached the stand-in once");
    for upload in uploads {
        assert_eq!(upload.path, route.path(), "forwarded to the same route");
        assert_eq!(
            upload.body_len,
            body.len() as u64,
            "the stand-in read the whole multipart body"
        );
    }
}

#[tokio::test]
async fn stt_transcribes_multipart_upload() {
    check_batch_transcription(Route::Stt).await;
}

#[tokio::test]
async fn audio_transcriptions_transcribes_multipart_upload() {
    check_batch_transcription(Route::AudioTranscriptions).await;
}

#[tokio::test]
async fn forwarded_requests_carry_no_client_credentials() {
    let harness = Harness::start().await;
    let session = harness.session("carol", &["tts", "stt"]);
    let signature = session.rsplit('.').next().expect("JWT has a signature");
    let client_api_key = "sk_car_client_supplied_key_0123456789";
    let query = format!("?access_token={session}&api_key={client_api_key}");
    for version in PROTOCOLS {
        let client = client_for(&harness, version);
        for route in Route::ALL {
            for credential in Credential::ALL {
                let case = format!("{} over {version:?} with {credential:?}", route.path());
                let request = route_request(&harness, route, &query, credential, &session)
                    .header("x-api-key", client_api_key);
                let request = full(request, route.valid_body());
                let (response, body) = send_with(&client, request).await;
                assert_eq!(response.status(), 200, "{case}: {}", preview(&body));
            }
        }
    }

    let issued = harness.stand_in.issued_tokens();
    let requests = harness.stand_in.requests();
    assert_eq!(
        forwarded(&harness).len(),
        16,
        "every request was forwarded once"
    );
    for request in &requests {
        let case = format!("{} {}", request.method, request.path);
        for (name, value) in &request.headers {
            assert!(
                !value.contains(signature),
                "{case}: header {name} carries the session JWT"
            );
            assert!(
                !value.contains(client_api_key),
                "{case}: header {name} carries the client's API key"
            );
            assert_ne!(name, "cookie", "{case}: a cookie was forwarded");
            assert_ne!(name, "x-api-key", "{case}: x-api-key was forwarded");
        }
        let query = request.query.as_deref().unwrap_or_default();
        assert!(
            !query.contains(signature),
            "{case}: the query carries the session JWT"
        );
        assert!(
            !query.contains("access_token") && !query.contains("api_key"),
            "{case}: credential parameters left in the query"
        );
        let presented = request.credential.as_deref().unwrap_or_default();
        assert!(
            !presented.contains(signature),
            "{case}: the session JWT was presented as the credential"
        );
        if request.path != "/access-token" {
            assert!(
                issued.iter().any(|token| token == presented),
                "{case}: the credential is not a token the stand-in issued"
            );
        }
    }
}

#[tokio::test]
async fn hop_by_hop_headers_are_not_forwarded() {
    let harness = Harness::start().await;
    let session = harness.session("dave", &["tts"]);
    let request = post(&harness, "/tts/bytes", Credential::Bearer, &session)
        .header("content-type", "application/json")
        .header("connection", "keep-alive, x-private")
        .header("x-private", "1")
        .header("keep-alive", "timeout=5")
        .header("te", "trailers")
        .header("proxy-authorization", "Basic cHJveHk6c2VjcmV0")
        .header("x-custom", "1")
        .header("user-agent", "cartesia-python/4.2.0")
        .header("x-cartesia-client", "cartesia-python/4.2.0");
    let request = full(request, json_body(&tts_bytes_body("Hop by hop")));
    let (response, body) = harness.send(request).await;
    assert_eq!(response.status(), 200, "{}", preview(&body));

    let forwarded = forwarded(&harness);
    assert_eq!(forwarded.len(), 1, "one request forwarded");
    let request = &forwarded[0];
    for name in [
        "connection",
        "x-private",
        "keep-alive",
        "te",
        "proxy-authorization",
    ] {
        assert!(
            recorded_header(request, name).is_empty(),
            "hop-by-hop header {name} reached the stand-in"
        );
    }
    for (name, value) in [
        ("x-custom", "1"),
        ("user-agent", "cartesia-python/4.2.0"),
        ("x-cartesia-client", "cartesia-python/4.2.0"),
        ("content-type", "application/json"),
    ] {
        assert_eq!(
            recorded_header(request, name),
            vec![value],
            "end-to-end header {name} is forwarded unchanged"
        );
    }
}

#[tokio::test]
async fn query_is_kept_without_credentials() {
    let harness = Harness::start().await;
    let session = harness.session("erin", &["tts", "stt"]);
    let cases = [
        (
            Route::Stt,
            "?encoding=pcm_s16le&sample_rate=16000&x=a+b%2Fc&access_token=SECRET&z=",
            Some("encoding=pcm_s16le&sample_rate=16000&x=a+b%2Fc&z="),
        ),
        (
            Route::TtsBytes,
            "?api_key=sk_car_client&cartesia_client=cartesia-js%2F4.2.0&access%5Ftoken=SECRET",
            Some("cartesia_client=cartesia-js%2F4.2.0"),
        ),
        (
            Route::TtsSse,
            "?a=1&&b=%20&api_key=K&c=%E2%82%AC",
            Some("a=1&&b=%20&c=%E2%82%AC"),
        ),
        (Route::AudioTranscriptions, "?access_token=SECRET", None),
    ];
    for (route, query, expected) in cases {
        let case = format!("{}{query}", route.path());
        let request = route_request(&harness, route, query, Credential::Bearer, &session);
        let (response, body) = harness.send(full(request, route.valid_body())).await;
        assert_eq!(response.status(), 200, "{case}: {}", preview(&body));
        let recorded = forwarded(&harness)
            .pop()
            .expect("the request was forwarded");
        assert_eq!(recorded.path, route.path(), "{case}: path");
        assert_eq!(
            recorded.query.as_deref(),
            expected,
            "{case}: query minus credentials, byte for byte"
        );
    }
}

/// Sends a `/tts/bytes` request with the given version header and query and
/// returns what the stand-in received.
async fn forward_with_version(header: Option<&str>, query: &str) -> RecordedRequest {
    let harness = Harness::start().await;
    let session = harness.session("frank", &["tts"]);
    let mut request = route_request(
        &harness,
        Route::TtsBytes,
        query,
        Credential::Bearer,
        &session,
    );
    if let Some(version) = header {
        request = request.header("cartesia-version", version);
    }
    let (response, body) = harness
        .send(full(request, Route::TtsBytes.valid_body()))
        .await;
    assert_eq!(response.status(), 200, "{}", preview(&body));
    let mut forwarded = forwarded(&harness);
    assert_eq!(forwarded.len(), 1, "one request forwarded");
    forwarded.remove(0)
}

#[tokio::test]
async fn client_version_header_is_kept() {
    let recorded = forward_with_version(Some("2025-04-16"), "").await;
    assert_eq!(
        recorded_header(&recorded, "cartesia-version"),
        vec!["2025-04-16"],
        "the client's version, and no other"
    );

    let recorded = forward_with_version(Some("2025-04-16"), "?cartesia_version=2025-11-04").await;
    assert_eq!(
        recorded_header(&recorded, "cartesia-version"),
        vec!["2025-04-16"],
        "the header is kept next to the query parameter"
    );
    assert_eq!(
        recorded.query.as_deref(),
        Some("cartesia_version=2025-11-04"),
        "the query parameter is kept next to the header"
    );
}

#[tokio::test]
async fn version_query_adds_no_header() {
    let recorded = forward_with_version(None, "?cartesia_version=2025-11-04").await;
    assert_eq!(
        recorded.query.as_deref(),
        Some("cartesia_version=2025-11-04"),
        "the version parameter is forwarded"
    );
    assert!(
        recorded_header(&recorded, "cartesia-version").is_empty(),
        "no Cartesia-Version header is added"
    );
}

#[tokio::test]
async fn default_version_is_added() {
    let recorded = forward_with_version(None, "").await;
    assert_eq!(
        recorded_header(&recorded, "cartesia-version"),
        vec![DEFAULT_VERSION],
        "the configured default version"
    );
    assert_eq!(recorded.query, None, "no query is made up");
}

/// Reads frames into `received` until `done` holds for it. Panics on a body
/// error or an early end.
async fn read_until(body: &mut Incoming, received: &mut Vec<u8>, done: impl Fn(&[u8]) -> bool) {
    while !done(received) {
        let frame = body
            .frame()
            .await
            .expect("the body ended early")
            .expect("the body failed");
        if let Ok(data) = frame.into_data() {
            received.extend_from_slice(&data);
        }
    }
}

/// Sends `request` while the stand-in's stream gate is closed, checks that
/// the part before the gate (`first_part`) arrives while the rest is held
/// back, then opens the gate for `permits` and returns the whole body.
async fn read_gated_stream(
    harness: &Harness,
    version: Version,
    request: Request<Full<Bytes>>,
    first_part: impl Fn(&[u8]) -> bool,
    permits: usize,
) -> Vec<u8> {
    let gate = Arc::new(Semaphore::new(0));
    harness
        .stand_in
        .faults()
        .set_stream_gate(Some(Arc::clone(&gate)));
    let response = tokio::time::timeout(PROMPT, client_for(harness, version).request(request))
        .await
        .expect("the response head arrives while the stream is held")
        .expect("the gateway answers");
    assert_eq!(response.status(), 200, "{version:?}: status");
    let mut body = response.into_body();

    let mut received = Vec::new();
    let first = tokio::time::timeout(PROMPT, read_until(&mut body, &mut received, first_part));
    assert!(
        first.await.is_ok(),
        "{version:?}: the first chunk reaches the client while the stand-in is held"
    );
    let next_frame = tokio::time::timeout(QUIET, body.frame()).await;
    assert!(
        next_frame.is_err(),
        "{version:?}: nothing more arrives while the gate is closed"
    );

    gate.add_permits(permits);
    let rest = tokio::time::timeout(PROMPT, body.collect())
        .await
        .expect("the rest arrives once the gate opens")
        .expect("the rest arrives whole");
    received.extend_from_slice(&rest.to_bytes());
    assert_eq!(
        gate.available_permits(),
        0,
        "{version:?}: the stand-in took one permit per later chunk and one to end"
    );
    harness.stand_in.faults().set_stream_gate(None);
    received
}

#[tokio::test]
async fn tts_bytes_first_chunk_precedes_stream_end() {
    let harness = Harness::start().await;
    let session = harness.session("grace", &["tts"]);
    let transcript = "Audio reaches the client chunk by chunk.";
    let first_chunk = WAV_HEADER_LEN + CHUNK_MS * BYTES_PER_MS;
    for version in PROTOCOLS {
        let request = post(&harness, "/tts/bytes", Credential::Bearer, &session)
            .header("content-type", "application/json");
        let request = full(request, json_body(&tts_bytes_body(transcript)));
        let body = read_gated_stream(
            &harness,
            version,
            request,
            |received| received.len() >= first_chunk,
            expected_chunks(transcript),
        )
        .await;
        assert_complete_wav(&body, transcript, &format!("{version:?}"));
    }
}

#[tokio::test]
async fn tts_sse_first_event_precedes_stream_end() {
    let harness = Harness::start().await;
    let session = harness.session("heidi", &["tts"]);
    let transcript = "Events reach the client one by one.";
    for version in PROTOCOLS {
        let request = post(&harness, "/tts/sse", Credential::Cookie, &session)
            .header("content-type", "application/json");
        let request = full(request, json_body(&tts_sse_body(transcript)));
        let body = read_gated_stream(
            &harness,
            version,
            request,
            |received| received.windows(2).any(|pair| pair == b"\n\n"),
            expected_chunks(transcript),
        )
        .await;
        let case = format!("{version:?}");
        let first = &sse_events(&body)[0];
        assert_eq!(first.name, "chunk", "{case}: the first event is a chunk");
        assert_complete_sse(&body, transcript, &case);
    }
}

type UploadBody = StreamBody<BoxStream<'static, Result<Frame<Bytes>, Infallible>>>;

/// Builds a client whose request bodies are fed part by part from a channel.
fn upload_client(
    harness: &Harness,
    version: Version,
) -> Client<hyper_rustls::HttpsConnector<HttpConnector>, UploadBody> {
    let mut tls = (*cartesia_gateway::tls::client_config(Some(&harness.certs.ca_file))
        .expect("test CA loads"))
    .clone();
    tls.alpn_protocols.clear();
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    let builder = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_only();
    let http2 = version == Version::HTTP_2;
    let connector = if http2 {
        builder.enable_http2().wrap_connector(http)
    } else {
        builder.enable_http1().wrap_connector(http)
    };
    Client::builder(TokioExecutor::new())
        .http2_only(http2)
        .build(connector)
}

/// Creates a request body that yields each `Bytes` sent on the returned
/// channel and ends when the sender is dropped.
fn channel_body() -> (mpsc::Sender<Bytes>, UploadBody) {
    let (sender, receiver) = mpsc::channel::<Bytes>(4);
    let frames = stream::unfold(receiver, |mut receiver| async move {
        let data = receiver.recv().await?;
        Some((Ok(Frame::data(data)), receiver))
    });
    (sender, StreamBody::new(frames.boxed()))
}

#[tokio::test]
async fn stt_upload_streams_before_body_ends() {
    let harness = Harness::start().await;
    let session = harness.session("ivan", &["stt"]);
    let content_type = multipart_type();
    let upload = multipart_body(&wav_file(3));
    // The first part contains the text fields, the file part's head and the start
    // of the WAV file.
    let split = upload.len() / 4;
    for version in PROTOCOLS {
        let case = format!("{version:?}");
        let already_forwarded = forwarded(&harness).len();
        let (sender, body) = channel_body();
        let request = Request::post(format!("{}/stt", harness.url()))
            .header("authorization", format!("Bearer {session}"))
            .header("content-type", content_type.as_str())
            .body(body)
            .expect("valid test request");
        let client = upload_client(&harness, version);
        let pending = tokio::spawn(async move { client.request(request).await });

        sender
            .send(upload.slice(..split))
            .await
            .expect("the client takes the first part");
        let first_part_read = eventually(|| {
            forwarded(&harness)
                .get(already_forwarded)
                .is_some_and(|request| request.body_len == split as u64)
        })
        .await;
        assert!(
            first_part_read,
            "{case}: the stand-in reads the first part before the rest is sent"
        );
        assert!(
            !pending.is_finished(),
            "{case}: the response waits for the rest of the upload"
        );

        sender
            .send(upload.slice(split..))
            .await
            .expect("the client takes the rest");
        drop(sender);
        let response = tokio::time::timeout(PROMPT, pending)
            .await
            .expect("the response arrives once the upload ends")
            .expect("the request task completes")
            .expect("the gateway answers");
        let (parts, body) = response.into_parts();
        let body = body.collect().await.expect("whole body").to_bytes();
        assert_transcript(&Response::from_parts(parts, ()), &body, &case);
        let recorded = &forwarded(&harness)[already_forwarded];
        assert_eq!(
            recorded.body_len,
            upload.len() as u64,
            "{case}: the stand-in read the whole upload"
        );
    }
}

/// How a response body ended: the data read, and the error if it failed
/// instead of ending cleanly.
struct BodyEnding {
    received: Vec<u8>,
    error: Option<hyper::Error>,
}

/// Sends a TTS request for `transcript` to `route` and reads its body to the
/// end or to an error.
async fn read_to_end_or_error(
    harness: &Harness,
    route: Route,
    version: Version,
    transcript: &str,
) -> BodyEnding {
    let session = harness.session("judy", &["tts"]);
    let body = match route {
        Route::TtsSse => tts_sse_body(transcript),
        _ => tts_bytes_body(transcript),
    };
    let request = post(harness, route.path(), Credential::Bearer, &session)
        .header("content-type", "application/json");
    let request = full(request, json_body(&body));
    let response = tokio::time::timeout(PROMPT, client_for(harness, version).request(request))
        .await
        .expect("the response head arrives")
        .expect("the gateway answers");
    assert_eq!(response.status(), 200, "{version:?}: status");

    let mut body = response.into_body();
    let mut received = Vec::new();
    loop {
        let frame = tokio::time::timeout(PROMPT, body.frame())
            .await
            .expect("the body ends or fails in time");
        match frame {
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    received.extend_from_slice(data);
                }
            }
            Some(Err(error)) => {
                return BodyEnding {
                    received,
                    error: Some(error),
                };
            }
            None => {
                return BodyEnding {
                    received,
                    error: None,
                };
            }
        }
    }
}

#[tokio::test]
async fn broken_upstream_stream_is_body_error() {
    let harness = Harness::start().await;
    harness.stand_in.faults().break_stream_after(Some(2));
    let transcript = "This stream breaks off in the middle.";
    for route in [Route::TtsBytes, Route::TtsSse] {
        for version in PROTOCOLS {
            let case = format!("{} over {version:?}", route.path());
            let ending = read_to_end_or_error(&harness, route, version, transcript).await;
            assert!(
                ending.error.is_some(),
                "{case}: the client sees a body error, not a clean end"
            );
            let incomplete = match route {
                Route::TtsSse => !String::from_utf8_lossy(&ending.received).contains("event: done"),
                _ => ending.received.len() < WAV_HEADER_LEN + expected_audio_len(transcript),
            };
            assert!(
                incomplete,
                "{case}: the client did not get the whole stream"
            );
        }
    }
}

// NOTE: hyper's server discards response data it has buffered but not yet
// written when the body then fails: HTTP/1.1 closes the connection before
// flushing, and HTTP/2 clears the stream's queued DATA frames on reset. The
// chunks that arrive from the upstream together with the break are lost.
#[tokio::test]
async fn data_before_upstream_break_reaches_client() {
    let harness = Harness::start().await;
    harness.stand_in.faults().break_stream_after(Some(2));
    let transcript = "This stream breaks off in the middle.";
    let two_chunks = WAV_HEADER_LEN + 2 * CHUNK_MS * BYTES_PER_MS;
    for version in PROTOCOLS {
        let ending = read_to_end_or_error(&harness, Route::TtsBytes, version, transcript).await;
        assert!(ending.error.is_some(), "{version:?}: the stream fails");
        assert_eq!(
            ending.received.len(),
            two_chunks,
            "{version:?}: both chunks sent before the break reach the client"
        );
    }
}

#[tokio::test]
async fn upstream_error_statuses_pass_through() {
    let harness = Harness::start().await;
    let session = harness.session("ken", &["tts", "stt"]);
    let client = harness.client();
    for (status, retry_after) in [(429, Some(7)), (500, None), (503, None)] {
        harness
            .stand_in
            .faults()
            .respond_with_status(Some((status, retry_after)));
        for route in Route::ALL {
            let case = format!("{status} on {}", route.path());
            let request = route_request(&harness, route, "", Credential::Bearer, &session);
            let (response, body) = send_with(&client, full(request, route.valid_body())).await;
            assert_eq!(response.status(), status, "{case}: {}", preview(&body));
            assert_eq!(
                header(&response, "retry-after").map(str::to_owned),
                retry_after.map(|seconds: u64| seconds.to_string()),
                "{case}: Retry-After"
            );
            assert_eq!(
                header(&response, "x-should-retry"),
                Some("false"),
                "{case}: the stand-in's headers pass"
            );
            assert_eq!(
                header(&response, "content-type"),
                Some("application/json"),
                "{case}: content type"
            );
            let error: Value = serde_json::from_slice(&body).expect("JSON error body");
            assert_eq!(
                error["error_code"], "injected_fault",
                "{case}: the stand-in's body, not the gateway's"
            );
            assert!(
                error["request_id"]
                    .as_str()
                    .is_some_and(|id| !id.is_empty()),
                "{case}: the stand-in's request_id"
            );
        }
    }
    assert_eq!(
        forwarded(&harness).len(),
        12,
        "each request reached the stand-in"
    );
}

#[tokio::test]
async fn invalid_request_bodies_get_stand_in_400() {
    let harness = Harness::start().await;
    let session = harness.session("liam", &["tts", "stt"]);
    let mut no_transcript = tts_bytes_body("unused");
    no_transcript
        .as_object_mut()
        .expect("object")
        .remove("transcript");
    let mut sse_no_transcript = tts_sse_body("unused");
    sse_no_transcript
        .as_object_mut()
        .expect("object")
        .remove("transcript");
    let no_file = format!(
        "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\nink-whisper\r\n--{BOUNDARY}--\r\n"
    );
    let cases = [
        (
            Route::TtsBytes,
            json_body(&no_transcript),
            "transcript is required",
        ),
        (
            Route::TtsSse,
            json_body(&sse_no_transcript),
            "transcript is required",
        ),
        (
            Route::Stt,
            Bytes::from(no_file),
            "the form field file is required",
        ),
    ];
    for (route, body, message) in cases {
        let case = route.path();
        let request = route_request(&harness, route, "", Credential::Bearer, &session);
        let (response, body) = harness.send(full(request, body)).await;
        assert_eq!(response.status(), 400, "{case}: {}", preview(&body));
        let error: Value = serde_json::from_slice(&body).expect("JSON error body");
        assert_eq!(error["error_code"], "invalid_request", "{case}: code");
        assert_eq!(error["message"], message, "{case}: the stand-in's message");
        assert_eq!(error["title"], "Bad Request", "{case}: title");
    }
}

/// A response read off a raw connection.
struct RawResponse {
    status: StatusCode,
    headers: HeaderMap,
    body: Vec<u8>,
}

/// Reads more bytes into `received`, failing the test if the peer closes or
/// stays silent.
async fn read_more(stream: &mut (impl AsyncRead + Unpin), received: &mut Vec<u8>) {
    let mut buffer = [0u8; 4096];
    let read = tokio::time::timeout(PROMPT, stream.read(&mut buffer))
        .await
        .expect("the response arrives in time")
        .expect("the connection stays readable");
    assert!(
        read > 0,
        "the connection closed before the response was complete"
    );
    received.extend_from_slice(&buffer[..read]);
}

/// Reads one HTTP/1.1 response with a `Content-Length` body.
async fn read_raw_response(stream: &mut (impl AsyncRead + Unpin)) -> RawResponse {
    let mut received = Vec::new();
    let head_end = loop {
        if let Some(at) = received.windows(4).position(|window| window == b"\r\n\r\n") {
            break at;
        }
        read_more(stream, &mut received).await;
    };

    let head = std::str::from_utf8(&received[..head_end]).expect("ASCII head");
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|status_line| status_line.split(' ').nth(1))
        .and_then(|code| code.parse::<u16>().ok())
        .and_then(|code| StatusCode::from_u16(code).ok())
        .expect("a status code in the status line");
    let mut headers = HeaderMap::new();
    for line in lines {
        let (name, value) = line.split_once(':').expect("header line");
        headers.append(
            HeaderName::from_bytes(name.trim().as_bytes()).expect("header name"),
            HeaderValue::from_str(value.trim()).expect("header value"),
        );
    }

    let length: usize = headers
        .get("content-length")
        .expect("the response has a Content-Length")
        .to_str()
        .expect("ASCII")
        .parse()
        .expect("a number");
    let body_start = head_end + 4;
    while received.len() < body_start + length {
        read_more(stream, &mut received).await;
    }
    RawResponse {
        status,
        headers,
        body: received[body_start..].to_vec(),
    }
}

#[tokio::test]
async fn unknown_paths_get_404_without_forwarding() {
    let harness = Harness::start().await;
    let session = harness.session("mallory", &["tts", "stt"]);
    let body = tts_bytes_body("Never forwarded").to_string();
    let cases = [
        ("POST", "/access-token"),
        ("GET", "/voices"),
        ("POST", "/voices"),
        ("GET", "/"),
        ("POST", "/"),
        ("POST", "/tts/%62ytes"),
        ("POST", "/tts/./bytes"),
        ("POST", "/tts/../tts/bytes"),
        ("POST", "//tts/bytes"),
        ("POST", "/tts/bytes/"),
        ("POST", "/TTS/bytes"),
        ("POST", "/tts/bytes;x"),
        ("POST", "/stt/"),
        ("POST", "/audio/transcriptions/"),
    ];
    for (method, path) in cases {
        let case = format!("{method} {path}");
        let mut stream = harness.tls_connect().await;
        let request = format!(
            "{method} {path} HTTP/1.1\r\nhost: localhost\r\nauthorization: Bearer {session}\r\ncartesia-version: {DEFAULT_VERSION}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        );
        stream
            .write_all(request.as_bytes())
            .await
            .expect("the request is sent");
        let response = read_raw_response(&mut stream).await;
        assert_gateway_error(
            response.status,
            &response.headers,
            &response.body,
            (404, "not_found"),
            &case,
        );
    }
    assert!(
        harness.stand_in.requests().is_empty(),
        "the stand-in saw no request and no mint"
    );
}

#[tokio::test]
async fn wrong_method_gets_405_with_allow() {
    let harness = Harness::start().await;
    let session = harness.session("nina", &["tts", "stt"]);
    let client = harness.client();
    for route in Route::ALL {
        for method in ["GET", "PUT", "DELETE"] {
            let case = format!("{method} {}", route.path());
            let request = Request::builder()
                .method(method)
                .uri(format!("{}{}", harness.url(), route.path()))
                .header("authorization", format!("Bearer {session}"));
            let (response, body) = send_with(&client, full(request, Bytes::new())).await;
            assert_gateway_error(
                response.status(),
                response.headers(),
                &body,
                (405, "method_not_allowed"),
                &case,
            );
            assert_eq!(header(&response, "allow"), Some("POST"), "{case}: Allow");
        }
    }
    assert!(
        harness.stand_in.requests().is_empty(),
        "the stand-in saw no request and no mint"
    );
}

/// Sends a valid `/tts/bytes` request and returns the response with its body.
async fn send_tts_bytes(harness: &Harness, user: &str) -> (Response<()>, Bytes) {
    let session = harness.session(user, &["tts"]);
    let request = route_request(harness, Route::TtsBytes, "", Credential::Bearer, &session);
    send_with(
        &harness.client(),
        full(request, Route::TtsBytes.valid_body()),
    )
    .await
}

/// Settings that make upstream timeouts take one second.
const SHORT_TIMEOUTS: &str = "connect_timeout_secs = 1\nresponse_timeout_secs = 1";

/// What the relay does with each new connection.
#[derive(Clone)]
enum RelayMode {
    /// Pipes bytes both ways to this address.
    Forward(SocketAddr),
    /// Accepts TCP, then never reads or writes.
    Hold,
    /// Completes a TLS handshake, reads everything, and never responds.
    Silent(TlsAcceptor),
}

/// A TCP listener in front of the stand-in that a test switches while the
/// gateway runs, so the gateway can mint and cache a token first and meet a
/// failing upstream when it forwards.
struct Relay {
    address: SocketAddr,
    mode: Arc<Mutex<RelayMode>>,
    /// Each new value ends every open connection.
    reset: watch::Sender<()>,
    accept_task: JoinHandle<()>,
}

impl Relay {
    /// Binds 127.0.0.1 and starts in [`RelayMode::Hold`].
    async fn start() -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("address");
        let mode = Arc::new(Mutex::new(RelayMode::Hold));
        let (reset, _) = watch::channel(());
        let accept_task = tokio::spawn(relay_accept(listener, Arc::clone(&mode), reset.clone()));
        Relay {
            address,
            mode,
            reset,
            accept_task,
        }
    }

    fn url(&self) -> String {
        format!("https://{}", self.address)
    }

    /// Ends every open connection and handles new ones by `mode`.
    fn switch(&self, mode: RelayMode) {
        *self.mode.lock().unwrap_or_else(PoisonError::into_inner) = mode;
        self.reset.send_replace(());
    }

    /// Ends every open connection and closes the port.
    fn close(&self) {
        self.accept_task.abort();
        self.reset.send_replace(());
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.close();
    }
}

async fn relay_accept(
    listener: TcpListener,
    mode: Arc<Mutex<RelayMode>>,
    reset: watch::Sender<()>,
) {
    while let Ok((stream, _)) = listener.accept().await {
        let mode = mode.lock().unwrap_or_else(PoisonError::into_inner).clone();
        let mut reset = reset.subscribe();
        tokio::spawn(async move {
            tokio::select! {
                () = relay_connection(stream, mode) => {}
                _ = reset.changed() => {}
            }
        });
    }
}

async fn relay_connection(mut stream: TcpStream, mode: RelayMode) {
    match mode {
        RelayMode::Forward(target) => {
            if let Ok(mut upstream) = TcpStream::connect(target).await {
                let _ = tokio::io::copy_bidirectional(&mut stream, &mut upstream).await;
            }
        }
        RelayMode::Hold => std::future::pending().await,
        RelayMode::Silent(acceptor) => {
            if let Ok(mut tls) = acceptor.accept(stream).await {
                let mut sink = [0u8; 4096];
                while matches!(tls.read(&mut sink).await, Ok(read) if read > 0) {}
                std::future::pending::<()>().await;
            }
        }
    }
}

/// Starts the gateway behind a relay that forwards to the stand-in, and
/// sends one request so a token for `user` is minted and cached.
async fn start_behind_relay(user: &str) -> (Harness, Relay) {
    let relay = Relay::start().await;
    let harness = Harness::start_with(Options {
        upstream: SHORT_TIMEOUTS,
        upstream_url: Some(relay.url()),
        ..Options::default()
    })
    .await;
    relay.switch(RelayMode::Forward(harness.stand_in_addr));
    let (response, body) = send_tts_bytes(&harness, user).await;
    assert_eq!(
        response.status(),
        200,
        "the request through the relay works: {}",
        preview(&body)
    );
    (harness, relay)
}

/// Checks that exactly one token was minted and one request forwarded, so
/// the failure came from forwarding with a cached token.
fn assert_failed_on_forward(harness: &Harness) {
    assert_eq!(harness.stand_in.mint_count(), 1, "the token was reused");
    assert_eq!(
        forwarded(harness).len(),
        1,
        "only the first request reached the stand-in"
    );
}

#[tokio::test]
async fn unreachable_upstream_on_forward_gets_502() {
    let (harness, relay) = start_behind_relay("oscar").await;
    relay.close();
    let (response, body) = send_tts_bytes(&harness, "oscar").await;
    assert_gateway_error(
        response.status(),
        response.headers(),
        &body,
        (502, "upstream_unavailable"),
        "closed upstream port",
    );
    assert_failed_on_forward(&harness);
}

#[tokio::test]
async fn upstream_connect_timeout_gets_504() {
    let (harness, relay) = start_behind_relay("peggy").await;
    relay.switch(RelayMode::Hold);
    let (response, body) = send_tts_bytes(&harness, "peggy").await;
    assert_gateway_error(
        response.status(),
        response.headers(),
        &body,
        (504, "upstream_timeout"),
        "upstream that accepts TCP and never answers",
    );
    assert_failed_on_forward(&harness);
}

#[tokio::test]
async fn upstream_response_timeout_gets_504() {
    let (harness, relay) = start_behind_relay("rupert").await;
    let tls =
        cartesia_gateway::tls::server_config(&harness.certs.cert_file, &harness.certs.key_file)
            .expect("test certificate loads");
    relay.switch(RelayMode::Silent(TlsAcceptor::from(tls)));
    let (response, body) = send_tts_bytes(&harness, "rupert").await;
    assert_gateway_error(
        response.status(),
        response.headers(),
        &body,
        (504, "upstream_timeout"),
        "upstream that completes TLS and never sends a response head",
    );
    assert_failed_on_forward(&harness);
}

#[tokio::test]
async fn closed_upstream_port_gets_503() {
    let closed = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = closed.local_addr().expect("address");
    drop(closed);
    let harness = Harness::start_with(Options {
        upstream_url: Some(format!("https://{address}")),
        tokens: "mint_retry_delay_ms = 10",
        ..Options::default()
    })
    .await;
    let (response, body) = send_tts_bytes(&harness, "oscar").await;
    // The mint is the first upstream call; a connection failure there is
    // transient, so it is retried and then answered with 503.
    assert_gateway_error(
        response.status(),
        response.headers(),
        &body,
        (503, "token_mint_unavailable"),
        "closed upstream port",
    );
    assert!(
        response.headers().contains_key("retry-after"),
        "closed upstream port: 503 carries Retry-After"
    );
}

#[tokio::test]
async fn silent_upstream_mint_gets_503() {
    let relay = Relay::start().await;
    let harness = Harness::start_with(Options {
        upstream: SHORT_TIMEOUTS,
        upstream_url: Some(relay.url()),
        tokens: "mint_retries = 0",
        ..Options::default()
    })
    .await;
    let (response, body) = send_tts_bytes(&harness, "peggy").await;
    // A mint that times out is transient too: 503 with Retry-After. A
    // forwarded request that times out gets 504; see
    // upstream_connect_timeout_gets_504.
    assert_gateway_error(
        response.status(),
        response.headers(),
        &body,
        (503, "token_mint_unavailable"),
        "upstream that accepts TCP and never answers",
    );
}

#[tokio::test]
async fn failed_mint_gets_502_then_retries() {
    let harness = Harness::start().await;
    harness.stand_in.faults().fail_mints_with(Some(400));
    let (response, body) = send_tts_bytes(&harness, "quinn").await;
    assert_gateway_error(
        response.status(),
        response.headers(),
        &body,
        (502, "token_mint_rejected"),
        "failed mint",
    );
    let body_text = String::from_utf8_lossy(&body);
    assert!(
        !body_text.contains("injected_fault"),
        "the stand-in's mint error is not echoed"
    );
    assert!(
        forwarded(&harness).is_empty(),
        "nothing is forwarded without a token"
    );

    harness.stand_in.faults().fail_mints_with(None);
    let (response, body) = send_tts_bytes(&harness, "quinn").await;
    assert_eq!(
        response.status(),
        200,
        "the failed mint was not cached: {}",
        preview(&body)
    );
    assert_eq!(harness.stand_in.mint_count(), 1, "one successful mint");
}

#[tokio::test]
async fn plain_http_on_tls_port_gets_400() {
    let harness = Harness::start().await;
    let mut stream = TcpStream::connect(harness.addr).await.expect("connect");
    stream
        .write_all(b"GET /tts/bytes HTTP/1.1\r\nhost: localhost\r\n\r\n")
        .await
        .expect("the request is sent");
    let response = read_raw_response(&mut stream).await;
    assert_gateway_error(
        response.status,
        &response.headers,
        &response.body,
        (400, "https_required"),
        "plain HTTP",
    );
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(PROMPT, stream.read_to_end(&mut rest)).await;
    assert!(
        matches!(closed, Ok(Ok(0))),
        "the gateway closes the connection after the 400"
    );
    assert!(
        harness.stand_in.requests().is_empty(),
        "the stand-in saw nothing"
    );
}
