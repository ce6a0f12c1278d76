//! Inspection of the head and the body: collecting targets, the prefilter, the rule sets
//! and libinjection on each value.

use std::borrow::Cow;
use std::collections::HashSet;
use std::hash::BuildHasherDefault;

use aho_corasick::automaton::Automaton;
use aho_corasick::Anchored;

use crate::build::{Engine, SlotMask};
use crate::class;
use crate::config::Group;
use crate::evaluation::{excerpt, Evaluation};
use crate::inspect_json::JsonInspector;
use crate::libinjection::{clip_chars, detect_sqli, worth_sqli, LIBINJECTION_MAX};
use crate::memo::{CleanMemo, FxHasher, MEMO_MAX, MEMO_MIN_TARGETS};
use crate::parse::{self, Collector, Kind, Target};
use crate::request::{
    ascii_lowercase, is_filename_header, lossy_lowercase, normalized_path, RequestHead,
};
use crate::rules::code;
use crate::rules::{self, Input};
use crate::transform;

/// Headers whose values are structured protocol data, checked by protocol rules only:
/// running injection rules on `Accept` or `Authorization` finds noise and secrets.
pub(crate) const STRUCTURAL_HEADERS: [&str; 24] = [
    "host",
    "content-length",
    "content-type",
    "accept",
    "accept-encoding",
    "accept-language",
    "accept-charset",
    "connection",
    "authorization",
    "proxy-authorization",
    "cookie",
    "cache-control",
    "pragma",
    "if-modified-since",
    "if-none-match",
    "if-match",
    "te",
    "transfer-encoding",
    "upgrade-insecure-requests",
    "x-request-id",
    "traceparent",
    "tracestate",
    "content-encoding",
    "keep-alive",
];

/// What `transform::cmd_line` removes: a value without them is its own command line.
pub(crate) const CMD_QUOTES: u64 = class::punct_bit(b'\'')
    | class::punct_bit(b'"')
    | class::punct_bit(b'\\')
    | class::punct_bit(b'^');

/// Longest header value inspected; hyper already caps the whole head.
pub(crate) const MAX_HEADER_INSPECT: usize = 8 * 1024;

impl Engine {
    /// Step 6: method, request line, path, query, headers and cookies.
    pub fn inspect_head(&self, req: &RequestHead<'_>) -> Evaluation {
        let mut eval = Evaluation::default();
        let path_norm = normalized_path(req.path_raw());
        if !self.config.allowed_methods.is_empty()
            && !self
                .config
                .allowed_methods
                .iter()
                .any(|m| m.eq_ignore_ascii_case(req.method))
        {
            eval.method_not_allowed = true;
            self.record(
                &mut eval,
                &path_norm,
                &code::METHOD_NOT_ALLOWED,
                "Request",
                req.method,
            );
        }
        if self.protocol {
            self.protocol_checks(req, &path_norm, &mut eval);
        }
        let mut c = Collector::new(&self.parse_limits);
        c.targets.reserve(8 + req.headers.len());
        // Header names, argument and cookie names: one allocation instead of growing.
        c.keys.reserve(256);
        c.push(Kind::Path, "Path", "", req.path_raw().as_bytes());
        if let Some(q) = req.query_raw() {
            c.urlencoded("Query", q.as_bytes());
        }
        for (name, value) in req.headers {
            let lower = ascii_lowercase(name);
            let value = &value[..value.len().min(MAX_HEADER_INSPECT)];
            if lower == "cookie" {
                c.cookies(value);
            } else if !STRUCTURAL_HEADERS.contains(&&*lower) {
                if is_filename_header(&lower) {
                    // Upload helpers send the file name in a header; treat it like a
                    // multipart file name so upload rules see it.
                    c.push(Kind::Filename, "Filename", &lower, value);
                }
                // Header names are protocol tokens; their values are free text.
                c.push_header(&lower, value);
            }
        }
        self.finish_collection(c, &path_norm, &mut eval);
        self.run_custom(req, &path_norm, None, &mut eval, true);
        eval
    }

