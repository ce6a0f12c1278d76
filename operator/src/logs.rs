//! Rate limiting of repeated log lines: a failure that repeats every second (a watch that
//! cannot list, a publish the API server refuses) is logged once per cause and interval,
//! with the count of lines left out, instead of growing the log by megabytes a minute.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// At most one line per key and interval.
pub const LOG_INTERVAL: Duration = Duration::from_secs(60);
/// Keys remembered at once; older ones are forgotten past this.
const MAX_KEYS: usize = 256;

#[derive(Debug, Default)]
pub struct Limiter {
    seen: HashMap<String, (Instant, u64)>,
}

impl Limiter {
    /// `Some(suppressed)` when a line for `key` should be logged now (with how many were
    /// left out since the last one), `None` when it should be left out.
    pub fn allow(&mut self, key: &str) -> Option<u64> {
        self.allow_at(key, Instant::now())
    }

    fn allow_at(&mut self, key: &str, now: Instant) -> Option<u64> {
        if let Some((last, suppressed)) = self.seen.get_mut(key) {
            if now.duration_since(*last) < LOG_INTERVAL {
                *suppressed += 1;
                return None;
            }
            let count = *suppressed;
            *last = now;
            *suppressed = 0;
            return Some(count);
        }
        if self.seen.len() >= MAX_KEYS {
            self.seen
                .retain(|_, (last, _)| now.duration_since(*last) < LOG_INTERVAL);
            if self.seen.len() >= MAX_KEYS {
                self.seen.clear();
            }
        }
        self.seen.insert(key.to_string(), (now, 0));
        Some(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_cause_and_interval() {
        let mut limiter = Limiter::default();
        let t0 = Instant::now();
        assert_eq!(limiter.allow_at("list failed", t0), Some(0));
        for i in 1..=100 {
            assert_eq!(
                limiter.allow_at("list failed", t0 + Duration::from_millis(i)),
                None
            );
        }
        assert_eq!(limiter.allow_at("another cause", t0), Some(0));
        assert_eq!(
            limiter.allow_at("list failed", t0 + LOG_INTERVAL),
            Some(100)
        );
    }
}
