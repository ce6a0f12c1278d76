//! W3C Trace Context (`traceparent`, `tracestate`): continue the client's trace or start one,
//! and hand the upstream our span as its parent.
//!
//! A malformed `traceparent` is treated as absent (the spec's "restart the trace"); its
//! `tracestate` is then dropped too, since it belongs to the trace being discarded. The
//! sampled flag of a valid parent is kept as it is: whoever started the trace decided.

use std::cell::Cell;

use http::{HeaderMap, HeaderName, HeaderValue};

pub const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
pub const TRACESTATE: HeaderName = HeaderName::from_static("tracestate");
const HEX: &[u8; 16] = b"0123456789abcdef";
/// `tracestate` is at most 32 list members of at most 256 bytes each, plus commas.
const MAX_TRACESTATE: usize = 32 * 257;

/// How new traces (no valid parent) are sampled.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TraceOptions {
    /// Propagate trace context at all (`--no-trace-context` turns it off).
    pub propagate: bool,
    /// Share of new traces marked sampled, 0.0 ..= 1.0.
    pub sample_ratio: f64,
}

impl Default for TraceOptions {
    fn default() -> Self {
        TraceOptions {
            propagate: true,
            sample_ratio: 0.0,
        }
    }
}

/// The trace of one request as the proxy continues it.
#[derive(Clone, Debug)]
pub struct TraceContext {
    pub trace_id: [u8; 16],
    /// The caller's span, when it sent a valid `traceparent`.
    pub parent_span_id: Option<[u8; 8]>,
    /// The proxy's span for this request: the upstream's parent.
    pub span_id: [u8; 8],
    pub sampled: bool,
    /// Forwarded unchanged when the parent was valid.
    pub tracestate: Option<HeaderValue>,
    /// The client sent `tracestate`: a restarted trace's is removed.
    sent_state: bool,
}

impl TraceContext {
    /// Continues a valid incoming `traceparent`, or starts a trace.
    pub fn from_headers(headers: &HeaderMap, options: &TraceOptions) -> Self {
        // One scan with a length check per field instead of hashed lookups (most requests
        // carry neither header, and a lookup hashes the name each time).
        let (mut parent, mut parents, mut state) = (None, 0, None);
        for (name, value) in headers {
            match name.as_str().len() {
                11 if *name == TRACEPARENT => {
                    parent = Some(value);
                    parents += 1;
                }
                10 if *name == TRACESTATE => state = Some(value),
                _ => {}
            }
        }
        let span_id = random_span_id();
        let sent_state = state.is_some();
        // Several traceparent fields are as invalid as a malformed one.
        let valid = parent
            .filter(|_| parents == 1)
            .and_then(|v| parse_traceparent(v.as_bytes()));
        if let Some((trace_id, parent, flags)) = valid {
            // A list split over several fields is forwarded as its first one only if it is
            // the only one; otherwise it is dropped rather than joined here.
            let tracestate = state
                .filter(|v| v.len() <= MAX_TRACESTATE)
                .filter(|_| headers.get_all(TRACESTATE).iter().count() == 1)
                .cloned();
            return TraceContext {
                trace_id,
                parent_span_id: Some(parent),
                span_id,
                sampled: flags & 1 == 1,
                tracestate,
                sent_state,
            };
        }
        let sampled = options.sample_ratio > 0.0
            && (options.sample_ratio >= 1.0 || chance(options.sample_ratio));
        TraceContext {
            trace_id: random_trace_id(),
            parent_span_id: None,
            span_id,
            sampled,
            tracestate: None,
            sent_state,
        }
    }

    pub fn trace_id_hex(&self) -> String {
        hex_string(&self.trace_id)
    }

    /// The trace id as 32 hex digits on the stack (the audit line needs no allocation).
    pub fn trace_id_buf(&self) -> [u8; 32] {
        let mut out = [0u8; 32];
        write_hex(&self.trace_id, &mut out);
        out
    }

    /// `traceparent` for the upstream: same trace, the proxy's span as parent. The upstream
    /// encoder writes these bytes as they are (`upstream::h1::Hop`).
    pub fn traceparent(&self) -> [u8; 55] {
        let word = |bytes: &[u8]| {
            let mut w = [0u8; 8];
            w.copy_from_slice(bytes);
            u64::from_be_bytes(w)
        };
        let mut out = [0u8; 55];
        out[..3].copy_from_slice(b"00-");
        out[3..19].copy_from_slice(&hex16(word(&self.trace_id[..8])));
        out[19..35].copy_from_slice(&hex16(word(&self.trace_id[8..])));
        out[35] = b'-';
        out[36..52].copy_from_slice(&hex16(u64::from_be_bytes(self.span_id)));
        out[52..].copy_from_slice(if self.sampled { b"-01" } else { b"-00" });
        out
    }

