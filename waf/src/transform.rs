//! Transforms that undo the encodings attackers hide payloads behind.
//!
//! Every function takes bytes or text and returns a new value; none of them can fail, and
//! invalid UTF-8 is converted lossily (U+FFFD) rather than skipped, because a value that is
//! skipped for being malformed is a free evasion route.

use std::borrow::Cow;

/// Bound on repeated URL decoding: triple encoding is already far outside what any client
/// legitimately sends, and the bound keeps the cost linear.
const MAX_URL_DECODE_PASSES: usize = 4;

fn hex_val(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// One pass of URL decoding, including IIS-style `%uXXXX`. `plus_as_space` is for form
/// encoding. Invalid escapes are kept literally. Returns `None` when nothing changed.
pub fn url_decode_once(input: &[u8], plus_as_space: bool) -> Option<Vec<u8>> {
    if !input
        .iter()
        .any(|&b| b == b'%' || (plus_as_space && b == b'+'))
    {
        return None;
    }
    let mut out = Vec::with_capacity(input.len());
    let mut i = 0;
    let mut changed = false;
    while i < input.len() {
        let b = input[i];
        if b == b'%' {
            if matches!(input.get(i + 1), Some(b'u' | b'U')) {
                let digits = input.get(i + 2..i + 6);
                if let Some(d) = digits {
                    let vals: Option<Vec<u8>> = d.iter().map(|&c| hex_val(c)).collect();
                    if let Some(v) = vals {
                        let code = (u32::from(v[0]) << 12)
                            | (u32::from(v[1]) << 8)
                            | (u32::from(v[2]) << 4)
                            | u32::from(v[3]);
                        let c = fullwidth_to_ascii(code);
                        let mut buf = [0u8; 4];
                        out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                        i += 6;
                        changed = true;
                        continue;
                    }
                }
            }
            if let (Some(h), Some(l)) = (
                input.get(i + 1).copied().and_then(hex_val),
                input.get(i + 2).copied().and_then(hex_val),
            ) {
                out.push((h << 4) | l);
                i += 3;
                changed = true;
                continue;
            }
            out.push(b);
        } else if plus_as_space && b == b'+' {
            out.push(b' ');
            changed = true;
        } else {
            out.push(b);
        }
        i += 1;
    }
    changed.then_some(out)
}

/// `%uFF0E`-style full-width forms map to their ASCII twins (IIS did the same, which is
/// what makes them an evasion); anything else becomes the code point itself.
fn fullwidth_to_ascii(code: u32) -> char {
    if (0xFF01..=0xFF5E).contains(&code) {
        return char::from_u32(code - 0xFF01 + 0x21).unwrap_or('\u{FFFD}');
    }
    char::from_u32(code).unwrap_or('\u{FFFD}')
}

/// URL decode until the value stops changing (bounded).
pub fn url_decode_repeated(input: &[u8], plus_as_space: bool) -> Cow<'_, [u8]> {
    let mut current: Cow<'_, [u8]> = Cow::Borrowed(input);
    for pass in 0..MAX_URL_DECODE_PASSES {
        // `+` means space only at the first level; later `+` are literal data.
        match url_decode_once(&current, plus_as_space && pass == 0) {
            Some(next) => current = Cow::Owned(next),
            None => break,
        }
    }
    current
}

/// Overlong UTF-8 encodings of ASCII (`C0 AE` = `.`, `E0 80 AF` = `/`) decode to the ASCII
/// byte: old decoders accepted them and path traversal filters were bypassed with them.
pub fn fold_overlong_utf8(input: &[u8]) -> Cow<'_, [u8]> {
    if !input.iter().any(|&b| b == 0xC0 || b == 0xC1 || b == 0xE0) {
        return Cow::Borrowed(input);
    }
    let mut out = Vec::with_capacity(input.len());
    let mut i = 0;
    while i < input.len() {
        let b = input[i];
        if (b == 0xC0 || b == 0xC1) && i + 1 < input.len() && input[i + 1] & 0xC0 == 0x80 {
            out.push(((b & 0x1F) << 6) | (input[i + 1] & 0x3F));
            i += 2;
            continue;
        }
        if b == 0xE0
            && i + 2 < input.len()
            && input[i + 1] & 0xE0 == 0x80
            && input[i + 2] & 0xC0 == 0x80
        {
            let code = (u32::from(input[i + 1] & 0x3F) << 6) | u32::from(input[i + 2] & 0x3F);
            if code < 0x80 {
                out.push(code as u8);
                i += 3;
                continue;
            }
        }
        out.push(b);
        i += 1;
    }
    Cow::Owned(out)
}

