//! The native HTTP/1.1 connection loop: one request at a time, in order
//! (pipelined requests wait in the read buffer), the request's future
//! polled on the connection's own task together with the request body's
//! reads and the response's writes.
//!
//! Memory: a connection waiting for its next request holds no buffer.
//! It waits for the socket to be readable ([`Io::poll_readable`]), then
//! takes a buffer from the thread's [`pool`] and reads; when a request is
//! done and nothing pipelined is left, its buffers go back to the pool.
//! (The head's and body's bytes are slices of the read buffer; one still
//! held elsewhere keeps it from the pool, and it is freed with the last.)
//! Its one timer is the wait for a head; a graceful close is a flag.
//!
//! Rules kept from hyper's server, which the integration tests hold:
//! - the header read timeout runs from the moment the connection waits for
//!   a head until the head is complete, so it also bounds an idle
//!   keep-alive wait; on expiry the connection closes without an answer;
//! - a head over the limit is answered 431, a malformed one 400, both with
//!   `Connection: close`;
//! - a client that closes its connection while its request is in flight
//!   cancels the request (its future is dropped);
//! - `100 Continue` is sent only when the request first reads its body;
//! - HEAD, 1xx, 204 and 304 responses carry no body; a response of unknown
//!   length is chunked (close-delimited for HTTP/1.0 clients);
//! - the connection stays open only at a request boundary: the request
//!   body read to its end, the response complete, neither side asking to
//!   close, and no graceful close asked.

use std::future::{Future, poll_fn};
use std::io;
use std::pin::{Pin, pin};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderName};
use http::{Request, Response, StatusCode};
use http_body::Body;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::oneshot;

use super::body::RequestBody;
use super::body::{BodySender, H1Body, H1BodyError};
use super::framing::{BodyDecoder, BodyFraming, Frame};
use super::head::{self, HeadError, RequestHead};
use super::outbox::Outbox;
use super::response::{Answer, Beside, ResponseFraming, write_head};
use crate::buffers;
use crate::idle::LazyDeadline;
use crate::protocol::Rewind;

/// The body of what a service's future answers.
type AnswerBody<Fut> = <<Fut as Future>::Output as Answer>::Body;

pub use crate::conn_io::Io;

/// Any I/O a tunnel can carry.
pub trait RawIo: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> RawIo for T {}

/// An upgraded client connection: the bytes read past the request head
/// first, then the socket.
pub type Upgraded = Rewind<Box<dyn RawIo>>;

/// The connection's side of an upgrade, in the request's extensions: the
/// I/O and the bytes read past the request head come through it once the
/// 101 is written. (Extensions must be `Clone`; only one taker gets it.)
#[derive(Clone)]
pub struct PendingUpgrade(Arc<Mutex<Option<oneshot::Receiver<Upgraded>>>>);

impl PendingUpgrade {
    /// The receiver, to the first caller.
    pub fn take(&self) -> Option<oneshot::Receiver<Upgraded>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).take()
    }
}

impl std::fmt::Debug for PendingUpgrade {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PendingUpgrade(..)")
    }
}

/// Limits of the native server.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Time allowed for a request head, from the moment it is waited for.
    pub header_read_timeout: Duration,
    /// Largest request head in bytes.
    pub max_head: usize,
}

/// First read into a fresh buffer; a head larger than this grows it.
const READ_SIZE: usize = buffers::SIZE;
/// Largest read while a request body is known to hold that much more: a
/// 1 MiB upload read 4 KiB at a time took 256 reads and 256 writes upstream
/// (strace), and 3.3 times HAProxy's CPU (bench 3-upload-1m). 63 KiB
/// fits one loopback segment ([`buffers::BODY_SIZE`] says why that
/// matters). Such reads go into a body buffer
/// ([`buffers::take_body`]), given back when the request is done, so an idle
/// connection holds none of it.
const BODY_READ_SIZE: usize = buffers::BODY_SIZE;
/// How long a request is in flight before the server watches its client
/// for leaving, when that would first put the connection into the event
/// loop (see [`Conn::poll_gone`]).
const GONE_GRACE: Duration = Duration::from_millis(10);
/// Response bytes gathered before a write while the body keeps coming
/// (kept within the pool's largest buffer).
const WRITE_SIZE: usize = 3 * buffers::SIZE;

/// One connection's state between requests.
struct Conn<I> {
    io: I,
    /// Bytes read and not yet used; empty (no allocation) while idle.
    buf: BytesMut,
    /// `buf` is a body buffer ([`buffers::take_body`]), not a head's.
    body_buf: bool,
    /// The client sends faster than one read takes: the last read filled
    /// all the room it had (a head's read's worth at least), and none
    /// since brought less than a head's read. Only then is a body read
    /// into a body buffer; a body trickled in small writes stays in a
    /// usual one (see [`Conn::body_room`]). Either way, a body buffer is
    /// given back whenever the connection waits for its client's bytes
    /// ([`Conn::shed_body_buf`]).
    reads_fill: bool,
    /// Bytes to write.
    out: Outbox,
    /// The header read timeout of the request being waited for, made only
    /// once a wait first finds nothing to read: the first head of most new
    /// connections is in already, and then costs no clock read and no
    /// timer (an allocation and two clock reads per connection before).
    head_deadline: LazyDeadline,
}

/// What became of one request.
enum Next {
    KeepAlive,
    Close,
    Upgrade(oneshot::Sender<Upgraded>),
}

