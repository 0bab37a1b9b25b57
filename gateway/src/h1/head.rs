//! The request head: `httparse` finds the request line and the header
//! fields, then [`parse`] builds an `http` head from them and decides how
//! the body is framed and what the connection does next.
//!
//! Strict where a proxy must be, because a backend behind it may read the
//! same bytes differently (request smuggling):
//! - `Content-Length` and `Transfer-Encoding` together are refused, not
//!   resolved: a backend that picks the other one would see a second
//!   request in this one's body;
//! - differing `Content-Length` values (as repeated fields or as a list)
//!   are refused; identical repeats are one length;
//! - `Transfer-Encoding` must end in `chunked`, once, and is refused in
//!   HTTP/1.0, where it is not defined;
//! - obsolete line folding, bare CR, whitespace before a colon and other
//!   malformed lines are refused by `httparse`.
//!
//! What is refused says which field and why ([`HeadError`]); the server
//! answers 431 for a head too large and 400 for the rest.

use std::mem::MaybeUninit;

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderName, HeaderValue};
use http::{HeaderMap, Method, StatusCode, Uri, Version};

use super::framing::BodyFraming;

/// Most header fields in a request head (hyper's default, too).
pub const MAX_HEADERS: usize = 100;

/// A request head, parsed and checked.
#[derive(Debug)]
pub struct RequestHead {
    /// The request method.
    pub method: Method,
    /// The request target as sent (origin, absolute, authority or asterisk form).
    pub uri: Uri,
    /// HTTP/1.0 or HTTP/1.1.
    pub version: Version,
    /// The header fields, in order, names lowercased.
    pub headers: HeaderMap,
    /// How the body is framed.
    pub body: BodyFraming,
    /// The connection may carry another request after this one.
    pub keep_alive: bool,
    /// `Expect: 100-continue` (HTTP/1.1): send `100 Continue` when the body
    /// is first read.
    pub expect_continue: bool,
    /// The client asks to switch protocols (`Connection: upgrade` with an
    /// `Upgrade` field) or to tunnel (`CONNECT`).
    pub upgrade: bool,
    /// `TE: trailers`: the client takes trailers in a chunked response.
    pub te_trailers: bool,
}

/// Why a request head was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeadError {
    /// The head did not fit in the limit.
    #[error("request head larger than {limit} bytes")]
    TooLarge {
        /// The limit, in bytes.
        limit: usize,
    },
    /// More header fields than [`MAX_HEADERS`].
    #[error("more than {MAX_HEADERS} header fields")]
    TooManyHeaders,
    /// The request line or a header line is not HTTP/1.x.
    #[error("malformed request head: {0}")]
    Malformed(&'static str),
    /// The request target is not a URI.
    #[error("malformed request target")]
    Target,
    /// A header field is refused: which one and why.
    #[error("header field {field}: {reason}")]
    Field {
        /// The field's name.
        field: &'static str,
        /// Why it is refused.
        reason: &'static str,
    },
}

impl HeadError {
    /// The status a refused head is answered with.
    pub fn status(&self) -> StatusCode {
        match self {
            HeadError::TooLarge { .. } | HeadError::TooManyHeaders => {
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
            }
            _ => StatusCode::BAD_REQUEST,
        }
    }
}

/// Where each header field's name and value lie in the head's bytes:
/// kept so the head can be split off the buffer and the values shared
/// with it rather than copied. On the stack for a usual head (a `Vec` cost
/// a `malloc` and a `free` per head). Offsets are `u32`: a head is at
/// most its limit long, and [`span`] refuses one past 4 GiB. So a head's
/// positions are 200 bytes, not 392, and each move of them (returned,
/// collected) is one of `memcpy`'s short copies (up to 256 bytes: about 30
/// instructions, against 64 above; callgrind).
pub(super) type Spans = smallvec::SmallVec<[(Span, Span); 12]>;

/// Start and end of a part of a head, in bytes from its first.
pub(super) type Span = (u32, u32);

/// Where `part` lies in `buf` (`part` borrows from it); `None` past 4 GiB.
pub(super) fn span(buf: &[u8], part: &[u8]) -> Option<Span> {
    let start = u32::try_from(part.as_ptr() as usize - buf.as_ptr() as usize).ok()?;
    let end = start.checked_add(u32::try_from(part.len()).ok()?)?;
    Some((start, end))
}

