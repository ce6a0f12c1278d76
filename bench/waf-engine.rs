//! Per-request cost of the WAF engine alone (no proxy, no I/O), PL1 default policy:
//! a benign GET with a few arguments and typical browser headers, a 1 KiB JSON POST, and
//! one attack of each kind for comparison.
//!
//!     cargo bench -p portcullis-waf --bench waf-engine            # full run (~20 s)
//!     WAF_BENCH_ITERS=2000 cargo bench -p portcullis-waf --bench waf-engine   # smoke
//!     WAF_BENCH_CASE=json WAF_BENCH_ITERS=200 valgrind --tool=callgrind <bench binary>
//!
//! `WAF_BENCH_CASE` keeps only the cases whose name contains it (`GET`, `JSON`, `attack`;
//! case-insensitive), so that a profiler sees one case; `bench/waf-instructions.sh` turns
//! two such callgrind runs into instructions per request (repeatable on a busy machine,
//! unlike wall time).
//!
//! Prints the median and p99 of per-request wall time over N iterations (after warm-up),
//! measured in batches of 16 to stay above the clock resolution.
#![allow(clippy::unwrap_used)]

use std::hint::black_box;
use std::time::Instant;

use portcullis_waf::{Engine, PolicyConfig, RequestHead};

struct Case {
    name: &'static str,
    method: &'static str,
    uri: String,
    headers: Vec<(&'static str, Vec<u8>)>,
    body: Vec<u8>,
}

fn browser_headers() -> Vec<(&'static str, Vec<u8>)> {
    vec![
        ("host", b"api.example.com".to_vec()),
        ("user-agent", b"Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0 Safari/537.36".to_vec()),
        ("accept", b"application/json, text/plain, */*".to_vec()),
        ("accept-language", b"en-US,en;q=0.9".to_vec()),
        ("accept-encoding", b"gzip, deflate, br".to_vec()),
        ("authorization", b"Bearer eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiIxMjMifQ.c2lnbmF0dXJl".to_vec()),
        ("cookie", b"session=8f14e45fceea167a5a36dedd4bea2543; theme=dark".to_vec()),
        ("referer", b"https://app.example.com/orders?page=2".to_vec()),
    ]
}

fn json_1k() -> Vec<u8> {
    let mut items = Vec::new();
    let mut i = 0;
    loop {
        let body = format!(
            "{{\"order_id\": 1001, \"customer\": {{\"name\": \"Jane O'Neil\", \"email\": \"jane@example.com\"}}, \"note\": \"Leave it at the door, please; the bell is broken.\", \"items\": [{}]}}",
            items.join(", ")
        );
        if body.len() >= 1024 {
            return body.into_bytes();
        }
        items.push(format!(
            "{{\"sku\": \"SKU-{i:04}\", \"qty\": {}, \"price\": {}.99, \"title\": \"Blue cotton shirt, size M\"}}",
            i % 3 + 1,
            10 + i
        ));
        i += 1;
    }
}

fn cases() -> Vec<Case> {
    let mut json_headers = browser_headers();
    json_headers.push(("content-type", b"application/json".to_vec()));
    let body = json_1k();
    json_headers.push(("content-length", body.len().to_string().into_bytes()));
    vec![
        Case {
            name: "benign GET, 4 args",
            method: "GET",
            uri: "/api/v1/products?category=shoes&page=2&sort=-price&q=red+running+shoes".into(),
            headers: browser_headers(),
            body: vec![],
        },
        Case {
            name: "benign POST, 1 KiB JSON",
            method: "POST",
            uri: "/api/v1/orders".into(),
            headers: json_headers.clone(),
            body,
        },
        Case {
            name: "attack GET (SQLi)",
            method: "GET",
            uri: "/api/v1/products?q=1%27%20UNION%20SELECT%20password%20FROM%20users--".into(),
            headers: browser_headers(),
            body: vec![],
        },
        Case {
            name: "attack POST (XSS in JSON)",
            method: "POST",
            uri: "/api/v1/comments".into(),
            headers: json_headers,
            body: br#"{"comment": "<img src=x onerror=alert(document.cookie)>"}"#.to_vec(),
        },
    ]
}

fn main() {
    let iters: usize = std::env::var("WAF_BENCH_ITERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50_000);
    let only = std::env::var("WAF_BENCH_CASE")
        .unwrap_or_default()
        .to_lowercase();
    let engine = Engine::new(PolicyConfig::default()).unwrap();
    println!("| case | median µs/request | p99 µs/request | blocked |");
    println!("|---|---|---|---|");
    for case in cases()
        .into_iter()
        .filter(|c| c.name.to_lowercase().contains(&only))
    {
        let headers: Vec<(&str, &[u8])> = case
            .headers
            .iter()
            .map(|(n, v)| (*n, v.as_slice()))
            .collect();
        let head = RequestHead {
            method: case.method,
            uri: &case.uri,
            headers: &headers,
            client_ip: None,
        };
        let run = || {
            let eval = engine.inspect(black_box(&head), black_box(&case.body));
            black_box(engine.decision(&eval))
        };
        let decision = run();
        for _ in 0..iters / 10 {
            run();
        }
        const BATCH: usize = 16;
        let mut samples: Vec<f64> = (0..(iters / BATCH).max(1))
            .map(|_| {
                let start = Instant::now();
                for _ in 0..BATCH {
                    run();
                }
                start.elapsed().as_secs_f64() * 1e6 / BATCH as f64
            })
            .collect();
        samples.sort_by(f64::total_cmp);
        let median = samples[samples.len() / 2];
        let p99 = samples[(samples.len() * 99 / 100).min(samples.len() - 1)];
        println!(
            "| {} | {median:.1} | {p99:.1} | {} |",
            case.name,
            decision != portcullis_waf::Decision::Allow
        );
    }
}
