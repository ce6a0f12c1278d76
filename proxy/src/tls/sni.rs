//! Certificates by SNI host and rustls server configs by TLS policy, for one config generation.
//!
//! Host lookup follows the router: an exact host first, then `*.parent` for exactly one
//! extra label. A client without SNI, or with a name no route terminates, gets the default
//! certificate: the first TLS route without hosts in config order, else the first TLS route.
//! Its handshake applies that route's policy, so a request for another TLS host on such a
//! connection is answered 421 by [`super::check_route`] rather than served under the wrong
//! client-authentication settings.

use std::collections::hash_map::DefaultHasher;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use portcullis_compiler::config::{
    ClientAuthConfig, ClientAuthModeConfig, RouteTlsConfig, TlsVersionConfig,
};
use portcullis_compiler::GatewayConfig;
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

#[derive(Debug, thiserror::Error)]
pub enum TlsConfigError {
    #[error("TLS certificate {id}: {message}")]
    Certificate { id: String, message: String },
    #[error("route {route}: TLS certificate {id} is not in the config")]
    MissingCertificate { route: String, id: String },
    #[error("route {route}: client CA: {message}")]
    ClientCa { route: String, message: String },
    #[error("TLS setup: {0}")]
    Rustls(#[from] rustls::Error),
}

/// Identifies a TLS policy across config generations: a connection accepted under one
/// generation is compared with routes of a later one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PolicyKey(u64);

impl PolicyKey {
    pub fn of(tls: &RouteTlsConfig) -> Self {
        let mut hasher = DefaultHasher::new();
        tls.min_version.hash(&mut hasher);
        tls.client_auth.hash(&mut hasher);
        PolicyKey(hasher.finish())
    }
}

/// The certificate for a ClientHello, from this generation's index.
#[derive(Debug, Default)]
pub struct SniIndex {
    exact: HashMap<String, usize>,
    wildcard: HashMap<String, usize>,
    default: Option<usize>,
    /// (certificate, index into the policies).
    entries: Vec<(Arc<CertifiedKey>, usize)>,
}

impl SniIndex {
    fn entry(&self, sni: Option<&str>) -> Option<usize> {
        let found = sni.and_then(|name| {
            self.exact.get(name).copied().or_else(|| {
                let (_, parent) = name.split_once('.')?;
                self.wildcard.get(parent).copied()
            })
        });
        found.or(self.default)
    }
}

impl ResolvesServerCert for SniIndex {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let sni = hello.server_name().map(str::to_ascii_lowercase);
        self.entry(sni.as_deref())
            .and_then(|i| self.entries.get(i))
            .map(|(key, _)| key.clone())
    }
}

struct Policy {
    key: PolicyKey,
    config: Arc<ServerConfig>,
    anchors: Arc<[ClientAnchor]>,
}

/// One CA of a policy's client CA bundle. rustls says that a chain verified, not to which
/// anchor; consumers bound to a CA need the latter, so with several CAs each one gets a
/// verifier of its own, run once per handshake (never per request).
pub struct ClientAnchor {
    /// SHA-256 of the CA certificate's DER, lowercase hex.
    pub fingerprint: String,
    /// `None` when the bundle has only this CA: rustls's verification already named it.
    verifier: Option<Arc<dyn rustls::server::danger::ClientCertVerifier>>,
}

