//! Turns a request into the list of named values the rules inspect.
//!
//! Every parser is iterative and bounded by the caller's limits: a hostile body can make
//! us stop early (which is itself a finding), never recurse deeply or allocate without bound.

use serde_json::Value;

use crate::transform::decode_value;

/// What kind of value a target is; rules select targets by kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Path,
    ArgName,
    Arg,
    Cookie,
    CookieName,
    Header,
    Filename,
    /// A body that was not parsed into arguments (unknown type, or a fallback).
    Body,
}

impl Kind {
    pub(crate) fn bit(self) -> u16 {
        match self {
            Kind::Path => 1,
            Kind::ArgName => 2,
            Kind::Arg => 4,
            Kind::Cookie => 8,
            Kind::CookieName => 16,
            Kind::Header => 32,
            Kind::Filename => 64,
            Kind::Body => 128,
        }
    }
}

/// One inspected value, already decoded (URL, overlong UTF-8, lossy UTF-8, HTML entities).
#[derive(Debug, Clone)]
pub struct Target {
    pub kind: Kind,
    /// Collection prefix: `Query`, `Form`, `Json`, `Multipart`, `Xml`, `Cookie`, `Header`...
    pub collection: &'static str,
    /// Argument, header or cookie name, or a JSON path (`$.user.name`).
    pub key: String,
    pub value: String,
    /// Length of the raw value before it was cut to the argument length limit.
    pub raw_len: usize,
}

impl Target {
    /// `Query:q`, `Json:$.user.name`, `Path`.
    pub fn label(&self) -> String {
        if self.key.is_empty() {
            self.collection.to_string()
        } else {
            format!("{}:{}", self.collection, self.key)
        }
    }
}

/// Longest JSON path or argument name kept in a label.
const MAX_KEY_LEN: usize = 128;

fn clip(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Limits that bound the work per request.
#[derive(Debug, Clone, Copy)]
pub struct ParseLimits {
    pub max_args: usize,
    pub max_arg_length: usize,
    pub max_json_depth: usize,
}

/// Protocol problems found while parsing; the engine turns them into findings.
#[derive(Debug, Default, Clone)]
pub struct ParseIssues {
    pub too_many_args: bool,
    pub arg_too_long: Option<String>,
    pub json_too_deep: Option<usize>,
    pub body_parse_error: Option<&'static str>,
}

pub struct Collector<'l> {
    pub limits: &'l ParseLimits,
    pub targets: Vec<Target>,
    pub issues: ParseIssues,
    pub args: usize,
}

impl<'l> Collector<'l> {
    pub fn new(limits: &'l ParseLimits) -> Self {
        Collector {
            limits,
            targets: Vec::new(),
            issues: ParseIssues::default(),
            args: 0,
        }
    }

    /// Counts one argument; `false` once the limit is passed (the rest is not inspected,
    /// and the request carries a `maxArgs` finding).
    fn count_arg(&mut self) -> bool {
        self.args += 1;
        if self.args > self.limits.max_args {
            self.issues.too_many_args = true;
            return false;
        }
        true
    }

