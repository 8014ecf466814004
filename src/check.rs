//! The `check-config` command: validates the config file, the certificate
//! and key files, the session key and the Cartesia API key, as the gateway
//! would at startup, without listening or contacting Cartesia. It then
//! describes the settings the gateway would run with. Secrets are never
//! printed: they appear as where they come from and whether they are set.

use std::fmt::Write;
use std::path::Path;

use crate::config::{API_KEY_ENV, Config, LogFormat, SessionKeySource};
use crate::{Gateway, tls};

/// Checks the config at `path` with `environment` and `read_env` as the
/// process environment. Returns the description, or the first error in the
/// words the gateway would use at startup.
pub fn check_config(
    path: &Path,
    environment: impl IntoIterator<Item = (String, String)>,
    read_env: impl Fn(&str) -> Option<String>,
) -> Result<String, String> {
    let text = std::fs::read_to_string(path).map_err(|error| {
        let mut message = format!("cannot read config file {}: {error}", path.display());
        if path == Path::new(crate::config::DEFAULT_CONFIG_FILE) {
            message.push_str(
                "; run from the directory that contains config.toml or pass --config PATH",
            );
        }
        message
    })?;
    let config = Config::from_toml_str(&text, environment).map_err(|error| error.to_string())?;
    let rust_log = read_env("RUST_LOG").filter(|value| !value.is_empty());
    crate::telemetry::filter(&config.log, rust_log.as_deref())?;
    let certificate = tls::load_certified_key(&config.server.cert_file, &config.server.key_file)
        .map_err(|error| error.to_string())?;
    let fingerprint = certificate
        .cert
        .first()
        .map(tls::fingerprint)
        .unwrap_or_default();
    Gateway::new(config.clone(), read_env).map_err(|error| error.to_string())?;
    Ok(describe(&config, &fingerprint, rust_log.as_deref()))
}

