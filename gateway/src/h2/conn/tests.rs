use super::*;
use crate::h2::io::IDLE_OUT_KEPT;
use bytes::{Buf, BufMut};

/// A frame as a client writes it.
fn raw(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let mut b = Vec::new();
    b.put_uint(payload.len() as u64, 3);
    b.put_u8(kind);
    b.put_u8(flags);
    b.put_u32(stream);
    b.extend_from_slice(payload);
    b
}

const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const RST: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const PING: u8 = 0x6;
const WINDOW_UPDATE: u8 = 0x8;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;

/// A field block of literals (no indexing, new names).
fn block(fields: &[(&str, &str)]) -> Vec<u8> {
    let mut b = Vec::new();
    for (name, value) in fields {
        b.push(0);
        for s in [name, value] {
            // A 7-bit prefix: up to 254 octets in one or two bytes.
            match s.len() {
                n @ 0..127 => b.push(n as u8),
                n => b.extend([127, (n - 127) as u8]),
            }
            b.extend_from_slice(s.as_bytes());
        }
    }
    b
}

fn get(path: &str) -> Vec<u8> {
    block(&[
        (":method", "GET"),
        (":scheme", "http"),
        (":authority", "a.test"),
        (":path", path),
    ])
}

fn post(length: Option<&str>) -> Vec<u8> {
    let mut fields = vec![
        (":method", "POST"),
        (":scheme", "http"),
        (":authority", "a.test"),
        (":path", "/up"),
    ];
    if let Some(l) = length {
        fields.push(("content-length", l));
    }
    block(&fields)
}

/// A connection past its handshake (preface, empty SETTINGS), its own
/// first frames taken out.
fn open(config: Config) -> Conn {
    let mut conn = Conn::new(config);
    let mut input = PREFACE.to_vec();
    input.extend(raw(SETTINGS, 0, 0, &[]));
    feed(&mut conn, &input).expect("handshake");
    written(&mut conn);
    conn
}

fn feed(conn: &mut Conn, bytes: &[u8]) -> Result<Vec<Event>, Reason> {
    let mut buf = BytesMut::from(bytes);
    conn.recv(&mut buf)?;
    assert!(buf.is_empty(), "every whole frame taken");
    Ok(conn.take_events())
}

/// The frames `conn` wrote since last asked.
fn written(conn: &mut Conn) -> Vec<Frame> {
    let mut out = std::mem::take(&mut conn.out);
    let mut frames = Vec::new();
    while let Some(f) = frame::parse(&mut out, frame::MAX_MAX_FRAME_SIZE).expect("valid frames") {
        frames.push(f);
    }
    frames
}

fn resets(frames: &[Frame]) -> Vec<(u32, Reason)> {
    frames
        .iter()
        .filter_map(|f| match f {
            Frame::Reset { stream, reason } => Some((*stream, *reason)),
            _ => None,
        })
        .collect()
}

/// The last streams the GOAWAYs among `frames` named, in order.
fn goaway_lasts(frames: &[Frame]) -> Vec<u32> {
    frames
        .iter()
        .filter_map(|f| match f {
            Frame::GoAway { last_stream, .. } => Some(*last_stream),
            _ => None,
        })
        .collect()
}

fn goaway(frames: &[Frame]) -> Option<Reason> {
    frames.iter().find_map(|f| match f {
        Frame::GoAway { reason, .. } => Some(*reason),
        _ => None,
    })
}

