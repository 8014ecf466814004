//! The plain-HTTP redirect listener, spoken to in raw HTTP/1.1 bytes over
//! TCP so that no client library normalizes the request target, and the
//! `[redirect]` settings that configure it.
//!
//! `serve_redirects` takes a listener, a `RedirectConfig` and a shutdown
//! future but no `Gateway`, so it has no session verifier, token cache or
//! upstream client to call. `redirect_listener_never_reaches_upstream` also
//! checks this from the outside: it runs a full harness next to the
//! listener and asserts that the stand-in saw nothing.

// Helper functions unwrap like the tests do, because a failure there is a test failure.
#![allow(clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use cartesia_gateway::Config;
use cartesia_gateway::config::{ConfigError, RedirectConfig};
use cartesia_gateway::redirect::serve_redirects;
use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// The public host name every redirect must point to.
const PUBLIC_HOST: &str = "voice.example.test";

/// How long a test waits for one response before failing.
const READ_TIMEOUT: Duration = Duration::from_secs(5);

// ---------------------------------------------------------------------------
// Redirects

#[tokio::test]
async fn redirect_keeps_path_and_query_bytes() {
    let listener = RedirectListener::start(8443).await;
    let response = listener
        .exchange(
            "POST /tts/bytes?a=1&b=%2F+x&c HTTP/1.1\r\nhost: voice.example.test\r\n\
             content-length: 0\r\n\r\n",
        )
        .await;
    assert_eq!(response.status, 308, "{response:?}");
    assert_eq!(
        response.header("location"),
        Some("https://voice.example.test:8443/tts/bytes?a=1&b=%2F+x&c"),
        "the path and query are kept byte for byte"
    );
    assert_no_hsts(&response, "POST with a query");
}

#[tokio::test]
async fn hostile_host_header_is_ignored() {
    let listener = RedirectListener::start(8443).await;
    let response = listener
        .exchange(
            "GET /tts/sse?x=1 HTTP/1.1\r\nhost: evil.example\r\n\
             x-forwarded-host: evil.example\r\nx-forwarded-proto: http\r\n\
             forwarded: host=evil.example;proto=http\r\n\r\n",
        )
        .await;
    assert_eq!(response.status, 308, "{response:?}");
    assert_eq!(
        response.header("location"),
        Some("https://voice.example.test:8443/tts/sse?x=1"),
        "neither Host nor forwarding headers choose the target"
    );
    assert_no_hsts(&response, "hostile Host");
}

#[tokio::test]
async fn absolute_form_target_keeps_configured_host() {
    let listener = RedirectListener::start(8443).await;
    let response = listener
        .exchange("GET http://evil.example/x?y HTTP/1.1\r\nhost: evil.example\r\n\r\n")
        .await;
    assert_eq!(response.status, 308, "{response:?}");
    assert_eq!(
        response.header("location"),
        Some("https://voice.example.test:8443/x?y"),
        "only the path and query of an absolute-form target are used"
    );
    assert_no_hsts(&response, "absolute-form target");
}

#[tokio::test]
async fn odd_targets_stay_on_configured_host() {
    let listener = RedirectListener::start(8443).await;
    let cases = [
        // A browser resolves `https://host:port//evil.example/x` to a path
        // on the configured host, so a doubled slash is no open redirect.
        (
            "GET //evil.example/x HTTP/1.1\r\nhost: evil.example\r\n\r\n",
            "https://voice.example.test:8443//evil.example/x",
        ),
        (
            "OPTIONS * HTTP/1.1\r\nhost: evil.example\r\n\r\n",
            "https://voice.example.test:8443/",
        ),
        (
            "GET /stt HTTP/1.0\r\n\r\n",
            "https://voice.example.test:8443/stt",
        ),
        (
            "GET /a%20b/%2e%2e/c?q=%00&r=%E2%9C%93 HTTP/1.1\r\nhost: x\r\n\r\n",
            "https://voice.example.test:8443/a%20b/%2e%2e/c?q=%00&r=%E2%9C%93",
        ),
    ];
    for (request, expected) in cases {
        let response = listener.exchange(request).await;
        let request_line = request.lines().next().unwrap();
        assert_eq!(response.status, 308, "{request_line}: {response:?}");
        assert_eq!(
            response.header("location"),
            Some(expected),
            "{request_line}: the target stays on the configured host"
        );
        assert_no_hsts(&response, request_line);
    }
}

