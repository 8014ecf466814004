//! Client address extraction from `Forwarded` and `X-Forwarded-For`.
//!
//! With arbitrary headers and trusted networks, the client of an untrusted
//! peer is the peer, every result is in canonical form, and only a trusted
//! peer can make the result differ from the peer. With a generated address
//! chain, a trusted peer yields the rightmost untrusted address, or the
//! leftmost when all are trusted.

#![no_main]

use std::net::{IpAddr, SocketAddr};

use arbitrary::Arbitrary;
use cartesia_gateway::forwarded::client_ip;
use http::header::FORWARDED;
use http::{HeaderMap, HeaderName, HeaderValue};
use ipnet::IpNet;
use libfuzzer_sys::fuzz_target;

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

#[derive(Arbitrary, Debug)]
struct Input {
    peer: IpAddr,
    trusted: Vec<(IpAddr, u8)>,
    /// `true` for `Forwarded`, `false` for `X-Forwarded-For`.
    headers: Vec<(bool, Vec<u8>)>,
    /// Addresses with a port and a choice of how to write them.
    chain: Vec<(IpAddr, u16, u8)>,
    use_forwarded: bool,
}

fuzz_target!(|input: Input| {
    let trusted: Vec<IpNet> = input
        .trusted
        .iter()
        .map(|(address, prefix)| {
            let max = if address.is_ipv4() { 32 } else { 128 };
            IpNet::new(*address, prefix % (max + 1)).unwrap()
        })
        .collect();
    let is_trusted = |address: IpAddr| trusted.iter().any(|network| network.contains(&address));
    let peer = SocketAddr::new(input.peer, 443);
    let canonical_peer = input.peer.to_canonical();

    let mut headers = HeaderMap::new();
    for (forwarded, value) in &input.headers {
        let name = if *forwarded {
            FORWARDED
        } else {
            X_FORWARDED_FOR
        };
        if let Ok(value) = HeaderValue::from_bytes(value) {
            headers.append(name, value);
        }
    }
    let client = client_ip(peer, &headers, &trusted);
    assert_eq!(client, client.to_canonical());
    if !is_trusted(canonical_peer) {
        assert_eq!(client, canonical_peer);
    }

    if input.chain.is_empty() || !is_trusted(canonical_peer) {
        return;
    }
    let written: Vec<String> = input
        .chain
        .iter()
        .map(|(address, port, form)| write_address(*address, *port, *form, input.use_forwarded))
        .collect();
    let mut headers = HeaderMap::new();
    let name = if input.use_forwarded {
        FORWARDED
    } else {
        X_FORWARDED_FOR
    };
    headers.insert(name, HeaderValue::from_str(&written.join(", ")).unwrap());
    let chain: Vec<IpAddr> = input
        .chain
        .iter()
        .map(|(address, _, _)| address.to_canonical())
        .collect();
    let expected = chain
        .iter()
        .rev()
        .find(|address| !is_trusted(**address))
        .unwrap_or(&chain[0]);
    assert_eq!(client_ip(peer, &headers, &trusted), *expected);
});

/// Writes an address as a proxy may: bare, with a port, or for IPv6 in
/// brackets. A `Forwarded` element gets `for=`, quoted when it needs to be.
fn write_address(address: IpAddr, port: u16, form: u8, forwarded: bool) -> String {
    let text = match (address, form % 3) {
        (IpAddr::V4(v4), 1) => format!("{v4}:{port}"),
        (IpAddr::V6(v6), 1) => format!("[{v6}]:{port}"),
        (IpAddr::V6(v6), 2) => format!("[{v6}]"),
        (address, _) => address.to_string(),
    };
    if !forwarded {
        return text;
    }
    if text.contains([':', '[']) || form & 4 != 0 {
        format!("for=\"{text}\";proto=https")
    } else {
        format!("proto=http;For={text}")
    }
}
