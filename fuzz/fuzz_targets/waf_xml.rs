//! The WAF's XML reader (`Collector::xml`): element text and attribute values.
//!
//! Properties beyond "no panic": no more values than `maxArgs` are kept; each one came
//! from the document (its raw length fits in it); valid UTF-8 text without tags or
//! encodings is one value, trimmed.
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
    c.xml(data);
    assert!(c.targets.len() <= LIMITS.max_args);
    // Lossy decoding turns a bad byte into three: the raw value can grow up to that.
    for t in &c.targets {
        assert_eq!(t.kind, Kind::Arg);
        assert!(t.raw_len <= data.len() * 3, "{t:?}");
    }
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
