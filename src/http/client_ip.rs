//! Who the client is: the peer address, unless the peer is a configured
//! trusted proxy (`trusted_proxies`), in which case the address that proxy
//! reports in `X-Forwarded-For` (else `Forwarded: for=`).
//!
//! The forwarded list is read from the right: each trusted proxy appends
//! the address it saw, so the first address from the right that is not a
//! trusted proxy is the client; anything left of it was written by the
//! client and proves nothing. Headers from an untrusted peer are ignored, so
//! a sender cannot pick the address the login limit or the visitor id sees.

use actix_web::http::header::HeaderMap;
use actix_web::HttpRequest;
use ipnet::IpNet;
use std::net::{IpAddr, Ipv4Addr};

/// The client address of `req` under `trusted` proxies.
pub fn client_ip(req: &HttpRequest, trusted: &[IpNet]) -> IpAddr {
    let peer = req
        .peer_addr()
        .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |a| a.ip());
    resolve(peer, req.headers(), trusted)
}

/// [`client_ip`] over plain values.
pub fn resolve(peer: IpAddr, headers: &HeaderMap, trusted: &[IpNet]) -> IpAddr {
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|net| net.contains(&canonical(*ip)));
    if !is_trusted(&peer) {
        return peer;
    }
    let values = |name: &str| -> Vec<String> {
        headers
            .get_all(name)
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(|s| s.trim().to_owned())
            .collect()
    };
    let mut hops: Vec<IpAddr> = values("x-forwarded-for")
        .iter()
        .filter_map(|s| parse_addr(s))
        .collect();
    if hops.is_empty() {
        hops = values("forwarded")
            .iter()
            .flat_map(|element| element.split(';'))
            .filter_map(|pair| {
                let (k, v) = pair.trim().split_once('=')?;
                k.eq_ignore_ascii_case("for")
                    .then(|| parse_addr(v))
                    .flatten()
            })
            .collect();
    }
    hops.iter()
        .rev()
        .find(|ip| !is_trusted(ip))
        .or(hops.first())
        .copied()
        .unwrap_or(peer)
}

/// An IPv4-mapped IPv6 address as the IPv4 address it carries.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// `1.2.3.4`, `1.2.3.4:5`, `"[::1]:80"`, `::1`; `unknown` and garbage are `None`.
fn parse_addr(text: &str) -> Option<IpAddr> {
    let t = text.trim().trim_matches('"');
    if let Some(rest) = t.strip_prefix('[') {
        return rest.split(']').next()?.parse().ok().map(canonical);
    }
    if let Ok(ip) = t.parse::<IpAddr>() {
        return Some(canonical(ip));
    }
    let (host, port) = t.rsplit_once(':')?;
    port.parse::<u16>().ok()?;
    host.parse::<Ipv4Addr>().ok().map(IpAddr::V4)
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::http::header::{HeaderName, HeaderValue};

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(HeaderName::from_static(k), HeaderValue::from_static(v));
        }
        h
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn headers_from_an_untrusted_peer_are_ignored() {
        let h = headers(&[("x-forwarded-for", "9.9.9.9"), ("forwarded", "for=8.8.8.8")]);
        assert_eq!(resolve(ip("1.2.3.4"), &h, &[]), ip("1.2.3.4"));
        let proxy: IpNet = "10.0.0.0/8".parse().unwrap();
        assert_eq!(resolve(ip("1.2.3.4"), &h, &[proxy]), ip("1.2.3.4"));
    }

    #[test]
    fn a_trusted_proxy_names_the_first_untrusted_hop_from_the_right() {
        let trusted: Vec<IpNet> = vec![
            "10.0.0.0/8".parse().unwrap(),
            "127.0.0.1/32".parse().unwrap(),
        ];
        let h = headers(&[("x-forwarded-for", "6.6.6.6, 5.5.5.5, 10.0.0.2")]);
        assert_eq!(resolve(ip("127.0.0.1"), &h, &trusted), ip("5.5.5.5"));
        let h = headers(&[(
            "forwarded",
            "for=\"[2001:db8::1]:4711\";proto=https, for=10.0.0.3",
        )]);
        assert_eq!(resolve(ip("127.0.0.1"), &h, &trusted), ip("2001:db8::1"));
        let h = headers(&[("x-forwarded-for", "garbage")]);
        assert_eq!(resolve(ip("127.0.0.1"), &h, &trusted), ip("127.0.0.1"));
        let h = headers(&[("x-forwarded-for", "10.0.0.9")]);
        assert_eq!(
            resolve(ip("::ffff:127.0.0.1"), &h, &trusted),
            ip("10.0.0.9")
        );
    }

    #[test]
    fn addresses_parse_with_or_without_ports() {
        assert_eq!(parse_addr("1.2.3.4:5678"), Some(ip("1.2.3.4")));
        assert_eq!(parse_addr("\"[::1]:80\""), Some(ip("::1")));
        assert_eq!(parse_addr("2001:db8::1"), Some(ip("2001:db8::1")));
        assert_eq!(parse_addr("unknown"), None);
    }

    proptest::proptest! {
        #[test]
        fn any_forwarded_header_resolves_to_some_address(xff in ".{0,80}", fwd in ".{0,80}") {
            let mut h = HeaderMap::new();
            if let Ok(v) = HeaderValue::from_str(&xff) {
                h.insert(HeaderName::from_static("x-forwarded-for"), v);
            }
            if let Ok(v) = HeaderValue::from_str(&fwd) {
                h.insert(HeaderName::from_static("forwarded"), v);
            }
            let trusted: Vec<IpNet> = vec!["127.0.0.1/32".parse().unwrap()];
            let _ = resolve(ip("127.0.0.1"), &h, &trusted);
            proptest::prop_assert_eq!(resolve(ip("8.8.8.8"), &h, &trusted), ip("8.8.8.8"));
        }
    }
}