    fn cut<'a>(&mut self, label: impl FnOnce() -> String, raw: &'a [u8]) -> &'a [u8] {
        if raw.len() > self.limits.max_arg_length {
            if self.issues.arg_too_long.is_none() {
                self.issues.arg_too_long = Some(label());
            }
            // Inspect the head of the value: the finding above already scores the request,
            // and inspecting a prefix keeps the cost bounded by the limit.
            &raw[..self.limits.max_arg_length]
        } else {
            raw
        }
    }

    pub fn push(
        &mut self,
        kind: Kind,
        collection: &'static str,
        key: &str,
        raw: &[u8],
        url_encoded: bool,
        plus_as_space: bool,
    ) {
        // An unparsed body is not an argument: it is bounded by `inspectBodyBytes` alone.
        let cut = if kind == Kind::Body {
            raw
        } else {
            self.cut(|| format!("{collection}:{}", clip(key, MAX_KEY_LEN)), raw)
        };
        self.targets.push(Target {
            kind,
            collection,
            key: clip(key, MAX_KEY_LEN).to_string(),
            value: decode_value(cut, url_encoded, plus_as_space),
            raw_len: raw.len(),
        });
    }

    /// `a=1&b=2` (query strings and form bodies): names and values.
    pub fn urlencoded(&mut self, collection: &'static str, input: &[u8], plus_as_space: bool) {
        for pair in input.split(|&b| b == b'&') {
            if pair.is_empty() {
                continue;
            }
            if !self.count_arg() {
                return;
            }
            let (name, value) = match pair.iter().position(|&b| b == b'=') {
                Some(i) => (&pair[..i], Some(&pair[i + 1..])),
                None => (pair, None),
            };
            let name_text = decode_value(
                &name[..name.len().min(self.limits.max_arg_length)],
                true,
                plus_as_space,
            );
            self.push(
                Kind::ArgName,
                "ArgName",
                &name_text,
                name,
                true,
                plus_as_space,
            );
            if let Some(value) = value {
                self.push(
                    Kind::Arg,
                    collection,
                    &name_text,
                    value,
                    true,
                    plus_as_space,
                );
            }
        }
    }

    pub fn cookies(&mut self, header: &[u8]) {
        for pair in header.split(|&b| b == b';') {
            let pair = trim(pair);
            if pair.is_empty() {
                continue;
            }
            if !self.count_arg() {
                return;
            }
            let (name, value) = match pair.iter().position(|&b| b == b'=') {
                Some(i) => (&pair[..i], &pair[i + 1..]),
                None => (pair, &b""[..]),
            };
            let name_text =
                String::from_utf8_lossy(&name[..name.len().min(MAX_KEY_LEN)]).into_owned();
            self.push(
                Kind::CookieName,
                "CookieName",
                &name_text,
                name,
                true,
                false,
            );
            self.push(Kind::Cookie, "Cookie", &name_text, value, true, false);
        }
    }

    /// Every key and scalar leaf of a JSON document, depth first, without recursion.
    pub fn json(&mut self, body: &[u8], truncated: bool) {
        let depth = json_depth(body);
        if depth > self.limits.max_json_depth {
            self.issues.json_too_deep = Some(depth);
        }
        // serde_json refuses documents nested deeper than 128 levels; anything that deep is
        // already a finding, so inspect it as raw text rather than parse it.
        let parsed = if depth <= 128 {
            serde_json::from_slice::<Value>(body).ok()
        } else {
            None
        };
        let Some(value) = parsed else {
            if !truncated && self.issues.json_too_deep.is_none() {
                self.issues.body_parse_error = Some("invalid JSON");
            }
            self.push(Kind::Body, "Body", "", body, false, false);
            return;
        };
        let mut stack: Vec<(String, &Value)> = vec![("$".to_string(), &value)];
        while let Some((path, v)) = stack.pop() {
            match v {
                Value::Object(map) => {
                    for (k, child) in map.iter() {
                        if !self.count_arg() {
                            return;
                        }
                        let child_path = format!("{}.{}", clip(&path, MAX_KEY_LEN), k);
                        // Keys are attacker-chosen data too (payloads split across keys).
                        self.push(
                            Kind::ArgName,
                            "JsonKey",
                            &child_path,
                            k.as_bytes(),
                            false,
                            false,
                        );
                        stack.push((child_path, child));
                    }
                }
                Value::Array(items) => {
                    for (i, child) in items.iter().enumerate().rev() {
                        stack.push((format!("{}[{i}]", clip(&path, MAX_KEY_LEN)), child));
                    }
                }
                leaf => {
                    if !self.count_arg() {
                        return;
                    }
                    match leaf {
                        Value::String(s) => {
                            self.push(Kind::Arg, "Json", &path, s.as_bytes(), false, false)
                        }
                        Value::Number(n) => {
                            let s = n.to_string();
                            self.push(Kind::Arg, "Json", &path, s.as_bytes(), false, false)
                        }
                        _ => {}
                    }
                }
            }
        }
    }

    /// `multipart/form-data`: field names and values, file names; file contents are not
    /// inspected (binary uploads would drown the rules in noise).
    pub fn multipart(&mut self, body: &[u8], boundary: &str, truncated: bool) {
        let delimiter = format!("--{boundary}");
        let d = delimiter.as_bytes();
        let mut parts = split_on(body, d);
        // The preamble before the first delimiter is ignored by servers; so are we.
        parts.next();
        let mut closed = false;
        for part in parts {
            if part.starts_with(b"--") {
                closed = true;
                break;
            }
            if !self.count_arg() {
                return;
            }
            let part = part
                .strip_prefix(b"\r\n")
                .or_else(|| part.strip_prefix(b"\n"))
                .unwrap_or(part);
            let (head, content) = match find(part, b"\r\n\r\n") {
                Some(i) => (&part[..i], &part[i + 4..]),
                None => match find(part, b"\n\n") {
                    Some(i) => (&part[..i], &part[i + 2..]),
                    None => (part, &b""[..]),
                },
            };
            let content = content
                .strip_suffix(b"\r\n")
                .or_else(|| content.strip_suffix(b"\n"))
                .unwrap_or(content);
            let head_text = String::from_utf8_lossy(head);
            let mut name = String::new();
            let mut filename = None;
            for line in head_text.lines() {
                let lower = line.to_ascii_lowercase();
                if lower.starts_with("content-disposition") {
                    name = disposition_param(line, "name").unwrap_or_default();
                    filename = disposition_param(line, "filename")
                        .or_else(|| disposition_param(line, "filename*"));
                }
            }
            self.push(
                Kind::ArgName,
                "ArgName",
                &name,
                name.as_bytes(),
                false,
                false,
            );
            match filename {
                Some(f) => self.push(
                    Kind::Filename,
                    "Filename",
                    &name,
                    f.as_bytes(),
                    false,
                    false,
                ),
                None => self.push(Kind::Arg, "Multipart", &name, content, false, false),
            }
        }
        if !closed && !truncated {
            self.issues.body_parse_error = Some("multipart body without a closing boundary");
        }
    }

    /// XML: element text and attribute values (what CRS calls `XML:/*`).
    pub fn xml(&mut self, body: &[u8]) {
        let text = String::from_utf8_lossy(body);
        let mut rest: &str = &text;
        while !rest.is_empty() {
            match rest.find('<') {
                Some(start) => {
                    let before = rest[..start].trim();
                    if !before.is_empty() {
                        if !self.count_arg() {
                            return;
                        }
                        self.push(Kind::Arg, "Xml", "", before.as_bytes(), false, false);
                    }
                    let tag_rest = &rest[start..];
                    let end = tag_rest.find('>').map_or(tag_rest.len(), |e| e + 1);
                    let tag = &tag_rest[..end];
                    for value in quoted_values(tag) {
                        if !self.count_arg() {
                            return;
                        }
                        self.push(Kind::Arg, "Xml", "@", value.as_bytes(), false, false);
                    }
                    rest = &tag_rest[end..];
                }
                None => {
                    let tail = rest.trim();
                    if !tail.is_empty() && self.count_arg() {
                        self.push(Kind::Arg, "Xml", "", tail.as_bytes(), false, false);
                    }
                    return;
                }
            }
        }
    }
}

