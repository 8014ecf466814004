//! Fault injection switches that tests flip while the stand-in runs.
//!
//! Each switch is read once per request, when the request reaches the point where it applies, so
//! changing a switch affects later requests and leaves responses already streaming alone.

use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::{Semaphore, watch};

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
    /// Status for the next `next_mint_failures` mints.
    next_mint_status: AtomicU16,
    next_mint_failures: AtomicU64,
    /// Milliseconds to wait before responding to a mint, or [`OFF`].
    mint_delay_ms: AtomicU64,
    /// Access tokens to reject with 401, each with the number of requests left to reject.
    rejected_tokens: Mutex<Vec<(String, u64)>>,
    respond_status: AtomicU16,
    /// Retry-After seconds for `respond_status`, or [`OFF`].
    respond_retry_after: AtomicU64,
    refuse_upgrade_status: AtomicU16,
    /// Number of chunks after which TTS streams break, or [`OFF`].
    break_after_chunks: AtomicU64,
    stream_gate: Mutex<Option<Arc<Semaphore>>>,
    /// Idle time after which connections are dropped; connection tasks watch it.
    idle_close: watch::Sender<Option<Duration>>,
    http1_only: AtomicBool,
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
            next_mint_status: AtomicU16::new(NO_STATUS),
            next_mint_failures: AtomicU64::new(0),
            mint_delay_ms: AtomicU64::new(OFF),
            rejected_tokens: Mutex::new(Vec::new()),
            respond_status: AtomicU16::new(NO_STATUS),
            respond_retry_after: AtomicU64::new(OFF),
            refuse_upgrade_status: AtomicU16::new(NO_STATUS),
            break_after_chunks: AtomicU64::new(OFF),
            stream_gate: Mutex::new(None),
            idle_close: watch::Sender::new(None),
            http1_only: AtomicBool::new(false),
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

    /// Makes the next `count` `POST /access-token` requests respond with `status` like
    /// [`Faults::fail_mints_with`]; later ones mint again. [`Faults::fail_mints_with`] wins while it
    /// is on. A count of 0 switches this off.
    pub fn fail_next_mints(&self, status: u16, count: u64) {
        self.next_mint_status.store(status, Ordering::SeqCst);
        self.next_mint_failures.store(count, Ordering::SeqCst);
    }

    /// Waits `delay` before responding to each `POST /access-token` request, whatever the
    /// response. `None` responds at once.
    pub fn delay_mints(&self, delay: Option<Duration>) {
        let value = delay.map_or(OFF, |delay| {
            u64::try_from(delay.as_millis()).unwrap_or(OFF - 1)
        });
        self.mint_delay_ms.store(value, Ordering::SeqCst);
    }

    /// Makes the next `count` TTS and STT requests that present the access token `token` get 401
    /// `invalid_credentials`, as if Cartesia had revoked it. Other credentials are unaffected. A
    /// count of 0 removes the token from the list.
    pub fn reject_token(&self, token: &str, count: u64) {
        let mut rejected = self
            .rejected_tokens
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        rejected.retain(|(listed, _)| listed != token);
        if count > 0 {
            rejected.push((token.to_owned(), count));
        }
    }

    /// Drops every connection, open ones included, once it has had no request in progress for
    /// `idle`: the TCP connection closes without `Connection: close`, HTTP/2 `GOAWAY` or TLS
    /// `close_notify`, the way an upstream drops idle keep-alive connections. A connection is
    /// idle from the moment its last response body has been handed to hyper. `None` keeps
    /// connections open.
    pub fn close_idle_connections_after(&self, idle: Option<Duration>) {
        self.idle_close.send_replace(idle);
    }

    /// Makes connections accepted from now on offer only `http/1.1` in ALPN, so a client that
    /// prefers HTTP/2 uses HTTP/1.1. `false` offers `h2` again.
    pub fn offer_http1_only(&self, http1_only: bool) {
        self.http1_only.store(http1_only, Ordering::SeqCst);
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

    /// Returns the status for this mint if one of the next-mint failures is left, and uses it up.
    pub(crate) fn take_next_mint_failure(&self) -> Option<u16> {
        let used_one = self
            .next_mint_failures
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |left| {
                left.checked_sub(1)
            })
            .is_ok();
        if !used_one {
            return None;
        }
        status_from(self.next_mint_status.load(Ordering::SeqCst))
    }

    pub(crate) fn mint_delay(&self) -> Option<Duration> {
        let value = self.mint_delay_ms.load(Ordering::SeqCst);
        (value != OFF).then(|| Duration::from_millis(value))
    }

    /// Returns whether `credential` is a rejected token with requests left to reject, and uses
    /// one of them up.
    pub(crate) fn take_token_rejection(&self, credential: &str) -> bool {
        let mut rejected = self
            .rejected_tokens
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let Some(index) = rejected.iter().position(|(listed, _)| listed == credential) else {
            return false;
        };
        rejected[index].1 -= 1;
        if rejected[index].1 == 0 {
            rejected.swap_remove(index);
        }
        true
    }

    pub(crate) fn idle_close(&self) -> watch::Receiver<Option<Duration>> {
        self.idle_close.subscribe()
    }

    pub(crate) fn http1_only(&self) -> bool {
        self.http1_only.load(Ordering::SeqCst)
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
        assert_eq!(faults.take_next_mint_failure(), None);
        assert_eq!(faults.mint_delay(), None);
        assert!(!faults.take_token_rejection("token"));
        assert_eq!(*faults.idle_close().borrow(), None);
        assert!(!faults.http1_only());
    }

    #[test]
    fn counted_faults_run_out() {
        let faults = Faults::default();
        faults.fail_next_mints(503, 2);
        faults.reject_token("token-a", 1);
        assert_eq!(faults.take_next_mint_failure(), Some(503));
        assert_eq!(faults.take_next_mint_failure(), Some(503));
        assert_eq!(faults.take_next_mint_failure(), None, "two failures only");
        assert!(!faults.take_token_rejection("token-b"), "other tokens pass");
        assert!(faults.take_token_rejection("token-a"));
        assert!(
            !faults.take_token_rejection("token-a"),
            "one rejection only"
        );
    }

    #[test]
    fn switches_turn_on_and_off() {
        let faults = Faults::default();
        faults.fail_mints_with(Some(503));
        faults.respond_with_status(Some((429, Some(7))));
        faults.refuse_upgrades_with(Some(400));
        faults.break_stream_after(Some(2));
        faults.set_stream_gate(Some(Arc::new(Semaphore::new(0))));
        faults.delay_mints(Some(Duration::from_millis(1500)));
        faults.close_idle_connections_after(Some(Duration::from_millis(50)));
        faults.offer_http1_only(true);

        assert_eq!(faults.mint_status(), Some(503));
        let expected = StatusFault {
            status: 429,
            retry_after_secs: Some(7),
        };
        assert_eq!(faults.respond_status(), Some(expected));
        assert_eq!(faults.refuse_upgrade_status(), Some(400));
        assert_eq!(faults.break_after_chunks(), Some(2));
        assert!(faults.stream_gate().is_some());
        assert_eq!(faults.mint_delay(), Some(Duration::from_millis(1500)));
        assert_eq!(
            *faults.idle_close().borrow(),
            Some(Duration::from_millis(50))
        );
        assert!(faults.http1_only());

        faults.fail_mints_with(None);
        faults.respond_with_status(None);
        faults.break_stream_after(None);
        faults.set_stream_gate(None);
        faults.delay_mints(None);
        faults.close_idle_connections_after(None);
        faults.offer_http1_only(false);
        assert_eq!(faults.mint_status(), None);
        assert_eq!(faults.respond_status(), None);
        assert_eq!(faults.break_after_chunks(), None);
        assert!(faults.stream_gate().is_none());
        assert_eq!(faults.mint_delay(), None);
        assert_eq!(*faults.idle_close().borrow(), None);
        assert!(!faults.http1_only());
    }
}
