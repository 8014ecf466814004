//! Query string reading and rewriting.
//!
//! Parameters are `&`-separated `name=value` pairs with percent-encoding and
//! `+` for space (the `application/x-www-form-urlencoded` rules that Cartesia
//! and the SDKs use). Names are compared after decoding, so an encoded
//! `access%5Ftoken` is still recognized as `access_token`. The rewrite keeps
//! every other pair byte for byte, in order.

use std::borrow::Cow;

use percent_encoding::percent_decode_str;

/// Parameters that carry client credentials and are never forwarded.
const CREDENTIAL_PARAMS: [&str; 2] = ["access_token", "api_key"];

/// The query parameter that may replace the `Cartesia-Version` header.
pub const VERSION_PARAM: &str = "cartesia_version";

/// Yields the decoded values of every parameter called `name`.
pub fn values<'a>(query: &'a str, name: &'a str) -> impl Iterator<Item = Cow<'a, str>> + 'a {
    query.split('&').filter_map(move |pair| {
        let (raw_name, raw_value) = pair.split_once('=').unwrap_or((pair, ""));
        (decode(raw_name) == name).then(|| decode(raw_value))
    })
}

/// Most parameters [`redacted`] lists before it stops.
const MAX_LOGGED_PARAMS: usize = 32;
/// Maximum length of a parameter name that [`redacted`] shows.
const MAX_LOGGED_NAME: usize = 40;

/// Returns the query for logs: each parameter's name, followed by
/// `=<redacted>` when it has a value. A name longer than 40 bytes or with characters other
/// than ASCII letters, digits, `_`, `-`, `.`, `[` and `]` is shown as `?`,
/// so a credential sent where a name belongs is not logged either. After
/// 32 parameters, `&...` stands for the rest.
pub fn redacted(query: &str) -> String {
    let mut out = String::new();
    for (index, pair) in query.split('&').enumerate() {
        if index > 0 {
            out.push('&');
        }
        if index == MAX_LOGGED_PARAMS {
            out.push_str("...");
            break;
        }
        let (name, value) = match pair.split_once('=') {
            Some((name, _)) => (name, true),
            None => (pair, false),
        };
        let plain = name.len() <= MAX_LOGGED_NAME
            && name
                .bytes()
                .all(|byte| byte.is_ascii_alphanumeric() || b"_-.[]".contains(&byte));
        out.push_str(if plain { name } else { "?" });
        if value {
            out.push_str("=<redacted>");
        }
    }
    out
}

/// The query string to send upstream.
#[derive(Debug, PartialEq, Eq)]
pub struct Rewritten<'a> {
    /// The query without credential parameters; `None` when nothing is left.
    pub query: Option<Cow<'a, str>>,
    /// Whether a `cartesia_version` parameter is present.
    pub has_version: bool,
}

/// Removes the `access_token` and `api_key` parameters and keeps the rest
/// byte for byte. Borrows the input when nothing is removed.
pub fn rewrite(query: Option<&str>) -> Rewritten<'_> {
    let Some(query) = query else {
        return Rewritten {
            query: None,
            has_version: false,
        };
    };
    let mut has_version = false;
    let mut removed = false;
    let mut kept = Vec::new();
    for pair in query.split('&') {
        let raw_name = pair.split_once('=').map_or(pair, |(name, _)| name);
        let name = decode(raw_name);
        if CREDENTIAL_PARAMS.contains(&name.as_ref()) {
            removed = true;
            continue;
        }
        has_version |= name == VERSION_PARAM;
        kept.push(pair);
    }
    let query = if !removed {
        (!query.is_empty()).then_some(Cow::Borrowed(query))
    } else {
        let joined = kept.join("&");
        (!joined.is_empty()).then_some(Cow::Owned(joined))
    };
    Rewritten { query, has_version }
}

