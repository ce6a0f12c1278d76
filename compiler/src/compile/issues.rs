//! Problems found while compiling one object, turned into its conditions.

use super::kube_meta::Meta;
use crate::config::ObjectKind;
use crate::{ConditionOut, ObjectStatus, Reason};

/// What is wrong with one object. The first problem of each kind names the condition's
/// reason; every message is kept so that users see all of them at once.
#[derive(Debug, Default)]
pub(crate) struct Issues {
    invalid: Vec<(Reason, String)>,
    refs: Vec<(Reason, String)>,
}

impl Issues {
    /// The object cannot be accepted: `field` names the offending field.
    pub fn invalid(&mut self, field: &str, message: impl std::fmt::Display) {
        self.invalid
            .push((Reason::Invalid, format!("{field}: {message}")));
    }

    /// Valid but not enforceable by this version; refused so nothing runs unprotected.
    pub fn unsupported(&mut self, field: &str, message: impl std::fmt::Display) {
        self.invalid
            .push((Reason::UnsupportedValue, format!("{field}: {message}")));
    }

    /// Refused for a tenancy rule (host ownership, targets, budgets) with its own reason.
    pub fn refused(&mut self, reason: Reason, field: &str, message: impl std::fmt::Display) {
        self.invalid.push((reason, format!("{field}: {message}")));
    }

    pub fn conflicted(&mut self, field: &str, message: impl std::fmt::Display) {
        self.invalid
            .push((Reason::Conflicted, format!("{field}: {message}")));
    }

    /// A reference that does not resolve. `blocks` says whether the object must not be
    /// served without it (a missing security policy) or merely loses that part (a key).
    pub fn unresolved(&mut self, field: &str, message: impl std::fmt::Display, blocks: bool) {
        let text = format!("{field}: {message}");
        if blocks {
            self.invalid.push((Reason::RefNotFound, text.clone()));
        }
        self.refs.push((Reason::RefNotFound, text));
    }

    pub fn invalid_ref(&mut self, field: &str, message: impl std::fmt::Display) {
        let text = format!("{field}: {message}");
        self.refs.push((Reason::InvalidRef, text));
    }

    /// A reference that resolves to unusable material (a bad certificate or key) which the
    /// object must not be served without.
    pub fn invalid_ref_blocking(&mut self, field: &str, message: impl std::fmt::Display) {
        let text = format!("{field}: {message}");
        self.invalid.push((Reason::InvalidRef, text.clone()));
        self.refs.push((Reason::InvalidRef, text));
    }

    /// A reference that resolves to material that works but deserves attention (an expired
    /// certificate): ResolvedRefs=False with `reason`, the object stays Accepted and served.
    pub fn warn_ref(&mut self, reason: Reason, field: &str, message: impl std::fmt::Display) {
        self.refs.push((reason, format!("{field}: {message}")));
    }

    pub fn is_accepted(&self) -> bool {
        self.invalid.is_empty()
    }

    pub fn into_status(self, kind: ObjectKind, meta: &Meta) -> ObjectStatus {
        let accepted = match self.invalid.first() {
            None => condition("Accepted", true, Reason::Accepted, String::new()),
            Some((reason, _)) => condition("Accepted", false, *reason, join(&self.invalid)),
        };
        let resolved = match self.refs.first() {
            None => condition("ResolvedRefs", true, Reason::ResolvedRefs, String::new()),
            Some((reason, _)) => condition("ResolvedRefs", false, *reason, join(&self.refs)),
        };
        ObjectStatus {
            kind,
            namespace: meta.namespace.clone(),
            name: meta.name.clone(),
            generation: meta.generation,
            conditions: vec![accepted, resolved],
            sections: Vec::new(),
        }
    }

    /// Takes `other`'s problems, each message prefixed with `prefix` (where in this object
    /// the derived part came from).
    pub fn absorb(&mut self, other: Issues, prefix: &str) {
        let prefixed = |(reason, text): (Reason, String)| (reason, format!("{prefix}{text}"));
        self.invalid.extend(other.invalid.into_iter().map(prefixed));
        self.refs.extend(other.refs.into_iter().map(prefixed));
    }

    /// A reference the object may not make (a cross-namespace reference without a
    /// ReferenceGrant): ResolvedRefs=False, the object is still accepted.
    pub fn ref_with_reason(
        &mut self,
        reason: Reason,
        field: &str,
        message: impl std::fmt::Display,
    ) {
        self.refs.push((reason, format!("{field}: {message}")));
    }

    /// Not accepted, with a reason of the Gateway API.
    pub fn refuse(&mut self, reason: Reason, field: &str, message: impl std::fmt::Display) {
        self.invalid.push((reason, format!("{field}: {message}")));
    }

    /// The Accepted and ResolvedRefs conditions alone.
    pub fn conditions(&self) -> Vec<ConditionOut> {
        let accepted = match self.invalid.first() {
            None => condition("Accepted", true, Reason::Accepted, String::new()),
            Some((reason, _)) => condition("Accepted", false, *reason, join(&self.invalid)),
        };
        let resolved = match self.refs.first() {
            None => condition("ResolvedRefs", true, Reason::ResolvedRefs, String::new()),
            Some((reason, _)) => condition("ResolvedRefs", false, *reason, join(&self.refs)),
        };
        vec![accepted, resolved]
    }
}

pub(crate) fn condition(
    type_: &str,
    status: bool,
    reason: Reason,
    message: String,
) -> ConditionOut {
    let message = if message.is_empty() && status {
        match type_ {
            "Accepted" => "valid".to_string(),
            _ => "all references resolved".to_string(),
        }
    } else {
        message
    };
    ConditionOut {
        type_: type_.to_string(),
        status,
        reason,
        message,
    }
}

fn join(items: &[(Reason, String)]) -> String {
    items
        .iter()
        .map(|(_, m)| m.as_str())
        .collect::<Vec<_>>()
        .join("; ")
}
