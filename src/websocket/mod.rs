//! WebSocket routes: handshake with the client, handshake with the upstream,
//! then a message relay between the two.
//!
//! The client gets its 101 only after the upstream has answered 101, with the
//! upstream's chosen subprotocol. When the upstream refuses the upgrade, its
//! status, headers and body reach the client as an ordinary HTTP response and
//! the client connection stays plain HTTP.
//!
//! The gateway offers no extension upstream and accepts none, so
//! `permessage-deflate` is never negotiated on either leg. The relay parses
//! frames, which lets the gateway close a WebSocket itself with a proper
//! close frame and count messages; compression would force it to inflate and
//! deflate every audio frame.
//!
//! A 401 to the upstream handshake made with a cached token evicts the token
//! and repeats the handshake once with a fresh one.
//!
//! The upstream handshake goes through hyper, not tungstenite's client:
//! tungstenite's client handshake logs the whole request, query and
//! `Authorization` included, at `trace`.

mod handshake;
mod relay;

pub use handshake::{ClientHandshake, HandshakeError, check_upstream_answer};
pub use relay::{RelaySummary, relay};

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::header::{
    AUTHORIZATION, CONNECTION, HeaderMap, HeaderValue, SEC_WEBSOCKET_ACCEPT,
    SEC_WEBSOCKET_EXTENSIONS, SEC_WEBSOCKET_KEY, SEC_WEBSOCKET_PROTOCOL, SEC_WEBSOCKET_VERSION,
    UPGRADE,
};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::time::Instant;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::client::generate_key;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tracing::Instrument;

use crate::access::{AccessRecord, WebSocketEnd};
use crate::body::{self, ResponseBody};
use crate::error::GatewayError;
use crate::gateway::{Authorized, Connection, Gateway};
use crate::metrics::{Direction, SharedMetrics};
use crate::query;
use crate::shutdown::Shutdown;
use crate::tokens::TokenSource;
use crate::upstream::{self, Upstream};

/// Read buffer size of each leg of a relayed WebSocket. tungstenite
/// allocates the buffer up front, 128 KiB by default, so two of those
/// dominated the memory of an idle WebSocket. A larger message still
/// arrives, in several reads.
const READ_BUFFER_BYTES: usize = 16 * 1024;

/// Makes the upstream handshake for an authorized client handshake and, on
/// success, returns the 101 response and starts the relay.
pub async fn forward(
    gateway: &Gateway,
    request: Request<Incoming>,
    client: ClientHandshake,
    authorized: &Authorized,
    connection: &Connection,
    record: &mut AccessRecord,
) -> Result<Response<ResponseBody>, GatewayError> {
    let upstream = &gateway.upstream;
    let (mut parts, _body) = request.into_parts();
    let rewritten = query::rewrite(parts.uri.query());
    let key = generate_key();

    let headers = &mut parts.headers;
    upstream::prepare_request_headers(
        headers,
        &authorized.token.authorization,
        &upstream.cartesia_version,
        rewritten.has_version,
    );
    headers.remove(SEC_WEBSOCKET_EXTENSIONS);
    headers.insert(CONNECTION, HeaderValue::from_static("Upgrade"));
    headers.insert(UPGRADE, HeaderValue::from_static("websocket"));
    headers.insert(SEC_WEBSOCKET_VERSION, HeaderValue::from_static("13"));
    let key_value =
        HeaderValue::from_str(&key).map_err(|_| GatewayError::Internal("generated key"))?;
    headers.insert(SEC_WEBSOCKET_KEY, key_value);

    let uri = upstream.uri(authorized.route.path(), rewritten.query.as_deref());
    // A handshake has no body, so after a 401 to a cached token it can be
    // sent again with a fresh one.
    let retry_headers =
        (authorized.token_source == TokenSource::Cache).then(|| parts.headers.clone());
    let mut response = send_handshake(upstream, uri.clone(), parts.headers).await?;
    if response.status() == StatusCode::UNAUTHORIZED
        && let Some(token) = crate::proxy::token_after_rejection(gateway, authorized, true).await?
        && let Some(mut headers) = retry_headers
    {
        headers.insert(AUTHORIZATION, token.authorization.clone());
        response = send_handshake(upstream, uri, headers).await?;
        if response.status() == StatusCode::UNAUTHORIZED {
            crate::proxy::evict_rejected(gateway, authorized, &token, false).await;
        }
    }

    if response.status() != StatusCode::SWITCHING_PROTOCOLS {
        // The upstream rejected the upgrade: relay its response as a plain response.
        tracing::debug!(
            status = response.status().as_u16(),
            "upstream refused the WebSocket upgrade"
        );
        return Ok(crate::proxy::pass_response(gateway, response, record));
    }
    record.set_upstream_status(StatusCode::SWITCHING_PROTOCOLS.as_u16());

    let protocol = check_upstream_answer(response.headers(), &key, client.protocols.as_ref())
        .map_err(GatewayError::UpstreamHandshake)?;
    let upstream_upgrade = hyper::upgrade::on(response);
    let limits = CloseLimits {
        session_expires_at: authorized
            .session
            .expires_at
            .saturating_add(gateway.config.session.leeway.as_secs()),
        max_lifetime: gateway.config.websocket.max_lifetime,
        idle_timeout: gateway.config.websocket.idle_timeout,
    };
    spawn_relay(
        client.on_upgrade,
        upstream_upgrade,
        authorized,
        connection.clone(),
        limits,
        Relayed {
            metrics: std::sync::Arc::clone(&gateway.metrics),
            record: record.hand_over(),
        },
    );

    let mut answer = Response::new(body::empty());
    *answer.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = answer.headers_mut();
    headers.insert(CONNECTION, HeaderValue::from_static("Upgrade"));
    headers.insert(UPGRADE, HeaderValue::from_static("websocket"));
    headers.insert(SEC_WEBSOCKET_ACCEPT, client.accept);
    if let Some(protocol) = protocol {
        headers.insert(SEC_WEBSOCKET_PROTOCOL, protocol);
    }
    Ok(answer)
}

