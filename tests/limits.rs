//! Connection, header, body and time limits of the gateway, over real TLS.
//!
//! Every test sets short limits through [`Options`] so that nothing waits
//! longer than a few seconds. The slow-client test keeps about 300
//! connections open, and both ends live in this process: the whole file
//! peaked at 667 open file descriptors when measured, under the common soft
//! limit (`ulimit -n`) of 1024.

// Helper functions unwrap like the tests do, because a failure there is a test failure.
#![allow(clippy::unwrap_used)]

mod common;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use common::*;
use futures_util::stream::{self, BoxStream};
use futures_util::{SinkExt, StreamExt};
use http::{Request, Response, StatusCode, Version};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::client::conn::http1::SendRequest;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls_pki_types::ServerName;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

/// Maximum wait for anything that should happen promptly.
const PROMPT: Duration = Duration::from_secs(5);
/// Both client protocols.
const PROTOCOLS: [Version; 2] = [Version::HTTP_11, Version::HTTP_2];
/// Multipart boundary of the `/stt` uploads built here.
const BOUNDARY: &str = "limits-test-boundary-4b1d";
/// Milliseconds of audio per transcript character and per chunk in the
/// stand-in's TTS streams.
const MS_PER_CHARACTER: usize = 60;
const CHUNK_MS: usize = 100;
/// Size of the stand-in's WAV header for 16 kHz `pcm_s16le`, and bytes per
/// millisecond of that audio.
const WAV_HEADER_LEN: usize = 44;
const BYTES_PER_MS: usize = 32;

// ---------------------------------------------------------------------------
// Helpers

/// Connects over TLS with ALPN `http/1.1`, returning errors instead of
/// panicking so that callers can count failures.
async fn try_tls_connect(
    addr: SocketAddr,
    ca_file: &Path,
) -> std::io::Result<TlsStream<TcpStream>> {
    let mut config = (*cartesia_gateway::tls::client_config(Some(ca_file)).unwrap()).clone();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let connector = TlsConnector::from(Arc::new(config));
    let stream = TcpStream::connect(addr).await?;
    connector
        .connect(ServerName::try_from("localhost").unwrap(), stream)
        .await
}

/// Starts an HTTP/1.1 client connection over an open TLS stream. The
/// connection closes once the returned sender is dropped.
async fn http1_over(stream: TlsStream<TcpStream>) -> SendRequest<Full<Bytes>> {
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(connection);
    sender
}

fn json_bytes(value: &Value) -> Bytes {
    Bytes::from(serde_json::to_vec(value).unwrap())
}

/// Builds a `POST /tts/bytes` request for `transcript` with a bearer session.
fn tts_request(url: &str, session: &str, transcript: &str) -> Request<Full<Bytes>> {
    Request::post(format!("{url}/tts/bytes"))
        .header("authorization", format!("Bearer {session}"))
        .header("content-type", "application/json")
        .body(Full::new(json_bytes(&tts_bytes_body(transcript))))
        .unwrap()
}

/// Reads a whole response, or fails the test if it takes longer than
/// [`PROMPT`].
async fn read_response(response: Response<Incoming>) -> (Response<()>, Bytes) {
    let (parts, body) = response.into_parts();
    let body = tokio::time::timeout(PROMPT, body.collect())
        .await
        .expect("the body arrives in time")
        .expect("the body arrives whole")
        .to_bytes();
    (Response::from_parts(parts, ()), body)
}

/// Sends `request` with `client` and reads the whole response.
async fn send_with(client: &TestClient, request: Request<Full<Bytes>>) -> (Response<()>, Bytes) {
    let response = tokio::time::timeout(PROMPT, client.request(request))
        .await
        .expect("the gateway answers in time")
        .expect("the gateway answers");
    read_response(response).await
}

fn client_for(harness: &Harness, version: Version) -> TestClient {
    client(&harness.certs.ca_file, version == Version::HTTP_2)
}

fn header<'a>(response: &'a Response<()>, name: &str) -> Option<&'a str> {
    response
        .headers()
        .get(name)
        .and_then(|value| value.to_str().ok())
}

/// Bytes of stand-in audio for `transcript`, and the number of chunks it
/// streams them in.
fn expected_audio_len(transcript: &str) -> usize {
    transcript.chars().count() * MS_PER_CHARACTER * BYTES_PER_MS
}

fn expected_chunks(transcript: &str) -> usize {
    (transcript.chars().count() * MS_PER_CHARACTER).div_ceil(CHUNK_MS)
}

/// Builds a 16 kHz, 16-bit mono WAV file of `samples` samples of silence.
fn wav_file(samples: u32) -> Vec<u8> {
    let data_len = samples * 2;
    let mut wav = Vec::with_capacity(WAV_HEADER_LEN + data_len as usize);
    wav.extend_from_slice(b"RIFF");
    wav.extend_from_slice(&(36 + data_len).to_le_bytes());
    wav.extend_from_slice(b"WAVEfmt ");
    wav.extend_from_slice(&16u32.to_le_bytes());
    // Format tag 1 (PCM), one channel, 16 kHz, 32000 bytes per second.
    wav.extend_from_slice(&1u16.to_le_bytes());
    wav.extend_from_slice(&1u16.to_le_bytes());
    wav.extend_from_slice(&16_000u32.to_le_bytes());
    wav.extend_from_slice(&32_000u32.to_le_bytes());
    // Block align 2 bytes, 16 bits per sample.
    wav.extend_from_slice(&2u16.to_le_bytes());
    wav.extend_from_slice(&16u16.to_le_bytes());
    wav.extend_from_slice(b"data");
    wav.extend_from_slice(&data_len.to_le_bytes());
    wav.resize(WAV_HEADER_LEN + data_len as usize, 0);
    wav
}

