//! `spec.tls`, `upstream.tls` and `ConsumerCredential.spec.mtls` → their compiled form.
//!
//! Certificates and keys are parsed here, once, with the same rustls provider the proxy uses
//! (ring), so a Secret the proxy could not load is reported on the route's `ResolvedRefs`
//! condition instead of failing every proxy replica's config load. A route whose TLS material
//! is unusable is not served at all: serving it without TLS, or with another host's
//! certificate, would be a silent downgrade.

use std::collections::BTreeMap;

use portcullis_crds::{ApiRoute, AuthMethod, ClientAuthMode, ConsumerCredential};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use super::issues::Issues;
use super::kube_meta::Meta;
use super::secrets::{SecretIndex, SecretLookup};
use crate::config::{
    certificate_validity_problem, normalize_fingerprint, parse_dn, CertificateValidity,
    ClientAuthConfig, ClientAuthModeConfig, MtlsConfig, RouteConfig, RouteTlsConfig,
    TlsVersionConfig, UpstreamTlsConfig,
};
use crate::Reason;

pub(crate) const CERT_KEY: &str = "tls.crt";
pub(crate) const PRIVATE_KEY_KEY: &str = "tls.key";
pub(crate) const CA_KEY: &str = "ca.crt";

/// A certificate chain with its key, by Secret id, as found while compiling routes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CertificateMaterial {
    pub chain_pem: String,
    pub key_pem: String,
}

/// What TLS adds to one route: its settings and the certificate it needs delivered.
#[derive(Debug, Default)]
pub(crate) struct RouteTls {
    pub route: Option<RouteTlsConfig>,
    pub upstream: Option<UpstreamTlsConfig>,
    pub certificate: Option<(String, CertificateMaterial)>,
}

impl RouteTls {
    pub fn apply(&self, route: &mut RouteConfig) {
        route.tls = self.route.clone();
        route.upstream.tls = self.upstream.clone();
    }
}

/// Checks that a chain and key load in rustls and belong together.
pub(crate) fn validate_certificate(chain_pem: &[u8], key_pem: &[u8]) -> Result<(), String> {
    let chain = CertificateDer::pem_slice_iter(chain_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{CERT_KEY} is not valid PEM: {e}"))?;
    if chain.is_empty() {
        return Err(format!("{CERT_KEY} contains no CERTIFICATE block"));
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| {
        format!("{PRIVATE_KEY_KEY} holds no PEM private key (PKCS#8, RSA or EC): {e}")
    })?;
    let provider = rustls::crypto::ring::default_provider();
    let signing = provider
        .key_provider
        .load_private_key(key)
        .map_err(|e| format!("{PRIVATE_KEY_KEY} is not a usable RSA or ECDSA key: {e}"))?;
    let certified = rustls::sign::CertifiedKey::new(chain, signing);
    match certified.keys_match() {
        Ok(()) => Ok(()),
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => Ok(()),
        Err(rustls::Error::InconsistentKeys(_)) => Err(format!(
            "{PRIVATE_KEY_KEY} does not match the first certificate in {CERT_KEY}"
        )),
        Err(e) => Err(format!(
            "the first certificate in {CERT_KEY} cannot be parsed: {e}"
        )),
    }
}

/// PEM CA certificates that rustls accepts as trust anchors; the text is returned trimmed.
pub(crate) fn validate_ca_bundle(pem: &[u8]) -> Result<String, String> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{CA_KEY} is not valid PEM: {e}"))?;
    let mut roots = rustls::RootCertStore::empty();
    let (added, _) = roots.add_parsable_certificates(certs);
    if added == 0 {
        return Err(format!("{CA_KEY} contains no usable CA certificate"));
    }
    String::from_utf8(pem.to_vec())
        .map(|s| s.trim().to_string())
        .map_err(|_| format!("{CA_KEY} is not UTF-8 text"))
}

