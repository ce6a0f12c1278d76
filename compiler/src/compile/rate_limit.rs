//! RateLimitPolicy → `RateLimitPolicyConfig`, and which policies apply to a route.
//!
//! Field validation shared with the earlier "validate only" stage lives in `policy.rs`;
//! this module adds what only matters once policies are enforced: key/tier combinations,
//! the Redis backend (`redis_backend`: its secrets go to the Secret half, never the
//! ConfigMap half) and the route → policy resolution, including `global: true` policies.

use std::collections::BTreeMap;

use portcullis_crds::{
    BackendType, OnBackendFailure, QuotaPeriod, RateLimitAlgorithm, RateLimitKey, RateLimitPolicy,
};

use super::issues::Issues;
use super::kube_meta::Meta;
use super::redis_backend::{compile_redis_backend, RedisSecrets};
use super::secrets::SecretIndex;
use crate::config::{
    LimitConfig, OnBackendFailureConfig, QuotaConfig, QuotaPeriodConfig, RateLimitAlgorithmConfig,
    RateLimitBackendConfig, RateLimitKeyConfig, RateLimitPolicyConfig, TierConfig,
    DEFAULT_IPV6_PREFIX_LENGTH,
};
use crate::units::parse_duration_ms;

/// What the route compiler needs to know about each RateLimitPolicy.
#[derive(Debug, Default)]
pub(crate) struct RateLimitIndex {
    /// `(namespace, name)` → (accepted, global).
    pub policies: BTreeMap<(String, String), (bool, bool)>,
}

fn key_of(key: Option<RateLimitKey>) -> RateLimitKeyConfig {
    match key.unwrap_or_default() {
        RateLimitKey::Consumer => RateLimitKeyConfig::Consumer,
        RateLimitKey::ClientIp => RateLimitKeyConfig::ClientIp,
        RateLimitKey::ApiKey => RateLimitKeyConfig::ApiKey,
        RateLimitKey::Header => RateLimitKeyConfig::Header,
        RateLimitKey::Route => RateLimitKeyConfig::Route,
        RateLimitKey::Global => RateLimitKeyConfig::Global,
    }
}

fn limits_of(
    field: &str,
    limits: &[portcullis_crds::Limit],
    issues: &mut Issues,
) -> Vec<LimitConfig> {
    let mut out = Vec::new();
    for (i, limit) in limits.iter().enumerate() {
        if limit.burst == Some(0) {
            issues.invalid(&format!("{field}[{i}].burst"), "must be at least 1");
        }
        // Requests and period are reported by `policy::validate_limits`.
        if let Ok(period_ms) = parse_duration_ms(&limit.period) {
            if limit.requests > 0 && period_ms > 0 {
                out.push(LimitConfig {
                    requests: limit.requests,
                    period_ms,
                    burst: limit.burst,
                });
            }
        }
    }
    out
}

