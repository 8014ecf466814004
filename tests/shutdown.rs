//! Graceful shutdown, in process through `serve`'s shutdown future and in
//! the real binary through SIGTERM.
//!
//! A drain is held open with the stand-in's stream gate: a `/tts/bytes`
//! response sends its first chunk and then waits for a permit per chunk, so
//! the test decides when the in-flight request finishes.

// Helper functions unwrap like the tests do, because a failure there is a test failure.
#![allow(clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use cartesia_gateway::devcert::{self, DevCertificate};
use cartesia_gateway::stand_in::StandIn;
use cartesia_gateway::{Config, Gateway};
use common::echo::start_with_echo_upstream;
use common::*;
use futures_util::{SinkExt, StreamExt};
use http::{Request, StatusCode, Version};
use http_body_util::{BodyExt, Full};
use serde_json::json;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

/// Maximum wait for anything that should happen promptly.
const PROMPT: Duration = Duration::from_secs(5);
/// Time for which something held back must stay held back.
const HELD: Duration = Duration::from_millis(300);
/// Both client protocols.
const PROTOCOLS: [Version; 2] = [Version::HTTP_11, Version::HTTP_2];
/// The transcript of gated responses, and the audio the stand-in makes for
/// it: 60 ms of 16 kHz `pcm_s16le` per character, after a 44-byte WAV
/// header, streamed in 100 ms chunks.
const TRANSCRIPT: &str = "Drain me";
const WAV_LEN: usize = 44 + 8 * 60 * 32;
const CHUNKS: usize = 5;

// ---------------------------------------------------------------------------
// Helpers

