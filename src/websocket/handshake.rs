//! WebSocket opening handshake checks (RFC 6455 section 4), for the client's
//! request and for the upstream's answer.

use http::header::{
    CONNECTION, HeaderMap, SEC_WEBSOCKET_ACCEPT, SEC_WEBSOCKET_EXTENSIONS, SEC_WEBSOCKET_KEY,
    SEC_WEBSOCKET_PROTOCOL, SEC_WEBSOCKET_VERSION, UPGRADE,
};
use http::{HeaderValue, Request, StatusCode};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

/// Why a client's WebSocket handshake was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HandshakeError {
    #[error("`Connection` does not contain `upgrade`")]
    MissingConnectionUpgrade,
    #[error("`Upgrade` is not `websocket`")]
    MissingUpgradeWebSocket,
    #[error("`Sec-WebSocket-Version` is not 13")]
    UnsupportedVersion,
    #[error("`Sec-WebSocket-Key` is missing or not 16 base64-encoded bytes")]
    InvalidKey,
    #[error("the connection cannot be upgraded (WebSockets need HTTP/1.1)")]
    NotUpgradable,
}

impl HandshakeError {
    pub fn status(self) -> StatusCode {
        match self {
            HandshakeError::UnsupportedVersion => StatusCode::UPGRADE_REQUIRED,
            _ => StatusCode::BAD_REQUEST,
        }
    }

    pub fn code(self) -> &'static str {
        match self {
            HandshakeError::UnsupportedVersion => "unsupported_websocket_version",
            _ => "invalid_websocket_handshake",
        }
    }

    pub fn message(self) -> &'static str {
        match self {
            HandshakeError::MissingConnectionUpgrade | HandshakeError::MissingUpgradeWebSocket => {
                "This route needs a WebSocket upgrade request."
            }
            HandshakeError::UnsupportedVersion => "Use WebSocket version 13.",
            HandshakeError::InvalidKey => "The Sec-WebSocket-Key header is invalid.",
            HandshakeError::NotUpgradable => "Open WebSockets over HTTP/1.1.",
        }
    }
}

/// A validated client handshake.
pub struct ClientHandshake {
    /// `Sec-WebSocket-Accept` for the client's key.
    pub accept: HeaderValue,
    /// Subprotocols the client offered, if any.
    pub protocols: Option<HeaderValue>,
    /// Resolves to the client connection once the 101 response is sent.
    pub on_upgrade: hyper::upgrade::OnUpgrade,
}

impl ClientHandshake {
    /// Checks the upgrade headers of `request` and takes its upgrade handle.
    pub fn validate<B>(request: &mut Request<B>) -> Result<ClientHandshake, HandshakeError> {
        let headers = request.headers();
        if !header_has_token(headers, &CONNECTION, "upgrade") {
            return Err(HandshakeError::MissingConnectionUpgrade);
        }
        if !header_has_token(headers, &UPGRADE, "websocket") {
            return Err(HandshakeError::MissingUpgradeWebSocket);
        }
        if headers
            .get(SEC_WEBSOCKET_VERSION)
            .map(HeaderValue::as_bytes)
            != Some(b"13")
        {
            return Err(HandshakeError::UnsupportedVersion);
        }
        let key = headers
            .get(SEC_WEBSOCKET_KEY)
            .filter(|key| is_valid_key(key.as_bytes()))
            .ok_or(HandshakeError::InvalidKey)?;
        let accept = HeaderValue::from_str(&derive_accept_key(key.as_bytes()))
            .map_err(|_| HandshakeError::InvalidKey)?;
        let protocols = headers.get(SEC_WEBSOCKET_PROTOCOL).cloned();
        let on_upgrade = request
            .extensions_mut()
            .remove::<hyper::upgrade::OnUpgrade>()
            .ok_or(HandshakeError::NotUpgradable)?;
        Ok(ClientHandshake {
            accept,
            protocols,
            on_upgrade,
        })
    }
}

/// Checks the upstream's 101 answer against the key the gateway sent.
/// Returns the subprotocol the upstream chose, if any.
pub fn check_upstream_answer(
    headers: &HeaderMap,
    sent_key: &str,
    offered_protocols: Option<&HeaderValue>,
) -> Result<Option<HeaderValue>, &'static str> {
    if !header_has_token(headers, &UPGRADE, "websocket") {
        return Err("the 101 response lacks `Upgrade: websocket`");
    }
    let expected = derive_accept_key(sent_key.as_bytes());
    if headers.get(SEC_WEBSOCKET_ACCEPT).map(HeaderValue::as_bytes) != Some(expected.as_bytes()) {
        return Err("`Sec-WebSocket-Accept` does not match the key");
    }
    if headers.contains_key(SEC_WEBSOCKET_EXTENSIONS) {
        return Err("the upstream enabled an extension the gateway did not offer");
    }
    let chosen = headers.get(SEC_WEBSOCKET_PROTOCOL).cloned();
    if let Some(chosen) = &chosen {
        let offered = offered_protocols
            .and_then(|value| value.to_str().ok())
            .is_some_and(|offered| {
                offered
                    .split(',')
                    .any(|protocol| protocol.trim().as_bytes() == chosen.as_bytes())
            });
        if !offered {
            return Err("the upstream chose a subprotocol the client did not offer");
        }
    }
    Ok(chosen)
}

