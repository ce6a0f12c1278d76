//! Finding a Sentinel-managed master: the sentinels are asked, in order, for the master's
//! address (`SENTINEL get-master-addr-by-name`); the first answer is used, and the
//! connection to it checks with `ROLE` that it is a master (a sentinel may still name a
//! master it has not yet noticed is gone or demoted).
//!
//! Following a failover: the master's address is asked again on every reconnect, and the
//! single-Redis connection drops itself when the master it holds answers `READONLY` (it
//! was demoted) or dies. No `+switch-master` subscription: a failover that the connection
//! never notices is one whose old master still accepts writes, and nothing then is wrong
//! until it stops doing so.

use std::time::Duration;

use tokio::time::timeout;

use super::handshake::{exchange, put_auth, HandshakeError};
use super::transport::{host_port, parse_url, Connector, TransportError};
use crate::ratelimit::resp;

/// How the master is found.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SentinelSettings {
    pub master_name: String,
    /// `redis://` or `rediss://` (all alike: the compiler checks).
    pub urls: Vec<String>,
    /// The sentinels' own password.
    pub password: Option<String>,
}

/// One sentinel may take this long to answer before the next one is asked.
const PER_SENTINEL: Duration = Duration::from_millis(500);

#[derive(Debug, thiserror::Error)]
pub enum SentinelError {
    #[error("no sentinel knows master {master:?}: {reasons}")]
    NoMaster { master: String, reasons: String },
}

/// The master's host and port, from the first sentinel that names one.
pub async fn master_address(
    settings: &SentinelSettings,
    connector: &Connector,
) -> Result<(String, u16), SentinelError> {
    let mut reasons = Vec::new();
    for url in &settings.urls {
        match timeout(PER_SENTINEL, ask(url, settings, connector)).await {
            Ok(Ok(address)) => return Ok(address),
            Ok(Err(e)) => reasons.push(format!("{url}: {e}")),
            Err(_) => reasons.push(format!("{url}: no answer within {PER_SENTINEL:?}")),
        }
    }
    Err(SentinelError::NoMaster {
        master: settings.master_name.clone(),
        reasons: reasons.join("; "),
    })
}

#[derive(Debug, thiserror::Error)]
enum AskError {
    #[error(transparent)]
    Transport(#[from] TransportError),
    #[error(transparent)]
    Handshake(#[from] HandshakeError),
    #[error("does not know this master")]
    Unknown,
    #[error("unexpected reply {0:?}")]
    Reply(String),
}

async fn ask(
    url: &str,
    settings: &SentinelSettings,
    connector: &Connector,
) -> Result<(String, u16), AskError> {
    let (info, _) = parse_url(url)?;
    let (host, port) = host_port(&info)?;
    let mut stream = connector.connect(host, port).await?;
    let mut out = Vec::new();
    let mut count = 1;
    let password = settings.password.as_ref().or(info.redis.password.as_ref());
    if let Some(password) = password {
        put_auth(&mut out, info.redis.username.as_deref(), password);
        count += 1;
    }
    resp::put_command(
        &mut out,
        &[
            b"SENTINEL",
            b"get-master-addr-by-name",
            settings.master_name.as_bytes(),
        ],
    );
    let values = exchange(&mut stream, &out, count).await?;
    match values.last() {
        Some(redis::Value::Array(parts)) if parts.len() == 2 => {
            let host: String = redis::from_redis_value(&parts[0])
                .map_err(|_| AskError::Reply(format!("{parts:?}")))?;
            let port: u16 = redis::from_redis_value(&parts[1])
                .map_err(|_| AskError::Reply(format!("{parts:?}")))?;
            Ok((host, port))
        }
        Some(redis::Value::Nil) => Err(AskError::Unknown),
        other => Err(AskError::Reply(format!("{other:?}"))),
    }
}

/// Whether a `ROLE` reply is a master's.
pub fn is_master(role: &redis::Value) -> bool {
    match role {
        redis::Value::Array(parts) => matches!(
            parts.first(),
            Some(redis::Value::BulkString(b)) if b == b"master"
        ),
        _ => false,
    }
}
