#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

use super::*;
use crate::config::{Config, DEFAULT_SECRET_ENV, SessionConfig};
use crate::routes::{Grant, Grants};
use crate::session::{Session, SessionError};

/// HMAC secret that the verifiers under test read from their environment.
const SECRET: &str = "session-secret-for-unit-tests-0123456789";
/// A second valid secret, for tokens signed with the wrong key.
const OTHER_SECRET: &str = "some-other-secret-that-is-long-enough-too";
/// Base64url of `{"alg":"none","typ":"JWT"}`.
const ALG_NONE_HEADER: &str = "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0";

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Builds a `SessionConfig` from the body of a `[session]` table.
fn session_config(session_keys: &str) -> SessionConfig {
    let text = format!("[session]\n{session_keys}\n");
    Config::from_toml_str(&text, Vec::new()).unwrap().session
}

/// Formats `path` as a TOML string.
fn toml_path(path: &Path) -> String {
    toml::Value::String(path.display().to_string()).to_string()
}

/// Looks up `name` in a fake environment where only the default secret
/// variable is set.
fn test_environment(name: &str) -> Option<String> {
    (name == DEFAULT_SECRET_ENV).then(|| SECRET.to_owned())
}

/// Builds an HMAC verifier from `[session]` keys, loading the secret the
/// way the gateway does.
fn hmac_verifier(session_keys: &str) -> SessionVerifier {
    let config = session_config(session_keys);
    let key = load_decoding_key(&config, test_environment).unwrap();
    SessionVerifier::new(&config, key)
}

fn default_verifier() -> SessionVerifier {
    hmac_verifier("")
}

/// Returns the message of the error from `load_decoding_key`. A key that
/// loads fails the test without being formatted.
fn key_error(config: &SessionConfig, read_env: impl Fn(&str) -> Option<String>) -> String {
    match load_decoding_key(config, read_env) {
        Ok(_) => panic!("the session key was accepted"),
        Err(error) => error.to_string(),
    }
}

fn sign(algorithm: Algorithm, claims: &Value, key: &EncodingKey) -> String {
    jsonwebtoken::encode(&Header::new(algorithm), claims, key).unwrap()
}

fn sign_with_secret(algorithm: Algorithm, claims: &Value, secret: &str) -> String {
    sign(
        algorithm,
        claims,
        &EncodingKey::from_secret(secret.as_bytes()).unwrap(),
    )
}

fn sign_hs256(claims: &Value) -> String {
    sign_with_secret(Algorithm::HS256, claims, SECRET)
}

/// Claims that every default verifier accepts: a user and an `exp` ten
/// minutes ahead.
fn valid_claims() -> Value {
    json!({ "sub": "user-1", "exp": now() + 600 })
}

fn claims_with(name: &str, value: Value) -> Value {
    let mut claims = valid_claims();
    claims[name] = value;
    claims
}

fn claims_without(name: &str) -> Value {
    let mut claims = valid_claims();
    claims.as_object_mut().unwrap().remove(name);
    claims
}

fn rejection(verifier: &SessionVerifier, token: &str) -> SessionError {
    verifier.verify(token).unwrap_err()
}

fn accepted(verifier: &SessionVerifier, token: &str) -> Arc<Session> {
    verifier.verify(token).unwrap()
}

fn both_grants() -> Grants {
    Grants::of(Grant::Tts).with(Grant::Stt)
}

// Accepted sessions.

#[test]
fn hs256_session_is_accepted() {
    let exp = now() + 600;
    let token = sign_hs256(&json!({ "sub": "user-1", "exp": exp }));
    let session = accepted(&default_verifier(), &token);
    assert_eq!(&*session.user_id, "user-1");
    assert_eq!(session.grants, Grants::NONE);
    assert_eq!(session.expires_at, exp);
}

#[test]
fn hs384_session_is_accepted() {
    let verifier = hmac_verifier("algorithms = [\"HS384\"]");
    let token = sign_with_secret(Algorithm::HS384, &valid_claims(), SECRET);
    assert_eq!(&*accepted(&verifier, &token).user_id, "user-1");
}

