//! Cross-origin rules for browsers: the allowed-origin list, responses to CORS
//! preflights, and the CORS headers on every response to an allowed origin.
//!
//! Origins are compared in their serialized form (RFC 6454 section 6.1):
//! lower-case scheme and host, and the port only when it is not the
//! scheme's default. A wildcard is never sent; the allowed origin is echoed
//! with `Access-Control-Allow-Credentials: true`, so cookies work.

use http::header::{
    ACCESS_CONTROL_ALLOW_CREDENTIALS, ACCESS_CONTROL_ALLOW_HEADERS, ACCESS_CONTROL_ALLOW_METHODS,
    ACCESS_CONTROL_ALLOW_ORIGIN, ACCESS_CONTROL_EXPOSE_HEADERS, ACCESS_CONTROL_MAX_AGE,
    ACCESS_CONTROL_REQUEST_HEADERS, ACCESS_CONTROL_REQUEST_METHOD, HeaderMap, HeaderValue, ORIGIN,
    VARY,
};
use http::{Method, Response, StatusCode};

use crate::body::{self, ResponseBody};
use crate::error::GatewayError;
use crate::routes::{Route, RouteKind};
use crate::session::CredentialSource;

/// Fetch metadata header that states whether a request is same-origin.
const SEC_FETCH_SITE: http::HeaderName = http::HeaderName::from_static("sec-fetch-site");

/// Request headers a preflight may ask for: the ones the official Cartesia
/// SDKs send, plus every `x-stainless-*` header.
const ALLOWED_REQUEST_HEADERS: [&str; 5] = [
    "authorization",
    "content-type",
    "accept",
    "cartesia-version",
    "x-cartesia-client",
];
const ALLOWED_REQUEST_HEADER_PREFIX: &str = "x-stainless-";

/// Response headers a browser script may read besides the safelisted ones.
const EXPOSED_HEADERS: &str = "Retry-After, Cartesia-File-ID";

/// `Vary` on every response whose CORS headers depend on the request.
const VARY_PREFLIGHT: &str =
    "Origin, Access-Control-Request-Method, Access-Control-Request-Headers";

/// An origin that is not a serialized `scheme://host[:port]`.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidOrigin(&'static str);

/// Serializes an origin: lower-case scheme and host, no default port.
/// Accepts only `http` and `https` origins without path, query or user info.
pub fn normalize_origin(text: &str) -> Result<String, InvalidOrigin> {
    let (scheme, rest) = text.split_once("://").ok_or(InvalidOrigin(
        "an origin looks like https://app.example.com",
    ))?;
    let scheme = scheme.to_ascii_lowercase();
    let default_port: u16 = match scheme.as_str() {
        "https" => 443,
        "http" => 80,
        _ => return Err(InvalidOrigin("the scheme must be https or http")),
    };
    if rest.is_empty() || rest.contains(['/', '?', '#', '@', '*', ' ']) {
        return Err(InvalidOrigin(
            "give only scheme, host and port, without path, wildcard or user info",
        ));
    }
    let (host, port) = split_host_port(rest)?;
    if host.is_empty()
        || !host
            .bytes()
            .all(|byte| byte.is_ascii_alphanumeric() || b".-[]:".contains(&byte))
    {
        return Err(InvalidOrigin(
            "the host is not a valid host name or address",
        ));
    }
    let host = host.to_ascii_lowercase();
    match port.map(parse_port).transpose()? {
        Some(port) if port != default_port => Ok(format!("{scheme}://{host}:{port}")),
        _ => Ok(format!("{scheme}://{host}")),
    }
}

/// Parses a port of decimal digits, so `08443` is port 8443 as in a URL
/// parser, while a sign or an empty port is rejected.
fn parse_port(text: &str) -> Result<u16, InvalidOrigin> {
    let invalid = InvalidOrigin("the port is not a number from 1 to 65535");
    if text.is_empty() || !text.bytes().all(|byte| byte.is_ascii_digit()) {
        return Err(invalid);
    }
    match text.parse::<u16>() {
        Ok(0) | Err(_) => Err(invalid),
        Ok(port) => Ok(port),
    }
}

