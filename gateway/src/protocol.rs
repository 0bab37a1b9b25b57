//! Which protocol a new connection speaks, told from its first bytes.
//!
//! HTTP/1.1 and h2c (prior knowledge) share the listener. [`detect`] reads
//! the connection's first bytes once (usually the whole first request) and
//! decides: the HTTP/2 preface means h2c; a request line naming HTTP/1.0 or
//! HTTP/1.1 means HTTP/1; a request line naming any other version
//! (`HTTP/1.2`, `HTTP/2.0` without the preface, `HTTP/0.9`) is answered
//! `505 HTTP Version Not Supported` here, since hyper would call it a
//! malformed request (400). Anything else goes to hyper's HTTP/1 parser,
//! which answers what is malformed.
//!
//! The bytes read are handed on, so the request is parsed from them without
//! another read: one `read` per new connection where a detect-then-parse
//! design makes two. The native HTTP/1 server goes on reading into the same
//! buffer; hyper reads them first through [`Rewind`].

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};

/// What a connection speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// HTTP/1.0 or HTTP/1.1 (or something hyper will refuse as malformed).
    Http1,
    /// HTTP/2 with prior knowledge.
    H2c,
    /// An HTTP version Portico does not speak: answered 505.
    Unsupported,
}

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// Read this much at most before deciding: a request line longer than this
/// is left to the HTTP/1 server to judge (its own limits apply).
const FIRST_READ: usize = 4096;

/// The response to a request in an HTTP version Portico does not speak.
pub const VERSION_NOT_SUPPORTED: &[u8] = b"HTTP/1.1 505 HTTP Version Not Supported\r\n\
content-type: application/json\r\n\
x-portico-error: http_version_not_supported\r\n\
connection: close\r\n\
content-length: 97\r\n\r\n\
{\"error\":\"this gateway speaks HTTP/1.0, HTTP/1.1 and HTTP/2\",\"code\":\"http_version_not_supported\"}";

/// Reads the first bytes of `io` into `buf` and decides what it speaks;
/// returns the buffer, whose bytes are to be replayed. `None`: the peer
/// closed without a request. (The caller's buffer: the native HTTP/1 server
/// takes a pooled one and goes on using it.)
pub async fn detect<T: AsyncRead + Unpin>(
    io: &mut T,
    mut buf: BytesMut,
) -> io::Result<Option<(Protocol, BytesMut)>> {
    loop {
        if io.read_buf(&mut buf).await? == 0 {
            return Ok(None);
        }
        let decided = match decide(&buf) {
            Some(p) => p,
            None if buf.len() >= FIRST_READ => Protocol::Http1,
            None => continue,
        };
        return Ok(Some((decided, buf)));
    }
}

/// Decides from `bytes`, or `None` when more are needed.
pub fn decide(bytes: &[u8]) -> Option<Protocol> {
    let n = bytes.len().min(PREFACE.len());
    if bytes[..n] == PREFACE[..n] {
        return (bytes.len() >= PREFACE.len()).then_some(Protocol::H2c);
    }
    // Servers ignore empty lines before a request line (RFC 9112 §2.2).
    let start = bytes
        .iter()
        .position(|&b| b != b'\r' && b != b'\n')
        .unwrap_or(bytes.len());
    let rest = &bytes[start..];
    let end = rest.iter().position(|&b| b == b'\n')?;
    let line = rest[..end].strip_suffix(b"\r").unwrap_or(&rest[..end]);
    let version = line.rsplit(|&b| b == b' ').next().unwrap_or_default();
    Some(match version {
        b"HTTP/1.1" | b"HTTP/1.0" => Protocol::Http1,
        v if names_a_version(v) => Protocol::Unsupported,
        _ => Protocol::Http1,
    })
}

/// `HTTP/` then a digit, optionally `.` and a digit.
fn names_a_version(v: &[u8]) -> bool {
    match v.strip_prefix(b"HTTP/") {
        Some([major]) => major.is_ascii_digit(),
        Some([major, b'.', minor]) => major.is_ascii_digit() && minor.is_ascii_digit(),
        _ => false,
    }
}

/// I/O that yields `prefix` before reading from `inner`.
#[derive(Debug)]
pub struct Rewind<T> {
    prefix: Bytes,
    inner: T,
}

impl<T> Rewind<T> {
    /// Replays `prefix`, then reads `inner`.
    pub fn new(prefix: Bytes, inner: T) -> Rewind<T> {
        Rewind { prefix, inner }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Rewind<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            if self.prefix.is_empty() {
                // Give the buffer back now rather than at the connection's end.
                self.prefix = Bytes::new();
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Rewind<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_told_apart() {
        for (bytes, want) in [
            (
                &b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"[..],
                Some(Protocol::Http1),
            ),
            (b"GET / HTTP/1.0\r\n", Some(Protocol::Http1)),
            (b"\r\nGET / HTTP/1.1\r\n", Some(Protocol::Http1)),
            (b"GET / HTTP/1.2\r\n", Some(Protocol::Unsupported)),
            (b"GET / HTTP/2.0\r\n", Some(Protocol::Unsupported)),
            (b"GET / HTTP/3\r\n", Some(Protocol::Unsupported)),
            (b"GET / HTTP/0.9\n", Some(Protocol::Unsupported)),
            (b"GET / FTP/1.1\r\n", Some(Protocol::Http1)),
            (b"GET / HTTP/1.1", None),
            (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", Some(Protocol::H2c)),
            (b"PRI * HTTP/2", None),
        ] {
            assert_eq!(decide(bytes), want, "{:?}", String::from_utf8_lossy(bytes));
        }
    }

    #[test]
    fn the_505_answer_has_the_length_it_declares() {
        let text = std::str::from_utf8(VERSION_NOT_SUPPORTED).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(
            head.contains(&format!("content-length: {}", body.len())),
            "{}",
            body.len()
        );
        serde_json::from_str::<serde_json::Value>(body).unwrap();
    }

    #[tokio::test]
    async fn rewind_replays_then_reads() {
        let (mut a, b) = tokio::io::duplex(64);
        tokio::io::AsyncWriteExt::write_all(&mut a, b" world")
            .await
            .unwrap();
        drop(a);
        let mut r = Rewind::new(Bytes::from_static(b"hello"), b);
        let mut out = String::new();
        r.read_to_string(&mut out).await.unwrap();
        assert_eq!(out, "hello world");
    }
}
