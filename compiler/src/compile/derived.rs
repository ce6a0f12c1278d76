//! Routes derived from other inputs (Ingress, HTTPRoute): each becomes an ApiRoute that the
//! one route pipeline compiles, so every policy, check and conflict rule applies to them as
//! to an ApiRoute. What an ApiRoute cannot say (a Service in another namespace, Gateway API
//! filters, a certificate in the Gateway's namespace) rides along and is applied to the
//! compiled route.

use portcullis_crds::{ApiRoute, ApiRouteSpec, DirectResponse, Upstream};

use super::issues::Issues;
use super::kube_meta::Meta;
use crate::config::{
    HeaderMatch, ObjectKind, RedirectConfig, RequestHeadersConfig, RouteConfig, TargetConfig,
};
use crate::{ObjectStatus, SectionStatus};

/// One derived route.
pub(crate) struct DerivedRoute {
    /// Index of the source object in [`Sources`].
    pub source: usize,
    /// The ApiRoute it compiles as; its name is `KIND:NAME:RULE-PATH`, which no ApiRoute
    /// can have (`:` is not allowed in object names).
    pub route: ApiRoute,
    /// Where in the source it comes from, prefixed to its problems.
    pub origin: String,
    /// The upstream targets, resolved by the translation (a Service may be in another
    /// namespace). `None`: the route's own upstream (a direct response).
    pub targets: Option<Vec<TargetConfig>>,
    /// The namespace of the TLS Secret, when not the route's (a Gateway listener's).
    pub tls_namespace: Option<String>,
    pub extras: Extras,
}

/// Gateway API filters without an ApiRoute field.
#[derive(Default, Clone)]
pub(crate) struct Extras {
    pub request_headers: Option<RequestHeadersConfig>,
    pub response_set: Vec<HeaderMatch>,
    pub rewrite_path: Option<String>,
    pub redirect: Option<RedirectConfig>,
}

/// A placeholder upstream: the translation's targets replace it, and a route whose targets
/// all failed to resolve keeps it (Gateway API: 500 for a rule without a valid backend).
pub(crate) fn no_backend_upstream() -> Upstream {
    Upstream {
        direct_response: Some(DirectResponse {
            status: 500,
            body: Some("{\"error\":\"no valid backend for this route\"}".into()),
            content_type: Some("application/json".into()),
        }),
        ..Upstream::default()
    }
}

impl DerivedRoute {
    pub fn new(
        source: usize,
        meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
        name: String,
        origin: String,
        spec: ApiRouteSpec,
    ) -> Self {
        let mut route = ApiRoute::new(&name, spec);
        route.metadata.namespace = meta.namespace.clone();
        route.metadata.generation = meta.generation;
        route.metadata.creation_timestamp = meta.creation_timestamp.clone();
        DerivedRoute {
            source,
            route,
            origin,
            targets: None,
            tls_namespace: None,
            extras: Extras::default(),
        }
    }

    /// Applies what the ApiRoute could not carry.
    pub fn finish(&self, compiled: &mut RouteConfig) {
        if let Some(targets) = &self.targets {
            if targets.iter().any(|t| t.weight > 0) {
                compiled.upstream.direct_response = None;
                compiled.upstream.targets = targets.clone();
            }
        }
        let extras = &self.extras;
        compiled.request_headers = extras.request_headers.clone().map(Box::new);
        for header in &extras.response_set {
            compiled
                .response_headers
                .add
                .insert(header.name.clone(), header.value.clone());
        }
        compiled.rewrite_path = extras.rewrite_path.clone();
        compiled.redirect = extras.redirect.clone().map(Box::new);
    }
}

/// The source objects of derived routes, and what went wrong with each.
#[derive(Default)]
pub(crate) struct Sources {
    pub items: Vec<Source>,
}

pub(crate) struct Source {
    pub kind: ObjectKind,
    pub meta: Meta,
    pub issues: Issues,
    /// Per-section problems (an HTTPRoute's parents), decided before compiling.
    pub sections: Vec<Section>,
    /// Sections whose conditions are final (a Gateway's listeners).
    pub fixed_sections: Vec<SectionStatus>,
    /// Whether any derived route of it is served.
    pub served: bool,
}

/// A parent of an HTTPRoute: accepted by it unless `refused` says why not.
pub(crate) struct Section {
    pub name: String,
    pub section_name: Option<String>,
    pub port: Option<i32>,
    pub refused: Option<(crate::Reason, String)>,
}

impl Sources {
    pub fn add(&mut self, kind: ObjectKind, meta: Meta) -> usize {
        self.items.push(Source {
            kind,
            meta,
            issues: Issues::default(),
            sections: Vec::new(),
            fixed_sections: Vec::new(),
            served: false,
        });
        self.items.len() - 1
    }

    pub fn into_statuses(self) -> Vec<ObjectStatus> {
        self.items
            .into_iter()
            .map(|source| {
                let conditions = source.issues.conditions();
                let mut sections = source.fixed_sections;
                for section in source.sections {
                    let mut own = conditions.clone();
                    if let Some((reason, message)) = section.refused {
                        own[0] = super::issues::condition("Accepted", false, reason, message);
                    }
                    sections.push(SectionStatus {
                        name: section.name,
                        section_name: section.section_name,
                        port: section.port,
                        attached_routes: None,
                        conditions: own,
                    });
                }
                let mut status = source.issues.into_status(source.kind, &source.meta);
                status.sections = sections;
                status
            })
            .collect()
    }
}
