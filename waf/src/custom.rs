//! The policy's own `customRules`: compiled once, matched against re-collected targets.

use std::collections::HashSet;
use std::net::IpAddr;

use regex::{Regex, RegexBuilder};

use crate::config::{
    Action, CustomRule, CustomRuleIssue, Exclusion, Group, Operator, TransformKind, WafError,
};
use crate::evaluation::Evaluation;
use crate::libinjection::detect_sqli;
use crate::parse::{Collector, ParseLimits};
use crate::request::RequestHead;
use crate::rules::Check;
use crate::selectors::selects;
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
    /// What its findings say: the rule's id and score (0 for `Log`), group `Custom`.
    pub(crate) check: Check,
    pub(crate) rule: CustomRule,
    pub(crate) matcher: Matcher,
}

/// Every problem of `rules`, in order (the one validation of custom rules: the compiler
/// reports these on the WafPolicy, [`Engine::new`] refuses the first).
pub fn validate_custom_rules(rules: &[CustomRule]) -> Vec<CustomRuleIssue> {
    let mut issues = Vec::new();
    let mut ids = HashSet::new();
    for (index, rule) in rules.iter().enumerate() {
        check_custom(index, rule, &mut ids, &mut issues);
    }
    issues
}

/// The rule's matcher, or `None` with its problems added to `issues`. `ids` are the ids
/// of the rules before it.
fn check_custom(
    index: usize,
    rule: &CustomRule,
    ids: &mut HashSet<u32>,
    issues: &mut Vec<CustomRuleIssue>,
) -> Option<Matcher> {
    let before = issues.len();
    let mut issue = |field: &'static str, message: String| {
        issues.push(CustomRuleIssue {
            index,
            field,
            message,
        })
    };
    if !ids.insert(rule.id) {
        issue("id", format!("{} is used twice", rule.id));
    }
    if rule.targets.is_empty() {
        issue("targets", "at least one target is required".to_string());
    }
    for target in &rule.targets {
        if !valid_target(target) {
            issue(
                "targets",
                format!(
                    "{target:?} is not one of Path, Query, Args, ArgNames, Headers, \
                     Header:NAME, Cookies, Body, JsonValues"
                ),
            );
        }
    }
    let matcher = match rule.operator {
        Operator::Regex => match RegexBuilder::new(&rule.value).size_limit(1 << 20).build() {
            Ok(re) => Some(Matcher::Regex(re)),
            Err(e) => {
                issue(
                    "value",
                    format!("invalid regex: {}", one_line_regex_error(&e)),
                );
                None
            }
        },
        Operator::Contains => Some(Matcher::Contains(rule.value.clone())),
        Operator::BeginsWith => Some(Matcher::BeginsWith(rule.value.clone())),
        Operator::Equals => Some(Matcher::Equals(rule.value.clone())),
        Operator::DetectSqli => Some(Matcher::DetectSqli),
        Operator::DetectXss => Some(Matcher::DetectXss),
        Operator::IpMatch => {
            let mut nets = Vec::new();
            for part in rule.value.split(',').map(str::trim) {
                match part
                    .parse::<ipnet::IpNet>()
                    .or_else(|_| part.parse::<IpAddr>().map(ipnet::IpNet::from))
                {
                    Ok(net) => nets.push(net),
                    Err(_) => issue("value", format!("{part:?} is not an IP or CIDR")),
                }
            }
            Some(Matcher::IpMatch(nets))
        }
    };
    matcher.filter(|_| issues.len() == before)
}

/// The regex crate's errors draw a caret diagram over several lines; a status condition
/// is one line.
fn one_line_regex_error(e: &regex::Error) -> String {
    let text = e.to_string();
    text.lines()
        .rev()
        .find_map(|l| l.strip_prefix("error: "))
        .unwrap_or(text.as_str())
        .to_string()
}

/// Selectors [`selects`] understands.
fn valid_target(target: &str) -> bool {
    const PLAIN: [&str; 9] = [
        "Path",
        "Query",
        "Args",
        "ArgNames",
        "Headers",
        "Cookies",
        "Body",
        "JsonValues",
        "Method",
    ];
    if PLAIN.contains(&target) {
        return true;
    }
    match target.split_once(':') {
        Some(("Header", name)) => is_token(name),
        Some(("Query" | "Args" | "Cookie" | "Json", name)) => !name.is_empty(),
        _ => false,
    }
}

/// An HTTP token (RFC 9110): a header name.
fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// The compiled custom rules of a policy, or its first problem.
pub(crate) fn compile_custom_rules(rules: &[CustomRule]) -> Result<CustomRules, WafError> {
    let mut ids = HashSet::new();
    let mut issues = Vec::new();
    let mut compiled = Vec::with_capacity(rules.len());
    for (index, rule) in rules.iter().enumerate() {
        match check_custom(index, rule, &mut ids, &mut issues) {
            Some(matcher) => compiled.push(CompiledCustom {
                check: Check {
                    id: rule.id,
                    group: Group::Custom,
                    pl: 1,
                    score: match rule.action {
                        Action::Log => 0,
                        Action::Block | Action::Score => rule.score,
                    },
                    msg: "custom rule",
                },
                rule: rule.clone(),
                matcher,
            }),
            None => break,
        }
    }
    match issues.into_iter().next() {
        Some(issue) => Err(WafError::CustomRule(issue)),
        None => Ok(CustomRules(compiled)),
    }
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

/// A policy's custom rules, compiled once per config.
#[derive(Default)]
pub(crate) struct CustomRules(pub(crate) Vec<CompiledCustom>);

impl CustomRules {
    pub(crate) fn len(&self) -> usize {
        self.0.len()
    }

    #[allow(clippy::too_many_arguments)]
    pub(crate) fn run(
        &self,
        limits: &ParseLimits,
        exclusions: &[Exclusion],
        req: &RequestHead<'_>,
        path_norm: &str,
        body: Option<&[u8]>,
        eval: &mut Evaluation,
        head: bool,
    ) {
        if self.0.is_empty() {
            return;
        }
        // The custom rule targets are re-collected here (custom rules are few, and keeping
        // them separate keeps the built-in hot path free of per-target selector checks).
        let mut values: Vec<(String, String)> = Vec::new();
        let mut c = Collector::new(limits);
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
        for rule in &self.0 {
            for (label, value) in &values {
                if !rule.rule.targets.iter().any(|sel| selects(sel, label)) {
                    continue;
                }
                let value = apply_transforms(value, &rule.rule.transforms);
                if !custom_matches(&rule.matcher, &value, req.client_ip) {
                    continue;
                }
                let before = eval.findings.len();
                eval.record(exclusions, path_norm, &rule.check, label, &value);
                if eval.findings.len() > before && rule.rule.action == Action::Block {
                    eval.forced_block.get_or_insert(rule.rule.id);
                }
                break;
            }
        }
    }
}
