//! Per-case outcomes (decision, score, rule ids on their targets) over the whole CRS corpus at
//! PL1 and PL2 and every libinjection data line (as a query argument, and as a JSON leaf and
//! key), written to a file: run it before and after an engine change and `diff` the files to
//! see exactly which cases changed (the corpus tests only compare rates).
//!
//!     OUTCOMES=/tmp/before.txt cargo test -p portcullis-waf --release --test outcomes -- --ignored
//!     # change the engine
//!     OUTCOMES=/tmp/after.txt cargo test -p portcullis-waf --release --test outcomes -- --ignored
//!     diff /tmp/before.txt /tmp/after.txt
#![allow(clippy::unwrap_used)]
mod support;
use base64::Engine as _;
use std::fmt::Write as _;
use support::{corpora, engine, Req};

fn case_request(case: &serde_json::Value) -> Option<Req> {
    if let Some(raw) = case["raw_b64"].as_str() {
        let bytes = base64::engine::general_purpose::STANDARD.decode(raw).ok()?;
        return Req::from_raw(&bytes);
    }
    let mut req = Req {
        method: case["method"].as_str().unwrap_or("GET").to_string(),
        uri: case["uri"].as_str().unwrap_or("/").to_string(),
        ..Default::default()
    };
    if let Some(headers) = case["headers"].as_object() {
        for (k, v) in headers {
            req.headers
                .push((k.clone(), v.as_str().unwrap_or("").as_bytes().to_vec()));
        }
    }
    if let Some(body) = case["body"].as_str() {
        req.body = body.as_bytes().to_vec();
    }
    Some(req)
}

fn line_of(e: &portcullis_waf::Engine, req: &Req) -> String {
    let ev = req.evaluate(e);
    let mut f: Vec<String> = ev
        .findings
        .iter()
        .map(|f| format!("{}@{}", f.rule_id, f.target))
        .collect();
    f.sort();
    f.dedup();
    format!("{:?} score={} {}", e.decision(&ev), ev.score, f.join(","))
}

fn q(raw: &[u8]) -> String {
    raw.iter()
        .map(|&b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

#[test]
#[ignore = "a tool: writes $OUTCOMES (default /tmp/outcomes.txt) for before/after diffs"]
fn dump_outcomes() {
    let Some(dir) = corpora() else { return };
    let out_path = std::env::var("OUTCOMES").unwrap_or("/tmp/outcomes.txt".into());
    let mut out = String::new();
    let text = std::fs::read_to_string(dir.join("waf/crs-regression-v4.jsonl")).unwrap();
    for pl in [1u8, 2] {
        let e = engine(pl);
        for (i, line) in text.lines().filter(|l| !l.trim().is_empty()).enumerate() {
            let case: serde_json::Value = serde_json::from_str(line).unwrap();
            if let Some(req) = case_request(&case) {
                writeln!(out, "crs pl{pl} {i} {} {}", case["test"], line_of(&e, &req)).unwrap();
            }
        }
    }
    let e = engine(1);
    let mut files: Vec<_> = std::fs::read_dir(dir.join("waf/libinjection"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "txt"))
        .collect();
    files.sort();
    for f in files {
        let bytes = std::fs::read(&f).unwrap();
        for (i, l) in String::from_utf8_lossy(&bytes).lines().enumerate() {
            if l.trim().is_empty() || l.starts_with('#') {
                continue;
            }
            let raw =
                portcullis_waf::transform::url_decode_repeated(l.as_bytes(), false).into_owned();
            let uri = format!("/search?q={}", q(&raw));
            let req = Req::new("GET", &uri);
            writeln!(
                out,
                "li {} {i} {}",
                f.file_name().unwrap().to_string_lossy(),
                line_of(&e, &req)
            )
            .unwrap();
            // the same value as a JSON string leaf and as a JSON key
            let s = String::from_utf8_lossy(&raw).into_owned();
            let body = serde_json::json!({"a": {"b": [s.clone()]}, s.clone(): 1}).to_string();
            let req = Req::new("POST", "/x").json(&body);
            writeln!(
                out,
                "lij {} {i} {}",
                f.file_name().unwrap().to_string_lossy(),
                line_of(&e, &req)
            )
            .unwrap();
        }
    }
    std::fs::write(out_path, out).unwrap();
}
