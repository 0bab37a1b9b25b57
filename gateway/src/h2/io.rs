//! The socket side both connection loops (the server's and the client's)
//! share: how much may wait to be written before reading pauses, and the
//! reads and writes themselves.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite};

/// Bytes waiting to be written past which a connection stops reading (and
/// holds back body frames): a peer that sends without reading cannot grow
/// the connection's memory.
pub const OUT_HIGH: usize = 256 * 1024;
/// Room made in the read buffer before each read.
const READ_ROOM: usize = 16 * 1024;

/// Reads once into `buf`: the bytes read (0 at the peer's end), or `None`
/// when nothing is ready.
pub fn poll_read_some<I: AsyncRead + Unpin>(
    io: &mut I,
    cx: &mut Context<'_>,
    buf: &mut BytesMut,
) -> io::Result<Option<usize>> {
    buf.reserve(READ_ROOM);
    match tokio_util::io::poll_read_buf(Pin::new(io), cx, buf) {
        Poll::Ready(Ok(n)) => Ok(Some(n)),
        Poll::Ready(Err(e)) => Err(e),
        Poll::Pending => Ok(None),
    }
}

/// Writes what `out` holds; `true` once all of it is written and flushed.
pub fn poll_write_all<I: AsyncWrite + Unpin>(
    io: &mut I,
    cx: &mut Context<'_>,
    out: &mut BytesMut,
) -> io::Result<bool> {
    while !out.is_empty() {
        match Pin::new(&mut *io).poll_write(cx, out) {
            Poll::Ready(Ok(0)) => return Err(io::ErrorKind::WriteZero.into()),
            Poll::Ready(Ok(n)) => out.advance(n),
            Poll::Ready(Err(e)) => return Err(e),
            Poll::Pending => return Ok(false),
        }
    }
    match Pin::new(io).poll_flush(cx) {
        Poll::Ready(result) => result.map(|()| true),
        Poll::Pending => Ok(false),
    }
}
