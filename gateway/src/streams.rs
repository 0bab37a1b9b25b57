//! An HTTP/2 connection's streams, run in the connection's own task.
//!
//! hyper's HTTP/2 server hands each request stream to an executor. With
//! tokio's, every stream is a task: allocated, scheduled, woken and freed
//! per request, and a stream that answers wakes the connection's task to
//! write its frames. [`StreamExecutor`] instead queues the stream's future,
//! and [`ServeStreams`] polls the connection and its streams together, the
//! way HAProxy serves a connection's streams from the connection: no task
//! per request, and the frames of every stream that answered in one wake-up
//! go out in one write.
//!
//! The pool's HTTP/2 upstream connections use it too: hyper's client
//! hands its executor the connection's frame I/O and, per request, a
//! future that waits for the response and one that sends the request's
//! body. As tokio tasks those were two spawns per gRPC call and wake-ups
//! passed between four tasks; in the connection's task a gRPC call took
//! about a third less CPU (see bench/RESULTS.md).
//!
//! The trade: one connection's streams share one task, so on a runtime with
//! several threads they run on whichever thread runs the connection
//! (connections still spread across threads). A stream that panics is
//! caught and dropped alone, as a task's panic would be; its client sees
//! the stream reset.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use futures_util::FutureExt;
use futures_util::stream::{FuturesUnordered, StreamExt};

type StreamFuture = Pin<Box<dyn Future<Output = ()> + Send>>;

/// hyper's executor for one connection: queues each stream's future for
/// the [`ServeStreams`] that drives that connection.
#[derive(Clone, Default)]
pub(crate) struct StreamExecutor {
    /// Filled by hyper while the connection is polled (in the same task),
    /// emptied by [`ServeStreams`] right after; a `Mutex` only because
    /// hyper wants the executor `Send + Sync`: it is never contended.
    queued: Arc<Mutex<Vec<StreamFuture>>>,
}

impl<F> hyper::rt::Executor<F> for StreamExecutor
where
    F: Future<Output = ()> + Send + 'static,
{
    fn execute(&self, fut: F) {
        let fut = AssertUnwindSafe(fut).catch_unwind().map(|outcome| {
            if outcome.is_err() {
                tracing::error!("an HTTP/2 stream panicked; it was dropped alone");
            }
        });
        lock(&self.queued).push(Box::pin(fut));
    }
}

/// A connection future and its streams, polled together: ready when the
/// connection has ended and every stream it started has finished.
pub(crate) struct ServeStreams<C> {
    /// Boxed so that this wrapper is `Unpin` and the caller can still reach
    /// the connection (to ask for a graceful shutdown).
    conn: Pin<Box<C>>,
    /// The connection's outcome, once it has ended.
    ended: Option<Result<(), hyper::Error>>,
    executor: StreamExecutor,
    running: FuturesUnordered<StreamFuture>,
}

impl<C> ServeStreams<C>
where
    C: Future<Output = Result<(), hyper::Error>>,
{
    /// `conn` must have been built with `executor`.
    pub(crate) fn new(conn: C, executor: StreamExecutor) -> ServeStreams<C> {
        ServeStreams {
            conn: Box::pin(conn),
            ended: None,
            executor,
            running: FuturesUnordered::new(),
        }
    }

    /// The connection itself (e.g. to shut it down gracefully).
    pub(crate) fn conn(&mut self) -> Pin<&mut C> {
        self.conn.as_mut()
    }

    /// Moves the streams hyper queued into the running set.
    fn adopt_queued(&mut self) {
        let mut queued = lock(&self.executor.queued);
        self.running.extend(queued.drain(..));
    }
}

impl<C> Future for ServeStreams<C>
where
    C: Future<Output = Result<(), hyper::Error>>,
{
    type Output = Result<(), hyper::Error>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        if this.ended.is_none()
            && let Poll::Ready(outcome) = this.conn.as_mut().poll(cx)
        {
            this.ended = Some(outcome);
        }
        this.adopt_queued();
        // Streams that answer queue their frames and wake this task, so the
        // connection writes them all on the next poll, in one go.
        while let Poll::Ready(Some(())) = this.running.poll_next_unpin(cx) {}
        match this.ended.take() {
            // Streams still running after the connection ended (their
            // sends now fail) are run to their end, as tasks would have.
            Some(outcome) if this.running.is_empty() => Poll::Ready(outcome),
            ended => {
                this.ended = ended;
                Poll::Pending
            }
        }
    }
}

/// The queue's lock; a panic while it was held (in `Vec::push`) cannot
/// leave it inconsistent, so a poisoned lock is used as it is.
fn lock(queued: &Mutex<Vec<StreamFuture>>) -> std::sync::MutexGuard<'_, Vec<StreamFuture>> {
    queued.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::rt::Executor;

    /// A connection that ends at once, having started two streams: the
    /// wrapper finishes only when both have run.
    #[tokio::test]
    async fn streams_queued_by_the_connection_run_to_their_end() {
        let executor = StreamExecutor::default();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let conn = {
            let executor = executor.clone();
            async move {
                for n in 0..2 {
                    let tx = tx.clone();
                    executor.execute(async move {
                        tokio::task::yield_now().await;
                        tx.send(n).expect("receiver alive");
                    });
                }
                Ok(())
            }
        };
        ServeStreams::new(conn, executor)
            .await
            .expect("connection ok");
        let mut seen = vec![rx.recv().await.unwrap(), rx.recv().await.unwrap()];
        seen.sort();
        assert_eq!(seen, [0, 1]);
    }

    /// A stream that panics is dropped alone: the connection and its
    /// other stream carry on.
    #[tokio::test]
    async fn a_panicking_stream_does_not_end_the_connection() {
        let executor = StreamExecutor::default();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let conn = {
            let executor = executor.clone();
            async move {
                executor.execute(async { panic!("stream bug") });
                executor.execute(async move {
                    tx.send("other stream").expect("receiver alive");
                });
                Ok(())
            }
        };
        ServeStreams::new(conn, executor)
            .await
            .expect("connection ok");
        assert_eq!(rx.recv().await, Some("other stream"));
    }
}
