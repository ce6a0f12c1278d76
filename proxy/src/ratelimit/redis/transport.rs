//! How a connection to Redis is made: plain TCP for `redis://`, TLS for `rediss://`.
//!
//! TLS verifies the server's certificate against the policy's CA (or the system roots) and
//! its name against the URL's host: a DNS name, or an IP address (then the certificate
//! needs that IP among its subject alternative names). Whatever fails (an unknown issuer,
//! a wrong name, an expired certificate, a client certificate the server refuses) fails the
//! connect with rustls's reason; nothing ever falls back to clear text.
//!
//! Two forms of one connection: [`Stream`] (`AsyncRead`/`AsyncWrite`) for set-up and for
//! the cluster's node connections, and [`Wire`] for the single-Redis pipe, which works on
//! socket readiness (`try_read`/`try_write`) to batch without extra hops. TLS on a [`Wire`]
//! is rustls's own state machine fed from the socket as it becomes ready.

use std::io::{self, Read, Write};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::BytesMut;
use redis::{ConnectionInfo, IntoConnectionInfo};
use rustls::ClientConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// A `rediss://` backend's TLS material as compiled (PEM text); `None`s mean the system
/// roots and no client certificate.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct RedisTls {
    pub ca_pem: Option<String>,
    pub client_cert_pem: Option<String>,
    pub client_key_pem: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("invalid Redis URL {url:?}: {reason}")]
    Url { url: String, reason: String },
    #[error("unsupported Redis address {0} (only TCP)")]
    Unsupported(String),
    #[error("Redis TLS settings unusable: {0}")]
    TlsSettings(Arc<str>),
    #[error("Redis host {0:?} is not a valid TLS server name")]
    ServerName(String),
    #[error("TLS handshake with {host}:{port} failed: {error}")]
    Handshake {
        host: String,
        port: u16,
        error: io::Error,
    },
    #[error("connect to {host}:{port}: {error}")]
    Connect {
        host: String,
        port: u16,
        error: io::Error,
    },
}

/// Parses `redis://` or `rediss://`; whether it asks for TLS. (The `redis` crate, built
/// without its TLS features, refuses `rediss://`: TLS is ours.)
pub fn parse_url(url: &str) -> Result<(ConnectionInfo, bool), TransportError> {
    let (plain, tls) = match url.strip_prefix("rediss://") {
        Some(rest) => (format!("redis://{rest}"), true),
        None => (url.to_owned(), false),
    };
    let info = plain
        .as_str()
        .into_connection_info()
        .map_err(|e| TransportError::Url {
            url: url.to_owned(),
            reason: e.to_string(),
        })?;
    Ok((info, tls))
}

/// The host and port of a parsed URL.
pub fn host_port(info: &ConnectionInfo) -> Result<(&str, u16), TransportError> {
    match &info.addr {
        redis::ConnectionAddr::Tcp(host, port) => Ok((host.as_str(), *port)),
        other => Err(TransportError::Unsupported(other.to_string())),
    }
}

/// Makes connections of one backend: TCP, or TLS with the backend's settings (built once).
#[derive(Clone)]
pub struct Connector {
    tls: Option<Result<TlsConnector, Arc<str>>>,
}

impl Connector {
    pub fn plain() -> Self {
        Connector { tls: None }
    }

    /// TLS with this material. Unusable material is kept as an error that every connect
    /// returns (the compiler refuses it, so this is a bug's path, never a plaintext one).
    pub fn tls(material: &RedisTls) -> Self {
        let tls = client_config(material)
            .map(|c| TlsConnector::from(Arc::new(c)))
            .map_err(Arc::from);
        Connector { tls: Some(tls) }
    }

    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    pub async fn connect(&self, host: &str, port: u16) -> Result<Stream, TransportError> {
        let tcp =
            TcpStream::connect((host, port))
                .await
                .map_err(|error| TransportError::Connect {
                    host: host.to_owned(),
                    port,
                    error,
                })?;
        // Small calls, answered at once: no Nagle delay.
        tcp.set_nodelay(true)
            .map_err(|error| TransportError::Connect {
                host: host.to_owned(),
                port,
                error,
            })?;
        let Some(tls) = &self.tls else {
            return Ok(Stream::Tcp(tcp));
        };
        let connector = tls
            .as_ref()
            .map_err(|e| TransportError::TlsSettings(e.clone()))?;
        let name = ServerName::try_from(host.to_owned())
            .map_err(|_| TransportError::ServerName(host.to_owned()))?;
        let stream =
            connector
                .connect(name, tcp)
                .await
                .map_err(|error| TransportError::Handshake {
                    host: host.to_owned(),
                    port,
                    error,
                })?;
        Ok(Stream::Tls(Box::new(stream)))
    }
}

