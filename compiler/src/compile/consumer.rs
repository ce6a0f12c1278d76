//! ConsumerCredential: identity, groups and hashed API keys.

use std::collections::BTreeMap;

use base64::Engine;
use portcullis_crds::ConsumerCredential;
use sha2::{Digest, Sha256};

use super::issues::Issues;
use super::kube_meta::Meta;
use super::secrets::{SecretIndex, SecretLookup};
use super::validators::JWT_ALGORITHMS;
use crate::config::{
    ApiKeyEntry, ConsumerConfig, JwtPublicKeyConfig, JwtSecretEntry, ObjectKind, ObjectRef,
};
use crate::ObjectStatus;

const DEFAULT_API_KEY_KEY: &str = "api-key";
const MIN_API_KEY_LEN: usize = 8;
const MIN_HMAC_SECRET_LEN: usize = 32;

/// SHA-256 (hex) of an API key: what the config stores and the proxy compares.
pub fn hash_api_key(key: &[u8]) -> String {
    hex::encode(Sha256::digest(key))
}

/// Everything the consumers put into a config. It depends on the consumers and the Secrets
/// alone, which is what lets `CompileCache` keep it while only routes or policies
/// change (100,000 consumers are ~80% of a whole compile).
#[derive(Debug, Clone, Default)]
pub(crate) struct ConsumerSection {
    /// By id.
    pub consumers: Vec<ConsumerConfig>,
    /// Sorted, without duplicates.
    pub api_keys: Vec<ApiKeyEntry>,
    /// Sorted.
    pub jwt_secrets: Vec<JwtSecretEntry>,
    /// `oauth2ClientIds` of accepted but disabled consumers, sorted, without duplicates.
    pub disabled_oauth2_client_ids: Vec<String>,
    /// Accepted consumers, sorted as `GatewayConfig::objects` is.
    pub objects: Vec<ObjectRef>,
    /// Every consumer's verdict, by namespace and name.
    pub statuses: Vec<ObjectStatus>,
    /// SHA-256 of the delivered parts above, for the generation id.
    pub digest: [u8; 32],
    /// Bytes of config the accepted consumers of each namespace take (their budget).
    pub bytes_by_namespace: BTreeMap<String, usize>,
}

