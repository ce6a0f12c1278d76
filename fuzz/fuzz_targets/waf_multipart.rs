//! The WAF's `multipart/form-data` parser (`Collector::multipart`) and the boundary read
//! from `Content-Type` (`parse::boundary`).
//!
//! Input: a `Content-Type` header value, a newline, then the body. Properties beyond "no
//! panic":
//! - each part yields its name and one value or file name, and no more parts are kept
//!   than `maxArgs` (so at most twice that many targets);
//! - a body without the delimiter is not multipart: it is inspected whole (one `Body`
//!   target), and without the closing delimiter is reported (unless the body was cut at the
//!   inspection limit);
//! - every kept value was cut to `maxArgLength` before decoding: decoding never lengthens
//!   a value by more than U+FFFD's three bytes per input byte.
#![no_main]

use libfuzzer_sys::fuzz_target;
use portcullis_waf::parse::{boundary, Collector, Kind, ParseLimits};

const LIMITS: ParseLimits = ParseLimits {
    max_args: 20,
    max_arg_length: 100,
    max_json_depth: 16,
};

fuzz_target!(|data: &[u8]| {
    let (header, body) = match data.iter().position(|&b| b == b'\n') {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &b""[..]),
    };
    let Some(boundary) = boundary(&String::from_utf8_lossy(header)) else {
        return;
    };
    assert!(!boundary.is_empty());
    for truncated in [false, true] {
        let mut c = Collector::new(&LIMITS);
        c.multipart(body, &boundary, truncated);
        assert!(c.targets.len() <= 2 * LIMITS.max_args + 1);
        let delimiter = format!("--{boundary}");
        if !body
            .windows(delimiter.len())
            .any(|w| w == delimiter.as_bytes())
        {
            assert!(c.targets.len() <= 1 && c.targets.iter().all(|t| t.kind == Kind::Body));
            if !truncated {
                assert!(c.issues.body_parse_error.is_some());
            }
        }
        if truncated {
            assert!(c.issues.body_parse_error.is_none());
        }
        for t in &c.targets {
            if t.kind == Kind::Arg {
                assert!(t.value.len() <= 3 * LIMITS.max_arg_length, "{t:?}");
            }
        }
    }
});
