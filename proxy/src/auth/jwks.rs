//! JWKS caches for external issuers: one per key source, shared by every route and config
//! generation that names it, so a reload neither refetches nor forgets keys.
//!
//! - A key set older than the refresh interval is refreshed in the background while the old
//!   one keeps serving.
//! - A `kid` the cache does not know triggers one synchronous refetch, at most once per
//!   cooldown: rotation works without a restart, and a flood of bogus kids costs the IdP one
//!   request per cooldown.
//! - A failed fetch keeps the previous keys (stale-if-error) up to `max_stale`; with no key
//!   ever loaded the request is denied (fail closed).
//! - Keys marked `use: enc`, whose `key_ops` lack `verify`, symmetric keys (a published
//!   HMAC key lets anyone sign) and RSA keys under 2048 bits are never used.

use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use base64::Engine;
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, DecodingKey};
use serde_json::Value;

use super::clock::SharedClock;
use super::idp::IdpClient;

const MIN_RSA_MODULUS_BYTES: usize = 256;
const MAX_CANDIDATES: usize = 8;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyFamily {
    Rsa,
    EcP256,
    EcP384,
    Ed25519,
    Hmac,
}

/// One verification key with what it may verify.
pub struct VerifyKey {
    pub kid: Option<String>,
    /// Set when the key (JWK `alg`, or the consumer's configured algorithm) pins one.
    pub alg: Option<Algorithm>,
    pub family: KeyFamily,
    pub key: DecodingKey,
}

