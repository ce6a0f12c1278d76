//! Per-kind access to the four kinds that carry a status: where the reflector keeps them,
//! which part of a plan's target names them, and their common status fields. A new kind
//! with a status gets one `impl StatusKind` here.

use std::fmt::{self, Debug};

use k8s_openapi::NamespaceResourceScope;
use kube::runtime::reflector::{self, Store};
use kube::Resource;
use portcullis_crds::{
    ApiRoute, ConsumerCredential, ObjectStatusFields, RateLimitPolicy, WafPolicy,
};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::plan::StoreKey;
use crate::watch::Stores;

/// The four kinds that carry a status.
pub(crate) trait StatusKind:
    Resource<DynamicType = (), Scope = NamespaceResourceScope>
    + Clone
    + DeserializeOwned
    + Serialize
    + Debug
    + Send
    + Sync
    + 'static
{
    fn store(stores: &Stores) -> &Store<Self>;
    fn key(target: &StoreKey) -> Option<&reflector::ObjectRef<Self>>;
    fn common(&self) -> Option<&ObjectStatusFields>;
    /// (shown, desired) `status.credentials`; only ConsumerCredentials have one.
    fn credentials(&self) -> Option<(Option<&str>, CredentialSummary<'_>)> {
        None
    }
    /// Routes carry the proxies' enforcement counters.
    const ENFORCEMENT: bool = false;
}

impl StatusKind for ApiRoute {
    fn store(stores: &Stores) -> &Store<Self> {
        &stores.routes
    }
    fn key(target: &StoreKey) -> Option<&reflector::ObjectRef<Self>> {
        match target {
            StoreKey::Route(key) => Some(key),
            _ => None,
        }
    }
    fn common(&self) -> Option<&ObjectStatusFields> {
        self.status.as_ref()
    }
    const ENFORCEMENT: bool = true;
}

impl StatusKind for ConsumerCredential {
    fn store(stores: &Stores) -> &Store<Self> {
        &stores.consumers
    }
    fn key(target: &StoreKey) -> Option<&reflector::ObjectRef<Self>> {
        match target {
            StoreKey::Consumer(key) => Some(key),
            _ => None,
        }
    }
    fn common(&self) -> Option<&ObjectStatusFields> {
        self.status.as_ref().map(|s| &s.common)
    }
    fn credentials(&self) -> Option<(Option<&str>, CredentialSummary<'_>)> {
        let shown = self.status.as_ref().and_then(|s| s.credentials.as_deref());
        Some((shown, CredentialSummary(self)))
    }
}

impl StatusKind for RateLimitPolicy {
    fn store(stores: &Stores) -> &Store<Self> {
        &stores.rate_limits
    }
    fn key(target: &StoreKey) -> Option<&reflector::ObjectRef<Self>> {
        match target {
            StoreKey::RateLimit(key) => Some(key),
            _ => None,
        }
    }
    fn common(&self) -> Option<&ObjectStatusFields> {
        self.status.as_ref()
    }
}

impl StatusKind for WafPolicy {
    fn store(stores: &Stores) -> &Store<Self> {
        &stores.wafs
    }
    fn key(target: &StoreKey) -> Option<&reflector::ObjectRef<Self>> {
        match target {
            StoreKey::Waf(key) => Some(key),
            _ => None,
        }
    }
    fn common(&self) -> Option<&ObjectStatusFields> {
        self.status.as_ref()
    }
}

/// `apiKeys:2,jwt:1`: what `kubectl get consumercredentials` shows.
pub(crate) struct CredentialSummary<'a>(pub(crate) &'a ConsumerCredential);

impl fmt::Display for CredentialSummary<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let spec = &self.0.spec;
        let mtls = spec.mtls.as_ref().map_or(0, |m| {
            m.subjects.len() + m.sans.len() + m.fingerprints_sha256.len()
        });
        let parts = [
            ("apiKeys", spec.api_keys.len()),
            ("jwt", spec.jwt.len()),
            ("mtls", mtls),
            ("oauth2", spec.oauth2_client_ids.len()),
        ];
        let mut any = false;
        for (name, n) in parts.into_iter().filter(|(_, n)| *n > 0) {
            if any {
                f.write_str(",")?;
            }
            write!(f, "{name}:{n}")?;
            any = true;
        }
        if !any {
            f.write_str("none")?;
        }
        Ok(())
    }
}
