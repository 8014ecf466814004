//! Test harness: the real gateway and the Cartesia stand-in, both on
//! 127.0.0.1 ephemeral ports with real TLS, plus clients that trust the
//! test CA. [`echo`] contains an echoing WebSocket upstream for the tests
//! that need one in place of the stand-in.

#![allow(dead_code, clippy::unwrap_used)]

pub mod echo;
pub mod process;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use cartesia_gateway::devcert::{self, DevCertificate};
use cartesia_gateway::stand_in::StandIn;
use cartesia_gateway::{Config, Gateway};
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use rustls_pki_types::ServerName;
use serde_json::{Value, json};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

/// The Cartesia API key the stand-in accepts and the gateway uses.
pub const API_KEY: &str = "sk_car_test_0123456789abcdefghijklmnop";
/// The browser origin the test gateway allows.
pub const APP_ORIGIN: &str = "https://app.test";
/// The HMAC secret that signs test sessions.
pub const SESSION_SECRET: &str = "test-session-secret-0123456789-abcdefghijkl";

pub type TestClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>;

/// A running stand-in and gateway.
pub struct Harness {
    pub dir: tempfile::TempDir,
    pub certs: DevCertificate,
    pub stand_in: StandIn,
    pub stand_in_addr: SocketAddr,
    pub addr: SocketAddr,
    pub gateway: Arc<Gateway>,
    /// The admin listener's address, when [`Options::admin`] is set.
    pub admin_addr: Option<SocketAddr>,
    stop_gateway: Option<oneshot::Sender<()>>,
    stop_stand_in: Option<oneshot::Sender<()>>,
    gateway_task: Option<JoinHandle<std::io::Result<()>>>,
}

/// Extra settings for [`Harness::start_with`].
#[derive(Default)]
pub struct Options {
    /// TOML appended to each section, keyed by section name.
    pub server: &'static str,
    pub session: &'static str,
    pub upstream: &'static str,
    pub tokens: &'static str,
    pub cors: &'static str,
    pub hsts: &'static str,
    pub websocket: &'static str,
    /// TOML appended to the `[admin]` section.
    pub admin_section: &'static str,
    /// Replaces the upstream base URL (the stand-in's by default).
    pub upstream_url: Option<String>,
    /// Runs the admin listener on an ephemeral 127.0.0.1 port.
    pub admin: bool,
}

impl Harness {
    pub async fn start() -> Harness {
        Self::start_with(Options::default()).await
    }

    pub async fn start_with(options: Options) -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let certs = devcert::generate(dir.path()).unwrap();

        let stand_in = StandIn::new(API_KEY);
        let stand_in_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let stand_in_addr = stand_in_listener.local_addr().unwrap();
        let stand_in_tls =
            cartesia_gateway::tls::server_config(&certs.cert_file, &certs.key_file).unwrap();
        let (stop_stand_in, stand_in_stopped) = oneshot::channel::<()>();
        tokio::spawn(
            stand_in
                .clone()
                .serve(stand_in_listener, stand_in_tls, async move {
                    let _ = stand_in_stopped.await;
                }),
        );