#[test]
fn the_handshake() {
    let mut conn = Conn::new(Config::default());
    let first = written(&mut conn);
    assert!(matches!(
        &first[..],
        [Frame::Settings(s), Frame::WindowUpdate { stream: 0, increment }]
            if s.max_concurrent_streams == Some(256) && s.enable_push == Some(false)
                && *increment == (1 << 20) - 65_535
    ));
    // The preface in two pieces, then the client's SETTINGS: acknowledged.
    let mut buf = BytesMut::from(&PREFACE[..10]);
    conn.recv(&mut buf).unwrap();
    assert_eq!(buf.len(), 10, "kept until the rest arrives");
    buf.extend_from_slice(&PREFACE[10..]);
    buf.extend_from_slice(&raw(SETTINGS, 0, 0, &[0, 4, 0, 0, 0x10, 0]));
    conn.recv(&mut buf).unwrap();
    assert!(buf.is_empty());
    assert_eq!(written(&mut conn), [Frame::SettingsAck]);

    let mut bad = Conn::new(Config::default());
    written(&mut bad);
    assert_eq!(
        feed(&mut bad, b"GET / HTTP/1.1\r\n").err(),
        Some(Reason::PROTOCOL_ERROR)
    );
    assert_eq!(goaway(&written(&mut bad)), Some(Reason::PROTOCOL_ERROR));

    let mut no_settings = Conn::new(Config::default());
    let mut input = PREFACE.to_vec();
    input.extend(raw(PING, 0, 0, &[0; 8]));
    assert_eq!(
        feed(&mut no_settings, &input).err(),
        Some(Reason::PROTOCOL_ERROR)
    );
}

#[test]
fn a_get_and_its_response() {
    let mut conn = open(Config::default());
    let events = feed(
        &mut conn,
        &raw(HEADERS, END_STREAM | END_HEADERS, 1, &get("/x")),
    )
    .unwrap();
    let [
        Event::Request {
            stream: 1,
            head,
            end_stream: true,
        },
    ] = &events[..]
    else {
        panic!("{events:?}");
    };
    assert_eq!(head.parts.uri, "http://a.test/x");
    let mut headers = HeaderMap::new();
    headers.insert("content-type", "text/plain".parse().unwrap());
    conn.respond(1, StatusCode::OK, (&headers, None), false);
    assert_eq!(conn.send_data(1, b"ok", true), 2);
    let frames = written(&mut conn);
    let [
        Frame::Headers {
            stream: 1,
            fragment,
            end_stream: false,
            end_headers: true,
            ..
        },
        Frame::Data {
            stream: 1,
            data,
            end_stream: true,
            ..
        },
    ] = &frames[..]
    else {
        panic!("{frames:?}");
    };
    assert_eq!(&data[..], b"ok");
    let mut fields = Vec::new();
    Decoder::new(4096)
        .decode(fragment, |f, _| fields.push(f))
        .unwrap();
    assert_eq!(
        fields[0],
        Field::Pseudo(super::super::table::Pseudo::Status, "200".parse().unwrap())
    );
    assert_eq!(conn.open_streams(), 0);
    // A PING is answered.
    feed(&mut conn, &raw(PING, 0, 0, &[9; 8])).unwrap();
    assert_eq!(
        written(&mut conn),
        [Frame::Ping {
            ack: true,
            payload: [9; 8]
        }]
    );
}

/// `n` bytes of DATA on `stream`, in frames of at most 16,384.
fn data_frames(stream: u32, n: usize) -> Vec<u8> {
    let body = vec![7; n];
    body.chunks(16_384)
        .flat_map(|c| raw(DATA, 0, stream, c))
        .collect()
}

#[test]
fn a_body_and_its_windows() {
    let config = Config {
        stream_window: 65_535,
        connection_window: 1 << 20,
        ..Config::default()
    };
    let mut conn = open(config);
    feed(&mut conn, &raw(HEADERS, END_HEADERS, 1, &post(None))).unwrap();
    let events = feed(&mut conn, &data_frames(1, 40_000)).unwrap();
    let got: usize = events
        .iter()
        .map(|e| match e {
            Event::Data {
                stream: 1,
                data,
                end_stream: false,
            } => data.len(),
            other => panic!("{other:?}"),
        })
        .sum();
    assert_eq!(got, 40_000);
    // Taken by the server: over half the window is owed, so it is given
    // back (the connection's half-window mark is not reached).
    conn.release(1, 40_000);
    assert_eq!(
        written(&mut conn),
        [Frame::WindowUpdate {
            stream: 1,
            increment: 40_000
        }]
    );
    // The window is 65,535 again: one byte more is past it.
    feed(&mut conn, &data_frames(1, 65_535)).unwrap();
    let events = feed(&mut conn, &raw(DATA, 0, 1, &[7; 1])).unwrap();
    assert!(matches!(
        &events[..],
        [Event::Reset {
            stream: 1,
            reason: Reason::FLOW_CONTROL_ERROR
        }]
    ));
    assert_eq!(
        resets(&written(&mut conn)),
        [(1, Reason::FLOW_CONTROL_ERROR)]
    );
    assert_eq!(conn.open_streams(), 0);
}

