//! Building an [`Engine`] from a policy: the rule sets, the literal prefilter, the custom
//! rules. Done once per config; nothing here runs per request.

use aho_corasick::automaton::{Automaton, StateID};
use aho_corasick::dfa::DFA;
use aho_corasick::{Anchored, MatchKind, StartKind};
use regex::bytes::{
    Regex as BytesRegex, RegexBuilder as BytesRegexBuilder, RegexSet, RegexSetBuilder,
};

use crate::class;
use crate::config::{Group, Mode, OversizeAction, PolicyConfig, WafError};
use crate::custom::{compile_custom_rules, CustomRules};
use crate::evaluation::{Decision, Evaluation};
use crate::parse::ParseLimits;
use crate::rules::{self, Check, Input, RuleDef};

pub(crate) struct Slot {
    pub(crate) group: Group,
    pub(crate) input: Input,
    pub(crate) set: RegexSet,
    /// Index into `Engine::rules` for each pattern of `set`.
    pub(crate) rules: Vec<usize>,
}

/// Slot sets are `u128` bit masks (bit `s` = `Engine::slots[s]`); the built-in rules make
/// far fewer slots (one per group, input and kind of literal), checked at build.
pub(crate) type SlotMask = u128;
pub(crate) const MAX_SLOTS: usize = 128;

/// A compiled policy. Build once per config; `inspect_*` take `&self` and are thread-safe.
pub struct Engine {
    pub(crate) config: PolicyConfig,
    pub(crate) rules: Vec<&'static RuleDef>,
    pub(crate) individual: Vec<BytesRegex>,
    pub(crate) slots: Vec<Slot>,
    /// Literals of two bytes or more; single-byte literals are in `byte_slots`. Walked
    /// state by state ([`Engine::literal_slots_of`]): the overlapping-search iterator cost
    /// ~200 instructions of set-up per value, more than the walk itself on short values.
    pub(crate) prefilter: DFA,
    /// Unanchored start state of `prefilter`.
    pub(crate) prefilter_start: StateID,
    /// The literals of `prefilter`, by pattern index.
    pub(crate) literals: Vec<&'static str>,
    /// Literal pattern index → slots it triggers.
    pub(crate) literal_slots: Vec<SlotMask>,
    /// `class::PUNCT` index → slots one of whose rules has that byte as a literal.
    pub(crate) punct_slots: [SlotMask; class::PUNCT.len()],
    /// Shortest literal in `prefilter`: shorter values skip it.
    pub(crate) min_literal: usize,
    /// Normalized-input slots with a rule without literals (they always run).
    pub(crate) always_slots: SlotMask,
    /// Normalized-input slots; the others see the decoded value and run on CR/LF only.
    pub(crate) normalized_slots: SlotMask,
    /// `Kind` bit index → slots with at least one rule for that kind of target.
    pub(crate) kind_slots: [SlotMask; 8],
    pub(crate) sqli: bool,
    pub(crate) xss: bool,
    pub(crate) lfi: bool,
    pub(crate) protocol: bool,
    pub(crate) custom: CustomRules,
    pub(crate) parse_limits: ParseLimits,
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
    /// [`Evaluation::record`] under this policy's exclusions.
    pub(crate) fn record(
        &self,
        eval: &mut Evaluation,
        path_norm: &str,
        check: &Check,
        target: &str,
        text: &str,
    ) {
        eval.record(&self.config.exclusions, path_norm, check, target, text);
    }
}

pub(crate) fn single_byte(literal: &str) -> Option<u8> {
    match literal.as_bytes() {
        [b] => Some(*b),
        _ => None,
    }
}

pub(crate) fn build_regex(pattern: &str) -> Result<BytesRegex, String> {
    BytesRegexBuilder::new(pattern)
        .unicode(false)
        .size_limit(16 << 20)
        .build()
        .map_err(|e| e.to_string())
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
            .filter(|r| r.check.pl <= pl && groups.contains(&r.check.group))
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
                r.check.group,
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
        let custom = compile_custom_rules(&config.custom_rules)?;
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
}
