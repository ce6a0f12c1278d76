//! The request head as the upstream sees it.
//!
//! - Hop-by-hop headers (RFC 9110 §7.6.1, plus any named in `Connection`) are removed.
//! - Client-sent identity headers (`X-Consumer-*`, `X-Credential-Type`, `X-User-ID`,
//!   `X-Anonymous-Consumer`) are always removed before the gateway adds its own, so an
//!   upstream can trust them.
//! - `X-Forwarded-For` is appended to when the peer is a trusted proxy and replaced by the
//!   peer address otherwise (an untrusted client's list would be a forgery vector);
//!   `X-Forwarded-Proto`/`-Host` from trusted proxies are kept, otherwise set from this hop.
//! - `X-Real-IP` is the resolved client IP; `X-Request-ID` the request id.
//! - `Host` is set to the upstream authority (by the HTTP client); the client's host travels
//!   in `X-Forwarded-Host`.
//! - `stripPath` removes the matched prefix; `rewritePrefix` replaces it (and wins over
//!   `stripPath`). Regex rules have no prefix, so neither applies to them.

use std::net::IpAddr;

use http::uri::PathAndQuery;
use http::{header, HeaderMap, HeaderName, HeaderValue, Uri};

use crate::auth::{Consumer, Identity, KeyStore, ANONYMOUS};

const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::UPGRADE,
];

const IDENTITY: [&str; 6] = [
    "x-consumer-id",
    "x-consumer-username",
    "x-consumer-groups",
    "x-credential-type",
    "x-user-id",
    "x-anonymous-consumer",
];

pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    if headers.contains_key(header::CONNECTION) {
        let named: Vec<HeaderName> = headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
            .collect();
        for name in named {
            headers.remove(name);
        }
    }
    for name in &HOP_BY_HOP {
        headers.remove(name);
    }
    // Framing is re-derived by the HTTP client from the body it sends.
    headers.remove(header::TRANSFER_ENCODING);
}

pub struct ForwardContext<'a> {
    pub peer: IpAddr,
    pub peer_trusted: bool,
    pub client_ip: IpAddr,
    pub request_id: &'a HeaderValue,
    pub original_host: Option<HeaderValue>,
    pub identity: Identity,
    pub keys: &'a KeyStore,
}

pub fn prepare(headers: &mut HeaderMap, ctx: &ForwardContext<'_>) {
    strip_hop_by_hop(headers);
    for name in IDENTITY {
        headers.remove(name);
    }
    headers.remove(header::HOST);

    let xff = HeaderName::from_static("x-forwarded-for");
    let peer = ip_value(ctx.peer);
    let forwarded_for = if ctx.peer_trusted {
        let existing: Vec<&str> = headers
            .get_all(&xff)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect();
        if existing.is_empty() {
            peer
        } else {
            let joined = format!("{}, {}", existing.join(", "), ctx.peer);
            HeaderValue::from_str(&joined).unwrap_or(peer)
        }
    } else {
        peer
    };
    headers.insert(xff, forwarded_for);
    let proto = HeaderName::from_static("x-forwarded-proto");
    if !ctx.peer_trusted || !headers.contains_key(&proto) {
        headers.insert(proto, HeaderValue::from_static("http"));
    }
    let fwd_host = HeaderName::from_static("x-forwarded-host");
    if !ctx.peer_trusted || !headers.contains_key(&fwd_host) {
        match &ctx.original_host {
            Some(host) => {
                headers.insert(fwd_host, host.clone());
            }
            None => {
                headers.remove(fwd_host);
            }
        }
    }
    headers.insert(
        HeaderName::from_static("x-real-ip"),
        ip_value(ctx.client_ip),
    );
    headers.insert(
        HeaderName::from_static(crate::request_id::HEADER),
        ctx.request_id.clone(),
    );

    match ctx.identity {
        // Principals without a consumer get their headers from `AuthContext::apply_upstream`.
        Identity::Unauthenticated | Identity::Principal => {}
        Identity::Anonymous => {
            headers.insert(
                HeaderName::from_static("x-consumer-username"),
                HeaderValue::from_static(ANONYMOUS),
            );
            headers.insert(
                HeaderName::from_static("x-anonymous-consumer"),
                HeaderValue::from_static("true"),
            );
        }
        Identity::Consumer(index) => {
            if let Some(consumer) = ctx.keys.consumer(index) {
                add_consumer(headers, consumer);
            }
        }
    }
}

fn add_consumer(headers: &mut HeaderMap, consumer: &Consumer) {
    headers.insert(
        HeaderName::from_static("x-consumer-id"),
        consumer.id_header.clone(),
    );
    headers.insert(
        HeaderName::from_static("x-consumer-username"),
        consumer.username_header.clone(),
    );
    if !consumer.groups.is_empty() {
        headers.insert(
            HeaderName::from_static("x-consumer-groups"),
            consumer.groups_header.clone(),
        );
    }
}

fn ip_value(ip: IpAddr) -> HeaderValue {
    // An IP address always formats to a valid header value.
    HeaderValue::from_str(&ip.to_string()).unwrap_or(HeaderValue::from_static("unknown"))
}

/// The path and query to forward, after `stripPath`/`rewritePrefix`. `None` = unchanged.
pub fn rewrite_path(
    uri: &Uri,
    matched_prefix: Option<usize>,
    strip_path: bool,
    rewrite_prefix: Option<&str>,
) -> Option<PathAndQuery> {
    let prefix_len = matched_prefix?;
    let replacement = match (rewrite_prefix, strip_path) {
        (Some(r), _) => r,
        (None, true) => "",
        (None, false) => return None,
    };
    let path = uri.path();
    let rest = path.get(prefix_len..).unwrap_or("");
    let mut out =
        String::with_capacity(replacement.len() + rest.len() + 1 + uri.query().map_or(0, str::len));
    out.push_str(replacement);
    if out.ends_with('/') && rest.starts_with('/') {
        out.pop();
    }
    if !out.is_empty() && !rest.is_empty() && !out.ends_with('/') && !rest.starts_with('/') {
        out.push('/');
    }
    out.push_str(rest);
    if !out.starts_with('/') {
        out.insert(0, '/');
    }
    if let Some(query) = uri.query() {
        out.push('?');
        out.push_str(query);
    }
    out.parse().ok()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn rw(path: &str, prefix: usize, strip: bool, rewrite: Option<&str>) -> String {
        let uri: Uri = path.parse().unwrap();
        rewrite_path(&uri, Some(prefix), strip, rewrite)
            .map(|p| p.to_string())
            .unwrap_or_else(|| path.to_string())
    }

    #[test]
    fn strip_and_rewrite() {
        assert_eq!(rw("/api/users?x=1", 4, true, None), "/users?x=1");
        assert_eq!(rw("/api", 4, true, None), "/");
        assert_eq!(rw("/api/", 4, true, None), "/");
        assert_eq!(rw("/api/users", 4, false, Some("/v2")), "/v2/users");
        assert_eq!(rw("/api", 4, false, Some("/v2")), "/v2");
        assert_eq!(rw("/api/x", 4, false, Some("/")), "/x");
        assert_eq!(rw("/api/x", 4, false, None), "/api/x");
        assert_eq!(rw("/anything", 0, false, Some("/base")), "/base/anything");
    }

    #[test]
    fn hop_by_hop_and_connection_named_headers_are_removed() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("close, x-secret"),
        );
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h);
        assert!(h.get("x-secret").is_none() && h.get("keep-alive").is_none());
        assert!(h.get(header::CONNECTION).is_none());
        assert!(h.get("x-kept").is_some());
    }
}
