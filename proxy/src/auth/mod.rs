//! Authentication and authorization (pipeline step 7, docs/architecture.md).
//!
//! Methods: client certificate (`mtls`), API key (`api_key`), JWT (`jwt`, keys from `jwks`), OAuth2 introspection
//! (`introspection`), forward auth (`forward_auth`); then `authorize`; `identity` carries the
//! result to the upstream request.
//!
//! # Several methods on one route
//! Methods are tried in a fixed order — MutualTls, ApiKey, Jwt, OAuth2Introspection,
//! ForwardAuth — and only when their credential is present: a client certificate verified in
//! the handshake by the route's CA (`Optional` client auth lets clients without one fall
//! through to the other methods); the API key header/parameter; a bearer token
//! (`Authorization: Bearer`), which goes to Jwt when it has the JWS compact shape or Jwt is
//! the only bearer method, else to introspection; forward auth whenever one of its copied
//! headers is present (or always, with none configured). The first method that succeeds
//! authenticates. If every presented credential fails, the request is denied with the first
//! failure (so a wrong API key is reported even when no other credential is sent). With no
//! credential at all: 401 `missing`, or consumer `anonymous` when `optional: true` — a
//! presented but invalid credential is never downgraded to anonymous.

pub mod api_key;
pub mod authorize;
pub mod cache;
pub mod clock;
pub mod forward_auth;
pub mod identity;
pub mod idp;
pub mod introspection;
pub mod jwks;
pub mod jwt;
pub mod mtls;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use http::request::Parts;
use http::{header, HeaderValue, StatusCode};
use portcullis_compiler::config::{AuthMethodConfig, AuthenticationConfig, SecretConfig};

pub use api_key::{
    Consumer, ConsumerScope, KeyStore, KeyStoreError, ANONYMOUS, DEFAULT_API_KEY_HEADER,
};
pub use authorize::authorize;
pub use identity::{AuthContext, CredentialType, Identity, Principal};

use api_key::ApiKeySource;
use clock::{SharedClock, SystemClock};
use forward_auth::{CompiledForwardAuth, ForwardAuthError};
use idp::IdpClient;
use introspection::{CompiledIntrospection, IntrospectionError};
use jwks::{JwksCache, JwksSettings, JwksSource};
use jwt::{CompiledJwt, TokenError};

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("missing credentials")]
    MissingCredentials,
    #[error("invalid credentials")]
    InvalidCredentials,
    #[error("invalid token")]
    Token(TokenError),
    #[error("authentication service unavailable")]
    Unavailable(&'static str),
    #[error("authentication denied")]
    ForwardDenied {
        status: StatusCode,
        challenge: Option<HeaderValue>,
    },
    #[error("consumer is not allowed")]
    GroupNotAllowed,
    #[error("consumer is not allowed")]
    GroupDenied,
    #[error("insufficient scope")]
    InsufficientScope,
    #[error("missing role")]
    MissingRole,
}

impl AuthError {
    pub fn reason(&self) -> &'static str {
        match self {
            AuthError::MissingCredentials => "missing_credentials",
            AuthError::InvalidCredentials => "invalid_credentials",
            AuthError::Token(e) => e.reason(),
            AuthError::Unavailable(reason) => reason,
            AuthError::ForwardDenied { .. } => "forward_auth_denied",
            AuthError::GroupNotAllowed => "group_not_allowed",
            AuthError::GroupDenied => "group_denied",
            AuthError::InsufficientScope => "insufficient_scope",
            AuthError::MissingRole => "missing_role",
        }
    }

    pub fn is_authentication(&self) -> bool {
        matches!(
            self,
            AuthError::MissingCredentials
                | AuthError::InvalidCredentials
                | AuthError::Token(_)
                | AuthError::Unavailable(_)
                | AuthError::ForwardDenied { .. }
        )
    }

    pub fn status(&self) -> StatusCode {
        match self {
            AuthError::MissingCredentials | AuthError::InvalidCredentials => {
                StatusCode::UNAUTHORIZED
            }
            AuthError::Token(TokenError::KeysUnavailable) | AuthError::Unavailable(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            AuthError::Token(_) => StatusCode::UNAUTHORIZED,
            AuthError::ForwardDenied { status, .. } => *status,
            AuthError::GroupNotAllowed
            | AuthError::GroupDenied
            | AuthError::InsufficientScope
            | AuthError::MissingRole => StatusCode::FORBIDDEN,
        }
    }

    /// `WWW-Authenticate` for this denial (RFC 6750 for bearer tokens). The description is
    /// the reason code, never the credential or a key id.
    pub fn challenge(&self, bearer: bool) -> Option<HeaderValue> {
        let text = match self {
            AuthError::Token(TokenError::KeysUnavailable) | AuthError::Unavailable(_) => {
                return None
            }
            AuthError::ForwardDenied { challenge, .. } => return challenge.clone(),
            AuthError::Token(e) => format!(
                "Bearer realm=\"portcullis\", error=\"invalid_token\", error_description=\"{}\"",
                e.reason()
            ),
            AuthError::InsufficientScope => {
                "Bearer realm=\"portcullis\", error=\"insufficient_scope\"".to_string()
            }
            AuthError::MissingCredentials | AuthError::InvalidCredentials if bearer => {
                "Bearer realm=\"portcullis\"".to_string()
            }
            AuthError::MissingCredentials | AuthError::InvalidCredentials => {
                "ApiKey realm=\"portcullis\"".to_string()
            }
            _ => return None,
        };
        HeaderValue::from_str(&text).ok()
    }
}

