use super::*;
use http::{HeaderValue, StatusCode};

const GET: Target<'static> = Target {
    method: "GET",
    scheme: "http",
    authority: Some("origin.test"),
    path: "/",
};

fn map(fields: &[(&str, &str)]) -> HeaderMap {
    let mut headers = HeaderMap::new();
    for (n, v) in fields {
        headers.append(
            http::HeaderName::from_bytes(n.as_bytes()).unwrap(),
            HeaderValue::from_str(v).unwrap(),
        );
    }
    headers
}

/// The server's side of the wire, written by hand.
#[derive(Default)]
struct Server {
    encoder: Encoder,
    wire: BytesMut,
}

impl Server {
    fn settings(&mut self, settings: Settings) -> &mut Self {
        settings.write(&mut self.wire);
        self
    }

    fn head(&mut self, stream: u32, status: u16, fields: &[(&str, &str)], end: bool) -> &mut Self {
        let headers = map(fields);
        let mut block = BytesMut::new();
        let status = StatusCode::from_u16(status).unwrap();
        self.encoder.response(status, &headers, &mut block);
        frame::write_headers(&mut self.wire, stream, &block, end, 16_384);
        self
    }

    fn trailers(&mut self, stream: u32, fields: &[(&str, &str)], end: bool) -> &mut Self {
        let headers = map(fields);
        let mut block = BytesMut::new();
        self.encoder.trailers(&headers, &mut block);
        frame::write_headers(&mut self.wire, stream, &block, end, 16_384);
        self
    }

    fn data(&mut self, stream: u32, data: &[u8], end: bool) -> &mut Self {
        frame::write_data_head(&mut self.wire, stream, data.len(), end);
        self.wire.extend_from_slice(data);
        self
    }
}

/// A connection past the settings exchange (the server's SETTINGS read,
/// `out` emptied).
fn open_conn(settings: Settings) -> ClientConn {
    let mut conn = ClientConn::new(Config::default());
    let mut server = Server::default();
    server.settings(settings);
    conn.recv(&mut server.wire).unwrap();
    conn.out.clear();
    conn
}

fn events(conn: &mut ClientConn) -> Vec<Event> {
    let mut events = Vec::new();
    conn.swap_events(&mut events);
    events
}

/// The frames in `out`, parsed (and `out` emptied).
fn written(conn: &mut ClientConn) -> Vec<Frame> {
    let mut frames = Vec::new();
    while let Some(f) = frame::parse(&mut conn.out, frame::MAX_MAX_FRAME_SIZE).unwrap() {
        frames.push(f);
    }
    frames
}

#[test]
fn the_preface_settings_and_window_go_first() {
    let mut conn = ClientConn::new(Config::default());
    assert!(conn.out.starts_with(PREFACE));
    let _ = conn.out.split_to(PREFACE.len());
    let frames = written(&mut conn);
    let Frame::Settings(settings) = &frames[0] else {
        panic!("{frames:?}");
    };
    assert_eq!(settings.enable_push, Some(false));
    assert_eq!(settings.initial_window_size, Some(1 << 20));
    assert_eq!(
        frames[1],
        Frame::WindowUpdate {
            stream: 0,
            increment: (16 << 20) - 65_535
        }
    );
}

#[test]
fn a_request_and_its_response_round_trip() {
    let mut conn = open_conn(Settings::default());
    let stream = conn.open(&GET, (&HeaderMap::new(), &[]), true);
    assert_eq!(stream, 1);
    assert!(matches!(
        written(&mut conn)[..],
        [Frame::Headers {
            stream: 1,
            end_stream: true,
            end_headers: true,
            ..
        }]
    ));
    let mut server = Server::default();
    server
        .head(1, 200, &[("content-length", "5")], false)
        .data(1, b"hello", true);
    conn.recv(&mut server.wire).unwrap();
    let events = events(&mut conn);
    let [
        Event::Response {
            stream: 1,
            head,
            end_stream: false,
        },
        Event::Data {
            stream: 1,
            data,
            end_stream: true,
        },
    ] = &events[..]
    else {
        panic!("{events:?}");
    };
    assert_eq!(head.parts.status, StatusCode::OK);
    assert_eq!(head.content_length, Some(5));
    assert_eq!(data, "hello");
    assert_eq!(conn.open_streams(), 0);
    assert_eq!(
        conn.open(&GET, (&HeaderMap::new(), &[]), true),
        3,
        "ids rise, odd"
    );
}

#[test]
fn a_server_must_begin_with_settings() {
    let mut conn = ClientConn::new(Config::default());
    let mut server = Server::default();
    server.data(1, b"x", true);
    assert_eq!(conn.recv(&mut server.wire), Err(Reason::PROTOCOL_ERROR));
    assert!(conn.is_closed() && !conn.can_open());
}