    /// Removes a restarted trace's `tracestate` from the client's fields (a valid parent's
    /// stays where it is). The client's `traceparent` fields stay in the map too: the upstream
    /// encoder skips them and writes [`Self::traceparent`] instead.
    pub fn apply_upstream(&self, headers: &mut HeaderMap) {
        if self.sent_state && self.tracestate.is_none() {
            headers.remove(TRACESTATE);
        }
    }
}

/// `00-<32 hex>-<16 hex>-<2 hex>` (future versions: the same prefix, more after a dash).
pub fn parse_traceparent(value: &[u8]) -> Option<([u8; 16], [u8; 8], u8)> {
    if value.len() < 55 || value[2] != b'-' || value[35] != b'-' || value[52] != b'-' {
        return None;
    }
    let version = hex_number(&value[0..2])?;
    // Version ff is invalid; version 00 has exactly 55 bytes; later ones may append fields.
    if version == 0xff || (version == 0 && value.len() != 55) {
        return None;
    }
    if version != 0 && value.len() > 55 && value[55] != b'-' {
        return None;
    }
    // A fixed-size view: the digit groups below are then constant ranges, no bounds checks.
    let head: &[u8; 55] = value.get(..55)?.try_into().ok()?;
    // All six groups converted, their invalid lanes or-ed together, one branch at the end:
    // a check per group (a call each, as the closure it was) cost ~40 instructions a group.
    let (g0, bad0) = hex8_lanes(group(head, 3));
    let (g1, bad1) = hex8_lanes(group(head, 11));
    let (g2, bad2) = hex8_lanes(group(head, 19));
    let (g3, bad3) = hex8_lanes(group(head, 27));
    let (g4, bad4) = hex8_lanes(group(head, 36));
    let (g5, bad5) = hex8_lanes(group(head, 44));
    if bad0 | bad1 | bad2 | bad3 | bad4 | bad5 != 0 {
        return None;
    }
    let trace_high = u64::from(g0) << 32 | u64::from(g1);
    let trace_low = u64::from(g2) << 32 | u64::from(g3);
    let span = u64::from(g4) << 32 | u64::from(g5);
    let flags = hex_number(&value[53..55])?;
    if trace_high | trace_low == 0 || span == 0 {
        return None;
    }
    let mut trace_id = [0u8; 16];
    trace_id[..8].copy_from_slice(&trace_high.to_be_bytes());
    trace_id[8..].copy_from_slice(&trace_low.to_be_bytes());
    // Two hex digits are at most 0xff.
    Some((trace_id, span.to_be_bytes(), flags as u8))
}

/// The value of a lower-case hex digit, 0xff for anything else (upper case is invalid in
/// traceparent).
const UNHEX: [u8; 256] = {
    let mut table = [0xffu8; 256];
    let mut i = 0;
    while i < 16 {
        table[HEX[i] as usize] = i as u8;
        i += 1;
    }
    table
};

/// Up to 16 lower-case hex digits as a number. One lookup, one shift and two ors per digit
/// into a register: a byte array built pair by pair cost several times more.
fn hex_number(text: &[u8]) -> Option<u64> {
    let (mut value, mut bad) = (0u64, 0u8);
    for &c in text {
        let digit = UNHEX[usize::from(c)];
        bad |= digit;
        value = value << 4 | u64::from(digit & 0xf);
    }
    // Any invalid digit set the high bits.
    (bad & 0xf0 == 0).then_some(value)
}

/// Eight bytes of `head` from `at` (a constant at every call: no bounds check remains).
#[inline(always)]
fn group(head: &[u8; 55], at: usize) -> [u8; 8] {
    let mut digits = [0u8; 8];
    digits.copy_from_slice(&head[at..at + 8]);
    digits
}

/// The value of exactly eight lower-case hex digits, `None` for anything else.
#[cfg(test)]
fn hex8_value(digits: [u8; 8]) -> Option<u32> {
    let (value, invalid) = hex8_lanes(digits);
    (invalid == 0).then_some(value)
}

