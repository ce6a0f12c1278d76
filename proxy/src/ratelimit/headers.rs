//! `RateLimit-Limit`, `RateLimit-Remaining`, `RateLimit-Reset` (IETF draft, delta seconds)
//! and `Retry-After`.

use http::{HeaderMap, HeaderName, HeaderValue};

use super::algorithms::Verdict;

pub static LIMIT: HeaderName = HeaderName::from_static("ratelimit-limit");
pub static REMAINING: HeaderName = HeaderName::from_static("ratelimit-remaining");
pub static RESET: HeaderName = HeaderName::from_static("ratelimit-reset");

/// The numbers of the tightest limit that applied to a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimitHeaders {
    pub limit: u64,
    pub remaining: u64,
    pub reset_secs: u64,
}

impl RateLimitHeaders {
    pub fn of(v: &Verdict) -> Self {
        RateLimitHeaders {
            limit: v.limit,
            remaining: v.remaining,
            reset_secs: secs_ceil(v.reset_ms),
        }
    }

    pub fn apply(&self, headers: &mut HeaderMap) {
        headers.insert(LIMIT.clone(), HeaderValue::from(self.limit));
        headers.insert(REMAINING.clone(), HeaderValue::from(self.remaining));
        headers.insert(RESET.clone(), HeaderValue::from(self.reset_secs));
    }

    /// Of two limits, the one the client should pace itself by: fewer requests left, then
    /// the later reset.
    pub fn tighter(self, other: Self) -> Self {
        if (other.remaining, std::cmp::Reverse(other.reset_secs))
            < (self.remaining, std::cmp::Reverse(self.reset_secs))
        {
            other
        } else {
            self
        }
    }
}

/// Whole seconds, rounded up: a client retrying after a rounded-down value would be early.
pub fn secs_ceil(ms: u64) -> u64 {
    ms.div_ceil(1000)
}

/// Applies the headers of a request admitted with limits, if any.
pub fn apply(headers_of_limit: Option<&RateLimitHeaders>, headers: &mut HeaderMap) {
    if let Some(h) = headers_of_limit {
        h.apply(headers);
    }
}