pub(crate) fn compile_consumers(
    consumers: &[&ConsumerCredential],
    secrets: &SecretIndex<'_>,
    budgets: &crate::tenancy::Budgets,
) -> ConsumerSection {
    let mut section = ConsumerSection::default();
    // Which consumer first claimed a name or key; later claimants are the conflicting ones.
    // Keys are unique per namespace: a consumer only authenticates on its own namespace's
    // routes (and those that name its namespace), so a key reused across namespaces is no
    // ambiguity, and refusing it would tell one tenant another tenant's key.
    let mut names: BTreeMap<String, String> = BTreeMap::new();
    let mut key_owner: BTreeMap<(String, String), String> = BTreeMap::new();
    let mut accepted_in: BTreeMap<String, usize> = BTreeMap::new();
    let mut ordered: Vec<&&ConsumerCredential> = consumers.iter().collect();
    // Cached: the key copies the namespace and name, and sort_by_key would do that on every
    // comparison (3.4M times for 100k consumers).
    ordered.sort_by_cached_key(|c| {
        let meta = Meta::of(&c.metadata);
        (
            meta.created.is_none(),
            meta.created,
            meta.namespace,
            meta.name,
        )
    });

    for consumer in ordered {
        let meta = Meta::of(&consumer.metadata);
        let spec = &consumer.spec;
        let mut issues = Issues::default();
        let username = spec.consumer.clone().unwrap_or_else(|| meta.name.clone());
        let id = format!("{}/{}", meta.namespace, username);
        if username.is_empty() || username.len() > 253 || username.chars().any(char::is_control) {
            issues.invalid("spec.consumer", "must be 1-253 printable characters");
        }
        if let Some(owner) = names.get(&id) {
            issues.conflicted(
                "spec.consumer",
                format!("consumer {username:?} is already defined by ConsumerCredential {owner}"),
            );
        }
        for (i, group) in spec.groups.iter().enumerate() {
            if group.is_empty() || group.contains(',') {
                issues.invalid(
                    &format!("spec.groups[{i}]"),
                    "must be non-empty without commas",
                );
            }
        }
        let (jwt_keys, jwt_secrets) = compile_jwt(consumer, secrets, &meta, &mut issues);
        let mtls = super::tls::compile_mtls(consumer, secrets, &meta, &mut issues);

        let mut keys = Vec::new();
        for (i, key_ref) in spec.api_keys.iter().enumerate() {
            let field = format!("spec.apiKeys[{i}].secretRef");
            let key_name = key_ref
                .secret_ref
                .key
                .as_deref()
                .unwrap_or(DEFAULT_API_KEY_KEY);
            match secrets.get(&meta.namespace, &key_ref.secret_ref.name, key_name) {
                SecretLookup::SecretMissing => issues.unresolved(
                    &field,
                    format!(
                        "Secret {}/{} not found",
                        meta.namespace, key_ref.secret_ref.name
                    ),
                    false,
                ),
                SecretLookup::KeyMissing => issues.unresolved(
                    &field,
                    format!(
                        "Secret {}/{} has no key {key_name:?}",
                        meta.namespace, key_ref.secret_ref.name
                    ),
                    false,
                ),
                SecretLookup::Found(value) => {
                    let trimmed = value.trim_ascii();
                    if trimmed.len() < MIN_API_KEY_LEN {
                        issues.invalid_ref(
                            &field,
                            format!(
                                "the key is shorter than {MIN_API_KEY_LEN} bytes and is ignored"
                            ),
                        );
                    } else {
                        let hash = hash_api_key(trimmed);
                        match key_owner.get(&(meta.namespace.clone(), hash.clone())) {
                            Some(owner) if owner != &id => issues.conflicted(
                                &field,
                                format!(
                                    "this API key is already used by consumer {} of this namespace",
                                    owner.split_once('/').map_or(owner.as_str(), |(_, n)| n)
                                ),
                            ),
                            _ => keys.push(hash),
                        }
                    }
                }
            }
        }

        let budget = budgets.of(&meta.namespace);
        if issues.is_accepted() {
            let count = accepted_in.get(&meta.namespace).copied().unwrap_or(0);
            let bytes = section
                .bytes_by_namespace
                .get(&meta.namespace)
                .copied()
                .unwrap_or(0);
            // About what this consumer adds to the config: its spec and its key digests.
            // Measured only where a byte budget applies (100k consumers take ~0.1 s).
            let size = if budget.config_bytes.is_some() {
                super::budgets::json_size(&consumer.spec) + keys.len() * 100
            } else {
                0
            };
            if budget.consumers.is_some_and(|max| count >= max) {
                issues.refused(
                    crate::Reason::QuotaExceeded,
                    "metadata.namespace",
                    format!(
                        "namespace {} already has its budget of {} consumers; the newest consumers past it are not served",
                        meta.namespace,
                        budget.consumers.unwrap_or_default()
                    ),
                );
            } else if budget.config_bytes.is_some_and(|max| bytes + size > max) {
                issues.refused(
                    crate::Reason::QuotaExceeded,
                    "spec",
                    format!(
                        "this consumer needs about {size} bytes of config and namespace {} has {} of its {} bytes left",
                        meta.namespace,
                        budget.config_bytes.unwrap_or_default().saturating_sub(bytes),
                        budget.config_bytes.unwrap_or_default()
                    ),
                );
            } else {
                *accepted_in.entry(meta.namespace.clone()).or_insert(0) += 1;
                *section
                    .bytes_by_namespace
                    .entry(meta.namespace.clone())
                    .or_insert(0) += size;
            }
        }
        let accepted = issues.is_accepted();
        section
            .statuses
            .push(issues.into_status(ObjectKind::ConsumerCredential, &meta));
        if !accepted {
            continue;
        }
        names.insert(id.clone(), meta.id());
        section
            .objects
            .push(meta.object_ref(ObjectKind::ConsumerCredential));
        if spec.disabled == Some(true) {
            // Accepted, but its credentials stop working. Keys and JWT keys simply vanish;
            // client ids must be named, because introspection authenticates any active
            // token and would otherwise take one of these as a consumer-less principal.
            section
                .disabled_oauth2_client_ids
                .extend(spec.oauth2_client_ids.iter().cloned());
            continue;
        }
        for hash in keys {
            key_owner.insert((meta.namespace.clone(), hash.clone()), id.clone());
            section.api_keys.push(ApiKeyEntry {
                sha256: hash,
                consumer: id.clone(),
            });
        }
        for (key_id, algorithm, secret) in jwt_secrets {
            section.jwt_secrets.push(JwtSecretEntry {
                consumer: id.clone(),
                key_id,
                algorithm,
                secret_base64: base64::engine::general_purpose::STANDARD.encode(secret),
            });
        }
        let mut groups = spec.groups.clone();
        groups.sort();
        groups.dedup();
        let mut oauth2_client_ids = spec.oauth2_client_ids.clone();
        oauth2_client_ids.sort();
        oauth2_client_ids.dedup();
        section.consumers.push(ConsumerConfig {
            id,
            namespace: meta.namespace.clone(),
            username,
            groups,
            jwt_keys,
            oauth2_client_ids,
            mtls,
        });
    }
    section.consumers.sort_by(|a, b| a.id.cmp(&b.id));
    section.api_keys.sort();
    section.api_keys.dedup();
    section.jwt_secrets.sort();
    section.disabled_oauth2_client_ids.sort();
    section.disabled_oauth2_client_ids.dedup();
    section.objects.sort();
    section
        .statuses
        .sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    let mut hasher = Sha256::new();
    super::generation::hash_json(&mut hasher, &section.consumers);
    super::generation::hash_json(&mut hasher, &section.api_keys);
    super::generation::hash_json(&mut hasher, &section.jwt_secrets);
    if !section.disabled_oauth2_client_ids.is_empty() {
        // Only when present, so generations of configs without disabled clients stay put.
        super::generation::hash_json(&mut hasher, &section.disabled_oauth2_client_ids);
    }
    super::generation::hash_json(&mut hasher, &section.objects);
    section.digest = hasher.finalize().into();
    section
}

