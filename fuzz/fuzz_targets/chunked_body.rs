//! The upstream response body decoder (`upstream::h1::decode_body`, the state machine the
//! connection reader drives), above all its chunked decoding.
//!
//! Input: a framing byte (chunked mostly; a length; until close), a split byte, then the
//! bytes the upstream sends. Properties beyond "no panic":
//! - the outcome does not depend on how the bytes arrive: all at once, in pieces of the
//!   split size, or one byte at a time give the same body and the same error;
//! - a body never takes more bytes than were sent, nor has more data than it took;
//! - a `Content-Length` body that decodes has exactly that length.
#![no_main]

use libfuzzer_sys::fuzz_target;
use portcullis_proxy::upstream::h1::{decode_body, ResponseFraming};

fn outcome(framing: ResponseFraming, reads: &[&[u8]]) -> Result<(Vec<u8>, usize), String> {
    decode_body(framing, reads).map_err(|e| format!("{e:?}"))
}

fuzz_target!(|data: &[u8]| {
    let [selector, split, input @ ..] = data else {
        return;
    };
    let framing = match selector & 3 {
        0 | 1 => ResponseFraming::Chunked,
        2 => ResponseFraming::Length(u64::from(selector >> 2) * 3 + 1),
        _ => ResponseFraming::UntilClose,
    };
    let whole = outcome(framing, &[input]);
    if let Ok((body, used)) = &whole {
        assert!(*used <= input.len());
        assert!(body.len() <= *used);
        if let ResponseFraming::Length(n) = framing {
            assert_eq!(body.len() as u64, n);
        }
    }
    let size = usize::from(*split % 16) + 1;
    let pieces: Vec<&[u8]> = input.chunks(size).collect();
    assert_eq!(outcome(framing, &pieces), whole, "pieces of {size}");
    let bytes: Vec<&[u8]> = input.chunks(1).collect();
    assert_eq!(outcome(framing, &bytes), whole, "single bytes");
});