#[test]
fn hs512_session_is_accepted() {
    let verifier = hmac_verifier("algorithms = [\"HS512\"]");
    let token = sign_with_secret(Algorithm::HS512, &valid_claims(), SECRET);
    assert_eq!(&*accepted(&verifier, &token).user_id, "user-1");
}

#[test]
fn every_pinned_hmac_algorithm_is_accepted() {
    let verifier = hmac_verifier("algorithms = [\"HS256\", \"HS512\"]");
    for algorithm in [Algorithm::HS256, Algorithm::HS512] {
        let token = sign_with_secret(algorithm, &valid_claims(), SECRET);
        assert!(verifier.verify(&token).is_ok(), "{algorithm:?}");
    }
}

// Signature and algorithm failures.

#[test]
fn alg_none_token_is_rejected() {
    let signed = sign_hs256(&valid_claims());
    let payload = signed.split('.').nth(1).unwrap();
    let unsigned = format!("{ALG_NONE_HEADER}.{payload}.");
    let error = rejection(&default_verifier(), &unsigned);
    // jsonwebtoken has no `none` algorithm, so the header fails to parse.
    assert_eq!(
        error,
        SessionError::Invalid {
            reason: "malformed"
        }
    );
    assert_eq!(error.reason(), "malformed");
}

#[test]
fn alg_none_with_signature_is_rejected() {
    let signed = sign_hs256(&valid_claims());
    let (_, rest) = signed.split_once('.').unwrap();
    let relabelled = format!("{ALG_NONE_HEADER}.{rest}");
    let error = rejection(&default_verifier(), &relabelled);
    assert_eq!(
        error,
        SessionError::Invalid {
            reason: "malformed"
        }
    );
}

#[test]
fn other_secret_signature_is_rejected() {
    let token = sign_with_secret(Algorithm::HS256, &valid_claims(), OTHER_SECRET);
    let error = rejection(&default_verifier(), &token);
    assert_eq!(
        error,
        SessionError::Invalid {
            reason: "bad_signature"
        }
    );
    assert_eq!(error.reason(), "bad_signature");
}

#[test]
fn tampered_payload_is_rejected() {
    let genuine = sign_hs256(&valid_claims());
    let forged = sign_hs256(&claims_with("sub", json!("admin")));
    let genuine_parts: Vec<&str> = genuine.split('.').collect();
    let forged_payload = forged.split('.').nth(1).unwrap();
    let tampered = format!("{}.{forged_payload}.{}", genuine_parts[0], genuine_parts[2]);
    let error = rejection(&default_verifier(), &tampered);
    assert_eq!(
        error,
        SessionError::Invalid {
            reason: "bad_signature"
        }
    );
}

#[test]
fn unpinned_hmac_algorithm_is_rejected() {
    let token = sign_with_secret(Algorithm::HS512, &valid_claims(), SECRET);
    let error = rejection(&default_verifier(), &token);
    assert_eq!(
        error,
        SessionError::Invalid {
            reason: "wrong_algorithm"
        }
    );
    assert_eq!(error.reason(), "wrong_algorithm");
}

#[test]
fn malformed_token_is_rejected() {
    let verifier = default_verifier();
    for token in ["", "not-a-jwt", "a.b", "a.b.c", "...."] {
        let error = rejection(&verifier, token);
        assert_eq!(
            error,
            SessionError::Invalid {
                reason: "malformed"
            },
            "token {token:?}"
        );
    }
}

// Time claims.

#[test]
fn missing_exp_is_rejected() {
    let token = sign_hs256(&claims_without("exp"));
    let error = rejection(&default_verifier(), &token);
    assert_eq!(
        error,
        SessionError::Invalid {
            reason: "claim_missing"
        }
    );
    assert_eq!(error.reason(), "claim_missing");
}

#[test]
fn non_numeric_exp_is_rejected() {
    let token = sign_hs256(&claims_with("exp", json!("tomorrow")));
    let error = rejection(&default_verifier(), &token);
    // jsonwebtoken counts a required claim that it cannot parse as missing.
    assert_eq!(
        error,
        SessionError::Invalid {
            reason: "claim_missing"
        }
    );
    assert_eq!(error.reason(), "claim_missing");
}

