use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::ObjectStatusFields;

// The enums are the WAF engine's own (serde names = manifest strings), so the CRD, the
// compiled config and the engine share one list of groups, operators, transforms and
// actions. Re-exported under the names the CRD has always used.
pub use portcullis_waf::{
    Action as RuleAction, Group as RuleGroup, Mode as WafMode, Operator as RuleOperator,
    OversizeAction, TransformKind as Transform,
};

/// Web application firewall settings, attached to routes or applied namespace-wide.
#[derive(
    CustomResource, Serialize, Deserialize, Debug, Clone, PartialEq, Eq, JsonSchema, Default,
)]
#[kube(
    group = "portcullis.dev",
    version = "v1alpha1",
    kind = "WafPolicy",
    namespaced,
    status = "ObjectStatusFields",
    shortname = "waf",
    category = "portcullis",
    printcolumn(name = "Mode", type_ = "string", json_path = ".spec.mode"),
    printcolumn(
        name = "Paranoia",
        type_ = "integer",
        json_path = ".spec.paranoiaLevel"
    ),
    printcolumn(
        name = "Accepted",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Accepted\")].status"
    ),
    printcolumn(
        name = "Programmed",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Programmed\")].status"
    ),
    printcolumn(
        name = "Blocked",
        type_ = "integer",
        json_path = ".status.enforcement.wafBlocked"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct WafPolicySpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub global: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<WafMode>,
    /// 1-4.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paranoia_level: Option<u8>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub anomaly_threshold: Option<u32>,
    /// Default: all groups.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rule_groups: Vec<RuleGroup>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_methods: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<WafLimits>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub custom_rules: Vec<CustomRule>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exclusions: Vec<Exclusion>,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct WafLimits {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_json_depth: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_args: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_arg_length: Option<u32>,
    /// e.g. `128Ki`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inspect_body_bytes: Option<String>,
    /// A body longer than `inspectBodyBytes`: `Block` (default) answers 413, `InspectPartial`
    /// inspects the first `inspectBodyBytes` and forwards the rest uninspected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oversize_action: Option<OversizeAction>,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct CustomRule {
    pub id: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// `Path`, `Query`, `Args`, `ArgNames`, `Headers`, `Header:NAME`, `Cookies`, `Body`,
    /// `JsonValues`.
    pub targets: Vec<String>,
    #[serde(default)]
    pub operator: RuleOperator,
    #[serde(default)]
    pub value: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub transforms: Vec<Transform>,
    #[serde(default)]
    pub action: RuleAction,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub score: Option<u32>,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct Exclusion {
    pub rule_ids: Vec<u32>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub paths: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub targets: Vec<String>,
}