        let upstream_url = options
            .upstream_url
            .clone()
            .unwrap_or_else(|| format!("https://{stand_in_addr}"));
        let text = format!(
            r#"
[server]
listen = "127.0.0.1:0"
cert_file = "{cert}"
key_file = "{key}"
shutdown_timeout_secs = 5
{server}

[session]
secret_env = "TEST_SESSION_SECRET"
audience = "cartesia-gateway-tests"
{session}

[upstream]
base_url = "{upstream_url}"
ca_file = "{ca}"
{upstream}

[tokens]
{tokens}

[cors]
allowed_origins = ["{APP_ORIGIN}"]
{cors}

[hsts]
{hsts}

[websocket]
{websocket}

[admin]
{admin}

[log]
level = "trace"
"#,
            cert = certs.cert_file.display(),
            key = certs.key_file.display(),
            ca = certs.ca_file.display(),
            server = options.server,
            session = options.session,
            upstream = options.upstream,
            tokens = options.tokens,
            cors = options.cors,
            hsts = options.hsts,
            websocket = options.websocket,
            admin = options.admin_section,
        );
        let config = Config::from_toml_str(&text, std::iter::empty()).unwrap();
        let gateway = Gateway::new(config, |name| match name {
            "TEST_SESSION_SECRET" => Some(SESSION_SECRET.to_owned()),
            "CARTESIA_API_KEY" => Some(API_KEY.to_owned()),
            _ => None,
        })
        .unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let admin_listener = if options.admin {
            Some(TcpListener::bind("127.0.0.1:0").await.unwrap())
        } else {
            None
        };
        let admin_addr = admin_listener
            .as_ref()
            .map(|listener| listener.local_addr().unwrap());
        let gateway = Arc::new(gateway);
        let (stop_gateway, gateway_stopped) = oneshot::channel::<()>();
        let main = cartesia_gateway::serve(listener, Arc::clone(&gateway), async move {
            let _ = gateway_stopped.await;
        });
        let gateway_task = tokio::spawn(cartesia_gateway::admin::serve_alongside(
            admin_listener,
            Arc::clone(&gateway),
            main,
        ));
        Harness {
            dir,
            certs,
            stand_in,
            stand_in_addr,
            addr,
            gateway,
            admin_addr,
            stop_gateway: Some(stop_gateway),
            stop_stand_in: Some(stop_stand_in),
            gateway_task: Some(gateway_task),
        }
    }

    /// The gateway's base URL.
    pub fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// Signs a session for `user` with `grants` that expires in ten minutes.
    pub fn session(&self, user: &str, grants: &[&str]) -> String {
        session_token(json!({
            "sub": user,
            "grants": grants,
            "aud": "cartesia-gateway-tests",
            "exp": unix_now() + 600,
        }))
    }

    /// An HTTP/1.1 client that trusts the test CA.
    pub fn client(&self) -> TestClient {
        client(&self.certs.ca_file, false)
    }

    /// An HTTP/2 client that trusts the test CA.
    pub fn h2_client(&self) -> TestClient {
        client(&self.certs.ca_file, true)
    }

    /// Sends a request to the gateway and returns the response with its
    /// whole body.
    pub async fn send(&self, request: Request<Full<Bytes>>) -> (Response<()>, Bytes) {
        let response = self.client().request(request).await.unwrap();
        let (parts, body) = response.into_parts();
        let body = body.collect().await.unwrap().to_bytes();
        (Response::from_parts(parts, ()), body)
    }

    /// Opens a TLS connection to the gateway (ALPN http/1.1).
    pub async fn tls_connect(&self) -> TlsStream<TcpStream> {
        tls_connect(self.addr, &self.certs.ca_file).await
    }

    /// Opens a WebSocket to the gateway. `path_and_query` starts with `/`.
    pub async fn websocket(
        &self,
        path_and_query: &str,
        headers: &[(&str, &str)],
    ) -> Result<WebSocketStream<TlsStream<TcpStream>>, tokio_tungstenite::tungstenite::Error> {
        let url = format!("wss://localhost:{}{path_and_query}", self.addr.port());
        let mut request = url.into_client_request().unwrap();
        for (name, value) in headers {
            request.headers_mut().insert(
                http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                http::HeaderValue::from_str(value).unwrap(),
            );
        }
        let stream = self.tls_connect().await;
        tokio_tungstenite::client_async(request, stream)
            .await
            .map(|(socket, _)| socket)
    }

    /// Sends a `GET` to the admin listener over plain HTTP and returns the
    /// status, `Content-Type` and body.
    pub async fn admin_get(&self, path: &str) -> (u16, String, String) {
        let addr = self
            .admin_addr
            .expect("the harness runs the admin listener");
        let client: Client<HttpConnector, Full<Bytes>> =
            Client::builder(TokioExecutor::new()).build_http();
        let request = Request::get(format!("http://{addr}{path}"))
            .body(Full::new(Bytes::new()))
            .unwrap();
        let response = client.request(request).await.unwrap();
        let status = response.status().as_u16();
        let content_type = response
            .headers()
            .get(http::header::CONTENT_TYPE)
            .map(|value| value.to_str().unwrap().to_owned())
            .unwrap_or_default();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        (
            status,
            content_type,
            String::from_utf8(body.to_vec()).unwrap(),
        )
    }

    /// Sends the stop signal without waiting for the drain.
    pub fn signal_stop(&mut self) {
        if let Some(stop) = self.stop_gateway.take() {
            let _ = stop.send(());
        }
    }

    /// Waits for a stopped gateway (and its admin listener) to finish.
    pub async fn wait_stopped(&mut self) {
        if let Some(task) = self.gateway_task.take() {
            task.await.unwrap().unwrap();
        }
    }

    /// Stops the gateway and waits for it to drain.
    pub async fn stop(&mut self) {
        if let Some(stop) = self.stop_gateway.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.gateway_task.take() {
            task.await.unwrap().unwrap();
        }
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        if let Some(stop) = self.stop_gateway.take() {
            let _ = stop.send(());
        }
        if let Some(stop) = self.stop_stand_in.take() {
            let _ = stop.send(());
        }
    }
}