#[test]
fn expired_session_is_rejected() {
    let token = sign_hs256(&claims_with("exp", json!(now() - 120)));
    let error = rejection(&default_verifier(), &token);
    assert_eq!(error, SessionError::Expired);
    assert_eq!(error.reason(), "expired");
    assert_eq!(error.code(), "session_expired");
}

#[test]
fn expiry_within_leeway_is_accepted() {
    let token = sign_hs256(&claims_with("exp", json!(now() - 10)));
    assert!(default_verifier().verify(&token).is_ok());
}

#[test]
fn zero_leeway_rejects_past_exp() {
    let verifier = hmac_verifier("leeway_secs = 0");
    let token = sign_hs256(&claims_with("exp", json!(now() - 5)));
    assert_eq!(rejection(&verifier, &token), SessionError::Expired);
}

#[test]
fn future_nbf_is_rejected() {
    let token = sign_hs256(&claims_with("nbf", json!(now() + 300)));
    let error = rejection(&default_verifier(), &token);
    assert_eq!(
        error,
        SessionError::Invalid {
            reason: "not_yet_valid"
        }
    );
    assert_eq!(error.reason(), "not_yet_valid");
}

#[test]
fn nbf_within_leeway_is_accepted() {
    let token = sign_hs256(&claims_with("nbf", json!(now() + 10)));
    assert!(default_verifier().verify(&token).is_ok());
}

// Issuer and audience.

#[test]
fn configured_issuer_is_accepted() {
    let verifier = hmac_verifier("issuer = \"https://auth.example.com\"");
    let token = sign_hs256(&claims_with("iss", json!("https://auth.example.com")));
    assert!(verifier.verify(&token).is_ok());
}

#[test]
fn wrong_issuer_is_rejected() {
    let verifier = hmac_verifier("issuer = \"https://auth.example.com\"");
    let token = sign_hs256(&claims_with("iss", json!("https://evil.example.com")));
    let error = rejection(&verifier, &token);
    assert_eq!(
        error,
        SessionError::Invalid {
            reason: "wrong_issuer"
        }
    );
    assert_eq!(error.reason(), "wrong_issuer");
}

#[test]
fn missing_issuer_is_rejected() {
    let verifier = hmac_verifier("issuer = \"https://auth.example.com\"");
    let error = rejection(&verifier, &sign_hs256(&valid_claims()));
    assert_eq!(
        error,
        SessionError::Invalid {
            reason: "claim_missing"
        }
    );
    assert_eq!(error.reason(), "claim_missing");
}

#[test]
fn issuer_is_ignored_unless_configured() {
    let token = sign_hs256(&claims_with("iss", json!("https://anyone.example.com")));
    assert!(default_verifier().verify(&token).is_ok());
}

#[test]
fn configured_audience_is_accepted() {
    let verifier = hmac_verifier("audience = \"voice-app\"");
    let token = sign_hs256(&claims_with("aud", json!("voice-app")));
    assert!(verifier.verify(&token).is_ok());
}

#[test]
fn audience_list_with_match_is_accepted() {
    let verifier = hmac_verifier("audience = \"voice-app\"");
    let token = sign_hs256(&claims_with("aud", json!(["billing", "voice-app"])));
    assert!(verifier.verify(&token).is_ok());
}

#[test]
fn wrong_audience_is_rejected() {
    let verifier = hmac_verifier("audience = \"voice-app\"");
    let token = sign_hs256(&claims_with("aud", json!("billing")));
    let error = rejection(&verifier, &token);
    assert_eq!(
        error,
        SessionError::Invalid {
            reason: "wrong_audience"
        }
    );
    assert_eq!(error.reason(), "wrong_audience");
}

#[test]
fn missing_audience_is_rejected() {
    let verifier = hmac_verifier("audience = \"voice-app\"");
    let error = rejection(&verifier, &sign_hs256(&valid_claims()));
    assert_eq!(
        error,
        SessionError::Invalid {
            reason: "claim_missing"
        }
    );
    assert_eq!(error.reason(), "claim_missing");
}

