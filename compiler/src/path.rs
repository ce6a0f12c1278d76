//! Request path normalisation: one canonical form for matching, the WAF, the audit log and
//! the upstream, so that no spelling of a path reaches a handler its route did not match.
//!
//! What [`normalize`] does, in one pass over the path (the query is not part of it):
//! - percent-encodings of characters that may stand unencoded in a path segment (RFC 3986
//!   `pchar`: unreserved, sub-delims, `:` and `@`) are decoded: `/%70rivate` is `/private`;
//!   every other encoding keeps its `%` form with upper-case hex (`%2f` becomes `%2F`);
//! - raw bytes that may not stand in a path (space, quotes, `<`, `>`, `{`, `|`, non-ASCII…)
//!   are percent-encoded, so a raw and an encoded spelling are one path;
//! - `.` and `..` segments are removed (RFC 3986 §5.2.4), also when spelled `%2e`; a `..`
//!   that would climb above the root is an error (nginx answers 400 too), not silently
//!   dropped as RFC 3986 would;
//! - with `merge_slashes`, empty segments are dropped (`//a///b` is `/a/b`), before dot
//!   segments are resolved, as nginx does;
//! - `\` and the encoded slashes `%2F` and `%5C` are reported ([`Normalized::encoded_slash`]):
//!   they stay inside their segment (a raw `\` is written `%5C`), and the caller decides
//!   whether the route allows them;
//! - malformed encodings (`%4`, `%zz`), a NUL (`%00` or raw) and dot segments carrying
//!   path parameters (`..;x`, which Java servlet containers read as `..`) are errors.
//!
//! Normalising a normalised path changes nothing (tested), and a path that needs no change
//! is returned borrowed, without allocating.

use std::borrow::Cow;

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("the request target is not an absolute path")]
    NotAbsolute,
    #[error("the path has a malformed percent-encoding")]
    BadEncoding,
    /// `%00`, or a raw NUL byte.
    #[error("the path contains an encoded or raw NUL")]
    EncodedNul,
    #[error("a dot segment in the path carries parameters")]
    DotSegmentParameter,
    #[error("the path climbs above the root")]
    AboveRoot,
}

/// A normalised path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Normalized<'a> {
    pub path: Cow<'a, str>,
    /// The path holds an encoded `/` or `\`, or a raw `\` (now written `%5C`).
    pub encoded_slash: bool,
    /// The request path holds an empty segment (`//`), merged or not.
    pub had_empty_segment: bool,
}

/// Characters that may stand unencoded in a path segment (RFC 3986 `pchar` less `%`).
fn is_pchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@".contains(&b)
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

const HEX: &[u8; 16] = b"0123456789ABCDEF";

fn push_encoded(out: &mut String, b: u8) {
    out.push('%');
    out.push(char::from(HEX[usize::from(b >> 4)]));
    out.push(char::from(HEX[usize::from(b & 15)]));
}

/// Whether `path` is already in normal form: only `pchar` and `/`, no empty segment, no
/// segment that starts with a dot. Most paths are, and they cost one scan.
fn already_normal(path: &[u8]) -> bool {
    let mut previous = 0u8;
    for &b in path {
        if b == b'/' {
            if previous == b'/' {
                return false;
            }
        } else if !is_pchar(b) || (b == b'.' && previous == b'/') {
            return false;
        }
        previous = b;
    }
    true
}

