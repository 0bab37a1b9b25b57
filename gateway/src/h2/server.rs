//! The native HTTP/2 server's connection loop: the socket, the protocol
//! state ([`super::conn`]) and the connection's streams, all in the
//! connection's own task.
//!
//! Each stream is one future at a time in the connection's [`Tasks`]:
//! first the request's answer, then its response body's next frame. A
//! frame is written within the client's windows; what does not fit waits,
//! parked, until a WINDOW_UPDATE makes room, and only then is the body
//! polled again (so a slow client slows the upstream). A reset from the
//! client drops its stream's work at once.
//! Reading stops while more than [`OUT_HIGH`] bytes wait to be written,
//! so a client that sends without reading cannot grow the connection's
//! memory.

use std::collections::VecDeque;
use std::io;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes, BytesMut};
use http::header::{CONNECTION, TE, TRANSFER_ENCODING, UPGRADE};
use http::{HeaderMap, HeaderName, HeaderValue, Request, Response};
use http_body::{Body, Frame};

use super::body::H2Body;
use super::body::{self, Announced, Feed, H2BodyError, Released, Reports};
use super::conn::{Config, Conn, Event};
use super::frame::Reason;
use super::tasks::Tasks;

pub use super::io::OUT_HIGH;
/// Response bodies polled in place per round before the rest wait in the
/// connection's queue of work.
const FRESH_POLLS: usize = 64;

/// The server's limits.
#[derive(Debug, Clone)]
pub struct Settings {
    pub max_concurrent_streams: u32,
    pub max_header_list_size: u32,
}

/// What a service answers: a response, made whole (the caller's own
/// answer type is adapted to it, so this module depends on no other
/// server's).
pub trait Respond {
    type Body;
    /// The response, and a field to send after its map's, in place of
    /// any of that name there: the proxy's `x-request-id`, written rather
    /// than inserted (an insertion hashes the name and probes the map).
    fn into_parts(self) -> (Response<Self::Body>, Option<Named>);
}

/// A field as [`Respond::into_parts`] gives it beside a response.
pub type Named = (&'static HeaderName, HeaderValue);

pub use crate::conn_io::Io;

/// A stream's one piece of work under way.
enum Task<Fut, B> {
    /// The request's answer.
    Answer {
        stream: u32,
        fut: crate::inplace::Recycled<Fut>,
    },
    /// The response body's next frame.
    Body { stream: u32, body: Option<B> },
}

/// What a [`Task`] gave.
enum Done<B: Body> {
    Head(u32, Response<B>, Option<Named>),
    Frame(u32, B, Option<Result<Frame<Bytes>, B::Error>>),
    /// The work panicked: the stream is reset alone, as a task's panic
    /// would drop only that task (hyper's server runs each stream as one).
    Panicked(u32),
}

impl<Fut, B> Future for Task<Fut, B>
where
    Fut: Future<Output: Respond<Body = B>>,
    B: Body<Data = Bytes> + Unpin,
{
    type Output = Done<B>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Done<B>> {
        let this = self.get_mut();
        let stream = match this {
            Task::Answer { stream, .. } | Task::Body { stream, .. } => *stream,
        };
        // The work is dropped after a panic (never polled again), so what
        // it left half-done is never seen.
        let polled = std::panic::catch_unwind(AssertUnwindSafe(|| this.poll_work(cx)));
        polled.unwrap_or(Poll::Ready(Done::Panicked(stream)))
    }
}

impl<Fut, B> Task<Fut, B>
where
    Fut: Future<Output: Respond<Body = B>>,
    B: Body<Data = Bytes> + Unpin,
{
    fn poll_work(&mut self, cx: &mut Context<'_>) -> Poll<Done<B>> {
        match self {
            Task::Answer { stream, fut } => {
                let (resp, named) = ready!(Pin::new(fut).poll(cx)).into_parts();
                Poll::Ready(Done::Head(*stream, resp, named))
            }
            Task::Body { stream, body } => {
                let b = body.as_mut().expect("polled after it gave its frame");
                let frame = ready!(Pin::new(b).poll_frame(cx));
                Poll::Ready(Done::Frame(*stream, body.take().expect("just used"), frame))
            }
        }
    }
}

/// A response body waiting for window: the rest of its frame, and whether
/// the body ended with it.
struct Parked<B> {
    body: B,
    rest: Bytes,
}

/// One connection being served.
struct Driver<'a, I, F, Fut, B> {
    io: I,
    conn: Conn,
    buf: BytesMut,
    service: F,
    closing: &'a AtomicBool,
    released: Arc<Released>,
    /// The bodies' last reports, kept to be swapped with the next ones.
    reports: Reports,
    feeds: super::StreamMap<Feed>,
    /// The open streams, and the work of those that have some under way.
    running: Tasks<Task<Fut, B>>,
    parked: super::StreamMap<Parked<B>>,
    /// The parked streams in the order they parked (a stream that goes
    /// leaves it, in `forget`): window is shared out in turn.
    parked_order: VecDeque<u32>,
    /// Response bodies whose next frame is wanted: polled in place first
    /// ([`Driver::poll_fresh`]); only one with nothing ready goes into
    /// `running`, to be polled when woken.
    fresh: Vec<(u32, B)>,
    /// Streams whose request is a HEAD (their responses go without a body).
    heads: super::StreamMap<()>,
    /// The events of the last read, kept to be swapped with the
    /// connection's (no vector allocated per read).
    events: Vec<Event>,
    read_closed: bool,
    going_away: bool,
    failed: bool,
}

