//! The configuration file as serde parses it, and its validation.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use http::Uri;
use http::header::HeaderValue;
use serde::Deserialize;

use super::browser::{RawAdmin, RawCors, RawHsts, RawRedirect, RawWebSocket, parse_network};
use super::session::RawSession;
use super::*;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    #[serde(default)]
    server: RawServer,
    #[serde(default)]
    session: RawSession,
    #[serde(default)]
    upstream: RawUpstream,
    #[serde(default)]
    tokens: RawTokens,
    #[serde(default)]
    log: RawLog,
    #[serde(default)]
    hsts: RawHsts,
    #[serde(default)]
    cors: RawCors,
    #[serde(default)]
    redirect: RawRedirect,
    #[serde(default)]
    websocket: RawWebSocket,
    #[serde(default)]
    admin: RawAdmin,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawServer {
    listen: Option<String>,
    cert_file: Option<PathBuf>,
    key_file: Option<PathBuf>,
    tls_handshake_timeout_secs: Option<u64>,
    header_read_timeout_secs: Option<u64>,
    shutdown_timeout_secs: Option<u64>,
    shutdown_delay_secs: Option<u64>,
    trusted_proxies: Option<Vec<String>>,
    max_connections: Option<usize>,
    max_header_bytes: Option<usize>,
    max_request_body_bytes: Option<u64>,
    http2_keep_alive_interval_secs: Option<u64>,
    http2_keep_alive_timeout_secs: Option<u64>,
    http2_idle_timeout_secs: Option<u64>,
    cert_reload_interval_secs: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUpstream {
    base_url: Option<String>,
    api_key_file: Option<PathBuf>,
    ca_file: Option<PathBuf>,
    cartesia_version: Option<String>,
    connect_timeout_secs: Option<u64>,
    response_timeout_secs: Option<u64>,
    pool_idle_timeout_secs: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTokens {
    lifetime_secs: Option<u64>,
    refresh_margin_secs: Option<u64>,
    cache_capacity: Option<u64>,
    mint_retries: Option<u32>,
    mint_retry_delay_ms: Option<u64>,
    max_failing_mints_per_sec: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLog {
    level: Option<String>,
    format: Option<String>,
}

impl RawConfig {
    pub(super) fn validate(self) -> Result<Config, ConfigError> {
        let server = self.server.validate()?;
        let redirect = self.redirect.validate(server.listen.port())?;
        if let Some(redirect) = &redirect
            && listeners_collide(redirect.listen, server.listen)
        {
            return Err(ConfigError::invalid(
                "redirect.listen",
                format!(
                    "{} takes the port of server.listen ({}); the redirect listener needs its own port, such as 80 or 8080",
                    redirect.listen, server.listen
                ),
            ));
        }
        let admin = self.admin.validate(server.listen)?;
        if let (Some(admin), Some(redirect)) = (&admin, &redirect)
            && listeners_collide(admin.listen, redirect.listen)
        {
            return Err(ConfigError::invalid(
                "admin.listen",
                format!(
                    "{} takes the port of redirect.listen ({}); give the admin listener its own port",
                    admin.listen, redirect.listen
                ),
            ));
        }
        Ok(Config {
            admin,
            hsts: self.hsts.validate()?,
            cors: self.cors.validate()?,
            redirect,
            websocket: RawWebSocket::validate(self.websocket),
            server,
            session: self.session.validate()?,
            upstream: self.upstream.validate()?,
            tokens: self.tokens.validate()?,
            log: LogConfig {
                level: self.log.level.unwrap_or_else(|| "info".to_owned()),
                format: match self.log.format.as_deref() {
                    None | Some("auto") => LogFormat::Auto,
                    Some("json") => LogFormat::Json,
                    Some("text") => LogFormat::Text,
                    Some(other) => {
                        return Err(ConfigError::invalid(
                            "log.format",
                            format!(
                                "{other:?} is not a log format; use \"auto\", \"json\" or \"text\""
                            ),
                        ));
                    }
                },
            },
        })
    }
}

impl RawServer {
    fn validate(self) -> Result<ServerConfig, ConfigError> {
        let listen = self.listen.as_deref().unwrap_or(DEFAULT_LISTEN);
        let listen: SocketAddr = listen.parse().map_err(|_| {
            ConfigError::invalid(
                "server.listen",
                format!("{listen:?} is not an IP address and port, such as \"0.0.0.0:8443\""),
            )
        })?;
        Ok(ServerConfig {
            listen,
            cert_file: self
                .cert_file
                .unwrap_or_else(|| PathBuf::from(DEFAULT_CERT_FILE)),
            key_file: self
                .key_file
                .unwrap_or_else(|| PathBuf::from(DEFAULT_KEY_FILE)),
            tls_handshake_timeout: positive_secs(
                "server.tls_handshake_timeout_secs",
                self.tls_handshake_timeout_secs,
                DEFAULT_TLS_HANDSHAKE_TIMEOUT,
            )?,
            header_read_timeout: positive_secs(
                "server.header_read_timeout_secs",
                self.header_read_timeout_secs,
                DEFAULT_HEADER_READ_TIMEOUT,
            )?,
            shutdown_timeout: self
                .shutdown_timeout_secs
                .map_or(DEFAULT_SHUTDOWN_TIMEOUT, Duration::from_secs),
            shutdown_delay: match self.shutdown_delay_secs {
                Some(secs) if secs > MAX_SHUTDOWN_DELAY_SECS => {
                    return Err(ConfigError::invalid(
                        "server.shutdown_delay_secs",
                        format!("must be at most {MAX_SHUTDOWN_DELAY_SECS}"),
                    ));
                }
                secs => Duration::from_secs(secs.unwrap_or(0)),
            },
            trusted_proxies: self
                .trusted_proxies
                .unwrap_or_default()
                .iter()
                .map(|text| parse_network(text))
                .collect::<Result<_, _>>()?,
            max_connections: match self.max_connections {
                None => DEFAULT_MAX_CONNECTIONS,
                Some(0) => {
                    return Err(ConfigError::invalid(
                        "server.max_connections",
                        "must be at least 1",
                    ));
                }
                Some(limit) => limit,
            },
            max_header_bytes: match self.max_header_bytes {
                None => DEFAULT_MAX_HEADER_BYTES,
                Some(bytes) if bytes < MIN_MAX_HEADER_BYTES => {
                    return Err(ConfigError::invalid(
                        "server.max_header_bytes",
                        format!("must be at least {MIN_MAX_HEADER_BYTES}"),
                    ));
                }
                Some(bytes) => bytes,
            },
            max_request_body_bytes: match self.max_request_body_bytes {
                None => DEFAULT_MAX_REQUEST_BODY_BYTES,
                Some(0) => {
                    return Err(ConfigError::invalid(
                        "server.max_request_body_bytes",
                        "must be at least 1",
                    ));
                }
                Some(bytes) => bytes,
            },
            http2_keep_alive_interval: positive_secs(
                "server.http2_keep_alive_interval_secs",
                self.http2_keep_alive_interval_secs,
                DEFAULT_HTTP2_KEEP_ALIVE_INTERVAL,
            )?,
            http2_keep_alive_timeout: positive_secs(
                "server.http2_keep_alive_timeout_secs",
                self.http2_keep_alive_timeout_secs,
                DEFAULT_HTTP2_KEEP_ALIVE_TIMEOUT,
            )?,
            http2_idle_timeout: positive_secs(
                "server.http2_idle_timeout_secs",
                self.http2_idle_timeout_secs,
                DEFAULT_HTTP2_IDLE_TIMEOUT,
            )?,
            cert_reload_interval: match self.cert_reload_interval_secs {
                None => Some(DEFAULT_CERT_RELOAD_INTERVAL),
                Some(0) => None,
                Some(secs) if secs > MAX_CERT_RELOAD_INTERVAL_SECS => {
                    return Err(ConfigError::invalid(
                        "server.cert_reload_interval_secs",
                        format!(
                            "must be at most {MAX_CERT_RELOAD_INTERVAL_SECS} (one day), or 0 for SIGHUP only"
                        ),
                    ));
                }
                Some(secs) => Some(Duration::from_secs(secs)),
            },
        })
    }
}

impl RawUpstream {
    fn validate(self) -> Result<UpstreamConfig, ConfigError> {
        let text = self.base_url.as_deref().unwrap_or(DEFAULT_UPSTREAM);
        let base_url = parse_base_url(text)?;
        let version = self
            .cartesia_version
            .as_deref()
            .unwrap_or(DEFAULT_CARTESIA_VERSION);
        if !is_version_date(version) {
            return Err(ConfigError::invalid(
                "upstream.cartesia_version",
                format!("{version:?} is not a date in the form YYYY-MM-DD"),
            ));
        }
        let cartesia_version = HeaderValue::from_str(version).map_err(|_| {
            ConfigError::invalid("upstream.cartesia_version", "use a YYYY-MM-DD date")
        })?;
        Ok(UpstreamConfig {
            base_url,
            api_key_file: self.api_key_file,
            ca_file: self.ca_file,
            cartesia_version,
            connect_timeout: positive_secs(
                "upstream.connect_timeout_secs",
                self.connect_timeout_secs,
                DEFAULT_CONNECT_TIMEOUT,
            )?,
            response_timeout: positive_secs(
                "upstream.response_timeout_secs",
                self.response_timeout_secs,
                DEFAULT_RESPONSE_TIMEOUT,
            )?,
            pool_idle_timeout: positive_secs(
                "upstream.pool_idle_timeout_secs",
                self.pool_idle_timeout_secs,
                DEFAULT_POOL_IDLE_TIMEOUT,
            )?,
        })
    }
}

impl RawTokens {
    fn validate(self) -> Result<TokenConfig, ConfigError> {
        let lifetime = positive_secs(
            "tokens.lifetime_secs",
            self.lifetime_secs,
            DEFAULT_TOKEN_LIFETIME,
        )?;
        if lifetime > MAX_TOKEN_LIFETIME {
            return Err(ConfigError::invalid(
                "tokens.lifetime_secs",
                format!(
                    "{} is above Cartesia's maximum of {} seconds",
                    lifetime.as_secs(),
                    MAX_TOKEN_LIFETIME.as_secs()
                ),
            ));
        }
        let refresh_margin = self
            .refresh_margin_secs
            .map_or(DEFAULT_TOKEN_REFRESH_MARGIN, Duration::from_secs);
        if refresh_margin >= lifetime {
            return Err(ConfigError::invalid(
                "tokens.refresh_margin_secs",
                "must be less than tokens.lifetime_secs, or no token would ever be reused",
            ));
        }
        let cache_capacity = self.cache_capacity.unwrap_or(DEFAULT_TOKEN_CACHE_CAPACITY);
        if cache_capacity == 0 {
            return Err(ConfigError::invalid(
                "tokens.cache_capacity",
                "must be at least 1",
            ));
        }
        let max_failing_mints_per_sec = self
            .max_failing_mints_per_sec
            .unwrap_or(DEFAULT_MAX_FAILING_MINTS_PER_SEC);
        if max_failing_mints_per_sec == 0 {
            return Err(ConfigError::invalid(
                "tokens.max_failing_mints_per_sec",
                "must be at least 1, or no mint could ever succeed again",
            ));
        }
        Ok(TokenConfig {
            lifetime,
            refresh_margin,
            cache_capacity,
            mint_retries: self.mint_retries.unwrap_or(DEFAULT_MINT_RETRIES),
            mint_retry_delay: self
                .mint_retry_delay_ms
                .map_or(DEFAULT_MINT_RETRY_DELAY, Duration::from_millis),
            max_failing_mints_per_sec,
        })
    }
}

fn positive_secs(
    key: &str,
    value: Option<u64>,
    default: Duration,
) -> Result<Duration, ConfigError> {
    match value {
        None => Ok(default),
        Some(0) => Err(ConfigError::invalid(key, "must be at least 1 second")),
        Some(secs) => Ok(Duration::from_secs(secs)),
    }
}

fn parse_base_url(text: &str) -> Result<Uri, ConfigError> {
    const KEY: &str = "upstream.base_url";
    let uri: Uri = text
        .parse()
        .map_err(|_| ConfigError::invalid(KEY, "is not a URL; use https://host[:port]"))?;
    if uri.scheme_str() != Some("https") {
        return Err(ConfigError::invalid(
            KEY,
            "must start with https://; the gateway talks to Cartesia only over TLS",
        ));
    }
    if uri.authority().is_none() {
        return Err(ConfigError::invalid(
            KEY,
            "must name a host, such as https://api.cartesia.ai",
        ));
    }
    if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
        return Err(ConfigError::invalid(
            KEY,
            "must not have a path or query; give only scheme, host and port",
        ));
    }
    if uri
        .authority()
        .is_some_and(|authority| authority.as_str().contains('@'))
    {
        return Err(ConfigError::invalid(
            KEY,
            "must not contain user information",
        ));
    }
    Ok(uri)
}

fn is_version_date(value: &str) -> bool {
    let bytes = value.as_bytes();
    bytes.len() == 10
        && bytes[4] == b'-'
        && bytes[7] == b'-'
        && bytes
            .iter()
            .enumerate()
            .all(|(index, byte)| index == 4 || index == 7 || byte.is_ascii_digit())
}
