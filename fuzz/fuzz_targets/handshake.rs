//! WebSocket handshake checks: the client's upgrade request and the
//! upstream's 101 response, over arbitrary header sets.
//!
//! Both are compared with a model of RFC 6455 section 4 that shares no
//! code with the gateway; the client key is checked by decoding it as
//! base64 and encoding it again.

#![no_main]

use arbitrary::Arbitrary;
use cartesia_gateway::websocket::{ClientHandshake, HandshakeError, check_upstream_answer};
use http::header::{
    CONNECTION, SEC_WEBSOCKET_ACCEPT, SEC_WEBSOCKET_EXTENSIONS, SEC_WEBSOCKET_KEY,
    SEC_WEBSOCKET_PROTOCOL, SEC_WEBSOCKET_VERSION, UPGRADE,
};
use http::{HeaderMap, HeaderName, HeaderValue, Request};
use libfuzzer_sys::fuzz_target;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

const NAMES: [HeaderName; 7] = [
    CONNECTION,
    UPGRADE,
    SEC_WEBSOCKET_VERSION,
    SEC_WEBSOCKET_KEY,
    SEC_WEBSOCKET_PROTOCOL,
    SEC_WEBSOCKET_ACCEPT,
    SEC_WEBSOCKET_EXTENSIONS,
];

const BASE64_ALPHABET: &[u8; 64] =
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

#[derive(Arbitrary, Debug)]
struct Input {
    /// Start from a valid client handshake instead of an empty header set.
    start_valid: bool,
    key: [u8; 16],
    /// Headers appended, by index into `NAMES`.
    headers: Vec<(u8, Vec<u8>)>,
    /// Headers removed, by index into `NAMES`.
    removed: Vec<u8>,
    /// Whether the upstream response carries the right `Sec-WebSocket-Accept`.
    right_accept: bool,
    offered_protocols: Option<Vec<u8>>,
}

fuzz_target!(|input: Input| {
    let key = encode_key(input.key);
    let mut headers = HeaderMap::new();
    if input.start_valid {
        headers.insert(CONNECTION, HeaderValue::from_static("keep-alive, Upgrade"));
        headers.insert(UPGRADE, HeaderValue::from_static("websocket"));
        headers.insert(SEC_WEBSOCKET_VERSION, HeaderValue::from_static("13"));
        headers.insert(SEC_WEBSOCKET_KEY, HeaderValue::from_str(&key).unwrap());
    }
    for index in &input.removed {
        headers.remove(&NAMES[usize::from(*index) % NAMES.len()]);
    }
    for (index, value) in &input.headers {
        if let Ok(value) = HeaderValue::from_bytes(value) {
            headers.append(NAMES[usize::from(*index) % NAMES.len()].clone(), value);
        }
    }

    let expected = model_client_check(&headers);
    let mut request = Request::get("/tts/websocket").body(()).unwrap();
    *request.headers_mut() = headers.clone();
    let result = ClientHandshake::validate(&mut request).map(|_| ());
    assert_eq!(result, expected);

    let accept = derive_accept_key(key.as_bytes());
    if input.right_accept {
        headers.insert(
            SEC_WEBSOCKET_ACCEPT,
            HeaderValue::from_str(&accept).unwrap(),
        );
    }
    let offered = input
        .offered_protocols
        .and_then(|value| HeaderValue::from_bytes(&value).ok());
    let expected = model_upstream_check(&headers, &accept, offered.as_ref());
    let result = check_upstream_answer(&headers, &key, offered.as_ref());
    assert_eq!(result.ok(), expected);
});

/// Checks whether any value of `name` lists `token`, case-insensitively.
fn lists(headers: &HeaderMap, name: &HeaderName, token: &str) -> bool {
    headers.get_all(name).iter().any(|value| {
        value.to_str().is_ok_and(|text| {
            text.to_ascii_lowercase()
                .split(',')
                .any(|item| item.trim_matches([' ', '\t']) == token)
        })
    })
}

fn model_client_check(headers: &HeaderMap) -> Result<(), HandshakeError> {
    if !lists(headers, &CONNECTION, "upgrade") {
        return Err(HandshakeError::MissingConnectionUpgrade);
    }
    if !lists(headers, &UPGRADE, "websocket") {
        return Err(HandshakeError::MissingUpgradeWebSocket);
    }
    if headers
        .get(SEC_WEBSOCKET_VERSION)
        .map(HeaderValue::as_bytes)
        != Some(&b"13"[..])
    {
        return Err(HandshakeError::UnsupportedVersion);
    }
    let key = headers.get(SEC_WEBSOCKET_KEY).map(HeaderValue::as_bytes);
    let round_trips = key
        .and_then(decode_key)
        .is_some_and(|bytes| Some(encode_key(bytes).as_bytes()) == key);
    if !round_trips {
        return Err(HandshakeError::InvalidKey);
    }
    // A request built here has no upgrade handle, so every header check
    // passed when this is the error.
    Err(HandshakeError::NotUpgradable)
}

/// Returns the subprotocol a valid 101 response selects, or `None` when the
/// response is invalid.
fn model_upstream_check(
    headers: &HeaderMap,
    accept: &str,
    offered: Option<&HeaderValue>,
) -> Option<Option<HeaderValue>> {
    if !lists(headers, &UPGRADE, "websocket")
        || headers.get(SEC_WEBSOCKET_ACCEPT).map(HeaderValue::as_bytes) != Some(accept.as_bytes())
        || headers.contains_key(SEC_WEBSOCKET_EXTENSIONS)
    {
        return None;
    }
    let Some(chosen) = headers.get(SEC_WEBSOCKET_PROTOCOL) else {
        return Some(None);
    };
    let offered = offered.and_then(|value| value.to_str().ok())?;
    offered
        .split(',')
        .any(|item| item.trim_matches([' ', '\t']).as_bytes() == chosen.as_bytes())
        .then(|| Some(chosen.clone()))
}

/// Encodes 16 bytes as padded base64: 22 digits hold the 128 bits and 4
/// zero bits, then `==`.
fn encode_key(bytes: [u8; 16]) -> String {
    let bits = u128::from_be_bytes(bytes);
    let mut key: String = (0..22)
        .map(|position: i32| {
            let shift = 122 - 6 * position;
            let digit = if shift >= 0 {
                bits >> shift
            } else {
                bits << -shift
            };
            char::from(BASE64_ALPHABET[(digit & 0x3f) as usize])
        })
        .collect();
    key.push_str("==");
    key
}

/// Decodes 22 base64 digits and `==`, dropping the 4 trailing bits.
fn decode_key(key: &[u8]) -> Option<[u8; 16]> {
    if key.len() != 24 || &key[22..] != b"==" {
        return None;
    }
    let mut bits: u128 = 0;
    for (position, byte) in (0i32..).zip(&key[..22]) {
        let digit = BASE64_ALPHABET.iter().position(|digit| digit == byte)? as u128;
        let shift = 122 - 6 * position;
        bits |= if shift >= 0 {
            digit << shift
        } else {
            digit >> -shift
        };
    }
    Some(bits.to_be_bytes())
}
