//! The four Portcullis custom resources (`portcullis.dev/v1alpha1`).
//!
//! These types are the user-facing contract (docs/status.md per field). They carry no behaviour:
//! validation and translation live in `portcullis-compiler`, so that the same checks run in
//! the operator, its admission webhook and the standalone proxy.

// kube's derive repeats `type_ = ...` inside each `printcolumn(...)`, which clippy misreads.
#![allow(clippy::duplicated_attributes)]

mod common;
mod consumer;
pub mod gateway;
mod rate_limit;
mod route;
mod status;
mod waf;

pub use common::*;
pub use consumer::*;
pub use rate_limit::*;
pub use route::*;
pub use status::*;
pub use waf::*;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;

pub const GROUP: &str = "portcullis.dev";
pub const VERSION: &str = "v1alpha1";
pub const API_VERSION: &str = "portcullis.dev/v1alpha1";

/// Every CRD of the project, in the order the manifests are written.
pub fn all_crds() -> Vec<CustomResourceDefinition> {
    [
        ApiRoute::crd(),
        ConsumerCredential::crd(),
        RateLimitPolicy::crd(),
        WafPolicy::crd(),
    ]
    .into_iter()
    .map(without_null_enum_values)
    .map(with_bounds)
    .collect()
}

/// Largest string, in bytes, of fields with no bound of their own.
pub const MAX_STRING_LENGTH: u64 = 4096;
/// Most items of lists with no bound of their own.
pub const MAX_ITEMS: u64 = 1000;

/// Bounds on every field, so that the API server refuses values the operator could not
/// decode (`weight: 4294967296` in a `u32`) or that no tenant needs (megabyte strings,
/// lists of millions). Set here, over the generated schema, so that no field is forgotten;
/// the fields that need other bounds are named. Nesting depth of free-form JSON (a JSON
/// Schema) cannot be bounded in a structural schema without CEL: the webhook and the
/// compiler refuse it.
fn with_bounds(crd: CustomResourceDefinition) -> CustomResourceDefinition {
    fn bound(name: &str, value: &mut serde_json::Value) {
        let serde_json::Value::Object(map) = value else {
            return;
        };
        let type_ = map.get("type").and_then(|t| t.as_str()).map(str::to_string);
        let format = map
            .get("format")
            .and_then(|t| t.as_str())
            .map(str::to_string);
        match type_.as_deref() {
            Some("integer") if !map.contains_key("maximum") => {
                let max: u64 = match (name, format.as_deref()) {
                    ("weight", _) => 10_000,
                    ("attempts", _) => 10,
                    ("status", _) => 599,
                    (_, Some("uint8")) => u8::MAX.into(),
                    (_, Some("uint16")) => u16::MAX.into(),
                    (_, Some("int32")) => i32::MAX as u64,
                    (_, Some("uint32")) => u32::MAX.into(),
                    // JSON numbers are exact up to 2^53 in every client.
                    _ => (1 << 53) - 1,
                };
                map.insert("maximum".into(), max.into());
            }
            Some("string") if !map.contains_key("maxLength") && !map.contains_key("enum") => {
                let max = match name {
                    // A direct response's body and PEM documents are the large strings.
                    "body" => 1 << 20,
                    "publicKey" => 16 * 1024,
                    _ => MAX_STRING_LENGTH,
                };
                map.insert("maxLength".into(), max.into());
            }
            Some("array") if !map.contains_key("maxItems") => {
                let max = match name {
                    "hosts" | "paths" | "targets" | "methods" => 100,
                    _ => MAX_ITEMS,
                };
                map.insert("maxItems".into(), max.into());
            }
            _ => {}
        }
        if let Some(serde_json::Value::Object(properties)) = map.get_mut("properties") {
            for (child, schema) in properties.iter_mut() {
                bound(child, schema);
            }
        }
        if let Some(items) = map.get_mut("items") {
            bound(name, items);
        }
        if let Some(serde_json::Value::Object(_)) = map.get("additionalProperties") {
            if let Some(values) = map.get_mut("additionalProperties") {
                bound("", values);
            }
        }
        for key in ["anyOf", "oneOf", "allOf"] {
            if let Some(serde_json::Value::Array(options)) = map.get_mut(key) {
                for option in options {
                    bound(name, option);
                }
            }
        }
    }
    let Ok(mut value) = serde_json::to_value(&crd) else {
        return crd;
    };
    if let Some(serde_json::Value::Array(versions)) = value.pointer_mut("/spec/versions") {
        for version in versions {
            if let Some(spec) = version.pointer_mut("/schema/openAPIV3Schema/properties/spec") {
                bound("spec", spec);
            }
        }
    }
    serde_json::from_value(value).unwrap_or(crd)
}

/// schemars lists `null` among the values of an optional enum. Kubernetes 1.20 rejects a
/// CRD with a `null` enum value (with a misleading "per-version schemas" error); the field's
/// `nullable: true` already allows null, so the entry is only dropped.
fn without_null_enum_values(crd: CustomResourceDefinition) -> CustomResourceDefinition {
    fn strip(value: &mut serde_json::Value) {
        match value {
            serde_json::Value::Object(map) => {
                if let Some(serde_json::Value::Array(values)) = map.get_mut("enum") {
                    values.retain(|v| !v.is_null());
                }
                map.values_mut().for_each(strip);
            }
            serde_json::Value::Array(items) => items.iter_mut().for_each(strip),
            _ => {}
        }
    }
    let Ok(mut value) = serde_json::to_value(&crd) else {
        return crd;
    };
    strip(&mut value);
    serde_json::from_value(value).unwrap_or(crd)
}

/// Renders one CRD as the YAML document we commit under `crds/manifests/`.
pub fn crd_yaml(crd: &CustomResourceDefinition) -> Result<String, serde_norway::Error> {
    let body = serde_norway::to_string(crd)?;
    Ok(format!(
        "# Generated by `cargo run -p portcullis-crds --bin portcullis-crdgen`; do not edit.\n{body}"
    ))
}

/// File name of a CRD's manifest, e.g. `apiroutes.portcullis.dev.yaml`.
pub fn crd_file_name(crd: &CustomResourceDefinition) -> String {
    format!("{}.yaml", crd.metadata.name.clone().unwrap_or_default())
}
