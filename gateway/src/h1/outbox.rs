//! What a connection has to write, in order, without copying large body
//! frames.
//!
//! Heads, chunk size lines and small frames are gathered in one buffer
//! (one write for a head and a small body). A data frame larger than
//! [`COPY_LIMIT`] stays where it is (a slice of the upstream's read
//! buffer) and is written from there with the bytes around it in one
//! vectored write: copying a 16 KiB response's frames into the gathered
//! buffer was a quarter of its user-space instructions (callgrind).

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::AsyncWrite;

use crate::buffers;

/// Data frames up to this size are copied next to their framing and sent
/// in one write; larger ones are written from where they are (here, and
/// for request bodies in the upstream client).
pub const COPY_LIMIT: usize = 2048;
/// Pieces written in one vectored write at most.
const MAX_SLICES: usize = 16;

/// Bytes to write: `held` first (frozen runs of gathered bytes and large
/// frames, in order), then `gathered`.
#[derive(Debug, Default)]
pub struct Outbox {
    held: VecDeque<Bytes>,
    gathered: BytesMut,
}

impl Outbox {
    /// The buffer small pieces are appended to: they go out after every
    /// frame put before them. Taken from the pool when there is none.
    pub fn gather(&mut self) -> &mut BytesMut {
        if self.gathered.capacity() == 0 {
            self.gathered = buffers::take();
        }
        &mut self.gathered
    }

    /// Appends a data frame: copied when small, held as it is when large.
    pub fn data(&mut self, data: Bytes) {
        if data.len() <= COPY_LIMIT {
            self.gather().extend_from_slice(&data);
            return;
        }
        if !self.gathered.is_empty() {
            self.held.push_back(self.gathered.split().freeze());
        }
        self.held.push_back(data);
    }

    /// Bytes not written yet.
    pub fn len(&self) -> usize {
        // Asked on every frame: the usual case (nothing held) costs no walk.
        if self.held.is_empty() {
            return self.gathered.len();
        }
        self.held.iter().map(Bytes::len).sum::<usize>() + self.gathered.len()
    }

    /// Nothing left to write.
    pub fn is_empty(&self) -> bool {
        self.held.is_empty() && self.gathered.is_empty()
    }

    /// Writes everything (then flushes).
    pub fn poll_write<W: AsyncWrite + Unpin>(
        &mut self,
        io: &mut W,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<()>> {
        while !self.is_empty() {
            let n = if self.held.is_empty() {
                ready!(Pin::new(&mut *io).poll_write(cx, &self.gathered))?
            } else {
                let mut slices = [IoSlice::new(&[]); MAX_SLICES];
                let pieces = self.held.iter().map(|b| &b[..]);
                let pieces = pieces.chain(std::iter::once(&self.gathered[..]));
                let mut used = 0;
                for (slot, piece) in slices.iter_mut().zip(pieces) {
                    *slot = IoSlice::new(piece);
                    used += 1;
                }
                ready!(Pin::new(&mut *io).poll_write_vectored(cx, &slices[..used]))?
            };
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.advance(n);
        }
        Pin::new(io).poll_flush(cx)
    }

    /// Drops the first `n` bytes, held pieces first.
    fn advance(&mut self, mut n: usize) {
        while let Some(front) = self.held.front_mut() {
            if n < front.len() {
                front.advance(n);
                return;
            }
            n -= front.len();
            self.held.pop_front();
        }
        self.gathered.advance(n);
    }

    /// Everything not written yet, in order.
    #[cfg(test)]
    pub fn to_vec(&self) -> Vec<u8> {
        let mut all: Vec<u8> = self.held.iter().flat_map(|b| b.iter().copied()).collect();
        all.extend_from_slice(&self.gathered);
        all
    }

    /// Gives the gathered buffer back to the pool when all is written
    /// (between requests: an idle connection holds no buffer).
    pub fn rest(&mut self) {
        buffers::give(&mut self.gathered);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A writer taking at most `step` bytes a write, recording them.
    struct Trickle {
        step: usize,
        got: Vec<u8>,
        writes: usize,
    }

    impl AsyncWrite for Trickle {
        fn poll_write(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            self.poll_write_vectored(cx, &[IoSlice::new(buf)])
        }

        fn poll_write_vectored(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            bufs: &[IoSlice<'_>],
        ) -> Poll<io::Result<usize>> {
            let this = self.get_mut();
            this.writes += 1;
            let mut left = this.step;
            for b in bufs {
                let take = left.min(b.len());
                this.got.extend_from_slice(&b[..take]);
                left -= take;
            }
            Poll::Ready(Ok(this.step - left))
        }

        fn is_write_vectored(&self) -> bool {
            true
        }

        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }

        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    fn large(byte: u8) -> Bytes {
        Bytes::from(vec![byte; COPY_LIMIT + 1])
    }

    #[test]
    fn pieces_go_out_in_the_order_they_were_put_in_any_write_sizes() {
        for step in [1, 7, 100, COPY_LIMIT, 1 << 20] {
            let mut out = Outbox::default();
            out.gather().extend_from_slice(b"head;");
            out.data(large(b'a'));
            out.gather().extend_from_slice(b"mid;");
            out.data(Bytes::from_static(b"small;"));
            out.data(large(b'b'));
            out.data(large(b'c'));
            out.gather().extend_from_slice(b"end");
            let mut want = b"head;".to_vec();
            want.extend_from_slice(&large(b'a'));
            want.extend_from_slice(b"mid;small;");
            want.extend_from_slice(&large(b'b'));
            want.extend_from_slice(&large(b'c'));
            want.extend_from_slice(b"end");
            assert_eq!(out.len(), want.len());
            let mut io = Trickle {
                step,
                got: Vec::new(),
                writes: 0,
            };
            let mut cx = Context::from_waker(std::task::Waker::noop());
            assert!(out.poll_write(&mut io, &mut cx).is_ready());
            assert_eq!(io.got, want, "write size {step}");
            assert!(out.is_empty());
            if step == 1 << 20 {
                assert_eq!(
                    io.writes, 1,
                    "one vectored write when the socket takes it all"
                );
            }
        }
    }

    #[test]
    fn small_frames_are_copied_and_the_buffer_pooled_again() {
        let mut out = Outbox::default();
        out.data(Bytes::from_static(b"abc"));
        assert!(out.held.is_empty(), "a small frame is copied");
        out.data(large(b'x'));
        assert_eq!(
            out.held.len(),
            2,
            "the gathered run, then the frame as it is"
        );
        let mut io = Trickle {
            step: usize::MAX,
            got: Vec::new(),
            writes: 0,
        };
        let mut cx = Context::from_waker(std::task::Waker::noop());
        assert!(out.poll_write(&mut io, &mut cx).is_ready());
        out.rest();
        assert_eq!(out.gathered.capacity(), 0, "given back to the pool");
    }
}
