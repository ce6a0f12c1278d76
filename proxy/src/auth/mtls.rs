//! MutualTls: a client certificate that the route's CA verified during the handshake is
//! mapped to a consumer by its SHA-256 fingerprint, subject DN or a SAN
//! (`ConsumerCredential.spec.mtls`), most specific first.
//!
//! A consumer with `caSecretRef` is bound to that CA: its identities match only a certificate
//! whose chain verified to one of the CA's certificates (the acceptor records which of the
//! route's CAs it verified to), so a subject issued by another CA the route also trusts is
//! not that consumer. Two consumers may then claim one identity under different CAs.
//!
//! An identity claimed by two consumers whose CAs could both vouch for it (either unbound,
//! or a CA in common) maps to neither (logged at load): picking one would let a certificate
//! act as whichever consumer sorts first.

use std::collections::HashMap;
use std::sync::Arc;

use portcullis_compiler::config::ConsumerConfig;

use crate::tls::PeerCertificate;

/// One consumer's claim on an identity.
struct Claim {
    consumer: usize,
    /// CA fingerprints the chain must verify to; `None` = any CA the route trusts.
    cas: Option<Arc<[String]>>,
}

impl Claim {
    fn vouched(&self, peer: &PeerCertificate) -> bool {
        self.cas
            .as_ref()
            .is_none_or(|cas| peer.anchors.iter().any(|a| cas.contains(a)))
    }

    /// Whether one certificate could satisfy both claims.
    fn overlaps(&self, other: &Claim) -> bool {
        match (&self.cas, &other.cas) {
            (Some(a), Some(b)) => a.iter().any(|ca| b.contains(ca)),
            _ => true,
        }
    }
}

#[derive(Default)]
pub struct MtlsIndex {
    fingerprints: HashMap<String, Vec<Claim>>,
    subjects: HashMap<String, Vec<Claim>>,
    sans: HashMap<String, Vec<Claim>>,
}

fn insert(map: &mut HashMap<String, Vec<Claim>>, key: &str, claim: Claim) {
    let claims = map.entry(key.to_string()).or_default();
    // The same consumer listing an identity twice is one claim.
    if !claims.iter().any(|c| c.consumer == claim.consumer) {
        claims.push(claim);
    }
}

/// Drops every identity two consumers could both be for.
fn remove_ambiguous(map: &mut HashMap<String, Vec<Claim>>) {
    map.retain(|key, claims| {
        let ambiguous = claims
            .iter()
            .enumerate()
            .any(|(i, a)| claims[i + 1..].iter().any(|b| a.overlaps(b)));
        if ambiguous {
            tracing::warn!(identity = %key, "client-certificate identity claimed by several consumers; it maps to none");
        }
        !ambiguous
    });
}

/// The one consumer whose claim the certificate satisfies; several (a chain that verified
/// to two CAs bound to different consumers) is none.
fn find(claims: Option<&Vec<Claim>>, peer: &PeerCertificate) -> Option<usize> {
    let mut vouched = claims?.iter().filter(|c| c.vouched(peer));
    let first = vouched.next()?.consumer;
    vouched.all(|c| c.consumer == first).then_some(first)
}

impl MtlsIndex {
    /// From consumers with their positions in the key store (one namespace's).
    pub fn build(consumers: &[(usize, &ConsumerConfig)]) -> Self {
        let mut index = MtlsIndex::default();
        for &(i, c) in consumers {
            let Some(mtls) = &c.mtls else { continue };
            let cas: Option<Arc<[String]>> = (!mtls.ca_fingerprints_sha256.is_empty())
                .then(|| mtls.ca_fingerprints_sha256.as_slice().into());
            let claim = || Claim {
                consumer: i,
                cas: cas.clone(),
            };
            for fp in &mtls.fingerprints_sha256 {
                insert(&mut index.fingerprints, fp, claim());
            }
            for subject in &mtls.subjects {
                insert(&mut index.subjects, subject, claim());
            }
            for san in &mtls.sans {
                insert(&mut index.sans, san, claim());
            }
        }
        remove_ambiguous(&mut index.fingerprints);
        remove_ambiguous(&mut index.subjects);
        remove_ambiguous(&mut index.sans);
        index
    }

    pub fn lookup(&self, peer: &PeerCertificate) -> Option<usize> {
        find(self.fingerprints.get(&peer.fingerprint), peer)
            .or_else(|| find(self.subjects.get(&peer.subject), peer))
            .or_else(|| {
                peer.sans
                    .iter()
                    .find_map(|san| find(self.sans.get(san), peer))
            })
    }
}
