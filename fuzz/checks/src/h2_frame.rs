//! `h2_frame`: bytes into the HTTP/2 frame parser (`portico_gateway::h2::frame`),
//! no sockets.
//!
//! The first byte chooses this side's maximum frame size (bit 0: 16,384 or
//! 16,777,215) and the piece size the rest arrives in (bits 1-7, plus one).
//!
//! Oracles:
//! - nothing panics;
//! - a frame is taken off the buffer whole (its header and the length it
//!   states), and an incomplete one not at all;
//! - parsing in pieces gives the same frames and the same error as parsing
//!   all at once;
//! - a DATA frame's data is never longer than the length flow control
//!   counts, which is its payload's;
//! - every frame this side can write (DATA, HEADERS with CONTINUATION,
//!   SETTINGS and its ACK, PING ACK, RST_STREAM, GOAWAY, WINDOW_UPDATE),
//!   written from what was parsed, parses back the same.

use bytes::BytesMut;
use portico_gateway::h2::frame::{self, Frame, FrameError};

/// Runs one input; panics when an oracle does not hold.
pub fn check(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let max = if mode & 1 == 0 {
        frame::DEFAULT_MAX_FRAME_SIZE
    } else {
        frame::MAX_MAX_FRAME_SIZE
    };
    let whole = parse_all(&mut BytesMut::from(rest), max);
    let piece = usize::from(mode >> 1) + 1;
    assert_eq!(parse_in_pieces(rest, piece, max), whole);
    for frame in &whole.0 {
        round_trip(frame);
    }
}

/// Every frame, then the error if one stopped the parse.
fn parse_all(buf: &mut BytesMut, max: u32) -> (Vec<Frame>, Option<FrameError>) {
    let mut frames = Vec::new();
    loop {
        let before = buf.len();
        let stated = (before >= frame::HEADER_LEN)
            .then(|| frame::HEADER_LEN + u32::from_be_bytes([0, buf[0], buf[1], buf[2]]) as usize);
        match frame::parse(buf, max) {
            Ok(Some(frame)) => {
                assert_eq!(Some(before - buf.len()), stated, "a frame taken off whole");
                if let Frame::Data { data, flow_len, .. } = &frame {
                    assert!(data.len() <= *flow_len as usize);
                    assert_eq!(Some(*flow_len as usize + frame::HEADER_LEN), stated);
                }
                frames.push(frame);
            }
            Ok(None) => {
                assert_eq!(buf.len(), before, "an incomplete frame left where it was");
                return (frames, None);
            }
            Err(e) => return (frames, Some(e)),
        }
    }
}

fn parse_in_pieces(data: &[u8], piece: usize, max: u32) -> (Vec<Frame>, Option<FrameError>) {
    let mut buf = BytesMut::new();
    let mut frames = Vec::new();
    for chunk in data.chunks(piece) {
        buf.extend_from_slice(chunk);
        let (more, error) = parse_all(&mut buf, max);
        frames.extend(more);
        if error.is_some() {
            return (frames, error);
        }
    }
    (frames, None)
}

/// `frame` written by this side's writer, parsed again.
fn round_trip(parsed: &Frame) {
    let mut b = BytesMut::new();
    let expected = match parsed.clone() {
        Frame::Data {
            stream,
            data,
            end_stream,
            ..
        } => {
            frame::write_data_head(&mut b, stream, data.len(), end_stream);
            b.extend_from_slice(&data);
            let flow_len = data.len() as u32;
            Frame::Data {
                stream,
                data,
                end_stream,
                flow_len,
            }
        }
        Frame::Headers {
            stream,
            fragment,
            end_stream,
            ..
        } => {
            frame::write_headers(&mut b, stream, &fragment, end_stream, u32::MAX >> 8);
            // Written without priority fields.
            Frame::Headers {
                stream,
                fragment,
                end_stream,
                end_headers: true,
                self_dependent: false,
            }
        }
        Frame::Settings(settings) => {
            settings.write(&mut b);
            Frame::Settings(settings)
        }
        Frame::SettingsAck => {
            frame::write_settings_ack(&mut b);
            Frame::SettingsAck
        }
        Frame::Ping { payload, .. } => {
            frame::write_ping_ack(&mut b, payload);
            Frame::Ping { ack: true, payload }
        }
        Frame::Reset { stream, reason } => {
            frame::write_reset(&mut b, stream, reason);
            Frame::Reset { stream, reason }
        }
        Frame::GoAway {
            last_stream,
            reason,
        } => {
            frame::write_goaway(&mut b, last_stream, reason);
            Frame::GoAway {
                last_stream,
                reason,
            }
        }
        Frame::WindowUpdate { stream, increment } => {
            frame::write_window_update(&mut b, stream, increment);
            Frame::WindowUpdate { stream, increment }
        }
        Frame::Continuation { .. } | Frame::Priority { .. } | Frame::Unknown { .. } => return,
    };
    let again = frame::parse(&mut b, frame::MAX_MAX_FRAME_SIZE).expect("this side's frame parses");
    assert_eq!(again, Some(expected));
    assert!(b.is_empty());
}
