//! Compiled WafPolicies (issue #6). Plain data in the WAF engine's own types: the proxy builds
//! its engine from these with [`WafPolicyConfig::engine_config`], and the compiler has built
//! one from each before accepting the policy.

use portcullis_waf::{CustomRule, Exclusion, Group, Limits, Mode, OversizeAction, PolicyConfig};
use serde::{Deserialize, Serialize};

/// One accepted WafPolicy.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct WafPolicyConfig {
    /// `namespace/name`.
    pub id: String,
    pub namespace: String,
    pub global: bool,
    pub mode: Mode,
    /// 1-4.
    pub paranoia_level: u8,
    pub anomaly_threshold: u32,
    /// Enabled groups, never empty: defaults are filled in.
    pub rule_groups: Vec<Group>,
    /// Uppercase; empty = any method.
    pub allowed_methods: Vec<String>,
    pub limits: Limits,
    pub custom_rules: Vec<CustomRule>,
    pub exclusions: Vec<Exclusion>,
}

impl WafPolicyConfig {
    /// The policy in engine terms, for `portcullis_waf::Engine::new`.
    pub fn engine_config(&self) -> PolicyConfig {
        PolicyConfig {
            mode: self.mode,
            paranoia_level: self.paranoia_level,
            anomaly_threshold: self.anomaly_threshold,
            groups: self.rule_groups.clone(),
            allowed_methods: self.allowed_methods.clone(),
            limits: self.limits,
            custom_rules: self.custom_rules.clone(),
            exclusions: self.exclusions.clone(),
        }
    }
}

// The names the compiled config's types had before they became the engine's own.
pub type WafModeConfig = Mode;
pub type WafLimitsConfig = Limits;
pub type WafOversizeActionConfig = OversizeAction;
pub type WafCustomRuleConfig = CustomRule;
pub type WafExclusionConfig = Exclusion;
