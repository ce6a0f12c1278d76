//! IPv4 addresses as text without the formatting machinery: `Ipv4Addr`'s `Display` costs
//! about a thousand instructions, and the request path formats the client address for
//! forwarded headers and rate-limit keys.

use std::net::Ipv4Addr;

/// The dotted-quad text of an IPv4 address, on the stack.
pub struct Ipv4Text {
    buf: [u8; 15],
    len: usize,
}

impl Ipv4Text {
    pub fn new(ip: Ipv4Addr) -> Self {
        let mut buf = [0u8; 15];
        let mut len = 0;
        for (i, octet) in ip.octets().into_iter().enumerate() {
            if i > 0 {
                buf[len] = b'.';
                len += 1;
            }
            if octet >= 100 {
                buf[len] = b'0' + octet / 100;
                len += 1;
            }
            if octet >= 10 {
                buf[len] = b'0' + octet / 10 % 10;
                len += 1;
            }
            buf[len] = b'0' + octet % 10;
            len += 1;
        }
        Ipv4Text { buf, len }
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }

    pub fn as_str(&self) -> &str {
        // Digits and dots only.
        std::str::from_utf8(self.as_bytes()).unwrap_or("0.0.0.0")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_like_display() {
        for ip in [
            "0.0.0.0",
            "127.0.0.1",
            "10.20.30.40",
            "255.255.255.255",
            "192.168.100.9",
        ] {
            let ip: Ipv4Addr = ip.parse().unwrap_or(Ipv4Addr::UNSPECIFIED);
            assert_eq!(Ipv4Text::new(ip).as_str(), ip.to_string());
        }
    }
}