impl From<IntrospectionError> for AuthError {
    fn from(e: IntrospectionError) -> Self {
        match e {
            IntrospectionError::Token(t) => AuthError::Token(t),
            IntrospectionError::Unavailable => AuthError::Unavailable("introspection_unavailable"),
        }
    }
}

impl From<ForwardAuthError> for AuthError {
    fn from(e: ForwardAuthError) -> Self {
        match e {
            ForwardAuthError::Denied { status, challenge } => {
                AuthError::ForwardDenied { status, challenge }
            }
            ForwardAuthError::Unavailable => AuthError::Unavailable("forward_auth_unavailable"),
        }
    }
}

/// Process options for authentication (clock, CA bundle, JWKS timing).
#[derive(Clone)]
pub struct AuthOptions {
    pub clock: SharedClock,
    /// PEM CA certificates trusted for IdP HTTPS in addition to the system roots.
    pub extra_ca_pem: Option<Vec<u8>>,
    pub jwks: JwksSettings,
}

impl Default for AuthOptions {
    fn default() -> Self {
        AuthOptions {
            clock: Arc::new(SystemClock),
            extra_ca_pem: None,
            jwks: JwksSettings::default(),
        }
    }
}

/// Process-wide authentication state that outlives config swaps: the IdP client and the
/// JWKS caches (by source, so routes and generations naming one IdP share its keys).
pub struct AuthRuntime {
    pub clock: SharedClock,
    pub client: IdpClient,
    settings: JwksSettings,
    jwks: Mutex<HashMap<JwksSource, Arc<JwksCache>>>,
}

#[derive(Debug, thiserror::Error)]
#[error("authentication runtime: {0}")]
pub struct AuthRuntimeError(#[from] idp::TlsSetupError);

impl AuthRuntime {
    pub fn new(options: &AuthOptions) -> Result<Self, AuthRuntimeError> {
        Ok(AuthRuntime {
            clock: options.clock.clone(),
            client: IdpClient::new(options.extra_ca_pem.as_deref())?,
            settings: options.jwks.clone(),
            jwks: Mutex::new(HashMap::new()),
        })
    }

    /// The cache for a key source; called at config build time, never per request.
    pub fn jwks(&self, source: JwksSource) -> Arc<JwksCache> {
        let mut caches = match self.jwks.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        caches
            .entry(source.clone())
            .or_insert_with(|| {
                Arc::new(JwksCache::new(
                    source,
                    self.client.clone(),
                    self.clock.clone(),
                    self.settings.clone(),
                ))
            })
            .clone()
    }
}

pub struct CompiledAuth {
    config: AuthenticationConfig,
    /// Whose consumers authenticate here: the route's namespace and the ones it names.
    scope: ConsumerScope,
    api_key: Option<ApiKeySource>,
    // Boxed: each is hundreds of bytes, a route uses few of them, and the compiled routes
    // are kept in one vector (at 10k routes, ~11 MB of mostly empty space otherwise).
    jwt: Option<Box<CompiledJwt>>,
    introspection: Option<Box<CompiledIntrospection>>,
    forward_auth: Option<Box<CompiledForwardAuth>>,
    mutual_tls: bool,
}

enum Attempt {
    Absent,
    Done(Result<AuthContext, AuthError>),
}

/// What the `Authorization` header holds for the bearer methods.
enum BearerCredential<'a> {
    /// No `Authorization` header, or (with `other_scheme_absent`) a scheme other than Bearer.
    Absent,
    Token(&'a str),
    /// Present but not exactly one `Bearer <token>`: several headers, a separator other than
    /// one space (a tab, say), an empty token, bytes that are not visible ASCII.
    Malformed,
}

/// RFC 6750 §2.1: `Bearer` (any case), one SP, a token68. Anything else that is present is
/// a presented-but-invalid credential rather than none, so an `optional` route never lets a
/// garbled credential through as anonymous (and a proxy in front that parses the header
/// differently cannot make the gateway see "no credential" where it sees one).
fn bearer(parts: &Parts, other_scheme_absent: bool) -> BearerCredential<'_> {
    let mut values = parts.headers.get_all(header::AUTHORIZATION).iter();
    let Some(value) = values.next() else {
        return BearerCredential::Absent;
    };
    if values.next().is_some() {
        return BearerCredential::Malformed;
    }
    let Ok(value) = value.to_str() else {
        return BearerCredential::Malformed;
    };
    let scheme_end = value.find([' ', '\t']).unwrap_or(value.len());
    let (scheme, rest) = value.split_at(scheme_end);
    if !scheme.eq_ignore_ascii_case("bearer") {
        return if other_scheme_absent {
            BearerCredential::Absent
        } else {
            BearerCredential::Malformed
        };
    }
    match rest.strip_prefix(' ') {
        Some(token) if is_token68(token) => BearerCredential::Token(token),
        _ => BearerCredential::Malformed,
    }
}

