//! How a compiled config travels from the operator to the proxies: one half in ConfigMaps
//! (routes and policies), the other in Secrets (the identities: consumers with their hashed
//! keys and HMAC secrets, and other secret material), both gzip-compressed JSON, each cut
//! into shards below the API server's 1 MiB object limit.
//!
//! Every shard carries the generation id. A proxy assembles a config only from a complete
//! set of shards of both halves with one generation, so it never runs half a config.
//!
//! The Secret shards also carry the SHA-256 of their half's JSON ([`CONTENT_ANNOTATION`]).
//! At 100k consumers that half is most of the config, and a route change leaves it as it
//! was: the operator then reuses its compressed bytes, and a proxy that runs the same
//! content keeps its consumer index instead of decoding and rebuilding it.
//!
//! Every shard also carries the config's signature ([`SIGNATURE_ANNOTATION`]): an
//! HMAC-SHA256, with a key that only the operator and the proxies can read
//! ([`KEY_SECRET_NAME`]), over the generation and both halves' compressed bytes. A proxy
//! loads only configs whose signature verifies, so a ConfigMap or Secret written by anyone
//! else — a partial config, an old one replayed under a new generation — is refused.

use std::io::{Read, Write};

use std::collections::BTreeMap;

use flate2::read::GzDecoder;
use flate2::write::GzEncoder;
use flate2::Compression;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::ByteString;
use serde::{Deserialize, Serialize};

use sha2::{Digest, Sha256};

use crate::config::{
    ConsumerConfig, GatewayConfig, RateLimitPolicyConfig, RouteConfig, SecretConfig,
    TlsCertificateConfig, WafPolicyConfig,
};

/// Label on every shard object (value `"true"`), for watches with a label selector.
pub const CONFIG_LABEL: &str = "portcullis.dev/config";
/// Annotation with the generation id of the shard's config.
pub const GENERATION_ANNOTATION: &str = "portcullis.dev/generation";
/// Annotation of Secret shards: SHA-256 (hex) of the Secret half's JSON.
pub const CONTENT_ANNOTATION: &str = "portcullis.dev/content";
/// Annotation `INDEX/COUNT` of a shard.
pub const SHARD_ANNOTATION: &str = "portcullis.dev/shard";
/// Base name of the ConfigMaps and Secrets; shard `i > 0` is `NAME-i`.
pub const OBJECT_NAME: &str = "portcullis-config";
/// Annotation with the config's HMAC-SHA256 (hex), the same on every shard of both halves.
pub const SIGNATURE_ANNOTATION: &str = "portcullis.dev/signature";
/// The Secret (in the operator's namespace) holding the signing key under [`KEY_SECRET_KEY`].
pub const KEY_SECRET_NAME: &str = "portcullis-config-key";
pub const KEY_SECRET_KEY: &str = "hmac-sha256";
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
    #[error("the Secret shards disagree on their content digest")]
    MixedContent,
    #[error("the config carries no signature (it was not written by the operator)")]
    Unsigned,
    #[error("the config's signature does not verify (it was not written, or not completely written, by the operator)")]
    BadSignature,
}

/// One shard of one half, as stored in a ConfigMap or Secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shard {
    pub index: usize,
    pub count: usize,
    pub generation: String,
    /// [`CONTENT_ANNOTATION`] of Secret shards.
    pub content: Option<String>,
    /// [`SIGNATURE_ANNOTATION`].
    pub signature: Option<String>,
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
            type_: Some("Opaque".to_string()),
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
            annotations: Some(
                [
                    (GENERATION_ANNOTATION, Some(&self.generation)),
                    (SHARD_ANNOTATION, Some(&self.annotation())),
                    (CONTENT_ANNOTATION, self.content.as_ref()),
                    (SIGNATURE_ANNOTATION, self.signature.as_ref()),
                ]
                .into_iter()
                .filter_map(|(key, value)| Some((key.to_string(), value?.clone())))
                .collect(),
            ),
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
    /// SHA-256 (hex) of the Secret half's JSON, as in [`CONTENT_ANNOTATION`].
    pub secret_content: String,
    /// Compressed bytes of both halves together.
    pub compressed_bytes: usize,
    /// The compiler's digest of the Secret half, when the caller had one.
    pub secret_digest: Option<[u8; 32]>,
}

