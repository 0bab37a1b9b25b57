//! A connection's I/O as the native servers (HTTP/1.1 and HTTP/2) and the
//! native HTTP/2 client read it: one that may say it is readable before a
//! buffer is put up to read into, so that a connection waiting for its next
//! request (or, for HTTP/2, its next frame) holds no read buffer. That is
//! most of what an idle connection costs: bench/RESULTS.md measures it per
//! idle connection, cleartext and TLS, HTTP/1.1 and HTTP/2.

use std::io::{self, Read as _, Write as _};
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::idle::ActivityIo;

/// A connection's I/O, which may be able to say it is readable before a
/// buffer is put up to read into.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send + 'static {
    /// Ready when a read would find bytes (or the end). The default is
    /// always ready: the wait then happens in the read, with a buffer.
    fn poll_readable(&mut self, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    /// Ends the connection's sending side once all is written, before the
    /// connection is dropped. The default shuts the I/O down (TLS sends its
    /// `close_notify` there).
    fn poll_close(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        std::pin::Pin::new(self).poll_shutdown(cx)
    }

    /// Whether waiting on this I/O is already paid for: false for a
    /// [`LazyTcp`] not yet in the event loop, which the first wait puts
    /// there (two system calls: its registration, and its removal when it
    /// closes). The HTTP/1.1 server then watches for the client leaving
    /// only once an answer is slow in coming.
    fn polled(&self) -> bool {
        true
    }
}

/// A downstream TCP connection that joins tokio's event loop only when it
/// must wait: its reads and writes are tried on the socket first, and the
/// first one that would block registers it, as a tokio `TcpStream` from
/// then on.
///
/// Most connections that carry one request never wait on the client: the
/// request is in when the connection is accepted (the listeners defer
/// accepting until a connection's first bytes), and the answer fits the
/// socket's send buffer. Registering such a connection with epoll, and
/// removing it again at its close, cost two `epoll_ctl` calls, about 6% of
/// the gateway's CPU per connection (bench/RESULTS.md, thirty-eighth pass),
/// where HAProxy makes none.
#[derive(Debug)]
pub struct LazyTcp(Lazy);

#[derive(Debug)]
enum Lazy {
    /// Not in the event loop: non-blocking, tried directly.
    Unpolled(mio::net::TcpStream),
    Polled(TcpStream),
    /// Registration failed (the error was returned then).
    Failed,
}

/// The most a direct read takes: a request head's first read.
const DIRECT_READ: usize = crate::buffers::SIZE;

thread_local! {
    /// Where direct reads land before they are copied into the caller's
    /// buffer: that buffer's free room is uninitialised memory, which safe
    /// code must zero before a read into it (4 KiB, most of the cost of a
    /// request's first read, where the copy out is its head's length).
    static DIRECT: std::cell::RefCell<[u8; DIRECT_READ]> =
        const { std::cell::RefCell::new([0; DIRECT_READ]) };
}

impl LazyTcp {
    /// A connection accepted without registration (`mio`'s sockets are
    /// non-blocking).
    pub fn unpolled(stream: mio::net::TcpStream) -> LazyTcp {
        LazyTcp(Lazy::Unpolled(stream))
    }

    /// A connection already in tokio's event loop.
    pub fn polled(stream: TcpStream) -> LazyTcp {
        LazyTcp(Lazy::Polled(stream))
    }

    /// Whether it is in the event loop yet.
    pub fn is_polled(&self) -> bool {
        !matches!(self.0, Lazy::Unpolled(_))
    }

    /// The tokio stream, registering the socket first if it is not yet.
    /// Must be called within a tokio runtime.
    #[inline]
    pub fn registered(&mut self) -> io::Result<&mut TcpStream> {
        if !matches!(self.0, Lazy::Polled(_)) {
            self.register()?;
        }
        match &mut self.0 {
            Lazy::Polled(stream) => Ok(stream),
            _ => unreachable!("registered above"),
        }
    }

    /// Registers a socket not yet polled (`registered` calls it only
    /// then): once per connection at most, out of the I/O calls' way.
    #[inline(never)]
    fn register(&mut self) -> io::Result<()> {
        if let Lazy::Unpolled(stream) = std::mem::replace(&mut self.0, Lazy::Failed) {
            self.0 = Lazy::Polled(TcpStream::from_std(stream.into())?);
            return Ok(());
        }
        Err(io::Error::new(
            io::ErrorKind::NotConnected,
            "the connection could not join the event loop",
        ))
    }

    /// The tokio stream, registered.
    pub fn into_tokio(mut self) -> io::Result<TcpStream> {
        self.registered()?;
        match self.0 {
            Lazy::Polled(stream) => Ok(stream),
            _ => unreachable!("registered above"),
        }
    }

    /// Ready when a read would find bytes or the end; registers the socket
    /// to wait for that.
    pub fn poll_read_ready(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.registered()?.poll_read_ready(cx)
    }