/// Serves HTTP/2 on `io` (`prefix`: bytes already read, the preface's
/// start) with `service`, until the connection ends; with `closing` set,
/// it finishes the streams it has and closes (GOAWAY).
pub fn serve<'a, I, F, Fut, B>(
    io: I,
    prefix: BytesMut,
    settings: &Settings,
    closing: &'a AtomicBool,
    service: F,
) -> impl Future<Output = io::Result<()>> + 'a
where
    I: Io,
    F: FnMut(Request<Option<H2Body>>) -> Fut + 'a,
    Fut: Future<Output: Respond<Body = B>> + 'static,
    B: Body<Data = Bytes> + Unpin + 'a,
    B::Error: std::fmt::Display,
{
    let config = Config {
        max_concurrent_streams: settings.max_concurrent_streams,
        max_header_list_size: settings.max_header_list_size,
        ..Config::default()
    };
    let mut driver = Driver {
        io,
        conn: Conn::new(config),
        buf: prefix,
        service,
        closing,
        released: Arc::new(Released::default()),
        reports: Reports::default(),
        feeds: super::StreamMap::default(),
        running: Tasks::default(),
        parked: super::StreamMap::default(),
        parked_order: VecDeque::new(),
        heads: super::StreamMap::default(),
        fresh: Vec::new(),
        events: Vec::new(),
        read_closed: false,
        going_away: false,
        failed: false,
    };
    // Frames that came with the preface (a request sent in the same
    // write): taken now, not when the client next sends something.
    if !driver.buf.is_empty() {
        driver.recv();
    }
    std::future::poll_fn(move |cx| driver.poll(cx))
}

