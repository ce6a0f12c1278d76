//! Keep-alive connections to one upstream target (scheme + authority + connect settings).
//!
//! A lean replacement for hyper-util's pooled client on the request path: the pool is found
//! once per config load (each [`crate::upstream::Target`] holds its own), so a request pays
//! for one uncontended lock and a `Vec::pop` instead of a hashed pool lookup, a checkout
//! future and a spawned task per response (measured: ~12% of the proxy's instructions per
//! request went to the generic client).
//!
//! - Connections are HTTP/1.1, each driven inline by the request using it
//!   ([`crate::upstream::h1`]).
//! - A connection returns to the pool when its response body has been read to the end; a
//!   body dropped early closes it (HTTP/1 cannot abandon a response and stay in sync).
//! - Idle connections are reused newest first, dropped after [`IDLE_TIMEOUT`] and capped
//!   at [`MAX_IDLE`] per target. A connection the upstream closed (or wrote to) while idle
//!   is seen at checkout and closed; if the upstream closes one just as a request goes
//!   out, a bodiless idempotent request is sent again on a new connection.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::request::Parts;
use http::{HeaderValue, Response, Uri};
use hyper::body::{Body, Frame, SizeHint};
use hyper_util::client::legacy::connect::dns::{GaiResolver, Name};
use tower_service::Service;

use crate::body::{BoxError, ProxyBody};
use crate::upstream::h1::{
    BodyError, BodyReader, ExchangeError, H1Conn, Hop, ResponseHead, UpstreamIo,
};

/// How long an idle connection is kept for reuse.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Idle connections kept per target; more are closed when they fall idle.
pub const MAX_IDLE: usize = 256;

pub type HttpConnector = hyper_util::client::legacy::connect::HttpConnector<GuardedResolver>;
pub type HttpsConnector = hyper_rustls::HttpsConnector<HttpConnector>;

/// The system resolver, refusing loopback, link-local and unspecified addresses when the
/// route's config says so (cluster mode): a tenant's target name that resolves to the
/// gateway's own host cannot reach its admin listener. Literal addresses never get here;
/// the compiler refuses those.
#[derive(Clone)]
pub struct GuardedResolver {
    inner: GaiResolver,
    refuse_internal: bool,
}

fn is_internal(ip: std::net::IpAddr) -> bool {
    let ip = match ip {
        std::net::IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map_or(std::net::IpAddr::V6(v6), std::net::IpAddr::V4),
        v4 => v4,
    };
    match ip {
        std::net::IpAddr::V4(v4) => v4.is_loopback() || v4.is_link_local() || v4.is_unspecified(),
        std::net::IpAddr::V6(v6) => {
            v6.is_loopback() || v6.is_unspecified() || (v6.segments()[0] & 0xffc0) == 0xfe80
        }
    }
}

type Resolved = std::vec::IntoIter<std::net::SocketAddr>;

impl tower_service::Service<Name> for GuardedResolver {
    type Response = Resolved;
    type Error = std::io::Error;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Resolved, std::io::Error>> + Send>,
    >;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, name: Name) -> Self::Future {
        let resolving = self.inner.call(name);
        let refuse = self.refuse_internal;
        Box::pin(async move {
            let addresses: Vec<std::net::SocketAddr> = resolving.await?.collect();
            if !refuse {
                return Ok(addresses.into_iter());
            }
            let allowed: Vec<std::net::SocketAddr> = addresses
                .into_iter()
                .filter(|a| !is_internal(a.ip()))
                .collect();
            if allowed.is_empty() {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::PermissionDenied,
                    "the target resolves only to loopback or link-local addresses, which the gateway does not connect to",
                ));
            }
            Ok(allowed.into_iter())
        })
    }
}

/// Opens new connections: plain TCP, or TLS for `https://` targets.
#[derive(Clone)]
pub enum Connector {
    Plain(HttpConnector),
    Tls(HttpsConnector),
}

#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// No connection could be opened (refused, unreachable, connect timeout, TLS failure).
    #[error("connect: {0}")]
    Connect(BoxError),
    /// The exchange failed on an open connection.
    #[error("request: {0}")]
    Request(#[from] ExchangeError),
}

struct IdleConn {
    conn: H1Conn,
    since: Instant,
}

pub struct ConnPool {
    /// `scheme://authority`, what the connector dials.
    dial: Uri,
    /// The `Host` header for requests to this target (default ports omitted).
    host: HeaderValue,
    connector: Connector,
    idle: Mutex<Vec<IdleConn>>,
}

impl ConnPool {
    pub fn new(dial: Uri, connector: Connector) -> Self {
        let host = host_header(&dial);
        Self::with_host(dial, host, connector)
    }

    /// A pool whose requests carry `host` instead of the dialled authority: a Service's
    /// endpoints are dialled by address but addressed by the Service's name.
    pub fn with_host(dial: Uri, host: HeaderValue, connector: Connector) -> Self {
        ConnPool {
            dial,
            host,
            connector,
            idle: Mutex::new(Vec::new()),
        }
    }