    /// Sets `TCP_NODELAY` (where the listener's is not inherited).
    pub fn set_nodelay(&self, on: bool) -> io::Result<()> {
        match &self.0 {
            Lazy::Unpolled(stream) => stream.set_nodelay(on),
            Lazy::Polled(stream) => stream.set_nodelay(on),
            Lazy::Failed => Ok(()),
        }
    }
}

/// A direct attempt's result: done, or `None` to go through tokio.
fn direct<T>(res: io::Result<T>) -> Option<io::Result<T>> {
    match res {
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
            ) =>
        {
            None
        }
        res => Some(res),
    }
}

impl AsyncRead for LazyTcp {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Lazy::Unpolled(stream) = &mut this.0 {
            let room = buf.remaining().min(DIRECT_READ);
            let read = DIRECT.with_borrow_mut(|landing| {
                let n = stream.read(&mut landing[..room])?;
                buf.put_slice(&landing[..n]);
                Ok(n)
            });
            if let Some(read) = direct(read) {
                return Poll::Ready(read.map(|_| ()));
            }
        }
        Pin::new(this.registered()?).poll_read(cx, buf)
    }
}

impl AsyncWrite for LazyTcp {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if let Lazy::Unpolled(stream) = &mut this.0
            && let Some(written) = direct(stream.write(buf))
        {
            return Poll::Ready(written);
        }
        Pin::new(this.registered()?).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if let Lazy::Unpolled(stream) = &mut this.0
            && let Some(written) = direct(stream.write_vectored(bufs))
        {
            return Poll::Ready(written);
        }
        Pin::new(this.registered()?).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().0 {
            Lazy::Polled(stream) => Pin::new(stream).poll_flush(cx),
            _ => Poll::Ready(Ok(())),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().0 {
            Lazy::Unpolled(stream) => Poll::Ready(stream.shutdown(std::net::Shutdown::Write)),
            Lazy::Polled(stream) => Pin::new(stream).poll_shutdown(cx),
            Lazy::Failed => Poll::Ready(Ok(())),
        }
    }
}

/// A listener whose connections are accepted without joining tokio's
/// event loop (see [`LazyTcp`]); elsewhere than Linux, through tokio's
/// listener, registered.
#[derive(Debug)]
pub struct Acceptor {
    #[cfg(target_os = "linux")]
    listener: tokio::io::unix::AsyncFd<mio::net::TcpListener>,
    #[cfg(not(target_os = "linux"))]
    listener: tokio::net::TcpListener,
}

impl Acceptor {
    /// Takes over `listener` (its options stay). Must be called within a
    /// tokio runtime.
    pub fn new(listener: tokio::net::TcpListener) -> io::Result<Acceptor> {
        #[cfg(target_os = "linux")]
        let listener = {
            // Non-blocking, as tokio had it.
            let listener = mio::net::TcpListener::from_std(listener.into_std()?);
            crate::sockopt::async_listener(listener)?
        };
        Ok(Acceptor { listener })
    }

    /// The next connection, with its peer's address.
    pub async fn accept(&self) -> io::Result<(LazyTcp, std::net::SocketAddr)> {
        #[cfg(target_os = "linux")]
        loop {
            let mut ready = self.listener.readable().await?;
            if let Ok(accepted) = ready.try_io(|listener| listener.get_ref().accept()) {
                return accepted.map(|(stream, peer)| (LazyTcp::unpolled(stream), peer));
            }
        }
        #[cfg(not(target_os = "linux"))]
        self.listener
            .accept()
            .await
            .map(|(stream, peer)| (LazyTcp::polled(stream), peer))
    }
}

/// The listeners' connections (see [`LazyTcp`]).
impl<G: Unpin + Send + 'static> Io for ActivityIo<LazyTcp, G> {
    fn poll_readable(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut().poll_read_ready(cx)
    }

    /// Nothing, as for a `TcpStream` below.
    fn poll_close(&mut self, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn polled(&self) -> bool {
        self.get_ref().is_polled()
    }
}

