#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use jsonwebtoken::Algorithm;

use super::*;
use crate::routes::{Grant, Grants};

/// A file that sets every key to a value other than its default.
const COMPLETE_FILE: &str = r#"
[server]
listen = "0.0.0.0:9443"
cert_file = "/etc/gateway/chain.pem"
key_file = "/etc/gateway/key.pem"
tls_handshake_timeout_secs = 7
header_read_timeout_secs = 8
shutdown_timeout_secs = 9

[session]
algorithms = ["ES256"]
public_key_file = "/etc/gateway/session-public.pem"
issuer = "https://auth.example.com"
audience = "voice-app"
leeway_secs = 5
cookie_name = "app_session"
user_claim = "uid"
grants_claim = "permissions"
default_grants = ["tts", "stt"]
cache_capacity = 42

[upstream]
base_url = "https://127.0.0.1:9000"
api_key_file = "/run/secrets/cartesia-api-key"
ca_file = "certs/stand-in-ca.pem"
cartesia_version = "2025-04-16"
connect_timeout_secs = 2
response_timeout_secs = 3
pool_idle_timeout_secs = 4

[tokens]
lifetime_secs = 900
refresh_margin_secs = 120
cache_capacity = 17

[log]
level = "debug,hyper=info"
"#;

fn no_environment() -> Vec<(String, String)> {
    Vec::new()
}

fn environment(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(name, value)| ((*name).to_owned(), (*value).to_owned()))
        .collect()
}

fn parse(text: &str) -> Config {
    Config::from_toml_str(text, no_environment()).unwrap()
}

fn parse_with(text: &str, pairs: &[(&str, &str)]) -> Config {
    Config::from_toml_str(text, environment(pairs)).unwrap()
}

/// Returns the message of the error that `text` produces with `pairs` as
/// its environment.
fn rejection_with(text: &str, pairs: &[(&str, &str)]) -> String {
    Config::from_toml_str(text, environment(pairs))
        .unwrap_err()
        .to_string()
}

fn rejection(text: &str) -> String {
    rejection_with(text, &[])
}

/// Asserts that `text` is rejected with an error that names `key`.
#[track_caller]
fn assert_rejected_naming(text: &str, key: &str) {
    let message = rejection(text);
    assert!(
        message.contains(&format!("`{key}`")),
        "expected an error naming `{key}` for {text:?}, got: {message}"
    );
}

// Defaults.

#[test]
fn empty_file_uses_server_defaults() {
    let server = parse("").server;
    assert_eq!(server.listen, DEFAULT_LISTEN.parse::<SocketAddr>().unwrap());
    assert_eq!(server.cert_file, PathBuf::from(DEFAULT_CERT_FILE));
    assert_eq!(server.key_file, PathBuf::from(DEFAULT_KEY_FILE));
    assert_eq!(server.tls_handshake_timeout, DEFAULT_TLS_HANDSHAKE_TIMEOUT);
    assert_eq!(server.header_read_timeout, DEFAULT_HEADER_READ_TIMEOUT);
    assert_eq!(server.shutdown_timeout, DEFAULT_SHUTDOWN_TIMEOUT);
}

#[test]
fn empty_file_uses_session_defaults() {
    let session = parse("").session;
    assert_eq!(session.algorithms, vec![Algorithm::HS256]);
    assert_eq!(
        session.key,
        SessionKeySource::SecretEnv(DEFAULT_SECRET_ENV.to_owned())
    );
    assert_eq!(session.issuer, None);
    assert_eq!(session.audience, None);
    assert_eq!(session.leeway, DEFAULT_LEEWAY);
    assert_eq!(session.cookie_name, DEFAULT_COOKIE_NAME);
    assert_eq!(session.user_claim, DEFAULT_USER_CLAIM);
    assert_eq!(session.grants_claim, DEFAULT_GRANTS_CLAIM);
    assert_eq!(session.default_grants, Grants::NONE);
    assert_eq!(session.cache_capacity, DEFAULT_SESSION_CACHE_CAPACITY);
}

#[test]
fn empty_file_uses_upstream_defaults() {
    let upstream = parse("").upstream;
    assert_eq!(upstream.base_url, DEFAULT_UPSTREAM);
    assert_eq!(upstream.api_key_file, None);
    assert_eq!(upstream.ca_file, None);
    assert_eq!(upstream.cartesia_version, DEFAULT_CARTESIA_VERSION);
    assert_eq!(upstream.connect_timeout, DEFAULT_CONNECT_TIMEOUT);
    assert_eq!(upstream.response_timeout, DEFAULT_RESPONSE_TIMEOUT);
    assert_eq!(upstream.pool_idle_timeout, DEFAULT_POOL_IDLE_TIMEOUT);
}

