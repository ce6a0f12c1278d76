//! Lookup of Secret values by namespace, name and key (`data` or `stringData`).

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::api::core::v1::Secret;

pub(crate) struct SecretIndex<'a> {
    by_name: BTreeMap<(&'a str, &'a str), &'a Arc<Secret>>,
}

#[derive(Debug, PartialEq, Eq)]
pub(crate) enum SecretLookup {
    SecretMissing,
    KeyMissing,
    Found(Vec<u8>),
}

impl<'a> SecretIndex<'a> {
    pub fn new(secrets: &'a [Arc<Secret>]) -> Self {
        let by_name = secrets
            .iter()
            .map(|s| {
                let ns = s.metadata.namespace.as_deref().unwrap_or("default");
                let name = s.metadata.name.as_deref().unwrap_or("");
                ((ns, name), s)
            })
            .collect();
        Self { by_name }
    }

    /// The Secret object itself, shared.
    pub fn object(&self, namespace: &str, name: &str) -> Option<&'a Arc<Secret>> {
        self.by_name.get(&(namespace, name)).copied()
    }

    pub fn get(&self, namespace: &str, name: &str, key: &str) -> SecretLookup {
        let Some(secret) = self.by_name.get(&(namespace, name)) else {
            return SecretLookup::SecretMissing;
        };
        if let Some(value) = secret.data.as_ref().and_then(|d| d.get(key)) {
            return SecretLookup::Found(value.0.clone());
        }
        if let Some(value) = secret.string_data.as_ref().and_then(|d| d.get(key)) {
            return SecretLookup::Found(value.as_bytes().to_vec());
        }
        SecretLookup::KeyMissing
    }
}
