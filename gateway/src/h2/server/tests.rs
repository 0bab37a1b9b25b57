//! The connection loop over an in-memory pipe, a client written frame by
//! frame: what depends on the order the loop sends in.

use super::*;
use crate::h2::frame::{self, Frame as H2Frame};
use http_body_util::Full;

/// A response as the service gives it.
struct Answer(Response<Full<Bytes>>);

impl Respond for Answer {
    type Body = Full<Bytes>;
    fn into_parts(self) -> (Response<Full<Bytes>>, Option<Named>) {
        (self.0, None)
    }
}

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// The loop's settings in these tests.
const SETTINGS: Settings = Settings {
    max_concurrent_streams: 16,
    max_header_list_size: 16_384,
};

/// A GET for `/` on `stream` (static-table indexes, a literal authority).
fn get(dst: &mut BytesMut, stream: u32) {
    let mut block = vec![0x82, 0x86, 0x84, 0x41, 6];
    block.extend_from_slice(b"a.test");
    frame::write_headers(dst, stream, &block, true, 16_384);
}

/// Two 1 MiB responses, each one body frame, to a client whose stream
/// windows hold them whole but whose connection window opens 16 KiB at a
/// time: the window goes to each stream in turn, so the first response
/// to end finds the other more than half sent.
#[tokio::test]
async fn a_narrow_connection_window_is_shared_in_turn() {
    const SIZE: usize = 1024 * 1024;
    let (client, server) = tokio::io::duplex(64 * 1024);
    static CLOSING: AtomicBool = AtomicBool::new(false);
    let service = |_req| async {
        let body = Full::new(Bytes::from(vec![7u8; SIZE]));
        Answer(Response::new(body))
    };
    tokio::spawn(serve(server, BytesMut::new(), &SETTINGS, &CLOSING, service));
    let (mut rd, mut wr) = tokio::io::split(client);
    let mut out = BytesMut::from(PREFACE);
    frame::Settings {
        initial_window_size: Some(16 * 1024 * 1024),
        ..Default::default()
    }
    .write(&mut out);
    get(&mut out, 1);
    get(&mut out, 3);
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    wr.write_all(&out).await.unwrap();

    let mut got = [0usize; 2];
    let mut unacked = 0;
    let mut buf = BytesMut::new();
    let mut first_end = None;
    while got != [SIZE; 2] {
        let frame = loop {
            if let Some(f) = frame::parse(&mut buf, 16_384).unwrap() {
                break f;
            }
            assert!(rd.read_buf(&mut buf).await.unwrap() > 0, "closed early");
        };
        let H2Frame::Data {
            stream,
            data,
            end_stream,
            ..
        } = frame
        else {
            continue;
        };
        let i = (stream / 2) as usize;
        got[i] += data.len();
        if end_stream && first_end.is_none() {
            first_end = Some((i, got[1 - i]));
        }
        unacked += data.len();
        if unacked >= 16 * 1024 {
            let mut wu = BytesMut::new();
            frame::write_window_update(&mut wu, 0, unacked as u32);
            wr.write_all(&wu).await.unwrap();
            unacked = 0;
        }
    }
    let (first, other) = first_end.expect("both ended");
    assert!(
        other >= SIZE / 2,
        "the other stream had {other} of {SIZE} bytes when stream {} ended",
        2 * first + 1
    );
}

/// A stream whose work panics is reset alone: the connection goes on, and
/// a request after it is answered.
#[tokio::test]
async fn a_stream_whose_work_panics_is_reset_alone() {
    let mut n = 0;
    let service = move |_req| {
        n += 1;
        let first = n == 1;
        async move {
            assert!(!first, "the first request's work panics");
            Answer(Response::new(Full::new(Bytes::from_static(b"ok"))))
        }
    };
    first_reset_second_answered(service).await;
}

/// The same when the service panics as it is called.
#[tokio::test]
async fn a_service_that_panics_when_called_resets_that_stream_alone() {
    let mut n = 0;
    let service = move |_req| {
        n += 1;
        assert!(n > 1, "the first call panics");
        async { Answer(Response::new(Full::new(Bytes::from_static(b"ok")))) }
    };
    first_reset_second_answered(service).await;
}

type Pipe = tokio::io::DuplexStream;