fn secret_text(
    secrets: &SecretIndex<'_>,
    meta: &Meta,
    name: &str,
    key: &str,
    field: &str,
    issues: &mut Issues,
) -> Option<Vec<u8>> {
    match secrets.get(&meta.namespace, name, key) {
        SecretLookup::Found(value) => Some(value),
        SecretLookup::SecretMissing => {
            issues.unresolved(
                field,
                format!(
                    "Secret {}/{name} not found; the route is not served without it",
                    meta.namespace
                ),
                true,
            );
            None
        }
        SecretLookup::KeyMissing => {
            issues.unresolved(
                field,
                format!(
                    "Secret {}/{name} has no key {key:?}; the route is not served without it",
                    meta.namespace
                ),
                true,
            );
            None
        }
    }
}

fn ca_from_secret(
    secrets: &SecretIndex<'_>,
    meta: &Meta,
    name: &str,
    field: &str,
    issues: &mut Issues,
) -> Option<String> {
    let pem = secret_text(secrets, meta, name, CA_KEY, field, issues)?;
    match validate_ca_bundle(&pem) {
        Ok(text) => Some(text),
        Err(e) => {
            issues.invalid_ref_blocking(
                field,
                format!(
                    "Secret {}/{name}: {e}; the route is not served",
                    meta.namespace
                ),
            );
            None
        }
    }
}

fn min_version(value: Option<&str>, issues: &mut Issues) -> TlsVersionConfig {
    match value.map(str::to_ascii_uppercase).as_deref() {
        None | Some("TLS1.2") => TlsVersionConfig::Tls12,
        Some("TLS1.3") => TlsVersionConfig::Tls13,
        Some(other) => {
            issues.invalid(
                "spec.tls.minVersion",
                format!("{other:?} is not TLS1.2 or TLS1.3 (older versions are never offered)"),
            );
            TlsVersionConfig::Tls12
        }
    }
}

