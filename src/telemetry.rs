//! Logging setup: `tracing` with a filter from `RUST_LOG` or the config.
//!
//! Nothing in the gateway logs a header map, a request, a URI with its query
//! or a token; users appear by id and tokens by fingerprint.

use tracing_subscriber::EnvFilter;

use crate::config::LogConfig;

/// Installs the global subscriber. `RUST_LOG`, when set, overrides
/// `log.level`. Returns an error if a subscriber is installed already.
pub fn init(config: &LogConfig) -> Result<(), String> {
    let filter = match std::env::var("RUST_LOG") {
        Ok(directive) if !directive.is_empty() => EnvFilter::try_new(directive),
        _ => EnvFilter::try_new(&config.level),
    }
    .map_err(|error| format!("invalid log level in log.level or RUST_LOG: {error}"))?;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(true)
        .try_init()
        .map_err(|error| error.to_string())
}
