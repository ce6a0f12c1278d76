//! The compiler's input: every object it reads, shared with the caller's caches.

use std::sync::Arc;

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::api::networking::v1::{Ingress, IngressClass};
use portcullis_crds::gateway::{Gateway, GatewayClass, HTTPRoute, ReferenceGrant};
use portcullis_crds::{ApiRoute, ConsumerCredential, RateLimitPolicy, WafPolicy};

/// Everything the compiler reads: the four kinds plus the Secrets they reference.
///
/// Objects are shared (`Arc`), as in kube's reflector stores: the operator hands the compiler
/// its cached objects without copying them (a deep copy of 110,000 objects took 0.3-0.9 s of
/// every compile).
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub routes: Vec<Arc<ApiRoute>>,
    pub consumers: Vec<Arc<ConsumerCredential>>,
    pub rate_limit_policies: Vec<Arc<RateLimitPolicy>>,
    pub waf_policies: Vec<Arc<WafPolicy>>,
    pub secrets: Vec<Arc<Secret>>,
    /// Ingresses and IngressClasses: the Ingresses of a Portcullis class compile into routes.
    pub ingresses: Vec<Arc<Ingress>>,
    pub ingress_classes: Vec<Arc<IngressClass>>,
    /// Gateway API objects: HTTPRoutes attached to Gateways of a Portcullis GatewayClass
    /// compile into routes.
    pub gateway_classes: Vec<Arc<GatewayClass>>,
    pub gateways: Vec<Arc<Gateway>>,
    pub http_routes: Vec<Arc<HTTPRoute>>,
    pub reference_grants: Vec<Arc<ReferenceGrant>>,
    /// Seconds since the epoch at which time-dependent statuses are judged (a certificate
    /// outside its validity period gets a warning condition). The caller supplies it so
    /// that `compile` stays pure; `None` skips those warnings (golden tests).
    pub now_unix_secs: Option<i64>,
    /// Namespace rules: targets, catch-all routes, budgets ([`crate::tenancy`]). Host
    /// ownership and consumer scopes always apply.
    pub tenancy: crate::Tenancy,
}