/// `spec.tls`, `upstream.tls` and the MutualTls method's prerequisites of one route.
/// `now` (seconds since the epoch) judges the certificate's validity period; `None` skips it.
pub(crate) fn compile_route_tls(
    route: &ApiRoute,
    meta: &Meta,
    secrets: &SecretIndex<'_>,
    now: Option<i64>,
    issues: &mut Issues,
) -> RouteTls {
    let spec = &route.spec;
    let mut out = RouteTls::default();
    let wants_mtls = spec
        .authentication
        .as_ref()
        .is_some_and(|a| a.methods.contains(&AuthMethod::MutualTls));

    if let Some(tls) = &spec.tls {
        let field = "spec.tls.secretName";
        let min_version = min_version(tls.min_version.as_deref(), issues);
        if tls.secret_name.is_empty() {
            issues.invalid(field, "must name a kubernetes.io/tls Secret");
        } else {
            let chain = secret_text(secrets, meta, &tls.secret_name, CERT_KEY, field, issues);
            // A missing Secret is reported once, not once per key.
            let secret_exists = chain.is_some()
                || secrets.get(&meta.namespace, &tls.secret_name, CERT_KEY)
                    != SecretLookup::SecretMissing;
            let key = if secret_exists {
                secret_text(
                    secrets,
                    meta,
                    &tls.secret_name,
                    PRIVATE_KEY_KEY,
                    field,
                    issues,
                )
            } else {
                None
            };
            if let (Some(chain), Some(key)) = (chain, key) {
                match validate_certificate(&chain, &key) {
                    Ok(()) => {
                        // A warning, not a refusal: the Secret is what cert-manager or a
                        // person renews, and refusing it would take the host down (or leave
                        // an older certificate) rather than make anyone notice sooner.
                        if let Some((validity, message)) =
                            now.and_then(|now| certificate_validity_problem(&chain, now))
                        {
                            let reason = match validity {
                                CertificateValidity::Expired => Reason::CertificateExpired,
                                CertificateValidity::NotYetValid => Reason::CertificateNotYetValid,
                            };
                            issues.warn_ref(
                                reason,
                                field,
                                format!("Secret {}/{}: {message}", meta.namespace, tls.secret_name),
                            );
                        }
                        let id = format!("{}/{}", meta.namespace, tls.secret_name);
                        out.certificate = Some((
                            id,
                            CertificateMaterial {
                                chain_pem: String::from_utf8_lossy(&chain).trim().to_string(),
                                key_pem: String::from_utf8_lossy(&key).trim().to_string(),
                            },
                        ));
                    }
                    Err(e) => issues.invalid_ref_blocking(
                        field,
                        format!(
                            "Secret {}/{}: {e}; the route is not served",
                            meta.namespace, tls.secret_name
                        ),
                    ),
                }
            }
        }
        let client_auth = tls.client_auth.as_ref().and_then(|ca| {
            let pem = ca_from_secret(
                secrets,
                meta,
                &ca.ca_secret_ref.name,
                "spec.tls.clientAuth.caSecretRef",
                issues,
            )?;
            Some(ClientAuthConfig {
                ca_pem: pem,
                mode: match ca.mode.unwrap_or_default() {
                    ClientAuthMode::Require => ClientAuthModeConfig::Require,
                    ClientAuthMode::Optional => ClientAuthModeConfig::Optional,
                },
            })
        });
        out.route = out.certificate.as_ref().map(|(id, _)| RouteTlsConfig {
            certificate: id.clone(),
            min_version,
            client_auth,
            redirect_http: tls.redirect_http.unwrap_or(false),
        });
    }
    if wants_mtls
        && spec
            .tls
            .as_ref()
            .and_then(|t| t.client_auth.as_ref())
            .is_none()
    {
        issues.invalid(
            "spec.authentication.methods",
            "MutualTls needs spec.tls.clientAuth (the CA that verifies client certificates)",
        );
    }

    if let Some(tls) = &spec.upstream.tls {
        let field = "spec.upstream.tls";
        let skip = tls.insecure_skip_verify.unwrap_or(false);
        if skip && tls.ca_secret_ref.is_some() {
            issues.invalid(
                field,
                "set either caSecretRef or insecureSkipVerify, not both",
            );
        }
        if let Some(name) = &tls.server_name {
            if rustls_pki_types::ServerName::try_from(name.as_str()).is_err() {
                issues.invalid(
                    &format!("{field}.serverName"),
                    format!("{name:?} is not a DNS name or IP address"),
                );
            }
        }
        for (i, target) in spec.upstream.targets.iter().enumerate() {
            if target
                .url
                .as_deref()
                .is_some_and(|u| u.to_ascii_lowercase().starts_with("http://"))
            {
                issues.invalid(
                    &format!("spec.upstream.targets[{i}].url"),
                    "upstream.tls is set, so targets must be https:// (service targets use https automatically)",
                );
            }
        }
        let ca_pem = tls.ca_secret_ref.as_ref().and_then(|r| {
            ca_from_secret(
                secrets,
                meta,
                &r.name,
                &format!("{field}.caSecretRef"),
                issues,
            )
        });
        out.upstream = Some(UpstreamTlsConfig {
            ca_pem,
            server_name: tls.server_name.clone(),
            insecure_skip_verify: skip,
        });
    }
    out
}

/// A host terminated by two routes with different certificates or TLS settings cannot be
/// served consistently (the handshake happens before the route is known): the later route
/// in (namespace, name) order is refused, naming the first.
pub(crate) fn mark_tls_conflicts(routes: &mut [(Meta, Option<RouteConfig>, Issues)]) {
    let mut owners: BTreeMap<String, (String, String, RouteTlsConfig)> = BTreeMap::new();
    for (meta, compiled, issues) in routes.iter_mut() {
        let Some(route) = compiled.as_ref().filter(|_| issues.is_accepted()) else {
            continue;
        };
        let Some(tls) = &route.tls else { continue };
        let mut tls_key = tls.clone();
        // Redirects are per route; the handshake does not depend on them.
        tls_key.redirect_http = false;
        let mut conflict = None;
        for host in &route.hosts {
            if let Some((owner, owner_namespace, settings)) = owners.get(host) {
                if *settings != tls_key {
                    conflict = Some(format!(
                        "host {host:?} is already terminated by {} with a different certificate, minVersion or clientAuth",
                        if *owner_namespace == meta.namespace {
                            owner.as_str()
                        } else {
                            "a route of another namespace"
                        }
                    ));
                    break;
                }
            }
        }
        match conflict {
            Some(message) => {
                issues.conflicted("spec.tls", message);
                *compiled = None;
            }
            None => {
                for host in &route.hosts {
                    owners.entry(host.clone()).or_insert_with(|| {
                        (meta.describe(), meta.namespace.clone(), tls_key.clone())
                    });
                }
            }
        }
    }
}

