//! Finding the session JWT in a request.
//!
//! A session may arrive in three places: the session cookie, an
//! `Authorization: Bearer` header, and, on WebSocket handshakes only, the
//! `access_token` query parameter (browsers cannot set headers on a
//! WebSocket). Every place is read. When several carry a credential, they
//! must all carry the same one; any disagreement, including two different
//! cookies of the configured name or two `Authorization` headers, rejects the
//! request, so a stale cookie can never decide whose session a bearer
//! request runs under.

use std::borrow::Cow;

use http::HeaderMap;
use http::header::{AUTHORIZATION, COOKIE};

use super::SessionError;
use crate::query;

/// Where the credential of a request was found, for logs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CredentialSource {
    Bearer,
    Cookie,
    Query,
}

impl CredentialSource {
    pub fn as_str(self) -> &'static str {
        match self {
            CredentialSource::Bearer => "bearer",
            CredentialSource::Cookie => "cookie",
            CredentialSource::Query => "query",
        }
    }
}

/// Returns the request's session JWT and where it was found.
///
/// `query` is read only when `websocket` is true.
pub fn extract<'a>(
    headers: &'a HeaderMap,
    query: Option<&'a str>,
    cookie_name: &'a str,
    websocket: bool,
) -> Result<(Cow<'a, str>, CredentialSource), SessionError> {
    let mut found: Option<(Cow<'a, str>, CredentialSource)> = None;
    let mut offer = |token: Cow<'a, str>, source: CredentialSource| match &found {
        None => {
            found = Some((token, source));
            Ok(())
        }
        Some((existing, _)) if crate::secret::constant_time_eq(existing, &token) => Ok(()),
        Some(_) => Err(SessionError::Ambiguous),
    };

    let mut authorization = headers.get_all(AUTHORIZATION).iter();
    if let Some(value) = authorization.next() {
        if authorization.next().is_some() {
            return Err(SessionError::Ambiguous);
        }
        let value = value.to_str().map_err(|_| SessionError::Malformed)?;
        offer(
            Cow::Borrowed(bearer_token(value)?),
            CredentialSource::Bearer,
        )?;
    }

    for header in headers.get_all(COOKIE) {
        let header = header.to_str().map_err(|_| SessionError::Malformed)?;
        for value in cookie_values(header, cookie_name) {
            offer(Cow::Borrowed(value), CredentialSource::Cookie)?;
        }
    }

    if websocket && let Some(query) = query {
        for value in query::values(query, "access_token") {
            offer(value, CredentialSource::Query)?;
        }
    }

    match found {
        Some((token, _)) if token.is_empty() => Err(SessionError::Malformed),
        Some(found) => Ok(found),
        None => Err(SessionError::Missing),
    }
}

/// Returns the token of an `Authorization: Bearer <token>` value. The scheme
/// is case-insensitive (RFC 9110 section 11.1).
fn bearer_token(value: &str) -> Result<&str, SessionError> {
    let (scheme, token) = value.split_once(' ').ok_or(SessionError::Malformed)?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(SessionError::Malformed);
    }
    let token = token.trim_matches(' ');
    if token.is_empty() || token.contains(' ') {
        return Err(SessionError::Malformed);
    }
    Ok(token)
}

