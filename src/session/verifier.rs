//! Session JWT verification with a cache of verified sessions.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{Map, Value};

use super::{Session, SessionError};
use crate::config::{ConfigError, MIN_HMAC_SECRET_LEN, SessionConfig, SessionKeySource};
use crate::routes::{Grant, Grants};

/// Longest user id accepted from the user claim, in bytes.
const MAX_USER_ID_LEN: usize = 256;

/// Verifies session JWTs and caches the sessions they prove.
pub struct SessionVerifier {
    key: DecodingKey,
    validation: Validation,
    user_claim: String,
    grants_claim: String,
    default_grants: Grants,
    leeway: u64,
    cache: moka::sync::Cache<Arc<str>, Arc<Session>>,
}

impl SessionVerifier {
    pub fn new(config: &SessionConfig, key: DecodingKey) -> Self {
        let mut validation = Validation::new(config.algorithms[0]);
        validation.algorithms = config.algorithms.clone();
        validation.leeway = config.leeway.as_secs();
        validation.validate_exp = true;
        validation.validate_nbf = true;
        let mut required = vec!["exp"];
        match &config.issuer {
            Some(issuer) => {
                validation.set_issuer(&[issuer]);
                required.push("iss");
            }
            None => validation.iss = None,
        }
        match &config.audience {
            Some(audience) => {
                validation.set_audience(&[audience]);
                required.push("aud");
            }
            None => validation.validate_aud = false,
        }
        validation.set_required_spec_claims(&required);

        let cache = moka::sync::Cache::builder()
            .max_capacity(config.cache_capacity)
            .expire_after(UntilSessionExpiry {
                leeway: config.leeway.as_secs(),
            })
            .build();
        SessionVerifier {
            key,
            validation,
            user_claim: config.user_claim.clone(),
            grants_claim: config.grants_claim.clone(),
            default_grants: config.default_grants,
            leeway: config.leeway.as_secs(),
            cache,
        }
    }

    /// Returns the session proved by `token`, from the cache when the same
    /// JWT was verified before.
    pub fn verify(&self, token: &str) -> Result<Arc<Session>, SessionError> {
        if let Some(session) = self.cache.get(token) {
            if session.expires_at.saturating_add(self.leeway) > unix_now() {
                return Ok(session);
            }
            self.cache.invalidate(token);
            return Err(SessionError::Expired);
        }
        let session = Arc::new(self.verify_uncached(token)?);
        self.cache.insert(Arc::from(token), Arc::clone(&session));
        Ok(session)
    }

    fn verify_uncached(&self, token: &str) -> Result<Session, SessionError> {
        let data = jsonwebtoken::decode::<Map<String, Value>>(token, &self.key, &self.validation)
            .map_err(|error| classify(error.kind()))?;
        let claims = data.claims;
        let expires_at =
            claims
                .get("exp")
                .and_then(Value::as_u64)
                .ok_or(SessionError::Invalid {
                    reason: "claim_invalid",
                })?;
        let user_id = match claims.get(&self.user_claim) {
            Some(Value::String(id)) if !id.is_empty() && id.len() <= MAX_USER_ID_LEN => {
                Arc::from(id.as_str())
            }
            Some(Value::Number(id)) => Arc::from(id.to_string()),
            Some(_) => {
                return Err(SessionError::Invalid {
                    reason: "claim_invalid",
                });
            }
            None => {
                return Err(SessionError::Invalid {
                    reason: "claim_missing",
                });
            }
        };
        let grants = match claims.get(&self.grants_claim) {
            None | Some(Value::Null) => self.default_grants,
            Some(value) => parse_grants(value).ok_or(SessionError::Invalid {
                reason: "claim_invalid",
            })?,
        };
        Ok(Session {
            user_id,
            grants,
            expires_at,
        })
    }
}

/// Reads grants from a JSON array of names, or from a space-separated string
/// as in an OAuth `scope` claim. Unknown names are ignored.
fn parse_grants(value: &Value) -> Option<Grants> {
    let add = |grants: Grants, name: &str| match Grant::from_name(name) {
        Some(grant) => grants.with(grant),
        None => grants,
    };
    match value {
        Value::Array(items) => items.iter().try_fold(Grants::NONE, |grants, item| {
            item.as_str().map(|name| add(grants, name))
        }),
        Value::String(names) => Some(names.split(' ').fold(Grants::NONE, add)),
        _ => None,
    }
}

