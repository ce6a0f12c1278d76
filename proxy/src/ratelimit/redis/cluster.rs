//! The rate limiter's calls to a Redis Cluster: one request per `EVALSHA`, through the
//! `redis` crate's cluster client.
//!
//! Why the crate's client and not a pipe per node like the single Redis's ([`super::pipe`]):
//! a cluster under change answers `MOVED` (a slot moved for good: refresh the slot map),
//! `ASK` (a slot being migrated: this one call goes to the importing node, after `ASKING`),
//! `TRYAGAIN` (a multi-key call on a slot half migrated) and `CLUSTERDOWN` (a slot without a
//! master until a replica is promoted), and a failed master's connection must be given up
//! for its promoted replica. The crate handles all of these, each request on its own, and
//! our tests prove it against a live resharding and a killed master
//! (`proxy/tests/ratelimit_redis_cluster.rs`). Batching several requests into one call, as
//! the single Redis's pipe does, cannot be done with declared keys: Redis refuses a script
//! whose `KEYS` span slots (`CROSSSLOT`), and requests of different clients live in
//! different slots. Only undeclared keys (`allow-cross-slot-keys`, Redis 7) would allow it,
//! and then a migrating slot fails the whole batch with an error that names no slot to
//! follow — the redirections above would be ours to rebuild per request. So a cluster
//! call carries one request; the crate pipelines the calls on one connection per node.
//!
//! Retries: every redirection or wait (`TRYAGAIN`, `CLUSTERDOWN`) is retried after a few
//! milliseconds (the crate's default waits 1.28 s at least, past any policy's timeout), as
//! often as the policy's timeout allows; the timeout ends the call with
//! [`RedisError::Unavailable`] and the policy's `onBackendFailure` applies.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Weak};
use std::task::{ready, Context, Poll};

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
use tokio::net::TcpStream;

use super::connecting::{RedisError, BACKOFF_MAX, BACKOFF_START, CONNECT_TIMEOUT};
use super::pipe::Values;
use super::script::{pack_rule, SCRIPT};
use super::RedisSettings;
use crate::ratelimit::algorithms::Rule;
use crate::ratelimit::keys::RedisKeys;
use crate::ratelimit::resp;

/// The wait between retries of one call (a redirection is followed at once): short, since
/// a slot's migration or a replica's promotion ends in milliseconds to a second, and the
/// policy's timeout is the real bound.
const RETRY_WAIT_MIN_MS: u64 = 5;
const RETRY_WAIT_MAX_MS: u64 = 25;

/// A Redis Cluster, connected in the background.
pub struct Cluster {
    settings: RedisSettings,
    conn: ArcSwapOption<ClusterConnection<BoundedConnection>>,
    script: Script,
}

impl Cluster {
    /// Starts connecting on `runtime`, with backoff, until connected or dropped.
    pub fn start(settings: RedisSettings, runtime: &tokio::runtime::Handle) -> Arc<Cluster> {
        let cluster = Arc::new(Cluster {
            settings,
            conn: ArcSwapOption::empty(),
            script: Script::new(SCRIPT),
        });
        runtime.spawn(connect_in_background(Arc::downgrade(&cluster)));
        cluster
    }

    async fn connect(&self) -> redis::RedisResult<ClusterConnection<BoundedConnection>> {
        let s = &self.settings;
        let timeout_ms = u64::try_from(s.timeout.as_millis()).unwrap_or(u64::MAX);
        // Enough retries to fill the timeout with the shortest waits; the timeout ends them.
        let retries = u32::try_from((timeout_ms / RETRY_WAIT_MIN_MS).clamp(4, 1000)).unwrap_or(4);
        let mut builder = ClusterClientBuilder::new(s.urls.clone())
            .connection_timeout(CONNECT_TIMEOUT)
            .response_timeout(s.timeout)
            .retries(retries)
            .min_retry_wait(RETRY_WAIT_MIN_MS)
            .max_retry_wait(RETRY_WAIT_MAX_MS)
            // Base 1: every wait is drawn from [min, max] (a base of 2 would overflow the
            // crate's `base^retry` after 64 retries).
            .retry_wait_formula(RETRY_WAIT_MAX_MS, 1);
        if let Some(p) = &s.password {
            builder = builder.password(p.clone());
        }
        // The generic connection is the crate's way to supply node connections (`Connect`).
        builder
            .build()?
            .get_async_generic_connection::<BoundedConnection>()
            .await
    }

    /// One request's call, its keys in one slot (the hash tag, `keys.rs`). One buffer for
    /// the whole command (the crate's `ScriptInvocation` allocates per argument).
    pub async fn decide(&self, keys: &RedisKeys, rules: &[Rule]) -> Result<Values, RedisError> {
        let Some(conn) = self.conn.load_full() else {
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
                tracing::warn!(error = %e, "rate-limit Redis cluster call failed");
                Err(RedisError::Unavailable)
            }
            Err(_) => Err(RedisError::Unavailable),
        }
    }
}

/// Connects with backoff until connected, or until no backend holds the cluster any more.
async fn connect_in_background(cluster: Weak<Cluster>) {
    let mut delay = BACKOFF_START;
    loop {
        let Some(this) = cluster.upgrade() else {
            return;
        };
        match tokio::time::timeout(CONNECT_TIMEOUT, this.connect()).await {
            Ok(Ok(conn)) => {
                this.conn.store(Some(Arc::new(conn)));
                tracing::info!(urls = ?this.settings.urls, "rate-limit Redis cluster connected");
                return;
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %e, urls = ?this.settings.urls, "rate-limit Redis cluster connect failed; retrying")
            }
            Err(_) => {
                tracing::warn!(urls = ?this.settings.urls, "rate-limit Redis cluster connect timed out; retrying")
            }
        }
        drop(this);
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(BACKOFF_MAX);
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
            // The compiler admits `redis://` URLs only, and the cluster names nodes by
            // host and port.
            let ConnectionAddr::Tcp(host, port) = &info.addr else {
                return Err(redis::RedisError::from((
                    redis::ErrorKind::InvalidClientConfig,
                    "unsupported Redis cluster node address (only TCP)",
                )));
            };
            let stream =
                tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect((host.as_str(), *port)))
                    .await
                    .map_err(|_| io::Error::from(io::ErrorKind::TimedOut))??;
            stream.set_nodelay(true)?;
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
    inner: TcpStream,
    /// The reply under way, from its first byte.
    reply: Vec<u8>,
    ints: Vec<i64>,
}

impl Bounded {
    fn new(inner: TcpStream) -> Self {
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
