//! What a policy counts by, for one request. Credentials and header values are reduced to a
//! truncated SHA-256 first: counters (and Redis keys) never carry an API key.

use std::fmt::{self, Write as _};
use std::net::{IpAddr, Ipv6Addr};

use sha2::{Digest, Sha256};
use smallvec::SmallVec;

/// The key material of one policy for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Material<'a> {
    Ip(IpAddr),
    Consumer(&'a str),
    Route(&'a str),
    Global,
    /// Hash of a header value (bounded length, no delimiters).
    Header([u8; 16]),
    /// Hash of the presented API key.
    ApiKey([u8; 16]),
}

/// What a client IP counts as: an IPv4 address itself, an IPv6 address by its first
/// `prefix` bits (the rest zeroed). One IPv6 host commonly holds a whole /64 and can pick any
/// source address in it; counted by full address it would get 2^64 fresh allowances and
/// flood the counters. An IPv4-mapped address is IPv4.
pub fn client_prefix(ip: IpAddr, prefix: u8) -> IpAddr {
    match ip {
        IpAddr::V6(v6) if v6.to_ipv4_mapped().is_none() && prefix < 128 => {
            let mask = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
            IpAddr::V6(Ipv6Addr::from_bits(v6.to_bits() & mask))
        }
        other => other,
    }
}

pub fn digest(bytes: &[u8]) -> [u8; 16] {
    let full = Sha256::digest(bytes);
    let mut out = [0u8; 16];
    out.copy_from_slice(&full[..16]);
    out
}

impl fmt::Display for Material<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let hex = |f: &mut fmt::Formatter<'_>, d: &[u8; 16]| {
            d.iter().try_for_each(|b| write!(f, "{b:02x}"))
        };
        match self {
            Material::Ip(IpAddr::V4(ip)) => {
                f.write_str("ip:")?;
                f.write_str(crate::ip_text::Ipv4Text::new(*ip).as_str())
            }
            Material::Ip(ip) => write!(f, "ip:{ip}"),
            Material::Consumer(c) => write!(f, "c:{c}"),
            Material::Route(r) => write!(f, "r:{r}"),
            Material::Global => f.write_str("g"),
            Material::Header(d) => {
                f.write_str("h:")?;
                hex(f, d)
            }
            Material::ApiKey(d) => {
                f.write_str("k:")?;
                hex(f, d)
            }
        }
    }
}

/// The Redis keys of one script call, back to back: the usual few short keys of a request
/// need no allocation.
#[derive(Default)]
pub struct RedisKeys {
    bytes: SmallVec<[u8; 192]>,
    ends: SmallVec<[usize; 4]>,
}

/// `fmt::Write` into the key bytes (key parts are UTF-8 already).
struct Bytes<'a>(&'a mut SmallVec<[u8; 192]>);

impl fmt::Write for Bytes<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        self.0.extend_from_slice(s.as_bytes());
        Ok(())
    }
}

impl RedisKeys {
    /// Appends the key of one counter. The `{…}` hash tag covers policy and material, so all
    /// counters of one policy for one client (its limits and its quota) share a cluster slot
    /// and one script can decide them atomically. `v2`: a counter is a string of packed
    /// numbers; the hashes that unversioned keys held must never be read as one (a proxy of
    /// the previous release keeps its own counters during a rolling upgrade).
    pub fn push(&mut self, policy: &str, material: &Material<'_>, rule: usize) {
        // Writing into a buffer cannot fail.
        let _ = write!(
            Bytes(&mut self.bytes),
            "pcl:{{{policy}|{material}}}:v2:{rule}"
        );
        self.ends.push(self.bytes.len());
    }

    pub fn len(&self) -> usize {
        self.ends.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = &[u8]> {
        let starts = std::iter::once(0).chain(self.ends.iter().copied());
        starts
            .zip(self.ends.iter())
            .map(|(a, &b)| &self.bytes[a..b])
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn api_keys_never_appear_in_keys() {
        let mut keys = RedisKeys::default();
        keys.push("shop/p", &Material::ApiKey(digest(b"super-secret-key")), 0);
        keys.push("shop/p", &Material::Ip("10.0.0.1".parse().unwrap()), 65);
        let all: Vec<String> = keys
            .iter()
            .map(|k| String::from_utf8(k.to_vec()).unwrap())
            .collect();
        assert_eq!(all.len(), 2);
        assert!(!all[0].contains("super-secret-key"));
        assert!(all[0].starts_with("pcl:{shop/p|k:"));
        assert!(all[0].ends_with("}:v2:0"));
        assert_eq!(all[1], "pcl:{shop/p|ip:10.0.0.1}:v2:65");
        for ip in [
            "0.0.0.0",
            "255.255.255.255",
            "10.200.3.45",
            "::1",
            "2001:db8::7",
        ] {
            let m = Material::Ip(ip.parse().unwrap());
            assert_eq!(m.to_string(), format!("ip:{ip}"));
        }
    }

    #[test]
    fn ipv6_clients_count_by_prefix() {
        let ip = |s: &str| -> IpAddr { s.parse().unwrap() };
        let a = ip("2001:db8:1:2:aaaa:bbbb:cccc:dddd");
        assert_eq!(client_prefix(a, 64), ip("2001:db8:1:2::"));
        assert_eq!(client_prefix(a, 48), ip("2001:db8:1::"));
        assert_eq!(client_prefix(a, 128), a);
        assert_eq!(client_prefix(a, 0), ip("::"));
        assert_eq!(
            client_prefix(ip("2001:db8:1:2:ffff::1"), 64),
            client_prefix(a, 64)
        );
        assert_ne!(
            client_prefix(ip("2001:db8:1:3::1"), 64),
            client_prefix(a, 64)
        );
        for v4 in ["10.1.2.3", "::ffff:10.1.2.3"] {
            assert_eq!(client_prefix(ip(v4), 64), ip(v4));
        }
        assert_eq!(
            Material::Ip(client_prefix(a, 64)).to_string(),
            "ip:2001:db8:1:2::"
        );
    }
}
