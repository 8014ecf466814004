//! The HTTPS listener: accepts TCP connections, terminates TLS, serves
//! HTTP/1.1 and HTTP/2 (chosen by ALPN) and shuts down gracefully.
//!
//! A client that speaks plain HTTP to the TLS port gets a fixed 400
//! response and the connection is closed; no handler runs for it.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use http_body::{Body, Frame, SizeHint};

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, Semaphore};
use tokio_rustls::TlsAcceptor;
use tracing::Instrument;

use crate::cert_reload;
use crate::gateway::{Connection, Gateway};
use crate::shutdown::ShutdownController;

/// First byte of a TLS handshake record (RFC 8446 section 5.1).
const TLS_HANDSHAKE_RECORD: u8 = 0x16;

/// Pause after an `accept` error such as running out of file descriptors.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// Body of the 400 response sent to plain-HTTP clients on the TLS port.
const PLAIN_HTTP_BODY: &str =
    r#"{"error":"https_required","message":"This port serves HTTPS only; use https."}"#;

fn plain_http_response() -> String {
    format!(
        "HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{PLAIN_HTTP_BODY}",
        PLAIN_HTTP_BODY.len()
    )
}

/// Serves the gateway on `listener` until `shutdown` completes, then stops
/// accepting, lets open requests and WebSockets finish, and returns once
/// they have or the configured shutdown timeout has passed.
pub async fn serve(
    listener: TcpListener,
    gateway: Arc<Gateway>,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let controller = ShutdownController::new();
    let acceptor = TlsAcceptor::from(gateway.server_tls());
    // Checks the certificate files until the accept loop ends.
    let certificate_watcher = gateway
        .config()
        .server
        .cert_reload_interval
        .map(|interval| cert_reload::watch(Arc::clone(&gateway), interval));
    let connection_slots = Arc::new(Semaphore::new(gateway.config().server.max_connections));
    tracing::info!(address = %listener.local_addr()?, "gateway listening");
    // Readiness turns false at the signal. Accepting goes on for
    // `server.shutdown_delay`, so load balancers stop sending connections
    // before the listener closes.
    let delay = gateway.config().server.shutdown_delay;
    let health_gateway = Arc::clone(&gateway);
    let shutdown = async move {
        shutdown.await;
        health_gateway.health().begin_shutdown();
        health_gateway.metrics().set_ready(false);
        if !delay.is_zero() {
            tracing::info!(
                delay_secs = delay.as_secs(),
                "shutdown started; readiness is false and the listener closes after the delay"
            );
            tokio::time::sleep(delay).await;
        }
    };
    tokio::pin!(shutdown);
    loop {
        // At the connection limit, new connections wait in the kernel's
        // listen backlog; open ones are not affected.
        let slot = tokio::select! {
            slot = Arc::clone(&connection_slots).acquire_owned() => slot,
            () = &mut shutdown => break,
        };
        let Ok(slot) = slot else {
            break;
        };
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = &mut shutdown => break,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                tracing::warn!(%error, "accepting a connection failed");
                tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                continue;
            }
        };
        let Some(handle) = controller.handle() else {
            break;
        };
        let connection = Connection {
            peer,
            shutdown: handle,
            slot: Arc::new(slot),
        };
        let task = serve_connection(stream, connection, acceptor.clone(), Arc::clone(&gateway));
        tokio::spawn(task);
    }
    drop(listener);
    drop(certificate_watcher);

    let timeout = gateway.config().server.shutdown_timeout;
    tracing::info!(
        timeout_secs = timeout.as_secs(),
        "shutting down; draining connections"
    );
    if controller.shutdown(timeout).await {
        tracing::info!("all connections drained");
    } else {
        tracing::warn!("shutdown timeout passed with connections still open");
    }
    Ok(())
}

async fn serve_connection(
    stream: TcpStream,
    connection: Connection,
    acceptor: TlsAcceptor,
    gateway: Arc<Gateway>,
) {
    let mut shutdown = connection.shutdown.clone();
    let _open = gateway.metrics().connection_opened();
    let _ = stream.set_nodelay(true);
    let peer = connection.peer;
    // Only the handshake runs in the connection's span. Request handling
    // has spans of its own, and an access event written while the
    // connection is polled would otherwise carry this span's fields too.
    let span = tracing::debug_span!("conn", client.addr = %peer);
    let handshake_timeout = gateway.config().server.tls_handshake_timeout;
    let handshake = tokio::time::timeout(handshake_timeout, accept_tls(stream, &acceptor));
    let tls = match handshake.instrument(span).await {
        Ok(Some(tls)) => tls,
        Ok(None) => return,
        Err(_) => {
            tracing::debug!(client.addr = %peer, "TLS handshake timed out");
            return;
        }
    };

    let handler_gateway = Arc::clone(&gateway);
    let activity = Arc::new(Activity::new());
    let handler_activity = Arc::clone(&activity);
    let service = service_fn(move |request| {
        let open = handler_activity.request_started();
        let gateway = Arc::clone(&handler_gateway);
        let connection = connection.clone();
        async move {
            let response = gateway.handle(request, connection).await;
            Ok::<_, Infallible>(response.map(|body| Tracked {
                inner: body,
                _open: open,
            }))
        }
    });

    let settings = &gateway.config().server;
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(settings.header_read_timeout)
        .max_buf_size(settings.max_header_bytes);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(settings.max_header_bytes).unwrap_or(u32::MAX))
        .keep_alive_interval(settings.http2_keep_alive_interval)
        .keep_alive_timeout(settings.http2_keep_alive_timeout);
    let served = builder.serve_connection_with_upgrades(TokioIo::new(tls), service);
    tokio::pin!(served);
    let idle = activity.idle(settings.header_read_timeout, settings.http2_idle_timeout);
    let result = tokio::select! {
        result = served.as_mut() => result,
        first_request = idle => {
            if first_request {
                tracing::debug!(
                    client.addr = %peer,
                    "header read timeout passed without a request; closing the connection"
                );
                return;
            }
            tracing::debug!(client.addr = %peer, "connection idle; closing it");
            served.as_mut().graceful_shutdown();
            served.await
        }
        () = shutdown.signalled() => {
            served.as_mut().graceful_shutdown();
            served.await
        }
    };
    if let Err(error) = result {
        tracing::debug!(client.addr = %peer, %error, "connection ended with an error");
    }
}

