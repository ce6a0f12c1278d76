//! Shared counters in Redis: one Lua script decides all the counters of a request in one
//! round trip, atomically, with the Redis server's clock.
//!
//! - A single Redis is reached through our own pipelined connection
//!   ([`pipe`]): the decisions of all requests queued since it last wrote go
//!   out in one `EVALSHA`, each still decided alone, atomically and in order inside the
//!   script. A cluster goes through the `redis` crate's cluster connection, one request per
//!   call (different requests' keys live in different slots), over node connections whose
//!   replies are bounded by our parser's limits ([`Bounded`]): the crate's parser keeps
//!   whatever a reply claims.
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

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use futures_util::FutureExt;
use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::{ClusterConnection, Connect};
use redis::{
    AsyncConnectionConfig, Cmd, ConnectionAddr, IntoConnectionInfo, Pipeline, RedisFuture, Script,
    Value,
};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

pub mod connecting;
pub mod handshake;
pub mod node_context;
pub mod pipe;
pub mod script;
pub mod sentinel;
pub mod transport;

use super::algorithms::{Kind, Rule, Verdict, Verdicts};
use super::keys::RedisKeys;
use super::resp;
pub use connecting::RedisError;
use connecting::{BACKOFF_MAX, BACKOFF_START, CONNECT_TIMEOUT};
use pipe::{Pipe, Setup, Values};
use script::{pack_rule, SCRIPT};
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
    fn connector(&self) -> Connector {
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
    /// A cluster: its connection once made.
    cluster: ArcSwapOption<ClusterConnection<BoundedConnection>>,
    /// A cluster: how its node connections connect, for as long as the backend lives.
    nodes: Arc<node_context::NodeContext>,
    runtime: tokio::runtime::Handle,
    script: Script,
}

impl RedisBackend {
    /// Must be called inside a tokio runtime; starts connecting in the background.
    pub fn new(settings: RedisSettings, runtime: tokio::runtime::Handle) -> Arc<Self> {
        let script = Script::new(SCRIPT);
        let pipe = (!settings.cluster).then(|| {
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
                sha: script.get_hash().to_owned(),
            };
            Pipe::start(setup, &runtime)
        });
        let nodes = Arc::new(node_context::NodeContext {
            connector: settings.connector(),
            username: settings.username.clone(),
            password: settings.password.clone(),
        });
        let backend = Arc::new(RedisBackend {
            settings,
            nodes,
            pipe,
            cluster: ArcSwapOption::empty(),
            runtime,
            script,
        });
        if backend.pipe.is_none() {
            backend.start_connecting();
        }
        backend
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

    /// A cluster: connects in the background, with backoff, until connected or until no
    /// config holds this backend any more.
    fn start_connecting(self: &Arc<Self>) {
        let backend = Arc::downgrade(self);
        self.runtime.spawn(async move {
            let mut delay = BACKOFF_START;
            loop {
                let Some(this) = backend.upgrade() else {
                    return;
                };
                match tokio::time::timeout(CONNECT_TIMEOUT, this.connect_cluster()).await {
                    Ok(Ok(conn)) => {
                        this.cluster.store(Some(Arc::new(conn)));
                        tracing::info!(urls = ?this.settings.urls, "rate-limit Redis cluster connected");
                        return;
                    }
                    Ok(Err(e)) => tracing::warn!(error = %e, urls = ?this.settings.urls, "rate-limit Redis cluster connect failed; retrying"),
                    Err(_) => tracing::warn!(urls = ?this.settings.urls, "rate-limit Redis cluster connect timed out; retrying"),
                }
                drop(this);
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(BACKOFF_MAX);
            }
        });
    }

    async fn connect_cluster(&self) -> redis::RedisResult<ClusterConnection<BoundedConnection>> {
        let s = &self.settings;
        // TLS and credentials are the node connections' ([`node_context`]).
        let seeds = s.urls.iter().map(|u| match u.strip_prefix("rediss://") {
            Some(rest) => format!("redis://{rest}"),
            None => u.clone(),
        });
        let builder = ClusterClientBuilder::new(seeds)
            .connection_timeout(CONNECT_TIMEOUT)
            .response_timeout(s.timeout)
            .retries(1)
            .username(node_context::register(&self.nodes));
        // The generic connection is the crate's way to supply node connections (`Connect`).
        builder
            .build()?
            .get_async_generic_connection::<BoundedConnection>()
            .await
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
        let values = match &self.pipe {
            Some(pipe) => pipe.decide(keys, rules, self.settings.timeout).await?,
            None => self.call_cluster(keys, rules).await?,
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

    /// A cluster's call: one request, its keys in one slot. One buffer for the whole
    /// command (the crate's `ScriptInvocation` allocates per argument).
    async fn call_cluster(&self, keys: &RedisKeys, rules: &[Rule]) -> Result<Values, RedisError> {
        let Some(conn) = self.cluster.load_full() else {
            return Err(RedisError::Unavailable);
        };
        let Ok(size) = u16::try_from(rules.len()) else {
            return Err(RedisError::Unavailable);
        };
        let mut cmd = Cmd::with_capacity(4 + 2 * rules.len(), 96 + 160 * rules.len());
        cmd.arg("EVALSHA")
            .arg(self.script.get_hash())
            .arg(keys.len());
        for key in keys.iter() {
            cmd.arg(key);
        }
        for rule in rules {
            cmd.arg(&pack_rule(rule)[..]);
        }
        cmd.arg(&size.to_be_bytes()[..]);
        let call = async {
            let mut c = (*conn).clone();
            eval(&mut c, &self.script, &cmd).await
        };
        match tokio::time::timeout(self.settings.timeout, call).await {
            Ok(Ok(values)) => Ok(Values::from_vec(values)),
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "rate-limit Redis call failed");
                Err(RedisError::Unavailable)
            }
            Err(_) => Err(RedisError::Unavailable),
        }
    }
}