#[test]
fn informational_heads_are_passed_over_and_trailers_end_the_body() {
    let mut conn = open_conn(Settings::default());
    conn.open(&GET, (&HeaderMap::new(), &[]), true);
    let mut server = Server::default();
    server
        .head(1, 100, &[], false)
        .head(1, 200, &[("content-type", "application/grpc")], false)
        .data(1, b"abc", false)
        .trailers(1, &[("grpc-status", "0")], true);
    conn.recv(&mut server.wire).unwrap();
    let events = events(&mut conn);
    assert!(matches!(events[0], Event::Response { stream: 1, .. }));
    assert!(matches!(events[1], Event::Data { stream: 1, .. }));
    let Event::Trailers {
        stream: 1,
        trailers,
    } = &events[2]
    else {
        panic!("{events:?}");
    };
    assert_eq!(trailers["grpc-status"], "0");
    assert_eq!(events.len(), 3);
    assert_eq!(conn.open_streams(), 0);
}

#[test]
fn broken_responses_reset_their_stream_alone() {
    type Respond = fn(&mut Server);
    let cases: [(&str, Respond); 5] = [
        ("a body shorter than its content-length", |s| {
            s.head(1, 200, &[("content-length", "5")], false)
                .data(1, b"abc", true);
        }),
        ("a body longer than its content-length", |s| {
            s.head(1, 200, &[("content-length", "2")], false)
                .data(1, b"abc", true);
        }),
        ("trailers that do not end the stream", |s| {
            s.head(1, 200, &[], false).trailers(1, &[("a", "b")], false);
        }),
        ("DATA before the head", |s| {
            s.data(1, b"abc", true);
        }),
        ("a connection-specific field", |s| {
            s.head(1, 200, &[("connection", "close")], true);
        }),
    ];
    for (what, respond) in cases {
        let mut conn = open_conn(Settings::default());
        conn.open(&GET, (&HeaderMap::new(), &[]), true);
        let mut server = Server::default();
        respond(&mut server);
        conn.recv(&mut server.wire).unwrap();
        let events = events(&mut conn);
        let reset = events.iter().any(|e| {
            matches!(
                e,
                Event::Reset {
                    stream: 1,
                    reason: Reason::PROTOCOL_ERROR,
                    refused: false
                }
            )
        });
        assert!(reset, "{what}: {events:?}");
        let frames = written(&mut conn);
        assert!(
            frames.contains(&Frame::Reset {
                stream: 1,
                reason: Reason::PROTOCOL_ERROR
            }),
            "{what}: {frames:?}"
        );
        assert!(conn.can_open(), "{what}: the connection goes on");
    }
}

