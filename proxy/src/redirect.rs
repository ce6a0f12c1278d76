//! Gateway API `RequestRedirect`: the route answers with a redirect built from the request.
//!
//! Each part the filter leaves unset keeps the request's: scheme (of the connection), host,
//! port (the request's, unless the scheme changes, then the scheme's default, omitted), path
//! (whole, or with the matched prefix replaced) and query.

use http::request::Parts;
use http::{header, HeaderValue, Response, StatusCode};
use portcullis_compiler::config::RedirectConfig;

use crate::body::{empty, ProxyBody};

/// The redirect response; `None` when the parts do not make a valid `Location` (the request
/// then gets a 500 from the route's placeholder answer rather than a broken header).
pub fn respond(
    redirect: &RedirectConfig,
    parts: &Parts,
    matched_prefix: Option<usize>,
    tls: bool,
) -> Option<Response<ProxyBody>> {
    let request_scheme = if tls { "https" } else { "http" };
    let scheme = redirect.scheme.as_deref().unwrap_or(request_scheme);
    let host = match &redirect.hostname {
        Some(host) => host.clone(),
        None => crate::router::request_host(&parts.uri, &parts.headers).to_string(),
    };
    let port = match (redirect.port, &redirect.scheme) {
        (Some(port), _) => Some(port),
        // A new scheme means its well-known port.
        (None, Some(_)) => None,
        (None, None) => request_port(parts),
    };
    let port = port.filter(|&p| !matches!((scheme, p), ("http", 80) | ("https", 443)));
    let path = parts.uri.path();
    let new_path = match (&redirect.full_path, &redirect.prefix, matched_prefix) {
        (Some(full), _, _) => full.clone(),
        (None, Some(prefix), Some(len)) => {
            let rest = path.get(len..).unwrap_or("");
            let joined = format!(
                "{}/{}",
                prefix.trim_end_matches('/'),
                rest.trim_start_matches('/')
            );
            if joined.len() > 1 && rest.is_empty() {
                joined.trim_end_matches('/').to_string()
            } else {
                joined
            }
        }
        _ => path.to_string(),
    };
    let mut location = format!("{scheme}://{host}");
    if let Some(port) = port {
        location.push_str(&format!(":{port}"));
    }
    location.push_str(&new_path);
    if let Some(query) = parts.uri.query() {
        location.push('?');
        location.push_str(query);
    }
    let location = HeaderValue::from_str(&location).ok()?;
    let mut response = Response::new(empty());
    *response.status_mut() = StatusCode::from_u16(redirect.status).unwrap_or(StatusCode::FOUND);
    response.headers_mut().insert(header::LOCATION, location);
    Some(response)
}

/// The port the client addressed, from the authority or `Host`.
fn request_port(parts: &Parts) -> Option<u16> {
    if let Some(port) = parts.uri.port_u16() {
        return Some(port);
    }
    let host = parts.headers.get(header::HOST)?.to_str().ok()?;
    let (_, port) = host.rsplit_once(':')?;
    if host.ends_with(']') {
        return None; // an IPv6 literal without a port
    }
    port.parse().ok()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn location(
        redirect: &RedirectConfig,
        target: &str,
        host: &str,
        prefix: Option<usize>,
    ) -> String {
        let (parts, ()) = http::Request::builder()
            .uri(target)
            .header("host", host)
            .body(())
            .unwrap()
            .into_parts();
        let response = respond(redirect, &parts, prefix, false).unwrap();
        response.headers()["location"].to_str().unwrap().to_string()
    }

    fn redirect() -> RedirectConfig {
        RedirectConfig {
            scheme: None,
            hostname: None,
            port: None,
            full_path: None,
            prefix: None,
            status: 302,
        }
    }

    #[test]
    fn unset_parts_keep_the_requests() {
        let r = RedirectConfig {
            hostname: Some("new.example.com".into()),
            ..redirect()
        };
        assert_eq!(
            location(&r, "/a?b=1", "old.example.com:8080", None),
            "http://new.example.com:8080/a?b=1"
        );
        let r = RedirectConfig {
            scheme: Some("https".into()),
            ..redirect()
        };
        assert_eq!(
            location(&r, "/a", "shop.example.com:8080", None),
            "https://shop.example.com/a"
        );
        let r = RedirectConfig {
            full_path: Some("/new".into()),
            port: Some(8443),
            scheme: Some("https".into()),
            ..redirect()
        };
        assert_eq!(
            location(&r, "/old/x?q", "h.example.com", None),
            "https://h.example.com:8443/new?q"
        );
        let r = RedirectConfig {
            prefix: Some("/v2".into()),
            ..redirect()
        };
        assert_eq!(
            location(&r, "/v1/users", "h.example.com", Some(3)),
            "http://h.example.com/v2/users"
        );
        assert_eq!(
            location(&r, "/v1", "h.example.com", Some(3)),
            "http://h.example.com/v2"
        );
    }
}