/// Yields the values of every cookie named `name` in one `Cookie` header
/// (RFC 6265 section 4.2), with optional surrounding double quotes removed.
fn cookie_values<'a>(header: &'a str, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
    header.split(';').filter_map(move |pair| {
        let (cookie_name, value) = pair.trim_matches(' ').split_once('=')?;
        if cookie_name.trim_matches(' ') != name {
            return None;
        }
        let value = value.trim_matches(' ');
        let value = value
            .strip_prefix('"')
            .and_then(|inner| inner.strip_suffix('"'))
            .unwrap_or(value);
        Some(value)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, HeaderValue::from_static(value));
        }
        map
    }

    #[test]
    fn bearer_header_is_found() {
        let map = headers(&[("authorization", "Bearer abc.def.ghi")]);
        let (token, source) = extract(&map, None, "session", false).unwrap();
        assert_eq!(token, "abc.def.ghi");
        assert_eq!(source, CredentialSource::Bearer);
    }

    #[test]
    fn bearer_scheme_is_case_insensitive() {
        let map = headers(&[("authorization", "bEaReR abc")]);
        assert_eq!(extract(&map, None, "session", false).unwrap().0, "abc");
    }

    #[test]
    fn other_schemes_are_malformed() {
        for value in ["Basic abc", "Bearer", "Bearer ", "Bearer a b", "abc"] {
            let mut map = HeaderMap::new();
            map.insert(AUTHORIZATION, HeaderValue::from_str(value).unwrap());
            assert_eq!(
                extract(&map, None, "session", false).unwrap_err(),
                SessionError::Malformed,
                "{value}"
            );
        }
    }

    #[test]
    fn cookie_is_found_among_others() {
        let map = headers(&[("cookie", "theme=dark; session=\"tok\"; lang=en")]);
        let (token, source) = extract(&map, None, "session", false).unwrap();
        assert_eq!(token, "tok");
        assert_eq!(source, CredentialSource::Cookie);
    }

    #[test]
    fn cookie_name_must_match_exactly() {
        let map = headers(&[("cookie", "xsession=a; session_old=b; Session=c")]);
        assert_eq!(
            extract(&map, None, "session", false).unwrap_err(),
            SessionError::Missing
        );
    }

    #[test]
    fn query_token_only_counts_on_websockets() {
        let map = HeaderMap::new();
        let query = Some("model=x&access_token=abc");
        assert_eq!(
            extract(&map, query, "session", false).unwrap_err(),
            SessionError::Missing
        );
        let (token, source) = extract(&map, query, "session", true).unwrap();
        assert_eq!(token, "abc");
        assert_eq!(source, CredentialSource::Query);
    }

    #[test]
    fn agreeing_credentials_are_accepted() {
        let map = headers(&[("authorization", "Bearer tok"), ("cookie", "session=tok")]);
        let (token, source) = extract(&map, Some("access_token=tok"), "session", true).unwrap();
        assert_eq!(token, "tok");
        assert_eq!(source, CredentialSource::Bearer);
    }

    #[test]
    fn disagreeing_credentials_are_rejected() {
        type Case<'a> = (&'a [(&'static str, &'static str)], Option<&'a str>);
        let cases: [Case; 5] = [
            (
                &[("authorization", "Bearer a"), ("cookie", "session=b")],
                None,
            ),
            (&[("cookie", "session=a; session=b")], None),
            (&[("cookie", "session=a"), ("cookie", "session=b")], None),
            (
                &[("authorization", "Bearer a"), ("authorization", "Bearer a")],
                None,
            ),
            (&[("cookie", "session=a")], Some("access_token=b")),
        ];
        for (pairs, query) in cases {
            let map = headers(pairs);
            assert_eq!(
                extract(&map, query, "session", true).unwrap_err(),
                SessionError::Ambiguous,
                "{pairs:?} {query:?}"
            );
        }
    }

    #[test]
    fn empty_credential_is_malformed() {
        let map = headers(&[("cookie", "session=")]);
        assert_eq!(
            extract(&map, None, "session", false).unwrap_err(),
            SessionError::Malformed
        );
    }
}

#[cfg(test)]
mod proptests {
    use super::*;
    use http::HeaderValue;
    use proptest::prelude::*;

    const COOKIE_NAME: &str = "session";

    /// Generates tokens of RFC 6750 `b64token` characters, as JWTs are.
    fn token() -> impl Strategy<Value = String> {
        "[A-Za-z0-9._~+/-]{1,24}=?"
    }

    /// Generates cookies whose name is not the session cookie's.
    fn other_cookie() -> impl Strategy<Value = String> {
        ("[A-Za-z0-9_]{1,8}", "[A-Za-z0-9%=._\"-]{0,12}")
            .prop_filter("must not be the session cookie", |(name, _)| {
                name != COOKIE_NAME
            })
            .prop_map(|(name, value)| format!("{name}={value}"))
    }

