//! Turns a request into the list of named values the rules inspect.
//!
//! Every parser is iterative and bounded by the caller's limits: a hostile body can make
//! us stop early (which is itself a finding), never recurse deeply or allocate without bound.

use std::borrow::Cow;
use std::ops::Range;

use crate::class;
use crate::transform::decode_value;

/// A decoded value and its byte classes; borrowed when decoding changes nothing (one scan
/// finds that out: no `%`, `+`, `&` or overlong lead bytes, and valid UTF-8).
pub(crate) fn decode(raw: &[u8]) -> (Cow<'_, str>, u64) {
    let class = class::of(raw);
    if class & class::DECODE == 0 {
        if let Ok(text) = std::str::from_utf8(raw) {
            return (Cow::Borrowed(text), class);
        }
    }
    let text = decode_value(raw).into_owned();
    let class = class::of(text.as_bytes());
    (Cow::Owned(text), class)
}

/// [`decode`] for text already known to be UTF-8 (JSON strings).
pub(crate) fn decode_text(text: &str) -> (Cow<'_, str>, u64) {
    decode_classified(text, class::of(text.as_bytes()))
}

/// [`decode_text`] for text whose classes are known (`class` is `class::of(text)`).
pub(crate) fn decode_classified(text: &str, class: u64) -> (Cow<'_, str>, u64) {
    if class & class::DECODE == 0 {
        return (Cow::Borrowed(text), class);
    }
    let text = decode_value(text.as_bytes()).into_owned();
    let class = class::of(text.as_bytes());
    (Cow::Owned(text), class)
}

/// What kind of value a target is; rules select targets by kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
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
///
/// The value borrows the request when decoding changed nothing (most values); the key
/// (argument, header or cookie name, or JSON path) lives in the collector's key arena, so
/// a thousand JSON leaves cost no allocation each.
#[derive(Debug, Clone)]
pub struct Target<'a> {
    pub kind: Kind,
    /// Collection prefix: `Query`, `Form`, `Json`, `Multipart`, `Xml`, `Cookie`, `Header`...
    pub collection: &'static str,
    /// Range of the key in [`Collector::keys`].
    key: Range<usize>,
    pub value: Cow<'a, str>,
    /// Byte classes of `value` ([`crate::class`]).
    pub class: u64,
    /// Length of the raw value before it was cut to the argument length limit.
    pub raw_len: usize,
}

impl<'a> Target<'a> {
    /// A target without a key in an arena: the JSON walk inspecting a key or leaf in
    /// place gives the engine its path itself ([`json::JsonPath::render_key`]).
    pub(crate) fn in_place(
        kind: Kind,
        collection: &'static str,
        value: Cow<'a, str>,
        class: u64,
        raw_len: usize,
    ) -> Self {
        Target {
            kind,
            collection,
            key: 0..0,
            value,
            class,
            raw_len,
        }
    }

