//! HTTP/2 frames (RFC 9113, section 6) as a server reads and writes them:
//! parsed off the front of a read buffer and checked, and written into a
//! write buffer. No I/O and no connection state: what depends on a
//! stream's state (which frames it may receive, flow control) is the
//! connection's to check.
//!
//! A frame's payload stays a slice of the read buffer (`Bytes`): a DATA
//! frame's bytes go on to the upstream without a copy.

use bytes::{Buf, BufMut, Bytes, BytesMut};

/// Octets in a frame header.
pub const HEADER_LEN: usize = 9;
/// The smallest `SETTINGS_MAX_FRAME_SIZE`, and its initial value.
pub const DEFAULT_MAX_FRAME_SIZE: u32 = 16_384;
/// The largest `SETTINGS_MAX_FRAME_SIZE`.
pub const MAX_MAX_FRAME_SIZE: u32 = (1 << 24) - 1;
/// The largest flow-control window.
pub const MAX_WINDOW: u32 = (1 << 31) - 1;

/// An error code (section 7).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reason(pub u32);

impl Reason {
    pub const NO_ERROR: Reason = Reason(0x0);
    pub const PROTOCOL_ERROR: Reason = Reason(0x1);
    pub const INTERNAL_ERROR: Reason = Reason(0x2);
    pub const FLOW_CONTROL_ERROR: Reason = Reason(0x3);
    pub const SETTINGS_TIMEOUT: Reason = Reason(0x4);
    pub const STREAM_CLOSED: Reason = Reason(0x5);
    pub const FRAME_SIZE_ERROR: Reason = Reason(0x6);
    pub const REFUSED_STREAM: Reason = Reason(0x7);
    pub const CANCEL: Reason = Reason(0x8);
    pub const COMPRESSION_ERROR: Reason = Reason(0x9);
    pub const CONNECT_ERROR: Reason = Reason(0xa);
    pub const ENHANCE_YOUR_CALM: Reason = Reason(0xb);
    pub const INADEQUATE_SECURITY: Reason = Reason(0xc);
    pub const HTTP_1_1_REQUIRED: Reason = Reason(0xd);
}

/// A frame that breaks the protocol: the whole connection's error (a
/// GOAWAY, then the connection closes) or one stream's (a RST_STREAM).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameError {
    Connection(Reason),
    Stream(u32, Reason),
}

/// Frame flags.
pub mod flags {
    pub const END_STREAM: u8 = 0x1;
    pub const ACK: u8 = 0x1;
    pub const END_HEADERS: u8 = 0x4;
    pub const PADDED: u8 = 0x8;
    pub const PRIORITY: u8 = 0x20;
}

/// Frame types.
mod kind {
    pub const DATA: u8 = 0x0;
    pub const HEADERS: u8 = 0x1;
    pub const PRIORITY: u8 = 0x2;
    pub const RST_STREAM: u8 = 0x3;
    pub const SETTINGS: u8 = 0x4;
    pub const PUSH_PROMISE: u8 = 0x5;
    pub const PING: u8 = 0x6;
    pub const GOAWAY: u8 = 0x7;
    pub const WINDOW_UPDATE: u8 = 0x8;
    pub const CONTINUATION: u8 = 0x9;
}

/// A frame as a server receives it, checked on its own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    Data {
        stream: u32,
        data: Bytes,
        end_stream: bool,
        /// The whole payload's length, padding included: what flow
        /// control counts.
        flow_len: u32,
    },
    /// A HEADERS frame's field block fragment (padding and priority taken
    /// off); CONTINUATION frames follow unless `end_headers`.
    Headers {
        stream: u32,
        fragment: Bytes,
        end_stream: bool,
        end_headers: bool,
        /// Its priority names the stream itself: a stream error (section
        /// 5.3.1), but one the connection raises only after decoding the
        /// block, which it must decode whatever becomes of the stream.
        self_dependent: bool,
    },
    Continuation {
        stream: u32,
        fragment: Bytes,
        end_headers: bool,
    },
    /// PRIORITY, and priority in HEADERS, are parsed and ignored (RFC
    /// 9113 deprecates the scheme); a wrong length, or a stream depending
    /// on itself, is that stream's error.
    Priority {
        stream: u32,
    },
    Reset {
        stream: u32,
        reason: Reason,
    },
    Settings(Settings),
    SettingsAck,
    Ping {
        ack: bool,
        payload: [u8; 8],
    },
    GoAway {
        last_stream: u32,
        reason: Reason,
    },
    WindowUpdate {
        stream: u32,
        increment: u32,
    },
    /// A frame of a type this side does not know: ignored (section 5.5),
    /// though not inside a field block.
    Unknown {
        stream: u32,
    },
}

