//! The operator's own outputs, kept right: the config signing key, the published config
//! objects (compared with what was published, so that a deleted or edited shard is written
//! again within seconds), and the statuses of objects that cannot be decoded.

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use k8s_openapi::ByteString;
use kube::api::{Api, PostParams};
use kube::runtime::reflector::Store;
use kube::{Client, ResourceExt};
use portcullis_compiler::delivery::{
    self, Encoded, Shard, CONFIG_LABEL, KEY_SECRET_KEY, KEY_SECRET_NAME,
};

use crate::lenient::Poisoned;

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("reading or creating Secret {KEY_SECRET_NAME}: {0}")]
    Kube(#[from] kube::Error),
    #[error("Secret {KEY_SECRET_NAME} has no {KEY_SECRET_KEY} key")]
    Empty,
}

fn key_of(secret: &Secret) -> Option<Vec<u8>> {
    let data = secret.data.as_ref()?.get(KEY_SECRET_KEY)?;
    (data.0.len() >= 32).then(|| data.0.clone())
}

/// The signing key: from the watched Secret, else read or created (32 random bytes). Only
/// the operator and the proxies may read it (the chart's Roles; tenants have no access to
/// the operator's namespace).
pub async fn ensure_key(
    client: &Client,
    namespace: &str,
    store: &Store<Secret>,
    owner: Option<&k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference>,
) -> Result<Vec<u8>, KeyError> {
    if let Some(key) = store.state().first().and_then(|s| key_of(s)) {
        return Ok(key);
    }
    let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
    if let Some(existing) = api.get_opt(KEY_SECRET_NAME).await? {
        return key_of(&existing).ok_or(KeyError::Empty);
    }
    let key: [u8; 32] = rand::random();
    let mut secret = Secret {
        metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
            name: Some(KEY_SECRET_NAME.to_string()),
            namespace: Some(namespace.to_string()),
            labels: Some(BTreeMap::from([(
                "app.kubernetes.io/managed-by".to_string(),
                crate::publish::FIELD_MANAGER.to_string(),
            )])),
            ..Default::default()
        },
        data: Some(BTreeMap::from([(
            KEY_SECRET_KEY.to_string(),
            ByteString(key.to_vec()),
        )])),
        type_: Some("Opaque".to_string()),
        ..Default::default()
    };
    // Owned like the shards, so that `helm uninstall` takes the key with it.
    crate::owner::attach(&mut secret.metadata, owner);
    match api.create(&PostParams::default(), &secret).await {
        Ok(_) => {
            tracing::info!(secret = KEY_SECRET_NAME, "created the config signing key");
            Ok(key.to_vec())
        }
        // Another replica was faster: use its key.
        Err(kube::Error::Api(e)) if e.code == 409 => {
            let existing = api.get(KEY_SECRET_NAME).await?;
            key_of(&existing).ok_or(KeyError::Empty)
        }
        Err(e) => Err(e.into()),
    }
}

/// What differs between the published config and the labelled objects: missing shards,
/// shards with other annotations or payloads, and labelled objects that are no shard of it.
#[derive(Debug, Default)]
pub struct Differences {
    pub problems: Vec<String>,
    /// Labelled objects that are no shard of the published config.
    pub stray_config_maps: Vec<String>,
    pub stray_secrets: Vec<String>,
}

pub fn differences(
    encoded: &Encoded,
    config_maps: &[Arc<ConfigMap>],
    secrets: &[Arc<Secret>],
) -> Differences {
    let mut problems = Vec::new();
    let same =
        |shard: &Shard, annotations: &BTreeMap<String, String>, payload: Option<&ByteString>| {
            let expected = shard.config_map();
            expected.metadata.annotations.as_ref() == Some(annotations)
                && payload.is_some_and(|p| p.0 == shard.payload)
        };
    for shard in &encoded.config_shards {
        let name = shard.object_name();
        match config_maps.iter().find(|o| o.name_any() == name) {
            None => problems.push(format!("ConfigMap {name} is missing")),
            Some(object) => {
                let payload = object
                    .binary_data
                    .as_ref()
                    .and_then(|d| d.get(delivery::PAYLOAD_KEY));
                if !same(shard, object.annotations(), payload) {
                    problems.push(format!("ConfigMap {name} was changed"));
                }
            }
        }
    }
    for shard in &encoded.secret_shards {
        let name = shard.object_name();
        match secrets.iter().find(|o| o.name_any() == name) {
            None => problems.push(format!("Secret {name} is missing")),
            Some(object) => {
                let payload = object
                    .data
                    .as_ref()
                    .and_then(|d| d.get(delivery::PAYLOAD_KEY));
                if !same(shard, object.annotations(), payload) {
                    problems.push(format!("Secret {name} was changed"));
                }
            }
        }
    }
    let known = |names: &mut dyn Iterator<Item = String>, shards: &[Shard]| {
        names
            .filter(|n| !shards.iter().any(|s| &s.object_name() == n))
            .collect::<Vec<_>>()
    };
    let stray_config_maps = known(
        &mut config_maps.iter().map(|o| o.name_any()),
        &encoded.config_shards,
    );
    let stray_secrets = known(
        &mut secrets.iter().map(|o| o.name_any()),
        &encoded.secret_shards,
    );
    for name in &stray_config_maps {
        problems.push(format!(
            "ConfigMap {name} carries the {CONFIG_LABEL} label but is no shard of the config"
        ));
    }
    for name in &stray_secrets {
        problems.push(format!(
            "Secret {name} carries the {CONFIG_LABEL} label but is no shard of the config"
        ));
    }
    Differences {
        problems,
        stray_config_maps,
        stray_secrets,
    }
}

/// Deletes labelled objects that are no shard of the published config.
pub async fn remove_strays(client: &Client, namespace: &str, differences: &Differences) {
    let maps: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
    for name in &differences.stray_config_maps {
        if let Err(e) = maps.delete(name, &Default::default()).await {
            tracing::warn!(configmap = %name, error = %e, "cannot delete a stray config object");
        }
    }
    for name in &differences.stray_secrets {
        if let Err(e) = secrets.delete(name, &Default::default()).await {
            tracing::warn!(secret = %name, error = %e, "cannot delete a stray config object");
        }
    }
}

/// `Accepted=False` with reason `Undecodable` on an object that cannot be read as its type:
/// a JSON merge patch of the status subresource, whose answer is not decoded either.
pub async fn patch_undecodable(client: &Client, poisoned: &Poisoned) -> Result<(), kube::Error> {
    let now = k8s_openapi::jiff::Timestamp::now().to_string();
    let message = format!(
        "the object cannot be decoded, so it is left out of the config (other objects are not affected): {}",
        truncate(&poisoned.error, 900)
    );
    let condition = |type_: &str| {
        serde_json::json!({
            "type": type_,
            "status": "False",
            "reason": "Undecodable",
            "message": message,
            "observedGeneration": poisoned.generation,
            "lastTransitionTime": now,
        })
    };
    let body = serde_json::json!({
        "status": {
            "observedGeneration": poisoned.generation,
            "conditions": [condition("Accepted"), condition("Programmed")],
        }
    });
    let request = http::Request::patch(format!("{}/status", poisoned.path))
        .header(http::header::CONTENT_TYPE, "application/merge-patch+json")
        .body(serde_json::to_vec(&body).unwrap_or_default())
        .map_err(kube::Error::HttpError)?;
    client.request_text(request).await.map(|_| ())
}

fn truncate(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}
