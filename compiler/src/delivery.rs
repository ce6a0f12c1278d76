//! How a compiled config travels from the operator to the proxies: one half in ConfigMaps
//! (routes and policies), the other in Secrets (hashed keys and other secret material), both
//! gzip-compressed JSON, each cut into shards below the API server's 1 MiB object limit.
//!
//! Every shard carries the generation id. A proxy assembles a config only from a complete
//! set of shards of both halves with one generation, so it never runs half a config.

use std::io::{Read, Write};

use std::collections::BTreeMap;

use flate2::read::GzDecoder;
use flate2::write::GzEncoder;
use flate2::Compression;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::ByteString;
use serde::{Deserialize, Serialize};

use crate::config::{GatewayConfig, SecretConfig};

/// Label on every shard object (value `"true"`), for watches with a label selector.
pub const CONFIG_LABEL: &str = "portcullis.dev/config";
/// Annotation with the generation id of the shard's config.
pub const GENERATION_ANNOTATION: &str = "portcullis.dev/generation";
/// Annotation `INDEX/COUNT` of a shard.
pub const SHARD_ANNOTATION: &str = "portcullis.dev/shard";
/// Base name of the ConfigMaps and Secrets; shard `i > 0` is `NAME-i`.
pub const OBJECT_NAME: &str = "portcullis-config";
/// Data key of the payload in each shard.
pub const PAYLOAD_KEY: &str = "payload.json.gz";
/// Payload bytes per shard: leaves room for metadata below the 1 MiB object limit.
pub const SHARD_BYTES: usize = 900 * 1024;
/// More shards than this is refused as too large, with an explicit error.
pub const MAX_SHARDS: usize = 16;
/// Bound on decompressed size, so a corrupt or hostile payload cannot exhaust memory.
const MAX_DECOMPRESSED_BYTES: u64 = 1 << 30;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DeliveryError {
    #[error(
        "the compiled config needs {bytes} compressed bytes, more than {limit} bytes \
         ({MAX_SHARDS} shards of {SHARD_BYTES}); remove routes or consumers"
    )]
    TooLarge { bytes: usize, limit: usize },
    #[error("no shards of the {0} half")]
    Missing(&'static str),
    #[error("the {half} half is incomplete: shard {index} of {count} is missing")]
    Incomplete {
        half: &'static str,
        index: usize,
        count: usize,
    },
    #[error("shards disagree on the generation: {0} and {1}")]
    MixedGenerations(String, String),
    #[error("invalid shard annotation {0:?}")]
    BadShard(String),
    #[error("cannot encode: {0}")]
    Encode(String),
    #[error("cannot decode the {half} half: {message}")]
    Decode { half: &'static str, message: String },
}

/// One shard of one half, as stored in a ConfigMap or Secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shard {
    pub index: usize,
    pub count: usize,
    pub generation: String,
    pub payload: Vec<u8>,
}

impl Shard {
    /// Name of the object holding this shard.
    pub fn object_name(&self) -> String {
        object_name(self.index)
    }

    pub fn annotation(&self) -> String {
        format!("{}/{}", self.index, self.count)
    }

    /// The ConfigMap that carries this shard of the config half, as the operator publishes
    /// it (name, label, generation and shard annotations, payload; no namespace).
    pub fn config_map(&self) -> ConfigMap {
        ConfigMap {
            metadata: self.object_meta(),
            binary_data: Some(self.payload_map()),
            ..ConfigMap::default()
        }
    }

    /// The Secret that carries this shard of the secret half (see [`Shard::config_map`]).
    pub fn secret(&self) -> Secret {
        Secret {
            metadata: self.object_meta(),
            data: Some(self.payload_map()),
            ..Secret::default()
        }
    }

    fn object_meta(&self) -> ObjectMeta {
        ObjectMeta {
            name: Some(self.object_name()),
            labels: Some(BTreeMap::from([(
                CONFIG_LABEL.to_string(),
                "true".to_string(),
            )])),
            annotations: Some(BTreeMap::from([
                (GENERATION_ANNOTATION.to_string(), self.generation.clone()),
                (SHARD_ANNOTATION.to_string(), self.annotation()),
            ])),
            ..ObjectMeta::default()
        }
    }

    fn payload_map(&self) -> BTreeMap<String, ByteString> {
        BTreeMap::from([(PAYLOAD_KEY.to_string(), ByteString(self.payload.clone()))])
    }

    /// Parses `INDEX/COUNT` as written by [`Shard::annotation`].
    pub fn parse_annotation(text: &str) -> Result<(usize, usize), DeliveryError> {
        let bad = || DeliveryError::BadShard(text.to_string());
        let (index, count) = text.split_once('/').ok_or_else(bad)?;
        let index: usize = index.parse().map_err(|_| bad())?;
        let count: usize = count.parse().map_err(|_| bad())?;
        if count == 0 || count > MAX_SHARDS || index >= count {
            return Err(bad());
        }
        Ok((index, count))
    }
}