#[tokio::test]
async fn default_https_port_is_omitted() {
    let listener = RedirectListener::start(443).await;
    let response = listener
        .exchange(
            "POST /tts/bytes?a=1&b=%2F+x&c HTTP/1.1\r\nhost: evil.example:443\r\n\
             content-length: 0\r\n\r\n",
        )
        .await;
    assert_eq!(response.status, 308, "{response:?}");
    assert_eq!(
        response.header("location"),
        Some("https://voice.example.test/tts/bytes?a=1&b=%2F+x&c"),
        "port 443 is left out of the Location"
    );
    assert_no_hsts(&response, "port 443");
}

#[tokio::test]
async fn keep_alive_connection_redirects_each_request() {
    let listener = RedirectListener::start(8443).await;
    let mut connection = listener.connect().await;

    for path in ["/tts/bytes?n=1", "/stt?n=2", "/tts/websocket?n=3"] {
        connection
            .send(&format!(
                "GET {path} HTTP/1.1\r\nhost: evil.example\r\n\r\n"
            ))
            .await;
        let response = connection.read_response().await;
        assert_eq!(response.status, 308, "{path}: {response:?}");
        assert_eq!(
            response.header("location").map(str::to_owned),
            Some(format!("https://voice.example.test:8443{path}")),
            "{path}: one redirect per request on the same connection"
        );
        assert_no_hsts(&response, path);
    }

    // Requests written back to back get their redirects in order, and a body the
    // listener does not use is still framed by its content-length.
    connection
        .send(
            "POST /first HTTP/1.1\r\nhost: a\r\ncontent-length: 30\r\n\r\n\
             GET /smuggled HTTP/1.1\r\nx: y\r\n\
             POST /second?z HTTP/1.1\r\nhost: b\r\ncontent-length: 0\r\n\r\n",
        )
        .await;
    for path in ["/first", "/second?z"] {
        let response = connection.read_response().await;
        assert_eq!(response.status, 308, "pipelined {path}: {response:?}");
        assert_eq!(
            response.header("location").map(str::to_owned),
            Some(format!("https://voice.example.test:8443{path}")),
            "pipelined requests get their redirects in order"
        );
    }
}

#[tokio::test]
async fn redirect_listener_never_reaches_upstream() {
    let harness = Harness::start().await;
    let listener = RedirectListener::start(8443).await;
    let session = harness.session("alice", &["tts", "stt"]);
    let requests = [
        format!(
            "GET /tts/websocket?access_token={session} HTTP/1.1\r\nhost: localhost\r\n\
             connection: Upgrade\r\nupgrade: websocket\r\nsec-websocket-version: 13\r\n\
             sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
        ),
        format!(
            "POST /tts/bytes HTTP/1.1\r\nhost: localhost\r\nauthorization: Bearer {session}\r\n\
             content-length: 0\r\n\r\n"
        ),
        // A session check would reject this invalid cookie with 401.
        "POST /stt HTTP/1.1\r\nhost: localhost\r\ncookie: session=not-a-jwt\r\n\
         content-length: 0\r\n\r\n"
            .to_owned(),
    ];
    for request in &requests {
        let response = listener.exchange(request).await;
        let path = request
            .split(' ')
            .nth(1)
            .unwrap()
            .split('?')
            .next()
            .unwrap();
        assert_eq!(
            response.status, 308,
            "{path}: a redirect, not an upgrade or a session answer: {response:?}"
        );
        assert!(
            !response.text().contains(&session),
            "{path}: the redirect body does not echo the session"
        );
    }
    assert!(
        harness.stand_in.requests().is_empty(),
        "the stand-in saw no request: {:?}",
        harness.stand_in.requests()
    );
    assert_eq!(harness.stand_in.mint_count(), 0, "no token was minted");
}