/// The values a SETTINGS frame carried; `None` where it carried none.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Settings {
    pub header_table_size: Option<u32>,
    pub enable_push: Option<bool>,
    pub max_concurrent_streams: Option<u32>,
    pub initial_window_size: Option<u32>,
    pub max_frame_size: Option<u32>,
    pub max_header_list_size: Option<u32>,
    pub enable_connect_protocol: Option<bool>,
}

/// The next frame off the front of `buf`, or `None` until all of it has
/// arrived. A frame longer than `max_frame_size` (this side's
/// `SETTINGS_MAX_FRAME_SIZE`) is a connection error, whatever its type.
pub fn parse(buf: &mut BytesMut, max_frame_size: u32) -> Result<Option<Frame>, FrameError> {
    if buf.len() < HEADER_LEN {
        return Ok(None);
    }
    let len = u32::from_be_bytes([0, buf[0], buf[1], buf[2]]);
    if len > max_frame_size {
        return Err(FrameError::Connection(Reason::FRAME_SIZE_ERROR));
    }
    if buf.len() < HEADER_LEN + len as usize {
        return Ok(None);
    }
    let (kind, flags) = (buf[3], buf[4]);
    let stream = u32::from_be_bytes([buf[5], buf[6], buf[7], buf[8]]) & MAX_WINDOW;
    buf.advance(HEADER_LEN);
    let payload = buf.split_to(len as usize).freeze();
    let head = Head {
        kind,
        flags,
        stream,
    };
    head.frame(payload).map(Some)
}

/// A frame header, read.
#[derive(Debug, Clone, Copy)]
struct Head {
    kind: u8,
    flags: u8,
    stream: u32,
}

const fn connection(reason: Reason) -> FrameError {
    FrameError::Connection(reason)
}

impl Head {
    fn frame(self, payload: Bytes) -> Result<Frame, FrameError> {
        match self.kind {
            kind::DATA => self.data(payload),
            kind::HEADERS => self.headers(payload),
            kind::PRIORITY => self.priority(&payload),
            kind::RST_STREAM => self.reset(&payload),
            kind::SETTINGS => self.settings(&payload),
            // A client never sends PUSH_PROMISE (section 8.4).
            kind::PUSH_PROMISE => Err(connection(Reason::PROTOCOL_ERROR)),
            kind::PING => self.ping(&payload),
            kind::GOAWAY => self.goaway(&payload),
            kind::WINDOW_UPDATE => self.window_update(&payload),
            kind::CONTINUATION => Ok(Frame::Continuation {
                stream: self.on_stream()?,
                fragment: payload,
                end_headers: self.flags & flags::END_HEADERS != 0,
            }),
            _ => Ok(Frame::Unknown {
                stream: self.stream,
            }),
        }
    }

    /// The stream a frame that must name one names.
    fn on_stream(self) -> Result<u32, FrameError> {
        match self.stream {
            0 => Err(connection(Reason::PROTOCOL_ERROR)),
            stream => Ok(stream),
        }
    }

    /// A frame that belongs to the connection (stream 0).
    fn on_connection(self) -> Result<(), FrameError> {
        match self.stream {
            0 => Ok(()),
            _ => Err(connection(Reason::PROTOCOL_ERROR)),
        }
    }

    fn data(self, mut payload: Bytes) -> Result<Frame, FrameError> {
        let stream = self.on_stream()?;
        let flow_len = payload.len() as u32;
        let pad = self.pad_len(&mut payload)?;
        Ok(Frame::Data {
            stream,
            data: unpad(payload, pad)?,
            end_stream: self.flags & flags::END_STREAM != 0,
            flow_len,
        })
    }

