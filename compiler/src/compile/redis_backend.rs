//! `spec.backend.redis` → how the proxy reaches Redis: one URL, a cluster's seeds or a
//! Sentinel-managed master; plain or TLS (`rediss://`); the ACL user; and the secrets that
//! go with it (passwords, CA, client certificate), which go to the Secret half of the
//! compiled config, never the ConfigMap half.
//!
//! Everything the proxy would trip over is refused here with the field that is wrong: a
//! CA or client certificate that does not load, TLS material without `rediss://`, URLs
//! mixing `redis://` and `rediss://` (half a cluster in clear text is no TLS).

use portcullis_crds::{RedisBackend, SecretKeyRef};

use super::issues::Issues;
use super::kube_meta::Meta;
use super::secrets::{SecretIndex, SecretLookup};
use super::tls::{validate_ca_bundle, validate_certificate, CA_KEY, CERT_KEY, PRIVATE_KEY_KEY};
use crate::config::{RateLimitBackendConfig, RedisSentinelConfig, RedisTlsEntry};
use crate::units::parse_duration_ms;

pub(crate) const DEFAULT_REDIS_TIMEOUT_MS: u64 = 50;
/// A Redis round trip that may take longer than this is no longer a rate limiter but an
/// outage amplifier; users who need more should fix the network.
const MAX_REDIS_TIMEOUT_MS: u64 = 5_000;

/// The secret half of one policy's Redis backend.
#[derive(Debug, Default)]
pub(crate) struct RedisSecrets {
    pub password: Option<String>,
    pub sentinel_password: Option<String>,
    /// `policy` is left empty: the caller knows the policy's id.
    pub tls: Option<RedisTlsEntry>,
}

/// Checks done before compiling (the "validate only" stage): the backend's shape and URLs.
pub(crate) fn validate_shape(redis: &RedisBackend, issues: &mut Issues) {
    let shapes = [
        redis.url.is_some(),
        !redis.cluster_urls.is_empty(),
        redis.sentinel.is_some(),
    ];
    match shapes.iter().filter(|s| **s).count() {
        0 => issues.invalid(
            "spec.backend.redis",
            "set one of url, clusterUrls or sentinel",
        ),
        1 => {}
        _ => issues.invalid(
            "spec.backend.redis",
            "set only one of url, clusterUrls or sentinel",
        ),
    }
    let field_urls = [
        (
            "spec.backend.redis.url",
            redis.url.iter().collect::<Vec<_>>(),
        ),
        (
            "spec.backend.redis.clusterUrls",
            redis.cluster_urls.iter().collect(),
        ),
        (
            "spec.backend.redis.sentinel.urls",
            redis.sentinel.iter().flat_map(|s| s.urls.iter()).collect(),
        ),
    ];
    for (field, urls) in field_urls {
        for url in urls {
            if !(url.starts_with("redis://") || url.starts_with("rediss://")) {
                issues.invalid(
                    field,
                    format!("{url:?} must start with redis:// or rediss://"),
                );
            }
        }
    }
    if let Some(sentinel) = &redis.sentinel {
        if sentinel.master_name.trim().is_empty() {
            issues.invalid(
                "spec.backend.redis.sentinel.masterName",
                "must not be empty",
            );
        }
        if sentinel.urls.is_empty() {
            issues.invalid(
                "spec.backend.redis.sentinel.urls",
                "at least one sentinel is required",
            );
        }
    }
    if let Some(timeout) = &redis.timeout {
        if let Err(e) = parse_duration_ms(timeout) {
            issues.invalid("spec.backend.redis.timeout", e);
        }
    }
}

/// Compiles a backend that [`validate_shape`] has seen; issues for what is wrong.
pub(crate) fn compile_redis_backend(
    redis: &RedisBackend,
    meta: &Meta,
    secrets: &SecretIndex<'_>,
    issues: &mut Issues,
) -> (RateLimitBackendConfig, RedisSecrets) {
    let mut out = RedisSecrets::default();
    let cluster = !redis.cluster_urls.is_empty();
    let urls: Vec<String> = if cluster {
        redis.cluster_urls.clone()
    } else {
        redis.url.iter().cloned().collect()
    };
    let (scheme_field, all_urls): (&str, &[String]) = match &redis.sentinel {
        Some(s) => ("spec.backend.redis.sentinel.urls", &s.urls),
        None if cluster => ("spec.backend.redis.clusterUrls", &urls),
        None => ("spec.backend.redis.url", &urls),
    };
    let tls_count = all_urls
        .iter()
        .filter(|u| u.starts_with("rediss://"))
        .count();
    let tls = tls_count > 0;
    if tls && tls_count != all_urls.len() {
        issues.invalid(
            scheme_field,
            "mix of redis:// and rediss://; use rediss:// for all or none (a deployment is either TLS or not)",
        );
    }
    let timeout_ms = match redis.timeout.as_deref().map(parse_duration_ms) {
        None => DEFAULT_REDIS_TIMEOUT_MS,
        Some(Ok(ms)) if (1..=MAX_REDIS_TIMEOUT_MS).contains(&ms) => ms,
        Some(Ok(_)) => {
            issues.invalid("spec.backend.redis.timeout", "must be between 1ms and 5s");
            DEFAULT_REDIS_TIMEOUT_MS
        }
        // Reported by `validate_shape`.
        Some(Err(_)) => DEFAULT_REDIS_TIMEOUT_MS,
    };
    if let Some(r) = &redis.password_secret_ref {
        out.password = password(
            r,
            "spec.backend.redis.passwordSecretRef",
            meta,
            secrets,
            issues,
        );
    }
    let username = match &redis.username {
        Some(u) if u.is_empty() || u.bytes().any(|b| b.is_ascii_whitespace()) => {
            issues.invalid(
                "spec.backend.redis.username",
                "must be a non-empty ACL user name without spaces",
            );
            None
        }
        Some(_) if redis.password_secret_ref.is_none() => {
            issues.invalid(
                "spec.backend.redis.username",
                "an ACL user needs passwordSecretRef (AUTH takes the user and its password)",
            );
            None
        }
        other => other.clone(),
    };
    let sentinel = redis.sentinel.as_ref().map(|s| {
        if let Some(r) = &s.password_secret_ref {
            out.sentinel_password = password(
                r,
                "spec.backend.redis.sentinel.passwordSecretRef",
                meta,
                secrets,
                issues,
            );
        }
        RedisSentinelConfig {
            master_name: s.master_name.clone(),
            urls: s.urls.clone(),
            has_password: out.sentinel_password.is_some(),
        }
    });
    out.tls = tls_material(redis, tls, meta, secrets, issues);
    let config = RateLimitBackendConfig::Redis {
        urls,
        cluster,
        timeout_ms,
        has_password: out.password.is_some(),
        username,
        sentinel,
        tls,
    };
    (config, out)
}

