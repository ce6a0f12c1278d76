//! libinjection's own data files (`waf/tests/corpora/waf/libinjection`): detection on the
//! `sqli-*` and `xss-*` files and the false-positive rate on `false_positives.txt`, for
//! libinjection alone (the `libinjectionrs` port) and for the whole engine at PL1 with each
//! input as a query argument.
#![allow(clippy::unwrap_used)]

mod support;

use portcullis_waf::transform::url_decode_repeated;
use portcullis_waf::Decision;
use support::{corpora, engine, Req};

fn inputs(prefix: &str) -> Vec<String> {
    let dir = corpora().unwrap().join("waf/libinjection");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(prefix) && n.ends_with(".txt"))
        })
        .collect();
    files.sort();
    files
        .iter()
        .flat_map(|f| {
            let bytes = std::fs::read(f).unwrap();
            String::from_utf8_lossy(&bytes)
                .lines()
                .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .collect()
}

/// The data files are URL-encoded, one input a line; `+` is literal.
fn decoded(line: &str) -> Vec<u8> {
    url_decode_repeated(line.as_bytes(), false).into_owned()
}

fn query_escape(raw: &[u8]) -> String {
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

struct Rates {
    total: usize,
    libinjection: usize,
    engine: usize,
}

fn rates(prefix: &str, detect: fn(&[u8]) -> bool) -> Rates {
    let engine = engine(1);
    let lines = inputs(prefix);
    let mut r = Rates {
        total: lines.len(),
        libinjection: 0,
        engine: 0,
    };
    for line in &lines {
        let raw = decoded(line);
        r.libinjection += usize::from(detect(&raw));
        let uri = format!("/search?q={}", query_escape(&raw));
        let eval = Req::new("GET", &uri).evaluate(&engine);
        r.engine += usize::from(engine.decision(&eval) == Decision::Block);
    }
    r
}

fn pct(n: usize, d: usize) -> f64 {
    100.0 * n as f64 / d.max(1) as f64
}

#[test]
fn libinjection_data_files() {
    if corpora().is_none() {
        return;
    }
    let sqli = rates("sqli-", |b| libinjectionrs::detect_sqli(b).is_injection());
    let xss = rates("xss-", |b| libinjectionrs::detect_xss(b).is_injection());
    let fp = rates("false_positives", |b| {
        libinjectionrs::detect_sqli(b).is_injection()
    });
    println!("| data | inputs | libinjection alone | engine at PL1 (as a query argument) |");
    println!("|---|---|---|---|");
    for (name, r) in [
        ("sqli-*", &sqli),
        ("xss-*", &xss),
        ("false_positives.txt", &fp),
    ] {
        println!(
            "| {name} | {} | {} ({:.1}%) | {} ({:.1}%) |",
            r.total,
            r.libinjection,
            pct(r.libinjection, r.total),
            r.engine,
            pct(r.engine, r.total)
        );
    }
    assert!(pct(sqli.engine, sqli.total) >= 99.0);
    assert!(pct(xss.engine, xss.total) >= 95.0);
}