/// Normalises an origin-form path (it must start with `/`).
pub fn normalize(path: &str, merge_slashes: bool) -> Result<Normalized<'_>, PathError> {
    let bytes = path.as_bytes();
    if bytes.first() != Some(&b'/') {
        return Err(PathError::NotAbsolute);
    }
    if already_normal(bytes) {
        return Ok(Normalized {
            path: Cow::Borrowed(path),
            encoded_slash: false,
            had_empty_segment: false,
        });
    }
    let mut encoded_slash = false;
    let mut had_empty_segment = false;
    // Segment boundaries of `out`: where each kept segment's leading `/` stands, so `..`
    // can drop the last one.
    let mut starts: Vec<usize> = Vec::new();
    let mut out = String::with_capacity(path.len());
    // Split the raw path on raw `/` only: encoded slashes stay inside their segment.
    let mut segments = path[1..].split('/').peekable();
    while let Some(raw) = segments.next() {
        let last = segments.peek().is_none();
        let mut segment = String::with_capacity(raw.len());
        let raw = raw.as_bytes();
        let mut i = 0;
        while i < raw.len() {
            let b = raw[i];
            if b == b'%' {
                let (Some(h), Some(l)) = (
                    raw.get(i + 1).copied().and_then(hex_value),
                    raw.get(i + 2).copied().and_then(hex_value),
                ) else {
                    return Err(PathError::BadEncoding);
                };
                let decoded = h * 16 + l;
                match decoded {
                    0 => return Err(PathError::EncodedNul),
                    b'/' | b'\\' => {
                        encoded_slash = true;
                        push_encoded(&mut segment, decoded);
                    }
                    d if is_pchar(d) => segment.push(char::from(d)),
                    d => push_encoded(&mut segment, d),
                }
                i += 3;
                continue;
            }
            if b == b'\\' {
                encoded_slash = true;
            }
            if b == 0 {
                // A raw NUL would be written `%00`, which is refused: refuse it here too, or
                // the normal form is not normal (found by fuzzing, issue #19).
                return Err(PathError::EncodedNul);
            }
            if is_pchar(b) {
                segment.push(char::from(b));
            } else {
                push_encoded(&mut segment, b);
            }
            i += 1;
        }
        match segment.as_str() {
            "." | ".." => {
                if segment == ".." {
                    match starts.pop() {
                        Some(start) => out.truncate(start),
                        None => return Err(PathError::AboveRoot),
                    }
                }
                // `/a/.` and `/a/b/..` name the folder: they keep a trailing slash.
                if last {
                    starts.push(out.len());
                    out.push('/');
                }
            }
            s if s.starts_with(".;") || s.starts_with("..;") => {
                return Err(PathError::DotSegmentParameter)
            }
            "" => {
                if !last {
                    had_empty_segment = true;
                }
                if last || !merge_slashes {
                    starts.push(out.len());
                    out.push('/');
                }
            }
            s => {
                starts.push(out.len());
                out.push('/');
                out.push_str(s);
            }
        }
    }
    if out.is_empty() {
        out.push('/');
    }
    // A trailing `/` after a kept empty segment doubles: `/a//` unmerged stays `/a//`.
    let path = if out == path {
        Cow::Borrowed(path)
    } else {
        Cow::Owned(out)
    };
    Ok(Normalized {
        path,
        encoded_slash,
        had_empty_segment,
    })
}

