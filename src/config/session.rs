//! The `[session]` section of the configuration file and its validation.

use jsonwebtoken::Algorithm;
use serde::Deserialize;

use super::*;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSession {
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

impl RawSession {
    pub(super) fn validate(self) -> Result<SessionConfig, ConfigError> {
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

/// RFC 6265 cookie names are RFC 9110 tokens.
fn is_cookie_name_byte(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&byte)
}
