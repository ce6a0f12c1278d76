//! Byte classes of a value, gathered in one table-driven pass when the value is collected:
//! whether it needs decoding or normalizing, what libinjection could make of it, CR/LF,
//! and which punctuation bytes it holds (the engine's single-byte rule literals).

/// Not an identifier byte (`[A-Za-z0-9_.-]`).
pub const NON_IDENT: u64 = 1;
/// SQL punctuation (see `worth_sqli` in the engine).
pub const SQL_PUNCT: u64 = 1 << 1;
pub const NON_ASCII: u64 = 1 << 2;
pub const DASH: u64 = 1 << 3;
/// What libinjection's XSS detection needs: `<` or `=`. Without both it cannot report
/// XSS, in any of its five contexts (vendored `xss/html5.rs`, `xss/detector.rs`):
/// `is_xss` reports only on a `Doctype`, `TagNameOpen` or `TagComment` token, or on an
/// `AttrValue` token whose attribute (set by the `AttrName` token just before it: any
/// other token resets it) is dangerous. The first three come only from states entered
/// through `state_tag_open`, which only `state_data` enters, on a `<`. An `AttrValue`
/// comes from a value state, entered either at the start of the value-quote contexts
/// (the first token: no attribute before it) or from `state_before_attribute_value`,
/// which `state_attribute_name` and `state_after_attribute_name` enter only on `=`;
/// no other state reaches it. So `"`, `'`, `` ` ``, `:` and `>` alone (names with a
/// quote, times, URLs) cannot make libinjection report XSS and need not run it.
pub const XSS: u64 = 1 << 4;
/// What makes a path worth libinjection.
pub const PATH_SQL: u64 = 1 << 5;
pub const CRLF: u64 = 1 << 6;
/// What `lower_compress` rewrites: capitals, NUL, control whitespace, non-ASCII.
pub const NEEDS_NORM: u64 = 1 << 7;
pub const SPACE: u64 = 1 << 8;
/// NUL and control whitespace (`\t`, `\n`, `\x0b`, `\x0c`, `\r`).
pub const CONTROL: u64 = 1 << 10;
/// What `decode_value` could change: `%`, `+`, `&` and the lead bytes of overlong UTF-8.
pub const DECODE: u64 = 1 << 9;
/// What ends the plain run of a JSON string: `"`, `\\` and control characters.
pub const JSON_STOP: u64 = 1 << 11;

/// Bits `PUNCT_SHIFT..` say which of [`PUNCT`] occur, one bit per byte.
pub const PUNCT_SHIFT: u32 = 16;
/// Space and the 32 ASCII punctuation characters.
pub const PUNCT: &[u8; 33] = b" !\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~";

pub static BYTE_CLASS: [u64; 256] = table();

/// The union of the classes of `bytes`.
pub fn of(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0, |c, &b| c | BYTE_CLASS[usize::from(b)])
}

/// The class bit of one [`PUNCT`] byte (0 for any other byte): `of(v) & punct_bit(b)`
/// says whether `b` occurs in `v`.
pub const fn punct_bit(b: u8) -> u64 {
    let mut p = 0;
    while p < PUNCT.len() {
        if PUNCT[p] == b {
            return 1 << (PUNCT_SHIFT + p as u32);
        }
        p += 1;
    }
    0
}

/// Index in [`PUNCT`] of `b`, if it is there.
pub fn punct_index(b: u8) -> Option<usize> {
    PUNCT.iter().position(|&p| p == b)
}

