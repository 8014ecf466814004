//! The accept loop: TLS, HTTP/1.1 and HTTP/2 connections, and shutdown with a bounded drain.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::time::timeout;
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
    let mut config = (*tls).clone();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let acceptor = TlsAcceptor::from(Arc::new(config));
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
    let service = service_fn(move |request| {
        router::handle(shared.clone(), request_lifecycle.clone(), request)
    });
    let builder = auto::Builder::new(TokioExecutor::new());
    let connection = builder.serve_connection_with_upgrades(TokioIo::new(tls_stream), service);
    tokio::pin!(connection);
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
    }
}
