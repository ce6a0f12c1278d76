//! Route selection.
//!
//! # Precedence
//! 1. **Host class.** Routes listing the request's exact host are tried first, then routes
//!    with a wildcard (`*.example.com`, exactly one extra label) matching it, then routes
//!    with no hosts (any host). A class is only left when none of its routes matches.
//! 2. Within a class, each (route, path rule) pair is ranked:
//!    - path `Exact` before `Prefix` before `Regex`;
//!    - among prefixes, the longer prefix first;
//!    - then a route with a method constraint before one without;
//!    - then more header matches before fewer, then more query matches before fewer;
//!    - finally the route id (`namespace/name`) alphabetically.
//!
//!    The first pair whose route fully matches (path rule, methods, every header, every query
//!    parameter) wins.
//!
//! # Owned hosts (docs/multi-tenancy.md)
//! A host that some route lists exactly is owned: when none of its exact routes matches,
//! the wildcard and host-less routes that may catch the request are only those of the
//! namespaces serving the host (the owner and the namespaces it admitted; the compiler has
//! refused everyone else's exact routes on it). Likewise a host matched by a wildcard is
//! caught by host-less routes only of the namespaces serving that wildcard. So a tenant's
//! `*.example.com` or catch-all route never answers for another tenant's host.
//!
//! The host is the URI authority (HTTP/2 `:authority`, absolute-form) or else the `Host`
//! header, without port or a trailing dot, lowercased. Paths are matched in normal form
//! (`request_target`, `portcullis_compiler::path`), and that form is what the upstream
//! receives, so the upstream sees exactly what was matched. Prefix matching is segment-aware (`/api`
//! matches `/api`, `/api/` and `/api/x`, not `/apix`); regexes are anchored `^(?:re)$`.
//!
//! A request whose path matches but whose method does not is answered 404 like any other
//! unmatched request (no 405), so route layout is not disclosed.
//!
//! The index is built once per config, so a request only looks at routes of its own host,
//! and, when its host class has more than a few, only at those whose path could match
//! ([`path_index`]): the cost of a lookup does not grow with the number of routes.

use std::borrow::Cow;
use std::cmp::Reverse;
use std::collections::HashMap;

use foldhash::fast::RandomState;
use http::{HeaderMap, HeaderName, Method};
use percent_encoding::percent_decode_str;
use portcullis_compiler::config::{PathKind, RouteConfig};
use regex::Regex;

mod path_index;
use path_index::PathIndex;

#[derive(Debug, thiserror::Error)]
pub enum RouterError {
    #[error("route {route}: invalid path regex: {source}")]
    Regex {
        route: String,
        #[source]
        source: regex::Error,
    },
    #[error("route {route}: invalid header name {name:?}")]
    HeaderName { route: String, name: String },
    #[error("route {route}: invalid method {method:?}")]
    Method { route: String, method: String },
}

enum PathMatcher {
    Exact(Box<str>),
    Prefix(Box<str>),
    Regex(Regex),
}

impl PathMatcher {
    /// Returns the length of the matched prefix (for strip/rewrite), `None` when no match.
    /// Regex matches report `Some(None)`: they have no prefix to replace.
    fn matches(&self, path: &str) -> Option<Option<usize>> {
        match self {
            PathMatcher::Exact(p) => (path == &**p).then_some(Some(path.len())),
            PathMatcher::Prefix(p) => {
                if &**p == "/" {
                    return Some(Some(0));
                }
                let ok = path.starts_with(&**p)
                    && (path.len() == p.len() || path.as_bytes()[p.len()] == b'/');
                ok.then_some(Some(p.len()))
            }
            PathMatcher::Regex(re) => re.is_match(path).then_some(None),
        }
    }
}

struct Entry {
    route: usize,
    matcher: PathMatcher,
}

struct Criteria {
    /// The route's namespace, for the owned-host rule.
    namespace: Box<str>,
    methods: Vec<Method>,
    headers: Vec<(HeaderName, Box<[u8]>)>,
    query: Vec<(Box<str>, Box<str>)>,
}

