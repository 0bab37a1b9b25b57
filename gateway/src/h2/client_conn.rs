//! One HTTP/2 connection's protocol state, client side, with no I/O: the
//! mirror of [`super::conn`] for the connection the proxy opens to an
//! upstream. Requests go in ([`ClientConn::open`], then their bodies by
//! stream), bytes read go in ([`ClientConn::recv`]), responses and their
//! bodies come out as [`Event`]s, and the frames to write gather in
//! [`ClientConn::out`].
//!
//! It keeps what RFC 9113 makes a client keep: the preface and the
//! settings exchange, stream identifiers (odd, rising), the server's limit
//! on concurrent streams, field blocks across CONTINUATION frames (always
//! decoded, whatever became of the stream, so HPACK stays in step), both
//! directions' flow-control windows, and the server's GOAWAY (streams
//! above the last one it names were never processed: they come out as
//! refused, safe to send again elsewhere). A connection error writes its
//! GOAWAY and ends the connection; a stream error resets that stream and
//! tells the caller.
//!
//! An upstream is trusted more than a client, but not to be well made:
//! a response head over [`Config::max_header_list_size`] resets its
//! stream, and a field block whose fragments pass twice that, or that
//! takes more than 64 CONTINUATION frames, ends the connection.

use bytes::{Bytes, BytesMut};
use http::HeaderMap;

use super::conn::{DEFAULT_WINDOW, PREFACE};
use super::frame::{self, Frame, FrameError, Reason, Settings};
use super::hpack::{Decoder, Encoder, Target};
use super::response::{Head, HeadBuilder};

/// The highest stream identifier there can be.
const MAX_STREAM: u32 = (1 << 31) - 1;
/// CONTINUATION frames past which a field block is a flood.
const MAX_CONTINUATIONS: u32 = 64;

/// This side's settings.
#[derive(Debug, Clone)]
pub struct Config {
    /// Each stream's receive window (`SETTINGS_INITIAL_WINDOW_SIZE`).
    pub stream_window: u32,
    /// The connection's receive window (raised from 65,535 by a
    /// WINDOW_UPDATE right after the settings).
    pub connection_window: u32,
    pub max_header_list_size: u32,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            stream_window: 1 << 20,
            connection_window: 16 << 20,
            max_header_list_size: 64 * 1024,
        }
    }
}

