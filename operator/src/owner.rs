//! Ownership of the objects the operator creates in its namespace: the config shards, the
//! config signing key, the webhook certificate Secret and the leader Lease. They carry an ownerReference to one anchor
//! object that whoever installed the operator created (the Helm chart's ConfigMap), so that
//! deleting the anchor (`helm uninstall`) lets Kubernetes' garbage collector delete them too,
//! instead of leaving the compiled config and the webhook's private key behind.

use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::{Api, Client};

#[derive(Debug, thiserror::Error)]
pub enum OwnerError {
    #[error("owner ConfigMap {namespace}/{name} not found (--owner-configmap names an object the installer creates)")]
    NotFound { namespace: String, name: String },
    #[error("reading owner ConfigMap {namespace}/{name}: {source}")]
    Read {
        namespace: String,
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("owner ConfigMap {namespace}/{name} has no uid")]
    NoUid { namespace: String, name: String },
}

/// The ownerReference to ConfigMap `name` in `namespace`. Not a controller reference and
/// without blockOwnerDeletion: the anchor's deletion must never wait on the operator's objects.
pub async fn resolve(
    client: &Client,
    namespace: &str,
    name: &str,
) -> Result<OwnerReference, OwnerError> {
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
    let (ns, n) = (namespace.to_string(), name.to_string());
    let anchor = api
        .get_opt(name)
        .await
        .map_err(|source| OwnerError::Read {
            namespace: ns.clone(),
            name: n.clone(),
            source,
        })?
        .ok_or_else(|| OwnerError::NotFound {
            namespace: ns.clone(),
            name: n.clone(),
        })?;
    let uid = anchor.metadata.uid.ok_or(OwnerError::NoUid {
        namespace: ns,
        name: n.clone(),
    })?;
    Ok(OwnerReference {
        api_version: "v1".into(),
        kind: "ConfigMap".into(),
        name: n,
        uid,
        controller: None,
        block_owner_deletion: None,
    })
}

/// Adds `owner` (when there is one) to an object about to be created or applied.
pub fn attach(meta: &mut ObjectMeta, owner: Option<&OwnerReference>) {
    if let Some(owner) = owner {
        let refs = meta.owner_references.get_or_insert_with(Vec::new);
        if !refs.iter().any(|r| r.uid == owner.uid) {
            refs.push(owner.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn owner(uid: &str) -> OwnerReference {
        OwnerReference {
            api_version: "v1".into(),
            kind: "ConfigMap".into(),
            name: "anchor".into(),
            uid: uid.into(),
            controller: None,
            block_owner_deletion: None,
        }
    }

    #[test]
    fn attaches_once_and_keeps_other_owners() {
        let mut meta = ObjectMeta::default();
        attach(&mut meta, None);
        assert_eq!(meta.owner_references, None);
        attach(&mut meta, Some(&owner("a")));
        attach(&mut meta, Some(&owner("a")));
        attach(&mut meta, Some(&owner("b")));
        let uids: Vec<_> = meta
            .owner_references
            .unwrap()
            .into_iter()
            .map(|r| r.uid)
            .collect();
        assert_eq!(uids, ["a", "b"]);
    }
}