/// Serves HTTP/1.1 on `io` until the connection ends: `prefix` is what was
/// read from it already (protocol detection); `service` answers each
/// request; `closing` set to true asks the connection to finish the
/// request in flight and close. (A flag, not a channel: it costs an idle
/// connection nothing. Whoever sets it polls this future again right after,
/// which is when an idle connection sees it and ends.)
///
/// A plain function returning its future: the connection's state is built
/// here and moved into the future once; an `async fn` would keep its
/// arguments and the state built from them side by side for the
/// connection's whole life. The answer's body is `Unpin` because it is
/// polled where the answer lies, not moved out and pinned again.
pub fn serve<'a, I, F, Fut, B>(
    io: I,
    prefix: BytesMut,
    settings: &'a Settings,
    closing: &'a AtomicBool,
    mut service: F,
) -> impl Future<Output = io::Result<()>> + 'a
where
    I: Io,
    F: FnMut(Request<RequestBody>) -> Fut + 'a,
    Fut: Future<Output: Answer<Body = B>>,
    B: Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    // The first read (protocol detection's) came full: more is likely in.
    let reads_fill = prefix.len() >= READ_SIZE && prefix.len() == prefix.capacity();
    let mut conn = Conn {
        io,
        buf: prefix,
        body_buf: false,
        reads_fill,
        out: Outbox::default(),
        head_deadline: LazyDeadline::default(),
    };
    // The closing write is awaited after the loop, not in the arms that
    // decide it: awaited there, the matched values (a refused head's result,
    // 232 bytes) would keep their place in the connection's future for its
    // whole life.
    async move {
        loop {
            let head = match conn.next_head(settings, closing).await {
                None => {
                    conn.rest();
                    return Ok(());
                }
                Some(Err(e)) => {
                    conn.refuse(&e);
                    break;
                }
                Some(Ok(head)) => head,
            };
            // Boxed, once per request: a request's state (its head, body feed,
            // the service's future and the response) is large, and inline it
            // would size the task for the connection's whole life, idle or not.
            // Made in its box, not copied there (`box_in_place`).
            let exchange =
                crate::inplace::box_in_place(|| conn.exchange(head, &mut service, closing));
            match exchange.await? {
                Next::KeepAlive => conn.rest(),
                Next::Close => break,
                Next::Upgrade(tx) => {
                    let Conn { io, buf, .. } = conn;
                    let io: Box<dyn RawIo> = Box::new(io);
                    let _ = tx.send(Rewind::new(buf.freeze(), io));
                    return Ok(());
                }
            }
        }
        conn.close().await
    }
}

impl<I: Io> Conn<I> {
    /// Gives the buffers back between requests when nothing is pending.
    fn rest(&mut self) {
        if self.body_buf {
            buffers::give_body(&mut self.buf);
            // Still this body buffer when bytes of the next request are in it.
            self.body_buf = !self.buf.is_empty();
        } else {
            buffers::give(&mut self.buf);
        }
        self.out.rest();
    }

    /// Waits for the next request head. `None`: the connection ends
    /// without an answer (closed, timed out, or closing while idle).
    async fn next_head(
        &mut self,
        settings: &Settings,
        closing: &AtomicBool,
    ) -> Option<Result<RequestHead, HeadError>> {
        // The clock starts when the wait first finds nothing to read.
        let mut waiting = false;
        poll_fn(|cx| {
            loop {
                if !self.buf.is_empty() {
                    match head::parse(&mut self.buf, settings.max_head) {
                        Ok(None) => {}
                        done => return Poll::Ready(done.transpose()),
                    }
                }
                if self.buf.is_empty() && closing.load(Ordering::Acquire) {
                    return Poll::Ready(None);
                }
                match self.poll_fill(cx, READ_SIZE) {
                    Poll::Ready(Ok(n)) if n > 0 => continue,
                    Poll::Ready(_) => return Poll::Ready(None),
                    Poll::Pending => {}
                }
                let timeout = settings.header_read_timeout;
                if !waiting {
                    self.head_deadline.restart(timeout);
                }
                waiting = true;
                return match self.head_deadline.poll_expired(cx) {
                    Poll::Ready(()) => Poll::Ready(None),
                    Poll::Pending => Poll::Pending,
                };
            }
        })
        .await
    }

    /// Reads more into the buffer, with room for `room` bytes (less when a
    /// quarter of it is free already), putting one up only once the socket
    /// has something to read. `Ok(0)`: the peer closed. Pending: a body
    /// buffer is given back meanwhile ([`Conn::shed_body_buf`]).
    fn poll_fill(&mut self, cx: &mut Context<'_>, room: usize) -> Poll<io::Result<usize>> {
        // First, so a socket with nothing to read costs neither a buffer nor
        // a read attempt (this runs on every wake-up while a request is in
        // flight, to see the client leave).
        if self.io.poll_readable(cx)?.is_pending() {
            self.shed_body_buf();
            return Poll::Pending;
        }
        // (A body buffer read to its very end has no room left either: it
        // goes back to its own pool, in `make_room`; so does one that reads
        // no longer fill, however much room it has left.)
        let small = room <= READ_SIZE;
        if self.buf.capacity() == 0 && small && !self.body_buf {
            self.buf = buffers::take();
        } else if self.buf.capacity() - self.buf.len() < room / 4
            || (self.body_buf && small && !self.reads_fill)
        {
            self.make_room(room);
        }
        let spare = self.buf.capacity() - self.buf.len();
        let read =
            tokio_util::io::poll_read_buf(std::pin::Pin::new(&mut self.io), cx, &mut self.buf);
        let Poll::Ready(n) = read else {
            self.shed_body_buf();
            return Poll::Pending;
        };
        let n = n?;
        if n == spare && spare >= READ_SIZE {
            self.reads_fill = true;
        } else if n < READ_SIZE {
            self.reads_fill = false;
        }
        Poll::Ready(Ok(n))
    }

