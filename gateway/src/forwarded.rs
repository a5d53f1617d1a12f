//! The client's address behind load balancers: the gateway sees the balancer's address,
//! not the caller's, so without this every caller would share one sign-in bucket.
//!
//! `X-Forwarded-For` and `Forwarded` (RFC 7239) are believed only when the connection
//! comes from a configured proxy range (`TOPSMILE_TRUSTED_PROXIES`), and then only as far
//! as the chain of trusted proxies goes: the hops are read from the right (the proxy
//! nearest the gateway) leftwards, skipping trusted addresses; the first address that is
//! not a trusted proxy is the client. Anything a client writes further left is never
//! reached, so a client cannot choose the address it is counted under. From anywhere
//! else, the headers are ignored and the peer address is the client.

use std::net::IpAddr;

use http::HeaderMap;
use ipnet::IpNet;

/// Proxy ranges whose forwarding headers are believed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedProxies(Vec<IpNet>);

impl TrustedProxies {
    /// Comma-separated CIDR ranges (a bare address is one host), e.g.
    /// `10.0.0.0/8, 192.168.1.7`. Empty: trust no proxy.
    pub fn parse(list: &str) -> Result<Self, String> {
        let mut ranges = Vec::new();
        for item in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let range = item
                .parse::<IpNet>()
                .or_else(|_| item.parse::<IpAddr>().map(IpNet::from))
                .map_err(|_| {
                    format!(
                        "trusted proxy {:?} is not an address or a CIDR range",
                        topsmile_kit::validate::shown(item)
                    )
                })?;
            ranges.push(range);
        }
        Ok(Self(ranges))
    }

    fn trusts(&self, address: IpAddr) -> bool {
        let address = canonical(address);
        self.0.iter().any(|range| range.contains(&address))
    }

    /// The client behind a connection from `peer` carrying `headers`.
    pub fn client(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        let peer = canonical(peer);
        if !self.trusts(peer) {
            return peer;
        }
        // RFC 7239 first; X-Forwarded-For where there is no Forwarded header.
        let hops = forwarded_hops(headers).unwrap_or_else(|| x_forwarded_for_hops(headers));
        for hop in hops.iter().rev() {
            match hop {
                Some(address) if self.trusts(*address) => continue,
                Some(address) => return *address,
                // `unknown`, an obfuscated name or garbage: the chain is broken here, and
                // nothing left of it can be believed.
                None => return peer,
            }
        }
        // Every hop is a trusted proxy (or there were none): the leftmost is the client.
        hops.first().copied().flatten().unwrap_or(peer)
    }
}

/// IPv4-mapped IPv6 addresses (`::ffff:10.0.0.1`) as the IPv4 address they are.
fn canonical(address: IpAddr) -> IpAddr {
    match address {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(address, IpAddr::V4),
        v4 => v4,
    }
}

/// The hops of every `X-Forwarded-For` header, left to right.
fn x_forwarded_for_hops(headers: &HeaderMap) -> Vec<Option<IpAddr>> {
    headers
        .get_all("x-forwarded-for")
        .iter()
        .flat_map(|value| value.to_str().unwrap_or("garbage").split(','))
        .map(|hop| parse_address(hop.trim()))
        .collect()
}

/// The `for=` hops of every `Forwarded` header, left to right; `None` when there is no
/// such header.
fn forwarded_hops(headers: &HeaderMap) -> Option<Vec<Option<IpAddr>>> {
    let values: Vec<_> = headers.get_all("forwarded").iter().collect();
    if values.is_empty() {
        return None;
    }
    let mut hops = Vec::new();
    for value in values {
        let Ok(text) = value.to_str() else {
            hops.push(None);
            continue;
        };
        for element in text.split(',') {
            let node = element
                .split(';')
                .filter_map(|pair| pair.split_once('='))
                .find(|(key, _)| key.trim().eq_ignore_ascii_case("for"))
                .map(|(_, value)| value.trim().trim_matches('"'));
            hops.push(node.and_then(parse_node));
        }
    }
    Some(hops)
}

