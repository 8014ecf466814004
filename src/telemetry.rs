//! Logging setup: `tracing` with a filter from `RUST_LOG` or the config.
//!
//! Nothing in the gateway logs a header map, a request, a URI with its query
//! or a token; users appear by id and tokens by fingerprint.
//!
//! At `trace`, tungstenite logs every WebSocket message in full, which means
//! user transcripts and audio. Unless the filter names tungstenite itself,
//! its targets log at the filter's default level or at `debug`, whichever
//! is less detailed.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;
use tracing_subscriber::filter::{Directive, LevelFilter};

use crate::config::{LogConfig, LogFormat};

/// Targets whose `trace` output contains message contents.
const MESSAGE_CONTENT_TARGETS: [&str; 2] = ["tungstenite", "tokio_tungstenite"];

/// Builds the log filter from `RUST_LOG`, when set, or from `log.level`.
///
/// Unless the directives name tungstenite themselves, its targets get the
/// filter's default level capped at `debug`. The cap is a directive of its
/// own, because a directive for another target such as `tokio=trace` also
/// matches `tokio_tungstenite` by prefix.
pub fn filter(config: &LogConfig, rust_log: Option<&str>) -> Result<EnvFilter, String> {
    let directives = match rust_log {
        Some(directives) if !directives.is_empty() => directives,
        _ => config.level.as_str(),
    };
    let mut filter = EnvFilter::try_new(directives).map_err(|error| {
        format!("invalid log filter {directives:?} in log.level or RUST_LOG: {error}")
    })?;
    if !directives.contains("tungstenite") {
        let cap = default_level(directives).min(LevelFilter::DEBUG);
        for target in MESSAGE_CONTENT_TARGETS {
            let cap = format!("{target}={cap}");
            let directive: Directive = cap
                .parse()
                .map_err(|error| format!("invalid built-in log directive {cap}: {error}"))?;
            filter = filter.add_directive(directive);
        }
    }
    Ok(filter)
}

/// The level of the last directive without a target, which applies to
/// every target no other directive names; `error` when there is none, as in
/// `EnvFilter`.
fn default_level(directives: &str) -> LevelFilter {
    directives
        .split(',')
        .rev()
        .find_map(|directive| directive.trim().parse::<LevelFilter>().ok())
        .unwrap_or(LevelFilter::ERROR)
}

/// Installs the global subscriber, writing to stderr: text with colors on a
/// terminal, JSON lines otherwise, unless `log.format` says which. Returns
/// an error if the filter is
/// invalid or a subscriber is installed already.
pub fn init(config: &LogConfig) -> Result<(), String> {
    let rust_log = std::env::var("RUST_LOG").ok();
    let filter = filter(config, rust_log.as_deref())?;
    let terminal = std::io::stderr().is_terminal();
    let json = match config.format {
        LogFormat::Json => true,
        LogFormat::Text => false,
        LogFormat::Auto => !terminal,
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(true);
    let installed = if json {
        builder
            .json()
            .with_current_span(true)
            .with_span_list(true)
            .try_init()
    } else {
        builder.with_ansi(terminal).try_init()
    };
    installed.map_err(|error| error.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(level: &str) -> LogConfig {
        LogConfig {
            level: level.to_owned(),
            format: LogFormat::Auto,
        }
    }

    #[test]
    fn tungstenite_is_capped_by_default() {
        let filter = filter(&config("trace"), None).unwrap().to_string();
        assert!(filter.contains("tungstenite=debug"), "{filter}");
    }

    #[test]
    fn tungstenite_cap_never_raises_the_level() {
        let info = filter(&config("info"), None).unwrap().to_string();
        assert!(info.contains("tokio_tungstenite=info"), "{info}");
        assert!(!info.contains("=debug"), "{info}");
        let warn = filter(&config("warn,tokio=trace"), None)
            .unwrap()
            .to_string();
        assert!(warn.contains("tokio_tungstenite=warn"), "{warn}");
        let targeted = filter(&config("cartesia_gateway=debug"), None)
            .unwrap()
            .to_string();
        assert!(targeted.contains("tungstenite=error"), "{targeted}");
    }

    #[test]
    fn explicit_tungstenite_directive_is_kept() {
        let filter = filter(&config("info"), Some("tungstenite=trace"))
            .unwrap()
            .to_string();
        assert!(filter.contains("tungstenite=trace"), "{filter}");
        assert!(!filter.contains("tungstenite=debug"), "{filter}");
    }

    #[test]
    fn invalid_level_is_reported() {
        let error = filter(&config("info,=[x"), None).unwrap_err();
        assert!(error.contains("log.level"), "{error}");
    }
}
