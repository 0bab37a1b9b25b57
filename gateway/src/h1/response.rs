//! The response head as written by the native server, and how its body is
//! framed: no body for HEAD, 1xx, 204 and 304; the `Content-Length` the
//! response declares, or the body's exact length when it knows it;
//! otherwise chunked (HTTP/1.1) or until the connection closes (HTTP/1.0).
//!
//! `Connection` is the server's to write: `close` when the connection will
//! close, `keep-alive` for an HTTP/1.0 client it stays open for, the
//! response's own value (`upgrade`) on a 101.
//!
//! The proxy's own fields ride beside the response's map ([`Beside`]): the
//! native server writes them after the map's fields, and hyper's servers
//! find them folded into the map ([`Beside::fold`]).

use std::cell::RefCell;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderName, HeaderValue};
use http::response::Parts;
use http::{HeaderMap, Method, Response, StatusCode, Version};
use http_body::Body;

use super::framing::{CHUNK_END, chunk_size_line, last_chunk};
use super::head::lists;
use super::outbox::Outbox;
use super::relay::Relayed;

/// `X-Request-Id`: every response the proxy answers carries its request's.
pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// What the proxy adds to every response, kept beside its header map rather
/// than inserted into it: an insertion hashes the name and probes the map
/// (about 250 instructions per response, callgrind), and the native server
/// only has to write the field.
#[derive(Debug, Default)]
pub struct Beside {
    /// `X-Request-Id`, in place of any the map holds.
    pub request_id: Option<HeaderValue>,
    /// The connection closes after this response (`Connection: close`):
    /// the request's body was not read to its end.
    pub close: bool,
    /// The upstream's fields as they arrived ([`super::relay`]), written
    /// after the map's (which then holds none of the upstream's). They
    /// carry the body's `Content-Length`.
    pub fields: Option<Relayed>,
}

impl Beside {
    /// Into `resp`'s map, for a server that writes only the map (hyper's).
    pub fn fold<B>(self, resp: &mut Response<B>) {
        if let Some(fields) = self.fields {
            fields.into_map(resp.headers_mut());
        }
        if let Some(id) = self.request_id {
            resp.headers_mut().insert(X_REQUEST_ID.clone(), id);
        }
        if self.close {
            resp.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
    }
}

/// What a service answers the native server: a response, with or without
/// fields beside its map.
pub trait Answer {
    /// The response's body.
    type Body;
    /// The response and what rides beside it.
    fn into_parts(self) -> (Response<Self::Body>, Beside);
}

impl<B> Answer for Response<B> {
    type Body = B;
    fn into_parts(self) -> (Response<B>, Beside) {
        (self, Beside::default())
    }
}

impl<B> Answer for (Response<B>, Beside) {
    type Body = B;
    fn into_parts(self) -> (Response<B>, Beside) {
        self
    }
}

/// What the head is written from: a response's status and fields, borrowed
/// (from its parts, or from the response itself where it stays).
#[derive(Debug, Clone, Copy)]
pub struct Head<'a> {
    /// The response's status.
    pub status: StatusCode,
    /// Its header map.
    pub headers: &'a HeaderMap,
}

impl<'a, B> From<&'a Response<B>> for Head<'a> {
    fn from(resp: &'a Response<B>) -> Head<'a> {
        Head {
            status: resp.status(),
            headers: resp.headers(),
        }
    }
}

impl<'a> From<&'a Parts> for Head<'a> {
    fn from(parts: &'a Parts) -> Head<'a> {
        Head {
            status: parts.status,
            headers: &parts.headers,
        }
    }
}

/// How a response body is framed on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResponseFraming {
    /// No body is sent.
    None,
    /// No body is sent, but the head says the length a GET would have
    /// carried: a HEAD answered with a body of known length and no
    /// `Content-Length` of its own (the gateway's own JSON errors). Without
    /// it a client that does not remember its methods reads such an answer
    /// as running until the connection closes.
    Advertised(u64),
    /// Exactly this many bytes.
    Length(u64),
    /// Chunked.
    Chunked,
    /// Until the connection closes (HTTP/1.0 client, unknown length).
    UntilClose,
}