/// A `for=` node: `192.0.2.60`, `192.0.2.60:4711`, `[2001:db8::17]`,
/// `[2001:db8::17]:4711`.
fn parse_node(node: &str) -> Option<IpAddr> {
    if let Some(rest) = node.strip_prefix('[') {
        let (address, _) = rest.split_once(']')?;
        return address.parse().ok().map(canonical);
    }
    parse_address(node)
}

/// An address, with or without a port.
fn parse_address(text: &str) -> Option<IpAddr> {
    text.parse::<IpAddr>()
        .ok()
        .or_else(|| text.parse::<std::net::SocketAddr>().ok().map(|s| s.ip()))
        .map(canonical)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    /// A header map of `pairs`, a repeated name appended (the gateway's tests share it).
    pub(crate) fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, http::HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn headers_from_anywhere_else_are_ignored() {
        let trusted = TrustedProxies::parse("10.0.0.0/8").unwrap();
        let forged = headers(&[("x-forwarded-for", "1.2.3.4"), ("forwarded", "for=5.6.7.8")]);
        assert_eq!(
            trusted.client(ip("203.0.113.5"), &forged),
            ip("203.0.113.5")
        );
        let nobody = TrustedProxies::default();
        assert_eq!(nobody.client(ip("10.0.0.1"), &forged), ip("10.0.0.1"));
    }

    #[test]
    fn the_first_untrusted_hop_from_the_right_is_the_client() {
        let trusted = TrustedProxies::parse("10.0.0.0/8, 192.168.7.7").unwrap();
        // The client wrote a fake hop on the left; two trusted proxies appended theirs.
        let chain = headers(&[("x-forwarded-for", "6.6.6.6, 198.51.100.9, 192.168.7.7")]);
        assert_eq!(trusted.client(ip("10.1.2.3"), &chain), ip("198.51.100.9"));
        // Several headers are one list.
        let split = headers(&[
            ("x-forwarded-for", "6.6.6.6"),
            ("x-forwarded-for", "198.51.100.9:51234"),
        ]);
        assert_eq!(trusted.client(ip("10.1.2.3"), &split), ip("198.51.100.9"));
        // Only trusted hops: the leftmost.
        let inside = headers(&[("x-forwarded-for", "10.9.9.9, 10.8.8.8")]);
        assert_eq!(trusted.client(ip("10.1.2.3"), &inside), ip("10.9.9.9"));
        // No header: the proxy itself.
        assert_eq!(
            trusted.client(ip("10.1.2.3"), &HeaderMap::new()),
            ip("10.1.2.3")
        );
    }

    #[test]
    fn forwarded_is_read_per_rfc_7239_and_wins_over_x_forwarded_for() {
        let trusted = TrustedProxies::parse("10.0.0.0/8").unwrap();
        let both = headers(&[
            (
                "forwarded",
                "for=192.0.2.43, for=\"[2001:db8:cafe::17]:4711\";proto=https",
            ),
            ("x-forwarded-for", "9.9.9.9"),
        ]);
        assert_eq!(
            trusted.client(ip("10.0.0.2"), &both),
            ip("2001:db8:cafe::17")
        );
        // A broken link (unknown, obfuscated) stops the walk: the proxy is the client.
        let unknown = headers(&[("forwarded", "for=192.0.2.43, for=unknown")]);
        assert_eq!(trusted.client(ip("10.0.0.2"), &unknown), ip("10.0.0.2"));
        // IPv4-mapped peers are IPv4.
        let mapped = headers(&[("forwarded", "for=198.51.100.1")]);
        assert_eq!(
            trusted.client(ip("::ffff:10.0.0.2"), &mapped),
            ip("198.51.100.1")
        );
    }

    #[test]
    fn bad_ranges_are_refused_at_start_up() {
        assert!(TrustedProxies::parse("10.0.0.0/33").is_err());
        assert!(TrustedProxies::parse("proxy.local").is_err());
        assert_eq!(
            TrustedProxies::parse(" , ").unwrap(),
            TrustedProxies::default()
        );
    }
}
