//! WafPolicy → `WafPolicyConfig`, and which policies apply to a route.
//!
//! Field validation lives in `policy.rs` (`validate_waf`), except for custom rules, which the
//! WAF crate validates (`portcullis_waf::validate_custom_rules`, the engine's own check).
//! This module fills in defaults and builds the engine once, so that a policy the proxy
//! could not build is refused here, on that policy. It also resolves references, including
//! `global: true` policies, the same way rate limits do: a route that names a missing or
//! refused policy, or whose namespace has a refused global policy, is refused rather than
//! served without the protection it asked for.

use std::collections::BTreeMap;

use portcullis_crds::WafPolicy;
use portcullis_waf::{validate_custom_rules, CustomRule, Engine, Exclusion, Group, Limits};

use super::issues::Issues;
use super::kube_meta::Meta;
use crate::config::WafPolicyConfig;
use crate::units::parse_size_bytes;

pub(crate) const DEFAULT_PARANOIA_LEVEL: u8 = 1;
pub(crate) const DEFAULT_ANOMALY_THRESHOLD: u32 = 5;
pub(crate) const DEFAULT_MAX_JSON_DEPTH: u32 = 32;
pub(crate) const DEFAULT_MAX_ARGS: u32 = 255;
pub(crate) const DEFAULT_MAX_ARG_LENGTH: u32 = 8192;
pub(crate) const DEFAULT_INSPECT_BODY_BYTES: u64 = 128 * 1024;
/// Buffering more than this per request for inspection turns the WAF into a memory
/// exhaustion vector; bodies past it are forwarded uninspected (and the audit says so).
const MAX_INSPECT_BODY_BYTES: u64 = 8 * 1024 * 1024;
const DEFAULT_CUSTOM_SCORE: u32 = 5;

/// `(namespace, name)` → (accepted, global).
#[derive(Debug, Default)]
pub(crate) struct WafIndex {
    pub policies: BTreeMap<(String, String), (bool, bool)>,
}

/// Builds the config of a policy that `policy::validate_waf` accepted so far.
pub(crate) fn compile_waf(
    policy: &WafPolicy,
    meta: &Meta,
    issues: &mut Issues,
) -> Option<WafPolicyConfig> {
    let spec = &policy.spec;
    let limits = spec.limits.clone().unwrap_or_default();
    let inspect_body_bytes = match limits.inspect_body_bytes.as_deref().map(parse_size_bytes) {
        None => DEFAULT_INSPECT_BODY_BYTES,
        Some(Ok(n)) if n <= MAX_INSPECT_BODY_BYTES => n,
        Some(Ok(_)) => {
            issues.invalid("spec.limits.inspectBodyBytes", "must be at most 8Mi");
            DEFAULT_INSPECT_BODY_BYTES
        }
        // Reported by `validate_waf`.
        Some(Err(_)) => DEFAULT_INSPECT_BODY_BYTES,
    };
    for (field, value) in [
        ("maxJsonDepth", limits.max_json_depth),
        ("maxArgs", limits.max_args),
        ("maxArgLength", limits.max_arg_length),
    ] {
        if value == Some(0) {
            issues.invalid(&format!("spec.limits.{field}"), "must be at least 1");
        }
    }
    let mut groups: Vec<Group> = if spec.rule_groups.is_empty() {
        Group::BUILTIN.to_vec()
    } else {
        spec.rule_groups.clone()
    };
    groups.sort();
    groups.dedup();
    let custom_rules: Vec<CustomRule> = spec
        .custom_rules
        .iter()
        .map(|r| CustomRule {
            id: r.id,
            description: r.description.clone(),
            targets: r.targets.clone(),
            operator: r.operator,
            value: r.value.clone(),
            transforms: r.transforms.clone(),
            action: r.action,
            score: r.score.unwrap_or(DEFAULT_CUSTOM_SCORE),
        })
        .collect();
    for issue in validate_custom_rules(&custom_rules) {
        issues.invalid(
            &format!("spec.customRules[{}].{}", issue.index, issue.field),
            issue.message,
        );
    }
    if !issues.is_accepted() {
        return None;
    }
    let config = WafPolicyConfig {
        id: meta.id(),
        namespace: meta.namespace.clone(),
        global: spec.global.unwrap_or(false),
        mode: spec.mode.unwrap_or_default(),
        paranoia_level: spec.paranoia_level.unwrap_or(DEFAULT_PARANOIA_LEVEL),
        anomaly_threshold: spec.anomaly_threshold.unwrap_or(DEFAULT_ANOMALY_THRESHOLD),
        rule_groups: groups,
        allowed_methods: spec
            .allowed_methods
            .iter()
            .map(|m| m.to_ascii_uppercase())
            .collect(),
        limits: Limits {
            max_json_depth: limits.max_json_depth.unwrap_or(DEFAULT_MAX_JSON_DEPTH),
            max_args: limits.max_args.unwrap_or(DEFAULT_MAX_ARGS),
            max_arg_length: limits.max_arg_length.unwrap_or(DEFAULT_MAX_ARG_LENGTH),
            inspect_body_bytes,
            oversize_action: limits.oversize_action.unwrap_or_default(),
        },
        custom_rules,
        exclusions: spec
            .exclusions
            .iter()
            .map(|e| Exclusion {
                rule_ids: e.rule_ids.clone(),
                paths: e.paths.clone(),
                targets: e.targets.clone(),
            })
            .collect(),
    };
    // The proxy builds exactly this; whatever it would refuse is refused here, on the
    // policy, instead of failing the whole config load.
    if let Err(e) = Engine::new(config.engine_config()) {
        issues.invalid("spec", format!("the WAF engine cannot be built: {e}"));
        return None;
    }
    Some(config)
}

/// The WafPolicy ids that apply to a route: its own `wafPolicy`, then the accepted global
/// policies of its namespace.
pub(crate) fn resolve_for_route(
    name: Option<&String>,
    meta: &Meta,
    index: &WafIndex,
    issues: &mut Issues,
) -> Vec<String> {
    let ns = &meta.namespace;
    let mut ids = Vec::new();
    if let Some(name) = name {
        match index.policies.get(&(ns.clone(), name.clone())) {
            Some((true, _)) => ids.push(format!("{ns}/{name}")),
            Some((false, _)) => issues.unresolved(
                "spec.wafPolicy",
                format!(
                    "WafPolicy {ns}/{name} is not Accepted; the route is not served without it"
                ),
                true,
            ),
            None => issues.unresolved(
                "spec.wafPolicy",
                format!("WafPolicy {ns}/{name} not found; the route is not served without it"),
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
        let id = format!("{ns}/{name}");
        if *accepted {
            if !ids.contains(&id) {
                ids.push(id);
            }
        } else {
            issues.unresolved(
                "spec.wafPolicy",
                format!("global WafPolicy {id} is not Accepted; routes of its namespace are not served without it"),
                true,
            );
        }
    }
    ids
}
