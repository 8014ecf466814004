//! Config parsing on arbitrary text and environment overrides.
//!
//! The input is the TOML text, then optionally a NUL byte and override
//! variables, one `NAME=VALUE` per line. Besides never panicking, an
//! accepted config must hold the invariants that validation checks.

#![no_main]

use cartesia_gateway::config::{Config, MAX_TOKEN_LIFETIME, MIN_MAX_HEADER_BYTES};
use cartesia_gateway::cors::normalize_origin;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (text, environment) = match data.iter().position(|byte| *byte == 0) {
        Some(at) => (&data[..at], &data[at + 1..]),
        None => (data, &[][..]),
    };
    let Ok(text) = std::str::from_utf8(text) else {
        return;
    };
    let environment: Vec<(String, String)> = String::from_utf8_lossy(environment)
        .lines()
        .map(|line| {
            let (name, value) = line.split_once('=').unwrap_or((line, ""));
            (name.to_owned(), value.to_owned())
        })
        .collect();

    let Ok(config) = Config::from_toml_str(text, environment) else {
        return;
    };
    for origin in &config.cors.allowed_origins {
        assert_eq!(normalize_origin(origin).as_ref(), Ok(origin));
    }
    assert!(!config.session.cookie_name.is_empty());
    assert!(!config.session.algorithms.is_empty());
    assert!(config.tokens.refresh_margin < config.tokens.lifetime);
    assert!(config.tokens.lifetime <= MAX_TOKEN_LIFETIME);
    assert!(config.tokens.max_failing_mints_per_sec > 0);
    assert!(config.server.max_connections > 0);
    assert!(config.server.max_header_bytes >= MIN_MAX_HEADER_BYTES);
    if let Some(redirect) = &config.redirect {
        assert!(redirect.public_port > 0);
    }
});
