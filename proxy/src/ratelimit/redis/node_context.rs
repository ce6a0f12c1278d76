//! How a cluster's node connections learn their backend's transport (TCP or TLS) and
//! credentials.
//!
//! The `redis` crate makes node connections itself, through [`redis::cluster_async::Connect`],
//! a static function that receives only the node's address and the connection info the
//! crate copies from the seeds: host, port, username, password. So the backend registers
//! its settings here under a token, hands the crate the token as the username, and the
//! node connection swaps in the real user and password and connects with the backend's
//! [`Connector`]. The crate never sees the password nor, built without its TLS features,
//! any `rediss://` URL. Looked up once per node connection, never per request.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex, PoisonError, Weak};

use super::transport::Connector;

const TOKEN_PREFIX: &str = "portcullis-node-context-";

/// What a cluster's node connection needs besides the node's address.
pub struct NodeContext {
    pub connector: Connector,
    pub username: Option<String>,
    pub password: Option<String>,
}

static CONTEXTS: LazyLock<Mutex<HashMap<String, Weak<NodeContext>>>> =
    LazyLock::new(Default::default);
static NEXT: AtomicU64 = AtomicU64::new(0);

/// Registers `context` for as long as the caller holds it; the token to pass as username.
pub fn register(context: &Arc<NodeContext>) -> String {
    let token = format!("{TOKEN_PREFIX}{}", NEXT.fetch_add(1, Ordering::Relaxed));
    let mut map = CONTEXTS.lock().unwrap_or_else(PoisonError::into_inner);
    map.retain(|_, c| c.strong_count() > 0);
    map.insert(token.clone(), Arc::downgrade(context));
    token
}

/// The context a node connection's username names: `Ok(None)` for a username that is no
/// token (a connection made outside a backend), an error for a token whose backend is gone.
pub fn lookup(username: Option<&str>) -> Result<Option<Arc<NodeContext>>, &'static str> {
    let Some(token) = username.filter(|u| u.starts_with(TOKEN_PREFIX)) else {
        return Ok(None);
    };
    let map = CONTEXTS.lock().unwrap_or_else(PoisonError::into_inner);
    map.get(token)
        .and_then(Weak::upgrade)
        .map(Some)
        .ok_or("the Redis cluster backend of this connection is gone")
}
