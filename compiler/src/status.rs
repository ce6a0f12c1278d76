//! Conditions the compiler attaches to each object.

use serde::{Deserialize, Serialize};

use crate::config::ObjectKind;

/// CamelCase reason constants (Gateway API style).
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    Accepted,
    Invalid,
    UnsupportedValue,
    Conflicted,
    ResolvedRefs,
    RefNotFound,
    InvalidRef,
    Disabled,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Accepted => "Accepted",
            Reason::Invalid => "Invalid",
            Reason::UnsupportedValue => "UnsupportedValue",
            Reason::Conflicted => "Conflicted",
            Reason::ResolvedRefs => "ResolvedRefs",
            Reason::RefNotFound => "RefNotFound",
            Reason::InvalidRef => "InvalidRef",
            Reason::Disabled => "Disabled",
        }
    }
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ConditionOut {
    /// `Accepted` or `ResolvedRefs` (the operator adds `Programmed`).
    #[serde(rename = "type")]
    pub type_: String,
    pub status: bool,
    pub reason: Reason,
    pub message: String,
}

/// The compiler's verdict on one object.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ObjectStatus {
    pub kind: ObjectKind,
    pub namespace: String,
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<i64>,
    pub conditions: Vec<ConditionOut>,
}

impl ObjectStatus {
    pub fn accepted(&self) -> bool {
        self.condition("Accepted").is_some_and(|c| c.status)
    }

    /// Accepted with every reference resolved: what standalone mode requires of every object.
    pub fn is_healthy(&self) -> bool {
        self.conditions.iter().all(|c| c.status)
    }

    pub fn condition(&self, type_: &str) -> Option<&ConditionOut> {
        self.conditions.iter().find(|c| c.type_ == type_)
    }
}
