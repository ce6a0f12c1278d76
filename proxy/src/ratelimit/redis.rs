//! Shared counters in Redis: one Lua script decides all the counters of a request in one
//! round trip, atomically, with the Redis server's clock.
//!
//! - A single Redis is reached through our own pipelined connection
//!   ([`super::redis_pipe`]): the decisions of all requests queued since it last wrote go
//!   out in one `EVALSHA`, each still decided alone, atomically and in order inside the
//!   script. A cluster goes through the `redis` crate's cluster connection, one request per
//!   call (different requests' keys live in different slots), over node connections whose
//!   replies are bounded by our parser's limits ([`Bounded`]): the crate's parser keeps
//!   whatever a reply claims.
//! - `EVALSHA`, falling back to the script's text on `NOSCRIPT`, so a restarted or
//!   failed-over Redis needs no proxy restart.
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
use tokio::net::TcpStream;

use super::algorithms::{Kind, Rule, Verdict, Verdicts};
use super::keys::RedisKeys;
use super::redis_pipe::{Pipe, Setup, Values};
use super::resp;

#[derive(Debug, Clone, Copy, thiserror::Error)]
pub enum RedisError {
    #[error("rate-limit backend unavailable")]
    Unavailable,
}

/// How to reach one Redis deployment; equal settings share one connection across reloads.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RedisSettings {
    pub urls: Vec<String>,
    pub cluster: bool,
    pub password: Option<String>,
    pub timeout: Duration,
}

pub struct RedisBackend {
    settings: RedisSettings,
    /// A single Redis: its connection. `None` for a cluster.
    pipe: Option<Arc<Pipe>>,
    /// A cluster: its connection once made.
    cluster: ArcSwapOption<ClusterConnection<BoundedConnection>>,
    runtime: tokio::runtime::Handle,
    script: Script,
}

/// Connecting: how long one attempt may take, and the backoff between failed ones (single
/// Redis and cluster alike).
pub(super) const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
pub(super) const BACKOFF_START: Duration = Duration::from_millis(50);
pub(super) const BACKOFF_MAX: Duration = Duration::from_secs(2);

