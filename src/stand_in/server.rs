//! The accept loop: TLS, HTTP/1.1 and HTTP/2 connections, and shutdown with a bounded drain.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use http_body_util::BodyExt;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::time::{Instant, timeout};
use tokio_rustls::TlsAcceptor;

use super::{Shared, router};

/// Maximum TLS handshake time before the connection is dropped.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Maximum wait for open connections and WebSockets after shutdown starts.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// Pause after a failed `accept`, so a persistent error (such as too many open files) does not
/// spin.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(50);

/// Shutdown signal plus a drain guard. Every connection task and WebSocket session owns a clone, so
/// the server can tell that all of them have finished when the last clone is dropped.
#[derive(Clone)]
pub(crate) struct Lifecycle {
    stop: watch::Receiver<bool>,
    _drain: mpsc::Sender<()>,
}

impl Lifecycle {
    /// Returns a lifecycle with its own shutdown switch, for unit tests of WebSocket sessions.
    #[cfg(test)]
    pub(crate) fn for_test() -> (Self, watch::Sender<bool>) {
        let (stop_sender, stop) = watch::channel(false);
        let (drain, _drained) = mpsc::channel(1);
        (
            Self {
                stop,
                _drain: drain,
            },
            stop_sender,
        )
    }

    /// Completes once shutdown has started.
    pub(crate) async fn stopped(&mut self) {
        // An error means the sender is gone, which only happens after shutdown.
        let _ = self.stop.wait_for(|stopped| *stopped).await;
    }
}

pub(crate) async fn serve(
    shared: Arc<Shared>,
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let acceptor = acceptor_with_alpn(&tls, &[b"h2", b"http/1.1"]);
    let http1_acceptor = acceptor_with_alpn(&tls, &[b"http/1.1"]);
    let (stop_sender, stop) = watch::channel(false);
    let (drain_sender, mut drained) = mpsc::channel(1);
    let lifecycle = Lifecycle {
        stop,
        _drain: drain_sender,
    };
    if let Ok(address) = listener.local_addr() {
        tracing::info!(%address, "stand-in listening");
    }

    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    // Audio chunks are small and paced; without this, Nagle's
                    // algorithm would batch several of them.
                    let _ = stream.set_nodelay(true);
                    let acceptor = if shared.faults.http1_only() {
                        &http1_acceptor
                    } else {
                        &acceptor
                    };
                    let connection = serve_connection(
                        acceptor.clone(),
                        stream,
                        peer,
                        shared.clone(),
                        lifecycle.clone(),
                    );
                    tokio::spawn(connection);
                }
                Err(error) => {
                    tracing::debug!(%error, "stand-in accept failed");
                    tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                }
            },
        }
    }

    drop(listener);
    // Ignoring the error is fine: no receiver left means nothing is running.
    let _ = stop_sender.send(true);
    drop(lifecycle);
    if timeout(SHUTDOWN_GRACE, drained.recv()).await.is_err() {
        tracing::debug!("stand-in stopped with connections still open");
    }
    tracing::info!("stand-in stopped");
    Ok(())
}

async fn serve_connection(
    acceptor: TlsAcceptor,
    stream: TcpStream,
    peer: SocketAddr,
    shared: Arc<Shared>,
    mut lifecycle: Lifecycle,
) {
    let tls_stream = match timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
        Ok(Ok(tls_stream)) => tls_stream,
        Ok(Err(error)) => {
            tracing::debug!(%error, %peer, "stand-in TLS handshake failed");
            return;
        }
        Err(_) => {
            tracing::debug!(%peer, "stand-in TLS handshake timed out");
            return;
        }
    };
    let request_lifecycle = lifecycle.clone();
    let activity = Arc::new(Activity::new());
    let service_shared = shared.clone();
    let service_activity = activity.clone();
    let service = service_fn(move |request| {
        let in_progress = InProgress::start(&service_activity);
        let handled = router::handle(service_shared.clone(), request_lifecycle.clone(), request);
        async move {
            let response = handled.await?;
            // The guard lives as long as the response body, so the connection counts as busy
            // until hyper has taken the last frame.
            Ok::<_, std::convert::Infallible>(response.map(move |body| {
                body.map_frame(move |frame| {
                    let _ = &in_progress;
                    frame
                })
                .boxed()
            }))
        }
    });
    let builder = auto::Builder::new(TokioExecutor::new());
    let mut connection =
        Box::pin(builder.serve_connection_with_upgrades(TokioIo::new(tls_stream), service));
    tokio::select! {
        result = connection.as_mut() => {
            if let Err(error) = result {
                tracing::debug!(%error, %peer, "stand-in connection ended with an error");
            }
        }
        () = lifecycle.stopped() => {
            connection.as_mut().graceful_shutdown();
            // Errors while draining are expected when a client drops mid-response.
            let _ = connection.await;
        }
        () = idle_timeout(&activity, shared.faults.idle_close()) => {
            drop(connection);
            shared.idle_closes.fetch_add(1, Ordering::SeqCst);
            tracing::debug!(%peer, "stand-in dropped an idle connection");
        }
    }
}

fn acceptor_with_alpn(tls: &rustls::ServerConfig, protocols: &[&[u8]]) -> TlsAcceptor {
    let mut config = tls.clone();
    config.alpn_protocols = protocols.iter().map(|protocol| protocol.to_vec()).collect();
    TlsAcceptor::from(Arc::new(config))
}

/// Requests in progress on one connection, and when the connection last became idle.
struct Activity {
    in_progress: AtomicUsize,
    idle_since: Mutex<Instant>,
}

impl Activity {
    fn new() -> Self {
        Self {
            in_progress: AtomicUsize::new(0),
            idle_since: Mutex::new(Instant::now()),
        }
    }

    /// Returns how long the connection has been idle, or `None` while a request is in progress.
    fn idle_for(&self) -> Option<Duration> {
        let idle_since = self
            .idle_since
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        (self.in_progress.load(Ordering::SeqCst) == 0).then(|| idle_since.elapsed())
    }
}

/// Counts one request as in progress until dropped.
struct InProgress(Arc<Activity>);

impl InProgress {
    fn start(activity: &Arc<Activity>) -> Self {
        activity.in_progress.fetch_add(1, Ordering::SeqCst);
        Self(activity.clone())
    }
}

impl Drop for InProgress {
    fn drop(&mut self) {
        // The lock orders this update with `idle_for`, so a reader never pairs a count of 0
        // with the start time of an older idle period.
        let mut idle_since = self
            .0
            .idle_since
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if self.0.in_progress.fetch_sub(1, Ordering::SeqCst) == 1 {
            *idle_since = Instant::now();
        }
    }
}

/// Completes once the idle-close fault is on and the connection has been idle for its duration.
/// Never completes while the fault is off.
async fn idle_timeout(activity: &Activity, mut setting: watch::Receiver<Option<Duration>>) {
    loop {
        let idle = *setting.borrow_and_update();
        let wait = match (idle, activity.idle_for()) {
            (None, _) => None,
            (Some(idle), Some(elapsed)) if elapsed >= idle => return,
            (Some(idle), Some(elapsed)) => Some(idle - elapsed),
            // A request is in progress: look again after one idle period.
            (Some(idle), None) => Some(idle),
        };
        let changed = async {
            if setting.changed().await.is_err() {
                // The switch is gone with the stand-in, so it can never turn on.
                std::future::pending::<()>().await;
            }
        };
        match wait {
            None => changed.await,
            Some(wait) => tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = changed => {}
            },
        }
    }
}
