//! Consumers and API keys.
//!
//! Keys are never stored: the config carries SHA-256 digests, indexed once per config load.
//! A presented key is hashed and looked up by digest; the final comparison of the digests is
//! constant time so a lookup hit cannot be timed byte by byte.
//!
//! Every credential index is per namespace (docs/multi-tenancy.md): a route looks up
//! credentials only in its [`ConsumerScope`] (its own namespace, then the namespaces its
//! `authentication.consumerNamespaces` names), so another namespace's consumer never
//! authenticates on it, and two namespaces may use the same key, key id, client id or
//! certificate identity without making each other's ambiguous.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;

use base64::Engine;
use jsonwebtoken::{Algorithm, DecodingKey};

use http::request::Parts;
use http::{HeaderName, HeaderValue, Uri};
use portcullis_compiler::config::{AuthenticationConfig, ConsumerConfig, SecretConfig};
use sha2::{Digest, Sha256};

use super::jwks::{KeyFamily, VerifyKey};
use crate::router::query_pairs;

pub const DEFAULT_API_KEY_HEADER: &str = "x-api-key";
pub const ANONYMOUS: &str = "anonymous";

/// The namespaces whose consumers a route accepts, in lookup order: the route's own, then
/// the ones it shares with. Built once per config.
#[derive(Debug, Clone)]
pub struct ConsumerScope(Box<[Box<str>]>);

impl ConsumerScope {
    pub fn new(own: &str, shared: &[String]) -> Self {
        ConsumerScope(
            std::iter::once(own)
                .chain(shared.iter().map(String::as_str).filter(|n| *n != own))
                .map(Box::from)
                .collect(),
        )
    }

    pub fn contains(&self, namespace: &str) -> bool {
        self.0.iter().any(|n| &**n == namespace)
    }

    fn own(&self) -> &str {
        self.0.first().map_or("", |n| n)
    }
}

/// One namespace's credentials.
#[derive(Default)]
struct NamespaceKeys {
    by_digest: HashMap<[u8; 32], usize>,
    jwt_keys: HashMap<String, ConsumerJwtKey>,
    client_ids: HashMap<String, usize>,
    mtls: super::mtls::MtlsIndex,
}

/// A consumer with its upstream identity headers prepared at load time.
pub struct Consumer {
    pub id: String,
    pub namespace: String,
    pub username: String,
    pub groups: Vec<String>,
    pub id_header: HeaderValue,
    pub username_header: HeaderValue,
    pub groups_header: HeaderValue,
}

/// A consumer's JWT key (Kong style), selected by the token's `keyClaim`.
pub struct ConsumerJwtKey {
    pub consumer: usize,
    pub key: Arc<VerifyKey>,
}

#[derive(Default)]
pub struct KeyStore {
    namespaces: HashMap<String, NamespaceKeys>,
    consumers: Vec<Consumer>,
    /// Positions in `consumers` sorted by id: the by-id index without a second copy of
    /// every id and a hash table of them (~8 MB at 100k consumers, held twice while a
    /// reload builds the next config next to the running one).
    by_id: Vec<usize>,
    /// `oauth2ClientIds` of disabled consumers that no enabled consumer claims.
    disabled_client_ids: std::collections::HashSet<String>,
}

#[derive(Debug, thiserror::Error)]
#[error("consumer {consumer}: {message}")]
pub struct KeyStoreError {
    consumer: String,
    message: &'static str,
}

/// Positions of `consumers` sorted by id, equal ids by position.
fn sorted_by_id(consumers: &[Consumer]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..consumers.len()).collect();
    // The compiler delivers consumers sorted by id, which this sort recognizes in one pass.
    order.sort_by(|&a, &b| consumers[a].id.cmp(&consumers[b].id).then(a.cmp(&b)));
    order
}

/// The consumer with this id; of several with the same id the last, as a map would keep.
fn find_by_id(consumers: &[Consumer], order: &[usize], id: &str) -> Option<usize> {
    let end = order.partition_point(|&i| consumers.get(i).is_some_and(|c| c.id.as_str() <= id));
    let &i = order.get(end.checked_sub(1)?)?;
    consumers.get(i).is_some_and(|c| c.id == id).then_some(i)
}