/// Decodes `&lt;`, `&#60;`, `&#x3c;` and the handful of named entities that matter for
/// script injection. Unknown entities are kept.
pub fn html_entity_decode(input: &str) -> Cow<'_, str> {
    if !input.contains('&') {
        return Cow::Borrowed(input);
    }
    let mut out = String::with_capacity(input.len());
    let mut rest = input;
    while let Some(pos) = rest.find('&') {
        out.push_str(&rest[..pos]);
        let tail = &rest[pos + 1..];
        let end = tail
            .char_indices()
            .take(12)
            .find(|(_, c)| !(c.is_ascii_alphanumeric() || *c == '#'))
            .map(|(i, _)| i)
            .unwrap_or_else(|| tail.len().min(12));
        let name = &tail[..end];
        let decoded = decode_entity(name);
        match decoded {
            Some(c) => {
                out.push(c);
                let consumed = end + usize::from(tail[end..].starts_with(';'));
                rest = &tail[consumed..];
            }
            None => {
                out.push('&');
                rest = tail;
            }
        }
    }
    out.push_str(rest);
    Cow::Owned(out)
}

fn decode_entity(name: &str) -> Option<char> {
    if let Some(num) = name.strip_prefix('#') {
        let code = match num.strip_prefix(['x', 'X']) {
            Some(hex) => u32::from_str_radix(hex, 16).ok()?,
            None => num.parse().ok()?,
        };
        return Some(char::from_u32(code).unwrap_or('\u{FFFD}'));
    }
    Some(match name.to_ascii_lowercase().as_str() {
        "lt" => '<',
        "gt" => '>',
        "quot" => '"',
        "apos" => '\'',
        "amp" => '&',
        "nbsp" => ' ',
        "colon" => ':',
        "lpar" => '(',
        "rpar" => ')',
        "tab" => '\t',
        "newline" => '\n',
        "sol" => '/',
        "bsol" => '\\',
        "grave" => '`',
        "semi" => ';',
        "equals" => '=',
        _ => return None,
    })
}

/// Lowercase, NULs removed, whitespace runs compressed to one space. Borrows when the
/// value is already in that form (ASCII without capitals, NULs, control whitespace or
/// double spaces: most argument values), which is checked in one pass.
pub fn lower_compress(input: &str) -> Cow<'_, str> {
    if is_lower_compressed(input.as_bytes()) {
        return Cow::Borrowed(input);
    }
    let mut out = String::with_capacity(input.len());
    let mut in_space = false;
    if input.is_ascii() {
        for &b in input.as_bytes() {
            match b {
                0 => {}
                b' ' | b'\t' | b'\n' | 0x0B | 0x0C | b'\r' => {
                    if !in_space {
                        out.push(' ');
                    }
                    in_space = true;
                }
                _ => {
                    in_space = false;
                    out.push(char::from(b.to_ascii_lowercase()));
                }
            }
        }
        return Cow::Owned(out);
    }
    for c in input.chars() {
        if c == '\0' {
            continue;
        }
        if c.is_whitespace() || c == '\u{0B}' {
            if !in_space {
                out.push(' ');
            }
            in_space = true;
            continue;
        }
        in_space = false;
        if c.is_ascii() {
            out.push(c.to_ascii_lowercase());
        } else {
            out.extend(c.to_lowercase());
        }
    }
    Cow::Owned(out)
}

/// `lower_compress` would return these bytes unchanged.
fn is_lower_compressed(bytes: &[u8]) -> bool {
    let mut prev_space = false;
    for &b in bytes {
        match b {
            b' ' if prev_space => return false,
            b' ' => prev_space = true,
            b'A'..=b'Z' | 0 | b'\t' | b'\n' | 0x0B | 0x0C | b'\r' | 0x80..=0xFF => return false,
            _ => prev_space = false,
        }
    }
    true
}

pub fn remove_nulls(input: &str) -> Cow<'_, str> {
    if input.contains('\0') {
        Cow::Owned(input.replace('\0', ""))
    } else {
        Cow::Borrowed(input)
    }
}

pub fn compress_whitespace(input: &str) -> String {
    let mut out = String::with_capacity(input.len());
    let mut in_space = false;
    for c in input.chars() {
        if c.is_whitespace() {
            if !in_space {
                out.push(' ');
            }
            in_space = true;
        } else {
            in_space = false;
            out.push(c);
        }
    }
    out
}