/// Writes the effective settings, one per line: `key = value` for config
/// keys, and a description for secrets and listeners. `rust_log` is the
/// `RUST_LOG` value that replaces `log.level`.
fn describe(config: &Config, fingerprint: &str, rust_log: Option<&str>) -> String {
    let mut out = String::new();
    let server = &config.server;
    let _ = writeln!(out, "config is valid; the gateway would run with:");
    let _ = writeln!(out, "server.listen = {}", server.listen);
    let _ = writeln!(
        out,
        "server.cert_file = {} (SHA-256 {fingerprint})",
        server.cert_file.display()
    );
    let _ = writeln!(
        out,
        "server.key_file = {} (matches the certificate)",
        server.key_file.display()
    );
    let secs = |duration: std::time::Duration| duration.as_secs();
    let _ = writeln!(out, "server.max_connections = {}", server.max_connections);
    let _ = writeln!(out, "server.trusted_proxies = {:?}", server.trusted_proxies);
    let _ = writeln!(
        out,
        "server.tls_handshake_timeout_secs = {}",
        secs(server.tls_handshake_timeout)
    );
    let _ = writeln!(
        out,
        "server.header_read_timeout_secs = {}",
        secs(server.header_read_timeout)
    );
    let _ = writeln!(
        out,
        "server.shutdown_timeout_secs = {}",
        secs(server.shutdown_timeout)
    );
    let _ = writeln!(
        out,
        "server.shutdown_delay_secs = {}",
        secs(server.shutdown_delay)
    );
    let _ = writeln!(out, "server.max_header_bytes = {}", server.max_header_bytes);
    let _ = writeln!(
        out,
        "server.max_request_body_bytes = {}",
        server.max_request_body_bytes
    );
    let _ = writeln!(
        out,
        "server.http2_keep_alive_interval_secs = {}",
        secs(server.http2_keep_alive_interval)
    );
    let _ = writeln!(
        out,
        "server.http2_keep_alive_timeout_secs = {}",
        secs(server.http2_keep_alive_timeout)
    );
    let _ = writeln!(
        out,
        "server.http2_idle_timeout_secs = {}",
        secs(server.http2_idle_timeout)
    );
    let _ = writeln!(
        out,
        "server.cert_reload_interval_secs = {}",
        server.cert_reload_interval.map_or(0, secs)
    );

    let session = &config.session;
    let algorithms: Vec<String> = session
        .algorithms
        .iter()
        .map(|algorithm| format!("{algorithm:?}"))
        .collect();
    let _ = writeln!(out, "session.algorithms = {algorithms:?}");
    let key = match &session.key {
        SessionKeySource::SecretEnv(name) => {
            format!("HMAC secret from environment variable {name} (set)")
        }
        SessionKeySource::SecretFile(path) => format!("HMAC secret from file {}", path.display()),
        SessionKeySource::PublicKeyFile(path) => format!("public key from file {}", path.display()),
    };
    let _ = writeln!(out, "session key = {key}");
    let _ = writeln!(
        out,
        "session.issuer = {}",
        quoted_or_none(session.issuer.as_deref())
    );
    let _ = writeln!(
        out,
        "session.audience = {}",
        quoted_or_none(session.audience.as_deref())
    );
    let _ = writeln!(out, "session.leeway_secs = {}", secs(session.leeway));
    let _ = writeln!(out, "session.cookie_name = {:?}", session.cookie_name);
    let _ = writeln!(out, "session.user_claim = {:?}", session.user_claim);
    let _ = writeln!(out, "session.grants_claim = {:?}", session.grants_claim);
    let grants: Vec<&str> = session
        .default_grants
        .iter()
        .map(|grant| grant.as_str())
        .collect();
    let _ = writeln!(out, "session.default_grants = {grants:?}");
    let _ = writeln!(out, "session.cache_capacity = {}", session.cache_capacity);

    let upstream = &config.upstream;
    let _ = writeln!(out, "upstream.base_url = {}", upstream.base_url);
    let api_key = match &upstream.api_key_file {
        Some(path) => format!("from file {}", path.display()),
        None => format!("from environment variable {API_KEY_ENV} (set)"),
    };
    let _ = writeln!(out, "Cartesia API key = {api_key}");
    match &upstream.ca_file {
        Some(ca_file) => {
            let _ = writeln!(out, "upstream.ca_file = {}", ca_file.display());
        }
        None => {
            let _ = writeln!(out, "upstream.ca_file = none (public web roots only)");
        }
    }
    let _ = writeln!(
        out,
        "upstream.cartesia_version = {:?}",
        upstream.cartesia_version
    );
    let _ = writeln!(
        out,
        "upstream.connect_timeout_secs = {}",
        secs(upstream.connect_timeout)
    );
    let _ = writeln!(
        out,
        "upstream.response_timeout_secs = {}",
        secs(upstream.response_timeout)
    );
    let _ = writeln!(
        out,
        "upstream.pool_idle_timeout_secs = {}",
        secs(upstream.pool_idle_timeout)
    );
    let _ = writeln!(
        out,
        "tokens.lifetime_secs = {}",
        config.tokens.lifetime.as_secs()
    );
    let _ = writeln!(
        out,
        "tokens.refresh_margin_secs = {}",
        config.tokens.refresh_margin.as_secs()
    );
    let tokens = &config.tokens;
    let _ = writeln!(out, "tokens.cache_capacity = {}", tokens.cache_capacity);
    let _ = writeln!(out, "tokens.mint_retries = {}", tokens.mint_retries);
    let _ = writeln!(
        out,
        "tokens.mint_retry_delay_ms = {}",
        tokens.mint_retry_delay.as_millis()
    );
    let _ = writeln!(
        out,
        "tokens.max_failing_mints_per_sec = {}",
        tokens.max_failing_mints_per_sec
    );
    let _ = writeln!(
        out,
        "cors.allowed_origins = {:?}",
        config.cors.allowed_origins
    );
    let _ = writeln!(out, "cors.max_age_secs = {}", secs(config.cors.max_age));
    let websocket = &config.websocket;
    let _ = writeln!(
        out,
        "websocket.max_lifetime_secs = {}",
        websocket.max_lifetime.map_or(0, secs)
    );
    let _ = writeln!(
        out,
        "websocket.idle_timeout_secs = {}",
        secs(websocket.idle_timeout)
    );
    match rust_log {
        Some(filter) => {
            let _ = writeln!(out, "log.level = {filter:?} (from RUST_LOG)");
        }
        None => {
            let _ = writeln!(out, "log.level = {:?}", config.log.level);
        }
    }
    let format = match config.log.format {
        LogFormat::Auto => "\"auto\" (text on a terminal, JSON otherwise)",
        LogFormat::Json => "\"json\"",
        LogFormat::Text => "\"text\"",
    };
    let _ = writeln!(out, "log.format = {format}");
    let _ = writeln!(
        out,
        "Strict-Transport-Security = {:?}",
        config.hsts.header_value()
    );
    match &config.admin {
        Some(admin) => {
            let scheme = if admin.tls { "https" } else { "http" };
            let _ = writeln!(
                out,
                "admin = {scheme}://{} (/metrics, /livez, /readyz)",
                admin.listen
            );
        }
        None => {
            let _ = writeln!(out, "admin = off");
        }
    }
    match &config.redirect {
        Some(redirect) => {
            let _ = writeln!(
                out,
                "redirect = {} -> https://{}:{}",
                redirect.listen, redirect.public_host, redirect.public_port
            );
        }
        None => {
            let _ = writeln!(out, "redirect = off");
        }
    }
    out
}