const fn table() -> [u64; 256] {
    let mut table = [0u64; 256];
    let mut i = 0;
    while i < 256 {
        let b = i as u8;
        let mut c = 0;
        if !(b.is_ascii_alphanumeric() || b == b'_' || b == b'.' || b == b'-') {
            c |= NON_IDENT;
        }
        if matches!(
            b,
            b'\''
                | b'"'
                | b'`'
                | b';'
                | b'('
                | b')'
                | b'='
                | b'<'
                | b'>'
                | b'#'
                | b'*'
                | b'/'
                | b'|'
                | b'&'
                | b'@'
                | b'\\'
                | b'%'
                | b'^'
                | b'~'
                | b'!'
                | b'{'
                | b'}'
                | b'['
                | b']'
        ) {
            c |= SQL_PUNCT;
        }
        if b >= 0x80 {
            c |= NON_ASCII | NEEDS_NORM;
        }
        if b == b'-' {
            c |= DASH;
        }
        if matches!(b, b'<' | b'=') {
            c |= XSS;
        }
        if matches!(b, b'\'' | b'"' | b'(' | b' ' | b';') {
            c |= PATH_SQL;
        }
        if matches!(b, b'\r' | b'\n') {
            c |= CRLF;
        }
        if b.is_ascii_uppercase() {
            c |= NEEDS_NORM;
        }
        if matches!(b, 0 | b'\t' | b'\n' | 0x0B | 0x0C | b'\r') {
            c |= NEEDS_NORM | CONTROL;
        }
        if b == b' ' {
            c |= SPACE;
        }
        if matches!(b, b'%' | b'+' | b'&' | 0xC0 | 0xC1 | 0xE0) {
            c |= DECODE;
        }
        if b == b'"' || b == b'\\' || b < 0x20 {
            c |= JSON_STOP;
        }
        let mut p = 0;
        while p < PUNCT.len() {
            if PUNCT[p] == b {
                c |= 1 << (PUNCT_SHIFT + p as u32);
            }
            p += 1;
        }
        table[i] = c;
        i += 1;
    }
    table
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes() {
        assert_eq!(of(b"order_id") & (NON_IDENT | SQL_PUNCT | NEEDS_NORM), 0);
        assert_ne!(of(b"Jane O'Neil") & SQL_PUNCT, 0);
        assert_ne!(of(b"Jane") & NEEDS_NORM, 0);
        assert_ne!(of(b"a%41") & DECODE, 0);
        assert_ne!(of("é".as_bytes()) & (NON_ASCII | NEEDS_NORM | DECODE), 0);
        let c = of(b"a;b");
        assert_eq!(c >> PUNCT_SHIFT, 1 << punct_index(b';').unwrap_or(0));
        assert!(PUNCT_SHIFT as usize + PUNCT.len() <= 64);
        assert_eq!(of(b";") >> PUNCT_SHIFT << PUNCT_SHIFT, punct_bit(b';'));
        assert_eq!(punct_bit(b'a'), 0);
        // The engine's early exit for identifier-only values relies on this.
        for c in BYTE_CLASS {
            assert!(c & XSS == 0 || c & NON_IDENT != 0);
        }
    }

    /// The argument at [`XSS`], tried: random markup-like strings without `<` and `=`
    /// are never XSS to libinjection, while the same strings often are once the two
    /// bytes may occur (so the generator does reach its detections).
    #[test]
    fn xss_needs_lt_or_equals() {
        const PARTS: [&[u8]; 24] = [
            b"'",
            b"\"",
            b"`",
            b">",
            b":",
            b"/",
            b" ",
            b"\t",
            b"\0",
            b"onerror",
            b"onload",
            b"style",
            b"href",
            b"src",
            b"javascript",
            b"alert(1)",
            b"&#x6a;",
            b"!",
            b"-",
            b"x",
            b"svg",
            b"script",
            b"DOCTYPE",
            b"?",
        ];
        let mut seed: u64 = 0x2545_f491_4f6c_dd1d;
        let mut next = |n: usize| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed % n as u64) as usize
        };
        let mut flagged_with = 0;
        for _ in 0..40_000 {
            let mut with = Vec::new();
            let mut without = Vec::new();
            for _ in 0..1 + next(10) {
                let k = next(PARTS.len() + 2);
                match PARTS.get(k) {
                    Some(p) => {
                        with.extend_from_slice(p);
                        without.extend_from_slice(p);
                    }
                    None => with.push(if k == PARTS.len() { b'<' } else { b'=' }),
                }
            }
            assert_eq!(of(&without) & XSS, 0);
            assert!(
                !libinjectionrs::detect_xss(&without).is_injection(),
                "{:?}",
                String::from_utf8_lossy(&without)
            );
            if libinjectionrs::detect_xss(&with).is_injection() {
                flagged_with += 1;
            }
        }
        assert!(flagged_with > 200, "{flagged_with}");
    }
}
