//! JWT compact serialisation parsing (`auth::jwt::parse_compact`): everything `verify` does
//! to a bearer token before a key is chosen or a signature checked.
//!
//! Input: a mode byte, then either the token as sent (even mode) or a header JSON, a
//! payload JSON and signature bytes separated by 0xFF, each base64url-encoded here (odd
//! mode), so the fuzzer can mutate the JSON inside. Properties beyond "no panic":
//! - an accepted token has exactly the shape `looks_like_jwt` routes to JWT checks;
//! - its algorithm is one of the allowed, and is what a last-wins JSON reader of the
//!   header sees (duplicate `alg` cannot mean two things);
//! - the header has no `crit` or `b64` member at all;
//! - the signing input and signature are the token's own bytes.
#![no_main]

use base64::Engine;
use jsonwebtoken::Algorithm;
use libfuzzer_sys::fuzz_target;
use portcullis_proxy::auth::jwt::{looks_like_jwt, parse_compact, MAX_TOKEN_BYTES};

const ALLOWED: [Algorithm; 4] = [
    Algorithm::HS256,
    Algorithm::RS256,
    Algorithm::ES256,
    Algorithm::EdDSA,
];

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let token = if mode & 1 == 0 {
        match std::str::from_utf8(rest) {
            Ok(t) => t.to_string(),
            Err(_) => return,
        }
    } else {
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let parts: Vec<String> = rest.split(|&b| b == 0xFF).map(|p| b64.encode(p)).collect();
        parts.join(".")
    };
    let Ok(parsed) = parse_compact(&token, &ALLOWED) else {
        return;
    };
    assert!(token.len() <= MAX_TOKEN_BYTES);
    assert!(looks_like_jwt(&token), "accepted {token:?} is not JWT-shaped");
    assert!(ALLOWED.contains(&parsed.alg));
    assert_eq!(format!("{}.{}", parsed.signing_input, parsed.signature), token);
    let header: serde_json::Value =
        serde_json::from_slice(&parsed.header_bytes).expect("accepted header is JSON");
    let header = header.as_object().expect("accepted header is an object");
    let alg = header.get("alg").and_then(|a| a.as_str());
    assert_eq!(alg, Some(format!("{:?}", parsed.alg).as_str()));
    assert!(!header.contains_key("crit"), "crit accepted: {header:?}");
    assert!(!header.contains_key("b64"), "b64 accepted: {header:?}");
    if let Some(kid) = &parsed.kid {
        assert_eq!(header.get("kid").and_then(|k| k.as_str()), Some(kid.as_str()));
    }
});
