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
//!   upgrades go through hyper's client (the gateway's `pool` module).
//! - A connection goes back to the pool only when its response was read to
//!   its end, nothing followed it, and neither side asked to close.

use std::future::poll_fn;
use std::io::{self, IoSlice};
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{Context, Poll, Waker, ready};

use bytes::{Buf, Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Version};
use http_body::{Body, Frame as BodyFrame, SizeHint};
use tokio::io::AsyncWrite;
use tokio::net::TcpStream;

use super::framing::{BodyDecoder, BodyFraming, CHUNK_END, Frame, FramingError, chunk_size_line};
use super::head::{self, MAX_HEADERS, Seen, Spans};
use super::outbox::COPY_LIMIT;
use super::relay::{self, Held, Relayed};
use super::response::{decimal, field};
use crate::buffers;

/// Errors a request body may fail with.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Largest response head.
pub const MAX_HEAD: usize = 16 * 1024;
/// Most of a response body's rest that a read makes room for, less the
/// byte that shows the read drained the socket: a relay buffer's room. (A
/// read takes all the room there is, so up to that byte more; it bounds
/// what one slow client can make the gateway hold per piece.)
const MAX_READ: usize = buffers::RELAY_SIZE - 1;

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
    /// The request body was longer or shorter than its `Content-Length`.
    #[error("request body {0} than its content-length")]
    Length(&'static str),
    /// The connection ended (closed or reset) before a single response
    /// byte, and the request had no body and an idempotent method: it may
    /// not have reached the upstream at all (an idle connection whose
    /// close was not seen yet when it was taken), and its head comes back
    /// to be sent again, with the error that ended the exchange.
    #[error("{}", .0.1)]
    Unanswered(Box<(http::request::Parts, ClientError)>),
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
///
/// A plain function: the request is encoded here and only the exchange's
/// state goes into the future (an `async fn` would also keep its argument
/// and each local beside it, and every level that awaits the future copies
/// it whole when it is created).
///
/// `extra`: fields written after the map's own (the proxy's forwarding
/// fields, kept out of the map to save inserting them). A request sent
/// again after its connection ended unanswered is sent with them again by
/// the caller, who holds them; the replay here keeps only the map.
/// `relay`: the response's head may be relayed ([`parse_head`]): nothing on
/// its way reads its fields. `large`: the connection's last response was
/// at least a usual buffer's size ([`ResponseBody::reusable`]), so this
/// one's head is read with a relay buffer's room, and a body of up to
/// about 32 KiB comes with it in one read (a 4 KiB read and a second for
/// the rest, else). An upstream whose answers are small keeps the usual
/// 4 KiB buffer for their heads: a small answer that came with its head
/// and waits on a client that stopped reading pins no more than that.
pub fn send<B>(
    io: TcpStream,
    req: Request<B>,
    (extra, relay, large): (&[Field<'_>], bool, bool),
) -> impl Future<Output = Result<Response<ResponseBody>, ClientError>> + use<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    let (parts, body) = req.into_parts();
    let mut out = buffers::take();
    let encoding = encoding(&parts.headers, &body);
    put_head(&mut out, &parts, extra, encoding);
    let mut ex = Exchange {
        io,
        out,
        data: Bytes::new(),
        tail: b"",
        body: (!body.is_end_stream()).then_some(body),
        encoding,
        left: match encoding {
            Encoding::Length(_, n) => n,
            _ => 0,
        },
        input: BytesMut::new(),
        large,
        got: 0,
        head_request: parts.method == Method::HEAD,
        relay,
        replay: None,
    };
    // Only an idempotent method: a POST the upstream read before its
    // connection failed must not run twice (nginx's rule too).
    if encoding == Encoding::Empty && parts.method.is_idempotent() {
        ex.replay = Some(parts);
    } else {
        buffers::give_map(parts.headers);
    }
    async move {
        let head = match poll_fn(|cx| ex.poll(cx)).await {
            Ok(head) => head,
            Err(e) => {
                // Given back if one was taken (a pooled connection the
                // upstream had closed reads its end into one).
                if ex.input.capacity() != 0 {
                    give_back(&mut ex.input, ex.large);
                }
                return Err(e);
            }
        };
        let sent = ex.sent();
        let large = ex.got >= buffers::SIZE
            || matches!(head.body, Some(BodyFraming::Length(n)) if n >= buffers::SIZE as u64);
        Ok(into_response(
            ex.io,
            ex.input,
            (sent, (ex.large, large)),
            head,
        ))
    }
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

/// A header field, borrowed.
pub type Field<'a> = (&'a HeaderName, &'a HeaderValue);

fn put_head(
    out: &mut BytesMut,
    parts: &http::request::Parts,
    extra: &[Field<'_>],
    encoding: Encoding,
) {
    out.reserve(256 + 48 * (parts.headers.len() + extra.len()));
    out.extend_from_slice(parts.method.as_str().as_bytes());
    out.extend_from_slice(b" ");
    let target = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    for (name, value) in &parts.headers {
        if name == header::TRANSFER_ENCODING {
            continue;
        }
        field(out, name.as_str().as_bytes(), value.as_bytes());
    }
    for (name, value) in extra {
        field(out, name.as_str().as_bytes(), value.as_bytes());
    }
    match encoding {
        Encoding::Length(true, n) => {
            field(out, b"content-length", decimal(n, &mut [0; 20]));
        }
        Encoding::Chunked => field(out, b"transfer-encoding", b"chunked"),
        _ => {}
    }
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
    /// Bytes of a `Content-Length` body still to send: a body that yields
    /// more, or ends short, fails the exchange rather than desynchronise
    /// the connection (the upstream would read the excess as a request).
    left: u64,
    input: BytesMut,
    /// `input` is a relay buffer ([`buffers::take_relay`]), not a usual
    /// one: the connection's last response was large.
    large: bool,
    /// Bytes read for the head (and what came with it): a usual buffer's
    /// worth makes the response large.
    got: usize,
    head_request: bool,
    /// The response's head may be relayed ([`parse_head`]).
    relay: bool,
    /// A body-less idempotent request's head, kept until the first
    /// response byte so the request can be sent again if the connection
    /// ends before it.
    replay: Option<http::request::Parts>,
}

/// A response head, parsed and framed.
#[derive(Debug)]
pub struct ResponseHead {
    /// The final status (never 1xx).
    pub status: StatusCode,
    /// HTTP/1.0 or HTTP/1.1.
    pub version: Version,
    /// The header fields, names lowercased.
    pub headers: HeaderMap,
    /// How the body is framed; `None`: until the connection closes.
    pub body: Option<BodyFraming>,
    /// The connection may carry another request after this response.
    pub keep_alive: bool,
    /// A relayed head: where it waits at the front of the body's buffer
    /// (its fields are not in `headers`).
    pub held: Held,
}

impl<B> Exchange<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    /// Writes what it can of the request, then reads for the response head
    /// (also while the request is still going out).
    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<Result<ResponseHead, ClientError>> {
        match self.poll_exchange(cx) {
            Poll::Ready(Err(e)) => Poll::Ready(Err(self.unanswered(e))),
            polled => polled,
        }
    }

    /// `e`, or [`ClientError::Unanswered`] when the connection ended before
    /// any response byte and the request (body-less, idempotent) can go
    /// again.
    fn unanswered(&mut self, e: ClientError) -> ClientError {
        let ended = match &e {
            ClientError::ClosedBeforeAnswer => true,
            ClientError::Read(e) | ClientError::Write(e) => matches!(
                e.kind(),
                io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe
            ),
            _ => false,
        };
        match self.replay.take() {
            Some(parts) if ended => ClientError::Unanswered(Box::new((parts, e))),
            _ => e,
        }
    }

    fn poll_exchange(&mut self, cx: &mut Context<'_>) -> Poll<Result<ResponseHead, ClientError>> {
        loop {
            match self.poll_write(cx) {
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(e)) => return Poll::Ready(Err(ClientError::Write(e))),
                Poll::Pending => break,
            }
            let Some(body) = self.body.as_mut() else {
                buffers::give(&mut self.out);
                break;
            };
            match Pin::new(body).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => self.put_frame(frame)?,
                Poll::Ready(None) => self.put_end(None)?,
                Poll::Ready(Some(Err(e))) => {
                    return Poll::Ready(Err(ClientError::RequestBody(e.into())));
                }
                Poll::Pending => break,
            }
        }
        loop {
            if !self.input.is_empty()
                && let Some(head) = parse_head(&mut self.input, self.head_request, self.relay)?
            {
                return Poll::Ready(Ok(head));
            }
            let n = ready!(poll_fill(&mut self.io, cx, &mut self.input, self.large))
                .map_err(ClientError::Read)?;
            if n == 0 {
                return Poll::Ready(Err(ClientError::ClosedBeforeAnswer));
            }
            self.got += n;
            // A byte of an answer came: the request reached the upstream.
            if let Some(parts) = self.replay.take() {
                buffers::give_map(parts.headers);
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
        if step == self.data.len() {
            // Let go of it now, not when the next piece comes: it is a slice
            // of a body buffer that can be read into again once free.
            self.data = Bytes::new();
        } else {
            self.data.advance(step);
        }
        n -= step;
        self.tail = &self.tail[n.min(self.tail.len())..];
    }

    fn put_frame(&mut self, frame: BodyFrame<Bytes>) -> Result<(), ClientError> {
        let data = match frame.into_data() {
            Ok(data) => data,
            Err(frame) => return self.put_end(frame.into_trailers().ok().as_ref()),
        };
        if data.is_empty() {
            return Ok(());
        }
        let chunked = self.encoding == Encoding::Chunked;
        if !chunked {
            self.left = self
                .left
                .checked_sub(data.len() as u64)
                .ok_or(ClientError::Length("longer"))?;
        }
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
        Ok(())
    }

    fn put_end(&mut self, trailers: Option<&HeaderMap>) -> Result<(), ClientError> {
        match self.encoding {
            Encoding::Chunked => self
                .out
                .extend_from_slice(&super::framing::last_chunk(trailers)),
            _ if self.left > 0 => return Err(ClientError::Length("shorter")),
            _ => {}
        }
        self.body = None;
        Ok(())
    }

    /// The whole request went out. Answered before that, the upstream has
    /// not read (and will not read) the rest, so the connection cannot
    /// carry another request.
    fn sent(&self) -> bool {
        self.body.is_none() && self.out.is_empty() && self.data.is_empty() && self.tail.is_empty()
    }
}

/// The response to an exchange, its body reading on from the exchange's
/// connection (`io`, and `input`: what was read past the head).
///
/// Given the exchange's parts, not the exchange: taken whole by value, it
/// was copied (512 bytes) out of the request's future first. Inlined, so
/// that the head is read where the wait for it left it. `relay`: `input`
/// is a relay buffer; `large`: the response is (see [`ResponseBody`]).
#[inline(always)]
fn into_response(
    io: TcpStream,
    input: BytesMut,
    (sent, (relay, large)): (bool, (bool, bool)),
    head: ResponseHead,
) -> Response<ResponseBody> {
    let body = ResponseBody {
        io: Some(io),
        buf: input,
        framing: head.body.map_or(Framing::UntilClose, |f| {
            Framing::Framed(BodyDecoder::new(f))
        }),
        keep_alive: head.keep_alive && sent,
        held: head.held,
        relay,
        large,
    };
    let mut resp = Response::new(body);
    *resp.status_mut() = head.status;
    *resp.version_mut() = head.version;
    *resp.headers_mut() = head.headers;
    resp
}

/// Reads into `buf` once the socket is readable (a buffer is put up only
/// then: a relay buffer when `large`, else a usual one), with at least
/// [`buffers::SIZE`] bytes of room. `Ok(0)`: the peer closed.
fn poll_fill(
    io: &mut TcpStream,
    cx: &mut Context<'_>,
    buf: &mut BytesMut,
    large: bool,
) -> Poll<io::Result<usize>> {
    ready!(io.poll_read_ready(cx))?;
    if buf.capacity() == 0 {
        *buf = if large {
            buffers::take_relay()
        } else {
            buffers::take()
        };
    }
    if buf.capacity() - buf.len() < buffers::SIZE {
        buf.reserve(buffers::SIZE);
    }
    tokio_util::io::poll_read_buf(Pin::new(io), cx, buf)
}

/// Room for a read of a body with `left` bytes to come: up to
/// [`MAX_READ`], and one byte more than the rest. A read that takes the
/// whole rest then comes back short, which tells tokio the socket is
/// drained; a read that filled its room exactly would leave the socket
/// marked readable, and the connection's next request would pay a system
/// call (`usable`'s one-byte read) to learn that it is idle.
fn room_for_the_rest(left: u64) -> usize {
    usize::try_from(left)
        .unwrap_or(MAX_READ)
        .min(MAX_READ)
        .saturating_add(1)
        .max(1024)
}

/// The response head at the front of `buf`, taken off it; interim (1xx)
/// heads before it are taken off and dropped. `Ok(None)`: read more.
/// `head_request`: the response answers a HEAD (it has no body).
///
/// `relay`: a head that can be relayed ([`relay::plan`]) stays at the front
/// of `buf`, its map empty, and [`ResponseHead::held`] says where it is.
pub fn parse_head(
    buf: &mut BytesMut,
    head_request: bool,
    relay: bool,
) -> Result<Option<ResponseHead>, ClientError> {
    // The fields' positions stay in this frame (`head::push_spans`).
    let mut fields = Spans::new();
    loop {
        fields.clear();
        let Some((len, status, minor)) = locate(buf, &mut fields)? else {
            return Ok(None);
        };
        let status =
            StatusCode::from_u16(status).map_err(|_| ClientError::Head("invalid status"))?;
        if status == StatusCode::SWITCHING_PROTOCOLS {
            return Err(ClientError::Head(
                "101 to a request that asked for no upgrade",
            ));
        }
        if status.is_informational() {
            buf.advance(len);
            continue;
        }
        let bodyless =
            head_request || status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED;
        if relay && let Some(plan) = relay::plan(buf, len, (minor, bodyless), &fields) {
            return Ok(Some(ResponseHead {
                status,
                version: Version::HTTP_11,
                headers: HeaderMap::new(),
                body: Some(match plan.length {
                    0 => BodyFraming::Empty,
                    n => BodyFraming::Length(n),
                }),
                keep_alive: plan.keep_alive,
                held: plan.held,
            }));
        }
        let bytes = buf.split_to(len).freeze();
        let (headers, seen) =
            head::header_map(&bytes, &fields, (2, head::Hop::Keep)).map_err(ClientError::Head)?;
        let version = if minor == 0 {
            Version::HTTP_10
        } else {
            Version::HTTP_11
        };
        let body = framing(&headers, seen, status, head_request)?;
        let keep_alive = head::keeps_alive(seen, version)
            && body.is_some()
            && !(seen.has(Seen::TRANSFER_ENCODING) && seen.has(Seen::CONTENT_LENGTH));
        return Ok(Some(ResponseHead {
            status,
            version,
            headers,
            body,
            keep_alive,
            held: Held::default(),
        }));
    }
}

/// `httparse` over the front of `buf`: the head's length, status and minor
/// version, and the fields' positions pushed onto `fields` (empty on entry).
fn locate(buf: &[u8], fields: &mut Spans) -> Result<Option<(usize, u16, u8)>, ClientError> {
    // Uninitialised, as the request's (`head::locate`): no 3.2 KB of empty
    // fields written first.
    let mut slots = [const { MaybeUninit::uninit() }; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut []);
    let len = match httparse::ParserConfig::default()
        .parse_response_with_uninit_headers(&mut resp, buf, &mut slots)
    {
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
    // Every span of a head within MAX_HEAD fits in u32; one that did not
    // would be refused as too large all the same.
    head::push_spans(buf, resp.headers, fields).ok_or(ClientError::Head("larger than 16 KiB"))?;
    Ok(Some((len, status, minor)))
}

/// How a response body is read.
#[derive(Debug)]
enum Framing {
    /// Delimited: a length, chunked, or none.
    Framed(BodyDecoder),
    /// Until the connection closes.
    UntilClose,
}

/// How a response body is framed (RFC 9112 §6.3); `None`: until the
/// connection closes.
fn framing(
    headers: &HeaderMap,
    seen: Seen,
    status: StatusCode,
    head_request: bool,
) -> Result<Option<BodyFraming>, ClientError> {
    if head_request || status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED {
        return Ok(Some(BodyFraming::Empty));
    }
    if seen.has(Seen::TRANSFER_ENCODING) {
        // Chunked last: chunked, whatever Content-Length says (and the
        // connection closes after). Any other coding: until the close.
        return Ok(head::chunked_last(headers)
            .ok()
            .map(|()| BodyFraming::Chunked));
    }
    if !seen.has(Seen::CONTENT_LENGTH) {
        return Ok(None);
    }
    match head::body_framing(headers, seen, Version::HTTP_11) {
        Ok(framing) => Ok(Some(framing)),
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
    /// A relayed head still at the front of `buf`.
    held: Held,
    /// `buf` is a relay buffer ([`buffers::take_relay`]), not a usual one.
    relay: bool,
    /// The response is at least a usual buffer's size: the read that
    /// brought its head brought that much, or its length says its body
    /// alone is. Decided by bytes, not by reads: a small answer whose body
    /// came in a second write is not large. (A chunked one is only when
    /// its head's read was: its size shows only as it is read.)
    large: bool,
}

impl ResponseBody {
    /// The response's fields when its head was relayed, taken off the
    /// front of the buffer (once).
    pub fn take_relayed(&mut self) -> Option<Relayed> {
        if self.held.is_empty() {
            return None;
        }
        let head = self.buf.split_to(self.held.len()).freeze();
        let relayed = self.held.relayed(&head);
        self.held = Held::default();
        Some(relayed)
    }

    /// A relayed head nobody took is dropped before the body is read.
    fn drop_held(&mut self) {
        if !self.held.is_empty() {
            self.buf.advance(self.held.len());
            self.held = Held::default();
        }
    }

    /// The connection, once the response was read to its end with nothing
    /// after it and the connection may carry another request, and whether
    /// the response was large (for [`send`]'s `large` on its next
    /// exchange). The read buffer stays until the body is dropped (and is
    /// pooled then): the last frame may still share it.
    pub fn reusable(&mut self) -> Option<(TcpStream, bool)> {
        self.drop_held();
        if !(self.keep_alive && self.is_end_stream() && self.buf.is_empty()) {
            return None;
        }
        Some((self.io.take()?, self.large))
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
        this.drop_held();
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
            let left = this.left();
            let want = left.map_or(buffers::SIZE, room_for_the_rest);
            // A rest known to fit a usual buffer is read into one: a client
            // that stops reading it then pins 4 KiB, not a relay buffer.
            let usual = left.is_some() && want <= buffers::SIZE;
            let Some(io) = this.io.as_mut() else {
                return Poll::Ready(None);
            };
            let read = poll_read_body(io, cx, (&mut this.buf, &mut this.relay), (want, usual));
            match ready!(read) {
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
        give_back(&mut self.buf, self.relay);
    }
}

/// Reads more of a response body into `buf`, with room for at least
/// `want` bytes: into what is left of the buffer when that is enough (or
/// into all of a relay buffer again, once no piece read into it is still
/// on its way), else into a relay buffer ([`buffers::take_relay`]), or a
/// usual one when `usual` (the rest is known to fit one), with any bytes
/// not yet used (a chunk's size line cut short, trailers) moved there.
/// `relay`: `buf` is a relay buffer. While no bytes wait, an empty buffer
/// goes back to its pool: a response that streams slowly (server-sent
/// events, a long poll) holds none between its pieces, where it held what
/// was left of its last buffer, pinning all of it.
fn poll_read_body(
    io: &mut TcpStream,
    cx: &mut Context<'_>,
    (buf, relay): (&mut BytesMut, &mut bool),
    (want, usual): (usize, bool),
) -> Poll<io::Result<usize>> {
    if io.poll_read_ready(cx)?.is_pending() {
        shed(buf, relay);
        return Poll::Pending;
    }
    if buf.capacity() - buf.len() < want && !(*relay && buf.try_reclaim(want)) {
        // The old buffer goes back first, so that one whose pieces are
        // gone is taken again.
        let unused = (!buf.is_empty()).then(|| buf.split().freeze());
        give_back(buf, *relay);
        *buf = if usual {
            buffers::take()
        } else {
            buffers::take_relay()
        };
        *relay = !usual;
        if let Some(unused) = unused {
            buf.extend_from_slice(&unused);
            // A whole read's room past them: trailers can take up to
            // 16 KiB, half a relay buffer. (One grown so is freed when
            // given back.)
            buf.reserve(want);
        }
    }
    let read = tokio_util::io::poll_read_buf(Pin::new(io), cx, buf);
    if read.is_pending() {
        // Readiness was stale (a read that filled its room leaves the
        // socket marked readable): the body waits all the same.
        shed(buf, relay);
    }
    read
}

/// While a body waits for more: its buffer, if empty, goes back to its
/// pool.
fn shed(buf: &mut BytesMut, relay: &mut bool) {
    if buf.is_empty() {
        give_back(buf, *relay);
        *relay = false;
    }
}

/// Gives `buf` back to the pool it came from: a relay buffer
/// ([`buffers::take_relay`]) or a usual one.
fn give_back(buf: &mut BytesMut, relay: bool) {
    if relay {
        buffers::give_relay(buf);
    } else {
        buffers::give(buf);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use http_body_util::{BodyExt, Full, StreamBody};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;

    fn head_of(text: &str, head_request: bool) -> Result<Option<ResponseHead>, ClientError> {
        parse_head(&mut BytesMut::from(text.as_bytes()), head_request, false)
    }

    fn framed(text: &str) -> (Option<BodyFraming>, bool) {
        let head = head_of(text, false).expect("valid").expect("complete");
        (head.body, head.keep_alive)
    }

    #[test]
    fn response_heads_are_framed_as_rfc_9112_says() {
        let (f, keep) = framed("HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n");
        assert!(f == Some(BodyFraming::Length(5)) && keep);
        let (f, keep) = framed("HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n");
        assert!(f == Some(BodyFraming::Chunked) && keep);
        // Both: chunked wins, and the connection is not reused.
        let (f, keep) =
            framed("HTTP/1.1 200 OK\r\ncontent-length: 5\r\ntransfer-encoding: chunked\r\n\r\n");
        assert!(f == Some(BodyFraming::Chunked) && !keep);
        // Another coding, or no length: until the connection closes.
        let (f, keep) = framed("HTTP/1.1 200 OK\r\ntransfer-encoding: gzip\r\n\r\n");
        assert!(f.is_none() && !keep);
        let (f, keep) = framed("HTTP/1.1 200 OK\r\n\r\n");
        assert!(f.is_none() && !keep);
        // No body whatever the fields say.
        let (f, _) = framed("HTTP/1.1 204 No Content\r\ncontent-length: 5\r\n\r\n");
        assert_eq!(f, Some(BodyFraming::Empty));
        let head = head_of("HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n", true);
        assert_eq!(head.unwrap().unwrap().body, Some(BodyFraming::Empty));
        // HTTP/1.0 closes unless it says keep-alive.
        assert!(!framed("HTTP/1.0 200 OK\r\ncontent-length: 1\r\n\r\n").1);
        assert!(framed("HTTP/1.0 200 OK\r\ncontent-length: 1\r\nconnection: keep-alive\r\n\r\n").1);
        assert!(!framed("HTTP/1.1 200 OK\r\ncontent-length: 1\r\nconnection: close\r\n\r\n").1);
    }

    #[test]
    fn interim_answers_are_skipped_and_bad_heads_refused() {
        let mut buf = BytesMut::from(
            &b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\nHTTP/1.1 201 Created\r\ncontent-length: 2\r\n\r\nok"[..],
        );
        let head = parse_head(&mut buf, false, false).unwrap().unwrap();
        assert_eq!(head.status, StatusCode::CREATED);
        assert!(!head.headers.contains_key(header::LINK));
        assert_eq!(&buf[..], b"ok");
        for bad in [
            "HTTP/1.1 101 Switching Protocols\r\nupgrade: x\r\n\r\n",
            "HTTP/1.1 200 OK\r\ncontent-length: 5\r\ncontent-length: 6\r\n\r\n",
            "HTTP/1.1 200 OK\r\ncontent-length: -1\r\n\r\n",
            "HTTP/1.1 200 OK\r\nbad header\r\n\r\n",
            "HTTP/2.0 200 OK\r\n\r\n",
        ] {
            assert!(head_of(bad, false).is_err(), "{bad:?} refused");
        }
        assert!(
            head_of("HTTP/1.1 200 OK\r\ncontent-le", false)
                .unwrap()
                .is_none()
        );
        let huge = format!("HTTP/1.1 200 OK\r\nx: {}\r\n", "a".repeat(MAX_HEAD));
        assert!(head_of(&huge, false).is_err());
    }

    fn request<B>(method: &str, headers: &[(&str, &str)], body: B) -> Request<B> {
        let mut b = Request::builder().method(method).uri("/p?q=1");
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(body).unwrap()
    }

    fn head_text<B: Body>(req: &Request<B>) -> String {
        let mut out = BytesMut::new();
        let mut r = Request::builder()
            .method(req.method())
            .uri(req.uri())
            .body(())
            .unwrap();
        *r.headers_mut() = req.headers().clone();
        let (p, ()) = r.into_parts();
        put_head(&mut out, &p, &[], encoding(&p.headers, req.body()));
        String::from_utf8(out.to_vec()).unwrap()
    }

    #[test]
    fn request_bodies_are_framed_as_their_length_says() {
        let get = request("GET", &[("host", "a")], Full::new(Bytes::new()));
        assert_eq!(head_text(&get), "GET /p?q=1 HTTP/1.1\r\nhost: a\r\n\r\n");
        let post = request(
            "POST",
            &[("host", "a")],
            Full::new(Bytes::from_static(b"abc")),
        );
        assert_eq!(
            head_text(&post),
            "POST /p?q=1 HTTP/1.1\r\nhost: a\r\ncontent-length: 3\r\n\r\n"
        );
        let declared = request(
            "PUT",
            &[("content-length", "3")],
            Full::new(Bytes::from_static(b"abc")),
        );
        assert_eq!(
            head_text(&declared),
            "PUT /p?q=1 HTTP/1.1\r\ncontent-length: 3\r\n\r\n"
        );
        let frames = futures_util::stream::iter([Ok::<_, std::io::Error>(BodyFrame::data(
            Bytes::from_static(b"abc"),
        ))]);
        let streamed = request("POST", &[], StreamBody::new(frames));
        assert_eq!(
            head_text(&streamed),
            "POST /p?q=1 HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n"
        );
    }

    async fn upstream() -> (TcpListener, std::net::SocketAddr) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let a = l.local_addr().unwrap();
        (l, a)
    }

    /// Reads from `s` until `needle` has arrived; returns all read.
    async fn read_until(s: &mut TcpStream, needle: &[u8]) -> Vec<u8> {
        let mut seen = Vec::new();
        let mut buf = [0u8; 4096];
        while !seen.windows(needle.len()).any(|w| w == needle) {
            let n = s.read(&mut buf).await.unwrap();
            assert!(n > 0, "closed before {needle:?}: {seen:?}");
            seen.extend_from_slice(&buf[..n]);
        }
        seen
    }

    #[tokio::test]
    async fn a_chunked_answer_in_pieces_is_read_with_trailers_and_the_connection_reused() {
        let (l, addr) = upstream().await;
        let server = tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            for _ in 0..2 {
                let got = read_until(&mut s, b"\r\n\r\n").await;
                assert!(
                    got.starts_with(b"GET /p?q=1 HTTP/1.1\r\nhost: a\r\n\r\n"),
                    "{got:?}"
                );
                let answer = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ntrailer: x-sum\r\n\r\n3\r\nabc\r\n2;ext=1\r\nde\r\n0\r\nx-sum: 5\r\n\r\n";
                // One byte at a time: every boundary falls inside a write.
                for b in answer {
                    s.write_all(&[*b]).await.unwrap();
                    s.flush().await.unwrap();
                }
            }
        });
        let mut io = TcpStream::connect(addr).await.unwrap();
        for _ in 0..2 {
            let req = request("GET", &[("host", "a")], Full::new(Bytes::new()));
            let resp = send(io, req, (&[], false, false)).await.unwrap();
            assert_eq!(resp.status(), StatusCode::OK);
            let mut body = resp.into_body();
            let mut data = Vec::new();
            let mut trailers = None;
            while let Some(frame) = body.frame().await {
                let frame = frame.unwrap();
                match frame.into_data() {
                    Ok(d) => data.extend_from_slice(&d),
                    Err(f) => trailers = f.into_trailers().ok(),
                }
            }
            assert_eq!(data, b"abcde");
            assert_eq!(trailers.unwrap()["x-sum"], "5");
            io = body
                .reusable()
                .expect("a clean end leaves the connection reusable")
                .0;
        }
        server.await.unwrap();
    }

    #[tokio::test]
    async fn an_answer_before_the_whole_body_is_relayed_and_the_connection_not_reused() {
        let (l, addr) = upstream().await;
        let server = tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            read_until(&mut s, b"\r\n\r\n").await;
            s.write_all(b"HTTP/1.1 413 Content Too Large\r\ncontent-length: 0\r\n\r\n")
                .await
                .unwrap();
            s
        });
        // A body that never ends: the answer must not wait for it.
        let (_tx, rx) = tokio::sync::mpsc::channel::<Result<BodyFrame<Bytes>, std::io::Error>>(1);
        let body = StreamBody::new(tokio_stream_of(rx));
        let req = request("POST", &[("content-length", "100000")], body);
        let io = TcpStream::connect(addr).await.unwrap();
        let resp =
            tokio::time::timeout(Duration::from_secs(30), send(io, req, (&[], false, false)))
                .await
                .expect("answered while the body still waits")
                .unwrap();
        assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
        let mut body = resp.into_body();
        assert!(body.frame().await.is_none());
        assert!(
            body.reusable().is_none(),
            "the upstream did not read the body"
        );
        drop(server.await.unwrap());
    }

    /// A body piece written upstream is let go of at once, not when the
    /// next one comes: it is a slice of the client's read buffer, which the
    /// server reads into again only once nothing shares it.
    #[tokio::test]
    async fn a_body_piece_is_let_go_once_written() {
        const PIECE: usize = 8192;
        let (l, addr) = upstream().await;
        let (got_first, first_in) = tokio::sync::oneshot::channel();
        let server = tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            let mut seen = read_until(&mut s, b"\r\n\r\n").await;
            let head = seen.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
            let mut buf = [0u8; 4096];
            let mut signal = Some(got_first);
            while seen.len() < head + 2 * PIECE {
                if seen.len() >= head + PIECE {
                    signal.take().map(|tx| tx.send(()));
                }
                let n = s.read(&mut buf).await.unwrap();
                assert!(n > 0, "closed mid-body");
                seen.extend_from_slice(&buf[..n]);
            }
            s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
                .await
                .unwrap();
            s
        });
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<BodyFrame<Bytes>, std::io::Error>>(1);
        let length = (2 * PIECE).to_string();
        let body = StreamBody::new(tokio_stream_of(rx));
        let req = request("POST", &[("content-length", &length)], body);
        let mut read_buf = BytesMut::with_capacity(2 * PIECE);
        read_buf.resize(PIECE, b'x');
        let piece = read_buf.split().freeze();
        tx.send(Ok(BodyFrame::data(piece))).await.unwrap();
        let io = TcpStream::connect(addr).await.unwrap();
        let exchange = tokio::spawn(send(io, req, (&[], false, false)));
        first_in.await.unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !read_buf.try_reclaim(2 * PIECE) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the written piece is still held"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        tx.send(Ok(BodyFrame::data(Bytes::from(vec![b'y'; PIECE]))))
            .await
            .unwrap();
        let resp = exchange.await.unwrap().unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        drop(server.await.unwrap());
    }

    fn tokio_stream_of<T: Send + 'static>(
        mut rx: tokio::sync::mpsc::Receiver<T>,
    ) -> impl futures_util::Stream<Item = T> + Unpin {
        Box::pin(futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx)))
    }

    #[tokio::test]
    async fn a_body_until_close_ends_at_the_close_and_a_short_one_is_an_error() {
        for (answer, whole) in [
            (&b"HTTP/1.1 200 OK\r\n\r\nall of it"[..], true),
            (
                &b"HTTP/1.1 200 OK\r\ncontent-length: 50\r\n\r\nshort"[..],
                false,
            ),
        ] {
            let (l, addr) = upstream().await;
            let server = tokio::spawn(async move {
                let (mut s, _) = l.accept().await.unwrap();
                read_until(&mut s, b"\r\n\r\n").await;
                s.write_all(answer).await.unwrap();
            });
            let io = TcpStream::connect(addr).await.unwrap();
            let resp = send(
                io,
                request("GET", &[], Full::new(Bytes::new())),
                (&[], false, false),
            )
            .await
            .unwrap();
            server.await.unwrap();
            let collected = resp.into_body().collect().await;
            if whole {
                assert_eq!(&collected.unwrap().to_bytes()[..], b"all of it");
            } else {
                let e = collected.unwrap_err();
                assert!(matches!(e, ClientError::ClosedMidBody), "{e}");
            }
        }
    }

    #[tokio::test]
    async fn a_body_that_breaks_its_content_length_fails_the_exchange() {
        let (l, addr) = upstream().await;
        for (declared, body, want) in [("2", "abc", "longer"), ("5", "abc", "shorter")] {
            let io = TcpStream::connect(addr).await.unwrap();
            let _peer = l.accept().await.unwrap();
            let req = request(
                "PUT",
                &[("content-length", declared)],
                Full::new(Bytes::from_static(body.as_bytes())),
            );
            match send(io, req, (&[], false, false)).await {
                Err(ClientError::Length(got)) => assert_eq!(got, want),
                other => panic!("{declared} declared, {body:?} sent: {other:?}"),
            }
        }
    }

    #[tokio::test]
    async fn a_bodyless_request_on_a_closed_connection_comes_back_unanswered() {
        let (l, addr) = upstream().await;
        // The upstream closed the connection before the request came.
        let io = TcpStream::connect(addr).await.unwrap();
        drop(l.accept().await.unwrap());
        let req = request("GET", &[("x-kept", "1")], Full::new(Bytes::new()));
        match send(io, req, (&[], false, false)).await {
            Err(ClientError::Unanswered(back)) => {
                let (parts, cause) = *back;
                assert_eq!(parts.method, Method::GET);
                assert_eq!(parts.headers["x-kept"], "1");
                // The error names what ended the exchange.
                assert!(
                    matches!(
                        cause,
                        ClientError::ClosedBeforeAnswer
                            | ClientError::Read(_)
                            | ClientError::Write(_)
                    ),
                    "{cause:?}"
                );
            }
            other => panic!("{other:?}"),
        }
        // A POST, a body, or an answer begun: the error stays as it was.
        let io = TcpStream::connect(addr).await.unwrap();
        drop(l.accept().await.unwrap());
        let req = request("POST", &[], Full::new(Bytes::new()));
        let e = send(io, req, (&[], false, false)).await.unwrap_err();
        assert!(!matches!(e, ClientError::Unanswered(_)), "{e:?}");
        let io = TcpStream::connect(addr).await.unwrap();
        drop(l.accept().await.unwrap());
        let req = request("PUT", &[], Full::new(Bytes::from_static(b"abc")));
        let e = send(io, req, (&[], false, false)).await.unwrap_err();
        assert!(!matches!(e, ClientError::Unanswered(_)), "{e:?}");
        let io = TcpStream::connect(addr).await.unwrap();
        let (mut peer, _) = l.accept().await.unwrap();
        let answering = tokio::spawn(async move {
            read_until(&mut peer, b"\r\n\r\n").await;
            peer.write_all(b"HTTP/1.1 200 OK\r\n").await.unwrap();
        });
        let req = request("GET", &[], Full::new(Bytes::new()));
        let e = send(io, req, (&[], false, false)).await.unwrap_err();
        answering.await.unwrap();
        assert!(!matches!(e, ClientError::Unanswered(_)), "{e:?}");
    }

    #[tokio::test]
    async fn a_body_read_to_its_end_leaves_the_connection_known_idle() {
        // Head and body in one write, the body longer than the first read:
        // the last read must come back short, so the socket is known to be
        // drained and taking the connection again costs no system call.
        const LEN: usize = 3 * buffers::SIZE + 500;
        let (l, addr) = upstream().await;
        let server = tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            read_until(&mut s, b"\r\n\r\n").await;
            let mut answer =
                format!("HTTP/1.1 200 OK\r\ncontent-length: {LEN}\r\n\r\n").into_bytes();
            answer.resize(answer.len() + LEN, b'x');
            s.write_all(&answer).await.unwrap();
            s // kept open, silent
        });
        let io = TcpStream::connect(addr).await.unwrap();
        let req = request("GET", &[("host", "a")], Full::new(Bytes::new()));
        let mut body = send(io, req, (&[], false, false))
            .await
            .unwrap()
            .into_body();
        let mut got = 0;
        while let Some(frame) = body.frame().await {
            got += frame.unwrap().into_data().unwrap().len();
        }
        assert_eq!(got, LEN);
        let (io, _) = body.reusable().expect("read to its end");
        let mut cx = Context::from_waker(Waker::noop());
        assert!(
            io.poll_read_ready(&mut cx).is_pending(),
            "the socket is still marked readable after its body was read to the end"
        );
        assert!(usable(&io));
        drop(server.await.unwrap());
    }

    #[tokio::test]
    async fn a_body_past_its_first_read_goes_through_one_kept_relay_buffer() {
        // 80 KiB after the head, twice on one connection, each piece
        // dropped once read (as a client's write does): the head's read
        // (of a head not relayed) brings the start of a body in a usual
        // buffer, and every later read goes into one relay buffer, taken
        // again from the pool.
        const LEN: usize = 80 * 1024;
        let (l, addr) = upstream().await;
        let server = tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            for _ in 0..2 {
                read_until(&mut s, b"\r\n\r\n").await;
                let mut answer =
                    format!("HTTP/1.1 200 OK\r\ncontent-length: {LEN}\r\n\r\n").into_bytes();
                answer.resize(answer.len() + LEN, b'x');
                s.write_all(&answer).await.unwrap();
            }
            s
        });
        let kept = buffers::kept_relays();
        let mut io = TcpStream::connect(addr).await.unwrap();
        let mut relay: Option<std::ops::Range<usize>> = None;
        for round in 0..2 {
            let req = request("GET", &[("host", "a")], Full::new(Bytes::new()));
            let mut body = send(io, req, (&[], false, false))
                .await
                .unwrap()
                .into_body();
            let (mut got, mut pieces) = (0, 0);
            while let Some(frame) = body.frame().await {
                let data = frame.unwrap().into_data().unwrap();
                assert!(
                    data.len() <= buffers::RELAY_SIZE,
                    "a piece of {} bytes",
                    data.len()
                );
                got += data.len();
                pieces += 1;
                if pieces == 1 {
                    continue; // read with the head
                }
                let at = data.as_ptr() as usize;
                let room = relay.get_or_insert(at..at + buffers::RELAY_SIZE);
                assert!(
                    room.contains(&at) && room.contains(&(at + data.len() - 1)),
                    "round {round}: a piece outside the relay buffer"
                );
            }
            assert_eq!(got, LEN);
            assert!(pieces >= 4, "at least three relay reads: {pieces} pieces");
            io = body.reusable().expect("read to its end").0;
            drop(body);
            assert_eq!(buffers::kept_relays(), kept + 1, "round {round}");
        }
        drop(server.await.unwrap());
    }

    #[tokio::test]
    async fn a_body_sent_after_its_head_takes_a_relay_buffer_only_when_large() {
        // Each body comes in a write of its own, sent only once the body's
        // first poll found nothing: 100 bytes are read into a usual
        // buffer, 8 KiB into a relay buffer.
        let lens = [100, 8192];
        let (l, addr) = upstream().await;
        let (go, mut gone) = tokio::sync::mpsc::channel::<()>(1);
        let server = tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            for len in lens {
                read_until(&mut s, b"\r\n\r\n").await;
                let head = format!("HTTP/1.1 200 OK\r\ncontent-length: {len}\r\n\r\n");
                s.write_all(head.as_bytes()).await.unwrap();
                gone.recv().await.unwrap();
                s.write_all(&vec![b'x'; len]).await.unwrap();
            }
            s
        });
        let kept = buffers::kept_relays();
        let mut io = TcpStream::connect(addr).await.unwrap();
        for (len, relays) in lens.into_iter().zip([kept, kept + 1]) {
            let req = request("GET", &[("host", "a")], Full::new(Bytes::new()));
            let mut body = send(io, req, (&[], false, false))
                .await
                .unwrap()
                .into_body();
            let waiting = std::future::poll_fn(|cx| {
                Poll::Ready(Pin::new(&mut body).poll_frame(cx).is_pending())
            });
            assert!(waiting.await, "the body's bytes are not sent yet");
            go.send(()).await.unwrap();
            assert_eq!(pieces(&mut body).await.iter().sum::<usize>(), len);
            io = body.reusable().expect("read to its end").0;
            drop(body);
            assert_eq!(buffers::kept_relays(), relays, "a body of {len}");
        }
        drop(server.await.unwrap());
    }

    /// Reads `body` to its end: its data frames' lengths.
    async fn pieces(body: &mut ResponseBody) -> Vec<usize> {
        let mut lengths = Vec::new();
        while let Some(frame) = body.frame().await {
            lengths.push(frame.unwrap().into_data().unwrap().len());
        }
        lengths
    }

    #[tokio::test]
    async fn a_large_connections_next_head_is_read_with_room_for_a_16_kib_body() {
        // Three answers on one connection: 16 KiB, "ok", 16 KiB. The first
        // waits whole in the socket before its request is sent (the
        // upstream writes it on accept), so what one read takes depends
        // on its room alone.
        const LEN: usize = 16 * 1024;
        let big = || {
            let mut answer =
                format!("HTTP/1.1 200 OK\r\ncontent-length: {LEN}\r\n\r\n").into_bytes();
            answer.resize(answer.len() + LEN, b'x');
            answer
        };
        let total = big().len();
        let (l, addr) = upstream().await;
        let server = tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            s.write_all(&big()).await.unwrap();
            // The first two requests (the second can come in the same
            // read: the first answer was there before the first request).
            let mut seen = Vec::new();
            while seen.windows(4).filter(|w| w == b"\r\n\r\n").count() < 2 {
                seen.extend(read_until(&mut s, b"\r\n\r\n").await);
            }
            // Its body in a write of its own: a second read, not a large
            // answer.
            s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n")
                .await
                .unwrap();
            s.flush().await.unwrap();
            s.write_all(b"ok").await.unwrap();
            read_until(&mut s, b"\r\n\r\n").await;
            s.write_all(&big()).await.unwrap();
            s
        });
        let io = TcpStream::connect(addr).await.unwrap();
        let mut peeked = vec![0; total + 1];
        tokio::time::timeout(Duration::from_secs(10), async {
            while io.peek(&mut peeked).await.unwrap() < total {
                tokio::task::yield_now().await;
            }
        })
        .await
        .expect("the first answer, whole in the socket");
        let relays = buffers::kept_relays();
        // Sent as on a connection whose last answer was large: its head's
        // read takes the whole body.
        let get = || request("GET", &[("host", "a")], Full::new(Bytes::new()));
        let mut body = send(io, get(), (&[], true, true))
            .await
            .unwrap()
            .into_body();
        assert!(body.take_relayed().is_some(), "a head to relay");
        assert_eq!(
            pieces(&mut body).await,
            [LEN],
            "the body with its head's read"
        );
        let (io, large) = body.reusable().expect("read to its end");
        assert!(large, "16 KiB is large");
        drop(body);
        assert_eq!(buffers::kept_relays(), relays + 1, "a relay buffer, back");
        // A small answer (its head read into a relay buffer): not large.
        let mut body = send(io, get(), (&[], true, true))
            .await
            .unwrap()
            .into_body();
        assert_eq!(pieces(&mut body).await, [2]);
        let (io, large) = body.reusable().unwrap();
        assert!(!large, "two bytes are not large");
        // Read with a usual buffer's room: 4 KiB with the head, the rest
        // after, and the answer is large.
        let mut body = send(io, get(), (&[], true, false))
            .await
            .unwrap()
            .into_body();
        let got = pieces(&mut body).await;
        assert!(got[0] < buffers::SIZE, "a usual buffer's room: {got:?}");
        assert_eq!(got.iter().sum::<usize>(), LEN);
        assert!(
            body.reusable().unwrap().1,
            "16 KiB past a usual buffer is large"
        );
        drop(server.await.unwrap());
    }

    /// Polls `body` until it is pending, dropping what it gives: the
    /// bytes of data it gave.
    fn drain_ready(body: &mut ResponseBody) -> usize {
        let mut cx = Context::from_waker(Waker::noop());
        let mut got = 0;
        loop {
            match Pin::new(&mut *body).poll_frame(&mut cx) {
                Poll::Ready(Some(frame)) => got += frame.unwrap().into_data().unwrap().len(),
                Poll::Ready(None) => panic!("the body ended"),
                Poll::Pending => return got,
            }
        }
    }

    #[tokio::test]
    async fn a_body_waiting_for_its_next_piece_holds_no_buffer() {
        // A chunked answer that pauses twice (as server-sent events do):
        // after a piece that came with the head (a usual buffer), and
        // after a 10,000-byte one (a relay buffer). Each wait gives the
        // buffer back to its pool.
        const BIG: usize = 10_000;
        let (l, addr) = upstream().await;
        let (go, mut next) = tokio::sync::mpsc::channel::<()>(1);
        let server = tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            read_until(&mut s, b"\r\n\r\n").await;
            let head = "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n";
            s.write_all(head.as_bytes()).await.unwrap();
            next.recv().await.unwrap();
            let mut big = format!("{BIG:x}\r\n").into_bytes();
            big.resize(big.len() + BIG, b'x');
            big.extend_from_slice(b"\r\n");
            s.write_all(&big).await.unwrap();
            next.recv().await.unwrap();
            s.write_all(b"0\r\n\r\n").await.unwrap();
            s
        });
        let io = TcpStream::connect(addr).await.unwrap();
        let req = request("GET", &[("host", "a")], Full::new(Bytes::new()));
        let mut body = send(io, req, (&[], false, false))
            .await
            .unwrap()
            .into_body();
        let (kept, relays) = (buffers::kept(), buffers::kept_relays());
        assert_eq!(drain_ready(&mut body), 5);
        assert_eq!(buffers::kept(), kept + 1, "the head's buffer, given back");
        assert_eq!(body.buf.capacity(), 0, "and none held");
        go.send(()).await.unwrap();
        let mut got = 0;
        while got < BIG {
            got += body
                .frame()
                .await
                .unwrap()
                .unwrap()
                .into_data()
                .unwrap()
                .len();
        }
        assert_eq!(got + drain_ready(&mut body), BIG);
        assert_eq!(
            buffers::kept_relays(),
            relays + 1,
            "the relay buffer, given back"
        );
        assert!(body.buf.capacity() == 0 && !body.relay, "and none held");
        go.send(()).await.unwrap();
        assert!(body.frame().await.is_none(), "the end");
        assert!(body.reusable().is_some());
        drop(server.await.unwrap());
    }

    #[tokio::test]
    async fn a_size_line_cut_by_a_wait_and_long_trailers_come_through_whole() {
        // A 16 KiB chunk, then the next chunk's size line cut in two by a
        // wait, then 8 KiB and 60 trailer fields (12.7 KiB), every piece
        // kept (as a slow client's writes keep them): bytes not yet used
        // move to a new buffer, and a read past them still has room.
        let fields: Vec<(String, String)> = (0..60)
            .map(|i| {
                (
                    format!("x-t{i}"),
                    format!("{i}").repeat(200)[..200].to_string(),
                )
            })
            .collect();
        let trailers: String = fields
            .iter()
            .map(|(n, v)| format!("{n}: {v}\r\n"))
            .collect();
        let (l, addr) = upstream().await;
        let (go, mut next) = tokio::sync::mpsc::channel::<()>(1);
        let server = tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            read_until(&mut s, b"\r\n\r\n").await;
            let mut first =
                b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n4000\r\n".to_vec();
            first.resize(first.len() + 0x4000, b'a');
            first.extend_from_slice(b"\r\n20");
            s.write_all(&first).await.unwrap();
            next.recv().await.unwrap();
            let mut rest = b"00\r\n".to_vec();
            rest.resize(rest.len() + 0x2000, b'b');
            rest.extend_from_slice(format!("\r\n0\r\n{trailers}\r\n").as_bytes());
            s.write_all(&rest).await.unwrap();
            s
        });
        let io = TcpStream::connect(addr).await.unwrap();
        let req = request("GET", &[("host", "a")], Full::new(Bytes::new()));
        let mut body = send(io, req, (&[], false, false))
            .await
            .unwrap()
            .into_body();
        let mut pieces = Vec::new();
        while pieces.iter().map(Bytes::len).sum::<usize>() < 0x4000 {
            pieces.push(body.frame().await.unwrap().unwrap().into_data().unwrap());
        }
        assert_eq!(drain_ready(&mut body), 0, "waits on the size line");
        go.send(()).await.unwrap();
        let mut got_trailers = None;
        while let Some(frame) = body.frame().await {
            match frame.unwrap().into_data() {
                Ok(piece) => pieces.push(piece),
                Err(frame) => got_trailers = Some(frame.into_trailers().unwrap()),
            }
        }
        let data = pieces.concat();
        assert_eq!(data.len(), 0x6000);
        assert!(data[..0x4000].iter().all(|&b| b == b'a'));
        assert!(data[0x4000..].iter().all(|&b| b == b'b'));
        let got = got_trailers.expect("trailers");
        assert_eq!(got.len(), fields.len());
        for (n, v) in &fields {
            assert_eq!(got.get(n.as_str()).unwrap(), v.as_str(), "{n}");
        }
        assert!(body.reusable().is_some());
        drop(server.await.unwrap());
    }

    #[tokio::test]
    async fn an_idle_connection_the_peer_closed_is_not_usable() {
        let (l, addr) = upstream().await;
        let io = TcpStream::connect(addr).await.unwrap();
        let (s, _) = l.accept().await.unwrap();
        assert!(usable(&io), "open and silent");
        drop(s);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while usable(&io) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the close was never seen"
            );
            tokio::task::yield_now().await;
        }
    }
}