    fn headers(self, mut payload: Bytes) -> Result<Frame, FrameError> {
        let stream = self.on_stream()?;
        let pad = self.pad_len(&mut payload)?;
        let mut self_dependent = false;
        if self.flags & flags::PRIORITY != 0 {
            if payload.len() < 5 {
                return Err(connection(Reason::FRAME_SIZE_ERROR));
            }
            self_dependent = depends_on_itself(stream, &payload);
            payload.advance(5);
        }
        Ok(Frame::Headers {
            stream,
            fragment: unpad(payload, pad)?,
            end_stream: self.flags & flags::END_STREAM != 0,
            end_headers: self.flags & flags::END_HEADERS != 0,
            self_dependent,
        })
    }

    /// With PADDED (DATA and HEADERS): the padding's length, taken off the
    /// payload's front.
    fn pad_len(self, payload: &mut Bytes) -> Result<usize, FrameError> {
        if self.flags & flags::PADDED == 0 {
            return Ok(0);
        }
        let Some(&pad) = payload.first() else {
            return Err(connection(Reason::FRAME_SIZE_ERROR));
        };
        payload.advance(1);
        Ok(usize::from(pad))
    }

    fn priority(self, payload: &[u8]) -> Result<Frame, FrameError> {
        let stream = self.on_stream()?;
        if payload.len() != 5 {
            return Err(FrameError::Stream(stream, Reason::FRAME_SIZE_ERROR));
        }
        if depends_on_itself(stream, payload) {
            return Err(FrameError::Stream(stream, Reason::PROTOCOL_ERROR));
        }
        Ok(Frame::Priority { stream })
    }

    fn reset(self, payload: &[u8]) -> Result<Frame, FrameError> {
        let stream = self.on_stream()?;
        let code = four(payload).ok_or(connection(Reason::FRAME_SIZE_ERROR))?;
        Ok(Frame::Reset {
            stream,
            reason: Reason(code),
        })
    }

    fn settings(self, payload: &[u8]) -> Result<Frame, FrameError> {
        self.on_connection()?;
        if self.flags & flags::ACK != 0 {
            return match payload.len() {
                0 => Ok(Frame::SettingsAck),
                _ => Err(connection(Reason::FRAME_SIZE_ERROR)),
            };
        }
        if !payload.len().is_multiple_of(6) {
            return Err(connection(Reason::FRAME_SIZE_ERROR));
        }
        let mut settings = Settings::default();
        for entry in payload.chunks_exact(6) {
            let id = u16::from_be_bytes([entry[0], entry[1]]);
            let value = u32::from_be_bytes([entry[2], entry[3], entry[4], entry[5]]);
            settings.set(id, value)?;
        }
        Ok(Frame::Settings(settings))
    }

    fn ping(self, payload: &[u8]) -> Result<Frame, FrameError> {
        self.on_connection()?;
        let payload: [u8; 8] = payload
            .try_into()
            .map_err(|_| connection(Reason::FRAME_SIZE_ERROR))?;
        Ok(Frame::Ping {
            ack: self.flags & flags::ACK != 0,
            payload,
        })
    }

    fn goaway(self, payload: &[u8]) -> Result<Frame, FrameError> {
        self.on_connection()?;
        if payload.len() < 8 {
            return Err(connection(Reason::FRAME_SIZE_ERROR));
        }
        let last = u32::from_be_bytes([payload[0], payload[1], payload[2], payload[3]]);
        let code = u32::from_be_bytes([payload[4], payload[5], payload[6], payload[7]]);
        Ok(Frame::GoAway {
            last_stream: last & MAX_WINDOW,
            reason: Reason(code),
        })
    }

