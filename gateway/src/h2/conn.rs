//! One HTTP/2 connection's protocol state, server side, with no I/O: bytes
//! read go in ([`Conn::recv`]), requests and their bodies come out as
//! [`Event`]s, responses go in by stream, and the frames to write gather
//! in [`Conn::out`] for the caller to send.
//!
//! It keeps what RFC 9113 makes a server keep: the preface and the
//! settings exchange, stream states and identifiers, field blocks across
//! CONTINUATION frames, both directions' flow-control windows, and the
//! graceful GOAWAY. A connection error writes its GOAWAY and ends the
//! connection ([`Conn::recv`] returns it); a stream error writes a
//! RST_STREAM and the connection goes on.
//!
//! Limits beyond the protocol's, against floods (the h2 crate has the
//! same kinds):
//! - a request's field block over [`Config::max_header_list_size`] is
//!   answered 431 (trailers over it reset the stream), and one whose
//!   fragments pass twice that, or 64 KiB, ends the connection
//!   (`ENHANCE_YOUR_CALM`; a CONTINUATION flood is cut short);
//! - every stream reset while it is served, by the client or by this side
//!   for the client's error, counts against a budget that each finished
//!   response refills by one, so requests reset at once ("rapid reset",
//!   and resets the client provokes) end the connection
//!   (`ENHANCE_YOUR_CALM`) instead of starting unbounded work;
//! - empty DATA frames that end nothing count too (1,000 with no data
//!   between them end it), as do more than 64 CONTINUATION frames for one
//!   block, and PINGs or SETTINGS sent while a megabyte of answers waits
//!   unread.

use std::collections::VecDeque;

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, StatusCode};

use super::frame::{self, Frame, FrameError, Reason, Settings};
use super::hpack::{Decoder, Encoder};
use super::request::{Head, HeadBuilder, Refusal};
use super::table::Field;

/// What a client sends first (section 3.4).
pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// The initial flow-control window of every stream and of the connection.
pub const DEFAULT_WINDOW: u32 = 65_535;
/// Bytes waiting to be written past which a PING or SETTINGS is taken for
/// a flood (`ENHANCE_YOUR_CALM`).
const MAX_BACKLOG: usize = 1 << 20;
/// The highest stream identifier there can be: the first GOAWAY of a
/// graceful close names it.
const MAX_STREAM: u32 = (1 << 31) - 1;
/// The payload of the PING that follows that first GOAWAY.
const DRAIN_PING: [u8; 8] = *b"portico.";

/// This side's settings and limits.
#[derive(Debug, Clone)]
pub struct Config {
    pub max_concurrent_streams: u32,
    /// Each stream's receive window (`SETTINGS_INITIAL_WINDOW_SIZE`).
    pub stream_window: u32,
    /// The connection's receive window (raised from 65,535 by a
    /// WINDOW_UPDATE right after the settings).
    pub connection_window: u32,
    pub max_header_list_size: u32,
    /// Streams that may be reset while served (see the module's comment)
    /// beyond those each finished response earns back; at least 1.
    pub reset_budget: u32,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            max_concurrent_streams: 256,
            stream_window: 1 << 20,
            connection_window: 1 << 20,
            max_header_list_size: 64 * 1024,
            reset_budget: 200,
        }
    }
}

/// What the connection hands the server.
#[derive(Debug)]
pub enum Event {
    /// A new request; its body follows as `Data` unless `end_stream`.
    Request {
        stream: u32,
        head: Head,
        end_stream: bool,
    },
    /// Part of a request body. Its bytes count against the windows until
    /// the server says it took them ([`Conn::release`]).
    Data {
        stream: u32,
        data: Bytes,
        end_stream: bool,
    },
    /// A request's trailers, which end its body.
    Trailers { stream: u32, trailers: HeaderMap },
    /// The client reset the stream, or a stream error reset it, or this
    /// side finished its response before the client finished its request
    /// (`NO_ERROR`): whatever still serves it, or reads its body, should
    /// stop.
    Reset { stream: u32, reason: Reason },
    /// The client is going away: no new streams will come.
    GoAway { last_stream: u32, reason: Reason },
}