/// What the connection hands the caller.
#[derive(Debug)]
pub enum Event {
    /// A stream's final response head; its body follows as `Data` unless
    /// `end_stream`. Informational (1xx) heads are passed over.
    Response {
        stream: u32,
        head: Head,
        end_stream: bool,
    },
    /// Part of a response body. Its bytes count against the windows until
    /// the caller says it took them ([`ClientConn::release`]).
    Data {
        stream: u32,
        data: Bytes,
        end_stream: bool,
    },
    /// A response's trailers, which end its body.
    Trailers { stream: u32, trailers: HeaderMap },
    /// The stream ended before its response did: the server reset it
    /// (`reason`), or this side did for the server's error. `refused`: the
    /// server did not process it (REFUSED_STREAM, or above a GOAWAY's last
    /// stream), so it may be sent again.
    Reset {
        stream: u32,
        reason: Reason,
        refused: bool,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Waiting for the server's first SETTINGS (its preface).
    Preface,
    Open,
    /// A connection error was sent, or the server's bytes ended.
    Failed,
}

/// An open stream (closed ones have no entry).
#[derive(Debug)]
struct Stream {
    /// The server has not ended its side yet.
    recv_open: bool,
    /// This side has not ended its side yet.
    send_open: bool,
    /// The final response head came.
    answered: bool,
    /// Its request is a HEAD: a `content-length` names no body.
    head_request: bool,
    recv_window: i64,
    /// Body bytes handed on and not yet taken ([`ClientConn::release`]).
    outstanding: u32,
    /// Bytes taken and not yet given back in a WINDOW_UPDATE.
    released: u32,
    send_window: i64,
    /// The response's `content-length` (when it binds), and DATA so far.
    content_length: Option<u64>,
    received: u64,
}

/// A field block that CONTINUATION frames are still adding to.
#[derive(Debug)]
struct Pending {
    stream: u32,
    end_stream: bool,
    block: BytesMut,
    continuations: u32,
}

/// One upstream connection's protocol state.
#[derive(Debug)]
pub struct ClientConn {
    config: Config,
    phase: Phase,
    decoder: Decoder,
    encoder: Encoder,
    peer_window: u32,
    peer_max_frame: u32,
    peer_max_streams: u32,
    streams: super::StreamMap<Stream>,
    next_stream: u32,
    /// The last stream the server's GOAWAY named.
    goaway: Option<u32>,
    pending: Option<Pending>,
    recv_window: i64,
    released: u32,
    send_window: i64,
    /// A keep-alive PING is out and unanswered.
    ping_out: bool,
    events: Vec<Event>,
    scratch: BytesMut,
    /// Frames to write, in order.
    pub out: BytesMut,
}

type Step = Result<(), FrameError>;

fn conn_error(reason: Reason) -> FrameError {
    FrameError::Connection(reason)
}

fn stream_error(stream: u32, reason: Reason) -> FrameError {
    FrameError::Stream(stream, reason)
}

impl ClientConn {
    /// A connection whose preface and settings are in `out`.
    pub fn new(mut config: Config) -> ClientConn {
        let window = |w: u32| w.clamp(DEFAULT_WINDOW, frame::MAX_WINDOW);
        config.stream_window = window(config.stream_window);
        config.connection_window = window(config.connection_window);
        let mut conn = ClientConn {
            phase: Phase::Preface,
            decoder: Decoder::new(4096),
            encoder: Encoder::default(),
            peer_window: DEFAULT_WINDOW,
            peer_max_frame: frame::DEFAULT_MAX_FRAME_SIZE,
            // One stream until the server's SETTINGS say how many: the
            // first request goes at once, others wait for the limit (not
            // refused by a server that allows fewer than were opened).
            peer_max_streams: 1,
            streams: super::StreamMap::default(),
            next_stream: 1,
            goaway: None,
            pending: None,
            recv_window: i64::from(DEFAULT_WINDOW),
            released: 0,
            send_window: i64::from(DEFAULT_WINDOW),
            ping_out: false,
            events: Vec::new(),
            scratch: BytesMut::new(),
            out: BytesMut::new(),
            config,
        };
        conn.out.extend_from_slice(PREFACE);
        let settings = Settings {
            enable_push: Some(false),
            initial_window_size: Some(conn.config.stream_window),
            max_header_list_size: Some(conn.config.max_header_list_size),
            ..Settings::default()
        };
        settings.write(&mut conn.out);
        let raise = i64::from(conn.config.connection_window) - conn.recv_window;
        if raise > 0 {
            frame::write_window_update(&mut conn.out, 0, raise as u32);
            conn.recv_window += raise;
        }
        conn
    }

    /// Whether a new stream may be opened now: the connection is sound,
    /// the server has not gone away, and it allows one more.
    pub fn can_open(&self) -> bool {
        self.phase != Phase::Failed
            && self.goaway.is_none()
            && self.next_stream <= MAX_STREAM
            && self.streams.len() < self.peer_max_streams as usize
    }

    /// Whether no stream will ever open here again.
    pub fn is_closed(&self) -> bool {
        self.phase == Phase::Failed || self.goaway.is_some() || self.next_stream > MAX_STREAM
    }

    /// Streams open or half closed.
    pub fn open_streams(&self) -> usize {
        self.streams.len()
    }

    /// The server's limit of concurrent streams, once its SETTINGS came
    /// (`u32::MAX` when they named none).
    pub fn peer_stream_limit(&self) -> Option<u32> {
        (self.phase != Phase::Preface).then_some(self.peer_max_streams)
    }