/// Serves `service` on one end of an in-memory pipe; the client's halves
/// of the other.
fn serve_pipe<F, Fut>(service: F) -> (tokio::io::ReadHalf<Pipe>, tokio::io::WriteHalf<Pipe>)
where
    F: FnMut(Request<Option<H2Body>>) -> Fut + Send + 'static,
    Fut: Future<Output = Answer> + Send + 'static,
{
    let (client, server) = tokio::io::duplex(64 * 1024);
    static CLOSING: AtomicBool = AtomicBool::new(false);
    tokio::spawn(async move { serve(server, BytesMut::new(), &SETTINGS, &CLOSING, service).await });
    tokio::io::split(client)
}

/// Sends two GETs: the first must be reset INTERNAL_ERROR, the second
/// answered, the connection kept.
async fn first_reset_second_answered<F, Fut>(service: F)
where
    F: FnMut(Request<Option<H2Body>>) -> Fut + Send + 'static,
    Fut: Future<Output = Answer> + Send + 'static,
{
    let (mut rd, mut wr) = serve_pipe(service);
    let mut out = BytesMut::from(PREFACE);
    frame::Settings::default().write(&mut out);
    get(&mut out, 1);
    get(&mut out, 3);
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    wr.write_all(&out).await.unwrap();
    let mut buf = BytesMut::new();
    let (mut reset, mut answered) = (None, false);
    while reset.is_none() || !answered {
        let frame = loop {
            if let Some(f) = frame::parse(&mut buf, 16_384).unwrap() {
                break f;
            }
            assert!(rd.read_buf(&mut buf).await.unwrap() > 0, "closed early");
        };
        match frame {
            H2Frame::Reset { stream, reason } => reset = Some((stream, reason)),
            H2Frame::Data {
                stream: 3,
                end_stream: true,
                ..
            } => answered = true,
            H2Frame::GoAway { reason, .. } => panic!("the connection ended: {reason:?}"),
            _ => {}
        }
    }
    assert_eq!(reset, Some((1, Reason::INTERNAL_ERROR)));
}

/// A request that came in the same read as the preface (the listener's
/// sniff read it all) is answered with nothing more from the client.
#[tokio::test]
async fn a_request_read_with_the_preface_is_answered() {
    let (client, server) = tokio::io::duplex(64 * 1024);
    static CLOSING: AtomicBool = AtomicBool::new(false);
    let service = |_req| async { Answer(Response::new(Full::new(Bytes::from_static(b"ok")))) };
    let mut prefix = BytesMut::from(PREFACE);
    frame::Settings::default().write(&mut prefix);
    get(&mut prefix, 1);
    tokio::spawn(serve(server, prefix, &SETTINGS, &CLOSING, service));
    let (mut rd, _wr) = tokio::io::split(client);
    let mut buf = BytesMut::new();
    loop {
        let frame = loop {
            if let Some(f) = frame::parse(&mut buf, 16_384).unwrap() {
                break f;
            }
            use tokio::io::AsyncReadExt;
            assert!(rd.read_buf(&mut buf).await.unwrap() > 0, "closed early");
        };
        if let H2Frame::Data {
            stream: 1,
            data,
            end_stream: true,
            ..
        } = frame
        {
            assert_eq!(&data[..], b"ok");
            break;
        }
    }
}

/// A POST for `/` on `stream` (static-table indexes, a literal authority),
/// asking for `100 Continue` when `expect` is set.
fn post(dst: &mut BytesMut, stream: u32, expect: bool) {
    let mut block = vec![0x83, 0x86, 0x84, 0x41, 6];
    block.extend_from_slice(b"a.test");
    if expect {
        block.extend_from_slice(b"\x00\x06expect\x0c100-continue");
    }
    frame::write_headers(dst, stream, &block, false, 16_384);
}

/// The next frame the client reads.
async fn next_frame(rd: &mut (impl tokio::io::AsyncRead + Unpin), buf: &mut BytesMut) -> H2Frame {
    use tokio::io::AsyncReadExt;
    loop {
        if let Some(f) = frame::parse(buf, 16_384).unwrap() {
            return f;
        }
        assert!(rd.read_buf(buf).await.unwrap() > 0, "closed early");
    }
}

