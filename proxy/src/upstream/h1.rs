//! One HTTP/1.1 exchange at a time on a keep-alive upstream connection, driven by the task
//! of the request that uses it.
//!
//! Why not hyper's client connection: hyper runs every client connection as a task of its
//! own, fed through channels, and rebuilds the outgoing head through its own encoder and
//! header map; a proxy sends one request at a time per connection, and that machinery was
//! about a third of the proxy's instructions per request. Here the head is serialized
//! straight from the request, the response head is parsed with `httparse` (as hyper does)
//! into one shared buffer, and the response body is read by whoever polls it.
//!
//! Framing follows RFC 9112 §6:
//! - request: `Content-Length` when the body's length is known, `chunked` otherwise; the
//!   client's own `Content-Length`/`Transfer-Encoding` are never passed through (the body
//!   we send decides), and a body that disagrees with its announced length aborts the
//!   connection;
//! - response: no body for `HEAD`, `204` and `304`; `Transfer-Encoding` wins over
//!   `Content-Length` (and then the connection is not reused: a smuggling sign); conflicting
//!   `Content-Length`s are an invalid response; without either the body runs to the close;
//!   interim `1xx` answers are skipped;
//! - a connection is reused only when the response was read exactly to its end, the
//!   upstream did not ask to close it, and nothing follows the response.

use std::future::poll_fn;
use std::io::{self, Write as _};
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use http::request::Parts;
use http::{header, HeaderMap, HeaderName, HeaderValue, Method, Response, StatusCode, Version};
use hyper::body::Body;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::body::{BoxError, ProxyBody};

/// Largest response head accepted (hyper's default buffer limit is of the same order).
pub const MAX_HEAD: usize = 64 * 1024;
/// Most response header fields accepted (hyper's default).
const MAX_HEADERS: usize = 100;
/// Read buffer per connection; body data is read in pieces of at most this size.
const READ_BUFFER: usize = 16 * 1024;
/// Request body frames at least this large are written from their own buffer, not copied.
const DIRECT_WRITE: usize = 16 * 1024;
/// Buffered request bytes after which we write before taking the next body frame.
const WRITE_HIGH_WATER: usize = 64 * 1024;
/// Longest chunk-size line (size plus extensions) accepted in a chunked response.
const MAX_CHUNK_LINE: usize = 4096;
/// Largest trailer section accepted (and dropped) after the last chunk.
const MAX_TRAILERS: usize = 8 * 1024;

/// The byte stream to one upstream: plain TCP, or TLS for `https://` targets.
pub enum UpstreamIo {
    Plain(TokioIo<TcpStream>),
    Tls(Box<hyper_rustls::MaybeHttpsStream<TokioIo<TcpStream>>>),
}

impl UpstreamIo {
    fn poll_read(&mut self, cx: &mut Context<'_>, dst: &mut [u8]) -> Poll<io::Result<usize>> {
        match self {
            UpstreamIo::Plain(io) => {
                let mut buf = ReadBuf::new(dst);
                ready!(Pin::new(io.inner_mut()).poll_read(cx, &mut buf))?;
                Poll::Ready(Ok(buf.filled().len()))
            }
            UpstreamIo::Tls(io) => {
                let mut buf = hyper::rt::ReadBuf::new(dst);
                ready!(hyper::rt::Read::poll_read(
                    Pin::new(&mut **io),
                    cx,
                    buf.unfilled()
                ))?;
                Poll::Ready(Ok(buf.filled().len()))
            }
        }
    }

    fn poll_write(&mut self, cx: &mut Context<'_>, src: &[u8]) -> Poll<io::Result<usize>> {
        match self {
            UpstreamIo::Plain(io) => Pin::new(io.inner_mut()).poll_write(cx, src),
            UpstreamIo::Tls(io) => hyper::rt::Write::poll_write(Pin::new(&mut **io), cx, src),
        }
    }

    fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self {
            UpstreamIo::Plain(_) => Poll::Ready(Ok(())),
            UpstreamIo::Tls(io) => hyper::rt::Write::poll_flush(Pin::new(&mut **io), cx),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ExchangeError {
    #[error("upstream connection: {0}")]
    Io(#[from] io::Error),
    #[error("upstream closed the connection before a complete response")]
    Closed,
    #[error("invalid response from upstream: {0}")]
    InvalidResponse(&'static str),
    #[error("upstream response head larger than {MAX_HEAD} bytes")]
    HeadTooLarge,
    #[error("request body: {0}")]
    RequestBody(BoxError),
    #[error("request body length differs from its announced length")]
    RequestBodyLength,
}

/// How the request body is framed on the wire.
#[derive(Clone, Copy, PartialEq, Eq)]
enum RequestFraming {
    None,
    Length(u64),
    Chunked,
}

/// How the response body is delimited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResponseFraming {
    Empty,
    Length(u64),
    Chunked,
    UntilClose,
}

/// A response head as read from the upstream.
pub struct ResponseHead {
    pub response: Response<()>,
    pub framing: ResponseFraming,
    /// The connection may carry another exchange once the body has been read to its end.
    pub reusable: bool,
}

/// What went wrong in an exchange, and whether the upstream can have seen the request.
pub struct Failure {
    pub error: ExchangeError,
    /// Nothing came back on this connection: on a reused connection this is the upstream
    /// having closed it while idle, and a bodiless idempotent request may be sent again.
    pub nothing_received: bool,
}

pub struct H1Conn {
    io: UpstreamIo,
    /// Read buffer, all of it initialized; unread bytes are `rbuf[rpos..rend]`.
    rbuf: Vec<u8>,
    rpos: usize,
    rend: usize,
    /// Outgoing bytes not yet written: `wbuf[wpos..]`.
    wbuf: Vec<u8>,
    wpos: usize,
}

impl H1Conn {
    pub fn new(io: UpstreamIo) -> Self {
        H1Conn {
            io,
            rbuf: vec![0; READ_BUFFER],
            rpos: 0,
            rend: 0,
            wbuf: Vec::with_capacity(1024),
            wpos: 0,
        }
    }

    fn buffered(&self) -> &[u8] {
        &self.rbuf[self.rpos..self.rend]
    }

    /// Whether an idle connection can take a request: nothing arrived while it was idle
    /// (no close, no stray bytes). Reads only the readiness the reactor has already seen,
    /// so a quiet connection costs no system call.
    pub fn is_idle_and_open(&mut self) -> bool {
        if self.rpos != self.rend {
            return false;
        }
        let mut cx = Context::from_waker(std::task::Waker::noop());
        matches!(self.poll_fill(&mut cx, READ_BUFFER), Poll::Pending)
    }

    /// Reads more bytes into the buffer; `Ok(0)` is the end of the stream. The buffer grows
    /// up to `limit` bytes of unread data.
    fn poll_fill(&mut self, cx: &mut Context<'_>, limit: usize) -> Poll<io::Result<usize>> {
        if self.rpos == self.rend {
            self.rpos = 0;
            self.rend = 0;
        }
        if self.rend == self.rbuf.len() {
            if self.rpos > 0 {
                self.rbuf.copy_within(self.rpos..self.rend, 0);
                self.rend -= self.rpos;
                self.rpos = 0;
            } else if self.rbuf.len() < limit {
                let grown = (self.rbuf.len() * 2).min(limit);
                self.rbuf.resize(grown, 0);
            } else {
                return Poll::Ready(Err(io::Error::other("upstream read buffer full")));
            }
        }
        let n = ready!(self.io.poll_read(cx, &mut self.rbuf[self.rend..]))?;
        self.rend += n;
        Poll::Ready(Ok(n))
    }

    /// Writes what is buffered in `wbuf`.
    fn poll_write_buffered(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.wpos < self.wbuf.len() {
            let n = ready!(self.io.poll_write(cx, &self.wbuf[self.wpos..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.wpos += n;
        }
        self.wbuf.clear();
        self.wpos = 0;
        Poll::Ready(Ok(()))
    }

    async fn write_buffered(&mut self) -> io::Result<()> {
        poll_fn(|cx| self.poll_write_buffered(cx)).await
    }

    async fn write_direct(&mut self, data: &[u8]) -> io::Result<()> {
        let mut written = 0;
        while written < data.len() {
            let n = poll_fn(|cx| self.io.poll_write(cx, &data[written..])).await?;
            if n == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
            written += n;
        }
        Ok(())
    }

    /// Sends one request and reads the response head. `parts.uri` holds the origin-form
    /// target, `hop` what this hop adds, `host` the upstream's `Host`.
    pub async fn exchange(
        &mut self,
        parts: &Parts,
        hop: Hop<'_>,
        body: ProxyBody,
        host: &HeaderValue,
    ) -> Result<ResponseHead, Failure> {
        let sent = self.send_request(parts, hop, body, host).await;
        let mut received = false;
        let result = match sent {
            Ok(()) => {
                self.read_head(parts.method == Method::HEAD, &mut received)
                    .await
            }
            Err(e) => Err(e),
        };
        result.map_err(|error| Failure {
            nothing_received: !received && self.rend == self.rpos,
            error,
        })
    }

    async fn send_request(
        &mut self,
        parts: &Parts,
        hop: Hop<'_>,
        mut body: ProxyBody,
        host: &HeaderValue,
    ) -> Result<(), ExchangeError> {
        let framing = if body.is_end_stream() {
            // An explicit empty body for methods that define one, as hyper does.
            let announces = parts.headers.contains_key(header::CONTENT_LENGTH)
                || matches!(parts.method, Method::POST | Method::PUT | Method::PATCH);
            if announces {
                RequestFraming::Length(0)
            } else {
                RequestFraming::None
            }
        } else {
            match body.size_hint().exact() {
                Some(n) => RequestFraming::Length(n),
                None => RequestFraming::Chunked,
            }
        };
        self.wbuf.clear();
        self.wpos = 0;
        encode_head(&mut self.wbuf, parts, hop, host, framing);
        if matches!(framing, RequestFraming::None | RequestFraming::Length(0)) {
            self.write_buffered().await?;
            poll_fn(|cx| self.io.poll_flush(cx)).await?;
            return Ok(());
        }
        let mut remaining = match framing {
            RequestFraming::Length(n) => n,
            _ => 0,
        };
        loop {
            // Take the next frame; while the body has none ready, write what is buffered
            // (the head goes out together with a body that is already there).
            let next = poll_fn(|cx| loop {
                match Pin::new(&mut body).poll_frame(cx) {
                    Poll::Ready(frame) => return Poll::Ready(Ok::<_, io::Error>(frame)),
                    Poll::Pending if self.wpos < self.wbuf.len() => {
                        ready!(self.poll_write_buffered(cx))?;
                    }
                    Poll::Pending => return Poll::Pending,
                }
            })
            .await?;
            let frame = match next {
                None => break,
                Some(Err(e)) => return Err(ExchangeError::RequestBody(e)),
                Some(Ok(frame)) => frame,
            };
            let data = match frame.into_data() {
                Ok(data) => data,
                // Trailers: dropped, as the `Trailer` header that announces them is.
                Err(_) => continue,
            };
            if data.is_empty() {
                continue;
            }
            if framing == RequestFraming::Chunked {
                encode_chunk_size(&mut self.wbuf, data.len());
            } else {
                let n = data.len() as u64;
                if n > remaining {
                    return Err(ExchangeError::RequestBodyLength);
                }
                remaining -= n;
            }
            if data.len() >= DIRECT_WRITE {
                self.write_buffered().await?;
                self.write_direct(&data).await?;
            } else {
                self.wbuf.extend_from_slice(&data);
            }
            if framing == RequestFraming::Chunked {
                self.wbuf.extend_from_slice(b"\r\n");
            }
            if self.wbuf.len() - self.wpos >= WRITE_HIGH_WATER {
                self.write_buffered().await?;
            }
        }
        match framing {
            RequestFraming::Chunked => self.wbuf.extend_from_slice(b"0\r\n\r\n"),
            _ if remaining != 0 => return Err(ExchangeError::RequestBodyLength),
            _ => {}
        }
        self.write_buffered().await?;
        poll_fn(|cx| self.io.poll_flush(cx)).await?;
        Ok(())
    }

    async fn read_head(
        &mut self,
        head_request: bool,
        received: &mut bool,
    ) -> Result<ResponseHead, ExchangeError> {
        loop {
            if self.rend > self.rpos {
                *received = true;
                if let Some((used, head)) = parse_head(self.buffered(), head_request)? {
                    self.rpos += used;
                    match head {
                        Some(head) => return Ok(head),
                        // An interim 1xx answer: the final one follows.
                        None => continue,
                    }
                }
                if self.rend - self.rpos >= MAX_HEAD {
                    return Err(ExchangeError::HeadTooLarge);
                }
            }
            let n = poll_fn(|cx| self.poll_fill(cx, MAX_HEAD + READ_BUFFER)).await?;
            if n == 0 {
                return Err(ExchangeError::Closed);
            }
        }
    }

    /// Takes `n` buffered body bytes (at most what is buffered).
    fn take(&mut self, n: usize) -> Bytes {
        let n = n.min(self.rend - self.rpos);
        let data = Bytes::copy_from_slice(&self.rbuf[self.rpos..self.rpos + n]);
        self.rpos += n;
        data
    }
}

/// What this hop sends besides the client's fields.
#[derive(Clone, Copy, Default)]
pub struct Hop<'a> {
    /// Fields this hop adds (forwarding, identity, request id, configured headers).
    pub added: &'a [(HeaderName, HeaderValue)],
    /// The proxy's `traceparent`, written straight into the head: it replaces any the client
    /// sent, which the encoder skips (cheaper than a `HeaderValue` and a map insert).
    pub traceparent: Option<&'a [u8; 55]>,
}

fn encode_head(
    buf: &mut Vec<u8>,
    parts: &Parts,
    hop: Hop<'_>,
    host: &HeaderValue,
    framing: RequestFraming,
) {
    buf.extend_from_slice(parts.method.as_str().as_bytes());
    buf.push(b' ');
    let target = parts.uri.path_and_query().map_or("/", |pq| pq.as_str());
    buf.extend_from_slice(target.as_bytes());
    buf.extend_from_slice(b" HTTP/1.1\r\nhost: ");
    buf.extend_from_slice(host.as_bytes());
    buf.extend_from_slice(b"\r\n");
    for (name, value) in &parts.headers {
        if name == header::HOST
            || name == header::CONTENT_LENGTH
            || name == header::TRANSFER_ENCODING
            || crate::forward_headers::is_replaced(name)
            || (hop.traceparent.is_some() && name == crate::trace_context::TRACEPARENT)
        {
            continue;
        }
        encode_field(buf, name, value);
    }
    for (name, value) in hop.added {
        encode_field(buf, name, value);
    }
    if let Some(traceparent) = hop.traceparent {
        buf.extend_from_slice(b"traceparent: ");
        buf.extend_from_slice(traceparent);
        buf.extend_from_slice(b"\r\n");
    }
    match framing {
        RequestFraming::None => {}
        RequestFraming::Length(n) => {
            buf.extend_from_slice(b"content-length: ");
            buf.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
            buf.extend_from_slice(b"\r\n");
        }
        RequestFraming::Chunked => buf.extend_from_slice(b"transfer-encoding: chunked\r\n"),
    }
    buf.extend_from_slice(b"\r\n");
}

fn encode_field(buf: &mut Vec<u8>, name: &HeaderName, value: &HeaderValue) {
    buf.extend_from_slice(name.as_str().as_bytes());
    buf.extend_from_slice(b": ");
    buf.extend_from_slice(value.as_bytes());
    buf.extend_from_slice(b"\r\n");
}

fn encode_chunk_size(buf: &mut Vec<u8>, len: usize) {
    // Writing into a Vec cannot fail.
    let _ = write!(buf, "{len:x}\r\n");
}

/// Parses a response head at the start of `buf`: `Ok(None)` when more bytes are needed,
/// `Ok(Some((used, None)))` for an interim 1xx answer to skip.
#[allow(clippy::type_complexity)]
pub fn parse_head(
    buf: &[u8],
    head_request: bool,
) -> Result<Option<(usize, Option<ResponseHead>)>, ExchangeError> {
    let mut headers = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut parsed = httparse::Response::new(&mut []);
    let used = match httparse::ParserConfig::default().parse_response_with_uninit_headers(
        &mut parsed,
        buf,
        &mut headers,
    ) {
        Ok(httparse::Status::Complete(used)) => used,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(ExchangeError::InvalidResponse("too many header fields"))
        }
        Err(_) => return Err(ExchangeError::InvalidResponse("malformed response head")),
    };
    let code = parsed.code.unwrap_or(0);
    let status = StatusCode::from_u16(code)
        .map_err(|_| ExchangeError::InvalidResponse("invalid status code"))?;
    if status.is_informational() {
        if status == StatusCode::SWITCHING_PROTOCOLS {
            // We never ask for an upgrade.
            return Err(ExchangeError::InvalidResponse(
                "unsolicited protocol switch",
            ));
        }
        return Ok(Some((used, None)));
    }
    let version = match parsed.version {
        Some(0) => Version::HTTP_10,
        _ => Version::HTTP_11,
    };
    // One copy of the head; header values are slices of it.
    let head_bytes = Bytes::copy_from_slice(&buf[..used]);
    let base = buf.as_ptr() as usize;
    // Room for what the gateway adds to the response (request id, rate-limit and security
    // headers, CORS) so the map is not regrown and rehashed on the way out.
    let mut map = HeaderMap::with_capacity(parsed.headers.len() + 10);
    let mut content_length: Option<u64> = None;
    let mut transfer_encoding = false;
    let mut chunked_last = false;
    let mut close = version == Version::HTTP_10;
    // Headers a `Connection` field names: hop-by-hop too, removed once the map is built.
    let mut connection_named = false;
    for field in parsed.headers.iter() {
        let name = HeaderName::from_bytes(field.name.as_bytes())
            .map_err(|_| ExchangeError::InvalidResponse("invalid header name"))?;
        if name == header::CONTENT_LENGTH {
            for part in field.value.split(|&b| b == b',') {
                let n = parse_length(part)
                    .ok_or(ExchangeError::InvalidResponse("invalid Content-Length"))?;
                if content_length.is_some_and(|seen| seen != n) {
                    return Err(ExchangeError::InvalidResponse("conflicting Content-Length"));
                }
                content_length = Some(n);
            }
        } else if name == header::TRANSFER_ENCODING {
            transfer_encoding = true;
            if let Some(last) = field.value.rsplit(|&b| b == b',').next() {
                chunked_last = last.trim_ascii().eq_ignore_ascii_case(b"chunked");
            }
        } else if name == header::CONNECTION {
            for token in field.value.split(|&b| b == b',') {
                let token = token.trim_ascii();
                if token.eq_ignore_ascii_case(b"close") {
                    close = true;
                } else if token.eq_ignore_ascii_case(b"keep-alive") {
                    if version == Version::HTTP_10 {
                        close = false;
                    }
                } else if !token.is_empty() {
                    connection_named = true;
                }
            }
        }
        let start = field.value.as_ptr() as usize - base;
        let value =
            HeaderValue::from_maybe_shared(head_bytes.slice(start..start + field.value.len()))
                .map_err(|_| ExchangeError::InvalidResponse("invalid header value"))?;
        // Hop-by-hop fields end here: they describe this connection, not the response the
        // client gets (what they say about framing was read above). `Connection` stays
        // only when it names other fields, to remove those below.
        if crate::forward_headers::is_hop_by_hop(&name)
            && !(connection_named && name == header::CONNECTION)
        {
            continue;
        }
        map.append(name, value);
    }
    if connection_named {
        // Rare: drop the fields `Connection` names, and `Connection` itself.
        crate::forward_headers::strip_hop_by_hop(&mut map);
    }
    let no_body =
        head_request || status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED;
    let mut reusable = !close;
    let framing = if no_body {
        ResponseFraming::Empty
    } else if transfer_encoding {
        if content_length.is_some() {
            // Both framings: a smuggling sign. Decode by Transfer-Encoding, never reuse.
            reusable = false;
        }
        if chunked_last {
            ResponseFraming::Chunked
        } else {
            ResponseFraming::UntilClose
        }
    } else {
        match content_length {
            Some(0) => ResponseFraming::Empty,
            Some(n) => ResponseFraming::Length(n),
            None => ResponseFraming::UntilClose,
        }
    };
    if framing == ResponseFraming::UntilClose {
        reusable = false;
    }
    let mut response = Response::new(());
    *response.status_mut() = status;
    *response.version_mut() = version;
    *response.headers_mut() = map;
    Ok(Some((
        used,
        Some(ResponseHead {
            response,
            framing,
            reusable,
        }),
    )))
}

fn parse_length(digits: &[u8]) -> Option<u64> {
    let digits = digits.trim_ascii();
    if digits.is_empty() || digits.len() > 19 {
        return None;
    }
    digits.iter().try_fold(0u64, |n, &b| {
        b.is_ascii_digit().then(|| n * 10 + u64::from(b - b'0'))
    })
}

/// Where a response body stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum BodyState {
    Length(u64),
    ChunkSize,
    ChunkData(u64),
    ChunkEnd,
    Trailers,
    UntilClose,
    Done,
}

/// Reads a response body off its connection. The owner decides what happens to the
/// connection once [`BodyReader::is_done`].
pub struct BodyReader {
    state: BodyState,
}

#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("upstream connection: {0}")]
    Io(#[from] io::Error),
    #[error("upstream closed the connection in the middle of the response body")]
    Truncated,
    #[error("invalid chunked encoding from upstream")]
    InvalidChunk,
}

/// What [`BodyReader::step`] makes of the buffered bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BodyStep {
    /// The first `n` (> 0) bytes are body data.
    Data(usize),
    /// The first `n` bytes are framing (a chunk-size line, a chunk's CRLF): skip them and
    /// step again.
    Framing(usize),
    /// The body ended after `n` more framing bytes (the last chunk's CRLF, trailers).
    End(usize),
    /// Not enough bytes to tell; at the end of the stream the body is truncated, unless
    /// it runs to the close.
    NeedMore,
    /// Not valid chunked encoding.
    Invalid,
}

/// `available`, at most `limit`.
fn clamp(available: usize, limit: u64) -> usize {
    available.min(usize::try_from(limit).unwrap_or(usize::MAX))
}

/// A whole body decoded from `reads` (the pieces the stream delivers, then its end), the
/// way [`BodyReader::poll_data`] decodes it from a connection: the body and how many bytes
/// of input it took. No socket, so fuzzing and tests reach the decoder directly.
pub fn decode_body(
    framing: ResponseFraming,
    reads: &[&[u8]],
) -> Result<(Vec<u8>, usize), BodyError> {
    let mut reader = BodyReader::new(framing);
    let mut buffered: Vec<u8> = Vec::new();
    // Input bytes taken (data and framing) from the start of the stream.
    let mut consumed = 0;
    let mut body = Vec::new();
    let mut reads = reads.iter();
    loop {
        match reader.step(&buffered) {
            BodyStep::Data(n) => {
                body.extend_from_slice(&buffered[..n]);
                buffered.drain(..n);
                consumed += n;
            }
            BodyStep::Framing(n) => {
                buffered.drain(..n);
                consumed += n;
            }
            BodyStep::End(n) => return Ok((body, consumed + n)),
            BodyStep::Invalid => return Err(BodyError::InvalidChunk),
            BodyStep::NeedMore => match reads.next() {
                Some(read) => buffered.extend_from_slice(read),
                None if reader.state == BodyState::UntilClose => return Ok((body, consumed)),
                None => return Err(BodyError::Truncated),
            },
        }
    }
}

impl BodyReader {
    pub fn new(framing: ResponseFraming) -> Self {
        let state = match framing {
            ResponseFraming::Empty => BodyState::Done,
            ResponseFraming::Length(n) => BodyState::Length(n),
            ResponseFraming::Chunked => BodyState::ChunkSize,
            ResponseFraming::UntilClose => BodyState::UntilClose,
        };
        BodyReader { state }
    }

    pub fn is_done(&self) -> bool {
        matches!(self.state, BodyState::Done | BodyState::Length(0))
    }

    /// Bytes still to come, when the framing says.
    pub fn remaining(&self) -> Option<u64> {
        match self.state {
            BodyState::Done => Some(0),
            BodyState::Length(n) => Some(n),
            _ => None,
        }
    }

    /// What the bytes buffered so far (`buf`, unread, at the decoder's position) are:
    /// body data, framing to skip, the end, or not enough to tell. Pure, so the decoder
    /// can be driven from a byte slice (fuzzing, tests) as well as from the connection.
    pub fn step(&mut self, buf: &[u8]) -> BodyStep {
        let available = buf.len();
        match self.state {
            BodyState::Done => BodyStep::End(0),
            BodyState::Length(0) => {
                self.state = BodyState::Done;
                BodyStep::End(0)
            }
            BodyState::Length(remaining) if available > 0 => {
                let n = clamp(available, remaining);
                let left = remaining - n as u64;
                self.state = if left == 0 {
                    BodyState::Done
                } else {
                    BodyState::Length(left)
                };
                BodyStep::Data(n)
            }
            BodyState::ChunkData(remaining) if available > 0 => {
                let n = clamp(available, remaining);
                let left = remaining - n as u64;
                self.state = if left == 0 {
                    BodyState::ChunkEnd
                } else {
                    BodyState::ChunkData(left)
                };
                BodyStep::Data(n)
            }
            BodyState::UntilClose if available > 0 => BodyStep::Data(available),
            BodyState::ChunkSize if available > 0 => {
                if !buf[0].is_ascii_hexdigit() {
                    return BodyStep::Invalid;
                }
                match httparse::parse_chunk_size(buf) {
                    // The bound holds for a line that arrived whole too: otherwise whether a
                    // long line is refused depends on how the upstream's bytes were split.
                    Ok(httparse::Status::Complete((used, size))) if used <= MAX_CHUNK_LINE => {
                        self.state = if size == 0 {
                            BodyState::Trailers
                        } else {
                            BodyState::ChunkData(size)
                        };
                        BodyStep::Framing(used)
                    }
                    Ok(httparse::Status::Partial) if available < MAX_CHUNK_LINE => {
                        BodyStep::NeedMore
                    }
                    _ => BodyStep::Invalid,
                }
            }
            BodyState::ChunkEnd if available >= 2 => {
                if buf.starts_with(b"\r\n") {
                    self.state = BodyState::ChunkSize;
                    return BodyStep::Framing(2);
                }
                BodyStep::Invalid
            }
            BodyState::Trailers if available >= 2 => {
                if buf.starts_with(b"\r\n") {
                    self.state = BodyState::Done;
                    return BodyStep::End(2);
                }
                // Looked for within the bound only, for the same reason as chunk lines.
                let window = &buf[..available.min(MAX_TRAILERS)];
                if let Some(end) = memchr::memmem::find(window, b"\r\n\r\n") {
                    self.state = BodyState::Done;
                    return BodyStep::End(end + 4);
                }
                if available >= MAX_TRAILERS {
                    return BodyStep::Invalid;
                }
                BodyStep::NeedMore
            }
            _ => BodyStep::NeedMore,
        }
    }

    /// The next piece of body data; `None` at the end.
    pub fn poll_data(
        &mut self,
        conn: &mut H1Conn,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Bytes, BodyError>>> {
        loop {
            match self.step(conn.buffered()) {
                BodyStep::Data(n) => return Poll::Ready(Some(Ok(conn.take(n)))),
                BodyStep::Framing(n) => {
                    conn.rpos += n;
                    continue;
                }
                BodyStep::End(n) => {
                    conn.rpos += n;
                    return Poll::Ready(None);
                }
                BodyStep::Invalid => return Poll::Ready(Some(Err(BodyError::InvalidChunk))),
                BodyStep::NeedMore => {}
            }
            match ready!(conn.poll_fill(cx, READ_BUFFER)) {
                Ok(0) if self.state == BodyState::UntilClose => {
                    self.state = BodyState::Done;
                    return Poll::Ready(None);
                }
                Ok(0) => return Poll::Ready(Some(Err(BodyError::Truncated))),
                Ok(_) => {}
                Err(e) => return Poll::Ready(Some(Err(e.into()))),
            }
        }
    }

    /// Whether the connection is in step for another exchange after this body.
    pub fn left_clean(&self, conn: &H1Conn) -> bool {
        self.state == BodyState::Done && conn.rpos == conn.rend
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn head(raw: &[u8], head_request: bool) -> ResponseHead {
        parse_head(raw, head_request).unwrap().unwrap().1.unwrap()
    }

    #[test]
    fn framing_of_response_heads() {
        let h = head(b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nok\n", false);
        assert_eq!(h.framing, ResponseFraming::Length(3));
        assert!(h.reusable);
        let h = head(b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\n", true);
        assert_eq!(h.framing, ResponseFraming::Empty);
        let h = head(b"HTTP/1.1 204 No Content\r\n\r\n", false);
        assert_eq!(h.framing, ResponseFraming::Empty);
        let h = head(
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, Chunked\r\n\r\n",
            false,
        );
        assert_eq!(h.framing, ResponseFraming::Chunked);
        assert!(h.reusable);
        let h = head(
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ncontent-length: 5\r\n\r\n",
            false,
        );
        assert_eq!(h.framing, ResponseFraming::Chunked);
        assert!(!h.reusable);
        let h = head(b"HTTP/1.1 200 OK\r\n\r\n", false);
        assert_eq!(h.framing, ResponseFraming::UntilClose);
        assert!(!h.reusable);
        let h = head(
            b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\nconnection: close\r\n\r\n",
            false,
        );
        assert!(!h.reusable);
        let h = head(b"HTTP/1.0 200 OK\r\ncontent-length: 5\r\n\r\n", false);
        assert!(!h.reusable);
        let h = head(
            b"HTTP/1.0 200 OK\r\ncontent-length: 5\r\nconnection: keep-alive\r\n\r\n",
            false,
        );
        assert!(h.reusable);
        let h = head(b"HTTP/1.1 200 OK\r\ncontent-length: 5, 5\r\n\r\n", false);
        assert_eq!(h.framing, ResponseFraming::Length(5));
    }

    #[test]
    fn hop_by_hop_fields_stay_out_of_the_response() {
        let h = head(
            b"HTTP/1.1 200 OK\r\nconnection: keep-alive, x-private\r\nkeep-alive: timeout=5\r\n\
              x-private: 1\r\ntransfer-encoding: chunked\r\nx-kept: 2\r\n\r\n",
            false,
        );
        let names: Vec<_> = h.response.headers().keys().map(|k| k.as_str()).collect();
        assert_eq!(names, ["x-kept"]);
        assert_eq!(h.framing, ResponseFraming::Chunked);
        let h = head(
            b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 1\r\n\r\n",
            false,
        );
        let names: Vec<_> = h.response.headers().keys().map(|k| k.as_str()).collect();
        assert_eq!(names, ["content-length"]);
        assert!(!h.reusable);
    }

    #[test]
    fn invalid_heads_are_refused() {
        for raw in [
            &b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\ncontent-length: 6\r\n\r\n"[..],
            b"HTTP/1.1 200 OK\r\ncontent-length: -1\r\n\r\n",
            b"HTTP/1.1 200 OK\r\ncontent-length: 99999999999999999999\r\n\r\n",
            b"HTTP/1.1 200 OK\r\ncontent-length: \r\n\r\n",
            b"HTTP/1.1 101 Switching Protocols\r\n\r\n",
            b"HTTP/1.1 20 OK\r\n\r\n",
            b"HTTX/1.1 200 OK\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nbad header\r\n\r\n",
        ] {
            assert!(
                parse_head(raw, false).is_err(),
                "{:?}",
                String::from_utf8_lossy(raw)
            );
        }
        assert!(parse_head(b"HTTP/1.1 200 OK\r\ncontent-le", false)
            .unwrap()
            .is_none());
    }

    #[test]
    fn interim_answers_are_skipped() {
        let raw = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\n\r\n";
        let (used, interim) = parse_head(raw, false).unwrap().unwrap();
        assert!(interim.is_none());
        assert_eq!(used, 25);
    }

    #[test]
    fn heads_are_encoded_with_our_framing() {
        let mut request = http::Request::builder()
            .method("POST")
            .uri("/a?b=1")
            .header("host", "client.example")
            .header("content-length", "999")
            .header("transfer-encoding", "chunked")
            .header("x-one", "1")
            .header("x-forwarded-for", "forged")
            .body(())
            .unwrap();
        request
            .headers_mut()
            .append("x-one", HeaderValue::from_static("2"));
        let (parts, ()) = request.into_parts();
        let mut buf = Vec::new();
        let host = HeaderValue::from_static("up:8080");
        let added = [(
            HeaderName::from_static("x-forwarded-for"),
            HeaderValue::from_static("10.0.0.1"),
        )];
        let hop = Hop {
            added: &added,
            traceparent: None,
        };
        encode_head(&mut buf, &parts, hop, &host, RequestFraming::Length(12));
        assert_eq!(
            String::from_utf8(buf).unwrap(),
            "POST /a?b=1 HTTP/1.1\r\nhost: up:8080\r\nx-one: 1\r\nx-one: 2\r\n\
             x-forwarded-for: 10.0.0.1\r\ncontent-length: 12\r\n\r\n"
        );
        let mut buf = Vec::new();
        encode_chunk_size(&mut buf, 0x1a2f);
        encode_chunk_size(&mut buf, 0);
        assert_eq!(buf, b"1a2f\r\n0\r\n");
    }

    #[test]
    fn our_traceparent_replaces_every_one_the_client_sent() {
        let mut request = http::Request::builder()
            .uri("/")
            .header(
                "traceparent",
                "00-11111111111111111111111111111111-2222222222222222-01",
            )
            .header("x-one", "1")
            .body(())
            .unwrap();
        request.headers_mut().append(
            "traceparent",
            HeaderValue::from_static("00-33333333333333333333333333333333-4444444444444444-01"),
        );
        let (parts, ()) = request.into_parts();
        let ours = *b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00";
        let host = HeaderValue::from_static("up");
        let mut buf = Vec::new();
        let hop = Hop {
            added: &[],
            traceparent: Some(&ours),
        };
        encode_head(&mut buf, &parts, hop, &host, RequestFraming::None);
        assert_eq!(
            String::from_utf8(buf).unwrap(),
            "GET / HTTP/1.1\r\nhost: up\r\nx-one: 1\r\n\
             traceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00\r\n\r\n"
        );
        // Trace context off: the client's fields go through untouched.
        let mut buf = Vec::new();
        encode_head(
            &mut buf,
            &parts,
            Hop::default(),
            &host,
            RequestFraming::None,
        );
        let head = String::from_utf8(buf).unwrap();
        assert_eq!(head.matches("traceparent: ").count(), 2, "{head}");
    }

    /// A body framed as `send_request` frames a chunked request body: each non-empty frame
    /// as one chunk, then the last chunk.
    fn encode_chunked(chunks: &[Vec<u8>], trailers: &[u8]) -> Vec<u8> {
        let mut wire = Vec::new();
        for chunk in chunks.iter().filter(|c| !c.is_empty()) {
            encode_chunk_size(&mut wire, chunk.len());
            wire.extend_from_slice(chunk);
            wire.extend_from_slice(b"\r\n");
        }
        wire.extend_from_slice(b"0\r\n");
        wire.extend_from_slice(trailers);
        wire.extend_from_slice(b"\r\n");
        wire
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(500))]

        /// What our chunk writer encodes, our decoder gives back, however the bytes arrive,
        /// taking exactly the encoded bytes (a following response stays in the buffer).
        #[test]
        fn chunked_round_trip(
            chunks in proptest::collection::vec(proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300), 0..8),
            trailers in proptest::prop_oneof![
                proptest::strategy::Just(Vec::new()),
                proptest::strategy::Just(b"x-checksum: 1\r\n".to_vec()),
            ],
            piece in 1usize..64,
        ) {
            let wire = encode_chunked(&chunks, &trailers);
            let expected: Vec<u8> = chunks.concat();
            let mut stream = wire.clone();
            stream.extend_from_slice(b"HTTP/1.1 200 OK\r\n");
            let reads: Vec<&[u8]> = stream.chunks(piece).collect();
            let (body, used) = decode_body(ResponseFraming::Chunked, &reads).unwrap();
            proptest::prop_assert_eq!(&body, &expected);
            proptest::prop_assert_eq!(used, wire.len());
            // Cut anywhere before its end, the body is truncated, never complete.
            let cut = &wire[..wire.len() - 1];
            proptest::prop_assert!(matches!(
                decode_body(ResponseFraming::Chunked, &[cut]),
                Err(BodyError::Truncated)
            ));
        }
    }

    /// Fuzz crash (upstream_head): a non-ASCII token in `Connection` made the whole value
    /// unreadable as text, so the fields it named (`x-private`) reached the client.
    #[test]
    fn fuzz_connection_with_obs_text_still_drops_named_fields() {
        let raw =
            b"HTTP/1.1 200 OK\r\nconnection: \xd3eep-alive, x-private\r\nkeep-alive: timeout=0\r\n\
                    x-private: 1\r\ntransfe'-encodt: 2\r\n\r\n";
        let h = head(raw, false);
        let names: Vec<_> = h.response.headers().keys().map(|k| k.as_str()).collect();
        assert_eq!(names, ["transfe'-encodt"]);
    }

    /// The chunked_body property (same outcome however the bytes arrive) on inputs past the
    /// line and trailer bounds: a chunk-size line longer than `MAX_CHUNK_LINE`, or trailers
    /// longer than `MAX_TRAILERS`, were accepted when they arrived in one read and refused
    /// when they trickled in.
    #[test]
    fn fuzz_long_chunk_lines_and_trailers_do_not_depend_on_reads() {
        let mut long_line = b"1;".to_vec();
        long_line.extend(std::iter::repeat_n(b'a', MAX_CHUNK_LINE));
        long_line.extend_from_slice(b"\r\nx\r\n0\r\n\r\n");
        let mut long_trailers = b"1\r\nx\r\n0\r\nx-t: ".to_vec();
        long_trailers.extend(std::iter::repeat_n(b'a', MAX_TRAILERS));
        long_trailers.extend_from_slice(b"\r\n\r\n");
        for input in [long_line, long_trailers] {
            let whole = decode_body(ResponseFraming::Chunked, &[&input]);
            let bytes: Vec<&[u8]> = input.chunks(1).collect();
            let trickled = decode_body(ResponseFraming::Chunked, &bytes);
            assert!(matches!(whole, Err(BodyError::InvalidChunk)), "{whole:?}");
            assert!(
                matches!(trickled, Err(BodyError::InvalidChunk)),
                "{trickled:?}"
            );
        }
        // Just inside the bounds, both are read.
        let mut line = b"1;".to_vec();
        line.extend(std::iter::repeat_n(b'a', MAX_CHUNK_LINE - 4));
        line.extend_from_slice(b"\r\nx\r\n0\r\n\r\n");
        let mut trailers = b"1\r\nx\r\n0\r\nx-t: ".to_vec();
        trailers.extend(std::iter::repeat_n(b'a', MAX_TRAILERS - 11));
        trailers.extend_from_slice(b"\r\n\r\n");
        for input in [line, trailers] {
            let bytes: Vec<&[u8]> = input.chunks(1).collect();
            assert_eq!(
                decode_body(ResponseFraming::Chunked, &[&input]).unwrap(),
                (b"x".to_vec(), input.len())
            );
            assert_eq!(
                decode_body(ResponseFraming::Chunked, &bytes).unwrap(),
                (b"x".to_vec(), input.len())
            );
        }
    }

    #[test]
    fn lengths_parse_strictly() {
        assert_eq!(parse_length(b" 42 "), Some(42));
        assert_eq!(parse_length(b"+4"), None);
        assert_eq!(parse_length(b"4 2"), None);
        assert_eq!(parse_length(b""), None);
        assert_eq!(parse_length(b"18446744073709551615"), None);
    }
}
