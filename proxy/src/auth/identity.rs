//! Who the caller is once authentication is done, and how the upstream learns it.
//!
//! The client-sent copies of every identity header are removed by `forward_headers` before
//! anything here runs, so an upstream can trust `X-Consumer-*`, `X-User-ID` and
//! `X-Credential-Type` (and the forward-auth headers copied here) to come from the gateway.

use std::sync::Arc;

use http::{HeaderMap, HeaderName, HeaderValue};
use serde_json::{Map, Value};

/// Who is calling, as far as the route's authentication is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Identity {
    /// The route has no authentication.
    Unauthenticated,
    /// `optional: true` and no credential was presented.
    Anonymous,
    /// Index into the [`super::KeyStore`]'s consumers.
    Consumer(usize),
    /// Authenticated (JWT from an issuer, introspection, forward auth) without a consumer.
    Principal,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CredentialType {
    ApiKey,
    Jwt,
    OAuth2,
    ForwardAuth,
    MutualTls,
}

impl CredentialType {
    pub fn header_value(self) -> HeaderValue {
        HeaderValue::from_static(match self {
            CredentialType::ApiKey => "api-key",
            CredentialType::Jwt => "jwt",
            CredentialType::OAuth2 => "oauth2",
            CredentialType::ForwardAuth => "forward-auth",
            CredentialType::MutualTls => "mtls",
        })
    }
}

/// What a verified token or introspection answer says; cached and shared.
#[derive(Debug, Default)]
pub struct Principal {
    pub consumer: Option<usize>,
    pub subject: Option<HeaderValue>,
    pub scopes: Vec<String>,
    /// JWT claims (for `rolesClaim`); `None` for introspection.
    pub claims: Option<Map<String, Value>>,
}

/// The outcome of authentication, carried to authorization and the upstream request.
#[derive(Debug, Clone)]
pub struct AuthContext {
    pub identity: Identity,
    pub credential: Option<CredentialType>,
    pub principal: Option<Arc<Principal>>,
    /// Forward-auth response headers to pass upstream.
    pub forwarded: Option<Arc<Vec<(HeaderName, HeaderValue)>>>,
}

impl AuthContext {
    pub const UNAUTHENTICATED: AuthContext = AuthContext {
        identity: Identity::Unauthenticated,
        credential: None,
        principal: None,
        forwarded: None,
    };

    pub fn anonymous() -> Self {
        AuthContext {
            identity: Identity::Anonymous,
            ..Self::UNAUTHENTICATED
        }
    }

    pub fn scopes(&self) -> &[String] {
        self.principal.as_ref().map_or(&[], |p| p.scopes.as_slice())
    }

    /// Adds the gateway's identity headers (after the client's copies were removed).
    pub fn apply_upstream(&self, headers: &mut HeaderMap) {
        if let Some(credential) = self.credential {
            headers.insert(
                HeaderName::from_static("x-credential-type"),
                credential.header_value(),
            );
        }
        if let Some(subject) = self.principal.as_ref().and_then(|p| p.subject.as_ref()) {
            headers.insert(HeaderName::from_static("x-user-id"), subject.clone());
        }
        if let Some(forwarded) = &self.forwarded {
            for (name, value) in forwarded.iter() {
                headers.insert(name.clone(), value.clone());
            }
        }
    }
}
