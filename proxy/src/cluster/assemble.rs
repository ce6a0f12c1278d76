//! Pure part of cluster mode: from the labelled ConfigMaps and Secrets to a decision about
//! the loaded config. No I/O, so every case (half written, mixed generations, corrupt
//! data) is unit-tested here.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use k8s_openapi::ByteString;
use kube::ResourceExt;
use portcullis_compiler::delivery::Decoded;
use portcullis_compiler::delivery::{self, DeliveryError, Shard};

/// Why one object is not a usable shard.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ShardError {
    #[error("{kind} {name}: no {annotation} annotation")]
    MissingAnnotation {
        kind: &'static str,
        name: String,
        annotation: &'static str,
    },
    #[error("{kind} {name}: {source}")]
    BadAnnotation {
        kind: &'static str,
        name: String,
        source: DeliveryError,
    },
    #[error("{kind} {name}: no {key} payload")]
    MissingPayload {
        kind: &'static str,
        name: String,
        key: &'static str,
    },
}

fn shard(
    kind: &'static str,
    name: String,
    annotations: &BTreeMap<String, String>,
    payload: Option<&ByteString>,
) -> Result<Shard, ShardError> {
    let annotation = |annotation: &'static str| {
        annotations
            .get(annotation)
            .ok_or_else(|| ShardError::MissingAnnotation {
                kind,
                name: name.clone(),
                annotation,
            })
    };
    let generation = annotation(delivery::GENERATION_ANNOTATION)?.clone();
    let (index, count) =
        Shard::parse_annotation(annotation(delivery::SHARD_ANNOTATION)?).map_err(|source| {
            ShardError::BadAnnotation {
                kind,
                name: name.clone(),
                source,
            }
        })?;
    let payload = payload.ok_or_else(|| ShardError::MissingPayload {
        kind,
        name: name.clone(),
        key: delivery::PAYLOAD_KEY,
    })?;
    Ok(Shard {
        index,
        count,
        generation,
        content: annotations.get(delivery::CONTENT_ANNOTATION).cloned(),
        signature: annotations.get(delivery::SIGNATURE_ANNOTATION).cloned(),
        payload: payload.0.clone(),
    })
}

/// The shard a ConfigMap carries (payload in `binaryData`).
pub fn configmap_shard(cm: &ConfigMap) -> Result<Shard, ShardError> {
    shard(
        "ConfigMap",
        cm.name_any(),
        cm.annotations(),
        cm.binary_data
            .as_ref()
            .and_then(|d| d.get(delivery::PAYLOAD_KEY)),
    )
}

/// The shard a Secret carries (payload in `data`).
pub fn secret_shard(secret: &Secret) -> Result<Shard, ShardError> {
    shard(
        "Secret",
        secret.name_any(),
        secret.annotations(),
        secret
            .data
            .as_ref()
            .and_then(|d| d.get(delivery::PAYLOAD_KEY)),
    )
}

/// What to do with the shards currently in the API server.
#[derive(Debug)]
pub enum Decision {
    /// A complete config with a generation other than the loaded one (without its Secret
    /// half when that is the loaded one's).
    Load(Box<Decoded>),
    /// The shards hold the loaded generation already.
    Unchanged,
    /// The halves are not (yet) complete or do not agree, as while the operator is between
    /// writing the Secret and the ConfigMap: normal, keep the loaded config.
    Waiting(DeliveryError),
    /// The shards of one generation are all there but cannot be decoded: keep the loaded
    /// config and say so loudly.
    Corrupt(DeliveryError),
}

/// Decides from the shards of both halves; `loaded` is the generation being served and
/// `loaded_secret` the content digest of its Secret half. Objects that are not valid shards
/// are skipped by the caller (and reported there); a shard missing because of that shows up
/// here as an incomplete half.
pub fn decide(
    config: &[Shard],
    secret: &[Shard],
    loaded: Option<&str>,
    loaded_secret: Option<&str>,
) -> Decision {
    decide_signed(config, secret, loaded, loaded_secret, None)
}

