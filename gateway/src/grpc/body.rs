//! A gRPC call's response body on its way to the client: it notes the
//! call's `grpc-status` (from the trailers, or from the head of a
//! trailers-only response), counts it in the route's metrics and writes the
//! access-log line when the call ends, and for gRPC-Web clients moves the
//! trailers into the body (base64-encoding everything for `grpc-web-text`).
//!
//! Only gRPC calls get this wrapper; other responses stream untouched.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

use super::web::{TextEncoder, trailers_frame};
use super::{Code, GRPC_STATUS, GrpcKind};
use crate::access::AccessLine;
use crate::breaker::RouteState;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// What the body does to frames on their way.
#[derive(Debug)]
enum Mode {
    /// Pass every frame (native gRPC).
    Native,
    /// Trailers become a body frame.
    Web,
    /// The same, and the body goes out in base64.
    WebText(TextEncoder),
}

/// What is recorded when the call ends.
#[derive(Debug)]
pub struct Outcome {
    /// The route's state (its metrics), when a route matched.
    pub state: Option<Arc<RouteState>>,
    /// The access-log line, when the log is on.
    pub log: Option<AccessLine>,
}

/// A gRPC response body; see the module doc.
#[derive(Debug)]
pub struct GrpcBody<B> {
    inner: B,
    mode: Mode,
    /// The status seen so far: in the head (trailers-only) or the trailers.
    status: Option<Code>,
    /// Inline: the body itself is boxed once per call (the proxy's
    /// `ProxyBody`), and a box of its own cost an allocation more.
    outcome: Option<Outcome>,
    /// A frame made here (the trailers frame, the last base64 text), sent
    /// before anything else is read.
    pending: Option<Bytes>,
    done: bool,
}

impl<B> GrpcBody<B> {
    /// Wraps the body of a response whose head carried `status` (a
    /// trailers-only response) or not, for a client of `kind`.
    pub fn new(inner: B, kind: GrpcKind, status: Option<Code>) -> GrpcBody<B> {
        let mode = match kind {
            GrpcKind::Native => Mode::Native,
            GrpcKind::Web => Mode::Web,
            GrpcKind::WebText => Mode::WebText(TextEncoder::default()),
        };
        GrpcBody {
            inner,
            mode,
            status,
            outcome: None,
            pending: None,
            done: false,
        }
    }

    /// What to record when the call ends.
    pub fn set_outcome(&mut self, outcome: Outcome) {
        self.outcome = Some(outcome);
    }

    /// The call ended (or was abandoned): record it, once.
    fn end(&mut self) {
        if let Some(outcome) = self.outcome.take() {
            let code = self.status.map(|c| c.0);
            if let Some(state) = &outcome.state {
                state.metrics.record_grpc(code);
            }
            if let Some(line) = &outcome.log {
                line.emit(Some(code));
            }
        }
    }

    /// A data chunk as the client gets it (`None`: nothing to send yet).
    fn data(&mut self, data: Bytes) -> Option<Bytes> {
        match &mut self.mode {
            Mode::WebText(enc) => Some(enc.encode(&data)).filter(|b| !b.is_empty()),
            _ => Some(data),
        }
    }

    /// The trailers arrived: note the status; for gRPC-Web, turn them into
    /// the last body frame.
    fn trailers(&mut self, trailers: http::HeaderMap) -> Frame<Bytes> {
        if let Some(code) = trailers.get(&GRPC_STATUS).and_then(Code::from_header) {
            self.status = Some(code);
        }
        match &mut self.mode {
            Mode::Native => Frame::trailers(trailers),
            Mode::Web => Frame::data(trailers_frame(&trailers)),
            Mode::WebText(enc) => {
                let mut text = enc.encode(&trailers_frame(&trailers)).to_vec();
                text.extend_from_slice(&enc.finish());
                Frame::data(Bytes::from(text))
            }
        }
    }
}

impl<B> Body for GrpcBody<B>
where
    B: Body<Data = Bytes, Error = BoxError> + Unpin,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        loop {
            if let Some(b) = this.pending.take() {
                return Poll::Ready(Some(Ok(Frame::data(b))));
            }
            if this.done {
                return Poll::Ready(None);
            }
            match ready!(Pin::new(&mut this.inner).poll_frame(cx)) {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => match this.data(data) {
                        Some(out) => return Poll::Ready(Some(Ok(Frame::data(out)))),
                        None => continue,
                    },
                    Err(frame) => match frame.into_trailers() {
                        Ok(trailers) => return Poll::Ready(Some(Ok(this.trailers(trailers)))),
                        Err(_) => continue,
                    },
                },
                Some(Err(e)) => {
                    this.status = None;
                    this.done = true;
                    this.end();
                    return Poll::Ready(Some(Err(e)));
                }
                None => {
                    this.done = true;
                    if let Mode::WebText(enc) = &mut this.mode {
                        let rest = enc.finish();
                        if !rest.is_empty() {
                            this.pending = Some(rest);
                        }
                    }
                    this.end();
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.pending.is_none() && (self.done || self.inner.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        match self.mode {
            Mode::Native => self.inner.size_hint(),
            _ => SizeHint::default(),
        }
    }
}

impl<B> Drop for GrpcBody<B> {
    fn drop(&mut self) {
        // Read to its end, empty from the start (trailers-only), or
        // abandoned by a client that went away: recorded once either way.
        // Abandoned with no status: the call did not end, it was cut off.
        self.end();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine as _;
    use http::HeaderMap;
    use http_body_util::{BodyExt, StreamBody};

    fn upstream(frames: Vec<Frame<Bytes>>) -> impl Body<Data = Bytes, Error = BoxError> + Unpin {
        StreamBody::new(futures_util::stream::iter(
            frames.into_iter().map(Ok::<_, BoxError>),
        ))
    }

    fn trailers() -> HeaderMap {
        let mut t = HeaderMap::new();
        t.insert("grpc-status", "0".parse().unwrap());
        t
    }

    #[tokio::test]
    async fn web_clients_get_the_trailers_in_the_body() {
        let body = GrpcBody::new(
            upstream(vec![
                Frame::data(Bytes::from_static(b"\0\0\0\0\x01A")),
                Frame::trailers(trailers()),
            ]),
            GrpcKind::Web,
            None,
        );
        let got = body.collect().await.unwrap();
        assert!(got.trailers().is_none());
        assert_eq!(
            &got.to_bytes()[..],
            b"\0\0\0\0\x01A\x80\0\0\0\x10grpc-status: 0\r\n"
        );
    }

    #[tokio::test]
    async fn text_clients_get_one_base64_text() {
        let body = GrpcBody::new(
            upstream(vec![
                Frame::data(Bytes::from_static(b"\0\0\0\0\x01A")),
                Frame::trailers(trailers()),
            ]),
            GrpcKind::WebText,
            None,
        );
        let text = body.collect().await.unwrap().to_bytes();
        let raw = base64::engine::general_purpose::STANDARD
            .decode(&text)
            .unwrap();
        assert_eq!(&raw[..], b"\0\0\0\0\x01A\x80\0\0\0\x10grpc-status: 0\r\n");
    }

    #[tokio::test]
    async fn native_clients_get_the_trailers_as_trailers() {
        let mut body = GrpcBody::new(
            upstream(vec![Frame::trailers(trailers())]),
            GrpcKind::Native,
            None,
        );
        let f = body.frame().await.unwrap().unwrap();
        assert!(f.is_trailers());
        assert_eq!(body.status, Some(Code::OK));
    }
}
