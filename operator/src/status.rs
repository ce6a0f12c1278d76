//! The status each object should have: the compiler's conditions, `Programmed` from the
//! proxies' reports, and the proxies/enforcement summaries. Pure functions, unit-tested; the
//! status writer compares the result with the cached status and writes only differences.

use std::collections::{HashSet, VecDeque};
use std::fmt;
use std::hash::{BuildHasher, Hash, Hasher};
use std::sync::Arc;

use portcullis_compiler::config::ObjectRef;
use portcullis_compiler::report::{ProxyReport, RouteCounters};
use portcullis_compiler::ObjectStatus;
use portcullis_crds::{Condition, EnforcementStatus, ObjectStatusFields, ProxiesStatus};

/// How many recently published generations we remember the contents of. A replica still
/// running an older one that contains the same object generation counts as programmed.
const REMEMBERED_GENERATIONS: usize = 32;

/// The objects (with their generations) of one compiled config. foldhash, not SipHash:
/// building and probing sets of 110,000 names is part of every change's latency, and the
/// names come from the API server's own objects (no untrusted flooding of this table).
pub type ObjectSet = Arc<HashSet<Arc<ObjectRef>, foldhash::fast::RandomState>>;

/// A hasher for fingerprints compared within this process only.
fn fingerprint_hasher() -> impl Hasher {
    foldhash::fast::FixedState::default().build_hasher()
}

/// Which objects (with their generations) each recently published config contains.
///
/// Successive configs share almost all of their objects, so each set holds pointers to
/// objects shared with the previous set: remembering 32 configs of 110,000 objects costs
/// 32 hash tables of pointers, not 32 copies of every name. Cloning is cheap (the status
/// writer gets a copy with every plan).
#[derive(Default, Clone)]
pub struct Published {
    generations: VecDeque<(String, ObjectSet)>,
}

impl Published {
    /// The set of `objects`, sharing the allocations of objects already in the newest set.
    pub fn intern(&self, objects: &[ObjectRef]) -> ObjectSet {
        let newest = self.generations.back().map(|(_, set)| set);
        Arc::new(
            objects
                .iter()
                .map(|o| {
                    newest
                        .and_then(|set| set.get(o).cloned())
                        .unwrap_or_else(|| Arc::new(o.clone()))
                })
                .collect(),
        )
    }

    pub fn record(&mut self, generation: &str, objects: ObjectSet) {
        if self.generations.iter().any(|(g, _)| g == generation) {
            return;
        }
        self.generations
            .push_back((generation.to_string(), objects));
        while self.generations.len() > REMEMBERED_GENERATIONS {
            self.generations.pop_front();
        }
    }

    /// The objects of a remembered config.
    pub fn set(&self, generation: &str) -> Option<&ObjectSet> {
        self.generations
            .iter()
            .find(|(g, _)| g == generation)
            .map(|(_, set)| set)
    }

    pub fn contains(&self, generation: &str, object: &ObjectRef) -> bool {
        self.set(generation).is_some_and(|set| set.contains(object))
    }
}

/// The verdict on `Programmed` for one object. Its message is formatted only when a status
/// is built: the writer checks 110,000 objects against the cache per plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Programmed<'a> {
    pub status: bool,
    pub reason: &'static str,
    pub ready: u32,
    pub total: u32,
    /// Replicas whose reports are fresh.
    pub live: u32,
    /// Live replicas on a config this operator does not remember (one published by the
    /// previous leader, or before a restart): whether it has the object is unknown.
    pub unknown: u32,
    /// Why the config cannot be published (reason `ConfigTooLarge`).
    pub error: Option<&'a str>,
}

impl Programmed<'_> {
    pub fn message(&self) -> impl fmt::Display + '_ {
        ProgrammedMessage(self)
    }
}

struct ProgrammedMessage<'p, 'a>(&'p Programmed<'a>);