#[test]
fn content_length_must_match_the_data() {
    let mut conn = open(Config::default());
    feed(&mut conn, &raw(HEADERS, END_HEADERS, 1, &post(Some("3")))).unwrap();
    let events = feed(&mut conn, &raw(DATA, END_STREAM, 1, b"ab")).unwrap();
    assert!(matches!(
        &events[..],
        [Event::Reset {
            stream: 1,
            reason: Reason::PROTOCOL_ERROR
        }]
    ));
    feed(&mut conn, &raw(HEADERS, END_HEADERS, 3, &post(Some("1")))).unwrap();
    feed(&mut conn, &raw(DATA, 0, 3, b"ab")).unwrap();
    // Declared, no body at all.
    feed(
        &mut conn,
        &raw(HEADERS, END_STREAM | END_HEADERS, 5, &post(Some("2"))),
    )
    .unwrap();
    let frames = written(&mut conn);
    assert_eq!(
        resets(&frames),
        [
            (1, Reason::PROTOCOL_ERROR),
            (3, Reason::PROTOCOL_ERROR),
            (5, Reason::PROTOCOL_ERROR)
        ]
    );
    // Exactly its length, then trailers: fine.
    feed(&mut conn, &raw(HEADERS, END_HEADERS, 7, &post(Some("2")))).unwrap();
    feed(&mut conn, &raw(DATA, 0, 7, b"ab")).unwrap();
    let events = feed(
        &mut conn,
        &raw(
            HEADERS,
            END_STREAM | END_HEADERS,
            7,
            &block(&[("x-sum", "1")]),
        ),
    )
    .unwrap();
    assert!(
        matches!(&events[..], [Event::Trailers { stream: 7, trailers }] if trailers["x-sum"] == "1")
    );
}

#[test]
fn field_blocks_across_continuation() {
    let mut conn = open(Config::default());
    let whole = get("/long");
    let (a, b) = whole.split_at(10);
    let mut input = raw(HEADERS, END_STREAM, 1, a);
    input.extend(raw(CONTINUATION, END_HEADERS, 1, b));
    let events = feed(&mut conn, &input).unwrap();
    assert!(matches!(&events[..], [Event::Request { stream: 1, .. }]));
    // Anything else in the middle of a block ends the connection.
    let mut input = raw(HEADERS, 0, 3, a);
    input.extend(raw(PING, 0, 0, &[0; 8]));
    assert_eq!(feed(&mut conn, &input).err(), Some(Reason::PROTOCOL_ERROR));
    // So does a CONTINUATION that continues nothing (found by fuzzing).
    let mut conn = open(Config::default());
    let input = raw(CONTINUATION, END_HEADERS, 1, b"");
    assert_eq!(feed(&mut conn, &input).err(), Some(Reason::PROTOCOL_ERROR));
    // So does a CONTINUATION flood.
    let mut conn = open(Config::default());
    let mut input = raw(HEADERS, 0, 1, a);
    for _ in 0..10 {
        input.extend(raw(CONTINUATION, 0, 1, &[0; 16_000]));
    }
    assert_eq!(
        feed(&mut conn, &input).err(),
        Some(Reason::ENHANCE_YOUR_CALM)
    );
}

#[test]
fn stream_identifiers_rise_and_are_odd() {
    let mut conn = open(Config::default());
    feed(
        &mut conn,
        &raw(HEADERS, END_STREAM | END_HEADERS, 5, &get("/")),
    )
    .unwrap();
    assert_eq!(
        feed(
            &mut conn,
            &raw(HEADERS, END_STREAM | END_HEADERS, 3, &get("/"))
        )
        .err(),
        Some(Reason::PROTOCOL_ERROR)
    );
    let mut conn = open(Config::default());
    assert_eq!(
        feed(
            &mut conn,
            &raw(HEADERS, END_STREAM | END_HEADERS, 2, &get("/"))
        )
        .err(),
        Some(Reason::PROTOCOL_ERROR)
    );
    // DATA on a stream never opened.
    let mut conn = open(Config::default());
    assert_eq!(
        feed(&mut conn, &raw(DATA, 0, 9, b"x")).err(),
        Some(Reason::PROTOCOL_ERROR)
    );
}

