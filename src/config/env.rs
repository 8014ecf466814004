//! Environment overrides for config keys.

use super::ConfigError;

/// Prefix of override variables: `CARTESIA_GATEWAY__SECTION__KEY`.
pub const ENV_PREFIX: &str = "CARTESIA_GATEWAY__";

/// Writes every `CARTESIA_GATEWAY__SECTION__KEY` variable into `table` as
/// `section.key`, replacing the file's value.
pub(super) fn apply_overrides(
    table: &mut toml::Table,
    environment: impl IntoIterator<Item = (String, String)>,
) -> Result<Vec<Override>, ConfigError> {
    let mut applied = Vec::new();
    for (name, value) in environment {
        let Some(rest) = name.strip_prefix(ENV_PREFIX) else {
            continue;
        };
        let Some((section, key)) = rest.split_once("__") else {
            return Err(ConfigError::Parse(format!(
                "environment variable {name} does not name a key; use {ENV_PREFIX}SECTION__KEY"
            )));
        };
        let section = section.to_ascii_lowercase();
        let key = key.to_ascii_lowercase();
        let entry = table
            .entry(section.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        let Some(section_table) = entry.as_table_mut() else {
            return Err(ConfigError::Parse(format!(
                "environment variable {name}: `{section}` is not a section"
            )));
        };
        section_table.insert(key.clone(), parse_value(&value));
        applied.push(Override {
            key: format!("{section}.{key}"),
            field: key,
            variable: name,
        });
    }
    Ok(applied)
}

/// A key set by an environment variable.
pub(super) struct Override {
    /// `section.key`.
    pub key: String,
    /// The key without its section.
    pub field: String,
    pub variable: String,
}

/// Adds the environment variable to an error about a key it set, since
/// the operator will not find that value in the file.
pub(super) fn name_variable(error: ConfigError, overrides: &[Override]) -> ConfigError {
    match error {
        ConfigError::Invalid { key, message } => {
            match overrides.iter().find(|applied| applied.key == key) {
                Some(applied) => ConfigError::Invalid {
                    message: format!(
                        "{message} (set by the environment variable {})",
                        applied.variable
                    ),
                    key,
                },
                None => ConfigError::Invalid { key, message },
            }
        }
        ConfigError::Parse(message) => {
            // serde names the offending key first, as in "unknown field
            // `lisen`, expected one of `listen`, ..." or "invalid type ...
            // in `server.max_connections`".
            let first = message.split('`').nth(1).unwrap_or_default();
            let named = overrides
                .iter()
                .find(|applied| first == applied.field || first == applied.key);
            match named {
                Some(applied) => ConfigError::Parse(format!(
                    "{} (set by the environment variable {})",
                    message.trim_end(),
                    applied.variable
                )),
                None => ConfigError::Parse(message),
            }
        }
        other => other,
    }
}

/// Reads numbers, booleans and arrays as TOML and everything else, dates
/// included, as a string.
fn parse_value(text: &str) -> toml::Value {
    let parsed = format!("value = {text}")
        .parse::<toml::Table>()
        .ok()
        .and_then(|mut table| table.remove("value"));
    match parsed {
        Some(
            value @ (toml::Value::Integer(_) | toml::Value::Boolean(_) | toml::Value::Array(_)),
        ) => value,
        _ => toml::Value::String(text.to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_keep_their_toml_type() {
        assert_eq!(parse_value("300"), toml::Value::Integer(300));
        assert_eq!(parse_value("true"), toml::Value::Boolean(true));
        assert!(parse_value("[\"tts\"]").is_array());
        assert_eq!(
            parse_value("2026-08-14"),
            toml::Value::String("2026-08-14".to_owned())
        );
        assert_eq!(
            parse_value("0.0.0.0:8443"),
            toml::Value::String("0.0.0.0:8443".to_owned())
        );
    }
}
