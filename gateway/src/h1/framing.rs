//! Body framing: how many bytes of a connection belong to one message.
//!
//! Requests: a [`BodyDecoder`] takes body frames off the front of the
//! connection's read buffer, each a slice of that buffer (no copy), and
//! leaves whatever follows the body (a pipelined request) in place.
//! Chunked decoding is strict, since a backend reading the same bytes
//! another way is how smuggling works: a size line is hex digits (at most
//! 16: no overflow), an optional extension, then CRLF (a bare LF is
//! refused); chunk data ends in CRLF; the trailer section ends in an empty
//! line. Size lines and trailers are bounded, so a client cannot make the
//! decoder buffer without end ([`MAX_SIZE_LINE`], [`MAX_TRAILERS`]).
//!
//! Responses of unknown length are sent chunked: [`chunk_size_line`],
//! [`CHUNK_END`] and [`last_chunk`].

use bytes::{Bytes, BytesMut};
use http::HeaderMap;
use http::header::{self, HeaderName, HeaderValue};

/// Longest chunk size line, extensions included. hyper allows 16 KiB of
/// extensions over a whole body; one line of 4 KiB is far above any real
/// use (extensions are all but unused) and bounds what is buffered.
pub const MAX_SIZE_LINE: usize = 4096;
/// Largest trailer section (all fields and the empty line).
pub const MAX_TRAILERS: usize = 16 * 1024;
/// Most trailer fields.
const MAX_TRAILER_FIELDS: usize = 64;

/// How a message body is framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFraming {
    /// No body.
    Empty,
    /// Exactly this many bytes (more than zero).
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
}

/// What a decoder took off the buffer.
#[derive(Debug, PartialEq, Eq)]
pub enum Frame {
    /// Body bytes.
    Data(Bytes),
    /// The chunked body's trailer fields (only when there are some).
    Trailers(HeaderMap),
    /// The body is complete.
    End,
}

/// Why a body's framing was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FramingError {
    /// A chunk size line that is not hex digits, an optional extension and CRLF.
    #[error("invalid chunk size line: {0}")]
    SizeLine(&'static str),
    /// A chunk size line over [`MAX_SIZE_LINE`].
    #[error("chunk size line longer than {MAX_SIZE_LINE} bytes")]
    SizeLineTooLong,
    /// Chunk data not followed by CRLF.
    #[error("chunk data not followed by CRLF")]
    ChunkEnd,
    /// A trailer section that is malformed or over [`MAX_TRAILERS`].
    #[error("invalid trailer section: {0}")]
    Trailers(&'static str),
}

/// Takes one request body's frames off a read buffer.
#[derive(Debug)]
pub enum BodyDecoder {
    /// This many bytes left.
    Length(u64),
    /// A chunked body.
    Chunked(ChunkedDecoder),
    /// Complete.
    Done,
}

impl BodyDecoder {
    /// The decoder for a body framed as `framing`.
    pub fn new(framing: BodyFraming) -> BodyDecoder {
        match framing {
            BodyFraming::Empty | BodyFraming::Length(0) => BodyDecoder::Done,
            BodyFraming::Length(n) => BodyDecoder::Length(n),
            BodyFraming::Chunked => BodyDecoder::Chunked(ChunkedDecoder::default()),
        }
    }

    /// The next frame from the front of `buf`; `Ok(None)`: read more.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Frame>, FramingError> {
        match self {
            BodyDecoder::Done => Ok(Some(Frame::End)),
            BodyDecoder::Length(left) => {
                if buf.is_empty() {
                    return Ok(None);
                }
                let n = usize::try_from(*left).unwrap_or(usize::MAX).min(buf.len());
                *left -= n as u64;
                if *left == 0 {
                    *self = BodyDecoder::Done;
                }
                Ok(Some(Frame::Data(buf.split_to(n).freeze())))
            }
            BodyDecoder::Chunked(c) => {
                let frame = c.decode(buf)?;
                if c.state == Chunk::Done {
                    *self = BodyDecoder::Done;
                }
                Ok(frame)
            }
        }
    }

    /// The whole body has been taken.
    pub fn is_done(&self) -> bool {
        matches!(self, BodyDecoder::Done)
    }

    /// How many more bytes the body is known to hold from here: what is
    /// left of a length, or of the chunk being read (with its CRLF); 0 when
    /// unknown (a chunk's size line is next) or done. Lets the reader size
    /// its reads to the body rather than to a request head.
    pub fn known_ahead(&self) -> u64 {
        match self {
            BodyDecoder::Length(left) => *left,
            BodyDecoder::Chunked(ChunkedDecoder {
                state: Chunk::Data(n),
            }) => n.saturating_add(2),
            _ => 0,
        }
    }
}

