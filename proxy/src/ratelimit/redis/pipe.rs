//! The rate limiter's connection to a single Redis, shared by all requests: every decision
//! queued since the connection last wrote goes out in one `EVALSHA`, and calls are
//! pipelined without limit.
//!
//! Why our own connection and not the `redis` crate's: batching must not make anyone wait.
//! A request queues its counters and wakes the connection's task; whatever queued before
//! that task runs goes out together. An idle proxy therefore sends each decision alone at
//! once, and a saturated one sends many per call, which is when Redis's fixed cost per call
//! (the command, the script's set-up, `TIME`, one `GET` and one `SET` per key whatever the
//! number of requests counting on it, a read, a write and a wake-up) matters. Requests meet
//! no slot to wait for: the hops are the ones every multiplexed connection has (request →
//! connection task → Redis → connection task → request). Earlier tries batched with a limit
//! of calls in flight and made waiting requests depend on other calls ending, which a
//! saturated proxy delays into timeouts (docs/benchmarks.md).
//!
//! Failure: a request gets [`RedisError::Unavailable`] when it is not answered within its
//! timeout, at once while the connection is down, and when the queue is full. A lost
//! connection fails everything queued or in flight and reconnects with backoff; so does a
//! connection that has answered nothing for [`STALL_RESET`] while calls were in flight (a
//! peer gone without a reset). On `NOSCRIPT` (scripts flushed) a call is sent again as
//! `EVAL`, which also caches the script for the calls after it.
//!
//! The connection is TCP or TLS ([`Wire`]); through Sentinel, the master is asked of the
//! sentinels at every connect and a `READONLY` answer (a demoted master) drops the
//! connection so that the next connect finds the new one.

use std::collections::VecDeque;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use smallvec::SmallVec;
use tokio::sync::{oneshot, Notify};
use tokio::time::Instant;

use super::connecting::{RedisError, BACKOFF_MAX, BACKOFF_START, CONNECT_TIMEOUT};
use super::handshake::{exchange, put_auth, HandshakeError};
use super::script::pack_rule;
use super::sentinel::{is_master, master_address, watch_switches, SentinelError, SentinelSettings};
use super::transport::{host_port, parse_url, Connector, TransportError, Wire};
use crate::ratelimit::algorithms::Rule;
use crate::ratelimit::keys::RedisKeys;
use crate::ratelimit::resp::{self, Reply};

/// The numbers of one request's counters, 4 each, as the script returns them.
pub type Values = SmallVec<[i64; 16]>;

/// Requests per script call, at most: bounds the time Redis spends in one script, during
/// which it serves nobody else.
pub const MAX_BATCH: usize = 64;
/// Requests queued and not yet sent, at most; beyond that a request is refused at once.
const MAX_QUEUED: usize = 16_384;
/// Requests sent and not yet answered beyond which nothing more is sent until answers come.
const MAX_UNANSWERED: usize = 16_384;
/// The longest pause between connect attempts through sentinels.
const SENTINEL_BACKOFF_MAX: Duration = Duration::from_millis(250);
/// No answer for this long while calls are in flight: the connection is given up.
pub const STALL_RESET: Duration = Duration::from_secs(3);

