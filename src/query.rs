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
