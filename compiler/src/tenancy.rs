//! Namespaces as trust boundaries (docs/multi-tenancy.md).
//!
//! The rules here do not depend on where a route came from: an ApiRoute today, an Ingress
//! or HTTPRoute tomorrow hands the same [`HostClaim`]s and consumer scopes to these
//! functions.
//!
//! - **Consumers** authenticate only on routes of their own namespace, plus the namespaces a
//!   route names in `authentication.consumerNamespaces` (consent comes from the route's
//!   side: a tenant cannot push its consumers, or the groups they declare, onto another
//!   namespace's routes).
//! - **Hosts** belong to the namespace that claimed them first (oldest `creationTimestamp`;
//!   in standalone mode, where nothing has a timestamp, the first in file order). Routes of
//!   other namespaces on an owned host are refused unless one of the owner's routes on that
//!   host lists their namespace in `shareHostsWith`. Wildcard and host-less routes are claims
//!   of their own (`*.example.com`, "any host") and only ever catch hosts that nobody claimed
//!   exactly (the proxy's router enforces that); the operator can reserve them to a list of
//!   namespaces.
//! - **Targets** in cluster mode may not be loopback, link-local, unspecified or the
//!   gateway's own addresses, so that no route can reach the admin listener or the node.
//! - **Budgets** cap each namespace's routes, consumers and config bytes; the newest objects
//!   past a budget are refused with `QuotaExceeded`, so one namespace cannot fill the config
//!   for everyone.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

/// The operator's tenancy settings. The default (standalone mode, whose files come from
/// the administrator) allows loopback targets, any namespace's catch-all routes, and sets
/// no budgets.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tenancy {
    /// Refuse loopback, link-local and unspecified targets and [`Tenancy::gateway_addresses`].
    pub refuse_internal_targets: bool,
    /// The gateway's own addresses (the pod's IPs), refused as targets with the above.
    pub gateway_addresses: Vec<IpAddr>,
    /// When set, only these namespaces may have wildcard or host-less routes.
    pub catch_all_namespaces: Option<BTreeSet<String>>,
    /// Per-namespace budgets.
    pub budgets: Budgets,
}

/// How much of the shared config one namespace may use. `None` is unlimited.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Budget {
    pub routes: Option<usize>,
    pub consumers: Option<usize>,
    /// Bytes of compiled JSON of the namespace's routes and consumers.
    pub config_bytes: Option<usize>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Budgets {
    pub default: Budget,
    /// Whole budgets by namespace, replacing the default.
    pub overrides: BTreeMap<String, Budget>,
}

impl Budgets {
    pub fn of(&self, namespace: &str) -> Budget {
        self.overrides
            .get(namespace)
            .copied()
            .unwrap_or(self.default)
    }
}

impl Budget {
    /// Parses `routes=N,consumers=N,configBytes=SIZE` (any subset; `SIZE` like `4Mi`).
    pub fn parse(text: &str) -> Result<Budget, String> {
        let mut budget = Budget::default();
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (key, value) = part
                .split_once('=')
                .ok_or_else(|| format!("{part:?} is not KEY=VALUE"))?;
            let count = || {
                value
                    .parse::<usize>()
                    .map_err(|_| format!("{key}: {value:?} is not a number"))
            };
            match key {
                "routes" => budget.routes = Some(count()?),
                "consumers" => budget.consumers = Some(count()?),
                "configBytes" => {
                    budget.config_bytes = Some(
                        usize::try_from(
                            crate::units::parse_size_bytes(value).map_err(|e| e.to_string())?,
                        )
                        .map_err(|_| format!("configBytes: {value:?} is too large"))?,
                    )
                }
                other => {
                    return Err(format!(
                        "unknown budget {other:?} (routes, consumers, configBytes)"
                    ))
                }
            }
        }
        Ok(budget)
    }
}

/// One route's claim on hosts, from any input kind.
#[derive(Debug, Clone)]
pub struct HostClaim<'a> {
    pub namespace: &'a str,
    /// Seconds since the epoch; `None` in standalone mode.
    pub created: Option<i64>,
    /// Position in the input (file order in standalone mode): the tie-breaker.
    pub order: usize,
    /// Lowercased hosts; empty = any host.
    pub hosts: &'a [String],
    /// Namespaces this claim admits on its exact hosts.
    pub share_with: &'a [String],
}