    fn window_update(self, payload: &[u8]) -> Result<Frame, FrameError> {
        let value = four(payload).ok_or(connection(Reason::FRAME_SIZE_ERROR))?;
        let increment = value & MAX_WINDOW;
        if increment == 0 {
            return Err(match self.stream {
                0 => connection(Reason::PROTOCOL_ERROR),
                stream => FrameError::Stream(stream, Reason::PROTOCOL_ERROR),
            });
        }
        Ok(Frame::WindowUpdate {
            stream: self.stream,
            increment,
        })
    }
}

/// `rest` less its last `pad` octets: padding longer than what is left
/// of the payload is a connection error (sections 6.1, 6.2).
fn unpad(mut rest: Bytes, pad: usize) -> Result<Bytes, FrameError> {
    if pad > rest.len() {
        return Err(connection(Reason::PROTOCOL_ERROR));
    }
    rest.truncate(rest.len() - pad);
    Ok(rest)
}

/// A payload of exactly four octets, as a number.
fn four(payload: &[u8]) -> Option<u32> {
    let bytes: [u8; 4] = payload.try_into().ok()?;
    Some(u32::from_be_bytes(bytes))
}

/// Whether a priority's stream dependency (the first four of `fields`)
/// is the stream itself (section 5.3.1).
fn depends_on_itself(stream: u32, fields: &[u8]) -> bool {
    let on = u32::from_be_bytes([fields[0], fields[1], fields[2], fields[3]]) & MAX_WINDOW;
    on == stream
}

/// Setting identifiers (section 6.5.2; RFC 8441 for CONNECT's).
mod setting {
    pub const HEADER_TABLE_SIZE: u16 = 0x1;
    pub const ENABLE_PUSH: u16 = 0x2;
    pub const MAX_CONCURRENT_STREAMS: u16 = 0x3;
    pub const INITIAL_WINDOW_SIZE: u16 = 0x4;
    pub const MAX_FRAME_SIZE: u16 = 0x5;
    pub const MAX_HEADER_LIST_SIZE: u16 = 0x6;
    pub const ENABLE_CONNECT_PROTOCOL: u16 = 0x8;
}

impl Settings {
    /// Records one setting, checked; an unknown one is ignored.
    fn set(&mut self, id: u16, value: u32) -> Result<(), FrameError> {
        let flag = || match value {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(connection(Reason::PROTOCOL_ERROR)),
        };
        match id {
            setting::HEADER_TABLE_SIZE => self.header_table_size = Some(value),
            setting::ENABLE_PUSH => self.enable_push = Some(flag()?),
            setting::MAX_CONCURRENT_STREAMS => self.max_concurrent_streams = Some(value),
            setting::INITIAL_WINDOW_SIZE if value > MAX_WINDOW => {
                return Err(connection(Reason::FLOW_CONTROL_ERROR));
            }
            setting::INITIAL_WINDOW_SIZE => self.initial_window_size = Some(value),
            setting::MAX_FRAME_SIZE
                if !(DEFAULT_MAX_FRAME_SIZE..=MAX_MAX_FRAME_SIZE).contains(&value) =>
            {
                return Err(connection(Reason::PROTOCOL_ERROR));
            }
            setting::MAX_FRAME_SIZE => self.max_frame_size = Some(value),
            setting::MAX_HEADER_LIST_SIZE => self.max_header_list_size = Some(value),
            setting::ENABLE_CONNECT_PROTOCOL => self.enable_connect_protocol = Some(flag()?),
            _ => {}
        }
        Ok(())
    }

    /// Writes a SETTINGS frame with the values set.
    pub fn write(&self, dst: &mut BytesMut) {
        let entries = [
            (setting::HEADER_TABLE_SIZE, self.header_table_size),
            (setting::ENABLE_PUSH, self.enable_push.map(u32::from)),
            (setting::MAX_CONCURRENT_STREAMS, self.max_concurrent_streams),
            (setting::INITIAL_WINDOW_SIZE, self.initial_window_size),
            (setting::MAX_FRAME_SIZE, self.max_frame_size),
            (setting::MAX_HEADER_LIST_SIZE, self.max_header_list_size),
            (
                setting::ENABLE_CONNECT_PROTOCOL,
                self.enable_connect_protocol.map(u32::from),
            ),
        ];
        let set = entries.iter().filter(|(_, v)| v.is_some()).count();
        write_head(dst, 6 * set, kind::SETTINGS, 0, 0);
        for (id, value) in entries {
            if let Some(value) = value {
                dst.put_u16(id);
                dst.put_u32(value);
            }
        }
    }
}

