//! Portcullis WAF engine: inspects an HTTP request (head, then body) and scores it with
//! CRS-style rule groups, libinjection (SQLi, XSS), protocol checks and custom rules.
//!
//! Pure: no I/O, no async, no global state beyond the built-in rule table, so the engine is
//! tested and benchmarked on its own and the proxy only feeds it bytes.
//!
//! Cost model: values are collected without copies where decoding changes nothing (a JSON
//! document is walked in place, not turned into a tree), and one table-driven scan per value
//! records its byte classes. Punctuation found by that scan and one Aho-Corasick pass over
//! the normalized text find which rule groups could possibly match (each rule lists literals
//! that any match must contain); only those groups' `RegexSet`s run. libinjection runs on
//! argument-like values whose byte classes say it could find something. Work per request is
//! bounded by `maxArgs`, `maxArgLength` and `inspectBodyBytes`.

#![forbid(unsafe_code)]

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};
use std::net::IpAddr;

use aho_corasick::automaton::{Automaton, StateID};
use aho_corasick::dfa::DFA;
use aho_corasick::{Anchored, MatchKind, StartKind};
use regex::bytes::{
    Regex as BytesRegex, RegexBuilder as BytesRegexBuilder, RegexSet, RegexSetBuilder,
};
use regex::{Regex, RegexBuilder};

mod class;
pub mod parse;
pub mod rules;
pub mod transform;

use parse::json::JsonPath;
use parse::{Collector, JsonSink, Kind, ParseLimits, Target};
use rules::{Input, RuleDef};

/// Rule groups, as named in `WafPolicy.spec.ruleGroups`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Group {
    SqlInjection,
    CrossSiteScripting,
    PathTraversal,
    CommandInjection,
    RemoteFileInclusion,
    PhpInjection,
    JavaInjection,
    ProtocolEnforcement,
    ScannerDetection,
    NoSqlInjection,
    TemplateInjection,
    ServerSideIncludes,
    LdapInjection,
    MailHeaderInjection,
    Deserialization,
    /// The policy's own `customRules`.
    Custom,
}

impl Group {
    pub const BUILTIN: [Group; 15] = [
        Group::SqlInjection,
        Group::CrossSiteScripting,
        Group::PathTraversal,
        Group::CommandInjection,
        Group::RemoteFileInclusion,
        Group::PhpInjection,
        Group::JavaInjection,
        Group::ProtocolEnforcement,
        Group::ScannerDetection,
        Group::NoSqlInjection,
        Group::TemplateInjection,
        Group::ServerSideIncludes,
        Group::LdapInjection,
        Group::MailHeaderInjection,
        Group::Deserialization,
    ];

    /// Metric label (`rule_group`) and audit field.
    pub fn as_str(self) -> &'static str {
        match self {
            Group::SqlInjection => "sqli",
            Group::CrossSiteScripting => "xss",
            Group::PathTraversal => "lfi",
            Group::CommandInjection => "rce",
            Group::RemoteFileInclusion => "rfi",
            Group::PhpInjection => "php",
            Group::JavaInjection => "java",
            Group::ProtocolEnforcement => "protocol",
            Group::ScannerDetection => "scanner",
            Group::NoSqlInjection => "nosql",
            Group::TemplateInjection => "ssti",
            Group::ServerSideIncludes => "ssi",
            Group::LdapInjection => "ldap",
            Group::MailHeaderInjection => "mail",
            Group::Deserialization => "deserialization",
            Group::Custom => "custom",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    #[default]
    Block,
    /// Score, log and count, never block.
    Detect,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operator {
    Regex,
    Contains,
    BeginsWith,
    Equals,
    DetectSqli,
    DetectXss,
    IpMatch,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransformKind {
    UrlDecode,
    HtmlEntityDecode,
    Lowercase,
    CompressWhitespace,
    RemoveNulls,
    NormalizePath,
    Base64Decode,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Blocks on its own (in Block mode), whatever the score.
    Block,
    Score,
    Log,
}

#[derive(Debug, Clone)]
pub struct CustomRule {
    pub id: u32,
    pub description: Option<String>,
    pub targets: Vec<String>,
    pub operator: Operator,
    pub value: String,
    pub transforms: Vec<TransformKind>,
    pub action: Action,
    pub score: u32,
}

#[derive(Debug, Clone, Default)]
pub struct Exclusion {
    pub rule_ids: Vec<u32>,
    /// Path prefixes (segment-aligned) the exclusion applies to; empty = all.
    pub paths: Vec<String>,
    /// Target labels (`Query:q`, `Json:$.a`) or collections (`Query`, `Headers`); empty = all.
    pub targets: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct Limits {
    pub max_json_depth: u32,
    pub max_args: u32,
    pub max_arg_length: u32,
    pub inspect_body_bytes: u64,
    pub oversize_action: OversizeAction,
}

/// What a body longer than `inspect_body_bytes` gets: the part past the limit is never
/// inspected, so by default such a body is refused (ModSecurity's recommended setup does the
/// same) instead of carrying an attack past the WAF at its end.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OversizeAction {
    #[default]
    Block,
    InspectPartial,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_json_depth: 32,
            max_args: 255,
            max_arg_length: 8192,
            inspect_body_bytes: 128 * 1024,
            oversize_action: OversizeAction::Block,
        }
    }
}

/// A policy, in engine terms (the proxy translates the compiled config into this).
#[derive(Debug, Clone)]
pub struct PolicyConfig {
    pub mode: Mode,
    pub paranoia_level: u8,
    pub anomaly_threshold: u32,
    /// Empty = every built-in group.
    pub groups: Vec<Group>,
    /// Uppercase; empty = any method.
    pub allowed_methods: Vec<String>,
    pub limits: Limits,
    pub custom_rules: Vec<CustomRule>,
    pub exclusions: Vec<Exclusion>,
}

impl Default for PolicyConfig {
    fn default() -> Self {
        PolicyConfig {
            mode: Mode::Block,
            paranoia_level: 1,
            anomaly_threshold: 5,
            groups: Vec::new(),
            allowed_methods: Vec::new(),
            limits: Limits::default(),
            custom_rules: Vec::new(),
            exclusions: Vec::new(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum WafError {
    #[error("custom rule {id}: invalid regex: {message}")]
    CustomRegex { id: u32, message: String },
    #[error("custom rule {id}: invalid IP or CIDR {value:?}")]
    CustomIp { id: u32, value: String },
    #[error("built-in rule set failed to compile: {0}")]
    Builtin(String),
}

/// One reason a request scored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub rule_id: u32,
    pub group: Group,
    /// `Query:q`, `Json:$.user.name`, `Header:user-agent`, `Path`, `Request`.
    pub target: String,
    pub score: u32,
    /// At most [`EXCERPT_CHARS`] characters of the matching text, control characters escaped.
    pub excerpt: String,
    pub message: &'static str,
}

pub const EXCERPT_CHARS: usize = 40;
/// Findings kept per request: enough to explain a block, bounded for the audit line.
pub const MAX_FINDINGS: usize = 32;

/// The outcome so far (head, then head + body).
#[derive(Debug, Clone, Default)]
pub struct Evaluation {
    pub findings: Vec<Finding>,
    /// Findings past [`MAX_FINDINGS`] still count here.
    pub score: u32,
    pub method_not_allowed: bool,
    /// A custom rule with `action: Block` matched.
    pub forced_block: Option<u32>,
    /// Bytes of body inspected and whether more was sent than inspected.
    pub body_inspected: usize,
    pub body_truncated: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Allow,
    /// 405 (`allowedMethods`).
    MethodNotAllowed,
    /// 403.
    Block,
}

impl Evaluation {
    /// The rule group that contributed most to the score (metric label).
    pub fn main_group(&self) -> Option<Group> {
        let mut by_group: HashMap<Group, u32> = HashMap::new();
        for f in &self.findings {
            *by_group.entry(f.group).or_default() += f.score.max(1);
        }
        by_group
            .into_iter()
            .max_by_key(|(g, s)| (*s, std::cmp::Reverse(*g)))
            .map(|(g, _)| g)
    }

    pub fn rule_ids(&self) -> Vec<u32> {
        let mut ids: Vec<u32> = self.findings.iter().map(|f| f.rule_id).collect();
        ids.dedup();
        ids
    }

    fn add(&mut self, finding: Finding) {
        self.score = self.score.saturating_add(finding.score);
        if self.findings.len() < MAX_FINDINGS {
            self.findings.push(finding);
        }
    }
}

/// The request head as the engine sees it.
#[derive(Debug, Clone, Copy)]
pub struct RequestHead<'a> {
    pub method: &'a str,
    /// Path and query exactly as received (`/a%2fb?q=1`).
    pub uri: &'a str,
    pub headers: &'a [(&'a str, &'a [u8])],
    pub client_ip: Option<IpAddr>,
}

impl RequestHead<'_> {
    fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| *v)
    }

