//! What a policy counts by, for one request. Credentials and header values are reduced to a
//! truncated SHA-256 first: counters (and Redis keys) never carry an API key.

use std::fmt::{self, Write as _};
use std::net::IpAddr;

use sha2::{Digest, Sha256};

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

/// The Redis key of one counter. The `{…}` hash tag covers policy and material, so all
/// counters of one policy for one client (its limits and its quota) share a cluster slot
/// and one script can decide them atomically.
pub fn redis_key(out: &mut String, policy: &str, material: &Material<'_>, rule: usize) {
    out.clear();
    // Writing into a String cannot fail.
    let _ = write!(out, "pcl:{{{policy}|{material}}}:{rule}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_keys_never_appear_in_keys() {
        let mut key = String::new();
        redis_key(
            &mut key,
            "shop/p",
            &Material::ApiKey(digest(b"super-secret-key")),
            0,
        );
        assert!(!key.contains("super-secret-key"));
        assert!(key.starts_with("pcl:{shop/p|k:"));
        assert!(key.ends_with("}:0"));
    }
}