/// A `POST /tts/bytes` request for [`TRANSCRIPT`] with a bearer session.
fn tts_request(base_url: &str, session: &str) -> Request<Full<Bytes>> {
    let body = serde_json::to_vec(&tts_bytes_body(TRANSCRIPT)).unwrap();
    Request::post(format!("{base_url}/tts/bytes"))
        .header("authorization", format!("Bearer {session}"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .unwrap()
}

/// Closes the stand-in's stream gate and returns it.
fn close_gate(stand_in: &StandIn) -> Arc<Semaphore> {
    let gate = Arc::new(Semaphore::new(0));
    stand_in.faults().set_stream_gate(Some(Arc::clone(&gate)));
    gate
}

/// Lets `streams` gated responses run to their end.
fn open_gate(gate: &Semaphore, streams: usize) {
    gate.add_permits(CHUNKS * streams);
}

/// A gated response whose head and first chunk have arrived; the task reads
/// the rest.
struct InFlight {
    version: Version,
    rest: JoinHandle<Result<Bytes, hyper::Error>>,
    first_len: usize,
}

/// Sends a gated `/tts/bytes` request, waits for its head and first chunk,
/// and reads the rest in a task.
async fn start_in_flight(
    client: TestClient,
    base_url: &str,
    session: &str,
    version: Version,
) -> InFlight {
    let response = tokio::time::timeout(PROMPT, client.request(tts_request(base_url, session)))
        .await
        .expect("the response head arrives while the stream is gated")
        .expect("the gateway answers");
    assert_eq!(response.status(), StatusCode::OK, "{version:?}: status");
    let mut body = response.into_body();
    let first = tokio::time::timeout(PROMPT, body.frame())
        .await
        .expect("the first chunk arrives while the stream is gated")
        .expect("the body has a first frame")
        .expect("the first frame is read")
        .into_data()
        .unwrap();
    let rest =
        tokio::spawn(async move { body.collect().await.map(|collected| collected.to_bytes()) });
    InFlight {
        version,
        rest,
        first_len: first.len(),
    }
}

impl InFlight {
    /// Waits for the rest of the body and checks that the whole WAV arrived.
    async fn finish_whole(self) {
        let rest = tokio::time::timeout(PROMPT, self.rest)
            .await
            .expect("the body ends in time")
            .unwrap();
        let rest = rest.unwrap_or_else(|error| {
            panic!(
                "{:?}: the body fails instead of ending: {error}",
                self.version
            )
        });
        assert_eq!(
            self.first_len + rest.len(),
            WAV_LEN,
            "{:?}: the whole WAV arrives",
            self.version
        );
    }
}

/// Waits until nothing accepts TCP connections on `addr` any more.
async fn connections_refused(addr: SocketAddr) -> bool {
    for _ in 0..100 {
        if TcpStream::connect(addr).await.is_err() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

// ---------------------------------------------------------------------------
// In process

#[tokio::test]
async fn shutdown_lets_streaming_responses_finish() {
    let mut harness = Harness::start().await;
    let session = harness.session("drainer", &["tts"]);
    let gate = close_gate(&harness.stand_in);
    let mut in_flight = Vec::new();
    for version in PROTOCOLS {
        let client = client(&harness.certs.ca_file, version == Version::HTTP_2);
        in_flight.push(start_in_flight(client, &harness.url(), &session, version).await);
    }

    let addr = harness.addr;
    let stop = harness.stop();
    tokio::pin!(stop);
    assert!(
        tokio::time::timeout(HELD, &mut stop).await.is_err(),
        "stop waits while responses are streaming"
    );
    assert!(
        connections_refused(addr).await,
        "new connections are refused once shutdown began"
    );
    assert!(
        tokio::time::timeout(HELD, &mut stop).await.is_err(),
        "stop still waits for the gated responses"
    );

    // Whole bodies show that shutdown did not cut the responses. The order
    // of stop and the client's last read is not observable, because the
    // server ends its side first, so the checks above show that stop waited.
    open_gate(&gate, in_flight.len());
    for response in in_flight {
        response.finish_whole().await;
    }
    tokio::time::timeout(PROMPT, &mut stop)
        .await
        .expect("stop returns once the responses finished");
}

#[tokio::test]
async fn shutdown_closes_idle_connections() {
    let mut harness = Harness::start().await;
    let session = harness.session("idler", &["tts"]);
    // One request on each protocol leaves an idle keep-alive connection.
    let clients: Vec<TestClient> = PROTOCOLS
        .iter()
        .map(|version| client(&harness.certs.ca_file, *version == Version::HTTP_2))
        .collect();
    for (client, version) in clients.iter().zip(PROTOCOLS) {
        let response = client
            .request(tts_request(&harness.url(), &session))
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{version:?}: status");
        response.into_body().collect().await.unwrap();
    }

    let started = Instant::now();
    tokio::time::timeout(PROMPT, harness.stop())
        .await
        .expect("stop returns with idle connections open");
    let elapsed = started.elapsed();
    assert!(
        elapsed < Duration::from_secs(1),
        "idle keep-alive connections do not hold the drain (stop took {elapsed:?}, \
         the shutdown timeout is 5 s)"
    );
}

/// Opens a TTS WebSocket through the gateway to the echo upstream and
/// checks that the relay runs.
async fn open_echo_socket(
    harness: &Harness,
) -> WebSocketStream<tokio_rustls::client::TlsStream<TcpStream>> {
    let session = harness.session("socket", &["tts"]);
    let bearer = format!("Bearer {session}");
    let mut socket = harness
        .websocket("/tts/websocket", &[("authorization", &bearer)])
        .await
        .expect("the WebSocket opens");
    socket.send(Message::text("ping")).await.unwrap();
    let echo = tokio::time::timeout(PROMPT, socket.next())
        .await
        .expect("the echo arrives")
        .unwrap()
        .unwrap();
    assert_eq!(
        echo,
        Message::text("ping"),
        "the relay runs before shutdown"
    );
    socket
}

/// Reads the gateway's close frame, then reads on so that tungstenite
/// sends its close reply, until the WebSocket ends. Returns the close frame.
async fn read_close(
    socket: &mut WebSocketStream<tokio_rustls::client::TlsStream<TcpStream>>,
) -> Message {
    let message = tokio::time::timeout(PROMPT, socket.next())
        .await
        .expect("a close frame arrives within 5 s of shutdown")
        .expect("a close frame arrives before the stream ends")
        .expect("the close frame is read");
    let after = tokio::time::timeout(PROMPT, socket.next()).await;
    assert!(
        matches!(after, Ok(None | Some(Err(_)))),
        "the WebSocket ends after the close frame, got {after:?}"
    );
    message
}

#[tokio::test]
async fn shutdown_closes_websockets_with_1001() {
    let (mut harness, upstream) = start_with_echo_upstream(Options::default()).await;
    let mut socket = open_echo_socket(&harness).await;

    let started = Instant::now();
    let (message, ()) = tokio::join!(read_close(&mut socket), harness.stop());
    let elapsed = started.elapsed();
    let Message::Close(Some(frame)) = message else {
        panic!("expected a close frame with a code, got {message:?}");
    };
    assert_eq!(frame.code, CloseCode::Away, "the client gets 1001");
    assert_eq!(
        frame.reason.as_str(),
        "gateway shutting down",
        "the close reason"
    );
    assert!(
        elapsed < Duration::from_secs(2),
        "the WebSocket drained well before the 5 s shutdown timeout (took {elapsed:?})"
    );
    let upstream_closed = eventually(|| !upstream.closes().is_empty()).await;
    assert!(upstream_closed, "the upstream gets a close frame");
    assert_eq!(
        upstream.closes(),
        vec![(1000, String::new())],
        "the upstream gets a normal close"
    );
}

#[tokio::test]
async fn shutdown_waits_for_websocket_close_handshake() {
    let (mut harness, _upstream) = start_with_echo_upstream(Options::default()).await;
    let mut socket = open_echo_socket(&harness).await;

    let stop = harness.stop();
    tokio::pin!(stop);
    // The client reads nothing yet, so it has not replied to the close frame.
    assert!(
        tokio::time::timeout(HELD, &mut stop).await.is_err(),
        "stop waits while the client has not answered the gateway's close frame"
    );
    let message = read_close(&mut socket).await;
    assert!(
        matches!(&message, Message::Close(Some(frame)) if frame.code == CloseCode::Away),
        "the client gets 1001, got {message:?}"
    );
    tokio::time::timeout(PROMPT, &mut stop)
        .await
        .expect("stop returns once the close handshake completed");
}

#[tokio::test]
async fn shutdown_gives_up_after_timeout() {
    // The harness fixes the shutdown timeout at 5 s, so this test runs its
    // own gateway with 1 s against the harness's stand-in.
    let harness = Harness::start().await;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let gateway = in_process_gateway(&harness.certs, harness.stand_in_addr, 1);
    let (stop_sender, stopped) = oneshot::channel::<()>();
    let served = tokio::spawn(cartesia_gateway::serve(listener, gateway, async move {
        let _ = stopped.await;
    }));

    let session = harness.session("stuck", &["tts"]);
    let _gate = close_gate(&harness.stand_in);
    let client = client(&harness.certs.ca_file, false);
    let _in_flight = start_in_flight(
        client,
        &format!("https://{addr}"),
        &session,
        Version::HTTP_11,
    )
    .await;

    let started = Instant::now();
    stop_sender.send(()).unwrap();
    tokio::time::timeout(PROMPT, served)
        .await
        .expect("serve returns within 5 s")
        .unwrap()
        .unwrap();
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_millis(900),
        "serve waited {elapsed:?}, less than the 1 s shutdown timeout"
    );
    assert!(
        elapsed < Duration::from_millis(2000),
        "serve waited {elapsed:?}, long after the 1 s shutdown timeout"
    );
}

/// Builds a gateway like the harness's, with its own shutdown timeout.
fn in_process_gateway(
    certs: &DevCertificate,
    stand_in_addr: SocketAddr,
    shutdown_timeout_secs: u64,
) -> Arc<Gateway> {
    let text = format!(
        r#"
[server]
listen = "127.0.0.1:0"
cert_file = "{cert}"
key_file = "{key}"
shutdown_timeout_secs = {shutdown_timeout_secs}

[session]
secret_env = "TEST_SESSION_SECRET"
audience = "cartesia-gateway-tests"

[upstream]
base_url = "https://{stand_in_addr}"
ca_file = "{ca}"
"#,
        cert = certs.cert_file.display(),
        key = certs.key_file.display(),
        ca = certs.ca_file.display(),
    );
    let config = Config::from_toml_str(&text, std::iter::empty()).unwrap();
    let gateway = Gateway::new(config, |name| match name {
        "TEST_SESSION_SECRET" => Some(SESSION_SECRET.to_owned()),
        "CARTESIA_API_KEY" => Some(API_KEY.to_owned()),
        _ => None,
    })
    .unwrap();
    Arc::new(gateway)
}

// ---------------------------------------------------------------------------
// Real binary

/// The environment variable that contains the session secret in the child's
/// config.
const SECRET_ENV: &str = "GATEWAY_SESSION_SECRET";

/// A stand-in served in this process for a gateway binary to use.
struct StandInServer {
    stand_in: StandIn,
    addr: SocketAddr,
    _stop: oneshot::Sender<()>,
}

async fn start_stand_in(certs: &DevCertificate) -> StandInServer {
    let stand_in = StandIn::new(API_KEY);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let tls = cartesia_gateway::tls::server_config(&certs.cert_file, &certs.key_file).unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(stand_in.clone().serve(listener, tls, async move {
        let _ = stopped.await;
    }));
    StandInServer {
        stand_in,
        addr,
        _stop: stop,
    }
}

/// A running `cartesia-gateway` process. Dropping it kills the process if
/// it still runs.
struct GatewayProcess {
    child: Child,
    addr: SocketAddr,
    log_file: PathBuf,
}

impl GatewayProcess {
    /// Starts the binary with a config in `dir` that serves on a free port
    /// of 127.0.0.1 and uses `upstream` as the Cartesia API.
    fn start(
        dir: &Path,
        certs: &DevCertificate,
        upstream: SocketAddr,
        shutdown_timeout_secs: u64,
    ) -> GatewayProcess {
        // The port is free when checked; nothing else in this test binds
        // ephemeral ports on 127.0.0.1 without keeping them.
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let config = format!(
            r#"
[server]
listen = "{addr}"
cert_file = "{cert}"
key_file = "{key}"
shutdown_timeout_secs = {shutdown_timeout_secs}

[session]
secret_env = "{SECRET_ENV}"
audience = "cartesia-gateway-tests"

[upstream]
base_url = "https://{upstream}"
ca_file = "{ca}"

[admin]
listen = "127.0.0.1:0"

[log]
level = "info"
"#,
            cert = certs.cert_file.display(),
            key = certs.key_file.display(),
            ca = certs.ca_file.display(),
        );
        let config_file = dir.join("gateway.toml");
        std::fs::write(&config_file, config).unwrap();
        let log_file = dir.join("gateway.log");
        let log = std::fs::File::create(&log_file).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_cartesia-gateway"))
            .arg("--config")
            .arg(&config_file)
            .env_clear()
            .env("CARTESIA_API_KEY", API_KEY)
            .env(SECRET_ENV, SESSION_SECRET)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        GatewayProcess {
            child,
            addr,
            log_file,
        }
    }

    fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log_file).unwrap_or_default()
    }

    /// Waits until the process completes a TLS handshake, failing the test
    /// if it exits or takes longer than [`PROMPT`].
    async fn wait_until_serving(&mut self, ca_file: &Path) {
        let deadline = Instant::now() + PROMPT;
        let connector = tokio_rustls::TlsConnector::from(
            cartesia_gateway::tls::client_config(Some(ca_file)).unwrap(),
        );
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!(
                    "the gateway exited with {status} at startup; log:\n{}",
                    self.log()
                );
            }
            if let Ok(stream) = TcpStream::connect(self.addr).await {
                let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
                if connector.connect(name, stream).await.is_ok() {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!(
            "the gateway did not accept TLS within 5 s; log:\n{}",
            self.log()
        );
    }

    /// Sends `SIGTERM` to this process only.
    fn terminate(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "kill -TERM succeeds");
    }

    /// Waits up to `limit` for the process to exit.
    async fn exit_within(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for GatewayProcess {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Starts a stand-in and the gateway binary in front of it.
async fn start_binary(
    shutdown_timeout_secs: u64,
) -> (
    tempfile::TempDir,
    DevCertificate,
    StandInServer,
    GatewayProcess,
) {
    let dir = tempfile::tempdir().unwrap();
    let certs = devcert::generate(dir.path()).unwrap();
    let stand_in = start_stand_in(&certs).await;
    let mut process =
        GatewayProcess::start(dir.path(), &certs, stand_in.addr, shutdown_timeout_secs);
    process.wait_until_serving(&certs.ca_file).await;
    (dir, certs, stand_in, process)
}

fn binary_session() -> String {
    session_token(json!({
        "sub": "operator",
        "grants": ["tts"],
        "aud": "cartesia-gateway-tests",
        "exp": unix_now() + 600,
    }))
}

#[tokio::test]
async fn sigterm_drains_then_exits_zero() {
    let (_dir, certs, stand_in, mut process) = start_binary(10).await;
    let gate = close_gate(&stand_in.stand_in);
    let client = client(&certs.ca_file, false);
    let in_flight =
        start_in_flight(client, &process.url(), &binary_session(), Version::HTTP_11).await;

    process.terminate();
    assert!(
        process.exit_within(HELD).await.is_none(),
        "the gateway keeps running while a response is in flight; log:\n{}",
        process.log()
    );
    assert!(
        connections_refused(process.addr).await,
        "the gateway refuses new connections while it drains"
    );

    open_gate(&gate, 1);
    in_flight.finish_whole().await;
    let status = process
        .exit_within(PROMPT)
        .await
        .expect("the gateway exits once drained");
    assert_eq!(
        status.code(),
        Some(0),
        "a drained shutdown exits 0; log:\n{}",
        process.log()
    );
    let log = process.log();
    assert!(
        log.contains("all connections drained"),
        "the log reports the drain:\n{log}"
    );
}

#[tokio::test]
async fn second_sigterm_exits_at_once() {
    let (_dir, certs, stand_in, mut process) = start_binary(10).await;
    let gate = close_gate(&stand_in.stand_in);
    let client = client(&certs.ca_file, false);
    let in_flight =
        start_in_flight(client, &process.url(), &binary_session(), Version::HTTP_11).await;

    process.terminate();
    assert!(
        process.exit_within(HELD).await.is_none(),
        "the first SIGTERM starts a drain that the gated response holds; log:\n{}",
        process.log()
    );
    process.terminate();
    let status = process
        .exit_within(Duration::from_secs(1))
        .await
        .expect("the second SIGTERM ends the process within 1 s");
    assert_eq!(
        status.code(),
        Some(1),
        "a forced exit exits 1; log:\n{}",
        process.log()
    );

    let rest = tokio::time::timeout(PROMPT, in_flight.rest)
        .await
        .expect("the client notices the exit")
        .unwrap();
    assert!(
        rest.is_err(),
        "the cut response ends with an error, not a clean end"
    );
    open_gate(&gate, 1);
}

#[tokio::test]
async fn sigterm_exits_zero_after_deadline() {
    let (_dir, certs, stand_in, mut process) = start_binary(1).await;
    let _gate = close_gate(&stand_in.stand_in);
    let client = client(&certs.ca_file, false);
    let in_flight =
        start_in_flight(client, &process.url(), &binary_session(), Version::HTTP_11).await;

    let signalled = Instant::now();
    process.terminate();
    let status = process
        .exit_within(PROMPT)
        .await
        .expect("the gateway exits within 5 s with a response that never ends");
    let elapsed = signalled.elapsed();
    assert_eq!(
        status.code(),
        Some(0),
        "an exit at the shutdown deadline exits 0; log:\n{}",
        process.log()
    );
    assert!(
        elapsed >= Duration::from_millis(900),
        "the gateway exited after {elapsed:?}, before the 1 s shutdown timeout"
    );
    assert!(
        elapsed < Duration::from_millis(2500),
        "the gateway exited after {elapsed:?}, long after the 1 s shutdown timeout"
    );
    let log = process.log();
    assert!(
        log.contains("shutdown timeout passed with connections still open"),
        "the log reports the connections cut at the deadline:\n{log}"
    );
    let rest = tokio::time::timeout(PROMPT, in_flight.rest)
        .await
        .expect("the client notices the exit")
        .unwrap();
    assert!(
        rest.is_err(),
        "the response cut at the deadline ends with an error, not a clean end"
    );
}