/// Log output shared between a tracing subscriber and the test that reads it.
#[derive(Clone, Default)]
pub struct CapturedLog(Arc<std::sync::Mutex<Vec<u8>>>);

impl CapturedLog {
    /// Returns everything written so far.
    pub fn text(&self) -> String {
        let bytes = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        String::from_utf8_lossy(&bytes).into_owned()
    }

    /// Returns the lines that contain every one of `parts`.
    pub fn lines_with(&self, parts: &[&str]) -> Vec<String> {
        self.text()
            .lines()
            .filter(|line| parts.iter().all(|part| line.contains(part)))
            .map(str::to_owned)
            .collect()
    }

    /// Counts the occurrences of `needle`.
    pub fn count(&self, needle: &str) -> usize {
        self.text().matches(needle).count()
    }
}

impl std::io::Write for CapturedLog {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for CapturedLog {
    type Writer = CapturedLog;

    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

/// Returns the value of the sample whose name and labels are `series`, such as
/// `cartesia_gateway_requests_total{route="/tts/bytes",status_class="2xx"}`,
/// in a metrics text; 0 when the series is absent.
pub fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|line| {
            let value = line.strip_prefix(series)?.strip_prefix(' ')?;
            value.split(' ').next()?.parse().ok()
        })
        .unwrap_or(0.0)
}

/// Signs `claims` with the test session secret (HS256).
pub fn session_token(claims: Value) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(SESSION_SECRET.as_bytes()).unwrap(),
    )
    .unwrap()
}

pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn client_tls(ca_file: &Path, alpn: &[&[u8]]) -> rustls::ClientConfig {
    let mut config = (*cartesia_gateway::tls::client_config(Some(ca_file)).unwrap()).clone();
    config.alpn_protocols = alpn.iter().map(|protocol| protocol.to_vec()).collect();
    config
}

pub fn client(ca_file: &Path, http2: bool) -> TestClient {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    let builder = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(client_tls(ca_file, &[]))
        .https_only();
    let connector = if http2 {
        builder.enable_http2().wrap_connector(http)
    } else {
        builder.enable_http1().wrap_connector(http)
    };
    let mut client = Client::builder(TokioExecutor::new());
    client.http2_only(http2);
    client.build(connector)
}

pub async fn tls_connect(addr: SocketAddr, ca_file: &Path) -> TlsStream<TcpStream> {
    let connector = TlsConnector::from(Arc::new(client_tls(ca_file, &[b"http/1.1"])));
    let stream = TcpStream::connect(addr).await.unwrap();
    connector
        .connect(ServerName::try_from("localhost").unwrap(), stream)
        .await
        .unwrap()
}

/// A `/tts/bytes` request body for a short WAV.
pub fn tts_bytes_body(transcript: &str) -> Value {
    json!({
        "model_id": "sonic-3",
        "transcript": transcript,
        "voice": {"mode": "id", "id": "a0e99841-438c-4a64-b679-ae501e7d6091"},
        "output_format": {"container": "wav", "encoding": "pcm_s16le", "sample_rate": 16000},
    })
}

/// Waits for `condition` for up to five seconds, polling every 10 ms.
pub async fn eventually(mut condition: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while tokio::time::Instant::now() < deadline {
        if condition() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    condition()
}

#[allow(unused_imports)]
pub use tokio_tungstenite::tungstenite::Message;