#[test]
fn unconfigured_audience_is_accepted() {
    let token = sign_hs256(&claims_with("aud", json!("voice-app")));
    assert!(default_verifier().verify(&token).is_ok());
}

// The user claim.

#[test]
fn missing_user_claim_is_rejected() {
    let token = sign_hs256(&claims_without("sub"));
    let error = rejection(&default_verifier(), &token);
    assert_eq!(
        error,
        SessionError::Invalid {
            reason: "claim_missing"
        }
    );
    assert_eq!(error.reason(), "claim_missing");
}

#[test]
fn empty_user_id_is_rejected() {
    let token = sign_hs256(&claims_with("sub", json!("")));
    let error = rejection(&default_verifier(), &token);
    assert_eq!(
        error,
        SessionError::Invalid {
            reason: "claim_invalid"
        }
    );
    assert_eq!(error.reason(), "claim_invalid");
}

#[test]
fn overlong_user_id_is_rejected() {
    let token = sign_hs256(&claims_with("sub", json!("u".repeat(257))));
    let error = rejection(&default_verifier(), &token);
    assert_eq!(
        error,
        SessionError::Invalid {
            reason: "claim_invalid"
        }
    );
}

#[test]
fn user_id_of_256_bytes_is_accepted() {
    let user_id = "u".repeat(256);
    let token = sign_hs256(&claims_with("sub", json!(user_id)));
    assert_eq!(&*accepted(&default_verifier(), &token).user_id, user_id);
}

#[test]
fn user_id_limit_counts_bytes() {
    // 129 two-byte characters are 258 bytes.
    let token = sign_hs256(&claims_with("sub", json!("\u{e9}".repeat(129))));
    let error = rejection(&default_verifier(), &token);
    assert_eq!(
        error,
        SessionError::Invalid {
            reason: "claim_invalid"
        }
    );
}

#[test]
fn non_string_user_id_is_rejected() {
    let verifier = hmac_verifier("user_claim = \"uid\"");
    for value in [
        json!(true),
        json!(["user-1"]),
        json!({ "id": "user-1" }),
        Value::Null,
    ] {
        let token = sign_hs256(&claims_with("uid", value.clone()));
        assert_eq!(
            rejection(&verifier, &token),
            SessionError::Invalid {
                reason: "claim_invalid"
            },
            "user claim {value}"
        );
    }
}

#[test]
fn scalar_non_string_sub_is_rejected() {
    let verifier = default_verifier();
    for value in [json!(true), Value::Null] {
        let token = sign_hs256(&claims_with("sub", value.clone()));
        assert_eq!(
            rejection(&verifier, &token),
            SessionError::Invalid {
                reason: "claim_invalid"
            },
            "sub {value}"
        );
    }
}

#[test]
fn structured_sub_is_rejected() {
    let verifier = default_verifier();
    for value in [json!(["user-1"]), json!({ "id": "user-1" })] {
        let token = sign_hs256(&claims_with("sub", value.clone()));
        // jsonwebtoken reads `sub` itself and fails on an array or object
        // before the user claim is looked at.
        assert_eq!(
            rejection(&verifier, &token),
            SessionError::Invalid {
                reason: "malformed"
            },
            "sub {value}"
        );
    }
}

#[test]
fn numeric_user_id_is_accepted() {
    let token = sign_hs256(&claims_with("sub", json!(42)));
    assert_eq!(&*accepted(&default_verifier(), &token).user_id, "42");
}

#[test]
fn custom_user_claim_is_used() {
    let verifier = hmac_verifier("user_claim = \"uid\"");
    let token = sign_hs256(&claims_with("uid", json!("user-7")));
    assert_eq!(&*accepted(&verifier, &token).user_id, "user-7");
}

