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

use std::collections::VecDeque;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use redis::{ConnectionAddr, IntoConnectionInfo};
use smallvec::SmallVec;
use tokio::io::{Interest, Ready};
use tokio::net::TcpStream;
use tokio::sync::{oneshot, Notify};
use tokio::time::Instant;

use super::algorithms::Rule;
use super::keys::RedisKeys;
use super::redis::{pack_rule, RedisError};
use super::resp::{self, Reply};

/// The numbers of one request's counters, 4 each, as the script returns them.
pub type Values = SmallVec<[i64; 16]>;

/// Requests per script call, at most: bounds the time Redis spends in one script, during
/// which it serves nobody else.
pub const MAX_BATCH: usize = 64;
/// Requests queued and not yet sent, at most; beyond that a request is refused at once.
const MAX_QUEUED: usize = 16_384;
/// Requests sent and not yet answered beyond which nothing more is sent until answers come.
const MAX_UNANSWERED: usize = 16_384;
/// No answer for this long while calls are in flight: the connection is given up.
pub const STALL_RESET: Duration = Duration::from_secs(3);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
const BACKOFF_START: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
enum PipeError {
    #[error("invalid Redis URL: {0}")]
    Url(#[from] redis::RedisError),
    #[error("unsupported Redis address (only redis:// over TCP): {0}")]
    Unsupported(String),
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error(transparent)]
    Protocol(#[from] resp::ProtocolError),
    #[error("Redis refused the connection set-up: {0}")]
    Refused(String),
    #[error("Redis closed the connection")]
    Closed,
    #[error("Redis answered nothing for {0:?} while calls were in flight")]
    Stalled(Duration),
    #[error("Redis sent a reply nobody asked for")]
    Unexpected,
}

/// What the connection needs to (re)connect.
pub struct Setup {
    pub url: String,
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
        });
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
        while !self.closed() {
            match tokio::time::timeout(CONNECT_TIMEOUT, connect(&setup)).await {
                Ok(Ok(wire)) => {
                    self.lock().up = true;
                    tracing::info!(url = %setup.url, "rate-limit Redis connected");
                    delay = BACKOFF_START;
                    let outcome = self.serve(&wire, &setup).await;
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
            delay = (delay * 2).min(BACKOFF_MAX);
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
    async fn serve(&self, wire: &Wire, setup: &Setup) -> Result<(), PipeError> {
        let mut in_flight: VecDeque<Sent> = VecDeque::new();
        let mut unanswered = 0usize;
        let mut out: Vec<u8> = Vec::with_capacity(16 << 10);
        let mut written = 0;
        let mut input = BytesMut::with_capacity(16 << 10);
        let mut ints = Vec::new();
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let mut answered_at = Instant::now();
        loop {
            if self.closed() {
                return Ok(());
            }
            if written == out.len() {
                out.clear();
                written = 0;
            }
            if unanswered < MAX_UNANSWERED {
                self.take_batches(setup, &mut out, &mut in_flight, &mut unanswered);
            }
            while written < out.len() {
                match wire.try_write(&out[written..]) {
                    Ok(n) => written += n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) => return Err(e.into()),
                }
            }
            if in_flight.is_empty() {
                answered_at = Instant::now();
            }
            let interest = if written < out.len() {
                Interest::READABLE | Interest::WRITABLE
            } else {
                Interest::READABLE
            };
            tokio::select! {
                biased;
                ready = wire.ready(interest) => {
                    if ready?.is_readable()
                        && self.read_replies(wire, setup, &mut input, &mut ints, &mut in_flight, &mut unanswered, &mut out)?
                    {
                        answered_at = Instant::now();
                    }
                }
                () = self.wake.notified(), if written == out.len() => {}
                _ = tick.tick() => {
                    if !in_flight.is_empty() && answered_at.elapsed() > STALL_RESET {
                        return Err(PipeError::Stalled(STALL_RESET));
                    }
                }
            }
        }
    }

    /// Moves every queued batch onto the wire buffer as one `EVALSHA` each.
    fn take_batches(
        &self,
        setup: &Setup,
        out: &mut Vec<u8>,
        in_flight: &mut VecDeque<Sent>,
        unanswered: &mut usize,
    ) {
        let taken: SmallVec<[Batch; 2]> = {
            let mut q = self.lock();
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
            let args = 4 + 2 * batch.counters;
            resp::put_array(out, args);
            resp::put_bulk(out, b"EVALSHA");
            resp::put_bulk(out, setup.sha.as_bytes());
            out.extend_from_slice(&body);
            *unanswered += batch.waiters.len();
            in_flight.push_back(Sent {
                body: Bytes::from(body),
                args,
                waiters: batch.waiters,
                retried: false,
            });
        }
        self.unanswered.store(*unanswered, Ordering::Release);
    }

    /// Reads what has arrived and answers the calls whose replies are complete. `true` when
    /// at least one call was answered.
    #[allow(clippy::too_many_arguments)]
    fn read_replies(
        &self,
        wire: &Wire,
        setup: &Setup,
        input: &mut BytesMut,
        ints: &mut Vec<i64>,
        in_flight: &mut VecDeque<Sent>,
        unanswered: &mut usize,
        out: &mut Vec<u8>,
    ) -> Result<bool, PipeError> {
        let mut answered = false;
        loop {
            if input.capacity() - input.len() < 4096 {
                input.reserve(16 << 10);
            }
            match wire.try_read_buf(input) {
                Ok(0) => return Err(PipeError::Closed),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e.into()),
            }
            let mut at = 0;
            while let Some((reply, len)) = resp::parse(&input[at..], ints)? {
                let sent = in_flight.pop_front().ok_or(PipeError::Unexpected)?;
                *unanswered -= sent.waiters.len();
                answered = true;
                match reply {
                    Reply::Ints => answer(sent.waiters, ints),
                    Reply::Error(text) => {
                        let text = &input[at + text.start..at + text.end];
                        if text.starts_with(b"NOSCRIPT") && !sent.retried {
                            // The script is cached again by this `EVAL`.
                            resp::put_array(out, sent.args);
                            resp::put_bulk(out, b"EVAL");
                            resp::put_bulk(out, setup.script.as_bytes());
                            out.extend_from_slice(&sent.body);
                            *unanswered += sent.waiters.len();
                            in_flight.push_back(Sent {
                                retried: true,
                                ..sent
                            });
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
            input.advance(at);
        }
        self.unanswered.store(*unanswered, Ordering::Release);
        Ok(answered)
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

/// The connection's socket (the compiler admits `redis://` URLs only).
struct Wire(TcpStream);

impl Wire {
    async fn ready(&self, interest: Interest) -> io::Result<Ready> {
        self.0.ready(interest).await
    }

    fn try_read_buf(&self, buf: &mut BytesMut) -> io::Result<usize> {
        self.0.try_read_buf(buf)
    }

    fn try_write(&self, buf: &[u8]) -> io::Result<usize> {
        self.0.try_write(buf)
    }

    async fn write_all(&self, mut buf: &[u8]) -> io::Result<()> {
        while !buf.is_empty() {
            self.ready(Interest::WRITABLE).await?;
            match self.try_write(buf) {
                Ok(n) => buf = &buf[n..],
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// The next whole reply: its kind and the text of an error.
    async fn reply(&self, input: &mut BytesMut) -> Result<Result<(), String>, PipeError> {
        let mut ints = Vec::new();
        loop {
            if let Some((reply, len)) = resp::parse(input, &mut ints)? {
                let outcome = match reply {
                    Reply::Error(text) => Err(String::from_utf8_lossy(&input[text]).into_owned()),
                    Reply::Ints | Reply::Other => Ok(()),
                };
                input.advance(len);
                return Ok(outcome);
            }
            self.ready(Interest::READABLE).await?;
            input.reserve(4096);
            match self.try_read_buf(input) {
                Ok(0) => return Err(PipeError::Closed),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
}

/// Opens the connection and sets it up: `AUTH`, `SELECT`, and `SCRIPT LOAD` so that the
/// first calls find the script.
async fn connect(setup: &Setup) -> Result<Wire, PipeError> {
    let info = setup.url.as_str().into_connection_info()?;
    let wire = match &info.addr {
        ConnectionAddr::Tcp(host, port) => {
            let stream = TcpStream::connect((host.as_str(), *port)).await?;
            stream.set_nodelay(true)?;
            Wire(stream)
        }
        other => return Err(PipeError::Unsupported(format!("{other}"))),
    };
    let mut out = Vec::new();
    let mut replies = 0;
    if let Some(password) = setup.password.as_ref().or(info.redis.password.as_ref()) {
        match &info.redis.username {
            Some(user) => {
                resp::put_array(&mut out, 3);
                resp::put_bulk(&mut out, b"AUTH");
                resp::put_bulk(&mut out, user.as_bytes());
            }
            None => {
                resp::put_array(&mut out, 2);
                resp::put_bulk(&mut out, b"AUTH");
            }
        }
        resp::put_bulk(&mut out, password.as_bytes());
        replies += 1;
    }
    if info.redis.db != 0 {
        resp::put_array(&mut out, 2);
        resp::put_bulk(&mut out, b"SELECT");
        resp::put_bulk(
            &mut out,
            itoa::Buffer::new().format(info.redis.db).as_bytes(),
        );
        replies += 1;
    }
    resp::put_array(&mut out, 3);
    resp::put_bulk(&mut out, b"SCRIPT");
    resp::put_bulk(&mut out, b"LOAD");
    resp::put_bulk(&mut out, setup.script.as_bytes());
    replies += 1;
    wire.write_all(&out).await?;
    let mut input = BytesMut::with_capacity(4096);
    for _ in 0..replies {
        wire.reply(&mut input).await?.map_err(PipeError::Refused)?;
    }
    if !input.is_empty() {
        return Err(PipeError::Unexpected);
    }
    Ok(wire)
}
