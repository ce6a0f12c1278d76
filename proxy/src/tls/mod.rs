//! TLS (docs/architecture.md, pipeline step 1): termination on `--tls-listen`, per-host certificates and client
//! authentication. TLS to upstreams is `crate::upstream::tls`.
//!
//! - [`sni`]: per config generation, the certificates by host and one rustls `ServerConfig`
//!   per distinct TLS policy (minimum version + client authentication), published with the
//!   rest of the config through the same `ArcSwap`.
//! - [`acceptor`]: reads the ClientHello first (`LazyConfigAcceptor`), picks the policy of
//!   the SNI host from the *current* config, then finishes the handshake with it. New
//!   handshakes see a swapped certificate at once; open connections keep theirs.
//! - [`client_auth`]: the verified client certificate (subject, SANs, fingerprint) that
//!   MutualTls authentication maps to a consumer.
//! - [`check_route`]: after routing, a request must have arrived on a connection whose
//!   handshake applied the matched route's TLS policy (421 otherwise), and plain-HTTP requests
//!   are redirected or refused as the route says.

pub mod acceptor;
pub mod client_auth;
pub mod sni;

use std::sync::Arc;

use http::request::Parts;
use http::{header, HeaderValue, Response, StatusCode};
use portcullis_compiler::config::RouteConfig;

use crate::body::{empty, ProxyBody};
pub use client_auth::PeerCertificate;
pub use sni::{PolicyKey, TlsConfigError, TlsRuntime};

/// The provider of every rustls config in the proxy: the workspace's one provider (ring),
/// restricted to AEAD suites with ECDHE key exchange, which is what ring's defaults are.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    let mut provider = rustls::crypto::ring::default_provider();
    provider.cipher_suites = rustls::crypto::ring::DEFAULT_CIPHER_SUITES.to_vec();
    Arc::new(provider)
}

/// What the pipeline learns about a TLS connection; attached to each request it carries.
#[derive(Debug, Clone)]
pub struct ConnectionTls {
    /// Lowercased SNI host, if the client sent one.
    pub sni: Option<String>,
    /// The policy the handshake applied.
    pub policy: PolicyKey,
    /// The verified client certificate (only when the policy verifies client certificates).
    pub peer: Option<Arc<PeerCertificate>>,
}

/// The TLS facts of the connection a request came on; `None` for plain HTTP.
pub fn connection(parts: &Parts) -> Option<&ConnectionTls> {
    parts
        .extensions
        .get::<Arc<ConnectionTls>>()
        .map(Arc::as_ref)
}

#[derive(Debug, thiserror::Error)]
pub enum TlsRouteError {
    /// The connection's handshake applied another host's TLS policy (HTTP/2 connection reuse
    /// or a Host header that differs from the SNI): RFC 9110 §15.5.20.
    #[error("misdirected request")]
    Misdirected,
    /// A route that verifies client certificates is never served over plain HTTP.
    #[error("TLS required")]
    TlsRequired,
}

impl TlsRouteError {
    pub fn status(&self) -> StatusCode {
        match self {
            TlsRouteError::Misdirected => StatusCode::MISDIRECTED_REQUEST,
            TlsRouteError::TlsRequired => StatusCode::FORBIDDEN,
        }
    }

    pub fn reason(&self) -> &'static str {
        match self {
            TlsRouteError::Misdirected => "tls_misdirected",
            TlsRouteError::TlsRequired => "tls_required",
        }
    }
}

/// Checks the matched route against the connection; `Ok(Some(_))` is a redirect to HTTPS.
pub fn check_route(
    route: &RouteConfig,
    parts: &Parts,
    https_port: Option<u16>,
) -> Result<Option<Response<ProxyBody>>, TlsRouteError> {
    let Some(tls) = &route.tls else {
        return Ok(None);
    };
    match connection(parts) {
        Some(conn) => {
            if conn.policy != PolicyKey::of(tls) {
                return Err(TlsRouteError::Misdirected);
            }
            Ok(None)
        }
        None if tls.redirect_http => Ok(redirect(parts, https_port)),
        None if tls.client_auth.is_some() => Err(TlsRouteError::TlsRequired),
        None => Ok(None),
    }
}

fn redirect(parts: &Parts, https_port: Option<u16>) -> Option<Response<ProxyBody>> {
    let host = crate::router::request_host(&parts.uri, &parts.headers);
    let port = match https_port {
        Some(443) | None => String::new(),
        Some(port) => format!(":{port}"),
    };
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let location = HeaderValue::from_str(&format!("https://{host}{port}{path}")).ok()?;
    let mut response = Response::new(empty());
    // 308 keeps the method and body, unlike 301.
    *response.status_mut() = StatusCode::PERMANENT_REDIRECT;
    response.headers_mut().insert(header::LOCATION, location);
    Some(response)
}