#[test]
fn a_malformed_request_is_reset_and_the_connection_goes_on() {
    let mut conn = open(Config::default());
    // Indexed into the table (literal with incremental indexing), then
    // refused for the uppercase name.
    let mut bad = vec![0x40, 5];
    bad.extend_from_slice(b"X-Bad");
    bad.extend_from_slice(&[1, b'v']);
    let mut fields = get("/");
    fields.extend(bad);
    let events = feed(
        &mut conn,
        &raw(HEADERS, END_STREAM | END_HEADERS, 1, &fields),
    )
    .unwrap();
    assert!(events.is_empty());
    assert_eq!(resets(&written(&mut conn)), [(1, Reason::PROTOCOL_ERROR)]);
    // The table kept the entry: the next request decodes in step.
    let events = feed(
        &mut conn,
        &raw(HEADERS, END_STREAM | END_HEADERS, 3, &get("/ok")),
    )
    .unwrap();
    assert!(matches!(&events[..], [Event::Request { stream: 3, .. }]));
}

#[test]
fn too_many_fields_get_431_and_too_many_streams_are_refused() {
    let config = Config {
        max_header_list_size: 200,
        max_concurrent_streams: 2,
        ..Config::default()
    };
    let mut conn = open(config);
    let big = "v".repeat(150);
    let mut fields = get("/");
    fields.extend(block(&[("x-big", &big)]));
    let events = feed(&mut conn, &raw(HEADERS, END_HEADERS, 1, &fields)).unwrap();
    assert!(events.is_empty());
    let frames = written(&mut conn);
    assert!(matches!(
        &frames[0],
        Frame::Headers {
            stream: 1,
            end_stream: true,
            ..
        }
    ));
    assert_eq!(resets(&frames), [(1, Reason::NO_ERROR)]);
    // Data already on its way to that stream is ignored.
    assert!(
        feed(&mut conn, &raw(DATA, 0, 1, b"late"))
            .unwrap()
            .is_empty()
    );
    assert!(
        written(&mut conn)
            .iter()
            .all(|f| !matches!(f, Frame::Reset { .. }))
    );
    for stream in [3, 5, 7] {
        feed(&mut conn, &raw(HEADERS, END_HEADERS, stream, &get("/"))).unwrap();
    }
    assert_eq!(resets(&written(&mut conn)), [(7, Reason::REFUSED_STREAM)]);
}

#[test]
fn rapid_resets_end_the_connection() {
    let config = Config {
        reset_budget: 10,
        ..Config::default()
    };
    let mut conn = open(config);
    let mut outcome = Ok(Vec::new());
    for stream in (1..100).step_by(2) {
        let mut input = raw(HEADERS, END_STREAM | END_HEADERS, stream, &get("/"));
        input.extend(raw(RST, 0, stream, &8u32.to_be_bytes()));
        outcome = feed(&mut conn, &input);
        if outcome.is_err() {
            assert_eq!(stream, 21, "the eleventh reset, the budget being 10");
            break;
        }
    }
    assert_eq!(outcome.unwrap_err(), Reason::ENHANCE_YOUR_CALM);
    // Responses earn the budget back: answered streams reset afterwards
    // cost nothing.
    let mut conn = open(Config {
        reset_budget: 2,
        ..Config::default()
    });
    for stream in (1..40).step_by(2) {
        feed(
            &mut conn,
            &raw(HEADERS, END_STREAM | END_HEADERS, stream, &get("/")),
        )
        .unwrap();
        conn.respond(stream, StatusCode::OK, (&HeaderMap::new(), None), true);
    }
    assert_eq!(conn.open_streams(), 0);
}