/// A frame header.
fn write_head(dst: &mut BytesMut, len: usize, kind: u8, flags: u8, stream: u32) {
    debug_assert!(len <= MAX_MAX_FRAME_SIZE as usize);
    dst.reserve(HEADER_LEN + len);
    dst.put_uint(len as u64, 3);
    dst.put_u8(kind);
    dst.put_u8(flags);
    dst.put_u32(stream);
}

/// A field block as one HEADERS frame, then CONTINUATION frames for what
/// does not fit in `max_frame_size` (the peer's).
pub fn write_headers(
    dst: &mut BytesMut,
    stream: u32,
    block: &[u8],
    end_stream: bool,
    max_frame_size: u32,
) {
    let max = max_frame_size as usize;
    let mut chunks = block.chunks(max).peekable();
    let first = chunks.next().unwrap_or(&[]);
    let mut kind = kind::HEADERS;
    let mut flags = if end_stream { flags::END_STREAM } else { 0 };
    let mut chunk = first;
    loop {
        let last = chunks.peek().is_none();
        if last {
            flags |= flags::END_HEADERS;
        }
        write_head(dst, chunk.len(), kind, flags, stream);
        dst.extend_from_slice(chunk);
        match chunks.next() {
            Some(next) => chunk = next,
            None => return,
        }
        (kind, flags) = (kind::CONTINUATION, 0);
    }
}

/// A DATA frame's header, for `len` octets of payload the caller writes
/// after it (or sends from where they are).
pub fn write_data_head(dst: &mut BytesMut, stream: u32, len: usize, end_stream: bool) {
    let flags = if end_stream { flags::END_STREAM } else { 0 };
    write_head(dst, len, kind::DATA, flags, stream);
}

/// `data` as DATA frames of at most `max_frame_size` octets (the peer's);
/// with `end_stream`, the last one ends the stream (an empty `data` is one
/// empty frame that ends it).
pub fn write_data(
    dst: &mut BytesMut,
    stream: u32,
    data: &[u8],
    end_stream: bool,
    max_frame_size: u32,
) {
    if data.is_empty() {
        if end_stream {
            write_data_head(dst, stream, 0, true);
        }
        return;
    }
    let mut chunks = data.chunks(max_frame_size as usize).peekable();
    while let Some(chunk) = chunks.next() {
        let last = end_stream && chunks.peek().is_none();
        write_data_head(dst, stream, chunk.len(), last);
        dst.extend_from_slice(chunk);
    }
}

pub fn write_settings_ack(dst: &mut BytesMut) {
    write_head(dst, 0, kind::SETTINGS, flags::ACK, 0);
}

/// A PING this side sends (the client must answer it).
pub fn write_ping(dst: &mut BytesMut, payload: [u8; 8]) {
    write_head(dst, 8, kind::PING, 0, 0);
    dst.extend_from_slice(&payload);
}

pub fn write_ping_ack(dst: &mut BytesMut, payload: [u8; 8]) {
    write_head(dst, 8, kind::PING, flags::ACK, 0);
    dst.extend_from_slice(&payload);
}

pub fn write_reset(dst: &mut BytesMut, stream: u32, reason: Reason) {
    write_head(dst, 4, kind::RST_STREAM, 0, stream);
    dst.put_u32(reason.0);
}

pub fn write_goaway(dst: &mut BytesMut, last_stream: u32, reason: Reason) {
    write_head(dst, 8, kind::GOAWAY, 0, 0);
    dst.put_u32(last_stream);
    dst.put_u32(reason.0);
}

pub fn write_window_update(dst: &mut BytesMut, stream: u32, increment: u32) {
    debug_assert!((1..=MAX_WINDOW).contains(&increment));
    write_head(dst, 4, kind::WINDOW_UPDATE, 0, stream);
    dst.put_u32(increment);
}

#[cfg(test)]
mod tests;
