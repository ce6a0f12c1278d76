//! Wire format of TLS termination, mutual TLS and upstream TLS (issue #7).
//!
//! Certificate chains and CA bundles are public and travel in the ConfigMap half; private keys
//! travel only in [`super::SecretConfig::tls_keys`]. Kept apart from `config.rs` so the TLS
//! types evolve without touching the structs every policy shares.

use serde::{Deserialize, Serialize};

/// A certificate chain from a `kubernetes.io/tls` Secret (`tls.crt`), by Secret id.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
#[serde(rename_all = "camelCase")]
pub struct TlsCertificateConfig {
    /// `namespace/secretName`; routes name it in [`RouteTlsConfig::certificate`].
    pub id: String,
    /// PEM, leaf first.
    pub chain_pem: String,
}

/// The private key (`tls.key`) matching the chain of the same id; Secret half only.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
#[serde(rename_all = "camelCase")]
pub struct TlsKeyEntry {
    pub id: String,
    /// PEM (PKCS#8, PKCS#1 RSA or SEC1 EC).
    pub key_pem: String,
}

#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum TlsVersionConfig {
    Tls12,
    Tls13,
}

#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ClientAuthModeConfig {
    /// No verified client certificate, no handshake.
    Require,
    /// A certificate is verified when sent; without one, other methods decide.
    Optional,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Hash)]
#[serde(rename_all = "camelCase")]
pub struct ClientAuthConfig {
    /// PEM CA certificates (`ca.crt` of `clientAuth.caSecretRef`).
    pub ca_pem: String,
    pub mode: ClientAuthModeConfig,
}

/// `spec.tls` of a route: terminate TLS for its hosts.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct RouteTlsConfig {
    /// Id of a [`TlsCertificateConfig`] (and its key).
    pub certificate: String,
    pub min_version: TlsVersionConfig,
    pub client_auth: Option<ClientAuthConfig>,
    /// Plain-HTTP requests for this route get a 308 to `https://`.
    pub redirect_http: bool,
}

/// `upstream.tls`: how `https://` targets are verified.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Hash, Default)]
#[serde(rename_all = "camelCase")]
pub struct UpstreamTlsConfig {
    /// PEM CA bundle; `None` = the system roots.
    pub ca_pem: Option<String>,
    /// SNI and the name the certificate must carry; `None` = the target's host.
    pub server_name: Option<String>,
    pub insecure_skip_verify: bool,
}

/// `ConsumerCredential.spec.mtls`, normalized: a verified client certificate maps to the
/// consumer when any entry matches.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct MtlsConfig {
    /// Canonical subject DNs, see [`canonical_dn`].
    pub subjects: Vec<String>,
    /// Subject alternative names (DNS, email, URI, IP), lowercased.
    pub sans: Vec<String>,
    /// SHA-256 of the leaf certificate's DER, lowercase hex without separators.
    pub fingerprints_sha256: Vec<String>,
    /// SHA-256 (lowercase hex) of the CA certificates of `caSecretRef`: when not empty, the
    /// identities above match only a certificate whose chain verifies to one of them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ca_fingerprints_sha256: Vec<String>,
}

/// The subject attributes a ConsumerCredential may name, by OID: the name used in canonical
/// form (RFC 4514 §3 where it defines one) and the other spellings accepted for it, compared
/// case-insensitively. `SN` is the surname (2.5.4.4) as in RFC 4519 and OpenSSL, never the
/// serial number, which is spelled `serialNumber`. Dotted OIDs are accepted for every
/// attribute, listed or not.
pub const DN_ATTRIBUTES: [(&str, &str, &[&str]); 19] = [
    ("2.5.4.3", "CN", &["COMMONNAME"]),
    ("2.5.4.4", "SN", &["SURNAME"]),
    ("2.5.4.5", "SERIALNUMBER", &[]),
    ("2.5.4.6", "C", &["COUNTRYNAME"]),
    ("2.5.4.7", "L", &["LOCALITYNAME"]),
    ("2.5.4.8", "ST", &["S", "STATEORPROVINCENAME"]),
    ("2.5.4.9", "STREET", &["STREETADDRESS"]),
    ("2.5.4.10", "O", &["ORGANIZATIONNAME"]),
    ("2.5.4.11", "OU", &["ORGANIZATIONALUNITNAME"]),
    ("2.5.4.12", "TITLE", &[]),
    ("2.5.4.17", "POSTALCODE", &[]),
    ("2.5.4.42", "GN", &["G", "GIVENNAME"]),
    ("2.5.4.43", "INITIALS", &[]),
    ("2.5.4.44", "GENERATIONQUALIFIER", &[]),
    ("2.5.4.46", "DNQUALIFIER", &[]),
    ("2.5.4.65", "PSEUDONYM", &[]),
    ("0.9.2342.19200300.100.1.1", "UID", &["USERID"]),
    ("0.9.2342.19200300.100.1.25", "DC", &["DOMAINCOMPONENT"]),
    ("1.2.840.113549.1.9.1", "EMAILADDRESS", &["E", "EMAIL"]),
];