/// The Secrets (namespace, name) that `consumers` read, sorted: everything
/// [`compile_consumers`] looks up besides the consumers themselves.
pub(crate) fn referenced_secrets(
    consumers: &[std::sync::Arc<ConsumerCredential>],
) -> Vec<(String, String)> {
    let mut names = std::collections::BTreeSet::new();
    for consumer in consumers {
        let namespace = consumer.metadata.namespace.as_deref().unwrap_or("default");
        let api_keys = consumer.spec.api_keys.iter().map(|k| &k.secret_ref.name);
        let jwt = consumer
            .spec
            .jwt
            .iter()
            .filter_map(|j| j.secret_ref.as_ref().map(|r| &r.name));
        let mtls_ca = consumer
            .spec
            .mtls
            .iter()
            .filter_map(|m| m.ca_secret_ref.as_ref().map(|r| &r.name));
        for name in api_keys.chain(jwt).chain(mtls_ca) {
            names.insert((namespace, name.as_str()));
        }
    }
    names
        .into_iter()
        .map(|(namespace, name)| (namespace.to_string(), name.to_string()))
        .collect()
}

type HmacKey = (String, String, Vec<u8>);

/// Public keys go to the config, HMAC secrets to the Secret half; an entry that cannot be
/// used makes the whole credential invalid rather than half-working.
fn compile_jwt(
    consumer: &ConsumerCredential,
    secrets: &SecretIndex<'_>,
    meta: &Meta,
    issues: &mut Issues,
) -> (Vec<JwtPublicKeyConfig>, Vec<HmacKey>) {
    let mut public = Vec::new();
    let mut hmac = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    for (i, jwt) in consumer.spec.jwt.iter().enumerate() {
        let field = format!("spec.jwt[{i}]");
        if jwt.key_id.is_empty() {
            issues.invalid(&format!("{field}.keyId"), "must not be empty");
        } else if !seen.insert(jwt.key_id.clone()) {
            issues.invalid(&format!("{field}.keyId"), "is listed twice");
        }
        if !JWT_ALGORITHMS.contains(&jwt.algorithm.as_str()) {
            issues.invalid(
                &format!("{field}.algorithm"),
                format!(
                    "{:?} is not one of {}",
                    jwt.algorithm,
                    JWT_ALGORITHMS.join(", ")
                ),
            );
            continue;
        }
        if jwt.algorithm.starts_with("HS") {
            let Some(r) = &jwt.secret_ref else {
                issues.invalid(&format!("{field}.secretRef"), "required for HS* algorithms");
                continue;
            };
            let key = r.key.as_deref().unwrap_or("secret");
            match secrets.get(&meta.namespace, &r.name, key) {
                SecretLookup::SecretMissing => issues.unresolved(
                    &format!("{field}.secretRef"),
                    format!("Secret {}/{} not found", meta.namespace, r.name),
                    false,
                ),
                SecretLookup::KeyMissing => issues.unresolved(
                    &format!("{field}.secretRef"),
                    format!("Secret {}/{} has no key {key:?}", meta.namespace, r.name),
                    false,
                ),
                SecretLookup::Found(value) if value.len() < MIN_HMAC_SECRET_LEN => {
                    // RFC 7518 §3.2: an HMAC key must be at least as long as the hash.
                    issues.invalid_ref(
                        &format!("{field}.secretRef"),
                        format!(
                            "the secret is shorter than {MIN_HMAC_SECRET_LEN} bytes and is ignored"
                        ),
                    )
                }
                SecretLookup::Found(value) => {
                    hmac.push((jwt.key_id.clone(), jwt.algorithm.clone(), value))
                }
            }
        } else {
            match jwt.public_key.as_deref().map(str::trim) {
                Some(pem)
                    if pem.starts_with("-----BEGIN PUBLIC KEY-----")
                        && pem.ends_with("-----END PUBLIC KEY-----") =>
                {
                    public.push(JwtPublicKeyConfig {
                        key_id: jwt.key_id.clone(),
                        algorithm: jwt.algorithm.clone(),
                        public_key: pem.to_string(),
                    })
                }
                _ => issues.invalid(
                    &format!("{field}.publicKey"),
                    "a PEM public key (-----BEGIN PUBLIC KEY-----) is required",
                ),
            }
        }
    }
    public.sort();
    (public, hmac)
}