/// Decodes `+` as space and percent-escapes; invalid UTF-8 becomes U+FFFD.
fn decode(raw: &str) -> Cow<'_, str> {
    if !raw.contains(['+', '%']) {
        return Cow::Borrowed(raw);
    }
    let spaced = raw.replace('+', " ");
    Cow::Owned(percent_decode_str(&spaced).decode_utf8_lossy().into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_decoded() {
        let query = "keyterm=a+b&keyterm=c%2Fd&other=1";
        let found: Vec<_> = values(query, "keyterm").collect();
        assert_eq!(found, vec!["a b", "c/d"]);
    }

    #[test]
    fn encoded_names_are_recognized() {
        assert_eq!(values("access%5Ftoken=t", "access_token").count(), 1);
    }

    #[test]
    fn rewrite_removes_credentials_and_keeps_bytes() {
        let query = "model=ink-whisper&keyterm=a+b&access_token=SECRET&cartesia_version=2026-08-14&api_key=K&cartesia_client=cartesia-js%2F4.2.0";
        let rewritten = rewrite(Some(query));
        assert_eq!(
            rewritten.query.as_deref(),
            Some(
                "model=ink-whisper&keyterm=a+b&cartesia_version=2026-08-14&cartesia_client=cartesia-js%2F4.2.0"
            )
        );
        assert!(rewritten.has_version);
    }

    #[test]
    fn rewrite_removes_encoded_credential_names() {
        let rewritten = rewrite(Some("access%5ftoken=SECRET&a=1&api%5Fkey=K"));
        assert_eq!(rewritten.query.as_deref(), Some("a=1"));
    }

    #[test]
    fn rewrite_borrows_when_nothing_is_removed() {
        let rewritten = rewrite(Some("a=1&&b=%20"));
        assert!(matches!(rewritten.query, Some(Cow::Borrowed("a=1&&b=%20"))));
        assert!(!rewritten.has_version);
    }

    #[test]
    fn rewrite_of_only_credentials_is_empty() {
        assert_eq!(rewrite(Some("access_token=x")).query, None);
        assert_eq!(rewrite(Some("")).query, None);
        assert_eq!(rewrite(None).query, None);
    }

    #[test]
    fn rewrite_keeps_empty_pairs_after_removal() {
        let rewritten = rewrite(Some("access_token=x&a=1&&b=2"));
        assert_eq!(rewritten.query.as_deref(), Some("a=1&&b=2"));
    }
}

#[cfg(test)]
mod proptests {
    use super::*;
    use proptest::prelude::*;

    /// Decodes a form-encoded component byte by byte, independently of
    /// `decode`: `+` is a space, `%` and two hex digits is a byte, and any
    /// other `%` stays as it is.
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

    fn pair_name(pair: &str) -> &str {
        pair.split_once('=').map_or(pair, |(name, _)| name)
    }

    fn is_credential_pair(pair: &str) -> bool {
        let name = form_decode(pair_name(pair));
        name == "access_token" || name == "api_key"
    }

    /// Generates `name` with each byte written as itself, `%xx` or `%XX`.
    fn encoded(name: &'static str) -> impl Strategy<Value = String> {
        prop::collection::vec(0u8..3, name.len()).prop_map(move |choices| {
            name.bytes()
                .zip(choices)
                .map(|(byte, choice)| match choice {
                    0 => char::from(byte).to_string(),
                    1 => format!("%{byte:02x}"),
                    _ => format!("%{byte:02X}"),
                })
                .collect()
        })
    }

    /// Generates names and values from the characters that matter to the
    /// parser.
    fn component() -> impl Strategy<Value = String> {
        "([a-z_=+]|%[0-9a-fA-F]{0,2}|%5[fF]|%FF|é|\\?){0,8}"
    }

    fn pair() -> impl Strategy<Value = String> {
        prop_oneof![
            (component(), component()).prop_map(|(name, value)| format!("{name}={value}")),
            component(),
            (encoded("access_token"), component())
                .prop_map(|(name, value)| format!("{name}={value}")),
            encoded("api_key"),
            (encoded("cartesia_version"), component())
                .prop_map(|(name, value)| format!("{name}={value}")),
        ]
    }

