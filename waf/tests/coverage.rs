//! Portcullis' own corpora (`tests/corpora/portcullis/`): attack classes CRS covers thinly or
//! not at all (NoSQL, template injection, SSI/ESI, LDAP, mail headers, deserialization and
//! expression languages) and the encodings of traversal and command injection, each sent the
//! ways a client would send it; and benign prose that mentions the words injection rules look
//! for. Detection is asserted as floors and the prose false-positive rate as a ceiling, at PL1.
#![allow(clippy::unwrap_used)]

mod support;

use std::path::PathBuf;

use portcullis_waf::{Decision, Engine, Evaluation};
use support::{engine, Req};

fn corpus(name: &str) -> Vec<String> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/corpora/portcullis")
        .join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "corpus {} is missing ({e}): it is part of the repository",
            path.display()
        )
    });
    text.lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .map(str::to_string)
        .collect()
}

/// Query-string form of a payload that is already written as it would travel in a URL:
/// its `%XX` escapes stay, characters a query cannot carry literally are escaped.
fn query_escape(payload: &str) -> String {
    let mut out = String::with_capacity(payload.len() * 2);
    for b in payload.bytes() {
        match b {
            b' ' => out.push_str("%20"),
            b'&' | b'#' | b'+' | b'=' | b'"' | b'<' | b'>' | b'`' | b'{' | b'}' | b'|' | b'\\'
            | b'^' | b'[' | b']' => out.push_str(&format!("%{b:02X}")),
            0..=0x1f | 0x7f..=0xff => out.push_str(&format!("%{b:02X}")),
            _ => out.push(b as char),
        }
    }
    out
}

/// Every byte escaped that is not unreserved: a plain-text value in a query or form.
fn form_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len() * 3);
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// One URL decoding, as a client building a JSON document from the payload would do; a
/// payload whose decoding is not UTF-8 (overlong forms) travels in JSON as written.
fn url_decode_once(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let Ok(v) = u8::from_str_radix(&text[i + 1..i + 3], 16) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8(out).unwrap_or_else(|_| text.to_string())
}

/// The requests that carry one attack line: a line starting with `?` is a whole query
/// string, `{` a JSON body; anything else a value in a query argument, in a form field and in
/// a JSON string field.
fn attack_requests(line: &str) -> Vec<(&'static str, Req)> {
    if line.starts_with('?') {
        return vec![("query", Req::new("GET", &format!("/search{line}")))];
    }
    if line.starts_with('{') {
        return vec![("json", Req::new("POST", "/api").json(line))];
    }
    let decoded = url_decode_once(line);
    vec![
        (
            "query",
            Req::new("GET", &format!("/search?q={}", query_escape(line))),
        ),
        (
            "form",
            Req::new("POST", "/submit").body(
                "application/x-www-form-urlencoded",
                format!("name=x&comment={}", query_escape(line)),
            ),
        ),
        (
            "json",
            Req::new("POST", "/api").json(&serde_json::json!({ "comment": decoded }).to_string()),
        ),
    ]
}

fn benign_requests(line: &str) -> Vec<(&'static str, Req)> {
    vec![
        (
            "form",
            Req::new("POST", "/submit").body(
                "application/x-www-form-urlencoded",
                format!("name=x&comment={}", form_escape(line)),
            ),
        ),
        (
            "json",
            Req::new("POST", "/api").json(
                &serde_json::json!({ "title": "feedback", "comment": line, "code": line })
                    .to_string(),
            ),
        ),
        (
            "query",
            Req::new("GET", &format!("/search?q={}", form_escape(line))),
        ),
    ]
}

fn blocked(engine: &Engine, eval: &Evaluation) -> bool {
    engine.decision(eval) != Decision::Allow
}

struct Rate {
    hit: usize,
    of: usize,
    misses: Vec<String>,
}

impl Rate {
    fn share(&self) -> f64 {
        self.hit as f64 / self.of.max(1) as f64
    }