/// A request body that came whole with its head (one write) and one that
/// came after its head (the client waiting for `100 Continue` first) reach
/// the service alike; only the second is invited.
#[tokio::test]
async fn a_body_read_with_its_head_and_one_read_after_it_are_alike() {
    let (client, server) = tokio::io::duplex(64 * 1024);
    static CLOSING: AtomicBool = AtomicBool::new(false);
    let service = |req: Request<Option<H2Body>>| async move {
        let body = req.into_body().expect("a body");
        let bytes = http_body_util::BodyExt::collect(body)
            .await
            .unwrap()
            .to_bytes();
        Answer(Response::new(Full::new(bytes)))
    };
    tokio::spawn(serve(server, BytesMut::new(), &SETTINGS, &CLOSING, service));
    let (mut rd, mut wr) = tokio::io::split(client);
    use tokio::io::AsyncWriteExt;
    let mut out = BytesMut::from(PREFACE);
    frame::Settings::default().write(&mut out);
    post(&mut out, 1, false);
    frame::write_data(&mut out, 1, b"whole", true, 16_384);
    post(&mut out, 3, true);
    wr.write_all(&out).await.unwrap();

    let mut buf = BytesMut::new();
    let mut answers = [None, None];
    let mut continued = false;
    while answers.iter().any(Option::is_none) {
        match next_frame(&mut rd, &mut buf).await {
            H2Frame::Headers { stream: 3, .. } if !continued => {
                continued = true;
                let mut body = BytesMut::new();
                frame::write_data(&mut body, 3, b"after", true, 16_384);
                wr.write_all(&body).await.unwrap();
            }
            H2Frame::Headers { stream: 1, .. } => {}
            H2Frame::Data { stream, data, .. } => answers[(stream / 2) as usize] = Some(data),
            H2Frame::Reset { stream, reason } => panic!("stream {stream} reset: {reason:?}"),
            H2Frame::GoAway { reason, .. } => panic!("the connection ended: {reason:?}"),
            _ => {}
        }
    }
    assert!(continued, "the body not yet sent was invited");
    assert_eq!(answers[0].as_deref(), Some(&b"whole"[..]));
    assert_eq!(answers[1].as_deref(), Some(&b"after"[..]));
}

/// A connection over TCP with no request running gives its read buffer
/// back to the thread's pool while it waits for the next frame, and takes
/// one again for the next request (bench/RESULTS.md, thirty-fifth pass:
/// an idle HTTP/2 connection held 16 KiB).
#[tokio::test]
async fn an_idle_connection_holds_no_read_buffer() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mut client = tokio::net::TcpStream::connect(listener.local_addr().unwrap())
        .await
        .unwrap();
    let (io, _) = listener.accept().await.unwrap();
    let io = crate::idle::ActivityIo::new(io, crate::idle::Activity::new());
    static CLOSING: AtomicBool = AtomicBool::new(false);
    let service = |_req| async { Answer(Response::new(Full::new(Bytes::from("ok")))) };
    let before = crate::buffers::kept();
    tokio::spawn(serve(io, BytesMut::new(), &SETTINGS, &CLOSING, service));
    let mut out = BytesMut::from(PREFACE);
    frame::Settings::default().write(&mut out);
    let mut buf = BytesMut::new();
    for stream in [1, 3] {
        get(&mut out, stream);
        client.write_all(&out).await.unwrap();
        out.clear();
        // The response's end, then the wait: the read buffer is back.
        loop {
            match frame::parse(&mut buf, 16_384).unwrap() {
                Some(H2Frame::Data {
                    end_stream: true, ..
                }) => break,
                Some(_) => continue,
                None => assert!(client.read_buf(&mut buf).await.unwrap() > 0, "closed early"),
            }
        }
        let what = format!("stream {stream}");
        crate::buffers::until_kept(crate::buffers::kept, before + 1, &what).await;
    }
}

