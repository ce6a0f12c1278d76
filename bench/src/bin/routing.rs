//! Route lookup cost against the number of routes (issue #23, target: 10,000 routes within
//! 1.2x of 10). Builds the proxy's `Router` from compiled ApiRoutes in two shapes and times
//! `Router::find` over requests that hit routes spread over the whole set:
//! - `one-host`: every route on one host (a large API behind one name), the worst case for a
//!   router that scans a host's routes;
//! - `spread`: routes over 500 hosts (the scale benchmark's shape, ~20 routes a host);
//! - `no-host`: routes without hosts (host-less catch-all class).
//!
//! Each route has a `Prefix` path `/svc-<i>/v1`, every fifth also an `Exact` path and a method
//! constraint. Rounds alternate the sizes so that the machine's other load hits both alike;
//! the median of ROUNDS is printed as one JSON line per shape and size.
//! Usage: routing [ROUNDS] [SIZES, comma-separated]    (defaults: 9, 10,100,1000,10000)

use std::hint::black_box;
use std::sync::Arc;
use std::time::Instant;

use http::{HeaderMap, Method};
use portcullis_compiler::{compile, Snapshot};
use portcullis_proxy::router::{RequestView, Router};
use serde_json::json;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const LOOKUPS: usize = 200_000;

/// (host, path) of each request.
type Requests = Vec<(String, String)>;

fn route(i: usize, shape: &str) -> serde_json::Value {
    let hosts = match shape {
        "one-host" => json!(["api.example.com"]),
        "spread" => json!([format!("api-{}.example.com", i % 500)]),
        _ => json!([]),
    };
    // A host belongs to one namespace (others' routes on it are refused): one host, one team.
    let namespace = match shape {
        "spread" => format!("team-{}", i % 20),
        _ => "team-0".to_string(),
    };
    let mut paths = vec![json!({"type": "Prefix", "value": format!("/svc-{i}/v1")})];
    let mut methods = json!([]);
    if i.is_multiple_of(5) {
        paths.push(json!({"type": "Exact", "value": format!("/status/{i}")}));
        methods = json!(["GET", "POST"]);
    }
    json!({
        "apiVersion": "portcullis.dev/v1alpha1",
        "kind": "ApiRoute",
        "metadata": {"name": format!("route-{i}"), "namespace": namespace,
                     "creationTimestamp": "2026-11-01T00:00:00Z", "generation": 1,
                     "uid": format!("00000000-0000-0000-0000-{i:012}"), "resourceVersion": "1"},
        "spec": {
            "hosts": hosts,
            "paths": paths,
            "methods": methods,
            "upstream": {"targets": [{"url": format!("http://backend-{}.svc:8080", i % 100)}]}
        }
    })
}

fn router(n: usize, shape: &str) -> anyhow::Result<Router> {
    let mut snapshot = Snapshot::default();
    for i in 0..n {
        snapshot
            .routes
            .push(Arc::new(serde_json::from_value(route(i, shape))?));
    }
    let (config, statuses) = compile(&snapshot);
    if let Some(bad) = statuses.iter().find(|s| !s.is_healthy()) {
        anyhow::bail!("a generated route did not compile: {bad:?}");
    }
    anyhow::ensure!(
        config.routes.len() == n,
        "{} of {n} routes compiled",
        config.routes.len()
    );
    Ok(Router::build(&config.routes)?)
}

/// Requests (host, path), a deterministic mix: over up to 1024 routes spread over the set
/// (`hot` = false: a bigger set then also has a bigger working set in the caches), or over
/// 10 routes spread over the set (`hot`: the same working set at every size, so only the
/// lookup's own growth shows).
fn requests(n: usize, shape: &str, hot: bool) -> Requests {
    (0..1024)
        .map(|k| {
            let i = if hot {
                (k % 10) * (n / 10)
            } else {
                (k * 7919) % n
            };
            let host = match shape {
                "one-host" => "api.example.com".to_string(),
                "spread" => format!("api-{}.example.com", i % 500),
                _ => "any.example.org".to_string(),
            };
            let path = if k % 4 == 3 && i.is_multiple_of(5) {
                format!("/status/{i}")
            } else {
                format!("/svc-{i}/v1/items/{k}")
            };
            (host, path)
        })
        .collect()
}

fn nanos_per_lookup(router: &Router, requests: &[(String, String)]) -> anyhow::Result<f64> {
    let headers = HeaderMap::new();
    let started = Instant::now();
    let mut found = 0usize;
    for k in 0..LOOKUPS {
        let (host, path) = &requests[k % requests.len()];
        let view = RequestView {
            host,
            path,
            query: None,
            method: &Method::GET,
            headers: &headers,
        };
        found += usize::from(black_box(router.find(black_box(&view))).is_some());
    }
    anyhow::ensure!(found == LOOKUPS, "a request found no route");
    Ok(started.elapsed().as_nanos() as f64 / LOOKUPS as f64)
}

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let rounds: usize = args.next().map_or(Ok(9), |a| a.parse())?;
    let sizes: Vec<usize> = args
        .next()
        .unwrap_or_else(|| "10,100,1000,10000".into())
        .split(',')
        .map(str::parse)
        .collect::<Result<_, _>>()?;
    for (shape, hot) in [
        ("one-host", false),
        ("one-host", true),
        ("spread", false),
        ("spread", true),
        ("no-host", false),
    ] {
        let sets: Vec<(usize, Router, Requests)> = sizes
            .iter()
            .map(|&n| Ok((n, router(n, shape)?, requests(n, shape, hot))))
            .collect::<anyhow::Result<_>>()?;
        let mut times: Vec<Vec<f64>> = vec![Vec::new(); sets.len()];
        for _ in 0..rounds {
            for (slot, (_, router, reqs)) in times.iter_mut().zip(&sets) {
                slot.push(nanos_per_lookup(router, reqs)?);
            }
        }
        let median = |v: &mut Vec<f64>| {
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        };
        let base = median(&mut times[0].clone());
        for ((n, _, _), t) in sets.iter().zip(&mut times) {
            let ns = median(t);
            println!(
                "{}",
                json!({"shape": shape, "requests_over": if hot { "10 routes" } else { "1024 routes" }, "routes": n, "ns_per_lookup": (ns * 10.0).round() / 10.0,
                       "vs_smallest": (ns / base * 100.0).round() / 100.0,
                       "min": (t[0] * 10.0).round() / 10.0, "max": (t[t.len() - 1] * 10.0).round() / 10.0})
            );
        }
    }
    Ok(())
}
