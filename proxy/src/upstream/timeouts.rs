//! Send and read timeouts for one upstream exchange, with nginx semantics:
//! - **send**: the longest pause while the request body is being transmitted (between two
//!   frames the upstream connection takes from us);
//! - **read**: the longest wait for the response head once the request is sent, and the
//!   longest pause between two frames of the response body.
//!
//! The connect timeout lives in the connector. A slow-but-moving transfer never times out;
//! a stalled one does, whichever side stalls.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::Response;
use hyper::body::{Body, Frame, SizeHint};
use tokio::time::Sleep;

use crate::body::{BoxError, ProxyBody};
use crate::monotonic::now_ms;
use crate::upstream::pool::PooledBody;

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TimeoutKind {
    #[error("upstream send timeout")]
    Send,
    #[error("upstream read timeout")]
    Read,
}

/// Progress of the request body as the upstream connection pulls it.
#[derive(Default)]
struct SendProgress {
    last_activity_ms: AtomicU64,
    finished: AtomicBool,
    /// The body has no frame ready: the client is the one being slow, and its own body
    /// timeouts ([`crate::client_body`]) govern, not the upstream send timeout.
    waiting_on_client: AtomicBool,
}

/// Wraps the request body to record each frame handed to the connection.
struct ProgressBody {
    inner: ProxyBody,
    progress: Arc<SendProgress>,
}

impl Body for ProgressBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        self.progress
            .waiting_on_client
            .store(polled.is_pending(), Ordering::Relaxed);
        match &polled {
            Poll::Ready(Some(Ok(_))) => {
                self.progress
                    .last_activity_ms
                    .store(now_ms(), Ordering::Relaxed);
            }
            Poll::Ready(None) | Poll::Ready(Some(Err(_))) => {
                self.progress
                    .last_activity_ms
                    .store(now_ms(), Ordering::Relaxed);
                self.progress.finished.store(true, Ordering::Relaxed);
            }
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Runs `send` (the client call, given the request body) under the send and read
/// timeouts. Returns the response head with its body wrapped in the between-frames read
/// timeout.
pub async fn exchange<F, Fut, E>(
    body: ProxyBody,
    send_timeout: Duration,
    read_timeout: Duration,
    send: F,
) -> Result<Result<Response<ReadTimeoutBody>, E>, TimeoutKind>
where
    F: FnOnce(ProxyBody) -> Fut,
    Fut: Future<Output = Result<Response<PooledBody>, E>>,
{
    if body.is_end_stream() {
        // Nothing to send but the head (it fits the socket buffer): only the read timeout
        // applies, and one timer serves the whole wait.
        return match tokio::time::timeout(read_timeout, send(body)).await {
            Ok(result) => Ok(result.map(|r| r.map(|b| ReadTimeoutBody::new(b, read_timeout)))),
            Err(_) => Err(TimeoutKind::Read),
        };
    }
    let progress = Arc::new(SendProgress::default());
    progress.last_activity_ms.store(now_ms(), Ordering::Relaxed);
    let body = http_body_util::BodyExt::boxed(ProgressBody {
        inner: body,
        progress: progress.clone(),
    });
    let response = send(body);
    tokio::pin!(response);
    loop {
        let finished = progress.finished.load(Ordering::Relaxed);
        let (limit, kind) = if finished {
            (read_timeout, TimeoutKind::Read)
        } else {
            (send_timeout, TimeoutKind::Send)
        };
        let mut last = progress.last_activity_ms.load(Ordering::Relaxed);
        let now = now_ms();
        if !finished && progress.waiting_on_client.load(Ordering::Relaxed) {
            // Waiting on the client does not count against the upstream.
            last = now;
        }
        let deadline_ms = last.saturating_add(limit.as_millis() as u64);
        if now >= deadline_ms {
            return Err(kind);
        }
        // Wake at the deadline, or sooner to notice the switch from sending to reading.
        let wait = Duration::from_millis(deadline_ms - now);
        tokio::select! {
            result = &mut response => {
                return Ok(result.map(|r| r.map(|b| ReadTimeoutBody::new(b, read_timeout))));
            }
            () = tokio::time::sleep(wait) => {}
        }
    }
}

/// The upstream response body with a read timeout between frames.
///
/// The timer is armed only when a read has to wait: a small response is usually complete
/// when it is first polled, and then it costs no timer at all.
pub struct ReadTimeoutBody {
    inner: PooledBody,
    timeout: Duration,
    /// When the last frame arrived (the read timeout runs from there).
    last_frame: Option<tokio::time::Instant>,
    timer: Option<Pin<Box<Sleep>>>,
}

impl ReadTimeoutBody {
    fn new(inner: PooledBody, timeout: Duration) -> Self {
        Self {
            inner,
            timeout,
            last_frame: None,
            timer: None,
        }
    }
}

impl Body for ReadTimeoutBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if self.timer.is_some() {
                    self.last_frame = Some(tokio::time::Instant::now());
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e.into()))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => {
                let timeout = self.timeout;
                let this = &mut *self;
                let started = *this
                    .last_frame
                    .get_or_insert_with(tokio::time::Instant::now);
                let timer = this
                    .timer
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(started + timeout)));
                if timer.deadline() != started + timeout {
                    timer.as_mut().reset(started + timeout);
                }
                match timer.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Some(Err(Box::new(TimeoutKind::Read)))),
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