#[test]
fn empty_file_uses_token_defaults() {
    let tokens = parse("").tokens;
    assert_eq!(tokens.lifetime, DEFAULT_TOKEN_LIFETIME);
    assert_eq!(tokens.refresh_margin, DEFAULT_TOKEN_REFRESH_MARGIN);
    assert_eq!(tokens.cache_capacity, DEFAULT_TOKEN_CACHE_CAPACITY);
}

#[test]
fn empty_file_logs_at_info() {
    assert_eq!(parse("").log.level, "info");
}

#[test]
fn empty_sections_use_defaults() {
    let config = parse("[server]\n[session]\n[upstream]\n[tokens]\n[log]\n");
    assert_eq!(config.tokens.lifetime, DEFAULT_TOKEN_LIFETIME);
}

// A complete file.

#[test]
fn complete_file_sets_server_keys() {
    let server = parse(COMPLETE_FILE).server;
    assert_eq!(server.listen, "0.0.0.0:9443".parse::<SocketAddr>().unwrap());
    assert_eq!(server.cert_file, Path::new("/etc/gateway/chain.pem"));
    assert_eq!(server.key_file, Path::new("/etc/gateway/key.pem"));
    assert_eq!(server.tls_handshake_timeout, Duration::from_secs(7));
    assert_eq!(server.header_read_timeout, Duration::from_secs(8));
    assert_eq!(server.shutdown_timeout, Duration::from_secs(9));
}

#[test]
fn complete_file_sets_session_keys() {
    let session = parse(COMPLETE_FILE).session;
    assert_eq!(session.algorithms, vec![Algorithm::ES256]);
    assert_eq!(
        session.key,
        SessionKeySource::PublicKeyFile(PathBuf::from("/etc/gateway/session-public.pem"))
    );
    assert_eq!(session.issuer.as_deref(), Some("https://auth.example.com"));
    assert_eq!(session.audience.as_deref(), Some("voice-app"));
    assert_eq!(session.leeway, Duration::from_secs(5));
    assert_eq!(session.cookie_name, "app_session");
    assert_eq!(session.user_claim, "uid");
    assert_eq!(session.grants_claim, "permissions");
    assert_eq!(
        session.default_grants,
        Grants::of(Grant::Tts).with(Grant::Stt)
    );
    assert_eq!(session.cache_capacity, 42);
}

#[test]
fn complete_file_sets_upstream_keys() {
    let upstream = parse(COMPLETE_FILE).upstream;
    assert_eq!(upstream.base_url, "https://127.0.0.1:9000/");
    assert_eq!(
        upstream.api_key_file.as_deref(),
        Some(Path::new("/run/secrets/cartesia-api-key"))
    );
    assert_eq!(
        upstream.ca_file.as_deref(),
        Some(Path::new("certs/stand-in-ca.pem"))
    );
    assert_eq!(upstream.cartesia_version, "2025-04-16");
    assert_eq!(upstream.connect_timeout, Duration::from_secs(2));
    assert_eq!(upstream.response_timeout, Duration::from_secs(3));
    assert_eq!(upstream.pool_idle_timeout, Duration::from_secs(4));
}

#[test]
fn complete_file_sets_token_keys() {
    let tokens = parse(COMPLETE_FILE).tokens;
    assert_eq!(tokens.lifetime, Duration::from_secs(900));
    assert_eq!(tokens.refresh_margin, Duration::from_secs(120));
    assert_eq!(tokens.cache_capacity, 17);
}

#[test]
fn complete_file_sets_log_level() {
    assert_eq!(parse(COMPLETE_FILE).log.level, "debug,hyper=info");
}

// Session keys and algorithms.

#[test]
fn every_supported_algorithm_is_accepted() {
    let cases = [
        ("HS256", Algorithm::HS256),
        ("HS384", Algorithm::HS384),
        ("HS512", Algorithm::HS512),
        ("RS256", Algorithm::RS256),
        ("ES256", Algorithm::ES256),
        ("EdDSA", Algorithm::EdDSA),
    ];
    for (name, algorithm) in cases {
        let key_line = if name.starts_with("HS") {
            ""
        } else {
            "public_key_file = \"session.pem\""
        };
        let text = format!("[session]\nalgorithms = [\"{name}\"]\n{key_line}\n");
        assert_eq!(
            parse(&text).session.algorithms,
            vec![algorithm],
            "algorithm {name}"
        );
    }
}

