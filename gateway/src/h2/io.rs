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

/// Write buffer an idle connection keeps (up to 16 KiB): room for a burst
/// of small frames (32 answers of a few bytes each, or 32 unary gRPC
/// calls' frames), so a connection that goes idle between such bursts
/// does not grow its buffer again, reallocation by reallocation, for each
/// one. A larger one, grown by a large body (a 16 KiB body is copied in
/// with its frame's head), is let go of.
pub const IDLE_OUT_KEPT: usize = 16 * 1024;

/// Lets go of an idle connection's write buffer once it is written out, if
/// its allocation is past [`IDLE_OUT_KEPT`]. A burst grows it up to where
/// the connection stops reading ([`OUT_HIGH`]), and it kept that size for
/// the connection's life.
///
/// Its whole allocation counts, not `capacity()`: written out, the
/// buffer's start has moved to its end, and only the tail counts there
/// (`try_reclaim` tells the allocation).
pub fn shed_written(out: &mut BytesMut) {
    if out.is_empty() && out.try_reclaim(IDLE_OUT_KEPT + 1) {
        *out = BytesMut::new();
    }
}

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
