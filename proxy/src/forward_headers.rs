//! The request head as the upstream sees it.
//!
//! - Hop-by-hop headers (RFC 9110 §7.6.1, plus any named in `Connection`) are removed.
//! - Client-sent identity headers (`X-Consumer-*`, `X-Credential-Type`, `X-User-ID`,
//!   `X-Anonymous-Consumer`) are always removed before the gateway adds its own, so an
//!   upstream can trust them.
//! - `X-Forwarded-For` is appended to when the peer is a trusted proxy and replaced by the
//!   peer address otherwise (an untrusted client's list would be a forgery vector);
//!   `X-Forwarded-Proto`/`-Host`/`-Port` from trusted proxies are kept, otherwise set from
//!   this hop (`X-Forwarded-Proto: https` on the TLS listener). `X-Forwarded-Prefix` and
//!   `X-Forwarded-Ssl` are kept from trusted proxies only. `Forwarded` (RFC 7239) from a
//!   trusted proxy gets this hop's element appended; from anyone else it is replaced by it.
//! - `X-Real-IP` is the resolved client IP; `X-Request-ID` the request id.
//! - `Host` is set to the upstream authority (by the HTTP client); the client's host travels
//!   in `X-Forwarded-Host`.
//! - `stripPath` removes the matched prefix; `rewritePrefix` replaces it (and wins over
//!   `stripPath`). Regex rules have no prefix, so neither applies to them.

use std::net::IpAddr;

use http::uri::PathAndQuery;
use http::{header, HeaderMap, HeaderName, HeaderValue, Uri};

use crate::auth::{Consumer, Identity, KeyStore, ANONYMOUS};

/// RFC 9110 §7.6.1 hop-by-hop headers (plus the legacy ones); [`classify`] matches these.
#[cfg(test)]
const HOP_BY_HOP: [HeaderName; 9] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::UPGRADE,
    // Framing is re-derived by the HTTP client from the body it sends.
    header::TRANSFER_ENCODING,
];

/// Identity headers only the gateway may set; [`classify`] matches these.
#[cfg(test)]
const IDENTITY: [HeaderName; 6] = [
    HeaderName::from_static("x-consumer-id"),
    HeaderName::from_static("x-consumer-username"),
    HeaderName::from_static("x-consumer-groups"),
    HeaderName::from_static("x-credential-type"),
    HeaderName::from_static("x-user-id"),
    HeaderName::from_static("x-anonymous-consumer"),
];

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");
const X_REQUEST_ID: HeaderName = HeaderName::from_static(crate::request_id::HEADER);
const X_FORWARDED_PORT: HeaderName = HeaderName::from_static("x-forwarded-port");
const X_FORWARDED_PREFIX: HeaderName = HeaderName::from_static("x-forwarded-prefix");
const X_FORWARDED_SSL: HeaderName = HeaderName::from_static("x-forwarded-ssl");

pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    remove_marked(headers, HOP, true);
}

const HOP: u8 = 1;
const CLIENT_IDENTITY: u8 = 2;
/// Headers this hop writes itself (see [`Added`]); the client's copies never go upstream.
const FORWARDED: u8 = 4;

/// Whether a header is hop-by-hop (RFC 9110 §7.6.1, plus the legacy ones).
pub fn is_hop_by_hop(name: &HeaderName) -> bool {
    classify(name) & HOP != 0
}

/// Whether the upstream request writer must leave this header of the request out: the
/// gateway sends its own value in [`Added`].
pub fn is_replaced(name: &HeaderName) -> bool {
    classify(name) & FORWARDED != 0
}

/// Which of our removal lists a header name is on: one string match per header.
fn classify(name: &HeaderName) -> u8 {
    let name = name.as_str();
    // By length first: most headers are rejected by one comparison of lengths, and a
    // candidate costs at most two string comparisons.
    let (hop, identity, forwarded): (&[&str], &[&str], &[&str]) = match name.len() {
        2 => (&["te"], &[], &[]),
        7 => (&["trailer", "upgrade"], &[], &[]),
        9 => (&[], &["x-user-id"], &["x-real-ip", "forwarded"]),
        10 => (&["connection", "keep-alive"], &[], &[]),
        12 => (&[], &[], &["x-request-id"]),
        13 => (&[], &["x-consumer-id"], &[]),
        15 => (&[], &[], &["x-forwarded-for", "x-forwarded-ssl"]),
        16 => (
            &["proxy-connection"],
            &[],
            &["x-forwarded-host", "x-forwarded-port"],
        ),
        17 => (
            &["transfer-encoding"],
            &["x-consumer-groups", "x-credential-type"],
            &["x-forwarded-proto"],
        ),
        18 => (&["proxy-authenticate"], &[], &["x-forwarded-prefix"]),
        19 => (&["proxy-authorization"], &["x-consumer-username"], &[]),
        20 => (&[], &["x-anonymous-consumer"], &[]),
        _ => return 0,
    };
    if hop.contains(&name) {
        HOP
    } else if identity.contains(&name) {
        CLIENT_IDENTITY
    } else if forwarded.contains(&name) {
        FORWARDED
    } else {
        0
    }
}

