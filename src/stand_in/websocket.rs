//! WebSocket plumbing shared by the three WebSocket routes: handshake checks (RFC 6455 section
//! 4.2.1), the upgrade, and a [`Socket`] that reads client messages while handling pings, close
//! frames, the idle timeout and server shutdown.
//!
//! Tungstenite sends the pong for each ping itself. A close frame from the client is echoed with
//! its code, as RFC 6455 section 5.5.1 requires. No extension (such as `permessage-deflate`) is
//! negotiated.

use std::future::Future;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::header::{
    CONNECTION, HeaderName, HeaderValue, SEC_WEBSOCKET_ACCEPT, SEC_WEBSOCKET_KEY, UPGRADE,
};
use http::{Request, Response, StatusCode, Version};
use hyper::body::Incoming;
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::{Instant, sleep_until, timeout};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role};
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

use super::respond::{ApiError, ResponseBody, full_body};
use super::router::RequestContext;
use super::server::Lifecycle;

/// A WebSocket with no message in either direction for this long is closed with 1000.
pub(crate) const IDLE_TIMEOUT: Duration = Duration::from_secs(300);
/// How long a server-initiated close waits for the client's close frame.
const CLOSE_WAIT: Duration = Duration::from_secs(5);
const SEC_WEBSOCKET_VERSION: HeaderName = HeaderName::from_static("sec-websocket-version");

/// Checks the handshake, responds with 101 and runs `session` on the upgraded connection in its own
/// task.
///
/// The task that takes over the connection is spawned before the 101 is returned, so the upgrade
/// cannot be missed. Handshake problems get HTTP error responses: 426 when the request is not a
/// WebSocket upgrade over HTTP/1.1 or requests another WebSocket version, 400 when it is malformed.
pub(crate) fn upgrade<F, Fut>(
    context: RequestContext,
    mut request: Request<Incoming>,
    lifecycle: Lifecycle,
    session: F,
) -> Response<ResponseBody>
where
    F: FnOnce(Socket) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let accept_key = match check_handshake(&request) {
        Ok(key) => derive_accept_key(key.as_bytes()),
        Err(error) => return context.error(error),
    };
    let on_upgrade = hyper::upgrade::on(&mut request);
    let request_id = context.request_id;
    tokio::spawn(async move {
        match on_upgrade.await {
            Ok(upgraded) => {
                let stream =
                    WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None)
                        .await;
                session(Socket::new(stream, lifecycle, request_id)).await;
            }
            Err(error) => tracing::debug!(%error, "stand-in WebSocket upgrade failed"),
        }
    });

    let mut response = Response::new(full_body(Bytes::new()));
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = response.headers_mut();
    headers.insert(UPGRADE, HeaderValue::from_static("websocket"));
    headers.insert(CONNECTION, HeaderValue::from_static("Upgrade"));
    if let Ok(value) = HeaderValue::from_str(&accept_key) {
        headers.insert(SEC_WEBSOCKET_ACCEPT, value);
    }
    response
}

/// Validates an opening handshake and returns its `Sec-WebSocket-Key`.
fn check_handshake<B>(request: &Request<B>) -> Result<String, ApiError> {
    let headers = request.headers();
    let header_has_token = |name: HeaderName, token: &str| {
        headers.get_all(name).iter().any(|value| {
            String::from_utf8_lossy(value.as_bytes())
                .split(',')
                .any(|item| item.trim().eq_ignore_ascii_case(token))
        })
    };
    if request.version() != Version::HTTP_11 || !header_has_token(UPGRADE, "websocket") {
        let error = ApiError::new(
            StatusCode::UPGRADE_REQUIRED,
            "upgrade_required",
            "this endpoint only accepts WebSocket upgrade requests over HTTP/1.1",
        );
        // HTTP/2 forbids the Upgrade header (RFC 9113 section 8.2.2), so only HTTP/1.1 responses
        // carry it.
        if request.version() != Version::HTTP_11 {
            return Err(error);
        }
        return Err(error.with_header(UPGRADE, HeaderValue::from_static("websocket")));
    }
    if !header_has_token(CONNECTION, "upgrade") {
        return Err(ApiError::bad_request(
            "invalid_handshake",
            "the Connection header must contain upgrade",
        ));
    }
    if headers
        .get(SEC_WEBSOCKET_VERSION)
        .map(HeaderValue::as_bytes)
        != Some(b"13")
    {
        let error = ApiError::new(
            StatusCode::UPGRADE_REQUIRED,
            "unsupported_websocket_version",
            "only WebSocket version 13 is supported",
        );
        return Err(error.with_header(SEC_WEBSOCKET_VERSION, HeaderValue::from_static("13")));
    }
    let key = headers
        .get(SEC_WEBSOCKET_KEY)
        .and_then(|value| value.to_str().ok())
        .map(str::trim)
        .filter(|key| BASE64.decode(key).is_ok_and(|nonce| nonce.len() == 16))
        .ok_or_else(|| {
            ApiError::bad_request(
                "invalid_handshake",
                "Sec-WebSocket-Key must be 16 bytes in base64",
            )
        })?;
    Ok(key.to_owned())
}