    /// Generates `Cookie` header values with `session=<token>` among other
    /// cookies, quoted or not, with or without spaces after the separators.
    fn cookie_header(token: String) -> impl Strategy<Value = String> {
        (
            prop::collection::vec(other_cookie(), 0..4),
            any::<prop::sample::Index>(),
            any::<bool>(),
            prop::sample::select(vec![";", "; ", ";  "]),
        )
            .prop_map(move |(mut cookies, position, quoted, separator)| {
                let session = if quoted {
                    format!("{COOKIE_NAME}=\"{token}\"")
                } else {
                    format!("{COOKIE_NAME}={token}")
                };
                cookies.insert(position.index(cookies.len() + 1), session);
                cookies.join(separator)
            })
    }

    /// Generates `Authorization` values with the bearer scheme in any case
    /// and any number of spaces around the token.
    fn bearer_header(token: String) -> impl Strategy<Value = String> {
        ("[bB][eE][aA][rR][eE][rR]", " {1,3}", " {0,2}")
            .prop_map(move |(scheme, before, after)| format!("{scheme}{before}{token}{after}"))
    }

    fn query_with(token: &str) -> String {
        let encoded =
            percent_encoding::utf8_percent_encode(token, percent_encoding::NON_ALPHANUMERIC);
        format!("model=x&access_token={encoded}")
    }

    #[derive(Clone, Copy, Debug)]
    enum Place {
        Bearer,
        Cookie,
        Query,
    }

    fn place() -> impl Strategy<Value = Place> {
        prop_oneof![Just(Place::Bearer), Just(Place::Cookie), Just(Place::Query)]
    }

    /// Header bytes that `HeaderValue` accepts, biased towards separators.
    fn header_value() -> impl Strategy<Value = HeaderValue> {
        prop::collection::vec(
            prop_oneof![
                4 => prop::sample::select(b"session=; \"aB1=,\t".to_vec()),
                1 => 0x20u8..0x7f,
                1 => 0x80u8..=0xff,
            ],
            0..40,
        )
        .prop_map(|bytes| HeaderValue::from_bytes(&bytes).unwrap())
    }

    fn header_map() -> impl Strategy<Value = HeaderMap> {
        let entry = (
            prop::sample::select(vec!["authorization", "cookie", "x-other"]),
            prop_oneof![
                header_value(),
                token()
                    .prop_flat_map(bearer_header)
                    .prop_map(|value| HeaderValue::from_str(&value).unwrap()),
                token()
                    .prop_flat_map(cookie_header)
                    .prop_map(|value| HeaderValue::from_str(&value).unwrap()),
            ],
        );
        prop::collection::vec(entry, 0..4).prop_map(|entries| {
            let mut map = HeaderMap::new();
            for (name, value) in entries {
                map.append(name, value);
            }
            map
        })
    }

    /// Puts `token` into `place` of `map` and `query`.
    fn put(
        map: &mut HeaderMap,
        query: &mut Option<String>,
        place: Place,
        token: &str,
        header: String,
    ) {
        match place {
            Place::Bearer => {
                map.append(AUTHORIZATION, HeaderValue::from_str(&header).unwrap());
            }
            Place::Cookie => {
                map.append(COOKIE, HeaderValue::from_str(&header).unwrap());
            }
            Place::Query => *query = Some(query_with(token)),
        }
    }