    /// Gives the body buffer back while the connection waits for its
    /// client's next bytes; what is unread in it (part of a chunk's size
    /// line, a pipelined head) moves to a usual buffer. A body buffer is
    /// held only while there is reading to do: a client that sends a burst
    /// and waits (a slow upload, or one out to tie the gateway's memory up)
    /// holds none meanwhile. The pieces read into it that are still on
    /// their way upstream keep it from being taken again until they are
    /// gone ([`buffers::give_body`]).
    fn shed_body_buf(&mut self) {
        if !self.body_buf || self.buf.len() > READ_SIZE {
            return;
        }
        if self.buf.is_empty() {
            // No usual buffer either until bytes come.
            buffers::give_body(&mut self.buf);
            self.body_buf = false;
        } else {
            self.move_to(false);
        }
    }

    /// The room for the next read of a request body: as much as the body
    /// holds yet ([`body_read_size`]) while the client's bytes fill the
    /// reads, else a head's read. A slow client's body (say, a few bytes a
    /// second on each of thousands of connections, to tie the gateway's
    /// memory up) is then read 4 KiB at a time into the usual buffers; a
    /// fast one takes a body buffer from its second read on, or its first
    /// when the head's read came full (most uploads: the body follows the
    /// head in the same write).
    fn body_room(&self, decoder: &BodyDecoder) -> usize {
        if self.reads_fill {
            body_read_size(decoder)
        } else {
            READ_SIZE
        }
    }

    /// Room for a read of `room` bytes. A large read (a body's) goes into a
    /// body buffer: the one in use once nothing read into it is still on its
    /// way upstream, else another from the pool; a small read after it, into
    /// a usual buffer again, unless the reads still fill (a body's last
    /// bytes, or the next pipelined head, read into the same body buffer).
    /// (`reserve` allocated a new body-sized buffer whenever the last piece
    /// was still on its way, and each page of it was faulted in again: see
    /// [`pool`].)
    fn make_room(&mut self, room: usize) {
        let large = room > READ_SIZE;
        let stays = if self.body_buf {
            large || self.reads_fill
        } else {
            !large
        };
        if stays && self.buf.try_reclaim(room) {
            return;
        }
        if !large && !self.body_buf {
            // A head longer than a read, or pipelined bytes.
            self.buf.reserve(room);
            return;
        }
        self.move_to(large);
    }

    /// Reads on into a fresh buffer from the pool (a body buffer when
    /// `body`), with what is unread moved there (part of a chunk's size
    /// line, say), and gives the one in use back to its own pool.
    fn move_to(&mut self, body: bool) {
        let mut next = if body {
            buffers::take_body()
        } else {
            buffers::take()
        };
        next.extend_from_slice(&self.buf);
        self.buf.clear();
        let mut last = std::mem::replace(&mut self.buf, next);
        if std::mem::replace(&mut self.body_buf, body) {
            buffers::give_body(&mut last);
        } else {
            buffers::give(&mut last);
        }
    }

    /// Queues the answer to a refused head (sent by [`Conn::close`]).
    fn refuse(&mut self, e: &HeadError) {
        let status = e.status();
        tracing::debug!(error = %e, "refused a request head");
        let text = format!(
            "HTTP/1.1 {} {}\r\ncontent-length: 0\r\nconnection: close\r\n{}\r\n",
            status.as_u16(),
            status.canonical_reason().unwrap_or(""),
            super::response::date_line(),
        );
        self.out.gather().extend_from_slice(text.as_bytes());
    }

    /// Writes what is left, gives the buffers back and closes: a
    /// connection per request (`Connection: close`) takes its buffers from
    /// the pool like any other, rather than allocating two 4 kB buffers
    /// for every request.
    async fn close(&mut self) -> io::Result<()> {
        poll_fn(|cx| self.poll_write_out(cx)).await?;
        self.rest();
        poll_fn(|cx| self.io.poll_close(cx)).await
    }

    /// Writes all of `out` and flushes.
    fn poll_write_out(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.out.poll_write(&mut self.io, cx)
    }
}

/// The room for the next read of a request body: as much of the body as is
/// known to come, between a head's read size and [`BODY_READ_SIZE`]. (Never
/// much past the body's end: what follows it is the next request's.)
fn body_read_size(decoder: &BodyDecoder) -> usize {
    let ahead = usize::try_from(decoder.known_ahead()).unwrap_or(usize::MAX);
    ahead.clamp(READ_SIZE, BODY_READ_SIZE)
}

/// One request's body as the connection feeds it.
struct Feed {
    decoder: BodyDecoder,
    sender: Option<BodySender>,
    /// `100 Continue` still to send when the body is first read.
    expect: bool,
    /// Set when the body could not be read to its end.
    broken: bool,
}

impl Feed {
    fn done(&self) -> bool {
        self.decoder.is_done() && self.sender.is_none()
    }
}