/// Why a claim was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostRefusal {
    /// The host belongs to another namespace that did not admit this one.
    Owned { host: String, by_file_order: bool },
    /// Wildcard or host-less routes are reserved to other namespaces.
    CatchAllReserved { host: String },
}

impl HostRefusal {
    /// A message that names no object, nor namespace, of another tenant.
    pub fn message(&self) -> String {
        match self {
            HostRefusal::Owned {
                host,
                by_file_order,
            } => {
                if *by_file_order {
                    format!(
                        "host {} is claimed by several namespaces and, without creation times \
                         (standalone mode), none of them came first: every claim is refused \
                         until one namespace admits the others in shareHostsWith",
                        display_host(host)
                    )
                } else {
                    format!(
                        "host {} belongs to another namespace (the one that claimed it first), \
                         which has not admitted this one in shareHostsWith",
                        display_host(host)
                    )
                }
            }
            HostRefusal::CatchAllReserved { host } => format!(
                "{} routes are reserved to the namespaces the gateway's operator names",
                if host.is_empty() {
                    "host-less (any host)".to_string()
                } else {
                    format!("wildcard ({host})")
                }
            ),
        }
    }
}

fn display_host(host: &str) -> &str {
    if host.is_empty() {
        "(any host)"
    } else {
        host
    }
}

/// Decides which namespace owns each host and which claims stand. `result[i]` is claim
/// `i`'s verdict. A claim is refused as a whole: a route must not serve half its hosts.
///
/// The owner is the namespace of the oldest claim (equal creation seconds: the namespace
/// name decides). Where no claim on a host has a creation time (standalone mode) and
/// several namespaces claim it, nothing says which came first: the host is owned by the
/// namespace that admits all the others, and otherwise by none, refusing every claim. The
/// verdicts never depend on the input order.
pub fn decide_hosts(claims: &[HostClaim<'_>], tenancy: &Tenancy) -> Vec<Result<(), HostRefusal>> {
    let mut verdicts: Vec<Result<(), HostRefusal>> = vec![Ok(()); claims.len()];
    let any_host = [String::new()];
    let hosts_of = |claim: &HostClaim<'_>| -> Vec<String> {
        if claim.hosts.is_empty() {
            any_host.to_vec()
        } else {
            claim.hosts.to_vec()
        }
    };

    // Reserved catch-alls first: they never claim anything.
    if let Some(allowed) = &tenancy.catch_all_namespaces {
        for (i, claim) in claims.iter().enumerate() {
            if allowed.contains(claim.namespace) {
                continue;
            }
            if let Some(host) = hosts_of(claim)
                .into_iter()
                .find(|h| h.is_empty() || h.starts_with("*."))
            {
                verdicts[i] = Err(HostRefusal::CatchAllReserved { host });
            }
        }
    }

    // Per host: the claimants' namespaces with their oldest creation time, and whom each
    // namespace admits on it.
    #[derive(Default)]
    struct HostState<'a> {
        oldest: BTreeMap<&'a str, Option<i64>>,
        admits: BTreeMap<&'a str, BTreeSet<&'a str>>,
    }
    let mut hosts: BTreeMap<String, HostState<'_>> = BTreeMap::new();
    for (i, claim) in claims.iter().enumerate() {
        if verdicts[i].is_err() {
            continue;
        }
        for host in hosts_of(claim) {
            let state = hosts.entry(host).or_default();
            let oldest = state.oldest.entry(claim.namespace).or_insert(claim.created);
            *oldest = match (*oldest, claim.created) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            state
                .admits
                .entry(claim.namespace)
                .or_default()
                .extend(claim.share_with.iter().map(String::as_str));
        }
    }
    // The owner of each host, `None` when nobody can be told first.
    let mut owners: BTreeMap<&str, (Option<&str>, bool)> = BTreeMap::new();
    for (host, state) in &hosts {
        let timed = state
            .oldest
            .iter()
            .filter_map(|(ns, created)| created.map(|c| (c, *ns)))
            .min();
        let owner = match timed {
            Some((_, ns)) => (Some(ns), false),
            None if state.oldest.len() == 1 => (state.oldest.keys().next().copied(), true),
            None => {
                let admits_all = |ns: &&&str| {
                    let admitted = state.admits.get(**ns);
                    state
                        .oldest
                        .keys()
                        .all(|other| other == *ns || admitted.is_some_and(|a| a.contains(other)))
                };
                (state.oldest.keys().find(admits_all).copied(), true)
            }
        };
        owners.insert(host.as_str(), owner);
    }
    for (i, claim) in claims.iter().enumerate() {
        if verdicts[i].is_err() {
            continue;
        }
        for host in hosts_of(claim) {
            let Some(&(owner, by_file_order)) = owners.get(host.as_str()) else {
                continue;
            };
            let ok = match owner {
                Some(owner) => {
                    owner == claim.namespace
                        || hosts[&host]
                            .admits
                            .get(owner)
                            .is_some_and(|a| a.contains(claim.namespace))
                }
                None => false,
            };
            if !ok {
                verdicts[i] = Err(HostRefusal::Owned {
                    host,
                    by_file_order,
                });
                break;
            }
        }
    }
    verdicts
}

