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

mod build;
mod class;
mod config;
mod custom;
mod evaluation;
mod inspect;
mod inspect_json;
mod libinjection;
mod memo;
pub mod parse;
mod protocol;
mod request;
pub mod rules;
mod selectors;
pub mod transform;

pub use build::Engine;
pub use config::{
    Action, CustomRule, CustomRuleIssue, Exclusion, Group, Limits, Mode, Operator, OversizeAction,
    PolicyConfig, TransformKind, WafError,
};
pub use custom::validate_custom_rules;
pub use evaluation::{Decision, Evaluation, Finding, EXCERPT_CHARS, MAX_FINDINGS};
pub use request::RequestHead;

#[cfg(test)]
mod tests;
