//! A connection's I/O as the native servers (HTTP/1.1 and HTTP/2) and the
//! native HTTP/2 client read it: one that may say it is readable before a
//! buffer is put up to read into, so that a connection waiting for its next
//! request (or, for HTTP/2, its next frame) holds no read buffer. That is
//! most of what an idle connection costs: bench/RESULTS.md measures it per
//! idle connection, cleartext and TLS, HTTP/1.1 and HTTP/2.

use std::io;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite};
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
    for Box<tokio_rustls::server::TlsStream<ActivityIo<TcpStream, G>>>
{
    fn poll_readable(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let (io, session) = self.get_ref();
        tls_readable(session.wants_read(), io.get_ref(), cx)
    }
}

/// A TLS stream's readiness: at once when rustls holds bytes for a read
/// (`wants_read` false), else the socket's (see the server's impl above).
fn tls_readable(
    wants_read: bool,
    socket: &TcpStream,
    cx: &mut Context<'_>,
) -> Poll<io::Result<()>> {
    if !wants_read {
        return Poll::Ready(Ok(()));
    }
    socket.poll_read_ready(cx)
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
        tls_readable(session.wants_read(), io, cx)
    }
}

/// An in-memory pipe (the HTTP/2 server's unit tests): always readable,
/// so it waits in the read.
#[cfg(test)]
impl Io for tokio::io::DuplexStream {}