/// Removes the headers of class `class` (and, with `connection_named`, those listed in
/// `Connection`). One scan finds what is present: most messages carry none of them, and
/// removing only what is there saves a hashed lookup per absent name.
fn remove_marked(headers: &mut HeaderMap, class: u8, connection_named: bool) {
    let present: Vec<HeaderName> = headers
        .keys()
        .filter(|k| classify(k) & class != 0)
        .cloned()
        .collect();
    if present.is_empty() {
        return;
    }
    if connection_named && present.contains(&header::CONNECTION) {
        let named: Vec<HeaderName> = headers
            .get_all(header::CONNECTION)
            .iter()
            // Bytes, not `to_str`: one non-ASCII (obs-text) token must not make the whole
            // value, and so every field it names, pass (found by fuzzing, issue #19).
            .flat_map(|v| v.as_bytes().split(|&b| b == b','))
            .map(<[u8]>::trim_ascii)
            // The connection options themselves name no header to drop (`keep-alive` is
            // removed as hop-by-hop anyway).
            .filter(|t| !t.eq_ignore_ascii_case(b"close") && !t.eq_ignore_ascii_case(b"keep-alive"))
            .filter_map(|name| HeaderName::from_bytes(name).ok())
            .collect();
        for name in named {
            headers.remove(name);
        }
    }
    for name in present {
        headers.remove(name);
    }
}

pub struct ForwardContext<'a> {
    pub peer: IpAddr,
    pub peer_trusted: bool,
    pub client_ip: IpAddr,
    pub request_id: &'a HeaderValue,
    pub original_host: Option<HeaderValue>,
    pub identity: Identity,
    pub keys: &'a KeyStore,
    /// The request arrived on the TLS listener.
    pub tls: bool,
    /// The port of the listener the request arrived on, as `X-Forwarded-Port` writes it.
    pub local_port: &'a HeaderValue,
}

/// Headers the gateway adds to the upstream request, written after the request's own
/// (whose copies of these names are skipped, [`is_replaced`]). Kept out of the header map:
/// inserting them there cost a map growth and five hashed inserts per request.
pub type Added = Vec<(HeaderName, HeaderValue)>;