impl fmt::Display for ProgrammedMessage<'_, '_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let p = self.0;
        match p.reason {
            "Invalid" => f.write_str("not accepted: see the Accepted condition"),
            "ConfigTooLarge" => f.write_str(p.error.unwrap_or_default()),
            "NoProxies" => f.write_str("no live proxy replica reports a loaded config"),
            "Pending" => {
                let behind = p.live.saturating_sub(p.ready);
                write!(
                    f,
                    "enforced by {}/{} proxy replicas; {behind} live {} a config without \
                     this generation (waiting for {} to load it)",
                    p.ready,
                    p.total,
                    if behind == 1 {
                        "replica runs"
                    } else {
                        "replicas run"
                    },
                    if behind == 1 { "it" } else { "them" },
                )
            }
            _ => write!(f, "enforced by {}/{} proxy replicas", p.ready, p.total),
        }
    }
}

/// What one live replica runs, as far as [`programmed`] is concerned.
#[derive(Debug, Clone, Copy)]
pub enum Running<'a> {
    /// The config of the latest compile: it has exactly the objects marked `in_config`, no
    /// lookup needed (the common case, and the one that matters at 110,000 objects).
    Current,
    /// An older published config.
    Older(&'a ObjectSet),
    /// A config we do not remember (e.g. published by the previous leader).
    Unknown,
    /// No config loaded yet (a replica starting).
    Unloaded,
}

/// The proxy replicas as [`programmed`] sees them, resolved once per plan.
pub struct Fleet<'a> {
    pub running: Vec<Running<'a>>,
    /// Live plus recently expired replicas.
    pub known: u32,
    /// Live replicas with a config loaded: a replica that has loaded none yet serves
    /// nothing, so it shows in the total but does not hold `Programmed` back (else every
    /// object in the cluster would flap to Pending and back whenever a replica starts).
    pub loaded: u32,
    /// Live replicas on a config this operator does not remember.
    pub unknown: u32,
}

/// `live` are the replicas whose reports are fresh; `known` counts those plus replicas that
/// stopped reporting recently (a crashed pod), so `kubectl get` shows `1/2`, not `1/1`.
/// `current` is the generation of the latest compile, if it was published.
pub fn fleet<'a>(
    live: &[ProxyReport],
    known: usize,
    published: &'a Published,
    current: Option<&str>,
) -> Fleet<'a> {
    let running: Vec<Running<'a>> = live
        .iter()
        .map(|r| match r.generation.as_deref() {
            Some(g) if Some(g) == current => Running::Current,
            Some(g) => published.set(g).map_or(Running::Unknown, Running::Older),
            None => Running::Unloaded,
        })
        .collect();
    let count = |kind: fn(&Running) -> bool| running.iter().filter(|r| kind(r)).count() as u32;
    Fleet {
        loaded: count(|r| !matches!(r, Running::Unloaded)),
        unknown: count(|r| matches!(r, Running::Unknown)),
        running,
        known: known as u32,
    }
}

/// `in_config`: the latest compiled config contains this generation of the object.
pub fn programmed<'a>(
    object: &ObjectRef,
    accepted: bool,
    in_config: bool,
    fleet: &Fleet,
    publish_error: Option<&'a str>,
) -> Programmed<'a> {
    let total = fleet.known.max(fleet.running.len() as u32);
    let live = fleet.loaded;
    let ready = fleet
        .running
        .iter()
        .filter(|running| match running {
            Running::Current => in_config,
            Running::Older(set) => set.contains(object),
            Running::Unknown | Running::Unloaded => false,
        })
        .count() as u32;
    let (status, reason) = if !(accepted && in_config) {
        (false, "Invalid")
    } else if publish_error.is_some() {
        (false, "ConfigTooLarge")
    } else if live == 0 {
        (false, "NoProxies")
    } else if ready == live {
        // Every *live* replica enforces it; crashed ones only show in the total.
        (true, "Programmed")
    } else {
        (false, "Pending")
    };
    Programmed {
        status,
        reason,
        ready,
        total,
        live,
        unknown: fleet.unknown,
        error: publish_error,
    }
}

