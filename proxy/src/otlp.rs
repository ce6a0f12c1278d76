//! OTLP/HTTP trace export (protobuf), off unless `--otlp-endpoint` is given.
//!
//! The request path hands finished spans of sampled requests to a bounded queue and moves
//! on; one task batches them (up to [`BATCH`] spans or [`FLUSH`]) and POSTs an
//! `ExportTraceServiceRequest` to the collector. A full queue drops spans, a failed POST
//! loses its batch; both are counted (`api_trace_spans_total{result}`), neither waits.
//! The protobuf is written by hand: the message is small and fixed
//! (opentelemetry-proto `collector/trace/v1`, `trace/v1`, `common/v1`, `resource/v1`).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Uri};
use http_body_util::Full;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use prometheus_client::metrics::counter::Counter;
use tokio::sync::mpsc;

/// Spans per export request.
const BATCH: usize = 512;
/// Longest a span waits in the exporter before it is sent.
const FLUSH: Duration = Duration::from_secs(1);
/// Requests' span lists the queue holds.
const QUEUE: usize = 4096;
const EXPORT_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum OtlpConfigError {
    #[error("--otlp-endpoint {0:?}: not an http:// URL with a host (OTLP/HTTP, e.g. http://collector:4318/v1/traces)")]
    Endpoint(String),
}

/// An attribute value.
#[derive(Debug, Clone)]
pub enum Value {
    Str(String),
    Int(i64),
}

#[derive(Debug, Clone)]
pub struct Span {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    pub parent_span_id: Option<[u8; 8]>,
    pub name: &'static str,
    /// The request's span is a server span; policy steps are internal.
    pub server: bool,
    pub start_unix_ns: u64,
    pub end_unix_ns: u64,
    pub attributes: Vec<(&'static str, Value)>,
    pub error: bool,
}

pub struct SpanExporter {
    tx: mpsc::Sender<Vec<Span>>,
    dropped: Counter,
}

impl SpanExporter {
    /// Starts the export task. Must run inside a tokio runtime.
    pub fn start(
        endpoint: &str,
        replica: &str,
        metrics: &crate::metrics::Metrics,
    ) -> Result<Self, OtlpConfigError> {
        let uri: Uri = endpoint
            .parse()
            .ok()
            .filter(|u: &Uri| u.scheme_str() == Some("http") && u.host().is_some())
            .ok_or_else(|| OtlpConfigError::Endpoint(endpoint.to_string()))?;
        let (tx, rx) = mpsc::channel(QUEUE);
        let resource = resource(replica);
        tokio::spawn(export_loop(
            rx,
            uri,
            resource,
            metrics.span_counter("exported"),
            metrics.span_counter("failed"),
        ));
        Ok(SpanExporter {
            tx,
            dropped: metrics.span_counter("dropped"),
        })
    }