/// The request attributes routing looks at.
pub struct RequestView<'a> {
    pub host: &'a str,
    pub path: &'a str,
    pub query: Option<&'a str>,
    pub method: &'a Method,
    pub headers: &'a HeaderMap,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouteMatch {
    /// Index into the config's routes.
    pub route: usize,
    /// Bytes of the path covered by the matched Exact/Prefix rule; `None` for Regex.
    pub matched_prefix: Option<usize>,
}

/// The (route, path rule) pairs of one host class in rank order, indexed by path when
/// there are more than a few.
struct Ranked {
    entries: Vec<Entry>,
    index: Option<PathIndex>,
}

impl Ranked {
    fn new(entries: Vec<Entry>) -> Ranked {
        let index = PathIndex::build(&entries);
        Ranked { entries, index }
    }
}

/// The routes of one exact host or wildcard, and the namespaces they belong to.
struct HostEntries {
    ranked: Ranked,
    namespaces: Box<[Box<str>]>,
}

pub struct Router {
    exact: HashMap<Box<str>, HostEntries, RandomState>,
    /// Keyed by the suffix after `*.`.
    wildcard: HashMap<Box<str>, HostEntries, RandomState>,
    any: Ranked,
    criteria: Vec<Criteria>,
}

type Rank = (
    u8,
    Reverse<usize>,
    bool,
    Reverse<usize>,
    Reverse<usize>,
    String,
);

impl Router {
    pub fn build(routes: &[RouteConfig]) -> Result<Router, RouterError> {
        let mut criteria = Vec::with_capacity(routes.len());
        let mut exact: HashMap<Box<str>, Vec<(Rank, Entry)>> = HashMap::new();
        let mut wildcard: HashMap<Box<str>, Vec<(Rank, Entry)>> = HashMap::new();
        let mut any: Vec<(Rank, Entry)> = Vec::new();

        for (index, route) in routes.iter().enumerate() {
            criteria.push(Criteria::build(route)?);
            for rule in &route.paths {
                let rank = || -> Rank {
                    let (kind, len) = match rule.kind {
                        PathKind::Exact => (0, rule.value.len()),
                        PathKind::Prefix => (1, rule.value.len()),
                        PathKind::Regex => (2, 0),
                    };
                    (
                        kind,
                        Reverse(len),
                        route.methods.is_empty(),
                        Reverse(route.headers.len()),
                        Reverse(route.query_params.len()),
                        route.id.clone(),
                    )
                };
                let matcher = || -> Result<PathMatcher, RouterError> {
                    Ok(match rule.kind {
                        PathKind::Exact => PathMatcher::Exact(rule.value.as_str().into()),
                        PathKind::Prefix => PathMatcher::Prefix(rule.value.as_str().into()),
                        PathKind::Regex => PathMatcher::Regex(
                            Regex::new(&format!("^(?:{})$", rule.value)).map_err(|source| {
                                RouterError::Regex {
                                    route: route.id.clone(),
                                    source,
                                }
                            })?,
                        ),
                    })
                };
                if route.hosts.is_empty() {
                    any.push((
                        rank(),
                        Entry {
                            route: index,
                            matcher: matcher()?,
                        },
                    ));
                }
                for host in &route.hosts {
                    let entry = Entry {
                        route: index,
                        matcher: matcher()?,
                    };
                    match host.strip_prefix("*.") {
                        Some(suffix) => wildcard
                            .entry(suffix.into())
                            .or_default()
                            .push((rank(), entry)),
                        None => exact
                            .entry(host.as_str().into())
                            .or_default()
                            .push((rank(), entry)),
                    }
                }
            }
        }
        fn sorted(mut v: Vec<(Rank, Entry)>) -> Vec<Entry> {
            v.sort_by(|a, b| a.0.cmp(&b.0));
            v.into_iter().map(|(_, e)| e).collect()
        }
        let host_entries = |v: Vec<(Rank, Entry)>| {
            let entries = sorted(v);
            let mut namespaces: Vec<Box<str>> = entries
                .iter()
                .map(|e| criteria[e.route].namespace.clone())
                .collect();
            namespaces.sort();
            namespaces.dedup();
            HostEntries {
                ranked: Ranked::new(entries),
                namespaces: namespaces.into(),
            }
        };
        let exact = exact
            .into_iter()
            .map(|(k, v)| (k, host_entries(v)))
            .collect();
        let wildcard = wildcard
            .into_iter()
            .map(|(k, v)| (k, host_entries(v)))
            .collect();
        Ok(Router {
            exact,
            wildcard,
            any: Ranked::new(sorted(any)),
            criteria,
        })
    }