impl<G: Unpin + Send + 'static> Io for ActivityIo<TcpStream, G> {
    fn poll_readable(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_ref().poll_read_ready(cx)
    }

    /// Nothing: closing the socket, which follows at once, sends the same
    /// FIN after the same queued bytes as `shutdown(2)` would, one system
    /// call fewer per closed connection. (Unread bytes from the client make
    /// the close a reset either way.)
    fn poll_close(&mut self, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// TLS over TCP: readable when rustls holds what a read would return
/// without the socket (decrypted bytes, the peer's `close_notify`), else
/// when the socket is. So an idle TLS connection, like a cleartext one,
/// waits for its next request with no read buffer: 4 KiB of the 18.9 kB
/// each idle TLS connection held (bench/RESULTS.md, thirty-fifth pass).
///
/// rustls's `wants_read` is false exactly when it holds such bytes. When
/// it is true, the stream's last read left the socket either readable
/// (it stopped once a record gave plaintext) or drained to "would block",
/// which clears tokio's readiness; so the socket's readiness is the
/// signal, and a partial record waits for the rest of it.
///
/// Boxed, as the gateway serves it (see `serve_tls` in the server module).
impl<G: Unpin + Send + 'static> Io
    for Box<tokio_rustls::server::TlsStream<ActivityIo<LazyTcp, G>>>
{
    fn poll_readable(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let (io, session) = self.get_mut();
        tls_readable(session.wants_read(), || io.get_mut().poll_read_ready(cx))
    }
}

/// A TLS stream's readiness: at once when rustls holds bytes for a read
/// (`wants_read` false), else the socket's (see the server's impl above).
fn tls_readable(
    wants_read: bool,
    socket_readable: impl FnOnce() -> Poll<io::Result<()>>,
) -> Poll<io::Result<()>> {
    if !wants_read {
        return Poll::Ready(Ok(()));
    }
    socket_readable()
}

/// An upstream connection over TCP (the HTTP/2 client's, h2c).
impl Io for TcpStream {
    fn poll_readable(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.poll_read_ready(cx)
    }
}

/// An upstream connection over TLS (the HTTP/2 client's, `https`): as the
/// server's side above.
impl Io for tokio_rustls::client::TlsStream<TcpStream> {
    fn poll_readable(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let (io, session) = self.get_ref();
        tls_readable(session.wants_read(), || io.poll_read_ready(cx))
    }
}

/// An in-memory pipe (the HTTP/2 server's unit tests): always readable,
/// so it waits in the read.
#[cfg(test)]
impl Io for tokio::io::DuplexStream {}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use std::io::{Read as _, Write as _};
    use std::pin::pin;

    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    use super::*;

    /// A client (blocking, std) and the server's end as the listeners
    /// accept it; `first` is sent before the accept, as a client's request
    /// is in when a deferred accept hands its connection over.
    async fn accepted(first: &[u8]) -> (std::net::TcpStream, LazyTcp) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        client.write_all(first).unwrap();
        let acceptor = Acceptor::new(listener).unwrap();
        let (io, _) = acceptor.accept().await.unwrap();
        (client, io)
    }

    /// A request that is in, an answer the socket takes, and the close:
    /// none of it puts the connection into the event loop.
    #[tokio::test]
    async fn a_connection_that_never_waits_stays_out_of_the_event_loop() {
        let (mut client, mut io) = accepted(b"GET / HTTP/1.1\r\n\r\n").await;
        assert!(!io.is_polled(), "accepted out of the event loop");
        let mut buf = [0u8; 64];
        let n = io.read(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], b"GET / HTTP/1.1\r\n\r\n");
        io.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
            .await
            .unwrap();
        io.shutdown().await.unwrap();
        assert!(!io.is_polled(), "still out of the event loop");
        let mut answer = String::new();
        client.read_to_string(&mut answer).unwrap();
        assert_eq!(answer, "HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok");
    }

    /// A read that finds nothing joins the event loop, and is woken when
    /// the bytes come.
    #[tokio::test]
    async fn a_read_that_must_wait_joins_the_event_loop_and_is_woken() {
        let (mut client, mut io) = accepted(b"").await;
        let mut buf = [0u8; 64];
        {
            let mut read = pin!(io.read(&mut buf));
            let pending =
                std::future::poll_fn(|cx| Poll::Ready(read.as_mut().poll(cx).is_pending())).await;
            assert!(pending, "nothing to read yet");
            client.write_all(b"late").unwrap();
            assert_eq!(read.await.unwrap(), 4);
        }
        assert_eq!(&buf[..4], b"late");
        assert!(io.is_polled(), "it waited, so it is in the event loop");
        client.write_all(b"more").unwrap();
        assert_eq!(io.read(&mut buf).await.unwrap(), 4);
        drop(client);
        assert_eq!(io.read(&mut buf).await.unwrap(), 0, "the client's close");
    }

    /// A write the socket cannot take whole joins the event loop and
    /// finishes as the client reads.
    #[tokio::test]
    async fn a_write_that_must_wait_joins_the_event_loop_and_finishes() {
        let (client, mut io) = accepted(b"").await;
        let data = vec![7u8; 16 * 1024 * 1024];
        let reader = std::thread::spawn(move || {
            let mut client = client;
            let mut got = Vec::new();
            client.read_to_end(&mut got).unwrap();
            got
        });
        io.write_all(&data).await.unwrap();
        assert!(io.is_polled(), "16 MiB do not fit a socket's buffers");
        io.shutdown().await.unwrap();
        drop(io);
        let got = reader.join().unwrap();
        assert_eq!(got.len(), data.len());
        assert!(got.iter().all(|&b| b == 7));
    }

    /// The tokio stream a refused connection is answered on.
    #[tokio::test]
    async fn a_connection_handed_to_tokio_keeps_its_bytes() {
        let (mut client, io) = accepted(b"early").await;
        let mut stream = io.into_tokio().unwrap();
        let mut buf = [0u8; 16];
        assert_eq!(stream.read(&mut buf).await.unwrap(), 5);
        stream.write_all(b"bye").await.unwrap();
        drop(stream);
        let mut answer = String::new();
        client.read_to_string(&mut answer).unwrap();
        assert_eq!(answer, "bye");
    }
}