impl<I, F, Fut, B> Driver<'_, I, F, Fut, B>
where
    I: Io,
    F: FnMut(Request<Option<H2Body>>) -> Fut,
    Fut: Future<Output: Respond<Body = B>> + 'static,
    B: Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            let mut progress = self.take_released(cx);
            if !self.going_away && self.closing.load(Ordering::Acquire) {
                self.going_away = true;
                self.conn.go_away();
            }
            progress |= self.poll_read(cx)?;
            self.running.start_pass(cx);
            while let Some(done) = self.running.next_done() {
                progress = true;
                self.done(done);
            }
            self.poll_fresh(cx);
            progress |= self.unpark();
            // Events start work (requests) that must be polled once.
            progress |= self.take_events();
            // Reading pauses past OUT_HIGH, and parked frames wait at it.
            let full = self.conn.out.len() >= OUT_HIGH;
            let flushed = self.poll_write(cx)?;
            // Room made while reading or sending was held back: go round
            // again, so a read is tried (and its waker set) and parked
            // frames go out.
            progress |= full && self.conn.out.len() < OUT_HIGH;
            // Bodies wanted by the sends above are polled next round.
            progress |= !self.fresh.is_empty();
            if flushed && self.finished() {
                return Pin::new(&mut self.io).poll_shutdown(cx);
            }
            if !progress {
                return Poll::Pending;
            }
        }
    }

    /// Whether there is nothing left to do (all written).
    fn finished(&self) -> bool {
        let idle = self.running.is_idle() && self.parked.is_empty() && self.fresh.is_empty();
        self.failed || (idle && (self.read_closed || self.conn.is_done()))
    }

    /// Room left in the write buffer for response bodies: frames are held
    /// back (parked) past [`OUT_HIGH`], as past the client's windows, so a
    /// client with large windows that does not read cannot make the
    /// connection buffer its responses.
    fn room(&self) -> usize {
        OUT_HIGH.saturating_sub(self.conn.out.len())
    }

    /// Gives the client back what the bodies took, and invites the bodies
    /// first read with `100 Continue`.
    fn take_released(&mut self, cx: &Context<'_>) -> bool {
        self.released.swap(cx, &mut self.reports);
        let progress = !self.reports.is_empty();
        for (stream, n) in self.reports.taken.drain(..) {
            self.conn.release(stream, n);
        }
        for stream in self.reports.continues.drain(..) {
            self.conn.inform(stream, http::StatusCode::CONTINUE);
        }
        // Request bodies never ask for their stream to be reset.
        self.reports.cancelled.clear();
        progress
    }

    /// Reads once, if there is room to answer; `true` if bytes came.
    ///
    /// A connection with no request running and no part of a frame held
    /// waits for the socket before it reads, and gives its buffer back to
    /// the thread's pool meanwhile, so an idle HTTP/2 connection holds none
    /// (it held 16 KiB: bench/RESULTS.md, thirty-fifth pass). A busy one
    /// keeps its buffer and reads at once (no readiness check of its own).
    ///
    /// (`events` is empty here: [`Driver::take_events`] drains it.)
    fn poll_read(&mut self, cx: &mut Context<'_>) -> io::Result<bool> {
        if self.read_closed || self.failed || self.conn.out.len() > OUT_HIGH {
            return Ok(false);
        }
        if self.buf.is_empty() && self.running.is_idle() {
            match self.io.poll_readable(cx) {
                Poll::Ready(ready) => ready?,
                Poll::Pending => {
                    crate::buffers::give(&mut self.buf);
                    // Its events vectors too (two, taking turns: each
                    // made again with room for as many events as a read
                    // gave in this busy period, `Conn::push_event`), and
                    // its write buffer once empty.
                    self.events = Vec::new();
                    self.running.shed();
                    self.conn.shed_idle_room();
                    return Ok(false);
                }
            }
        }
        if self.buf.capacity() == 0 {
            self.buf = crate::buffers::take();
        }
        let Some(n) = super::io::poll_read_some(&mut self.io, cx, &mut self.buf)? else {
            return Ok(false);
        };
        if n == 0 {
            // The client is gone: as hyper's server does, every stream
            // ends (its work dropped, its body told).
            self.read_closed = true;
            self.end_all();
            return Ok(true);
        }
        self.recv();
        self.take_events();
        if self.failed {
            self.end_all();
        }
        Ok(true)
    }

    /// Hands the read buffer to the protocol state.
    fn recv(&mut self) {
        if self.conn.recv(&mut self.buf).is_err() {
            self.failed = true;
        }
    }

    /// Acts on the events the connection has (reads, and streams it ended
    /// itself while sending); `true` if there were any.
    fn take_events(&mut self) -> bool {
        let mut events = std::mem::take(&mut self.events);
        self.conn.swap_events(&mut events);
        let any = !events.is_empty();
        for event in events.drain(..) {
            self.event(event);
        }
        self.events = events;
        any
    }

    /// Ends every stream: work dropped, parked frames dropped, bodies told
    /// the connection is gone.
    fn end_all(&mut self) {
        self.running.end_all();
        self.parked.clear();
        self.parked_order.clear();
        self.fresh.clear();
        self.heads.clear();
        self.fail_bodies(H2BodyError::Gone);
    }

    fn event(&mut self, event: Event) {
        match event {
            // Nothing new starts on a connection that failed.
            Event::Request { .. } if self.failed => {}
            Event::Request {
                stream,
                head,
                end_stream,
            } => self.start(stream, head, end_stream),
            Event::Data {
                stream,
                data,
                end_stream,
            } => {
                if let Some(n) = body::deliver(&mut self.feeds, stream, data, end_stream) {
                    self.conn.release(stream, n);
                }
            }
            Event::Trailers { stream, trailers } => {
                if let Some(feed) = self.feeds.remove(&stream) {
                    feed.trailers(trailers);
                }
            }
            Event::Reset { stream, .. } => self.forget(stream, H2BodyError::Reset),
            Event::GoAway { .. } => {}
        }
    }

    /// A new request: its body's feed kept, the service's answer started.
    fn start(&mut self, stream: u32, head: super::request::Head, end_stream: bool) {
        if head.parts.method == http::Method::HEAD {
            self.heads.insert(stream, ());
        }
        let body = if end_stream {
            None
        } else {
            let announced = Announced {
                stream,
                length: head.content_length,
                expects_continue: head.expects_continue,
                cancel_on_drop: false,
            };
            let (body, feed) = body::channel(announced, self.released.clone());
            self.feeds.insert(stream, feed);
            Some(body)
        };
        let req = Request::from_parts(head.parts, body);
        // The service's own call, like its future's polls, may panic (an
        // embedder's layer): that stream is reset alone. (A panic while a
        // stream's work is dropped is not caught: it ends the connection.)
        // Boxed where it is made: the request's future is large, and
        // `Box::pin` would copy it whole from the stack. The box is one an
        // earlier stream left on this thread, when there is one.
        let make = || crate::inplace::recycled(|| (self.service)(req));
        match std::panic::catch_unwind(AssertUnwindSafe(make)) {
            Ok(fut) => self.push(stream, Task::Answer { stream, fut }),
            Err(_) => self.panicked(stream),
        }
    }

    fn panicked(&mut self, stream: u32) {
        tracing::error!(stream, "an HTTP/2 stream panicked; it was reset alone");
        self.conn.reset(stream, Reason::INTERNAL_ERROR);
        self.running.end(stream);
    }

    /// Wants `body`'s next frame.
    fn next_frame(&mut self, stream: u32, body: B) {
        self.fresh.push((stream, body));
    }

    /// Polls the bodies whose next frame is wanted, in place: a frame
    /// ready now (a small response's whole body, usually) is sent without
    /// the body going through `running`; a body with nothing ready goes
    /// there, to be woken. Past a budget of polls the rest go there too,
    /// so a body that never stops being ready cannot hold the connection.
    fn poll_fresh(&mut self, cx: &mut Context<'_>) {
        let (mut budget, mut over_budget) = (FRESH_POLLS, false);
        while let Some((stream, mut body)) = self.fresh.pop() {
            if !self.running.is_open(stream) {
                continue; // the stream went meanwhile
            }
            if budget == 0 {
                // Never polled, so nothing would wake it: the connection's
                // task goes round again (after the thread's other tasks)
                // and polls it from the set then.
                if !std::mem::replace(&mut over_budget, true) {
                    cx.waker().wake_by_ref();
                }
                self.queue_body(stream, body);
                continue;
            }
            budget -= 1;
            let polled =
                std::panic::catch_unwind(AssertUnwindSafe(|| Pin::new(&mut body).poll_frame(cx)));
            match polled {
                Ok(Poll::Ready(frame)) => self.frame(stream, body, frame),
                Ok(Poll::Pending) => self.queue_body(stream, body),
                Err(_) => self.panicked(stream),
            }
        }
    }

    /// Leaves `body` to be woken when its next frame is ready.
    fn queue_body(&mut self, stream: u32, body: B) {
        let body = Some(body);
        self.push(stream, Task::Body { stream, body });
    }

    fn push(&mut self, stream: u32, task: Task<Fut, B>) {
        self.running.push(stream, task);
    }

    /// The stream is gone: its work stopped, its body told.
    fn forget(&mut self, stream: u32, why: H2BodyError) {
        self.running.end(stream);
        if self.parked.remove(&stream).is_some() {
            // Not left for `unpark` to pass over: it may not run for long
            // (a connection window held at 0), and a client resetting
            // streams would grow the queue meanwhile.
            self.parked_order.retain(|&s| s != stream);
        }
        self.heads.remove(&stream);
        if let Some(feed) = self.feeds.remove(&stream) {
            feed.fail(why);
        }
    }

    fn fail_bodies(&mut self, why: H2BodyError) {
        for (_, feed) in self.feeds.drain() {
            feed.fail(why);
        }
    }

    fn done(&mut self, done: Done<B>) {
        match done {
            Done::Head(stream, resp, named) => self.head(stream, resp, named.as_ref()),
            Done::Frame(stream, body, frame) => self.frame(stream, body, frame),
            Done::Panicked(stream) => self.panicked(stream),
        }
    }

    fn head(&mut self, stream: u32, resp: Response<B>, named: Option<&Named>) {
        let (mut parts, body) = resp.into_parts();
        // No body for HEAD, 204 and 304 (RFC 9110, 6.4.1), whatever the
        // answer carries (the gateway's own errors have one).
        let head = self.heads.remove(&stream).is_some();
        let bodiless = head || matches!(parts.status.as_u16(), 204 | 304);
        let no_length = head || parts.status.as_u16() == 304;
        ready_head(&mut parts, &body, (no_length, named.map(|n| n.0)));
        let end = bodiless || body.is_end_stream();
        let named = named.map(|(n, v)| (*n, v));
        self.conn
            .respond(stream, parts.status, (&parts.headers, named), end);
        // Encoded: the map's room serves the next head decoded on this
        // thread (a request's here, a response's in the client).
        crate::buffers::give_map(parts.headers);
        if end {
            self.running.end(stream);
        } else {
            self.next_frame(stream, body);
        }
    }

    fn frame(&mut self, stream: u32, body: B, frame: Option<Result<Frame<Bytes>, B::Error>>) {
        match frame {
            None => {
                self.conn.send_data(stream, &[], true);
                self.running.end(stream);
            }
            Some(Err(e)) => {
                tracing::debug!(stream, error = %e, "response body failed; stream reset");
                self.conn.reset(stream, Reason::INTERNAL_ERROR);
                self.running.end(stream);
            }
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) => self.send(stream, body, data),
                Err(frame) => {
                    if let Ok(mut trailers) = frame.into_trailers() {
                        strip_connection_fields(&mut trailers);
                        self.conn.send_trailers(stream, &trailers);
                        crate::buffers::give_map(trailers);
                    }
                    self.running.end(stream);
                }
            },
        }
    }

    /// Writes what the windows and the write buffer allow of `data`;
    /// parks the rest.
    fn send(&mut self, stream: u32, body: B, mut data: Bytes) {
        let end = body.is_end_stream();
        let now = data.len().min(self.room());
        let sent = self
            .conn
            .send_data(stream, &data[..now], end && now == data.len());
        data.advance(sent);
        if !data.is_empty() {
            self.parked.insert(stream, Parked { body, rest: data });
            self.parked_order.push_back(stream);
        } else if end {
            self.running.end(stream);
        } else {
            self.next_frame(stream, body);
        }
    }

    /// Sends parked frames that the windows now have room for, each
    /// stream in turn from the one parked longest (a stream that parks
    /// again goes to the back), so one large response cannot hold the
    /// connection's window while the others wait.
    fn unpark(&mut self) -> bool {
        let mut progress = false;
        for _ in 0..self.parked_order.len() {
            // Out of room for all: the rest keep their turn.
            if self.room() == 0 || self.conn.connection_capacity() == 0 {
                break;
            }
            let stream = self.parked_order.pop_front().expect("counted");
            if self.conn.capacity(stream) == 0 {
                self.parked_order.push_back(stream);
                continue;
            }
            let Parked { body, rest } = self.parked.remove(&stream).expect("parked in order");
            self.send(stream, body, rest);
            progress = true;
        }
        progress
    }

    /// Writes what the connection has to send; `true` once all of it is
    /// written and flushed.
    fn poll_write(&mut self, cx: &mut Context<'_>) -> io::Result<bool> {
        super::io::poll_write_all(&mut self.io, cx, &mut self.conn.out)
    }
}