fn split_host_port(authority: &str) -> Result<(&str, Option<&str>), InvalidOrigin> {
    if authority.starts_with('[') {
        let end = authority
            .find(']')
            .ok_or(InvalidOrigin("an IPv6 host needs a closing bracket"))?;
        let (host, rest) = authority.split_at(end + 1);
        return match rest.strip_prefix(':') {
            Some(port) => Ok((host, Some(port))),
            None if rest.is_empty() => Ok((host, None)),
            None => Err(InvalidOrigin("unexpected text after the IPv6 host")),
        };
    }
    Ok(match authority.split_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (authority, None),
    })
}

/// The result of checking a request's `Origin` header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OriginCheck {
    /// No `Origin` header: not a browser cross-origin request.
    Absent,
    /// An allowed origin; the value is echoed in CORS headers.
    Allowed(HeaderValue),
    /// An origin not in the list, `null`, or an unparsable value.
    Denied,
}

/// The allowed origins and preflight settings.
#[derive(Clone, Debug)]
pub struct CorsPolicy {
    allowed_origins: Vec<String>,
    max_age: HeaderValue,
}

impl CorsPolicy {
    /// `allowed_origins` must already be normalized.
    pub fn new(allowed_origins: Vec<String>, max_age_secs: u64) -> Self {
        CorsPolicy {
            allowed_origins,
            max_age: HeaderValue::from(max_age_secs),
        }
    }

    /// Checks the request's `Origin` header against the list. Several
    /// `Origin` headers are denied.
    pub fn check(&self, headers: &HeaderMap) -> OriginCheck {
        let mut values = headers.get_all(ORIGIN).iter();
        let Some(origin) = values.next() else {
            return OriginCheck::Absent;
        };
        if values.next().is_some() {
            return OriginCheck::Denied;
        }
        let allowed = origin
            .to_str()
            .ok()
            .and_then(|text| normalize_origin(text).ok())
            .is_some_and(|normalized| self.allowed_origins.contains(&normalized));
        if allowed {
            OriginCheck::Allowed(origin.clone())
        } else {
            OriginCheck::Denied
        }
    }

    /// Builds the response to a CORS preflight for `route` from an allowed origin, without
    /// a session and without contacting the upstream. The caller adds the
    /// origin headers with [`CorsPolicy::apply`].
    pub fn preflight(&self, route: Route, headers: &HeaderMap) -> Response<ResponseBody> {
        let mut response = Response::new(body::empty());
        *response.status_mut() = StatusCode::NO_CONTENT;
        let allow_method = if route.method() == Method::GET {
            HeaderValue::from_static("GET")
        } else {
            HeaderValue::from_static("POST")
        };
        let response_headers = response.headers_mut();
        response_headers.insert(ACCESS_CONTROL_ALLOW_METHODS, allow_method);
        if let Some(allowed) = allowed_request_headers(headers) {
            response_headers.insert(ACCESS_CONTROL_ALLOW_HEADERS, allowed);
        }
        response_headers.insert(ACCESS_CONTROL_MAX_AGE, self.max_age.clone());
        response
    }