/// The positions of the fields `httparse` found in `buf`, pushed onto
/// `fields`; `None`: one lies past 4 GiB. The caller keeps `fields` in its
/// own frame: returned up through `Option` and `Result`, the vector (152
/// bytes) was copied at each layer (`bench/copies.sh`).
#[inline]
pub(super) fn push_spans(
    buf: &[u8],
    headers: &[httparse::Header<'_>],
    fields: &mut Spans,
) -> Option<()> {
    for h in headers {
        fields.push((span(buf, h.name.as_bytes())?, span(buf, h.value)?));
    }
    Some(())
}

/// `span` as a range to index or slice the head's bytes with.
pub(super) fn range((start, end): Span) -> std::ops::Range<usize> {
    start as usize..end as usize
}

/// Which of the fields that decide a message's framing and its
/// connection's fate a head carries, noted while its map is built: one
/// that is not there needs no lookup, and most messages carry few of them
/// (each lookup hashes the name: about 90 instructions, callgrind).
///
/// The `Connection` fields' usual tokens are noted too (`close`,
/// `keep-alive`), so the connection's fate is known without a lookup.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Seen(u8);

impl Seen {
    pub(super) const CONTENT_LENGTH: Seen = Seen(1);
    pub(super) const TRANSFER_ENCODING: Seen = Seen(2);
    pub(super) const CONNECTION: Seen = Seen(4);
    pub(super) const EXPECT: Seen = Seen(8);
    pub(super) const UPGRADE: Seen = Seen(16);
    pub(super) const TE: Seen = Seen(32);
    /// A `Connection` field lists `close`.
    pub(super) const CLOSE: Seen = Seen(64);
    /// A `Connection` field lists `keep-alive`.
    pub(super) const KEEP_ALIVE: Seen = Seen(128);

    /// The head carries the field `f`.
    pub(super) fn has(self, f: Seen) -> bool {
        self.0 & f.0 != 0
    }

    /// The head carries a length or a transfer coding.
    pub(super) fn frames_body(self) -> bool {
        self.has(Seen::CONTENT_LENGTH) || self.has(Seen::TRANSFER_ENCODING)
    }

    fn note(&mut self, name: &HeaderName) {
        let flag = if *name == header::CONTENT_LENGTH {
            Seen::CONTENT_LENGTH
        } else if *name == header::TRANSFER_ENCODING {
            Seen::TRANSFER_ENCODING
        } else if *name == header::CONNECTION {
            Seen::CONNECTION
        } else if *name == header::EXPECT {
            Seen::EXPECT
        } else if *name == header::UPGRADE {
            Seen::UPGRADE
        } else if *name == header::TE {
            Seen::TE
        } else {
            return;
        };
        self.0 |= flag.0;
    }

    /// Notes the tokens of a `Connection` field's `value`; whether it
    /// lists nothing but `close` and `keep-alive` (what a connection loop
    /// acts on itself, naming no other field).
    fn note_connection(&mut self, value: &[u8]) -> bool {
        let mut only_ours = true;
        for token in value.split(|&b| b == b',').map(<[u8]>::trim_ascii) {
            if token.eq_ignore_ascii_case(b"close") {
                self.0 |= Seen::CLOSE.0;
            } else if token.eq_ignore_ascii_case(b"keep-alive") {
                self.0 |= Seen::KEEP_ALIVE.0;
            } else if !token.is_empty() {
                only_ours = false;
            }
        }
        only_ours
    }
}

/// Parses the head at the front of `buf` and takes it off (with any empty
/// lines before it). `Ok(None)`: the head is not complete yet and still
/// fits in `max_head` bytes; read more. A head refused once complete has
/// been taken off too: the connection answers it and closes, reading
/// nothing further.
pub fn parse(buf: &mut BytesMut, max_head: usize) -> Result<Option<RequestHead>, HeadError> {
    // The fields' positions stay in this frame ([`push_spans`]).
    let mut fields = Spans::new();
    let Some(found) = locate(buf, max_head, &mut fields)? else {
        return Ok(None);
    };
    let bytes = buf.split_to(found.len).freeze();
    build(&bytes, &found, &fields).map(Some)
}

/// The request line's positions and the head's length, found by `httparse`.
struct Located {
    len: usize,
    method: Span,
    target: Span,
    minor: u8,
}

/// `httparse` over the front of `buf`: the request line, and the fields'
/// positions pushed onto `fields` (empty on entry).
fn locate(buf: &[u8], max_head: usize, fields: &mut Spans) -> Result<Option<Located>, HeadError> {
    // Uninitialised: 100 empty fields are 3.2 KB of stores per request
    // that httparse overwrites anyway (callgrind's cache simulation counted
    // them as a quarter of a proxied GET's L1 write misses, with the
    // response's own).
    let mut slots = [const { MaybeUninit::uninit() }; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut []);
    let len = match req.parse_with_uninit_headers(buf, &mut slots) {
        Ok(httparse::Status::Complete(n)) if n > max_head => {
            return Err(HeadError::TooLarge { limit: max_head });
        }
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() >= max_head => {
            return Err(HeadError::TooLarge { limit: max_head });
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(HeadError::TooManyHeaders),
        Err(e) => return Err(HeadError::Malformed(describe(e))),
    };
    let (Some(method), Some(target), Some(minor)) = (req.method, req.path, req.version) else {
        return Err(HeadError::Malformed("incomplete request line"));
    };
    let too_large = || HeadError::TooLarge { limit: max_head };
    push_spans(buf, req.headers, fields).ok_or_else(too_large)?;
    let method = span(buf, method.as_bytes()).ok_or_else(too_large)?;
    let target = span(buf, target.as_bytes()).ok_or_else(too_large)?;
    Ok(Some(Located {
        len,
        method,
        target,
        minor,
    }))
}

pub(super) fn describe(e: httparse::Error) -> &'static str {
    match e {
        httparse::Error::HeaderName => "invalid header name (or obsolete line folding)",
        httparse::Error::HeaderValue => "invalid header value",
        httparse::Error::NewLine | httparse::Error::Status => "invalid line ending",
        httparse::Error::Token => "invalid method",
        httparse::Error::Version => "invalid HTTP version",
        httparse::Error::TooManyHeaders => "too many header fields",
    }
}

fn build(bytes: &Bytes, found: &Located, fields: &Spans) -> Result<RequestHead, HeadError> {
    let method = Method::from_bytes(&bytes[range(found.method)])
        .map_err(|_| HeadError::Malformed("invalid method"))?;
    let target = bytes.slice(range(found.target));
    // A fragment has no place in a request target (RFC 9112 3.2), and the
    // URI parser drops it silently: "http://a#b/x" would become a request
    // for the empty path. Refused, as malformed.
    if target.contains(&b'#') {
        return Err(HeadError::Target);
    }
    let uri = Uri::from_maybe_shared(target).map_err(|_| HeadError::Target)?;
    let version = if found.minor == 0 {
        Version::HTTP_10
    } else {
        Version::HTTP_11
    };
    // Room for the forwarding fields the proxy adds (`x-request-id`,
    // `x-forwarded-*`, `traceparent`): without it the map grows, and
    // reallocates, two or three times per request (callgrind).
    let (mut headers, seen) =
        header_map(bytes, fields, (6, Hop::Consume)).map_err(HeadError::Malformed)?;
    let body = if seen.frames_body() {
        let body = body_framing(&headers, seen, version)?;
        normalize_length(&mut headers, body);
        body
    } else {
        BodyFraming::Empty
    };
    let keep_alive = keeps_alive(seen, version);
    let expect_continue = version == Version::HTTP_11
        && seen.has(Seen::EXPECT)
        && headers
            .get(header::EXPECT)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    let upgrade = method == Method::CONNECT
        || (version == Version::HTTP_11
            && seen.has(Seen::UPGRADE)
            && seen.has(Seen::CONNECTION)
            && has_token(&headers, header::CONNECTION, "upgrade"));
    let te_trailers = seen.has(Seen::TE) && has_token(&headers, header::TE, "trailers");
    Ok(RequestHead {
        method,
        uri,
        version,
        headers,
        body,
        keep_alive,
        expect_continue,
        upgrade,
        te_trailers,
    })
}

/// What [`header_map`] does with a `Connection` field that lists only
/// `close` and `keep-alive`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Hop {
    /// Noted in [`Seen`] and left out of the map: a request's. It is
    /// hop-by-hop (RFC 9110 §7.6.1), the connection loop acts on it, and
    /// the proxy would remove it again before forwarding; a new connection
    /// per request carries one each (`close`), and putting it in the map,
    /// looking it up and removing it cost about 1,100 instructions, callgrind
    /// `NEWCONN=1`. A field listing any other token (`upgrade`, a field's
    /// name) stays, for the upgrade and for the proxy to act on.
    Consume,
    /// Noted and kept: a response's, whose map its caller may still read.
    Keep,
}