#[tokio::test]
async fn redirect_listener_stops_on_shutdown() {
    let mut listener = RedirectListener::start(8443).await;
    let mut idle = listener.connect().await;
    idle.send("GET /warm HTTP/1.1\r\nhost: a\r\n\r\n").await;
    assert_eq!(idle.read_response().await.status, 308);

    let stop = listener.stop.take().unwrap();
    let _ = stop.send(());
    let task = listener.task.take().unwrap();
    let result = tokio::time::timeout(Duration::from_secs(4), task)
        .await
        .expect("serve_redirects returns within 4 s with an idle connection open")
        .unwrap();
    assert!(
        result.is_ok(),
        "serve_redirects ends without an error: {result:?}"
    );
    assert!(
        TcpStream::connect(listener.address).await.is_err(),
        "the listener is closed after shutdown"
    );
}

// ---------------------------------------------------------------------------
// Settings

/// The settings every config text below starts with.
const BASE_CONFIG: &str = r#"
[server]
listen = "127.0.0.1:9443"

[upstream]
base_url = "https://127.0.0.1:9000"
"#;

fn parse_config(redirect: &str) -> Result<Config, ConfigError> {
    Config::from_toml_str(
        &format!("{BASE_CONFIG}\n[redirect]\n{redirect}"),
        std::iter::empty(),
    )
}

/// Asserts that `redirect` is rejected with an error naming `key`.
#[track_caller]
fn assert_rejected_naming(redirect: &str, key: &str) {
    match parse_config(redirect) {
        Ok(config) => panic!("{redirect:?} was accepted: {:?}", config.redirect),
        Err(ConfigError::Invalid {
            key: named,
            message,
        }) => {
            assert_eq!(named, key, "{redirect:?} is rejected for {key}: {message}");
            assert!(!message.is_empty(), "{redirect:?}: the error says why");
        }
        Err(other) => panic!("{redirect:?}: expected an error naming {key}, got: {other}"),
    }
}

#[test]
fn redirect_listen_needs_public_host() {
    assert_rejected_naming("listen = \"127.0.0.1:8080\"\n", "redirect.public_host");
    let message = parse_config("listen = \"127.0.0.1:8080\"\n")
        .unwrap_err()
        .to_string();
    assert!(
        message.contains("redirect.public_host"),
        "the message names the missing key: {message}"
    );
}

#[test]
fn public_host_must_be_bare_name() {
    for host in [
        "https://voice.example.test",
        "voice.example.test:8443",
        "voice.example.test/path",
        "",
    ] {
        assert_rejected_naming(
            &format!("listen = \"127.0.0.1:8080\"\npublic_host = \"{host}\"\n"),
            "redirect.public_host",
        );
    }
}

#[test]
fn stray_redirect_keys_need_listen() {
    assert_rejected_naming("public_host = \"voice.example.test\"\n", "redirect.listen");
    assert_rejected_naming("public_port = 8443\n", "redirect.listen");
}

#[test]
fn invalid_redirect_values_are_rejected() {
    assert_rejected_naming(
        "listen = \"voice.example.test:80\"\npublic_host = \"voice.example.test\"\n",
        "redirect.listen",
    );
    assert_rejected_naming(
        "listen = \"127.0.0.1:8080\"\npublic_host = \"voice.example.test\"\npublic_port = 0\n",
        "redirect.public_port",
    );
}

