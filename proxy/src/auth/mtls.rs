//! MutualTls: a client certificate that the route's CA verified during the handshake is
//! mapped to a consumer by its SHA-256 fingerprint, subject DN or a SAN
//! (`ConsumerCredential.spec.mtls`), most specific first.
//!
//! An identity claimed by two consumers maps to neither (logged at load): picking one would
//! let a certificate act as whichever consumer sorts first.

use std::collections::HashMap;

use portcullis_compiler::config::ConsumerConfig;

use crate::tls::PeerCertificate;

#[derive(Default)]
pub struct MtlsIndex {
    fingerprints: HashMap<String, usize>,
    subjects: HashMap<String, usize>,
    sans: HashMap<String, usize>,
}

fn insert(map: &mut HashMap<String, usize>, ambiguous: &mut Vec<String>, key: &str, i: usize) {
    if let Some(previous) = map.insert(key.to_string(), i) {
        if previous != i {
            ambiguous.push(key.to_string());
        }
    }
}

impl MtlsIndex {
    pub fn build(consumers: &[ConsumerConfig]) -> Self {
        let mut index = MtlsIndex::default();
        let mut ambiguous = (Vec::new(), Vec::new(), Vec::new());
        for (i, c) in consumers.iter().enumerate() {
            let Some(mtls) = &c.mtls else { continue };
            for fp in &mtls.fingerprints_sha256 {
                insert(&mut index.fingerprints, &mut ambiguous.0, fp, i);
            }
            for subject in &mtls.subjects {
                insert(&mut index.subjects, &mut ambiguous.1, subject, i);
            }
            for san in &mtls.sans {
                insert(&mut index.sans, &mut ambiguous.2, san, i);
            }
        }
        for (map, keys) in [
            (&mut index.fingerprints, ambiguous.0),
            (&mut index.subjects, ambiguous.1),
            (&mut index.sans, ambiguous.2),
        ] {
            for key in keys {
                tracing::warn!(identity = %key, "client-certificate identity claimed by several consumers; it maps to none");
                map.remove(&key);
            }
        }
        index
    }

    pub fn lookup(&self, peer: &PeerCertificate) -> Option<usize> {
        self.fingerprints
            .get(&peer.fingerprint)
            .or_else(|| self.subjects.get(&peer.subject))
            .or_else(|| peer.sans.iter().find_map(|san| self.sans.get(san)))
            .copied()
    }
}