/// Where the connection is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Waiting for the client's preface.
    Preface,
    /// The preface came; the client's SETTINGS must come next.
    FirstSettings,
    Open,
    /// A connection error was sent: nothing more is read.
    Failed,
}

/// A stream's state, as far as this side keeps one (idle and closed
/// streams have no entry).
#[derive(Debug)]
struct Stream {
    /// The client has not ended its side yet.
    recv_open: bool,
    /// This side has not ended its side yet.
    send_open: bool,
    /// Whether a response head went out (one per stream).
    responded: bool,
    /// What the client may still send before a WINDOW_UPDATE.
    recv_window: i64,
    /// Body bytes handed to the server and not yet taken
    /// ([`Conn::release`]): given back to the connection if the stream goes.
    outstanding: u32,
    /// Bytes taken and not yet given back to the client in a WINDOW_UPDATE.
    released: u32,
    /// What this side may still send.
    send_window: i64,
    /// The request's `content-length`, and the DATA received so far.
    content_length: Option<u64>,
    received: u64,
}

/// A field block that CONTINUATION frames are still adding to.
#[derive(Debug)]
struct Pending {
    head: recv::BlockHead,
    block: BytesMut,
    continuations: u32,
}

/// How many events the connection's vectors make room for at once.
#[derive(Debug, Default)]
struct EventsRoom {
    /// The most events one read gave in the last busy period.
    last: usize,
    /// The most one read gave in this one, so far.
    now: usize,
}

impl EventsRoom {
    /// No vector is made larger than this at once (31 kB): room for a burst
    /// of 32 unary gRPC calls (a HEADERS and a DATA event each) twice over.
    /// A read of hundreds of small frames does not make every later wake-up
    /// of the connection reserve for hundreds.
    const MOST: usize = 128;

    fn seen(&mut self, events: usize) {
        self.now = self.now.max(events);
    }

    /// A busy period ended: the next one expects as many events as it had.
    fn period_ended(&mut self) {
        if self.now > 0 {
            self.last = self.now.min(Self::MOST);
            self.now = 0;
        }
    }

    fn hint(&self) -> usize {
        self.last.max(self.now).clamp(4, Self::MOST)
    }
}

/// One connection's protocol state.
#[derive(Debug)]
pub struct Conn {
    config: Config,
    phase: Phase,
    decoder: Decoder,
    encoder: Encoder,
    /// The client's settings that this side obeys.
    peer_window: u32,
    peer_max_frame: u32,
    streams: super::StreamMap<Stream>,
    /// The highest stream the client opened.
    last_stream: u32,
    /// Once this side sent GOAWAY: the last stream it will serve.
    goaway: Option<u32>,
    /// The first of the two GOAWAYs of a graceful close went out with a
    /// PING; the second, naming the last stream, waits for its ACK.
    drain_ping: bool,
    pending: Option<Pending>,
    recv_window: i64,
    released: u32,
    send_window: i64,
    resets_left: u32,
    /// Streams this side reset lately (see `recv::RECENT_RESETS`).
    recent_resets: VecDeque<u32>,
    /// Streams that ended lately, however (as many as `recent_resets`).
    recent_closed: VecDeque<u32>,
    empty_frames: u32,
    events: Vec<Event>,
    /// The room the events get when they come again after the connection
    /// let go of it ([`Conn::shed_idle_room`]), and the most events one
    /// read gave since then: see [`Conn::push_event`].
    events_room: EventsRoom,
    /// Where a header block is encoded before it is framed (kept: one
    /// allocation per connection, not per response).
    scratch: BytesMut,
    /// Frames to write, in order.
    pub out: BytesMut,
}

