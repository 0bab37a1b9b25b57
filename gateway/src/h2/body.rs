//! A body that a native HTTP/2 connection receives: a request body on the
//! server ([`super::server`]), a response body on the client
//! ([`super::client`]).
//!
//! The connection's task decodes frames and hands each stream's DATA to
//! its body through a [`Feed`]; the proxy reads an [`H2Body`], wherever it
//! runs (the upstream side may poll it from another task). What the body
//! hands on is reported back ([`Released`]) so the connection opens the
//! client's window by as much: the client can only be as far ahead as one
//! window, whatever the upstream's pace. The first read of a body whose
//! request asked for `100 Continue` is reported the same way, so the
//! connection invites the body only once the proxy wants it (a request
//! answered without reading its body never invites it). A response body
//! dropped before its end is reported too ([`Reports::cancelled`]): the
//! client resets its stream, so the upstream stops the work no one reads.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use futures_util::task::AtomicWaker;
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};

/// Why a native HTTP/2 request body ended early.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum H2BodyError {
    /// The client reset the stream before the end of the body.
    #[error("client reset the stream before the end of the body")]
    Reset,
    /// The connection ended before the end of the body.
    #[error("client closed the connection before the end of the body")]
    Gone,
    /// The upstream reset the stream before the end of the response body
    /// (its error code).
    #[error("upstream reset the stream before the end of the body (HTTP/2 error code {0})")]
    UpstreamReset(u32),
    /// The upstream connection ended before the end of the response body.
    #[error("upstream connection closed before the end of the body")]
    UpstreamGone,
}

#[derive(Debug, Default)]
struct State {
    /// The oldest part not yet read, kept inline: a body usually has one
    /// part waiting at a time, and the queue allocates at its first push
    /// (two allocations per proxied gRPC call, one per body, in callgrind).
    first: Option<Bytes>,
    /// The parts after `first`.
    data: VecDeque<Bytes>,
    trailers: Option<HeaderMap>,
    ended: bool,
    error: Option<H2BodyError>,
    waker: Option<Waker>,
    /// The body was dropped: what arrives is released at once.
    dropped: bool,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// What the bodies report to the connection's task since it last looked.
#[derive(Debug, Default)]
pub struct Reports {
    /// Body bytes the proxy took (or dropped), per stream, to give back to
    /// the client's windows.
    pub taken: Vec<(u32, usize)>,
    /// Streams whose body was first read with `100 Continue` owed.
    pub continues: Vec<u32>,
    /// Streams whose response body (client side) was dropped before its
    /// end, or whose response was no longer awaited: to reset.
    pub cancelled: Vec<u32>,
}

impl Reports {
    pub fn is_empty(&self) -> bool {
        self.taken.is_empty() && self.continues.is_empty() && self.cancelled.is_empty()
    }
}

/// The bodies' [`Reports`], shared with the connection's task, and that
/// task's waker.
#[derive(Debug, Default)]
pub struct Released {
    reports: Mutex<Reports>,
    conn: AtomicWaker,
}

impl Released {
    fn add(&self, stream: u32, n: usize) {
        if n > 0 {
            lock(&self.reports).taken.push((stream, n));
            self.conn.wake();
        }
    }

    /// `stream`'s reader is gone before its end: the connection resets it.
    pub fn cancel(&self, stream: u32) {
        lock(&self.reports).cancelled.push(stream);
        self.conn.wake();
    }

    fn want_continue(&self, stream: u32) {
        lock(&self.reports).continues.push(stream);
        self.conn.wake();
    }