/// A client's reset drops its stream's work at once (the proxy's upstream
/// request with it), while the work of the connection's other streams
/// goes on and is answered.
#[tokio::test]
async fn a_reset_stream_drops_its_work_at_once_and_others_go_on() {
    /// Counts the works dropped.
    struct Guard(Arc<std::sync::atomic::AtomicUsize>);
    impl Drop for Guard {
        fn drop(&mut self) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }
    let dropped = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let (release, released) = tokio::sync::watch::channel(false);
    let count = Arc::clone(&dropped);
    let service = move |req: Request<Option<H2Body>>| {
        let guard = Guard(Arc::clone(&count));
        let mut released = released.clone();
        // Stream 1 waits for ever; stream 3 until the test lets it go.
        let forever = req.uri().path() == "/";
        async move {
            let _guard = guard;
            if forever {
                std::future::pending::<()>().await;
            }
            released.wait_for(|go| *go).await.unwrap();
            Answer(Response::new(Full::new(Bytes::from_static(b"ok"))))
        }
    };
    let (mut rd, mut wr) = serve_pipe(service);
    let mut out = BytesMut::from(PREFACE);
    frame::Settings::default().write(&mut out);
    get(&mut out, 1);
    // A GET for /index.html (static index 5) on stream 3.
    let mut block = vec![0x82, 0x86, 0x85, 0x41, 6];
    block.extend_from_slice(b"a.test");
    frame::write_headers(&mut out, 3, &block, true, 16_384);
    use tokio::io::AsyncWriteExt;
    wr.write_all(&out).await.unwrap();
    out.clear();
    frame::write_reset(&mut out, 1, Reason::CANCEL);
    wr.write_all(&out).await.unwrap();
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    while dropped.load(Ordering::SeqCst) == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "stream 1's work was not dropped"
        );
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    assert_eq!(
        dropped.load(Ordering::SeqCst),
        1,
        "only the reset stream's work"
    );
    release.send(true).unwrap();
    let mut buf = BytesMut::new();
    loop {
        match next_frame(&mut rd, &mut buf).await {
            H2Frame::Data {
                stream: 3,
                end_stream: true,
                ..
            } => break,
            H2Frame::Data { stream: 1, .. } | H2Frame::Headers { stream: 1, .. } => {
                panic!("the reset stream was answered")
            }
            H2Frame::GoAway { reason, .. } => panic!("the connection ended: {reason:?}"),
            _ => {}
        }
    }
    assert_eq!(dropped.load(Ordering::SeqCst), 2);
}

/// A response head as the server sends it: what HTTP/2 forbids goes (and
/// what a `Connection` field names), `date` is added when missing, and a
/// length when the body's is known and the head has none, even when a
/// `Connection` field named the one it had.
#[test]
fn a_response_loses_what_http2_forbids_and_gets_a_date_and_length() {
    let answer = |fields: &[(&'static str, &'static str)]| {
        let mut resp = http::Response::new(Full::new(Bytes::from_static(b"abc")));
        for (n, v) in fields {
            resp.headers_mut()
                .append(*n, http::HeaderValue::from_static(v));
        }
        let (mut parts, body) = resp.into_parts();
        ready_head(&mut parts, &body, (false, None));
        parts.headers
    };
    let plain = answer(&[("content-type", "text/plain")]);
    assert_eq!(plain["content-length"], "3");
    assert!(plain.contains_key("date"));
    let own = answer(&[
        ("date", "Sun, 06 Dec 2026 00:00:00 GMT"),
        ("content-length", "3"),
    ]);
    assert_eq!(own["date"], "Sun, 06 Dec 2026 00:00:00 GMT");
    assert_eq!(own.get_all("content-length").iter().count(), 1);
    let named = answer(&[
        ("connection", "content-length, x-hop"),
        ("content-length", "99"),
        ("x-hop", "1"),
        ("keep-alive", "timeout=5"),
        ("proxy-connection", "close"),
        ("te", "trailers"),
        ("x-kept", "1"),
    ]);
    assert_eq!(named["content-length"], "3", "{named:?}");
    for gone in [
        "connection",
        "x-hop",
        "keep-alive",
        "proxy-connection",
        "te",
    ] {
        assert!(!named.contains_key(gone), "{gone}: {named:?}");
    }
    assert_eq!(named["x-kept"], "1");
    // A field sent beside the map takes the place of those of its name.
    let id = http::HeaderName::from_static("x-request-id");
    let mut resp = http::Response::new(Full::new(Bytes::new()));
    for v in ["upstream-1", "upstream-2"] {
        resp.headers_mut()
            .append(&id, http::HeaderValue::from_static(v));
    }
    let (mut parts, body) = resp.into_parts();
    ready_head(&mut parts, &body, (false, Some(&id)));
    assert!(!parts.headers.contains_key(&id), "{:?}", parts.headers);
}