/// The ConfigMap half: the config without consumers and secrets, written from borrowed
/// parts (no copy of a large config). It reads back as a [`GatewayConfig`] whose
/// consumers and secrets are empty.
///
/// The object list is not delivered: only the operator uses it (for status, from the
/// config it compiled), and at 110k objects it was most of this half, which every proxy
/// decoded only to drop it.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct PublicHalf<'a> {
    generation: &'a str,
    routes: &'a [RouteConfig],
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    rate_limit_policies: &'a [RateLimitPolicyConfig],
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    tls_certificates: &'a [TlsCertificateConfig],
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    waf_policies: &'a [WafPolicyConfig],
}

impl<'a> PublicHalf<'a> {
    fn of(config: &'a GatewayConfig) -> Self {
        // Destructured so that a new config field does not compile until it is given a half.
        let GatewayConfig {
            generation,
            routes,
            consumers: _,
            objects: _,
            secrets: _,
            rate_limit_policies,
            tls_certificates,
            waf_policies,
        } = config;
        PublicHalf {
            generation,
            routes,
            rate_limit_policies,
            tls_certificates,
            waf_policies,
        }
    }
}

/// The Secret half as written: no generation inside, so that its bytes (and digest) stay
/// the same while consumers and secrets do; the shards' annotations carry the generation.
#[derive(Serialize)]
struct SecretHalfRef<'a> {
    consumers: &'a [ConsumerConfig],
    secrets: &'a SecretConfig,
}

/// The Secret half as read.
#[derive(Debug, Deserialize)]
pub struct SecretHalf {
    pub consumers: Vec<ConsumerConfig>,
    pub secrets: SecretConfig,
}

fn to_json(value: &impl Serialize) -> Result<Vec<u8>, DeliveryError> {
    serde_json::to_vec(value).map_err(|e| DeliveryError::Encode(e.to_string()))
}

fn gzip(json: &[u8]) -> Result<Vec<u8>, DeliveryError> {
    // Serialized first, compressed in one call: flate2's writer zero-fills its output buffer
    // on every small write, which made streaming serde_json into it ten times slower.
    // Level 1: hashes and ids barely compress better at higher levels, and the operator
    // re-encodes on every change of a large config.
    let mut encoder = GzEncoder::new(Vec::with_capacity(json.len() / 3), Compression::fast());
    encoder
        .write_all(json)
        .and_then(|()| encoder.finish())
        .map_err(|e| DeliveryError::Encode(e.to_string()))
}

fn split(bytes: &[u8], generation: &str, content: Option<&str>) -> Vec<Shard> {
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
            content: content.map(str::to_string),
            signature: None,
            payload: chunk.to_vec(),
        })
        .collect()
}

/// Splits a config into its ConfigMap and Secret halves.
pub fn encode(config: &GatewayConfig) -> Result<Encoded, DeliveryError> {
    encode_reusing(config, None, None)
}

/// [`encode`], reusing the compressed Secret half of `previous` when its content is the
/// same (a change of routes or policies only): at 100k consumers that skips compressing
/// most of the config. The halves are compressed on two threads.
///
/// `secret_digest` is the compiler's digest of this config's Secret half
/// ([`crate::CompileCache::secret_half_digest`]); when `previous` was encoded with the same
/// one, the half is not even serialized again (~5 MB of JSON at 100k consumers).
pub fn encode_reusing(
    config: &GatewayConfig,
    previous: Option<&Encoded>,
    secret_digest: Option<[u8; 32]>,
) -> Result<Encoded, DeliveryError> {
    let unchanged_secret_half =
        previous.filter(|p| secret_digest.is_some() && p.secret_digest == secret_digest);
    let (public_bytes, secret) = std::thread::scope(|scope| {
        let public = scope.spawn(|| to_json(&PublicHalf::of(config)).and_then(|j| gzip(&j)));
        let secret = (|| {
            if let Some(previous) = unchanged_secret_half {
                return Ok((
                    previous.secret_content.clone(),
                    joined(&previous.secret_shards),
                ));
            }
            let json = to_json(&SecretHalfRef {
                consumers: &config.consumers,
                secrets: &config.secrets,
            })?;
            let content = hex::encode(Sha256::digest(&json));
            let bytes = match previous.filter(|p| p.secret_content == content) {
                Some(previous) => joined(&previous.secret_shards),
                None => gzip(&json)?,
            };
            Ok::<_, DeliveryError>((content, bytes))
        })();
        let public = public
            .join()
            .unwrap_or_else(|_| Err(DeliveryError::Encode("the encoder thread failed".into())));
        (public, secret)
    });
    let public_bytes = public_bytes?;
    let (secret_content, secret_bytes) = secret?;
    let compressed_bytes = public_bytes.len() + secret_bytes.len();
    let config_shards = split(&public_bytes, &config.generation, None);
    let secret_shards = split(&secret_bytes, &config.generation, Some(&secret_content));
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
        secret_content,
        compressed_bytes,
        secret_digest,
    })
}