/// The CA and client certificate of a `rediss://` backend, loaded as the proxy will load
/// them. `None` without either (the system roots, no client certificate).
fn tls_material(
    redis: &RedisBackend,
    tls: bool,
    meta: &Meta,
    secrets: &SecretIndex<'_>,
    issues: &mut Issues,
) -> Option<RedisTlsEntry> {
    if !tls {
        for (set, field) in [
            (
                redis.ca_secret_ref.is_some(),
                "spec.backend.redis.caSecretRef",
            ),
            (
                redis.client_cert_secret_ref.is_some(),
                "spec.backend.redis.clientCertSecretRef",
            ),
        ] {
            if set {
                issues.invalid(
                    field,
                    "TLS material needs rediss:// URLs; with redis:// it would be unused and the connection in clear text",
                );
            }
        }
        return None;
    }
    let mut entry = RedisTlsEntry::default();
    if let Some(r) = &redis.ca_secret_ref {
        let field = "spec.backend.redis.caSecretRef";
        if let Some(pem) = secret_value(&r.name, CA_KEY, field, meta, secrets, issues) {
            match validate_ca_bundle(&pem) {
                Ok(text) => entry.ca_pem = Some(text),
                Err(e) => issues.invalid_ref_blocking(field, format!("Secret {}: {e}", r.name)),
            }
        }
    }
    if let Some(r) = &redis.client_cert_secret_ref {
        let field = "spec.backend.redis.clientCertSecretRef";
        let chain = secret_value(&r.name, CERT_KEY, field, meta, secrets, issues);
        let key = secret_value(&r.name, PRIVATE_KEY_KEY, field, meta, secrets, issues);
        if let (Some(chain), Some(key)) = (chain, key) {
            let texts = validate_certificate(&chain, &key).and_then(|()| {
                match (String::from_utf8(chain), String::from_utf8(key)) {
                    (Ok(c), Ok(k)) => Ok((c, k)),
                    _ => Err("tls.crt and tls.key must be UTF-8 PEM text".to_string()),
                }
            });
            match texts {
                Ok((c, k)) => {
                    entry.client_cert_pem = Some(c);
                    entry.client_key_pem = Some(k);
                }
                Err(e) => issues.invalid_ref_blocking(field, format!("Secret {}: {e}", r.name)),
            }
        }
    }
    (entry.ca_pem.is_some() || entry.client_cert_pem.is_some()).then_some(entry)
}

fn secret_value(
    name: &str,
    key: &str,
    field: &str,
    meta: &Meta,
    secrets: &SecretIndex<'_>,
    issues: &mut Issues,
) -> Option<Vec<u8>> {
    match secrets.get(&meta.namespace, name, key) {
        SecretLookup::Found(bytes) => Some(bytes),
        SecretLookup::SecretMissing => {
            issues.unresolved(
                field,
                format!("Secret {}/{name} not found", meta.namespace),
                true,
            );
            None
        }
        SecretLookup::KeyMissing => {
            issues.unresolved(
                field,
                format!("Secret {}/{name} has no key {key}", meta.namespace),
                true,
            );
            None
        }
    }
}

/// A password from a Secret (key default `password`); without it the backend could never
/// authenticate, so the policy is refused.
fn password(
    r: &SecretKeyRef,
    field: &str,
    meta: &Meta,
    secrets: &SecretIndex<'_>,
    issues: &mut Issues,
) -> Option<String> {
    let key = r.key.as_deref().unwrap_or("password");
    let found = secret_value(&r.name, key, field, meta, secrets, issues);
    let password = match found.map(String::from_utf8) {
        Some(Ok(p)) if !p.is_empty() => Some(p),
        Some(_) => {
            issues.invalid_ref(
                field,
                format!(
                    "Secret {} key {key} is not a non-empty UTF-8 password",
                    r.name
                ),
            );
            None
        }
        None => None,
    };
    if password.is_none() {
        issues.invalid(
            field,
            "the Redis password is required to enforce this policy",
        );
    }
    password
}
