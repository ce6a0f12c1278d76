//! Compiled WafPolicies (issue #6). Plain data: the proxy builds its engine from these.

use serde::{Deserialize, Serialize};

/// One accepted WafPolicy.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct WafPolicyConfig {
    /// `namespace/name`.
    pub id: String,
    pub namespace: String,
    pub global: bool,
    pub mode: WafModeConfig,
    /// 1-4.
    pub paranoia_level: u8,
    pub anomaly_threshold: u32,
    /// Enabled groups (`SqlInjection`, ...), never empty: defaults are filled in.
    pub rule_groups: Vec<String>,
    /// Uppercase; empty = any method.
    pub allowed_methods: Vec<String>,
    pub limits: WafLimitsConfig,
    pub custom_rules: Vec<WafCustomRuleConfig>,
    pub exclusions: Vec<WafExclusionConfig>,
}

#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub enum WafModeConfig {
    Block,
    Detect,
}

#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct WafLimitsConfig {
    pub max_json_depth: u32,
    pub max_args: u32,
    pub max_arg_length: u32,
    pub inspect_body_bytes: u64,
    /// Absent in configs written before it existed: those meant `InspectPartial`'s behaviour,
    /// but a config is rebuilt from the CRDs on every change, so the safe default wins.
    #[serde(default)]
    pub oversize_action: WafOversizeActionConfig,
}

/// What a body longer than `inspectBodyBytes` gets.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WafOversizeActionConfig {
    /// 413 (in `Block` mode; `Detect` mode records it).
    #[default]
    Block,
    /// The first `inspectBodyBytes` are inspected; the audit line says the rest was not.
    InspectPartial,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct WafCustomRuleConfig {
    pub id: u32,
    pub description: Option<String>,
    pub targets: Vec<String>,
    /// `Regex`, `Contains`, `BeginsWith`, `Equals`, `DetectSqli`, `DetectXss`, `IpMatch`.
    pub operator: String,
    pub value: String,
    /// `UrlDecode`, `HtmlEntityDecode`, `Lowercase`, `CompressWhitespace`, `RemoveNulls`,
    /// `NormalizePath`, `Base64Decode`.
    pub transforms: Vec<String>,
    /// `Block`, `Score`, `Log`.
    pub action: String,
    pub score: u32,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct WafExclusionConfig {
    pub rule_ids: Vec<u32>,
    pub paths: Vec<String>,
    pub targets: Vec<String>,
}