impl KeyStore {
    pub fn build(
        consumers: &[ConsumerConfig],
        secrets: &SecretConfig,
    ) -> Result<Self, KeyStoreError> {
        let mut built = Vec::with_capacity(consumers.len());
        for c in consumers {
            let header = |s: &str| {
                HeaderValue::from_str(s).map_err(|_| KeyStoreError {
                    consumer: c.id.clone(),
                    message: "name or group is not a valid header value",
                })
            };
            built.push(Consumer {
                id: c.id.clone(),
                namespace: c.namespace.clone(),
                username: c.username.clone(),
                groups: c.groups.clone(),
                id_header: header(&c.id)?,
                username_header: header(&c.username)?,
                groups_header: header(&c.groups.join(","))?,
            });
        }
        let by_id = sorted_by_id(&built);
        let mut namespaces: HashMap<String, NamespaceKeys> = HashMap::new();
        for entry in &secrets.api_keys {
            // Keys of consumers that are not in the config (disabled) simply do not resolve.
            let Some(consumer) = find_by_id(&built, &by_id, &entry.consumer) else {
                continue;
            };
            let mut digest = [0u8; 32];
            if hex::decode_to_slice(&entry.sha256, &mut digest).is_err() {
                return Err(KeyStoreError {
                    consumer: entry.consumer.clone(),
                    message: "api key digest is not 64 hex characters",
                });
            }
            namespaces
                .entry(built[consumer].namespace.clone())
                .or_default()
                .by_digest
                .insert(digest, consumer);
        }
        let mut jwt_keys: HashMap<(String, String), ConsumerJwtKey> = HashMap::new();
        let mut ambiguous = Vec::new();
        let mut add_key = |id: &str, consumer: usize, key: VerifyKey| {
            let id = (built[consumer].namespace.clone(), id.to_string());
            if jwt_keys
                .insert(
                    id.clone(),
                    ConsumerJwtKey {
                        consumer,
                        key: Arc::new(key),
                    },
                )
                .is_some_and(|old| old.consumer != consumer)
            {
                ambiguous.push(id);
            }
        };
        for (i, c) in consumers.iter().enumerate() {
            for k in &c.jwt_keys {
                match public_key(&k.algorithm, &k.public_key) {
                    Some(key) => add_key(&k.key_id, i, key),
                    // Fails closed for this key only: one bad PEM must not refuse the config.
                    None => {
                        tracing::warn!(consumer = %c.id, key_id = %k.key_id, "unusable JWT public key ignored")
                    }
                }
            }
        }
        for entry in &secrets.jwt_secrets {
            let Some(consumer) = find_by_id(&built, &by_id, &entry.consumer) else {
                continue;
            };
            let alg = entry.algorithm.parse::<Algorithm>().ok();
            let secret = base64::engine::general_purpose::STANDARD
                .decode(&entry.secret_base64)
                .ok();
            if let (Some(alg), Some(secret)) = (alg, secret) {
                add_key(
                    &entry.key_id,
                    consumer,
                    VerifyKey {
                        kid: Some(entry.key_id.clone()),
                        alg: Some(alg),
                        family: KeyFamily::Hmac,
                        key: DecodingKey::from_secret(&secret),
                    },
                );
            }
        }
        // Two consumers of one namespace claiming one key id would make the identity a coin
        // toss: neither wins.
        for id in ambiguous {
            tracing::warn!(namespace = %id.0, key_id = %id.1, "JWT key id used by several consumers of one namespace; ignored");
            jwt_keys.remove(&id);
        }
        for ((namespace, key_id), key) in jwt_keys {
            namespaces
                .entry(namespace)
                .or_default()
                .jwt_keys
                .insert(key_id, key);
        }
        for (i, c) in consumers.iter().enumerate() {
            let keys = namespaces.entry(c.namespace.clone()).or_default();
            for client in &c.oauth2_client_ids {
                keys.client_ids.entry(client.clone()).or_insert(i);
            }
        }
        let disabled_client_ids = secrets
            .disabled_oauth2_client_ids
            .iter()
            .filter(|id| {
                !namespaces
                    .values()
                    .any(|n| n.client_ids.contains_key(id.as_str()))
            })
            .cloned()
            .collect();
        let mut by_namespace: HashMap<&str, Vec<(usize, &ConsumerConfig)>> = HashMap::new();
        for (i, c) in consumers.iter().enumerate() {
            by_namespace.entry(&c.namespace).or_default().push((i, c));
        }
        for (namespace, members) in by_namespace {
            namespaces.entry(namespace.to_string()).or_default().mtls =
                super::mtls::MtlsIndex::build(&members);
        }
        Ok(KeyStore {
            namespaces,
            consumers: built,
            by_id,
            disabled_client_ids,
        })
    }

