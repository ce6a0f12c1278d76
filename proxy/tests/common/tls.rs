//! Test PKI (rcgen), TLS route config and TLS clients for the TLS tests.
#![allow(clippy::unwrap_used, dead_code)]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::rt::{TokioExecutor, TokioIo};
use portcullis_compiler::config::*;
use portcullis_compiler::GatewayConfig;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, SanType};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};

pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A certificate authority that issues server and client certificates.
pub struct Ca {
    pub cert: rcgen::Certificate,
    issuer: Issuer<'static, KeyPair>,
}

pub struct Issued {
    pub der: CertificateDer<'static>,
    pub chain_pem: String,
    pub key_pem: String,
    pub key_der: Vec<u8>,
}

impl Issued {
    pub fn key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::try_from(self.key_der.clone()).unwrap()
    }
}

pub fn rsa_key() -> KeyPair {
    let pem = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/rsa1.key.pem"
    ))
    .unwrap();
    KeyPair::from_pem(&pem).unwrap()
}

impl Ca {
    pub fn new(name: &str) -> Self {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let cert = params.self_signed(&key).unwrap();
        Ca {
            cert,
            issuer: Issuer::new(params, key),
        }
    }

    pub fn pem(&self) -> String {
        self.cert.pem()
    }

    fn issue(&self, params: CertificateParams, key: KeyPair) -> Issued {
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Issued {
            der: cert.der().clone(),
            chain_pem: format!("{}{}", cert.pem(), self.cert.pem()),
            key_pem: key.serialize_pem(),
            key_der: key.serialize_der(),
        }
    }

    /// A server certificate for `hosts` (ECDSA P-256, or RSA 2048 with `rsa`).
    pub fn server(&self, hosts: &[&str], rsa: bool) -> Issued {
        let mut params =
            CertificateParams::new(hosts.iter().map(|h| h.to_string()).collect::<Vec<_>>())
                .unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, hosts.first().copied().unwrap_or("x"));
        self.issue(
            params,
            if rsa {
                rsa_key()
            } else {
                KeyPair::generate().unwrap()
            },
        )
    }

    /// A client certificate with the subject (and anything else) `params` say.
    pub fn client_with(&self, params: CertificateParams) -> Issued {
        self.issue(params, KeyPair::generate().unwrap())
    }

    /// SHA-256 of the CA certificate's DER, lowercase hex.
    pub fn fingerprint(&self) -> String {
        hex::encode(<sha2::Sha256 as sha2::Digest>::digest(self.cert.der()))
    }

    /// A client certificate `CN=cn,O=org` with DNS SANs, valid until `not_after` (year).
    pub fn client(&self, cn: &str, org: &str, sans: &[&str], expired: bool) -> Issued {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(DnType::OrganizationName, org);
        params.distinguished_name.push(DnType::CommonName, cn);
        params.subject_alt_names = sans
            .iter()
            .map(|s| SanType::DnsName((*s).try_into().unwrap()))
            .collect();
        if expired {
            params.not_before = rcgen::date_time_ymd(2020, 1, 1);
            params.not_after = rcgen::date_time_ymd(2021, 1, 1);
        }
        self.issue(params, KeyPair::generate().unwrap())
    }
}

/// Adds a certificate (by id) and a TLS section to `route`.
pub fn terminate(
    config: &mut GatewayConfig,
    route_index: usize,
    id: &str,
    issued: &Issued,
    client_auth: Option<ClientAuthConfig>,
) {
    if !config.tls_certificates.iter().any(|c| c.id == id) {
        config.tls_certificates.push(TlsCertificateConfig {
            id: id.into(),
            chain_pem: issued.chain_pem.clone(),
        });
        config.secrets.tls_keys.push(TlsKeyEntry {
            id: id.into(),
            key_pem: issued.key_pem.clone(),
        });
    }
    config.routes[route_index].tls = Some(RouteTlsConfig {
        certificate: id.into(),
        min_version: TlsVersionConfig::Tls12,
        client_auth,
        redirect_http: false,
    });
}

/// Accepts any server certificate and remembers the one it saw.
#[derive(Debug, Default)]
pub struct Recorder {
    pub seen: Mutex<Option<CertificateDer<'static>>>,
}

impl ServerCertVerifier for Recorder {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        *self.seen.lock().unwrap() = Some(end_entity.clone().into_owned());
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            m,
            c,
            d,
            &provider().signature_verification_algorithms,
        )
    }
    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            m,
            c,
            d,
            &provider().signature_verification_algorithms,
        )
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

