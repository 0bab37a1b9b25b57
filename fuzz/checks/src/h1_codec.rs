//! `h1_codec`: bytes into the HTTP/1.1 codec (`portico_gateway::h1`): the
//! request head parser, the upstream client's response head parser and the
//! chunked decoder, with no sockets (fast: the fuzzer reaches deep states).
//!
//! The first byte chooses: bit 0 set, the rest is a chunked body; clear,
//! the rest is a request (head, then body by the framing the head chose),
//! or with bit 7 set too, a response (interim heads, the final head, then
//! its body). Bits 1-6 give the piece size the bytes arrive in, so
//! splitting is fuzzed too.
//!
//! Oracles:
//! - nothing panics, and a decoder never asks for more bytes than exist
//!   without reporting itself incomplete;
//! - an accepted head is taken off the buffer exactly (what `httparse`
//!   says its length is) and never frames a body two ways: with
//!   `Transfer-Encoding` it has no `Content-Length` and is chunked, and a
//!   `Content-Length` body has the one length every value names;
//! - decoding in pieces gives the same body, trailers, error and leftover
//!   bytes as decoding all at once (no state lost between reads);
//! - a length body takes exactly its length, never a pipelined byte;
//! - a decoded chunked body, encoded again with the codec's own encoder,
//!   decodes to the same data and trailers;
//! - an accepted response head is final (not 1xx), frames its body one way
//!   only (none for 204 and 304; otherwise chunked when its
//!   `Transfer-Encoding` ends in `chunked`; a
//!   `Content-Length` body has the one length every value names), and a
//!   connection whose response is framed by its close, or by both fields,
//!   is never kept.
//! - a response head relayed as it arrived (`h1::relay`) frames its body
//!   and keeps its connection as its map would, its body's bytes follow
//!   it alike, and its lines make the map the gateway would have passed
//!   on (the map path's, hop-by-hop fields stripped, less `X-Request-Id`).

use bytes::{Bytes, BytesMut};
use http::HeaderMap;
use portico_gateway::h1::framing::{
    BodyDecoder, BodyFraming, CHUNK_END, Frame, chunk_size_line, last_chunk,
};
use portico_gateway::h1::{client, head};

/// Largest head accepted in the check (small, to reach the limit).
const MAX_HEAD: usize = 2048;

/// What decoding one body gave.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    Complete {
        data: Vec<u8>,
        trailers: Option<HeaderMap>,
        left: usize,
    },
    Incomplete {
        data: Vec<u8>,
    },
    Refused,
}

/// Runs one input; panics when an oracle does not hold.
pub fn check(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let step = usize::from((mode >> 1) & 0x3f) + 1;
    if mode & 1 == 1 {
        body(BodyFraming::Chunked, rest, step);
    } else if mode & 0x80 != 0 {
        response(rest, step);
    } else {
        request(rest, step);
    }
}

fn response(bytes: &[u8], step: usize) {
    let mut buf = BytesMut::from(bytes);
    let h = match client::parse_head(&mut buf, false, false) {
        Ok(Some(h)) => h,
        Ok(None) => return,
        // The exchange fails (502) and the connection is dropped.
        Err(_) => return,
    };
    relayed_alike(bytes, &h, &buf);
    assert!(
        !h.status.is_informational(),
        "an interim head taken as final"
    );
    let te = h.headers.contains_key(http::header::TRANSFER_ENCODING);
    let cl = h.headers.contains_key(http::header::CONTENT_LENGTH);
    if te && cl {
        assert!(!h.keep_alive, "kept a connection framed two ways");
    }
    let Some(framing) = h.body else {
        assert!(!h.keep_alive, "kept a connection read to its close");
        return;
    };
    // 204 and 304 have no body, whatever their fields say.
    let bodiless = matches!(h.status.as_u16(), 204 | 304);
    if bodiless {
        assert_eq!(framing, BodyFraming::Empty, "a body on a {}", h.status);
    } else if te {
        assert_eq!(framing, BodyFraming::Chunked);
    }
    if let BodyFraming::Length(n) = framing {
        for v in h.headers.get_all(http::header::CONTENT_LENGTH) {
            for part in v.to_str().expect("digits").split(',') {
                assert_eq!(part.trim().parse::<u64>().ok(), Some(n));
            }
        }
    }
    body(framing, &buf, step);
}

