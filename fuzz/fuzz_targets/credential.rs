//! Session credential extraction over arbitrary `Authorization` and
//! `Cookie` headers and query strings.
//!
//! Checks that a credential is returned only from where it was sent and
//! that the query counts only on WebSocket handshakes. Success must not
//! depend on header order, and the same token sent again as a bearer header
//! must be accepted.

#![no_main]

use arbitrary::Arbitrary;
use cartesia_gateway::query;
use cartesia_gateway::session::{CredentialSource, extract};
use http::header::{AUTHORIZATION, COOKIE};
use http::{HeaderMap, HeaderName, HeaderValue};
use libfuzzer_sys::fuzz_target;

const COOKIE_NAMES: [&str; 3] = ["session", "s", "__Host-session"];

#[derive(Arbitrary, Debug)]
struct Input {
    /// `true` for `Authorization`, `false` for `Cookie`.
    headers: Vec<(bool, Vec<u8>)>,
    query: Option<String>,
    cookie_name: u8,
    websocket: bool,
}

fuzz_target!(|input: Input| {
    let mut headers = HeaderMap::new();
    for (authorization, value) in &input.headers {
        let name: HeaderName = if *authorization {
            AUTHORIZATION
        } else {
            COOKIE
        };
        if let Ok(value) = HeaderValue::from_bytes(value) {
            headers.append(name, value);
        }
    }
    let cookie_name = COOKIE_NAMES[usize::from(input.cookie_name) % COOKIE_NAMES.len()];
    let query = input.query.as_deref();
    let result = extract(&headers, query, cookie_name, input.websocket);

    if !input.websocket {
        assert_eq!(result, extract(&headers, None, cookie_name, false));
    }
    let Ok((token, source)) = result else {
        return;
    };
    assert!(!token.is_empty());
    match source {
        CredentialSource::Bearer => {
            assert_eq!(headers.get_all(AUTHORIZATION).iter().count(), 1);
            let value = headers[AUTHORIZATION].to_str().unwrap();
            assert!(value.contains(token.as_ref()));
        }
        CredentialSource::Cookie => {
            let sent = headers
                .get_all(COOKIE)
                .iter()
                .any(|value| value.to_str().unwrap().contains(token.as_ref()));
            assert!(sent);
        }
        CredentialSource::Query => {
            assert!(input.websocket);
            let sent = query::values(query.unwrap(), "access_token").any(|value| value == token);
            assert!(sent);
        }
    }

    let mut reversed = HeaderMap::new();
    for name in headers.keys() {
        for value in headers.get_all(name).iter().rev() {
            reversed.append(name.clone(), value.clone());
        }
    }
    let again = extract(&reversed, query, cookie_name, input.websocket);
    assert_eq!(again, Ok((token.clone(), source)));

    // The same token as a bearer header agrees with every other place.
    let bearer = HeaderValue::from_str(&format!("Bearer {token}"));
    let plain = token
        .bytes()
        .all(|byte| byte == b'\t' || (byte > b' ' && byte < 0x7f));
    if let (Ok(bearer), true, false) = (bearer, plain, headers.contains_key(AUTHORIZATION)) {
        let mut with_bearer = headers.clone();
        with_bearer.insert(AUTHORIZATION, bearer);
        let (found, source) = extract(&with_bearer, query, cookie_name, input.websocket).unwrap();
        assert_eq!(found, token);
        assert_eq!(source, CredentialSource::Bearer);
    }
});
