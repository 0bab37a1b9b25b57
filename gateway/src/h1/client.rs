//! The upstream side of HTTP/1.1: one exchange on a pooled connection,
//! driven by the request's own task.
//!
//! hyper's client runs every upstream connection as a task of its own and
//! hands each request to it over a channel: a second task woken per
//! request, and a general dispatcher on both sides of the channel (about a
//! quarter of a small GET's instructions under callgrind). Here the
//! request's task writes the request ([`send`]), reads the response head,
//! and then reads the body as the response is relayed ([`ResponseBody`]).
//! An idle connection is a socket alone: no task, no buffer.
//!
//! - The request head is written as the proxy prepared it (origin form,
//!   one `Host`); its body goes as `Content-Length` when the length is
//!   known, else chunked, as hyper's client frames it. The body is written
//!   while the response is watched for: an upstream that answers before
//!   the body is complete (a 413, say) gets its answer relayed and the
//!   connection is then closed, the rest of the body unsent.
//! - The response head is parsed with `httparse` and framed as RFC 9112
//!   §6.3 says: no body for HEAD, 204 and 304; `Transfer-Encoding` ending
//!   in `chunked` (decoded as strictly as requests are, trailers kept);
//!   another coding, or no length at all, runs until the connection
//!   closes; `Content-Length` values that differ are refused (502).
//!   Interim answers (100, 103) are read past; a 101 is refused, since
//!   upgrades go through hyper's client (`crate::pool`).
//! - A connection goes back to the pool only when its response was read to
//!   its end, nothing followed it, and neither side asked to close.

use std::future::poll_fn;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{Context, Poll, Waker, ready};

use bytes::{Buf, Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, Response, StatusCode, Version};
use http_body::{Body, Frame as BodyFrame, SizeHint};
use tokio::io::AsyncWrite;
use tokio::net::TcpStream;

use super::framing::{BodyDecoder, BodyFraming, CHUNK_END, Frame, FramingError, chunk_size_line};
use super::head::{self, MAX_HEADERS, Spans};
use super::pool;

/// Errors a request body may fail with.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Largest response head.
pub const MAX_HEAD: usize = 16 * 1024;
/// Most bytes of a response body read at once (what one slow client can
/// make the gateway hold per upstream connection).
const MAX_READ: usize = 16 * 1024;
/// Body frames up to this size are copied next to their framing and sent
/// in one write; larger ones are written from where they are.
const COPY_LIMIT: usize = 2048;

/// Why an exchange failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Writing to the upstream failed.
    #[error("writing the request: {0}")]
    Write(io::Error),
    /// Reading from the upstream failed.
    #[error("reading the response: {0}")]
    Read(io::Error),
    /// The upstream closed the connection before a response head.
    #[error("connection closed before a response")]
    ClosedBeforeAnswer,
    /// The upstream closed the connection inside a body.
    #[error("connection closed before the end of the response body")]
    ClosedMidBody,
    /// The response head is not valid HTTP/1.x or breaks a limit.
    #[error("invalid response head: {0}")]
    Head(&'static str),
    /// The response body's chunked framing is invalid.
    #[error("invalid response body: {0}")]
    Body(#[from] FramingError),
    /// The request body failed while it was being sent.
    #[error("request body: {0}")]
    RequestBody(BoxError),
}

/// Whether an idle connection can carry a request: the peer has neither
/// closed it nor sent anything. Costs no system call unless the socket was
/// marked readable since it was last read to the end.
pub fn usable(io: &TcpStream) -> bool {
    let mut cx = Context::from_waker(Waker::noop());
    match io.poll_read_ready(&mut cx) {
        Poll::Pending => true,
        Poll::Ready(Err(_)) => false,
        // Readable: the end of the stream, or bytes nobody asked for; or
        // nothing, if readiness was left set by the last read.
        Poll::Ready(Ok(())) => {
            matches!(io.try_read(&mut [0u8; 1]), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
        }
    }
}

/// Sends `req` on `io` and returns the response once its head is in; its
/// body reads the rest from the same connection.
pub async fn send<B>(io: TcpStream, req: Request<B>) -> Result<Response<ResponseBody>, ClientError>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    let (parts, body) = req.into_parts();
    let mut out = pool::take();
    let encoding = encoding(&parts.headers, &body);
    put_head(&mut out, &parts, encoding);
    let mut ex = Exchange {
        io,
        out,
        data: Bytes::new(),
        tail: b"",
        body: (!body.is_end_stream()).then_some(body),
        encoding,
        input: BytesMut::new(),
        head_request: parts.method == Method::HEAD,
    };
    drop(parts);
    let head = poll_fn(|cx| ex.poll(cx)).await?;
    Ok(ex.into_response(head))
}

/// How a request body is framed: as hyper's client does, a length the
/// headers declare, else the body's exact length, else chunked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Encoding {
    /// No body (and no framing field added).
    Empty,
    /// `Content-Length` (`true`: added here, not in the headers).
    Length(bool, u64),
    /// Chunked, `Transfer-Encoding` added here.
    Chunked,
}

