//! What connecting to Redis may take, and the one error a caller of the backend sees: the
//! single-Redis pipe and the cluster connection share both.

use std::time::Duration;

#[derive(Debug, Clone, Copy, thiserror::Error)]
pub enum RedisError {
    #[error("rate-limit backend unavailable")]
    Unavailable,
}

/// Connecting: how long one attempt may take, and the backoff between failed ones (single
/// Redis and cluster alike).
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
pub(crate) const BACKOFF_START: Duration = Duration::from_millis(50);
pub(crate) const BACKOFF_MAX: Duration = Duration::from_secs(2);
