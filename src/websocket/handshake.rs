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

/// Checks the upstream's 101 response against the key the gateway sent.
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

#[cfg(test)]
mod proptests {
    use super::*;
    use proptest::prelude::*;

    const BASE64_ALPHABET: &[u8; 64] =
        b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

    /// Encodes 16 bytes as standard padded base64.
    fn encode_key(bytes: [u8; 16]) -> String {
        let bits = u128::from_be_bytes(bytes);
        let mut text = vec![0u8; 22];
        // 22 six-bit digits hold 132 bits: the 128 key bits and 4 zero bits.
        for (position, digit) in text.iter_mut().enumerate() {
            let shift = 122 - 6 * position as i32;
            let value = if shift >= 0 {
                (bits >> shift) & 0x3f
            } else {
                (bits << -shift) & 0x3f
            };
            *digit = BASE64_ALPHABET[value as usize];
        }
        let mut key = String::from_utf8(text).unwrap();
        key.push_str("==");
        key
    }

    /// Decodes a key that is 22 base64 digits and `==`, dropping the 4
    /// trailing bits; `None` for any other shape.
    fn decode_key(key: &[u8]) -> Option<[u8; 16]> {
        if key.len() != 24 || &key[22..] != b"==" {
            return None;
        }
        let mut bits: u128 = 0;
        for (position, byte) in key[..22].iter().enumerate() {
            let value = BASE64_ALPHABET.iter().position(|digit| digit == byte)? as u128;
            let shift = 122 - 6 * position as i32;
            bits |= if shift >= 0 {
                value << shift
            } else {
                value >> -shift
            };
        }
        Some(bits.to_be_bytes())
    }

    /// Checks the headers as RFC 6455 section 4.2.1 requires, in the order
    /// `validate` reports them but without sharing its code.
    fn reference_validate(headers: &HeaderMap) -> Result<(), HandshakeError> {
        let has_token = |name: &http::HeaderName, token: &str| {
            headers.get_all(name).iter().any(|value| {
                value.to_str().is_ok_and(|text| {
                    text.to_ascii_lowercase()
                        .split(',')
                        .any(|item| item.trim_matches([' ', '\t']) == token)
                })
            })
        };
        if !has_token(&CONNECTION, "upgrade") {
            return Err(HandshakeError::MissingConnectionUpgrade);
        }
        if !has_token(&UPGRADE, "websocket") {
            return Err(HandshakeError::MissingUpgradeWebSocket);
        }
        if headers
            .get(SEC_WEBSOCKET_VERSION)
            .map(|value| value.as_bytes())
            != Some(&b"13"[..])
        {
            return Err(HandshakeError::UnsupportedVersion);
        }
        let key = headers.get(SEC_WEBSOCKET_KEY).map(HeaderValue::as_bytes);
        let canonical = key
            .and_then(decode_key)
            .is_some_and(|bytes| Some(encode_key(bytes).as_bytes()) == key);
        if !canonical {
            return Err(HandshakeError::InvalidKey);
        }
        // A request built in a test has no upgrade handle.
        Err(HandshakeError::NotUpgradable)
    }

    fn mixed_case(text: &'static str) -> impl Strategy<Value = String> {
        prop::collection::vec(any::<bool>(), text.len()).prop_map(move |upper| {
            text.chars()
                .zip(upper)
                .map(|(c, upper)| if upper { c.to_ascii_uppercase() } else { c })
                .collect()
        })
    }

    /// Generates comma-separated lists with `token` among other tokens.
    fn list_with(token: &'static str) -> impl Strategy<Value = String> {
        (
            mixed_case(token),
            prop::collection::vec("[a-z0-9-]{1,8}", 0..3),
            any::<prop::sample::Index>(),
            prop::sample::select(vec![",", ", ", " ,\t"]),
        )
            .prop_map(|(token, mut others, position, separator)| {
                others.insert(position.index(others.len() + 1), token);
                others.join(separator)
            })
    }

    fn valid_headers() -> impl Strategy<Value = Vec<(&'static str, String)>> {
        (
            list_with("upgrade"),
            list_with("websocket"),
            any::<[u8; 16]>(),
        )
            .prop_map(|(connection, upgrade, key)| {
                vec![
                    ("connection", connection),
                    ("upgrade", upgrade),
                    ("sec-websocket-version", "13".to_owned()),
                    ("sec-websocket-key", encode_key(key)),
                ]
            })
    }