/// Builds a `/stt` multipart upload with the `model` field and `wav` as the
/// file.
fn multipart_body(wav: &[u8]) -> Bytes {
    let mut body = format!(
        "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\nink-whisper\r\n\
         --{BOUNDARY}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.wav\"\r\n\
         Content-Type: audio/wav\r\n\r\n"
    )
    .into_bytes();
    body.extend_from_slice(wav);
    body.extend_from_slice(format!("\r\n--{BOUNDARY}--\r\n").as_bytes());
    Bytes::from(body)
}

fn multipart_type() -> String {
    format!("multipart/form-data; boundary={BOUNDARY}")
}

/// Counts the `/stt` requests that reached the stand-in.
fn forwarded_stt(harness: &Harness) -> usize {
    harness
        .stand_in
        .requests()
        .iter()
        .filter(|request| request.path == "/stt")
        .count()
}

type UploadBody = StreamBody<BoxStream<'static, Result<Frame<Bytes>, Infallible>>>;
type UploadClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, UploadBody>;

/// Builds a client whose request bodies are fed part by part from a channel.
fn upload_client(harness: &Harness, version: Version) -> UploadClient {
    let mut tls =
        (*cartesia_gateway::tls::client_config(Some(&harness.certs.ca_file)).unwrap()).clone();
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

/// Creates a request body without a declared length (chunked on HTTP/1.1)
/// that yields each `Bytes` sent on the returned channel and ends when the
/// sender is dropped.
fn channel_body() -> (mpsc::Sender<Bytes>, UploadBody) {
    let (sender, receiver) = mpsc::channel::<Bytes>(4);
    let frames = stream::unfold(receiver, |mut receiver| async move {
        let data = receiver.recv().await?;
        Some((Ok(Frame::data(data)), receiver))
    });
    (sender, StreamBody::new(frames.boxed()))
}

/// Builds a `POST /stt` request with a streamed body.
fn stt_upload(harness: &Harness, session: &str, body: UploadBody) -> Request<UploadBody> {
    Request::post(format!("{}/stt", harness.url()))
        .header("authorization", format!("Bearer {session}"))
        .header("content-type", multipart_type())
        .body(body)
        .unwrap()
}

/// Waits until the peer closes `stream` (end of stream or an error) and
/// returns the bytes read before that, or `None` if it stays open for
/// `limit`.
async fn read_until_closed(
    stream: &mut (impl tokio::io::AsyncRead + Unpin),
    limit: Duration,
) -> Option<Vec<u8>> {
    let mut received = Vec::new();
    let reading = async {
        let mut buffer = [0u8; 4096];
        loop {
            match stream.read(&mut buffer).await {
                Ok(0) | Err(_) => return,
                Ok(read) => received.extend_from_slice(&buffer[..read]),
            }
        }
    };
    tokio::time::timeout(limit, reading).await.ok()?;
    Some(received)
}

// ---------------------------------------------------------------------------
// Slow clients

/// Start of a request head that a trickling client never finishes.
const PARTIAL_HEAD: &[u8] = b"POST /tts/bytes HTTP/1.1\r\nhost: localhost\r\nx-slow: ";
/// Pause between two bytes of a trickling client.
const TRICKLE_PAUSE: Duration = Duration::from_millis(200);
/// Start of a TLS handshake record that never continues: a ClientHello
/// record header announcing 512 bytes.
const PARTIAL_CLIENT_HELLO: &[u8] = &[0x16, 0x03, 0x01, 0x02, 0x00];

/// Counters shared by the held connections of one test.
#[derive(Default)]
struct HeldCounts {
    /// Connections whose TLS handshake completed.
    established: AtomicUsize,
    /// Connections that failed to connect or complete the handshake.
    failed: AtomicUsize,
    /// Connections the gateway closed.
    closed: AtomicUsize,
}

/// Completes the TLS handshake, sends [`PARTIAL_HEAD`] and then one byte
/// every [`TRICKLE_PAUSE`] until the gateway closes the connection. Returns
/// the time from the end of the handshake to the close.
async fn trickle(
    addr: SocketAddr,
    ca_file: Arc<Path>,
    counts: Arc<HeldCounts>,
) -> Option<Duration> {
    let Ok(stream) = try_tls_connect(addr, &ca_file).await else {
        counts.failed.fetch_add(1, Ordering::SeqCst);
        return None;
    };
    let established = Instant::now();
    counts.established.fetch_add(1, Ordering::SeqCst);
    let (mut reader, mut writer) = tokio::io::split(stream);
    let mut open = writer.write_all(PARTIAL_HEAD).await.is_ok();
    let mut buffer = [0u8; 1024];
    while open {
        tokio::select! {
            read = reader.read(&mut buffer) => open = matches!(read, Ok(read) if read > 0),
            () = tokio::time::sleep(TRICKLE_PAUSE) => {
                open = writer.write_all(b"a").await.is_ok() && writer.flush().await.is_ok();
            }
        }
    }
    counts.closed.fetch_add(1, Ordering::SeqCst);
    Some(established.elapsed())
}

/// Opens a TCP connection, optionally sends `first_bytes`, and never
/// completes the TLS handshake. Returns the time from connecting to the
/// gateway's close.
async fn stall_handshake(
    addr: SocketAddr,
    first_bytes: &'static [u8],
    counts: Arc<HeldCounts>,
) -> Option<Duration> {
    let Ok(mut stream) = TcpStream::connect(addr).await else {
        counts.failed.fetch_add(1, Ordering::SeqCst);
        return None;
    };
    let connected = Instant::now();
    counts.established.fetch_add(1, Ordering::SeqCst);
    if stream.write_all(first_bytes).await.is_err() {
        counts.closed.fetch_add(1, Ordering::SeqCst);
        return Some(connected.elapsed());
    }
    let mut buffer = [0u8; 1024];
    while matches!(stream.read(&mut buffer).await, Ok(read) if read > 0) {}
    counts.closed.fetch_add(1, Ordering::SeqCst);
    Some(connected.elapsed())
}

/// Opens `tricklers` trickling connections and `stallers` connections that
/// stall in the TLS handshake (half of them silent, half after a partial
/// record header), and waits until all of them are connected.
async fn hold_connections(
    harness: &Harness,
    tricklers: usize,
    stallers: usize,
) -> (Arc<HeldCounts>, Vec<JoinHandle<Option<Duration>>>) {
    let counts = Arc::new(HeldCounts::default());
    let ca_file: Arc<Path> = Arc::from(harness.certs.ca_file.as_path());
    let mut tasks = Vec::new();
    for index in 0..stallers {
        let first_bytes = if index % 2 == 0 {
            &[][..]
        } else {
            PARTIAL_CLIENT_HELLO
        };
        tasks.push(tokio::spawn(stall_handshake(
            harness.addr,
            first_bytes,
            Arc::clone(&counts),
        )));
    }
    for _ in 0..tricklers {
        tasks.push(tokio::spawn(trickle(
            harness.addr,
            Arc::clone(&ca_file),
            Arc::clone(&counts),
        )));
    }
    let total = tricklers + stallers;
    let all_connected = eventually(|| {
        counts.established.load(Ordering::SeqCst) + counts.failed.load(Ordering::SeqCst) == total
    })
    .await;
    assert!(
        all_connected,
        "all {total} slow connections connect within 5 s"
    );
    assert_eq!(
        counts.failed.load(Ordering::SeqCst),
        0,
        "every slow connection connects (and the tricklers complete TLS)"
    );
    (counts, tasks)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_clients_do_not_block_others() {
    let harness = Harness::start().await;
    let session = harness.session("patient", &["tts"]);
    let (counts, tasks) = hold_connections(&harness, 250, 50).await;

    let started = Instant::now();
    let requests = (0..20).map(|index| {
        // A client per request, so each one needs a new connection.
        let client = harness.client();
        let request = tts_request(&harness.url(), &session, "Hi");
        async move {
            let sent = Instant::now();
            let (response, body) = send_with(&client, request).await;
            (index, response.status(), body.len(), sent.elapsed())
        }
    });
    let results = futures_util::future::join_all(requests).await;
    let all_done = started.elapsed();

    for (index, status, body_len, elapsed) in results {
        assert_eq!(status, StatusCode::OK, "request {index}: status");
        assert_eq!(
            body_len,
            WAV_HEADER_LEN + expected_audio_len("Hi"),
            "request {index}: the whole WAV arrives"
        );
        assert!(
            elapsed < Duration::from_secs(2),
            "request {index} took {elapsed:?} with slow clients connected"
        );
    }
    assert!(
        all_done < Duration::from_secs(3),
        "20 requests took {all_done:?} with slow clients connected"
    );
    assert_eq!(
        counts.closed.load(Ordering::SeqCst),
        0,
        "all 300 slow connections are still open after the requests, so they were held throughout"
    );
    for task in tasks {
        task.abort();
    }
}

#[tokio::test]
async fn trickled_head_closed_after_header_timeout() {
    let harness = Harness::start_with(Options {
        server: "header_read_timeout_secs = 1",
        ..Options::default()
    })
    .await;
    let (_counts, tasks) = hold_connections(&harness, 50, 0).await;
    for (index, task) in tasks.into_iter().enumerate() {
        let held = tokio::time::timeout(PROMPT, task)
            .await
            .expect("the gateway closes every trickling connection within 5 s")
            .unwrap()
            .expect("the trickler completed TLS");
        assert!(
            held >= Duration::from_millis(900),
            "trickler {index} was closed after {held:?}, before the 1 s header read timeout"
        );
        assert!(
            held < Duration::from_millis(2500),
            "trickler {index} was closed after {held:?}, long after the 1 s header read timeout"
        );
    }
}

#[tokio::test]
async fn stalled_handshake_closed_after_timeout() {
    let harness = Harness::start_with(Options {
        server: "tls_handshake_timeout_secs = 1",
        ..Options::default()
    })
    .await;
    let (_counts, tasks) = hold_connections(&harness, 0, 20).await;
    for (index, task) in tasks.into_iter().enumerate() {
        let held = tokio::time::timeout(PROMPT, task)
            .await
            .expect("the gateway closes every stalled handshake within 5 s")
            .unwrap()
            .expect("the TCP connection opened");
        // Even indexes are silent, odd ones sent a partial record header.
        assert!(
            held >= Duration::from_millis(900),
            "stalled handshake {index} was closed after {held:?}, before the 1 s timeout"
        );
        assert!(
            held < Duration::from_millis(2500),
            "stalled handshake {index} was closed after {held:?}, long after the 1 s timeout"
        );
    }
}

#[tokio::test]
async fn silent_tls_connection_closed_after_header_timeout() {
    let harness = Harness::start_with(Options {
        server: "header_read_timeout_secs = 1",
        ..Options::default()
    })
    .await;
    let mut stream = harness.tls_connect().await;
    let opened = Instant::now();
    let closed = read_until_closed(&mut stream, PROMPT).await;
    let held = opened.elapsed();
    assert!(
        closed.is_some(),
        "the gateway closes a TLS connection that sends no request within 5 s"
    );
    assert!(
        held >= Duration::from_millis(900),
        "the silent connection was closed after {held:?}, before the 1 s header read timeout"
    );
    assert!(
        held < Duration::from_millis(2500),
        "the silent connection was closed after {held:?}, long after the 1 s header read timeout"
    );
}

// ---------------------------------------------------------------------------
// Connection limit

#[tokio::test]
async fn max_connections_holds_back_new_ones() {
    let harness = Harness::start_with(Options {
        server: "max_connections = 2",
        ..Options::default()
    })
    .await;
    let session = harness.session("limited", &["tts"]);
    let url = harness.url();
    let mut first = http1_over(harness.tls_connect().await).await;
    let mut second = http1_over(harness.tls_connect().await).await;
    for (name, sender) in [("first", &mut first), ("second", &mut second)] {
        let response = sender
            .send_request(tts_request(&url, &session, "Hi"))
            .await
            .unwrap();
        let (response, _) = read_response(response).await;
        assert_eq!(
            response.status(),
            StatusCode::OK,
            "{name} connection: status"
        );
    }

    let addr = harness.addr;
    let ca_file = harness.certs.ca_file.clone();
    let third = tokio::spawn(async move { try_tls_connect(addr, &ca_file).await });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !third.is_finished(),
        "the third TLS handshake waits while two connections are open"
    );

    for (name, sender) in [("first", &mut first), ("second", &mut second)] {
        let response = tokio::time::timeout(
            PROMPT,
            sender.send_request(tts_request(&url, &session, "Again")),
        )
        .await
        .expect("an established connection answers while the third waits")
        .unwrap();
        let (response, body) = read_response(response).await;
        assert_eq!(
            response.status(),
            StatusCode::OK,
            "{name} connection: status while the third waits"
        );
        assert_eq!(
            body.len(),
            WAV_HEADER_LEN + expected_audio_len("Again"),
            "{name} connection: the whole WAV arrives while the third waits"
        );
    }
    assert!(
        !third.is_finished(),
        "the third TLS handshake still waits after the others served requests"
    );

    drop(second);
    let third = tokio::time::timeout(PROMPT, third)
        .await
        .expect("the third handshake completes once a connection closed")
        .unwrap()
        .expect("the third TLS handshake succeeds");
    let mut third = http1_over(third).await;
    let response = tokio::time::timeout(
        PROMPT,
        third.send_request(tts_request(&url, &session, "Third")),
    )
    .await
    .expect("the third connection is served in time")
    .unwrap();
    let (response, _) = read_response(response).await;
    assert_eq!(
        response.status(),
        StatusCode::OK,
        "third connection: status"
    );
}

// ---------------------------------------------------------------------------
// Header size

/// Sends a `/tts/bytes` request with an `x-padding` header of `padding`
/// bytes.
async fn send_padded(
    harness: &Harness,
    version: Version,
    padding: usize,
) -> Result<(Response<()>, Bytes), hyper_util::client::legacy::Error> {
    let session = harness.session("padded", &["tts"]);
    let mut request = tts_request(&harness.url(), &session, "Hi");
    request
        .headers_mut()
        .insert("x-padding", "p".repeat(padding).parse().unwrap());
    let response = tokio::time::timeout(PROMPT, client_for(harness, version).request(request))
        .await
        .expect("the gateway answers or fails in time")?;
    Ok(read_response(response).await)
}

#[tokio::test]
async fn oversized_header_gets_431_on_http1() {
    let harness = Harness::start_with(Options {
        server: "max_header_bytes = 8192",
        ..Options::default()
    })
    .await;
    let (response, _) = send_padded(&harness, Version::HTTP_11, 20_000)
        .await
        .expect("the client receives a response to a 20 KB header");
    assert_eq!(
        response.status(),
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
        "a 20 KB header gets 431"
    );
    assert_eq!(forwarded_tts(&harness), 0, "nothing reaches the stand-in");

    let (response, _) = send_padded(&harness, Version::HTTP_11, 4_000)
        .await
        .expect("the client receives a response to a 4 KB header");
    assert_eq!(response.status(), StatusCode::OK, "a 4 KB header is served");
}

#[tokio::test]
async fn oversized_header_gets_431_on_http2() {
    let harness = Harness::start_with(Options {
        server: "max_header_bytes = 8192",
        ..Options::default()
    })
    .await;
    // The h2 crate responds to an oversized header list itself, with a 431 and
    // an empty body, before the request reaches the gateway's handler.
    let (response, body) = send_padded(&harness, Version::HTTP_2, 20_000)
        .await
        .expect("the client receives a response to a 20 KB header");
    assert_eq!(
        response.status(),
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
        "a 20 KB header on HTTP/2 gets 431"
    );
    assert_eq!(
        response.version(),
        Version::HTTP_2,
        "the 431 came over HTTP/2"
    );
    assert!(body.is_empty(), "the HTTP/2 431 has an empty body");
    assert_eq!(forwarded_tts(&harness), 0, "nothing reaches the stand-in");

    let (response, _) = send_padded(&harness, Version::HTTP_2, 4_000)
        .await
        .expect("the client receives a response to a 4 KB header");
    assert_eq!(response.status(), StatusCode::OK, "a 4 KB header is served");
}

fn forwarded_tts(harness: &Harness) -> usize {
    harness
        .stand_in
        .requests()
        .iter()
        .filter(|request| request.path == "/tts/bytes")
        .count()
}

/// Joins an error and its sources into one line.
fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

// ---------------------------------------------------------------------------
// Body size

/// Checks a gateway `body_too_large` response.
fn assert_body_too_large(response: &Response<()>, body: &[u8], case: &str) {
    assert_eq!(
        response.status(),
        StatusCode::PAYLOAD_TOO_LARGE,
        "{case}: status, body {}",
        String::from_utf8_lossy(body)
    );
    let json: Value = serde_json::from_slice(body).expect("the 413 body is JSON");
    assert_eq!(json["error"], "body_too_large", "{case}: error code");
}

#[tokio::test]
async fn declared_oversized_body_gets_413() {
    let harness = Harness::start_with(Options {
        server: "max_request_body_bytes = 1000",
        ..Options::default()
    })
    .await;
    let session = harness.session("uploader", &["stt"]);
    let body = multipart_body(&wav_file(2_400));
    assert!(body.len() > 4_900, "the upload is about 5000 bytes");

    // HTTP/1.1 over a raw stream, to see exactly what the client receives.
    let mut stream = harness.tls_connect().await;
    let head = format!(
        "POST /stt HTTP/1.1\r\nhost: localhost\r\nauthorization: Bearer {session}\r\n\
         content-type: {}\r\ncontent-length: {}\r\n\r\n",
        multipart_type(),
        body.len()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(&body).await.unwrap();
    let received = read_until_closed(&mut stream, PROMPT)
        .await
        .expect("the gateway closes the connection after the 413");
    let text = String::from_utf8_lossy(&received);
    let (head, json) = text
        .split_once("\r\n\r\n")
        .expect("a whole response arrives before the close");
    assert!(
        head.starts_with("HTTP/1.1 413 "),
        "HTTP/1.1: status line, got {head}"
    );
    assert!(
        head.to_ascii_lowercase().contains("\r\nconnection: close"),
        "HTTP/1.1: Connection: close, got {head}"
    );
    let json: Value = serde_json::from_str(json).expect("the 413 body is JSON");
    assert_eq!(json["error"], "body_too_large", "HTTP/1.1: error code");

    // HTTP/2.
    let request = Request::post(format!("{}/stt", harness.url()))
        .header("authorization", format!("Bearer {session}"))
        .header("content-type", multipart_type())
        .body(Full::new(body.clone()))
        .unwrap();
    let (response, json) = send_with(&harness.h2_client(), request).await;
    assert_body_too_large(&response, &json, "HTTP/2");
    assert_eq!(
        response.version(),
        Version::HTTP_2,
        "HTTP/2: the response came over HTTP/2"
    );
    assert_eq!(
        header(&response, "connection"),
        None,
        "HTTP/2: no Connection header, which HTTP/2 forbids"
    );

    assert_eq!(forwarded_stt(&harness), 0, "nothing reaches the stand-in");
}

/// What a client received for a body streamed past the limit.
struct StreamedOutcome {
    version: Version,
    status: StatusCode,
    connection: Option<String>,
    body: String,
}

#[tokio::test]
async fn streamed_oversized_body_gets_413() {
    let harness = Harness::start_with(Options {
        server: "max_request_body_bytes = 1000",
        ..Options::default()
    })
    .await;
    let session = harness.session("streamer", &["stt"]);
    let upload = multipart_body(&wav_file(2_400));
    let mut outcomes = Vec::new();
    for version in PROTOCOLS {
        let (sender, body) = channel_body();
        let request = stt_upload(&harness, &session, body);
        let client = upload_client(&harness, version);
        let pending = tokio::spawn(async move { client.request(request).await });
        // The first 600 bytes pass; the next 600 take the body past 1000.
        sender.send(upload.slice(..600)).await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        // The gateway may stop reading before it takes this part.
        let _ = sender.send(upload.slice(600..1200)).await;
        let response = tokio::time::timeout(PROMPT, pending)
            .await
            .expect("the gateway answers in time")
            .unwrap();
        drop(sender);
        let response = response.unwrap_or_else(|error| {
            panic!(
                "{version:?}: the client receives a response, not {}",
                error_chain(&error)
            )
        });
        let (response, body) = read_response(response).await;
        outcomes.push(StreamedOutcome {
            version,
            status: response.status(),
            connection: header(&response, "connection").map(str::to_owned),
            body: String::from_utf8_lossy(&body).into_owned(),
        });
    }

    for outcome in &outcomes {
        let case = format!("{:?}", outcome.version);
        assert_eq!(
            outcome.status,
            StatusCode::PAYLOAD_TOO_LARGE,
            "{case}: status, body {}",
            outcome.body
        );
        let json: Value = serde_json::from_str(&outcome.body).expect("the 413 body is JSON");
        assert_eq!(json["error"], "body_too_large", "{case}: error code");
        let expected_connection = (outcome.version == Version::HTTP_11).then(|| "close".to_owned());
        assert_eq!(
            outcome.connection, expected_connection,
            "{case}: Connection: close on HTTP/1.1 and none on HTTP/2"
        );
    }
}

#[tokio::test]
async fn body_under_limit_is_forwarded() {
    let harness = Harness::start_with(Options {
        server: "max_request_body_bytes = 1000",
        ..Options::default()
    })
    .await;
    let session = harness.session("small", &["stt"]);
    let body = multipart_body(&wav_file(200));
    assert!(body.len() < 1000, "the upload is under 1000 bytes");
    for version in PROTOCOLS {
        let case = format!("{version:?}");
        let request = Request::post(format!("{}/stt", harness.url()))
            .header("authorization", format!("Bearer {session}"))
            .header("content-type", multipart_type())
            .body(Full::new(body.clone()))
            .unwrap();
        let (response, json) = send_with(&client_for(&harness, version), request).await;
        assert_eq!(
            response.status(),
            StatusCode::OK,
            "{case}: status, body {}",
            String::from_utf8_lossy(&json)
        );
        let json: Value = serde_json::from_slice(&json).unwrap();
        assert!(json["text"].is_string(), "{case}: a transcript arrives");

        // The same size without a declared length.
        let (sender, streamed) = channel_body();
        let request = stt_upload(&harness, &session, streamed);
        let client = upload_client(&harness, version);
        let pending = tokio::spawn(async move { client.request(request).await });
        sender.send(body.slice(..400)).await.unwrap();
        sender.send(body.slice(400..)).await.unwrap();
        drop(sender);
        let response = tokio::time::timeout(PROMPT, pending)
            .await
            .expect("the gateway answers in time")
            .unwrap()
            .unwrap();
        let (response, _) = read_response(response).await;
        assert_eq!(
            response.status(),
            StatusCode::OK,
            "{case}: status of a streamed body under the limit"
        );
    }
    assert_eq!(
        forwarded_stt(&harness),
        4,
        "all four uploads reach the stand-in"
    );
}

// ---------------------------------------------------------------------------
// Timeouts spare active streams

/// Settings that would cut any stream they applied to.
const SHORT_SERVER_TIMEOUTS: &str = "header_read_timeout_secs = 1";
const SHORT_UPSTREAM_TIMEOUTS: &str = "response_timeout_secs = 1";

#[tokio::test]
async fn paused_response_outlives_timeouts() {
    let harness = Harness::start_with(Options {
        server: SHORT_SERVER_TIMEOUTS,
        upstream: SHORT_UPSTREAM_TIMEOUTS,
        ..Options::default()
    })
    .await;
    let session = harness.session("listener", &["tts"]);
    let transcript = "Hi";
    let chunks = expected_chunks(transcript);
    let gate = Arc::new(Semaphore::new(0));
    harness
        .stand_in
        .faults()
        .set_stream_gate(Some(Arc::clone(&gate)));

    let mut bodies = Vec::new();
    for version in PROTOCOLS {
        let request = tts_request(&harness.url(), &session, transcript);
        let response = tokio::time::timeout(PROMPT, client_for(&harness, version).request(request))
            .await
            .expect("the response head arrives in time")
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{version:?}: status");
        bodies.push((version, tokio::spawn(response.into_body().collect())));
    }
    // One permit per stream for each later chunk and one for the end, each
    // after a pause longer than every configured timeout. The semaphore
    // hands permits to waiters in order, so each stream gets one.
    for _ in 0..chunks {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        gate.add_permits(PROTOCOLS.len());
    }
    for (version, body) in bodies {
        let body = tokio::time::timeout(PROMPT, body)
            .await
            .expect("the body ends in time")
            .unwrap()
            .unwrap_or_else(|error| panic!("{version:?}: the paused body fails: {error}"))
            .to_bytes();
        assert_eq!(
            body.len(),
            WAV_HEADER_LEN + expected_audio_len(transcript),
            "{version:?}: the whole WAV arrives despite 1.5 s pauses"
        );
    }
}

#[tokio::test]
async fn slow_upload_outlives_timeouts() {
    let harness = Harness::start_with(Options {
        server: SHORT_SERVER_TIMEOUTS,
        upstream: SHORT_UPSTREAM_TIMEOUTS,
        ..Options::default()
    })
    .await;
    let session = harness.session("speaker", &["stt"]);
    let upload = multipart_body(&wav_file(16_000));
    let pieces = 6;
    let piece_len = upload.len().div_ceil(pieces);

    let mut pending = Vec::new();
    let mut senders = Vec::new();
    for version in PROTOCOLS {
        let (sender, body) = channel_body();
        let request = stt_upload(&harness, &session, body);
        let client = upload_client(&harness, version);
        pending.push((
            version,
            tokio::spawn(async move { client.request(request).await }),
        ));
        senders.push(sender);
    }
    let started = Instant::now();
    for start in (0..upload.len()).step_by(piece_len) {
        let piece = upload.slice(start..(start + piece_len).min(upload.len()));
        for sender in &senders {
            sender.send(piece.clone()).await.unwrap();
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    drop(senders);
    assert!(
        started.elapsed() >= Duration::from_millis(2500),
        "the upload took at least 2.5 s"
    );

    for (version, response) in pending {
        let response = tokio::time::timeout(PROMPT, response)
            .await
            .expect("the response arrives in time")
            .unwrap()
            .unwrap_or_else(|error| {
                panic!("{version:?}: the upload fails: {}", error_chain(&error))
            });
        let (response, body) = read_response(response).await;
        assert_eq!(
            response.status(),
            StatusCode::OK,
            "{version:?}: status, body {}",
            String::from_utf8_lossy(&body)
        );
        let json: Value = serde_json::from_slice(&body).unwrap();
        assert!(
            json["text"].is_string(),
            "{version:?}: a transcript arrives"
        );
    }
    let lengths: Vec<u64> = harness
        .stand_in
        .requests()
        .iter()
        .filter(|request| request.path == "/stt")
        .map(|request| request.body_len)
        .collect();
    assert_eq!(
        lengths,
        vec![upload.len() as u64; 2],
        "the stand-in read both whole uploads"
    );
}

#[tokio::test]
async fn busy_websocket_outlives_idle_timeout() {
    let harness = Harness::start_with(Options {
        server: SHORT_SERVER_TIMEOUTS,
        upstream: SHORT_UPSTREAM_TIMEOUTS,
        websocket: "idle_timeout_secs = 1",
        ..Options::default()
    })
    .await;
    let session = harness.session("talker", &["stt"]);
    let bearer = format!("Bearer {session}");
    let mut socket = harness
        .websocket(
            "/stt/websocket?model=ink-whisper&encoding=pcm_s16le&sample_rate=16000",
            &[("authorization", &bearer)],
        )
        .await
        .expect("the WebSocket opens");

    // One exchange every 0.5 s for 2.5 s, more than twice the idle timeout.
    let started = Instant::now();
    for exchange in 0..5 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        socket
            .send(Message::text("finalize"))
            .await
            .unwrap_or_else(|error| panic!("exchange {exchange}: send fails: {error}"));
        let reply = tokio::time::timeout(PROMPT, socket.next())
            .await
            .expect("the reply arrives in time")
            .expect("the WebSocket is still open")
            .unwrap_or_else(|error| panic!("exchange {exchange}: read fails: {error}"));
        let text = reply.to_text().unwrap_or_default().to_owned();
        assert!(
            text.contains("flush_done"),
            "exchange {exchange}: the stand-in acknowledges, got {reply:?}"
        );
    }
    assert!(
        started.elapsed() >= Duration::from_millis(2500),
        "the WebSocket was busy for 2.5 s"
    );

    let silent = Instant::now();
    let message = tokio::time::timeout(PROMPT, socket.next())
        .await
        .expect("the gateway closes an idle WebSocket within 5 s")
        .expect("a close frame arrives before the stream ends")
        .expect("the close frame is read without error");
    let idle = silent.elapsed();
    let Message::Close(Some(frame)) = message else {
        panic!("expected a close frame with a code, got {message:?}");
    };
    assert_eq!(frame.code, CloseCode::Away, "the idle close code is 1001");
    assert_eq!(
        frame.reason.as_str(),
        "idle timeout",
        "the idle close reason"
    );
    assert!(
        idle >= Duration::from_millis(900),
        "the WebSocket was closed after {idle:?} of silence, before the 1 s idle timeout"
    );
    assert!(
        idle < Duration::from_millis(2000),
        "the WebSocket was closed after {idle:?} of silence, long after the 1 s idle timeout"
    );
    let stt_upgrades = harness
        .stand_in
        .requests()
        .iter()
        .filter(|request| request.websocket)
        .count();
    assert_eq!(stt_upgrades, 1, "one WebSocket reached the stand-in");
}

#[tokio::test]
async fn idle_http2_connection_closed_after_idle_timeout() {
    let harness = Harness::start_with(Options {
        server: "http2_idle_timeout_secs = 1",
        ..Options::default()
    })
    .await;
    let session = harness.session("idle-h2", &["tts"]);
    let mut config =
        (*cartesia_gateway::tls::client_config(Some(&harness.certs.ca_file)).unwrap()).clone();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let stream = TcpStream::connect(harness.addr).await.unwrap();
    let stream = TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("localhost").unwrap(), stream)
        .await
        .unwrap();
    let (mut sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    let connection = tokio::spawn(connection);

    // A response that pauses for longer than the idle timeout keeps the
    // connection open: an open request is not idle.
    let transcript = "Hi";
    let gate = Arc::new(Semaphore::new(0));
    harness
        .stand_in
        .faults()
        .set_stream_gate(Some(Arc::clone(&gate)));
    let response = sender
        .send_request(tts_request(&harness.url(), &session, transcript))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let body = tokio::spawn(response.into_body().collect());
    for _ in 0..expected_chunks(transcript) {
        tokio::time::sleep(Duration::from_millis(700)).await;
        gate.add_permits(1);
    }
    let body = tokio::time::timeout(PROMPT, body)
        .await
        .expect("the body ends in time")
        .unwrap()
        .expect("the paused response is not cut")
        .to_bytes();
    assert_eq!(body.len(), WAV_HEADER_LEN + expected_audio_len(transcript));

    // Without open requests, the gateway closes the connection.
    let idle_since = Instant::now();
    let closed = tokio::time::timeout(PROMPT, connection)
        .await
        .expect("the idle connection is closed in time")
        .unwrap();
    assert!(closed.is_ok(), "a graceful close: {closed:?}");
    assert!(
        idle_since.elapsed() >= Duration::from_millis(800),
        "closed only after the idle timeout: {:?}",
        idle_since.elapsed()
    );
}

#[tokio::test]
async fn rejected_upload_gets_json_error() {
    let harness = Harness::start().await;
    let no_stt = harness.session("no-stt", &["tts"]);
    let upload = Bytes::from(vec![b'a'; 4 * 1024 * 1024]);
    let cases = [
        ("no session", None),
        ("no stt grant", Some(no_stt.as_str())),
    ];
    for (case, session) in cases {
        for version in PROTOCOLS {
            // The client sends the whole body without waiting for 100
            // Continue, as browsers do, and the gateway responds before
            // reading it.
            let mut request = Request::post(format!("{}/stt", harness.url()))
                .header("content-type", "application/octet-stream");
            if let Some(session) = session {
                request = request.header("authorization", format!("Bearer {session}"));
            }
            let request = request.body(Full::new(upload.clone())).unwrap();
            let response =
                tokio::time::timeout(PROMPT, client_for(&harness, version).request(request))
                    .await
                    .expect("the response arrives in time")
                    .unwrap_or_else(|error| {
                        panic!(
                            "{case}, {version:?}: the connection broke: {}",
                            error_chain(&error)
                        )
                    });
            let expected = if session.is_some() { 403 } else { 401 };
            assert_eq!(response.status().as_u16(), expected, "{case}, {version:?}");
            let body = response.into_body().collect().await.unwrap().to_bytes();
            let json: Value = serde_json::from_slice(&body).unwrap();
            assert!(json["error"].is_string(), "{case}, {version:?}: {json}");
        }
    }
    assert_eq!(forwarded_stt(&harness), 0, "nothing was forwarded");
}

#[tokio::test]
async fn rejected_upload_is_read_so_the_connection_survives() {
    let harness = Harness::start().await;
    let mut stream = harness.tls_connect().await;
    let total = 2 * 1024 * 1024;
    let head = format!(
        "POST /stt HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/octet-stream\r\ncontent-length: {total}\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let chunk = vec![b'a'; 64 * 1024];
    stream.write_all(&chunk).await.unwrap();

    // The 401 arrives while most of the body is still unsent.
    let mut response = Vec::new();
    let mut buffer = [0u8; 4096];
    while !String::from_utf8_lossy(&response).contains("missing_session") {
        let read = tokio::time::timeout(PROMPT, stream.read(&mut buffer))
            .await
            .expect("the rejection arrives in time")
            .unwrap();
        assert!(read > 0, "the connection closed before the rejection");
        response.extend_from_slice(&buffer[..read]);
    }
    assert!(
        response.starts_with(b"HTTP/1.1 401"),
        "{}",
        String::from_utf8_lossy(&response)
    );

    // The rest of the body is accepted, slowly, and the connection then
    // serves the next request.
    let mut sent = chunk.len();
    while sent < total {
        stream
            .write_all(&chunk)
            .await
            .unwrap_or_else(|error| panic!("writing the body failed after {sent} bytes: {error}"));
        sent += chunk.len();
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    stream
        .write_all(b"GET /nope HTTP/1.1\r\nhost: localhost\r\n\r\n")
        .await
        .unwrap();
    let mut next = Vec::new();
    while !String::from_utf8_lossy(&next).contains("not_found") {
        let read = tokio::time::timeout(PROMPT, stream.read(&mut buffer))
            .await
            .expect("the next response arrives in time")
            .unwrap();
        assert!(read > 0, "the connection closed after the rejected upload");
        next.extend_from_slice(&buffer[..read]);
    }
    assert!(
        next.starts_with(b"HTTP/1.1 404"),
        "{}",
        String::from_utf8_lossy(&next)
    );
}