#[test]
fn several_hmac_algorithms_share_secret() {
    let session = parse(
        "[session]\nalgorithms = [\"HS256\", \"HS384\", \"HS512\"]\nsecret_file = \"secret\"\n",
    )
    .session;
    assert_eq!(
        session.algorithms,
        vec![Algorithm::HS256, Algorithm::HS384, Algorithm::HS512]
    );
    assert_eq!(
        session.key,
        SessionKeySource::SecretFile(PathBuf::from("secret"))
    );
}

#[test]
fn secret_env_names_variable() {
    let session = parse("[session]\nsecret_env = \"APP_JWT_SECRET\"\n").session;
    assert_eq!(
        session.key,
        SessionKeySource::SecretEnv("APP_JWT_SECRET".to_owned())
    );
}

#[test]
fn empty_algorithm_list_is_rejected() {
    assert_rejected_naming("[session]\nalgorithms = []\n", "session.algorithms");
}

#[test]
fn unsupported_algorithm_is_rejected() {
    for name in ["none", "RS512", "PS256", "ES384", "hs256"] {
        let text = format!("[session]\nalgorithms = [\"{name}\"]\n");
        assert_rejected_naming(&text, "session.algorithms");
    }
}

#[test]
fn mixed_hmac_and_public_key_algorithms_are_rejected() {
    assert_rejected_naming(
        "[session]\nalgorithms = [\"HS256\", \"RS256\"]\npublic_key_file = \"k.pem\"\n",
        "session.algorithms",
    );
}

#[test]
fn different_public_key_types_are_rejected() {
    assert_rejected_naming(
        "[session]\nalgorithms = [\"RS256\", \"ES256\"]\npublic_key_file = \"k.pem\"\n",
        "session.algorithms",
    );
}

#[test]
fn public_key_file_with_hmac_is_rejected() {
    assert_rejected_naming(
        "[session]\nalgorithms = [\"HS256\"]\npublic_key_file = \"k.pem\"\n",
        "session.public_key_file",
    );
}

#[test]
fn secret_env_and_file_conflict() {
    let message =
        rejection("[session]\nsecret_env = \"APP_SECRET\"\nsecret_file = \"secret.txt\"\n");
    assert!(message.contains("`session.secret_file`"), "{message}");
    assert!(message.contains("session.secret_env"), "{message}");
}

#[test]
fn empty_secret_env_is_rejected() {
    assert_rejected_naming("[session]\nsecret_env = \"\"\n", "session.secret_env");
}

#[test]
fn secret_env_with_public_key_is_rejected() {
    assert_rejected_naming(
        "[session]\nalgorithms = [\"RS256\"]\npublic_key_file = \"k.pem\"\nsecret_env = \"S\"\n",
        "session.secret_env",
    );
}

#[test]
fn secret_file_with_public_key_is_rejected() {
    assert_rejected_naming(
        "[session]\nalgorithms = [\"EdDSA\"]\npublic_key_file = \"k.pem\"\nsecret_file = \"s\"\n",
        "session.secret_file",
    );
}

#[test]
fn public_key_algorithm_needs_key_file() {
    assert_rejected_naming(
        "[session]\nalgorithms = [\"ES256\"]\n",
        "session.public_key_file",
    );
}

// Other session keys.

#[test]
fn invalid_cookie_name_is_rejected() {
    for name in ["", "my session", "a;b", "a=b", "sess\u{e9}", "a,b", "(x)"] {
        let text = format!("[session]\ncookie_name = \"{name}\"\n");
        assert_rejected_naming(&text, "session.cookie_name");
    }
}

#[test]
fn token_characters_make_valid_cookie_name() {
    let name = "__Host-app.session!#$%&'*+^`|~";
    let text = format!("[session]\ncookie_name = \"{name}\"\n");
    assert_eq!(parse(&text).session.cookie_name, name);
}

#[test]
fn empty_user_claim_is_rejected() {
    assert_rejected_naming("[session]\nuser_claim = \"\"\n", "session.user_claim");
}

#[test]
fn empty_grants_claim_is_rejected() {
    assert_rejected_naming("[session]\ngrants_claim = \"\"\n", "session.grants_claim");
}

#[test]
fn unknown_default_grant_is_rejected() {
    let message = rejection("[session]\ndefault_grants = [\"tts\", \"admin\"]\n");
    assert!(message.contains("`session.default_grants`"), "{message}");
    assert!(message.contains("admin"), "{message}");
}