    /// Swaps what was reported since the last call into `into`, which
    /// must be empty (its vectors' room is kept for the next reports, so
    /// nothing is allocated per call). `cx`'s task is woken when more
    /// comes.
    pub fn swap(&self, cx: &Context<'_>, into: &mut Reports) {
        debug_assert!(into.is_empty());
        self.conn.register(cx.waker());
        let mut reports = lock(&self.reports);
        if !reports.is_empty() {
            std::mem::swap(&mut *reports, into);
        }
    }
}

/// The proxy's end of a request body.
#[derive(Debug)]
pub struct H2Body {
    state: Arc<Mutex<State>>,
    released: Arc<Released>,
    stream: u32,
    /// The request's `content-length`, for the size hint.
    length: Option<u64>,
    /// The client waits for `100 Continue` before it sends the body.
    continue_owed: bool,
    /// Dropped before its end, the body has its stream reset (a response
    /// body: the client side's).
    cancel_on_drop: bool,
    done: bool,
    /// The body ended and all of it was read, as seen under the lock at
    /// the last read: nothing more can come, so `is_end_stream`, the next
    /// poll and the drop answer without taking the lock. Each take of it
    /// is two atomic operations, and a unary gRPC call asked each of its
    /// two bodies about three more times after its last read.
    drained: bool,
}

/// The connection's end of a request body. Dropped before the body ended
/// (the connection gone, however), it fails the body with
/// [`H2BodyError::Gone`], so a reader on another task is never left
/// waiting.
#[derive(Debug)]
pub struct Feed {
    state: Arc<Mutex<State>>,
}

/// A stream's body as its request head announced it.
#[derive(Debug, Clone, Copy)]
pub struct Announced {
    pub stream: u32,
    /// The request's `content-length`.
    pub length: Option<u64>,
    /// The request carries `expect: 100-continue`.
    pub expects_continue: bool,
    /// Dropped before its end, the body has its stream reset.
    pub cancel_on_drop: bool,
}

/// A body and its feed.
pub fn channel(announced: Announced, released: Arc<Released>) -> (H2Body, Feed) {
    let state = Arc::new(Mutex::new(State::default()));
    let body = H2Body {
        state: state.clone(),
        released,
        stream: announced.stream,
        length: announced.length,
        continue_owed: announced.expects_continue,
        cancel_on_drop: announced.cancel_on_drop,
        done: false,
        drained: false,
    };
    (body, Feed { state })
}

impl Feed {
    /// Hands on DATA; returns its length if the body is gone (to release
    /// at once).
    pub fn data(&self, data: Bytes, end: bool) -> Option<usize> {
        let mut state = lock(&self.state);
        debug_assert!(!state.ended, "DATA after its body's end");
        state.ended |= end;
        if state.dropped {
            return Some(data.len());
        }
        if !data.is_empty() {
            state.push(data);
        }
        wake(&mut state);
        None
    }

    /// Hands on trailers, which end the body.
    pub fn trailers(&self, trailers: HeaderMap) {
        let mut state = lock(&self.state);
        state.trailers = Some(trailers);
        state.ended = true;
        wake(&mut state);
    }

    /// Ends the body with an error, unless it had ended or failed.
    pub fn fail(&self, error: H2BodyError) {
        let mut state = lock(&self.state);
        if !state.ended && state.error.is_none() {
            state.error = Some(error);
            wake(&mut state);
        }
    }
}

/// Hands `stream`'s DATA to its body's feed in `feeds` (which keeps a
/// feed until its body ends); returns the bytes to give back to the peer
/// at once, those of a body no one reads.
pub fn deliver(
    feeds: &mut super::StreamMap<Feed>,
    stream: u32,
    data: Bytes,
    end: bool,
) -> Option<usize> {
    let drop_now = match feeds.get(&stream) {
        Some(feed) => feed.data(data, end),
        None => Some(data.len()),
    };
    if end {
        feeds.remove(&stream);
    }
    drop_now
}

impl Drop for Feed {
    fn drop(&mut self) {
        self.fail(H2BodyError::Gone);
    }
}

impl State {
    fn push(&mut self, data: Bytes) {
        if self.first.is_none() && self.data.is_empty() {
            self.first = Some(data);
        } else {
            self.data.push_back(data);
        }
    }

    fn pop(&mut self) -> Option<Bytes> {
        self.first.take().or_else(|| self.data.pop_front())
    }

    fn is_empty(&self) -> bool {
        self.first.is_none() && self.data.is_empty()
    }

    /// Nothing more will come out: ended, all read.
    fn drained(&self) -> bool {
        self.ended && self.is_empty() && self.trailers.is_none()
    }
}

fn wake(state: &mut State) {
    if let Some(w) = state.waker.take() {
        w.wake();
    }
}

impl Body for H2Body {
    type Data = Bytes;
    type Error = H2BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, H2BodyError>>> {
        let this = self.get_mut();
        if this.drained {
            this.done = true;
            return Poll::Ready(None);
        }
        let mut state = lock(&this.state);
        if std::mem::take(&mut this.continue_owed) && state.is_empty() && !state.ended {
            // First read, and the client is still waiting to be invited.
            this.released.want_continue(this.stream);
        }
        if let Some(data) = state.pop() {
            this.drained = state.drained();
            drop(state);
            this.released.add(this.stream, data.len());
            return Poll::Ready(Some(Ok(Frame::data(data))));
        }
        if let Some(trailers) = state.trailers.take() {
            this.drained = state.drained();
            return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
        }
        if state.ended {
            this.drained = true;
            this.done = true;
            return Poll::Ready(None);
        }
        if let Some(error) = state.error.take() {
            this.done = true;
            return Poll::Ready(Some(Err(error)));
        }
        state.waker = Some(cx.waker().clone());
        Poll::Pending
    }