    /// Index of the `?` that starts the query. A byte loop: URIs are short, and the
    /// char searcher's set-up cost more than the scan (this runs several times a request).
    fn query_start(&self) -> Option<usize> {
        self.uri.bytes().position(|b| b == b'?')
    }

    fn path_raw(&self) -> &str {
        // `?` is ASCII, so both slices are on char boundaries.
        self.uri
            .get(..self.query_start().unwrap_or(self.uri.len()))
            .unwrap_or(self.uri)
    }

    fn query_raw(&self) -> Option<&str> {
        self.query_start().and_then(|at| self.uri.get(at + 1..))
    }
}

/// Headers whose values are structured protocol data, checked by protocol rules only:
/// running injection rules on `Accept` or `Authorization` finds noise and secrets.
const STRUCTURAL_HEADERS: [&str; 24] = [
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

/// Longest value remembered as clean within a request (longer ones are rarely repeated, and
/// hashing them would cost more than it saves).
const MEMO_MAX: usize = 256;
/// Fewest values in a collection for which the memo is kept.
const MEMO_MIN_TARGETS: usize = 16;
/// Entries of the JSON walk's memo of clean values (a power of two).
const MEMO_SLOTS: usize = 64;
const _: () = assert!(MEMO_SLOTS.is_power_of_two());

/// Values up to this many bytes are remembered by their bytes (two words), not by reference.
const MEMO_SHORT: usize = 16;

/// The JSON walk's memo of clean values: direct-mapped, one entry per hash slot, so a
/// lookup is a hash and one comparison (a hash set's probing cost as much as inspecting
/// a short value). A collision replaces the older value, which is then inspected again
/// if it comes back: the memo only saves work, it never changes a result.
///
/// Short values (most JSON keys, numbers and codes) are kept as their bytes packed into
/// two words with their length and kind: equal entries are equal values, so the lookup
/// is a multiplication and three word comparisons (hashing byte slices and calling
/// `memcmp` cost ~190 instructions per key or leaf, as much as the walk itself).
struct CleanMemo<'a> {
    short: [ShortKey; MEMO_SLOTS],
    long: [Option<(Kind, &'a str)>; MEMO_SLOTS],
}

/// The bytes of a value packed into two words (see [`ShortKey::of`]) and
/// `len << 8 | kind bit`; the tag of a real entry is never 0 (a kind bit is), so the
/// all-zero default matches nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct ShortKey(u64, u64, u32);

impl ShortKey {
    #[inline(always)]
    fn of(kind: Kind, value: &str) -> Option<ShortKey> {
        let b = value.as_bytes();
        let len = b.len();
        // Two loads that together cover every byte (overlapping when the value is shorter
        // than both): for a given length they determine the bytes, and the length is in
        // the tag, so equal keys are equal values. Fixed-size loads, no `memcpy` call.
        let (lo, hi) = match len {
            0 => (0, 0),
            1..=3 => (
                u64::from(b[0]) | u64::from(b[len / 2]) << 8 | u64::from(b[len - 1]) << 16,
                0,
            ),
            4..=8 => (u64::from(load4(&b[..4])), u64::from(load4(&b[len - 4..]))),
            9..=MEMO_SHORT => (load8(&b[..8]), load8(&b[len - 8..])),
            _ => return None,
        };
        // `len` is at most MEMO_SHORT.
        let tag = (len as u32) << 8 | u32::from(kind.bit());
        Some(ShortKey(lo, hi, tag))
    }

    #[inline(always)]
    fn slot(self) -> usize {
        // Multiplicative hashing: the top bits of the product depend on every input bit.
        let x = (self.0 ^ self.1.rotate_left(29) ^ u64::from(self.2))
            .wrapping_mul(0x9e37_79b9_7f4a_7c15);
        (x >> (64 - MEMO_SLOTS.trailing_zeros())) as usize
    }
}

/// The first four bytes of `b` (at least four), little-endian.
fn load4(b: &[u8]) -> u32 {
    let mut w = [0u8; 4];
    w.copy_from_slice(&b[..4]);
    u32::from_le_bytes(w)
}

/// The first eight bytes of `b` (at least eight), little-endian.
fn load8(b: &[u8]) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&b[..8]);
    u64::from_le_bytes(w)
}

