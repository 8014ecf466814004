//! The app's user session: finding the session JWT in a request, verifying
//! it, and reading the user id and grants from its claims.
//!
//! Verification follows RFC 8725: the accepted algorithms are pinned by
//! config (so `alg: none` and algorithm swaps fail), `exp` is required,
//! `nbf` is honoured, and `iss` and `aud` are required and checked when
//! configured. A verified session is cached by its exact JWT text until it
//! expires, so a client that sends the same JWT on every request pays for
//! one signature check. Failed checks are not cached.

pub mod credential;
mod verifier;

pub use credential::{CredentialSource, extract};
pub use verifier::{SessionVerifier, load_decoding_key};

use std::sync::Arc;

use crate::routes::Grants;

/// A verified user session.
#[derive(Debug, Clone)]
pub struct Session {
    pub user_id: Arc<str>,
    pub grants: Grants,
    /// The JWT's `exp` claim, in seconds since the Unix epoch.
    pub expires_at: u64,
}

/// Why a request's session was rejected. Every variant is a 401.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SessionError {
    #[error("no session credential was sent")]
    Missing,
    #[error("the request carries more than one different session credential")]
    Ambiguous,
    #[error("the session credential is not a well-formed bearer token or cookie")]
    Malformed,
    #[error("the session has expired")]
    Expired,
    #[error("the session JWT failed verification: {reason}")]
    Invalid { reason: &'static str },
}

impl SessionError {
    /// Stable error code sent to the client.
    pub fn code(&self) -> &'static str {
        match self {
            SessionError::Missing => "missing_session",
            SessionError::Ambiguous => "ambiguous_session",
            SessionError::Malformed | SessionError::Invalid { .. } => "invalid_session",
            SessionError::Expired => "session_expired",
        }
    }

    pub fn message(&self) -> &'static str {
        match self {
            SessionError::Missing => "Send the session JWT as a cookie or a Bearer token.",
            SessionError::Ambiguous => "The request carries conflicting session credentials.",
            SessionError::Malformed | SessionError::Invalid { .. } => "The session is not valid.",
            SessionError::Expired => "The session has expired.",
        }
    }

    /// A reason from a fixed set, for logs.
    pub fn reason(&self) -> &'static str {
        match self {
            SessionError::Missing => "missing",
            SessionError::Ambiguous => "ambiguous",
            SessionError::Malformed => "malformed",
            SessionError::Expired => "expired",
            SessionError::Invalid { reason } => reason,
        }
    }
}