fn encoding<B: Body>(headers: &HeaderMap, body: &B) -> Encoding {
    if body.is_end_stream() {
        return Encoding::Empty;
    }
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    match (declared, body.size_hint().exact()) {
        (Some(n), _) => Encoding::Length(false, n),
        (None, Some(n)) => Encoding::Length(true, n),
        (None, None) => Encoding::Chunked,
    }
}

fn put_head(out: &mut BytesMut, parts: &http::request::Parts, encoding: Encoding) {
    out.reserve(256 + 48 * parts.headers.len());
    out.extend_from_slice(parts.method.as_str().as_bytes());
    out.extend_from_slice(b" ");
    let target = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    for (name, value) in &parts.headers {
        if name == header::TRANSFER_ENCODING {
            continue;
        }
        put_field(out, name.as_str().as_bytes(), value.as_bytes());
    }
    match encoding {
        Encoding::Length(true, n) => {
            put_field(out, b"content-length", HeaderValue::from(n).as_bytes());
        }
        Encoding::Chunked => put_field(out, b"transfer-encoding", b"chunked"),
        _ => {}
    }
    out.extend_from_slice(b"\r\n");
}

fn put_field(out: &mut BytesMut, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// One exchange until its response head: the request going out, the
/// response coming in.
struct Exchange<B> {
    io: TcpStream,
    /// Bytes to write first: the head, framing, small body frames.
    out: BytesMut,
    /// Then a large body frame, as it came.
    data: Bytes,
    /// Then what ends that frame (a chunk's CRLF).
    tail: &'static [u8],
    /// The request body still to send.
    body: Option<B>,
    encoding: Encoding,
    input: BytesMut,
    head_request: bool,
}

/// A response head, parsed and framed.
struct Head {
    status: StatusCode,
    version: Version,
    headers: HeaderMap,
    framing: Framing,
    keep_alive: bool,
}

impl<B> Exchange<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    /// Writes what it can of the request, then reads for the response head
    /// (also while the request is still going out).
    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<Result<Head, ClientError>> {
        loop {
            match self.poll_write(cx) {
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(e)) => return Poll::Ready(Err(ClientError::Write(e))),
                Poll::Pending => break,
            }
            let Some(body) = self.body.as_mut() else {
                pool::give(&mut self.out);
                break;
            };
            match Pin::new(body).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => self.put_frame(frame),
                Poll::Ready(None) => self.put_end(None),
                Poll::Ready(Some(Err(e))) => {
                    return Poll::Ready(Err(ClientError::RequestBody(e.into())));
                }
                Poll::Pending => break,
            }
        }
        loop {
            if let Some(head) = parse_head(&mut self.input, self.head_request)? {
                return Poll::Ready(Ok(head));
            }
            if ready!(poll_fill(&mut self.io, cx, &mut self.input, pool::SIZE))
                .map_err(ClientError::Read)?
                == 0
            {
                return Poll::Ready(Err(ClientError::ClosedBeforeAnswer));
            }
        }
    }

    /// Writes `out`, `data` and `tail`, in that order, until all are out.
    fn poll_write(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !(self.out.is_empty() && self.data.is_empty() && self.tail.is_empty()) {
            let io = Pin::new(&mut self.io);
            let n = if self.data.is_empty() && self.tail.is_empty() {
                ready!(io.poll_write(cx, &self.out))?
            } else {
                let parts = [
                    IoSlice::new(&self.out),
                    IoSlice::new(&self.data),
                    IoSlice::new(self.tail),
                ];
                ready!(io.poll_write_vectored(cx, &parts))?
            };
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.advance(n);
        }
        Poll::Ready(Ok(()))
    }

    fn advance(&mut self, mut n: usize) {
        let step = n.min(self.out.len());
        self.out.advance(step);
        n -= step;
        let step = n.min(self.data.len());
        self.data.advance(step);
        n -= step;
        self.tail = &self.tail[n.min(self.tail.len())..];
    }

    fn put_frame(&mut self, frame: BodyFrame<Bytes>) {
        let data = match frame.into_data() {
            Ok(data) => data,
            Err(frame) => return self.put_end(frame.into_trailers().ok().as_ref()),
        };
        if data.is_empty() {
            return;
        }
        let chunked = self.encoding == Encoding::Chunked;
        if chunked {
            self.out
                .extend_from_slice(chunk_size_line(data.len()).as_ref());
        }
        if data.len() <= COPY_LIMIT {
            self.out.extend_from_slice(&data);
            if chunked {
                self.out.extend_from_slice(CHUNK_END);
            }
        } else {
            self.data = data;
            self.tail = if chunked { CHUNK_END } else { b"" };
        }
    }

    fn put_end(&mut self, trailers: Option<&HeaderMap>) {
        if self.encoding == Encoding::Chunked {
            self.out
                .extend_from_slice(&super::framing::last_chunk(trailers));
        }
        self.body = None;
    }

    /// The response, its body reading on from this connection.
    fn into_response(self, head: Head) -> Response<ResponseBody> {
        // Answered before the whole request went out: the upstream has not
        // read (and will not read) the rest, so the connection cannot
        // carry another request.
        let sent = self.body.is_none()
            && self.out.is_empty()
            && self.data.is_empty()
            && self.tail.is_empty();
        let body = ResponseBody {
            io: Some(self.io),
            buf: self.input,
            framing: head.framing,
            keep_alive: head.keep_alive && sent,
        };
        let mut resp = Response::new(body);
        *resp.status_mut() = head.status;
        *resp.version_mut() = head.version;
        *resp.headers_mut() = head.headers;
        resp
    }
}

