//! The native HTTP/2 client's connection loop: one upstream connection's
//! socket, its protocol state ([`super::client_conn`]) and its streams'
//! request bodies, all in the connection's own task; and the handle
//! ([`SendRequest`]) requests are sent through, shared by every request
//! task that uses the connection.
//!
//! A request goes to the connection's task through a channel (one wake-up
//! of that task, which may take many requests at once); its response comes
//! back through a slot of its own that the connection fills and the
//! request's task polls, and its body through an [`H2Body`]. A response
//! head, its DATA and its trailers read in one go reach the request's task
//! in one wake-up.
//!
//! Request bodies are sent as the server sends response bodies: polled in
//! place while they have frames ready, written within the upstream's
//! windows, the rest parked until a WINDOW_UPDATE. A response no longer
//! awaited (its future or its body dropped before the end) has its stream
//! reset (`CANCEL`), so the upstream stops work that no one reads. The
//! connection sends a PING after [`KEEP_ALIVE`] with streams open and
//! nothing read, and ends if the one before went unanswered.

use std::collections::VecDeque;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker, ready};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use http::header::{CONNECTION, HOST, TE, TRANSFER_ENCODING, UPGRADE};
use http::{HeaderMap, HeaderName, HeaderValue, Request, Response};
use http_body::{Body, Frame};
use tokio::sync::mpsc;

use super::body::{self, Announced, Feed, H2Body, H2BodyError, Released, Reports};
use super::client_conn::{ClientConn, Config, Event};
use super::frame::Reason;
use super::hpack::Target;
use super::io::OUT_HIGH;
use super::tasks::Tasks;

/// How long a connection with streams open may read nothing before it
/// sends a PING; a second interval without its answer ends it.
pub const KEEP_ALIVE: Duration = Duration::from_secs(30);
/// Request bodies polled in place per round before the rest wait.
const FRESH_POLLS: usize = 64;

/// Why a request got no response.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ClientError {
    /// The connection had closed (or the upstream had gone away) before the
    /// request's stream opened: nothing was sent.
    #[error("upstream HTTP/2 connection closed before the request was sent")]
    Closed,
    /// The upstream refused the stream (REFUSED_STREAM, or a GOAWAY that
    /// did not cover it): it did not process the request.
    #[error("upstream refused the stream (HTTP/2 error code {0})")]
    Refused(u32),
    /// The upstream reset the stream before its response head.
    #[error("upstream reset the stream (HTTP/2 error code {0})")]
    Reset(u32),
    /// The connection ended before the response head.
    #[error("upstream HTTP/2 connection ended before the response: {0}")]
    Gone(String),
    /// The connection's socket failed before the response head (a TLS
    /// alert is one).
    #[error("upstream HTTP/2 connection failed before the response: {0}")]
    Io(Arc<io::Error>),
    /// The request's body failed; the stream was reset.
    #[error("request body failed: {0}")]
    RequestBody(String),
}

/// A request that got no response, and the request itself when it was
/// never sent (so it can go over another connection).
///
/// The request is boxed: every response moves through the same `Result`
/// (into its slot, out of the future, through the pool's layers), and an
/// unboxed request (about 250 bytes) would make each of those copies that
/// much longer for a failure that is rare.
#[derive(Debug)]
pub struct SendFailure<B> {
    pub error: ClientError,
    pub request: Option<Box<Request<B>>>,
}

/// Where a request's outcome is left for its task.
#[derive(Debug)]
struct Slot<B> {
    state: Mutex<SlotState<B>>,
}

