//! Finding a Sentinel-managed master: the sentinels are asked, in order, for the master's
//! address (`SENTINEL get-master-addr-by-name`); the first answer is used, and the
//! connection to it checks with `ROLE` that it is a master (a sentinel may still name a
//! master it has not yet noticed is gone or demoted).
//!
//! Following a failover: the master's address is asked again on every reconnect, and the
//! connection is dropped (so the next connect asks again) when
//! - it breaks (a dead master),
//! - the master answers `READONLY` (it was demoted),
//! - a sentinel announces `+switch-master` for this master ([`watch_switches`]: subscribed
//!   on one sentinel at a time). This matters for an old master that is still up: the
//!   sentinels demote it only when they next look at it (up to ten seconds later), and
//!   whatever it counts until then is lost when it resyncs as a replica.

use std::time::Duration;

use bytes::{Buf, BytesMut};
use tokio::io::AsyncReadExt;
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

/// Subscribes to `+switch-master` on the sentinels, one at a time (the next one when the
/// connection fails), and calls `switched` with the new master's address (`None` when the
/// announcement cannot be read) for each announcement about this master, until
/// `stop` says so (checked at least every second).
pub async fn watch_switches(
    settings: SentinelSettings,
    connector: Connector,
    stop: impl Fn() -> bool,
    switched: impl Fn(Option<(String, u16)>),
) {
    let mut failures = 0u32;
    while !stop() {
        for url in &settings.urls {
            if stop() {
                return;
            }
            match listen(url, &settings, &connector, &stop, &switched).await {
                Ok(()) => return,
                Err(e) => {
                    failures += 1;
                    // Every sentinel down is also every failover unseen: say so, not too often.
                    if failures % 20 == 1 {
                        tracing::warn!(error = %e, sentinel = %url, "rate-limit Sentinel subscription lost; trying the next sentinel");
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

/// One sentinel's subscription: `Ok` when stopped, an error when the connection fails.
async fn listen(
    url: &str,
    settings: &SentinelSettings,
    connector: &Connector,
    stop: &impl Fn() -> bool,
    switched: &impl Fn(Option<(String, u16)>),
) -> Result<(), AskError> {
    let (info, _) = parse_url(url)?;
    let (host, port) = host_port(&info)?;
    let mut stream = timeout(PER_SENTINEL, connector.connect(host, port))
        .await
        .map_err(|_| AskError::Reply("connect timed out".into()))??;
    let mut out = Vec::new();
    let mut count = 1;
    if let Some(password) = settings.password.as_ref().or(info.redis.password.as_ref()) {
        put_auth(&mut out, info.redis.username.as_deref(), password);
        count += 1;
    }
    resp::put_command(&mut out, &[b"SUBSCRIBE", b"+switch-master"]);
    timeout(PER_SENTINEL, exchange(&mut stream, &out, count))
        .await
        .map_err(|_| AskError::Reply("SUBSCRIBE timed out".into()))??;
    let prefix = format!("{} ", settings.master_name);
    let mut input = BytesMut::with_capacity(1024);
    let mut ints = Vec::new();
    loop {
        if stop() {
            return Ok(());
        }
        while let Some((_, len)) = resp::parse(&input, &mut ints).map_err(HandshakeError::from)? {
            let message = redis::parse_redis_value(&input[..len]);
            input.advance(len);
            // `message`, the channel, "<name> <old ip> <old port> <new ip> <new port>".
            if let Ok(redis::Value::Array(parts)) = message {
                if let Some(redis::Value::BulkString(text)) = parts.get(2) {
                    if text.starts_with(prefix.as_bytes()) {
                        tracing::info!(
                            master = %settings.master_name,
                            switch = %String::from_utf8_lossy(text),
                            "rate-limit Sentinel announced a new master; reconnecting"
                        );
                        switched(new_master(text));
                    }
                }
            }
        }
        match timeout(Duration::from_secs(1), stream.read_buf(&mut input)).await {
            Ok(Ok(0)) => return Err(AskError::Handshake(HandshakeError::Closed)),
            Ok(Ok(_)) | Err(_) => {}
            Ok(Err(e)) => return Err(AskError::Handshake(HandshakeError::Io(e))),
        }
    }
}

/// The new master of a `+switch-master` message, `<name> <old ip> <old port> <new ip> <new
/// port>`.
fn new_master(text: &[u8]) -> Option<(String, u16)> {
    let text = std::str::from_utf8(text).ok()?;
    let mut fields = text.split(' ').skip(3);
    let host = fields.next()?;
    let port = fields.next()?.parse().ok()?;
    Some((host.to_owned(), port))
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_the_new_master_of_a_switch() {
        assert_eq!(
            super::new_master(b"mymaster 127.0.0.1 6379 127.0.0.1 6380"),
            Some(("127.0.0.1".to_owned(), 6380))
        );
        assert_eq!(super::new_master(b"mymaster 127.0.0.1 6379"), None);
        assert_eq!(super::new_master(b"m a 1 b x"), None);
    }
}
