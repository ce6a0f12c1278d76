//! JWT (JWS compact) verification: strict parsing, key selection, signature, claims.
//!
//! Order matters for safety: the header is parsed strictly and the algorithm checked against
//! the route's allowlist before any key is chosen; keys come only from configuration (a
//! consumer key or an issuer's JWKS) — `jwk`, `jku`, `x5u`, `x5c` in the header are never
//! used; a key verifies only algorithms of its own family, so HS256 "signed" with an RSA
//! public key never reaches an HMAC check. Claims are read only after the signature holds.

use std::str::FromStr;
use std::sync::Arc;

use base64::Engine;
use http::HeaderValue;
use jsonwebtoken::Algorithm;
use portcullis_compiler::config::JwtConfig;
use serde::Deserialize;
use serde_json::{Map, Value};

use super::api_key::KeyStore;
use super::cache::{key_of, TtlCache};
use super::clock::SharedClock;
use super::identity::Principal;
use super::jwks::{JwksCache, JwksError, JwksSource, VerifyKey};
use super::AuthRuntime;

/// Longer tokens are refused before any parsing (they would only be attacks or mistakes).
pub const MAX_TOKEN_BYTES: usize = 16 * 1024;
/// A verified token is re-verified at least this often, so key removal takes effect.
const MAX_CACHE_MS: u64 = 300_000;
const TOKEN_CACHE_CAPACITY: usize = 10_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("malformed token")]
    Malformed,
    #[error("algorithm not allowed")]
    BadAlgorithm,
    #[error("unsupported critical header")]
    UnsupportedCritical,
    #[error("invalid signature")]
    InvalidSignature,
    #[error("unknown signing key")]
    UnknownKey,
    #[error("signing keys unavailable")]
    KeysUnavailable,
    #[error("claims are not a JSON object")]
    InvalidClaims,
    #[error("required claim missing")]
    MissingClaim,
    #[error("token expired")]
    Expired,
    #[error("token not yet valid")]
    NotYetValid,
    #[error("token lifetime too long")]
    TooLongLived,
    #[error("wrong issuer")]
    WrongIssuer,
    #[error("wrong audience")]
    WrongAudience,
    #[error("unknown consumer")]
    UnknownConsumer,
    #[error("token not active")]
    Inactive,
}

impl TokenError {
    pub fn reason(self) -> &'static str {
        match self {
            TokenError::Malformed => "malformed",
            TokenError::BadAlgorithm => "bad_algorithm",
            TokenError::UnsupportedCritical => "unsupported_crit",
            TokenError::InvalidSignature => "invalid_signature",
            TokenError::UnknownKey => "unknown_key",
            TokenError::KeysUnavailable => "jwks_unavailable",
            TokenError::InvalidClaims => "invalid_claims",
            TokenError::MissingClaim => "missing_claim",
            TokenError::Expired => "expired",
            TokenError::NotYetValid => "not_yet_valid",
            TokenError::TooLongLived => "too_long_lived",
            TokenError::WrongIssuer => "wrong_issuer",
            TokenError::WrongAudience => "wrong_audience",
            TokenError::UnknownConsumer => "unknown_consumer",
            TokenError::Inactive => "inactive",
        }
    }
}

/// The protected header. Derived deserialization refuses duplicate members, so
/// `{"alg":"RS256","alg":"none"}` cannot mean different things to different parsers.
#[derive(Deserialize)]
struct Header {
    alg: String,
    #[serde(default)]
    kid: Option<Value>,
}

struct CompiledIssuer {
    issuer: String,
    audiences: Vec<String>,
    consumer_claim: Option<String>,
    jwks: Arc<JwksCache>,
}

pub struct CompiledJwt {
    algorithms: Vec<Algorithm>,
    consumer_keys: bool,
    key_claim: String,
    issuers: Vec<CompiledIssuer>,
    require_exp: bool,
    require_nbf: bool,
    require_iat: bool,
    max_lifetime_secs: Option<u64>,
    skew_secs: u64,
    scope: super::api_key::ConsumerScope,
    cache: TtlCache<Principal>,
    clock: SharedClock,
}

fn b64(part: &str) -> Result<Vec<u8>, TokenError> {
    // Strict: no padding, no non-canonical trailing bits, URL-safe alphabet only.
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|_| TokenError::Malformed)
}

