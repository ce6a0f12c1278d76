//! libinjection (SQLi, XSS) and the cheap checks that decide whether a value is worth it.

use crate::class;

/// Largest input handed to libinjection.
pub(crate) const LIBINJECTION_MAX: usize = 16 * 1024;

pub(crate) fn clip_chars(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// libinjection costs microseconds per call (the Rust port is several times slower than
/// the C original), so it only sees values that could hold SQL: values with SQL
/// punctuation (quotes, parentheses, operators, comment starts), or words only but with
/// a keyword that can build an injection without punctuation (`1 or 1`, `1 union select 2`).
/// Plain words, numbers, identifiers and prose without such keywords cannot form a
/// libinjection fingerprint, and they are most argument and JSON values. `c` is the
/// value's [`class::of`].
pub(crate) fn worth_sqli(v: &str, c: u64) -> bool {
    if v.len() < 2 || c & class::NON_IDENT == 0 {
        return false;
    }
    if c & (class::SQL_PUNCT | class::NON_ASCII) != 0 || (c & class::DASH != 0 && v.contains("--"))
    {
        return true;
    }
    has_sql_word(v)
}

/// A word (letters, digits, `_`) that lets libinjection build an injection without
/// punctuation (`1 or 1`, `1 union select 2`), in any case.
pub(crate) fn has_sql_word(v: &str) -> bool {
    v.as_bytes()
        .split(|b| !(b.is_ascii_alphanumeric() || *b == b'_'))
        .any(is_sql_word)
}

pub(crate) fn is_sql_word(word: &[u8]) -> bool {
    // The lowercase word packed into an integer: one compare per candidate of that length
    // instead of a string comparison per keyword.
    if word.len() < 2 || word.len() > 9 {
        return false;
    }
    let packed = word.iter().fold(0u128, |acc, &b| {
        (acc << 8) | u128::from(b.to_ascii_lowercase())
    });
    // Sorted at compile time: a binary search is six comparisons, a scan up to 38.
    SQL_WORDS_PACKED.binary_search(&packed).is_ok()
}

pub(crate) const fn pack(word: &[u8]) -> u128 {
    let mut acc = 0u128;
    let mut i = 0;
    while i < word.len() {
        acc = (acc << 8) | word[i] as u128;
        i += 1;
    }
    acc
}

/// Words that let libinjection build an injection without punctuation, packed by [`pack`]
/// (distinct lengths never collide: every word starts with a non-zero byte).
pub(crate) const SQL_WORDS_PACKED: [u128; 38] = {
    let words: [&[u8]; 38] = [
        b"union",
        b"select",
        b"or",
        b"and",
        b"xor",
        b"having",
        b"order",
        b"group",
        b"sleep",
        b"benchmark",
        b"waitfor",
        b"exec",
        b"execute",
        b"into",
        b"like",
        b"rlike",
        b"regexp",
        b"between",
        b"div",
        b"mod",
        b"procedure",
        b"limit",
        b"declare",
        b"shutdown",
        b"null",
        b"case",
        b"when",
        b"not",
        b"is",
        b"in",
        b"from",
        b"where",
        b"drop",
        b"insert",
        b"update",
        b"delete",
        b"true",
        b"false",
    ];
    let mut packed = [0u128; 38];
    let mut i = 0;
    while i < words.len() {
        packed[i] = pack(words[i]);
        i += 1;
    }
    // Insertion sort (const context), for `binary_search`.
    let mut i = 1;
    while i < packed.len() {
        let mut j = i;
        while j > 0 && packed[j - 1] > packed[j] {
            let t = packed[j];
            packed[j] = packed[j - 1];
            packed[j - 1] = t;
            j -= 1;
        }
        i += 1;
    }
    packed
};

/// libinjection's SQLi detection; the fingerprint when it is one.
///
/// `libinjectionrs::detect_sqli` folds the tokens once more after `detect` only to return
/// the fingerprint, which `detect` has already left in the state: calling the state
/// directly does the same work minus that pass (a third to a half of the cost per call).
pub(crate) fn detect_sqli(input: &[u8]) -> Option<String> {
    let mut state = libinjectionrs::SqliState::new(input, libinjectionrs::SqliFlags::FLAG_NONE);
    if !state.detect() {
        return None;
    }
    let fp = &state.fingerprint;
    let len = fp.iter().position(|&b| b == 0).unwrap_or(fp.len());
    Some(String::from_utf8_lossy(&fp[..len]).into_owned())
}
