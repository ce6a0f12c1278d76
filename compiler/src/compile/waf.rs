//! WafPolicy → `WafPolicyConfig`, and which policies apply to a route.
//!
//! Field validation lives in `policy.rs` (`validate_waf`); this module fills in defaults and
//! resolves references, including `global: true` policies, the same way rate limits do: a
//! route that names a missing or refused policy, or whose namespace has a refused global
//! policy, is refused rather than served without the protection it asked for.

use std::collections::BTreeMap;

use portcullis_crds::{
    OversizeAction, RuleAction, RuleGroup, RuleOperator, Transform, WafMode, WafPolicy,
};

use super::issues::Issues;
use super::kube_meta::Meta;
use crate::config::{
    WafCustomRuleConfig, WafExclusionConfig, WafLimitsConfig, WafModeConfig,
    WafOversizeActionConfig, WafPolicyConfig,
};
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

fn group_name(g: RuleGroup) -> &'static str {
    match g {
        RuleGroup::SqlInjection => "SqlInjection",
        RuleGroup::CrossSiteScripting => "CrossSiteScripting",
        RuleGroup::PathTraversal => "PathTraversal",
        RuleGroup::CommandInjection => "CommandInjection",
        RuleGroup::RemoteFileInclusion => "RemoteFileInclusion",
        RuleGroup::PhpInjection => "PhpInjection",
        RuleGroup::JavaInjection => "JavaInjection",
        RuleGroup::ProtocolEnforcement => "ProtocolEnforcement",
        RuleGroup::ScannerDetection => "ScannerDetection",
        RuleGroup::NoSqlInjection => "NoSqlInjection",
        RuleGroup::TemplateInjection => "TemplateInjection",
        RuleGroup::ServerSideIncludes => "ServerSideIncludes",
        RuleGroup::LdapInjection => "LdapInjection",
        RuleGroup::MailHeaderInjection => "MailHeaderInjection",
        RuleGroup::Deserialization => "Deserialization",
    }
}

const ALL_GROUPS: [RuleGroup; 15] = [
    RuleGroup::SqlInjection,
    RuleGroup::CrossSiteScripting,
    RuleGroup::PathTraversal,
    RuleGroup::CommandInjection,
    RuleGroup::RemoteFileInclusion,
    RuleGroup::PhpInjection,
    RuleGroup::JavaInjection,
    RuleGroup::ProtocolEnforcement,
    RuleGroup::ScannerDetection,
    RuleGroup::NoSqlInjection,
    RuleGroup::TemplateInjection,
    RuleGroup::ServerSideIncludes,
    RuleGroup::LdapInjection,
    RuleGroup::MailHeaderInjection,
    RuleGroup::Deserialization,
];

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
    let mut groups: Vec<RuleGroup> = if spec.rule_groups.is_empty() {
        ALL_GROUPS.to_vec()
    } else {
        spec.rule_groups.clone()
    };
    groups.sort();
    groups.dedup();
    if !issues.is_accepted() {
        return None;
    }
    Some(WafPolicyConfig {
        id: meta.id(),
        namespace: meta.namespace.clone(),
        global: spec.global.unwrap_or(false),
        mode: match spec.mode.unwrap_or_default() {
            WafMode::Block => WafModeConfig::Block,
            WafMode::Detect => WafModeConfig::Detect,
        },
        paranoia_level: spec.paranoia_level.unwrap_or(DEFAULT_PARANOIA_LEVEL),
        anomaly_threshold: spec.anomaly_threshold.unwrap_or(DEFAULT_ANOMALY_THRESHOLD),
        rule_groups: groups
            .into_iter()
            .map(|g| group_name(g).to_string())
            .collect(),
        allowed_methods: spec
            .allowed_methods
            .iter()
            .map(|m| m.to_ascii_uppercase())
            .collect(),
        limits: WafLimitsConfig {
            max_json_depth: limits.max_json_depth.unwrap_or(DEFAULT_MAX_JSON_DEPTH),
            max_args: limits.max_args.unwrap_or(DEFAULT_MAX_ARGS),
            max_arg_length: limits.max_arg_length.unwrap_or(DEFAULT_MAX_ARG_LENGTH),
            inspect_body_bytes,
            oversize_action: match limits.oversize_action.unwrap_or_default() {
                OversizeAction::Block => WafOversizeActionConfig::Block,
                OversizeAction::InspectPartial => WafOversizeActionConfig::InspectPartial,
            },
        },
        custom_rules: spec
            .custom_rules
            .iter()
            .map(|r| WafCustomRuleConfig {
                id: r.id,
                description: r.description.clone(),
                targets: r.targets.clone(),
                operator: match r.operator {
                    RuleOperator::Regex => "Regex",
                    RuleOperator::Contains => "Contains",
                    RuleOperator::BeginsWith => "BeginsWith",
                    RuleOperator::Equals => "Equals",
                    RuleOperator::DetectSqli => "DetectSqli",
                    RuleOperator::DetectXss => "DetectXss",
                    RuleOperator::IpMatch => "IpMatch",
                }
                .to_string(),
                value: r.value.clone(),
                transforms: r
                    .transforms
                    .iter()
                    .map(|t| {
                        match t {
                            Transform::UrlDecode => "UrlDecode",
                            Transform::HtmlEntityDecode => "HtmlEntityDecode",
                            Transform::Lowercase => "Lowercase",
                            Transform::CompressWhitespace => "CompressWhitespace",
                            Transform::RemoveNulls => "RemoveNulls",
                            Transform::NormalizePath => "NormalizePath",
                            Transform::Base64Decode => "Base64Decode",
                        }
                        .to_string()
                    })
                    .collect(),
                action: match r.action {
                    RuleAction::Block => "Block",
                    RuleAction::Score => "Score",
                    RuleAction::Log => "Log",
                }
                .to_string(),
                score: r.score.unwrap_or(DEFAULT_CUSTOM_SCORE),
            })
            .collect(),
        exclusions: spec
            .exclusions
            .iter()
            .map(|e| WafExclusionConfig {
                rule_ids: e.rule_ids.clone(),
                paths: e.paths.clone(),
                targets: e.targets.clone(),
            })
            .collect(),
    })
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