/// Replaces SQL comments with a space (`/*!50000select*/` keeps its executable body, as
/// MySQL runs it), so that comments used instead of whitespace (`union/**/select`) do not
/// hide keyword sequences from rules.
pub fn remove_sql_comments(input: &str) -> Cow<'_, str> {
    if !input.contains("/*") {
        return Cow::Borrowed(input);
    }
    let mut out = String::with_capacity(input.len());
    let mut rest = input;
    while let Some(start) = rest.find("/*") {
        out.push_str(&rest[..start]);
        let body = &rest[start + 2..];
        let (inner, after) = match body.find("*/") {
            Some(end) => (&body[..end], &body[end + 2..]),
            None => (body, ""),
        };
        if let Some(exec) = inner.strip_prefix('!') {
            out.push(' ');
            out.push_str(exec.trim_start_matches(|c: char| c.is_ascii_digit()));
        }
        out.push(' ');
        rest = after;
    }
    out.push_str(rest);
    Cow::Owned(out)
}

/// Path normalization: `\` to `/`, duplicate slashes, `/./` and `/../` resolved. Used for
/// matching paths (exclusions, restricted files), not for detecting traversal, which must
/// see the dots before they are resolved.
pub fn normalize_path(input: &str) -> String {
    let unified = input.replace('\\', "/");
    let mut segments: Vec<&str> = Vec::new();
    for segment in unified.split('/') {
        match segment {
            "" | "." => {}
            ".." => {
                segments.pop();
            }
            s => segments.push(s),
        }
    }
    let mut out = String::with_capacity(unified.len() + 1);
    for s in &segments {
        out.push('/');
        out.push_str(s);
    }
    if out.is_empty() || (unified.ends_with('/') && !segments.is_empty()) {
        out.push('/');
    }
    out
}

/// Standard or URL-safe base64, with or without padding; `None` if it is not base64.
pub fn base64_decode(input: &str) -> Option<Vec<u8>> {
    use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
    use base64::Engine as _;
    let trimmed = input.trim();
    [STANDARD, URL_SAFE, STANDARD_NO_PAD, URL_SAFE_NO_PAD]
        .iter()
        .find_map(|e| e.decode(trimmed).ok())
}

/// Bytes to text: valid UTF-8 as is, each invalid byte as the Latin-1 character of the
/// same value. Lossy in the sense that the original encoding is not kept, but no byte is
/// dropped or hidden behind U+FFFD: `%BCscript%BE` (US-ASCII high-bit evasion) must stay
/// visible to the rules.
pub fn bytes_to_text(bytes: &[u8]) -> Cow<'_, str> {
    if let Ok(s) = std::str::from_utf8(bytes) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(bytes.len() + 8);
    for chunk in bytes.utf8_chunks() {
        out.push_str(chunk.valid());
        out.extend(chunk.invalid().iter().map(|&b| char::from(b)));
    }
    Cow::Owned(out)
}

/// The standard decoding chain applied to every inspected value: URL decoding until stable
/// (`+` as space, as servers decode arguments), overlong UTF-8 folding, bytes to text,
/// HTML entities (twice: `&amp;lt;` is a common double encoding).
///
/// Every value is URL-decoded, whatever its source: JSON strings and headers are not
/// URL-encoded by protocol, but applications often decode them, so attackers encode.
///
/// Borrows the input when no step would change it (no `%`, `+`, `&`, valid UTF-8 without
/// the lead bytes of overlong forms): the common case, found with one scan and no copy.
pub fn decode_value(raw: &[u8]) -> Cow<'_, str> {
    let mut plus = false;
    if !raw.iter().any(|&b| {
        plus |= b == b'+';
        matches!(b, b'%' | b'&' | 0xC0 | 0xC1 | 0xE0)
    }) {
        // The whole value was scanned, so `plus` is exact.
        if !plus {
            if let Ok(text) = std::str::from_utf8(raw) {
                return Cow::Borrowed(text);
            }
        } else {
            // `+` is the only thing to decode (`a+b` query values): the chain below would
            // turn it into a space in the first URL pass and then find nothing (no `%`
            // for later passes, no overlong lead bytes, no `&` for entities, and a space
            // creates none), so the result is the text of the bytes with `+` as space.
            let spaced: Vec<u8> = raw
                .iter()
                .map(|&b| if b == b'+' { b' ' } else { b })
                .collect();
            return Cow::Owned(match String::from_utf8(spaced) {
                Ok(text) => text,
                Err(e) => bytes_to_text(e.as_bytes()).into_owned(),
            });
        }
    }
    Cow::Owned(decode_chain(raw))
}

/// Every step of [`decode_value`], whatever the input.
fn decode_chain(raw: &[u8]) -> String {
    let url = url_decode_repeated(raw, true);
    let folded = fold_overlong_utf8(&url);
    let text = bytes_to_text(&folded);
    let once = html_entity_decode(&text);
    match html_entity_decode(&once) {
        Cow::Borrowed(_) => once.into_owned(),
        Cow::Owned(twice) => twice,
    }
}