/// Sends an upgrade request upstream and waits for the response head.
async fn send_handshake(
    upstream: &Upstream,
    uri: Uri,
    headers: HeaderMap,
) -> Result<Response<Incoming>, GatewayError> {
    let mut request = Request::new(Either::Left(Full::new(Bytes::new())));
    *request.method_mut() = Method::GET;
    *request.uri_mut() = uri;
    *request.version_mut() = Version::HTTP_11;
    *request.headers_mut() = headers;
    tokio::time::timeout(
        upstream.response_timeout,
        upstream.websocket.request(request),
    )
    .await
    .map_err(|_| GatewayError::UpstreamTimeout)?
    .map_err(crate::proxy::classify)
}

/// When the gateway closes a WebSocket by itself.
struct CloseLimits {
    /// Unix time in seconds after which the session that opened the
    /// WebSocket no longer verifies: its `exp` plus the leeway.
    session_expires_at: u64,
    max_lifetime: Option<Duration>,
    /// Time without messages after which the relay closes the WebSocket.
    idle_timeout: Duration,
}

impl CloseLimits {
    /// Completes with the close frame for the first limit reached:
    /// shutdown (1001), session expiry or maximum lifetime (1008).
    async fn reached(self, mut shutdown: Shutdown) -> CloseFrame {
        let opened = Instant::now();
        let until_expiry = self.session_expires_at.saturating_sub(unix_now());
        let expiry = sleep_for(opened, Some(Duration::from_secs(until_expiry)));
        let lifetime = sleep_for(opened, self.max_lifetime);
        let (code, reason) = tokio::select! {
            () = shutdown.signalled() => (CloseCode::Away, "gateway shutting down"),
            () = expiry => (CloseCode::Policy, "session expired"),
            () = lifetime => (CloseCode::Policy, "connection lifetime exceeded"),
        };
        tracing::debug!(
            close.code = u16::from(code),
            reason,
            "gateway closes the WebSocket"
        );
        CloseFrame {
            code,
            reason: reason.into(),
        }
    }
}

/// Sleeps until `limit` after `start`. Never completes without a limit or
/// when the deadline lies beyond what `Instant` can represent, such as for
/// an `exp` near `u64::MAX`.
async fn sleep_for(start: Instant, limit: Option<Duration>) {
    match limit.and_then(|limit| start.checked_add(limit)) {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs())
}

/// Receivers of the relay's report when the WebSocket ends.
struct Relayed {
    metrics: SharedMetrics,
    /// The handshake's access record, written when the relay ends.
    record: AccessRecord,
}

/// Starts the relay task, which waits for both upgrades to complete.
fn spawn_relay(
    client_upgrade: hyper::upgrade::OnUpgrade,
    upstream_upgrade: hyper::upgrade::OnUpgrade,
    authorized: &Authorized,
    connection: Connection,
    limits: CloseLimits,
    relayed: Relayed,
) {
    let route = authorized.route;
    let span = tracing::info_span!(
        "websocket",
        route = authorized.route.path(),
        user.id = %authorized.session.user_id,
    );
    let Relayed {
        metrics,
        mut record,
    } = relayed;
    let task = async move {
        let (client, upstream) = match tokio::try_join!(client_upgrade, upstream_upgrade) {
            Ok(both) => both,
            Err(error) => {
                tracing::debug!(%error, "WebSocket upgrade did not complete");
                record.set_reason(crate::access::CLIENT_CLOSED);
                return record;
            }
        };
        let _open = metrics.websocket_opened(route);
        let config = Some(WebSocketConfig::default().read_buffer_size(READ_BUFFER_BYTES));
        let client =
            WebSocketStream::from_raw_socket(TokioIo::new(client), Role::Server, config).await;
        let upstream =
            WebSocketStream::from_raw_socket(TokioIo::new(upstream), Role::Client, config).await;
        tracing::debug!("WebSocket opened");
        // The slot keeps the WebSocket counted under server.max_connections.
        let _slot = connection.slot;
        let idle_timeout = limits.idle_timeout;
        // `reached` drops its handle once shutdown is signalled; this one
        // keeps the drain waiting until the close handshake is done.
        let _drain_guard = connection.shutdown.clone();
        let stop = limits.reached(connection.shutdown);
        let traffic = [
            metrics.websocket_traffic(Direction::ClientToUpstream),
            metrics.websocket_traffic(Direction::UpstreamToClient),
        ];
        let summary = relay(client, upstream, stop, idle_timeout, traffic).await;
        let closed_by = summary.closed_by.as_str();
        metrics.websocket_closed(closed_by);
        record.websocket_closed(
            WebSocketEnd {
                close_code: summary.close_code,
                closed_by,
            },
            summary.client_bytes,
            summary.upstream_bytes,
        );
        tracing::debug!(
            closed_by = summary.closed_by.as_str(),
            close.code = summary.close_code,
            client.messages = summary.client_messages,
            client.bytes = summary.client_bytes,
            upstream.messages = summary.upstream_messages,
            upstream.bytes = summary.upstream_bytes,
            "WebSocket closed"
        );
        record
    };
    // The access event is written outside the span, so that it carries
    // its own fields only.
    tokio::spawn(async move {
        let record = task.instrument(span).await;
        drop(record);
    });
}