    /// Generates a token in a place, with the header value that carries it
    /// there.
    fn placed_token() -> impl Strategy<Value = (Place, String, String)> {
        (place(), token()).prop_flat_map(|(place, token)| {
            let header = match place {
                Place::Bearer => bearer_header(token.clone()).boxed(),
                Place::Cookie => cookie_header(token.clone()).boxed(),
                Place::Query => Just(String::new()).boxed(),
            };
            (Just(place), Just(token), header)
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]

        #[test]
        fn extract_never_panics_and_finds_what_was_sent(
            map in header_map(),
            query in prop::option::of("([a-z_=&%]|access_token=|%5F){0,12}"),
            websocket in any::<bool>(),
        ) {
            let result = extract(&map, query.as_deref(), COOKIE_NAME, websocket);
            if let Ok((token, source)) = &result {
                prop_assert!(!token.is_empty());
                match source {
                    CredentialSource::Bearer => {
                        let value = map[AUTHORIZATION].to_str().unwrap();
                        prop_assert!(value.contains(token.as_ref()));
                    }
                    CredentialSource::Cookie => {
                        let found = map.get_all(COOKIE).iter().any(|value| {
                            value.to_str().unwrap().contains(token.as_ref())
                        });
                        prop_assert!(found);
                    }
                    CredentialSource::Query => {
                        prop_assert!(websocket);
                        let query = query.as_deref().unwrap_or("");
                        let sent = query::values(query, "access_token")
                            .any(|value| value == *token);
                        prop_assert!(sent);
                    }
                }
            }
        }

        #[test]
        fn query_is_ignored_outside_websockets(
            map in header_map(),
            query in "([a-z_=&%]|access_token=){0,12}",
        ) {
            prop_assert_eq!(
                extract(&map, Some(&query), COOKIE_NAME, false),
                extract(&map, None, COOKIE_NAME, false)
            );
        }

        #[test]
        fn success_does_not_depend_on_header_order(map in header_map()) {
            let mut reversed = HeaderMap::new();
            for name in map.keys() {
                for value in map.get_all(name).iter().rev() {
                    reversed.append(name.clone(), value.clone());
                }
            }
            if let Ok(found) = extract(&map, None, COOKIE_NAME, false) {
                prop_assert_eq!(extract(&reversed, None, COOKIE_NAME, false), Ok(found));
            }
        }

        #[test]
        fn token_in_one_place_is_found((place, token, header) in placed_token()) {
            let mut map = HeaderMap::new();
            let mut query = None;
            put(&mut map, &mut query, place, &token, header);
            let (found, source) = extract(&map, query.as_deref(), COOKIE_NAME, true).unwrap();
            prop_assert_eq!(found.as_ref(), token.as_str());
            let expected = match place {
                Place::Bearer => CredentialSource::Bearer,
                Place::Cookie => CredentialSource::Cookie,
                Place::Query => CredentialSource::Query,
            };
            prop_assert_eq!(source, expected);
        }

        #[test]
        fn same_token_in_two_places_is_accepted(
            (first, token, header) in placed_token(),
            second in place(),
            other_cookies in prop::collection::vec(other_cookie(), 0..3),
        ) {
            let mut map = HeaderMap::new();
            let mut query = None;
            put(&mut map, &mut query, first, &token, header);
            let again = match second {
                Place::Bearer => format!("Bearer {token}"),
                Place::Cookie => format!("{COOKIE_NAME}={token}"),
                Place::Query => String::new(),
            };
            if matches!((first, second), (Place::Bearer, Place::Bearer)) {
                return Ok(());
            }
            put(&mut map, &mut query, second, &token, again);
            for cookie in other_cookies {
                map.append(COOKIE, HeaderValue::from_str(&cookie).unwrap());
            }
            let (found, _) = extract(&map, query.as_deref(), COOKIE_NAME, true).unwrap();
            prop_assert_eq!(found.as_ref(), token.as_str());
        }

        #[test]
        fn different_tokens_are_ambiguous(
            (first, token, header) in placed_token(),
            (second, other, other_header) in placed_token(),
        ) {
            prop_assume!(token != other);
            prop_assume!(!matches!((first, second), (Place::Query, Place::Query)));
            let mut map = HeaderMap::new();
            let mut query = None;
            put(&mut map, &mut query, first, &token, header);
            put(&mut map, &mut query, second, &other, other_header);
            prop_assert_eq!(
                extract(&map, query.as_deref(), COOKIE_NAME, true),
                Err(SessionError::Ambiguous)
            );
        }

        #[test]
        fn other_cookies_never_count(cookies in prop::collection::vec(other_cookie(), 1..5)) {
            let mut map = HeaderMap::new();
            map.insert(COOKIE, HeaderValue::from_str(&cookies.join("; ")).unwrap());
            prop_assert_eq!(
                extract(&map, None, COOKIE_NAME, false),
                Err(SessionError::Missing)
            );
        }
    }
}
