//! Liveness and readiness of a gateway.
//!
//! The gateway is ready while all of these hold:
//! - it is not shutting down: readiness turns false as soon as the
//!   shutdown signal arrives, before the listener closes;
//! - the certificate it serves is within its validity period;
//! - the Cartesia API key is present (the gateway does not start without
//!   one, so this is true once it runs);
//! - the last call to `POST /access-token` did not fail with a permanent
//!   error (a 4xx, such as a rejected API key, or a malformed response).
//!   Transient failures (5xx, timeouts) leave readiness alone, since the
//!   next mint may succeed and other replicas would fail the same way.
//!
//! A gateway that is not ready because of a permanent mint failure gets no
//! traffic, so nothing would mint again and it would stay unready. While
//! that lasts, a readiness check starts a background mint at most every
//! [`MINT_RECHECK_INTERVAL`]; its success makes the gateway ready again.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

use rustls_pki_types::CertificateDer;
use serde::Serialize;

/// Shortest time between two background mints while minting is failing
/// permanently.
pub const MINT_RECHECK_INTERVAL: Duration = Duration::from_secs(30);

/// Readiness state that requests and shutdown update.
#[derive(Default)]
pub struct Health {
    shutting_down: AtomicBool,
    /// Reason of the last permanent mint failure, or `None` after a success.
    mint_failure: Mutex<Option<String>>,
    /// When the last background mint started.
    last_recheck: Mutex<Option<Instant>>,
}

/// The outcome of one readiness check.
#[derive(Debug, Serialize)]
pub struct Readiness {
    pub ready: bool,
    pub checks: Checks,
}

/// Each readiness condition: `"ok"` or why it fails.
#[derive(Debug, Serialize)]
pub struct Checks {
    pub shutdown: String,
    pub certificate: String,
    pub api_key: String,
    pub minting: String,
}

const OK: &str = "ok";

impl Health {
    pub fn new() -> Self {
        Health::default()
    }

    /// Marks the gateway as shutting down; it stays unready from now on.
    pub fn begin_shutdown(&self) {
        self.shutting_down.store(true, Ordering::Release);
    }

    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::Acquire)
    }

    /// Records the result of a mint call: `Some(reason)` for a permanent
    /// failure, `None` for a success. Transient failures are not recorded.
    pub fn mint_result(&self, permanent_failure: Option<String>) {
        let mut failure = self
            .mint_failure
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        *failure = permanent_failure;
    }

    /// Returns whether a background mint should start now, to find out
    /// whether a permanent mint failure has cleared. The time of the last
    /// recheck, kept under a lock, limits this to once per
    /// [`MINT_RECHECK_INTERVAL`], and only while minting is failing.
    pub fn take_mint_recheck(&self, now: Instant) -> bool {
        if self.mint_failure().is_none() {
            return false;
        }
        let mut last = self
            .last_recheck
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let due = last.is_none_or(|last| now.duration_since(last) >= MINT_RECHECK_INTERVAL);
        if due {
            *last = Some(now);
        }
        due
    }

    fn mint_failure(&self) -> Option<String> {
        self.mint_failure
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// Checks every condition with `certificate` as the served leaf
    /// certificate and `now` as the time.
    pub fn readiness(
        &self,
        certificate: Option<&CertificateDer<'_>>,
        now: SystemTime,
    ) -> Readiness {
        let shutdown = if self.is_shutting_down() {
            "shutting down".to_owned()
        } else {
            OK.to_owned()
        };
        let certificate = certificate_check(certificate, now);
        let minting = match self.mint_failure() {
            Some(reason) => reason,
            None => OK.to_owned(),
        };
        let checks = Checks {
            shutdown,
            certificate,
            api_key: OK.to_owned(),
            minting,
        };
        let ready = [
            &checks.shutdown,
            &checks.certificate,
            &checks.api_key,
            &checks.minting,
        ]
        .iter()
        .all(|check| check.as_str() == OK);
        Readiness { ready, checks }
    }
}

fn certificate_check(certificate: Option<&CertificateDer<'_>>, now: SystemTime) -> String {
    let Some(certificate) = certificate else {
        return "no certificate loaded".to_owned();
    };
    match crate::cert_validity::validity(certificate.as_ref()) {
        Ok(validity) if validity.contains(now) => OK.to_owned(),
        Ok(validity) if now < validity.not_before => "the certificate is not valid yet".to_owned(),
        Ok(_) => "the certificate has expired".to_owned(),
        Err(error) => format!("cannot read the certificate's validity: {error}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shutdown_and_mint_failures_make_unready() {
        let health = Health::new();
        let now = SystemTime::now();
        let certificate = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()])
            .unwrap()
            .cert;
        let der = certificate.der();
        assert!(health.readiness(Some(der), now).ready);

        health.mint_result(Some("Cartesia rejected the API key (401)".to_owned()));
        let report = health.readiness(Some(der), now);
        assert!(!report.ready);
        assert_eq!(report.checks.minting, "Cartesia rejected the API key (401)");
        health.mint_result(None);
        assert!(health.readiness(Some(der), now).ready);

        health.begin_shutdown();
        let report = health.readiness(Some(der), now);
        assert!(!report.ready);
        assert_eq!(report.checks.shutdown, "shutting down");
    }

    #[test]
    fn missing_or_expired_certificate_makes_unready() {
        let health = Health::new();
        assert!(!health.readiness(None, SystemTime::now()).ready);
        let certificate = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()])
            .unwrap()
            .cert;
        // rcgen's default validity ends in 4096.
        let far_future = SystemTime::UNIX_EPOCH + Duration::from_secs(200 * 365 * 86_400 * 12);
        let report = health.readiness(Some(certificate.der()), far_future);
        assert!(!report.ready);
        assert_eq!(report.checks.certificate, "the certificate has expired");
    }

    #[test]
    fn recheck_limited_to_failures_and_interval() {
        let health = Health::new();
        let start = Instant::now();
        assert!(!health.take_mint_recheck(start));
        health.mint_result(Some("rejected".to_owned()));
        assert!(health.take_mint_recheck(start));
        assert!(!health.take_mint_recheck(start + Duration::from_secs(1)));
        assert!(health.take_mint_recheck(start + MINT_RECHECK_INTERVAL));
    }
}