type Step = Result<(), FrameError>;

fn conn_error(reason: Reason) -> FrameError {
    FrameError::Connection(reason)
}

impl Conn {
    pub fn new(mut config: Config) -> Conn {
        // Windows the protocol allows and no smaller than the initial one
        // (a client may send that much before it sees these settings), and
        // at least one reset.
        let window = |w: u32| w.clamp(DEFAULT_WINDOW, frame::MAX_WINDOW);
        config.stream_window = window(config.stream_window);
        config.connection_window = window(config.connection_window);
        config.reset_budget = config.reset_budget.max(1);
        let mut conn = Conn {
            decoder: Decoder::new(4096),
            encoder: Encoder::default(),
            phase: Phase::Preface,
            peer_window: DEFAULT_WINDOW,
            peer_max_frame: frame::DEFAULT_MAX_FRAME_SIZE,
            streams: super::StreamMap::default(),
            last_stream: 0,
            goaway: None,
            drain_ping: false,
            pending: None,
            recv_window: i64::from(DEFAULT_WINDOW),
            released: 0,
            send_window: i64::from(DEFAULT_WINDOW),
            resets_left: config.reset_budget,
            recent_resets: VecDeque::new(),
            recent_closed: VecDeque::new(),
            empty_frames: 0,
            events: Vec::new(),
            events_room: EventsRoom::default(),
            scratch: BytesMut::new(),
            out: BytesMut::new(),
            config,
        };
        conn.write_settings();
        conn
    }

    /// This side's SETTINGS, and the connection window raised to its size.
    fn write_settings(&mut self) {
        let settings = Settings {
            max_concurrent_streams: Some(self.config.max_concurrent_streams),
            initial_window_size: Some(self.config.stream_window),
            max_header_list_size: Some(self.config.max_header_list_size),
            enable_push: Some(false),
            ..Settings::default()
        };
        settings.write(&mut self.out);
        let raise = i64::from(self.config.connection_window) - self.recv_window;
        if raise > 0 {
            frame::write_window_update(&mut self.out, 0, raise as u32);
            self.recv_window += raise;
        }
    }

    /// Takes every whole frame off `buf` and acts on it. The events they
    /// gave are in [`Conn::take_events`]; frames to write in `out`. On a
    /// connection error its GOAWAY is in `out` and it is returned: write
    /// `out`, then close.
    pub fn recv(&mut self, buf: &mut BytesMut) -> Result<(), Reason> {
        if self.phase == Phase::Failed {
            return Err(Reason::PROTOCOL_ERROR);
        }
        if self.phase == Phase::Preface && !self.preface(buf)? {
            return Ok(());
        }
        loop {
            let frame = match frame::parse(buf, frame::DEFAULT_MAX_FRAME_SIZE) {
                Ok(Some(frame)) => frame,
                Ok(None) => return Ok(()),
                Err(FrameError::Stream(stream, reason)) => {
                    // A frame wrong on its own (PRIORITY, WINDOW_UPDATE) is
                    // the connection's error where no frame of its kind may
                    // come (the handshake, a field block under way), or
                    // where its stream is idle (no RST_STREAM for those).
                    let forbidden = self.phase == Phase::FirstSettings
                        || self.pending.is_some()
                        || self.check_not_idle(stream).is_err();
                    let error = match forbidden {
                        true => conn_error(Reason::PROTOCOL_ERROR),
                        false => FrameError::Stream(stream, reason),
                    };
                    self.fail_or_reset(error)?;
                    continue;
                }
                Err(e) => return self.fail_or_reset(e),
            };
            if let Err(e) = self.frame(frame) {
                self.fail_or_reset(e)?;
            }
        }
    }

