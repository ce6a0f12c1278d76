//! Authorization after authentication: consumer groups, scopes, roles.
//!
//! Checks run deny-first: a denied group wins over everything; then allowed groups, then
//! every required scope, then every required role. An identity without the data a check
//! needs (an API-key consumer has no scopes) fails that check.

use portcullis_compiler::config::AuthorizationConfig;
use serde_json::Value;

use super::api_key::KeyStore;
use super::identity::{AuthContext, Identity};
use super::AuthError;

pub fn authorize(
    config: &AuthorizationConfig,
    store: &KeyStore,
    context: &AuthContext,
) -> Result<(), AuthError> {
    let groups: &[String] = match context.identity {
        Identity::Consumer(i) => store.consumer(i).map_or(&[], |c| c.groups.as_slice()),
        Identity::Anonymous | Identity::Unauthenticated | Identity::Principal => &[],
    };
    if groups.iter().any(|g| config.deny_groups.contains(g)) {
        return Err(AuthError::GroupDenied);
    }
    if !config.allow_groups.is_empty() && !groups.iter().any(|g| config.allow_groups.contains(g)) {
        return Err(AuthError::GroupNotAllowed);
    }
    let scopes = context.scopes();
    if !config
        .required_scopes
        .iter()
        .all(|required| scopes.iter().any(|s| s == required))
    {
        return Err(AuthError::InsufficientScope);
    }
    if !config.required_roles.is_empty() {
        let path = config.roles_claim.as_deref().unwrap_or("roles");
        let claims = context.principal.as_ref().and_then(|p| p.claims.as_ref());
        let mut node = claims.and_then(|c| c.get(path.split('.').next().unwrap_or(path)));
        for segment in path.split('.').skip(1) {
            node = node.and_then(|n| n.get(segment));
        }
        let has = |role: &str| match node {
            Some(Value::Array(items)) => items.iter().any(|i| i.as_str() == Some(role)),
            Some(Value::String(s)) => s.split_ascii_whitespace().any(|r| r == role),
            _ => false,
        };
        if !config.required_roles.iter().all(|r| has(r)) {
            return Err(AuthError::MissingRole);
        }
    }
    Ok(())
}