    /// The first of the scope's namespaces (in order) for which `find` finds a consumer.
    fn in_scope<T>(
        &self,
        scope: &ConsumerScope,
        find: impl Fn(&NamespaceKeys) -> Option<T>,
    ) -> Option<T> {
        scope
            .0
            .iter()
            .find_map(|ns| self.namespaces.get(&**ns).and_then(&find))
    }

    pub fn jwt_key(&self, scope: &ConsumerScope, key_id: &str) -> Option<&ConsumerJwtKey> {
        scope
            .0
            .iter()
            .find_map(|ns| self.namespaces.get(&**ns)?.jwt_keys.get(key_id))
    }

    pub fn consumer_by_client_id(&self, scope: &ConsumerScope, client_id: &str) -> Option<usize> {
        self.in_scope(scope, |n| n.client_ids.get(client_id).copied())
    }

    /// The consumer a verified client certificate identifies, within the scope.
    pub fn mtls_lookup(
        &self,
        scope: &ConsumerScope,
        peer: &crate::tls::PeerCertificate,
    ) -> Option<usize> {
        self.in_scope(scope, |n| n.mtls.lookup(peer))
    }

    /// Whether this OAuth2 client belongs to a disabled consumer (and to no enabled one).
    pub fn is_disabled_client_id(&self, client_id: &str) -> bool {
        !self.disabled_client_ids.is_empty() && self.disabled_client_ids.contains(client_id)
    }

    /// A consumer named by a token: a full id (`namespace/name`) of a namespace in the
    /// scope, or a name in the route's own namespace.
    pub fn consumer_by_name(&self, scope: &ConsumerScope, name: &str) -> Option<usize> {
        if let Some((namespace, _)) = name.split_once('/') {
            if !scope.contains(namespace) {
                return None;
            }
            return find_by_id(&self.consumers, &self.by_id, name);
        }
        find_by_id(
            &self.consumers,
            &self.by_id,
            &format!("{}/{name}", scope.own()),
        )
    }

    pub fn consumer(&self, index: usize) -> Option<&Consumer> {
        self.consumers.get(index)
    }

    pub fn consumer_count(&self) -> usize {
        self.consumers.len()
    }

    pub fn lookup(&self, scope: &ConsumerScope, key: &[u8]) -> Option<usize> {
        let digest: [u8; 32] = Sha256::digest(key).into();
        self.in_scope(scope, |n| {
            let (stored, &consumer) = n.by_digest.get_key_value(&digest)?;
            constant_time_eq(stored, &digest).then_some(consumer)
        })
    }
}

fn constant_time_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Where a route reads API keys from.
pub struct ApiKeySource {
    header: HeaderName,
    query_param: Option<String>,
}

impl ApiKeySource {
    pub fn new(config: &AuthenticationConfig) -> Self {
        let header = config
            .api_key_header
            .as_deref()
            .and_then(|h| HeaderName::from_bytes(h.as_bytes()).ok())
            .unwrap_or(HeaderName::from_static(DEFAULT_API_KEY_HEADER));
        ApiKeySource {
            header,
            query_param: config.api_key_query_param.clone(),
        }
    }

    /// The presented key, if any (an empty value counts as absent).
    pub fn find<'a>(&self, parts: &'a Parts) -> Option<Cow<'a, [u8]>> {
        if let Some(value) = parts.headers.get(&self.header) {
            if !value.is_empty() {
                return Some(Cow::Borrowed(value.as_bytes()));
            }
        }
        let param = self.query_param.as_ref()?;
        let (_, value) = query_pairs(parts.uri.query()).find(|(n, _)| n == param)?;
        match value {
            _ if value.is_empty() => None,
            Cow::Borrowed(v) => Some(Cow::Borrowed(v.as_bytes())),
            Cow::Owned(v) => Some(Cow::Owned(v.into_bytes())),
        }
    }

    pub fn hide(&self, parts: &mut Parts) {
        parts.headers.remove(&self.header);
        let Some(param) = &self.query_param else {
            return;
        };
        let Some(query) = parts.uri.query() else {
            return;
        };
        if !query_pairs(Some(query)).any(|(n, _)| n == param.as_str()) {
            return;
        }
        let kept: Vec<&str> = query
            .split('&')
            .filter(|pair| {
                let name = pair.split_once('=').map_or(*pair, |(n, _)| n);
                crate::router::form_decode(name) != param.as_str()
            })
            .collect();
        let path = parts.uri.path();
        let pq = if kept.is_empty() {
            path.to_string()
        } else {
            format!("{path}?{}", kept.join("&"))
        };
        let mut uri_parts = parts.uri.clone().into_parts();
        if let Ok(pq) = pq.parse() {
            uri_parts.path_and_query = Some(pq);
            if let Ok(uri) = Uri::from_parts(uri_parts) {
                parts.uri = uri;
            }
        }
    }
}