/// The header fields at `fields` in `bytes`, the values sharing `bytes`
/// (no copy), and which framing fields are among them. Both were validated
/// by `httparse` already (no CR, LF or NUL); this only wraps them.
/// `room`: fields that will be added later.
pub(super) fn header_map(
    bytes: &Bytes,
    fields: &Spans,
    (room, hop): (usize, Hop),
) -> Result<(HeaderMap, Seen), &'static str> {
    let mut headers = crate::buffers::map(fields.len() + room);
    let mut seen = Seen::default();
    for &(name, value) in fields {
        let name = field_name(&bytes[range(name)]).ok_or("invalid header name")?;
        seen.note(&name);
        if name == header::CONNECTION
            && seen.note_connection(&bytes[range(value)])
            && hop == Hop::Consume
        {
            continue;
        }
        let value = HeaderValue::from_maybe_shared(bytes.slice(range(value)))
            .map_err(|_| "invalid header value")?;
        headers.append(name, value);
    }
    Ok((headers, seen))
}

/// A field's name. The names most heads carry are found by their length
/// and a case-folded compare; any other goes through
/// `HeaderName::from_bytes` (a table pass over each byte and a lookup by
/// length: about 150 instructions a field, callgrind).
///
/// Only for names `httparse` accepted (token characters): among those,
/// only a letter ORed with 0x20 gives a lowercase letter and only `-`
/// gives `-`, so the fold is exact.
fn field_name(raw: &[u8]) -> Option<HeaderName> {
    type Known = &'static [(&'static [u8], HeaderName)];
    const N4: Known = &[(b"host", header::HOST), (b"date", header::DATE)];
    const N6: Known = &[(b"accept", header::ACCEPT), (b"server", header::SERVER)];
    const N10: Known = &[
        (b"user-agent", header::USER_AGENT),
        (b"connection", header::CONNECTION),
    ];
    const N12: Known = &[(b"content-type", header::CONTENT_TYPE)];
    const N13: Known = &[(b"authorization", header::AUTHORIZATION)];
    const N14: Known = &[(b"content-length", header::CONTENT_LENGTH)];
    const N15: Known = &[(b"accept-encoding", header::ACCEPT_ENCODING)];
    const N17: Known = &[(b"transfer-encoding", header::TRANSFER_ENCODING)];
    let known = match raw.len() {
        4 => N4,
        6 => N6,
        10 => N10,
        12 => N12,
        13 => N13,
        14 => N14,
        15 => N15,
        17 => N17,
        _ => &[],
    };
    let folded = |lower: &[u8]| raw.iter().zip(lower).all(|(&r, &l)| r | 0x20 == l);
    match known.iter().find(|(lower, _)| folded(lower)) {
        Some((_, name)) => Some(name.clone()),
        None => HeaderName::from_bytes(raw).ok(),
    }
}