/// The same head parsed to be relayed says what its map said (`h`, with
/// `rest` left after it).
fn relayed_alike(bytes: &[u8], h: &client::ResponseHead, rest: &[u8]) {
    let mut buf = BytesMut::from(bytes);
    let r = client::parse_head(&mut buf, false, true)
        .expect("a head the map path takes is taken")
        .expect("complete");
    assert_eq!(
        (r.status, r.body, r.keep_alive),
        (h.status, h.body, h.keep_alive)
    );
    if r.held.is_empty() {
        assert_eq!(r.headers, h.headers);
        assert_eq!(&buf[..], rest);
        return;
    }
    let relayed = r.held.relayed(&buf.split_to(r.held.len()).freeze());
    assert_eq!(
        &buf[..],
        rest,
        "the body's bytes follow a relayed head alike"
    );
    let mut map = HeaderMap::new();
    relayed.into_map(&mut map);
    let mut expected = h.headers.clone();
    portico_gateway::proxy::strip_hop_by_hop(&mut expected);
    expected.remove("x-request-id");
    assert_eq!(map, expected, "relayed lines make the map passed on");
}

fn request(bytes: &[u8], step: usize) {
    let mut buf = BytesMut::from(bytes);
    let parsed = head::parse(&mut buf, MAX_HEAD);
    let h = match parsed {
        Ok(Some(h)) => h,
        Ok(None) => {
            assert_eq!(buf.len(), bytes.len(), "a partial head consumed bytes");
            return;
        }
        // The connection answers and closes: what is left does not matter.
        Err(_) => return,
    };
    let taken = bytes.len() - buf.len();
    let mut slots = [httparse::EMPTY_HEADER; head::MAX_HEADERS];
    let mut again = httparse::Request::new(&mut slots);
    assert_eq!(
        again.parse(bytes).ok(),
        Some(httparse::Status::Complete(taken)),
        "the head taken is not the head httparse finds"
    );
    let te = h.headers.contains_key(http::header::TRANSFER_ENCODING);
    let cl = h.headers.contains_key(http::header::CONTENT_LENGTH);
    assert!(!(te && cl), "accepted both framings");
    if te {
        assert_eq!(h.body, BodyFraming::Chunked);
    }
    if let BodyFraming::Length(n) = h.body {
        for v in h.headers.get_all(http::header::CONTENT_LENGTH) {
            for part in v.to_str().expect("digits").split(',') {
                assert_eq!(part.trim().parse::<u64>().ok(), Some(n));
            }
        }
    }
    body(h.body, &buf, step);
}

fn body(framing: BodyFraming, bytes: &[u8], step: usize) {
    let whole = decode(framing, bytes, bytes.len().max(1));
    let pieces = decode(framing, bytes, step);
    assert_eq!(whole, pieces, "decoding in pieces of {step} differs");
    match (framing, &whole) {
        (BodyFraming::Length(n), Outcome::Complete { data, left, .. }) => {
            assert_eq!(data.len() as u64, n);
            assert_eq!(
                *left,
                bytes.len() - data.len(),
                "a length body took a pipelined byte"
            );
        }
        (BodyFraming::Chunked, Outcome::Complete { data, trailers, .. }) => {
            round_trip(data, trailers.as_ref());
        }
        _ => {}
    }
}

/// Decodes `bytes` arriving `step` at a time.
fn decode(framing: BodyFraming, bytes: &[u8], step: usize) -> Outcome {
    let mut d = BodyDecoder::new(framing);
    let mut buf = BytesMut::new();
    let (mut data, mut trailers, mut fed) = (Vec::new(), None, 0);
    loop {
        match d.decode(&mut buf) {
            Err(_) => return Outcome::Refused,
            Ok(Some(Frame::Data(b))) => {
                assert!(!b.is_empty(), "an empty data frame");
                data.extend_from_slice(&b);
            }
            Ok(Some(Frame::Trailers(t))) => {
                assert!(trailers.replace(t).is_none(), "trailers twice");
            }
            Ok(Some(Frame::End)) => {
                let left = buf.len() + bytes.len() - fed;
                return Outcome::Complete {
                    data,
                    trailers,
                    left,
                };
            }
            Ok(None) if fed == bytes.len() => return Outcome::Incomplete { data },
            Ok(None) => {
                let end = (fed + step).min(bytes.len());
                buf.extend_from_slice(&bytes[fed..end]);
                fed = end;
            }
        }
    }
}

fn round_trip(data: &[u8], trailers: Option<&HeaderMap>) {
    let mut wire = Vec::new();
    for piece in data.chunks(7) {
        wire.extend_from_slice(chunk_size_line(piece.len()).as_ref());
        wire.extend_from_slice(piece);
        wire.extend_from_slice(CHUNK_END);
    }
    wire.extend_from_slice(&last_chunk(trailers));
    let again = decode(BodyFraming::Chunked, &Bytes::from(wire), 3);
    let want = Outcome::Complete {
        data: data.to_vec(),
        trailers: trailers.cloned(),
        left: 0,
    };
    assert_eq!(again, want, "re-encoding does not decode to the same body");
}
