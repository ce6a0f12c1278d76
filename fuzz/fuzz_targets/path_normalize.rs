//! The request path normaliser (`portcullis_compiler::path::normalize`): what routing, the
//! WAF, the audit log and the upstream all see of the path.
//!
//! Input: a flag byte (bit 0: merge slashes), then the path after its leading `/`.
//! Properties beyond "no panic", for every path that normalises:
//! - normalise(normalise(x)) == normalise(x), and the second pass succeeds;
//! - the result is an absolute path with no `.` or `..` segment, and with merging no `//`;
//! - it is plain ASCII: `pchar`s, `/` and upper-case `%XX` encodings (never of a
//!   character that may stand unencoded, never of NUL);
//! - an encoded slash in the result was reported (`encoded_slash`);
//! - with merging, normalising after `merge_slashes` gives the same path.
#![no_main]

use libfuzzer_sys::fuzz_target;
use portcullis_compiler::path::{merge_slashes, normalize};

fn is_pchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@".contains(&b)
}

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let merge = flags & 1 == 1;
    let path = format!("/{}", String::from_utf8_lossy(rest));
    let Ok(once) = normalize(&path, merge) else {
        return;
    };
    let out = once.path.as_ref();
    let twice = normalize(out, merge).expect("a normal path normalises");
    assert_eq!(twice.path, out, "{path:?}");
    assert!(out.starts_with('/'));
    assert!(
        !out.split('/').any(|s| s == "." || s == ".."),
        "{path:?} -> {out:?}"
    );
    if merge {
        assert!(!out.contains("//"), "{path:?} -> {out:?}");
    }
    let b = out.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = &b[i + 1..i + 3];
            assert!(hex.iter().all(|h| h.is_ascii_digit() || (b'A'..=b'F').contains(h)));
            let v = u8::from_str_radix(std::str::from_utf8(hex).expect("ascii"), 16)
                .expect("hex");
            assert!(v != 0 && !is_pchar(v), "{path:?} -> {out:?}");
            i += 3;
        } else {
            assert!(b[i] == b'/' || is_pchar(b[i]), "{path:?} -> {out:?}");
            i += 1;
        }
    }
    if out.contains("%2F") || out.contains("%5C") {
        assert!(once.encoded_slash, "{path:?}");
    }
    if merge {
        let merged = merge_slashes(&path);
        let via = normalize(&merged, true).expect("merged path normalises");
        assert_eq!(via.path, out, "{path:?}");
    }
});
