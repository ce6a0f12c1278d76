//! The verified client certificate, reduced to what MutualTls matches on.
//!
//! rustls has already verified the chain against the route's CA (and its validity period)
//! before anything here runs; this only extracts identities. The subject uses the same
//! canonical form as the compiler ([`canonical_dn`]), so `CN=a,O=b` in a
//! ConsumerCredential matches whatever RDN order the CA wrote.

use portcullis_compiler::config::canonical_dn;
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
}

/// Short names of the attributes certificates commonly carry; others keep their dotted OID.
fn attribute_name(oid: &str) -> Option<&'static str> {
    Some(match oid {
        "2.5.4.3" => "CN",
        "2.5.4.5" => "SERIALNUMBER",
        "2.5.4.6" => "C",
        "2.5.4.7" => "L",
        "2.5.4.8" => "ST",
        "2.5.4.9" => "STREET",
        "2.5.4.10" => "O",
        "2.5.4.11" => "OU",
        "0.9.2342.19200300.100.1.1" => "UID",
        "0.9.2342.19200300.100.1.25" => "DC",
        "1.2.840.113549.1.9.1" => "EMAILADDRESS",
        _ => return None,
    })
}

impl PeerCertificate {
    /// `None` when the DER does not parse (rustls accepted it, so this should not happen;
    /// such a certificate then simply maps to no consumer).
    pub fn parse(der: &[u8]) -> Option<Self> {
        let (_, cert) = X509Certificate::from_der(der).ok()?;
        let mut attributes = Vec::new();
        for attr in cert.subject().iter_attributes() {
            let oid = attr.attr_type().to_id_string();
            let name = attribute_name(&oid).map_or(oid, str::to_string);
            let value = attr.as_str().ok()?.to_string();
            attributes.push((name, value));
        }
        let subject = canonical_dn(attributes.iter().map(|(t, v)| (t.as_str(), v.as_str())));
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
        })
    }
}
