#![allow(clippy::unwrap_used)]

use std::borrow::Cow;

use aho_corasick::MatchKind;

use crate::build::{build_regex, Engine, SlotMask};
use crate::class;
use crate::config::PolicyConfig;
use crate::evaluation::Evaluation;
use crate::memo::ShortKey;
use crate::parse::{Collector, Kind, Target};
use crate::protocol::hidden_segment;
use crate::request::RequestHead;
use crate::rules::{code, Check};
use crate::{rules, transform};

#[test]
fn hidden_segments_as_split_finds_them() {
    let by_split = |path: &'static str| {
        path.split('/')
            .find(|s| s.len() > 1 && s.starts_with('.') && *s != ".well-known")
    };
    for path in [
        "",
        "/",
        "//",
        "/a/b",
        "/a/.git/config",
        "/.well-known/x",
        "/.well-known/.env",
        ".env",
        "/a/.",
        "/a/..",
        "/a//.b",
        "/.x/",
        "x/.y",
        "/é/.ß",
        "/a/b.c/.d.e",
    ] {
        assert_eq!(hidden_segment(path), by_split(path), "{path:?}");
    }
}

#[test]
fn short_memo_keys_are_equal_only_for_equal_values() {
    // Every string of up to 6 bytes over a 2-letter alphabet, and random ones of up to
    // 16 bytes over 3 letters: the loads overlap differently at each length.
    let mut values: Vec<String> = vec![String::new()];
    for len in 1..=6 {
        for bits in 0..1u32 << len {
            values.push(
                (0..len)
                    .map(|i| if bits >> i & 1 == 1 { 'b' } else { 'a' })
                    .collect(),
            );
        }
    }
    let mut seed: u64 = 7;
    for _ in 0..1500 {
        seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
        let len = (seed >> 60) as usize + 1;
        values.push(
            (0..len)
                .map(|i| b"abc"[(seed >> (i * 3 + 8)) as usize % 3] as char)
                .collect(),
        );
    }
    for a in &values {
        for b in &values {
            let (ka, kb) = (ShortKey::of(Kind::Arg, a), ShortKey::of(Kind::Arg, b));
            assert_eq!(ka.is_some() && ka == kb, a == b, "{a:?} {b:?}");
        }
        assert_ne!(ShortKey::of(Kind::Arg, a), ShortKey::of(Kind::ArgName, a));
    }
}

#[test]
fn literal_walk_finds_what_overlapping_search_finds() {
    let e = Engine::new(PolicyConfig {
        paranoia_level: 4,
        ..PolicyConfig::default()
    })
    .unwrap();
    let ac = aho_corasick::AhoCorasick::builder()
        .match_kind(MatchKind::Standard)
        .build(&e.literals)
        .unwrap();
    let expected = |text: &[u8]| {
        ac.find_overlapping_iter(text).fold(0, |m: SlotMask, hit| {
            m | e.literal_slots[hit.pattern().as_usize()]
        })
    };
    // Every literal alone, inside text, overlapping its neighbours, and random mixes of
    // literal pieces and bytes (a fixed LCG, so failures reproduce).
    let mut texts: Vec<Vec<u8>> = Vec::new();
    for (i, lit) in e.literals.iter().enumerate() {
        let next = e.literals[(i + 1) % e.literals.len()];
        texts.push(lit.as_bytes().to_vec());
        texts.push(format!("x {lit} y").into_bytes());
        texts.push(format!("{lit}{next}").into_bytes());
        let mut half = lit.as_bytes()[..lit.len() / 2].to_vec();
        half.extend_from_slice(next.as_bytes());
        texts.push(half);
    }
    let mut seed: u64 = 0x2545_f491_4f6c_dd1d;
    let mut rand = |n: usize| {
        seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
        (seed >> 33) as usize % n
    };
    for _ in 0..20_000 {
        let mut t = Vec::new();
        for _ in 0..rand(6) + 1 {
            let lit = e.literals[rand(e.literals.len())].as_bytes();
            let from = rand(lit.len());
            t.extend_from_slice(&lit[from..]);
            t.push(b" ;'(/.-_a0"[rand(10)]);
        }
        texts.push(t);
    }
    for text in &texts {
        assert_eq!(
            e.literal_slots_of(text),
            expected(text),
            "{:?}",
            String::from_utf8_lossy(text)
        );
    }
}

