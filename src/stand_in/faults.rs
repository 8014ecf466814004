//! Fault injection switches that tests flip while the stand-in runs.
//!
//! Each switch is read once per request, when the request reaches the point where it applies, so
//! changing a switch affects later requests and leaves responses already streaming alone.

use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::Semaphore;

/// Sentinel meaning "switch off" in the atomics below.
const OFF: u64 = u64::MAX;
const NO_STATUS: u16 = 0;

/// Fault injection for tests. All methods take `&self` and may be called from any thread.
///
/// A status code that is not a valid HTTP status (outside 100..=999) is sent as 500, except 0,
/// which switches the fault off like `None`.
#[derive(Debug)]
pub struct Faults {
    mint_status: AtomicU16,
    respond_status: AtomicU16,
    /// Retry-After seconds for `respond_status`, or [`OFF`].
    respond_retry_after: AtomicU64,
    refuse_upgrade_status: AtomicU16,
    /// Number of chunks after which TTS streams break, or [`OFF`].
    break_after_chunks: AtomicU64,
    stream_gate: Mutex<Option<Arc<Semaphore>>>,
}

/// A status override for the non-mint routes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct StatusFault {
    pub(crate) status: u16,
    pub(crate) retry_after_secs: Option<u64>,
}

impl Default for Faults {
    fn default() -> Self {
        Self {
            mint_status: AtomicU16::new(NO_STATUS),
            respond_status: AtomicU16::new(NO_STATUS),
            respond_retry_after: AtomicU64::new(OFF),
            refuse_upgrade_status: AtomicU16::new(NO_STATUS),
            break_after_chunks: AtomicU64::new(OFF),
            stream_gate: Mutex::new(None),
        }
    }
}

impl Faults {
    /// Makes `POST /access-token` respond with `status`, a Cartesia-shaped JSON error and
    /// `x-should-retry: false` instead of minting, after the path and method checks. `None`
    /// restores minting.
    pub fn fail_mints_with(&self, status: Option<u16>) {
        self.mint_status
            .store(status.unwrap_or(NO_STATUS), Ordering::SeqCst);
    }

    /// Makes every non-mint route respond with `status`, a Cartesia-shaped JSON error and
    /// `x-should-retry: false`, after the credential and version checks. The second value, when
    /// set, is sent as `Retry-After` in seconds. On WebSocket routes this is the response to the
    /// handshake. `None` switches it off.
    pub fn respond_with_status(&self, fault: Option<(u16, Option<u64>)>) {
        let (status, retry_after) = match fault {
            Some((status, retry_after)) => (status, retry_after.unwrap_or(OFF)),
            None => (NO_STATUS, OFF),
        };
        // The pair is written in two stores. A request racing with the change may see the new
        // status with the old Retry-After, which is harmless for tests that set faults before
        // sending.
        self.respond_retry_after
            .store(retry_after, Ordering::SeqCst);
        self.respond_status.store(status, Ordering::SeqCst);
    }

    /// Makes WebSocket handshakes that passed every other check get `status` with a Cartesia-shaped
    /// JSON error instead of 101. `None` restores upgrades.
    pub fn refuse_upgrades_with(&self, status: Option<u16>) {
        self.refuse_upgrade_status
            .store(status.unwrap_or(NO_STATUS), Ordering::SeqCst);
    }

    /// Holds back `/tts/bytes` and `/tts/sse` responses: the first chunk is sent at once, then one
    /// permit of `gate` is taken (and not returned) before each further chunk and before the end of
    /// the response. `None` lets streams run freely.
    pub fn set_stream_gate(&self, gate: Option<Arc<Semaphore>>) {
        *self
            .stream_gate
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = gate;
    }

    /// Makes `/tts/bytes` and `/tts/sse` responses fail after `chunks` audio chunks: the body ends
    /// with an error, so the connection is closed (HTTP/1.1) or the stream reset (HTTP/2) without a
    /// clean end. `None` lets streams finish.
    pub fn break_stream_after(&self, chunks: Option<usize>) {
        let value = chunks.map_or(OFF, |chunks| chunks as u64);
        self.break_after_chunks.store(value, Ordering::SeqCst);
    }

    pub(crate) fn mint_status(&self) -> Option<u16> {
        status_from(self.mint_status.load(Ordering::SeqCst))
    }

    pub(crate) fn respond_status(&self) -> Option<StatusFault> {
        let status = status_from(self.respond_status.load(Ordering::SeqCst))?;
        let retry_after = self.respond_retry_after.load(Ordering::SeqCst);
        Some(StatusFault {
            status,
            retry_after_secs: (retry_after != OFF).then_some(retry_after),
        })
    }

    pub(crate) fn refuse_upgrade_status(&self) -> Option<u16> {
        status_from(self.refuse_upgrade_status.load(Ordering::SeqCst))
    }

    pub(crate) fn stream_gate(&self) -> Option<Arc<Semaphore>> {
        self.stream_gate
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    pub(crate) fn break_after_chunks(&self) -> Option<u64> {
        let value = self.break_after_chunks.load(Ordering::SeqCst);
        (value != OFF).then_some(value)
    }
}

fn status_from(raw: u16) -> Option<u16> {
    (raw != NO_STATUS).then_some(raw)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn switches_start_off() {
        let faults = Faults::default();
        assert_eq!(faults.mint_status(), None);
        assert_eq!(faults.respond_status(), None);
        assert_eq!(faults.refuse_upgrade_status(), None);
        assert_eq!(faults.break_after_chunks(), None);
        assert!(faults.stream_gate().is_none());
    }

    #[test]
    fn switches_turn_on_and_off() {
        let faults = Faults::default();
        faults.fail_mints_with(Some(503));
        faults.respond_with_status(Some((429, Some(7))));
        faults.refuse_upgrades_with(Some(400));
        faults.break_stream_after(Some(2));
        faults.set_stream_gate(Some(Arc::new(Semaphore::new(0))));

        assert_eq!(faults.mint_status(), Some(503));
        let expected = StatusFault {
            status: 429,
            retry_after_secs: Some(7),
        };
        assert_eq!(faults.respond_status(), Some(expected));
        assert_eq!(faults.refuse_upgrade_status(), Some(400));
        assert_eq!(faults.break_after_chunks(), Some(2));
        assert!(faults.stream_gate().is_some());

        faults.fail_mints_with(None);
        faults.respond_with_status(None);
        faults.break_stream_after(None);
        faults.set_stream_gate(None);
        assert_eq!(faults.mint_status(), None);
        assert_eq!(faults.respond_status(), None);
        assert_eq!(faults.break_after_chunks(), None);
        assert!(faults.stream_gate().is_none());
    }
}
