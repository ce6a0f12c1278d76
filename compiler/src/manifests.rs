//! Reads the YAML documents of standalone mode (the four kinds plus `v1` Secrets, Ingresses
//! and the Gateway API kinds) into a
//! [`Snapshot`]. Parsing is pure; reading files is the caller's job.
//!
//! Unlike the API server, which silently prunes unknown fields, standalone mode reports them:
//! a misspelt field would otherwise disable a policy without a word.

use std::sync::Arc;

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::api::networking::v1::{Ingress, IngressClass};
use portcullis_crds::gateway::{Gateway, GatewayClass, HTTPRoute, ReferenceGrant};
use portcullis_crds::{ApiRoute, ConsumerCredential, RateLimitPolicy, WafPolicy};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::Snapshot;

/// A document that could not become an object; the message names the source and field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{source_name}: {message}")]
pub struct ManifestError {
    /// `file` or `file#N` (N counts documents from 1).
    pub source_name: String,
    pub message: String,
}

const DEFAULT_NAMESPACE: &str = "default";

/// Adds every document of `text` to `snapshot`; returns the documents that failed.
pub fn parse_into(snapshot: &mut Snapshot, source_name: &str, text: &str) -> Vec<ManifestError> {
    let mut errors = Vec::new();
    for (index, document) in serde_norway::Deserializer::from_str(text).enumerate() {
        let doc_name = format!("{source_name}#{}", index + 1);
        let value = match Value::deserialize(document) {
            Ok(value) => value,
            Err(e) => {
                // A syntax error leaves the rest of the stream unreadable.
                errors.push(ManifestError {
                    source_name: doc_name,
                    message: format!("invalid YAML: {e}"),
                });
                break;
            }
        };
        if value.is_null() {
            continue; // empty document, e.g. a trailing `---`
        }
        if let Err(message) = add_document(snapshot, value) {
            errors.push(ManifestError {
                source_name: doc_name,
                message,
            });
        }
    }
    errors
}

fn add_document(snapshot: &mut Snapshot, mut value: Value) -> Result<(), String> {
    let api_version = value
        .get("apiVersion")
        .and_then(Value::as_str)
        .unwrap_or("");
    let kind = value
        .get("kind")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let expected_api = match kind.as_str() {
        "Secret" => "v1",
        "ApiRoute" | "ConsumerCredential" | "RateLimitPolicy" | "WafPolicy" => {
            portcullis_crds::API_VERSION
        }
        "Ingress" | "IngressClass" => "networking.k8s.io/v1",
        "GatewayClass" | "Gateway" | "HTTPRoute" => "gateway.networking.k8s.io/v1",
        "ReferenceGrant" => "gateway.networking.k8s.io/v1beta1",
        "" => return Err("missing `kind`".into()),
        other => {
            return Err(format!(
                "unsupported kind {other:?}: expected ApiRoute, ConsumerCredential, \
                 RateLimitPolicy, WafPolicy, v1 Secret, Ingress, IngressClass, GatewayClass, \
                 Gateway, HTTPRoute or ReferenceGrant"
            ))
        }
    };
    let cluster_scoped = matches!(kind.as_str(), "IngressClass" | "GatewayClass");
    if api_version != expected_api {
        return Err(format!(
            "{kind}: apiVersion must be {expected_api:?}, found {api_version:?}"
        ));
    }
    let name = value
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    if name.is_empty() {
        return Err(format!("{kind}: metadata.name is required"));
    }
    if value.pointer("/metadata/namespace").is_none() && !cluster_scoped {
        if let Some(meta) = value.get_mut("metadata").and_then(Value::as_object_mut) {
            meta.insert("namespace".into(), Value::String(DEFAULT_NAMESPACE.into()));
        }
    }
    let label = format!("{kind} {name}");
    match kind.as_str() {
        "ApiRoute" => snapshot
            .routes
            .push(Arc::new(typed::<ApiRoute>(&label, value)?)),
        "ConsumerCredential" => snapshot
            .consumers
            .push(Arc::new(typed::<ConsumerCredential>(&label, value)?)),
        "RateLimitPolicy" => snapshot
            .rate_limit_policies
            .push(Arc::new(typed::<RateLimitPolicy>(&label, value)?)),
        "WafPolicy" => snapshot
            .waf_policies
            .push(Arc::new(typed::<WafPolicy>(&label, value)?)),
        "Ingress" => snapshot
            .ingresses
            .push(Arc::new(typed::<Ingress>(&label, value)?)),
        "IngressClass" => snapshot
            .ingress_classes
            .push(Arc::new(typed::<IngressClass>(&label, value)?)),
        "GatewayClass" => snapshot
            .gateway_classes
            .push(Arc::new(typed::<GatewayClass>(&label, value)?)),
        "Gateway" => snapshot
            .gateways
            .push(Arc::new(typed::<Gateway>(&label, value)?)),
        "HTTPRoute" => snapshot
            .http_routes
            .push(Arc::new(typed::<HTTPRoute>(&label, value)?)),
        "ReferenceGrant" => snapshot
            .reference_grants
            .push(Arc::new(typed::<ReferenceGrant>(&label, value)?)),
        _ => snapshot
            .secrets
            .push(Arc::new(typed::<Secret>(&label, value)?)),
    }
    Ok(())
}

