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
}

/// Attribute short names as users write them, keyed by the name used in canonical form.
const DN_ALIASES: [(&str, &str); 4] = [
    ("E", "EMAILADDRESS"),
    ("EMAIL", "EMAILADDRESS"),
    ("S", "ST"),
    ("SN", "SERIALNUMBER"),
];

fn canonical_type(t: &str) -> String {
    let upper = t.trim().to_ascii_uppercase();
    DN_ALIASES
        .iter()
        .find(|(alias, _)| *alias == upper)
        .map_or(upper, |(_, name)| (*name).to_string())
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
        if t.is_empty() || !t.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.') {
            return Err(format!("{t:?} is not an attribute type like CN or O"));
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
    fn fingerprints_normalize() {
        let hex = "AB".repeat(32);
        assert_eq!(normalize_fingerprint(&hex).unwrap(), "ab".repeat(32));
        let colons = vec!["ab"; 32].join(":");
        assert_eq!(normalize_fingerprint(&colons).unwrap(), "ab".repeat(32));
        assert!(normalize_fingerprint("abc").is_none());
    }
}
