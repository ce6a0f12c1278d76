//! Commands sent while a connection is set up (`AUTH`, `SELECT`, `ROLE`, `SCRIPT LOAD`, a
//! sentinel's question), their replies read with the limits of our RESP parser.

use std::io;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::ratelimit::resp::{self, Reply};

#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error(transparent)]
    Protocol(#[from] resp::ProtocolError),
    #[error("Redis refused the connection set-up: {0}")]
    Refused(String),
    #[error("Redis closed the connection")]
    Closed,
    #[error("Redis sent more than was asked")]
    Unexpected,
}

/// Writes `out` (`count` commands) and reads their replies, in order. An error reply
/// fails the whole exchange with its text.
pub async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    out: &[u8],
    count: usize,
) -> Result<Vec<redis::Value>, HandshakeError> {
    stream.write_all(out).await?;
    stream.flush().await?;
    let mut input = BytesMut::with_capacity(4096);
    let mut ints = Vec::new();
    let mut values = Vec::with_capacity(count);
    while values.len() < count {
        match resp::parse(&input, &mut ints)? {
            Some((reply, len)) => {
                if let Reply::Error(text) = reply {
                    let text = String::from_utf8_lossy(&input[text]).into_owned();
                    return Err(HandshakeError::Refused(text));
                }
                let value =
                    redis::parse_redis_value(&input[..len]).map_err(|_| resp::ProtocolError)?;
                values.push(value);
                input.advance(len);
            }
            None => {
                if stream.read_buf(&mut input).await? == 0 {
                    return Err(HandshakeError::Closed);
                }
            }
        }
    }
    if !input.is_empty() {
        return Err(HandshakeError::Unexpected);
    }
    Ok(values)
}

/// Appends `AUTH [user] password` to `out`.
pub fn put_auth(out: &mut Vec<u8>, username: Option<&str>, password: &str) {
    match username {
        Some(user) => resp::put_command(out, &[b"AUTH", user.as_bytes(), password.as_bytes()]),
        None => resp::put_command(out, &[b"AUTH", password.as_bytes()]),
    }
}