/// Requests open on one connection and when the last one ended, for the
/// idle timeouts.
struct Activity {
    started: Instant,
    open: AtomicUsize,
    requests_seen: AtomicBool,
    /// Milliseconds from `started` to the end of the last request.
    last_end_ms: AtomicU64,
    /// Wakes [`Activity::idle`] when a request starts or ends.
    changed: Notify,
}

/// Marks a request as open until dropped with its response body.
struct OpenRequest(Arc<Activity>);

impl Activity {
    fn new() -> Self {
        Activity {
            started: Instant::now(),
            open: AtomicUsize::new(0),
            requests_seen: AtomicBool::new(false),
            last_end_ms: AtomicU64::new(0),
            changed: Notify::new(),
        }
    }

    fn request_started(self: &Arc<Self>) -> OpenRequest {
        self.requests_seen.store(true, Ordering::Relaxed);
        self.open.fetch_add(1, Ordering::AcqRel);
        self.changed.notify_one();
        OpenRequest(Arc::clone(self))
    }

    /// Completes once the connection has had no open request for
    /// `first_request` before its first request, or for `later` after it.
    /// Returns whether no request ever came.
    ///
    /// hyper's `header_read_timeout` starts only once `auto::Builder` has
    /// detected the protocol from the first bytes the client sends, so a
    /// client that completes TLS and then sends nothing would hold its
    /// connection slot forever without the first limit. The later one
    /// matters for HTTP/2, where hyper has no idle timeout; an idle
    /// HTTP/1.1 connection meets hyper's `header_read_timeout` first.
    async fn idle(&self, first_request: Duration, later: Duration) -> bool {
        loop {
            let seen = self.requests_seen.load(Ordering::Relaxed);
            let limit = if seen { later } else { first_request };
            if self.open.load(Ordering::Acquire) > 0 {
                self.changed.notified().await;
                continue;
            }
            let last_end = Duration::from_millis(self.last_end_ms.load(Ordering::Relaxed));
            let deadline = tokio::time::Instant::from_std(self.started + last_end + limit);
            if tokio::time::Instant::now() >= deadline {
                return !seen;
            }
            // `notify_one` keeps a wake-up for a change made before this
            // wait starts, so none is missed.
            tokio::select! {
                () = tokio::time::sleep_until(deadline) => {}
                () = self.changed.notified() => {}
            }
        }
    }
}

impl Drop for OpenRequest {
    fn drop(&mut self) {
        let activity = &self.0;
        let elapsed = u64::try_from(activity.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        activity.last_end_ms.store(elapsed, Ordering::Relaxed);
        activity.open.fetch_sub(1, Ordering::AcqRel);
        activity.changed.notify_one();
    }
}

/// A response body that keeps its request counted as open.
struct Tracked<B> {
    inner: B,
    _open: OpenRequest,
}

impl<B: Body + Unpin> Body for Tracked<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Completes the TLS handshake, or sends a plain-HTTP client a 400
/// and returns `None`.
pub(crate) async fn accept_tls(
    mut stream: TcpStream,
    acceptor: &TlsAcceptor,
) -> Option<tokio_rustls::server::TlsStream<TcpStream>> {
    let mut first = [0u8; 1];
    match stream.peek(&mut first).await {
        Ok(1) => {}
        _ => return None,
    }
    if first[0] != TLS_HANDSHAKE_RECORD {
        if first[0].is_ascii_alphabetic() {
            tracing::debug!("plain HTTP on the TLS port; sent 400 and closed");
            let _ = stream.write_all(plain_http_response().as_bytes()).await;
            let _ = stream.shutdown().await;
        }
        return None;
    }
    match acceptor.accept(stream).await {
        Ok(tls) => Some(tls),
        Err(error) => {
            tracing::debug!(%error, "TLS handshake failed");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_http_response_has_correct_length() {
        let text = plain_http_response();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.contains(&format!("content-length: {}", body.len())));
        let json: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(json["error"], "https_required");
    }
}