#[derive(Debug, thiserror::Error)]
enum PipeError {
    #[error(transparent)]
    Transport(#[from] TransportError),
    #[error(transparent)]
    Sentinel(#[from] SentinelError),
    #[error(transparent)]
    Handshake(#[from] HandshakeError),
    #[error("{0}:{1} is not a master (ROLE); the sentinels are asked again")]
    NotMaster(String, u16),
    #[error("the master answered READONLY (demoted); reconnecting")]
    ReadOnly,
    #[error("a sentinel announced a new master; reconnecting")]
    Switched,
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error(transparent)]
    Protocol(#[from] resp::ProtocolError),
    #[error("Redis closed the connection")]
    Closed,
    #[error("Redis answered nothing for {0:?} while calls were in flight")]
    Stalled(Duration),
    #[error("Redis sent a reply nobody asked for")]
    Unexpected,
}

/// What the connection needs to (re)connect.
pub struct Setup {
    /// The Redis; with `sentinel`, a name for logs only.
    pub url: String,
    /// When set, the master is asked of these sentinels at every connect.
    pub sentinel: Option<SentinelSettings>,
    /// TCP or TLS, for the sentinels and the Redis alike.
    pub connector: Connector,
    /// ACL user, with the password; overrides a user in the URL.
    pub username: Option<String>,
    /// From the policy's Secret; overrides a password in the URL.
    pub password: Option<String>,
    pub script: &'static str,
    pub sha: String,
}

pub struct Pipe {
    queue: Mutex<Queue>,
    /// Wakes the connection's task: work queued, or [`Pipe::close`].
    wake: Notify,
    closed: AtomicBool,
    unanswered: AtomicUsize,
    /// Through Sentinel: `+switch-master` announcements for this master so far; a connection
    /// made before the latest one is dropped ([`Pipe::switches`] wakes it) unless it is to
    /// the master announced.
    switches: AtomicU64,
    /// The master of the latest announcement.
    announced: Mutex<Option<(String, u16)>>,
    switched: Notify,
}

#[derive(Default)]
struct Queue {
    /// Connected; requests are refused at once while not.
    up: bool,
    /// Calls being formed, oldest first; all of them go out at the task's next write.
    batches: VecDeque<Batch>,
    requests: usize,
}

/// One call's arguments, encoded as the requests arrive.
#[derive(Default)]
struct Batch {
    /// Each key as a bulk string.
    keys: Vec<u8>,
    /// Each counter's packed rule as a bulk string.
    rules: Vec<u8>,
    /// Two bytes (big-endian count of counters) per request: how the script splits them.
    sizes: Vec<u8>,
    counters: usize,
    waiters: Vec<Waiter>,
}

struct Waiter {
    reply: oneshot::Sender<Values>,
    counters: usize,
}

/// A call on the wire, waiting for its reply.
struct Sent {
    /// Everything after the script's name or hash, kept to resend it as `EVAL`.
    body: Bytes,
    args: usize,
    waiters: Vec<Waiter>,
    retried: bool,
}

impl Pipe {
    /// Starts the connection's task on `runtime`; it connects in the background.
    pub fn start(setup: Setup, runtime: &tokio::runtime::Handle) -> Arc<Pipe> {
        let pipe = Arc::new(Pipe {
            queue: Mutex::new(Queue::default()),
            wake: Notify::new(),
            closed: AtomicBool::new(false),
            unanswered: AtomicUsize::new(0),
            switches: AtomicU64::new(0),
            announced: Mutex::new(None),
            switched: Notify::new(),
        });
        if let Some(sentinel) = &setup.sentinel {
            let (stop, switched) = (Arc::downgrade(&pipe), Arc::downgrade(&pipe));
            runtime.spawn(watch_switches(
                sentinel.clone(),
                setup.connector.clone(),
                move || stop.upgrade().is_none_or(|p| p.closed()),
                move |master| {
                    if let Some(p) = switched.upgrade() {
                        *p.announced.lock().unwrap_or_else(PoisonError::into_inner) = master;
                        p.switches.fetch_add(1, Ordering::AcqRel);
                        p.switched.notify_waiters();
                    }
                },
            ));
        }
        runtime.spawn(pipe.clone().run(setup));
        pipe
    }

    /// Stops the task; what is queued or in flight fails.
    pub fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.wake.notify_one();
    }

    /// Requests queued and requests sent but not answered (tests: nothing stranded).
    pub fn pending(&self) -> (usize, usize) {
        let queued = self.lock().requests;
        (queued, self.unanswered.load(Ordering::Acquire))
    }

    /// Decides one request's counters (`keys[i]` counted by `rules[i]`).
    pub async fn decide(
        &self,
        keys: &RedisKeys,
        rules: &[Rule],
        timeout: Duration,
    ) -> Result<Values, RedisError> {
        let deadline = Instant::now() + timeout;
        let Ok(sizes) = u16::try_from(rules.len()) else {
            return Err(RedisError::Unavailable);
        };
        if keys.len() != rules.len() {
            return Err(RedisError::Unavailable);
        }
        let (reply, answer) = oneshot::channel();
        {
            let mut q = self.lock();
            if !q.up || q.requests >= MAX_QUEUED {
                return Err(RedisError::Unavailable);
            }
            let was_empty = q.batches.is_empty();
            if q.batches
                .back()
                .is_none_or(|b| b.waiters.len() >= MAX_BATCH)
            {
                q.batches.push_back(Batch::default());
            }
            let Some(batch) = q.batches.back_mut() else {
                return Err(RedisError::Unavailable);
            };
            for key in keys.iter() {
                resp::put_bulk(&mut batch.keys, key);
            }
            for rule in rules {
                resp::put_bulk(&mut batch.rules, &pack_rule(rule));
            }
            batch.sizes.extend_from_slice(&sizes.to_be_bytes());
            batch.counters += rules.len();
            batch.waiters.push(Waiter {
                reply,
                counters: rules.len(),
            });
            q.requests += 1;
            drop(q);
            // The task takes every batch whenever it runs, so only the first request after
            // that needs to wake it.
            if was_empty {
                self.wake.notify_one();
            }
        }
        match tokio::time::timeout_at(deadline, answer).await {
            Ok(Ok(values)) => Ok(values),
            // Failed (its sender dropped) or not answered in time.
            Ok(Err(_)) | Err(_) => Err(RedisError::Unavailable),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Queue> {
        // Nothing panics while the lock is held, but a poisoned queue is still sound.
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Connects, serves until the connection fails, and again, with backoff, until closed.
    async fn run(self: Arc<Self>, setup: Setup) {
        let mut delay = BACKOFF_START;
        // Asking the sentinels first may take one more round trip per sentinel.
        let connect_timeout = if setup.sentinel.is_some() {
            CONNECT_TIMEOUT * 2
        } else {
            CONNECT_TIMEOUT
        };
        // During a failover the sentinels name the dead master until they promote another:
        // asking them often is cheap and bounds how long after the promotion we follow.
        let backoff_max = if setup.sentinel.is_some() {
            SENTINEL_BACKOFF_MAX
        } else {
            BACKOFF_MAX
        };
        while !self.closed() {
            // Announcements before the sentinels are asked are followed by this connect.
            let switches = self.switches.load(Ordering::Acquire);
            match tokio::time::timeout(connect_timeout, connect(&setup)).await {
                Ok(Ok((wire, address))) => {
                    self.lock().up = true;
                    tracing::info!(url = %setup.url, "rate-limit Redis connected");
                    delay = BACKOFF_START;
                    let outcome = self.serve(wire, &setup, switches, &address).await;
                    self.go_down();
                    match outcome {
                        Ok(()) => return,
                        Err(e) => {
                            tracing::warn!(error = %e, url = %setup.url, "rate-limit Redis connection lost; reconnecting");
                        }
                    }
                    // A connection that dies right away must not become a reconnect loop.
                    tokio::time::sleep(BACKOFF_START).await;
                    continue;
                }
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, url = %setup.url, "rate-limit Redis connect failed; retrying");
                }
                Err(_) => {
                    tracing::warn!(url = %setup.url, "rate-limit Redis connect timed out; retrying");
                }
            }
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                () = self.wake.notified() => {}
            }
            delay = (delay * 2).min(backoff_max);
        }
        self.go_down();
    }

    /// Refuses new requests and fails the queued ones (dropping a waiter's sender answers
    /// it `Unavailable`).
    fn go_down(&self) {
        let dropped = {
            let mut q = self.lock();
            q.up = false;
            q.requests = 0;
            std::mem::take(&mut q.batches)
        };
        drop(dropped);
        self.unanswered.store(0, Ordering::Release);
    }

    /// Writes queued calls and hands out replies until the connection fails (or the pipe is
    /// closed: `Ok`). What is in flight when it returns fails with it.
    async fn serve(
        &self,
        wire: Wire,
        setup: &Setup,
        mut switches: u64,
        address: &(String, u16),
    ) -> Result<(), PipeError> {
        let mut session = Session {
            wire,
            setup,
            out: Vec::with_capacity(16 << 10),
            written: 0,
            input: BytesMut::with_capacity(16 << 10),
            ints: Vec::new(),
            in_flight: VecDeque::new(),
            unanswered: 0,
        };
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let mut answered_at = Instant::now();
        loop {
            if self.closed() {
                return Ok(());
            }
            let announced = self.switches.load(Ordering::Acquire);
            if announced != switches {
                // Asked of the sentinels after the promotion, this connection may already be
                // to the master announced: dropping it would only refuse requests.
                let to_it = self
                    .announced
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .as_ref()
                    == Some(address);
                if !to_it {
                    return Err(PipeError::Switched);
                }
                switches = announced;
            }
            if session.unanswered < MAX_UNANSWERED {
                session.take_batches(self);
            }
            session.flush()?;
            self.unanswered.store(session.unanswered, Ordering::Release);
            if session.in_flight.is_empty() {
                answered_at = Instant::now();
            }
            let flushed = session.flushed();
            tokio::select! {
                biased;
                ready = session.wire.ready(!flushed) => {
                    if ready?.is_readable() {
                        let read = session.read_replies()?;
                        if read.answered {
                            answered_at = Instant::now();
                        }
                        if read.more {
                            // A peer that sends without pause must not keep this task
                            // (and the requests queued on its worker) from the runtime.
                            tokio::task::yield_now().await;
                        }
                    }
                }
                () = self.wake.notified(), if flushed => {}
                () = self.switched.notified() => {}
                _ = tick.tick() => {
                    if !session.in_flight.is_empty() && answered_at.elapsed() > STALL_RESET {
                        return Err(PipeError::Stalled(STALL_RESET));
                    }
                }
            }
        }
    }
}

/// Bytes read per readiness at most before the task yields: a few large replies' worth.
const READ_BUDGET: usize = 256 << 10;

/// What one [`Session::read_replies`] did.
#[derive(Default)]
struct Read {
    /// At least one call was answered.
    answered: bool,
    /// Stopped at [`READ_BUDGET`] with more possibly waiting.
    more: bool,
}

/// One connection's calls: the bytes not yet written, the replies not yet complete, and the
/// calls waiting for them, in order.
struct Session<'a> {
    wire: Wire,
    setup: &'a Setup,
    out: Vec<u8>,
    /// How much of `out` the socket has taken.
    written: usize,
    input: BytesMut,
    ints: Vec<i64>,
    in_flight: VecDeque<Sent>,
    /// Requests in `in_flight`.
    unanswered: usize,
}

impl Session<'_> {
    fn flushed(&self) -> bool {
        self.written == self.out.len()
    }