    /// Sends the request (`parts.uri` in origin form, `hop` what this hop adds) to
    /// the target and returns the response whose body hands the connection back to the
    /// pool once read to the end.
    pub async fn send(
        self: &Arc<Self>,
        parts: &Parts,
        hop: Hop<'_>,
        body: ProxyBody,
    ) -> Result<Response<PooledBody>, SendError> {
        let body = match self.checkout() {
            Some(mut conn) => {
                let replayable = body.is_end_stream() && parts.method.is_idempotent();
                match conn.exchange(parts, hop, body, &self.host).await {
                    Ok(head) => return Ok(self.wrap(head, conn)),
                    // The upstream closed the idle connection as the request went out: it
                    // cannot have acted on it.
                    Err(failure) if replayable && failure.nothing_received => crate::body::empty(),
                    Err(failure) => return Err(SendError::Request(failure.error)),
                }
            }
            None => body,
        };
        // Boxed: connecting (DNS, TCP, TLS handshake) is a large future that only new
        // connections need; kept inline it would grow every request's future.
        let mut conn = Box::pin(self.connect()).await?;
        match conn.exchange(parts, hop, body, &self.host).await {
            Ok(head) => Ok(self.wrap(head, conn)),
            Err(failure) => Err(SendError::Request(failure.error)),
        }
    }

    fn wrap(self: &Arc<Self>, head: ResponseHead, conn: H1Conn) -> Response<PooledBody> {
        let reader = BodyReader::new(head.framing);
        let mut body = PooledBody {
            reader,
            reusable: head.reusable,
            lease: Some((conn, self.clone())),
        };
        if body.reader.is_done() {
            // Bodiless by framing: the connection is free now.
            body.release();
        }
        head.response.map(|()| body)
    }

    fn lock(&self) -> MutexGuard<'_, Vec<IdleConn>> {
        match self.idle.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    fn checkout(&self) -> Option<H1Conn> {
        loop {
            let mut conn = {
                let mut idle = self.lock();
                let now = Instant::now();
                // Oldest first in the vector: expired ones sit at the front.
                let expired = idle
                    .iter()
                    .take_while(|c| now.duration_since(c.since) >= IDLE_TIMEOUT)
                    .count();
                if expired > 0 {
                    idle.drain(..expired);
                }
                idle.pop()?.conn
            };
            if conn.is_idle_and_open() {
                return Some(conn);
            }
        }
    }

    fn check_in(&self, conn: H1Conn) {
        let mut idle = self.lock();
        if idle.len() < MAX_IDLE {
            idle.push(IdleConn {
                conn,
                since: Instant::now(),
            });
        }
    }

    async fn connect(&self) -> Result<H1Conn, SendError> {
        let dial = self.dial.clone();
        let io = match &self.connector {
            Connector::Plain(connector) => UpstreamIo::Plain(
                connector
                    .clone()
                    .call(dial)
                    .await
                    .map_err(|e| SendError::Connect(e.into()))?,
            ),
            Connector::Tls(connector) => UpstreamIo::Tls(Box::new(
                connector
                    .clone()
                    .call(dial)
                    .await
                    .map_err(SendError::Connect)?,
            )),
        };
        Ok(H1Conn::new(io))
    }

    /// Idle connections right now (tests and diagnostics).
    pub fn idle_count(&self) -> usize {
        self.lock().len()
    }
}

/// `Host` for a target: the authority without the scheme's default port.
pub(crate) fn host_header(dial: &Uri) -> HeaderValue {
    let Some(authority) = dial.authority() else {
        return HeaderValue::from_static("localhost");
    };
    let default_port = match dial.scheme_str() {
        Some("https") => 443,
        _ => 80,
    };
    let value = match authority.port_u16() {
        Some(port) if port == default_port => authority.host(),
        _ => authority.as_str(),
    };
    HeaderValue::from_str(value).unwrap_or_else(|_| HeaderValue::from_static("localhost"))
}

/// A response body that returns its connection to the pool once fully read.
pub struct PooledBody {
    reader: BodyReader,
    /// The upstream allows another exchange on the connection after this one.
    reusable: bool,
    lease: Option<(H1Conn, Arc<ConnPool>)>,
}

impl PooledBody {
    fn release(&mut self) {
        if let Some((conn, pool)) = self.lease.take() {
            if self.reusable && self.reader.left_clean(&conn) {
                pool.check_in(conn);
            }
        }
    }
}

