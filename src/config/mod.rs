//! Gateway configuration: a TOML file, overridden key by key from the
//! environment, validated into typed settings.
//!
//! Parsing happens in two layers. [`raw`] mirrors the file with serde and
//! rejects unknown keys; [`Config::from_toml_str`] then checks every value
//! and turns it into durations, addresses and enums, naming the key and the
//! fix when one is wrong. Secrets are never written in the file itself: the
//! file names an environment variable or a file that holds them, and they
//! are read when the gateway starts.
//!
//! Environment overrides use the rule `CARTESIA_GATEWAY__<SECTION>__<KEY>`,
//! upper case, for example `CARTESIA_GATEWAY__SERVER__LISTEN=0.0.0.0:8443`.
//! A value is read as TOML when it parses as a number, boolean or array, and
//! as a plain string otherwise.

mod browser;
mod env;
mod raw;
mod session;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use http::Uri;
use http::header::HeaderValue;
use jsonwebtoken::Algorithm;

use crate::routes::{Grant, Grants};

pub use env::ENV_PREFIX;

/// Config file read when `--config` is not given.
pub const DEFAULT_CONFIG_FILE: &str = "config.toml";
/// Default address of the HTTPS listener.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8443";
/// Default certificate chain file (PEM).
pub const DEFAULT_CERT_FILE: &str = "certs/dev-cert.pem";
/// Default private key file (PEM).
pub const DEFAULT_KEY_FILE: &str = "certs/dev-key.pem";
/// Default time a client has to finish the TLS handshake.
pub const DEFAULT_TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Default time a client has to send a complete HTTP/1 request head.
pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Default time that shutdown waits for open requests and WebSockets.
pub const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(25);
/// Default maximum number of open client connections.
pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;
/// Default maximum size of a request head (HTTP/1.1) or header list (HTTP/2).
pub const DEFAULT_MAX_HEADER_BYTES: usize = 64 * 1024;
/// Smallest request head size hyper accepts as a buffer limit.
pub const MIN_MAX_HEADER_BYTES: usize = 8 * 1024;
/// Default maximum request body of the HTTP routes: Cartesia's own limit
/// for STT uploads, 2 GB.
pub const DEFAULT_MAX_REQUEST_BODY_BYTES: u64 = 2_000_000_000;
/// Default time an HTTP/2 connection may stay without open requests.
pub const DEFAULT_HTTP2_IDLE_TIMEOUT: Duration = Duration::from_secs(120);
/// Default interval of HTTP/2 keep-alive pings to clients.
pub const DEFAULT_HTTP2_KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(30);
/// Default time to wait for a ping acknowledgement before closing.
pub const DEFAULT_HTTP2_KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(20);
/// Maximum interval between certificate file checks, in seconds.
pub const MAX_CERT_RELOAD_INTERVAL_SECS: u64 = 86_400;
/// Default address of the admin listener (metrics and health probes).
pub const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:9090";
/// Longest `server.shutdown_delay_secs`, in seconds.
pub const MAX_SHUTDOWN_DELAY_SECS: u64 = 300;
/// Default interval between checks of the certificate files for changes.
pub const DEFAULT_CERT_RELOAD_INTERVAL: Duration = Duration::from_secs(30);
/// Default time a WebSocket may go without a message in either direction;
/// longer than Cartesia's own five minutes so Cartesia closes first.
pub const DEFAULT_WEBSOCKET_IDLE_TIMEOUT: Duration = Duration::from_secs(360);
/// Default number of retries of a mint that failed transiently.
pub const DEFAULT_MINT_RETRIES: u32 = 2;
/// Default delay before the first mint retry; later retries double it.
pub const DEFAULT_MINT_RETRY_DELAY: Duration = Duration::from_millis(200);
/// Default maximum mint attempts per second while minting is failing.
pub const DEFAULT_MAX_FAILING_MINTS_PER_SEC: u32 = 5;
/// Default cookie that carries the app's session JWT.
pub const DEFAULT_COOKIE_NAME: &str = "session";
/// Default claim that contains the user id.
pub const DEFAULT_USER_CLAIM: &str = "sub";
/// Default claim that contains the user's grants.
pub const DEFAULT_GRANTS_CLAIM: &str = "grants";
/// Default clock skew allowed when checking `exp` and `nbf`.
pub const DEFAULT_LEEWAY: Duration = Duration::from_secs(30);
/// Default number of verified session JWTs kept to skip repeated signature checks.
pub const DEFAULT_SESSION_CACHE_CAPACITY: u64 = 10_000;
/// Default environment variable that holds an HMAC session secret.
pub const DEFAULT_SECRET_ENV: &str = "GATEWAY_SESSION_SECRET";
/// Minimum HMAC secret length: RFC 7518 section 3.2 asks for a key at least
/// as long as the hash output, 32 bytes for HS256.
pub const MIN_HMAC_SECRET_LEN: usize = 32;
/// Default Cartesia API base URL.
pub const DEFAULT_UPSTREAM: &str = "https://api.cartesia.ai";
/// Environment variable that holds the Cartesia API key when no file is configured.
pub const API_KEY_ENV: &str = "CARTESIA_API_KEY";
/// `Cartesia-Version` sent when the client sends none (the 4.x SDKs' value).
pub const DEFAULT_CARTESIA_VERSION: &str = "2026-08-14";
/// Default `Strict-Transport-Security` max-age: one year.
pub const DEFAULT_HSTS_MAX_AGE: Duration = Duration::from_secs(31_536_000);
/// Default time browsers may cache a CORS preflight response.
pub const DEFAULT_CORS_MAX_AGE: Duration = Duration::from_secs(600);
/// Default upstream TCP and TLS connect timeout.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Default time to wait for the upstream's response head once the request
/// body has been sent.
pub const DEFAULT_RESPONSE_TIMEOUT: Duration = Duration::from_secs(30);
/// Default time an idle pooled upstream connection is kept.
pub const DEFAULT_POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(50);
/// Default lifetime requested for minted Cartesia access tokens.
pub const DEFAULT_TOKEN_LIFETIME: Duration = Duration::from_secs(300);
/// Maximum lifetime Cartesia accepts for an access token.
pub const MAX_TOKEN_LIFETIME: Duration = Duration::from_secs(3600);
/// Default time before expiry at which a cached token stops being used.
pub const DEFAULT_TOKEN_REFRESH_MARGIN: Duration = Duration::from_secs(60);
/// Default maximum number of cached tokens (one per user and grant set).
pub const DEFAULT_TOKEN_CACHE_CAPACITY: u64 = 100_000;

