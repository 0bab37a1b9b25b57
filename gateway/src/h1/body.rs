//! A request body read by the native HTTP/1.1 server ([`super::server`]).
//!
//! The connection task owns the socket and decodes the body
//! ([`super::framing::BodyDecoder`]); the request's task reads it as an
//! [`H1Body`]. Between them is a slot of one frame: the connection reads
//! the next bytes only once the request has taken the last frame, so a
//! slow upstream slows the client (back-pressure) and the body never
//! buffers more than one read. The first poll of the body is also the
//! signal to send `100 Continue` to a client that asked for it: a request
//! answered without reading its body never invites it.
//!
//! The slot is a `std::sync::Mutex`: held for a few instructions, never
//! across an `.await`, and uncontended but for the one hand-over per frame.

use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

/// Why a native request body ended early.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum H1BodyError {
    /// The client closed the connection (or it failed) before the end.
    #[error("client closed the connection before the end of the body")]
    Gone,
    /// The body's framing was broken (a bad chunk, say).
    #[error("malformed request body framing")]
    Malformed,
}

/// What the connection hands the body: a frame, the end (`Ok(None)`), or
/// why it stopped. A sender dropped before the end means the client went.
pub type Item = Result<Option<Frame<Bytes>>, H1BodyError>;

#[derive(Debug, Default)]
struct Slot {
    item: Option<Item>,
    /// The request polled the body at least once.
    wanted: bool,
    body_waker: Option<Waker>,
    conn_waker: Option<Waker>,
    body_gone: bool,
    conn_gone: bool,
}

fn lock(slot: &Mutex<Slot>) -> MutexGuard<'_, Slot> {
    slot.lock().unwrap_or_else(|e| e.into_inner())
}

/// The request's end of a native HTTP/1.1 body.
#[derive(Debug)]
pub struct H1Body {
    slot: Arc<Mutex<Slot>>,
    /// Bytes left of a `Content-Length` body (`None`: chunked).
    left: Option<u64>,
    ended: bool,
}

/// The connection's end of a native HTTP/1.1 body.
#[derive(Debug)]
pub struct BodySender {
    slot: Arc<Mutex<Slot>>,
}

impl H1Body {
    /// A body of `length` bytes (`None`: chunked) and its sender.
    pub fn channel(length: Option<u64>) -> (H1Body, BodySender) {
        let slot = Arc::new(Mutex::new(Slot::default()));
        let body = H1Body {
            slot: slot.clone(),
            left: length,
            ended: false,
        };
        (body, BodySender { slot })
    }
}

impl BodySender {
    /// Ready when the slot is free for the next item; `Err` when the
    /// request dropped its body (nobody will read more).
    pub fn poll_ready(&self, cx: &mut Context<'_>) -> Poll<Result<(), ()>> {
        let mut slot = lock(&self.slot);
        if slot.body_gone {
            return Poll::Ready(Err(()));
        }
        if slot.item.is_none() {
            return Poll::Ready(Ok(()));
        }
        slot.conn_waker = Some(cx.waker().clone());
        Poll::Pending
    }

    /// Ready once the request has polled the body.
    pub fn poll_wanted(&self, cx: &mut Context<'_>) -> Poll<()> {
        let mut slot = lock(&self.slot);
        if slot.wanted || slot.body_gone {
            return Poll::Ready(());
        }
        slot.conn_waker = Some(cx.waker().clone());
        Poll::Pending
    }

    /// Puts `item` in the slot (call when [`BodySender::poll_ready`] said so).
    pub fn send(&self, item: Item) {
        let mut slot = lock(&self.slot);
        slot.item = Some(item);
        if let Some(w) = slot.body_waker.take() {
            w.wake();
        }
    }
}

impl Drop for BodySender {
    fn drop(&mut self) {
        let mut slot = lock(&self.slot);
        slot.conn_gone = true;
        if let Some(w) = slot.body_waker.take() {
            w.wake();
        }
    }
}

impl Drop for H1Body {
    fn drop(&mut self) {
        let mut slot = lock(&self.slot);
        slot.body_gone = true;
        if let Some(w) = slot.conn_waker.take() {
            w.wake();
        }
    }
}

impl H1Body {
    fn take(&self, cx: &mut Context<'_>) -> Poll<Item> {
        let mut slot = lock(&self.slot);
        if !slot.wanted {
            slot.wanted = true;
            if let Some(w) = slot.conn_waker.take() {
                w.wake();
            }
        }
        if let Some(item) = slot.item.take() {
            if let Some(w) = slot.conn_waker.take() {
                w.wake();
            }
            return Poll::Ready(item);
        }
        if slot.conn_gone {
            return Poll::Ready(Err(H1BodyError::Gone));
        }
        slot.body_waker = Some(cx.waker().clone());
        Poll::Pending
    }
}