fn classify(kind: &ErrorKind) -> SessionError {
    let reason = match kind {
        ErrorKind::ExpiredSignature => return SessionError::Expired,
        ErrorKind::InvalidSignature => "bad_signature",
        ErrorKind::InvalidAlgorithm
        | ErrorKind::InvalidAlgorithmName
        | ErrorKind::MissingAlgorithm => "wrong_algorithm",
        ErrorKind::InvalidIssuer => "wrong_issuer",
        ErrorKind::InvalidAudience => "wrong_audience",
        ErrorKind::ImmatureSignature => "not_yet_valid",
        ErrorKind::MissingRequiredClaim(_) => "claim_missing",
        ErrorKind::InvalidClaimFormat(_) => "claim_invalid",
        _ => "malformed",
    };
    SessionError::Invalid { reason }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs())
}

/// Keeps a cached session until its `exp` plus the leeway.
struct UntilSessionExpiry {
    leeway: u64,
}

impl moka::Expiry<Arc<str>, Arc<Session>> for UntilSessionExpiry {
    fn expire_after_create(
        &self,
        _token: &Arc<str>,
        session: &Arc<Session>,
        _created_at: Instant,
    ) -> Option<Duration> {
        let until = session.expires_at.saturating_add(self.leeway);
        Some(Duration::from_secs(until.saturating_sub(unix_now())))
    }
}

/// Loads the key that verifies session JWTs. `read_env` looks up an
/// environment variable, so tests can supply their own.
pub fn load_decoding_key(
    config: &SessionConfig,
    read_env: impl Fn(&str) -> Option<String>,
) -> Result<DecodingKey, ConfigError> {
    match &config.key {
        SessionKeySource::SecretEnv(name) => {
            let secret = read_env(name).ok_or_else(|| ConfigError::Invalid {
                key: "session.secret_env".to_owned(),
                message: format!(
                    "environment variable {name} is not set; put the session signing secret there or use session.secret_file"
                ),
            })?;
            hmac_key("session.secret_env", secret.as_bytes())
        }
        SessionKeySource::SecretFile(path) => {
            let bytes = read_key_file("session.secret_file", path)?;
            hmac_key("session.secret_file", trim_line_end(&bytes))
        }
        SessionKeySource::PublicKeyFile(path) => {
            let pem = read_key_file("session.public_key_file", path)?;
            // jsonwebtoken loads an RSA private key here without complaint,
            // and every signature check would then fail.
            const PRIVATE_KEY_LABEL: &[u8] = b"PRIVATE KEY";
            if pem
                .windows(PRIVATE_KEY_LABEL.len())
                .any(|window| window == PRIVATE_KEY_LABEL)
            {
                return Err(ConfigError::Invalid {
                    key: "session.public_key_file".to_owned(),
                    message: format!(
                        "{} contains a private key; give the matching PEM public key instead",
                        path.display()
                    ),
                });
            }
            let parsed = match config.algorithms[0] {
                Algorithm::ES256 | Algorithm::ES384 => DecodingKey::from_ec_pem(&pem),
                Algorithm::EdDSA => DecodingKey::from_ed_pem(&pem),
                _ => DecodingKey::from_rsa_pem(&pem),
            };
            parsed.map_err(|_| ConfigError::Invalid {
                key: "session.public_key_file".to_owned(),
                message: format!(
                    "{} is not a PEM public key of the type session.algorithms needs",
                    path.display()
                ),
            })
        }
    }
}

fn hmac_key(key: &str, secret: &[u8]) -> Result<DecodingKey, ConfigError> {
    if secret.len() < MIN_HMAC_SECRET_LEN {
        return Err(ConfigError::Invalid {
            key: key.to_owned(),
            message: format!(
                "the session secret is {} bytes; use at least {MIN_HMAC_SECRET_LEN} random bytes",
                secret.len()
            ),
        });
    }
    DecodingKey::from_secret(secret).map_err(|_| ConfigError::Invalid {
        key: key.to_owned(),
        message: "the session secret cannot be used as an HMAC key".to_owned(),
    })
}

fn read_key_file(key: &str, path: &Path) -> Result<Vec<u8>, ConfigError> {
    std::fs::read(path).map_err(|error| ConfigError::Invalid {
        key: key.to_owned(),
        message: format!("cannot read {}: {error}", path.display()),
    })
}

/// Drops one trailing `\n` or `\r\n`, which editors and `echo` add to secret files.
fn trim_line_end(bytes: &[u8]) -> &[u8] {
    let bytes = bytes.strip_suffix(b"\n").unwrap_or(bytes);
    bytes.strip_suffix(b"\r").unwrap_or(bytes)
}

#[cfg(test)]
mod tests;