    fn query() -> impl Strategy<Value = String> {
        prop_oneof![
            prop::collection::vec(pair(), 0..6).prop_map(|pairs| pairs.join("&")),
            any::<String>(),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(400))]

        #[test]
        fn decode_matches_reference(raw in component()) {
            prop_assert_eq!(decode(&raw), form_decode(&raw));
        }

        #[test]
        fn rewrite_keeps_other_pairs_in_order(query in query()) {
            let kept: Vec<&str> = query
                .split('&')
                .filter(|pair| !is_credential_pair(pair))
                .collect();
            let expected = kept.join("&");
            let rewritten = rewrite(Some(&query));
            prop_assert_eq!(
                rewritten.query.as_deref(),
                (!expected.is_empty()).then_some(expected.as_str())
            );
            let has_version = kept
                .iter()
                .any(|pair| form_decode(pair_name(pair)) == VERSION_PARAM);
            prop_assert_eq!(rewritten.has_version, has_version);
        }

        #[test]
        fn rewrite_output_has_no_credentials(query in query()) {
            let rewritten = rewrite(Some(&query));
            let output = rewritten.query.as_deref().unwrap_or("");
            prop_assert!(!output.split('&').any(is_credential_pair), "{output:?}");
        }

        #[test]
        fn rewrite_borrows_only_without_credentials(query in query()) {
            let rewritten = rewrite(Some(&query));
            if query.split('&').any(is_credential_pair) {
                prop_assert!(!matches!(rewritten.query, Some(Cow::Borrowed(_))));
            } else if query.is_empty() {
                prop_assert_eq!(rewritten.query, None);
            } else {
                prop_assert!(
                    matches!(rewritten.query, Some(Cow::Borrowed(kept)) if kept == query)
                );
            }
        }

        #[test]
        fn rewrite_is_idempotent(query in query()) {
            let once = rewrite(Some(&query));
            let twice = rewrite(once.query.as_deref());
            prop_assert_eq!(&twice.query, &once.query);
            prop_assert_eq!(twice.has_version, once.has_version);
            prop_assert!(!matches!(twice.query, Some(Cow::Owned(_))));
        }

        #[test]
        fn values_returns_every_decoded_match(query in query(), name in component()) {
            let name = form_decode(&name);
            let expected: Vec<String> = query
                .split('&')
                .filter(|pair| form_decode(pair_name(pair)) == name)
                .map(|pair| pair.split_once('=').map_or("", |(_, value)| value))
                .map(form_decode)
                .collect();
            let found: Vec<Cow<str>> = values(&query, &name).collect();
            prop_assert_eq!(found, expected);
        }

        #[test]
        fn values_round_trips_encoded_token(
            name in encoded("access_token"),
            token in any::<String>(),
            before in pair(),
        ) {
            let value = percent_encoding::utf8_percent_encode(
                &token,
                percent_encoding::NON_ALPHANUMERIC,
            );
            let query = format!("{before}&{name}={value}");
            let found: Vec<Cow<str>> = values(&query, "access_token").collect();
            prop_assert_eq!(found.last().map(Cow::as_ref), Some(token.as_str()));
        }
    }

    #[test]
    fn redacted_keeps_names_and_hides_values() {
        assert_eq!(
            redacted("model_id=ink&access_token=eyJ.a.b&flag"),
            "model_id=<redacted>&access_token=<redacted>&flag"
        );
        assert_eq!(redacted(""), "");
        let token_as_name = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ1In0.c2lnbmF0dXJlc2lnbmF0dXJl";
        assert_eq!(redacted(token_as_name), "?");
        assert_eq!(redacted("a%20b=1"), "?=<redacted>");
        let many = vec!["p=1"; 40].join("&");
        let logged = redacted(&many);
        assert_eq!(logged.matches("p=<redacted>").count(), MAX_LOGGED_PARAMS);
        assert!(logged.ends_with("&..."), "{logged}");
    }
}
