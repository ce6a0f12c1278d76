//! Outbound HTTP(S) to identity providers: JWKS, OIDC discovery, introspection, forward auth.
//!
//! IdPs are HTTPS in real life, so this client speaks both: rustls with the `ring` provider
//! (the workspace's one provider, passed explicitly so no process default is needed), roots
//! from the system store (`rustls-native-certs`, which honours `SSL_CERT_FILE`) plus an
//! optional extra CA. Every call has a deadline covering connect, head and body, and a body
//! size limit: a slow or hostile IdP must not hold a request or memory.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;

#[derive(Debug, thiserror::Error)]
pub enum IdpError {
    #[error("identity provider timed out")]
    Timeout,
    #[error("identity provider unreachable")]
    Unreachable,
    #[error("identity provider answered with an oversized or broken body")]
    Body,
    #[error("invalid identity provider request")]
    Request,
}

#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    #[error("no usable CA certificate in the configured bundle")]
    NoCertificates,
    #[error("TLS setup failed: {0}")]
    Rustls(#[from] rustls::Error),
}

pub struct IdpResponse {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

#[derive(Clone)]
pub struct IdpClient {
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
}

impl IdpClient {
    /// `extra_ca_pem`: PEM certificates trusted in addition to the system roots.
    pub fn new(extra_ca_pem: Option<&[u8]>) -> Result<Self, TlsSetupError> {
        let mut roots = rustls::RootCertStore::empty();
        // Unreadable system certificates are skipped: one bad file must not disable HTTPS.
        let native = rustls_native_certs::load_native_certs();
        roots.add_parsable_certificates(native.certs);
        if let Some(pem) = extra_ca_pem {
            let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(pem)
                .filter_map(Result::ok)
                .collect();
            let (added, _) = roots.add_parsable_certificates(certs);
            if added == 0 {
                return Err(TlsSetupError::NoCertificates);
            }
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(Duration::from_secs(5)));
        let connector = HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .build(connector);
        Ok(IdpClient { client })
    }

    pub async fn send(
        &self,
        request: Request<Full<Bytes>>,
        timeout: Duration,
        max_body: usize,
    ) -> Result<IdpResponse, IdpError> {
        let call = async {
            let response = self
                .client
                .request(request)
                .await
                .map_err(|_| IdpError::Unreachable)?;
            let (parts, body) = response.into_parts();
            let body = Limited::new(body, max_body)
                .collect()
                .await
                .map_err(|_| IdpError::Body)?
                .to_bytes();
            Ok(IdpResponse {
                status: parts.status,
                headers: parts.headers,
                body,
            })
        };
        tokio::time::timeout(timeout, call)
            .await
            .map_err(|_| IdpError::Timeout)?
    }

    pub async fn get(&self, url: &str, timeout: Duration) -> Result<IdpResponse, IdpError> {
        let request = Request::get(url)
            .header(http::header::ACCEPT, "application/json")
            .body(Full::new(Bytes::new()))
            .map_err(|_| IdpError::Request)?;
        self.send(request, timeout, MAX_DOCUMENT_BYTES).await
    }
}

/// Upper bound for JWKS, discovery and introspection documents.
pub const MAX_DOCUMENT_BYTES: usize = 1 << 20;
