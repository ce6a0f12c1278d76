//! The WAF's HTML entity decoder (`transform::html_entity_decode`).
//!
//! Properties beyond "no panic": text without `&` is returned unchanged (borrowed); the
//! decoded text is never longer than the input (the shortest entity, `&lt`, is 3 bytes for
//! 1; a numeric one needs as many digits as its code point has UTF-8 bytes); and text
//! around entities is kept in order (whatever precedes the first `&` is a prefix).
#![no_main]

use std::borrow::Cow;

use libfuzzer_sys::fuzz_target;
use portcullis_waf::transform::html_entity_decode;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let decoded = html_entity_decode(&text);
    match text.find('&') {
        None => {
            assert!(matches!(decoded, Cow::Borrowed(_)));
            assert_eq!(decoded, text);
        }
        Some(first) => {
            assert!(decoded.starts_with(&text[..first]));
        }
    }
    assert!(decoded.len() <= text.len(), "{text:?} -> {decoded:?}");
});