fn quoted_values(tag: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut rest = tag;
    while let Some(i) = rest.find(['"', '\'']) {
        let q = &rest[i..i + 1];
        let after = &rest[i + 1..];
        match after.find(q) {
            Some(j) => {
                out.push(&after[..j]);
                rest = &after[j + 1..];
            }
            None => break,
        }
    }
    out
}

fn disposition_param(line: &str, param: &str) -> Option<String> {
    for piece in line.split(';').skip(1) {
        let piece = piece.trim();
        if let Some((k, v)) = piece.split_once('=') {
            if k.trim().eq_ignore_ascii_case(param) {
                let v = v.trim();
                let v = v
                    .strip_prefix("utf-8''")
                    .or_else(|| v.strip_prefix("UTF-8''"))
                    .unwrap_or(v);
                return Some(v.trim_matches('"').to_string());
            }
        }
    }
    None
}

fn trim(b: &[u8]) -> &[u8] {
    let start = b
        .iter()
        .position(|c| !c.is_ascii_whitespace())
        .unwrap_or(b.len());
    let end = b
        .iter()
        .rposition(|c| !c.is_ascii_whitespace())
        .map_or(start, |e| e + 1);
    &b[start..end.max(start)]
}

pub(crate) fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() || hay.len() < needle.len() {
        return None;
    }
    memchr_find(hay, needle)
}

