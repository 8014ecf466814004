//! Minting and caching short-lived Cartesia access tokens.
//!
//! One token is kept per user and grant set. It is minted with the gateway's
//! API key through `POST /access-token`, asking only for the grant the route
//! needs, and reused until `refresh_margin` before it expires. Concurrent
//! misses for one key wait on a single mint, retries included (moka's entry
//! API coalesces them). A failed mint is not cached, so the next request
//! tries again.
//!
//! A 4xx from `/access-token` fails the request at once. A 5xx, a timeout or
//! a connection error is retried `tokens.mint_retries` times with
//! exponential backoff and full jitter. While the last attempt has failed,
//! attempts across all users are limited to
//! `tokens.max_failing_mints_per_sec`; a request that finds no budget fails
//! without contacting Cartesia.

mod limits;
mod minter;

use std::sync::Arc;
use std::time::{Duration, Instant};

use http::StatusCode;
use http::header::HeaderValue;
use moka::ops::compute::Op;

use crate::config::TokenConfig;
use crate::health::Health;
use crate::metrics::SharedMetrics;
use crate::routes::{Grant, Grants};
use crate::secret::Secret;
use crate::upstream::Upstream;

use minter::Minter;

/// `Retry-After` seconds sent when minting is unavailable. The failing-mint
/// budget refills at least one attempt per second, because
/// `tokens.max_failing_mints_per_sec` is at least 1.
pub const MINT_RETRY_AFTER_SECS: u64 = 1;

/// A cached Cartesia access token.
pub struct MintedToken {
    /// `Bearer <token>`, ready to attach upstream; marked sensitive.
    pub authorization: HeaderValue,
    /// Short fingerprint of the token for logs.
    pub fingerprint: String,
    /// When the token stops being reused.
    pub reuse_until: Instant,
}

impl std::fmt::Debug for MintedToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MintedToken")
            .field("fingerprint", &self.fingerprint)
            .finish_non_exhaustive()
    }
}

/// Whether a token came from the cache or was minted for this request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenSource {
    Cache,
    Minted,
}

impl TokenSource {
    pub fn as_str(self) -> &'static str {
        match self {
            TokenSource::Cache => "cache",
            TokenSource::Minted => "minted",
        }
    }
}

/// Why `POST /access-token` did not produce a token.
#[derive(Debug, thiserror::Error)]
pub enum MintError {
    /// A 4xx: the request or the API key is wrong, so retrying cannot help.
    #[error("Cartesia rejected the token request with {0}")]
    Rejected(StatusCode),
    /// Any other status than 200 or a 4xx.
    #[error("Cartesia answered the token request with {0}")]
    Status(StatusCode),
    #[error("the request failed: {}", crate::error::chain(.0))]
    Transport(#[source] hyper_util::client::legacy::Error),
    #[error("reading the response failed")]
    Body,
    #[error("no answer within the upstream response timeout")]
    Timeout,
    #[error("the response is not {{\"token\": \"...\"}} with a usable token")]
    InvalidResponse,
    /// No attempt was made: minting is failing and the attempts allowed by
    /// `tokens.max_failing_mints_per_sec` are used up.
    #[error("mint attempts are limited while minting fails")]
    Throttled,
}

impl MintError {
    /// Returns the `result` label of a mint that failed this way.
    pub fn result_label(&self) -> &'static str {
        match self {
            MintError::Rejected(_) => "rejected",
            MintError::Status(_) => "server_error",
            MintError::Transport(_) | MintError::Body => "transport_error",
            MintError::Timeout => "timeout",
            MintError::InvalidResponse => "invalid_response",
            MintError::Throttled => "throttled",
        }
    }