impl Programmed<'_> {
    /// Keeps `Programmed=True` of the object's current generation while the only replicas
    /// not known to run it are on configs this operator does not remember. After a leader
    /// change the new leader knows none of the configs its predecessor published: judging
    /// them unready would turn every unchanged object `Pending` for the second it takes the
    /// proxies to load the new leader's config (and back), i.e. two status writes per object
    /// and a flapping condition. The predecessor wrote that verdict knowing the config, and
    /// the replicas load the new leader's config (which settles it) within a report interval.
    pub fn held(self, generation: Option<i64>, current: Option<&ObjectStatusFields>) -> Self {
        let only_unknown =
            self.reason == "Pending" && self.unknown > 0 && self.ready + self.unknown == self.live;
        let Some(current) = current.filter(|_| only_unknown) else {
            return self;
        };
        let was_programmed = current.observed_generation == generation
            && current.conditions.iter().any(|c| {
                c.type_ == "Programmed"
                    && c.status == "True"
                    && c.reason == "Programmed"
                    && c.observed_generation == generation
            });
        match (&current.proxies, was_programmed) {
            (Some(proxies), true) => Programmed {
                status: true,
                reason: "Programmed",
                ready: proxies.ready,
                total: proxies.total,
                ..self
            },
            _ => self,
        }
    }
}

/// What `status.proxies.configGeneration` shows: a published config that contains this
/// generation of the object (the newest one when the operator first saw it there). It is kept
/// for as long as the object's generation does not change, so that publishing a config for
/// some other object does not rewrite the status of every object in the cluster (at 110,000
/// objects that would be 110,000 writes per change).
pub fn config_generation<'a>(
    object: &ObjectRef,
    current: Option<&'a ObjectStatusFields>,
    published: &Published,
    last_published: Option<&'a str>,
) -> Option<&'a str> {
    let kept = current
        .filter(|c| c.observed_generation == object.generation)
        .and_then(|c| c.proxies.as_ref())
        .and_then(|p| p.config_generation.as_deref());
    kept.or_else(|| last_published.filter(|g| published.contains(g, object)))
}

/// Fingerprints of a desired status: `core` leaves out the enforcement counters (they change with
/// every proxy report on a route with traffic), `full` does not; neither covers
/// `lastTransitionTime`, which is derived from the other fields and the clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fingerprints {
    pub core: u64,
    pub full: u64,
}

/// Sums the counters of one route over the live replicas.
pub fn enforcement(route_id: &str, replicas: &[ProxyReport]) -> EnforcementStatus {
    let mut sum = RouteCounters::default();
    for replica in replicas {
        if let Some(counters) = replica.routes.get(route_id) {
            sum.add(counters);
        }
    }
    EnforcementStatus {
        requests: sum.requests,
        auth_failures: sum.auth_failures,
        rate_limited: sum.rate_limited,
        waf_blocked: sum.waf_blocked,
        validation_failed: sum.validation_failed,
        blocked: sum.blocked(),
        since: replicas.iter().map(|r| r.started_at.clone()).min(),
    }
}

fn status_text(status: bool) -> &'static str {
    if status {
        "True"
    } else {
        "False"
    }
}

/// True if `message` formats exactly as `text`, without allocating.
fn formats_as(message: impl fmt::Display, text: &str) -> bool {
    struct Compare<'t> {
        rest: &'t str,
        equal: bool,
    }
    impl fmt::Write for Compare<'_> {
        fn write_str(&mut self, s: &str) -> fmt::Result {
            match self.rest.strip_prefix(s) {
                Some(rest) if self.equal => self.rest = rest,
                _ => self.equal = false,
            }
            Ok(())
        }
    }
    let mut compare = Compare {
        rest: text,
        equal: true,
    };
    let _ = fmt::Write::write_fmt(&mut compare, format_args!("{message}"));
    compare.equal && compare.rest.is_empty()
}

/// The status an object should carry, borrowed from its inputs. The writer compares it with
/// the cached status and fingerprints it for every object on every plan without building it;
/// it is built only for a write. [`Desired::matches`] is exactly `build(current) == current`
/// (a unit test holds the two together).
pub struct Desired<'a> {
    pub compiled: &'a ObjectStatus,
    pub programmed: Programmed<'a>,
    pub config_generation: Option<&'a str>,
    pub enforcement: Option<EnforcementStatus>,
}

