//! One shutdown mechanism for the whole gateway: a signal that tells every
//! connection and WebSocket to wind down, and a drain counter that tells the
//! server when they all have.

use std::time::Duration;

use tokio::sync::{mpsc, watch};

/// Sends the shutdown signal and waits for every holder of a [`Shutdown`]
/// handle to finish.
pub struct ShutdownController {
    signal: watch::Sender<bool>,
    drained: mpsc::Receiver<()>,
    guard: Option<mpsc::Sender<()>>,
}

/// A task's view of shutdown: it can wait for the signal, and while it holds
/// the handle the server keeps waiting for it to finish.
#[derive(Clone)]
pub struct Shutdown {
    signal: watch::Receiver<bool>,
    _guard: mpsc::Sender<()>,
}

impl ShutdownController {
    pub fn new() -> Self {
        let (signal, _) = watch::channel(false);
        let (guard, drained) = mpsc::channel(1);
        ShutdownController {
            signal,
            drained,
            guard: Some(guard),
        }
    }

    /// A handle for one task; `None` once shutdown has begun.
    pub fn handle(&self) -> Option<Shutdown> {
        let guard = self.guard.clone()?;
        Some(Shutdown {
            signal: self.signal.subscribe(),
            _guard: guard,
        })
    }

    /// Signals shutdown and waits up to `timeout` for every handle to be
    /// dropped. Returns whether everything finished in time.
    pub async fn shutdown(mut self, timeout: Duration) -> bool {
        self.guard = None;
        let _ = self.signal.send(true);
        tokio::time::timeout(timeout, self.drained.recv())
            .await
            .is_ok()
    }
}

impl Default for ShutdownController {
    fn default() -> Self {
        Self::new()
    }
}

impl Shutdown {
    /// Completes once shutdown has been signalled.
    pub async fn signalled(&mut self) {
        // An error means the controller is gone, which is shutdown as well.
        let _ = self.signal.wait_for(|stopping| *stopping).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn shutdown_waits_for_handles() {
        let controller = ShutdownController::new();
        let mut handle = controller.handle().unwrap();
        let task = tokio::spawn(async move {
            handle.signalled().await;
            tokio::time::sleep(Duration::from_secs(1)).await;
            drop(handle);
        });
        assert!(controller.shutdown(Duration::from_secs(5)).await);
        task.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_gives_up_after_timeout() {
        let controller = ShutdownController::new();
        let handle = controller.handle().unwrap();
        assert!(!controller.shutdown(Duration::from_secs(5)).await);
        drop(handle);
    }
}
