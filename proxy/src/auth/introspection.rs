//! OAuth2 token introspection (RFC 7662) for opaque bearer tokens.
//!
//! Positive answers are cached by the token's SHA-256 for `cacheTtl`, never beyond the
//! token's `exp`. Negative answers are not cached: a token that becomes valid must work.
//! Any failure to get a definite answer (timeout, 5xx, unparseable body) denies with 503.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use http::{header, HeaderValue, Request};
use http_body_util::Full;
use portcullis_compiler::config::IntrospectionConfig;
use serde_json::Value;

use super::api_key::KeyStore;
use super::cache::{key_of, TtlCache};
use super::clock::SharedClock;
use super::identity::Principal;
use super::idp::{IdpClient, MAX_DOCUMENT_BYTES};
use super::jwt::{TokenError, MAX_TOKEN_BYTES};
use super::AuthRuntime;

const CACHE_CAPACITY: usize = 10_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum IntrospectionError {
    #[error(transparent)]
    Token(#[from] TokenError),
    #[error("introspection endpoint unavailable")]
    Unavailable,
}

pub struct CompiledIntrospection {
    url: String,
    authorization: HeaderValue,
    cache_ttl_ms: u64,
    timeout: Duration,
    cache: TtlCache<Principal>,
    client: IdpClient,
    clock: SharedClock,
}

/// RFC 6749 §2.3.1: client id and secret are form-encoded before Basic encoding.
fn form_encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'*' => {
                out.push(b as char)
            }
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// RFC 7662 §2.2: `exp` and `nbf` are integer seconds since the epoch. A member that is
/// present but not a non-negative integer (a float, a string, a negative number, `null`)
/// makes the answer invalid: read as "no expiry" it would be accepted and cached for the
/// whole `cacheTtl`.
fn seconds_ms(answer: &Value, member: &str) -> Result<Option<u64>, IntrospectionError> {
    match answer.get(member) {
        None => Ok(None),
        Some(value) => value
            .as_u64()
            .map(|secs| Some(secs.saturating_mul(1000)))
            .ok_or(IntrospectionError::Token(TokenError::InvalidClaims)),
    }
}

impl CompiledIntrospection {
    pub fn new(config: &IntrospectionConfig, secret: Option<&str>, runtime: &AuthRuntime) -> Self {
        let credentials = format!(
            "{}:{}",
            form_encode(&config.client_id),
            form_encode(secret.unwrap_or(""))
        );
        let basic = base64::engine::general_purpose::STANDARD.encode(credentials);
        CompiledIntrospection {
            url: config.url.clone(),
            authorization: HeaderValue::from_str(&format!("Basic {basic}"))
                .unwrap_or(HeaderValue::from_static("Basic")),
            cache_ttl_ms: config.cache_ttl_secs * 1000,
            timeout: Duration::from_millis(config.timeout_ms.max(1)),
            cache: TtlCache::new(CACHE_CAPACITY),
            client: runtime.client.clone(),
            clock: runtime.clock.clone(),
        }
    }

    pub async fn introspect(
        &self,
        token: &str,
        keys: &KeyStore,
        scope: &super::api_key::ConsumerScope,
    ) -> Result<Arc<Principal>, IntrospectionError> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(TokenError::Malformed.into());
        }
        let cache_key = key_of(&[token.as_bytes()]);
        if self.cache_ttl_ms > 0 {
            if let Some(hit) = self.cache.get(&cache_key, self.clock.now_ms()) {
                return Ok(hit);
            }
        }
        let body = format!("token={}&token_type_hint=access_token", form_encode(token));
        let request = Request::post(&self.url)
            .header(header::AUTHORIZATION, self.authorization.clone())
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .header(header::ACCEPT, "application/json")
            .body(Full::new(Bytes::from(body)))
            .map_err(|_| IntrospectionError::Unavailable)?;
        let response = self
            .client
            .send(request, self.timeout, MAX_DOCUMENT_BYTES)
            .await
            .map_err(|_| IntrospectionError::Unavailable)?;
        if !response.status.is_success() {
            return Err(IntrospectionError::Unavailable);
        }
        let answer: Value =
            serde_json::from_slice(&response.body).map_err(|_| IntrospectionError::Unavailable)?;
        if answer.get("active").and_then(Value::as_bool) != Some(true) {
            return Err(TokenError::Inactive.into());
        }
        let now_ms = self.clock.now_ms();
        let exp_ms = seconds_ms(&answer, "exp")?;
        if exp_ms.is_some_and(|exp| exp <= now_ms) {
            return Err(TokenError::Expired.into());
        }
        if seconds_ms(&answer, "nbf")?.is_some_and(|nbf| nbf > now_ms) {
            return Err(TokenError::NotYetValid.into());
        }
        let client_id = answer.get("client_id").and_then(Value::as_str);
        if client_id.is_some_and(|c| keys.is_disabled_client_id(c)) {
            // A disabled consumer's client: its tokens stop working like its keys do.
            return Err(TokenError::UnknownConsumer.into());
        }
        let consumer = client_id.and_then(|c| keys.consumer_by_client_id(scope, c));
        let principal = Arc::new(Principal {
            consumer,
            subject: answer
                .get("sub")
                .and_then(Value::as_str)
                .and_then(|s| HeaderValue::from_str(s).ok()),
            scopes: answer
                .get("scope")
                .and_then(Value::as_str)
                .map(|s| s.split_ascii_whitespace().map(str::to_string).collect())
                .unwrap_or_default(),
            claims: None,
        });
        if self.cache_ttl_ms > 0 {
            let expires = exp_ms.map_or(now_ms + self.cache_ttl_ms, |exp| {
                exp.min(now_ms + self.cache_ttl_ms)
            });
            self.cache
                .insert(cache_key, principal.clone(), expires, now_ms);
        }
        Ok(principal)
    }
}
