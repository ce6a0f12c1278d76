//! Huge and pathological inputs: bounded time, no panic. The bound comes from the limits
//! (`maxArgs`, `maxArgLength`, `inspectBodyBytes`): the engine never looks at more than
//! `inspectBodyBytes` of body nor more than `maxArgs` values of at most `maxArgLength`
//! bytes, and every parser and transform is linear. The time asserted here is a loose
//! safety net for debug builds on a shared machine; real numbers are in the benchmark.
#![allow(clippy::unwrap_used)]

mod support;

use std::time::{Duration, Instant};

use portcullis_waf::Decision;
use support::{engine, Req};

const SAFETY_NET: Duration = Duration::from_secs(5);

fn timed(name: &str, req: &Req) -> portcullis_waf::Evaluation {
    let engine = engine(1);
    let start = Instant::now();
    let eval = req.evaluate(&engine);
    let took = start.elapsed();
    println!(
        "{name}: {took:?}, score {}, {} findings",
        eval.score,
        eval.findings.len()
    );
    assert!(took < SAFETY_NET, "{name} took {took:?}");
    eval
}

#[test]
fn one_megabyte_argument() {
    let uri = format!("/s?q={}", "a%27".repeat(256 * 1024));
    let eval = timed("1 MB query argument", &Req::new("GET", &uri));
    assert!(
        eval.findings.iter().any(|f| f.rule_id == 920370),
        "{:?}",
        eval.findings
    );
    let body = format!("q={}", "x".repeat(1 << 20));
    timed(
        "1 MB form argument",
        &Req::new("POST", "/f").body("application/x-www-form-urlencoded", body),
    );
}

#[test]
fn hundred_thousand_json_keys() {
    let mut body = String::from("{");
    for i in 0..100_000 {
        body.push_str(&format!("\"k{i}\": \"v{i}\","));
    }
    body.push_str("\"end\": 1}");
    let eval = timed("100k JSON keys", &Req::new("POST", "/j").json(&body));
    // Only the first inspectBodyBytes (128 KiB) are parsed; the truncated document is
    // inspected as text and the audit says so.
    assert!(eval.body_truncated);
}

#[test]
fn ten_thousand_levels_of_nesting() {
    let body = "[".repeat(10_000) + &"]".repeat(10_000);
    let eval = timed("10k-deep JSON", &Req::new("POST", "/j").json(&body));
    assert!(
        eval.findings.iter().any(|f| f.rule_id == 920390),
        "{:?}",
        eval.findings
    );
    let engine = engine(1);
    assert_eq!(engine.decision(&eval), Decision::Block);
    let body = "{\"a\":".repeat(10_000) + "1" + &"}".repeat(10_000);
    timed("10k-deep JSON objects", &Req::new("POST", "/j").json(&body));
}

#[test]
fn deep_paths_of_long_keys_with_a_finding_in_every_leaf() {
    // Each leaf's label renders its JSON path; keys of 4 KiB on every level and a SQL
    // quote-break in every leaf make each of the `maxArgs` leaves render one: the render
    // copies ~128 bytes per level (the label is clipped to 128), not the keys whole.
    let key = "k".repeat(4096);
    let depth = 20;
    let mut body = String::new();
    for _ in 0..depth {
        body.push_str(&format!("{{\"{key}\": "));
    }
    body.push('[');
    body.push_str(&vec!["\"1' or '1'='1\""; 200].join(","));
    body.push(']');
    body.push_str(&"}".repeat(depth));
    let eval = timed(
        "20 levels of 4 KiB keys, 200 attack leaves",
        &Req::new("POST", "/j").json(&body),
    );
    let label = eval
        .findings
        .iter()
        .find(|f| f.target.starts_with("Json:"))
        .map(|f| f.target.clone())
        .unwrap();
    assert_eq!(label.len(), "Json:".len() + 128, "{label}");
}

#[test]
fn ten_thousand_multipart_parts() {
    let mut body = Vec::new();
    for i in 0..10_000 {
        body.extend_from_slice(
            format!("--bb\r\nContent-Disposition: form-data; name=\"f{i}\"\r\n\r\nvalue {i}\r\n")
                .as_bytes(),
        );
    }
    body.extend_from_slice(b"--bb--\r\n");
    let eval = timed(
        "10k multipart parts",
        &Req::new("POST", "/m").body("multipart/form-data; boundary=bb", body),
    );
    assert!(
        eval.findings.iter().any(|f| f.rule_id == 920380),
        "{:?}",
        eval.findings
    );
}

#[test]
fn hostile_regex_food_and_binary() {
    // Long runs of the characters the rules' alternations start with.
    for (name, value) in [
        ("quotes", "'".repeat(100_000)),
        ("angle brackets", "<".repeat(100_000)),
        ("dollar braces", "${".repeat(50_000)),
        ("dots and slashes", "../".repeat(30_000)),
        ("percent signs", "%".repeat(100_000)),
        ("entities", "&#".repeat(50_000)),
    ] {
        timed(name, &Req::new("POST", "/t").body("text/plain", value));
    }
    let binary: Vec<u8> = (0..200_000u32).map(|i| (i * 7919 % 251) as u8).collect();
    timed(
        "binary body",
        &Req::new("POST", "/b").body("application/octet-stream", binary),
    );
}
