//! Minting and caching short-lived Cartesia access tokens.
//!
//! One token is kept per user and grant set. It is minted with the gateway's
//! API key through `POST /access-token`, asking only for the grant the route
//! needs, and reused until `refresh_margin` before it expires. Concurrent
//! misses for one key wait on a single mint (moka's entry API coalesces
//! them). A failed mint is not cached, so the next request tries again.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{AUTHORIZATION, CONTENT_TYPE, HeaderValue};
use http::{Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Either, Full, Limited};
use serde::Deserialize;

use crate::config::TokenConfig;
use crate::routes::{Grant, Grants};
use crate::secret::{self, Secret};
use crate::upstream::{CARTESIA_VERSION, Upstream};

/// Largest `/access-token` response body read, in bytes.
const MAX_MINT_RESPONSE: usize = 64 * 1024;

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
    #[error("the upstream answered {0}")]
    Status(StatusCode),
    #[error("the request failed: {0}")]
    Transport(#[source] hyper_util::client::legacy::Error),
    #[error("reading the response failed")]
    Body,
    #[error("no answer within the upstream response timeout")]
    Timeout,
    #[error("the response is not {{\"token\": \"...\"}} with a usable token")]
    InvalidResponse,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct TokenKey {
    user_id: Arc<str>,
    grants: Grants,
}

/// Per-user token cache in front of the minting endpoint.
pub struct TokenCache {
    cache: moka::future::Cache<TokenKey, Arc<MintedToken>>,
    minter: Minter,
    reuse_for: Duration,
}

impl TokenCache {
    pub fn new(config: &TokenConfig, upstream: Arc<Upstream>, api_key: &Secret) -> Self {
        let cache = moka::future::Cache::builder()
            .max_capacity(config.cache_capacity)
            .expire_after(UntilReuseEnds)
            .build();
        TokenCache {
            cache,
            minter: Minter::new(upstream, api_key, config.lifetime),
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
        let key = TokenKey {
            user_id: Arc::clone(user_id),
            grants: Grants::of(grant),
        };
        let entry = self
            .cache
            .entry(key)
            .or_try_insert_with(self.minter.mint(grant, self.reuse_for))
            .await?;
        let source = if entry.is_fresh() {
            TokenSource::Minted
        } else {
            TokenSource::Cache
        };
        Ok((entry.into_value(), source))
    }

    /// Drops the cached token of `user_id` for `grant`.
    pub async fn evict(&self, user_id: &Arc<str>, grant: Grant) {
        let key = TokenKey {
            user_id: Arc::clone(user_id),
            grants: Grants::of(grant),
        };
        self.cache.invalidate(&key).await;
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

/// Calls `POST /access-token` with the gateway's API key.
struct Minter {
    upstream: Arc<Upstream>,
    uri: Uri,
    authorization: HeaderValue,
    lifetime: Duration,
}

#[derive(Deserialize)]
struct MintResponse {
    token: String,
}

impl Minter {
    fn new(upstream: Arc<Upstream>, api_key: &Secret, lifetime: Duration) -> Self {
        let uri = upstream.uri("/access-token", None);
        let mut authorization = HeaderValue::from_str(&format!("Bearer {}", api_key.expose()))
            .unwrap_or_else(|_| HeaderValue::from_static(""));
        authorization.set_sensitive(true);
        Minter {
            upstream,
            uri,
            authorization,
            lifetime,
        }
    }

    async fn mint(&self, grant: Grant, reuse_for: Duration) -> Result<Arc<MintedToken>, MintError> {
        let started = Instant::now();
        let timeout = self.upstream.response_timeout;
        let token = tokio::time::timeout(timeout, self.request(grant))
            .await
            .map_err(|_| MintError::Timeout)??;
        let mut authorization = HeaderValue::from_str(&format!("Bearer {token}"))
            .map_err(|_| MintError::InvalidResponse)?;
        authorization.set_sensitive(true);
        let fingerprint = secret::fingerprint(&token);
        tracing::debug!(grant = grant.as_str(), token.fingerprint = %fingerprint, "minted a Cartesia access token");
        Ok(Arc::new(MintedToken {
            authorization,
            fingerprint,
            reuse_until: started + reuse_for,
        }))
    }

    async fn request(&self, grant: Grant) -> Result<String, MintError> {
        let body = serde_json::json!({
            "grants": { grant.as_str(): true },
            "expires_in": self.lifetime.as_secs(),
        });
        let request = Request::builder()
            .method(Method::POST)
            .uri(self.uri.clone())
            .header(AUTHORIZATION, self.authorization.clone())
            .header(CARTESIA_VERSION, self.upstream.cartesia_version.clone())
            .header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
            .body(Either::Left(Full::new(Bytes::from(body.to_string()))))
            .map_err(|_| MintError::InvalidResponse)?;
        let response = self
            .upstream
            .http
            .request(request)
            .await
            .map_err(MintError::Transport)?;
        let status = response.status();
        if status != StatusCode::OK {
            return Err(MintError::Status(status));
        }
        let bytes = Limited::new(response.into_body(), MAX_MINT_RESPONSE)
            .collect()
            .await
            .map_err(|_| MintError::Body)?
            .to_bytes();
        let parsed: MintResponse =
            serde_json::from_slice(&bytes).map_err(|_| MintError::InvalidResponse)?;
        if parsed.token.is_empty() || !parsed.token.bytes().all(|byte| byte.is_ascii_graphic()) {
            return Err(MintError::InvalidResponse);
        }
        Ok(parsed.token)
    }
}
