//! `requestValidation`: required headers, content type, body size (Content-Length early,
//! streamed limit otherwise), JSON depth and JSON Schema.
//!
//! Bodies are only buffered when a JSON check needs the whole document; everything else
//! streams through [`LimitedBody`] so a large upload never sits in gateway memory.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use http::request::Parts;
use http::{header, HeaderName};
use http_body_util::BodyExt;
use hyper::body::{Body, Incoming};
use portcullis_compiler::config::ValidationConfig;
use serde_json::Value;

use crate::body::{full, ProxyBody};
use crate::client_body::{BufferBudget, ClientFault, FaultKind, LimitedBody, ReservedBody};

/// Cap on bodies buffered for JSON checks when the route sets no `maxBodySize`.
pub const DEFAULT_JSON_BUFFER_LIMIT: u64 = 10 * 1024 * 1024;
/// How many schema errors are reported back.
const MAX_SCHEMA_ERRORS: usize = 5;

#[derive(Debug, thiserror::Error)]
pub enum ValidationError {
    #[error("missing required header {0}")]
    MissingHeader(String),
    #[error("unsupported media type")]
    UnsupportedMediaType,
    #[error("request body too large")]
    BodyTooLarge,
    #[error("request body is not valid JSON")]
    InvalidJson,
    #[error("request body JSON is nested too deeply")]
    JsonTooDeep,
    #[error("request body does not match the schema")]
    Schema(Vec<String>),
    #[error("request body could not be read")]
    UnreadableBody,
    /// The client failed while the body was being buffered (timeout, too slow, too large
    /// for the process-wide buffer budget).
    #[error("{0}")]
    Client(FaultKind),
}

impl ValidationError {
    pub fn reason(&self) -> &'static str {
        match self {
            ValidationError::MissingHeader(_) => "missing_header",
            ValidationError::UnsupportedMediaType => "unsupported_media_type",
            ValidationError::BodyTooLarge => "body_too_large",
            ValidationError::InvalidJson => "invalid_json",
            ValidationError::JsonTooDeep => "json_too_deep",
            ValidationError::Schema(_) => "schema_mismatch",
            ValidationError::UnreadableBody => "unreadable_body",
            ValidationError::Client(kind) => kind.reason(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("invalid JSON schema: {0}")]
pub struct SchemaError(String);

pub struct CompiledValidation {
    max_body_bytes: Option<u64>,
    allowed_content_types: Vec<String>,
    required_headers: Vec<HeaderName>,
    max_json_depth: Option<u32>,
    schema: Option<jsonschema::Validator>,
}

impl CompiledValidation {
    pub fn new(config: &ValidationConfig) -> Result<Self, SchemaError> {
        let schema = config
            .json_schema
            .as_ref()
            .map(|s| jsonschema::validator_for(s).map_err(|e| SchemaError(e.to_string())))
            .transpose()?;
        let required_headers = config
            .required_headers
            .iter()
            .map(|h| {
                HeaderName::from_bytes(h.as_bytes())
                    .map_err(|_| SchemaError(format!("invalid header name {h:?}")))
            })
            .collect::<Result<_, _>>()?;
        Ok(CompiledValidation {
            max_body_bytes: config.max_body_bytes,
            allowed_content_types: config.allowed_content_types.clone(),
            required_headers,
            max_json_depth: config.max_json_depth,
            schema,
        })
    }

    /// Checks that need only the request head.
    pub fn check_head(&self, parts: &Parts, has_body: bool) -> Result<(), ValidationError> {
        for name in &self.required_headers {
            if !parts.headers.contains_key(name) {
                return Err(ValidationError::MissingHeader(name.as_str().to_string()));
            }
        }
        if let (Some(max), Some(len)) = (self.max_body_bytes, content_length(parts)) {
            if len > max {
                return Err(ValidationError::BodyTooLarge);
            }
        }
        if has_body && !self.allowed_content_types.is_empty() {
            let media = parts
                .headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .map(media_type)
                .ok_or(ValidationError::UnsupportedMediaType)?;
            if !self
                .allowed_content_types
                .iter()
                .any(|a| media_matches(a, &media))
            {
                return Err(ValidationError::UnsupportedMediaType);
            }
        }
        Ok(())
    }

    fn needs_json(&self) -> bool {
        self.schema.is_some() || self.max_json_depth.is_some()
    }

    /// Wraps or buffers the body. `fault` records a streamed body passing the limit;
    /// buffered bytes are reserved from `budget` until the body is dropped.
    pub async fn check_body(
        &self,
        body: ProxyBody,
        has_body: bool,
        fault: &Arc<ClientFault>,
        budget: &Arc<BufferBudget>,
    ) -> Result<ProxyBody, ValidationError> {
        if has_body && self.needs_json() {
            let limit = self.max_body_bytes.unwrap_or(DEFAULT_JSON_BUFFER_LIMIT);
            let limit = usize::try_from(limit).unwrap_or(usize::MAX);
            let (bytes, reservation) = buffer(body, limit, fault, budget).await?;
            self.check_json(&bytes)?;
            return Ok(ReservedBody::new(full(bytes), reservation).boxed());
        }
        Ok(match self.max_body_bytes {
            Some(max) => LimitedBody::new(body, max, fault.clone()).boxed(),
            None => body,
        })
    }

    fn check_json(&self, bytes: &Bytes) -> Result<(), ValidationError> {
        let value: Value =
            serde_json::from_slice(bytes).map_err(|_| ValidationError::InvalidJson)?;
        if let Some(max) = self.max_json_depth {
            if json_depth(&value) > max as usize {
                return Err(ValidationError::JsonTooDeep);
            }
        }
        if let Some(schema) = &self.schema {
            let errors: Vec<String> = schema
                .iter_errors(&value)
                .take(MAX_SCHEMA_ERRORS)
                .map(|e| {
                    let pointer = e.instance_path().to_string();
                    if pointer.is_empty() {
                        "/".to_string()
                    } else {
                        pointer
                    }
                })
                .collect();
            if !errors.is_empty() {
                return Err(ValidationError::Schema(errors));
            }
        }
        Ok(())
    }
}

/// Reads the whole body (at most `limit` bytes), reserving it from `budget` as it arrives.
async fn buffer(
    mut body: ProxyBody,
    limit: usize,
    fault: &Arc<ClientFault>,
    budget: &Arc<BufferBudget>,
) -> Result<(Bytes, crate::client_body::Reservation), ValidationError> {
    let mut reservation = budget.reservation();
    let mut one: Option<Bytes> = None;
    let mut joined = BytesMut::new();
    let mut total = 0usize;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|_| match fault.get() {
            Some(kind) => ValidationError::Client(kind),
            None => ValidationError::UnreadableBody,
        })?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        total = total.saturating_add(data.len());
        if total > limit {
            fault.set(FaultKind::TooLarge);
            return Err(ValidationError::BodyTooLarge);
        }
        if !reservation.grow(data.len()) {
            fault.set(FaultKind::Busy);
            return Err(ValidationError::Client(FaultKind::Busy));
        }
        // A small body usually arrives as one frame: kept as it came, without a copy.
        match one.take() {
            None if joined.is_empty() => one = Some(data),
            None => joined.extend_from_slice(&data),
            Some(first) => {
                joined.reserve(first.len() + data.len());
                joined.extend_from_slice(&first);
                joined.extend_from_slice(&data);
            }
        }
    }
    let bytes = one.unwrap_or_else(|| joined.freeze());
    Ok((bytes, reservation))
}