/// Whether a comma-separated header contains `token`, case-insensitively,
/// in any of its values and positions.
fn header_has_token(headers: &HeaderMap, name: &http::HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .any(|item| item.trim().eq_ignore_ascii_case(token))
}

/// A key is the base64 encoding of 16 bytes: 22 characters and `==`.
fn is_valid_key(key: &[u8]) -> bool {
    let is_base64 = |byte: &u8| byte.is_ascii_alphanumeric() || *byte == b'+' || *byte == b'/';
    key.len() == 24
        && key[..22].iter().all(is_base64)
        && &key[22..] == b"=="
        && matches!(key[21], b'A' | b'Q' | b'g' | b'w')
}

#[cfg(test)]
mod tests {
    use super::*;

    const VALID: [(&str, &str); 4] = [
        ("connection", "keep-alive, Upgrade"),
        ("upgrade", "WebSocket"),
        ("sec-websocket-version", "13"),
        ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
    ];

    /// Validates the valid header set with `name` replaced by `value`, or
    /// left out when `value` is `None`.
    fn validate_with(name: &str, value: Option<&str>) -> Result<(), HandshakeError> {
        let mut builder = Request::get("/tts/websocket");
        for (valid_name, valid_value) in VALID {
            if valid_name != name {
                builder = builder.header(valid_name, valid_value);
            }
        }
        if let Some(value) = value {
            builder = builder.header(name, value);
        }
        let mut request = builder.body(()).unwrap();
        ClientHandshake::validate(&mut request).map(|_| ())
    }

    #[test]
    fn header_checks_reject_each_missing_part() {
        assert_eq!(
            validate_with("connection", None),
            Err(HandshakeError::MissingConnectionUpgrade)
        );
        assert_eq!(
            validate_with("connection", Some("keep-alive")),
            Err(HandshakeError::MissingConnectionUpgrade)
        );
        assert_eq!(
            validate_with("upgrade", Some("h2c")),
            Err(HandshakeError::MissingUpgradeWebSocket)
        );
        assert_eq!(
            validate_with("sec-websocket-version", Some("8")),
            Err(HandshakeError::UnsupportedVersion)
        );
        for key in [
            "",
            "abc",
            "dGhlIHNhbXBsZSBub25jZQ",
            "dGhlIHNhbXBsZSBub25jZR==",
            "!!!!!!!!!!!!!!!!!!!!!A==",
        ] {
            assert_eq!(
                validate_with("sec-websocket-key", Some(key)),
                Err(HandshakeError::InvalidKey),
                "{key}"
            );
        }
    }

    #[test]
    fn valid_headers_pass_checks_but_need_an_upgradable_connection() {
        // A request built by hand has no hyper upgrade handle, so validation
        // gets past every header check and stops there.
        assert_eq!(
            validate_with("connection", Some("Upgrade")),
            Err(HandshakeError::NotUpgradable)
        );
    }

    #[test]
    fn upstream_answer_must_match_key() {
        let key = "dGhlIHNhbXBsZSBub25jZQ==";
        let mut headers = HeaderMap::new();
        headers.insert(UPGRADE, HeaderValue::from_static("websocket"));
        headers.insert(
            SEC_WEBSOCKET_ACCEPT,
            HeaderValue::from_static("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="),
        );
        assert_eq!(check_upstream_answer(&headers, key, None), Ok(None));
        assert!(check_upstream_answer(&headers, "AAAAAAAAAAAAAAAAAAAAAA==", None).is_err());

        headers.insert(SEC_WEBSOCKET_PROTOCOL, HeaderValue::from_static("chat"));
        assert!(check_upstream_answer(&headers, key, None).is_err());
        let offered = HeaderValue::from_static("superchat, chat");
        assert_eq!(
            check_upstream_answer(&headers, key, Some(&offered)),
            Ok(Some(HeaderValue::from_static("chat")))
        );

        headers.insert(
            SEC_WEBSOCKET_EXTENSIONS,
            HeaderValue::from_static("permessage-deflate"),
        );
        assert!(check_upstream_answer(&headers, key, Some(&offered)).is_err());
    }
}