impl ResponseFraming {
    /// The framing for a response to `method` from an HTTP `version` client.
    pub fn choose<B: Body>(method: &Method, version: Version, parts: Head<'_>, body: &B) -> Self {
        let s = parts.status;
        if s.is_informational() || s == StatusCode::NO_CONTENT || s == StatusCode::NOT_MODIFIED {
            return ResponseFraming::None;
        }
        let declared = || {
            parts
                .headers
                .get(header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok())
        };
        if method == Method::HEAD {
            // A relayed HEAD answer keeps its own fields; its body is empty
            // (hint 0), which says nothing of what GET would send.
            let framed =
                declared().is_some() || parts.headers.contains_key(header::TRANSFER_ENCODING);
            return match body.size_hint().exact() {
                Some(n) if n > 0 && !framed => ResponseFraming::Advertised(n),
                _ => ResponseFraming::None,
            };
        }
        // The body's exact length is the length sent (a `Content-Length`
        // beside it that says otherwise is not written); the declared one
        // is looked up only for a body that does not know its own.
        match body.size_hint().exact().or_else(declared) {
            Some(n) => ResponseFraming::Length(n),
            None if version == Version::HTTP_11 => ResponseFraming::Chunked,
            None => ResponseFraming::UntilClose,
        }
    }

    /// Whether any body bytes go on the wire.
    pub fn sends_body(self) -> bool {
        !matches!(self, ResponseFraming::None | ResponseFraming::Advertised(_))
    }

    /// Appends one data frame.
    pub fn data(self, out: &mut Outbox, data: Bytes) {
        match self {
            ResponseFraming::None | ResponseFraming::Advertised(_) => {}
            ResponseFraming::Chunked => {
                if !data.is_empty() {
                    let size = chunk_size_line(data.len());
                    out.gather().extend_from_slice(size.as_ref());
                    out.data(data);
                    out.gather().extend_from_slice(CHUNK_END);
                }
            }
            _ => out.data(data),
        }
    }

    /// Appends the end of the body; false when the body is short of what
    /// was declared (the connection must close).
    pub fn end(self, out: &mut Outbox, trailers: Option<&HeaderMap>, sent: u64) -> bool {
        match self {
            ResponseFraming::Chunked => {
                out.gather().extend_from_slice(&last_chunk(trailers));
                true
            }
            ResponseFraming::Length(n) => sent == n,
            _ => true,
        }
    }
}

/// Appends the status line and header fields, then `beside`'s; false when
/// the connection closes after this response (`keep` false, or a
/// `Connection: close` among the fields).
///
/// The fields the server writes itself (framing, `Connection`) are skipped
/// in the map, and what the map holds of `Date` and `Connection` is found in
/// the same pass over it (no lookups).
pub fn write_head(
    out: &mut BytesMut,
    parts: Head<'_>,
    beside: &Beside,
    framing: ResponseFraming,
    (mut keep, version): (bool, Version),
) -> bool {
    let status = parts.status;
    // One allocation for a usual head rather than a doubling series.
    let relayed = beside.fields.as_ref();
    out.reserve(256 + 48 * parts.headers.len() + relayed.map_or(0, |f| f.lines().len()));
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.extend_from_slice(b" ");
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    let upgrade = status == StatusCode::SWITCHING_PROTOCOLS;
    let mut dated = false;
    for (name, value) in parts.headers {
        if *name == header::CONNECTION {
            keep &= !lists(value, "close");
            if !upgrade {
                continue;
            }
        }
        let ours = *name == header::TRANSFER_ENCODING
            || (*name == header::CONTENT_LENGTH && framing != ResponseFraming::None)
            || (beside.request_id.is_some() && *name == X_REQUEST_ID);
        if ours {
            continue;
        }
        dated |= *name == header::DATE;
        field(out, name.as_str().as_bytes(), value.as_bytes());
    }
    if let Some(fields) = relayed {
        out.extend_from_slice(fields.lines());
        dated |= fields.dated();
    }
    if let Some(id) = &beside.request_id {
        field(out, X_REQUEST_ID.as_str().as_bytes(), id.as_bytes());
    }
    match framing {
        // Relayed fields carry the body's own length.
        ResponseFraming::Length(_) if relayed.is_some() => {}
        ResponseFraming::Length(n) | ResponseFraming::Advertised(n) => {
            field(out, b"content-length", decimal(n, &mut [0; 20]));
        }
        ResponseFraming::Chunked => field(out, b"transfer-encoding", b"chunked"),
        _ => {}
    }
    keep &= !beside.close;
    if !upgrade {
        if !keep {
            field(out, b"connection", b"close");
        } else if version == Version::HTTP_10 {
            field(out, b"connection", b"keep-alive");
        }
    }
    if !dated {
        put_date(out);
    }
    out.extend_from_slice(b"\r\n");
    keep
}

/// Appends one header field line.
pub(super) fn field(out: &mut BytesMut, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// `n` in decimal, formatted on the stack: `to_string` allocated a
/// `String` for every response's `Content-Length` (and `format!` for each
/// connection's forwarding values).
pub(crate) fn decimal(n: u64, digits: &mut [u8; 20]) -> &[u8] {
    let mut at = digits.len();
    let mut n = n;
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            return &digits[at..];
        }
    }
}