impl<I: Io> Conn<I> {
    /// Serves one request: its future, its body, its response.
    async fn exchange<F, Fut, B>(
        &mut self,
        head: RequestHead,
        service: &mut F,
        closing: &AtomicBool,
    ) -> io::Result<Next>
    where
        F: FnMut(Request<RequestBody>) -> Fut,
        Fut: Future<Output: Answer<Body = B>>,
        B: Body<Data = Bytes> + Unpin,
        B::Error: std::fmt::Display,
    {
        let method = head.method.clone();
        let version = head.version;
        let keep_alive = head.keep_alive;
        let te_trailers = head.te_trailers;
        let (req, mut feed, upgrade) = request(head);
        // Pinned here and borrowed: passed by value to an `async fn`, the
        // request's future (the largest part of this state) would be kept
        // twice, as the argument and as the pinned local.
        let fut = pin!(service(req));
        // The answer is written where it stays, not passed back through
        // the layers of `Poll`, `Result` and `Option` (each a copy of it),
        // and used there: its head written from it, its body polled in it.
        let mut answer = None;
        if !self.await_response(fut, &mut feed, &mut answer).await? {
            tracing::debug!("client closed the connection; request cancelled");
            return Ok(Next::Close);
        }
        let (resp, beside) = answer.as_mut().expect("an answered request has its answer");
        let upgrading = upgrade.is_some() && resp.status() == StatusCode::SWITCHING_PROTOCOLS;
        let framing = ResponseFraming::choose(&method, version, (&*resp).into(), resp.body());
        if !matches!(framing, ResponseFraming::Length(_))
            && let Some(fields) = beside.fields.take()
        {
            // Relayed lines carry the `Content-Length` of a body sent by its
            // length; framed any other way (no relay asks for it), the head
            // is written from a map, which leaves the length out.
            fields.into_map(resp.headers_mut());
        }
        let keep = keep_alive
            && !upgrading
            && framing != ResponseFraming::UntilClose
            && !closing.load(Ordering::Acquire);
        let out = self.out.gather();
        let mut keep = write_head(out, (&*resp).into(), beside, framing, (keep, version));
        let trailers = declared_trailers(resp.headers(), te_trailers);
        // Written: its fields (and relayed lines) dropped now, so an
        // upstream read buffer they share is back with its connection's
        // sole owner when the body ends, and is pooled again rather than
        // freed (one `malloc` and one `free` fewer per proxied request,
        // callgrind); the map itself is kept for the next head.
        buffers::give_map(std::mem::take(resp.headers_mut()));
        beside.fields = None;
        let body = Pin::new(resp.body_mut());
        let complete = self.send_body(body, framing, &trailers, &mut feed).await?;
        keep = keep && complete && feed.decoder.is_done() && !feed.broken;
        if upgrading {
            poll_fn(|cx| self.poll_write_out(cx)).await?;
            return Ok(match upgrade {
                Some(tx) => Next::Upgrade(tx),
                None => Next::Close,
            });
        }
        Ok(if keep { Next::KeepAlive } else { Next::Close })
    }

    /// Polls the request's future until it answers (into `answer`),
    /// feeding its body meanwhile. False: the client closed the connection
    /// first, and the request is cancelled (its future dropped here).
    async fn await_response<Fut>(
        &mut self,
        mut fut: Pin<&mut Fut>,
        feed: &mut Feed,
        answer: &mut Option<(Response<AnswerBody<Fut>>, Beside)>,
    ) -> io::Result<bool>
    where
        Fut: Future<Output: Answer>,
    {
        poll_fn(|cx| {
            if let Poll::Ready(r) = fut.as_mut().poll(cx) {
                *answer = Some(r.into_parts());
                return Poll::Ready(Ok(true));
            }
            self.poll_feed(cx, feed)?;
            // `100 Continue`, once the request reads its body.
            if !self.out.is_empty()
                && let Poll::Ready(written) = self.poll_write_out(cx)
            {
                written?;
            }
            if feed.done() && ready!(self.poll_gone(cx)) {
                return Poll::Ready(Ok(false));
            }
            Poll::Pending
        })
        .await
    }

    /// Streams the response body; false when it ended early (the
    /// connection must close: its framing is not complete).
    async fn send_body<B>(
        &mut self,
        mut body: Pin<&mut B>,
        framing: ResponseFraming,
        allowed: &[HeaderName],
        feed: &mut Feed,
    ) -> io::Result<bool>
    where
        B: Body<Data = Bytes>,
        B::Error: std::fmt::Display,
    {
        let mut finished = !framing.sends_body();
        let mut complete = true;
        let mut sent: u64 = 0;
        poll_fn(|cx| {
            loop {
                self.poll_feed(cx, feed)?;
                if finished {
                    if !self.out.is_empty() {
                        ready!(self.poll_write_out(cx))?;
                    }
                    return Poll::Ready(Ok(complete));
                }
                // The head waits for the first data, so a head and a small
                // body go out in one write; past WRITE_SIZE, out it goes.
                if self.out.len() >= WRITE_SIZE {
                    ready!(self.poll_write_out(cx))?;
                }
                let Poll::Ready(frame) = body.as_mut().poll_frame(cx) else {
                    // The body has nothing yet: what is ready goes now (a
                    // streamed answer's head must not wait for its first
                    // event).
                    if !self.out.is_empty() {
                        ready!(self.poll_write_out(cx))?;
                    }
                    return Poll::Pending;
                };
                match put_frame(&mut self.out, framing, frame, &mut sent, allowed) {
                    // A body that knows it has ended (its length reached) is
                    // not polled for its end: an upstream body learns that
                    // only when its connection's task runs, after the
                    // client may already have the answer and be back with
                    // the next request, which would then find the upstream
                    // connection still out and open another.
                    Ok(false) if body.is_end_stream() => {
                        let ended =
                            put_frame::<B::Error>(&mut self.out, framing, None, &mut sent, allowed);
                        (finished, complete) = (true, ended == Ok(true));
                    }
                    Ok(false) => {}
                    Ok(true) => finished = true,
                    Err(()) => (finished, complete) = (true, false),
                }
            }
        })
        .await
    }