    /// Argument, header or cookie name, or a JSON path (`$.user.name`); `keys` is the
    /// arena of the collector that made the target.
    pub fn key<'k>(&self, keys: &'k str) -> &'k str {
        keys.get(self.key.clone()).unwrap_or("")
    }

    /// `Query:q`, `Json:$.user.name`, `Path`.
    pub fn label(&self, keys: &str) -> String {
        self.label_of(self.key(keys))
    }

    /// [`Target::label`] with the key given.
    pub(crate) fn label_of(&self, key: &str) -> String {
        if key.is_empty() {
            self.collection.to_string()
        } else {
            let mut label = String::with_capacity(self.collection.len() + 1 + key.len());
            label.push_str(self.collection);
            label.push(':');
            label.push_str(key);
            label
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

pub struct Collector<'l, 'a> {
    pub limits: &'l ParseLimits,
    pub targets: Vec<Target<'a>>,
    /// Every target's key, back to back (see [`Target::key`]).
    pub keys: String,
    pub issues: ParseIssues,
    pub args: usize,
    /// The JSON walk's current path, rendered (see [`Collector::with_path`]).
    path_buf: String,
}

impl<'l, 'a> Collector<'l, 'a> {
    pub fn new(limits: &'l ParseLimits) -> Self {
        Collector {
            limits,
            targets: Vec::new(),
            keys: String::new(),
            issues: ParseIssues::default(),
            args: 0,
            path_buf: String::new(),
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

    fn cut<'r>(&mut self, collection: &str, key: &str, raw: &'r [u8]) -> &'r [u8] {
        if raw.len() > self.limits.max_arg_length {
            if self.issues.arg_too_long.is_none() {
                self.issues.arg_too_long = Some(format!("{collection}:{}", clip(key, MAX_KEY_LEN)));
            }
            // Inspect the head of the value: the finding above already scores the request,
            // and inspecting a prefix keeps the cost bounded by the limit.
            &raw[..self.limits.max_arg_length]
        } else {
            raw
        }
    }

    fn intern(&mut self, key: &str) -> Range<usize> {
        let start = self.keys.len();
        self.keys.push_str(clip(key, MAX_KEY_LEN));
        start..self.keys.len()
    }

    /// A value as received: cut to `maxArgLength` (except a whole unparsed body, bounded by
    /// `inspectBodyBytes` alone), then decoded.
    pub fn push(&mut self, kind: Kind, collection: &'static str, key: &str, raw: &'a [u8]) {
        let cut = if kind == Kind::Body {
            raw
        } else {
            self.cut(collection, key, raw)
        };
        let (value, class) = decode(cut);
        self.push_decoded(kind, collection, key, value, class, raw.len());
    }

    /// [`Collector::push`] for text known to be UTF-8 (no second validation).
    pub fn push_text(&mut self, kind: Kind, collection: &'static str, key: &str, raw: &'a str) {
        if kind != Kind::Body && raw.len() > self.limits.max_arg_length {
            return self.push(kind, collection, key, raw.as_bytes());
        }
        let (value, class) = decode_text(raw);
        self.push_decoded(kind, collection, key, value, class, raw.len());
    }

    /// [`Collector::push`] for a value the parser had to build (unescaped, or from text
    /// that was not valid UTF-8).
    pub fn push_owned(&mut self, kind: Kind, collection: &'static str, key: &str, raw: &[u8]) {
        let cut = if kind == Kind::Body {
            raw
        } else {
            self.cut(collection, key, raw)
        };
        let (value, class) = decode(cut);
        let value = Cow::Owned(value.into_owned());
        self.push_decoded(kind, collection, key, value, class, raw.len());
    }

    /// A header value: bounded by the caller, not an argument.
    pub fn push_header(&mut self, lower_name: &str, value: &'a [u8]) {
        let (decoded, class) = decode(value);
        self.push_decoded(
            Kind::Header,
            "Header",
            lower_name,
            decoded,
            class,
            value.len(),
        );
    }

    fn push_decoded(
        &mut self,
        kind: Kind,
        collection: &'static str,
        key: &str,
        value: Cow<'a, str>,
        class: u64,
        raw_len: usize,
    ) {
        let key = self.intern(key);
        self.targets.push(Target {
            kind,
            collection,
            key,
            value,
            class,
            raw_len,
        });
    }

    /// `a=1&b=2` (query strings and form bodies): names and values.
    pub fn urlencoded(&mut self, collection: &'static str, input: &'a [u8]) {
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
            let name_text = decode_value(&name[..name.len().min(self.limits.max_arg_length)]);
            self.push(Kind::ArgName, "ArgName", &name_text, name);
            if let Some(value) = value {
                self.push(Kind::Arg, collection, &name_text, value);
            }
        }
    }

    pub fn cookies(&mut self, header: &'a [u8]) {
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
            let name_text = String::from_utf8_lossy(&name[..name.len().min(MAX_KEY_LEN)]);
            self.push(Kind::CookieName, "CookieName", &name_text, name);
            self.push(Kind::Cookie, "Cookie", &name_text, value);
        }
    }

    /// Every key and scalar leaf of a JSON document, in document order, without recursion
    /// and without building a tree: strings without escapes are inspected in place.
    ///
    /// The parser is as strict as `serde_json` (RFC 8259: no trailing commas or comments,
    /// UTF-8 strings without raw control characters, paired surrogates, finite numbers);
    /// a document it refuses is inspected as text and scored as unparsable, as before.
    /// Duplicate keys are all inspected (a backend may read either copy).
    pub fn json(&mut self, body: &'a [u8], truncated: bool) {
        let targets = self.targets.len();
        let keys = self.keys.len();
        let args = self.args;
        let issues = self.issues.clone();
        // A 1 KiB document holds ~100 keys and leaves; growing from empty costs a few
        // reallocations per request. Bounded so that a large body does not reserve much.
        self.targets.reserve((body.len() / 10).min(1024));
        self.keys.reserve((body.len() * 2).min(16 * 1024));
        match json::walk(body, self) {
            Ok(depth) => {
                if depth > self.limits.max_json_depth {
                    self.issues.json_too_deep = Some(depth);
                }
            }
            Err(_) => {
                // Undo what the walk pushed before it failed; the body is inspected whole.
                self.targets.truncate(targets);
                self.keys.truncate(keys);
                self.args = args;
                self.issues = issues;
                let depth = json_depth(body);
                if depth > self.limits.max_json_depth {
                    self.issues.json_too_deep = Some(depth);
                }
                // A document cut at `inspectBodyBytes` cannot parse; that is not an error,
                // and neither is one too deep to parse (already a finding).
                if !truncated && self.issues.json_too_deep.is_none() {
                    self.issues.body_parse_error = Some("invalid JSON");
                }
                self.push(Kind::Body, "Body", "", body);
            }
        }
    }

    /// `multipart/form-data`: field names and values, file names; file contents are not
    /// inspected (binary uploads would drown the rules in noise).
    pub fn multipart(&mut self, body: &'a [u8], boundary: &str, truncated: bool) {
        let delimiter = format!("--{boundary}");
        let d = delimiter.as_bytes();
        let mut parts = split_on(body, d);
        // The preamble before the first delimiter is ignored by servers; so are we.
        parts.next();
        let mut closed = false;
        let mut found_part = false;
        for part in parts {
            found_part = true;
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
            self.push_owned(Kind::ArgName, "ArgName", &name, name.as_bytes());
            match filename {
                Some(f) => self.push_owned(Kind::Filename, "Filename", &name, f.as_bytes()),
                None => self.push(Kind::Arg, "Multipart", &name, content),
            }
        }
        if !closed && !truncated {
            self.issues.body_parse_error = Some("multipart body without a closing boundary");
        }
        // Not multipart at all (the boundary never occurs): inspected as what it is.
        if !found_part {
            self.push(Kind::Body, "Body", "", body);
        }
    }

    /// XML: element text and attribute values (what CRS calls `XML:/*`), and the text of
    /// CDATA sections, comments, processing instructions and the DOCTYPE (entity values):
    /// an application that reads a CDATA section gets its payload as element text. A body
    /// that claims XML and is not well formed is a parse error and is inspected whole.
    pub fn xml(&mut self, body: &'a [u8], truncated: bool) {
        let text = String::from_utf8_lossy(body);
        let (values, well_formed) = xml_values(&text);
        for (key, range) in values {
            if !self.count_arg() {
                return;
            }
            match &text {
                Cow::Borrowed(t) => {
                    let value: &'a str = &t[range];
                    self.push_text(Kind::Arg, "Xml", key, value);
                }
                Cow::Owned(t) => self.push_owned(Kind::Arg, "Xml", key, t[range].as_bytes()),
            }
        }
        // A document cut at `inspectBodyBytes` ends inside markup without being malformed.
        if !well_formed && !truncated {
            self.issues.body_parse_error = Some("invalid XML");
            self.push(Kind::Body, "Body", "", body);
        }
    }
}