impl Body for H1Body {
    type Data = Bytes;
    type Error = H1BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, H1BodyError>>> {
        if self.ended {
            return Poll::Ready(None);
        }
        let item = match self.take(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(item) => item,
        };
        match item {
            Ok(None) => {
                self.ended = true;
                Poll::Ready(None)
            }
            Ok(Some(frame)) => {
                if let (Some(left), Some(data)) = (self.left.as_mut(), frame.data_ref()) {
                    *left = left.saturating_sub(data.len() as u64);
                }
                if frame.is_trailers() || self.left == Some(0) {
                    self.ended = true;
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Err(e) => {
                self.ended = true;
                Poll::Ready(Some(Err(e)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.ended || self.left == Some(0)
    }

    fn size_hint(&self) -> SizeHint {
        match self.left {
            Some(n) => SizeHint::with_exact(n),
            None => SizeHint::default(),
        }
    }
}

/// The downstream request body the proxy reads, whichever server read it:
/// none, hyper's (HTTP/2), or the native HTTP/1.1 server's. The `body`
/// module re-exports it; it lives here so that the server does not import
/// that module (no import cycle).
#[derive(Debug)]
pub enum RequestBody {
    /// No body (no framing, or `Content-Length: 0`).
    Empty,
    /// Read by hyper.
    Hyper(hyper::body::Incoming),
    /// Read by the native HTTP/1.1 server.
    H1(H1Body),
    /// Read by the native HTTP/2 server.
    H2(crate::h2::body::H2Body),
}

/// Why a [`RequestBody`] failed.
#[derive(Debug, thiserror::Error)]
pub enum RequestBodyError {
    /// hyper's error.
    #[error(transparent)]
    Hyper(#[from] hyper::Error),
    /// The native server's error.
    #[error(transparent)]
    H1(#[from] H1BodyError),
    /// The native HTTP/2 server's error.
    #[error(transparent)]
    H2(#[from] crate::h2::body::H2BodyError),
}

impl RequestBodyError {
    /// The client went away (or cancelled) before the end of the body, as
    /// opposed to sending a malformed one.
    pub fn client_gone(&self) -> bool {
        match self {
            RequestBodyError::Hyper(e) => e.is_incomplete_message() || e.is_canceled(),
            RequestBodyError::H1(e) => *e == H1BodyError::Gone,
            // A reset or a closed connection: the client's doing either way.
            RequestBodyError::H2(_) => true,
        }
    }
}

impl From<hyper::body::Incoming> for RequestBody {
    fn from(body: hyper::body::Incoming) -> RequestBody {
        RequestBody::Hyper(body)
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = RequestBodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, RequestBodyError>>> {
        match self.get_mut() {
            RequestBody::Empty => Poll::Ready(None),
            RequestBody::Hyper(b) => Pin::new(b).poll_frame(cx).map_err(Into::into),
            RequestBody::H1(b) => Pin::new(b).poll_frame(cx).map_err(Into::into),
            RequestBody::H2(b) => Pin::new(b).poll_frame(cx).map_err(Into::into),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            RequestBody::Empty => true,
            RequestBody::Hyper(b) => b.is_end_stream(),
            RequestBody::H1(b) => b.is_end_stream(),
            RequestBody::H2(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            RequestBody::Empty => SizeHint::with_exact(0),
            RequestBody::Hyper(b) => b.size_hint(),
            RequestBody::H1(b) => b.size_hint(),
            RequestBody::H2(b) => b.size_hint(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[tokio::test]
    async fn frames_pass_one_at_a_time_and_the_first_poll_is_wanted() {
        let (mut body, tx) = H1Body::channel(None);
        let waker = futures_util::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        assert!(tx.poll_wanted(&mut cx).is_pending());
        assert!(Pin::new(&mut body).poll_frame(&mut cx).is_pending());
        assert!(tx.poll_wanted(&mut cx).is_ready());
        tx.send(Ok(Some(Frame::data(Bytes::from("ab")))));
        assert!(tx.poll_ready(&mut cx).is_pending(), "one frame at a time");
        let got = body.frame().await.unwrap().unwrap();
        assert_eq!(got.into_data().unwrap(), "ab");
        assert!(tx.poll_ready(&mut cx).is_ready());
        tx.send(Ok(None));
        assert!(body.frame().await.is_none());
        assert!(body.is_end_stream());
    }

    #[tokio::test]
    async fn a_connection_gone_mid_body_is_an_error() {
        let (mut body, tx) = H1Body::channel(Some(10));
        assert_eq!(body.size_hint().exact(), Some(10));
        drop(tx);
        assert_eq!(body.frame().await.unwrap().unwrap_err(), H1BodyError::Gone);
    }
}