    /// Checks the preface at the front of `buf`: `false` while it is still
    /// arriving.
    fn preface(&mut self, buf: &mut BytesMut) -> Result<bool, Reason> {
        let have = buf.len().min(PREFACE.len());
        if buf[..have] != PREFACE[..have] {
            return Err(self.fail(Reason::PROTOCOL_ERROR));
        }
        if have < PREFACE.len() {
            return Ok(false);
        }
        let _ = buf.split_to(PREFACE.len());
        self.phase = Phase::FirstSettings;
        Ok(true)
    }

    /// A stream error resets that stream; a connection error ends it all.
    /// A stream the server was serving costs one of the reset budget
    /// however it came to be reset: a client can provoke resets (a zero
    /// WINDOW_UPDATE, DATA past the window) as cheaply as send them.
    fn fail_or_reset(&mut self, error: FrameError) -> Result<(), Reason> {
        match error {
            FrameError::Connection(reason) => Err(self.fail(reason)),
            FrameError::Stream(stream, reason) => {
                if self.streams.contains_key(&stream) {
                    self.spend_reset()
                        .map_err(|_| self.fail(Reason::ENHANCE_YOUR_CALM))?;
                }
                self.reset(stream, reason);
                Ok(())
            }
        }
    }

    /// One of the reset budget, or the connection's error once it is spent.
    fn spend_reset(&mut self) -> Step {
        match self.resets_left.checked_sub(1) {
            Some(left) => {
                self.resets_left = left;
                Ok(())
            }
            None => Err(conn_error(Reason::ENHANCE_YOUR_CALM)),
        }
    }

    /// Writes GOAWAY for a connection error; nothing more is read. Its last
    /// stream is never above one an earlier GOAWAY named (section 6.8).
    fn fail(&mut self, reason: Reason) -> Reason {
        if self.phase != Phase::Failed {
            let last = self
                .goaway
                .map_or(self.last_stream, |g| g.min(self.last_stream));
            frame::write_goaway(&mut self.out, last, reason);
            self.phase = Phase::Failed;
        }
        reason
    }

    /// The events the frames read so far gave, in order.
    pub fn take_events(&mut self) -> Vec<Event> {
        std::mem::take(&mut self.events)
    }

    /// The same, swapped into `into` (which must be empty): the caller's
    /// vector and this one take turns, so neither is allocated again.
    pub fn swap_events(&mut self, into: &mut Vec<Event>) {
        debug_assert!(into.is_empty());
        self.events_room.seen(self.events.len());
        std::mem::swap(&mut self.events, into);
    }

    /// Lets go of what the connection keeps for work when none waits (an
    /// idle connection's; the next frame makes it again): the room for
    /// events, 248 bytes an event, the decoder's last Huffman-decoded
    /// string, and a write buffer grown past [`super::io::IDLE_OUT_KEPT`]
    /// by a burst of responses.
    pub fn shed_idle_room(&mut self) {
        if self.events.is_empty() {
            self.events = Vec::new();
        }
        self.events_room.period_ended();
        self.decoder.forget_last();
        super::io::shed_written(&mut self.out);
    }

    /// Adds an event. Vectors without room (the first event since the
    /// connection let go of it while idle) get room for as many as one read
    /// gave in the last busy period at once: under load, a connection goes
    /// idle between its client's bursts, and growing the two vectors
    /// again from 4 events each time cost about 0.9% of a unary gRPC
    /// call's CPU (`_int_malloc` under `realloc`: events are 248 bytes).
    fn push_event(&mut self, event: Event) {
        if self.events.capacity() == 0 {
            self.events.reserve_exact(self.events_room.hint());
        }
        self.events.push(event);
    }