#[test]
fn custom_user_claim_ignores_sub() {
    let verifier = hmac_verifier("user_claim = \"uid\"");
    let error = rejection(&verifier, &sign_hs256(&valid_claims()));
    assert_eq!(
        error,
        SessionError::Invalid {
            reason: "claim_missing"
        }
    );
}

// The grants claim.

#[test]
fn grants_array_is_read() {
    let token = sign_hs256(&claims_with("grants", json!(["tts", "stt"])));
    assert_eq!(accepted(&default_verifier(), &token).grants, both_grants());
}

#[test]
fn single_grant_array_is_read() {
    let token = sign_hs256(&claims_with("grants", json!(["stt"])));
    assert_eq!(
        accepted(&default_verifier(), &token).grants,
        Grants::of(Grant::Stt)
    );
}

#[test]
fn space_separated_grants_are_read() {
    let token = sign_hs256(&claims_with("grants", json!("tts stt")));
    assert_eq!(accepted(&default_verifier(), &token).grants, both_grants());
}

#[test]
fn unknown_grant_names_are_ignored() {
    let verifier = default_verifier();
    let from_array = sign_hs256(&claims_with("grants", json!(["tts", "admin", "TTS"])));
    let from_string = sign_hs256(&claims_with("grants", json!("admin  tts")));
    assert_eq!(
        accepted(&verifier, &from_array).grants,
        Grants::of(Grant::Tts)
    );
    assert_eq!(
        accepted(&verifier, &from_string).grants,
        Grants::of(Grant::Tts)
    );
}

#[test]
fn absent_grants_use_default() {
    let verifier = hmac_verifier("default_grants = [\"stt\"]");
    let token = sign_hs256(&valid_claims());
    assert_eq!(accepted(&verifier, &token).grants, Grants::of(Grant::Stt));
}

#[test]
fn null_grants_use_default() {
    let verifier = hmac_verifier("default_grants = [\"tts\", \"stt\"]");
    let token = sign_hs256(&claims_with("grants", Value::Null));
    assert_eq!(accepted(&verifier, &token).grants, both_grants());
}

#[test]
fn empty_grants_override_default() {
    let verifier = hmac_verifier("default_grants = [\"tts\"]");
    let token = sign_hs256(&claims_with("grants", json!([])));
    assert_eq!(accepted(&verifier, &token).grants, Grants::NONE);
}

#[test]
fn custom_grants_claim_is_used() {
    let verifier = hmac_verifier("grants_claim = \"permissions\"\ndefault_grants = [\"stt\"]");
    let mut claims = claims_with("permissions", json!(["tts"]));
    claims["grants"] = json!(["stt"]);
    let token = sign_hs256(&claims);
    assert_eq!(accepted(&verifier, &token).grants, Grants::of(Grant::Tts));
}

#[test]
fn wrong_type_grants_are_rejected() {
    let verifier = default_verifier();
    for value in [
        json!(3),
        json!(true),
        json!({ "tts": true }),
        json!(["tts", 1]),
    ] {
        let token = sign_hs256(&claims_with("grants", value.clone()));
        let error = rejection(&verifier, &token);
        assert_eq!(
            error,
            SessionError::Invalid {
                reason: "claim_invalid"
            },
            "grants claim {value}"
        );
    }
}

// The cache of verified sessions.

#[test]
fn same_token_returns_cached_session() {
    let verifier = default_verifier();
    let token = sign_hs256(&valid_claims());
    let first = accepted(&verifier, &token);
    let second = accepted(&verifier, &token);
    assert!(Arc::ptr_eq(&first, &second));
}

#[test]
fn different_tokens_get_own_sessions() {
    let verifier = default_verifier();
    let first = accepted(&verifier, &sign_hs256(&valid_claims()));
    let second = accepted(&verifier, &sign_hs256(&claims_with("sub", json!("user-2"))));
    assert!(!Arc::ptr_eq(&first, &second));
    assert_eq!(&*second.user_id, "user-2");
}

#[test]
fn failed_token_stays_rejected() {
    let verifier = default_verifier();
    let token = sign_with_secret(Algorithm::HS256, &valid_claims(), OTHER_SECRET);
    assert!(verifier.verify(&token).is_err());
    assert_eq!(
        rejection(&verifier, &token),
        SessionError::Invalid {
            reason: "bad_signature"
        }
    );
}