/// What one pass over a response's names finds: a lookup by name for
/// each costs a hash of the name, and a response has a few fields.
#[derive(Debug, Default)]
struct Found {
    /// A field HTTP/2 forbids in a response (RFC 9113, section 8.2.2):
    /// the proxy strips them from upstream responses, but an embedder's
    /// layer might add one.
    forbidden: bool,
    date: bool,
    length: bool,
    /// A field of the name given, which one beside the map replaces.
    beside: bool,
}

fn look(headers: &HeaderMap, beside: Option<&HeaderName>) -> Found {
    let mut found = Found::default();
    for name in headers.keys() {
        if Some(name) == beside {
            found.beside = true;
        } else if name == http::header::DATE {
            found.date = true;
        } else if name == http::header::CONTENT_LENGTH {
            found.length = true;
        } else if name == TE || super::request::connection_specific(name) {
            found.forbidden = true;
        }
    }
    found
}

/// Fields HTTP/2 forbids in a response, if it carries any ([`look`]).
fn strip_connection_fields(headers: &mut HeaderMap) {
    if look(headers, None).forbidden {
        remove_connection_fields(headers);
    }
}

/// The connection-specific fields, those a `Connection` field names, and
/// `te`.
fn remove_connection_fields(headers: &mut HeaderMap) {
    let named: Vec<String> = headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().to_ascii_lowercase())
        .collect();
    for name in named {
        headers.remove(name.as_str());
    }
    for name in [CONNECTION, TRANSFER_ENCODING, UPGRADE, TE] {
        headers.remove(name);
    }
    headers.remove("keep-alive");
    headers.remove("proxy-connection");
}