/// The canonical name of the attribute with this dotted OID, if it is one of
/// [`DN_ATTRIBUTES`]; a certificate's other attributes keep their dotted OID.
pub fn dn_attribute_name(oid: &str) -> Option<&'static str> {
    DN_ATTRIBUTES
        .iter()
        .find(|(o, _, _)| *o == oid)
        .map(|(_, name, _)| *name)
}

fn is_dotted_oid(t: &str) -> bool {
    !t.is_empty()
        && t.split('.').count() >= 2
        && t.split('.')
            .all(|arc| !arc.is_empty() && arc.bytes().all(|b| b.is_ascii_digit()))
}

/// The canonical name of an attribute type as a user or a certificate spells it: a listed
/// name or alias, or a dotted OID (a listed one becomes its name). `None` for anything else.
fn known_type(t: &str) -> Option<String> {
    let t = t.trim();
    if is_dotted_oid(t) {
        return Some(dn_attribute_name(t).map_or_else(|| t.to_string(), str::to_string));
    }
    let upper = t.to_ascii_uppercase();
    DN_ATTRIBUTES
        .iter()
        .find(|(_, name, aliases)| *name == upper || aliases.contains(&upper.as_str()))
        .map(|(_, name, _)| (*name).to_string())
}

fn canonical_type(t: &str) -> String {
    known_type(t).unwrap_or_else(|| t.trim().to_ascii_uppercase())
}

fn escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        if matches!(c, ',' | '+' | '\\' | '=') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// The canonical form of a distinguished name given as attributes: types uppercased (with
/// aliases resolved), values trimmed and escaped, sorted. Sorting makes `CN=a,O=b` and
/// `O=b,CN=a` equal: users copy DNs from tools that print RDNs in either order, and a
/// certificate only reaches this comparison after the CA verified it.
pub fn canonical_dn<'a>(attributes: impl IntoIterator<Item = (&'a str, &'a str)>) -> String {
    let mut parts: Vec<String> = attributes
        .into_iter()
        .map(|(t, v)| format!("{}={}", canonical_type(t), escape(v.trim())))
        .collect();
    parts.sort();
    parts.join(",")
}

/// Parses an RFC 4514-style string (`CN=mobile-app,O=Example`; `\,` escapes; `+` joins
/// multi-valued RDNs) into its canonical form, or says what is wrong.
pub fn parse_dn(text: &str) -> Result<String, String> {
    let mut attributes = Vec::new();
    let mut current = String::new();
    let mut chars = text.chars();
    let mut pieces = Vec::new();
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some(escaped) => {
                    current.push('\\');
                    current.push(escaped);
                }
                None => return Err("ends with a lone backslash".into()),
            },
            ',' | '+' => pieces.push(std::mem::take(&mut current)),
            _ => current.push(c),
        }
    }
    pieces.push(current);
    for piece in &pieces {
        let Some((t, v)) = piece.split_once('=') else {
            return Err(format!("{piece:?} is not TYPE=value"));
        };
        let t = t.trim();
        if known_type(t).is_none() {
            // Refused rather than kept: a name read differently here and in the certificate
            // (as `SN` once was) silently matches the wrong attribute or nothing.
            let names: Vec<&str> = DN_ATTRIBUTES.iter().map(|(_, name, _)| *name).collect();
            return Err(format!(
                "{t:?} is not a known attribute type ({}, or a dotted OID)",
                names.join(", ")
            ));
        }
        let mut value = String::new();
        let mut it = v.chars();
        while let Some(c) = it.next() {
            if c == '\\' {
                if let Some(n) = it.next() {
                    value.push(n);
                }
            } else {
                value.push(c);
            }
        }
        attributes.push((t.to_string(), value));
    }
    Ok(canonical_dn(
        attributes.iter().map(|(t, v)| (t.as_str(), v.as_str())),
    ))
}

