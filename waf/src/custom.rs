//! The policy's own `customRules`: compiled once, matched against re-collected targets.

use std::net::IpAddr;

use regex::{Regex, RegexBuilder};

use crate::build::Engine;
use crate::config::{Action, CustomRule, Group, Operator, TransformKind, WafError};
use crate::evaluation::Evaluation;
use crate::libinjection::detect_sqli;
use crate::parse::Collector;
use crate::request::RequestHead;
use crate::transform;

pub(crate) enum Matcher {
    Regex(Regex),
    Contains(String),
    BeginsWith(String),
    Equals(String),
    DetectSqli,
    DetectXss,
    IpMatch(Vec<ipnet::IpNet>),
}

pub(crate) struct CompiledCustom {
    pub(crate) rule: CustomRule,
    pub(crate) matcher: Matcher,
}

pub(crate) fn compile_custom(rule: &CustomRule) -> Result<CompiledCustom, WafError> {
    let matcher = match rule.operator {
        Operator::Regex => Matcher::Regex(
            RegexBuilder::new(&rule.value)
                .size_limit(1 << 20)
                .build()
                .map_err(|e| WafError::CustomRegex {
                    id: rule.id,
                    message: e.to_string(),
                })?,
        ),
        Operator::Contains => Matcher::Contains(rule.value.clone()),
        Operator::BeginsWith => Matcher::BeginsWith(rule.value.clone()),
        Operator::Equals => Matcher::Equals(rule.value.clone()),
        Operator::DetectSqli => Matcher::DetectSqli,
        Operator::DetectXss => Matcher::DetectXss,
        Operator::IpMatch => Matcher::IpMatch(
            rule.value
                .split(',')
                .map(str::trim)
                .map(|p| {
                    p.parse::<ipnet::IpNet>()
                        .or_else(|_| p.parse::<IpAddr>().map(ipnet::IpNet::from))
                        .map_err(|_| WafError::CustomIp {
                            id: rule.id,
                            value: p.to_string(),
                        })
                })
                .collect::<Result<_, _>>()?,
        ),
    };
    Ok(CompiledCustom {
        rule: rule.clone(),
        matcher,
    })
}

pub(crate) fn custom_matches(m: &Matcher, value: &str, client_ip: Option<IpAddr>) -> bool {
    match m {
        Matcher::Regex(r) => r.is_match(value),
        Matcher::Contains(s) => value.contains(s.as_str()),
        Matcher::BeginsWith(s) => value.starts_with(s.as_str()),
        Matcher::Equals(s) => value == s,
        Matcher::DetectSqli => detect_sqli(value.as_bytes()).is_some(),
        Matcher::DetectXss => libinjectionrs::detect_xss(value.as_bytes()).is_injection(),
        // The value is parsed as an address (e.g. `Header:X-Forwarded-For`); without one,
        // the client address is used.
        Matcher::IpMatch(nets) => {
            let ip = value
                .split(',')
                .next()
                .and_then(|v| v.trim().parse::<IpAddr>().ok())
                .or(client_ip);
            ip.is_some_and(|ip| nets.iter().any(|n| n.contains(&ip)))
        }
    }
}

pub(crate) fn apply_transforms(value: &str, transforms: &[TransformKind]) -> String {
    let mut v = value.to_string();
    for t in transforms {
        v = match t {
            TransformKind::UrlDecode => {
                String::from_utf8_lossy(&transform::url_decode_repeated(v.as_bytes(), false))
                    .into_owned()
            }
            TransformKind::HtmlEntityDecode => transform::html_entity_decode(&v).into_owned(),
            TransformKind::Lowercase => v.to_lowercase(),
            TransformKind::CompressWhitespace => transform::compress_whitespace(&v),
            TransformKind::RemoveNulls => transform::remove_nulls(&v).into_owned(),
            TransformKind::NormalizePath => transform::normalize_path(&v),
            TransformKind::Base64Decode => match transform::base64_decode(&v) {
                Some(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
                None => v,
            },
        };
    }
    v
}

/// Custom-rule target selectors (docs/waf.md): `Path`, `Method`, `Query`, `Args`, `ArgNames`,
/// `Headers`, `Header:NAME`, `Cookies`, `Cookie:NAME`, `Body`, `JsonValues`, `Json:PATH`,
/// `Query:NAME`, `Args:NAME`.
pub(crate) fn selects(selector: &str, label: &str) -> bool {
    let (collection, key) = label.split_once(':').unwrap_or((label, ""));
    match selector {
        "Path" | "Method" | "Body" => label == selector,
        "Query" => collection == "Query",
        "Args" => matches!(collection, "Query" | "Form" | "Json" | "Multipart" | "Xml"),
        "ArgNames" => matches!(collection, "ArgName" | "JsonKey"),
        "Headers" => collection == "Header",
        "Cookies" => collection == "Cookie",
        "JsonValues" => collection == "Json",
        _ => match selector.split_once(':') {
            Some(("Header", name)) => collection == "Header" && key.eq_ignore_ascii_case(name),
            Some(("Args", name)) => {
                matches!(collection, "Query" | "Form" | "Json" | "Multipart") && key == name
            }
            Some((c, name)) => c == collection && key == name,
            None => false,
        },
    }
}

impl Engine {
    pub(crate) fn run_custom(
        &self,
        req: &RequestHead<'_>,
        path_norm: &str,
        body: Option<&[u8]>,
        eval: &mut Evaluation,
        head: bool,
    ) {
        if self.custom.is_empty() {
            return;
        }
        // The custom rule targets are re-collected here (custom rules are few, and keeping
        // them separate keeps the built-in hot path free of per-target selector checks).
        let mut values: Vec<(String, String)> = Vec::new();
        let mut c = Collector::new(&self.parse_limits);
        if head {
            values.push(("Method".into(), req.method.to_string()));
            values.push(("Path".into(), path_norm.to_string()));
            if let Some(q) = req.query_raw() {
                c.urlencoded("Query", q.as_bytes());
            }
            for (name, value) in req.headers {
                let lower = name.to_ascii_lowercase();
                if lower == "cookie" {
                    c.cookies(value);
                }
                values.push((
                    format!("Header:{lower}"),
                    String::from_utf8_lossy(value).into_owned(),
                ));
            }
        } else if let Some(body) = body {
            values.push(("Body".into(), String::from_utf8_lossy(body).into_owned()));
            let ct = req
                .header("content-type")
                .map(|v| String::from_utf8_lossy(v).to_ascii_lowercase())
                .unwrap_or_default();
            if ct.contains("json") {
                c.json(body, eval.body_truncated);
            } else if ct.contains("x-www-form-urlencoded") {
                c.urlencoded("Form", body);
            }
        }
        for t in &c.targets {
            values.push((t.label(&c.keys), t.value.to_string()));
        }
        for rule in &self.custom {
            for (label, value) in &values {
                if !rule.rule.targets.iter().any(|sel| selects(sel, label)) {
                    continue;
                }
                let value = apply_transforms(value, &rule.rule.transforms);
                if !custom_matches(&rule.matcher, &value, req.client_ip) {
                    continue;
                }
                let score = match rule.rule.action {
                    Action::Log => 0,
                    Action::Block | Action::Score => rule.rule.score,
                };
                let before = eval.findings.len();
                self.record(
                    eval,
                    path_norm,
                    rule.rule.id,
                    Group::Custom,
                    label,
                    score,
                    &value,
                    "custom rule",
                );
                if eval.findings.len() > before && rule.rule.action == Action::Block {
                    eval.forced_block.get_or_insert(rule.rule.id);
                }
                break;
            }
        }
    }
}
