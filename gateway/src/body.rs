//! Bodies on their way through the gateway, with the limits that keep a
//! slow or broken peer from holding the other side hostage.
//!
//! - [`ClientBody`]: a client's request body as it streams upstream. It
//!   enforces the body size limit (413) and the body read timeout (408:
//!   the time the gateway waits for the client's next bytes), and records in
//!   a shared [`BodyWatch`] what happened, so that when the upstream exchange
//!   fails the request task can tell a client's fault (a malformed chunk, a
//!   client gone, a stall, a body too large) from an upstream's, and never
//!   blame a healthy upstream for a client.
//! - [`TimedBody`]: an upstream's response body, ended with an error when
//!   no bytes arrive for the read timeout (a stalled upstream must not hold a
//!   client forever).
//!
//! Both arm their timer only when the peer makes them wait: a body that is
//! already buffered (most small ones) costs no timer at all.
//!
//! For gRPC, a [`ClientBody`] may also keep a copy of what it streams (a
//! [`Tee`], so a unary call can be sent again after a trailers-only
//! UNAVAILABLE without holding the call back until its body is read), and
//! decode a `grpc-web-text` body from base64 as it streams.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::time::Instant;

use crate::grpc::web::TextDecoder;
pub use crate::h1::body::{RequestBody, RequestBodyError};
use crate::idle::LazyDeadline;

/// What became of a client's request body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFault {
    /// It crossed the size limit.
    TooLarge,
    /// Its framing was broken (a bad chunk, for example).
    Malformed,
    /// The client sent nothing for the body read timeout.
    TimedOut,
    /// The client went away before the end of the body.
    ClientGone,
}

/// Why a [`ClientBody`] stopped: the upstream exchange fails with this.
#[derive(Debug, thiserror::Error)]
#[error("client request body: {fault:?}")]
pub struct ClientBodyError {
    /// What went wrong.
    pub fault: BodyFault,
}

const STREAMING: u8 = 0;
const ENDED: u8 = 1;
const FAULT_BASE: u8 = 2;

/// What the request task can see of a body streaming upstream.
#[derive(Debug)]
pub struct BodyWatch {
    state: AtomicU8,
    /// Whether the body is waiting for the client's bytes (as opposed to
    /// waiting for the upstream to take what it has).
    waiting_on_client: AtomicBool,
    /// The request's clock reading that the body's progress is counted
    /// from (see [`ClientBody::new`]).
    base: Instant,
    /// Nanoseconds after `base` of the body's last progress.
    moved_ns: AtomicU64,
    /// The size limit the body was given, for the 413 to name.
    limit: u64,
}

impl BodyWatch {
    /// The client's fault, if its body failed.
    pub fn fault(&self) -> Option<BodyFault> {
        match self.state.load(Ordering::Acquire) {
            STREAMING | ENDED => None,
            n => Some(FAULTS[usize::from(n - FAULT_BASE)]),
        }
    }

    /// The size limit the body was given (`u64::MAX`: none).
    pub fn limit(&self) -> u64 {
        self.limit
    }

    /// Whether the whole body was read from the client.
    pub fn ended(&self) -> bool {
        self.state.load(Ordering::Acquire) == ENDED
    }

    /// When an upstream deadline counted from the body's last progress
    /// falls: `None` while the gateway is waiting for the client (its own
    /// read timeout decides then, not the upstream's deadline).
    pub fn deadline(&self, timeout: Duration) -> Option<Instant> {
        if self.waiting_on_client.load(Ordering::Acquire) && !self.ended() {
            return None;
        }
        Some(self.base + Duration::from_nanos(self.moved_ns.load(Ordering::Acquire)) + timeout)
    }

    fn moved(&self) {
        let ns = crate::clock::now()
            .saturating_duration_since(self.base)
            .as_nanos() as u64;
        self.moved_ns.store(ns, Ordering::Release);
    }

    fn set(&self, state: u8) {
        self.state.store(state, Ordering::Release);
    }
}

const FAULTS: [BodyFault; 4] = [
    BodyFault::TooLarge,
    BodyFault::Malformed,
    BodyFault::TimedOut,
    BodyFault::ClientGone,
];

fn fault_code(f: BodyFault) -> u8 {
    FAULT_BASE
        + FAULTS
            .iter()
            .position(|x| *x == f)
            .expect("every fault is listed") as u8
}

/// A client's request body with its size limit and read timeout.
pub struct ClientBody {
    inner: RequestBody,
    watch: Arc<BodyWatch>,
    limit: u64,
    received: u64,
    read_timeout: Duration,
    /// Set when the client makes the body wait, and again at each new
    /// wait (a field write: see [`LazyDeadline`]).
    timer: LazyDeadline,
    waiting: bool,
    /// A copy of what has been sent, for a retry (gRPC calls on routes that
    /// retry on gRPC statuses).
    tee: Option<Arc<Tee>>,
    /// Decodes a `grpc-web-text` body (base64) as it streams.
    text: Option<Box<TextDecoder>>,
}

