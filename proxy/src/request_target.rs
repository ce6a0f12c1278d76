//! The request line and framing headers, checked before anything routes on them, and the
//! path in the one normal form that matching, the WAF, the audit log and the upstream share.
//!
//! A request is refused when an upstream could read it differently from us:
//! - a method that is not an upper-case token (`delete` would skip a route listing `DELETE`
//!   and reach frameworks that upper-case it): 400;
//! - `CONNECT` (405), and request targets other than origin-form or absolute-form
//!   (authority-form, asterisk-form): 400;
//! - HTTP/1.1 without `Host`, or any request with two `Host` fields or a malformed one
//!   (RFC 9112 §3.2): 400;
//! - a `Transfer-Encoding` other than exactly `chunked` (`gzip, chunked` would be forwarded
//!   as plain chunked, its `gzip` silently dropped): 501; with `Content-Length` too: 400;
//! - a path that does not normalise ([`portcullis_compiler::path`]): 400.
//!
//! Header names with `_` are dropped (nginx's `underscores_in_headers off`): CGI and WSGI
//! servers read `X_User_ID` as `X-User-ID`, which would smuggle an identity header past the
//! gateway's removal of client-sent ones.

use std::borrow::Cow;

use http::request::Parts;
use http::uri::PathAndQuery;
use http::{header, HeaderMap, HeaderName, Method, Uri, Version};
use portcullis_compiler::config::PathNormalizationConfig;
use portcullis_compiler::path::{self, Normalized, PathError};

#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    #[error("the method must be an upper-case token")]
    MethodCase,
    #[error("CONNECT is not supported")]
    Connect,
    #[error("the request target must be an absolute path")]
    TargetForm,
    #[error("the request has no Host header")]
    MissingHost,
    #[error("the request has more than one Host header")]
    DuplicateHost,
    #[error("the Host header is not a valid host")]
    InvalidHost,
    #[error("unsupported transfer coding")]
    TransferCoding,
    #[error("the request has both Content-Length and Transfer-Encoding")]
    LengthAndTransferEncoding,
    #[error("invalid path: {0}")]
    Path(#[from] PathError),
    #[error("the path holds an encoded slash or a backslash")]
    EncodedSlash,
    #[error("the path's empty segments change its meaning")]
    AmbiguousPath,
}

impl RequestError {
    pub fn status(&self) -> http::StatusCode {
        use http::StatusCode;
        match self {
            RequestError::Connect => StatusCode::METHOD_NOT_ALLOWED,
            RequestError::TransferCoding => StatusCode::NOT_IMPLEMENTED,
            _ => StatusCode::BAD_REQUEST,
        }
    }

    pub fn reason(&self) -> &'static str {
        match self {
            RequestError::MethodCase => "method_case",
            RequestError::Connect => "connect_refused",
            RequestError::TargetForm => "target_form",
            RequestError::MissingHost => "missing_host",
            RequestError::DuplicateHost => "duplicate_host",
            RequestError::InvalidHost => "invalid_host",
            RequestError::TransferCoding => "transfer_coding",
            RequestError::LengthAndTransferEncoding => "length_and_transfer_encoding",
            RequestError::Path(PathError::NotAbsolute) => "target_form",
            RequestError::Path(PathError::BadEncoding) => "path_bad_encoding",
            RequestError::Path(PathError::EncodedNul) => "path_encoded_nul",
            RequestError::Path(PathError::DotSegmentParameter) => "path_dot_parameter",
            RequestError::Path(PathError::AboveRoot) => "path_above_root",
            RequestError::EncodedSlash => "path_encoded_slash",
            RequestError::AmbiguousPath => "path_ambiguous",
        }
    }
}

/// The request path in normal form with merged slashes: the form routes match.
#[derive(Debug, Default)]
pub struct TargetPath {
    /// `Some` when the normal form differs from the request's path.
    pub changed: Option<String>,
    pub encoded_slash: bool,
    pub had_empty_segment: bool,
}

/// Checks the request line and framing headers, drops underscore header names (unless
/// allowed) and normalises the path.
pub fn check(parts: &mut Parts, allow_underscores: bool) -> Result<TargetPath, RequestError> {
    check_method(&parts.method)?;
    check_host(parts)?;
    check_framing(&parts.headers, parts.version)?;
    if !allow_underscores {
        drop_underscore_names(&mut parts.headers);
    }
    let Normalized {
        path,
        encoded_slash,
        had_empty_segment,
    } = path::normalize(parts.uri.path(), true)?;
    Ok(TargetPath {
        changed: match path {
            Cow::Borrowed(_) => None,
            Cow::Owned(p) => Some(p),
        },
        encoded_slash,
        had_empty_segment,
    })
}

