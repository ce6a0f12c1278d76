//! Request bodies as the client sends them: read timeouts, a minimum data rate, a
//! process-wide budget for bodies held in memory, and a record of whose fault a failed
//! body was.
//!
//! - **Read timeout**: the longest the client may keep us waiting for the next body bytes.
//! - **Minimum rate**: after a grace period, the client must have sent at least
//!   `min_rate` bytes for every second we spent waiting for it (Kestrel's
//!   `MinRequestBodyDataRate`). Only time spent waiting on the client counts: an upstream
//!   that reads slowly never makes the client look slow.
//! - **Buffer budget**: bodies buffered for inspection (JSON checks, the WAF) reserve their
//!   bytes from one process-wide budget; past it, requests get 503 instead of the process
//!   growing without bound.
//! - **Fault record**: the body's error reaches the pipeline wrapped in the upstream
//!   client's error; [`ClientFault`] says it was the client (timeout, too slow, too large,
//!   malformed framing), so the upstream is not charged and the answer is 408/413/400, not
//!   502/504. These limits apply per request, so per HTTP/2 stream too.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use tokio::time::{Instant, Sleep};

use crate::body::BoxError;

/// Default longest wait for the next body bytes (nginx's `client_body_timeout` is 60 s).
pub const DEFAULT_BODY_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// Default minimum body rate after the grace period, in bytes per second waited.
pub const DEFAULT_MIN_BODY_RATE: u64 = 512;
pub const DEFAULT_MIN_RATE_GRACE: Duration = Duration::from_secs(10);
/// Default budget for request bodies buffered in memory across the process.
pub const DEFAULT_BUFFER_BUDGET: usize = 128 * 1024 * 1024;

#[derive(Debug, Clone, Copy)]
pub struct BodyLimits {
    pub read_timeout: Duration,
    /// Bytes per second; 0 disables the rate check.
    pub min_rate: u64,
    pub min_rate_grace: Duration,
}

impl Default for BodyLimits {
    fn default() -> Self {
        BodyLimits {
            read_timeout: DEFAULT_BODY_READ_TIMEOUT,
            min_rate: DEFAULT_MIN_BODY_RATE,
            min_rate_grace: DEFAULT_MIN_RATE_GRACE,
        }
    }
}

/// Why a request body failed on the client's side.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FaultKind {
    #[error("request body too large")]
    TooLarge,
    #[error("request body timed out")]
    Timeout,
    #[error("request body sent too slowly")]
    TooSlow,
    #[error("request body could not be read")]
    Broken,
    #[error("server busy")]
    Busy,
}

impl FaultKind {
    pub fn status(self) -> http::StatusCode {
        use http::StatusCode;
        match self {
            FaultKind::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            FaultKind::Timeout | FaultKind::TooSlow => StatusCode::REQUEST_TIMEOUT,
            FaultKind::Broken => StatusCode::BAD_REQUEST,
            FaultKind::Busy => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    pub fn reason(self) -> &'static str {
        match self {
            FaultKind::TooLarge => "body_too_large",
            FaultKind::Timeout => "body_timeout",
            FaultKind::TooSlow => "body_too_slow",
            FaultKind::Broken => "body_unreadable",
            FaultKind::Busy => "body_buffer_budget",
        }
    }

    fn code(self) -> u8 {
        match self {
            FaultKind::TooLarge => 1,
            FaultKind::Timeout => 2,
            FaultKind::TooSlow => 3,
            FaultKind::Broken => 4,
            FaultKind::Busy => 5,
        }
    }

    fn from_code(code: u8) -> Option<FaultKind> {
        Some(match code {
            1 => FaultKind::TooLarge,
            2 => FaultKind::Timeout,
            3 => FaultKind::TooSlow,
            4 => FaultKind::Broken,
            5 => FaultKind::Busy,
            _ => return None,
        })
    }
}

/// The first client-side failure of one request's body, shared by the body wrappers and
/// the pipeline.
#[derive(Debug, Default)]
pub struct ClientFault(AtomicU8);

impl ClientFault {
    /// Records `kind` unless a fault was recorded already (the first one is the cause).
    pub fn set(&self, kind: FaultKind) {
        let _ = self
            .0
            .compare_exchange(0, kind.code(), Ordering::Relaxed, Ordering::Relaxed);
    }

    pub fn get(&self) -> Option<FaultKind> {
        FaultKind::from_code(self.0.load(Ordering::Relaxed))
    }
}

/// The client's body under the read timeout and the minimum rate.
pub struct ClientBody {
    inner: Incoming,
    limits: BodyLimits,
    fault: Arc<ClientFault>,
    received: u64,
    /// Time the client kept us waiting, over all earlier waits.
    waited: Duration,
    /// When the current wait began.
    waiting_since: Option<Instant>,
    timer: Option<Pin<Box<Sleep>>>,
}

impl ClientBody {
    pub fn new(inner: Incoming, limits: BodyLimits, fault: Arc<ClientFault>) -> Self {
        ClientBody {
            inner,
            limits,
            fault,
            received: 0,
            waited: Duration::ZERO,
            waiting_since: None,
            timer: None,
        }
    }