#[test]
fn cached_session_expires_with_token() {
    // The verifier reads the system clock, so this test waits in real time
    // for the token to pass its `exp`.
    let verifier = hmac_verifier("leeway_secs = 0");
    let token = sign_hs256(&claims_with("exp", json!(now() + 1)));
    assert!(verifier.verify(&token).is_ok());
    std::thread::sleep(Duration::from_millis(2100));
    assert_eq!(rejection(&verifier, &token), SessionError::Expired);
}

// Loading HMAC secrets.

#[test]
fn secret_env_variable_is_read() {
    let config = session_config("secret_env = \"APP_JWT_SECRET\"");
    let read_env = |name: &str| (name == "APP_JWT_SECRET").then(|| SECRET.to_owned());
    let verifier = SessionVerifier::new(&config, load_decoding_key(&config, read_env).unwrap());
    assert!(verifier.verify(&sign_hs256(&valid_claims())).is_ok());
}

#[test]
fn missing_secret_variable_is_reported() {
    let config = session_config("secret_env = \"APP_JWT_SECRET\"");
    let message = key_error(&config, |_| None);
    assert!(message.contains("`session.secret_env`"), "{message}");
    assert!(message.contains("APP_JWT_SECRET"), "{message}");
}

#[test]
fn short_env_secret_is_rejected() {
    let short = "x".repeat(MIN_HMAC_SECRET_LEN - 1);
    let config = session_config("");
    let message = key_error(&config, |_| Some(short.clone()));
    assert!(message.contains("`session.secret_env`"), "{message}");
    assert!(!message.contains(&short), "{message}");
}

#[test]
fn secret_of_minimum_length_is_accepted() {
    let config = session_config("");
    let secret = "k".repeat(MIN_HMAC_SECRET_LEN);
    assert!(load_decoding_key(&config, |_| Some(secret.clone())).is_ok());
}

#[test]
fn short_file_secret_is_rejected() {
    let directory = tempfile::tempdir().unwrap();
    let path = directory.path().join("session-secret");
    std::fs::write(&path, "short-secret\n").unwrap();
    let config = session_config(&format!("secret_file = {}", toml_path(&path)));
    let message = key_error(&config, |_| None);
    assert!(message.contains("`session.secret_file`"), "{message}");
    assert!(!message.contains("short-secret"), "{message}");
}

#[test]
fn secret_file_trailing_newline_is_dropped() {
    let directory = tempfile::tempdir().unwrap();
    for (name, contents) in [
        ("lf", format!("{SECRET}\n")),
        ("crlf", format!("{SECRET}\r\n")),
        ("bare", SECRET.to_owned()),
    ] {
        let path = directory.path().join(name);
        std::fs::write(&path, contents).unwrap();
        let config = session_config(&format!("secret_file = {}", toml_path(&path)));
        let key = load_decoding_key(&config, |_| None).unwrap();
        let verifier = SessionVerifier::new(&config, key);
        assert!(
            verifier.verify(&sign_hs256(&valid_claims())).is_ok(),
            "secret file ending {name}"
        );
    }
}

#[test]
fn missing_secret_file_is_reported() {
    let directory = tempfile::tempdir().unwrap();
    let path = directory.path().join("no-such-secret");
    let config = session_config(&format!("secret_file = {}", toml_path(&path)));
    let message = key_error(&config, |_| None);
    assert!(message.contains("`session.secret_file`"), "{message}");
    assert!(message.contains(&path.display().to_string()), "{message}");
}

#[test]
fn directory_as_secret_file_is_rejected() {
    let directory = tempfile::tempdir().unwrap();
    let config = session_config(&format!("secret_file = {}", toml_path(directory.path())));
    let message = key_error(&config, |_| None);
    assert!(message.contains("`session.secret_file`"), "{message}");
}