pub struct ClientOptions<'a> {
    /// Trusted CA; `None` = accept anything (recording the certificate).
    pub ca: Option<&'a Ca>,
    pub client_cert: Option<&'a Issued>,
    pub versions: &'a [&'static rustls::SupportedProtocolVersion],
    pub alpn: Vec<Vec<u8>>,
    pub recorder: Option<Arc<Recorder>>,
}

static BOTH_VERSIONS: &[&rustls::SupportedProtocolVersion] =
    &[&rustls::version::TLS13, &rustls::version::TLS12];

impl Default for ClientOptions<'_> {
    fn default() -> Self {
        ClientOptions {
            ca: None,
            client_cert: None,
            versions: BOTH_VERSIONS,
            alpn: vec![b"http/1.1".to_vec()],
            recorder: None,
        }
    }
}

pub fn client_config(options: &ClientOptions<'_>) -> Arc<rustls::ClientConfig> {
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(options.versions)
        .unwrap();
    let builder = match options.ca {
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            roots.add(ca.cert.der().clone()).unwrap();
            builder.with_root_certificates(roots)
        }
        None => builder
            .dangerous()
            .with_custom_certificate_verifier(options.recorder.clone().unwrap_or_default()),
    };
    let mut config = match options.client_cert {
        Some(c) => builder
            .with_client_auth_cert(vec![c.der.clone()], c.key())
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = options.alpn.clone();
    Arc::new(config)
}

pub type TlsStream = tokio_rustls::client::TlsStream<tokio::net::TcpStream>;

/// Connects and handshakes; `server_name` is the SNI (an IP address sends none).
pub async fn connect(
    addr: SocketAddr,
    server_name: &str,
    options: &ClientOptions<'_>,
) -> std::io::Result<TlsStream> {
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let connector = tokio_rustls::TlsConnector::from(client_config(options));
    connector
        .connect(ServerName::try_from(server_name.to_string()).unwrap(), tcp)
        .await
}

pub struct TlsReply {
    pub status: u16,
    pub version: http::Version,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

impl TlsReply {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap()
    }
    pub fn upstream_header(&self, name: &str) -> Option<String> {
        self.json()["headers"][name][0].as_str().map(str::to_string)
    }
}

/// Sends requests over one HTTP/1.1 (or, with `h2`, HTTP/2) connection.
pub enum Conn {
    H1(hyper::client::conn::http1::SendRequest<Full<Bytes>>),
    H2(hyper::client::conn::http2::SendRequest<Full<Bytes>>),
}

impl Conn {
    pub async fn open(stream: TlsStream, h2: bool) -> Result<Conn, String> {
        if h2 {
            let (send, conn) =
                hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
                    .await
                    .map_err(|e| e.to_string())?;
            tokio::spawn(conn);
            Ok(Conn::H2(send))
        } else {
            let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                .await
                .map_err(|e| e.to_string())?;
            tokio::spawn(conn);
            Ok(Conn::H1(send))
        }
    }

    pub async fn get(
        &mut self,
        host: &str,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Result<TlsReply, String> {
        let mut builder = Request::get(format!("https://{host}{path}"));
        if matches!(self, Conn::H1(_)) {
            builder = Request::get(path).header("host", host);
        }
        for (k, v) in headers {
            builder = builder.header(*k, *v);
        }
        let request = builder.body(Full::new(Bytes::new())).unwrap();
        let response = match self {
            Conn::H1(s) => s.send_request(request).await,
            Conn::H2(s) => s.send_request(request).await,
        }
        .map_err(|e| e.to_string())?;
        let (parts, body) = response.into_parts();
        Ok(TlsReply {
            status: parts.status.as_u16(),
            version: parts.version,
            headers: parts.headers,
            body: body.collect().await.map_err(|e| e.to_string())?.to_bytes(),
        })
    }
}

/// One request on a fresh connection: handshake errors and request errors both become `Err`.
pub async fn https_get(
    addr: SocketAddr,
    sni: &str,
    host: &str,
    path: &str,
    options: &ClientOptions<'_>,
) -> Result<TlsReply, String> {
    let stream = connect(addr, sni, options)
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    let mut conn = Conn::open(stream, false).await?;
    conn.get(host, path, &[]).await
}