    /// Opens a stream with the request head `target` and `headers` (which
    /// must hold no connection-specific field), then `extra`: more fields
    /// already encoded as literals that touch no table
    /// ([`super::hpack::literal_fields`]); `end_stream` when it has no
    /// body. Only when [`ClientConn::can_open`].
    pub fn open(
        &mut self,
        target: &Target<'_>,
        (headers, extra): (&HeaderMap, &[u8]),
        end_stream: bool,
    ) -> u32 {
        debug_assert!(self.can_open());
        let stream = self.next_stream;
        self.next_stream += 2;
        self.streams.insert(
            stream,
            Stream {
                recv_open: true,
                send_open: !end_stream,
                answered: false,
                head_request: target.method == "HEAD",
                recv_window: i64::from(self.config.stream_window),
                outstanding: 0,
                released: 0,
                send_window: i64::from(self.peer_window),
                content_length: None,
                received: 0,
            },
        );
        self.scratch.clear();
        self.encoder.request(target, headers, &mut self.scratch);
        self.scratch.extend_from_slice(extra);
        frame::write_headers(
            &mut self.out,
            stream,
            &self.scratch,
            end_stream,
            self.peer_max_frame,
        );
        stream
    }

    /// Whether this side of `stream` is still open (its body may send).
    pub fn sending(&self, stream: u32) -> bool {
        self.phase != Phase::Failed && self.streams.get(&stream).is_some_and(|s| s.send_open)
    }

    /// How many body bytes the connection's window lets all streams send.
    pub fn connection_capacity(&self) -> usize {
        match self.phase {
            Phase::Failed => 0,
            _ => self.send_window.max(0) as usize,
        }
    }

    /// How many body bytes `stream` may send now (0 for a stream gone).
    pub fn capacity(&self, stream: u32) -> usize {
        match self.streams.get(&stream) {
            Some(s) if s.send_open && self.phase != Phase::Failed => {
                s.send_window.min(self.send_window).max(0) as usize
            }
            _ => 0,
        }
    }

    /// Writes as much of `data` as the windows allow, in frames of at most
    /// the server's frame size, and returns how much; with `end_stream`,
    /// the last frame ends this side once all of `data` is written (an
    /// empty `data` just ends it).
    pub fn send_data(&mut self, stream: u32, data: &[u8], end_stream: bool) -> usize {
        let take = data.len().min(self.capacity(stream));
        let Some(s) = self.streams.get_mut(&stream).filter(|s| s.send_open) else {
            return 0;
        };
        s.send_window -= take as i64;
        self.send_window -= take as i64;
        let finish = end_stream && take == data.len();
        frame::write_data(
            &mut self.out,
            stream,
            &data[..take],
            finish,
            self.peer_max_frame,
        );
        if finish {
            self.end_send(stream);
        }
        take
    }

    /// Writes `stream`'s request trailers, which end this side.
    pub fn send_trailers(&mut self, stream: u32, trailers: &HeaderMap) {
        if self.phase == Phase::Failed || !self.streams.get(&stream).is_some_and(|s| s.send_open) {
            return;
        }
        self.scratch.clear();
        self.encoder.trailers(trailers, &mut self.scratch);
        frame::write_headers(
            &mut self.out,
            stream,
            &self.scratch,
            true,
            self.peer_max_frame,
        );
        self.end_send(stream);
    }

    /// The caller gives up on `stream` (its response is no longer wanted,
    /// or its request body failed): reset with `reason` if it is still
    /// open. No event: the caller knows.
    pub fn cancel(&mut self, stream: u32, reason: Reason) {
        if self.phase != Phase::Failed && self.remove(stream) {
            frame::write_reset(&mut self.out, stream, reason);
        }
    }

    /// Body bytes of `stream` the caller took: owed back to the server.
    pub fn release(&mut self, stream: u32, n: usize) {
        if self.phase == Phase::Failed {
            return;
        }
        let Some(s) = self.streams.get_mut(&stream) else {
            return;
        };
        let n = u32::try_from(n).unwrap_or(u32::MAX).min(s.outstanding);
        s.outstanding -= n;
        if s.recv_open {
            s.released += n;
            if s.released >= self.config.stream_window / 2 {
                frame::write_window_update(&mut self.out, stream, s.released);
                s.recv_window += i64::from(s.released);
                s.released = 0;
            }
        }
        self.give_back(n);
    }