/// Where a chunked decoder is in the body.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    /// Expecting a size line.
    #[default]
    Size,
    /// Inside chunk data, this many bytes left.
    Data(u64),
    /// After chunk data: expecting CRLF.
    DataEnd,
    /// After the last chunk: expecting trailers or the empty line.
    Trailers,
    /// Complete.
    Done,
}

/// A strict `Transfer-Encoding: chunked` decoder.
#[derive(Debug, Default)]
pub struct ChunkedDecoder {
    state: Chunk,
}

impl ChunkedDecoder {
    /// The next frame from the front of `buf`; `Ok(None)`: read more.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Frame>, FramingError> {
        loop {
            match self.state {
                Chunk::Size => match size_line(buf)? {
                    None => return Ok(None),
                    Some(0) => self.state = Chunk::Trailers,
                    Some(n) => self.state = Chunk::Data(n),
                },
                Chunk::Data(left) => {
                    if buf.is_empty() {
                        return Ok(None);
                    }
                    let n = usize::try_from(left).unwrap_or(usize::MAX).min(buf.len());
                    let rest = left - n as u64;
                    self.state = if rest == 0 {
                        Chunk::DataEnd
                    } else {
                        Chunk::Data(rest)
                    };
                    return Ok(Some(Frame::Data(buf.split_to(n).freeze())));
                }
                Chunk::DataEnd => {
                    if buf.len() < 2 {
                        // A wrong first byte is wrong however many follow.
                        if buf.first().is_some_and(|&b| b != b'\r') {
                            return Err(FramingError::ChunkEnd);
                        }
                        return Ok(None);
                    }
                    if &buf[..2] != b"\r\n" {
                        return Err(FramingError::ChunkEnd);
                    }
                    let _ = buf.split_to(2);
                    self.state = Chunk::Size;
                }
                Chunk::Trailers => {
                    let Some(trailers) = trailers(buf)? else {
                        return Ok(None);
                    };
                    self.state = Chunk::Done;
                    if trailers.is_empty() {
                        return Ok(Some(Frame::End));
                    }
                    return Ok(Some(Frame::Trailers(trailers)));
                }
                Chunk::Done => return Ok(Some(Frame::End)),
            }
        }
    }
}

/// Takes a size line off `buf` and returns the chunk size.
fn size_line(buf: &mut BytesMut) -> Result<Option<u64>, FramingError> {
    let window = &buf[..buf.len().min(MAX_SIZE_LINE)];
    let Some(lf) = window.iter().position(|&b| b == b'\n') else {
        if buf.len() >= MAX_SIZE_LINE {
            return Err(FramingError::SizeLineTooLong);
        }
        // Refuse what can never become a size line as soon as it is seen.
        check_line(window.strip_suffix(b"\r").unwrap_or(window), false)?;
        return Ok(None);
    };
    let Some(line) = window[..lf].strip_suffix(b"\r") else {
        return Err(FramingError::SizeLine("bare LF"));
    };
    let size = check_line(line, true)?;
    let _ = buf.split_to(lf + 1);
    Ok(Some(size))
}

/// Checks `line` (a whole size line without its CRLF when `whole`, else
/// its start so far) and returns its size.
fn check_line(line: &[u8], whole: bool) -> Result<u64, FramingError> {
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    if digits > 16 {
        return Err(FramingError::SizeLine("chunk size overflows"));
    }
    let rest = &line[digits..];
    if digits == 0 && (whole || !rest.is_empty()) {
        return Err(FramingError::SizeLine("no hex chunk size"));
    }
    // Optional whitespace, then `;` and an extension, or the end.
    let ws = rest
        .iter()
        .take_while(|&&b| b == b' ' || b == b'\t')
        .count();
    match rest.get(ws) {
        None if whole && ws > 0 => return Err(FramingError::SizeLine("trailing whitespace")),
        None => {}
        Some(b';')
            if rest[ws..]
                .iter()
                .any(|&b| (b < 0x20 && b != b'\t') || b == 0x7f) =>
        {
            return Err(FramingError::SizeLine("control character in extension"));
        }
        Some(b';') => {}
        Some(_) => return Err(FramingError::SizeLine("not a hex digit")),
    }
    let hex = std::str::from_utf8(&line[..digits]).unwrap_or("0");
    Ok(u64::from_str_radix(hex, 16).unwrap_or(0))
}

