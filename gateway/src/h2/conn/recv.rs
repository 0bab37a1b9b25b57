//! The receiving half: HEADERS and CONTINUATION into requests and
//! trailers, DATA into body parts, and the receive windows.

use super::*;

/// Streams this side reset lately, whose frames in flight are ignored
/// (section 5.1, "closed") rather than answered with STREAM_CLOSED.
pub(super) const RECENT_RESETS: usize = 128;
/// Empty DATA frames in a row that end no stream, before the connection
/// is ended as a flood.
const MAX_EMPTY_FRAMES: u32 = 1000;

/// CONTINUATION frames one field block may take.
const MAX_CONTINUATIONS: u32 = 64;

/// What a HEADERS frame said about the field block it starts.
#[derive(Debug, Clone, Copy)]
pub(super) struct BlockHead {
    stream: u32,
    end_stream: bool,
    /// Its priority named its own stream.
    self_dependent: bool,
    kind: BlockFor,
}

impl BlockHead {
    pub(super) fn stream(&self) -> u32 {
        self.stream
    }
}

/// What a field block is for, decided by its HEADERS frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum BlockFor {
    /// A new stream's request.
    Request,
    /// A known stream's trailers.
    Trailers,
    /// A stream this side reset lately: decoded (the table must follow)
    /// and dropped.
    Discard,
}

impl Conn {
    /// The most octets a field block's fragments may add up to.
    fn block_limit(&self) -> usize {
        (2 * self.config.max_header_list_size as usize).max(64 * 1024)
    }

    pub(super) fn headers(
        &mut self,
        stream: u32,
        fragment: &Bytes,
        (end_stream, end_headers): (bool, bool),
        self_dependent: bool,
    ) -> Step {
        let kind = self.block_for(stream)?;
        if kind == BlockFor::Request {
            self.last_stream = stream;
        }
        let head = BlockHead {
            stream,
            end_stream,
            self_dependent,
            kind,
        };
        if end_headers {
            // The whole block in one frame: decoded where it was read.
            return self.block(head, fragment);
        }
        self.pending = Some(Pending {
            head,
            block: BytesMut::from(&fragment[..]),
            continuations: 0,
        });
        Ok(())
    }

    /// What a HEADERS frame on `stream` starts. A new stream's identifier
    /// is odd and above every earlier one (section 5.1.1).
    fn block_for(&self, stream: u32) -> Result<BlockFor, FrameError> {
        if stream.is_multiple_of(2) {
            return Err(conn_error(Reason::PROTOCOL_ERROR));
        }
        if self.streams.contains_key(&stream) {
            Ok(BlockFor::Trailers)
        } else if stream > self.last_stream {
            Ok(BlockFor::Request)
        } else if self.recent_resets.contains(&stream) {
            Ok(BlockFor::Discard)
        } else if self.recent_closed.contains(&stream) {
            // A stream that closed lately (section 5.1: STREAM_CLOSED, a
            // connection error after END_STREAM; after the client's own
            // RST_STREAM a stream error would do, but the connection
            // error spares decoding a block nobody wants).
            Err(conn_error(Reason::STREAM_CLOSED))
        } else {
            // An identifier the client skipped, or one long closed: not
            // one it may use (section 5.1.1).
            Err(conn_error(Reason::PROTOCOL_ERROR))
        }
    }

    pub(super) fn continuation(&mut self, fragment: &[u8], end_headers: bool) -> Step {
        let limit = self.block_limit();
        // A CONTINUATION with no field block under way (one that does
        // continue a block is checked by `Conn::frame`).
        let Some(pending) = self.pending.as_mut() else {
            return Err(conn_error(Reason::PROTOCOL_ERROR));
        };
        pending.block.extend_from_slice(fragment);
        pending.continuations += 1;
        if pending.block.len() > limit || pending.continuations > MAX_CONTINUATIONS {
            return Err(conn_error(Reason::ENHANCE_YOUR_CALM));
        }
        if !end_headers {
            return Ok(());
        }
        let Pending { head, block, .. } = self.pending.take().expect("just used");
        self.block(head, &block.freeze())
    }

    /// A whole field block: decoded whatever becomes of it (the table must
    /// follow the client's), then a request, trailers, or nothing.
    fn block(&mut self, head: BlockHead, block: &Bytes) -> Step {
        let BlockHead {
            stream,
            end_stream,
            self_dependent,
            kind,
        } = head;
        match kind {
            BlockFor::Request => self.request(stream, block, end_stream, self_dependent),
            // Trailers for a stream that ended while they arrived.
            BlockFor::Trailers if self.streams.contains_key(&stream) => {
                self.trailers(stream, block, end_stream, self_dependent)
            }
            BlockFor::Trailers | BlockFor::Discard => self.decode(block, |_, _| {}),
        }
    }