/// Whether the request carries a body (by framing, not by guessing from the method).
pub fn has_body(parts: &Parts, body: &Incoming) -> bool {
    match content_length(parts) {
        Some(len) => len > 0,
        None => !body.is_end_stream(),
    }
}

fn content_length(parts: &Parts) -> Option<u64> {
    parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
}

fn media_type(value: &str) -> String {
    value
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase()
}

fn media_matches(allowed: &str, media: &str) -> bool {
    match allowed.strip_suffix("/*") {
        Some(main) => media
            .split_once('/')
            .is_some_and(|(m, sub)| m == main && !sub.is_empty()),
        None => allowed == media,
    }
}

/// Nesting depth of arrays and objects; a scalar is depth 0. Iterative so hostile input
/// cannot overflow the stack here (serde_json already caps parsing at 128 levels).
fn json_depth(value: &Value) -> usize {
    let mut max = 0;
    let mut stack = vec![(value, 0usize)];
    while let Some((v, depth)) = stack.pop() {
        match v {
            Value::Array(items) => {
                max = max.max(depth + 1);
                stack.extend(items.iter().map(|i| (i, depth + 1)));
            }
            Value::Object(map) => {
                max = max.max(depth + 1);
                stack.extend(map.values().map(|i| (i, depth + 1)));
            }
            _ => {}
        }
    }
    max
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn media_types_and_depth() {
        assert!(media_matches(
            "application/json",
            &media_type("Application/JSON; charset=utf-8")
        ));
        assert!(media_matches("text/*", "text/plain"));
        assert!(!media_matches("text/*", "application/json"));
        assert_eq!(json_depth(&serde_json::json!({"a": [1, {"b": 2}]})), 3);
        assert_eq!(json_depth(&serde_json::json!(1)), 0);
    }

    #[test]
    fn schema_errors_are_pointers() {
        let v = CompiledValidation::new(&ValidationConfig {
            max_body_bytes: None,
            allowed_content_types: vec![],
            json_schema: Some(serde_json::json!({
                "type": "object", "required": ["name"],
                "properties": {"age": {"type": "integer"}}
            })),
            max_json_depth: Some(3),
            required_headers: vec![],
        })
        .unwrap();
        let err = v
            .check_json(&Bytes::from_static(b"{\"age\": \"x\"}"))
            .unwrap_err();
        match err {
            ValidationError::Schema(p) => assert!(p.contains(&"/age".to_string()), "{p:?}"),
            other => panic!("{other:?}"),
        }
        assert!(v.check_json(&Bytes::from_static(b"{\"name\": 1}")).is_ok());
        assert!(matches!(
            v.check_json(&Bytes::from_static(b"{\"name\": [[[[1]]]]}")),
            Err(ValidationError::JsonTooDeep)
        ));
    }
}