/// KEYS[i] is a counter; ARGV[i] its rule: four little-endian f64 (algorithm code as in
/// [`Kind::script_code`], limit, period in ms, burst). The last ARGV says how the counters
/// split into requests: two bytes (big-endian count) per request, in order. Each request is
/// decided as if alone, in order: its counters are written only when every one of them
/// admits. A key is read with one `GET` and written with one `SET` per call, whatever the
/// number of requests counting on it: the requests in between see each other's counts in
/// the script, and the last write is the one a `SET` per request would have left. Returns
/// 4 integers per counter: admitted (0/1), remaining, reset (ms), retry after (ms). Mirrors
/// `algorithms.rs`.
///
/// What it costs Redis (callgrind, per call): every `redis.call` costs a few thousand
/// instructions and every decimal string turned into a number (`tonumber`, i.e. `strtod`)
/// about two thousand, which dwarf the arithmetic. Hence rules arrive packed (no `tonumber`),
/// a counter is one string of three packed numbers read with `GET` and written with one
/// `SET … PX` (a hash needed `HMGET`, `HSET`, `PEXPIRE` and decimal formatting), and `TIME`
/// is parsed once.
pub const SCRIPT: &str = r#"
local t = redis.call('TIME')
local sec, usec = tonumber(t[1]), tonumber(t[2])
local floor, ceil, max = math.floor, math.ceil, math.max
local pack, unpack, byte = struct.pack, struct.unpack, string.byte
local now = sec * 1000 + floor(usec / 1000)
local now_us = sec * 1000000 + usec
local sizes = ARGV[#KEYS + 1]
local out = {}
local writes = {}
-- Each key is read once and written once per call, however many requests of the batch
-- count on it (a limited client's requests share their key): `seen` holds a key's value
-- as the requests decided so far left it (false: absent), `ttls` the expiry of its last
-- write, `dirty` the keys to write back, in first-write order.
local seen, ttls, dirty = {}, {}, {}
local k = 0
for r = 1, #sizes, 2 do
  local n = byte(sizes, r) * 256 + byte(sizes, r + 1)
  local all = true
  for j = 1, n do
    local i = k + j
    local kind, limit, period, burst = unpack('<dddd', ARGV[i])
    local raw = seen[KEYS[i]]
    if raw == nil then
      raw = redis.call('GET', KEYS[i])
      seen[KEYS[i]] = raw
    end
    local a, b, c = nil, 0, 0
    if raw then a, b, c = unpack('<ddd', raw) end
    local ok, remaining, reset, retry, na, nb, nc, ttl
    if kind == 1 then
      local w = floor(now / period)
      local e = now - w * period
      local cur, prev = 0, 0
      if a == w then cur = b; prev = c elseif a == w - 1 then prev = b end
      local weighted = prev * (period - e)
      ok = weighted + (cur + 1) * period <= limit * period
      local counted = cur
      if ok then counted = cur + 1 end
      remaining = max(limit - ceil((weighted + counted * period) / period), 0)
      local to_end = period - e
      if counted > 0 then reset = to_end + period elseif prev > 0 then reset = to_end else reset = 0 end
      if ok then
        retry = 0
      elseif cur < limit and prev > 0 then
        local free = floor((limit - cur - 1) * period / prev)
        retry = max(max(period - free, 0) - e, 1)
      else
        local free = floor((limit - 1) * period / max(cur, 1))
        retry = to_end + max(period - free, 0)
      end
      na = w; nb = cur + 1; nc = prev; ttl = 2 * period
    elseif kind == 2 then
      local interval = max(floor(period * 1000 / limit), 1)
      local tolerance = interval * burst
      local tat = now_us
      if a and a > now_us then tat = a end
      local new_tat = tat + interval
      ok = new_tat - now_us <= tolerance
      if ok then
        remaining = floor((tolerance - (new_tat - now_us)) / interval)
        reset = ceil((new_tat - now_us) / 1000); retry = 0
      else
        remaining = 0
        reset = ceil((tat - now_us) / 1000)
        retry = ceil((new_tat - tolerance - now_us) / 1000)
      end
      na = new_tat; nb = 0; nc = 0; ttl = ceil((new_tat - now_us) / 1000) + 1000
    else
      local w, wend
      if kind == 3 then
        w = floor(now / period); wend = (w + 1) * period
      elseif kind == 4 then
        w = floor(now / 86400000); wend = (w + 1) * 86400000
      else
        local function days_from_civil(y, m, d)
          if m <= 2 then y = y - 1 end
          local era = floor(y / 400)
          local yoe = y - era * 400
          local mp = (m + 9) % 12
          local doy = floor((153 * mp + 2) / 5) + d - 1
          local doe = yoe * 365 + floor(yoe / 4) - floor(yoe / 100) + doy
          return era * 146097 + doe - 719468
        end
        local z = floor(now / 86400000) + 719468
        local era = floor(z / 146097)
        local doe = z - era * 146097
        local yoe = floor((doe - floor(doe / 1460) + floor(doe / 36524) - floor(doe / 146096)) / 365)
        local y = yoe + era * 400
        local doy = doe - (365 * yoe + floor(yoe / 4) - floor(yoe / 100))
        local mp = floor((5 * doy + 2) / 153)
        local m
        if mp < 10 then m = mp + 3 else m = mp - 9 end
        if m <= 2 then y = y + 1 end
        w = y * 12 + m - 1
        local ny, nm = y, m + 1
        if nm > 12 then ny = y + 1; nm = 1 end
        wend = days_from_civil(ny, nm, 1) * 86400000
      end
      local cur = 0
      if a == w then cur = b end
      reset = wend - now
      ok = cur < limit
      remaining = max(limit - cur - 1, 0)
      if ok then retry = 0 else retry = reset end
      na = w; nb = cur + 1; nc = 0; ttl = reset + 1000
    end
    local o = (i - 1) * 4
    if ok then out[o + 1] = 1 else out[o + 1] = 0; all = false end
    out[o + 2] = remaining; out[o + 3] = reset; out[o + 4] = retry
    -- Packed, not formatted: a number passed to redis.call is written with 17 significant
    -- digits (exact for these integers), but formatting costs more than the packing.
    writes[j] = pack('<ddd', na, nb, nc)
    writes[n + j] = max(floor(ttl), 1)
  end
  if all then
    for j = 1, n do
      local key = KEYS[k + j]
      if not ttls[key] then dirty[#dirty + 1] = key end
      seen[key] = writes[j]
      ttls[key] = writes[n + j]
    end
  end
  k = k + n
end
for d = 1, #dirty do
  local key = dirty[d]
  redis.call('SET', key, seen[key], 'PX', ttls[key])
end
return out
"#;

impl RedisBackend {
    /// Must be called inside a tokio runtime; starts connecting in the background.
    pub fn new(settings: RedisSettings, runtime: tokio::runtime::Handle) -> Arc<Self> {
        let script = Script::new(SCRIPT);
        let pipe = (!settings.cluster).then(|| {
            let setup = Setup {
                url: settings.urls.first().cloned().unwrap_or_default(),
                password: settings.password.clone(),
                script: SCRIPT,
                sha: script.get_hash().to_owned(),
            };
            Pipe::start(setup, &runtime)
        });
        let backend = Arc::new(RedisBackend {
            settings,
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
        let mut builder = ClusterClientBuilder::new(s.urls.clone())
            .connection_timeout(CONNECT_TIMEOUT)
            .response_timeout(s.timeout)
            .retries(1);
        if let Some(p) = &s.password {
            builder = builder.password(p.clone());
        }
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

/// A rule as the script reads it: `struct.unpack('<dddd', …)`. Limits and periods pass
/// through a Lua number either way, so f64 loses nothing the script could use.
pub(super) fn pack_rule(rule: &Rule) -> [u8; 32] {
    let mut out = [0u8; 32];
    #[allow(clippy::cast_precision_loss)]
    let fields = [
        rule.kind.script_code(),
        rule.limit as f64,
        rule.period_ms as f64,
        rule.burst as f64,
    ];
    for (chunk, v) in out.chunks_exact_mut(8).zip(fields) {
        chunk.copy_from_slice(&v.to_le_bytes());
    }
    out
}