#[test]
fn empty_issuer_is_rejected() {
    assert_rejected_naming("[session]\nissuer = \"\"\n", "session.issuer");
}

#[test]
fn empty_audience_is_rejected() {
    assert_rejected_naming("[session]\naudience = \"\"\n", "session.audience");
}

#[test]
fn zero_leeway_is_allowed() {
    let session = parse("[session]\nleeway_secs = 0\n").session;
    assert_eq!(session.leeway, Duration::ZERO);
}

// Server and upstream.

#[test]
fn invalid_listen_address_is_rejected() {
    for listen in ["localhost:8443", "127.0.0.1", "127.0.0.1:99999", ""] {
        let text = format!("[server]\nlisten = \"{listen}\"\n");
        assert_rejected_naming(&text, "server.listen");
    }
}

#[test]
fn ipv6_listen_address_is_accepted() {
    let server = parse("[server]\nlisten = \"[::1]:8443\"\n").server;
    assert_eq!(server.listen, "[::1]:8443".parse::<SocketAddr>().unwrap());
}

#[test]
fn plain_http_upstream_is_rejected() {
    let message = rejection("[upstream]\nbase_url = \"http://api.cartesia.ai\"\n");
    assert!(message.contains("`upstream.base_url`"), "{message}");
    assert!(message.contains("https://"), "{message}");
}

#[test]
fn upstream_without_host_is_rejected() {
    for url in ["https://", "/v1", "https:///", "api.cartesia.ai", ""] {
        let text = format!("[upstream]\nbase_url = \"{url}\"\n");
        assert_rejected_naming(&text, "upstream.base_url");
    }
}

#[test]
fn upstream_with_path_is_rejected() {
    assert_rejected_naming(
        "[upstream]\nbase_url = \"https://api.cartesia.ai/v1\"\n",
        "upstream.base_url",
    );
}

#[test]
fn upstream_with_query_is_rejected() {
    for url in [
        "https://api.cartesia.ai/?region=eu",
        "https://api.cartesia.ai?x",
    ] {
        let text = format!("[upstream]\nbase_url = \"{url}\"\n");
        assert_rejected_naming(&text, "upstream.base_url");
    }
}

#[test]
fn upstream_with_userinfo_is_rejected() {
    let message = rejection("[upstream]\nbase_url = \"https://user:hunter2@api.cartesia.ai\"\n");
    assert!(message.contains("`upstream.base_url`"), "{message}");
    assert!(!message.contains("hunter2"), "{message}");
}

#[test]
fn upstream_with_port_and_slash_is_accepted() {
    let upstream = parse("[upstream]\nbase_url = \"https://localhost:8444/\"\n").upstream;
    assert_eq!(upstream.base_url, "https://localhost:8444/");
}

#[test]
fn invalid_cartesia_version_is_rejected() {
    for version in [
        "latest",
        "2024-6-10",
        "2024/06/10",
        "20240610",
        "2024-06-10x",
        "",
    ] {
        let text = format!("[upstream]\ncartesia_version = \"{version}\"\n");
        assert_rejected_naming(&text, "upstream.cartesia_version");
    }
}

#[test]
fn zero_timeouts_are_rejected() {
    let keys = [
        ("server", "tls_handshake_timeout_secs"),
        ("server", "header_read_timeout_secs"),
        ("upstream", "connect_timeout_secs"),
        ("upstream", "response_timeout_secs"),
        ("upstream", "pool_idle_timeout_secs"),
    ];
    for (section, key) in keys {
        let text = format!("[{section}]\n{key} = 0\n");
        assert_rejected_naming(&text, &format!("{section}.{key}"));
    }
}

#[test]
fn zero_shutdown_timeout_is_allowed() {
    let server = parse("[server]\nshutdown_timeout_secs = 0\n").server;
    assert_eq!(server.shutdown_timeout, Duration::ZERO);
}

#[test]
fn shutdown_delay_defaults_to_zero_and_is_capped() {
    assert_eq!(parse("").server.shutdown_delay, Duration::ZERO);
    let server = parse("[server]\nshutdown_delay_secs = 300\n").server;
    assert_eq!(server.shutdown_delay, Duration::from_secs(300));
    let message = rejection("[server]\nshutdown_delay_secs = 301\n");
    assert!(
        message.contains("`server.shutdown_delay_secs`"),
        "{message}"
    );
    assert!(message.contains("300"), "{message}");
}

// Admin listener.

