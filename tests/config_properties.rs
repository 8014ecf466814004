//! Property tests of config parsing: arbitrary TOML text and environment
//! overrides never panic, and an override gives the same result as writing
//! the key in the file.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;

use cartesia_gateway::config::{Config, ConfigError};
use proptest::prelude::*;

/// Every key of the config file, by section.
const KEYS: &[(&str, &[&str])] = &[
    (
        "server",
        &[
            "listen",
            "cert_file",
            "key_file",
            "tls_handshake_timeout_secs",
            "header_read_timeout_secs",
            "shutdown_timeout_secs",
            "trusted_proxies",
            "max_connections",
            "max_header_bytes",
            "max_request_body_bytes",
            "http2_keep_alive_interval_secs",
            "http2_keep_alive_timeout_secs",
            "cert_reload_interval_secs",
        ],
    ),
    (
        "session",
        &[
            "algorithms",
            "secret_env",
            "secret_file",
            "public_key_file",
            "issuer",
            "audience",
            "leeway_secs",
            "cookie_name",
            "user_claim",
            "grants_claim",
            "default_grants",
            "cache_capacity",
        ],
    ),
    (
        "upstream",
        &[
            "base_url",
            "api_key_file",
            "ca_file",
            "cartesia_version",
            "connect_timeout_secs",
            "response_timeout_secs",
            "pool_idle_timeout_secs",
        ],
    ),
    (
        "tokens",
        &[
            "lifetime_secs",
            "refresh_margin_secs",
            "cache_capacity",
            "mint_retries",
            "mint_retry_delay_ms",
            "max_failing_mints_per_sec",
        ],
    ),
    ("log", &["level", "format"]),
    ("hsts", &["max_age_secs", "include_subdomains", "preload"]),
    ("cors", &["allowed_origins", "max_age_secs"]),
    ("redirect", &["listen", "public_host", "public_port"]),
    ("websocket", &["max_lifetime_secs", "idle_timeout_secs"]),
];

/// Strings that are valid for some key, or close to it. None of them reads
/// as a TOML integer, boolean or array, so an override keeps it a string.
const STRINGS: &[&str] = &[
    "0.0.0.0:8443",
    "[::1]:8443",
    "127.0.0.1:8080",
    "https://127.0.0.1:9000",
    "https://api.cartesia.ai/v1",
    "http://api.cartesia.ai",
    "2025-04-16",
    "2025-4-16",
    "HS256",
    "ES256",
    "none",
    "session",
    "se ssion",
    "voice.example.com",
    "https://app.example.com",
    "10.0.0.0/8",
    "tts",
    "debug,hyper=info",
    "json",
    "auto",
    "",
];

fn section_and_key() -> impl Strategy<Value = (&'static str, &'static str)> {
    prop::sample::select(KEYS.to_vec())
        .prop_flat_map(|(section, keys)| (Just(section), prop::sample::select(keys.to_vec())))
}

/// A value written two ways: as TOML in the file and as the text of an
/// environment variable.
#[derive(Clone, Debug)]
enum Value {
    Integer(i64),
    Boolean(bool),
    Strings(Vec<String>),
    Text(String),
}

impl Value {
    fn toml(&self) -> String {
        match self {
            Value::Integer(number) => number.to_string(),
            Value::Boolean(flag) => flag.to_string(),
            Value::Strings(items) => {
                toml::Value::Array(items.iter().cloned().map(toml::Value::String).collect())
                    .to_string()
            }
            Value::Text(text) => toml::Value::String(text.clone()).to_string(),
        }
    }

    fn environment(&self) -> String {
        match self {
            Value::Text(text) => text.clone(),
            other => other.toml(),
        }
    }
}

fn string() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(STRINGS.to_vec()).prop_map(str::to_owned),
        "[a-zA-Z][a-zA-Z0-9.:/_ -]{0,16}".prop_filter("must not read as a boolean", |text| {
            text != "true" && text != "false"
        }),
    ]
}

fn value() -> impl Strategy<Value = Value> {
    prop_oneof![
        (0i64..100_000).prop_map(Value::Integer),
        any::<i64>().prop_map(Value::Integer),
        any::<bool>().prop_map(Value::Boolean),
        prop::collection::vec(string(), 0..3).prop_map(Value::Strings),
        string().prop_map(Value::Text),
    ]
}

