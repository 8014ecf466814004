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
