//! The sending half: response heads, bodies within the client's windows,
//! trailers, resets and the graceful GOAWAY; and streams' ends.

use super::*;

impl Conn {
    /// Writes `stream`'s response head, a field `beside` its map after the
    /// map's own; `end_stream` when it has no body. A stream reset
    /// meanwhile is passed over.
    pub fn respond(
        &mut self,
        stream: u32,
        status: StatusCode,
        (headers, beside): (&HeaderMap, Option<(&http::HeaderName, &http::HeaderValue)>),
        end_stream: bool,
    ) {
        if self.phase == Phase::Failed {
            return;
        }
        let Some(s) = self.streams.get_mut(&stream) else {
            return;
        };
        debug_assert!(s.send_open && !s.responded, "one head per stream");
        s.responded = true;
        self.scratch.clear();
        self.encoder.response(status, headers, &mut self.scratch);
        super::super::hpack::literal_fields(beside, &mut self.scratch);
        frame::write_headers(
            &mut self.out,
            stream,
            &self.scratch,
            end_stream,
            self.peer_max_frame,
        );
        if end_stream {
            self.end_send(stream);
        }
    }

    /// Writes an informational (1xx) head on `stream`, if its response has
    /// not begun: `100 Continue` to a client that waits for it.
    pub fn inform(&mut self, stream: u32, status: StatusCode) {
        debug_assert!(status.is_informational());
        if self.phase == Phase::Failed {
            return;
        }
        if !self
            .streams
            .get(&stream)
            .is_some_and(|s| s.send_open && !s.responded)
        {
            return;
        }
        self.scratch.clear();
        self.encoder
            .response(status, &HeaderMap::new(), &mut self.scratch);
        frame::write_headers(
            &mut self.out,
            stream,
            &self.scratch,
            false,
            self.peer_max_frame,
        );
    }

    /// How many body bytes the connection's window lets all streams send
    /// now.
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
    /// the client's frame size, and returns how much that was; with
    /// `end_stream`, the last frame ends the stream once all of `data` is
    /// written (an empty `data` just ends it).
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

    /// Writes `stream`'s trailers, which end it.
    pub fn send_trailers(&mut self, stream: u32, trailers: &HeaderMap) {
        if !self.streams.contains_key(&stream) || self.phase == Phase::Failed {
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

    /// Resets `stream` (a stream error, or the server giving up on it);
    /// if the server knew it, an [`Event::Reset`] says so.
    pub fn reset(&mut self, stream: u32, reason: Reason) {
        if self.phase == Phase::Failed {
            return;
        }
        frame::write_reset(&mut self.out, stream, reason);
        self.remember_reset(stream);
        if self.remove(stream) {
            self.push_event(Event::Reset { stream, reason });
        }
    }

    /// Starts a graceful close, in two steps (RFC 9113, section 6.8): a
    /// GOAWAY naming the highest stream there could be, with a PING; once
    /// the PING comes back, every request the client sent before it read
    /// the first GOAWAY has arrived, and a second GOAWAY names the last
    /// stream opened. Those are still served; streams the client opens
    /// after it are ignored (the client may retry them elsewhere). A
    /// single GOAWAY would refuse requests already on the wire.
    pub fn go_away(&mut self) {
        if self.goaway.is_none() && self.phase != Phase::Failed {
            frame::write_goaway(&mut self.out, MAX_STREAM, Reason::NO_ERROR);
            frame::write_ping(&mut self.out, DRAIN_PING);
            self.goaway = Some(MAX_STREAM);
            self.drain_ping = true;
        }
    }

    /// The second GOAWAY of a graceful close, when its PING came back.
    pub(super) fn finish_go_away(&mut self) {
        if self.drain_ping && self.phase != Phase::Failed {
            frame::write_goaway(&mut self.out, self.last_stream, Reason::NO_ERROR);
            self.goaway = Some(self.last_stream);
            self.drain_ping = false;
        }
    }

    /// Whether the connection may close: a connection error was sent, or
    /// this side went away and every stream it still served has ended.
    pub fn is_done(&self) -> bool {
        let drained = self.streams.is_empty() && self.pending.is_none();
        self.phase == Phase::Failed || (self.goaway.is_some() && !self.drain_ping && drained)
    }

    /// Streams open or half closed.
    pub fn open_streams(&self) -> usize {
        self.streams.len()
    }

    /// This side's half ended: the stream ends if the client's has too; if
    /// not, the client is asked to stop sending (RST_STREAM `NO_ERROR`,
    /// section 8.1), the response being whole.
    fn end_send(&mut self, stream: u32) {
        let s = self
            .streams
            .get_mut(&stream)
            .expect("checked by the caller");
        s.send_open = false;
        self.resets_left = self
            .resets_left
            .saturating_add(1)
            .min(self.config.reset_budget);
        if s.recv_open {
            frame::write_reset(&mut self.out, stream, Reason::NO_ERROR);
            self.remember_reset(stream);
            self.remove(stream);
            // The request's body will get no more: its reader is told.
            self.push_event(Event::Reset {
                stream,
                reason: Reason::NO_ERROR,
            });
        } else {
            self.remove_if_done(stream);
        }
    }

    /// Forgets `stream` once both halves have ended.
    pub(super) fn remove_if_done(&mut self, stream: u32) {
        if self
            .streams
            .get(&stream)
            .is_some_and(|s| !s.recv_open && !s.send_open)
        {
            self.remove(stream);
        }
    }

    /// Forgets `stream`, giving the connection back the body bytes the
    /// server never took; `false` if it was not known.
    pub(super) fn remove(&mut self, stream: u32) -> bool {
        match self.streams.remove(&stream) {
            Some(s) => {
                self.give_back(s.outstanding);
                self.remember_closed(stream);
                true
            }
            None => false,
        }
    }
}