/// Generates a value of the type `key` expects most of the time, and of
/// any type otherwise.
fn value_for(key: &str) -> BoxedStrategy<Value> {
    let expected = if key.ends_with("_secs")
        || key.ends_with("_ms")
        || key.starts_with("max_")
        || key.ends_with("capacity")
        || key.ends_with("retries")
        || key.ends_with("port")
    {
        prop_oneof![
            (0i64..100_000).prop_map(Value::Integer),
            any::<i64>().prop_map(Value::Integer)
        ]
        .boxed()
    } else if matches!(key, "include_subdomains" | "preload") {
        any::<bool>().prop_map(Value::Boolean).boxed()
    } else if matches!(
        key,
        "algorithms" | "trusted_proxies" | "default_grants" | "allowed_origins"
    ) {
        prop::collection::vec(string(), 0..3)
            .prop_map(Value::Strings)
            .boxed()
    } else {
        string().prop_map(Value::Text).boxed()
    };
    prop_oneof![3 => expected, 1 => value()].boxed()
}

fn override_name(section: &str, key: &str) -> String {
    format!("CARTESIA_GATEWAY__{section}__{key}").to_ascii_uppercase()
}

/// Describes the result as text, or the key of a validation error. Parse errors
/// compare equal to each other because their message names the source, and
/// the note that names the environment variable behind a value is left out.
fn outcome(result: Result<Config, ConfigError>) -> String {
    match result {
        Ok(config) => format!("{config:?}"),
        Err(ConfigError::Invalid { key, message }) => {
            let message = message
                .split(" (set by the environment variable ")
                .next()
                .unwrap_or_default();
            format!("invalid {key}: {message}")
        }
        Err(ConfigError::Parse(_)) => "parse error".to_owned(),
        Err(ConfigError::Read { .. }) => "read error".to_owned(),
        Err(ConfigError::Missing(what)) => format!("missing {what}"),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn arbitrary_text_and_overrides_never_panic(
        text in prop_oneof![
            any::<String>(),
            "(\\[[a-z]{1,8}\\]\n|[a-z_]{1,12} = |[0-9]{1,20}|-|\"|\\[|\\]|,|true|\n){0,20}",
        ],
        environment in prop::collection::vec(
            (
                prop_oneof![
                    "CARTESIA_GATEWAY__[A-Za-z_]{0,20}",
                    any::<String>(),
                ],
                prop_oneof![any::<String>(), "(\\[|\\]|\"|[0-9]{1,20}|\n|=|value|,){0,8}"],
            ),
            0..4,
        ),
    ) {
        let _ = Config::from_toml_str(&text, environment);
    }

    #[test]
    fn arbitrary_keys_and_values_never_panic(
        entries in prop::collection::vec(
            section_and_key()
                .prop_flat_map(|(section, key)| (Just((section, key)), value_for(key))),
            0..8,
        ),
    ) {
        let mut sections: BTreeMap<&str, BTreeMap<&str, Value>> = BTreeMap::new();
        for ((section, key), value) in entries {
            sections.entry(section).or_default().insert(key, value);
        }
        let mut text = String::new();
        for (section, keys) in &sections {
            text.push_str(&format!("[{section}]\n"));
            for (key, value) in keys {
                text.push_str(&format!("{key} = {}\n", value.toml()));
            }
        }
        let _ = Config::from_toml_str(&text, Vec::new());
    }

    #[test]
    fn override_equals_file_value(
        ((section, key), value, file_value) in section_and_key().prop_flat_map(|(section, key)| {
            (Just((section, key)), value_for(key), prop::option::of(value_for(key)))
        }),
    ) {
        let in_file = format!("[{section}]\n{key} = {}\n", value.toml());
        let overridden = match &file_value {
            Some(other) => format!("[{section}]\n{key} = {}\n", other.toml()),
            None => String::new(),
        };
        let environment = vec![(override_name(section, key), value.environment())];
        prop_assert_eq!(
            outcome(Config::from_toml_str(&overridden, environment)),
            outcome(Config::from_toml_str(&in_file, Vec::new()))
        );
    }
}
