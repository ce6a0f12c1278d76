//! The request head as the engine sees it, and the small text helpers its checks share.

use std::borrow::Cow;
use std::net::IpAddr;

use crate::transform;

/// The request head as the engine sees it.
#[derive(Debug, Clone, Copy)]
pub struct RequestHead<'a> {
    pub method: &'a str,
    /// Path and query exactly as received (`/a%2fb?q=1`).
    pub uri: &'a str,
    pub headers: &'a [(&'a str, &'a [u8])],
    pub client_ip: Option<IpAddr>,
}

impl RequestHead<'_> {
    pub(crate) fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| *v)
    }

    /// Index of the `?` that starts the query. A byte loop: URIs are short, and the
    /// char searcher's set-up cost more than the scan (this runs several times a request).
    pub(crate) fn query_start(&self) -> Option<usize> {
        self.uri.bytes().position(|b| b == b'?')
    }

    pub(crate) fn path_raw(&self) -> &str {
        // `?` is ASCII, so both slices are on char boundaries.
        self.uri
            .get(..self.query_start().unwrap_or(self.uri.len()))
            .unwrap_or(self.uri)
    }

    pub(crate) fn query_raw(&self) -> Option<&str> {
        self.query_start().and_then(|at| self.uri.get(at + 1..))
    }
}

/// `X-Filename`, `X-File-Name`, `X_Filename`, `X.Filename`.
pub(crate) fn is_filename_header(lower: &str) -> bool {
    let mut compact = lower.bytes().filter(u8::is_ascii_alphanumeric);
    let mut buf = [0u8; 9];
    let mut n = 0;
    for b in compact.by_ref() {
        if n == buf.len() {
            return false;
        }
        buf[n] = b;
        n += 1;
    }
    matches!(&buf[..n], b"xfilename" | b"xfile" | b"filename")
}

/// `String::from_utf8_lossy(v).to_ascii_lowercase()` without the copy when it would
/// change nothing (valid UTF-8, no capitals): `application/json` is checked twice per
/// request (protocol checks, body dispatch), and two allocations cost more than the checks.
pub(crate) fn lossy_lowercase(v: &[u8]) -> Cow<'_, str> {
    match std::str::from_utf8(v) {
        Ok(text) => ascii_lowercase(text),
        Err(_) => Cow::Owned(String::from_utf8_lossy(v).to_ascii_lowercase()),
    }
}

/// Header names arrive lowercase from hyper; tests and other callers may capitalize.
pub(crate) fn ascii_lowercase(name: &str) -> Cow<'_, str> {
    if name.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(name.to_ascii_lowercase())
    } else {
        Cow::Borrowed(name)
    }
}

/// The decoded, normalized path (exclusions, restricted files, hidden segments). Most
/// paths (`/api/v1/orders`) are already normal: no escapes, dots, backslashes or `//`.
pub(crate) fn normalized_path(raw: &str) -> Cow<'_, str> {
    // One pass for both tests (`contains("//")` cost a substring searcher per request).
    let mut prev = 0u8;
    let plain = raw.starts_with('/')
        && raw.bytes().all(|b| {
            let ok = !(matches!(b, b'%' | b'.' | b'\\') || (b == b'/' && prev == b'/'));
            prev = b;
            ok
        });
    if plain {
        return Cow::Borrowed(raw);
    }
    Cow::Owned(transform::normalize_path(&String::from_utf8_lossy(
        &transform::url_decode_repeated(raw.as_bytes(), false),
    )))
}