#[test]
fn admin_listener_is_on_loopback_by_default() {
    let admin = parse("").admin.unwrap();
    assert_eq!(
        admin.listen,
        DEFAULT_ADMIN_LISTEN.parse::<SocketAddr>().unwrap()
    );
    assert!(admin.listen.ip().is_loopback());
    assert!(!admin.tls);
}

#[test]
fn admin_listener_can_be_turned_off() {
    assert!(parse("[admin]\nenabled = false\n").admin.is_none());
}

#[test]
fn admin_settings_are_read() {
    let admin = parse("[admin]\nlisten = \"0.0.0.0:9191\"\ntls = true\n")
        .admin
        .unwrap();
    assert_eq!(admin.listen, "0.0.0.0:9191".parse::<SocketAddr>().unwrap());
    assert!(admin.tls);
}

#[test]
fn admin_listen_must_be_an_address() {
    assert_rejected_naming("[admin]\nlisten = \"localhost:9090\"\n", "admin.listen");
}

#[test]
fn admin_listen_must_differ_from_other_listeners() {
    assert_rejected_naming(
        "[server]\nlisten = \"127.0.0.1:9443\"\n[admin]\nlisten = \"127.0.0.1:9443\"\n",
        "admin.listen",
    );
    assert_rejected_naming(
        "[redirect]\nlisten = \"127.0.0.1:9080\"\npublic_host = \"voice.example.com\"\n\
         [admin]\nlisten = \"127.0.0.1:9080\"\n",
        "admin.listen",
    );
    assert_rejected_naming(
        "[server]\nlisten = \"0.0.0.0:9443\"\n[admin]\nlisten = \"127.0.0.1:9443\"\n",
        "admin.listen",
    );
    let apart =
        parse("[server]\nlisten = \"127.0.0.1:9443\"\n[admin]\nlisten = \"127.0.0.2:9443\"\n");
    assert!(
        apart.admin.is_some(),
        "different addresses share a port number"
    );
    // Port 0 picks a free port for each, so they never collide.
    let config = parse("[server]\nlisten = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\n");
    assert!(config.admin.is_some());
}

#[test]
fn admin_listen_override_from_environment() {
    let config = Config::from_toml_str(
        "",
        environment(&[("CARTESIA_GATEWAY__ADMIN__LISTEN", "0.0.0.0:9090")]),
    )
    .unwrap();
    assert_eq!(
        config.admin.unwrap().listen,
        "0.0.0.0:9090".parse::<SocketAddr>().unwrap()
    );
}

// Tokens.

#[test]
fn token_lifetime_above_maximum_is_rejected() {
    let message = rejection("[tokens]\nlifetime_secs = 3601\n");
    assert!(message.contains("`tokens.lifetime_secs`"), "{message}");
    assert!(message.contains("3600"), "{message}");
}

#[test]
fn token_lifetime_at_maximum_is_accepted() {
    let tokens = parse("[tokens]\nlifetime_secs = 3600\n").tokens;
    assert_eq!(tokens.lifetime, MAX_TOKEN_LIFETIME);
}

#[test]
fn zero_token_lifetime_is_rejected() {
    assert_rejected_naming("[tokens]\nlifetime_secs = 0\n", "tokens.lifetime_secs");
}

#[test]
fn refresh_margin_equal_lifetime_is_rejected() {
    assert_rejected_naming(
        "[tokens]\nlifetime_secs = 120\nrefresh_margin_secs = 120\n",
        "tokens.refresh_margin_secs",
    );
}

#[test]
fn refresh_margin_above_lifetime_is_rejected() {
    assert_rejected_naming(
        "[tokens]\nlifetime_secs = 300\nrefresh_margin_secs = 301\n",
        "tokens.refresh_margin_secs",
    );
}

#[test]
fn default_margin_needs_longer_lifetime() {
    assert_rejected_naming(
        "[tokens]\nlifetime_secs = 60\n",
        "tokens.refresh_margin_secs",
    );
}

#[test]
fn margin_below_lifetime_is_accepted() {
    let tokens = parse("[tokens]\nlifetime_secs = 61\nrefresh_margin_secs = 0\n").tokens;
    assert_eq!(tokens.lifetime, Duration::from_secs(61));
    assert_eq!(tokens.refresh_margin, Duration::ZERO);
}

#[test]
fn zero_token_cache_capacity_is_rejected() {
    assert_rejected_naming("[tokens]\ncache_capacity = 0\n", "tokens.cache_capacity");
}

#[test]
fn zero_session_cache_capacity_is_rejected() {
    assert_rejected_naming("[session]\ncache_capacity = 0\n", "session.cache_capacity");
}

// Syntax, types and unknown keys.