    /// Step 9: the body (its first `inspectBodyBytes`), added to the head's evaluation.
    /// `truncated` says the client sent more than `body`.
    pub fn inspect_body(
        &self,
        req: &RequestHead<'_>,
        eval: &mut Evaluation,
        body: &[u8],
        truncated: bool,
    ) {
        let limit = usize::try_from(self.config.limits.inspect_body_bytes).unwrap_or(usize::MAX);
        let (body, truncated) = if body.len() > limit {
            (&body[..limit], true)
        } else {
            (body, truncated)
        };
        eval.body_inspected = body.len();
        eval.body_truncated = truncated;
        if body.is_empty() {
            return;
        }
        let path_norm = normalized_path(req.path_raw());
        let content_type = req
            .header("content-type")
            .map(lossy_lowercase)
            .unwrap_or_default();
        let media = content_type.split(';').next().unwrap_or("").trim();
        let mut c = Collector::new(&self.parse_limits);
        if media == "application/json" || media.ends_with("+json") {
            if !self.inspect_json_in_place(body, &path_norm, eval) {
                c.json(body, truncated);
            }
        } else if media == "multipart/form-data" {
            match parse::boundary(&content_type) {
                Some(b) => c.multipart(body, &b, truncated),
                None => {
                    c.issues.body_parse_error = Some("multipart body without a boundary");
                    c.push(Kind::Body, "Body", "", body);
                }
            }
        } else if media.ends_with("/xml") || media.ends_with("+xml") {
            c.xml(body, truncated);
        } else if media == "application/x-www-form-urlencoded" || media.is_empty() {
            // Without a content type servers commonly still parse a form; so do attackers.
            c.urlencoded("Form", body);
        } else {
            c.push(Kind::Body, "Body", "", body);
        }
        self.finish_collection(c, &path_norm, eval);
        self.run_custom(req, &path_norm, Some(body), eval, false);
    }

    /// The policy's custom rules over the head (`head`) or the body.
    fn run_custom(
        &self,
        req: &RequestHead<'_>,
        path_norm: &str,
        body: Option<&[u8]>,
        eval: &mut Evaluation,
        head: bool,
    ) {
        self.custom.run(
            &self.parse_limits,
            &self.config.exclusions,
            req,
            path_norm,
            body,
            eval,
            head,
        );
    }

    /// Head and body in one call (tests, benchmarks, offline scoring).
    pub fn inspect(&self, req: &RequestHead<'_>, body: &[u8]) -> Evaluation {
        let mut eval = self.inspect_head(req);
        if !body.is_empty() {
            self.inspect_body(req, &mut eval, body, false);
        }
        eval
    }

    /// A JSON body inspected while it is walked: each key and leaf is inspected where it is
    /// found (its path only becomes a label if it matches), instead of being collected with
    /// its path first. Returns `false`, with `eval` as it was, when the document needs the
    /// collecting walk: it is invalid, or it hits a limit (`maxArgs`, `maxArgLength`,
    /// `maxJsonDepth`). Those findings come before the values' findings, so that path
    /// keeps their order; it is rare and bounded by `inspectBodyBytes`.
    pub(crate) fn inspect_json_in_place(
        &self,
        body: &[u8],
        path_norm: &str,
        eval: &mut Evaluation,
    ) -> bool {
        let findings = eval.findings.len();
        let score = eval.score;
        let mut inspector = JsonInspector {
            engine: self,
            path_norm,
            eval,
            clean: CleanMemo::default(),
            args: 0,
            fallback: false,
            // Room for a typical lowercased value: no regrowth on the first few.
            scratch: String::with_capacity(64),
            path_buf: String::new(),
        };
        let done = match parse::json::walk(body, &mut inspector) {
            Ok(depth) => !inspector.fallback && depth <= self.parse_limits.max_json_depth,
            Err(_) => false,
        };
        if !done {
            eval.findings.truncate(findings);
            eval.score = score;
        }
        done
    }

