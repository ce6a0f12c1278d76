//! The WAF's XML reader (`Collector::xml`): element text and attribute values.
//!
//! Properties beyond "no panic": no more values than `maxArgs` are kept; each one came
//! from the document (its raw length fits in it); a document that is not well formed is a
//! parse error and is also inspected whole (one `Body` target); valid UTF-8 text without
//! tags or encodings is one value, trimmed.
#![no_main]

use libfuzzer_sys::fuzz_target;
use portcullis_waf::parse::{Collector, Kind, ParseLimits};

const LIMITS: ParseLimits = ParseLimits {
    max_args: 50,
    max_arg_length: 1000,
    max_json_depth: 16,
};

fuzz_target!(|data: &[u8]| {
    let mut c = Collector::new(&LIMITS);
    c.xml(data, false);
    let malformed = c.issues.body_parse_error.is_some();
    assert!(c.targets.len() <= LIMITS.max_args + usize::from(malformed));
    // Lossy decoding turns a bad byte into three: the raw value can grow up to that.
    for t in &c.targets {
        assert!(t.kind == Kind::Arg || (t.kind == Kind::Body && malformed), "{t:?}");
        assert!(t.raw_len <= data.len() * 3, "{t:?}");
    }
    assert!(c.targets.iter().filter(|t| t.kind == Kind::Body).count() <= 1);
    if let Ok(text) = std::str::from_utf8(data) {
        let plain = !text.contains(['<', '>', '%', '+', '&', '"', '\''])
            && text.is_ascii()
            && !text.trim().is_empty()
            && text.trim().len() <= LIMITS.max_arg_length;
        if plain {
            assert_eq!(c.targets.len(), 1);
            assert_eq!(c.targets[0].value, text.trim());
        }
    }
});