/// Reads into `buf` once the socket is readable (a buffer is put up only
/// then), with at least `want` bytes of room. `Ok(0)`: the peer closed.
fn poll_fill(
    io: &mut TcpStream,
    cx: &mut Context<'_>,
    buf: &mut BytesMut,
    want: usize,
) -> Poll<io::Result<usize>> {
    ready!(io.poll_read_ready(cx))?;
    if buf.capacity() == 0 {
        *buf = pool::take();
    }
    if buf.capacity() - buf.len() < want {
        buf.reserve(want);
    }
    tokio_util::io::poll_read_buf(Pin::new(io), cx, buf)
}

/// The response head at the front of `buf`, taken off it; interim (1xx)
/// heads before it are taken off and dropped. `Ok(None)`: read more.
fn parse_head(buf: &mut BytesMut, head_request: bool) -> Result<Option<Head>, ClientError> {
    loop {
        let Some((len, status, minor, fields)) = locate(buf)? else {
            return Ok(None);
        };
        let bytes = buf.split_to(len).freeze();
        let status =
            StatusCode::from_u16(status).map_err(|_| ClientError::Head("invalid status"))?;
        if status == StatusCode::SWITCHING_PROTOCOLS {
            return Err(ClientError::Head(
                "101 to a request that asked for no upgrade",
            ));
        }
        if status.is_informational() {
            continue;
        }
        let headers = head::header_map(&bytes, &fields).map_err(ClientError::Head)?;
        let version = if minor == 0 {
            Version::HTTP_10
        } else {
            Version::HTTP_11
        };
        let framing = framing(&headers, status, head_request)?;
        let keep_alive = head::keeps_alive(&headers, version)
            && !matches!(framing, Framing::UntilClose)
            && !(headers.contains_key(header::TRANSFER_ENCODING)
                && headers.contains_key(header::CONTENT_LENGTH));
        return Ok(Some(Head {
            status,
            version,
            headers,
            framing,
            keep_alive,
        }));
    }
}

/// `httparse` over the front of `buf`: the head's length, status, minor
/// version and field positions.
fn locate(buf: &[u8]) -> Result<Option<(usize, u16, u8, Spans)>, ClientError> {
    let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut slots);
    let len = match resp.parse(buf) {
        Ok(httparse::Status::Complete(n)) if n > MAX_HEAD => {
            return Err(ClientError::Head("larger than 16 KiB"));
        }
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() >= MAX_HEAD => {
            return Err(ClientError::Head("larger than 16 KiB"));
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(ClientError::Head(head::describe(e))),
    };
    let (Some(status), Some(minor)) = (resp.code, resp.version) else {
        return Err(ClientError::Head("incomplete status line"));
    };
    let span = |s: &[u8]| {
        let start = s.as_ptr() as usize - buf.as_ptr() as usize;
        (start, start + s.len())
    };
    let fields = resp
        .headers
        .iter()
        .map(|h| (span(h.name.as_bytes()), span(h.value)))
        .collect();
    Ok(Some((len, status, minor, fields)))
}

