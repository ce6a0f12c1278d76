//! Writes the compiled config as ConfigMap and Secret shards (server-side apply, one field
//! manager) and removes shards a smaller config no longer needs.

use futures_util::future::try_join_all;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use kube::Client;
use portcullis_compiler::delivery::{Encoded, Shard, CONFIG_LABEL, SHARD_ANNOTATION};

pub const FIELD_MANAGER: &str = "portcullis-operator";

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("writing {object}: {source}")]
    Write {
        object: String,
        #[source]
        source: kube::Error,
    },
}

/// The shard's object (as [`Shard::config_map`] / [`Shard::secret`] build it) in the
/// operator's namespace, labelled as managed by it and owned by `owner` (see [`crate::owner`]).
fn owned<K: kube::Resource>(mut object: K, namespace: &str, owner: Option<&OwnerReference>) -> K {
    let meta = object.meta_mut();
    meta.namespace = Some(namespace.to_string());
    crate::owner::attach(meta, owner);
    meta.labels.get_or_insert_with(Default::default).insert(
        "app.kubernetes.io/managed-by".to_string(),
        FIELD_MANAGER.to_string(),
    );
    object
}

/// Secret half first: a proxy that sees the new ConfigMap half already finds its secrets.
/// The shards of one half go out together (a 5.7 MB config is 7 objects; one after the
/// other they took several round trips of a busy API server).
pub async fn publish(
    client: &Client,
    namespace: &str,
    encoded: &Encoded,
    owner: Option<&OwnerReference>,
) -> Result<(), PublishError> {
    let params = PatchParams::apply(FIELD_MANAGER).force();
    let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
    try_join_all(encoded.secret_shards.iter().map(|shard| {
        let object = owned(shard.secret(), namespace, owner);
        let (secrets, params) = (&secrets, &params);
        async move {
            secrets
                .patch(&shard.object_name(), params, &Patch::Apply(&object))
                .await
                .map_err(|source| PublishError::Write {
                    object: format!("Secret {}", shard.object_name()),
                    source,
                })
        }
    }))
    .await?;
    let maps: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
    try_join_all(encoded.config_shards.iter().map(|shard| {
        let object = owned(shard.config_map(), namespace, owner);
        let (maps, params) = (&maps, &params);
        async move {
            maps.patch(&shard.object_name(), params, &Patch::Apply(&object))
                .await
                .map_err(|source| PublishError::Write {
                    object: format!("ConfigMap {}", shard.object_name()),
                    source,
                })
        }
    }))
    .await?;
    remove_stale(&maps, encoded.config_shards.len()).await;
    remove_stale(&secrets, encoded.secret_shards.len()).await;
    Ok(())
}

/// Deletes shards with an index past `count`; failures only leave unused objects behind.
async fn remove_stale<K>(api: &Api<K>, count: usize)
where
    K: kube::Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let Ok(list) = api
        .list_metadata(&ListParams::default().labels(&format!("{CONFIG_LABEL}=true")))
        .await
    else {
        return;
    };
    for item in list.items {
        let stale = item
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(SHARD_ANNOTATION))
            .and_then(|s| Shard::parse_annotation(s).ok())
            .is_none_or(|(index, _)| index >= count);
        if let (true, Some(name)) = (stale, item.metadata.name.as_deref()) {
            if let Err(e) = api.delete(name, &DeleteParams::default()).await {
                tracing::warn!(object = name, error = %e, "cannot delete a stale config shard");
            }
        }
    }
}
