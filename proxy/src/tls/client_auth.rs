//! The verified client certificate, reduced to what MutualTls matches on.
//!
//! rustls has already verified the chain against the route's CA (and its validity period)
//! before anything here runs; this only extracts identities. The subject uses the same
//! canonical form as the compiler ([`canonical_dn`]), so `CN=a,O=b` in a
//! ConsumerCredential matches whatever RDN order the CA wrote.

use portcullis_compiler::config::{canonical_dn, dn_attribute_name};
use sha2::{Digest, Sha256};
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerCertificate {
    /// Canonical subject DN.
    pub subject: String,
    /// DNS names, emails, URIs and IP addresses, lowercased.
    pub sans: Vec<String>,
    /// SHA-256 of the DER, lowercase hex.
    pub fingerprint: String,
    /// SHA-256 (lowercase hex) of the route's client CAs that the chain verifies to, for
    /// consumers bound to a CA (`spec.mtls.caSecretRef`); filled in by the acceptor.
    pub anchors: Vec<String>,
}

impl PeerCertificate {
    /// `None` when the DER does not parse (rustls accepted it, so this should not happen;
    /// such a certificate then simply maps to no consumer).
    pub fn parse(der: &[u8]) -> Option<Self> {
        let (_, cert) = X509Certificate::from_der(der).ok()?;
        let mut attributes = Vec::new();
        let mut readable = true;
        for attr in cert.subject().iter_attributes() {
            let oid = attr.attr_type().to_id_string();
            // The compiler's table, so a name means the same attribute on both sides.
            let name = dn_attribute_name(&oid).map_or(oid, str::to_string);
            match attr.as_str() {
                Ok(value) => attributes.push((name, value.to_string())),
                Err(_) => readable = false,
            }
        }
        // A value in a string type we do not read (BMPString, say) leaves a subject that no
        // configured DN can equal; the SANs and the fingerprint still identify the client.
        let subject = if readable {
            canonical_dn(attributes.iter().map(|(t, v)| (t.as_str(), v.as_str())))
        } else {
            String::new()
        };
        let mut sans = Vec::new();
        if let Ok(Some(ext)) = cert.subject_alternative_name() {
            for name in &ext.value.general_names {
                match name {
                    GeneralName::DNSName(s) | GeneralName::RFC822Name(s) | GeneralName::URI(s) => {
                        sans.push(s.to_ascii_lowercase())
                    }
                    GeneralName::IPAddress(bytes) => {
                        let ip = match bytes.len() {
                            4 => <[u8; 4]>::try_from(*bytes).ok().map(std::net::IpAddr::from),
                            16 => <[u8; 16]>::try_from(*bytes)
                                .ok()
                                .map(std::net::IpAddr::from),
                            _ => None,
                        };
                        sans.extend(ip.map(|ip| ip.to_string()));
                    }
                    _ => {}
                }
            }
        }
        Some(PeerCertificate {
            subject,
            sans,
            fingerprint: hex::encode(Sha256::digest(der)),
            anchors: Vec::new(),
        })
    }
}