    pub fn find(&self, req: &RequestView<'_>) -> Option<RouteMatch> {
        // The namespaces that may answer for this host, once it turns out to be owned.
        let mut owners: Option<&[Box<str>]> = None;
        if let Some(host) = self.exact.get(req.host) {
            if let Some(found) = self.first_match(&host.ranked, req, None) {
                return Some(found);
            }
            owners = Some(&host.namespaces);
        }
        if let Some((_, suffix)) = req.host.split_once('.') {
            if let Some(wildcard) = self.wildcard.get(suffix) {
                if let Some(found) = self.first_match(&wildcard.ranked, req, owners) {
                    return Some(found);
                }
                owners = owners.or(Some(&wildcard.namespaces));
            }
        }
        self.first_match(&self.any, req, owners)
    }

    fn first_match(
        &self,
        ranked: &Ranked,
        req: &RequestView<'_>,
        owners: Option<&[Box<str>]>,
    ) -> Option<RouteMatch> {
        let try_entry = |entry: &Entry| {
            if let Some(owners) = owners {
                let namespace = &self.criteria[entry.route].namespace;
                if !owners.contains(namespace) {
                    return None;
                }
            }
            let matched_prefix = entry.matcher.matches(req.path)?;
            self.criteria[entry.route]
                .matches(req)
                .then_some(RouteMatch {
                    route: entry.route,
                    matched_prefix,
                })
        };
        match &ranked.index {
            Some(index) => index.find(req.path, |position| {
                ranked.entries.get(position).and_then(try_entry)
            }),
            None => ranked.entries.iter().find_map(try_entry),
        }
    }
}

#[cfg(test)]
impl Router {
    /// The same router scanning every class (the reference the index is tested against).
    fn without_index(mut self) -> Router {
        self.any.index = None;
        for host in self.exact.values_mut().chain(self.wildcard.values_mut()) {
            host.ranked.index = None;
        }
        self
    }
}

impl Criteria {
    fn build(route: &RouteConfig) -> Result<Criteria, RouterError> {
        let methods = route
            .methods
            .iter()
            .map(|m| {
                Method::from_bytes(m.as_bytes()).map_err(|_| RouterError::Method {
                    route: route.id.clone(),
                    method: m.clone(),
                })
            })
            .collect::<Result<_, _>>()?;
        let headers = route
            .headers
            .iter()
            .map(|h| {
                HeaderName::from_bytes(h.name.as_bytes())
                    .map(|name| (name, h.value.as_bytes().into()))
                    .map_err(|_| RouterError::HeaderName {
                        route: route.id.clone(),
                        name: h.name.clone(),
                    })
            })
            .collect::<Result<_, _>>()?;
        let query = route
            .query_params
            .iter()
            .map(|q| (q.name.as_str().into(), q.value.as_str().into()))
            .collect();
        Ok(Criteria {
            namespace: route.namespace.as_str().into(),
            methods,
            headers,
            query,
        })
    }

    fn matches(&self, req: &RequestView<'_>) -> bool {
        if !self.methods.is_empty() && !self.methods.contains(req.method) {
            return false;
        }
        let headers_ok = self.headers.iter().all(|(name, value)| {
            req.headers
                .get_all(name)
                .iter()
                .any(|v| v.as_bytes() == &**value)
        });
        headers_ok
            && self.query.iter().all(|(name, value)| {
                query_pairs(req.query).any(|(n, v)| n == **name && v == **value)
            })
    }
}

/// Decoded `name=value` pairs of a query string (`+` is a space, `%XX` decoded).
pub fn query_pairs(query: Option<&str>) -> impl Iterator<Item = (Cow<'_, str>, Cow<'_, str>)> {
    query
        .unwrap_or("")
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            (form_decode(name), form_decode(value))
        })
}

