//! The client address of a request, honouring `X-Forwarded-For` and
//! `Forwarded` (RFC 7239) only from trusted proxies.
//!
//! When the direct peer is not in the trusted-proxy list, which is empty by
//! default, these headers are ignored and the peer is the client. When it is
//! trusted, the address chain is walked from the right, skipping trusted
//! proxies, and the first untrusted address is the client. `Forwarded` is
//! used when present, `X-Forwarded-For` otherwise.

use std::net::{IpAddr, SocketAddr};

use http::HeaderMap;
use http::header::{FORWARDED, HeaderName};
use ipnet::IpNet;

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

/// Returns the address the gateway treats as the client's.
pub fn client_ip(peer: SocketAddr, headers: &HeaderMap, trusted: &[IpNet]) -> IpAddr {
    let peer = peer.ip().to_canonical();
    if !is_trusted(peer, trusted) {
        return peer;
    }
    let chain = if headers.contains_key(FORWARDED) {
        forwarded_chain(headers)
    } else {
        x_forwarded_for_chain(headers)
    };
    let Some(chain) = chain else {
        return peer;
    };
    chain
        .iter()
        .rev()
        .find(|address| !is_trusted(**address, trusted))
        .or_else(|| chain.first())
        .copied()
        .unwrap_or(peer)
}

fn is_trusted(address: IpAddr, trusted: &[IpNet]) -> bool {
    trusted.iter().any(|network| network.contains(&address))
}

/// Addresses of `X-Forwarded-For`, left to right; `None` if any entry is
/// not an IP address, so a malformed chain is ignored as a whole.
fn x_forwarded_for_chain(headers: &HeaderMap) -> Option<Vec<IpAddr>> {
    let mut chain = Vec::new();
    for value in headers.get_all(X_FORWARDED_FOR) {
        for entry in value.to_str().ok()?.split(',') {
            chain.push(parse_address(entry.trim())?);
        }
    }
    (!chain.is_empty()).then_some(chain)
}

/// The `for=` addresses of `Forwarded`, left to right; `None` if any
/// element lacks one or it is not an IP address (RFC 7239 section 6 also
/// allows obfuscated identifiers, which carry no address).
fn forwarded_chain(headers: &HeaderMap) -> Option<Vec<IpAddr>> {
    let mut chain = Vec::new();
    for value in headers.get_all(FORWARDED) {
        for element in value.to_str().ok()?.split(',') {
            let node = element.split(';').find_map(|pair| {
                let (name, value) = pair.trim().split_once('=')?;
                name.eq_ignore_ascii_case("for").then_some(value)
            })?;
            chain.push(parse_address(node.trim_matches('"'))?);
        }
    }
    (!chain.is_empty()).then_some(chain)
}

/// Parses `1.2.3.4`, `1.2.3.4:5678`, `2001:db8::1` or `[2001:db8::1]:5678`.
fn parse_address(text: &str) -> Option<IpAddr> {
    if let Ok(address) = text.parse::<IpAddr>() {
        return Some(address.to_canonical());
    }
    if let Ok(socket) = text.parse::<SocketAddr>() {
        return Some(socket.ip().to_canonical());
    }
    let bracketed = text.strip_prefix('[')?.strip_suffix(']')?;
    bracketed.parse::<IpAddr>().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn peer(text: &str) -> SocketAddr {
        SocketAddr::new(text.parse().unwrap(), 40000)
    }

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, HeaderValue::from_static(value));
        }
        map
    }

    fn trusted() -> Vec<IpNet> {
        vec!["10.0.0.0/8".parse().unwrap(), "::1/128".parse().unwrap()]
    }

    #[test]
    fn untrusted_peer_ignores_headers() {
        let map = headers(&[
            ("x-forwarded-for", "203.0.113.9"),
            ("forwarded", "for=198.51.100.1"),
        ]);
        assert_eq!(
            client_ip(peer("192.0.2.1"), &map, &trusted()),
            "192.0.2.1".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            client_ip(peer("10.1.1.1"), &map, &[]),
            "10.1.1.1".parse::<IpAddr>().unwrap()
        );
    }

    #[test]
    fn trusted_peer_uses_rightmost_untrusted_address() {
        let map = headers(&[("x-forwarded-for", "198.51.100.7, 203.0.113.9, 10.2.2.2")]);
        assert_eq!(
            client_ip(peer("10.1.1.1"), &map, &trusted()),
            "203.0.113.9".parse::<IpAddr>().unwrap()
        );
    }

    #[test]
    fn forwarded_header_wins_over_x_forwarded_for() {
        let map = headers(&[
            ("x-forwarded-for", "203.0.113.9"),
            (
                "forwarded",
                "for=\"[2001:db8::5]:4711\";proto=https, for=10.3.3.3",
            ),
        ]);
        assert_eq!(
            client_ip(peer("::1"), &map, &trusted()),
            "2001:db8::5".parse::<IpAddr>().unwrap()
        );
    }

    #[test]
    fn all_trusted_chain_returns_leftmost() {
        let map = headers(&[("x-forwarded-for", "10.9.9.9, 10.8.8.8")]);
        assert_eq!(
            client_ip(peer("10.1.1.1"), &map, &trusted()),
            "10.9.9.9".parse::<IpAddr>().unwrap()
        );
    }

    #[test]
    fn malformed_chain_falls_back_to_peer() {
        for value in ["unknown", "203.0.113.9, garbage", ""] {
            let mut map = HeaderMap::new();
            map.insert("x-forwarded-for", HeaderValue::from_static(value));
            assert_eq!(
                client_ip(peer("10.1.1.1"), &map, &trusted()),
                "10.1.1.1".parse::<IpAddr>().unwrap(),
                "{value}"
            );
        }
        let map = headers(&[("forwarded", "for=_hidden")]);
        assert_eq!(
            client_ip(peer("10.1.1.1"), &map, &trusted()),
            "10.1.1.1".parse::<IpAddr>().unwrap()
        );
    }

    #[test]
    fn mapped_ipv4_peer_matches_ipv4_network() {
        let map = headers(&[("x-forwarded-for", "203.0.113.9")]);
        assert_eq!(
            client_ip(peer("::ffff:10.1.1.1"), &map, &trusted()),
            "203.0.113.9".parse::<IpAddr>().unwrap()
        );
    }
}