#[test]
fn malformed_toml_is_rejected() {
    let error = Config::from_toml_str("[server\nlisten = ", no_environment()).unwrap_err();
    assert!(matches!(error, ConfigError::Parse(_)), "{error}");
}

#[test]
fn wrong_value_type_is_rejected() {
    let message = rejection("[server]\nlisten = 8443\n");
    assert!(message.contains("`server.listen`"), "{message}");
}

#[test]
fn negative_duration_is_rejected() {
    let message = rejection("[tokens]\nlifetime_secs = -5\n");
    assert!(message.contains("`tokens.lifetime_secs`"), "{message}");
}

#[test]
fn unknown_top_level_key_is_rejected() {
    let message = rejection("listen = \"0.0.0.0:8443\"\n");
    assert!(message.contains("`listen`"), "{message}");
}

#[test]
fn unknown_section_is_rejected() {
    let message = rejection("[cache]\ncapacity = 10\n");
    assert!(message.contains("`cache`"), "{message}");
}

#[test]
fn unknown_section_key_is_rejected() {
    let message = rejection("[server]\nlisten_address = \"0.0.0.0:8443\"\n");
    assert!(message.contains("`listen_address`"), "{message}");
    assert!(message.contains("`server`"), "{message}");
}

#[test]
fn inline_api_key_is_rejected() {
    let message = rejection("[upstream]\napi_key = \"sk_car_inline\"\n");
    assert!(message.contains("`api_key`"), "{message}");
}

#[test]
fn missing_file_error_names_path() {
    let directory = tempfile::tempdir().unwrap();
    let path = directory.path().join("gateway.toml");
    let error = Config::load(&path).unwrap_err();
    assert!(matches!(error, ConfigError::Read { .. }), "{error}");
    assert!(
        error.to_string().contains(&path.display().to_string()),
        "{error}"
    );
}

// Environment overrides.

#[test]
fn string_override_replaces_file_value() {
    let config = parse_with(
        "[server]\nlisten = \"127.0.0.1:8443\"\n",
        &[("CARTESIA_GATEWAY__SERVER__LISTEN", "0.0.0.0:443")],
    );
    assert_eq!(
        config.server.listen,
        "0.0.0.0:443".parse::<SocketAddr>().unwrap()
    );
}

#[test]
fn integer_override_replaces_file_value() {
    let config = parse_with(
        "[tokens]\nlifetime_secs = 300\n",
        &[("CARTESIA_GATEWAY__TOKENS__LIFETIME_SECS", "1800")],
    );
    assert_eq!(config.tokens.lifetime, Duration::from_secs(1800));
}

#[test]
fn array_override_replaces_file_value() {
    let config = parse_with(
        "[session]\nalgorithms = [\"HS256\"]\ndefault_grants = [\"tts\"]\n",
        &[
            (
                "CARTESIA_GATEWAY__SESSION__ALGORITHMS",
                "[\"HS384\", \"HS512\"]",
            ),
            ("CARTESIA_GATEWAY__SESSION__DEFAULT_GRANTS", "[\"stt\"]"),
        ],
    );
    assert_eq!(
        config.session.algorithms,
        vec![Algorithm::HS384, Algorithm::HS512]
    );
    assert_eq!(config.session.default_grants, Grants::of(Grant::Stt));
}

#[test]
fn empty_array_override_clears_grants() {
    let config = parse_with(
        "[session]\ndefault_grants = [\"tts\"]\n",
        &[("CARTESIA_GATEWAY__SESSION__DEFAULT_GRANTS", "[]")],
    );
    assert_eq!(config.session.default_grants, Grants::NONE);
}

#[test]
fn date_override_stays_string() {
    let config = parse_with(
        "[upstream]\ncartesia_version = \"2024-06-10\"\n",
        &[("CARTESIA_GATEWAY__UPSTREAM__CARTESIA_VERSION", "2025-04-16")],
    );
    assert_eq!(config.upstream.cartesia_version, "2025-04-16");
}

#[test]
fn override_creates_missing_section() {
    let config = parse_with(
        "",
        &[
            ("CARTESIA_GATEWAY__TOKENS__CACHE_CAPACITY", "5"),
            ("CARTESIA_GATEWAY__LOG__LEVEL", "trace"),
        ],
    );
    assert_eq!(config.tokens.cache_capacity, 5);
    assert_eq!(config.log.level, "trace");
}

