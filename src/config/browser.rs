//! The browser-facing and network sections of the configuration file:
//! `[hsts]`, `[cors]`, `[redirect]`, `[websocket]`, `[admin]` and
//! `server.trusted_proxies`, with their validation.

use std::net::SocketAddr;
use std::time::Duration;

use serde::Deserialize;

use super::*;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHsts {
    max_age_secs: Option<u64>,
    include_subdomains: Option<bool>,
    preload: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCors {
    allowed_origins: Option<Vec<String>>,
    max_age_secs: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRedirect {
    listen: Option<String>,
    public_host: Option<String>,
    public_port: Option<u16>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAdmin {
    enabled: Option<bool>,
    listen: Option<String>,
    tls: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawWebSocket {
    max_lifetime_secs: Option<u64>,
    idle_timeout_secs: Option<u64>,
}

/// Parses `10.0.0.0/8`, `2001:db8::/32` or a single address.
pub(super) fn parse_network(text: &str) -> Result<ipnet::IpNet, ConfigError> {
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
    pub(super) fn validate(self) -> Result<HstsConfig, ConfigError> {
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
    pub(super) fn validate(self) -> Result<CorsConfig, ConfigError> {
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
    pub(super) fn validate(self, https_port: u16) -> Result<Option<RedirectConfig>, ConfigError> {
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
    pub(super) fn validate(self) -> WebSocketConfig {
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

impl RawAdmin {
    pub(super) fn validate(
        self,
        https_listen: SocketAddr,
    ) -> Result<Option<AdminConfig>, ConfigError> {
        let listen = self.listen.as_deref().unwrap_or(DEFAULT_ADMIN_LISTEN);
        let listen: SocketAddr = listen.parse().map_err(|_| {
            ConfigError::invalid(
                "admin.listen",
                format!("{listen:?} is not an IP address and port, such as \"127.0.0.1:9090\""),
            )
        })?;
        if self.enabled == Some(false) {
            return Ok(None);
        }
        if listeners_collide(listen, https_listen) {
            return Err(ConfigError::invalid(
                "admin.listen",
                format!(
                    "{listen} takes the port of server.listen ({https_listen}); give the admin listener its own port"
                ),
            ));
        }
        Ok(Some(AdminConfig {
            listen,
            tls: self.tls.unwrap_or(false),
        }))
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