/// Takes the trailer section off `buf`: its fields, minus those that
/// frame or route a message (a trailer must not change either).
fn trailers(buf: &mut BytesMut) -> Result<Option<HeaderMap>, FramingError> {
    if buf.len() < 2 {
        if buf.first().is_some_and(|&b| b == b'\n') {
            return Err(FramingError::Trailers("bare LF"));
        }
        return Ok(None);
    }
    if buf.starts_with(b"\r\n") {
        let _ = buf.split_to(2);
        return Ok(Some(HeaderMap::new()));
    }
    let mut slots = [httparse::EMPTY_HEADER; MAX_TRAILER_FIELDS];
    let window = &buf[..buf.len().min(MAX_TRAILERS)];
    let (len, fields) = match httparse::parse_headers(window, &mut slots) {
        Ok(httparse::Status::Complete(found)) => found,
        Ok(httparse::Status::Partial) if buf.len() >= MAX_TRAILERS => {
            return Err(FramingError::Trailers("too large"));
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(FramingError::Trailers("too many")),
        Err(_) => return Err(FramingError::Trailers("malformed field")),
    };
    if bare_lf(&window[..len]) {
        return Err(FramingError::Trailers("bare LF"));
    }
    let mut map = HeaderMap::new();
    for f in fields.iter() {
        let name = HeaderName::from_bytes(f.name.as_bytes())
            .map_err(|_| FramingError::Trailers("invalid name"))?;
        if forbidden_trailer(&name) {
            continue;
        }
        let value = HeaderValue::from_bytes(f.value)
            .map_err(|_| FramingError::Trailers("invalid value"))?;
        map.append(name, value);
    }
    let _ = buf.split_to(len);
    Ok(Some(map))
}

fn bare_lf(bytes: &[u8]) -> bool {
    bytes
        .iter()
        .enumerate()
        .any(|(i, &b)| b == b'\n' && (i == 0 || bytes[i - 1] != b'\r'))
}

fn forbidden_trailer(name: &HeaderName) -> bool {
    [
        header::CONTENT_LENGTH,
        header::TRANSFER_ENCODING,
        header::HOST,
        header::CONNECTION,
        header::TE,
        header::TRAILER,
        header::CONTENT_TYPE,
        header::CONTENT_ENCODING,
    ]
    .contains(name)
}

/// The end of a chunk's data.
pub const CHUNK_END: &[u8] = b"\r\n";

/// A chunk's size line, for `len` bytes of data (more than zero: a zero
/// size is the last chunk).
pub fn chunk_size_line(len: usize) -> ChunkSizeLine {
    debug_assert!(len > 0, "a zero-size chunk ends the body");
    let mut line = ChunkSizeLine {
        bytes: [0; 18],
        len: 0,
    };
    let digits = (usize::BITS - len.leading_zeros()).div_ceil(4) as usize;
    for i in 0..digits {
        let nibble = (len >> (4 * (digits - 1 - i))) & 0xf;
        line.bytes[i] = b"0123456789abcdef"[nibble];
    }
    line.bytes[digits..digits + 2].copy_from_slice(b"\r\n");
    line.len = digits + 2;
    line
}

/// A chunk size line on the stack (no allocation per chunk).
#[derive(Debug, Clone, Copy)]
pub struct ChunkSizeLine {
    bytes: [u8; 18],
    len: usize,
}

impl AsRef<[u8]> for ChunkSizeLine {
    fn as_ref(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}

/// The last chunk and the trailer section that ends a chunked body.
pub fn last_chunk(trailers: Option<&HeaderMap>) -> Bytes {
    let Some(trailers) = trailers.filter(|t| !t.is_empty()) else {
        return Bytes::from_static(b"0\r\n\r\n");
    };
    let mut out = BytesMut::from(&b"0\r\n"[..]);
    for (name, value) in trailers {
        if forbidden_trailer(name) {
            continue;
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_is_known_to_come_follows_the_framing() {
        let mut d = BodyDecoder::new(BodyFraming::Length(100_000));
        assert_eq!(d.known_ahead(), 100_000);
        let mut buf = BytesMut::from(&[b'x'; 40_000][..]);
        assert!(matches!(d.decode(&mut buf), Ok(Some(Frame::Data(_)))));
        assert_eq!(d.known_ahead(), 60_000);

        let mut d = BodyDecoder::new(BodyFraming::Chunked);
        assert_eq!(d.known_ahead(), 0, "the size line is next");
        let mut buf = BytesMut::from(&b"10000\r\nabc"[..]);
        assert!(matches!(d.decode(&mut buf), Ok(Some(Frame::Data(_)))));
        assert_eq!(
            d.known_ahead(),
            0x10000 - 3 + 2,
            "the chunk's rest and its CRLF"
        );

        assert_eq!(BodyDecoder::new(BodyFraming::Empty).known_ahead(), 0);
    }

    /// Decodes all of `input` fed in pieces of `step` bytes.
    fn decode(
        input: &[u8],
        step: usize,
    ) -> Result<(Vec<u8>, Option<HeaderMap>, usize), FramingError> {
        let mut d = BodyDecoder::new(BodyFraming::Chunked);
        let mut buf = BytesMut::new();
        let (mut body, mut trailers) = (Vec::new(), None);
        let mut fed = 0;
        loop {
            match d.decode(&mut buf)? {
                Some(Frame::Data(b)) => body.extend_from_slice(&b),
                Some(Frame::Trailers(t)) => trailers = Some(t),
                Some(Frame::End) => return Ok((body, trailers, buf.len() + input.len() - fed)),
                None if fed == input.len() => panic!("decoder wants more after all input"),
                None => {
                    let end = (fed + step).min(input.len());
                    buf.extend_from_slice(&input[fed..end]);
                    fed = end;
                }
            }
        }
    }

    #[test]
    fn chunked_bodies_decode_the_same_in_any_pieces() {
        let input = b"5\r\nhello\r\nA;name=v\r\n0123456789\r\n0\r\nX-Sum: 1\r\n\r\nNEXT";
        for step in [1, 2, 3, 7, input.len()] {
            let (body, trailers, left) = decode(input, step).unwrap();
            assert_eq!(body, b"hello0123456789", "step {step}");
            assert_eq!(trailers.unwrap()["x-sum"], "1");
            assert_eq!(left, 4, "the pipelined bytes stay");
        }
    }

    #[test]
    fn a_length_body_takes_exactly_its_bytes() {
        let mut d = BodyDecoder::new(BodyFraming::Length(3));
        let mut buf = BytesMut::from("abcdef");
        assert_eq!(
            d.decode(&mut buf).unwrap(),
            Some(Frame::Data(Bytes::from("abc")))
        );
        assert!(d.is_done());
        assert_eq!(d.decode(&mut buf).unwrap(), Some(Frame::End));
        assert_eq!(&buf[..], b"def");
    }

    #[test]
    fn bad_chunks_are_refused() {
        for bad in [
            &b"zz\r\nbroken\r\n"[..],
            b"5\nhello\r\n0\r\n\r\n",
            b"5\r\nhelloX\r\n0\r\n\r\n",
            b"5\r\nhello\n0\r\n\r\n",
            b"10000000000000000\r\n",
            b"-5\r\nhello\r\n",
            b"+5\r\nhello\r\n",
            b"0x5\r\nhello\r\n",
            b" 5\r\nhello\r\n",
            b"5 \r\nhello\r\n0\r\n\r\n",
            b"5;a\x00b\r\nhello\r\n",
            b"\r\n",
            b"0\r\nX-A: 1\n\r\n",
            b"0\r\n folded\r\n\r\n",
            b"0\n\n",
        ] {
            for step in [1, bad.len()] {
                assert!(
                    decode(bad, step).is_err(),
                    "{:?} in steps of {step}",
                    String::from_utf8_lossy(bad)
                );
            }
        }
    }

    #[test]
    fn size_lines_and_trailers_are_bounded() {
        let long = format!("5;{}\r\n", "e".repeat(MAX_SIZE_LINE));
        assert_eq!(
            decode(long.as_bytes(), 100).unwrap_err(),
            FramingError::SizeLineTooLong
        );
        let big = format!("0\r\nX: {}\r\n\r\n", "v".repeat(MAX_TRAILERS));
        assert_eq!(
            decode(big.as_bytes(), 1000).unwrap_err(),
            FramingError::Trailers("too large")
        );
    }

    #[test]
    fn framing_trailers_are_dropped() {
        let (_, trailers, _) = decode(b"0\r\nContent-Length: 9\r\nX: y\r\n\r\n", 4).unwrap();
        let t = trailers.unwrap();
        assert!(!t.contains_key("content-length"));
        assert_eq!(t["x"], "y");
    }

    #[test]
    fn encoding_round_trips() {
        let mut wire = Vec::new();
        for piece in [&b"a"[..], &[7u8; 0x1f3][..], &[1u8; 16][..]] {
            wire.extend_from_slice(chunk_size_line(piece.len()).as_ref());
            wire.extend_from_slice(piece);
            wire.extend_from_slice(CHUNK_END);
        }
        let mut t = HeaderMap::new();
        t.insert("grpc-status", HeaderValue::from_static("0"));
        wire.extend_from_slice(&last_chunk(Some(&t)));
        let (body, trailers, _) = decode(&wire, 5).unwrap();
        assert_eq!(body.len(), 1 + 0x1f3 + 16);
        assert_eq!(trailers.unwrap(), t);
        assert_eq!(chunk_size_line(0x1f3).as_ref(), b"1f3\r\n");
        assert_eq!(chunk_size_line(usize::MAX).as_ref().len(), 16 + 2);
        assert_eq!(&last_chunk(None)[..], b"0\r\n\r\n");
    }
}