/// The fingerprints of the anchors a verified client chain (leaf first) verifies to.
pub fn verified_anchors(anchors: &[ClientAnchor], chain: &[CertificateDer<'_>]) -> Vec<String> {
    let Some((leaf, intermediates)) = chain.split_first() else {
        return Vec::new();
    };
    let now = rustls_pki_types::UnixTime::now();
    anchors
        .iter()
        .filter(|anchor| {
            anchor
                .verifier
                .as_ref()
                .is_none_or(|v| v.verify_client_cert(leaf, intermediates, now).is_ok())
        })
        .map(|anchor| anchor.fingerprint.clone())
        .collect()
}

fn client_anchors(
    certs: &[CertificateDer<'static>],
    provider: &Arc<rustls::crypto::CryptoProvider>,
) -> Result<Vec<ClientAnchor>, rustls::server::VerifierBuilderError> {
    let mut usable = Vec::new();
    for der in certs {
        let mut roots = rustls::RootCertStore::empty();
        if roots.add_parsable_certificates([der.clone()]).0 == 1 {
            usable.push((der, roots));
        }
    }
    let single = usable.len() == 1;
    usable
        .into_iter()
        .map(|(der, roots)| {
            let verifier = if single {
                None
            } else {
                Some(
                    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                        .build()?,
                )
            };
            Ok(ClientAnchor {
                fingerprint: hex::encode(<sha2::Sha256 as sha2::Digest>::digest(der.as_ref())),
                verifier,
            })
        })
        .collect()
}

/// Everything the TLS listener needs from one config generation.
#[derive(Default)]
pub struct TlsRuntime {
    index: Arc<SniIndex>,
    policies: Vec<Policy>,
}

fn load_certificate(
    id: &str,
    chain_pem: &str,
    key_pem: &str,
    provider: &rustls::crypto::CryptoProvider,
) -> Result<Arc<CertifiedKey>, TlsConfigError> {
    let err = |message: String| TlsConfigError::Certificate {
        id: id.to_string(),
        message,
    };
    let chain = CertificateDer::pem_slice_iter(chain_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| err(format!("chain: {e}")))?;
    let key =
        PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| err(format!("key: {e}")))?;
    let key = provider
        .key_provider
        .load_private_key(key)
        .map_err(|e| err(format!("key: {e}")))?;
    Ok(Arc::new(CertifiedKey::new(chain, key)))
}

fn server_config(
    tls: &RouteTlsConfig,
    route: &str,
    index: &Arc<SniIndex>,
    provider: &Arc<rustls::crypto::CryptoProvider>,
    anchors: &mut Vec<ClientAnchor>,
) -> Result<ServerConfig, TlsConfigError> {
    let versions: &[&rustls::SupportedProtocolVersion] = match tls.min_version {
        TlsVersionConfig::Tls12 => &[&rustls::version::TLS13, &rustls::version::TLS12],
        TlsVersionConfig::Tls13 => &[&rustls::version::TLS13],
    };
    let builder =
        ServerConfig::builder_with_provider(provider.clone()).with_protocol_versions(versions)?;
    let builder = match &tls.client_auth {
        None => builder.with_no_client_auth(),
        Some(ClientAuthConfig { ca_pem, mode }) => {
            let ca_err = |message: String| TlsConfigError::ClientCa {
                route: route.to_string(),
                message,
            };
            let mut roots = rustls::RootCertStore::empty();
            let certs = CertificateDer::pem_slice_iter(ca_pem.as_bytes())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| ca_err(e.to_string()))?;
            *anchors = client_anchors(&certs, provider).map_err(|e| ca_err(e.to_string()))?;
            let (added, _) = roots.add_parsable_certificates(certs);
            if added == 0 {
                return Err(ca_err("no usable CA certificate".into()));
            }
            let verifier =
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone());
            let verifier = match mode {
                ClientAuthModeConfig::Require => verifier,
                ClientAuthModeConfig::Optional => verifier.allow_unauthenticated(),
            }
            .build()
            .map_err(|e| ca_err(e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder.with_cert_resolver(index.clone());
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    // The config changes on every swap; resumption state must not outlive the policy it was
    // negotiated under, so each policy keeps its own small session cache.
    config.session_storage = rustls::server::ServerSessionMemoryCache::new(1024);
    Ok(config)
}

impl TlsRuntime {
    pub fn build(config: &GatewayConfig) -> Result<Self, TlsConfigError> {
        let provider = super::provider();
        let keys: HashMap<&str, &str> = config
            .secrets
            .tls_keys
            .iter()
            .map(|k| (k.id.as_str(), k.key_pem.as_str()))
            .collect();
        let mut certificates: HashMap<&str, Arc<CertifiedKey>> = HashMap::new();
        for cert in &config.tls_certificates {
            let key = keys
                .get(cert.id.as_str())
                .ok_or_else(|| TlsConfigError::Certificate {
                    id: cert.id.clone(),
                    message: "no private key in the Secret half".into(),
                })?;
            certificates.insert(
                cert.id.as_str(),
                load_certificate(&cert.id, &cert.chain_pem, key, &provider)?,
            );
            // Served anyway (the route's status says so too): refusing the config would keep
            // an older certificate or take the host down, and the renewal is outside our hands.
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
            if let Some((_, problem)) = portcullis_compiler::config::certificate_validity_problem(
                cert.chain_pem.as_bytes(),
                now,
            ) {
                tracing::warn!(certificate = %cert.id, "{problem}");
            }
        }

        let mut index = SniIndex::default();
        let mut policy_of: HashMap<PolicyKey, usize> = HashMap::new();
        let mut policy_settings: Vec<(&RouteTlsConfig, &str)> = Vec::new();
        let mut entry_of: HashMap<(&str, usize), usize> = HashMap::new();
        let mut first_any = None;
        for route in &config.routes {
            let Some(tls) = &route.tls else { continue };
            let certificate = certificates.get(tls.certificate.as_str()).ok_or_else(|| {
                TlsConfigError::MissingCertificate {
                    route: route.id.clone(),
                    id: tls.certificate.clone(),
                }
            })?;
            let key = PolicyKey::of(tls);
            let policy = *policy_of.entry(key).or_insert_with(|| {
                policy_settings.push((tls, route.id.as_str()));
                policy_settings.len() - 1
            });
            let entry = *entry_of
                .entry((tls.certificate.as_str(), policy))
                .or_insert_with(|| {
                    index.entries.push((certificate.clone(), policy));
                    index.entries.len() - 1
                });
            first_any.get_or_insert(entry);
            if route.hosts.is_empty() {
                index.default.get_or_insert(entry);
            }
            for host in &route.hosts {
                // The compiler refuses a host terminated twice with different settings; the
                // first route keeps it if a config from elsewhere says otherwise.
                match host.strip_prefix("*.") {
                    Some(parent) => index.wildcard.entry(parent.to_string()),
                    None => index.exact.entry(host.clone()),
                }
                .or_insert(entry);
            }
        }
        if index.default.is_none() {
            index.default = first_any;
        }
        let index = Arc::new(index);
        let policies = policy_settings
            .iter()
            .map(|(tls, route)| {
                let mut anchors = Vec::new();
                let config = server_config(tls, route, &index, &provider, &mut anchors)?;
                Ok(Policy {
                    key: PolicyKey::of(tls),
                    config: Arc::new(config),
                    anchors: anchors.into(),
                })
            })
            .collect::<Result<_, TlsConfigError>>()?;
        Ok(TlsRuntime { index, policies })
    }

    /// The server config for a ClientHello's SNI, with the key of its policy; `None` when no
    /// route terminates TLS at all.
    /// With it, the policy's client CAs (see [`verified_anchors`]).
    pub fn select(
        &self,
        sni: Option<&str>,
    ) -> Option<(PolicyKey, Arc<ServerConfig>, Arc<[ClientAnchor]>)> {
        let entry = self.index.entry(sni)?;
        let (_, policy) = self.index.entries.get(entry)?;
        self.policies
            .get(*policy)
            .map(|p| (p.key, p.config.clone(), p.anchors.clone()))
    }

    pub fn is_empty(&self) -> bool {
        self.policies.is_empty()
    }
}