    /// `n` bytes owed back on the connection's window: given once half a
    /// window is owed, or once the server has less left than is owed.
    fn give_back(&mut self, n: u32) {
        self.released += n;
        let low = self.recv_window <= i64::from(self.released);
        if self.released > 0 && (self.released >= self.config.connection_window / 2 || low) {
            frame::write_window_update(&mut self.out, 0, self.released);
            self.recv_window += i64::from(self.released);
            self.released = 0;
        }
    }

    /// A keep-alive PING: `false` if the last one is still unanswered
    /// (the connection is then taken for dead).
    pub fn ping(&mut self) -> bool {
        if self.ping_out {
            return false;
        }
        if self.phase != Phase::Failed {
            frame::write_ping(&mut self.out, *b"portico!");
            self.ping_out = true;
        }
        true
    }

    /// The server's bytes ended, or the socket failed: every stream ends
    /// (the caller fails what waits on them).
    pub fn close(&mut self) {
        self.phase = Phase::Failed;
        self.streams.clear();
        self.pending = None;
    }

    /// Lets go of what the connection keeps for work while it has none (no
    /// stream open; the next request makes it again): the room for events,
    /// the decoder's last Huffman-decoded string, and a write buffer grown
    /// past [`super::io::IDLE_OUT_KEPT`] by a burst of request bodies.
    pub fn shed_idle_room(&mut self) {
        if self.events.is_empty() {
            self.events = Vec::new();
        }
        self.decoder.forget_last();
        super::io::shed_written(&mut self.out);
    }

    /// The events the frames read so far gave, swapped into `into` (which
    /// must be empty).
    pub fn swap_events(&mut self, into: &mut Vec<Event>) {
        debug_assert!(into.is_empty());
        std::mem::swap(&mut self.events, into);
    }