impl VerifyKey {
    /// Whether `alg` may be verified with this key: the algorithm must belong to the key's
    /// family (this is what stops HS256-with-an-RSA-public-key) and match a pinned `alg`.
    pub fn allows(&self, alg: Algorithm) -> bool {
        let family_ok = matches!(
            (self.family, alg),
            (
                KeyFamily::Rsa,
                Algorithm::RS256
                    | Algorithm::RS384
                    | Algorithm::RS512
                    | Algorithm::PS256
                    | Algorithm::PS384
                    | Algorithm::PS512
            ) | (KeyFamily::EcP256, Algorithm::ES256)
                | (KeyFamily::EcP384, Algorithm::ES384)
                | (KeyFamily::Ed25519, Algorithm::EdDSA)
                | (
                    KeyFamily::Hmac,
                    Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512
                )
        );
        family_ok && self.alg.is_none_or(|pinned| pinned == alg)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JwksError {
    /// Keys are loaded but none matches the token.
    UnknownKey,
    /// No usable key set (never loaded, or stale beyond `max_stale`).
    Unavailable,
}

#[derive(Debug, Clone)]
pub struct JwksSettings {
    pub refresh: Duration,
    pub cooldown: Duration,
    pub max_stale: Duration,
    pub timeout: Duration,
}

impl Default for JwksSettings {
    fn default() -> Self {
        JwksSettings {
            refresh: Duration::from_secs(300),
            cooldown: Duration::from_secs(5),
            max_stale: Duration::from_secs(24 * 3600),
            timeout: Duration::from_secs(5),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum JwksSource {
    Uri(String),
    /// OIDC discovery from this issuer URL.
    Discovery(String),
}

#[derive(Default)]
struct KeySet {
    keys: Vec<Arc<VerifyKey>>,
    fetched_ms: u64,
    loaded: bool,
}

pub struct JwksCache {
    source: JwksSource,
    client: IdpClient,
    clock: SharedClock,
    settings: JwksSettings,
    keys: ArcSwap<KeySet>,
    last_attempt_ms: AtomicU64,
    attempted: AtomicBool,
    refreshing: AtomicBool,
    fetch_lock: tokio::sync::Mutex<()>,
    fetches: AtomicU64,
}

impl JwksCache {
    pub fn new(
        source: JwksSource,
        client: IdpClient,
        clock: SharedClock,
        settings: JwksSettings,
    ) -> Self {
        JwksCache {
            source,
            client,
            clock,
            settings,
            keys: ArcSwap::from_pointee(KeySet::default()),
            last_attempt_ms: AtomicU64::new(0),
            attempted: AtomicBool::new(false),
            refreshing: AtomicBool::new(false),
            fetch_lock: tokio::sync::Mutex::new(()),
            fetches: AtomicU64::new(0),
        }
    }

    /// How many fetches were attempted (tests, diagnostics).
    pub fn fetch_count(&self) -> u64 {
        self.fetches.load(Ordering::Relaxed)
    }

    pub async fn lookup(
        self: &Arc<Self>,
        kid: Option<&str>,
        alg: Algorithm,
    ) -> Result<Vec<Arc<VerifyKey>>, JwksError> {
        let now = self.clock.now_ms();
        let set = self.keys.load();
        if set.loaded
            && now >= set.fetched_ms + self.settings.refresh.as_millis() as u64
            && self.claim_attempt(now)
        {
            self.spawn_refresh();
        }
        if let Some(found) = self.matching(&set, kid, alg, now) {
            return Ok(found);
        }
        if self.claim_attempt(now) {
            self.fetch_now().await;
        } else {
            // Someone else may be fetching right now (cold start): wait for that result.
            drop(self.fetch_lock.lock().await);
        }
        let set = self.keys.load();
        match self.matching(&set, kid, alg, self.clock.now_ms()) {
            Some(found) => Ok(found),
            None if self.usable(&set, self.clock.now_ms()) => Err(JwksError::UnknownKey),
            None => Err(JwksError::Unavailable),
        }
    }

    fn usable(&self, set: &KeySet, now: u64) -> bool {
        set.loaded && now <= set.fetched_ms + self.settings.max_stale.as_millis() as u64
    }

    fn matching(
        &self,
        set: &KeySet,
        kid: Option<&str>,
        alg: Algorithm,
        now: u64,
    ) -> Option<Vec<Arc<VerifyKey>>> {
        if !self.usable(set, now) {
            return None;
        }
        let found: Vec<Arc<VerifyKey>> = set
            .keys
            .iter()
            .filter(|k| kid.is_none_or(|kid| k.kid.as_deref() == Some(kid)) && k.allows(alg))
            .take(MAX_CANDIDATES)
            .cloned()
            .collect();
        (!found.is_empty()).then_some(found)
    }

    /// At most one fetch attempt per cooldown, whoever asks.
    fn claim_attempt(&self, now: u64) -> bool {
        let cooldown = self.settings.cooldown.as_millis() as u64;
        if !self.attempted.swap(true, Ordering::AcqRel) {
            self.last_attempt_ms.store(now, Ordering::Release);
            return true;
        }
        let last = self.last_attempt_ms.load(Ordering::Acquire);
        now >= last.saturating_add(cooldown)
            && self
                .last_attempt_ms
                .compare_exchange(last, now, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
    }

    fn spawn_refresh(self: &Arc<Self>) {
        if self.refreshing.swap(true, Ordering::AcqRel) {
            return;
        }
        let cache = self.clone();
        tokio::spawn(async move {
            cache.fetch_now().await;
            cache.refreshing.store(false, Ordering::Release);
        });
    }

    async fn fetch_now(&self) {
        let _guard = self.fetch_lock.lock().await;
        self.fetches.fetch_add(1, Ordering::Relaxed);
        match self.fetch().await {
            Some(keys) => {
                self.keys.store(Arc::new(KeySet {
                    keys,
                    fetched_ms: self.clock.now_ms(),
                    loaded: true,
                }));
            }
            None => {
                tracing::warn!(source = ?self.source, "JWKS fetch failed; keeping the previous keys");
            }
        }
    }

    async fn fetch(&self) -> Option<Vec<Arc<VerifyKey>>> {
        let uri = match &self.source {
            JwksSource::Uri(uri) => uri.clone(),
            JwksSource::Discovery(issuer) => self.discover(issuer).await?,
        };
        let response = self.client.get(&uri, self.settings.timeout).await.ok()?;
        if !response.status.is_success() {
            return None;
        }
        let document: Value = serde_json::from_slice(&response.body).ok()?;
        let keys = document.get("keys")?.as_array()?;
        Some(keys.iter().filter_map(parse_jwk).map(Arc::new).collect())
    }

    async fn discover(&self, issuer: &str) -> Option<String> {
        let url = format!(
            "{}/.well-known/openid-configuration",
            issuer.trim_end_matches('/')
        );
        let response = self.client.get(&url, self.settings.timeout).await.ok()?;
        if !response.status.is_success() {
            return None;
        }
        let document: Value = serde_json::from_slice(&response.body).ok()?;
        // OIDC Discovery §4.3: the document must name the issuer it was fetched for.
        if document.get("issuer")?.as_str()? != issuer {
            tracing::warn!(issuer, "discovery document names another issuer");
            return None;
        }
        let jwks_uri = document.get("jwks_uri")?.as_str()?;
        jwks_uri
            .parse::<http::Uri>()
            .ok()
            .filter(|u| matches!(u.scheme_str(), Some("http" | "https")))
            .map(|_| jwks_uri.to_string())
    }
}

/// One JWK → a verification key, or `None` if it must not or cannot be used.
pub fn parse_jwk(value: &Value) -> Option<VerifyKey> {
    if let Some(usage) = value.get("use") {
        if usage.as_str() != Some("sig") {
            return None;
        }
    }
    if let Some(ops) = value.get("key_ops") {
        if !ops
            .as_array()?
            .iter()
            .any(|op| op.as_str() == Some("verify"))
        {
            return None;
        }
    }
    let alg = match value.get("alg") {
        None => None,
        Some(alg) => Some(Algorithm::from_str(alg.as_str()?).ok()?),
    };
    let family = match (
        value.get("kty")?.as_str()?,
        value.get("crv").and_then(Value::as_str),
    ) {
        ("RSA", _) => {
            let n = value.get("n")?.as_str()?;
            let modulus = base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(n)
                .ok()?;
            let significant = modulus.iter().skip_while(|b| **b == 0).count();
            if significant < MIN_RSA_MODULUS_BYTES {
                return None;
            }
            KeyFamily::Rsa
        }
        ("EC", Some("P-256")) => KeyFamily::EcP256,
        ("EC", Some("P-384")) => KeyFamily::EcP384,
        ("OKP", Some("Ed25519")) => KeyFamily::Ed25519,
        _ => return None,
    };
    let jwk: Jwk = serde_json::from_value(value.clone()).ok()?;
    let key = DecodingKey::from_jwk(&jwk).ok()?;
    let kid = value.get("kid").and_then(Value::as_str).map(str::to_string);
    let key = VerifyKey {
        kid,
        alg,
        family,
        key,
    };
    // A pinned alg from another family (an RSA key labelled ES256) makes the key useless.
    if let Some(alg) = alg {
        if !key.allows(alg) {
            return None;
        }
    }
    Some(key)
}
