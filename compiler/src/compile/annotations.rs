//! `portcullis.dev/*` annotations of Ingresses and HTTPRoutes: Portcullis policies attached
//! to objects whose own schema has no place for them, so existing Ingresses gain security
//! without being rewritten. Each annotation sets one field of the ApiRoute the object is
//! compiled as; docs/ingress.md has the table.
//!
//! An unknown `portcullis.dev/` annotation is an error, not ignored: a misspelt
//! `portcullis.dev/waf-polcy` would otherwise leave the route unprotected without a word.

use std::collections::BTreeMap;

use portcullis_crds::ApiRouteSpec;
use serde_json::{json, Map, Value};

use super::issues::Issues;

pub(crate) const PREFIX: &str = "portcullis.dev/";

/// How an annotation's text becomes a field of the spec.
#[derive(Clone, Copy)]
enum Form {
    /// The text as a string.
    Text,
    /// Comma-separated strings.
    List,
    /// `true` or `false`.
    Bool,
    /// A non-negative integer.
    Integer,
    /// A JSON object, the same as the ApiRoute field.
    Object,
    /// A JSON object, or a comma-separated list of authentication methods.
    Methods,
}

/// (annotation after the prefix, JSON pointer into the ApiRoute spec, form, Ingress only)
const ANNOTATIONS: &[(&str, &str, Form, bool)] = &[
    ("waf-policy", "/wafPolicy", Form::Text, false),
    (
        "rate-limit-policies",
        "/rateLimitPolicies",
        Form::List,
        false,
    ),
    ("authentication", "/authentication", Form::Methods, false),
    ("authorization", "/authorization", Form::Object, false),
    ("ip-allow", "/ipRestriction/allow", Form::List, false),
    ("ip-deny", "/ipRestriction/deny", Form::List, false),
    ("cors", "/cors", Form::Object, false),
    (
        "request-validation",
        "/requestValidation",
        Form::Object,
        false,
    ),
    ("response-headers", "/responseHeaders", Form::Object, false),
    ("security-headers", "/securityHeaders", Form::Bool, false),
    (
        "sanitize-upstream-errors",
        "/sanitizeUpstreamErrors",
        Form::Bool,
        false,
    ),
    (
        "path-normalization",
        "/pathNormalization",
        Form::Object,
        false,
    ),
    (
        "load-balancing",
        "/upstream/loadBalancing",
        Form::Text,
        false,
    ),
    (
        "retries",
        "/upstream/retries/attempts",
        Form::Integer,
        false,
    ),
    (
        "connect-timeout",
        "/upstream/timeouts/connect",
        Form::Text,
        false,
    ),
    ("read-timeout", "/upstream/timeouts/read", Form::Text, false),
    ("send-timeout", "/upstream/timeouts/send", Form::Text, false),
    ("upstream-tls", "/upstream/tls", Form::Object, false),
    ("rewrite-target", "/rewritePrefix", Form::Text, true),
    ("strip-path", "/stripPath", Form::Bool, true),
    ("ssl-redirect", "/tls/redirectHttp", Form::Bool, true),
    ("tls-min-version", "/tls/minVersion", Form::Text, true),
];

/// Which object the annotations are on (some only make sense on an Ingress).
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum On {
    Ingress,
    HttpRoute,
}

/// The annotations as JSON fields of an ApiRoute spec, keyed by pointer. Errors go to
/// `issues` under `metadata.annotations[NAME]`.
pub(crate) fn fields(
    annotations: Option<&BTreeMap<String, String>>,
    on: On,
    issues: &mut Issues,
) -> Vec<(&'static str, Value)> {
    let mut out = Vec::new();
    for (key, text) in annotations.into_iter().flatten() {
        let Some(name) = key.strip_prefix(PREFIX) else {
            continue;
        };
        let field = format!("metadata.annotations[{key}]");
        let Some(&(_, pointer, form, ingress_only)) = ANNOTATIONS.iter().find(|(n, ..)| *n == name)
        else {
            issues.invalid(
                &field,
                format!(
                    "unknown Portcullis annotation; known: {}",
                    ANNOTATIONS
                        .iter()
                        .filter(|a| on == On::Ingress || !a.3)
                        .map(|a| a.0)
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            );
            continue;
        };
        if ingress_only && on != On::Ingress {
            issues.invalid(
                &field,
                "only for Ingresses; use the HTTPRoute's own filters and Gateway listeners",
            );
            continue;
        }
        let text = text.trim();
        let list = || -> Value {
            text.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|s| Value::String(s.to_string()))
                .collect()
        };
        let value = match form {
            Form::Text => Ok(Value::String(text.to_string())),
            Form::List => Ok(list()),
            Form::Bool => match text {
                "true" => Ok(Value::Bool(true)),
                "false" => Ok(Value::Bool(false)),
                _ => Err(format!("{text:?} is neither true nor false")),
            },
            Form::Integer => text
                .parse::<u32>()
                .map(|n| json!(n))
                .map_err(|_| format!("{text:?} is not a non-negative integer")),
            Form::Object => object(text),
            Form::Methods if text.starts_with('{') => object(text),
            Form::Methods => Ok(json!({ "methods": list() })),
        };
        match value {
            Ok(value) => out.push((pointer, value)),
            Err(message) => issues.invalid(&field, message),
        }
    }
    out
}

fn object(text: &str) -> Result<Value, String> {
    match serde_json::from_str::<Value>(text) {
        Ok(value @ Value::Object(_)) => Ok(value),
        Ok(_) => Err("must be a JSON object".to_string()),
        Err(e) => Err(format!("invalid JSON: {e}")),
    }
}

/// `spec` with the annotation fields set; `None` (with issues) when they do not make a valid
/// spec, e.g. a field of the wrong type inside a JSON annotation.
pub(crate) fn apply(
    spec: &ApiRouteSpec,
    fields: &[(&'static str, Value)],
    issues: &mut Issues,
) -> Option<ApiRouteSpec> {
    if fields.is_empty() {
        return Some(spec.clone());
    }
    let mut value = match serde_json::to_value(spec) {
        Ok(value) => value,
        Err(e) => {
            issues.invalid("metadata.annotations", e);
            return None;
        }
    };
    for (pointer, field) in fields {
        set_pointer(&mut value, pointer, field.clone());
    }
    match serde_json::from_value::<ApiRouteSpec>(value) {
        Ok(spec) => Some(spec),
        Err(e) => {
            issues.invalid("metadata.annotations", format!("{e}"));
            None
        }
    }
}

/// Sets `pointer` (`/a/b`) in `root`, creating objects on the way.
fn set_pointer(root: &mut Value, pointer: &str, value: Value) {
    let mut node = root;
    let parts: Vec<&str> = pointer.trim_start_matches('/').split('/').collect();
    for (i, part) in parts.iter().enumerate() {
        if !node.is_object() {
            *node = Value::Object(Map::new());
        }
        let Value::Object(map) = node else { return };
        if i + 1 == parts.len() {
            map.insert((*part).to_string(), value);
            return;
        }
        node = map
            .entry((*part).to_string())
            .or_insert_with(|| Value::Object(Map::new()));
    }
}
