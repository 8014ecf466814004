//! Credentials: finding the one a request presents, checking the API key, and minting and verifying
//! access tokens.
//!
//! Access tokens have the shape of Cartesia's: an HS256 JWT whose header carries a `kid` starting
//! with `ssid_` (and no `typ`) and whose payload is `{"grants", "jti", "iat", "iss":
//! "https://api.cartesia.ai", "exp"}`. They are signed with a random 32-byte secret made when the
//! stand-in is created.

use std::time::{SystemTime, UNIX_EPOCH};

use http::HeaderMap;
use http::header::AUTHORIZATION;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;

use super::params::query_param;
use super::respond::ApiError;

/// The `iss` claim of every token.
pub(crate) const ISSUER: &str = "https://api.cartesia.ai";
const API_KEY_HEADER: &str = "x-api-key";

/// A capability an access token may grant.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Grant {
    Tts,
    Stt,
}

impl Grant {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Grant::Tts => "tts",
            Grant::Stt => "stt",
        }
    }
}

/// The `grants` object of a token request and of a token's payload.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Grants {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) tts: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) stt: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) agent: Option<bool>,
}

impl Grants {
    fn allows(&self, grant: Grant) -> bool {
        let flag = match grant {
            Grant::Tts => self.tts,
            Grant::Stt => self.stt,
        };
        flag == Some(true)
    }
}

#[derive(Serialize, Deserialize)]
struct Claims {
    #[serde(default)]
    grants: Grants,
    jti: String,
    iat: u64,
    iss: String,
    exp: u64,
}

/// The credential a request presents, without its `Bearer ` prefix.
pub(crate) struct Presented {
    pub(crate) value: String,
}

/// Finds the credential of a request: `Authorization`, else `X-API-Key`, else (when `allow_query`)
/// the `access_token` and then the `api_key` query parameter.
///
/// An `Authorization` value with another scheme than `Bearer` is returned whole, so it fails
/// verification instead of counting as missing.
pub(crate) fn presented_credential(
    headers: &HeaderMap,
    query: Option<&str>,
    allow_query: bool,
) -> Option<Presented> {
    if let Some(value) = headers.get(AUTHORIZATION) {
        let value = String::from_utf8_lossy(value.as_bytes());
        let token = match value.split_once(' ') {
            Some((scheme, rest)) if scheme.eq_ignore_ascii_case("bearer") => rest.trim(),
            _ => value.trim(),
        };
        return Some(Presented {
            value: token.to_owned(),
        });
    }
    if let Some(value) = headers.get(API_KEY_HEADER) {
        let value = String::from_utf8_lossy(value.as_bytes()).trim().to_owned();
        return Some(Presented { value });
    }
    if !allow_query {
        return None;
    }
    let value = query_param(query, "access_token").or_else(|| query_param(query, "api_key"))?;
    Some(Presented { value })
}

/// Reason a credential was rejected.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum AuthError {
    Missing,
    Invalid,
    Expired,
    MissingGrant(Grant),
}

impl From<AuthError> for ApiError {
    fn from(error: AuthError) -> Self {
        match error {
            AuthError::Missing => ApiError::unauthorized(
                "missing_credentials",
                "no API key or access token was sent; use Authorization: Bearer <token> or X-API-Key",
            ),
            AuthError::Invalid => ApiError::unauthorized(
                "invalid_credentials",
                "the API key or access token is invalid",
            ),
            AuthError::Expired => ApiError::unauthorized(
                "token_expired",
                "the access token has expired; request a new one",
            ),
            AuthError::MissingGrant(grant) => ApiError::new(
                http::StatusCode::FORBIDDEN,
                "missing_grant",
                format!(
                    "the access token does not include the {} grant",
                    grant.name()
                ),
            ),
        }
    }
}

/// The API key and the token signing secret of one stand-in.
pub(crate) struct TokenSigner {
    api_key: String,
    encoding_key: EncodingKey,
    decoding_key: DecodingKey,
    validation: Validation,
}