    pub(crate) fn finish_collection(
        &self,
        c: Collector<'_, '_>,
        path_norm: &str,
        eval: &mut Evaluation,
    ) {
        if self.protocol {
            if c.issues.too_many_args {
                self.record(
                    eval,
                    path_norm,
                    &code::TOO_MANY_ARGS,
                    "Args",
                    &format!("more than {} arguments", self.parse_limits.max_args),
                );
            }
            if let Some(label) = &c.issues.arg_too_long {
                self.record(
                    eval,
                    path_norm,
                    &code::ARG_TOO_LONG,
                    label,
                    &format!("longer than {} bytes", self.parse_limits.max_arg_length),
                );
            }
            if let Some(depth) = c.issues.json_too_deep {
                self.record(
                    eval,
                    path_norm,
                    &code::JSON_TOO_DEEP,
                    "Body",
                    &format!("depth {depth}"),
                );
            }
            if let Some(problem) = c.issues.body_parse_error {
                self.record(eval, path_norm, &code::BODY_UNPARSABLE, "Body", problem);
            }
        }
        // Values repeat within a request (the keys of an array of objects, enum-like values):
        // a value that matched nothing once matches nothing again as the same kind of target,
        // whatever its label (labels only filter findings: exclusions, one per rule and
        // target), so it is inspected once. Headers are left out: header-specific rules
        // depend on the name. A handful of values (a request head) rarely repeats: the memo
        // only pays for itself on bodies with many values.
        let use_memo = c.targets.len() >= MEMO_MIN_TARGETS;
        let mut clean: HashSet<(Kind, &str), BuildHasherDefault<FxHasher>> = if use_memo {
            HashSet::with_capacity_and_hasher(c.targets.len(), BuildHasherDefault::default())
        } else {
            HashSet::default()
        };
        let mut scratch = String::new();
        for target in &c.targets {
            let memo = use_memo && target.kind != Kind::Header && target.value.len() <= MEMO_MAX;
            if memo && clean.contains(&(target.kind, &*target.value)) {
                continue;
            }
            let key = || target.key(&c.keys);
            if self.inspect_target(target, key, path_norm, eval, &mut scratch) && memo {
                clean.insert((target.kind, &target.value));
            }
        }
    }