#[test]
fn sending_stays_within_the_clients_windows() {
    let mut conn = Conn::new(Config::default());
    let mut input = PREFACE.to_vec();
    // The client's streams start with 10 bytes of window.
    input.extend(raw(SETTINGS, 0, 0, &[0, 4, 0, 0, 0, 10]));
    input.extend(raw(HEADERS, END_STREAM | END_HEADERS, 1, &get("/")));
    feed(&mut conn, &input).unwrap();
    written(&mut conn);
    conn.respond(1, StatusCode::OK, (&HeaderMap::new(), None), false);
    assert_eq!(conn.capacity(1), 10);
    assert_eq!(conn.send_data(1, b"0123456789abcdef", true), 10);
    assert_eq!(conn.capacity(1), 0);
    feed(&mut conn, &raw(WINDOW_UPDATE, 0, 1, &100u32.to_be_bytes())).unwrap();
    assert_eq!(conn.capacity(1), 100);
    assert_eq!(conn.send_data(1, b"abcdef", true), 6);
    let frames = written(&mut conn);
    let ends: Vec<bool> = frames
        .iter()
        .filter_map(|f| match f {
            Frame::Data { end_stream, .. } => Some(*end_stream),
            _ => None,
        })
        .collect();
    assert_eq!(ends, [false, true]);
    // A settings change moves every open stream's window (section 6.9.2).
    feed(
        &mut conn,
        &raw(HEADERS, END_STREAM | END_HEADERS, 3, &get("/")),
    )
    .unwrap();
    feed(&mut conn, &raw(SETTINGS, 0, 0, &[0, 4, 0, 0, 0, 50])).unwrap();
    assert_eq!(conn.capacity(3), 50);
}

#[test]
fn going_away_serves_what_was_open() {
    let mut conn = open(Config::default());
    feed(
        &mut conn,
        &raw(HEADERS, END_STREAM | END_HEADERS, 1, &get("/")),
    )
    .unwrap();
    conn.go_away();
    let payload = match &written(&mut conn)[..] {
        [
            Frame::GoAway {
                last_stream: 0x7fff_ffff,
                reason: Reason::NO_ERROR,
            },
            Frame::Ping {
                ack: false,
                payload,
            },
        ] => *payload,
        other => panic!("{other:?}"),
    };
    // Sent before the client read the first GOAWAY: still served.
    let events = feed(
        &mut conn,
        &raw(HEADERS, END_STREAM | END_HEADERS, 3, &get("/")),
    )
    .unwrap();
    assert_eq!(events.len(), 1);
    conn.respond(1, StatusCode::NO_CONTENT, (&HeaderMap::new(), None), true);
    conn.respond(3, StatusCode::NO_CONTENT, (&HeaderMap::new(), None), true);
    assert!(!conn.is_done(), "the second GOAWAY waits for the PING");
    feed(&mut conn, &raw(PING, 0x1, 0, &payload)).unwrap();
    assert_eq!(goaway_lasts(&written(&mut conn)), [3]);
    assert!(conn.is_done());
    // A stream opened after it is not served.
    let events = feed(
        &mut conn,
        &raw(HEADERS, END_STREAM | END_HEADERS, 5, &get("/")),
    )
    .unwrap();
    assert!(events.is_empty());
}

#[test]
fn data_on_a_stream_after_it_closed() {
    let mut conn = open(Config::default());
    feed(
        &mut conn,
        &raw(HEADERS, END_STREAM | END_HEADERS, 1, &get("/")),
    )
    .unwrap();
    conn.respond(1, StatusCode::OK, (&HeaderMap::new(), None), true);
    written(&mut conn);
    feed(&mut conn, &raw(DATA, 0, 1, b"x")).unwrap();
    assert_eq!(resets(&written(&mut conn)), [(1, Reason::STREAM_CLOSED)]);
    // A stream the server reset: frames in flight are ignored.
    feed(&mut conn, &raw(HEADERS, END_HEADERS, 3, &post(None))).unwrap();
    conn.reset(3, Reason::CANCEL);
    written(&mut conn);
    feed(&mut conn, &raw(DATA, 0, 3, b"x")).unwrap();
    assert!(resets(&written(&mut conn)).is_empty());
}

/// Review findings, each kept as a test.
mod review {
    use super::*;