/// Builds the config of one policy that `policy::validate_rate_limit` found valid so far;
/// `None` (with issues) when something only checked here is wrong.
pub(crate) fn compile_rate_limit(
    policy: &RateLimitPolicy,
    meta: &Meta,
    secrets: &SecretIndex<'_>,
    issues: &mut Issues,
) -> Option<(RateLimitPolicyConfig, RedisSecrets)> {
    let spec = &policy.spec;
    let key = key_of(spec.key);
    if key.is_pre_auth() && !spec.tiers.is_empty() {
        issues.invalid(
            "spec.tiers",
            format!(
                "tiers pick limits by consumer group, so they need key Consumer or ApiKey, not {key:?}"
            ),
        );
    }
    let limits = limits_of("spec.limits", &spec.limits, issues);
    let tiers = spec
        .tiers
        .iter()
        .enumerate()
        .map(|(i, t)| TierConfig {
            group: t.group.clone(),
            limits: limits_of(&format!("spec.tiers[{i}].limits"), &t.limits, issues),
        })
        .collect();
    let mut redis_secrets = RedisSecrets::default();
    let backend = match &spec.backend {
        Some(b) if b.type_ == BackendType::Redis => {
            let redis = b.redis.as_ref()?;
            let (backend, found) = compile_redis_backend(redis, meta, secrets, issues);
            redis_secrets = found;
            backend
        }
        _ => RateLimitBackendConfig::Local,
    };
    let ipv6_prefix_length = match spec.ipv6_prefix_length {
        None => DEFAULT_IPV6_PREFIX_LENGTH,
        Some(bits @ 1..=128) => bits,
        Some(_) => {
            issues.invalid("spec.ipv6PrefixLength", "must be between 1 and 128");
            DEFAULT_IPV6_PREFIX_LENGTH
        }
    };
    if !issues.is_accepted() {
        return None;
    }
    let config = RateLimitPolicyConfig {
        id: meta.id(),
        namespace: meta.namespace.clone(),
        global: spec.global.unwrap_or(false),
        key,
        header: spec.header.as_ref().map(|h| h.to_ascii_lowercase()),
        algorithm: match spec.algorithm.unwrap_or_default() {
            RateLimitAlgorithm::SlidingWindow => RateLimitAlgorithmConfig::SlidingWindow,
            RateLimitAlgorithm::FixedWindow => RateLimitAlgorithmConfig::FixedWindow,
            RateLimitAlgorithm::TokenBucket => RateLimitAlgorithmConfig::TokenBucket,
        },
        limits,
        tiers,
        quota: spec.quota.as_ref().map(|q| QuotaConfig {
            requests: q.requests,
            period: match q.period {
                QuotaPeriod::Day => QuotaPeriodConfig::Day,
                QuotaPeriod::Month => QuotaPeriodConfig::Month,
            },
        }),
        backend,
        on_backend_failure: match spec.on_backend_failure.unwrap_or_default() {
            OnBackendFailure::Deny => OnBackendFailureConfig::Deny,
            OnBackendFailure::Allow => OnBackendFailureConfig::Allow,
            OnBackendFailure::LocalFallback => OnBackendFailureConfig::LocalFallback,
        },
        response_headers: spec.response_headers.unwrap_or(true),
        ipv6_prefix_length,
    };
    Some((config, redis_secrets))
}

/// The policy ids that apply to a route: its own references in order, then the accepted
/// `global: true` policies of its namespace. A reference to a missing or refused policy,
/// or a refused global policy in the namespace, refuses the route: it must never run
/// believing it is limited.
pub(crate) fn resolve_for_route(
    names: &[String],
    meta: &Meta,
    index: &RateLimitIndex,
    issues: &mut Issues,
) -> Vec<String> {
    let mut ids: Vec<String> = Vec::new();
    let ns = &meta.namespace;
    for (i, name) in names.iter().enumerate() {
        let field = format!("spec.rateLimitPolicies[{i}]");
        match index.policies.get(&(ns.clone(), name.clone())) {
            Some((true, _)) => {
                let id = format!("{ns}/{name}");
                if !ids.contains(&id) {
                    ids.push(id);
                }
            }
            Some((false, _)) => issues.unresolved(
                &field,
                format!("RateLimitPolicy {ns}/{name} is not Accepted; the route is not served without it"),
                true,
            ),
            None => issues.unresolved(
                &field,
                format!("RateLimitPolicy {ns}/{name} not found; the route is not served without it"),
                true,
            ),
        }
    }
    let globals = index
        .policies
        .range((ns.clone(), String::new())..)
        .take_while(|((n, _), _)| n == ns)
        .filter(|(_, (_, global))| *global);
    for ((_, name), (accepted, _)) in globals {
        if *accepted {
            let id = format!("{ns}/{name}");
            if !ids.contains(&id) {
                ids.push(id);
            }
        } else {
            issues.unresolved(
                "spec.rateLimitPolicies",
                format!("global RateLimitPolicy {ns}/{name} is not Accepted; routes of its namespace are not served without it"),
                true,
            );
        }
    }
    ids
}