    fn report(&self, what: &str, tag: &str) {
        println!(
            "{what}: {:.2}% ({}/{})",
            self.share() * 100.0,
            self.hit,
            self.of
        );
        for line in &self.misses {
            println!("  {tag} {line}");
        }
    }
}

/// Share of requests blocked over every placement of every line of `file`; `misses` lists the
/// attacks that passed, or the benign requests that were blocked (with the rules that did it).
fn measure(engine: &Engine, file: &str, benign: bool) -> Rate {
    let mut rate = Rate {
        hit: 0,
        of: 0,
        misses: Vec::new(),
    };
    let build = if benign {
        benign_requests
    } else {
        attack_requests
    };
    for line in corpus(file) {
        for (placement, req) in build(&line) {
            rate.of += 1;
            let eval = req.evaluate(engine);
            let hit = blocked(engine, &eval);
            rate.hit += usize::from(hit);
            if hit == benign {
                let rules: Vec<_> = eval
                    .findings
                    .iter()
                    .map(|f| (f.rule_id, f.target.clone()))
                    .collect();
                rate.misses.push(format!("{placement}: {line} {rules:?}"));
            }
        }
    }
    rate
}

fn detection(engine: &Engine, file: &str) -> Rate {
    measure(engine, file, false)
}

fn false_positives(engine: &Engine, file: &str) -> Rate {
    measure(engine, file, true)
}

const FLOORS: [(&str, f64); 8] = [
    ("nosql.attack.txt", 0.95),
    ("ssti.attack.txt", 0.95),
    ("ssi.attack.txt", 0.95),
    ("ldap.attack.txt", 0.90),
    ("mail.attack.txt", 0.95),
    ("deserialization.attack.txt", 0.95),
    ("traversal.attack.txt", 0.95),
    ("cmdi.attack.txt", 0.95),
];

#[test]
fn own_attack_corpora_meet_their_pl1_floors() {
    let engine = engine(1);
    println!("| corpus | PL1 detection |");
    println!("|---|---|");
    let mut failures = Vec::new();
    for (file, floor) in FLOORS {
        let rate = detection(&engine, file);
        println!(
            "| {file} | {:.1}% ({}/{}) |",
            rate.share() * 100.0,
            rate.hit,
            rate.of
        );
        for miss in &rate.misses {
            println!("  MISS {miss}");
        }
        if rate.share() < floor {
            failures.push(format!(
                "{file}: {:.1}% < {:.0}%",
                rate.share() * 100.0,
                floor * 100.0
            ));
        }
    }
    assert!(failures.is_empty(), "detection floors missed: {failures:?}");
}

#[test]
fn benign_prose_passes_at_pl1() {
    let engine = engine(1);
    let rate = false_positives(&engine, "prose.benign.txt");
    rate.report("prose false positives at PL1", "FP");
    assert!(
        rate.of > 1000,
        "the prose corpus shrank: {} requests",
        rate.of
    );
    assert!(
        rate.share() <= 0.01,
        "prose false positives {:.2}% > 1%",
        rate.share() * 100.0
    );
}

#[test]
fn look_alikes_of_the_new_groups_pass_at_pl1() {
    let engine = engine(1);
    let rate = false_positives(&engine, "groups.benign.txt");
    rate.report("look-alikes blocked at PL1", "FP");
    assert_eq!(rate.hit, 0, "look-alike values blocked: {:?}", rate.misses);
}

/// Written after the rules and never used to tune them: what detection looks like on attacks
/// the rules were not shaped around. The floor is low on purpose; the measured rate is in
/// docs/waf.md.
#[test]
fn held_out_attacks_are_mostly_caught() {
    let engine = engine(1);
    let rate = detection(&engine, "heldout.attack.txt");
    rate.report("held-out detection at PL1", "MISS");
    assert!(
        rate.share() >= 0.75,
        "held-out detection {:.1}% < 75%",
        rate.share() * 100.0
    );
}