    /// Moves the request body along: sends `100 Continue` when it is first
    /// wanted, reads and decodes when the request has room for a frame.
    /// Never blocks the caller: pending here only means "woken later".
    fn poll_feed(&mut self, cx: &mut Context<'_>, feed: &mut Feed) -> io::Result<()> {
        loop {
            let Some(sender) = &feed.sender else {
                return Ok(());
            };
            let Poll::Ready(ready) = sender.poll_ready(cx) else {
                return Ok(());
            };
            if ready.is_err() {
                // The request dropped its body: nobody reads the rest.
                feed.sender = None;
                return Ok(());
            }
            if feed.expect {
                if sender.poll_wanted(cx).is_pending() {
                    return Ok(());
                }
                feed.expect = false;
                self.out
                    .gather()
                    .extend_from_slice(b"HTTP/1.1 100 Continue\r\n\r\n");
            }
            if feed.decoder.is_done() {
                sender.send(Ok(None));
                feed.sender = None;
                return Ok(());
            }
            match feed.decoder.decode(&mut self.buf) {
                Ok(Some(Frame::Data(data))) => sender.send(Ok(Some(http_body::Frame::data(data)))),
                Ok(Some(Frame::Trailers(t))) => {
                    sender.send(Ok(Some(http_body::Frame::trailers(t))));
                    feed.sender = None;
                }
                Ok(Some(Frame::End)) => {
                    sender.send(Ok(None));
                    feed.sender = None;
                }
                Ok(None) => match self.poll_fill(cx, self.body_room(&feed.decoder)) {
                    Poll::Pending => return Ok(()),
                    Poll::Ready(Ok(n)) if n > 0 => {}
                    Poll::Ready(_) => {
                        sender.send(Err(H1BodyError::Gone));
                        feed.sender = None;
                        feed.broken = true;
                    }
                },
                Err(e) => {
                    tracing::debug!(error = %e, "malformed request body");
                    sender.send(Err(H1BodyError::Malformed));
                    feed.sender = None;
                    feed.broken = true;
                }
            }
        }
    }

    /// Watches for the client closing while its request is in flight:
    /// ready with true when it did. Pipelined bytes read meanwhile stay in
    /// the buffer (up to one read's worth; past that, reading waits).
    fn poll_gone(&mut self, cx: &mut Context<'_>) -> Poll<bool> {
        if self.buf.len() >= READ_SIZE {
            return Poll::Pending;
        }
        if !self.io.polled() {
            // Watching would put the connection into the event loop (two
            // system calls, see `conn_io::LazyTcp`), and most answers come
            // well within GONE_GRACE: a slower one starts the watch then.
            // The head's timer is free: a connection still out of the
            // event loop never waited for its head.
            if !self.head_deadline.is_set() {
                self.head_deadline.restart(GONE_GRACE);
            }
            ready!(self.head_deadline.poll_expired(cx));
        }
        match self.poll_fill(cx, READ_SIZE) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => Poll::Ready(true),
            Poll::Ready(Ok(_)) => {
                cx.waker().wake_by_ref();
                Poll::Pending
            }
        }
    }
}

/// Puts one response frame (`None`: the end) into `out`. `Ok(true)`: the
/// body is complete; `Err`: it broke (failed, or not the length declared),
/// and the connection must close. Never writes past a declared length.
fn put_frame<E: std::fmt::Display>(
    out: &mut Outbox,
    framing: ResponseFraming,
    frame: Option<Result<http_body::Frame<Bytes>, E>>,
    sent: &mut u64,
    allowed: &[HeaderName],
) -> Result<bool, ()> {
    let frame = match frame {
        None => return framing.end(out, None, *sent).then_some(true).ok_or(()),
        Some(Err(e)) => {
            tracing::debug!(error = %e, "response body failed; closing");
            return Err(());
        }
        Some(Ok(frame)) => frame,
    };
    let trailers = match frame.into_data() {
        Ok(mut data) => {
            if let ResponseFraming::Length(n) = framing {
                let room = usize::try_from(n - *sent).unwrap_or(usize::MAX);
                if data.len() > room {
                    framing.data(out, data.split_to(room));
                    return Err(());
                }
            }
            *sent += data.len() as u64;
            framing.data(out, data);
            return Ok(false);
        }
        Err(frame) => frame.into_trailers().ok(),
    };
    let kept = trailers.map(|t| {
        let mut kept = http::HeaderMap::new();
        for (name, value) in &t {
            if allowed.contains(name) {
                kept.append(name.clone(), value.clone());
            }
        }
        kept
    });
    framing
        .end(out, kept.as_ref(), *sent)
        .then_some(true)
        .ok_or(())
}