    /// Decodes `block`: a decoding error is the connection's.
    fn decode(&mut self, block: &Bytes, each: impl FnMut(Field, usize)) -> Step {
        self.decoder
            .decode(block, each)
            .map_err(|_| conn_error(Reason::COMPRESSION_ERROR))
    }

    fn request(
        &mut self,
        stream: u32,
        block: &Bytes,
        end_stream: bool,
        self_dependent: bool,
    ) -> Step {
        let mut head = HeadBuilder::new(self.config.max_header_list_size as usize);
        self.decode(block, |field, size| head.field(field, size))?;
        if self.goaway.is_some_and(|last| stream > last) {
            // After this side's GOAWAY: ignored (the client retries it),
            // and so is what follows on it.
            self.remember_reset(stream);
            return Ok(());
        }
        if self_dependent {
            return Err(FrameError::Stream(stream, Reason::PROTOCOL_ERROR));
        }
        if self.streams.len() >= self.config.max_concurrent_streams as usize {
            return Err(FrameError::Stream(stream, Reason::REFUSED_STREAM));
        }
        match head.finish() {
            Ok(head) => self.open(stream, head, end_stream),
            Err(Refusal::Malformed(_)) => Err(FrameError::Stream(stream, Reason::PROTOCOL_ERROR)),
            Err(Refusal::TooLarge) => {
                self.too_large(stream, end_stream);
                Ok(())
            }
        }
    }

    fn open(&mut self, stream: u32, head: Head, end_stream: bool) -> Step {
        if end_stream && head.content_length.is_some_and(|n| n > 0) {
            return Err(FrameError::Stream(stream, Reason::PROTOCOL_ERROR));
        }
        self.streams.insert(
            stream,
            Stream {
                recv_open: !end_stream,
                send_open: true,
                responded: false,
                recv_window: i64::from(self.config.stream_window),
                outstanding: 0,
                released: 0,
                send_window: i64::from(self.peer_window),
                content_length: head.content_length,
                received: 0,
            },
        );
        self.push_event(Event::Request {
            stream,
            head,
            end_stream,
        });
        Ok(())
    }

    /// A request whose fields are over the limit: 431, as hyper's server
    /// answers, and the rest of the request refused.
    fn too_large(&mut self, stream: u32, end_stream: bool) {
        let mut block = BytesMut::new();
        let status = StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE;
        self.encoder.response(status, &HeaderMap::new(), &mut block);
        frame::write_headers(&mut self.out, stream, &block, true, self.peer_max_frame);
        if !end_stream {
            frame::write_reset(&mut self.out, stream, Reason::NO_ERROR);
            self.remember_reset(stream);
        }
    }

    fn trailers(
        &mut self,
        stream: u32,
        block: &Bytes,
        end_stream: bool,
        self_dependent: bool,
    ) -> Step {
        let mut trailers = Trailers::new(self.config.max_header_list_size as usize);
        self.decode(block, |field, size| trailers.field(field, size))?;
        let s = self.streams.get_mut(&stream).expect("known");
        if !s.recv_open {
            return Err(FrameError::Stream(stream, Reason::STREAM_CLOSED));
        }
        let short = s.content_length.is_some_and(|n| n != s.received);
        let valid = end_stream && !short && !self_dependent;
        let Some(map) = trailers.finish().filter(|_| valid) else {
            return Err(FrameError::Stream(stream, Reason::PROTOCOL_ERROR));
        };
        s.recv_open = false;
        self.push_event(Event::Trailers {
            stream,
            trailers: map,
        });
        self.remove_if_done(stream);
        Ok(())
    }

