//! Two routes that match exactly the same requests conflict: the older one keeps the match
//! (creation time, then namespace/name in standalone mode, where there is no time) and the
//! newer one is refused with a message naming the winner.

use std::collections::BTreeMap;

use super::issues::Issues;
use super::kube_meta::Meta;
use crate::config::{PathKind, RouteConfig};

type MatchKey = (
    String,
    PathKind,
    String,
    Vec<String>,
    Vec<(String, String)>,
    Vec<(String, String)>,
);

fn match_keys(route: &RouteConfig) -> Vec<MatchKey> {
    let hosts: Vec<String> = if route.hosts.is_empty() {
        vec![String::new()]
    } else {
        route.hosts.clone()
    };
    let headers: Vec<(String, String)> = route
        .headers
        .iter()
        .map(|h| (h.name.clone(), h.value.clone()))
        .collect();
    let query: Vec<(String, String)> = route
        .query_params
        .iter()
        .map(|h| (h.name.clone(), h.value.clone()))
        .collect();
    let mut keys = Vec::new();
    for host in &hosts {
        for path in &route.paths {
            keys.push((
                host.clone(),
                path.kind,
                path.value.clone(),
                route.methods.clone(),
                headers.clone(),
                query.clone(),
            ));
        }
    }
    keys
}

pub(crate) fn mark_conflicts(routes: &mut [(Meta, Option<RouteConfig>, Issues)]) {
    let mut order: Vec<usize> = (0..routes.len()).collect();
    // Cached: the key formats the object id, once per route rather than per comparison.
    order.sort_by_cached_key(|&index| {
        let meta = &routes[index].0;
        (meta.created.is_none(), meta.created, meta.id())
    });
    // Key -> (the owner as a person reads it, its namespace).
    let mut owners: BTreeMap<MatchKey, (String, String)> = BTreeMap::new();
    for index in order {
        let (meta, compiled, issues) = &mut routes[index];
        let Some(route) = compiled.as_ref() else {
            continue;
        };
        if !issues.is_accepted() {
            continue;
        }
        let keys = match_keys(route);
        let clash = keys
            .iter()
            .find_map(|k| owners.get(k).map(|owner| (k, owner.clone())));
        if let Some((key, owner)) = clash {
            // Never name another tenant's object (a shared host can put two namespaces here).
            let (owner, owner_namespace) = owner;
            let owner = if owner_namespace == meta.namespace {
                owner
            } else {
                "a route of another namespace".to_string()
            };
            let host = if key.0.is_empty() {
                "any host"
            } else {
                key.0.as_str()
            };
            issues.conflicted(
                "spec.paths",
                format!(
                    "{:?} {} on {host} is already served by {owner} with the same methods, headers and query matches",
                    key.1, key.2
                ),
            );
            continue;
        }
        for key in keys {
            owners.insert(key, (meta.describe(), meta.namespace.clone()));
        }
    }
}
