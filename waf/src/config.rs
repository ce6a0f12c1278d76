//! A policy in engine terms: rule groups, mode, limits, custom rules and exclusions.
//!
//! These types are the WAF's configuration end to end: the WafPolicy CRD uses the enums
//! (their serde names are the manifest strings), the compiled config serializes them, and
//! the engine is built from them, so there is one list of groups, operators, transforms
//! and actions.

use serde::{Deserialize, Serialize};

/// Rule groups, as named in `WafPolicy.spec.ruleGroups`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub enum Group {
    SqlInjection,
    CrossSiteScripting,
    PathTraversal,
    CommandInjection,
    RemoteFileInclusion,
    PhpInjection,
    JavaInjection,
    ProtocolEnforcement,
    ScannerDetection,
    NoSqlInjection,
    TemplateInjection,
    ServerSideIncludes,
    LdapInjection,
    MailHeaderInjection,
    Deserialization,
    // The policy's own `customRules`: a finding's group, never named in a manifest.
    #[serde(skip)]
    Custom,
}

impl Group {
    pub const BUILTIN: [Group; 15] = [
        Group::SqlInjection,
        Group::CrossSiteScripting,
        Group::PathTraversal,
        Group::CommandInjection,
        Group::RemoteFileInclusion,
        Group::PhpInjection,
        Group::JavaInjection,
        Group::ProtocolEnforcement,
        Group::ScannerDetection,
        Group::NoSqlInjection,
        Group::TemplateInjection,
        Group::ServerSideIncludes,
        Group::LdapInjection,
        Group::MailHeaderInjection,
        Group::Deserialization,
    ];

    /// Metric label (`rule_group`) and audit field.
    pub fn as_str(self) -> &'static str {
        match self {
            Group::SqlInjection => "sqli",
            Group::CrossSiteScripting => "xss",
            Group::PathTraversal => "lfi",
            Group::CommandInjection => "rce",
            Group::RemoteFileInclusion => "rfi",
            Group::PhpInjection => "php",
            Group::JavaInjection => "java",
            Group::ProtocolEnforcement => "protocol",
            Group::ScannerDetection => "scanner",
            Group::NoSqlInjection => "nosql",
            Group::TemplateInjection => "ssti",
            Group::ServerSideIncludes => "ssi",
            Group::LdapInjection => "ldap",
            Group::MailHeaderInjection => "mail",
            Group::Deserialization => "deserialization",
            Group::Custom => "custom",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub enum Mode {
    #[default]
    Block,
    // Score, log and count, never block. (Plain comments on the variants of these enums:
    // a doc comment would turn the CRD schema's `enum` into a `oneOf`.)
    Detect,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub enum Operator {
    #[default]
    Regex,
    Contains,
    BeginsWith,
    Equals,
    DetectSqli,
    DetectXss,
    IpMatch,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub enum TransformKind {
    UrlDecode,
    HtmlEntityDecode,
    Lowercase,
    CompressWhitespace,
    RemoveNulls,
    NormalizePath,
    Base64Decode,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub enum Action {
    // Blocks on its own (in Block mode), whatever the score.
    #[default]
    Block,
    Score,
    Log,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CustomRule {
    pub id: u32,
    pub description: Option<String>,
    pub targets: Vec<String>,
    pub operator: Operator,
    pub value: String,
    pub transforms: Vec<TransformKind>,
    pub action: Action,
    pub score: u32,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Exclusion {
    pub rule_ids: Vec<u32>,
    /// Path prefixes (segment-aligned) the exclusion applies to; empty = all.
    pub paths: Vec<String>,
    /// Target labels (`Query:q`, `Json:$.a`) or collections (`Query`, `Headers`); empty = all.
    pub targets: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Limits {
    pub max_json_depth: u32,
    pub max_args: u32,
    pub max_arg_length: u32,
    pub inspect_body_bytes: u64,
    /// Absent in configs written before it existed: those meant `InspectPartial`'s
    /// behaviour, but a config is rebuilt from the CRDs on every change, so the safe
    /// default wins.
    #[serde(default)]
    pub oversize_action: OversizeAction,
}

/// What a body longer than `inspect_body_bytes` gets: the part past the limit is never
/// inspected, so by default such a body is refused (ModSecurity's recommended setup does the
/// same) instead of carrying an attack past the WAF at its end.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub enum OversizeAction {
    #[default]
    Block,
    InspectPartial,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_json_depth: 32,
            max_args: 255,
            max_arg_length: 8192,
            inspect_body_bytes: 128 * 1024,
            oversize_action: OversizeAction::Block,
        }
    }
}

/// A policy, in engine terms (`WafPolicyConfig::engine_config` in the compiler builds it from
/// the compiled config).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyConfig {
    pub mode: Mode,
    pub paranoia_level: u8,
    pub anomaly_threshold: u32,
    /// Empty = every built-in group.
    pub groups: Vec<Group>,
    /// Uppercase; empty = any method.
    pub allowed_methods: Vec<String>,
    pub limits: Limits,
    pub custom_rules: Vec<CustomRule>,
    pub exclusions: Vec<Exclusion>,
}

impl Default for PolicyConfig {
    fn default() -> Self {
        PolicyConfig {
            mode: Mode::Block,
            paranoia_level: 1,
            anomaly_threshold: 5,
            groups: Vec::new(),
            allowed_methods: Vec::new(),
            limits: Limits::default(),
            custom_rules: Vec::new(),
            exclusions: Vec::new(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum WafError {
    #[error("{0}")]
    CustomRule(CustomRuleIssue),
    #[error("built-in rule set failed to compile: {0}")]
    Builtin(String),
}

/// A problem with one of a policy's custom rules: the WafPolicy's status names it
/// (`spec.customRules[index].field: message`), and the engine refuses to build with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("customRules[{index}].{field}: {message}")]
pub struct CustomRuleIssue {
    /// Position in `customRules`.
    pub index: usize,
    /// `id`, `targets` or `value`.
    pub field: &'static str,
    pub message: String,
}