#[test]
fn a_goaway_refuses_the_streams_above_its_last() {
    let mut conn = open_conn(Settings::default());
    for _ in 0..3 {
        conn.open(&GET, (&HeaderMap::new(), &[]), true);
    }
    let mut wire = BytesMut::new();
    frame::write_goaway(&mut wire, 1, Reason::NO_ERROR);
    conn.recv(&mut wire).unwrap();
    let refused: Vec<u32> = events(&mut conn)
        .iter()
        .map(|e| match e {
            Event::Reset {
                stream,
                refused: true,
                ..
            } => *stream,
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(refused, [3, 5]);
    assert!(!conn.can_open() && conn.is_closed());
    // Stream 1 still finishes.
    let mut server = Server::default();
    server.head(1, 204, &[], true);
    conn.recv(&mut server.wire).unwrap();
    assert!(matches!(
        events(&mut conn)[..],
        [Event::Response { stream: 1, .. }]
    ));
}

#[test]
fn the_servers_stream_limit_and_windows_are_obeyed() {
    let mut conn = open_conn(Settings {
        max_concurrent_streams: Some(1),
        initial_window_size: Some(10),
        ..Settings::default()
    });
    let stream = conn.open(&GET, (&HeaderMap::new(), &[]), false);
    assert!(!conn.can_open(), "one stream allowed");
    conn.out.clear();
    assert_eq!(conn.send_data(stream, b"0123456789abcdef", true), 10);
    assert!(conn.sending(stream), "not all sent: not ended");
    let mut wire = BytesMut::new();
    frame::write_window_update(&mut wire, stream, 6);
    conn.recv(&mut wire).unwrap();
    assert_eq!(conn.capacity(stream), 6);
    assert_eq!(conn.send_data(stream, b"abcdef", true), 6);
    assert!(!conn.sending(stream));
    let frames = written(&mut conn);
    assert!(matches!(
        frames.last(),
        Some(Frame::Data {
            end_stream: true,
            ..
        })
    ));
    let mut server = Server::default();
    server.head(1, 200, &[], true);
    conn.recv(&mut server.wire).unwrap();
    assert!(conn.can_open(), "the stream ended: room for another");
}

#[test]
fn taken_bytes_open_the_servers_window_again() {
    let config = Config {
        stream_window: 65_535,
        connection_window: 65_535,
        ..Config::default()
    };
    let mut conn = ClientConn::new(config);
    let mut server = Server::default();
    server.settings(Settings::default());
    conn.recv(&mut server.wire).unwrap();
    conn.open(&GET, (&HeaderMap::new(), &[]), true);
    conn.out.clear();
    let chunk = vec![b'x'; 16_000];
    server.head(1, 200, &[], false);
    for _ in 0..3 {
        server.data(1, &chunk, false);
    }
    conn.recv(&mut server.wire).unwrap();
    conn.release(1, 16_000);
    assert!(written(&mut conn).is_empty(), "less than half a window");
    conn.release(1, 32_000);
    let frames = written(&mut conn);
    assert!(frames.contains(&Frame::WindowUpdate {
        stream: 1,
        increment: 48_000
    }));
    assert!(frames.contains(&Frame::WindowUpdate {
        stream: 0,
        increment: 48_000
    }));
    // Past the window: the stream's error.
    let mut conn = open_conn(Settings::default());
    conn.open(&GET, (&HeaderMap::new(), &[]), true);
    let mut server = Server::default();
    server.head(1, 200, &[], false);
    for _ in 0..70 {
        server.data(1, &chunk, false);
    }
    let _ = conn.recv(&mut server.wire);
    assert!(events(&mut conn).iter().any(|e| matches!(
        e,
        Event::Reset {
            reason: Reason::FLOW_CONTROL_ERROR,
            ..
        }
    )));
}

#[test]
fn frames_on_streams_this_side_never_opened_end_the_connection() {
    for stream in [2, 7] {
        let mut conn = open_conn(Settings::default());
        conn.open(&GET, (&HeaderMap::new(), &[]), true);
        let mut server = Server::default();
        server.head(stream, 200, &[], true);
        assert_eq!(
            conn.recv(&mut server.wire),
            Err(Reason::PROTOCOL_ERROR),
            "stream {stream}"
        );
    }
}

#[test]
fn a_continuation_flood_ends_the_connection() {
    let mut conn = open_conn(Settings::default());
    conn.open(&GET, (&HeaderMap::new(), &[]), true);
    let mut wire = BytesMut::new();
    // HEADERS without END_HEADERS, then CONTINUATION frames of one octet.
    let mut block = BytesMut::new();
    Encoder::default().response(StatusCode::OK, &HeaderMap::new(), &mut block);
    wire.extend_from_slice(&[0, 0, block.len() as u8, 0x1, 0, 0, 0, 0, 1]);
    wire.extend_from_slice(&block);
    for _ in 0..=MAX_CONTINUATIONS {
        wire.extend_from_slice(&[0, 0, 1, 0x9, 0, 0, 0, 0, 1, 0x80 | 61]);
    }
    assert_eq!(conn.recv(&mut wire), Err(Reason::ENHANCE_YOUR_CALM));
}

#[test]
fn a_cancelled_stream_is_reset_and_its_late_frames_ignored() {
    let mut conn = open_conn(Settings::default());
    conn.open(&GET, (&HeaderMap::new(), &[]), true);
    conn.out.clear();
    conn.cancel(1, Reason::CANCEL);
    assert_eq!(
        written(&mut conn),
        [Frame::Reset {
            stream: 1,
            reason: Reason::CANCEL
        }]
    );
    let mut server = Server::default();
    server.head(1, 200, &[], false).data(1, b"late", true);
    conn.recv(&mut server.wire).unwrap();
    assert!(events(&mut conn).is_empty());
    // The late DATA is given back to the connection's window.
    assert!(conn.can_open());
}

#[test]
fn one_stream_goes_before_the_servers_settings_then_its_limit_holds() {
    let mut conn = ClientConn::new(Config::default());
    assert!(conn.can_open());
    conn.open(&GET, (&HeaderMap::new(), &[]), true);
    assert!(!conn.can_open(), "the server's limit is not known yet");
    let mut server = Server::default();
    server.settings(Settings {
        max_concurrent_streams: Some(2),
        ..Settings::default()
    });
    conn.recv(&mut server.wire).unwrap();
    assert!(conn.can_open());
    conn.open(&GET, (&HeaderMap::new(), &[]), true);
    assert!(!conn.can_open(), "two open, two allowed");
}

/// A connection with no stream lets go of a write buffer that a burst of
/// request bodies grew, once it is written out, and keeps one of a usual
/// burst's size (the server's connections do the same: `conn`'s tests).
#[test]
fn an_idle_connection_sheds_a_grown_write_buffer() {
    use crate::h2::io::IDLE_OUT_KEPT;
    let mut conn = ClientConn::new(Config::default());
    conn.out.extend_from_slice(&[0; 256 * 1024]);
    conn.shed_idle_room();
    assert!(conn.out.len() > 256 * 1024, "bytes still to write keep it");
    conn.out.clear();
    conn.shed_idle_room();
    assert_eq!(conn.out.capacity(), 0);
    conn.out.reserve(IDLE_OUT_KEPT / 2);
    conn.shed_idle_room();
    assert!(conn.out.capacity() >= IDLE_OUT_KEPT / 2);
}