    /// The deadline of the current wait and the fault it would be.
    fn deadline(&self, since: Instant) -> (Instant, FaultKind) {
        let idle = since + self.limits.read_timeout;
        if self.limits.min_rate == 0 {
            return (idle, FaultKind::Timeout);
        }
        // Total waiting allowed for what has arrived: grace + received / rate.
        let allowed = self.limits.min_rate_grace
            + Duration::from_secs_f64(self.received as f64 / self.limits.min_rate as f64);
        let rate = since + allowed.saturating_sub(self.waited);
        if rate < idle {
            (rate, FaultKind::TooSlow)
        } else {
            (idle, FaultKind::Timeout)
        }
    }

    fn fail(&mut self, kind: FaultKind) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.fault.set(kind);
        self.timer = None;
        Poll::Ready(Some(Err(Box::new(kind))))
    }
}

impl Body for ClientBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(since) = this.waiting_since.take() {
                    this.waited += since.elapsed();
                }
                if let Some(data) = frame.data_ref() {
                    this.received += data.len() as u64;
                }
                Poll::Ready(Some(Ok(frame)))
            }
            // Malformed chunked framing, a reset or a closed connection: the client's.
            Poll::Ready(Some(Err(e))) => {
                tracing::debug!(error = %e, "request body failed");
                this.fail(FaultKind::Broken)
            }
            Poll::Ready(None) => {
                this.timer = None;
                Poll::Ready(None)
            }
            Poll::Pending => {
                let since = *this.waiting_since.get_or_insert_with(Instant::now);
                let (deadline, kind) = this.deadline(since);
                let timer = this
                    .timer
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
                if timer.deadline() != deadline {
                    timer.as_mut().reset(deadline);
                }
                match timer.as_mut().poll(cx) {
                    Poll::Ready(()) => this.fail(kind),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Bytes of request bodies buffered in memory, across the process.
#[derive(Debug)]
pub struct BufferBudget {
    used: AtomicUsize,
    max: usize,
}

impl BufferBudget {
    pub fn new(max: usize) -> Arc<Self> {
        Arc::new(BufferBudget {
            used: AtomicUsize::new(0),
            max,
        })
    }

    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    pub fn reservation(self: &Arc<Self>) -> Reservation {
        Reservation {
            budget: self.clone(),
            bytes: 0,
        }
    }
}

/// Bytes held from a [`BufferBudget`] until dropped.
#[derive(Debug)]
pub struct Reservation {
    budget: Arc<BufferBudget>,
    bytes: usize,
}

impl Reservation {
    /// Reserves `n` more bytes; `false` (nothing reserved) when the budget has no room.
    pub fn grow(&mut self, n: usize) -> bool {
        let budget = &self.budget;
        let granted = budget
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(n).filter(|&total| total <= budget.max)
            })
            .is_ok();
        if granted {
            self.bytes += n;
        }
        granted
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if self.bytes != 0 {
            self.budget.used.fetch_sub(self.bytes, Ordering::AcqRel);
        }
    }
}

/// A body that keeps a reservation until it is dropped (sent or abandoned).
pub struct ReservedBody<B> {
    inner: B,
    _reservation: Reservation,
}

impl<B> ReservedBody<B> {
    pub fn new(inner: B, reservation: Reservation) -> Self {
        ReservedBody {
            inner,
            _reservation: reservation,
        }
    }
}

impl<B> Body for ReservedBody<B>
where
    B: Body<Data = Bytes, Error = BoxError> + Unpin,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The streamed size limit for bodies whose length is not known up front.
#[derive(Debug, thiserror::Error)]
#[error("request body exceeds the configured limit")]
pub struct BodyLimitExceeded;

/// Counts bytes as they stream to the upstream and fails the body once `limit` is passed.
/// The shared fault record lets the pipeline tell "client sent too much" (413) apart from
/// an upstream failure, since the error reaches us wrapped inside the client's error.
pub struct LimitedBody<B> {
    inner: B,
    remaining: u64,
    fault: Arc<ClientFault>,
}

impl<B> LimitedBody<B> {
    pub fn new(inner: B, limit: u64, fault: Arc<ClientFault>) -> Self {
        Self {
            inner,
            remaining: limit,
            fault,
        }
    }
}

impl<B> Body for LimitedBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    let len = data.len() as u64;
                    if len > self.remaining {
                        self.fault.set(FaultKind::TooLarge);
                        return Poll::Ready(Some(Err(Box::new(BodyLimitExceeded))));
                    }
                    self.remaining -= len;
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e.into()))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_fault_is_kept() {
        let fault = ClientFault::default();
        assert_eq!(fault.get(), None);
        fault.set(FaultKind::Timeout);
        fault.set(FaultKind::Broken);
        assert_eq!(fault.get(), Some(FaultKind::Timeout));
    }

    #[test]
    fn budget_reserves_and_releases() {
        let budget = BufferBudget::new(100);
        let mut a = budget.reservation();
        assert!(a.grow(60));
        let mut b = budget.reservation();
        assert!(!b.grow(41));
        assert!(b.grow(40));
        assert_eq!(budget.used(), 100);
        drop(a);
        assert_eq!(budget.used(), 40);
        assert!(b.grow(60));
        drop(b);
        assert_eq!(budget.used(), 0);
    }
}