/// Whether a consumer of `consumer_namespace` may authenticate on a route of
/// `route_namespace` that admits `shared` namespaces' consumers.
pub fn consumer_admitted(
    consumer_namespace: &str,
    route_namespace: &str,
    shared: &[String],
) -> bool {
    consumer_namespace == route_namespace || shared.iter().any(|n| n == consumer_namespace)
}

/// Why a target address is refused in cluster mode, if it is.
pub fn internal_target(host: &str, tenancy: &Tenancy) -> Option<&'static str> {
    if !tenancy.refuse_internal_targets {
        return None;
    }
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    let lower = bare.trim_end_matches('.').to_ascii_lowercase();
    if lower == "localhost" || lower.ends_with(".localhost") {
        return Some("a loopback name");
    }
    let ip: IpAddr = bare.parse().ok()?;
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    };
    if ip.is_loopback() {
        return Some("a loopback address");
    }
    if ip.is_unspecified() {
        return Some("an unspecified address (this host)");
    }
    let link_local = match ip {
        IpAddr::V4(v4) => v4.is_link_local(),
        IpAddr::V6(v6) => (v6.segments()[0] & 0xffc0) == 0xfe80,
    };
    if link_local {
        return Some("a link-local address");
    }
    if tenancy.gateway_addresses.contains(&ip) {
        return Some("the gateway's own address");
    }
    None
}

/// Checks `consumerNamespaces` of a route and returns it sorted, without duplicates and
/// without the route's own namespace.
pub(crate) fn consumer_namespaces(
    listed: &[String],
    route: &portcullis_crds::ApiRoute,
    issues: &mut crate::compile::issues::Issues,
) -> Vec<String> {
    let own = route.metadata.namespace.as_deref().unwrap_or("default");
    let mut out = Vec::new();
    for (i, ns) in listed.iter().enumerate() {
        if !valid_namespace(ns) {
            issues.invalid(
                &format!("spec.authentication.consumerNamespaces[{i}]"),
                format!("{ns:?} is not a namespace name"),
            );
        } else if ns != own {
            out.push(ns.clone());
        }
    }
    out.sort();
    out.dedup();
    out
}