impl Default for CleanMemo<'_> {
    fn default() -> Self {
        CleanMemo {
            short: [ShortKey::default(); MEMO_SLOTS],
            long: [None; MEMO_SLOTS],
        }
    }
}

impl<'a> CleanMemo<'a> {
    fn slot(kind: Kind, value: &str) -> usize {
        let mut h = FxHasher::default();
        h.write(value.as_bytes());
        h.write_usize(kind.bit().into());
        // FxHash leaves short keys poorly spread in any few bits: finish with MurmurHash3's
        // avalanche step before taking the slot.
        let mut x = h.finish();
        x = (x ^ (x >> 33)).wrapping_mul(0xff51_afd7_ed55_8ccd);
        x = (x ^ (x >> 33)).wrapping_mul(0xc4ce_b9fe_1a85_ec53);
        (x ^ (x >> 33)) as usize % MEMO_SLOTS
    }

    #[inline(always)]
    fn contains(&self, kind: Kind, value: &str) -> bool {
        match ShortKey::of(kind, value) {
            Some(key) => self.short[key.slot()] == key,
            None => self.long[Self::slot(kind, value)] == Some((kind, value)),
        }
    }

    fn insert(&mut self, kind: Kind, value: &'a str) {
        match ShortKey::of(kind, value) {
            Some(key) => self.short[key.slot()] = key,
            None => self.long[Self::slot(kind, value)] = Some((kind, value)),
        }
    }
}

/// FxHash (rustc's hasher: one rotate, xor and multiplication per 8-byte word) for the
/// per-request memo of clean values: short keys, no adversarial concern (a collision costs
/// a comparison, and the set is bounded by the request's values). FNV-1a, one
/// multiplication per byte, cost more than the inspection it saved on short JSON values.
#[derive(Default)]
struct FxHasher(u64);

impl FxHasher {
    const K: u64 = 0x517c_c1b7_2722_0a95;

    fn mix(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(Self::K);
    }
}

impl Hasher for FxHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for chunk in &mut chunks {
            let mut word = [0u8; 8];
            word.copy_from_slice(chunk);
            self.mix(u64::from_le_bytes(word));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut word = [0u8; 8];
            word[..rest.len()].copy_from_slice(rest);
            self.mix(u64::from_le_bytes(word));
        }
    }

    fn write_u8(&mut self, i: u8) {
        self.mix(u64::from(i));
    }

    fn write_usize(&mut self, i: usize) {
        self.mix(i as u64);
    }

    fn write_isize(&mut self, i: isize) {
        self.mix(i as u64);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// What `transform::cmd_line` removes: a value without them is its own command line.
const CMD_QUOTES: u64 = class::punct_bit(b'\'')
    | class::punct_bit(b'"')
    | class::punct_bit(b'\\')
    | class::punct_bit(b'^');

/// Longest header value inspected; hyper already caps the whole head.
const MAX_HEADER_INSPECT: usize = 8 * 1024;

struct Slot {
    group: Group,
    input: Input,
    set: RegexSet,
    /// Index into `Engine::rules` for each pattern of `set`.
    rules: Vec<usize>,
}

/// Slot sets are `u128` bit masks (bit `s` = `Engine::slots[s]`); the built-in rules make
/// far fewer slots (one per group, input and kind of literal), checked at build.
type SlotMask = u128;
const MAX_SLOTS: usize = 128;

enum Matcher {
    Regex(Regex),
    Contains(String),
    BeginsWith(String),
    Equals(String),
    DetectSqli,
    DetectXss,
    IpMatch(Vec<ipnet::IpNet>),
}

struct CompiledCustom {
    rule: CustomRule,
    matcher: Matcher,
}

/// A compiled policy. Build once per config; `inspect_*` take `&self` and are thread-safe.
pub struct Engine {
    config: PolicyConfig,
    rules: Vec<&'static RuleDef>,
    individual: Vec<BytesRegex>,
    slots: Vec<Slot>,
    /// Literals of two bytes or more; single-byte literals are in `byte_slots`. Walked
    /// state by state ([`Engine::literal_slots_of`]): the overlapping-search iterator cost
    /// ~200 instructions of set-up per value, more than the walk itself on short values.
    prefilter: DFA,
    /// Unanchored start state of `prefilter`.
    prefilter_start: StateID,
    /// The literals of `prefilter`, by pattern index.
    literals: Vec<&'static str>,
    /// Literal pattern index → slots it triggers.
    literal_slots: Vec<SlotMask>,
    /// `class::PUNCT` index → slots one of whose rules has that byte as a literal.
    punct_slots: [SlotMask; class::PUNCT.len()],
    /// Shortest literal in `prefilter`: shorter values skip it.
    min_literal: usize,
    /// Normalized-input slots with a rule without literals (they always run).
    always_slots: SlotMask,
    /// Normalized-input slots; the others see the decoded value and run on CR/LF only.
    normalized_slots: SlotMask,
    /// `Kind` bit index → slots with at least one rule for that kind of target.
    kind_slots: [SlotMask; 8],
    sqli: bool,
    xss: bool,
    lfi: bool,
    protocol: bool,
    custom: Vec<CompiledCustom>,
    parse_limits: ParseLimits,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("rules", &self.rules.len())
            .field("literals", &self.literals.len())
            .field("custom", &self.custom.len())
            .finish()
    }
}

