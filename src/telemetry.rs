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
/// Every directive without `=` must be a level, because `EnvFilter` reads
/// any other word, such as the misspelled `warning`, as a target name and
/// then logs nothing else at all.
///
/// Two directives are added unless the filter names their targets:
/// - tungstenite's targets get the filter's default level, capped at
///   `debug`. The cap is a directive of its own, because a directive for
///   another target such as `tokio=trace` also matches `tokio_tungstenite`
///   by prefix.
/// - the access log gets the default level, or `info` when the filter has
///   no default level, so a filter such as `cartesia_gateway=debug` keeps
///   it.
pub fn filter(config: &LogConfig, rust_log: Option<&str>) -> Result<EnvFilter, String> {
    let (directives, source) = match rust_log {
        Some(directives) if !directives.is_empty() => (directives, "RUST_LOG"),
        _ => (config.level.as_str(), "log.level"),
    };
    for directive in directives.split(',').map(str::trim) {
        let names_target = directive.contains('=') || directive.contains('[');
        if !directive.is_empty() && !names_target && directive.parse::<LevelFilter>().is_err() {
            return Err(format!(
                "invalid log level {directive:?} in {source}; use trace, debug, info, warn, error or off, or TARGET=LEVEL"
            ));
        }
    }
    let mut filter = EnvFilter::try_new(directives)
        .map_err(|error| format!("invalid log filter {directives:?} in {source}: {error}"))?;
    let default = default_level(directives);
    let mut added = Vec::new();
    if !directives.contains("tungstenite") {
        let cap = default.unwrap_or(LevelFilter::OFF).min(LevelFilter::DEBUG);
        for target in MESSAGE_CONTENT_TARGETS {
            added.push(format!("{target}={cap}"));
        }
    }
    if !directives.contains(crate::access::TARGET) {
        let level = default.unwrap_or(LevelFilter::INFO);
        added.push(format!("{}={level}", crate::access::TARGET));
    }
    for text in added {
        let directive: Directive = text
            .parse()
            .map_err(|error| format!("invalid built-in log directive {text}: {error}"))?;
        filter = filter.add_directive(directive);
    }
    Ok(filter)
}

/// Returns the level of the last directive without a target, which applies
/// to every target no other directive names. Without one, `EnvFilter` logs
/// nothing for those targets.
fn default_level(directives: &str) -> Option<LevelFilter> {
    directives
        .split(',')
        .rev()
        .find_map(|directive| directive.trim().parse::<LevelFilter>().ok())
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
        assert!(targeted.contains("tungstenite=off"), "{targeted}");
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
    fn access_log_follows_the_default_level() {
        let info = filter(&config("info"), None).unwrap().to_string();
        assert!(info.contains("access=info"), "{info}");
        let warn = filter(&config("warn"), None).unwrap().to_string();
        assert!(warn.contains("access=warn"), "{warn}");
        let targeted = filter(&config("cartesia_gateway=debug"), None)
            .unwrap()
            .to_string();
        assert!(targeted.contains("access=info"), "{targeted}");
        let named = filter(&config("info,access=off"), None)
            .unwrap()
            .to_string();
        assert!(named.contains("access=off"), "{named}");
        assert!(!named.contains("access=info"), "{named}");
    }

    #[test]
    fn misspelled_level_is_rejected() {
        for level in ["warning", "verbose", "info,cartesia_gateway"] {
            let error = filter(&config(level), None).unwrap_err();
            assert!(error.contains("invalid log level"), "{level}: {error}");
            assert!(error.contains("log.level"), "{level}: {error}");
        }
        let error = filter(&config("info"), Some("warning")).unwrap_err();
        assert!(error.contains("RUST_LOG"), "{error}");
    }

    #[test]
    fn invalid_level_is_reported() {
        let error = filter(&config("info,=[x"), None).unwrap_err();
        assert!(error.contains("log.level"), "{error}");
    }
}
