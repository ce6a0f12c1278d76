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
    /// The serving certificate's `notAfter` has passed (still served: a warning).
    CertificateExpired,
    /// The serving certificate's `notBefore` is still ahead (still served: a warning).
    CertificateNotYetValid,
    // Gateway API reasons (gateway.networking.k8s.io conventions).
    Programmed,
    NotAllowedByListeners,
    NoMatchingListenerHostname,
    NoMatchingParent,
    RefNotPermitted,
    InvalidKind,
    InvalidCertificateRef,
    UnsupportedProtocol,
    InvalidRouteKinds,
    ListenersNotValid,
    AddressNotAssigned,
    /// A host (or a wildcard/host-less route) that belongs to another namespace.
    HostNotAllowed,
    /// An upstream target the gateway refuses (loopback, link-local, its own address).
    TargetNotAllowed,
    /// The namespace's budget of routes, consumers or config bytes is used up.
    QuotaExceeded,
}

impl Reason {
    /// False conditions with this reason are warnings: the object is served as configured.
    pub fn is_warning(self) -> bool {
        matches!(
            self,
            Reason::CertificateExpired | Reason::CertificateNotYetValid
        )
    }

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
            Reason::CertificateExpired => "CertificateExpired",
            Reason::CertificateNotYetValid => "CertificateNotYetValid",
            Reason::Programmed => "Programmed",
            Reason::NotAllowedByListeners => "NotAllowedByListeners",
            Reason::NoMatchingListenerHostname => "NoMatchingListenerHostname",
            Reason::NoMatchingParent => "NoMatchingParent",
            Reason::RefNotPermitted => "RefNotPermitted",
            Reason::InvalidKind => "InvalidKind",
            Reason::InvalidCertificateRef => "InvalidCertificateRef",
            Reason::UnsupportedProtocol => "UnsupportedProtocol",
            Reason::InvalidRouteKinds => "InvalidRouteKinds",
            Reason::ListenersNotValid => "ListenersNotValid",
            Reason::AddressNotAssigned => "AddressNotAssigned",
            Reason::HostNotAllowed => "HostNotAllowed",
            Reason::TargetNotAllowed => "TargetNotAllowed",
            Reason::QuotaExceeded => "QuotaExceeded",
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
    /// Gateway API: an HTTPRoute's status per parent Gateway, a Gateway's per listener.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sections: Vec<SectionStatus>,
}

/// Conditions of one part of an object: an HTTPRoute parent or a Gateway listener.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct SectionStatus {
    /// A listener's name; for a parent, the Gateway's `namespace/name`.
    pub name: String,
    /// A parent's `sectionName`, when the route names one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub section_name: Option<String>,
    /// A parent's `port`, when the route names one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<i32>,
    /// A listener's number of attached routes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attached_routes: Option<i32>,
    pub conditions: Vec<ConditionOut>,
}

impl ObjectStatus {
    pub fn accepted(&self) -> bool {
        self.condition("Accepted").is_some_and(|c| c.status)
    }

    /// Accepted with every reference resolved: what standalone mode requires of every object.
    /// A warning (an expired certificate, still served) does not make an object unhealthy:
    /// refusing the load would keep serving something else than what the files say.
    pub fn is_healthy(&self) -> bool {
        self.conditions
            .iter()
            .all(|c| c.status || c.reason.is_warning())
    }

    /// The conditions that are false only as a warning.
    pub fn warnings(&self) -> impl Iterator<Item = &ConditionOut> {
        self.conditions
            .iter()
            .filter(|c| !c.status && c.reason.is_warning())
    }

    pub fn condition(&self, type_: &str) -> Option<&ConditionOut> {
        self.conditions.iter().find(|c| c.type_ == type_)
    }
}
