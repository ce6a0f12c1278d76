//! What an inspection found: findings, the score, the decision, and how a finding is
//! recorded (exclusions, one finding per rule and target).

use std::collections::HashMap;

use crate::config::{Exclusion, Group};
use crate::rules::Check;
use crate::selectors::{path_matches, target_matches};

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

    pub(crate) fn add(&mut self, finding: Finding) {
        self.score = self.score.saturating_add(finding.score);
        if self.findings.len() < MAX_FINDINGS {
            self.findings.push(finding);
        }
    }
}

/// Control characters escaped, long text cut: enough to recognise an attack, not enough
/// to copy a secret out of the audit log.
pub(crate) fn excerpt(text: &str) -> String {
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

impl Evaluation {
    /// Records a finding of `check` on `target` (`text` is what matched) unless one of
    /// `exclusions` covers it: every finding, of a pattern rule, a check written as code or
    /// a custom rule, goes through here.
    pub(crate) fn record(
        &mut self,
        exclusions: &[Exclusion],
        path_norm: &str,
        check: &Check,
        target: &str,
        text: &str,
    ) {
        let rule_id = check.id;
        if excluded(exclusions, rule_id, path_norm, target) {
            return;
        }
        // One finding per rule and target: repeating a payload must not inflate the score
        // past what one occurrence says, and the audit line stays short.
        if self
            .findings
            .iter()
            .any(|f| f.rule_id == rule_id && f.target == target)
        {
            return;
        }
        self.add(Finding {
            rule_id,
            group: check.group,
            target: target.to_string(),
            score: check.score,
            excerpt: excerpt(text),
            message: check.msg,
        });
    }
}

fn excluded(exclusions: &[Exclusion], rule_id: u32, path_norm: &str, target: &str) -> bool {
    exclusions.iter().any(|e| {
        e.rule_ids.contains(&rule_id)
            && (e.paths.is_empty() || e.paths.iter().any(|p| path_matches(p, path_norm)))
            && (e.targets.is_empty() || e.targets.iter().any(|t| target_matches(t, target)))
    })
}
