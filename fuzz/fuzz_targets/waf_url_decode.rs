//! The WAF's URL decoding (`transform::url_decode_once`, `url_decode_repeated`, and the
//! value decoding chain `decode_value`).
//!
//! Properties beyond "no panic":
//! - one pass reports a change only when there was one, and never lengthens the value
//!   (`%XX` is 3 bytes for 1, `%uXXXX` 6 for at most 3);
//! - without `%` (or `+` in form mode) nothing changes;
//! - repeated decoding is bounded and never lengthens either;
//! - the whole value chain never grows a value by more than U+FFFD per byte.
#![no_main]

use libfuzzer_sys::fuzz_target;
use portcullis_waf::transform::{decode_value, url_decode_once, url_decode_repeated};

fuzz_target!(|data: &[u8]| {
    for plus in [false, true] {
        match url_decode_once(data, plus) {
            Some(out) => {
                assert_ne!(out, data);
                assert!(out.len() <= data.len());
            }
            None => {
                // Nothing decodable: the caller keeps the value as it is.
            }
        }
        let repeated = url_decode_repeated(data, plus);
        assert!(repeated.len() <= data.len());
        if !data.iter().any(|&b| b == b'%' || (plus && b == b'+')) {
            assert_eq!(&*repeated, data);
        }
    }
    let value = decode_value(data);
    assert!(value.len() <= data.len() * 3 + 3);
});
