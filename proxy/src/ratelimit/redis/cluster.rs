//! The rate limiter's calls to a Redis Cluster, through the `redis` crate's cluster client,
//! with the requests of one slot batched.
//!
//! Why the crate's client and not a pipe per node like the single Redis's ([`super::pipe`]):
//! a cluster under change answers `MOVED` (a slot moved for good: refresh the slot map),
//! `ASK` (a slot being migrated: this one call goes to the importing node, after `ASKING`),
//! `TRYAGAIN` (a multi-key call on a slot half migrated) and `CLUSTERDOWN` (a slot without a
//! master until a replica is promoted), and a failed master's connection must be given up
//! for its promoted replica. The crate follows all of these for each call, and our tests
//! prove it against a live resharding and a killed master
//! (`proxy/tests/ratelimit_redis_cluster.rs`).
//!
//! Batching: one script call may only declare keys of one slot (Redis refuses others with
//! `CROSSSLOT`), so calls are batched per slot, not per node: requests that arrive for a
//! slot while a call for it is under way wait for the slot's next call, which carries them
//! all (each still decided alone and in order by the script), made as soon as the call
//! under way ends, or at once when [`MAX_BATCH`] requests wait. A slot is one client of
//! one policy (the hash tag, `keys.rs`) or the few that share its slot, so what is shared is
//! a busy client's burst — a flood is the case that loads Redis most — while requests of
//! different clients remain one call each, pipelined on one connection per node by the
//! crate. Per-node batches would need the script to reach keys it does not declare
//! (`allow-cross-slot-keys`, Redis 7): a migrating slot then fails the whole batch with an
//! error that names no node to follow, and the redirections above would be ours to rebuild
//! per request.
//!
//! Retries: every redirection or wait (`TRYAGAIN`, `CLUSTERDOWN`) is retried after a few
//! milliseconds (the crate's default waits 1.28 s at least, past any policy's timeout), as
//! often as the policy's timeout allows; the timeout ends the call with
//! [`RedisError::Unavailable`] and the policy's `onBackendFailure` applies.

use std::collections::HashMap;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
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
use tokio::sync::oneshot;
use tokio::time::Instant;

use super::connecting::{RedisError, BACKOFF_MAX, BACKOFF_START, CONNECT_TIMEOUT};
use super::node_context;
use super::pipe::{Values, MAX_BATCH};
use super::script::{pack_rule, SCRIPT};
use super::slot;
use super::transport::{self, Connector};
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
    /// How its node connections connect, registered for as long as the cluster lives.
    nodes: Arc<node_context::NodeContext>,
    conn: ArcSwapOption<ClusterConnection<BoundedConnection>>,
    script: Script,
    runtime: tokio::runtime::Handle,
    /// The slots with a call under way, and the requests waiting for that slot's next call
    /// (`None`: none yet).
    busy: Mutex<HashMap<u16, Option<Batch>>>,
}

/// Requests for one slot that go out together in one call.
#[derive(Default)]
struct Batch {
    /// Every request's keys, back to back; `ends[i]` ends key `i`.
    keys: Vec<u8>,
    ends: Vec<usize>,
    rules: Vec<[u8; 32]>,
    waiters: Vec<Waiter>,
    /// The last request's deadline: the call may take until then.
    deadline: Option<Instant>,
}

struct Waiter {
    reply: oneshot::Sender<Values>,
    counters: usize,
}

/// What a request does with its slot.
enum Role {
    /// No call under way for the slot: the request makes its own call, and then passes the
    /// slot on to the requests that queued meanwhile.
    Lead,
    /// A call under way: the request waits for the slot's next call (made when the one
    /// under way ends, or at once when [`MAX_BATCH`] requests are waiting).
    Join(oneshot::Receiver<Values>),
}

impl Cluster {
    /// Starts connecting on `runtime`, with backoff, until connected or dropped.
    pub fn start(settings: RedisSettings, runtime: &tokio::runtime::Handle) -> Arc<Cluster> {
        let nodes = Arc::new(node_context::NodeContext {
            connector: settings.connector(),
            username: settings.username.clone(),
            password: settings.password.clone(),
        });
        let cluster = Arc::new(Cluster {
            settings,
            nodes,
            conn: ArcSwapOption::empty(),
            script: Script::new(SCRIPT),
            runtime: runtime.clone(),
            busy: Mutex::new(HashMap::new()),
        });
        runtime.spawn(connect_in_background(Arc::downgrade(&cluster)));
        cluster
    }