#[derive(Debug)]
struct SlotState<B> {
    /// The request, until its stream opens. It waits here, not in the
    /// [`Call`] the connection's task is sent: the call is then a pointer,
    /// where a request (344 bytes) was copied whole at each of the
    /// channel's steps (into its queue, out, into the task's hands).
    request: Option<Request<B>>,
    /// Fields to send after the request's own, encoded
    /// ([`SendRequest::send_with`]).
    extra: Bytes,
    outcome: Option<Result<Response<H2Body>, SendFailure<B>>>,
    waker: Option<Waker>,
    /// The stream the request went out on (0 until it did).
    stream: u32,
    /// The outcome is in, or the future went (before its stream opened,
    /// only the latter can be): nothing more is left.
    done: bool,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl<B> Slot<B> {
    /// Leaves the outcome, unless one is in or no one waits.
    fn complete(&self, outcome: Result<Response<H2Body>, SendFailure<B>>) {
        let mut state = lock(&self.state);
        if state.done {
            drop(state);
            // A response no one waits for: dropping its body resets the
            // stream.
            drop(outcome);
            return;
        }
        state.done = true;
        state.outcome = Some(outcome);
        if let Some(w) = state.waker.take() {
            drop(state);
            w.wake();
        }
    }
}

/// A request on its way to the connection's task (the request itself
/// waits in its slot). Dropped before its stream opened (the connection
/// closed, or its task ended), it leaves the request back in its slot's
/// outcome, unsent, so no caller is left waiting.
struct Call<B> {
    /// `None` once the stream opened and the slot went to [`Awaited`].
    slot: Option<Arc<Slot<B>>>,
}

impl<B> Call<B> {
    /// The stream opened (the request taken out): what is left to wait for.
    fn awaited(mut self) -> Awaited<B> {
        Awaited(self.slot.take().expect("a call not yet started"))
    }
}

impl<B> Drop for Call<B> {
    fn drop(&mut self) {
        let Some(slot) = self.slot.take() else {
            return;
        };
        let mut state = lock(&slot.state);
        if state.done {
            return; // the future went, and took its request with it
        }
        let request = state.request.take().map(Box::new);
        drop(state);
        let error = match request {
            Some(_) => ClientError::Closed,
            None => ClientError::Gone("the connection's task ended".into()),
        };
        slot.complete(Err(SendFailure { error, request }));
    }
}

/// A request whose stream is open, its response head not yet in. Kept
/// apart from [`Call`] (a slot, not a request's room): the connection holds
/// one per stream in flight. Dropped before its outcome is in (the task
/// ended, however), it leaves one, so no caller is left waiting.
struct Awaited<B>(Arc<Slot<B>>);

impl<B> Drop for Awaited<B> {
    fn drop(&mut self) {
        if lock(&self.0.state).done {
            return; // answered (the usual case): nothing to make
        }
        let error = ClientError::Gone("the connection's task ended".into());
        self.0.complete(Err(SendFailure {
            error,
            request: None,
        }));
    }
}

/// What the handles and the connection's task share.
#[derive(Debug)]
struct Shared {
    /// No new request may go out here (closed, failed, or gone away).
    closed: AtomicBool,
    /// Requests in flight: streams open and calls waiting for one. Counted
    /// up by each send, set exactly by the connection's task as it runs.
    load: AtomicUsize,
    /// The upstream's limit of concurrent streams (`usize::MAX` until its
    /// SETTINGS name one, as HTTP/2 has it).
    limit: AtomicUsize,
    /// Keep-alive intervals passed, and times the connection let go of
    /// its room at one (for the tests).
    #[cfg(test)]
    ticks: AtomicUsize,
    #[cfg(test)]
    shed: AtomicUsize,
}

impl Default for Shared {
    fn default() -> Shared {
        Shared {
            closed: AtomicBool::new(false),
            load: AtomicUsize::new(0),
            limit: AtomicUsize::new(usize::MAX),
            #[cfg(test)]
            ticks: AtomicUsize::new(0),
            #[cfg(test)]
            shed: AtomicUsize::new(0),
        }
    }
}

/// A handle to one upstream HTTP/2 connection; clones share it.
pub struct SendRequest<B> {
    calls: mpsc::UnboundedSender<Call<B>>,
    shared: Arc<Shared>,
    released: Arc<Released>,
}

impl<B> Clone for SendRequest<B> {
    fn clone(&self) -> Self {
        SendRequest {
            calls: self.calls.clone(),
            shared: self.shared.clone(),
            released: self.released.clone(),
        }
    }
}

impl<B> std::fmt::Debug for SendRequest<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SendRequest")
            .field("closed", &self.is_closed())
            .finish_non_exhaustive()
    }
}

impl<B> SendRequest<B> {
    /// Whether the connection has room for another stream within the
    /// upstream's limit (a request sent past it waits for a stream to end).
    pub fn has_room(&self) -> bool {
        self.shared.load.load(Ordering::Relaxed) < self.shared.limit.load(Ordering::Relaxed)
    }

