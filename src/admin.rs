//! The admin listener: `GET /metrics`, `/livez` and `/readyz`.
//!
//! It serves plain HTTP unless `admin.tls` is set, so it belongs on
//! loopback or on an address only the kubelet and Prometheus reach, such as
//! a Pod's own IP behind a NetworkPolicy. It never forwards to Cartesia,
//! reads no session and sets no cookie. Endpoints:
//! - `/livez`: 200 `{"status":"ok"}` while the process serves.
//! - `/readyz`: 200 when ready, else 503; the body lists each check, `"ok"`
//!   or why it fails (see [`crate::health`]).
//! - `/metrics`: the gateway's metrics in the OpenMetrics text format.
//!
//! Other paths get 404 and other methods than `GET` and `HEAD` get 405,
//! both with a JSON body.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{ALLOW, CACHE_CONTROL, CONTENT_TYPE, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tracing::Instrument;

use crate::gateway::Gateway;
use crate::shutdown::ShutdownController;

/// Maximum open admin connections. Probes and scrapes need few.
const MAX_CONNECTIONS: usize = 64;
/// Time a client has to finish the TLS handshake or send its request head.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(10);
/// Time the admin listener waits for open connections once it stops.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest request head, in bytes.
const MAX_HEAD_BYTES: usize = 16 * 1024;

/// Serves the admin endpoints of `gateway` on `listener` until `shutdown`
/// completes. With `tls`, connections are HTTPS with the gateway's server
/// certificate.
pub async fn serve(
    listener: TcpListener,
    gateway: Arc<Gateway>,
    tls: bool,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let address = listener.local_addr()?;
    let acceptor = tls.then(|| TlsAcceptor::from(gateway.server_tls()));
    if !tls && !address.ip().is_loopback() {
        tracing::info!(
            %address,
            "the admin listener serves plain HTTP on a non-loopback address; keep it reachable only inside the host or Pod network, or set admin.tls"
        );
    }
    tracing::info!(%address, tls, "admin listener started");
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let controller = ShutdownController::new();
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    tracing::warn!(%error, "accepting an admin connection failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
            tracing::debug!(%peer, "admin connection limit reached; closing");
            continue;
        };
        let Some(handle) = controller.handle() else {
            break;
        };
        let gateway = Arc::clone(&gateway);
        let acceptor = acceptor.clone();
        let task = async move {
            let _slot = slot;
            match acceptor {
                None => serve_connection(stream, gateway, handle).await,
                Some(acceptor) => {
                    // A plain-HTTP client gets the same 400 as on the HTTPS
                    // listener.
                    let accepted = crate::server::accept_tls(stream, &acceptor);
                    match tokio::time::timeout(CLIENT_TIMEOUT, accepted).await {
                        Ok(Some(tls)) => serve_connection(tls, gateway, handle).await,
                        Ok(None) => {}
                        Err(_) => tracing::debug!("admin TLS handshake timed out"),
                    }
                }
            }
        };
        tokio::spawn(task.instrument(tracing::debug_span!("admin", client.addr = %peer)));
    }
    drop(listener);
    controller.shutdown(SHUTDOWN_TIMEOUT).await;
    Ok(())
}

async fn serve_connection<S>(
    stream: S,
    gateway: Arc<Gateway>,
    mut shutdown: crate::shutdown::Shutdown,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = service_fn(move |request: Request<hyper::body::Incoming>| {
        let response = respond(&gateway, &request);
        async move { Ok::<_, Infallible>(response) }
    });
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(CLIENT_TIMEOUT)
        .max_buf_size(MAX_HEAD_BYTES);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(MAX_HEAD_BYTES as u32);
    let connection = builder.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(connection);
    let result = tokio::select! {
        result = connection.as_mut() => result,
        () = shutdown.signalled() => {
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    if let Err(error) = result {
        tracing::debug!(%error, "admin connection ended with an error");
    }
}

/// Builds the response to one admin request. hyper leaves out the body of
/// a response to `HEAD`.
fn respond(
    gateway: &Arc<Gateway>,
    request: &Request<hyper::body::Incoming>,
) -> Response<Full<Bytes>> {
    let path = request.uri().path();
    let known = matches!(path, "/metrics" | "/livez" | "/readyz");
    if !known {
        return json(
            StatusCode::NOT_FOUND,
            r#"{"error":"not_found","message":"The admin listener serves /metrics, /livez and /readyz."}"#.to_owned(),
        );
    }
    let method = request.method();
    if method != Method::GET && method != Method::HEAD {
        let mut response = json(
            StatusCode::METHOD_NOT_ALLOWED,
            r#"{"error":"method_not_allowed","message":"Use GET."}"#.to_owned(),
        );
        response
            .headers_mut()
            .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
        return response;
    }
    match path {
        "/metrics" => {
            let mut response = Response::new(Full::new(Bytes::from(gateway.render_metrics())));
            response.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static(crate::metrics::CONTENT_TYPE),
            );
            response
        }
        "/livez" => json(StatusCode::OK, r#"{"status":"ok"}"#.to_owned()),
        _ => {
            let readiness = gateway.readiness();
            let status = if readiness.ready {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            let body = serde_json::json!({
                "status": if readiness.ready { "ready" } else { "not_ready" },
                "checks": readiness.checks,
            });
            json(status, body.to_string())
        }
    }
}

fn json(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// Runs `main` (the HTTPS listener's [`crate::serve`]) with the admin
/// listener beside it when `listener` is given. The admin listener keeps
/// serving while `main` drains, so probes see readiness turn false, and
/// stops once `main` has returned.
pub async fn serve_alongside(
    listener: Option<TcpListener>,
    gateway: Arc<Gateway>,
    main: impl Future<Output = std::io::Result<()>>,
) -> std::io::Result<()> {
    let Some(listener) = listener else {
        return main.await;
    };
    let tls = gateway
        .config()
        .admin
        .as_ref()
        .is_some_and(|admin| admin.tls);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let admin = tokio::spawn(serve(listener, gateway, tls, async move {
        let _ = stopped.await;
    }));
    let served = main.await;
    let _ = stop.send(());
    if let Ok(Err(error)) = admin.await {
        tracing::warn!(%error, "the admin listener failed");
    }
    served
}