impl Encoded {
    /// Signs the config: every shard of both halves gets the signature.
    pub fn sign(&mut self, key: &[u8]) {
        let signature = signature(
            key,
            &self.generation,
            &joined(&self.config_shards),
            &joined(&self.secret_shards),
        );
        for shard in self
            .config_shards
            .iter_mut()
            .chain(self.secret_shards.iter_mut())
        {
            shard.signature = Some(signature.clone());
        }
    }
}

/// HMAC-SHA256 (hex) of a config: its generation and both halves' compressed bytes.
pub fn signature(key: &[u8], generation: &str, public: &[u8], secret: &[u8]) -> String {
    use hmac::Mac;
    // HMAC takes keys of any length; the error case cannot happen.
    let Ok(mut mac) = hmac::Hmac::<Sha256>::new_from_slice(key) else {
        return String::new();
    };
    mac.update(b"portcullis-config-v1\n");
    mac.update(generation.as_bytes());
    mac.update(b"\n");
    mac.update(&Sha256::digest(public));
    mac.update(&Sha256::digest(secret));
    hex::encode(mac.finalize().into_bytes())
}

/// Checks that the config of `generation` carries a valid signature under `key`: every
/// shard of both halves has the same one, and it is the HMAC of what they hold.
pub fn verify_signature(
    config_shards: &[Shard],
    secret_shards: &[Shard],
    generation: &str,
    key: &[u8],
) -> Result<(), DeliveryError> {
    use hmac::Mac;
    let public = ordered("ConfigMap", config_shards, generation)?;
    let secret = ordered("Secret", secret_shards, generation)?;
    let first = public
        .first()
        .and_then(|s| s.signature.as_deref())
        .ok_or(DeliveryError::Unsigned)?;
    if public
        .iter()
        .chain(secret.iter())
        .any(|s| s.signature.as_deref() != Some(first))
    {
        return Err(DeliveryError::BadSignature);
    }
    let expected = hex::decode(first).map_err(|_| DeliveryError::BadSignature)?;
    let Ok(mut mac) = hmac::Hmac::<Sha256>::new_from_slice(key) else {
        return Err(DeliveryError::BadSignature);
    };
    mac.update(b"portcullis-config-v1\n");
    mac.update(generation.as_bytes());
    mac.update(b"\n");
    mac.update(&Sha256::digest(joined(public.iter().copied())));
    mac.update(&Sha256::digest(joined(secret.iter().copied())));
    // Constant-time comparison.
    mac.verify_slice(&expected)
        .map_err(|_| DeliveryError::BadSignature)
}

/// Orders and checks the shards of one half: all of `generation`'s are there.
fn ordered<'a>(
    half: &'static str,
    shards: &'a [Shard],
    generation: &str,
) -> Result<Vec<&'a Shard>, DeliveryError> {
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
    ordered
        .into_iter()
        .enumerate()
        .map(|(index, shard)| shard.ok_or(DeliveryError::Incomplete { half, index, count }))
        .collect()
}

/// The joined payload of ordered shards.
fn joined<'a>(shards: impl IntoIterator<Item = &'a Shard>) -> Vec<u8> {
    shards
        .into_iter()
        .flat_map(|s| s.payload.iter().copied())
        .collect()
}

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

/// Computes the SHA-256 of what passes through, to check a payload against its digest.
struct Hashing<R> {
    inner: R,
    hasher: Sha256,
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

/// Parses one half straight from its compressed shards: the decompressed JSON (tens of MB
/// at 100k consumers) is never held in memory, which lowers a proxy's peak during a reload.
/// With `content`, the decompressed bytes must have that SHA-256 (hex).
fn parse<T: serde::de::DeserializeOwned>(
    half: &'static str,
    compressed: &[u8],
    content: Option<&str>,
) -> Result<T, DeliveryError> {
    let error = |message: String| DeliveryError::Decode { half, message };
    let mut reader = std::io::BufReader::with_capacity(
        64 * 1024,
        Hashing {
            inner: GzDecoder::new(compressed).take(MAX_DECOMPRESSED_BYTES),
            hasher: Sha256::new(),
        },
    );
    let mut json = serde_json::Deserializer::from_reader(&mut reader);
    let value = T::deserialize(&mut json).map_err(|e| error(e.to_string()))?;
    // Reads to the end, so the digest covers every byte.
    json.end().map_err(|e| error(e.to_string()))?;
    if let Some(expected) = content {
        let actual = hex::encode(reader.into_inner().hasher.finalize());
        if actual != expected {
            return Err(error(format!(
                "content digest {actual} differs from its annotation {expected}"
            )));
        }
    }
    Ok(value)
}

/// The content digest the Secret shards of `generation` carry (all of them, or none).
pub fn secret_content<'a>(
    secret_shards: &'a [Shard],
    generation: &str,
) -> Result<Option<&'a str>, DeliveryError> {
    let mut of_generation = secret_shards.iter().filter(|s| s.generation == generation);
    let first = of_generation
        .next()
        .ok_or(DeliveryError::Missing("Secret"))?;
    if of_generation.any(|s| s.content != first.content) {
        return Err(DeliveryError::MixedContent);
    }
    Ok(first.content.as_deref())
}