    /// Adds the CORS headers for an allowed origin to any response.
    pub fn apply(&self, origin: &HeaderValue, response: &mut Response<ResponseBody>) {
        let headers = response.headers_mut();
        headers.insert(ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
        headers.insert(
            ACCESS_CONTROL_ALLOW_CREDENTIALS,
            HeaderValue::from_static("true"),
        );
        headers.insert(
            ACCESS_CONTROL_EXPOSE_HEADERS,
            HeaderValue::from_static(EXPOSED_HEADERS),
        );
        add_vary(headers);
    }
}

/// Rejects cookie-authenticated requests that a browser may have sent on
/// behalf of another site (cross-site request forgery and cross-site
/// WebSocket hijacking), since browsers attach cookies by themselves.
///
/// A cookie-authenticated WebSocket handshake needs an allowed `Origin`;
/// every browser sends one. A cookie-authenticated HTTP request needs an
/// allowed `Origin` or, without one, `Sec-Fetch-Site: same-origin`. Bearer
/// and query credentials cannot be attached by a browser on its own, so they
/// are not subject to this rule.
pub fn check_cookie_origin(
    kind: RouteKind,
    credential: CredentialSource,
    origin: &OriginCheck,
    headers: &HeaderMap,
) -> Result<(), GatewayError> {
    if credential != CredentialSource::Cookie {
        return Ok(());
    }
    match (origin, kind) {
        (OriginCheck::Allowed(_), _) => Ok(()),
        (OriginCheck::Denied, _) => Err(GatewayError::OriginNotAllowed),
        (OriginCheck::Absent, RouteKind::WebSocket) => Err(GatewayError::OriginRequired),
        (OriginCheck::Absent, RouteKind::Http) => {
            let same_origin = headers
                .get(SEC_FETCH_SITE)
                .is_some_and(|value| value.as_bytes() == b"same-origin");
            if same_origin {
                Ok(())
            } else {
                Err(GatewayError::OriginRequired)
            }
        }
    }
}

/// Adds `Vary` for the headers that decide the CORS response.
pub fn add_vary(headers: &mut HeaderMap) {
    headers.append(VARY, HeaderValue::from_static(VARY_PREFLIGHT));
}

/// Whether a request is a CORS preflight (Fetch standard, CORS protocol):
/// `OPTIONS` with `Origin` and `Access-Control-Request-Method`.
pub fn is_preflight(method: &Method, headers: &HeaderMap) -> bool {
    method == Method::OPTIONS
        && headers.contains_key(ORIGIN)
        && headers.contains_key(ACCESS_CONTROL_REQUEST_METHOD)
}

/// Returns the requested headers that are allowed, lower-cased, or `None`
/// when none was requested or none is allowed.
fn allowed_request_headers(headers: &HeaderMap) -> Option<HeaderValue> {
    let requested: Vec<String> = headers
        .get_all(ACCESS_CONTROL_REQUEST_HEADERS)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .map(|name| name.trim().to_ascii_lowercase())
        .filter(|name| is_allowed_request_header(name))
        .collect();
    if requested.is_empty() {
        return None;
    }
    HeaderValue::from_str(&requested.join(", ")).ok()
}

fn is_allowed_request_header(name: &str) -> bool {
    ALLOWED_REQUEST_HEADERS.contains(&name)
        || name
            .strip_prefix(ALLOWED_REQUEST_HEADER_PREFIX)
            .is_some_and(|rest| {
                !rest.is_empty()
                    && rest
                        .bytes()
                        .all(|byte| byte.is_ascii_alphanumeric() || byte == b'-')
            })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_are_normalized() {
        let cases = [
            ("https://App.Example.com", "https://app.example.com"),
            ("https://app.example.com:443", "https://app.example.com"),
            ("http://localhost:3000", "http://localhost:3000"),
            ("http://localhost:80", "http://localhost"),
            ("HTTPS://[::1]:8443", "https://[::1]:8443"),
        ];
        for (input, expected) in cases {
            assert_eq!(normalize_origin(input).as_deref(), Ok(expected), "{input}");
        }
    }

    #[test]
    fn ports_are_serialized_as_numbers() {
        let cases = [
            ("http://0:080", "http://0"),
            ("https://app.example.com:0443", "https://app.example.com"),
            ("http://localhost:03000", "http://localhost:3000"),
        ];
        for (input, expected) in cases {
            assert_eq!(normalize_origin(input).as_deref(), Ok(expected), "{input}");
        }
        for input in [
            "https://app.example.com:+443",
            "https://app.example.com:0",
            "https://app.example.com:",
        ] {
            assert!(normalize_origin(input).is_err(), "{input} must be rejected");
        }
    }

    #[test]
    fn invalid_origins_are_rejected() {
        let cases = [
            "*",
            "null",
            "app.example.com",
            "ftp://app.example.com",
            "https://app.example.com/",
            "https://app.example.com/path",
            "https://user@app.example.com",
            "https://*.example.com",
            "https://",
            "https://app.example.com:99999",
            "https://app.example.com:x",
            "https://[::1",
        ];
        for input in cases {
            assert!(normalize_origin(input).is_err(), "{input} must be rejected");
        }
    }

    fn policy() -> CorsPolicy {
        CorsPolicy::new(vec!["https://app.example.com".to_owned()], 600)
    }

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, HeaderValue::from_static(value));
        }
        map
    }

    #[test]
    fn origin_check_outcomes() {
        let policy = policy();
        assert_eq!(policy.check(&headers(&[])), OriginCheck::Absent);
        assert_eq!(
            policy.check(&headers(&[("origin", "https://APP.example.com")])),
            OriginCheck::Allowed(HeaderValue::from_static("https://APP.example.com"))
        );
        for denied in [
            "https://evil.example",
            "null",
            "http://app.example.com",
            "garbage",
        ] {
            let mut map = HeaderMap::new();
            map.insert(ORIGIN, HeaderValue::from_static(denied));
            assert_eq!(policy.check(&map), OriginCheck::Denied, "{denied}");
        }
        let twice = headers(&[
            ("origin", "https://app.example.com"),
            ("origin", "https://app.example.com"),
        ]);
        assert_eq!(policy.check(&twice), OriginCheck::Denied);
    }

    #[test]
    fn preflight_allows_sdk_headers_only() {
        let request = headers(&[
            ("origin", "https://app.example.com"),
            ("access-control-request-method", "POST"),
            (
                "access-control-request-headers",
                "Authorization, content-type, X-Stainless-Lang, x-evil",
            ),
        ]);
        let origin = HeaderValue::from_static("https://app.example.com");
        let policy = policy();
        let mut response = policy.preflight(Route::TtsBytes, &request);
        policy.apply(&origin, &mut response);
        let headers = response.headers();
        assert_eq!(response.status(), StatusCode::NO_CONTENT);
        assert_eq!(
            headers[ACCESS_CONTROL_ALLOW_ORIGIN],
            "https://app.example.com"
        );
        assert_eq!(headers[ACCESS_CONTROL_ALLOW_CREDENTIALS], "true");
        assert_eq!(headers[ACCESS_CONTROL_ALLOW_METHODS], "POST");
        assert_eq!(
            headers[ACCESS_CONTROL_ALLOW_HEADERS],
            "authorization, content-type, x-stainless-lang"
        );
        assert_eq!(headers[ACCESS_CONTROL_MAX_AGE], "600");
        assert!(headers[VARY].to_str().unwrap().contains("Origin"));
    }

    #[test]
    fn preflight_detection_needs_both_headers() {
        let both = headers(&[
            ("origin", "https://app.example.com"),
            ("access-control-request-method", "POST"),
        ]);
        assert!(is_preflight(&Method::OPTIONS, &both));
        assert!(!is_preflight(&Method::POST, &both));
        let origin_only = headers(&[("origin", "https://app.example.com")]);
        assert!(!is_preflight(&Method::OPTIONS, &origin_only));
    }
}

