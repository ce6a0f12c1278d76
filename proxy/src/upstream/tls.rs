//! TLS to `https://` targets: verification against the route's CA (or the system roots),
//! an SNI override, or no verification at all when a route asks for it explicitly.

use std::sync::Arc;
use std::time::Duration;

use super::pool::HttpConnector;
use hyper_rustls::{FixedServerNameResolver, HttpsConnector, HttpsConnectorBuilder};
use portcullis_compiler::config::UpstreamTlsConfig;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::{DigitallySignedStruct, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

#[derive(Debug, thiserror::Error)]
pub enum UpstreamTlsError {
    #[error("upstream CA bundle: {0}")]
    Ca(String),
    #[error("upstream serverName {0:?} is not a DNS name or IP address")]
    ServerName(String),
    #[error("upstream TLS setup: {0}")]
    Rustls(#[from] rustls::Error),
}

/// `insecureSkipVerify`: any certificate is accepted, but the handshake signatures are still
/// checked so the session keys at least belong to whoever presented the certificate.
#[derive(Debug)]
struct NoVerification(Arc<CryptoProvider>);

impl ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

fn client_config(tls: &UpstreamTlsConfig) -> Result<rustls::ClientConfig, UpstreamTlsError> {
    let provider = crate::tls::provider();
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?;
    let config = if tls.insecure_skip_verify {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerification(provider)))
            .with_no_client_auth()
    } else {
        let mut roots = rustls::RootCertStore::empty();
        match &tls.ca_pem {
            Some(pem) => {
                let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| UpstreamTlsError::Ca(e.to_string()))?;
                let (added, _) = roots.add_parsable_certificates(certs);
                if added == 0 {
                    return Err(UpstreamTlsError::Ca("no usable CA certificate".into()));
                }
            }
            None => {
                // Unreadable system certificates are skipped: one bad file must not disable
                // upstream TLS.
                roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
            }
        }
        builder.with_root_certificates(roots).with_no_client_auth()
    };
    Ok(config)
}

/// An HTTPS connector for one TLS setting (the caller keeps one per distinct setting).
pub fn connector(
    tls: &UpstreamTlsConfig,
    http: HttpConnector,
) -> Result<HttpsConnector<HttpConnector>, UpstreamTlsError> {
    let builder = HttpsConnectorBuilder::new()
        .with_tls_config(client_config(tls)?)
        .https_or_http();
    let builder = match &tls.server_name {
        Some(name) => {
            let name = ServerName::try_from(name.clone())
                .map_err(|_| UpstreamTlsError::ServerName(name.clone()))?;
            builder.with_server_name_resolver(FixedServerNameResolver::new(name))
        }
        None => builder,
    };
    Ok(builder.enable_http1().wrap_connector(http))
}

/// How long an idle upstream TLS connection is kept: as long as plain ones.
pub const IDLE: Duration = Duration::from_secs(60);