/// A configuration value that is missing or invalid, with the key it belongs to.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid config: {0}")]
    Parse(String),
    #[error("invalid value for `{key}`: {message}")]
    Invalid { key: String, message: String },
    /// A required setting that neither the file nor the environment gives.
    #[error("missing {0}")]
    Missing(String),
}

impl ConfigError {
    fn invalid(key: &str, message: impl Into<String>) -> Self {
        ConfigError::Invalid {
            key: key.to_owned(),
            message: message.into(),
        }
    }
}

/// Validated gateway settings.
#[derive(Clone, Debug)]
pub struct Config {
    pub server: ServerConfig,
    pub session: SessionConfig,
    pub upstream: UpstreamConfig,
    pub tokens: TokenConfig,
    pub log: LogConfig,
    pub hsts: HstsConfig,
    pub cors: CorsConfig,
    /// The plain-HTTP redirect listener; `None` when it is off.
    pub redirect: Option<RedirectConfig>,
    pub websocket: WebSocketConfig,
    /// The admin listener; `None` when it is off.
    pub admin: Option<AdminConfig>,
}

#[derive(Clone, Debug)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    pub tls_handshake_timeout: Duration,
    pub header_read_timeout: Duration,
    pub shutdown_timeout: Duration,
    /// Time between the shutdown signal and the end of accepting, during
    /// which readiness already reports the drain.
    pub shutdown_delay: Duration,
    /// Peers whose `X-Forwarded-For` and `Forwarded` headers are believed.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// Open client connections beyond this wait in the listen backlog.
    pub max_connections: usize,
    pub max_header_bytes: usize,
    pub max_request_body_bytes: u64,
    pub http2_keep_alive_interval: Duration,
    pub http2_keep_alive_timeout: Duration,
    /// Time an HTTP/2 connection may stay without open requests before the
    /// gateway closes it with GOAWAY.
    pub http2_idle_timeout: Duration,
    /// How often the certificate files are checked for changes; `None`
    /// reloads only on SIGHUP.
    pub cert_reload_interval: Option<Duration>,
}

/// `Strict-Transport-Security` settings (RFC 6797).
#[derive(Clone, Debug)]
pub struct HstsConfig {
    pub max_age: Duration,
    pub include_subdomains: bool,
    pub preload: bool,
}

impl HstsConfig {
    /// The header value, such as `max-age=31536000; includeSubDomains`.
    pub fn header_value(&self) -> HeaderValue {
        let mut value = format!("max-age={}", self.max_age.as_secs());
        if self.include_subdomains {
            value.push_str("; includeSubDomains");
        }
        if self.preload {
            value.push_str("; preload");
        }
        HeaderValue::from_str(&value).unwrap_or_else(|_| HeaderValue::from_static("max-age=0"))
    }
}

/// Browser cross-origin settings.
#[derive(Clone, Debug)]
pub struct CorsConfig {
    /// Serialized origins, such as `https://app.example.com`.
    pub allowed_origins: Vec<String>,
    pub max_age: Duration,
}

