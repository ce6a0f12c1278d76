// SQL injection blacklist checker - matches C implementation exactly

use super::sqli_data;

/// Check if a fingerprint is blacklisted
/// This matches libinjection_sqli_blacklist from the C version
pub fn is_blacklisted(fingerprint: &str) -> bool {
    // Match the C version: convert v0 fingerprint to v1 format
    // v0: up to 5 chars, mixed case
    // v1: '0' prefix, up to 5 more chars, upper case

    if fingerprint.is_empty() {
        return false;
    }

    // Build the v1 fingerprint with '0' prefix and uppercase
    // PORTCULLIS: in a stack buffer (fingerprints are at most 8 bytes) instead of a String.
    let mut fp2 = [0u8; 16];
    let Some(dst) = fp2.get_mut(1..=fingerprint.len()) else {
        return false;
    };
    for (d, ch) in dst.iter_mut().zip(fingerprint.bytes()) {
        *d = ch.to_ascii_uppercase();
    }
    fp2[0] = b'0';
    let Ok(fp2) = core::str::from_utf8(&fp2[..=fingerprint.len()]) else {
        return false;
    };

    // Check if this fingerprint exists in the keywords table with type 'F'
    sqli_data::lookup_word(fp2) == crate::sqli::TokenType::Fingerprint
}

/// PORTCULLIS: [`is_blacklisted`] on the fingerprint's bytes, up to the first NUL, without
/// a UTF-8 check (fingerprints are ASCII type letters; the keyword table is ASCII, so
/// bytes that are not find no entry, as the failed check found none).
pub fn is_blacklisted_bytes(fingerprint: &[u8]) -> bool {
    let len = fingerprint
        .iter()
        .position(|&b| b == 0)
        .unwrap_or(fingerprint.len());
    if len == 0 {
        return false;
    }
    let mut fp2 = [0u8; 16];
    let Some(dst) = fp2.get_mut(1..=len) else {
        return false;
    };
    for (d, ch) in dst.iter_mut().zip(fingerprint.iter()) {
        *d = ch.to_ascii_uppercase();
    }
    fp2[0] = b'0';
    sqli_data::lookup_word_bytes(&fp2[..=len]) == crate::sqli::TokenType::Fingerprint
}