/// How the request body is framed (RFC 9112 §6.3, refusing every case a
/// backend could read differently). `seen`: the framing fields `headers`
/// holds, as [`header_map`] found them (no lookup for one that is absent).
pub(super) fn body_framing(
    headers: &HeaderMap,
    seen: Seen,
    version: Version,
) -> Result<BodyFraming, HeadError> {
    let te = field("transfer-encoding");
    if seen.has(Seen::TRANSFER_ENCODING) {
        if version == Version::HTTP_10 {
            return Err(te("not defined in HTTP/1.0"));
        }
        if seen.has(Seen::CONTENT_LENGTH) {
            return Err(te("sent with content-length"));
        }
        return chunked_last(headers).map(|()| BodyFraming::Chunked);
    }
    let mut length = None;
    for value in headers.get_all(header::CONTENT_LENGTH) {
        for part in value.as_bytes().split(|&b| b == b',') {
            let n = parse_length(part.trim_ascii())?;
            if length.is_some_and(|l| l != n) {
                return Err(field("content-length")("differing values"));
            }
            length = Some(n);
        }
    }
    Ok(match length {
        None | Some(0) => BodyFraming::Empty,
        Some(n) => BodyFraming::Length(n),
    })
}

/// One `Content-Length` value for a length sent as a list or repeated
/// (`3, 3`): what is forwarded names the length once, as it was read.
fn normalize_length(headers: &mut HeaderMap, body: BodyFraming) {
    let mut values = headers.get_all(header::CONTENT_LENGTH).iter();
    let single = match (values.next(), values.next()) {
        (Some(v), None) => !v.as_bytes().contains(&b','),
        (None, _) => true,
        _ => false,
    };
    if !single {
        let n = match body {
            BodyFraming::Length(n) => n,
            _ => 0,
        };
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(n));
    }
}

