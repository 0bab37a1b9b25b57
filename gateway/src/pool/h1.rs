//! An upstream HTTP/1.1 connection driven by the task of the request that
//! borrows it, not by a task of its own.
//!
//! hyper's client connection is two halves: a `SendRequest` that queues a
//! request, and a `Connection` future that writes it, reads the answer and
//! feeds the response body. Spawned on its own task (hyper's usual way),
//! every request crosses tasks twice: the request is queued and the
//! connection's task woken, then the response head and each body chunk
//! are queued back and the request's task woken. Here the pooled
//! connection is a plain object, [`H1Conn`], holding both halves; the
//! request's task polls the `Connection` itself, first while waiting for
//! the response head ([`H1Conn::send`]) and then from the response body's
//! `poll_frame` ([`PooledBody`]), so one task does all of an exchange.
//!
//! Nobody polls a connection while it sits idle in the pool, so an upstream
//! that closed it is noticed when it is next looked at: checkout and the
//! periodic prune poll it once ([`H1Conn::usable`]), which reads the EOF.
//! A `101 Switching Protocols` hands the connection to a task of its own
//! (the cold path): hyper must keep polling it to release the upgraded I/O.

use std::future::{Future, poll_fn};
use std::io;
use std::pin::Pin;
use std::sync::Weak;
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use super::{Pool, UpstreamBody};

/// The transport under an upstream HTTP/1.1 connection: one type for
/// cleartext and TLS, so both pool alike.
#[derive(Debug)]
pub enum UpstreamIo {
    /// Cleartext TCP.
    Tcp(TcpStream),
    /// TLS over TCP (boxed: the session state is large).
    Tls(Box<TlsStream<TcpStream>>),
}

impl AsyncRead for UpstreamIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpstreamIo::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            UpstreamIo::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for UpstreamIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            UpstreamIo::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            UpstreamIo::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            UpstreamIo::Tcp(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            UpstreamIo::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            UpstreamIo::Tcp(s) => s.is_write_vectored(),
            UpstreamIo::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpstreamIo::Tcp(s) => Pin::new(s).poll_flush(cx),
            UpstreamIo::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpstreamIo::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            UpstreamIo::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// The connection future (hyper does not name its upgradeable type).
type Driver = dyn Future<Output = hyper::Result<()>> + Send + Sync;

/// One upstream HTTP/1.1 connection: the request half and the connection
/// future, polled by whichever task is using it.
pub struct H1Conn {
    sender: http1::SendRequest<UpstreamBody>,
    /// `None` once the connection has ended (closed, failed or upgraded).
    driver: Option<Pin<Box<Driver>>>,
}

impl std::fmt::Debug for H1Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("H1Conn")
            .field("open", &self.driver.is_some())
            .finish()
    }
}

impl H1Conn {
    /// The HTTP/1.1 handshake on `io` (nothing is sent until a request is).
    pub async fn handshake(io: UpstreamIo) -> Result<H1Conn, hyper::Error> {
        let (sender, conn) = http1::Builder::new()
            .max_buf_size(super::UPSTREAM_BUFFER)
            .handshake(TokioIo::new(io))
            .await?;
        Ok(H1Conn {
            sender,
            driver: Some(Box::pin(conn.with_upgrades())),
        })
    }

    /// Polls the connection: moves the exchange on (writes the request,
    /// reads the response, feeds its body), or notices that it ended.
    fn drive(&mut self, cx: &mut Context<'_>) {
        if let Some(driver) = self.driver.as_mut() {
            if let Poll::Ready(result) = driver.as_mut().poll(cx) {
                if let Err(e) = result {
                    tracing::debug!(error = %e, "upstream connection ended with an error");
                }
                self.driver = None;
            }
        }
    }

    /// Whether a request may be sent now: the connection is open and idle.
    /// Polls it once first (without a waker to call), which reads an EOF
    /// or an error the upstream sent while the connection sat idle.
    pub fn usable(&mut self) -> bool {
        self.drive(&mut Context::from_waker(Waker::noop()));
        self.driver.is_some() && self.sender.is_ready()
    }

    /// Whether the connection has ended.
    pub fn is_closed(&self) -> bool {
        self.driver.is_none() || self.sender.is_closed()
    }

    /// Sends `req` and waits for the response head, driving the connection
    /// meanwhile. On failure the request comes back when it never started.
    pub async fn send(
        &mut self,
        req: Request<UpstreamBody>,
    ) -> Result<Response<Incoming>, hyper::client::conn::TrySendError<Request<UpstreamBody>>> {
        let mut answer = std::pin::pin!(self.sender.try_send_request(req));
        let driver = &mut self.driver;
        poll_fn(|cx| {
            if let Some(d) = driver.as_mut() {
                if let Poll::Ready(result) = d.as_mut().poll(cx) {
                    if let Err(e) = result {
                        tracing::debug!(error = %e, "upstream connection ended with an error");
                    }
                    *driver = None;
                }
            }
            answer.as_mut().poll(cx)
        })
        .await
    }

    /// Hands the connection to a task of its own, for an upgrade: hyper
    /// releases the upgraded I/O only while the connection is polled.
    fn detach(mut self) {
        if let Some(driver) = self.driver.take() {
            tokio::spawn(async move {
                if let Err(e) = driver.await {
                    tracing::debug!(error = %e, "upstream connection ended with an error");
                }
            });
        }
    }
}

/// Where a connection goes back to once its response has been read.
struct Home {
    pool: Weak<Pool>,
    key: Box<str>,
}

/// An upstream HTTP/1.1 response body. It drives its connection while it
/// is read, and returns the connection to the pool once read to the end.
pub struct PooledBody {
    inner: Incoming,
    done: bool,
    conn: Option<H1Conn>,
    home: Option<Home>,
}

impl std::fmt::Debug for PooledBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PooledBody")
            .field("done", &self.done)
            .finish()
    }
}

impl PooledBody {
    /// The body of `resp` received on `conn`, which returns to `pool` under
    /// `key` when the body ends; a `101` detaches the connection instead.
    pub(super) fn wrap(
        resp: Response<Incoming>,
        conn: H1Conn,
        pool: Weak<Pool>,
        key: Box<str>,
    ) -> Response<PooledBody> {
        let upgraded = resp.status() == StatusCode::SWITCHING_PROTOCOLS;
        let (conn, home) = if upgraded {
            conn.detach();
            (None, None)
        } else {
            (Some(conn), Some(Home { pool, key }))
        };
        resp.map(|inner| PooledBody {
            inner,
            done: false,
            conn,
            home,
        })
    }

    fn finish(&mut self) {
        if let (Some(conn), Some(home)) = (self.conn.take(), self.home.take()) {
            if let Some(pool) = home.pool.upgrade() {
                pool.give_back(home.key, conn);
            }
        }
    }
}

impl Body for PooledBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = &mut *self;
        if let Some(conn) = this.conn.as_mut() {
            conn.drive(cx);
        }
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(None) => {
                this.done = true;
                this.finish();
            }
            Poll::Ready(Some(Err(_))) => {
                // A broken body: the connection is not reusable.
                this.home = None;
            }
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.done || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for PooledBody {
    fn drop(&mut self) {
        // Read to the end (or empty from the start): the connection is clean.
        if self.done || self.inner.is_end_stream() {
            self.finish();
        }
    }
}