    pub(super) fn data(
        &mut self,
        stream: u32,
        data: Bytes,
        end_stream: bool,
        flow_len: u32,
    ) -> Step {
        // Every DATA frame counts against the connection's window, whatever
        // becomes of it.
        if i64::from(flow_len) > self.recv_window {
            return Err(conn_error(Reason::FLOW_CONTROL_ERROR));
        }
        self.recv_window -= i64::from(flow_len);
        self.check_not_idle(stream)?;
        self.count_empty(flow_len, end_stream)?;
        let Some(s) = self.streams.get_mut(&stream) else {
            self.give_back(flow_len);
            return match self.recent_resets.contains(&stream) {
                true => Ok(()),
                false => Err(FrameError::Stream(stream, Reason::STREAM_CLOSED)),
            };
        };
        let error = if !s.recv_open {
            Some(Reason::STREAM_CLOSED)
        } else if i64::from(flow_len) > s.recv_window {
            Some(Reason::FLOW_CONTROL_ERROR)
        } else {
            s.received += data.len() as u64;
            let over = s.content_length.is_some_and(|n| s.received > n);
            let short = end_stream && s.content_length.is_some_and(|n| s.received != n);
            (over || short).then_some(Reason::PROTOCOL_ERROR)
        };
        if let Some(reason) = error {
            self.give_back(flow_len);
            return Err(FrameError::Stream(stream, reason));
        }
        s.recv_window -= i64::from(flow_len);
        s.recv_open = !end_stream;
        // The padding is nobody's to take: given back at once.
        let padding = flow_len - data.len() as u32;
        s.outstanding += data.len() as u32;
        self.push_event(Event::Data {
            stream,
            data,
            end_stream,
        });
        self.credit(stream, padding);
        if end_stream {
            self.remove_if_done(stream);
        }
        Ok(())
    }

    /// Empty DATA frames that end nothing, counted until data comes (an
    /// empty frame that ends a stream neither counts nor clears the count:
    /// it may be on a stream being ignored).
    fn count_empty(&mut self, flow_len: u32, end_stream: bool) -> Step {
        if flow_len > 0 {
            self.empty_frames = 0;
            return Ok(());
        }
        if end_stream {
            return Ok(());
        }
        self.empty_frames += 1;
        match self.empty_frames > MAX_EMPTY_FRAMES {
            true => Err(conn_error(Reason::ENHANCE_YOUR_CALM)),
            false => Ok(()),
        }
    }

    /// The server took `n` bytes of `stream`'s body: the client may send
    /// as many again (WINDOW_UPDATEs once half a window is owed). A stream
    /// gone meanwhile gave its bytes back when it went.
    pub fn release(&mut self, stream: u32, n: usize) {
        if self.phase == Phase::Failed {
            return;
        }
        let Some(s) = self.streams.get_mut(&stream) else {
            return;
        };
        let n = u32::try_from(n).unwrap_or(u32::MAX).min(s.outstanding);
        s.outstanding -= n;
        self.credit(stream, n);
    }

    /// `n` bytes of `stream` no longer held: owed back to the client.
    fn credit(&mut self, stream: u32, n: u32) {
        if let Some(s) = self.streams.get_mut(&stream)
            && s.recv_open
        {
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
    /// window is owed, or once the client has less window left than is
    /// owed (streams that hold their bytes would otherwise leave the owed
    /// part stranded below the half, and every stream stalled).
    pub(super) fn give_back(&mut self, n: u32) {
        self.released += n;
        let owed = self.released > 0;
        let low = self.recv_window <= i64::from(self.released);
        if owed && (self.released >= self.config.connection_window / 2 || low) {
            frame::write_window_update(&mut self.out, 0, self.released);
            self.recv_window += i64::from(self.released);
            self.released = 0;
        }
    }

    /// Remembers a stream that ended, for [`Conn::block_for`].
    pub(super) fn remember_closed(&mut self, stream: u32) {
        if self.recent_closed.len() == RECENT_RESETS {
            self.recent_closed.pop_front();
        }
        self.recent_closed.push_back(stream);
    }

    pub(super) fn remember_reset(&mut self, stream: u32) {
        if self.recent_resets.len() == RECENT_RESETS {
            self.recent_resets.pop_front();
        }
        self.recent_resets.push_back(stream);
    }
}

/// A trailer section's fields: regular fields only, checked as a request's.
struct Trailers {
    map: HeaderMap,
    size: usize,
    max_size: usize,
    malformed: bool,
}

impl Trailers {
    fn new(max_size: usize) -> Trailers {
        Trailers {
            map: HeaderMap::new(),
            size: 0,
            max_size,
            malformed: false,
        }
    }

    fn field(&mut self, field: Field, size: usize) {
        self.size = self.size.saturating_add(size);
        match field {
            Field::Header(name, value) if super::super::request::allowed(&name, &value) => {
                // A map past its most names is over any sane limit too.
                if self.size <= self.max_size && self.map.try_append(name, value).is_err() {
                    self.size = usize::MAX;
                }
            }
            _ => self.malformed = true,
        }
    }

    /// The trailers, or `None` if malformed or over the limit (a reset:
    /// the response may be under way, too late for a 431).
    fn finish(self) -> Option<HeaderMap> {
        (!self.malformed && self.size <= self.max_size).then_some(self.map)
    }
}
