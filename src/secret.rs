//! Wrappers for secret strings: the Cartesia API key, session JWTs, minted
//! access tokens and signing secrets.
//!
//! `Debug` and `Display` print a fixed marker instead of the value, the types
//! are never `Serialize`, and equality is checked in constant time, so a secret
//! cannot reach a log line, an error body or a panic message by accident.

use std::fmt;

use subtle::ConstantTimeEq;

/// Text printed in place of a secret value.
pub const REDACTED: &str = "[redacted]";

/// A secret string such as an API key, a JWT or a signing secret.
#[derive(Clone)]
pub struct Secret(Box<str>);

impl Secret {
    pub fn new(value: impl Into<Box<str>>) -> Self {
        Self(value.into())
    }

    /// Exposes the value for the one place that needs it (a header, a
    /// signature check). Callers never log what this returns.
    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl PartialEq for Secret {
    fn eq(&self, other: &Self) -> bool {
        constant_time_eq(self.expose(), other.expose())
    }
}

impl Eq for Secret {}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

/// Compares two strings in time that depends only on their lengths.
pub fn constant_time_eq(a: &str, b: &str) -> bool {
    a.as_bytes().ct_eq(b.as_bytes()).into()
}

/// Returns a short, non-reversible fingerprint of a secret for logs: the
/// first 8 hex digits of its SHA-256 digest.
pub fn fingerprint(value: &str) -> String {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, value.as_bytes());
    digest.as_ref()[..4]
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_and_display_hide_value() {
        let secret = Secret::new("sk_car_very_secret");
        assert_eq!(format!("{secret:?}"), REDACTED);
        assert_eq!(format!("{secret}"), REDACTED);
    }

    #[test]
    fn equality_compares_values() {
        assert_eq!(Secret::new("abc"), Secret::new("abc"));
        assert_ne!(Secret::new("abc"), Secret::new("abd"));
        assert_ne!(Secret::new("abc"), Secret::new("abcd"));
    }

    #[test]
    fn fingerprint_is_short_and_stable() {
        let first = fingerprint("token-a");
        assert_eq!(first.len(), 8);
        assert_eq!(first, fingerprint("token-a"));
        assert_ne!(first, fingerprint("token-b"));
        assert!(!first.contains("token"));
    }
}
