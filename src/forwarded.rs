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
    bracketed
        .parse::<IpAddr>()
        .ok()
        .map(|address| address.to_canonical())
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
    fn bracketed_mapped_ipv4_matches_ipv4_network() {
        let map = headers(&[("forwarded", "for=203.0.113.9, for=\"[::ffff:10.2.2.2]\"")]);
        assert_eq!(
            client_ip(peer("10.1.1.1"), &map, &trusted()),
            "203.0.113.9".parse::<IpAddr>().unwrap()
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

#[cfg(test)]
mod proptests {
    use super::*;
    use http::HeaderValue;
    use proptest::prelude::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    fn trusted() -> Vec<IpNet> {
        vec!["10.0.0.0/8".parse().unwrap(), "fd00::/8".parse().unwrap()]
    }

    /// Generates addresses inside and outside the trusted networks,
    /// IPv4-mapped IPv6 addresses included.
    fn address() -> impl Strategy<Value = IpAddr> {
        prop_oneof![
            any::<u32>().prop_map(|bits| IpAddr::V4(Ipv4Addr::from(bits))),
            any::<u32>().prop_map(|bits| IpAddr::V4(Ipv4Addr::from(0x0a00_0000 | bits >> 8))),
            any::<u32>().prop_map(|bits| IpAddr::V6(Ipv4Addr::from(bits).to_ipv6_mapped())),
            any::<u32>().prop_map(|bits| {
                IpAddr::V6(Ipv4Addr::from(0x0a00_0000 | bits >> 8).to_ipv6_mapped())
            }),
            any::<u128>().prop_map(|bits| IpAddr::V6(Ipv6Addr::from(bits))),
            any::<u128>().prop_map(|bits| IpAddr::V6(Ipv6Addr::from(0xfd_u128 << 120 | bits >> 8))),
        ]
    }

    /// Generates `address` as a proxy may write it, with or without a port
    /// and, for IPv6, with or without brackets.
    fn written(address: IpAddr) -> impl Strategy<Value = String> {
        (any::<u16>(), 0u8..3).prop_map(move |(port, form)| match (address, form) {
            (IpAddr::V4(v4), 1) => format!("{v4}:{port}"),
            (IpAddr::V6(v6), 1) => format!("[{v6}]:{port}"),
            (IpAddr::V6(v6), 2) => format!("[{v6}]"),
            (address, _) => address.to_string(),
        })
    }

    fn chain() -> impl Strategy<Value = Vec<(IpAddr, String)>> {
        prop::collection::vec(
            address().prop_flat_map(|address| (Just(address), written(address))),
            1..5,
        )
    }

    /// Returns the client of a chain that a trusted proxy sent: the
    /// rightmost untrusted address, or the leftmost when every address is
    /// trusted.
    fn expected_client(chain: &[(IpAddr, String)]) -> IpAddr {
        let canonical: Vec<IpAddr> = chain
            .iter()
            .map(|(address, _)| address.to_canonical())
            .collect();
        let trusted = trusted();
        canonical
            .iter()
            .rev()
            .find(|address| !trusted.iter().any(|network| network.contains(*address)))
            .unwrap_or(&canonical[0])
            .to_owned()
    }

    fn header_value() -> impl Strategy<Value = HeaderValue> {
        prop_oneof![
            "(for=|For=|\"|\\[|\\]|:|,|;| |[0-9a-f.]{1,4}|unknown|_x){0,10}"
                .prop_map(|text| HeaderValue::from_str(&text).unwrap()),
            prop::collection::vec(prop_oneof![0x20u8..0x7f, 0x80u8..=0xff], 0..40)
                .prop_map(|bytes| HeaderValue::from_bytes(&bytes).unwrap()),
        ]
    }

    fn header_map() -> impl Strategy<Value = HeaderMap> {
        prop::collection::vec(
            (
                prop::sample::select(vec!["forwarded", "x-forwarded-for"]),
                header_value(),
            ),
            0..4,
        )
        .prop_map(|entries| {
            let mut map = HeaderMap::new();
            for (name, value) in entries {
                map.append(name, value);
            }
            map
        })
    }

    fn network() -> impl Strategy<Value = IpNet> {
        (address(), any::<u8>()).prop_map(|(address, prefix)| {
            let max = if address.is_ipv4() { 32 } else { 128 };
            IpNet::new(address, prefix % (max + 1)).unwrap()
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(400))]

        #[test]
        fn untrusted_peer_is_the_client(
            peer in address(),
            port in any::<u16>(),
            map in header_map(),
        ) {
            let trusted = trusted();
            let canonical = peer.to_canonical();
            prop_assume!(!trusted.iter().any(|network| network.contains(&canonical)));
            let peer = SocketAddr::new(peer, port);
            prop_assert_eq!(client_ip(peer, &map, &trusted), canonical);
        }

        #[test]
        fn client_is_canonical_and_needs_trusted_peer(
            peer in address(),
            map in header_map(),
            trusted in prop::collection::vec(network(), 0..3),
        ) {
            let peer = SocketAddr::new(peer, 443);
            let client = client_ip(peer, &map, &trusted);
            prop_assert_eq!(client, client.to_canonical());
            let canonical = peer.ip().to_canonical();
            if client != canonical {
                prop_assert!(trusted.iter().any(|network| network.contains(&canonical)));
            }
        }

        #[test]
        fn trusted_peer_walks_x_forwarded_for(
            chain in chain(),
            split in any::<prop::sample::Index>(),
        ) {
            let entries: Vec<&str> = chain.iter().map(|(_, text)| text.as_str()).collect();
            // The chain may arrive in one header or split over two.
            let at = split.index(entries.len() + 1);
            let mut map = HeaderMap::new();
            for part in [&entries[..at], &entries[at..]] {
                if !part.is_empty() {
                    map.append(X_FORWARDED_FOR, HeaderValue::from_str(&part.join(", ")).unwrap());
                }
            }
            let peer = SocketAddr::new("10.0.0.1".parse().unwrap(), 443);
            prop_assert_eq!(client_ip(peer, &map, &trusted()), expected_client(&chain));
        }

        #[test]
        fn trusted_peer_walks_forwarded(chain in chain(), quoted in any::<bool>()) {
            let elements: Vec<String> = chain
                .iter()
                .map(|(_, text)| {
                    if quoted || text.contains([':', '[']) {
                        format!("for=\"{text}\";proto=https")
                    } else {
                        format!("proto=http;For={text}")
                    }
                })
                .collect();
            let mut map = HeaderMap::new();
            map.insert(FORWARDED, HeaderValue::from_str(&elements.join(", ")).unwrap());
            map.insert(X_FORWARDED_FOR, HeaderValue::from_static("203.0.113.1"));
            let peer = SocketAddr::new("fd00::1".parse().unwrap(), 443);
            prop_assert_eq!(client_ip(peer, &map, &trusted()), expected_client(&chain));
        }
    }
}
