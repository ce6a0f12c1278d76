//! Concurrent connection caps, global and per client IP (NGINX `limit_conn`).
//!
//! Checked once per accepted TCP connection, before any byte is read. A refused connection
//! gets a short HTTP/1.1 `503` JSON answer and is closed, so clients and operators see why
//! instead of a bare reset. The per-IP count uses the socket peer (not X-Forwarded-For:
//! connections come from the peer). Counters are sharded so accepts on different cores
//! rarely touch the same lock.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

const SHARDS: usize = 16;

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ConnectionRefused {
    #[error("too many connections")]
    Global,
    #[error("too many connections from this address")]
    PerIp,
}

pub struct ConnectionLimits {
    global: Option<usize>,
    per_ip: Option<usize>,
    open: AtomicUsize,
    by_ip: Box<[Mutex<HashMap<IpAddr, usize>>]>,
    hasher: RandomState,
}

/// Held for the life of a connection; releases its slots on drop.
pub struct ConnectionPermit {
    limits: Arc<ConnectionLimits>,
    ip: Option<IpAddr>,
}

impl ConnectionLimits {
    pub fn new(global: Option<usize>, per_ip: Option<usize>) -> Arc<Self> {
        Arc::new(ConnectionLimits {
            global,
            per_ip,
            open: AtomicUsize::new(0),
            by_ip: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            hasher: RandomState::new(),
        })
    }

    fn shard(&self, ip: &IpAddr) -> &Mutex<HashMap<IpAddr, usize>> {
        let i = usize::try_from(self.hasher.hash_one(ip) % SHARDS as u64).unwrap_or(0);
        &self.by_ip[i]
    }

    pub fn try_acquire(
        self: &Arc<Self>,
        ip: IpAddr,
    ) -> Result<ConnectionPermit, ConnectionRefused> {
        let ip = ip.to_canonical();
        if let Some(max) = self.global {
            if self.open.fetch_add(1, Ordering::AcqRel) >= max {
                self.open.fetch_sub(1, Ordering::AcqRel);
                return Err(ConnectionRefused::Global);
            }
        }
        let mut permit = ConnectionPermit {
            limits: self.clone(),
            ip: None,
        };
        if let Some(max) = self.per_ip {
            let mut map = self
                .shard(&ip)
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let count = map.entry(ip).or_insert(0);
            if *count >= max {
                drop(map);
                // `permit` drops here and gives the global slot back.
                return Err(ConnectionRefused::PerIp);
            }
            *count += 1;
            permit.ip = Some(ip);
        }
        Ok(permit)
    }

    pub fn open(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }
}

impl Drop for ConnectionPermit {
    fn drop(&mut self) {
        if self.limits.global.is_some() {
            self.limits.open.fetch_sub(1, Ordering::AcqRel);
        }
        if let Some(ip) = self.ip {
            let mut map = self
                .limits
                .shard(&ip)
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if let Some(count) = map.get_mut(&ip) {
                *count -= 1;
                if *count == 0 {
                    map.remove(&ip);
                }
            }
        }
    }
}

/// Answers a refused connection with a JSON 503 and closes it, within one second.
pub async fn refuse(mut stream: TcpStream, why: ConnectionRefused) {
    let request_id = crate::request_id::assign(&http::HeaderMap::new());
    let id = request_id.to_str().unwrap_or("");
    let body = format!("{{\"error\":\"{why}\",\"request_id\":\"{id}\"}}");
    let response = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n\
         content-length: {}\r\nx-request-id: {id}\r\nretry-after: 1\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        let _ = stream.write_all(response.as_bytes()).await;
        let _ = stream.shutdown().await;
    })
    .await;
    tracing::debug!(reason = %why, "connection refused by connection limits");
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn caps_and_releases() {
        let limits = ConnectionLimits::new(Some(3), Some(2));
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let p1 = limits.try_acquire(a).unwrap();
        let _p2 = limits.try_acquire(a).unwrap();
        assert_eq!(limits.try_acquire(a).err(), Some(ConnectionRefused::PerIp));
        let _p3 = limits.try_acquire(b).unwrap();
        assert_eq!(limits.try_acquire(b).err(), Some(ConnectionRefused::Global));
        drop(p1);
        assert!(limits.try_acquire(b).is_ok());
        assert_eq!(limits.open(), 2);
    }
}