fn number(claims: &Map<String, Value>, name: &str) -> Result<Option<i64>, TokenError> {
    match claims.get(name) {
        None => Ok(None),
        Some(Value::Number(n)) => n
            .as_i64()
            .or_else(|| n.as_f64().map(|f| f as i64))
            .map(Some)
            .ok_or(TokenError::InvalidClaims),
        Some(_) => Err(TokenError::InvalidClaims),
    }
}

fn scopes_of(claims: &Map<String, Value>) -> Vec<String> {
    let mut scopes: Vec<String> = Vec::new();
    if let Some(Value::String(s)) = claims.get("scope") {
        scopes.extend(s.split_ascii_whitespace().map(str::to_string));
    }
    match claims.get("scp") {
        Some(Value::Array(items)) => {
            scopes.extend(items.iter().filter_map(Value::as_str).map(str::to_string))
        }
        Some(Value::String(s)) => scopes.extend(s.split_ascii_whitespace().map(str::to_string)),
        _ => {}
    }
    scopes
}

/// A JWS compact serialisation split, its header checked and its segments decoded: what
/// can be known of a token before any key is chosen or signature checked.
pub struct CompactToken<'t> {
    /// `header.payload`, what the signature covers.
    pub signing_input: &'t str,
    /// The signature segment, still base64url (checked to decode).
    pub signature: &'t str,
    /// The decoded protected header (a JSON object).
    pub header_bytes: Vec<u8>,
    pub alg: Algorithm,
    pub kid: Option<String>,
    /// The payload when it is a JSON object; not to be trusted before the signature holds.
    pub claims: Option<Map<String, Value>>,
}

/// Parses the compact serialisation strictly, in the order [`CompiledJwt::verify`] relies
/// on: three segments (header and signature non-empty), a strict base64url header whose `alg` is in
/// `allowed`, no `crit`/`b64`, a decodable signature and payload, a string `kid`. A
/// function of its own so that fuzzing reaches everything before the signature check.
pub fn parse_compact<'t>(
    token: &'t str,
    allowed: &[Algorithm],
) -> Result<CompactToken<'t>, TokenError> {
    if token.len() > MAX_TOKEN_BYTES {
        return Err(TokenError::Malformed);
    }
    let (signing_input, signature) = token.rsplit_once('.').ok_or(TokenError::Malformed)?;
    let (header_b64, payload_b64) = signing_input.split_once('.').ok_or(TokenError::Malformed)?;
    if header_b64.is_empty() || signature.is_empty() || payload_b64.contains('.') {
        return Err(TokenError::Malformed);
    }
    let header_bytes = b64(header_b64)?;
    // The whole header must be valid UTF-8 JSON (RFC 7515 §4), checked as such: the derived
    // `Header` skips the members it ignores without validating them, so `"typ":"JW\x80"` or
    // `"x":1e999999` passed (found by fuzzing, issue #19) where every strict JSON reader
    // refuses the header. The derived parse stays: it is what refuses duplicate members.
    let header_text = std::str::from_utf8(&header_bytes).map_err(|_| TokenError::Malformed)?;
    let Ok(Value::Object(header_members)) = serde_json::from_str::<Value>(header_text) else {
        return Err(TokenError::Malformed);
    };
    let header: Header = serde_json::from_str(header_text).map_err(|_| TokenError::Malformed)?;
    // Exact, case-sensitive names only: "none", "None", "NONE" are not algorithms here.
    let alg = Algorithm::from_str(&header.alg).map_err(|_| TokenError::BadAlgorithm)?;
    if !allowed.contains(&alg) {
        return Err(TokenError::BadAlgorithm);
    }
    // We implement no JWS extension, so any `crit` (RFC 7515 §4.1.11), and `b64`
    // (RFC 7797, which changes what is signed), is refused.
    // Presence is what counts: `"crit": null` deserializes to `None` in `Header`, yet it is a
    // malformed critical header, not an absent one.
    if header_members.contains_key("crit") || header_members.contains_key("b64") {
        return Err(TokenError::UnsupportedCritical);
    }
    b64(signature)?;
    let payload = b64(payload_b64)?;
    let claims: Option<Map<String, Value>> = serde_json::from_slice(&payload).ok();
    let kid = match header.kid {
        None if header_members.contains_key("kid") => return Err(TokenError::Malformed),
        None => None,
        Some(Value::String(kid)) => Some(kid),
        Some(_) => return Err(TokenError::Malformed),
    };
    Ok(CompactToken {
        signing_input,
        signature,
        header_bytes,
        alg,
        kid,
        claims,
    })
}