/// Markup whose content is text to an application, with its opening and closing.
const XML_TEXT_MARKUP: [(&str, &str, &str); 4] = [
    ("<![CDATA[", "]]>", "#cdata"),
    ("<!--", "-->", "#comment"),
    ("<?", "?>", "#pi"),
    ("<!DOCTYPE", ">", "#doctype"),
];

/// Element text (key `""`), attribute values (key `"@"`) and the content of CDATA sections,
/// comments, processing instructions and DOCTYPE declarations of an XML text, in order, and
/// whether every piece of markup was closed.
fn xml_values(text: &str) -> (Vec<(&'static str, Range<usize>)>, bool) {
    let mut out = Vec::new();
    let mut at = 0;
    let mut well_formed = true;
    let range_of = |s: &str| {
        let start = s.as_ptr() as usize - text.as_ptr() as usize;
        start..start + s.len()
    };
    while at < text.len() {
        let rest = &text[at..];
        let Some(start) = rest.find('<') else {
            let tail = rest.trim();
            if !tail.is_empty() {
                out.push(("", range_of(tail)));
            }
            break;
        };
        let before = rest[..start].trim();
        if !before.is_empty() {
            out.push(("", range_of(before)));
        }
        let markup = &rest[start..];
        let special = XML_TEXT_MARKUP.iter().find(|(open, _, _)| {
            markup
                .get(..open.len())
                .is_some_and(|m| m.eq_ignore_ascii_case(open))
        });
        if let Some((open, close, key)) = special {
            let inner = &markup[open.len()..];
            // The DOCTYPE's internal subset (`[ <!ENTITY …> ]`) holds `>`: it ends at `]>`.
            let end = if *key == "#doctype" && inner.contains('[') {
                inner.find("]>").map(|e| e + 1)
            } else {
                inner.find(close)
            };
            let (content, used) = match end {
                Some(e) => (&inner[..e], open.len() + e + close.len()),
                None => {
                    well_formed = false;
                    (inner, markup.len())
                }
            };
            let content = content.trim();
            if !content.is_empty() {
                out.push((key, range_of(content)));
            }
            at += start + used.min(markup.len());
            continue;
        }
        let end = match markup.find('>') {
            Some(e) => e + 1,
            None => {
                well_formed = false;
                markup.len()
            }
        };
        for value in quoted_values(&markup[..end]) {
            out.push(("@", range_of(value)));
        }
        at += start + end;
    }
    (out, well_formed)
}

/// What the JSON walk hands over: the collector (every key and leaf, inspected later), or
/// the engine inspecting each one as it is found.
pub(crate) trait JsonSink<'a> {
    /// Counts one key or leaf; `false` once `maxArgs` is passed (nothing more is kept).
    fn count_arg(&mut self) -> bool;
    /// A key or string leaf without escapes, borrowed from the document.
    fn text(
        &mut self,
        kind: Kind,
        collection: &'static str,
        path: &json::JsonPath<'_>,
        value: &'a str,
    );
    /// A key or string leaf the walk had to unescape.
    fn owned(
        &mut self,
        kind: Kind,
        collection: &'static str,
        path: &json::JsonPath<'_>,
        value: &[u8],
    );
    /// A number, as written.
    fn number(&mut self, path: &json::JsonPath<'_>, value: &'a str);
}

impl<'a> JsonSink<'a> for Collector<'_, 'a> {
    fn count_arg(&mut self) -> bool {
        Collector::count_arg(self)
    }

    fn text(
        &mut self,
        kind: Kind,
        collection: &'static str,
        path: &json::JsonPath<'_>,
        value: &'a str,
    ) {
        self.with_path(path, |c, key| c.push_text(kind, collection, key, value));
    }

    fn owned(
        &mut self,
        kind: Kind,
        collection: &'static str,
        path: &json::JsonPath<'_>,
        value: &[u8],
    ) {
        self.with_path(path, |c, key| c.push_owned(kind, collection, key, value));
    }

    fn number(&mut self, path: &json::JsonPath<'_>, value: &'a str) {
        self.with_path(path, |c, key| {
            c.push(Kind::Arg, "Json", key, value.as_bytes())
        });
    }
}