fn field(name: &'static str) -> impl Fn(&'static str) -> HeadError {
    move |reason| HeadError::Field {
        field: name,
        reason,
    }
}

/// Decimal digits only (no sign, no space), at most `u64`.
pub(super) fn parse_length(digits: &[u8]) -> Result<u64, HeadError> {
    let bad = field("content-length");
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return Err(bad("not a decimal number"));
    }
    digits.iter().try_fold(0u64, |n, &d| {
        n.checked_mul(10)
            .and_then(|n| n.checked_add(u64::from(d - b'0')))
            .ok_or(bad("too large"))
    })
}

/// `chunked` is the last coding, and appears once.
pub(super) fn chunked_last(headers: &HeaderMap) -> Result<(), HeadError> {
    let te = field("transfer-encoding");
    let codings: Vec<&[u8]> = headers
        .get_all(header::TRANSFER_ENCODING)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b','))
        .map(<[u8]>::trim_ascii)
        .collect();
    let chunked = |c: &&[u8]| c.eq_ignore_ascii_case(b"chunked");
    if codings.iter().any(|c| c.is_empty()) {
        return Err(te("empty coding"));
    }
    match codings.iter().position(chunked) {
        Some(i) if i + 1 == codings.len() => Ok(()),
        Some(_) => Err(te("chunked is not the last coding")),
        None => Err(te("does not end in chunked")),
    }
}

/// HTTP/1.1 keeps the connection unless `Connection: close`; HTTP/1.0
/// closes it unless `Connection: keep-alive` (the tokens as [`header_map`]
/// noted them).
pub(super) fn keeps_alive(seen: Seen, version: Version) -> bool {
    if seen.has(Seen::CLOSE) {
        return false;
    }
    version == Version::HTTP_11 || seen.has(Seen::KEEP_ALIVE)
}

/// `name` lists `token` (comma-separated, any case).
pub fn has_token(headers: &HeaderMap, name: HeaderName, token: &str) -> bool {
    headers.get_all(name).iter().any(|v| lists(v, token))
}

/// One field's `value` lists `token` (comma-separated, any case).
pub(super) fn lists(value: &HeaderValue, token: &str) -> bool {
    lists_bytes(value.as_bytes(), token)
}

