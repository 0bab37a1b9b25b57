//! `h2_client`: bytes from an upstream into one HTTP/2 connection's
//! protocol state, client side (`portico_gateway::h2::client_conn`), no
//! sockets.
//!
//! The first byte chooses: bit 0 set, an empty SETTINGS frame goes first
//! (so the fuzzer starts past the server's preface); bits 1-2, how many
//! requests are opened before the bytes arrive (1, 2, 4 or 8, as many as
//! the connection allows), bit 3, whether they have bodies (sent as the
//! windows allow, after each piece); bits 4-5, the piece size the rest
//! arrives in (1, 3, 17 or 4,096 bytes); bit 6, body bytes are taken as
//! they come (opening the windows again); bit 7, every second stream is
//! cancelled once its response head comes.
//!
//! Oracles:
//! - nothing panics;
//! - everything the connection writes (past its preface) parses as frames;
//! - once it reports a connection error, it keeps reporting one and
//!   writes nothing more;
//! - events come only for streams this side opened: one response head per
//!   stream, then its body and trailers, nothing after a reset or after
//!   the end of the response (but a reset, while this side may still send
//!   its body), and nothing for a stream this side cancelled.

use std::collections::{HashMap, HashSet};

use bytes::BytesMut;
use http::HeaderMap;
use portico_gateway::h2::client_conn::{ClientConn, Config, Event};
use portico_gateway::h2::conn::PREFACE;
use portico_gateway::h2::frame::{self, Reason};
use portico_gateway::h2::hpack::Target;

const GET: Target<'static> = Target {
    method: "POST",
    scheme: "http",
    authority: Some("origin.test"),
    path: "/pkg.Service/Call",
};

/// Where a stream is, as the events told it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Seen {
    Opened,
    Answered,
    Ended,
    Reset,
}

/// Runs one input; panics when an oracle does not hold.
pub fn check(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let mut conn = ClientConn::new(Config::default());
    assert!(conn.out.starts_with(PREFACE));
    let _ = conn.out.split_to(PREFACE.len());
    let mut run = Run {
        conn,
        streams: HashMap::new(),
        cancelled: HashSet::new(),
        bodies: mode & 8 != 0,
        take: mode & 0x40 != 0,
        cancel_some: mode & 0x80 != 0,
        failed: false,
        answered: 0,
    };
    run.open([1, 2, 4, 8][usize::from(mode >> 1 & 3)]);
    run.drain_out(false);
    let mut input = Vec::new();
    if mode & 1 != 0 {
        input.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0, 0, 0]);
    }
    input.extend_from_slice(rest);
    let piece = [1, 3, 17, 4096][usize::from(mode >> 4 & 3)];
    let mut buf = BytesMut::new();
    for chunk in input.chunks(piece) {
        buf.extend_from_slice(chunk);
        run.step(&mut buf);
    }
}

struct Run {
    conn: ClientConn,
    streams: HashMap<u32, Seen>,
    cancelled: HashSet<u32>,
    bodies: bool,
    take: bool,
    cancel_some: bool,
    failed: bool,
    answered: usize,
}

impl Run {
    fn open(&mut self, n: usize) {
        for _ in 0..n {
            if !self.conn.can_open() {
                return;
            }
            let stream = self.conn.open(&GET, (&HeaderMap::new(), &[]), !self.bodies);
            assert!(stream % 2 == 1, "an even stream opened");
            assert!(self.streams.insert(stream, Seen::Opened).is_none());
        }
    }

    fn step(&mut self, buf: &mut BytesMut) {
        let outcome = self.conn.recv(buf);
        if self.failed {
            assert!(outcome.is_err(), "a failed connection stays failed");
        }
        let mut events = Vec::new();
        self.conn.swap_events(&mut events);
        for event in events {
            self.event(event);
        }
        if self.bodies {
            let streams: Vec<u32> = self.streams.keys().copied().collect();
            for stream in streams {
                self.conn.send_data(stream, b"body bytes", true);
            }
        }
        let failed = self.failed;
        self.drain_out(failed);
        self.failed |= outcome.is_err();
    }

    /// Parses what the connection wrote; nothing at all after a failure.
    fn drain_out(&mut self, failed: bool) {
        let wrote = !self.conn.out.is_empty();
        let mut out = std::mem::take(&mut self.conn.out);
        while frame::parse(&mut out, frame::MAX_MAX_FRAME_SIZE)
            .expect("what the connection writes parses")
            .is_some()
        {}
        assert!(out.is_empty(), "only whole frames written");
        if failed {
            assert!(!wrote, "nothing written after a connection error");
        }
    }

    fn event(&mut self, event: Event) {
        match event {
            Event::Response {
                stream, end_stream, ..
            } => {
                self.expect(stream, Seen::Opened);
                let next = if end_stream {
                    Seen::Ended
                } else {
                    Seen::Answered
                };
                self.streams.insert(stream, next);
                self.answered += 1;
                if self.cancel_some && self.answered.is_multiple_of(2) {
                    self.conn.cancel(stream, Reason::CANCEL);
                    self.cancelled.insert(stream);
                }
            }
            Event::Data {
                stream,
                data,
                end_stream,
            } => {
                self.expect(stream, Seen::Answered);
                if self.take {
                    self.conn.release(stream, data.len());
                }
                if end_stream {
                    self.streams.insert(stream, Seen::Ended);
                }
            }
            Event::Trailers { stream, .. } => {
                self.expect(stream, Seen::Answered);
                self.streams.insert(stream, Seen::Ended);
            }
            Event::Reset { stream, .. } => {
                // After the response's end only while this side may still
                // be sending its body (the server's "stop sending").
                let seen = self.streams.get(&stream).copied();
                let live = matches!(seen, Some(Seen::Opened | Seen::Answered))
                    || (self.bodies && seen == Some(Seen::Ended));
                assert!(live, "a reset of stream {stream} in state {seen:?}");
                assert!(!self.cancelled.contains(&stream));
                self.streams.insert(stream, Seen::Reset);
            }
        }
    }

    fn expect(&self, stream: u32, want: Seen) {
        assert!(
            !self.cancelled.contains(&stream),
            "an event for stream {stream} after it was cancelled"
        );
        let seen = self.streams.get(&stream).copied();
        assert_eq!(
            seen,
            Some(want),
            "an event for stream {stream} out of order"
        );
    }
}