impl CompiledJwt {
    pub fn new(
        config: &JwtConfig,
        scope: super::api_key::ConsumerScope,
        runtime: &AuthRuntime,
    ) -> Self {
        let issuers = config
            .issuers
            .iter()
            .map(|i| {
                let source = match &i.jwks_uri {
                    Some(uri) => JwksSource::Uri(uri.clone()),
                    None => JwksSource::Discovery(i.issuer.clone()),
                };
                CompiledIssuer {
                    issuer: i.issuer.clone(),
                    audiences: i.audiences.clone(),
                    consumer_claim: i.consumer_claim.clone(),
                    jwks: runtime.jwks(source),
                }
            })
            .collect();
        CompiledJwt {
            algorithms: config
                .algorithms
                .iter()
                .filter_map(|a| Algorithm::from_str(a).ok())
                .collect(),
            consumer_keys: config.consumer_keys,
            key_claim: config.key_claim.clone(),
            issuers,
            require_exp: config.claims_to_verify.iter().any(|c| c == "exp"),
            require_nbf: config.claims_to_verify.iter().any(|c| c == "nbf"),
            require_iat: config.claims_to_verify.iter().any(|c| c == "iat"),
            max_lifetime_secs: config.maximum_expiration_secs,
            skew_secs: config.clock_skew_secs,
            scope,
            cache: TtlCache::new(TOKEN_CACHE_CAPACITY),
            clock: runtime.clock.clone(),
        }
    }

    pub async fn verify(&self, token: &str, keys: &KeyStore) -> Result<Arc<Principal>, TokenError> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(TokenError::Malformed);
        }
        let now_ms = self.clock.now_ms();
        let cache_key = key_of(&[token.as_bytes()]);
        if let Some(hit) = self.cache.get(&cache_key, now_ms) {
            return Ok(hit);
        }

        let CompactToken {
            signing_input,
            signature,
            header_bytes,
            alg,
            kid,
            claims,
        } = parse_compact(token, &self.algorithms)?;
        let kid = kid.as_deref();

        // 1. A consumer key named by keyClaim (header parameter first, then claim).
        let consumer_key = if self.consumer_keys {
            let selector = if self.key_claim == "kid" {
                kid.map(str::to_string)
            } else {
                let header_map: Map<String, Value> =
                    serde_json::from_slice(&header_bytes).map_err(|_| TokenError::Malformed)?;
                header_map
                    .get(&self.key_claim)
                    .or_else(|| claims.as_ref().and_then(|c| c.get(&self.key_claim)))
                    .and_then(Value::as_str)
                    .map(str::to_string)
            };
            selector.and_then(|s| keys.jwt_key(&self.scope, &s))
        } else {
            None
        };

        let (consumer, issuer) = if let Some(entry) = consumer_key {
            if !entry.key.allows(alg) {
                return Err(TokenError::BadAlgorithm);
            }
            check_signature(
                signature,
                signing_input,
                std::slice::from_ref(&entry.key),
                alg,
            )?;
            (Some(entry.consumer), None)
        } else {
            // 2. An external issuer: the only one, or the one the (unverified) iss names.
            let issuer = match self.issuers.as_slice() {
                [] => return Err(TokenError::UnknownKey),
                [only] => only,
                many => {
                    let iss = claims
                        .as_ref()
                        .and_then(|c| c.get("iss"))
                        .and_then(Value::as_str)
                        .ok_or(TokenError::WrongIssuer)?;
                    many.iter()
                        .find(|i| i.issuer == iss)
                        .ok_or(TokenError::WrongIssuer)?
                }
            };
            let candidates = issuer.jwks.lookup(kid, alg).await.map_err(|e| match e {
                JwksError::UnknownKey => TokenError::UnknownKey,
                JwksError::Unavailable => TokenError::KeysUnavailable,
            })?;
            check_signature(signature, signing_input, &candidates, alg)?;
            (None, Some(issuer))
        };

        // Only now is the payload trusted.
        let claims = claims.ok_or(TokenError::InvalidClaims)?;
        let now = (now_ms / 1000) as i64;
        let skew = self.skew_secs as i64;
        let exp = number(&claims, "exp")?;
        let nbf = number(&claims, "nbf")?;
        let iat = number(&claims, "iat")?;
        if (self.require_exp && exp.is_none())
            || (self.require_nbf && nbf.is_none())
            || (self.require_iat && iat.is_none())
        {
            return Err(TokenError::MissingClaim);
        }
        if exp.is_some_and(|exp| now > exp.saturating_add(skew)) {
            return Err(TokenError::Expired);
        }
        if nbf.is_some_and(|nbf| now.saturating_add(skew) < nbf)
            || iat.is_some_and(|iat| now.saturating_add(skew) < iat)
        {
            return Err(TokenError::NotYetValid);
        }
        if let Some(max) = self.max_lifetime_secs {
            let exp = exp.ok_or(TokenError::MissingClaim)?;
            if exp.saturating_sub(now) > max as i64 + skew {
                return Err(TokenError::TooLongLived);
            }
        }
        let mut consumer = consumer;
        if let Some(issuer) = issuer {
            if claims.get("iss").and_then(Value::as_str) != Some(issuer.issuer.as_str()) {
                return Err(TokenError::WrongIssuer);
            }
            if !issuer.audiences.is_empty() {
                let matches = |a: &Value| {
                    a.as_str()
                        .is_some_and(|a| issuer.audiences.iter().any(|x| x == a))
                };
                let ok = match claims.get("aud") {
                    Some(Value::Array(items)) => items.iter().any(matches),
                    Some(single) => matches(single),
                    None => false,
                };
                if !ok {
                    return Err(TokenError::WrongAudience);
                }
            }
            if let Some(claim) = &issuer.consumer_claim {
                let name = claims
                    .get(claim)
                    .and_then(Value::as_str)
                    .ok_or(TokenError::UnknownConsumer)?;
                consumer = Some(
                    keys.consumer_by_name(&self.scope, name)
                        .ok_or(TokenError::UnknownConsumer)?,
                );
            }
        }

        let principal = Arc::new(Principal {
            consumer,
            subject: claims
                .get("sub")
                .and_then(Value::as_str)
                .and_then(|s| HeaderValue::from_str(s).ok()),
            scopes: scopes_of(&claims),
            claims: Some(claims),
        });
        let mut expires = now_ms + MAX_CACHE_MS;
        if let Some(exp) = exp {
            expires = expires.min(u64::try_from(exp).unwrap_or(0).saturating_mul(1000));
        }
        self.cache
            .insert(cache_key, principal.clone(), expires, now_ms);
        Ok(principal)
    }
}

