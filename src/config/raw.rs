//! The configuration file as serde sees it, and its validation.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use http::Uri;
use http::header::HeaderValue;
use jsonwebtoken::Algorithm;
use serde::Deserialize;

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
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHsts {
    max_age_secs: Option<u64>,
    include_subdomains: Option<bool>,
    preload: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCors {
    allowed_origins: Option<Vec<String>>,
    max_age_secs: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRedirect {
    listen: Option<String>,
    public_host: Option<String>,
    public_port: Option<u16>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWebSocket {
    max_lifetime_secs: Option<u64>,
    idle_timeout_secs: Option<u64>,
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
    trusted_proxies: Option<Vec<String>>,
    max_connections: Option<usize>,
    max_header_bytes: Option<usize>,
    max_request_body_bytes: Option<u64>,
    http2_keep_alive_interval_secs: Option<u64>,
    http2_keep_alive_timeout_secs: Option<u64>,
    cert_reload_interval_secs: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSession {
    algorithms: Option<Vec<String>>,
    secret_env: Option<String>,
    secret_file: Option<PathBuf>,
    public_key_file: Option<PathBuf>,
    issuer: Option<String>,
    audience: Option<String>,
    leeway_secs: Option<u64>,
    cookie_name: Option<String>,
    user_claim: Option<String>,
    grants_claim: Option<String>,
    default_grants: Option<Vec<String>>,
    cache_capacity: Option<u64>,
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
        Ok(Config {
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
            cert_reload_interval: match self.cert_reload_interval_secs {
                None => Some(DEFAULT_CERT_RELOAD_INTERVAL),
                Some(0) => None,
                Some(secs) => Some(Duration::from_secs(secs)),
            },
        })
    }
}

/// Parses `10.0.0.0/8`, `2001:db8::/32` or a single address.
fn parse_network(text: &str) -> Result<ipnet::IpNet, ConfigError> {
    text.parse::<ipnet::IpNet>()
        .or_else(|_| text.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
        .map_err(|_| {
            ConfigError::invalid(
                "server.trusted_proxies",
                format!("{text:?} is not an IP address or CIDR network such as \"10.0.0.0/8\""),
            )
        })
}

impl RawHsts {
    fn validate(self) -> Result<HstsConfig, ConfigError> {
        let config = HstsConfig {
            max_age: self
                .max_age_secs
                .map_or(DEFAULT_HSTS_MAX_AGE, Duration::from_secs),
            include_subdomains: self.include_subdomains.unwrap_or(false),
            preload: self.preload.unwrap_or(false),
        };
        // Browsers' preload lists accept a site only with includeSubDomains
        // and a max-age of at least one year.
        if config.preload && (!config.include_subdomains || config.max_age < DEFAULT_HSTS_MAX_AGE) {
            return Err(ConfigError::invalid(
                "hsts.preload",
                "preload needs hsts.include_subdomains = true and hsts.max_age_secs of at least 31536000",
            ));
        }
        Ok(config)
    }
}

impl RawCors {
    fn validate(self) -> Result<CorsConfig, ConfigError> {
        let allowed_origins = self
            .allowed_origins
            .unwrap_or_default()
            .iter()
            .map(|origin| {
                crate::cors::normalize_origin(origin).map_err(|error| {
                    ConfigError::invalid("cors.allowed_origins", format!("{origin:?}: {error}"))
                })
            })
            .collect::<Result<_, _>>()?;
        Ok(CorsConfig {
            allowed_origins,
            max_age: self
                .max_age_secs
                .map_or(DEFAULT_CORS_MAX_AGE, Duration::from_secs),
        })
    }
}

impl RawRedirect {
    fn validate(self, https_port: u16) -> Result<Option<RedirectConfig>, ConfigError> {
        let Some(listen) = self.listen else {
            if self.public_host.is_some() || self.public_port.is_some() {
                return Err(ConfigError::invalid(
                    "redirect.listen",
                    "set redirect.listen to turn on the redirect listener, or remove the other redirect keys",
                ));
            }
            return Ok(None);
        };
        let listen: SocketAddr = listen.parse().map_err(|_| {
            ConfigError::invalid(
                "redirect.listen",
                format!("{listen:?} is not an IP address and port, such as \"0.0.0.0:8080\""),
            )
        })?;
        let public_host = self.public_host.ok_or_else(|| {
            ConfigError::invalid(
                "redirect.public_host",
                "set the host name that redirects point to, such as \"voice.example.com\"",
            )
        })?;
        if !is_host_name(&public_host) {
            return Err(ConfigError::invalid(
                "redirect.public_host",
                format!(
                    "{public_host:?} is not a host name; give the name alone, without scheme, port or path"
                ),
            ));
        }
        let public_port = match self.public_port {
            Some(0) => {
                return Err(ConfigError::invalid(
                    "redirect.public_port",
                    "must be from 1 to 65535",
                ));
            }
            Some(port) => port,
            None => https_port,
        };
        Ok(Some(RedirectConfig {
            listen,
            public_host: public_host.to_ascii_lowercase(),
            public_port,
        }))
    }
}

impl RawWebSocket {
    fn validate(self) -> WebSocketConfig {
        WebSocketConfig {
            max_lifetime: self
                .max_lifetime_secs
                .filter(|secs| *secs > 0)
                .map(Duration::from_secs),
            idle_timeout: self
                .idle_timeout_secs
                .filter(|secs| *secs > 0)
                .map_or(DEFAULT_WEBSOCKET_IDLE_TIMEOUT, Duration::from_secs),
        }
    }
}

/// A DNS name or an IP address (IPv6 in brackets).
fn is_host_name(text: &str) -> bool {
    if let Some(inner) = text
        .strip_prefix('[')
        .and_then(|rest| rest.strip_suffix(']'))
    {
        return inner.parse::<std::net::Ipv6Addr>().is_ok();
    }
    !text.is_empty()
        && text.len() <= 253
        && text.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|byte| byte.is_ascii_alphanumeric() || byte == b'-')
        })
}

impl RawSession {
    fn validate(self) -> Result<SessionConfig, ConfigError> {
        let names = self
            .algorithms
            .clone()
            .unwrap_or_else(|| vec!["HS256".to_owned()]);
        if names.is_empty() {
            return Err(ConfigError::invalid(
                "session.algorithms",
                "list at least one algorithm, such as [\"HS256\"]",
            ));
        }
        let algorithms = names
            .iter()
            .map(|name| parse_algorithm(name))
            .collect::<Result<Vec<_>, _>>()?;
        let key = self.key_source(&algorithms)?;

        let cookie_name = self
            .cookie_name
            .unwrap_or_else(|| DEFAULT_COOKIE_NAME.to_owned());
        if cookie_name.is_empty() || !cookie_name.bytes().all(is_cookie_name_byte) {
            return Err(ConfigError::invalid(
                "session.cookie_name",
                "use a cookie name of letters, digits and `-_.!#$%&'*+^`|~`",
            ));
        }
        let user_claim = non_empty("session.user_claim", self.user_claim, DEFAULT_USER_CLAIM)?;
        let grants_claim = non_empty(
            "session.grants_claim",
            self.grants_claim,
            DEFAULT_GRANTS_CLAIM,
        )?;
        let default_grants = grants_from_names(
            "session.default_grants",
            &self.default_grants.unwrap_or_default(),
        )?;
        for (key, value) in [
            ("session.issuer", &self.issuer),
            ("session.audience", &self.audience),
        ] {
            if value.as_deref() == Some("") {
                return Err(ConfigError::invalid(
                    key,
                    "remove the key or give a non-empty value",
                ));
            }
        }
        Ok(SessionConfig {
            algorithms,
            key,
            issuer: self.issuer,
            audience: self.audience,
            leeway: self.leeway_secs.map_or(DEFAULT_LEEWAY, Duration::from_secs),
            cookie_name,
            user_claim,
            grants_claim,
            default_grants,
            cache_capacity: match self.cache_capacity {
                None => DEFAULT_SESSION_CACHE_CAPACITY,
                Some(0) => {
                    return Err(ConfigError::invalid(
                        "session.cache_capacity",
                        "must be at least 1",
                    ));
                }
                Some(capacity) => capacity,
            },
        })
    }

    fn key_source(&self, algorithms: &[Algorithm]) -> Result<SessionKeySource, ConfigError> {
        let hmac = algorithms.iter().all(|algorithm| is_hmac(*algorithm));
        let asymmetric = algorithms.iter().all(|algorithm| !is_hmac(*algorithm));
        if !hmac && !asymmetric {
            return Err(ConfigError::invalid(
                "session.algorithms",
                "do not mix HMAC (HS*) with public-key algorithms; one key verifies all of them",
            ));
        }
        if let [first, rest @ ..] = algorithms
            && rest.iter().any(|other| !same_key_type(*first, *other))
        {
            return Err(ConfigError::invalid(
                "session.algorithms",
                "public-key algorithms must share one key type (RSA, EC P-256 or Ed25519)",
            ));
        }
        if hmac {
            if self.public_key_file.is_some() {
                return Err(ConfigError::invalid(
                    "session.public_key_file",
                    "HS* algorithms use a shared secret; set session.secret_env or session.secret_file instead",
                ));
            }
            return match (&self.secret_env, &self.secret_file) {
                (Some(_), Some(_)) => Err(ConfigError::invalid(
                    "session.secret_file",
                    "set either session.secret_env or session.secret_file, not both",
                )),
                (None, Some(file)) => Ok(SessionKeySource::SecretFile(file.clone())),
                (Some(name), None) if name.is_empty() => Err(ConfigError::invalid(
                    "session.secret_env",
                    "name the environment variable that holds the secret",
                )),
                (Some(name), None) => Ok(SessionKeySource::SecretEnv(name.clone())),
                (None, None) => Ok(SessionKeySource::SecretEnv(DEFAULT_SECRET_ENV.to_owned())),
            };
        }
        if self.secret_env.is_some() || self.secret_file.is_some() {
            let key = if self.secret_env.is_some() {
                "session.secret_env"
            } else {
                "session.secret_file"
            };
            return Err(ConfigError::invalid(
                key,
                "public-key algorithms need session.public_key_file, not a shared secret",
            ));
        }
        match &self.public_key_file {
            Some(file) => Ok(SessionKeySource::PublicKeyFile(file.clone())),
            None => Err(ConfigError::invalid(
                "session.public_key_file",
                "set the PEM public key file that verifies session JWTs",
            )),
        }
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

fn non_empty(key: &str, value: Option<String>, default: &str) -> Result<String, ConfigError> {
    match value {
        None => Ok(default.to_owned()),
        Some(value) if value.is_empty() => Err(ConfigError::invalid(key, "must not be empty")),
        Some(value) => Ok(value),
    }
}

fn parse_algorithm(name: &str) -> Result<Algorithm, ConfigError> {
    match name {
        "HS256" => Ok(Algorithm::HS256),
        "HS384" => Ok(Algorithm::HS384),
        "HS512" => Ok(Algorithm::HS512),
        "RS256" => Ok(Algorithm::RS256),
        "ES256" => Ok(Algorithm::ES256),
        "EdDSA" => Ok(Algorithm::EdDSA),
        other => Err(ConfigError::invalid(
            "session.algorithms",
            format!("{other:?} is not supported; use HS256, HS384, HS512, RS256, ES256 or EdDSA"),
        )),
    }
}

fn is_hmac(algorithm: Algorithm) -> bool {
    matches!(
        algorithm,
        Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512
    )
}

fn same_key_type(a: Algorithm, b: Algorithm) -> bool {
    std::mem::discriminant(&a) == std::mem::discriminant(&b) || (is_hmac(a) && is_hmac(b))
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

/// RFC 6265 cookie names are RFC 9110 tokens.
fn is_cookie_name_byte(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&byte)
}
