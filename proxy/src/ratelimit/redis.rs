//! Shared counters in Redis: one Lua script decides all the counters of a request in one
//! round trip, atomically, with the Redis server's clock.
//!
//! - `EVALSHA`, falling back to `SCRIPT LOAD` on `NOSCRIPT` (as the `redis` crate's
//!   `Script::invoke_async` does), so a restarted or failed-over Redis needs no proxy restart.
//! - One multiplexed connection per backend (`ConnectionManager`, or the cluster client's
//!   connection), shared by all requests; it reconnects on its own after errors.
//! - Connecting happens in the background with exponential backoff; until connected, and
//!   whenever a call exceeds the hard timeout, the caller gets [`RedisError::Unavailable`]
//!   at once and applies the policy's `onBackendFailure`.
//! - Time comes from `TIME` inside the script, so proxies with skewed clocks agree on windows
//!   (calendar quotas included).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwapOption;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, IntoConnectionInfo, Script};

use super::algorithms::{Kind, Rule, Verdict, Verdicts};
use super::keys::RedisKeys;

#[derive(Debug, thiserror::Error)]
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

#[derive(Clone)]
enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

pub struct RedisBackend {
    settings: RedisSettings,
    conn: ArcSwapOption<Conn>,
    connecting: AtomicBool,
    runtime: tokio::runtime::Handle,
    script: Script,
}

const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
const BACKOFF_START: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_secs(2);

/// KEYS[i] is a counter; ARGV[i] its rule: four little-endian f64 (algorithm code as in
/// [`Kind::script_code`], limit, period in ms, burst). Returns 4 integers per counter:
/// admitted (0/1), remaining, reset (ms), retry after (ms). Counters are written only when
/// every one admits. Mirrors `algorithms.rs`.
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
local pack, unpack = struct.pack, struct.unpack
local now = sec * 1000 + floor(usec / 1000)
local now_us = sec * 1000000 + usec
local n = #KEYS
local out = {}
local writes = {}
local all = true
for i = 1, n do
  local kind, limit, period, burst = unpack('<dddd', ARGV[i])
  local raw = redis.call('GET', KEYS[i])
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
  writes[i] = pack('<ddd', na, nb, nc)
  writes[n + i] = max(floor(ttl), 1)
end
if all then
  for i = 1, n do
    redis.call('SET', KEYS[i], writes[i], 'PX', writes[n + i])
  end
end
return out
"#;

impl RedisBackend {
    /// Must be called inside a tokio runtime; starts connecting in the background.
    pub fn new(settings: RedisSettings, runtime: tokio::runtime::Handle) -> Arc<Self> {
        let backend = Arc::new(RedisBackend {
            settings,
            conn: ArcSwapOption::empty(),
            connecting: AtomicBool::new(false),
            runtime,
            script: Script::new(SCRIPT),
        });
        backend.clone().start_connecting();
        backend
    }

    pub fn settings(&self) -> &RedisSettings {
        &self.settings
    }

    pub fn timeout(&self) -> Duration {
        self.settings.timeout
    }

    fn start_connecting(self: Arc<Self>) {
        if self.connecting.swap(true, Ordering::AcqRel) {
            return;
        }
        let runtime = self.runtime.clone();
        runtime.spawn(async move {
            let mut delay = BACKOFF_START;
            loop {
                match tokio::time::timeout(CONNECT_TIMEOUT, self.connect()).await {
                    Ok(Ok(conn)) => {
                        self.conn.store(Some(Arc::new(conn)));
                        tracing::info!(urls = ?self.settings.urls, "rate-limit Redis connected");
                        break;
                    }
                    Ok(Err(e)) => tracing::warn!(error = %e, urls = ?self.settings.urls, "rate-limit Redis connect failed; retrying"),
                    Err(_) => tracing::warn!(urls = ?self.settings.urls, "rate-limit Redis connect timed out; retrying"),
                }
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(BACKOFF_MAX);
            }
            self.connecting.store(false, Ordering::Release);
        });
    }

    async fn connect(&self) -> redis::RedisResult<Conn> {
        let s = &self.settings;
        if s.cluster {
            let mut builder = ClusterClientBuilder::new(s.urls.clone())
                .connection_timeout(CONNECT_TIMEOUT)
                .response_timeout(s.timeout)
                .retries(1);
            if let Some(p) = &s.password {
                builder = builder.password(p.clone());
            }
            let client = builder.build()?;
            Ok(Conn::Cluster(client.get_async_connection().await?))
        } else {
            let url = s.urls.first().map(String::as_str).unwrap_or_default();
            let mut info = url.into_connection_info()?;
            if s.password.is_some() {
                info.redis.password.clone_from(&s.password);
            }
            let client = redis::Client::open(info)?;
            let config = ConnectionManagerConfig::new()
                .set_connection_timeout(CONNECT_TIMEOUT)
                .set_response_timeout(s.timeout)
                // Reconnects back off 50 ms, 100 ms, … up to 2 s, then start over on the
                // next failed call.
                .set_exponent_base(2)
                .set_factor(25)
                .set_max_delay(2000)
                .set_number_of_retries(6);
            Ok(Conn::Single(
                ConnectionManager::new_with_config(client, config).await?,
            ))
        }
    }

    /// Decides `rules` (each with its Redis key) in one script call. On any failure or
    /// timeout: `Unavailable`, never waiting longer than the timeout.
    pub async fn decide(
        &self,
        keys: &RedisKeys,
        rules: &[Rule],
        verdicts: &mut Verdicts,
    ) -> Result<bool, RedisError> {
        let Some(conn) = self.conn.load_full() else {
            return Err(RedisError::Unavailable);
        };
        // One buffer for the whole command (the crate's `ScriptInvocation` allocates per
        // argument); keys and packed rules are written straight into it.
        let mut cmd = Cmd::with_capacity(3 + 2 * rules.len(), 64 + 160 * rules.len());
        cmd.arg("EVALSHA")
            .arg(self.script.get_hash())
            .arg(keys.len());
        for key in keys.iter() {
            cmd.arg(key);
        }
        for rule in rules {
            cmd.arg(&pack_rule(rule)[..]);
        }
        let call = async {
            match (*conn).clone() {
                Conn::Single(mut c) => eval(&mut c, &self.script, &cmd).await,
                Conn::Cluster(mut c) => eval(&mut c, &self.script, &cmd).await,
            }
        };
        let values = match tokio::time::timeout(self.settings.timeout, call).await {
            Ok(Ok(values)) => values,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "rate-limit Redis call failed");
                return Err(RedisError::Unavailable);
            }
            Err(_) => return Err(RedisError::Unavailable),
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
fn pack_rule(rule: &Rule) -> [u8; 32] {
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
