//! Load shedding: a cap on requests in flight across the process. Past it a request is
//! answered `503` with `Retry-After` at once, before any policy or upstream work, so a
//! flood costs one counter check per request and the requests already admitted keep their
//! latency (Envoy's overload manager and nginx's `limit_conn` play this part).
//!
//! HTTP/2 multiplexes requests on one connection, so the per-IP connection cap
//! (`connection_limits`) bounds one client's concurrency only together with the cap on
//! concurrent streams per connection (`ProxyOptions::http2_max_concurrent_streams`).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use http::{header, HeaderValue, Response, StatusCode};

use crate::body::ProxyBody;

/// Default streams one HTTP/2 connection may have open at once.
pub const DEFAULT_HTTP2_MAX_STREAMS: u32 = 100;

#[derive(Debug)]
pub struct InFlightLimit {
    max: Option<usize>,
    current: AtomicUsize,
}

/// One admitted request; released when dropped (after its response body is sent).
#[derive(Debug)]
pub struct InFlightPermit(Option<Arc<InFlightLimit>>);

impl InFlightLimit {
    pub fn new(max: Option<usize>) -> Arc<Self> {
        Arc::new(InFlightLimit {
            max,
            current: AtomicUsize::new(0),
        })
    }

    /// `None` when the process is at its cap.
    pub fn try_admit(self: &Arc<Self>) -> Option<InFlightPermit> {
        let Some(max) = self.max else {
            return Some(InFlightPermit(None));
        };
        if self.current.fetch_add(1, Ordering::AcqRel) >= max {
            self.current.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(InFlightPermit(Some(self.clone())))
    }

    pub fn current(&self) -> usize {
        self.current.load(Ordering::Relaxed)
    }
}

impl Drop for InFlightPermit {
    fn drop(&mut self) {
        if let Some(limit) = &self.0 {
            limit.current.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

/// The answer to a shed request.
pub fn shed(request_id: &HeaderValue) -> Response<ProxyBody> {
    let mut response = crate::errors::json_error(
        StatusCode::SERVICE_UNAVAILABLE,
        "overloaded",
        None,
        request_id,
    );
    let headers = response.headers_mut();
    headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    crate::response_headers::set_request_id(headers, request_id);
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admits_up_to_the_cap() {
        let limit = InFlightLimit::new(Some(2));
        let a = limit.try_admit();
        let b = limit.try_admit();
        assert!(a.is_some() && b.is_some());
        assert!(limit.try_admit().is_none());
        drop(a);
        assert!(limit.try_admit().is_some());
        let unlimited = InFlightLimit::new(None);
        let many: Vec<_> = (0..1000).filter_map(|_| unlimited.try_admit()).collect();
        assert_eq!(many.len(), 1000);
    }
}