/// An RFC 1123 label, as namespace names are.
pub fn valid_namespace(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && !name.starts_with('-')
        && !name.ends_with('-')
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// Nesting depth of a JSON value (a scalar is 1). Iterative, so a hostile value cannot
/// overflow the stack while being measured.
pub fn json_depth(value: &serde_json::Value) -> usize {
    let mut deepest = 0;
    let mut stack = vec![(value, 1usize)];
    while let Some((v, depth)) = stack.pop() {
        deepest = deepest.max(depth);
        match v {
            serde_json::Value::Array(items) => stack.extend(items.iter().map(|i| (i, depth + 1))),
            serde_json::Value::Object(map) => stack.extend(map.values().map(|i| (i, depth + 1))),
            _ => {}
        }
    }
    deepest
}

/// Deepest JSON Schema (or other free-form JSON) accepted in a spec: deep enough for any
/// real schema, far below serde_json's recursion limit (128) that the proxy decodes with.
pub const MAX_JSON_DEPTH: usize = 32;

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn claim<'a>(
        ns: &'a str,
        created: Option<i64>,
        order: usize,
        hosts: &'a [String],
    ) -> HostClaim<'a> {
        HostClaim {
            namespace: ns,
            created,
            order,
            hosts,
            share_with: &[],
        }
    }

    #[test]
    fn the_oldest_namespace_owns_a_host_and_others_need_admission() {
        let b_hosts = vec!["b.example.com".to_string()];
        let share = vec!["ten-a".to_string()];
        let tenancy = Tenancy::default();
        let claims = [
            claim("ten-a", Some(20), 0, &b_hosts),
            claim("ten-b", Some(10), 1, &b_hosts),
            claim("ten-b", Some(30), 2, &b_hosts),
        ];
        let verdicts = decide_hosts(&claims, &tenancy);
        assert!(verdicts[0].is_err());
        assert!(verdicts[1].is_ok() && verdicts[2].is_ok());
        let message = verdicts[0].as_ref().unwrap_err().message();
        assert!(!message.contains("ten-b"), "{message}");

        let mut admitting = claim("ten-b", Some(10), 1, &b_hosts);
        admitting.share_with = &share;
        let verdicts = decide_hosts(&[claims[0].clone(), admitting], &tenancy);
        assert!(verdicts.iter().all(Result::is_ok), "{verdicts:?}");
    }

    #[test]
    fn standalone_refuses_both_unless_one_admits_the_other() {
        let hosts = vec!["x.example.com".to_string()];
        let share = vec!["b".to_string()];
        let claims = [claim("b", None, 0, &hosts), claim("a", None, 1, &hosts)];
        let verdicts = decide_hosts(&claims, &Tenancy::default());
        assert!(verdicts.iter().all(Result::is_err), "{verdicts:?}");
        assert!(verdicts[0]
            .as_ref()
            .unwrap_err()
            .message()
            .contains("standalone"));
        let mut admitting = claims[1].clone();
        admitting.share_with = &share;
        let verdicts = decide_hosts(&[claims[0].clone(), admitting], &Tenancy::default());
        assert!(verdicts.iter().all(Result::is_ok), "{verdicts:?}");
    }

    #[test]
    fn catch_alls_can_be_reserved() {
        let wildcard = vec!["*.example.com".to_string()];
        let tenancy = Tenancy {
            catch_all_namespaces: Some(["platform".to_string()].into()),
            ..Tenancy::default()
        };
        let claims = [
            claim("ten-a", Some(1), 0, &[]),
            claim("ten-a", Some(1), 1, &wildcard),
            claim("platform", Some(2), 2, &wildcard),
            claim("platform", Some(2), 3, &[]),
        ];
        let verdicts = decide_hosts(&claims, &tenancy);
        assert!(matches!(
            verdicts[0],
            Err(HostRefusal::CatchAllReserved { .. })
        ));
        assert!(matches!(
            verdicts[1],
            Err(HostRefusal::CatchAllReserved { .. })
        ));
        assert!(verdicts[2].is_ok() && verdicts[3].is_ok());
    }

    #[test]
    fn internal_targets_are_refused_only_in_cluster_mode() {
        let cluster = Tenancy {
            refuse_internal_targets: true,
            gateway_addresses: vec!["10.1.2.3".parse().unwrap()],
            ..Tenancy::default()
        };
        for host in [
            "127.0.0.1",
            "127.9.9.9",
            "localhost",
            "api.localhost",
            "[::1]",
            "[::ffff:127.0.0.1]",
            "169.254.169.254",
            "[fe80::1]",
            "0.0.0.0",
            "10.1.2.3",
        ] {
            assert!(internal_target(host, &cluster).is_some(), "{host}");
            assert!(
                internal_target(host, &Tenancy::default()).is_none(),
                "{host}"
            );
        }
        for host in ["10.0.0.7", "users.shop.svc", "[2001:db8::1]"] {
            assert!(internal_target(host, &cluster).is_none(), "{host}");
        }
    }

    #[test]
    fn budgets_parse() {
        let b = Budget::parse("routes=10,configBytes=4Mi").unwrap();
        assert_eq!(b.routes, Some(10));
        assert_eq!(b.consumers, None);
        assert_eq!(b.config_bytes, Some(4 << 20));
        assert!(Budget::parse("nodes=1").is_err());
    }

    #[test]
    fn depth_is_measured_without_recursion() {
        let mut v = serde_json::json!(1);
        for _ in 0..300 {
            v = serde_json::json!([v]);
        }
        assert_eq!(json_depth(&v), 301);
    }
}