    /// A HEADERS frame whose priority names itself is still decoded: the
    /// table stays in step, so a later index means what the client meant.
    #[test]
    fn a_self_dependent_headers_frame_is_decoded_before_its_reset() {
        let mut conn = open(Config::default());
        let auth = |v: u8| vec![0x40 | 23, 1, v];
        let mut b1 = get("/");
        b1.extend(auth(b'A'));
        feed(&mut conn, &raw(HEADERS, END_STREAM | END_HEADERS, 1, &b1)).unwrap();
        let mut b3 = vec![0, 0, 0, 3, 16];
        b3.extend(get("/"));
        b3.extend(auth(b'B'));
        feed(
            &mut conn,
            &raw(HEADERS, 0x20 | END_STREAM | END_HEADERS, 3, &b3),
        )
        .unwrap();
        assert_eq!(resets(&written(&mut conn)), [(3, Reason::PROTOCOL_ERROR)]);
        let mut b5 = get("/");
        b5.push(0x80 | 62);
        let events = feed(&mut conn, &raw(HEADERS, END_STREAM | END_HEADERS, 5, &b5)).unwrap();
        let [Event::Request { head, .. }] = &events[..] else {
            panic!("{events:?}");
        };
        assert_eq!(head.parts.headers["authorization"], "B");
    }

    /// Resets the client provokes (here a zero WINDOW_UPDATE) spend the
    /// same budget as the ones it sends.
    #[test]
    fn provoked_resets_spend_the_budget() {
        let mut conn = open(Config {
            reset_budget: 10,
            ..Config::default()
        });
        let mut outcome = Ok(Vec::new());
        for stream in (1..100).step_by(2) {
            let mut input = raw(HEADERS, END_HEADERS, stream, &post(None));
            input.extend(raw(WINDOW_UPDATE, 0, stream, &0u32.to_be_bytes()));
            outcome = feed(&mut conn, &input);
            if outcome.is_err() {
                break;
            }
        }
        assert_eq!(outcome.err(), Some(Reason::ENHANCE_YOUR_CALM));
    }

    /// Body bytes a reset stream held are given back to the connection:
    /// cancelled uploads do not shrink the window for good.
    #[test]
    fn a_client_reset_gives_its_streams_bytes_back() {
        let mut conn = open(Config::default());
        let mut given = 0u64;
        for stream in (1..121).step_by(2) {
            let mut input = raw(HEADERS, END_HEADERS, stream, &post(None));
            input.extend(raw(DATA, 0, stream, &[0; 16_000]));
            input.extend(raw(RST, 0, stream, &8u32.to_be_bytes()));
            feed(&mut conn, &input).unwrap();
            for f in written(&mut conn) {
                if let Frame::WindowUpdate {
                    stream: 0,
                    increment,
                } = f
                {
                    given += u64::from(increment);
                }
            }
        }
        // 60 x 16,000 sent; all but less than half a window came back.
        assert!(given > 960_000 - 524_288, "given back {given}");
    }

    /// Trailers split over CONTINUATION for a stream that ended meanwhile
    /// open nothing.
    #[test]
    fn trailers_finished_after_their_stream_open_nothing() {
        let mut conn = open(Config::default());
        feed(&mut conn, &raw(HEADERS, END_HEADERS, 1, &post(None))).unwrap();
        feed(&mut conn, &raw(HEADERS, END_STREAM, 1, &[])).unwrap();
        conn.respond(1, StatusCode::OK, (&HeaderMap::new(), None), true);
        // The response ended the stream before the request did: its body's
        // reader is told.
        let told = conn.take_events();
        assert!(matches!(
            &told[..],
            [Event::Reset {
                stream: 1,
                reason: Reason::NO_ERROR
            }]
        ));
        let events = feed(
            &mut conn,
            &raw(CONTINUATION, END_HEADERS, 1, &get("/again")),
        )
        .unwrap();
        assert!(events.is_empty(), "{events:?}");
    }

    /// Trailers on their way to a stream this side reset are ignored, not
    /// an end to the connection.
    #[test]
    fn trailers_for_a_reset_stream_are_ignored() {
        let mut conn = open(Config::default());
        feed(&mut conn, &raw(HEADERS, END_HEADERS, 1, &post(None))).unwrap();
        conn.respond(1, StatusCode::OK, (&HeaderMap::new(), None), true);
        written(&mut conn);
        conn.take_events();
        let trailers = raw(
            HEADERS,
            END_STREAM | END_HEADERS,
            1,
            &block(&[("x-t", "1")]),
        );
        assert!(feed(&mut conn, &trailers).unwrap().is_empty());
        let events = feed(
            &mut conn,
            &raw(HEADERS, END_STREAM | END_HEADERS, 3, &get("/")),
        )
        .unwrap();
        assert!(matches!(&events[..], [Event::Request { stream: 3, .. }]));
    }