#[test]
fn missing_public_key_file_is_reported() {
    let directory = tempfile::tempdir().unwrap();
    let path = directory.path().join("no-such-key.pem");
    let config = session_config(&format!(
        "algorithms = [\"ES256\"]\npublic_key_file = {}",
        toml_path(&path)
    ));
    let message = key_error(&config, |_| None);
    assert!(message.contains("`session.public_key_file`"), "{message}");
    assert!(message.contains(&path.display().to_string()), "{message}");
}

#[test]
fn non_pem_public_key_is_rejected() {
    let directory = tempfile::tempdir().unwrap();
    let path = directory.path().join("session-public.pem");
    std::fs::write(&path, "not a PEM file\n").unwrap();
    for algorithm in ["RS256", "ES256", "EdDSA"] {
        let config = session_config(&format!(
            "algorithms = [\"{algorithm}\"]\npublic_key_file = {}",
            toml_path(&path)
        ));
        let message = key_error(&config, |_| None);
        assert!(
            message.contains("`session.public_key_file`"),
            "{algorithm}: {message}"
        );
    }
}

/// Public-key algorithms, signed with key pairs generated at test time.
mod public_key {
    use std::path::PathBuf;

    use rcgen::{
        KeyPair, PKCS_ECDSA_P256_SHA256, PKCS_ED25519, PKCS_RSA_SHA256, SignatureAlgorithm,
    };
    use tempfile::TempDir;

    use super::*;

    type ToEncodingKey = fn(&[u8]) -> jsonwebtoken::errors::Result<EncodingKey>;

    /// A generated key pair whose public half is written to a PEM file.
    struct SigningKey {
        encoding_key: EncodingKey,
        public_key_pem: String,
        public_key_file: PathBuf,
        _directory: TempDir,
    }

    fn generate(
        algorithm: &'static SignatureAlgorithm,
        to_encoding_key: ToEncodingKey,
    ) -> SigningKey {
        let key_pair = KeyPair::generate_for(algorithm).unwrap();
        let directory = tempfile::tempdir().unwrap();
        let public_key_file = directory.path().join("session-public.pem");
        let public_key_pem = key_pair.public_key_pem();
        std::fs::write(&public_key_file, &public_key_pem).unwrap();
        SigningKey {
            encoding_key: to_encoding_key(key_pair.serialize_pem().as_bytes()).unwrap(),
            public_key_pem,
            public_key_file,
            _directory: directory,
        }
    }

    fn rsa_key() -> SigningKey {
        generate(&PKCS_RSA_SHA256, EncodingKey::from_rsa_pem)
    }

    fn ec_key() -> SigningKey {
        generate(&PKCS_ECDSA_P256_SHA256, EncodingKey::from_ec_pem)
    }

    fn ed25519_key() -> SigningKey {
        generate(&PKCS_ED25519, EncodingKey::from_ed_pem)
    }

    fn public_key_config(algorithm: &str, path: &Path) -> SessionConfig {
        session_config(&format!(
            "algorithms = [\"{algorithm}\"]\npublic_key_file = {}",
            toml_path(path)
        ))
    }

    fn public_key_verifier(algorithm: &str, key: &SigningKey) -> SessionVerifier {
        let config = public_key_config(algorithm, &key.public_key_file);
        let decoding_key: DecodingKey = load_decoding_key(&config, |_| None).unwrap();
        SessionVerifier::new(&config, decoding_key)
    }

    #[test]
    fn rs256_session_is_accepted() {
        let key = rsa_key();
        let verifier = public_key_verifier("RS256", &key);
        let token = sign(Algorithm::RS256, &valid_claims(), &key.encoding_key);
        assert_eq!(&*accepted(&verifier, &token).user_id, "user-1");
    }

    #[test]
    fn es256_session_is_accepted() {
        let key = ec_key();
        let verifier = public_key_verifier("ES256", &key);
        let token = sign(Algorithm::ES256, &valid_claims(), &key.encoding_key);
        assert_eq!(&*accepted(&verifier, &token).user_id, "user-1");
    }