    async fn connect(&self) -> redis::RedisResult<ClusterConnection<BoundedConnection>> {
        let s = &self.settings;
        let timeout_ms = u64::try_from(s.timeout.as_millis()).unwrap_or(u64::MAX);
        // Enough retries to fill the timeout with the shortest waits; the timeout ends them.
        let retries = u32::try_from((timeout_ms / RETRY_WAIT_MIN_MS).clamp(4, 1000)).unwrap_or(4);
        // TLS and credentials are the node connections' ([`node_context`]).
        let seeds = s.urls.iter().map(|u| match u.strip_prefix("rediss://") {
            Some(rest) => format!("redis://{rest}"),
            None => u.clone(),
        });
        let builder = ClusterClientBuilder::new(seeds)
            .connection_timeout(CONNECT_TIMEOUT)
            .response_timeout(s.timeout)
            .retries(retries)
            .min_retry_wait(RETRY_WAIT_MIN_MS)
            .max_retry_wait(RETRY_WAIT_MAX_MS)
            // Base 1: every wait is drawn from [min, max] (a base of 2 would overflow the
            // crate's `base^retry` after 64 retries).
            .retry_wait_formula(RETRY_WAIT_MAX_MS, 1)
            .username(node_context::register(&self.nodes));
        // The generic connection is the crate's way to supply node connections (`Connect`).
        builder
            .build()?
            .get_async_generic_connection::<BoundedConnection>()
            .await
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<u16, Option<Batch>>> {
        // Nothing panics while the lock is held, but a poisoned map is still sound.
        self.busy.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Decides one request's counters (`keys[i]` counted by `rules[i]`, all in one slot:
    /// the hash tag, `keys.rs`): in its own call when its slot is idle, else in the slot's
    /// next call together with the other requests that arrive meanwhile.
    pub async fn decide(
        self: &Arc<Self>,
        keys: &RedisKeys,
        rules: &[Rule],
    ) -> Result<Values, RedisError> {
        let deadline = Instant::now() + self.settings.timeout;
        if self.conn.load().is_none()
            || keys.len() != rules.len()
            || u16::try_from(rules.len()).is_err()
        {
            return Err(RedisError::Unavailable);
        }
        let Some(first) = keys.iter().next() else {
            return Err(RedisError::Unavailable);
        };
        let slot = slot::slot(first);
        let role = {
            let mut busy = self.lock();
            match busy.get_mut(&slot) {
                None => {
                    busy.insert(slot, None);
                    Role::Lead
                }
                Some(next) => {
                    let batch = next.get_or_insert_with(Batch::default);
                    let (reply, answer) = oneshot::channel();
                    batch.push(keys, rules, reply, deadline);
                    if batch.waiters.len() >= MAX_BATCH {
                        // Full: it goes out now, beside the call under way, rather than
                        // make a burst wait for call after call.
                        if let Some(full) = next.take() {
                            drop(busy);
                            let this = Arc::clone(self);
                            self.runtime
                                .spawn(async move { this.call_batch(full).await });
                        }
                    }
                    Role::Join(answer)
                }
            }
        };
        match role {
            Role::Lead => {
                // Passes the slot on however this call ends, its caller gone included.
                let _turn = Turn {
                    cluster: self,
                    slot,
                };
                self.call_alone(keys, rules, deadline).await
            }
            Role::Join(answer) => match tokio::time::timeout_at(deadline, answer).await {
                Ok(Ok(values)) => Ok(values),
                // Its call failed (the sender dropped) or did not end in time.
                Ok(Err(_)) | Err(_) => Err(RedisError::Unavailable),
            },
        }
    }

    /// One request's call. One buffer for the whole command (the crate's
    /// `ScriptInvocation` allocates per argument).
    async fn call_alone(
        &self,
        keys: &RedisKeys,
        rules: &[Rule],
        deadline: Instant,
    ) -> Result<Values, RedisError> {
        let size = u16::try_from(rules.len()).map_err(|_| RedisError::Unavailable)?;
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
        self.call(&cmd, deadline).await.map(Values::from_vec)
    }

    async fn call(&self, cmd: &Cmd, deadline: Instant) -> Result<Vec<i64>, RedisError> {
        let Some(conn) = self.conn.load_full() else {
            return Err(RedisError::Unavailable);
        };
        let call = async {
            let mut c = (*conn).clone();
            eval(&mut c, &self.script, cmd).await
        };
        match tokio::time::timeout_at(deadline, call).await {
            Ok(Ok(values)) => Ok(values),
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "rate-limit Redis cluster call failed");
                Err(RedisError::Unavailable)
            }
            Err(_) => Err(RedisError::Unavailable),
        }
    }

