//! `POST /access-token`: mints short-lived access tokens for the API key holder.
//!
//! The body is `{"grants": {"tts"?, "stt"?, "agent"?}, "expires_in"?}`, every field optional. The
//! response is `{"token": "<JWT>"}`. Only the API key is accepted here, never an access token.

use http::StatusCode;
use http::request::Parts;
use hyper::body::Incoming;
use serde_json::{Value, json};

use super::auth::{Grants, presented_credential};
use super::params::check_version;
use super::respond::{ApiError, ResponseBody, json_response};
use super::router::{RequestContext, read_json};

/// Token lifetime in seconds when the request sets none.
const DEFAULT_EXPIRES_IN: u64 = 300;
/// Maximum token lifetime Cartesia allows, in seconds.
const MAX_EXPIRES_IN: u64 = 3600;

/// A validated token request.
#[derive(Debug, PartialEq, Eq)]
struct TokenRequest {
    grants: Grants,
    expires_in: u64,
}

pub(crate) async fn handle(
    context: RequestContext,
    parts: Parts,
    body: Incoming,
) -> http::Response<ResponseBody> {
    let faults = &context.shared.faults;
    if let Some(delay) = faults.mint_delay() {
        tokio::time::sleep(delay).await;
    }
    if let Some(status) = faults
        .mint_status()
        .or_else(|| faults.take_next_mint_failure())
    {
        return context.error(ApiError::injected(status, None));
    }
    let credential = presented_credential(&parts.headers, None, false);
    let is_api_key = credential
        .as_ref()
        .is_some_and(|presented| context.shared.signer.is_api_key(&presented.value));
    if !is_api_key {
        let error = match credential {
            None => ApiError::unauthorized(
                "missing_credentials",
                "send the API key as Authorization: Bearer <key> or X-API-Key",
            ),
            Some(_) => ApiError::unauthorized(
                "invalid_credentials",
                "the API key is invalid; access tokens cannot create access tokens",
            ),
        };
        return context.error(error);
    }
    if let Err(error) = check_version(&parts.headers, parts.uri.query(), true) {
        return context.error(error);
    }

    let request = match read_json(&context, body)
        .await
        .and_then(|json| parse_token_request(&json))
    {
        Ok(request) => request,
        Err(error) => return context.error(error),
    };
    let token = match context
        .shared
        .signer
        .mint(request.grants, request.expires_in)
    {
        Ok(token) => token,
        Err(error) => {
            tracing::warn!(%error, "stand-in failed to sign an access token");
            let error = ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal_error",
                "the stand-in could not sign the token",
            );
            return context.error(error);
        }
    };
    context.shared.record_mint(&token);
    json_response(StatusCode::OK, &json!({ "token": token }))
}

fn invalid(message: &str) -> ApiError {
    ApiError::bad_request("invalid_request", message)
}

fn parse_token_request(body: &Value) -> Result<TokenRequest, ApiError> {
    let object = body
        .as_object()
        .ok_or_else(|| invalid("the request body must be a JSON object"))?;
    let grants = match object.get("grants") {
        None | Some(Value::Null) => Grants::default(),
        Some(Value::Object(grants)) => {
            let flag = |name: &str| match grants.get(name) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::Bool(flag)) => Ok(Some(*flag)),
                Some(_) => Err(invalid("each grant must be true or false")),
            };
            Grants {
                tts: flag("tts")?,
                stt: flag("stt")?,
                agent: flag("agent")?,
            }
        }
        Some(_) => return Err(invalid("grants must be an object such as {\"tts\": true}")),
    };
    let expires_in = match object.get("expires_in") {
        None | Some(Value::Null) => DEFAULT_EXPIRES_IN,
        Some(value) => value
            .as_u64()
            .filter(|seconds| (1..=MAX_EXPIRES_IN).contains(seconds))
            .ok_or_else(|| invalid("expires_in must be an integer from 1 to 3600 seconds"))?,
    };
    Ok(TokenRequest { grants, expires_in })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_request_uses_defaults() {
        let request = parse_token_request(&json!({})).expect("valid");
        assert_eq!(request.grants, Grants::default());
        assert_eq!(request.expires_in, DEFAULT_EXPIRES_IN);
    }

    #[test]
    fn grants_and_lifetime_are_read() {
        let body =
            json!({"grants": {"tts": true, "stt": false, "agent": null}, "expires_in": 3600});
        let request = parse_token_request(&body).expect("valid");
        assert_eq!(request.grants.tts, Some(true));
        assert_eq!(request.grants.stt, Some(false));
        assert_eq!(request.grants.agent, None);
        assert_eq!(request.expires_in, 3600);
    }

    #[test]
    fn invalid_requests_are_rejected() {
        let cases = [
            json!({"expires_in": 3601}),
            json!({"expires_in": 0}),
            json!({"expires_in": -5}),
            json!({"expires_in": 1.5}),
            json!({"expires_in": "60"}),
            json!({"grants": {"tts": "yes"}}),
            json!({"grants": ["tts"]}),
            json!("tts"),
        ];
        for body in cases {
            let error = parse_token_request(&body).expect_err("invalid");
            assert_eq!(error.status, StatusCode::BAD_REQUEST, "{body}");
        }
    }
}