/// [`decide`], loading only a config signed with `key` when there is one
/// ([`delivery::verify_signature`]). An unsigned or badly signed complete config is
/// [`Decision::Corrupt`]: the loaded config keeps serving.
pub fn decide_signed(
    config: &[Shard],
    secret: &[Shard],
    loaded: Option<&str>,
    loaded_secret: Option<&str>,
    key: Option<&[u8]>,
) -> Decision {
    let generation = match delivery::current_generation(config, secret) {
        Ok(generation) => generation,
        Err(e) => return Decision::Waiting(e),
    };
    if loaded == Some(generation.as_str()) {
        return Decision::Unchanged;
    }
    if let Some(key) = key {
        match delivery::verify_signature(config, secret, &generation, key) {
            Ok(()) => {}
            Err(e @ (DeliveryError::Missing(_) | DeliveryError::Incomplete { .. })) => {
                return Decision::Waiting(e)
            }
            Err(e) => return Decision::Corrupt(e),
        }
    }
    match delivery::decode_reusing(config, secret, loaded_secret) {
        Ok(decoded) => Decision::Load(Box::new(decoded)),
        Err(
            e @ (DeliveryError::Missing(_)
            | DeliveryError::Incomplete { .. }
            | DeliveryError::MixedGenerations(..)
            | DeliveryError::MixedContent),
        ) => Decision::Waiting(e),
        Err(e) => Decision::Corrupt(e),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use portcullis_compiler::config::ApiKeyEntry;
    use portcullis_compiler::GatewayConfig;

    /// The whole config a decision loads (the Secret half merged back in).
    fn merged(decoded: &Decoded) -> GatewayConfig {
        let mut config = decoded.config.clone();
        if let Some(secret) = &decoded.secret {
            config.consumers = secret.consumers.clone();
            config.secrets = secret.secrets.clone();
        }
        config
    }

    fn config(generation: &str, consumers: usize) -> GatewayConfig {
        let mut config = GatewayConfig {
            generation: generation.into(),
            ..GatewayConfig::default()
        };
        for i in 0..consumers {
            config.secrets.api_keys.push(ApiKeyEntry {
                sha256: portcullis_compiler::hash_api_key(format!("key-{i}").as_bytes()),
                consumer: format!("ns/c{i}"),
            });
        }
        config
    }

    /// The shards as the watcher would see them after a round trip through the objects.
    fn halves(c: &GatewayConfig) -> (Vec<Shard>, Vec<Shard>) {
        let encoded = delivery::encode(c).unwrap();
        let cms = encoded
            .config_shards
            .iter()
            .map(|s| configmap_shard(&s.config_map()).unwrap())
            .collect();
        let secrets = encoded
            .secret_shards
            .iter()
            .map(|s| secret_shard(&s.secret()).unwrap())
            .collect();
        (cms, secrets)
    }

    #[test]
    fn complete_halves_load_once() {
        let g1 = config("g1", 3);
        let (cms, secrets) = halves(&g1);
        match decide(&cms, &secrets, None, None) {
            Decision::Load(c) => assert_eq!(merged(&c), g1),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            decide(&cms, &secrets, Some("g1"), None),
            Decision::Unchanged
        ));
    }

    #[test]
    fn an_unchanged_secret_half_is_not_decoded_again() {
        let g1 = config("g1", 3);
        let (_, secrets1) = halves(&g1);
        let content = secrets1[0].content.clone().unwrap();
        // A route change: same consumers and keys under a new generation.
        let mut g2 = g1.clone();
        g2.generation = "g2".into();
        let (cms2, secrets2) = halves(&g2);
        match decide(&cms2, &secrets2, Some("g1"), Some(&content)) {
            Decision::Load(c) => {
                assert!(c.secret.is_none());
                assert_eq!(c.config.generation, "g2");
                assert_eq!(c.secret_content.as_deref(), Some(content.as_str()));
            }
            other => panic!("{other:?}"),
        }
        // Another Secret half is decoded.
        let mut g3 = g2.clone();
        g3.generation = "g3".into();
        g3.secrets.api_keys.pop();
        let (cms3, secrets3) = halves(&g3);
        match decide(&cms3, &secrets3, Some("g2"), Some(&content)) {
            Decision::Load(c) => assert_eq!(merged(&c), g3),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn one_half_newer_waits_in_either_order() {
        let (cms1, secrets1) = halves(&config("g1", 3));
        let (cms2, secrets2) = halves(&config("g2", 4));
        // Secret written first, then ConfigMap: nothing until both carry g2.
        assert!(matches!(
            decide(&cms1, &secrets2, Some("g1"), None),
            Decision::Waiting(DeliveryError::MixedGenerations(..))
        ));
        // ConfigMap first.
        assert!(matches!(
            decide(&cms2, &secrets1, Some("g1"), None),
            Decision::Waiting(DeliveryError::MixedGenerations(..))
        ));
        assert!(
            matches!(decide(&cms2, &secrets2, Some("g1"), None), Decision::Load(c) if c.config.generation == "g2")
        );
        assert!(matches!(
            decide(&[], &secrets2, None, None),
            Decision::Waiting(DeliveryError::Missing("ConfigMap"))
        ));
    }

    #[test]
    fn sharded_half_waits_for_every_shard_and_ignores_stale_ones() {
        let big = config("big", 100_000);
        let (cms, mut secrets) = halves(&big);
        assert!(secrets.len() > 1);
        let last = secrets.pop().unwrap();
        assert!(matches!(
            decide(&cms, &secrets, None, None),
            Decision::Waiting(DeliveryError::Incomplete { .. })
        ));
        // A leftover shard of an older, larger generation does not get in the way.
        let mut stale = last.clone();
        stale.generation = "old".into();
        secrets.push(stale);
        secrets.insert(0, last);
        assert!(
            matches!(decide(&cms, &secrets, None, None), Decision::Load(c) if merged(&c) == big)
        );
    }

    #[test]
    fn corrupt_payload_is_reported_as_corrupt() {
        let (cms, mut secrets) = halves(&config("g1", 2));
        secrets[0].payload = b"not gzip at all".to_vec();
        assert!(matches!(
            decide(&cms, &secrets, None, None),
            Decision::Corrupt(DeliveryError::Decode { half: "Secret", .. })
        ));
    }

    #[test]
    fn objects_without_annotations_or_payload_are_not_shards() {
        let (cms, _) = halves(&config("g1", 1));
        let encoded = delivery::encode(&config("g1", 1)).unwrap();
        let mut cm = encoded.config_shards[0].config_map();
        assert_eq!(configmap_shard(&cm).unwrap(), cms[0]);
        cm.binary_data = None;
        assert!(matches!(
            configmap_shard(&cm),
            Err(ShardError::MissingPayload { .. })
        ));
        let mut s = encoded.secret_shards[0].secret();
        s.metadata
            .annotations
            .as_mut()
            .unwrap()
            .insert(delivery::SHARD_ANNOTATION.into(), "2/1".into());
        assert!(matches!(
            secret_shard(&s),
            Err(ShardError::BadAnnotation { .. })
        ));
        s.metadata.annotations = None;
        assert!(matches!(
            secret_shard(&s),
            Err(ShardError::MissingAnnotation { .. })
        ));
    }
}
