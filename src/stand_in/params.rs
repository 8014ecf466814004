//! Query parameters and the `Cartesia-Version` check.

use std::borrow::Cow;

use http::HeaderMap;
use percent_encoding::percent_decode_str;

use super::respond::ApiError;

const VERSION_HEADER: &str = "cartesia-version";
const VERSION_QUERY: &str = "cartesia_version";

/// Decodes one `application/x-www-form-urlencoded` component: `+` is a space, then
/// percent-decoding.
fn decode_component(raw: &str) -> Cow<'_, str> {
    if raw.contains('+') {
        let spaced = raw.replace('+', " ");
        Cow::Owned(percent_decode_str(&spaced).decode_utf8_lossy().into_owned())
    } else {
        percent_decode_str(raw).decode_utf8_lossy()
    }
}

/// Returns every decoded `(name, value)` pair of a raw query string, in order.
pub(crate) fn query_pairs(
    query: Option<&str>,
) -> impl Iterator<Item = (Cow<'_, str>, Cow<'_, str>)> {
    query
        .unwrap_or_default()
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            (decode_component(name), decode_component(value))
        })
}

/// Returns the decoded value of the first query parameter called `name`.
pub(crate) fn query_param(query: Option<&str>, name: &str) -> Option<String> {
    query_pairs(query)
        .find(|(key, _)| key == name)
        .map(|(_, value)| value.into_owned())
}

/// Checks the API version of a request. The query parameter wins over the header, as on Cartesia's
/// WebSockets.
pub(crate) fn check_version(
    headers: &HeaderMap,
    query: Option<&str>,
    required: bool,
) -> Result<(), ApiError> {
    let from_query = query_param(query, VERSION_QUERY);
    let from_header = headers
        .get(VERSION_HEADER)
        .map(|value| String::from_utf8_lossy(value.as_bytes()).into_owned());
    match from_query.or(from_header) {
        Some(version) if is_version_date(&version) => Ok(()),
        Some(_) => Err(ApiError::bad_request(
            "invalid_version",
            "the Cartesia-Version header or cartesia_version query parameter must be a date like 2026-08-14",
        )),
        None if required => Err(ApiError::bad_request(
            "missing_version",
            "send the API version as a Cartesia-Version header or cartesia_version query parameter, for example 2026-08-14",
        )),
        None => Ok(()),
    }
}

/// Checks for the `YYYY-MM-DD` shape with a month of 1..=12 and a day of 1..=31.
fn is_version_date(value: &str) -> bool {
    let bytes = value.as_bytes();
    if bytes.len() != 10 || bytes[4] != b'-' || bytes[7] != b'-' {
        return false;
    }
    let digits_ok = [0, 1, 2, 3, 5, 6, 8, 9]
        .iter()
        .all(|&index| bytes[index].is_ascii_digit());
    if !digits_ok {
        return false;
    }
    let month: u32 = value[5..7].parse().unwrap_or(0);
    let day: u32 = value[8..10].parse().unwrap_or(0);
    (1..=12).contains(&month) && (1..=31).contains(&day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_param_decodes_plus_and_percent() {
        let query = Some("keyterm=a+b&keyterm=c&token=x%2By&empty=&flag");
        assert_eq!(query_param(query, "keyterm").as_deref(), Some("a b"));
        assert_eq!(query_param(query, "token").as_deref(), Some("x+y"));
        assert_eq!(query_param(query, "empty").as_deref(), Some(""));
        assert_eq!(query_param(query, "flag").as_deref(), Some(""));
        assert_eq!(query_param(query, "missing"), None);
        assert_eq!(query_param(None, "keyterm"), None);
    }

    #[test]
    fn version_dates_are_checked() {
        for valid in ["2026-08-14", "2024-06-10", "2025-04-16"] {
            assert!(is_version_date(valid), "{valid}");
        }
        for invalid in [
            "2026-8-14",
            "2026-13-01",
            "2026-00-10",
            "latest",
            "2026-08-14x",
            "2026/08/14",
        ] {
            assert!(!is_version_date(invalid), "{invalid}");
        }
    }

    #[test]
    fn version_query_wins_over_header() {
        let mut headers = HeaderMap::new();
        headers.insert(VERSION_HEADER, http::HeaderValue::from_static("bogus"));
        assert!(check_version(&headers, Some("cartesia_version=2026-08-14"), true).is_ok());
        assert!(check_version(&headers, None, true).is_err());
    }

    #[test]
    fn missing_version_depends_on_route() {
        let headers = HeaderMap::new();
        let error = check_version(&headers, None, true).expect_err("version is required");
        assert_eq!(error.code, "missing_version");
        assert!(check_version(&headers, None, false).is_ok());
    }
}
