//! `POST /access-token` with the gateway's API key: single attempts and the
//! retry loop around them.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{AUTHORIZATION, CONTENT_TYPE, HeaderValue};
use http::{Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Either, Full, Limited};
use rand::Rng;
use serde::Deserialize;

use super::limits::{FailingMints, LogInterval};
use super::{MintError, MintedToken};
use crate::config::TokenConfig;
use crate::health::Health;
use crate::metrics::SharedMetrics;
use crate::routes::Grant;
use crate::secret::{self, Secret};
use crate::upstream::{CARTESIA_VERSION, Upstream};

/// Largest `/access-token` response body read, in bytes.
const MAX_MINT_RESPONSE: usize = 64 * 1024;
/// Shortest time between two "rejected the API key" log lines.
const KEY_REJECTED_LOG_INTERVAL: Duration = Duration::from_secs(60);

/// Calls `POST /access-token` with the gateway's API key.
pub(super) struct Minter {
    upstream: Arc<Upstream>,
    uri: Uri,
    authorization: HeaderValue,
    lifetime: Duration,
    retries: u32,
    retry_delay: Duration,
    failing: FailingMints,
    key_rejected_log: LogInterval,
    metrics: SharedMetrics,
    health: Arc<Health>,
}

#[derive(Deserialize)]
struct MintResponse {
    token: String,
}

impl Minter {
    pub(super) fn new(
        upstream: Arc<Upstream>,
        api_key: &Secret,
        config: &TokenConfig,
        metrics: SharedMetrics,
        health: Arc<Health>,
    ) -> Self {
        let uri = upstream.uri("/access-token", None);
        let mut authorization = HeaderValue::from_str(&format!("Bearer {}", api_key.expose()))
            .unwrap_or_else(|_| HeaderValue::from_static(""));
        authorization.set_sensitive(true);
        Minter {
            upstream,
            uri,
            authorization,
            lifetime: config.lifetime,
            retries: config.mint_retries,
            retry_delay: config.mint_retry_delay,
            failing: FailingMints::new(config.max_failing_mints_per_sec),
            key_rejected_log: LogInterval::new(KEY_REJECTED_LOG_INTERVAL),
            metrics,
            health,
        }
    }

    /// Mints a token for `grant`, retrying transient failures. Each attempt,
    /// retries included, takes from the failing-mint budget.
    pub(super) async fn mint(
        &self,
        grant: Grant,
        reuse_for: Duration,
    ) -> Result<Arc<MintedToken>, MintError> {
        let mut retry = 0;
        let mut last_error = None;
        loop {
            if !self.failing.try_acquire() {
                tracing::debug!(
                    grant = grant.as_str(),
                    "no mint attempt: tokens.max_failing_mints_per_sec is used up"
                );
                self.metrics
                    .token_mint(MintError::Throttled.result_label(), None);
                return Err(last_error.unwrap_or(MintError::Throttled));
            }
            let started = Instant::now();
            let result = self.attempt(grant).await;
            self.failing.record(result.is_ok());
            self.report(&result, started.elapsed());
            let error = match result {
                Ok(mut token) => {
                    token.reuse_until = started + reuse_for;
                    return Ok(Arc::new(token));
                }
                Err(error) => error,
            };
            self.log_rejected_key(&error);
            if !error.is_transient() || retry >= self.retries {
                return Err(error);
            }
            retry += 1;
            let delay = backoff(self.retry_delay, retry);
            tracing::warn!(
                grant = grant.as_str(),
                retry,
                delay_ms = delay.as_millis() as u64,
                error = %error,
                "minting a Cartesia access token failed; retrying"
            );
            last_error = Some(error);
            tokio::time::sleep(delay).await;
        }
    }

    /// Counts an attempt and records in readiness whether minting works.
    fn report(&self, result: &Result<MintedToken, MintError>, duration: Duration) {
        match result {
            Ok(_) => {
                self.metrics.token_mint("success", Some(duration));
                self.health.mint_result(None);
            }
            Err(error) => {
                self.metrics
                    .token_mint(error.result_label(), Some(duration));
                if !error.is_transient() {
                    self.health
                        .mint_result(Some(format!("the last token mint failed: {error}")));
                }
            }
        }
    }

    /// Logs a 401 or 403 at error, at most once per interval.
    fn log_rejected_key(&self, error: &MintError) {
        let MintError::Rejected(status) = error else {
            return;
        };
        if *status != StatusCode::UNAUTHORIZED && *status != StatusCode::FORBIDDEN {
            return;
        }
        if let Some(suppressed) = self.key_rejected_log.allow() {
            tracing::error!(
                status = status.as_u16(),
                repeats_suppressed = suppressed,
                "Cartesia rejected the API key; check the key in CARTESIA_API_KEY or upstream.api_key_file"
            );
        }
    }

    /// Makes one request within the upstream response timeout. The token's
    /// `reuse_until` is left for the caller to set.
    async fn attempt(&self, grant: Grant) -> Result<MintedToken, MintError> {
        let timeout = self.upstream.response_timeout;
        let token = tokio::time::timeout(timeout, self.request(grant))
            .await
            .map_err(|_| MintError::Timeout)??;
        let mut authorization = HeaderValue::from_str(&format!("Bearer {token}"))
            .map_err(|_| MintError::InvalidResponse)?;
        authorization.set_sensitive(true);
        let fingerprint = secret::fingerprint(&token);
        tracing::debug!(grant = grant.as_str(), token.fingerprint = %fingerprint, "minted a Cartesia access token");
        Ok(MintedToken {
            authorization,
            fingerprint,
            reuse_until: Instant::now(),
        })
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
        if status.is_client_error() {
            return Err(MintError::Rejected(status));
        }
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

/// Returns the delay before retry number `retry` (from 1): a random time
/// up to `base * 2^(retry - 1)` ("full jitter").
fn backoff(base: Duration, retry: u32) -> Duration {
    let factor = 2u32.saturating_pow(retry.saturating_sub(1));
    let ceiling = base.saturating_mul(factor);
    let nanos = u64::try_from(ceiling.as_nanos()).unwrap_or(u64::MAX);
    Duration::from_nanos(rand::rng().random_range(0..=nanos))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_with_full_jitter() {
        let base = Duration::from_millis(100);
        for retry in 1..=4 {
            let ceiling = base * 2u32.pow(retry - 1);
            for _ in 0..100 {
                let delay = backoff(base, retry);
                assert!(delay <= ceiling, "retry {retry}: {delay:?} > {ceiling:?}");
            }
        }
        let spread: std::collections::HashSet<Duration> =
            (0..20).map(|_| backoff(base, 3)).collect();
        assert!(spread.len() > 1, "delays are randomized");
    }

    #[test]
    fn backoff_saturates_instead_of_overflowing() {
        let delay = backoff(Duration::from_secs(1), u32::MAX);
        let ceiling = Duration::from_secs(u64::from(u32::MAX));
        assert!(delay <= ceiling, "{delay:?} above the saturated ceiling");
        assert_eq!(backoff(Duration::ZERO, 3), Duration::ZERO);
    }
}