    #[test]
    fn eddsa_session_is_accepted() {
        let key = ed25519_key();
        let verifier = public_key_verifier("EdDSA", &key);
        let token = sign(Algorithm::EdDSA, &valid_claims(), &key.encoding_key);
        assert_eq!(&*accepted(&verifier, &token).user_id, "user-1");
    }

    #[test]
    fn other_key_pair_signature_is_rejected() {
        let verifier = public_key_verifier("ES256", &ec_key());
        let token = sign(Algorithm::ES256, &valid_claims(), &ec_key().encoding_key);
        let error = rejection(&verifier, &token);
        assert_eq!(
            error,
            SessionError::Invalid {
                reason: "bad_signature"
            }
        );
        assert_eq!(error.reason(), "bad_signature");
    }

    #[test]
    fn other_ed25519_signature_is_rejected() {
        let verifier = public_key_verifier("EdDSA", &ed25519_key());
        let token = sign(
            Algorithm::EdDSA,
            &valid_claims(),
            &ed25519_key().encoding_key,
        );
        assert_eq!(
            rejection(&verifier, &token),
            SessionError::Invalid {
                reason: "bad_signature"
            }
        );
    }

    #[test]
    fn hmac_with_public_key_is_rejected() {
        let key = rsa_key();
        let verifier = public_key_verifier("RS256", &key);
        let token = sign_with_secret(Algorithm::HS256, &valid_claims(), &key.public_key_pem);
        let error = rejection(&verifier, &token);
        assert_eq!(
            error,
            SessionError::Invalid {
                reason: "wrong_algorithm"
            }
        );
        assert_eq!(error.reason(), "wrong_algorithm");
    }

    #[test]
    fn unpinned_public_key_algorithm_is_rejected() {
        let verifier = public_key_verifier("EdDSA", &ed25519_key());
        let token = sign(Algorithm::ES256, &valid_claims(), &ec_key().encoding_key);
        assert_eq!(
            rejection(&verifier, &token),
            SessionError::Invalid {
                reason: "wrong_algorithm"
            }
        );
    }

    #[test]
    fn public_key_of_wrong_type_is_rejected() {
        let rsa = rsa_key();
        let ec = ec_key();
        let ed25519 = ed25519_key();
        let cases = [
            ("RS256", &ec),
            ("RS256", &ed25519),
            ("ES256", &rsa),
            ("ES256", &ed25519),
            ("EdDSA", &rsa),
            ("EdDSA", &ec),
        ];
        for (algorithm, key) in cases {
            let config = public_key_config(algorithm, &key.public_key_file);
            let message = key_error(&config, |_| None);
            assert!(
                message.contains("`session.public_key_file`"),
                "{algorithm}: {message}"
            );
        }
    }

    #[test]
    fn private_key_file_is_rejected() {
        let cases = [
            ("RS256", &PKCS_RSA_SHA256),
            ("ES256", &PKCS_ECDSA_P256_SHA256),
            ("EdDSA", &PKCS_ED25519),
        ];
        let directory = tempfile::tempdir().unwrap();
        for (algorithm, key_algorithm) in cases {
            let key_pair = KeyPair::generate_for(key_algorithm).unwrap();
            let path = directory.path().join(format!("{algorithm}-private.pem"));
            std::fs::write(&path, key_pair.serialize_pem()).unwrap();
            let config = public_key_config(algorithm, &path);
            let message = key_error(&config, |_| None);
            assert!(
                message.contains("`session.public_key_file`"),
                "{algorithm}: {message}"
            );
        }
    }

    #[test]
    fn public_key_session_checks_claims() {
        let key = ec_key();
        let config = session_config(&format!(
            "algorithms = [\"ES256\"]\npublic_key_file = {}\naudience = \"voice-app\"",
            toml_path(&key.public_key_file)
        ));
        let verifier = SessionVerifier::new(&config, load_decoding_key(&config, |_| None).unwrap());
        let token = sign(
            Algorithm::ES256,
            &claims_with("aud", json!("billing")),
            &key.encoding_key,
        );
        assert_eq!(
            rejection(&verifier, &token),
            SessionError::Invalid {
                reason: "wrong_audience"
            }
        );
    }
}