    /// A stream error found while parsing leaves the frames after it to be
    /// read in the same call.
    #[test]
    fn frames_after_a_stream_error_are_read() {
        let mut conn = open(Config::default());
        let mut input = raw(HEADERS, END_HEADERS, 1, &post(None));
        input.extend(raw(WINDOW_UPDATE, 0, 1, &0u32.to_be_bytes()));
        input.extend(raw(PING, 0, 0, &[5; 8]));
        feed(&mut conn, &input).unwrap();
        let frames = written(&mut conn);
        assert_eq!(resets(&frames), [(1, Reason::PROTOCOL_ERROR)]);
        assert!(frames.contains(&Frame::Ping {
            ack: true,
            payload: [5; 8]
        }));
        // On a stream never opened it is the connection's error.
        let mut conn = open(Config::default());
        let idle = raw(WINDOW_UPDATE, 0, 9, &0u32.to_be_bytes());
        assert_eq!(feed(&mut conn, &idle).err(), Some(Reason::PROTOCOL_ERROR));
    }

    /// One stream holding its bytes does not strand what the others gave
    /// back below the half-window mark.
    #[test]
    fn released_bytes_are_not_stranded_by_a_slow_stream() {
        let mut conn = open(Config::default());
        let chunk = vec![0; 16_000];
        feed(&mut conn, &raw(HEADERS, END_HEADERS, 1, &post(None))).unwrap();
        // The slow stream: 600,000 bytes, never taken.
        for _ in 0..38 {
            feed(&mut conn, &raw(DATA, 0, 1, &chunk[..15_789])).unwrap();
        }
        feed(&mut conn, &raw(HEADERS, END_HEADERS, 3, &post(None))).unwrap();
        written(&mut conn);
        let mut left = (1u64 << 20) - 38 * 15_789;
        let mut given = 0u64;
        while left > 0 {
            let n = left.min(16_000) as usize;
            feed(&mut conn, &raw(DATA, 0, 3, &chunk[..n])).unwrap();
            conn.release(3, n);
            left -= n as u64;
            for f in written(&mut conn) {
                if let Frame::WindowUpdate {
                    stream: 0,
                    increment,
                } = f
                {
                    given += u64::from(increment);
                }
            }
        }
        assert!(given > 0, "the connection's window was opened again");
    }

    /// A connection error after a graceful GOAWAY names no later stream.
    #[test]
    fn the_last_goaway_names_no_later_stream() {
        let mut conn = open(Config::default());
        feed(&mut conn, &raw(HEADERS, END_HEADERS, 1, &post(None))).unwrap();
        conn.go_away();
        feed(
            &mut conn,
            &raw(HEADERS, END_STREAM | END_HEADERS, 3, &get("/")),
        )
        .unwrap();
        feed(&mut conn, &raw(PING, 0x1, 0, b"portico.")).unwrap();
        feed(
            &mut conn,
            &raw(HEADERS, END_STREAM | END_HEADERS, 5, &get("/")),
        )
        .unwrap();
        assert!(feed(&mut conn, &raw(DATA, 0, 0, b"x")).is_err());
        assert_eq!(goaway_lasts(&written(&mut conn)), [0x7fff_ffff, 3, 3]);
    }

    #[test]
    fn floods_of_pings_and_empty_continuations_end_the_connection() {
        let mut conn = open(Config::default());
        let pings: Vec<u8> = (0..70_000).flat_map(|_| raw(PING, 0, 0, &[1; 8])).collect();
        assert_eq!(
            feed(&mut conn, &pings).err(),
            Some(Reason::ENHANCE_YOUR_CALM)
        );
        let mut conn = open(Config::default());
        let mut input = raw(HEADERS, 0, 1, &get("/")[..5]);
        for _ in 0..65 {
            input.extend(raw(CONTINUATION, 0, 1, &[]));
        }
        assert_eq!(
            feed(&mut conn, &input).err(),
            Some(Reason::ENHANCE_YOUR_CALM)
        );
    }
}