impl Body for PooledBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = &mut *self;
        let Some((conn, _)) = this.lease.as_mut() else {
            return Poll::Ready(None);
        };
        match this.reader.poll_data(conn, cx) {
            Poll::Ready(Some(Ok(data))) => {
                if this.reader.is_done() {
                    // The last bytes: the connection is free before the data is even sent on.
                    this.release();
                }
                Poll::Ready(Some(Ok(Frame::data(data))))
            }
            Poll::Ready(None) => {
                this.release();
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(e))) => {
                // A broken body leaves the connection unusable.
                this.lease = None;
                Poll::Ready(Some(Err(e)))
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.reader.is_done()
    }

    fn size_hint(&self) -> SizeHint {
        match self.reader.remaining() {
            Some(n) => SizeHint::with_exact(n),
            None => SizeHint::default(),
        }
    }
}

impl Drop for PooledBody {
    fn drop(&mut self) {
        // Bodies that are empty by framing (HEAD, 204, 304, `Content-Length: 0`) are never
        // polled; they leave the connection in sync too. Anything else dropped early closes it.
        if self.reader.is_done() {
            self.release();
        }
    }
}

/// What identifies a pool: the same target with the same connect settings shares one
/// across routes and config reloads.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct PoolKey {
    pub dial: String,
    pub settings: String,
}

/// Pools by key. Entries are weak: a pool lives as long as some loaded config uses it, so a
/// target removed from the config closes its idle connections with the last config using it.
#[derive(Default)]
pub struct PoolRegistry {
    pools: Mutex<HashMap<PoolKey, Weak<ConnPool>>>,
}

impl PoolRegistry {
    pub fn get_or_create(&self, key: PoolKey, create: impl FnOnce() -> ConnPool) -> Arc<ConnPool> {
        let mut pools = match self.pools.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        if let Some(pool) = pools.get(&key).and_then(Weak::upgrade) {
            return pool;
        }
        pools.retain(|_, pool| pool.strong_count() > 0);
        let pool = Arc::new(create());
        pools.insert(key, Arc::downgrade(&pool));
        pool
    }
}

/// The TCP connector every target uses (directly, or under TLS).
pub fn plain_connector(connect_timeout_ms: u64, refuse_internal: bool) -> HttpConnector {
    let mut connector = HttpConnector::new_with_resolver(GuardedResolver {
        inner: GaiResolver::new(),
        refuse_internal,
    });
    connector.enforce_http(false);
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(Duration::from_millis(connect_timeout_ms.max(1))));
    connector.set_keepalive(Some(Duration::from_secs(60)));
    connector
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn host_header_omits_default_ports() {
        let host = |uri: &str| host_header(&uri.parse().unwrap());
        assert_eq!(host("http://a.example:80"), "a.example");
        assert_eq!(host("http://a.example:8080"), "a.example:8080");
        assert_eq!(host("https://a.example:443"), "a.example");
        assert_eq!(host("https://a.example:80"), "a.example:80");
        assert_eq!(host("http://10.0.0.1:9000"), "10.0.0.1:9000");
        assert_eq!(host("http://[::1]:9000"), "[::1]:9000");
    }

    #[test]
    fn registry_shares_live_pools_and_forgets_dropped_ones() {
        let registry = PoolRegistry::default();
        let key = PoolKey {
            dial: "http://127.0.0.1:1".into(),
            settings: "1000".into(),
        };
        let make = || ConnPool::new("http://127.0.0.1:1".parse().unwrap(), plain(1000));
        let a = registry.get_or_create(key.clone(), make);
        let b = registry.get_or_create(key.clone(), make);
        assert!(Arc::ptr_eq(&a, &b));
        drop((a, b));
        let c = registry.get_or_create(key, make);
        assert_eq!(Arc::strong_count(&c), 1);
    }

    #[tokio::test]
    async fn names_resolving_to_internal_addresses_are_refused_when_asked() {
        use std::str::FromStr;
        use tower_service::Service;
        let mut guarded = GuardedResolver {
            inner: GaiResolver::new(),
            refuse_internal: true,
        };
        let error = guarded
            .call(Name::from_str("localhost").unwrap())
            .await
            .unwrap_err();
        assert_eq!(error.kind(), std::io::ErrorKind::PermissionDenied);
        let mut open = GuardedResolver {
            inner: GaiResolver::new(),
            refuse_internal: false,
        };
        let found: Vec<_> = open
            .call(Name::from_str("localhost").unwrap())
            .await
            .unwrap()
            .collect();
        assert!(found.iter().all(|a| a.ip().is_loopback()) && !found.is_empty());
        for ip in [
            "127.0.0.1",
            "::1",
            "169.254.169.254",
            "fe80::1",
            "0.0.0.0",
            "::ffff:127.0.0.1",
        ] {
            assert!(is_internal(ip.parse().unwrap()), "{ip}");
        }
        for ip in ["10.0.0.1", "192.168.1.1", "2001:db8::1"] {
            assert!(!is_internal(ip.parse().unwrap()), "{ip}");
        }
    }

    fn plain(connect_timeout_ms: u64) -> Connector {
        Connector::Plain(plain_connector(connect_timeout_ms, false))
    }
}