#[test]
fn public_port_defaults_to_https_port() {
    let config =
        parse_config("listen = \"127.0.0.1:8080\"\npublic_host = \"voice.example.test\"\n")
            .unwrap();
    let redirect = config.redirect.expect("the redirect listener is on");
    assert_eq!(
        redirect.listen,
        "127.0.0.1:8080".parse::<SocketAddr>().unwrap()
    );
    assert_eq!(redirect.public_host, PUBLIC_HOST);
    assert_eq!(
        redirect.public_port, 9443,
        "the port defaults to server.listen's port"
    );

    let config = parse_config(
        "listen = \"127.0.0.1:8080\"\npublic_host = \"voice.example.test\"\npublic_port = 443\n",
    )
    .unwrap();
    assert_eq!(
        config.redirect.unwrap().public_port,
        443,
        "an explicit public_port wins over server.listen's port"
    );
}

#[test]
fn redirect_is_off_by_default() {
    let config = Config::from_toml_str(BASE_CONFIG, std::iter::empty()).unwrap();
    assert!(
        config.redirect.is_none(),
        "no plain-HTTP listener without redirect.listen"
    );
}

// ---------------------------------------------------------------------------
// Listener and raw HTTP/1.1

/// A running `serve_redirects` on an ephemeral port.
struct RedirectListener {
    address: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<std::io::Result<()>>>,
}

impl RedirectListener {
    async fn start(public_port: u16) -> RedirectListener {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let config = RedirectConfig {
            listen: address,
            public_host: PUBLIC_HOST.into(),
            public_port,
        };
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(serve_redirects(listener, config, async move {
            let _ = stopped.await;
        }));
        RedirectListener {
            address,
            stop: Some(stop),
            task: Some(task),
        }
    }

    async fn connect(&self) -> RawConnection {
        RawConnection {
            stream: TcpStream::connect(self.address).await.unwrap(),
            buffer: Vec::new(),
        }
    }

    /// Sends `request` on a new connection and reads one response.
    async fn exchange(&self, request: &str) -> RawResponse {
        let mut connection = self.connect().await;
        connection.send(request).await;
        connection.read_response().await
    }
}

impl Drop for RedirectListener {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

#[track_caller]
fn assert_no_hsts(response: &RawResponse, case: &str) {
    assert_eq!(
        response.header("strict-transport-security"),
        None,
        "{case}: a plain-HTTP redirect carries no HSTS"
    );
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

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// A plain TCP connection that sends requests exactly as written.
struct RawConnection {
    stream: TcpStream,
    /// Bytes read but not yet parsed.
    buffer: Vec<u8>,
}

impl RawConnection {
    async fn send(&mut self, request: &str) {
        self.stream.write_all(request.as_bytes()).await.unwrap();
        self.stream.flush().await.unwrap();
    }

    /// Reads one response with its `content-length` body.
    async fn read_response(&mut self) -> RawResponse {
        tokio::time::timeout(READ_TIMEOUT, self.read_response_inner())
            .await
            .expect("a complete response within the read timeout")
    }

    async fn read_response_inner(&mut self) -> RawResponse {
        let head_end = loop {
            if let Some(position) = self
                .buffer
                .windows(4)
                .position(|window| window == b"\r\n\r\n")
            {
                break position;
            }
            self.read_more().await;
        };
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
        let length: usize = headers
            .iter()
            .find(|(name, _)| name == "content-length")
            .map(|(_, value)| value.parse().unwrap())
            .expect("a redirect has a content-length");
        while self.buffer.len() < length {
            self.read_more().await;
        }
        let body = self.buffer.drain(..length).collect();
        RawResponse {
            status,
            headers,
            body,
        }
    }

    async fn read_more(&mut self) {
        let mut chunk = [0u8; 4096];
        let read = self.stream.read(&mut chunk).await.unwrap();
        assert!(read > 0, "the listener closed the connection");
        self.buffer.extend_from_slice(&chunk[..read]);
    }
}
