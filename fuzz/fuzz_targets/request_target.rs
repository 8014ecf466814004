//! Route matching and query reading and rewriting, on raw request targets
//! and on what `http::Uri` makes of them.
//!
//! The rewrite must keep every pair whose decoded name is not a credential
//! byte for byte and in order, drop the others, borrow when it drops
//! nothing, and be idempotent. `values` must return exactly the decoded
//! values of the pairs with the decoded name.

#![no_main]

use std::borrow::Cow;

use cartesia_gateway::query::{self, VERSION_PARAM};
use cartesia_gateway::routes::Route;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let (path, query) = match text.split_once('?') {
            Some((path, query)) => (path, Some(query)),
            None => (text, None),
        };
        check_route(path);
        check_query(query);
    }
    if let Ok(uri) = http::Uri::try_from(data) {
        check_route(uri.path());
        check_query(uri.query());
    }
});

fn check_route(path: &str) {
    let expected = Route::ALL.into_iter().find(|route| route.path() == path);
    assert_eq!(Route::from_path(path), expected);
}

fn check_query(query: Option<&str>) {
    let rewritten = query::rewrite(query);
    let Some(query) = query else {
        assert_eq!(rewritten.query, None);
        assert!(!rewritten.has_version);
        return;
    };

    let kept: Vec<&str> = query
        .split('&')
        .filter(|pair| !is_credential(pair))
        .collect();
    let removed = kept.len() != query.split('&').count();
    let expected = kept.join("&");
    assert_eq!(
        rewritten.query.as_deref(),
        (!expected.is_empty()).then_some(expected.as_str())
    );
    let has_version = kept
        .iter()
        .any(|pair| form_decode(pair_name(pair)) == VERSION_PARAM);
    assert_eq!(rewritten.has_version, has_version);
    if !removed && !query.is_empty() {
        assert!(matches!(rewritten.query, Some(Cow::Borrowed(_))));
    }

    let twice = query::rewrite(rewritten.query.as_deref());
    assert_eq!(twice.query, rewritten.query);
    assert!(!matches!(twice.query, Some(Cow::Owned(_))));

    for name in ["access_token", VERSION_PARAM] {
        let expected: Vec<String> = query
            .split('&')
            .filter(|pair| form_decode(pair_name(pair)) == name)
            .map(|pair| form_decode(pair.split_once('=').map_or("", |(_, value)| value)))
            .collect();
        let found: Vec<Cow<str>> = query::values(query, name).collect();
        assert_eq!(found, expected);
    }
}

fn pair_name(pair: &str) -> &str {
    pair.split_once('=').map_or(pair, |(name, _)| name)
}

fn is_credential(pair: &str) -> bool {
    let name = form_decode(pair_name(pair));
    name == "access_token" || name == "api_key"
}

/// Decodes a form-encoded component: `+` is a space, `%` and two hex
/// digits is a byte, any other `%` stays, and invalid UTF-8 becomes U+FFFD.
fn form_decode(raw: &str) -> String {
    let bytes = raw.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        let hex = bytes
            .get(index + 1..index + 3)
            .filter(|digits| digits.iter().all(u8::is_ascii_hexdigit))
            .and_then(|digits| std::str::from_utf8(digits).ok())
            .and_then(|digits| u8::from_str_radix(digits, 16).ok());
        match (bytes[index], hex) {
            (b'%', Some(byte)) => {
                decoded.push(byte);
                index += 3;
            }
            (b'+', _) => {
                decoded.push(b' ');
                index += 1;
            }
            (byte, _) => {
                decoded.push(byte);
                index += 1;
            }
        }
    }
    String::from_utf8_lossy(&decoded).into_owned()
}