/// HEADERS on a stream that ended is STREAM_CLOSED (section 5.1), on one
/// the client skipped PROTOCOL_ERROR (section 5.1.1).
#[test]
fn headers_on_a_closed_stream_is_stream_closed() {
    let mut conn = open(Config::default());
    let mut input = raw(HEADERS, END_STREAM | END_HEADERS, 1, &get("/"));
    input.extend(raw(HEADERS, END_STREAM | END_HEADERS, 5, &get("/")));
    feed(&mut conn, &input).unwrap();
    conn.respond(1, StatusCode::OK, (&HeaderMap::new(), None), true);
    let again = raw(HEADERS, END_STREAM | END_HEADERS, 1, &get("/"));
    assert_eq!(feed(&mut conn, &again).err(), Some(Reason::STREAM_CLOSED));
    let mut conn = open(Config::default());
    feed(&mut conn, &input).unwrap();
    let skipped = raw(HEADERS, END_STREAM | END_HEADERS, 3, &get("/"));
    assert_eq!(
        feed(&mut conn, &skipped).err(),
        Some(Reason::PROTOCOL_ERROR)
    );
}

/// An idle connection lets go of a write buffer a burst of large responses
/// grew, and of its room for events; bytes still to write, or events still
/// to take, keep theirs.
#[test]
fn an_idle_connection_sheds_its_write_buffer_and_event_room() {
    let mut conn = open(Config::default());
    let mut buf = BytesMut::from(&raw(HEADERS, END_STREAM | END_HEADERS, 1, &get("/"))[..]);
    conn.recv(&mut buf).unwrap();
    conn.out.extend_from_slice(&[0; 256 * 1024]);
    conn.shed_idle_room();
    assert!(conn.out.capacity() >= 256 * 1024, "bytes to write keep it");
    assert!(
        conn.events.capacity() > 0,
        "an event to take keeps its room"
    );
    let mut taken = Vec::new();
    conn.swap_events(&mut taken);
    assert_eq!(taken.len(), 1, "the request");
    // Written out, the events taken: nothing is kept.
    conn.out.clear();
    conn.shed_idle_room();
    assert_eq!(conn.out.capacity(), 0);
    assert_eq!(conn.events.capacity(), 0);
    // A buffer of a usual burst's size is kept for the next one.
    conn.out.reserve(IDLE_OUT_KEPT / 2);
    conn.shed_idle_room();
    assert!(conn.out.capacity() >= IDLE_OUT_KEPT / 2);
    // One grown by a 16 KiB response is not, written out (its start then
    // at its end, where only the tail counts as capacity) or not.
    conn.out.extend_from_slice(&[0; 16 * 1024 + 9]);
    conn.out.advance(16 * 1024 + 9);
    conn.shed_idle_room();
    assert_eq!(conn.out.capacity(), 0);
    conn.out.reserve(16 * 1024 + 9);
    conn.shed_idle_room();
    assert_eq!(conn.out.capacity(), 0);
}

/// After an idle spell the events get room at once for as many as one read
/// gave in the last busy period, not four to grow from; a quieter period
/// then sets the room it gets next.
#[test]
fn events_come_back_with_the_last_busy_periods_room() {
    let mut conn = open(Config::default());
    let mut next = 1;
    let mut read = |conn: &mut Conn, n: u32| {
        let mut bytes = Vec::new();
        for _ in 0..n {
            bytes.extend(raw(HEADERS, END_STREAM | END_HEADERS, next, &get("/")));
            next += 2;
        }
        conn.recv(&mut BytesMut::from(&bytes[..])).unwrap();
        assert_eq!(conn.events.len(), n as usize);
        let room = conn.events.capacity();
        // Taken by the driver, which leaves an empty vector in its place.
        conn.swap_events(&mut Vec::new());
        room
    };
    read(&mut conn, 40);
    conn.shed_idle_room();
    assert_eq!(read(&mut conn, 3), 40, "room for the last period's read");
    assert_eq!(read(&mut conn, 2), 40, "and again within the period");
    conn.shed_idle_room();
    // That period's reads gave at most 3 events: room for 4 (what a vector
    // starts with).
    assert_eq!(read(&mut conn, 1), 4);
}