/// Empty segments merged (`//` → `/`), nothing else changed.
pub fn merge_slashes(path: &str) -> Cow<'_, str> {
    if !path.contains("//") {
        return Cow::Borrowed(path);
    }
    let mut out = String::with_capacity(path.len());
    for c in path.chars() {
        if c == '/' && out.ends_with('/') {
            continue;
        }
        out.push(c);
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn n(path: &str) -> String {
        normalize(path, true).unwrap().path.into_owned()
    }

    #[test]
    fn confusions_from_the_issue_all_name_private() {
        for p in [
            "/private",
            "/%70rivate",
            "/priv%61te",
            "/public/../private",
            "/public/%2e%2e/private",
            "/public/%2E%2E/private",
            "/public/.%2e/private",
            "/./private",
            "//private",
            "///private",
            "/public//../private",
            "/a/b/../../private",
            "/./././private",
        ] {
            assert_eq!(n(p), "/private", "{p}");
        }
    }

    #[test]
    fn encoded_and_back_slashes_are_reported_and_kept_in_their_segment() {
        for (p, want) in [
            ("/private%2fx", "/private%2Fx"),
            ("/private%2Fx", "/private%2Fx"),
            ("/public%5c..%5cprivate", "/public%5C..%5Cprivate"),
            ("/public\\..\\private", "/public%5C..%5Cprivate"),
            ("/a/..%2fprivate", "/a/..%2Fprivate"),
        ] {
            let got = normalize(p, true).unwrap();
            assert!(got.encoded_slash, "{p}");
            assert_eq!(got.path, want, "{p}");
        }
        assert!(!normalize("/a/b", true).unwrap().encoded_slash);
    }

    #[test]
    fn errors() {
        assert_eq!(normalize("/a%00", true), Err(PathError::EncodedNul));
        // Fuzz crash (path_normalize): a raw NUL became `%00`, which the second pass refused.
        assert_eq!(normalize("/a\0", true), Err(PathError::EncodedNul));
        assert_eq!(normalize("/a\0b/c", false), Err(PathError::EncodedNul));
        assert_eq!(normalize("/a%4", true), Err(PathError::BadEncoding));
        assert_eq!(normalize("/a%zz", true), Err(PathError::BadEncoding));
        assert_eq!(normalize("/a%", true), Err(PathError::BadEncoding));
        assert_eq!(normalize("*", true), Err(PathError::NotAbsolute));
        for above in ["/..", "/../private", "/a/../../b", "/%2e%2e/x", "//../x"] {
            assert_eq!(normalize(above, true), Err(PathError::AboveRoot), "{above}");
        }
        assert_eq!(normalize("", true), Err(PathError::NotAbsolute));
        assert_eq!(
            normalize("/public/..;/private", true),
            Err(PathError::DotSegmentParameter)
        );
        assert_eq!(
            normalize("/public/.;x/private", true),
            Err(PathError::DotSegmentParameter)
        );
    }

    #[test]
    fn trailing_slashes_and_roots() {
        assert_eq!(n("/"), "/");
        assert_eq!(n("/a/"), "/a/");
        assert_eq!(n("/a//"), "/a/");
        assert_eq!(n("/a/."), "/a/");
        assert_eq!(n("/a/b/.."), "/a/");
        assert_eq!(n("/a/.."), "/");
        assert_eq!(n("/."), "/");
        assert_eq!(n("//"), "/");
        assert_eq!(n("/.well-known/x"), "/.well-known/x");
        assert_eq!(n("/a/...b/..c/.d"), "/a/...b/..c/.d");
    }

    #[test]
    fn encodings_are_canonical() {
        assert_eq!(n("/caf%c3%a9"), "/caf%C3%A9");
        assert_eq!(n("/café"), "/caf%C3%A9");
        assert_eq!(n("/a%20b"), "/a%20b");
        assert_eq!(n("/a b"), "/a%20b");
        assert_eq!(n("/a%21b%40c%3Ad"), "/a!b@c:d");
        assert_eq!(n("/a%3fb%23c%25d"), "/a%3Fb%23c%25d");
        assert_eq!(n("/a\"<>{}|^`"), "/a%22%3C%3E%7B%7D%7C%5E%60");
    }

    #[test]
    fn unmerged_keeps_empty_segments() {
        let got = normalize("/a//b/./c", false).unwrap();
        assert_eq!(got.path, "/a//b/c");
        assert!(got.had_empty_segment);
        assert_eq!(normalize("/a//../b", false).unwrap().path, "/a/b");
        assert_eq!(normalize("/a//../b", true).unwrap().path, "/b");
        assert_eq!(merge_slashes("/a//b///c"), "/a/b/c");
    }

    #[test]
    fn normal_paths_are_borrowed() {
        for p in ["/", "/api/v1/users", "/a-b_c~d/e!f", "/x/y/"] {
            assert!(
                matches!(normalize(p, true).unwrap().path, Cow::Borrowed(_)),
                "{p}"
            );
        }
    }

    /// Every byte sequence: normalising twice gives what normalising once gave, and the
    /// result holds no dot segment and (merged) no empty segment.
    #[test]
    fn idempotent_over_generated_paths() {
        let alphabet: &[&str] = &[
            "/", ".", "..", "%2e", "%2E", "%2f", "%5c", "\\", "a", "%61", "%", "%4", "%00", "é",
            " ", ";", "%3b", "~", "%7e",
        ];
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..50_000 {
            let mut p = String::from("/");
            let len = (state % 9) as usize;
            for _ in 0..len {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                p.push_str(alphabet[(state % alphabet.len() as u64) as usize]);
            }
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1);
            for merge in [true, false] {
                let Ok(once) = normalize(&p, merge) else {
                    continue;
                };
                let twice = normalize(&once.path, merge).unwrap();
                assert_eq!(twice.path, once.path, "{p:?} merge={merge}");
                // The flag speaks of the request: a popped segment may have held the slash.
                if once.path.contains("%2F") || once.path.contains("%5C") {
                    assert!(once.encoded_slash && twice.encoded_slash, "{p:?}");
                }
                let segments: Vec<&str> = once.path.split('/').collect();
                assert!(
                    !segments.iter().any(|s| *s == "." || *s == ".."),
                    "{p:?} -> {}",
                    once.path
                );
                if merge {
                    assert!(!once.path.contains("//"), "{p:?} -> {}", once.path);
                }
            }
        }
    }
}
