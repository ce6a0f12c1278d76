//! Request ids: keep a well-formed incoming `X-Request-ID` so ids correlate across hops,
//! otherwise generate one. Anything else is replaced because the id is echoed into logs and
//! JSON bodies, where arbitrary client bytes would be an injection vector.

use http::{HeaderMap, HeaderName, HeaderValue};

pub const HEADER: &str = "x-request-id";
const NAME: HeaderName = HeaderName::from_static(HEADER);
const MAX_LEN: usize = 128;

pub fn assign(headers: &HeaderMap) -> HeaderValue {
    match headers.get(&NAME) {
        Some(value) if is_valid(value.as_bytes()) => value.clone(),
        _ => generate(),
    }
}

pub fn is_valid(id: &[u8]) -> bool {
    !id.is_empty()
        && id.len() <= MAX_LEN
        && id
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

fn generate() -> HeaderValue {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let random: u128 = rand::random();
    let mut out = [0u8; 32];
    for (i, slot) in out.iter_mut().enumerate() {
        *slot = HEX[((random >> (i * 4)) & 0xf) as usize];
    }
    // Hex digits are always a valid header value.
    HeaderValue::from_bytes(&out).unwrap_or_else(|_| HeaderValue::from_static("0"))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn keeps_valid_and_replaces_invalid() {
        let mut headers = HeaderMap::new();
        headers.insert(HEADER, HeaderValue::from_static("abc-123_X.y"));
        assert_eq!(assign(&headers), "abc-123_X.y");
        headers.insert(HEADER, HeaderValue::from_static("bad id"));
        let generated = assign(&headers);
        assert_eq!(generated.len(), 32);
        assert!(is_valid(generated.as_bytes()));
        headers.insert(HEADER, HeaderValue::from_str(&"a".repeat(129)).unwrap());
        assert_ne!(assign(&headers).len(), 129);
        assert!(!is_valid(b""));
    }
}
