//! An upstream response's header fields relayed as they arrived.
//!
//! Building a header map for each upstream response, and writing each of
//! its fields out again one by one, was the largest cost of a response
//! that nothing reads on its way (about 2,000 of a small GET's 30,000
//! instructions, callgrind: a name hashed and a value sliced per field).
//! For such a response the native client instead leaves the head's field
//! lines where they were read ([`plan`]), and the native server writes them
//! in one copy ([`Relayed`]).
//!
//! Only a head the map path would pass on unchanged but for its
//! hop-by-hop fields is relayed: HTTP/1.1, a status with a body, one
//! `Content-Length` (no leading zero) and no `Transfer-Encoding`, every
//! line ending in exactly CRLF (no bare LF, no trailing whitespace), no
//! `Proxy-*` field, and of the fields the gateway handles itself only
//! `Connection` (listing nothing but `close` and `keep-alive`),
//! `Keep-Alive` and `X-Request-Id`, whose lines are cut out. Any other head gets its map, as before. The caller asks for a
//! relay only when nothing on the way reads the response's fields (no
//! filters, no gRPC, no HSTS policy to add, an HTTP/1.1 client).

use bytes::{Buf, Bytes, BytesMut};
use http::HeaderMap;
use http::header::HeaderValue;

use super::head::{self, MAX_HEADERS, Span, Spans, range};

/// Where a relayed head lies at the front of a response body's buffer:
/// its length, where its field lines start, and whether they hold a
/// `Date`. Four bytes, so a response body keeps its size (it fits in its
/// padding, beside three flags).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Held {
    /// The head's length, final CRLF included; 0: nothing held.
    len: u16,
    /// Where its (kept) field lines start: past the status line. A status
    /// line of 256 bytes or more (a long reason phrase) is not relayed.
    fields_at: u8,
    dated: bool,
}

impl Held {
    /// Nothing held (the head's fields are in its map).
    pub fn is_empty(self) -> bool {
        self.len == 0
    }

    /// The head's length at the front of the buffer.
    pub fn len(self) -> usize {
        usize::from(self.len)
    }

    /// The fields, once the head (`bytes`, exactly [`Held::len`] long) is
    /// taken off the buffer.
    pub fn relayed(self, bytes: &Bytes) -> Relayed {
        let end = bytes.len() - 2;
        Relayed {
            lines: bytes.slice(usize::from(self.fields_at)..end),
            dated: self.dated,
        }
    }
}

/// A response's header fields as the upstream sent them, to be written as
/// they are: whole lines, each ending in CRLF, `Content-Length` among them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relayed {
    lines: Bytes,
    dated: bool,
}

impl Relayed {
    /// The field lines, each ending in CRLF.
    pub fn lines(&self) -> &[u8] {
        &self.lines
    }

    /// A `Date` is among them.
    pub fn dated(&self) -> bool {
        self.dated
    }

    /// Appended to `headers`, for a server that writes only the map
    /// (hyper's). The lines passed `httparse` when they arrived; a field
    /// the map would not take (none that `httparse` accepts) is left out.
    pub fn into_map(self, headers: &mut HeaderMap) {
        let mut block = BytesMut::with_capacity(self.lines.len() + 2);
        block.extend_from_slice(&self.lines);
        block.extend_from_slice(b"\r\n");
        let block = block.freeze();
        let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let Ok(httparse::Status::Complete((_, fields))) =
            httparse::parse_headers(&block, &mut slots)
        else {
            return;
        };
        for field in fields.iter() {
            let (Ok(name), Ok(value)) = (
                http::HeaderName::from_bytes(field.name.as_bytes()),
                HeaderValue::from_maybe_shared(block.slice_ref(field.value)),
            ) else {
                continue;
            };
            headers.append(name, value);
        }
    }
}

/// What a head that is relayed says of its body and its connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Plan {
    pub(super) held: Held,
    /// Its `Content-Length`.
    pub(super) length: u64,
    /// The upstream keeps the connection open (no `Connection: close`).
    pub(super) keep_alive: bool,
}