impl TokenSigner {
    pub(crate) fn new(api_key: String) -> Self {
        let mut secret = [0u8; 32];
        rand::rng().fill_bytes(&mut secret);
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = 0;
        validation.validate_aud = false;
        validation.set_issuer(&[ISSUER]);
        validation.set_required_spec_claims(&["exp", "iss"]);
        Self {
            api_key,
            encoding_key: EncodingKey::from_secret(&secret)
                .expect("a 32-byte secret is never empty"),
            decoding_key: DecodingKey::from_secret(&secret)
                .expect("a 32-byte secret is never empty"),
            validation,
        }
    }

    /// Compares `candidate` with the API key in constant time (for equal lengths).
    pub(crate) fn is_api_key(&self, candidate: &str) -> bool {
        bool::from(candidate.as_bytes().ct_eq(self.api_key.as_bytes()))
    }

    /// Mints an access token valid for `expires_in` seconds from now.
    pub(crate) fn mint(
        &self,
        grants: Grants,
        expires_in: u64,
    ) -> Result<String, jsonwebtoken::errors::Error> {
        self.mint_at(grants, unix_now(), expires_in)
    }

    fn mint_at(
        &self,
        grants: Grants,
        issued_at: u64,
        expires_in: u64,
    ) -> Result<String, jsonwebtoken::errors::Error> {
        let mut header = Header::new(Algorithm::HS256);
        header.typ = None;
        header.kid = Some(format!("ssid_{}", random_hex(12)));
        let claims = Claims {
            grants,
            jti: random_hex(16),
            iat: issued_at,
            iss: ISSUER.to_owned(),
            exp: issued_at + expires_in,
        };
        jsonwebtoken::encode(&header, &claims, &self.encoding_key)
    }

    /// Accepts the API key, or an unexpired access token from this stand-in that grants `grant`.
    pub(crate) fn authorize(
        &self,
        credential: Option<&str>,
        grant: Grant,
    ) -> Result<(), AuthError> {
        let credential = credential.ok_or(AuthError::Missing)?;
        if credential.is_empty() {
            return Err(AuthError::Missing);
        }
        if self.is_api_key(credential) {
            return Ok(());
        }
        let claims =
            jsonwebtoken::decode::<Claims>(credential, &self.decoding_key, &self.validation)
                .map_err(|error| match error.kind() {
                    ErrorKind::ExpiredSignature => AuthError::Expired,
                    _ => AuthError::Invalid,
                })?
                .claims;
        if claims.grants.allows(grant) {
            Ok(())
        } else {
            Err(AuthError::MissingGrant(grant))
        }
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs())
}