#[test]
fn override_keeps_other_file_values() {
    let config = parse_with(
        "[tokens]\nlifetime_secs = 900\nrefresh_margin_secs = 100\n",
        &[("CARTESIA_GATEWAY__TOKENS__REFRESH_MARGIN_SECS", "200")],
    );
    assert_eq!(config.tokens.lifetime, Duration::from_secs(900));
    assert_eq!(config.tokens.refresh_margin, Duration::from_secs(200));
}

#[test]
fn override_values_are_validated() {
    let message = rejection_with("", &[("CARTESIA_GATEWAY__TOKENS__LIFETIME_SECS", "7200")]);
    assert!(message.contains("`tokens.lifetime_secs`"), "{message}");
}

#[test]
fn override_of_unknown_key_is_rejected() {
    let message = rejection_with("", &[("CARTESIA_GATEWAY__SERVER__LISTEN_PORT", "8443")]);
    assert!(message.contains("`listen_port`"), "{message}");
    assert!(message.contains("`server`"), "{message}");
}

#[test]
fn override_of_unknown_section_is_rejected() {
    let message = rejection_with("", &[("CARTESIA_GATEWAY__METRICS__LISTEN", "0.0.0.0:9")]);
    assert!(message.contains("`metrics`"), "{message}");
}

#[test]
fn override_without_key_is_rejected() {
    let message = rejection_with("", &[("CARTESIA_GATEWAY__LISTEN", "0.0.0.0:8443")]);
    assert!(message.contains("CARTESIA_GATEWAY__LISTEN"), "{message}");
}

#[test]
fn override_with_extra_level_is_rejected() {
    let message = rejection_with("", &[("CARTESIA_GATEWAY__SERVER__LISTEN__PORT", "1")]);
    assert!(message.contains("`listen__port`"), "{message}");
}

#[test]
fn override_into_non_section_is_rejected() {
    let message = rejection_with(
        "log = \"debug\"\n",
        &[("CARTESIA_GATEWAY__LOG__LEVEL", "trace")],
    );
    assert!(
        message.contains("CARTESIA_GATEWAY__LOG__LEVEL"),
        "{message}"
    );
}

#[test]
fn unrelated_variables_are_ignored() {
    let config = parse_with(
        "[server]\nlisten = \"127.0.0.1:8443\"\n",
        &[
            ("PATH", "/usr/bin"),
            ("CARTESIA_API_KEY", "sk_car_example"),
            ("CARTESIA_GATEWAY_SERVER__LISTEN", "not an address"),
            ("cartesia_gateway__server__listen", "not an address"),
            ("GATEWAY__SERVER__LISTEN", "not an address"),
        ],
    );
    assert_eq!(
        config.server.listen,
        "127.0.0.1:8443".parse::<SocketAddr>().unwrap()
    );
}

// Browser safety: HSTS, CORS, redirects, trusted proxies and WebSocket limits.

#[test]
fn browser_settings_default_to_safe_values() {
    let config = parse("");
    assert_eq!(config.hsts.max_age, DEFAULT_HSTS_MAX_AGE);
    assert!(!config.hsts.include_subdomains);
    assert!(!config.hsts.preload);
    assert_eq!(config.hsts.header_value(), "max-age=31536000");
    assert!(config.cors.allowed_origins.is_empty());
    assert_eq!(config.cors.max_age, DEFAULT_CORS_MAX_AGE);
    assert!(config.redirect.is_none());
    assert!(config.server.trusted_proxies.is_empty());
    assert_eq!(config.websocket.max_lifetime, None);
}

#[test]
fn hsts_options_appear_in_header() {
    let config = parse("[hsts]\ninclude_subdomains = true\npreload = true\n");
    assert_eq!(
        config.hsts.header_value(),
        "max-age=31536000; includeSubDomains; preload"
    );
}

#[test]
fn hsts_preload_needs_subdomains_and_a_year() {
    assert_rejected_naming("[hsts]\npreload = true\n", "hsts.preload");
    assert_rejected_naming(
        "[hsts]\npreload = true\ninclude_subdomains = true\nmax_age_secs = 600\n",
        "hsts.preload",
    );
}

#[test]
fn allowed_origins_are_normalized() {
    let config = parse(
        "[cors]\nallowed_origins = [\"https://App.Example.com:443\", \"http://localhost:3000\"]\n",
    );
    assert_eq!(
        config.cors.allowed_origins,
        vec!["https://app.example.com", "http://localhost:3000"]
    );
}

#[test]
fn invalid_allowed_origins_are_rejected() {
    for origin in ["*", "null", "https://app.example.com/", "app.example.com"] {
        assert_rejected_naming(
            &format!("[cors]\nallowed_origins = [\"{origin}\"]\n"),
            "cors.allowed_origins",
        );
    }
}