/// How a response body is framed (RFC 9112 §6.3).
#[derive(Debug)]
enum Framing {
    /// Delimited: a length, chunked, or none.
    Framed(BodyDecoder),
    /// Until the connection closes.
    UntilClose,
}

fn framing(
    headers: &HeaderMap,
    status: StatusCode,
    head_request: bool,
) -> Result<Framing, ClientError> {
    if head_request || status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED {
        return Ok(Framing::Framed(BodyDecoder::new(BodyFraming::Empty)));
    }
    if headers.contains_key(header::TRANSFER_ENCODING) {
        // Chunked last: chunked, whatever Content-Length says (and the
        // connection closes after). Any other coding: until the close.
        return Ok(match head::chunked_last(headers) {
            Ok(()) => Framing::Framed(BodyDecoder::new(BodyFraming::Chunked)),
            Err(_) => Framing::UntilClose,
        });
    }
    if !headers.contains_key(header::CONTENT_LENGTH) {
        return Ok(Framing::UntilClose);
    }
    match head::body_framing(headers, Version::HTTP_11) {
        Ok(framing) => Ok(Framing::Framed(BodyDecoder::new(framing))),
        Err(_) => Err(ClientError::Head("invalid or differing content-length")),
    }
}

/// A response body, read from its upstream connection as it is polled.
/// Its data frames are slices of one read buffer (no copy).
#[derive(Debug)]
pub struct ResponseBody {
    io: Option<TcpStream>,
    buf: BytesMut,
    framing: Framing,
    keep_alive: bool,
}

impl ResponseBody {
    /// The connection, once the response was read to its end with nothing
    /// after it and the connection may carry another request.
    pub fn reusable(&mut self) -> Option<TcpStream> {
        if !(self.keep_alive && self.is_end_stream() && self.buf.is_empty()) {
            return None;
        }
        pool::give(&mut self.buf);
        self.io.take()
    }

    fn left(&self) -> Option<u64> {
        match &self.framing {
            Framing::Framed(BodyDecoder::Length(n)) => Some(*n),
            Framing::Framed(BodyDecoder::Done) => Some(0),
            _ => None,
        }
    }

    fn fail(&mut self, e: ClientError) -> Poll<Option<Result<BodyFrame<Bytes>, ClientError>>> {
        self.keep_alive = false;
        self.io = None;
        self.framing = Framing::Framed(BodyDecoder::Done);
        Poll::Ready(Some(Err(e)))
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = ClientError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<BodyFrame<Bytes>, ClientError>>> {
        let this = self.get_mut();
        loop {
            match &mut this.framing {
                Framing::Framed(decoder) => match decoder.decode(&mut this.buf) {
                    Ok(Some(Frame::Data(data))) => {
                        return Poll::Ready(Some(Ok(BodyFrame::data(data))));
                    }
                    Ok(Some(Frame::Trailers(t))) => {
                        return Poll::Ready(Some(Ok(BodyFrame::trailers(t))));
                    }
                    Ok(Some(Frame::End)) => return Poll::Ready(None),
                    Ok(None) => {}
                    Err(e) => return this.fail(e.into()),
                },
                Framing::UntilClose if !this.buf.is_empty() => {
                    return Poll::Ready(Some(Ok(BodyFrame::data(this.buf.split().freeze()))));
                }
                Framing::UntilClose => {}
            }
            let want = this.left().map_or(pool::SIZE, |n| {
                usize::try_from(n).unwrap_or(MAX_READ).clamp(1024, MAX_READ)
            });
            let Some(io) = this.io.as_mut() else {
                return Poll::Ready(None);
            };
            match ready!(poll_fill(io, cx, &mut this.buf, want)) {
                Ok(0) if matches!(this.framing, Framing::UntilClose) => {
                    this.io = None;
                    this.framing = Framing::Framed(BodyDecoder::Done);
                    return Poll::Ready(None);
                }
                Ok(0) => return this.fail(ClientError::ClosedMidBody),
                Ok(_) => {}
                Err(e) => return this.fail(ClientError::Read(e)),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self.framing, Framing::Framed(BodyDecoder::Done))
    }

    fn size_hint(&self) -> SizeHint {
        match self.left() {
            Some(n) => SizeHint::with_exact(n),
            None => SizeHint::default(),
        }
    }
}

impl Drop for ResponseBody {
    fn drop(&mut self) {
        pool::give(&mut self.buf);
    }
}