    /// Writes what the socket takes without waiting.
    fn flush(&mut self) -> io::Result<()> {
        self.wire.send_pending()?;
        while !self.flushed() {
            match self.wire.try_write(&self.out[self.written..]) {
                Ok(n) => self.written += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) => return Err(e),
            }
        }
        self.out.clear();
        self.written = 0;
        Ok(())
    }

    /// Moves every queued batch onto the wire buffer as one `EVALSHA` each.
    fn take_batches(&mut self, pipe: &Pipe) {
        let taken: SmallVec<[Batch; 2]> = {
            let mut q = pipe.lock();
            if q.batches.is_empty() {
                return;
            }
            q.requests = 0;
            q.batches.drain(..).collect()
        };
        for batch in taken {
            let mut body =
                Vec::with_capacity(16 + batch.keys.len() + batch.rules.len() + batch.sizes.len());
            resp::put_bulk(
                &mut body,
                itoa::Buffer::new().format(batch.counters).as_bytes(),
            );
            body.extend_from_slice(&batch.keys);
            body.extend_from_slice(&batch.rules);
            resp::put_bulk(&mut body, &batch.sizes);
            let sha = self.setup.sha.as_bytes();
            self.send(
                b"EVALSHA",
                sha,
                Sent {
                    body: Bytes::from(body),
                    args: 4 + 2 * batch.counters,
                    waiters: batch.waiters,
                    retried: false,
                },
            );
        }
    }

    /// Queues one call (`verb` `script` and the call's arguments) for writing.
    fn send(&mut self, verb: &[u8], script: &[u8], sent: Sent) {
        resp::put_array(&mut self.out, sent.args);
        resp::put_bulk(&mut self.out, verb);
        resp::put_bulk(&mut self.out, script);
        self.out.extend_from_slice(&sent.body);
        self.unanswered += sent.waiters.len();
        self.in_flight.push_back(sent);
    }

    /// Reads what has arrived, at most [`READ_BUDGET`] bytes, and answers the calls whose
    /// replies are complete. The buffer never holds more than one incomplete reply, which
    /// [`resp::parse`] refuses beyond [`resp::MAX_REPLY`]: a peer streaming an endless reply
    /// costs a bounded buffer, then the connection.
    fn read_replies(&mut self) -> Result<Read, PipeError> {
        let mut read = Read::default();
        let mut taken = 0;
        loop {
            if taken >= READ_BUDGET {
                read.more = true;
                return Ok(read);
            }
            if self.input.capacity() - self.input.len() < 4096 {
                self.input.reserve(16 << 10);
            }
            match self.wire.try_read_buf(&mut self.input) {
                Ok(0) => return Err(PipeError::Closed),
                Ok(n) => taken += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(read),
                Err(e) => return Err(e.into()),
            }
            let mut at = 0;
            while let Some((reply, len)) = resp::parse(&self.input[at..], &mut self.ints)? {
                let sent = self.in_flight.pop_front().ok_or(PipeError::Unexpected)?;
                self.unanswered -= sent.waiters.len();
                read.answered = true;
                match reply {
                    Reply::Ints => answer(sent.waiters, &self.ints),
                    Reply::Error(text) => {
                        let text = &self.input[at + text.start..at + text.end];
                        if text.starts_with(b"READONLY") {
                            // A demoted master: this connection can only fail from now on.
                            return Err(PipeError::ReadOnly);
                        }
                        if text.starts_with(b"NOSCRIPT") && !sent.retried {
                            // The script is cached again by this `EVAL`.
                            let script = self.setup.script.as_bytes();
                            self.send(
                                b"EVAL",
                                script,
                                Sent {
                                    retried: true,
                                    ..sent
                                },
                            );
                        } else {
                            tracing::warn!(error = %String::from_utf8_lossy(text), "rate-limit Redis call failed");
                        }
                    }
                    Reply::Other => {
                        tracing::warn!("unexpected rate-limit script reply");
                    }
                }
                at += len;
            }
            self.input.advance(at);
        }
    }
}