/// A response head as it goes out: without what HTTP/2 forbids, with what
/// [`add_date_and_length`] adds. One pass over the names finds both.
/// A field `beside` the map takes the place of any of its name there.
fn ready_head<B: Body>(
    parts: &mut http::response::Parts,
    body: &B,
    (no_length, beside): (bool, Option<&HeaderName>),
) {
    let mut found = look(&parts.headers, beside);
    if found.forbidden {
        remove_connection_fields(&mut parts.headers);
        // A `Connection` field may have named `date` or the length.
        found = look(&parts.headers, beside);
    }
    if found.beside {
        parts.headers.remove(beside.expect("found"));
    }
    add_date_and_length(parts, body, no_length, &found);
}

/// What hyper's server adds to a response that lacks them: `date`, and a
/// `content-length` when the body's length is known (not for HEAD or 304,
/// whose length would be the resource's).
fn add_date_and_length<B: Body>(
    parts: &mut http::response::Parts,
    body: &B,
    no_length: bool,
    found: &Found,
) {
    if !found.date
        && let Ok(date) = httpdate::fmt_http_date(std::time::SystemTime::now()).parse()
    {
        // Rare (the gateway's own answers): formatted each time.
        parts.headers.insert(http::header::DATE, date);
    }
    if no_length || found.length {
        return;
    }
    if let Some(n) = body.size_hint().exact() {
        parts.headers.insert(http::header::CONTENT_LENGTH, n.into());
    }
}

#[cfg(test)]
mod tests;