/// Eight hex digits checked and converted in one register (SWAR): the value (meaningful only
/// when valid) and a mask that is non-zero when any byte is not a lower-case hex digit. Per
/// digit a lookup-and-shift loop cost about 8 instructions, 52 digits per incoming
/// `traceparent`.
#[inline(always)]
fn hex8_lanes(digits: [u8; 8]) -> (u32, u64) {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let raw = u64::from_be_bytes(digits);
    // Bytes >= 0x80 are invalid; without their high bit the arithmetic below stays within
    // each byte.
    let x = raw & !HIGH;
    // With every byte below 0x80, adding 0x80 - c sets a byte's high bit iff it is >= c,
    // and no carry crosses into the next byte.
    let at_least = |c: u64| (x + (0x80 - c) * ONES) & HIGH;
    let digit = at_least(0x30) & !at_least(0x3a);
    let letter = at_least(0x61) & !at_least(0x67);
    let invalid = (raw & HIGH) | (HIGH & !(digit | letter));
    // '0'..'9' -> 0..9 and 'a'..'f' -> 10..15 (letters have bit 6 set).
    let mut v = (x & 0x0f0f_0f0f_0f0f_0f0f) + ((x >> 6) & ONES) * 9;
    v = (v | v >> 4) & 0x00ff_00ff_00ff_00ff;
    v = (v | v >> 8) & 0x0000_ffff_0000_ffff;
    (((v | v >> 16) & 0xffff_ffff) as u32, invalid)
}

/// Eight lower-case hex digits of `v`, computed in one register (SWAR): the nibbles are
/// spread one per byte, then each becomes `'0' + n`, plus 39 more for `a`..`f`.
fn hex8(v: u32) -> [u8; 8] {
    let mut n = u64::from(v);
    n = (n | n << 16) & 0x0000_ffff_0000_ffff;
    n = (n | n << 8) & 0x00ff_00ff_00ff_00ff;
    n = (n | n << 4) & 0x0f0f_0f0f_0f0f_0f0f;
    let letters = ((n + 0x0606_0606_0606_0606) >> 4) & 0x0101_0101_0101_0101;
    (n + 0x3030_3030_3030_3030 + letters * 39).to_be_bytes()
}

/// Sixteen lower-case hex digits of `v`.
#[inline(always)]
fn hex16(v: u64) -> [u8; 16] {
    let mut out = [0u8; 16];
    out[..8].copy_from_slice(&hex8((v >> 32) as u32));
    out[8..].copy_from_slice(&hex8(v as u32));
    out
}

/// Two hex digits per byte of `bytes` into `out` (twice as long).
fn write_hex(bytes: &[u8], out: &mut [u8]) {
    let mut words = bytes.chunks_exact(4);
    let mut digits = out.chunks_exact_mut(8);
    for (word, slot) in (&mut words).zip(&mut digits) {
        let v = u32::from_be_bytes([word[0], word[1], word[2], word[3]]);
        slot.copy_from_slice(&hex8(v));
    }
    let tail = words.remainder();
    let rest = digits.into_remainder();
    for (pair, b) in rest.chunks_exact_mut(2).zip(tail) {
        pair.copy_from_slice(&[HEX[usize::from(b >> 4)], HEX[usize::from(b & 0xf)]]);
    }
}

pub fn hex_string(bytes: &[u8]) -> String {
    let mut out = vec![0u8; bytes.len() * 2];
    write_hex(bytes, &mut out);
    String::from_utf8(out).unwrap_or_default()
}

thread_local! {
    /// wyrand state, seeded once per thread from the OS-seeded generator: trace and span ids
    /// must be unique and unpredictable enough to not collide, not secret, and drawing them
    /// from `rand`'s ChaCha generator cost more than the rest of the trace handling.
    static STATE: Cell<u64> = Cell::new(rand::random());
}

/// A fast per-thread 64-bit random number (wyrand).
pub fn next_u64() -> u64 {
    STATE.with(|state| {
        let x = state.get().wrapping_add(0xa076_1d64_78bd_642f);
        state.set(x);
        let t = u128::from(x) * u128::from(x ^ 0xe703_7ed1_a0b4_28db);
        (t >> 64) as u64 ^ t as u64
    })
}

/// True with probability `ratio` (0 ..= 1).
pub fn chance(ratio: f64) -> bool {
    // The top 53 bits as a float in [0, 1).
    ((next_u64() >> 11) as f64 / (1u64 << 53) as f64) < ratio
}

fn random_trace_id() -> [u8; 16] {
    loop {
        let (a, b) = (next_u64(), next_u64());
        if a | b != 0 {
            let mut id = [0u8; 16];
            id[..8].copy_from_slice(&a.to_be_bytes());
            id[8..].copy_from_slice(&b.to_be_bytes());
            return id;
        }
    }
}

