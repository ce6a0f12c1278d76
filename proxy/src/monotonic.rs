//! A monotonic clock in milliseconds that fits an `AtomicU64`: connection activity, upstream
//! read progress and passive-health ejections store their times in atomics and compare them
//! with [`now_ms`].

use std::sync::OnceLock;
use std::time::Instant;

/// Milliseconds since the first call in this process (monotonic, starts near 0).
pub fn now_ms() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    u64::try_from(EPOCH.get_or_init(Instant::now).elapsed().as_millis()).unwrap_or(u64::MAX)
}