    /// Returns whether a later attempt may succeed: true for a 5xx, a
    /// timeout, a transport failure, or no budget for an attempt.
    pub fn is_transient(&self) -> bool {
        match self {
            MintError::Status(status) => status.is_server_error(),
            MintError::Transport(_)
            | MintError::Body
            | MintError::Timeout
            | MintError::Throttled => true,
            MintError::Rejected(_) | MintError::InvalidResponse => false,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct TokenKey {
    user_id: Arc<str>,
    grants: Grants,
}

impl TokenKey {
    fn new(user_id: &Arc<str>, grant: Grant) -> Self {
        TokenKey {
            user_id: Arc::clone(user_id),
            grants: Grants::of(grant),
        }
    }
}

/// Per-user token cache in front of the minting endpoint.
pub struct TokenCache {
    cache: moka::future::Cache<TokenKey, Arc<MintedToken>>,
    minter: Minter,
    reuse_for: Duration,
}

impl TokenCache {
    /// Creates an empty cache whose mints report to `metrics` and `health`.
    pub fn new(
        config: &TokenConfig,
        upstream: Arc<Upstream>,
        api_key: &Secret,
        metrics: SharedMetrics,
        health: Arc<Health>,
    ) -> Self {
        let cache = moka::future::Cache::builder()
            .max_capacity(config.cache_capacity)
            .expire_after(UntilReuseEnds)
            .build();
        TokenCache {
            cache,
            minter: Minter::new(upstream, api_key, config, metrics, health),
            reuse_for: config.lifetime - config.refresh_margin,
        }
    }

    /// Returns a token for `user_id` that carries `grant`, minting one when
    /// none is cached or the cached one is past its reuse window.
    pub async fn get(
        &self,
        user_id: &Arc<str>,
        grant: Grant,
    ) -> Result<(Arc<MintedToken>, TokenSource), Arc<MintError>> {
        let entry = self
            .cache
            .entry(TokenKey::new(user_id, grant))
            .or_try_insert_with(self.minter.mint(grant, self.reuse_for))
            .await?;
        let source = if entry.is_fresh() {
            TokenSource::Minted
        } else {
            TokenSource::Cache
        };
        Ok((entry.into_value(), source))
    }

    /// Mints one token outside the cache and drops it, to find out whether
    /// minting works. The outcome reaches the metrics and readiness like
    /// that of any other mint.
    pub async fn recheck(&self) {
        match self.minter.mint(Grant::Tts, Duration::ZERO).await {
            Ok(_) => tracing::info!("minting works again"),
            Err(error) => tracing::warn!(%error, "minting still fails"),
        }
    }

    /// Drops `rejected`, the token of `user_id` for `grant`, from the cache.
    /// A token that another request has cached in its place stays.
    pub async fn evict(&self, user_id: &Arc<str>, grant: Grant, rejected: &Arc<MintedToken>) {
        self.cache
            .entry(TokenKey::new(user_id, grant))
            .and_compute_with(|cached| {
                let op = match cached {
                    Some(entry) if Arc::ptr_eq(entry.value(), rejected) => Op::Remove,
                    _ => Op::Nop,
                };
                std::future::ready(op)
            })
            .await;
    }
}

/// Expires each token at its own `reuse_until`.
struct UntilReuseEnds;

impl moka::Expiry<TokenKey, Arc<MintedToken>> for UntilReuseEnds {
    fn expire_after_create(
        &self,
        _key: &TokenKey,
        token: &Arc<MintedToken>,
        created_at: Instant,
    ) -> Option<Duration> {
        Some(token.reuse_until.saturating_duration_since(created_at))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transient_errors_are_5xx_timeouts_and_transport() {
        assert!(MintError::Status(StatusCode::SERVICE_UNAVAILABLE).is_transient());
        assert!(MintError::Timeout.is_transient());
        assert!(MintError::Body.is_transient());
        assert!(MintError::Throttled.is_transient());
        assert!(!MintError::Rejected(StatusCode::UNAUTHORIZED).is_transient());
        assert!(!MintError::Status(StatusCode::MOVED_PERMANENTLY).is_transient());
        assert!(!MintError::InvalidResponse.is_transient());
    }

    #[test]
    fn result_labels_are_listed_for_the_metric() {
        let errors = [
            MintError::Rejected(StatusCode::UNAUTHORIZED),
            MintError::Status(StatusCode::BAD_GATEWAY),
            MintError::Body,
            MintError::Timeout,
            MintError::InvalidResponse,
            MintError::Throttled,
        ];
        for error in errors {
            let label = error.result_label();
            assert!(crate::metrics::MINT_RESULTS.contains(&label), "{label}");
        }
    }
}