/// The trailer fields a response may send: only to a client that said
/// `TE: trailers`, and only those the response declared in `Trailer` (as
/// hyper does: a field not declared before the body cannot be expected).
fn declared_trailers(headers: &http::HeaderMap, te_trailers: bool) -> Vec<HeaderName> {
    if !te_trailers {
        return Vec::new();
    }
    headers
        .get_all(header::TRAILER)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b','))
        .filter_map(|n| HeaderName::from_bytes(n.trim_ascii()).ok())
        .collect()
}

/// The request the service sees, the body feed, and the upgrade hand-over
/// when the client asked for one.
fn request(
    head: RequestHead,
) -> (
    Request<RequestBody>,
    Feed,
    Option<oneshot::Sender<Upgraded>>,
) {
    let (body, sender) = match head.body {
        BodyFraming::Empty => (RequestBody::Empty, None),
        BodyFraming::Length(n) => {
            let (b, s) = H1Body::channel(Some(n));
            (RequestBody::H1(b), Some(s))
        }
        BodyFraming::Chunked => {
            let (b, s) = H1Body::channel(None);
            (RequestBody::H1(b), Some(s))
        }
    };
    let feed = Feed {
        decoder: BodyDecoder::new(head.body),
        expect: head.expect_continue && sender.is_some(),
        sender,
        broken: false,
    };
    let mut req = Request::new(body);
    *req.method_mut() = head.method;
    *req.uri_mut() = head.uri;
    *req.version_mut() = head.version;
    *req.headers_mut() = head.headers;
    let upgrade = head.upgrade.then(|| {
        let (tx, rx) = oneshot::channel();
        let pending = PendingUpgrade(Arc::new(Mutex::new(Some(rx))));
        req.extensions_mut().insert(pending);
        tx
    });
    (req, feed, upgrade)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conn_io::LazyTcp;
    use crate::idle::ActivityIo;
    use http::HeaderValue;
    use tokio::net::TcpStream;

    type Framed = Option<Result<http_body::Frame<Bytes>, std::convert::Infallible>>;

    fn data(s: &'static str) -> Framed {
        Some(Ok(http_body::Frame::data(Bytes::from(s))))
    }

    /// A client socket and the server's end of it, as the server sees it.
    /// (Accepted as the gateway's listeners accept: out of the event loop
    /// until the server's end first waits.)
    /// A connection's state over `io`, reading on into `buf`.
    fn conn_with<I>(io: I, buf: BytesMut, body_buf: bool) -> Conn<I> {
        Conn {
            io,
            buf,
            body_buf,
            reads_fill: false,
            out: Outbox::default(),
            head_deadline: LazyDeadline::default(),
        }
    }

    async fn connected() -> (TcpStream, ActivityIo<LazyTcp, ()>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let acceptor = crate::conn_io::Acceptor::new(listener).unwrap();
        let (io, _) = acceptor.accept().await.unwrap();
        (client, ActivityIo::new(io, crate::idle::Activity::new()))
    }

    /// A head that is in already is taken without a clock or a timer; a
    /// wait that finds nothing makes one, and it bounds the wait.
    #[tokio::test]
    async fn the_header_timer_is_made_only_when_a_wait_finds_nothing() {
        use tokio::io::AsyncWriteExt;
        let (mut client, io) = connected().await;
        let settings = Settings {
            header_read_timeout: Duration::from_millis(200),
            max_head: 16 * 1024,
        };
        let closing = AtomicBool::new(false);
        let head = &b"GET / HTTP/1.1\r\nhost: a\r\n\r\nGET /2 HTTP/1.1\r\n"[..];
        let mut conn = conn_with(io, BytesMut::from(head), false);
        let head = conn.next_head(&settings, &closing).await;
        assert!(matches!(head, Some(Ok(_))), "the first head is parsed");
        assert!(
            !conn.head_deadline.is_set(),
            "no timer for a head in already"
        );
        // Half a head, then silence: the wait makes its timer and ends on it.
        client.write_all(b"host: a\r\n").await.unwrap();
        let started = tokio::time::Instant::now();
        let head = conn.next_head(&settings, &closing).await;
        assert!(head.is_none(), "the silent client's wait ended");
        assert!(conn.head_deadline.is_set(), "a timer was made for the wait");
        assert!(started.elapsed() >= settings.header_read_timeout);
    }

    #[tokio::test]
    async fn a_connection_closed_after_its_request_gives_its_buffers_back() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (mut client, io) = connected().await;
        client
            .write_all(b"GET / HTTP/1.1\r\nhost: a\r\nconnection: close\r\n\r\n")
            .await
            .unwrap();
        let settings = Settings {
            header_read_timeout: Duration::from_secs(30),
            max_head: 16 * 1024,
        };
        let closing = AtomicBool::new(false);
        let before = buffers::kept();
        let service =
            |_req| async { http::Response::new(http_body_util::Full::new(Bytes::from("ok"))) };
        serve(io, BytesMut::new(), &settings, &closing, service)
            .await
            .unwrap();
        let mut answer = String::new();
        client.read_to_string(&mut answer).await.unwrap();
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert!(answer.ends_with("\r\n\r\nok"), "{answer}");
        assert_eq!(
            buffers::kept(),
            before + 2,
            "the read buffer and the write buffer are back in the pool"
        );
    }

    /// A TLS connection and its client: the server's end as the gateway
    /// wraps it, the client's with a config that trusts the server's
    /// self-signed certificate.
    async fn tls_connected() -> (
        tokio_rustls::client::TlsStream<TcpStream>,
        Box<tokio_rustls::server::TlsStream<ActivityIo<LazyTcp, ()>>>,
    ) {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["a.test".to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let der = cert.der().clone();
        let provider = crate::tls::provider();
        let server = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![der.clone()],
                rustls_pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
            )
            .unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(der).unwrap();
        let client = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let (client_io, server_io) = connected().await;
        let accept = tokio_rustls::TlsAcceptor::from(Arc::new(server)).accept(server_io);
        let name = rustls_pki_types::ServerName::try_from("a.test").unwrap();
        let connect = tokio_rustls::TlsConnector::from(Arc::new(client)).connect(name, client_io);
        let (server, client) = tokio::join!(accept, connect);
        (client.unwrap(), Box::new(server.unwrap()))
    }

    /// An idle TLS connection, like a cleartext one, waits for its next
    /// request with no read buffer (rustls keeps its own, which the
    /// gateway cannot give back), and a request that then comes is read
    /// and answered, also one sent a few bytes at a time.
    #[tokio::test]
    async fn an_idle_tls_connection_holds_no_read_buffer() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (mut client, io) = tls_connected().await;
        let settings = Settings {
            header_read_timeout: Duration::from_secs(30),
            max_head: 16 * 1024,
        };
        let before = buffers::kept();
        let service =
            |_req| async { http::Response::new(http_body_util::Full::new(Bytes::from("ok"))) };
        let server = tokio::spawn(async move {
            let closing = AtomicBool::new(false);
            serve(io, BytesMut::new(), &settings, &closing, service).await
        });
        let mut answer = [0u8; 64];
        for (round, pieces) in [1, 1, 4].into_iter().enumerate() {
            let request = b"GET / HTTP/1.1\r\nhost: a\r\n\r\n";
            for piece in request.chunks(request.len().div_ceil(pieces)) {
                client.write_all(piece).await.unwrap();
                client.flush().await.unwrap();
            }
            let mut got = Vec::new();
            while !got.ends_with(b"\r\n\r\nok") {
                let n = client.read(&mut answer).await.unwrap();
                assert!(n > 0, "round {round}: closed after {got:?}");
                got.extend_from_slice(&answer[..n]);
            }
            // Answered: the connection gives its buffers back and waits.
            let what = format!("round {round}");
            buffers::until_kept(buffers::kept, before + 2, &what).await;
        }
        drop(client);
        server.await.unwrap().unwrap();
    }

    /// Uploads of 1 MiB, each piece held until the next one comes (as an
    /// upstream write would hold it): the pieces are read into body
    /// buffers that come back to the pool and are taken again, not
    /// allocated afresh for each read.
    #[tokio::test]
    async fn uploads_are_read_into_body_buffers_that_are_used_again() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        const UPLOADS: usize = 8;
        const LEN: usize = 1 << 20;
        let (mut client, io) = connected().await;
        let sender = tokio::spawn(async move {
            for i in 0..UPLOADS {
                let close = if i + 1 == UPLOADS {
                    "connection: close\r\n"
                } else {
                    ""
                };
                let head =
                    format!("POST /up HTTP/1.1\r\nhost: a\r\ncontent-length: {LEN}\r\n{close}\r\n");
                client.write_all(head.as_bytes()).await.unwrap();
                client.write_all(&vec![b'x'; LEN]).await.unwrap();
            }
            let mut answers = String::new();
            client.read_to_string(&mut answers).await.unwrap();
            answers
        });
        let settings = Settings {
            header_read_timeout: Duration::from_secs(30),
            max_head: 16 * 1024,
        };
        let closing = AtomicBool::new(false);
        let service = |req: Request<RequestBody>| async move {
            let mut body = pin!(req.into_body());
            let (mut len, mut held) = (0, None);
            while let Some(frame) = poll_fn(|cx| body.as_mut().poll_frame(cx)).await {
                let data = frame.unwrap().into_data().unwrap();
                len += data.len();
                held = Some(data);
            }
            drop(held);
            http::Response::new(http_body_util::Full::new(Bytes::from(len.to_string())))
        };
        serve(io, BytesMut::new(), &settings, &closing, service)
            .await
            .unwrap();
        let answers = sender.await.unwrap();
        assert_eq!(
            answers.matches(&format!("\r\n\r\n{LEN}")).count(),
            UPLOADS,
            "{answers}"
        );
        let kept = buffers::kept_bodies();
        assert!(kept >= 1, "the body buffers are back in the pool");
        assert!(
            kept <= 3,
            "{kept} kept: taken again, not allocated for each read"
        );
    }

    /// A body buffer read to its very end (no room left, its last piece
    /// still on its way) goes back to the body buffers when the connection
    /// reads a head's worth again, and is taken again once that piece is
    /// gone.
    #[tokio::test]
    async fn a_body_buffer_read_to_its_end_goes_back_to_the_body_buffers() {
        use tokio::io::AsyncWriteExt;
        let (mut client, io) = connected().await;
        let mut conn = conn_with(io, buffers::take_body(), true);
        let body_at = conn.buf.as_ptr();
        conn.buf.resize(conn.buf.capacity(), b'x');
        let last_piece = conn.buf.split().freeze();
        client.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
        let before = buffers::kept_bodies();
        poll_fn(|cx| conn.poll_fill(cx, READ_SIZE)).await.unwrap();
        assert_eq!(&conn.buf[..], b"GET / HTTP/1.1\r\n");
        assert!(!conn.body_buf, "read into a usual buffer");
        assert_eq!(
            buffers::kept_bodies(),
            before + 1,
            "the body buffer is kept"
        );
        drop(last_piece);
        assert_eq!(buffers::take_body().as_ptr(), body_at, "and taken again");
    }

    /// Writes `len` bytes from `client` and reads them all on `conn` with a
    /// body's room, dropping each read (as its piece, sent upstream, is):
    /// whether any of them went into a body buffer.
    async fn body_bytes(
        client: &mut TcpStream,
        conn: &mut Conn<ActivityIo<LazyTcp, ()>>,
        decoder: &BodyDecoder,
        len: usize,
    ) -> bool {
        use tokio::io::AsyncWriteExt;
        client.write_all(&vec![b'x'; len]).await.unwrap();
        let (mut read, mut body_buf) = (0, false);
        while read < len {
            read += poll_fn(|cx| conn.poll_fill(cx, conn.body_room(decoder)))
                .await
                .unwrap();
            body_buf |= conn.body_buf;
            drop(conn.buf.split());
        }
        body_buf
    }

    /// Polls `conn` for more of the body once: whether it waits.
    async fn waits(conn: &mut Conn<ActivityIo<LazyTcp, ()>>, decoder: &BodyDecoder) -> bool {
        poll_fn(|cx| Poll::Ready(conn.poll_fill(cx, conn.body_room(decoder)).is_pending())).await
    }

    /// A body trickled in small writes (a slow client) is read into usual
    /// buffers; the read after one that filled its room takes a body
    /// buffer; a wait for more gives it back; and a read that brings less
    /// than a head's worth sends the body back to usual buffers.
    #[tokio::test]
    async fn a_body_buffer_is_taken_only_while_the_client_fills_the_reads() {
        let (mut client, io) = connected().await;
        let mut conn = conn_with(io, BytesMut::new(), false);
        let decoder = BodyDecoder::new(BodyFraming::Length(1 << 20));
        let (client, conn, decoder) = (&mut client, &mut conn, &decoder);
        assert!(!body_bytes(client, conn, decoder, 100).await, "a trickle");
        assert!(
            body_bytes(client, conn, decoder, 20_000).await,
            "a write that fills the read: a body buffer for the next"
        );
        let kept = buffers::kept_bodies();
        assert!(waits(conn, decoder).await && !conn.body_buf, "given back");
        assert_eq!(buffers::kept_bodies(), kept + 1, "to the pool");
        body_bytes(client, conn, decoder, 100).await;
        assert!(!conn.reads_fill, "a read of less than a head's worth");
        assert!(!body_bytes(client, conn, decoder, 100).await, "a trickle");
        // Bursts of a head's read each, between waits: never held waiting.
        for _ in 0..3 {
            body_bytes(client, conn, decoder, READ_SIZE).await;
            assert!(waits(conn, decoder).await && !conn.body_buf);
        }
    }

    #[test]
    fn body_reads_are_sized_to_what_the_body_holds() {
        let read = |framing| super::body_read_size(&BodyDecoder::new(framing));
        assert_eq!(read(BodyFraming::Length(1 << 20)), super::BODY_READ_SIZE);
        assert_eq!(read(BodyFraming::Length(20_000)), 20_000);
        assert_eq!(read(BodyFraming::Length(10)), super::READ_SIZE);
        assert_eq!(read(BodyFraming::Chunked), super::READ_SIZE);
    }

    #[test]
    fn a_body_longer_than_its_length_is_cut_and_closes() {
        let (mut out, mut sent) = (Outbox::default(), 0);
        let framing = ResponseFraming::Length(3);
        assert_eq!(
            put_frame(&mut out, framing, data("ab"), &mut sent, &[]),
            Ok(false)
        );
        assert_eq!(
            put_frame(&mut out, framing, data("cdef"), &mut sent, &[]),
            Err(())
        );
        assert_eq!(out.to_vec(), b"abc", "nothing past the declared length");
    }

    #[test]
    fn a_body_shorter_than_its_length_closes() {
        let (mut out, mut sent) = (Outbox::default(), 0);
        let framing = ResponseFraming::Length(3);
        assert_eq!(
            put_frame(&mut out, framing, data("ab"), &mut sent, &[]),
            Ok(false)
        );
        assert_eq!(
            put_frame::<std::convert::Infallible>(&mut out, framing, None, &mut sent, &[]),
            Err(())
        );
    }

    #[test]
    fn only_declared_trailers_are_sent() {
        let (mut out, mut sent) = (Outbox::default(), 0);
        let mut t = http::HeaderMap::new();
        t.insert("grpc-status", HeaderValue::from_static("0"));
        t.insert("x-other", HeaderValue::from_static("1"));
        let frame: Framed = Some(Ok(http_body::Frame::trailers(t)));
        let allowed = [HeaderName::from_static("grpc-status")];
        let framing = ResponseFraming::Chunked;
        assert_eq!(
            put_frame(&mut out, framing, frame, &mut sent, &allowed),
            Ok(true)
        );
        assert_eq!(out.to_vec(), b"0\r\ngrpc-status: 0\r\n\r\n");
        let mut headers = http::HeaderMap::new();
        headers.insert(
            header::TRAILER,
            HeaderValue::from_static("grpc-status, x-a"),
        );
        assert_eq!(declared_trailers(&headers, true).len(), 2);
        assert!(declared_trailers(&headers, false).is_empty());
    }
}