fn check_signature(
    signature: &str,
    signing_input: &str,
    keys: &[Arc<VerifyKey>],
    alg: Algorithm,
) -> Result<(), TokenError> {
    for key in keys {
        if key.allows(alg)
            && jsonwebtoken::crypto::verify(signature, signing_input.as_bytes(), &key.key, alg)
                .unwrap_or(false)
        {
            return Ok(());
        }
    }
    Err(TokenError::InvalidSignature)
}

/// Whether a bearer token has the JWS compact shape (three dot-separated parts); opaque
/// tokens go to introspection instead.
pub fn looks_like_jwt(token: &str) -> bool {
    token.bytes().filter(|b| *b == b'.').count() == 2
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn encoded(header: &[u8], payload: &[u8], signature: &[u8]) -> String {
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        format!(
            "{}.{}.{}",
            b64.encode(header),
            b64.encode(payload),
            b64.encode(signature)
        )
    }

    /// Fuzz crashes (jwt_compact): invalid UTF-8 or an out-of-range number inside a header
    /// member the parser ignores was accepted; the header must be UTF-8 JSON as a whole.
    #[test]
    fn fuzz_header_members_the_parser_ignores_must_be_valid_json() {
        let token = encoded(
            b"{\"alg\":\"EdDSA\",\"cr)t\":[244.44e99999999\t\t\t\t\t]}",
            b";HHHHHH}",
            b"zx",
        );
        assert!(matches!(
            parse_compact(&token, &[Algorithm::EdDSA]),
            Err(TokenError::Malformed)
        ));
        let token = encoded(
            b"{\"alg\":\"RS256\",\"kid\":\"key-1\",\"typ\":\"JW\x80\"}",
            b"{\"sub\":\"alice\"}",
            &[1; 64],
        );
        assert!(matches!(
            parse_compact(&token, &[Algorithm::RS256]),
            Err(TokenError::Malformed)
        ));
        // The same header in valid UTF-8 parses.
        let token = encoded(
            b"{\"alg\":\"RS256\",\"kid\":\"key-1\",\"typ\":\"JW\xc2\x80\"}",
            b"{\"sub\":\"alice\"}",
            &[1; 64],
        );
        let parsed = parse_compact(&token, &[Algorithm::RS256]).unwrap();
        assert_eq!(parsed.kid.as_deref(), Some("key-1"));
        assert_eq!(parsed.alg, Algorithm::RS256);
    }
}