/// [`lists`] for a value not (yet) in a map.
pub(super) fn lists_bytes(value: &[u8], token: &str) -> bool {
    value
        .split(|&b| b == b',')
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A head's field positions are returned and collected by value on
    /// every request: within 256 bytes, each copy is one of `memcpy`'s
    /// short ones (see [`Spans`]).
    #[test]
    fn a_head_s_positions_stay_within_a_short_copy() {
        let size = std::mem::size_of::<Spans>();
        assert!(size <= 256, "Spans is {size} bytes");
    }

    fn parse_all(text: &str) -> Result<Option<RequestHead>, HeadError> {
        let mut buf = BytesMut::from(text);
        parse(&mut buf, 8192)
    }

    fn ok(text: &str) -> RequestHead {
        parse_all(text).expect("accepted").expect("complete")
    }

    fn refused(text: &str) -> HeadError {
        parse_all(text).expect_err(text)
    }

    #[test]
    fn known_field_names_in_any_case_are_the_standard_names() {
        for raw in ["host", "Host", "HOST", "hOsT"] {
            assert_eq!(field_name(raw.as_bytes()), Some(header::HOST), "{raw}");
        }
        let cases = [
            ("Content-Length", header::CONTENT_LENGTH),
            ("TRANSFER-ENCODING", header::TRANSFER_ENCODING),
            ("User-Agent", header::USER_AGENT),
            ("accept-encoding", header::ACCEPT_ENCODING),
        ];
        for (raw, name) in cases {
            assert_eq!(field_name(raw.as_bytes()), Some(name), "{raw}");
        }
        // Same length, other characters: through `HeaderName::from_bytes`.
        for raw in ["hosu", "ho-t", "Content_Length", "x-request-id", "X-Trace"] {
            let name = field_name(raw.as_bytes()).unwrap();
            assert_eq!(name.as_str(), raw.to_ascii_lowercase(), "{raw}");
        }
        assert_eq!(field_name(b"bad name"), None);
    }

    #[test]
    fn a_get_keeps_alive_and_has_no_body() {
        let h = ok("GET /a?b HTTP/1.1\r\nHost: x\r\n\r\n");
        assert_eq!(h.method, Method::GET);
        assert_eq!(h.uri, "/a?b");
        assert_eq!(h.headers["host"], "x");
        assert_eq!(h.body, BodyFraming::Empty);
        assert!(h.keep_alive && !h.expect_continue && !h.upgrade);
    }

    #[test]
    fn the_head_is_taken_off_the_buffer_and_the_rest_left() {
        let mut buf = BytesMut::from("\r\nPOST / HTTP/1.1\r\nContent-Length: 3\r\n\r\nabcGET");
        let h = parse(&mut buf, 8192).unwrap().unwrap();
        assert_eq!(h.body, BodyFraming::Length(3));
        assert_eq!(&buf[..], b"abcGET");
    }

    #[test]
    fn a_partial_head_waits_and_an_oversized_one_is_431() {
        assert!(
            parse_all("GET / HTTP/1.1\r\nHost: x\r\n")
                .unwrap()
                .is_none()
        );
        let mut buf = BytesMut::from(&*format!("GET / HTTP/1.1\r\nX: {}", "a".repeat(100)));
        let e = parse(&mut buf, 64).unwrap_err();
        assert_eq!(e.status(), StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
        let many: String = (0..=MAX_HEADERS).map(|i| format!("x{i}: 1\r\n")).collect();
        let e = refused(&format!("GET / HTTP/1.1\r\n{many}\r\n"));
        assert_eq!(e, HeadError::TooManyHeaders);
        assert_eq!(e.status(), StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
    }

    #[test]
    fn connection_rules_follow_the_version() {
        assert!(!ok("GET / HTTP/1.1\r\nConnection: close\r\n\r\n").keep_alive);
        assert!(!ok("GET / HTTP/1.0\r\n\r\n").keep_alive);
        assert!(ok("GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n").keep_alive);
        assert!(!ok("GET / HTTP/1.1\r\nConnection: foo, CLOSE\r\n\r\n").keep_alive);
    }

    /// `close` and `keep-alive` are acted on by the connection and left out
    /// of the request's map; a field listing anything else stays whole,
    /// for the upgrade and for the proxy to drop what it names.
    #[test]
    fn a_connection_field_of_close_or_keep_alive_is_consumed() {
        for (head, keep) in [
            ("GET / HTTP/1.1\r\nConnection: close\r\n\r\n", false),
            ("GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n", true),
            (
                "GET / HTTP/1.1\r\nConnection: Keep-Alive ,, CLOSE\r\n\r\n",
                false,
            ),
            (
                "GET / HTTP/1.0\r\nConnection: keep-alive\r\nConnection: close\r\n\r\n",
                false,
            ),
        ] {
            let h = ok(head);
            assert_eq!(h.keep_alive, keep, "{head:?}");
            assert!(!h.headers.contains_key("connection"), "{head:?}");
        }
        let named = ok("GET / HTTP/1.1\r\nConnection: close, X-Hop\r\nX-Hop: 1\r\n\r\n");
        assert!(!named.keep_alive);
        assert_eq!(named.headers["connection"], "close, X-Hop");
        let ws = ok(
            "GET / HTTP/1.1\r\nConnection: close\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
        );
        assert!(ws.upgrade && !ws.keep_alive);
        let kept: Vec<_> = ws.headers.get_all("connection").iter().collect();
        assert_eq!(kept, ["Upgrade"], "only the field naming more than ours");
    }

    #[test]
    fn expect_continue_only_in_http_1_1() {
        assert!(ok("PUT / HTTP/1.1\r\nExpect: 100-Continue\r\n\r\n").expect_continue);
        assert!(!ok("PUT / HTTP/1.0\r\nExpect: 100-continue\r\n\r\n").expect_continue);
    }

    #[test]
    fn upgrades_need_both_fields_or_connect() {
        let ws = "GET / HTTP/1.1\r\nConnection: keep-alive, Upgrade\r\nUpgrade: websocket\r\n\r\n";
        assert!(ok(ws).upgrade);
        assert!(!ok("GET / HTTP/1.1\r\nUpgrade: websocket\r\n\r\n").upgrade);
        assert!(ok("CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n").upgrade);
    }

    #[test]
    fn content_length_is_strict() {
        for (cl, want) in [("5", 5), ("5, 5", 5), ("007", 7)] {
            let h = ok(&format!("POST / HTTP/1.1\r\nContent-Length: {cl}\r\n\r\n"));
            assert_eq!(h.body, BodyFraming::Length(want), "{cl}");
        }
        let twice = ok("POST / HTTP/1.1\r\nContent-Length: 4\r\nContent-Length: 4\r\n\r\n");
        assert_eq!(twice.body, BodyFraming::Length(4));
        let lengths: Vec<_> = twice.headers.get_all("content-length").iter().collect();
        assert_eq!(lengths, ["4"], "forwarded once");
        let list = ok("POST / HTTP/1.1\r\nContent-Length: 0, 0\r\n\r\n");
        assert_eq!(list.headers["content-length"], "0");
        for cl in [
            "+5",
            "-1",
            "5 5",
            "0x5",
            "",
            "5,",
            "99999999999999999999",
            "5, 6",
        ] {
            let e = refused(&format!("POST / HTTP/1.1\r\nContent-Length: {cl}\r\n\r\n"));
            assert!(
                matches!(
                    e,
                    HeadError::Field {
                        field: "content-length",
                        ..
                    }
                ),
                "{cl}: {e}"
            );
        }
        let e = refused("POST / HTTP/1.1\r\nContent-Length: 4\r\nContent-Length: 5\r\n\r\n");
        assert_eq!(
            e.to_string(),
            "header field content-length: differing values"
        );
    }

    #[test]
    fn transfer_encoding_is_strict() {
        let h = ok("POST / HTTP/1.1\r\nTransfer-Encoding: gzip, Chunked\r\n\r\n");
        assert_eq!(h.body, BodyFraming::Chunked);
        for te in [
            "Content-Length: 4\r\nTransfer-Encoding: chunked",
            "Transfer-Encoding: gzip",
            "Transfer-Encoding: chunked, gzip",
            "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked",
            "Transfer-Encoding: chunked,",
            "Transfer-Encoding: xchunked",
        ] {
            let e = refused(&format!("POST / HTTP/1.1\r\n{te}\r\n\r\n"));
            assert!(
                matches!(
                    e,
                    HeadError::Field {
                        field: "transfer-encoding",
                        ..
                    }
                ),
                "{te}: {e}"
            );
            assert_eq!(e.status(), StatusCode::BAD_REQUEST);
        }
        let e = refused("POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n");
        assert_eq!(
            e.to_string(),
            "header field transfer-encoding: not defined in HTTP/1.0"
        );
    }

    #[test]
    fn malformed_lines_are_400() {
        for text in [
            "GET / HTTP/1.1\r\nX: a\r\n folded\r\n\r\n",
            "GET / HTTP/1.1\r\nX : a\r\n\r\n",
            "GET / HTTP/1.1\rX: a\r\n\r\n",
            "GET / HTTP/1.1\r\nX: a\rb\r\n\r\n",
            "GET / HTTP/2.0\r\n\r\n",
            "GET  / HTTP/1.1\r\n\r\n",
            "G(T / HTTP/1.1\r\n\r\n",
            "GET /a b HTTP/1.1\r\n\r\n",
            "GET / HTTP/1.1\r\nX\0: a\r\n\r\n",
            "GET http://a.t#st/x HTTP/1.1\r\n\r\n",
            "GET /a#b HTTP/1.1\r\n\r\n",
        ] {
            let e = refused(text);
            assert_eq!(e.status(), StatusCode::BAD_REQUEST, "{text:?}: {e}");
        }
    }

    #[test]
    fn request_target_forms() {
        assert_eq!(ok("GET http://a/b HTTP/1.1\r\n\r\n").uri.host(), Some("a"));
        assert_eq!(ok("OPTIONS * HTTP/1.1\r\n\r\n").uri, "*");
        assert_eq!(ok("CONNECT a:1 HTTP/1.1\r\n\r\n").uri.port_u16(), Some(1));
    }
}
