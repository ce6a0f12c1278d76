//! Property tests of request path normalisation (issue #19): the guarantees routing and the
//! WAF rely on, over generated paths rather than a fixed list.
#![allow(clippy::unwrap_used)]

use portcullis_compiler::path::normalize;
use proptest::prelude::*;

/// Paths made of the pieces that matter: dot segments, encoded dots and slashes, other
/// encodings (valid or not), empty segments, backslashes, parameters, non-ASCII.
fn hostile_path() -> impl Strategy<Value = String> {
    proptest::string::string_regex(
        "/(\\.|\\.\\.|/|%2[eEfF]|%5[cC]|%[0-9A-Fa-f]{2}|%|[a-z0-9._~;:@!$&'()*+,= -]|\\\\|é){0,16}",
    )
    .unwrap()
}

fn unreserved_path() -> impl Strategy<Value = String> {
    proptest::string::string_regex("/[a-zA-Z0-9._~/-]{0,24}").unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    /// Normalising twice gives what normalising once gave; the result has no `.`/`..`
    /// segment and, with merging, no empty segment.
    #[test]
    fn normal_form_is_a_fixed_point_without_dot_segments(path in hostile_path(), merge in any::<bool>()) {
        if let Ok(once) = normalize(&path, merge) {
            let twice = normalize(&once.path, merge).unwrap();
            prop_assert_eq!(&twice.path, &once.path);
            prop_assert!(!once.path.split('/').any(|s| s == "." || s == ".."), "{} -> {}", path, once.path);
            if merge {
                prop_assert!(!once.path.contains("//"), "{} -> {}", path, once.path);
            }
        }
    }

    /// Percent-encoding unreserved characters (upper or lower case hex) does not change
    /// what a path normalises to, dots included (`%2e%2E` is `..`).
    #[test]
    fn encoded_unreserved_characters_are_the_characters(
        path in unreserved_path(),
        mask in proptest::collection::vec(any::<(bool, bool)>(), 24),
        merge in any::<bool>(),
    ) {
        let mut encoded = String::from("/");
        for (c, (encode, lower)) in path[1..].chars().zip(mask.iter().copied().chain(std::iter::repeat((false, false)))) {
            if encode && c != '/' {
                let hex = format!("%{:02X}", c as u32);
                encoded.push_str(&if lower { hex.to_lowercase() } else { hex });
            } else {
                encoded.push(c);
            }
        }
        let plain = normalize(&path, merge).map(|n| n.path.into_owned());
        let decoded = normalize(&encoded, merge).map(|n| n.path.into_owned());
        prop_assert_eq!(plain, decoded, "{} vs {}", path, encoded);
    }
}