/// RFC 7235 token68: `1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"="`.
fn is_token68(token: &str) -> bool {
    let body = token.trim_end_matches('=');
    !body.is_empty()
        && body.bytes().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'+' | b'/')
        })
}

fn context(credential: CredentialType, principal: Arc<Principal>) -> AuthContext {
    AuthContext {
        identity: principal
            .consumer
            .map_or(Identity::Principal, Identity::Consumer),
        credential: Some(credential),
        principal: Some(principal),
        forwarded: None,
    }
}

impl CompiledAuth {
    pub fn new(
        config: &AuthenticationConfig,
        route_id: &str,
        namespace: &str,
        secrets: &SecretConfig,
        runtime: &AuthRuntime,
    ) -> Self {
        let has = |m| config.methods.contains(&m);
        let scope = ConsumerScope::new(namespace, &config.consumer_namespaces);
        let secret = secrets
            .introspection_secrets
            .iter()
            .find(|s| s.route == route_id)
            .map(|s| s.secret.as_str());
        CompiledAuth {
            api_key: has(AuthMethodConfig::ApiKey).then(|| ApiKeySource::new(config)),
            jwt: config
                .jwt
                .as_ref()
                .filter(|_| has(AuthMethodConfig::Jwt))
                .map(|j| Box::new(CompiledJwt::new(j, scope.clone(), runtime))),
            introspection: config
                .oauth2_introspection
                .as_ref()
                .filter(|_| has(AuthMethodConfig::OAuth2Introspection))
                .map(|i| Box::new(CompiledIntrospection::new(i, secret, runtime))),
            forward_auth: config
                .forward_auth
                .as_ref()
                .filter(|_| has(AuthMethodConfig::ForwardAuth))
                .map(|f| Box::new(CompiledForwardAuth::new(f, runtime))),
            mutual_tls: has(AuthMethodConfig::MutualTls),
            scope,
            config: config.clone(),
        }
    }