impl Collector<'_, '_> {
    /// Calls `push` with `path` rendered into the collector's reusable buffer (taken out
    /// of it for the call and put back): no allocation per key or leaf.
    fn with_path(&mut self, path: &json::JsonPath<'_>, push: impl FnOnce(&mut Self, &str)) {
        let mut key = std::mem::take(&mut self.path_buf);
        path.render(&mut key);
        push(self, &key);
        self.path_buf = key;
    }
}

/// The strict, iterative JSON walker behind [`Collector::json`].
pub(crate) mod json {
    use std::borrow::Cow;

    use super::{class, clip, JsonSink, Kind, MAX_KEY_LEN};

    /// Nesting past which the document is not parsed (serde_json's limit, kept so that
    /// what is refused did not change); it is inspected as text instead.
    const MAX_DEPTH: usize = 128;

    #[derive(Debug)]
    pub struct Invalid;

    /// An open container and where the walk is in it.
    enum Frame<'a> {
        /// The member being walked: its key (empty before the first key is read).
        Object { key: Cow<'a, str> },
        /// The element being walked is `next - 1`.
        Array { next: usize },
    }

    /// The path of the key or value being walked (`$.items[3].sku`), kept as the open
    /// containers' current members and only rendered when asked: most keys and leaves
    /// match nothing, and their paths are never read.
    pub struct JsonPath<'a> {
        frames: Vec<Frame<'a>>,
    }

    impl JsonPath<'_> {
        /// Writes the path into `out` (replacing its contents), as far as a key of at most
        /// `MAX_KEY_LEN` bytes can tell: each container's path is clipped to `MAX_KEY_LEN`
        /// before its member is appended, and a member name is appended up to a char
        /// boundary past byte `MAX_KEY_LEN` (every reader clips the path to `MAX_KEY_LEN`,
        /// and what it keeps is decided by the bytes up to that index). So a render copies
        /// at most ~`MAX_KEY_LEN` bytes per level however long the keys are: a deep
        /// document of long keys whose every leaf triggers a rule does not make each
        /// render copy all of them (unit test `json_path_render_is_the_clipped_path`).
        pub fn render(&self, out: &mut String) {
            out.clear();
            out.push('$');
            for frame in &self.frames {
                let base = clip(out, MAX_KEY_LEN).len();
                out.truncate(base);
                match frame {
                    Frame::Object { key } => {
                        out.push('.');
                        // At least MAX_KEY_LEN + 1 bytes of the key when it is longer
                        // (a char is at most 4 bytes), so `out` then reaches past index
                        // MAX_KEY_LEN and clips exactly as with the whole key.
                        out.push_str(clip(key, MAX_KEY_LEN + 4));
                    }
                    Frame::Array { next } => push_index(out, next.saturating_sub(1)),
                }
            }
        }

        /// The path as a target key: rendered into `out` and clipped as the collector
        /// clips keys.
        pub fn render_key<'b>(&self, out: &'b mut String) -> &'b str {
            self.render(out);
            clip(out, MAX_KEY_LEN)
        }
    }

    /// The length of the run of `bytes` up to the first `"`, `\\` or control character
    /// (`bytes.len()` if there is none): eight bytes per step, with the word tricks of
    /// `memchr` (a byte equal to `v` is a zero byte of `w ^ v`; `w - 0x01..` sets the top
    /// bit of a zero byte, and of a byte below `0x20` for `w - 0x20..`). Bytes above a
    /// match can be flagged falsely by the borrow, never below it, so the lowest flag is
    /// exact.
    pub(super) fn plain_run(bytes: &[u8]) -> usize {
        const LO: u64 = u64::from_le_bytes([0x01; 8]);
        const HI: u64 = u64::from_le_bytes([0x80; 8]);
        let zero = |w: u64| w.wrapping_sub(LO) & !w & HI;
        let mut n = 0;
        while let Some(chunk) = bytes.get(n..n + 8) {
            let mut word = [0u8; 8];
            word.copy_from_slice(chunk);
            let w = u64::from_le_bytes(word);
            let stop = zero(w ^ (LO * u64::from(b'"')))
                | zero(w ^ (LO * u64::from(b'\\')))
                | (w.wrapping_sub(LO * 0x20) & !w & HI);
            if stop != 0 {
                return n + (stop.trailing_zeros() / 8) as usize;
            }
            n += 8;
        }
        n + bytes[n..]
            .iter()
            .position(|&b| class::BYTE_CLASS[usize::from(b)] & class::JSON_STOP != 0)
            .unwrap_or(bytes.len() - n)
    }

    struct Reader<'a> {
        /// The document, valid UTF-8 (checked once: JSON outside strings is ASCII and
        /// strings must be UTF-8, so a document that is not is invalid anyway).
        text: &'a str,
        b: &'a [u8],
        i: usize,
    }

    impl<'a> Reader<'a> {
        fn skip_ws(&mut self) {
            while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.b.get(self.i) {
                self.i += 1;
            }
        }

        fn peek(&self) -> Option<u8> {
            self.b.get(self.i).copied()
        }

        fn expect(&mut self, byte: u8) -> Result<(), Invalid> {
            self.skip_ws();
            if self.peek() == Some(byte) {
                self.i += 1;
                Ok(())
            } else {
                Err(Invalid)
            }
        }

        fn literal(&mut self, word: &[u8]) -> Result<(), Invalid> {
            if self.b[self.i..].starts_with(word) {
                self.i += word.len();
                Ok(())
            } else {
                Err(Invalid)
            }
        }

        /// A string whose opening quote is at `self.i`: borrowed when it has no escapes.
        /// Its byte classes are left to the sink, which needs them only for a value it
        /// has not seen before in the request (most keys repeat).
        // Inlined: the escape handling is out of line, so what is left is a scan and a few
        // compares, less than a call's prologue and epilogue (most strings have no escape).
        #[inline(always)]
        fn string(&mut self) -> Result<Cow<'a, str>, Invalid> {
            self.i += 1;
            let start = self.i;
            let rest = self.b.get(start..).ok_or(Invalid)?;
            let run = plain_run(rest);
            if run == rest.len() {
                return Err(Invalid);
            }
            let end = start + run;
            self.i = end;
            if self.b[end] == b'"' {
                self.i += 1;
                // Both ends are ASCII quotes, so this is a char boundary slice.
                return self.text.get(start..end).map(Cow::Borrowed).ok_or(Invalid);
            }
            self.escaped(start, end).map(Cow::Owned)
        }

        /// The rest of a string whose plain run `start..end` ended at an escape (or at an
        /// invalid control character), unescaped into a copy.
        #[inline(never)]
        fn escaped(&mut self, start: usize, end: usize) -> Result<String, Invalid> {
            let mut out = String::from(self.text.get(start..end).ok_or(Invalid)?);
            loop {
                let seg = self.i;
                let end = seg
                    + self.b[seg..]
                        .iter()
                        .position(|&b| b == b'"' || b == b'\\' || b < 0x20)
                        .ok_or(Invalid)?;
                out.push_str(self.text.get(seg..end).ok_or(Invalid)?);
                self.i = end + 1;
                match self.b[end] {
                    b'"' => return Ok(out),
                    b'\\' => {}
                    _ => return Err(Invalid),
                }
                let c = match self.peek().ok_or(Invalid)? {
                    b'"' => '"',
                    b'\\' => '\\',
                    b'/' => '/',
                    b'b' => '\u{8}',
                    b'f' => '\u{c}',
                    b'n' => '\n',
                    b'r' => '\r',
                    b't' => '\t',
                    b'u' => {
                        self.i += 1;
                        out.push(self.unicode_escape()?);
                        continue;
                    }
                    _ => return Err(Invalid),
                };
                self.i += 1;
                out.push(c);
            }
        }

        fn hex4(&mut self) -> Result<u32, Invalid> {
            let digits = self.b.get(self.i..self.i + 4).ok_or(Invalid)?;
            let mut n = 0u32;
            for &d in digits {
                n = (n << 4) | char::from(d).to_digit(16).ok_or(Invalid)?;
            }
            self.i += 4;
            Ok(n)
        }

        /// After `\u`: one code point; surrogates must come in pairs (as serde_json
        /// requires for text).
        fn unicode_escape(&mut self) -> Result<char, Invalid> {
            let n = self.hex4()?;
            match n {
                0xDC00..=0xDFFF => Err(Invalid),
                0xD800..=0xDBFF => {
                    if self.b.get(self.i..self.i + 2) != Some(b"\\u") {
                        return Err(Invalid);
                    }
                    self.i += 2;
                    let low = self.hex4()?;
                    if !(0xDC00..=0xDFFF).contains(&low) {
                        return Err(Invalid);
                    }
                    char::from_u32(0x10000 + ((n - 0xD800) << 10) + (low - 0xDC00)).ok_or(Invalid)
                }
                _ => char::from_u32(n).ok_or(Invalid),
            }
        }

        /// A number (RFC 8259 grammar), as written in the document (ASCII: a slice of
        /// the text, no UTF-8 check).
        fn number(&mut self) -> Result<&'a str, Invalid> {
            let start = self.i;
            if self.peek() == Some(b'-') {
                self.i += 1;
            }
            let int_start = self.i;
            match self.peek() {
                Some(b'0') => self.i += 1,
                Some(b'1'..=b'9') => self.digits(),
                _ => return Err(Invalid),
            }
            let int_digits = self.i - int_start;
            if self.peek() == Some(b'.') {
                self.i += 1;
                if !matches!(self.peek(), Some(b'0'..=b'9')) {
                    return Err(Invalid);
                }
                self.digits();
            }
            let mut exponent: i64 = 0;
            if let Some(b'e' | b'E') = self.peek() {
                self.i += 1;
                let negative = match self.peek() {
                    Some(b'-') => {
                        self.i += 1;
                        true
                    }
                    Some(b'+') => {
                        self.i += 1;
                        false
                    }
                    _ => false,
                };
                let exp_start = self.i;
                if !matches!(self.peek(), Some(b'0'..=b'9')) {
                    return Err(Invalid);
                }
                self.digits();
                for &d in &self.b[exp_start..self.i] {
                    exponent = (exponent * 10 + i64::from(d - b'0')).min(1 << 40);
                }
                if negative {
                    exponent = -exponent;
                }
            }
            let text = self.text.get(start..self.i).ok_or(Invalid)?;
            // serde_json refuses numbers that overflow f64. The value is below
            // 10^(integer digits + exponent), so only when that reaches the 1e308 range does
            // the exact (slower) parse run.
            if int_digits as i64 + exponent >= 300 {
                let finite = text.parse::<f64>().ok().is_some_and(f64::is_finite);
                if !finite {
                    return Err(Invalid);
                }
            }
            Ok(text)
        }

        fn digits(&mut self) {
            while let Some(b'0'..=b'9') = self.peek() {
                self.i += 1;
            }
        }
    }

    /// Walks `body`, pushing keys and leaves into `c`; the document's nesting depth, or
    /// `Invalid` (nothing is kept then: the caller truncates what was pushed).
    pub fn walk<'a, S: JsonSink<'a>>(body: &'a [u8], c: &mut S) -> Result<usize, Invalid> {
        let text = std::str::from_utf8(body).map_err(|_| Invalid)?;
        let mut r = Reader {
            text,
            b: body,
            i: 0,
        };
        let mut path = JsonPath { frames: Vec::new() };
        let mut max_depth = 0;
        // Past `maxArgs` the walk goes on (the document must still be valid) but keeps
        // nothing more.
        let mut keep = true;
        r.skip_ws();
        'value: loop {
            // A value starts here; `path` is its path.
            r.skip_ws();
            match r.peek().ok_or(Invalid)? {
                open @ (b'{' | b'[') => {
                    r.i += 1;
                    if path.frames.len() >= MAX_DEPTH {
                        return Err(Invalid);
                    }
                    r.skip_ws();
                    if open == b'{' {
                        path.frames.push(Frame::Object {
                            key: Cow::Borrowed(""),
                        });
                        max_depth = max_depth.max(path.frames.len());
                        if r.peek() != Some(b'}') {
                            keep = key(&mut r, c, &mut path, keep)?;
                            continue 'value;
                        }
                        r.i += 1;
                    } else {
                        path.frames.push(Frame::Array { next: 1 });
                        max_depth = max_depth.max(path.frames.len());
                        if r.peek() != Some(b']') {
                            continue 'value;
                        }
                        r.i += 1;
                    }
                    path.frames.pop();
                }
                b'"' => {
                    let s = r.string()?;
                    keep = keep && c.count_arg();
                    if keep {
                        match s {
                            Cow::Borrowed(s) => c.text(Kind::Arg, "Json", &path, s),
                            Cow::Owned(s) => c.owned(Kind::Arg, "Json", &path, s.as_bytes()),
                        }
                    }
                }
                b'-' | b'0'..=b'9' => {
                    let n = r.number()?;
                    keep = keep && c.count_arg();
                    if keep {
                        c.number(&path, n);
                    }
                }
                b't' | b'f' | b'n' => {
                    match r.peek() {
                        Some(b't') => r.literal(b"true")?,
                        Some(b'f') => r.literal(b"false")?,
                        _ => r.literal(b"null")?,
                    }
                    keep = keep && c.count_arg();
                }
                _ => return Err(Invalid),
            }
            // After a value: a separator or the end of its container (or of the document).
            loop {
                r.skip_ws();
                match path.frames.last_mut() {
                    None => {
                        return if r.i == body.len() {
                            Ok(max_depth)
                        } else {
                            Err(Invalid)
                        };
                    }
                    Some(Frame::Object { .. }) => match r.peek() {
                        Some(b',') => {
                            r.i += 1;
                            keep = key(&mut r, c, &mut path, keep)?;
                            continue 'value;
                        }
                        Some(b'}') => {
                            r.i += 1;
                            path.frames.pop();
                        }
                        _ => return Err(Invalid),
                    },
                    Some(Frame::Array { next }) => match r.peek() {
                        Some(b',') => {
                            r.i += 1;
                            *next += 1;
                            continue 'value;
                        }
                        Some(b']') => {
                            r.i += 1;
                            path.frames.pop();
                        }
                        _ => return Err(Invalid),
                    },
                }
            }
        }
    }

    /// `"key":` of an object member; makes it the innermost object's current member and
    /// inspects the key itself (attacker-chosen data too: payloads are split across keys).
    // Inlined into the walk's two call sites: a call per key cost more than its body.
    #[inline(always)]
    fn key<'a, S: JsonSink<'a>>(
        r: &mut Reader<'a>,
        c: &mut S,
        path: &mut JsonPath<'a>,
        keep: bool,
    ) -> Result<bool, Invalid> {
        r.skip_ws();
        if r.peek() != Some(b'"') {
            return Err(Invalid);
        }
        let k = r.string()?;
        r.expect(b':')?;
        let borrowed = match k {
            Cow::Borrowed(k) => Some(k),
            Cow::Owned(_) => None,
        };
        let Some(Frame::Object { key: current }) = path.frames.last_mut() else {
            return Err(Invalid);
        };
        *current = k;
        let keep = keep && c.count_arg();
        if keep {
            match borrowed {
                Some(k) => c.text(Kind::ArgName, "JsonKey", path, k),
                None => {
                    if let Some(Frame::Object { key }) = path.frames.last() {
                        c.owned(Kind::ArgName, "JsonKey", path, key.as_bytes());
                    }
                }
            }
        }
        Ok(keep)
    }

    /// `[i]`, without the formatting machinery (one per array element).
    fn push_index(path: &mut String, mut i: usize) {
        if i < 10 {
            // Most arrays are short: no digit buffer.
            path.push('[');
            path.push(char::from(b'0' + i as u8));
            path.push(']');
            return;
        }
        let mut digits = [0u8; 20];
        let mut n = digits.len();
        loop {
            n -= 1;
            digits[n] = b'0' + (i % 10) as u8;
            i /= 10;
            if i == 0 {
                break;
            }
        }
        path.push('[');
        for &d in &digits[n..] {
            path.push(char::from(d));
        }
        path.push(']');
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
    if needle.is_empty() {
        return None;
    }
    memchr::memmem::find(hay, needle)
}