impl Desired<'_> {
    /// (type, status, reason, message) of each condition, in status order.
    fn conditions(&self) -> impl Iterator<Item = (&str, bool, &str, Message<'_>)> {
        self.compiled
            .conditions
            .iter()
            .map(|c| {
                (
                    c.type_.as_str(),
                    c.status,
                    c.reason.as_str(),
                    Message::Text(&c.message),
                )
            })
            .chain(std::iter::once((
                "Programmed",
                self.programmed.status,
                self.programmed.reason,
                Message::Programmed(&self.programmed),
            )))
    }

    pub fn build(&self, current: Option<&ObjectStatusFields>, now: &str) -> ObjectStatusFields {
        let existing: &[Condition] = current.map_or(&[], |s| s.conditions.as_slice());
        let generation = self.compiled.generation;
        let conditions = self
            .conditions()
            .map(|(type_, status, reason, message)| {
                let status_text = status_text(status);
                // The transition time moves only when the status does.
                let last_transition_time = existing
                    .iter()
                    .find(|c| c.type_ == type_ && c.status == status_text)
                    .and_then(|c| c.last_transition_time.clone())
                    .unwrap_or_else(|| now.to_string());
                Condition {
                    type_: type_.to_string(),
                    status: status_text.to_string(),
                    reason: reason.to_string(),
                    message: message.to_string(),
                    observed_generation: generation,
                    last_transition_time: Some(last_transition_time),
                }
            })
            .collect();
        let p = &self.programmed;
        ObjectStatusFields {
            observed_generation: generation,
            conditions,
            proxies: Some(ProxiesStatus {
                ready: p.ready,
                total: p.total,
                summary: format!("{}/{}", p.ready, p.total),
                config_generation: self.config_generation.map(str::to_string),
            }),
            enforcement: self.enforcement.clone(),
        }
    }

    /// `build(current, now) == *current` for any `now`, without building.
    pub fn matches(&self, current: Option<&ObjectStatusFields>) -> bool {
        let Some(current) = current else {
            return false;
        };
        let generation = self.compiled.generation;
        if current.observed_generation != generation
            || current.enforcement != self.enforcement
            || current.conditions.len() != self.compiled.conditions.len() + 1
        {
            return false;
        }
        let p = &self.programmed;
        let proxies_match = current.proxies.as_ref().is_some_and(|c| {
            c.ready == p.ready
                && c.total == p.total
                && c.config_generation.as_deref() == self.config_generation
                && formats_as(format_args!("{}/{}", p.ready, p.total), &c.summary)
        });
        proxies_match
            && self.conditions().zip(&current.conditions).all(
                |((type_, status, reason, message), c)| {
                    let status_text = status_text(status);
                    // What `build` would take the transition time from.
                    let kept = current
                        .conditions
                        .iter()
                        .find(|x| x.type_ == type_ && x.status == status_text)
                        .and_then(|x| x.last_transition_time.as_ref());
                    c.type_ == type_
                        && c.status == status_text
                        && c.reason == reason
                        && c.observed_generation == generation
                        && kept.is_some()
                        && kept == c.last_transition_time.as_ref()
                        && match message {
                            Message::Text(text) => c.message == text,
                            Message::Programmed(p) => formats_as(p.message(), &c.message),
                        }
                },
            )
    }

    /// Fingerprints of the status, from its inputs: `verdict` is [`verdict_hash`] of the
    /// compiled status (computed once per compile). ConsumerCredentials' summary derives
    /// from the spec, which the generation in the verdict covers.
    ///
    /// `configGeneration` is left out. Once written it stays for as long as the object's
    /// generation does (see [`config_generation`]), so it changes only with the verdict. But
    /// an object not yet written (or whose write the cache does not show yet) would take the
    /// newest published generation: with it in the fingerprints every publish would make the
    /// whole first-pass backlog look freshly changed (tying with the change a user just
    /// made), and would have every write still on its way into the cache written again.
    pub fn fingerprints(&self, verdict: u64) -> Fingerprints {
        let mut hasher = fingerprint_hasher();
        let p = &self.programmed;
        (verdict, p.status, p.reason, p.ready, p.total, p.error).hash(&mut hasher);
        let core = hasher.finish();
        if let Some(e) = &self.enforcement {
            (
                e.requests,
                e.auth_failures,
                e.rate_limited,
                e.waf_blocked,
                e.validation_failed,
                e.blocked,
                &e.since,
            )
                .hash(&mut hasher);
        }
        Fingerprints {
            core,
            full: hasher.finish(),
        }
    }
}