/// Why the first certificate of a PEM chain is not valid at `now_unix` (seconds), if it is
/// not: shared by the compiler (route status) and the proxy (a warning at load), so both say
/// the same thing. `None` also when the chain does not parse (reported elsewhere).
pub fn certificate_validity_problem(
    chain_pem: &[u8],
    now_unix: i64,
) -> Option<(CertificateValidity, String)> {
    use rustls_pki_types::pem::PemObject;
    let leaf = rustls_pki_types::CertificateDer::pem_slice_iter(chain_pem)
        .next()?
        .ok()?;
    let (_, cert) = <x509_parser::certificate::X509Certificate as x509_parser::prelude::FromDer<
        x509_parser::error::X509Error,
    >>::from_der(leaf.as_ref())
    .ok()?;
    let validity = cert.validity();
    if now_unix > validity.not_after.timestamp() {
        return Some((
            CertificateValidity::Expired,
            format!(
                "the certificate expired on {} and is still served; clients will refuse it",
                validity.not_after
            ),
        ));
    }
    if now_unix < validity.not_before.timestamp() {
        return Some((
            CertificateValidity::NotYetValid,
            format!(
                "the certificate is not valid before {} and is still served; clients will refuse it",
                validity.not_before
            ),
        ));
    }
    None
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CertificateValidity {
    Expired,
    NotYetValid,
}

/// `AB:cd:…` or `abcd…` → 64 lowercase hex digits, or `None`.
pub fn normalize_fingerprint(text: &str) -> Option<String> {
    let hex: String = text
        .chars()
        .filter(|c| *c != ':' && !c.is_whitespace())
        .collect::<String>()
        .to_ascii_lowercase();
    (hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit())).then_some(hex)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn dn_order_case_and_escapes_normalize() {
        let a = parse_dn("CN=mobile-app, O=Example").unwrap();
        let b = parse_dn("o=Example,cn=mobile-app").unwrap();
        assert_eq!(a, b);
        assert_eq!(a, "CN=mobile-app,O=Example");
        assert_eq!(
            parse_dn(r"CN=Smith\, John+OU=x").unwrap(),
            r"CN=Smith\, John,OU=x"
        );
        assert_eq!(parse_dn("E=a@b").unwrap(), "EMAILADDRESS=a@b");
        assert!(parse_dn("mobile-app").is_err());
    }

    #[test]
    fn dn_attribute_names_follow_rfc_4519() {
        assert_eq!(parse_dn("CN=pat,SN=Smith").unwrap(), "CN=pat,SN=Smith");
        assert_eq!(parse_dn("cn=pat,surname=Smith").unwrap(), "CN=pat,SN=Smith");
        assert_eq!(parse_dn("CN=pat,2.5.4.4=Smith").unwrap(), "CN=pat,SN=Smith");
        assert_eq!(
            parse_dn("CN=pat,serialNumber=Smith").unwrap(),
            "CN=pat,SERIALNUMBER=Smith"
        );
        assert_eq!(parse_dn("GN=Pat,S=Bavaria").unwrap(), "GN=Pat,ST=Bavaria");
        assert_eq!(parse_dn("CN=x,1.2.3.4=y").unwrap(), "1.2.3.4=y,CN=x");
        for bad in ["FOO=x", "CN=a,Serial=1", "1.=x", "=x"] {
            assert!(parse_dn(bad).is_err(), "{bad}");
        }
        for (oid, name, _) in DN_ATTRIBUTES {
            assert_eq!(dn_attribute_name(oid), Some(name));
            assert_eq!(parse_dn(&format!("{name}=v")).unwrap(), format!("{name}=v"));
            assert_eq!(parse_dn(&format!("{oid}=v")).unwrap(), format!("{name}=v"));
        }
    }

    #[test]
    fn fingerprints_normalize() {
        let hex = "AB".repeat(32);
        assert_eq!(normalize_fingerprint(&hex).unwrap(), "ab".repeat(32));
        let colons = vec!["ab"; 32].join(":");
        assert_eq!(normalize_fingerprint(&colons).unwrap(), "ab".repeat(32));
        assert!(normalize_fingerprint("abc").is_none());
    }
}