pub fn object_name(index: usize) -> String {
    if index == 0 {
        OBJECT_NAME.to_string()
    } else {
        format!("{OBJECT_NAME}-{index}")
    }
}

/// Both halves of one config, ready to write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Encoded {
    pub generation: String,
    pub config_shards: Vec<Shard>,
    pub secret_shards: Vec<Shard>,
    /// Compressed bytes of both halves together.
    pub compressed_bytes: usize,
}

#[derive(Serialize, Deserialize)]
struct SecretHalf {
    generation: String,
    secrets: SecretConfig,
}

fn gzip(value: &impl Serialize) -> Result<Vec<u8>, DeliveryError> {
    // Serialize first, compress in one call: flate2's writer zero-fills its output buffer on
    // every small write, which made streaming serde_json into it ten times slower.
    let json = serde_json::to_vec(value).map_err(|e| DeliveryError::Encode(e.to_string()))?;
    // Level 1: hashes and ids barely compress better at higher levels, and the operator
    // re-encodes on every change of a large config.
    let mut encoder = GzEncoder::new(Vec::with_capacity(json.len() / 3), Compression::fast());
    encoder
        .write_all(&json)
        .and_then(|()| encoder.finish())
        .map_err(|e| DeliveryError::Encode(e.to_string()))
}

fn split(bytes: &[u8], generation: &str) -> Vec<Shard> {
    let chunks: Vec<&[u8]> = if bytes.is_empty() {
        vec![bytes]
    } else {
        bytes.chunks(SHARD_BYTES).collect()
    };
    let count = chunks.len();
    chunks
        .into_iter()
        .enumerate()
        .map(|(index, chunk)| Shard {
            index,
            count,
            generation: generation.to_string(),
            payload: chunk.to_vec(),
        })
        .collect()
}

/// Splits a config into its ConfigMap and Secret halves.
pub fn encode(config: &GatewayConfig) -> Result<Encoded, DeliveryError> {
    let public = GatewayConfig {
        secrets: SecretConfig::default(),
        ..config.clone()
    };
    let public_bytes = gzip(&public)?;
    let secret_bytes = gzip(&SecretHalf {
        generation: config.generation.clone(),
        secrets: config.secrets.clone(),
    })?;
    let compressed_bytes = public_bytes.len() + secret_bytes.len();
    let config_shards = split(&public_bytes, &config.generation);
    let secret_shards = split(&secret_bytes, &config.generation);
    if config_shards.len() > MAX_SHARDS || secret_shards.len() > MAX_SHARDS {
        return Err(DeliveryError::TooLarge {
            bytes: compressed_bytes,
            limit: MAX_SHARDS * SHARD_BYTES,
        });
    }
    Ok(Encoded {
        generation: config.generation.clone(),
        config_shards,
        secret_shards,
        compressed_bytes,
    })
}

/// Orders and checks the shards of one half; returns the joined payload.
fn assemble(
    half: &'static str,
    shards: &[Shard],
    generation: &str,
) -> Result<Vec<u8>, DeliveryError> {
    let of_generation: Vec<&Shard> = shards
        .iter()
        .filter(|s| s.generation == generation)
        .collect();
    let count = of_generation
        .first()
        .ok_or(DeliveryError::Missing(half))?
        .count;
    let mut ordered: Vec<Option<&Shard>> = vec![None; count];
    for shard in of_generation {
        if shard.count != count || shard.index >= count {
            return Err(DeliveryError::BadShard(shard.annotation()));
        }
        ordered[shard.index] = Some(shard);
    }
    let mut joined = Vec::new();
    for (index, shard) in ordered.into_iter().enumerate() {
        let shard = shard.ok_or(DeliveryError::Incomplete { half, index, count })?;
        joined.extend_from_slice(&shard.payload);
    }
    Ok(joined)
}

#[cfg(test)]
fn gunzip(half: &'static str, bytes: &[u8]) -> Result<Vec<u8>, DeliveryError> {
    let mut out = Vec::new();
    GzDecoder::new(bytes)
        .take(MAX_DECOMPRESSED_BYTES)
        .read_to_end(&mut out)
        .map_err(|e| DeliveryError::Decode {
            half,
            message: e.to_string(),
        })?;
    Ok(out)
}