/// Hands each request of a call its numbers; a reply of the wrong length fails them all.
fn answer(waiters: Vec<Waiter>, ints: &[i64]) {
    let expected: usize = waiters.iter().map(|w| w.counters * 4).sum();
    if ints.len() != expected {
        tracing::warn!(
            len = ints.len(),
            expected,
            "unexpected rate-limit script reply"
        );
        return;
    }
    let mut at = 0;
    for w in waiters {
        let n = w.counters * 4;
        // A request that gave up meanwhile is simply not told.
        let _ = w.reply.send(Values::from_slice(&ints[at..at + n]));
        at += n;
    }
}

/// Opens the connection (to the master the sentinels name, with a sentinel) and sets it
/// up: `AUTH`, `SELECT`, `ROLE` (a sentinel's master must be one) and `SCRIPT LOAD` so that
/// the first calls find the script.
/// A connection set up for the script, and the address it went to.
async fn connect(setup: &Setup) -> Result<(Wire, (String, u16)), PipeError> {
    // A sentinel's master has no URL: its credentials are the policy's, its database 0.
    let (info, (host, port)) = match &setup.sentinel {
        Some(sentinel) => (
            redis::RedisConnectionInfo::default(),
            master_address(sentinel, &setup.connector).await?,
        ),
        None => {
            let (info, _) = parse_url(&setup.url)?;
            let (host, port) = host_port(&info)?;
            let address = (host.to_owned(), port);
            (info.redis, address)
        }
    };
    let mut stream = setup.connector.connect(&host, port).await?;
    let mut out = Vec::new();
    let mut count = 0;
    if let Some(password) = setup.password.as_ref().or(info.password.as_ref()) {
        let user = setup.username.as_ref().or(info.username.as_ref());
        put_auth(&mut out, user.map(String::as_str), password);
        count += 1;
    }
    if info.db != 0 {
        let db = itoa::Buffer::new().format(info.db).to_owned();
        resp::put_command(&mut out, &[b"SELECT", db.as_bytes()]);
        count += 1;
    }
    let role_at = setup.sentinel.is_some().then(|| {
        resp::put_command(&mut out, &[b"ROLE"]);
        count += 1;
        count - 1
    });
    resp::put_command(&mut out, &[b"SCRIPT", b"LOAD", setup.script.as_bytes()]);
    count += 1;
    let values = exchange(&mut stream, &out, count).await?;
    if let Some(at) = role_at {
        if !values.get(at).is_some_and(is_master) {
            return Err(PipeError::NotMaster(host, port));
        }
    }
    Ok((stream.into_wire(), (host, port)))
}