/// The plain-HTTP listener that only redirects to HTTPS.
#[derive(Clone, Debug)]
pub struct RedirectConfig {
    pub listen: SocketAddr,
    /// Host name in the `Location` of every redirect; the request's `Host`
    /// header is never used.
    pub public_host: String,
    pub public_port: u16,
}

/// The listener for `/metrics`, `/livez` and `/readyz`.
#[derive(Clone, Debug)]
pub struct AdminConfig {
    pub listen: SocketAddr,
    /// Serve HTTPS with the server certificate instead of plain HTTP.
    pub tls: bool,
}

#[derive(Clone, Debug)]
pub struct WebSocketConfig {
    /// Longest time a WebSocket stays open; `None` for no limit.
    pub max_lifetime: Option<Duration>,
    /// Time without a message in either direction after which the gateway
    /// closes a WebSocket.
    pub idle_timeout: Duration,
}

/// Where the key that verifies session JWTs comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SessionKeySource {
    /// An HMAC secret in this environment variable.
    SecretEnv(String),
    /// An HMAC secret in this file.
    SecretFile(PathBuf),
    /// A PEM public key (RSA, EC P-256 or Ed25519) in this file.
    PublicKeyFile(PathBuf),
}

#[derive(Clone, Debug)]
pub struct SessionConfig {
    pub algorithms: Vec<Algorithm>,
    pub key: SessionKeySource,
    pub issuer: Option<String>,
    pub audience: Option<String>,
    pub leeway: Duration,
    pub cookie_name: String,
    pub user_claim: String,
    pub grants_claim: String,
    pub default_grants: Grants,
    pub cache_capacity: u64,
}

#[derive(Clone, Debug)]
pub struct UpstreamConfig {
    /// Scheme and authority of the Cartesia API; the path is always `/`.
    pub base_url: Uri,
    pub api_key_file: Option<PathBuf>,
    pub ca_file: Option<PathBuf>,
    pub cartesia_version: HeaderValue,
    pub connect_timeout: Duration,
    pub response_timeout: Duration,
    pub pool_idle_timeout: Duration,
}

#[derive(Clone, Debug)]
pub struct TokenConfig {
    pub lifetime: Duration,
    pub refresh_margin: Duration,
    pub cache_capacity: u64,
    /// Retries of a mint that failed with a 5xx, a timeout or a connection error.
    pub mint_retries: u32,
    /// Delay before the first retry; each later one doubles it, with jitter.
    pub mint_retry_delay: Duration,
    /// Mint attempts allowed per second while minting is failing.
    pub max_failing_mints_per_sec: u32,
}

#[derive(Clone, Debug)]
pub struct LogConfig {
    /// A `tracing_subscriber::EnvFilter` directive; `RUST_LOG` wins when set.
    pub level: String,
    pub format: LogFormat,
}

/// How log lines are written to stderr.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable text on a terminal, JSON otherwise.
    Auto,
    /// One JSON object per line.
    Json,
    /// Human-readable text.
    Text,
}

impl Config {
    /// Reads and validates the file at `path`, applying overrides from the
    /// process environment.
    pub fn load(path: &std::path::Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Config::from_toml_str(&text, std::env::vars())
    }

    /// Parses and validates TOML text; `environment` supplies the override
    /// variables, so tests need not touch the process environment.
    pub fn from_toml_str(
        text: &str,
        environment: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let mut table: toml::Table =
            toml::from_str(text).map_err(|error| ConfigError::Parse(error.to_string()))?;
        let overrides = env::apply_overrides(&mut table, environment)?;
        let raw: raw::RawConfig = table
            .try_into()
            .map_err(|error: toml::de::Error| ConfigError::Parse(error.to_string()))
            .map_err(|error| env::name_variable(error, &overrides))?;
        raw.validate()
            .map_err(|error| env::name_variable(error, &overrides))
    }
}

/// Returns whether two listen addresses would take the same port: equal ports
/// (other than 0, which picks a free one) on equal addresses, or on any
/// address when one of them is unspecified (`0.0.0.0` or `::`).
pub(crate) fn listeners_collide(first: SocketAddr, second: SocketAddr) -> bool {
    first.port() == second.port()
        && first.port() != 0
        && (first.ip() == second.ip()
            || first.ip().is_unspecified()
            || second.ip().is_unspecified())
}

pub(crate) fn grants_from_names(key: &str, names: &[String]) -> Result<Grants, ConfigError> {
    names.iter().try_fold(Grants::NONE, |grants, name| {
        Grant::from_name(name)
            .map(|grant| grants.with(grant))
            .ok_or_else(|| {
                ConfigError::invalid(
                    key,
                    format!("unknown grant {name:?}; use \"tts\" or \"stt\""),
                )
            })
    })
}

#[cfg(test)]
mod tests;