/// Findings of a JSON body through the collecting path (every key and leaf collected,
/// then inspected): what the in-place walk must reproduce.
fn collected(e: &Engine, body: &[u8]) -> Vec<(u32, String)> {
    let mut eval = Evaluation::default();
    let mut c = Collector::new(&e.parse_limits);
    c.json(body, false);
    e.finish_collection(c, "/x", &mut eval);
    eval.findings
        .iter()
        .map(|f| (f.rule_id, f.target.clone()))
        .collect()
}

fn in_place(e: &Engine, body: &[u8]) -> Vec<(u32, String)> {
    let head = RequestHead {
        method: "POST",
        uri: "/x",
        headers: &[("host", b"h"), ("content-type", b"application/json")],
        client_ip: None,
    };
    let mut eval = Evaluation::default();
    e.inspect_body(&head, &mut eval, body, false);
    eval.findings
        .iter()
        .map(|f| (f.rule_id, f.target.clone()))
        .collect()
}

/// The in-place walk renders a path only for a value that a rule set or libinjection
/// inspects: the label must still name the member exactly (escaped keys, array
/// positions past the first, nesting) and be clipped like the collector's keys.
#[test]
fn json_in_place_labels_name_the_member() {
    let e = Engine::new(PolicyConfig::default()).unwrap();
    let attack = "1' or '1'='1";
    let labels_of = |doc: &str| -> Vec<String> {
        in_place(&e, doc.as_bytes())
            .into_iter()
            .map(|(_, t)| t)
            .collect()
    };
    let doc = format!(
        r#"{{"a": {{"b": [1, 2, {{"c\u0041": "{attack}"}}], "k": "x"}}, "d": [[], ["{attack}"]]}}"#
    );
    let targets = labels_of(&doc);
    assert!(
        targets.contains(&"Json:$.a.b[2].cA".to_string()),
        "{targets:?}"
    );
    assert!(
        targets.contains(&"Json:$.d[1][0]".to_string()),
        "{targets:?}"
    );
    // A key that is itself the attack is labelled with its own path.
    let doc = format!(r#"{{"a": [{{"ok": 1}}, {{"{attack}": 2}}]}}"#);
    let targets = labels_of(&doc);
    assert!(
        targets.contains(&format!("JsonKey:$.a[1].{attack}")),
        "{targets:?}"
    );
    // Long member names: each container's path is clipped to 128 bytes before its
    // member is appended, and the label's key to 128 bytes.
    let long = "m".repeat(100);
    let doc = format!(r#"{{"{long}": {{"{long}": {{"{long}": "{attack}"}}}}}}"#);
    let targets = labels_of(&doc);
    let key = format!("$.{long}.{long}");
    let expected = format!("Json:{}", &key[..128]);
    assert!(targets.contains(&expected), "{targets:?}");
    assert_eq!(in_place(&e, doc.as_bytes()), collected(&e, doc.as_bytes()));
}

#[test]
fn json_in_place_matches_collecting_path() {
    let numbers = [
        "0",
        "-1",
        "1.5",
        "1e5",
        "1E5",
        "1e+5",
        "-2.5E-3",
        "10.99",
        "1001",
        "123456789012345678901234567890",
        "0.000001",
        "-0",
        "2.2250738585072011e-308",
        "4294967296",
        "1e309",
    ];
    let strings = [
        "Jane O'Neil",
        "1' or '1'='1",
        "<script>alert(1)</script>",
        "../../etc/passwd",
        "; cat /etc/passwd",
        "union select password from users",
        "a\\\"b\\u0027 or 1=1--",
        "%27%20or%201%3D1",
        "Blue cotton shirt, size M",
    ];
    for pl in 1..=4 {
        let e = Engine::new(PolicyConfig {
            paranoia_level: pl,
            ..PolicyConfig::default()
        })
        .unwrap();
        for n in numbers {
            let doc = format!(r#"{{"a": {n}, "b": [{n}, {{"c": {n}}}]}}"#);
            assert_eq!(
                in_place(&e, doc.as_bytes()),
                collected(&e, doc.as_bytes()),
                "{doc}"
            );
        }
        for s in strings {
            let doc = format!(r#"{{"a": "{s}", "{s}": ["{s}", "{s}", {{"k": "{s}"}}], "n": 1}}"#);
            assert_eq!(
                in_place(&e, doc.as_bytes()),
                collected(&e, doc.as_bytes()),
                "{doc}"
            );
        }
        // Repeated values (the memo) and more values than the memo has slots.
        let many: Vec<String> = (0..200)
            .map(|i| format!(r#"{{"id": "v{}", "q": "1' or '{i}'='{i}"}}"#, i % 70))
            .collect();
        let doc = format!("[{}]", many.join(","));
        assert_eq!(in_place(&e, doc.as_bytes()), collected(&e, doc.as_bytes()));
    }
}

/// Rule 942360's literals stand for `order` only before whitespace, `/` or `*`: every
/// text on which the rule matches, as normalized or as the SQL-comment alternate the
/// engine also tries, must still hold one of its literals in the normalized text.
#[test]
fn order_literals_cover_every_order_by_match() {
    let rule = rules::builtin()
        .iter()
        .find(|r| r.check.id == 942360)
        .unwrap();
    let re = build_regex(rule.pattern).unwrap();
    let pieces = [
        "order", "ORDER", "by", " ", "\t", "\n", "\r", "\x0b", "\x0c", "\0", "/*", "*/", "/*!",
        "/*!500", "1", "--", ";", "#", "*", "/", "x", "_id", "(", "'",
    ];
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut rand = |n: usize| {
        seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
        (seed >> 33) as usize % n
    };
    // Separators that may or may not become `\s+` once comments are removed.
    let gaps = [
        " ", "\t", "\n", "\0", "/**/", "/*x*/", "/*!", "*/", "/*!500", "*", "/", "",
    ];
    let mut matched = 0;
    for i in 0..120_000 {
        let mut t = String::new();
        if i % 2 == 0 {
            // Shaped like `order by 1` with random gaps and a random end.
            for _ in 0..rand(2) {
                t.push_str(pieces[rand(pieces.len())]);
            }
            t.push_str(["order", "ORDER", "/*!order", "/*!5order"][rand(4)]);
            for _ in 0..rand(3) + 1 {
                t.push_str(gaps[rand(gaps.len())]);
            }
            t.push_str("by");
            for _ in 0..rand(3) + 1 {
                t.push_str(gaps[rand(gaps.len())]);
            }
            t.push('1');
            for _ in 0..rand(2) {
                t.push_str(pieces[rand(pieces.len())]);
            }
        } else {
            for _ in 0..rand(9) + 1 {
                t.push_str(pieces[rand(pieces.len())]);
            }
        }
        // As the engine normalizes it, and lowercased only (the argument does not
        // depend on how the text the set sees was made).
        for text in [
            transform::lower_compress(&t).into_owned(),
            t.to_ascii_lowercase(),
        ] {
            let alt = transform::remove_sql_comments(&text);
            if re.is_match(text.as_bytes()) || re.is_match(alt.as_bytes()) {
                matched += 1;
                assert!(
                    rule.literals.iter().any(|l| text.contains(l)),
                    "{text:?} matches 942360 without a literal"
                );
            }
        }
    }
    assert!(matched > 1_000, "only {matched} matches");
}

/// Each rule's examples are found: the pattern matches each, each contains one of the rule's
/// prefilter literals (a value without one never reaches the pattern), and a whole engine at
/// PL4 reports the rule on it as a target the rule applies to.
#[test]
fn every_rule_has_examples_that_it_finds() {
    let engine = Engine::new(PolicyConfig {
        paranoia_level: 4,
        ..PolicyConfig::default()
    })
    .unwrap();
    let mut problems = Vec::new();
    for rule in rules::builtin() {
        let id = rule.check.id;
        if rule.examples.is_empty() {
            problems.push(format!("{id}: no examples"));
        }
        let pattern = build_regex(rule.pattern).unwrap();
        for example in rule.examples {
            if !pattern.is_match(example.as_bytes()) {
                problems.push(format!("{id}: pattern does not match {example:?}"));
            }
            if !rule.literals.is_empty() && !rule.literals.iter().any(|l| example.contains(l)) {
                problems.push(format!("{id}: {example:?} contains none of its literals"));
            }
            let (kind, collection, key) = match rule.header {
                Some(name) => (Kind::Header, "Header", name),
                None => [
                    (Kind::Arg, "Query", "q"),
                    (Kind::ArgName, "ArgName", ""),
                    (Kind::Header, "Header", "x-example"),
                    (Kind::Filename, "Filename", "f"),
                    (Kind::Path, "Path", ""),
                    (Kind::Body, "Body", ""),
                    (Kind::Cookie, "Cookie", "c"),
                    (Kind::CookieName, "CookieName", ""),
                ]
                .into_iter()
                .find(|(kind, _, _)| rule.scope & kind.bit() != 0)
                .unwrap(),
            };
            let target = Target::in_place(
                kind,
                collection,
                Cow::Borrowed(example),
                class::of(example.as_bytes()),
                example.len(),
            );
            let mut eval = Evaluation::default();
            engine.inspect_target(&target, || key, "/", &mut eval, &mut String::new());
            if !eval.findings.iter().any(|f| f.rule_id == id) {
                problems.push(format!(
                    "{id}: the engine does not find it in {example:?} as a {kind:?} (found {:?})",
                    eval.rule_ids()
                ));
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// A finding's id names one kind of check: the pattern rules of one id are alternatives of
/// one check (same group and message), and a code check has an id of its own, except
/// 930130, CRS's "restricted file access", which is both a pattern rule (named files) and
/// the code check for any hidden path segment.
#[test]
fn check_ids_are_unique() {
    let mut seen: std::collections::HashMap<u32, &Check> = std::collections::HashMap::new();
    for rule in rules::builtin() {
        if let Some(other) = seen.insert(rule.check.id, &rule.check) {
            assert_eq!(
                (other.group, other.msg),
                (rule.check.group, rule.check.msg),
                "{} is used by two different rules",
                rule.check.id
            );
        }
    }
    let mut shared = Vec::new();
    for check in code::ALL {
        if let Some(rule) = seen.get(&check.id) {
            assert_eq!(rule.group, check.group, "{}", check.id);
            shared.push(check.id);
        }
    }
    assert_eq!(shared, [code::HIDDEN_FILE.id]);
    let mut code_ids: Vec<u32> = code::ALL.iter().map(|c| c.id).collect();
    code_ids.sort_unstable();
    code_ids.dedup();
    assert_eq!(
        code_ids.len(),
        code::ALL.len(),
        "two code checks share an id"
    );
}

/// The one validation of custom rules: what it reports (every problem, in order) is what the
/// engine refuses to build with (the first one), so a policy the compiler accepted builds.
#[test]
fn custom_rule_validation_is_the_engines_own() {
    use crate::config::CustomRuleIssue;
    use crate::config::{Action, CustomRule, Operator, WafError};
    use crate::custom::validate_custom_rules;
    let rule = |id: u32, targets: &[&str], operator: Operator, value: &str| CustomRule {
        id,
        description: None,
        targets: targets.iter().map(|t| t.to_string()).collect(),
        operator,
        value: value.to_string(),
        transforms: Vec::new(),
        action: Action::Block,
        score: 5,
    };
    let issue = |index: usize, field: &'static str, message: &str| CustomRuleIssue {
        index,
        field,
        message: message.to_string(),
    };
    let bad = vec![
        rule(1, &["Nowhere"], Operator::Regex, "(unclosed"),
        rule(1, &["Body"], Operator::IpMatch, "1.2.3.4, nope"),
        rule(2, &[], Operator::Contains, "x"),
        rule(3, &["Header:bad name", "Json:"], Operator::Equals, "x"),
    ];
    assert_eq!(
        validate_custom_rules(&bad),
        [
            issue(
                0,
                "targets",
                "\"Nowhere\" is not one of Path, Query, Args, ArgNames, Headers, Header:NAME, \
                 Cookies, Body, JsonValues"
            ),
            issue(0, "value", "invalid regex: unclosed group"),
            issue(1, "id", "1 is used twice"),
            issue(1, "value", "\"nope\" is not an IP or CIDR"),
            issue(2, "targets", "at least one target is required"),
            issue(
                3,
                "targets",
                "\"Header:bad name\" is not one of Path, Query, Args, ArgNames, Headers, \
                 Header:NAME, Cookies, Body, JsonValues"
            ),
            issue(
                3,
                "targets",
                "\"Json:\" is not one of Path, Query, Args, ArgNames, Headers, Header:NAME, \
                 Cookies, Body, JsonValues"
            ),
        ]
    );
    for at in 0..bad.len() {
        let rules = bad[at..].to_vec();
        let expected = validate_custom_rules(&rules).remove(0);
        let err = Engine::new(PolicyConfig {
            custom_rules: rules,
            ..PolicyConfig::default()
        })
        .unwrap_err();
        match err {
            WafError::CustomRule(got) => assert_eq!(got, expected, "rules from {at}"),
            other => panic!("rules from {at}: {other}"),
        }
    }
    let good = vec![
        rule(
            1,
            &["Header:X-Tool", "Args:q", "Json:$.a"],
            Operator::Regex,
            "(?i)x",
        ),
        rule(2, &["Method"], Operator::IpMatch, "10.0.0.0/8, ::1"),
    ];
    assert!(validate_custom_rules(&good).is_empty());
    Engine::new(PolicyConfig {
        custom_rules: good,
        ..PolicyConfig::default()
    })
    .unwrap();
}

/// Every check written as code has an example, and each example is flagged by its check.
#[test]
fn each_code_check_flags_its_examples() {
    use crate::config::{Limits, PolicyConfig};
    let (max_json_depth, max_args, max_arg_length) = code::EXAMPLE_LIMITS;
    let config = PolicyConfig {
        allowed_methods: code::EXAMPLE_ALLOWED_METHODS
            .iter()
            .map(|m| m.to_string())
            .collect(),
        limits: Limits {
            max_json_depth,
            max_args,
            max_arg_length,
            ..Limits::default()
        },
        ..PolicyConfig::default()
    };
    let engine = Engine::new(config).expect("the example policy builds");
    for check in code::ALL {
        assert!(
            code::EXAMPLES.iter().any(|e| e.check.id == check.id),
            "check {} ({}) has no example",
            check.id,
            check.msg
        );
    }
    for e in &code::EXAMPLES {
        let req = RequestHead {
            method: e.method,
            uri: e.uri,
            headers: e.headers,
            client_ip: None,
        };
        let eval = engine.inspect(&req, e.body);
        assert!(
            eval.findings.iter().any(|f| f.rule_id == e.check.id),
            "example of {} ({}) not flagged: {} {} → {:?}",
            e.check.id,
            e.check.msg,
            e.method,
            e.uri,
            eval.rule_ids()
        );
    }
    // The same policy flags none of them on a plain request.
    let headers: [(&str, &[u8]); 2] = [
        ("Host", b"api.example.com"),
        ("Content-Type", b"application/json"),
    ];
    let clean = RequestHead {
        method: "POST",
        uri: "/orders?page=2",
        headers: &headers,
        client_ip: None,
    };
    let eval = engine.inspect(&clean, br#"{"sku":"A-1","qty":2}"#);
    assert!(eval.findings.is_empty(), "{:?}", eval.rule_ids());
}