    /// The rules and libinjection on one value.
    ///
    /// One pass over the value gathers its byte classes (what libinjection could make of
    /// it, whether it needs normalizing, CR/LF) and the slots of single-byte literals; the
    /// Aho-Corasick pass adds the slots of longer literals. Only those slots' sets run,
    /// and most values trigger none: plain words, identifiers and numbers cost a scan and
    /// an automaton pass, no allocation.
    ///
    /// Returns whether nothing matched (no rule set, no libinjection), before exclusions.
    /// `key` gives the target's key (name or JSON path); it is only called when a rule
    /// set or libinjection has to run. `scratch` is a buffer for the lowercased value,
    /// reused across the values of a request.
    ///
    /// This part is inlined into its callers and the rest ([`Engine::run_triggered`]) is
    /// not: most values end at the identifier check below, and the full function's entry
    /// and exit (its frame, the drop flags of its buffers) cost ~150 instructions per
    /// value, more than the checks themselves.
    #[inline(always)]
    pub(crate) fn inspect_target<'k>(
        &self,
        t: &Target<'_>,
        key: impl FnOnce() -> &'k str,
        path_norm: &str,
        eval: &mut Evaluation,
        scratch: &mut String,
    ) -> bool {
        let value: &str = &t.value;
        if value.is_empty() {
            return true;
        }
        let double_space =
            t.class & class::SPACE != 0 && value.as_bytes().windows(2).any(|w| w == b"  ");
        let needs_norm = t.class & class::NEEDS_NORM != 0 || double_space;
        let (norm, norm_class): (Cow<'_, str>, u64) = if !needs_norm {
            (Cow::Borrowed(value), t.class)
        } else if t.class & (class::CONTROL | class::NON_ASCII) == 0 && !double_space {
            // Capitals only: lowercasing changes no byte class. The caller's buffer is
            // reused for every value of the request (no allocation per value).
            scratch.clear();
            scratch.push_str(value);
            scratch.make_ascii_lowercase();
            (Cow::Borrowed(scratch.as_str()), t.class)
        } else {
            let norm = transform::lower_compress(value);
            let c = class::of(norm.as_bytes());
            (norm, c)
        };
        let mut triggered: SlotMask = 0;
        let mut punct = norm_class >> class::PUNCT_SHIFT;
        while punct != 0 {
            triggered |= self.punct_slots[punct.trailing_zeros() as usize];
            punct &= punct - 1;
        }
        if norm.len() >= self.min_literal {
            triggered |= self.literal_slots_of(norm.as_bytes());
        }
        triggered = (triggered | self.always_slots) & self.normalized_slots;
        if t.class & class::CRLF != 0 {
            // Decoded-input rules are all about CR/LF.
            triggered |= !self.normalized_slots;
        }
        triggered &= self.kind_slots[t.kind.bit().trailing_zeros() as usize];
        if triggered == 0 && t.class & class::NON_IDENT == 0 {
            // No rule set to run, and nothing for libinjection: `worth_sqli` needs a
            // non-identifier byte, and the XSS bytes are all non-identifier bytes (the
            // libinjection head is a prefix of the value, so its classes are a subset).
            // Identifiers, codes and numbers, most keys and leaves, end here.
            return true;
        }
        self.run_triggered(t, key(), path_norm, eval, &norm, norm_class, triggered)
    }

    /// The rule sets of `triggered` and libinjection on a value that
    /// [`Engine::inspect_target`] could not clear; `key` is its key, `norm` its normalized
    /// text and `norm_class` the classes of `norm`. Returns whether nothing matched.
    #[inline(never)]
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn run_triggered(
        &self,
        t: &Target<'_>,
        key: &str,
        path_norm: &str,
        eval: &mut Evaluation,
        norm: &str,
        norm_class: u64,
        mut triggered: SlotMask,
    ) -> bool {
        let value: &str = &t.value;
        let mut clean = true;
        let label = || t.label_of(key);
        let mut sql_stripped: Option<String> = None;
        let mut cmd_line: Option<String> = None;
        while triggered != 0 {
            let s = triggered.trailing_zeros() as usize;
            triggered &= triggered - 1;
            let Some(slot) = self.slots.get(s) else {
                break;
            };
            let text: &str = match slot.input {
                Input::Normalized => norm,
                Input::Decoded => value,
            };
            // Most triggered sets do not match: `is_match` stops at the first match and
            // allocates nothing; the set of matching rules is only computed on a match.
            let matched = slot
                .set
                .is_match(text.as_bytes())
                .then(|| slot.set.matches(text.as_bytes()));
            clean &= matched.is_none();
            // Evasions that only make sense per group: SQL comments used as whitespace
            // (`union/**/select`), shell commands split by quotes (`w'h'o"am"i`).
            let alternate: Option<&str> =
                match slot.group {
                    // `norm_class` holds every byte of `norm`: without a `/` (or without one of
                    // the quotes) the searches below cannot succeed, and they cost more than
                    // the bit test.
                    Group::SqlInjection
                        if slot.input == Input::Normalized
                            && norm_class & class::punct_bit(b'/') != 0
                            && norm.contains("/*") =>
                    {
                        Some(sql_stripped.get_or_insert_with(|| {
                            transform::remove_sql_comments(norm).into_owned()
                        }))
                    }
                    Group::CommandInjection
                        if slot.input == Input::Normalized && norm_class & CMD_QUOTES != 0 =>
                    {
                        Some(cmd_line.get_or_insert_with(|| transform::cmd_line(norm)))
                    }
                    _ => None,
                };
            if let Some(alt) = alternate.filter(|alt| slot.set.is_match(alt.as_bytes())) {
                clean = false;
                let again = slot.set.matches(alt.as_bytes());
                for i in again.iter() {
                    if !matched.as_ref().is_some_and(|m| m.matched(i)) {
                        let rule = self.rules[slot.rules[i]];
                        if rules::applies(rule, t.kind, key) {
                            let excerpt = self.excerpt_of(slot.rules[i], alt);
                            self.record(eval, path_norm, &rule.check, &label(), &excerpt);
                        }
                    }
                }
            }
            let Some(matched) = matched else {
                continue;
            };
            for i in matched.iter() {
                let ri = slot.rules[i];
                let rule = self.rules[ri];
                if rules::applies(rule, t.kind, key) {
                    let excerpt = self.excerpt_of(ri, text);
                    self.record(eval, path_norm, &rule.check, &label(), &excerpt);
                }
            }
        }
        // Paths are inspected by libinjection only when they hold SQL punctuation: plain
        // `/a/b/123` paths are the common case and cannot be injections.
        let injectable = !matches!(t.kind, Kind::Path) || t.class & class::PATH_SQL != 0;
        // libinjection is a tokenizer built for argument-sized input: give it at most
        // `LIBINJECTION_MAX` bytes of a large unparsed body (the regex rules see it all).
        let head = clip_chars(value, LIBINJECTION_MAX);
        let head_class = if head.len() == value.len() {
            t.class
        } else {
            class::of(head.as_bytes())
        };
        let (sqli, xss) = (worth_sqli(head, head_class), head_class & class::XSS != 0);
        if self.sqli && injectable && sqli {
            if let Some(fp) = detect_sqli(head.as_bytes()) {
                clean = false;
                self.record(
                    eval,
                    path_norm,
                    &code::SQLI_LIBINJECTION,
                    &label(),
                    &format!("fingerprint {fp}: {}", excerpt(value)),
                );
            }
        }
        if self.xss && xss && libinjectionrs::detect_xss(head.as_bytes()).is_injection() {
            clean = false;
            self.record(
                eval,
                path_norm,
                &code::XSS_LIBINJECTION,
                &label(),
                &excerpt(value),
            );
        }
        clean
    }

    /// The slots of every literal of `prefilter` that occurs in `text` (overlapping
    /// occurrences included): one transition per byte, and at a match state its literals,
    /// which with standard semantics include those ending there as suffixes of a longer
    /// one. The same set as `find_overlapping_iter` on an `AhoCorasick` of the literals
    /// (unit test `literal_walk_finds_what_overlapping_search_finds`).
    pub(crate) fn literal_slots_of(&self, text: &[u8]) -> SlotMask {
        let dfa = &self.prefilter;
        let mut sid = self.prefilter_start;
        let mut triggered: SlotMask = 0;
        for &b in text {
            sid = dfa.next_state(Anchored::No, sid, b);
            if dfa.is_special(sid) {
                // An unanchored standard search never dies; kept for the contract.
                if dfa.is_dead(sid) {
                    break;
                }
                if dfa.is_match(sid) {
                    for i in 0..dfa.match_len(sid) {
                        triggered |= self.literal_slots[dfa.match_pattern(sid, i).as_usize()];
                    }
                }
            }
        }
        triggered
    }

    pub(crate) fn excerpt_of(&self, rule: usize, text: &str) -> String {
        match self.individual[rule].find(text.as_bytes()) {
            Some(m) => excerpt(&String::from_utf8_lossy(m.as_bytes())),
            None => excerpt(text),
        }
    }
}
