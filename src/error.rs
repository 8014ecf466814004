//! Gateway errors and the one place that turns them into HTTP responses.
//!
//! Every error records which side caused it, and the side fixes its status class:
//! client mistakes are 4xx, upstream failures 502, 503 or 504, and the gateway's
//! own faults 500. Response bodies are `{"error": CODE, "message": TEXT}`
//! with a stable code and a fixed message; no token, header value or
//! validation detail is ever echoed.

use std::sync::Arc;

use bytes::Bytes;
use http::header::{
    ALLOW, CACHE_CONTROL, CONNECTION, CONTENT_TYPE, HeaderValue, RETRY_AFTER, SEC_WEBSOCKET_VERSION,
};
use http::{Method, Response, StatusCode};
use serde::Serialize;

use crate::body::{self, ResponseBody};
use crate::routes::Grant;
use crate::session::SessionError;
use crate::tokens::{MINT_RETRY_AFTER_SECS, MintError};
use crate::websocket::HandshakeError;

/// Formats `error` with its chain of sources, such as "client error
/// (Connect): tcp connect error: Connection refused (os error 111)", so a
/// log line shows why a connection failed. A source whose text the previous
/// one already contains is skipped.
pub fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// The party that caused an error.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    Client,
    Upstream,
    Gateway,
}

