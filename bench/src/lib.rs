//! Generators shared by the benchmark drivers: many routes and consumers that look like a
//! real cluster's (distinct hosts and paths, one API key each, keys grouped in Secrets).

use serde_json::{json, Value};

/// Keys per Secret: a real cluster keeps one Secret per consumer, but creating 100k Secrets
/// only measures the API server; grouping keys keeps the object count honest for our side.
pub const KEYS_PER_SECRET: usize = 1000;

pub fn namespace_of(i: usize) -> String {
    format!("team-{}", i % 20)
}

pub fn route(i: usize) -> Value {
    json!({
        "apiVersion": "portcullis.dev/v1alpha1",
        "kind": "ApiRoute",
        "metadata": {"name": format!("route-{i}"), "namespace": namespace_of(i)},
        "spec": {
            "hosts": [format!("api-{}.example.com", i % 500)],
            "paths": [{"type": "Prefix", "value": format!("/svc-{i}/v1")}],
            "methods": ["GET", "POST"],
            "authentication": {"methods": ["ApiKey"]},
            "upstream": {"targets": [{"url": format!("http://backend-{}.svc:8080", i % 100)}]}
        }
    })
}

pub fn secret_name(consumer: usize) -> String {
    format!("consumer-keys-{}", consumer / KEYS_PER_SECRET)
}

pub fn api_key(consumer: usize) -> String {
    format!("bench-key-{consumer:08}-0123456789abcdef")
}

pub fn consumer(i: usize) -> Value {
    json!({
        "apiVersion": "portcullis.dev/v1alpha1",
        "kind": "ConsumerCredential",
        "metadata": {"name": format!("consumer-{i}"), "namespace": namespace_of(i / KEYS_PER_SECRET)},
        "spec": {
            "groups": [if i.is_multiple_of(10) { "gold" } else { "free" }],
            "apiKeys": [{"secretRef": {"name": secret_name(i), "key": format!("k{i}")}}]
        }
    })
}

/// The Secret holding the keys of consumers `block * KEYS_PER_SECRET ..`.
pub fn secret(block: usize, consumers: usize) -> Value {
    let first = block * KEYS_PER_SECRET;
    let data: serde_json::Map<String, Value> = (first..(first + KEYS_PER_SECRET).min(consumers))
        .map(|i| (format!("k{i}"), Value::String(api_key(i))))
        .collect();
    json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": format!("consumer-keys-{block}"), "namespace": namespace_of(block)},
        "stringData": data
    })
}

/// The object with the metadata the API server adds (creation time, uid, resource version),
/// so that in-memory compiles do the same work as the operator's.
fn as_stored(mut object: Value, i: usize) -> Value {
    let created = 1_795_000_000 + i as u64;
    object["metadata"]["creationTimestamp"] = format!(
        "2026-11-{:02}T{:02}:{:02}:{:02}Z",
        1 + created / 86_400 % 28,
        created / 3_600 % 24,
        created / 60 % 60,
        created % 60
    )
    .into();
    object["metadata"]["uid"] = format!("00000000-0000-0000-0000-{i:012}").into();
    object["metadata"]["resourceVersion"] = (1_000 + i).to_string().into();
    object["metadata"]["generation"] = 1.into();
    object
}

/// The snapshot of `routes` ApiRoutes, `consumers` ConsumerCredentials and their Secrets.
/// `edit` > 0 changes route 0's path, so configs built with different edits differ by one
/// route (a reload).
pub fn snapshot(
    routes: usize,
    consumers: usize,
    edit: usize,
) -> Result<portcullis_compiler::Snapshot, serde_json::Error> {
    use std::sync::Arc;
    let mut snapshot = portcullis_compiler::Snapshot::default();
    for i in 0..routes {
        let mut r = as_stored(route(i), i);
        if i == 0 && edit > 0 {
            r["spec"]["paths"][0]["value"] = format!("/svc-0/v{}", edit + 1).into();
        }
        snapshot.routes.push(Arc::new(serde_json::from_value(r)?));
    }
    for i in 0..consumers {
        snapshot
            .consumers
            .push(Arc::new(serde_json::from_value(as_stored(consumer(i), i))?));
    }
    for block in 0..consumers.div_ceil(KEYS_PER_SECRET) {
        snapshot
            .secrets
            .push(Arc::new(serde_json::from_value(secret(block, consumers))?));
    }
    Ok(snapshot)
}

/// `[ROUTES] [CONSUMERS] [N]` from the command line (words that are not numbers skipped):
/// the scale binaries' arguments, with 10,000 routes and 100,000 consumers by default.
pub fn scale_args(default_n: usize) -> (usize, usize, usize) {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    (
        args.first().copied().unwrap_or(10_000),
        args.get(1).copied().unwrap_or(100_000),
        args.get(2).copied().unwrap_or(default_n),
    )
}