fn typed<T: DeserializeOwned + Serialize>(label: &str, value: Value) -> Result<T, String> {
    let object: T = serde_json::from_value(value.clone()).map_err(|e| format!("{label}: {e}"))?;
    let round_trip = serde_json::to_value(&object).map_err(|e| format!("{label}: {e}"))?;
    for section in ["spec", "data", "stringData"] {
        if let (Some(input), Some(known)) = (value.get(section), round_trip.get(section)) {
            if let Some(path) = first_unknown_field(input, known, section) {
                return Err(format!("{label}: unknown field `{path}`"));
            }
        } else if let (Some(input), None) = (value.get(section), round_trip.get(section)) {
            if !is_empty(input) && section == "spec" {
                if let Some(path) = first_unknown_field(input, &Value::Null, section) {
                    return Err(format!("{label}: unknown field `{path}`"));
                }
            }
        }
    }
    Ok(object)
}

/// The first key present (and non-empty) in `input` but absent from the typed round trip.
fn first_unknown_field(input: &Value, known: &Value, path: &str) -> Option<String> {
    match input {
        Value::Object(map) => {
            for (key, child) in map {
                let child_path = format!("{path}.{key}");
                match known.get(key) {
                    Some(known_child) => {
                        if let Some(found) = first_unknown_field(child, known_child, &child_path) {
                            return Some(found);
                        }
                    }
                    None if !is_empty(child) => return Some(child_path),
                    None => {}
                }
            }
            None
        }
        Value::Array(items) => items.iter().enumerate().find_map(|(i, child)| {
            let known_child = known.get(i).unwrap_or(&Value::Null);
            first_unknown_field(child, known_child, &format!("{path}[{i}]"))
        }),
        _ => None,
    }
}

fn is_empty(value: &Value) -> bool {
    match value {
        Value::Null => true,
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.is_empty(),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_multi_document_yaml_and_defaults_the_namespace() {
        let mut snapshot = Snapshot::default();
        let text = r#"
apiVersion: portcullis.dev/v1alpha1
kind: ApiRoute
metadata: {name: hello}
spec:
  paths: [{type: Prefix, value: /}]
  upstream: {directResponse: {status: 200, body: hi}}
---
apiVersion: v1
kind: Secret
metadata: {name: keys, namespace: shop}
stringData: {api-key: s3cret}
---
"#;
        let errors = parse_into(&mut snapshot, "a.yaml", text);
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(snapshot.routes.len(), 1);
        assert_eq!(
            snapshot.routes[0].metadata.namespace.as_deref(),
            Some("default")
        );
        assert_eq!(snapshot.secrets.len(), 1);
    }

    #[test]
    fn names_unknown_fields_and_wrong_kinds() {
        let mut snapshot = Snapshot::default();
        let text = r#"
apiVersion: portcullis.dev/v1alpha1
kind: ApiRoute
metadata: {name: typo}
spec:
  paths: [{type: Prefix, value: /, vaule: x}]
  upstream: {targets: [{url: "http://a:1"}]}
---
apiVersion: portcullis.dev/v1alpha1
kind: Gizmo
metadata: {name: g}
---
apiVersion: portcullis.dev/v1alpha1
kind: ApiRoute
metadata: {name: wrongtype}
spec: {paths: "nope", upstream: {}}
"#;
        let errors = parse_into(&mut snapshot, "b.yaml", text);
        assert_eq!(errors.len(), 3, "{errors:?}");
        assert!(
            errors[0].message.contains("spec.paths[0].vaule"),
            "{}",
            errors[0]
        );
        assert!(
            errors[1].message.contains("unsupported kind"),
            "{}",
            errors[1]
        );
        assert!(
            errors[2].message.contains("ApiRoute wrongtype"),
            "{}",
            errors[2]
        );
        assert!(snapshot.routes.is_empty());
    }

    #[test]
    fn malformed_yaml_is_an_error_not_a_panic() {
        let mut snapshot = Snapshot::default();
        for text in ["kind: [", "\u{0}\u{1}", ": : :", "- - -\n  x: [}"] {
            let errors = parse_into(&mut snapshot, "c.yaml", text);
            assert!(!errors.is_empty(), "{text:?}");
        }
    }
}