    /// Authenticates, then removes the credential when `hide_credentials` is set.
    pub async fn authenticate(
        &self,
        store: &KeyStore,
        parts: &mut Parts,
    ) -> Result<AuthContext, AuthError> {
        let mut first_error = None;
        let mut result = None;
        for method in 0..5 {
            let attempt = match method {
                0 => self.try_mutual_tls(store, parts),
                1 => self.try_api_key(store, parts),
                2 | 3 => self.try_bearer(method == 2, store, parts).await,
                4 => self.try_forward_auth(parts).await,
                _ => Attempt::Absent,
            };
            match attempt {
                Attempt::Absent => {}
                Attempt::Done(Ok(context)) => {
                    result = Some(Ok(context));
                    break;
                }
                Attempt::Done(Err(e)) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        if self.config.hide_credentials {
            // Every credential the route accepts goes, not only the one that authenticated:
            // on an [ApiKey, Jwt] route a valid key must not carry a bearer token (perhaps
            // someone else's) past the gateway.
            if let Some(source) = &self.api_key {
                source.hide(parts);
            }
            if self.uses_bearer() {
                parts.headers.remove(header::AUTHORIZATION);
            }
        }
        if let Some(forward) = &self.forward_auth {
            // The auth service's answer is the only source of these names upstream: a
            // client's own `X-Auth-Role` must not get through when the service omits it.
            forward.strip_response_headers(&mut parts.headers);
        }
        match (result, first_error) {
            (Some(ok), _) => ok,
            (None, Some(e)) => Err(e),
            (None, None) if self.config.optional => Ok(AuthContext::anonymous()),
            (None, None) => Err(AuthError::MissingCredentials),
        }
    }

    /// Whether a 401 for this route should challenge with `Bearer` (JWT/introspection).
    pub fn uses_bearer(&self) -> bool {
        self.jwt.is_some() || self.introspection.is_some()
    }

    /// The pipeline has already checked that the connection's handshake applied this route's
    /// client-auth policy (`tls::check_route`), so a present certificate was verified by the
    /// route's CA.
    fn try_mutual_tls(&self, store: &KeyStore, parts: &Parts) -> Attempt {
        if !self.mutual_tls {
            return Attempt::Absent;
        }
        let Some(peer) = crate::tls::connection(parts).and_then(|c| c.peer.as_ref()) else {
            return Attempt::Absent;
        };
        Attempt::Done(match store.mtls_lookup(&self.scope, peer) {
            Some(consumer) => Ok(AuthContext {
                identity: Identity::Consumer(consumer),
                credential: Some(CredentialType::MutualTls),
                principal: None,
                forwarded: None,
            }),
            None => Err(AuthError::InvalidCredentials),
        })
    }

    fn try_api_key(&self, store: &KeyStore, parts: &Parts) -> Attempt {
        let Some(source) = &self.api_key else {
            return Attempt::Absent;
        };
        let Some(key) = source.find(parts) else {
            return Attempt::Absent;
        };
        Attempt::Done(match store.lookup(&self.scope, &key) {
            Some(consumer) => Ok(AuthContext {
                identity: Identity::Consumer(consumer),
                credential: Some(CredentialType::ApiKey),
                principal: None,
                forwarded: None,
            }),
            None => Err(AuthError::InvalidCredentials),
        })
    }

    async fn try_bearer(&self, as_jwt: bool, store: &KeyStore, parts: &Parts) -> Attempt {
        if !self.uses_bearer() {
            return Attempt::Absent;
        }
        // Another scheme (Basic, say) may be forward auth's to judge when it copies the header.
        let other_scheme_absent = self
            .forward_auth
            .as_ref()
            .is_some_and(|f| f.copies(&header::AUTHORIZATION));
        let token = match bearer(parts, other_scheme_absent) {
            BearerCredential::Absent => return Attempt::Absent,
            BearerCredential::Token(token) => token,
            // Reported once, by the Jwt attempt (or introspection when there is no Jwt).
            BearerCredential::Malformed if as_jwt || self.jwt.is_none() => {
                return Attempt::Done(Err(AuthError::Token(TokenError::Malformed)))
            }
            BearerCredential::Malformed => return Attempt::Absent,
        };
        // One bearer token goes to exactly one verifier, so an opaque token is never
        // "half-verified" as a JWT and a JWT never leaks to the introspection endpoint.
        let to_jwt =
            self.jwt.is_some() && (self.introspection.is_none() || jwt::looks_like_jwt(token));
        match (as_jwt, to_jwt) {
            (true, true) => match &self.jwt {
                Some(jwt) => Attempt::Done(
                    jwt.verify(token, store)
                        .await
                        .map(|p| context(CredentialType::Jwt, p))
                        .map_err(AuthError::Token),
                ),
                None => Attempt::Absent,
            },
            (false, false) => match &self.introspection {
                Some(introspection) => Attempt::Done(
                    introspection
                        .introspect(token, store, &self.scope)
                        .await
                        .map(|p| context(CredentialType::OAuth2, p))
                        .map_err(AuthError::from),
                ),
                None => Attempt::Absent,
            },
            _ => Attempt::Absent,
        }
    }

    async fn try_forward_auth(&self, parts: &Parts) -> Attempt {
        let Some(forward) = &self.forward_auth else {
            return Attempt::Absent;
        };
        if !forward.credential_present(parts) {
            return Attempt::Absent;
        }
        Attempt::Done(
            forward
                .check(parts)
                .await
                .map(|granted| AuthContext {
                    identity: Identity::Principal,
                    credential: Some(CredentialType::ForwardAuth),
                    principal: None,
                    forwarded: Some(granted),
                })
                .map_err(AuthError::from),
        )
    }
}