/// Result of [`Socket::next_event`].
pub(crate) enum Event {
    Text(Utf8Bytes),
    Binary(Bytes),
    /// The tick time passed to [`Socket::next_event`] arrived.
    Tick,
    /// The connection is closed or broken, so the session should return.
    Ended,
}

/// An accepted WebSocket with the bookkeeping every session needs. The stream type is a parameter
/// only so unit tests can run a socket over an in-memory pipe.
pub(crate) struct Socket<S = TokioIo<Upgraded>> {
    stream: WebSocketStream<S>,
    lifecycle: Lifecycle,
    idle_deadline: Instant,
    /// Id of this connection, echoed in the `request_id` of messages.
    pub(crate) request_id: String,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Socket<S> {
    fn new(stream: WebSocketStream<S>, lifecycle: Lifecycle, request_id: String) -> Self {
        Self {
            stream,
            lifecycle,
            idle_deadline: Instant::now() + IDLE_TIMEOUT,
            request_id,
        }
    }

    fn touch(&mut self) {
        self.idle_deadline = Instant::now() + IDLE_TIMEOUT;
    }

    /// Waits for the next text or binary message, or until `tick_at`.
    ///
    /// Closes the socket with 1000 when it has been idle for [`IDLE_TIMEOUT`] and with 1001 when
    /// the server shuts down, returning [`Event::Ended`] in both cases.
    pub(crate) async fn next_event(&mut self, tick_at: Option<Instant>) -> Event {
        loop {
            let tick = async {
                match tick_at {
                    Some(at) => sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                message = self.stream.next() => match message {
                    Some(Ok(Message::Text(text))) => {
                        self.touch();
                        return Event::Text(text);
                    }
                    Some(Ok(Message::Binary(data))) => {
                        self.touch();
                        return Event::Binary(data);
                    }
                    // Tungstenite sends pongs and the close echo on the next read, so keep reading.
                    Some(Ok(_)) => self.touch(),
                    Some(Err(error)) => {
                        tracing::debug!(%error, "stand-in WebSocket read failed");
                        return Event::Ended;
                    }
                    None => return Event::Ended,
                },
                () = tick => return Event::Tick,
                () = sleep_until(self.idle_deadline) => {
                    self.close(CloseCode::Normal, "idle timeout").await;
                    return Event::Ended;
                }
                () = self.lifecycle.stopped() => {
                    self.close(CloseCode::Away, "server shutting down").await;
                    return Event::Ended;
                }
            }
        }
    }

    /// Sends a JSON text message. Returns false when the connection is gone.
    pub(crate) async fn send_json(&mut self, message: &Value) -> bool {
        self.touch();
        self.stream
            .send(Message::text(message.to_string()))
            .await
            .is_ok()
    }

    /// Sends a close frame and waits up to 5 s for the client's close frame.
    pub(crate) async fn close(&mut self, code: CloseCode, reason: &str) {
        let frame = CloseFrame {
            code,
            reason: Utf8Bytes::from(reason),
        };
        if self.stream.close(Some(frame)).await.is_err() {
            return;
        }
        let drain = async { while let Some(Ok(_)) = self.stream.next().await {} };
        // A client that never sends its close frame is dropped after the wait.
        let _ = timeout(CLOSE_WAIT, drain).await;
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::DuplexStream;

    use super::*;
    use crate::stand_in::server::Lifecycle;

    /// Returns a server socket over an in-memory pipe, the client end, and the shutdown switch.
    async fn socket_pair() -> (
        Socket<DuplexStream>,
        WebSocketStream<DuplexStream>,
        tokio::sync::watch::Sender<bool>,
    ) {
        let (server_io, client_io) = tokio::io::duplex(64 * 1024);
        let (lifecycle, stop) = Lifecycle::for_test();
        let server = WebSocketStream::from_raw_socket(server_io, Role::Server, None).await;
        let client = WebSocketStream::from_raw_socket(client_io, Role::Client, None).await;
        (
            Socket::new(server, lifecycle, "req-1".to_owned()),
            client,
            stop,
        )
    }

    fn close_code(
        message: Option<Result<Message, tokio_tungstenite::tungstenite::Error>>,
    ) -> Option<u16> {
        match message {
            Some(Ok(Message::Close(Some(frame)))) => Some(frame.code.into()),
            _ => None,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn idle_socket_is_closed_after_timeout() {
        let (mut server, mut client, _stop) = socket_pair().await;
        let session = tokio::spawn(async move {
            let started = Instant::now();
            let event = server.next_event(None).await;
            (matches!(event, Event::Ended), started.elapsed())
        });
        assert_eq!(close_code(client.next().await), Some(1000));
        drop(client);
        let (ended, elapsed) = session.await.expect("session task");
        assert!(ended);
        assert!(elapsed >= IDLE_TIMEOUT, "closed after {elapsed:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn messages_reset_idle_timer_and_pings_get_pongs() {
        let (mut server, mut client, _stop) = socket_pair().await;
        let session = tokio::spawn(async move {
            let first = server.next_event(None).await;
            let second = server.next_event(None).await;
            matches!(first, Event::Text(ref text) if text.as_str() == "hello")
                && matches!(second, Event::Ended)
        });
        tokio::time::sleep(IDLE_TIMEOUT - Duration::from_secs(1)).await;
        client
            .send(Message::Ping(Bytes::from_static(b"p")))
            .await
            .expect("ping");
        assert_eq!(
            client.next().await.and_then(Result::ok),
            Some(Message::Pong(Bytes::from_static(b"p")))
        );
        tokio::time::sleep(IDLE_TIMEOUT - Duration::from_secs(1)).await;
        client.send(Message::text("hello")).await.expect("text");
        client.close(None).await.expect("close");
        assert!(session.await.expect("session task"));
    }

    #[tokio::test]
    async fn shutdown_closes_with_going_away() {
        let (mut server, mut client, stop) = socket_pair().await;
        let session =
            tokio::spawn(async move { matches!(server.next_event(None).await, Event::Ended) });
        stop.send(true).expect("signal shutdown");
        assert_eq!(close_code(client.next().await), Some(1001));
        drop(client);
        assert!(session.await.expect("session task"));
    }

    #[tokio::test]
    async fn client_close_code_is_echoed() {
        let (mut server, mut client, _stop) = socket_pair().await;
        let session =
            tokio::spawn(async move { matches!(server.next_event(None).await, Event::Ended) });
        let frame = CloseFrame {
            code: CloseCode::Library(4000),
            reason: Utf8Bytes::from_static("bye"),
        };
        client
            .send(Message::Close(Some(frame)))
            .await
            .expect("close");
        let Some(Ok(Message::Close(Some(echo)))) = client.next().await else {
            panic!("expected a close frame back");
        };
        assert_eq!(u16::from(echo.code), 4000);
        assert!(session.await.expect("session task"));
    }

    fn handshake(version: Version, headers: &[(&str, &str)]) -> Request<()> {
        let mut builder = Request::builder()
            .method("GET")
            .uri("/tts/websocket")
            .version(version);
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        builder.body(()).expect("valid test request")
    }

    const GOOD: [(&str, &str); 4] = [
        ("Upgrade", "websocket"),
        ("Connection", "keep-alive, Upgrade"),
        ("Sec-WebSocket-Version", "13"),
        ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
    ];

    fn with_replaced(name: &str, value: &str) -> Vec<(&'static str, String)> {
        GOOD.iter()
            .map(|(header, original)| {
                let chosen = if header.eq_ignore_ascii_case(name) {
                    value
                } else {
                    original
                };
                (*header, chosen.to_owned())
            })
            .collect()
    }

    fn status_of(version: Version, headers: &[(&str, String)]) -> Option<StatusCode> {
        let borrowed: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
        check_handshake(&handshake(version, &borrowed))
            .err()
            .map(|error| error.status)
    }

    #[test]
    fn valid_handshake_yields_key() {
        let key = check_handshake(&handshake(Version::HTTP_11, &GOOD)).expect("valid");
        assert_eq!(key, "dGhlIHNhbXBsZSBub25jZQ==");
        assert_eq!(
            derive_accept_key(key.as_bytes()),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn invalid_handshakes_are_rejected() {
        let upgrade_required = Some(StatusCode::UPGRADE_REQUIRED);
        let bad_request = Some(StatusCode::BAD_REQUEST);
        assert_eq!(
            status_of(Version::HTTP_2, &with_replaced("upgrade", "websocket")),
            upgrade_required
        );
        assert_eq!(
            status_of(Version::HTTP_11, &with_replaced("upgrade", "h2c")),
            upgrade_required
        );
        assert_eq!(
            status_of(Version::HTTP_11, &with_replaced("connection", "close")),
            bad_request
        );
        assert_eq!(
            status_of(
                Version::HTTP_11,
                &with_replaced("sec-websocket-version", "8")
            ),
            upgrade_required
        );
        assert_eq!(
            status_of(
                Version::HTTP_11,
                &with_replaced("sec-websocket-key", "c2hvcnQ=")
            ),
            bad_request
        );
    }
}