impl Engine {
    pub fn new(config: PolicyConfig) -> Result<Self, WafError> {
        let groups: Vec<Group> = if config.groups.is_empty() {
            Group::BUILTIN.to_vec()
        } else {
            config.groups.clone()
        };
        let pl = config.paranoia_level.clamp(1, 4);
        let rules: Vec<&'static RuleDef> = rules::builtin()
            .iter()
            .filter(|r| r.pl <= pl && groups.contains(&r.group))
            .collect();
        let individual = rules
            .iter()
            .map(|r| build_regex(r.pattern).map_err(WafError::Builtin))
            .collect::<Result<Vec<_>, _>>()?;
        // One slot per (group, input, always?, anchored?) so that a literal hit runs only its
        // group, and so that rules anchored at the start of the value share a set the DFA
        // can abandon after a few bytes instead of scanning the whole value.
        let mut slot_keys: Vec<(Group, Input, bool, bool)> = Vec::new();
        let mut slot_rules: Vec<Vec<usize>> = Vec::new();
        for (i, r) in rules.iter().enumerate() {
            let key = (
                r.group,
                r.input,
                r.literals.is_empty(),
                r.pattern.starts_with('^'),
            );
            let at = match slot_keys.iter().position(|k| *k == key) {
                Some(at) => at,
                None => {
                    slot_keys.push(key);
                    slot_rules.push(Vec::new());
                    slot_keys.len() - 1
                }
            };
            slot_rules[at].push(i);
        }
        if slot_keys.len() > MAX_SLOTS {
            return Err(WafError::Builtin(format!(
                "{} rule slots (at most {MAX_SLOTS})",
                slot_keys.len()
            )));
        }
        let mut slots = Vec::new();
        let mut always_slots: SlotMask = 0;
        let mut normalized_slots: SlotMask = 0;
        let mut kind_slots = [0 as SlotMask; 8];
        for (s, (key, members)) in slot_keys.iter().zip(slot_rules).enumerate() {
            let set = RegexSetBuilder::new(members.iter().map(|&i| rules[i].pattern))
                .unicode(false)
                .size_limit(64 << 20)
                .dfa_size_limit(16 << 20)
                .build()
                .map_err(|e| WafError::Builtin(e.to_string()))?;
            let bit: SlotMask = 1 << s;
            if key.1 == Input::Normalized {
                normalized_slots |= bit;
                if key.2 {
                    always_slots |= bit;
                }
            }
            for &ri in &members {
                for (k, mask) in kind_slots.iter_mut().enumerate() {
                    if rules[ri].scope & (1 << k) != 0 {
                        *mask |= bit;
                    }
                }
            }
            slots.push(Slot {
                group: key.0,
                input: key.1,
                set,
                rules: members,
            });
        }
        let mut literals: Vec<&'static str> = Vec::new();
        let mut literal_slots: Vec<SlotMask> = Vec::new();
        let mut punct_slots = [0 as SlotMask; class::PUNCT.len()];
        for (s, slot) in slots.iter().enumerate() {
            for &ri in &slot.rules {
                for lit in rules[ri].literals {
                    if let Some(p) = single_byte(lit).and_then(class::punct_index) {
                        punct_slots[p] |= 1 << s;
                        continue;
                    }
                    let at = match literals.iter().position(|l| l == lit) {
                        Some(at) => at,
                        None => {
                            literals.push(lit);
                            literal_slots.push(0);
                            literals.len() - 1
                        }
                    };
                    literal_slots[at] |= 1 << s;
                }
            }
        }
        // Standard semantics: every match state lists every literal that ends there (the
        // matches of its suffixes are copied in), which is what an overlapping search
        // reports. No prefilter: start states then stay ordinary states.
        let prefilter = DFA::builder()
            .match_kind(MatchKind::Standard)
            .start_kind(StartKind::Unanchored)
            .prefilter(false)
            .build(&literals)
            .map_err(|e| WafError::Builtin(e.to_string()))?;
        let prefilter_start = prefilter
            .start_state(Anchored::No)
            .map_err(|e| WafError::Builtin(e.to_string()))?;
        let min_literal = literals.iter().map(|l| l.len()).min().unwrap_or(usize::MAX);
        let custom = config
            .custom_rules
            .iter()
            .map(compile_custom)
            .collect::<Result<Vec<_>, _>>()?;
        let parse_limits = ParseLimits {
            max_args: config.limits.max_args.max(1) as usize,
            max_arg_length: config.limits.max_arg_length.max(1) as usize,
            max_json_depth: config.limits.max_json_depth.max(1) as usize,
        };
        Ok(Engine {
            sqli: groups.contains(&Group::SqlInjection),
            xss: groups.contains(&Group::CrossSiteScripting),
            lfi: groups.contains(&Group::PathTraversal),
            protocol: groups.contains(&Group::ProtocolEnforcement),
            config,
            rules,
            individual,
            slots,
            prefilter,
            prefilter_start,
            literals,
            literal_slots,
            punct_slots,
            min_literal,
            always_slots,
            normalized_slots,
            kind_slots,
            custom,
            parse_limits,
        })
    }

    pub fn config(&self) -> &PolicyConfig {
        &self.config
    }

    /// Bytes of body the proxy should buffer for [`Engine::inspect_body`].
    pub fn inspect_body_bytes(&self) -> u64 {
        self.config.limits.inspect_body_bytes
    }

    /// Whether a body this policy could not inspect to its end is refused: `Block` mode with
    /// `oversizeAction: Block`. In `Detect` mode it is only recorded (`body_truncated`).
    pub fn refuses_oversize_bodies(&self) -> bool {
        self.config.mode == Mode::Block
            && self.config.limits.oversize_action == OversizeAction::Block
    }