fn memchr_find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    let first = needle[0];
    let mut i = 0;
    while i + needle.len() <= hay.len() {
        match hay[i..hay.len() - needle.len() + 1]
            .iter()
            .position(|&b| b == first)
        {
            Some(p) => {
                let at = i + p;
                if &hay[at..at + needle.len()] == needle {
                    return Some(at);
                }
                i = at + 1;
            }
            None => return None,
        }
    }
    None
}

fn split_on<'a>(hay: &'a [u8], delim: &'a [u8]) -> impl Iterator<Item = &'a [u8]> + 'a {
    let mut rest = Some(hay);
    std::iter::from_fn(move || {
        let r = rest?;
        match find(r, delim) {
            Some(i) => {
                rest = Some(&r[i + delim.len()..]);
                Some(&r[..i])
            }
            None => {
                rest = None;
                Some(r)
            }
        }
    })
}

/// Maximum nesting of a JSON text, ignoring brackets inside strings. Linear, no recursion.
pub fn json_depth(body: &[u8]) -> usize {
    let (mut depth, mut max, mut in_string, mut escaped) = (0usize, 0usize, false, false);
    for &b in body {
        if in_string {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'{' | b'[' => {
                depth += 1;
                max = max.max(depth);
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    max
}

/// `multipart/form-data; boundary=xyz` → `xyz`.
pub fn boundary(content_type: &str) -> Option<String> {
    content_type.split(';').skip(1).find_map(|p| {
        let (k, v) = p.trim().split_once('=')?;
        k.trim()
            .eq_ignore_ascii_case("boundary")
            .then(|| v.trim().trim_matches('"').to_string())
            .filter(|b| !b.is_empty())
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const LIMITS: ParseLimits = ParseLimits {
        max_args: 10,
        max_arg_length: 100,
        max_json_depth: 3,
    };

    #[test]
    fn json_keys_and_leaves() {
        let mut c = Collector::new(&LIMITS);
        c.json(br#"{"user": {"name": "bob", "tags": ["a", 1]}}"#, false);
        let labels: Vec<String> = c.targets.iter().map(Target::label).collect();
        assert!(
            labels.contains(&"Json:$.user.name".to_string()),
            "{labels:?}"
        );
        assert!(
            labels.contains(&"Json:$.user.tags[1]".to_string()),
            "{labels:?}"
        );
        assert!(
            labels.contains(&"JsonKey:$.user.name".to_string()),
            "{labels:?}"
        );
        assert!(c.issues.json_too_deep.is_none());
        let mut c = Collector::new(&LIMITS);
        c.json(br#"{"a": [[[["x"]]]]}"#, false);
        assert_eq!(c.issues.json_too_deep, Some(5));
    }

    #[test]
    fn multipart_names_and_files() {
        let body = b"--xx\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\nhello\r\n--xx\r\nContent-Disposition: form-data; name=\"f\"; filename=\"x.php\"\r\nContent-Type: text/plain\r\n\r\n<?php\r\n--xx--\r\n";
        let mut c = Collector::new(&LIMITS);
        c.multipart(body, "xx", false);
        let labels: Vec<(String, String)> = c
            .targets
            .iter()
            .map(|t| (t.label(), t.value.clone()))
            .collect();
        assert!(
            labels.contains(&("Multipart:a".into(), "hello".into())),
            "{labels:?}"
        );
        assert!(
            labels.contains(&("Filename:f".into(), "x.php".into())),
            "{labels:?}"
        );
        assert!(c.issues.body_parse_error.is_none());
        assert_eq!(
            boundary("multipart/form-data; boundary=\"xx\"").as_deref(),
            Some("xx")
        );
    }

    #[test]
    fn arg_limits() {
        let mut c = Collector::new(&LIMITS);
        c.urlencoded("Query", "a=1&".repeat(20).as_bytes(), true);
        assert!(c.issues.too_many_args);
        let mut c = Collector::new(&LIMITS);
        c.urlencoded("Query", format!("a={}", "x".repeat(500)).as_bytes(), true);
        assert_eq!(c.issues.arg_too_long.as_deref(), Some("Query:a"));
    }
}
