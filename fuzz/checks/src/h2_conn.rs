//! `h2_conn`: bytes into one HTTP/2 connection's protocol state
//! (`portico_gateway::h2::conn`), server side, no sockets.
//!
//! The first byte chooses: bit 0 set, the client's preface and an empty
//! SETTINGS frame go first (so the fuzzer starts past the handshake);
//! bit 1 set, every request is answered at once (a 200 head and three
//! bytes, or as many as the windows allow) and every body part taken;
//! bits 2-3, the concurrent stream limit (1, 2, 16 or 256); bits 4-5, the
//! piece size the rest arrives in (1, 3, 17 or 4,096 bytes); bit 6, the
//! server goes away (GOAWAY) after the first request; bit 7, it resets
//! every third request it is given.
//!
//! Oracles:
//! - nothing panics;
//! - everything the connection writes parses as frames;
//! - once it reports a connection error, it keeps reporting one and
//!   writes nothing more;
//! - it never serves more streams at once than its limit;
//! - the last stream its GOAWAY frames name never rises (section 6.8);
//! - one request per stream, on odd streams only; every other event comes
//!   after its stream's request and before any reset of it.

use std::collections::HashSet;

use bytes::BytesMut;
use http::{HeaderMap, StatusCode};
use portico_gateway::h2::conn::{Config, Conn, Event, PREFACE};
use portico_gateway::h2::frame::{self, Frame, Reason};

/// Runs one input; panics when an oracle does not hold.
pub fn check(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let limit = [1, 2, 16, 256][usize::from(mode >> 2 & 3)];
    let config = Config {
        max_concurrent_streams: limit,
        ..Config::default()
    };
    let mut run = Run {
        conn: Conn::new(config),
        answer: mode & 2 != 0,
        go_away: mode & 0x40 != 0,
        reset_some: mode & 0x80 != 0,
        opened: HashSet::new(),
        reset: HashSet::new(),
        failed: false,
        last_goaway: u32::MAX,
    };
    let mut input = Vec::new();
    if mode & 1 != 0 {
        input.extend_from_slice(PREFACE);
        input.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0, 0, 0]);
    }
    input.extend_from_slice(rest);
    let piece = [1, 3, 17, 4096][usize::from(mode >> 4 & 3)];
    let mut buf = BytesMut::new();
    for chunk in input.chunks(piece) {
        buf.extend_from_slice(chunk);
        run.step(&mut buf, limit);
    }
}

struct Run {
    conn: Conn,
    answer: bool,
    go_away: bool,
    reset_some: bool,
    /// The last stream the latest GOAWAY named.
    last_goaway: u32,
    /// Streams a request event opened.
    opened: HashSet<u32>,
    /// Streams a reset event ended: nothing more may come for them.
    reset: HashSet<u32>,
    failed: bool,
}

impl Run {
    fn step(&mut self, buf: &mut BytesMut, limit: u32) {
        let outcome = self.conn.recv(buf);
        if self.failed {
            assert!(outcome.is_err(), "a failed connection stays failed");
        }
        for event in self.conn.take_events() {
            self.event(event);
        }
        assert!(self.conn.open_streams() <= limit as usize);
        let wrote = !self.conn.out.is_empty();
        let mut out = std::mem::take(&mut self.conn.out);
        while let Some(frame) = frame::parse(&mut out, frame::MAX_MAX_FRAME_SIZE)
            .expect("what the connection writes parses")
        {
            if let Frame::GoAway { last_stream, .. } = frame {
                assert!(
                    last_stream <= self.last_goaway,
                    "a GOAWAY named a later stream"
                );
                self.last_goaway = last_stream;
            }
        }
        assert!(out.is_empty(), "only whole frames written");
        if self.failed {
            assert!(!wrote, "nothing written after a connection error");
        }
        self.failed |= outcome.is_err();
    }

    fn event(&mut self, event: Event) {
        match event {
            Event::Request { stream, .. } => {
                assert!(stream % 2 == 1, "a request on an even stream {stream}");
                assert!(self.opened.insert(stream), "one request per stream");
                if self.go_away {
                    self.conn.go_away();
                }
                if self.reset_some && self.opened.len().is_multiple_of(3) {
                    self.conn.reset(stream, Reason::CANCEL);
                    // Its own reset event comes with the next events.
                    return;
                }
                if self.answer {
                    self.conn
                        .respond(stream, StatusCode::OK, (&HeaderMap::new(), None), false);
                    self.conn.send_data(stream, b"abc", true);
                }
            }
            Event::Data { stream, data, .. } => {
                self.assert_live(stream);
                if self.answer {
                    self.conn.release(stream, data.len());
                }
            }
            Event::Trailers { stream, .. } => self.assert_live(stream),
            Event::Reset { stream, .. } => {
                self.assert_live(stream);
                self.reset.insert(stream);
            }
            Event::GoAway { .. } => {}
        }
    }

    /// An event for `stream` comes after its request and before any reset.
    fn assert_live(&self, stream: u32) {
        assert!(
            self.opened.contains(&stream),
            "an event for stream {stream} before its request"
        );
        assert!(
            !self.reset.contains(&stream),
            "an event for stream {stream} after its reset"
        );
    }
}