/// The generation both halves are complete for: the one of shard 0 of the config half,
/// provided the Secret half has it too.
pub fn current_generation(
    config_shards: &[Shard],
    secret_shards: &[Shard],
) -> Result<String, DeliveryError> {
    let first = config_shards
        .iter()
        .find(|s| s.index == 0)
        .ok_or(DeliveryError::Missing("ConfigMap"))?;
    let secret = secret_shards
        .iter()
        .find(|s| s.index == 0)
        .ok_or(DeliveryError::Missing("Secret"))?;
    if first.generation != secret.generation {
        return Err(DeliveryError::MixedGenerations(
            first.generation.clone(),
            secret.generation.clone(),
        ));
    }
    Ok(first.generation.clone())
}

/// Parses one half straight from its compressed shards: the decompressed JSON (tens of MB
/// at 100k consumers) is never held in memory, which lowers a proxy's peak during a reload.
fn parse<T: serde::de::DeserializeOwned>(
    half: &'static str,
    compressed: &[u8],
) -> Result<T, DeliveryError> {
    let reader = std::io::BufReader::with_capacity(
        64 * 1024,
        GzDecoder::new(compressed).take(MAX_DECOMPRESSED_BYTES),
    );
    serde_json::from_reader(reader).map_err(|e| DeliveryError::Decode {
        half,
        message: e.to_string(),
    })
}

/// Rebuilds the config from both halves; fails unless both are complete and agree.
pub fn decode(
    config_shards: &[Shard],
    secret_shards: &[Shard],
) -> Result<GatewayConfig, DeliveryError> {
    let generation = current_generation(config_shards, secret_shards)?;
    let public = assemble("ConfigMap", config_shards, &generation)?;
    let secret = assemble("Secret", secret_shards, &generation)?;
    let mut config: GatewayConfig = parse("ConfigMap", &public)?;
    drop(public);
    let secret: SecretHalf = parse("Secret", &secret)?;
    if config.generation != generation || secret.generation != generation {
        return Err(DeliveryError::MixedGenerations(
            config.generation,
            secret.generation,
        ));
    }
    config.secrets = secret.secrets;
    Ok(config)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::config::{ApiKeyEntry, ObjectKind, ObjectRef};

    fn sample(n: usize) -> GatewayConfig {
        let mut config = GatewayConfig {
            generation: "g1".into(),
            ..GatewayConfig::default()
        };
        for i in 0..n {
            config.objects.push(ObjectRef {
                kind: ObjectKind::ApiRoute,
                namespace: format!("ns-{i}"),
                name: format!("route-{i}-{}", "x".repeat(i % 50)),
                generation: Some(i as i64),
            });
            config.secrets.api_keys.push(ApiKeyEntry {
                sha256: crate::compile::hash_api_key(format!("key-{i}").as_bytes()),
                consumer: format!("ns/c{i}"),
            });
        }
        config
    }

    #[test]
    fn round_trips_and_keeps_secrets_out_of_the_config_half() {
        let config = sample(10);
        let encoded = encode(&config).unwrap();
        assert_eq!(encoded.config_shards.len(), 1);
        let public = gunzip("c", &encoded.config_shards[0].payload).unwrap();
        assert!(!String::from_utf8_lossy(&public).contains(&config.secrets.api_keys[0].sha256));
        assert_eq!(
            decode(&encoded.config_shards, &encoded.secret_shards).unwrap(),
            config
        );
    }

    #[test]
    fn large_configs_are_sharded_and_reassembled_in_any_order() {
        // Hashes do not compress, so 100k keys need several Secret shards.
        let config = sample(100_000);
        let mut encoded = encode(&config).unwrap();
        assert!(
            encoded.secret_shards.len() > 1,
            "{}",
            encoded.secret_shards.len()
        );
        encoded.secret_shards.reverse();
        assert_eq!(
            decode(&encoded.config_shards, &encoded.secret_shards).unwrap(),
            config
        );
    }

    #[test]
    fn incomplete_or_mixed_halves_are_refused() {
        let config = sample(100_000);
        let encoded = encode(&config).unwrap();
        let partial = &encoded.secret_shards[..1];
        assert!(matches!(
            decode(&encoded.config_shards, partial),
            Err(DeliveryError::Incomplete { .. })
        ));
        let mut other = config.clone();
        other.generation = "g2".into();
        let newer = encode(&other).unwrap();
        assert!(matches!(
            decode(&encoded.config_shards, &newer.secret_shards),
            Err(DeliveryError::MixedGenerations(..))
        ));
    }

    #[test]
    fn corrupt_payloads_are_errors() {
        let bad = Shard {
            index: 0,
            count: 1,
            generation: "g".into(),
            payload: b"not gzip".to_vec(),
        };
        assert!(decode(std::slice::from_ref(&bad), std::slice::from_ref(&bad)).is_err());
        assert!(Shard::parse_annotation("3/2").is_err());
        assert!(Shard::parse_annotation("0/0").is_err());
        assert_eq!(Shard::parse_annotation("1/3"), Ok((1, 3)));
    }
}
