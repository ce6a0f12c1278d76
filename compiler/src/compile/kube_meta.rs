//! Object metadata shared by the compile steps: who an object is, and the one order in
//! which objects are compiled (namespace, then name) so that input order never matters.

use std::sync::Arc;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use crate::config::{ObjectKind, ObjectRef};

pub trait HasMeta {
    fn meta(&self) -> &ObjectMeta;
}

macro_rules! has_meta {
    ($($t:ty),*) => {$(impl HasMeta for $t {
        fn meta(&self) -> &ObjectMeta { &self.metadata }
    })*};
}
has_meta!(
    portcullis_crds::ApiRoute,
    portcullis_crds::ConsumerCredential,
    portcullis_crds::RateLimitPolicy,
    portcullis_crds::WafPolicy,
    k8s_openapi::api::networking::v1::Ingress,
    k8s_openapi::api::networking::v1::IngressClass,
    portcullis_crds::gateway::GatewayClass,
    portcullis_crds::gateway::Gateway,
    portcullis_crds::gateway::HTTPRoute
);

/// Namespace, name, generation and creation time of one object.
#[derive(Debug, Clone)]
pub struct Meta {
    pub namespace: String,
    pub name: String,
    pub generation: Option<i64>,
    /// `None` in standalone mode. Older objects win conflicts. Kept as a timestamp:
    /// formatting it for every object cost more than the rest of a consumer's metadata.
    pub created: Option<k8s_openapi::jiff::Timestamp>,
}

impl Meta {
    pub fn of(meta: &ObjectMeta) -> Self {
        Meta {
            namespace: meta.namespace.clone().unwrap_or_else(|| "default".into()),
            name: meta.name.clone().unwrap_or_default(),
            generation: meta.generation,
            created: meta.creation_timestamp.as_ref().map(|t| t.0),
        }
    }

    pub fn id(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// The object a route comes from, for messages: `ApiRoute ns/name`, or the Ingress
    /// or HTTPRoute a derived route (`ingress:NAME:...`) was made from.
    pub fn describe(&self) -> String {
        let mut parts = self.name.splitn(3, ':');
        match (parts.next(), parts.next(), parts.next()) {
            (Some("ingress"), Some(name), Some(_)) => {
                format!("Ingress {}/{name}", self.namespace)
            }
            (Some("httproute"), Some(name), Some(_)) => {
                format!("HTTPRoute {}/{name}", self.namespace)
            }
            _ => format!("ApiRoute {}", self.id()),
        }
    }

    pub fn object_ref(&self, kind: ObjectKind) -> ObjectRef {
        ObjectRef {
            kind,
            namespace: self.namespace.clone(),
            name: self.name.clone(),
            generation: self.generation,
        }
    }
}

/// [`sorted`], with each object's position in the input (file order in standalone mode,
/// which decides host ownership there).
pub(crate) fn sorted_with_order<K: HasMeta>(objects: &[Arc<K>]) -> Vec<(usize, &K)> {
    let mut refs: Vec<(usize, &K)> = objects.iter().map(|o| &**o).enumerate().collect();
    refs.sort_by(|(_, a), (_, b)| {
        let (ma, mb) = (a.meta(), b.meta());
        (ma.namespace.as_deref(), ma.name.as_deref())
            .cmp(&(mb.namespace.as_deref(), mb.name.as_deref()))
    });
    refs
}

/// Objects sorted by namespace and name, so that input order never changes the output.
pub(crate) fn sorted<K: HasMeta>(objects: &[Arc<K>]) -> Vec<&K> {
    let mut refs: Vec<&K> = objects.iter().map(|o| &**o).collect();
    refs.sort_by(|a, b| {
        let (ma, mb) = (a.meta(), b.meta());
        (ma.namespace.as_deref(), ma.name.as_deref())
            .cmp(&(mb.namespace.as_deref(), mb.name.as_deref()))
    });
    refs
}
