//! The generation id of a compiled config: a digest of everything the proxies load.

use sha2::{Digest, Sha256};

use crate::config::GatewayConfig;

/// The first 16 hex digits of the SHA-256 of the config's parts: the canonical JSON of each,
/// except the consumers' part, which enters as its own digest (computed once per consumer
/// change, not once per compile). Called before the consumers' part joins `config`.
pub(crate) fn generation_of(config: &GatewayConfig, consumers: &[u8; 32]) -> String {
    let mut hasher = Sha256::new();
    hash_json(&mut hasher, &config.routes);
    hasher.update(consumers);
    hash_json(&mut hasher, &config.objects);
    hash_json(&mut hasher, &config.secrets);
    // Only when present, so configs without policies keep their generation ids.
    if !config.rate_limit_policies.is_empty() {
        hash_json(&mut hasher, &config.rate_limit_policies);
    }
    if !config.tls_certificates.is_empty() {
        hash_json(&mut hasher, &config.tls_certificates);
    }
    if !config.waf_policies.is_empty() {
        hash_json(&mut hasher, &config.waf_policies);
    }
    let digest = hasher.finalize();
    hex::encode(&digest[..8])
}

/// Streams a part's JSON into the hash: at 100k consumers it is tens of MB that need not
/// exist. Serializing plain data into a hasher cannot fail; an error would only hash less.
pub(crate) fn hash_json(hasher: &mut Sha256, part: &impl serde::Serialize) {
    let _ = serde_json::to_writer(hasher, part);
}