pub fn random_span_id() -> [u8; 8] {
    loop {
        let id = next_u64();
        if id != 0 {
            return id.to_be_bytes();
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const PARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn continues_a_valid_parent_with_a_new_span() {
        let mut headers = HeaderMap::new();
        headers.insert(TRACEPARENT, HeaderValue::from_static(PARENT));
        headers.insert(TRACESTATE, HeaderValue::from_static("congo=t61rcWkgMzE"));
        let t = TraceContext::from_headers(&headers, &TraceOptions::default());
        assert_eq!(t.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert!(t.sampled);
        let out = t.traceparent();
        let out = std::str::from_utf8(&out).unwrap();
        assert!(out.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"));
        assert!(out.ends_with("-01"));
        assert_ne!(&out[36..52], "00f067aa0ba902b7");
        let mut up = headers.clone();
        t.apply_upstream(&mut up);
        assert_eq!(up.get(TRACESTATE).unwrap(), "congo=t61rcWkgMzE");
        assert_eq!(
            up.len(),
            2,
            "the encoder, not the map, replaces traceparent"
        );
    }

    #[test]
    fn unsampled_parent_stays_unsampled() {
        let mut headers = HeaderMap::new();
        headers.insert(
            TRACEPARENT,
            HeaderValue::from_static("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00"),
        );
        let options = TraceOptions {
            propagate: true,
            sample_ratio: 1.0,
        };
        let t = TraceContext::from_headers(&headers, &options);
        assert!(!t.sampled);
        assert!(t.traceparent().ends_with(b"-00"));
    }

    #[test]
    fn malformed_parents_restart_the_trace() {
        for bad in [
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
        ] {
            assert!(parse_traceparent(bad.as_bytes()).is_none(), "{bad}");
        }
        // A later version may append fields.
        assert!(parse_traceparent(
            b"01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-future"
        )
        .is_some());
        let mut headers = HeaderMap::new();
        headers.insert(TRACEPARENT, HeaderValue::from_static("garbage"));
        headers.insert(TRACESTATE, HeaderValue::from_static("a=b"));
        let t = TraceContext::from_headers(&headers, &TraceOptions::default());
        assert!(t.parent_span_id.is_none() && !t.sampled);
        assert!(t.tracestate.is_none());
        assert!(parse_traceparent(&t.traceparent()).is_some());
        t.apply_upstream(&mut headers);
        assert!(
            headers.get(TRACESTATE).is_none(),
            "a restarted trace's tracestate"
        );
    }

    #[test]
    fn two_traceparents_restart_the_trace() {
        let mut headers = HeaderMap::new();
        headers.append(TRACEPARENT, HeaderValue::from_static(PARENT));
        headers.append(
            TRACEPARENT,
            HeaderValue::from_static("00-11111111111111111111111111111111-00f067aa0ba902b7-01"),
        );
        let t = TraceContext::from_headers(&headers, &TraceOptions::default());
        assert!(t.parent_span_id.is_none());
        assert_ne!(&t.traceparent()[3..35], b"4bf92f3577b34da6a3ce929d0e0e4736");
    }

    #[test]
    fn hex_both_ways_matches_the_formatter() {
        for v in [
            0u64,
            1,
            0x0123_4567_89ab_cdef,
            u64::MAX,
            0xa0b1_c2d3_e4f5_0617,
        ] {
            let bytes = v.to_be_bytes();
            assert_eq!(hex_string(&bytes), format!("{v:016x}"));
            assert_eq!(hex_number(format!("{v:016x}").as_bytes()), Some(v));
            assert_eq!(hex_string(&bytes[..3]), format!("{:06x}", v >> 40));
        }
        for bad in ["0123456789ABCDEF", "012345678 abcdef", "g", "0x"] {
            assert_eq!(hex_number(bad.as_bytes()), None, "{bad}");
        }
        assert_eq!(hex_number(b"ff"), Some(0xff));
        // Every byte value in every position: the SWAR check agrees with the table.
        let base = *b"0123abcd";
        for at in 0..8 {
            for b in 0..=255u8 {
                let mut text = base;
                text[at] = b;
                let expected = hex_number(&text).map(|v| v as u32);
                assert_eq!(hex8_value(text), expected, "{text:?}");
            }
        }
        assert_eq!(hex8_value(*b"89abcdef"), Some(0x89ab_cdef));
        assert_eq!(hex16(0x0123_4567_89ab_cdef), *b"0123456789abcdef");
    }

    #[test]
    fn ids_differ_and_chance_follows_the_ratio() {
        let ids: std::collections::HashSet<[u8; 16]> =
            (0..1000).map(|_| random_trace_id()).collect();
        assert_eq!(ids.len(), 1000);
        let hits = (0..10_000).filter(|_| chance(0.1)).count();
        assert!((800..1200).contains(&hits), "{hits}");
        assert!(!(0..1000).any(|_| chance(0.0)));
    }

    #[test]
    fn new_traces_follow_the_sample_ratio() {
        let headers = HeaderMap::new();
        let all = TraceOptions {
            propagate: true,
            sample_ratio: 1.0,
        };
        assert!(TraceContext::from_headers(&headers, &all).sampled);
        assert!(!TraceContext::from_headers(&headers, &TraceOptions::default()).sampled);
    }
}