    /// A slot's call ended: the requests queued meanwhile go out in the next one, from a
    /// task of their own; with none, the slot is idle again.
    fn pass_on(self: &Arc<Self>, slot: u16) {
        let mut busy = self.lock();
        match busy.get_mut(&slot).and_then(Option::take) {
            Some(batch) => {
                drop(busy);
                self.runtime
                    .spawn(Arc::clone(self).run_batches(slot, batch));
            }
            None => {
                busy.remove(&slot);
            }
        }
    }

    /// Sends a slot's batches one after the other until none is waiting.
    async fn run_batches(self: Arc<Self>, slot: u16, mut batch: Batch) {
        loop {
            self.call_batch(batch).await;
            let mut busy = self.lock();
            match busy.get_mut(&slot).and_then(Option::take) {
                Some(next) => batch = next,
                None => {
                    busy.remove(&slot);
                    return;
                }
            }
        }
    }

    /// One call for every request of `batch` still waiting (one whose caller gave up is
    /// left out: it must not be counted), each decided alone and in order by the script.
    /// On failure every request's sender is dropped: `Unavailable`.
    async fn call_batch(&self, batch: Batch) {
        let Some(deadline) = batch.deadline else {
            return;
        };
        let mut cmd = Cmd::with_capacity(
            4 + 2 * batch.rules.len(),
            96 + batch.keys.len() + 48 * batch.rules.len(),
        );
        let mut live = Vec::with_capacity(batch.waiters.len());
        let mut sizes = Vec::with_capacity(2 * batch.waiters.len());
        let (mut first, mut counters) = (0, 0);
        let mut spans = Vec::with_capacity(batch.waiters.len());
        for w in batch.waiters {
            let span = first..first + w.counters;
            first += w.counters;
            if w.reply.is_closed() {
                continue;
            }
            counters += w.counters;
            // At most u16::MAX counters per request: checked in `decide`.
            sizes.extend_from_slice(&u16::try_from(w.counters).unwrap_or(0).to_be_bytes());
            spans.push(span);
            live.push(w);
        }
        if live.is_empty() {
            return;
        }
        cmd.arg("EVALSHA").arg(self.script.get_hash()).arg(counters);
        for span in &spans {
            for i in span.clone() {
                let start = if i == 0 { 0 } else { batch.ends[i - 1] };
                cmd.arg(&batch.keys[start..batch.ends[i]]);
            }
        }
        for span in &spans {
            for rule in &batch.rules[span.clone()] {
                cmd.arg(&rule[..]);
            }
        }
        cmd.arg(&sizes[..]);
        let Ok(values) = self.call(&cmd, deadline).await else {
            return;
        };
        if values.len() != counters * 4 {
            tracing::warn!(
                len = values.len(),
                expected = counters * 4,
                "unexpected rate-limit script reply"
            );
            return;
        }
        let mut at = 0;
        for w in live {
            let n = w.counters * 4;
            // A request that gave up meanwhile is simply not told.
            let _ = w.reply.send(Values::from_slice(&values[at..at + n]));
            at += n;
        }
    }
}

impl Batch {
    fn push(
        &mut self,
        keys: &RedisKeys,
        rules: &[Rule],
        reply: oneshot::Sender<Values>,
        deadline: Instant,
    ) {
        for key in keys.iter() {
            self.keys.extend_from_slice(key);
            self.ends.push(self.keys.len());
        }
        self.rules.extend(rules.iter().map(pack_rule));
        self.waiters.push(Waiter {
            reply,
            counters: rules.len(),
        });
        self.deadline = Some(deadline);
    }
}

/// A slot's turn: dropped when its call ends (or its caller gives up), it passes the slot on.
struct Turn<'a> {
    cluster: &'a Arc<Cluster>,
    slot: u16,
}

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        self.cluster.pass_on(self.slot);
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