    /// Generates header values that `HeaderValue` accepts, biased to the
    /// characters the checks look at.
    fn header_value() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            "(upgrade|websocket|13|,| |\t|[A-Za-z0-9+/=]){0,6}".prop_map(String::into_bytes),
            any::<[u8; 16]>().prop_map(|key| encode_key(key).into_bytes()),
            "[A-Za-z0-9+/=]{24}".prop_map(String::into_bytes),
            prop::collection::vec(prop_oneof![0x20u8..0x7f, 0x80u8..=0xff], 0..30),
        ]
    }

    /// Generates handshake headers: the valid set with entries replaced,
    /// added or dropped.
    fn any_headers() -> impl Strategy<Value = HeaderMap> {
        let name = prop::sample::select(vec![
            "connection",
            "upgrade",
            "sec-websocket-version",
            "sec-websocket-key",
            "sec-websocket-protocol",
        ]);
        (
            valid_headers(),
            prop::collection::vec(any::<bool>(), 4),
            prop::collection::vec((name, header_value()), 0..4),
        )
            .prop_map(|(valid, keep, extra)| {
                let mut map = HeaderMap::new();
                for ((name, value), keep) in valid.into_iter().zip(keep) {
                    if keep {
                        map.append(name, HeaderValue::from_str(&value).unwrap());
                    }
                }
                for (name, value) in extra {
                    map.append(name, HeaderValue::from_bytes(&value).unwrap());
                }
                map
            })
    }

    fn request_with(headers: HeaderMap) -> Request<()> {
        let mut request = Request::get("/tts/websocket").body(()).unwrap();
        *request.headers_mut() = headers;
        request
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(400))]

        #[test]
        fn encoded_keys_are_valid(bytes in any::<[u8; 16]>()) {
            let key = encode_key(bytes);
            prop_assert!(is_valid_key(key.as_bytes()), "{key}");
            prop_assert_eq!(decode_key(key.as_bytes()), Some(bytes));
        }

        #[test]
        fn key_check_matches_base64_round_trip(key in "[A-Za-z0-9+/=]{20,26}") {
            let round_trip = decode_key(key.as_bytes())
                .is_some_and(|bytes| encode_key(bytes) == key);
            prop_assert_eq!(is_valid_key(key.as_bytes()), round_trip);
        }

        #[test]
        fn valid_handshakes_pass_every_header_check(headers in valid_headers()) {
            let mut map = HeaderMap::new();
            for (name, value) in headers {
                map.append(name, HeaderValue::from_str(&value).unwrap());
            }
            let mut request = request_with(map);
            prop_assert_eq!(
                ClientHandshake::validate(&mut request).err(),
                Some(HandshakeError::NotUpgradable)
            );
        }

        #[test]
        fn validate_matches_reference(headers in any_headers()) {
            let expected = reference_validate(&headers);
            let mut request = request_with(headers);
            prop_assert_eq!(ClientHandshake::validate(&mut request).map(|_| ()), expected);
        }

        #[test]
        fn upstream_answer_accepts_offered_protocol(
            key in any::<[u8; 16]>(),
            offered in prop::collection::vec("[a-z0-9.-]{1,10}", 1..4),
            chosen in any::<prop::sample::Index>(),
            upgrade in list_with("websocket"),
        ) {
            let key = encode_key(key);
            let chosen = offered[chosen.index(offered.len())].clone();
            let offered = HeaderValue::from_str(&offered.join(", ")).unwrap();
            let mut headers = HeaderMap::new();
            headers.insert(UPGRADE, HeaderValue::from_str(&upgrade).unwrap());
            let accept = derive_accept_key(key.as_bytes());
            headers.insert(SEC_WEBSOCKET_ACCEPT, HeaderValue::from_str(&accept).unwrap());
            headers.insert(SEC_WEBSOCKET_PROTOCOL, HeaderValue::from_str(&chosen).unwrap());
            prop_assert_eq!(
                check_upstream_answer(&headers, &key, Some(&offered)),
                Ok(Some(HeaderValue::from_str(&chosen).unwrap()))
            );
        }

        #[test]
        fn upstream_answer_is_checked_on_arbitrary_headers(
            key in any::<[u8; 16]>(),
            accept in prop_oneof![Just(None), header_value().prop_map(Some)],
            correct_accept in any::<bool>(),
            protocol in prop::option::of(header_value()),
            offered in prop::option::of(header_value()),
            extension in any::<bool>(),
        ) {
            let key = encode_key(key);
            let expected_accept = derive_accept_key(key.as_bytes());

            let mut headers = HeaderMap::new();
            headers.insert(UPGRADE, HeaderValue::from_static("websocket"));
            let accept = if correct_accept {
                Some(expected_accept.clone().into_bytes())
            } else {
                accept
            };
            if let Some(accept) = &accept {
                headers.insert(SEC_WEBSOCKET_ACCEPT, HeaderValue::from_bytes(accept).unwrap());
            }
            if let Some(protocol) = &protocol {
                let protocol = HeaderValue::from_bytes(protocol).unwrap();
                headers.insert(SEC_WEBSOCKET_PROTOCOL, protocol);
            }
            if extension {
                let extension = HeaderValue::from_static("permessage-deflate");
                headers.insert(SEC_WEBSOCKET_EXTENSIONS, extension);
            }
            let offered = offered.map(|value| HeaderValue::from_bytes(&value).unwrap());

            let listed = |chosen: &HeaderValue| {
                offered
                    .as_ref()
                    .and_then(|offered| offered.to_str().ok())
                    .is_some_and(|offered| {
                        offered
                            .split(',')
                            .any(|item| item.trim().as_bytes() == chosen.as_bytes())
                    })
            };
            let chosen = headers.get(SEC_WEBSOCKET_PROTOCOL).cloned();
            let expected = if accept.as_deref() != Some(expected_accept.as_bytes()) || extension {
                None
            } else {
                match chosen {
                    Some(chosen) if !listed(&chosen) => None,
                    chosen => Some(chosen),
                }
            };

            let result = check_upstream_answer(&headers, &key, offered.as_ref());
            prop_assert_eq!(result.ok(), expected);
        }
    }
}