fn random_hex(bytes: usize) -> String {
    let mut buffer = vec![0u8; bytes];
    rand::rng().fill_bytes(&mut buffer);
    buffer.iter().map(|byte| format!("{byte:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;

    use super::*;

    const KEY: &str = "sk_car_test_key";

    fn tts_only() -> Grants {
        Grants {
            tts: Some(true),
            ..Grants::default()
        }
    }

    fn decode_part(token: &str, index: usize) -> serde_json::Value {
        let part = token.split('.').nth(index).expect("three JWT parts");
        let json = URL_SAFE_NO_PAD.decode(part).expect("base64url part");
        serde_json::from_slice(&json).expect("JSON part")
    }

    #[test]
    fn minted_token_has_cartesia_shape() {
        let signer = TokenSigner::new(KEY.to_owned());
        let token = signer.mint(tts_only(), 60).expect("mint");

        let header = decode_part(&token, 0);
        assert_eq!(header["alg"], "HS256");
        assert!(
            header["kid"]
                .as_str()
                .is_some_and(|kid| kid.starts_with("ssid_"))
        );
        assert!(header.get("typ").is_none());

        let payload = decode_part(&token, 1);
        assert_eq!(payload["grants"], serde_json::json!({"tts": true}));
        assert_eq!(payload["iss"], ISSUER);
        let iat = payload["iat"].as_u64().expect("iat");
        assert_eq!(payload["exp"].as_u64(), Some(iat + 60));
        assert!(payload["jti"].as_str().is_some_and(|jti| !jti.is_empty()));
    }

    #[test]
    fn authorize_checks_grant_and_key() {
        let signer = TokenSigner::new(KEY.to_owned());
        let token = signer.mint(tts_only(), 60).expect("mint");

        assert_eq!(signer.authorize(Some(&token), Grant::Tts), Ok(()));
        assert_eq!(
            signer.authorize(Some(&token), Grant::Stt),
            Err(AuthError::MissingGrant(Grant::Stt))
        );
        assert_eq!(signer.authorize(Some(KEY), Grant::Stt), Ok(()));
        assert_eq!(
            signer.authorize(Some("sk_car_other"), Grant::Tts),
            Err(AuthError::Invalid)
        );
        assert_eq!(signer.authorize(None, Grant::Tts), Err(AuthError::Missing));
        assert_eq!(
            signer.authorize(Some(""), Grant::Tts),
            Err(AuthError::Missing)
        );
    }

    #[test]
    fn expired_token_is_rejected() {
        let signer = TokenSigner::new(KEY.to_owned());
        let token = signer
            .mint_at(tts_only(), unix_now() - 120, 60)
            .expect("mint");
        assert_eq!(
            signer.authorize(Some(&token), Grant::Tts),
            Err(AuthError::Expired)
        );
    }

    #[test]
    fn foreign_tampered_and_unsigned_tokens_are_rejected() {
        let signer = TokenSigner::new(KEY.to_owned());
        let other = TokenSigner::new(KEY.to_owned());
        let foreign = other.mint(tts_only(), 60).expect("mint");
        assert_eq!(
            signer.authorize(Some(&foreign), Grant::Tts),
            Err(AuthError::Invalid)
        );

        let token = signer.mint(tts_only(), 60).expect("mint");
        let (signed, _signature) = token.rsplit_once('.').expect("signature part");
        let tampered = format!("{signed}.AAAA");
        assert_eq!(
            signer.authorize(Some(&tampered), Grant::Tts),
            Err(AuthError::Invalid)
        );

        let unsigned_header = URL_SAFE_NO_PAD.encode(br#"{"alg":"none"}"#);
        let payload = token.split('.').nth(1).expect("payload");
        let unsigned = format!("{unsigned_header}.{payload}.");
        assert_eq!(
            signer.authorize(Some(&unsigned), Grant::Tts),
            Err(AuthError::Invalid)
        );
    }

    #[test]
    fn credential_sources_follow_precedence() {
        let mut headers = HeaderMap::new();
        let query = Some("access_token=from-query&api_key=key-query");

        let found = presented_credential(&headers, query, true).expect("query credential");
        assert_eq!(found.value, "from-query");
        assert!(presented_credential(&headers, query, false).is_none());
        let found =
            presented_credential(&headers, Some("api_key=key-query"), true).expect("api_key");
        assert_eq!(found.value, "key-query");

        headers.insert(
            API_KEY_HEADER,
            http::HeaderValue::from_static("from-x-api-key"),
        );
        let found = presented_credential(&headers, query, true).expect("header credential");
        assert_eq!(found.value, "from-x-api-key");

        headers.insert(
            AUTHORIZATION,
            http::HeaderValue::from_static("bearer from-bearer"),
        );
        let found = presented_credential(&headers, query, true).expect("bearer credential");
        assert_eq!(found.value, "from-bearer");

        headers.insert(
            AUTHORIZATION,
            http::HeaderValue::from_static("Basic dXNlcg=="),
        );
        let found = presented_credential(&headers, None, false).expect("other scheme");
        assert_eq!(found.value, "Basic dXNlcg==");
    }
}