fn client_config(material: &RedisTls) -> Result<ClientConfig, String> {
    let builder = ClientConfig::builder_with_provider(crate::tls::provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| e.to_string())?;
    let mut roots = rustls::RootCertStore::empty();
    match &material.ca_pem {
        Some(pem) => {
            let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| format!("CA: {e}"))?;
            let (added, _) = roots.add_parsable_certificates(certs);
            if added == 0 {
                return Err("CA: no usable certificate".into());
            }
        }
        None => {
            // Unreadable system certificates are skipped: one bad file must not disable TLS.
            roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
        }
    }
    let builder = builder.with_root_certificates(roots);
    match (&material.client_cert_pem, &material.client_key_pem) {
        (Some(chain), Some(key)) => {
            let chain = CertificateDer::pem_slice_iter(chain.as_bytes())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| format!("client certificate: {e}"))?;
            let key = PrivateKeyDer::from_pem_slice(key.as_bytes())
                .map_err(|e| format!("client key: {e}"))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| format!("client certificate: {e}"))
        }
        (None, None) => Ok(builder.with_no_client_auth()),
        _ => Err("a client certificate needs both tls.crt and tls.key".into()),
    }
}

/// A connection to Redis, plain or TLS.
pub enum Stream {
    Tcp(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl Stream {
    /// The same connection in the form the pipe drives by readiness.
    pub fn into_wire(self) -> Wire {
        match self {
            Stream::Tcp(tcp) => Wire::Tcp(tcp),
            Stream::Tls(tls) => {
                let (tcp, conn) = tls.into_inner();
                Wire::Tls {
                    tcp,
                    conn: Box::new(conn),
                }
            }
        }
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// A connection driven by socket readiness: the calls mirror `TcpStream`'s `ready`,
/// `try_write` and `try_read_buf`, returning `WouldBlock` when the socket has nothing to
/// give or take.
pub enum Wire {
    Tcp(TcpStream),
    Tls {
        tcp: TcpStream,
        conn: Box<rustls::ClientConnection>,
    },
}

/// The socket as `std::io`, without blocking: what rustls reads from and writes to.
struct Nonblocking<'a>(&'a TcpStream);

impl Read for Nonblocking<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.try_read(buf)
    }
}

impl Write for Nonblocking<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.try_write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Wire {
    /// Waits until the socket is readable, or writable when `write` is asked or TLS has
    /// records to send.
    pub async fn ready(&self, write: bool) -> io::Result<tokio::io::Ready> {
        let (tcp, write) = match self {
            Wire::Tcp(tcp) => (tcp, write),
            Wire::Tls { tcp, conn } => (tcp, write || conn.wants_write()),
        };
        let interest = if write {
            Interest::READABLE | Interest::WRITABLE
        } else {
            Interest::READABLE
        };
        tcp.ready(interest).await
    }

    /// Takes what it can of `buf` without waiting.
    pub fn try_write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Wire::Tcp(tcp) => tcp.try_write(buf),
            Wire::Tls { tcp, conn } => {
                let taken = conn.writer().write(buf)?;
                send_records(tcp, conn)?;
                if taken == 0 && !buf.is_empty() {
                    return Err(io::ErrorKind::WouldBlock.into());
                }
                Ok(taken)
            }
        }
    }

    /// TLS: writes the records rustls holds (the socket may have refused them earlier).
    pub fn send_pending(&mut self) -> io::Result<()> {
        match self {
            Wire::Tcp(_) => Ok(()),
            Wire::Tls { tcp, conn } => send_records(tcp, conn),
        }
    }

    /// Reads into `buf`'s spare capacity (the caller keeps some); `Ok(0)`: closed.
    pub fn try_read_buf(&mut self, buf: &mut BytesMut) -> io::Result<usize> {
        match self {
            Wire::Tcp(tcp) => tcp.try_read_buf(buf),
            Wire::Tls { tcp, conn } => loop {
                let len = buf.len();
                buf.resize(buf.capacity().max(len + 4096), 0);
                let plain = conn.reader().read(&mut buf[len..]);
                match plain {
                    Ok(n) => {
                        buf.truncate(len + n);
                        return Ok(n);
                    }
                    Err(e) => {
                        buf.truncate(len);
                        if e.kind() != io::ErrorKind::WouldBlock {
                            return Err(e);
                        }
                    }
                }
                // No plain text buffered: records from the socket (`WouldBlock` when none).
                if conn.read_tls(&mut Nonblocking(tcp))? == 0 {
                    return Ok(0);
                }
                conn.process_new_packets()
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
                // Processing may have produced records to send (alerts, key updates).
                send_records(tcp, conn)?;
            },
        }
    }
}

fn send_records(tcp: &TcpStream, conn: &mut rustls::ClientConnection) -> io::Result<()> {
    while conn.wants_write() {
        match conn.write_tls(&mut Nonblocking(tcp)) {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
