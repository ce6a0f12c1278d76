//! Authentication (API keys) and authorization (consumer groups).
//!
//! Keys are never stored: the config carries SHA-256 digests, indexed once per config load.
//! A presented key is hashed and looked up by digest; the final comparison of the digests is
//! constant time so a lookup hit cannot be timed byte by byte.

use std::collections::HashMap;

use http::request::Parts;
use http::{HeaderName, HeaderValue, Uri};
use portcullis_compiler::config::{
    AuthMethodConfig, AuthenticationConfig, AuthorizationConfig, ConsumerConfig, SecretConfig,
};
use sha2::{Digest, Sha256};

use crate::router::query_pairs;

pub const DEFAULT_API_KEY_HEADER: &str = "x-api-key";
pub const ANONYMOUS: &str = "anonymous";

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("missing credentials")]
    MissingCredentials,
    #[error("invalid credentials")]
    InvalidCredentials,
    #[error("consumer is not allowed")]
    GroupNotAllowed,
    #[error("consumer is not allowed")]
    GroupDenied,
}

impl AuthError {
    pub fn reason(&self) -> &'static str {
        match self {
            AuthError::MissingCredentials => "missing_credentials",
            AuthError::InvalidCredentials => "invalid_credentials",
            AuthError::GroupNotAllowed => "group_not_allowed",
            AuthError::GroupDenied => "group_denied",
        }
    }

    pub fn is_authentication(&self) -> bool {
        matches!(
            self,
            AuthError::MissingCredentials | AuthError::InvalidCredentials
        )
    }
}

/// A consumer with its upstream identity headers prepared at load time.
pub struct Consumer {
    pub id: String,
    pub username: String,
    pub groups: Vec<String>,
    pub id_header: HeaderValue,
    pub username_header: HeaderValue,
    pub groups_header: HeaderValue,
}

#[derive(Default)]
pub struct KeyStore {
    by_digest: HashMap<[u8; 32], usize>,
    consumers: Vec<Consumer>,
}

#[derive(Debug, thiserror::Error)]
#[error("consumer {consumer}: {message}")]
pub struct KeyStoreError {
    consumer: String,
    message: &'static str,
}

impl KeyStore {
    pub fn build(
        consumers: &[ConsumerConfig],
        secrets: &SecretConfig,
    ) -> Result<Self, KeyStoreError> {
        let mut index = HashMap::new();
        let mut built = Vec::with_capacity(consumers.len());
        for c in consumers {
            let header = |s: &str| {
                HeaderValue::from_str(s).map_err(|_| KeyStoreError {
                    consumer: c.id.clone(),
                    message: "name or group is not a valid header value",
                })
            };
            index.insert(c.id.as_str(), built.len());
            built.push(Consumer {
                id: c.id.clone(),
                username: c.username.clone(),
                groups: c.groups.clone(),
                id_header: header(&c.id)?,
                username_header: header(&c.username)?,
                groups_header: header(&c.groups.join(","))?,
            });
        }
        let mut by_digest = HashMap::with_capacity(secrets.api_keys.len());
        for entry in &secrets.api_keys {
            // Keys of consumers that are not in the config (disabled) simply do not resolve.
            let Some(&consumer) = index.get(entry.consumer.as_str()) else {
                continue;
            };
            let mut digest = [0u8; 32];
            if hex::decode_to_slice(&entry.sha256, &mut digest).is_err() {
                return Err(KeyStoreError {
                    consumer: entry.consumer.clone(),
                    message: "api key digest is not 64 hex characters",
                });
            }
            by_digest.insert(digest, consumer);
        }
        Ok(KeyStore {
            by_digest,
            consumers: built,
        })
    }

    pub fn consumer(&self, index: usize) -> Option<&Consumer> {
        self.consumers.get(index)
    }

    pub fn consumer_count(&self) -> usize {
        self.consumers.len()
    }

    fn lookup(&self, key: &[u8]) -> Option<usize> {
        let digest: [u8; 32] = Sha256::digest(key).into();
        let (stored, &consumer) = self.by_digest.get_key_value(&digest)?;
        constant_time_eq(stored, &digest).then_some(consumer)
    }
}

fn constant_time_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Who is calling, as far as the route's authentication is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Identity {
    /// The route has no authentication.
    Unauthenticated,
    /// `optional: true` and no valid credential was presented.
    Anonymous,
    /// Index into the [`KeyStore`]'s consumers.
    Consumer(usize),
}

pub struct CompiledAuth {
    config: AuthenticationConfig,
    header: HeaderName,
}

impl CompiledAuth {
    pub fn new(config: &AuthenticationConfig) -> Self {
        let header = config
            .api_key_header
            .as_deref()
            .and_then(|h| HeaderName::from_bytes(h.as_bytes()).ok())
            .unwrap_or(HeaderName::from_static(DEFAULT_API_KEY_HEADER));
        CompiledAuth {
            config: config.clone(),
            header,
        }
    }

    /// Authenticates, then removes the credential when `hide_credentials` is set.
    pub fn authenticate(&self, store: &KeyStore, parts: &mut Parts) -> Result<Identity, AuthError> {
        let result = self.check(store, parts);
        if self.config.hide_credentials {
            self.hide(parts);
        }
        match result {
            Ok(consumer) => Ok(Identity::Consumer(consumer)),
            // An invalid key is not "no key": optional routes still reject wrong keys, so a
            // typo is reported instead of silently downgrading the caller to anonymous.
            Err(AuthError::MissingCredentials) if self.config.optional => Ok(Identity::Anonymous),
            Err(e) => Err(e),
        }
    }

    fn check(&self, store: &KeyStore, parts: &Parts) -> Result<usize, AuthError> {
        if !self.config.methods.contains(&AuthMethodConfig::ApiKey) {
            return Err(AuthError::MissingCredentials);
        }
        if let Some(value) = parts.headers.get(&self.header) {
            if !value.is_empty() {
                return store
                    .lookup(value.as_bytes())
                    .ok_or(AuthError::InvalidCredentials);
            }
        }
        if let Some(param) = &self.config.api_key_query_param {
            if let Some((_, value)) = query_pairs(parts.uri.query()).find(|(n, _)| n == param) {
                if !value.is_empty() {
                    return store
                        .lookup(value.as_bytes())
                        .ok_or(AuthError::InvalidCredentials);
                }
            }
        }
        Err(AuthError::MissingCredentials)
    }

    fn hide(&self, parts: &mut Parts) {
        parts.headers.remove(&self.header);
        let Some(param) = &self.config.api_key_query_param else {
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
                crate::router::percent_decode(name) != param.as_str()
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

pub fn authorize(
    config: &AuthorizationConfig,
    store: &KeyStore,
    identity: Identity,
) -> Result<(), AuthError> {
    let groups: &[String] = match identity {
        Identity::Consumer(i) => store.consumer(i).map_or(&[], |c| c.groups.as_slice()),
        Identity::Anonymous | Identity::Unauthenticated => &[],
    };
    if groups.iter().any(|g| config.deny_groups.contains(g)) {
        return Err(AuthError::GroupDenied);
    }
    if !config.allow_groups.is_empty() && !groups.iter().any(|g| config.allow_groups.contains(g)) {
        return Err(AuthError::GroupNotAllowed);
    }
    Ok(())
}