thread_local! {
    /// The `Date` field for the current second, formatted once per second
    /// per thread rather than per response.
    static DATE: RefCell<(u64, String)> = const { RefCell::new((0, String::new())) };
}

/// Appends `date: <now>\r\n`.
fn put_date(out: &mut BytesMut) {
    let now = SystemTime::now();
    let secs = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    DATE.with(|d| {
        let mut d = d.borrow_mut();
        if d.0 != secs || d.1.is_empty() {
            *d = (secs, format!("date: {}\r\n", httpdate::fmt_http_date(now)));
        }
        out.extend_from_slice(d.1.as_bytes());
    });
}

/// `date: <now>\r\n`, for the few answers written outside a response.
pub fn date_line() -> String {
    let mut out = BytesMut::new();
    put_date(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{Empty, Full, StreamBody};

    #[test]
    fn decimal_lengths() {
        for n in [0, 7, 10, 4096, 1 << 40, u64::MAX] {
            assert_eq!(decimal(n, &mut [0; 20]), n.to_string().as_bytes());
        }
    }

    fn parts(status: u16, headers: &[(&str, &str)]) -> Parts {
        let mut b = http::Response::builder().status(status);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap().into_parts().0
    }

    #[test]
    fn framing_follows_method_status_and_length() {
        let full = Full::new(bytes::Bytes::from("abc"));
        let get = Method::GET;
        let v11 = Version::HTTP_11;
        let choose = |m: &Method, v, p: &Parts| ResponseFraming::choose(m, v, p.into(), &full);
        assert_eq!(
            choose(&get, v11, &parts(200, &[])),
            ResponseFraming::Length(3)
        );
        // HEAD: no body, but the length the gateway's own body would have.
        assert_eq!(
            choose(&Method::HEAD, v11, &parts(200, &[])),
            ResponseFraming::Advertised(3)
        );
        let relayed = parts(200, &[("transfer-encoding", "chunked")]);
        assert_eq!(choose(&Method::HEAD, v11, &relayed), ResponseFraming::None);
        let empty_head = ResponseFraming::choose(
            &Method::HEAD,
            v11,
            (&parts(200, &[])).into(),
            &Empty::<bytes::Bytes>::new(),
        );
        assert_eq!(empty_head, ResponseFraming::None);
        for s in [101, 204, 304] {
            assert_eq!(
                choose(&get, v11, &parts(s, &[])),
                ResponseFraming::None,
                "{s}"
            );
        }
        let declared = parts(200, &[("content-length", "3")]);
        assert_eq!(choose(&get, v11, &declared), ResponseFraming::Length(3));
        let stream = StreamBody::new(futures_util::stream::empty::<
            Result<http_body::Frame<bytes::Bytes>, std::convert::Infallible>,
        >());
        let unknown = |v| ResponseFraming::choose(&get, v, (&parts(200, &[])).into(), &stream);
        assert_eq!(unknown(v11), ResponseFraming::Chunked);
        assert_eq!(unknown(Version::HTTP_10), ResponseFraming::UntilClose);
        let empty = Empty::<bytes::Bytes>::new();
        let none = ResponseFraming::choose(&get, v11, (&parts(200, &[])).into(), &empty);
        assert_eq!(none, ResponseFraming::Length(0));
    }

    fn head(
        p: &Parts,
        beside: &Beside,
        framing: ResponseFraming,
        keep: (bool, Version),
    ) -> (String, bool) {
        let mut out = BytesMut::new();
        let kept = write_head(&mut out, p.into(), beside, framing, keep);
        (String::from_utf8(out.to_vec()).unwrap(), kept)
    }

    #[test]
    fn the_head_says_how_the_connection_goes_on() {
        let none = Beside::default();
        let p = parts(200, &[("connection", "keep-alive"), ("x-a", "1")]);
        let (text, kept) = head(
            &p,
            &none,
            ResponseFraming::Chunked,
            (false, Version::HTTP_11),
        );
        assert!(!kept);
        assert!(text.starts_with("HTTP/1.1 200 OK\r\nx-a: 1\r\n"), "{text}");
        assert!(text.contains("transfer-encoding: chunked\r\n"));
        assert!(text.contains("connection: close\r\n"));
        assert!(!text.contains("keep-alive"));
        assert!(text.contains("date: ") && text.ends_with("\r\n\r\n"));
        let p = parts(200, &[]);
        let (text, kept) = head(
            &p,
            &none,
            ResponseFraming::Length(0),
            (true, Version::HTTP_10),
        );
        assert!(kept);
        assert!(
            text.contains("content-length: 0\r\nconnection: keep-alive\r\n"),
            "{text}"
        );
        // A `Connection: close` the response carries closes the connection.
        let p = parts(200, &[("connection", "Upgrade, Close")]);
        let (text, kept) = head(
            &p,
            &none,
            ResponseFraming::Length(0),
            (true, Version::HTTP_11),
        );
        assert!(!kept);
        assert_eq!(text.matches("connection").count(), 1, "{text}");
        assert!(text.contains("connection: close\r\n"), "{text}");
    }

    /// An upstream head relayed by the native client, as the proxy puts
    /// it beside the response.
    fn relayed(text: &str) -> Relayed {
        let mut buf = BytesMut::from(text);
        let head = super::super::client::parse_head(&mut buf, false, true)
            .expect("valid")
            .expect("complete");
        assert!(!head.held.is_empty(), "{text:?} relayed");
        head.held.relayed(&buf.split_to(head.held.len()).freeze())
    }

    #[test]
    fn relayed_lines_are_written_once_with_their_own_length_and_date() {
        let fields = relayed(
            "HTTP/1.1 200 OK\r\nServer: up\r\nDate: Thu, 03 Dec 2026 04:00:00 GMT\r\n\
             Content-Length: 2\r\nConnection: keep-alive\r\nX-Request-Id: theirs\r\n\r\nok",
        );
        let beside = Beside {
            request_id: Some(HeaderValue::from_static("ours")),
            close: false,
            fields: Some(fields),
        };
        let (text, kept) = head(
            &parts(200, &[]),
            &beside,
            ResponseFraming::Length(2),
            (true, Version::HTTP_11),
        );
        assert!(kept);
        assert_eq!(
            text,
            "HTTP/1.1 200 OK\r\nServer: up\r\nDate: Thu, 03 Dec 2026 04:00:00 GMT\r\n\
             Content-Length: 2\r\nx-request-id: ours\r\n\r\n"
        );
        // Undated lines get the gateway's date, once.
        let beside = Beside {
            fields: Some(relayed("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")),
            ..Beside::default()
        };
        let (text, _) = head(
            &parts(200, &[]),
            &beside,
            ResponseFraming::Length(0),
            (true, Version::HTTP_11),
        );
        assert_eq!(text.matches("date: ").count(), 1, "{text}");
        assert_eq!(
            text.to_ascii_lowercase().matches("content-length").count(),
            1
        );
    }

    #[test]
    fn the_fields_beside_the_map_are_written_in_place_of_its_own() {
        let p = parts(
            200,
            &[
                ("x-request-id", "from-upstream"),
                ("date", "Thu, 03 Dec 2026 04:00:00 GMT"),
            ],
        );
        let beside = Beside {
            request_id: Some(HeaderValue::from_static("ours")),
            close: true,
            fields: None,
        };
        let (text, kept) = head(
            &p,
            &beside,
            ResponseFraming::Length(2),
            (true, Version::HTTP_11),
        );
        assert!(!kept, "beside's close closes the connection");
        assert!(text.contains("x-request-id: ours\r\n"), "{text}");
        assert!(!text.contains("from-upstream"), "{text}");
        assert!(text.contains("connection: close\r\n"), "{text}");
        // The response's own Date is kept, and no second one written.
        assert_eq!(text.matches("date: ").count(), 1, "{text}");
        assert!(
            text.contains("date: Thu, 03 Dec 2026 04:00:00 GMT\r\n"),
            "{text}"
        );
        // Without an id beside, the map's is written; folded into a map,
        // beside's fields replace the map's.
        let (text, kept) = head(
            &p,
            &Beside::default(),
            ResponseFraming::Length(2),
            (true, Version::HTTP_11),
        );
        assert!(
            kept && text.contains("x-request-id: from-upstream\r\n"),
            "{text}"
        );
        let mut resp = Response::builder()
            .header("x-request-id", "from-upstream")
            .body(())
            .unwrap();
        beside.fold(&mut resp);
        assert_eq!(resp.headers()["x-request-id"], "ours");
        assert_eq!(resp.headers()["connection"], "close");
        assert_eq!(resp.headers().len(), 2);
    }

    #[test]
    fn a_body_s_exact_length_frames_it_whatever_the_map_declares() {
        let full = Full::new(bytes::Bytes::from("abc"));
        let p = parts(200, &[("content-length", "5")]);
        let framing = ResponseFraming::choose(&Method::GET, Version::HTTP_11, (&p).into(), &full);
        assert_eq!(framing, ResponseFraming::Length(3));
        let (text, _) = head(&p, &Beside::default(), framing, (true, Version::HTTP_11));
        assert!(
            text.contains("content-length: 3\r\n") && !text.contains(": 5"),
            "{text}"
        );
    }
}