/// A copy of a request body as it streams upstream, up to a limit: past
/// it the copy is dropped and the request cannot be sent again.
#[derive(Debug)]
pub struct Tee {
    limit: usize,
    /// `None` once the body outgrew the limit.
    copy: Mutex<Option<bytes::BytesMut>>,
}

impl Tee {
    fn push(&self, data: &[u8]) {
        let mut copy = self.copy.lock().expect("tee lock poisoned");
        if let Some(buf) = copy.as_mut() {
            if buf.len() + data.len() > self.limit {
                *copy = None;
            } else {
                buf.extend_from_slice(data);
            }
        }
    }

    /// The whole body, if it fitted (call once the body has ended).
    pub fn bytes(&self) -> Option<Bytes> {
        let copy = self.copy.lock().expect("tee lock poisoned");
        copy.as_ref().map(|b| Bytes::copy_from_slice(b))
    }
}

impl std::fmt::Debug for ClientBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientBody")
            .field("received", &self.received)
            .field("limit", &self.limit)
            .finish_non_exhaustive()
    }
}

impl ClientBody {
    /// Wraps `inner`; `limit` in bytes (`u64::MAX`: none). `since`: the
    /// reading the body's progress counts from (the caller's, usually the
    /// request's start: one clock read fewer).
    pub fn new(
        inner: RequestBody,
        limit: u64,
        read_timeout: Duration,
        since: Instant,
    ) -> (ClientBody, Arc<BodyWatch>) {
        let watch = Arc::new(BodyWatch {
            state: AtomicU8::new(STREAMING),
            waiting_on_client: AtomicBool::new(false),
            base: since,
            moved_ns: AtomicU64::new(0),
            limit,
        });
        let body = ClientBody {
            inner,
            watch: watch.clone(),
            limit,
            received: 0,
            read_timeout,
            timer: LazyDeadline::default(),
            waiting: false,
            tee: None,
            text: None,
        };
        (body, watch)
    }

    /// Keeps a copy of the body as it streams, up to `limit` bytes.
    pub fn keep_copy(&mut self, limit: usize) -> Arc<Tee> {
        let tee = Arc::new(Tee {
            limit,
            copy: Mutex::new(Some(bytes::BytesMut::new())),
        });
        self.tee = Some(tee.clone());
        tee
    }

    /// Decodes the body from base64 (`grpc-web-text`) as it streams; a
    /// body that is not base64 fails as malformed.
    pub fn decode_web_text(&mut self) {
        self.text = Some(Box::default());
    }

    fn fail(&mut self, fault: BodyFault) -> Poll<Option<Result<Frame<Bytes>, ClientBodyError>>> {
        self.watch.set(fault_code(fault));
        self.timer = LazyDeadline::default();
        Poll::Ready(Some(Err(ClientBodyError { fault })))
    }

    /// The client made the body wait: start (or restart) the read timeout,
    /// and say whether it has run out.
    fn wait(&mut self, cx: &mut Context<'_>) -> bool {
        // Unset after a failure: a body polled again still times out.
        if !self.waiting || !self.timer.is_set() {
            self.waiting = true;
            self.watch.waiting_on_client.store(true, Ordering::Release);
            self.watch.moved();
            self.timer.restart(self.read_timeout);
        }
        self.timer.poll_expired(cx).is_ready()
    }

    fn progressed(&mut self) {
        if self.waiting {
            self.waiting = false;
            self.watch.waiting_on_client.store(false, Ordering::Release);
        }
        self.watch.moved();
    }
}

impl ClientBody {
    /// The gRPC work on a frame: base64 decoding, the copy for a retry.
    fn transform(&mut self, frame: Frame<Bytes>) -> Result<Frame<Bytes>, BodyFault> {
        let Some(data) = frame.data_ref() else {
            return Ok(frame);
        };
        let data = match &mut self.text {
            Some(text) => text.decode(data).map_err(|_| BodyFault::Malformed)?,
            None => data.clone(),
        };
        if let Some(tee) = &self.tee {
            tee.push(&data);
        }
        Ok(Frame::data(data))
    }
}