    pub fn decision(&self, eval: &Evaluation) -> Decision {
        if eval.method_not_allowed {
            return Decision::MethodNotAllowed;
        }
        if self.config.mode == Mode::Detect {
            return Decision::Allow;
        }
        if eval.forced_block.is_some() || eval.score >= self.config.anomaly_threshold.max(1) {
            return Decision::Block;
        }
        Decision::Allow
    }

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
                911100,
                Group::ProtocolEnforcement,
                "Request",
                5,
                req.method,
                "method not allowed by policy",
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
    fn inspect_json_in_place(&self, body: &[u8], path_norm: &str, eval: &mut Evaluation) -> bool {
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

    fn finish_collection(&self, c: Collector<'_, '_>, path_norm: &str, eval: &mut Evaluation) {
        if self.protocol {
            if c.issues.too_many_args {
                self.record(
                    eval,
                    path_norm,
                    920380,
                    Group::ProtocolEnforcement,
                    "Args",
                    5,
                    &format!("more than {} arguments", self.parse_limits.max_args),
                    "too many arguments (maxArgs)",
                );
            }
            if let Some(label) = &c.issues.arg_too_long {
                self.record(
                    eval,
                    path_norm,
                    920370,
                    Group::ProtocolEnforcement,
                    label,
                    5,
                    &format!("longer than {} bytes", self.parse_limits.max_arg_length),
                    "argument too long (maxArgLength)",
                );
            }
            if let Some(depth) = c.issues.json_too_deep {
                self.record(
                    eval,
                    path_norm,
                    920390,
                    Group::ProtocolEnforcement,
                    "Body",
                    5,
                    &format!("depth {depth}"),
                    "JSON nested too deeply (maxJsonDepth)",
                );
            }
            if let Some(problem) = c.issues.body_parse_error {
                self.record(
                    eval,
                    path_norm,
                    920400,
                    Group::ProtocolEnforcement,
                    "Body",
                    5,
                    problem,
                    "request body could not be parsed",
                );
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
    fn inspect_target<'k>(
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
    fn run_triggered(
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
                            self.record(
                                eval,
                                path_norm,
                                rule.id,
                                rule.group,
                                &label(),
                                rule.score,
                                &excerpt,
                                rule.msg,
                            );
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
                    self.record(
                        eval,
                        path_norm,
                        rule.id,
                        rule.group,
                        &label(),
                        rule.score,
                        &excerpt,
                        rule.msg,
                    );
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
                    942100,
                    Group::SqlInjection,
                    &label(),
                    5,
                    &format!("fingerprint {fp}: {}", excerpt(value)),
                    "SQL injection (libinjection)",
                );
            }
        }
        if self.xss && xss && libinjectionrs::detect_xss(head.as_bytes()).is_injection() {
            clean = false;
            self.record(
                eval,
                path_norm,
                941100,
                Group::CrossSiteScripting,
                &label(),
                5,
                &excerpt(value),
                "XSS (libinjection)",
            );
        }
        clean
    }

    /// The slots of every literal of `prefilter` that occurs in `text` (overlapping
    /// occurrences included): one transition per byte, and at a match state its literals,
    /// which with standard semantics include those ending there as suffixes of a longer
    /// one. The same set as `find_overlapping_iter` on an `AhoCorasick` of the literals
    /// (unit test `literal_walk_finds_what_overlapping_search_finds`).
    fn literal_slots_of(&self, text: &[u8]) -> SlotMask {
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

    fn excerpt_of(&self, rule: usize, text: &str) -> String {
        match self.individual[rule].find(text.as_bytes()) {
            Some(m) => excerpt(&String::from_utf8_lossy(m.as_bytes())),
            None => excerpt(text),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn record(
        &self,
        eval: &mut Evaluation,
        path_norm: &str,
        rule_id: u32,
        group: Group,
        target: &str,
        score: u32,
        text: &str,
        message: &'static str,
    ) {
        if self.excluded(rule_id, path_norm, target) {
            return;
        }
        // One finding per rule and target: repeating a payload must not inflate the score
        // past what one occurrence says, and the audit line stays short.
        if eval
            .findings
            .iter()
            .any(|f| f.rule_id == rule_id && f.target == target)
        {
            return;
        }
        eval.add(Finding {
            rule_id,
            group,
            target: target.to_string(),
            score,
            excerpt: excerpt(text),
            message,
        });
    }

    fn excluded(&self, rule_id: u32, path_norm: &str, target: &str) -> bool {
        self.config.exclusions.iter().any(|e| {
            e.rule_ids.contains(&rule_id)
                && (e.paths.is_empty() || e.paths.iter().any(|p| path_matches(p, path_norm)))
                && (e.targets.is_empty() || e.targets.iter().any(|t| target_matches(t, target)))
        })
    }

    fn protocol_checks(&self, req: &RequestHead<'_>, path_norm: &str, eval: &mut Evaluation) {
        let cl = req.header("content-length");
        let te = req.header("transfer-encoding");
        if cl.is_some() && te.is_some() {
            self.record(
                eval,
                path_norm,
                920181,
                Group::ProtocolEnforcement,
                "Header:content-length",
                5,
                "content-length with transfer-encoding",
                "request smuggling: Content-Length and Transfer-Encoding",
            );
        }
        if let Some(cl) = cl {
            let text = String::from_utf8_lossy(cl);
            match text.trim().parse::<u64>() {
                Ok(n) if n > 0 && matches!(req.method, "GET" | "HEAD") => {
                    self.record(
                        eval,
                        path_norm,
                        920170,
                        Group::ProtocolEnforcement,
                        "Header:content-length",
                        5,
                        &text,
                        "GET or HEAD request with a body",
                    );
                }
                Ok(_) => {}
                Err(_) => self.record(
                    eval,
                    path_norm,
                    920160,
                    Group::ProtocolEnforcement,
                    "Header:content-length",
                    5,
                    &text,
                    "Content-Length is not a number",
                ),
            }
        }
        if let Some(te) = te {
            let text = lossy_lowercase(te);
            if text.split(',').any(|t| {
                !matches!(
                    t.trim(),
                    "chunked" | "gzip" | "deflate" | "compress" | "identity"
                )
            }) {
                self.record(
                    eval,
                    path_norm,
                    920171,
                    Group::ProtocolEnforcement,
                    "Header:transfer-encoding",
                    5,
                    &text,
                    "unknown transfer coding",
                );
            }
        }
        if req.header("host").is_none() {
            self.record(
                eval,
                path_norm,
                920280,
                Group::ProtocolEnforcement,
                "Header:host",
                3,
                "",
                "missing Host header",
            );
        }
        for (name, value) in req.headers {
            let lower = ascii_lowercase(name);
            if matches!(
                &*lower,
                "proxy"
                    | "lock-token"
                    | "content-range"
                    | "translate"
                    | "if"
                    | "x-http-method-override"
                    | "x-http-method"
                    | "x-method-override"
            ) {
                self.record(
                    eval,
                    path_norm,
                    920450,
                    Group::ProtocolEnforcement,
                    &format!("Header:{lower}"),
                    5,
                    name,
                    "restricted header",
                );
            }
            if value.contains(&0) {
                self.record(
                    eval,
                    path_norm,
                    920274,
                    Group::ProtocolEnforcement,
                    &format!("Header:{lower}"),
                    5,
                    "NUL byte",
                    "NUL byte in a header",
                );
            }
        }
        if let Some(ct) = req.header("content-type") {
            let ct = lossy_lowercase(ct);
            let media = ct.split(';').next().unwrap_or("").trim();
            let well_formed = media.split_once('/').is_some_and(|(a, b)| {
                !a.is_empty()
                    && !b.is_empty()
                    && a.bytes()
                        .chain(b.bytes())
                        .all(|c| c.is_ascii_alphanumeric() || b"!#$&-^_.+*".contains(&c))
            });
            if !well_formed {
                self.record(
                    eval,
                    path_norm,
                    920470,
                    Group::ProtocolEnforcement,
                    "Header:content-type",
                    5,
                    &ct,
                    "malformed Content-Type",
                );
            }
            if let Some(charset) = ct
                .split(';')
                .skip(1)
                .find_map(|p| p.trim().strip_prefix("charset="))
            {
                let charset = charset.trim_matches('"');
                if !matches!(
                    charset,
                    "utf-8"
                        | "utf8"
                        | "iso-8859-1"
                        | "iso-8859-15"
                        | "windows-1252"
                        | "us-ascii"
                        | "ascii"
                ) {
                    self.record(
                        eval,
                        path_norm,
                        920480,
                        Group::ProtocolEnforcement,
                        "Header:content-type",
                        5,
                        charset,
                        "charset not allowed",
                    );
                }
            }
        }
        let raw = req.uri.as_bytes();
        if transform::url_decode_repeated(raw, false).contains(&0) {
            self.record(
                eval,
                path_norm,
                920270,
                Group::ProtocolEnforcement,
                "Request",
                5,
                "NUL byte",
                "NUL byte in the request line",
            );
        }
        if let Some(segment) = hidden_segment(path_norm).filter(|_| self.lfi) {
            self.record(
                eval,
                path_norm,
                930130,
                Group::PathTraversal,
                "Path",
                5,
                segment,
                "access to a hidden file or directory",
            );
        }
        if restricted_extension(path_norm) {
            self.record(
                eval,
                path_norm,
                920440,
                Group::ProtocolEnforcement,
                "Path",
                5,
                path_norm,
                "restricted file extension",
            );
        }
    }

    fn run_custom(
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

/// The engine as a [`JsonSink`]: inspects each key and leaf as the walk finds it, exactly
/// as [`Engine::finish_collection`] would inspect the collected target (same decoding,
/// same memo of clean values), and gives up (`fallback`) where the collector would record
/// a limit.
struct JsonInspector<'e, 'a> {
    engine: &'e Engine,
    path_norm: &'e str,
    eval: &'e mut Evaluation,
    /// Values (borrowed from the body) that matched nothing, by kind: see the memo in
    /// [`Engine::finish_collection`]. Labels only filter findings, so a clean value is
    /// clean again under any path.
    clean: CleanMemo<'a>,
    args: usize,
    fallback: bool,
    /// See [`Engine::inspect_target`].
    scratch: String,
    /// The path of a key or leaf that a rule set or libinjection inspects, rendered.
    path_buf: String,
}

impl<'a> JsonInspector<'_, 'a> {
    fn too_long(&mut self, len: usize) -> bool {
        if len > self.engine.parse_limits.max_arg_length {
            self.fallback = true;
        }
        self.fallback
    }

    /// Whether `value` (a key or leaf as written, without escapes) is known clean as
    /// `kind`. Only values that decoding left unchanged are remembered, so a value with
    /// the same bytes is the same target: the check can come before the value's classes
    /// are even computed.
    #[inline(always)]
    fn known_clean(&self, kind: Kind, value: &str) -> bool {
        value.len() <= MEMO_MAX && self.clean.contains(kind, value)
    }

    /// Inspects a decoded key or leaf that was not [`JsonInspector::known_clean`], and
    /// remembers it when it is clean and `borrowed` (decoding left it as written).
    // Inlined into its callers: one call layer less per key and leaf.
    #[inline(always)]
    fn inspect(
        &mut self,
        kind: Kind,
        collection: &'static str,
        path: &JsonPath<'_>,
        (value, class): (Cow<'_, str>, u64),
        borrowed: Option<&'a str>,
        raw_len: usize,
    ) {
        let memo = borrowed.filter(|v| v.len() <= MEMO_MAX);
        let target = Target::in_place(kind, collection, value, class, raw_len);
        let path_buf = &mut self.path_buf;
        let key = move || {
            // Moved out of the closure's capture: the key borrows the buffer for as long
            // as the inspection needs it (an `FnOnce`).
            let buf = path_buf;
            path.render_key(buf)
        };
        let clean =
            self.engine
                .inspect_target(&target, key, self.path_norm, self.eval, &mut self.scratch);
        if let Some(v) = memo.filter(|_| clean) {
            self.clean.insert(kind, v);
        }
    }
}

impl<'a> JsonSink<'a> for JsonInspector<'_, 'a> {
    fn count_arg(&mut self) -> bool {
        self.args += 1;
        if self.args > self.engine.parse_limits.max_args {
            self.fallback = true;
            return false;
        }
        true
    }

    // The memo answers most keys and leaves: that check is inlined into the walk, and
    // the inspection of a new value is a call (`text_new`). The whole of it inlined grew
    // the walk; the whole of it as one call paid a large frame for every memo hit.
    #[inline(always)]
    fn text(&mut self, kind: Kind, collection: &'static str, path: &JsonPath<'_>, value: &'a str) {
        if self.too_long(value.len()) || self.known_clean(kind, value) {
            return;
        }
        self.text_new(kind, collection, path, value);
    }

    fn owned(&mut self, kind: Kind, collection: &'static str, path: &JsonPath<'_>, value: &[u8]) {
        if self.too_long(value.len()) {
            return;
        }
        let (decoded, class) = parse::decode(value);
        self.inspect(kind, collection, path, (decoded, class), None, value.len());
    }

    /// Digits, `-`, `+`, `.`, `e`: inspected as a string leaf (a `+`, exponent only, is
    /// still decoded to a space, as the collecting path does).
    #[inline(always)]
    fn number(&mut self, path: &JsonPath<'_>, value: &'a str) {
        self.text(Kind::Arg, "Json", path, value);
    }
}

impl<'a> JsonInspector<'_, 'a> {
    /// [`JsonSink::text`] (and `number`) for a value the memo does not know.
    #[inline(never)]
    fn text_new(
        &mut self,
        kind: Kind,
        collection: &'static str,
        path: &JsonPath<'_>,
        value: &'a str,
    ) {
        let (decoded, class) = parse::decode_text(value);
        let borrowed = match decoded {
            Cow::Borrowed(v) => Some(v),
            Cow::Owned(_) => None,
        };
        self.inspect(
            kind,
            collection,
            path,
            (decoded, class),
            borrowed,
            value.len(),
        );
    }
}

fn single_byte(literal: &str) -> Option<u8> {
    match literal.as_bytes() {
        [b] => Some(*b),
        _ => None,
    }
}

fn build_regex(pattern: &str) -> Result<BytesRegex, String> {
    BytesRegexBuilder::new(pattern)
        .unicode(false)
        .size_limit(16 << 20)
        .build()
        .map_err(|e| e.to_string())
}

fn compile_custom(rule: &CustomRule) -> Result<CompiledCustom, WafError> {
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

fn custom_matches(m: &Matcher, value: &str, client_ip: Option<IpAddr>) -> bool {
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

fn apply_transforms(value: &str, transforms: &[TransformKind]) -> String {
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
fn selects(selector: &str, label: &str) -> bool {
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

/// Exclusion target: an exact label (`Query:q`), a collection (`Query`, `Headers`), or a
/// custom-rule style selector.
fn target_matches(selector: &str, label: &str) -> bool {
    selector == label || selects(selector, label) || label.split(':').next() == Some(selector)
}

fn path_matches(prefix: &str, path: &str) -> bool {
    let prefix = prefix.trim_end_matches('/');
    prefix.is_empty()
        || path == prefix
        || path
            .strip_prefix(prefix)
            .is_some_and(|rest| rest.starts_with('/'))
}

/// Dot files and directories (`.git`, `.env`, `.claude/settings.json`) hold configuration
/// and secrets and are never API resources; `/.well-known/` is the registered exception.
fn hidden_segment(path: &str) -> Option<&str> {
    // Segments found with a byte loop: `str::split` set up a char searcher per segment,
    // several per request on every path.
    let mut start = 0;
    for end in path
        .bytes()
        .enumerate()
        .filter_map(|(i, b)| (b == b'/').then_some(i))
        .chain(std::iter::once(path.len()))
    {
        // `/` is ASCII: both ends are char boundaries.
        let segment = path.get(start..end).unwrap_or("");
        if segment.len() > 1 && segment.starts_with('.') && segment != ".well-known" {
            return Some(segment);
        }
        start = end + 1;
    }
    None
}

fn restricted_extension(path: &str) -> bool {
    let last = path.rsplit('/').next().unwrap_or("");
    let Some((_, ext)) = last.rsplit_once('.') else {
        return false;
    };
    matches!(
        ext.to_ascii_lowercase().as_str(),
        "asa"
            | "asax"
            | "ascx"
            | "backup"
            | "bak"
            | "bat"
            | "cdx"
            | "cer"
            | "cfg"
            | "cmd"
            | "com"
            | "config"
            | "conf"
            | "cs"
            | "csproj"
            | "csr"
            | "dat"
            | "db"
            | "dbf"
            | "dll"
            | "dos"
            | "htr"
            | "htw"
            | "ida"
            | "idc"
            | "idq"
            | "inc"
            | "ini"
            | "key"
            | "licx"
            | "lnk"
            | "log"
            | "mdb"
            | "old"
            | "pass"
            | "pdb"
            | "pol"
            | "printer"
            | "pwd"
            | "rdb"
            | "resources"
            | "resx"
            | "sql"
            | "swp"
            | "sys"
            | "vb"
            | "vbs"
            | "vbproj"
            | "vsdisco"
            | "webinfo"
            | "xsd"
            | "xsx"
            | "sqlite"
            | "sqlite3"
            | "env"
            | "pem"
            | "orig"
            | "tmp"
            | "save"
    )
}

/// Largest input handed to libinjection.
const LIBINJECTION_MAX: usize = 16 * 1024;

fn clip_chars(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// `X-Filename`, `X-File-Name`, `X_Filename`, `X.Filename`.
fn is_filename_header(lower: &str) -> bool {
    let mut compact = lower.bytes().filter(u8::is_ascii_alphanumeric);
    let mut buf = [0u8; 9];
    let mut n = 0;
    for b in compact.by_ref() {
        if n == buf.len() {
            return false;
        }
        buf[n] = b;
        n += 1;
    }
    matches!(&buf[..n], b"xfilename" | b"xfile" | b"filename")
}

/// `String::from_utf8_lossy(v).to_ascii_lowercase()` without the copy when it would
/// change nothing (valid UTF-8, no capitals): `application/json` is checked twice per
/// request (protocol checks, body dispatch), and two allocations cost more than the checks.
fn lossy_lowercase(v: &[u8]) -> Cow<'_, str> {
    match std::str::from_utf8(v) {
        Ok(text) => ascii_lowercase(text),
        Err(_) => Cow::Owned(String::from_utf8_lossy(v).to_ascii_lowercase()),
    }
}

/// Header names arrive lowercase from hyper; tests and other callers may capitalize.
fn ascii_lowercase(name: &str) -> Cow<'_, str> {
    if name.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(name.to_ascii_lowercase())
    } else {
        Cow::Borrowed(name)
    }
}

/// The decoded, normalized path (exclusions, restricted files, hidden segments). Most
/// paths (`/api/v1/orders`) are already normal: no escapes, dots, backslashes or `//`.
fn normalized_path(raw: &str) -> Cow<'_, str> {
    // One pass for both tests (`contains("//")` cost a substring searcher per request).
    let mut prev = 0u8;
    let plain = raw.starts_with('/')
        && raw.bytes().all(|b| {
            let ok = !(matches!(b, b'%' | b'.' | b'\\') || (b == b'/' && prev == b'/'));
            prev = b;
            ok
        });
    if plain {
        return Cow::Borrowed(raw);
    }
    Cow::Owned(transform::normalize_path(&String::from_utf8_lossy(
        &transform::url_decode_repeated(raw.as_bytes(), false),
    )))
}

/// libinjection costs microseconds per call (the Rust port is several times slower than
/// the C original), so it only sees values that could hold SQL: values with SQL
/// punctuation (quotes, parentheses, operators, comment starts), or words only but with
/// a keyword that can build an injection without punctuation (`1 or 1`, `1 union select 2`).
/// Plain words, numbers, identifiers and prose without such keywords cannot form a
/// libinjection fingerprint, and they are most argument and JSON values. `c` is the
/// value's [`class::of`].
fn worth_sqli(v: &str, c: u64) -> bool {
    if v.len() < 2 || c & class::NON_IDENT == 0 {
        return false;
    }
    if c & (class::SQL_PUNCT | class::NON_ASCII) != 0 || (c & class::DASH != 0 && v.contains("--"))
    {
        return true;
    }
    has_sql_word(v)
}

/// A word (letters, digits, `_`) that lets libinjection build an injection without
/// punctuation (`1 or 1`, `1 union select 2`), in any case.
fn has_sql_word(v: &str) -> bool {
    v.as_bytes()
        .split(|b| !(b.is_ascii_alphanumeric() || *b == b'_'))
        .any(is_sql_word)
}

fn is_sql_word(word: &[u8]) -> bool {
    // The lowercase word packed into an integer: one compare per candidate of that length
    // instead of a string comparison per keyword.
    if word.len() < 2 || word.len() > 9 {
        return false;
    }
    let packed = word.iter().fold(0u128, |acc, &b| {
        (acc << 8) | u128::from(b.to_ascii_lowercase())
    });
    // Sorted at compile time: a binary search is six comparisons, a scan up to 38.
    SQL_WORDS_PACKED.binary_search(&packed).is_ok()
}

const fn pack(word: &[u8]) -> u128 {
    let mut acc = 0u128;
    let mut i = 0;
    while i < word.len() {
        acc = (acc << 8) | word[i] as u128;
        i += 1;
    }
    acc
}

/// Words that let libinjection build an injection without punctuation, packed by [`pack`]
/// (distinct lengths never collide: every word starts with a non-zero byte).
const SQL_WORDS_PACKED: [u128; 38] = {
    let words: [&[u8]; 38] = [
        b"union",
        b"select",
        b"or",
        b"and",
        b"xor",
        b"having",
        b"order",
        b"group",
        b"sleep",
        b"benchmark",
        b"waitfor",
        b"exec",
        b"execute",
        b"into",
        b"like",
        b"rlike",
        b"regexp",
        b"between",
        b"div",
        b"mod",
        b"procedure",
        b"limit",
        b"declare",
        b"shutdown",
        b"null",
        b"case",
        b"when",
        b"not",
        b"is",
        b"in",
        b"from",
        b"where",
        b"drop",
        b"insert",
        b"update",
        b"delete",
        b"true",
        b"false",
    ];
    let mut packed = [0u128; 38];
    let mut i = 0;
    while i < words.len() {
        packed[i] = pack(words[i]);
        i += 1;
    }
    // Insertion sort (const context), for `binary_search`.
    let mut i = 1;
    while i < packed.len() {
        let mut j = i;
        while j > 0 && packed[j - 1] > packed[j] {
            let t = packed[j];
            packed[j] = packed[j - 1];
            packed[j - 1] = t;
            j -= 1;
        }
        i += 1;
    }
    packed
};

/// libinjection's SQLi detection; the fingerprint when it is one.
///
/// `libinjectionrs::detect_sqli` folds the tokens once more after `detect` only to return
/// the fingerprint, which `detect` has already left in the state: calling the state
/// directly does the same work minus that pass (a third to a half of the cost per call).
fn detect_sqli(input: &[u8]) -> Option<String> {
    let mut state = libinjectionrs::SqliState::new(input, libinjectionrs::SqliFlags::FLAG_NONE);
    if !state.detect() {
        return None;
    }
    let fp = &state.fingerprint;
    let len = fp.iter().position(|&b| b == 0).unwrap_or(fp.len());
    Some(String::from_utf8_lossy(&fp[..len]).into_owned())
}

/// Control characters escaped, long text cut: enough to recognise an attack, not enough
/// to copy a secret out of the audit log.
fn excerpt(text: &str) -> String {
    let mut out = String::new();
    for (i, c) in text.chars().enumerate() {
        if i >= EXCERPT_CHARS {
            out.push('…');
            break;
        }
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

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
                let doc =
                    format!(r#"{{"a": "{s}", "{s}": ["{s}", "{s}", {{"k": "{s}"}}], "n": 1}}"#);
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
        let rule = rules::builtin().iter().find(|r| r.id == 942360).unwrap();
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
}
