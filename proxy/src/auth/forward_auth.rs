//! Forward auth with NGINX `auth_request` semantics.
//!
//! A subrequest with the original method, `X-Original-Method`, `X-Original-URI` and the
//! configured request headers, never the body. 2xx allows and hands the configured response
//! headers to the upstream request; 401/403 are passed to the client (with the service's
//! `WWW-Authenticate`); anything else, or no answer within the timeout, is a 503. Allowed
//! answers are cached per credential (the copied request headers) for `cacheTtl`, like an
//! API Gateway authorizer: the decision is assumed not to depend on the path.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::request::Parts;
use http::{header, HeaderMap, HeaderName, HeaderValue, Request, StatusCode};
use http_body_util::Full;
use portcullis_compiler::config::ForwardAuthConfig;

use super::cache::{key_of, TtlCache};
use super::clock::SharedClock;
use super::idp::IdpClient;
use super::AuthRuntime;

const CACHE_CAPACITY: usize = 10_000;
/// Auth services answer with a small body (an error page at most); we never use it.
const MAX_BODY: usize = 64 * 1024;

#[derive(Debug, Clone, thiserror::Error)]
pub enum ForwardAuthError {
    #[error("authentication service denied the request")]
    Denied {
        status: StatusCode,
        challenge: Option<HeaderValue>,
    },
    #[error("authentication service unavailable")]
    Unavailable,
}

pub type Granted = Arc<Vec<(HeaderName, HeaderValue)>>;

pub struct CompiledForwardAuth {
    url: String,
    request_headers: Vec<HeaderName>,
    response_headers: Vec<HeaderName>,
    cache_ttl_ms: u64,
    timeout: Duration,
    cache: TtlCache<Vec<(HeaderName, HeaderValue)>>,
    client: IdpClient,
    clock: SharedClock,
}

impl CompiledForwardAuth {
    pub fn new(config: &ForwardAuthConfig, runtime: &AuthRuntime) -> Self {
        let names = |list: &[String]| {
            list.iter()
                .filter_map(|h| HeaderName::from_bytes(h.as_bytes()).ok())
                .collect::<Vec<_>>()
        };
        CompiledForwardAuth {
            url: config.url.trim_end_matches('/').to_string(),
            request_headers: names(&config.copy_request_headers),
            response_headers: names(&config.copy_response_headers),
            cache_ttl_ms: config.cache_ttl_secs * 1000,
            timeout: Duration::from_millis(config.timeout_ms.max(1)),
            cache: TtlCache::new(CACHE_CAPACITY),
            client: runtime.client.clone(),
            clock: runtime.clock.clone(),
        }
    }

    /// Whether the request carries anything this method could judge: one of the copied
    /// headers, or always when no header is configured (the service decides on the URI).
    pub fn credential_present(&self, parts: &Parts) -> bool {
        self.request_headers.is_empty()
            || self
                .request_headers
                .iter()
                .any(|h| parts.headers.contains_key(h))
    }

    /// Whether `name` is one of the request headers sent to the auth service.
    pub fn copies(&self, name: &HeaderName) -> bool {
        self.request_headers.contains(name)
    }

    /// Removes the client's copies of every `copyResponseHeaders` name; the granted values
    /// are added back afterwards (`AuthContext::apply_upstream`).
    pub fn strip_response_headers(&self, headers: &mut HeaderMap) {
        for name in &self.response_headers {
            headers.remove(name);
        }
    }

    pub async fn check(&self, parts: &Parts) -> Result<Granted, ForwardAuthError> {
        // Caching needs a credential to key on; without copied headers every call is asked.
        let cacheable = self.cache_ttl_ms > 0 && !self.request_headers.is_empty();
        let cache_key = cacheable.then(|| {
            let mut fields: Vec<&[u8]> = Vec::new();
            for name in &self.request_headers {
                fields.push(name.as_str().as_bytes());
                for value in parts.headers.get_all(name) {
                    fields.push(value.as_bytes());
                }
            }
            key_of(&fields)
        });
        if let Some(key) = &cache_key {
            if let Some(hit) = self.cache.get(key, self.clock.now_ms()) {
                return Ok(hit);
            }
        }
        let original_uri = parts
            .uri
            .path_and_query()
            .map_or("/", |pq| pq.as_str())
            .to_string();
        let mut builder = Request::builder()
            .method(parts.method.clone())
            .uri(&self.url)
            .header("x-original-method", parts.method.as_str())
            .header("x-original-uri", original_uri)
            .header(header::CONTENT_LENGTH, "0");
        for name in &self.request_headers {
            for value in parts.headers.get_all(name) {
                builder = builder.header(name, value);
            }
        }
        let request = builder
            .body(Full::new(Bytes::new()))
            .map_err(|_| ForwardAuthError::Unavailable)?;
        let response = self
            .client
            .send(request, self.timeout, MAX_BODY)
            .await
            .map_err(|_| ForwardAuthError::Unavailable)?;
        match response.status {
            s if s.is_success() => {
                let granted: Vec<(HeaderName, HeaderValue)> = self
                    .response_headers
                    .iter()
                    .filter_map(|name| {
                        response
                            .headers
                            .get(name)
                            .map(|v| (name.clone(), v.clone()))
                    })
                    .collect();
                let granted = Arc::new(granted);
                if let Some(key) = cache_key {
                    let now = self.clock.now_ms();
                    self.cache
                        .insert(key, granted.clone(), now + self.cache_ttl_ms, now);
                }
                Ok(granted)
            }
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => Err(ForwardAuthError::Denied {
                status: response.status,
                challenge: response.headers.get(header::WWW_AUTHENTICATE).cloned(),
            }),
            _ => Err(ForwardAuthError::Unavailable),
        }
    }
}