impl Drop for RedisBackend {
    fn drop(&mut self) {
        if let Some(pipe) = &self.pipe {
            pipe.close();
        }
    }
}

/// A cluster node's connection: the crate's multiplexed connection over a [`Bounded`]
/// socket.
#[derive(Clone)]
pub struct BoundedConnection(MultiplexedConnection);

impl ConnectionLike for BoundedConnection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        self.0.req_packed_command(cmd)
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        self.0.req_packed_commands(cmd, offset, count)
    }

    fn get_db(&self) -> i64 {
        self.0.get_db()
    }
}

impl Connect for BoundedConnection {
    fn connect_with_config<'a, T>(info: T, config: AsyncConnectionConfig) -> RedisFuture<'a, Self>
    where
        T: IntoConnectionInfo + Send + 'a,
    {
        async move {
            let mut info = info.into_connection_info()?;
            // What [`Bounded`] checks: RESP2, as our own connection speaks.
            info.redis.protocol = redis::ProtocolVersion::RESP2;
            let context = node_context::lookup(info.redis.username.as_deref())
                .map_err(|e| redis::RedisError::from((redis::ErrorKind::ClientError, e)))?;
            let plain = Connector::plain();
            let connector = match &context {
                Some(c) => {
                    info.redis.username = c.username.clone();
                    info.redis.password = c.password.clone();
                    &c.connector
                }
                None => &plain,
            };
            // The cluster names nodes by host and port.
            let ConnectionAddr::Tcp(host, port) = &info.addr else {
                return Err(redis::RedisError::from((
                    redis::ErrorKind::InvalidClientConfig,
                    "unsupported Redis cluster node address (only TCP)",
                )));
            };
            let stream = tokio::time::timeout(CONNECT_TIMEOUT, connector.connect(host, *port))
                .await
                .map_err(|_| io::Error::from(io::ErrorKind::TimedOut))?
                .map_err(|e| io::Error::new(io::ErrorKind::ConnectionRefused, e))?;
            let (conn, driver) =
                MultiplexedConnection::new_with_config(&info.redis, Bounded::new(stream), config)
                    .await?;
            // Ends when the connection's last handle is dropped or the socket fails.
            tokio::spawn(driver);
            Ok(BoundedConnection(conn))
        }
        .boxed()
    }
}

/// A socket whose replies are checked as they arrive, with the limits of our own RESP
/// parser ([`resp::parse`]): an array header above [`resp::MAX_ELEMENTS`] (`*1000000000`),
/// nesting too deep, or a reply not complete within [`resp::MAX_REPLY`] fails the
/// connection at once, before the crate's parser (which keeps whatever a reply claims)
/// has more than that. Costs a copy of the bytes of the reply under way, never more than
/// [`resp::MAX_REPLY`]: cluster replies are a few dozen bytes.
struct Bounded {
    inner: transport::Stream,
    /// The reply under way, from its first byte.
    reply: Vec<u8>,
    ints: Vec<i64>,
}

impl Bounded {
    fn new(inner: transport::Stream) -> Self {
        Bounded {
            inner,
            reply: Vec::new(),
            ints: Vec::new(),
        }
    }

    /// Takes in bytes the crate is about to read; an error when they break a limit.
    fn check(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.reply.extend_from_slice(bytes);
        let mut at = 0;
        loop {
            match resp::parse(&self.reply[at..], &mut self.ints) {
                Ok(Some((_, len))) => at += len,
                Ok(None) => break,
                Err(e) => return Err(io::Error::new(io::ErrorKind::InvalidData, e)),
            }
        }
        self.reply.drain(..at);
        Ok(())
    }
}

impl AsyncRead for Bounded {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
        Poll::Ready(this.check(&buf.filled()[before..]))
    }
}

impl AsyncWrite for Bounded {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// `EVALSHA`; on `NOSCRIPT` (a restarted or failed-over Redis) loads the script and retries.
async fn eval<C: redis::aio::ConnectionLike>(
    conn: &mut C,
    script: &Script,
    cmd: &Cmd,
) -> redis::RedisResult<Vec<i64>> {
    match cmd.query_async(conn).await {
        Err(e) if e.kind() == redis::ErrorKind::NoScriptError => {
            script.load_async(conn).await?;
            cmd.query_async(conn).await
        }
        other => other,
    }
}