/// Whether the head of `len` bytes at the front of `buf` (`fields`: its
/// field positions) can be relayed; if so, the lines the gateway writes
/// itself are cut out of it in place, and the head stays in `buf`; if
/// not, `buf` is as it was (the map path parses it next).
/// `minor`: its HTTP/1.x minor version; `bodyless`: the status or the
/// request's method says there is no body.
pub(super) fn plan(
    buf: &mut BytesMut,
    len: usize,
    (minor, bodyless): (u8, bool),
    fields: &Spans,
) -> Option<Plan> {
    if minor != 1 || bodyless || fields.is_empty() {
        return None;
    }
    let mut length = None;
    let mut keep_alive = true;
    let mut dated = false;
    // Lines cut out, as (start, end) of each, in order; at most one each of
    // the three names that are cut (more: the map path).
    let mut cuts: [Span; 3] = [(0, 0); 3];
    let mut n_cuts = 0;
    for (i, &(name, value)) in fields.iter().enumerate() {
        // The line ends in exactly CRLF, and the next starts right after.
        let next = match fields.get(i + 1) {
            Some(&(next, _)) => next.0 as usize,
            None => len - 2,
        };
        if buf.get(value.1 as usize..next) != Some(b"\r\n") {
            return None;
        }
        let line = (name.0, next as u32);
        match classify(&buf[range(name)]) {
            Field::Other => {}
            Field::Date => dated = true,
            Field::ContentLength => {
                if length.is_some() {
                    return None;
                }
                let digits = &buf[range(value)];
                // Written as it is, so only as the map path would write it:
                // no leading zero.
                if digits.len() > 1 && digits[0] == b'0' {
                    return None;
                }
                length = Some(head::parse_length(digits).ok()?);
            }
            Field::Connection => {
                if !only_close_or_keep_alive(&buf[range(value)]) {
                    return None;
                }
                keep_alive &= !head::lists_bytes(&buf[range(value)], "close");
                *cuts.get_mut(n_cuts)? = line;
                n_cuts += 1;
            }
            Field::Cut => {
                *cuts.get_mut(n_cuts)? = line;
                n_cuts += 1;
            }
            Field::Refused => return None,
        }
    }
    if buf.get(len - 4..len - 2) != Some(b"\r\n") {
        return None;
    }
    let length = length?;
    // Checked before anything is cut: past here, the buffer changes.
    let fields_at = u8::try_from(fields[0].0.0).ok()?;
    if len > usize::from(u16::MAX) {
        return None;
    }
    let kept_end = cut(buf, len, &cuts[..n_cuts]);
    Some(Plan {
        held: Held {
            // No longer than the head, which fits.
            len: kept_end as u16,
            fields_at,
            dated,
        },
        length,
        keep_alive,
    })
}

/// Closes up the `cuts` (lines, in order) of the head of `len` bytes at
/// the front of `buf`; the head's new length. What comes before each cut
/// moves forward, towards the body, and the buffer's start then moves past
/// the bytes left free: the head's lines before its last cut are a few
/// hundred bytes, where the body's start behind them can be most of a
/// 32 KiB read (moving the body back was a `memmove` of a 16 KiB
/// response's whole body).
fn cut(buf: &mut BytesMut, len: usize, cuts: &[Span]) -> usize {
    let Some(&(_, last_end)) = cuts.last() else {
        return len;
    };
    let mut to = last_end as usize;
    for (i, &(start, _)) in cuts.iter().enumerate().rev() {
        let from = if i == 0 { 0 } else { cuts[i - 1].1 as usize };
        let kept = start as usize - from;
        buf.copy_within(from..from + kept, to - kept);
        to -= kept;
    }
    buf.advance(to);
    len - to
}

/// What the relay makes of a field, by its name.
enum Field {
    Other,
    Date,
    ContentLength,
    /// Its value decides whether the line is cut.
    Connection,
    /// Cut: `Keep-Alive` (hop-by-hop) and `X-Request-Id` (the gateway
    /// writes its own).
    Cut,
    /// The map path handles it (hop-by-hop with a meaning for the body or
    /// the connection).
    Refused,
}