fn public_key(algorithm: &str, pem: &str) -> Option<VerifyKey> {
    let alg: Algorithm = algorithm.parse().ok()?;
    let (family, key) = match alg {
        Algorithm::RS256
        | Algorithm::RS384
        | Algorithm::RS512
        | Algorithm::PS256
        | Algorithm::PS384
        | Algorithm::PS512 => (
            KeyFamily::Rsa,
            DecodingKey::from_rsa_pem(pem.as_bytes()).ok()?,
        ),
        Algorithm::ES256 => (
            KeyFamily::EcP256,
            DecodingKey::from_ec_pem(pem.as_bytes()).ok()?,
        ),
        Algorithm::ES384 => (
            KeyFamily::EcP384,
            DecodingKey::from_ec_pem(pem.as_bytes()).ok()?,
        ),
        Algorithm::EdDSA => (
            KeyFamily::Ed25519,
            DecodingKey::from_ed_pem(pem.as_bytes()).ok()?,
        ),
        Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => return None,
    };
    Some(VerifyKey {
        kid: None,
        alg: Some(alg),
        family,
        key,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use portcullis_compiler::config::ApiKeyEntry;

    fn consumer(id: &str) -> ConsumerConfig {
        let (namespace, username) = id.split_once('/').unwrap();
        ConsumerConfig {
            id: id.into(),
            namespace: namespace.into(),
            username: username.into(),
            ..ConsumerConfig::default()
        }
    }

    #[test]
    fn consumers_are_found_by_id_and_name_in_any_delivered_order() {
        let ids = ["b/x", "a/y", "c/a", "a/b", "b/a"];
        let consumers: Vec<ConsumerConfig> = ids.iter().map(|id| consumer(id)).collect();
        let secrets = SecretConfig {
            api_keys: ids
                .iter()
                .chain(["gone/z"].iter())
                .map(|id| ApiKeyEntry {
                    sha256: portcullis_compiler::hash_api_key(format!("key-{id}").as_bytes()),
                    consumer: id.to_string(),
                })
                .collect(),
            ..SecretConfig::default()
        };
        let store = KeyStore::build(&consumers, &secrets).unwrap();
        for (i, id) in ids.iter().enumerate() {
            let (namespace, name) = id.split_once('/').unwrap();
            let own = ConsumerScope::new(namespace, &[]);
            let other = ConsumerScope::new("other", &[]);
            let sharing = ConsumerScope::new("other", &[namespace.to_string()]);
            assert_eq!(store.consumer_by_name(&own, id), Some(i), "{id}");
            assert_eq!(store.consumer_by_name(&sharing, id), Some(i), "{id}");
            assert_eq!(store.consumer_by_name(&other, id), None, "{id}");
            assert_eq!(store.consumer_by_name(&own, name), Some(i), "{id}");
            let key = format!("key-{id}");
            assert_eq!(store.lookup(&own, key.as_bytes()), Some(i));
            assert_eq!(store.lookup(&sharing, key.as_bytes()), Some(i));
            assert_eq!(store.lookup(&other, key.as_bytes()), None);
        }
        let a = ConsumerScope::new("a", &[]);
        for missing in ["a/a", "a/z", "", "/", "zz/zz", "0/0"] {
            assert_eq!(store.consumer_by_name(&a, missing), None, "{missing}");
        }
        assert_eq!(store.consumer_by_name(&a, "x"), None);
        assert_eq!(
            store.lookup(&ConsumerScope::new("gone", &[]), b"key-gone/z"),
            None
        );
    }

    #[test]
    fn one_key_in_two_namespaces_is_each_namespace_own_consumer() {
        let consumers = vec![consumer("a/x"), consumer("b/y")];
        let digest = portcullis_compiler::hash_api_key(b"the-same-key");
        let secrets = SecretConfig {
            api_keys: ["a/x", "b/y"]
                .iter()
                .map(|id| ApiKeyEntry {
                    sha256: digest.clone(),
                    consumer: id.to_string(),
                })
                .collect(),
            ..SecretConfig::default()
        };
        let store = KeyStore::build(&consumers, &secrets).unwrap();
        assert_eq!(
            store.lookup(&ConsumerScope::new("a", &[]), b"the-same-key"),
            Some(0)
        );
        assert_eq!(
            store.lookup(&ConsumerScope::new("b", &[]), b"the-same-key"),
            Some(1)
        );
        // Sharing: the route's own namespace first.
        let b_sharing_a = ConsumerScope::new("b", &["a".to_string()]);
        assert_eq!(store.lookup(&b_sharing_a, b"the-same-key"), Some(1));
        assert_eq!(
            store.lookup(&ConsumerScope::new("c", &[]), b"the-same-key"),
            None
        );
    }

    #[test]
    fn of_two_consumers_with_one_id_the_last_is_found() {
        let consumers = vec![consumer("a/x"), consumer("b/y"), consumer("a/x")];
        let store = KeyStore::build(&consumers, &SecretConfig::default()).unwrap();
        let scope = |ns: &str| ConsumerScope::new(ns, &[]);
        assert_eq!(store.consumer_by_name(&scope("a"), "x"), Some(2));
        assert_eq!(store.consumer_by_name(&scope("b"), "y"), Some(1));
    }

    #[test]
    fn jwt_key_ids_and_client_ids_are_per_namespace() {
        use portcullis_compiler::config::JwtSecretEntry;
        let mut a = consumer("a/x");
        a.oauth2_client_ids = vec!["shared-client".into()];
        let mut b = consumer("b/y");
        b.oauth2_client_ids = vec!["shared-client".into()];
        // Two consumers of one namespace claiming one key id: neither.
        let c = consumer("c/one");
        let d = consumer("c/two");
        let secret = |id: &str, kid: &str| JwtSecretEntry {
            consumer: id.into(),
            key_id: kid.into(),
            algorithm: "HS256".into(),
            secret_base64: "c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0LXNlY3JldA==".into(),
        };
        let secrets = SecretConfig {
            jwt_secrets: vec![
                secret("a/x", "kid-1"),
                secret("b/y", "kid-1"),
                secret("c/one", "kid-2"),
                secret("c/two", "kid-2"),
            ],
            ..SecretConfig::default()
        };
        let store = KeyStore::build(&[a, b, c, d], &secrets).unwrap();
        let scope = |own: &str, shared: &[&str]| {
            ConsumerScope::new(
                own,
                &shared.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
            )
        };
        // The same key id in two namespaces is each namespace's own consumer, not ambiguous.
        assert_eq!(
            store.jwt_key(&scope("a", &[]), "kid-1").map(|k| k.consumer),
            Some(0)
        );
        assert_eq!(
            store.jwt_key(&scope("b", &[]), "kid-1").map(|k| k.consumer),
            Some(1)
        );
        assert!(store.jwt_key(&scope("z", &[]), "kid-1").is_none());
        assert_eq!(
            store
                .jwt_key(&scope("z", &["b"]), "kid-1")
                .map(|k| k.consumer),
            Some(1)
        );
        assert!(store.jwt_key(&scope("c", &[]), "kid-2").is_none());
        assert_eq!(
            store.consumer_by_client_id(&scope("a", &[]), "shared-client"),
            Some(0)
        );
        assert_eq!(
            store.consumer_by_client_id(&scope("b", &["a"]), "shared-client"),
            Some(1)
        );
        assert_eq!(
            store.consumer_by_client_id(&scope("z", &[]), "shared-client"),
            None
        );
    }

    #[test]
    fn certificate_identities_are_per_namespace() {
        use portcullis_compiler::config::MtlsConfig;
        let with_subject = |id: &str| {
            let mut c = consumer(id);
            c.mtls = Some(MtlsConfig {
                subjects: vec!["CN=client".into()],
                sans: vec![],
                fingerprints_sha256: vec![],
                ca_fingerprints_sha256: vec![],
            });
            c
        };
        // ten-a claims the subject ten-b's consumer uses: ten-b's identity stays its own.
        let consumers = vec![with_subject("ten-a/intruder"), with_subject("ten-b/client")];
        let store = KeyStore::build(&consumers, &SecretConfig::default()).unwrap();
        let peer = crate::tls::PeerCertificate {
            subject: "CN=client".into(),
            sans: vec![],
            fingerprint: "00".into(),
            anchors: vec![],
        };
        let scope = |ns: &str| ConsumerScope::new(ns, &[]);
        assert_eq!(store.mtls_lookup(&scope("ten-b"), &peer), Some(1));
        assert_eq!(store.mtls_lookup(&scope("ten-a"), &peer), Some(0));
        assert_eq!(store.mtls_lookup(&scope("ten-c"), &peer), None);
    }
}