#[cfg(test)]
mod proptests {
    use super::*;
    use proptest::prelude::*;

    fn mixed_case(text: String) -> impl Strategy<Value = String> {
        prop::collection::vec(any::<bool>(), text.len()).prop_map(move |upper| {
            text.chars()
                .zip(upper)
                .map(|(c, upper)| if upper { c.to_ascii_uppercase() } else { c })
                .collect()
        })
    }

    /// Generates lower-case hosts: DNS names, IPv4 addresses and bracketed
    /// IPv6 addresses.
    fn host() -> impl Strategy<Value = String> {
        prop_oneof![
            "[a-z0-9]([a-z0-9-]{0,6}[a-z0-9])?(\\.[a-z0-9]{1,6}){0,3}",
            any::<std::net::Ipv4Addr>().prop_map(|address| address.to_string()),
            any::<std::net::Ipv6Addr>().prop_map(|address| format!("[{address}]")),
        ]
    }

    /// Generates an origin as a person may write it, with its serialized
    /// form. The origin has any case, and its port is left out, written as
    /// the default, written with leading zeros, or another port.
    fn origin() -> impl Strategy<Value = (String, String)> {
        (
            prop::sample::select(vec![("http", 80u16), ("https", 443)]),
            host(),
            prop_oneof![Just(None), Just(Some(0u16)), (1u16..).prop_map(Some)],
            0usize..3,
        )
            .prop_flat_map(|((scheme, default_port), host, port, zeros)| {
                let serialized = match port {
                    Some(port) if port != 0 && port != default_port => {
                        format!("{scheme}://{host}:{port}")
                    }
                    _ => format!("{scheme}://{host}"),
                };
                let written_port = match port {
                    None => String::new(),
                    Some(0) => format!(":{}{default_port}", "0".repeat(zeros)),
                    Some(port) => format!(":{}{port}", "0".repeat(zeros)),
                };
                (
                    mixed_case(format!("{scheme}://{host}{written_port}")),
                    Just(serialized),
                )
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(400))]

        #[test]
        fn normalize_is_idempotent(
            text in prop_oneof![
                origin().prop_map(|(written, _)| written),
                "(https?://|HTTP://)?[a-zA-Z0-9.:\\[\\]+-]{0,16}",
                any::<String>(),
            ],
        ) {
            if let Ok(normalized) = normalize_origin(&text) {
                prop_assert_eq!(normalize_origin(&normalized), Ok(normalized.clone()));
                prop_assert_eq!(normalized.to_ascii_lowercase(), normalized.as_str());
                prop_assert!(!normalized.ends_with(":443") || !normalized.starts_with("https:"));
                prop_assert!(!normalized.ends_with(":80") || !normalized.starts_with("http:"));
            }
        }

        #[test]
        fn normalize_serializes_written_origins((written, serialized) in origin()) {
            prop_assert_eq!(normalize_origin(&written), Ok(serialized));
        }

        #[test]
        fn check_allows_listed_origins_in_any_form(
            (written, serialized) in origin(),
            (other, other_serialized) in origin(),
        ) {
            let policy = CorsPolicy::new(vec![serialized], 600);
            let value = HeaderValue::from_str(&written).unwrap();
            let mut headers = HeaderMap::new();
            headers.insert(ORIGIN, value.clone());
            prop_assert_eq!(policy.check(&headers), OriginCheck::Allowed(value.clone()));

            headers.append(ORIGIN, value);
            prop_assert_eq!(policy.check(&headers), OriginCheck::Denied);

            let mut other_headers = HeaderMap::new();
            other_headers.insert(ORIGIN, HeaderValue::from_str(&other).unwrap());
            let expected = if policy.allowed_origins.contains(&other_serialized) {
                OriginCheck::Allowed(HeaderValue::from_str(&other).unwrap())
            } else {
                OriginCheck::Denied
            };
            prop_assert_eq!(policy.check(&other_headers), expected);
        }

        #[test]
        fn check_allows_only_listed_origins(
            (_, serialized) in origin(),
            value in prop::collection::vec(prop_oneof![0x20u8..0x7f, 0x80u8..=0xff], 0..40),
        ) {
            let policy = CorsPolicy::new(vec![serialized.clone()], 600);
            let mut headers = HeaderMap::new();
            prop_assert_eq!(policy.check(&headers), OriginCheck::Absent);
            let value = HeaderValue::from_bytes(&value).unwrap();
            headers.insert(ORIGIN, value.clone());
            let listed = value
                .to_str()
                .ok()
                .and_then(|text| normalize_origin(text).ok())
                .is_some_and(|normalized| normalized == serialized);
            let expected = if listed {
                OriginCheck::Allowed(value)
            } else {
                OriginCheck::Denied
            };
            prop_assert_eq!(policy.check(&headers), expected);
        }
    }
}