fn classify(name: &[u8]) -> Field {
    let is = |lower: &[u8]| name.eq_ignore_ascii_case(lower);
    // Every `Proxy-*` field is this hop's (`Proxy-Authenticate`,
    // `Proxy-Connection`, ...): the map path strips them all.
    if name.len() >= 6 && name[..6].eq_ignore_ascii_case(b"proxy-") {
        return Field::Refused;
    }
    match name.len() {
        4 if is(b"date") => Field::Date,
        14 if is(b"content-length") => Field::ContentLength,
        10 if is(b"connection") => Field::Connection,
        10 if is(b"keep-alive") => Field::Cut,
        12 if is(b"x-request-id") => Field::Cut,
        2 if is(b"te") => Field::Refused,
        7 if is(b"trailer") || is(b"upgrade") => Field::Refused,
        17 if is(b"transfer-encoding") => Field::Refused,
        _ => Field::Other,
    }
}

/// A `Connection` value that names no other field (which the map path
/// would then remove too).
fn only_close_or_keep_alive(value: &[u8]) -> bool {
    value.split(|&b| b == b',').all(|t| {
        let t = t.trim_ascii();
        t.eq_ignore_ascii_case(b"close") || t.eq_ignore_ascii_case(b"keep-alive")
    })
}

#[cfg(test)]
mod tests {
    use super::super::client::parse_head;
    use super::super::framing::BodyFraming;
    use super::*;

    /// Parses `text` with and without relaying: the relayed head, what is
    /// left in the buffer after it is taken, and the map path's head.
    fn both(
        text: &str,
    ) -> (
        Option<(Relayed, BytesMut)>,
        super::super::client::ResponseHead,
    ) {
        let mut mapped_buf = BytesMut::from(text.as_bytes());
        let mapped = parse_head(&mut mapped_buf, false, false)
            .expect("valid")
            .expect("complete");
        let mut buf = BytesMut::from(text.as_bytes());
        let body_at = buf.as_ptr() as usize + text.find("\r\n\r\n").map_or(0, |at| at + 4);
        let head = parse_head(&mut buf, false, true)
            .expect("valid")
            .expect("complete");
        assert_eq!(
            (head.status, head.body, head.keep_alive),
            (mapped.status, mapped.body, mapped.keep_alive),
            "relayed or not, a head frames its body and keeps its connection alike"
        );
        if head.held.is_empty() {
            assert_eq!(head.headers, mapped.headers);
            return (None, mapped);
        }
        assert!(head.headers.is_empty());
        let bytes = buf.split_to(head.held.len()).freeze();
        let relayed = head.held.relayed(&bytes);
        assert_eq!(buf, mapped_buf, "the body's bytes follow the head alike");
        assert_eq!(buf.as_ptr() as usize, body_at, "the body's bytes not moved");
        (Some((relayed, buf)), mapped)
    }

    /// The map path's fields, less those it strips on the way out (what
    /// the relay cuts).
    fn passed_on(mut headers: HeaderMap) -> HeaderMap {
        for name in ["connection", "keep-alive", "x-request-id"] {
            headers.remove(name);
        }
        assert!(!headers.keys().any(|k| k.as_str().starts_with("proxy-")));
        headers
    }

    #[test]
    fn a_plain_head_is_relayed_without_the_lines_the_gateway_writes() {
        let text = "HTTP/1.1 200 OK\r\nServer: nginx\r\nDate: Thu, 03 Dec 2026 07:00:00 GMT\r\n\
                    Content-Type: text/plain\r\nContent-Length: 5\r\nConnection: keep-alive\r\n\
                    X-Request-Id: theirs\r\nKeep-Alive: timeout=5\r\nETag: \"x\"\r\n\r\nhello";
        let (relayed, mapped) = both(text);
        let (relayed, rest) = relayed.expect("relayed");
        assert_eq!(
            relayed.lines(),
            b"Server: nginx\r\nDate: Thu, 03 Dec 2026 07:00:00 GMT\r\nContent-Type: text/plain\r\n\
              Content-Length: 5\r\nETag: \"x\"\r\n"
        );
        assert!(relayed.dated());
        assert_eq!(&rest[..], b"hello");
        assert_eq!(mapped.body, Some(BodyFraming::Length(5)));
        assert!(mapped.keep_alive);
        let mut map = HeaderMap::new();
        relayed.into_map(&mut map);
        assert_eq!(map, passed_on(mapped.headers));
    }