/// Shell command-line normalization (like CRS `t:cmdLine`): quotes, backslashes and carets
/// removed, so `w'h'o\am^i` reads `whoami`.
pub fn cmd_line(input: &str) -> String {
    // Copied run by run into one allocation of the input's size (collecting the kept
    // chars one by one grew the string several times: ~600 instructions on `Jane O'Neil`).
    // The removed characters are ASCII, so every cut is on a char boundary.
    let mut out = String::with_capacity(input.len());
    let mut rest = input;
    while let Some(at) = rest.find(['\'', '"', '\\', '^']) {
        out.push_str(&rest[..at]);
        rest = &rest[at + 1..];
    }
    out.push_str(rest);
    out
}

/// Removes `#...` and `//...` line comments (PHP, shell) from text that still has its
/// line breaks.
pub fn remove_line_comments(input: &str) -> String {
    input
        .lines()
        .map(|line| {
            let cut = [line.find('#'), line.find("//")]
                .into_iter()
                .flatten()
                .min();
            match cut {
                Some(i) => &line[..i],
                None => line,
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn cmd_line_drops_exactly_quotes_backslashes_and_carets() {
        let pieces = ["w", "'", "\"", "\\", "^", "é", "😀", " ", "ab", "''", "^\\"];
        let mut seed: u64 = 0x2545_f491_4f6c_dd1d;
        for _ in 0..5_000 {
            let mut input = String::new();
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            for k in 0..(seed % 12) {
                input.push_str(pieces[((seed >> (4 * k)) % pieces.len() as u64) as usize]);
            }
            let expected: String = input
                .chars()
                .filter(|c| !matches!(c, '\'' | '"' | '\\' | '^'))
                .collect();
            assert_eq!(cmd_line(&input), expected, "{input:?}");
        }
    }

    #[test]
    fn url_decoding_is_repeated_and_bounded() {
        assert_eq!(&*url_decode_repeated(b"%252e%252e%252f", false), b"../");
        assert_eq!(&*url_decode_repeated(b"a+b%2", true), b"a b%2");
        assert_eq!(&*url_decode_repeated(b"%u002e%uFF0E/", false), b"../");
        let deep = "%25".repeat(10) + "41";
        assert!(url_decode_repeated(deep.as_bytes(), false).len() > 1);
    }

    #[test]
    fn overlong_and_entities() {
        assert_eq!(&*fold_overlong_utf8(b"\xc0\xae\xc0\xae\xc0\xaf"), b"../");
        assert_eq!(&*fold_overlong_utf8(b"\xe0\x80\xaf"), b"/");
        assert_eq!(
            html_entity_decode("&lt;script&#62;&#x61;&colon"),
            "<script>a:"
        );
        assert_eq!(html_entity_decode("fish & chips"), "fish & chips");
    }

    #[test]
    fn sql_comments_and_paths() {
        assert_eq!(remove_sql_comments("un/**/ion"), "un ion");
        assert_eq!(remove_sql_comments("/*!50000select*/ 1"), " select  1");
        assert_eq!(normalize_path("/a/./b/../c//d\\e"), "/a/c/d/e");
        assert_eq!(normalize_path("/../../"), "/");
        assert_eq!(lower_compress("A\0B  \t C"), "ab c");
        assert!(matches!(lower_compress("a b-c_1"), Cow::Borrowed(_)));
        for s in [
            "a  b",
            "A",
            "a\tb",
            "a\0",
            "\u{e9}t\u{e9}",
            " ",
            "a ",
            "a\nb",
        ] {
            let slow: String = lower_compress(&format!("{s}\u{1}")).into_owned();
            assert_eq!(format!("{}\u{1}", lower_compress(s)), slow, "{s:?}");
        }
    }

    #[test]
    fn decode_value_borrows_plain_values() {
        assert!(matches!(decode_value(b"plain value-1.0"), Cow::Borrowed(_)));
        // The shortcuts give what the whole chain gives.
        let cases =
            b"red+running+shoes|+|++a+|a+\xff+b|a+\xc3|caf\xc3\xa9+au+lait|a+b%2b|a+&amp;+b|plain";
        for raw in cases.split(|&b| b == b'|') {
            assert_eq!(decode_value(raw), decode_chain(raw), "{raw:?}");
        }
        assert!(matches!(
            decode_value("caf\u{e9}".as_bytes()),
            Cow::Borrowed(_)
        ));
        assert_eq!(decode_value(b"a+b%3Cscript%3E"), "a b<script>");
        assert_eq!(decode_value(b"&amp;lt;x"), "<x");
        assert_eq!(decode_value(b"\xc0\xae\xc0\xae/"), "../");
        assert_eq!(decode_value(b"\xbcscript\xbe"), "\u{bc}script\u{be}");
    }
}
