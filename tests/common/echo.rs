//! An echoing WebSocket upstream that tests put in place of the Cartesia
//! stand-in. Unlike the stand-in, it echoes messages, records the close
//! frames it receives, closes with its own code on request and chooses a
//! subprotocol.

use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::header::{
    CONNECTION, SEC_WEBSOCKET_ACCEPT, SEC_WEBSOCKET_KEY, SEC_WEBSOCKET_PROTOCOL, UPGRADE,
};
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role};
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

use super::{Harness, Options};

/// A text message that makes [`EchoUpstream`] close with 4002 "upstream bye".
pub const ECHO_CLOSE_COMMAND: &str = "close please";

/// A WebSocket upstream over HTTP/1.1. It returns a fixed token from
/// `/access-token`, echoes text and binary messages and records the close
/// frames it receives as code and reason. It closes with 4002 on
/// [`ECHO_CLOSE_COMMAND`]. Its 101 response chooses the last subprotocol
/// the client offered, unless [`EchoUpstream::force_protocol`] set one.
#[derive(Clone, Default)]
pub struct EchoUpstream {
    state: Arc<EchoState>,
}

#[derive(Default)]
struct EchoState {
    closes: Mutex<Vec<(u16, String)>>,
    /// Subprotocol sent in every 101, whatever the client offered.
    forced_protocol: Mutex<Option<String>>,
}

impl EchoUpstream {
    /// Returns the code and reason of every close frame received so far,
    /// with 1005 and an empty reason for a close frame without a body.
    pub fn closes(&self) -> Vec<(u16, String)> {
        self.state.closes.lock().unwrap().clone()
    }

    /// Makes every later 101 response choose `protocol`, offered or not.
    pub fn force_protocol(&self, protocol: &str) {
        *self.state.forced_protocol.lock().unwrap() = Some(protocol.to_owned());
    }

    async fn serve(self, listener: TcpListener, acceptor: TlsAcceptor) {
        while let Ok((stream, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            let echo = self.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(stream).await else {
                    return;
                };
                let service = service_fn(move |request| {
                    let echo = echo.clone();
                    async move { Ok::<_, Infallible>(echo.handle(request)) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), service)
                    .with_upgrades()
                    .await;
            });
        }
    }

    fn handle(&self, mut request: Request<Incoming>) -> Response<Full<Bytes>> {
        if request.uri().path() == "/access-token" {
            return Response::new(Full::new(Bytes::from_static(
                br#"{"token":"echo-upstream-token"}"#,
            )));
        }
        let headers = request.headers();
        let key = headers
            .get(SEC_WEBSOCKET_KEY)
            .expect("the gateway sends a key")
            .as_bytes();
        let accept = derive_accept_key(key);
        let offered_last = headers
            .get(SEC_WEBSOCKET_PROTOCOL)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.split(',').next_back())
            .map(|protocol| protocol.trim().to_owned());
        let forced = self.state.forced_protocol.lock().unwrap().clone();
        let chosen = forced.or(offered_last);

        // The task that takes the upgrade starts before the 101 goes out.
        let on_upgrade = hyper::upgrade::on(&mut request);
        let echo = self.clone();
        tokio::spawn(async move {
            if let Ok(upgraded) = on_upgrade.await {
                let socket =
                    WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None)
                        .await;
                echo.run(socket).await;
            }
        });

        let mut response = Response::builder()
            .status(StatusCode::SWITCHING_PROTOCOLS)
            .header(CONNECTION, "Upgrade")
            .header(UPGRADE, "websocket")
            .header(SEC_WEBSOCKET_ACCEPT, accept);
        if let Some(protocol) = chosen {
            response = response.header(SEC_WEBSOCKET_PROTOCOL, protocol);
        }
        response.body(Full::new(Bytes::new())).unwrap()
    }

    async fn run<S>(self, mut socket: WebSocketStream<S>)
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    {
        while let Some(Ok(message)) = socket.next().await {
            let reply = match message {
                Message::Text(text) if text.as_str() == ECHO_CLOSE_COMMAND => {
                    Message::Close(Some(CloseFrame {
                        code: CloseCode::from(4002),
                        reason: Utf8Bytes::from_static("upstream bye"),
                    }))
                }
                Message::Text(_) | Message::Binary(_) => message,
                Message::Close(frame) => {
                    let recorded = frame.map_or((1005, String::new()), |frame| {
                        (u16::from(frame.code), frame.reason.to_string())
                    });
                    self.state.closes.lock().unwrap().push(recorded);
                    // Tungstenite sends its reply to the close frame on the next read.
                    continue;
                }
                // Tungstenite replies to pings by itself, and pongs need no reply.
                _ => continue,
            };
            if socket.send(reply).await.is_err() {
                return;
            }
        }
    }
}

/// Starts the gateway with `options` and an [`EchoUpstream`] as its
/// upstream, in place of any `upstream_url` in `options`. The echo server's
/// listener is bound first so that its address can go into the gateway's
/// config. It serves with the harness certificate, which the gateway
/// already trusts.
pub async fn start_with_echo_upstream(options: Options) -> (Harness, EchoUpstream) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let harness = Harness::start_with(Options {
        upstream_url: Some(format!("https://{address}")),
        ..options
    })
    .await;
    let server_tls =
        cartesia_gateway::tls::server_config(&harness.certs.cert_file, &harness.certs.key_file)
            .unwrap();
    let mut tls = (*server_tls).clone();
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    let echo = EchoUpstream::default();
    tokio::spawn(
        echo.clone()
            .serve(listener, TlsAcceptor::from(Arc::new(tls))),
    );
    (harness, echo)
}