    /// Requests in flight on the connection.
    pub fn load(&self) -> usize {
        self.shared.load.load(Ordering::Relaxed)
    }

    /// The upstream's limit of concurrent streams, once known (or assumed).
    pub fn stream_limit(&self) -> Option<usize> {
        Some(self.shared.limit.load(Ordering::Relaxed)).filter(|&l| l != usize::MAX)
    }

    /// Takes the limit to be `limit` until the upstream's SETTINGS say.
    pub fn assume_stream_limit(&self, limit: usize) {
        let _ = self.shared.limit.compare_exchange(
            usize::MAX,
            limit,
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
    }

    /// Whether `other` is a handle to the same connection.
    pub fn same_connection(&self, other: &SendRequest<B>) -> bool {
        Arc::ptr_eq(&self.shared, &other.shared)
    }

    /// Whether no new request can go out on this connection.
    pub fn is_closed(&self) -> bool {
        self.shared.closed.load(Ordering::Acquire) || self.calls.is_closed()
    }

    /// Sends `req` (its URI absolute, or its target host in `host`); the
    /// response comes with its body to read.
    pub fn send(&self, req: Request<B>) -> ResponseFuture<B> {
        self.send_with(req, Bytes::new())
    }

    /// [`SendRequest::send`], with `extra` fields after the request's own:
    /// encoded by [`super::hpack::literal_fields`], so that the caller need
    /// not insert them into the request's map (the proxy's forwarding
    /// fields: four insertions, each hashing a custom name, cost more than
    /// encoding them apart).
    pub fn send_with(&self, req: Request<B>, extra: Bytes) -> ResponseFuture<B> {
        let slot = Arc::new(Slot {
            state: Mutex::new(SlotState {
                request: Some(req),
                extra,
                outcome: None,
                waker: None,
                stream: 0,
                done: false,
            }),
        });
        let call = Call {
            slot: Some(slot.clone()),
        };
        self.shared.load.fetch_add(1, Ordering::Relaxed);
        // A closed channel drops the call, which leaves its outcome.
        let _ = self.calls.send(call);
        ResponseFuture {
            slot,
            released: self.released.clone(),
            finished: false,
        }
    }
}

/// A sent request's response, to come.
#[derive(Debug)]
pub struct ResponseFuture<B> {
    slot: Arc<Slot<B>>,
    released: Arc<Released>,
    finished: bool,
}

impl<B> Future for ResponseFuture<B> {
    type Output = Result<Response<H2Body>, SendFailure<B>>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let mut state = lock(&this.slot.state);
        match state.outcome.take() {
            Some(outcome) => {
                drop(state);
                this.finished = true;
                Poll::Ready(outcome)
            }
            None => {
                state.waker = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }
}

impl<B> Drop for ResponseFuture<B> {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        let mut state = lock(&self.slot.state);
        state.done = true;
        let stream = state.stream;
        let outcome = state.outcome.take();
        let unsent = state.request.take();
        drop(state);
        // A response that came meanwhile is dropped here: its body resets
        // the stream. One still to come: the connection resets it. A
        // request not yet sent goes now, with its body.
        drop((outcome, unsent));
        if stream != 0 {
            self.released.cancel(stream);
        }
    }
}

/// A request body waiting for window: the rest of its frame.
struct Parked<B> {
    body: B,
    rest: Bytes,
}

/// A request body's next frame, wanted.
struct NextFrame<B> {
    stream: u32,
    body: Option<B>,
}

type Polled<B> = (u32, B, Option<Result<Frame<Bytes>, <B as Body>::Error>>);

impl<B: Body<Data = Bytes> + Unpin> Future for NextFrame<B> {
    type Output = Polled<B>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Polled<B>> {
        let this = self.get_mut();
        let b = this.body.as_mut().expect("polled after it gave its frame");
        let frame = ready!(Pin::new(b).poll_frame(cx));
        Poll::Ready((this.stream, this.body.take().expect("just used"), frame))
    }
}

/// Starts HTTP/2 on `io` (its preface and settings written at once) and
/// spawns the connection's task; returns the handle to send through.
/// `keep_alive`: how long streams may wait with nothing read before a
/// PING ([`KEEP_ALIVE`] for upstreams).
pub fn connect<I, B>(io: I, config: Config, keep_alive: Duration) -> SendRequest<B>
where
    I: crate::conn_io::Io,
    B: Body<Data = Bytes> + Unpin + Send + 'static,
    B::Error: std::fmt::Display,
{
    let (tx, rx) = mpsc::unbounded_channel();
    let shared = Arc::new(Shared::default());
    let released = Arc::new(Released::default());
    let driver = Driver {
        io,
        conn: ClientConn::new(config),
        buf: BytesMut::new(),
        calls: rx,
        shared: shared.clone(),
        released: released.clone(),
        reports: Reports::default(),
        waiting: VecDeque::new(),
        replies: super::StreamMap::default(),
        feeds: super::StreamMap::default(),
        running: Tasks::default(),
        parked: super::StreamMap::default(),
        parked_order: VecDeque::new(),
        fresh: Vec::new(),
        events: Vec::new(),
        keep_alive: tokio::time::interval_at(tokio::time::Instant::now() + keep_alive, keep_alive),
        read_lately: false,
        ended: None,
    };
    // Its polls share a clock reading, as a downstream connection's do
    // (`clock`): the request bodies it reads mark their progress with it.
    tokio::spawn(crate::clock::Turns::new(driver.run()));
    SendRequest {
        calls: tx,
        shared,
        released,
    }
}

/// One upstream connection's task.
struct Driver<I, B: Body> {
    io: I,
    conn: ClientConn,
    buf: BytesMut,
    calls: mpsc::UnboundedReceiver<Call<B>>,
    shared: Arc<Shared>,
    released: Arc<Released>,
    reports: Reports,
    /// Requests over the upstream's limit of concurrent streams.
    waiting: VecDeque<Call<B>>,
    /// Streams whose response head has not come.
    replies: super::StreamMap<Awaited<B>>,
    /// Streams whose response body is being read.
    feeds: super::StreamMap<Feed>,
    /// Streams whose request body is being sent.
    running: Tasks<NextFrame<B>>,
    parked: super::StreamMap<Parked<B>>,
    parked_order: VecDeque<u32>,
    fresh: Vec<(u32, B)>,
    events: Vec<Event>,
    keep_alive: tokio::time::Interval,
    read_lately: bool,
    /// Why the connection ended, once it has.
    ended: Option<String>,
}

impl<I, B> Driver<I, B>
where
    I: crate::conn_io::Io,
    B: Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    async fn run(mut self) {
        let result = std::future::poll_fn(|cx| self.poll(cx)).await;
        if let Err(e) = &result {
            tracing::debug!(error = %e, "upstream HTTP/2 connection ended with an error");
        }
        let why = match result {
            Ok(()) => ClientError::Gone(self.ended.take().unwrap_or_else(|| "closed".into())),
            Err(e) => ClientError::Io(Arc::new(e)),
        };
        self.end_all(&why);
    }

    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            let mut progress = self.take_reports(cx);
            // Read first: a close or GOAWAY already here is known before
            // new requests go out (they then come back unsent).
            progress |= self.poll_read(cx)?;
            progress |= self.take_calls(cx);
            self.running.start_pass(cx);
            while let Some((stream, body, frame)) = self.running.next_done() {
                progress = true;
                self.running.end(stream);
                self.frame(stream, body, frame);
            }
            self.poll_fresh(cx);
            progress |= self.unpark();
            progress |= self.take_events();
            self.poll_keep_alive(cx)?;
            let full = self.conn.out.len() >= OUT_HIGH;
            let flushed = self.poll_write(cx)?;
            progress |= full && self.conn.out.len() < OUT_HIGH;
            progress |= !self.fresh.is_empty();
            if self.conn.is_closed() {
                self.shared.closed.store(true, Ordering::Release);
            }
            if flushed && self.finished() {
                return Pin::new(&mut self.io).poll_shutdown(cx);
            }
            if !progress {
                self.publish();
                return Poll::Pending;
            }
        }
    }

    /// Tells the handles how loaded the connection is, and its limit.
    fn publish(&self) {
        let load = self.conn.open_streams() + self.waiting.len();
        self.shared.load.store(load, Ordering::Relaxed);
        if let Some(limit) = self.conn.peer_stream_limit() {
            self.shared.limit.store(limit as usize, Ordering::Relaxed);
        }
    }

    /// Nothing left to do: the connection ended, or it can take no more
    /// requests and has none.
    fn finished(&self) -> bool {
        if self.ended.is_some() {
            return true;
        }
        self.idle() && (self.conn.is_closed() || self.calls.is_closed())
    }

    /// No request in any state: none waiting, sending, or answered only in
    /// part.
    fn idle(&self) -> bool {
        self.replies.is_empty()
            && self.feeds.is_empty()
            && self.running.is_idle()
            && self.waiting.is_empty()
            && self.fresh.is_empty()
            && self.parked.is_empty()
            && self.conn.open_streams() == 0
    }

    /// Acts on what the readers of responses reported: bytes taken give
    /// the upstream its window back; a response no longer read is reset.
    fn take_reports(&mut self, cx: &Context<'_>) -> bool {
        self.released.swap(cx, &mut self.reports);
        let progress = !self.reports.is_empty();
        for (stream, n) in self.reports.taken.drain(..) {
            self.conn.release(stream, n);
        }
        self.reports.continues.clear();
        // Taken out to act on, then put back empty: its room is kept.
        let mut cancelled = std::mem::take(&mut self.reports.cancelled);
        for stream in cancelled.drain(..) {
            self.forget(stream);
            self.conn.cancel(stream, Reason::CANCEL);
        }
        self.reports.cancelled = cancelled;
        progress
    }

    /// Takes the requests sent since the last look.
    fn take_calls(&mut self, cx: &mut Context<'_>) -> bool {
        let mut progress = false;
        while let Poll::Ready(Some(call)) = self.calls.poll_recv(cx) {
            progress = true;
            // Started at once when none wait before it: most never need
            // the queue.
            if self.waiting.is_empty() && (self.conn.can_open() || self.conn.is_closed()) {
                self.start(call);
            } else {
                self.waiting.push_back(call);
            }
        }
        while !self.waiting.is_empty() && (self.conn.can_open() || self.conn.is_closed()) {
            let call = self.waiting.pop_front().expect("not empty");
            self.start(call);
        }
        progress
    }

    /// Opens `call`'s stream (unless its future went meanwhile); on a
    /// connection that can take no more, the request goes back unsent.
    fn start(&mut self, mut call: Call<B>) {
        if self.conn.is_closed() || self.ended.is_some() {
            return; // dropped: `Closed`, with the request back
        }
        let slot = call.slot.as_ref().expect("a call not yet started");
        let mut state = lock(&slot.state);
        if state.done {
            // The future went before the stream opened (and took the
            // request with it).
            drop(state);
            call.slot = None;
            return;
        }
        let req = state.request.take().expect("a call not yet started");
        let extra = std::mem::take(&mut state.extra);
        let (mut parts, body) = req.into_parts();
        // HTTP/2 carries the target host as `:authority` (section
        // 8.3.1): the URI's, else the `host` field's, taken out.
        let host = parts.headers.remove(HOST);
        let authority = match parts.uri.authority() {
            Some(a) => Some(a.as_str()),
            None => host.as_ref().and_then(|h| h.to_str().ok()),
        };
        strip_connection_fields(&mut parts.headers);
        let target = Target {
            method: parts.method.as_str(),
            scheme: parts.uri.scheme_str().unwrap_or("http"),
            authority,
            path: parts.uri.path_and_query().map_or("/", |p| p.as_str()),
        };
        let end_stream = body.is_end_stream();
        let stream = self
            .conn
            .open(&target, (&parts.headers, &extra), end_stream);
        // Encoded: the map's room serves the next head decoded on this
        // thread (a response's here, a request's in the server).
        crate::buffers::give_map(parts.headers);
        state.stream = stream;
        drop(state);
        self.replies.insert(stream, call.awaited());
        if !end_stream {
            self.fresh.push((stream, body));
        }
    }

    /// Reads once, if there is room for what the answer needs; `true` if
    /// bytes came.
    ///
    /// A connection with no stream and no part of a frame held waits for
    /// the socket before it reads, and meanwhile gives its read buffer back
    /// to the thread's pool, as the server's connections do: a pooled
    /// connection between bursts holds none. (Its other room goes later:
    /// [`Driver::poll_keep_alive`].)
    fn poll_read(&mut self, cx: &mut Context<'_>) -> io::Result<bool> {
        if self.ended.is_some() || self.conn.out.len() > OUT_HIGH {
            return Ok(false);
        }
        if self.buf.is_empty() && self.idle() {
            match self.io.poll_readable(cx) {
                Poll::Ready(ready) => ready?,
                Poll::Pending => {
                    crate::buffers::give(&mut self.buf);
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
            self.ended = Some("the upstream closed the connection".into());
            return Ok(true);
        }
        self.read_lately = true;
        if let Err(reason) = self.conn.recv(&mut self.buf) {
            self.ended = Some(format!("connection error (HTTP/2 error code {})", reason.0));
        }
        self.take_events();
        Ok(true)
    }

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

    fn event(&mut self, event: Event) {
        match event {
            Event::Response {
                stream,
                head,
                end_stream,
            } => self.respond(stream, head, end_stream),
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
            Event::Reset {
                stream,
                reason,
                refused,
            } => {
                if let Some(awaited) = self.replies.remove(&stream) {
                    let error = match refused {
                        true => ClientError::Refused(reason.0),
                        false => ClientError::Reset(reason.0),
                    };
                    awaited.0.complete(Err(SendFailure {
                        error,
                        request: None,
                    }));
                }
                if let Some(feed) = self.feeds.remove(&stream) {
                    feed.fail(H2BodyError::UpstreamReset(reason.0));
                }
                self.stop_body(stream);
            }
        }
    }

    /// A response head: handed to its request's task with its body.
    fn respond(&mut self, stream: u32, head: super::response::Head, end_stream: bool) {
        let announced = Announced {
            stream,
            length: head.content_length,
            expects_continue: false,
            cancel_on_drop: true,
        };
        let (body, feed) = body::channel(announced, self.released.clone());
        if end_stream {
            feed.data(Bytes::new(), true);
        } else {
            self.feeds.insert(stream, feed);
        }
        let resp = Response::from_parts(head.parts, body);
        match self.replies.remove(&stream) {
            Some(awaited) => awaited.0.complete(Ok(resp)),
            // Its future went: dropping the response resets the stream.
            None => drop(resp),
        }
    }

    /// The stream's request body is no longer sent.
    fn stop_body(&mut self, stream: u32) {
        self.running.end(stream);
        if self.parked.remove(&stream).is_some() {
            self.parked_order.retain(|&s| s != stream);
        }
        self.fresh.retain(|(s, _)| *s != stream);
    }

    /// A stream the caller gave up on: nothing more is delivered to it.
    fn forget(&mut self, stream: u32) {
        if let Some(awaited) = self.replies.remove(&stream) {
            lock(&awaited.0.state).done = true;
        }
        self.feeds.remove(&stream);
        self.stop_body(stream);
    }

    fn poll_fresh(&mut self, cx: &mut Context<'_>) {
        let (mut budget, mut over_budget) = (FRESH_POLLS, false);
        while let Some((stream, mut body)) = self.fresh.pop() {
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
            match Pin::new(&mut body).poll_frame(cx) {
                Poll::Ready(frame) => self.frame(stream, body, frame),
                Poll::Pending => self.queue_body(stream, body),
            }
        }
    }

    fn queue_body(&mut self, stream: u32, body: B) {
        let body = Some(body);
        self.running.push(stream, NextFrame { stream, body });
    }

    /// A request body's next frame.
    fn frame(&mut self, stream: u32, body: B, frame: Option<Result<Frame<Bytes>, B::Error>>) {
        match frame {
            None => {
                self.conn.send_data(stream, &[], true);
            }
            Some(Err(e)) => {
                tracing::debug!(stream, error = %e, "request body failed; upstream stream reset");
                let why = e.to_string();
                self.conn.cancel(stream, Reason::CANCEL);
                if let Some(awaited) = self.replies.remove(&stream) {
                    awaited.0.complete(Err(SendFailure {
                        error: ClientError::RequestBody(why),
                        request: None,
                    }));
                }
                if let Some(feed) = self.feeds.remove(&stream) {
                    feed.fail(H2BodyError::UpstreamReset(Reason::CANCEL.0));
                }
            }
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) => self.send(stream, body, data),
                Err(frame) => {
                    if let Ok(mut trailers) = frame.into_trailers() {
                        strip_connection_fields(&mut trailers);
                        self.conn.send_trailers(stream, &trailers);
                        crate::buffers::give_map(trailers);
                    } else {
                        self.fresh.push((stream, body));
                    }
                }
            },
        }
    }

    fn room(&self) -> usize {
        OUT_HIGH.saturating_sub(self.conn.out.len())
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
        if !self.conn.sending(stream) {
            return; // this side ended, or the stream went: its body with it
        }
        if !data.is_empty() {
            self.parked.insert(stream, Parked { body, rest: data });
            self.parked_order.push_back(stream);
        } else {
            self.fresh.push((stream, body));
        }
    }

    fn unpark(&mut self) -> bool {
        let mut progress = false;
        for _ in 0..self.parked_order.len() {
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

    /// A PING after an interval with streams open and nothing read; the
    /// connection ends if the last one went unanswered.
    ///
    /// A connection idle at the interval lets go of its room for events
    /// and of a write buffer that a burst of request bodies grew past 16
    /// KiB (it was kept for the connection's life). Not at each idle
    /// moment, as the server does: one upstream connection carries bursts
    /// of many clients' calls, and regrowing both after each lull cost
    /// about 330 instructions per unary gRPC call (callgrind, 16 x 32
    /// streams through one connection).
    fn poll_keep_alive(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        while self.keep_alive.poll_tick(cx).is_ready() {
            #[cfg(test)]
            self.shared.ticks.fetch_add(1, Ordering::Relaxed);
            if self.idle() {
                self.events = Vec::new();
                self.running.shed();
                self.conn.shed_idle_room();
                #[cfg(test)]
                self.shared.shed.fetch_add(1, Ordering::Relaxed);
            }
            let quiet = !std::mem::take(&mut self.read_lately);
            if quiet && self.conn.open_streams() > 0 && !self.conn.ping() {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "upstream did not answer a keep-alive PING",
                ));
            }
        }
        Ok(())
    }

    fn poll_write(&mut self, cx: &mut Context<'_>) -> io::Result<bool> {
        super::io::poll_write_all(&mut self.io, cx, &mut self.conn.out)
    }

    /// The connection is over: every request still waiting learns why
    /// (those never sent come back, to go elsewhere).
    fn end_all(&mut self, why: &ClientError) {
        self.shared.closed.store(true, Ordering::Release);
        self.conn.close();
        self.calls.close();
        while let Ok(call) = self.calls.try_recv() {
            drop(call); // `Closed`, the request back
        }
        self.waiting.clear();
        for (_, awaited) in self.replies.drain() {
            awaited.0.complete(Err(SendFailure {
                error: why.clone(),
                request: None,
            }));
        }
        for (_, feed) in self.feeds.drain() {
            feed.fail(H2BodyError::UpstreamGone);
        }
        self.running.end_all();
        self.parked.clear();
        self.fresh.clear();
    }
}

/// Fields HTTP/2 forbids (section 8.2.2), should a request carry any:
/// the connection-specific ones and `te` other than `trailers`. Looked for
/// in one pass over the fields first: a request almost never has one, and
/// a lookup by name for each (two of them names to parse) cost more than
/// the pass.
fn strip_connection_fields(headers: &mut HeaderMap) {
    let forbidden = |(name, value): (&HeaderName, &HeaderValue)| {
        (name == TE && !value.as_bytes().eq_ignore_ascii_case(b"trailers"))
            || super::request::connection_specific(name)
    };
    if !headers.iter().any(forbidden) {
        return;
    }
    let te_ok = headers
        .get_all(TE)
        .iter()
        .all(|v| v.as_bytes().eq_ignore_ascii_case(b"trailers"));
    for name in [CONNECTION, TRANSFER_ENCODING, UPGRADE] {
        headers.remove(name);
    }
    headers.remove("keep-alive");
    headers.remove("proxy-connection");
    if !te_ok {
        headers.remove(TE);
    }
}

#[cfg(test)]
mod tests;