fn split_on<'h, 'd>(
    hay: &'h [u8],
    delim: &'d [u8],
) -> impl Iterator<Item = &'h [u8]> + use<'h, 'd> {
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

    fn labels(c: &Collector<'_, '_>) -> Vec<String> {
        c.targets.iter().map(|t| t.label(&c.keys)).collect()
    }

    #[test]
    fn json_keys_and_leaves() {
        let mut c = Collector::new(&LIMITS);
        c.json(br#"{"user": {"name": "bob", "tags": ["a", 1]}}"#, false);
        let labels = labels(&c);
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

    /// Keys and string leaves as serde_json sees them (decoded as the engine decodes, and
    /// without anything that reads as a number, since numbers are kept as written),
    /// `None` if it refuses the document.
    fn serde_strings(doc: &[u8]) -> Option<Vec<String>> {
        let value: serde_json::Value = serde_json::from_slice(doc).ok()?;
        let mut out = Vec::new();
        let mut stack = vec![&value];
        while let Some(v) = stack.pop() {
            match v {
                serde_json::Value::Object(map) => {
                    for (k, child) in map {
                        out.push(k.clone());
                        stack.push(child);
                    }
                }
                serde_json::Value::Array(items) => stack.extend(items),
                serde_json::Value::String(s) => out.push(s.clone()),
                _ => {}
            }
        }
        let mut out: Vec<String> = out
            .iter()
            .map(|s| decode_value(s.as_bytes()).into_owned())
            .filter(|s| !doc_number(s))
            .collect();
        out.sort();
        Some(out)
    }

    /// The same from our walker (keys and leaves that are not numbers).
    fn walker_strings(doc: &[u8]) -> Option<Vec<String>> {
        let limits = ParseLimits {
            max_args: usize::MAX,
            max_arg_length: usize::MAX,
            max_json_depth: 1000,
        };
        let mut c = Collector::new(&limits);
        json::walk(doc, &mut c).ok()?;
        let mut out: Vec<String> = c
            .targets
            .iter()
            .filter(|t| !doc_number(&t.value))
            .map(|t| t.value.to_string())
            .collect();
        out.sort();
        Some(out)
    }

    fn doc_number(v: &str) -> bool {
        v.parse::<f64>().is_ok() && !v.contains(['i', 'n', 'I', 'N'])
    }

    /// The word-at-a-time scan finds the first `"`, `\\` or control byte exactly: every
    /// byte value at every offset of a word and of the tail, over fillers that include
    /// the bytes around the thresholds (0x20, 0x7f, 0x80, 0xff), with a second stop
    /// byte after the first (the borrow can only flag bytes above a real match).
    #[test]
    fn plain_run_finds_the_first_stop_byte() {
        let reference = |b: &[u8]| {
            b.iter()
                .position(|&x| x == b'"' || x == b'\\' || x < 0x20)
                .unwrap_or(b.len())
        };
        for filler in [b'a', b' ', 0x7f, 0x80, 0xff, 0x21, 0x5b, 0x5d] {
            for len in [0, 1, 7, 8, 9, 15, 16, 17, 23] {
                let base = vec![filler; len];
                assert_eq!(json::plain_run(&base), reference(&base));
                for at in 0..len {
                    for b in 0..=255u8 {
                        let mut v = base.clone();
                        v[at] = b;
                        if at + 1 < len {
                            v[at + 1] = 0;
                        }
                        assert_eq!(json::plain_run(&v), reference(&v), "{v:?}");
                    }
                }
            }
        }
    }

    #[test]
    fn json_walker_agrees_with_serde_json() {
        let fixed: &[&[u8]] = &[
            br#"{"a": 1, "b": [true, false, null, "x", -0.5e-3, 0], "c": {"d": "e"}}"#,
            br#"  "top"  "#,
            b"12",
            b"-",
            b"01",
            b"1.",
            b"1.e3",
            b"1e",
            b"1e400",
            b"-1e309",
            b"0.5e308",
            b"0.5e400",
            b"0.0e999",
            b"-0.00001e309",
            b"9e307",
            b"[1,]",
            b"{\"a\":1,}",
            b"{\"a\" 1}",
            b"{a:1}",
            b"[1 2]",
            b"[] []",
            b"\"\\u00e9\\ud83d\\ude00\"",
            b"\"\\ud800\"",
            b"\"\\udc00\"",
            b"\"\\ud800\\u0041\"",
            b"\"\\x41\"",
            b"\"tab\there\"",
            b"\"\xff\"",
            b"\"\xc3\xa9\"",
            b"\"a\\/b\\\\c\\\"d\\b\\f\\n\\r\\t\"",
            b"tru",
            b"nulll",
            b"{\"a\":{\"a\":{\"a\":[[[]]]}}}",
            b"",
            b"   ",
            b"{\"\":\"\"}",
            b"\"\\u0000\"",
        ];
        for doc in fixed {
            assert_eq!(
                walker_strings(doc),
                serde_strings(doc),
                "{:?}",
                String::from_utf8_lossy(doc)
            );
        }
        let big = format!("1{}", "0".repeat(310));
        let small = format!("0.{}1e600", "0".repeat(300));
        let long = format!("[{}]", "1".repeat(300));
        for doc in [big, small, long] {
            assert_eq!(
                walker_strings(doc.as_bytes()).is_some(),
                serde_strings(doc.as_bytes()).is_some(),
                "{doc}"
            );
        }
        // Random token soup: mostly invalid documents, some valid ones.
        let pieces: &[&[u8]] = &[
            b"{",
            b"}",
            b"[",
            b"]",
            b",",
            b":",
            b" ",
            b"\"k\"",
            b"\"v w\"",
            b"\"\\u00e9\"",
            b"\"\\ud83d\\ude00\"",
            b"\"\\n\"",
            b"1",
            b"-2.5",
            b"3e2",
            b"0",
            b"true",
            b"null",
            b"\"%3C\"",
            b"\"a'b\"",
        ];
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut valid = 0;
        for _ in 0..50_000 {
            let mut doc = Vec::new();
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let n = 1 + (seed >> 60) as usize;
            for _ in 0..n {
                seed = seed
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                doc.extend_from_slice(pieces[(seed >> 33) as usize % pieces.len()]);
            }
            let expected = serde_strings(&doc);
            valid += usize::from(expected.is_some());
            assert_eq!(
                walker_strings(&doc),
                expected,
                "{:?}",
                String::from_utf8_lossy(&doc)
            );
        }
        assert!(valid > 1000, "{valid} valid documents");
    }

    /// The rendered path of a leaf, as readers see it (clipped to `MAX_KEY_LEN`), is the
    /// path the walk used to build incrementally: `$`, and at each level the path so far
    /// clipped to `MAX_KEY_LEN`, then `.key` whole; long keys, multi-byte characters
    /// around the clipping points, and escaped (owned) keys.
    #[test]
    fn json_path_render_is_the_clipped_path() {
        let reference = |keys: &[String]| {
            let mut path = String::from("$");
            for k in keys {
                let base = clip(&path, MAX_KEY_LEN).len();
                path.truncate(base);
                path.push('.');
                path.push_str(k);
            }
            clip(&path, MAX_KEY_LEN).to_string()
        };
        let pieces = ["k", "é", "😀", "ab"];
        let mut cases: Vec<Vec<String>> = Vec::new();
        for len in [1, 60, 125, 126, 127, 128, 129, 131, 133, 200, 5000] {
            for (p, piece) in pieces.iter().enumerate() {
                let long: String = piece.repeat(len / piece.len() + 1);
                let other = pieces[(p + 1) % pieces.len()].repeat(40);
                cases.push(vec![long.clone()]);
                cases.push(vec![long.clone(), other.clone()]);
                cases.push(vec![other.clone(), long.clone()]);
                cases.push(vec!["a".into(), long.clone(), long.clone(), "b".into()]);
                cases.push(vec![
                    long[..long.len() / 2 / piece.len() * piece.len()].to_string(),
                    long,
                ]);
            }
        }
        for keys in cases {
            // Nested objects, the last key holding a leaf; the first key's `k`s written as
            // `\u006b` escapes, which makes it an owned (unescaped) key.
            let mut doc = String::new();
            for (i, k) in keys.iter().enumerate() {
                let k = if i == 0 {
                    k.replace('k', "\\u006b")
                } else {
                    k.clone()
                };
                doc.push_str(&format!("{{\"{k}\": "));
            }
            doc.push('1');
            doc.push_str(&"}".repeat(keys.len()));
            let mut c = Collector::new(&LIMITS);
            c.json(doc.as_bytes(), false);
            let leaf = c.targets.iter().find(|t| t.kind == Kind::Arg).unwrap();
            assert_eq!(leaf.key(&c.keys), reference(&keys), "{keys:?}");
        }
    }

    #[test]
    fn json_paths_are_clipped_and_invalid_json_is_a_body() {
        let key = "k".repeat(200);
        let doc = format!(r#"{{"{key}": {{"x": [1, {{"y": "z"}}]}}}}"#);
        let mut c = Collector::new(&LIMITS);
        c.json(doc.as_bytes(), false);
        for t in &c.targets {
            assert!(t.key(&c.keys).len() <= MAX_KEY_LEN);
        }
        let mut c = Collector::new(&LIMITS);
        c.json(br#"{"a": "b",}"#, false);
        assert_eq!(c.issues.body_parse_error, Some("invalid JSON"));
        assert_eq!(labels(&c), ["Body"]);
        let mut c = Collector::new(&LIMITS);
        c.json(br#"{"a": "b""#, true);
        assert_eq!(c.issues.body_parse_error, None);
        assert_eq!(labels(&c), ["Body"]);
    }

    #[test]
    fn multipart_names_and_files() {
        let body = b"--xx\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\nhello\r\n--xx\r\nContent-Disposition: form-data; name=\"f\"; filename=\"x.php\"\r\nContent-Type: text/plain\r\n\r\n<?php\r\n--xx--\r\n";
        let mut c = Collector::new(&LIMITS);
        c.multipart(body, "xx", false);
        let labels: Vec<(String, String)> = c
            .targets
            .iter()
            .map(|t| (t.label(&c.keys), t.value.to_string()))
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
        let q = "a=1&".repeat(20);
        c.urlencoded("Query", q.as_bytes());
        assert!(c.issues.too_many_args);
        let mut c = Collector::new(&LIMITS);
        let q = format!("a={}", "x".repeat(500));
        c.urlencoded("Query", q.as_bytes());
        assert_eq!(c.issues.arg_too_long.as_deref(), Some("Query:a"));
    }
}