    /// Queues the spans of one request; never waits.
    pub fn send(&self, spans: Vec<Span>) {
        let n = spans.len() as u64;
        if self.tx.try_send(spans).is_err() {
            self.dropped.inc_by(n);
        }
    }
}

pub fn unix_nanos(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

async fn export_loop(
    mut rx: mpsc::Receiver<Vec<Span>>,
    uri: Uri,
    resource: Vec<u8>,
    exported: Counter,
    failed: Counter,
) {
    let client: Client<HttpConnector, Full<Bytes>> =
        Client::builder(TokioExecutor::new()).build_http();
    let mut batch: Vec<Span> = Vec::with_capacity(BATCH);
    loop {
        let Some(first) = rx.recv().await else { return };
        batch.extend(first);
        let deadline = tokio::time::Instant::now() + FLUSH;
        while batch.len() < BATCH {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(more)) => batch.extend(more),
                Ok(None) | Err(_) => break,
            }
        }
        let body = encode_request(&resource, &batch);
        let n = batch.len() as u64;
        batch.clear();
        let mut request = Request::new(Full::new(Bytes::from(body)));
        *request.method_mut() = Method::POST;
        *request.uri_mut() = uri.clone();
        request.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/x-protobuf"),
        );
        match tokio::time::timeout(EXPORT_TIMEOUT, client.request(request)).await {
            Ok(Ok(response)) if response.status().is_success() => {
                exported.inc_by(n);
            }
            outcome => {
                let total = failed.inc_by(n) + n;
                // Once per power of two: a collector that is down must not flood the log.
                if (total / n.max(1)).is_power_of_two() {
                    let status = match &outcome {
                        Ok(Ok(r)) => r.status().to_string(),
                        Ok(Err(e)) => e.to_string(),
                        Err(_) => "timeout".into(),
                    };
                    tracing::warn!(endpoint = %uri, %status, spans = n, "OTLP export failed; spans lost");
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------- protobuf

fn varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn tag(out: &mut Vec<u8>, field: u32, wire: u8) {
    varint(out, u64::from(field) << 3 | u64::from(wire));
}

fn bytes_field(out: &mut Vec<u8>, field: u32, data: &[u8]) {
    tag(out, field, 2);
    varint(out, data.len() as u64);
    out.extend_from_slice(data);
}

fn fixed64_field(out: &mut Vec<u8>, field: u32, v: u64) {
    tag(out, field, 1);
    out.extend_from_slice(&v.to_le_bytes());
}

fn varint_field(out: &mut Vec<u8>, field: u32, v: u64) {
    tag(out, field, 0);
    varint(out, v);
}

/// `KeyValue { string key = 1; AnyValue value = 2; }`, `AnyValue { string_value = 1;
/// int_value = 3; }`.
fn key_value(out: &mut Vec<u8>, field: u32, key: &str, value: &Value) {
    let mut any = Vec::new();
    match value {
        Value::Str(s) => bytes_field(&mut any, 1, s.as_bytes()),
        Value::Int(i) => varint_field(&mut any, 3, *i as u64),
    }
    let mut kv = Vec::with_capacity(key.len() + any.len() + 4);
    bytes_field(&mut kv, 1, key.as_bytes());
    bytes_field(&mut kv, 2, &any);
    bytes_field(out, field, &kv);
}

/// `Resource { repeated KeyValue attributes = 1; }`.
fn resource(replica: &str) -> Vec<u8> {
    let mut out = Vec::new();
    key_value(
        &mut out,
        1,
        "service.name",
        &Value::Str("portcullis-proxy".into()),
    );
    key_value(
        &mut out,
        1,
        "service.instance.id",
        &Value::Str(replica.into()),
    );
    key_value(
        &mut out,
        1,
        "service.version",
        &Value::Str(env!("CARGO_PKG_VERSION").into()),
    );
    out
}

/// `Span` (trace/v1): trace_id 1, span_id 2, parent_span_id 4, name 5, kind 6,
/// start 7, end 8 (fixed64), attributes 9, status 15 (`code = 3`: 2 is ERROR).
fn encode_span(out: &mut Vec<u8>, span: &Span) {
    let mut s = Vec::with_capacity(128);
    bytes_field(&mut s, 1, &span.trace_id);
    bytes_field(&mut s, 2, &span.span_id);
    if let Some(parent) = &span.parent_span_id {
        bytes_field(&mut s, 4, parent);
    }
    bytes_field(&mut s, 5, span.name.as_bytes());
    // SPAN_KIND_INTERNAL = 1, SPAN_KIND_SERVER = 2.
    varint_field(&mut s, 6, if span.server { 2 } else { 1 });
    fixed64_field(&mut s, 7, span.start_unix_ns);
    fixed64_field(&mut s, 8, span.end_unix_ns);
    for (key, value) in &span.attributes {
        key_value(&mut s, 9, key, value);
    }
    if span.error {
        let mut status = Vec::new();
        varint_field(&mut status, 3, 2);
        bytes_field(&mut s, 15, &status);
    }
    bytes_field(out, 2, &s);
}

/// `ExportTraceServiceRequest { repeated ResourceSpans resource_spans = 1; }` with one
/// `ResourceSpans { Resource resource = 1; repeated ScopeSpans scope_spans = 2; }` and one
/// `ScopeSpans { InstrumentationScope scope = 1; repeated Span spans = 2; }`.
pub fn encode_request(resource: &[u8], spans: &[Span]) -> Vec<u8> {
    let mut scope_spans = Vec::with_capacity(spans.len() * 160);
    let mut scope = Vec::new();
    bytes_field(&mut scope, 1, b"portcullis-proxy");
    bytes_field(&mut scope_spans, 1, &scope);
    for span in spans {
        encode_span(&mut scope_spans, span);
    }
    let mut resource_spans = Vec::with_capacity(scope_spans.len() + resource.len() + 16);
    bytes_field(&mut resource_spans, 1, resource);
    bytes_field(&mut resource_spans, 2, &scope_spans);
    let mut out = Vec::with_capacity(resource_spans.len() + 8);
    bytes_field(&mut out, 1, &resource_spans);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_and_fields() {
        let mut out = Vec::new();
        varint(&mut out, 300);
        assert_eq!(out, [0xac, 0x02]);
        let mut out = Vec::new();
        bytes_field(&mut out, 5, b"ab");
        assert_eq!(out, [0x2a, 2, b'a', b'b']);
        let mut out = Vec::new();
        fixed64_field(&mut out, 7, 1);
        assert_eq!(out, [0x39, 1, 0, 0, 0, 0, 0, 0, 0]);
    }
}