impl Body for ClientBody {
    type Data = Bytes;
    type Error = ClientBodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, ClientBodyError>>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(mut frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.received += data.len() as u64;
                    if this.received > this.limit {
                        return this.fail(BodyFault::TooLarge);
                    }
                }
                this.progressed();
                if this.text.is_some() || this.tee.is_some() {
                    frame = match this.transform(frame) {
                        Ok(f) => f,
                        Err(fault) => return this.fail(fault),
                    };
                }
                // A sender that knows the length stops polling at the last
                // byte instead of waiting for the end: note it here.
                if this.inner.is_end_stream() {
                    if this.text.as_ref().is_some_and(|t| t.finish().is_err()) {
                        return this.fail(BodyFault::Malformed);
                    }
                    this.watch.set(ENDED);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                let fault = if e.client_gone() {
                    BodyFault::ClientGone
                } else {
                    BodyFault::Malformed
                };
                this.fail(fault)
            }
            Poll::Ready(None) => {
                if this.text.as_ref().is_some_and(|t| t.finish().is_err()) {
                    return this.fail(BodyFault::Malformed);
                }
                this.progressed();
                this.watch.set(ENDED);
                this.timer = LazyDeadline::default();
                Poll::Ready(None)
            }
            Poll::Pending => {
                if this.wait(cx) {
                    return this.fail(BodyFault::TimedOut);
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        if self.text.is_some() {
            // Decoded, the body is shorter than the client's text.
            return SizeHint::default();
        }
        self.inner.size_hint()
    }
}

/// An upstream response body stopped for sending nothing for too long.
#[derive(Debug, thiserror::Error)]
#[error("the upstream sent no response bytes for {0:?}")]
pub struct ReadTimeout(pub Duration);

/// An upstream response body that ends with [`ReadTimeout`] when no frame
/// arrives for `timeout` (nginx's `proxy_read_timeout`).
#[derive(Debug)]
pub struct TimedBody<B> {
    inner: B,
    timeout: Duration,
    /// Armed at each wait for a frame, disarmed when one comes (see
    /// [`LazyDeadline::arm`]); set first at the first wait, unless handed
    /// on.
    timer: LazyDeadline,
}

impl<B> TimedBody<B> {
    /// Wraps `inner`; `timer`, when set, is reused for the read timeout
    /// (the request's route timeout hands its timer on, so a request
    /// registers one timer, not two: see [`crate::idle::LazyDeadline`]).
    pub fn new(inner: B, timeout: Duration, mut timer: LazyDeadline) -> TimedBody<B> {
        // A timer handed on counts toward the route's deadline: the first
        // wait for a frame sets its own.
        timer.disarm();
        TimedBody {
            inner,
            timeout,
            timer,
        }
    }
}

impl<B> Body for TimedBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        if let Poll::Ready(frame) = Pin::new(&mut this.inner).poll_frame(cx) {
            this.timer.disarm();
            return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
        }
        this.timer.arm(this.timeout);
        ready!(this.timer.poll_expired(cx));
        Poll::Ready(Some(Err(Box::new(ReadTimeout(this.timeout)))))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt as _;
    use http_body_util::{BodyExt as _, StreamBody};

    type Frames = Pin<Box<dyn futures_util::Stream<Item = Result<Frame<Bytes>, String>> + Send>>;

    /// `frames` frames, each `gap` after the last, then the end.
    fn slow_body(frames: usize, gap: Duration) -> StreamBody<Frames> {
        let stream = futures_util::stream::iter(0..frames).then(move |_| async move {
            tokio::time::sleep(gap).await;
            Ok(Frame::data(Bytes::from_static(b"x")))
        });
        StreamBody::new(Box::pin(stream) as Frames)
    }

    /// The route's timer is handed on still set to the route's deadline:
    /// the body's first wait counts its own read timeout, not that.
    #[tokio::test(start_paused = true)]
    async fn a_timer_handed_on_counts_the_read_timeout_from_the_wait() {
        let route = LazyDeadline::new(Duration::from_secs(1));
        let mut body = TimedBody::new(
            slow_body(1, Duration::from_secs(3)),
            Duration::from_secs(5),
            route,
        );
        let frame = body.frame().await.expect("a frame").expect("no timeout");
        assert_eq!(frame.into_data().unwrap(), "x");
        assert!(body.frame().await.is_none(), "the end");
    }

    /// Each wait for a frame counts afresh: frames 3 s apart never reach a
    /// 5 s read timeout, however long the whole body takes; a gap of 6 s
    /// does, 5 s into it.
    #[tokio::test(start_paused = true)]
    async fn the_read_timeout_counts_each_wait_afresh() {
        let timeout = Duration::from_secs(5);
        let mut body = TimedBody::new(
            slow_body(4, Duration::from_secs(3)),
            timeout,
            LazyDeadline::default(),
        );
        for _ in 0..4 {
            body.frame().await.expect("a frame").expect("no timeout");
        }
        assert!(body.frame().await.is_none());

        let mut body = TimedBody::new(
            slow_body(1, Duration::from_secs(6)),
            timeout,
            LazyDeadline::default(),
        );
        let started = Instant::now();
        let err = body.frame().await.expect("an error").unwrap_err();
        assert!(err.is::<ReadTimeout>(), "{err}");
        let waited = started.elapsed();
        assert!(
            waited >= timeout && waited < Duration::from_secs(6),
            "{waited:?}"
        );
    }
}
