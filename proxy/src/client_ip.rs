//! The client's address: the socket peer, unless the peer is a trusted proxy, in which case
//! `X-Forwarded-For` is walked from the right and the first untrusted address wins. Taking
//! the right-most untrusted hop (not the left-most entry) is what stops a client from
//! choosing its own address by sending a forged header through the proxy chain.

use std::net::IpAddr;

use http::HeaderMap;
use ipnet::IpNet;

pub fn is_trusted(ip: IpAddr, trusted: &[IpNet]) -> bool {
    trusted.iter().any(|net| net.contains(&ip))
}

pub fn resolve(peer: IpAddr, headers: &HeaderMap, trusted: &[IpNet]) -> IpAddr {
    let peer = peer.to_canonical();
    if trusted.is_empty() || !is_trusted(peer, trusted) {
        return peer;
    }
    let mut best = peer;
    // Later header lines are later hops, so walk them in reverse as one list.
    let values: Vec<&str> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    for value in values.iter().rev() {
        for entry in value.rsplit(',') {
            match parse_entry(entry) {
                Some(ip) => {
                    best = ip;
                    if !is_trusted(ip, trusted) {
                        return ip;
                    }
                }
                // An unparsable hop means the chain is broken; stop at the last trusted one.
                None => return best,
            }
        }
    }
    best
}

fn parse_entry(entry: &str) -> Option<IpAddr> {
    let entry = entry.trim();
    if let Ok(ip) = entry.parse::<IpAddr>() {
        return Some(ip.to_canonical());
    }
    // Some proxies add ports: "1.2.3.4:5678" or "[::1]:5678".
    entry
        .parse::<std::net::SocketAddr>()
        .ok()
        .map(|sa| sa.ip().to_canonical())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use http::HeaderValue;

    #[test]
    fn honours_xff_only_from_trusted_peers() {
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let mut headers = HeaderMap::new();
        headers.insert(
            "x-forwarded-for",
            HeaderValue::from_static("6.6.6.6, 1.2.3.4, 10.0.0.7"),
        );
        let untrusted: IpAddr = "9.9.9.9".parse().unwrap();
        assert_eq!(resolve(untrusted, &headers, &trusted), untrusted);
        let proxy: IpAddr = "10.1.1.1".parse().unwrap();
        assert_eq!(
            resolve(proxy, &headers, &trusted),
            "1.2.3.4".parse::<IpAddr>().unwrap()
        );
        headers.insert("x-forwarded-for", HeaderValue::from_static("garbage"));
        assert_eq!(resolve(proxy, &headers, &trusted), proxy);
    }
}
