//! Checks shared by the compile steps (routes, authentication, policies, consumers): one
//! definition of what a header name, a CIDR, a host or an algorithm may be, so that every
//! field that takes one accepts the same values.

use std::net::IpAddr;

use ipnet::IpNet;

/// Algorithms the proxy verifies. `none` is never among them; ES512 is not offered by the
/// verification backend, so it is refused rather than silently never matching.
pub(crate) const JWT_ALGORITHMS: [&str; 12] = [
    "HS256", "HS384", "HS512", "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256",
    "ES384", "EdDSA",
];
/// RFC 9110 token characters: header names and methods.
pub(crate) fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// An IP address or CIDR; a bare address becomes a /32 or /128.
pub(crate) fn parse_cidr(text: &str) -> Option<IpNet> {
    text.parse::<IpNet>()
        .ok()
        .or_else(|| text.parse::<IpAddr>().ok().map(IpNet::from))
        .map(|net| net.trunc())
}

/// The regex crate's errors draw a caret diagram over several lines; conditions are one line.
pub(crate) fn one_line_regex_error(e: &regex::Error) -> String {
    let text = e.to_string();
    text.lines()
        .rev()
        .find_map(|l| l.strip_prefix("error: "))
        .unwrap_or(text.as_str())
        .to_string()
}

pub(crate) fn valid_header_value(s: &str) -> bool {
    s.bytes().all(|b| b == b'\t' || (b >= 0x20 && b != 0x7f))
}

/// A DNS host name, optionally `*.` + a name with at least two labels.
pub(crate) fn valid_host(host: &str) -> bool {
    let name = host.strip_prefix("*.").unwrap_or(host);
    if host.starts_with("*.") && !name.contains('.') {
        return false;
    }
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

/// An absolute `http` or `https` URL with a host.
pub(crate) fn is_http_url(url: &str) -> bool {
    match url.parse::<http::Uri>() {
        Ok(uri) => {
            matches!(uri.scheme_str(), Some("http" | "https"))
                && uri.host().is_some_and(|h| !h.is_empty())
        }
        Err(_) => false,
    }
}
