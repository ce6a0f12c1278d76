//! Writes the compiled config as ConfigMap and Secret shards (server-side apply, one field
//! manager) and removes shards a smaller config no longer needs.

use std::collections::BTreeMap;

use futures_util::future::try_join_all;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use k8s_openapi::ByteString;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use kube::Client;
use portcullis_compiler::delivery::{
    Encoded, Shard, CONFIG_LABEL, CONTENT_ANNOTATION, GENERATION_ANNOTATION, PAYLOAD_KEY,
    SHARD_ANNOTATION,
};
use serde_json::json;

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

fn metadata(shard: &Shard, namespace: &str) -> serde_json::Value {
    let mut annotations = json!({
        GENERATION_ANNOTATION: shard.generation,
        SHARD_ANNOTATION: shard.annotation(),
    });
    if let (Some(content), Some(map)) = (&shard.content, annotations.as_object_mut()) {
        map.insert(CONTENT_ANNOTATION.to_string(), json!(content));
    }
    json!({
        "name": shard.object_name(),
        "namespace": namespace,
        "labels": {CONFIG_LABEL: "true", "app.kubernetes.io/managed-by": "portcullis-operator"},
        "annotations": annotations,
    })
}

fn payload(shard: &Shard) -> BTreeMap<String, ByteString> {
    BTreeMap::from([(PAYLOAD_KEY.to_string(), ByteString(shard.payload.clone()))])
}

/// Secret half first: a proxy that sees the new ConfigMap half already finds its secrets.
/// The shards of one half go out together (a 5.7 MB config is 7 objects; one after the
/// other they took several round trips of a busy API server).
pub async fn publish(
    client: &Client,
    namespace: &str,
    encoded: &Encoded,
) -> Result<(), PublishError> {
    let params = PatchParams::apply(FIELD_MANAGER).force();
    let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
    try_join_all(encoded.secret_shards.iter().map(|shard| {
        let object = json!({
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": metadata(shard, namespace),
            "type": "Opaque",
            "data": payload(shard),
        });
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
        let object = json!({
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": metadata(shard, namespace),
            "binaryData": payload(shard),
        });
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