/// A decoded config; see [`decode_reusing`].
#[derive(Debug)]
pub struct Decoded {
    /// Without consumers and secrets when `secret` is `None`.
    pub config: GatewayConfig,
    /// The Secret half, unless it was skipped because its content was already loaded.
    pub secret: Option<SecretHalf>,
    /// The Secret half's content digest, when its shards carry one.
    pub secret_content: Option<String>,
}

/// Rebuilds the config from both halves (without the object list, which is not
/// delivered); fails unless both are complete and agree.
pub fn decode(
    config_shards: &[Shard],
    secret_shards: &[Shard],
) -> Result<GatewayConfig, DeliveryError> {
    let decoded = decode_reusing(config_shards, secret_shards, None)?;
    let mut config = decoded.config;
    if let Some(secret) = decoded.secret {
        config.consumers = secret.consumers;
        config.secrets = secret.secrets;
    }
    Ok(config)
}

/// Decodes both halves, except the Secret half when its content digest is `loaded_content`
/// (the one the caller runs already). The Secret half must still be complete for the
/// generation, so a half-written config is never taken.
pub fn decode_reusing(
    config_shards: &[Shard],
    secret_shards: &[Shard],
    loaded_content: Option<&str>,
) -> Result<Decoded, DeliveryError> {
    let generation = current_generation(config_shards, secret_shards)?;
    let public = joined(ordered("ConfigMap", config_shards, &generation)?);
    // Checked even when it is not decoded: a half-written config is never taken.
    let secret = ordered("Secret", secret_shards, &generation)?;
    let content = secret_content(secret_shards, &generation)?;
    // The ConfigMap half is a few MB of JSON at 10k routes: decompressed first and parsed
    // from memory, several times faster than through serde_json's reader (which tracks
    // lines and columns byte by byte). The large Secret half is streamed (see `parse`).
    let public = gunzip("ConfigMap", &public)?;
    let config: GatewayConfig =
        serde_json::from_slice(&public).map_err(|e| DeliveryError::Decode {
            half: "ConfigMap",
            message: e.to_string(),
        })?;
    drop(public);
    if config.generation != generation {
        return Err(DeliveryError::MixedGenerations(
            config.generation,
            generation,
        ));
    }
    let secret = match content {
        Some(content) if loaded_content == Some(content) => None,
        _ => Some(parse::<SecretHalf>("Secret", &joined(secret), content)?),
    };
    Ok(Decoded {
        config,
        secret,
        secret_content: content.map(str::to_string),
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::config::{ApiKeyEntry, ConsumerConfig, ObjectKind, ObjectRef};

    /// What a proxy gets of `config`: everything but the object list.
    fn delivered(config: &GatewayConfig) -> GatewayConfig {
        GatewayConfig {
            objects: Vec::new(),
            ..config.clone()
        }
    }

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
            config.consumers.push(ConsumerConfig {
                id: format!("ns/c{i}"),
                namespace: "ns".into(),
                username: format!("c{i}"),
                groups: vec!["gold".into()],
                ..ConsumerConfig::default()
            });
        }
        config
    }

    #[test]
    fn consumers_travel_with_their_keys_in_the_secret_half() {
        let config = sample(3);
        let encoded = encode(&config).unwrap();
        let public = gunzip("c", &encoded.config_shards[0].payload).unwrap();
        assert!(!String::from_utf8_lossy(&public).contains("ns/c1"));
        let decoded = decode_reusing(&encoded.config_shards, &encoded.secret_shards, None).unwrap();
        let secret = decoded.secret.unwrap();
        assert_eq!(secret.consumers, config.consumers);
        assert!(decoded.config.consumers.is_empty());
        assert_eq!(
            decoded.secret_content.as_deref(),
            Some(&*encoded.secret_content)
        );
        assert!(encoded
            .secret_shards
            .iter()
            .all(|s| s.content.as_deref() == Some(&*encoded.secret_content)));
    }

    #[test]
    fn an_unchanged_secret_half_is_reused_by_the_encoder_and_skipped_by_the_decoder() {
        let first = sample(2_000);
        let before = encode(&first).unwrap();
        // A route change: new generation, same consumers and keys.
        let mut second = first.clone();
        second.generation = "g2".into();
        second.objects.pop();
        let after = encode_reusing(&second, Some(&before), None).unwrap();
        assert_eq!(after.secret_content, before.secret_content);
        assert_eq!(after.secret_shards[0].generation, "g2");
        let payload = |e: &Encoded| -> Vec<u8> {
            e.secret_shards
                .iter()
                .flat_map(|s| s.payload.clone())
                .collect()
        };
        assert_eq!(payload(&after), payload(&before));
        let skipped = decode_reusing(
            &after.config_shards,
            &after.secret_shards,
            Some(&before.secret_content),
        )
        .unwrap();
        assert!(skipped.secret.is_none());
        assert_eq!(skipped.config.routes, second.routes);
        assert!(
            skipped.config.objects.is_empty(),
            "the object list is not delivered"
        );
        // Another consumer: the half is compressed again and decoded again.
        let mut third = second.clone();
        third.generation = "g3".into();
        third.consumers[0].groups.push("silver".into());
        let changed = encode_reusing(&third, Some(&after), None).unwrap();
        assert_ne!(changed.secret_content, after.secret_content);
        let decoded = decode_reusing(
            &changed.config_shards,
            &changed.secret_shards,
            Some(&after.secret_content),
        )
        .unwrap();
        assert_eq!(decoded.secret.unwrap().consumers, third.consumers);
        assert_eq!(
            decode(&changed.config_shards, &changed.secret_shards).unwrap(),
            delivered(&third)
        );
    }

    #[test]
    fn a_secret_half_that_does_not_match_its_digest_is_refused() {
        let config = sample(3);
        let mut encoded = encode(&config).unwrap();
        let forged = "0".repeat(64);
        for shard in &mut encoded.secret_shards {
            shard.content = Some(forged.clone());
        }
        assert!(matches!(
            decode(&encoded.config_shards, &encoded.secret_shards),
            Err(DeliveryError::Decode { half: "Secret", .. })
        ));
        // Nor can a forged digest make a proxy keep stale identities for a half that
        // disagrees with itself.
        encoded.secret_shards[0].content = None;
        let mut two = encoded.secret_shards.clone();
        two.push(Shard {
            index: 0,
            ..encoded.secret_shards[0].clone()
        });
        two[1].content = Some(forged);
        assert!(matches!(
            secret_content(&two, "g1"),
            Err(DeliveryError::MixedContent)
        ));
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
            delivered(&config)
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
            delivered(&config)
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
            content: None,
            signature: None,
            payload: b"not gzip".to_vec(),
        };
        assert!(decode(std::slice::from_ref(&bad), std::slice::from_ref(&bad)).is_err());
        assert!(Shard::parse_annotation("3/2").is_err());
        assert!(Shard::parse_annotation("0/0").is_err());
        assert_eq!(Shard::parse_annotation("1/3"), Ok((1, 3)));
    }

    #[test]
    fn only_configs_signed_with_the_key_verify() {
        let key = b"0123456789abcdef0123456789abcdef";
        let mut encoded = encode(&sample(3)).unwrap();
        assert_eq!(
            verify_signature(&encoded.config_shards, &encoded.secret_shards, "g1", key),
            Err(DeliveryError::Unsigned)
        );
        encoded.sign(key);
        verify_signature(&encoded.config_shards, &encoded.secret_shards, "g1", key).unwrap();
        // Another key, another half, or a replayed signature: refused.
        assert_eq!(
            verify_signature(
                &encoded.config_shards,
                &encoded.secret_shards,
                "g1",
                b"another key"
            ),
            Err(DeliveryError::BadSignature)
        );
        // A partial config (one consumer instead of three) under the real signature.
        let mut partial = encode(&sample(1)).unwrap();
        for shard in partial.secret_shards.iter_mut() {
            shard.signature = encoded.config_shards[0].signature.clone();
        }
        assert_eq!(
            verify_signature(&encoded.config_shards, &partial.secret_shards, "g1", key),
            Err(DeliveryError::BadSignature)
        );
    }
}