/// Cleans `headers` for the upstream and returns the headers this hop adds.
pub fn prepare(headers: &mut HeaderMap, ctx: &ForwardContext<'_>) -> Added {
    remove_marked(headers, HOP | CLIENT_IDENTITY, true);
    // `Host` is left in place: the upstream client writes the target's own and skips it.
    // Room for the trace headers the pipeline appends (traceparent, tracestate).
    let mut added = Added::with_capacity(10);

    let peer = ip_value(ctx.peer);
    let forwarded_for = if ctx.peer_trusted {
        let existing: Vec<&str> = headers
            .get_all(X_FORWARDED_FOR)
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
    let own_proto = if ctx.tls { "https" } else { "http" };
    let proto = match headers.get(X_FORWARDED_PROTO) {
        Some(kept) if ctx.peer_trusted => kept.clone(),
        _ => HeaderValue::from_static(own_proto),
    };
    let forwarded_host = match headers.get(X_FORWARDED_HOST) {
        Some(kept) if ctx.peer_trusted => Some(kept.clone()),
        _ => ctx.original_host.clone(),
    };
    let real_ip = if ctx.client_ip == ctx.peer && !forwarded_for.as_bytes().contains(&b',') {
        // The common untrusted-peer case: share the value instead of formatting again.
        forwarded_for.clone()
    } else {
        ip_value(ctx.client_ip)
    };
    added.push((X_FORWARDED_FOR, forwarded_for));
    added.push((X_FORWARDED_PROTO, proto));
    if let Some(host) = forwarded_host {
        added.push((X_FORWARDED_HOST, host));
    }
    added.push((X_REAL_IP, real_ip));
    added.push((X_REQUEST_ID, ctx.request_id.clone()));
    let port = match headers.get(&X_FORWARDED_PORT) {
        Some(kept) if ctx.peer_trusted => kept.clone(),
        _ => ctx.local_port.clone(),
    };
    added.push((X_FORWARDED_PORT, port));
    if ctx.peer_trusted {
        for name in [X_FORWARDED_PREFIX, X_FORWARDED_SSL] {
            for value in headers.get_all(&name) {
                added.push((name.clone(), value.clone()));
            }
        }
    }
    added.push((
        header::FORWARDED,
        forwarded_element(headers, ctx, own_proto),
    ));

    match ctx.identity {
        // Principals without a consumer get their headers from `AuthContext::apply_upstream`.
        Identity::Unauthenticated | Identity::Principal => {}
        Identity::Anonymous => {
            added.push((
                HeaderName::from_static("x-consumer-username"),
                HeaderValue::from_static(ANONYMOUS),
            ));
            added.push((
                HeaderName::from_static("x-anonymous-consumer"),
                HeaderValue::from_static("true"),
            ));
        }
        Identity::Consumer(index) => {
            if let Some(consumer) = ctx.keys.consumer(index) {
                add_consumer(&mut added, consumer);
            }
        }
    }
    added
}

/// This hop's RFC 7239 element, after a trusted proxy's elements.
fn forwarded_element(headers: &HeaderMap, ctx: &ForwardContext<'_>, proto: &str) -> HeaderValue {
    use std::fmt::Write;
    let mut value = String::with_capacity(64);
    if ctx.peer_trusted {
        for earlier in headers
            .get_all(header::FORWARDED)
            .iter()
            .filter_map(|v| v.to_str().ok())
        {
            value.push_str(earlier);
            value.push_str(", ");
        }
    }
    let _ = match ctx.peer {
        IpAddr::V4(v4) => write!(value, "for={v4}"),
        IpAddr::V6(v6) => write!(value, "for=\"[{v6}]\""),
    };
    value.push_str(";proto=");
    value.push_str(proto);
    if let Some(host) = ctx.original_host.as_ref().and_then(|h| h.to_str().ok()) {
        // A quoted-string: the host may carry a port (`:` is not a token character).
        if !host.contains(['"', '\\']) {
            let _ = write!(value, ";host=\"{host}\"");
        }
    }
    HeaderValue::from_str(&value).unwrap_or_else(|_| HeaderValue::from_static("for=unknown"))
}

fn add_consumer(added: &mut Added, consumer: &Consumer) {
    added.push((
        HeaderName::from_static("x-consumer-id"),
        consumer.id_header.clone(),
    ));
    added.push((
        HeaderName::from_static("x-consumer-username"),
        consumer.username_header.clone(),
    ));
    if !consumer.groups.is_empty() {
        added.push((
            HeaderName::from_static("x-consumer-groups"),
            consumer.groups_header.clone(),
        ));
    }
}

fn ip_value(ip: IpAddr) -> HeaderValue {
    let formatted = match ip {
        IpAddr::V4(v4) => HeaderValue::from_bytes(crate::ip_text::Ipv4Text::new(v4).as_bytes()),
        IpAddr::V6(v6) => HeaderValue::from_str(&v6.to_string()),
    };
    // An IP address always formats to a valid header value.
    formatted.unwrap_or(HeaderValue::from_static("unknown"))
}

/// The path and query to forward, after `stripPath`/`rewritePrefix`. `None` = unchanged.
/// The forwarded path and query with the whole path replaced (`URLRewrite`
/// `ReplaceFullPath`); the query is kept.
pub fn replace_path(uri: &Uri, path: &str) -> Option<PathAndQuery> {
    match uri.query() {
        Some(query) => format!("{path}?{query}").parse().ok(),
        None => path.parse().ok(),
    }
}

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
    fn classification_matches_the_removal_lists() {
        for name in &HOP_BY_HOP {
            assert_eq!(classify(name), HOP, "{name}");
        }
        for name in &IDENTITY {
            assert_eq!(classify(name), CLIENT_IDENTITY, "{name}");
        }
        for name in [
            X_FORWARDED_FOR,
            X_FORWARDED_PROTO,
            X_FORWARDED_HOST,
            X_REAL_IP,
            X_REQUEST_ID,
        ] {
            assert!(is_replaced(&name), "{name}");
        }
        assert_eq!(classify(&header::CONTENT_TYPE), 0);
        assert_eq!(classify(&HeaderName::from_static("x-consumer")), 0);
    }

    #[test]
    fn ip_values_format_like_display() {
        for ip in [
            "0.0.0.0",
            "127.0.0.1",
            "10.20.30.40",
            "255.255.255.255",
            "192.168.100.9",
            "::1",
            "2001:db8::ff00:42:8329",
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            assert_eq!(ip_value(ip).to_str().unwrap(), ip.to_string());
        }
    }

    #[test]
    fn identity_headers_from_clients_are_removed_and_real_ip_is_set() {
        let keys = KeyStore::default();
        let request_id = HeaderValue::from_static("rid");
        let mut h = HeaderMap::new();
        h.insert("x-consumer-id", HeaderValue::from_static("forged"));
        h.insert("x-user-id", HeaderValue::from_static("forged"));
        h.insert("x-other", HeaderValue::from_static("kept"));
        h.insert("x-real-ip", HeaderValue::from_static("forged"));
        let peer: IpAddr = "10.0.0.7".parse().unwrap();
        let added = prepare(
            &mut h,
            &ForwardContext {
                peer,
                peer_trusted: false,
                client_ip: peer,
                request_id: &request_id,
                original_host: None,
                identity: Identity::Unauthenticated,
                keys: &keys,
                tls: false,
                local_port: &HeaderValue::from_static("8080"),
            },
        );
        let h = upstream_view(&h, &added);
        assert!(h.get("x-consumer-id").is_none() && h.get("x-user-id").is_none());
        assert_eq!(h["x-other"], "kept");
        assert_eq!(h["x-forwarded-for"], "10.0.0.7");
        assert_eq!(
            h.get_all("x-real-ip").iter().collect::<Vec<_>>(),
            ["10.0.0.7"]
        );
        assert_eq!(h["x-request-id"], "rid");
        assert_eq!(h["x-forwarded-proto"], "http");
    }

    /// The headers as the upstream request writer sends them.
    fn upstream_view(headers: &HeaderMap, added: &Added) -> HeaderMap {
        let mut view = HeaderMap::new();
        for (name, value) in headers {
            if !is_replaced(name) {
                view.append(name.clone(), value.clone());
            }
        }
        for (name, value) in added {
            view.append(name.clone(), value.clone());
        }
        view
    }

    #[test]
    fn forwarded_headers_are_kept_from_trusted_proxies_only() {
        let keys = KeyStore::default();
        let request_id = HeaderValue::from_static("rid");
        let mut h = HeaderMap::new();
        h.append("x-forwarded-for", HeaderValue::from_static("1.1.1.1"));
        h.append("x-forwarded-for", HeaderValue::from_static("2.2.2.2"));
        h.insert("x-forwarded-proto", HeaderValue::from_static("https"));
        h.insert(
            "x-forwarded-host",
            HeaderValue::from_static("public.example"),
        );
        let port = HeaderValue::from_static("8080");
        let ctx = |trusted| ForwardContext {
            peer: "10.0.0.1".parse().unwrap(),
            peer_trusted: trusted,
            client_ip: "1.1.1.1".parse().unwrap(),
            request_id: &request_id,
            original_host: Some(HeaderValue::from_static("inner.example")),
            identity: Identity::Unauthenticated,
            keys: &keys,
            tls: false,
            local_port: &port,
        };
        let trusted = upstream_view(&h, &prepare(&mut h.clone(), &ctx(true)));
        assert_eq!(trusted["x-forwarded-for"], "1.1.1.1, 2.2.2.2, 10.0.0.1");
        assert_eq!(trusted["x-forwarded-proto"], "https");
        assert_eq!(trusted["x-forwarded-host"], "public.example");
        assert_eq!(trusted["x-real-ip"], "1.1.1.1");
        let untrusted = upstream_view(&h, &prepare(&mut h.clone(), &ctx(false)));
        assert_eq!(
            untrusted
                .get_all("x-forwarded-for")
                .iter()
                .collect::<Vec<_>>(),
            ["10.0.0.1"]
        );
        assert_eq!(untrusted["x-forwarded-proto"], "http");
        assert_eq!(untrusted["x-forwarded-host"], "inner.example");
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