    #[test]
    fn a_close_is_cut_and_still_ends_the_upstream_connection() {
        let (relayed, mapped) =
            both("HTTP/1.1 404 Not Found\r\nconnection: close\r\ncontent-length: 0\r\n\r\n");
        let (relayed, _) = relayed.expect("relayed");
        assert_eq!(relayed.lines(), b"content-length: 0\r\n");
        assert!(!relayed.dated());
        assert!(!mapped.keep_alive);
        assert_eq!(mapped.body, Some(BodyFraming::Empty));
    }

    #[test]
    fn heads_the_map_path_handles_are_not_relayed() {
        for text in [
            // HTTP/1.0, a chunked body, a body until the close.
            "HTTP/1.0 200 OK\r\ncontent-length: 2\r\n\r\n",
            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n",
            "HTTP/1.1 200 OK\r\nserver: x\r\n\r\n",
            // No body whatever the fields say.
            "HTTP/1.1 204 No Content\r\ncontent-length: 2\r\n\r\n",
            "HTTP/1.1 304 Not Modified\r\ncontent-length: 2\r\n\r\n",
            // A length twice, or as a list.
            "HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-length: 2\r\n\r\n",
            "HTTP/1.1 200 OK\r\ncontent-length: 2, 2\r\n\r\n",
            // Lines not ending in exactly CRLF.
            "HTTP/1.1 200 OK\r\ncontent-length: 2\nserver: x\r\n\r\n",
            "HTTP/1.1 200 OK\r\ncontent-length: 2 \r\n\r\n",
            "HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\n",
            // Hop-by-hop fields with a meaning, or naming others.
            "HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: x-secret\r\nx-secret: 1\r\n\r\n",
            "HTTP/1.1 200 OK\r\ncontent-length: 2\r\nupgrade: h2c\r\n\r\n",
            "HTTP/1.1 200 OK\r\ncontent-length: 2\r\ntrailer: x\r\n\r\n",
            "HTTP/1.1 200 OK\r\ncontent-length: 2\r\nte: trailers\r\n\r\n",
            "HTTP/1.1 200 OK\r\ncontent-length: 2\r\nproxy-connection: close\r\n\r\n",
            "HTTP/1.1 200 OK\r\ncontent-length: 2\r\nProxy-Authenticate: Basic realm=x\r\n\r\n",
            "HTTP/1.1 200 OK\r\ncontent-length: 2\r\nproxy-: x\r\n\r\n",
            // A length the map path would write otherwise.
            "HTTP/1.1 200 OK\r\ncontent-length: 002\r\n\r\n",
            // A status line past what `Held` notes (256 bytes), with a
            // line that would be cut and a body shorter than that line.
            &format!(
                "HTTP/1.1 200 {}\r\ncontent-length: 2\r\nconnection: keep-alive\r\n\r\nok",
                "O".repeat(243)
            ),
            // Two of a line that is cut: past what is kept of the cuts.
            "HTTP/1.1 200 OK\r\ncontent-length: 2\r\nkeep-alive: a\r\nkeep-alive: b\r\n\
             x-request-id: 1\r\nconnection: close\r\n\r\n",
        ] {
            let (relayed, _) = both(text);
            assert!(relayed.is_none(), "{text:?} relayed");
        }
        // The answer to a HEAD has no body: never relayed.
        let text = "HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n";
        let head = parse_head(&mut BytesMut::from(text), true, true)
            .unwrap()
            .unwrap();
        assert!(head.held.is_empty());
        assert_eq!(head.body, Some(BodyFraming::Empty));
    }
}