/// `ConsumerCredential.spec.mtls`, normalized; malformed entries make the credential invalid.
pub(crate) fn compile_mtls(
    consumer: &ConsumerCredential,
    secrets: &SecretIndex<'_>,
    meta: &Meta,
    issues: &mut Issues,
) -> Option<MtlsConfig> {
    let mtls = consumer.spec.mtls.as_ref()?;
    let mut out = MtlsConfig::default();
    if let Some(ca) = &mtls.ca_secret_ref {
        // Without the CA the identities would match a certificate from any CA the route
        // trusts, which is what the reference exists to prevent: they are dropped instead
        // (the consumer's other credentials keep working).
        out.ca_fingerprints_sha256 = consumer_ca(secrets, meta, &ca.name, issues)?;
    }
    for (i, subject) in mtls.subjects.iter().enumerate() {
        match parse_dn(subject) {
            Ok(dn) => out.subjects.push(dn),
            Err(e) => issues.invalid(&format!("spec.mtls.subjects[{i}]"), e),
        }
    }
    for (i, san) in mtls.sans.iter().enumerate() {
        let san = san.trim().to_ascii_lowercase();
        if san.is_empty() || san.chars().any(char::is_control) {
            issues.invalid(&format!("spec.mtls.sans[{i}]"), "must be a non-empty name");
        } else {
            out.sans.push(san);
        }
    }
    for (i, fp) in mtls.fingerprints_sha256.iter().enumerate() {
        match normalize_fingerprint(fp) {
            Some(hex) => out.fingerprints_sha256.push(hex),
            None => issues.invalid(
                &format!("spec.mtls.fingerprintsSha256[{i}]"),
                "must be 64 hex digits (colons allowed)",
            ),
        }
    }
    for list in [
        &mut out.subjects,
        &mut out.sans,
        &mut out.fingerprints_sha256,
        &mut out.ca_fingerprints_sha256,
    ] {
        list.sort();
        list.dedup();
    }
    if out.subjects.is_empty() && out.sans.is_empty() && out.fingerprints_sha256.is_empty() {
        issues.invalid(
            "spec.mtls",
            "needs at least one subject, SAN or fingerprint",
        );
    }
    Some(out)
}

/// SHA-256 of each usable CA certificate in `ca.crt` of a consumer's `spec.mtls.caSecretRef`;
/// `None` (with the reason on ResolvedRefs) when there is none.
fn consumer_ca(
    secrets: &SecretIndex<'_>,
    meta: &Meta,
    name: &str,
    issues: &mut Issues,
) -> Option<Vec<String>> {
    const FIELD: &str = "spec.mtls.caSecretRef";
    let dropped = "the mtls identities are ignored without it";
    let pem = match secrets.get(&meta.namespace, name, CA_KEY) {
        SecretLookup::Found(value) => value,
        SecretLookup::SecretMissing => {
            issues.unresolved(
                FIELD,
                format!("Secret {}/{name} not found; {dropped}", meta.namespace),
                false,
            );
            return None;
        }
        SecretLookup::KeyMissing => {
            issues.unresolved(
                FIELD,
                format!(
                    "Secret {}/{name} has no key {CA_KEY:?}; {dropped}",
                    meta.namespace
                ),
                false,
            );
            return None;
        }
    };
    let fingerprints: Vec<String> = CertificateDer::pem_slice_iter(&pem)
        .filter_map(Result::ok)
        .filter(|der| {
            // The same test the proxy's trust store applies, so a fingerprint listed here
            // can be one a chain verifies to.
            let mut roots = rustls::RootCertStore::empty();
            roots.add_parsable_certificates([der.clone()]).0 == 1
        })
        .map(|der| hex::encode(<sha2::Sha256 as sha2::Digest>::digest(der.as_ref())))
        .collect();
    if fingerprints.is_empty() {
        issues.invalid_ref(
            FIELD,
            format!(
                "Secret {}/{name}: {CA_KEY} contains no usable CA certificate; {dropped}",
                meta.namespace
            ),
        );
        return None;
    }
    Some(fingerprints)
}
