//! Shared counters in Redis: one Lua script decides all the counters of a request in one
//! round trip, atomically, with the Redis server's clock.
//!
//! - A single Redis is reached through our own pipelined connection
//!   ([`pipe`]): the decisions of all requests queued since it last wrote go
//!   out in one `EVALSHA`, each still decided alone, atomically and in order inside the
//!   script. A cluster goes through the `redis` crate's cluster connection ([`cluster`]),
//!   following `MOVED`, `ASK`, `TRYAGAIN` and failovers within the policy's timeout; the
//!   requests of one slot queued while a call for it is under way share its next call
//!   (different requests' keys usually live in different slots).
//! - `EVALSHA`, falling back to the script's text on `NOSCRIPT`, so a restarted or
//!   failed-over Redis needs no proxy restart.
//! - How a connection is made is [`transport`] (TCP, or TLS for `rediss://`, for the pipe
//!   and the cluster's node connections alike, [`node_context`]), [`handshake`] (`AUTH`
//!   with the ACL user, `SELECT`, `SCRIPT LOAD`) and, for a Sentinel-managed Redis,
//!   [`sentinel`] (the master asked of the sentinels at every connect).
//! - Connecting happens in the background with exponential backoff; until connected, and
//!   whenever a call exceeds the hard timeout, the caller gets [`RedisError::Unavailable`]
//!   at once and applies the policy's `onBackendFailure`.
//! - Time comes from `TIME` inside the script, so proxies with skewed clocks agree on windows
//!   (calendar quotas included).

use std::sync::Arc;
use std::time::Duration;

pub mod cluster;
pub mod connecting;
pub mod handshake;
pub mod node_context;
pub mod pipe;
pub mod script;
pub mod sentinel;
pub mod slot;
pub mod transport;

use super::algorithms::{Kind, Rule, Verdict, Verdicts};
use super::keys::RedisKeys;
use cluster::Cluster;
pub use connecting::RedisError;
use pipe::{Pipe, Setup};
use script::SCRIPT;
pub use sentinel::SentinelSettings;
use transport::Connector;
pub use transport::RedisTls;

/// How to reach one Redis deployment; equal settings share one connection across reloads.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct RedisSettings {
    /// One Redis, or a cluster's seeds; empty with `sentinel`.
    pub urls: Vec<String>,
    pub cluster: bool,
    /// ACL user sent with the password.
    pub username: Option<String>,
    pub password: Option<String>,
    /// A master found through these sentinels.
    pub sentinel: Option<SentinelSettings>,
    /// TLS material; TLS is used whenever this is set or a URL is `rediss://`.
    pub tls: Option<RedisTls>,
    pub timeout: Duration,
}

impl RedisSettings {
    /// TCP or TLS. A `rediss://` URL without material still gets TLS (system roots):
    /// never clear text where TLS was asked for.
    pub(crate) fn connector(&self) -> Connector {
        let sentinel_urls = self.sentinel.iter().flat_map(|s| s.urls.iter());
        let rediss = self
            .urls
            .iter()
            .chain(sentinel_urls)
            .any(|u| u.starts_with("rediss://"));
        match (&self.tls, rediss) {
            (Some(tls), _) => Connector::tls(tls),
            (None, true) => Connector::tls(&RedisTls::default()),
            (None, false) => Connector::plain(),
        }
    }
}

pub struct RedisBackend {
    settings: RedisSettings,
    /// A single Redis: its connection. `None` for a cluster.
    pipe: Option<Arc<Pipe>>,
    /// A cluster (`None` for a single Redis).
    cluster: Option<Arc<Cluster>>,
}

impl RedisBackend {
    /// Must be called inside a tokio runtime; starts connecting in the background.
    pub fn new(settings: RedisSettings, runtime: tokio::runtime::Handle) -> Arc<Self> {
        let (pipe, cluster) = if settings.cluster {
            (None, Some(Cluster::start(settings.clone(), &runtime)))
        } else {
            let url = match &settings.sentinel {
                Some(s) => format!("sentinel master {:?}", s.master_name),
                None => settings.urls.first().cloned().unwrap_or_default(),
            };
            let setup = Setup {
                url,
                sentinel: settings.sentinel.clone(),
                connector: settings.connector(),
                username: settings.username.clone(),
                password: settings.password.clone(),
                script: SCRIPT,
                sha: redis::Script::new(SCRIPT).get_hash().to_owned(),
            };
            (Some(Pipe::start(setup, &runtime)), None)
        };
        Arc::new(RedisBackend {
            settings,
            pipe,
            cluster,
        })
    }

    pub fn settings(&self) -> &RedisSettings {
        &self.settings
    }

    pub fn timeout(&self) -> Duration {
        self.settings.timeout
    }

    /// A single Redis: requests queued, and requests sent but not answered.
    pub fn pending(&self) -> (usize, usize) {
        self.pipe.as_ref().map_or((0, 0), |p| p.pending())
    }

    /// Decides `rules` (each with its Redis key) in one script call, shared with other
    /// requests' decisions on a single Redis. On any failure or timeout: `Unavailable`,
    /// never waiting longer than the timeout.
    pub async fn decide(
        &self,
        keys: &RedisKeys,
        rules: &[Rule],
        verdicts: &mut Verdicts,
    ) -> Result<bool, RedisError> {
        let values = match (&self.pipe, &self.cluster) {
            (Some(pipe), _) => pipe.decide(keys, rules, self.settings.timeout).await?,
            (None, Some(cluster)) => cluster.decide(keys, rules).await?,
            (None, None) => return Err(RedisError::Unavailable),
        };
        if values.len() != rules.len() * 4 {
            tracing::warn!(len = values.len(), "unexpected rate-limit script reply");
            return Err(RedisError::Unavailable);
        }
        verdicts.clear();
        let mut all = true;
        for (chunk, rule) in values.chunks_exact(4).zip(rules) {
            let n = |i: usize| u64::try_from(chunk[i]).unwrap_or(0);
            let allowed = chunk[0] == 1;
            all &= allowed;
            verdicts.push(Verdict {
                allowed,
                limit: if rule.kind == Kind::Gcra {
                    rule.burst
                } else {
                    rule.limit
                },
                remaining: n(1),
                reset_ms: n(2),
                retry_after_ms: n(3),
            });
        }
        Ok(all)
    }
}

impl Drop for RedisBackend {
    fn drop(&mut self) {
        if let Some(pipe) = &self.pipe {
            pipe.close();
        }
    }
}