    /// Also true once the last part has been read and nothing but the end
    /// is left: a sender then ends its stream with that part (HTTP/2's
    /// END_STREAM on the last DATA frame) instead of polling once more
    /// and sending an empty frame.
    fn is_end_stream(&self) -> bool {
        self.done || self.drained || lock(&self.state).drained()
    }

    fn size_hint(&self) -> SizeHint {
        match self.length {
            Some(n) => SizeHint::with_exact(n),
            None => SizeHint::default(),
        }
    }
}

impl Drop for H2Body {
    fn drop(&mut self) {
        if self.drained {
            // Nothing held and nothing to reset. And no more DATA can come
            // to release: the connections drop a body's `Feed` at its
            // END_STREAM and at its trailers (`deliver`, and the server's
            // and client's trailers), which `Feed::data` asserts in debug
            // builds.
            return;
        }
        let mut state = lock(&self.state);
        state.dropped = true;
        let first = state.first.take().map_or(0, |d| d.len());
        let held: usize = first + state.data.drain(..).map(|d| d.len()).sum::<usize>();
        let unfinished = !state.ended && state.error.is_none();
        drop(state);
        self.released.add(self.stream, held);
        if self.cancel_on_drop && unfinished {
            self.released.cancel(self.stream);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::task::Context;

    use futures_util::task::noop_waker_ref;

    use super::*;

    fn announced(stream: u32, cancel_on_drop: bool) -> Announced {
        Announced {
            stream,
            length: Some(5),
            expects_continue: true,
            cancel_on_drop,
        }
    }

    fn reports(released: &Released) -> Reports {
        let mut into = Reports::default();
        released.swap(&Context::from_waker(noop_waker_ref()), &mut into);
        into
    }

    fn poll(body: &mut H2Body) -> Poll<Option<Result<Frame<Bytes>, H2BodyError>>> {
        Pin::new(body).poll_frame(&mut Context::from_waker(noop_waker_ref()))
    }

    /// Runs `f` on another thread while this one holds `state`'s lock:
    /// its answer comes only if it did not take the lock.
    fn without_the_lock<T: Send + 'static>(
        state: &Arc<Mutex<State>>,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> T {
        let _held = lock(state);
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || tx.send(f()));
        rx.recv_timeout(std::time::Duration::from_secs(10))
            .expect("an answer without the body's lock")
    }

    #[test]
    fn a_body_read_to_its_end_answers_after_without_its_lock() {
        let released = Arc::new(Released::default());
        let (mut body, feed) = channel(announced(3, true), released.clone());
        feed.data(Bytes::from_static(b"abc"), false);
        feed.data(Bytes::from_static(b"de"), true);
        assert!(!body.is_end_stream());
        assert!(matches!(poll(&mut body), Poll::Ready(Some(Ok(_)))));
        assert!(!body.is_end_stream(), "a part is left");
        assert!(matches!(poll(&mut body), Poll::Ready(Some(Ok(_)))));
        // The last part, and the end, were seen: the body answers, polls
        // and drops without the lock (the test holds it meanwhile).
        let state = body.state.clone();
        let (ended, next) = without_the_lock(&state, move || {
            let answers = (body.is_end_stream(), poll(&mut body).map(|f| f.is_none()));
            drop(body);
            answers
        });
        assert!(ended);
        assert_eq!(next, Poll::Ready(true));
        let got = reports(&released);
        assert_eq!(got.taken, vec![(3, 3), (3, 2)]);
        assert!(got.cancelled.is_empty(), "an ended body is not reset");

        // Trailers end it too, once read.
        let (mut body, feed) = channel(announced(5, true), released.clone());
        feed.data(Bytes::from_static(b"abcde"), false);
        feed.trailers(HeaderMap::new());
        assert!(matches!(poll(&mut body), Poll::Ready(Some(Ok(f))) if f.is_data()));
        assert!(!body.is_end_stream(), "the trailers are left");
        assert!(matches!(poll(&mut body), Poll::Ready(Some(Ok(f))) if f.is_trailers()));
        let state = body.state.clone();
        let ended = without_the_lock(&state, move || body.is_end_stream());
        assert!(ended);
        assert!(reports(&released).cancelled.is_empty());
    }

    #[test]
    fn a_fed_body_dropped_before_its_end_is_reset_and_its_bytes_given_back() {
        let released = Arc::new(Released::default());
        let (body, feed) = channel(announced(9, true), released.clone());
        assert_eq!(feed.data(Bytes::from_static(b"abc"), false), None);
        drop(body);
        let got = reports(&released);
        assert_eq!(got.taken, vec![(9, 3)]);
        assert_eq!(got.cancelled, vec![9]);
        assert_eq!(
            feed.data(Bytes::from_static(b"de"), true),
            Some(2),
            "released at once"
        );
    }
}
