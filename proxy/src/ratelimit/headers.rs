//! `RateLimit-Limit`, `RateLimit-Remaining`, `RateLimit-Reset` (IETF draft, delta seconds)
//! and `Retry-After`.

use bytes::Bytes;
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
        headers.insert(LIMIT.clone(), number(self.limit));
        headers.insert(REMAINING.clone(), number(self.remaining));
        headers.insert(RESET.clone(), number(self.reset_secs));
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

/// "00" to "99": static text for the small numbers most headers carry (`RateLimit-Reset`
/// in seconds, small limits), so that they need no allocation.
static PAIRS: &str = "00010203040506070809101112131415161718192021222324252627282930313233343536373839404142434445464748495051525354555657585960616263646566676869707172737475767778798081828384858687888990919293949596979899";

/// Larger numbers get an exact-size buffer of their own, freed with a plain free once the
/// head is encoded. Not `HeaderValue::from(u64)`: its buffer is at least 8 bytes, and a
/// shorter number then becomes a shared `Bytes` (one more allocation, an atomic on drop).
/// Not digits cut from a per-thread block either: the two atomic reference-count updates
/// per value profiled slower (perf, cpu-clock) despite fewer instructions.
fn number(n: u64) -> HeaderValue {
    match usize::try_from(n) {
        Ok(i @ 0..=9) => HeaderValue::from_static(&PAIRS[2 * i + 1..2 * i + 2]),
        Ok(i @ 10..=99) => HeaderValue::from_static(&PAIRS[2 * i..2 * i + 2]),
        _ => {
            let mut text = itoa::Buffer::new();
            HeaderValue::from_maybe_shared(Bytes::copy_from_slice(text.format(n).as_bytes()))
                // Decimal digits are always a valid value.
                .unwrap_or_else(|_| HeaderValue::from(n))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_decimal() {
        for n in [0, 1, 9, 10, 42, 99, 100, 1000, u64::MAX] {
            assert_eq!(number(n).as_bytes(), n.to_string().as_bytes());
        }
        // Kept alive together: every value keeps its own digits.
        let values: Vec<(u64, HeaderValue)> = (0..500u64)
            .map(|i| i * 7_919_993 + 100)
            .map(|n| (n, number(n)))
            .collect();
        for (n, v) in values {
            assert_eq!(v.as_bytes(), n.to_string().as_bytes());
        }
    }
}