fn check_method(method: &Method) -> Result<(), RequestError> {
    if *method == Method::CONNECT {
        return Err(RequestError::Connect);
    }
    // The standard methods are upper-case by construction; only extensions need a look.
    if method.as_str().bytes().any(|b| b.is_ascii_lowercase()) {
        return Err(RequestError::MethodCase);
    }
    Ok(())
}

fn check_host(parts: &Parts) -> Result<(), RequestError> {
    // Authority-form (`host:port`) and asterisk-form (`*`) have no path to route.
    if !parts.uri.path().starts_with('/') {
        return Err(RequestError::TargetForm);
    }
    let mut hosts = parts.headers.get_all(header::HOST).iter();
    let first = hosts.next();
    if hosts.next().is_some() {
        return Err(RequestError::DuplicateHost);
    }
    match first {
        None if parts.version == Version::HTTP_11 && parts.uri.authority().is_none() => {
            Err(RequestError::MissingHost)
        }
        Some(value) if !valid_host(value.as_bytes()) => Err(RequestError::InvalidHost),
        _ => Ok(()),
    }
}

/// `host [":" port]` where host is a reg-name or a bracketed IP literal (RFC 3986), or the
/// empty value RFC 9112 allows.
fn valid_host(value: &[u8]) -> bool {
    let (host, port) = match value.first() {
        Some(b'[') => match value.iter().position(|&b| b == b']') {
            Some(end) => {
                let literal = &value[1..end];
                if literal.is_empty()
                    || !literal
                        .iter()
                        .all(|&b| b.is_ascii_hexdigit() || b == b':' || b == b'.')
                {
                    return false;
                }
                (&value[..=end], &value[end + 1..])
            }
            None => return false,
        },
        _ => match value.iter().position(|&b| b == b':') {
            Some(colon) => (&value[..colon], &value[colon..]),
            None => (value, &value[value.len()..]),
        },
    };
    let port_ok = match port.split_first() {
        None => true,
        Some((b':', digits)) => digits.len() <= 5 && digits.iter().all(u8::is_ascii_digit),
        Some(_) => false,
    };
    port_ok
        && (host.first() == Some(&b'[')
            || host
                .iter()
                .all(|&b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_')))
}

fn check_framing(headers: &HeaderMap, version: Version) -> Result<(), RequestError> {
    if version >= Version::HTTP_2 {
        // HTTP/2 frames bodies itself; hyper refuses `Transfer-Encoding` there.
        return Ok(());
    }
    let mut codings = headers.get_all(header::TRANSFER_ENCODING).iter().peekable();
    if codings.peek().is_none() {
        return Ok(());
    }
    let mut count = 0;
    for value in codings {
        for coding in value.as_bytes().split(|&b| b == b',') {
            let coding = coding.trim_ascii();
            if coding.is_empty() {
                continue;
            }
            count += 1;
            if !coding.eq_ignore_ascii_case(b"chunked") {
                return Err(RequestError::TransferCoding);
            }
        }
    }
    if count != 1 {
        return Err(RequestError::TransferCoding);
    }
    if headers.contains_key(header::CONTENT_LENGTH) {
        return Err(RequestError::LengthAndTransferEncoding);
    }
    Ok(())
}

fn drop_underscore_names(headers: &mut HeaderMap) {
    if !headers.keys().any(|k| k.as_str().contains('_')) {
        return;
    }
    let dropped: Vec<HeaderName> = headers
        .keys()
        .filter(|k| k.as_str().contains('_'))
        .cloned()
        .collect();
    for name in dropped {
        tracing::debug!(header = %name, "dropped a header name with an underscore");
        headers.remove(name);
    }
}

/// The path to forward for a matched route, after its normalisation settings: `None` keeps
/// `matched` (the merged normal form). `raw` is the request's own path.
pub fn route_path(
    raw: &str,
    matched: &str,
    target: &TargetPath,
    settings: PathNormalizationConfig,
    rewrites: bool,
) -> Result<Option<String>, RequestError> {
    if target.encoded_slash && !settings.pass_encoded_slashes {
        return Err(RequestError::EncodedSlash);
    }
    if settings.merge_slashes || !target.had_empty_segment || rewrites {
        return Ok(None);
    }
    // The route forwards empty segments: only when merging them again gives what was
    // matched, so that an upstream that merges slashes sees the path we matched.
    let unmerged = path::normalize(raw, false)?;
    if path::merge_slashes(&unmerged.path) != matched {
        return Err(RequestError::AmbiguousPath);
    }
    Ok(Some(unmerged.path.into_owned()))
}

/// `uri` with its path replaced by `path` (absolute-form keeps only path and query: the
/// upstream request is written in origin-form).
pub fn with_path(uri: &Uri, path: &str) -> Uri {
    let joined = match uri.query() {
        Some(query) => format!("{path}?{query}"),
        None => path.to_string(),
    };
    let mut parts = http::uri::Parts::default();
    parts.path_and_query = PathAndQuery::try_from(joined).ok();
    if let (Some(scheme), Some(authority)) = (uri.scheme(), uri.authority()) {
        parts.scheme = Some(scheme.clone());
        parts.authority = Some(authority.clone());
    }
    Uri::from_parts(parts).unwrap_or_else(|_| uri.clone())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn hosts() {
        for ok in [
            "a.example.com",
            "a.example.com:8080",
            "[::1]",
            "[::1]:80",
            "127.0.0.1:1",
            "",
            "a_b.internal",
        ] {
            assert!(valid_host(ok.as_bytes()), "{ok}");
        }
        for bad in [
            "a/b", "a@b", "a b", "a:b", "a:123456", "[::1", "[]", "[zz]", "a?b", "a:80:80",
        ] {
            assert!(!valid_host(bad.as_bytes()), "{bad}");
        }
    }

    #[test]
    fn transfer_codings() {
        let te = |values: &[&str], cl: bool| {
            let mut h = HeaderMap::new();
            for v in values {
                h.append(header::TRANSFER_ENCODING, v.parse().unwrap());
            }
            if cl {
                h.insert(header::CONTENT_LENGTH, "3".parse().unwrap());
            }
            check_framing(&h, Version::HTTP_11).map_err(|e| e.reason())
        };
        assert_eq!(te(&[], false), Ok(()));
        assert_eq!(te(&["chunked"], false), Ok(()));
        assert_eq!(te(&["Chunked"], false), Ok(()));
        assert_eq!(te(&["gzip, chunked"], false), Err("transfer_coding"));
        assert_eq!(te(&["gzip", "chunked"], false), Err("transfer_coding"));
        assert_eq!(te(&["chunked, chunked"], false), Err("transfer_coding"));
        assert_eq!(te(&["identity"], false), Err("transfer_coding"));
        assert_eq!(te(&["chunked"], true), Err("length_and_transfer_encoding"));
    }

    #[test]
    fn methods() {
        assert!(check_method(&Method::GET).is_ok());
        assert!(check_method(&Method::from_bytes(b"PURGE").unwrap()).is_ok());
        assert!(check_method(&Method::from_bytes(b"M-SEARCH").unwrap()).is_ok());
        assert!(matches!(
            check_method(&Method::from_bytes(b"delete").unwrap()),
            Err(RequestError::MethodCase)
        ));
        assert!(matches!(
            check_method(&Method::from_bytes(b"Get").unwrap()),
            Err(RequestError::MethodCase)
        ));
        assert!(matches!(
            check_method(&Method::CONNECT),
            Err(RequestError::Connect)
        ));
    }

    #[test]
    fn route_paths() {
        let strict = PathNormalizationConfig::default();
        let lenient = PathNormalizationConfig {
            merge_slashes: false,
            pass_encoded_slashes: true,
        };
        let t = |raw: &str| {
            let n = path::normalize(raw, true).unwrap();
            let target = TargetPath {
                changed: None,
                encoded_slash: n.encoded_slash,
                had_empty_segment: n.had_empty_segment,
            };
            (n.path.into_owned(), target)
        };
        let raw = "/a%2Fb";
        let (matched, target) = t(raw);
        assert!(matches!(
            route_path(raw, &matched, &target, strict, false),
            Err(RequestError::EncodedSlash)
        ));
        assert_eq!(
            route_path(raw, &matched, &target, lenient, false).unwrap(),
            None
        );
        let raw = "/a//b/./c";
        let (matched, target) = t(raw);
        assert_eq!(
            route_path(raw, &matched, &target, lenient, false).unwrap(),
            Some("/a//b/c".into())
        );
        assert_eq!(
            route_path(raw, &matched, &target, lenient, true).unwrap(),
            None
        );
        // `/a//../b`: merged it is `/b`, unmerged `/a/b`: refused.
        let raw = "/a//../b";
        let (matched, target) = t(raw);
        assert!(matches!(
            route_path(raw, &matched, &target, lenient, false),
            Err(RequestError::AmbiguousPath)
        ));
    }

    #[test]
    fn with_path_keeps_the_query() {
        let uri: Uri = "/a/../b?x=1&y=%2F".parse().unwrap();
        assert_eq!(with_path(&uri, "/b").to_string(), "/b?x=1&y=%2F");
    }
}