    fn frame(&mut self, frame: Frame) -> Step {
        if self.phase == Phase::FirstSettings && !matches!(frame, Frame::Settings(_)) {
            return Err(conn_error(Reason::PROTOCOL_ERROR));
        }
        if let Some(pending) = &self.pending {
            let follows = matches!(frame, Frame::Continuation { stream, .. } if stream == pending.head.stream());
            if !follows {
                return Err(conn_error(Reason::PROTOCOL_ERROR));
            }
        }
        match frame {
            Frame::Settings(settings) => self.settings(settings),
            Frame::SettingsAck | Frame::Priority { .. } | Frame::Unknown { .. } => Ok(()),
            Frame::Ping { ack, payload } => {
                if !ack {
                    self.check_backlog()?;
                    frame::write_ping_ack(&mut self.out, payload);
                } else if payload == DRAIN_PING {
                    self.finish_go_away();
                }
                Ok(())
            }
            Frame::GoAway {
                last_stream,
                reason,
            } => {
                self.push_event(Event::GoAway {
                    last_stream,
                    reason,
                });
                Ok(())
            }
            Frame::WindowUpdate { stream, increment } => self.window_update(stream, increment),
            Frame::Reset { stream, reason } => self.client_reset(stream, reason),
            Frame::Headers {
                stream,
                fragment,
                end_stream,
                end_headers,
                self_dependent,
            } => self.headers(stream, &fragment, (end_stream, end_headers), self_dependent),
            Frame::Continuation {
                fragment,
                end_headers,
                ..
            } => self.continuation(&fragment, end_headers),
            Frame::Data {
                stream,
                data,
                end_stream,
                flow_len,
            } => self.data(stream, data, end_stream, flow_len),
        }
    }

    /// Answers (PING and SETTINGS acknowledgements) queue unread past
    /// this: a client that sends them without reading its answers is a
    /// flood.
    fn check_backlog(&self) -> Step {
        match self.out.len() > MAX_BACKLOG {
            true => Err(conn_error(Reason::ENHANCE_YOUR_CALM)),
            false => Ok(()),
        }
    }

    fn settings(&mut self, settings: Settings) -> Step {
        self.check_backlog()?;
        self.phase = Phase::Open;
        if let Some(window) = settings.initial_window_size {
            let delta = i64::from(window) - i64::from(self.peer_window);
            self.peer_window = window;
            for stream in self.streams.values_mut() {
                stream.send_window += delta;
                if stream.send_window > i64::from(frame::MAX_WINDOW) {
                    return Err(conn_error(Reason::FLOW_CONTROL_ERROR));
                }
            }
        }
        if let Some(max) = settings.max_frame_size {
            self.peer_max_frame = max;
        }
        if settings.header_table_size.is_some() {
            self.encoder.peer_table_size_changed();
        }
        frame::write_settings_ack(&mut self.out);
        Ok(())
    }

    fn window_update(&mut self, stream: u32, increment: u32) -> Step {
        let max = i64::from(frame::MAX_WINDOW);
        if stream == 0 {
            self.send_window += i64::from(increment);
            return match self.send_window > max {
                true => Err(conn_error(Reason::FLOW_CONTROL_ERROR)),
                false => Ok(()),
            };
        }
        self.check_not_idle(stream)?;
        if let Some(s) = self.streams.get_mut(&stream) {
            s.send_window += i64::from(increment);
            if s.send_window > max {
                return Err(FrameError::Stream(stream, Reason::FLOW_CONTROL_ERROR));
            }
        }
        Ok(())
    }

    /// A frame other than HEADERS or PRIORITY on a stream the client has
    /// not opened yet is a connection error (section 5.1, "idle").
    fn check_not_idle(&self, stream: u32) -> Step {
        match stream > self.last_stream || stream.is_multiple_of(2) {
            true => Err(conn_error(Reason::PROTOCOL_ERROR)),
            false => Ok(()),
        }
    }

    fn client_reset(&mut self, stream: u32, reason: Reason) -> Step {
        self.check_not_idle(stream)?;
        if !self.streams.contains_key(&stream) {
            return Ok(());
        }
        self.spend_reset()?;
        self.remove(stream);
        self.push_event(Event::Reset { stream, reason });
        Ok(())
    }
}

mod recv;
mod send;

#[cfg(test)]
mod tests;