/// Formats an optional string setting as `"value"` or `none`.
fn quoted_or_none(value: Option<&str>) -> String {
    value.map_or_else(|| "none".to_owned(), |value| format!("{value:?}"))
}

#[cfg(all(test, feature = "stand-in"))]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn write_config(dir: &Path, extra: &str) -> std::path::PathBuf {
        let certs = crate::devcert::generate(dir).unwrap();
        let path = dir.join("config.toml");
        let text = format!(
            "[server]\ncert_file = \"{}\"\nkey_file = \"{}\"\n{extra}",
            certs.cert_file.display(),
            certs.key_file.display()
        );
        std::fs::write(&path, text).unwrap();
        path
    }

    const SECRET: &str = "0123456789abcdef0123456789abcdef";
    const API_KEY: &str = "sk_car_check_config_test_key";

    fn read_env(name: &str) -> Option<String> {
        match name {
            "GATEWAY_SESSION_SECRET" => Some(SECRET.to_owned()),
            "CARTESIA_API_KEY" => Some(API_KEY.to_owned()),
            _ => None,
        }
    }

    #[test]
    fn valid_config_is_described_without_secrets() {
        let dir = tempfile::tempdir().unwrap();
        let path = write_config(dir.path(), "");
        let description = check_config(&path, Vec::new(), read_env).unwrap();
        assert!(
            description.contains("server.listen = 127.0.0.1:8443"),
            "{description}"
        );
        assert!(description.contains("SHA-256"), "{description}");
        assert!(
            description.contains("GATEWAY_SESSION_SECRET (set)"),
            "{description}"
        );
        assert!(
            !description.contains(SECRET),
            "the session secret is printed"
        );
        assert!(!description.contains(API_KEY), "the API key is printed");
    }

    #[test]
    fn each_broken_part_names_its_key() {
        let dir = tempfile::tempdir().unwrap();
        let cases = [
            ("[tokens]\nlifetime_secs = 7200\n", "tokens.lifetime_secs"),
            (
                "[upstream]\nbase_url = \"http://api.cartesia.ai\"\n",
                "upstream.base_url",
            ),
            ("[log]\nformat = \"xml\"\n", "log.format"),
            (
                "[session]\nsecret_env = \"MISSING_SECRET\"\n",
                "session.secret_env",
            ),
        ];
        for (extra, key) in cases {
            let path = write_config(dir.path(), extra);
            let error = check_config(&path, Vec::new(), read_env).unwrap_err();
            assert!(error.contains(key), "{extra:?} should name {key}: {error}");
        }
    }

    #[test]
    fn missing_api_key_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let path = write_config(dir.path(), "");
        let error = check_config(&path, Vec::new(), |name| {
            (name == "GATEWAY_SESSION_SECRET").then(|| SECRET.to_owned())
        })
        .unwrap_err();
        assert!(error.contains("CARTESIA_API_KEY"), "{error}");
    }

    #[test]
    fn missing_certificate_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.toml");
        std::fs::write(&path, "[server]\ncert_file = \"/nonexistent/cert.pem\"\n").unwrap();
        let error = check_config(&path, Vec::new(), read_env).unwrap_err();
        assert!(error.contains("/nonexistent/cert.pem"), "{error}");
    }
}
