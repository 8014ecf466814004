//! Origin normalization and the allowed-origin check.
//!
//! The input is lines: the first is normalized, the second is sent as the
//! `Origin` header, and the rest form the allowed-origin list. A normalized
//! origin must be its own normalization, lower case, without the default
//! port, and the same for the input in upper case. The check must allow an
//! origin exactly when its normalization is listed.

#![no_main]

use cartesia_gateway::cors::{CorsPolicy, OriginCheck, normalize_origin};
use http::header::ORIGIN;
use http::{HeaderMap, HeaderValue};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut lines = data.split(|byte| *byte == b'\n');
    let text = String::from_utf8_lossy(lines.next().unwrap_or_default());
    let header = lines.next().unwrap_or_default();
    let listed: Vec<String> = lines
        .filter_map(|line| std::str::from_utf8(line).ok())
        .filter_map(|line| normalize_origin(line).ok())
        .collect();

    if let Ok(normalized) = normalize_origin(&text) {
        assert_eq!(normalize_origin(&normalized).as_ref(), Ok(&normalized));
        assert_eq!(normalized.to_ascii_lowercase(), normalized);
        if normalized.starts_with("https:") {
            assert!(!normalized.ends_with(":443"));
        }
        if normalized.starts_with("http:") {
            assert!(!normalized.ends_with(":80"));
        }
        assert_eq!(normalize_origin(&text.to_ascii_uppercase()), Ok(normalized));
    }

    let policy = CorsPolicy::new(listed.clone(), 600);
    let mut headers = HeaderMap::new();
    assert_eq!(policy.check(&headers), OriginCheck::Absent);
    let Ok(value) = HeaderValue::from_bytes(header) else {
        return;
    };
    headers.insert(ORIGIN, value.clone());
    let allowed = value
        .to_str()
        .ok()
        .and_then(|text| normalize_origin(text).ok())
        .is_some_and(|normalized| listed.contains(&normalized));
    let expected = if allowed {
        OriginCheck::Allowed(value.clone())
    } else {
        OriginCheck::Denied
    };
    assert_eq!(policy.check(&headers), expected);

    headers.append(ORIGIN, value);
    assert_eq!(policy.check(&headers), OriginCheck::Denied);
});
