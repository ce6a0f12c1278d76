//! RateLimitPolicy and WafPolicy: validated in full, then compiled (`rate_limit`, `waf`).

use portcullis_crds::{BackendType, RateLimitKey, RateLimitPolicy, WafPolicy};

use super::issues::Issues;
use super::kube_meta::sorted;
use super::kube_meta::Meta;
use super::rate_limit::{compile_rate_limit, RateLimitIndex};
use super::redis_backend::validate_shape;
use super::secrets::SecretIndex;
use super::snapshot::Snapshot;
use super::validators::is_token;
use super::waf::{compile_waf, WafIndex};
use crate::config::{GatewayConfig, ObjectKind, RedisPasswordEntry, RedisTlsEntry};
use crate::units::{parse_duration_ms, parse_size_bytes};
use crate::ObjectStatus;

/// Which policies exist, by `(namespace, name)`.
#[derive(Debug, Default)]
pub(crate) struct PolicyIndex {
    pub rate_limits: RateLimitIndex,
    pub wafs: WafIndex,
}

pub(crate) fn compile_policies(
    snapshot: &Snapshot,
    secrets: &SecretIndex<'_>,
    config: &mut GatewayConfig,
    statuses: &mut Vec<ObjectStatus>,
) -> PolicyIndex {
    let mut index = PolicyIndex::default();
    for policy in sorted(&snapshot.rate_limit_policies) {
        let meta = Meta::of(&policy.metadata);
        let mut issues = Issues::default();
        validate_rate_limit(policy, &mut issues);
        let compiled = compile_rate_limit(policy, &meta, secrets, &mut issues);
        let accepted = issues.is_accepted();
        if let (true, Some((compiled, redis))) = (accepted, compiled) {
            let policy = &compiled.id;
            if let Some(password) = redis.password {
                config.secrets.redis_passwords.push(RedisPasswordEntry {
                    policy: policy.clone(),
                    password,
                });
            }
            if let Some(password) = redis.sentinel_password {
                config
                    .secrets
                    .redis_sentinel_passwords
                    .push(RedisPasswordEntry {
                        policy: policy.clone(),
                        password,
                    });
            }
            if let Some(tls) = redis.tls {
                config.secrets.redis_tls.push(RedisTlsEntry {
                    policy: policy.clone(),
                    ..tls
                });
            }
            config
                .objects
                .push(meta.object_ref(ObjectKind::RateLimitPolicy));
            config.rate_limit_policies.push(compiled);
        }
        index.rate_limits.policies.insert(
            (meta.namespace.clone(), meta.name.clone()),
            (accepted, policy.spec.global.unwrap_or(false)),
        );
        statuses.push(issues.into_status(ObjectKind::RateLimitPolicy, &meta));
    }
    for policy in sorted(&snapshot.waf_policies) {
        let meta = Meta::of(&policy.metadata);
        let mut issues = Issues::default();
        validate_waf(policy, &mut issues);
        let compiled = compile_waf(policy, &meta, &mut issues);
        let accepted = issues.is_accepted();
        if let (true, Some(compiled)) = (accepted, compiled) {
            config.objects.push(meta.object_ref(ObjectKind::WafPolicy));
            config.waf_policies.push(compiled);
        }
        index.wafs.policies.insert(
            (meta.namespace.clone(), meta.name.clone()),
            (accepted, policy.spec.global.unwrap_or(false)),
        );
        statuses.push(issues.into_status(ObjectKind::WafPolicy, &meta));
    }
    index
}

fn validate_limits(field: &str, limits: &[portcullis_crds::Limit], issues: &mut Issues) {
    for (i, limit) in limits.iter().enumerate() {
        if limit.requests == 0 {
            issues.invalid(&format!("{field}[{i}].requests"), "must be at least 1");
        }
        match parse_duration_ms(&limit.period) {
            Ok(0) => issues.invalid(&format!("{field}[{i}].period"), "must be positive"),
            Ok(_) => {}
            Err(e) => issues.invalid(&format!("{field}[{i}].period"), e),
        }
    }
}

fn validate_rate_limit(policy: &RateLimitPolicy, issues: &mut Issues) {
    let spec = &policy.spec;
    if spec.limits.is_empty() && spec.quota.is_none() && spec.tiers.is_empty() {
        issues.invalid(
            "spec.limits",
            "at least one limit, tier or quota is required",
        );
    }
    validate_limits("spec.limits", &spec.limits, issues);
    for (i, tier) in spec.tiers.iter().enumerate() {
        if tier.group.is_empty() {
            issues.invalid(&format!("spec.tiers[{i}].group"), "must not be empty");
        }
        validate_limits(&format!("spec.tiers[{i}].limits"), &tier.limits, issues);
    }
    if let Some(quota) = &spec.quota {
        if quota.requests == 0 {
            issues.invalid("spec.quota.requests", "must be at least 1");
        }
    }
    if spec.key == Some(RateLimitKey::Header) && spec.header.as_deref().is_none_or(|h| !is_token(h))
    {
        issues.invalid(
            "spec.header",
            "a valid header name is required with key: Header",
        );
    }
    if let Some(backend) = &spec.backend {
        if backend.type_ == BackendType::Redis {
            match &backend.redis {
                None => issues.invalid("spec.backend.redis", "required with type: Redis"),
                Some(redis) => validate_shape(redis, issues),
            }
        }
    }
}

fn validate_waf(policy: &WafPolicy, issues: &mut Issues) {
    let spec = &policy.spec;
    if let Some(level) = spec.paranoia_level {
        if !(1..=4).contains(&level) {
            issues.invalid(
                "spec.paranoiaLevel",
                format!("{level} is not between 1 and 4"),
            );
        }
    }
    if spec.anomaly_threshold == Some(0) {
        issues.invalid("spec.anomalyThreshold", "must be at least 1");
    }
    for (i, method) in spec.allowed_methods.iter().enumerate() {
        if !is_token(method) {
            issues.invalid(
                &format!("spec.allowedMethods[{i}]"),
                format!("{method:?} is not a method"),
            );
        }
    }
    if let Some(size) = spec
        .limits
        .as_ref()
        .and_then(|l| l.inspect_body_bytes.as_ref())
    {
        if let Err(e) = parse_size_bytes(size) {
            issues.invalid("spec.limits.inspectBodyBytes", e);
        }
    }
    // Custom rules: `compile_waf`, with the WAF crate's own validation.
    for (i, exclusion) in spec.exclusions.iter().enumerate() {
        if exclusion.rule_ids.is_empty() {
            issues.invalid(
                &format!("spec.exclusions[{i}].ruleIds"),
                "at least one rule id is required",
            );
        }
    }
}