/// Identifies the compiler's verdict on one object (its generation and conditions).
pub fn verdict_hash(compiled: &ObjectStatus) -> u64 {
    let mut hasher = fingerprint_hasher();
    compiled.generation.hash(&mut hasher);
    for c in &compiled.conditions {
        (&c.type_, c.status, c.reason.as_str(), &c.message).hash(&mut hasher);
    }
    hasher.finish()
}

enum Message<'a> {
    Text(&'a str),
    Programmed(&'a Programmed<'a>),
}

impl fmt::Display for Message<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Message::Text(text) => f.write_str(text),
            Message::Programmed(p) => p.message().fmt(f),
        }
    }
}

/// True if `text` is what `message` formats as (for `status.credentials`).
pub fn shows(text: Option<&str>, message: &dyn fmt::Display) -> bool {
    text.is_some_and(|text| formats_as(message, text))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::collections::BTreeMap;

    use portcullis_compiler::config::ObjectKind;
    use portcullis_compiler::{ConditionOut, Reason};

    use super::*;

    fn object(generation: i64) -> ObjectRef {
        ObjectRef {
            kind: ObjectKind::ApiRoute,
            namespace: "shop".into(),
            name: "users".into(),
            generation: Some(generation),
        }
    }

    fn other(generation: i64) -> ObjectRef {
        ObjectRef {
            name: "orders".into(),
            ..object(generation)
        }
    }

    fn replica(name: &str, generation: &str) -> ProxyReport {
        ProxyReport {
            replica: name.into(),
            generation: Some(generation.into()),
            started_at: format!("2026-01-01T00:00:0{}Z", name.len()),
            routes: BTreeMap::from([(
                "shop/users".to_string(),
                RouteCounters {
                    requests: 10,
                    auth_failures: 2,
                    ..RouteCounters::default()
                },
            )]),
        }
    }

    #[test]
    fn programmed_needs_every_live_replica_on_a_config_with_this_generation() {
        let mut published = Published::default();
        let g1 = published.intern(&[object(1)]);
        published.record("g1", g1);
        let g2 = published.intern(&[object(2)]);
        published.record("g2", g2);
        let both_new = [replica("a", "g2"), replica("b", "g2")];
        let one_old = [replica("a", "g2"), replica("b", "g1")];
        let p = programmed(
            &object(2),
            true,
            true,
            &fleet(&both_new, 2, &published, None),
            None,
        );
        assert!(p.status && p.ready == 2 && p.total == 2, "{p:?}");
        let p = programmed(
            &object(2),
            true,
            true,
            &fleet(&one_old, 2, &published, None),
            None,
        );
        assert!(!p.status && p.ready == 1 && p.reason == "Pending", "{p:?}");
        let p = programmed(
            &object(2),
            true,
            true,
            &fleet(&[], 0, &published, None),
            None,
        );
        assert_eq!(p.reason, "NoProxies");
        let p = programmed(
            &object(2),
            false,
            true,
            &fleet(&both_new, 2, &published, None),
            None,
        );
        assert_eq!(p.reason, "Invalid");
        let p = programmed(
            &object(2),
            true,
            true,
            &fleet(&both_new, 2, &published, None),
            Some("too big"),
        );
        assert_eq!(p.reason, "ConfigTooLarge");
        // An unknown generation (e.g. from before an operator restart) is not assumed to match.
        let p = programmed(
            &object(2),
            true,
            true,
            &fleet(&[replica("a", "g0")], 1, &published, None),
            None,
        );
        assert!(!p.status);
        // A replica on the latest compiled config needs no lookup: in_config decides.
        let current = fleet(&both_new, 2, &published, Some("g2"));
        assert!(matches!(current.running[0], Running::Current));
        let p = programmed(&object(2), true, true, &current, None);
        assert!(p.status && p.ready == 2, "{p:?}");
        let p = programmed(&object(2), true, false, &current, None);
        assert!(!p.status && p.reason == "Invalid" && p.ready == 0, "{p:?}");
        // A crashed replica still counts in the total, but does not hold Programmed back.
        let p = programmed(
            &object(2),
            true,
            true,
            &fleet(&both_new[..1], 2, &published, None),
            None,
        );
        assert!(p.status && p.ready == 1 && p.total == 2, "{p:?}");
        // A starting replica (nothing loaded) shows in the total, not in the verdict.
        let starting = [
            replica("a", "g2"),
            ProxyReport {
                generation: None,
                ..replica("b", "x")
            },
        ];
        let p = programmed(
            &object(2),
            true,
            true,
            &fleet(&starting, 2, &published, None),
            None,
        );
        assert!(p.status && p.ready == 1 && p.total == 2, "{p:?}");
        let p = programmed(
            &object(2),
            true,
            true,
            &fleet(&starting[1..], 1, &published, None),
            None,
        );
        assert_eq!(p.reason, "NoProxies");
        // A live replica behind is named in the message.
        let p = programmed(
            &object(2),
            true,
            true,
            &fleet(&one_old, 3, &published, None),
            None,
        );
        assert_eq!(
            p.message().to_string(),
            "enforced by 1/3 proxy replicas; 1 live replica runs a config without this \
             generation (waiting for it to load it)"
        );
    }

    #[test]
    fn a_new_leader_keeps_programmed_while_replicas_run_its_predecessors_config() {
        let mut published = Published::default();
        let g2 = published.intern(&[object(2)]);
        published.record("g2", g2);
        // "g-old" was published by the previous leader: this operator does not know it.
        let fleet_of = |generations: &[&str]| {
            let replicas: Vec<ProxyReport> = generations
                .iter()
                .enumerate()
                .map(|(i, g)| replica(&format!("r{i}"), g))
                .collect();
            replicas
        };
        let was = |status: &str, generation: i64| ObjectStatusFields {
            observed_generation: Some(generation),
            conditions: vec![Condition {
                type_: "Programmed".into(),
                status: status.into(),
                reason: if status == "True" {
                    "Programmed"
                } else {
                    "Pending"
                }
                .into(),
                message: String::new(),
                observed_generation: Some(generation),
                last_transition_time: Some("T".into()),
            }],
            proxies: Some(ProxiesStatus {
                ready: 2,
                total: 2,
                summary: "2/2".into(),
                config_generation: Some("g-old".into()),
            }),
            enforcement: None,
        };
        let judge = |replicas: &[ProxyReport], current: &ObjectStatusFields| {
            programmed(
                &object(2),
                true,
                true,
                &fleet(replicas, replicas.len(), &published, None),
                None,
            )
            .held(Some(2), Some(current))
        };
        let unknown = fleet_of(&["g-old", "g2"]);
        let p = judge(&unknown, &was("True", 2));
        assert!(
            p.status && p.reason == "Programmed" && p.ready == 2,
            "{p:?}"
        );
        // Not held: the status was not True, or was for another generation of the object.
        assert!(!judge(&unknown, &was("False", 2)).status);
        assert!(!judge(&unknown, &was("True", 1)).status);
        // Not held: a replica runs a config we know lacks this generation.
        let mut published_old = published.clone();
        let g1 = published_old.intern(&[object(1)]);
        published_old.record("g1", g1);
        let behind = fleet_of(&["g-old", "g1"]);
        let p = programmed(
            &object(2),
            true,
            true,
            &fleet(&behind, 2, &published_old, None),
            None,
        )
        .held(Some(2), Some(&was("True", 2)));
        assert!(!p.status, "{p:?}");
        // A starting replica (nothing loaded) changes nothing.
        let mut unloaded = fleet_of(&["g-old"]);
        unloaded.push(ProxyReport {
            generation: None,
            ..replica("r9", "x")
        });
        let p = judge(&unloaded, &was("True", 2));
        assert!(p.status && p.total == 2, "{p:?}");
    }

    fn compiled() -> ObjectStatus {
        ObjectStatus {
            kind: ObjectKind::ApiRoute,
            namespace: "shop".into(),
            name: "users".into(),
            generation: Some(3),
            conditions: vec![ConditionOut {
                type_: "Accepted".into(),
                status: true,
                reason: Reason::Accepted,
                message: "valid".into(),
            }],
            sections: Vec::new(),
        }
    }

    const READY: Programmed<'static> = Programmed {
        status: true,
        reason: "Programmed",
        ready: 1,
        total: 1,
        live: 1,
        unknown: 0,
        error: None,
    };

    fn view<'a>(
        compiled: &'a ObjectStatus,
        programmed: Programmed<'a>,
        enforcement: Option<EnforcementStatus>,
    ) -> Desired<'a> {
        Desired {
            compiled,
            programmed,
            config_generation: Some("g"),
            enforcement,
        }
    }

    #[test]
    fn transition_time_moves_only_when_the_status_changes() {
        let compiled = compiled();
        let desired = view(&compiled, READY, None);
        let first = desired.build(None, "T1");
        let second = desired.build(Some(&first), "T2");
        assert_eq!(first, second, "nothing changed, so nothing to write");
        let not_programmed = Programmed {
            status: false,
            reason: "Pending",
            ready: 0,
            ..READY
        };
        let third = view(&compiled, not_programmed, None).build(Some(&second), "T3");
        let programmed_condition = third
            .conditions
            .iter()
            .find(|c| c.type_ == "Programmed")
            .unwrap();
        assert_eq!(
            programmed_condition.last_transition_time.as_deref(),
            Some("T3")
        );
        assert_eq!(
            programmed_condition.message,
            "enforced by 0/1 proxy replicas; 1 live replica runs a config without this \
             generation (waiting for it to load it)"
        );
        let accepted = third
            .conditions
            .iter()
            .find(|c| c.type_ == "Accepted")
            .unwrap();
        assert_eq!(accepted.last_transition_time.as_deref(), Some("T1"));
        assert_eq!(accepted.observed_generation, Some(3));
    }

    #[test]
    fn matches_is_exactly_build_equals_current() {
        let compiled = compiled();
        let counters = |requests| {
            Some(EnforcementStatus {
                requests,
                ..EnforcementStatus::default()
            })
        };
        let base = view(&compiled, READY, counters(1)).build(None, "T1");
        let mut variants = vec![base.clone()];
        let mut edit = |f: &dyn Fn(&mut ObjectStatusFields)| {
            let mut v = base.clone();
            f(&mut v);
            variants.push(v);
        };
        edit(&|v| v.conditions[1].message = "enforced by 1/2 proxy replicas".into());
        edit(&|v| v.conditions[1].last_transition_time = None);
        edit(&|v| v.conditions[0].observed_generation = Some(2));
        edit(&|v| v.observed_generation = None);
        edit(&|v| v.conditions[0].reason = "Invalid".into());
        edit(&|v| v.conditions.pop().map(drop).unwrap_or_default());
        edit(&|v| v.conditions.push(v.conditions[0].clone()));
        edit(&|v| v.proxies.as_mut().unwrap().summary = "1/2".into());
        edit(&|v| v.proxies.as_mut().unwrap().config_generation = None);
        edit(&|v| v.proxies = None);
        edit(&|v| v.enforcement = counters(2));
        edit(&|v| v.enforcement = None);
        // Two conditions of one type: build takes the first one's transition time.
        edit(&|v| {
            let mut early = v.conditions[1].clone();
            early.last_transition_time = Some("T0".into());
            v.conditions.insert(0, early);
        });
        let pending = Programmed {
            status: false,
            reason: "Pending",
            ready: 0,
            total: 2,
            live: 0,
            unknown: 0,
            ..READY
        };
        let too_large = Programmed {
            status: false,
            reason: "ConfigTooLarge",
            error: Some("config is 17 MiB"),
            ..READY
        };
        for programmed in [READY, pending, too_large] {
            for enforcement in [counters(1), None] {
                let desired = view(&compiled, programmed, enforcement);
                let mut own = variants.clone();
                own.push(desired.build(None, "T9"));
                own.push(desired.build(Some(&base), "T9"));
                for current in &own {
                    assert_eq!(
                        desired.matches(Some(current)),
                        desired.build(Some(current), "T9") == *current,
                        "{programmed:?} against {current:?}"
                    );
                }
                assert!(!desired.matches(None));
            }
        }
    }

    #[test]
    fn published_sets_share_unchanged_objects() {
        let mut published = Published::default();
        let g1 = published.intern(&[object(1), other(1)]);
        published.record("g1", g1.clone());
        // The next config changes "users" only: "orders" is the same allocation.
        let g2 = published.intern(&[object(2), other(1)]);
        published.record("g2", g2.clone());
        let shared = |set: &ObjectSet| set.get(&other(1)).unwrap().clone();
        assert!(Arc::ptr_eq(&shared(&g1), &shared(&g2)));
        assert!(published.contains("g1", &object(1)) && !published.contains("g1", &object(2)));
        assert!(published.contains("g2", &object(2)) && published.contains("g2", &other(1)));
        // Copies handed to the status writer do not see later records.
        let copy = published.clone();
        let g3 = published.intern(&[object(3), other(1)]);
        published.record("g3", g3);
        assert!(!copy.contains("g3", &object(3)) && published.contains("g3", &object(3)));
    }

    #[test]
    fn config_generation_stays_while_the_object_generation_does() {
        let mut published = Published::default();
        let g1 = published.intern(&[object(1)]);
        published.record("g1", g1);
        // First sighting: the newest published config that contains it.
        assert_eq!(
            config_generation(&object(1), None, &published, Some("g1")),
            Some("g1")
        );
        let shown = ObjectStatusFields {
            observed_generation: Some(1),
            proxies: Some(ProxiesStatus {
                config_generation: Some("g1".into()),
                ..ProxiesStatus::default()
            }),
            ..ObjectStatusFields::default()
        };
        // A config published for another object's change does not move it.
        let g2 = published.intern(&[object(1), other(1)]);
        published.record("g2", g2);
        assert_eq!(
            config_generation(&object(1), Some(&shown), &published, Some("g2")),
            Some("g1")
        );
        // A new generation of the object moves it, once a published config contains it.
        assert_eq!(
            config_generation(&object(2), Some(&shown), &published, Some("g2")),
            None
        );
        let g3 = published.intern(&[object(2), other(1)]);
        published.record("g3", g3);
        assert_eq!(
            config_generation(&object(2), Some(&shown), &published, Some("g3")),
            Some("g3")
        );
    }

    #[test]
    fn counters_change_the_full_fingerprint_only() {
        let compiled = compiled();
        let counters = |requests| {
            Some(EnforcementStatus {
                requests,
                ..EnforcementStatus::default()
            })
        };
        let verdict = verdict_hash(&compiled);
        let a = view(&compiled, READY, counters(1)).fingerprints(verdict);
        let b = view(&compiled, READY, counters(2)).fingerprints(verdict);
        assert_eq!(a.core, b.core);
        assert_ne!(a.full, b.full);
        let newer_config = Desired {
            config_generation: Some("g2"),
            ..view(&compiled, READY, counters(1))
        };
        assert_eq!(newer_config.fingerprints(verdict), a);
        let mut changed = compiled.clone();
        changed.conditions[0].message = "still valid".into();
        assert_ne!(verdict, verdict_hash(&changed));
        let c = view(&compiled, READY, counters(1)).fingerprints(verdict_hash(&changed));
        assert_ne!(a.core, c.core);
        let pending = Programmed {
            status: false,
            reason: "Pending",
            ..READY
        };
        assert_ne!(
            a.core,
            view(&compiled, pending, counters(1))
                .fingerprints(verdict)
                .core
        );
    }

    #[test]
    fn enforcement_sums_live_replicas() {
        let e = enforcement("shop/users", &[replica("a", "g"), replica("bb", "g")]);
        assert_eq!((e.requests, e.auth_failures, e.blocked), (20, 4, 4));
        assert_eq!(e.since.as_deref(), Some("2026-01-01T00:00:01Z"));
    }
}
