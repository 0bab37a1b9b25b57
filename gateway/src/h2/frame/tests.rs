use super::*;

/// A frame's bytes: header from the parts, then `payload`.
fn raw(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> BytesMut {
    let mut b = BytesMut::new();
    write_head(&mut b, payload.len(), kind, flags, stream);
    b.extend_from_slice(payload);
    b
}

fn one(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Result<Frame, FrameError> {
    let mut b = raw(kind, flags, stream, payload);
    let frame = parse(&mut b, DEFAULT_MAX_FRAME_SIZE).map(|f| f.expect("a whole frame"));
    assert!(
        b.is_empty() || frame.is_err(),
        "the frame was taken off whole"
    );
    frame
}

const CONN_PROTOCOL: FrameError = FrameError::Connection(Reason::PROTOCOL_ERROR);
const CONN_SIZE: FrameError = FrameError::Connection(Reason::FRAME_SIZE_ERROR);

#[test]
fn waits_for_a_whole_frame_and_takes_one_at_a_time() {
    let mut b = raw(kind::PING, 0, 0, &[1; 8]);
    b.extend_from_slice(&raw(kind::SETTINGS, flags::ACK, 0, &[]));
    let mut partial = BytesMut::from(&b[..HEADER_LEN + 3]);
    assert_eq!(parse(&mut partial, DEFAULT_MAX_FRAME_SIZE), Ok(None));
    assert_eq!(partial.len(), HEADER_LEN + 3, "nothing taken");
    let ping = parse(&mut b, DEFAULT_MAX_FRAME_SIZE).unwrap();
    assert_eq!(
        ping,
        Some(Frame::Ping {
            ack: false,
            payload: [1; 8]
        })
    );
    assert_eq!(
        parse(&mut b, DEFAULT_MAX_FRAME_SIZE),
        Ok(Some(Frame::SettingsAck))
    );
    assert_eq!(parse(&mut b, DEFAULT_MAX_FRAME_SIZE), Ok(None));
}

#[test]
fn a_frame_over_the_size_limit_ends_the_connection() {
    let mut b = raw(kind::DATA, 0, 1, &vec![0; 16_385]);
    assert_eq!(parse(&mut b, DEFAULT_MAX_FRAME_SIZE), Err(CONN_SIZE));
    // Seen from the header alone: the payload need not have arrived.
    let mut head = BytesMut::from(&raw(kind::DATA, 0, 1, &vec![0; 20_000])[..HEADER_LEN]);
    assert_eq!(parse(&mut head, DEFAULT_MAX_FRAME_SIZE), Err(CONN_SIZE));
    let mut b = raw(kind::DATA, 0, 1, &vec![0; 20_000]);
    assert!(matches!(
        parse(&mut b, 20_000),
        Ok(Some(Frame::Data { .. }))
    ));
}

#[test]
fn data_frames_and_their_padding() {
    let plain = one(kind::DATA, flags::END_STREAM, 1, b"hello").unwrap();
    assert_eq!(
        plain,
        Frame::Data {
            stream: 1,
            data: Bytes::from_static(b"hello"),
            end_stream: true,
            flow_len: 5
        }
    );
    // Pad length 3: "hi" then three octets of padding; flow control counts all 6.
    let padded = one(kind::DATA, flags::PADDED, 3, &[3, b'h', b'i', 0, 0, 0]).unwrap();
    assert_eq!(
        padded,
        Frame::Data {
            stream: 3,
            data: Bytes::from_static(b"hi"),
            end_stream: false,
            flow_len: 6
        }
    );
    assert_eq!(
        one(kind::DATA, flags::PADDED, 3, &[3, 0, 0]),
        Err(CONN_PROTOCOL)
    );
    assert_eq!(one(kind::DATA, flags::PADDED, 3, &[]), Err(CONN_SIZE));
    assert_eq!(one(kind::DATA, 0, 0, b"x"), Err(CONN_PROTOCOL));
    // The reserved bit of the stream identifier is ignored.
    let mut b = raw(kind::DATA, 0, 0x8000_0005, b"x");
    let frame = parse(&mut b, DEFAULT_MAX_FRAME_SIZE).unwrap().unwrap();
    assert!(matches!(frame, Frame::Data { stream: 5, .. }));
}

#[test]
fn headers_frames_lose_padding_and_priority() {
    let all = flags::PADDED | flags::PRIORITY | flags::END_HEADERS;
    // Pad 2, priority (depends on 1, weight 16), fragment "ab", padding.
    let payload = [2, 0, 0, 0, 1, 16, b'a', b'b', 0, 0];
    assert_eq!(
        one(kind::HEADERS, all, 3, &payload).unwrap(),
        Frame::Headers {
            stream: 3,
            fragment: Bytes::from_static(b"ab"),
            end_stream: false,
            end_headers: true,
            self_dependent: false,
        }
    );
    // Depending on itself: flagged, for the connection to reset the stream
    // once it has decoded the block.
    let own = [0, 0, 0, 3, 16, b'a'];
    assert_eq!(
        one(kind::HEADERS, flags::PRIORITY, 3, &own),
        Ok(Frame::Headers {
            stream: 3,
            fragment: Bytes::from_static(b"a"),
            end_stream: false,
            end_headers: false,
            self_dependent: true,
        })
    );
    // Padding longer than what follows the priority fields.
    let over = [4, 0, 0, 0, 1, 16, b'a', 0, 0];
    assert_eq!(one(kind::HEADERS, all, 3, &over), Err(CONN_PROTOCOL));
    assert_eq!(
        one(kind::HEADERS, flags::PRIORITY, 3, &[0, 0, 1]),
        Err(CONN_SIZE)
    );
    assert_eq!(one(kind::HEADERS, 0, 0, b""), Err(CONN_PROTOCOL));
    assert_eq!(one(kind::CONTINUATION, 0, 0, b""), Err(CONN_PROTOCOL));
}

#[test]
fn a_long_block_is_split_into_continuations() {
    let block: Vec<u8> = (0..40_000u32).map(|i| i as u8).collect();
    let mut b = BytesMut::new();
    write_headers(&mut b, 7, &block, true, DEFAULT_MAX_FRAME_SIZE);
    let mut parts = Vec::new();
    while let Some(frame) = parse(&mut b, DEFAULT_MAX_FRAME_SIZE).unwrap() {
        parts.push(frame);
    }
    let mut joined = Vec::new();
    for (i, part) in parts.iter().enumerate() {
        let last = i == parts.len() - 1;
        match (i, part) {
            (
                0,
                Frame::Headers {
                    stream: 7,
                    fragment,
                    end_stream: true,
                    end_headers,
                    ..
                },
            ) => {
                assert_eq!(*end_headers, last);
                joined.extend_from_slice(fragment);
            }
            (
                1..,
                Frame::Continuation {
                    stream: 7,
                    fragment,
                    end_headers,
                },
            ) => {
                assert_eq!(*end_headers, last);
                joined.extend_from_slice(fragment);
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(parts.len(), 3);
    assert_eq!(joined, block);
    // An empty block is one HEADERS frame.
    write_headers(&mut b, 9, &[], false, DEFAULT_MAX_FRAME_SIZE);
    assert_eq!(
        parse(&mut b, DEFAULT_MAX_FRAME_SIZE).unwrap(),
        Some(Frame::Headers {
            stream: 9,
            fragment: Bytes::new(),
            end_stream: false,
            end_headers: true,
            self_dependent: false,
        })
    );
}

#[test]
fn settings_are_checked() {
    let entry = |id: u16, value: u32| {
        let mut e = id.to_be_bytes().to_vec();
        e.extend_from_slice(&value.to_be_bytes());
        e
    };
    let mut payload = entry(0x4, 65_535);
    payload.extend(entry(0x99, 7));
    payload.extend(entry(0x5, 1 << 20));
    payload.extend(entry(0x2, 0));
    let expected = Settings {
        initial_window_size: Some(65_535),
        max_frame_size: Some(1 << 20),
        enable_push: Some(false),
        ..Settings::default()
    };
    assert_eq!(
        one(kind::SETTINGS, 0, 0, &payload),
        Ok(Frame::Settings(expected))
    );
    let cases = [
        (entry(0x2, 2), CONN_PROTOCOL),
        (entry(0x8, 2), CONN_PROTOCOL),
        (
            entry(0x4, 1 << 31),
            FrameError::Connection(Reason::FLOW_CONTROL_ERROR),
        ),
        (entry(0x5, 16_383), CONN_PROTOCOL),
        (entry(0x5, 1 << 24), CONN_PROTOCOL),
        (vec![0; 5], CONN_SIZE),
    ];
    for (payload, error) in cases {
        assert_eq!(
            one(kind::SETTINGS, 0, 0, &payload),
            Err(error),
            "{payload:?}"
        );
    }
    assert_eq!(one(kind::SETTINGS, 0, 1, &[]), Err(CONN_PROTOCOL));
    assert_eq!(
        one(kind::SETTINGS, flags::ACK, 0, &entry(0x4, 1)),
        Err(CONN_SIZE)
    );
    // What this side writes parses back to the same values.
    let ours = Settings {
        max_concurrent_streams: Some(256),
        initial_window_size: Some(1 << 20),
        max_header_list_size: Some(65_536),
        enable_connect_protocol: Some(true),
        ..Settings::default()
    };
    let mut b = BytesMut::new();
    ours.write(&mut b);
    assert_eq!(
        parse(&mut b, DEFAULT_MAX_FRAME_SIZE),
        Ok(Some(Frame::Settings(ours)))
    );
}

#[test]
fn control_frames_have_their_sizes_and_streams() {
    assert_eq!(one(kind::PING, 0, 0, &[0; 7]), Err(CONN_SIZE));
    assert_eq!(one(kind::PING, 0, 1, &[0; 8]), Err(CONN_PROTOCOL));
    assert_eq!(one(kind::GOAWAY, 0, 0, &[0; 7]), Err(CONN_SIZE));
    assert_eq!(one(kind::GOAWAY, 0, 3, &[0; 8]), Err(CONN_PROTOCOL));
    assert_eq!(one(kind::RST_STREAM, 0, 1, &[0; 3]), Err(CONN_SIZE));
    assert_eq!(one(kind::RST_STREAM, 0, 0, &[0; 4]), Err(CONN_PROTOCOL));
    assert_eq!(
        one(kind::PRIORITY, 0, 5, &[0; 4]),
        Err(FrameError::Stream(5, Reason::FRAME_SIZE_ERROR))
    );
    assert_eq!(
        one(kind::PRIORITY, 0, 5, &[0, 0, 0, 1, 9]),
        Ok(Frame::Priority { stream: 5 })
    );
    assert_eq!(
        one(kind::PUSH_PROMISE, flags::END_HEADERS, 1, &[0, 0, 0, 2]),
        Err(CONN_PROTOCOL)
    );
    assert_eq!(one(kind::WINDOW_UPDATE, 0, 0, &[0; 4]), Err(CONN_PROTOCOL));
    assert_eq!(
        one(kind::WINDOW_UPDATE, 0, 3, &[0x80, 0, 0, 0]),
        Err(FrameError::Stream(3, Reason::PROTOCOL_ERROR))
    );
    assert_eq!(one(kind::WINDOW_UPDATE, 0, 3, &[0; 5]), Err(CONN_SIZE));
    assert_eq!(
        one(0xfa, 0xff, 3, b"anything"),
        Ok(Frame::Unknown { stream: 3 })
    );
    // A GOAWAY's debug data is allowed and skipped.
    let mut goaway = vec![0x80, 0, 0, 9, 0, 0, 0, 0xb];
    goaway.extend_from_slice(b"debug");
    assert_eq!(
        one(kind::GOAWAY, 0, 0, &goaway),
        Ok(Frame::GoAway {
            last_stream: 9,
            reason: Reason::ENHANCE_YOUR_CALM
        })
    );
}

#[test]
fn what_this_side_writes_parses_back() {
    let mut b = BytesMut::new();
    write_settings_ack(&mut b);
    write_ping_ack(&mut b, [7; 8]);
    write_reset(&mut b, 5, Reason::CANCEL);
    write_goaway(&mut b, 11, Reason::NO_ERROR);
    write_window_update(&mut b, 0, MAX_WINDOW);
    write_data_head(&mut b, 3, 2, true);
    b.extend_from_slice(b"ok");
    let mut frames = Vec::new();
    while let Some(frame) = parse(&mut b, DEFAULT_MAX_FRAME_SIZE).unwrap() {
        frames.push(frame);
    }
    assert_eq!(
        frames,
        [
            Frame::SettingsAck,
            Frame::Ping {
                ack: true,
                payload: [7; 8]
            },
            Frame::Reset {
                stream: 5,
                reason: Reason::CANCEL
            },
            Frame::GoAway {
                last_stream: 11,
                reason: Reason::NO_ERROR
            },
            Frame::WindowUpdate {
                stream: 0,
                increment: MAX_WINDOW
            },
            Frame::Data {
                stream: 3,
                data: Bytes::from_static(b"ok"),
                end_stream: true,
                flow_len: 2
            },
        ]
    );
}