#[test]
fn trusted_proxies_accept_addresses_and_networks() {
    let config = parse("[server]\ntrusted_proxies = [\"10.0.0.0/8\", \"::1\"]\n");
    assert_eq!(config.server.trusted_proxies.len(), 2);
    assert!(
        config.server.trusted_proxies[0].contains(&"10.1.2.3".parse::<std::net::IpAddr>().unwrap())
    );
    assert!(config.server.trusted_proxies[1].contains(&"::1".parse::<std::net::IpAddr>().unwrap()));
}

#[test]
fn invalid_trusted_proxy_is_rejected() {
    assert_rejected_naming(
        "[server]\ntrusted_proxies = [\"10.0.0.0/33\"]\n",
        "server.trusted_proxies",
    );
    assert_rejected_naming(
        "[server]\ntrusted_proxies = [\"proxy.internal\"]\n",
        "server.trusted_proxies",
    );
}

#[test]
fn redirect_needs_public_host() {
    assert_rejected_naming(
        "[redirect]\nlisten = \"0.0.0.0:8080\"\n",
        "redirect.public_host",
    );
    assert_rejected_naming(
        "[redirect]\nlisten = \"0.0.0.0:8080\"\npublic_host = \"https://voice.example.com\"\n",
        "redirect.public_host",
    );
    assert_rejected_naming(
        "[redirect]\npublic_host = \"voice.example.com\"\n",
        "redirect.listen",
    );
}

#[test]
fn redirect_port_defaults_to_https_port() {
    let config = parse(
        "[server]\nlisten = \"0.0.0.0:9443\"\n[redirect]\nlisten = \"0.0.0.0:8080\"\npublic_host = \"Voice.Example.com\"\n",
    );
    let redirect = config.redirect.unwrap();
    assert_eq!(redirect.public_port, 9443);
    assert_eq!(redirect.public_host, "voice.example.com");
}

#[test]
fn websocket_lifetime_zero_means_no_limit() {
    assert_eq!(
        parse("[websocket]\nmax_lifetime_secs = 0\n")
            .websocket
            .max_lifetime,
        None
    );
    assert_eq!(
        parse("[websocket]\nmax_lifetime_secs = 3600\n")
            .websocket
            .max_lifetime,
        Some(Duration::from_secs(3600))
    );
}

#[test]
fn huge_cert_reload_interval_is_rejected() {
    assert_rejected_naming(
        "[server]\ncert_reload_interval_secs = 9223372036854775807\n",
        "server.cert_reload_interval_secs",
    );
}

#[test]
fn errors_from_overrides_name_the_variable() {
    let bad_value = Config::from_toml_str(
        "",
        environment(&[("CARTESIA_GATEWAY__SERVER__LISTEN", "nonsense")]),
    )
    .unwrap_err()
    .to_string();
    assert!(bad_value.contains("`server.listen`"), "{bad_value}");
    assert!(
        bad_value.contains("CARTESIA_GATEWAY__SERVER__LISTEN"),
        "{bad_value}"
    );
    let unknown = Config::from_toml_str(
        "",
        environment(&[("CARTESIA_GATEWAY__SERVER__LISEN", "127.0.0.1:1")]),
    )
    .unwrap_err()
    .to_string();
    assert!(
        unknown.contains("CARTESIA_GATEWAY__SERVER__LISEN"),
        "{unknown}"
    );

    let from_file = rejection("[server]\nlisten = \"nonsense\"\n");
    assert!(!from_file.contains("environment"), "{from_file}");
    let wrong_type = Config::from_toml_str(
        "",
        environment(&[("CARTESIA_GATEWAY__SERVER__MAX_CONNECTIONS", "many")]),
    )
    .unwrap_err()
    .to_string();
    assert!(
        wrong_type.contains("CARTESIA_GATEWAY__SERVER__MAX_CONNECTIONS"),
        "{wrong_type}"
    );
    // An unknown key in the file is not blamed on an override of another
    // key of the same section.
    let unknown_in_file = Config::from_toml_str(
        "[server]\nlisen = \"127.0.0.1:1\"\n",
        environment(&[("CARTESIA_GATEWAY__SERVER__KEY_FILE", "/tmp/key.pem")]),
    )
    .unwrap_err()
    .to_string();
    assert!(unknown_in_file.contains("`lisen`"), "{unknown_in_file}");
    assert!(
        !unknown_in_file.contains("environment variable"),
        "{unknown_in_file}"
    );
}