/// Any failure that ends a request with a gateway-made response.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("no forwarded route has this path")]
    NotFound,
    #[error("method not allowed; the route accepts {allowed}")]
    MethodNotAllowed { allowed: Method },
    #[error("session rejected: {0}")]
    Session(#[from] SessionError),
    #[error("session lacks the {} grant", grant.as_str())]
    GrantMissing { grant: Grant },
    #[error("the request body exceeds server.max_request_body_bytes")]
    BodyTooLarge,
    #[error("the request's Origin is not an allowed origin")]
    OriginNotAllowed,
    #[error("a cookie-authenticated request came without an allowed Origin")]
    OriginRequired,
    #[error("invalid WebSocket handshake: {0}")]
    Handshake(#[from] HandshakeError),
    #[error("minting a Cartesia access token failed: {0}")]
    Mint(Arc<MintError>),
    #[error("connecting to the upstream failed: {}", chain(.0))]
    UpstreamConnect(#[source] hyper_util::client::legacy::Error),
    #[error("the upstream did not send a response head in time")]
    UpstreamTimeout,
    #[error("the upstream answered a WebSocket handshake incorrectly: {0}")]
    UpstreamHandshake(&'static str),
    #[error("internal error: {0}")]
    Internal(&'static str),
}

impl GatewayError {
    pub fn side(&self) -> Side {
        match self {
            GatewayError::NotFound
            | GatewayError::MethodNotAllowed { .. }
            | GatewayError::Session(_)
            | GatewayError::GrantMissing { .. }
            | GatewayError::OriginNotAllowed
            | GatewayError::OriginRequired
            | GatewayError::BodyTooLarge
            | GatewayError::Handshake(_) => Side::Client,
            GatewayError::Mint(_)
            | GatewayError::UpstreamConnect(_)
            | GatewayError::UpstreamTimeout
            | GatewayError::UpstreamHandshake(_) => Side::Upstream,
            GatewayError::Internal(_) => Side::Gateway,
        }
    }

    /// The status, stable code and fixed message sent to the client.
    pub fn parts(&self) -> (StatusCode, &'static str, &'static str) {
        match self {
            GatewayError::NotFound => (
                StatusCode::NOT_FOUND,
                "not_found",
                "The gateway does not forward this path.",
            ),
            GatewayError::MethodNotAllowed { .. } => (
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "This route does not accept the request method.",
            ),
            GatewayError::Session(error) => {
                (StatusCode::UNAUTHORIZED, error.code(), error.message())
            }
            GatewayError::GrantMissing { .. } => (
                StatusCode::FORBIDDEN,
                "grant_missing",
                "The session does not grant access to this route.",
            ),
            GatewayError::BodyTooLarge => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "body_too_large",
                "The request body is larger than the gateway accepts.",
            ),
            GatewayError::OriginNotAllowed => (
                StatusCode::FORBIDDEN,
                "origin_not_allowed",
                "Requests from this origin are not allowed.",
            ),
            GatewayError::OriginRequired => (
                StatusCode::FORBIDDEN,
                "origin_required",
                "Cookie-authenticated requests must come from an allowed origin.",
            ),
            GatewayError::Handshake(error) => (error.status(), error.code(), error.message()),
            GatewayError::Mint(error) => mint_parts(error),
            GatewayError::UpstreamConnect(_) => UPSTREAM_UNAVAILABLE,
            GatewayError::UpstreamTimeout => UPSTREAM_TIMEOUT,
            GatewayError::UpstreamHandshake(_) => (
                StatusCode::BAD_GATEWAY,
                "upstream_protocol_error",
                "The Cartesia API answered the WebSocket handshake incorrectly.",
            ),
            GatewayError::Internal(_) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal_error",
                "The gateway failed to handle the request.",
            ),
        }
    }

    /// Builds the response for this error.
    pub fn to_response(&self) -> Response<ResponseBody> {
        let (status, code, message) = self.parts();
        let mut response = json_error(status, code, message);
        match self {
            GatewayError::MethodNotAllowed { allowed } => {
                let allow = if *allowed == Method::GET {
                    HeaderValue::from_static("GET")
                } else {
                    HeaderValue::from_static("POST")
                };
                response.headers_mut().insert(ALLOW, allow);
            }
            GatewayError::BodyTooLarge => {
                // The rest of the body is not read, so the connection cannot
                // carry another request. hyper drops this header on HTTP/2.
                response
                    .headers_mut()
                    .insert(CONNECTION, HeaderValue::from_static("close"));
            }
            GatewayError::Mint(error) if error.is_transient() => {
                response
                    .headers_mut()
                    .insert(RETRY_AFTER, HeaderValue::from(MINT_RETRY_AFTER_SECS));
            }
            GatewayError::Handshake(HandshakeError::UnsupportedVersion) => {
                // RFC 6455 section 4.4: name the version the server speaks.
                response
                    .headers_mut()
                    .insert(SEC_WEBSOCKET_VERSION, HeaderValue::from_static("13"));
            }
            _ => {}
        }
        response
    }
}

/// Transient mint failures (see [`MintError::is_transient`]) are 503 with
/// `Retry-After`. A 4xx from Cartesia and an unusable response are 502.
fn mint_parts(error: &MintError) -> (StatusCode, &'static str, &'static str) {
    match error {
        MintError::Rejected(_) => (
            StatusCode::BAD_GATEWAY,
            "token_mint_rejected",
            "Cartesia rejected the gateway's token request.",
        ),
        MintError::Status(status) if !status.is_server_error() => MINT_FAILED,
        MintError::InvalidResponse => MINT_FAILED,
        MintError::Status(_)
        | MintError::Transport(_)
        | MintError::Body
        | MintError::Timeout
        | MintError::Throttled => (
            StatusCode::SERVICE_UNAVAILABLE,
            "token_mint_unavailable",
            "Cartesia cannot issue access tokens right now; retry after the Retry-After delay.",
        ),
    }
}

const MINT_FAILED: (StatusCode, &str, &str) = (
    StatusCode::BAD_GATEWAY,
    "token_mint_failed",
    "The gateway could not obtain a Cartesia access token.",
);

const UPSTREAM_UNAVAILABLE: (StatusCode, &str, &str) = (
    StatusCode::BAD_GATEWAY,
    "upstream_unavailable",
    "The gateway could not reach the Cartesia API.",
);

const UPSTREAM_TIMEOUT: (StatusCode, &str, &str) = (
    StatusCode::GATEWAY_TIMEOUT,
    "upstream_timeout",
    "The Cartesia API did not answer in time.",
);

#[derive(Serialize)]
struct ErrorBody {
    error: &'static str,
    message: &'static str,
}

/// Builds a `{"error", "message"}` JSON response.
pub fn json_error(
    status: StatusCode,
    code: &'static str,
    message: &'static str,
) -> Response<ResponseBody> {
    let json = serde_json::to_vec(&ErrorBody {
        error: code,
        message,
    })
    .unwrap_or_default();
    let mut response = Response::new(body::full(Bytes::from(json)));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("client error (Connect)")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn chain_adds_new_sources_only() {
        let refused =
            std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "connection refused");
        assert_eq!(
            chain(&Outer(refused)),
            "client error (Connect): connection refused"
        );
        let repeated = std::io::Error::other("client error");
        assert_eq!(chain(&Outer(repeated)), "client error (Connect)");
    }

    #[test]
    fn side_decides_status_class() {
        let cases = [
            GatewayError::NotFound,
            GatewayError::GrantMissing { grant: Grant::Tts },
            GatewayError::UpstreamTimeout,
            GatewayError::UpstreamHandshake("missing accept"),
            GatewayError::Internal("test"),
        ];
        for error in cases {
            let status = error.parts().0;
            match error.side() {
                Side::Client => assert!(status.is_client_error(), "{error}"),
                Side::Upstream => assert!(status.is_server_error(), "{error}"),
                Side::Gateway => assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR),
            }
        }
    }

    #[test]
    fn mint_errors_map_by_permanence() {
        let cases = [
            (
                MintError::Rejected(StatusCode::UNAUTHORIZED),
                502,
                "token_mint_rejected",
            ),
            (
                MintError::Rejected(StatusCode::BAD_REQUEST),
                502,
                "token_mint_rejected",
            ),
            (MintError::InvalidResponse, 502, "token_mint_failed"),
            (
                MintError::Status(StatusCode::FOUND),
                502,
                "token_mint_failed",
            ),
            (
                MintError::Status(StatusCode::BAD_GATEWAY),
                503,
                "token_mint_unavailable",
            ),
            (MintError::Timeout, 503, "token_mint_unavailable"),
            (MintError::Body, 503, "token_mint_unavailable"),
            (MintError::Throttled, 503, "token_mint_unavailable"),
        ];
        for (mint_error, status, code) in cases {
            let transient = mint_error.is_transient();
            let error = GatewayError::Mint(Arc::new(mint_error));
            let response = error.to_response();
            assert_eq!(response.status().as_u16(), status, "{error}");
            assert_eq!(error.parts().1, code, "{error}");
            assert_eq!(
                response.headers().get(RETRY_AFTER).is_some(),
                transient,
                "{error}: Retry-After exactly on transient failures"
            );
            assert_eq!(
                status == 503,
                transient,
                "{error}: 503 exactly when transient"
            );
        }
    }

    #[test]
    fn method_not_allowed_names_allowed_method() {
        let response = GatewayError::MethodNotAllowed {
            allowed: Method::POST,
        }
        .to_response();
        assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(response.headers()[ALLOW], "POST");
        assert_eq!(response.headers()[CONTENT_TYPE], "application/json");
    }
}