    /// Takes every whole frame off `buf` and acts on it. On a connection
    /// error its GOAWAY is in `out` and it is returned: write `out`, then
    /// close.
    pub fn recv(&mut self, buf: &mut BytesMut) -> Result<(), Reason> {
        if self.phase == Phase::Failed {
            return Err(Reason::PROTOCOL_ERROR);
        }
        loop {
            let frame = match frame::parse(buf, frame::DEFAULT_MAX_FRAME_SIZE) {
                Ok(Some(frame)) => frame,
                Ok(None) => return Ok(()),
                Err(FrameError::Stream(stream, reason)) => {
                    let error = match self.phase == Phase::Preface
                        || self.pending.is_some()
                        || self.check_not_idle(stream).is_err()
                    {
                        true => conn_error(Reason::PROTOCOL_ERROR),
                        false => stream_error(stream, reason),
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

    fn fail_or_reset(&mut self, error: FrameError) -> Result<(), Reason> {
        match error {
            FrameError::Connection(reason) => {
                if self.phase != Phase::Failed {
                    frame::write_goaway(&mut self.out, 0, reason);
                }
                self.close();
                Err(reason)
            }
            FrameError::Stream(stream, reason) => {
                frame::write_reset(&mut self.out, stream, reason);
                if self.remove(stream) {
                    self.events.push(Event::Reset {
                        stream,
                        reason,
                        refused: false,
                    });
                }
                Ok(())
            }
        }
    }

    fn frame(&mut self, frame: Frame) -> Step {
        if self.phase == Phase::Preface && !matches!(frame, Frame::Settings(_)) {
            return Err(conn_error(Reason::PROTOCOL_ERROR));
        }
        if let Some(pending) = &self.pending {
            let follows =
                matches!(frame, Frame::Continuation { stream, .. } if stream == pending.stream);
            if !follows {
                return Err(conn_error(Reason::PROTOCOL_ERROR));
            }
        }
        match frame {
            Frame::Settings(settings) => self.settings(settings),
            Frame::SettingsAck | Frame::Priority { .. } | Frame::Unknown { .. } => Ok(()),
            Frame::Ping {
                ack: false,
                payload,
            } => {
                frame::write_ping_ack(&mut self.out, payload);
                Ok(())
            }
            Frame::Ping { ack: true, .. } => {
                self.ping_out = false;
                Ok(())
            }
            Frame::GoAway { last_stream, .. } => {
                self.go_away(last_stream);
                Ok(())
            }
            Frame::WindowUpdate { stream, increment } => self.window_update(stream, increment),
            Frame::Reset { stream, reason } => {
                self.check_not_idle(stream)?;
                if self.remove(stream) {
                    let refused = reason == Reason::REFUSED_STREAM;
                    self.events.push(Event::Reset {
                        stream,
                        reason,
                        refused,
                    });
                }
                Ok(())
            }
            Frame::Headers {
                stream,
                fragment,
                end_stream,
                end_headers,
                ..
            } => self.headers(stream, &fragment, end_stream, end_headers),
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

    fn settings(&mut self, settings: Settings) -> Step {
        if self.phase == Phase::Preface {
            // The server's limit is known now: none unless it names one.
            self.peer_max_streams = u32::MAX;
        }
        self.phase = Phase::Open;
        if settings.enable_push == Some(true) {
            // A server may not enable push (section 6.5.2).
            return Err(conn_error(Reason::PROTOCOL_ERROR));
        }
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
        if let Some(max) = settings.max_concurrent_streams {
            self.peer_max_streams = max;
        }
        if settings.header_table_size.is_some() {
            self.encoder.peer_table_size_changed();
        }
        frame::write_settings_ack(&mut self.out);
        Ok(())
    }

    /// The server goes away: streams above `last_stream` were never
    /// processed and end, refused; the others finish.
    fn go_away(&mut self, last_stream: u32) {
        let last = self.goaway.map_or(last_stream, |g| g.min(last_stream));
        self.goaway = Some(last);
        let mut refused: Vec<u32> = self.streams.keys().copied().filter(|&s| s > last).collect();
        refused.sort_unstable();
        for stream in refused {
            self.remove(stream);
            self.events.push(Event::Reset {
                stream,
                reason: Reason::REFUSED_STREAM,
                refused: true,
            });
        }
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
                return Err(stream_error(stream, Reason::FLOW_CONTROL_ERROR));
            }
        }
        Ok(())
    }

    /// A frame on a stream this side has not opened (even ones are the
    /// server's, which may open none with push off) is a connection error.
    fn check_not_idle(&self, stream: u32) -> Step {
        match stream >= self.next_stream || stream.is_multiple_of(2) {
            true => Err(conn_error(Reason::PROTOCOL_ERROR)),
            false => Ok(()),
        }
    }

    fn headers(&mut self, stream: u32, fragment: &Bytes, end_stream: bool, end: bool) -> Step {
        self.check_not_idle(stream)?;
        if end {
            return self.block(stream, end_stream, fragment);
        }
        let mut block = BytesMut::with_capacity(fragment.len() * 2);
        block.extend_from_slice(fragment);
        self.pending = Some(Pending {
            stream,
            end_stream,
            block,
            continuations: 0,
        });
        Ok(())
    }

    fn continuation(&mut self, fragment: &[u8], end_headers: bool) -> Step {
        let limit = 2 * self.config.max_header_list_size as usize;
        // CONTINUATION with no field block under way (section 6.10).
        let Some(pending) = self.pending.as_mut() else {
            return Err(conn_error(Reason::PROTOCOL_ERROR));
        };
        pending.continuations += 1;
        if pending.continuations > MAX_CONTINUATIONS || pending.block.len() + fragment.len() > limit
        {
            return Err(conn_error(Reason::ENHANCE_YOUR_CALM));
        }
        pending.block.extend_from_slice(fragment);
        if !end_headers {
            return Ok(());
        }
        let Pending {
            stream,
            end_stream,
            block,
            ..
        } = self.pending.take().expect("checked above");
        self.block(stream, end_stream, &block.freeze())
    }

    /// A whole field block: a response head, or trailers, or (for a stream
    /// gone) decoded only to keep the table in step.
    fn block(&mut self, stream: u32, end_stream: bool, block: &Bytes) -> Step {
        let mut builder = HeadBuilder::new(self.config.max_header_list_size as usize);
        self.decoder
            .decode(block, |field, size| builder.field(field, size))
            .map_err(|_| conn_error(Reason::COMPRESSION_ERROR))?;
        let Some(s) = self.streams.get(&stream) else {
            return Ok(());
        };
        if !s.recv_open {
            return Err(stream_error(stream, Reason::STREAM_CLOSED));
        }
        if s.answered {
            return self.trailers(stream, end_stream, builder);
        }
        let mut head = builder
            .finish()
            .map_err(|_| stream_error(stream, Reason::PROTOCOL_ERROR))?;
        let status = head.parts.status.as_u16();
        if status == 101 || (head.parts.status.is_informational() && end_stream) {
            return Err(stream_error(stream, Reason::PROTOCOL_ERROR));
        }
        if head.parts.status.is_informational() {
            return Ok(());
        }
        let s = self.streams.get_mut(&stream).expect("looked up above");
        s.answered = true;
        // A HEAD's, a 204's or a 304's length names no body here.
        let bodiless = s.head_request || status == 204 || status == 304;
        s.content_length = head.content_length.filter(|_| !bodiless);
        head.content_length = s.content_length;
        if end_stream && s.content_length.is_some_and(|n| n > 0) {
            return Err(stream_error(stream, Reason::PROTOCOL_ERROR));
        }
        self.events.push(Event::Response {
            stream,
            head,
            end_stream,
        });
        if end_stream {
            self.end_recv(stream);
        }
        Ok(())
    }

    fn trailers(&mut self, stream: u32, end_stream: bool, builder: HeadBuilder) -> Step {
        let s = &self.streams[&stream];
        let short = s.content_length.is_some_and(|n| n != s.received);
        if !end_stream || short {
            return Err(stream_error(stream, Reason::PROTOCOL_ERROR));
        }
        let trailers = builder
            .finish_trailers()
            .map_err(|_| stream_error(stream, Reason::PROTOCOL_ERROR))?;
        self.events.push(Event::Trailers { stream, trailers });
        self.end_recv(stream);
        Ok(())
    }

    fn data(&mut self, stream: u32, data: Bytes, end_stream: bool, flow_len: u32) -> Step {
        self.check_not_idle(stream)?;
        self.recv_window -= i64::from(flow_len);
        if self.recv_window < 0 {
            return Err(conn_error(Reason::FLOW_CONTROL_ERROR));
        }
        // Padding is given back at once; so is all of a frame whose stream
        // is gone: ignored, as a stream this side reset may still get
        // frames the server sent before it knew (section 5.1).
        let padding = flow_len - data.len() as u32;
        let Some(s) = self.streams.get_mut(&stream) else {
            self.give_back(flow_len);
            return Ok(());
        };
        if !s.recv_open || !s.answered {
            let reason = match s.recv_open {
                true => Reason::PROTOCOL_ERROR,
                false => Reason::STREAM_CLOSED,
            };
            self.give_back(flow_len);
            return Err(stream_error(stream, reason));
        }
        s.recv_window -= i64::from(flow_len);
        if s.recv_window < 0 {
            self.give_back(flow_len);
            return Err(stream_error(stream, Reason::FLOW_CONTROL_ERROR));
        }
        s.received += data.len() as u64;
        let over = s.content_length.is_some_and(|n| s.received > n);
        let short = end_stream && s.content_length.is_some_and(|n| s.received != n);
        if over || short {
            self.give_back(flow_len);
            return Err(stream_error(stream, Reason::PROTOCOL_ERROR));
        }
        s.outstanding += data.len() as u32;
        if padding > 0 {
            self.give_back(padding);
        }
        self.events.push(Event::Data {
            stream,
            data,
            end_stream,
        });
        if end_stream {
            self.end_recv(stream);
        }
        Ok(())
    }

    fn end_recv(&mut self, stream: u32) {
        if let Some(s) = self.streams.get_mut(&stream) {
            s.recv_open = false;
            if !s.send_open {
                self.remove(stream);
            }
        }
    }

    fn end_send(&mut self, stream: u32) {
        if let Some(s) = self.streams.get_mut(&stream) {
            s.send_open = false;
            if !s.recv_open {
                self.remove(stream);
            }
        }
    }

    /// Forgets `stream`, giving the connection back the body bytes the
    /// caller never took; `false` if it was not known.
    fn remove(&mut self, stream: u32) -> bool {
        match self.streams.remove(&stream) {
            Some(s) => {
                if s.outstanding > 0 {
                    self.give_back(s.outstanding);
                }
                true
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests;