/// One `application/x-www-form-urlencoded` component: `+` is a space, `%XX` a byte (a `%`
/// without two hex digits stays as it is), invalid UTF-8 replaced. Borrowed when there is
/// nothing to decode.
pub fn form_decode(input: &str) -> Cow<'_, str> {
    if !input.contains('+') {
        return percent_decode_str(input).decode_utf8_lossy();
    }
    let spaced = input.replace('+', " ");
    // One allocation when there is no `%XX` to decode: the spaced copy is the answer.
    let decoded = match percent_decode_str(&spaced).decode_utf8_lossy() {
        Cow::Owned(decoded) => Some(decoded),
        Cow::Borrowed(_) => None,
    };
    Cow::Owned(decoded.unwrap_or(spaced))
}

/// The routing host: authority (HTTP/2, absolute-form) or `Host`, without port and
/// without the trailing dot of a fully qualified name (`api.example.com.` is
/// `api.example.com`), lowercased.
pub fn request_host<'a>(uri: &'a http::Uri, headers: &'a HeaderMap) -> Cow<'a, str> {
    let raw = match uri.host() {
        Some(host) => host,
        None => headers
            .get(http::header::HOST)
            .and_then(|v| v.to_str().ok())
            .map(strip_port)
            .unwrap_or(""),
    };
    let raw = match raw.strip_suffix('.') {
        Some(name) if !name.is_empty() && !name.ends_with('.') => name,
        _ => raw,
    };
    if raw.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(raw.to_ascii_lowercase())
    } else {
        Cow::Borrowed(raw)
    }
}

fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        // IPv6 literal: keep the brackets, drop ":port" after them.
        return match host.find(']') {
            Some(end) => &host[..=end],
            None => host,
        };
    }
    match host.rsplit_once(':') {
        Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => host,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn decodes_query_values() {
        let pairs: Vec<_> = query_pairs(Some("a=1&b=x%20y+z&c&bad=%zz"))
            .map(|(n, v)| (n.into_owned(), v.into_owned()))
            .collect();
        assert_eq!(pairs[1], ("b".into(), "x y z".into()));
        assert_eq!(pairs[2], ("c".into(), "".into()));
        assert_eq!(pairs[3], ("bad".into(), "%zz".into()));
        assert_eq!(form_decode("%4"), "%4");
    }

    #[test]
    fn strips_ports() {
        assert_eq!(strip_port("a.example.com:8080"), "a.example.com");
        assert_eq!(strip_port("[::1]:80"), "[::1]");
        assert_eq!(strip_port("host"), "host");
    }

    fn route(namespace: &str, name: &str, hosts: &[&str], prefix: &str) -> RouteConfig {
        let json = serde_json::json!({
            "id": format!("{namespace}/{name}"), "namespace": namespace, "name": name,
            "hosts": hosts, "paths": [{"kind": "Prefix", "value": prefix}],
            "methods": [], "headers": [], "queryParams": [], "stripPath": false,
            "rewritePrefix": null,
            "upstream": {"targets": [], "loadBalancing": "RoundRobin", "connectTimeoutMs": 1,
                         "readTimeoutMs": 1, "sendTimeoutMs": 1, "retries": 0,
                         "directResponse": {"status": 200, "body": "", "contentType": null}},
            "authentication": null, "authorization": null, "ipRestriction": null,
            "requestValidation": null, "responseHeaders": {"add": {}, "remove": []},
            "securityHeaders": true, "cors": null, "sanitizeUpstreamErrors": false
        });
        serde_json::from_value(json).unwrap()
    }

    fn found(router: &Router, host: &str, path: &str) -> Option<usize> {
        let headers = HeaderMap::new();
        router
            .find(&RequestView {
                host,
                path,
                query: None,
                method: &Method::GET,
                headers: &headers,
            })
            .map(|m| m.route)
    }

    #[test]
    fn catch_alls_of_other_namespaces_never_answer_for_an_owned_host() {
        let routes = vec![
            route("ten-b", "b", &["b.example.com"], "/b"),
            route("ten-a", "wild", &["*.example.com"], "/"),
            route("ten-a", "any", &[], "/"),
            route("ten-b", "b-any", &[], "/b-fallback"),
        ];
        let router = Router::build(&routes).unwrap();
        assert_eq!(found(&router, "b.example.com", "/b/x"), Some(0));
        // Not under /b: ten-a's wildcard and catch-all must not answer on ten-b's host.
        assert_eq!(found(&router, "b.example.com", "/other"), None);
        // ten-b's own catch-all may.
        assert_eq!(found(&router, "b.example.com", "/b-fallback"), Some(3));
        // Unowned hosts are caught as before.
        assert_eq!(found(&router, "x.example.com", "/any"), Some(1));
        assert_eq!(found(&router, "elsewhere.test", "/any"), Some(2));
        // A host under ten-a's wildcard: ten-b's catch-all does not answer for it.
        assert_eq!(found(&router, "x.example.com", "/b-fallback"), Some(1));
    }

    /// Random route sets (hosts, wildcards, exact and prefix paths over a small vocabulary so
    /// that they overlap, regexes, methods, headers) and random requests: the index finds
    /// exactly what scanning the ranked entries finds.
    #[test]
    fn the_path_index_finds_what_a_scan_finds() {
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move |n: usize| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed % n as u64) as usize
        };
        let segments = ["api", "v1", "v2", "users", "a", "b", "x.json", ""];
        let hosts = ["a.example.com", "b.example.com", "*.example.com", "c.test"];
        let path = |next: &mut dyn FnMut(usize) -> usize| {
            let mut p = String::new();
            for _ in 0..next(5) {
                p.push('/');
                p.push_str(segments[next(segments.len())]);
            }
            if p.is_empty() || next(6) == 0 {
                p.push('/');
            }
            p
        };
        let mut checked = 0;
        for round in 0..60 {
            let count = [3, 9, 40, 200][round % 4];
            let routes: Vec<RouteConfig> = (0..count)
                .map(|i| {
                    let mut r = route(["ns-a", "ns-b"][next(2)], &format!("r{i}"), &[], "/");
                    r.hosts = (0..next(3))
                        .map(|_| hosts[next(hosts.len())].to_string())
                        .collect();
                    r.hosts.dedup();
                    let rules = 1 + next(2);
                    r.paths = (0..rules)
                        .map(|_| {
                            let value = path(&mut next);
                            let (kind, value) = match next(10) {
                                0..=3 => (PathKind::Exact, value),
                                4..=8 => (PathKind::Prefix, value),
                                _ => (PathKind::Regex, format!("{}(/.*)?", regex::escape(&value))),
                            };
                            serde_json::from_value(
                                serde_json::json!({"kind": kind, "value": value}),
                            )
                            .unwrap()
                        })
                        .collect();
                    if next(3) == 0 {
                        r.methods = vec!["GET".into()];
                    }
                    if next(4) == 0 {
                        r.headers = vec![serde_json::from_value(
                            serde_json::json!({"name": "x-v", "value": "1"}),
                        )
                        .unwrap()];
                    }
                    r
                })
                .collect();
            let indexed = Router::build(&routes).unwrap();
            let scanned = Router::build(&routes).unwrap().without_index();
            for _ in 0..300 {
                let host = [
                    "a.example.com",
                    "b.example.com",
                    "z.example.com",
                    "c.test",
                    "other",
                ][next(5)];
                let p = path(&mut next);
                let mut headers = HeaderMap::new();
                if next(2) == 0 {
                    headers.insert("x-v", "1".parse().unwrap());
                }
                let method = [Method::GET, Method::POST][next(2)].clone();
                let req = RequestView {
                    host,
                    path: &p,
                    query: None,
                    method: &method,
                    headers: &headers,
                };
                assert_eq!(
                    indexed.find(&req),
                    scanned.find(&req),
                    "{host} {p} of {count} routes"
                );
                checked += 1;
            }
        }
        assert_eq!(checked, 18_000);
        // The large sets were indexed at all.
        let big: Vec<RouteConfig> = (0..20)
            .map(|i| route("n", &format!("r{i}"), &[], &format!("/p{i}")))
            .collect();
        assert!(Router::build(&big).unwrap().any.index.is_some());
    }
}
